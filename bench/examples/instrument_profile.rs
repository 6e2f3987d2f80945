//! A fixed number of requests through one of the stacks of `benches/instrument.rs`, on one thread,
//! for `valgrind --tool=callgrind` (instruction counts are deterministic where time on this shared
//! machine is not): run it with two request counts and divide the difference of the totals by the
//! difference of the counts; the export threads' work is included.
//!
//! `cargo build --release -p spindle-bench --example instrument_profile`, then
//! `instrument_profile STACK [sampled|unsampled] [REQUESTS]` with `STACK` one of `bare` (the router
//! alone), `spindle` (`HttpLayer` with full instrumentation) or `hand-built` (tower-http
//! `TraceLayer` + `tracing-opentelemetry` + the batch span processor, spans only).

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
use spindle_instrument::{Builder, HttpLayer};
use tower::ServiceExt;
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, MakeSpan, TraceLayer};
use tracing::Dispatch;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt as _;

#[derive(Debug, Clone, Default)]
struct NoopSpans(Arc<AtomicU64>);

impl SpanExporter for NoopSpans {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.fetch_add(batch.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

#[derive(Debug)]
struct NoopMetrics;

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

/// The header extractor users write (as `opentelemetry-http`'s) for the SDK's W3C propagator.
struct Headers<'a>(&'a axum::http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

fn poll_ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

fn routes() -> Router {
    Router::new().route("/users/{id}", get(|| async { "user" }))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let stack = args.next().unwrap_or_else(|| "spindle".into());
    let traceparent = match args.next().as_deref() {
        Some("unsampled") => "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        _ => "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    };
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let spans = NoopSpans::default();

    let inst = Builder::for_package("profile", "0")
        .with_env_lookup(|_| None)
        .with_env_filter("warn")
        .with_log_writer(std::io::sink)
        .with_span_exporter(spans.clone())
        .with_metric_exporter(NoopMetrics)
        .build()
        .expect("instrumentation builds");
    let provider = SdkTracerProvider::builder().with_batch_exporter(spans.clone()).build();
    let (dispatch, router) = match stack.as_str() {
        "bare" => (Dispatch::none(), routes()),
        "hand-built" => {
            let subscriber = tracing_subscriber::registry()
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_writer(std::io::sink)
                        .with_filter(LevelFilter::WARN),
                )
                .with(
                    tracing_opentelemetry::layer()
                        .with_tracer(provider.tracer("profile"))
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
            (Dispatch::new(subscriber), router)
        }
        _ => (
            inst.dispatch.clone(),
            routes().layer(HttpLayer::with_meter(&inst.guard.meter())),
        ),
    };
    tracing::dispatcher::with_default(&dispatch, || {
        for _ in 0..n {
            let req = Request::get("/users/42")
                .header("traceparent", traceparent)
                .body(Body::empty())
                .expect("request");
            let resp = poll_ready(router.clone().oneshot(req)).expect("infallible");
            black_box(resp.status());
        }
    });
    let _ = inst.guard.force_flush();
    let _ = provider.force_flush();
    println!(
        "{stack}: {n} requests, {} spans exported",
        spans.0.load(Ordering::Relaxed)
    );
}
