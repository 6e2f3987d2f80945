//! OTLP trace exporter, on the shared sender stack ([`crate::export::sender`]): a queue bounded in
//! the bytes it holds, batching by size and time, and retries with exponential backoff and jitter
//! that honour gRPC `RetryInfo` and HTTP `Retry-After`.
//!
//! In: accepted trace requests, by value, with the span-metric exemplars that name their spans.
//! Each request is encoded once, at enqueue: the queue holds its protobuf body (and the exemplars
//! beside it), and a batch is those bodies sent back to back — `ExportTraceServiceRequest` is one
//! repeated field, so concatenated requests form one request holding all their resource spans.
//! Out: OTLP export requests to the backend; once a batch is acknowledged its exemplars are handed
//! to `on_forwarded`, so every exemplar Spindle shows names a span the backend received. When the
//! queue is full, [`TraceExporter::try_enqueue`] refuses with [`PushError::Full`] and receivers
//! answer "overloaded": an accepted span is never dropped silently. Permanent errors drop the
//! batch and count it.
//!
//! Shutdown: once `drain` is cancelled the queue is flushed for at most `shutdown_timeout`,
//! measured from that moment. The deadline is observed everywhere: an export in flight at the
//! deadline is cut off (its spans count as not delivered), and a retry that would come after it is
//! not attempted. Whatever is then left, in flight and queued, is counted once as
//! `spindle_exporter_dropped_spans_total{reason="shutdown"}` and logged once with its count, and
//! the queue closes: later requests are refused as overloaded.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use prost::Message;
use tokio_util::sync::CancellationToken;

pub mod config;

pub use config::*;

use super::sender::{
    Answers, BuildError, Client, ClientConfig, DiskPlace, Hooks, Payload, Persist, PushError, Queue, Shutdown,
    TlsFailures, Transport, Worker, open_queue,
};
use super::stats::{DropReason, ExporterStats, Reason};
use crate::model::Durable;
use crate::model::batch::Samples;

/// Called with the exemplars of a batch once the backend has acknowledged it.
pub type OnForwarded = Box<dyn Fn(Samples) + Send + Sync>;

/// The gRPC method spans are exported with.
const GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Handle to the exporter: receivers enqueue through it.
#[derive(Clone)]
pub struct TraceExporter {
    queue: Arc<dyn Queue<Samples>>,
    stats: ExporterStats<DropReason>,
}

impl std::fmt::Debug for TraceExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceExporter")
            .field("capacity", &self.queue.capacity())
            .finish_non_exhaustive()
    }
}

impl TraceExporter {
    /// Queues a request of `spans` spans for export, with the exemplars to publish once it is
    /// forwarded. The request is encoded here, once (see [`TraceExporter::try_enqueue_encoded`]).
    ///
    /// # Errors
    /// [`PushError::Full`] when the queue has no room, [`PushError::Closed`] once the exporter has
    /// shut down; nothing was queued.
    pub fn try_enqueue(
        &self,
        req: ExportTraceServiceRequest,
        spans: u64,
        exemplars: Samples,
    ) -> Result<Option<Durable>, PushError> {
        let body = Bytes::from(req.encode_to_vec());
        drop(req);
        self.try_enqueue_encoded(body, spans, exemplars)
    }

    /// Queues an encoded `ExportTraceServiceRequest` of `spans` spans (e.g. the bytes a receiver
    /// was sent, when nothing changed them), with its exemplars. The queue counts the body, the
    /// exemplars' memory and the queue slot against `queue_max_bytes`. With a disk queue, returns
    /// the write to await before the sender is answered.
    ///
    /// # Errors
    /// [`PushError::Full`] when the queue has no room, [`PushError::Closed`] once the exporter has
    /// shut down; nothing was queued.
    pub fn try_enqueue_encoded(
        &self,
        body: Bytes,
        spans: u64,
        exemplars: Samples,
    ) -> Result<Option<Durable>, PushError> {
        let sidecar_bytes = size_of::<Payload<Samples>>() as u64 + samples_heap_bytes(&exemplars);
        let pushed = self.queue.push(Payload {
            body,
            items: spans,
            sidecar: exemplars,
            sidecar_bytes,
        });
        self.stats.queue(self.queue.bytes(), self.queue.capacity());
        pushed
    }

    /// For when the worker did not finish on its own (it was aborted): closes the queue and
    /// counts what it held, and the batch that was in flight, as dropped at shutdown. Returns the
    /// spans counted; 0 when the worker had already settled everything.
    pub(crate) fn abandon(&self) -> u64 {
        let left = self.queue.close();
        if left > 0 {
            tracing::warn!(
                spans = left,
                "trace exporter: aborted at shutdown; dropping {left} queued spans"
            );
            self.stats.dropped(DropReason::Shutdown, left);
        }
        self.stats.queue(self.queue.bytes(), self.queue.capacity());
        left
    }
}

/// Builds the exporter and spawns its worker. The worker runs until `drain` is cancelled, then
/// flushes the queue for at most `shutdown_timeout` and counts what it could not deliver. It counts
/// into `stats` (its [`ExporterStats`], or the process's `Telemetry`, which holds them). With
/// `disk`, the queue is durable there: requests are answered once on disk, and what a previous
/// run left is delivered first.
///
/// # Errors
/// [`BuildError`] when the endpoint, CA file or headers are unusable, or the disk queue cannot
/// be opened.
pub fn spawn(
    config: &OtlpExporterConfig,
    endpoint: &str,
    stats: impl Into<ExporterStats<DropReason>>,
    on_forwarded: OnForwarded,
    drain: CancellationToken,
    disk: Option<&DiskPlace>,
) -> Result<(TraceExporter, tokio::task::JoinHandle<()>), BuildError> {
    let url = match config.protocol {
        OtlpProtocol::Grpc => endpoint.to_string(),
        OtlpProtocol::HttpProtobuf => http_url(endpoint)?,
    };
    let headers = crate::export::config::resolved_headers(&config.headers, &config.headers_from_files)?;
    let client = Client::new(&ClientConfig {
        endpoint: &url,
        transport: match config.protocol {
            OtlpProtocol::Grpc => Transport::Grpc { path: GRPC_PATH },
            OtlpProtocol::HttpProtobuf => Transport::Http,
        },
        headers: &headers,
        protocol_headers: &[("content-type", "application/x-protobuf")],
        user_agent: None,
        timeout: config.timeout.0,
        ca_file: config.ca_file.as_deref(),
        cert_file: config.cert_file.as_deref(),
        key_file: config.key_file.as_deref(),
        compression: config.body_compression(),
        answers: ANSWERS,
    })?;
    let stats = stats.into();
    let queue: Arc<dyn Queue<Samples>> = open_queue(config.queue_max_bytes.0, disk, "traces", stats.disk())?;
    stats.queue(0, queue.capacity());
    let worker = Worker {
        queue: queue.clone(),
        client: client.with_tls_failures(TlsFailures::new(
            "trace exporter",
            "exporters.traces.otlp",
            stats.tls_failure_counter(),
        )),
        batching: config.batching(),
        retry: config.retry_policy(),
        stats: stats.clone(),
        shutdown: Arc::new(Shutdown::new(drain, config.shutdown_timeout.0)),
        hooks: Forwarded(on_forwarded),
    };
    let handle = tokio::spawn(worker.run());
    Ok((TraceExporter { queue, stats }, handle))
}

/// The OTLP/HTTP URL: `/v1/traces` is appended to an endpoint without a path.
fn http_url(endpoint: &str) -> Result<String, BuildError> {
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|e: http::uri::InvalidUri| BuildError::Endpoint(endpoint.into(), e.to_string()))?;
    Ok(if matches!(uri.path(), "" | "/") {
        format!("{}/v1/traces", endpoint.trim_end_matches('/'))
    } else {
        endpoint.to_string()
    })
}

/// OTLP answers: HTTP 429, 502, 503 and 504 are retryable (the OTLP/HTTP spec); a success may
/// carry `partial_success.rejected_spans`.
const ANSWERS: Answers = Answers {
    http_retryable: |status| matches!(status, 429 | 502 | 503 | 504),
    rejected: rejected_spans,
};

/// The spans a successful OTLP answer says were rejected (0 when it cannot be read).
fn rejected_spans(body: &[u8]) -> u64 {
    ExportTraceServiceResponse::decode(body)
        .map_or(0, |r| r.partial_success.map_or(0, |p| p.rejected_spans.max(0) as u64))
}

/// The trace exporter's part of the sender: exemplars of acknowledged batches are published, and
/// its log lines.
struct Forwarded(OnForwarded);

impl Hooks<Samples> for Forwarded {
    fn delivered(&self, sidecars: Vec<Samples>) {
        for e in sidecars {
            (self.0)(e);
        }
    }

    fn refused(&self, spans: u64, why: &str) {
        tracing::warn!(
            spans,
            %why,
            reason = DropReason::Permanent.as_str(),
            "dropping trace batch"
        );
    }

    fn retrying(&self, why: &str, wait: Duration) {
        tracing::debug!(%why, ?wait, "trace export failed; retrying");
    }

    fn undelivered(&self, left: u64, why: &str, timeout: Duration) {
        tracing::warn!(
            spans = left,
            last_error = %why,
            "trace exporter: shutdown_timeout ({timeout:?}) reached with the backend unreachable; dropping {left} queued spans",
        );
    }

    fn late(&self, late: u64) {
        tracing::warn!(
            spans = late,
            "trace exporter: dropping {late} spans queued after the final flush"
        );
    }
}

/// The exemplars queued beside a request are kept with it on disk, so that a batch delivered
/// after a restart still publishes them (and only then).
impl Persist for Samples {
    fn persist(&self, out: &mut Vec<u8>) {
        crate::model::codec::encode(self, out);
    }

    fn restore(bytes: &[u8]) -> Option<Self> {
        crate::model::codec::decode(bytes)
    }
}

/// Heap bytes a batch of exemplars holds (its arenas, by capacity; the struct itself not).
fn samples_heap_bytes(s: &Samples) -> u64 {
    use crate::model::batch::{FamilyMeta, Label, Point};
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

#[cfg(test)]
mod tests;
