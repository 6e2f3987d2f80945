//! The errors of the two operation families: setting up ([`InitError`]) and flushing or shutting
//! down ([`ShutdownError`]).

use std::fmt;

/// Why [`crate::Builder::try_init`] (or [`crate::Builder::build`]) could not set up
/// instrumentation. Nothing has been installed when this is returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    /// An environment variable holds a value that cannot be used.
    #[error("invalid {name}={value:?}: {hint}")]
    InvalidEnv {
        /// The variable, e.g. `OTEL_TRACES_SAMPLER_ARG`.
        name: &'static str,
        /// Its value (`<redacted>` for the `*_HEADERS` variables, whose values are secrets).
        value: String,
        /// What would be valid.
        hint: String,
    },
    /// A value set in code cannot be used.
    #[error("invalid {setting}: {hint}")]
    InvalidSetting {
        /// The builder setting, e.g. `endpoint`.
        setting: &'static str,
        /// What is wrong and what would be valid.
        hint: String,
    },
    /// The log filter (`RUST_LOG` or [`crate::Builder::with_env_filter`]) does not parse.
    #[error("invalid log filter {directives:?} (from {source_name}): {source}")]
    Filter {
        /// The directives that failed.
        directives: String,
        /// Where they came from: `RUST_LOG` or `code`.
        source_name: &'static str,
        /// The parser's message.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// The OTLP exporter could not be built.
    #[error("cannot build the OTLP {signal} exporter: {source}")]
    Exporter {
        /// `traces` or `metrics`.
        signal: &'static str,
        /// The exporter's error.
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// The Prometheus listener (`OTEL_METRICS_EXPORTER=prometheus`) could not be opened.
    #[error("cannot open the Prometheus listener on {address}: {reason}")]
    PrometheusListener {
        /// The address, from the builder or `OTEL_EXPORTER_PROMETHEUS_HOST`/`_PORT`.
        address: String,
        /// Why (address in use, not resolvable, …).
        reason: String,
    },
    /// The background runtime that drives the gRPC exporters could not be started.
    #[error("cannot start the exporter runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// A global `tracing` subscriber was already installed (`try_init` called twice, or another
    /// crate installed one).
    #[error("a global tracing subscriber is already set: {0}")]
    SubscriberAlreadySet(#[source] tracing::subscriber::SetGlobalDefaultError),
}

impl InitError {
    pub(crate) fn invalid_env(name: &'static str, value: &str, hint: impl Into<String>) -> Self {
        InitError::InvalidEnv {
            name,
            value: value.to_owned(),
            hint: hint.into(),
        }
    }
}

/// Which pipeline an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Signal {
    /// The tracer provider (span processor and exporter).
    Traces,
    /// The meter provider (periodic reader and exporter).
    Metrics,
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
        })
    }
}

/// Errors from [`crate::Guard::force_flush`] or [`crate::Guard::shutdown`]: every provider is
/// always attempted (tracer first, then meter) and each failure is collected here.
#[derive(Debug, thiserror::Error)]
#[error("{}", display_errors(.errors))]
#[non_exhaustive]
pub struct ShutdownError {
    /// Each failing provider with the SDK's error.
    pub errors: Vec<(Signal, opentelemetry_sdk::error::OTelSdkError)>,
}

fn display_errors(errors: &[(Signal, opentelemetry_sdk::error::OTelSdkError)]) -> String {
    errors
        .iter()
        .map(|(signal, err)| format!("{signal}: {err}"))
        .collect::<Vec<_>>()
        .join("; ")
}
