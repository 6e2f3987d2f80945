//! The counters the status page shows, and their rates.
//!
//! A [`Snapshot`] is Spindle's own metrics exactly as `/metrics` renders them in the text format
//! (`crate::expose::render_own`), read back as `sample{labels}` → value: the page cannot show a
//! figure that `/metrics` does not. Rates per second come from two snapshots: [`History`] keeps
//! the ones taken by recent page views (at most one a second, for a little over [`WINDOW`]), and
//! a view's rates are its own snapshot against the newest kept one at least [`WINDOW`] old (or,
//! shortly after start, the oldest one at least [`MIN_SPAN`] old). Every viewer, with or without
//! JavaScript, sees the same rates; the page's script only re-fetches the page.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::expose::{SelfMetrics, render_own};
use crate::model::Format;
use crate::store::label_pairs;

/// The span rates are averaged over, once views have been that far apart.
pub const WINDOW: Duration = Duration::from_secs(10);
/// The shortest span a rate is computed over; a view with no snapshot this old shows no rates.
pub const MIN_SPAN: Duration = Duration::from_secs(1);
/// Snapshots kept at most (one a second at most, so this covers well over [`WINDOW`]).
const MAX_KEPT: usize = 32;

/// Spindle's own metrics at one instant: text-format sample names with their labels
/// (`spindle_received_requests_total{signal="metrics",protocol="grpc"}`) → value.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// When it was taken.
    pub at: Instant,
    values: BTreeMap<String, f64>,
}

impl Snapshot {
    /// Reads `own`'s families as a scrape renders them, with `active_series` as the store's count.
    pub fn take(own: &dyn SelfMetrics, active_series: usize, at: Instant) -> Self {
        let mut text = Vec::new();
        render_own(own, Format::Text, active_series, &mut text);
        Self::parse(&String::from_utf8_lossy(&text), at)
    }

    /// Reads text-format sample lines (`# ` lines and lines that do not parse are skipped).
    pub fn parse(text: &str, at: Instant) -> Self {
        let values = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (key, value) = l.rsplit_once(' ')?;
                Some((key.to_string(), value.parse::<f64>().ok()?))
            })
            .collect();
        Self { at, values }
    }

    /// The value of one sample (`name{labels}` as the text format writes it), if present.
    pub fn get(&self, key: &str) -> Option<f64> {
        self.values.get(key).copied()
    }

    /// Every sample of `name` (a full sample name, e.g. `spindle_refused_requests_total`): its
    /// key, its labels (values unescaped) and its value, in key order.
    pub fn series<'s>(&'s self, name: &'s str) -> impl Iterator<Item = (&'s str, Vec<(String, String)>, f64)> + 's {
        use std::ops::Bound;
        self.values
            .range::<str, _>((Bound::Included(name), Bound::Unbounded))
            .take_while(move |(k, _)| k.starts_with(name))
            .filter(move |(k, _)| k.len() == name.len() || k.as_bytes()[name.len()] == b'{')
            .map(|(k, v)| (k.as_str(), labels_of(k), *v))
    }
}

/// The labels of a `name{labels}` key, values unescaped.
pub fn labels_of(key: &str) -> Vec<(String, String)> {
    let Some(inner) = key.find('{').and_then(|i| key.get(i + 1..key.len() - 1)) else {
        return Vec::new();
    };
    label_pairs(inner.as_bytes())
        .map(|(k, v)| {
            let mut value = Vec::new();
            crate::util::labels::unescape_label_value(v, &mut value);
            (
                String::from_utf8_lossy(k).into_owned(),
                String::from_utf8_lossy(&value).into_owned(),
            )
        })
        .collect()
}

/// The snapshots recent views took, oldest first.
#[derive(Debug, Default)]
pub struct History {
    kept: parking_lot::Mutex<VecDeque<Arc<Snapshot>>>,
}

impl History {
    /// Keeps `now` (unless a kept snapshot is less than [`MIN_SPAN`] younger) and returns the
    /// snapshot to compute its rates against: the newest kept one at least [`WINDOW`] older,
    /// else the oldest one at least [`MIN_SPAN`] older, else none.
    pub fn record(&self, now: Arc<Snapshot>) -> Option<Arc<Snapshot>> {
        let mut kept = self.kept.lock();
        let age = |s: &Snapshot| now.at.saturating_duration_since(s.at);
        let base = kept
            .iter()
            .rev()
            .find(|s| age(s) >= WINDOW)
            .or_else(|| kept.iter().find(|s| age(s) >= MIN_SPAN))
            .cloned();
        if kept.back().is_none_or(|s| age(s) >= MIN_SPAN) {
            kept.push_back(now.clone());
        }
        // The oldest is needed only while no younger one is at least WINDOW old.
        while kept.len() > 1 && kept.get(1).is_some_and(|s| age(s) >= WINDOW) {
            kept.pop_front();
        }
        while kept.len() > MAX_KEPT {
            kept.pop_front();
        }
        base
    }

    /// How many snapshots are kept.
    pub fn len(&self) -> usize {
        self.kept.lock().len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A snapshot and the one its rates are computed against.
#[derive(Debug, Clone, Copy)]
pub struct Rates<'a> {
    /// Now.
    pub now: &'a Snapshot,
    /// The earlier snapshot, if any is old enough.
    pub base: Option<&'a Snapshot>,
}

impl Rates<'_> {
    /// The span between the two snapshots.
    pub fn span(&self) -> Option<Duration> {
        self.base.map(|b| self.now.at.saturating_duration_since(b.at))
    }

    /// The value of `key` now (0 when absent).
    pub fn value(&self, key: &str) -> f64 {
        self.now.get(key).unwrap_or(0.0)
    }

    /// How much counter `key` grew over the span; `None` without a base (or if it went down,
    /// which Spindle's counters never do).
    pub fn delta(&self, key: &str) -> Option<f64> {
        let base = self.base?;
        let d = self.value(key) - base.get(key).unwrap_or(0.0);
        (d >= 0.0).then_some(d)
    }

    /// Counter `key`'s growth per second over the span.
    pub fn per_second(&self, key: &str) -> Option<f64> {
        let secs = self.span()?.as_secs_f64();
        (secs > 0.0).then_some(())?;
        Some(self.delta(key)? / secs)
    }

    /// Sum of the per-second rates of `keys`.
    pub fn sum_per_second<'k>(&self, keys: impl IntoIterator<Item = &'k str>) -> Option<f64> {
        keys.into_iter().map(|k| self.per_second(k)).sum()
    }

    /// A duration histogram `name` (`name_sum`, `name_count`, `name_bucket{le=…}`): the mean over
    /// the span (`None` when nothing was observed in it) and over all time.
    pub fn mean(&self, name: &str) -> (Option<f64>, Option<f64>) {
        let (sum, count) = (format!("{name}_sum"), format!("{name}_count"));
        let recent = match (self.delta(&sum), self.delta(&count)) {
            (Some(s), Some(c)) if c > 0.0 => Some(s / c),
            _ => None,
        };
        let n = self.value(&count);
        (recent, (n > 0.0).then(|| self.value(&sum) / n))
    }

    /// The smallest bucket bound of histogram `name` under which at least `q` of the
    /// observations of the span fall (`+Inf` as infinity); `None` when nothing was observed in
    /// it.
    pub fn quantile_bound(&self, name: &str, q: f64) -> Option<f64> {
        let bucket = format!("{name}_bucket");
        let mut buckets: Vec<(f64, f64)> = self
            .now
            .series(&bucket)
            .filter_map(|(k, labels, _)| {
                let le = labels.iter().find(|(n, _)| n == "le")?.1.parse::<f64>().ok()?;
                Some((le, self.delta(k)?))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let total = buckets.last()?.1;
        (total > 0.0).then_some(())?;
        buckets.iter().find(|(_, c)| *c >= q * total).map(|(le, _)| *le)
    }
}
