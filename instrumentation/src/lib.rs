//! One-call OpenTelemetry instrumentation for Rust services that send to Spindle.
//!
//! ```no_run
//! # async fn run() -> Result<(), spindle_instrument::InitError> {
//! // In `main`, before building the router:
//! let _guard = spindle_instrument::builder!().try_init()?;
//! let app: axum::Router = axum::Router::new()
//!     .route("/users/{id}", axum::routing::get(|| async { "ok" }))
//!     .layer(spindle_instrument::HttpLayer::new());
//! # Ok(()) }
//! ```
//!
//! [`try_init`] (or [`builder!`] / [`Builder`]) sets up, in one call:
//! - a `tracing` subscriber with an env filter (`RUST_LOG`) and a fmt layer on stderr;
//! - `tracing-opentelemetry`, so every `tracing` span becomes an OpenTelemetry span, sampled by a
//!   consistent probability sampler that records its threshold as `ot=th:` in the `tracestate`
//!   ([`sampler`]);
//! - metrics from `tracing` events (`monotonic_counter.*`, `counter.*`, `histogram.*`, `gauge.*`
//!   fields) and an OpenTelemetry meter provider behind [`meter()`];
//! - OTLP export of spans and metrics to Spindle (gRPC by default, `http/protobuf` optional) from
//!   background threads with bounded queues, so the service never waits for Spindle;
//! - a resource with `service.name`, `service.version`, `service.instance.id` and
//!   `OTEL_RESOURCE_ATTRIBUTES`.
//!
//! - with `OTEL_METRICS_EXPORTER=prometheus`, a Prometheus scrape endpoint instead of (or, with
//!   `otlp,prometheus`, besides) the OTLP metric export ([`prometheus`], [`Guard::metrics_router`]);
//! - process and Tokio runtime metrics read at collection time ([`process`]).
//!
//! It returns a [`Guard`] that flushes and shuts everything down when dropped. [`HttpLayer`] adds
//! server spans and the HTTP server metrics to an axum router; [`inject_context`] carries the
//! current trace into outgoing requests.
//!
//! Configuration precedence: code, then the signal-specific environment variable, then the
//! generic environment variable, then the `DEFAULT_*` constant. The variables:
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | [`OTEL_SDK_DISABLED`] | `true`: logs only, no spans or metrics are exported | `false` |
//! | [`OTEL_SERVICE_NAME`] | `service.name` | the package name with [`builder!`], else `unknown_service:<executable>` |
//! | [`OTEL_RESOURCE_ATTRIBUTES`] | `k=v,k2=v2` (values percent-encoded) added to the resource | |
//! | [`OTEL_EXPORTER_OTLP_ENDPOINT`] | base URL of Spindle's OTLP receiver | [`DEFAULT_GRPC_ENDPOINT`] / [`DEFAULT_HTTP_ENDPOINT`] |
//! | [`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`], [`OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`] | per-signal URL, used as is | |
//! | [`OTEL_EXPORTER_OTLP_PROTOCOL`] (and `_TRACES_`/`_METRICS_` variants) | `grpc` or `http/protobuf` | `grpc` |
//! | [`OTEL_EXPORTER_OTLP_HEADERS`] (and `_TRACES_`/`_METRICS_` variants) | request headers, `authorization=Bearer%20<token>`; values never logged | |
//! | [`OTEL_EXPORTER_OTLP_CERTIFICATE`] (and `_TRACES_`/`_METRICS_` variants) | PEM CA trusted for an `https://` endpoint | the system's roots |
//! | [`OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`], [`OTEL_EXPORTER_OTLP_CLIENT_KEY`] (and variants) | PEM client certificate and key for mTLS | |
//! | [`OTEL_EXPORTER_OTLP_COMPRESSION`] (and `_TRACES_`/`_METRICS_` variants) | `gzip` or `none`: how export request bodies are compressed | `gzip` (the specification's default is `none`) |
//! | [`OTEL_TRACES_SAMPLER`], [`OTEL_TRACES_SAMPLER_ARG`] | sampler name and ratio | `parentbased_always_on` |
//! | [`OTEL_METRIC_EXPORT_INTERVAL`] | milliseconds between metric exports | 60000 |
//! | [`OTEL_METRICS_EXEMPLAR_FILTER`] | `always_on`, `always_off` or `trace_based`: which measurements of counters and histograms carry exemplars ([`exemplars`]) | `trace_based` |
//! | [`OTEL_METRICS_EXPORTER`] | `otlp`, `prometheus`, `none`, or a list such as `otlp,prometheus` | `otlp` |
//! | [`OTEL_TRACES_EXPORTER`] | `otlp` or `none` | `otlp` |
//! | [`OTEL_EXPORTER_PROMETHEUS_HOST`], [`OTEL_EXPORTER_PROMETHEUS_PORT`] | where `prometheus` serves `/metrics` | `localhost`, `9464` |
//! | [`RUST_LOG`] | log filter directives (logs only; spans: [`Builder::with_traces_filter`]) | `info` |
//!
//! A signal's own variable replaces the general one as a whole (`OTEL_EXPORTER_OTLP_TRACES_HEADERS`
//! set means `OTEL_EXPORTER_OTLP_HEADERS` is not read for spans). The TLS variables apply to
//! `https://` endpoints only; their files are read and checked when instrumentation is built.
//!
//! A value that cannot be used is an [`InitError`] naming the variable, never a panic (a
//! `*_HEADERS` value is shown as `<redacted>`).

#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

mod builder;
mod client;
mod error;
pub mod exemplars;
pub mod http;
mod otlp;
pub mod process;
pub mod prometheus;
mod resource;
pub mod sampler;
mod spans;
mod throttle;
mod transport;

use opentelemetry::InstrumentationScope;
use opentelemetry::metrics::Meter;

pub use builder::{
    Builder, DEFAULT_EXPORT_ERROR_LOG_INTERVAL, DEFAULT_GRPC_ENDPOINT, DEFAULT_HTTP_ENDPOINT, DEFAULT_LOG_FILTER,
    DEFAULT_METRIC_EXPORT_INTERVAL, DEFAULT_METRICS_EXPORTERS, DEFAULT_PROTOCOL, DEFAULT_SAMPLER,
    DEFAULT_TRACES_EXPORTER, DEFAULT_TRACES_FILTER, Guard, Instrumentation, MetricsExporter, OTEL_TARGETS_EXCLUDED,
    Protocol, TracesExporter,
};
pub use error::{InitError, ShutdownError, Signal};
pub use exemplars::{DEFAULT_EXEMPLAR_FILTER, ExemplarFilter, ExemplarMeterProvider, OTEL_METRICS_EXEMPLAR_FILTER};
pub use http::{HttpLayer, HttpService, UNMATCHED_ROUTE, inject_context};
pub use otlp::OtlpMetricsCapture;
pub use prometheus::{
    DEFAULT_PROMETHEUS_HOST, DEFAULT_PROMETHEUS_PORT, OTEL_EXPORTER_PROMETHEUS_HOST, OTEL_EXPORTER_PROMETHEUS_PORT,
    PrometheusMetrics,
};
pub use sampler::{DEFAULT_THRESHOLD_PRECISION, SamplerConfig};

/// `true` turns the SDK off: logs still go to stderr, nothing is exported.
pub const OTEL_SDK_DISABLED: &str = "OTEL_SDK_DISABLED";
/// The `service.name` resource attribute; overrides `service.name` in [`OTEL_RESOURCE_ATTRIBUTES`].
pub const OTEL_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
/// Extra resource attributes, `key=value` pairs separated by commas, values percent-encoded.
pub const OTEL_RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
/// Base endpoint for both signals; for `http/protobuf`, `/v1/traces` and `/v1/metrics` are appended.
pub const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// Endpoint for spans only, used as is.
pub const OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
/// Endpoint for metrics only, used as is.
pub const OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT";
/// `grpc` or `http/protobuf`, for both signals.
pub const OTEL_EXPORTER_OTLP_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
/// Protocol for spans only.
pub const OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
/// Protocol for metrics only.
pub const OTEL_EXPORTER_OTLP_METRICS_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL";
/// Request headers for both signals: `key=value` pairs separated by commas, values
/// percent-encoded (`authorization=Bearer%20<token>`). Values are secrets: never logged.
pub const OTEL_EXPORTER_OTLP_HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";
/// Request headers for spans only; replaces [`OTEL_EXPORTER_OTLP_HEADERS`] as a whole.
pub const OTEL_EXPORTER_OTLP_TRACES_HEADERS: &str = "OTEL_EXPORTER_OTLP_TRACES_HEADERS";
/// Request headers for metrics only; replaces [`OTEL_EXPORTER_OTLP_HEADERS`] as a whole.
pub const OTEL_EXPORTER_OTLP_METRICS_HEADERS: &str = "OTEL_EXPORTER_OTLP_METRICS_HEADERS";
/// Path of the PEM CA certificate(s) trusted for an `https://` endpoint, instead of the system's
/// roots; both signals.
pub const OTEL_EXPORTER_OTLP_CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_CERTIFICATE";
/// [`OTEL_EXPORTER_OTLP_CERTIFICATE`] for spans only.
pub const OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE";
/// [`OTEL_EXPORTER_OTLP_CERTIFICATE`] for metrics only.
pub const OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE";
/// Path of the PEM client certificate presented to an `https://` endpoint that asks for one
/// (mTLS), with [`OTEL_EXPORTER_OTLP_CLIENT_KEY`]; both signals.
pub const OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE";
/// [`OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`] for spans only.
pub const OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE";
/// [`OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`] for metrics only.
pub const OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE";
/// Path of the PEM private key (PKCS#8, PKCS#1 or SEC1) of the client certificate; both signals.
pub const OTEL_EXPORTER_OTLP_CLIENT_KEY: &str = "OTEL_EXPORTER_OTLP_CLIENT_KEY";
/// [`OTEL_EXPORTER_OTLP_CLIENT_KEY`] for spans only.
pub const OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY: &str = "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY";
/// [`OTEL_EXPORTER_OTLP_CLIENT_KEY`] for metrics only.
pub const OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY: &str = "OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY";
/// How export request bodies of both signals are compressed: `gzip` (level 1) or `none` (trimmed,
/// any case). Unset, this crate uses `gzip` where the OpenTelemetry specification's default is
/// `none`: a service usually exports across a network, where fewer bytes are worth the CPU. `none`
/// suits a Spindle on the same host: the export thread then does no gzip work at all (about 43% of
/// its instructions per span with gzip), and requests go without `grpc-encoding` /
/// `Content-Encoding` header.
pub const OTEL_EXPORTER_OTLP_COMPRESSION: &str = "OTEL_EXPORTER_OTLP_COMPRESSION";
/// Compression for spans only; replaces [`OTEL_EXPORTER_OTLP_COMPRESSION`] as a whole.
pub const OTEL_EXPORTER_OTLP_TRACES_COMPRESSION: &str = "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION";
/// Compression for metrics only; replaces [`OTEL_EXPORTER_OTLP_COMPRESSION`] as a whole.
pub const OTEL_EXPORTER_OTLP_METRICS_COMPRESSION: &str = "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION";
/// `always_on`, `always_off`, `traceidratio`, `parentbased_always_on`, `parentbased_always_off`,
/// `parentbased_traceidratio`.
pub const OTEL_TRACES_SAMPLER: &str = "OTEL_TRACES_SAMPLER";
/// The ratio for the `*traceidratio` samplers, in `[0, 1]`.
pub const OTEL_TRACES_SAMPLER_ARG: &str = "OTEL_TRACES_SAMPLER_ARG";
/// Where metrics go: `otlp` (default), `prometheus`, `none`, or a comma-separated list such as
/// `otlp,prometheus`.
pub const OTEL_METRICS_EXPORTER: &str = "OTEL_METRICS_EXPORTER";
/// Where spans go: `otlp` (default) or `none`.
pub const OTEL_TRACES_EXPORTER: &str = "OTEL_TRACES_EXPORTER";
/// Milliseconds between two metric exports.
pub const OTEL_METRIC_EXPORT_INTERVAL: &str = "OTEL_METRIC_EXPORT_INTERVAL";
/// Log filter directives (`tracing_subscriber::EnvFilter` syntax) for the fmt layer.
pub const RUST_LOG: &str = "RUST_LOG";

/// Name of the instrumentation scope of [`meter()`], of the HTTP metrics and of the spans.
pub const SCOPE_NAME: &str = "spindle-instrument";

/// Sets up instrumentation from the environment alone (see the crate documentation) and installs
/// it globally. Prefer [`builder!`], which also names the service after the calling package.
///
/// # Errors
/// See [`Builder::try_init`].
pub fn try_init() -> Result<Guard, InitError> {
    Builder::new().try_init()
}

/// [`try_init`] that panics with the error's message; for `main` functions that have nothing
/// better to do with it.
///
/// # Panics
/// When [`try_init`] fails.
pub fn init() -> Guard {
    try_init().unwrap_or_else(|err| panic!("spindle-instrument: {err}"))
}

/// A [`Builder`] whose default `service.name` and `service.version` are the calling package's
/// name and version (`CARGO_PKG_NAME`, `CARGO_PKG_VERSION`); `OTEL_SERVICE_NAME` and
/// `OTEL_RESOURCE_ATTRIBUTES` still override them.
#[macro_export]
macro_rules! builder {
    () => {
        $crate::Builder::for_package(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"))
    };
}

/// A meter of the globally installed meter provider (scope [`SCOPE_NAME`]) for the OpenTelemetry
/// metrics API. Before [`try_init`] (or with `OTEL_SDK_DISABLED=true`) it is a no-op meter, so
/// create instruments after initialising.
pub fn meter() -> Meter {
    opentelemetry::global::meter_with_scope(scope())
}

pub(crate) fn scope() -> InstrumentationScope {
    InstrumentationScope::builder(SCOPE_NAME)
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}
