//! What `receivers.otlp.limits` refused or truncated, by signal and [`LimitReason`]: counted once
//! per batch by the translator (metrics) and span metrics (traces); `crate::telemetry` renders it
//! as `spindle_limited_items_total`.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::model::Signal;
use crate::model::batch::{LimitCounts, LimitReason};

// The counters are indexed by `as usize`: every reason must be listed at its index.
const _: () = {
    let mut i = 0;
    while i < LimitReason::ALL.len() {
        assert!(LimitReason::ALL[i] as usize == i);
        i += 1;
    }
};

/// Items refused or truncated by the limits, per signal (`metrics`, `traces`) and reason.
#[derive(Debug, Default)]
pub struct LimitStats {
    limited: [[AtomicU64; LimitReason::ALL.len()]; 2],
}

impl LimitStats {
    /// Counts one batch's items refused or truncated.
    pub fn limited(&self, signal: Signal, counts: &LimitCounts) {
        for r in LimitReason::ALL {
            let n = counts.get(r);
            if n > 0 {
                self.limited[signal as usize][r as usize].fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// Items refused or truncated for `signal` and `reason` so far.
    pub fn limited_items(&self, signal: Signal, reason: LimitReason) -> u64 {
        self.limited[signal as usize][reason as usize].load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_reasons_list_every_value() {
        // Exhaustive: a new reason fails to compile here until it is given its place in `ALL`.
        let index = |r: LimitReason| match r {
            LimitReason::MetricNameTooLong => 0,
            LimitReason::LabelNameTooLong => 1,
            LimitReason::LabelValueTruncated => 2,
            LimitReason::TooManyAttributes => 3,
            LimitReason::LabelSetTooLarge => 4,
        };
        for (i, r) in LimitReason::ALL.into_iter().enumerate() {
            assert_eq!(index(r), i);
        }
        assert_eq!(LimitReason::ALL.len(), 5);
    }
}
