//! `exporters.traces`: the OTLP trace exporter's endpoint, protocol, batch, queue and retry keys
//! ([`OtlpExporterConfig`]), and the checks on them ([`OtlpExporterConfig::validate`]). The check of
//! its queue against `receivers.otlp.max_request_size` spans two components and is the root's.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::types::{ByteSize, DurationStr, Problem};
use crate::export::config::{backoff_problem, endpoint_problem, header_file_problems, header_problems, tls_problems};
use crate::export::sender::{Batching, BodyCompression, RetryPolicy};

/// `exporters.traces`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TraceExportersConfig {
    /// `exporters.traces.otlp`: forwarding of every accepted span to a trace backend.
    pub otlp: OtlpExporterConfig,
}

/// OTLP wire protocol of the trace exporter.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub enum OtlpProtocol {
    /// OTLP/gRPC.
    #[default]
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP/HTTP with protobuf bodies.
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

/// Request compression of the trace exporter.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// gzip.
    #[default]
    Gzip,
    /// zstd (gRPC `grpc-encoding: zstd`, HTTP `Content-Encoding: zstd`).
    Zstd,
    /// None.
    None,
}

impl Compression {
    /// The levels this compression takes, and the default one: gzip 1–9 (default 1, the fastest;
    /// 6 is zlib's usual default), zstd 1–22 (default 1). `None` for no compression.
    pub fn levels(self) -> Option<(std::ops::RangeInclusive<u32>, u32)> {
        match self {
            Compression::Gzip => Some((1..=9, 1)),
            Compression::Zstd => Some((1..=22, 1)),
            Compression::None => None,
        }
    }
}

/// `exporters.traces.otlp`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpExporterConfig {
    /// Backend URL, e.g. `http://tempo:4317` (gRPC) or `http://tempo:4318` (HTTP; `/v1/traces` is
    /// appended when the URL has no path). `https://` uses TLS with the system roots (plus
    /// `ca_file`). Default: none — spans are not forwarded.
    pub endpoint: Option<String>,
    /// `grpc` or `http/protobuf`. Default `grpc`.
    pub protocol: OtlpProtocol,
    /// `gzip`, `zstd` or `none`. Default `gzip`.
    pub compression: Compression,
    /// Compression level: gzip 1–9, zstd 1–22. Default: the fastest (1), which compresses OTLP
    /// spans nearly as well as gzip's usual 6 (about 5% larger) at about half the CPU.
    pub compression_level: Option<u32>,
    /// Headers sent with every export (e.g. an API key). Default: none.
    pub headers: std::collections::BTreeMap<String, String>,
    /// Headers whose values are read from files, so that secrets stay out of the config: header
    /// name → path of a file holding the value alone (e.g. `{authorization: /run/secrets/token}`
    /// with `Bearer <token>` in it); a trailing newline is dropped. Read at start; `print-config`
    /// shows the paths. A name may not also be in `headers`. Default: none.
    pub headers_from_files: std::collections::BTreeMap<String, String>,
    /// Timeout of one export attempt. Default `10s`.
    pub timeout: DurationStr,
    /// Extra PEM CA certificate for `https` endpoints. Default: none.
    pub ca_file: Option<String>,
    /// PEM client certificate presented to `https` endpoints that require one (mTLS), with
    /// `key_file`. Default: none.
    pub cert_file: Option<String>,
    /// PEM private key of `cert_file`. Default: none.
    pub key_file: Option<String>,
    /// Most spans in one export request. Default `2048`.
    pub max_batch_spans: usize,
    /// Longest a span waits for its batch to fill. Default `200ms`.
    pub batch_timeout: DurationStr,
    /// Export requests in flight at once, so that the backend's round trip does not cap the rate
    /// (one request at a time forwards at most `max_batch_spans` per round trip); batches may then
    /// arrive out of order. In-flight batches count against `queue_max_bytes`. Default `4`.
    pub max_concurrent_requests: usize,
    /// Bound of the export queue in bytes held by queued and in-flight spans: each request's encoded
    /// protobuf body (what is sent), its exemplars and its queue slot. When full, receivers answer
    /// "overloaded" so clients back off, and no accepted span is dropped. At least
    /// [`DECODED_SIZE_FACTOR`] × `receivers.otlp.max_request_size`. Default `64MiB`.
    pub queue_max_bytes: ByteSize,
    /// First retry delay; doubles per attempt with ±20% jitter. Default `100ms`.
    pub retry_initial_backoff: DurationStr,
    /// Longest retry delay (a backend's `RetryInfo`/`Retry-After` may ask for more). Default `5s`.
    pub retry_max_backoff: DurationStr,
    /// On shutdown, how long the queue may take to flush before what is left is dropped and
    /// counted. Default `10s`.
    pub shutdown_timeout: DurationStr,
}

impl Default for OtlpExporterConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            protocol: OtlpProtocol::Grpc,
            compression: Compression::Gzip,
            compression_level: None,
            headers: Default::default(),
            headers_from_files: Default::default(),
            timeout: DurationStr(Duration::from_secs(10)),
            ca_file: None,
            cert_file: None,
            key_file: None,
            max_batch_spans: 2048,
            batch_timeout: DurationStr(Duration::from_millis(200)),
            max_concurrent_requests: 4,
            queue_max_bytes: ByteSize(64 << 20),
            retry_initial_backoff: DurationStr(Duration::from_millis(100)),
            retry_max_backoff: DurationStr(Duration::from_secs(5)),
            shutdown_timeout: DurationStr(Duration::from_secs(10)),
        }
    }
}

/// How many of the largest requests (`receivers.otlp.max_request_size`)
/// `exporters.traces.otlp.queue_max_bytes` must hold at least, so that one large request does not
/// fill the queue on its own. (The name is from when the queue held decoded requests, about 4× their
/// encoded size; it now holds their encoded bodies.)
pub const DECODED_SIZE_FACTOR: u64 = 4;

impl TraceExportersConfig {
    /// Checks `exporters.traces`; every problem with its key path and a hint.
    pub fn validate(&self) -> Vec<Problem> {
        self.otlp.validate()
    }
}

impl OtlpExporterConfig {
    /// Batches of at most `max_batch_spans` spans, waiting at most `batch_timeout` to fill.
    pub fn batching(&self) -> Batching {
        Batching {
            max_items: self.max_batch_spans as u64,
            timeout: self.batch_timeout.0,
            max_in_flight: self.max_concurrent_requests,
        }
    }

    /// `retry_initial_backoff` doubling up to `retry_max_backoff`.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            initial: self.retry_initial_backoff.0,
            max: self.retry_max_backoff.0,
        }
    }

    /// Replaces the secrets — header values, credentials in the endpoint URL — by `<redacted>`.
    pub fn redact(&mut self) {
        use crate::util::redact;
        self.headers = redact::headers(&self.headers);
        if let Some(e) = &mut self.endpoint {
            *e = redact::url(e).into_owned();
        }
    }

    /// The body compression the client applies, at the configured (or default) level.
    pub fn body_compression(&self) -> BodyCompression {
        let level = |default: u32| self.compression_level.unwrap_or(default);
        match (self.compression, self.compression.levels()) {
            (Compression::Gzip, Some((_, d))) => BodyCompression::Gzip(level(d)),
            (Compression::Zstd, Some((_, d))) => BodyCompression::Zstd(level(d)),
            _ => BodyCompression::None,
        }
    }

    /// Checks `exporters.traces.otlp` on its own; every problem with its key path and a hint.
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let ex = self;
        if let Some(ep) = &ex.endpoint {
            out.extend(endpoint_problem(
                "exporters.traces.otlp.endpoint",
                ep,
                "e.g. `http://127.0.0.1:4317` for gRPC or `http://127.0.0.1:4318` for http/protobuf",
            ));
            out.extend(tls_problems(
                "exporters.traces.otlp",
                ex.ca_file.as_deref(),
                ex.cert_file.as_deref(),
                ex.key_file.as_deref(),
            ));
        }
        if let Some(level) = ex.compression_level {
            match ex.compression.levels() {
                Some((range, _)) if !range.contains(&level) => out.push(Problem {
                    path: "exporters.traces.otlp.compression_level".into(),
                    message: format!("{level} is not a {:?} level", ex.compression).to_lowercase(),
                    hint: format!(
                        "use {} to {}, or leave it out for the fastest",
                        range.start(),
                        range.end()
                    ),
                }),
                None => out.push(Problem {
                    path: "exporters.traces.otlp.compression_level".into(),
                    message: "set without compression".into(),
                    hint: "leave it out, or set `compression: gzip` or `zstd`".into(),
                }),
                Some(_) => {}
            }
        }
        if ex.max_concurrent_requests == 0 {
            out.push(Problem {
                path: "exporters.traces.otlp.max_concurrent_requests".into(),
                message: "must be greater than zero".into(),
                hint: "e.g. `4`; `1` sends one request at a time, in order".into(),
            });
        }
        if ex.max_batch_spans == 0 {
            out.push(Problem {
                path: "exporters.traces.otlp.max_batch_spans".into(),
                message: "must be greater than zero".into(),
                hint: "e.g. `2048`".into(),
            });
        }
        out.extend(backoff_problem(
            "exporters.traces.otlp",
            ex.retry_initial_backoff,
            ex.retry_max_backoff,
        ));
        out.extend(header_problems("exporters.traces.otlp", &ex.headers));
        out.extend(header_file_problems(
            "exporters.traces.otlp",
            &ex.headers,
            &ex.headers_from_files,
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_returns_its_own_problems_with_full_key_paths() {
        assert_eq!(TraceExportersConfig::default().validate(), vec![]);
        let mut c = TraceExportersConfig::default();
        c.otlp.endpoint = Some("tempo:4317".into());
        c.otlp.max_batch_spans = 0;
        c.otlp.max_concurrent_requests = 0;
        // The queue against `receivers.otlp.max_request_size` spans two components: the root checks it.
        c.otlp.queue_max_bytes = ByteSize(1);
        c.otlp.retry_initial_backoff = DurationStr(Duration::from_secs(10));
        c.otlp.headers.insert("bad key".into(), "x".into());
        let p = c.validate();
        let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "exporters.traces.otlp.endpoint",
                "exporters.traces.otlp.max_concurrent_requests",
                "exporters.traces.otlp.max_batch_spans",
                "exporters.traces.otlp.retry_initial_backoff",
                "exporters.traces.otlp.headers.bad key"
            ]
        );
        assert!(p.iter().all(|p| !p.hint.is_empty()), "{p:?}");
        c.otlp.endpoint = Some("https://tempo:4317".into());
        c.otlp.ca_file = Some("/nonexistent/ca.pem".into());
        assert_eq!(c.validate()[0].path, "exporters.traces.otlp.ca_file");
    }

    #[test]
    fn compression_levels_default_to_the_fastest_and_are_checked() {
        let mut c = OtlpExporterConfig::default();
        assert_eq!(c.body_compression(), BodyCompression::Gzip(1));
        c.compression_level = Some(6);
        assert_eq!(c.body_compression(), BodyCompression::Gzip(6));
        assert!(c.validate().is_empty());
        c.compression = Compression::Zstd;
        assert_eq!(c.body_compression(), BodyCompression::Zstd(6));
        c.compression_level = None;
        assert_eq!(c.body_compression(), BodyCompression::Zstd(1));
        for (compression, level) in [(Compression::Gzip, 10), (Compression::Zstd, 23), (Compression::Gzip, 0)] {
            c.compression = compression;
            c.compression_level = Some(level);
            let p = c.validate();
            assert_eq!(p.len(), 1, "{p:?}");
            assert_eq!(p[0].path, "exporters.traces.otlp.compression_level");
        }
        c.compression = Compression::None;
        c.compression_level = Some(1);
        assert_eq!(c.body_compression(), BodyCompression::None);
        assert_eq!(c.validate()[0].message, "set without compression");
    }
}
