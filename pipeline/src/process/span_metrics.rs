//! Span metrics: RED metrics from spans, named like the OpenTelemetry Collector's spanmetrics
//! connector so dashboards carry over.
//!
//! In: a traces request, by reference (the request itself moves on to the exporter). Out:
//! [`SpanMetricsBatch`]: the counts (`traces_span_metrics_calls_total`, the
//! `traces_span_metrics_duration_seconds` histogram, as delta points) to store now, and the
//! exemplars to store once the spans they name have been forwarded. Spans of one request that
//! share a label set are aggregated first, so the store sees one update per series per request.
//!
//! With `histogram: native` the duration is an exponential histogram instead of classic buckets:
//! each series' spans of a request are recorded as the OTel SDK's exponential aggregation records
//! them (from `native_max_scale`, downscaled so the buckets stay within `native_max_buckets`), and
//! the store merges requests exactly. The protobuf exposition and remote write then carry it as a
//! native histogram with its exemplars; the text formats as classic buckets at its boundaries.
//! With `histogram: both` each point carries the classic buckets and the exponential histogram of
//! the same spans ([`PointValue::Both`]): the text formats show the classic ones, the protobuf
//! exposition carries both in one histogram.
//!
//! Each span counts with its adjusted count when its `tracestate` carries an OTel
//! probability-sampling threshold (`ot=th:…`): `2^56 / (2^56 − T)`.
//!
//! Limits (`receivers.otlp.limits`): [`SpanMetrics::limit_spans`] rejects spans with more than
//! `max_attributes_per_span` attributes before anything reads them; service names, span names and
//! dimension values longer than `max_label_value_length` are truncated (with `…`) before spans are
//! aggregated, so one huge name cannot make every scrape huge. Both are counted per request.

use hashbrown::HashMap;
use std::borrow::Cow;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;

pub mod config;
pub mod wire;
pub use config::*;
use wire::{WireAttr, WireRequest};

use super::translate::{LimitStats, truncate_value, truncated, write_any};

use crate::model::batch::{ExpPoint, FamilyMeta, LimitCounts, LimitReason, PointValue, Samples, Span};
use crate::model::exp::bucket_index;
use crate::model::{Exemplar, MetricKind, Outcome, Signal, Temporality};
use crate::receive::config::LimitsConfig;
use crate::util::labels::sanitized_label_name;

/// Family name of the call counter (exposed as `traces_span_metrics_calls_total`).
pub const CALLS: &str = "traces_span_metrics_calls";
/// Family name of the duration histogram.
pub const DURATION: &str = "traces_span_metrics_duration_seconds";

const KINDS: [&str; 6] = [
    "SPAN_KIND_UNSPECIFIED",
    "SPAN_KIND_INTERNAL",
    "SPAN_KIND_SERVER",
    "SPAN_KIND_CLIENT",
    "SPAN_KIND_PRODUCER",
    "SPAN_KIND_CONSUMER",
];
const STATUSES: [&str; 3] = ["STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR"];

/// The span-metrics processor.
#[derive(Debug, Clone)]
pub struct SpanMetrics {
    config: SpanMetricsConfig,
    /// Bit `k` set: spans of OTLP kind `k` count.
    kinds: u8,
    limits: LimitsConfig,
    stats: Option<Arc<LimitStats>>,
    /// The label names of a series, sanitized once: `service_name`, `span_name`, `span_kind`,
    /// `status_code` and the dimensions, in the order of [`Agg::values`].
    label_names: Vec<String>,
    /// Indices into `label_names` in name order, so that labels are pushed sorted.
    label_order: Vec<usize>,
}

/// What one traces request contributes.
#[derive(Debug, Default)]
pub struct SpanMetricsBatch {
    /// Delta updates of calls and durations, to write at once.
    pub counts: Samples,
    /// Zero-valued delta points carrying the exemplars, to write once the spans are forwarded.
    pub exemplars: Samples,
    /// Spans that were counted.
    pub spans: u64,
    /// Label values truncated by `max_label_value_length`.
    pub limited: LimitCounts,
}

#[derive(Debug)]
struct Agg {
    values: Vec<Option<String>>,
    calls: f64,
    counts: Vec<u64>,
    sum: f64,
    newest: Option<Exemplar>,
    bucket_exemplars: Vec<Option<Exemplar>>,
    /// `histogram: native` or `both`: the durations as an exponential histogram.
    native: Option<Native>,
}

/// One series' durations in one request as a base-2 exponential histogram (positive buckets and
/// a zero bucket for zero-length spans), recorded at the finest scale (from `native_max_scale`
/// down) that keeps the buckets within `native_max_buckets`, as the OTel SDK records.
#[derive(Debug)]
struct Native {
    scale: i32,
    offset: i32,
    counts: Vec<u64>,
    zero: u64,
}

impl Native {
    fn new(scale: i32) -> Self {
        Native {
            scale,
            offset: 0,
            counts: Vec::new(),
            zero: 0,
        }
    }

    /// Counts `n` observations of `v` seconds, downscaling first when its bucket would make the
    /// range wider than `max` buckets.
    fn record(&mut self, v: f64, n: u64, max: usize) {
        if !(v > 0.0 && v.is_finite()) {
            self.zero = self.zero.saturating_add(n);
            return;
        }
        let mut idx = bucket_index(v, self.scale);
        if self.counts.is_empty() {
            self.offset = idx;
            self.counts.push(n);
            return;
        }
        loop {
            let lo = i64::from(self.offset.min(idx));
            let hi = (i64::from(self.offset) + self.counts.len() as i64 - 1).max(i64::from(idx));
            if (hi - lo + 1) as usize <= max.max(1) || self.scale <= -10 {
                break;
            }
            self.downscale();
            idx >>= 1;
        }
        if idx < self.offset {
            let grow = (self.offset - idx) as usize;
            self.counts.splice(0..0, std::iter::repeat_n(0, grow));
            self.offset = idx;
        }
        let i = (idx - self.offset) as usize;
        if i >= self.counts.len() {
            self.counts.resize(i + 1, 0);
        }
        self.counts[i] = self.counts[i].saturating_add(n);
    }

    /// Halves the resolution: buckets merge in pairs (bucket `i` becomes `i >> 1`).
    fn downscale(&mut self) {
        let first = self.offset >> 1;
        let last = (self.offset + self.counts.len() as i32 - 1) >> 1;
        let mut out = vec![0u64; (last - first + 1) as usize];
        for (i, c) in self.counts.iter().enumerate() {
            let k = (((self.offset + i as i32) >> 1) - first) as usize;
            out[k] = out[k].saturating_add(*c);
        }
        self.offset = first;
        self.counts = out;
        self.scale -= 1;
    }
}

impl SpanMetrics {
    /// A processor with this configuration.
    pub fn new(config: SpanMetricsConfig) -> Self {
        let kinds = if config.span_kinds.is_empty() {
            u8::MAX
        } else {
            config.span_kinds.iter().fold(0u8, |m, k| m | (1 << k.otlp()))
        };
        let label_names: Vec<String> = ["service_name", "span_name", "span_kind", "status_code"]
            .into_iter()
            .chain(config.dimensions.iter().map(|d| d.name.as_str()))
            .map(sanitized_label_name)
            .collect();
        let mut label_order: Vec<usize> = (0..label_names.len()).collect();
        label_order.sort_by(|&a, &b| label_names[a].cmp(&label_names[b]));
        Self {
            config,
            kinds,
            limits: LimitsConfig::default(),
            stats: None,
            label_names,
            label_order,
        }
    }

    /// The same processor with these limits (the defaults of [`LimitsConfig`] otherwise).
    pub fn with_limits(mut self, limits: LimitsConfig) -> Self {
        self.limits = limits;
        self
    }

    /// The same processor, counting what its limits refuse or truncate in
    /// `spindle_limited_items_total{signal="traces"}` once per request.
    pub fn with_stats(mut self, stats: Arc<LimitStats>) -> Self {
        self.stats = Some(stats);
        self
    }

    /// Removes the spans with more than `max_attributes_per_span` attributes, whether or not span
    /// metrics are on, and reports them as rejected in `out` (call before anything reads or
    /// forwards the spans). Returns how many were removed.
    pub fn limit_spans(&self, req: &mut ExportTraceServiceRequest, out: &mut Outcome) -> u64 {
        let max = self.limits.max_attributes_per_span;
        let mut removed = 0;
        let mut most = 0;
        for ss in req.resource_spans.iter_mut().flat_map(|rs| rs.scope_spans.iter_mut()) {
            let before = ss.spans.len();
            ss.spans.retain(|s| {
                most = most.max(s.attributes.len());
                s.attributes.len() <= max
            });
            removed += (before - ss.spans.len()) as u64;
        }
        if removed > 0 {
            out.reject(removed, || {
                format!("span with {most} attributes, more than receivers.otlp.limits.max_attributes_per_span ({max})")
            });
            let mut counts = LimitCounts::default();
            counts.add(LimitReason::TooManyAttributes, removed);
            if let Some(t) = &self.stats {
                t.limited(Signal::Traces, &counts);
            }
        }
        removed
    }

    /// Whether every span of an encoded request has at most `max_attributes_per_span` attributes
    /// (so that [`SpanMetrics::limit_spans`] would remove none from the decoded request).
    pub fn admits_all(&self, req: &WireRequest<'_>) -> bool {
        let max = self.limits.max_attributes_per_span;
        req.spans.iter().all(|s| req.span_attrs(s).len() <= max)
    }

    /// Whether span metrics are on.
    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    /// Computes the span metrics of a request.
    pub fn process(&self, req: &ExportTraceServiceRequest) -> SpanMetricsBatch {
        let mut acc = Acc::default();
        for rs in &req.resource_spans {
            let resource: &[KeyValue] = rs.resource.as_ref().map_or(&[], |r| &r.attributes);
            let service = self.service(&resource, &mut acc);
            for span in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
                let fields = SpanFields {
                    kind: span.kind,
                    status: span.status.as_ref().map_or(0, |s| s.code),
                    name: &span.name,
                    trace_state: &span.trace_state,
                    start: span.start_time_unix_nano,
                    end: span.end_time_unix_nano,
                    trace_id: &span.trace_id,
                    span_id: &span.span_id,
                };
                self.add(&mut acc, &service, &resource, &fields, &span.attributes.as_slice());
            }
        }
        self.finish(acc)
    }

    /// Computes the span metrics of a request read from its bytes ([`WireRequest`]): the same
    /// batch [`SpanMetrics::process`] computes from the decoded request.
    pub fn process_wire(&self, req: &WireRequest<'_>) -> SpanMetricsBatch {
        let mut acc = Acc::default();
        let services: Vec<String> = (0..req.resources() as u32)
            .map(|i| self.service(&req.resource_attrs(i), &mut acc))
            .collect();
        for span in &req.spans {
            let fields = SpanFields {
                kind: span.kind,
                status: span.status_code,
                name: span.name,
                trace_state: span.trace_state,
                start: span.start_time_unix_nano,
                end: span.end_time_unix_nano,
                trace_id: span.trace_id,
                span_id: span.span_id,
            };
            let resource = req.resource_attrs(span.resource);
            self.add(
                &mut acc,
                &services[span.resource as usize],
                &resource,
                &fields,
                &req.span_attrs(span),
            );
        }
        self.finish(acc)
    }

    fn service(&self, resource: &impl Attrs, acc: &mut Acc) -> String {
        let max = self.limits.max_label_value_length;
        resource
            .find(SERVICE_NAME, max, &mut acc.limited)
            .unwrap_or_else(|| "unknown_service".into())
    }

    /// Counts one span into its series.
    fn add(&self, acc: &mut Acc, service: &str, resource: &impl Attrs, span: &SpanFields<'_>, attrs: &impl Attrs) {
        let max = self.limits.max_label_value_length;
        let buckets = &self.config.buckets;
        let kind = span.kind.clamp(0, 5) as usize;
        if self.kinds & (1 << kind) == 0 {
            return;
        }
        acc.spans += 1;
        let status = span.status.clamp(0, 2) as usize;
        let limited = &mut acc.limited;
        let dims: Vec<Option<String>> = self
            .config
            .dimensions
            .iter()
            .map(|d| {
                attrs
                    .find(&d.name, max, limited)
                    .or_else(|| resource.find(&d.name, max, limited))
                    .or(d.default.clone())
            })
            .collect();
        // Long names are cut before aggregating: spans whose names share the kept prefix count in
        // one series (totals are kept).
        let span_name = truncated(span.name, max);
        if let Cow::Owned(_) = span_name {
            limited.add(LimitReason::LabelValueTruncated, 1);
        }
        let key = &mut acc.key;
        key.clear();
        for part in [service, &span_name, KINDS[kind], STATUSES[status]] {
            key.push_str(part);
            key.push('\0');
        }
        for d in &dims {
            key.push(if d.is_some() { '\u{1}' } else { '\u{2}' });
            key.push_str(d.as_deref().unwrap_or(""));
            key.push('\0');
        }
        // Look up before inserting: most spans hit an existing label set, and the key is only
        // copied for new ones.
        let i = match acc.index.get(key.as_str()) {
            Some(&i) => i,
            None => {
                let mut values = vec![
                    Some(service.to_string()),
                    Some(span_name.into_owned()),
                    Some(KINDS[kind].to_string()),
                    Some(STATUSES[status].to_string()),
                ];
                values.extend(dims);
                acc.aggs.push(Agg {
                    values,
                    calls: 0.0,
                    counts: vec![0; buckets.len() + 1],
                    sum: 0.0,
                    newest: None,
                    bucket_exemplars: vec![None; buckets.len() + 1],
                    native: self
                        .config
                        .histogram
                        .native()
                        .then(|| Native::new(self.config.native_max_scale)),
                });
                acc.index.insert(key.clone(), acc.aggs.len() - 1);
                acc.aggs.len() - 1
            }
        };
        let agg = &mut acc.aggs[i];
        let weight = adjusted_count(span.trace_state);
        let secs = span.end.saturating_sub(span.start) as f64 / 1e9;
        let b = buckets.partition_point(|x| *x < secs);
        agg.calls += weight;
        agg.counts[b] = agg.counts[b].saturating_add(weight.round().max(1.0) as u64);
        agg.sum += secs * weight;
        if let Some(n) = &mut agg.native {
            n.record(secs, weight.round().max(1.0) as u64, self.config.native_max_buckets);
        }
        if let Some(e) = exemplar(span, secs) {
            if agg.newest.is_none_or(|n| n.time_unix_nano <= e.time_unix_nano) {
                agg.newest = Some(e);
            }
            let slot = &mut agg.bucket_exemplars[b];
            if slot.is_none_or(|n| n.time_unix_nano <= e.time_unix_nano) {
                *slot = Some(e);
            }
        }
    }

    fn finish(&self, acc: Acc) -> SpanMetricsBatch {
        if let Some(t) = &self.stats
            && !acc.limited.is_empty()
        {
            t.limited(Signal::Traces, &acc.limited);
        }
        let mut batch = self.emit(acc.aggs, acc.spans);
        batch.limited = acc.limited;
        batch
    }

    fn emit(&self, aggs: Vec<Agg>, spans: u64) -> SpanMetricsBatch {
        let names = &self.label_names;
        let mut out = SpanMetricsBatch {
            spans,
            ..Default::default()
        };
        let zero_counts = vec![0u64; self.config.buckets.len() + 1];
        for (batch, is_exemplars) in [(&mut out.counts, false), (&mut out.exemplars, true)] {
            if aggs.is_empty() {
                break;
            }
            // Every arena sized once for the request's series (2 points each: calls and duration).
            let n = aggs.len();
            let text: usize = aggs
                .iter()
                .flat_map(|a| a.values.iter().flatten())
                .map(String::len)
                .sum::<usize>()
                + n * names.iter().map(|l| l.len()).sum::<usize>();
            let buckets = self.config.buckets.len();
            batch.points.reserve(2 * n);
            batch.labels.reserve(2 * n * names.len());
            batch.text.reserve(text);
            batch.floats.reserve(n * buckets);
            batch.counts.reserve(n * (buckets + 1));
            batch
                .exemplars
                .reserve(if is_exemplars { n * (buckets + 2) } else { 0 });
            let calls = batch.add_family(FamilyMeta {
                name: CALLS.into(),
                kind: MetricKind::Counter,
                help: "Spans received, by service, name, kind and status (weighted by adjusted count).".into(),
                unit: String::new(),
            });
            let duration = batch.add_family(FamilyMeta {
                name: DURATION.into(),
                kind: MetricKind::Histogram,
                help: "Span durations, by service, name, kind and status.".into(),
                unit: "seconds".into(),
            });
            for agg in &aggs {
                let start = batch.labels.len();
                // In name order, so that the point's labels need no sorting (names that collide
                // after sanitizing are still joined by `add_point`).
                for &i in &self.label_order {
                    if let Some(v) = &agg.values[i] {
                        batch.add_sanitized_label(&names[i], v);
                    }
                }
                let (value, exemplars): (f64, Vec<Exemplar>) = if is_exemplars {
                    (0.0, agg.newest.into_iter().collect())
                } else {
                    (agg.calls, Vec::new())
                };
                let labels = batch.add_point(calls, start, Temporality::Delta, PointValue::Number(value), &exemplars);
                let native = agg
                    .native
                    .as_ref()
                    .map(|n| self.native_point(batch, agg, n, is_exemplars));
                let (hist, exemplars) = match native {
                    Some((e, exemplars)) if !self.config.histogram.classic() => (PointValue::Exponential(e), exemplars),
                    native => {
                        let counts = if is_exemplars { &zero_counts } else { &agg.counts };
                        let (bounds, counts_span) = batch.add_buckets(&self.config.buckets, counts);
                        let bucket_exemplars = || agg.bucket_exemplars.iter().flatten().copied().collect();
                        match native {
                            // `both`: one point with either buckets; the exponential one's
                            // exemplars (every bucket's, and the newest) serve both.
                            Some((e, exemplars)) => (
                                PointValue::Both {
                                    bounds,
                                    counts: counts_span,
                                    native: e,
                                },
                                exemplars,
                            ),
                            None => (
                                PointValue::Histogram {
                                    count: counts.iter().fold(0u64, |a, c| a.saturating_add(*c)),
                                    sum: if is_exemplars { 0.0 } else { agg.sum },
                                    bounds,
                                    counts: counts_span,
                                },
                                if is_exemplars { bucket_exemplars() } else { Vec::new() },
                            ),
                        }
                    }
                };
                let start = batch.labels.len();
                batch.copy_labels(labels);
                batch.add_point(duration, start, Temporality::Delta, hist, &exemplars);
            }
        }
        out
    }

    /// The duration of `agg` as an exponential histogram point (its counts pushed to `batch`), or,
    /// for the exemplar batch, an empty one at the starting scale (merging it changes nothing
    /// else) carrying the exemplars of every bucket.
    fn native_point(
        &self,
        batch: &mut Samples,
        agg: &Agg,
        native: &Native,
        is_exemplars: bool,
    ) -> (ExpPoint, Vec<Exemplar>) {
        if is_exemplars {
            let mut exemplars: Vec<Exemplar> = agg.bucket_exemplars.iter().flatten().copied().collect();
            exemplars.extend(agg.newest.filter(|n| !exemplars.contains(n)));
            let empty = Span::new(batch.counts.len(), batch.counts.len());
            let point = ExpPoint {
                count: 0,
                sum: 0.0,
                scale: self.config.native_max_scale,
                zero_count: 0,
                zero_threshold: 0.0,
                positive_offset: 0,
                positive: empty,
                negative_offset: 0,
                negative: empty,
            };
            return (point, exemplars);
        }
        let p0 = batch.counts.len();
        batch.counts.extend_from_slice(&native.counts);
        let end = batch.counts.len();
        let count = native.counts.iter().fold(native.zero, |a, c| a.saturating_add(*c));
        let point = ExpPoint {
            count,
            sum: agg.sum,
            scale: native.scale,
            zero_count: native.zero,
            zero_threshold: 0.0,
            positive_offset: native.offset,
            positive: Span::new(p0, end),
            negative_offset: 0,
            negative: Span::new(end, end),
        };
        (point, Vec::new())
    }
}

const SERVICE_NAME: &str = "service.name";

/// What one request's spans add up to so far.
#[derive(Default)]
struct Acc {
    aggs: Vec<Agg>,
    /// Label-set key → index in `aggs` (foldhash, randomly seeded per process: several times
    /// cheaper than SipHash on these short keys; at most one entry per span of one request).
    index: HashMap<String, usize, foldhash::fast::RandomState>,
    key: String,
    spans: u64,
    limited: LimitCounts,
}

/// The fields of a span that span metrics read, decoded or borrowed from the wire.
struct SpanFields<'a> {
    kind: i32,
    status: i32,
    name: &'a str,
    trace_state: &'a str,
    start: u64,
    end: u64,
    trace_id: &'a [u8],
    span_id: &'a [u8],
}

/// Attributes, decoded or on the wire: the value of `key` as a label value.
trait Attrs {
    /// The value of the first attribute `key` as a label value, truncated to `max` bytes
    /// (counted in `limited`); `None` when there is no such attribute or it has no value.
    fn find(&self, key: &str, max: usize, limited: &mut LimitCounts) -> Option<String>;
}

/// Truncates a found label value to `max` bytes, counting it.
fn limited_value(mut s: String, max: usize, limited: &mut LimitCounts) -> String {
    if truncate_value(&mut s, max) {
        limited.add(LimitReason::LabelValueTruncated, 1);
    }
    s
}

impl Attrs for &[KeyValue] {
    fn find(&self, key: &str, max: usize, limited: &mut LimitCounts) -> Option<String> {
        let v = self.iter().find(|kv| kv.key == key)?.value.as_ref()?;
        let mut s = String::new();
        write_any(v, &mut s);
        Some(limited_value(s, max, limited))
    }
}

impl Attrs for &[WireAttr<'_>] {
    fn find(&self, key: &str, max: usize, limited: &mut LimitCounts) -> Option<String> {
        let a = self.iter().find(|a| a.key == key)?;
        let mut s = String::new();
        a.write_value(&mut s).then(|| limited_value(s, max, limited))
    }
}

fn exemplar(span: &SpanFields<'_>, secs: f64) -> Option<Exemplar> {
    let trace_id: [u8; 16] = span.trace_id.try_into().ok()?;
    let span_id: [u8; 8] = span.span_id.try_into().ok()?;
    (trace_id != [0; 16]).then_some(Exemplar {
        trace_id,
        span_id,
        value: secs,
        time_unix_nano: span.end,
    })
}

/// The adjusted count of a span from its W3C `tracestate`: `2^56 / (2^56 − T)` for an OTel
/// probability-sampling threshold `ot=th:T` (1 to 14 hex digits, trailing zeros omitted), else 1.
pub fn adjusted_count(tracestate: &str) -> f64 {
    const MAX: u64 = 1 << 56;
    if tracestate.is_empty() {
        return 1.0;
    }
    let th = tracestate
        .split(',')
        .filter_map(|m| m.trim().strip_prefix("ot="))
        .flat_map(|v| v.split(';'))
        .find_map(|kv| kv.strip_prefix("th:"));
    let Some(th) = th else { return 1.0 };
    if th.is_empty() || th.len() > 14 || !th.bytes().all(|b| b.is_ascii_hexdigit()) {
        return 1.0;
    }
    let Ok(t) = u64::from_str_radix(th, 16) else { return 1.0 };
    let t = t << (4 * (14 - th.len()));
    if t >= MAX { 1.0 } else { MAX as f64 / (MAX - t) as f64 }
}

#[cfg(test)]
mod tests;
