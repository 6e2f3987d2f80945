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
use opentelemetry_proto::tonic::metrics::v1::{self as pm, metric::Data};

#[cfg(test)]
use crate::model::Exemplar;
use crate::model::{MetricKind, Signal, Temporality, TranslationStrategy};
use crate::receive::config::LimitsConfig;

pub(crate) mod attrs;
mod labels;
mod layout;
mod limits;
mod names;
mod points;
mod samples;
pub mod stats;
mod wire;

use crate::model::batch::{FamilyMeta, Label, LimitReason, Point, PointValue, Samples, Span};
use attrs::Attr;
pub(crate) use labels::write_any;
use labels::{finish_labels, push_label, push_label_name, push_str};
use limits::{Limited, check_labels, label_name_too_long, preview, too_many_attributes};
pub use limits::{TRUNCATION_MARKER, truncate_value, truncated};
pub use names::{prometheus_name, prometheus_name_with, prometheus_unit};
#[cfg(test)]
use points::finite_bucket_range;
use points::{
    ExpView, HistogramView, NumberView, PointCtx, SummaryView, exponential_point, histogram_point, number_point,
    summary_point,
};
pub use stats::LimitStats;

/// Configuration of the translation.
#[derive(Debug, Clone, Default)]
pub struct Translator {
    promote: Vec<String>,
    limits: LimitsConfig,
    stats: Option<Arc<LimitStats>>,
    strategy: TranslationStrategy,
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

    /// The same translator naming metrics and labels by `strategy`
    /// (`prometheus.translation_strategy`; [`TranslationStrategy::UnderscoreEscapingWithSuffixes`]
    /// otherwise).
    pub fn with_strategy(mut self, strategy: TranslationStrategy) -> Self {
        self.strategy = strategy;
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
        self.translate_with(req, Scratch::default())
    }

    /// [`Translator::translate`] sorting and sanitizing every point's labels afresh, without the
    /// cached layout of the point before: the reference the cache is tested against.
    #[cfg(test)]
    pub(crate) fn translate_fresh(&self, req: ExportMetricsServiceRequest) -> Samples {
        let scratch = Scratch {
            fresh_layouts: true,
            ..Scratch::default()
        };
        self.translate_with(req, scratch)
    }

    fn translate_with(&self, req: ExportMetricsServiceRequest, mut scratch: Scratch) -> Samples {
        let mut out = Samples::default();
        for rm in req.resource_metrics {
            let attrs = rm.resource.map(|r| r.attributes).unwrap_or_default();
            let resource_labels = self.resource_labels(&attrs, &mut out);
            self.target_info(&attrs, &resource_labels, &mut out);
            for sm in rm.scope_metrics {
                let scope = sm.scope.unwrap_or_default();
                let view = ScopeView {
                    name: &scope.name,
                    version: &scope.version,
                    schema_url: &sm.schema_url,
                    attrs: &scope.attributes,
                };
                match scope_labels(&resource_labels, view, &self.limits, self.strategy, &mut out) {
                    Ok(scope_labels) => {
                        for m in sm.metrics {
                            translate_metric(m, &scope_labels, self, &mut out, &mut scratch);
                        }
                    }
                    Err(limited) => {
                        let n: u64 = sm
                            .metrics
                            .iter()
                            .filter_map(|m| m.data.as_ref())
                            .map(data_point_count)
                            .sum();
                        reject_scope(limited, n, &mut out);
                    }
                }
            }
        }
        self.finish(out)
    }

    /// Counts what the limits changed, once per batch.
    fn finish(&self, mut out: Samples) -> Samples {
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
    fn resource_labels<A: Attr>(&self, attrs: &[A], out: &mut Samples) -> Vec<Label> {
        let mut labels = Vec::with_capacity(2 + self.promote.len());
        let get = |k: &str| attrs.iter().find(|kv| kv.attr_key() == k).filter(|kv| kv.has_value());
        let mut v = String::new();
        if let Some(name) = get(SERVICE_NAME) {
            if let Some(ns) = get(SERVICE_NAMESPACE) {
                ns.push_value(&mut v);
                if !v.is_empty() {
                    v.push('/');
                }
            }
            name.push_value(&mut v);
            self.truncate(&mut v, out);
            labels.push(push_label(&mut out.text, "job", &v));
        }
        if let Some(id) = get(SERVICE_INSTANCE_ID) {
            v.clear();
            id.push_value(&mut v);
            self.truncate(&mut v, out);
            labels.push(push_label(&mut out.text, "instance", &v));
        }
        for key in &self.promote {
            if let Some(val) = get(key) {
                v.clear();
                val.push_value(&mut v);
                self.truncate(&mut v, out);
                let name = push_label_name(&mut out.text, key, self.strategy);
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
    fn target_info<A: Attr>(&self, attrs: &[A], resource_labels: &[Label], out: &mut Samples) {
        // Sorted by key, so attributes that collide after sanitizing join in key order.
        let mut extra: Vec<&A> = attrs
            .iter()
            .filter(|kv| !matches!(kv.attr_key(), SERVICE_NAME | SERVICE_NAMESPACE | SERVICE_INSTANCE_ID))
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
        extra.sort_by(|a, b| a.attr_key().cmp(b.attr_key()));
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
            kv.push_value(&mut v);
            let truncated = truncate_value(&mut v, limits.max_label_value_length);
            let name = push_label_name(&mut out.text, kv.attr_key(), self.strategy);
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
            start_time_unix_nano: 0,
        });
        out.outcome.accepted += 1;
    }
}

/// The resource's labels plus `otel_scope_name`, `otel_scope_version`, `otel_scope_schema_url` and
/// one `otel_scope_<key>` per scope attribute. Values are truncated to `max_label_value_length`;
/// a scope with more than `max_attributes_per_point` attributes or a label name longer than
/// `max_label_name_length` refuses all its points.
fn scope_labels<A: Attr>(
    resource_labels: &[Label],
    scope: ScopeView<'_, A>,
    limits: &LimitsConfig,
    strategy: TranslationStrategy,
    out: &mut Samples,
) -> Result<Vec<Label>, Limited> {
    if scope.attrs.len() > limits.max_attributes_per_point {
        let n = scope.attrs.len();
        return Err((
            LimitReason::TooManyAttributes,
            too_many_attributes(
                &format!("scope `{}`", preview(scope.name)),
                n,
                limits.max_attributes_per_point,
            ),
        ));
    }
    let mut labels = resource_labels.to_vec();
    let max = limits.max_label_value_length;
    let mut truncations = 0;
    for (name, value) in [
        ("otel_scope_name", scope.name),
        ("otel_scope_version", scope.version),
        ("otel_scope_schema_url", scope.schema_url),
    ] {
        if !value.is_empty() {
            let value = truncated(value, max);
            truncations += u64::from(matches!(value, Cow::Owned(_)));
            labels.push(push_label(&mut out.text, name, &value));
        }
    }
    let mut v = String::new();
    let mut key = String::new();
    for kv in scope.attrs {
        v.clear();
        kv.push_value(&mut v);
        truncations += u64::from(truncate_value(&mut v, max));
        key.clear();
        key.push_str("otel_scope_");
        key.push_str(kv.attr_key());
        let name = push_label_name(&mut out.text, &key, strategy);
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

/// An instrumentation scope and its `ScopeMetrics.schema_url`, as translation reads them.
struct ScopeView<'a, A> {
    name: &'a str,
    version: &'a str,
    schema_url: &'a str,
    attrs: &'a [A],
}

/// Rejects the `n` points of a scope whose labels a limit refused.
fn reject_scope((reason, why): Limited, n: u64, out: &mut Samples) {
    out.limited.add(reason, n);
    out.outcome.reject(n, || why);
}

/// Reused per-request buffers.
#[derive(Default)]
struct Scratch {
    value: String,
    merged: String,
    layout: layout::Layout,
    /// Never reuse `layout` (tests).
    fresh_layouts: bool,
}

fn family_index(out: &mut Samples, meta: FamilyMeta) -> u32 {
    out.families.push(meta);
    (out.families.len() - 1) as u32
}

fn translate_metric(
    m: pm::Metric,
    scope_labels: &[Label],
    translator: &Translator,
    out: &mut Samples,
    scratch: &mut Scratch,
) {
    let limits = &translator.limits;
    let strategy = translator.strategy;
    let kind = m.data.as_ref().map(|data| match data {
        Data::Sum(s) if s.is_monotonic => MetricKind::Counter,
        Data::Sum(_) | Data::Gauge(_) => MetricKind::Gauge,
        Data::Histogram(_) | Data::ExponentialHistogram(_) => MetricKind::Histogram,
        Data::Summary(_) => MetricKind::Summary,
    });
    let n = m.data.as_ref().map_or(0, data_point_count);
    let Some(family) = metric_family(&m.name, &m.unit, m.description, kind, n, translator, out) else {
        return;
    };
    let Some(data) = m.data else { return };
    let ctx = PointCtx {
        family,
        kind: kind.unwrap_or(MetricKind::Gauge),
        scope_labels,
        limits,
        strategy,
    };
    match data {
        Data::Gauge(g) => {
            for dp in &g.data_points {
                number_point(&ctx, NumberView::of(dp), Temporality::Cumulative, out, scratch);
            }
        }
        Data::Sum(s) => {
            let t = temporality(s.aggregation_temporality);
            for dp in &s.data_points {
                number_point(&ctx, NumberView::of(dp), t, out, scratch);
            }
        }
        Data::Histogram(h) => {
            let t = temporality(h.aggregation_temporality);
            for dp in &h.data_points {
                histogram_point(&ctx, HistogramView::of(dp), t, out, scratch);
            }
        }
        Data::ExponentialHistogram(h) => {
            let t = temporality(h.aggregation_temporality);
            for dp in &h.data_points {
                exponential_point(&ctx, ExpView::of(dp), t, out, scratch);
            }
        }
        Data::Summary(s) => {
            for dp in &s.data_points {
                summary_point(&ctx, SummaryView::of(dp), out, scratch);
            }
        }
    }
}

/// The family of a metric with `n` points and data of `kind` (`None`: no data), or `None` when
/// the metric is refused (no data, an empty name, a name past its limit), counted in the outcome.
fn metric_family(
    raw_name: &str,
    unit: &str,
    description: String,
    kind: Option<MetricKind>,
    n: u64,
    translator: &Translator,
    out: &mut Samples,
) -> Option<u32> {
    let limits = &translator.limits;
    let Some(kind) = kind else {
        out.outcome.reject(0, || format!("metric `{raw_name}` has no data"));
        return None;
    };
    if raw_name.is_empty() {
        out.outcome.reject(n, || "metric with an empty name".into());
        return None;
    }
    let (name, unit) = prometheus_name_with(raw_name, unit, kind, translator.strategy);
    if name.len() > limits.max_metric_name_length {
        out.limited.add(LimitReason::MetricNameTooLong, n);
        out.outcome.reject(n, || {
            format!(
                "metric `{}` ({} bytes as `{}`) has a name longer than receivers.otlp.limits.max_metric_name_length ({})",
                preview(raw_name),
                name.len(),
                preview(&name),
                limits.max_metric_name_length
            )
        });
        return None;
    }
    let mut help = description;
    if truncate_value(&mut help, limits.max_label_value_length) {
        out.limited.add(LimitReason::LabelValueTruncated, 1);
    }
    Some(family_index(out, FamilyMeta { name, kind, help, unit }))
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
