//! The `/api/v1/cardinality` report: computed from the limiter's state and the store, cached and
//! served single-flight.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hashbrown::{HashMap, HashTable};
use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::model::batch::{Samples, Span};
use crate::store::Store;

use super::state::FamilyHandle;
use super::{FoldReason, Hasher, Limiter, OVERFLOW_LABEL, RejectReason};

/// How long, at least, a computed `/api/v1/cardinality` report is served before a call computes
/// the next one (see also [`REPORT_AGE_PER_COST`]; README, "Cardinality control").
pub const REPORT_MAX_AGE: Duration = Duration::from_secs(1);

/// A report is also served until it is this many times as old as its computation took, so
/// continuous polling keeps at most 1/(1 + this) of one core busy however large the store is
/// (at 1M series, one computation every ~10 s instead of every second).
pub const REPORT_AGE_PER_COST: u32 = 10;

/// The newest report, and the lock that makes computing one single-flight.
#[derive(Debug, Default)]
pub(super) struct ReportCache {
    pub(super) latest: Mutex<Option<Arc<CachedReport>>>,
    /// Held while a report is computed: callers that find no fresh report wait here, then share it.
    pub(super) computing: Mutex<()>,
    pub(super) computations: AtomicU64,
}

#[derive(Debug)]
pub(super) struct CachedReport {
    /// When its computation finished.
    pub(super) at: Instant,
    /// How long the computation took.
    pub(super) took: Duration,
    pub(super) unix_ms: u64,
    /// The `top` it was computed for: it serves every `top` up to this.
    pub(super) depth: usize,
    /// Without the time fields.
    pub(super) report: Value,
}

impl CachedReport {
    /// The report as computed for `top <= depth`: its lists are sorted, so that is a prefix of
    /// each (metrics, each metric's labels, limited metrics); plus its time fields.
    pub(super) fn shaped(&self, top: usize) -> Value {
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

pub(super) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Distinct values per label name over the series of one family, kept as their escaped bytes in
/// one arena per label (no allocation per value).
#[derive(Debug, Default)]
pub(super) struct DistinctLabels {
    pub(super) hasher: Hasher,
    pub(super) labels: Vec<DistinctValues>,
}

#[derive(Debug)]
pub(super) struct DistinctValues {
    pub(super) name: Vec<u8>,
    /// (hash, start, end) of each distinct value in `arena`.
    pub(super) values: HashTable<(u64, usize, usize)>,
    pub(super) arena: Vec<u8>,
}

impl DistinctLabels {
    pub(super) fn clear(&mut self) {
        self.labels.clear();
    }

    /// Counts the values of one rendered label set (`name="value",…`).
    pub(super) fn add(&mut self, rendered: &[u8]) {
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

impl Limiter {
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

    pub(super) fn fresh_report(&self, top: usize, max_age: Duration) -> Option<Value> {
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

    pub(super) fn compute_report(&self, store: &Store, top: usize) -> Value {
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

pub(super) fn series_len(h: &crate::store::FamilyHandle) -> usize {
    h.lock().series().len()
}

/// A label set as `{name="value",…}` for the report.
pub(super) fn render(batch: &Samples, labels: Span) -> String {
    let mut out = Vec::new();
    crate::store::render_labels(batch, &batch.labels[labels.range()], &mut out);
    format!("{{{}}}", String::from_utf8_lossy(&out))
}
