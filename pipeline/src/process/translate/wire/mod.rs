//! Translation of an encoded `ExportMetricsServiceRequest` read in place: the same [`Samples`] as
//! [`Translator::translate`] gives for the decoded request, without building the prost structs
//! (their strings, vectors and per-attribute allocations are most of what decoding costs).
//!
//! The reader checks the whole request the way prost's decoder does — wire types of known
//! fields, UTF-8 of string fields, lengths, packed fields, nesting depth — and reads repeated and
//! merged fields as prost merges them: a repeated `resource` or `scope` appends its attributes and
//! replaces its strings, a metric's `data` oneof keeps the last run of its final variant (earlier
//! variants are decoded, so checked, and then replaced), repeated point fields append, scalars and
//! oneofs take the last value. Each message is read in two passes where a field may come after
//! what depends on it (the resource before its scopes, the scope before its metrics, a sum's
//! monotonicity before its points). What it refuses it leaves to prost (the caller decodes and
//! reports prost's error), so refusing more than prost is safe and accepting more is not: a
//! proptest compares both on random requests and corrupted bytes.

mod points;

use crate::model::batch::{Label, Samples};
use crate::model::{MetricKind, Temporality};

use super::attrs::{WireAttr, WireError, key_value, resource_message};
use super::points::{ExemplarView, ExpView, HistogramView, NumberView, PointCtx, SummaryView};
use super::points::{exponential_point, histogram_point, number_point, summary_point};
use super::{ScopeView, Scratch, Translator, metric_family, reject_scope, scope_labels, temporality};
use crate::util::protobuf::{Wire, field, utf8};

/// Per-point buffers that borrow from the request's bytes, reused from point to point.
#[derive(Default)]
struct WireScratch<'a> {
    attrs: Vec<WireAttr<'a>>,
    exemplars: Vec<ExemplarView<'a>>,
    floats: Vec<f64>,
    /// Histogram bucket counts; positive buckets of exponential histograms.
    counts: Vec<u64>,
    /// Negative buckets of exponential histograms.
    negative: Vec<u64>,
    quantiles: Vec<(f64, f64)>,
}

/// Field numbers of `Metric.data`.
const GAUGE: u32 = 5;
const SUM: u32 = 7;
const HISTOGRAM: u32 = 9;
const EXPONENTIAL: u32 = 10;
const SUMMARY: u32 = 11;

/// A metric's `data`, as the reader learns it in its first passes.
#[derive(Default)]
struct Data {
    /// The final variant's field number (`None`: no data).
    variant: Option<u32>,
    /// Index, among the metric's data fields, of the first of the final variant's last run.
    run_start: usize,
    /// Sum: `is_monotonic`; the last value wins.
    monotonic: bool,
    /// `aggregation_temporality`; the last value wins.
    temporality: i32,
    /// Points in the final run.
    points: u64,
}

impl Translator {
    /// Translates an encoded request read in place: the [`Samples`] that [`Translator::translate`]
    /// gives for the decoded request, for every request prost decodes.
    ///
    /// # Errors
    /// A [`WireError`] when the bytes are not a request the reader takes: every request prost
    /// refuses, and possibly some it accepts (groups in unknown fields). Decode those instead.
    pub fn translate_encoded(&self, body: &[u8]) -> Result<Samples, WireError> {
        let mut out = Samples::default();
        let mut scratch = Scratch::default();
        let mut ws = WireScratch::default();
        let mut buf = body;
        while !buf.is_empty() {
            match field(&mut buf)? {
                (1, Wire::Len(rm)) => self.resource_metrics(rm, &mut out, &mut scratch, &mut ws)?,
                (1, _) => return Err("invalid wire type for resource_metrics"),
                (_, w) => w.skip_unknown()?,
            }
        }
        Ok(self.finish(out))
    }

    /// `ResourceMetrics`: the resource (wherever it is, merged) first, then its scopes.
    fn resource_metrics<'a>(
        &self,
        rm: &'a [u8],
        out: &mut Samples,
        scratch: &mut Scratch,
        ws: &mut WireScratch<'a>,
    ) -> Result<(), WireError> {
        let mut attrs = Vec::new();
        let mut buf = rm;
        while !buf.is_empty() {
            match field(&mut buf)? {
                (1, Wire::Len(res)) => resource_message(res, 2, &mut attrs)?,
                (2, Wire::Len(_)) => {}
                (3, Wire::Len(s)) => utf8(s).map(drop)?,
                (1..=3, _) => return Err("invalid wire type in ResourceMetrics"),
                (_, w) => w.skip_unknown()?,
            }
        }
        let resource_labels = self.resource_labels(&attrs, out);
        self.target_info(&attrs, &resource_labels, out);
        let mut buf = rm;
        while !buf.is_empty() {
            if let (2, Wire::Len(sm)) = field(&mut buf)? {
                self.scope_metrics(sm, &resource_labels, out, scratch, ws)?;
            }
        }
        Ok(())
    }

    /// `ScopeMetrics`: the scope and schema URL first, then its metrics.
    fn scope_metrics<'a>(
        &self,
        sm: &'a [u8],
        resource_labels: &[Label],
        out: &mut Samples,
        scratch: &mut Scratch,
        ws: &mut WireScratch<'a>,
    ) -> Result<(), WireError> {
        let mut scope = ScopeView {
            name: "",
            version: "",
            schema_url: "",
            attrs: &[][..],
        };
        let mut attrs = Vec::new();
        let mut buf = sm;
        while !buf.is_empty() {
            match field(&mut buf)? {
                (1, Wire::Len(s)) => instrumentation_scope(s, &mut scope.name, &mut scope.version, &mut attrs)?,
                (2, Wire::Len(_)) => {}
                (3, Wire::Len(s)) => scope.schema_url = utf8(s)?,
                (1..=3, _) => return Err("invalid wire type in ScopeMetrics"),
                (_, w) => w.skip_unknown()?,
            }
        }
        scope.attrs = &attrs;
        let labels = scope_labels(resource_labels, scope, &self.limits, self.strategy, out);
        let mut points = 0;
        let mut buf = sm;
        while !buf.is_empty() {
            if let (2, Wire::Len(m)) = field(&mut buf)? {
                points += self.metric(m, labels.as_deref().ok(), out, scratch, ws)?;
            }
        }
        if let Err(limited) = labels {
            reject_scope(limited, points, out);
        }
        Ok(())
    }

    /// `Metric`: translated under `scope_labels`, or only checked when its scope was refused.
    /// Returns its number of points.
    fn metric<'a>(
        &self,
        m: &'a [u8],
        scope_labels: Option<&[Label]>,
        out: &mut Samples,
        scratch: &mut Scratch,
        ws: &mut WireScratch<'a>,
    ) -> Result<u64, WireError> {
        let (mut name, mut description, mut unit) = ("", "", "");
        let mut data = Data::default();
        let mut index = 0;
        let mut buf = m;
        while !buf.is_empty() {
            match field(&mut buf)? {
                (1, Wire::Len(s)) => name = utf8(s)?,
                (2, Wire::Len(s)) => description = utf8(s)?,
                (3, Wire::Len(s)) => unit = utf8(s)?,
                (12, Wire::Len(kv)) => key_value(kv, 4).map(drop)?,
                (n @ (GAUGE | SUM | HISTOGRAM | EXPONENTIAL | SUMMARY), Wire::Len(_)) => {
                    // A different variant replaces the oneof; the same one merges into it.
                    if data.variant != Some(n) {
                        data.variant = Some(n);
                        data.run_start = index;
                    }
                    index += 1;
                }
                (1..=3 | 5 | 7 | 9..=12, _) => return Err("invalid wire type in Metric"),
                (_, w) => w.skip_unknown()?,
            }
        }
        // The final run's settings and point count, before any point is translated.
        let mut index = 0;
        let mut buf = m;
        while !buf.is_empty() {
            if let (n @ (GAUGE | SUM | HISTOGRAM | EXPONENTIAL | SUMMARY), Wire::Len(d)) = field(&mut buf)? {
                if index >= data.run_start {
                    data_settings(n, d, &mut data)?;
                }
                index += 1;
            }
        }
        let kind = data.variant.map(|v| match v {
            SUM if data.monotonic => MetricKind::Counter,
            SUM | GAUGE => MetricKind::Gauge,
            HISTOGRAM | EXPONENTIAL => MetricKind::Histogram,
            _ => MetricKind::Summary,
        });
        let limits = &self.limits;
        let ctx = scope_labels.and_then(|scope_labels| {
            let family = metric_family(name, unit, description.to_string(), kind, data.points, self, out)?;
            Some(PointCtx {
                family,
                kind: kind.unwrap_or(MetricKind::Gauge),
                scope_labels,
                limits,
                strategy: self.strategy,
            })
        });
        let t = temporality(data.temporality);
        let mut index = 0;
        let mut buf = m;
        while !buf.is_empty() {
            if let (n @ (GAUGE | SUM | HISTOGRAM | EXPONENTIAL | SUMMARY), Wire::Len(d)) = field(&mut buf)? {
                // Replaced variants are still checked, as prost decodes them before replacing them.
                let ctx = ctx.as_ref().filter(|_| index >= data.run_start);
                data_points(n, d, ctx, t, out, scratch, ws)?;
                index += 1;
            }
        }
        Ok(data.points)
    }
}

/// One field of a data message (`Gauge`, `Sum`, …): a point's bytes, or a setting read into
/// `data` (the last value wins).
fn data_field<'a>(variant: u32, f: (u32, Wire<'a>), data: &mut Data) -> Result<Option<&'a [u8]>, WireError> {
    match (variant, f) {
        (_, (1, Wire::Len(p))) => return Ok(Some(p)),
        (SUM | HISTOGRAM | EXPONENTIAL, (2, Wire::Varint(t))) => data.temporality = t as i32,
        (SUM, (3, Wire::Varint(m))) => data.monotonic = m != 0,
        (_, (1, _)) | (SUM | HISTOGRAM | EXPONENTIAL, (2, _)) | (SUM, (3, _)) => {
            return Err("invalid wire type in metric data");
        }
        (_, (_, w)) => w.skip_unknown()?,
    }
    Ok(None)
}

/// Reads a data message's settings and counts its points into `data`.
fn data_settings(variant: u32, mut buf: &[u8], data: &mut Data) -> Result<(), WireError> {
    while !buf.is_empty() {
        if data_field(variant, field(&mut buf)?, data)?.is_some() {
            data.points += 1;
        }
    }
    Ok(())
}

/// Reads every point of a data message, and translates them when there is a context.
fn data_points<'a>(
    variant: u32,
    mut buf: &'a [u8],
    ctx: Option<&PointCtx<'_>>,
    t: Temporality,
    out: &mut Samples,
    scratch: &mut Scratch,
    ws: &mut WireScratch<'a>,
) -> Result<(), WireError> {
    let mut settings = Data::default();
    while !buf.is_empty() {
        let Some(p) = data_field(variant, field(&mut buf)?, &mut settings)? else {
            continue;
        };
        match variant {
            GAUGE | SUM => {
                let p = ws.number(p)?;
                if let Some(ctx) = ctx {
                    let view = NumberView {
                        flags: p.flags,
                        start: p.start,
                        value: p.value,
                        attrs: &ws.attrs,
                        exemplars: &ws.exemplars,
                    };
                    let t = if variant == GAUGE { Temporality::Cumulative } else { t };
                    number_point(ctx, view, t, out, scratch);
                }
            }
            HISTOGRAM => {
                let p = ws.histogram(p)?;
                if let Some(ctx) = ctx {
                    let view = HistogramView {
                        flags: p.flags,
                        start: p.start,
                        count: p.count,
                        sum: p.sum,
                        bounds: &ws.floats,
                        counts: &ws.counts,
                        attrs: &ws.attrs,
                        exemplars: &ws.exemplars,
                    };
                    histogram_point(ctx, view, t, out, scratch);
                }
            }
            EXPONENTIAL => {
                let p = ws.exponential(p)?;
                if let Some(ctx) = ctx {
                    let view = ExpView {
                        flags: p.flags,
                        start: p.start,
                        count: p.count,
                        sum: p.sum,
                        scale: p.scale,
                        zero_count: p.zero_count,
                        zero_threshold: p.zero_threshold,
                        positive: p.positive.map(|o| (o, &ws.counts[..])),
                        negative: p.negative.map(|o| (o, &ws.negative[..])),
                        attrs: &ws.attrs,
                        exemplars: &ws.exemplars,
                    };
                    exponential_point(ctx, view, t, out, scratch);
                }
            }
            _ => {
                let p = ws.summary(p)?;
                if let Some(ctx) = ctx {
                    let view = SummaryView {
                        flags: p.flags,
                        start: p.start,
                        count: p.count,
                        sum: p.sum,
                        quantiles: &ws.quantiles,
                        attrs: &ws.attrs,
                    };
                    summary_point(ctx, view, out, scratch);
                }
            }
        }
    }
    Ok(())
}

/// `InstrumentationScope` (nested three deep): the last name and version win, attributes append.
fn instrumentation_scope<'a>(
    mut buf: &'a [u8],
    name: &mut &'a str,
    version: &mut &'a str,
    attrs: &mut Vec<WireAttr<'a>>,
) -> Result<(), WireError> {
    while !buf.is_empty() {
        match field(&mut buf)? {
            (1, Wire::Len(s)) => *name = utf8(s)?,
            (2, Wire::Len(s)) => *version = utf8(s)?,
            (3, Wire::Len(kv)) => attrs.push(key_value(kv, 4)?),
            (4, Wire::Varint(_)) => {}
            (1..=4, _) => return Err("invalid wire type in InstrumentationScope"),
            (_, w) => w.skip_unknown()?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
