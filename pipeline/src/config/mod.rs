//! Configuration: the root [`Config`] composed of each component's own config struct.
//!
//! In: a YAML file (or nothing: every field has an embedded default), then environment overrides
//! `SPINDLE__<PATH>` where `__` separates key path segments (for example
//! `SPINDLE__PROMETHEUS__SERIES_TTL=1m`). Out: a [`Config`] whose [`Config::validate`] has collected
//! every problem with its key path and a hint.
//!
//! Unknown keys are errors. Durations are strings such as `30s` or `5m`, sizes strings such as `4MiB`.
//!
//! Each component owns its config struct and its `validate()` (in its own `config.rs`: receivers in
//! [`crate::receive::config`], `prometheus` in [`crate::expose::config`], the processors in
//! `process::{enrich,cardinality,span_metrics}::config`, the exporters in
//! `export::{traces,remote_write}::config`); the value types they are written in are in
//! [`types`]. This root only composes them, loads and overrides, walks unknown keys, and checks
//! what spans components (listen addresses, connection caps, the trace queue against the request
//! size). Every type keeps its `crate::config::…` path through the re-exports below.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod types;

pub use crate::export::remote_write::config::RemoteWriteConfig;
pub use crate::export::traces::config::{
    Compression, DECODED_SIZE_FACTOR, OtlpExporterConfig, OtlpProtocol, TraceExportersConfig,
};
pub use crate::expose::config::PrometheusConfig;
pub use crate::process::cardinality::config::{CardinalityConfig, MetricOverride, NormalizeKind, NormalizeRule};
pub use crate::process::enrich::config::{
    CatalogConfig, CatalogFormat, EnrichConfig, EnrichRule, RuleAction, RuleTarget, StaticAction, StaticAttribute,
};
pub use crate::process::span_metrics::config::{Dimension, HistogramKind, SpanKindName, SpanMetricsConfig};
pub use crate::receive::config::{
    GrpcListenerConfig, HttpListenerConfig, LimitsConfig, OtlpReceiverConfig, ReceiversConfig,
};
pub use crate::storage::config::StorageConfig;
pub use types::{ByteSize, ConfigError, DurationStr, Problem};

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
    /// Transforms between receiving and storing or forwarding.
    pub processors: ProcessorsConfig,
    /// Where data is forwarded.
    pub exporters: ExportersConfig,
    /// Where what must outlive the process is kept (disk queues, metric state).
    pub storage: StorageConfig,
}

/// `processors`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessorsConfig {
    /// `processors.enrich`: attributes added, changed or removed before translation and span
    /// metrics, so enriched attributes can become labels and dimensions.
    pub enrich: EnrichConfig,
    /// `processors.span_metrics`: RED metrics from spans.
    pub span_metrics: SpanMetricsConfig,
    /// `processors.cardinality`: label rules and series limits between translation and the store.
    pub cardinality: CardinalityConfig,
}

/// `exporters`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ExportersConfig {
    /// `exporters.traces`.
    pub traces: TraceExportersConfig,
    /// `exporters.remote_write`: periodic Prometheus remote write of the series store.
    pub remote_write: RemoteWriteConfig,
}

/// File descriptors kept out of the listeners' `max_connections` budget: log files, disk
/// queues, exporter connections, the listeners themselves.
pub const RESERVED_FILE_DESCRIPTORS: u64 = 256;

impl Config {
    /// Checks the connection limits of the three listeners, and that their `max_connections`
    /// plus [`RESERVED_FILE_DESCRIPTORS`] fit under `open_files` (the process's `RLIMIT_NOFILE`
    /// hard limit, to which Spindle raises its soft limit at startup; `None` when unknown).
    pub fn connection_problems(&self, open_files: Option<u64>) -> Vec<Problem> {
        let mut out = Vec::new();
        let otlp = &self.receivers.otlp;
        let p = &self.prometheus;
        let caps = [
            ("receivers.otlp.grpc", otlp.grpc.max_connections),
            ("receivers.otlp.http", otlp.http.max_connections),
            ("prometheus", p.max_connections),
        ];
        for (prefix, cap) in caps {
            if cap == 0 {
                out.push(Problem {
                    path: format!("{prefix}.max_connections"),
                    message: "must be greater than zero".into(),
                    hint: "e.g. `1024` (`256` for prometheus)".into(),
                });
            }
        }
        let timeouts = [
            ("receivers.otlp.grpc.idle_timeout", otlp.grpc.idle_timeout),
            ("receivers.otlp.grpc.keepalive_interval", otlp.grpc.keepalive_interval),
            ("receivers.otlp.grpc.keepalive_timeout", otlp.grpc.keepalive_timeout),
            ("receivers.otlp.grpc.request_timeout", otlp.grpc.request_timeout),
            ("receivers.otlp.http.idle_timeout", otlp.http.idle_timeout),
            ("receivers.otlp.http.header_read_timeout", otlp.http.header_read_timeout),
            ("receivers.otlp.http.body_read_timeout", otlp.http.body_read_timeout),
            ("prometheus.idle_timeout", p.idle_timeout),
            ("prometheus.header_read_timeout", p.header_read_timeout),
            ("prometheus.body_read_timeout", p.body_read_timeout),
        ];
        for (path, d) in timeouts {
            if d.0 < Duration::from_millis(100) {
                out.push(Problem {
                    path: path.into(),
                    message: format!("{d} is too short"),
                    hint: "use at least `100ms`; every listener needs its timeouts (e.g. `10s`)".into(),
                });
            }
        }
        if otlp.grpc.max_concurrent_streams == 0 {
            out.push(Problem {
                path: "receivers.otlp.grpc.max_concurrent_streams".into(),
                message: "must be greater than zero".into(),
                hint: "e.g. `100`".into(),
            });
        }
        let total: u64 = caps.iter().map(|(_, c)| *c as u64).sum();
        if let Some(limit) = open_files
            && total.saturating_add(RESERVED_FILE_DESCRIPTORS) > limit
        {
            let (largest, _) = caps.iter().max_by_key(|(_, c)| *c).copied().unwrap_or(caps[0]);
            out.push(Problem {
                path: format!("{largest}.max_connections"),
                message: format!(
                    "the listeners' max_connections add up to {total} (receivers.otlp.grpc {}, receivers.otlp.http {}, \
                     prometheus {}) plus {RESERVED_FILE_DESCRIPTORS} reserved file descriptors, more than this \
                     process may open ({limit}, the RLIMIT_NOFILE hard limit)",
                    caps[0].1, caps[1].1, caps[2].1
                ),
                hint: "lower the max_connections caps, or raise the open-file limit (`ulimit -Hn`, systemd \
                       `LimitNOFILE=`, docker `--ulimit nofile=`)"
                    .into(),
            });
        }
        out
    }
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

    /// Checks settings that parse but cannot work together. Returns every problem found: first
    /// those spanning components, then each component's own (its `validate()`), in the order of
    /// the config file's sections.
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
        out.extend(self.connection_problems(crate::server::open_file_limit()));
        out.extend(self.prometheus.validate());
        out.extend(self.receivers.validate());
        out.extend(self.processors.enrich.validate());
        out.extend(self.processors.cardinality.validate(self.prometheus.max_series));
        out.extend(self.processors.span_metrics.validate());
        out.extend(self.exporters.traces.validate());
        out.extend(self.trace_queue_problem());
        out.extend(self.storage_queue_problem());
        out.extend(self.exporters.remote_write.validate());
        out.extend(self.storage.validate());
        out
    }

    /// `exporters.traces.otlp.queue_max_bytes` must hold [`DECODED_SIZE_FACTOR`] of the largest
    /// requests (`receivers.otlp.max_request_size`).
    fn trace_queue_problem(&self) -> Option<Problem> {
        let ex = &self.exporters.traces.otlp;
        let largest_held = self
            .receivers
            .otlp
            .max_request_size
            .0
            .saturating_mul(DECODED_SIZE_FACTOR);
        (ex.queue_max_bytes.0 < largest_held).then(|| Problem {
            path: "exporters.traces.otlp.queue_max_bytes".into(),
            message: format!(
                "{} is less than {DECODED_SIZE_FACTOR} × receivers.otlp.max_request_size ({}): the queue must have room for \
                 a few of the largest requests, or one large request would fill it",
                ex.queue_max_bytes, self.receivers.otlp.max_request_size
            ),
            hint: format!(
                "raise it to at least {} (several times that lets spans queue while the backend is slow), or lower max_request_size",
                ByteSize(largest_held)
            ),
        })
    }

    /// With `storage.path`, each disk queue must hold a few of the largest requests too (as a
    /// memory queue must, by the same rule).
    fn storage_queue_problem(&self) -> Option<Problem> {
        self.storage.path.as_ref()?;
        let max = self.receivers.otlp.max_request_size;
        let least = max.0.saturating_mul(DECODED_SIZE_FACTOR);
        (self.storage.queue_max_bytes.0 < least).then(|| Problem {
            path: "storage.queue_max_bytes".into(),
            message: format!(
                "{} is less than {DECODED_SIZE_FACTOR} × receivers.otlp.max_request_size ({max}): a disk queue must have \
                 room for a few of the largest requests",
                self.storage.queue_max_bytes
            ),
            hint: format!("raise it to at least {} (size it for the longest outage to ride out)", ByteSize(least)),
        })
    }

    /// The same configuration with its secrets (exporter header values, credentials in endpoint
    /// URLs, `prometheus.auth` password hashes) shown as `<redacted>`: what `print-config` prints.
    /// Bearer tokens are only ever in their files, so only those paths are printed.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        c.exporters.traces.otlp.redact();
        c.exporters.remote_write.redact();
        c.prometheus.auth.redact();
        c
    }

    /// The configuration as YAML (every key, with its current value; secrets included, see
    /// [`Config::redacted`]).
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

/// Parsing helpers for the config tests of every component.
#[cfg(test)]
pub(crate) mod testing {
    use super::{Config, ConfigError, Problem};

    /// Parses YAML with no environment overrides.
    pub(crate) fn parse(y: &str) -> Result<Config, ConfigError> {
        Config::from_yaml_with_env(y, Vec::<(String, String)>::new())
    }

    /// The problems of YAML that must not validate.
    pub(crate) fn problems(y: &str) -> Vec<Problem> {
        match parse(y) {
            Err(ConfigError::Invalid(p)) => p,
            other => panic!("expected problems, got {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::testing::{parse, problems};
    use super::*;

    #[test]
    fn a_disk_queue_must_hold_four_of_the_largest_requests_and_is_checked_only_with_a_path() {
        let dir = std::env::temp_dir();
        let yaml = |path: &str| {
            format!("receivers: {{otlp: {{max_request_size: 8MiB}}}}\nstorage: {{{path}queue_max_bytes: 16MiB}}\n")
        };
        assert!(parse(&yaml("")).is_ok(), "no path: no disk queue to check");
        let with_path = yaml(&format!("path: {}, ", dir.display()));
        let p = problems(&with_path);
        assert!(
            p.iter()
                .any(|p| p.path == "storage.queue_max_bytes" && p.message.contains("largest requests")),
            "{p:?}"
        );
    }

    #[test]
    fn empty_is_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.receivers.otlp.grpc.listen.to_string(), "127.0.0.1:4317");
        assert_eq!(c.receivers.otlp.http.listen.to_string(), "127.0.0.1:4318");
        assert_eq!(c.prometheus.listen.to_string(), "127.0.0.1:9464");
        assert_eq!(c.prometheus.series_ttl.0, Duration::from_secs(300));
        // No TLS and no authentication unless configured.
        assert!(!c.receivers.otlp.tls.enabled() && !c.prometheus.tls.enabled());
        assert!(c.receivers.otlp.auth.bearer_tokens_file.is_none());
        assert!(c.prometheus.auth.basic_auth_users.is_empty() && c.prometheus.auth.bearer_tokens_file.is_none());
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
    fn every_components_own_problems_reach_the_root_and_cross_checks_stay_here() {
        let mut c = Config::default();
        c.prometheus.series_ttl = DurationStr(Duration::from_millis(10));
        c.receivers.otlp.limits.max_attributes_per_span = 0;
        c.processors.enrich.rules.push(EnrichRule {
            action: RuleAction::Rename,
            key: "a".into(),
            value: None,
            new_key: None,
            pattern: None,
            target: RuleTarget::Attributes,
            signals: vec![],
            services: vec![],
            names: vec![],
        });
        c.processors.cardinality.max_stream_states = 0;
        c.processors.span_metrics.buckets.clear();
        c.exporters.traces.otlp.max_batch_spans = 0;
        c.exporters.traces.otlp.queue_max_bytes = ByteSize(1 << 20);
        c.exporters.remote_write.max_samples_per_request = 0;
        let own = [
            c.prometheus.validate(),
            c.receivers.validate(),
            c.processors.enrich.validate(),
            c.processors.cardinality.validate(c.prometheus.max_series),
            c.processors.span_metrics.validate(),
            c.exporters.traces.validate(),
            c.exporters.remote_write.validate(),
        ];
        let all = c.validate();
        for p in own.iter().flatten() {
            assert!(all.contains(p), "{p} missing from {all:?}");
        }
        assert!(own.iter().all(|p| p.len() == 1), "{own:?}");
        // Only what spans components is added by the root: here the trace queue against the
        // receivers' request size.
        let extra: Vec<&str> = all
            .iter()
            .filter(|p| !own.iter().flatten().any(|o| o == *p))
            .map(|p| p.path.as_str())
            .collect();
        assert_eq!(extra, ["exporters.traces.otlp.queue_max_bytes"]);
    }

    /// The non-test part of a source file.
    fn code(path: &std::path::Path) -> String {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        match text.find("#[cfg(test)]") {
            Some(i) => text[..i].to_string(),
            None => text,
        }
    }

    fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                rust_files(&p, out);
            } else if p.extension().is_some_and(|e| e == "rs") && !p.ends_with("tests.rs") {
                out.push(p);
            }
        }
    }

    /// Every `crate::…` path a file's code names, up to the first character that ends a path.
    fn crate_paths(code: &str) -> Vec<String> {
        code.match_indices("crate::")
            .map(|(i, _)| {
                let rest = &code[i..];
                let end = rest
                    .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                    .unwrap_or(rest.len());
                rest[..end].to_string()
            })
            .collect()
    }

    #[test]
    fn the_root_config_imports_component_config_modules_and_no_component_logic() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let allowed = [
            "crate::config::",
            "crate::receive::config::",
            "crate::expose::config::",
            "crate::process::enrich::config::",
            "crate::process::cardinality::config::",
            "crate::process::span_metrics::config::",
            "crate::export::traces::config::",
            "crate::export::remote_write::config::",
            "crate::storage::config::",
            // The process's open-file limit, to check the listeners' connection caps against.
            "crate::server::open_file_limit",
        ];
        let mut files = Vec::new();
        rust_files(&src.join("config"), &mut files);
        assert!(files.len() >= 2, "{files:?}");
        for f in files {
            for path in crate_paths(&code(&f)) {
                assert!(
                    allowed.iter().any(|a| path.starts_with(a) || a.starts_with(&path)),
                    "{} names `{path}`: the root config composes components' config modules only",
                    f.display()
                );
            }
        }
    }

    #[test]
    fn components_import_only_the_config_value_types() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        for dir in ["receive", "process", "store", "expose", "export"] {
            rust_files(&src.join(dir), &mut files);
        }
        assert!(files.len() > 10, "{files:?}");
        for f in files {
            let code = code(&f);
            for path in crate_paths(&code) {
                assert!(
                    !path.starts_with("crate::config") || path.starts_with("crate::config::types"),
                    "{} names `{path}`: a component imports its own config and `crate::config::types`, \
                     never the root config (which imports it)",
                    f.display()
                );
            }
            assert!(!code.contains("use crate::config;"), "{}", f.display());
        }
    }

    /// The non-test code of a source file without its comments, so that docs may name modules.
    fn code_only(path: &std::path::Path) -> String {
        code(path)
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn processors_build_no_json_and_touch_no_store_and_no_component_imports_telemetry() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rust_files(&src.join("process"), &mut files);
        assert!(files.len() > 10, "{files:?}");
        for f in files {
            // The composition that writes limited batches into the store.
            if f.ends_with("process/pipeline.rs") {
                continue;
            }
            let code = code_only(&f);
            for forbidden in ["crate::store", "serde_json::json", "json!"] {
                assert!(
                    !code.contains(forbidden),
                    "{} names `{forbidden}`: processors hand out typed data; `expose` renders it and \
                     reads the store",
                    f.display()
                );
            }
        }
        // Shared vocabulary imports nothing but itself.
        let mut vocabulary = Vec::new();
        for dir in ["model", "util"] {
            rust_files(&src.join(dir), &mut vocabulary);
        }
        for f in vocabulary {
            for path in crate_paths(&code_only(&f)) {
                assert!(
                    path.starts_with("crate::model") || path.starts_with("crate::util"),
                    "{} names `{path}`: shared vocabulary imports no component",
                    f.display()
                );
            }
        }
        let mut components = Vec::new();
        for dir in [
            "model", "util", "server", "receive", "process", "store", "expose", "export",
        ] {
            rust_files(&src.join(dir), &mut components);
        }
        assert!(components.len() > 30, "{components:?}");
        for f in components {
            assert!(
                !code_only(&f).contains("crate::telemetry"),
                "{} names `crate::telemetry`: components hand their stats to the wiring, which \
                 imports them, never the other way",
                f.display()
            );
        }
    }
}
