//! A reusable OTLP receiver for tests: a trace backend (or metrics destination) that records
//! every export request it gets.
//!
//! It plays the role Tempo, Jaeger or an OTel Collector plays behind an exporter — Spindle's
//! `exporters.traces.otlp`, or an instrumented service's OTLP SDK.
//!
//! What comes in: OTLP/gRPC `TraceService`/`MetricsService` exports (gzip or zstd) and OTLP/HTTP
//! `POST /v1/traces` and `/v1/metrics` (protobuf, optionally gzip), on `127.0.0.1:0` or on given
//! addresses ([`SinkOptions`]: a test can reserve a port, point an exporter at it, and start the
//! sink later). What goes out: the recorded requests, flattened views ([`OtlpSink::spans`],
//! [`OtlpSink::trace_ids`], [`OtlpSink::span_keys`], [`OtlpSink::metric_names`]), request counts
//! ([`OtlpSink::requests`], [`OtlpSink::refused`]) and async [`OtlpSink::wait_for`] helpers that
//! poll with a bounded deadline.
//!
//! To test retries and back-pressure it can refuse exports — gRPC `UNAVAILABLE` / HTTP 503, a
//! retryable answer in the OTLP spec — for its first N requests ([`SinkOptions::fail_first`]) or
//! from a chosen moment on ([`OtlpSink::set_reply`]). A refused request records nothing.
//!
//! At most [`MAX_RECORDED`] requests are kept; later ones are answered but only counted.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// How many export requests are kept (later ones are only counted).
pub const MAX_RECORDED: usize = 10_000;

/// Largest export request the sink decodes (gRPC message or HTTP body), 64 MiB.
pub const MAX_REQUEST_BYTES: usize = 64 << 20;

/// How to start an [`OtlpSink`]; `SinkOptions::default()` is what [`OtlpSink::start`] uses.
#[derive(Debug, Clone, Default)]
pub struct SinkOptions {
    /// Address of the OTLP/gRPC listener; `None` means `127.0.0.1:0` (any free port).
    pub grpc_addr: Option<SocketAddr>,
    /// Address of the OTLP/HTTP listener; `None` means `127.0.0.1:0` (any free port).
    pub http_addr: Option<SocketAddr>,
    /// Refuse this many first export requests (any signal, either protocol) as
    /// [`SinkReply::Unavailable`] does, recording nothing, then answer as [`OtlpSink::set_reply`]
    /// says.
    pub fail_first: u64,
}

/// How a request reached the sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkProtocol {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP with a protobuf body.
    Http,
}

/// What the sink answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkReply {
    /// Success (the default); the request is recorded.
    Accept,
    /// gRPC `UNAVAILABLE` / HTTP 503 with `Retry-After: 1`; the request is counted, not recorded.
    Unavailable,
}

/// One recorded export request.
#[derive(Debug, Clone)]
pub enum Received {
    /// A trace export.
    Traces(SinkProtocol, ExportTraceServiceRequest),
    /// A metrics export.
    Metrics(SinkProtocol, ExportMetricsServiceRequest),
}

/// A span as the sink saw it, flattened with its resource's `service.name`.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkSpan {
    /// `service.name` of the span's resource (empty when absent).
    pub service_name: String,
    /// `service.instance.id` of the span's resource (empty when absent).
    pub service_instance_id: String,
    /// Trace id, 32 lowercase hex digits.
    pub trace_id: String,
    /// Span id, 16 lowercase hex digits.
    pub span_id: String,
    /// Parent span id, 16 lowercase hex digits, or empty for a root span.
    pub parent_span_id: String,
    /// Span name.
    pub name: String,
    /// `SpanKind` as its protobuf integer (2 = server, 3 = client).
    pub kind: i32,
    /// W3C tracestate of the span.
    pub trace_state: String,
    /// Status code as its protobuf integer (0 unset, 1 ok, 2 error).
    pub status_code: i32,
    /// Span attributes with values rendered as strings.
    pub attributes: Vec<(String, String)>,
    /// Scope name.
    pub scope_name: String,
}

impl SinkSpan {
    /// The attribute's value rendered as a string, if present.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// `SpanKind::Server` as its protobuf integer.
pub const SPAN_KIND_SERVER: i32 = 2;
/// `SpanKind::Client` as its protobuf integer.
pub const SPAN_KIND_CLIENT: i32 = 3;

#[derive(Debug)]
struct State {
    received: Mutex<Vec<Received>>,
    /// The bodies of recorded OTLP/HTTP trace exports, decompressed, as they came.
    http_trace_bodies: Mutex<Vec<Vec<u8>>>,
    overflow: Mutex<u64>,
    requests: AtomicU64,
    refused: AtomicU64,
    fail_first: u64,
    reply: Mutex<SinkReply>,
    notify: Notify,
}

impl State {
    fn reply(&self) -> SinkReply {
        self.reply.lock().map(|r| r.clone()).unwrap_or(SinkReply::Accept)
    }

    /// Counts an export request and decides whether to take it: `Err(reason)` when it is one of
    /// the first `fail_first` or the reply is [`SinkReply::Unavailable`] (then it is counted as
    /// refused).
    fn admit(&self) -> Result<(), String> {
        let n = self.requests.fetch_add(1, Ordering::SeqCst);
        let reason = if n < self.fail_first {
            format!("sink failing request {} of the first {}", n + 1, self.fail_first)
        } else if self.reply() == SinkReply::Unavailable {
            "sink set to refuse".to_owned()
        } else {
            return Ok(());
        };
        self.refused.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_waiters();
        Err(reason)
    }

    fn record(&self, item: Received) {
        self.record_with_body(item, None);
    }

    /// Records `item`, and the decompressed `body` it was decoded from (an OTLP/HTTP trace export).
    fn record_with_body(&self, item: Received, body: Option<Vec<u8>>) {
        if let Ok(mut received) = self.received.lock() {
            if received.len() < MAX_RECORDED {
                received.push(item);
                if let (Some(body), Ok(mut bodies)) = (body, self.http_trace_bodies.lock()) {
                    bodies.push(body);
                }
            } else if let Ok(mut o) = self.overflow.lock() {
                *o += 1;
            }
        }
        self.notify.notify_waiters();
    }
}

/// A running sink; its servers stop when it is dropped.
#[derive(Debug)]
pub struct OtlpSink {
    /// OTLP/gRPC listener address.
    pub grpc_addr: SocketAddr,
    /// OTLP/HTTP listener address.
    pub http_addr: SocketAddr,
    state: Arc<State>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for OtlpSink {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

struct GrpcTraces(Arc<State>);
struct GrpcMetrics(Arc<State>);

#[tonic::async_trait]
impl TraceService for GrpcTraces {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.admit().map_err(tonic::Status::unavailable)?;
        self.0
            .record(Received::Traces(SinkProtocol::Grpc, request.into_inner()));
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tonic::async_trait]
impl MetricsService for GrpcMetrics {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.admit().map_err(tonic::Status::unavailable)?;
        self.0
            .record(Received::Metrics(SinkProtocol::Grpc, request.into_inner()));
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

fn decode_body(headers: &HeaderMap, body: &[u8]) -> Result<Vec<u8>, String> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/x-protobuf") {
        return Err(format!(
            "unsupported content-type {ct:?} (the sink speaks protobuf only)"
        ));
    }
    match headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()) {
        None | Some("identity") => Ok(body.to_vec()),
        Some("gzip") => {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(body), &mut out)
                .map_err(|e| format!("bad gzip: {e}"))?;
            Ok(out)
        }
        Some(other) => Err(format!("unsupported content-encoding {other:?}")),
    }
}

async fn http_export(state: Arc<State>, traces: bool, headers: HeaderMap, body: Bytes) -> axum::response::Response {
    if let Err(reason) = state.admit() {
        return (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "1")], reason).into_response();
    }
    let bytes = match decode_body(&headers, &body) {
        Ok(b) => b,
        Err(msg) => return (StatusCode::BAD_REQUEST, msg).into_response(),
    };
    let reply = if traces {
        match ExportTraceServiceRequest::decode(bytes.as_slice()) {
            Ok(req) => {
                state.record_with_body(Received::Traces(SinkProtocol::Http, req), Some(bytes));
                ExportTraceServiceResponse { partial_success: None }.encode_to_vec()
            }
            Err(e) => return (StatusCode::BAD_REQUEST, format!("bad protobuf: {e}")).into_response(),
        }
    } else {
        match ExportMetricsServiceRequest::decode(bytes.as_slice()) {
            Ok(req) => {
                state.record(Received::Metrics(SinkProtocol::Http, req));
                ExportMetricsServiceResponse { partial_success: None }.encode_to_vec()
            }
            Err(e) => return (StatusCode::BAD_REQUEST, format!("bad protobuf: {e}")).into_response(),
        }
    };
    ([(header::CONTENT_TYPE, "application/x-protobuf")], reply).into_response()
}

/// Binds a sink listener on `addr`, or on `127.0.0.1:0` when `None`.
async fn bind(addr: Option<SocketAddr>, what: &str) -> tokio::net::TcpListener {
    let addr = addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    tokio::net::TcpListener::bind(addr)
        .await
        .unwrap_or_else(|err| panic!("sink cannot listen for {what} on {addr}: {err}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn render(value: &Option<AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attr(attrs: &[KeyValue], key: &str) -> String {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .map(|kv| render(&kv.value))
        .unwrap_or_default()
}

impl OtlpSink {
    /// Starts the gRPC and HTTP receivers on `127.0.0.1:0`, accepting every request.
    ///
    /// # Panics
    /// When a listener cannot be bound.
    pub async fn start() -> OtlpSink {
        Self::start_with(SinkOptions::default()).await
    }

    /// Starts the gRPC and HTTP receivers as `options` say.
    ///
    /// # Panics
    /// When a listener cannot be bound (the message names the address).
    pub async fn start_with(options: SinkOptions) -> OtlpSink {
        let state = Arc::new(State {
            received: Mutex::new(Vec::new()),
            http_trace_bodies: Mutex::new(Vec::new()),
            overflow: Mutex::new(0),
            requests: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            fail_first: options.fail_first,
            reply: Mutex::new(SinkReply::Accept),
            notify: Notify::new(),
        });
        let grpc = bind(options.grpc_addr, "gRPC").await;
        let http = bind(options.http_addr, "HTTP").await;
        let grpc_addr = grpc.local_addr().expect("sink gRPC addr");
        let http_addr = http.local_addr().expect("sink HTTP addr");

        use tonic::codec::CompressionEncoding::{Gzip, Zstd};
        let server = tonic::transport::Server::builder()
            .add_service(
                TraceServiceServer::new(GrpcTraces(state.clone()))
                    .accept_compressed(Gzip)
                    .accept_compressed(Zstd)
                    .max_decoding_message_size(MAX_REQUEST_BYTES),
            )
            .add_service(
                MetricsServiceServer::new(GrpcMetrics(state.clone()))
                    .accept_compressed(Gzip)
                    .accept_compressed(Zstd)
                    .max_decoding_message_size(MAX_REQUEST_BYTES),
            );
        let grpc_task = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc);
            // Aborted on drop; a failure shows up as the test's wait_for timing out.
            let _ = server.serve_with_incoming(incoming).await;
        });

        let (s1, s2) = (state.clone(), state.clone());
        let router = axum::Router::new()
            .route(
                "/v1/traces",
                axum::routing::post(move |h: HeaderMap, b: Bytes| http_export(s1.clone(), true, h, b)),
            )
            .route(
                "/v1/metrics",
                axum::routing::post(move |h: HeaderMap, b: Bytes| http_export(s2.clone(), false, h, b)),
            )
            .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES));
        let http_task = tokio::spawn(async move {
            let _ = axum::serve(http, router).await;
        });

        OtlpSink {
            grpc_addr,
            http_addr,
            state,
            tasks: vec![grpc_task, http_task],
        }
    }

    /// `http://<grpc_addr>`, for an OTLP/gRPC exporter.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// `http://<http_addr>`, the OTLP/HTTP base endpoint (exporters append `/v1/traces`).
    pub fn http_endpoint(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// Sets what later requests are answered with.
    pub fn set_reply(&self, reply: SinkReply) {
        if let Ok(mut r) = self.state.reply.lock() {
            *r = reply;
        }
    }

    /// Every recorded request, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The bodies of the recorded OTLP/HTTP trace exports, decompressed but not decoded: the
    /// bytes the exporter sent, in arrival order. (gRPC messages are decoded by tonic and not kept
    /// as bytes.)
    pub fn http_trace_bodies(&self) -> Vec<Vec<u8>> {
        self.state
            .http_trace_bodies
            .lock()
            .map(|b| b.clone())
            .unwrap_or_default()
    }

    /// Requests answered but not recorded because [`MAX_RECORDED`] was reached.
    pub fn overflow(&self) -> u64 {
        self.state.overflow.lock().map(|o| *o).unwrap_or(0)
    }

    /// Export requests answered so far (any signal, either protocol), refused and malformed ones
    /// included.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Export requests refused so far, by [`SinkOptions::fail_first`] or
    /// [`SinkReply::Unavailable`].
    pub fn refused(&self) -> u64 {
        self.state.refused.load(Ordering::SeqCst)
    }

    /// Recorded trace export requests.
    pub fn trace_requests(&self) -> Vec<ExportTraceServiceRequest> {
        self.received()
            .into_iter()
            .filter_map(|r| match r {
                Received::Traces(_, req) => Some(req),
                Received::Metrics(..) => None,
            })
            .collect()
    }

    /// Recorded metrics export requests.
    pub fn metric_requests(&self) -> Vec<ExportMetricsServiceRequest> {
        self.received()
            .into_iter()
            .filter_map(|r| match r {
                Received::Metrics(_, req) => Some(req),
                Received::Traces(..) => None,
            })
            .collect()
    }

    /// Every recorded span, flattened with its resource's `service.name`.
    pub fn spans(&self) -> Vec<SinkSpan> {
        let mut out = Vec::new();
        for req in self.trace_requests() {
            for rs in &req.resource_spans {
                let res_attrs = rs.resource.as_ref().map(|r| r.attributes.as_slice()).unwrap_or(&[]);
                let service_name = attr(res_attrs, "service.name");
                let service_instance_id = attr(res_attrs, "service.instance.id");
                for ss in &rs.scope_spans {
                    let scope_name = ss.scope.as_ref().map(|s| s.name.clone()).unwrap_or_default();
                    for span in &ss.spans {
                        out.push(SinkSpan {
                            service_name: service_name.clone(),
                            service_instance_id: service_instance_id.clone(),
                            trace_id: hex(&span.trace_id),
                            span_id: hex(&span.span_id),
                            parent_span_id: hex(&span.parent_span_id),
                            name: span.name.clone(),
                            kind: span.kind,
                            trace_state: span.trace_state.clone(),
                            status_code: span.status.as_ref().map(|s| s.code).unwrap_or(0),
                            attributes: span
                                .attributes
                                .iter()
                                .map(|kv| (kv.key.clone(), render(&kv.value)))
                                .collect(),
                            scope_name: scope_name.clone(),
                        });
                    }
                }
            }
        }
        out
    }

    /// The distinct trace ids of all recorded spans.
    pub fn trace_ids(&self) -> BTreeSet<String> {
        self.spans().into_iter().map(|s| s.trace_id).collect()
    }

    /// The distinct `(trace_id, span_id)` pairs of all recorded spans.
    pub fn span_keys(&self) -> BTreeSet<(String, String)> {
        self.spans().into_iter().map(|s| (s.trace_id, s.span_id)).collect()
    }

    /// The distinct metric names of all recorded metrics exports.
    pub fn metric_names(&self) -> BTreeSet<String> {
        self.metric_requests()
            .iter()
            .flat_map(|r| &r.resource_metrics)
            .flat_map(|rm| &rm.scope_metrics)
            .flat_map(|sm| &sm.metrics)
            .map(|m| m.name.clone())
            .collect()
    }

    /// Waits until `ready(self)` holds, re-checking on every received request and at least every
    /// 100 ms, for at most `timeout`. Returns whether it held.
    pub async fn wait_for(&self, timeout: Duration, ready: impl Fn(&OtlpSink) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.state.notify.notified();
            if ready(self) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let step = (deadline - now).min(Duration::from_millis(100));
            let _ = tokio::time::timeout(step, notified).await;
        }
    }

    /// Waits until the recorded spans satisfy `ready`, for at most `timeout`, and returns them.
    ///
    /// # Panics
    /// On timeout, with `what`, the request counts and the spans recorded so far.
    pub async fn wait_for_spans(
        &self,
        timeout: Duration,
        what: &str,
        ready: impl Fn(&[SinkSpan]) -> bool,
    ) -> Vec<SinkSpan> {
        if self.wait_for(timeout, |sink| ready(&sink.spans())).await {
            return self.spans();
        }
        let spans = self.spans();
        let listing: Vec<String> = spans
            .iter()
            .map(|s| {
                format!(
                    "  {} {} {} parent={} {:?}",
                    s.service_name, s.trace_id, s.name, s.parent_span_id, s.attributes
                )
            })
            .collect();
        panic!(
            "timed out after {timeout:?} waiting for {what}; {} requests ({} refused), {} spans recorded:\n{}",
            self.requests(),
            self.refused(),
            spans.len(),
            listing.join("\n")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;

    use opentelemetry_proto::tonic::trace::v1::Span;

    fn request(service: &str) -> ExportTraceServiceRequest {
        let span = Span {
            trace_id: vec![0xab; 16],
            span_id: vec![0x01; 8],
            name: "op".into(),
            kind: SPAN_KIND_SERVER,
            ..Default::default()
        };
        spindle::testing::traces_request(vec![spindle::testing::kv("service.name", service)], vec![span])
    }

    #[tokio::test]
    async fn records_grpc_and_http_exports_and_can_refuse() {
        let sink = OtlpSink::start().await;
        let mut client = TraceServiceClient::connect(sink.grpc_endpoint())
            .await
            .expect("connect");
        client.export(request("grpc-svc")).await.expect("gRPC export accepted");

        let resp = reqwest::Client::new()
            .post(format!("{}/v1/traces", sink.http_endpoint()))
            .header("content-type", "application/x-protobuf")
            .body(request("http-svc").encode_to_vec())
            .send()
            .await
            .expect("HTTP export");
        assert_eq!(resp.status(), 200);

        assert!(sink.wait_for(Duration::from_secs(5), |s| s.spans().len() == 2).await);
        let spans = sink.spans();
        assert_eq!(spans[0].service_name, "grpc-svc");
        assert_eq!(spans[1].service_name, "http-svc");
        assert_eq!(spans[0].trace_id, "ab".repeat(16));
        assert_eq!(sink.trace_ids().len(), 1);
        assert_eq!(
            sink.http_trace_bodies(),
            [request("http-svc").encode_to_vec()],
            "the HTTP body as it came; gRPC messages are not kept as bytes"
        );

        sink.set_reply(SinkReply::Unavailable);
        let status = client.export(request("x")).await.expect_err("refused");
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(sink.refused(), 1);
        assert_eq!(sink.requests(), 3);
        assert_eq!(sink.spans().len(), 2);
    }

    #[tokio::test]
    async fn starts_on_a_given_address_and_fails_its_first_requests() {
        let reserved = std::net::TcpListener::bind("127.0.0.1:0").expect("reserve a port");
        let addr = reserved.local_addr().expect("reserved addr");
        drop(reserved);
        let sink = OtlpSink::start_with(SinkOptions {
            grpc_addr: Some(addr),
            fail_first: 2,
            ..Default::default()
        })
        .await;
        assert_eq!(sink.grpc_addr, addr);
        assert_eq!(sink.grpc_endpoint(), format!("http://{addr}"));

        let mut client = TraceServiceClient::connect(sink.grpc_endpoint())
            .await
            .expect("connect");
        for _ in 0..2 {
            let status = client.export(request("svc")).await.expect_err("one of the first 2");
            assert_eq!(status.code(), tonic::Code::Unavailable);
        }
        // HTTP shares the count: the third request is accepted whatever its protocol.
        let resp = reqwest::Client::new()
            .post(format!("{}/v1/traces", sink.http_endpoint()))
            .header("content-type", "application/x-protobuf")
            .body(request("http-svc").encode_to_vec())
            .send()
            .await
            .expect("HTTP export");
        assert_eq!(resp.status(), 200);
        client.export(request("svc")).await.expect("accepted after the first 2");

        assert_eq!((sink.requests(), sink.refused()), (4, 2));
        let keys = sink.span_keys();
        assert_eq!(keys.len(), 1, "the same span twice is one key: {keys:?}");
        assert!(keys.contains(&("ab".repeat(16), "01".repeat(8))));
        let services: Vec<_> = sink.spans().into_iter().map(|s| s.service_name).collect();
        assert_eq!(services, ["http-svc", "svc"], "refused requests record nothing");
    }
}
