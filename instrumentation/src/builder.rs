//! The [`Builder`]: resolves configuration (code, then signal-specific env, then generic env, then
//! `DEFAULT_*`), builds the tracer and meter providers with their OTLP exporters, assembles the
//! `tracing` subscriber, and hands back a [`Guard`] that shuts it all down.
//!
//! What comes in: builder settings and environment variables. What goes out: an
//! [`Instrumentation`] (a `tracing` [`Dispatch`] plus the [`Guard`]) or, through
//! [`Builder::try_init`], the same installed as the process-wide defaults.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{KeyValue, global};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{MeterProviderBuilder, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::resource::TelemetryResourceDetector;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanExporter, TracerProviderBuilder};
use tracing::Dispatch;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{EnvFilter, FilterExt, filter_fn};
use tracing_subscriber::fmt as tfmt;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt;

use crate::client::{self, ClientSettings};
use crate::error::{InitError, ShutdownError, Signal};
use crate::exemplars::{
    DEFAULT_EXEMPLAR_FILTER, ExemplarFilter, ExemplarMeterProvider, ExemplarStore, OTEL_METRICS_EXEMPLAR_FILTER,
};
use crate::otlp::{MetricsTarget, OtlpMetricExporter};
use crate::prometheus::{
    DEFAULT_PROMETHEUS_HOST, DEFAULT_PROMETHEUS_PORT, OTEL_EXPORTER_PROMETHEUS_HOST, OTEL_EXPORTER_PROMETHEUS_PORT,
    PrometheusMetrics,
};
use crate::resource::{parse_resource_attributes, random_instance_id, unknown_service};
use crate::sampler::{DEFAULT_THRESHOLD_PRECISION, MAX_THRESHOLD_PRECISION, SamplerConfig};
use crate::throttle::ExportLogThrottle;
use crate::*;

/// Default OTLP/gRPC endpoint: Spindle's default gRPC receiver.
pub const DEFAULT_GRPC_ENDPOINT: &str = "http://localhost:4317";
/// Default OTLP/HTTP base endpoint: Spindle's default HTTP receiver.
pub const DEFAULT_HTTP_ENDPOINT: &str = "http://localhost:4318";
/// Default export protocol.
pub const DEFAULT_PROTOCOL: Protocol = Protocol::Grpc;
/// Default sampler (`parentbased_always_on`).
pub const DEFAULT_SAMPLER: SamplerConfig = SamplerConfig::ParentBasedAlwaysOn;
/// Default time between metric exports (the OpenTelemetry default, 60 s).
pub const DEFAULT_METRIC_EXPORT_INTERVAL: Duration = Duration::from_secs(60);
/// Default log filter when `RUST_LOG` is unset.
pub const DEFAULT_LOG_FILTER: &str = "info";
/// Default filter selecting which `tracing` spans become OpenTelemetry spans (independent of
/// `RUST_LOG`, so quieter logs do not lose traces).
pub const DEFAULT_TRACES_FILTER: &str = "info";
/// Default minimum time between two log lines from the same OpenTelemetry SDK call site (such
/// as "export failed"): unless set, the metric export interval.
pub const DEFAULT_EXPORT_ERROR_LOG_INTERVAL: Option<Duration> = None;
/// Default metrics exporters when `OTEL_METRICS_EXPORTER` is unset: OTLP only.
pub const DEFAULT_METRICS_EXPORTERS: &[MetricsExporter] = &[MetricsExporter::Otlp];
/// Default traces exporter when `OTEL_TRACES_EXPORTER` is unset.
pub const DEFAULT_TRACES_EXPORTER: TracesExporter = TracesExporter::Otlp;

/// Where metrics go; `OTEL_METRICS_EXPORTER` is a comma-separated list of these, or `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MetricsExporter {
    /// Pushed over OTLP to Spindle (`otlp`), with exemplars.
    Otlp,
    /// Served for Prometheus to scrape (`prometheus`), on
    /// `OTEL_EXPORTER_PROMETHEUS_HOST:OTEL_EXPORTER_PROMETHEUS_PORT` or on the service's router
    /// ([`Guard::metrics_router`]).
    Prometheus,
}

impl MetricsExporter {
    /// Parses an `OTEL_METRICS_EXPORTER` value: `none`, or a comma-separated list of `otlp` and
    /// `prometheus` (duplicates are ignored). `name` is the variable named in the error.
    fn parse_list(name: &'static str, value: &str) -> Result<Vec<MetricsExporter>, InitError> {
        let hint = "expected `otlp`, `prometheus`, a comma-separated list of them (`otlp,prometheus`), or `none`";
        let mut out = Vec::new();
        let items: Vec<&str> = value.split(',').map(str::trim).collect();
        if items == ["none"] {
            return Ok(out);
        }
        for item in items {
            let e = match item {
                "otlp" => MetricsExporter::Otlp,
                "prometheus" => MetricsExporter::Prometheus,
                "none" => {
                    return Err(InitError::invalid_env(
                        name,
                        value,
                        "`none` cannot be combined with exporters",
                    ));
                }
                "" => return Err(InitError::invalid_env(name, value, format!("empty list item; {hint}"))),
                other => {
                    return Err(InitError::invalid_env(
                        name,
                        value,
                        format!("unsupported exporter {other:?}; {hint}"),
                    ));
                }
            };
            if !out.contains(&e) {
                out.push(e);
            }
        }
        Ok(out)
    }
}

/// Where spans go (`OTEL_TRACES_EXPORTER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TracesExporter {
    /// Exported over OTLP (`otlp`).
    Otlp,
    /// Not exported (`none`); spans are still created and sampled, so trace context still
    /// propagates and exemplars still name traces.
    None,
}

impl TracesExporter {
    fn parse(name: &'static str, value: &str) -> Result<TracesExporter, InitError> {
        let items: Vec<&str> = value.split(',').map(str::trim).collect();
        if items == ["none"] {
            return Ok(TracesExporter::None);
        }
        if items.iter().all(|i| *i == "otlp") {
            return Ok(TracesExporter::Otlp);
        }
        Err(InitError::invalid_env(
            name,
            value,
            "expected `otlp` or `none` (no other span exporter is built in)",
        ))
    }
}

/// Targets whose spans never become OpenTelemetry spans: the exporter's own HTTP/gRPC stack and
/// the SDK itself, so that exporting does not produce more spans to export.
pub const OTEL_TARGETS_EXCLUDED: &[&str] = &["hyper", "tonic", "h2", "tower", "reqwest", "opentelemetry"];

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Protocol {
    /// OTLP/gRPC (`grpc`).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (`http/protobuf`).
    HttpProtobuf,
}

impl Protocol {
    fn parse(name: &'static str, value: &str) -> Result<Protocol, InitError> {
        match value.trim() {
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" => Ok(Protocol::HttpProtobuf),
            _ => Err(InitError::invalid_env(
                name,
                value,
                "expected `grpc` or `http/protobuf`",
            )),
        }
    }
}

type EnvLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;
type SpanExporterHook = Box<dyn FnOnce(TracerProviderBuilder) -> TracerProviderBuilder + Send>;
type MetricExporterHook = Box<dyn FnOnce(MeterProviderBuilder, Duration) -> MeterProviderBuilder + Send>;

/// Configures and builds instrumentation; see the crate documentation for the environment
/// variables and their precedence.
pub struct Builder {
    service_name: Option<String>,
    default_service_name: Option<String>,
    service_version: Option<String>,
    default_service_version: Option<String>,
    instance_id: Option<String>,
    attributes: Vec<KeyValue>,
    endpoint: Option<String>,
    traces_endpoint: Option<String>,
    metrics_endpoint: Option<String>,
    protocol: Option<Protocol>,
    sampler: Option<SamplerConfig>,
    threshold_precision: u8,
    metric_export_interval: Option<Duration>,
    log_filter: Option<String>,
    traces_filter: Option<String>,
    export_error_log_interval: Option<Duration>,
    sdk_disabled: Option<bool>,
    fmt_writer: Option<BoxMakeWriter>,
    span_exporter: Option<SpanExporterHook>,
    metric_exporter: Option<MetricExporterHook>,
    metrics_capture: Option<crate::otlp::OtlpMetricsCapture>,
    exemplar_filter: Option<ExemplarFilter>,
    metrics_exporters: Option<Vec<MetricsExporter>>,
    traces_exporter: Option<TracesExporter>,
    prometheus_addr: Option<std::net::SocketAddr>,
    prometheus_listener: bool,
    process_metrics: bool,
    runtime_metrics: bool,
    runtime_handle: Option<tokio::runtime::Handle>,
    env: EnvLookup,
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("service_name", &self.service_name)
            .field("default_service_name", &self.default_service_name)
            .field("service_version", &self.service_version)
            .field("instance_id", &self.instance_id)
            .field("endpoint", &self.endpoint)
            .field("traces_endpoint", &self.traces_endpoint)
            .field("metrics_endpoint", &self.metrics_endpoint)
            .field("protocol", &self.protocol)
            .field("sampler", &self.sampler)
            .field("metric_export_interval", &self.metric_export_interval)
            .field("log_filter", &self.log_filter)
            .field("sdk_disabled", &self.sdk_disabled)
            .field("custom_span_exporter", &self.span_exporter.is_some())
            .field("custom_metric_exporter", &self.metric_exporter.is_some())
            .field("metrics_exporters", &self.metrics_exporters)
            .field("traces_exporter", &self.traces_exporter)
            .field("prometheus_addr", &self.prometheus_addr)
            .field("prometheus_listener", &self.prometheus_listener)
            .field("process_metrics", &self.process_metrics)
            .field("runtime_metrics", &self.runtime_metrics)
            .finish_non_exhaustive()
    }
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl Builder {
    /// A builder that reads the process environment, with every setting at its default.
    pub fn new() -> Self {
        Self {
            service_name: None,
            default_service_name: None,
            service_version: None,
            default_service_version: None,
            instance_id: None,
            attributes: Vec::new(),
            endpoint: None,
            traces_endpoint: None,
            metrics_endpoint: None,
            protocol: None,
            sampler: None,
            threshold_precision: DEFAULT_THRESHOLD_PRECISION,
            metric_export_interval: None,
            log_filter: None,
            traces_filter: None,
            export_error_log_interval: DEFAULT_EXPORT_ERROR_LOG_INTERVAL,
            sdk_disabled: None,
            fmt_writer: None,
            span_exporter: None,
            metric_exporter: None,
            metrics_capture: None,
            exemplar_filter: None,
            metrics_exporters: None,
            traces_exporter: None,
            prometheus_addr: None,
            prometheus_listener: true,
            process_metrics: true,
            runtime_metrics: true,
            runtime_handle: None,
            env: Arc::new(|name: &str| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())),
        }
    }

    /// A builder whose *default* `service.name` and `service.version` are `name` and `version`
    /// (below `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`). [`crate::builder!`] calls this
    /// with the calling package's name and version.
    pub fn for_package(name: &str, version: &str) -> Self {
        let mut b = Self::new();
        b.default_service_name = Some(name.to_owned());
        b.default_service_version = Some(version.to_owned());
        b
    }

    /// Sets `service.name`, overriding `OTEL_SERVICE_NAME`. Default: `OTEL_SERVICE_NAME`, then
    /// `service.name` in `OTEL_RESOURCE_ATTRIBUTES`, then the package name ([`crate::builder!`]),
    /// then `unknown_service:<executable>`.
    pub fn with_service_name(mut self, name: impl Into<String>) -> Self {
        self.service_name = Some(name.into());
        self
    }

    /// Sets `service.version`. Default: `service.version` in `OTEL_RESOURCE_ATTRIBUTES`, then the
    /// package version ([`crate::builder!`]), else absent.
    pub fn with_service_version(mut self, version: impl Into<String>) -> Self {
        self.service_version = Some(version.into());
        self
    }

    /// Sets `service.instance.id`. Default: `service.instance.id` in `OTEL_RESOURCE_ATTRIBUTES`,
    /// else a random UUID per process.
    pub fn with_instance_id(mut self, id: impl Into<String>) -> Self {
        self.instance_id = Some(id.into());
        self
    }

    /// Adds a resource attribute, overriding the same key from `OTEL_RESOURCE_ATTRIBUTES`.
    pub fn with_resource_attribute(mut self, attribute: KeyValue) -> Self {
        self.attributes.push(attribute);
        self
    }

    /// Sets the base endpoint for both signals (for `http/protobuf`, `/v1/traces` and
    /// `/v1/metrics` are appended). Default: `OTEL_EXPORTER_OTLP_*_ENDPOINT`, then
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`, then [`DEFAULT_GRPC_ENDPOINT`] or [`DEFAULT_HTTP_ENDPOINT`].
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// Sets the spans endpoint, used as is. Default: see [`Builder::with_endpoint`].
    pub fn with_traces_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.traces_endpoint = Some(endpoint.into());
        self
    }

    /// Sets the metrics endpoint, used as is. Default: see [`Builder::with_endpoint`].
    pub fn with_metrics_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.metrics_endpoint = Some(endpoint.into());
        self
    }

    /// Sets the protocol of both signals. Default: `OTEL_EXPORTER_OTLP_*_PROTOCOL`, then
    /// `OTEL_EXPORTER_OTLP_PROTOCOL`, then [`DEFAULT_PROTOCOL`] (gRPC).
    pub fn with_protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = Some(protocol);
        self
    }

    /// Sets the sampler. Default: `OTEL_TRACES_SAMPLER`/`OTEL_TRACES_SAMPLER_ARG`, then
    /// [`DEFAULT_SAMPLER`] (`parentbased_always_on`).
    pub fn with_sampler(mut self, sampler: SamplerConfig) -> Self {
        self.sampler = Some(sampler);
        self
    }

    /// Sets how many significant hex digits a sampling threshold keeps (1 to 12). Default:
    /// [`DEFAULT_THRESHOLD_PRECISION`] (4), the specification's recommendation.
    pub fn with_threshold_precision(mut self, digits: u8) -> Self {
        self.threshold_precision = digits;
        self
    }

    /// Sets the time between metric exports. Default: `OTEL_METRIC_EXPORT_INTERVAL`, then
    /// [`DEFAULT_METRIC_EXPORT_INTERVAL`] (60 s).
    pub fn with_metric_export_interval(mut self, interval: Duration) -> Self {
        self.metric_export_interval = Some(interval);
        self
    }

    /// Sets the log filter directives (`EnvFilter` syntax), overriding `RUST_LOG`. Default:
    /// `RUST_LOG`, then [`DEFAULT_LOG_FILTER`] (`info`). It only decides what is logged: spans
    /// are selected by [`Builder::with_traces_filter`], and metrics from events are recorded
    /// whatever the filters.
    pub fn with_env_filter(mut self, directives: impl Into<String>) -> Self {
        self.log_filter = Some(directives.into());
        self
    }

    /// Sets the directives (`EnvFilter` syntax) selecting which `tracing` spans become
    /// OpenTelemetry spans; spans of [`OTEL_TARGETS_EXCLUDED`] never do. Default:
    /// [`DEFAULT_TRACES_FILTER`] (`info`).
    pub fn with_traces_filter(mut self, directives: impl Into<String>) -> Self {
        self.traces_filter = Some(directives.into());
        self
    }

    /// Sets the minimum time between two log lines from one OpenTelemetry SDK call site (export
    /// failures and the like). Default: the metric export interval.
    pub fn with_export_error_log_interval(mut self, interval: Duration) -> Self {
        self.export_error_log_interval = Some(interval);
        self
    }

    /// Turns exporting off (`true`) or on, overriding `OTEL_SDK_DISABLED`. Default:
    /// `OTEL_SDK_DISABLED`, then `false`.
    pub fn with_sdk_disabled(mut self, disabled: bool) -> Self {
        self.sdk_disabled = Some(disabled);
        self
    }

    /// Sends the fmt layer's log lines to `writer` instead of stderr.
    pub fn with_log_writer<W>(mut self, writer: W) -> Self
    where
        W: for<'a> tfmt::MakeWriter<'a> + Send + Sync + 'static,
    {
        self.fmt_writer = Some(BoxMakeWriter::new(writer));
        self
    }

    /// Exports spans through `exporter` (behind the SDK's batch span processor) instead of OTLP;
    /// for tests (`opentelemetry_sdk::trace::InMemorySpanExporter`) or other backends.
    pub fn with_span_exporter<E: SpanExporter + 'static>(mut self, exporter: E) -> Self {
        self.span_exporter = Some(Box::new(move |b: TracerProviderBuilder| {
            b.with_batch_exporter(exporter)
        }));
        self
    }

    /// Exports metrics through `exporter` (behind a periodic reader) instead of OTLP; for tests
    /// (`opentelemetry_sdk::metrics::InMemoryMetricExporter`) or other backends.
    pub fn with_metric_exporter<E: PushMetricExporter>(mut self, exporter: E) -> Self {
        self.metric_exporter = Some(Box::new(move |b: MeterProviderBuilder, interval: Duration| {
            b.with_reader(PeriodicReader::builder(exporter).with_interval(interval).build())
        }));
        self
    }

    /// Sends metrics nowhere: the OTLP requests (with their exemplars) go into `capture`; for
    /// tests. Unlike [`Builder::with_metric_exporter`], whose SDK data types cannot carry
    /// exemplars, this shows exactly what would be sent.
    pub fn with_otlp_metrics_capture(mut self, capture: crate::otlp::OtlpMetricsCapture) -> Self {
        self.metrics_capture = Some(capture);
        self
    }

    /// Sets the exemplar filter, overriding [`OTEL_METRICS_EXEMPLAR_FILTER`]. Default:
    /// [`DEFAULT_EXEMPLAR_FILTER`] (`trace_based`). Exemplars are exported by this crate's OTLP
    /// exporter (not through [`Builder::with_metric_exporter`]).
    pub fn with_exemplar_filter(mut self, filter: ExemplarFilter) -> Self {
        self.exemplar_filter = Some(filter);
        self
    }

    /// Sets where metrics go, overriding `OTEL_METRICS_EXPORTER`; an empty list is `none`.
    /// Default: `OTEL_METRICS_EXPORTER`, then [`DEFAULT_METRICS_EXPORTERS`] (`otlp`).
    pub fn with_metrics_exporters(mut self, exporters: impl IntoIterator<Item = MetricsExporter>) -> Self {
        let mut list = Vec::new();
        for e in exporters {
            if !list.contains(&e) {
                list.push(e);
            }
        }
        self.metrics_exporters = Some(list);
        self
    }

    /// Sets where spans go, overriding `OTEL_TRACES_EXPORTER`. Default: `OTEL_TRACES_EXPORTER`,
    /// then [`DEFAULT_TRACES_EXPORTER`] (`otlp`).
    pub fn with_traces_exporter(mut self, exporter: TracesExporter) -> Self {
        self.traces_exporter = Some(exporter);
        self
    }

    /// Sets the address of the Prometheus listener (with the `prometheus` metrics exporter),
    /// overriding `OTEL_EXPORTER_PROMETHEUS_HOST` and `OTEL_EXPORTER_PROMETHEUS_PORT`; port 0 picks
    /// a free port ([`Guard::prometheus_addr`]). Default: those variables, then
    /// [`DEFAULT_PROMETHEUS_HOST`]:[`DEFAULT_PROMETHEUS_PORT`] (`localhost:9464`).
    pub fn with_prometheus_addr(mut self, addr: std::net::SocketAddr) -> Self {
        self.prometheus_addr = Some(addr);
        self
    }

    /// Whether the `prometheus` metrics exporter opens a listener of its own. `false`: nothing is
    /// bound, and the service mounts [`Guard::metrics_router`] on its own router instead.
    /// Default: `true`.
    pub fn with_prometheus_listener(mut self, listen: bool) -> Self {
        self.prometheus_listener = listen;
        self
    }

    /// Whether the process metrics (`process.cpu.time`, `process.memory.usage`, … — see
    /// [`crate::process`]) are reported. They are read when metrics are collected, never on the
    /// request path. Default: `true`.
    pub fn with_process_metrics(mut self, enabled: bool) -> Self {
        self.process_metrics = enabled;
        self
    }

    /// Whether the Tokio runtime metrics (`tokio.runtime.*` — see [`crate::process`]) are
    /// reported, for the runtime of [`Builder::with_runtime_handle`] or else the runtime that is
    /// current when [`Builder::build`] runs (none outside a runtime). Read when metrics are
    /// collected. Default: `true`.
    pub fn with_runtime_metrics(mut self, enabled: bool) -> Self {
        self.runtime_metrics = enabled;
        self
    }

    /// The Tokio runtime whose metrics are reported. Default: the runtime current when
    /// [`Builder::build`] runs, if any.
    pub fn with_runtime_handle(mut self, handle: tokio::runtime::Handle) -> Self {
        self.runtime_handle = Some(handle);
        self
    }

    /// Reads environment variables through `lookup` instead of the process environment (tests,
    /// or configuration from elsewhere). Empty values count as unset.
    pub fn with_env_lookup(mut self, lookup: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Self {
        self.env = Arc::new(lookup);
        self
    }

    fn env(&self, name: &str) -> Option<String> {
        (self.env)(name).filter(|v| !v.trim().is_empty())
    }

    /// Builds everything without installing anything globally: use the returned
    /// [`Instrumentation::dispatch`] with `tracing::dispatcher::set_default` (tests) or install it
    /// yourself. The [`crate::HttpLayer`] needs the meter passed explicitly in that case
    /// ([`crate::HttpLayer::with_meter`] with [`Guard::meter`]).
    ///
    /// # Errors
    /// [`InitError`] for unusable environment values or settings, an unparsable log filter, or
    /// exporters that cannot be built. Nothing keeps running when this fails.
    pub fn build(mut self) -> Result<Instrumentation, InitError> {
        let log_directives = match (&self.log_filter, self.env(RUST_LOG)) {
            (Some(code), _) => (code.clone(), "code"),
            (None, Some(env)) => (env, RUST_LOG),
            (None, None) => (DEFAULT_LOG_FILTER.to_owned(), "default"),
        };
        let parse_filter = |(directives, source_name): (&str, &'static str)| {
            EnvFilter::builder()
                .parse(directives)
                .map_err(|source| InitError::Filter {
                    directives: directives.to_owned(),
                    source_name,
                    source,
                })
        };
        let fmt_filter = parse_filter((&log_directives.0, log_directives.1))?;
        let traces_filter = match &self.traces_filter {
            Some(d) => parse_filter((d, "code"))?,
            None => parse_filter((DEFAULT_TRACES_FILTER, "default"))?,
        };
        let disabled = match self.sdk_disabled {
            Some(d) => d,
            None => match self.env(OTEL_SDK_DISABLED) {
                None => false,
                Some(v) if v.trim().eq_ignore_ascii_case("true") => true,
                Some(v) if v.trim().eq_ignore_ascii_case("false") => false,
                Some(v) => {
                    return Err(InitError::invalid_env(
                        OTEL_SDK_DISABLED,
                        &v,
                        "expected `true` or `false`",
                    ));
                }
            },
        };
        let interval = self.metric_export_interval()?;
        let exemplar_filter = match self.exemplar_filter {
            Some(f) => f,
            None => match self.env(OTEL_METRICS_EXEMPLAR_FILTER) {
                Some(v) => ExemplarFilter::parse(OTEL_METRICS_EXEMPLAR_FILTER, &v)?,
                None => DEFAULT_EXEMPLAR_FILTER,
            },
        };
        let exemplar_store = Arc::new(ExemplarStore::new(exemplar_filter));
        let throttle = ExportLogThrottle::new(self.export_error_log_interval.unwrap_or(interval));
        let ansi = self.fmt_writer.is_none() && std::io::IsTerminal::is_terminal(&std::io::stderr());
        let writer = self.fmt_writer.take_writer();
        let fmt_layer = tfmt::layer()
            .with_ansi(ansi)
            .with_writer(writer)
            .with_filter(fmt_filter.and(throttle));

        if disabled {
            let dispatch = Dispatch::new(tracing_subscriber::registry().with(fmt_layer));
            return Ok(Instrumentation {
                dispatch,
                guard: Guard::empty(),
            });
        }

        // The service's runtime, before the exporters' runtime is entered below.
        let service_runtime = match self.runtime_handle.take() {
            Some(h) => Some(h),
            None if self.runtime_metrics => tokio::runtime::Handle::try_current().ok(),
            None => None,
        };
        let metrics_exporters = match self.metrics_exporters.take() {
            Some(list) => list,
            None => match self.env(OTEL_METRICS_EXPORTER) {
                Some(v) => MetricsExporter::parse_list(OTEL_METRICS_EXPORTER, &v)?,
                None => DEFAULT_METRICS_EXPORTERS.to_vec(),
            },
        };
        let traces_exporter = match self.traces_exporter {
            Some(t) => t,
            None => match self.env(OTEL_TRACES_EXPORTER) {
                Some(v) => TracesExporter::parse(OTEL_TRACES_EXPORTER, &v)?,
                None => DEFAULT_TRACES_EXPORTER,
            },
        };
        let otlp_metrics = metrics_exporters.contains(&MetricsExporter::Otlp);
        let prometheus_on = metrics_exporters.contains(&MetricsExporter::Prometheus);
        let otlp_traces = traces_exporter == TracesExporter::Otlp || self.span_exporter.is_some();

        let resource = self.resource()?;
        let sampler = match self.sampler {
            Some(s) => s,
            None => match self.env(OTEL_TRACES_SAMPLER) {
                Some(name) => SamplerConfig::parse(&name, self.env(OTEL_TRACES_SAMPLER_ARG).as_deref())?,
                None => DEFAULT_SAMPLER,
            },
        };
        if !(1..=MAX_THRESHOLD_PRECISION).contains(&self.threshold_precision) {
            return Err(InitError::InvalidSetting {
                setting: "threshold_precision",
                hint: format!("{} is outside 1..={MAX_THRESHOLD_PRECISION}", self.threshold_precision),
            });
        }
        let traces_protocol = self.protocol(OTEL_EXPORTER_OTLP_TRACES_PROTOCOL)?;
        let metrics_protocol = self.protocol(OTEL_EXPORTER_OTLP_METRICS_PROTOCOL)?;
        // Endpoints are only resolved (and checked) for the exporters in use.
        let traces_endpoint = if otlp_traces && self.span_exporter.is_none() {
            self.endpoint(
                self.traces_endpoint.as_deref(),
                OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
                traces_protocol,
                "/v1/traces",
            )?
        } else {
            String::new()
        };
        let custom_metrics = self.metric_exporter.is_some() || self.metrics_capture.is_some();
        let metrics_endpoint = if otlp_metrics && !custom_metrics {
            self.endpoint(
                self.metrics_endpoint.as_deref(),
                OTEL_EXPORTER_OTLP_METRICS_ENDPOINT,
                metrics_protocol,
                "/v1/metrics",
            )?
        } else {
            String::new()
        };
        // TLS files and headers, per signal, for the exporters in use.
        let env = |name: &str| self.env(name);
        let is_https = |endpoint: &str| endpoint.starts_with("https://");
        let traces_client = if traces_endpoint.is_empty() {
            ClientSettings::default()
        } else {
            ClientSettings::from_env(&env, &client::TRACES, is_https(&traces_endpoint))?
        };
        let metrics_client = if metrics_endpoint.is_empty() {
            ClientSettings::default()
        } else {
            ClientSettings::from_env(&env, &client::METRICS, is_https(&metrics_endpoint))?
        };
        let span_batch = crate::spans::BatchSettings::from_env(&env);
        let prometheus_listener = if prometheus_on && self.prometheus_listener {
            Some(self.prometheus_listener()?)
        } else {
            None
        };

        // gRPC exporters run on a runtime of their own, so they work whatever runtime (or none)
        // the service uses, and shutting down never waits on the service's own worker threads.
        // The Prometheus listener runs there too, so scrapes never use the service's workers.
        // Spans are sent from there too, by the span export thread (`spans`).
        let needs_runtime = (otlp_traces && self.span_exporter.is_none())
            || (otlp_metrics && !custom_metrics)
            || prometheus_listener.is_some();
        let runtime = if needs_runtime {
            Some(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("spindle-otlp")
                    .enable_all()
                    .build()
                    .map_err(InitError::Runtime)?,
            )
        } else {
            None
        };
        let _entered = runtime.as_ref().map(|rt| rt.enter());

        let mut traces = SdkTracerProvider::builder()
            .with_sampler(sampler.into_sampler(self.threshold_precision))
            .with_resource(resource.clone());
        traces = match self.span_exporter {
            Some(hook) => hook(traces),
            None if traces_exporter == TracesExporter::None => traces,
            None => crate::spans::with_otlp_export(
                traces,
                crate::spans::OtlpTraces {
                    endpoint: &traces_endpoint,
                    protocol: traces_protocol,
                    client: &traces_client,
                    runtime: runtime.as_ref().map(|rt| rt.handle().clone()),
                    resource: &resource,
                    batch: span_batch,
                },
            )?,
        };
        let tracer_provider = traces.build();

        let mut metrics = SdkMeterProvider::builder().with_resource(resource);
        let mut prometheus = None;
        let mut prometheus_addr = None;
        if prometheus_on {
            let fail = |reason: String| InitError::Exporter {
                signal: "metrics",
                source: opentelemetry_otlp::ExporterBuildError::InternalFailure(format!(
                    "Prometheus exporter: {reason}"
                )),
            };
            let (reader, renderer) = match PrometheusMetrics::new() {
                Ok(r) => r,
                Err(reason) => {
                    let _ = tracer_provider.shutdown();
                    return Err(fail(reason));
                }
            };
            if let (Some(listener), Some(rt)) = (prometheus_listener, runtime.as_ref()) {
                prometheus_addr = listener.local_addr().ok();
                if let Err(reason) = crate::prometheus::serve(listener, renderer.clone(), rt.handle()) {
                    let _ = tracer_provider.shutdown();
                    return Err(fail(reason));
                }
            }
            metrics = metrics.with_reader(reader);
            prometheus = Some(renderer);
        }
        metrics = match (self.metric_exporter, self.metrics_capture) {
            _ if !otlp_metrics => metrics,
            (Some(hook), _) => hook(metrics, interval),
            (None, Some(capture)) => {
                let exporter = OtlpMetricExporter::new(Arc::clone(&exemplar_store), MetricsTarget::Capture(capture));
                metrics.with_reader(PeriodicReader::builder(exporter).with_interval(interval).build())
            }
            (None, None) => {
                let transport = match runtime.as_ref().map(|rt| rt.handle().clone()) {
                    Some(handle) => match metrics_protocol {
                        Protocol::Grpc => OtlpMetricExporter::grpc(&metrics_endpoint, &metrics_client, handle),
                        Protocol::HttpProtobuf => OtlpMetricExporter::http(&metrics_endpoint, &metrics_client, handle),
                    },
                    None => Err("no exporter runtime".to_owned()),
                };
                let transport = match transport {
                    Ok(t) => t,
                    Err(reason) => {
                        let _ = tracer_provider.shutdown();
                        return Err(InitError::Exporter {
                            signal: "metrics",
                            source: opentelemetry_otlp::ExporterBuildError::InvalidConfiguration(format!(
                                "{metrics_endpoint}: {reason}"
                            )),
                        });
                    }
                };
                let exporter = OtlpMetricExporter::new(Arc::clone(&exemplar_store), transport);
                metrics.with_reader(PeriodicReader::builder(exporter).with_interval(interval).build())
            }
        };
        let meter_provider = metrics.build();
        drop(_entered);
        if otlp_metrics || prometheus_on {
            use opentelemetry::metrics::MeterProvider as _;
            let meter = meter_provider.meter_with_scope(crate::scope());
            if self.process_metrics {
                crate::process::register_process_metrics(&meter);
            }
            if self.runtime_metrics
                && let Some(handle) = service_runtime
            {
                crate::process::register_runtime_metrics(&meter, handle);
            }
        }

        let tracer = tracer_provider.tracer_with_scope(crate::scope());
        let excluded = filter_fn(|meta| !is_excluded_target(meta.target()));
        let otel_layer = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_filter(traces_filter.and(excluded));
        let exemplar_provider = ExemplarMeterProvider::new(meter_provider.clone(), exemplar_store);
        let metrics_layer = tracing_opentelemetry::MetricsLayer::new(exemplar_provider.clone());
        let subscriber = tracing_subscriber::registry()
            .with(fmt_layer)
            .with(otel_layer)
            .with(metrics_layer);
        Ok(Instrumentation {
            dispatch: Dispatch::new(subscriber),
            guard: Guard {
                tracer_provider: Some(tracer_provider),
                meter_provider: Some(meter_provider),
                exemplar_provider: Some(exemplar_provider),
                prometheus,
                prometheus_addr,
                runtime,
                done: false,
            },
        })
    }

    /// Builds (see [`Builder::build`]) and installs the result process-wide: the `tracing`
    /// subscriber, the OpenTelemetry tracer and meter providers, and the W3C trace-context
    /// propagator. Keep the returned [`Guard`] alive until the end of `main`.
    ///
    /// With gRPC (the default) the exporters run on a small runtime of their own, so this works
    /// from synchronous `main` as well as inside a Tokio runtime.
    ///
    /// # Errors
    /// Everything [`Builder::build`] returns, and [`InitError::SubscriberAlreadySet`] when a
    /// global `tracing` subscriber exists already.
    pub fn try_init(self) -> Result<Guard, InitError> {
        let Instrumentation { dispatch, guard } = self.build()?;
        tracing::dispatcher::set_global_default(dispatch).map_err(InitError::SubscriberAlreadySet)?;
        if let Some(tp) = &guard.tracer_provider {
            global::set_tracer_provider(tp.clone());
        }
        if let Some(mp) = &guard.exemplar_provider {
            global::set_meter_provider(mp.clone());
        }
        global::set_text_map_propagator(TraceContextPropagator::new());
        Ok(guard)
    }

    /// [`Builder::try_init`] that panics with the error's message.
    ///
    /// # Panics
    /// When [`Builder::try_init`] fails.
    pub fn init(self) -> Guard {
        self.try_init()
            .unwrap_or_else(|err| panic!("spindle-instrument: {err}"))
    }

    fn metric_export_interval(&self) -> Result<Duration, InitError> {
        if let Some(i) = self.metric_export_interval {
            return if i.is_zero() {
                Err(InitError::InvalidSetting {
                    setting: "metric_export_interval",
                    hint: "must be greater than zero".into(),
                })
            } else {
                Ok(i)
            };
        }
        match self.env(OTEL_METRIC_EXPORT_INTERVAL) {
            None => Ok(DEFAULT_METRIC_EXPORT_INTERVAL),
            Some(v) => match v.trim().parse::<u64>() {
                Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
                _ => Err(InitError::invalid_env(
                    OTEL_METRIC_EXPORT_INTERVAL,
                    &v,
                    "expected a positive number of milliseconds, such as 15000",
                )),
            },
        }
    }

    /// Resolves and binds the Prometheus listener: code address, else
    /// `OTEL_EXPORTER_PROMETHEUS_HOST`/`_PORT`, else `localhost:9464`.
    fn prometheus_listener(&self) -> Result<std::net::TcpListener, InitError> {
        use std::net::ToSocketAddrs as _;
        let (addrs, shown) = if let Some(addr) = self.prometheus_addr {
            (vec![addr], addr.to_string())
        } else {
            let port = match self.env(OTEL_EXPORTER_PROMETHEUS_PORT) {
                None => DEFAULT_PROMETHEUS_PORT,
                Some(v) => v.trim().parse::<u16>().map_err(|_| {
                    InitError::invalid_env(
                        OTEL_EXPORTER_PROMETHEUS_PORT,
                        &v,
                        "expected a port number from 0 to 65535, such as 9464",
                    )
                })?,
            };
            let (host, from_env) = match self.env(OTEL_EXPORTER_PROMETHEUS_HOST) {
                Some(h) => (h.trim().to_owned(), true),
                None => (DEFAULT_PROMETHEUS_HOST.to_owned(), false),
            };
            let resolved = (host.as_str(), port).to_socket_addrs().map(|a| a.collect::<Vec<_>>());
            match resolved {
                Ok(a) if !a.is_empty() => (a, format!("{host}:{port}")),
                Ok(_) | Err(_) if from_env => {
                    return Err(InitError::invalid_env(
                        OTEL_EXPORTER_PROMETHEUS_HOST,
                        &host,
                        "expected a host name or IP address this machine can listen on, such as localhost or 0.0.0.0",
                    ));
                }
                Ok(_) => {
                    return Err(InitError::PrometheusListener {
                        address: format!("{host}:{port}"),
                        reason: "resolves to no address".into(),
                    });
                }
                Err(e) => {
                    return Err(InitError::PrometheusListener {
                        address: format!("{host}:{port}"),
                        reason: e.to_string(),
                    });
                }
            }
        };
        crate::prometheus::bind(&addrs).map_err(|reason| InitError::PrometheusListener { address: shown, reason })
    }

    fn protocol(&self, signal_var: &'static str) -> Result<Protocol, InitError> {
        if let Some(p) = self.protocol {
            return Ok(p);
        }
        for var in [signal_var, OTEL_EXPORTER_OTLP_PROTOCOL] {
            if let Some(v) = self.env(var) {
                return Protocol::parse(var, &v);
            }
        }
        Ok(DEFAULT_PROTOCOL)
    }

    /// Resolves one signal's endpoint: code per-signal, code generic, env per-signal, env
    /// generic, default. Generic endpoints get `path` appended for HTTP.
    fn endpoint(
        &self,
        code_signal: Option<&str>,
        signal_var: &'static str,
        protocol: Protocol,
        path: &str,
    ) -> Result<String, InitError> {
        let default = match protocol {
            Protocol::Grpc => DEFAULT_GRPC_ENDPOINT,
            Protocol::HttpProtobuf => DEFAULT_HTTP_ENDPOINT,
        };
        let (value, source, generic): (String, Option<&'static str>, bool) = if let Some(e) = code_signal {
            (e.to_owned(), None, false)
        } else if let Some(e) = &self.endpoint {
            (e.clone(), None, true)
        } else if let Some(e) = self.env(signal_var) {
            (e, Some(signal_var), false)
        } else if let Some(e) = self.env(OTEL_EXPORTER_OTLP_ENDPOINT) {
            (e, Some(OTEL_EXPORTER_OTLP_ENDPOINT), true)
        } else {
            (default.to_owned(), None, true)
        };
        let value = value.trim().to_owned();
        let bad = |hint: &str| match source {
            Some(var) => InitError::invalid_env(var, &value, hint),
            None => InitError::InvalidSetting {
                setting: "endpoint",
                hint: format!("{value:?}: {hint}"),
            },
        };
        let uri: ::http::Uri = value
            .parse()
            .map_err(|_| bad("expected a URL such as http://localhost:4317"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(bad(
                "expected a URL with scheme http:// or https://, such as http://localhost:4317",
            ));
        }
        if uri.authority().is_none() {
            return Err(bad("expected a host and port, such as http://localhost:4317"));
        }
        Ok(if generic && protocol == Protocol::HttpProtobuf {
            format!("{}{path}", value.trim_end_matches('/'))
        } else {
            value
        })
    }

    fn resource(&self) -> Result<Resource, InitError> {
        let env_attrs = match self.env(OTEL_RESOURCE_ATTRIBUTES) {
            Some(text) => parse_resource_attributes(&text)?,
            None => Vec::new(),
        };
        let from_env = |key: &str| env_attrs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        let service_name = self
            .service_name
            .clone()
            .or_else(|| self.env(OTEL_SERVICE_NAME))
            .or_else(|| from_env("service.name"))
            .or_else(|| self.default_service_name.clone())
            .unwrap_or_else(unknown_service);
        let service_version = self
            .service_version
            .clone()
            .or_else(|| from_env("service.version"))
            .or_else(|| self.default_service_version.clone());
        let instance_id = self
            .instance_id
            .clone()
            .or_else(|| from_env("service.instance.id"))
            .unwrap_or_else(random_instance_id);

        let mut attrs: Vec<KeyValue> = env_attrs
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "service.name" | "service.version" | "service.instance.id"))
            .filter(|(k, _)| !self.attributes.iter().any(|a| a.key.as_str() == k))
            .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
            .collect();
        attrs.extend(self.attributes.iter().cloned());
        attrs.push(KeyValue::new("service.name", service_name));
        if let Some(v) = service_version {
            attrs.push(KeyValue::new("service.version", v));
        }
        attrs.push(KeyValue::new("service.instance.id", instance_id));
        Ok(Resource::builder_empty()
            .with_detector(Box::new(TelemetryResourceDetector))
            .with_attributes(attrs)
            .build())
    }
}

/// Whether `target` is one of [`OTEL_TARGETS_EXCLUDED`] or one of its modules or sibling crates
/// (`hyper::proto`, `hyper_util`, `tower_http`, `opentelemetry-otlp`), but not an unrelated crate
/// that merely starts with the same letters (`h2o`).
fn is_excluded_target(target: &str) -> bool {
    OTEL_TARGETS_EXCLUDED.iter().any(|name| {
        target.strip_prefix(name).is_some_and(|rest| {
            rest.is_empty() || rest.starts_with("::") || rest.starts_with('_') || rest.starts_with('-')
        })
    })
}

trait TakeWriter {
    fn take_writer(&mut self) -> BoxMakeWriter;
}

impl TakeWriter for Option<BoxMakeWriter> {
    fn take_writer(&mut self) -> BoxMakeWriter {
        self.take().unwrap_or_else(|| BoxMakeWriter::new(std::io::stderr))
    }
}

/// What [`Builder::build`] returns: the assembled subscriber and the guard of the providers.
#[derive(Debug)]
pub struct Instrumentation {
    /// The `tracing` subscriber (fmt, OpenTelemetry spans, metrics from events).
    pub dispatch: Dispatch,
    /// Owns the providers; flushes and shuts them down when dropped.
    pub guard: Guard,
}

/// Owns the tracer and meter providers (and the exporters' runtime). Dropping it flushes what is
/// buffered and shuts down, tracer first, then meter; [`Guard::shutdown`] does the same and
/// reports the errors.
pub struct Guard {
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: Option<SdkMeterProvider>,
    exemplar_provider: Option<ExemplarMeterProvider>,
    prometheus: Option<PrometheusMetrics>,
    prometheus_addr: Option<std::net::SocketAddr>,
    runtime: Option<tokio::runtime::Runtime>,
    done: bool,
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("enabled", &self.tracer_provider.is_some())
            .field("exporter_runtime", &self.runtime.is_some())
            .field("prometheus", &self.prometheus.is_some())
            .field("prometheus_addr", &self.prometheus_addr)
            .field("shut_down", &self.done)
            .finish()
    }
}

impl Guard {
    fn empty() -> Self {
        Self {
            tracer_provider: None,
            meter_provider: None,
            exemplar_provider: None,
            prometheus: None,
            prometheus_addr: None,
            runtime: None,
            done: false,
        }
    }

    /// The tracer provider (`None` when the SDK is disabled).
    pub fn tracer_provider(&self) -> Option<&SdkTracerProvider> {
        self.tracer_provider.as_ref()
    }

    /// The Prometheus renderer (`None` unless `prometheus` is among the metrics exporters).
    pub fn prometheus(&self) -> Option<&PrometheusMetrics> {
        self.prometheus.as_ref()
    }

    /// A router answering `GET /metrics` for Prometheus, to merge into the service's own router
    /// (`None` unless `prometheus` is among the metrics exporters); see
    /// [`Builder::with_prometheus_listener`].
    pub fn metrics_router(&self) -> Option<axum::Router> {
        self.prometheus.as_ref().map(PrometheusMetrics::router)
    }

    /// The address the Prometheus listener is bound to (`None` without one).
    pub fn prometheus_addr(&self) -> Option<std::net::SocketAddr> {
        self.prometheus_addr
    }

    /// The meter provider (`None` when the SDK is disabled).
    pub fn meter_provider(&self) -> Option<&SdkMeterProvider> {
        self.meter_provider.as_ref()
    }

    /// The meter provider whose counters and histograms record exemplars (`None` when the SDK
    /// is disabled); installed globally by [`Builder::try_init`].
    pub fn exemplar_meter_provider(&self) -> Option<&ExemplarMeterProvider> {
        self.exemplar_provider.as_ref()
    }

    /// A meter of this guard's provider (scope [`crate::SCOPE_NAME`]) whose counters and
    /// histograms record exemplars; a no-op meter when the SDK is disabled. [`crate::meter()`] is
    /// the same after [`Builder::try_init`].
    pub fn meter(&self) -> opentelemetry::metrics::Meter {
        use opentelemetry::metrics::MeterProvider as _;
        match &self.exemplar_provider {
            Some(mp) => mp.meter_with_scope(crate::scope()),
            None => opentelemetry::metrics::noop::NoopMeterProvider::new().meter_with_scope(crate::scope()),
        }
    }

    /// Exports everything buffered now (spans, then metrics), waiting for the exporters.
    ///
    /// # Errors
    /// [`ShutdownError`] with each provider whose flush failed (e.g. Spindle unreachable).
    pub fn force_flush(&self) -> Result<(), ShutdownError> {
        let mut errors = Vec::new();
        if let Some(tp) = &self.tracer_provider
            && let Err(e) = tp.force_flush()
        {
            errors.push((Signal::Traces, e));
        }
        if let Some(mp) = &self.meter_provider
            && let Err(e) = mp.force_flush()
        {
            errors.push((Signal::Metrics, e));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ShutdownError { errors })
        }
    }

    /// Flushes and shuts down the tracer provider, then the meter provider, then the exporters'
    /// runtime.
    ///
    /// # Errors
    /// [`ShutdownError`] with each provider whose shutdown failed; both are always attempted.
    pub fn shutdown(mut self) -> Result<(), ShutdownError> {
        self.shutdown_inner()
    }

    fn shutdown_inner(&mut self) -> Result<(), ShutdownError> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        let mut errors = Vec::new();
        if let Some(tp) = &self.tracer_provider
            && let Err(e) = tp.shutdown()
        {
            errors.push((Signal::Traces, e));
        }
        if let Some(mp) = &self.meter_provider
            && let Err(e) = mp.shutdown()
        {
            errors.push((Signal::Metrics, e));
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ShutdownError { errors })
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Err(err) = self.shutdown_inner() {
            tracing::warn!(target: "spindle_instrument", "telemetry shutdown: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excluded_targets_match_crates_not_prefixes() {
        for t in [
            "hyper",
            "hyper::proto::h1",
            "hyper_util::client",
            "tonic::transport",
            "h2::codec",
            "tower_http::trace",
            "opentelemetry-otlp",
            "opentelemetry_sdk",
            "reqwest::connect",
        ] {
            assert!(is_excluded_target(t), "{t}");
        }
        for t in ["h2o_service", "towering::x", "my_app::hyper", "demo_service"] {
            assert!(!is_excluded_target(t), "{t}");
        }
    }
}
