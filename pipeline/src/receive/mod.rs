//! OTLP receivers: gRPC ([`grpc`]) and HTTP ([`http`]) for metrics and traces.
//!
//! In: requests from SDKs and collectors. Out: OTLP requests handed by value to a [`Consumer`] (the
//! rest of the pipeline, wired in `app`) — decoded, or as their protobuf bytes, which the consumer
//! may read in place ([`Consumer::consume_metrics_encoded`], [`Consumer::consume_traces_encoded`])
//! — and a response built from its
//! [`Outcome`]. Admission control bounds the decoded bytes in flight: before a body is decoded, the
//! memory its decoded form will take is estimated from its bytes ([`size`]) and reserved from
//! `max_inflight_bytes`; a request whose decoded form would exceed [`DECODED_FACTOR`] times its own
//! size is refused as too large, one that does not fit now as "overloaded" (retryable). So one
//! request holds at most its body, its decompressed copy and `DECODED_FACTOR` times that decoded,
//! and every refusal is counted.

pub mod auth;
pub mod config;
pub mod decode;
pub mod grpc;
pub mod http;
pub mod size;
pub mod stats;
pub mod status;

use std::sync::Arc;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use self::stats::ReceiverStats;
use crate::model::{Outcome, Protocol, Signal};
use crate::util::tokens::{Scope, TokenFile};
use decode::{DECODED_FACTOR, DecodeError, Encoding, MIN_DECODED, OtlpRequest};
use status::Refusal;

/// An OTLP export request type and what the receivers do with it.
pub trait Export: OtlpRequest + auth::ServiceFilter {
    /// The OTLP response message.
    type Response: prost::Message + Serialize + Default + Send + 'static;
    /// The signal it carries.
    const SIGNAL: Signal;
    /// Hands the decoded request to the consumer.
    ///
    /// # Errors
    /// The consumer's [`Refusal`].
    fn consume<C: Consumer>(consumer: &C, req: Self) -> Result<Outcome, Refusal>;
    /// Hands the request body over: decoded and passed to [`Export::consume`], unless the
    /// consumer takes it as bytes (protobuf metrics, translated in place; protobuf traces, which
    /// are forwarded as they came).
    ///
    /// # Errors
    /// [`Refusal::Decode`] when the body does not decode; the consumer's [`Refusal`].
    fn consume_body<C: Consumer>(consumer: &C, body: Bytes, encoding: Encoding) -> Result<Outcome, Refusal> {
        let req = decode::decode::<Self>(&body, encoding)?;
        Self::consume(consumer, req)
    }
    /// The response for an outcome.
    fn respond(out: Outcome) -> Self::Response;
}

impl Export for ExportMetricsServiceRequest {
    type Response = ExportMetricsServiceResponse;
    const SIGNAL: Signal = Signal::Metrics;
    fn consume<C: Consumer>(consumer: &C, req: Self) -> Result<Outcome, Refusal> {
        consumer.consume_metrics(req)
    }
    fn consume_body<C: Consumer>(consumer: &C, body: Bytes, encoding: Encoding) -> Result<Outcome, Refusal> {
        match encoding {
            Encoding::Protobuf => consumer.consume_metrics_encoded(body),
            Encoding::Json => consumer.consume_metrics(decode::decode::<Self>(&body, encoding)?),
        }
    }
    fn respond(out: Outcome) -> Self::Response {
        metrics_response(out)
    }
}

impl Export for ExportTraceServiceRequest {
    type Response = ExportTraceServiceResponse;
    const SIGNAL: Signal = Signal::Traces;
    fn consume<C: Consumer>(consumer: &C, req: Self) -> Result<Outcome, Refusal> {
        consumer.consume_traces(req)
    }
    fn consume_body<C: Consumer>(consumer: &C, body: Bytes, encoding: Encoding) -> Result<Outcome, Refusal> {
        match encoding {
            Encoding::Protobuf => consumer.consume_traces_encoded(body),
            Encoding::Json => consumer.consume_traces(decode::decode::<Self>(&body, encoding)?),
        }
    }
    fn respond(out: Outcome) -> Self::Response {
        traces_response(out)
    }
}

/// The rest of the pipeline, as the receivers see it. Implementations take batches by value.
pub trait Consumer: Send + Sync + 'static {
    /// Consumes a metrics request.
    ///
    /// # Errors
    /// [`Refusal::Overloaded`] when a downstream bound is full and the client should retry.
    fn consume_metrics(&self, req: ExportMetricsServiceRequest) -> Result<Outcome, Refusal>;
    /// Consumes a metrics request as its protobuf bytes (decompressed, not yet decoded). By
    /// default it is decoded and handed to [`Consumer::consume_metrics`].
    ///
    /// # Errors
    /// [`Refusal::Decode`] when the bytes are not a valid request; as
    /// [`Consumer::consume_metrics`] otherwise.
    fn consume_metrics_encoded(&self, body: Bytes) -> Result<Outcome, Refusal> {
        self.consume_metrics(decode::decode::<ExportMetricsServiceRequest>(
            &body,
            Encoding::Protobuf,
        )?)
    }
    /// Consumes a traces request.
    ///
    /// # Errors
    /// [`Refusal::Overloaded`] when a downstream bound is full and the client should retry.
    fn consume_traces(&self, req: ExportTraceServiceRequest) -> Result<Outcome, Refusal>;
    /// Consumes a traces request as its protobuf bytes (decompressed, not yet decoded). By
    /// default it is decoded and handed to [`Consumer::consume_traces`].
    ///
    /// # Errors
    /// [`Refusal::Decode`] when the bytes are not a valid request; as
    /// [`Consumer::consume_traces`] otherwise.
    fn consume_traces_encoded(&self, body: Bytes) -> Result<Outcome, Refusal> {
        self.consume_traces(decode::decode::<ExportTraceServiceRequest>(&body, Encoding::Protobuf)?)
    }
}

/// State shared by both receivers: the consumer, admission control, limits and self metrics.
#[derive(Debug)]
pub struct Shared<C> {
    consumer: Arc<C>,
    inflight: Arc<Semaphore>,
    max_inflight: u64,
    /// Largest accepted request after decompression, in bytes.
    pub max_request_size: u64,
    stats: Arc<ReceiverStats>,
    tokens: Option<Arc<TokenFile>>,
}

impl<C> Clone for Shared<C> {
    fn clone(&self) -> Self {
        Self {
            consumer: self.consumer.clone(),
            inflight: self.inflight.clone(),
            max_inflight: self.max_inflight,
            max_request_size: self.max_request_size,
            stats: self.stats.clone(),
            tokens: self.tokens.clone(),
        }
    }
}

impl<C: Consumer> Shared<C> {
    /// Creates the shared receiver state.
    pub fn new(consumer: Arc<C>, max_request_size: u64, max_inflight_bytes: u64, stats: Arc<ReceiverStats>) -> Self {
        let permits = max_inflight_bytes.min(Semaphore::MAX_PERMITS as u64);
        Self {
            consumer,
            inflight: Arc::new(Semaphore::new(permits as usize)),
            max_inflight: permits,
            max_request_size,
            stats,
            tokens: None,
        }
    }

    /// Requires a bearer token from `tokens` on every request (`receivers.otlp.auth`).
    #[must_use]
    pub fn with_tokens(mut self, tokens: Option<Arc<TokenFile>>) -> Self {
        self.tokens = tokens;
        self
    }

    /// The scope of the request's bearer token, from its headers alone (before its body is read);
    /// a refusal is counted.
    ///
    /// # Errors
    /// [`Refusal::Unauthenticated`] when a token file is configured and the token is missing or
    /// not in it.
    pub fn authenticate(
        &self,
        headers: &::http::HeaderMap,
        signal: Signal,
        protocol: Protocol,
    ) -> Result<Scope, Refusal> {
        auth::authenticate(self.tokens.as_deref(), headers).inspect_err(|r| self.refused(signal, protocol, r))
    }

    /// Reserves `bytes` of the in-flight budget, or refuses as overloaded.
    fn admit(&self, bytes: u64) -> Result<OwnedSemaphorePermit, Refusal> {
        let n = bytes.clamp(1, self.max_inflight).min(u32::MAX as u64) as u32;
        self.inflight
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| Refusal::Overloaded("in-flight bytes limit reached"))
    }

    /// The most memory a request of `len` decompressed bytes may take once decoded:
    /// [`DECODED_FACTOR`] times its size (at least [`MIN_DECODED`]), and never more than the whole
    /// in-flight budget.
    pub fn max_decoded_size(&self, len: usize) -> u64 {
        (len as u64)
            .saturating_mul(DECODED_FACTOR)
            .max(MIN_DECODED)
            .min(self.max_inflight)
    }

    /// Estimates the decoded size of an uncompressed `body`, admits it, decodes it and hands it to
    /// the consumer; counts the result, refusals included.
    ///
    /// # Errors
    /// A [`Refusal`] when the request is refused as a whole.
    pub async fn export<R: Export>(
        &self,
        body: Bytes,
        encoding: Encoding,
        protocol: Protocol,
    ) -> Result<R::Response, Refusal> {
        self.export_as::<R>(body, encoding, protocol, &Scope::Any).await
    }

    /// [`Shared::export`] for a token of `scope` (from [`Shared::authenticate`]): a token limited
    /// to some services writes only their resources; the rest are rejected in `partial_success`,
    /// or the request is refused as [`Refusal::PermissionDenied`] when nothing is left.
    ///
    /// With a durable export queue, the answer waits until the accepted items are on disk
    /// (`Outcome::durable`); a failed flush refuses the request as overloaded, so the sender
    /// retries (its items may then arrive twice: at least once).
    ///
    /// # Errors
    /// A [`Refusal`] when the request is refused as a whole.
    pub async fn export_as<R: Export>(
        &self,
        body: Bytes,
        encoding: Encoding,
        protocol: Protocol,
        scope: &Scope,
    ) -> Result<R::Response, Refusal> {
        let mut out = self
            .export_inner::<R>(body, encoding, scope)
            .inspect_err(|r| self.refused(R::SIGNAL, protocol, r))?;
        if let Some(d) = out.durable.take()
            && d.wait().await.is_err()
        {
            let r = Refusal::Overloaded("the export queue could not write to disk");
            self.refused(R::SIGNAL, protocol, &r);
            return Err(r);
        }
        self.stats.received(R::SIGNAL, protocol, out.accepted, out.rejected);
        Ok(R::respond(out))
    }

    fn export_inner<R: Export>(&self, body: Bytes, encoding: Encoding, scope: &Scope) -> Result<Outcome, Refusal> {
        let estimated = decode::decoded_size::<R>(&body, encoding)?;
        let limit = self.max_decoded_size(body.len());
        if estimated > limit {
            return Err(DecodeError::DecodedTooLarge { estimated, limit }.into());
        }
        // Held until the consumer has taken the batch over (stored, or queued under its own bound).
        let _permit = self.admit(estimated)?;
        if let Scope::Any = scope {
            return R::consume_body(&*self.consumer, body, encoding);
        }
        // A limited token: the decoded path (also for protobuf traces), filtered by service.
        let mut req = decode::decode::<R>(&body, encoding)?;
        drop(body);
        let denied = req.retain_services(scope);
        if denied.resources == 0 {
            return R::consume(&*self.consumer, req);
        }
        if req.is_empty() {
            return Err(Refusal::PermissionDenied(denied.message()));
        }
        let mut out = R::consume(&*self.consumer, req)?;
        out.rejected += denied.items;
        out.message = if out.message.is_empty() {
            denied.message()
        } else {
            format!("{}; {}", denied.message(), out.message)
        };
        Ok(out)
    }

    /// Counts a request refused as a whole.
    pub fn refused(&self, signal: Signal, protocol: Protocol, r: &Refusal) {
        self.stats.refused(signal, protocol, r.reason());
    }
}

/// The OTLP response for a metrics outcome: `partial_success` when points were rejected, or with
/// `rejected_data_points: 0` as a warning (the OTLP spec allows it) when there is something to say,
/// such as a metric without data.
pub fn metrics_response(out: Outcome) -> ExportMetricsServiceResponse {
    ExportMetricsServiceResponse {
        partial_success: (out.rejected > 0 || !out.message.is_empty()).then_some(ExportMetricsPartialSuccess {
            rejected_data_points: i64::try_from(out.rejected).unwrap_or(i64::MAX),
            error_message: out.message,
        }),
    }
}

/// The OTLP response for a traces outcome: `partial_success` when spans were rejected, or as a
/// warning when there is something to say.
pub fn traces_response(out: Outcome) -> ExportTraceServiceResponse {
    ExportTraceServiceResponse {
        partial_success: (out.rejected > 0 || !out.message.is_empty()).then_some(ExportTracePartialSuccess {
            rejected_spans: i64::try_from(out.rejected).unwrap_or(i64::MAX),
            error_message: out.message,
        }),
    }
}
