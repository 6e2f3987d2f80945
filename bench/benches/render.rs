//! Render: the whole store as OpenMetrics with exemplars (and as protobuf and text 0.0.4), one thread.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use spindle::expose::render;
use spindle::model::Format;
use spindle::telemetry::Telemetry;
use spindle_bench::filled_store;

fn render_bench(c: &mut Criterion) {
    let telemetry = Telemetry::default();
    let mut g = c.benchmark_group("render");
    g.sample_size(10);
    // `cargo bench` passes `--bench`; under `cargo test --benches` (unoptimized, one run each as a
    // smoke test) a small store keeps the run short.
    let sizes: &[u64] = if std::env::args().any(|a| a == "--bench") {
        &[100_000, 1_000_000]
    } else {
        &[1_000]
    };
    for &series in sizes {
        // Built on first use, so a filtered run does not pay for stores it does not render.
        let store = std::cell::OnceCell::new();
        let store = || store.get_or_init(|| filled_store(series));
        let cap = series as usize * 320;
        g.throughput(Throughput::Elements(series));
        g.bench_function(format!("openmetrics+exemplars {series} series"), |b| {
            let store = store();
            b.iter(|| {
                let mut out = Vec::with_capacity(cap);
                render(store, &telemetry, Format::OpenMetrics, &mut out);
                out
            })
        });
        g.bench_function(format!("openmetrics+exemplars {series} series, reused buffer"), |b| {
            let store = store();
            let mut out = Vec::with_capacity(cap);
            b.iter(|| {
                out.clear();
                render(store, &telemetry, Format::OpenMetrics, &mut out);
                out.len()
            })
        });
        g.bench_function(format!("protobuf {series} series, reused buffer"), |b| {
            let store = store();
            let mut out = Vec::with_capacity(cap);
            b.iter(|| {
                out.clear();
                render(store, &telemetry, Format::Protobuf, &mut out);
                out.len()
            })
        });
        // 10% of the series native histograms (each one `Metric` of about 40 buckets).
        let mixed = std::cell::OnceCell::new();
        let mixed = || mixed.get_or_init(|| spindle_bench::filled_store_with_native(series - series / 10, series / 10));
        g.bench_function(
            format!("protobuf {series} series, 10% native histograms, reused buffer"),
            |b| {
                let store = mixed();
                let mut out = Vec::with_capacity(cap);
                b.iter(|| {
                    out.clear();
                    render(store, &telemetry, Format::Protobuf, &mut out);
                    out.len()
                })
            },
        );
        g.bench_function(
            format!("openmetrics+exemplars {series} series, 10% exponential histograms, reused buffer"),
            |b| {
                let store = mixed();
                let mut out = Vec::with_capacity(cap);
                b.iter(|| {
                    out.clear();
                    render(store, &telemetry, Format::OpenMetrics, &mut out);
                    out.len()
                })
            },
        );
        g.bench_function(format!("text {series} series"), |b| {
            let store = store();
            b.iter(|| {
                let mut out = Vec::with_capacity(cap);
                render(store, &telemetry, Format::Text, &mut out);
                out
            })
        });
    }
    g.finish();
}

criterion_group!(benches, render_bench);
criterion_main!(benches);
