//! [`OtlpSpanProcessor`]: the span processor of the default OTLP traces path. `on_end` only
//! `try_send`s the finished `SpanData` into a bounded channel (a full channel drops the span and
//! counts it, never blocking the service); a thread of its own batches the spans by count and
//! time, encodes each batch as OTLP protobuf straight from the `SpanData` ([`super::encode`]),
//! compresses it with gzip at level 1 (unless the transport's compression is `none`: then nothing
//! of gzip runs) and sends it through the crate's [`Transport`] on the exporters' runtime.
//!
//! It behaves as the SDK's `BatchSpanProcessor` and OTLP span exporter it replaces: the same
//! channel bound, batch size, delay and export deadline ([`BatchSettings`]), an export when a full batch is waiting, when the delay has passed,
//! and on `force_flush` (waited for up to 5 s) and `shutdown` (up to its timeout), and the same log
//! events (target `opentelemetry_sdk`, names `BatchSpanProcessor.SpanDroppingStarted` on the first
//! drop, `BatchSpanProcessor.SpansDropped` with the count at shutdown,
//! `BatchSpanProcessor.ExportError` when an export fails for good — throttled by the crate's log
//! filter, [`crate::throttle`] — and, target `opentelemetry-otlp`, `…Client.PartialSuccess` when
//! the receiver rejected some spans).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry::Context;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};

use super::BatchSettings;
use super::encode::{EncodedResource, encode_request, encode_resource};
use crate::transport::{BodyEncoder, RETRY, RetryPolicy, Transport};

/// How long `force_flush` waits for the export thread (the SDK batch processor's).
const FORCE_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// What the service's threads tell the export thread besides spans.
enum Control {
    /// A full batch is waiting.
    Export,
    /// Export everything queued, then answer.
    Flush(SyncSender<OTelSdkResult>),
    /// Export everything queued, answer, and stop.
    Shutdown(SyncSender<OTelSdkResult>),
    /// The tracer provider's resource.
    Resource(EncodedResource),
}

/// The processor; see the module documentation.
pub(crate) struct OtlpSpanProcessor {
    spans: SyncSender<SpanData>,
    control: SyncSender<Control>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Spans in the channel (counted before they are sent, so a flush never misses one).
    queued: Arc<AtomicUsize>,
    /// Whether a [`Control::Export`] is on its way.
    export_asked: Arc<AtomicBool>,
    dropped: AtomicUsize,
    settings: BatchSettings,
}

impl std::fmt::Debug for OtlpSpanProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpSpanProcessor")
            .field("settings", &self.settings)
            .field("queued", &self.queued.load(Ordering::Relaxed))
            .field("dropped", &self.dropped.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl OtlpSpanProcessor {
    /// Starts the export thread, sending through `transport` on `runtime`.
    ///
    /// # Errors
    /// When the thread cannot be spawned.
    pub(crate) fn start(
        transport: Transport,
        runtime: tokio::runtime::Handle,
        resource: &Resource,
        settings: BatchSettings,
    ) -> std::io::Result<Self> {
        Self::start_with_retry(transport, runtime, resource, settings, RETRY)
    }

    /// [`OtlpSpanProcessor::start`] with another retry policy (tests).
    ///
    /// # Errors
    /// When the thread cannot be spawned.
    pub(crate) fn start_with_retry(
        transport: Transport,
        runtime: tokio::runtime::Handle,
        resource: &Resource,
        settings: BatchSettings,
        retry: RetryPolicy,
    ) -> std::io::Result<Self> {
        let (spans, span_rx) = sync_channel(settings.max_queue_size);
        let (control, control_rx) = sync_channel(64);
        let queued = Arc::new(AtomicUsize::new(0));
        let export_asked = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            spans: span_rx,
            control: control_rx,
            queued: Arc::clone(&queued),
            export_asked: Arc::clone(&export_asked),
            settings,
            resource: encode_resource(resource),
            body: transport.encoder(),
            transport,
            runtime,
            retry,
            batch: Vec::with_capacity(settings.max_export_batch_size),
            encoded: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("spindle-spans".into())
            .spawn(move || worker.run())?;
        Ok(Self {
            spans,
            control,
            thread: Mutex::new(Some(thread)),
            queued,
            export_asked,
            dropped: AtomicUsize::new(0),
            settings,
        })
    }

    /// Spans dropped so far because the channel was full.
    #[cfg(test)]
    pub(crate) fn dropped(&self) -> usize {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Sends `message` and waits up to `timeout` for the answer.
    fn ask(&self, message: impl FnOnce(SyncSender<OTelSdkResult>) -> Control, timeout: Duration) -> OTelSdkResult {
        let (tx, rx) = sync_channel(1);
        match self.control.try_send(message(tx)) {
            Ok(()) => match rx.recv_timeout(timeout) {
                Ok(result) => result,
                Err(RecvTimeoutError::Timeout) => Err(OTelSdkError::Timeout(timeout)),
                Err(RecvTimeoutError::Disconnected) => Err(OTelSdkError::AlreadyShutdown),
            },
            Err(TrySendError::Full(_)) => Err(OTelSdkError::InternalFailure(
                "the span export thread's control channel is full (repeated flush or shutdown calls)".into(),
            )),
            Err(TrySendError::Disconnected(_)) => Err(OTelSdkError::AlreadyShutdown),
        }
    }
}

impl SpanProcessor for OtlpSpanProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        let before = self.queued.fetch_add(1, Ordering::AcqRel);
        match self.spans.try_send(span) {
            Ok(()) => {
                if before + 1 >= self.settings.max_export_batch_size
                    && !self.export_asked.load(Ordering::Relaxed)
                    && !self.export_asked.swap(true, Ordering::Relaxed)
                    && self.control.try_send(Control::Export).is_err()
                {
                    self.export_asked.store(false, Ordering::Relaxed);
                }
            }
            Err(TrySendError::Full(_)) => {
                self.queued.fetch_sub(1, Ordering::AcqRel);
                if self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!(
                        name: "BatchSpanProcessor.SpanDroppingStarted",
                        target: "opentelemetry_sdk",
                        name = "BatchSpanProcessor.SpanDroppingStarted",
                        message = "BatchSpanProcessor dropped a Span due to queue full. No further log will be emitted for further drops until Shutdown. During Shutdown time, a log will be emitted with exact count of total spans dropped."
                    );
                }
            }
            Err(TrySendError::Disconnected(_)) => {
                self.queued.fetch_sub(1, Ordering::AcqRel);
                tracing::warn!(
                    name: "BatchSpanProcessor.OnEnd.AfterShutdown",
                    target: "opentelemetry_sdk",
                    name = "BatchSpanProcessor.OnEnd.AfterShutdown",
                    message = "Spans are being emitted even after Shutdown. This indicates incorrect lifecycle management of TracerProvider in application. Spans will not be exported."
                );
            }
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.ask(Control::Flush, FORCE_FLUSH_TIMEOUT)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let dropped = self.dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(
                name: "BatchSpanProcessor.SpansDropped",
                target: "opentelemetry_sdk",
                name = "BatchSpanProcessor.SpansDropped",
                dropped_span_count = dropped,
                max_queue_size = self.settings.max_queue_size,
                message = "Spans were dropped due to a queue being full. The count represents the total count of spans dropped in the lifetime of this BatchSpanProcessor. Consider increasing the queue size and/or decrease delay between intervals."
            );
        }
        let result = self.ask(Control::Shutdown, timeout);
        if result.is_ok()
            && let Some(thread) = self.thread.lock().unwrap_or_else(PoisonError::into_inner).take()
        {
            let _ = thread.join();
        }
        result
    }

    fn set_resource(&mut self, resource: &Resource) {
        let _ = self.control.try_send(Control::Resource(encode_resource(resource)));
    }
}

/// Logs an accepted answer's `partial_success` (spans the receiver rejected), as
/// `opentelemetry-otlp`'s span exporters do: once per answer, never retried.
pub(super) fn log_partial_success(transport: &Transport, answer: &[u8]) {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
    use prost::Message as _;
    let Some(partial) = ExportTraceServiceResponse::decode(answer)
        .ok()
        .and_then(|r| r.partial_success)
        .filter(|p| p.rejected_spans > 0 || !p.error_message.is_empty())
    else {
        return;
    };
    if transport.is_grpc() {
        tracing::warn!(
            name: "TonicTracesClient.PartialSuccess",
            target: "opentelemetry-otlp",
            name = "TonicTracesClient.PartialSuccess",
            rejected_spans = partial.rejected_spans,
            error_message = partial.error_message.as_str()
        );
    } else {
        tracing::warn!(
            name: "HttpTraceClient.PartialSuccess",
            target: "opentelemetry-otlp",
            name = "HttpTraceClient.PartialSuccess",
            rejected_spans = partial.rejected_spans,
            error_message = partial.error_message.as_str()
        );
    }
}

/// The export thread's state.
struct Worker {
    spans: Receiver<SpanData>,
    control: Receiver<Control>,
    queued: Arc<AtomicUsize>,
    export_asked: Arc<AtomicBool>,
    settings: BatchSettings,
    resource: EncodedResource,
    transport: Transport,
    runtime: tokio::runtime::Handle,
    retry: RetryPolicy,
    /// One batch's spans; reused.
    batch: Vec<SpanData>,
    /// One batch's protobuf bytes; reused.
    encoded: Vec<u8>,
    /// The transport's body encoder (the gzip compressor, or none); reused.
    body: BodyEncoder,
}

impl Worker {
    fn run(mut self) {
        // Whatever the exporter's stack does here produces no telemetry of its own.
        let _suppressed = Context::enter_telemetry_suppressed_scope();
        let mut last_export = Instant::now();
        loop {
            let wait = self
                .settings
                .scheduled_delay
                .checked_sub(last_export.elapsed())
                .unwrap_or(Duration::ZERO);
            let result = match self.control.recv_timeout(wait) {
                Ok(Control::Export) => {
                    self.export_asked.store(false, Ordering::Relaxed);
                    self.export_queued()
                }
                Ok(Control::Flush(answer)) => {
                    let _ = answer.send(self.export_queued());
                    Ok(())
                }
                Ok(Control::Shutdown(answer)) => {
                    let _ = answer.send(self.export_queued());
                    return;
                }
                Ok(Control::Resource(resource)) => {
                    self.resource = resource;
                    continue;
                }
                Err(RecvTimeoutError::Timeout) => self.export_queued(),
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.export_queued();
                    return;
                }
            };
            // Flush and shutdown failures go back to the caller, which reports them.
            let _ = result;
            last_export = Instant::now();
        }
    }

    /// Exports what is queued now, in batches of at most `max_export_batch_size`; the first
    /// failure is returned (and logged), the later batches are still sent.
    fn export_queued(&mut self) -> OTelSdkResult {
        let mut result = Ok(());
        let mut left = self.queued.load(Ordering::Acquire);
        while left > 0 {
            self.batch.clear();
            while self.batch.len() < self.settings.max_export_batch_size.min(left) {
                match self.spans.try_recv() {
                    Ok(span) => self.batch.push(span),
                    Err(_) => break,
                }
            }
            if self.batch.is_empty() {
                break;
            }
            let n = self.batch.len();
            self.queued.fetch_sub(n, Ordering::AcqRel);
            left -= n;
            if let Err(e) = self.export_batch() {
                tracing::error!(
                    name: "BatchSpanProcessor.ExportError",
                    target: "opentelemetry_sdk",
                    name = "BatchSpanProcessor.ExportError",
                    error = %e
                );
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
        self.batch.clear();
        result
    }

    fn export_batch(&mut self) -> OTelSdkResult {
        self.encoded.clear();
        let mut groups = Vec::new();
        encode_request(&self.resource, &self.batch, &mut groups, &mut self.encoded);
        drop(groups);
        let kind = self.transport.kind();
        let body = self
            .body
            .encode(&self.encoded)
            .map_err(|e| OTelSdkError::InternalFailure(format!("{kind} span export: gzip: {e}")))?;
        let transport = self.transport.clone();
        let (retry, deadline) = (self.retry, self.settings.export_timeout);
        let answer = self
            .runtime
            .block_on(async move {
                tokio::time::timeout(deadline, transport.send(body, retry))
                    .await
                    .unwrap_or_else(|_| Err(format!("timed out after {deadline:?}")))
            })
            .map_err(|e| OTelSdkError::InternalFailure(format!("{kind} span export: {e}")))?;
        log_partial_success(&self.transport, &answer);
        Ok(())
    }
}
