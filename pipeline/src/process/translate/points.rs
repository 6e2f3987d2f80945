//! One OTLP data point (number, histogram, exponential histogram, summary) → [`Point`]s of
//! [`Samples`], with its labels and exemplars; invalid or limited points are rejected.

use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1 as pm;

use crate::model::{Exemplar, MetricKind, Temporality, TranslationStrategy};
use crate::receive::config::LimitsConfig;

use super::Scratch;
use super::attrs::Attr;
use super::labels::{merge_labels, push_label_name, push_str, sort_labels};
use super::limits::{Limited, check_labels, too_many_attributes, truncate_value};
use crate::model::batch::LimitReason;
use crate::model::batch::{ExpPoint, Label, Point, PointValue, Samples, Span};

pub(super) struct PointCtx<'a> {
    pub(super) family: u32,
    pub(super) kind: MetricKind,
    pub(super) scope_labels: &'a [Label],
    pub(super) limits: &'a LimitsConfig,
    /// How label names are made from attribute keys.
    pub(super) strategy: TranslationStrategy,
}

/// Why a point was rejected: invalid, or past a limit (counted by reason).
pub(super) enum Rejection {
    Invalid(String),
    Limit(Limited),
}

pub(super) const NO_RECORDED_VALUE: u32 = pm::DataPointFlags::NoRecordedValueMask as u32;

/// An exemplar as translation reads it.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ExemplarView<'a> {
    pub(super) trace_id: &'a [u8],
    pub(super) span_id: &'a [u8],
    /// `as_double`, or `as_int` as a float; `None` without a value.
    pub(super) value: Option<f64>,
    pub(super) time_unix_nano: u64,
}

/// An exemplar, decoded or read in place.
pub(super) trait AsExemplar {
    fn view(&self) -> ExemplarView<'_>;
}

impl AsExemplar for pm::Exemplar {
    fn view(&self) -> ExemplarView<'_> {
        ExemplarView {
            trace_id: &self.trace_id,
            span_id: &self.span_id,
            value: match self.value {
                Some(pm::exemplar::Value::AsDouble(d)) => Some(d),
                Some(pm::exemplar::Value::AsInt(i)) => Some(i as f64),
                None => None,
            },
            time_unix_nano: self.time_unix_nano,
        }
    }
}

impl AsExemplar for ExemplarView<'_> {
    fn view(&self) -> ExemplarView<'_> {
        *self
    }
}

/// A number data point as translation reads it.
pub(super) struct NumberView<'a, A, E> {
    pub(super) flags: u32,
    /// `start_time_unix_nano` (0: unknown).
    pub(super) start: u64,
    /// `as_double`, or `as_int` as a float.
    pub(super) value: Option<f64>,
    pub(super) attrs: &'a [A],
    pub(super) exemplars: &'a [E],
}

/// An explicit-bucket histogram data point as translation reads it.
pub(super) struct HistogramView<'a, A, E> {
    pub(super) flags: u32,
    /// `start_time_unix_nano` (0: unknown).
    pub(super) start: u64,
    pub(super) count: u64,
    pub(super) sum: Option<f64>,
    pub(super) bounds: &'a [f64],
    pub(super) counts: &'a [u64],
    pub(super) attrs: &'a [A],
    pub(super) exemplars: &'a [E],
}

/// An exponential histogram data point as translation reads it; buckets as (offset, counts).
pub(super) struct ExpView<'a, A, E> {
    pub(super) flags: u32,
    /// `start_time_unix_nano` (0: unknown).
    pub(super) start: u64,
    pub(super) count: u64,
    pub(super) sum: Option<f64>,
    pub(super) scale: i32,
    pub(super) zero_count: u64,
    pub(super) zero_threshold: f64,
    pub(super) positive: Option<(i32, &'a [u64])>,
    pub(super) negative: Option<(i32, &'a [u64])>,
    pub(super) attrs: &'a [A],
    pub(super) exemplars: &'a [E],
}

/// A summary data point as translation reads it; quantiles as (quantile, value).
pub(super) struct SummaryView<'a, A, Q> {
    pub(super) flags: u32,
    /// `start_time_unix_nano` (0: unknown).
    pub(super) start: u64,
    pub(super) count: u64,
    pub(super) sum: f64,
    pub(super) quantiles: &'a [Q],
    pub(super) attrs: &'a [A],
}

/// A summary quantile, decoded or read in place: (quantile, value).
pub(super) trait AsQuantile {
    fn pair(&self) -> (f64, f64);
}

impl AsQuantile for pm::summary_data_point::ValueAtQuantile {
    fn pair(&self) -> (f64, f64) {
        (self.quantile, self.value)
    }
}

impl AsQuantile for (f64, f64) {
    fn pair(&self) -> (f64, f64) {
        *self
    }
}

impl<'a> NumberView<'a, KeyValue, pm::Exemplar> {
    pub(super) fn of(dp: &'a pm::NumberDataPoint) -> Self {
        NumberView {
            flags: dp.flags,
            start: dp.start_time_unix_nano,
            value: match dp.value {
                Some(pm::number_data_point::Value::AsDouble(d)) => Some(d),
                Some(pm::number_data_point::Value::AsInt(i)) => Some(i as f64),
                None => None,
            },
            attrs: &dp.attributes,
            exemplars: &dp.exemplars,
        }
    }
}

impl<'a> HistogramView<'a, KeyValue, pm::Exemplar> {
    pub(super) fn of(dp: &'a pm::HistogramDataPoint) -> Self {
        HistogramView {
            flags: dp.flags,
            start: dp.start_time_unix_nano,
            count: dp.count,
            sum: dp.sum,
            bounds: &dp.explicit_bounds,
            counts: &dp.bucket_counts,
            attrs: &dp.attributes,
            exemplars: &dp.exemplars,
        }
    }
}

impl<'a> ExpView<'a, KeyValue, pm::Exemplar> {
    pub(super) fn of(dp: &'a pm::ExponentialHistogramDataPoint) -> Self {
        let side = |b: &'a Option<pm::exponential_histogram_data_point::Buckets>| {
            b.as_ref().map(|b| (b.offset, &b.bucket_counts[..]))
        };
        ExpView {
            flags: dp.flags,
            start: dp.start_time_unix_nano,
            count: dp.count,
            sum: dp.sum,
            scale: dp.scale,
            zero_count: dp.zero_count,
            zero_threshold: dp.zero_threshold,
            positive: side(&dp.positive),
            negative: side(&dp.negative),
            attrs: &dp.attributes,
            exemplars: &dp.exemplars,
        }
    }
}

impl<'a> SummaryView<'a, KeyValue, pm::summary_data_point::ValueAtQuantile> {
    pub(super) fn of(dp: &'a pm::SummaryDataPoint) -> Self {
        SummaryView {
            flags: dp.flags,
            start: dp.start_time_unix_nano,
            count: dp.count,
            sum: dp.sum,
            quantiles: &dp.quantile_values,
            attrs: &dp.attributes,
        }
    }
}

impl PointCtx<'_> {
    /// Pushes the point's labels; returns their span or a rejection reason. A rejected point
    /// leaves nothing behind in the arenas.
    fn labels<A: Attr>(&self, attrs: &[A], out: &mut Samples, scratch: &mut Scratch) -> Result<Span, Rejection> {
        let limits = self.limits;
        if attrs.len() > limits.max_attributes_per_point {
            let why = too_many_attributes("data point", attrs.len(), limits.max_attributes_per_point);
            return Err(Rejection::Limit((LimitReason::TooManyAttributes, why)));
        }
        let start = out.labels.len();
        let text_start = out.text.len();
        // Most points have the previous point's keys: its names and order are reused.
        let cached = !scratch.fresh_layouts && scratch.layout.matches(self.scope_labels, attrs);
        let mut truncations = self.push_labels(attrs.iter(), cached, out, scratch);
        let collided = if cached {
            scratch.layout.apply(&mut out.labels[start..]);
            false
        } else {
            scratch.layout.sort(self.scope_labels, attrs, out, start)
        };
        if collided {
            // Names collided after sanitizing: values are joined in the order of the original keys.
            out.labels.truncate(start);
            out.text.truncate(text_start);
            let mut sorted: Vec<&A> = attrs.iter().collect();
            sorted.sort_by(|a, b| a.attr_key().cmp(b.attr_key()));
            truncations = self.push_labels(sorted.into_iter(), false, out, scratch);
            sort_labels(out, start);
            truncations += merge_labels(out, start, limits.max_label_value_length, &mut scratch.merged);
        }
        if let Err(e) = check_labels(out, start, limits) {
            out.labels.truncate(start);
            out.text.truncate(text_start);
            return Err(Rejection::Limit(e));
        }
        let reserved = match self.kind {
            MetricKind::Histogram => Some("le"),
            MetricKind::Summary => Some("quantile"),
            _ => None,
        };
        if let Some(r) = reserved
            && out.labels[start..].iter().any(|l| &out.text[l.name.range()] == r)
        {
            out.labels.truncate(start);
            out.text.truncate(text_start);
            return Err(Rejection::Invalid(format!(
                "attribute `{r}` is reserved for {} buckets",
                self.kind.openmetrics_type()
            )));
        }
        out.limited.add(LimitReason::LabelValueTruncated, truncations);
        Ok(Span::new(start, out.labels.len()))
    }

    /// Pushes the scope labels and one label per attribute (values truncated; names sanitized,
    /// or the cached layout's when `cached`); returns how many values were truncated.
    fn push_labels<'a, A: Attr + 'a>(
        &self,
        attrs: impl Iterator<Item = &'a A>,
        cached: bool,
        out: &mut Samples,
        scratch: &mut Scratch,
    ) -> u64 {
        out.labels.extend_from_slice(self.scope_labels);
        let mut truncations = 0;
        for (i, kv) in attrs.enumerate() {
            scratch.value.clear();
            kv.push_value(&mut scratch.value);
            truncations += u64::from(truncate_value(&mut scratch.value, self.limits.max_label_value_length));
            let name = if cached {
                push_str(&mut out.text, scratch.layout.name(i))
            } else {
                push_label_name(&mut out.text, kv.attr_key(), self.strategy)
            };
            let value = push_str(&mut out.text, &scratch.value);
            out.labels.push(Label { name, value });
        }
        truncations
    }

    fn push(&self, out: &mut Samples, labels: Span, t: Temporality, value: PointValue, exemplars: Span, start: u64) {
        out.points.push(Point {
            family: self.family,
            labels,
            temporality: t,
            value,
            exemplars,
            start_time_unix_nano: start,
        });
        out.outcome.accepted += 1;
    }

    fn reject(&self, out: &mut Samples, why: impl FnOnce() -> String) {
        let name = &out.families[self.family as usize].name;
        let msg = format!("{name}: {}", why());
        out.outcome.reject(1, || msg);
    }

    /// Rejects a point whose labels were refused, counting a limit by its reason.
    fn reject_labels(&self, out: &mut Samples, r: Rejection) {
        match r {
            Rejection::Invalid(why) => self.reject(out, || why),
            Rejection::Limit((reason, why)) => {
                out.limited.add(reason, 1);
                self.reject(out, || why);
            }
        }
    }
}

pub(super) fn number_point<A: Attr, E: AsExemplar>(
    ctx: &PointCtx<'_>,
    dp: NumberView<'_, A, E>,
    t: Temporality,
    out: &mut Samples,
    s: &mut Scratch,
) {
    if dp.flags & NO_RECORDED_VALUE != 0 {
        return;
    }
    let Some(v) = dp.value else {
        return ctx.reject(out, || "data point has no value".into());
    };
    if ctx.kind == MetricKind::Counter && (v.is_nan() || v < 0.0) {
        return ctx.reject(out, || {
            format!("monotonic sum has value {v}; counters must be non-negative numbers")
        });
    }
    let labels = match ctx.labels(dp.attrs, out, s) {
        Ok(l) => l,
        Err(e) => return ctx.reject_labels(out, e),
    };
    let ex = if ctx.kind == MetricKind::Counter {
        push_exemplars(dp.exemplars, out)
    } else {
        Span::default()
    };
    ctx.push(out, labels, t, PointValue::Number(v), ex, dp.start);
}

pub(super) fn histogram_point<A: Attr, E: AsExemplar>(
    ctx: &PointCtx<'_>,
    dp: HistogramView<'_, A, E>,
    t: Temporality,
    out: &mut Samples,
    s: &mut Scratch,
) {
    if dp.flags & NO_RECORDED_VALUE != 0 {
        return;
    }
    let nb = dp.bounds.len();
    if !dp.counts.is_empty() && dp.counts.len() != nb + 1 {
        return ctx.reject(out, || {
            format!(
                "histogram has {} bucket counts for {nb} bounds (expected {})",
                dp.counts.len(),
                nb + 1
            )
        });
    }
    if dp.bounds.iter().any(|b| !b.is_finite()) {
        return ctx.reject(out, || {
            "histogram bounds must be finite (the +Inf bucket is implicit)".into()
        });
    }
    if dp.bounds.windows(2).any(|w| w[0] >= w[1]) {
        return ctx.reject(out, || "histogram bounds are not strictly increasing".into());
    }
    let labels = match ctx.labels(dp.attrs, out, s) {
        Ok(l) => l,
        Err(e) => return ctx.reject_labels(out, e),
    };
    let fb = out.floats.len();
    let cb = out.counts.len();
    if dp.counts.is_empty() {
        // No buckets: a single +Inf bucket holding every observation.
        out.counts.push(dp.count);
    } else {
        out.floats.extend_from_slice(dp.bounds);
        out.counts.extend_from_slice(dp.counts);
    }
    let bounds = Span::new(fb, out.floats.len());
    let counts = Span::new(cb, out.counts.len());
    let ex = push_exemplars(dp.exemplars, out);
    let value = PointValue::Histogram {
        count: dp.count,
        sum: dp.sum.unwrap_or(f64::NAN),
        bounds,
        counts,
    };
    ctx.push(out, labels, t, value, ex, dp.start);
}

pub(super) fn exponential_point<A: Attr, E: AsExemplar>(
    ctx: &PointCtx<'_>,
    dp: ExpView<'_, A, E>,
    t: Temporality,
    out: &mut Samples,
    s: &mut Scratch,
) {
    if dp.flags & NO_RECORDED_VALUE != 0 {
        return;
    }
    if !(-10..=20).contains(&dp.scale) {
        return ctx.reject(out, || {
            format!("exponential histogram scale {} outside [-10, 20]", dp.scale)
        });
    }
    if !(dp.zero_threshold >= 0.0 && dp.zero_threshold.is_finite()) {
        return ctx.reject(out, || {
            format!(
                "exponential histogram zero_threshold {} is not a finite non-negative number",
                dp.zero_threshold
            )
        });
    }
    for (offset, counts) in [dp.positive, dp.negative].into_iter().flatten() {
        if !finite_bucket_range(dp.scale, offset, counts.len()) {
            return ctx.reject(out, || {
                format!("exponential histogram buckets from offset {offset} lie outside the float range")
            });
        }
    }
    let labels = match ctx.labels(dp.attrs, out, s) {
        Ok(l) => l,
        Err(e) => return ctx.reject_labels(out, e),
    };
    let (po, pos) = dp.positive.unwrap_or_default();
    let (no, neg) = dp.negative.unwrap_or_default();
    let p0 = out.counts.len();
    out.counts.extend_from_slice(pos);
    let n0 = out.counts.len();
    out.counts.extend_from_slice(neg);
    let ex = push_exemplars(dp.exemplars, out);
    let value = PointValue::Exponential(ExpPoint {
        count: dp.count,
        sum: dp.sum.unwrap_or(f64::NAN),
        scale: dp.scale,
        zero_count: dp.zero_count,
        zero_threshold: dp.zero_threshold,
        positive_offset: po,
        positive: Span::new(p0, n0),
        negative_offset: no,
        negative: Span::new(n0, out.counts.len()),
    });
    ctx.push(out, labels, t, value, ex, dp.start);
}

/// Whether buckets `offset .. offset + len` at `scale` all have finite bounds: bucket `i` spans
/// `(2^(i·2^-scale), 2^((i+1)·2^-scale)]`, and `f64` covers `2^-1075 .. 2^1024`. This also keeps every
/// index arithmetic on stored histograms well inside `i32`.
pub(super) fn finite_bucket_range(scale: i32, offset: i32, len: usize) -> bool {
    let at_scale = |exp: i64| if scale >= 0 { exp << scale } else { exp >> -scale };
    let (lo, hi) = (i64::from(offset), i64::from(offset) + len as i64);
    lo >= at_scale(-1075) && hi < at_scale(1024)
}

pub(super) fn summary_point<A: Attr, Q: AsQuantile>(
    ctx: &PointCtx<'_>,
    dp: SummaryView<'_, A, Q>,
    out: &mut Samples,
    s: &mut Scratch,
) {
    if dp.flags & NO_RECORDED_VALUE != 0 {
        return;
    }
    if dp.quantiles.iter().any(|q| !(0.0..=1.0).contains(&q.pair().0)) {
        return ctx.reject(out, || "summary quantile outside [0, 1]".into());
    }
    if dp.sum < 0.0 || dp.quantiles.iter().any(|q| q.pair().1 < 0.0) {
        return ctx.reject(out, || {
            "summary with negative values cannot be exposed in OpenMetrics".into()
        });
    }
    let labels = match ctx.labels(dp.attrs, out, s) {
        Ok(l) => l,
        Err(e) => return ctx.reject_labels(out, e),
    };
    let f0 = out.floats.len();
    for q in dp.quantiles {
        let (quantile, value) = q.pair();
        out.floats.push(quantile);
        out.floats.push(value);
    }
    let value = PointValue::Summary {
        count: dp.count,
        sum: dp.sum,
        quantiles: Span::new(f0, out.floats.len()),
    };
    ctx.push(out, labels, Temporality::Cumulative, value, Span::default(), dp.start);
}

/// Keeps exemplars that link to a trace (16-byte non-zero trace id, 8-byte span id).
pub(super) fn push_exemplars<E: AsExemplar>(exs: &[E], out: &mut Samples) -> Span {
    let start = out.exemplars.len();
    for e in exs {
        let e = e.view();
        let (Ok(trace_id), Ok(span_id)) = (<[u8; 16]>::try_from(e.trace_id), <[u8; 8]>::try_from(e.span_id)) else {
            continue;
        };
        if trace_id == [0; 16] {
            continue;
        }
        let Some(value) = e.value else { continue };
        out.exemplars.push(Exemplar {
            trace_id,
            span_id,
            value,
            time_unix_nano: e.time_unix_nano,
        });
    }
    Span::new(start, out.exemplars.len())
}
