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
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hashbrown::{HashMap, HashTable};
use parking_lot::{ArcMutexGuard, Mutex, RawMutex, RwLock};
use regex::{Captures, Regex};
use serde_json::{Value, json};

pub mod config;
pub use config::*;
pub mod stats;
pub use stats::LimiterStats;

use crate::model::{MetricKind, Temporality};
use crate::process::enrich::Glob;
use crate::process::translate::{ExpPoint, FamilyMeta, Label, PointValue, Samples, Span};
use crate::store::exp::ExpHistogram;
use crate::store::{Store, exp_from};

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

/// A label-value normalizer, compiled.
#[derive(Debug)]
struct Normalizer {
    labels: Vec<String>,
    metrics: Vec<Glob>,
    kind: NormalizeKind,
    re: Regex,
    replacement: String,
}

impl Normalizer {
    /// The value with every match replaced; `None` when nothing changed.
    fn apply(&self, value: &str) -> Option<String> {
        // Cheap checks first: most values cannot match a built-in pattern at all.
        let b = value.as_bytes();
        let possible = match self.kind {
            NormalizeKind::Regex => true,
            NormalizeKind::Uuid => b.len() >= 36 && b.contains(&b'-'),
            NormalizeKind::HexId => b.len() >= 8 && b.iter().any(u8::is_ascii_digit),
            NormalizeKind::Number => b.iter().any(u8::is_ascii_digit),
            NormalizeKind::Ip => b.iter().any(|c| matches!(c, b'.' | b':')),
        };
        if !possible {
            return None;
        }
        let out = match self.kind {
            NormalizeKind::Regex => self.re.replace_all(value, self.replacement.as_str()),
            NormalizeKind::HexId => self.re.replace_all(value, |c: &Captures| {
                let m = &c[0];
                if m.bytes().any(|b| b.is_ascii_digit()) {
                    self.replacement.clone()
                } else {
                    m.to_string()
                }
            }),
            NormalizeKind::Ip => self.re.replace_all(value, |c: &Captures| {
                let m = &c[0];
                if m.parse::<std::net::IpAddr>().is_ok() {
                    self.replacement.clone()
                } else {
                    m.to_string()
                }
            }),
            NormalizeKind::Uuid | NormalizeKind::Number => {
                self.re.replace_all(value, regex::NoExpand(self.replacement.as_str()))
            }
        };
        match out {
            std::borrow::Cow::Owned(s) if s != value => Some(s),
            _ => None,
        }
    }
}

fn builtin_pattern(kind: NormalizeKind) -> &'static str {
    match kind {
        NormalizeKind::Uuid => r"(?i)\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b",
        NormalizeKind::HexId => r"\b[0-9a-fA-F]{8,}\b",
        NormalizeKind::Number => r"\b[0-9]+(?:\.[0-9]+)?\b",
        NormalizeKind::Ip => r"(?i)\b(?:[0-9]{1,3}\.){3}[0-9]{1,3}\b|(?:[0-9a-f]{0,4}:){2,7}[0-9a-f]{0,4}",
        NormalizeKind::Regex => "",
    }
}

/// What applies to one metric.
#[derive(Debug, Default)]
struct Policy {
    max_series: usize,
    max_label_values: usize,
    allow: Vec<String>,
    deny: Vec<String>,
    /// Indices into [`Limiter::normalizers`].
    normalizers: Vec<usize>,
}

impl Policy {
    fn rewrites(&self) -> bool {
        !self.allow.is_empty() || !self.deny.is_empty() || !self.normalizers.is_empty()
    }
}

/// An admitted series.
#[derive(Debug, Clone, Copy)]
struct Admitted {
    tick: u32,
    /// Owned by one unrewritten cumulative stream: its reports replace the stored value.
    /// Otherwise the series takes increments.
    direct: bool,
}

/// The last cumulative report of an explicit histogram stream (boxed: counters stay small).
#[derive(Debug)]
struct LastHistogram {
    count: u64,
    sum: f64,
    counts: Box<[u64]>,
}

/// The last cumulative report of a folded or merged stream.
#[derive(Debug)]
enum Last {
    Empty,
    Number(f64),
    Histogram(Box<LastHistogram>),
    Exponential(Box<ExpHistogram>),
    Summary { count: u64, sum: f64 },
}

#[derive(Debug)]
struct StreamState {
    tick: u32,
    /// Why the stream folded, when it did: it keeps folding while this state lives, even if room
    /// frees up (its history is in the overflow series; its own series would count it twice).
    folded: Option<FoldReason>,
    last: Last,
}

/// Distinct values of one label of a metric.
#[derive(Debug)]
struct LabelValues {
    name: Box<str>,
    /// Value hash → last tick an admitted series carried it.
    values: HashMap<u64, u32>,
    /// Points folded because this label was full.
    folded: u64,
}

/// What the limiter did to one metric, for `/api/v1/cardinality`.
#[derive(Debug, Default)]
struct FamilyStats {
    folded: [u64; 4],
    rejected: [u64; 3],
    normalized: u64,
    dropped_labels: u64,
    /// One label set that folded recently (rendered), so an operator sees what overflows.
    example: Option<String>,
}

/// Limiter state of one metric.
#[derive(Debug)]
struct FamilyState {
    name: String,
    policy: Policy,
    series: HashMap<u64, Admitted>,
    labels: Vec<LabelValues>,
    streams: HashMap<u64, StreamState>,
    /// The bucket bounds of the metric's folded and merged explicit histograms.
    merge_bounds: Option<Box<[f64]>>,
    overflow_tick: Option<u32>,
    last_tick: u32,
    stats: FamilyStats,
    removed: bool,
}

type FamilyHandle = Arc<Mutex<FamilyState>>;

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
    /// The newest `/api/v1/cardinality` report, shared by callers while it is fresh.
    reports: ReportCache,
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
            reports: ReportCache::default(),
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
        if let PointValue::Histogram { bounds, counts, .. } = p.value {
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

    /// Applies allow/deny lists and normalizers to point `i`; returns whether anything changed.
    fn rewrite(&self, fam: &mut FamilyState, batch: &mut Samples, i: usize, st: &mut BatchState) -> bool {
        let pol = &fam.policy;
        let span = batch.points[i].labels;
        let start = batch.labels.len();
        let mut changed = false;
        for j in span.range() {
            let l = batch.labels[j];
            let name = batch.str(l.name);
            let keep = if pol.deny.iter().any(|d| d == name) {
                false
            } else {
                pol.allow.is_empty() || matches!(name, "job" | "instance") || pol.allow.iter().any(|a| a == name)
            };
            if !keep {
                fam.stats.dropped_labels += 1;
                changed = true;
                continue;
            }
            let mut value: Option<String> = None;
            for &r in &pol.normalizers {
                let n = &self.normalizers[r];
                let Some(li) = n.labels.iter().position(|x| x == name) else {
                    continue;
                };
                if let Some(v) = n.apply(value.as_deref().unwrap_or(batch.str(l.value))) {
                    value = Some(v);
                    st.normalize(r, li);
                    fam.stats.normalized += 1;
                }
            }
            match value {
                Some(v) => {
                    let vs = batch.text.len();
                    batch.text.push_str(&v);
                    batch.labels.push(Label {
                        name: l.name,
                        value: Span::new(vs, batch.text.len()),
                    });
                    changed = true;
                }
                None => batch.labels.push(l),
            }
        }
        if changed {
            batch.points[i].labels = Span::new(start, batch.labels.len());
        } else {
            batch.labels.truncate(start);
        }
        changed
    }

    /// Checks the limits for a new series; `Ok` when it is admitted (and counted).
    fn admit(&self, fam: &mut FamilyState, batch: &Samples, labels: Span) -> Result<(), FoldReason> {
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

    fn touch_values(&self, fam: &mut FamilyState, batch: &Samples, labels: Span, tick: u32) {
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

    /// Makes a folded or merged explicit histogram fit the metric's merged bucket layout: the same
    /// bounds, or finer ones whose buckets add up exactly into it.
    fn fit_layout(
        &self,
        fam: &mut FamilyState,
        batch: &mut Samples,
        i: usize,
        bounds: Span,
        counts: Span,
    ) -> Result<(), RejectReason> {
        let have = &batch.floats[bounds.range()];
        let Some(target) = &fam.merge_bounds else {
            fam.merge_bounds = Some(have.into());
            return Ok(());
        };
        if target[..] == *have {
            return Ok(());
        }
        // Each target bound must be one of the point's bounds.
        if !target.iter().all(|b| have.contains(b)) {
            return Err(RejectReason::BucketLayout);
        }
        let target = target.clone();
        let c = &batch.counts[counts.range()];
        let mut out = vec![0u64; target.len() + 1];
        for (k, n) in c.iter().enumerate() {
            // Bucket k of the point is (have[k-1], have[k]]; the +Inf bucket is k == have.len().
            let idx = match have.get(k) {
                Some(ub) => target.partition_point(|b| b < ub),
                None => target.len(),
            };
            out[idx] = out[idx].saturating_add(*n);
        }
        let (nb, nc) = batch.add_buckets(&target, &out);
        if let PointValue::Histogram { bounds, counts, .. } = &mut batch.points[i].value {
            *bounds = nb;
            *counts = nc;
        }
        Ok(())
    }

    /// Turns point `i` (cumulative) into the increment since the stream's previous report.
    fn to_increment(
        &self,
        fam: &mut FamilyState,
        batch: &mut Samples,
        i: usize,
        stream: u64,
        tick: u32,
        folded: Option<FoldReason>,
    ) -> Result<(), RejectReason> {
        let state = match fam.streams.entry(stream) {
            hashbrown::hash_map::Entry::Occupied(e) => e.into_mut(),
            hashbrown::hash_map::Entry::Vacant(e) => {
                if self.streams.fetch_add(1, Ordering::Relaxed) >= self.config.max_stream_states {
                    self.streams.fetch_sub(1, Ordering::Relaxed);
                    return Err(RejectReason::StreamStateFull);
                }
                e.insert(StreamState {
                    tick,
                    folded: None,
                    last: Last::Empty,
                })
            }
        };
        state.tick = tick;
        if folded.is_some() {
            state.folded = folded;
        }
        let p = &mut batch.points[i];
        p.temporality = Temporality::Delta;
        match &mut p.value {
            PointValue::Number(v) => {
                let now = *v;
                if let Last::Number(prev) = state.last
                    && now >= prev
                {
                    *v = now - prev;
                }
                state.last = Last::Number(now);
            }
            PointValue::Summary { count, sum, quantiles } => {
                let (c, s) = (*count, *sum);
                if let Last::Summary { count: pc, sum: ps } = state.last
                    && c >= pc
                {
                    *count = c - pc;
                    *sum = s - ps;
                }
                *quantiles = Span::default();
                state.last = Last::Summary { count: c, sum: s };
            }
            PointValue::Histogram { count, sum, counts, .. } => {
                let (c, s, span) = (*count, *sum, *counts);
                let now = &batch.counts[span.range()];
                let delta = match &state.last {
                    Last::Histogram(prev)
                        if c >= prev.count
                            && prev.counts.len() == now.len()
                            && now.iter().zip(prev.counts.iter()).all(|(a, b)| a >= b) =>
                    {
                        Some((
                            c - prev.count,
                            s - prev.sum,
                            now.iter()
                                .zip(prev.counts.iter())
                                .map(|(a, b)| a - b)
                                .collect::<Vec<_>>(),
                        ))
                    }
                    _ => None,
                };
                state.last = Last::Histogram(Box::new(LastHistogram {
                    count: c,
                    sum: s,
                    counts: now.into(),
                }));
                if let Some((dc, ds, dcounts)) = delta {
                    let start = batch.counts.len();
                    batch.counts.extend_from_slice(&dcounts);
                    if let PointValue::Histogram { count, sum, counts, .. } = &mut batch.points[i].value {
                        *count = dc;
                        *sum = ds;
                        *counts = Span::new(start, batch.counts.len());
                    }
                }
            }
            PointValue::Exponential(e) => {
                let e = *e;
                let now = exp_from(&e, batch, &[]);
                let delta = match &state.last {
                    Last::Exponential(prev) => now.delta_since(prev),
                    _ => None,
                };
                if let Some(d) = delta {
                    let p0 = batch.counts.len();
                    batch.counts.extend_from_slice(&d.positive.counts);
                    let n0 = batch.counts.len();
                    batch.counts.extend_from_slice(&d.negative.counts);
                    batch.points[i].value = PointValue::Exponential(ExpPoint {
                        count: d.count,
                        sum: d.sum,
                        scale: d.scale,
                        zero_count: d.zero_count,
                        zero_threshold: d.zero_threshold,
                        positive_offset: d.positive.offset,
                        positive: Span::new(p0, n0),
                        negative_offset: d.negative.offset,
                        negative: Span::new(n0, batch.counts.len()),
                    });
                }
                state.last = Last::Exponential(Box::new(now));
            }
            PointValue::Info => {}
        }
        Ok(())
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

    /// The `/api/v1/cardinality` report for `top`, as [`Limiter::cached_report_within`] serves
    /// it with [`REPORT_MAX_AGE`]: what the endpoint answers.
    pub fn cached_report(&self, store: &Store, top: usize) -> Value {
        self.cached_report_within(store, top, REPORT_MAX_AGE)
    }

    /// The report for `top` ([`Limiter::report`]), computed at most once per `max_age`: a report
    /// computed for at least `top` metrics that finished less than `max_age` ago — or less than
    /// [`REPORT_AGE_PER_COST`] times its computation time, when that is longer — is served again
    /// (cut to `top`), with its `generated_at_unix_ms` and its `age_ms` now. Single-flight: when
    /// none is fresh, one caller computes and concurrent callers wait for that computation and
    /// share it; reports are never computed in parallel. Blocks for the computation: call it off
    /// the async workers (`spawn_blocking`).
    pub fn cached_report_within(&self, store: &Store, top: usize, max_age: Duration) -> Value {
        if let Some(v) = self.fresh_report(top, max_age) {
            return v;
        }
        let _computing = self.reports.computing.lock();
        // Computed by another caller while this one waited.
        if let Some(v) = self.fresh_report(top, max_age) {
            return v;
        }
        let start = Instant::now();
        let report = self.compute_report(store, top);
        let cached = Arc::new(CachedReport {
            took: start.elapsed(),
            at: Instant::now(),
            unix_ms: unix_ms(),
            depth: top,
            report,
        });
        *self.reports.latest.lock() = Some(cached.clone());
        cached.shaped(top)
    }

    fn fresh_report(&self, top: usize, max_age: Duration) -> Option<Value> {
        let c = self.reports.latest.lock().clone()?;
        let max_age = max_age.max(c.took.saturating_mul(REPORT_AGE_PER_COST));
        (c.depth >= top && c.at.elapsed() < max_age).then(|| c.shaped(top))
    }

    /// How many reports were computed so far: every [`Limiter::report`] call and every
    /// [`Limiter::cached_report`] call that found no fresh report.
    pub fn report_computations(&self) -> u64 {
        self.reports.computations.load(Ordering::Relaxed)
    }

    /// The `/api/v1/cardinality` report, computed now (uncached; the endpoint serves
    /// [`Limiter::cached_report`]): configured limits, the `top` metrics by active series with
    /// their labels by distinct values (read from `store` one family and one chunk of series at a
    /// time, see [`Store::walk_labels`]), and what was folded, normalized or rejected, by metric
    /// and reason; `generated_at_unix_ms` is now and `age_ms` 0.
    pub fn report(&self, store: &Store, top: usize) -> Value {
        let mut v = self.compute_report(store, top);
        v["generated_at_unix_ms"] = json!(unix_ms());
        v["age_ms"] = json!(0);
        v
    }

    fn compute_report(&self, store: &Store, top: usize) -> Value {
        self.reports.computations.fetch_add(1, Ordering::Relaxed);
        let mut by_series: Vec<(usize, crate::store::FamilyHandle)> =
            store.families().into_iter().map(|h| (series_len(&h), h)).collect();
        by_series.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
        let states: HashMap<Box<str>, FamilyHandle> = self.families.read().clone();
        let mut distinct = DistinctLabels::default();
        let metrics: Vec<Value> = by_series
            .iter()
            .take(top)
            .map(|(n, h)| {
                let name = h.lock().meta.name.clone();
                distinct.clear();
                store.walk_labels(h, |labels| distinct.add(labels));
                let overflow = distinct.labels.iter().any(|l| l.name == OVERFLOW_LABEL.as_bytes());
                let mut counts: Vec<(String, usize)> = distinct
                    .labels
                    .iter()
                    .map(|l| (String::from_utf8_lossy(&l.name).into_owned(), l.values.len()))
                    .collect();
                counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                let labels: Vec<Value> = counts
                    .iter()
                    .take(top)
                    .map(|(k, n)| json!({"name": k, "distinct_values": n}))
                    .collect();
                let mut m = json!({
                    "name": name,
                    "series": n,
                    "has_overflow_series": overflow,
                    "labels": labels,
                });
                if let Some(state) = states.get(name.as_str()) {
                    let s = state.lock();
                    m["limits"] = json!({
                        "max_series": s.policy.max_series,
                        "max_label_values": s.policy.max_label_values,
                    });
                }
                m
            })
            .collect();
        let mut folded: Vec<Value> = Vec::new();
        let mut totals = [0u64; 4];
        let mut rejected_totals = [0u64; 3];
        for (name, h) in &states {
            let s = h.lock();
            let st = &s.stats;
            for (t, v) in totals.iter_mut().zip(st.folded) {
                *t += v;
            }
            for (t, v) in rejected_totals.iter_mut().zip(st.rejected) {
                *t += v;
            }
            if st.folded.iter().chain(&st.rejected).all(|v| *v == 0) && st.normalized == 0 && st.dropped_labels == 0 {
                continue;
            }
            let reasons: serde_json::Map<String, Value> = FoldReason::ALL
                .iter()
                .filter(|r| st.folded[**r as usize] > 0)
                .map(|r| (r.as_str().to_string(), json!(st.folded[*r as usize])))
                .collect();
            let rejected: serde_json::Map<String, Value> = RejectReason::ALL
                .iter()
                .filter(|r| st.rejected[**r as usize] > 0)
                .map(|r| (r.as_str().to_string(), json!(st.rejected[*r as usize])))
                .collect();
            let full_labels: Vec<Value> = s
                .labels
                .iter()
                .filter(|lv| lv.folded > 0)
                .map(|lv| json!({"name": &*lv.name, "distinct_values": lv.values.len(), "folded_points": lv.folded}))
                .collect();
            folded.push(json!({
                "metric": &**name,
                "folded_points": st.folded.iter().sum::<u64>(),
                "folded_by_reason": reasons,
                "labels_at_limit": full_labels,
                "rejected_points": rejected,
                "normalized_values": st.normalized,
                "dropped_labels": st.dropped_labels,
                "admitted_series": s.series.len(),
                "stream_states": s.streams.len(),
                "example_folded_series": st.example,
            }));
        }
        folded.sort_by(|a, b| {
            let k = |v: &Value| v["folded_points"].as_u64().unwrap_or(0) + v["normalized_values"].as_u64().unwrap_or(0);
            k(b).cmp(&k(a))
        });
        folded.truncate(top);
        let c = &self.config;
        json!({
            "limits": {
                "max_series": self.max_series,
                "max_series_per_metric": c.max_series_per_metric,
                "max_label_values": c.max_label_values,
                "max_stream_states": c.max_stream_states,
                "allow_labels": c.allow_labels,
                "deny_labels": c.deny_labels,
                "normalize": c.normalize.iter().map(|n| json!({
                    "labels": n.labels,
                    "kind": n.kind.as_str(),
                    "replacement": n.replacement.clone().unwrap_or_else(|| n.kind.default_replacement().into()),
                    "metrics": n.metrics,
                })).collect::<Vec<_>>(),
                "metrics": c.metrics.iter().map(|o| json!({
                    "match": o.pattern,
                    "max_series": o.max_series,
                    "max_label_values": o.max_label_values,
                    "allow_labels": o.allow_labels,
                    "deny_labels": o.deny_labels,
                })).collect::<Vec<_>>(),
            },
            "active_series": store.series_count(),
            "limited_series": self.series_count(),
            "stream_states": self.stream_states(),
            "folded_points": FoldReason::ALL.iter().map(|r| (r.as_str().to_string(), json!(totals[*r as usize]))).collect::<serde_json::Map<_, _>>(),
            "rejected_points": RejectReason::ALL.iter().map(|r| (r.as_str().to_string(), json!(rejected_totals[*r as usize]))).collect::<serde_json::Map<_, _>>(),
            "top_metrics": metrics,
            "limited_metrics": folded,
        })
    }
}

/// How long, at least, a computed `/api/v1/cardinality` report is served before a call computes
/// the next one (see also [`REPORT_AGE_PER_COST`]; README, "Cardinality control").
pub const REPORT_MAX_AGE: Duration = Duration::from_secs(1);

/// A report is also served until it is this many times as old as its computation took, so
/// continuous polling keeps at most 1/(1 + this) of one core busy however large the store is
/// (at 1M series, one computation every ~10 s instead of every second).
pub const REPORT_AGE_PER_COST: u32 = 10;

/// The newest report, and the lock that makes computing one single-flight.
#[derive(Debug, Default)]
struct ReportCache {
    latest: Mutex<Option<Arc<CachedReport>>>,
    /// Held while a report is computed: callers that find no fresh report wait here, then share it.
    computing: Mutex<()>,
    computations: AtomicU64,
}

#[derive(Debug)]
struct CachedReport {
    /// When its computation finished.
    at: Instant,
    /// How long the computation took.
    took: Duration,
    unix_ms: u64,
    /// The `top` it was computed for: it serves every `top` up to this.
    depth: usize,
    /// Without the time fields.
    report: Value,
}

impl CachedReport {
    /// The report as computed for `top <= depth`: its lists are sorted, so that is a prefix of
    /// each (metrics, each metric's labels, limited metrics); plus its time fields.
    fn shaped(&self, top: usize) -> Value {
        let Value::Object(fields) = &self.report else {
            return self.report.clone();
        };
        let mut out = serde_json::Map::new();
        for (k, v) in fields {
            let v = match (k.as_str(), v) {
                ("top_metrics", Value::Array(ms)) if top < self.depth => ms
                    .iter()
                    .take(top)
                    .map(|m| {
                        let mut m = m.clone();
                        if let Some(Value::Array(labels)) = m.get_mut("labels") {
                            labels.truncate(top);
                        }
                        m
                    })
                    .collect(),
                ("limited_metrics", Value::Array(ms)) => ms.iter().take(top).cloned().collect(),
                _ => v.clone(),
            };
            out.insert(k.clone(), v);
        }
        out.insert("generated_at_unix_ms".into(), json!(self.unix_ms));
        let age = self.at.elapsed().as_millis();
        out.insert("age_ms".into(), json!(u64::try_from(age).unwrap_or(u64::MAX)));
        Value::Object(out)
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Distinct values per label name over the series of one family, kept as their escaped bytes in
/// one arena per label (no allocation per value).
#[derive(Debug, Default)]
struct DistinctLabels {
    hasher: Hasher,
    labels: Vec<DistinctValues>,
}

#[derive(Debug)]
struct DistinctValues {
    name: Vec<u8>,
    /// (hash, start, end) of each distinct value in `arena`.
    values: HashTable<(u64, usize, usize)>,
    arena: Vec<u8>,
}

impl DistinctLabels {
    fn clear(&mut self) {
        self.labels.clear();
    }

    /// Counts the values of one rendered label set (`name="value",…`).
    fn add(&mut self, rendered: &[u8]) {
        let Self { hasher, labels } = self;
        for (k, (name, value)) in crate::store::label_pairs(rendered).enumerate() {
            // Series of a family mostly share their label names, in the same order.
            let guess = labels.get(k).is_some_and(|l| l.name == name);
            let i = match if guess {
                Some(k)
            } else {
                labels.iter().position(|l| l.name == name)
            } {
                Some(i) => i,
                None => {
                    labels.push(DistinctValues {
                        name: name.to_vec(),
                        values: HashTable::new(),
                        arena: Vec::new(),
                    });
                    labels.len() - 1
                }
            };
            let DistinctValues { values, arena, .. } = &mut labels[i];
            let hash = hasher.hash_one(value);
            if values
                .find(hash, |&(h, s, e)| h == hash && &arena[s..e] == value)
                .is_none()
            {
                let start = arena.len();
                arena.extend_from_slice(value);
                values.insert_unique(hash, (hash, start, arena.len()), |&(h, _, _)| h);
            }
        }
    }
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

fn series_len(h: &crate::store::FamilyHandle) -> usize {
    h.lock().series().len()
}

/// A label set as `{name="value",…}` for the report.
fn render(batch: &Samples, labels: Span) -> String {
    let mut out = Vec::new();
    crate::store::render_labels(batch, &batch.labels[labels.range()], &mut out);
    format!("{{{}}}", String::from_utf8_lossy(&out))
}

#[cfg(test)]
mod tests;
