//! Shutdown with the backends down or hanging: the real `spindle` binary on SIGTERM exits within
//! `shutdown_timeout` and logs once how many acknowledged spans it dropped; remote write cuts off a
//! request in flight at its deadline and counts what it could not push.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{closed_port, gauge as gauge_data, hanging_backend, kv, metric, metrics_request, point, traces_request};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::metrics::v1::NumberDataPoint;
use opentelemetry_proto::tonic::trace::v1::Span;
use spindle::config::DurationStr;
use spindle::telemetry::RemoteWriteDropReason;

const BIN: &str = env!("CARGO_BIN_EXE_spindle");

/// `n` spans, each in its own trace; trace ids start at `first`.
fn spans(first: u32, n: u32) -> ExportTraceServiceRequest {
    let spans = (first..first + n)
        .map(|i| {
            let mut trace_id = vec![0xcd; 16];
            trace_id[12..].copy_from_slice(&i.to_be_bytes());
            Span {
                trace_id,
                span_id: (u64::from(i) + 1).to_be_bytes().to_vec(),
                name: "GET /orders".into(),
                kind: 2,
                start_time_unix_nano: 1_700_000_000_000_000_000,
                end_time_unix_nano: 1_700_000_000_005_000_000,
                ..Default::default()
            }
        })
        .collect();
    traces_request(vec![kv("service.name", "orders")], spans)
}

#[test]
fn sigterm_with_the_backend_down_exits_within_shutdown_timeout_and_logs_the_drop_once() {
    let dir = std::env::temp_dir().join(format!("spindle-shutdown-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("backend-down.yaml");
    std::fs::write(
        &config,
        format!(
            "receivers:\n  otlp:\n    grpc: {{listen: 127.0.0.1:0}}\n    http: {{listen: 127.0.0.1:0}}\n\
             prometheus:\n  listen: 127.0.0.1:0\n\
             exporters:\n  traces:\n    otlp:\n      endpoint: http://{}\n      retry_max_backoff: 200ms\n      shutdown_timeout: 1s\n",
            closed_port()
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Every log line, read on a thread until the process closes its stdout.
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = Vec::new();
    let grpc: SocketAddr = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(15))
            .expect("spindle did not log its gRPC address");
        let addr = line
            .contains("OTLP/gRPC receiver listening")
            .then(|| line.split("grpc_addr=").nth(1))
            .flatten()
            .and_then(|rest| rest.split_whitespace().next())
            .map(|a| a.parse().unwrap());
        log.push(line);
        if let Some(a) = addr {
            break a;
        }
    };

    // 5,000 spans, each request acknowledged.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut client = TraceServiceClient::connect(format!("http://{grpc}")).await.unwrap();
        for b in 0..10 {
            client.export(spans(b * 500, 500)).await.unwrap();
        }
        // Let the exporter start retrying against the closed port.
        tokio::time::sleep(Duration::from_millis(500)).await;
    });
    drop(rt);

    // shutdown_timeout (1s) + 2s.
    let (exit, took) = common::sigterm_and_wait(&mut child, Duration::from_secs(3));
    assert!(exit.success(), "exit status {exit}");
    reader.join().unwrap();
    log.extend(lines.try_iter());
    let text = log.join("\n");
    let drops: Vec<&String> = log.iter().filter(|l| l.contains("dropping")).collect();
    assert_eq!(drops.len(), 1, "one drop line, took {took:?}:\n{text}");
    assert!(
        drops[0].contains("WARN") && drops[0].contains("dropping 5000 queued spans"),
        "{}",
        drops[0]
    );
    eprintln!("exited {took:?} after SIGTERM; {}", drops[0]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// One gauge point of service `svc`.
fn gauge() -> ExportMetricsServiceRequest {
    let depth = metric(
        "queue_depth",
        "",
        gauge_data(vec![NumberDataPoint {
            time_unix_nano: 1_700_000_000_000_000_000,
            ..point(3.0, vec![])
        }]),
    );
    metrics_request(vec![kv("service.name", "svc"), kv("host.name", "h1")], vec![depth])
}

#[tokio::test(flavor = "multi_thread")]
async fn remote_write_shutdown_cuts_off_a_request_in_flight_and_counts_it() {
    let (addr, connections) = hanging_backend().await;
    let r = common::spindle(|c| {
        let rw = &mut c.exporters.remote_write;
        rw.endpoint = Some(format!("http://{addr}/api/v1/write"));
        // No snapshot before shutdown (the first would come an hour after start): only the last one.
        rw.interval = DurationStr(Duration::from_secs(3600));
        // The request would hang for a minute; shutdown must not wait for it.
        rw.timeout = DurationStr(Duration::from_secs(60));
        rw.shutdown_timeout = DurationStr(Duration::from_secs(1));
    })
    .await;
    let telemetry = r.telemetry.clone();
    MetricsServiceClient::connect(format!("http://{}", r.grpc_addr))
        .await
        .unwrap()
        .export(gauge())
        .await
        .unwrap();
    // What the last snapshot will carry: every sample a scrape shows, Spindle's own excepted.
    let text = reqwest::get(format!("http://{}/metrics", r.prometheus_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let samples = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("spindle_") && !l.is_empty())
        .count() as u64;
    assert_eq!(samples, 2, "the gauge and target_info:\n{text}");
    let t = Instant::now();
    r.shutdown().await.unwrap();
    let took = t.elapsed();
    assert!(
        connections.load(Ordering::SeqCst) >= 1,
        "the last snapshot was being sent"
    );
    assert!(
        took < Duration::from_millis(2000),
        "shutdown took {took:?} with shutdown_timeout 1s"
    );
    assert_eq!(telemetry.remote_write.sent_total(), 0);
    assert_eq!(
        telemetry.remote_write.dropped_total(RemoteWriteDropReason::Shutdown),
        samples,
        "the request in flight at the deadline is counted"
    );
}
