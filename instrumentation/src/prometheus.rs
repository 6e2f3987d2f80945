//! The Prometheus pull path (`OTEL_METRICS_EXPORTER=prometheus`): the `opentelemetry-prometheus`
//! exporter is a reader of the meter provider, and [`PrometheusMetrics`] renders what it collects
//! as Prometheus text format 0.0.4, either on a listener of its own
//! (`http://OTEL_EXPORTER_PROMETHEUS_HOST:OTEL_EXPORTER_PROMETHEUS_PORT/metrics`) or on the
//! service's own router ([`PrometheusMetrics::router`]).
//!
//! What comes in: a scrape (`GET /metrics`). What goes out: every metric of the provider, collected
//! at that moment (observable instruments such as the process metrics are read then), with the
//! names and labels the OpenTelemetry Prometheus compatibility specification prescribes — the same
//! names Spindle gives the metrics it receives over OTLP. The exporter serialises concurrent
//! scrapes.

use std::fmt;
use std::net::SocketAddr;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// Host the Prometheus listener binds (`OTEL_METRICS_EXPORTER=prometheus`).
pub const OTEL_EXPORTER_PROMETHEUS_HOST: &str = "OTEL_EXPORTER_PROMETHEUS_HOST";
/// Port of the Prometheus listener.
pub const OTEL_EXPORTER_PROMETHEUS_PORT: &str = "OTEL_EXPORTER_PROMETHEUS_PORT";
/// Default Prometheus host (the specification's default).
pub const DEFAULT_PROMETHEUS_HOST: &str = "localhost";
/// Default Prometheus port (the specification's default).
pub const DEFAULT_PROMETHEUS_PORT: u16 = 9464;
/// `Content-Type` of the scrape response.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders the metrics of a meter provider for Prometheus; cheap to clone. Get one from
/// [`crate::Guard::prometheus`] when `prometheus` is among the metrics exporters.
#[derive(Clone)]
pub struct PrometheusMetrics {
    registry: prometheus::Registry,
}

impl fmt::Debug for PrometheusMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrometheusMetrics")
    }
}

impl PrometheusMetrics {
    /// The exporter (a reader to add to the meter provider) and its renderer.
    pub(crate) fn new() -> Result<(opentelemetry_prometheus::PrometheusExporter, Self), String> {
        let registry = prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .build()
            .map_err(|e| e.to_string())?;
        Ok((exporter, Self { registry }))
    }

    /// Collects every metric now and renders it as Prometheus text format 0.0.4.
    ///
    /// # Errors
    /// When the encoder fails (a metric family it cannot encode); the message says which.
    pub fn render(&self) -> Result<String, String> {
        let families = self.registry.gather();
        prometheus::TextEncoder::new()
            .encode_to_string(&families)
            .map_err(|e| e.to_string())
    }

    /// A router answering `GET /metrics` with [`PrometheusMetrics::render`]; merge it into the
    /// service's router to serve metrics on the service's own port.
    pub fn router(&self) -> Router {
        let metrics = self.clone();
        Router::new().route("/metrics", get(move || std::future::ready(metrics.response())))
    }

    fn response(&self) -> Response {
        match self.render() {
            Ok(text) => ([(header::CONTENT_TYPE, TEXT_CONTENT_TYPE)], text).into_response(),
            Err(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot encode metrics: {e}\n"),
            )
                .into_response(),
        }
    }
}

/// Binds the listener now (so a taken port is an init error), on the first of `addrs` that
/// accepts it.
pub(crate) fn bind(addrs: &[SocketAddr]) -> Result<std::net::TcpListener, String> {
    let mut last = "no address to listen on".to_owned();
    for addr in addrs {
        match std::net::TcpListener::bind(addr) {
            Ok(l) => {
                l.set_nonblocking(true).map_err(|e| format!("{addr}: {e}"))?;
                return Ok(l);
            }
            Err(e) => last = format!("cannot listen on {addr}: {e}"),
        }
    }
    Err(last)
}

/// Serves `metrics` on `listener` from `runtime` until the runtime shuts down.
pub(crate) fn serve(
    listener: std::net::TcpListener,
    metrics: PrometheusMetrics,
    runtime: &tokio::runtime::Handle,
) -> Result<(), String> {
    let _entered = runtime.enter();
    let listener = tokio::net::TcpListener::from_std(listener).map_err(|e| e.to_string())?;
    let router = metrics.router();
    runtime.spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::warn!(target: "spindle_instrument", "Prometheus listener stopped: {e}");
        }
    });
    Ok(())
}
