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
//!
//! [`Outcome`]: crate::model::Outcome

use std::borrow::Cow;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{self as pm, metric::Data};

#[cfg(test)]
use crate::model::Exemplar;
use crate::model::{MetricKind, Signal, Temporality};
use crate::receive::config::LimitsConfig;

mod labels;
mod limits;
mod names;
mod points;
mod samples;
pub mod stats;

use crate::model::batch::{FamilyMeta, Label, LimitReason, Point, PointValue, Samples, Span};
pub(crate) use labels::write_any;
use labels::{finish_labels, push_label, push_sanitized_label_name, push_str};
use limits::{Limited, check_labels, label_name_too_long, preview, too_many_attributes};
pub use limits::{TRUNCATION_MARKER, truncate_value, truncated};
pub use names::{prometheus_name, prometheus_unit};
#[cfg(test)]
use points::finite_bucket_range;
use points::{PointCtx, exponential_point, histogram_point, number_point, summary_point};
pub use stats::LimitStats;

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

#[cfg(test)]
mod tests;
