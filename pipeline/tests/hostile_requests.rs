//! Requests a hostile or broken sender makes, in-process on port 0: each is refused with the
//! documented status and a message naming the problem, counted, and never decoded into unbounded
//! memory; the good data of a well-formed request next to them is kept.

mod common;

use bytes::{BufMut, Bytes};
use prost::Message;
use spindle::app::Running;

const TRACES: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
const METRICS: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// `tag` (field 1 or 2, wire type 2) around `inner`.
fn wrap(field: u8, inner: &[u8]) -> Vec<u8> {
    let mut out = vec![(field << 3) | 2];
    varint(&mut out, inner.len() as u64);
    out.extend_from_slice(inner);
    out
}

/// An `ExportTraceServiceRequest` of `n` empty spans (2 bytes each on the wire), built as bytes so
/// that the test itself never holds the decoded form.
fn empty_spans(n: usize) -> Vec<u8> {
    let spans = [0x12u8, 0x00].repeat(n); // ScopeSpans.spans (2), empty
    wrap(1, &wrap(2, &spans)) // resource_spans (1) → scope_spans (2)
}

/// Sends one gRPC message over a raw HTTP/2 stream: `compressed` sets the frame's flag, `encoding`
/// the `grpc-encoding` header. Returns `(grpc-status, grpc-message)`.
async fn raw_grpc(r: &Running, path: &str, encoding: Option<&str>, compressed: bool, msg: &[u8]) -> (i32, String) {
    let tcp = tokio::net::TcpStream::connect(r.grpc_addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let mut req = http::Request::post(format!("http://{}{path}", r.grpc_addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(e) = encoding {
        req = req.header("grpc-encoding", e);
    }
    let (resp, mut send) = client.send_request(req.body(()).unwrap(), false).unwrap();
    let mut frame = Vec::with_capacity(msg.len() + 5);
    frame.put_u8(u8::from(compressed));
    frame.put_u32(msg.len() as u32);
    frame.extend_from_slice(msg);
    send.send_data(Bytes::from(frame), true).unwrap();
    let resp = resp.await.unwrap();
    let (head, mut body) = resp.into_parts();
    let mut trailers = head.headers.clone();
    if !trailers.contains_key("grpc-status") {
        while let Some(chunk) = body.data().await {
            chunk.unwrap();
        }
        trailers = body.trailers().await.unwrap().unwrap_or_default();
    }
    let code = trailers["grpc-status"].to_str().unwrap().parse().unwrap();
    let message = trailers
        .get("grpc-message")
        .map(|m| m.to_str().unwrap().replace("%20", " "))
        .unwrap_or_default();
    (code, message)
}

async fn post(r: &Running, path: &str, ct: &str, body: Vec<u8>) -> (u16, String) {
    let resp = reqwest::Client::new()
        .post(format!("http://{}{path}", r.http_addr))
        .header("content-type", ct)
        .body(body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

fn refused(text: &str, signal: &str, protocol: &str, reason: &str) -> u64 {
    let key =
        format!("spindle_refused_requests_total{{signal=\"{signal}\",protocol=\"{protocol}\",reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_grpc_payloads_are_invalid_argument_and_counted() {
    let r = common::spindle(|_| {}).await;
    // Field 1 (resource_spans) claims 100 bytes but the message ends.
    let truncated = [0x0a, 100, 1, 2, 3];
    let (code, msg) = raw_grpc(&r, TRACES, None, false, &truncated).await;
    assert_eq!(code, tonic::Code::InvalidArgument as i32, "{msg}");
    assert!(msg.contains("malformed protobuf payload"), "{msg}");

    // A span name (string, field 5) that is not UTF-8.
    let name = [(5 << 3) | 2, 2, 0xff, 0xfe];
    let bad_utf8 = wrap(1, &wrap(2, &wrap(2, &name)));
    let (code, msg) = raw_grpc(&r, TRACES, None, false, &bad_utf8).await;
    assert_eq!(code, tonic::Code::InvalidArgument as i32, "{msg}");
    assert!(msg.contains("UTF-8"), "{msg}");

    // Marked gzip, but not gzip.
    let (code, msg) = raw_grpc(&r, METRICS, Some("gzip"), true, b"definitely not gzip").await;
    assert_eq!(code, tonic::Code::InvalidArgument as i32, "{msg}");
    assert!(msg.contains("decompressing"), "{msg}");

    // A well-formed request on the same listener is still fine.
    let (code, msg) = raw_grpc(&r, TRACES, None, false, &empty_spans(1)).await;
    assert_eq!(code, 0, "{msg}");

    let text = common::scrape(&r).await;
    assert_eq!(refused(&text, "traces", "grpc", "malformed"), 2, "{text}");
    assert_eq!(refused(&text, "metrics", "grpc", "corrupt_compression"), 1, "{text}");
    r.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_message_floods_are_refused_before_decoding() {
    let r = common::spindle(|_| {}).await;
    // 8 MiB − a little: ~4.2M empty spans, which would take ~1 GB decoded.
    let body = empty_spans(4_190_000);
    assert!(body.len() < 8 << 20);

    let (status, text) = post(&r, "/v1/traces", "application/x-protobuf", body.clone()).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("estimated"), "{text}");

    let (code, msg) = raw_grpc(&r, TRACES, None, false, &body).await;
    assert_eq!(code, tonic::Code::ResourceExhausted as i32, "{msg}");
    assert!(msg.contains("once decoded"), "{msg}");

    // The same in OTLP/JSON: `{}` per span.
    let json = format!(
        r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{}{{}}]}}]}}]}}"#,
        "{},".repeat(2_000_000)
    );
    let (status, text) = post(&r, "/v1/traces", "application/json", json.into_bytes()).await;
    assert_eq!(status, 413, "{text}");

    // Realistic requests of the same size still pass: spans with ids, names and attributes.
    let spans: Vec<_> = (0..2000u32)
        .map(|i| opentelemetry_proto::tonic::trace::v1::Span {
            trace_id: vec![1; 16],
            span_id: i.to_be_bytes().repeat(2),
            name: "GET /checkout".into(),
            attributes: (0..8).map(|a| common::kv(&format!("attr.{a}"), "some value")).collect(),
            ..Default::default()
        })
        .collect();
    let ok = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
        resource_spans: vec![opentelemetry_proto::tonic::trace::v1::ResourceSpans {
            scope_spans: vec![opentelemetry_proto::tonic::trace::v1::ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let (status, text) = post(&r, "/v1/traces", "application/x-protobuf", ok.encode_to_vec()).await;
    assert_eq!(status, 200, "{text}");

    let text = common::scrape(&r).await;
    assert_eq!(refused(&text, "traces", "http", "too_large"), 2, "{text}");
    assert_eq!(refused(&text, "traces", "grpc", "too_large"), 1, "{text}");
    r.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrongly_typed_otlp_json_fields_are_named_in_a_400() {
    let r = common::spindle(|_| {}).await;
    let wrap_metric = |m: &str| {
        format!(
            r#"{{"resourceMetrics":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"svc"}}}}]}},
            "scopeMetrics":[{{"metrics":[{{"name":"good","gauge":{{"dataPoints":[{{"asDouble":1.5}}]}}}},{m}]}}]}}]}}"#
        )
    };
    let cases = [
        (
            r#"{"name":"c","sum":{"isMonotonic":"yes","aggregationTemporality":2,"dataPoints":[{"asInt":"1"}]}}"#,
            "metrics[1].sum.isMonotonic",
        ),
        (
            r#"{"name":"h","histogram":{"aggregationTemporality":2,"dataPoints":[{"count":"-1","sum":1}]}}"#,
            "metrics[1].histogram.dataPoints[0].count",
        ),
        (
            r#"{"name":"g","gauge":{"dataPoints":[{"asDouble":"many"}]}}"#,
            "metrics[1].gauge.dataPoints[0].asDouble",
        ),
        (
            r#"{"name":"g","gauge":{"dataPoints":[{"asInt":true}]}}"#,
            "metrics[1].gauge.dataPoints[0].asInt",
        ),
        (
            r#"{"name":"g","gauge":{"dataPoints":[{"asInt":"1","exemplars":[{"asDouble":{}}]}]}}"#,
            "metrics[1].gauge.dataPoints[0].exemplars[0].asDouble",
        ),
    ];
    for (metric, path) in cases {
        let (status, text) = post(&r, "/v1/metrics", "application/json", wrap_metric(metric).into_bytes()).await;
        assert_eq!(status, 400, "{metric}: {text}");
        assert!(text.contains(path), "{metric}: {text}");
    }
    let text = common::scrape(&r).await;
    assert_eq!(
        refused(&text, "metrics", "http", "malformed"),
        cases.len() as u64,
        "{text}"
    );
    assert!(
        !text.contains("\ngood{"),
        "nothing of a refused request is stored: {text}"
    );

    // A metric with no data at all is nothing to store, but the sender hears of it.
    let (status, text) = post(
        &r,
        "/v1/metrics",
        "application/json",
        wrap_metric(r#"{"name":"nodata"}"#).into_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    let msg = body["partialSuccess"]["errorMessage"].as_str().unwrap_or_default();
    assert!(msg.contains("`nodata` has no data"), "{text}");

    // The proto3 JSON mapping spells non-finite doubles as strings: accepted.
    let nan = r#"{"name":"g","gauge":{"dataPoints":[{"asDouble":"NaN"}]}}"#;
    let (status, text) = post(&r, "/v1/metrics", "application/json", wrap_metric(nan).into_bytes()).await;
    assert_eq!(status, 200, "{text}");
    let inf = r#"{"name":"g2","gauge":{"dataPoints":[{"asDouble":"-Infinity"}]}}"#;
    let (status, text) = post(&r, "/v1/metrics", "application/json", wrap_metric(inf).into_bytes()).await;
    assert_eq!(status, 200, "{text}");
    let text = common::scrape(&r).await;
    assert!(
        text.lines().any(|l| l.starts_with("g{") && l.ends_with(" NaN")),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("g2{") && l.ends_with(" -Inf")),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("good{") && l.ends_with(" 1.5")),
        "{text}"
    );
    r.shutdown().await.unwrap();
}
