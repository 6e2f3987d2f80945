//! The translated batch: what translation and span metrics hand to the limiter, the store and
//! the trace exporter — families, points and labels over shared arenas, and the per-batch counts
//! of `receivers.otlp.limits`.

use super::{Exemplar, MetricKind, Outcome, Temporality};

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
    /// One histogram kept both ways (span metrics' `histogram: both`): explicit buckets and a
    /// base-2 exponential histogram of the same observations, so count and sum are the
    /// exponential point's. `bounds` and `counts` are as for [`PointValue::Histogram`].
    Both {
        /// Upper bounds of the explicit buckets.
        bounds: Span,
        /// Per-bucket (not cumulative) counts, one more than `bounds`.
        counts: Span,
        /// The exponential histogram, with the count and sum of both.
        native: ExpPoint,
    },
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
    /// OTLP `start_time_unix_nano`: when the stream (cumulative) or the interval (delta) began;
    /// 0 when unknown. The store keeps it as the series' start, exposed as `created_timestamp`.
    pub start_time_unix_nano: u64,
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
