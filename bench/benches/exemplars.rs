//! Cost of exemplar capture in `spindle-instrument`: counter add and histogram record through
//! `meter()`, inside a sampled span, with the exemplar filter `always_off` (no capture) and
//! `trace_based` (capture), single-threaded and on 8 threads at once.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::InMemorySpanExporter;
use spindle_instrument::{Builder, ExemplarFilter, Instrumentation, OtlpMetricsCapture};

fn build(filter: ExemplarFilter) -> Instrumentation {
    Builder::new()
        .with_env_lookup(|_| None)
        .with_exemplar_filter(filter)
        .with_span_exporter(InMemorySpanExporter::default())
        .with_otlp_metrics_capture(OtlpMetricsCapture::new())
        .with_log_writer(std::io::sink)
        .build()
        .expect("build")
}

fn bench(c: &mut Criterion) {
    let attrs = [KeyValue::new("route", "/users/{id}"), KeyValue::new("status", 200)];
    for (label, filter) in [
        ("no_exemplars", ExemplarFilter::AlwaysOff),
        ("exemplars", ExemplarFilter::TraceBased),
    ] {
        let inst = build(filter);
        let meter = inst.guard.meter();
        let counter = meter.u64_counter("bench.count").build();
        let histogram = meter.f64_histogram("bench.latency").build();
        tracing::dispatcher::with_default(&inst.dispatch, || {
            let span = tracing::info_span!("request");
            let _e = span.enter();
            c.bench_function(&format!("exemplars/counter_add/{label}"), |b| {
                b.iter(|| counter.add(black_box(1), &attrs))
            });
            c.bench_function(&format!("exemplars/histogram_record/{label}"), |b| {
                b.iter(|| histogram.record(black_box(42.0), &attrs))
            });
        });
        // 8 threads each recording 10 000 histogram measurements inside their own span.
        let dispatch = inst.dispatch.clone();
        let histogram = Arc::new(histogram);
        c.bench_function(&format!("exemplars/histogram_record_8_threads_x10k/{label}"), |b| {
            b.iter(|| {
                std::thread::scope(|s| {
                    for _ in 0..8 {
                        let (d, h, attrs) = (dispatch.clone(), Arc::clone(&histogram), &attrs);
                        s.spawn(move || {
                            tracing::dispatcher::with_default(&d, || {
                                let span = tracing::info_span!("request");
                                let _e = span.enter();
                                for i in 0..10_000 {
                                    h.record(f64::from(i % 1000), attrs);
                                }
                            })
                        });
                    }
                })
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
