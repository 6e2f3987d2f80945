//! A profiling driver for the request path: `N` requests through an axum router with
//! [`spindle_instrument::HttpLayer`] and full instrumentation (as `try_init` would install it, with
//! no-op exporters), on one thread, then the process CPU time per request (export threads
//! included). Run under `perf record` or `valgrind --tool=callgrind`:
//!
//! ```text
//! cargo build --release -p spindle-instrument --example request_loop
//! perf record -g target/release/examples/request_loop 2000000
//! ```
//!
//! Arguments: the number of requests (default 1,000,000), then `bare` to measure the router alone
//! or `unsampled` for requests whose `traceparent` says not sampled (flags `00`).
//!
//! For instruction counts (deterministic, unlike time on a shared machine), run it under
//! `valgrind --tool=callgrind` with two request counts and divide the difference.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::Temporality;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use spindle_instrument::{Builder, HttpLayer};
use tower::ServiceExt;

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

fn poll_ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(usage.ru_utime) + t(usage.ru_stime)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let mode = args.next();
    let bare = mode.as_deref() == Some("bare");
    let traceparent = if mode.as_deref() == Some("unsampled") {
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
    } else {
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    };
    let spans = NoopSpans::default();
    let inst = Builder::for_package("profile", "0")
        .with_env_lookup(|_| None)
        .with_env_filter("warn")
        .with_log_writer(std::io::sink)
        .with_span_exporter(spans.clone())
        .with_metric_exporter(NoopMetrics)
        .build()
        .expect("instrumentation builds");
    let routes = Router::new().route("/users/{id}", get(|| async { "user" }));
    let router = if bare {
        routes
    } else {
        routes.layer(HttpLayer::with_meter(&inst.guard.meter()))
    };
    let request = || {
        Request::get("/users/42")
            .header("traceparent", traceparent)
            .body(Body::empty())
            .expect("request")
    };
    tracing::dispatcher::with_default(&inst.dispatch, || {
        let cpu0 = cpu_seconds();
        let t0 = Instant::now();
        for _ in 0..n {
            let resp = poll_ready(router.clone().oneshot(request())).expect("infallible");
            black_box(resp.status());
        }
        let wall = t0.elapsed().as_secs_f64();
        let _ = inst.guard.force_flush();
        let cpu = cpu_seconds() - cpu0;
        println!(
            "{n} requests: {:.3} µs wall, {:.3} µs process CPU per request; {} spans exported",
            wall * 1e6 / n as f64,
            cpu * 1e6 / n as f64,
            spans.0.load(Ordering::Relaxed)
        );
    });
}
