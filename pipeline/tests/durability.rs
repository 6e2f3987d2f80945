//! Durability with `storage.path`, proven by killing the real `spindle` binary with real peers:
//! - the Python OpenTelemetry SDK sends spans while the trace backend is down; Spindle is killed
//!   with SIGKILL and restarted; once the backend is up, every span whose export the SDK saw
//!   succeed arrives;
//! - the same for remote write: samples queued for a Prometheus that is down survive `kill -9` and
//!   reach it after the restart (the restarted store is empty: they can only come from the disk);
//! - a 60-second backend outage with the disk queue loses nothing;
//! - a full disk (a 2 MiB tmpfs over `storage.path`, mounted in a mount namespace of Spindle's own
//!   with `unshare -rm`, util-linux) answers "overloaded" (503), never crashes, and once the backend
//!   is back delivers exactly what it acknowledged and takes requests again;
//! - a graceful restart (SIGTERM) under load keeps `traces_span_metrics_calls_total` continuous in
//!   a real Prometheus (`resets()` sees none), while a `kill -9` shows as a counter reset, as the
//!   README documents.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use spindle_e2e::otlp_sink::{OtlpSink, SinkOptions, SinkReply};
use spindle_e2e::{
    Prometheus, Protocol, SendOptions, fetch_openmetrics, fetch_text, free_port, send_metrics_to, send_spans_to,
};

const BIN: &str = env!("CARGO_BIN_EXE_spindle");

/// Fixed ports, so that a restarted Spindle listens where the peers expect it.
#[derive(Debug, Clone, Copy)]
struct Ports {
    grpc: u16,
    http: u16,
    prometheus: u16,
}

impl Ports {
    fn new() -> Self {
        Self {
            grpc: free_port(),
            http: free_port(),
            prometheus: free_port(),
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }
}

/// A `spindle` process.
struct Spindle {
    child: Child,
    ports: Ports,
}

impl Spindle {
    /// Starts the binary with `config` (written to `dir`) and waits until it is ready.
    async fn start(dir: &Path, config: &str, ports: Ports) -> Self {
        Self::start_wrapped(dir, config, ports, &[]).await
    }

    /// [`Spindle::start`] through `wrapper` (a command that ends by running its arguments).
    async fn start_wrapped(dir: &Path, config: &str, ports: Ports, wrapper: &[&str]) -> Self {
        let path = dir.join("spindle.yaml");
        std::fs::write(&path, config).unwrap();
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let child = cmd
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let s = Self { child, ports };
        let deadline = Instant::now() + Duration::from_secs(20);
        let ready = format!("http://{}/readyz", Ports::addr(ports.prometheus));
        loop {
            if reqwest::get(&ready).await.is_ok_and(|r| r.status().is_success()) {
                return s;
            }
            assert!(Instant::now() < deadline, "spindle did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn sigterm(mut self) {
        let (status, _) = common::sigterm_and_wait(&mut self.child, Duration::from_secs(20));
        assert!(status.success(), "exit status {status}");
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = fetch_text(Ports::addr(self.ports.prometheus)).await;
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Spindle {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The config of a Spindle on `ports` with its disk queues and state under `storage`.
fn config(ports: Ports, storage: &Path, exporters: &str) -> String {
    format!(
        "receivers:\n  otlp:\n    grpc: {{listen: 127.0.0.1:{}}}\n    http: {{listen: 127.0.0.1:{}}}\n\
         prometheus:\n  listen: 127.0.0.1:{}\n\
         storage:\n  path: {}\n\
         exporters:\n{exporters}",
        ports.grpc,
        ports.http,
        ports.prometheus,
        storage.display()
    )
}

/// The trace exporter to `backend`, retrying fast.
fn trace_exporter(backend: SocketAddr) -> String {
    format!(
        "  traces:\n    otlp:\n      endpoint: http://{backend}\n      retry_initial_backoff: 100ms\n      \
         retry_max_backoff: 500ms\n      batch_timeout: 50ms\n      shutdown_timeout: 1s\n"
    )
}

/// Runs `send_spans.py` (the Python SDK; it fails unless every export succeeded): `traces`
/// traces of 5 spans; returns `(trace_id, span_id)` of each.
async fn send_spans(ports: Ports, protocol: Protocol, service: &str, traces: u32) -> BTreeSet<(String, String)> {
    let (grpc, http) = (Ports::addr(ports.grpc), Ports::addr(ports.http));
    send_spans_to(grpc, http, protocol, service, traces, 5).await.keys()
}

/// A Spindle with its storage, forwarding to a backend that is down (nothing listens on its port).
async fn spindle_with_the_backend_down() -> (tempfile::TempDir, Ports, SocketAddr, String, Spindle) {
    let (dir, storage) = storage_dir();
    let ports = Ports::new();
    let backend = Ports::addr(free_port());
    let cfg = config(ports, &storage, &trace_exporter(backend));
    let spindle = Spindle::start(dir.path(), &cfg, ports).await;
    (dir, ports, backend, cfg, spindle)
}

async fn wait_for_spans(sink: &OtlpSink, want: &BTreeSet<(String, String)>, within: Duration) {
    let ok = sink.wait_for(within, |s| want.is_subset(&s.span_keys())).await;
    let got = sink.span_keys();
    let missing = want.difference(&got).count();
    assert!(ok, "{missing} of {} acknowledged spans never arrived", want.len());
}

fn storage_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("storage");
    (dir, storage)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_acknowledged_while_the_backend_is_down_survive_kill_9_and_arrive_after_restart() {
    let (dir, ports, backend, cfg, spindle) = spindle_with_the_backend_down().await;
    let mut sent = send_spans(ports, Protocol::Grpc, "checkout", 40).await;
    sent.extend(send_spans(ports, Protocol::Http, "cart", 40).await);
    assert_eq!(sent.len(), 400);
    // Acknowledged, and still queued: the backend never answered.
    assert!(spindle.metric("spindle_exporter_queue_bytes").await > 0.0);
    spindle.kill9();

    let sink = OtlpSink::start_with(SinkOptions {
        grpc_addr: Some(backend),
        ..SinkOptions::default()
    })
    .await;
    let spindle = Spindle::start(dir.path(), &cfg, ports).await;
    wait_for_spans(&sink, &sent, Duration::from_secs(30)).await;
    // Every span is counted as delivered, and nothing was dropped.
    // The sink records a request before it answers: the count follows the answer.
    let deadline = Instant::now() + Duration::from_secs(10);
    while spindle.metric("spindle_exporter_sent_spans_total").await < 400.0 {
        assert!(Instant::now() < deadline, "the acknowledgements were never counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(spindle.metric("spindle_exporter_dropped_spans_total").await, 0.0);
    assert_eq!(spindle.metric("spindle_exporter_queue_disk_errors_total").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_write_samples_queued_while_prometheus_is_down_survive_kill_9() {
    let (dir, storage) = storage_dir();
    let ports = Ports::new();
    let prom_port = free_port();
    let exporters = format!(
        "  remote_write:\n    endpoint: http://127.0.0.1:{prom_port}/api/v1/write\n    interval: 1s\n    \
         retry_initial_backoff: 100ms\n    retry_max_backoff: 500ms\n"
    );
    let cfg = config(ports, &storage, &exporters);
    let spindle = Spindle::start(dir.path(), &cfg, ports).await;
    let sent = send_metrics_to(
        Ports::addr(ports.grpc),
        Ports::addr(ports.http),
        &SendOptions::new(Protocol::Grpc, "billing"),
    )
    .await;
    // A snapshot of the store is queued (on disk) and retried against the closed port.
    let deadline = Instant::now() + Duration::from_secs(20);
    while spindle.metric("spindle_remote_write_retries_total").await < 1.0 {
        assert!(Instant::now() < deadline, "remote write never tried");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    spindle.kill9();

    let prom = Prometheus::start_remote_write_receiver_on(prom_port).await;
    // The store of the restarted Spindle is empty (kill -9 saves no state): the samples can only
    // come from the disk queue. No metrics are sent to it.
    let spindle = Spindle::start(dir.path(), &cfg, ports).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    for (route, total) in &sent.requests {
        let q = spindle_e2e::url_encode(&format!("demo_requests_total{{route=\"{route}\"}}"));
        loop {
            let v = prom.api(&format!("/api/v1/query?query={q}")).await;
            let value = v["data"]["result"][0]["value"][1].as_str().map(|s| s.to_string());
            if value.as_deref() == Some(&total.to_string()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "demo_requests_total{{route={route}}} never reached Prometheus with {total}: {v}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    assert!(spindle.metric("spindle_remote_write_sent_samples_total").await > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sixty_second_backend_outage_with_the_disk_queue_loses_nothing() {
    let (dir, storage) = storage_dir();
    let sink = OtlpSink::start().await;
    sink.set_reply(SinkReply::Unavailable);
    let ports = Ports::new();
    let cfg = config(ports, &storage, &trace_exporter(sink.grpc_addr));
    let spindle = Spindle::start(dir.path(), &cfg, ports).await;
    let outage = Instant::now();
    let mut sent = BTreeSet::new();
    // Spans keep coming during the outage.
    for (i, at) in [0u64, 20, 40, 55].into_iter().enumerate() {
        tokio::time::sleep_until((outage + Duration::from_secs(at)).into()).await;
        sent.extend(send_spans(ports, Protocol::Grpc, &format!("svc-{i}"), 20).await);
    }
    tokio::time::sleep_until((outage + Duration::from_secs(60)).into()).await;
    assert!(sink.refused() > 0, "the backend refused during the outage");
    assert!(sink.span_keys().is_empty());
    sink.set_reply(SinkReply::Accept);
    wait_for_spans(&sink, &sent, Duration::from_secs(30)).await;
    assert_eq!(spindle.metric("spindle_exporter_dropped_spans_total").await, 0.0);
    assert!(spindle.metric("spindle_exporter_retries_total").await > 0.0);
}

/// `max(resets(calls[…]))` over every series of the span-metrics counter.
async fn resets(prom: &Prometheus) -> f64 {
    let q = spindle_e2e::url_encode("max(resets(traces_span_metrics_calls_total[10m]))");
    let v = prom.api(&format!("/api/v1/query?query={q}")).await;
    v["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no resets() result: {v}"))
}

/// Waits until Prometheus has scraped `sum(calls)` of at least `at_least`.
async fn wait_for_calls(prom: &Prometheus, at_least: f64) {
    let q = spindle_e2e::url_encode("sum(traces_span_metrics_calls_total)");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = prom.api(&format!("/api/v1/query?query={q}")).await;
        let got: f64 = v["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0.0);
        if got >= at_least {
            return;
        }
        assert!(Instant::now() < deadline, "Prometheus never saw {at_least} calls: {v}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_restart_under_load_keeps_span_metric_counters_continuous_in_prometheus() {
    let (dir, storage) = storage_dir();
    let sink = OtlpSink::start().await;
    let ports = Ports::new();
    let cfg = config(ports, &storage, &trace_exporter(sink.grpc_addr));
    let spindle = Spindle::start(dir.path(), &cfg, ports).await;
    let prom = Prometheus::start(Ports::addr(ports.prometheus)).await;
    send_spans(ports, Protocol::Grpc, "orders", 20).await;
    wait_for_calls(&prom, 100.0).await;
    // Load keeps coming while Spindle restarts: the SDK retries what the stopping Spindle refuses.
    let load = tokio::spawn(async move { send_spans(ports, Protocol::Grpc, "orders", 200).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    spindle.sigterm();
    let spindle = Spindle::start(dir.path(), &cfg, ports).await;
    let during = load.await.unwrap().len() as f64;
    send_spans(ports, Protocol::Grpc, "orders", 20).await;
    // Everything the SDK sent is counted once across the restart...
    wait_for_calls(&prom, 100.0 + during + 100.0).await;
    assert_eq!(
        spindle.metric("traces_span_metrics_calls_total").await,
        200.0 + during,
        "the restored counters continue from the saved totals"
    );
    // ...and Prometheus saw no counter go down.
    assert_eq!(resets(&prom).await, 0.0, "a graceful restart is not a counter reset");

    // kill -9 keeps no state: that restart is a counter reset, as documented.
    spindle.kill9();
    let _spindle = Spindle::start(dir.path(), &cfg, ports).await;
    send_spans(ports, Protocol::Grpc, "orders", 2).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while resets(&prom).await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "Prometheus never saw the reset after kill -9"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The trace ids of the span-metric exemplars on `/metrics` (OpenMetrics).
async fn exemplar_trace_ids(ports: Ports) -> BTreeSet<String> {
    let text = fetch_openmetrics(Ports::addr(ports.prometheus)).await;
    text.lines()
        .filter(|l| l.starts_with("traces_span_metrics_"))
        .filter_map(|l| l.split("trace_id=\"").nth(1)?.split('"').next())
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exemplars_of_batches_delivered_after_a_restart_are_published_only_once_the_backend_acknowledged_them() {
    let (dir, ports, backend, cfg, spindle) = spindle_with_the_backend_down().await;
    let sent = send_spans(ports, Protocol::Grpc, "payments", 20).await;
    assert_eq!(spindle.metric("traces_span_metrics_calls_total").await, 100.0);
    assert!(
        exemplar_trace_ids(ports).await.is_empty(),
        "nothing was acknowledged yet"
    );
    // A graceful restart while the backend is still down: counts are saved, spans stay queued.
    spindle.sigterm();
    let sink = OtlpSink::start_with(SinkOptions {
        grpc_addr: Some(backend),
        ..SinkOptions::default()
    })
    .await;
    sink.set_reply(SinkReply::Unavailable);
    let spindle = Spindle::start(dir.path(), &cfg, ports).await;
    assert_eq!(
        spindle.metric("traces_span_metrics_calls_total").await,
        100.0,
        "restored, and not counted again when the queued spans are sent"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while sink.refused() == 0 {
        assert!(Instant::now() < deadline, "the queued spans were never tried");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        exemplar_trace_ids(ports).await.is_empty(),
        "refused batches publish no exemplar"
    );
    sink.set_reply(SinkReply::Accept);
    wait_for_spans(&sink, &sent, Duration::from_secs(30)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let published = loop {
        let ids = exemplar_trace_ids(ports).await;
        if !ids.is_empty() {
            break ids;
        }
        assert!(Instant::now() < deadline, "no exemplar after delivery");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let delivered = sink.trace_ids();
    assert!(
        published.is_subset(&delivered),
        "every exemplar names a span the backend acknowledged: {:?}",
        published.difference(&delivered).collect::<Vec<_>>()
    );
    assert_eq!(spindle.metric("traces_span_metrics_calls_total").await, 100.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_overloaded_never_crashes_and_delivers_what_was_acknowledged() {
    let (dir, storage) = storage_dir();
    std::fs::create_dir_all(&storage).unwrap();
    let ports = Ports::new();
    let backend = Ports::addr(free_port());
    // The queue's bound (64 MiB) is far above the file system's room (2 MiB): the disk fills first.
    let cfg = config(ports, &storage, &trace_exporter(backend)).replace(
        &format!("  path: {}\n", storage.display()),
        &format!("  path: {}\n  queue_max_bytes: 64MiB\n", storage.display()),
    );
    // A 2 MiB tmpfs mounted over storage.path, in a mount namespace of Spindle's own.
    let wrapper = format!(
        "mount -t tmpfs -o size=2m spindle-full {} && exec \"$0\" \"$@\"",
        storage.display()
    );
    let spindle = Spindle::start_wrapped(dir.path(), &cfg, ports, &["unshare", "-rm", "sh", "-c", &wrapper]).await;
    let (accepted, refused) = common::send_numbered(Ports::addr(ports.http), 150, 100, 120).await;
    for body in &refused {
        assert!(body.contains("cannot write to disk"), "{body}");
    }
    let full = refused.len();
    assert!(full > 0, "150 requests of about 20 KB overflow 2 MiB");
    assert!(!accepted.is_empty());
    assert!(spindle.metric("spindle_exporter_queue_disk_errors_total").await >= 1.0);
    // Still serving.
    let ready = reqwest::get(format!("http://127.0.0.1:{}/readyz", ports.prometheus))
        .await
        .unwrap();
    assert!(ready.status().is_success());
    // The backend comes up: exactly what was acknowledged arrives, and the freed disk takes more.
    let sink = OtlpSink::start_with(SinkOptions {
        grpc_addr: Some(backend),
        ..SinkOptions::default()
    })
    .await;
    common::assert_delivered_exactly(&sink, &accepted).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let client = reqwest::Client::new();
    loop {
        let resp = client
            .post(format!("http://127.0.0.1:{}/v1/traces", ports.http))
            .header("content-type", "application/x-protobuf")
            .body(common::numbered_spans(1_000_000, 100, 120))
            .send()
            .await
            .unwrap();
        if resp.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the disk never took requests again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
