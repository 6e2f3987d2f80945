//! The bearer token in `OTEL_EXPORTER_OTLP_HEADERS` never reaches a log line, even with every
//! target at `trace` (the crate's own, the SDK's, tonic's, h2's, hyper's — and the
//! in-process Spindle's). Spans go over gRPC and metrics over HTTP/protobuf, both over TLS to a
//! Spindle that requires the token. `try_init` installs the process-wide subscriber (so the
//! exporters' threads log too), hence a binary of its own.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use spindle_e2e::pki::Pki;
use spindle_e2e::{fetch_text, start_spindle};
use spindle_instrument::Builder;

const TOKEN: &str = "tok-5ecret-only-in-the-header";

#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_never_logged_at_any_level() {
    let pki = Pki::new("secret logs ca");
    let srv = pki.server("srv", 1);
    let tokens = pki.dir.path().join("tokens");
    std::fs::write(&tokens, format!("{TOKEN}\n")).expect("tokens");
    let (cert, key) = (srv.cert_str(), srv.key_str());
    let r = start_spindle(move |c| {
        c.receivers.otlp.tls.cert_file = Some(cert);
        c.receivers.otlp.tls.key_file = Some(key);
        c.receivers.otlp.auth.bearer_tokens_file = Some(tokens);
    })
    .await;
    let vars = [
        ("OTEL_SERVICE_NAME", "secret-logs".to_owned()),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc".to_owned()),
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            format!("https://localhost:{}", r.grpc_addr.port()),
        ),
        ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf".to_owned()),
        (
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            format!("https://localhost:{}/v1/metrics", r.http_addr.port()),
        ),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", pki.ca_str()),
        ("OTEL_EXPORTER_OTLP_HEADERS", format!("authorization=Bearer%20{TOKEN}")),
    ];
    let log = Lines::default();
    let writer = log.clone();
    let guard = Builder::new()
        .with_env_lookup(move |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone()))
        .with_env_filter("trace")
        .with_metric_export_interval(Duration::from_secs(3600))
        .with_log_writer(move || writer.clone())
        .try_init()
        .expect("try_init");
    tracing::info_span!("logged-op").in_scope(|| {
        tracing::info!(monotonic_counter.logged_requests = 3u64, "a request");
    });
    let (guard, flushed) = tokio::task::spawn_blocking(move || {
        let flushed = guard.force_flush();
        (guard, flushed)
    })
    .await
    .expect("flush task");
    flushed.expect("both signals delivered with the token");

    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = fetch_text(r.prometheus_addr).await;
        if text.contains("logged_requests_total{") && text.contains("service_name=\"secret-logs\"") {
            break;
        }
        assert!(Instant::now() < deadline, "nothing arrived:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::task::spawn_blocking(move || guard.shutdown())
        .await
        .expect("shutdown task")
        .expect("shutdown");
    r.shutdown().await.expect("spindle shutdown");

    let text = String::from_utf8_lossy(&log.0.lock().unwrap_or_else(PoisonError::into_inner)).into_owned();
    for target in ["h2", "hyper", "tonic"] {
        assert!(
            text.lines().any(|l| l.contains("TRACE") && l.contains(target)),
            "expected trace-level lines of {target} (the filter is `trace`)"
        );
    }
    assert!(!text.contains(TOKEN), "the token was logged");
}
