//! Authentication, in-process: bearer tokens on the OTLP receivers (gRPC and HTTP: 401 /
//! `UNAUTHENTICATED` before anything is decoded, 403 / `PERMISSION_DENIED` for a service the token
//! may not write, `partial_success` for a mixed request, reload without restart), and basic auth
//! and bearer tokens on the Prometheus endpoint with `/healthz` and `/readyz` open.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use spindle::app::Running;

fn token_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("spindle-auth-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tokens");
    std::fs::write(&path, text).unwrap();
    path
}

fn metrics_for(services: &[&str]) -> ExportMetricsServiceRequest {
    let mut req = ExportMetricsServiceRequest::default();
    for s in services {
        let name = format!("{}_orders", s.replace('-', "_"));
        req.resource_metrics.extend(
            metrics_request(vec![kv("service.name", *s)], vec![counter_metric(&name, 3, vec![])]).resource_metrics,
        );
    }
    req
}

async fn post(r: &Running, path: &str, token: Option<&str>, body: Vec<u8>) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(format!("http://{}{path}", r.http_addr))
        .header("content-type", "application/x-protobuf")
        .body(body);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    req.send().await.unwrap()
}

async fn grpc_export(
    r: &Running,
    token: Option<&str>,
    req: ExportMetricsServiceRequest,
) -> Result<ExportMetricsServiceResponse, tonic::Status> {
    let mut client = MetricsServiceClient::connect(format!("http://{}", r.grpc_addr))
        .await
        .unwrap();
    let mut req = tonic::Request::new(req);
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    client.export(req).await.map(|r| r.into_inner())
}

#[tokio::test]
async fn receivers_require_a_listed_token_and_limit_services() {
    let path = token_file("recv", "# tokens\nopen-tok\n\nlimited-tok checkout-*,cart\n");
    let p = path.clone();
    let r = spindle(move |c| c.receivers.otlp.auth.bearer_tokens_file = Some(p)).await;

    // No token, a wrong one, another scheme: 401 with the challenge, nothing stored.
    for token in [None, Some("wrong"), Some("open-to")] {
        let resp = post(&r, "/v1/metrics", token, metrics_for(&["nope"]).encode_to_vec()).await;
        assert_eq!(resp.status(), 401, "{token:?}");
        assert_eq!(resp.headers()["www-authenticate"], "Bearer");
        let err = grpc_export(&r, token, metrics_for(&["nope"])).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{token:?}");
    }
    // A malformed body with no token is 401, not 400: the token is checked before decoding.
    let resp = post(&r, "/v1/metrics", None, b"\xff\xff garbage".to_vec()).await;
    assert_eq!(resp.status(), 401);

    // A token for any service.
    let resp = post(
        &r,
        "/v1/metrics",
        Some("open-tok"),
        metrics_for(&["billing"]).encode_to_vec(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    grpc_export(&r, Some("open-tok"), metrics_for(&["other"]))
        .await
        .unwrap();

    // A limited token writing only what it may not: 403 / PERMISSION_DENIED naming the service.
    let resp = post(
        &r,
        "/v1/metrics",
        Some("limited-tok"),
        metrics_for(&["payments"]).encode_to_vec(),
    )
    .await;
    assert_eq!(resp.status(), 403);
    let body = resp.bytes().await.unwrap();
    let st = tonic_types::Status::decode(body).unwrap();
    assert!(st.message.contains("\"payments\""), "{}", st.message);
    let err = grpc_export(&r, Some("limited-tok"), metrics_for(&["payments"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    // A mixed request keeps what it may write and reports the rest.
    let out = grpc_export(
        &r,
        Some("limited-tok"),
        metrics_for(&["checkout-eu", "payments", "cart"]),
    )
    .await
    .unwrap();
    let ps = out.partial_success.unwrap();
    assert_eq!(ps.rejected_data_points, 1);
    assert!(ps.error_message.contains("\"payments\""), "{}", ps.error_message);

    // Traces over protobuf (the in-place path for other tokens) are filtered too.
    let spans = |s: &str| traces_request(vec![kv("service.name", s)], vec![span("GET /", 1, vec![])]);
    let mut mixed = spans("checkout-us");
    mixed.resource_spans.extend(spans("payments").resource_spans);
    let resp = post(&r, "/v1/traces", Some("limited-tok"), mixed.encode_to_vec()).await;
    assert_eq!(resp.status(), 200);
    let out = ExportTraceServiceResponse::decode(resp.bytes().await.unwrap()).unwrap();
    assert_eq!(out.partial_success.map(|p| p.rejected_spans), Some(1));
    let resp = post(&r, "/v1/traces", Some("limited-tok"), spans("payments").encode_to_vec()).await;
    assert_eq!(resp.status(), 403);

    let text = scrape(&r).await;
    assert!(text.contains("billing_orders_total{job=\"billing\"}"), "{text}");
    assert!(text.contains("checkout_eu_orders_total{job=\"checkout-eu\"}"), "{text}");
    assert!(text.contains("cart_orders_total{job=\"cart\"}"), "{text}");
    assert!(
        !text.contains("nope_orders") && !text.contains("payments_orders"),
        "{text}"
    );
    assert!(text.contains("service_name=\"checkout-us\""), "{text}");
    assert!(!text.contains("service_name=\"payments\""), "{text}");
    for line in [
        "spindle_refused_requests_total{signal=\"metrics\",protocol=\"http\",reason=\"unauthenticated\"} 4",
        "spindle_refused_requests_total{signal=\"metrics\",protocol=\"grpc\",reason=\"unauthenticated\"} 3",
        "spindle_refused_requests_total{signal=\"metrics\",protocol=\"http\",reason=\"permission_denied\"} 1",
        "spindle_refused_requests_total{signal=\"metrics\",protocol=\"grpc\",reason=\"permission_denied\"} 1",
        "spindle_refused_requests_total{signal=\"traces\",protocol=\"http\",reason=\"permission_denied\"} 1",
        "spindle_rejected_items_total{signal=\"metrics\",protocol=\"grpc\"} 1",
        "spindle_rejected_items_total{signal=\"traces\",protocol=\"http\"} 1",
    ] {
        assert!(text.contains(line), "{line}\n{text}");
    }
    r.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_changed_token_file_takes_effect_without_restart() {
    let path = token_file("reload", "first-tok\n");
    let p = path.clone();
    let r = spindle(move |c| c.receivers.otlp.auth.bearer_tokens_file = Some(p)).await;
    let body = metrics_for(&["svc"]).encode_to_vec();
    assert_eq!(
        post(&r, "/v1/metrics", Some("first-tok"), body.clone()).await.status(),
        200
    );
    std::fs::write(&path, "second-tok\n# first-tok revoked\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while post(&r, "/v1/metrics", Some("second-tok"), body.clone()).await.status() != 200 {
        assert!(Instant::now() < deadline, "the new token was never accepted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        post(&r, "/v1/metrics", Some("first-tok"), body.clone()).await.status(),
        401
    );
    // A broken file keeps the previous tokens.
    std::fs::write(&path, "x a,,b\n").unwrap();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(post(&r, "/v1/metrics", Some("second-tok"), body).await.status(), 200);
    r.shutdown().await.unwrap();
}

#[tokio::test]
async fn prometheus_endpoint_requires_basic_auth_or_a_token_but_health_stays_open() {
    let path = token_file("prom", "scrape-tok some-glob-ignored\n");
    let hash = bcrypt::hash("pa55", 4).unwrap();
    let p = path.clone();
    let r = spindle(move |c| {
        c.prometheus.auth.bearer_tokens_file = Some(p);
        c.prometheus.auth.basic_auth_users.insert("prom".into(), hash);
    })
    .await;
    let client = reqwest::Client::new();
    let get = |route: &str| client.get(format!("http://{}{route}", r.prometheus_addr));
    for route in ["/healthz", "/readyz"] {
        assert_eq!(get(route).send().await.unwrap().status(), 200, "{route}");
    }
    for route in ["/metrics", "/api/v1/cardinality", "/nothing-here"] {
        let resp = get(route).send().await.unwrap();
        assert_eq!(resp.status(), 401, "{route}");
        assert_eq!(resp.headers()["www-authenticate"], "Basic realm=\"spindle\"");
        let resp = get(route).basic_auth("prom", Some("wrong")).send().await.unwrap();
        assert_eq!(resp.status(), 401, "{route}");
        let resp = get(route).bearer_auth("wrong").send().await.unwrap();
        assert_eq!(resp.status(), 401, "{route}");
    }
    for _ in 0..3 {
        let resp = get("/metrics").basic_auth("prom", Some("pa55")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.text().await.unwrap().contains("spindle_"));
    }
    let resp = get("/metrics").bearer_auth("scrape-tok").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let resp = get("/api/v1/cardinality")
        .bearer_auth("scrape-tok")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    r.shutdown().await.unwrap();
}

#[test]
fn validate_names_unreadable_token_files_and_bad_hashes() {
    let mut c = config(|_| {});
    c.receivers.otlp.auth.bearer_tokens_file = Some("/nonexistent/spindle-tokens".into());
    c.prometheus.auth.bearer_tokens_file = Some(token_file("bad", "tok a,,b\n"));
    c.prometheus
        .auth
        .basic_auth_users
        .insert("prom".into(), "plaintext".into());
    let p = c.validate();
    let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
    assert!(paths.contains(&"receivers.otlp.auth.bearer_tokens_file"), "{p:?}");
    assert!(paths.contains(&"prometheus.auth.bearer_tokens_file"), "{p:?}");
    assert!(paths.contains(&"prometheus.auth.basic_auth_users.prom"), "{p:?}");
    let text = format!("{p:?}");
    assert!(!text.contains("plaintext") && !text.contains("tok a"), "{text}");
}

const BIN: &str = env!("CARGO_BIN_EXE_spindle");

/// `spindle healthcheck` keeps working behind `prometheus.auth` (it probes `/healthz`), and
/// `print-config` shows the token files' paths, never a token or a password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_works_and_print_config_shows_no_secret() {
    let tokens = token_file("cli", "SECRET-TOK-1 checkout-*\n");
    let hash = bcrypt::hash("SECRET-PASS", 4).unwrap();
    let (t, h) = (tokens.clone(), hash.clone());
    let r = spindle(move |c| {
        c.prometheus.auth.basic_auth_users.insert("prom".into(), h);
        c.prometheus.auth.bearer_tokens_file = Some(t.clone());
        c.receivers.otlp.auth.bearer_tokens_file = Some(t);
    })
    .await;
    let url = format!("http://{}/healthz", r.prometheus_addr);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .args(["healthcheck", "--url", &url])
            .env_remove("SPINDLE_CONFIG")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    r.shutdown().await.unwrap();

    let cfg = tokens.with_file_name("spindle.yaml");
    std::fs::write(
        &cfg,
        format!(
            "receivers:\n  otlp:\n    auth:\n      bearer_tokens_file: {0}\nprometheus:\n  auth:\n    bearer_tokens_file: {0}\n    basic_auth_users: {{prom: '{1}'}}\n",
            tokens.display(),
            hash
        ),
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["print-config", "--config", cfg.to_str().unwrap()])
        .env_remove("SPINDLE_CONFIG")
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(printed.matches(tokens.to_str().unwrap()).count(), 2, "{printed}");
    assert!(!printed.contains("SECRET") && !printed.contains(&hash), "{printed}");
    assert!(printed.contains("prom: <redacted>"), "{printed}");
}
