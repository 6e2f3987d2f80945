//! OTLP receivers: gRPC ([`grpc`]) and HTTP ([`http`]) for metrics and traces.
//!
//! In: requests from SDKs and collectors. Out: decoded OTLP messages handed by value to a
//! [`Consumer`] (the rest of the pipeline, wired in `app`), and a response built from its
//! [`Outcome`]. Admission control bounds the decoded bytes in flight; what it refuses is answered
//! with the retryable "overloaded" status and counted.

pub mod decode;
pub mod grpc;
pub mod http;
pub mod status;

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::model::{Outcome, Protocol, Signal};
use crate::telemetry::Telemetry;
use status::Refusal;

/// The rest of the pipeline, as the receivers see it. Implementations take batches by value.
pub trait Consumer: Send + Sync + 'static {
    /// Consumes a metrics request.
    ///
    /// # Errors
    /// [`Refusal::Overloaded`] when a downstream bound is full and the client should retry.
    fn consume_metrics(&self, req: ExportMetricsServiceRequest) -> Result<Outcome, Refusal>;
    /// Consumes a traces request.
    ///
    /// # Errors
    /// [`Refusal::Overloaded`] when a downstream bound is full and the client should retry.
    fn consume_traces(&self, req: ExportTraceServiceRequest) -> Result<Outcome, Refusal>;
}

/// State shared by both receivers: the consumer, admission control, limits and self metrics.
#[derive(Debug)]
pub struct Shared<C> {
    consumer: Arc<C>,
    inflight: Arc<Semaphore>,
    max_inflight: u64,
    /// Largest accepted request after decompression, in bytes.
    pub max_request_size: u64,
    telemetry: Arc<Telemetry>,
}

impl<C> Clone for Shared<C> {
    fn clone(&self) -> Self {
        Self {
            consumer: self.consumer.clone(),
            inflight: self.inflight.clone(),
            max_inflight: self.max_inflight,
            max_request_size: self.max_request_size,
            telemetry: self.telemetry.clone(),
        }
    }
}

impl<C: Consumer> Shared<C> {
    /// Creates the shared receiver state.
    pub fn new(consumer: Arc<C>, max_request_size: u64, max_inflight_bytes: u64, telemetry: Arc<Telemetry>) -> Self {
        let permits = max_inflight_bytes.min(Semaphore::MAX_PERMITS as u64);
        Self {
            consumer,
            inflight: Arc::new(Semaphore::new(permits as usize)),
            max_inflight: permits,
            max_request_size,
            telemetry,
        }
    }

    /// Reserves `bytes` of the in-flight budget, or refuses as overloaded.
    fn admit(&self, bytes: u64) -> Result<OwnedSemaphorePermit, Refusal> {
        let n = bytes.clamp(1, self.max_inflight).min(u32::MAX as u64) as u32;
        self.inflight
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| Refusal::Overloaded("in-flight bytes limit reached"))
    }

    /// Admits and consumes a decoded metrics request, counting the result.
    ///
    /// # Errors
    /// A [`Refusal`] when the request is refused as a whole.
    pub fn metrics(&self, req: ExportMetricsServiceRequest, size: u64, protocol: Protocol) -> Result<Outcome, Refusal> {
        let _permit = self
            .admit(size)
            .inspect_err(|r| self.refused(Signal::Metrics, protocol, r))?;
        let out = self
            .consumer
            .consume_metrics(req)
            .inspect_err(|r| self.refused(Signal::Metrics, protocol, r))?;
        self.telemetry
            .received(Signal::Metrics, protocol, out.accepted, out.rejected);
        Ok(out)
    }

    /// Admits and consumes a decoded traces request, counting the result.
    ///
    /// # Errors
    /// A [`Refusal`] when the request is refused as a whole.
    pub fn traces(&self, req: ExportTraceServiceRequest, size: u64, protocol: Protocol) -> Result<Outcome, Refusal> {
        let _permit = self
            .admit(size)
            .inspect_err(|r| self.refused(Signal::Traces, protocol, r))?;
        let out = self
            .consumer
            .consume_traces(req)
            .inspect_err(|r| self.refused(Signal::Traces, protocol, r))?;
        self.telemetry
            .received(Signal::Traces, protocol, out.accepted, out.rejected);
        Ok(out)
    }

    /// Counts a request refused as a whole.
    pub fn refused(&self, signal: Signal, protocol: Protocol, r: &Refusal) {
        self.telemetry.refused(signal, protocol, r.reason());
    }
}

/// The OTLP response for a metrics outcome: `partial_success` only when points were rejected.
pub fn metrics_response(out: Outcome) -> ExportMetricsServiceResponse {
    ExportMetricsServiceResponse {
        partial_success: (out.rejected > 0).then_some(ExportMetricsPartialSuccess {
            rejected_data_points: i64::try_from(out.rejected).unwrap_or(i64::MAX),
            error_message: out.message,
        }),
    }
}

/// The OTLP response for a traces outcome: `partial_success` only when spans were rejected.
pub fn traces_response(out: Outcome) -> ExportTraceServiceResponse {
    ExportTraceServiceResponse {
        partial_success: (out.rejected > 0).then_some(ExportTracePartialSuccess {
            rejected_spans: i64::try_from(out.rejected).unwrap_or(i64::MAX),
            error_message: out.message,
        }),
    }
}
