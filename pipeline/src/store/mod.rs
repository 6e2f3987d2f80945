//! Series state: identity, aggregation, exemplar slots and expiry; a write API for translated
//! batches and a read API for encoders.
//!
//! In: [`Samples`] from `process`, by value. Out: [`Outcome`] for the sender, and read access for
//! `expose`. A series is identified by its family and its label set rendered once, at creation, as
//! `name="value",…` bytes (escaped for exposition) — the same bytes a scrape appends. Families
//! have their own lock, so writers to different metrics do not contend, and a scrape locks one
//! family at a time.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hashbrown::{HashMap, HashSet, HashTable};
use parking_lot::{ArcMutexGuard, Mutex, RawMutex, RwLock};

use crate::model::Escaping;
use crate::model::batch::{FamilyMeta, Label, Point, PointValue, Samples, Span};
use crate::model::{Exemplar, MetricKind, Outcome, Temporality};
use crate::util::labels::{is_legacy_name, push_escaped_name, render_label_pairs, unescape_label_value};

/// Exponential histogram state, shared vocabulary in [`crate::model::exp`]; re-exported where the
/// store's series hold it.
pub use crate::model::exp;
pub(crate) use crate::model::exp::exp_from;
use exp::ExpHistogram;

mod snapshot;

type Hasher = foldhash::fast::RandomState;

/// Stored value of one series.
#[derive(Debug, Clone, PartialEq)]
pub enum SeriesValue {
    /// Counter or gauge, with the newest exemplar (counters only).
    Number {
        /// Current value.
        value: f64,
        /// Newest exemplar.
        exemplar: Option<Exemplar>,
    },
    /// Explicit-bucket histogram.
    Histogram(Box<Histogram>),
    /// Exponential histogram: a native histogram where the encoder takes one, else classic
    /// buckets at its own boundaries.
    Exponential(Box<ExpHistogram>),
    /// A histogram kept both ways (span metrics' `histogram: both`).
    Both(Box<Both>),
    /// Summary.
    Summary(Box<Summary>),
    /// Info (value 1).
    Info,
}

/// Explicit-bucket histogram state.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Upper bounds, shared between series with the same layout.
    pub bounds: Arc<[f64]>,
    /// Per-bucket counts; one more than `bounds` (`+Inf`).
    pub counts: Box<[u64]>,
    /// Observations.
    pub count: u64,
    /// Sum (`NaN` when unknown).
    pub sum: f64,
    /// One exemplar slot per bucket.
    pub exemplars: Box<[Option<Exemplar>]>,
}

/// A histogram kept both ways (span metrics' `histogram: both`): the explicit buckets and the
/// exponential histogram of the same observations, each with its own exemplar per bucket. Exposed
/// as the classic histogram, with the native one beside it where the encoder takes one.
#[derive(Debug, Clone, PartialEq)]
pub struct Both {
    /// The explicit-bucket histogram.
    pub classic: Histogram,
    /// The exponential histogram (same count and sum).
    pub native: ExpHistogram,
}

/// Summary state.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Observations.
    pub count: u64,
    /// Sum.
    pub sum: f64,
    /// (quantile, value) pairs.
    pub quantiles: Box<[(f64, f64)]>,
}

/// One series.
#[derive(Debug)]
pub struct Series {
    labels: Box<[u8]>,
    hash: u64,
    last_seen: u32,
    /// When the series' stream started, Unix epoch nanoseconds (0: unknown): a cumulative point's
    /// `start_time_unix_nano` (the newest point's, so a restarted stream moves it), or for a
    /// series accumulated from deltas, the first point's start or else when the series was
    /// created. Exposed as `created_timestamp` in the protobuf format.
    start_unix_nano: u64,
    /// The stored value.
    pub value: SeriesValue,
}

impl Series {
    /// The rendered label set, `name="value",…` without braces (empty for no labels).
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// When the series' stream started, Unix epoch nanoseconds; 0 when unknown.
    pub fn start_unix_nano(&self) -> u64 {
        self.start_unix_nano
    }
}

/// A metric family: metadata plus its series.
#[derive(Debug)]
pub struct Family {
    /// Name, type, help, unit.
    pub meta: FamilyMeta,
    series: Vec<Series>,
    index: HashTable<u32>,
    last_bounds: Option<Arc<[f64]>>,
    removed: bool,
    /// Whether the family name or a label name of one of its series (ever) lies outside the
    /// legacy character set: only such families are escaped per scrape.
    utf8: bool,
}

impl Family {
    /// The family's series, in creation order (until expiry reorders them).
    pub fn series(&self) -> &[Series] {
        &self.series
    }

    /// Whether the family's name or any of its label names lies outside the legacy character set
    /// ([`is_legacy_name`]), so a scrape that did not ask for UTF-8 names must escape them. Never
    /// true under the escaping translation strategies.
    pub fn has_utf8_names(&self) -> bool {
        self.utf8
    }
}

/// Handle to a family, shared by writers and the scrape.
pub type FamilyHandle = Arc<Mutex<Family>>;

/// The series store.
#[derive(Debug)]
pub struct Store {
    families: RwLock<Families>,
    hasher: Hasher,
    epoch: Instant,
    ttl: Duration,
    max_series: usize,
    series: AtomicUsize,
}

#[derive(Debug, Default)]
struct Families {
    by_name: HashMap<Box<str>, FamilyHandle>,
    /// Every sample name in use (e.g. `foo_total`, `foo_bucket`), to refuse colliding families.
    sample_names: HashSet<Box<str>>,
}

/// The sample names a family of this kind exposes: as named, and, for a name outside the legacy
/// character set, as a scrape that did not ask for UTF-8 names reads it (underscores), so that two
/// families whose names escape alike (`a.b`, `a_b`) cannot both be served.
fn sample_names(name: &str, kind: MetricKind) -> Vec<String> {
    let mut names = vec![name.to_string()];
    if !is_legacy_name(name, true) {
        let mut escaped = String::with_capacity(name.len());
        push_escaped_name(&mut escaped, name, Escaping::Underscores, true);
        if escaped != name {
            names.push(escaped);
        }
    }
    let mut v = Vec::new();
    for name in names {
        v.extend(kind.suffixes().iter().map(|s| format!("{name}{s}")));
        if matches!(kind, MetricKind::Gauge | MetricKind::Summary) {
            v.push(name);
        }
    }
    v
}

impl Store {
    /// An empty store whose series expire after `ttl` and which holds at most `max_series`.
    /// `reserved` names (Spindle's own metrics) cannot be used by incoming families.
    pub fn new(ttl: Duration, max_series: usize, reserved: &[&str]) -> Self {
        let mut f = Families::default();
        f.sample_names.extend(reserved.iter().map(|s| Box::<str>::from(*s)));
        Self {
            families: RwLock::new(f),
            hasher: Hasher::default(),
            epoch: Instant::now(),
            ttl,
            max_series,
            series: AtomicUsize::new(0),
        }
    }

    /// Number of stored series.
    pub fn series_count(&self) -> usize {
        self.series.load(Ordering::Relaxed)
    }

    /// The store's clock: whole seconds since it was created. Components that expire state in
    /// step with the store (the cardinality limiter) use the same ticks.
    pub fn tick(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.epoch).as_secs().min(u32::MAX as u64) as u32
    }

    /// Finds or creates the family for `meta`; refuses a type that conflicts with an existing family.
    fn family(&self, meta: &FamilyMeta) -> Result<FamilyHandle, String> {
        let check = |h: &FamilyHandle| {
            let f = h.lock();
            if f.meta.kind == meta.kind {
                Ok(h.clone())
            } else {
                Err(format!(
                    "`{}` is already a {} and cannot also be a {}",
                    meta.name,
                    f.meta.kind.openmetrics_type(),
                    meta.kind.openmetrics_type()
                ))
            }
        };
        if let Some(h) = self.families.read().by_name.get(meta.name.as_str()) {
            return check(h);
        }
        let mut fams = self.families.write();
        if let Some(h) = fams.by_name.get(meta.name.as_str()) {
            return check(h);
        }
        let names = sample_names(&meta.name, meta.kind);
        if let Some(clash) = names.iter().find(|n| fams.sample_names.contains(n.as_str())) {
            return Err(format!(
                "`{}` would expose `{clash}`, which another metric already uses",
                meta.name
            ));
        }
        fams.sample_names.extend(names.into_iter().map(String::into_boxed_str));
        let h = Arc::new(Mutex::new(Family {
            meta: meta.clone(),
            series: Vec::new(),
            index: HashTable::new(),
            last_bounds: None,
            removed: false,
            utf8: !is_legacy_name(&meta.name, true),
        }));
        fams.by_name.insert(meta.name.as_str().into(), h.clone());
        Ok(h)
    }

    /// Applies a translated batch. Points refused here (type conflicts, the series bound) are moved
    /// from accepted to rejected in the returned outcome.
    pub fn write(&self, batch: Samples, now: Instant) -> Outcome {
        let tick = self.tick(now);
        let now_unix_nano = unix_nano_now();
        let mut outcome = batch.outcome.clone();
        let handles: Vec<Result<FamilyHandle, String>> = batch.families.iter().map(|m| self.family(m)).collect();
        let mut key = Vec::with_capacity(256);
        let mut current: Option<(u32, ArcMutexGuard<RawMutex, Family>)> = None;
        for p in &batch.points {
            let fam = match &handles[p.family as usize] {
                Ok(h) => h,
                Err(e) => {
                    outcome.accepted -= 1;
                    outcome.reject(1, || e.clone());
                    continue;
                }
            };
            if current.as_ref().is_none_or(|(i, _)| *i != p.family) {
                current = None;
                let mut g = fam.lock_arc();
                if g.removed {
                    // Expired between resolving and locking: resolve the name again.
                    drop(g);
                    match self.family(&batch.families[p.family as usize]) {
                        Ok(h) => g = h.lock_arc(),
                        Err(e) => {
                            outcome.accepted -= 1;
                            outcome.reject(1, || e);
                            continue;
                        }
                    }
                }
                current = Some((p.family, g));
            }
            let Some((_, fam)) = current.as_mut() else { continue };
            render_labels(&batch, batch.point_labels(p), &mut key);
            if let Err(e) = self.apply(fam, &key, p, &batch, tick, now_unix_nano) {
                outcome.accepted -= 1;
                outcome.reject(1, || e);
            }
        }
        outcome
    }

    fn apply(
        &self,
        fam: &mut Family,
        key: &[u8],
        p: &Point,
        batch: &Samples,
        tick: u32,
        now_unix_nano: u64,
    ) -> Result<(), String> {
        let hash = self.hasher.hash_one(key);
        let Family {
            series,
            index,
            last_bounds,
            utf8,
            ..
        } = fam;
        let found = index.find(hash, |&i| &*series[i as usize].labels == key).copied();
        let idx = match found {
            Some(i) => i as usize,
            None => {
                if self.series.fetch_add(1, Ordering::Relaxed) >= self.max_series {
                    self.series.fetch_sub(1, Ordering::Relaxed);
                    return Err(format!("series limit ({}) reached", self.max_series));
                }
                let i = series.len();
                if !*utf8 {
                    *utf8 = label_pairs(key).any(|(name, _)| !legacy_label_name(name));
                }
                let start = match (p.start_time_unix_nano, p.temporality) {
                    (0, Temporality::Delta) => now_unix_nano,
                    (start, _) => start,
                };
                series.push(Series {
                    labels: key.into(),
                    hash,
                    last_seen: tick,
                    start_unix_nano: start,
                    value: new_value(p, batch, last_bounds),
                });
                index.insert_unique(hash, i as u32, |&j| series[j as usize].hash);
                return Ok(());
            }
        };
        let s = &mut series[idx];
        s.last_seen = tick;
        if p.temporality == Temporality::Cumulative && p.start_time_unix_nano != 0 {
            s.start_unix_nano = p.start_time_unix_nano;
        }
        update_value(&mut s.value, p, batch, last_bounds);
        Ok(())
    }

    /// Removes series not updated for the TTL, and families left empty. Returns how many expired.
    pub fn expire(&self, now: Instant) -> usize {
        let tick = self.tick(now);
        let ttl = self.ttl.as_secs().min(u32::MAX as u64) as u32;
        let handles: Vec<FamilyHandle> = self.families.read().by_name.values().cloned().collect();
        let mut removed = 0;
        let mut empty = Vec::new();
        for h in handles {
            let mut f = h.lock();
            let before = f.series.len();
            f.series.retain(|s| tick.saturating_sub(s.last_seen) <= ttl);
            let gone = before - f.series.len();
            if gone > 0 {
                removed += gone;
                let Family { series, index, .. } = &mut *f;
                index.clear();
                for (i, s) in series.iter().enumerate() {
                    index.insert_unique(s.hash, i as u32, |&j| series[j as usize].hash);
                }
            }
            if f.series.is_empty() {
                empty.push(f.meta.name.clone());
            }
        }
        self.series.fetch_sub(removed, Ordering::Relaxed);
        if !empty.is_empty() {
            let mut fams = self.families.write();
            for name in empty {
                let Some(h) = fams.by_name.get(name.as_str()).cloned() else {
                    continue;
                };
                let mut f = h.lock();
                if f.series.is_empty() {
                    f.removed = true;
                    for n in sample_names(&f.meta.name, f.meta.kind) {
                        fams.sample_names.remove(n.as_str());
                    }
                    fams.by_name.remove(name.as_str());
                }
            }
        }
        removed
    }

    /// Every family, sorted by name, for a scrape.
    pub fn families(&self) -> Vec<FamilyHandle> {
        let fams = self.families.read();
        let mut v: Vec<(Box<str>, FamilyHandle)> = fams.by_name.iter().map(|(k, h)| (k.clone(), h.clone())).collect();
        drop(fams);
        v.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        v.into_iter().map(|(_, h)| h).collect()
    }

    /// Calls `f` with the rendered label set ([`Series::labels`]) of every series of family `h`,
    /// [`WALK_CHUNK`] series at a time: the family's lock is held only while one chunk's label
    /// sets are copied out, never while `f` runs, so writers and scrapes of that family wait at
    /// most for one chunk's copy, not for the whole walk. For readers that need every label set of
    /// a large family (the cardinality report), not for the scrape.
    ///
    /// Every series present for the whole walk is visited. Series created during the walk may or
    /// may not be; when expiry removes a whole chunk's series during the walk, the walk starts
    /// over, so a series may then be visited twice (harmless for readers that collect sets).
    /// Returns how many label sets were passed to `f`.
    pub fn walk_labels(&self, h: &FamilyHandle, mut f: impl FnMut(&[u8])) -> usize {
        let mut buf: Vec<u8> = Vec::new();
        let mut ends: Vec<usize> = Vec::with_capacity(WALK_CHUNK);
        let mut hashes: Vec<u64> = Vec::with_capacity(WALK_CHUNK);
        let mut pos = 0;
        let mut visited = 0;
        loop {
            {
                let fam = h.lock();
                if fam.removed {
                    break;
                }
                // `buf`, `ends` and `hashes` still hold the previous chunk.
                if !still_in_place(&fam, pos, &buf, &ends, &hashes) {
                    pos = resume_after(&fam, &buf, &ends, &hashes);
                }
                buf.clear();
                ends.clear();
                hashes.clear();
                for s in fam.series.iter().skip(pos).take(WALK_CHUNK) {
                    buf.extend_from_slice(&s.labels);
                    ends.push(buf.len());
                    hashes.push(s.hash);
                }
            }
            if ends.is_empty() {
                break;
            }
            pos += ends.len();
            let mut start = 0;
            for &end in &ends {
                f(&buf[start..end]);
                start = end;
            }
            visited += ends.len();
        }
        visited
    }
}

/// Now, in nanoseconds since the Unix epoch (0 before it: a clock that far off knows no start).
fn unix_nano_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos().min(u128::from(u64::MAX)) as u64)
}

/// Whether a label name, as the store renders it, is in the legacy character set.
fn legacy_label_name(name: &[u8]) -> bool {
    std::str::from_utf8(name).is_ok_and(|n| is_legacy_name(n, false))
}

/// Series [`Store::walk_labels`] copies per lock acquisition (about 0.4 MB of label sets).
pub const WALK_CHUNK: usize = 4096;

/// Whether the series just before `pos` is still the last one of the chunk copied before (`ends`,
/// `hashes` of that chunk; empty before the first chunk): no expiry moved the series since.
fn still_in_place(fam: &Family, pos: usize, buf: &[u8], ends: &[usize], hashes: &[u64]) -> bool {
    let (Some(&hash), Some(&end)) = (hashes.last(), ends.last()) else {
        return true;
    };
    let start = ends.len().checked_sub(2).map_or(0, |i| ends[i]);
    pos.checked_sub(1)
        .and_then(|i| fam.series.get(i))
        .is_some_and(|s| s.hash == hash && *s.labels == buf[start..end])
}

/// Where a walk goes on after expiry moved the series: just after the last series of the previous
/// chunk that still exists (expiry keeps the order of the survivors), or from the start when none
/// of that chunk survived.
fn resume_after(fam: &Family, buf: &[u8], ends: &[usize], hashes: &[u64]) -> usize {
    for k in (0..ends.len()).rev() {
        let start = k.checked_sub(1).map_or(0, |i| ends[i]);
        let labels = &buf[start..ends[k]];
        if let Some(&i) = fam
            .index
            .find(hashes[k], |&i| &*fam.series[i as usize].labels == labels)
        {
            return i as usize + 1;
        }
    }
    0
}

/// Renders a sorted label set as `name="escaped value",…` into `out`.
pub fn render_labels(batch: &Samples, labels: &[Label], out: &mut Vec<u8>) {
    out.clear();
    render_label_pairs(labels.iter().map(|l| (batch.str(l.name), batch.str(l.value))), out);
}

/// Parses a label set rendered by [`render_labels`] (`name="escaped value",…`, as
/// [`Series::labels`] returns it) back into `(name, value)` pairs, undoing
/// [`escape_label_value`](crate::util::labels::escape_label_value); the inverse used by exporters
/// that need labels as pairs (remote write).
///
/// Returns `None` when `rendered` is not in that form — never for label sets the store rendered.
pub fn parse_labels(rendered: &[u8]) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut rest = rendered;
    while !rest.is_empty() {
        let eq = rest.iter().position(|&c| c == b'=')?;
        let name = std::str::from_utf8(&rest[..eq]).ok()?;
        rest = rest[eq + 1..].strip_prefix(b"\"")?;
        let mut i = 0;
        loop {
            match *rest.get(i)? {
                b'"' => break,
                b'\\' => i += 2,
                _ => i += 1,
            }
        }
        let mut value = Vec::with_capacity(i);
        if !unescape_label_value(&rest[..i], &mut value) {
            return None;
        }
        out.push((name.to_owned(), String::from_utf8(value).ok()?));
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix(b",") {
            if r.is_empty() {
                return None;
            }
            rest = r;
        } else if !rest.is_empty() {
            return None;
        }
    }
    Some(out)
}

/// The `(name, escaped value)` pairs of a label set rendered by [`render_labels`], without
/// allocating or unescaping (two values are equal exactly when their escaped forms are). Stops
/// at the first pair not in that form — never for label sets the store rendered.
pub fn label_pairs(rendered: &[u8]) -> LabelPairs<'_> {
    LabelPairs { rest: rendered }
}

/// Iterator returned by [`label_pairs`].
#[derive(Debug, Clone)]
pub struct LabelPairs<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for LabelPairs<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.rest;
        self.rest = &[];
        let eq = rest.iter().position(|&c| c == b'=')?;
        let name = &rest[..eq];
        let after = rest[eq + 1..].strip_prefix(b"\"")?;
        let mut i = 0;
        loop {
            match *after.get(i)? {
                b'"' => break,
                b'\\' => i += 2,
                _ => i += 1,
            }
        }
        let value = after.get(..i)?;
        let tail = after.get(i + 1..)?;
        self.rest = tail.strip_prefix(b",").unwrap_or(tail);
        Some((name, value))
    }
}

fn newest(exs: &[Exemplar]) -> Option<&Exemplar> {
    exs.iter().max_by_key(|e| e.time_unix_nano)
}

fn shared_bounds(last: &mut Option<Arc<[f64]>>, bounds: &[f64]) -> Arc<[f64]> {
    match last {
        Some(b) if &b[..] == bounds => b.clone(),
        _ => {
            let b: Arc<[f64]> = bounds.into();
            *last = Some(b.clone());
            b
        }
    }
}

fn new_value(p: &Point, batch: &Samples, last_bounds: &mut Option<Arc<[f64]>>) -> SeriesValue {
    let exs = &batch.exemplars[p.exemplars.range()];
    match p.value {
        PointValue::Number(v) => SeriesValue::Number {
            value: v,
            exemplar: newest(exs).copied(),
        },
        PointValue::Histogram {
            count,
            sum,
            bounds,
            counts,
        } => SeriesValue::Histogram(Box::new(new_histogram(
            batch,
            bounds,
            counts,
            (count, sum),
            exs,
            last_bounds,
        ))),
        PointValue::Exponential(e) => SeriesValue::Exponential(Box::new(exp_from(&e, batch, exs))),
        PointValue::Both { bounds, counts, native } => SeriesValue::Both(Box::new(Both {
            classic: new_histogram(batch, bounds, counts, (native.count, native.sum), exs, last_bounds),
            native: exp_from(&native, batch, exs),
        })),
        PointValue::Summary { count, sum, quantiles } => SeriesValue::Summary(Box::new(Summary {
            count,
            sum,
            quantiles: batch.floats[quantiles.range()]
                .chunks_exact(2)
                .map(|q| (q[0], q[1]))
                .collect(),
        })),
        PointValue::Info => SeriesValue::Info,
    }
}

/// An explicit-bucket histogram from a point's bounds and counts, with `count` and `sum`, its
/// exemplars offered.
fn new_histogram(
    batch: &Samples,
    bounds: Span,
    counts: Span,
    (count, sum): (u64, f64),
    exs: &[Exemplar],
    last_bounds: &mut Option<Arc<[f64]>>,
) -> Histogram {
    let bounds = shared_bounds(last_bounds, &batch.floats[bounds.range()]);
    let mut h = Histogram {
        exemplars: vec![None; bounds.len() + 1].into(),
        bounds,
        counts: batch.counts[counts.range()].into(),
        count,
        sum,
    };
    offer_bucket_exemplars(&mut h, exs);
    h
}

/// Adds (`delta`) or sets a point's counts, count and sum on `h`, whose bounds are the point's,
/// and offers its exemplars.
fn update_histogram(h: &mut Histogram, c: &[u64], (count, sum): (u64, f64), exs: &[Exemplar], delta: bool) {
    if delta {
        for (a, b) in h.counts.iter_mut().zip(c) {
            *a = a.saturating_add(*b);
        }
        h.count = h.count.saturating_add(count);
        h.sum += sum;
    } else {
        h.counts.copy_from_slice(c);
        h.count = count;
        h.sum = sum;
    }
    offer_bucket_exemplars(h, exs);
}

fn offer_bucket_exemplars(h: &mut Histogram, exs: &[Exemplar]) {
    for e in exs {
        let i = h.bounds.partition_point(|b| *b < e.value);
        if let Some(slot) = h.exemplars.get_mut(i)
            && slot.is_none_or(|old| old.time_unix_nano <= e.time_unix_nano)
        {
            *slot = Some(*e);
        }
    }
}

fn update_value(v: &mut SeriesValue, p: &Point, batch: &Samples, last_bounds: &mut Option<Arc<[f64]>>) {
    let exs = &batch.exemplars[p.exemplars.range()];
    let delta = p.temporality == Temporality::Delta;
    match (v, &p.value) {
        (SeriesValue::Number { value, exemplar }, PointValue::Number(n)) => {
            if delta {
                *value += n;
            } else {
                *value = *n;
            }
            if let Some(e) = newest(exs)
                && exemplar
                    .as_ref()
                    .is_none_or(|old| old.time_unix_nano <= e.time_unix_nano)
            {
                *exemplar = Some(*e);
            }
        }
        (
            SeriesValue::Histogram(h),
            PointValue::Histogram {
                count,
                sum,
                bounds,
                counts,
            },
        ) if h.bounds[..] == batch.floats[bounds.range()] => {
            update_histogram(h, &batch.counts[counts.range()], (*count, *sum), exs, delta);
        }
        (SeriesValue::Both(b), PointValue::Both { bounds, counts, native })
            if b.classic.bounds[..] == batch.floats[bounds.range()] =>
        {
            let c = &batch.counts[counts.range()];
            update_histogram(&mut b.classic, c, (native.count, native.sum), exs, delta);
            let new = exp_from(native, batch, exs);
            if delta {
                b.native.merge_delta(new)
            } else {
                b.native.replace(new)
            }
        }
        // Increments of summaries (folded or merged streams) add count and sum; quantiles of
        // different streams cannot be combined, so none are shown.
        (SeriesValue::Summary(s), PointValue::Summary { count, sum, .. }) if delta => {
            s.count = s.count.saturating_add(*count);
            s.sum += sum;
            s.quantiles = Box::new([]);
        }
        (SeriesValue::Exponential(h), PointValue::Exponential(e)) => {
            let new = exp_from(e, batch, exs);
            if delta { h.merge_delta(new) } else { h.replace(new) }
        }
        // A new bucket layout, a summary report, or a changed point type: start over from this report.
        (v, _) => *v = new_value(p, batch, last_bounds),
    }
}

#[cfg(test)]
mod tests;
