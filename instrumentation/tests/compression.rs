//! `OTEL_EXPORTER_OTLP_COMPRESSION` and its per-signal variants, end to end: spindle-instrument
//! exports spans and metrics, over gRPC and HTTP/protobuf, to an OTLP receiver in this test (real
//! tonic and axum servers, which decode what they accept) that records each request's
//! `grpc-encoding` / `Content-Encoding` header and, over gRPC, the frame's compressed flag; and, with
//! `none`, to a real Spindle, where the data must show up in `/metrics`.

use std::collections::HashMap;
use std::io::Read as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use prost::Message as _;
use spindle_e2e::{fetch_text, start_spindle};
use spindle_instrument::{Builder, Instrumentation};

const TRACES_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
const METRICS_PATH: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

fn env(vars: Vec<(&'static str, String)>) -> impl Fn(&str) -> Option<String> + Send + Sync + 'static {
    let map: HashMap<&'static str, String> = vars.into_iter().collect();
    move |k: &str| map.get(k).cloned()
}

/// One export request as it came over the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Wire {
    /// `traces` or `metrics`.
    signal: &'static str,
    /// The `grpc-encoding` (gRPC) or `Content-Encoding` (HTTP) header.
    encoding: Option<String>,
    /// gRPC: the frame's compressed flag; HTTP: `None`.
    flag: Option<u8>,
}

/// What the receiver got: the requests as sent, and the span and metric names decoded from them.
#[derive(Clone, Default)]
struct Seen {
    wire: Arc<Mutex<Vec<Wire>>>,
    spans: Arc<Mutex<Vec<String>>>,
    metrics: Arc<Mutex<Vec<String>>>,
}

impl Seen {
    fn wire(&self) -> Vec<Wire> {
        self.wire.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn spans(&self) -> Vec<String> {
        self.spans.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn metrics(&self) -> Vec<String> {
        self.metrics.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn traces(&self, req: &ExportTraceServiceRequest) {
        let names = req
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .map(|s| s.name.clone());
        self.spans.lock().unwrap_or_else(PoisonError::into_inner).extend(names);
    }

    fn metrics_of(&self, req: &ExportMetricsServiceRequest) {
        let names = req
            .resource_metrics
            .iter()
            .flat_map(|r| &r.scope_metrics)
            .flat_map(|s| &s.metrics)
            .map(|m| m.name.clone());
        self.metrics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(names);
    }

    fn record(&self, signal: &'static str, encoding: Option<String>, flag: Option<u8>) {
        self.wire
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Wire { signal, encoding, flag });
    }
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

struct Traces(Seen);
struct Metrics(Seen);

#[tonic::async_trait]
impl TraceService for Traces {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.traces(request.get_ref());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Metrics {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.metrics_of(request.get_ref());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// Records a gRPC request's `grpc-encoding` and its (single) frame's compressed flag, then hands
/// the request on unchanged to the tonic service.
async fn record_grpc(State(seen): State<Seen>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
    let signal = if parts.uri.path() == TRACES_PATH {
        "traces"
    } else {
        "metrics"
    };
    seen.record(signal, header(&parts.headers, "grpc-encoding"), bytes.first().copied());
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

/// An OTLP/HTTP export: recorded, decompressed as its `Content-Encoding` says, decoded.
async fn http_export(seen: Seen, signal: &'static str, headers: HeaderMap, body: Bytes) -> Response {
    let encoding = header(&headers, "content-encoding");
    seen.record(signal, encoding.clone(), None);
    let raw = match encoding.as_deref() {
        None => body.to_vec(),
        Some("gzip") => {
            let mut raw = Vec::new();
            if flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut raw).is_err() {
                return (axum::http::StatusCode::BAD_REQUEST, "bad gzip").into_response();
            }
            raw
        }
        Some(_) => return (axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE, "encoding").into_response(),
    };
    let decoded = if signal == "traces" {
        ExportTraceServiceRequest::decode(raw.as_slice()).map(|r| seen.traces(&r))
    } else {
        ExportMetricsServiceRequest::decode(raw.as_slice()).map(|r| seen.metrics_of(&r))
    };
    match decoded {
        Ok(()) => ([("content-type", "application/x-protobuf")], Vec::<u8>::new()).into_response(),
        Err(_) => (axum::http::StatusCode::BAD_REQUEST, "not OTLP protobuf").into_response(),
    }
}

/// The receiver: OTLP/gRPC (tonic, gzip accepted) and OTLP/HTTP (axum) on `127.0.0.1:0`; returns
/// the gRPC and HTTP endpoints.
async fn receiver(seen: &Seen) -> (String, String) {
    use tonic::codec::CompressionEncoding::Gzip;
    let grpc = axum::Router::new()
        .route_service(
            TRACES_PATH,
            TraceServiceServer::new(Traces(seen.clone())).accept_compressed(Gzip),
        )
        .route_service(
            METRICS_PATH,
            MetricsServiceServer::new(Metrics(seen.clone())).accept_compressed(Gzip),
        )
        .layer(axum::middleware::from_fn_with_state(seen.clone(), record_grpc));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind gRPC");
    let grpc_addr = listener.local_addr().expect("gRPC addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(tonic::service::Routes::from(grpc))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );

    let (s1, s2) = (seen.clone(), seen.clone());
    let http = axum::Router::new()
        .route(
            "/v1/traces",
            axum::routing::post(move |h: HeaderMap, b: Bytes| http_export(s1.clone(), "traces", h, b)),
        )
        .route(
            "/v1/metrics",
            axum::routing::post(move |h: HeaderMap, b: Bytes| http_export(s2.clone(), "metrics", h, b)),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind HTTP");
    let http_addr = listener.local_addr().expect("HTTP addr");
    tokio::spawn(async move { axum::serve(listener, http).await });
    (format!("http://{grpc_addr}"), format!("http://{http_addr}"))
}

/// Builds instrumentation from `vars` only, exporting with `protocol` to `endpoint`.
fn build(protocol: &str, endpoint: String, mut vars: Vec<(&'static str, String)>) -> Instrumentation {
    vars.push(("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.into()));
    vars.push(("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint));
    Builder::new()
        .with_env_lookup(env(vars))
        .with_log_writer(std::io::sink)
        .with_metric_export_interval(Duration::from_secs(3600))
        .with_process_metrics(false)
        .with_runtime_metrics(false)
        .build()
        .unwrap_or_else(|e| panic!("build: {e}"))
}

/// Records one span (`compression-op`) and one counter (`compression.requests`, 5), flushes both
/// signals (off the runtime: the flush waits for the exporters) and shuts down.
async fn export(inst: Instrumentation) {
    let Instrumentation { dispatch, guard } = inst;
    tracing::dispatcher::with_default(&dispatch, || {
        tracing::info_span!("compression-op").in_scope(|| {});
    });
    guard.meter().u64_counter("compression.requests").build().add(5, &[]);
    tokio::task::spawn_blocking(move || {
        let flushed = guard.force_flush();
        drop(guard);
        flushed
    })
    .await
    .expect("flush task")
    .unwrap_or_else(|e| panic!("export: {e}"));
}

/// The requests of `signal`, which must be some.
fn of(wire: &[Wire], signal: &str) -> Vec<Wire> {
    let of: Vec<Wire> = wire.iter().filter(|w| w.signal == signal).cloned().collect();
    assert!(!of.is_empty(), "no {signal} request: {wire:?}");
    of
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn none_sends_uncompressed_bodies_and_each_signal_variable_overrides_the_general_one() {
    for protocol in ["grpc", "http/protobuf"] {
        let grpc = protocol == "grpc";
        // What a request compressed as `gzip` (or not) looks like on this protocol.
        let gzip = Wire {
            signal: "",
            encoding: Some("gzip".into()),
            flag: grpc.then_some(1),
        };
        let none = Wire {
            signal: "",
            encoding: None,
            flag: grpc.then_some(0),
        };
        let looks = |w: &Wire| Wire {
            signal: "",
            ..w.clone()
        };
        // (case, variables, how traces and metrics requests look)
        let cases = [
            ("default", vec![], &gzip, &gzip),
            (
                "none",
                vec![("OTEL_EXPORTER_OTLP_COMPRESSION", " None ".into())],
                &none,
                &none,
            ),
            (
                "traces gzip over general none",
                vec![
                    ("OTEL_EXPORTER_OTLP_COMPRESSION", "none".into()),
                    ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip".into()),
                ],
                &gzip,
                &none,
            ),
            (
                "metrics none",
                vec![("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "none".into())],
                &gzip,
                &none,
            ),
        ];
        for (case, vars, traces, metrics) in cases {
            let seen = Seen::default();
            let (grpc_endpoint, http_endpoint) = receiver(&seen).await;
            let endpoint = if grpc { grpc_endpoint } else { http_endpoint };
            export(build(protocol, endpoint, vars)).await;
            let wire = seen.wire();
            for w in of(&wire, "traces") {
                assert_eq!(&looks(&w), traces, "{protocol}, {case}: traces {wire:?}");
            }
            for w in of(&wire, "metrics") {
                assert_eq!(&looks(&w), metrics, "{protocol}, {case}: metrics {wire:?}");
            }
            // What was sent was decoded by the receiver: the data arrived.
            assert_eq!(seen.spans(), ["compression-op"], "{protocol}, {case}");
            assert!(
                seen.metrics().iter().any(|m| m == "compression.requests"),
                "{protocol}, {case}: {:?}",
                seen.metrics()
            );
        }
    }
}

#[tokio::test]
async fn an_unsupported_compression_fails_the_build_naming_the_variable() {
    for (var, value) in [
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd"),
        ("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "brotli"),
    ] {
        let err = Builder::new()
            .with_env_lookup(env(vec![(var, value.into())]))
            .with_log_writer(std::io::sink)
            .build()
            .err()
            .unwrap_or_else(|| panic!("{var}={value} must be refused"));
        let text = err.to_string();
        assert!(
            matches!(&err, spindle_instrument::InitError::InvalidEnv { name, .. } if *name == var),
            "{text}"
        );
        assert!(text.contains(value) && text.contains("`gzip` or `none`"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spindle_takes_uncompressed_spans_and_metrics_over_both_protocols() {
    let spindle = start_spindle(|_| {}).await;
    for (protocol, addr) in [("grpc", spindle.grpc_addr), ("http/protobuf", spindle.http_addr)] {
        let label = if protocol == "grpc" { "grpc" } else { "http" };
        let service = format!("uncompressed-{label}");
        let vars = vec![
            ("OTEL_SERVICE_NAME", service.clone()),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "none".into()),
        ];
        export(build(protocol, format!("http://{addr}"), vars)).await;
        let job = format!("job=\"{service}\"");
        let calls = format!("traces_span_metrics_calls_total{{service_name=\"{service}\"");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let text = fetch_text(spindle.prometheus_addr).await;
            let counter = text.lines().any(|l| {
                l.starts_with("compression_requests_total{")
                    && l.contains(&job)
                    && l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) == Some(5.0)
            });
            let span = text
                .lines()
                .any(|l| l.starts_with(&calls) && l.contains("span_name=\"compression-op\""));
            if counter && span {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{protocol}: {service}'s spans and metrics did not arrive:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    spindle.shutdown().await.expect("spindle shuts down");
}
