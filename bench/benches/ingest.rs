//! Ingest: OTLP protobuf request → decode → translate → store, on a warm store (series exist,
//! values and exemplars update), and each stage alone; and the path protobuf requests take without
//! enrichment, translated in place from the bytes (`Translator::translate_encoded`).

use std::time::Instant;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use prost::Message;
use spindle::process::translate::Translator;
use spindle::receive::decode;
use spindle::store::Store;
use spindle_bench::metrics_request;

fn ingest(c: &mut Criterion) {
    let series = 1000u64;
    let points = series + series / 10;
    let body = metrics_request(series, 1).encode_to_vec();
    let t = Translator::default();
    let store = Store::new(std::time::Duration::from_secs(3600), usize::MAX, &[]);
    store.write(t.translate(metrics_request(series, 0)), Instant::now());

    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Elements(points));
    g.bench_function("decode+translate+store (1100 points)", |b| {
        b.iter(|| {
            let req = ExportMetricsServiceRequest::decode(&body[..]).expect("valid payload");
            store.write(t.translate(req), Instant::now())
        })
    });
    g.bench_function("in place: translate+store (1100 points)", |b| {
        b.iter(|| store.write(t.translate_encoded(&body).expect("valid payload"), Instant::now()))
    });
    g.bench_function("in place: translate only", |b| {
        b.iter(|| t.translate_encoded(&body).expect("valid payload"))
    });
    g.bench_function("decode only", |b| {
        b.iter(|| ExportMetricsServiceRequest::decode(&body[..]).expect("valid payload"))
    });
    // What admission adds before decoding: the decoded size, walked from the bytes.
    g.bench_function("decoded-size estimate only", |b| {
        b.iter(|| {
            decode::decoded_size::<ExportMetricsServiceRequest>(&body, decode::Encoding::Protobuf).expect("valid")
        })
    });
    g.bench_function("translate only", |b| {
        b.iter_batched(
            || metrics_request(series, 1),
            |req| t.translate(req),
            BatchSize::LargeInput,
        )
    });
    g.bench_function("store only", |b| {
        b.iter_batched(
            || t.translate(metrics_request(series, 1)),
            |s| store.write(s, Instant::now()),
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, ingest);
criterion_main!(benches);
