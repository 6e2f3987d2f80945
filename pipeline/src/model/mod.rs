//! Shared vocabulary: signals, protocols, and the outcome of handing a batch to the pipeline.
//!
//! Every module may import from here; this module imports from none of them.

pub mod batch;
pub mod codec;
pub mod durable;
pub mod exp;

pub use durable::{Durable, NotDurable, Synced};

/// The kind of telemetry in a request (in config: `metrics`, `traces`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// OTLP metrics.
    Metrics,
    /// OTLP traces.
    Traces,
}

impl Signal {
    /// The label value used in self metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Signal::Metrics => "metrics",
            Signal::Traces => "traces",
        }
    }
}

/// The wire protocol a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP.
    Http,
}

impl Protocol {
    /// The label value used in self metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::Http => "http",
        }
    }
}

/// What became of an accepted batch: how many items were taken and how many were rejected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Items (data points or spans) stored or forwarded.
    pub accepted: u64,
    /// Items rejected as invalid or conflicting; reported to the sender in `partial_success`.
    pub rejected: u64,
    /// A human-readable summary of why items were rejected (empty when none were).
    pub message: String,
    /// When the accepted items went to a durable queue: the write to await before the sender is
    /// told they were accepted (`None`: they are already where they go).
    pub durable: Option<Durable>,
}

impl Outcome {
    /// Records `n` rejected items, keeping the first few distinct reasons in the message.
    pub fn reject(&mut self, n: u64, reason: impl FnOnce() -> String) {
        self.rejected += n;
        if self.message.len() < 512 {
            let r = reason();
            if !self.message.contains(&r) {
                if !self.message.is_empty() {
                    self.message.push_str("; ");
                }
                self.message.push_str(&r);
            }
        }
    }
}

/// The Prometheus metric type a family is exposed as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricKind {
    /// Monotonic sum; samples end in `_total`.
    Counter,
    /// Gauge (OTLP gauges and non-monotonic sums).
    Gauge,
    /// Histogram with `le` buckets (OTLP explicit and exponential histograms).
    Histogram,
    /// Summary with `quantile` series.
    Summary,
    /// Info metric (`target_info`): value 1, labels carry the information.
    Info,
}

impl MetricKind {
    /// The `# TYPE` word in OpenMetrics.
    pub const fn openmetrics_type(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
            MetricKind::Summary => "summary",
            MetricKind::Info => "info",
        }
    }

    /// Sample-name suffixes this kind adds to its family name (used to detect name collisions).
    pub const fn suffixes(self) -> &'static [&'static str] {
        match self {
            MetricKind::Counter => &["_total", "_created"],
            MetricKind::Gauge => &[],
            MetricKind::Histogram => &["_bucket", "_count", "_sum", "_created"],
            MetricKind::Summary => &["_count", "_sum", "_created"],
            MetricKind::Info => &["_info"],
        }
    }
}

/// How a point's value relates to earlier ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Temporality {
    /// The value is the total since the stream started: it replaces the stored value.
    Cumulative,
    /// The value is the change since the last report: it is added to the stored value.
    Delta,
}

/// An exemplar: one measurement that links a series to the trace it was made in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Exemplar {
    /// W3C trace id.
    pub trace_id: [u8; 16],
    /// W3C span id.
    pub span_id: [u8; 8],
    /// The measured value.
    pub value: f64,
    /// When it was measured, nanoseconds since the Unix epoch.
    pub time_unix_nano: u64,
}

/// An exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0.0 (`application/openmetrics-text; version=1.0.0`), with exemplars.
    OpenMetrics,
    /// Prometheus text format 0.0.4 (`text/plain; version=0.0.4`), without exemplars.
    Text,
    /// Prometheus protobuf (`io.prometheus.client.MetricFamily`, delimited), with exemplars and
    /// native histograms.
    Protobuf,
}

/// `prometheus.translation_strategy`: how OTLP metric and label names become Prometheus names,
/// with the values (and meaning) of Prometheus's own OTLP receiver.
///
/// The names a strategy gives are what the store keeps. Names outside the legacy character set
/// (`[a-zA-Z_:][a-zA-Z0-9_:]*`, which only the `NoUTF8…` and `NoTranslation` strategies give) are
/// served as they are only to a scraper that asked for `escaping=allow-utf-8`; every other scrape
/// gets them escaped as it asked ([`Escaping`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum TranslationStrategy {
    /// Characters outside the legacy set → `_` (runs collapsed), unit and type suffixes added
    /// (`_seconds`, `_ratio` on gauges of unit `1`). The default, and Spindle's behaviour before
    /// the key existed.
    #[default]
    UnderscoreEscapingWithSuffixes,
    /// Characters outside the legacy set → `_`, no unit suffix and no `_ratio`.
    UnderscoreEscapingWithoutSuffixes,
    /// Names kept as sent (UTF-8), unit and type suffixes added.
    #[serde(rename = "NoUTF8EscapingWithSuffixes")]
    NoUtf8EscapingWithSuffixes,
    /// Names kept as sent, no suffixes.
    NoTranslation,
}

impl TranslationStrategy {
    /// Whether names are escaped to the legacy character set at translation.
    pub const fn escapes(self) -> bool {
        matches!(
            self,
            TranslationStrategy::UnderscoreEscapingWithSuffixes
                | TranslationStrategy::UnderscoreEscapingWithoutSuffixes
        )
    }

    /// Whether unit suffixes (and `_ratio`) are added to metric names.
    pub const fn suffixes(self) -> bool {
        matches!(
            self,
            TranslationStrategy::UnderscoreEscapingWithSuffixes | TranslationStrategy::NoUtf8EscapingWithSuffixes
        )
    }
}

/// How a scrape wants names outside the legacy character set written: the `escaping=` parameter
/// of its `Accept` header (prometheus.io "UTF-8 metric and label name escaping schemes"). A
/// scraper that names none gets [`Escaping::Underscores`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Escaping {
    /// `allow-utf-8`: names as they are (quoted in the text formats when outside the legacy set).
    AllowUtf8,
    /// `underscores`: every character outside the legacy set → `_`.
    #[default]
    Underscores,
    /// `dots`: `.` → `_dot_`, `_` → `__`, any other character outside the legacy set → `__`.
    Dots,
    /// `values`: a `U__` prefix, `_` → `__`, any other character outside the legacy set →
    /// `_<hex code point>_`.
    Values,
}

impl Escaping {
    /// The scheme named by an `escaping=` parameter value.
    pub fn parse(v: &str) -> Option<Self> {
        match v {
            "allow-utf-8" => Some(Escaping::AllowUtf8),
            "underscores" => Some(Escaping::Underscores),
            "dots" => Some(Escaping::Dots),
            "values" => Some(Escaping::Values),
            _ => None,
        }
    }

    /// The `escaping=` parameter value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Escaping::AllowUtf8 => "allow-utf-8",
            Escaping::Underscores => "underscores",
            Escaping::Dots => "dots",
            Escaping::Values => "values",
        }
    }
}
