//! The stacks the instrumentation bench and its callgrind example share: no-op exporters behind
//! the SDK's real processors, `spindle-instrument` as `try_init` would install it, the hand-built
//! stack (tower-http `TraceLayer` + `tracing-opentelemetry` + the batch span processor), a trivial
//! router and a request polled to completion with a no-op waker. Included by path
//! (`benches/instrument.rs`, `examples/instrument_profile.rs`): it uses their dev-dependencies.

#![allow(dead_code)] // each includer uses its own subset

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::Temporality;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use spindle_instrument::{Builder, Instrumentation};
use tower::ServiceExt;
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, MakeSpan, TraceLayer};
use tracing::Dispatch;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt as _;

/// Counts what it is given, and drops it.
#[derive(Debug, Clone, Default)]
pub struct NoopSpans(pub Arc<AtomicU64>);

impl SpanExporter for NoopSpans {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.fetch_add(batch.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

#[derive(Debug)]
pub struct NoopMetrics;

impl PushMetricExporter for NoopMetrics {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        black_box(metrics);
        Ok(())
    }
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }
    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
    fn temporality(&self) -> Temporality {
        Temporality::Cumulative
    }
}

pub fn instrumentation(spans: NoopSpans) -> Instrumentation {
    Builder::for_package("bench", "0")
        .with_env_lookup(|_| None)
        .with_env_filter("warn")
        .with_log_writer(std::io::sink)
        .with_span_exporter(spans)
        .with_metric_exporter(NoopMetrics)
        .build()
        .expect("instrumentation builds")
}

/// `spindle-instrument` as [`instrumentation`], but with its default OTLP/gRPC span export to
/// `endpoint` (metrics still to a no-op exporter). The `OTEL_BSP_*` variables are read from the
/// process environment (as the SDK's batch processor always did), so that a profile can make the
/// span queue large enough for nothing to be dropped under valgrind, which runs one thread at a
/// time; and the `OTEL_EXPORTER_OTLP_{TRACES_,}COMPRESSION` variables, so that a profile can
/// compare gzip (the default) with `none`.
pub fn otlp_instrumentation(endpoint: &str) -> Instrumentation {
    Builder::for_package("bench", "0")
        .with_env_lookup(|name| {
            (name.starts_with("OTEL_BSP_")
                || (name.starts_with("OTEL_EXPORTER_OTLP_") && name.ends_with("_COMPRESSION")))
            .then(|| std::env::var(name).ok())
            .flatten()
        })
        .with_env_filter("warn")
        .with_log_writer(std::io::sink)
        .with_endpoint(endpoint)
        .with_metric_exporter(NoopMetrics)
        .build()
        .expect("instrumentation builds")
}

/// The header extractor users write (as `opentelemetry-http`'s) for the SDK's W3C propagator.
pub struct Headers<'a>(&'a axum::http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

pub fn poll_ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

pub fn routes() -> Router {
    Router::new().route("/users/{id}", get(|| async { "user" }))
}

pub const SAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
pub const NOT_SAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";

pub fn request(traceparent: &'static str) -> Request<Body> {
    Request::get("/users/42")
        .header("traceparent", traceparent)
        .body(Body::empty())
        .expect("request")
}

pub fn call_with(router: &Router, traceparent: &'static str) -> u16 {
    poll_ready(router.clone().oneshot(request(traceparent)))
        .expect("infallible")
        .status()
        .as_u16()
}

pub fn call(router: &Router) -> u16 {
    call_with(router, SAMPLED)
}

/// The hand-built stack: a subscriber with a fmt layer at `warn` and `tracing-opentelemetry` (its
/// defaults) at INFO over an SDK tracer provider with the batch span processor, and a router with
/// tower-http's `TraceLayer` whose span continues the W3C parent.
pub fn hand_built(spans: NoopSpans) -> (Dispatch, SdkTracerProvider, Router) {
    let provider = SdkTracerProvider::builder().with_batch_exporter(spans).build();
    let subscriber = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::sink)
                .with_filter(LevelFilter::WARN),
        )
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("bench"))
                .with_filter(LevelFilter::INFO),
        );
    let router = routes().layer(
        TraceLayer::new_for_http()
            .make_span_with(|req: &Request<Body>| {
                let span = DefaultMakeSpan::new().level(tracing::Level::INFO).make_span(req);
                let _ = span.set_parent(TraceContextPropagator::new().extract(&Headers(req.headers())));
                span
            })
            .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
    );
    (Dispatch::new(subscriber), provider, router)
}
