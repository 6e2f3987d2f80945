//! `/api/v1/cardinality`: the limiter's typed counts ([`LimiterSnapshot`]) and the store's
//! series, rendered as JSON; cached and computed single-flight ([`CardinalityReports`]).

use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hashbrown::{HashMap, HashTable};
use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::process::cardinality::{FamilySnapshot, FoldReason, Limiter, LimiterSnapshot, OVERFLOW_LABEL, RejectReason};
use crate::store::{FamilyHandle, Store, label_pairs};

/// How long, at least, a computed `/api/v1/cardinality` report is served before a call computes
/// the next one (see also [`REPORT_AGE_PER_COST`]; README, "Cardinality control").
pub const REPORT_MAX_AGE: Duration = Duration::from_secs(1);

/// A report is also served until it is this many times as old as its computation took, so
/// continuous polling keeps at most 1/(1 + this) of one core busy however large the store is
/// (at 1M series, one computation every ~10 s instead of every second).
pub const REPORT_AGE_PER_COST: u32 = 10;

/// The `/api/v1/cardinality` reports of one limiter over one store: the newest one, and the lock
/// that makes computing one single-flight.
#[derive(Debug, Default)]
pub struct CardinalityReports {
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

type Hasher = foldhash::fast::RandomState;

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

    /// The label names of family `h` with their distinct values, most first (then by name), and
    /// whether it has its overflow series; its label sets read with [`Store::walk_labels`].
    fn of(&mut self, store: &Store, h: &FamilyHandle) -> (Vec<(String, usize)>, bool) {
        self.clear();
        store.walk_labels(h, |labels| self.add(labels));
        let overflow = self.labels.iter().any(|l| l.name == OVERFLOW_LABEL.as_bytes());
        let mut counts: Vec<(String, usize)> = self
            .labels
            .iter()
            .map(|l| (String::from_utf8_lossy(&l.name).into_owned(), l.values.len()))
            .collect();
        counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        (counts, overflow)
    }

    /// Counts the values of one rendered label set (`name="value",…`).
    fn add(&mut self, rendered: &[u8]) {
        let Self { hasher, labels } = self;
        for (k, (name, value)) in label_pairs(rendered).enumerate() {
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

impl CardinalityReports {
    /// The `/api/v1/cardinality` report for `top`, as [`CardinalityReports::cached_within`]
    /// serves it with [`REPORT_MAX_AGE`]: what the endpoint answers.
    pub fn cached(&self, limiter: &Limiter, store: &Store, top: usize) -> Value {
        self.cached_within(limiter, store, top, REPORT_MAX_AGE)
    }

    /// The report for `top` ([`CardinalityReports::report`]), computed at most once per
    /// `max_age`: a report computed for at least `top` metrics that finished less than `max_age`
    /// ago — or less than [`REPORT_AGE_PER_COST`] times its computation time, when that is longer
    /// — is served again (cut to `top`), with its `generated_at_unix_ms` and its `age_ms` now.
    /// Single-flight: when none is fresh, one caller computes and concurrent callers wait for that
    /// computation and share it; reports are never computed in parallel. Blocks for the
    /// computation: call it off the async workers (`spawn_blocking`).
    pub fn cached_within(&self, limiter: &Limiter, store: &Store, top: usize, max_age: Duration) -> Value {
        if let Some(v) = self.fresh(top, max_age) {
            return v;
        }
        let _computing = self.computing.lock();
        // Computed by another caller while this one waited.
        if let Some(v) = self.fresh(top, max_age) {
            return v;
        }
        let start = Instant::now();
        let report = self.compute(limiter, store, top);
        let cached = Arc::new(CachedReport {
            took: start.elapsed(),
            at: Instant::now(),
            unix_ms: unix_ms(),
            depth: top,
            report,
        });
        *self.latest.lock() = Some(cached.clone());
        cached.shaped(top)
    }

    fn fresh(&self, top: usize, max_age: Duration) -> Option<Value> {
        let c = self.latest.lock().clone()?;
        let max_age = max_age.max(c.took.saturating_mul(REPORT_AGE_PER_COST));
        (c.depth >= top && c.at.elapsed() < max_age).then(|| c.shaped(top))
    }

    /// How many reports were computed so far: every [`CardinalityReports::report`] call and every
    /// [`CardinalityReports::cached`] call that found no fresh report.
    pub fn computations(&self) -> u64 {
        self.computations.load(Ordering::Relaxed)
    }

    /// The `/api/v1/cardinality` report, computed now (uncached; the endpoint serves
    /// [`CardinalityReports::cached`]): configured limits, the `top` metrics by active series with
    /// their labels by distinct values (read from `store` one family and one chunk of series at a
    /// time, see [`Store::walk_labels`]), and what was folded, normalized or rejected, by metric
    /// and reason ([`Limiter::snapshot`]); `generated_at_unix_ms` is now and `age_ms` 0.
    pub fn report(&self, limiter: &Limiter, store: &Store, top: usize) -> Value {
        let mut v = self.compute(limiter, store, top);
        v["generated_at_unix_ms"] = json!(unix_ms());
        v["age_ms"] = json!(0);
        v
    }

    fn compute(&self, limiter: &Limiter, store: &Store, top: usize) -> Value {
        self.computations.fetch_add(1, Ordering::Relaxed);
        let snapshot = limiter.snapshot();
        let by_series = families_by_series(store);
        let states: HashMap<&str, &FamilySnapshot> = snapshot.families.iter().map(|f| (&*f.name, f)).collect();
        let mut distinct = DistinctLabels::default();
        let metrics: Vec<Value> = by_series
            .iter()
            .take(top)
            .map(|(n, h)| {
                let name = h.lock().meta.name.clone();
                let (counts, overflow) = distinct.of(store, h);
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
                if let Some(s) = states.get(name.as_str()) {
                    m["limits"] = json!({
                        "max_series": s.max_series,
                        "max_label_values": s.max_label_values,
                    });
                }
                m
            })
            .collect();
        render(limiter, store, &snapshot, metrics, top)
    }
}

/// The report (without its time fields) from its `top_metrics` and the limiter's `snapshot`:
/// limits, totals, and the `top` metrics the limiter changed most.
fn render(limiter: &Limiter, store: &Store, snapshot: &LimiterSnapshot, metrics: Vec<Value>, top: usize) -> Value {
    let mut folded: Vec<Value> = Vec::new();
    let mut totals = [0u64; FoldReason::ALL.len()];
    let mut rejected_totals = [0u64; RejectReason::ALL.len()];
    for s in &snapshot.families {
        for r in FoldReason::ALL {
            totals[r as usize] += s.folded(r);
        }
        for r in RejectReason::ALL {
            rejected_totals[r as usize] += s.rejected(r);
        }
        if !s.limited() {
            continue;
        }
        let reasons: serde_json::Map<String, Value> = FoldReason::ALL
            .iter()
            .filter(|r| s.folded(**r) > 0)
            .map(|r| (r.as_str().to_string(), json!(s.folded(*r))))
            .collect();
        let rejected: serde_json::Map<String, Value> = RejectReason::ALL
            .iter()
            .filter(|r| s.rejected(**r) > 0)
            .map(|r| (r.as_str().to_string(), json!(s.rejected(*r))))
            .collect();
        let full_labels: Vec<Value> = s
            .labels_at_limit
            .iter()
            .map(|l| json!({"name": &*l.name, "distinct_values": l.distinct_values, "folded_points": l.folded_points}))
            .collect();
        folded.push(json!({
            "metric": &*s.name,
            "folded_points": s.folded_points(),
            "folded_by_reason": reasons,
            "labels_at_limit": full_labels,
            "rejected_points": rejected,
            "normalized_values": s.normalized,
            "dropped_labels": s.dropped_labels,
            "admitted_series": s.admitted_series,
            "stream_states": s.stream_states,
            "example_folded_series": s.example_folded_series,
        }));
    }
    folded.sort_by(|a, b| {
        let k = |v: &Value| v["folded_points"].as_u64().unwrap_or(0) + v["normalized_values"].as_u64().unwrap_or(0);
        k(b).cmp(&k(a))
    });
    folded.truncate(top);
    let c = limiter.config();
    json!({
        "limits": {
            "max_series": snapshot.max_series,
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
        "limited_series": snapshot.series_count,
        "stream_states": snapshot.stream_states,
        "folded_points": FoldReason::ALL.iter().map(|r| (r.as_str().to_string(), json!(totals[*r as usize]))).collect::<serde_json::Map<_, _>>(),
        "rejected_points": RejectReason::ALL.iter().map(|r| (r.as_str().to_string(), json!(rejected_totals[*r as usize]))).collect::<serde_json::Map<_, _>>(),
        "top_metrics": metrics,
        "limited_metrics": folded,
    })
}

fn series_len(h: &FamilyHandle) -> usize {
    h.lock().series().len()
}

/// Every family of `store` with its series count, most series first (ties in name order): the
/// order of the report's `top_metrics`, and of the status page's (`super::page`).
pub fn families_by_series(store: &Store) -> Vec<(usize, FamilyHandle)> {
    let mut by_series: Vec<(usize, FamilyHandle)> = store.families().into_iter().map(|h| (series_len(&h), h)).collect();
    by_series.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    by_series
}

/// The label names of family `h` with their distinct values, most first (then by name), and
/// whether it has its overflow series: what the report lists for each of its `top_metrics`, for
/// any one family (the status page's metric view). Reads the family's label sets a chunk at a
/// time ([`Store::walk_labels`]); blocks for that walk.
pub fn label_values(store: &Store, h: &FamilyHandle) -> (Vec<(String, usize)>, bool) {
    DistinctLabels::default().of(store, h)
}
