//! The backend client, gRPC or HTTP: one export attempt and how its answer is classified
//! (delivered, retryable, permanent).
use std::time::Duration;

use bytes::{BufMut, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic_types::StatusExt;

use crate::export::retry_after;

use super::ExporterError;
use super::config::{Compression, OtlpExporterConfig, OtlpProtocol};

/// What one export attempt came to.
#[derive(Debug)]
pub(super) enum Attempt {
    /// Accepted; the backend rejected this many spans (`partial_success`).
    Sent { rejected: u64 },
    /// Worth retrying, after at least this long if the backend said so.
    Retry { after: Option<Duration>, why: String },
    /// Never worth retrying.
    Permanent(String),
}

pub(super) enum Client {
    Grpc {
        grpc: Box<tonic::client::Grpc<tonic::transport::Channel>>,
        headers: tonic::metadata::MetadataMap,
        timeout: Duration,
    },
    Http {
        client: reqwest::Client,
        url: String,
        gzip: bool,
    },
}

impl Client {
    pub(super) fn new(config: &OtlpExporterConfig, endpoint: &str) -> Result<Self, ExporterError> {
        let ca = match &config.ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|e| ExporterError::Tls(path.clone(), e.to_string()))?),
            None => None,
        };
        match config.protocol {
            OtlpProtocol::Grpc => {
                let mut ep = tonic::transport::Endpoint::from_shared(endpoint.to_string())
                    .map_err(|e| ExporterError::Endpoint(endpoint.into(), e.to_string()))?
                    .timeout(config.timeout.0)
                    .connect_timeout(config.timeout.0);
                if endpoint.starts_with("https://") {
                    let mut tls = tonic::transport::ClientTlsConfig::new().with_native_roots();
                    if let Some(pem) = &ca {
                        tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
                    }
                    ep = ep
                        .tls_config(tls)
                        .map_err(|e| ExporterError::Tls(config.ca_file.clone().unwrap_or_default(), e.to_string()))?;
                }
                let mut grpc = tonic::client::Grpc::new(ep.connect_lazy());
                if config.compression == Compression::Gzip {
                    grpc = grpc.send_compressed(CompressionEncoding::Gzip);
                }
                grpc = grpc.accept_compressed(CompressionEncoding::Gzip);
                let mut headers = tonic::metadata::MetadataMap::new();
                for (k, v) in &config.headers {
                    let key = tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
                        .map_err(|_| ExporterError::Header(k.clone()))?;
                    let val = v.parse().map_err(|_| ExporterError::Header(k.clone()))?;
                    headers.insert(key, val);
                }
                Ok(Client::Grpc {
                    grpc: Box::new(grpc),
                    headers,
                    timeout: config.timeout.0,
                })
            }
            OtlpProtocol::HttpProtobuf => {
                let uri: http::Uri = endpoint
                    .parse()
                    .map_err(|e: http::uri::InvalidUri| ExporterError::Endpoint(endpoint.into(), e.to_string()))?;
                let url = if matches!(uri.path(), "" | "/") {
                    format!("{}/v1/traces", endpoint.trim_end_matches('/'))
                } else {
                    endpoint.to_string()
                };
                let mut headers = http::HeaderMap::new();
                for (k, v) in &config.headers {
                    let name =
                        http::HeaderName::from_bytes(k.as_bytes()).map_err(|_| ExporterError::Header(k.clone()))?;
                    let val = http::HeaderValue::from_str(v).map_err(|_| ExporterError::Header(k.clone()))?;
                    headers.insert(name, val);
                }
                let mut builder = reqwest::Client::builder()
                    .timeout(config.timeout.0)
                    .default_headers(headers);
                if let Some(pem) = &ca {
                    let cert = reqwest::Certificate::from_pem(pem)
                        .map_err(|e| ExporterError::Tls(config.ca_file.clone().unwrap_or_default(), e.to_string()))?;
                    builder = builder.add_root_certificate(cert);
                }
                let client = builder
                    .build()
                    .map_err(|e| ExporterError::Endpoint(endpoint.into(), e.to_string()))?;
                Ok(Client::Http {
                    client,
                    url,
                    gzip: config.compression == Compression::Gzip,
                })
            }
        }
    }

    pub(super) async fn export(&self, body: Bytes) -> Attempt {
        match self {
            Client::Grpc { grpc, headers, timeout } => {
                let mut grpc = (**grpc).clone();
                if let Err(e) = grpc.ready().await {
                    return Attempt::Retry {
                        after: None,
                        why: format!("connecting: {e}"),
                    };
                }
                let mut req = tonic::Request::new(body);
                *req.metadata_mut() = headers.clone();
                req.set_timeout(*timeout);
                let path =
                    http::uri::PathAndQuery::from_static("/opentelemetry.proto.collector.trace.v1.TraceService/Export");
                match grpc.unary(req, path, RawCodec).await {
                    Ok(resp) => Attempt::Sent {
                        rejected: rejected(&resp.into_inner()),
                    },
                    Err(status) => classify_grpc(&status),
                }
            }
            Client::Http { client, url, gzip } => {
                let mut rb = client
                    .post(url)
                    .header(http::header::CONTENT_TYPE, "application/x-protobuf");
                let body = if *gzip {
                    use std::io::Write;
                    let mut enc =
                        flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4), flate2::Compression::fast());
                    match enc.write_all(&body).and_then(|_| enc.finish()) {
                        Ok(b) => {
                            rb = rb.header(http::header::CONTENT_ENCODING, "gzip");
                            Bytes::from(b)
                        }
                        Err(e) => return Attempt::Permanent(format!("gzip: {e}")),
                    }
                } else {
                    body
                };
                let resp = match rb.body(body).send().await {
                    Ok(r) => r,
                    Err(e) => {
                        return Attempt::Retry {
                            after: None,
                            why: format!("sending: {e}"),
                        };
                    }
                };
                let status = resp.status();
                let after = retry_after(resp.headers());
                let bytes = resp.bytes().await.unwrap_or_default();
                if status.is_success() {
                    let r = ExportTraceServiceResponse::decode(bytes)
                        .map(|r| rejected(&r))
                        .unwrap_or(0);
                    return Attempt::Sent { rejected: r };
                }
                let why = format!(
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                );
                match status.as_u16() {
                    429 | 502 | 503 | 504 => Attempt::Retry { after, why },
                    _ => Attempt::Permanent(why),
                }
            }
        }
    }
}

pub(super) fn rejected(r: &ExportTraceServiceResponse) -> u64 {
    r.partial_success.as_ref().map_or(0, |p| p.rejected_spans.max(0) as u64)
}

/// The OTLP spec's retryable gRPC codes; `RESOURCE_EXHAUSTED` only with `RetryInfo`.
pub(super) fn classify_grpc(status: &tonic::Status) -> Attempt {
    use tonic::Code;
    let after = status.get_details_retry_info().and_then(|r| r.retry_delay);
    let why = format!("gRPC {:?}: {}", status.code(), status.message());
    match status.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => Attempt::Retry { after, why },
        Code::ResourceExhausted if after.is_some() => Attempt::Retry { after, why },
        _ => Attempt::Permanent(why),
    }
}

/// Sends pre-encoded protobuf bytes, decodes the OTLP response.
#[derive(Debug, Clone, Copy)]
pub(super) struct RawCodec;

pub(super) struct RawEncoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

pub(super) struct ResponseDecoder;

impl Decoder for ResponseDecoder {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, tonic::Status> {
        ExportTraceServiceResponse::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = RawEncoder;
    type Decoder = ResponseDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> ResponseDecoder {
        ResponseDecoder
    }
}
