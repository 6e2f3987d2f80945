//! What the cardinality limiter reports about itself: points folded into overflow series (by
//! metric and [`FoldReason`]), points rejected (by [`RejectReason`]), label values rewritten by a
//! normalizer (by label and [`NormalizeKind`]), and the cumulative stream states it keeps.
//! Counted once per batch; `crate::telemetry` renders them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::{FoldReason, NormalizeKind, RejectReason};

/// Most series `spindle_cardinality_folded_points_total` has (one per metric and reason); folds of
/// further metrics are counted under `metric="_other"`.
pub const MAX_FOLDED_SERIES: usize = 1000;

// The counters are indexed by `as usize`: every reason must be listed at its index.
const _: () = {
    let mut i = 0;
    while i < RejectReason::ALL.len() {
        assert!(RejectReason::ALL[i] as usize == i);
        i += 1;
    }
    let mut i = 0;
    while i < FoldReason::ALL.len() {
        assert!(FoldReason::ALL[i] as usize == i);
        i += 1;
    }
};

/// The limiter's counters. A cheap handle: clones count into the same counters.
#[derive(Debug, Clone, Default)]
pub struct LimiterStats(Arc<Counters>);

#[derive(Debug, Default)]
struct Counters {
    /// `(metric, reason label)` → folded points; keyed by the label so series render sorted by it.
    folded: Mutex<BTreeMap<(Box<str>, &'static str), u64>>,
    rejected: [AtomicU64; RejectReason::ALL.len()],
    /// `(label, kind label)` → values rewritten; labels come from the configuration.
    normalized: Mutex<BTreeMap<(Box<str>, &'static str), u64>>,
    streams: AtomicU64,
}

impl LimiterStats {
    /// Counts points folded into `metric`'s overflow series for `reason`.
    pub fn folded(&self, metric: &str, reason: FoldReason, n: u64) {
        let reason = reason.as_str();
        let mut m = self.0.folded.lock();
        let known = m.contains_key(&(Box::from(metric), reason));
        let metric = if known || m.len() < MAX_FOLDED_SERIES {
            metric
        } else {
            "_other"
        };
        *m.entry((metric.into(), reason)).or_default() += n;
    }

    /// Counts points the limiter rejected.
    pub fn rejected(&self, reason: RejectReason, n: u64) {
        self.0.rejected[reason as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Counts label values a normalizer of `kind` rewrote.
    pub fn normalized(&self, label: &str, kind: NormalizeKind, n: u64) {
        *self
            .0
            .normalized
            .lock()
            .entry((label.into(), kind.as_str()))
            .or_default() += n;
    }

    /// Sets the number of kept stream states.
    pub fn streams(&self, n: usize) {
        self.0.streams.store(n as u64, Ordering::Relaxed);
    }

    /// Points folded so far for `metric` and `reason`.
    pub fn folded_points(&self, metric: &str, reason: FoldReason) -> u64 {
        let m = self.0.folded.lock();
        m.iter()
            .filter(|((name, r), _)| &**name == metric && *r == reason.as_str())
            .map(|(_, v)| *v)
            .sum()
    }

    /// Calls `f` with each `(metric, reason label, points)` folded so far, sorted by metric then
    /// reason label.
    pub fn each_folded(&self, mut f: impl FnMut(&str, &'static str, u64)) {
        for ((metric, reason), n) in self.0.folded.lock().iter() {
            f(metric, reason, *n);
        }
    }

    /// Points rejected so far for `reason`.
    pub fn rejected_points(&self, reason: RejectReason) -> u64 {
        self.0.rejected[reason as usize].load(Ordering::Relaxed)
    }

    /// Calls `f` with each `(label, kind label, values)` rewritten so far, sorted by label then kind.
    pub fn each_normalized(&self, mut f: impl FnMut(&str, &'static str, u64)) {
        for ((label, kind), n) in self.0.normalized.lock().iter() {
            f(label, kind, *n);
        }
    }

    /// Stream states kept now.
    pub fn stream_states(&self) -> u64 {
        self.0.streams.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_list_every_value() {
        // Exhaustive: a new reason fails to compile here until it is given its place in `ALL`.
        let fold = |r: FoldReason| match r {
            FoldReason::MaxLabelValues => 0,
            FoldReason::MaxSeriesPerMetric => 1,
            FoldReason::MaxSeries => 2,
            FoldReason::LabelCollision => 3,
        };
        let reject = |r: RejectReason| match r {
            RejectReason::StreamStateFull => 0,
            RejectReason::BucketLayout => 1,
            RejectReason::NoRoom => 2,
        };
        for (i, r) in FoldReason::ALL.into_iter().enumerate() {
            assert_eq!(fold(r), i);
        }
        for (i, r) in RejectReason::ALL.into_iter().enumerate() {
            assert_eq!(reject(r), i);
        }
        assert_eq!((FoldReason::ALL.len(), RejectReason::ALL.len()), (4, 3));
    }

    #[test]
    fn folds_past_the_series_bound_go_to_other() {
        let s = LimiterStats::default();
        for i in 0..MAX_FOLDED_SERIES {
            s.folded(&format!("m{i}"), FoldReason::MaxSeries, 1);
        }
        s.folded("late", FoldReason::MaxSeries, 5);
        s.folded("m0", FoldReason::MaxSeries, 1);
        assert_eq!(s.folded_points("late", FoldReason::MaxSeries), 0);
        assert_eq!(s.folded_points("_other", FoldReason::MaxSeries), 5);
        assert_eq!(s.folded_points("m0", FoldReason::MaxSeries), 2);
    }
}
