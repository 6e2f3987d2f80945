//! Per-request overhead of `spindle-instrument`: the axum [`HttpLayer`] (server span, W3C
//! context, `http.server.*` metrics) and one `#[instrument]` span, each against the same work
//! without it. One thread; exporters are no-ops behind the SDK's real batch span processor and
//! periodic reader, and logs are at `warn` so nothing is printed.
//!
//! Requests are `oneshot` through the router and polled with a no-op waker: the trivial handler
//! completes on the first poll, so no runtime scheduling is measured.
//!
//! Side by side (issue 19, point 2), the stack Rust users build by hand today: tower-http's
//! `TraceLayer` (span and response event at INFO, the W3C parent extracted in `make_span_with`),
//! `tracing-opentelemetry` with its defaults and the SDK batch span processor (default
//! `ParentBased(AlwaysOn)` sampler), behind the same no-op span exporter and with the same fmt
//! layer at `warn`. Spans only: it records no metrics. Both are measured for a sampled request
//! (`traceparent` flags `01`) and a not-sampled one (`00`), on one thread and on 8 threads
//! (`instrument/http-8-threads`: one iteration is 8 requests, one on each thread, started together).
//!
//! `instrument/collect`: what one collection costs (a Prometheus scrape rendered by
//! [`spindle_instrument::PrometheusMetrics::render`]) with the process and Tokio runtime metrics
//! off and on; the difference is what those metrics cost per collection (they cost nothing per
//! request: their callbacks run only when a reader collects).

#[path = "../shared/instrument_stacks.rs"]
mod stacks;

use std::hint::black_box;
use std::sync::Barrier;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use spindle_instrument::{Builder, HttpLayer, Instrumentation};
use stacks::*;
use tower::ServiceExt;
use tracing::Dispatch;

/// Criterion's `iter_custom` body for `threads` threads each making `iters` requests through
/// `router` (under `dispatch` when given), started together: one iteration is `threads` requests.
fn parallel(
    threads: usize,
    dispatch: Option<&Dispatch>,
    router: &Router,
    traceparent: &'static str,
) -> impl FnMut(u64) -> Duration {
    move |iters| {
        let barrier = Barrier::new(threads + 1);
        let start = std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    let run = || {
                        barrier.wait();
                        for _ in 0..iters {
                            black_box(call_with(router, traceparent));
                        }
                    };
                    match dispatch {
                        Some(d) => tracing::dispatcher::with_default(d, run),
                        None => run(),
                    }
                });
            }
            barrier.wait();
            Instant::now()
        });
        start.elapsed()
    }
}

#[tracing::instrument]
fn work(id: u64) -> u64 {
    black_box(id).wrapping_mul(31)
}

fn layer_bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("instrument/http");
    let exported = NoopSpans::default();
    let inst = instrumentation(exported.clone());
    // A second live dispatcher makes tracing-core compute call-site interest against all of them
    // rather than against whichever happens to be the default when a call site is first hit (with
    // a single scoped dispatcher, a call site first reached outside it stays disabled for good).
    let registry = tracing::Dispatch::new(tracing_subscriber::registry());

    let plain = routes();
    g.bench_function("router without layer", |b| b.iter(|| call(&plain)));
    let report = |what: &str| {
        let _ = inst.guard.force_flush();
        eprintln!("spans exported so far ({what}): {}", exported.0.load(Ordering::Relaxed));
    };

    let metrics_only = routes().layer(HttpLayer::with_meter(&inst.guard.meter()));
    g.bench_function("router + HttpLayer, no subscriber (metrics only)", |b| {
        b.iter(|| call(&metrics_only))
    });
    report("after metrics only");

    let layered = routes().layer(HttpLayer::with_meter(&inst.guard.meter()));
    tracing::dispatcher::with_default(&inst.dispatch, || {
        g.bench_function("router + HttpLayer, full instrumentation", |b| {
            b.iter(|| call(&layered))
        });
    });
    report("after full instrumentation");
    assert!(
        exported.0.load(Ordering::Relaxed) > 0,
        "the layer's spans reached the exporter"
    );
    tracing::dispatcher::with_default(&inst.dispatch, || {
        g.bench_function("router + HttpLayer, full instrumentation, not sampled", |b| {
            b.iter(|| call_with(&layered, NOT_SAMPLED))
        });
    });
    report("after not sampled (no more expected)");

    let hand_spans = NoopSpans::default();
    let (hand_dispatch, hand_provider, hand_router) = hand_built(hand_spans.clone());
    tracing::dispatcher::with_default(&hand_dispatch, || {
        g.bench_function("hand-built: TraceLayer + tracing-opentelemetry", |b| {
            b.iter(|| call(&hand_router))
        });
        g.bench_function("hand-built: TraceLayer + tracing-opentelemetry, not sampled", |b| {
            b.iter(|| call_with(&hand_router, NOT_SAMPLED))
        });
    });
    let _ = hand_provider.force_flush();
    eprintln!("hand-built spans exported: {}", hand_spans.0.load(Ordering::Relaxed));
    assert!(
        hand_spans.0.load(Ordering::Relaxed) > 0,
        "the hand-built stack's spans reached the exporter"
    );
    g.finish();

    let threads = 8;
    let mut g = c.benchmark_group("instrument/http-8-threads");
    g.bench_function("router without layer", |b| {
        b.iter_custom(parallel(threads, None, &plain, SAMPLED))
    });
    g.bench_function("router + HttpLayer, full instrumentation", |b| {
        b.iter_custom(parallel(threads, Some(&inst.dispatch), &layered, SAMPLED))
    });
    g.bench_function("router + HttpLayer, full instrumentation, not sampled", |b| {
        b.iter_custom(parallel(threads, Some(&inst.dispatch), &layered, NOT_SAMPLED))
    });
    g.bench_function("hand-built: TraceLayer + tracing-opentelemetry", |b| {
        b.iter_custom(parallel(threads, Some(&hand_dispatch), &hand_router, SAMPLED))
    });
    g.finish();
    drop(hand_provider);

    let mut g = c.benchmark_group("instrument/span");
    g.bench_function("#[instrument] fn, no subscriber", |b| b.iter(|| work(black_box(7))));
    tracing::dispatcher::with_default(&registry, || {
        g.bench_function("#[instrument] fn, bare registry", |b| b.iter(|| work(black_box(7))));
    });
    tracing::dispatcher::with_default(&inst.dispatch, || {
        g.bench_function("#[instrument] fn, full instrumentation", |b| {
            b.iter(|| work(black_box(7)))
        });
        let parent = tracing::info_span!("parent");
        let _entered = parent.enter();
        g.bench_function("#[instrument] fn inside a span, full instrumentation", |b| {
            b.iter(|| work(black_box(7)))
        });
    });
    g.finish();
    drop(inst);
}

/// A Prometheus-only instrumentation that has seen requests on three routes and statuses.
fn scrape_only(process_and_runtime: bool) -> Instrumentation {
    let inst = Builder::for_package("bench", "0")
        .with_env_lookup(|_| None)
        .with_env_filter("warn")
        .with_log_writer(std::io::sink)
        .with_metrics_exporters([spindle_instrument::MetricsExporter::Prometheus])
        .with_traces_exporter(spindle_instrument::TracesExporter::None)
        .with_prometheus_listener(false)
        .with_process_metrics(process_and_runtime)
        .with_runtime_metrics(process_and_runtime)
        .build()
        .expect("instrumentation builds");
    let router = Router::new()
        .route("/users/{id}", get(|| async { "user" }))
        .route("/orders/{id}", get(|| async { "order" }))
        .layer(HttpLayer::with_meter(&inst.guard.meter()));
    for path in ["/users/1", "/orders/2", "/nope"] {
        let req = Request::get(path).body(Body::empty()).expect("request");
        let _ = poll_ready(router.clone().oneshot(req));
    }
    inst
}

fn collect_bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // Built inside the runtime, so the runtime metrics are those of `runtime` (two workers).
    let _entered = runtime.enter();
    let off = scrape_only(false);
    let on = scrape_only(true);
    drop(_entered);
    let render = |inst: &Instrumentation| {
        inst.guard
            .prometheus()
            .expect("prometheus exporter")
            .render()
            .expect("renders")
    };
    let (a, b) = (render(&off), render(&on));
    eprintln!(
        "scrape sizes: {} bytes without, {} bytes with process and runtime metrics ({} more sample lines)",
        a.len(),
        b.len(),
        b.lines().filter(|l| !l.starts_with('#')).count() - a.lines().filter(|l| !l.starts_with('#')).count()
    );
    assert!(b.contains("process_cpu_time_seconds_total") && b.contains("tokio_runtime_worker_busy_time_seconds_total"));
    let mut g = c.benchmark_group("instrument/collect");
    g.bench_function("scrape (render), HTTP metrics only", |bench| {
        bench.iter(|| render(&off))
    });
    g.bench_function("scrape (render), HTTP + process and runtime metrics", |bench| {
        bench.iter(|| render(&on))
    });
    g.finish();
}

criterion_group!(benches, layer_bench, collect_bench);
criterion_main!(benches);
