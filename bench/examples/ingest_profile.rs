//! A fixed number of ingests of `bench`'s steady-state metrics request (1000 counter points, 100
//! histograms), for `perf stat` / `perf record`: counts of instructions and cycles see through
//! the wall-clock noise of a shared machine.
//!
//! `cargo run --release -p spindle-bench --example ingest_profile -- [in-place|decoded] [iterations]`

use std::time::Instant;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use prost::Message;
use spindle::process::translate::Translator;
use spindle::store::Store;
use spindle_bench::metrics_request;

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().unwrap_or_else(|| "in-place".into());
    let iterations: u32 = args.next().and_then(|n| n.parse().ok()).unwrap_or(2000);
    let body = metrics_request(1000, 1).encode_to_vec();
    let t = Translator::default();
    let store = Store::new(std::time::Duration::from_secs(3600), usize::MAX, &[]);
    store.write(t.translate(metrics_request(1000, 0)), Instant::now());
    let start = Instant::now();
    for _ in 0..iterations {
        let samples = match path.as_str() {
            "decoded" => t.translate(ExportMetricsServiceRequest::decode(&body[..]).expect("valid")),
            _ => t.translate_encoded(&body).expect("valid"),
        };
        store.write(samples, Instant::now());
    }
    let per = start.elapsed() / iterations;
    println!("{path}: {per:?} per request of 1100 points");
}
