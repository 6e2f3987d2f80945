//! Cardinality limiter cost per data point: `Limiter::limit` over a translated 1,100-point request
//! (`spindle_bench::metrics_request(1000, n)`: 1,000 cumulative counter points and 100 cumulative
//! histogram points, 5 attributes each), in the steady state (the series were admitted by an
//! earlier request; every measured batch comes at a new store tick, as successive exports do):
//!
//! - default config: only the global series limit; every point passes;
//! - limits only: `max_series_per_metric` and `max_label_values` set (value tracking), nothing hit;
//! - limits + rules, nothing to rewrite: two normalizers (`number`, `uuid`) on `http_route`, whose
//!   values here carry no number, and a denied label no point has: the rules' cost on clean traffic;
//! - limits + rules: the same normalizers and `deny_labels: [shard]`, so every point is rewritten
//!   and the 1,100 streams merge into 48 counter and 48 histogram series (cumulative reports
//!   turned into increments from per-stream state);
//! - folding: `max_series_per_metric: 10`, so all but 9 series per metric fold into the overflow
//!   series (again per-stream state for the increments).
//!
//! The batch is translated in the setup (not timed); `limit` edits it in place. Translate + store
//! of the same request, with and without the limiter (`app::write_metrics`), gives the scale.
//!
//! Group `cardinality_report` (the `/api/v1/cardinality` report at 1M series, built once:
//! `spindle_bench::filled_store(1_000_000)`, one counter family with 10 labels per series):
//! one uncached computation (`CardinalityReports::report`), one cached call
//! (`CardinalityReports::cached`, as the handler serves it), and the OpenMetrics render of that store (what `/metrics` does) alone
//! and while 8 threads poll the report in a loop (each call followed by a 10 ms pause, i.e.
//! ~800 calls/s offered in total), through the cache and, for comparison, uncached.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use spindle::app::write_metrics;
use spindle::config::{CardinalityConfig, NormalizeKind, NormalizeRule};
use spindle::expose::api::CardinalityReports;
use spindle::expose::render;
use spindle::model::Format;
use spindle::model::batch::Samples;
use spindle::process::cardinality::Limiter;
use spindle::process::translate::Translator;
use spindle::store::Store;
use spindle::telemetry::Telemetry;
use spindle_bench::{filled_store, metrics_request};

const SERIES: u64 = 1000;
const POINTS: u64 = SERIES + SERIES / 10;
/// `prometheus.max_series` (the global bound under the default config).
const PROMETHEUS_MAX_SERIES: usize = 1_000_000;

fn limits_only() -> CardinalityConfig {
    CardinalityConfig {
        max_series_per_metric: 10_000,
        max_label_values: 1_000,
        ..CardinalityConfig::default()
    }
}

fn normalizer(kind: NormalizeKind) -> NormalizeRule {
    NormalizeRule {
        labels: vec!["http_route".into()],
        kind,
        pattern: None,
        replacement: None,
        metrics: Vec::new(),
    }
}

fn limits_and_rules() -> CardinalityConfig {
    CardinalityConfig {
        deny_labels: vec!["shard".into()],
        normalize: vec![normalizer(NormalizeKind::Number), normalizer(NormalizeKind::Uuid)],
        ..limits_only()
    }
}

/// The same rules on traffic they leave alone: routes without numbers (see [`without_numbers`])
/// and a denied label that no point carries.
fn limits_and_idle_rules() -> CardinalityConfig {
    CardinalityConfig {
        deny_labels: vec!["user_id".into()],
        ..limits_and_rules()
    }
}

fn folding() -> CardinalityConfig {
    CardinalityConfig {
        max_series_per_metric: 10,
        ..CardinalityConfig::default()
    }
}

fn limiter(config: &CardinalityConfig) -> Limiter {
    Limiter::new(config, PROMETHEUS_MAX_SERIES, Arc::new(Telemetry::default())).expect("bench config builds")
}

/// `req` with the digits of every `http.route` value's last segment spelled as letters
/// (`/api/v1/items/17` → `/api/v1/items/bh`), so the `number` normalizer finds nothing.
fn without_numbers(mut req: ExportMetricsServiceRequest) -> ExportMetricsServiceRequest {
    for m in req
        .resource_metrics
        .iter_mut()
        .flat_map(|r| &mut r.scope_metrics)
        .flat_map(|s| &mut s.metrics)
    {
        let attrs: Vec<_> = match &mut m.data {
            Some(Data::Sum(s)) => s.data_points.iter_mut().map(|p| &mut p.attributes).collect(),
            Some(Data::Histogram(h)) => h.data_points.iter_mut().map(|p| &mut p.attributes).collect(),
            _ => Vec::new(),
        };
        for kv in attrs.into_iter().flatten().filter(|kv| kv.key == "http.route") {
            if let Some(Value::StringValue(route)) = kv.value.as_mut().and_then(|v| v.value.as_mut()) {
                let cut = route.rfind('/').map_or(0, |i| i + 1);
                let last: String = route[cut..]
                    .bytes()
                    .map(|b| {
                        if b.is_ascii_digit() {
                            char::from(b - b'0' + b'a')
                        } else {
                            char::from(b)
                        }
                    })
                    .collect();
                route.replace_range(cut.., &last);
            }
        }
    }
    req
}

/// Successive exports of the same series: request `n` carries cumulative values `n` higher and
/// comes at store tick `n`.
struct Exports {
    translator: Translator,
    n: u64,
    clean_routes: bool,
}

impl Exports {
    fn new(clean_routes: bool) -> Self {
        Self {
            translator: Translator::default(),
            n: 0,
            clean_routes,
        }
    }

    fn next(&mut self) -> (Samples, u32) {
        let mut req = metrics_request(SERIES, self.n);
        if self.clean_routes {
            req = without_numbers(req);
        }
        let batch = self.translator.translate(req);
        let tick = self.n as u32;
        self.n += 1;
        (batch, tick)
    }
}

fn cardinality(c: &mut Criterion) {
    let mut g = c.benchmark_group("cardinality");
    g.throughput(Throughput::Elements(POINTS));
    // 1,000 + 100 + target_info series; merged: 48 counter + 48 histogram + target_info; folded:
    // 9 + 9 admitted + target_info. Plus 3 overflow slots.
    for (name, config, clean_routes, expect) in [
        ("default config", CardinalityConfig::default(), false, (1104, 0)),
        ("limits only", limits_only(), false, (1104, 0)),
        (
            "limits + 2 normalizers + deny, nothing to rewrite",
            limits_and_idle_rules(),
            true,
            (1104, 0),
        ),
        (
            "limits + 2 normalizers + deny (merging)",
            limits_and_rules(),
            false,
            (100, 1100),
        ),
        ("folding (max_series_per_metric 10)", folding(), false, (22, 1082)),
    ] {
        let l = limiter(&config);
        let mut exports = Exports::new(clean_routes);
        // Admit the series and keep the first report of every stream.
        for _ in 0..2 {
            let (mut batch, tick) = exports.next();
            l.limit(&mut batch, tick, true);
            assert_eq!(batch.outcome.rejected, 0, "{name}: nothing is rejected");
        }
        // The scenario is what it claims: (series incl. one overflow slot per metric, stream states).
        assert_eq!((l.series_count(), l.stream_states()), expect, "{name}");
        g.bench_function(format!("limit, {name}, {POINTS} points"), |b| {
            b.iter_batched(
                || exports.next(),
                |(mut batch, tick)| {
                    l.limit(&mut batch, tick, true);
                    batch
                },
                BatchSize::LargeInput,
            )
        });
    }

    // For scale: translate + store, without and with the limiter.
    let t = Translator::default();
    let store = || Store::new(Duration::from_secs(3600), usize::MAX, &[]);
    let plain = store();
    plain.write(t.translate(metrics_request(SERIES, 0)), Instant::now());
    let mut n = 1;
    g.bench_function(format!("translate+store, no limiter, {POINTS} points"), |b| {
        b.iter_batched(
            || {
                n += 1;
                metrics_request(SERIES, n)
            },
            |req| plain.write(t.translate(req), Instant::now()),
            BatchSize::LargeInput,
        )
    });
    for (name, config) in [
        ("default config", CardinalityConfig::default()),
        ("folding (max_series_per_metric 10)", folding()),
    ] {
        let l = limiter(&config);
        let s = store();
        for n in 0..2 {
            write_metrics(&s, Some(&l), t.translate(metrics_request(SERIES, n)), true);
        }
        let mut n = 2;
        g.bench_function(format!("translate+limit+store, {name}, {POINTS} points"), |b| {
            b.iter_batched(
                || {
                    n += 1;
                    metrics_request(SERIES, n)
                },
                |req| write_metrics(&s, Some(&l), t.translate(req), true),
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

/// Series in the store the report walks.
const REPORT_SERIES: u64 = 1_000_000;
/// Pollers of the report while the render is timed, and the pause after each of their calls.
const POLLERS: usize = 8;
const POLL_PAUSE: Duration = Duration::from_millis(10);

/// `POLLERS` threads calling `poll` in a loop until dropped.
struct Pollers {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<u64>>,
}

impl Pollers {
    fn start(poll: impl Fn() + Send + Sync + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let poll = Arc::new(poll);
        let threads = (0..POLLERS)
            .map(|_| {
                let (stop, poll) = (stop.clone(), poll.clone());
                std::thread::spawn(move || {
                    let mut calls = 0;
                    while !stop.load(Ordering::Relaxed) {
                        poll();
                        calls += 1;
                        std::thread::sleep(POLL_PAUSE);
                    }
                    calls
                })
            })
            .collect();
        Self { stop, threads }
    }

    /// Stops the threads; the calls they made.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.threads.into_iter().map(|t| t.join().unwrap_or(0)).sum()
    }
}

fn report(c: &mut Criterion) {
    let mut g = c.benchmark_group("cardinality_report");
    g.sample_size(10);
    // Under `cargo test --benches` (unoptimized, one run each as a smoke test) a small store.
    let series = if std::env::args().any(|a| a == "--bench") {
        REPORT_SERIES
    } else {
        1_000
    };
    let store = Arc::new(filled_store(series));
    assert_eq!(store.series_count(), series as usize + 1, "plus target_info");
    let l = Arc::new(limiter(&CardinalityConfig::default()));
    let reports = Arc::new(CardinalityReports::default());
    let telemetry = Telemetry::default();
    let r = reports.report(&l, &store, 20);
    assert_eq!(
        r["top_metrics"][0]["series"], series,
        "the report walks the whole family"
    );
    g.bench_function(format!("report, uncached, {series} series"), |b| {
        b.iter(|| reports.report(&l, &store, 20))
    });
    // A cache that never goes stale in the measurement: the cost of serving a computed report.
    reports.cached_within(&l, &store, 20, Duration::from_secs(3600));
    g.bench_function(format!("report, cached call, {series} series"), |b| {
        b.iter(|| reports.cached_within(&l, &store, 20, Duration::from_secs(3600)))
    });
    let mut out = Vec::with_capacity(series as usize * 320);
    let mut render_once = || {
        out.clear();
        render(&store, &telemetry, Format::OpenMetrics, &mut out);
        out.len()
    };
    g.bench_function(format!("render {series} series, alone"), |b| b.iter(&mut render_once));
    for (name, cached) in [("through the cache, as the endpoint", true), ("uncached", false)] {
        let (l, s, reports) = (l.clone(), store.clone(), reports.clone());
        let pollers = Pollers::start(move || {
            if cached {
                reports.cached(&l, &s, 20);
            } else {
                reports.report(&l, &s, 20);
            }
        });
        g.bench_function(
            format!("render {series} series, {POLLERS} threads polling the report ({name})"),
            |b| b.iter(&mut render_once),
        );
        let calls = pollers.stop();
        eprintln!("{name}: the pollers made {calls} calls");
    }
    g.finish();
}

criterion_group!(benches, cardinality, report);
criterion_main!(benches);
