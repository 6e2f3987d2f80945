//! Configuration: the root [`Config`] composed of each component's own config struct.
//!
//! In: a YAML file (or nothing: every field has an embedded default), then environment overrides
//! `SPINDLE__<PATH>` where `__` separates key path segments (for example
//! `SPINDLE__PROMETHEUS__SERIES_TTL=1m`). Out: a [`Config`] whose [`Config::validate`] has collected
//! every problem with its key path and a hint.
//!
//! Unknown keys are errors. Durations are strings such as `30s` or `5m`, sizes strings such as `4MiB`.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Environment variable naming the config file, used when `--config` is not given.
pub const ENV_CONFIG: &str = "SPINDLE_CONFIG";
/// Prefix of per-key environment overrides: `SPINDLE__PROMETHEUS__LISTEN=0.0.0.0:9464`.
pub const ENV_OVERRIDE_PREFIX: &str = "SPINDLE__";

/// The root configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where telemetry comes in.
    pub receivers: ReceiversConfig,
    /// The Prometheus scrape endpoint and the series store behind it.
    pub prometheus: PrometheusConfig,
}

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
    /// Decoded request bytes that may be in flight at once across all receivers; past it requests
    /// are refused as overloaded (HTTP 503 with `Retry-After`, gRPC `RESOURCE_EXHAUSTED`).
    /// Default `64MiB`.
    pub max_inflight_bytes: ByteSize,
}

impl Default for OtlpReceiverConfig {
    fn default() -> Self {
        Self {
            grpc: GrpcListenerConfig::default(),
            http: HttpListenerConfig::default(),
            max_request_size: ByteSize(default_max_request_size()),
            max_inflight_bytes: ByteSize(default_max_inflight_bytes()),
        }
    }
}

const fn default_max_request_size() -> u64 {
    8 << 20
}

const fn default_max_inflight_bytes() -> u64 {
    64 << 20
}

/// `receivers.otlp.grpc`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcListenerConfig {
    /// Listen address. Default `127.0.0.1:4317`.
    pub listen: SocketAddr,
}

impl Default for GrpcListenerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 4317)),
        }
    }
}

/// `receivers.otlp.http`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpListenerConfig {
    /// Listen address. Default `127.0.0.1:4318`.
    pub listen: SocketAddr,
}

impl Default for HttpListenerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 4318)),
        }
    }
}

/// `prometheus`: the scrape endpoint and the series store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PrometheusConfig {
    /// Listen address of `/metrics`, `/healthz`, `/readyz`. Default `127.0.0.1:9464`.
    pub listen: SocketAddr,
    /// A series not updated for this long disappears. Default `5m`.
    pub series_ttl: DurationStr,
    /// Resource attributes that also become labels on every series of that resource
    /// (they always appear on `target_info`). Default: none.
    pub promote_resource_attributes: Vec<String>,
    /// Upper bound on stored series; points that would create more are rejected and counted
    /// (reported in `partial_success`). Default `2000000`.
    pub max_series: usize,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            series_ttl: DurationStr(Duration::from_secs(300)),
            promote_resource_attributes: Vec::new(),
            max_series: default_max_series(),
        }
    }
}

const fn default_max_series() -> usize {
    2_000_000
}

/// A duration written as a string: `500ms`, `30s`, `5m`, `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationStr(pub Duration);

impl FromStr for DurationStr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s.trim())
            .map(DurationStr)
            .map_err(|e| format!("invalid duration `{s}`: {e} (write it like `30s`, `5m`, `1h`)"))
    }
}

impl fmt::Display for DurationStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for DurationStr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DurationStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A size in bytes written as a string: `512KiB`, `4MiB`, `1GB`, or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let hint = || format!("invalid size `{s}` (write it like `512KiB`, `4MiB`, `1GiB`)");
        let n: u64 = num.parse().map_err(|_| hint())?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            _ => return Err(hint()),
        };
        n.checked_mul(mult).map(ByteSize).ok_or_else(hint)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, m) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if n >= m && n % m == 0 {
                return write!(f, "{}{unit}", n / m);
            }
        }
        write!(f, "{n}B")
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// One configuration problem: where, what, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `prometheus.series_ttl`; empty for the document as a whole.
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() { "<root>" } else { &self.path };
        write!(f, "{path}: {}", self.message)?;
        if !self.hint.is_empty() {
            write!(f, " (hint: {})", self.hint)?;
        }
        Ok(())
    }
}

/// Errors from loading a configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The configuration has problems; every one is listed.
    #[error("invalid configuration:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

impl Config {
    /// Loads `path` (or the embedded defaults when `None`), applies `SPINDLE__*` environment
    /// overrides and validates the result.
    ///
    /// # Errors
    /// [`ConfigError::Read`] when the file cannot be read, [`ConfigError::Invalid`] listing every
    /// problem found.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.display().to_string(),
                source,
            })?,
            None => String::new(),
        };
        Self::from_yaml_with_env(&text, std::env::vars())
    }

    /// Parses YAML text, applies the given `SPINDLE__*` overrides and validates.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] listing every problem found.
    pub fn from_yaml_with_env(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let mut doc: serde_yaml_ng::Value = if text.trim().is_empty() {
            serde_yaml_ng::Value::Mapping(Default::default())
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| {
                ConfigError::Invalid(vec![Problem {
                    path: String::new(),
                    message: format!("not valid YAML: {e}"),
                    hint: "check indentation and quoting".into(),
                }])
            })?
        };
        if doc.is_null() {
            doc = serde_yaml_ng::Value::Mapping(Default::default());
        }
        for (k, v) in env {
            if let Some(rest) = k.strip_prefix(ENV_OVERRIDE_PREFIX) {
                let segs: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
                if let Err(p) = apply_override(&mut doc, &segs, &v) {
                    problems.push(Problem {
                        path: k,
                        message: p,
                        hint: String::new(),
                    });
                }
            }
        }
        // Every unknown key, with its path: the defaults serialize every known key, so a key the
        // defaults lack at the same place is unknown (deny_unknown_fields would stop at the first).
        // They are removed once reported, so every other problem is reported in the same run.
        if let Ok(known) = serde_yaml_ng::to_value(Config::default()) {
            unknown_keys(&mut doc, &known, "", &mut problems);
        }
        let strict: Result<Config, _> = serde_path_to_error::deserialize(doc);
        let config = match strict {
            Ok(c) => c,
            Err(e) => {
                let path = e.path().to_string();
                problems.push(Problem {
                    path: if path == "." { String::new() } else { path },
                    message: e.into_inner().to_string(),
                    hint: "see `spindle print-config` for the expected form".into(),
                });
                return Err(ConfigError::Invalid(problems));
            }
        };
        problems.extend(config.validate());
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Checks settings that parse but cannot work together. Returns every problem found.
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let otlp = &self.receivers.otlp;
        let listeners = [
            ("prometheus.listen", self.prometheus.listen),
            ("receivers.otlp.grpc.listen", otlp.grpc.listen),
            ("receivers.otlp.http.listen", otlp.http.listen),
        ];
        for (i, (pa, a)) in listeners.iter().enumerate() {
            for (pb, b) in &listeners[..i] {
                if a == b && a.port() != 0 {
                    out.push(Problem {
                        path: pa.to_string(),
                        message: format!("address {a} is also used by `{pb}`"),
                        hint: "give each listener its own port".into(),
                    });
                }
            }
        }
        if self.prometheus.series_ttl.0 < Duration::from_secs(1) {
            out.push(Problem {
                path: "prometheus.series_ttl".into(),
                message: format!("{} is too short", self.prometheus.series_ttl),
                hint: "use at least `1s`; series must outlive a scrape interval (e.g. `5m`)".into(),
            });
        }
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
        if self.prometheus.max_series == 0 {
            out.push(Problem {
                path: "prometheus.max_series".into(),
                message: "must be greater than zero".into(),
                hint: "e.g. `2000000`".into(),
            });
        }
        for (i, attr) in self.prometheus.promote_resource_attributes.iter().enumerate() {
            if attr.is_empty() {
                out.push(Problem {
                    path: format!("prometheus.promote_resource_attributes[{i}]"),
                    message: "empty attribute name".into(),
                    hint: "name a resource attribute such as `deployment.environment`".into(),
                });
            }
        }
        out
    }

    /// The configuration as YAML (every key, with its current value).
    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

/// Sets `segs` in `doc` to the YAML scalar `value`, creating mappings along the way.
fn apply_override(doc: &mut serde_yaml_ng::Value, segs: &[String], value: &str) -> Result<(), String> {
    use serde_yaml_ng::Value;
    let parsed: Value = serde_yaml_ng::from_str(value).unwrap_or_else(|_| Value::String(value.into()));
    let mut cur = doc;
    for (i, seg) in segs.iter().enumerate() {
        let Value::Mapping(map) = cur else {
            return Err(format!("cannot set `{}`: its parent is not a mapping", segs.join(".")));
        };
        let key = Value::String(seg.clone());
        if i + 1 == segs.len() {
            map.insert(key, parsed);
            return Ok(());
        }
        cur = map.entry(key).or_insert_with(|| Value::Mapping(Default::default()));
    }
    Err("empty override path".into())
}

/// Reports and removes keys of `doc` that `known` (the serialized defaults) lacks. Mappings that
/// are empty in the defaults are free-form and not checked.
fn unknown_keys(doc: &mut serde_yaml_ng::Value, known: &serde_yaml_ng::Value, path: &str, out: &mut Vec<Problem>) {
    use serde_yaml_ng::Value;
    let (Value::Mapping(d), Value::Mapping(k)) = (doc, known) else {
        return;
    };
    if k.is_empty() {
        return;
    }
    let mut expected: Vec<&str> = k.keys().filter_map(Value::as_str).collect();
    expected.sort_unstable();
    d.retain(|key, v| {
        let name = match key {
            Value::String(s) => s.clone(),
            other => serde_yaml_ng::to_string(other).unwrap_or_default().trim().to_string(),
        };
        let here = if path.is_empty() {
            name
        } else {
            format!("{path}.{name}")
        };
        match k.get(key) {
            Some(kv) => {
                unknown_keys(v, kv, &here, out);
                true
            }
            None => {
                out.push(Problem {
                    path: here,
                    message: "unknown key".into(),
                    hint: format!("remove it or fix its spelling; keys here: {}", expected.join(", ")),
                });
                false
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(y: &str) -> Result<Config, ConfigError> {
        Config::from_yaml_with_env(y, Vec::<(String, String)>::new())
    }

    fn problems(y: &str) -> Vec<Problem> {
        match parse(y) {
            Err(ConfigError::Invalid(p)) => p,
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn empty_is_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.receivers.otlp.grpc.listen.to_string(), "127.0.0.1:4317");
        assert_eq!(c.receivers.otlp.http.listen.to_string(), "127.0.0.1:4318");
        assert_eq!(c.prometheus.listen.to_string(), "127.0.0.1:9464");
        assert_eq!(c.prometheus.series_ttl.0, Duration::from_secs(300));
    }

    #[test]
    fn parses_keys_used_by_tests() {
        let c = parse(
            "receivers:\n  otlp:\n    grpc:\n      listen: 0.0.0.0:14317\n    http:\n      listen: 0.0.0.0:14318\n    max_request_size: 1MiB\nprometheus:\n  listen: 0.0.0.0:19464\n  series_ttl: 30s\n  promote_resource_attributes: [deployment.environment]\n",
        )
        .unwrap();
        assert_eq!(c.receivers.otlp.grpc.listen.port(), 14317);
        assert_eq!(c.receivers.otlp.http.listen.port(), 14318);
        assert_eq!(c.receivers.otlp.max_request_size.0, 1 << 20);
        assert_eq!(c.prometheus.series_ttl.0, Duration::from_secs(30));
        assert_eq!(c.prometheus.promote_resource_attributes, vec!["deployment.environment"]);
    }

    #[test]
    fn every_unknown_key_is_reported_with_its_path() {
        let p = problems("prometheus:\n  lisen: 1.2.3.4:1\n  ttl: 5m\nbogus: 1\n");
        let paths: Vec<_> = p.iter().map(|p| p.path.as_str()).collect();
        assert!(paths.contains(&"prometheus.lisen"), "{paths:?}");
        assert!(paths.contains(&"prometheus.ttl"), "{paths:?}");
        assert!(paths.contains(&"bogus"), "{paths:?}");
        assert!(p.iter().all(|p| !p.hint.is_empty()));
    }

    #[test]
    fn type_errors_name_the_key() {
        let p = problems("prometheus:\n  series_ttl: soon\n");
        assert_eq!(p[0].path, "prometheus.series_ttl");
        assert!(p[0].message.contains("invalid duration"), "{}", p[0].message);
        let p = problems("receivers:\n  otlp:\n    grpc:\n      listen: nowhere\n");
        assert_eq!(p[0].path, "receivers.otlp.grpc.listen");
    }

    #[test]
    fn semantic_problems_are_all_collected() {
        let p = problems(
            "receivers:\n  otlp:\n    grpc:\n      listen: 127.0.0.1:9464\n    max_request_size: 8MiB\n    max_inflight_bytes: 1MiB\nprometheus:\n  series_ttl: 10ms\n",
        );
        let paths: Vec<_> = p.iter().map(|p| p.path.as_str()).collect();
        assert!(paths.contains(&"receivers.otlp.grpc.listen"), "{paths:?}");
        assert!(paths.contains(&"prometheus.series_ttl"), "{paths:?}");
        assert!(paths.contains(&"receivers.otlp.max_inflight_bytes"), "{paths:?}");
    }

    #[test]
    fn env_overrides_apply_by_path() {
        let c = Config::from_yaml_with_env(
            "prometheus:\n  series_ttl: 5m\n",
            vec![
                ("SPINDLE__PROMETHEUS__SERIES_TTL".to_string(), "1m".to_string()),
                (
                    "SPINDLE__RECEIVERS__OTLP__HTTP__LISTEN".to_string(),
                    "0.0.0.0:1".to_string(),
                ),
                ("UNRELATED".to_string(), "x".to_string()),
            ],
        )
        .unwrap();
        assert_eq!(c.prometheus.series_ttl.0, Duration::from_secs(60));
        assert_eq!(c.receivers.otlp.http.listen.to_string(), "0.0.0.0:1");
    }

    #[test]
    fn print_config_round_trips() {
        let c = Config::default();
        let again = parse(&c.to_yaml()).unwrap();
        assert_eq!(c, again);
    }

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!("4MiB".parse::<ByteSize>().unwrap().0, 4 << 20);
        assert_eq!("1000".parse::<ByteSize>().unwrap().0, 1000);
        assert!("4 parsecs".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize(4 << 20).to_string(), "4MiB");
    }
}
