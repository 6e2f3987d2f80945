//! OTLP receivers end to end, in-process on port 0: success in both encodings and both protocols,
//! `partial_success`, and every documented refusal with its status, message and counted metric.

mod common;

use std::io::Write;

use common::{counter_metric, kv, metrics_request, spindle};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::metrics::v1::{AggregationTemporality, Histogram, HistogramDataPoint, Metric, metric};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use spindle::app::Running;
use spindle::config::ByteSize;

/// A counter `name` with one integer point on route `/a`.
fn counter(name: &str, value: i64) -> Metric {
    counter_metric(name, value, vec![kv("route", "/a")])
}

/// One request from service `svc` holding `metrics`.
fn request(metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
    metrics_request(vec![kv("service.name", "svc")], metrics)
}

async fn post(r: &Running, path: &str, ct: &str, ce: Option<&str>, body: Vec<u8>) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(format!("http://{}{path}", r.http_addr))
        .header("content-type", ct)
        .body(body);
    if let Some(ce) = ce {
        req = req.header("content-encoding", ce);
    }
    req.send().await.unwrap()
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

#[tokio::test]
async fn http_protobuf_json_gzip_zstd_all_land() {
    let r = spindle(|_| {}).await;
    let resp = post(
        &r,
        "/v1/metrics",
        "application/x-protobuf",
        None,
        request(vec![counter("a", 1)]).encode_to_vec(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-protobuf");
    let body = resp.bytes().await.unwrap();
    assert_eq!(
        ExportMetricsServiceResponse::decode(body).unwrap().partial_success,
        None
    );

    let json = serde_json::to_vec(&request(vec![counter("b", 2)])).unwrap();
    let resp = post(&r, "/v1/metrics", "application/json", None, json).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.text().await.unwrap(), "{}");

    let gz = gzip(&request(vec![counter("c", 3)]).encode_to_vec());
    assert_eq!(
        post(&r, "/v1/metrics", "application/x-protobuf", Some("gzip"), gz)
            .await
            .status(),
        200
    );
    let z = zstd::encode_all(&request(vec![counter("d", 4)]).encode_to_vec()[..], 3).unwrap();
    assert_eq!(
        post(&r, "/v1/metrics", "application/x-protobuf", Some("zstd"), z)
            .await
            .status(),
        200
    );

    let text = common::scrape(&r).await;
    for (n, v) in [("a", 1), ("b", 2), ("c", 3), ("d", 4)] {
        assert!(
            text.contains(&format!("{n}_total{{job=\"svc\",route=\"/a\"}} {v}.0")),
            "{n} missing:\n{text}"
        );
    }
    assert!(
        text.contains("spindle_received_items_total{signal=\"metrics\",protocol=\"http\"} 4"),
        "{text}"
    );
    r.shutdown().await.unwrap();
}

#[tokio::test]
async fn partial_success_keeps_the_good_points() {
    let r = spindle(|_| {}).await;
    let bad_hist = Metric {
        name: "h".into(),
        data: Some(metric::Data::Histogram(Histogram {
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            data_points: vec![HistogramDataPoint {
                count: 1,
                explicit_bounds: vec![1.0, 2.0],
                bucket_counts: vec![1],
                ..Default::default()
            }],
        })),
        ..Default::default()
    };
    let json = serde_json::to_vec(&request(vec![counter("good", 7), bad_hist])).unwrap();
    let resp = post(&r, "/v1/metrics", "application/json", None, json).await;
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["partialSuccess"]["rejectedDataPoints"], 1, "{body}");
    let msg = body["partialSuccess"]["errorMessage"].as_str().unwrap();
    assert!(msg.contains("bucket counts"), "{msg}");
    let text = common::scrape(&r).await;
    assert!(text.contains("good_total{job=\"svc\",route=\"/a\"} 7.0"), "{text}");
    assert!(!text.contains("h_bucket"), "{text}");
    assert!(
        text.contains("spindle_rejected_items_total{signal=\"metrics\",protocol=\"http\"} 1"),
        "{text}"
    );
    r.shutdown().await.unwrap();
}

/// Decodes an HTTP error body (a `google.rpc.Status`) in either encoding.
async fn status_message(resp: reqwest::Response) -> (u16, String) {
    let code = resp.status().as_u16();
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    let body = resp.bytes().await.unwrap();
    let msg = if ct == "application/json" {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        v["message"].as_str().unwrap().to_string()
    } else {
        tonic_types::Status::decode(body).unwrap().message
    };
    (code, msg)
}

#[tokio::test]
async fn every_bad_request_gets_its_status_and_message_and_is_counted() {
    let r = spindle(|c| c.receivers.otlp.max_request_size = ByteSize(64 * 1024)).await;
    let pb = "application/x-protobuf";
    /// Content-Type, Content-Encoding, body, expected status, expected message fragment.
    type Case = (&'static str, Option<&'static str>, Vec<u8>, u16, &'static str);
    let cases: Vec<Case> = vec![
        (pb, None, vec![0xff, 0xff, 0xff, 0xff], 400, "malformed protobuf"),
        (
            "application/json",
            None,
            b"{\"resourceMetrics\": 7}".to_vec(),
            400,
            "malformed JSON",
        ),
        ("text/plain", None, b"hello".to_vec(), 415, "unsupported Content-Type"),
        (pb, None, vec![0u8; 100 * 1024], 413, "exceeds the 65536-byte limit"),
        (pb, Some("gzip"), gzip(&vec![0u8; 1 << 20]), 413, "after decompression"),
        (pb, Some("gzip"), b"definitely not gzip".to_vec(), 400, "corrupt gzip"),
        (pb, Some("br"), b"x".to_vec(), 415, "unsupported Content-Encoding"),
    ];
    for (ct, ce, body, status, msg) in &cases {
        let (code, message) = status_message(post(&r, "/v1/metrics", ct, *ce, body.clone()).await).await;
        assert_eq!(code, *status, "{ct} {ce:?}: {message}");
        assert!(message.contains(msg), "{ct} {ce:?}: `{message}` lacks `{msg}`");
    }
    // The process keeps serving good data.
    let ok = post(
        &r,
        "/v1/metrics",
        pb,
        None,
        request(vec![counter("after", 1)]).encode_to_vec(),
    )
    .await;
    assert_eq!(ok.status(), 200);
    let text = common::scrape(&r).await;
    assert!(text.contains("after_total{job=\"svc\",route=\"/a\"} 1.0"), "{text}");
    for (reason, n) in [
        ("malformed", 2),
        ("unsupported_media_type", 1),
        ("too_large", 2),
        ("corrupt_compression", 1),
    ] {
        let line =
            format!("spindle_refused_requests_total{{signal=\"metrics\",protocol=\"http\",reason=\"{reason}\"}} {n}");
        assert!(text.contains(&line), "missing `{line}`:\n{text}");
    }
    r.shutdown().await.unwrap();
}

#[tokio::test]
async fn traces_are_accepted_and_counted() {
    let r = spindle(|_| {}).await;
    let span = |tid: Vec<u8>| Span {
        trace_id: tid,
        span_id: vec![1; 8],
        name: "s".into(),
        ..Default::default()
    };
    let req = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![span(vec![7; 16]), span(vec![7; 3])],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let resp = post(&r, "/v1/traces", "application/x-protobuf", None, req.encode_to_vec()).await;
    assert_eq!(resp.status(), 200);
    let out = ExportTraceServiceResponse::decode(resp.bytes().await.unwrap()).unwrap();
    assert_eq!(out.partial_success.map(|p| p.rejected_spans), Some(1));

    let mut client = TraceServiceClient::connect(format!("http://{}", r.grpc_addr))
        .await
        .unwrap();
    client.export(req).await.unwrap();
    let text = common::scrape(&r).await;
    assert!(
        text.contains("spindle_received_items_total{signal=\"traces\",protocol=\"http\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("spindle_received_items_total{signal=\"traces\",protocol=\"grpc\"} 1"),
        "{text}"
    );
    r.shutdown().await.unwrap();
}

#[tokio::test]
async fn grpc_gzip_partial_success_and_oversize() {
    let r = spindle(|c| c.receivers.otlp.max_request_size = ByteSize(4096)).await;
    let mut client = MetricsServiceClient::connect(format!("http://{}", r.grpc_addr))
        .await
        .unwrap()
        .send_compressed(tonic::codec::CompressionEncoding::Gzip);
    let resp = client
        .export(request(vec![counter("g", 5)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.partial_success, None);

    // A counter with a negative value is invalid; the other point lands.
    let resp = client
        .export(request(vec![counter("neg", -1), counter("g2", 2)]))
        .await
        .unwrap()
        .into_inner();
    let ps = resp.partial_success.unwrap();
    assert_eq!(ps.rejected_data_points, 1);
    assert!(ps.error_message.contains("non-negative"), "{}", ps.error_message);

    // Larger than the decoded-size cap: refused, not retryable — compressed or not.
    let big: Vec<Metric> = (0..200).map(|i| counter(&format!("m{i}"), i)).collect();
    let err = client.export(request(big.clone())).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    let mut plain = MetricsServiceClient::connect(format!("http://{}", r.grpc_addr))
        .await
        .unwrap();
    let err = plain.export(request(big)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "uncompressed: {err}");
    let text = common::scrape(&r).await;
    assert!(text.contains("g_total{job=\"svc\",route=\"/a\"} 5.0"), "{text}");
    assert!(text.contains("g2_total{job=\"svc\",route=\"/a\"} 2.0"), "{text}");
    r.shutdown().await.unwrap();
}

#[tokio::test]
async fn readyz_and_healthz() {
    let r = spindle(|_| {}).await;
    for p in ["/healthz", "/readyz"] {
        let resp = reqwest::get(format!("http://{}{p}", r.prometheus_addr)).await.unwrap();
        assert_eq!(resp.status(), 200, "{p}");
    }
    r.shutdown().await.unwrap();
}

/// Values a peer controls must never panic or abort the process: extreme exponential-histogram
/// offsets and bucket counts near `u64::MAX` are refused or saturate, and Spindle keeps serving.
#[tokio::test]
async fn hostile_histogram_values_do_not_crash_the_process() {
    use opentelemetry_proto::tonic::metrics::v1::{
        ExponentialHistogram, ExponentialHistogramDataPoint, exponential_histogram_data_point::Buckets,
    };
    let r = spindle(|_| {}).await;
    let expo = |name: &str, offset: i32, counts: Vec<u64>, temporality: AggregationTemporality| Metric {
        name: name.into(),
        data: Some(metric::Data::ExponentialHistogram(ExponentialHistogram {
            aggregation_temporality: temporality as i32,
            data_points: vec![ExponentialHistogramDataPoint {
                count: u64::MAX,
                sum: Some(1.0),
                scale: 20,
                positive: Some(Buckets {
                    offset,
                    bucket_counts: counts.clone(),
                }),
                negative: Some(Buckets {
                    offset,
                    bucket_counts: counts,
                }),
                ..Default::default()
            }],
        })),
        ..Default::default()
    };
    let big = |name: &str, counts: Vec<u64>| Metric {
        name: name.into(),
        data: Some(metric::Data::Histogram(Histogram {
            aggregation_temporality: AggregationTemporality::Delta as i32,
            data_points: vec![HistogramDataPoint {
                count: u64::MAX,
                sum: Some(1.0),
                explicit_bounds: vec![1.0],
                bucket_counts: counts,
                ..Default::default()
            }],
        })),
        ..Default::default()
    };
    for _ in 0..2 {
        let req = request(vec![
            expo("e1", i32::MAX, vec![1, 1], AggregationTemporality::Delta),
            expo("e2", i32::MIN, vec![1, 1], AggregationTemporality::Cumulative),
            expo("e3", 0, vec![u64::MAX, u64::MAX], AggregationTemporality::Delta),
            big("h1", vec![u64::MAX, u64::MAX]),
            counter("alive", 1),
        ]);
        let resp = post(&r, "/v1/metrics", "application/x-protobuf", None, req.encode_to_vec()).await;
        assert_eq!(resp.status(), 200);
    }
    let text = common::scrape(&r).await;
    assert!(text.contains("alive_total{job=\"svc\",route=\"/a\"} 1.0"), "{text}");
    assert!(
        !text.contains("e1_bucket") && !text.contains("e2_bucket"),
        "out-of-range offsets are rejected:\n{text}"
    );
    r.shutdown().await.unwrap();
}
