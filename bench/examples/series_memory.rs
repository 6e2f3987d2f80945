//! Memory per active series: heap bytes held by the store per counter series with 5 labels and one
//! exemplar, counted by a global allocator wrapper. `cargo run --release -p spindle-bench --example series_memory`.

use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::{Exemplar, NumberDataPoint, exemplar, number_data_point};
use spindle::process::translate::Translator;
use spindle::store::Store;
use spindle::testing::{self, kv};
use spindle_bench::CountingAlloc;

#[global_allocator]
static A: CountingAlloc = CountingAlloc;

/// 5 labels of realistic length: `method`, `route`, `status`, `region`, `pod`.
fn batch(from: u64, n: u64) -> ExportMetricsServiceRequest {
    let points = (from..from + n)
        .map(|i| NumberDataPoint {
            attributes: vec![
                kv("method", ["GET", "POST"][(i % 2) as usize]),
                kv("route", format!("/api/items/{}", i % 100)),
                kv("status", ["200", "404", "500"][(i % 3) as usize]),
                kv("region", format!("eu-west-{}", i % 3)),
                kv("pod", format!("checkout-{i:08}")),
            ],
            value: Some(number_data_point::Value::AsInt(i as i64)),
            exemplars: vec![Exemplar {
                trace_id: [7u8; 16].to_vec(),
                span_id: [9u8; 8].to_vec(),
                time_unix_nano: 1,
                value: Some(exemplar::Value::AsDouble(1.0)),
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    testing::metrics_request_in(
        None,
        None,
        vec![testing::metric("http_requests", "", testing::counter(points))],
    )
}

fn main() {
    let series = 1_000_000u64;
    let t = Translator::default();
    let store = Store::new(Duration::from_secs(3600), usize::MAX, &[]);
    let before = CountingAlloc::held();
    let mut label_bytes = 0usize;
    for from in (0..series).step_by(10_000) {
        store.write(t.translate(batch(from, 10_000)), Instant::now());
    }
    for h in store.families() {
        label_bytes += h.lock().series().iter().map(|s| s.labels().len()).sum::<usize>();
    }
    let held = (CountingAlloc::held() - before) as f64;
    println!(
        "{series} series: {:.0} heap bytes per series (of which {:.0} are the rendered label set)",
        held / series as f64,
        label_bytes as f64 / series as f64
    );
}
