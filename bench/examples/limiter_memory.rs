//! Memory held by the cardinality limiter: heap bytes per admitted series (default config, and with
//! `max_label_values` tracking distinct values) and per kept stream state (cumulative counter and
//! 12-bucket histogram streams folded into the overflow series), counted by a global allocator
//! wrapper as in `series_memory`. The limiter alone, without a store.
//! `cargo run --release -p spindle-bench --example limiter_memory`.

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Histogram, HistogramDataPoint, NumberDataPoint, Sum, metric, number_data_point,
};
use spindle::config::CardinalityConfig;
use spindle::process::cardinality::Limiter;
use spindle::process::translate::Translator;
use spindle::telemetry::Telemetry;
use spindle::testing::{self, kv};
use spindle_bench::CountingAlloc;

#[global_allocator]
static A: CountingAlloc = CountingAlloc;

/// 5 labels of realistic length, as in `series_memory`: `method`, `route`, `status`, `region`, `pod`
/// (`pod` makes every point its own series).
fn attrs(i: u64) -> Vec<KeyValue> {
    vec![
        kv("method", ["GET", "POST"][(i % 2) as usize]),
        kv("route", format!("/api/items/{}", i % 100)),
        kv("status", ["200", "404", "500"][(i % 3) as usize]),
        kv("region", format!("eu-west-{}", i % 3)),
        kv("pod", format!("checkout-{i:08}")),
    ]
}

/// Cumulative counter points (or 12-bucket histogram points) `from..from + n`.
fn batch(from: u64, n: u64, histogram: bool) -> ExportMetricsServiceRequest {
    let data = if histogram {
        let bounds = vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
        metric::Data::Histogram(Histogram {
            data_points: (from..from + n)
                .map(|i| HistogramDataPoint {
                    attributes: attrs(i),
                    count: 12,
                    sum: Some(3.5),
                    bucket_counts: vec![1; 12],
                    explicit_bounds: bounds.clone(),
                    ..Default::default()
                })
                .collect(),
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
        })
    } else {
        metric::Data::Sum(Sum {
            data_points: (from..from + n)
                .map(|i| NumberDataPoint {
                    attributes: attrs(i),
                    value: Some(number_data_point::Value::AsInt(i as i64)),
                    ..Default::default()
                })
                .collect(),
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        })
    };
    let name = if histogram { "http_duration" } else { "http_requests" };
    testing::metrics_request_in(None, None, vec![testing::metric(name, "", data)])
}

/// Sends `points` distinct series through a fresh limiter for `config` in batches of 10k and prints
/// the heap it holds per admitted series and per stream state at every `report` points (the hash
/// tables grow by doubling, so the figure depends on where in a growth step the count falls).
fn measure(what: &str, config: &CardinalityConfig, points: u64, histogram: bool, report: u64) {
    let t = Translator::default();
    let before = CountingAlloc::held();
    let limiter = Limiter::new(config, usize::MAX, Arc::new(Telemetry::default())).expect("config builds");
    println!("{what}:");
    for from in (0..points).step_by(10_000) {
        let mut b = t.translate(batch(from, 10_000, histogram));
        limiter.limit(&mut b, 0, true);
        assert_eq!(b.outcome.rejected, 0);
        drop(b);
        let done = from + 10_000;
        if done % report == 0 {
            let held = (CountingAlloc::held() - before) as f64;
            let (series, streams) = (limiter.series_count(), limiter.stream_states());
            // Stream-state runs admit one series per metric: charge everything to the states.
            let (n, unit) = if streams > 0 {
                (streams, "stream state")
            } else {
                (series, "series")
            };
            println!(
                "  {done:>9} points: {series:>9} series, {streams:>9} stream states, {:>6.1} MB held, {:>6.1} bytes per {unit}",
                held / 1e6,
                held / n as f64,
            );
        }
    }
}

fn main() {
    let series = 1_000_000;
    let report = 100_000;
    measure(
        "admitted series, default config (global limit only)",
        &CardinalityConfig::default(),
        series,
        false,
        report,
    );
    measure(
        "admitted series, max_label_values set (distinct values tracked per label; `pod` is unique)",
        &CardinalityConfig {
            max_label_values: 10_000_000,
            ..CardinalityConfig::default()
        },
        series,
        false,
        report,
    );
    // `max_series_per_metric: 2` admits one series and folds every other cumulative stream, each
    // keeping its last report.
    let folding = CardinalityConfig {
        max_series_per_metric: 2,
        max_stream_states: 10_000_000,
        ..CardinalityConfig::default()
    };
    measure(
        "stream states, cumulative counters folded",
        &folding,
        series,
        false,
        report,
    );
    measure(
        "stream states, cumulative 12-bucket histograms folded",
        &folding,
        series / 5,
        true,
        report / 5,
    );
}
