//! The default OTLP traces path: finished spans leave the service's threads through a bounded
//! channel to an export thread of this crate ([`processor`]), which encodes OTLP straight from
//! the SDK's `SpanData` ([`encode`]) and sends it gzip-compressed (or, with
//! `OTEL_EXPORTER_OTLP_{TRACES_,}COMPRESSION=none`, uncompressed) through the crate's own OTLP
//! transport ([`crate::transport`], shared with the metrics; TLS, headers and compression from
//! [`crate::client`]). It replaces the SDK's batch span processor and `opentelemetry-otlp`'s span
//! exporter, which converted every span into `opentelemetry-proto` structs (a `String` or `Vec`
//! per attribute) and compressed at gzip level 6 (issue 19). A custom exporter
//! ([`crate::Builder::with_span_exporter`]) still runs behind the SDK's batch processor.
//!
//! What comes in: the resolved endpoint, protocol and client settings of the traces signal, and
//! the `OTEL_BSP_*` variables. What goes out: a `TracerProviderBuilder` with the processor added.

mod encode;
mod processor;

use std::time::Duration;

use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::TracerProviderBuilder;

use crate::Protocol;
use crate::client::ClientSettings;
use crate::error::InitError;
use crate::transport::{TRACES_GRPC_PATH, Transport};

pub(crate) use processor::OtlpSpanProcessor;

/// `OTEL_BSP_MAX_QUEUE_SIZE`: spans the channel holds; more are dropped and counted.
pub(crate) const OTEL_BSP_MAX_QUEUE_SIZE: &str = "OTEL_BSP_MAX_QUEUE_SIZE";
/// `OTEL_BSP_SCHEDULE_DELAY`: milliseconds between two exports of what is queued.
pub(crate) const OTEL_BSP_SCHEDULE_DELAY: &str = "OTEL_BSP_SCHEDULE_DELAY";
/// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`: spans per export request at most.
pub(crate) const OTEL_BSP_MAX_EXPORT_BATCH_SIZE: &str = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE";

/// `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`: milliseconds one span export may take, retries included.
pub(crate) const OTEL_EXPORTER_OTLP_TRACES_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT";
/// `OTEL_EXPORTER_OTLP_TIMEOUT`: the same for every signal, below the signal's own.
pub(crate) const OTEL_EXPORTER_OTLP_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";

/// Batching and the export deadline of the export thread: the SDK batch processor's and OTLP
/// span exporter's defaults and variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchSettings {
    /// Bound of the span channel (2048).
    pub(crate) max_queue_size: usize,
    /// Time between exports of what is queued (5 s).
    pub(crate) scheduled_delay: Duration,
    /// Spans per request at most, and the count that triggers an export (512).
    pub(crate) max_export_batch_size: usize,
    /// Time one export may take, retries included (10 s).
    pub(crate) export_timeout: Duration,
}

impl Default for BatchSettings {
    fn default() -> Self {
        Self {
            max_queue_size: 2048,
            scheduled_delay: Duration::from_millis(5000),
            max_export_batch_size: 512,
            export_timeout: Duration::from_secs(10),
        }
    }
}

impl BatchSettings {
    /// The defaults with the `OTEL_BSP_*` variables applied as the SDK's `BatchConfig` applies
    /// them (an unparsable value is ignored, and the batch size is at most the queue size), and
    /// the export timeout as `opentelemetry-otlp` reads it (`…_TRACES_TIMEOUT`, then
    /// `OTEL_EXPORTER_OTLP_TIMEOUT`, in milliseconds).
    pub(crate) fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Self {
        let mut s = Self::default();
        let number = |name: &str| env(name).and_then(|v| v.trim().parse::<u64>().ok());
        if let Some(n) = number(OTEL_BSP_MAX_QUEUE_SIZE) {
            s.max_queue_size = usize::try_from(n).unwrap_or(usize::MAX).max(1);
        }
        if let Some(ms) = number(OTEL_BSP_SCHEDULE_DELAY) {
            s.scheduled_delay = Duration::from_millis(ms);
        }
        if let Some(n) = number(OTEL_BSP_MAX_EXPORT_BATCH_SIZE) {
            s.max_export_batch_size = usize::try_from(n).unwrap_or(usize::MAX).max(1);
        }
        s.max_export_batch_size = s.max_export_batch_size.min(s.max_queue_size);
        if let Some(ms) = number(OTEL_EXPORTER_OTLP_TRACES_TIMEOUT).or_else(|| number(OTEL_EXPORTER_OTLP_TIMEOUT)) {
            s.export_timeout = Duration::from_millis(ms);
        }
        s
    }
}

/// What the OTLP traces path is built from.
#[derive(Debug)]
pub(crate) struct OtlpTraces<'a> {
    /// The resolved traces endpoint (for HTTP, the full URL).
    pub(crate) endpoint: &'a str,
    /// gRPC or HTTP/protobuf.
    pub(crate) protocol: Protocol,
    /// TLS files and headers of the traces signal.
    pub(crate) client: &'a ClientSettings,
    /// The exporters' runtime (entered by the caller for gRPC's lazy channel).
    pub(crate) runtime: Option<tokio::runtime::Handle>,
    /// The tracer provider's resource.
    pub(crate) resource: &'a Resource,
    /// Batching.
    pub(crate) batch: BatchSettings,
}

/// Adds the OTLP span processor to `traces`.
///
/// # Errors
/// [`InitError::Exporter`] when the endpoint or TLS settings cannot be used, or the export
/// thread cannot start.
pub(crate) fn with_otlp_export(
    traces: TracerProviderBuilder,
    otlp: OtlpTraces<'_>,
) -> Result<TracerProviderBuilder, InitError> {
    let invalid = |reason: String| InitError::Exporter {
        signal: "traces",
        source: opentelemetry_otlp::ExporterBuildError::InvalidConfiguration(format!("{}: {reason}", otlp.endpoint)),
    };
    let runtime = otlp.runtime.ok_or_else(|| invalid("no exporter runtime".into()))?;
    let transport = match otlp.protocol {
        Protocol::Grpc => Transport::grpc(otlp.endpoint, TRACES_GRPC_PATH, otlp.client),
        Protocol::HttpProtobuf => Transport::http(otlp.endpoint, otlp.client),
    }
    .map_err(invalid)?;
    let processor =
        OtlpSpanProcessor::start(transport, runtime, otlp.resource, otlp.batch).map_err(|e| InitError::Exporter {
            signal: "traces",
            source: opentelemetry_otlp::ExporterBuildError::InternalFailure(format!(
                "starting the span export thread: {e}"
            )),
        })?;
    Ok(traces.with_span_processor(processor))
}

#[cfg(test)]
mod tests;
