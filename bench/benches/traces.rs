//! Traces: span-metrics update cost, and forwarding throughput end to end — OTLP/gRPC with gzip
//! into Spindle, span metrics on, OTLP/gRPC with gzip out to a downstream that counts spans.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use spindle::config::SpanMetricsConfig;
use spindle::process::span_metrics::SpanMetrics;
use spindle::store::Store;
use spindle_bench::{CountingBackend, traces_request};
use tonic::codec::CompressionEncoding;

fn span_metrics(c: &mut Criterion) {
    let sm = SpanMetrics::new(SpanMetricsConfig::default());
    let req = traces_request(100, 10, 0);
    let store = Store::new(Duration::from_secs(3600), usize::MAX, &[]);
    let mut g = c.benchmark_group("span_metrics");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("process 1000 spans", |b| b.iter(|| sm.process(&req)));
    g.bench_function("process + store 1000 spans", |b| {
        b.iter(|| {
            let out = sm.process(&req);
            store.write(out.counts, Instant::now());
            store.write(out.exemplars, Instant::now());
        })
    });
    g.finish();
}

fn forwarding(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let counted = CountingBackend::default();
    let (spindle, mut client) = rt.block_on(async {
        let down = counted.start().await;
        let spindle = spindle::testing::start_on_port_0(|c| {
            c.exporters.traces.otlp.endpoint = Some(format!("http://{down}"));
        })
        .await;
        let client = TraceServiceClient::connect(format!("http://{}", spindle.grpc_addr))
            .await
            .expect("connect")
            .send_compressed(CompressionEncoding::Gzip);
        (spindle, client)
    });
    let batches: Vec<ExportTraceServiceRequest> = (0..100).map(|i| traces_request(100, 10, i)).collect();
    let mut g = c.benchmark_group("forwarding");
    g.sample_size(10);
    g.throughput(Throughput::Elements(100_000));
    g.bench_function("100k spans, gRPC gzip in and out, span metrics on", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let target = counted.spans() + 100_000;
                    for req in &batches {
                        // Overloaded answers are retried, as an SDK would.
                        while client.export(req.clone()).await.is_err() {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                    while counted.spans() < target {
                        tokio::time::sleep(Duration::from_micros(200)).await;
                    }
                }
                start.elapsed()
            })
        })
    });
    g.finish();
    rt.block_on(spindle.shutdown()).expect("clean shutdown");
}

criterion_group!(benches, span_metrics, forwarding);
criterion_main!(benches);
