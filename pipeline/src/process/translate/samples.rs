//! The translated batch: [`Samples`] with its string arena, families, points and labels.

use crate::model::{Exemplar, MetricKind, Outcome, Temporality};

use super::family_index;
use super::labels::{finish_labels, push_sanitized_label_name, push_str};
use super::limits::LimitCounts;

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
