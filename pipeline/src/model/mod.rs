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
