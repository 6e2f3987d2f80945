//! `prometheus`: the scrape endpoint's listener and connection keys and the series store's bounds
//! ([`PrometheusConfig`]), and the checks on them ([`PrometheusConfig::validate`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::types::{DurationStr, Problem};
use crate::model::TranslationStrategy;
use crate::server::TlsConfig;

/// `prometheus`: the scrape endpoint and the series store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PrometheusConfig {
    /// Listen address of `/metrics`, `/healthz`, `/readyz`. Default `127.0.0.1:9464`.
    pub listen: SocketAddr,
    /// Most connections open at once. At the cap a new connection closes the least recently
    /// active one with no request in flight, or is closed itself when every one is busy.
    /// Default `256`.
    pub max_connections: usize,
    /// A keep-alive connection with no request for this long is closed. Default `2m` (longer
    /// than the usual 1 m scrape interval, so a scraper's connection is reused).
    pub idle_timeout: DurationStr,
    /// A request's headers must arrive within this (from the connection opening for the first
    /// request, from its first byte for later ones), else the connection is closed. Default `10s`.
    pub header_read_timeout: DurationStr,
    /// A request's body must arrive within this from the end of its headers, else it is answered
    /// 408 and the connection is closed. Default `30s`.
    pub body_read_timeout: DurationStr,
    /// A series not updated for this long disappears. Default `5m`.
    pub series_ttl: DurationStr,
    /// Resource attributes that also become labels on every series of that resource
    /// (they always appear on `target_info`). Default: none.
    pub promote_resource_attributes: Vec<String>,
    /// Upper bound on stored series; points that would create more are rejected and counted
    /// (reported in `partial_success`). Default `2000000`.
    pub max_series: usize,
    /// `prometheus.tls`: serve the endpoint over https (and require client certificates with
    /// `client_ca_file`). Default: none, plain http.
    pub tls: TlsConfig,
    /// `prometheus.auth`: credentials every route but `/healthz` and `/readyz` requires.
    pub auth: PrometheusAuthConfig,
    /// How OTLP metric and label names become Prometheus names, with the values of Prometheus's
    /// own OTLP receiver: `UnderscoreEscapingWithSuffixes` (invalid characters → `_`, unit suffix),
    /// `UnderscoreEscapingWithoutSuffixes`, `NoUTF8EscapingWithSuffixes` (names kept as sent, UTF-8,
    /// unit suffix) or `NoTranslation` (kept as sent, no suffix). UTF-8 names are served only to
    /// scrapers that ask for `escaping=allow-utf-8` (Prometheus 3); others get them escaped.
    /// Counters always end in `_total`. Default `UnderscoreEscapingWithSuffixes`.
    pub translation_strategy: TranslationStrategy,
}

/// `prometheus.auth`: when either key is set, `/metrics`, `/api/*` and every other route but
/// `/healthz` and `/readyz` require a valid credential (401 otherwise). Default: none, open.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PrometheusAuthConfig {
    /// HTTP basic auth users: user → bcrypt hash of the password, as in Prometheus's `web.yml`
    /// (`htpasswd -nBC 10 user`). Default: none.
    pub basic_auth_users: BTreeMap<String, String>,
    /// A file of bearer tokens, one a line (the receivers' format; service globs are ignored),
    /// reloaded when it changes. Default: none.
    pub bearer_tokens_file: Option<PathBuf>,
}

impl PrometheusAuthConfig {
    /// Whether any credential is configured.
    pub fn enabled(&self) -> bool {
        !self.basic_auth_users.is_empty() || self.bearer_tokens_file.is_some()
    }

    /// Replaces the password hashes by `<redacted>` (the user names are kept; the token file is
    /// only a path).
    pub fn redact(&mut self) {
        self.basic_auth_users = crate::util::redact::headers(&self.basic_auth_users);
    }

    /// Checks `prometheus.auth`: every hash is a bcrypt hash, the token file reads and parses.
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        for (user, hash) in &self.basic_auth_users {
            if user.is_empty() || user.contains(':') {
                out.push(Problem {
                    path: format!("prometheus.auth.basic_auth_users.{user}"),
                    message: "a user name must be non-empty and without `:`".into(),
                    hint: "e.g. `prometheus`".into(),
                });
            }
            if hash.parse::<bcrypt::HashParts>().is_err() {
                out.push(Problem {
                    path: format!("prometheus.auth.basic_auth_users.{user}"),
                    message: "not a bcrypt hash".into(),
                    hint: "a bcrypt hash of the password such as `$2y$10$…`, e.g. from `htpasswd -nBC 10 user`".into(),
                });
            }
        }
        if let Some(Err(e)) = self
            .bearer_tokens_file
            .as_deref()
            .map(crate::util::tokens::Tokens::read)
        {
            out.push(Problem {
                path: "prometheus.auth.bearer_tokens_file".into(),
                message: e,
                hint: "a readable file with one token a line; `#` comments".into(),
            });
        }
        out
    }
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            max_connections: 256,
            idle_timeout: DurationStr(Duration::from_secs(120)),
            header_read_timeout: DurationStr(Duration::from_secs(10)),
            body_read_timeout: DurationStr(Duration::from_secs(30)),
            series_ttl: DurationStr(Duration::from_secs(300)),
            promote_resource_attributes: Vec::new(),
            max_series: default_max_series(),
            tls: TlsConfig::default(),
            auth: PrometheusAuthConfig::default(),
            translation_strategy: TranslationStrategy::default(),
        }
    }
}

const fn default_max_series() -> usize {
    2_000_000
}

impl PrometheusConfig {
    /// Checks `prometheus` on its own: the series TTL and bound, the promoted attribute names, the
    /// `tls` block;
    /// every problem with its key path (`prometheus.…`) and a hint. Its connection keys are checked
    /// with the other listeners' by the root config.
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if self.series_ttl.0 < Duration::from_secs(1) {
            out.push(Problem {
                path: "prometheus.series_ttl".into(),
                message: format!("{} is too short", self.series_ttl),
                hint: "use at least `1s`; series must outlive a scrape interval (e.g. `5m`)".into(),
            });
        }
        if self.max_series == 0 {
            out.push(Problem {
                path: "prometheus.max_series".into(),
                message: "must be greater than zero".into(),
                hint: "e.g. `2000000`".into(),
            });
        }
        for (i, attr) in self.promote_resource_attributes.iter().enumerate() {
            if attr.is_empty() {
                out.push(Problem {
                    path: format!("prometheus.promote_resource_attributes[{i}]"),
                    message: "empty attribute name".into(),
                    hint: "name a resource attribute such as `deployment.environment`".into(),
                });
            }
        }
        out.extend(self.tls.validate("prometheus.tls"));
        out.extend(self.auth.validate());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_returns_its_own_problems_with_full_key_paths() {
        assert_eq!(PrometheusConfig::default().validate(), vec![]);
        let c = PrometheusConfig {
            series_ttl: DurationStr(Duration::from_millis(10)),
            max_series: 0,
            promote_resource_attributes: vec!["deployment.environment".into(), String::new()],
            ..PrometheusConfig::default()
        };
        let p = c.validate();
        let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "prometheus.series_ttl",
                "prometheus.max_series",
                "prometheus.promote_resource_attributes[1]"
            ]
        );
        assert!(p.iter().all(|p| !p.hint.is_empty()), "{p:?}");
    }
}
