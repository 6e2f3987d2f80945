//! Prometheus remote write from Spindle to real and scripted receivers.
//!
//! 1. A real Prometheus (Debian package `prometheus`, `--web.enable-remote-write-receiver`,
//!    `--enable-feature=exemplar-storage`, no scrape jobs) receives Spindle's pushes (interval
//!    1 s). Metrics come from the OpenTelemetry Python SDK and spans from a tonic OTLP client (span
//!    metrics); Prometheus' query API must return the series with the exact values and labels, and
//!    its exemplar API the exemplars whose trace ids the SDK and the span client used.
//! 2. A small axum receiver answering 500 and then 204 gets the same request again (retry), and
//!    one answering 400 gets each request once, which Spindle drops and counts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::metrics::v1::NumberDataPoint;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::Value;
use spindle::app::Running;
use spindle::config::DurationStr;
use spindle::export::remote_write::proto::WriteRequest;
use spindle::telemetry::RemoteWriteDropReason;
use spindle::testing::{self, kv, traces_request};
use spindle_e2e::{Prometheus, Protocol, SendOptions, SentSummary, send_metrics, start_spindle, unix_now, url_encode};
use tokio::sync::Mutex;

/// Upper bound for pushed data to show up in Prometheus (or a scripted receiver).
const TIMEOUT: Duration = Duration::from_secs(60);

/// Polls Prometheus' API every 500 ms until `check` returns `Some`, for at most [`TIMEOUT`].
async fn poll<T>(prom: &Prometheus, what: &str, path: &str, check: impl Fn(&Value) -> Option<T>) -> T {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let answer = prom.api(path).await;
        if let Some(found) = check(&answer) {
            return found;
        }
        if Instant::now() > deadline {
            let log = prom.log();
            let tail: Vec<_> = log.lines().rev().take(20).collect();
            panic!(
                "timed out after {TIMEOUT:?} waiting for {what}\nlast answer of {path}: {answer}\n\
                 Prometheus log (last lines, newest first):\n{}",
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The value of the single series `selector` selects, once it equals `want`.
async fn expect_value(prom: &Prometheus, selector: &str, want: f64) -> Value {
    let path = format!("/api/v1/query?query={}", url_encode(selector));
    poll(prom, &format!("{selector} == {want}"), &path, |answer| {
        let result = answer["data"]["result"].as_array()?;
        let series = result.first()?;
        let value: f64 = series["value"][1].as_str()?.parse().ok()?;
        (result.len() == 1 && value == want).then(|| series["metric"].clone())
    })
    .await
}

/// Trace ids of the exemplars of `selector` (last 10 minutes) that `known` accepts.
async fn exemplar_trace_ids(prom: &Prometheus, selector: &str, known: impl Fn(&str, &str) -> bool) -> Vec<String> {
    let now = unix_now();
    let path = format!(
        "/api/v1/query_exemplars?query={}&start={:.3}&end={:.3}",
        url_encode(selector),
        now - 600.0,
        now + 120.0
    );
    poll(
        prom,
        &format!("exemplars of {selector} with known trace ids"),
        &path,
        |answer| {
            let mut found = Vec::new();
            for series in answer["data"].as_array().into_iter().flatten() {
                for ex in series["exemplars"].as_array().into_iter().flatten() {
                    let trace = ex["labels"]["trace_id"].as_str().unwrap_or("");
                    let span = ex["labels"]["span_id"].as_str().unwrap_or("");
                    let value: f64 = ex["value"].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
                    if known(trace, span) && value.is_finite() {
                        found.push(trace.to_owned());
                    }
                }
            }
            (!found.is_empty()).then_some(found)
        },
    )
    .await
}

fn now_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// `n` server spans of service `svc`, one trace each, ending now; trace id byte 15 is `i`.
fn spans(svc: &str, n: u8) -> ExportTraceServiceRequest {
    let end = now_nanos();
    let spans = (0..n)
        .map(|i| {
            let mut trace_id = vec![0x5a; 16];
            trace_id[15] = i;
            Span {
                trace_id,
                span_id: vec![i + 1; 8],
                name: "GET /orders".into(),
                kind: 2,
                start_time_unix_nano: end - u64::from(i % 4 + 1) * 20_000_000,
                end_time_unix_nano: end,
                ..Default::default()
            }
        })
        .collect();
    traces_request(vec![kv("service.name", svc)], spans)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn spindle_pushing_to(url: String) -> Running {
    start_spindle(|c| {
        let rw = &mut c.exporters.remote_write;
        rw.endpoint = Some(url);
        rw.interval = DurationStr(Duration::from_secs(1));
        rw.retry_initial_backoff = DurationStr(Duration::from_millis(50));
        rw.retry_max_backoff = DurationStr(Duration::from_millis(500));
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_receives_series_values_and_exemplars_over_remote_write() {
    let prom = Prometheus::start_remote_write_receiver().await;
    let spindle = spindle_pushing_to(prom.remote_write_url()).await;
    let sent: SentSummary = send_metrics(&spindle, &SendOptions::new(Protocol::Grpc, "rw-checkout")).await;
    let span_req = spans("rw-orders", 12);
    let span_ids: Vec<(String, String)> = span_req.resource_spans[0].scope_spans[0]
        .spans
        .iter()
        .map(|s| (hex(&s.trace_id), hex(&s.span_id)))
        .collect();
    TraceServiceClient::connect(format!("http://{}", spindle.grpc_addr))
        .await
        .unwrap()
        .export(span_req)
        .await
        .unwrap();

    // Counter: name with _total, exact value, Spindle's labels.
    let job = &sent.job;
    let metric = expect_value(
        &prom,
        &format!("demo_requests_total{{job=\"{job}\",route=\"/checkout\"}}"),
        sent.requests["/checkout"] as f64,
    )
    .await;
    for (label, expected) in [
        ("instance", sent.instance.as_str()),
        ("otel_scope_name", sent.scope.name.as_str()),
        ("otel_scope_version", sent.scope.version.as_str()),
    ] {
        assert_eq!(metric[label].as_str(), Some(expected), "label `{label}`: {metric}");
    }
    expect_value(
        &prom,
        &format!("demo_requests_total{{job=\"{job}\",route=\"/cart\"}}"),
        sent.requests["/cart"] as f64,
    )
    .await;
    // Histogram: every bucket with its `le`, `_count`, `_sum`.
    for (route, h) in &sent.latency {
        for (le, count) in &h.buckets {
            let le = if le == "+Inf" {
                le.clone()
            } else {
                format!("{:?}", le.parse::<f64>().unwrap())
            };
            expect_value(
                &prom,
                &format!("demo_latency_seconds_bucket{{job=\"{job}\",route=\"{route}\",le=\"{le}\"}}"),
                *count as f64,
            )
            .await;
        }
        expect_value(
            &prom,
            &format!("demo_latency_seconds_count{{job=\"{job}\",route=\"{route}\"}}"),
            h.count as f64,
        )
        .await;
        let sum = expect_sum(
            &prom,
            &format!("demo_latency_seconds_sum{{job=\"{job}\",route=\"{route}\"}}"),
        )
        .await;
        assert!((sum - h.sum).abs() < 1e-9, "sum {sum} != {}", h.sum);
    }
    // Gauges and target_info.
    expect_value(
        &prom,
        &format!("demo_queue_depth{{job=\"{job}\"}}"),
        sent.queue_depth as f64,
    )
    .await;
    expect_value(
        &prom,
        &format!("demo_temperature{{job=\"{job}\",room=\"lab\"}}"),
        sent.temperature.value,
    )
    .await;
    expect_value(
        &prom,
        &format!("target_info{{job=\"{job}\",deployment_environment=\"test\"}}"),
        1.0,
    )
    .await;
    // Span metrics.
    let calls = "traces_span_metrics_calls_total{service_name=\"rw-orders\",span_kind=\"SPAN_KIND_SERVER\",span_name=\"GET /orders\",status_code=\"STATUS_CODE_UNSET\"}";
    expect_value(&prom, calls, 12.0).await;
    expect_value(
        &prom,
        "traces_span_metrics_duration_seconds_count{service_name=\"rw-orders\"}",
        12.0,
    )
    .await;

    // Exemplars: the SDK's on the counter and histogram buckets, the spans' on span metrics.
    let sdk = |t: &str, s: &str| sent.has_span(t, s);
    for selector in ["demo_requests_total", "demo_latency_seconds_bucket"] {
        let selector = format!("{selector}{{job=\"{job}\"}}");
        exemplar_trace_ids(&prom, &selector, sdk).await;
    }
    let ours = |t: &str, s: &str| span_ids.iter().any(|(tt, ss)| tt == t && ss == s);
    for selector in [
        "traces_span_metrics_calls_total{service_name=\"rw-orders\"}",
        "traces_span_metrics_duration_seconds_bucket{service_name=\"rw-orders\"}",
    ] {
        exemplar_trace_ids(&prom, selector, ours).await;
    }

    assert!(spindle.telemetry.remote_write.sent_total() > 0);
    for reason in [
        RemoteWriteDropReason::Permanent,
        RemoteWriteDropReason::QueueFull,
        RemoteWriteDropReason::Shutdown,
    ] {
        assert_eq!(
            spindle.telemetry.remote_write.dropped_total(reason),
            0,
            "{reason:?}; Prometheus log:\n{}",
            prom.log()
        );
    }
    spindle.shutdown().await.expect("spindle shuts down cleanly");
    drop(prom);
}

async fn expect_sum(prom: &Prometheus, selector: &str) -> f64 {
    let path = format!("/api/v1/query?query={}", url_encode(selector));
    poll(prom, selector, &path, |answer| {
        answer["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    })
    .await
}

/// A scripted remote-write receiver: answers each request with the next status of `script`
/// (then the last one forever) and records what it got.
#[derive(Clone)]
struct Receiver {
    inner: Arc<Mutex<ReceiverState>>,
}

struct ReceiverState {
    script: Vec<u16>,
    got: Vec<(u16, HeaderMap, Bytes)>,
}

impl Receiver {
    async fn start(script: Vec<u16>) -> (Self, SocketAddr) {
        let me = Self {
            inner: Arc::new(Mutex::new(ReceiverState {
                script,
                got: Vec::new(),
            })),
        };
        let app = axum::Router::new()
            .route("/api/v1/write", axum::routing::post(receive))
            .with_state(me.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (me, addr)
    }

    async fn got(&self) -> Vec<(u16, HeaderMap, Bytes)> {
        self.inner.lock().await.got.clone()
    }

    async fn wait_for(&self, what: &str, check: impl Fn(&[(u16, HeaderMap, Bytes)]) -> bool) {
        let deadline = Instant::now() + TIMEOUT;
        while !check(&self.got().await) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let mut st = r.inner.lock().await;
    let i = st.got.len().min(st.script.len() - 1);
    let status = st.script[i];
    st.got.push((status, headers, body));
    StatusCode::from_u16(status).unwrap()
}

fn decode(body: &[u8]) -> WriteRequest {
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .expect("snappy block format");
    WriteRequest::decode(raw.as_slice()).expect("a prompb WriteRequest")
}

/// The value of `name` in a request, if it carries that series.
fn value_of(req: &WriteRequest, name: &str) -> Option<f64> {
    req.timeseries
        .iter()
        .find(|ts| ts.labels.iter().any(|l| l.name == "__name__" && l.value == name))
        .map(|ts| ts.samples[0].value)
}

/// One cumulative counter `rw_test_total` = `v` over OTLP/gRPC.
async fn send_counter(spindle: &Running, v: f64) {
    let point = NumberDataPoint {
        time_unix_nano: now_nanos(),
        ..testing::point(v, vec![])
    };
    let counter = testing::metric("rw_test", "", testing::counter(vec![point]));
    let req = testing::metrics_request(vec![kv("service.name", "rw-test")], vec![counter]);
    MetricsServiceClient::connect(format!("http://{}", spindle.grpc_addr))
        .await
        .unwrap()
        .export(req)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_receiver_answering_500_then_204_gets_the_request_again() {
    let (receiver, addr) = Receiver::start(vec![500, 204]).await;
    let spindle = spindle_pushing_to(format!("http://{addr}/api/v1/write")).await;
    send_counter(&spindle, 42.0).await;
    receiver
        .wait_for("a 500 answer followed by an accepted retry", |got| {
            got.len() >= 2 && got[0].0 == 500 && got[1].0 == 204
        })
        .await;
    let got = receiver.got().await;
    assert_eq!(got[0].2, got[1].2, "the retry sends the same request");
    let (_, headers, body) = &got[1];
    for (name, want) in [
        ("content-encoding", "snappy"),
        ("content-type", "application/x-protobuf"),
        ("x-prometheus-remote-write-version", "0.1.0"),
    ] {
        assert_eq!(headers.get(name).and_then(|v| v.to_str().ok()), Some(want), "{name}");
    }
    let req = decode(body);
    assert_eq!(value_of(&req, "rw_test_total"), Some(42.0), "{req:?}");
    let deadline = Instant::now() + TIMEOUT;
    while spindle.telemetry.remote_write.sent_total() == 0 {
        assert!(Instant::now() < deadline, "sent samples never counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(spindle.telemetry.remote_write.retries_total() >= 1);
    assert_eq!(
        spindle
            .telemetry
            .remote_write
            .dropped_total(RemoteWriteDropReason::Permanent),
        0
    );
    spindle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_receiver_answering_400_gets_each_request_once_and_spindle_counts_the_drop() {
    let (receiver, addr) = Receiver::start(vec![400]).await;
    let spindle = spindle_pushing_to(format!("http://{addr}/api/v1/write")).await;
    send_counter(&spindle, 7.0).await;
    receiver
        .wait_for("two snapshots refused with 400", |got| got.len() >= 2)
        .await;
    let deadline = Instant::now() + TIMEOUT;
    while spindle
        .telemetry
        .remote_write
        .dropped_total(RemoteWriteDropReason::Permanent)
        < 2
    {
        assert!(Instant::now() < deadline, "permanent drops never counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = receiver.got().await;
    assert_ne!(
        got[0].2, got[1].2,
        "a refused request is not retried: the next one is a new snapshot"
    );
    assert_eq!(spindle.telemetry.remote_write.retries_total(), 0);
    assert_eq!(spindle.telemetry.remote_write.sent_total(), 0);
    let text = spindle_e2e::fetch_openmetrics(spindle.prometheus_addr).await;
    let line = text
        .lines()
        .find(|l| l.starts_with("spindle_remote_write_dropped_samples_total{reason=\"permanent_error\"}"))
        .expect("the drop counter is exposed");
    let n: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 2, "{line}");
    spindle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_pushes_a_last_snapshot() {
    let (receiver, addr) = Receiver::start(vec![204]).await;
    let spindle = start_spindle(|c| {
        let rw = &mut c.exporters.remote_write;
        rw.endpoint = Some(format!("http://{addr}/api/v1/write"));
        // The first periodic snapshot would come an hour after start: only shutdown pushes.
        rw.interval = DurationStr(Duration::from_secs(3600));
    })
    .await;
    send_counter(&spindle, 5.0).await;
    let telemetry = spindle.telemetry.clone();
    // What proves the shutdown push is a snapshot taken after shutdown began, as the last request.
    let shutdown_began_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    tokio::time::timeout(Duration::from_secs(30), spindle.shutdown())
        .await
        .expect("shutdown is bounded")
        .unwrap();
    let got = receiver.got().await;
    let last = decode(&got.last().expect("the last snapshot was pushed").2);
    assert_eq!(value_of(&last, "rw_test_total"), Some(5.0));
    let ts = last
        .timeseries
        .iter()
        .flat_map(|t| &t.samples)
        .map(|s| s.timestamp)
        .min();
    assert!(
        ts.is_some_and(|t| t >= shutdown_began_ms),
        "last request is a snapshot taken during shutdown: {ts:?} < {shutdown_began_ms}"
    );
    assert!(telemetry.remote_write.sent_total() >= 1);
}
