//! OTLP/gRPC receiver: the tonic `MetricsService` and `TraceService` `Export` methods.
//!
//! gzip and zstd request compression are accepted; the decoded message size is capped at
//! `receivers.otlp.max_request_size`.

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use prost::Message;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

use super::{Consumer, Shared, metrics_response, traces_response};
use crate::model::Protocol;

struct Metrics<C>(Shared<C>);
struct Traces<C>(Shared<C>);

#[tonic::async_trait]
impl<C: Consumer> MetricsService for Metrics<C> {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let req = request.into_inner();
        let size = req.encoded_len() as u64;
        let out = self.0.metrics(req, size, Protocol::Grpc).map_err(|r| r.grpc_status())?;
        Ok(Response::new(metrics_response(out)))
    }
}

#[tonic::async_trait]
impl<C: Consumer> TraceService for Traces<C> {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let req = request.into_inner();
        let size = req.encoded_len() as u64;
        let out = self.0.traces(req, size, Protocol::Grpc).map_err(|r| r.grpc_status())?;
        Ok(Response::new(traces_response(out)))
    }
}

/// Serves OTLP/gRPC on an already-bound listener until `cancel` fires.
///
/// # Errors
/// The transport error if the server fails.
pub async fn serve<C: Consumer>(
    listener: tokio::net::TcpListener,
    shared: Shared<C>,
    cancel: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let limit = usize::try_from(shared.max_request_size).unwrap_or(usize::MAX);
    let metrics = MetricsServiceServer::new(Metrics(shared.clone()))
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .max_decoding_message_size(limit);
    let traces = TraceServiceServer::new(Traces(shared))
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .max_decoding_message_size(limit);
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(too_large_is_resource_exhausted))
        .add_service(metrics)
        .add_service(traces)
        .serve_with_incoming_shutdown(incoming, cancel.cancelled_owned())
        .await
}

/// tonic refuses an uncompressed message over the size cap with `OUT_OF_RANGE`, which OTLP clients
/// retry; the same request compressed gets `RESOURCE_EXHAUSTED`. Make both the latter, which
/// (without `RetryInfo`) tells the client not to retry.
fn too_large_is_resource_exhausted<B>(mut resp: http::Response<B>) -> http::Response<B> {
    let h = resp.headers();
    let out_of_range = h.get("grpc-status").is_some_and(|v| v == "11");
    let too_large = h
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|m| m.contains("message%20length%20too%20large") || m.contains("message length too large"));
    if out_of_range && too_large {
        resp.headers_mut()
            .insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    resp
}
