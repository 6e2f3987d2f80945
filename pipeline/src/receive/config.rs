//! `receivers`: the OTLP listeners' config, their shared admission limits and what one sender may
//! make Spindle hold ([`LimitsConfig`]), and the checks on them ([`ReceiversConfig::validate`]).
//! Checks across components (listen addresses, connection caps against the open-file limit) are
//! the root config's.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::types::{ByteSize, DurationStr, Problem};
use crate::server::TlsConfig;

/// `receivers`: the inputs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiversConfig {
    /// `receivers.otlp`: OTLP over gRPC and HTTP.
    pub otlp: OtlpReceiverConfig,
}

/// `receivers.otlp`: the OTLP receivers and their shared admission limits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpReceiverConfig {
    /// OTLP/gRPC listener.
    pub grpc: GrpcListenerConfig,
    /// OTLP/HTTP listener.
    pub http: HttpListenerConfig,
    /// Largest request accepted after decompression, on both protocols. Larger → HTTP 413 /
    /// gRPC `RESOURCE_EXHAUSTED` without retry. Default `8MiB`.
    pub max_request_size: ByteSize,
    /// Decoded request bytes that may be in flight at once across all receivers, estimated from
    /// each request's bytes before it is decoded; past it requests are refused as overloaded (HTTP
    /// 503 with `Retry-After`, gRPC `RESOURCE_EXHAUSTED`). Default `64MiB`.
    pub max_inflight_bytes: ByteSize,
    /// `receivers.otlp.limits`: what one sender can make Spindle hold or emit (name and value
    /// lengths, attribute counts, label-set size).
    pub limits: LimitsConfig,
    /// `receivers.otlp.tls`: TLS (and mTLS) on both OTLP listeners. Default: none, plaintext.
    pub tls: TlsConfig,
    /// `receivers.otlp.auth`: who may send (both protocols).
    pub auth: ReceiverAuthConfig,
}

/// `receivers.otlp.auth`: bearer tokens, on gRPC (`authorization` metadata) and HTTP
/// (`Authorization: Bearer …`). Default: none, every request is accepted.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiverAuthConfig {
    /// A file of bearer tokens, one a line, each optionally followed by whitespace and the
    /// comma-separated `service.name` globs it may write (see [`crate::util::tokens`]). Reloaded
    /// when it changes. Missing or wrong token → HTTP 401 / gRPC `UNAUTHENTICATED`; a token writing
    /// only services it may not → HTTP 403 / gRPC `PERMISSION_DENIED`. Default: none.
    pub bearer_tokens_file: Option<PathBuf>,
}

impl ReceiverAuthConfig {
    /// Checks `receivers.otlp.auth`: the token file reads and parses.
    pub fn validate(&self) -> Vec<Problem> {
        token_file_problem(
            self.bearer_tokens_file.as_deref(),
            "receivers.otlp.auth.bearer_tokens_file",
        )
        .into_iter()
        .collect()
    }
}

/// The problem with the bearer token file at `path`, if any (shared with `prometheus.auth`).
pub fn token_file_problem(path: Option<&std::path::Path>, key: &str) -> Option<Problem> {
    let e = crate::util::tokens::Tokens::read(path?).err()?;
    Some(Problem {
        path: key.into(),
        message: e,
        hint: "a readable file with one token a line, optionally followed by whitespace and comma-separated service.name globs (`tok-7f3a checkout-*,cart`); `#` comments".into(),
    })
}

impl Default for OtlpReceiverConfig {
    fn default() -> Self {
        Self {
            grpc: GrpcListenerConfig::default(),
            http: HttpListenerConfig::default(),
            max_request_size: ByteSize(default_max_request_size()),
            max_inflight_bytes: ByteSize(default_max_inflight_bytes()),
            limits: LimitsConfig::default(),
            tls: TlsConfig::default(),
            auth: ReceiverAuthConfig::default(),
        }
    }
}

const fn default_max_request_size() -> u64 {
    8 << 20
}

const fn default_max_inflight_bytes() -> u64 {
    64 << 20
}

/// `receivers.otlp.limits`: bounds on what one sender can make Spindle hold or emit. Every limit is
/// bounded (there is no "no limit" value). What a limit refuses is reported in `partial_success`
/// and counted in `spindle_limited_items_total{signal, reason}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Longest Prometheus metric name (after translation, unit suffix included), in bytes; the
    /// points of a longer metric are rejected. Default `1024`.
    pub max_metric_name_length: usize,
    /// Longest label name (after sanitizing), in bytes; a point with a longer one is rejected.
    /// Default `256`.
    pub max_label_name_length: usize,
    /// Longest label value, in bytes: a longer value (point, resource and scope attributes, span
    /// names and span-metric dimensions, `# HELP` texts) is truncated at a UTF-8 boundary to at
    /// most this many bytes including a trailing `…`; the point is kept. Default `4096`.
    pub max_label_value_length: usize,
    /// Most attributes on one data point (and on one instrumentation scope or `target_info`);
    /// more → the point is rejected. Default `128`.
    pub max_attributes_per_point: usize,
    /// Most attributes on one span; more → the span is rejected (not forwarded, not counted in
    /// span metrics). Default `1024`.
    pub max_attributes_per_span: usize,
    /// Largest label set of one series after translation (sum of label name and value bytes);
    /// larger → the point is rejected. Default `16KiB`.
    pub max_label_set_size: ByteSize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_metric_name_length: 1024,
            max_label_name_length: 256,
            max_label_value_length: 4096,
            max_attributes_per_point: 128,
            max_attributes_per_span: 1024,
            max_label_set_size: ByteSize(16 << 10),
        }
    }
}

impl LimitsConfig {
    /// Checks `receivers.otlp.limits`: every limit between a useful minimum and a sane maximum.
    pub fn validate(&self) -> Vec<Problem> {
        let checks: [(&str, u64, u64, u64, &str); 6] = [
            (
                "max_metric_name_length",
                self.max_metric_name_length as u64,
                16,
                1 << 16,
                "e.g. `1024`",
            ),
            (
                "max_label_name_length",
                self.max_label_name_length as u64,
                16,
                1 << 16,
                "e.g. `256`",
            ),
            (
                "max_label_value_length",
                self.max_label_value_length as u64,
                16,
                1 << 20,
                "e.g. `4096` (the truncation marker `…` takes 3 of those bytes)",
            ),
            (
                "max_attributes_per_point",
                self.max_attributes_per_point as u64,
                1,
                1 << 16,
                "e.g. `128`",
            ),
            (
                "max_attributes_per_span",
                self.max_attributes_per_span as u64,
                1,
                1 << 16,
                "e.g. `1024`",
            ),
            (
                "max_label_set_size",
                self.max_label_set_size.0,
                256,
                16 << 20,
                "e.g. `16KiB`",
            ),
        ];
        checks
            .into_iter()
            .filter(|(_, v, lo, hi, _)| v < lo || v > hi)
            .map(|(key, v, lo, hi, hint)| Problem {
                path: format!("receivers.otlp.limits.{key}"),
                message: if v == 0 {
                    "0 is not allowed: every limit is bounded".into()
                } else {
                    format!("{v} is outside [{lo}, {hi}]")
                },
                hint: format!("{hint}; a value between {lo} and {hi}"),
            })
            .collect()
    }
}

/// `receivers.otlp.grpc`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcListenerConfig {
    /// Listen address. Default `127.0.0.1:4317`.
    pub listen: SocketAddr,
    /// Most connections open at once. At the cap a new connection closes the least recently
    /// active one with no request in flight, or is closed itself when every one is busy.
    /// Default `1024`.
    pub max_connections: usize,
    /// A connection with no request in flight for this long is closed (this also bounds an HTTP/2
    /// handshake that never completes). Default `5m`.
    pub idle_timeout: DurationStr,
    /// How often the server sends an HTTP/2 PING to check a connection is alive. Default `30s`.
    pub keepalive_interval: DurationStr,
    /// A connection whose PING is not acknowledged within this is closed. Default `10s`.
    pub keepalive_timeout: DurationStr,
    /// Most requests (HTTP/2 streams) in flight on one connection. Default `100`.
    pub max_concurrent_streams: u32,
    /// A request must arrive (headers and body) and be answered within this, else it is answered
    /// `CANCELLED` and its stream reset (the connection stays). Bounds slow request bodies.
    /// Default `30s`.
    pub request_timeout: DurationStr,
}

impl Default for GrpcListenerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 4317)),
            max_connections: 1024,
            idle_timeout: DurationStr(Duration::from_secs(300)),
            keepalive_interval: DurationStr(Duration::from_secs(30)),
            keepalive_timeout: DurationStr(Duration::from_secs(10)),
            max_concurrent_streams: 100,
            request_timeout: DurationStr(Duration::from_secs(30)),
        }
    }
}

/// `receivers.otlp.http`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpListenerConfig {
    /// Listen address. Default `127.0.0.1:4318`.
    pub listen: SocketAddr,
    /// Most connections open at once. At the cap a new connection closes the least recently
    /// active one with no request in flight, or is closed itself when every one is busy.
    /// Default `1024`.
    pub max_connections: usize,
    /// A keep-alive connection with no request for this long is closed. Default `2m` (longer
    /// than the usual 60 s export interval, so pooled connections are reused).
    pub idle_timeout: DurationStr,
    /// A request's headers must arrive within this (from the connection opening for the first
    /// request, from its first byte for later ones), else the connection is closed. Default `10s`.
    pub header_read_timeout: DurationStr,
    /// A request's body must arrive within this from the end of its headers, else it is answered
    /// 408 and the connection is closed. Default `30s`.
    pub body_read_timeout: DurationStr,
}

impl Default for HttpListenerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 4318)),
            max_connections: 1024,
            idle_timeout: DurationStr(Duration::from_secs(120)),
            header_read_timeout: DurationStr(Duration::from_secs(10)),
            body_read_timeout: DurationStr(Duration::from_secs(30)),
        }
    }
}

impl ReceiversConfig {
    /// Checks `receivers`; every problem with its key path (`receivers.…`) and a hint.
    pub fn validate(&self) -> Vec<Problem> {
        self.otlp.validate()
    }
}

impl OtlpReceiverConfig {
    /// Checks `receivers.otlp`: the request size bounds, [`LimitsConfig::validate`] and
    /// [`TlsConfig::validate`].
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let otlp = self;
        if otlp.max_request_size.0 == 0 {
            out.push(Problem {
                path: "receivers.otlp.max_request_size".into(),
                message: "must be greater than zero".into(),
                hint: "e.g. `8MiB`".into(),
            });
        }
        if otlp.max_inflight_bytes.0 < otlp.max_request_size.0 {
            out.push(Problem {
                path: "receivers.otlp.max_inflight_bytes".into(),
                message: format!(
                    "{} is smaller than receivers.otlp.max_request_size ({}), so the largest request could never be admitted",
                    otlp.max_inflight_bytes, otlp.max_request_size
                ),
                hint: "raise it to a few times max_request_size".into(),
            });
        }
        out.extend(self.limits.validate());
        out.extend(self.tls.validate("receivers.otlp.tls"));
        out.extend(self.auth.validate());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_returns_its_own_problems_with_full_key_paths() {
        assert_eq!(ReceiversConfig::default().validate(), vec![]);
        let mut c = ReceiversConfig::default();
        c.otlp.max_inflight_bytes = ByteSize(1 << 20);
        c.otlp.limits.max_metric_name_length = 0;
        let p = c.validate();
        let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "receivers.otlp.max_inflight_bytes",
                "receivers.otlp.limits.max_metric_name_length"
            ]
        );
        assert!(
            p[0].message
                .contains("smaller than receivers.otlp.max_request_size (8MiB)"),
            "{}",
            p[0]
        );
        assert!(p.iter().all(|p| !p.hint.is_empty()), "{p:?}");
        c.otlp.max_request_size = ByteSize(0);
        assert_eq!(c.validate()[0].path, "receivers.otlp.max_request_size");
    }
}
