//! The status page (`GET /`, `GET /explore?metric=`) of a real Spindle over HTTP: behind
//! `prometheus.auth` like `/metrics` (refused without a credential, served with basic auth or a
//! bearer token, `/healthz` open); the configuration it shows has its secrets redacted; its
//! figures are what `/metrics` and `/api/v1/cardinality` say after real OTLP traffic; a label
//! value written by a sender reaches it escaped.

mod common;

use std::collections::BTreeMap;

use common::*;
use prost::Message;

fn token_file(text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("spindle-page-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tokens");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn status_page_is_behind_prometheus_auth() {
    let tokens = token_file("page-tok\n");
    let hash = bcrypt::hash("pa55", 4).unwrap();
    let r = spindle(move |c| {
        c.prometheus.auth.bearer_tokens_file = Some(tokens);
        c.prometheus.auth.basic_auth_users.insert("prom".into(), hash);
    })
    .await;
    let client = reqwest::Client::new();
    let get = |route: &str| client.get(format!("http://{}{route}", r.prometheus_addr));
    for route in ["/", "/?top=5", "/explore?metric=spindle_anything"] {
        let resp = get(route).send().await.unwrap();
        assert_eq!(resp.status(), 401, "{route} without a credential");
        assert_eq!(resp.headers()["www-authenticate"], "Basic realm=\"spindle\"");
        let body = resp.text().await.unwrap();
        assert!(
            !body.contains("<html"),
            "{route}: nothing of the page without a credential"
        );
        let resp = get(route).basic_auth("prom", Some("wrong")).send().await.unwrap();
        assert_eq!(resp.status(), 401, "{route} with a wrong password");
        let resp = get(route).bearer_auth("wrong").send().await.unwrap();
        assert_eq!(resp.status(), 401, "{route} with a wrong token");
    }
    let resp = get("/").basic_auth("prom", Some("pa55")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().starts_with("<!DOCTYPE html>"));
    let resp = get("/").bearer_auth("page-tok").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    // Known metric or not, the metric view answers once authenticated.
    let resp = get("/explore?metric=none")
        .bearer_auth("page-tok")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(get("/healthz").send().await.unwrap().status(), 200);
    r.shutdown().await.unwrap();
}

/// `name{labels}` → value of the text-format samples of `text`.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

#[tokio::test]
async fn status_page_shows_real_traffic_and_no_secret() {
    let r = spindle(|c| {
        c.processors.cardinality.max_series_per_metric = 4;
        c.exporters.remote_write.endpoint = Some(format!("http://scraper:hunter2@{}/api/v1/write", closed_port()));
        c.exporters
            .remote_write
            .headers
            .insert("authorization".into(), "Bearer sekrit-token".into());
        c.exporters.remote_write.shutdown_timeout = spindle::config::DurationStr(std::time::Duration::from_millis(200));
    })
    .await;
    let points: Vec<_> = (0..10)
        .map(|i| int_point(i + 1, vec![kv("path", format!("<script>alert({i})</script>"))]))
        .collect();
    let req = metrics_request(
        vec![kv("service.name", "shop")],
        vec![metric("page.hits", "1", counter(points))],
    );
    post_protobuf(&r, "/v1/metrics", req.encode_to_vec()).await;

    let base = format!("http://{}", r.prometheus_addr);
    let page = reqwest::get(format!("{base}/")).await.unwrap().text().await.unwrap();
    for secret in ["hunter2", "sekrit-token"] {
        assert!(!page.contains(secret), "the page shows `{secret}`");
    }
    assert!(
        page.contains("http://&lt;redacted&gt;@127.0.0.1:"),
        "the endpoint, redacted"
    );
    assert!(page.contains("authorization: &lt;redacted&gt;"), "the header, redacted");

    // The top metric and its series count are the cardinality report's.
    let report: serde_json::Value = reqwest::get(format!("{base}/api/v1/cardinality"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let top = &report["top_metrics"][0];
    let row = format!(
        "<a href=\"/explore?metric={0}\">{0}</a></th><td class=\"n series\" data-value=\"{1}\">",
        top["name"].as_str().unwrap(),
        top["series"]
    );
    assert!(page.contains(&row), "{row} in {page}");
    assert_eq!(top["name"], "page_hits_total".trim_end_matches("_total"));

    // Received items as /metrics counts them.
    let metrics = samples(&scrape(&r).await);
    let items = metrics["spindle_received_items_total{signal=\"metrics\",protocol=\"http\"}"];
    assert_eq!(items, 10.0);
    assert!(page.contains(&format!("data-value=\"{items}\"")), "{page}");

    // The metric view: the sender's label values escaped, the overflow series shown.
    // The limiter forgets its example folded label set on its expiry sweeps (one runs at start):
    // send again until a fold happened after the last sweep.
    let mut view = String::new();
    for _ in 0..50 {
        view = reqwest::get(format!("{base}/explore?metric=page_hits"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if view.contains("id=\"example\"") {
            break;
        }
        post_protobuf(&r, "/v1/metrics", req.encode_to_vec()).await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(!view.contains("<script>alert"), "{view}");
    assert!(view.contains("&lt;script&gt;alert("), "{view}");
    let metrics = samples(&scrape(&r).await);
    let overflow = metrics["page_hits_total{otel_metric_overflow=\"true\"}"];
    let shown = "page_hits_total{otel_metric_overflow=&quot;true&quot;} ";
    let at = view
        .find(shown)
        .unwrap_or_else(|| panic!("no overflow series in {view}"))
        + shown.len();
    let value: f64 = view[at..].split('\n').next().unwrap().parse().unwrap();
    assert_eq!(value, overflow);
    assert!(overflow > 0.0);
    r.shutdown().await.unwrap();
}
