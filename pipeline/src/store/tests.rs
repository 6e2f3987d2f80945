//! Tests of the series store: temporality, histograms, exemplar slots, conflicts, bounds, expiry,
//! and a model-based property test of the aggregation.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::{self as pm, exponential_histogram_data_point::Buckets, metric::Data};
use proptest::prelude::*;

use super::*;
use crate::process::translate::Translator;
use crate::testing::{self, kvs, metrics_request_in, sum, temporality};
use crate::util::labels::escape_label_value;

// ---- OTLP builders -------------------------------------------------------------------------

fn req(metrics: Vec<pm::Metric>) -> ExportMetricsServiceRequest {
    metrics_request_in(None, None, metrics)
}

fn metric(name: &str, data: Data) -> pm::Metric {
    testing::metric(name, "", data)
}

fn num(v: f64, attrs: &[(&str, &str)]) -> pm::NumberDataPoint {
    testing::point(v, kvs(attrs))
}

fn counter(name: &str, delta: bool, v: f64, attrs: &[(&str, &str)]) -> pm::Metric {
    metric(name, sum(true, delta, vec![num(v, attrs)]))
}

fn gauge(name: &str, v: f64, attrs: &[(&str, &str)]) -> pm::Metric {
    metric(name, testing::gauge(vec![num(v, attrs)]))
}

fn hpoint(bounds: &[f64], counts: &[u64], sum: f64, attrs: &[(&str, &str)]) -> pm::HistogramDataPoint {
    testing::hpoint(bounds, counts, Some(sum), kvs(attrs))
}

fn histogram(name: &str, delta: bool, points: Vec<pm::HistogramDataPoint>) -> pm::Metric {
    metric(name, testing::histogram(delta, points))
}

struct Exp<'a> {
    scale: i32,
    zero: u64,
    offset: i32,
    counts: &'a [u64],
    sum: f64,
}

fn exp_point(e: &Exp<'_>, attrs: &[(&str, &str)]) -> pm::ExponentialHistogramDataPoint {
    pm::ExponentialHistogramDataPoint {
        attributes: kvs(attrs),
        count: e.counts.iter().sum::<u64>() + e.zero,
        sum: Some(e.sum),
        scale: e.scale,
        zero_count: e.zero,
        positive: Some(Buckets {
            offset: e.offset,
            bucket_counts: e.counts.to_vec(),
        }),
        ..Default::default()
    }
}

fn exponential(name: &str, delta: bool, points: Vec<pm::ExponentialHistogramDataPoint>) -> pm::Metric {
    metric(
        name,
        Data::ExponentialHistogram(pm::ExponentialHistogram {
            data_points: points,
            aggregation_temporality: temporality(delta),
        }),
    )
}

const TRACE: [u8; 16] = [0xab; 16];

fn ex(value: f64, t: u64) -> pm::Exemplar {
    pm::Exemplar {
        trace_id: TRACE.to_vec(),
        span_id: t.to_be_bytes().to_vec(),
        time_unix_nano: t,
        value: Some(pm::exemplar::Value::AsDouble(value)),
        ..Default::default()
    }
}

fn with_exemplars(mut m: pm::Metric, exs: Vec<pm::Exemplar>) -> pm::Metric {
    match m.data.as_mut() {
        Some(Data::Sum(s)) => s.data_points.iter_mut().for_each(|p| p.exemplars = exs.clone()),
        Some(Data::Histogram(h)) => h.data_points.iter_mut().for_each(|p| p.exemplars = exs.clone()),
        Some(Data::ExponentialHistogram(h)) => h.data_points.iter_mut().for_each(|p| p.exemplars = exs.clone()),
        _ => panic!("no exemplars for this type"),
    }
    m
}

// ---- store helpers -------------------------------------------------------------------------

fn store() -> Store {
    Store::new(Duration::from_secs(300), 10_000, &[])
}

fn write_at(s: &Store, metrics: Vec<pm::Metric>, now: Instant) -> Outcome {
    s.write(Translator::default().translate(req(metrics)), now)
}

fn write(s: &Store, metrics: Vec<pm::Metric>) -> Outcome {
    write_at(s, metrics, Instant::now())
}

fn ok(o: Outcome) {
    assert_eq!(o.rejected, 0, "unexpected rejection: {}", o.message);
}

/// `(kind, [(rendered labels, value)])` of a family, if it exists.
fn family(s: &Store, name: &str) -> Option<(MetricKind, Vec<(String, SeriesValue)>)> {
    s.families().into_iter().find_map(|h| {
        let f = h.lock();
        (f.meta.name == name).then(|| {
            let series = f
                .series()
                .iter()
                .map(|s| (String::from_utf8(s.labels().to_vec()).unwrap(), s.value.clone()))
                .collect();
            (f.meta.kind, series)
        })
    })
}

fn value(s: &Store, name: &str, labels: &str) -> SeriesValue {
    let (_, series) = family(s, name).unwrap_or_else(|| panic!("no family {name}"));
    series
        .into_iter()
        .find(|(l, _)| l == labels)
        .unwrap_or_else(|| panic!("no series {name}{{{labels}}}"))
        .1
}

fn number(s: &Store, name: &str, labels: &str) -> f64 {
    match value(s, name, labels) {
        SeriesValue::Number { value, .. } => value,
        v => panic!("{name}{{{labels}}} is {v:?}"),
    }
}

fn number_exemplar(s: &Store, name: &str, labels: &str) -> Option<Exemplar> {
    match value(s, name, labels) {
        SeriesValue::Number { exemplar, .. } => exemplar.as_ref().map(|e| {
            let e: &Exemplar = e;
            *e
        }),
        v => panic!("{name}{{{labels}}} is {v:?}"),
    }
}

fn hist(s: &Store, name: &str, labels: &str) -> Histogram {
    match value(s, name, labels) {
        SeriesValue::Histogram(h) => *h,
        v => panic!("{name}{{{labels}}} is {v:?}"),
    }
}

fn exph(s: &Store, name: &str, labels: &str) -> ExpHistogram {
    match value(s, name, labels) {
        SeriesValue::Exponential(h) => *h,
        v => panic!("{name}{{{labels}}} is {v:?}"),
    }
}

/// Non-zero positive bucket counts by bucket index.
fn positive_buckets(h: &ExpHistogram) -> BTreeMap<i32, u64> {
    let b = &h.positive;
    b.counts
        .iter()
        .enumerate()
        .filter(|(_, c)| **c > 0)
        .map(|(i, c)| (b.offset + i as i32, *c))
        .collect()
}

// ---- temporality ---------------------------------------------------------------------------

#[test]
fn cumulative_counter_replaces() {
    let s = store();
    ok(write(&s, vec![counter("c", false, 5.0, &[("k", "v")])]));
    ok(write(&s, vec![counter("c", false, 3.0, &[("k", "v")])]));
    assert_eq!(
        number(&s, "c", r#"k="v""#),
        3.0,
        "a cumulative report replaces (a reset shows as a drop)"
    );
    assert_eq!(s.series_count(), 1);
}

#[test]
fn delta_counter_accumulates() {
    let s = store();
    ok(write(&s, vec![counter("c", true, 5.0, &[("k", "v")])]));
    ok(write(
        &s,
        vec![
            counter("c", true, 3.0, &[("k", "v")]),
            counter("c", true, 0.5, &[("k", "v")]),
        ],
    ));
    assert_eq!(number(&s, "c", r#"k="v""#), 8.5);
    ok(write(&s, vec![counter("c", true, 1.0, &[("k", "w")])]));
    assert_eq!(number(&s, "c", r#"k="v""#), 8.5, "other series untouched");
    assert_eq!(number(&s, "c", r#"k="w""#), 1.0);
    assert_eq!(s.series_count(), 2);
}

#[test]
fn delta_up_down_sum_accumulates_and_may_go_negative() {
    let s = store();
    ok(write(&s, vec![metric("u", sum(false, true, vec![num(5.0, &[])]))]));
    ok(write(&s, vec![metric("u", sum(false, true, vec![num(-7.0, &[])]))]));
    assert_eq!(number(&s, "u", ""), -2.0);
    assert_eq!(family(&s, "u").unwrap().0, MetricKind::Gauge);
    ok(write(&s, vec![metric("u", sum(false, false, vec![num(10.0, &[])]))]));
    assert_eq!(number(&s, "u", ""), 10.0, "cumulative replaces");
}

#[test]
fn gauge_replaces() {
    let s = store();
    ok(write(&s, vec![gauge("g", 5.0, &[])]));
    ok(write(&s, vec![gauge("g", -1.5, &[])]));
    assert_eq!(number(&s, "g", ""), -1.5);
}

#[test]
fn delta_histogram_accumulates_and_cumulative_replaces() {
    let s = store();
    let b = [1.0, 5.0];
    ok(write(
        &s,
        vec![histogram("h", true, vec![hpoint(&b, &[1, 2, 3], 10.0, &[("r", "/")])])],
    ));
    ok(write(
        &s,
        vec![histogram("h", true, vec![hpoint(&b, &[0, 1, 4], 20.5, &[("r", "/")])])],
    ));
    let h = hist(&s, "h", r#"r="/""#);
    assert_eq!(
        (&h.bounds[..], &h.counts[..], h.count, h.sum),
        (&b[..], &[1, 3, 7][..], 11, 30.5)
    );

    ok(write(
        &s,
        vec![histogram("h", false, vec![hpoint(&b, &[2, 0, 0], 1.0, &[("r", "/")])])],
    ));
    let h = hist(&s, "h", r#"r="/""#);
    assert_eq!((&h.counts[..], h.count, h.sum), (&[2, 0, 0][..], 2, 1.0));
}

#[test]
fn histogram_with_a_new_layout_starts_over() {
    let s = store();
    ok(write(
        &s,
        vec![histogram("h", true, vec![hpoint(&[1.0], &[1, 1], 1.0, &[])])],
    ));
    ok(write(
        &s,
        vec![histogram("h", true, vec![hpoint(&[1.0, 2.0], &[1, 1, 1], 2.0, &[])])],
    ));
    let h = hist(&s, "h", "");
    assert_eq!(
        (&h.bounds[..], &h.counts[..], h.count),
        (&[1.0, 2.0][..], &[1, 1, 1][..], 3)
    );
    assert_eq!(h.exemplars.len(), 3, "one exemplar slot per bucket");
}

#[test]
fn delta_exponential_histogram_merges_exactly() {
    let s = store();
    let a = Exp {
        scale: 1,
        zero: 1,
        offset: 2,
        counts: &[1, 2, 3],
        sum: 10.0,
    };
    ok(write(&s, vec![exponential("e", true, vec![exp_point(&a, &[])])]));
    // Same scale, overlapping and extending range.
    let b = Exp {
        scale: 1,
        zero: 2,
        offset: 3,
        counts: &[1, 0, 0, 5],
        sum: 4.0,
    };
    ok(write(&s, vec![exponential("e", true, vec![exp_point(&b, &[])])]));
    let h = exph(&s, "e", "");
    assert_eq!(h.scale, 1);
    assert_eq!(positive_buckets(&h), BTreeMap::from([(2, 1), (3, 3), (4, 3), (6, 5)]));
    assert_eq!((h.count, h.zero_count, h.sum), (6 + 1 + 6 + 2, 3, 14.0));

    // A coarser delta: everything is brought to scale 0 (index i at scale 1 → i >> 1).
    let c = Exp {
        scale: 0,
        zero: 0,
        offset: 1,
        counts: &[10],
        sum: 1.0,
    };
    ok(write(&s, vec![exponential("e", true, vec![exp_point(&c, &[])])]));
    let h = exph(&s, "e", "");
    assert_eq!(h.scale, 0);
    assert_eq!(positive_buckets(&h), BTreeMap::from([(1, 1 + 3 + 10), (2, 3), (3, 5)]));
    assert_eq!(h.count, 15 + 10);
    let classic = h.classic_buckets();
    assert_eq!(classic.last().map(|b| (b.0, b.1)), Some((f64::INFINITY, 25)));

    // Cumulative replaces, at its own scale.
    let d = Exp {
        scale: 2,
        zero: 0,
        offset: 0,
        counts: &[4],
        sum: 3.0,
    };
    ok(write(&s, vec![exponential("e", false, vec![exp_point(&d, &[])])]));
    let h = exph(&s, "e", "");
    assert_eq!((h.scale, h.count, h.zero_count, h.sum), (2, 4, 0, 3.0));
    assert_eq!(positive_buckets(&h), BTreeMap::from([(0, 4)]));
}

// ---- exemplars -----------------------------------------------------------------------------

#[test]
fn histogram_exemplars_land_in_their_bucket_and_survive_reports_without_any() {
    let s = store();
    let b = [1.0, 5.0, 10.0];
    let m = histogram("h", false, vec![hpoint(&b, &[1, 1, 1, 1], 112.5, &[])]);
    ok(write(
        &s,
        vec![with_exemplars(
            m,
            vec![ex(0.5, 10), ex(5.0, 11), ex(7.0, 12), ex(100.0, 13)],
        )],
    ));
    let h = hist(&s, "h", "");
    let slots: Vec<Option<(f64, u64)>> = h
        .exemplars
        .iter()
        .map(|e| e.map(|e| (e.value, e.time_unix_nano)))
        .collect();
    assert_eq!(
        slots,
        vec![Some((0.5, 10)), Some((5.0, 11)), Some((7.0, 12)), Some((100.0, 13))],
        "value ≤ le"
    );
    assert_eq!(h.exemplars[1].unwrap().trace_id, TRACE);
    assert_eq!(h.exemplars[1].unwrap().span_id, 11u64.to_be_bytes());

    // Later reports without exemplars, cumulative and delta, keep them.
    ok(write(
        &s,
        vec![histogram("h", false, vec![hpoint(&b, &[2, 1, 1, 1], 113.0, &[])])],
    ));
    ok(write(
        &s,
        vec![histogram("h", true, vec![hpoint(&b, &[1, 0, 0, 0], 0.1, &[])])],
    ));
    let h2 = hist(&s, "h", "");
    assert_eq!(h2.exemplars, h.exemplars);
    assert_eq!((&h2.counts[..], h2.count), (&[3, 1, 1, 1][..], 6));
}

#[test]
fn newer_exemplar_replaces_older_and_not_the_reverse() {
    let s = store();
    let c = |v: f64, exs| with_exemplars(counter("c", false, v, &[]), exs);
    ok(write(&s, vec![c(1.0, vec![ex(1.0, 200), ex(2.0, 150)])]));
    assert_eq!(
        number_exemplar(&s, "c", "").map(|e| e.time_unix_nano),
        Some(200),
        "newest of a report"
    );
    ok(write(&s, vec![c(2.0, vec![ex(9.0, 100)])]));
    assert_eq!(
        number_exemplar(&s, "c", "").map(|e| (e.value, e.time_unix_nano)),
        Some((1.0, 200)),
        "older ignored"
    );
    ok(write(&s, vec![counter("c", false, 3.0, &[])]));
    assert_eq!(
        number_exemplar(&s, "c", "").map(|e| e.time_unix_nano),
        Some(200),
        "kept without exemplars"
    );
    ok(write(&s, vec![c(4.0, vec![ex(3.0, 300)])]));
    assert_eq!(
        number_exemplar(&s, "c", "").map(|e| (e.value, e.time_unix_nano)),
        Some((3.0, 300)),
        "newer replaces"
    );
    assert_eq!(number(&s, "c", ""), 4.0);

    // Per histogram bucket likewise; other buckets are untouched.
    let h = |exs| with_exemplars(histogram("h", true, vec![hpoint(&[1.0], &[1, 1], 2.0, &[])]), exs);
    ok(write(&s, vec![h(vec![ex(0.5, 500), ex(2.0, 500)])]));
    ok(write(&s, vec![h(vec![ex(0.7, 400)])]));
    ok(write(&s, vec![h(vec![ex(3.0, 600)])]));
    let got: Vec<Option<(f64, u64)>> = hist(&s, "h", "")
        .exemplars
        .iter()
        .map(|e| e.map(|e| (e.value, e.time_unix_nano)))
        .collect();
    assert_eq!(got, vec![Some((0.5, 500)), Some((3.0, 600))]);
}

#[test]
fn exponential_exemplars_survive_cumulative_reports_without_any() {
    let s = store();
    let a = Exp {
        scale: 0,
        zero: 0,
        offset: 0,
        counts: &[1, 1],
        sum: 4.5,
    };
    let m = with_exemplars(
        exponential("e", false, vec![exp_point(&a, &[])]),
        vec![ex(1.5, 10), ex(3.0, 11)],
    );
    ok(write(&s, vec![m]));
    ok(write(&s, vec![exponential("e", false, vec![exp_point(&a, &[])])]));
    let h = exph(&s, "e", "");
    let by_le: Vec<(f64, Option<f64>)> = h
        .classic_buckets()
        .iter()
        .map(|(le, _, e)| (*le, e.map(|e| e.value)))
        .collect();
    // Buckets: (0, 0] zero, (1, 2], (2, 4], +Inf.
    assert_eq!(
        by_le,
        vec![(0.0, None), (2.0, Some(1.5)), (4.0, Some(3.0)), (f64::INFINITY, None)]
    );
}

// ---- conflicts -----------------------------------------------------------------------------

#[test]
fn type_conflict_is_rejected_and_leaves_the_family_intact() {
    let s = store();
    ok(write(&s, vec![counter("foo", false, 5.0, &[("k", "v")])]));
    let o = write(
        &s,
        vec![
            gauge("foo", 1.0, &[("k", "v")]),
            gauge("foo", 2.0, &[("k", "w")]),
            gauge("bar", 3.0, &[]),
        ],
    );
    assert_eq!((o.accepted, o.rejected), (1, 2), "{}", o.message);
    assert!(
        o.message
            .contains("`foo` is already a counter and cannot also be a gauge"),
        "{}",
        o.message
    );
    let (kind, series) = family(&s, "foo").unwrap();
    assert_eq!(kind, MetricKind::Counter);
    assert_eq!(series.len(), 1);
    assert_eq!(number(&s, "foo", r#"k="v""#), 5.0);
    assert_eq!(number(&s, "bar", ""), 3.0);
    assert_eq!(s.series_count(), 2);

    // In one batch too: the first type wins.
    let s = store();
    let o = write(&s, vec![gauge("x", 1.0, &[]), counter("x", false, 2.0, &[])]);
    assert_eq!((o.accepted, o.rejected), (1, 1), "{}", o.message);
    assert_eq!(family(&s, "x").unwrap().0, MetricKind::Gauge);
    assert_eq!(number(&s, "x", ""), 1.0);
}

#[test]
fn sample_name_collisions_are_rejected() {
    // Counter `foo` exposes `foo_total`; a gauge named `foo_total` would too.
    let s = store();
    ok(write(&s, vec![counter("foo", false, 1.0, &[])]));
    let o = write(&s, vec![gauge("foo_total", 2.0, &[])]);
    assert_eq!((o.accepted, o.rejected), (0, 1));
    assert!(o.message.contains("would expose `foo_total`"), "{}", o.message);
    assert!(family(&s, "foo_total").is_none());

    // And the other way round.
    let s = store();
    ok(write(&s, vec![gauge("foo_total", 2.0, &[])]));
    let o = write(&s, vec![counter("foo", false, 1.0, &[])]);
    assert_eq!((o.accepted, o.rejected), (0, 1), "{}", o.message);
    assert_eq!(number(&s, "foo_total", ""), 2.0);

    // Histogram `h` exposes `h_count`.
    let s = store();
    ok(write(
        &s,
        vec![histogram("h", false, vec![hpoint(&[1.0], &[1, 1], 1.0, &[])])],
    ));
    let o = write(&s, vec![gauge("h_count", 2.0, &[])]);
    assert_eq!(o.rejected, 1, "{}", o.message);

    // Reserved (self-metric) names.
    let s = Store::new(Duration::from_secs(300), 100, &["spindle_active_series"]);
    let o = write(&s, vec![gauge("spindle_active_series", 2.0, &[])]);
    assert_eq!(o.rejected, 1, "{}", o.message);
    assert!(s.families().is_empty());
}

#[test]
fn series_bound_refuses_new_series_only() {
    let s = Store::new(Duration::from_secs(60), 3, &[]);
    let t0 = Instant::now();
    let batch = |v: f64| {
        (0..5)
            .map(|i| gauge("g", v, &[("i", &i.to_string())]))
            .collect::<Vec<_>>()
    };
    let o = write_at(&s, batch(1.0), t0);
    assert_eq!((o.accepted, o.rejected), (3, 2), "{}", o.message);
    assert!(o.message.contains("series limit (3) reached"), "{}", o.message);
    assert_eq!(s.series_count(), 3);

    // Existing series still update; new ones in other families are refused too.
    let o = write_at(&s, [batch(2.0), vec![counter("other", false, 1.0, &[])]].concat(), t0);
    assert_eq!((o.accepted, o.rejected), (3, 3), "{}", o.message);
    assert_eq!(number(&s, "g", r#"i="0""#), 2.0);
    assert_eq!(s.series_count(), 3);

    // Expiry frees room.
    assert_eq!(s.expire(t0 + Duration::from_secs(120)), 3);
    assert_eq!(s.series_count(), 0);
    ok(write_at(
        &s,
        vec![counter("other", false, 1.0, &[])],
        t0 + Duration::from_secs(120),
    ));
    assert_eq!(s.series_count(), 1);
}

// ---- expiry --------------------------------------------------------------------------------

#[test]
fn expiry_removes_stale_series_and_empty_families() {
    let s = Store::new(Duration::from_secs(60), 100, &[]);
    let t0 = Instant::now();
    let at = |secs| t0 + Duration::from_secs(secs);
    ok(write_at(
        &s,
        vec![
            counter("foo", false, 1.0, &[("k", "a")]),
            counter("foo", false, 1.0, &[("k", "b")]),
        ],
        t0,
    ));
    ok(write_at(&s, vec![gauge("keep", 1.0, &[])], t0));
    ok(write_at(
        &s,
        vec![counter("foo", false, 2.0, &[("k", "b")]), gauge("keep", 2.0, &[])],
        at(50),
    ));
    assert_eq!(s.expire(at(60)), 0, "exactly the TTL old is still fresh");
    assert_eq!(s.expire(at(70)), 1, "`a` last written 70s ago");
    assert_eq!(s.series_count(), 2);
    let (_, series) = family(&s, "foo").unwrap();
    assert_eq!(series.iter().map(|(l, _)| l.as_str()).collect::<Vec<_>>(), [r#"k="b""#]);
    // The survivor is still found by its labels (the index was rebuilt): updated, not duplicated.
    ok(write_at(&s, vec![counter("foo", true, 1.0, &[("k", "b")])], at(70)));
    assert_eq!(number(&s, "foo", r#"k="b""#), 3.0);
    assert_eq!(s.series_count(), 2);

    ok(write_at(&s, vec![gauge("keep", 3.0, &[])], at(100)));
    assert_eq!(s.expire(at(131)), 1);
    assert!(family(&s, "foo").is_none(), "empty family removed");
    assert!(family(&s, "keep").is_some());

    // The name (and its sample names) are free for another type now.
    ok(write_at(&s, vec![gauge("foo", 7.0, &[])], at(131)));
    ok(write_at(&s, vec![gauge("foo_total", 8.0, &[])], at(131)));
    assert_eq!(family(&s, "foo").unwrap().0, MetricKind::Gauge);
    assert_eq!(number(&s, "foo", ""), 7.0);
    assert_eq!(number(&s, "foo_total", ""), 8.0);
    assert_eq!(s.series_count(), 3);
}

#[test]
fn families_are_listed_sorted_by_name() {
    let s = store();
    ok(write(
        &s,
        vec![
            gauge("b", 1.0, &[]),
            gauge("a", 1.0, &[]),
            counter("c", false, 1.0, &[]),
        ],
    ));
    let names: Vec<String> = s.families().iter().map(|h| h.lock().meta.name.clone()).collect();
    assert_eq!(names, ["a", "b", "c"]);
}

#[test]
fn label_sets_are_rendered_escaped_in_name_order() {
    let s = store();
    ok(write(&s, vec![gauge("g", 1.0, &[("z", "1"), ("a", "q\"b\\n\nü")])]));
    let (_, series) = family(&s, "g").unwrap();
    assert_eq!(series[0].0, r#"a="q\"b\\n\nü",z="1""#);
}

#[test]
fn concurrent_delta_writers_lose_nothing() {
    let s = std::sync::Arc::new(store());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..500 {
                    let label = (i % 5).to_string();
                    let b = [1.0];
                    ok(write(
                        &s,
                        vec![
                            counter("c", true, 1.0, &[("k", &label)]),
                            histogram("h", true, vec![hpoint(&b, &[1, 1], 2.0, &[("t", &t.to_string())])]),
                        ],
                    ));
                    if i % 50 == 0 {
                        assert_eq!(s.expire(Instant::now()), 0);
                        let _ = s.families().iter().map(|h| h.lock().series().len()).sum::<usize>();
                    }
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let total: f64 = (0..5).map(|k| number(&s, "c", &format!("k=\"{k}\""))).sum();
    assert_eq!(total, 2000.0);
    for t in 0..4 {
        let h = hist(&s, "h", &format!("t=\"{t}\""));
        assert_eq!((&h.counts[..], h.count, h.sum), (&[500, 500][..], 1000, 1000.0));
    }
    assert_eq!(s.series_count(), 9);
}

// ---- model-based property test ---------------------------------------------------------------

const BOUNDS: [f64; 3] = [1.0, 2.0, 5.0];

#[derive(Debug, Clone)]
enum Op {
    Counter {
        series: u8,
        delta: bool,
        v: u32,
    },
    UpDown {
        series: u8,
        delta: bool,
        v: i32,
    },
    Hist {
        series: u8,
        delta: bool,
        counts: [u64; 4],
        sum: u32,
    },
    Exp {
        series: u8,
        delta: bool,
        zero: u64,
        offset: i32,
        counts: Vec<u64>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let series = 0u8..3;
    prop_oneof![
        (series.clone(), any::<bool>(), 0u32..1000).prop_map(|(series, delta, v)| Op::Counter { series, delta, v }),
        (series.clone(), any::<bool>(), -1000i32..1000).prop_map(|(series, delta, v)| Op::UpDown { series, delta, v }),
        (
            series.clone(),
            any::<bool>(),
            proptest::array::uniform4(0u64..50),
            0u32..1000
        )
            .prop_map(|(series, delta, counts, sum)| Op::Hist {
                series,
                delta,
                counts,
                sum
            }),
        (
            series,
            any::<bool>(),
            0u64..5,
            -8i32..8,
            proptest::collection::vec(0u64..20, 0..8)
        )
            .prop_map(|(series, delta, zero, offset, counts)| Op::Exp {
                series,
                delta,
                zero,
                offset,
                counts
            }),
    ]
}

fn series_label(i: u8) -> String {
    format!("s{i}")
}

fn op_metric(op: &Op) -> pm::Metric {
    match op {
        Op::Counter { series, delta, v } => counter("c", *delta, *v as f64, &[("series", &series_label(*series))]),
        Op::UpDown { series, delta, v } => metric(
            "u",
            sum(
                false,
                *delta,
                vec![num(*v as f64, &[("series", &series_label(*series))])],
            ),
        ),
        Op::Hist {
            series,
            delta,
            counts,
            sum,
        } => histogram(
            "h",
            *delta,
            vec![hpoint(
                &BOUNDS,
                counts,
                *sum as f64,
                &[("series", &series_label(*series))],
            )],
        ),
        Op::Exp {
            series,
            delta,
            zero,
            offset,
            counts,
        } => {
            let e = Exp {
                scale: 0,
                zero: *zero,
                offset: *offset,
                counts,
                sum: 1.0,
            };
            exponential("e", *delta, vec![exp_point(&e, &[("series", &series_label(*series))])])
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq)]
struct ModelHist {
    counts: [u64; 4],
    count: u64,
    sum: f64,
}

#[derive(Debug, Default, Clone, PartialEq)]
struct ModelExp {
    buckets: BTreeMap<i32, u64>,
    zero: u64,
    count: u64,
    sum: f64,
}

#[derive(Debug, Default)]
struct Model {
    counters: HashMap<u8, f64>,
    updowns: HashMap<u8, f64>,
    hists: HashMap<u8, ModelHist>,
    exps: HashMap<u8, ModelExp>,
}

fn apply_number(m: &mut HashMap<u8, f64>, series: u8, delta: bool, v: f64) {
    let e = m.entry(series).or_insert(0.0);
    if delta { *e += v } else { *e = v }
}

impl Model {
    fn apply(&mut self, op: &Op) {
        match op {
            Op::Counter { series, delta, v } => apply_number(&mut self.counters, *series, *delta, *v as f64),
            Op::UpDown { series, delta, v } => apply_number(&mut self.updowns, *series, *delta, *v as f64),
            Op::Hist {
                series,
                delta,
                counts,
                sum,
            } => {
                let h = self.hists.entry(*series).or_default();
                if !delta {
                    *h = ModelHist::default();
                }
                for (a, b) in h.counts.iter_mut().zip(counts) {
                    *a += b;
                }
                h.count += counts.iter().sum::<u64>();
                h.sum += *sum as f64;
            }
            Op::Exp {
                series,
                delta,
                zero,
                offset,
                counts,
            } => {
                let h = self.exps.entry(*series).or_default();
                if !delta {
                    *h = ModelExp::default();
                }
                for (i, c) in counts.iter().enumerate() {
                    if *c > 0 {
                        *h.buckets.entry(offset + i as i32).or_default() += c;
                    }
                }
                h.zero += zero;
                h.count += zero + counts.iter().sum::<u64>();
                h.sum += 1.0;
            }
        }
    }
}

#[test]
fn parse_labels_undoes_rendering() {
    let mut out = Vec::new();
    let pairs = [
        ("a", "plain"),
        ("b", "back\\slash \"quoted\"\nnew line"),
        ("c", ""),
        ("d", "ünï=,{}"),
    ];
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b"=\"");
        escape_label_value(v, &mut out);
        out.push(b'"');
    }
    let parsed = parse_labels(&out).unwrap();
    let want: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    assert_eq!(parsed, want);
    assert_eq!(parse_labels(b"").unwrap(), vec![]);
    for bad in [
        &b"a"[..],
        b"a=x",
        b"a=\"x",
        b"a=\"x\",",
        b"a=\"x\"b=\"y\"",
        b"a=\"\\q\"",
    ] {
        assert_eq!(parse_labels(bad), None, "{}", String::from_utf8_lossy(bad));
    }
}

proptest! {
    /// Any label set the store renders parses back to the same pairs.
    #[test]
    fn rendered_labels_parse_back(
        pairs in proptest::collection::btree_map("[a-zA-Z_][a-zA-Z0-9_]{0,8}", "\\PC{0,12}|[\\\\\"\n,=a]{0,6}", 0..6)
    ) {
        let mut out = Vec::new();
        for (i, (k, v)) in pairs.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b"=\"");
            escape_label_value(v, &mut out);
            out.push(b'"');
        }
        let want: Vec<(String, String)> = pairs.into_iter().collect();
        prop_assert_eq!(parse_labels(&out), Some(want));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Random batches of delta and cumulative writes: the store holds exactly what a simple model
    /// of "cumulative replaces, delta adds" holds.
    #[test]
    fn store_matches_a_simple_model(batches in proptest::collection::vec(proptest::collection::vec(op(), 1..6), 1..12)) {
        let s = store();
        let mut model = Model::default();
        for batch in &batches {
            let o = write(&s, batch.iter().map(op_metric).collect());
            prop_assert_eq!(o.rejected, 0, "{}", o.message);
            prop_assert_eq!(o.accepted, batch.len() as u64);
            batch.iter().for_each(|op| model.apply(op));
        }
        let labels = |i: u8| format!("series=\"{}\"", series_label(i));
        for (i, v) in &model.counters {
            prop_assert_eq!(number(&s, "c", &labels(*i)), *v, "counter {}", i);
        }
        for (i, v) in &model.updowns {
            prop_assert_eq!(number(&s, "u", &labels(*i)), *v, "up-down {}", i);
        }
        for (i, m) in &model.hists {
            let h = hist(&s, "h", &labels(*i));
            let got = ModelHist { counts: h.counts[..].try_into().unwrap(), count: h.count, sum: h.sum };
            prop_assert_eq!(&got, m, "histogram {}", i);
        }
        for (i, m) in &model.exps {
            let h = exph(&s, "e", &labels(*i));
            prop_assert_eq!(h.scale, 0, "no downscaling needed for this range");
            let got = ModelExp { buckets: positive_buckets(&h), zero: h.zero_count, count: h.count, sum: h.sum };
            prop_assert_eq!(&got, m, "exponential {}", i);
            prop_assert_eq!(h.classic_buckets().last().map(|b| b.1), Some(m.count));
        }
        let expected_series = model.counters.len() + model.updowns.len() + model.hists.len() + model.exps.len();
        prop_assert_eq!(s.series_count(), expected_series);
    }
}

// ---- start times ---------------------------------------------------------------------------

/// A counter point with a start time.
fn started(name: &str, delta: bool, v: f64, start: u64) -> pm::Metric {
    let mut p = num(v, &[]);
    p.start_time_unix_nano = start;
    metric(name, sum(true, delta, vec![p]))
}

fn start_of(s: &Store, name: &str) -> u64 {
    let fams = s.families();
    let h = fams
        .iter()
        .find(|h| h.lock().meta.name == name)
        .unwrap_or_else(|| panic!("no family {name}"));
    let f = h.lock();
    f.series()[0].start_unix_nano()
}

/// A cumulative series starts when its newest point says (a restarted stream moves it); a series
/// accumulated from deltas starts at its first point's start, or when it was created when that
/// is unknown, and keeps it; unknown stays unknown for cumulative points.
#[test]
fn series_keep_their_start_time() {
    let s = Store::new(Duration::from_secs(60), 100, &[]);
    let t = Translator::default();
    let now = Instant::now();
    let before = unix_nano_now();
    s.write(t.translate(req(vec![started("cum", false, 5.0, 1_000)])), now);
    assert_eq!(start_of(&s, "cum"), 1_000);
    s.write(t.translate(req(vec![started("cum", false, 7.0, 1_000)])), now);
    assert_eq!(start_of(&s, "cum"), 1_000);
    s.write(t.translate(req(vec![started("cum", false, 1.0, 9_000)])), now);
    assert_eq!(start_of(&s, "cum"), 9_000, "the stream restarted");
    s.write(t.translate(req(vec![started("cum", false, 2.0, 0)])), now);
    assert_eq!(start_of(&s, "cum"), 9_000, "an unknown start keeps the known one");

    s.write(t.translate(req(vec![started("unknown", false, 2.0, 0)])), now);
    assert_eq!(start_of(&s, "unknown"), 0);

    s.write(t.translate(req(vec![started("delta", true, 1.0, 2_000)])), now);
    s.write(t.translate(req(vec![started("delta", true, 1.0, 3_000)])), now);
    assert_eq!(start_of(&s, "delta"), 2_000, "the first interval's start");

    s.write(t.translate(req(vec![started("created", true, 1.0, 0)])), now);
    let created = start_of(&s, "created");
    assert!(created >= before && created <= unix_nano_now(), "{created}");
}
