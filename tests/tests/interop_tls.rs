//! TLS with real peers and openssl-made certificates (`spindle_e2e::pki`): the OpenTelemetry
//! Python SDK sending spans and metrics to Spindle over TLS on gRPC and HTTP with the CA in
//! `OTEL_EXPORTER_OTLP_CERTIFICATE` (a plaintext SDK refused), the SDK with and without a client
//! certificate against mTLS, and a real Prometheus scraping Spindle over https.

use std::time::{Duration, Instant};

use spindle::app::Running;
use spindle_e2e::pki::{CertFiles, Pki};
use spindle_e2e::{Prometheus, fetch_text, send_tls, start_spindle};

/// Runs `send_tls.py` with the SDK's environment `env`; returns (spans, metrics) export results.
async fn send(protocol: &str, service: &str, env: &[(&str, String)]) -> (String, String) {
    send_tls(protocol, service, env, &[]).await
}

fn endpoint(r: &Running, protocol: &str, scheme: &str) -> String {
    let addr = if protocol == "grpc" { r.grpc_addr } else { r.http_addr };
    let host = if scheme == "https" {
        "localhost".to_string()
    } else {
        addr.ip().to_string()
    };
    format!("{scheme}://{host}:{}", addr.port())
}

fn sdk_env(r: &Running, protocol: &str, pki: &Pki, client: Option<&CertFiles>) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint(r, protocol, "https")),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", pki.ca_str()),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "5".into()),
    ];
    if let Some(c) = client {
        env.push(("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", c.cert_str()));
        env.push(("OTEL_EXPORTER_OTLP_CLIENT_KEY", c.key_str()));
    }
    env
}

fn success() -> (String, String) {
    ("SUCCESS".into(), "SUCCESS".into())
}

fn failure() -> (String, String) {
    ("FAILURE".into(), "FAILURE".into())
}

/// Waits until `/metrics` shows the SDK's counter and span for `service`.
async fn wait_for_service(r: &Running, service: &str) -> String {
    let job = format!("job=\"{service}\"");
    let calls = format!("traces_span_metrics_calls_total{{service_name=\"{service}\"");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = fetch_text(r.prometheus_addr).await;
        let has_counter = text
            .lines()
            .any(|l| l.starts_with("tls_requests_total{") && l.contains(&job) && l.ends_with(" 5.0"));
        let has_calls = text.lines().any(|l| l.starts_with(&calls));
        if has_counter && has_calls {
            return text;
        }
        assert!(Instant::now() < deadline, "{service}'s data did not arrive:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_sdk_sends_over_tls_on_grpc_and_http_and_a_plaintext_sdk_is_refused() {
    let pki = Pki::new("spindle interop ca");
    let srv = pki.server("srv", 1);
    let r = start_spindle(|c| {
        c.receivers.otlp.tls.cert_file = Some(srv.cert_str());
        c.receivers.otlp.tls.key_file = Some(srv.key_str());
    })
    .await;
    for protocol in ["grpc", "http"] {
        let service = format!("tls-{protocol}");
        assert_eq!(
            send(protocol, &service, &sdk_env(&r, protocol, &pki, None)).await,
            success(),
            "{protocol}"
        );
        wait_for_service(&r, &service).await;

        // The same SDK over plaintext: the handshake never happens, nothing is stored.
        let plain = format!("plain-{protocol}");
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint(&r, protocol, "http")),
            ("OTEL_EXPORTER_OTLP_INSECURE", "true".into()),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "3".into()),
        ];
        assert_eq!(send(protocol, &plain, &env).await, failure(), "{protocol} plaintext");
        assert!(!fetch_text(r.prometheus_addr).await.contains(&plain));
    }
    r.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_client_ca_the_python_sdk_needs_a_client_certificate_signed_by_it() {
    let pki = Pki::new("spindle interop ca");
    let srv = pki.server("srv", 1);
    let client = pki.client("sdk");
    let r = start_spindle(|c| {
        c.receivers.otlp.tls.cert_file = Some(srv.cert_str());
        c.receivers.otlp.tls.key_file = Some(srv.key_str());
        c.receivers.otlp.tls.client_ca_file = Some(pki.ca_str());
    })
    .await;
    for protocol in ["grpc", "http"] {
        let service = format!("mtls-{protocol}");
        let env = sdk_env(&r, protocol, &pki, Some(&client));
        assert_eq!(
            send(protocol, &service, &env).await,
            success(),
            "{protocol} with a client certificate"
        );
        wait_for_service(&r, &service).await;

        let anonymous = format!("anon-{protocol}");
        let mut env = sdk_env(&r, protocol, &pki, None);
        env.push(("OTEL_EXPORTER_OTLP_TIMEOUT", "3".into()));
        assert_eq!(
            send(protocol, &anonymous, &env).await,
            failure(),
            "{protocol} without one"
        );
        assert!(!fetch_text(r.prometheus_addr).await.contains(&anonymous));
    }
    r.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_spindle_over_https() {
    let pki = Pki::new("spindle interop ca");
    let srv = pki.server("srv", 1);
    let r = start_spindle(|c| {
        c.prometheus.tls.cert_file = Some(srv.cert_str());
        c.prometheus.tls.key_file = Some(srv.key_str());
    })
    .await;
    let prom = Prometheus::start_https(r.prometheus_addr, &pki.ca_str()).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = prom.api("/api/v1/query?query=spindle_open_connections").await;
        let found = v["data"]["result"].as_array().is_some_and(|a| !a.is_empty());
        if found {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not scrape over https: {}\n{}",
            prom.target_health().await,
            prom.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        prom.target_health().await.contains("https://"),
        "{}",
        prom.target_health().await
    );
    r.shutdown().await.unwrap();
}
