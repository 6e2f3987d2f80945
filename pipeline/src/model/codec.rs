//! A compact binary encoding of [`Samples`], for what Spindle keeps on disk: the exemplars stored
//! beside a queued trace request, and the metric state snapshotted at shutdown. Only the data is
//! kept (families, points, labels and the arenas); the per-batch outcome and limit counts are not.
//!
//! Little-endian integers and floats, lengths before sequences. [`decode`] checks every index
//! against its arena, so bytes that decode are safe to hand to the store; anything else is
//! `None` (callers checksum what they store, so that is corruption, never a panic).

use super::batch::{ExpPoint, FamilyMeta, Label, Point, PointValue, Samples, Span};
use super::{Exemplar, MetricKind, Temporality};

/// Format version, the first byte. Version 2 adds each point's start time; version 1 (without)
/// is still read, so what an older Spindle left on disk is not taken for corruption. Point
/// values are tagged (0 number, 1 histogram, 2 exponential, 3 summary, 4 info, 5 both: a
/// histogram's bounds and counts, then an exponential point); a new tag needs no new version.
const VERSION: u8 = 2;

struct W<'a>(&'a mut Vec<u8>);

impl W<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i32(&mut self, v: i32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn f64(&mut self, v: f64) {
        self.u64(v.to_bits());
    }
    fn span(&mut self, s: Span) {
        self.u32(s.start);
        self.u32(s.end);
    }
    fn str(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s.as_bytes());
    }
    fn exp(&mut self, e: &ExpPoint) {
        self.u64(e.count);
        self.f64(e.sum);
        self.i32(e.scale);
        self.u64(e.zero_count);
        self.f64(e.zero_threshold);
        self.i32(e.positive_offset);
        self.span(e.positive);
        self.i32(e.negative_offset);
        self.span(e.negative);
    }
}

struct R<'a>(&'a [u8]);

impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn arr<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.arr::<1>()?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.arr()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.arr()?))
    }
    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_le_bytes(self.arr()?))
    }
    fn f64(&mut self) -> Option<f64> {
        Some(f64::from_bits(self.u64()?))
    }
    fn span(&mut self) -> Option<Span> {
        let (start, end) = (self.u32()?, self.u32()?);
        (start <= end).then_some(Span { start, end })
    }
    fn str(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
    /// An exponential point whose bucket spans lie within `counts` elements.
    fn exp(&mut self, counts: usize) -> Option<ExpPoint> {
        let e = ExpPoint {
            count: self.u64()?,
            sum: self.f64()?,
            scale: self.i32()?,
            zero_count: self.u64()?,
            zero_threshold: self.f64()?,
            positive_offset: self.i32()?,
            positive: self.span()?,
            negative_offset: self.i32()?,
            negative: self.span()?,
        };
        (e.positive.end as usize <= counts && e.negative.end as usize <= counts).then_some(e)
    }
    /// A length for `n` elements of at least `size` bytes each: never more than the bytes left,
    /// so a corrupt length cannot make a huge allocation.
    fn len(&mut self, size: usize) -> Option<usize> {
        let n = self.u32()? as usize;
        (n.saturating_mul(size) <= self.0.len()).then_some(n)
    }
}

fn kind_code(k: MetricKind) -> u8 {
    match k {
        MetricKind::Counter => 0,
        MetricKind::Gauge => 1,
        MetricKind::Histogram => 2,
        MetricKind::Summary => 3,
        MetricKind::Info => 4,
    }
}

fn kind(c: u8) -> Option<MetricKind> {
    Some(match c {
        0 => MetricKind::Counter,
        1 => MetricKind::Gauge,
        2 => MetricKind::Histogram,
        3 => MetricKind::Summary,
        4 => MetricKind::Info,
        _ => return None,
    })
}

/// Appends the encoding of `s` to `out`.
pub fn encode(s: &Samples, out: &mut Vec<u8>) {
    let mut w = W(out);
    w.u8(VERSION);
    w.u32(s.families.len() as u32);
    for f in &s.families {
        w.str(&f.name);
        w.u8(kind_code(f.kind));
        w.str(&f.help);
        w.str(&f.unit);
    }
    w.str(&s.text);
    w.u32(s.labels.len() as u32);
    for l in &s.labels {
        w.span(l.name);
        w.span(l.value);
    }
    w.u32(s.floats.len() as u32);
    for v in &s.floats {
        w.f64(*v);
    }
    w.u32(s.counts.len() as u32);
    for v in &s.counts {
        w.u64(*v);
    }
    w.u32(s.exemplars.len() as u32);
    for e in &s.exemplars {
        w.0.extend_from_slice(&e.trace_id);
        w.0.extend_from_slice(&e.span_id);
        w.f64(e.value);
        w.u64(e.time_unix_nano);
    }
    w.u32(s.points.len() as u32);
    for p in &s.points {
        w.u32(p.family);
        w.u64(p.start_time_unix_nano);
        w.span(p.labels);
        w.u8(match p.temporality {
            Temporality::Cumulative => 0,
            Temporality::Delta => 1,
        });
        w.span(p.exemplars);
        match p.value {
            PointValue::Number(v) => {
                w.u8(0);
                w.f64(v);
            }
            PointValue::Histogram {
                count,
                sum,
                bounds,
                counts,
            } => {
                w.u8(1);
                w.u64(count);
                w.f64(sum);
                w.span(bounds);
                w.span(counts);
            }
            PointValue::Exponential(e) => {
                w.u8(2);
                w.exp(&e);
            }
            PointValue::Both { bounds, counts, native } => {
                w.u8(5);
                w.span(bounds);
                w.span(counts);
                w.exp(&native);
            }
            PointValue::Summary { count, sum, quantiles } => {
                w.u8(3);
                w.u64(count);
                w.f64(sum);
                w.span(quantiles);
            }
            PointValue::Info => w.u8(4),
        }
    }
}

/// Reads back what [`encode`] wrote; `None` when the bytes are not such an encoding or an index
/// points outside its arena.
pub fn decode(b: &[u8]) -> Option<Samples> {
    let mut r = R(b);
    let version = r.u8()?;
    if !(1..=VERSION).contains(&version) {
        return None;
    }
    let mut s = Samples::default();
    for _ in 0..r.len(13)? {
        s.families.push(FamilyMeta {
            name: r.str()?,
            kind: kind(r.u8()?)?,
            help: r.str()?,
            unit: r.str()?,
        });
    }
    s.text = r.str()?;
    let in_text = |sp: Span| s_text_ok(&s.text, sp);
    for _ in 0..r.len(16)? {
        let (name, value) = (r.span()?, r.span()?);
        if !in_text(name) || !in_text(value) {
            return None;
        }
        s.labels.push(Label { name, value });
    }
    for _ in 0..r.len(8)? {
        s.floats.push(r.f64()?);
    }
    for _ in 0..r.len(8)? {
        s.counts.push(r.u64()?);
    }
    for _ in 0..r.len(40)? {
        s.exemplars.push(Exemplar {
            trace_id: r.arr()?,
            span_id: r.arr()?,
            value: r.f64()?,
            time_unix_nano: r.u64()?,
        });
    }
    let within = |sp: Span, len: usize| sp.end as usize <= len;
    for _ in 0..r.len(26)? {
        let family = r.u32()?;
        let start_time_unix_nano = if version >= 2 { r.u64()? } else { 0 };
        let labels = r.span()?;
        let temporality = match r.u8()? {
            0 => Temporality::Cumulative,
            1 => Temporality::Delta,
            _ => return None,
        };
        let exemplars = r.span()?;
        let value = match r.u8()? {
            0 => PointValue::Number(r.f64()?),
            1 => {
                let (count, sum, bounds, counts) = (r.u64()?, r.f64()?, r.span()?, r.span()?);
                if !within(bounds, s.floats.len()) || !within(counts, s.counts.len()) {
                    return None;
                }
                PointValue::Histogram {
                    count,
                    sum,
                    bounds,
                    counts,
                }
            }
            2 => PointValue::Exponential(r.exp(s.counts.len())?),
            5 => {
                let (bounds, counts) = (r.span()?, r.span()?);
                if !within(bounds, s.floats.len()) || !within(counts, s.counts.len()) {
                    return None;
                }
                let native = r.exp(s.counts.len())?;
                PointValue::Both { bounds, counts, native }
            }
            3 => {
                let (count, sum, quantiles) = (r.u64()?, r.f64()?, r.span()?);
                if !within(quantiles, s.floats.len()) {
                    return None;
                }
                PointValue::Summary { count, sum, quantiles }
            }
            4 => PointValue::Info,
            _ => return None,
        };
        if family as usize >= s.families.len()
            || !within(labels, s.labels.len())
            || !within(exemplars, s.exemplars.len())
        {
            return None;
        }
        s.points.push(Point {
            family,
            labels,
            temporality,
            value,
            exemplars,
            start_time_unix_nano,
        });
    }
    r.0.is_empty().then_some(s)
}

/// Whether `sp` is a range of `text` on character boundaries.
fn s_text_ok(text: &str, sp: Span) -> bool {
    text.get(sp.range()).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Samples {
        let mut s = Samples::default();
        s.families.push(FamilyMeta {
            name: "calls".into(),
            kind: MetricKind::Counter,
            help: "Calls ✓".into(),
            unit: String::new(),
        });
        s.families.push(FamilyMeta {
            name: "latency".into(),
            kind: MetricKind::Histogram,
            help: String::new(),
            unit: "seconds".into(),
        });
        s.text = "service_namecheckoutkindé".into();
        s.labels.push(Label {
            name: Span::new(0, 12),
            value: Span::new(12, 20),
        });
        s.labels.push(Label {
            name: Span::new(20, 24),
            value: Span::new(24, 26),
        });
        s.floats.extend([0.1, 1.0]);
        s.counts.extend([1, 2, 3, 4, 5]);
        s.exemplars.push(Exemplar {
            trace_id: [7; 16],
            span_id: [9; 8],
            value: 0.25,
            time_unix_nano: 1_700_000_000_000_000_000,
        });
        s.points.push(Point {
            family: 0,
            labels: Span::new(0, 2),
            temporality: Temporality::Delta,
            value: PointValue::Number(3.0),
            exemplars: Span::new(0, 1),
            start_time_unix_nano: 1_700_000_000_123_456_789,
        });
        s.points.push(Point {
            family: 1,
            labels: Span::new(0, 1),
            temporality: Temporality::Cumulative,
            value: PointValue::Histogram {
                count: 6,
                sum: f64::NAN,
                bounds: Span::new(0, 2),
                counts: Span::new(0, 3),
            },
            exemplars: Span::new(0, 0),
            start_time_unix_nano: 0,
        });
        s.points.push(Point {
            family: 1,
            labels: Span::new(1, 2),
            temporality: Temporality::Cumulative,
            value: PointValue::Exponential(ExpPoint {
                count: 9,
                sum: 2.5,
                scale: -3,
                zero_count: 1,
                zero_threshold: 1e-9,
                positive_offset: -2,
                positive: Span::new(3, 5),
                negative_offset: 4,
                negative: Span::new(0, 1),
            }),
            exemplars: Span::new(0, 1),
            start_time_unix_nano: 0,
        });
        s.points.push(Point {
            family: 0,
            labels: Span::new(0, 0),
            temporality: Temporality::Cumulative,
            value: PointValue::Summary {
                count: 2,
                sum: 1.5,
                quantiles: Span::new(0, 2),
            },
            exemplars: Span::new(1, 1),
            start_time_unix_nano: 0,
        });
        s.points.push(Point {
            family: 1,
            labels: Span::new(0, 1),
            temporality: Temporality::Delta,
            value: PointValue::Both {
                bounds: Span::new(0, 2),
                counts: Span::new(0, 3),
                native: ExpPoint {
                    count: 6,
                    sum: 0.75,
                    scale: 3,
                    zero_count: 0,
                    zero_threshold: 0.0,
                    positive_offset: -20,
                    positive: Span::new(2, 5),
                    negative_offset: 0,
                    negative: Span::new(5, 5),
                },
            },
            exemplars: Span::new(0, 1),
            start_time_unix_nano: 1_700_000_000_000_000_000,
        });
        s
    }

    fn same(a: &Samples, b: &Samples) -> bool {
        let mut x = Vec::new();
        let mut y = Vec::new();
        encode(a, &mut x);
        encode(b, &mut y);
        x == y
    }

    #[test]
    fn samples_round_trip_with_every_point_kind() {
        let s = sample();
        let mut b = Vec::new();
        encode(&s, &mut b);
        let d = decode(&b).unwrap();
        assert!(same(&s, &d));
        assert_eq!(d.families, s.families);
        assert_eq!(d.labels, s.labels);
        assert_eq!(d.points[0], s.points[0]);
        assert_eq!(d.points[4], s.points[4], "both: explicit and exponential buckets");
        // A `Both` whose exponential buckets point past the count arena is refused.
        let mut bad = sample();
        if let PointValue::Both { native, .. } = &mut bad.points[4].value {
            native.positive = Span::new(2, 6);
        }
        let mut b2 = Vec::new();
        encode(&bad, &mut b2);
        assert!(decode(&b2).is_none(), "exponential buckets outside the arena");
        assert_eq!(d.str(d.labels[1].value), "é");
        assert!(decode(&b[..b.len() - 1]).is_none(), "truncated");
        let mut longer = b.clone();
        longer.push(0);
        assert!(decode(&longer).is_none(), "trailing bytes");
    }

    proptest! {
        /// Whatever the bytes, decoding never panics, and what decodes is safe to index.
        #[test]
        fn any_corruption_decodes_to_none_or_to_samples_whose_indices_hold(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6)
        ) {
            let mut b = Vec::new();
            encode(&sample(), &mut b);
            for (at, x) in flips {
                let i = at % b.len();
                b[i] ^= x;
            }
            if let Some(d) = decode(&b) {
                for p in &d.points {
                    let _ = &d.families[p.family as usize];
                    for l in d.point_labels(p) {
                        let _ = (d.str(l.name), d.str(l.value));
                    }
                    let _ = &d.exemplars[p.exemplars.range()];
                }
            }
        }
    }
}
