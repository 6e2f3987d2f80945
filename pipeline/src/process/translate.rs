//! OTLP metrics → Prometheus samples, as the OTel "Prometheus and OpenMetrics Compatibility" spec
//! prescribes.
//!
//! In: an `ExportMetricsServiceRequest`, by value. Out: [`Samples`], one owned batch whose strings
//! live in a single arena, plus the points rejected as invalid (counted in its [`Outcome`]).
//!
//! - Names: invalid characters → `_` (runs collapsed), unit suffix (`s` → `_seconds`, `By` →
//!   `_bytes`, `1` → `_ratio` for gauges, `{…}` dropped), counters expose `_total`.
//! - Labels: `job` = `service.namespace/service.name`, `instance` = `service.instance.id`,
//!   `otel_scope_name`, `otel_scope_version`, promoted resource attributes, then point attributes;
//!   names sanitized, and attributes that collide after sanitizing are joined with `;`.
//! - One `target_info` point per resource that has attributes beyond the identifying ones.
//! - Limits (`receivers.otlp.limits`): metric names, label names, attribute counts and label-set
//!   sizes past their limit reject the point (in the outcome, with a message); label values past
//!   `max_label_value_length` are truncated with a trailing `…`. Each is counted per batch in
//!   [`Samples::limited`] (and in `spindle_limited_items_total` when the translator has [`LimitStats`]).
//!
//! Labels that collide are merged in one pass: each merged value is written to the arena once, so
//! the work and the arena stay linear in the number of attributes however many collide.

use std::borrow::Cow;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{self as pm, metric::Data};

use crate::model::{Exemplar, MetricKind, Outcome, Signal, Temporality};
use crate::receive::config::LimitsConfig;

pub mod stats;
pub use stats::LimitStats;

/// Why a limit of `receivers.otlp.limits` refused or changed an item (the `reason` label of
/// `spindle_limited_items_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitReason {
    /// A metric name longer than `max_metric_name_length`: its points are rejected.
    MetricNameTooLong,
    /// A label name longer than `max_label_name_length`: the point is rejected.
    LabelNameTooLong,
    /// A label value longer than `max_label_value_length`: truncated, the point kept.
    LabelValueTruncated,
    /// More attributes than `max_attributes_per_point` / `max_attributes_per_span`: rejected.
    TooManyAttributes,
    /// A label set larger than `max_label_set_size`: the point is rejected.
    LabelSetTooLarge,
}

impl LimitReason {
    /// Every reason, in label order.
    pub const ALL: [LimitReason; 5] = [
        LimitReason::MetricNameTooLong,
        LimitReason::LabelNameTooLong,
        LimitReason::LabelValueTruncated,
        LimitReason::TooManyAttributes,
        LimitReason::LabelSetTooLarge,
    ];

    /// The `reason` label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            LimitReason::MetricNameTooLong => "metric_name_too_long",
            LimitReason::LabelNameTooLong => "label_name_too_long",
            LimitReason::LabelValueTruncated => "label_value_truncated",
            LimitReason::TooManyAttributes => "too_many_attributes",
            LimitReason::LabelSetTooLarge => "label_set_too_large",
        }
    }
}

/// Items each limit refused or changed in one batch, indexed by [`LimitReason`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitCounts(pub [u64; LimitReason::ALL.len()]);

impl LimitCounts {
    /// Adds `n` items for `reason`.
    pub fn add(&mut self, reason: LimitReason, n: u64) {
        self.0[reason as usize] += n;
    }

    /// Items counted for `reason`.
    pub fn get(&self, reason: LimitReason) -> u64 {
        self.0[reason as usize]
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|n| *n == 0)
    }
}

/// The marker that ends a truncated label value.
pub const TRUNCATION_MARKER: &str = "…";

/// Cuts `s` to at most `max` bytes, ending with [`TRUNCATION_MARKER`], at a UTF-8 boundary.
/// Returns whether it was cut.
pub fn truncate_value(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let mut end = max.saturating_sub(TRUNCATION_MARKER.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    if s.len() + TRUNCATION_MARKER.len() <= max {
        s.push_str(TRUNCATION_MARKER);
    }
    true
}

/// `s`, or a copy cut by [`truncate_value`] when it is longer than `max` bytes.
pub fn truncated(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    let mut end = max.saturating_sub(TRUNCATION_MARKER.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::with_capacity(max);
    out.push_str(&s[..end]);
    if out.len() + TRUNCATION_MARKER.len() <= max {
        out.push_str(TRUNCATION_MARKER);
    }
    Cow::Owned(out)
}

/// At most the first 64 bytes of `s` (at a UTF-8 boundary), for messages about oversized input.
fn preview(s: &str) -> Cow<'_, str> {
    truncated(s, 64)
}

/// A half-open range of indices into one of the arenas of [`Samples`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    /// First index.
    pub start: u32,
    /// One past the last index.
    pub end: u32,
}

impl Span {
    /// The range `start..end`.
    pub fn new(start: usize, end: usize) -> Self {
        Span {
            start: start as u32,
            end: end as u32,
        }
    }

    /// The range as `usize` indices.
    pub fn range(self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }

    /// Number of elements.
    pub fn len(self) -> usize {
        (self.end - self.start) as usize
    }

    /// Whether the range is empty.
    pub fn is_empty(self) -> bool {
        self.end == self.start
    }
}

/// A label: name and value as spans of [`Samples::text`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label {
    /// The sanitized label name.
    pub name: Span,
    /// The label value (any UTF-8).
    pub value: Span,
}

/// A Prometheus metric family as translated from one OTLP metric.
#[derive(Debug, Clone, PartialEq)]
pub struct FamilyMeta {
    /// Family name (for counters without the `_total` suffix).
    pub name: String,
    /// Exposed type.
    pub kind: MetricKind,
    /// `# HELP` text (the OTLP description).
    pub help: String,
    /// Prometheus unit (`seconds`, `bytes`, …; empty when none).
    pub unit: String,
}

/// The value of one translated point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PointValue {
    /// Counter or gauge value.
    Number(f64),
    /// Explicit-bucket histogram; `bounds` index [`Samples::floats`], `counts` index
    /// [`Samples::counts`] and has one more element than `bounds` (the `+Inf` bucket).
    Histogram {
        /// Number of observations.
        count: u64,
        /// Sum of observations, `NaN` when the sender did not report one.
        sum: f64,
        /// Upper bounds.
        bounds: Span,
        /// Per-bucket (not cumulative) counts.
        counts: Span,
    },
    /// Base-2 exponential histogram.
    Exponential(ExpPoint),
    /// Summary; `quantiles` indexes [`Samples::floats`] as (quantile, value) pairs.
    Summary {
        /// Number of observations.
        count: u64,
        /// Sum of observations.
        sum: f64,
        /// Quantile/value pairs, flattened.
        quantiles: Span,
    },
    /// Info metric: value 1.
    Info,
}

/// A base-2 exponential histogram point; bucket spans index [`Samples::counts`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExpPoint {
    /// Number of observations.
    pub count: u64,
    /// Sum of observations, `NaN` when absent.
    pub sum: f64,
    /// Resolution: bucket boundaries are powers of `2^(2^-scale)`.
    pub scale: i32,
    /// Observations in the zero bucket.
    pub zero_count: u64,
    /// Width of the zero bucket.
    pub zero_threshold: f64,
    /// Index of the first positive bucket.
    pub positive_offset: i32,
    /// Positive bucket counts.
    pub positive: Span,
    /// Index of the first negative bucket.
    pub negative_offset: i32,
    /// Negative bucket counts (by absolute value).
    pub negative: Span,
}

/// One translated data point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Index into [`Samples::families`].
    pub family: u32,
    /// Labels sorted by name, as a span of [`Samples::labels`].
    pub labels: Span,
    /// Whether the value replaces or adds to the stored one.
    pub temporality: Temporality,
    /// The value.
    pub value: PointValue,
    /// Exemplars, as a span of [`Samples::exemplars`].
    pub exemplars: Span,
}

/// An owned batch of translated points. Strings and numbers live in shared arenas so a batch costs
/// a handful of allocations however many points it carries.
#[derive(Debug, Default)]
pub struct Samples {
    /// One entry per translated OTLP metric (and one for `target_info`).
    pub families: Vec<FamilyMeta>,
    /// The points.
    pub points: Vec<Point>,
    /// Label arena.
    pub labels: Vec<Label>,
    /// String arena for label names and values.
    pub text: String,
    /// Float arena: histogram bounds, summary quantiles.
    pub floats: Vec<f64>,
    /// Count arena: histogram bucket counts.
    pub counts: Vec<u64>,
    /// Exemplar arena.
    pub exemplars: Vec<Exemplar>,
    /// Points accepted so far and points rejected during translation, with reasons.
    pub outcome: Outcome,
    /// Items refused or changed by `receivers.otlp.limits` in this batch.
    pub limited: LimitCounts,
}

impl Samples {
    /// The text a span of [`Samples::text`] covers.
    pub fn str(&self, s: Span) -> &str {
        self.text.get(s.range()).unwrap_or("")
    }

    /// The labels of a point.
    pub fn point_labels(&self, p: &Point) -> &[Label] {
        &self.labels[p.labels.range()]
    }
}

/// Building batches from other processors (span metrics): labels first, then the point.
impl Samples {
    /// Adds a family and returns its index.
    pub fn add_family(&mut self, meta: FamilyMeta) -> u32 {
        family_index(self, meta)
    }

    /// Adds a label to the point being built; `name` is sanitized.
    pub fn add_label(&mut self, name: &str, value: &str) {
        let name = push_sanitized_label_name(&mut self.text, name);
        let value = push_str(&mut self.text, value);
        self.labels.push(Label { name, value });
    }

    /// Adds a copy of an earlier point's labels to the point being built.
    pub fn copy_labels(&mut self, labels: Span) {
        self.labels.extend_from_within(labels.range());
    }

    /// Adds bounds and per-bucket counts for a histogram value.
    pub fn add_buckets(&mut self, bounds: &[f64], counts: &[u64]) -> (Span, Span) {
        let (f, c) = (self.floats.len(), self.counts.len());
        self.floats.extend_from_slice(bounds);
        self.counts.extend_from_slice(counts);
        (Span::new(f, self.floats.len()), Span::new(c, self.counts.len()))
    }

    /// Finishes a point whose labels were added since index `labels_start` (see
    /// [`Samples::labels`]); returns its label span.
    pub fn add_point(
        &mut self,
        family: u32,
        labels_start: usize,
        temporality: Temporality,
        value: PointValue,
        exemplars: &[Exemplar],
    ) -> Span {
        finish_labels(self, labels_start, usize::MAX);
        let labels = Span::new(labels_start, self.labels.len());
        let e = self.exemplars.len();
        self.exemplars.extend_from_slice(exemplars);
        let exemplars = Span::new(e, self.exemplars.len());
        self.points.push(Point {
            family,
            labels,
            temporality,
            value,
            exemplars,
        });
        self.outcome.accepted += 1;
        labels
    }
}

/// Configuration of the translation.
#[derive(Debug, Clone, Default)]
pub struct Translator {
    promote: Vec<String>,
    limits: LimitsConfig,
    stats: Option<Arc<LimitStats>>,
}

const SERVICE_NAME: &str = "service.name";
const SERVICE_NAMESPACE: &str = "service.namespace";
const SERVICE_INSTANCE_ID: &str = "service.instance.id";

impl Translator {
    /// A translator that also turns the named resource attributes into labels.
    pub fn new(promote_resource_attributes: Vec<String>) -> Self {
        Self {
            promote: promote_resource_attributes,
            ..Default::default()
        }
    }

    /// The same translator with these limits (the defaults of [`LimitsConfig`] otherwise).
    pub fn with_limits(mut self, limits: LimitsConfig) -> Self {
        self.limits = limits;
        self
    }

    /// The same translator, counting what its limits refuse or truncate in
    /// `spindle_limited_items_total{signal="metrics"}` once per batch.
    pub fn with_stats(mut self, stats: Arc<LimitStats>) -> Self {
        self.stats = Some(stats);
        self
    }

    /// Translates a whole request. Invalid points are left out and counted in the outcome.
    pub fn translate(&self, req: ExportMetricsServiceRequest) -> Samples {
        let mut out = Samples::default();
        let mut scratch = Scratch::default();
        for rm in req.resource_metrics {
            let attrs = rm.resource.map(|r| r.attributes).unwrap_or_default();
            let resource_labels = self.resource_labels(&attrs, &mut out);
            self.target_info(&attrs, &resource_labels, &mut out);
            for sm in rm.scope_metrics {
                match scope_labels(&resource_labels, sm.scope, &sm.schema_url, &self.limits, &mut out) {
                    Ok(scope_labels) => {
                        for m in sm.metrics {
                            translate_metric(m, &scope_labels, &self.limits, &mut out, &mut scratch);
                        }
                    }
                    Err((reason, why)) => {
                        let n: u64 = sm
                            .metrics
                            .iter()
                            .filter_map(|m| m.data.as_ref())
                            .map(data_point_count)
                            .sum();
                        out.limited.add(reason, n);
                        out.outcome.reject(n, || why);
                    }
                }
            }
        }
        let cut = out.limited.get(LimitReason::LabelValueTruncated);
        if cut > 0 {
            let max = self.limits.max_label_value_length;
            out.outcome.reject(0, || {
                format!(
                    "{cut} label values longer than receivers.otlp.limits.max_label_value_length ({max}) were truncated"
                )
            });
        }
        if let Some(t) = &self.stats
            && !out.limited.is_empty()
        {
            t.limited(Signal::Metrics, &out.limited);
        }
        out
    }

    /// `job`, `instance` and promoted attributes of a resource.
    fn resource_labels(&self, attrs: &[KeyValue], out: &mut Samples) -> Vec<Label> {
        let mut labels = Vec::with_capacity(2 + self.promote.len());
        let get = |k: &str| attrs.iter().find(|kv| kv.key == k).and_then(|kv| kv.value.as_ref());
        let mut v = String::new();
        if let Some(name) = get(SERVICE_NAME) {
            if let Some(ns) = get(SERVICE_NAMESPACE) {
                write_any(ns, &mut v);
                if !v.is_empty() {
                    v.push('/');
                }
            }
            write_any(name, &mut v);
            self.truncate(&mut v, out);
            labels.push(push_label(&mut out.text, "job", &v));
        }
        if let Some(id) = get(SERVICE_INSTANCE_ID) {
            v.clear();
            write_any(id, &mut v);
            self.truncate(&mut v, out);
            labels.push(push_label(&mut out.text, "instance", &v));
        }
        for key in &self.promote {
            if let Some(val) = get(key) {
                v.clear();
                write_any(val, &mut v);
                self.truncate(&mut v, out);
                let name = push_sanitized_label_name(&mut out.text, key);
                let value = push_str(&mut out.text, &v);
                labels.push(Label { name, value });
            }
        }
        labels
    }

    /// Truncates a label value to `max_label_value_length`, counting it.
    fn truncate(&self, v: &mut String, out: &mut Samples) {
        if truncate_value(v, self.limits.max_label_value_length) {
            out.limited.add(LimitReason::LabelValueTruncated, 1);
        }
    }

    /// One `target_info` point carrying every non-identifying resource attribute.
    fn target_info(&self, attrs: &[KeyValue], resource_labels: &[Label], out: &mut Samples) {
        // Sorted by key, so attributes that collide after sanitizing join in key order.
        let mut extra: Vec<&KeyValue> = attrs
            .iter()
            .filter(|kv| !matches!(kv.key.as_str(), SERVICE_NAME | SERVICE_NAMESPACE | SERVICE_INSTANCE_ID))
            .collect();
        if extra.is_empty() {
            return;
        }
        let limits = &self.limits;
        if extra.len() > limits.max_attributes_per_point {
            out.limited.add(LimitReason::TooManyAttributes, 1);
            let n = extra.len();
            out.outcome.reject(1, || {
                too_many_attributes("target_info", n, limits.max_attributes_per_point)
            });
            return;
        }
        extra.sort_by(|a, b| a.key.cmp(&b.key));
        let family = family_index(
            out,
            FamilyMeta {
                name: "target".into(),
                kind: MetricKind::Info,
                help: "Target metadata".into(),
                unit: String::new(),
            },
        );
        let start = out.labels.len();
        let text_start = out.text.len();
        out.labels.extend(
            resource_labels
                .iter()
                .filter(|l| matches!(&out.text[l.name.range()], "job" | "instance"))
                .copied()
                .collect::<Vec<_>>(),
        );
        let mut v = String::new();
        let mut truncations = 0;
        for kv in extra {
            v.clear();
            if let Some(val) = &kv.value {
                write_any(val, &mut v);
            }
            let truncated = truncate_value(&mut v, limits.max_label_value_length);
            let name = push_sanitized_label_name(&mut out.text, &kv.key);
            let value = push_str(&mut out.text, &v);
            out.labels.push(Label { name, value });
            truncations += u64::from(truncated);
        }
        truncations += finish_labels(out, start, limits.max_label_value_length);
        if let Err((reason, why)) = check_labels(out, start, limits) {
            out.labels.truncate(start);
            out.text.truncate(text_start);
            out.limited.add(reason, 1);
            out.outcome.reject(1, || format!("target_info: {why}"));
            return;
        }
        out.limited.add(LimitReason::LabelValueTruncated, truncations);
        out.points.push(Point {
            family,
            labels: Span::new(start, out.labels.len()),
            temporality: Temporality::Cumulative,
            value: PointValue::Info,
            exemplars: Span::default(),
        });
        out.outcome.accepted += 1;
    }
}

/// A limit that refused an item, and the message for the sender.
type Limited = (LimitReason, String);

/// The resource's labels plus `otel_scope_name`, `otel_scope_version`, `otel_scope_schema_url` and
/// one `otel_scope_<key>` per scope attribute. Values are truncated to `max_label_value_length`;
/// a scope with more than `max_attributes_per_point` attributes or a label name longer than
/// `max_label_name_length` refuses all its points.
fn scope_labels(
    resource_labels: &[Label],
    scope: Option<InstrumentationScope>,
    schema_url: &str,
    limits: &LimitsConfig,
    out: &mut Samples,
) -> Result<Vec<Label>, Limited> {
    let scope = scope.unwrap_or_default();
    if scope.attributes.len() > limits.max_attributes_per_point {
        let n = scope.attributes.len();
        return Err((
            LimitReason::TooManyAttributes,
            too_many_attributes(
                &format!("scope `{}`", preview(&scope.name)),
                n,
                limits.max_attributes_per_point,
            ),
        ));
    }
    let mut labels = resource_labels.to_vec();
    let max = limits.max_label_value_length;
    let mut truncations = 0;
    for (name, value) in [
        ("otel_scope_name", scope.name.as_str()),
        ("otel_scope_version", &scope.version),
        ("otel_scope_schema_url", schema_url),
    ] {
        if !value.is_empty() {
            let value = truncated(value, max);
            truncations += u64::from(matches!(value, Cow::Owned(_)));
            labels.push(push_label(&mut out.text, name, &value));
        }
    }
    let mut v = String::new();
    let mut key = String::new();
    for kv in &scope.attributes {
        v.clear();
        if let Some(val) = &kv.value {
            write_any(val, &mut v);
        }
        truncations += u64::from(truncate_value(&mut v, max));
        key.clear();
        key.push_str("otel_scope_");
        key.push_str(&kv.key);
        let name = push_sanitized_label_name(&mut out.text, &key);
        if name.len() > limits.max_label_name_length {
            return Err((
                LimitReason::LabelNameTooLong,
                label_name_too_long(&out.text[name.range()], limits.max_label_name_length),
            ));
        }
        let value = push_str(&mut out.text, &v);
        labels.push(Label { name, value });
    }
    out.limited.add(LimitReason::LabelValueTruncated, truncations);
    Ok(labels)
}

fn too_many_attributes(what: &str, n: usize, max: usize) -> String {
    format!("{what} has {n} attributes, more than receivers.otlp.limits.max_attributes_per_point ({max})")
}

fn label_name_too_long(name: &str, max: usize) -> String {
    format!(
        "label name `{}` ({} bytes) is longer than receivers.otlp.limits.max_label_name_length ({max})",
        preview(name),
        name.len()
    )
}

/// Checks the finished labels from `start`: name lengths and the label-set size.
fn check_labels(out: &Samples, start: usize, limits: &LimitsConfig) -> Result<(), Limited> {
    let mut size = 0usize;
    for l in &out.labels[start..] {
        if l.name.len() > limits.max_label_name_length {
            let why = label_name_too_long(out.str(l.name), limits.max_label_name_length);
            return Err((LimitReason::LabelNameTooLong, why));
        }
        size += l.name.len() + l.value.len();
    }
    let max = limits.max_label_set_size.0;
    if size as u64 > max {
        return Err((
            LimitReason::LabelSetTooLarge,
            format!(
                "label set of {size} bytes is larger than receivers.otlp.limits.max_label_set_size ({})",
                limits.max_label_set_size
            ),
        ));
    }
    Ok(())
}

/// Reused per-request buffers.
#[derive(Default)]
struct Scratch {
    value: String,
    merged: String,
}

fn family_index(out: &mut Samples, meta: FamilyMeta) -> u32 {
    out.families.push(meta);
    (out.families.len() - 1) as u32
}

fn translate_metric(
    m: pm::Metric,
    scope_labels: &[Label],
    limits: &LimitsConfig,
    out: &mut Samples,
    scratch: &mut Scratch,
) {
    let Some(data) = m.data else {
        out.outcome.reject(0, || format!("metric `{}` has no data", m.name));
        return;
    };
    if m.name.is_empty() {
        let n = data_point_count(&data);
        out.outcome.reject(n, || "metric with an empty name".into());
        return;
    }
    let kind = match &data {
        Data::Sum(s) if s.is_monotonic => MetricKind::Counter,
        Data::Sum(_) | Data::Gauge(_) => MetricKind::Gauge,
        Data::Histogram(_) | Data::ExponentialHistogram(_) => MetricKind::Histogram,
        Data::Summary(_) => MetricKind::Summary,
    };
    let (name, unit) = prometheus_name(&m.name, &m.unit, kind);
    if name.len() > limits.max_metric_name_length {
        let n = data_point_count(&data);
        out.limited.add(LimitReason::MetricNameTooLong, n);
        out.outcome.reject(n, || {
            format!(
                "metric `{}` ({} bytes as `{}`) has a name longer than receivers.otlp.limits.max_metric_name_length ({})",
                preview(&m.name),
                name.len(),
                preview(&name),
                limits.max_metric_name_length
            )
        });
        return;
    }
    let mut help = m.description;
    if truncate_value(&mut help, limits.max_label_value_length) {
        out.limited.add(LimitReason::LabelValueTruncated, 1);
    }
    let family = family_index(out, FamilyMeta { name, kind, help, unit });
    let ctx = PointCtx {
        family,
        kind,
        scope_labels,
        limits,
    };
    match data {
        Data::Gauge(g) => {
            for dp in g.data_points {
                number_point(&ctx, dp, Temporality::Cumulative, out, scratch);
            }
        }
        Data::Sum(s) => {
            let t = temporality(s.aggregation_temporality);
            for dp in s.data_points {
                number_point(&ctx, dp, t, out, scratch);
            }
        }
        Data::Histogram(h) => {
            let t = temporality(h.aggregation_temporality);
            for dp in h.data_points {
                histogram_point(&ctx, dp, t, out, scratch);
            }
        }
        Data::ExponentialHistogram(h) => {
            let t = temporality(h.aggregation_temporality);
            for dp in h.data_points {
                exponential_point(&ctx, dp, t, out, scratch);
            }
        }
        Data::Summary(s) => {
            for dp in s.data_points {
                summary_point(&ctx, dp, out, scratch);
            }
        }
    }
}

fn data_point_count(d: &Data) -> u64 {
    (match d {
        Data::Gauge(g) => g.data_points.len(),
        Data::Sum(s) => s.data_points.len(),
        Data::Histogram(h) => h.data_points.len(),
        Data::ExponentialHistogram(h) => h.data_points.len(),
        Data::Summary(s) => s.data_points.len(),
    }) as u64
}

fn temporality(t: i32) -> Temporality {
    if t == pm::AggregationTemporality::Delta as i32 {
        Temporality::Delta
    } else {
        Temporality::Cumulative
    }
}

struct PointCtx<'a> {
    family: u32,
    kind: MetricKind,
    scope_labels: &'a [Label],
    limits: &'a LimitsConfig,
}

/// Why a point was rejected: invalid, or past a limit (counted by reason).
enum Rejection {
    Invalid(String),
    Limit(Limited),
}

const NO_RECORDED_VALUE: u32 = pm::DataPointFlags::NoRecordedValueMask as u32;

impl PointCtx<'_> {
    /// Pushes the point's labels; returns their span or a rejection reason. A rejected point
    /// leaves nothing behind in the arenas.
    fn labels(&self, attrs: &[KeyValue], out: &mut Samples, scratch: &mut Scratch) -> Result<Span, Rejection> {
        let limits = self.limits;
        if attrs.len() > limits.max_attributes_per_point {
            let why = too_many_attributes("data point", attrs.len(), limits.max_attributes_per_point);
            return Err(Rejection::Limit((LimitReason::TooManyAttributes, why)));
        }
        let start = out.labels.len();
        let text_start = out.text.len();
        let mut truncations = self.push_labels(attrs.iter(), out, scratch);
        if sort_labels(out, start) {
            // Names collided after sanitizing: values are joined in the order of the original keys.
            out.labels.truncate(start);
            out.text.truncate(text_start);
            let mut sorted: Vec<&KeyValue> = attrs.iter().collect();
            sorted.sort_by(|a, b| a.key.cmp(&b.key));
            truncations = self.push_labels(sorted.into_iter(), out, scratch);
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

    /// Pushes the scope labels and one label per attribute (values truncated); returns how many
    /// values were truncated.
    fn push_labels<'a>(
        &self,
        attrs: impl Iterator<Item = &'a KeyValue>,
        out: &mut Samples,
        scratch: &mut Scratch,
    ) -> u64 {
        out.labels.extend_from_slice(self.scope_labels);
        let mut truncations = 0;
        for kv in attrs {
            scratch.value.clear();
            if let Some(v) = &kv.value {
                write_any(v, &mut scratch.value);
            }
            truncations += u64::from(truncate_value(&mut scratch.value, self.limits.max_label_value_length));
            let name = push_sanitized_label_name(&mut out.text, &kv.key);
            let value = push_str(&mut out.text, &scratch.value);
            out.labels.push(Label { name, value });
        }
        truncations
    }

    fn push(&self, out: &mut Samples, labels: Span, t: Temporality, value: PointValue, exemplars: Span) {
        out.points.push(Point {
            family: self.family,
            labels,
            temporality: t,
            value,
            exemplars,
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

fn number_point(ctx: &PointCtx<'_>, dp: pm::NumberDataPoint, t: Temporality, out: &mut Samples, s: &mut Scratch) {
    if dp.flags & NO_RECORDED_VALUE != 0 {
        return;
    }
    let v = match dp.value {
        Some(pm::number_data_point::Value::AsDouble(d)) => d,
        Some(pm::number_data_point::Value::AsInt(i)) => i as f64,
        None => return ctx.reject(out, || "data point has no value".into()),
    };
    if ctx.kind == MetricKind::Counter && (v.is_nan() || v < 0.0) {
        return ctx.reject(out, || {
            format!("monotonic sum has value {v}; counters must be non-negative numbers")
        });
    }
    let labels = match ctx.labels(&dp.attributes, out, s) {
        Ok(l) => l,
        Err(e) => return ctx.reject_labels(out, e),
    };
    let ex = if ctx.kind == MetricKind::Counter {
        push_exemplars(&dp.exemplars, out)
    } else {
        Span::default()
    };
    ctx.push(out, labels, t, PointValue::Number(v), ex);
}

fn histogram_point(ctx: &PointCtx<'_>, dp: pm::HistogramDataPoint, t: Temporality, out: &mut Samples, s: &mut Scratch) {
    if dp.flags & NO_RECORDED_VALUE != 0 {
        return;
    }
    let nb = dp.explicit_bounds.len();
    if !dp.bucket_counts.is_empty() && dp.bucket_counts.len() != nb + 1 {
        return ctx.reject(out, || {
            format!(
                "histogram has {} bucket counts for {nb} bounds (expected {})",
                dp.bucket_counts.len(),
                nb + 1
            )
        });
    }
    if dp.explicit_bounds.iter().any(|b| !b.is_finite()) {
        return ctx.reject(out, || {
            "histogram bounds must be finite (the +Inf bucket is implicit)".into()
        });
    }
    if dp.explicit_bounds.windows(2).any(|w| w[0] >= w[1]) {
        return ctx.reject(out, || "histogram bounds are not strictly increasing".into());
    }
    let labels = match ctx.labels(&dp.attributes, out, s) {
        Ok(l) => l,
        Err(e) => return ctx.reject_labels(out, e),
    };
    let fb = out.floats.len();
    let cb = out.counts.len();
    if dp.bucket_counts.is_empty() {
        // No buckets: a single +Inf bucket holding every observation.
        out.counts.push(dp.count);
    } else {
        out.floats.extend_from_slice(&dp.explicit_bounds);
        out.counts.extend_from_slice(&dp.bucket_counts);
    }
    let bounds = Span::new(fb, out.floats.len());
    let counts = Span::new(cb, out.counts.len());
    let ex = push_exemplars(&dp.exemplars, out);
    let value = PointValue::Histogram {
        count: dp.count,
        sum: dp.sum.unwrap_or(f64::NAN),
        bounds,
        counts,
    };
    ctx.push(out, labels, t, value, ex);
}

fn exponential_point(
    ctx: &PointCtx<'_>,
    dp: pm::ExponentialHistogramDataPoint,
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
    for side in [&dp.positive, &dp.negative].into_iter().flatten() {
        if !finite_bucket_range(dp.scale, side.offset, side.bucket_counts.len()) {
            return ctx.reject(out, || {
                format!(
                    "exponential histogram buckets from offset {} lie outside the float range",
                    side.offset
                )
            });
        }
    }
    let labels = match ctx.labels(&dp.attributes, out, s) {
        Ok(l) => l,
        Err(e) => return ctx.reject_labels(out, e),
    };
    let (po, pos) = dp.positive.map(|b| (b.offset, b.bucket_counts)).unwrap_or_default();
    let (no, neg) = dp.negative.map(|b| (b.offset, b.bucket_counts)).unwrap_or_default();
    let p0 = out.counts.len();
    out.counts.extend_from_slice(&pos);
    let n0 = out.counts.len();
    out.counts.extend_from_slice(&neg);
    let ex = push_exemplars(&dp.exemplars, out);
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
    ctx.push(out, labels, t, value, ex);
}

/// Whether buckets `offset .. offset + len` at `scale` all have finite bounds: bucket `i` spans
/// `(2^(i·2^-scale), 2^((i+1)·2^-scale)]`, and `f64` covers `2^-1075 .. 2^1024`. This also keeps every
/// index arithmetic on stored histograms well inside `i32`.
fn finite_bucket_range(scale: i32, offset: i32, len: usize) -> bool {
    let at_scale = |exp: i64| if scale >= 0 { exp << scale } else { exp >> -scale };
    let (lo, hi) = (i64::from(offset), i64::from(offset) + len as i64);
    lo >= at_scale(-1075) && hi < at_scale(1024)
}

fn summary_point(ctx: &PointCtx<'_>, dp: pm::SummaryDataPoint, out: &mut Samples, s: &mut Scratch) {
    if dp.flags & NO_RECORDED_VALUE != 0 {
        return;
    }
    if dp.quantile_values.iter().any(|q| !(0.0..=1.0).contains(&q.quantile)) {
        return ctx.reject(out, || "summary quantile outside [0, 1]".into());
    }
    if dp.sum < 0.0 || dp.quantile_values.iter().any(|q| q.value < 0.0) {
        return ctx.reject(out, || {
            "summary with negative values cannot be exposed in OpenMetrics".into()
        });
    }
    let labels = match ctx.labels(&dp.attributes, out, s) {
        Ok(l) => l,
        Err(e) => return ctx.reject_labels(out, e),
    };
    let f0 = out.floats.len();
    for q in &dp.quantile_values {
        out.floats.push(q.quantile);
        out.floats.push(q.value);
    }
    let value = PointValue::Summary {
        count: dp.count,
        sum: dp.sum,
        quantiles: Span::new(f0, out.floats.len()),
    };
    ctx.push(out, labels, Temporality::Cumulative, value, Span::default());
}

/// Keeps exemplars that link to a trace (16-byte non-zero trace id, 8-byte span id).
fn push_exemplars(exs: &[pm::Exemplar], out: &mut Samples) -> Span {
    let start = out.exemplars.len();
    for e in exs {
        let (Ok(trace_id), Ok(span_id)) = (
            <[u8; 16]>::try_from(e.trace_id.as_slice()),
            <[u8; 8]>::try_from(e.span_id.as_slice()),
        ) else {
            continue;
        };
        if trace_id == [0; 16] {
            continue;
        }
        let value = match e.value {
            Some(pm::exemplar::Value::AsDouble(d)) => d,
            Some(pm::exemplar::Value::AsInt(i)) => i as f64,
            None => continue,
        };
        out.exemplars.push(Exemplar {
            trace_id,
            span_id,
            value,
            time_unix_nano: e.time_unix_nano,
        });
    }
    Span::new(start, out.exemplars.len())
}

/// Sorts the labels from `start` by name and joins values of names that collide (`;`, in the
/// order they were pushed), truncating joined values to `max_value` bytes. Returns how many
/// joined values were truncated.
fn finish_labels(out: &mut Samples, start: usize, max_value: usize) -> u64 {
    if !sort_labels(out, start) {
        return 0;
    }
    merge_labels(out, start, max_value, &mut String::new())
}

/// Sorts the labels from `start` by name, stably (colliding labels keep the order they were
/// pushed in). Returns whether any names collide.
fn sort_labels(out: &mut Samples, start: usize) -> bool {
    let Samples { labels, text, .. } = out;
    let ls = &mut labels[start..];
    ls.sort_by(|a, b| text[a.name.range()].cmp(&text[b.name.range()]));
    ls.windows(2)
        .any(|w| text[w[0].name.range()] == text[w[1].name.range()])
}

/// Replaces each run of same-named labels from `start` (sorted, see [`sort_labels`]) by one label
/// whose value is the run's values joined with `;`. Each joined value is built once in `buf` and
/// written to the arena once, and building stops once it exceeds `max_value` (it is then
/// truncated): linear in the labels' bytes. Returns how many joined values were truncated.
fn merge_labels(out: &mut Samples, start: usize, max_value: usize, buf: &mut String) -> u64 {
    let Samples { labels, text, .. } = out;
    let n = labels.len();
    let (mut read, mut write, mut truncations) = (start, start, 0);
    while read < n {
        let mut label = labels[read];
        let name = label.name.range();
        let mut end = read + 1;
        while end < n && text[labels[end].name.range()] == text[name.clone()] {
            end += 1;
        }
        if end - read > 1 {
            buf.clear();
            for (i, l) in labels[read..end].iter().enumerate() {
                if i > 0 {
                    buf.push(';');
                }
                if buf.len() > max_value {
                    break;
                }
                buf.push_str(&text[l.value.range()]);
            }
            truncations += u64::from(truncate_value(buf, max_value));
            label.value = push_str(text, buf);
        }
        labels[write] = label;
        write += 1;
        read = end;
    }
    labels.truncate(write);
    truncations
}

fn push_str(text: &mut String, s: &str) -> Span {
    let start = text.len();
    text.push_str(s);
    Span::new(start, text.len())
}

fn push_label(text: &mut String, name: &str, value: &str) -> Label {
    let name = push_str(text, name);
    let value = push_str(text, value);
    Label { name, value }
}

/// Appends `raw` sanitized as a label name: invalid characters → `_`, runs of `_` collapsed,
/// `key_` prefix when it would start with a digit, `key` prefix when it would start with `_`.
/// An attribute key as the label name translation gives it (`http.route` → `http_route`).
pub fn sanitized_label_name(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len() + 4);
    push_sanitized_label_name(&mut out, raw);
    out
}

fn push_sanitized_label_name(text: &mut String, raw: &str) -> Span {
    let start = text.len();
    match raw.chars().next() {
        Some(c) if c.is_ascii_digit() => text.push_str("key_"),
        Some('_') => text.push_str("key"),
        None => text.push_str("key_empty"),
        _ => {}
    }
    push_sanitized(text, raw, false);
    Span::new(start, text.len())
}

/// Appends `raw` with characters outside `[a-zA-Z0-9_]` (and `:` if `colon`) replaced by `_`, and
/// runs of `_` collapsed to one.
fn push_sanitized(out: &mut String, raw: &str, colon: bool) {
    for c in raw.chars() {
        let ok = c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':');
        let c = if ok { c } else { '_' };
        if c == '_' && out.ends_with('_') {
            continue;
        }
        out.push(c);
    }
}

/// Renders an attribute value as a label value: strings as is, scalars in their usual form,
/// arrays and maps as JSON.
pub(crate) fn write_any(v: &AnyValue, out: &mut String) {
    use std::fmt::Write;
    match &v.value {
        Some(any_value::Value::StringValue(s)) => out.push_str(s),
        Some(any_value::Value::BoolValue(b)) => out.push_str(if *b { "true" } else { "false" }),
        Some(any_value::Value::IntValue(i)) => {
            let _ = write!(out, "{i}");
        }
        Some(any_value::Value::DoubleValue(d)) => {
            let _ = write!(out, "{d}");
        }
        Some(any_value::Value::BytesValue(b)) => {
            for byte in b {
                let _ = write!(out, "{byte:02x}");
            }
        }
        Some(any_value::Value::ArrayValue(a)) => {
            out.push('[');
            for (i, x) in a.values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json_any(x, out);
            }
            out.push(']');
        }
        Some(any_value::Value::KvlistValue(kv)) => {
            out.push('{');
            for (i, x) in kv.values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String(x.key.clone()).to_string());
                out.push(':');
                match &x.value {
                    Some(v) => write_json_any(v, out),
                    None => out.push_str("null"),
                }
            }
            out.push('}');
        }
        // Dictionary references only occur in profiles; there is nothing to resolve them against.
        Some(any_value::Value::StringValueStrindex(_)) | None => {}
    }
}

fn write_json_any(v: &AnyValue, out: &mut String) {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => out.push_str(&serde_json::Value::String(s.clone()).to_string()),
        Some(any_value::Value::ArrayValue(_) | any_value::Value::KvlistValue(_))
        | Some(any_value::Value::BoolValue(_) | any_value::Value::IntValue(_)) => write_any(v, out),
        Some(any_value::Value::DoubleValue(d)) if d.is_finite() => write_any(v, out),
        Some(_) => {
            let mut s = String::new();
            write_any(v, &mut s);
            out.push_str(&serde_json::Value::String(s).to_string());
        }
        None => out.push_str("null"),
    }
}

/// The Prometheus family name and unit of an OTLP metric.
///
/// For counters the returned family name has no `_total`; encoders add it to sample names.
pub fn prometheus_name(name: &str, unit: &str, kind: MetricKind) -> (String, String) {
    let mut out = String::with_capacity(name.len() + 16);
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        out.push('_');
    }
    push_sanitized(&mut out, name, true);
    let unit = prometheus_unit(unit, kind);
    if kind == MetricKind::Counter
        && let Some(base) = out.strip_suffix("_total")
    {
        out.truncate(base.len());
    }
    if !unit.is_empty() {
        let suffix = format!("_{unit}");
        if !out.ends_with(&suffix) {
            // Insert the unit before a trailing `_total` already removed above.
            if out.ends_with('_') {
                out.pop();
            }
            out.push_str(&suffix);
        }
    }
    if out.is_empty() {
        out.push('_');
    }
    (out, unit)
}

/// The Prometheus unit word for a UCUM unit, empty when none applies.
pub fn prometheus_unit(unit: &str, kind: MetricKind) -> String {
    let unit = unit.trim();
    if unit.is_empty() || (unit.starts_with('{') && unit.ends_with('}')) {
        return String::new();
    }
    if unit == "1" {
        return if kind == MetricKind::Gauge {
            "ratio".into()
        } else {
            String::new()
        };
    }
    // Drop `{…}` annotations anywhere in the unit.
    let mut stripped = String::with_capacity(unit.len());
    let mut depth = 0;
    for c in unit.chars() {
        match c {
            '{' => depth += 1,
            '}' if depth > 0 => depth -= 1,
            _ if depth == 0 => stripped.push(c),
            _ => {}
        }
    }
    let (main, per) = match stripped.split_once('/') {
        Some((m, p)) => (m.trim(), Some(p.trim())),
        None => (stripped.trim(), None),
    };
    let mut out = String::new();
    if !main.is_empty() {
        push_sanitized(&mut out, &unit_word(main), false);
    }
    if let Some(per) = per.filter(|p| !p.is_empty()) {
        while out.ends_with('_') {
            out.pop();
        }
        if !out.is_empty() {
            out.push('_');
        }
        out.push_str("per_");
        push_sanitized(&mut out, &per_unit_word(per), false);
    }
    out.trim_matches('_').to_string()
}

fn unit_word(u: &str) -> String {
    let w = match u {
        "d" => "days",
        "h" => "hours",
        "min" => "minutes",
        "s" => "seconds",
        "ms" => "milliseconds",
        "us" => "microseconds",
        "ns" => "nanoseconds",
        "By" => "bytes",
        "KiBy" => "kibibytes",
        "MiBy" => "mebibytes",
        "GiBy" => "gibibytes",
        "TiBy" => "tibibytes",
        "KBy" => "kilobytes",
        "MBy" => "megabytes",
        "GBy" => "gigabytes",
        "TBy" => "terabytes",
        "m" => "meters",
        "V" => "volts",
        "A" => "amperes",
        "J" => "joules",
        "W" => "watts",
        "g" => "grams",
        "Cel" => "celsius",
        "Hz" => "hertz",
        "%" => "percent",
        "1" => "",
        other => other,
    };
    w.to_string()
}

fn per_unit_word(u: &str) -> String {
    let w = match u {
        "s" => "second",
        "m" => "minute",
        "h" => "hour",
        "d" => "day",
        "w" => "week",
        "mo" => "month",
        "y" => "year",
        other => other,
    };
    w.to_string()
}

#[cfg(test)]
mod tests;
