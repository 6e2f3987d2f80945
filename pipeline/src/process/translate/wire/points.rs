//! Data points read in place: each reader checks one encoded point as prost would and leaves its
//! attributes, exemplars and numbers in [`WireScratch`] for the point's view.

use super::WireScratch;
use crate::process::translate::attrs::{WireError, key_value};
use crate::process::translate::points::ExemplarView;
use crate::util::protobuf::{Wire, field, varint};

/// How deep a data point is nested: request, resource, scope, metric, data, point.
const POINT: u32 = 5;

/// The scalar fields of a number data point.
pub(super) struct Number {
    pub(super) flags: u32,
    /// `start_time_unix_nano` (0: unknown).
    pub(super) start: u64,
    pub(super) value: Option<f64>,
}

/// The scalar fields of a histogram data point (bounds in `floats`, counts in `counts`).
pub(super) struct Histogram {
    pub(super) flags: u32,
    /// `start_time_unix_nano` (0: unknown).
    pub(super) start: u64,
    pub(super) count: u64,
    pub(super) sum: Option<f64>,
}

/// The scalar fields of an exponential histogram data point (buckets in `counts` and
/// `negative`, with their offsets when the side is present).
pub(super) struct Exponential {
    pub(super) flags: u32,
    /// `start_time_unix_nano` (0: unknown).
    pub(super) start: u64,
    pub(super) count: u64,
    pub(super) sum: Option<f64>,
    pub(super) scale: i32,
    pub(super) zero_count: u64,
    pub(super) zero_threshold: f64,
    pub(super) positive: Option<i32>,
    pub(super) negative: Option<i32>,
}

/// The scalar fields of a summary data point (quantiles in `quantiles`).
pub(super) struct Summary {
    pub(super) flags: u32,
    /// `start_time_unix_nano` (0: unknown).
    pub(super) start: u64,
    pub(super) count: u64,
    pub(super) sum: f64,
}

impl<'a> WireScratch<'a> {
    fn clear(&mut self) {
        self.attrs.clear();
        self.exemplars.clear();
        self.floats.clear();
        self.counts.clear();
        self.negative.clear();
        self.quantiles.clear();
    }

    fn attr(&mut self, kv: &'a [u8]) -> Result<(), WireError> {
        self.attrs.push(key_value(kv, POINT + 1)?);
        Ok(())
    }

    /// Reads a `NumberDataPoint`.
    pub(super) fn number(&mut self, mut buf: &'a [u8]) -> Result<Number, WireError> {
        self.clear();
        let mut p = Number {
            flags: 0,
            start: 0,
            value: None,
        };
        while !buf.is_empty() {
            match field(&mut buf)? {
                (7, Wire::Len(kv)) => self.attr(kv)?,
                (2, Wire::Fixed64(t)) => p.start = t,
                (3, Wire::Fixed64(_)) => {}
                (4, Wire::Fixed64(d)) => p.value = Some(f64::from_bits(d)),
                (6, Wire::Fixed64(i)) => p.value = Some(i as i64 as f64),
                (5, Wire::Len(e)) => self.exemplar(e)?,
                (8, Wire::Varint(f)) => p.flags = f as u32,
                (2..=8, _) => return Err("invalid wire type in NumberDataPoint"),
                (_, w) => w.skip_unknown()?,
            }
        }
        Ok(p)
    }

    /// Reads a `HistogramDataPoint`.
    pub(super) fn histogram(&mut self, mut buf: &'a [u8]) -> Result<Histogram, WireError> {
        self.clear();
        let mut p = Histogram {
            flags: 0,
            start: 0,
            count: 0,
            sum: None,
        };
        while !buf.is_empty() {
            match field(&mut buf)? {
                (9, Wire::Len(kv)) => self.attr(kv)?,
                (2, Wire::Fixed64(t)) => p.start = t,
                (3 | 11 | 12, Wire::Fixed64(_)) => {}
                (4, Wire::Fixed64(c)) => p.count = c,
                (5, Wire::Fixed64(s)) => p.sum = Some(f64::from_bits(s)),
                (6, Wire::Len(packed)) => fixed64s(packed, |v| self.counts.push(v))?,
                (6, Wire::Fixed64(v)) => self.counts.push(v),
                (7, Wire::Len(packed)) => fixed64s(packed, |v| self.floats.push(f64::from_bits(v)))?,
                (7, Wire::Fixed64(v)) => self.floats.push(f64::from_bits(v)),
                (8, Wire::Len(e)) => self.exemplar(e)?,
                (10, Wire::Varint(f)) => p.flags = f as u32,
                (2..=12, _) => return Err("invalid wire type in HistogramDataPoint"),
                (_, w) => w.skip_unknown()?,
            }
        }
        Ok(p)
    }

    /// Reads an `ExponentialHistogramDataPoint`.
    pub(super) fn exponential(&mut self, mut buf: &'a [u8]) -> Result<Exponential, WireError> {
        self.clear();
        let mut p = Exponential {
            flags: 0,
            start: 0,
            count: 0,
            sum: None,
            scale: 0,
            zero_count: 0,
            zero_threshold: 0.0,
            positive: None,
            negative: None,
        };
        while !buf.is_empty() {
            match field(&mut buf)? {
                (1, Wire::Len(kv)) => self.attr(kv)?,
                (2, Wire::Fixed64(t)) => p.start = t,
                (3 | 12 | 13, Wire::Fixed64(_)) => {}
                (4, Wire::Fixed64(c)) => p.count = c,
                (5, Wire::Fixed64(s)) => p.sum = Some(f64::from_bits(s)),
                (6, Wire::Varint(s)) => p.scale = zigzag32(s),
                (7, Wire::Fixed64(z)) => p.zero_count = z,
                // A side given twice merges, as in prost: the last offset, the counts appended.
                (8, Wire::Len(b)) => buckets(b, p.positive.get_or_insert(0), &mut self.counts)?,
                (9, Wire::Len(b)) => buckets(b, p.negative.get_or_insert(0), &mut self.negative)?,
                (10, Wire::Varint(f)) => p.flags = f as u32,
                (11, Wire::Len(e)) => self.exemplar(e)?,
                (14, Wire::Fixed64(z)) => p.zero_threshold = f64::from_bits(z),
                (1..=14, _) => return Err("invalid wire type in ExponentialHistogramDataPoint"),
                (_, w) => w.skip_unknown()?,
            }
        }
        Ok(p)
    }

    /// Reads a `SummaryDataPoint`.
    pub(super) fn summary(&mut self, mut buf: &'a [u8]) -> Result<Summary, WireError> {
        self.clear();
        let mut p = Summary {
            flags: 0,
            start: 0,
            count: 0,
            sum: 0.0,
        };
        while !buf.is_empty() {
            match field(&mut buf)? {
                (7, Wire::Len(kv)) => self.attr(kv)?,
                (2, Wire::Fixed64(t)) => p.start = t,
                (3, Wire::Fixed64(_)) => {}
                (4, Wire::Fixed64(c)) => p.count = c,
                (5, Wire::Fixed64(s)) => p.sum = f64::from_bits(s),
                (6, Wire::Len(q)) => self.quantiles.push(quantile(q)?),
                (8, Wire::Varint(f)) => p.flags = f as u32,
                (2..=8, _) => return Err("invalid wire type in SummaryDataPoint"),
                (_, w) => w.skip_unknown()?,
            }
        }
        Ok(p)
    }

    /// Reads an `Exemplar` of the current point.
    fn exemplar(&mut self, mut buf: &'a [u8]) -> Result<(), WireError> {
        let mut e = ExemplarView::default();
        while !buf.is_empty() {
            match field(&mut buf)? {
                (2, Wire::Fixed64(t)) => e.time_unix_nano = t,
                (3, Wire::Fixed64(d)) => e.value = Some(f64::from_bits(d)),
                (6, Wire::Fixed64(i)) => e.value = Some(i as i64 as f64),
                (4, Wire::Len(b)) => e.span_id = b,
                (5, Wire::Len(b)) => e.trace_id = b,
                (7, Wire::Len(kv)) => key_value(kv, POINT + 2).map(drop)?,
                (2..=7, _) => return Err("invalid wire type in Exemplar"),
                (_, w) => w.skip_unknown()?,
            }
        }
        self.exemplars.push(e);
        Ok(())
    }
}

/// A packed `fixed64`/`double` field: whole 8-byte values only, as prost reads them.
fn fixed64s(packed: &[u8], mut push: impl FnMut(u64)) -> Result<(), WireError> {
    if packed.len() % 8 != 0 {
        return Err("packed fixed64 field with a partial value");
    }
    for v in packed.chunks_exact(8) {
        push(u64::from_le_bytes(v.try_into().map_err(|_| "truncated")?));
    }
    Ok(())
}

/// `sint32` from its varint, as prost decodes it.
fn zigzag32(v: u64) -> i32 {
    let v = v as u32;
    ((v >> 1) as i32) ^ (-((v & 1) as i32))
}

/// `Buckets`: the offset (the last one wins) and the counts (appended; packed or not).
fn buckets(mut buf: &[u8], offset: &mut i32, counts: &mut Vec<u64>) -> Result<(), WireError> {
    while !buf.is_empty() {
        match field(&mut buf)? {
            (1, Wire::Varint(o)) => *offset = zigzag32(o),
            (2, Wire::Len(mut packed)) => {
                while !packed.is_empty() {
                    counts.push(varint(&mut packed)?);
                }
            }
            (2, Wire::Varint(c)) => counts.push(c),
            (1 | 2, _) => return Err("invalid wire type in Buckets"),
            (_, w) => w.skip_unknown()?,
        }
    }
    Ok(())
}

/// `ValueAtQuantile`: (quantile, value).
fn quantile(mut buf: &[u8]) -> Result<(f64, f64), WireError> {
    let mut q = (0.0, 0.0);
    while !buf.is_empty() {
        match field(&mut buf)? {
            (1, Wire::Fixed64(v)) => q.0 = f64::from_bits(v),
            (2, Wire::Fixed64(v)) => q.1 = f64::from_bits(v),
            (1 | 2, _) => return Err("invalid wire type in ValueAtQuantile"),
            (_, w) => w.skip_unknown()?,
        }
    }
    Ok(q)
}
