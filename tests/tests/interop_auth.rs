//! Authentication with real peers: the OpenTelemetry Python SDK's OTLP exporters (gRPC and HTTP)
//! sending a bearer token through `OTEL_EXPORTER_OTLP_HEADERS`, refused without one, with a wrong
//! one, and for a service the token may not write; a token file change taking effect without a
//! restart; and a real Prometheus scraping `/metrics` with `basic_auth` (a bcrypt hash made here)
//! and with `authorization: {credentials_file}` (`up == 1`), and without credentials (`up == 0`).

use std::path::Path;
use std::time::{Duration, Instant};

use spindle::app::Running;
use spindle_e2e::{Prometheus, fetch_text, run_python, start_spindle};

/// Runs `send_auth.py` and returns whether the SDK's export succeeded, and its stderr.
async fn sdk_export(r: &Running, protocol: &str, service: &str, headers: Option<&str>) -> (bool, String) {
    let endpoint = match protocol {
        "grpc" => format!("http://{}", r.grpc_addr),
        _ => format!("http://{}/v1/metrics", r.http_addr),
    };
    let mut args = vec!["--protocol", protocol, "--endpoint", &endpoint, "--service", service];
    if let Some(h) = headers {
        args.extend(["--headers", h]);
    }
    let out = run_python("send_auth.py", &args, None).await;
    let line = out.stdout.lines().last().unwrap_or_default();
    let v: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("send_auth.py: {e}: {}\n{}", out.stdout, out.stderr));
    (v["result"] == "SUCCESS", out.stderr)
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[tokio::test]
async fn python_sdk_needs_a_listed_token_that_may_write_its_service() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = write(
        dir.path(),
        "tokens",
        "# the SDK's token\nsdk-tok\nshop-tok checkout-*\n",
    );
    let t = tokens.clone();
    let r = start_spindle(move |c| c.receivers.otlp.auth.bearer_tokens_file = Some(t)).await;

    for protocol in ["grpc", "http"] {
        let svc = format!("accepted-{protocol}");
        let (ok, err) = sdk_export(&r, protocol, &svc, Some("authorization=Bearer%20sdk-tok")).await;
        assert!(ok, "{protocol}: the SDK with a listed token was refused\n{err}");
        let (ok, err) = sdk_export(&r, protocol, &format!("none-{protocol}"), None).await;
        assert!(!ok, "{protocol}: accepted without a token");
        if protocol == "grpc" {
            assert!(err.contains("UNAUTHENTICATED"), "{err}");
        }
        let (ok, _) = sdk_export(
            &r,
            protocol,
            &format!("wrong-{protocol}"),
            Some("authorization=Bearer%20nope"),
        )
        .await;
        assert!(!ok, "{protocol}: accepted with a wrong token");
        let (ok, _) = sdk_export(
            &r,
            protocol,
            &format!("checkout-{protocol}"),
            Some("authorization=Bearer%20shop-tok"),
        )
        .await;
        assert!(ok, "{protocol}: the limited token could not write checkout-*");
        let (ok, err) = sdk_export(
            &r,
            protocol,
            &format!("billing-{protocol}"),
            Some("authorization=Bearer%20shop-tok"),
        )
        .await;
        assert!(!ok, "{protocol}: the limited token wrote billing");
        if protocol == "grpc" {
            assert!(err.contains("PERMISSION_DENIED"), "{err}");
        }
    }

    let text = fetch_text(r.prometheus_addr).await;
    for protocol in ["grpc", "http"] {
        for stored in ["accepted", "checkout"] {
            assert!(
                text.contains(&format!("job=\"{stored}-{protocol}\"")),
                "{stored}-{protocol}\n{text}"
            );
        }
        for refused in ["none", "wrong", "billing"] {
            assert!(
                !text.contains(&format!("job=\"{refused}-{protocol}\"")),
                "{refused}-{protocol} stored\n{text}"
            );
        }
        for (reason, n) in [("unauthenticated", 2), ("permission_denied", 1)] {
            let line = format!(
                "spindle_refused_requests_total{{signal=\"metrics\",protocol=\"{protocol}\",reason=\"{reason}\"}} {n}"
            );
            assert!(text.contains(&line), "{line}\n{text}");
        }
    }

    // A new token works once the file changes, without a restart; the old one stops working.
    std::fs::write(&tokens, "rotated-tok\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (ok, _) = sdk_export(&r, "http", "rotated", Some("authorization=Bearer%20rotated-tok")).await;
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "the rotated token was never accepted");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (ok, _) = sdk_export(&r, "grpc", "revoked", Some("authorization=Bearer%20sdk-tok")).await;
    assert!(!ok, "a removed token still works");
    r.shutdown().await.unwrap();
}

#[tokio::test]
async fn prometheus_scrapes_with_basic_auth_or_a_bearer_token_and_not_without() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = write(dir.path(), "scrape-tokens", "prom-scrape-tok\n");
    let hash = bcrypt::hash("scrape-pa55", 10).unwrap();
    let t = tokens.clone();
    let r = start_spindle(move |c| {
        c.prometheus.auth.basic_auth_users.insert("prometheus".into(), hash);
        c.prometheus.auth.bearer_tokens_file = Some(t);
    })
    .await;

    let password = write(dir.path(), "password", "scrape-pa55");
    let basic = format!(
        "    basic_auth:\n      username: prometheus\n      password_file: {}\n",
        password.display()
    );
    let credentials = write(dir.path(), "credentials", "prom-scrape-tok");
    let bearer = format!(
        "    authorization:\n      type: Bearer\n      credentials_file: {}\n",
        credentials.display()
    );
    for (what, extra, up) in [
        ("basic_auth", basic.as_str(), "1"),
        ("bearer", &bearer, "1"),
        ("none", "", "0"),
    ] {
        let prom = Prometheus::start_with(r.prometheus_addr, extra).await;
        prom.wait_for_up(up).await;
        if up == "1" {
            let v = prom.api("/api/v1/query?query=spindle_received_requests_total").await;
            assert!(
                v["data"]["result"].as_array().is_some_and(|a| !a.is_empty()),
                "{what}: no Spindle metric in Prometheus: {v}"
            );
        } else {
            let health = prom.target_health().await;
            assert!(health.contains("401"), "{what}: {health}");
        }
    }

    // /healthz stays open, and `spindle healthcheck`'s probe works.
    let resp = reqwest::get(format!("http://{}/healthz", r.prometheus_addr))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    r.shutdown().await.unwrap();
}
