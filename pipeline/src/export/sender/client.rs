//! The one client every exporter sends with, over gRPC (tonic) or HTTP (reqwest): configured
//! headers, TLS (system roots plus an optional CA file, an optional client certificate), a per-attempt timeout, and body
//! compression. One attempt sends an encoded body — a batch's payloads as chunks, sent back to
//! back without being joined — and classifies the answer: delivered (with the items the peer
//! rejected), retryable (with the delay it asked for), or permanent.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};

use super::error::{AttemptError, BuildError};
use super::retry::{retry_after, retry_info};

/// A delivered attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// Items the peer accepted the request with but rejected (OTLP `partial_success`).
    pub rejected: u64,
}

/// What one attempt came to.
pub type Attempt = Result<Sent, AttemptError>;

/// The wire protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A unary gRPC call to this method path (OTLP/gRPC).
    Grpc {
        /// E.g. `/opentelemetry.proto.collector.trace.v1.TraceService/Export`.
        path: &'static str,
    },
    /// An HTTP `POST` to the endpoint URL.
    Http,
}

/// Compression the client applies to a body, with its level (bodies the exporter already
/// compressed, as remote write's snappy, use `None`). Over gRPC it is message compression
/// (`grpc-encoding`), done by the client itself because tonic compresses at a fixed level; over
/// HTTP it is `Content-Encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyCompression {
    /// Sent as it is.
    None,
    /// gzip at this level (1–9).
    Gzip(u32),
    /// zstd at this level (1–22).
    Zstd(u32),
}

impl BodyCompression {
    /// The encoding's name in `grpc-encoding` and `Content-Encoding`; `None` when uncompressed.
    fn name(self) -> Option<&'static str> {
        match self {
            BodyCompression::None => None,
            BodyCompression::Gzip(_) => Some("gzip"),
            BodyCompression::Zstd(_) => Some("zstd"),
        }
    }

    /// Writes the chunks, compressed as one stream, to `out`.
    fn compress_to(self, body: &[Bytes], mut out: impl std::io::Write) -> std::io::Result<()> {
        use std::io::Write;
        match self {
            BodyCompression::None => {
                for c in body {
                    out.write_all(c)?;
                }
            }
            BodyCompression::Gzip(level) => crate::util::gzip::write(level, body, &mut out)?,
            BodyCompression::Zstd(level) => {
                let level = i32::try_from(level).unwrap_or(i32::MAX).min(22);
                let mut enc = zstd::stream::write::Encoder::new(out, level)?;
                for c in body {
                    enc.write_all(c)?;
                }
                enc.finish()?;
            }
        }
        Ok(())
    }
}

/// How an exporter's protocol reads answers.
#[derive(Debug, Clone, Copy)]
pub struct Answers {
    /// Whether an HTTP status other than 2xx is worth retrying.
    pub http_retryable: fn(u16) -> bool,
    /// Items the peer rejected, read from the body of a successful answer.
    pub rejected: fn(&[u8]) -> u64,
}

/// Everything a client is built from.
#[derive(Debug, Clone)]
pub struct ClientConfig<'a> {
    /// The URL requests go to (for HTTP, with its path).
    pub endpoint: &'a str,
    /// gRPC or HTTP.
    pub transport: Transport,
    /// The exporter's configured `headers`.
    pub headers: &'a BTreeMap<String, String>,
    /// The protocol's own HTTP headers; they win over configured ones.
    pub protocol_headers: &'static [(&'static str, &'static str)],
    /// `User-Agent` of HTTP requests (none: the HTTP client's default, none).
    pub user_agent: Option<&'static str>,
    /// Timeout of one attempt (and of connecting).
    pub timeout: Duration,
    /// Extra PEM CA certificate for `https://` endpoints.
    pub ca_file: Option<&'a str>,
    /// PEM client certificate for `https://` endpoints that require one (mTLS), with `key_file`.
    pub cert_file: Option<&'a str>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<&'a str>,
    /// Compression of request bodies.
    pub compression: BodyCompression,
    /// How answers are read.
    pub answers: Answers,
}

/// A client for one endpoint.
pub struct Client {
    inner: Inner,
    answers: Answers,
    tls: TlsFailures,
}

/// Attempts that failed in the TLS handshake — the backend refused our client certificate, or we
/// did not trust its certificate — counted, and logged once until an attempt succeeds again.
///
/// With TLS 1.3 a server checks the client's certificate after the client considers the handshake
/// done, so its refusal arrives once the request is on its way: gRPC reports it as an `h2` error
/// (a code that would read as permanent) or as `UNAVAILABLE`, depending on timing; with TLS 1.2 it
/// is a connect error. All of these are one case: a configuration error on one side, which an
/// operator fixes (or a certificate rotation finishes) without Spindle restarting. Such attempts
/// are therefore always retryable, like the Collector's `UNAVAILABLE`, so the queue's backpressure
/// keeps accepted data instead of dropping batch after batch.
#[derive(Debug, Clone)]
pub struct TlsFailures {
    /// Counted here (an exporter hands in its stats' counter).
    pub count: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Whether the current run of failures was logged.
    logged: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// The exporter, for the log line (`trace exporter`).
    pub exporter: &'static str,
    /// Its config key prefix, for the hint (`exporters.traces.otlp`).
    pub key: &'static str,
}

impl TlsFailures {
    /// Failures of `exporter` (configured under `key`) counted into `count`.
    pub fn new(exporter: &'static str, key: &'static str, count: std::sync::Arc<std::sync::atomic::AtomicU64>) -> Self {
        Self {
            count,
            logged: Default::default(),
            exporter,
            key,
        }
    }

    fn failed(&self, failure: &TlsFailure) {
        use std::sync::atomic::Ordering;
        self.count.fetch_add(1, Ordering::Relaxed);
        if !self.logged.swap(true, Ordering::Relaxed) {
            let (what, fix) = match failure {
                TlsFailure::RefusedByPeer(_) => (
                    "the backend refused Spindle's TLS client certificate",
                    format!(
                        "set {k}.cert_file and {k}.key_file to a certificate the backend's client CA signed",
                        k = self.key
                    ),
                ),
                TlsFailure::PeerNotTrusted(_) => (
                    "Spindle does not trust the backend's TLS certificate",
                    format!(
                        "set {}.ca_file to the CA that signed it, or check the endpoint's host name",
                        self.key
                    ),
                ),
            };
            tracing::error!(
                exporter = self.exporter,
                error = %failure,
                "{}: {what}; retrying with backoff until it is fixed: {fix} (logged once until an export succeeds)",
                self.exporter
            );
        }
    }

    fn succeeded(&self) {
        self.logged.store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A TLS handshake that failed for a reason of configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsFailure {
    /// The peer sent this fatal alert: it refused our certificate (or that we sent none).
    RefusedByPeer(String),
    /// We refused the peer's certificate.
    PeerNotTrusted(String),
}

impl std::fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsFailure::RefusedByPeer(alert) => write!(f, "TLS handshake refused by the peer (alert {alert})"),
            TlsFailure::PeerNotTrusted(why) => write!(f, "TLS: the peer's certificate is not trusted ({why})"),
        }
    }
}

/// Fatal alerts a peer sends when it refuses our certificate (or that we sent none).
const CERTIFICATE_ALERTS: [&str; 9] = [
    "CertificateRequired",
    "BadCertificate",
    "UnsupportedCertificate",
    "CertificateRevoked",
    "CertificateExpired",
    "CertificateUnknown",
    "UnknownCA",
    "AccessDenied",
    "HandshakeFailure",
];

/// The TLS failure somewhere in `err`'s source chain, if any: a fatal alert about certificates
/// from the peer, or our refusal of its certificate. rustls errors travel inside `std::io::Error`s
/// (whose `source()` skips them), so each I/O error's payload is looked at too — as a
/// `rustls::Error`, or, where a layer kept only its text, as rustls's message for it
/// (`received fatal alert: …`, `invalid peer certificate: …`).
pub fn tls_failure(err: &(dyn std::error::Error + 'static)) -> Option<TlsFailure> {
    use tokio_rustls::rustls::Error as E;
    let classify = |e: &E| match e {
        E::AlertReceived(a) => {
            let name = format!("{a:?}");
            CERTIFICATE_ALERTS
                .contains(&name.as_str())
                .then_some(TlsFailure::RefusedByPeer(name))
        }
        E::InvalidCertificate(why) => Some(TlsFailure::PeerNotTrusted(format!("{why:?}"))),
        _ => None,
    };
    let from_text = |text: &str| {
        if let Some(alert) = text.strip_prefix("received fatal alert: ") {
            let alert = alert.trim();
            return CERTIFICATE_ALERTS
                .contains(&alert)
                .then(|| TlsFailure::RefusedByPeer(alert.to_owned()));
        }
        text.strip_prefix("invalid peer certificate: ")
            .map(|why| TlsFailure::PeerNotTrusted(why.trim().to_owned()))
    };
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(r) = e.downcast_ref::<E>() {
            return classify(r);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
        {
            if let Some(found) = tls_failure(inner).or_else(|| from_text(&inner.to_string())) {
                return Some(found);
            }
        }
        next = e.source();
    }
    None
}

enum Inner {
    Grpc {
        grpc: Box<tonic::client::Grpc<Compressing>>,
        /// What the codec compresses the message with (the channel marks the frame).
        compression: BodyCompression,
        path: http::uri::PathAndQuery,
        headers: tonic::metadata::MetadataMap,
        timeout: Duration,
    },
    Http {
        client: reqwest::Client,
        url: String,
        compression: BodyCompression,
    },
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.inner {
            Inner::Grpc { .. } => "grpc",
            Inner::Http { .. } => "http",
        };
        f.debug_struct("Client")
            .field("transport", &kind)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Builds the client. gRPC connects lazily, on the first attempt.
    ///
    /// # Errors
    /// [`BuildError`] when the endpoint, CA file or headers are unusable.
    pub fn new(c: &ClientConfig<'_>) -> Result<Self, BuildError> {
        let ca = match c.ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|e| BuildError::Tls(path.into(), e.to_string()))?),
            None => None,
        };
        let tls_error =
            |e: &dyn std::fmt::Display| BuildError::Tls(c.ca_file.unwrap_or_default().into(), e.to_string());
        let read = |path: &str| std::fs::read(path).map_err(|e| BuildError::Tls(path.into(), e.to_string()));
        // The client certificate and its key, both or neither.
        let identity = match (c.cert_file, c.key_file) {
            (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
            (None, None) => None,
            (Some(path), None) | (None, Some(path)) => {
                return Err(BuildError::Tls(
                    path.into(),
                    "cert_file and key_file go together".into(),
                ));
            }
        };
        let identity_error =
            |e: &dyn std::fmt::Display| BuildError::Tls(c.cert_file.unwrap_or_default().into(), e.to_string());
        let inner = match c.transport {
            Transport::Grpc { path } => {
                let mut ep = tonic::transport::Endpoint::from_shared(c.endpoint.to_string())
                    .map_err(|e| BuildError::Endpoint(c.endpoint.into(), e.to_string()))?
                    .timeout(c.timeout)
                    .connect_timeout(c.timeout);
                if c.endpoint.starts_with("https://") {
                    let mut tls = tonic::transport::ClientTlsConfig::new().with_native_roots();
                    if let Some(pem) = &ca {
                        tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
                    }
                    if let Some((cert, key)) = &identity {
                        tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
                    }
                    ep = ep.tls_config(tls).map_err(|e| tls_error(&e))?;
                }
                let channel = Compressing {
                    inner: ep.connect_lazy(),
                    compression: c.compression,
                };
                let grpc = tonic::client::Grpc::new(channel)
                    .accept_compressed(CompressionEncoding::Gzip)
                    .accept_compressed(CompressionEncoding::Zstd);
                let mut headers = tonic::metadata::MetadataMap::new();
                for (k, v) in c.headers {
                    let key = tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
                        .map_err(|_| BuildError::Header(k.clone()))?;
                    let mut val: tonic::metadata::MetadataValue<_> =
                        v.parse().map_err(|_| BuildError::Header(k.clone()))?;
                    // Configured values may be secrets: never indexed by HPACK nor shown by
                    // `Debug` (and so never in a trace-level log of h2 or tonic).
                    val.set_sensitive(true);
                    headers.insert(key, val);
                }
                Inner::Grpc {
                    grpc: Box::new(grpc),
                    compression: c.compression,
                    path: http::uri::PathAndQuery::from_static(path),
                    headers,
                    timeout: c.timeout,
                }
            }
            Transport::Http => {
                let mut headers = http::HeaderMap::new();
                for (k, v) in c.headers {
                    let name = http::HeaderName::from_bytes(k.as_bytes()).map_err(|_| BuildError::Header(k.clone()))?;
                    let mut val = http::HeaderValue::from_str(v).map_err(|_| BuildError::Header(k.clone()))?;
                    val.set_sensitive(true);
                    headers.insert(name, val);
                }
                for (k, v) in c.protocol_headers {
                    headers.insert(http::HeaderName::from_static(k), http::HeaderValue::from_static(v));
                }
                let mut builder = reqwest::Client::builder().timeout(c.timeout).default_headers(headers);
                if let Some(ua) = c.user_agent {
                    builder = builder.user_agent(ua);
                }
                if let Some(pem) = &ca {
                    let cert = reqwest::Certificate::from_pem(pem).map_err(|e| tls_error(&e))?;
                    builder = builder.add_root_certificate(cert);
                }
                if let Some((cert, key)) = &identity {
                    let mut pem = cert.clone();
                    pem.push(b'\n');
                    pem.extend_from_slice(key);
                    let id = reqwest::Identity::from_pem(&pem).map_err(|e| identity_error(&e))?;
                    builder = builder.identity(id);
                }
                let client = builder
                    .build()
                    .map_err(|e| BuildError::Endpoint(c.endpoint.into(), e.to_string()))?;
                Inner::Http {
                    client,
                    url: c.endpoint.to_string(),
                    compression: c.compression,
                }
            }
        };
        Ok(Self {
            inner,
            answers: c.answers,
            tls: TlsFailures::new("exporter", "exporters", Default::default()),
        })
    }

    /// Counts TLS handshake failures into `tls` and logs them under its exporter's name.
    pub fn with_tls_failures(mut self, tls: TlsFailures) -> Self {
        self.tls = tls;
        self
    }

    /// One attempt ([`Client::attempt`]), with TLS handshake failures made retryable, counted and
    /// logged (see [`TlsFailures`]).
    pub async fn send(&self, body: &[Bytes]) -> Attempt {
        match self.attempt(body).await {
            Ok(sent) => {
                self.tls.succeeded();
                Ok(sent)
            }
            Err(Failed::Tls(failure)) => {
                self.tls.failed(&failure);
                Err(AttemptError::Retryable {
                    after: None,
                    why: failure.to_string(),
                })
            }
            Err(Failed::Other(e)) => Err(e),
        }
    }

    /// One attempt: sends `body` (its chunks back to back form the request) and classifies the
    /// answer. Never panics on what the peer sends.
    async fn attempt(&self, body: &[Bytes]) -> Result<Sent, Failed> {
        match &self.inner {
            Inner::Grpc {
                grpc,
                compression,
                path,
                headers,
                timeout,
            } => {
                let mut grpc = (**grpc).clone();
                if let Err(e) = grpc.ready().await {
                    if let Some(t) = tls_failure(&*e) {
                        return Err(Failed::Tls(t));
                    }
                    return Err(Failed::Other(AttemptError::Retryable {
                        after: None,
                        why: format!("connecting: {e}"),
                    }));
                }
                let mut req = tonic::Request::new(body.to_vec());
                *req.metadata_mut() = headers.clone();
                req.set_timeout(*timeout);
                match grpc.unary(req, path.clone(), RawCodec(*compression)).await {
                    Ok(resp) => Ok(Sent {
                        rejected: (self.answers.rejected)(resp.get_ref()),
                    }),
                    Err(status) => Err(match tls_failure(&status) {
                        Some(t) => Failed::Tls(t),
                        // The connection failed under the call (reset, broken pipe, closed — as
                        // when a TLS 1.3 server refuses our certificate and the alert is lost):
                        // the backend gave no answer, so it is retried whatever code tonic chose.
                        None if transport_failure(&status) => Failed::Other(AttemptError::Retryable {
                            after: None,
                            why: format!("connection failed: {}", error_chain(&status)),
                        }),
                        None => Failed::Other(classify_grpc(&status)),
                    }),
                }
            }
            Inner::Http {
                client,
                url,
                compression,
            } => {
                let mut rb = client.post(url);
                let payload = match compression.name() {
                    Some(name) => {
                        let mut out = Vec::with_capacity(body.iter().map(Bytes::len).sum::<usize>() / 4);
                        if let Err(e) = compression.compress_to(body, &mut out) {
                            return Err(Failed::Other(AttemptError::Permanent(format!("{name}: {e}"))));
                        }
                        rb = rb.header(http::header::CONTENT_ENCODING, name);
                        Bytes::from(out)
                    }
                    None => join(body),
                };
                let resp = match rb.body(payload).send().await {
                    Ok(r) => r,
                    Err(e) => {
                        if let Some(t) = tls_failure(&e) {
                            return Err(Failed::Tls(t));
                        }
                        return Err(Failed::Other(AttemptError::Retryable {
                            after: None,
                            // Without the URL, which may carry credentials.
                            why: format!("sending: {}", e.without_url()),
                        }));
                    }
                };
                let status = resp.status();
                let after = retry_after(resp.headers());
                let bytes = resp.bytes().await.unwrap_or_default();
                classify_http(status.as_u16(), after, &bytes, &self.answers).map_err(Failed::Other)
            }
        }
    }
}

/// Whether a gRPC status came from the connection (tonic's transport) rather than from the
/// backend's answer (`grpc-status`, which carries no source).
fn transport_failure(status: &tonic::Status) -> bool {
    let mut next = std::error::Error::source(status);
    while let Some(e) = next {
        if e.is::<tonic::transport::Error>() || e.is::<std::io::Error>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// `err` and its sources, `: `-separated (each only once when a layer repeats its source's text).
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(e) = next {
        let text = e.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = e.source();
    }
    out
}

/// Why one attempt failed, before TLS failures are counted.
enum Failed {
    Tls(TlsFailure),
    Other(AttemptError),
}

/// The chunks as one buffer (no copy when there is one).
fn join(body: &[Bytes]) -> Bytes {
    match body {
        [one] => one.clone(),
        _ => {
            let mut out = BytesMut::with_capacity(body.iter().map(Bytes::len).sum());
            for c in body {
                out.extend_from_slice(c);
            }
            out.freeze()
        }
    }
}

/// The gRPC channel, for request messages compressed at the configured level (tonic compresses
/// at a fixed level 6, which costs about twice the CPU of level 1 for 5% smaller OTLP spans). The
/// codec ([`ChunksEncoder`]) writes the message already compressed, straight from the queued
/// chunks into tonic's buffer, and tonic frames it as uncompressed (`0`, length, message); this
/// marks the frame compressed (`1`) and sets `grpc-encoding` — five bytes rewritten, the message
/// itself neither copied nor compressed again. Answers pass through to tonic unchanged.
#[derive(Clone)]
struct Compressing {
    inner: tonic::transport::Channel,
    compression: BodyCompression,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<http::Request<tonic::body::Body>> for Compressing {
    type Response = http::Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), BoxError>> {
        tower::Service::poll_ready(&mut self.inner, cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        // The clone that was polled ready is the one that calls.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let compression = self.compression;
        Box::pin(async move {
            let Some(name) = compression.name() else {
                return inner.call(req).await.map_err(Into::into);
            };
            let (mut parts, body) = req.into_parts();
            let framed = http_body_util::BodyExt::collect(body).await?.to_bytes();
            let mut header = match framed.first() {
                Some(0) if framed.len() >= 5 => [0u8; 5],
                _ => return Err("unexpected gRPC request frame".into()),
            };
            header.copy_from_slice(&framed[..5]);
            header[0] = 1;
            parts
                .headers
                .insert("grpc-encoding", http::HeaderValue::from_static(name));
            let body = tonic::body::Body::new(Chunks(vec![Bytes::copy_from_slice(&header), framed.slice(5..)]));
            inner
                .call(http::Request::from_parts(parts, body))
                .await
                .map_err(Into::into)
        })
    }
}

/// An HTTP answer: 2xx is delivered (the body may name rejected items); the protocol's retryable
/// statuses are retried with the `Retry-After` delay; every other status is permanent.
pub fn classify_http(status: u16, after: Option<Duration>, body: &[u8], answers: &Answers) -> Attempt {
    if (200..300).contains(&status) {
        return Ok(Sent {
            rejected: (answers.rejected)(body),
        });
    }
    let reason = http::StatusCode::from_u16(status).map_or_else(|_| status.to_string(), |s| s.to_string());
    let why = format!(
        "HTTP {reason}: {}",
        String::from_utf8_lossy(&body[..body.len().min(200)]).trim()
    );
    Err(if (answers.http_retryable)(status) {
        AttemptError::Retryable { after, why }
    } else {
        AttemptError::Permanent(why)
    })
}

/// A gRPC error status, as the OTLP spec classes them: `CANCELLED`, `DEADLINE_EXCEEDED`,
/// `ABORTED`, `OUT_OF_RANGE`, `UNAVAILABLE` and `DATA_LOSS` are retryable, `RESOURCE_EXHAUSTED`
/// only with `RetryInfo`; every other code is permanent.
pub fn classify_grpc(status: &tonic::Status) -> AttemptError {
    use tonic::Code;
    let after = retry_info(status);
    let why = format!("gRPC {:?}: {}", status.code(), status.message());
    match status.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => AttemptError::Retryable { after, why },
        Code::ResourceExhausted if after.is_some() => AttemptError::Retryable { after, why },
        _ => AttemptError::Permanent(why),
    }
}

/// A request body of a few chunks, sent in order without being joined.
struct Chunks(Vec<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let next = (!self.0.is_empty()).then(|| Ok(http_body::Frame::data(self.0.remove(0))));
        std::task::Poll::Ready(next)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.0.iter().map(|c| c.len() as u64).sum())
    }
}

/// Sends pre-encoded protobuf chunks as one message, compressed with the client's compression
/// (see [`Compressing`]); hands the answer's bytes back undecoded.
#[derive(Debug, Clone, Copy)]
struct RawCodec(BodyCompression);

struct ChunksEncoder(BodyCompression);

impl Encoder for ChunksEncoder {
    type Item = Vec<Bytes>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<Bytes>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        if self.0 == BodyCompression::None {
            for chunk in item {
                dst.put(chunk);
            }
            return Ok(());
        }
        self.0
            .compress_to(&item, dst.writer())
            .map_err(|e| tonic::Status::internal(format!("compressing the request: {e}")))
    }
}

struct BytesDecoder;

impl Decoder for BytesDecoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl Codec for RawCodec {
    type Encode = Vec<Bytes>;
    type Decode = Bytes;
    type Encoder = ChunksEncoder;
    type Decoder = BytesDecoder;
    fn encoder(&mut self) -> ChunksEncoder {
        ChunksEncoder(self.0)
    }
    fn decoder(&mut self) -> BytesDecoder {
        BytesDecoder
    }
}

#[cfg(test)]
mod tests {
    use tonic_types::StatusExt;

    use super::*;

    #[test]
    fn grpc_codes_are_classified_as_the_otlp_spec_says() {
        let retry = |s: tonic::Status| matches!(classify_grpc(&s), AttemptError::Retryable { .. });
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
            AttemptError::Retryable { after, .. } => assert_eq!(after, Some(Duration::from_secs(3))),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn http_answers_use_the_protocols_retryable_statuses_and_read_rejections() {
        let answers = Answers {
            http_retryable: |s| s == 503,
            rejected: |b| b.len() as u64,
        };
        let after = Some(Duration::from_secs(2));
        assert_eq!(classify_http(200, after, b"xyz", &answers), Ok(Sent { rejected: 3 }));
        assert_eq!(classify_http(204, None, b"", &answers), Ok(Sent { rejected: 0 }));
        match classify_http(503, after, b" busy \n", &answers) {
            Err(AttemptError::Retryable { after: a, why }) => {
                assert_eq!(a, after);
                assert_eq!(why, "HTTP 503 Service Unavailable: busy");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify_http(502, after, b"", &answers),
            Err(AttemptError::Permanent(_))
        ));
        let long = vec![b'x'; 1000];
        match classify_http(400, None, &long, &answers) {
            Err(AttemptError::Permanent(why)) => assert!(why.len() < 260, "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tls_failures_are_found_wherever_they_sit_in_the_error_chain() {
        use tokio_rustls::rustls::{AlertDescription, CertificateError, Error as TlsError};
        #[derive(Debug)]
        struct Wrapper(std::io::Error);
        impl std::fmt::Display for Wrapper {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("h2 protocol error")
            }
        }
        impl std::error::Error for Wrapper {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let alert = |a| std::io::Error::other(TlsError::AlertReceived(a));
        // TLS 1.3: after the request was sent, inside an h2 error inside a gRPC status.
        let status = tonic::Status::from_error(Box::new(Wrapper(alert(AlertDescription::CertificateRequired))));
        assert_eq!(
            tls_failure(&status),
            Some(TlsFailure::RefusedByPeer("CertificateRequired".into()))
        );
        // TLS 1.2: at connect, an I/O error.
        assert_eq!(
            tls_failure(&alert(AlertDescription::BadCertificate)),
            Some(TlsFailure::RefusedByPeer("BadCertificate".into()))
        );
        let untrusted = std::io::Error::other(TlsError::InvalidCertificate(CertificateError::UnknownIssuer));
        assert!(matches!(
            tls_failure(&Wrapper(untrusted)),
            Some(TlsFailure::PeerNotTrusted(_))
        ));
        // Not about certificates: classified as before.
        assert_eq!(tls_failure(&alert(AlertDescription::DecodeError)), None);
        assert_eq!(tls_failure(&tonic::Status::unavailable("down")), None);
        assert_eq!(tls_failure(&std::io::Error::other("connection refused")), None);
        // A layer that kept only the text of rustls's error.
        let text = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "received fatal alert: CertificateRequired",
        );
        assert_eq!(
            tls_failure(&tonic::Status::from_error(Box::new(Wrapper(text)))),
            Some(TlsFailure::RefusedByPeer("CertificateRequired".into()))
        );
        let text = std::io::Error::new(std::io::ErrorKind::InvalidData, "received fatal alert: DecodeError");
        assert_eq!(tls_failure(&text), None);
        // A connection that broke under the call (the alert lost) is a transport failure,
        // whatever the code; a backend's own answer is not.
        let broken = tonic::Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::BrokenPipe,
            "stream closed because of a broken pipe",
        )));
        assert!(transport_failure(&broken));
        assert!(error_chain(&broken).contains("broken pipe"), "{}", error_chain(&broken));
        assert!(!transport_failure(&tonic::Status::unknown("the backend's own answer")));

        let t = TlsFailures::new("trace exporter", "exporters.traces.otlp", Default::default());
        let f = TlsFailure::RefusedByPeer("CertificateRequired".into());
        t.failed(&f);
        t.failed(&f);
        assert_eq!(t.count.load(std::sync::atomic::Ordering::Relaxed), 2);
        assert!(
            t.logged.load(std::sync::atomic::Ordering::Relaxed),
            "logged once, then quiet"
        );
        t.succeeded();
        assert!(
            !t.logged.load(std::sync::atomic::Ordering::Relaxed),
            "logged again after a success"
        );
    }

    #[test]
    fn chunks_are_sent_back_to_back() {
        let chunks = [Bytes::from_static(b"ab"), Bytes::from_static(b"c")];
        assert_eq!(join(&chunks), Bytes::from_static(b"abc"));
        for level in [1, 9] {
            let mut gz = Vec::new();
            BodyCompression::Gzip(level).compress_to(&chunks, &mut gz).unwrap();
            let mut raw = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut raw).unwrap();
            assert_eq!(raw, b"abc");
            let mut zs = Vec::new();
            BodyCompression::Zstd(level).compress_to(&chunks, &mut zs).unwrap();
            assert_eq!(zstd::decode_all(&zs[..]).unwrap(), b"abc");
        }
        let mut plain = Vec::new();
        BodyCompression::None.compress_to(&chunks, &mut plain).unwrap();
        assert_eq!(plain, b"abc");
    }
}
