//! Cardinality control between translation and the store, keeping totals exact.
//!
//! In: translated [`Samples`], by `&mut`, with the store's clock tick. Out: the same batch with
//! labels rewritten and points re-routed, plus rejections in its outcome.
//!
//! Per point, in order:
//! 1. **Label rules** — `deny_labels` / `allow_labels` drop labels, normalizers rewrite values
//!    (`/users/42` → `/users/{number}`). Streams whose labels were rewritten are *merged*: several
//!    sources may now share one series, so their cumulative reports are turned into increments.
//! 2. **Limits** — a series not seen before is admitted while its metric has fewer than
//!    `max_series_per_metric − 1` series (one is kept for the overflow series), every label stays
//!    within `max_label_values` distinct values, and the global count (each metric's overflow slot
//!    included) stays within `max_series`. Otherwise the point *folds* into the metric's overflow
//!    series `{otel_metric_overflow="true"}` with its exemplars. Admitted series stay admitted until
//!    they expire with the store's TTL, which frees their room.
//!
//! Exactness: a folded or merged series only ever receives increments, so the sum over a metric's
//! series equals the sum of what was sent. Delta points are increments already. Cumulative counters,
//! histograms (explicit and exponential) and summaries (count and sum) need the stream's previous
//! report: it is kept per stream, bounded by `max_stream_states`; a point that would need state past
//! that bound is rejected (`partial_success`) rather than counted wrongly. A decrease is a reset and
//! counts the new report whole, as Prometheus' `increase()` does. Gauges keep their last value.
//!
//! Identity: series and streams are tracked by a 64-bit hash of their label set (no label bytes are
//! kept): 20–36 bytes per admitted series, 48–86 per counter stream state (bench/RESULTS.md).

use std::hash::{BuildHasher, Hasher as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hashbrown::HashMap;
use parking_lot::{ArcMutexGuard, Mutex, RawMutex, RwLock};
use regex::Regex;

pub mod config;
mod increment;
mod rules;
mod snapshot;
mod state;
pub mod stats;

pub use config::*;
use rules::{Normalizer, Policy, builtin_pattern};
pub use snapshot::{FamilySnapshot, LabelAtLimit, LimiterSnapshot, MetricRules};
use state::{Admitted, FamilyHandle, FamilyState, FamilyStats};
pub use stats::LimiterStats;

#[cfg(test)]
use crate::model::batch::ExpPoint;
use crate::model::batch::{FamilyMeta, PointValue, Samples, Span};
use crate::model::{MetricKind, Temporality};
use crate::util::glob::Glob;
use crate::util::labels::render_label_pairs;

/// Label values of a live series are re-stamped once per this many ticks (not on every point), and
/// are kept this much longer than the TTL, so they never expire before a series that carries them.
const VALUES_STRIDE: u32 = 16;

/// The label that marks a metric's overflow series.
pub const OVERFLOW_LABEL: &str = "otel_metric_overflow";

/// Why a point folded into its metric's overflow series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FoldReason {
    /// A label would have had more than `max_label_values` distinct values.
    MaxLabelValues,
    /// The metric had `max_series_per_metric` series (or its override's `max_series`).
    MaxSeriesPerMetric,
    /// All metrics together had `max_series` series.
    MaxSeries,
    /// After label rules, the point's labels equal those of a series owned by one unrewritten
    /// cumulative stream, which cannot take increments from others.
    LabelCollision,
}

impl FoldReason {
    /// Every reason, in label order.
    pub const ALL: [FoldReason; 4] = [
        FoldReason::MaxLabelValues,
        FoldReason::MaxSeriesPerMetric,
        FoldReason::MaxSeries,
        FoldReason::LabelCollision,
    ];

    /// The `reason` label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            FoldReason::MaxLabelValues => "max_label_values",
            FoldReason::MaxSeriesPerMetric => "max_series_per_metric",
            FoldReason::MaxSeries => "max_series",
            FoldReason::LabelCollision => "label_collision",
        }
    }
}

/// Why a point was rejected by the limiter (reported to the sender in `partial_success`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// A cumulative stream needed state past `max_stream_states`.
    StreamStateFull,
    /// A histogram folded or merged with a bucket layout that cannot be added exactly to the one
    /// the metric's merged series use.
    BucketLayout,
    /// `max_series` was reached before the metric had any series, so not even its overflow series
    /// fits.
    NoRoom,
}

impl RejectReason {
    /// Every reason, in label order.
    pub const ALL: [RejectReason; 3] = [
        RejectReason::StreamStateFull,
        RejectReason::BucketLayout,
        RejectReason::NoRoom,
    ];

    /// The `reason` label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            RejectReason::StreamStateFull => "stream_state_full",
            RejectReason::BucketLayout => "bucket_layout",
            RejectReason::NoRoom => "no_room",
        }
    }

    fn message(self) -> &'static str {
        match self {
            RejectReason::StreamStateFull => {
                "cardinality: processors.cardinality.max_stream_states reached; cumulative points of new folded streams cannot be counted exactly"
            }
            RejectReason::BucketLayout => {
                "cardinality: histogram bucket bounds differ from those of the metric's overflow/merged series and cannot be added exactly"
            }
            RejectReason::NoRoom => "cardinality: processors.cardinality.max_series reached; no room for a new metric",
        }
    }
}

type Hasher = foldhash::fast::RandomState;

/// The cardinality limiter (`processors.cardinality`).
#[derive(Debug)]
pub struct Limiter {
    /// The global bound in effect (`config.max_series`, or `prometheus.max_series`).
    max_series: usize,
    config: CardinalityConfig,
    normalizers: Vec<Normalizer>,
    /// The `match` glob of each entry of `config.metrics`.
    override_globs: Vec<Glob>,
    families: RwLock<HashMap<Box<str>, FamilyHandle>>,
    /// Admitted series plus one overflow slot per tracked metric.
    series: AtomicUsize,
    streams: AtomicUsize,
    hasher: Hasher,
    stats: LimiterStats,
}

/// Where a point goes.
enum Route {
    /// To its series as it is.
    Pass,
    /// To its merged series (several streams share it), as an increment.
    Merge,
    /// To the overflow series, as an increment; the reason is counted (none for exemplar carriers).
    Fold(Option<FoldReason>),
}

/// Per-batch scratch state.
#[derive(Default)]
struct BatchState {
    overflow: Option<Span>,
    rejected: Vec<usize>,
    folded: Vec<(u32, FoldReason, u64)>,
    normalized: Vec<(usize, usize, u64)>,
    rejections: [u64; 3],
}

impl Limiter {
    /// A limiter for `config`; `prometheus_max_series` is the global bound when
    /// `config.max_series` is `0`. It counts into `stats` (its [`LimiterStats`], or the process's
    /// `Telemetry`, which holds them).
    ///
    /// # Errors
    /// A normalizer pattern that does not compile (`spindle validate` reports it first).
    pub fn new(
        config: &CardinalityConfig,
        prometheus_max_series: usize,
        stats: impl Into<LimiterStats>,
    ) -> Result<Self, String> {
        let normalizers = config
            .normalize
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let pattern = match r.kind {
                    NormalizeKind::Regex => r.pattern.as_deref().unwrap_or(""),
                    k => builtin_pattern(k),
                };
                let re = Regex::new(pattern)
                    .map_err(|e| format!("processors.cardinality.normalize[{i}].pattern does not compile: {e}"))?;
                Ok(Normalizer {
                    labels: r.labels.clone(),
                    metrics: r.metrics.iter().map(|g| Glob::new(g)).collect(),
                    kind: r.kind,
                    re,
                    replacement: r
                        .replacement
                        .clone()
                        .unwrap_or_else(|| r.kind.default_replacement().to_string()),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Self {
            max_series: config.effective_max_series(prometheus_max_series),
            normalizers,
            override_globs: config.metrics.iter().map(|o| Glob::new(&o.pattern)).collect(),
            config: config.clone(),
            families: RwLock::new(HashMap::new()),
            series: AtomicUsize::new(0),
            streams: AtomicUsize::new(0),
            hasher: Hasher::default(),
            stats: stats.into(),
        })
    }

    /// Series the limiter counts against `max_series` (admitted ones plus one overflow slot per
    /// metric).
    pub fn series_count(&self) -> usize {
        self.series.load(Ordering::Relaxed)
    }

    /// Cumulative streams whose last report is kept.
    pub fn stream_states(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }

    fn policy(&self, name: &str, kind: MetricKind) -> Policy {
        let matches =
            |g: &Glob| g.matches(name) || (kind == MetricKind::Counter && g.matches(&format!("{name}_total")));
        let c = &self.config;
        let o = self.override_globs.iter().position(matches).map(|i| &c.metrics[i]);
        Policy {
            max_series: o.and_then(|o| o.max_series).unwrap_or(c.max_series_per_metric),
            max_label_values: o.and_then(|o| o.max_label_values).unwrap_or(c.max_label_values),
            allow: o
                .and_then(|o| o.allow_labels.clone())
                .unwrap_or_else(|| c.allow_labels.clone()),
            deny: o
                .and_then(|o| o.deny_labels.clone())
                .unwrap_or_else(|| c.deny_labels.clone()),
            normalizers: self
                .normalizers
                .iter()
                .enumerate()
                .filter(|(_, n)| n.metrics.is_empty() || n.metrics.iter().any(matches))
                .map(|(i, _)| i)
                .collect(),
        }
    }

    /// The state of metric `name`, created (taking its overflow slot from `max_series`) when new;
    /// `None` when there is no room for it.
    fn family(&self, name: &str, kind: MetricKind, tick: u32) -> Option<FamilyHandle> {
        if let Some(h) = self.families.read().get(name) {
            return Some(h.clone());
        }
        let mut fams = self.families.write();
        if let Some(h) = fams.get(name) {
            return Some(h.clone());
        }
        if self.series.fetch_add(1, Ordering::Relaxed) >= self.max_series {
            self.series.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        let h = Arc::new(Mutex::new(FamilyState {
            name: name.to_string(),
            policy: self.policy(name, kind),
            series: HashMap::new(),
            labels: Vec::new(),
            streams: HashMap::new(),
            merge_bounds: None,
            overflow_tick: None,
            last_tick: tick,
            stats: FamilyStats::default(),
            removed: false,
        }));
        fams.insert(name.into(), h.clone());
        Some(h)
    }

    fn hash_labels(&self, batch: &Samples, labels: Span) -> u64 {
        let mut h = self.hasher.build_hasher();
        for l in &batch.labels[labels.range()] {
            h.write(batch.str(l.name).as_bytes());
            h.write_u8(0xff);
            h.write(batch.str(l.value).as_bytes());
            h.write_u8(0xfe);
        }
        h.finish()
    }

    fn hash_value(&self, name: &str, value: &str) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write(name.as_bytes());
        h.write_u8(0xff);
        h.write(value.as_bytes());
        h.finish()
    }

    /// Applies label rules and limits to `batch` at the store's `tick`. With `admit` false no new
    /// series are admitted (used for span-metric exemplars published after their counts: they go
    /// where the counts went, or to the overflow series).
    pub fn limit(&self, batch: &mut Samples, tick: u32, admit: bool) {
        let mut st = BatchState::default();
        let mut handles: Vec<Option<Option<FamilyHandle>>> = vec![None; batch.families.len()];
        let mut current: Option<(u32, ArcMutexGuard<RawMutex, FamilyState>)> = None;
        for i in 0..batch.points.len() {
            let f = batch.points[i].family;
            if current.as_ref().is_none_or(|(c, _)| *c != f) {
                current = None;
                let guard = self.lock_family(&mut handles[f as usize], &batch.families[f as usize], tick);
                match guard {
                    Some(g) => current = Some((f, g)),
                    None => {
                        st.reject(RejectReason::NoRoom, i);
                        continue;
                    }
                }
            }
            let Some((_, fam)) = current.as_mut() else { continue };
            let kind = batch.families[f as usize].kind;
            if let Err(r) = self.point(fam, kind, batch, i, tick, admit, &mut st) {
                fam.stats.rejected[r as usize] += 1;
                st.reject(r, i);
            }
        }
        drop(current);
        self.finish(batch, st);
    }

    /// Locks the state of a batch's family, resolved once per batch; `None` when there is no room
    /// for a new metric.
    fn lock_family(
        &self,
        slot: &mut Option<Option<FamilyHandle>>,
        meta: &FamilyMeta,
        tick: u32,
    ) -> Option<ArcMutexGuard<RawMutex, FamilyState>> {
        loop {
            let h = slot
                .get_or_insert_with(|| self.family(&meta.name, meta.kind, tick))
                .as_ref()?;
            let g = h.lock_arc();
            if !g.removed {
                return Some(g);
            }
            // Expired between lookup and lock: look it up again.
            *slot = None;
        }
    }

    fn finish(&self, batch: &mut Samples, st: BatchState) {
        if !st.rejected.is_empty() {
            for r in RejectReason::ALL {
                let n = st.rejections[r as usize];
                if n > 0 {
                    batch.outcome.accepted -= n;
                    batch.outcome.reject(n, || r.message().into());
                    self.stats.rejected(r, n);
                }
            }
            let mut k = 0;
            let mut i = 0;
            batch.points.retain(|_| {
                let keep = st.rejected.get(k) != Some(&i);
                if !keep {
                    k += 1;
                }
                i += 1;
                keep
            });
        }
        for (f, reason, n) in st.folded {
            self.stats.folded(&batch.families[f as usize].name, reason, n);
        }
        for (rule, label, n) in st.normalized {
            let r = &self.normalizers[rule];
            self.stats.normalized(&r.labels[label], r.kind, n);
        }
        self.stats.streams(self.stream_states());
    }

    #[allow(clippy::too_many_arguments)]
    fn point(
        &self,
        fam: &mut FamilyState,
        kind: MetricKind,
        batch: &mut Samples,
        i: usize,
        tick: u32,
        admit: bool,
        st: &mut BatchState,
    ) -> Result<(), RejectReason> {
        fam.last_tick = tick;
        let original = batch.points[i].labels;
        let rewritten = fam.policy.rewrites() && self.rewrite(fam, batch, i, st);
        let p = batch.points[i];
        let key = self.hash_labels(batch, p.labels);
        let cumulative = p.temporality == Temporality::Cumulative;
        let increments =
            cumulative && matches!(kind, MetricKind::Counter | MetricKind::Histogram | MetricKind::Summary);
        let track_values = fam.policy.max_label_values > 0;
        // An unrewritten point's stream is its series.
        let mut stream: Option<u64> = (!rewritten).then_some(key);
        let route = if let Some(a) = fam.series.get_mut(&key) {
            let refresh = a.tick / VALUES_STRIDE != tick / VALUES_STRIDE;
            a.tick = tick;
            let route = match (rewritten, a.direct) {
                (true, true) if increments => Route::Fold(Some(FoldReason::LabelCollision)),
                (true, _) => Route::Merge,
                (false, false) if cumulative => Route::Merge,
                (false, _) => Route::Pass,
            };
            if refresh && track_values {
                self.touch_values(fam, batch, p.labels, tick);
            }
            route
        } else if !admit {
            Route::Fold(None)
        } else if increments && let Some(r) = self.folded_before(fam, batch, original, &mut stream) {
            Route::Fold(Some(r))
        } else {
            match self.admit(fam, batch, p.labels) {
                Ok(()) => {
                    fam.series.insert(
                        key,
                        Admitted {
                            tick,
                            direct: !rewritten && cumulative,
                        },
                    );
                    if track_values {
                        self.touch_values(fam, batch, p.labels, tick);
                    }
                    if rewritten { Route::Merge } else { Route::Pass }
                }
                Err(r) => Route::Fold(Some(r)),
            }
        };
        let fold = match route {
            Route::Pass => return Ok(()),
            Route::Merge => None,
            Route::Fold(reason) => Some(reason),
        };
        if let PointValue::Histogram { bounds, counts, .. } | PointValue::Both { bounds, counts, .. } = p.value {
            self.fit_layout(fam, batch, i, bounds, counts)?;
        }
        if increments {
            let stream = stream.unwrap_or_else(|| self.hash_labels(batch, original));
            self.to_increment(fam, batch, i, stream, tick, fold.flatten())?;
        }
        if let Some(reason) = fold {
            if let Some(r) = reason {
                fam.stats.folded[r as usize] += 1;
                st.fold(p.family, r);
                if fam.stats.example.is_none() {
                    fam.stats.example = Some(render(batch, original));
                }
            }
            fam.overflow_tick = Some(tick);
            let overflow = *st.overflow.get_or_insert_with(|| {
                let start = batch.labels.len();
                batch.add_label(OVERFLOW_LABEL, "true");
                Span::new(start, batch.labels.len())
            });
            batch.points[i].labels = overflow;
        }
        Ok(())
    }

    /// Why the cumulative stream with labels `original` folded before, when it did and its state
    /// lives; `stream` caches the stream's hash.
    fn folded_before(
        &self,
        fam: &FamilyState,
        batch: &Samples,
        original: Span,
        stream: &mut Option<u64>,
    ) -> Option<FoldReason> {
        if fam.streams.is_empty() {
            return None;
        }
        let h = *stream.get_or_insert_with(|| self.hash_labels(batch, original));
        fam.streams.get(&h).and_then(|s| s.folded)
    }
}

/// A label set as `{name="value",…}`, for the example folded series.
fn render(batch: &Samples, labels: Span) -> String {
    let mut out = Vec::new();
    let pairs = batch.labels[labels.range()].iter();
    render_label_pairs(pairs.map(|l| (batch.str(l.name), batch.str(l.value))), &mut out);
    format!("{{{}}}", String::from_utf8_lossy(&out))
}

impl BatchState {
    fn reject(&mut self, r: RejectReason, i: usize) {
        self.rejected.push(i);
        self.rejections[r as usize] += 1;
    }

    fn fold(&mut self, family: u32, r: FoldReason) {
        match self.folded.iter_mut().find(|(f, x, _)| *f == family && *x == r) {
            Some((_, _, n)) => *n += 1,
            None => self.folded.push((family, r, 1)),
        }
    }

    fn normalize(&mut self, rule: usize, label: usize) {
        match self.normalized.iter_mut().find(|(r, l, _)| *r == rule && *l == label) {
            Some((_, _, n)) => *n += 1,
            None => self.normalized.push((rule, label, 1)),
        }
    }
}

#[cfg(test)]
mod tests;
