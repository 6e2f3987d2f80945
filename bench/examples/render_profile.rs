//! Renders a 100k-series store repeatedly, for profilers (`valgrind --tool=callgrind`, `perf`).
use spindle::expose::render;
use spindle::model::Format;
use spindle::telemetry::Telemetry;

fn main() {
    let series = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let store = spindle_bench::filled_store(series);
    let telemetry = Telemetry::default();
    let mut out = Vec::new();
    let start = std::time::Instant::now();
    for _ in 0..10 {
        out.clear();
        render(&store, &telemetry, Format::OpenMetrics, &mut out);
    }
    println!("{} bytes, {:?} per render", out.len(), start.elapsed() / 10);
}
