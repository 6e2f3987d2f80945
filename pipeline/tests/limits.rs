//! `receivers.otlp.limits` end to end, in-process on port 0: each limit rejects (or truncates)
//! with a message in `partial_success`, keeps the good items of the same request, and is counted in
//! `spindle_limited_items_total`; hostile sizes (a 7 MiB span name, 100,000 attributes) leave the
//! scrape small; `spindle validate` refuses unbounded or absurd limits with their key path.

mod common;

use std::time::{Duration, Instant};

use common::{gauge_metric, kv, metrics_request, post_protobuf, span, traces_request};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::Metric;
use prost::Message;
use spindle::config::Config;

/// The resource every request here comes from.
fn svc() -> Vec<KeyValue> {
    vec![kv("service.name", "svc")]
}

fn limited(text: &str, signal: &str, reason: &str) -> u64 {
    let prefix = format!("spindle_limited_items_total{{signal=\"{signal}\",reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in the scrape"))
        .parse()
        .unwrap()
}

fn many(n: usize, value: &str) -> Vec<KeyValue> {
    (0..n).map(|i| kv(&format!("k{i}"), value)).collect()
}

#[tokio::test]
async fn each_limit_rejects_with_a_message_keeps_the_good_points_and_is_counted() {
    let r = common::spindle(|_| {}).await;
    let big = "x".repeat(4_000);
    let cases: Vec<(&str, Metric, &str)> = vec![
        (
            "metric_name_too_long",
            gauge_metric(&"m".repeat(1_100), 1.0, vec![]),
            "max_metric_name_length (1024)",
        ),
        (
            "label_name_too_long",
            gauge_metric("bad", 1.0, vec![kv(&"k".repeat(257), "v")]),
            "max_label_name_length (256)",
        ),
        (
            "too_many_attributes",
            gauge_metric("bad", 1.0, many(129, "v")),
            "max_attributes_per_point (128)",
        ),
        (
            "label_set_too_large",
            gauge_metric("bad", 1.0, many(5, &big)),
            "max_label_set_size (16KiB)",
        ),
    ];
    for (i, (reason, bad, needle)) in cases.into_iter().enumerate() {
        let good = format!("good_{i}");
        let req = metrics_request(svc(), vec![gauge_metric(&good, 1.0, vec![kv("a", "b")]), bad]);
        let resp =
            ExportMetricsServiceResponse::decode(post_protobuf(&r, "/v1/metrics", req.encode_to_vec()).await).unwrap();
        let ps = resp
            .partial_success
            .unwrap_or_else(|| panic!("{reason}: no partial_success"));
        assert_eq!(ps.rejected_data_points, 1, "{reason}: {}", ps.error_message);
        assert!(ps.error_message.contains(needle), "{reason}: {}", ps.error_message);
        let text = common::scrape(&r).await;
        assert!(
            text.contains(&format!("{good}{{a=\"b\",job=\"svc\"}} 1")),
            "{reason}: {text}"
        );
        assert!(!text.contains("\nbad{"), "{reason}: {text}");
        assert_eq!(limited(&text, "metrics", reason), 1, "{reason}");
    }
    // A long value is truncated with the marker and the point kept.
    let long = "é".repeat(5_000);
    let req = metrics_request(svc(), vec![gauge_metric("long", 1.0, vec![kv("v", &long)])]);
    let resp =
        ExportMetricsServiceResponse::decode(post_protobuf(&r, "/v1/metrics", req.encode_to_vec()).await).unwrap();
    // Kept, with a warning (`rejected_data_points: 0`) naming the limit.
    let ps = resp.partial_success.expect("a warning");
    assert_eq!(ps.rejected_data_points, 0);
    assert!(
        ps.error_message.contains("max_label_value_length (4096)"),
        "{}",
        ps.error_message
    );
    let text = common::scrape(&r).await;
    let line = text.lines().find(|l| l.starts_with("long{")).expect("long series");
    let value = line.split("v=\"").nth(1).unwrap().split('"').next().unwrap();
    assert!(value.len() <= 4096 && value.ends_with('…'), "{} bytes", value.len());
    assert_eq!(limited(&text, "metrics", "label_value_truncated"), 1);
    r.shutdown().await.unwrap();
}

#[tokio::test]
async fn spans_with_too_many_attributes_are_rejected_neither_forwarded_nor_counted() {
    let r = common::spindle(|_| {}).await;
    let req = traces_request(svc(), vec![span("big", 1, many(1025, "v")), span("ok", 2, vec![])]);
    let resp = ExportTraceServiceResponse::decode(post_protobuf(&r, "/v1/traces", req.encode_to_vec()).await).unwrap();
    let ps = resp.partial_success.expect("partial_success");
    assert_eq!(ps.rejected_spans, 1);
    assert!(
        ps.error_message.contains("max_attributes_per_span (1024)"),
        "{}",
        ps.error_message
    );
    let text = common::scrape(&r).await;
    assert!(text.contains("span_name=\"ok\""), "{text}");
    assert!(!text.contains("span_name=\"big\""), "{text}");
    assert_eq!(limited(&text, "traces", "too_many_attributes"), 1);
    assert!(
        text.contains("spindle_received_items_total{signal=\"traces\",protocol=\"http\"} 1"),
        "{text}"
    );
    r.shutdown().await.unwrap();
}

/// The 7 MiB span name: every scrape was 156 MB until the TTL.
#[tokio::test]
async fn a_7_mib_span_name_leaves_the_scrape_small() {
    let r = common::spindle(|_| {}).await;
    let req = traces_request(svc(), vec![span(&"n".repeat(7 << 20), 1, vec![])]);
    ExportTraceServiceResponse::decode(post_protobuf(&r, "/v1/traces", req.encode_to_vec()).await).unwrap();
    let text = common::scrape(&r).await;
    assert!(text.contains("span_name=\"nnnn"), "the span is counted");
    assert!(text.len() < 160 << 10, "scrape is {} bytes", text.len());
    assert!(text.lines().all(|l| l.len() < 5 << 10), "a line longer than 5 KiB");
    assert_eq!(limited(&text, "traces", "label_value_truncated"), 1);
    r.shutdown().await.unwrap();
}

/// The 1e6-attribute point made one 8 MB sample line; now it is refused before its
/// attributes are even copied.
#[tokio::test]
async fn a_point_with_100000_attributes_is_rejected_quickly() {
    let r = common::spindle(|_| {}).await;
    let req = metrics_request(
        svc(),
        vec![
            gauge_metric("wide", 1.0, many(100_000, "v")),
            gauge_metric("narrow", 1.0, vec![]),
        ],
    );
    let body = req.encode_to_vec();
    let started = Instant::now();
    let resp = ExportMetricsServiceResponse::decode(post_protobuf(&r, "/v1/metrics", body).await).unwrap();
    let took = started.elapsed();
    assert_eq!(resp.partial_success.map(|p| p.rejected_data_points), Some(1));
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let text = common::scrape(&r).await;
    assert!(text.contains("narrow{job=\"svc\"} 1"), "{text}");
    assert!(!text.contains("wide{"), "{text}");
    assert!(text.len() < 64 << 10, "scrape is {} bytes", text.len());
    r.shutdown().await.unwrap();
}

#[test]
fn validate_refuses_zero_and_absurd_limits_with_key_paths() {
    let yaml = "receivers:\n  otlp:\n    limits:\n      max_metric_name_length: 0\n      max_label_value_length: 4\n      max_attributes_per_point: 10000000\n      max_label_set_size: 1GiB\n";
    let err = Config::from_yaml_with_env(yaml, Vec::new()).unwrap_err().to_string();
    for key in [
        "receivers.otlp.limits.max_metric_name_length: 0 is not allowed",
        "receivers.otlp.limits.max_label_value_length: 4 is outside",
        "receivers.otlp.limits.max_attributes_per_point: 10000000 is outside",
        "receivers.otlp.limits.max_label_set_size: 1073741824 is outside",
    ] {
        assert!(err.contains(key), "missing `{key}` in:\n{err}");
    }
    assert!(err.contains("hint:"), "{err}");
    let ok = "receivers:\n  otlp:\n    limits:\n      max_label_value_length: 256\n      max_label_set_size: 64KiB\n";
    let c = Config::from_yaml_with_env(ok, Vec::new()).unwrap();
    assert_eq!(c.receivers.otlp.limits.max_label_value_length, 256);
    assert!(Config::default().validate().is_empty());
}
