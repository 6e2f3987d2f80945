use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::{Span as OtlpSpan, Status, span::SpanKind};

use super::*;
use crate::config::{Dimension, SpanKindName};
use crate::model::batch::Point;
use crate::testing::{self, kv, traces_request};

fn span(name: &str, kind: SpanKind, millis: u64, id: u8, attrs: Vec<KeyValue>) -> OtlpSpan {
    OtlpSpan {
        kind: kind as i32,
        end_time_unix_nano: 1_000_000_000 + millis * 1_000_000,
        ..testing::span(name, id, attrs)
    }
}

fn labels(s: &Samples, p: &Point) -> Vec<(String, String)> {
    s.point_labels(p)
        .iter()
        .map(|l| (s.str(l.name).to_string(), s.str(l.value).to_string()))
        .collect()
}

fn points_of<'a>(s: &'a Samples, family: &str) -> Vec<&'a Point> {
    s.points
        .iter()
        .filter(|p| s.families[p.family as usize].name == family)
        .collect()
}

#[test]
fn adjusted_count_follows_the_probability_sampling_spec() {
    assert_eq!(adjusted_count(""), 1.0);
    assert_eq!(adjusted_count("ot=th:0"), 1.0);
    assert_eq!(adjusted_count("ot=th:8"), 2.0);
    assert_eq!(adjusted_count("ot=th:c"), 4.0);
    assert_eq!(adjusted_count("ot=th:ff"), 256.0);
    // 10% sampling: T = 0.9 * 2^56, written with 13 hex digits.
    assert!((adjusted_count("ot=th:e666666666666") - 10.0).abs() < 1e-6);
    // 1/3 sampling, the spec's rounded threshold.
    assert!((adjusted_count("ot=th:aaab") - 3.0).abs() < 1e-3);
    // Other members and sub-keys are ignored.
    assert_eq!(adjusted_count("vendor=x,ot=rv:abcdef12345678;th:c"), 4.0);
    // Malformed thresholds count 1.
    for bad in ["ot=th:", "ot=th:xyz", "ot=th:123456789abcdef", "ot=th:8;", "th:8"] {
        let want = if bad == "ot=th:8;" { 2.0 } else { 1.0 };
        assert_eq!(adjusted_count(bad), want, "{bad}");
    }
}

#[test]
fn spans_become_calls_and_duration_histograms_aggregated_per_label_set() {
    let sm = SpanMetrics::new(SpanMetricsConfig {
        buckets: vec![0.01, 0.1, 1.0],
        ..Default::default()
    });
    let req = traces_request(
        vec![kv("service.name", "checkout")],
        vec![
            span("GET /a", SpanKind::Server, 5, 1, vec![]),
            span("GET /a", SpanKind::Server, 50, 2, vec![]),
            span("GET /a", SpanKind::Client, 2000, 3, vec![]),
        ],
    );
    let out = sm.process(&req);
    assert_eq!(out.spans, 3);
    let calls = points_of(&out.counts, CALLS);
    assert_eq!(calls.len(), 2, "server and client are separate series");
    let server = calls
        .iter()
        .find(|p| labels(&out.counts, p).contains(&("span_kind".into(), "SPAN_KIND_SERVER".into())));
    let server = server.expect("server series");
    assert_eq!(
        labels(&out.counts, server),
        vec![
            ("service_name".to_string(), "checkout".to_string()),
            ("span_kind".to_string(), "SPAN_KIND_SERVER".to_string()),
            ("span_name".to_string(), "GET /a".to_string()),
            ("status_code".to_string(), "STATUS_CODE_UNSET".to_string()),
        ]
    );
    assert_eq!(server.value, PointValue::Number(2.0));
    assert_eq!(server.temporality, Temporality::Delta);
    let hists = points_of(&out.counts, DURATION);
    let h = hists
        .iter()
        .find(|p| labels(&out.counts, p) == labels(&out.counts, server))
        .unwrap();
    let PointValue::Histogram { count, sum, counts, .. } = h.value else {
        panic!("not a histogram")
    };
    assert_eq!(count, 2);
    assert!((sum - 0.055).abs() < 1e-9);
    assert_eq!(&out.counts.counts[counts.range()], &[1, 1, 0, 0]);
    // Counts carry no exemplars: those wait for the spans to be forwarded.
    assert!(out.counts.exemplars.is_empty());
}

#[test]
fn exemplar_batch_is_zero_valued_and_names_the_newest_span_per_series_and_bucket() {
    let sm = SpanMetrics::new(SpanMetricsConfig {
        buckets: vec![0.01, 0.1],
        ..Default::default()
    });
    let mut late = span("op", SpanKind::Internal, 5, 9, vec![]);
    late.end_time_unix_nano += 1_000_000_000;
    let req = traces_request(
        vec![kv("service.name", "svc")],
        vec![
            span("op", SpanKind::Internal, 5, 1, vec![]),
            late,
            span("op", SpanKind::Internal, 500, 2, vec![]),
        ],
    );
    let out = sm.process(&req);
    let ex = &out.exemplars;
    let calls = points_of(ex, CALLS);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].value, PointValue::Number(0.0));
    let e = &ex.exemplars[calls[0].exemplars.range()];
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].trace_id, [9; 16], "the span that ended last");
    let h = points_of(ex, DURATION)[0];
    let PointValue::Histogram { count, counts, .. } = h.value else {
        panic!()
    };
    assert_eq!(count, 0);
    assert!(ex.counts[counts.range()].iter().all(|c| *c == 0));
    let mut ids: Vec<u8> = ex.exemplars[h.exemplars.range()]
        .iter()
        .map(|e| e.trace_id[0])
        .collect();
    ids.sort_unstable();
    // Span 9 ends a second later, so it lasts 1.005 s and lands in +Inf beside span 2 (0.5 s), and
    // is newer; span 1 alone is in the first bucket.
    assert_eq!(ids, vec![1, 9], "the newest span of each bucket");
}

#[test]
fn series_labels_are_sorted_and_names_that_collide_after_sanitizing_are_joined() {
    // `http.route` and `http_route` are one label name; `a.b` sorts before every fixed label.
    let dim = |name: &str| Dimension {
        name: name.into(),
        default: None,
    };
    let sm = SpanMetrics::new(SpanMetricsConfig {
        dimensions: vec![dim("http.route"), dim("a.b"), dim("http_route")],
        ..Default::default()
    });
    let req = traces_request(
        vec![kv("service.name", "svc")],
        vec![span(
            "a",
            SpanKind::Server,
            1,
            1,
            vec![kv("http.route", "/u"), kv("http_route", "/v"), kv("a.b", "x")],
        )],
    );
    let out = sm.process(&req);
    for family in [CALLS, DURATION] {
        let got = labels(&out.counts, points_of(&out.counts, family)[0]);
        let names: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "a_b",
                "http_route",
                "service_name",
                "span_kind",
                "span_name",
                "status_code"
            ],
            "{family}"
        );
        assert_eq!(got[1].1, "/u;/v", "joined in the order of the dimensions");
    }
}

#[test]
fn dimensions_come_from_span_then_resource_then_default() {
    let sm = SpanMetrics::new(SpanMetricsConfig {
        dimensions: vec![
            Dimension {
                name: "http.route".into(),
                default: None,
            },
            Dimension {
                name: "deployment.environment".into(),
                default: Some("none".into()),
            },
            Dimension {
                name: "tenant".into(),
                default: Some("shared".into()),
            },
        ],
        ..Default::default()
    });
    let req = traces_request(
        vec![kv("service.name", "svc"), kv("deployment.environment", "prod")],
        vec![
            span("a", SpanKind::Server, 1, 1, vec![kv("http.route", "/u/{id}")]),
            span("b", SpanKind::Server, 1, 2, vec![]),
        ],
    );
    let out = sm.process(&req);
    let calls = points_of(&out.counts, CALLS);
    let a = labels(&out.counts, calls[0]);
    assert!(a.contains(&("http_route".into(), "/u/{id}".into())), "{a:?}");
    assert!(a.contains(&("deployment_environment".into(), "prod".into())), "{a:?}");
    assert!(a.contains(&("tenant".into(), "shared".into())), "{a:?}");
    let b = labels(&out.counts, calls[1]);
    assert!(
        !b.iter().any(|(k, _)| k == "http_route"),
        "no default: label left out: {b:?}"
    );
}

#[test]
fn span_kind_filter_status_and_adjusted_count_weighting() {
    let sm = SpanMetrics::new(SpanMetricsConfig {
        span_kinds: vec![SpanKindName::Server],
        ..Default::default()
    });
    let mut sampled = span("a", SpanKind::Server, 1, 1, vec![]);
    sampled.trace_state = "ot=th:c".into();
    sampled.status = Some(Status {
        code: 2,
        ..Default::default()
    });
    let req = traces_request(
        vec![kv("service.name", "svc")],
        vec![sampled, span("b", SpanKind::Client, 1, 2, vec![])],
    );
    let out = sm.process(&req);
    assert_eq!(out.spans, 1, "client span filtered out");
    let calls = points_of(&out.counts, CALLS);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].value, PointValue::Number(4.0), "25% sampling counts 4");
    assert!(labels(&out.counts, calls[0]).contains(&("status_code".into(), "STATUS_CODE_ERROR".into())));
    let h = points_of(&out.counts, DURATION)[0];
    let PointValue::Histogram { count, .. } = h.value else {
        panic!()
    };
    assert_eq!(count, 4);
}

#[test]
fn missing_service_name_is_unknown_service() {
    let sm = SpanMetrics::new(SpanMetricsConfig::default());
    let out = sm.process(&traces_request(vec![], vec![span("a", SpanKind::Server, 1, 1, vec![])]));
    let calls = points_of(&out.counts, CALLS);
    assert!(labels(&out.counts, calls[0]).contains(&("service_name".into(), "unknown_service".into())));
}

#[test]
fn extreme_sampling_weights_saturate_instead_of_overflowing() {
    let sm = SpanMetrics::new(SpanMetricsConfig::default());
    let spans: Vec<OtlpSpan> = (0..600u32)
        .map(|i| {
            // Two durations, so two buckets saturate and their total must too.
            let mut s = span(
                "a",
                SpanKind::Server,
                if i % 2 == 0 { 1 } else { 3000 },
                (i % 250) as u8 + 1,
                vec![],
            );
            s.trace_state = "ot=th:ffffffffffffff".into(); // adjusted count 2^56
            s
        })
        .collect();
    let out = sm.process(&traces_request(vec![kv("service.name", "svc")], spans));
    let h = points_of(&out.counts, DURATION)[0];
    let PointValue::Histogram { count, counts, .. } = h.value else {
        panic!()
    };
    assert_eq!(
        out.counts.counts[counts.range()]
            .iter()
            .filter(|c| **c == u64::MAX)
            .count(),
        2
    );
    assert_eq!(count, u64::MAX);
}

// ---- limits (receivers.otlp.limits) --------------------------------------------------------

use std::time::{Duration, Instant};

use crate::config::LimitsConfig;
use crate::process::translate::TRUNCATION_MARKER;
use crate::telemetry::Telemetry;

/// A 7 MiB span name becomes a truncated label: the rendered scrape stays small (the old code
/// rendered the whole name on 19 lines: 140 MB).
#[test]
fn a_huge_span_name_keeps_the_scrape_small() {
    let name = "n".repeat(7 << 20);
    let tel = Arc::new(Telemetry::default());
    let sm = SpanMetrics::new(SpanMetricsConfig::default()).with_stats(tel.limited.clone());
    let out = sm.process(&traces_request(
        vec![kv("service.name", "svc")],
        vec![span(&name, SpanKind::Server, 5, 1, vec![])],
    ));
    let calls = points_of(&out.counts, CALLS);
    let got = labels(&out.counts, calls[0]);
    let (_, v) = got.iter().find(|(k, _)| k == "span_name").unwrap();
    assert!(v.len() <= 4096 && v.ends_with(TRUNCATION_MARKER), "{} bytes", v.len());
    assert_eq!(out.limited.get(LimitReason::LabelValueTruncated), 1);
    assert_eq!(
        tel.limited
            .limited_items(Signal::Traces, LimitReason::LabelValueTruncated),
        1
    );
    let store = crate::store::Store::new(Duration::from_secs(60), 1000, &[]);
    store.write(out.counts, Instant::now());
    store.write(out.exemplars, Instant::now());
    let mut scrape = Vec::new();
    crate::expose::render(
        &store,
        &Telemetry::default(),
        crate::model::Format::OpenMetrics,
        &mut scrape,
    );
    // The name is on 19 lines (calls, 17 buckets, sum, count), each now at most ~4 KiB.
    let text = String::from_utf8(scrape).unwrap();
    assert!(text.lines().all(|l| l.len() < 5 << 10), "a line longer than 5 KiB");
    assert!(text.len() < 128 << 10, "scrape of one span is {} bytes", text.len());
}

/// Spans whose long names share the kept prefix count in one series; totals are kept.
#[test]
fn truncated_names_merge_and_keep_totals() {
    let limits = LimitsConfig {
        max_label_value_length: 16,
        ..Default::default()
    };
    let sm = SpanMetrics::new(SpanMetricsConfig::default()).with_limits(limits);
    let spans = (0..5)
        .map(|i| {
            span(
                &format!("a-very-long-span-name-{i}"),
                SpanKind::Server,
                5,
                i + 1,
                vec![],
            )
        })
        .collect();
    let out = sm.process(&traces_request(vec![kv("service.name", "svc")], spans));
    let calls = points_of(&out.counts, CALLS);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].value, PointValue::Number(5.0));
    assert_eq!(out.limited.get(LimitReason::LabelValueTruncated), 5);
}

#[test]
fn dimension_and_service_values_are_truncated() {
    let long = "v".repeat(10_000);
    let sm = SpanMetrics::new(SpanMetricsConfig {
        dimensions: vec![Dimension {
            name: "http.route".into(),
            default: None,
        }],
        ..Default::default()
    });
    let out = sm.process(&traces_request(
        vec![kv("service.name", &long)],
        vec![span("GET", SpanKind::Server, 5, 1, vec![kv("http.route", &long)])],
    ));
    for (k, v) in labels(&out.counts, points_of(&out.counts, CALLS)[0]) {
        assert!(v.len() <= 4096, "{k}: {} bytes", v.len());
    }
    assert_eq!(out.limited.get(LimitReason::LabelValueTruncated), 2);
}

#[test]
fn spans_with_too_many_attributes_are_rejected_before_counting() {
    let tel = Arc::new(Telemetry::default());
    let sm = SpanMetrics::new(SpanMetricsConfig::default()).with_stats(tel.limited.clone());
    let many: Vec<KeyValue> = (0..1025).map(|i| kv(&format!("k{i}"), "v")).collect();
    let mut req = traces_request(
        vec![kv("service.name", "svc")],
        vec![
            span("big", SpanKind::Server, 5, 1, many),
            span("ok", SpanKind::Server, 5, 2, vec![kv("a", "b")]),
        ],
    );
    let mut outcome = Outcome::default();
    assert_eq!(sm.limit_spans(&mut req, &mut outcome), 1);
    assert_eq!(outcome.rejected, 1);
    assert!(
        outcome.message.contains("1025 attributes") && outcome.message.contains("max_attributes_per_span (1024)"),
        "{}",
        outcome.message
    );
    assert_eq!(
        tel.limited
            .limited_items(Signal::Traces, LimitReason::TooManyAttributes),
        1
    );
    let spans = &req.resource_spans[0].scope_spans[0].spans;
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].name, "ok");
    let out = sm.process(&req);
    assert_eq!(out.spans, 1, "the rejected span is not counted");
}

/// `histogram: native`: the duration is an exponential histogram whose count and sum are the
/// spans', each span in the bucket of its duration, within `native_max_buckets` (downscaled from
/// `native_max_scale` as needed); after the spans are forwarded its exemplars are in the store,
/// and the protobuf exposition serves it as a native histogram with them.
#[test]
fn native_duration_histograms_hold_every_span_within_the_bucket_limit() {
    use crate::model::exp::{ExpHistogram, bucket_index};
    let sm = SpanMetrics::new(SpanMetricsConfig {
        histogram: HistogramKind::Native,
        native_max_buckets: 8,
        native_max_scale: 20,
        ..Default::default()
    });
    let millis = [1u64, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987];
    let spans: Vec<_> = millis
        .iter()
        .enumerate()
        .map(|(i, ms)| span("GET /a", SpanKind::Server, *ms, i as u8 + 1, vec![]))
        .collect();
    let req = traces_request(vec![kv("service.name", "checkout")], spans);
    let out = sm.process(&req);
    let hists = points_of(&out.counts, DURATION);
    assert_eq!(hists.len(), 1);
    let PointValue::Exponential(e) = hists[0].value else {
        panic!("not an exponential histogram: {:?}", hists[0].value)
    };
    assert_eq!(e.count, millis.len() as u64);
    let total: f64 = millis.iter().map(|m| *m as f64 / 1000.0).sum();
    assert!((e.sum - total).abs() < 1e-9, "{} vs {total}", e.sum);
    let counts = &out.counts.counts[e.positive.range()];
    assert!(counts.len() <= 8, "{} buckets", counts.len());
    assert!(e.scale < 20, "downscaled to fit: {}", e.scale);
    for ms in millis {
        let idx = bucket_index(ms as f64 / 1000.0, e.scale);
        let k = (idx - e.positive_offset) as usize;
        assert!(
            k < counts.len() && counts[k] > 0,
            "{ms} ms has no bucket at scale {}",
            e.scale
        );
    }
    assert_eq!(counts.iter().sum::<u64>(), millis.len() as u64);
    // One scale up would not fit: the finest that does.
    let (lo, hi) = (bucket_index(0.001, e.scale + 1), bucket_index(0.987, e.scale + 1));
    assert!((hi - lo + 1) as usize > 8);

    let store = crate::store::Store::new(Duration::from_secs(60), 1000, &[]);
    store.write(out.counts, Instant::now());
    store.write(out.exemplars, Instant::now());
    let fams = store.families();
    let h = fams
        .iter()
        .find(|h| h.lock().meta.name == DURATION)
        .expect("duration family");
    let f = h.lock();
    let crate::store::SeriesValue::Exponential(stored) = &f.series()[0].value else {
        panic!("stored as an exponential histogram")
    };
    let stored: &ExpHistogram = stored;
    assert_eq!(stored.count, millis.len() as u64);
    assert_eq!(stored.scale, e.scale, "the empty exemplar point does not downscale it");
    assert!(!stored.exemplars.is_empty(), "exemplars on the native histogram");
    drop(f);
    let mut pb = Vec::new();
    crate::expose::render(&store, &Telemetry::default(), crate::model::Format::Protobuf, &mut pb);
    assert!(!pb.is_empty());
    // The text formats get classic buckets at the histogram's boundaries, with `_count`.
    let mut text = Vec::new();
    crate::expose::render(
        &store,
        &Telemetry::default(),
        crate::model::Format::OpenMetrics,
        &mut text,
    );
    let text = String::from_utf8(text).expect("UTF-8");
    assert!(
        text.contains(&format!("{DURATION}_count{{service_name=\"checkout\"")) && text.contains("_bucket{"),
        "{text}"
    );
}

/// Requests recorded at different scales merge exactly in the store: counts add up.
#[test]
fn native_durations_of_many_requests_merge_exactly() {
    let sm = SpanMetrics::new(SpanMetricsConfig {
        histogram: HistogramKind::Native,
        ..Default::default()
    });
    let store = crate::store::Store::new(Duration::from_secs(60), 1000, &[]);
    let mut n = 0u64;
    for (i, ms) in [1u64, 1, 7, 250, 3000, 0].iter().enumerate() {
        let req = traces_request(
            vec![kv("service.name", "checkout")],
            vec![span("GET /a", SpanKind::Server, *ms, i as u8 + 1, vec![])],
        );
        store.write(sm.process(&req).counts, Instant::now());
        n += 1;
    }
    let fams = store.families();
    let h = fams
        .iter()
        .find(|h| h.lock().meta.name == DURATION)
        .expect("duration family");
    let f = h.lock();
    let crate::store::SeriesValue::Exponential(e) = &f.series()[0].value else {
        panic!("exponential")
    };
    assert_eq!(e.count, n);
    assert_eq!(e.zero_count, 1, "the zero-length span");
    assert_eq!(e.positive.counts.iter().sum::<u64>() + e.zero_count, n);
    assert!((e.sum - 3.259).abs() < 1e-9, "{}", e.sum);
}

/// `histogram: both`: one point per series carrying exactly what `classic` and `native` give for
/// the same spans — the configured buckets and the exponential histogram — and the exemplar point
/// carries every bucket's exemplar for both.
#[test]
fn both_carries_the_classic_and_the_native_histogram_of_the_same_spans() {
    let millis = [1u64, 3, 8, 40, 40, 250, 1900];
    let spans: Vec<_> = millis
        .iter()
        .enumerate()
        .map(|(i, ms)| span("GET /a", SpanKind::Server, *ms, i as u8 + 1, vec![]))
        .collect();
    let req = traces_request(vec![kv("service.name", "checkout")], spans);
    let run = |histogram| {
        SpanMetrics::new(SpanMetricsConfig {
            buckets: vec![0.005, 0.05, 0.5],
            histogram,
            ..Default::default()
        })
        .process(&req)
    };
    let (classic, native, both) = (
        run(HistogramKind::Classic),
        run(HistogramKind::Native),
        run(HistogramKind::Both),
    );
    let one = |s: &Samples| {
        let p = points_of(s, DURATION);
        assert_eq!(p.len(), 1);
        p[0].value
    };
    let PointValue::Histogram { count, sum, counts, .. } = one(&classic.counts) else {
        panic!("classic")
    };
    let PointValue::Exponential(e) = one(&native.counts) else {
        panic!("native")
    };
    let PointValue::Both {
        bounds,
        counts: both_counts,
        native: both_native,
    } = one(&both.counts)
    else {
        panic!("both: {:?}", one(&both.counts))
    };
    assert_eq!(&both.counts.floats[bounds.range()], &[0.005, 0.05, 0.5]);
    assert_eq!(
        &both.counts.counts[both_counts.range()],
        &classic.counts.counts[counts.range()]
    );
    assert_eq!(&both.counts.counts[both_counts.range()], &[2, 3, 1, 1]);
    assert_eq!((both_native.count, both_native.sum), (count, sum));
    assert_eq!(
        (both_native.scale, both_native.positive_offset),
        (e.scale, e.positive_offset)
    );
    assert_eq!(
        &both.counts.counts[both_native.positive.range()],
        &native.counts.counts[e.positive.range()]
    );
    // The exemplar point: zero counts, every bucket's exemplar.
    let PointValue::Both { counts, native, .. } = one(&both.exemplars) else {
        panic!("both exemplars")
    };
    assert!(both.exemplars.counts[counts.range()].iter().all(|c| *c == 0));
    assert_eq!(native.count, 0);
    let ex = points_of(&both.exemplars, DURATION)[0].exemplars;
    assert_eq!(ex.len(), 4, "one per classic bucket a span fell into");
}
