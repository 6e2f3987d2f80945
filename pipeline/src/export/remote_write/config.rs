//! `exporters.remote_write`: the endpoint, interval, request, queue and retry keys of the
//! Prometheus remote-write exporter ([`RemoteWriteConfig`]), and the checks on them
//! ([`RemoteWriteConfig::validate`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::types::{ByteSize, DurationStr, Problem};
use crate::export::config::{backoff_problem, endpoint_problem, header_file_problems, header_problems, tls_problems};
use crate::export::sender::{Batching, RetryPolicy};

/// `exporters.remote_write`: every `interval`, a snapshot of the series store (the samples and
/// exemplars a scrape shows) is pushed with Prometheus remote write 1.0 (protobuf + snappy) to
/// Prometheus, Mimir, Thanos Receive, VictoriaMetrics or anything else that speaks it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteWriteConfig {
    /// Receiver URL, e.g. `http://prometheus:9090/api/v1/write` (Prometheus started with
    /// `--web.enable-remote-write-receiver`) or `http://mimir:8080/api/v1/push`. `https://` uses
    /// TLS with the system roots (plus `ca_file`). Default: none — nothing is pushed.
    pub endpoint: Option<String>,
    /// How often a snapshot is taken and pushed. Default `15s`.
    pub interval: DurationStr,
    /// Timeout of one request attempt. Default `10s`.
    pub timeout: DurationStr,
    /// Headers sent with every request, e.g. `{authorization: "Basic …"}` or
    /// `{X-Scope-OrgID: tenant}`. Default: none.
    pub headers: std::collections::BTreeMap<String, String>,
    /// Headers whose values are read from files, so that secrets stay out of the config: header
    /// name → path of a file holding the value alone (e.g. `{authorization: /run/secrets/token}`
    /// with `Bearer <token>` in it); a trailing newline is dropped. Read at start; `print-config`
    /// shows the paths. A name may not also be in `headers`. Default: none.
    pub headers_from_files: std::collections::BTreeMap<String, String>,
    /// Extra PEM CA certificate for `https` endpoints (the system roots are always trusted).
    /// Default: none.
    pub ca_file: Option<String>,
    /// PEM client certificate presented to `https` endpoints that require one (mTLS), with
    /// `key_file`. Default: none.
    pub cert_file: Option<String>,
    /// PEM private key of `cert_file`. Default: none.
    pub key_file: Option<String>,
    /// Most samples in one request (an exemplar counts as a sample). Default `2000`.
    pub max_samples_per_request: usize,
    /// Send OTLP exponential histograms as native histograms (prompb `Histogram`, with their
    /// exemplars) instead of classic `le` buckets. The receiver must accept native histograms
    /// (Prometheus: `--enable-feature=native-histograms`), or it refuses the whole request.
    /// Default `false`.
    pub send_native_histograms: bool,
    /// Bound of the request queue in compressed bytes, the request in flight included. When a new
    /// snapshot does not fit, the oldest queued snapshot's requests are dropped and counted.
    /// Default `64MiB`.
    pub queue_max_bytes: ByteSize,
    /// First retry delay; doubles per attempt with ±20% jitter. Default `100ms`.
    pub retry_initial_backoff: DurationStr,
    /// Longest retry delay (a receiver's `Retry-After` may ask for more). Default `5s`.
    pub retry_max_backoff: DurationStr,
    /// On shutdown, a last snapshot is queued and the queue flushed for at most this long;
    /// what is left is dropped and counted. Default `10s`.
    pub shutdown_timeout: DurationStr,
}

impl Default for RemoteWriteConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            interval: DurationStr(Duration::from_secs(15)),
            timeout: DurationStr(Duration::from_secs(10)),
            headers: Default::default(),
            headers_from_files: Default::default(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            send_native_histograms: false,
            max_samples_per_request: 2000,
            queue_max_bytes: ByteSize(64 << 20),
            retry_initial_backoff: DurationStr(Duration::from_millis(100)),
            retry_max_backoff: DurationStr(Duration::from_secs(5)),
            shutdown_timeout: DurationStr(Duration::from_secs(10)),
        }
    }
}

impl RemoteWriteConfig {
    /// One request per batch, sent as soon as it is queued: requests are already cut at
    /// `max_samples_per_request`, and their snappy bodies cannot be joined. One request in flight:
    /// Prometheus refuses samples older than the newest it has for a series, so order matters.
    pub fn batching(&self) -> Batching {
        Batching {
            max_items: 1,
            timeout: Duration::ZERO,
            max_in_flight: 1,
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

    /// `retry_initial_backoff` doubling up to `retry_max_backoff`.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            initial: self.retry_initial_backoff.0,
            max: self.retry_max_backoff.0,
        }
    }

    /// Checks `exporters.remote_write`; every problem with its key path and a hint.
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let p = |key: &str, message: String, hint: &str| Problem {
            path: format!("exporters.remote_write.{key}"),
            message,
            hint: hint.into(),
        };
        if let Some(ep) = &self.endpoint {
            out.extend(endpoint_problem(
                "exporters.remote_write.endpoint",
                ep,
                "e.g. `http://127.0.0.1:9090/api/v1/write` (Prometheus) or `http://mimir:8080/api/v1/push`",
            ));
            out.extend(tls_problems(
                "exporters.remote_write",
                self.ca_file.as_deref(),
                self.cert_file.as_deref(),
                self.key_file.as_deref(),
            ));
        }
        if self.interval.0 < Duration::from_secs(1) {
            out.push(p(
                "interval",
                format!("{} is too short", self.interval),
                "use at least `1s`; `15s` matches a typical scrape interval",
            ));
        }
        if self.timeout.0.is_zero() {
            out.push(p("timeout", "must be greater than zero".into(), "e.g. `10s`"));
        }
        if self.shutdown_timeout.0.is_zero() {
            out.push(p("shutdown_timeout", "must be greater than zero".into(), "e.g. `10s`"));
        }
        if self.max_samples_per_request == 0 {
            out.push(p(
                "max_samples_per_request",
                "must be greater than zero".into(),
                "e.g. `2000`",
            ));
        }
        if self.queue_max_bytes.0 < 1 << 20 {
            out.push(p(
                "queue_max_bytes",
                format!("{} is too small to hold a request", self.queue_max_bytes),
                "use at least `1MiB`; a few snapshots' worth, e.g. `64MiB`",
            ));
        }
        out.extend(backoff_problem(
            "exporters.remote_write",
            self.retry_initial_backoff,
            self.retry_max_backoff,
        ));
        out.extend(header_problems("exporters.remote_write", &self.headers));
        out.extend(header_file_problems(
            "exporters.remote_write",
            &self.headers,
            &self.headers_from_files,
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::Config;
    use crate::config::testing::{parse, problems};

    #[test]
    fn validate_returns_its_own_problems_with_full_key_paths() {
        assert_eq!(super::RemoteWriteConfig::default().validate(), vec![]);
        let c = super::RemoteWriteConfig {
            endpoint: Some("prometheus:9090".into()),
            timeout: super::DurationStr(Duration::ZERO),
            ..Default::default()
        };
        let paths: Vec<String> = c.validate().into_iter().map(|p| p.path).collect();
        assert_eq!(
            paths,
            ["exporters.remote_write.endpoint", "exporters.remote_write.timeout"]
        );
    }

    #[test]
    fn remote_write_keys_parse_and_every_problem_is_reported() {
        let c = parse(
            "exporters:\n  remote_write:\n    endpoint: http://127.0.0.1:9090/api/v1/write\n    interval: 5s\n    max_samples_per_request: 500\n    headers: {X-Scope-OrgID: team-a}\n",
        )
        .unwrap();
        let rw = &c.exporters.remote_write;
        assert_eq!(rw.endpoint.as_deref(), Some("http://127.0.0.1:9090/api/v1/write"));
        assert_eq!(rw.interval.0, Duration::from_secs(5));
        assert_eq!(rw.max_samples_per_request, 500);
        assert_eq!(rw.headers["X-Scope-OrgID"], "team-a");
        assert_eq!(
            Config::default().exporters.remote_write.endpoint,
            None,
            "off by default"
        );

        let p = problems(
            "exporters:\n  remote_write:\n    endpoint: prometheus:9090\n    interval: 100ms\n    timeout: 0s\n    max_samples_per_request: 0\n    queue_max_bytes: 1KiB\n    retry_initial_backoff: 10s\n    retry_max_backoff: 1s\n    headers: {\"bad header\": x}\n    flush: 1s\n",
        );
        let paths: Vec<_> = p.iter().map(|p| p.path.as_str()).collect();
        for want in [
            "exporters.remote_write.flush",
            "exporters.remote_write.endpoint",
            "exporters.remote_write.interval",
            "exporters.remote_write.timeout",
            "exporters.remote_write.max_samples_per_request",
            "exporters.remote_write.queue_max_bytes",
            "exporters.remote_write.retry_initial_backoff",
            "exporters.remote_write.headers.bad header",
        ] {
            assert!(paths.contains(&want), "{want} missing: {paths:?}");
        }
        assert!(p.iter().all(|p| !p.hint.is_empty()), "{p:?}");
    }
}
