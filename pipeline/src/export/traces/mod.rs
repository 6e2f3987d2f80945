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

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use tokio_util::sync::CancellationToken;

mod client;
pub mod config;
mod queue;
mod worker;

use client::Client;
pub use config::*;
pub use queue::held_bytes;
use queue::{Pending, Queue, heap_bytes, samples_heap_bytes};
use worker::Worker;

use super::stats::{DropReason, ExporterStats};
use crate::model::batch::Samples;
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prost::Message;
    use tonic_types::StatusExt;

    use super::client::{Attempt, classify_grpc};
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
