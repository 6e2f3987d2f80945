//! OTLP/gRPC receiver: the `MetricsService` and `TraceService` `Export` methods.
//!
//! tonic serves the HTTP/2 connections and routes by service; the unary `Export` call itself is
//! read here (`unary`): the one framed message is taken from the body (at most
//! `receivers.otlp.max_request_size`), decompressed by the receivers' one decompression
//! ([`decode::decompress`], as over HTTP: in place, into a buffer sized once) and handed to
//! [`Shared::export`] as bytes, so that Spindle estimates, admits and decodes it. Every refusal —
//! an unsupported `grpc-encoding`, bad framing, too large, corrupt compression, a malformed
//! payload — gets its OTLP status here and is counted, as over HTTP.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tonic::codegen::BoxFuture;
use tonic::{Status, server::NamedService};

use super::decode::{self, DecodeError, Encoding};
use super::status::Refusal;
use super::{Consumer, Export, Shared};
use crate::model::Protocol;
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
                let resp = r.grpc_response();
                return Box::pin(async move { Ok(resp) });
            }
        };
        let shared = self.shared.clone();
        Box::pin(async move {
            Ok(match unary::<C, R, B>(&shared, &scope, req).await {
                Ok(resp) => resp,
                Err(Refused(r)) => {
                    shared.refused(R::SIGNAL, Protocol::Grpc, &r);
                    r.grpc_response()
                }
                // Counted by `Shared::export_as`.
                Err(Answered(r)) => r.grpc_response(),
            })
        })
    }
}

/// Why a call ended without an answer of the service.
enum Failed {
    /// Refused before the request reached [`Shared`]: not counted yet.
    Refused(Refusal),
    /// Refused by [`Shared::export_as`], which counted it.
    Answered(Refusal),
}
use Failed::{Answered, Refused};

impl From<DecodeError> for Failed {
    fn from(e: DecodeError) -> Self {
        Refused(Refusal::Decode(e))
    }
}

/// One unary `Export` call: the framed message, decompressed, exported, answered.
async fn unary<C, R, B>(
    shared: &Shared<C>,
    scope: &Scope,
    req: http::Request<B>,
) -> Result<http::Response<tonic::body::Body>, Failed>
where
    C: Consumer,
    R: GrpcExport,
    B: tonic::codegen::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    let (parts, body) = req.into_parts();
    let encoding = match parts.headers.get("grpc-encoding").map(HeaderValue::to_str) {
        None | Some(Ok("identity")) => None,
        Some(Ok("gzip")) => Some("gzip"),
        Some(Ok("zstd")) => Some("zstd"),
        Some(other) => {
            let name = other.unwrap_or("(not text)").to_owned();
            return Err(Refused(Refusal::Decode(DecodeError::UnsupportedEncoding(name))));
        }
    };
    let limit = shared.max_request_size;
    let too_large = DecodeError::TooLarge {
        limit,
        decompressed: false,
    };
    // One message: its 5-byte prefix and at most `limit` bytes.
    let cap = usize::try_from(limit.saturating_add(5)).unwrap_or(usize::MAX);
    let raw = match http_body_util::Limited::new(body, cap).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large.into()),
        Err(e) => {
            let detail = format!("could not read request body: {e}");
            return Err(DecodeError::Protobuf(detail).into());
        }
    };
    let message = frame(raw, limit)?;
    let message = match (message, encoding) {
        (Message::Plain(m), _) => m,
        (Message::Compressed(m), Some(e)) => decode::decompress(m, Some(e), limit)?,
        (Message::Compressed(_), None) => {
            let detail = "a compressed message without a grpc-encoding header".to_owned();
            return Err(DecodeError::Protobuf(detail).into());
        }
    };
    let answer = shared
        .export_as::<R>(message, Encoding::Protobuf, Protocol::Grpc, scope)
        .await
        .map_err(Answered)?;
    Ok(reply(&answer))
}

/// The one message of a unary call, with its compressed flag.
enum Message {
    Plain(Bytes),
    Compressed(Bytes),
}

/// Takes the one length-prefixed message out of a unary call's body.
fn frame(mut raw: Bytes, limit: u64) -> Result<Message, DecodeError> {
    let malformed = |what: &str| DecodeError::Protobuf(format!("gRPC framing: {what}"));
    if raw.len() < 5 {
        return Err(malformed("the request has no message"));
    }
    let flag = raw[0];
    let len = u32::from_be_bytes([raw[1], raw[2], raw[3], raw[4]]);
    if u64::from(len) > limit {
        return Err(DecodeError::TooLarge {
            limit,
            decompressed: false,
        });
    }
    let end = 5 + len as usize;
    if raw.len() < end {
        return Err(malformed("the message ends early"));
    }
    if raw.len() > end {
        return Err(malformed("more than one message in a unary call"));
    }
    let message = raw.split_off(5);
    match flag {
        0 => Ok(Message::Plain(message)),
        1 => Ok(Message::Compressed(message)),
        _ => Err(malformed("unknown compressed flag")),
    }
}

/// The response to a served call: the message, then `grpc-status: 0` in the trailers.
fn reply<M: prost::Message>(answer: &M) -> http::Response<tonic::body::Body> {
    let len = answer.encoded_len();
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    // Cannot fail: `BytesMut` grows as needed.
    if let Err(e) = answer.encode(&mut buf) {
        return Status::internal(format!("encoding the response: {e}")).into_http();
    }
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let body = http_body_util::Full::new(buf.freeze()).with_trailers(async move { Some(Ok(trailers)) });
    let mut resp = http::Response::new(tonic::body::Body::new(body));
    let headers = resp.headers_mut();
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-accept-encoding", HeaderValue::from_static("gzip,zstd"));
    resp
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
        .layer(crate::server::TrackLayer)
        .add_service(metrics)
        .add_service(traces)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
