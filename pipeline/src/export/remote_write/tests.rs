//! Tests of the remote-write exporter: conversion of every series kind (compared sample for
//! sample with what `/metrics` shows), exemplars sent once, batching, the queue's drop policy
//! and retry classification.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::{
    self as pm, AggregationTemporality, exponential_histogram_data_point::Buckets, metric::Data,
};
use prost::Message;

use super::convert::{Batcher, Converter, Encoded};
use super::proto::{Label, MetricType, Sample, TimeSeries, WriteRequest};
use super::*;
use crate::export::sender::MemoryQueue;
use crate::model::Format;
use crate::process::translate::Translator;
use crate::testing::{self, kv};

const TS: i64 = 1_700_000_000_123;
const TRACE: [u8; 16] = [0xab; 16];

fn exemplar(span: u8, value: f64, ms: u64) -> pm::Exemplar {
    pm::Exemplar {
        trace_id: TRACE.to_vec(),
        span_id: vec![span; 8],
        time_unix_nano: ms * 1_000_000,
        value: Some(pm::exemplar::Value::AsDouble(value)),
        ..Default::default()
    }
}

fn metric(name: &str, unit: &str, data: Data) -> pm::Metric {
    pm::Metric {
        description: format!("{name} help"),
        ..testing::metric(name, unit, data)
    }
}

/// One metric of every kind, with exemplars on the counter and two histogram buckets, from a
/// resource that also yields `target_info`.
fn every_kind(exemplar_span: u8) -> ExportMetricsServiceRequest {
    let cum = AggregationTemporality::Cumulative as i32;
    let attrs = vec![kv("route", "/a \"quoted\"\\path"), kv("Zone", "eu")];
    let number = |v: f64, exs: Vec<pm::Exemplar>| pm::NumberDataPoint {
        attributes: attrs.clone(),
        value: Some(pm::number_data_point::Value::AsDouble(v)),
        exemplars: exs,
        ..Default::default()
    };
    let metrics = vec![
        metric(
            "reqs",
            "",
            Data::Sum(pm::Sum {
                data_points: vec![number(7.0, vec![exemplar(exemplar_span, 1.0, 1_700_000_000_000)])],
                aggregation_temporality: cum,
                is_monotonic: true,
            }),
        ),
        metric(
            "depth",
            "",
            Data::Gauge(pm::Gauge {
                data_points: vec![number(-2.5, vec![])],
            }),
        ),
        metric(
            "latency",
            "s",
            Data::Histogram(pm::Histogram {
                data_points: vec![pm::HistogramDataPoint {
                    attributes: attrs.clone(),
                    count: 6,
                    sum: Some(3.25),
                    bucket_counts: vec![1, 2, 3],
                    explicit_bounds: vec![0.5, 1.0],
                    exemplars: vec![
                        exemplar(exemplar_span, 0.25, 1_700_000_000_001),
                        exemplar(exemplar_span.wrapping_add(1), 2.0, 1_700_000_000_002),
                    ],
                    ..Default::default()
                }],
                aggregation_temporality: cum,
            }),
        ),
        metric(
            "size",
            "By",
            Data::ExponentialHistogram(pm::ExponentialHistogram {
                data_points: vec![pm::ExponentialHistogramDataPoint {
                    attributes: attrs.clone(),
                    count: 4,
                    sum: Some(10.0),
                    scale: 0,
                    zero_count: 1,
                    positive: Some(Buckets {
                        offset: 0,
                        bucket_counts: vec![1, 2],
                    }),
                    ..Default::default()
                }],
                aggregation_temporality: cum,
            }),
        ),
        metric(
            "rpc",
            "s",
            Data::Summary(pm::Summary {
                data_points: vec![pm::SummaryDataPoint {
                    attributes: attrs.clone(),
                    count: 3,
                    sum: 1.5,
                    quantile_values: vec![
                        pm::summary_data_point::ValueAtQuantile {
                            quantile: 0.5,
                            value: 0.4,
                        },
                        pm::summary_data_point::ValueAtQuantile {
                            quantile: 0.99,
                            value: 0.9,
                        },
                    ],
                    ..Default::default()
                }],
            }),
        ),
    ];
    testing::metrics_request(
        vec![kv("service.name", "svc"), kv("deployment.environment", "test")],
        metrics,
    )
}

fn store_with(req: ExportMetricsServiceRequest) -> Store {
    let store = Store::new(Duration::from_secs(300), 1000, &[]);
    let out = store.write(Translator::new(Vec::new()).translate(req), Instant::now());
    assert_eq!(out.rejected, 0, "{}", out.message);
    store
}

fn decode(e: &Encoded) -> WriteRequest {
    let raw = snap::raw::Decoder::new()
        .decompress_vec(&e.body)
        .expect("snappy block format");
    WriteRequest::decode(raw.as_slice()).expect("a WriteRequest")
}

fn all_series(reqs: &[Encoded]) -> Vec<TimeSeries> {
    reqs.iter().flat_map(|r| decode(r).timeseries).collect()
}

/// A sample as a comparable key: sorted labels (`__name__` included), value, exemplar.
type Key = (Vec<(String, String)>, String, Option<(String, String, String, i64)>);

fn series_key(ts: &TimeSeries) -> Key {
    assert_eq!(ts.samples.len(), 1);
    assert_eq!(ts.samples[0].timestamp, TS);
    let labels: Vec<(String, String)> = ts.labels.iter().map(|l| (l.name.clone(), l.value.clone())).collect();
    let mut sorted = labels.clone();
    sorted.sort();
    assert_eq!(labels, sorted, "labels are sorted by name");
    let ex = ts.exemplars.first().map(|e| {
        let l: BTreeMap<_, _> = e.labels.iter().map(|l| (l.name.as_str(), l.value.as_str())).collect();
        (
            l["trace_id"].to_string(),
            l["span_id"].to_string(),
            format_value(e.value),
            e.timestamp,
        )
    });
    (labels, format_value(ts.samples[0].value), ex)
}

fn format_value(v: f64) -> String {
    let mut out = Vec::new();
    crate::expose::write_f64(&mut out, v);
    String::from_utf8(out).unwrap()
}

/// The OpenMetrics exposition of `store` (its own families only) as keys.
fn scraped(store: &Store) -> Vec<Key> {
    let mut out = Vec::new();
    crate::expose::render(
        store,
        &crate::telemetry::Telemetry::default(),
        Format::OpenMetrics,
        &mut out,
    );
    let text = String::from_utf8(out).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("spindle_"))
        .map(|line| {
            let (sample, exemplar) = match line.split_once(" # ") {
                Some((s, e)) => (s, Some(e)),
                None => (line, None),
            };
            let (series, value) = sample.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, l.strip_suffix('}').unwrap()),
                None => (series, ""),
            };
            let mut labels = crate::store::parse_labels(labels.as_bytes()).unwrap();
            labels.push(("__name__".into(), name.into()));
            labels.sort();
            let ex = exemplar.map(|e| {
                let (l, rest) = e.strip_prefix('{').unwrap().split_once("} ").unwrap();
                let l: BTreeMap<_, _> = crate::store::parse_labels(l.as_bytes()).unwrap().into_iter().collect();
                let (v, ts) = rest.split_once(' ').unwrap();
                let ms = (ts.parse::<f64>().unwrap() * 1000.0).round() as i64;
                (l["trace_id"].clone(), l["span_id"].clone(), v.to_string(), ms)
            });
            (labels, format_value(value.parse().unwrap()), ex)
        })
        .collect()
}

#[test]
fn every_kind_converts_to_the_samples_and_exemplars_a_scrape_shows() {
    let store = store_with(every_kind(1));
    let reqs = Converter::default().snapshot(&store, TS, 2000);
    assert_eq!(reqs.len(), 1);
    let got: Vec<Key> = all_series(&reqs).iter().map(series_key).collect();
    let mut want = scraped(&store);
    let mut sorted_got = got.clone();
    sorted_got.sort();
    want.sort();
    assert_eq!(sorted_got, want);

    // Spot checks of the names and labels, independent of the exposition code.
    let find = |name: &str, extra: Option<(&str, &str)>| {
        got.iter()
            .find(|(l, _, _)| {
                l.iter().any(|(k, v)| k == "__name__" && v == name)
                    && extra.is_none_or(|(ek, ev)| l.iter().any(|(k, v)| k == ek && v == ev))
            })
            .unwrap_or_else(|| panic!("{name} {extra:?} missing: {got:#?}"))
            .clone()
    };
    let (labels, value, ex) = find("reqs_total", None);
    assert_eq!(value, "7.0");
    assert!(
        labels.contains(&("route".into(), "/a \"quoted\"\\path".into())),
        "{labels:?}"
    );
    assert!(labels.contains(&("Zone".into(), "eu".into())), "{labels:?}");
    assert_eq!(
        ex,
        Some(("ab".repeat(16), "01".repeat(8), "1.0".into(), 1_700_000_000_000))
    );
    assert_eq!(find("depth", None).1, "-2.5");
    for (le, count, span) in [("0.5", "1", Some("01")), ("1.0", "3", None), ("+Inf", "6", Some("02"))] {
        let (_, v, ex) = find("latency_seconds_bucket", Some(("le", le)));
        assert_eq!(v, format!("{count}.0"), "le={le}");
        assert_eq!(ex.map(|e| e.1), span.map(|s| s.repeat(8)), "exemplar of le={le}");
    }
    assert_eq!(find("latency_seconds_count", None).1, "6.0");
    assert_eq!(find("latency_seconds_sum", None).1, "3.25");
    assert_eq!(find("size_bytes_bucket", Some(("le", "+Inf"))).1, "4.0");
    assert_eq!(find("rpc_seconds", Some(("quantile", "0.99"))).1, "0.9");
    assert_eq!(find("rpc_seconds_count", None).1, "3.0");
    let (info, value, _) = find("target_info", None);
    assert_eq!(value, "1.0");
    assert!(
        info.contains(&("deployment_environment".into(), "test".into())),
        "{info:?}"
    );

    // Metadata travels with the families.
    let meta = decode(&reqs[0]).metadata;
    let kinds: BTreeMap<_, _> = meta.iter().map(|m| (m.metric_family_name.as_str(), m.r#type)).collect();
    assert_eq!(kinds["reqs"], MetricType::Counter as i32);
    assert_eq!(kinds["depth"], MetricType::Gauge as i32);
    assert_eq!(kinds["latency_seconds"], MetricType::Histogram as i32);
    assert_eq!(kinds["rpc_seconds"], MetricType::Summary as i32);
    assert_eq!(kinds["target"], MetricType::Info as i32);
    let latency = meta.iter().find(|m| m.metric_family_name == "latency_seconds").unwrap();
    assert_eq!(
        (latency.unit.as_str(), latency.help.as_str()),
        ("seconds", "latency help")
    );
}

#[test]
fn each_exemplar_is_sent_once() {
    let store = store_with(every_kind(1));
    let mut conv = Converter::default();
    let count = |reqs: &[Encoded]| all_series(reqs).iter().map(|t| t.exemplars.len()).sum::<usize>();
    let first = conv.snapshot(&store, TS, 2000);
    assert_eq!(count(&first), 3, "counter + two buckets");
    assert_eq!(first[0].exemplars, 3);
    let again = conv.snapshot(&store, TS, 2000);
    assert_eq!(count(&again), 0, "unchanged exemplars are not resent");
    assert_eq!(all_series(&again).len(), all_series(&first).len(), "samples are");
    // New exemplars (other span ids) replace the stored ones and go out once.
    store.write(Translator::new(Vec::new()).translate(every_kind(5)), Instant::now());
    assert_eq!(count(&conv.snapshot(&store, TS, 2000)), 3);
    assert_eq!(count(&conv.snapshot(&store, TS, 2000)), 0);
}

fn ts(n_exemplars: usize) -> TimeSeries {
    TimeSeries {
        labels: vec![Label {
            name: "__name__".into(),
            value: "x".into(),
        }],
        samples: vec![Sample {
            value: 1.0,
            timestamp: TS,
        }],
        exemplars: (0..n_exemplars)
            .map(|_| super::proto::Exemplar {
                labels: vec![],
                value: 1.0,
                timestamp: TS,
            })
            .collect(),
        histograms: Vec::new(),
    }
}

fn meta(name: &str) -> super::proto::MetricMetadata {
    super::proto::MetricMetadata {
        r#type: MetricType::Gauge as i32,
        metric_family_name: name.into(),
        ..Default::default()
    }
}

#[test]
fn batches_hold_at_most_max_samples_counting_exemplars() {
    let mut b = Batcher::new(3);
    b.begin_family(meta("a"));
    for _ in 0..4 {
        b.push(ts(0));
    }
    b.begin_family(meta("b"));
    b.push(ts(1));
    b.push(ts(0));
    let reqs = b.finish();
    let shape: Vec<(u64, u64, usize)> = reqs
        .iter()
        .map(|r| (r.samples, r.exemplars, decode(r).timeseries.len()))
        .collect();
    assert_eq!(shape, vec![(3, 0, 3), (2, 1, 2), (1, 0, 1)]);
    let metas: Vec<Vec<String>> = reqs
        .iter()
        .map(|r| decode(r).metadata.into_iter().map(|m| m.metric_family_name).collect())
        .collect();
    assert_eq!(
        metas,
        vec![vec!["a"], vec!["a", "b"], vec!["b"]],
        "each request names its families"
    );

    // 2000 samples per request, as configured by default.
    let mut b = Batcher::new(2000);
    b.begin_family(meta("c"));
    for _ in 0..4500 {
        b.push(ts(0));
    }
    let sizes: Vec<u64> = b.finish().iter().map(|r| r.samples).collect();
    assert_eq!(sizes, vec![2000, 2000, 500]);
    assert!(Batcher::new(5).finish().is_empty(), "nothing to send, no request");
}

#[test]
fn a_large_store_is_split_into_requests() {
    let points = (0..250)
        .map(|i| testing::point(i as f64, vec![kv("i", i.to_string())]))
        .collect();
    let req = testing::metrics_request_in(None, None, vec![metric("n", "", testing::sum(false, false, points))]);
    let store = store_with(req);
    let reqs = Converter::default().snapshot(&store, TS, 100);
    assert_eq!(reqs.iter().map(|r| r.samples).collect::<Vec<_>>(), vec![100, 100, 50]);
    assert_eq!(all_series(&reqs).len(), 250);
}

fn encoded(bytes: usize, samples: u64) -> Encoded {
    Encoded {
        body: bytes::Bytes::from(vec![0u8; bytes]),
        samples,
        exemplars: 0,
    }
}

#[test]
fn a_full_queue_drops_the_oldest_snapshot_and_counts_it() {
    let q = MemoryQueue::<Sidecar>::new(100);
    assert_eq!(push_snapshot(&q, 1, vec![encoded(30, 3), encoded(30, 3)]), 0);
    assert_eq!(q.bytes(), 60);
    // Snapshot 2 does not fit beside 1: all of 1 goes, none of 2.
    assert_eq!(push_snapshot(&q, 2, vec![encoded(40, 4), encoded(40, 4)]), 6);
    assert_eq!(q.bytes(), 80);
    // A snapshot larger than the queue keeps its first requests.
    assert_eq!(push_snapshot(&q, 3, vec![encoded(60, 6), encoded(60, 6)]), 8 + 6);
    assert_eq!(q.bytes(), 60);
    let b = q.pop(1).unwrap();
    assert_eq!(b.items(), 6);
    assert!(q.pop(1).is_none());
    q.ack(b.ticket);
    assert_eq!(q.bytes(), 0);
    push_snapshot(&q, 4, vec![encoded(10, 1), encoded(10, 2)]);
    assert_eq!(q.close(), 3);
    assert_eq!(q.bytes(), 0);
}

#[test]
fn the_request_in_flight_is_never_dropped_to_make_room() {
    let q = MemoryQueue::<Sidecar>::new(100);
    push_snapshot(&q, 1, vec![encoded(60, 6)]);
    let in_flight = q.pop(1).unwrap();
    assert_eq!(push_snapshot(&q, 2, vec![encoded(60, 5)]), 5, "no room beside it");
    q.ack(in_flight.ticket);
    assert_eq!(push_snapshot(&q, 3, vec![encoded(60, 4)]), 0);
}

#[test]
fn statuses_are_classified_as_remote_write_says() {
    use crate::export::sender::AttemptError;
    use crate::export::sender::client::{Sent, classify_http};
    let c = |s: u16| classify_http(s, Some(Duration::from_secs(2)), b"", &ANSWERS);
    assert_eq!(c(200), Ok(Sent { rejected: 0 }));
    assert_eq!(c(204), Ok(Sent { rejected: 0 }));
    for s in [429, 500, 502, 503, 504] {
        assert!(
            matches!(c(s), Err(AttemptError::Retryable { after: Some(a), .. }) if a == Duration::from_secs(2)),
            "{s}"
        );
    }
    for s in [400, 401, 403, 404, 409, 413, 415] {
        assert!(matches!(c(s), Err(AttemptError::Permanent(_))), "{s}");
    }
}

#[test]
fn floats_in_labels_are_written_like_the_exposition() {
    for v in [
        0.005,
        1.0,
        10.0,
        1e-5,
        2.5e20,
        -3.0,
        f64::INFINITY,
        f64::NEG_INFINITY,
        123456789.0,
    ] {
        assert_eq!(convert::format_float(v), format_value(v), "{v}");
    }
}

/// Span metrics with `histogram: both`: remote write sends the configured classic series
/// (`_bucket` at the configured bounds, `_count`, `_sum`) whatever `send_native_histograms` says,
/// and with it the native histogram of the same spans beside them — as Prometheus forwards what it
/// scraped with `scrape_classic_histograms` — but no classic series derived from its exponential
/// buckets.
#[test]
fn span_metrics_both_send_their_classic_series_and_the_native_histogram_when_asked() {
    use crate::process::span_metrics::{DURATION, HistogramKind, SpanMetrics, SpanMetricsConfig};
    let sm = SpanMetrics::new(SpanMetricsConfig {
        buckets: vec![0.01, 0.1, 1.0],
        histogram: HistogramKind::Both,
        ..SpanMetricsConfig::default()
    });
    let spans = [3u64, 40, 700]
        .iter()
        .enumerate()
        .map(|(i, ms)| opentelemetry_proto::tonic::trace::v1::Span {
            end_time_unix_nano: 1_000_000_000 + ms * 1_000_000,
            ..testing::span("GET /a", i as u8 + 1, Vec::new())
        })
        .collect();
    let out = sm.process(&testing::traces_request(vec![kv("service.name", "checkout")], spans));
    let store = Store::new(Duration::from_secs(300), 1000, &[]);
    store.write(out.counts, Instant::now());
    store.write(out.exemplars, Instant::now());
    let label = |ts: &TimeSeries, name: &str| {
        ts.labels
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.value.clone())
            .unwrap_or_default()
    };
    for native in [false, true] {
        let series = all_series(&Converter::new(native).snapshot(&store, TS, 10_000));
        let of = |suffix: &str| -> Vec<&TimeSeries> {
            let name = format!("{DURATION}{suffix}");
            series
                .iter()
                .filter(|t| label(t, "__name__") == name && (!t.samples.is_empty() || !t.histograms.is_empty()))
                .collect()
        };
        let buckets: Vec<(String, f64)> = of("_bucket")
            .iter()
            .map(|t| (label(t, "le"), t.samples[0].value))
            .collect();
        let want: Vec<(String, f64)> = [("0.01", 1.0), ("0.1", 2.0), ("1.0", 3.0), ("+Inf", 3.0)]
            .iter()
            .map(|(le, c)| (le.to_string(), *c))
            .collect();
        assert_eq!(buckets, want, "native={native}: the configured buckets");
        let with_exemplar: Vec<String> = of("_bucket")
            .iter()
            .filter(|t| t.exemplars.len() == 1)
            .map(|t| label(t, "le"))
            .collect();
        assert_eq!(
            with_exemplar,
            ["0.01", "0.1", "1.0"],
            "an exemplar in each bucket a span fell into"
        );
        assert_eq!(of("_count").len(), 1);
        let hists: Vec<_> = of("").iter().flat_map(|t| t.histograms.clone()).collect();
        if native {
            assert_eq!(hists.len(), 1, "the native histogram beside the classic series");
            assert_eq!(hists[0].count_int, 3);
            assert!((hists[0].sum - 0.743).abs() < 1e-9, "{}", hists[0].sum);
            assert!(!hists[0].positive_spans.is_empty());
        } else {
            assert!(hists.is_empty(), "no native histogram unless asked");
        }
    }
}
