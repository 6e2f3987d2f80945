//! The OTLP transport both signals' exporters send through: one encoded request, compressed as
//! the signal's [`Compression`] says (gzip at level 1 by default, or not at all), goes to an OTLP
//! receiver over gRPC or HTTP/protobuf, with the TLS settings and headers of [`ClientSettings`],
//! and is retried as the OTLP specification says (gRPC `UNAVAILABLE`, `RESOURCE_EXHAUSTED` with
//! `RetryInfo`, …; HTTP 429, 502, 503, 504 and connection errors) with exponential backoff and
//! jitter ([`RETRY`]), waiting at least the server's `Retry-After` / `RetryInfo` delay.
//!
//! What comes in: the request's protobuf bytes, made into a [`Body`] by the transport's own
//! [`BodyEncoder`] on the exporting thread. What goes out: `Ok` once the receiver accepted it, or
//! the last attempt's error.
//!
//! This module is the one place that decides compression for both signals: the encoder
//! ([`Transport::encoder`]) compresses or not, and [`Transport::send`] sets the matching
//! `grpc-encoding` / `Content-Encoding` header and gRPC frame flag. With [`Compression::None`]
//! nothing of gzip runs (no compressor is even created), the body is the protobuf bytes, no
//! encoding header is sent and the gRPC frame's compressed flag is `0`.
//!
//! Over gRPC the message is sent as tonic frames it (uncompressed, flag `0`), and with gzip
//! [`EncodedFrames`] marks the frame compressed and sets `grpc-encoding: gzip` — tonic itself would
//! compress at a fixed level 6, about twice the CPU of level 1 for 5% smaller OTLP (the pipeline's
//! exporters do the same, `export/sender/client.rs`).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

use crate::client::{ClientSettings, Headers};

/// The retry policy of an export.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetryPolicy {
    /// Attempts after the first.
    pub(crate) max_retries: u32,
    /// Delay before the first retry; doubled for each further one.
    pub(crate) initial_delay: Duration,
    /// Largest backoff delay (a server's throttling delay may exceed it, up to [`MAX_THROTTLE`]).
    pub(crate) max_delay: Duration,
    /// Up to this much random delay is added to each backoff delay.
    pub(crate) max_jitter: Duration,
}

/// 3 retries, 100 ms doubling to at most 1.6 s, up to 100 ms of jitter (the SDK exporter's
/// `RetryPolicy::recommended()`).
pub(crate) const RETRY: RetryPolicy = RetryPolicy {
    max_retries: 3,
    initial_delay: Duration::from_millis(100),
    max_delay: Duration::from_millis(1600),
    max_jitter: Duration::from_millis(100),
};

/// The most of an HTTP answer's body that is read (a partial success answer is a few bytes).
pub(crate) const MAX_ANSWER: usize = 64 << 10;

/// The longest server-requested delay honoured before a retry; longer requests end the export.
const MAX_THROTTLE: Duration = Duration::from_secs(5);

/// The gRPC method of each signal's OTLP service.
pub(crate) const TRACES_GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// See [`TRACES_GRPC_PATH`].
pub(crate) const METRICS_GRPC_PATH: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

/// How one failed attempt may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Not retryable.
    Never,
    /// Retry after the backoff delay.
    Backoff,
    /// Retry after at least this delay, requested by the server.
    After(Duration),
}

pub(crate) fn classify_grpc(status: &tonic::Status) -> Retry {
    use tonic_types::StatusExt as _;
    let delay = status.get_details_retry_info().and_then(|r| r.retry_delay);
    match status.code() {
        tonic::Code::ResourceExhausted => delay.map_or(Retry::Never, Retry::After),
        tonic::Code::Unavailable => delay.filter(|d| !d.is_zero()).map_or(Retry::Backoff, Retry::After),
        tonic::Code::Cancelled
        | tonic::Code::DeadlineExceeded
        | tonic::Code::Aborted
        | tonic::Code::OutOfRange
        | tonic::Code::DataLoss => Retry::Backoff,
        _ => Retry::Never,
    }
}

pub(crate) fn classify_http(status: u16, retry_after: Option<&str>) -> Retry {
    match status {
        429 | 503 => retry_after
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(Retry::Backoff, |s| Retry::After(Duration::from_secs(s))),
        502 | 504 => Retry::Backoff,
        _ => Retry::Never,
    }
}

/// Up to `max` of jitter, from the clock's nanoseconds (no randomness crate needed for this).
fn jitter(max: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let max_nanos = max.as_nanos().max(1);
    Duration::from_nanos((u128::from(nanos) % max_nanos) as u64)
}

/// Runs `attempt` until it succeeds, fails for good, or the policy's retries are spent; the error
/// of the last attempt is returned, with how many attempts were made.
async fn with_retry<T, F, Fut>(policy: RetryPolicy, mut attempt: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, (Retry, String)>>,
{
    let mut delay = policy.initial_delay;
    let mut tries = 0u32;
    loop {
        tries += 1;
        let (retry, error) = match attempt().await {
            Ok(answer) => return Ok(answer),
            Err(e) => e,
        };
        let wait = match retry {
            Retry::Never => None,
            Retry::Backoff => Some(delay + jitter(policy.max_jitter)),
            Retry::After(d) if d <= MAX_THROTTLE => Some(d.max(delay) + jitter(policy.max_jitter)),
            Retry::After(_) => None,
        };
        match wait {
            Some(wait) if tries <= policy.max_retries => {
                tokio::time::sleep(wait).await;
                delay = (delay * 2).min(policy.max_delay);
            }
            _ => {
                return Err(if tries > 1 {
                    format!("{error} (after {tries} attempts)")
                } else {
                    error
                });
            }
        }
    }
}

/// How one signal's request bodies are compressed: `OTEL_EXPORTER_OTLP_COMPRESSION` and its
/// per-signal variants ([`crate::OTEL_EXPORTER_OTLP_COMPRESSION`]), read by
/// [`ClientSettings::from_env`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Compression {
    /// gzip at level 1 ([`Gzip`]; fast: OTLP compresses about as well at 1 as at 6). The crate's
    /// default, where the specification's is `none`: a service usually exports across a network.
    #[default]
    Gzip,
    /// The protobuf bytes as they are: for a receiver on the same host, where compressing costs
    /// CPU and saves nothing that matters.
    None,
}

impl Compression {
    /// The `grpc-encoding` / `Content-Encoding` value, if any.
    pub(crate) fn header(self) -> Option<&'static str> {
        match self {
            Compression::Gzip => Some("gzip"),
            Compression::None => None,
        }
    }
}

/// One request's body as its transport sends it: made by that transport's [`BodyEncoder`].
#[derive(Debug, Clone)]
pub(crate) struct Body(Bytes);

/// Makes request bodies for one [`Transport`] ([`Transport::encoder`]): compresses them with a
/// [`Gzip`] kept between requests, or passes them through. One per exporting thread.
#[derive(Debug)]
pub(crate) enum BodyEncoder {
    /// gzip at level 1, the deflate state kept.
    Gzip(Gzip),
    /// No compression: no compressor exists, nothing of gzip runs.
    None,
}

impl BodyEncoder {
    /// The body for the request whose protobuf bytes are `protobuf` (copied when not compressed:
    /// the caller keeps its buffer for the next request).
    ///
    /// # Errors
    /// The compressor's message (it writes to memory, so in practice never).
    pub(crate) fn encode(&mut self, protobuf: &[u8]) -> Result<Body, String> {
        match self {
            BodyEncoder::Gzip(gzip) => gzip.compress(protobuf).map(|gz| Body(Bytes::from(gz))),
            BodyEncoder::None => Ok(Body(Bytes::copy_from_slice(protobuf))),
        }
    }

    /// [`BodyEncoder::encode`] for a buffer the caller gives up (not copied when not compressed).
    ///
    /// # Errors
    /// The compressor's message (it writes to memory, so in practice never).
    pub(crate) fn encode_vec(&mut self, protobuf: Vec<u8>) -> Result<Body, String> {
        match self {
            BodyEncoder::Gzip(gzip) => gzip.compress(&protobuf).map(|gz| Body(Bytes::from(gz))),
            BodyEncoder::None => Ok(Body(Bytes::from(protobuf))),
        }
    }
}

/// A gzip compressor at level 1 that keeps its deflate state between requests: a new zlib-rs
/// stream costs about 450k instructions of set-up (about 1k per span of a 512-span batch), a reset
/// stream less than half that.
pub(crate) struct Gzip {
    deflate: flate2::Compress,
}

impl std::fmt::Debug for Gzip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gzip")
    }
}

impl Gzip {
    /// The gzip header: deflate, no flags, no time, fastest level, unknown OS.
    const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 4, 255];

    /// A compressor.
    pub(crate) fn new() -> Self {
        Self {
            deflate: flate2::Compress::new(flate2::Compression::fast(), false),
        }
    }

    /// `body` as one gzip member.
    ///
    /// # Errors
    /// The compressor's message (it writes to memory, so in practice never).
    pub(crate) fn compress(&mut self, body: &[u8]) -> Result<Vec<u8>, String> {
        self.deflate.reset();
        let mut out = Vec::with_capacity(body.len() / 4 + 64);
        out.extend_from_slice(&Self::HEADER);
        loop {
            let read = usize::try_from(self.deflate.total_in())
                .unwrap_or(usize::MAX)
                .min(body.len());
            if out.len() == out.capacity() {
                out.reserve(out.capacity());
            }
            let status = self
                .deflate
                .compress_vec(&body[read..], &mut out, flate2::FlushCompress::Finish)
                .map_err(|e| e.to_string())?;
            if status == flate2::Status::StreamEnd {
                break;
            }
        }
        let mut crc = flate2::Crc::new();
        crc.update(body);
        out.extend_from_slice(&crc.sum().to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        Ok(out)
    }
}

/// Where one signal's requests go, and how their bodies are compressed; cheap to clone (the
/// clients share their connections).
#[derive(Clone)]
pub(crate) struct Transport {
    wire: Wire,
    headers: Headers,
    compression: Compression,
}

/// The protocol's client.
#[derive(Clone)]
enum Wire {
    /// OTLP/gRPC: the channel, the service's method.
    Grpc(Box<tonic::client::Grpc<EncodedFrames>>, http::uri::PathAndQuery),
    /// OTLP/HTTP: the client, the URL.
    Http(reqwest::Client, Arc<str>),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut t = match &self.wire {
            Wire::Grpc(_, path) => {
                let mut t = f.debug_tuple("Grpc");
                t.field(path);
                t
            }
            Wire::Http(_, url) => {
                let mut t = f.debug_tuple("Http");
                t.field(url);
                t
            }
        };
        t.field(&self.headers).field(&self.compression).finish()
    }
}

impl Transport {
    /// A gRPC transport to `endpoint`'s method `path` ([`TRACES_GRPC_PATH`],
    /// [`METRICS_GRPC_PATH`]), with the TLS settings, headers and compression of `settings`.
    /// Connects lazily; must be called inside the exporters' runtime.
    ///
    /// # Errors
    /// A message when the endpoint or the TLS settings cannot be used.
    pub(crate) fn grpc(endpoint: &str, path: &'static str, settings: &ClientSettings) -> Result<Self, String> {
        let channel = settings.grpc_channel(endpoint)?;
        let frames = EncodedFrames {
            channel,
            compression: settings.compression,
        };
        Ok(Self {
            wire: Wire::Grpc(
                Box::new(tonic::client::Grpc::new(frames)),
                http::uri::PathAndQuery::from_static(path),
            ),
            headers: settings.headers.clone(),
            compression: settings.compression,
        })
    }

    /// An HTTP/protobuf transport posting to `url`, with the TLS settings, headers and
    /// compression of `settings`.
    ///
    /// # Errors
    /// A message when the TLS settings cannot be used.
    pub(crate) fn http(url: &str, settings: &ClientSettings) -> Result<Self, String> {
        Ok(Self {
            wire: Wire::Http(settings.http_client()?, url.into()),
            headers: settings.headers.clone(),
            compression: settings.compression,
        })
    }

    /// `OTLP/gRPC` or `OTLP/HTTP`, for messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self.wire {
            Wire::Grpc(..) => "OTLP/gRPC",
            Wire::Http(..) => "OTLP/HTTP",
        }
    }

    /// Whether requests go over gRPC.
    pub(crate) fn is_grpc(&self) -> bool {
        matches!(self.wire, Wire::Grpc(..))
    }

    /// The body encoder for this transport's compression; keep it for the next requests (a gzip
    /// compressor is costly to set up). For [`Compression::None`] it holds nothing.
    pub(crate) fn encoder(&self) -> BodyEncoder {
        match self.compression {
            Compression::Gzip => BodyEncoder::Gzip(Gzip::new()),
            Compression::None => BodyEncoder::None,
        }
    }

    /// Sends one request, `body` (from this transport's [`BodyEncoder`], with the matching
    /// encoding header and gRPC frame flag), retrying as `policy` says, and returns the accepted
    /// answer's protobuf bytes (an `Export…ServiceResponse`; at most [`MAX_ANSWER`] of an HTTP
    /// body are read). Runs on the exporters' runtime.
    ///
    /// # Errors
    /// The last attempt's error, with the number of attempts.
    pub(crate) async fn send(&self, body: Body, policy: RetryPolicy) -> Result<Bytes, String> {
        let (body, headers) = (body.0, &self.headers);
        match &self.wire {
            Wire::Grpc(grpc, path) => {
                with_retry(policy, || {
                    let mut grpc = (**grpc).clone();
                    let mut request = tonic::Request::new(body.clone());
                    headers.apply_metadata(request.metadata_mut());
                    async move {
                        grpc.ready()
                            .await
                            .map_err(|e| (Retry::Backoff, format!("connecting: {e}")))?;
                        grpc.unary(request, path.clone(), EncodedCodec)
                            .await
                            .map(tonic::Response::into_inner)
                            .map_err(|status| (classify_grpc(&status), status.to_string()))
                    }
                })
                .await
            }
            Wire::Http(client, url) => {
                let mut extra = http::HeaderMap::new();
                headers.apply(&mut extra);
                if let Some(encoding) = self.compression.header() {
                    extra.insert(http::header::CONTENT_ENCODING, http::HeaderValue::from_static(encoding));
                }
                with_retry(policy, || {
                    let req = client
                        .post(&**url)
                        .headers(extra.clone())
                        .header("content-type", "application/x-protobuf")
                        .body(body.clone());
                    async move {
                        let mut resp = req.send().await.map_err(|e| (Retry::Backoff, e.to_string()))?;
                        let status = resp.status();
                        if status.is_success() {
                            let mut answer = bytes::BytesMut::new();
                            while answer.len() < MAX_ANSWER
                                && let Ok(Some(chunk)) = resp.chunk().await
                            {
                                answer.extend_from_slice(&chunk);
                            }
                            return Ok(answer.freeze());
                        }
                        let retry_after = resp
                            .headers()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        let retry = classify_http(status.as_u16(), retry_after.as_deref());
                        let text = resp.text().await.unwrap_or_default();
                        let text: String = text.chars().take(200).collect();
                        Err((retry, format!("HTTP {status}: {}", text.trim())))
                    }
                })
                .await
            }
        }
    }
}

/// The gRPC channel, for request messages the codec wrote as the [`BodyEncoder`] made them: tonic
/// frames them as uncompressed (`0`, length, message); with [`Compression::Gzip`] this marks the
/// frame compressed (`1`) and sets `grpc-encoding: gzip`, with [`Compression::None`] the request
/// passes through unchanged. Answers pass through to tonic unchanged.
#[derive(Clone)]
pub(crate) struct EncodedFrames {
    channel: Channel,
    compression: Compression,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<http::Request<tonic::body::Body>> for EncodedFrames {
    type Response = http::Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), BoxError>> {
        tower::Service::poll_ready(&mut self.channel, cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        // The clone that was polled ready is the one that calls.
        let clone = self.channel.clone();
        let mut inner = std::mem::replace(&mut self.channel, clone);
        let Some(encoding) = self.compression.header() else {
            return Box::pin(async move { inner.call(req).await.map_err(Into::into) });
        };
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            let framed = http_body_util::BodyExt::collect(body).await?.to_bytes();
            if framed.len() < 5 || framed[0] != 0 {
                return Err("unexpected gRPC request frame".into());
            }
            let mut marked = BytesMut::from(&framed[..]);
            marked[0] = 1;
            parts
                .headers
                .insert("grpc-encoding", http::HeaderValue::from_static(encoding));
            let body = tonic::body::Body::new(http_body_util::Full::new(marked.freeze()));
            inner
                .call(http::Request::from_parts(parts, body))
                .await
                .map_err(Into::into)
        })
    }
}

/// Writes the request body as the [`BodyEncoder`] made it as the message; hands the answer's
/// bytes back undecoded (an `Export` answer only carries `partial_success`).
#[derive(Debug, Clone, Copy)]
struct EncodedCodec;

struct BytesEncoder;

impl Encoder for BytesEncoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use bytes::BufMut as _;
        dst.put(item);
        Ok(())
    }
}

struct BytesDecoder;

impl Decoder for BytesDecoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        use bytes::Buf as _;
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl Codec for EncodedCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = BytesEncoder;
    type Decoder = BytesDecoder;
    fn encoder(&mut self) -> BytesEncoder {
        BytesEncoder
    }
    fn decoder(&mut self) -> BytesDecoder {
        BytesDecoder
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_follow_the_otlp_retry_rules() {
        assert_eq!(classify_grpc(&tonic::Status::unavailable("down")), Retry::Backoff);
        assert_eq!(classify_grpc(&tonic::Status::resource_exhausted("full")), Retry::Never);
        assert_eq!(classify_grpc(&tonic::Status::invalid_argument("bad")), Retry::Never);
        assert_eq!(classify_grpc(&tonic::Status::deadline_exceeded("slow")), Retry::Backoff);
        assert_eq!(classify_http(503, Some("2")), Retry::After(Duration::from_secs(2)));
        assert_eq!(classify_http(404, None), Retry::Never);
    }

    #[test]
    fn the_encoder_follows_the_transport_s_compression() {
        use std::io::Read as _;
        let settings = |compression| {
            let mut s = ClientSettings::default();
            s.compression = compression;
            s
        };
        let body = b"otlp ".repeat(1000);
        let plain = Transport::http("http://localhost:4318/v1/traces", &settings(Compression::None)).expect("http");
        let mut encoder = plain.encoder();
        assert!(matches!(encoder, BodyEncoder::None), "no compressor for none");
        assert_eq!(encoder.encode(&body).expect("none").0, body);
        assert_eq!(encoder.encode_vec(body.clone()).expect("none").0, body);
        assert_eq!(Compression::None.header(), None);

        let gzipped = Transport::http("http://localhost:4318/v1/traces", &settings(Compression::Gzip)).expect("http");
        let mut encoder = gzipped.encoder();
        for gz in [
            encoder.encode(&body).expect("gzip").0,
            encoder.encode_vec(body.clone()).expect("gzip").0,
        ] {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&gz[..])
                .read_to_end(&mut out)
                .expect("gunzip");
            assert_eq!(out, body);
        }
        assert_eq!(Compression::Gzip.header(), Some("gzip"));
        assert_eq!(Compression::default(), Compression::Gzip);
    }

    #[test]
    fn gzip_round_trips_and_a_reused_compressor_gives_the_same_bytes() {
        use std::io::Read as _;
        let gunzip = |gz: &[u8]| {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(gz).read_to_end(&mut out).expect("gunzip");
            out
        };
        let mut reused = Gzip::new();
        let mut noise = 1u64;
        let random: Vec<u8> = (0..300_000)
            .map(|_| {
                noise = noise
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (noise >> 56) as u8
            })
            .collect();
        for body in [b"otlp ".repeat(1000), Vec::new(), random, b"x".repeat(5_000_000)] {
            let gz = reused.compress(&body).expect("gzip");
            assert_eq!(gunzip(&gz), body);
            assert_eq!(
                gz,
                Gzip::new().compress(&body).expect("gzip"),
                "a reset stream is a new stream"
            );
        }
        assert!(Gzip::new().compress(&b"otlp ".repeat(1000)).expect("gzip").len() < 500);
    }
}
