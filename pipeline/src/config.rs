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
    /// Transforms between receiving and storing or forwarding.
    pub processors: ProcessorsConfig,
    /// Where data is forwarded.
    pub exporters: ExportersConfig,
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

/// `processors.cardinality`: label allow/deny lists and value normalizers, then series limits.
/// Past a limit, new series fold into the metric's overflow series `{otel_metric_overflow="true"}`
/// with totals kept exact. Limits count the overflow series. Metric and label names are matched as
/// Prometheus sees them (`http_server_duration_seconds`, `http_route`; counters also match with
/// `_total`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CardinalityConfig {
    /// Series over all metrics (each metric's overflow series included). `0`: `prometheus.max_series`.
    /// Default `0`.
    pub max_series: usize,
    /// Series per metric (its overflow series included). `0`: no limit. Default `0`.
    pub max_series_per_metric: usize,
    /// Distinct values per label of a metric. `0`: no limit. Default `0`.
    pub max_label_values: usize,
    /// Bound on the per-stream state kept for cumulative streams that are folded or merged by a
    /// label rule (needed to turn them into exact increments). A point that needs new state past it
    /// is rejected (`partial_success`) rather than counted wrongly. Default `1000000`.
    pub max_stream_states: usize,
    /// When not empty, only these labels are kept (`job` and `instance` always are). Default: all.
    pub allow_labels: Vec<String>,
    /// Labels removed. Default: none.
    pub deny_labels: Vec<String>,
    /// Value normalizers, applied in order before the limits. Default: none.
    pub normalize: Vec<NormalizeRule>,
    /// Per-metric overrides; the first whose `match` glob matches applies. Default: none.
    pub metrics: Vec<MetricOverride>,
}

impl Default for CardinalityConfig {
    fn default() -> Self {
        Self {
            max_series: 0,
            max_series_per_metric: 0,
            max_label_values: 0,
            max_stream_states: 1_000_000,
            allow_labels: Vec::new(),
            deny_labels: Vec::new(),
            normalize: Vec::new(),
            metrics: Vec::new(),
        }
    }
}

/// What a normalizer replaces in a label value.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum NormalizeKind {
    /// UUIDs (`8-4-4-4-12` hex digits) → `{uuid}`.
    Uuid,
    /// Runs of 8 or more hex digits containing a digit (trace ids, hashes, object ids) → `{id}`.
    HexId,
    /// Decimal numbers standing alone (`/users/42` but not `v2`) → `{number}`.
    Number,
    /// IPv4 and IPv6 addresses → `{ip}`.
    Ip,
    /// Every match of `pattern` → `replacement`.
    Regex,
}

impl NormalizeKind {
    /// The placeholder used when a rule sets no `replacement`.
    pub const fn default_replacement(self) -> &'static str {
        match self {
            NormalizeKind::Uuid => "{uuid}",
            NormalizeKind::HexId => "{id}",
            NormalizeKind::Number => "{number}",
            NormalizeKind::Ip => "{ip}",
            NormalizeKind::Regex => "",
        }
    }

    /// The name used in self metrics and `/api/v1/cardinality`.
    pub const fn as_str(self) -> &'static str {
        match self {
            NormalizeKind::Uuid => "uuid",
            NormalizeKind::HexId => "hex_id",
            NormalizeKind::Number => "number",
            NormalizeKind::Ip => "ip",
            NormalizeKind::Regex => "regex",
        }
    }
}

/// One rule of `processors.cardinality.normalize`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NormalizeRule {
    /// Label names (as Prometheus sees them) whose values are normalized.
    pub labels: Vec<String>,
    /// `uuid`, `hex_id`, `number`, `ip` or `regex`.
    pub kind: NormalizeKind,
    /// For `regex`: the regular expression whose matches are replaced.
    #[serde(default)]
    pub pattern: Option<String>,
    /// The placeholder. Default: `{uuid}`, `{id}`, `{number}`, `{ip}`; required for `regex`
    /// (`$name` refers to a capture group).
    #[serde(default)]
    pub replacement: Option<String>,
    /// Globs on the metric name; the rule applies when one matches. Default: every metric.
    #[serde(default)]
    pub metrics: Vec<String>,
}

/// One entry of `processors.cardinality.metrics`: limits and label lists for matching metrics,
/// replacing the top-level ones.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetricOverride {
    /// Glob (`*`, `?`) on the metric name.
    #[serde(rename = "match")]
    pub pattern: String,
    /// Series of each matching metric (overflow included), instead of `max_series_per_metric`.
    /// `0`: no limit.
    #[serde(default)]
    pub max_series: Option<usize>,
    /// Distinct values per label, instead of `max_label_values`. `0`: no limit.
    #[serde(default)]
    pub max_label_values: Option<usize>,
    /// Instead of the top-level `allow_labels`.
    #[serde(default)]
    pub allow_labels: Option<Vec<String>>,
    /// Instead of the top-level `deny_labels`.
    #[serde(default)]
    pub deny_labels: Option<Vec<String>>,
}

impl CardinalityConfig {
    /// The global series bound in effect: `max_series`, or `prometheus_max` when it is `0` (never
    /// above `prometheus_max`, where the store itself refuses series).
    pub fn effective_max_series(&self, prometheus_max: usize) -> usize {
        if self.max_series == 0 {
            prometheus_max
        } else {
            self.max_series.min(prometheus_max)
        }
    }

    /// Checks `processors.cardinality` against itself and `prometheus.max_series`; every problem
    /// with its key path and a hint.
    fn validate(&self, prometheus_max: usize) -> Vec<Problem> {
        let mut out = Vec::new();
        let p = |key: String, message: String, hint: &str| Problem {
            path: format!("processors.cardinality.{key}"),
            message,
            hint: hint.into(),
        };
        let global = self.effective_max_series(prometheus_max);
        if self.max_series > prometheus_max {
            out.push(p(
                "max_series".into(),
                format!(
                    "{} is above prometheus.max_series ({prometheus_max}), which would refuse series first",
                    self.max_series
                ),
                "lower it, or raise prometheus.max_series (`0` uses prometheus.max_series)",
            ));
        }
        if self.max_series_per_metric > global {
            out.push(p(
                "max_series_per_metric".into(),
                format!(
                    "{} is above the global series limit ({global}), so it could never apply",
                    self.max_series_per_metric
                ),
                "lower it below max_series, or raise max_series",
            ));
        }
        if self.max_stream_states == 0 {
            out.push(p(
                "max_stream_states".into(),
                "must be greater than zero".into(),
                "e.g. `1000000` (50–90 bytes each for counters)",
            ));
        }
        label_list_problems(&self.allow_labels, &self.deny_labels, "", &mut out);
        for (i, r) in self.normalize.iter().enumerate() {
            let at = |k: &str| format!("normalize[{i}].{k}");
            if r.labels.is_empty() {
                out.push(p(at("labels"), "names no label".into(), "e.g. `labels: [http_route]`"));
            }
            for (j, l) in r.labels.iter().enumerate() {
                out.extend(label_name_problem(
                    &format!("processors.cardinality.normalize[{i}].labels[{j}]"),
                    l,
                ));
            }
            match (r.kind, &r.pattern) {
                (NormalizeKind::Regex, None) => out.push(p(
                    at("pattern"),
                    "`regex` needs a pattern".into(),
                    "add e.g. `pattern: '/orders/[^/]+'`",
                )),
                (NormalizeKind::Regex, Some(pat)) => {
                    if let Err(e) = regex::Regex::new(pat) {
                        out.push(p(
                            at("pattern"),
                            format!("does not compile: {e}"),
                            "fix the regular expression (Rust `regex` syntax; in YAML prefer single quotes so `\\` stays a backslash)",
                        ));
                    }
                    if r.replacement.is_none() {
                        out.push(p(
                            at("replacement"),
                            "`regex` needs a replacement".into(),
                            "add e.g. `replacement: '/orders/{id}'`",
                        ));
                    }
                }
                (_, None) => {}
                (k, Some(_)) => out.push(p(
                    at("pattern"),
                    format!("is only used by `regex`; `{}` has a built-in pattern", k.as_str()),
                    "remove it, or use `kind: regex`",
                )),
            }
            if r.replacement.as_deref() == Some("") {
                out.push(p(
                    at("replacement"),
                    "is empty; a label with an empty value disappears in Prometheus".into(),
                    "use a placeholder such as `{id}`, or drop the label with deny_labels",
                ));
            }
            for (j, g) in r.metrics.iter().enumerate() {
                if g.is_empty() {
                    out.push(p(
                        format!("normalize[{i}].metrics[{j}]"),
                        "empty glob".into(),
                        "e.g. `http_*`",
                    ));
                }
            }
        }
        for (i, o) in self.metrics.iter().enumerate() {
            let at = |k: &str| format!("metrics[{i}].{k}");
            if o.pattern.is_empty() {
                out.push(p(at("match"), "empty glob".into(), "e.g. `match: \"http_*\"`"));
            }
            if let Some(n) = o.max_series
                && n > global
            {
                out.push(p(
                    at("max_series"),
                    format!("{n} is above the global series limit ({global}), so it could never apply"),
                    "lower it below processors.cardinality.max_series, or raise that",
                ));
            }
            if o.max_series.is_none()
                && o.max_label_values.is_none()
                && o.allow_labels.is_none()
                && o.deny_labels.is_none()
            {
                out.push(p(
                    format!("metrics[{i}]"),
                    "sets nothing, so it only hides later entries".into(),
                    "add max_series, max_label_values, allow_labels or deny_labels, or remove it",
                ));
            }
            let allow = o.allow_labels.as_ref().unwrap_or(&self.allow_labels);
            let deny = o.deny_labels.as_ref().unwrap_or(&self.deny_labels);
            if o.allow_labels.is_some() || o.deny_labels.is_some() {
                label_list_problems(allow, deny, &format!("metrics[{i}]."), &mut out);
            }
        }
        out
    }
}

/// `allow_labels` and `deny_labels` must name valid labels, and no label may be in both.
fn label_list_problems(allow: &[String], deny: &[String], prefix: &str, out: &mut Vec<Problem>) {
    for (key, list) in [("allow_labels", allow), ("deny_labels", deny)] {
        for (j, l) in list.iter().enumerate() {
            out.extend(label_name_problem(
                &format!("processors.cardinality.{prefix}{key}[{j}]"),
                l,
            ));
        }
    }
    for (j, l) in deny.iter().enumerate() {
        if allow.contains(l) {
            out.push(Problem {
                path: format!("processors.cardinality.{prefix}deny_labels[{j}]"),
                message: format!("`{l}` is also in allow_labels"),
                hint: "keep the label in one of the two lists".into(),
            });
        }
    }
}

/// Labels are matched as Prometheus sees them, so a name with characters Prometheus replaces never
/// matches.
fn label_name_problem(path: &str, name: &str) -> Option<Problem> {
    let fixed = crate::process::translate::sanitized_label_name(name);
    (fixed != name).then(|| Problem {
        path: path.into(),
        message: format!("`{name}` is not a label name Spindle produces, so it would never match"),
        hint: format!("labels are matched as Prometheus shows them, e.g. `{fixed}`"),
    })
}

/// `processors.enrich`: applied to every metrics and traces request before anything else reads
/// it. Order: catalog attributes, then `resource_attributes`, then `rules` in order. Default:
/// nothing configured, and enrichment is skipped.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EnrichConfig {
    /// Static resource attributes set on every resource, e.g.
    /// `[{key: deployment.environment, value: prod, action: upsert}]`. Default: none.
    pub resource_attributes: Vec<StaticAttribute>,
    /// Attribute rules, applied in order. Default: none.
    pub rules: Vec<EnrichRule>,
    /// A service catalog file mapping `service.name` to resource attributes (team, tier, owner …),
    /// reloaded when it changes. Default: none.
    pub catalog: Option<CatalogConfig>,
}

/// One static resource attribute of `processors.enrich.resource_attributes`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StaticAttribute {
    /// Attribute key.
    pub key: String,
    /// Attribute value (a string).
    pub value: String,
    /// `insert` (only when absent) or `upsert` (always). Default `insert`.
    #[serde(default)]
    pub action: StaticAction,
}

/// How a static resource attribute is set.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StaticAction {
    /// Only when the resource lacks the key.
    #[default]
    Insert,
    /// Always, replacing an existing value.
    Upsert,
}

/// What an enrichment rule does to the attribute `key`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RuleAction {
    /// Sets `value` only when `key` is absent.
    Insert,
    /// Sets `value`, replacing an existing value.
    Upsert,
    /// Sets `value` only when `key` is present.
    Update,
    /// Removes `key`.
    Delete,
    /// Moves the value of `key` to `new_key` (replacing `new_key`).
    Rename,
    /// Replaces the value with the SHA-256 hex digest of its text, so values correlate but
    /// cannot be read.
    Hash,
    /// Matches `pattern` against the value; each named capture group that matched becomes an
    /// attribute (upserted).
    Extract,
}

/// Which attributes a rule edits.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RuleTarget {
    /// The data point's or span's own attributes.
    #[default]
    Attributes,
    /// The resource's attributes.
    Resource,
}

/// A signal, as written in config.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SignalName {
    /// Metrics requests.
    Metrics,
    /// Traces requests (and so span metrics).
    Traces,
}

/// One rule of `processors.enrich.rules`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EnrichRule {
    /// `insert`, `upsert`, `update`, `delete`, `rename`, `hash` or `extract`.
    pub action: RuleAction,
    /// The attribute the rule reads or writes.
    pub key: String,
    /// The value for `insert`, `upsert` and `update`.
    #[serde(default)]
    pub value: Option<String>,
    /// The destination key for `rename`.
    #[serde(default)]
    pub new_key: Option<String>,
    /// For `extract`: a regular expression with named groups, e.g. `^/api/(?P<api_version>v\d+)/`.
    #[serde(default)]
    pub pattern: Option<String>,
    /// `attributes` (data point / span attributes) or `resource`. Default `attributes`.
    #[serde(default)]
    pub target: RuleTarget,
    /// Signals the rule applies to (`metrics`, `traces`). Default: both.
    #[serde(default)]
    pub signals: Vec<SignalName>,
    /// Globs (`*`, `?`) on `service.name`; the rule applies when one matches. Default: every service.
    #[serde(default)]
    pub services: Vec<String>,
    /// Globs on the metric or span name (only with `target: attributes`). Default: every name.
    #[serde(default)]
    pub names: Vec<String>,
}

/// Format of the service catalog file.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CatalogFormat {
    /// `service: {attribute: value, …}` mappings.
    Yaml,
    /// A header row starting with `service.name`, then one row per service.
    Csv,
}

impl CatalogFormat {
    /// The format a file name's extension implies (`.yaml`, `.yml`, `.csv`).
    pub fn from_path(path: &str) -> Option<Self> {
        let ext = Path::new(path).extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "yaml" | "yml" => Some(Self::Yaml),
            "csv" => Some(Self::Csv),
            _ => None,
        }
    }
}

/// `processors.enrich.catalog`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CatalogConfig {
    /// The catalog file.
    pub path: String,
    /// `yaml` or `csv`. Default: from the file's extension.
    #[serde(default)]
    pub format: Option<CatalogFormat>,
    /// How often the file is checked for changes. Default `10s`.
    #[serde(default = "default_catalog_reload")]
    pub reload_interval: DurationStr,
}

impl CatalogConfig {
    /// The format to read the file with: the configured one, else the extension's.
    pub fn effective_format(&self) -> Option<CatalogFormat> {
        self.format.or_else(|| CatalogFormat::from_path(&self.path))
    }
}

fn default_catalog_reload() -> DurationStr {
    DurationStr(Duration::from_secs(10))
}

/// `processors.span_metrics`: every received span updates `traces_span_metrics_calls_total` and
/// `traces_span_metrics_duration_seconds`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SpanMetricsConfig {
    /// Whether span metrics are produced. Default `true`.
    pub enabled: bool,
    /// Extra labels from span attributes (then resource attributes) of these names. Default: none.
    pub dimensions: Vec<Dimension>,
    /// Upper bounds of the duration histogram's buckets, in seconds, increasing. Default: the OTel
    /// Collector spanmetrics connector's (2 ms … 15 s).
    pub buckets: Vec<f64>,
    /// Span kinds that produce metrics (`internal`, `server`, `client`, `producer`, `consumer`,
    /// `unspecified`). Default: all.
    pub span_kinds: Vec<SpanKindName>,
}

impl Default for SpanMetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dimensions: Vec::new(),
            buckets: default_span_buckets(),
            span_kinds: Vec::new(),
        }
    }
}

fn default_span_buckets() -> Vec<f64> {
    vec![
        0.002, 0.004, 0.006, 0.008, 0.01, 0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.4, 2.0, 5.0, 10.0, 15.0,
    ]
}

/// A span-metrics dimension: an attribute name and the value used when a span lacks it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Dimension {
    /// Attribute name, looked up on the span, then on its resource.
    pub name: String,
    /// Value when neither has it; without a default the label is left out for such spans.
    #[serde(default)]
    pub default: Option<String>,
}

/// A span kind, as written in config.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SpanKindName {
    /// `SPAN_KIND_UNSPECIFIED`.
    Unspecified,
    /// `SPAN_KIND_INTERNAL`.
    Internal,
    /// `SPAN_KIND_SERVER`.
    Server,
    /// `SPAN_KIND_CLIENT`.
    Client,
    /// `SPAN_KIND_PRODUCER`.
    Producer,
    /// `SPAN_KIND_CONSUMER`.
    Consumer,
}

impl SpanKindName {
    /// The OTLP enum value.
    pub const fn otlp(self) -> i32 {
        match self {
            SpanKindName::Unspecified => 0,
            SpanKindName::Internal => 1,
            SpanKindName::Server => 2,
            SpanKindName::Client => 3,
            SpanKindName::Producer => 4,
            SpanKindName::Consumer => 5,
        }
    }
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

/// `exporters.remote_write`: every `interval`, a snapshot of the series store (the samples and
/// exemplars a scrape shows) is pushed with Prometheus remote write 1.0 (protobuf + snappy) to
/// Prometheus, Mimir, Thanos Receive, VictoriaMetrics or anything else that speaks it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteWriteConfig {
    /// Receiver URL, e.g. `http://prometheus:9090/api/v1/write` (Prometheus started with
    /// `--web.enable-remote-write-receiver`) or `http://mimir:8080/api/v1/push`. `https://` uses
    /// TLS with the system roots. Default: none — nothing is pushed.
    pub endpoint: Option<String>,
    /// How often a snapshot is taken and pushed. Default `15s`.
    pub interval: DurationStr,
    /// Timeout of one request attempt. Default `10s`.
    pub timeout: DurationStr,
    /// Headers sent with every request, e.g. `{authorization: "Basic …"}` or
    /// `{X-Scope-OrgID: tenant}`. Default: none.
    pub headers: std::collections::BTreeMap<String, String>,
    /// Most samples in one request (an exemplar counts as a sample). Default `2000`.
    pub max_samples_per_request: usize,
    /// Bound of the request queue in compressed bytes. When a new snapshot does not fit, the
    /// oldest queued snapshot's requests are dropped and counted. Default `64MiB`.
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
            max_samples_per_request: 2000,
            queue_max_bytes: ByteSize(64 << 20),
            retry_initial_backoff: DurationStr(Duration::from_millis(100)),
            retry_max_backoff: DurationStr(Duration::from_secs(5)),
            shutdown_timeout: DurationStr(Duration::from_secs(10)),
        }
    }
}

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
    /// None.
    None,
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
    /// `gzip` or `none`. Default `gzip`.
    pub compression: Compression,
    /// Headers sent with every export (e.g. an API key). Default: none.
    pub headers: std::collections::BTreeMap<String, String>,
    /// Timeout of one export attempt. Default `10s`.
    pub timeout: DurationStr,
    /// Extra PEM CA certificate for `https` endpoints. Default: none.
    pub ca_file: Option<String>,
    /// Most spans in one export request. Default `2048`.
    pub max_batch_spans: usize,
    /// Longest a span waits for its batch to fill. Default `200ms`.
    pub batch_timeout: DurationStr,
    /// Bound of the export queue in memory held by queued spans: the decoded requests (struct sizes
    /// plus string, bytes and list capacities, about 3–5× their encoded size) and their exemplars,
    /// and the encoded body of the batch in flight. When full, receivers answer "overloaded" so
    /// clients back off, and no accepted span is dropped. At least
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
            headers: Default::default(),
            timeout: DurationStr(Duration::from_secs(10)),
            ca_file: None,
            max_batch_spans: 2048,
            batch_timeout: DurationStr(Duration::from_millis(200)),
            queue_max_bytes: ByteSize(64 << 20),
            retry_initial_backoff: DurationStr(Duration::from_millis(100)),
            retry_max_backoff: DurationStr(Duration::from_secs(5)),
            shutdown_timeout: DurationStr(Duration::from_secs(10)),
        }
    }
}

/// How many times its encoded size a typical request holds once decoded (measured: 3.2× for spans
/// with 8 attributes, 4–5× for spans with few or none). `exporters.traces.otlp.queue_max_bytes`
/// counts decoded memory, so it must be at least this many times `receivers.otlp.max_request_size`.
pub const DECODED_SIZE_FACTOR: u64 = 4;

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
}

impl Default for OtlpReceiverConfig {
    fn default() -> Self {
        Self {
            grpc: GrpcListenerConfig::default(),
            http: HttpListenerConfig::default(),
            max_request_size: ByteSize(default_max_request_size()),
            max_inflight_bytes: ByteSize(default_max_inflight_bytes()),
            limits: LimitsConfig::default(),
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
        out.extend(self.connection_problems(crate::server::open_file_limit()));
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
        out.extend(self.receivers.otlp.limits.validate());
        out.extend(self.processors.enrich.validate());
        out.extend(self.processors.cardinality.validate(self.prometheus.max_series));
        let sm = &self.processors.span_metrics;
        if sm.buckets.is_empty()
            || sm.buckets.windows(2).any(|w| w[0] >= w[1])
            || sm.buckets.iter().any(|b| !b.is_finite() || *b <= 0.0)
        {
            out.push(Problem {
                path: "processors.span_metrics.buckets".into(),
                message: "bucket bounds must be positive, finite and strictly increasing".into(),
                hint: "e.g. `[0.005, 0.01, 0.05, 0.1, 0.5, 1, 5]` (seconds)".into(),
            });
        }
        for (i, d) in sm.dimensions.iter().enumerate() {
            if d.name.is_empty() {
                out.push(Problem {
                    path: format!("processors.span_metrics.dimensions[{i}].name"),
                    message: "empty attribute name".into(),
                    hint: "name a span or resource attribute such as `http.route`".into(),
                });
            }
        }
        let ex = &self.exporters.traces.otlp;
        if let Some(ep) = &ex.endpoint {
            out.extend(endpoint_problem(
                "exporters.traces.otlp.endpoint",
                ep,
                "e.g. `http://127.0.0.1:4317` for gRPC or `http://127.0.0.1:4318` for http/protobuf",
            ));
            if let Some(ca) = &ex.ca_file
                && std::fs::metadata(ca).is_err()
            {
                out.push(Problem {
                    path: "exporters.traces.otlp.ca_file".into(),
                    message: format!("cannot read `{ca}`"),
                    hint: "give the path of a PEM certificate".into(),
                });
            }
        }
        if ex.max_batch_spans == 0 {
            out.push(Problem {
                path: "exporters.traces.otlp.max_batch_spans".into(),
                message: "must be greater than zero".into(),
                hint: "e.g. `2048`".into(),
            });
        }
        let largest_held = self
            .receivers
            .otlp
            .max_request_size
            .0
            .saturating_mul(DECODED_SIZE_FACTOR);
        if ex.queue_max_bytes.0 < largest_held {
            out.push(Problem {
                path: "exporters.traces.otlp.queue_max_bytes".into(),
                message: format!(
                    "{} is less than {DECODED_SIZE_FACTOR} × receivers.otlp.max_request_size ({}): the queue counts the memory \
                     decoded spans hold, typically {DECODED_SIZE_FACTOR}× their encoded size, so one large request would fill it",
                    ex.queue_max_bytes, self.receivers.otlp.max_request_size
                ),
                hint: format!(
                    "raise it to at least {} (several times that lets spans queue while the backend is slow), or lower max_request_size",
                    ByteSize(largest_held)
                ),
            });
        }
        out.extend(backoff_problem(
            "exporters.traces.otlp",
            ex.retry_initial_backoff,
            ex.retry_max_backoff,
        ));
        out.extend(header_problems("exporters.traces.otlp", &ex.headers));
        out.extend(self.exporters.remote_write.validate());
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

impl EnrichConfig {
    /// Checks `processors.enrich`; every problem with its key path and a hint.
    fn validate(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let p = |key: String, message: String, hint: &str| Problem {
            path: format!("processors.enrich.{key}"),
            message,
            hint: hint.into(),
        };
        for (i, a) in self.resource_attributes.iter().enumerate() {
            if a.key.is_empty() {
                out.push(p(
                    format!("resource_attributes[{i}].key"),
                    "empty attribute key".into(),
                    "name a resource attribute such as `deployment.environment`",
                ));
            }
        }
        for (i, r) in self.rules.iter().enumerate() {
            let at = |k: &str| format!("rules[{i}].{k}");
            if r.key.is_empty() {
                out.push(p(
                    at("key"),
                    "empty attribute key".into(),
                    "name the attribute the rule acts on",
                ));
            }
            let needs_value = matches!(r.action, RuleAction::Insert | RuleAction::Upsert | RuleAction::Update);
            if needs_value && r.value.is_none() {
                out.push(p(
                    at("value"),
                    format!("`{:?}` needs a value", r.action).to_lowercase(),
                    "add `value: …`",
                ));
            }
            if !needs_value && r.value.is_some() {
                out.push(p(
                    at("value"),
                    "is only used by insert, upsert and update".into(),
                    "remove it or change the action",
                ));
            }
            match (&r.action, &r.new_key) {
                (RuleAction::Rename, None) => out.push(p(
                    at("new_key"),
                    "`rename` needs a new_key".into(),
                    "add `new_key: …`, the attribute's new name",
                )),
                (RuleAction::Rename, Some(k)) if k.is_empty() || *k == r.key => out.push(p(
                    at("new_key"),
                    "must be a non-empty key different from `key`".into(),
                    "name the attribute's new key",
                )),
                (RuleAction::Rename, Some(_)) | (_, None) => {}
                (_, Some(_)) => out.push(p(
                    at("new_key"),
                    "is only used by rename".into(),
                    "remove it or use `action: rename`",
                )),
            }
            match (&r.action, &r.pattern) {
                (RuleAction::Extract, None) => out.push(p(
                    at("pattern"),
                    "`extract` needs a pattern".into(),
                    "add a regular expression with named groups, e.g. `pattern: '^/api/(?P<api_version>v\\d+)/'`",
                )),
                (RuleAction::Extract, Some(pat)) => match regex::Regex::new(pat) {
                    Err(e) => out.push(p(
                        at("pattern"),
                        format!("does not compile: {e}"),
                        "fix the regular expression (Rust `regex` syntax; in YAML prefer single quotes so `\\` stays a backslash)",
                    )),
                    Ok(re) if re.capture_names().flatten().next().is_none() => out.push(p(
                        at("pattern"),
                        "has no named capture group, so it would extract nothing".into(),
                        "name the groups to keep, e.g. `(?P<api_version>v\\d+)`",
                    )),
                    Ok(_) => {}
                },
                (_, None) => {}
                (_, Some(_)) => out.push(p(
                    at("pattern"),
                    "is only used by extract".into(),
                    "remove it or use `action: extract`",
                )),
            }
            if r.target == RuleTarget::Resource && !r.names.is_empty() {
                out.push(p(
                    at("names"),
                    "name globs do not apply to `target: resource` (a resource holds many metrics or spans)".into(),
                    "remove `names`, or use `target: attributes`",
                ));
            }
            for (j, g) in r.services.iter().enumerate() {
                if g.is_empty() {
                    out.push(p(
                        format!("rules[{i}].services[{j}]"),
                        "empty glob".into(),
                        "e.g. `checkout-*`",
                    ));
                }
            }
            for (j, g) in r.names.iter().enumerate() {
                if g.is_empty() {
                    out.push(p(
                        format!("rules[{i}].names[{j}]"),
                        "empty glob".into(),
                        "e.g. `http.server.*`",
                    ));
                }
            }
        }
        if let Some(c) = &self.catalog {
            if c.effective_format().is_none() {
                out.push(p(
                    "catalog.format".into(),
                    format!("cannot tell the format of `{}` from its extension", c.path),
                    "set `format: yaml` or `format: csv`, or name the file `.yaml` / `.csv`",
                ));
            }
            if let Err(e) = std::fs::metadata(&c.path) {
                out.push(p(
                    "catalog.path".into(),
                    format!("cannot read `{}`: {e}", c.path),
                    "give the path of a readable YAML or CSV catalog file",
                ));
            }
            if c.reload_interval.0 < Duration::from_millis(100) {
                out.push(p(
                    "catalog.reload_interval".into(),
                    format!("{} is too short", c.reload_interval),
                    "use at least `100ms`; e.g. `10s`",
                ));
            }
        }
        out
    }
}

impl RemoteWriteConfig {
    /// Checks `exporters.remote_write`; every problem with its key path and a hint.
    fn validate(&self) -> Vec<Problem> {
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
        out
    }
}

/// An exporter endpoint must be an `http://` or `https://` URL with a host.
fn endpoint_problem(path: &str, endpoint: &str, hint: &str) -> Option<Problem> {
    let ok = endpoint
        .parse::<http::Uri>()
        .ok()
        .filter(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some());
    ok.is_none().then(|| Problem {
        path: path.into(),
        message: format!("`{endpoint}` is not an http:// or https:// URL with a host"),
        hint: hint.into(),
    })
}

/// An exporter's first retry delay must not exceed its longest one.
fn backoff_problem(prefix: &str, initial: DurationStr, max: DurationStr) -> Option<Problem> {
    (initial.0 > max.0).then(|| Problem {
        path: format!("{prefix}.retry_initial_backoff"),
        message: "is longer than retry_max_backoff".into(),
        hint: "e.g. initial `100ms`, max `5s`".into(),
    })
}

/// Every configured header must be a valid HTTP header name and value.
fn header_problems(prefix: &str, headers: &std::collections::BTreeMap<String, String>) -> Vec<Problem> {
    let mut out = Vec::new();
    for (k, v) in headers {
        let problem = if http::HeaderName::from_bytes(k.as_bytes()).is_err() {
            (
                "is not a valid HTTP header name",
                "use letters, digits and `-`, e.g. `X-Scope-OrgID`",
            )
        } else if http::HeaderValue::from_str(v).is_err() {
            (
                "is not a valid HTTP header value",
                "use visible ASCII without line breaks",
            )
        } else {
            continue;
        };
        out.push(Problem {
            path: format!("{prefix}.headers.{k}"),
            message: problem.0.into(),
            hint: problem.1.into(),
        });
    }
    out
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
    fn both_exporters_share_endpoint_backoff_and_header_checks() {
        let p = problems(
            "exporters:\n  traces:\n    otlp:\n      endpoint: tempo:4317\n      headers: {\"bad key\": x}\n      retry_initial_backoff: 10s\n      retry_max_backoff: 1s\n  remote_write:\n    endpoint: ftp://x\n    headers: {\"bad key\": x}\n    retry_initial_backoff: 10s\n    retry_max_backoff: 1s\n",
        );
        let paths: Vec<_> = p.iter().map(|p| p.path.as_str()).collect();
        for prefix in ["exporters.traces.otlp", "exporters.remote_write"] {
            for key in ["endpoint", "headers.bad key", "retry_initial_backoff"] {
                assert!(
                    paths.contains(&format!("{prefix}.{key}").as_str()),
                    "{prefix}.{key} missing: {paths:?}"
                );
            }
        }
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

    #[test]
    fn enrich_keys_parse_and_every_problem_is_reported() {
        let c = parse(
            "processors:\n  enrich:\n    resource_attributes: [{key: env, value: prod, action: upsert}]\n    rules:\n      - {action: extract, key: http.target, pattern: '^/api/(?P<v>v\\d+)', services: ['checkout-*'], names: ['http.*'], signals: [traces]}\n      - {action: hash, key: user.id, target: resource}\n",
        )
        .unwrap();
        let e = &c.processors.enrich;
        assert_eq!(e.resource_attributes[0].action, StaticAction::Upsert);
        assert_eq!(e.rules[0].action, RuleAction::Extract);
        assert_eq!(e.rules[0].signals, vec![SignalName::Traces]);
        assert_eq!(e.rules[1].target, RuleTarget::Resource);
        assert_eq!(
            Config::default().processors.enrich,
            EnrichConfig::default(),
            "off by default"
        );

        let p = problems(
            "processors:\n  enrich:\n    rules:\n      - {action: extract, key: a, pattern: '(?P<x>'}\n      - {action: rename, key: a}\n      - {action: extract, key: a}\n      - {action: upsert, key: a}\n      - {action: delete, key: a, target: resource, names: [x]}\n    catalog: {path: /nonexistent/catalog.txt}\n",
        );
        let paths: Vec<_> = p.iter().map(|p| p.path.as_str()).collect();
        for want in [
            "processors.enrich.rules[0].pattern",
            "processors.enrich.rules[1].new_key",
            "processors.enrich.rules[2].pattern",
            "processors.enrich.rules[3].value",
            "processors.enrich.rules[4].names",
            "processors.enrich.catalog.path",
            "processors.enrich.catalog.format",
        ] {
            assert!(paths.contains(&want), "{want} missing: {paths:?}");
        }
        let re = p
            .iter()
            .find(|p| p.path == "processors.enrich.rules[0].pattern")
            .unwrap();
        assert!(re.message.contains("does not compile"), "{re}");
        assert!(p.iter().all(|p| !p.hint.is_empty()), "{p:?}");
        let p = problems("processors:\n  enrich:\n    rules: [{action: delete, key: a, colour: red}]\n");
        assert_eq!(p[0].path, "processors.enrich.rules[0].colour");
    }

    #[test]
    fn cardinality_keys_parse_and_every_contradiction_is_reported() {
        let c = parse(
            "processors:\n  cardinality:\n    max_series: 1000\n    max_series_per_metric: 100\n    deny_labels: [user_id]\n    normalize:\n      - {labels: [http_route], kind: number}\n      - {labels: [path], kind: regex, pattern: '^/o/[^/]+', replacement: '/o/{id}', metrics: ['http_*']}\n    metrics:\n      - {match: 'http_*', max_series: 500, max_label_values: 50}\n",
        )
        .unwrap();
        let card = &c.processors.cardinality;
        assert_eq!((card.max_series, card.max_series_per_metric), (1000, 100));
        assert_eq!(card.normalize[1].kind, NormalizeKind::Regex);
        assert_eq!(card.metrics[0].max_series, Some(500));

        let p = problems(
            "prometheus:\n  max_series: 100\nprocessors:\n  cardinality:\n    max_series: 200\n    max_series_per_metric: 300\n    max_stream_states: 0\n    allow_labels: [a, http.route]\n    deny_labels: [a]\n    normalize:\n      - {labels: [], kind: uuid, pattern: x}\n      - {labels: [p], kind: regex, pattern: '(unclosed'}\n      - {labels: [p], kind: number, replacement: ''}\n    metrics:\n      - {match: 'http_*', max_series: 150}\n      - {match: 'x'}\n",
        );
        let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
        for want in [
            "processors.cardinality.max_series",
            "processors.cardinality.max_series_per_metric",
            "processors.cardinality.max_stream_states",
            "processors.cardinality.allow_labels[1]",
            "processors.cardinality.deny_labels[0]",
            "processors.cardinality.normalize[0].labels",
            "processors.cardinality.normalize[0].pattern",
            "processors.cardinality.normalize[1].pattern",
            "processors.cardinality.normalize[1].replacement",
            "processors.cardinality.normalize[2].replacement",
            "processors.cardinality.metrics[0].max_series",
            "processors.cardinality.metrics[1]",
        ] {
            assert!(paths.contains(&want), "{want} missing from {paths:?}");
        }
        let per_metric = p
            .iter()
            .find(|p| p.path == "processors.cardinality.metrics[0].max_series")
            .unwrap();
        assert!(
            per_metric.message.contains("above the global series limit (100)"),
            "{per_metric}"
        );
        let label = p
            .iter()
            .find(|p| p.path == "processors.cardinality.allow_labels[1]")
            .unwrap();
        assert!(label.hint.contains("`http_route`"), "{label}");
        assert!(p.iter().all(|p| !p.hint.is_empty()), "{p:?}");
    }

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!("4MiB".parse::<ByteSize>().unwrap().0, 4 << 20);
        assert_eq!("1000".parse::<ByteSize>().unwrap().0, 1000);
        assert!("4 parsecs".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize(4 << 20).to_string(), "4MiB");
    }
}
