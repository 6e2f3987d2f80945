//! What the limiter hands out about itself: per metric, its limits and what it folded, rejected,
//! normalized and dropped. Plain data; `/api/v1/cardinality` renders it (`crate::expose::api`).

use super::state::FamilyHandle;
use super::{CardinalityConfig, FoldReason, Limiter, RejectReason};

/// The limiter's counts at one moment ([`Limiter::snapshot`]).
#[derive(Debug, Clone, Default)]
pub struct LimiterSnapshot {
    /// The global bound in effect ([`Limiter::max_series`]).
    pub max_series: usize,
    /// Series counted against `max_series` ([`Limiter::series_count`]).
    pub series_count: usize,
    /// Cumulative streams whose last report is kept ([`Limiter::stream_states`]).
    pub stream_states: usize,
    /// Every metric the limiter tracks, in no particular order.
    pub families: Vec<FamilySnapshot>,
}

/// What the limiter keeps and did for one metric.
#[derive(Debug, Clone)]
pub struct FamilySnapshot {
    /// The metric (family) name.
    pub name: Box<str>,
    /// Its series limit in effect (`max_series_per_metric` or its override's `max_series`).
    pub max_series: usize,
    /// Its distinct-values limit per label in effect (`max_label_values` or its override's).
    pub max_label_values: usize,
    folded: [u64; FoldReason::ALL.len()],
    rejected: [u64; RejectReason::ALL.len()],
    /// Label values rewritten by normalizers.
    pub normalized: u64,
    /// Labels dropped by `allow_labels` / `deny_labels`.
    pub dropped_labels: u64,
    /// Labels at which points folded because they were full (`max_label_values`).
    pub labels_at_limit: Vec<LabelAtLimit>,
    /// Series admitted (the overflow series not included).
    pub admitted_series: usize,
    /// Cumulative streams whose last report is kept.
    pub stream_states: usize,
    /// One label set that folded recently, rendered as `{name="value",…}`.
    pub example_folded_series: Option<String>,
}

impl FamilySnapshot {
    /// Points folded into the overflow series for `reason`.
    pub fn folded(&self, reason: FoldReason) -> u64 {
        self.folded[reason as usize]
    }

    /// Points folded into the overflow series, all reasons together.
    pub fn folded_points(&self) -> u64 {
        self.folded.iter().sum()
    }

    /// Points rejected for `reason`.
    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejected[reason as usize]
    }

    /// Whether the limiter changed anything of this metric: folded, rejected, normalized or
    /// dropped labels.
    pub fn limited(&self) -> bool {
        self.folded.iter().chain(&self.rejected).any(|v| *v > 0) || self.normalized > 0 || self.dropped_labels > 0
    }
}

/// A label of a metric that had points folded because it was full.
#[derive(Debug, Clone)]
pub struct LabelAtLimit {
    /// The label name.
    pub name: Box<str>,
    /// Its distinct values now.
    pub distinct_values: usize,
    /// Points folded because it was full.
    pub folded_points: u64,
}

impl Limiter {
    /// The configuration the limiter was built from.
    pub fn config(&self) -> &CardinalityConfig {
        &self.config
    }

    /// The global bound in effect (`config.max_series`, or `prometheus.max_series`).
    pub fn max_series(&self) -> usize {
        self.max_series
    }

    /// Its counts now, per metric: each metric's state is read under its lock, one at a time.
    pub fn snapshot(&self) -> LimiterSnapshot {
        let handles: Vec<(Box<str>, FamilyHandle)> = self
            .families
            .read()
            .iter()
            .map(|(k, h)| (k.clone(), h.clone()))
            .collect();
        let families = handles
            .into_iter()
            .map(|(name, h)| {
                let s = h.lock();
                let st = &s.stats;
                FamilySnapshot {
                    name,
                    max_series: s.policy.max_series,
                    max_label_values: s.policy.max_label_values,
                    folded: st.folded,
                    rejected: st.rejected,
                    normalized: st.normalized,
                    dropped_labels: st.dropped_labels,
                    labels_at_limit: s
                        .labels
                        .iter()
                        .filter(|lv| lv.folded > 0)
                        .map(|lv| LabelAtLimit {
                            name: lv.name.clone(),
                            distinct_values: lv.values.len(),
                            folded_points: lv.folded,
                        })
                        .collect(),
                    admitted_series: s.series.len(),
                    stream_states: s.streams.len(),
                    example_folded_series: st.example.clone(),
                }
            })
            .collect();
        LimiterSnapshot {
            max_series: self.max_series,
            series_count: self.series_count(),
            stream_states: self.stream_states(),
            families,
        }
    }
}

/// The label rules and limits in effect for one metric ([`Limiter::rules_for`]): what the status
/// page names when it says why a metric's values were folded, normalized or dropped.
#[derive(Debug, Clone)]
pub struct MetricRules {
    /// The `match` glob of the `metrics` override that applies, if one does (the first that
    /// matches).
    pub matched_override: Option<String>,
    /// Its series limit (`0`: none).
    pub max_series: usize,
    /// Its distinct-values limit per label (`0`: none).
    pub max_label_values: usize,
    /// `allow_labels` in effect (empty: every label kept).
    pub allow_labels: Vec<String>,
    /// `deny_labels` in effect.
    pub deny_labels: Vec<String>,
    /// The `normalize` rules that apply to it, in order.
    pub normalize: Vec<super::NormalizeRule>,
}

impl Limiter {
    /// The rules and limits that apply to metric `name` of type `kind`, as the limiter resolves
    /// them when it first sees the metric.
    pub fn rules_for(&self, name: &str, kind: crate::model::MetricKind) -> MetricRules {
        let policy = self.policy(name, kind);
        let counter = kind == crate::model::MetricKind::Counter;
        let matched_override = self
            .override_globs
            .iter()
            .position(|g| g.matches(name) || (counter && g.matches(&format!("{name}_total"))))
            .map(|i| self.config.metrics[i].pattern.clone());
        MetricRules {
            matched_override,
            max_series: policy.max_series,
            max_label_values: policy.max_label_values,
            allow_labels: policy.allow,
            deny_labels: policy.deny,
            normalize: policy
                .normalizers
                .iter()
                .filter_map(|&i| self.config.normalize.get(i).cloned())
                .collect(),
        }
    }
}
