//! What the limiter keeps per metric: admitted series, label values and stream states; admission
//! against the limits and expiry with the store's TTL.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use hashbrown::HashMap;
use parking_lot::Mutex;

use crate::model::batch::{Samples, Span};
use crate::model::exp::ExpHistogram;

use super::rules::Policy;
use super::{FoldReason, Limiter, VALUES_STRIDE};

/// An admitted series.
#[derive(Debug, Clone, Copy)]
pub(super) struct Admitted {
    pub(super) tick: u32,
    /// Owned by one unrewritten cumulative stream: its reports replace the stored value.
    /// Otherwise the series takes increments.
    pub(super) direct: bool,
}

/// The last cumulative report of an explicit histogram stream (boxed: counters stay small).
#[derive(Debug)]
pub(super) struct LastHistogram {
    pub(super) count: u64,
    pub(super) sum: f64,
    pub(super) counts: Box<[u64]>,
}

/// The last cumulative report of a folded or merged stream.
#[derive(Debug)]
pub(super) enum Last {
    Empty,
    Number(f64),
    Histogram(Box<LastHistogram>),
    Exponential(Box<ExpHistogram>),
    Both(Box<LastHistogram>, Box<ExpHistogram>),
    Summary { count: u64, sum: f64 },
}

#[derive(Debug)]
pub(super) struct StreamState {
    pub(super) tick: u32,
    /// Why the stream folded, when it did: it keeps folding while this state lives, even if room
    /// frees up (its history is in the overflow series; its own series would count it twice).
    pub(super) folded: Option<FoldReason>,
    pub(super) last: Last,
}

/// Distinct values of one label of a metric.
#[derive(Debug)]
pub(super) struct LabelValues {
    pub(super) name: Box<str>,
    /// Value hash → last tick an admitted series carried it.
    pub(super) values: HashMap<u64, u32>,
    /// Points folded because this label was full.
    pub(super) folded: u64,
}

/// What the limiter did to one metric, for `/api/v1/cardinality`.
#[derive(Debug, Default)]
pub(super) struct FamilyStats {
    pub(super) folded: [u64; 4],
    pub(super) rejected: [u64; 3],
    pub(super) normalized: u64,
    pub(super) dropped_labels: u64,
    /// One label set that folded recently (rendered), so an operator sees what overflows.
    pub(super) example: Option<String>,
}

/// Limiter state of one metric.
#[derive(Debug)]
pub(super) struct FamilyState {
    pub(super) name: String,
    pub(super) policy: Policy,
    pub(super) series: HashMap<u64, Admitted>,
    pub(super) labels: Vec<LabelValues>,
    pub(super) streams: HashMap<u64, StreamState>,
    /// The bucket bounds of the metric's folded and merged explicit histograms.
    pub(super) merge_bounds: Option<Box<[f64]>>,
    pub(super) overflow_tick: Option<u32>,
    pub(super) last_tick: u32,
    pub(super) stats: FamilyStats,
    pub(super) removed: bool,
}

pub(super) type FamilyHandle = Arc<Mutex<FamilyState>>;

impl Limiter {
    /// Checks the limits for a new series; `Ok` when it is admitted (and counted).
    pub(super) fn admit(&self, fam: &mut FamilyState, batch: &Samples, labels: Span) -> Result<(), FoldReason> {
        let pol = &fam.policy;
        if pol.max_label_values > 0 {
            for l in &batch.labels[labels.range()] {
                let name = batch.str(l.name);
                let Some(lv) = fam.labels.iter_mut().find(|lv| &*lv.name == name) else {
                    continue;
                };
                if lv.values.len() >= pol.max_label_values
                    && !lv.values.contains_key(&self.hash_value(name, batch.str(l.value)))
                {
                    lv.folded += 1;
                    return Err(FoldReason::MaxLabelValues);
                }
            }
        }
        if pol.max_series > 0 && fam.series.len() + 1 >= pol.max_series {
            return Err(FoldReason::MaxSeriesPerMetric);
        }
        if self.series.fetch_add(1, Ordering::Relaxed) >= self.max_series {
            self.series.fetch_sub(1, Ordering::Relaxed);
            return Err(FoldReason::MaxSeries);
        }
        Ok(())
    }

    pub(super) fn touch_values(&self, fam: &mut FamilyState, batch: &Samples, labels: Span, tick: u32) {
        for l in &batch.labels[labels.range()] {
            let name = batch.str(l.name);
            let h = self.hash_value(name, batch.str(l.value));
            match fam.labels.iter_mut().find(|lv| &*lv.name == name) {
                Some(lv) => {
                    lv.values.insert(h, tick);
                }
                None => fam.labels.push(LabelValues {
                    name: name.into(),
                    values: HashMap::from_iter([(h, tick)]),
                    folded: 0,
                }),
            }
        }
    }

    /// Forgets series, label values and stream states not seen for `ttl` seconds of store ticks,
    /// and metrics left with nothing; frees their room. Returns how many series were forgotten.
    pub fn expire(&self, tick: u32, ttl: u32) -> usize {
        let old = |t: u32| tick.saturating_sub(t) > ttl;
        let handles: Vec<FamilyHandle> = self.families.read().values().cloned().collect();
        let (mut series, mut streams) = (0, 0);
        let mut empty = Vec::new();
        for h in handles {
            let mut f = h.lock();
            let before = f.series.len();
            f.series.retain(|_, a| !old(a.tick));
            series += before - f.series.len();
            let before = f.streams.len();
            f.streams.retain(|_, s| !old(s.tick));
            streams += before - f.streams.len();
            for lv in &mut f.labels {
                lv.values
                    .retain(|_, t| tick.saturating_sub(*t) <= ttl.saturating_add(VALUES_STRIDE));
            }
            f.labels.retain(|lv| !lv.values.is_empty());
            f.stats.example = None;
            if f.overflow_tick.is_some_and(old) {
                f.overflow_tick = None;
            }
            if f.series.is_empty() && f.streams.is_empty() && f.overflow_tick.is_none() && old(f.last_tick) {
                empty.push(f.name.clone());
            }
        }
        self.streams.fetch_sub(streams, Ordering::Relaxed);
        let mut slots = 0;
        if !empty.is_empty() {
            let mut fams = self.families.write();
            for name in empty {
                let Some(h) = fams.get(name.as_str()).cloned() else {
                    continue;
                };
                let mut f = h.lock();
                if f.series.is_empty() && f.streams.is_empty() && f.overflow_tick.is_none() {
                    f.removed = true;
                    fams.remove(name.as_str());
                    slots += 1;
                }
            }
        }
        self.series.fetch_sub(series + slots, Ordering::Relaxed);
        self.stats.streams(self.stream_states());
        series
    }
}
