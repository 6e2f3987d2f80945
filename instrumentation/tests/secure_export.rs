//! spindle-instrument sending to a Spindle that requires TLS and a bearer token (and, in one case,
//! a client certificate), configured by the OpenTelemetry variables alone
//! (`OTEL_EXPORTER_OTLP_*ENDPOINT`, `…CERTIFICATE`, `…CLIENT_CERTIFICATE`, `…CLIENT_KEY`,
//! `…HEADERS`, per signal over general), over gRPC and HTTP/protobuf: spans and metrics arrive
//! with the right token, are refused (and nothing stored) with a wrong one or without the client
//! certificate. (`secret_logs.rs` checks that the token never shows in the logs.)

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use spindle::app::Running;
use spindle_e2e::pki::{CertFiles, Pki};
use spindle_e2e::{fetch_text, start_spindle};
use spindle_instrument::{Builder, Guard, Instrumentation, ShutdownError};

const TOKEN: &str = "tok-7f3a-instrument-secret";

fn env(vars: Vec<(&'static str, String)>) -> impl Fn(&str) -> Option<String> + Send + Sync + 'static {
    let map: HashMap<&'static str, String> = vars.into_iter().collect();
    move |k: &str| map.get(k).cloned()
}

/// Log lines written by the crate's fmt layer.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }
}

impl Write for Logs {
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

/// A Spindle whose OTLP receivers serve TLS with `srv`, require a bearer token from a file that
/// lists [`TOKEN`], and (with `client_ca`) a client certificate signed by it.
async fn secured_spindle(dir: &std::path::Path, srv: &CertFiles, client_ca: Option<String>) -> Running {
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, format!("{TOKEN}\n")).expect("tokens file");
    let srv = srv.clone();
    start_spindle(move |c| {
        c.receivers.otlp.tls.cert_file = Some(srv.cert_str());
        c.receivers.otlp.tls.key_file = Some(srv.key_str());
        c.receivers.otlp.tls.client_ca_file = client_ca;
        c.receivers.otlp.auth.bearer_tokens_file = Some(tokens);
    })
    .await
}

/// The `https://localhost:<port>` endpoint of `protocol`'s receiver (the certificate names
/// `localhost`).
fn endpoint(r: &Running, protocol: &str) -> String {
    let port = if protocol == "grpc" {
        r.grpc_addr.port()
    } else {
        r.http_addr.port()
    };
    format!("https://localhost:{port}")
}

/// Builds instrumentation for `service` from `vars` only, logging into `logs` (shown on failure).
fn build(service: &str, protocol: &str, mut vars: Vec<(&'static str, String)>, logs: &Logs) -> Instrumentation {
    vars.push(("OTEL_SERVICE_NAME", service.into()));
    vars.push(("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.into()));
    let logs = logs.clone();
    Builder::new()
        .with_env_lookup(env(vars))
        .with_log_writer(move || logs.clone())
        .with_metric_export_interval(Duration::from_secs(3600))
        .with_process_metrics(false)
        .with_runtime_metrics(false)
        .build()
        .unwrap_or_else(|e| panic!("build {service}: {e}"))
}

/// Records one span and one counter (5) in `inst`, then flushes both signals (off the runtime:
/// the flush waits for the exporters).
async fn record_and_flush(inst: Instrumentation) -> (Guard, Result<(), ShutdownError>) {
    let Instrumentation { dispatch, guard } = inst;
    tracing::dispatcher::with_default(&dispatch, || {
        tracing::info_span!("secure-op").in_scope(|| {});
    });
    guard.meter().u64_counter("secure.requests").build().add(5, &[]);
    tokio::task::spawn_blocking(move || {
        let flushed = guard.force_flush();
        (guard, flushed)
    })
    .await
    .expect("flush task")
}

/// Waits until `/metrics` shows `service`'s counter and span.
async fn wait_for(r: &Running, service: &str) {
    let job = format!("job=\"{service}\"");
    let calls = format!("traces_span_metrics_calls_total{{service_name=\"{service}\"");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = fetch_text(r.prometheus_addr).await;
        let counter = text.lines().any(|l| {
            l.starts_with("secure_requests_total{")
                && l.contains(&job)
                && l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) == Some(5.0)
        });
        if counter
            && text
                .lines()
                .any(|l| l.starts_with(&calls) && l.contains("span_name=\"secure-op\""))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{service}'s spans and metrics did not arrive:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn refused(text: &str, signal: &str, protocol: &str) -> f64 {
    let prefix = format!(
        "spindle_refused_requests_total{{signal=\"{signal}\",protocol=\"{protocol}\",reason=\"unauthenticated\"}}"
    );
    text.lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_and_metrics_go_over_tls_with_the_token_and_a_wrong_token_is_refused() {
    let pki = Pki::new("instrument ca");
    let srv = pki.server("srv", 1);
    let r = secured_spindle(pki.dir.path(), &srv, None).await;
    for protocol in ["grpc", "http/protobuf"] {
        let label = if protocol == "grpc" { "grpc" } else { "http" };
        let logs = Logs::default();
        let service = format!("secure-{label}");
        let vars = vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint(&r, protocol)),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", pki.ca_str()),
            ("OTEL_EXPORTER_OTLP_HEADERS", format!("authorization=Bearer%20{TOKEN}")),
        ];
        let (guard, flushed) = record_and_flush(build(&service, protocol, vars, &logs)).await;
        flushed.unwrap_or_else(|e| panic!("{protocol}: {e}\n{}", logs.text()));
        wait_for(&r, &service).await;
        drop(guard);

        // A wrong token: both signals refused (UNAUTHENTICATED / 401), counted, nothing stored.
        let before = fetch_text(r.prometheus_addr).await;
        let logs = Logs::default();
        let wrong = format!("wrong-{label}");
        let vars = vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint(&r, protocol)),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", pki.ca_str()),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "authorization=Bearer%20not-the-token".into(),
            ),
        ];
        let (guard, flushed) = record_and_flush(build(&wrong, protocol, vars, &logs)).await;
        let err = flushed.expect_err("a wrong token is refused");
        assert_eq!(err.errors.len(), 2, "{protocol}: both signals fail: {err}");
        drop(guard);
        let after = fetch_text(r.prometheus_addr).await;
        for signal in ["traces", "metrics"] {
            assert!(
                refused(&after, signal, label) > refused(&before, signal, label),
                "{protocol}: {signal} refusal not counted:\n{after}"
            );
        }
        assert!(!after.contains(&wrong), "{protocol}: something of {wrong} was stored");
    }
    r.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mtls_the_client_certificate_is_sent_and_signal_variables_override_the_general_ones() {
    let pki = Pki::new("instrument ca");
    let other = Pki::new("another ca");
    let srv = pki.server("srv", 1);
    let client = pki.client("service");
    let r = secured_spindle(pki.dir.path(), &srv, Some(pki.ca_str())).await;
    for protocol in ["grpc", "http/protobuf"] {
        let label = if protocol == "grpc" { "grpc" } else { "http" };
        // The general variables are wrong (another CA, a wrong token, no client certificate);
        // each signal's own are right, and win.
        let mut vars = vec![
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", other.ca_str()),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "authorization=Bearer%20not-the-token".into(),
            ),
        ];
        use spindle_instrument as si;
        let per_signal = [
            (
                "/v1/traces",
                [
                    si::OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
                    si::OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE,
                    si::OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE,
                    si::OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY,
                    si::OTEL_EXPORTER_OTLP_TRACES_HEADERS,
                ],
            ),
            (
                "/v1/metrics",
                [
                    si::OTEL_EXPORTER_OTLP_METRICS_ENDPOINT,
                    si::OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE,
                    si::OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE,
                    si::OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY,
                    si::OTEL_EXPORTER_OTLP_METRICS_HEADERS,
                ],
            ),
        ];
        for (path, [ep, ca, cert, key, headers]) in per_signal {
            let path = if protocol == "grpc" { "" } else { path };
            vars.push((ep, format!("{}{path}", endpoint(&r, protocol))));
            vars.push((ca, pki.ca_str()));
            vars.push((cert, client.cert_str()));
            vars.push((key, client.key_str()));
            vars.push((headers, format!("authorization=Bearer%20{TOKEN}")));
        }
        let logs = Logs::default();
        let service = format!("mtls-{label}");
        let (guard, flushed) = record_and_flush(build(&service, protocol, vars, &logs)).await;
        flushed.unwrap_or_else(|e| panic!("{protocol}: {e}\n{}", logs.text()));
        wait_for(&r, &service).await;
        drop(guard);

        // The same without the client certificate: the handshake is refused, nothing stored.
        let anonymous = format!("anon-{label}");
        let vars = vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint(&r, protocol)),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", pki.ca_str()),
            ("OTEL_EXPORTER_OTLP_HEADERS", format!("authorization=Bearer%20{TOKEN}")),
        ];
        let (guard, flushed) = record_and_flush(build(&anonymous, protocol, vars, &Logs::default())).await;
        let err = flushed.expect_err("no client certificate");
        assert_eq!(err.errors.len(), 2, "{protocol}: both signals fail: {err}");
        drop(guard);
        assert!(!fetch_text(r.prometheus_addr).await.contains(&anonymous));
    }
    r.shutdown().await.expect("shutdown");
}
