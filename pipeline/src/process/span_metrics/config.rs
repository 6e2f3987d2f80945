//! `processors.span_metrics`: which spans produce RED metrics, their extra dimensions and the
//! duration histogram's buckets ([`SpanMetricsConfig`]), and the checks on them
//! ([`SpanMetricsConfig::validate`]).

use serde::{Deserialize, Serialize};

use crate::config::types::Problem;

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
    /// The duration histogram's form (Tempo's option): `classic` (`buckets`), `native` (an
    /// exponential histogram: a native histogram in the protobuf exposition and remote write,
    /// classic buckets at its own boundaries in the text formats) or `both` (one histogram with
    /// the classic `buckets` and native buckets: the text formats show the classic ones, the
    /// protobuf exposition carries both in one message, remote write sends the classic series and,
    /// with `send_native_histograms`, the native histogram too). Default `classic`.
    pub histogram: HistogramKind,
    /// `native`, `both`: most buckets the histogram of one request's spans spans per series; past it the
    /// scale goes down (resolution halves) until they fit, as the OTel SDK's exponential
    /// aggregation does. The store merges requests exactly at their common scale, within 320
    /// buckets. Default `160` (the SDK's).
    pub native_max_buckets: usize,
    /// `native`, `both`: the scale a series' histogram starts at before it is downscaled to fit
    /// (`-10` to `20`; Prometheus stores at most 8, finer scales are served downscaled exactly).
    /// Default `20` (the SDK's).
    pub native_max_scale: i32,
}

/// `processors.span_metrics.histogram`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum HistogramKind {
    /// Explicit buckets (`processors.span_metrics.buckets`).
    #[default]
    Classic,
    /// A base-2 exponential histogram (`native_max_buckets`, `native_max_scale`).
    Native,
    /// Both in one histogram: the explicit `buckets` and the exponential histogram, counting the
    /// same spans.
    Both,
}

impl HistogramKind {
    /// Whether the duration carries explicit (classic) buckets.
    pub const fn classic(self) -> bool {
        matches!(self, HistogramKind::Classic | HistogramKind::Both)
    }

    /// Whether the duration carries an exponential (native) histogram.
    pub const fn native(self) -> bool {
        matches!(self, HistogramKind::Native | HistogramKind::Both)
    }
}

impl Default for SpanMetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dimensions: Vec::new(),
            buckets: default_span_buckets(),
            span_kinds: Vec::new(),
            histogram: HistogramKind::Classic,
            native_max_buckets: 160,
            native_max_scale: 20,
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

impl SpanMetricsConfig {
    /// Checks `processors.span_metrics`; every problem with its key path and a hint.
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let sm = self;
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
        if !(1..=crate::model::exp::MAX_BUCKETS).contains(&sm.native_max_buckets) {
            out.push(Problem {
                path: "processors.span_metrics.native_max_buckets".into(),
                message: format!(
                    "{} is outside 1 to {}",
                    sm.native_max_buckets,
                    crate::model::exp::MAX_BUCKETS
                ),
                hint: "e.g. `160` (the OTel SDK's default)".into(),
            });
        }
        if !(-10..=20).contains(&sm.native_max_scale) {
            out.push(Problem {
                path: "processors.span_metrics.native_max_scale".into(),
                message: format!("{} is outside -10 to 20", sm.native_max_scale),
                hint: "e.g. `20` (the OTel SDK's default; served at most at 8, Prometheus's finest)".into(),
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
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_takes_classic_native_and_both() {
        for (yaml, kind, classic, native) in [
            ("histogram: classic", HistogramKind::Classic, true, false),
            ("histogram: native", HistogramKind::Native, false, true),
            ("histogram: both", HistogramKind::Both, true, true),
        ] {
            let c: SpanMetricsConfig = serde_yaml_ng::from_str(yaml).unwrap();
            assert_eq!(c.histogram, kind, "{yaml}");
            assert_eq!((kind.classic(), kind.native()), (classic, native), "{yaml}");
            assert_eq!(c.validate(), vec![], "{yaml}");
        }
        assert!(serde_yaml_ng::from_str::<SpanMetricsConfig>("histogram: exponential").is_err());
    }

    #[test]
    fn validate_returns_its_own_problems_with_full_key_paths() {
        assert_eq!(SpanMetricsConfig::default().validate(), vec![]);
        for buckets in [vec![], vec![1.0, 0.5], vec![0.0, 1.0], vec![1.0, f64::INFINITY]] {
            let c = SpanMetricsConfig {
                buckets: buckets.clone(),
                dimensions: vec![Dimension {
                    name: String::new(),
                    default: None,
                }],
                ..SpanMetricsConfig::default()
            };
            let p = c.validate();
            let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
            assert_eq!(
                paths,
                [
                    "processors.span_metrics.buckets",
                    "processors.span_metrics.dimensions[0].name"
                ],
                "{buckets:?}"
            );
            assert!(p.iter().all(|p| !p.hint.is_empty()), "{p:?}");
        }
    }
}
