//! A downstream OTLP trace backend for interop tests: the role Tempo, Jaeger or an OTel Collector
//! plays behind Spindle's `exporters.traces.otlp` (gRPC).
//!
//! In: OTLP/gRPC `TraceService/Export` requests (gzip accepted) on `127.0.0.1`, on any port or on a
//! fixed one (so a test can reserve a port, point Spindle at it, and start the backend later). Out:
//! every span it acknowledged, as [`ReceivedSpan`]s with lowercase hex ids, and counts of the
//! requests it answered. It can be told to fail its first N requests with `UNAVAILABLE` (a
//! retryable code in the OTLP spec); a failed request records nothing.
//!
//! The server stops when the [`Downstream`] is dropped.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value;
use tokio::sync::oneshot;

/// How to start a [`Downstream`].
#[derive(Debug, Clone, Default)]
pub struct DownstreamOptions {
    /// Address to listen on; `None` means `127.0.0.1:0` (any free port).
    pub addr: Option<SocketAddr>,
    /// Answer this many first requests with `UNAVAILABLE` (recording nothing), then accept.
    pub fail_first: usize,
}

/// One span the downstream acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReceivedSpan {
    /// Trace id, 32 lowercase hex digits.
    pub trace_id: String,
    /// Span id, 16 lowercase hex digits.
    pub span_id: String,
    /// Span name.
    pub name: String,
    /// OTLP span kind (`2` = server, …).
    pub kind: i32,
    /// OTLP status code (`0` unset, `1` ok, `2` error).
    pub status: i32,
    /// The resource's `service.name` (empty when absent).
    pub service: String,
}

#[derive(Debug, Default)]
struct State {
    spans: Mutex<Vec<ReceivedSpan>>,
    requests: AtomicUsize,
    failed: AtomicUsize,
    fail_first: usize,
}

#[derive(Debug, Clone)]
struct Service(Arc<State>);

#[tonic::async_trait]
impl TraceService for Service {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let n = self.0.requests.fetch_add(1, Ordering::SeqCst);
        if n < self.0.fail_first {
            self.0.failed.fetch_add(1, Ordering::SeqCst);
            return Err(tonic::Status::unavailable(format!(
                "test downstream: failing request {} of the first {}",
                n + 1,
                self.0.fail_first
            )));
        }
        let mut received = Vec::new();
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(any_value::Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|ss| ss.spans) {
                received.push(ReceivedSpan {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    status: span.status.as_ref().map_or(0, |s| s.code),
                    kind: span.kind,
                    name: span.name,
                    service: service.clone(),
                });
            }
        }
        self.0.spans.lock().expect("downstream lock").extend(received);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// A running downstream OTLP/gRPC trace receiver. Stops serving when dropped.
#[derive(Debug)]
pub struct Downstream {
    /// The address it listens on.
    pub addr: SocketAddr,
    state: Arc<State>,
    stop: Option<oneshot::Sender<()>>,
}

impl Downstream {
    /// Starts a receiver on any free port that accepts every request.
    ///
    /// # Panics
    /// When it cannot bind.
    pub async fn start() -> Self {
        Self::start_with(DownstreamOptions::default()).await
    }

    /// Starts a receiver as `options` say.
    ///
    /// # Panics
    /// When it cannot bind the address.
    pub async fn start_with(options: DownstreamOptions) -> Self {
        let addr = options.addr.unwrap_or_else(|| "127.0.0.1:0".parse().expect("address"));
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|err| panic!("downstream cannot listen on {addr}: {err}"));
        let addr = listener.local_addr().expect("bound address");
        let state = Arc::new(State {
            fail_first: options.fail_first,
            ..Default::default()
        });
        let svc = TraceServiceServer::new(Service(state.clone()))
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
            .accept_compressed(tonic::codec::CompressionEncoding::Zstd)
            .max_decoding_message_size(64 << 20);
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                }),
        );
        Self {
            addr,
            state,
            stop: Some(stop),
        }
    }

    /// The endpoint to give Spindle's `exporters.traces.otlp.endpoint`: `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span acknowledged so far, in arrival order (duplicates included).
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.state.spans.lock().expect("downstream lock").clone()
    }

    /// Number of spans acknowledged so far (duplicates included).
    pub fn span_count(&self) -> usize {
        self.state.spans.lock().expect("downstream lock").len()
    }

    /// The distinct trace ids of the acknowledged spans.
    pub fn trace_ids(&self) -> BTreeSet<String> {
        self.state
            .spans
            .lock()
            .expect("downstream lock")
            .iter()
            .map(|s| s.trace_id.clone())
            .collect()
    }

    /// The distinct `(trace_id, span_id)` pairs of the acknowledged spans.
    pub fn span_keys(&self) -> BTreeSet<(String, String)> {
        self.state
            .spans
            .lock()
            .expect("downstream lock")
            .iter()
            .map(|s| (s.trace_id.clone(), s.span_id.clone()))
            .collect()
    }

    /// Export requests answered so far, failed ones included.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Export requests answered with `UNAVAILABLE` so far.
    pub fn failed_requests(&self) -> usize {
        self.state.failed.load(Ordering::SeqCst)
    }

    /// Polls every 20 ms until at least `n` spans were acknowledged, for at most `timeout`; returns
    /// them all.
    ///
    /// # Panics
    /// On timeout, with how many spans and requests arrived.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<ReceivedSpan> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.span_count();
            if got >= n {
                return self.spans();
            }
            assert!(
                Instant::now() < deadline,
                "downstream at {} received {got} of {n} spans within {timeout:?} ({} requests, {} failed on purpose)",
                self.addr,
                self.requests(),
                self.failed_requests()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Downstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
