//! OTLP trace exporter: a bounded queue (in encoded bytes), batching by size and time, and
//! retries with exponential backoff and jitter that honour gRPC `RetryInfo` and HTTP
//! `Retry-After`.
//!
//! In: accepted trace requests, by value, with the span-metric exemplars that name their spans.
//! Out: OTLP export requests to the backend; once a batch is acknowledged its exemplars are handed
//! to `on_forwarded`, so every exemplar Spindle shows names a span the backend received. When the
//! queue is full, [`TraceExporter::try_enqueue`] refuses and receivers answer "overloaded": an
//! accepted span is never dropped silently. Permanent errors drop the batch and count it; on
//! shutdown the queue is flushed for at most `shutdown_timeout`, and what is left is counted.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic_types::StatusExt;

use super::{jitter, retry_after};
use crate::config::{Compression, OtlpExporterConfig, OtlpProtocol};
use crate::process::translate::Samples;
use crate::receive::status::Refusal;
use crate::telemetry::{DropReason, Reason, Telemetry};

/// Errors building the exporter from its configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExporterError {
    /// The endpoint is not a usable URL.
    #[error("invalid endpoint `{0}`: {1}")]
    Endpoint(String, String),
    /// The CA file cannot be read or used.
    #[error("cannot use CA file `{0}`: {1}")]
    Tls(String, String),
    /// A header name or value is not valid.
    #[error("invalid header `{0}`")]
    Header(String),
}

/// Called with the exemplars of a batch once the backend has acknowledged it.
pub type OnForwarded = Box<dyn Fn(Samples) + Send + Sync>;

struct Pending {
    req: ExportTraceServiceRequest,
    bytes: u64,
    spans: u64,
    exemplars: Samples,
}

struct Queue {
    items: Mutex<VecDeque<Pending>>,
    /// Encoded bytes reserved by queued and in-flight batches.
    bytes: AtomicU64,
    capacity: u64,
    notify: Notify,
}

impl Queue {
    fn reserve(&self, n: u64) -> bool {
        self.bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                (cur + n <= self.capacity).then_some(cur + n)
            })
            .is_ok()
    }

    fn release(&self, n: u64) {
        self.bytes.fetch_sub(n, Ordering::AcqRel);
    }

    fn queued_spans(&self) -> u64 {
        self.items.lock().iter().map(|p| p.spans).sum()
    }

    /// Pops items up to `max_spans` spans (always at least one).
    fn take_batch(&self, max_spans: u64) -> Vec<Pending> {
        let mut items = self.items.lock();
        let mut out = Vec::new();
        let mut spans = 0;
        while let Some(p) = items.front() {
            if !out.is_empty() && spans + p.spans > max_spans {
                break;
            }
            spans += p.spans;
            out.extend(items.pop_front());
        }
        out
    }
}

/// Handle to the exporter: receivers enqueue through it.
#[derive(Clone)]
pub struct TraceExporter {
    queue: Arc<Queue>,
    telemetry: Arc<Telemetry>,
}

impl std::fmt::Debug for TraceExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceExporter")
            .field("capacity", &self.queue.capacity)
            .finish_non_exhaustive()
    }
}

impl TraceExporter {
    /// Queues a request for export, with the exemplars to publish once it is forwarded.
    ///
    /// # Errors
    /// [`Refusal::Overloaded`] when the queue has no room; nothing was queued.
    pub fn try_enqueue(&self, req: ExportTraceServiceRequest, spans: u64, exemplars: Samples) -> Result<(), Refusal> {
        let bytes = req.encoded_len() as u64;
        if !self.queue.reserve(bytes) {
            return Err(Refusal::Overloaded("trace export queue is full"));
        }
        self.queue.items.lock().push_back(Pending {
            req,
            bytes,
            spans,
            exemplars,
        });
        self.telemetry
            .traces
            .queue(self.queue.bytes.load(Ordering::Relaxed), self.queue.capacity);
        self.queue.notify.notify_one();
        Ok(())
    }
}

/// Builds the exporter and spawns its worker. The worker runs until `drain` is cancelled, then
/// flushes the queue for at most `shutdown_timeout`.
///
/// # Errors
/// [`ExporterError`] when the endpoint, CA file or headers are unusable.
pub fn spawn(
    config: &OtlpExporterConfig,
    endpoint: &str,
    telemetry: Arc<Telemetry>,
    on_forwarded: OnForwarded,
    drain: CancellationToken,
) -> Result<(TraceExporter, tokio::task::JoinHandle<()>), ExporterError> {
    let client = Client::new(config, endpoint)?;
    let queue = Arc::new(Queue {
        items: Mutex::new(VecDeque::new()),
        bytes: AtomicU64::new(0),
        capacity: config.queue_max_bytes.0,
        notify: Notify::new(),
    });
    telemetry.traces.queue(0, queue.capacity);
    let worker = Worker {
        queue: queue.clone(),
        client,
        config: config.clone(),
        telemetry: telemetry.clone(),
        on_forwarded,
    };
    let handle = tokio::spawn(worker.run(drain));
    Ok((TraceExporter { queue, telemetry }, handle))
}

struct Worker {
    queue: Arc<Queue>,
    client: Client,
    config: OtlpExporterConfig,
    telemetry: Arc<Telemetry>,
    on_forwarded: OnForwarded,
}

/// What one export attempt came to.
#[derive(Debug)]
enum Attempt {
    /// Accepted; the backend rejected this many spans (`partial_success`).
    Sent { rejected: u64 },
    /// Worth retrying, after at least this long if the backend said so.
    Retry { after: Option<Duration>, why: String },
    /// Never worth retrying.
    Permanent(String),
}

impl Worker {
    async fn run(self, drain: CancellationToken) {
        let max = self.config.max_batch_spans as u64;
        loop {
            if self.queue.items.lock().is_empty() {
                tokio::select! {
                    _ = self.queue.notify.notified() => {}
                    _ = drain.cancelled() => break,
                }
                continue;
            }
            // Let a small batch fill up for at most batch_timeout.
            let deadline = tokio::time::Instant::now() + self.config.batch_timeout.0;
            while self.queue.queued_spans() < max && !drain.is_cancelled() {
                tokio::select! {
                    _ = self.queue.notify.notified() => {}
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = drain.cancelled() => break,
                }
            }
            let batch = self.queue.take_batch(max);
            // While running, retry until sent or permanently refused (backpressure holds the queue).
            self.send(batch, None).await;
        }
        // Draining: flush what is queued, within the shutdown timeout.
        let deadline = Instant::now() + self.config.shutdown_timeout.0;
        loop {
            let batch = self.queue.take_batch(max);
            if batch.is_empty() {
                break;
            }
            self.send(batch, Some(deadline)).await;
        }
    }

    /// Sends one batch with retries; gives up at `deadline` (when draining) or on a permanent error.
    async fn send(&self, batch: Vec<Pending>, deadline: Option<Instant>) {
        let spans: u64 = batch.iter().map(|p| p.spans).sum();
        let bytes: u64 = batch.iter().map(|p| p.bytes).sum();
        let mut exemplars = Vec::with_capacity(batch.len());
        let mut req = ExportTraceServiceRequest::default();
        for p in batch {
            req.resource_spans.extend(p.req.resource_spans);
            exemplars.push(p.exemplars);
        }
        let body = Bytes::from(req.encode_to_vec());
        drop(req);
        let mut backoff = self.config.retry_initial_backoff.0;
        let outcome = loop {
            let start = Instant::now();
            let attempt = self.client.export(body.clone()).await;
            self.telemetry.traces.took(start.elapsed());
            match attempt {
                Attempt::Sent { rejected } => break Ok(rejected),
                Attempt::Permanent(why) => break Err((DropReason::Permanent, why)),
                Attempt::Retry { after, why } => {
                    let wait = after.unwrap_or(backoff).max(jitter(backoff));
                    backoff = (backoff * 2).min(self.config.retry_max_backoff.0);
                    if deadline.is_some_and(|d| Instant::now() + wait > d) {
                        break Err((DropReason::Shutdown, why));
                    }
                    self.telemetry.traces.retried();
                    tracing::debug!(%why, ?wait, "trace export failed; retrying");
                    tokio::time::sleep(wait).await;
                }
            }
        };
        match outcome {
            Ok(rejected) => {
                self.telemetry.traces.sent(spans.saturating_sub(rejected));
                if rejected > 0 {
                    self.telemetry.traces.dropped(DropReason::RejectedByBackend, rejected);
                }
                for e in exemplars {
                    (self.on_forwarded)(e);
                }
            }
            Err((reason, why)) => {
                tracing::warn!(spans, %why, reason = reason.as_str(), "dropping trace batch");
                self.telemetry.traces.dropped(reason, spans);
            }
        }
        self.queue.release(bytes);
        self.telemetry
            .traces
            .queue(self.queue.bytes.load(Ordering::Relaxed), self.queue.capacity);
    }
}

enum Client {
    Grpc {
        grpc: Box<tonic::client::Grpc<tonic::transport::Channel>>,
        headers: tonic::metadata::MetadataMap,
        timeout: Duration,
    },
    Http {
        client: reqwest::Client,
        url: String,
        gzip: bool,
    },
}

impl Client {
    fn new(config: &OtlpExporterConfig, endpoint: &str) -> Result<Self, ExporterError> {
        let ca = match &config.ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|e| ExporterError::Tls(path.clone(), e.to_string()))?),
            None => None,
        };
        match config.protocol {
            OtlpProtocol::Grpc => {
                let mut ep = tonic::transport::Endpoint::from_shared(endpoint.to_string())
                    .map_err(|e| ExporterError::Endpoint(endpoint.into(), e.to_string()))?
                    .timeout(config.timeout.0)
                    .connect_timeout(config.timeout.0);
                if endpoint.starts_with("https://") {
                    let mut tls = tonic::transport::ClientTlsConfig::new().with_native_roots();
                    if let Some(pem) = &ca {
                        tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
                    }
                    ep = ep
                        .tls_config(tls)
                        .map_err(|e| ExporterError::Tls(config.ca_file.clone().unwrap_or_default(), e.to_string()))?;
                }
                let mut grpc = tonic::client::Grpc::new(ep.connect_lazy());
                if config.compression == Compression::Gzip {
                    grpc = grpc.send_compressed(CompressionEncoding::Gzip);
                }
                grpc = grpc.accept_compressed(CompressionEncoding::Gzip);
                let mut headers = tonic::metadata::MetadataMap::new();
                for (k, v) in &config.headers {
                    let key = tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
                        .map_err(|_| ExporterError::Header(k.clone()))?;
                    let val = v.parse().map_err(|_| ExporterError::Header(k.clone()))?;
                    headers.insert(key, val);
                }
                Ok(Client::Grpc {
                    grpc: Box::new(grpc),
                    headers,
                    timeout: config.timeout.0,
                })
            }
            OtlpProtocol::HttpProtobuf => {
                let uri: http::Uri = endpoint
                    .parse()
                    .map_err(|e: http::uri::InvalidUri| ExporterError::Endpoint(endpoint.into(), e.to_string()))?;
                let url = if matches!(uri.path(), "" | "/") {
                    format!("{}/v1/traces", endpoint.trim_end_matches('/'))
                } else {
                    endpoint.to_string()
                };
                let mut headers = http::HeaderMap::new();
                for (k, v) in &config.headers {
                    let name =
                        http::HeaderName::from_bytes(k.as_bytes()).map_err(|_| ExporterError::Header(k.clone()))?;
                    let val = http::HeaderValue::from_str(v).map_err(|_| ExporterError::Header(k.clone()))?;
                    headers.insert(name, val);
                }
                let mut builder = reqwest::Client::builder()
                    .timeout(config.timeout.0)
                    .default_headers(headers);
                if let Some(pem) = &ca {
                    let cert = reqwest::Certificate::from_pem(pem)
                        .map_err(|e| ExporterError::Tls(config.ca_file.clone().unwrap_or_default(), e.to_string()))?;
                    builder = builder.add_root_certificate(cert);
                }
                let client = builder
                    .build()
                    .map_err(|e| ExporterError::Endpoint(endpoint.into(), e.to_string()))?;
                Ok(Client::Http {
                    client,
                    url,
                    gzip: config.compression == Compression::Gzip,
                })
            }
        }
    }

    async fn export(&self, body: Bytes) -> Attempt {
        match self {
            Client::Grpc { grpc, headers, timeout } => {
                let mut grpc = (**grpc).clone();
                if let Err(e) = grpc.ready().await {
                    return Attempt::Retry {
                        after: None,
                        why: format!("connecting: {e}"),
                    };
                }
                let mut req = tonic::Request::new(body);
                *req.metadata_mut() = headers.clone();
                req.set_timeout(*timeout);
                let path =
                    http::uri::PathAndQuery::from_static("/opentelemetry.proto.collector.trace.v1.TraceService/Export");
                match grpc.unary(req, path, RawCodec).await {
                    Ok(resp) => Attempt::Sent {
                        rejected: rejected(&resp.into_inner()),
                    },
                    Err(status) => classify_grpc(&status),
                }
            }
            Client::Http { client, url, gzip } => {
                let mut rb = client
                    .post(url)
                    .header(http::header::CONTENT_TYPE, "application/x-protobuf");
                let body = if *gzip {
                    use std::io::Write;
                    let mut enc =
                        flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4), flate2::Compression::fast());
                    match enc.write_all(&body).and_then(|_| enc.finish()) {
                        Ok(b) => {
                            rb = rb.header(http::header::CONTENT_ENCODING, "gzip");
                            Bytes::from(b)
                        }
                        Err(e) => return Attempt::Permanent(format!("gzip: {e}")),
                    }
                } else {
                    body
                };
                let resp = match rb.body(body).send().await {
                    Ok(r) => r,
                    Err(e) => {
                        return Attempt::Retry {
                            after: None,
                            why: format!("sending: {e}"),
                        };
                    }
                };
                let status = resp.status();
                let after = retry_after(resp.headers());
                let bytes = resp.bytes().await.unwrap_or_default();
                if status.is_success() {
                    let r = ExportTraceServiceResponse::decode(bytes)
                        .map(|r| rejected(&r))
                        .unwrap_or(0);
                    return Attempt::Sent { rejected: r };
                }
                let why = format!(
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                );
                match status.as_u16() {
                    429 | 502 | 503 | 504 => Attempt::Retry { after, why },
                    _ => Attempt::Permanent(why),
                }
            }
        }
    }
}

fn rejected(r: &ExportTraceServiceResponse) -> u64 {
    r.partial_success.as_ref().map_or(0, |p| p.rejected_spans.max(0) as u64)
}

/// The OTLP spec's retryable gRPC codes; `RESOURCE_EXHAUSTED` only with `RetryInfo`.
fn classify_grpc(status: &tonic::Status) -> Attempt {
    use tonic::Code;
    let after = status.get_details_retry_info().and_then(|r| r.retry_delay);
    let why = format!("gRPC {:?}: {}", status.code(), status.message());
    match status.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => Attempt::Retry { after, why },
        Code::ResourceExhausted if after.is_some() => Attempt::Retry { after, why },
        _ => Attempt::Permanent(why),
    }
}

/// Sends pre-encoded protobuf bytes, decodes the OTLP response.
#[derive(Debug, Clone, Copy)]
struct RawCodec;

struct RawEncoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

struct ResponseDecoder;

impl Decoder for ResponseDecoder {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, tonic::Status> {
        ExportTraceServiceResponse::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = RawEncoder;
    type Decoder = ResponseDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> ResponseDecoder {
        ResponseDecoder
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_are_classified_as_the_otlp_spec_says() {
        let retry = |s: tonic::Status| matches!(classify_grpc(&s), Attempt::Retry { .. });
        assert!(retry(tonic::Status::unavailable("down")));
        assert!(retry(tonic::Status::deadline_exceeded("slow")));
        assert!(!retry(tonic::Status::invalid_argument("bad")));
        assert!(!retry(tonic::Status::resource_exhausted("no RetryInfo: permanent")));
        let with_info = tonic::Status::with_error_details(
            tonic::Code::ResourceExhausted,
            "busy",
            tonic_types::ErrorDetails::with_retry_info(Some(Duration::from_secs(3))),
        );
        match classify_grpc(&with_info) {
            Attempt::Retry { after, .. } => assert_eq!(after, Some(Duration::from_secs(3))),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn queue_reserves_bytes_up_to_capacity_and_batches_by_spans() {
        let q = Queue {
            items: Mutex::new(VecDeque::new()),
            bytes: AtomicU64::new(0),
            capacity: 100,
            notify: Notify::new(),
        };
        assert!(q.reserve(60));
        assert!(!q.reserve(41), "over capacity");
        assert!(q.reserve(40));
        q.release(100);
        for spans in [3, 3, 3] {
            q.items.lock().push_back(Pending {
                req: Default::default(),
                bytes: 1,
                spans,
                exemplars: Samples::default(),
            });
        }
        assert_eq!(q.take_batch(7).len(), 2);
        assert_eq!(
            q.take_batch(1).len(),
            1,
            "at least one item even when it is larger than the batch"
        );
        assert!(q.take_batch(7).is_empty());
    }
}
