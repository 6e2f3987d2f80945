//! Spans per Spindle CPU-second: runs the release `spindle` binary as its own process (span
//! metrics on, forwarding to a counting OTLP/gRPC downstream in this process), sends OTLP/gRPC
//! gzip batches, and divides the spans forwarded by the CPU time the `spindle` process used
//! (from `/proc/<pid>/stat`). The client and the downstream run here, outside that figure.
//!
//! `cargo build --release -p spindle && cargo run --release -p spindle-bench --example trace_load [spans]`

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use spindle_bench::{CountingBackend, traces_request};
use tonic::codec::CompressionEncoding;

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields after the `(comm)`; utime and stime are fields 14 and 15 (1-based).
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().expect("utime") + f[12].parse::<f64>().expect("stime");
    ticks / 100.0 // USER_HZ is 100 on Linux
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

#[tokio::main]
async fn main() {
    let total: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(500_000);
    let counted = CountingBackend::default();
    let down = counted.start().await;
    let (grpc, http, prom) = (free_port(), free_port(), free_port());
    let bin = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/spindle");
    let mut child = Command::new(bin)
        .env("SPINDLE__RECEIVERS__OTLP__GRPC__LISTEN", format!("127.0.0.1:{grpc}"))
        .env("SPINDLE__RECEIVERS__OTLP__HTTP__LISTEN", format!("127.0.0.1:{http}"))
        .env("SPINDLE__PROMETHEUS__LISTEN", format!("127.0.0.1:{prom}"))
        .env("SPINDLE__EXPORTERS__TRACES__OTLP__ENDPOINT", format!("http://{down}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("run target/release/spindle (cargo build --release -p spindle first)");
    let mut client = loop {
        match TraceServiceClient::connect(format!("http://127.0.0.1:{grpc}")).await {
            Ok(c) => break c.send_compressed(CompressionEncoding::Gzip),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let batches: Vec<ExportTraceServiceRequest> = (0..50).map(|i| traces_request(100, 10, i)).collect();
    // Warm up, then measure.
    for b in &batches[..5] {
        let _ = client.export(b.clone()).await;
    }
    while counted.spans() < 5_000 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (cpu0, t0, n0) = (cpu_seconds(child.id()), Instant::now(), counted.spans());
    let mut sent = 0;
    let mut i = 0;
    while sent < total {
        let b = &batches[i % batches.len()];
        // Overloaded answers are retried, as an SDK would.
        while client.export(b.clone()).await.is_err() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        sent += 1000;
        i += 1;
    }
    while counted.spans() < n0 + total {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (cpu, wall) = (cpu_seconds(child.id()) - cpu0, t0.elapsed().as_secs_f64());
    println!(
        "{total} spans forwarded in {wall:.2} s wall; spindle used {cpu:.2} CPU-s → {:.0} spans per spindle CPU-second ({:.0} spans/s wall)",
        total as f64 / cpu,
        total as f64 / wall
    );
    let _ = child.kill();
    let _ = child.wait();
}
