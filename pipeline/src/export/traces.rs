//! OTLP trace exporter: a bounded queue (in bytes of memory held), batching by size and time,
//! and retries with exponential backoff and jitter that honour gRPC `RetryInfo` and HTTP
//! `Retry-After`.
//!
//! In: accepted trace requests, by value, with the span-metric exemplars that name their spans.
//! Out: OTLP export requests to the backend; once a batch is acknowledged its exemplars are handed
//! to `on_forwarded`, so every exemplar Spindle shows names a span the backend received. When the
//! queue is full, [`TraceExporter::try_enqueue`] refuses and receivers answer "overloaded": an
//! accepted span is never dropped silently. The queue's bound counts the memory a queued request
//! holds decoded ([`held_bytes`]), not its encoded length. Permanent errors drop the batch and
//! count it.
//!
//! Shutdown: once `drain` is cancelled the queue is flushed for at most `shutdown_timeout`,
//! measured from that moment. The deadline is observed everywhere: an export in flight at the
//! deadline is cut off (its spans count as not delivered), and a retry that would come after it is
//! not attempted. Whatever is then left, in flight and queued, is counted once as
//! `spindle_exporter_dropped_spans_total{reason="shutdown"}` and logged once with its count, and
//! the queue closes: later requests are refused as overloaded.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{BufMut, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic_types::StatusExt;

use super::{jitter, retry_after};
pub mod config;
pub use config::*;

use super::stats::{DropReason, ExporterStats, Reason};
use crate::process::translate::Samples;
use crate::receive::status::Refusal;

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
    /// Memory this item holds (request, exemplars and the queue slot), reserved from the bound.
    bytes: u64,
    spans: u64,
    exemplars: Samples,
}

#[derive(Default)]
struct Items {
    queued: VecDeque<Pending>,
    /// Set once the worker has finished: nothing is accepted any more.
    closed: bool,
}

struct Queue {
    items: Mutex<Items>,
    /// Bytes of memory held by queued and in-flight batches.
    bytes: AtomicU64,
    capacity: u64,
    /// Spans of the batch being exported (counted if the worker is aborted).
    inflight_spans: AtomicU64,
    /// Set when the worker has counted everything it will not deliver.
    settled: AtomicBool,
    notify: Notify,
}

impl Queue {
    fn new(capacity: u64) -> Self {
        Self {
            items: Mutex::new(Items::default()),
            bytes: AtomicU64::new(0),
            capacity,
            inflight_spans: AtomicU64::new(0),
            settled: AtomicBool::new(false),
            notify: Notify::new(),
        }
    }

    /// Reserves `n` bytes if they fit the bound. A request larger than the whole bound is
    /// admitted into an empty queue (nothing queued or in flight), so that it can still be
    /// forwarded; memory is then that one request.
    fn reserve(&self, n: u64) -> bool {
        self.bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                (cur == 0 || cur + n <= self.capacity).then_some(cur + n)
            })
            .is_ok()
    }

    fn release(&self, n: u64) {
        self.bytes.fetch_sub(n, Ordering::AcqRel);
    }

    fn is_empty(&self) -> bool {
        self.items.lock().queued.is_empty()
    }

    fn queued_spans(&self) -> u64 {
        self.items.lock().queued.iter().map(|p| p.spans).sum()
    }

    /// Pops items up to `max_spans` spans (always at least one).
    fn take_batch(&self, max_spans: u64) -> Vec<Pending> {
        let mut items = self.items.lock();
        let mut out = Vec::new();
        let mut spans = 0;
        while let Some(p) = items.queued.front() {
            if !out.is_empty() && spans + p.spans > max_spans {
                break;
            }
            spans += p.spans;
            out.extend(items.queued.pop_front());
        }
        out
    }

    /// Refuses every later request and empties the queue; returns the spans it held.
    fn close(&self) -> u64 {
        let drained: Vec<Pending> = {
            let mut items = self.items.lock();
            items.closed = true;
            items.queued.drain(..).collect()
        };
        let bytes: u64 = drained.iter().map(|p| p.bytes).sum();
        self.release(bytes);
        drained.iter().map(|p| p.spans).sum()
    }
}

/// Handle to the exporter: receivers enqueue through it.
#[derive(Clone)]
pub struct TraceExporter {
    queue: Arc<Queue>,
    stats: ExporterStats<DropReason>,
}

impl std::fmt::Debug for TraceExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceExporter")
            .field("capacity", &self.queue.capacity)
            .finish_non_exhaustive()
    }
}

impl TraceExporter {
    /// Queues a request for export, with the exemplars to publish once it is forwarded. The queue
    /// counts the memory the request and its exemplars hold ([`held_bytes`]).
    ///
    /// # Errors
    /// [`Refusal::Overloaded`] when the queue has no room, or once the exporter has shut down;
    /// nothing was queued.
    pub fn try_enqueue(&self, req: ExportTraceServiceRequest, spans: u64, exemplars: Samples) -> Result<(), Refusal> {
        // The queue slot holds the request and exemplar structs inline; their heap parts follow.
        let bytes = size_of::<Pending>() as u64 + heap_bytes(&req) + samples_heap_bytes(&exemplars);
        if !self.queue.reserve(bytes) {
            return Err(Refusal::Overloaded("trace export queue is full"));
        }
        {
            let mut items = self.queue.items.lock();
            if items.closed {
                drop(items);
                self.queue.release(bytes);
                return Err(Refusal::Overloaded("trace exporter is shutting down"));
            }
            items.queued.push_back(Pending {
                req,
                bytes,
                spans,
                exemplars,
            });
        }
        self.stats
            .queue(self.queue.bytes.load(Ordering::Relaxed), self.queue.capacity);
        self.queue.notify.notify_one();
        Ok(())
    }

    /// For when the worker did not finish on its own (it was aborted): closes the queue and
    /// counts what it held, and the batch that was in flight, as dropped at shutdown. Returns the
    /// spans counted; 0 when the worker had already settled everything.
    pub(crate) fn abandon(&self) -> u64 {
        if self.queue.settled.swap(true, Ordering::AcqRel) {
            return 0;
        }
        let left = self.queue.close() + self.queue.inflight_spans.swap(0, Ordering::AcqRel);
        if left > 0 {
            tracing::warn!(
                spans = left,
                "trace exporter: aborted at shutdown; dropping {left} queued spans"
            );
            self.stats.dropped(DropReason::Shutdown, left);
        }
        self.stats.queue(0, self.queue.capacity);
        left
    }
}

/// Bytes of memory a decoded request holds: the struct itself plus every string, bytes and vector
/// allocation (by capacity, with the inline size of each element), walked once. This is what the
/// export queue counts against `exporters.traces.otlp.queue_max_bytes`; the encoded length
/// undercounts it several times (an empty span is 2 bytes on the wire and ~260 bytes decoded).
/// Allocator overhead (size classes, headers) is not included.
pub fn held_bytes(req: &ExportTraceServiceRequest) -> u64 {
    size_of::<ExportTraceServiceRequest>() as u64 + heap_bytes(req)
}

/// The part of [`held_bytes`] outside the request struct itself.
fn heap_bytes(req: &ExportTraceServiceRequest) -> u64 {
    held::vec(&req.resource_spans, held::resource_spans) as u64
}

/// Heap bytes a batch of exemplars holds (its arenas, by capacity; the struct itself not).
fn samples_heap_bytes(s: &Samples) -> u64 {
    use crate::process::translate::{FamilyMeta, Label, Point};
    let families: usize = s
        .families
        .iter()
        .map(|f| f.name.capacity() + f.help.capacity() + f.unit.capacity())
        .sum();
    (s.families.capacity() * size_of::<FamilyMeta>()
        + families
        + s.points.capacity() * size_of::<Point>()
        + s.labels.capacity() * size_of::<Label>()
        + s.text.capacity()
        + s.floats.capacity() * size_of::<f64>()
        + s.counts.capacity() * size_of::<u64>()
        + s.exemplars.capacity() * size_of::<crate::model::Exemplar>()
        + s.outcome.message.capacity()) as u64
}

/// The heap part of each OTLP trace type (its inline size is counted by the vector or struct
/// that holds it).
mod held {
    use opentelemetry_proto::tonic::common::v1::{AnyValue, EntityRef, InstrumentationScope, KeyValue, any_value};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, span};

    /// A vector's allocation plus the heap parts of its elements.
    pub(super) fn vec<T>(v: &Vec<T>, heap: impl Fn(&T) -> usize) -> usize {
        v.capacity() * size_of::<T>() + v.iter().map(heap).sum::<usize>()
    }

    fn strings(v: &Vec<String>) -> usize {
        vec(v, String::capacity)
    }

    pub(super) fn resource_spans(rs: &ResourceSpans) -> usize {
        rs.resource.as_ref().map_or(0, resource) + vec(&rs.scope_spans, scope_spans) + rs.schema_url.capacity()
    }

    fn resource(r: &Resource) -> usize {
        vec(&r.attributes, key_value) + vec(&r.entity_refs, entity_ref)
    }

    fn entity_ref(e: &EntityRef) -> usize {
        e.schema_url.capacity() + e.r#type.capacity() + strings(&e.id_keys) + strings(&e.description_keys)
    }

    fn scope_spans(ss: &ScopeSpans) -> usize {
        ss.scope.as_ref().map_or(0, scope) + vec(&ss.spans, self::span) + ss.schema_url.capacity()
    }

    fn scope(s: &InstrumentationScope) -> usize {
        s.name.capacity() + s.version.capacity() + vec(&s.attributes, key_value)
    }

    fn span(s: &Span) -> usize {
        s.trace_id.capacity()
            + s.span_id.capacity()
            + s.trace_state.capacity()
            + s.parent_span_id.capacity()
            + s.name.capacity()
            + vec(&s.attributes, key_value)
            + vec(&s.events, event)
            + vec(&s.links, link)
            + s.status.as_ref().map_or(0, |st| st.message.capacity())
    }

    fn event(e: &span::Event) -> usize {
        e.name.capacity() + vec(&e.attributes, key_value)
    }

    fn link(l: &span::Link) -> usize {
        l.trace_id.capacity() + l.span_id.capacity() + l.trace_state.capacity() + vec(&l.attributes, key_value)
    }

    fn key_value(kv: &KeyValue) -> usize {
        kv.key.capacity() + kv.value.as_ref().map_or(0, any_value)
    }

    /// Recursive through arrays and key-value lists; the decoder bounds their depth.
    fn any_value(v: &AnyValue) -> usize {
        use any_value::Value;
        match &v.value {
            Some(Value::StringValue(s)) => s.capacity(),
            Some(Value::BytesValue(b)) => b.capacity(),
            Some(Value::ArrayValue(a)) => vec(&a.values, any_value),
            Some(Value::KvlistValue(l)) => vec(&l.values, key_value),
            Some(Value::BoolValue(_) | Value::IntValue(_) | Value::DoubleValue(_) | Value::StringValueStrindex(_))
            | None => 0,
        }
    }
}

/// Builds the exporter and spawns its worker. The worker runs until `drain` is cancelled, then
/// flushes the queue for at most `shutdown_timeout` and counts what it could not deliver. It counts
/// into `stats` (its [`ExporterStats`], or the process's `Telemetry`, which holds them).
///
/// # Errors
/// [`ExporterError`] when the endpoint, CA file or headers are unusable.
pub fn spawn(
    config: &OtlpExporterConfig,
    endpoint: &str,
    stats: impl Into<ExporterStats<DropReason>>,
    on_forwarded: OnForwarded,
    drain: CancellationToken,
) -> Result<(TraceExporter, tokio::task::JoinHandle<()>), ExporterError> {
    let client = Client::new(config, endpoint)?;
    let queue = Arc::new(Queue::new(config.queue_max_bytes.0));
    let stats = stats.into();
    stats.queue(0, queue.capacity);
    let worker = Worker {
        queue: queue.clone(),
        client,
        config: config.clone(),
        stats: stats.clone(),
        on_forwarded,
        drain,
        deadline: OnceLock::new(),
    };
    let handle = tokio::spawn(worker.run());
    Ok((TraceExporter { queue, stats }, handle))
}

struct Worker {
    queue: Arc<Queue>,
    client: Client,
    config: OtlpExporterConfig,
    stats: ExporterStats<DropReason>,
    on_forwarded: OnForwarded,
    drain: CancellationToken,
    /// When the flush must end: `shutdown_timeout` after `drain` was first seen cancelled.
    deadline: OnceLock<Instant>,
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

/// A batch given up because shutdown's deadline came first.
struct Undelivered {
    spans: u64,
    why: String,
}

impl Worker {
    async fn run(self) {
        let max = self.config.max_batch_spans as u64;
        while !self.drain.is_cancelled() {
            if self.queue.is_empty() {
                tokio::select! {
                    _ = self.queue.notify.notified() => {}
                    _ = self.drain.cancelled() => {}
                }
                continue;
            }
            // Let a small batch fill up for at most batch_timeout.
            let fill = Instant::now() + self.config.batch_timeout.0;
            while self.queue.queued_spans() < max && !self.drain.is_cancelled() {
                tokio::select! {
                    _ = self.queue.notify.notified() => {}
                    _ = tokio::time::sleep_until(fill) => break,
                    _ = self.drain.cancelled() => break,
                }
            }
            // While running, retry until sent or permanently refused (backpressure holds the
            // queue); once draining, only until the deadline.
            if let Err(u) = self.send(self.queue.take_batch(max)).await {
                return self.give_up(u);
            }
        }
        // Draining: flush what is queued, within the shutdown timeout.
        self.deadline();
        loop {
            let batch = self.queue.take_batch(max);
            if batch.is_empty() {
                break;
            }
            if let Err(u) = self.send(batch).await {
                return self.give_up(u);
            }
        }
        self.queue.settled.store(true, Ordering::Release);
        // Receivers stop before the exporter drains, so this is nothing unless one lingered.
        let late = self.queue.close();
        if late > 0 {
            tracing::warn!(
                spans = late,
                "trace exporter: dropping {late} spans queued after the final flush"
            );
            self.stats.dropped(DropReason::Shutdown, late);
        }
        self.stats.queue(0, self.queue.capacity);
    }

    /// The shutdown deadline, fixed the first time it is asked for (only once draining).
    fn deadline(&self) -> Instant {
        *self
            .deadline
            .get_or_init(|| Instant::now() + self.config.shutdown_timeout.0)
    }

    /// Completes at the shutdown deadline; never while running.
    async fn shutdown_deadline(&self) {
        self.drain.cancelled().await;
        tokio::time::sleep_until(self.deadline()).await;
    }

    fn past_deadline(&self) -> bool {
        self.drain.is_cancelled() && Instant::now() >= self.deadline()
    }

    /// Counts and logs, once, everything not delivered: the batch given up and the whole queue.
    fn give_up(self, u: Undelivered) {
        self.queue.settled.store(true, Ordering::Release);
        let left = u.spans + self.queue.close();
        if left > 0 {
            tracing::warn!(
                spans = left,
                last_error = %u.why,
                "trace exporter: shutdown_timeout ({:?}) reached with the backend unreachable; dropping {left} queued spans",
                self.config.shutdown_timeout.0
            );
            self.stats.dropped(DropReason::Shutdown, left);
        }
        self.stats.queue(0, self.queue.capacity);
    }

    /// Sends one batch with retries, until it is delivered or permanently refused (both counted
    /// here) or, once draining, until the shutdown deadline leaves no time (returned, uncounted).
    async fn send(&self, batch: Vec<Pending>) -> Result<(), Undelivered> {
        let spans: u64 = batch.iter().map(|p| p.spans).sum();
        let reserved: u64 = batch.iter().map(|p| p.bytes).sum();
        self.queue.inflight_spans.store(spans, Ordering::Release);
        let mut exemplars = Vec::with_capacity(batch.len());
        let mut req = ExportTraceServiceRequest::default();
        for p in batch {
            req.resource_spans.extend(p.req.resource_spans);
            exemplars.push(p.exemplars);
        }
        let body = Bytes::from(req.encode_to_vec());
        drop(req);
        // In flight, the batch holds its encoded body and its exemplars.
        let held = (body.len() + exemplars.capacity() * size_of::<Samples>()) as u64
            + exemplars.iter().map(samples_heap_bytes).sum::<u64>();
        let held = held.min(reserved);
        self.queue.release(reserved - held);
        self.stats
            .queue(self.queue.bytes.load(Ordering::Relaxed), self.queue.capacity);
        let outcome = self.attempts(body).await;
        self.queue.inflight_spans.store(0, Ordering::Release);
        self.queue.release(held);
        self.stats
            .queue(self.queue.bytes.load(Ordering::Relaxed), self.queue.capacity);
        match outcome {
            Ok(rejected) => {
                self.stats.sent(spans.saturating_sub(rejected));
                if rejected > 0 {
                    self.stats.dropped(DropReason::RejectedByBackend, rejected);
                }
                for e in exemplars {
                    (self.on_forwarded)(e);
                }
                Ok(())
            }
            Err(Stop::Permanent(why)) => {
                tracing::warn!(
                    spans,
                    %why,
                    reason = DropReason::Permanent.as_str(),
                    "dropping trace batch"
                );
                self.stats.dropped(DropReason::Permanent, spans);
                Ok(())
            }
            Err(Stop::Shutdown(why)) => Err(Undelivered { spans, why }),
        }
    }

    /// Export attempts of one body: the backend's `rejected` count, or why it stopped.
    async fn attempts(&self, body: Bytes) -> Result<u64, Stop> {
        let mut backoff = self.config.retry_initial_backoff.0;
        let mut last = String::from("no attempt was made before shutdown_timeout");
        loop {
            if self.past_deadline() {
                return Err(Stop::Shutdown(last));
            }
            let start = Instant::now();
            let attempt = tokio::select! {
                biased;
                _ = self.shutdown_deadline() => {
                    return Err(Stop::Shutdown("an export attempt was still in flight at shutdown_timeout".into()));
                }
                a = self.client.export(body.clone()) => a,
            };
            self.stats.took(start.elapsed());
            let (after, why) = match attempt {
                Attempt::Sent { rejected } => return Ok(rejected),
                Attempt::Permanent(why) => return Err(Stop::Permanent(why)),
                Attempt::Retry { after, why } => (after, why),
            };
            let wait = after.unwrap_or(backoff).max(jitter(backoff));
            backoff = (backoff * 2).min(self.config.retry_max_backoff.0);
            let retry_at = Instant::now() + wait;
            // Wait for the retry; once draining, give up if it would come after the deadline.
            loop {
                if self.drain.is_cancelled() && retry_at > self.deadline() {
                    return Err(Stop::Shutdown(why));
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(retry_at) => break,
                    _ = self.drain.cancelled(), if !self.drain.is_cancelled() => {}
                }
            }
            self.stats.retried();
            tracing::debug!(%why, ?wait, "trace export failed; retrying");
            last = why;
        }
    }
}

/// Why a batch's attempts stopped without delivering it.
enum Stop {
    Permanent(String),
    Shutdown(String),
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
        let q = Queue::new(100);
        assert!(q.reserve(60));
        assert!(!q.reserve(41), "over capacity");
        assert!(q.reserve(40));
        q.release(100);
        assert!(q.reserve(150), "a request larger than the bound fits an empty queue");
        assert!(!q.reserve(1), "and nothing else beside it");
        q.release(150);
        for spans in [3, 3, 3] {
            q.items.lock().queued.push_back(Pending {
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

    #[test]
    fn held_bytes_counts_struct_sizes_and_capacities() {
        use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
        use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
        let mut name = String::with_capacity(100);
        name.push_str("op");
        let mut attributes = Vec::with_capacity(3);
        attributes.push(KeyValue {
            key: String::with_capacity(10),
            value: Some(AnyValue {
                value: Some(any_value::Value::BytesValue(Vec::with_capacity(7))),
            }),
            ..Default::default()
        });
        let mut spans = Vec::with_capacity(4);
        spans.push(Span {
            trace_id: Vec::with_capacity(16),
            span_id: Vec::with_capacity(8),
            name,
            attributes,
            ..Default::default()
        });
        let mut scope_spans = Vec::with_capacity(2);
        scope_spans.push(ScopeSpans {
            spans,
            ..Default::default()
        });
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans,
                ..Default::default()
            }],
        };
        let expected = size_of::<ExportTraceServiceRequest>()
            + size_of::<ResourceSpans>()
            + 2 * size_of::<ScopeSpans>()
            + 4 * size_of::<Span>()
            + 16
            + 8
            + 100
            + 3 * size_of::<KeyValue>()
            + 10
            + 7;
        assert_eq!(held_bytes(&req), expected as u64);
        assert!(
            held_bytes(&req) > 10 * req.encoded_len() as u64,
            "far above the encoded length"
        );
    }

    #[test]
    fn a_closed_queue_gives_back_what_it_held_and_refuses_more() {
        let q = Queue::new(1000);
        for spans in [4, 5] {
            assert!(q.reserve(10));
            q.items.lock().queued.push_back(Pending {
                req: Default::default(),
                bytes: 10,
                spans,
                exemplars: Samples::default(),
            });
        }
        assert_eq!(q.close(), 9);
        assert_eq!(q.bytes.load(Ordering::Relaxed), 0, "reservations released");
        assert!(q.items.lock().closed);
    }
}
