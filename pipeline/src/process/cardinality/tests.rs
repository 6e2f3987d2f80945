//! Tests of the cardinality limiter: label rules, each limit, folding with exact totals for every
//! kind and temporality, exemplars on the overflow series, expiry, rejections; and property tests
//! of the exact-totals invariant and of the series bounds.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use serde_json::Value;

use super::*;
use crate::config::{MetricOverride, NormalizeRule};
use crate::expose::api::CardinalityReports;
use crate::model::batch::FamilyMeta;
use crate::model::{Exemplar, Outcome};
use crate::store::{SeriesValue, Store, parse_labels};
use crate::telemetry::Telemetry;

// ---- builders ---------------------------------------------------------------------------------

const BOUNDS: [f64; 3] = [1.0, 5.0, 10.0];

#[derive(Debug, Clone)]
enum V {
    Number(f64),
    /// Per-bucket counts (one more than [`BOUNDS`]) and sum.
    Hist(Vec<u64>, f64),
    /// Explicit bounds, per-bucket counts, sum.
    HistWith(Vec<f64>, Vec<u64>, f64),
    Summary(u64, f64),
}

struct P<'a> {
    metric: &'a str,
    kind: MetricKind,
    labels: Vec<(&'a str, String)>,
    delta: bool,
    value: V,
    exemplar: Option<Exemplar>,
}

fn counter<'a>(metric: &'a str, labels: &[(&'a str, &str)], delta: bool, v: f64) -> P<'a> {
    P {
        metric,
        kind: MetricKind::Counter,
        labels: labels.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        delta,
        value: V::Number(v),
        exemplar: None,
    }
}

fn hist<'a>(metric: &'a str, labels: &[(&'a str, &str)], delta: bool, counts: [u64; 4], sum: f64) -> P<'a> {
    P {
        metric,
        kind: MetricKind::Histogram,
        labels: labels.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        delta,
        value: V::Hist(counts.to_vec(), sum),
        exemplar: None,
    }
}

fn batch(points: &[P]) -> Samples {
    let mut s = Samples::default();
    let mut fams: BTreeMap<&str, u32> = BTreeMap::new();
    for p in points {
        let f = *fams.entry(p.metric).or_insert_with(|| {
            s.add_family(FamilyMeta {
                name: p.metric.into(),
                kind: p.kind,
                help: String::new(),
                unit: String::new(),
            })
        });
        let start = s.labels.len();
        for (k, v) in &p.labels {
            s.add_label(k, v);
        }
        let t = if p.delta {
            Temporality::Delta
        } else {
            Temporality::Cumulative
        };
        let value = match &p.value {
            V::Number(v) => PointValue::Number(*v),
            V::Hist(counts, sum) => hist_value(&mut s, &BOUNDS, counts, *sum),
            V::HistWith(bounds, counts, sum) => hist_value(&mut s, bounds, counts, *sum),
            V::Summary(count, sum) => {
                let (q, _) = s.add_buckets(&[0.5, 1.0], &[]);
                PointValue::Summary {
                    count: *count,
                    sum: *sum,
                    quantiles: q,
                }
            }
        };
        let exs: Vec<Exemplar> = p.exemplar.iter().copied().collect();
        s.add_point(f, start, t, value, &exs);
    }
    s
}

fn hist_value(s: &mut Samples, bounds: &[f64], counts: &[u64], sum: f64) -> PointValue {
    let (b, c) = s.add_buckets(bounds, counts);
    PointValue::Histogram {
        count: counts.iter().sum(),
        sum,
        bounds: b,
        counts: c,
    }
}

struct Rig {
    store: Store,
    limiter: Limiter,
    telemetry: Arc<Telemetry>,
    now: Instant,
    /// The `/api/v1/cardinality` reports of `limiter` over `store`.
    reports: CardinalityReports,
}

impl Rig {
    fn new(cfg: CardinalityConfig) -> Self {
        Self::with_max(cfg, 1_000_000)
    }

    fn with_max(cfg: CardinalityConfig, prometheus_max: usize) -> Self {
        let telemetry = Arc::new(Telemetry::default());
        Self {
            store: Store::new(Duration::from_secs(60), prometheus_max, &[]),
            limiter: Limiter::new(&cfg, prometheus_max, telemetry.clone()).expect("limiter"),
            telemetry,
            now: Instant::now(),
            reports: CardinalityReports::default(),
        }
    }

    /// The `/api/v1/cardinality` report for `top`, computed now.
    fn report(&self, top: usize) -> Value {
        self.reports.report(&self.limiter, &self.store, top)
    }

    /// The report for `top` as the cache serves it with `max_age`.
    fn cached_report(&self, top: usize, max_age: Duration) -> Value {
        self.reports.cached_within(&self.limiter, &self.store, top, max_age)
    }

    fn send(&self, points: &[P]) -> Outcome {
        let mut b = batch(points);
        self.limiter.limit(&mut b, self.store.tick(self.now), true);
        self.store.write(b, self.now)
    }

    /// Series of `metric` as (rendered labels → value).
    fn series(&self, metric: &str) -> BTreeMap<String, SeriesValue> {
        let mut out = BTreeMap::new();
        for h in self.store.families() {
            let f = h.lock();
            if f.meta.name == metric {
                for s in f.series() {
                    out.insert(String::from_utf8_lossy(s.labels()).into_owned(), s.value.clone());
                }
            }
        }
        out
    }

    fn number(&self, metric: &str, labels: &str) -> Option<f64> {
        match self.series(metric).get(labels)? {
            SeriesValue::Number { value, .. } => Some(*value),
            v => panic!("not a number: {v:?}"),
        }
    }

    fn total(&self, metric: &str) -> f64 {
        self.series(metric)
            .values()
            .map(|v| match v {
                SeriesValue::Number { value, .. } => *value,
                v => panic!("not a number: {v:?}"),
            })
            .sum()
    }

    /// Count, sum and per-bucket counts summed over every series of a histogram metric.
    fn hist_total(&self, metric: &str) -> (u64, f64, Vec<u64>) {
        let mut t = (0, 0.0, vec![0; BOUNDS.len() + 1]);
        for v in self.series(metric).values() {
            let SeriesValue::Histogram(h) = v else {
                panic!("not a histogram: {v:?}")
            };
            assert_eq!(&h.bounds[..], &BOUNDS[..]);
            t.0 += h.count;
            t.1 += h.sum;
            for (a, b) in t.2.iter_mut().zip(h.counts.iter()) {
                *a += b;
            }
        }
        t
    }
}

const OVERFLOW: &str = "otel_metric_overflow=\"true\"";

fn limits(per_metric: usize) -> CardinalityConfig {
    CardinalityConfig {
        max_series_per_metric: per_metric,
        ..Default::default()
    }
}

fn user(i: usize) -> String {
    format!("u{i}")
}

// ---- limits and folding -------------------------------------------------------------------------

#[test]
fn past_the_per_metric_limit_new_series_fold_and_the_total_is_exact() {
    let rig = Rig::new(limits(3));
    let users: Vec<String> = (0..5).map(user).collect();
    let pts: Vec<P> = users
        .iter()
        .enumerate()
        .map(|(i, u)| counter("req", &[("user", u)], false, (i + 1) as f64))
        .collect();
    let out = rig.send(&pts);
    assert_eq!((out.accepted, out.rejected), (5, 0));
    let series = rig.series("req");
    assert_eq!(series.len(), 3, "limit 3 = two series + overflow: {series:?}");
    assert_eq!(rig.number("req", "user=\"u0\""), Some(1.0));
    assert_eq!(rig.number("req", "user=\"u1\""), Some(2.0));
    assert_eq!(rig.number("req", OVERFLOW), Some(3.0 + 4.0 + 5.0));
    assert_eq!(
        rig.telemetry
            .cardinality
            .folded_points("req", FoldReason::MaxSeriesPerMetric),
        3
    );

    // Cumulative reports again: admitted series are replaced, folded streams add their increments.
    let pts: Vec<P> = users
        .iter()
        .enumerate()
        .map(|(i, u)| counter("req", &[("user", u)], false, (i + 1) as f64 * 10.0))
        .collect();
    rig.send(&pts);
    assert_eq!(rig.number("req", OVERFLOW), Some(30.0 + 40.0 + 50.0));
    assert_eq!(rig.total("req"), 150.0);
}

#[test]
fn a_reset_of_a_folded_cumulative_stream_adds_the_new_value_whole() {
    let rig = Rig::new(limits(1));
    rig.send(&[counter("c", &[("k", "a")], false, 10.0)]);
    rig.send(&[counter("c", &[("k", "a")], false, 15.0)]);
    assert_eq!(rig.number("c", OVERFLOW), Some(15.0));
    rig.send(&[counter("c", &[("k", "a")], false, 3.0)]);
    assert_eq!(
        rig.number("c", OVERFLOW),
        Some(18.0),
        "increase() semantics: 15, reset, +3"
    );
}

#[test]
fn delta_points_fold_as_they_are() {
    let rig = Rig::new(limits(2));
    for v in 0..4 {
        rig.send(&[
            counter("d", &[("k", "a")], true, 1.0),
            counter("d", &[("k", &format!("x{v}"))], true, 2.0),
        ]);
    }
    assert_eq!(rig.number("d", "k=\"a\""), Some(4.0));
    assert_eq!(rig.number("d", OVERFLOW), Some(8.0));
}

#[test]
fn cumulative_histograms_fold_exactly_bucket_by_bucket() {
    let rig = Rig::new(limits(2));
    rig.send(&[
        hist("h", &[("k", "a")], false, [1, 2, 0, 0], 7.0),
        hist("h", &[("k", "b")], false, [0, 1, 1, 0], 9.0),
        hist("h", &[("k", "c")], false, [0, 0, 0, 2], 30.0),
    ]);
    rig.send(&[
        hist("h", &[("k", "a")], false, [2, 2, 0, 0], 7.5),
        hist("h", &[("k", "b")], false, [0, 3, 1, 1], 30.0),
        hist("h", &[("k", "c")], false, [1, 0, 0, 1], 12.0), // reset: bucket 3 went down
    ]);
    let (count, sum, buckets) = rig.hist_total("h");
    // a is admitted (latest report); b folded (its latest, via increments); c folded: its first
    // report, then the reset report whole.
    assert_eq!(buckets, vec![2 + 1, 2 + 3, 1, 1 + 2 + 1]);
    assert_eq!(count, 4 + 5 + 2 + 2);
    assert_eq!(sum, 7.5 + 30.0 + 30.0 + 12.0);
    let SeriesValue::Histogram(o) = &rig.series("h")[OVERFLOW] else {
        panic!()
    };
    assert_eq!(o.count, 5 + 2 + 2);
    assert_eq!(o.counts.iter().sum::<u64>(), o.count, "_count equals the +Inf bucket");
}

#[test]
fn cumulative_exponential_histograms_fold_exactly() {
    let rig = Rig::new(limits(1));
    let send = |scale: i32, offset: i32, counts: &[u64], zero: u64| {
        let mut s = Samples::default();
        let f = s.add_family(FamilyMeta {
            name: "e".into(),
            kind: MetricKind::Histogram,
            help: String::new(),
            unit: String::new(),
        });
        let start = s.labels.len();
        s.add_label("k", "a");
        let (_, c) = s.add_buckets(&[], counts);
        let count = counts.iter().sum::<u64>() + zero;
        s.add_point(
            f,
            start,
            Temporality::Cumulative,
            PointValue::Exponential(ExpPoint {
                count,
                sum: count as f64,
                scale,
                zero_count: zero,
                zero_threshold: 0.0,
                positive_offset: offset,
                positive: c,
                negative_offset: 0,
                negative: Span::default(),
            }),
            &[],
        );
        rig.limiter.limit(&mut s, rig.store.tick(rig.now), true);
        rig.store.write(s, rig.now);
    };
    send(3, 0, &[1, 2, 3, 4], 1);
    // The SDK downscaled: same observations plus more, at scale 2 (buckets pair up).
    send(2, 0, &[3 + 1, 7 + 2, 1], 2);
    let series = rig.series("e");
    let SeriesValue::Exponential(h) = &series[OVERFLOW] else {
        panic!("{series:?}")
    };
    assert_eq!(h.count, 16);
    assert_eq!(h.zero_count, 2);
    assert_eq!(h.scale, 2);
    assert_eq!(h.positive.counts.iter().sum::<u64>(), 14);
    assert_eq!(h.positive.counts, vec![4, 9, 1]);
}

#[test]
fn summaries_fold_count_and_sum_without_quantiles() {
    let rig = Rig::new(limits(1));
    let s = |c: u64, sum: f64| P {
        metric: "s",
        kind: MetricKind::Summary,
        labels: vec![("k", "a".into())],
        delta: false,
        value: V::Summary(c, sum),
        exemplar: None,
    };
    rig.send(&[s(3, 6.0)]);
    rig.send(&[s(5, 10.0)]);
    let SeriesValue::Summary(o) = &rig.series("s")[OVERFLOW] else {
        panic!()
    };
    assert_eq!((o.count, o.sum), (5, 10.0));
    assert!(o.quantiles.is_empty());
}

#[test]
fn gauges_fold_to_the_last_value() {
    let rig = Rig::new(limits(1));
    let g = |v: &str, x: f64| P {
        metric: "g",
        kind: MetricKind::Gauge,
        labels: vec![("k", v.into())],
        delta: false,
        value: V::Number(x),
        exemplar: None,
    };
    rig.send(&[g("a", 3.0), g("b", 4.0)]);
    assert_eq!(rig.number("g", OVERFLOW), Some(4.0));
}

#[test]
fn max_label_values_folds_new_values_of_a_full_label() {
    let cfg = CardinalityConfig {
        max_label_values: 2,
        ..Default::default()
    };
    let rig = Rig::new(cfg);
    for (path, method) in [
        ("/a", "GET"),
        ("/b", "GET"),
        ("/a", "POST"),
        ("/c", "GET"),
        ("/b", "PUT"),
    ] {
        rig.send(&[counter("r", &[("path", path), ("method", method)], true, 1.0)]);
    }
    let series = rig.series("r");
    assert_eq!(rig.number("r", "method=\"GET\",path=\"/a\""), Some(1.0));
    assert_eq!(rig.number("r", "method=\"POST\",path=\"/a\""), Some(1.0));
    assert_eq!(rig.number("r", OVERFLOW), Some(2.0), "{series:?}");
    assert_eq!(
        rig.telemetry.cardinality.folded_points("r", FoldReason::MaxLabelValues),
        2
    );
    let report = rig.report(10);
    let m = &report["limited_metrics"][0];
    assert_eq!(m["metric"], "r");
    let at_limit: Vec<&str> = m["labels_at_limit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert!(
        at_limit.contains(&"path") && at_limit.contains(&"method"),
        "{at_limit:?}"
    );
}

#[test]
fn the_global_limit_counts_one_overflow_slot_per_metric() {
    let cfg = CardinalityConfig {
        max_series: 4,
        ..Default::default()
    };
    let rig = Rig::new(cfg);
    // Metric a: slot + 2 series; metric b: slot; nothing left.
    rig.send(&[
        counter("a", &[("k", "1")], true, 1.0),
        counter("a", &[("k", "2")], true, 1.0),
    ]);
    rig.send(&[
        counter("b", &[("k", "1")], true, 5.0),
        counter("a", &[("k", "3")], true, 7.0),
    ]);
    assert_eq!(rig.limiter.series_count(), 4);
    assert_eq!(rig.number("b", OVERFLOW), Some(5.0));
    assert_eq!(rig.number("a", OVERFLOW), Some(7.0));
    assert_eq!(rig.telemetry.cardinality.folded_points("b", FoldReason::MaxSeries), 1);
    // A third metric has no room for even its overflow series: rejected, and the sender told.
    let out = rig.send(&[counter("c", &[("k", "1")], true, 1.0)]);
    assert_eq!((out.accepted, out.rejected), (0, 1));
    assert!(out.message.contains("max_series"), "{}", out.message);
    assert!(rig.series("c").is_empty());
    assert!(rig.store.series_count() <= 4);
}

#[test]
fn expiry_frees_room_and_folded_streams_keep_folding_while_their_state_lives() {
    let rig = Rig::new(limits(2));
    let t0 = rig.store.tick(rig.now);
    rig.send(&[
        counter("c", &[("k", "a")], false, 1.0),
        counter("c", &[("k", "b")], false, 2.0),
    ]);
    assert_eq!(rig.number("c", OVERFLOW), Some(2.0));
    // Both live: a is admitted, b folded; nothing expires.
    assert_eq!(rig.limiter.expire(t0 + 10, 60), 0);
    // Sixty seconds later `a` expired; `b` reports again (keeping its stream state fresh).
    let later = Rig {
        now: rig.now + Duration::from_secs(30),
        ..rig
    };
    later.send(&[counter("c", &[("k", "b")], false, 5.0)]);
    assert_eq!(later.limiter.expire(t0 + 61, 60), 1, "a expired");
    // b still folds (its history is in the overflow series), but a new stream gets a's room.
    let later = Rig {
        now: later.now + Duration::from_secs(40),
        ..later
    };
    later.send(&[
        counter("c", &[("k", "b")], false, 6.0),
        counter("c", &[("k", "n")], false, 9.0),
    ]);
    assert_eq!(later.number("c", "k=\"n\""), Some(9.0));
    assert_eq!(later.number("c", OVERFLOW), Some(6.0));
}

#[test]
fn forgotten_metrics_give_back_their_overflow_slot() {
    let rig = Rig::new(limits(0));
    let t0 = rig.store.tick(rig.now);
    rig.send(&[counter("c", &[("k", "a")], true, 1.0)]);
    assert_eq!(rig.limiter.series_count(), 2);
    assert_eq!(rig.limiter.expire(t0 + 100, 60), 1);
    assert_eq!(rig.limiter.series_count(), 0);
    assert_eq!(rig.limiter.families.read().len(), 0);
}

#[test]
fn stream_state_is_bounded_and_points_past_it_are_rejected_not_miscounted() {
    let cfg = CardinalityConfig {
        max_series_per_metric: 1,
        max_stream_states: 2,
        ..Default::default()
    };
    let rig = Rig::new(cfg);
    let out = rig.send(&[
        counter("c", &[("k", "a")], false, 1.0),
        counter("c", &[("k", "b")], false, 2.0),
        counter("c", &[("k", "c")], false, 4.0),
        counter("c", &[("k", "d")], true, 8.0),
    ]);
    assert_eq!((out.accepted, out.rejected), (3, 1));
    assert!(out.message.contains("max_stream_states"), "{}", out.message);
    assert_eq!(
        rig.number("c", OVERFLOW),
        Some(1.0 + 2.0 + 8.0),
        "delta points need no state"
    );
    assert_eq!(rig.limiter.stream_states(), 2);
    let text = render_self_metrics(&rig.telemetry);
    assert!(
        text.contains("spindle_cardinality_rejected_points_total{reason=\"stream_state_full\"} 1"),
        "{text}"
    );
    assert!(text.contains("spindle_cardinality_stream_states 2"), "{text}");
}

fn render_self_metrics(t: &Telemetry) -> String {
    let mut s = String::new();
    t.render(crate::model::Format::OpenMetrics, 0, &mut s);
    s
}

#[test]
fn exemplars_ride_along_to_the_overflow_series() {
    let rig = Rig::new(limits(1));
    let e = Exemplar {
        trace_id: [7; 16],
        span_id: [9; 8],
        value: 3.0,
        time_unix_nano: 42,
    };
    let mut p = counter("c", &[("k", "a")], true, 3.0);
    p.exemplar = Some(e);
    let mut h = hist("h", &[("k", "a")], true, [0, 1, 0, 0], 3.0);
    h.exemplar = Some(e);
    rig.send(&[p, h]);
    let series = rig.series("c");
    let SeriesValue::Number { exemplar, .. } = &series[OVERFLOW] else {
        panic!()
    };
    assert_eq!(exemplar.map(|x| x.trace_id), Some([7; 16]));
    let SeriesValue::Histogram(h) = &rig.series("h")[OVERFLOW] else {
        panic!()
    };
    assert_eq!(h.exemplars[1].map(|x| x.trace_id), Some([7; 16]));
}

#[test]
fn batches_that_may_not_admit_go_where_their_series_went() {
    let rig = Rig::new(limits(0));
    rig.send(&[counter("c", &[("k", "a")], true, 1.0)]);
    let mut b = batch(&[
        counter("c", &[("k", "a")], true, 0.0),
        counter("c", &[("k", "b")], true, 0.0),
    ]);
    rig.limiter.limit(&mut b, rig.store.tick(rig.now), false);
    rig.store.write(b, rig.now);
    assert_eq!(rig.number("c", "k=\"a\""), Some(1.0));
    assert_eq!(rig.number("c", OVERFLOW), Some(0.0));
    assert!(rig.number("c", "k=\"b\"").is_none());
    assert_eq!(
        rig.telemetry.cardinality.folded_points("c", FoldReason::MaxSeries),
        0,
        "not counted as folded"
    );
}

#[test]
fn per_metric_overrides_match_globs_on_the_prometheus_name() {
    let cfg = CardinalityConfig {
        max_series_per_metric: 100,
        metrics: vec![MetricOverride {
            pattern: "http_*_total".into(),
            max_series: Some(2),
            max_label_values: None,
            allow_labels: None,
            deny_labels: None,
        }],
        ..Default::default()
    };
    let rig = Rig::new(cfg);
    for k in ["a", "b", "c"] {
        rig.send(&[
            counter("http_requests", &[("k", k)], true, 1.0),
            counter("rpc", &[("k", k)], true, 1.0),
        ]);
    }
    assert_eq!(rig.series("http_requests").len(), 2);
    assert_eq!(rig.series("rpc").len(), 3);
}

#[test]
fn an_override_replaces_the_top_level_label_lists_for_its_metrics() {
    let cfg = CardinalityConfig {
        deny_labels: vec!["user".into()],
        metrics: vec![MetricOverride {
            pattern: "audit*".into(),
            max_series: None,
            max_label_values: None,
            allow_labels: None,
            deny_labels: Some(vec!["pod".into()]),
        }],
        ..Default::default()
    };
    let rig = Rig::new(cfg);
    let labels = [("pod", "p1"), ("user", "u1")];
    rig.send(&[
        counter("audit_events", &labels, true, 1.0),
        counter("req", &labels, true, 1.0),
    ]);
    assert_eq!(
        rig.number("audit_events", "user=\"u1\""),
        Some(1.0),
        "{:?}",
        rig.series("audit_events")
    );
    assert_eq!(rig.number("req", "pod=\"p1\""), Some(1.0), "{:?}", rig.series("req"));
}

// ---- label rules --------------------------------------------------------------------------------

fn normalize(labels: &[&str], kind: NormalizeKind) -> NormalizeRule {
    NormalizeRule {
        labels: labels.iter().map(|s| s.to_string()).collect(),
        kind,
        pattern: None,
        replacement: None,
        metrics: Vec::new(),
    }
}

#[test]
fn normalizers_rewrite_values() {
    let mut re = normalize(&["path"], NormalizeKind::Regex);
    re.pattern = Some("^/orders/[^/]+".into());
    re.replacement = Some("/orders/{id}".into());
    let cfg = CardinalityConfig {
        normalize: vec![
            normalize(&["path"], NormalizeKind::Uuid),
            normalize(&["path", "peer"], NormalizeKind::Ip),
            normalize(&["path"], NormalizeKind::HexId),
            normalize(&["path"], NormalizeKind::Number),
            re,
        ],
        ..Default::default()
    };
    let l = Limiter::new(&cfg, 100, Arc::new(Telemetry::default())).unwrap();
    let n = |i: usize, v: &str| l.normalizers[i].apply(v).unwrap_or_else(|| v.to_string());
    assert_eq!(n(0, "/u/3F2504E0-4F89-11D3-9A0C-0305E82C3301/x"), "/u/{uuid}/x");
    assert_eq!(n(1, "10.0.0.12:8080"), "{ip}:8080");
    assert_eq!(n(1, "fe80::1ff:fe23:4567:890a"), "{ip}");
    assert_eq!(n(1, "a:b"), "a:b", "not an address");
    assert_eq!(n(2, "/obj/4bf92f3577b34da6a3ce929d0e0e4736"), "/obj/{id}");
    assert_eq!(
        n(2, "/facade/deadbeef"),
        "/facade/deadbeef",
        "no digit: a word, not an id"
    );
    assert_eq!(n(3, "/users/42/orders/7"), "/users/{number}/orders/{number}");
    assert_eq!(n(3, "/api/v2/x2"), "/api/v2/x2", "digits inside words stay");
    assert_eq!(n(4, "/orders/abc/items"), "/orders/{id}/items");
}

#[test]
fn merged_cumulative_streams_add_up_exactly() {
    let cfg = CardinalityConfig {
        normalize: vec![normalize(&["path"], NormalizeKind::Number)],
        ..Default::default()
    };
    let rig = Rig::new(cfg);
    for round in 1..=3 {
        let r = round as f64;
        rig.send(&[
            counter("c", &[("path", "/users/1")], false, r),
            counter("c", &[("path", "/users/2")], false, 10.0 * r),
            counter("c", &[("path", "/health")], false, 100.0 * r),
        ]);
    }
    assert_eq!(rig.number("c", "path=\"/users/{number}\""), Some(3.0 + 30.0));
    assert_eq!(rig.number("c", "path=\"/health\""), Some(300.0));
    assert_eq!(rig.series("c").len(), 2);
    let text = render_self_metrics(&rig.telemetry);
    assert!(
        text.contains("spindle_cardinality_normalized_values_total{label=\"path\",kind=\"number\"} 6"),
        "{text}"
    );
}

#[test]
fn allow_and_deny_lists_drop_labels_and_merge_what_remains() {
    let cfg = CardinalityConfig {
        allow_labels: vec!["method".into(), "user".into()],
        deny_labels: vec!["user".into()],
        ..Default::default()
    };
    let rig = Rig::new(cfg);
    rig.send(&[
        counter(
            "c",
            &[("job", "j"), ("method", "GET"), ("user", "1"), ("pod", "p1")],
            false,
            2.0,
        ),
        counter(
            "c",
            &[("job", "j"), ("method", "GET"), ("user", "2"), ("pod", "p2")],
            false,
            3.0,
        ),
    ]);
    assert_eq!(
        rig.number("c", "job=\"j\",method=\"GET\""),
        Some(5.0),
        "{:?}",
        rig.series("c")
    );
}

#[test]
fn a_rewritten_stream_landing_on_an_unrewritten_cumulative_series_folds() {
    let cfg = CardinalityConfig {
        normalize: vec![normalize(&["path"], NormalizeKind::Number)],
        ..Default::default()
    };
    let rig = Rig::new(cfg);
    rig.send(&[counter("c", &[("path", "/u/{number}")], false, 5.0)]);
    rig.send(&[counter("c", &[("path", "/u/7")], false, 2.0)]);
    rig.send(&[
        counter("c", &[("path", "/u/{number}")], false, 6.0),
        counter("c", &[("path", "/u/7")], false, 3.0),
    ]);
    assert_eq!(rig.number("c", "path=\"/u/{number}\""), Some(6.0));
    assert_eq!(rig.number("c", OVERFLOW), Some(3.0));
    assert_eq!(
        rig.telemetry.cardinality.folded_points("c", FoldReason::LabelCollision),
        2
    );
}

#[test]
fn histogram_layouts_merge_when_exact_and_are_rejected_otherwise() {
    let rig = Rig::new(limits(1));
    let h = |bounds: &[f64], counts: &[u64]| P {
        metric: "h",
        kind: MetricKind::Histogram,
        labels: vec![("k", "x".into())],
        delta: true,
        value: V::HistWith(bounds.to_vec(), counts.to_vec(), 1.0),
        exemplar: None,
    };
    rig.send(&[h(&BOUNDS, &[1, 1, 1, 1])]);
    // Finer bounds that include every merged bound add up exactly.
    let out = rig.send(&[h(&[0.5, 1.0, 2.0, 5.0, 10.0], &[1, 2, 3, 4, 5, 6])]);
    assert_eq!(out.rejected, 0);
    let (_, _, buckets) = rig.hist_total("h");
    assert_eq!(buckets, vec![1 + 3, 1 + 7, 1 + 5, 1 + 6]);
    // Bounds that split a merged bucket cannot.
    let out = rig.send(&[h(&[2.0, 20.0], &[1, 1, 1])]);
    assert_eq!(out.rejected, 1);
    assert!(out.message.contains("bucket bounds"), "{}", out.message);
}

#[test]
fn the_report_names_limits_top_metrics_and_what_folded() {
    let cfg = CardinalityConfig {
        max_series_per_metric: 3,
        normalize: vec![normalize(&["path"], NormalizeKind::Number)],
        ..Default::default()
    };
    let rig = Rig::new(cfg);
    let users: Vec<String> = (0..10).map(user).collect();
    let pts: Vec<P> = users
        .iter()
        .map(|u| counter("big", &[("user", u), ("path", "/x/1")], true, 1.0))
        .chain([counter("small", &[("k", "a")], true, 1.0)])
        .collect();
    rig.send(&pts);
    let r = rig.report(5);
    assert_eq!(r["limits"]["max_series_per_metric"], 3);
    assert_eq!(r["limits"]["normalize"][0]["kind"], "number");
    assert_eq!(r["top_metrics"][0]["name"], "big");
    assert_eq!(r["top_metrics"][0]["series"], 3);
    assert_eq!(r["top_metrics"][0]["has_overflow_series"], true);
    assert_eq!(
        r["top_metrics"][0]["labels"][0]["name"], "user",
        "most distinct values first"
    );
    assert_eq!(r["top_metrics"][0]["labels"][0]["distinct_values"], 2);
    assert_eq!(r["folded_points"]["max_series_per_metric"], 8);
    let big = &r["limited_metrics"][0];
    assert_eq!(big["metric"], "big");
    assert_eq!(big["folded_points"], 8);
    assert_eq!(big["normalized_values"], 10);
    assert!(
        big["example_folded_series"].as_str().unwrap().contains("user=\"u"),
        "{big}"
    );
}

// ---- properties -----------------------------------------------------------------------------------

/// One report of a stream: which metric, which stream, and how much it grew since its last report.
#[derive(Debug, Clone)]
struct Op {
    histogram: bool,
    user: usize,
    region: usize,
    grow: u64,
    buckets: [u64; 4],
    /// Send in the same batch as the previous op.
    same_batch: bool,
}

fn op() -> impl Strategy<Value = Op> {
    (
        any::<bool>(),
        0..12usize,
        0..3usize,
        0..50u64,
        proptest::array::uniform4(0..4u64),
        any::<bool>(),
    )
        .prop_map(|(histogram, user, region, grow, buckets, same_batch)| Op {
            histogram,
            user,
            region,
            grow,
            buckets,
            same_batch,
        })
}

#[derive(Debug, Clone)]
struct Limits {
    global: usize,
    per_metric: usize,
    label_values: usize,
    normalize_region: bool,
}

fn limits_strategy() -> impl Strategy<Value = Limits> {
    (
        prop_oneof![Just(0usize), 3..16usize],
        prop_oneof![Just(0usize), 1..8usize],
        prop_oneof![Just(0usize), 1..5usize],
        any::<bool>(),
    )
        .prop_map(|(global, per_metric, label_values, normalize_region)| Limits {
            global,
            per_metric,
            label_values,
            normalize_region,
        })
}

/// A stream's running totals: counter value, histogram buckets, histogram sum.
type Cumulative = (f64, [u64; 4], f64);

/// Sends `ops` with the given limits and temporality; checks the exact totals of the counter and the
/// histogram (count, sum, every bucket) and the series bounds.
fn check_totals(limits: &Limits, delta: bool, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut cfg = CardinalityConfig {
        max_series: limits.global,
        max_series_per_metric: limits.per_metric,
        max_label_values: limits.label_values,
        ..Default::default()
    };
    if limits.normalize_region {
        let mut r = normalize(&["region"], NormalizeKind::Regex);
        r.pattern = Some("^r[12]$".into());
        r.replacement = Some("r-other".into());
        cfg.normalize.push(r);
    }
    let rig = Rig::with_max(cfg, 1000);
    // What was sent: cumulative state per stream, and the expected totals.
    let mut cum: BTreeMap<(bool, usize, usize), Cumulative> = BTreeMap::new();
    let mut sent_counter = 0.0;
    let mut sent_hist = (0u64, 0.0f64, [0u64; 4]);
    let mut rejected = 0;
    let mut pending: Vec<P> = Vec::new();
    let users: Vec<String> = (0..12).map(user).collect();
    let regions = ["r0", "r1", "r2"];
    // Both metrics exist before the random reports, so `max_series` cannot leave one without room
    // for its overflow series (that rejection is tested on its own).
    let init = [("init", "1")];
    let out = rig.send(&[counter("c", &init, true, 0.0), hist("h", &init, true, [0; 4], 0.0)]);
    prop_assert_eq!(out.rejected, 0);
    let flush = |pending: &mut Vec<P>, rejected: &mut u64| {
        if !pending.is_empty() {
            let out = rig.send(pending);
            *rejected += out.rejected;
            pending.clear();
        }
    };
    for o in ops {
        if !o.same_batch {
            flush(&mut pending, &mut rejected);
        }
        let key = (o.histogram, o.user, o.region);
        let st = cum.entry(key).or_insert((0.0, [0; 4], 0.0));
        let labels = [("user", users[o.user].as_str()), ("region", regions[o.region])];
        let sum_grow = o.grow as f64;
        if o.histogram {
            for (a, b) in st.1.iter_mut().zip(o.buckets) {
                *a += b;
            }
            st.2 += sum_grow;
            sent_hist.0 += o.buckets.iter().sum::<u64>();
            sent_hist.1 += sum_grow;
            for (a, b) in sent_hist.2.iter_mut().zip(o.buckets) {
                *a += b;
            }
            let (counts, sum) = if delta { (o.buckets, sum_grow) } else { (st.1, st.2) };
            pending.push(hist("h", &labels, delta, counts, sum));
        } else {
            st.0 += o.grow as f64;
            sent_counter += o.grow as f64;
            let v = if delta { o.grow as f64 } else { st.0 };
            pending.push(counter("c", &labels, delta, v));
        }
    }
    flush(&mut pending, &mut rejected);
    prop_assert_eq!(rejected, 0, "nothing is rejected with room for every stream state");

    if cum.keys().any(|k| !k.0) {
        prop_assert_eq!(rig.total("c"), sent_counter);
    }
    if cum.keys().any(|k| k.0) {
        let (count, sum, buckets) = rig.hist_total("h");
        prop_assert_eq!(count, sent_hist.0);
        prop_assert_eq!(sum, sent_hist.1);
        prop_assert_eq!(buckets, sent_hist.2.to_vec());
    }

    // Bounds: per metric (overflow included), globally (one overflow slot per metric), per label.
    let mut total = 0;
    for metric in ["c", "h"] {
        let series = rig.series(metric);
        total += series.len();
        if limits.per_metric > 0 {
            prop_assert!(series.len() <= limits.per_metric, "{metric}: {} series", series.len());
        }
        if limits.label_values > 0 {
            let mut values: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for labels in series.keys() {
                for (k, v) in parse_labels(labels.as_bytes()).unwrap() {
                    values.entry(k).or_default().insert(v);
                }
            }
            for (k, v) in values.iter().filter(|(k, _)| *k != OVERFLOW_LABEL) {
                prop_assert!(v.len() <= limits.label_values, "{metric}.{k}: {v:?}");
            }
        }
    }
    if limits.global > 0 {
        prop_assert!(total <= limits.global, "{total} series");
        prop_assert!(rig.limiter.series_count() <= limits.global);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn cumulative_totals_stay_exact_under_any_limits(limits in limits_strategy(), ops in proptest::collection::vec(op(), 1..80)) {
        check_totals(&limits, false, &ops)?;
    }

    #[test]
    fn delta_totals_stay_exact_under_any_limits(limits in limits_strategy(), ops in proptest::collection::vec(op(), 1..80)) {
        check_totals(&limits, true, &ops)?;
    }
}

// ---- the report: cached, single-flight, walked chunk by chunk ----------------------------------

/// `n` delta counter points of metric `m`, one series each: `group` takes 7 values, `user` `n`
/// (some with characters the exposition escapes).
fn many_series(m: &str, from: usize, to: usize) -> Vec<P<'_>> {
    (from..to)
        .map(|i| {
            let user = if i % 100 == 0 { format!("u\"{i}\\") } else { user(i) };
            P {
                metric: m,
                kind: MetricKind::Counter,
                labels: vec![("group", format!("g{}", i % 7)), ("user", user)],
                delta: true,
                value: V::Number(1.0),
                exemplar: None,
            }
        })
        .collect()
}

/// A report without the fields that say when it was made.
fn timeless(mut r: Value) -> Value {
    let m = r.as_object_mut().expect("the report is an object");
    assert!(
        m.remove("generated_at_unix_ms").is_some_and(|v| v.is_u64()),
        "generated_at_unix_ms"
    );
    assert!(m.remove("age_ms").is_some_and(|v| v.is_u64()), "age_ms");
    r
}

/// Label name → distinct values over every series of `metric`, from the series themselves.
fn distinct_by_hand(store: &Store, metric: &str) -> BTreeMap<String, usize> {
    let mut sets: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for h in store.families() {
        let f = h.lock();
        if f.meta.name == metric {
            for s in f.series() {
                for (k, v) in parse_labels(s.labels()).expect("store-rendered labels parse") {
                    sets.entry(k).or_default().insert(v);
                }
            }
        }
    }
    sets.into_iter().map(|(k, v)| (k, v.len())).collect()
}

#[test]
fn concurrent_report_calls_share_one_computation() {
    let rig = Rig::new(CardinalityConfig::default());
    rig.send(&many_series("big", 0, 20_000));
    let barrier = std::sync::Barrier::new(8);
    let reports: Vec<Value> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    rig.cached_report(20, Duration::from_secs(3600))
                })
            })
            .collect();
        calls.into_iter().map(|c| c.join().expect("report call")).collect()
    });
    assert_eq!(rig.reports.computations(), 1, "8 concurrent callers, one computation");
    let first = timeless(reports[0].clone());
    assert_eq!(first["top_metrics"][0]["series"], 20_000);
    for r in &reports {
        assert_eq!(
            r["generated_at_unix_ms"], reports[0]["generated_at_unix_ms"],
            "one shared report"
        );
        assert_eq!(timeless(r.clone()), first);
    }
}

#[test]
fn a_report_past_its_max_age_is_computed_again_and_sees_new_series() {
    let rig = Rig::new(CardinalityConfig::default());
    let max_age = Duration::from_millis(500);
    rig.send(&many_series("big", 0, 100));
    let r1 = rig.cached_report(20, max_age);
    assert_eq!(r1["active_series"], 100);
    rig.send(&many_series("big", 100, 150));
    let r2 = rig.cached_report(20, max_age);
    assert_eq!(r2["active_series"], 100, "still the cached report");
    assert_eq!(r2["generated_at_unix_ms"], r1["generated_at_unix_ms"]);
    assert!(r2["age_ms"].as_u64().is_some_and(|a| a < 500), "{}", r2["age_ms"]);
    assert_eq!(rig.reports.computations(), 1);
    std::thread::sleep(max_age + Duration::from_millis(100));
    let r3 = rig.cached_report(20, max_age);
    assert_eq!(rig.reports.computations(), 2, "recomputed past max_age");
    assert_eq!(r3["active_series"], 150, "the new series are seen");
    assert_eq!(r3["top_metrics"][0]["series"], 150);
    assert_eq!(r3["top_metrics"][0]["labels"][0]["distinct_values"], 150);
    assert!(r3["generated_at_unix_ms"].as_u64() > r1["generated_at_unix_ms"].as_u64());
    // A larger `limit` than the cached report was computed for needs a new computation.
    rig.cached_report(21, max_age);
    assert_eq!(rig.reports.computations(), 3);
}

#[test]
fn the_cached_report_keeps_its_fields_and_equals_a_fresh_one_for_any_smaller_limit() {
    let cfg = CardinalityConfig {
        max_series_per_metric: 3,
        normalize: vec![normalize(&["path"], NormalizeKind::Number)],
        ..Default::default()
    };
    let rig = Rig::new(cfg);
    let users: Vec<String> = (0..10).map(user).collect();
    let pts: Vec<P> = users
        .iter()
        .map(|u| counter("big", &[("path", "/x/1"), ("user", u)], true, 1.0))
        .chain([counter("small", &[("k", "a")], true, 1.0)])
        .chain(["m1", "m2", "m3"].map(|m| counter(m, &[("a", "1"), ("b", "2"), ("c", "3")], true, 1.0)))
        .collect();
    rig.send(&pts);
    let hour = Duration::from_secs(3600);
    let cached = rig.cached_report(5, hour);
    let keys: Vec<&str> = cached.as_object().unwrap().keys().map(String::as_str).collect();
    let mut expected = vec![
        "active_series",
        "age_ms",
        "folded_points",
        "generated_at_unix_ms",
        "limited_metrics",
        "limited_series",
        "limits",
        "rejected_points",
        "stream_states",
        "top_metrics",
    ];
    let mut got = keys.clone();
    got.sort_unstable();
    expected.sort_unstable();
    assert_eq!(got, expected);
    for (k, m) in [("top_metrics", "name"), ("limited_metrics", "metric")] {
        let first = &cached[k][0];
        assert_eq!(first[m], "big", "{cached}");
    }
    assert_eq!(timeless(cached), timeless(rig.report(5)));
    assert_eq!(rig.reports.computations(), 2);
    // Smaller limits are cut from the cached report, and equal what a fresh computation gives.
    for top in [1, 2, 4] {
        let before = rig.reports.computations();
        let cut = rig.cached_report(top, hour);
        assert_eq!(rig.reports.computations(), before, "served from the cache");
        assert_eq!(cut["top_metrics"].as_array().unwrap().len(), top);
        assert_eq!(timeless(cut), timeless(rig.report(top)), "limit {top}");
    }
}

#[test]
fn the_report_counts_distinct_values_over_a_family_larger_than_one_walk_chunk() {
    let rig = Rig::new(CardinalityConfig::default());
    let n = 3 * crate::store::WALK_CHUNK + 17;
    rig.send(&many_series("big", 0, n));
    let mut pts = many_series("big", 0, 10);
    pts.push(counter("big", &[(OVERFLOW_LABEL, "true")], true, 1.0));
    rig.send(&pts);
    let r = rig.report(20);
    let top = &r["top_metrics"][0];
    assert_eq!(top["series"], n + 1);
    assert_eq!(top["has_overflow_series"], true);
    let from_report: BTreeMap<String, usize> = top["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["name"].as_str().unwrap().to_string(),
                l["distinct_values"].as_u64().unwrap() as usize,
            )
        })
        .collect();
    assert_eq!(from_report, distinct_by_hand(&rig.store, "big"));
    assert_eq!(from_report["user"], n);
    assert_eq!(from_report["group"], 7);
    let names: Vec<&str> = top["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["user", "group", OVERFLOW_LABEL], "most distinct values first");
}

#[test]
fn walking_a_family_holds_its_lock_only_while_copying_a_chunk() {
    let rig = Rig::new(CardinalityConfig::default());
    let n = 2 * crate::store::WALK_CHUNK + 5;
    rig.send(&many_series("big", 0, n));
    let h = rig.store.families().pop().expect("one family");
    let mut free = 0;
    let visited = rig.store.walk_labels(&h, |_| {
        // A scrape or a writer could take the lock here.
        if h.try_lock().is_some() {
            free += 1;
        }
    });
    assert_eq!(visited, n);
    assert_eq!(free, n, "the family lock is free while the reader works");
}

#[test]
fn a_walk_visits_every_surviving_series_when_expiry_runs_in_the_middle() {
    let chunk = crate::store::WALK_CHUNK;
    let n = 3 * chunk;
    let t0 = Instant::now();
    let label = |i: usize| {
        let mut out = Vec::new();
        let b = batch(&many_series("big", i, i + 1));
        crate::store::render_labels(&b, &b.labels[..], &mut out);
        out
    };
    for (survivors, name) in [
        // Odd series survive: the last series of the first chunk is still there to resume after.
        (Box::new(|i: usize| i % 2 == 1) as Box<dyn Fn(usize) -> bool>, "odd"),
        // Only the last chunk survives: the walk starts over.
        (Box::new(move |i: usize| i >= 2 * chunk), "last chunk"),
    ] {
        let store = Store::new(Duration::from_secs(60), usize::MAX, &[]);
        store.write(batch(&many_series("big", 0, n)), t0);
        let keep: Vec<P> = many_series("big", 0, n)
            .into_iter()
            .enumerate()
            .filter(|(i, _)| survivors(*i))
            .map(|(_, p)| p)
            .collect();
        store.write(batch(&keep), t0 + Duration::from_secs(50));
        let h = store.families().pop().expect("one family");
        let mut seen: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
        let mut expired = 0;
        store.walk_labels(&h, |l| {
            *seen.entry(l.to_vec()).or_default() += 1;
            if expired == 0 {
                expired = store.expire(t0 + Duration::from_secs(70));
            }
        });
        assert_eq!(expired, n - keep.len(), "{name}: expiry ran during the walk");
        for i in (0..n).filter(|i| survivors(*i)) {
            assert!(seen.contains_key(&label(i)), "{name}: surviving series {i} was missed");
        }
        if name == "odd" {
            assert!(
                seen.values().all(|c| *c == 1),
                "{name}: resumed without visiting a series twice"
            );
            assert_eq!(seen.len(), chunk + (chunk..n).filter(|i| survivors(*i)).count());
        }
    }
}

/// Point 5 of native histograms: folded exponential histograms keep exact totals. Series past the
/// limit, sent at different scales, delta and cumulative, fold into the overflow series; rendered
/// as native histograms in protobuf, the overflow's count and sum equal what was folded, its
/// buckets (at the common, coarsest scale) add up to the folded buckets, and all series together
/// hold every observation sent.
#[test]
fn folded_native_histograms_keep_exact_totals_in_protobuf() {
    use crate::model::exp::bucket_index;
    let rig = Rig::new(limits(2));
    // (user, delta, scale, offset, counts, zero, sum)
    type Send<'a> = (&'a str, bool, i32, i32, &'a [u64], u64, f64);
    let sends: [Send<'_>; 7] = [
        ("a", true, 3, 0, &[1, 2, 3], 1, 4.5),
        ("b", true, 2, -4, &[5, 0, 1], 0, 2.0),
        ("c", true, 1, 2, &[2, 2], 2, 9.0),
        ("b", true, 4, 10, &[1], 0, 1.5),
        ("d", false, 3, 1, &[1, 1], 0, 3.0),
        ("d", false, 3, 1, &[2, 4], 1, 7.0),
        ("a", true, 0, 0, &[3], 0, 6.0),
    ];
    let mut sent_count = 0u64;
    let mut sent_sum = 0.0;
    // What `d` (cumulative) adds is its last report.
    for (i, (u, delta, scale, offset, counts, zero, sum)) in sends.iter().enumerate() {
        let mut s = Samples::default();
        let f = s.add_family(FamilyMeta {
            name: "e".into(),
            kind: MetricKind::Histogram,
            help: String::new(),
            unit: String::new(),
        });
        let start = s.labels.len();
        s.add_label("user", u);
        let (_, c) = s.add_buckets(&[], counts);
        let count = counts.iter().sum::<u64>() + zero;
        let t = if *delta {
            Temporality::Delta
        } else {
            Temporality::Cumulative
        };
        s.add_point(
            f,
            start,
            t,
            PointValue::Exponential(ExpPoint {
                count,
                sum: *sum,
                scale: *scale,
                zero_count: *zero,
                zero_threshold: 0.0,
                positive_offset: *offset,
                positive: c,
                negative_offset: 0,
                negative: Span::default(),
            }),
            &[],
        );
        rig.limiter.limit(&mut s, rig.store.tick(rig.now), true);
        let o = rig.store.write(s, rig.now);
        assert_eq!(o.rejected, 0, "send {i}: {}", o.message);
        if *delta || i == 5 {
            sent_count += count;
            sent_sum += sum;
        }
    }
    let mut pb = Vec::new();
    crate::expose::render(
        &rig.store,
        &Telemetry::default(),
        crate::model::Format::Protobuf,
        &mut pb,
    );
    let natives: Vec<_> = crate::expose::tests::protobuf_format::natives(&pb)
        .into_iter()
        .filter(|n| n.family == "e")
        .collect();
    let overflow = natives
        .iter()
        .find(|n| n.labels == [("otel_metric_overflow".to_string(), "true".to_string())])
        .expect("an overflow series");
    // Admitted: the first series only (the overflow series holds the other slot).
    let admitted: Vec<_> = natives.iter().filter(|n| n != &overflow).collect();
    assert_eq!(admitted.len(), 1, "{natives:?}");
    assert_eq!(admitted[0].labels, [("user".to_string(), "a".to_string())]);
    // Folded: b (two deltas), c (one delta), d (its last cumulative report, as an increment).
    let folded_count = (5 + 1) + 1 + (2 + 2 + 2) + (2 + 4 + 1);
    let folded_sum = 2.0 + 1.5 + 9.0 + 7.0;
    assert_eq!(overflow.count, folded_count);
    assert!((overflow.sum - folded_sum).abs() < 1e-9, "{}", overflow.sum);
    assert_eq!(
        overflow.positive.values().sum::<u64>() + overflow.zero_count,
        folded_count
    );
    // Every folded observation's bucket, brought to the overflow's (coarsest) schema.
    let mut want = BTreeMap::new();
    let folded: [(i32, i32, &[u64]); 4] = [(2, -4, &[5, 0, 1]), (4, 10, &[1]), (1, 2, &[2, 2]), (3, 1, &[2, 4])];
    for (scale, offset, counts) in folded {
        for (k, c) in counts.iter().enumerate().filter(|(_, c)| **c > 0) {
            // OTLP bucket i at `scale` holds (base^i, base^(i+1)]: take a value inside it.
            let lower = crate::model::exp::lower_boundary(offset + k as i32, scale);
            let upper = crate::model::exp::lower_boundary(offset + k as i32 + 1, scale);
            let v = (lower + upper) / 2.0;
            *want.entry(bucket_index(v, overflow.schema) + 1).or_insert(0) += c;
        }
    }
    assert_eq!(overflow.positive, want, "schema {}", overflow.schema);
    let total_count: u64 = natives.iter().map(|n| n.count).sum();
    let total_sum: f64 = natives.iter().map(|n| n.sum).sum();
    assert_eq!(total_count, sent_count);
    assert!((total_sum - sent_sum).abs() < 1e-9);
}

/// Span metrics with `histogram: both` folded into the overflow series: classic buckets, native
/// buckets, counts and sums over every series (overflow included) are exactly what the spans gave,
/// request after request, and the overflow series is kept both ways.
#[test]
fn span_metrics_kept_both_ways_fold_with_exact_totals() {
    use crate::process::span_metrics::{DURATION, HistogramKind, SpanMetrics, SpanMetricsConfig};
    use crate::store::exp::ExpHistogram;
    let rig = Rig::new(limits(3));
    let sm = SpanMetrics::new(SpanMetricsConfig {
        buckets: vec![0.01, 0.1, 1.0],
        histogram: HistogramKind::Both,
        ..SpanMetricsConfig::default()
    });
    let millis = [1u64, 4, 9, 20, 60, 300, 900, 1500, 2, 45];
    let (mut want_classic, mut want_sum, mut n) = ([0u64; 4], 0.0, 0u64);
    for round in 0..3u64 {
        let spans = millis
            .iter()
            .enumerate()
            .map(|(i, ms)| opentelemetry_proto::tonic::trace::v1::Span {
                name: format!("op{}", (i as u64 + round) % 7),
                end_time_unix_nano: 1_000_000_000 + (ms + round) * 1_000_000,
                ..crate::testing::span("x", i as u8 + 1, Vec::new())
            })
            .collect();
        for ms in millis {
            let secs = (ms + round) as f64 / 1000.0;
            want_classic[[0.01, 0.1, 1.0].partition_point(|b: &f64| *b < secs)] += 1;
            want_sum += secs;
            n += 1;
        }
        let req = crate::testing::traces_request(vec![crate::testing::kv("service.name", "svc")], spans);
        let out = sm.process(&req);
        let (mut counts, mut exemplars) = (out.counts, out.exemplars);
        let tick = rig.store.tick(rig.now);
        rig.limiter.limit(&mut counts, tick, true);
        rig.store.write(counts, rig.now);
        rig.limiter.limit(&mut exemplars, tick, false);
        rig.store.write(exemplars, rig.now);
    }
    let series = rig.series(DURATION);
    assert!(series.len() <= 3, "{}", series.len());
    let Some(SeriesValue::Both(overflow)) = series.get(OVERFLOW) else {
        panic!("an overflow series kept both ways: {:?}", series.keys())
    };
    assert!(
        overflow.classic.exemplars.iter().any(Option::is_some),
        "exemplars fold too"
    );
    let (mut classic, mut count, mut sum) = ([0u64; 4], 0u64, 0.0);
    let mut native: Option<ExpHistogram> = None;
    for v in series.values() {
        let SeriesValue::Both(b) = v else { panic!("{v:?}") };
        assert_eq!(&b.classic.bounds[..], &[0.01, 0.1, 1.0]);
        for (c, x) in classic.iter_mut().zip(b.classic.counts.iter()) {
            *c += x;
        }
        count += b.classic.count;
        sum += b.classic.sum;
        assert_eq!(b.native.count, b.classic.count, "both parts count the same spans");
        match &mut native {
            Some(h) => h.merge_delta(b.native.clone()),
            None => native = Some(b.native.clone()),
        }
    }
    assert_eq!(classic, want_classic);
    assert_eq!(count, n);
    assert!((sum - want_sum).abs() < 1e-9, "{sum} vs {want_sum}");
    let native = native.expect("native parts");
    assert_eq!(native.count, n);
    assert_eq!(native.positive.counts.iter().sum::<u64>() + native.zero_count, n);
    assert!((native.sum - want_sum).abs() < 1e-9);
}
