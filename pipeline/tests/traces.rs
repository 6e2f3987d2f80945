//! Trace forwarding and span metrics end to end, in-process: spans go in over OTLP, come out at a
//! downstream OTLP receiver that can be told to fail, and span metrics with exemplars appear on
//! `/metrics`. Shows: every span arrives once; retries through failures and downtime lose nothing;
//! a full queue makes receivers answer "overloaded"; permanent errors drop and count; exemplars
//! only ever name forwarded spans; shutdown flushes the queue, and when the backend is down or
//! hanging it stops at `shutdown_timeout` and counts every span it could not deliver.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{closed_port, hanging_backend, kv, traces_request};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::trace::v1::Span;
use parking_lot::Mutex;
use prost::Message;
use spindle::app::{Running, start};
use spindle::config::{ByteSize, Config, DurationStr, OtlpProtocol};
use spindle::telemetry::DropReason;
use tokio_util::sync::CancellationToken;

/// What the downstream answers.
#[derive(Clone, Copy, Debug)]
enum Behaviour {
    Ok,
    /// Fail this many requests with UNAVAILABLE, then accept.
    FailFirst(usize),
    /// Refuse everything with INVALID_ARGUMENT (permanent).
    Reject,
}

#[derive(Clone)]
struct Downstream {
    received: Arc<Mutex<Vec<Span>>>,
    requests: Arc<AtomicUsize>,
    behaviour: Behaviour,
}

#[tonic::async_trait]
impl TraceService for Downstream {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let n = self.requests.fetch_add(1, Ordering::SeqCst);
        match self.behaviour {
            Behaviour::FailFirst(k) if n < k => return Err(tonic::Status::unavailable("warming up")),
            Behaviour::Reject => return Err(tonic::Status::invalid_argument("no thanks")),
            _ => {}
        }
        let spans = req
            .into_inner()
            .resource_spans
            .into_iter()
            .flat_map(|rs| rs.scope_spans)
            .flat_map(|ss| ss.spans);
        self.received.lock().extend(spans);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Downstream {
    fn new(behaviour: Behaviour) -> Self {
        Self {
            received: Default::default(),
            requests: Default::default(),
            behaviour,
        }
    }

    /// Serves on `addr` (port 0 for any) until `stop` is cancelled; returns the bound address.
    async fn serve(&self, addr: SocketAddr, stop: CancellationToken) -> SocketAddr {
        self.serve_with(addr, stop, tonic::transport::Server::builder()).await
    }

    async fn serve_with(
        &self,
        addr: SocketAddr,
        stop: CancellationToken,
        mut builder: tonic::transport::Server,
    ) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let svc = TraceServiceServer::new(self.clone()).accept_compressed(tonic::codec::CompressionEncoding::Gzip);
        tokio::spawn(builder.add_service(svc).serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            stop.cancelled_owned(),
        ));
        addr
    }

    fn trace_ids(&self) -> Vec<[u8; 16]> {
        self.received
            .lock()
            .iter()
            .map(|s| s.trace_id.as_slice().try_into().unwrap())
            .collect()
    }

    async fn wait_for(&self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.received.lock().len() < n {
            assert!(
                Instant::now() < deadline,
                "downstream got {} of {n} spans",
                self.received.lock().len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn spindle(downstream: Option<SocketAddr>, tweak: impl FnOnce(&mut Config)) -> Running {
    let c = common::config(|c| {
        let ex = &mut c.exporters.traces.otlp;
        ex.endpoint = downstream.map(|a| format!("http://{a}"));
        ex.batch_timeout = DurationStr(Duration::from_millis(10));
        ex.retry_initial_backoff = DurationStr(Duration::from_millis(20));
        ex.retry_max_backoff = DurationStr(Duration::from_millis(200));
        tweak(c);
    });
    start(c).await.unwrap()
}

/// `n` server spans of service `svc`, each in its own trace; trace ids start at `first`.
fn spans(first: u32, n: u32) -> ExportTraceServiceRequest {
    let spans = (first..first + n)
        .map(|i| {
            let mut trace_id = vec![0xab; 16];
            trace_id[12..].copy_from_slice(&i.to_be_bytes());
            Span {
                trace_id,
                span_id: (u64::from(i) + 1).to_be_bytes().to_vec(),
                name: "GET /users/{id}".into(),
                kind: 2,
                start_time_unix_nano: 1_700_000_000_000_000_000,
                end_time_unix_nano: 1_700_000_000_000_000_000 + u64::from(i % 7 + 1) * 3_000_000,
                ..Default::default()
            }
        })
        .collect();
    traces_request(vec![kv("service.name", "svc")], spans)
}

/// A client of Spindle's OTLP/gRPC trace receiver.
async fn client(r: &Running) -> TraceServiceClient<tonic::transport::Channel> {
    TraceServiceClient::connect(format!("http://{}", r.grpc_addr))
        .await
        .unwrap()
}

/// A downstream behaving as `behaviour` (stopped by the token) and a Spindle forwarding to it.
async fn forwarding(behaviour: Behaviour, tweak: impl FnOnce(&mut Config)) -> (Downstream, CancellationToken, Running) {
    let down = Downstream::new(behaviour);
    let stop = CancellationToken::new();
    let addr = down.serve("127.0.0.1:0".parse().unwrap(), stop.clone()).await;
    let r = spindle(Some(addr), tweak).await;
    (down, stop, r)
}

async fn openmetrics(r: &Running) -> String {
    spindle_e2e::fetch_openmetrics(r.prometheus_addr).await
}

/// Trace ids of every exemplar in an OpenMetrics exposition, for lines starting with `prefix`.
fn exemplar_trace_ids(text: &str, prefix: &str) -> Vec<[u8; 16]> {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.split_once("trace_id=\"").map(|(_, rest)| &rest[..32]))
        .map(|hex| {
            let mut id = [0u8; 16];
            for (i, b) in id.iter_mut().enumerate() {
                *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
            }
            id
        })
        .collect()
}

fn metric_value(text: &str, line_prefix: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with(line_prefix))?;
    line[line_prefix.len()..].split_whitespace().next()?.parse().ok()
}

async fn wait_until(what: &str, within: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_span_arrives_once_and_exemplars_name_forwarded_spans() {
    let (down, stop, r) = forwarding(Behaviour::Ok, |_| {}).await;
    let mut client = client(&r).await;
    for batch in 0..10 {
        client.export(spans(batch * 50, 50)).await.unwrap();
    }
    down.wait_for(500, Duration::from_secs(10)).await;
    let got = down.trace_ids();
    assert_eq!(got.len(), 500, "each span exactly once");
    let unique: HashSet<_> = got.iter().collect();
    assert_eq!(unique.len(), 500);
    let sent: HashSet<[u8; 16]> = (0..10)
        .flat_map(|b| spans(b * 50, 50).resource_spans[0].scope_spans[0].spans.clone())
        .map(|s| s.trace_id.try_into().unwrap())
        .collect();
    assert_eq!(
        unique.into_iter().copied().collect::<HashSet<_>>(),
        sent,
        "trace ids unchanged"
    );

    let mut text = String::new();
    // The backend has every span; its answers may still be on their way back (several export
    // requests are in flight at once), and exemplars are published as each answer arrives.
    wait_until(
        "every answer, and span metrics with exemplars",
        Duration::from_secs(5),
        async || {
            text = openmetrics(&r).await;
            text.contains("spindle_exporter_sent_spans_total 500")
                && !exemplar_trace_ids(&text, "traces_span_metrics_duration_seconds_bucket").is_empty()
                && !exemplar_trace_ids(&text, "traces_span_metrics_calls_total").is_empty()
        },
    )
    .await;
    let calls = "traces_span_metrics_calls_total{service_name=\"svc\",span_kind=\"SPAN_KIND_SERVER\",span_name=\"GET /users/{id}\",status_code=\"STATUS_CODE_UNSET\"}";
    assert_eq!(metric_value(&text, calls), Some(500.0), "{text}");
    for id in exemplar_trace_ids(&text, "traces_span_metrics") {
        assert!(sent.contains(&id), "exemplar names a span that was not forwarded");
    }
    assert!(text.contains("spindle_exporter_sent_spans_total 500"), "{text}");
    r.shutdown().await.unwrap();
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_then_recovering_downstream_loses_nothing() {
    let (down, stop, r) = forwarding(Behaviour::FailFirst(3), |_| {}).await;
    let mut client = client(&r).await;
    client.export(spans(0, 100)).await.unwrap();
    down.wait_for(100, Duration::from_secs(10)).await;
    assert_eq!(down.trace_ids().len(), 100);
    assert!(down.requests.load(Ordering::SeqCst) >= 4);
    let text = openmetrics(&r).await;
    assert!(
        metric_value(&text, "spindle_exporter_retries_total").unwrap() >= 3.0,
        "{text}"
    );
    r.shutdown().await.unwrap();
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_downstream_that_is_down_for_a_while_loses_nothing() {
    // Reserve a port, leave it closed while spans arrive, then start the downstream on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let r = spindle(Some(port), |_| {}).await;
    let mut client = client(&r).await;
    client.export(spans(0, 40)).await.unwrap();
    client.export(spans(40, 40)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let text = openmetrics(&r).await;
    assert!(
        metric_value(&text, "spindle_exporter_queue_bytes").unwrap() > 0.0,
        "spans wait in the queue"
    );
    assert!(
        exemplar_trace_ids(&text, "traces_span_metrics").is_empty(),
        "no exemplar before the spans are forwarded"
    );
    let down = Downstream::new(Behaviour::Ok);
    let stop = CancellationToken::new();
    down.serve(port, stop.clone()).await;
    down.wait_for(80, Duration::from_secs(10)).await;
    assert_eq!(down.trace_ids().iter().collect::<HashSet<_>>().len(), 80);
    r.shutdown().await.unwrap();
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_makes_receivers_answer_overloaded_and_nothing_is_counted_twice() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let r = spindle(Some(port), |c| {
        c.receivers.otlp.max_request_size = ByteSize(16 * 1024);
        c.exporters.traces.otlp.queue_max_bytes = ByteSize(16 * 1024);
    })
    .await;
    let mut client = client(&r).await;
    // A first batch goes in flight and keeps retrying (the backend is down); in flight it holds
    // only its encoded body, so the queue behind it is what fills up.
    client.export(spans(0, 20)).await.unwrap();
    let mut accepted = 20u32;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut refused = None;
    for b in 1..100 {
        match client.export(spans(b * 20, 20)).await {
            Ok(_) => accepted += 20,
            Err(status) => {
                refused = Some(status);
                break;
            }
        }
    }
    let status = refused.expect("the queue filled up");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    use tonic_types::StatusExt;
    assert!(
        status.get_details_retry_info().is_some(),
        "retryable: carries RetryInfo"
    );
    // Over HTTP the same condition is a 503 with Retry-After.
    let resp = reqwest::Client::new()
        .post(format!("http://{}/v1/traces", r.http_addr))
        .header("content-type", "application/x-protobuf")
        .body(spans(10_000, 20).encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    // Refused spans were not counted in span metrics.
    let text = openmetrics(&r).await;
    let calls = "traces_span_metrics_calls_total{service_name=\"svc\",span_kind=\"SPAN_KIND_SERVER\",span_name=\"GET /users/{id}\",status_code=\"STATUS_CODE_UNSET\"}";
    assert_eq!(metric_value(&text, calls), Some(f64::from(accepted)), "{text}");
    // When the backend comes up, everything accepted arrives.
    let down = Downstream::new(Behaviour::Ok);
    let stop = CancellationToken::new();
    down.serve(port, stop.clone()).await;
    down.wait_for(accepted as usize, Duration::from_secs(10)).await;
    assert_eq!(down.trace_ids().len(), accepted as usize);
    r.shutdown().await.unwrap();
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn permanent_errors_drop_and_count_and_leave_no_dangling_exemplars() {
    let (down, stop, r) = forwarding(Behaviour::Reject, |_| {}).await;
    let mut client = client(&r).await;
    client.export(spans(0, 30)).await.unwrap();
    let mut text = String::new();
    wait_until("the drop to be counted", Duration::from_secs(5), async || {
        text = openmetrics(&r).await;
        metric_value(
            &text,
            "spindle_exporter_dropped_spans_total{reason=\"permanent_error\"}",
        ) == Some(30.0)
    })
    .await;
    assert_eq!(
        down.requests.load(Ordering::SeqCst),
        1,
        "a permanent error is not retried"
    );
    assert!(
        exemplar_trace_ids(&text, "traces_span_metrics").is_empty(),
        "exemplars of dropped spans never appear:\n{text}"
    );
    let calls = "traces_span_metrics_calls_total{service_name=\"svc\",span_kind=\"SPAN_KIND_SERVER\",span_name=\"GET /users/{id}\",status_code=\"STATUS_CODE_UNSET\"}";
    assert_eq!(metric_value(&text, calls), Some(30.0), "the calls still count");
    assert_eq!(metric_value(&text, "spindle_exporter_queue_bytes"), Some(0.0));
    r.shutdown().await.unwrap();
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_flushes_the_queue() {
    // A long batch window: spans are still queued when shutdown begins.
    let (down, stop, r) = forwarding(Behaviour::Ok, |c| {
        c.exporters.traces.otlp.batch_timeout = DurationStr(Duration::from_secs(30))
    })
    .await;
    let mut client = client(&r).await;
    client.export(spans(0, 25)).await.unwrap();
    assert!(down.received.lock().is_empty());
    let t = Instant::now();
    r.shutdown().await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(10), "bounded flush");
    assert_eq!(down.trace_ids().len(), 25, "queued spans were flushed on shutdown");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn http_protobuf_exporter_honours_retry_after() {
    use axum::routing::post;
    let hits = Arc::new(AtomicUsize::new(0));
    let got = Arc::new(Mutex::new(Vec::<Span>::new()));
    let (h, g) = (hits.clone(), got.clone());
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |headers: http::HeaderMap, body: axum::body::Bytes| {
            let (h, g) = (h.clone(), g.clone());
            async move {
                if h.fetch_add(1, Ordering::SeqCst) == 0 {
                    return (
                        http::StatusCode::SERVICE_UNAVAILABLE,
                        [("retry-after", "1")],
                        Vec::new(),
                    );
                }
                assert_eq!(headers["content-encoding"], "gzip");
                let mut raw = Vec::new();
                std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut raw).unwrap();
                let req = ExportTraceServiceRequest::decode(&raw[..]).unwrap();
                g.lock().extend(
                    req.resource_spans
                        .into_iter()
                        .flat_map(|r| r.scope_spans)
                        .flat_map(|s| s.spans),
                );
                (
                    http::StatusCode::OK,
                    [("retry-after", "0")],
                    ExportTraceServiceResponse::default().encode_to_vec(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let r = spindle(None, |c| {
        c.exporters.traces.otlp.endpoint = Some(format!("http://{addr}"));
        c.exporters.traces.otlp.protocol = OtlpProtocol::HttpProtobuf;
    })
    .await;
    let mut client = client(&r).await;
    let t = Instant::now();
    client.export(spans(0, 10)).await.unwrap();
    wait_until("spans over HTTP", Duration::from_secs(10), async || {
        got.lock().len() == 10
    })
    .await;
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "waited for Retry-After: 1 ({:?})",
        t.elapsed()
    );
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    r.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn without_an_exporter_span_metrics_still_work_and_exemplars_name_received_spans() {
    let r = spindle(None, |_| {}).await;
    let mut client = client(&r).await;
    client.export(spans(0, 5)).await.unwrap();
    let text = openmetrics(&r).await;
    let ids = exemplar_trace_ids(&text, "traces_span_metrics");
    assert!(!ids.is_empty(), "{text}");
    let sent: HashSet<[u8; 16]> = spans(0, 5).resource_spans[0].scope_spans[0]
        .spans
        .iter()
        .map(|s| s.trace_id.clone().try_into().unwrap())
        .collect();
    assert!(ids.iter().all(|i| sent.contains(i)));
    // Exemplars go to the series their counts created (they are written after the counts).
    assert!(!text.contains("otel_metric_overflow"), "{text}");
    let calls = "traces_span_metrics_calls_total{service_name=\"svc\",span_kind=\"SPAN_KIND_SERVER\",span_name=\"GET /users/{id}\",status_code=\"STATUS_CODE_UNSET\"} 5.0 # {trace_id=";
    assert!(text.contains(calls), "{text}");
    r.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn https_endpoint_is_reached_over_tls_with_a_configured_ca() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_pem, key_pem) = (cert.cert.pem(), cert.signing_key.serialize_pem());
    let ca_file = std::env::temp_dir().join(format!("spindle-test-ca-{}.pem", std::process::id()));
    std::fs::write(&ca_file, &cert_pem).unwrap();
    let tls =
        tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(&cert_pem, &key_pem));
    let down = Downstream::new(Behaviour::Ok);
    let stop = CancellationToken::new();
    let builder = tonic::transport::Server::builder().tls_config(tls).unwrap();
    let addr = down
        .serve_with("127.0.0.1:0".parse().unwrap(), stop.clone(), builder)
        .await;
    let r = spindle(None, |c| {
        c.exporters.traces.otlp.endpoint = Some(format!("https://localhost:{}", addr.port()));
        c.exporters.traces.otlp.ca_file = Some(ca_file.display().to_string());
    })
    .await;
    client(&r).await.export(spans(0, 7)).await.unwrap();
    down.wait_for(7, Duration::from_secs(10)).await;
    r.shutdown().await.unwrap();

    // Without the CA the server is not trusted: nothing is delivered, the batch waits for retry.
    let down2 = Downstream::new(Behaviour::Ok);
    let builder = tonic::transport::Server::builder()
        .tls_config(
            tonic::transport::ServerTlsConfig::new()
                .identity(tonic::transport::Identity::from_pem(&cert_pem, &key_pem)),
        )
        .unwrap();
    let addr2 = down2
        .serve_with("127.0.0.1:0".parse().unwrap(), stop.clone(), builder)
        .await;
    let r = spindle(None, |c| {
        c.exporters.traces.otlp.endpoint = Some(format!("https://localhost:{}", addr2.port()))
    })
    .await;
    client(&r).await.export(spans(0, 3)).await.unwrap();
    wait_until("a failed TLS attempt", Duration::from_secs(10), async || {
        metric_value(&openmetrics(&r).await, "spindle_exporter_retries_total").unwrap_or(0.0) >= 1.0
    })
    .await;
    assert!(
        down2.received.lock().is_empty(),
        "an untrusted server must not receive spans"
    );
    let _ = std::fs::remove_file(&ca_file);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn span_metrics_past_the_limit_fold_with_exemplars_of_forwarded_spans() {
    let (down, stop, r) = forwarding(Behaviour::Ok, |c| c.processors.cardinality.max_series_per_metric = 4).await;
    let mut client = client(&r).await;
    // 20 spans, each with its own name: 3 series per metric are admitted, 17 spans fold.
    let mut req = spans(0, 20);
    for (i, s) in req.resource_spans[0].scope_spans[0].spans.iter_mut().enumerate() {
        s.name = format!("op-{i:02}");
    }
    client.export(req.clone()).await.unwrap();
    down.wait_for(20, Duration::from_secs(10)).await;
    let overflow = "traces_span_metrics_calls_total{otel_metric_overflow=\"true\"}";
    let mut text = String::new();
    wait_until("overflow series with an exemplar", Duration::from_secs(5), async || {
        text = openmetrics(&r).await;
        !exemplar_trace_ids(&text, overflow).is_empty()
    })
    .await;
    assert_eq!(metric_value(&text, overflow), Some(17.0), "{text}");
    let total: f64 = text
        .lines()
        .filter(|l| l.starts_with("traces_span_metrics_calls_total{"))
        .map(|l| {
            l.split("} ")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .parse::<f64>()
                .unwrap()
        })
        .sum();
    assert_eq!(total, 20.0, "every span counted once:\n{text}");
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("traces_span_metrics_calls_total{"))
            .count(),
        4
    );
    // The overflow series' exemplars name spans that folded, and that the backend received.
    let folded: HashSet<[u8; 16]> = req.resource_spans[0].scope_spans[0]
        .spans
        .iter()
        .filter(|s| !text.contains(&format!("span_name=\"{}\"", s.name)))
        .map(|s| s.trace_id.clone().try_into().unwrap())
        .collect();
    assert_eq!(folded.len(), 17);
    let forwarded: HashSet<[u8; 16]> = down.trace_ids().into_iter().collect();
    for prefix in [
        overflow,
        "traces_span_metrics_duration_seconds_bucket{otel_metric_overflow=\"true\"",
    ] {
        let ids = exemplar_trace_ids(&text, prefix);
        assert!(!ids.is_empty(), "no exemplar on {prefix}:\n{text}");
        for id in ids {
            assert!(folded.contains(&id) && forwarded.contains(&id), "{prefix}: {id:?}");
        }
    }
    assert!(
        text.contains(
            "spindle_cardinality_folded_points_total{metric=\"traces_span_metrics_calls\",reason=\"max_series_per_metric\"} 17"
        ),
        "{text}"
    );
    r.shutdown().await.unwrap();
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_with_the_backend_down_is_bounded_and_counts_every_acknowledged_span() {
    let r = spindle(Some(closed_port()), |c| {
        c.exporters.traces.otlp.shutdown_timeout = DurationStr(Duration::from_secs(1));
    })
    .await;
    let telemetry = r.telemetry.clone();
    let mut client = client(&r).await;
    // 6,000 acknowledged spans: one batch retrying, two more queued behind it.
    for b in 0..12 {
        client.export(spans(b * 500, 500)).await.unwrap();
    }
    wait_until("the export to be retrying", Duration::from_secs(5), async || {
        telemetry.traces.retries_total() >= 2
    })
    .await;
    let t = Instant::now();
    r.shutdown().await.unwrap();
    let took = t.elapsed();
    assert!(
        took < Duration::from_millis(2000),
        "shutdown took {took:?} with shutdown_timeout 1s"
    );
    assert_eq!(telemetry.traces.sent_total(), 0);
    assert_eq!(
        telemetry.traces.dropped_total(DropReason::Shutdown),
        6000,
        "every acknowledged span is delivered or counted"
    );
    assert_eq!(telemetry.traces.dropped_total(DropReason::Permanent), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_cuts_off_an_export_in_flight_to_a_hanging_backend_and_counts_it() {
    for protocol in [OtlpProtocol::Grpc, OtlpProtocol::HttpProtobuf] {
        let (addr, connections) = hanging_backend().await;
        let r = spindle(Some(addr), |c| {
            let ex = &mut c.exporters.traces.otlp;
            ex.protocol = protocol;
            // The attempt would hang for a minute; shutdown must not wait for it.
            ex.timeout = DurationStr(Duration::from_secs(60));
            ex.shutdown_timeout = DurationStr(Duration::from_secs(1));
        })
        .await;
        let telemetry = r.telemetry.clone();
        let mut client = client(&r).await;
        client.export(spans(0, 300)).await.unwrap();
        client.export(spans(300, 100)).await.unwrap();
        wait_until("the backend to hold a connection", Duration::from_secs(5), async || {
            connections.load(Ordering::SeqCst) >= 1
        })
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let t = Instant::now();
        r.shutdown().await.unwrap();
        let took = t.elapsed();
        assert!(
            took < Duration::from_millis(2000),
            "{protocol:?}: shutdown took {took:?} with shutdown_timeout 1s"
        );
        assert_eq!(
            telemetry.traces.retries_total(),
            0,
            "{protocol:?}: the one attempt never completed"
        );
        assert_eq!(telemetry.traces.sent_total(), 0);
        assert_eq!(
            telemetry.traces.dropped_total(DropReason::Shutdown),
            400,
            "{protocol:?}: the batch in flight is counted as not delivered"
        );
    }
}
