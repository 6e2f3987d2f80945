//! The status page (`GET /`) and the metric view (`GET /explore?metric=`) at 1M series: 1,000
//! counter metrics of 1,000 series each (5 labels per series), written through the cardinality
//! limiter (`max_series_per_metric: 2000`, so every metric has its limiter state and a limit to
//! draw its bar against). Spindle's own metrics carry counts on every receiver, exporter and
//! refusal series.
//!
//! - `page/status render`: [`PageState::render_status`] with the default 25 metrics: a text render
//!   of the own metrics read back, the rate window, the store's family list with each family's
//!   series count, the limiter's snapshot, and the HTML;
//! - `page/status served`: the same through the router, as a request is served (a tower
//!   `oneshot` of `GET /`: routing, the blocking thread, the response);
//! - `page/metric view`: one 1,000-series metric's labels by distinct values (a walk of its label
//!   sets), its overflow series and its limiter state.
//!
//! The page sizes (default and `?top=1000`) are printed once.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use spindle::app::write_metrics;
use spindle::config::CardinalityConfig;
use spindle::export::stats::DropReason;
use spindle::expose::page::{ExporterInfo, ExporterKind, PageInfo, PageState, router};
use spindle::expose::routes::ExposeState;
use spindle::model::batch::{FamilyMeta, PointValue, Samples};
use spindle::model::{MetricKind, Protocol, Signal, Temporality};
use spindle::process::cardinality::Limiter;
use spindle::store::Store;
use spindle::telemetry::Telemetry;
use tower::ServiceExt as _;

/// A page over `metrics` × `per_metric` series.
fn page(metrics: usize, per_metric: usize) -> Arc<PageState> {
    let telemetry = Arc::new(Telemetry::default());
    for (sig, proto) in [
        (Signal::Metrics, Protocol::Grpc),
        (Signal::Metrics, Protocol::Http),
        (Signal::Traces, Protocol::Grpc),
    ] {
        telemetry.receiver.received(sig, proto, 1_000_000, 12);
    }
    telemetry.traces.queue(12 << 20, 64 << 20);
    telemetry.traces.sent(5_000_000);
    telemetry.traces.dropped(DropReason::Permanent, 42);
    telemetry.traces.took(Duration::from_millis(12));
    telemetry.traces.failed("gRPC Unavailable: connection refused", false);
    let store = Arc::new(Store::new(Duration::from_secs(3600), 2_000_000, &[]));
    let config = CardinalityConfig {
        max_series_per_metric: 2000,
        ..CardinalityConfig::default()
    };
    let limiter = Arc::new(Limiter::new(&config, 2_000_000, telemetry.clone()).expect("limiter"));
    for m in 0..metrics {
        let mut b = Samples::default();
        let f = b.add_family(FamilyMeta {
            name: format!("service_{:02}_operation_{m:04}_requests", m % 37),
            kind: MetricKind::Counter,
            help: "Requests handled.".into(),
            unit: String::new(),
        });
        for i in 0..per_metric {
            let start = b.labels.len();
            b.add_label("job", &format!("shop/service-{}", m % 37));
            b.add_label("instance", &format!("pod-{}", i % 20));
            b.add_label("http_route", &format!("/api/v1/items/{}", i % 50));
            b.add_label("http_method", ["GET", "POST", "PUT"][i % 3]);
            b.add_label("series", &i.to_string());
            b.add_point(f, start, Temporality::Delta, PointValue::Number(1.0), &[]);
        }
        write_metrics(&store, Some(&limiter), b, true);
    }
    let expose = ExposeState {
        store,
        telemetry: telemetry.clone(),
        ready: Arc::new(AtomicBool::new(true)),
        buffers: Default::default(),
        limiter,
        reports: Default::default(),
    };
    let t = telemetry.traces.clone();
    let info = PageInfo {
        version: "bench".into(),
        config_yaml: "receivers: {}\n".repeat(100),
        store_max_series: 2_000_000,
        exporters: vec![
            ExporterInfo {
                kind: ExporterKind::Traces,
                endpoint: Some("http://tempo:4317".into()),
                last_error: Arc::new(move || t.last_error()),
            },
            ExporterInfo {
                kind: ExporterKind::RemoteWrite,
                endpoint: None,
                last_error: Arc::new(|| None),
            },
        ],
    };
    Arc::new(PageState::new(expose, info))
}

/// The store's size as the page states it ("N metrics with M series").
fn stated_size(html: &str) -> &str {
    let at = html.find(" metrics with ").unwrap_or(0);
    let start = html[..at].rfind('>').map_or(0, |i| i + 1);
    let end = html[at..].find(" series").map_or(html.len(), |i| at + i + 7);
    &html[start..end]
}

fn bench(c: &mut Criterion) {
    // `cargo bench` passes `--bench`; under `cargo test --benches` (unoptimized, one run each as a
    // smoke test) a small store keeps the run short.
    let (metrics, per_metric) = if std::env::args().any(|a| a == "--bench") {
        (1000, 1000)
    } else {
        (20, 50)
    };
    let start = Instant::now();
    let page = page(metrics, per_metric);
    let series = metrics * per_metric;
    eprintln!(
        "page bench: {metrics} metrics x {per_metric} series filled in {:?}",
        start.elapsed()
    );
    for top in [25, 1000] {
        let mut out = String::new();
        page.render_status(top, &mut out);
        eprintln!(
            "page bench: status page with top={top} at {metrics} metrics: {} bytes ({})",
            out.len(),
            stated_size(&out)
        );
    }
    let mut out = String::new();
    assert!(page.render_metric("service_00_operation_0000_requests", &mut out));
    eprintln!(
        "page bench: metric view of a {per_metric}-series metric: {} bytes",
        out.len()
    );

    let mut g = c.benchmark_group("page");
    g.sample_size(20);
    g.bench_function(format!("status render, {series} series"), |b| {
        let mut out = String::with_capacity(64 << 10);
        b.iter(|| {
            out.clear();
            page.render_status(25, &mut out);
            out.len()
        });
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let app = router(page.clone());
    g.bench_function(format!("status served, {series} series"), |b| {
        b.iter(|| {
            rt.block_on(async {
                let req = http::Request::get("/")
                    .body(axum::body::Body::empty())
                    .expect("request");
                let resp = app.clone().oneshot(req).await.expect("infallible");
                assert_eq!(resp.status(), 200);
                axum::body::to_bytes(resp.into_body(), usize::MAX)
                    .await
                    .expect("body")
                    .len()
            })
        });
    });
    g.bench_function(format!("metric view, {per_metric}-series metric of {series}"), |b| {
        let mut out = String::with_capacity(64 << 10);
        b.iter(|| {
            out.clear();
            page.render_metric("service_00_operation_0000_requests", &mut out)
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
