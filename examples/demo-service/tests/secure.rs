//! The demo service sending to a Spindle that requires TLS and a bearer token, configured only by
//! the OpenTelemetry variables (`OTEL_EXPORTER_OTLP_ENDPOINT=https://…`,
//! `OTEL_EXPORTER_OTLP_CERTIFICATE`, `OTEL_EXPORTER_OTLP_HEADERS`): its HTTP metrics and its spans
//! arrive; the same service with a wrong token is refused (counted, nothing stored); neither
//! prints the token.

use std::process::Stdio;
use std::time::{Duration, Instant};

mod common;

use common::{Demo, command, start};
use spindle_e2e::pki::Pki;
use spindle_e2e::{fetch_text, start_spindle};
use tokio::io::AsyncReadExt;

const TOKEN: &str = "demo-tok-9c1e";

/// A demo-service for `name` with `envs`, logging at debug into a pipe (read by [`stop`]).
async fn spawn_demo(name: &str, envs: &[(&str, String)]) -> Demo {
    let mut all = vec![("RUST_LOG", "debug".to_string())];
    all.extend(envs.iter().map(|(k, v)| (*k, v.clone())));
    let mut cmd = command(name, &all);
    cmd.stderr(Stdio::piped());
    start(cmd, name).await
}

/// Stops the service (SIGKILL) and returns everything it wrote to stderr.
async fn stop(mut demo: Demo) -> String {
    let _ = demo.child.start_kill();
    let mut err = String::new();
    if let Some(mut stderr) = demo.child.stderr.take() {
        let _ = tokio::time::timeout(Duration::from_secs(5), stderr.read_to_string(&mut err)).await;
    }
    err
}

fn value(text: &str, prefix: &str, contains: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix) && l.contains(contains))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_sends_over_tls_with_a_token_and_a_wrong_token_is_refused() {
    let pki = Pki::new("demo ca");
    let srv = pki.server("srv", 1);
    let tokens = pki.dir.path().join("tokens");
    std::fs::write(&tokens, format!("{TOKEN} demo-*\n")).expect("tokens");
    let (cert, key) = (srv.cert_str(), srv.key_str());
    let r = start_spindle(move |c| {
        c.receivers.otlp.tls.cert_file = Some(cert);
        c.receivers.otlp.tls.key_file = Some(key);
        c.receivers.otlp.auth.bearer_tokens_file = Some(tokens);
    })
    .await;
    let env = |token: &str| {
        vec![
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("https://localhost:{}", r.grpc_addr.port()),
            ),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", pki.ca_str()),
            ("OTEL_EXPORTER_OTLP_HEADERS", format!("authorization=Bearer%20{token}")),
        ]
    };
    let client = reqwest::Client::new();
    let good = spawn_demo("demo-secure", &env(TOKEN)).await;
    let bad = spawn_demo("demo-wrong", &env("not-the-token")).await;
    for demo in [&good, &bad] {
        for i in 1..=3 {
            let status = client
                .get(format!("{}/users/{i}", demo.url))
                .send()
                .await
                .expect("request")
                .status();
            assert!(status.is_success(), "{status}");
        }
    }

    let job = "job=\"demo-secure\"";
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = fetch_text(r.prometheus_addr).await;
        let requests = value(&text, "http_server_request_duration_seconds_count{", job);
        let spans = value(
            &text,
            "traces_span_metrics_calls_total{service_name=\"demo-secure\"",
            "SPAN_KIND_SERVER",
        );
        let refused = |signal: &str| {
            value(
                &text,
                "spindle_refused_requests_total{",
                &format!("signal=\"{signal}\",protocol=\"grpc\",reason=\"unauthenticated\""),
            )
        };
        if requests >= 3.0 && spans >= 3.0 && refused("metrics") >= 1.0 && refused("traces") >= 1.0 {
            assert!(
                !text.contains("demo-wrong"),
                "something of the wrong token's service was stored"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "requests {requests}, spans {spans}, refused metrics {} traces {}:\n{text}",
            refused("metrics"),
            refused("traces")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let logs = stop(good).await + &stop(bad).await;
    assert!(!logs.contains(TOKEN), "a demo printed the token:\n{logs}");
    r.shutdown().await.expect("shutdown");
}
