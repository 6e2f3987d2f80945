//! OTLP/gRPC receiver: the `MetricsService` and `TraceService` `Export` methods.
//!
//! tonic frames the messages, decompresses them (gzip, zstd) and caps their size at
//! `receivers.otlp.max_request_size`; its codec here hands over the message bytes undecoded, so that
//! Spindle's own decoder ([`Shared::export`]) estimates, admits and decodes them and a malformed
//! payload is `INVALID_ARGUMENT` naming the problem, as over HTTP (tonic's decoder would say
//! `INTERNAL`). What tonic itself refuses before that (corrupt compression, bad framing, too large)
//! is re-coded by [`status::grpc_refusal`] and counted.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use tokio_util::sync::CancellationToken;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::BoxFuture;
use tonic::{Status, server::NamedService};

use super::decode::Encoding;
use super::stats::ReceiverStats;
use super::status;
use super::{Consumer, Export, Shared};
use crate::model::{Protocol, Signal};
use crate::server::ConnectionStats;
use crate::util::tokens::Scope;

/// An OTLP request type served over gRPC.
pub trait GrpcExport: Export {
    /// The gRPC service name.
    const SERVICE: &'static str;
    /// The path of its `Export` method.
    const PATH: &'static str;
}

impl GrpcExport for ExportMetricsServiceRequest {
    const SERVICE: &'static str = "opentelemetry.proto.collector.metrics.v1.MetricsService";
    const PATH: &'static str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";
}

impl GrpcExport for ExportTraceServiceRequest {
    const SERVICE: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
    const PATH: &'static str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
}

/// The `Export` service of one signal.
pub struct OtlpService<C, R> {
    shared: Shared<C>,
    _request: PhantomData<fn() -> R>,
}

impl<C, R> OtlpService<C, R> {
    /// The service over the shared receiver state.
    pub fn new(shared: Shared<C>) -> Self {
        Self {
            shared,
            _request: PhantomData,
        }
    }
}

impl<C, R> std::fmt::Debug for OtlpService<C, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpService")
            .field("path", &std::any::type_name::<R>())
            .finish()
    }
}

impl<C, R> Clone for OtlpService<C, R> {
    fn clone(&self) -> Self {
        Self::new(self.shared.clone())
    }
}

impl<C, R: GrpcExport> NamedService for OtlpService<C, R> {
    const NAME: &'static str = R::SERVICE;
}

impl<C, R, B> tower::Service<http::Request<B>> for OtlpService<C, R>
where
    C: Consumer,
    R: GrpcExport,
    B: tonic::codegen::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != R::PATH {
            return Box::pin(async { Ok(Status::unimplemented("unknown method").into_http()) });
        }
        // The token is checked on the metadata, before the message is read.
        let scope = match self.shared.authenticate(req.headers(), R::SIGNAL, Protocol::Grpc) {
            Ok(scope) => scope,
            Err(r) => {
                let st = r.grpc_status();
                return Box::pin(async move { Ok(st.into_http()) });
            }
        };
        let limit = usize::try_from(self.shared.max_request_size).unwrap_or(usize::MAX);
        let unary = Unary::<C, R>(self.shared.clone(), scope, PhantomData);
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(RawCodec::<R::Response>(PhantomData))
                .accept_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Zstd)
                .max_decoding_message_size(limit);
            Ok(grpc.unary(unary, req).await)
        })
    }
}

struct Unary<C, R>(Shared<C>, Scope, PhantomData<fn() -> R>);

impl<C: Consumer, R: GrpcExport> tonic::server::UnaryService<Bytes> for Unary<C, R> {
    type Response = R::Response;
    type Future = BoxFuture<tonic::Response<R::Response>, Status>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let shared = self.0.clone();
        let scope = self.1.clone();
        Box::pin(async move {
            let body = request.into_inner();
            shared
                .export_as::<R>(body, Encoding::Protobuf, Protocol::Grpc, &scope)
                .await
                .map(tonic::Response::new)
                .map_err(|r| r.grpc_status())
        })
    }
}

/// Encodes responses with prost; hands request messages over as bytes.
struct RawCodec<T>(PhantomData<fn(T)>);

impl<T: prost::Message + Send + 'static> Codec for RawCodec<T> {
    type Encode = T;
    type Decode = Bytes;
    type Encoder = RawCodec<T>;
    type Decoder = RawCodec<T>;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec(PhantomData)
    }
}

impl<T: prost::Message> Encoder for RawCodec<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding the response: {e}")))
    }
}

impl<T> Decoder for RawCodec<T> {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Re-codes and counts what tonic refuses before Spindle sees the request (see
/// [`status::grpc_refusal`]).
#[derive(Clone)]
struct Refusals<S> {
    inner: S,
    stats: Arc<ReceiverStats>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for Refusals<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let signal = if req.uri().path() == ExportTraceServiceRequest::PATH {
            Signal::Traces
        } else {
            Signal::Metrics
        };
        let stats = self.stats.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            let h = resp.headers();
            let code = h.get("grpc-status").and_then(|v| v.to_str().ok());
            let message = h.get("grpc-message").and_then(|v| v.to_str().ok());
            if let Some((code, reason)) = status::grpc_refusal(code, message) {
                stats.refused(signal, Protocol::Grpc, reason);
                resp.headers_mut()
                    .insert("grpc-status", http::HeaderValue::from(code as i32));
            }
            Ok(resp)
        })
    }
}

/// Serves OTLP/gRPC on an already-bound listener (over TLS when `tls` is given) until `cancel` fires, under `config`'s
/// connection limits (see [`crate::server`]): at most `max_connections`, idle ones closed after
/// `idle_timeout`, HTTP/2 keepalive pings, at most `max_concurrent_streams` per connection.
///
/// # Errors
/// The transport error if the server fails.
pub async fn serve<C: Consumer>(
    listener: tokio::net::TcpListener,
    shared: Shared<C>,
    config: super::config::GrpcListenerConfig,
    connections: Arc<ConnectionStats>,
    tls: Option<Arc<crate::server::ServerTls>>,
    cancel: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let stats = shared.stats.clone();
    let metrics = OtlpService::<C, ExportMetricsServiceRequest>::new(shared.clone());
    let traces = OtlpService::<C, ExportTraceServiceRequest>::new(shared);
    let limits = crate::server::Limits {
        max_connections: config.max_connections,
        idle_timeout: config.idle_timeout.0,
        header_read_timeout: None,
        body_read_timeout: None,
    };
    // tonic offers no HTTP/2 handshake timeout: a connection that never completes one has no
    // request in flight, so `idle_timeout` closes it.
    let (incoming, closer) = crate::server::incoming(listener, limits, connections, tls);
    // Idle connections would hold the graceful shutdown until their idle timeout.
    let shutdown = async move {
        cancel.cancelled().await;
        closer.close_idle();
    };
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(config.keepalive_interval.0))
        .http2_keepalive_timeout(Some(config.keepalive_timeout.0))
        .max_concurrent_streams(config.max_concurrent_streams)
        .timeout(config.request_timeout.0)
        .tcp_nodelay(true)
        .layer(tower::layer::layer_fn(move |inner| Refusals {
            inner,
            stats: stats.clone(),
        }))
        .layer(crate::server::TrackLayer)
        .add_service(metrics)
        .add_service(traces)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
