//! Cardinality control end to end, in-process on port 0, over OTLP/HTTP: folded series on
//! `/metrics`, `/api/v1/cardinality`, and a rejection reaching the sender in `partial_success`.

mod common;

use common::{counter, int_point, kv, metric, metrics_request, spindle};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use prost::Message;
use spindle::app::Running;
use spindle::config::{NormalizeKind, NormalizeRule};

/// A cumulative counter `name` with one point per `(path, value)`.
/// A request from service `shop` with one counter `name`, one integer point per `(url.path, value)`.
fn counts(name: &str, points: &[(String, i64)]) -> ExportMetricsServiceRequest {
    let points = points
        .iter()
        .map(|(path, v)| int_point(*v, vec![kv("url.path", path)]))
        .collect();
    metrics_request(
        vec![kv("service.name", "shop")],
        vec![metric(name, "", counter(points))],
    )
}

async fn post(r: &Running, req: &ExportMetricsServiceRequest) -> ExportMetricsServiceResponse {
    let resp = reqwest::Client::new()
        .post(format!("http://{}/v1/metrics", r.http_addr))
        .header("content-type", "application/x-protobuf")
        .body(req.encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    ExportMetricsServiceResponse::decode(resp.bytes().await.unwrap()).unwrap()
}

async fn get(r: &Running, path: &str) -> reqwest::Response {
    reqwest::get(format!("http://{}{path}", r.prometheus_addr))
        .await
        .unwrap()
}

#[tokio::test]
async fn folded_and_normalized_series_show_on_metrics_and_in_the_report() {
    let r = spindle(|c| {
        let card = &mut c.processors.cardinality;
        card.max_series_per_metric = 5;
        card.normalize = vec![NormalizeRule {
            labels: vec!["url_path".into()],
            kind: NormalizeKind::Uuid,
            pattern: None,
            replacement: None,
            metrics: vec!["orders*".into()],
        }];
    })
    .await;
    // Orders: 50 paths differing only by a uuid → one normalized series, exact sum.
    let orders: Vec<(String, i64)> = (0..50)
        .map(|i| (format!("/orders/00000000-0000-4000-8000-{i:012}"), i + 1))
        .collect();
    // Users: 50 distinct paths → 4 series plus the overflow series.
    let users: Vec<(String, i64)> = (0..50).map(|i| (format!("/users/u{i}"), 2)).collect();
    for _ in 0..2 {
        let resp = post(&r, &counts("orders", &orders)).await;
        assert!(resp.partial_success.is_none(), "{resp:?}");
        post(&r, &counts("users", &users)).await;
    }
    let text = get(&r, "/metrics").await.text().await.unwrap();
    let value = |prefix: &str| -> Vec<f64> {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect()
    };
    assert_eq!(
        value("orders_total{"),
        vec![(1..=50).sum::<i64>() as f64],
        "cumulative reports of merged streams add up once:\n{text}"
    );
    assert!(text.contains("url_path=\"/orders/{uuid}\""), "{text}");
    let users_total = value("users_total{");
    assert_eq!(users_total.len(), 5, "{text}");
    assert_eq!(users_total.iter().sum::<f64>(), 100.0, "{text}");
    assert_eq!(value("users_total{otel_metric_overflow=\"true\"}"), vec![92.0]);

    let resp = get(&r, "/api/v1/cardinality?limit=5").await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let report: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(report["limits"]["max_series_per_metric"], 5);
    assert_eq!(report["limits"]["normalize"][0]["kind"], "uuid");
    let top = report["top_metrics"].as_array().unwrap();
    assert_eq!(top[0]["name"], "users", "{report}");
    assert_eq!(top[0]["series"], 5);
    assert_eq!(top[0]["limits"]["max_series"], 5);
    let limited = report["limited_metrics"].as_array().unwrap();
    let users = limited.iter().find(|m| m["metric"] == "users").expect("users limited");
    assert_eq!(users["folded_by_reason"]["max_series_per_metric"], 92);
    let orders = limited
        .iter()
        .find(|m| m["metric"] == "orders")
        .expect("orders normalized");
    assert_eq!(orders["normalized_values"], 100);
    assert_eq!(report["folded_points"]["max_series_per_metric"], 92);

    let bad = get(&r, "/api/v1/cardinality?limit=many").await;
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("limit"));
    r.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_metric_without_room_is_rejected_in_partial_success_and_the_rest_is_kept() {
    let r = spindle(|c| c.processors.cardinality.max_series = 3).await;
    let two = [("/a".to_string(), 1), ("/b".to_string(), 1)];
    assert!(post(&r, &counts("first", &two)).await.partial_success.is_none());
    // `first` holds its overflow slot and two series: nothing is left for `second`.
    let mut req = counts("second", &two[..1]);
    req.resource_metrics[0].scope_metrics[0]
        .metrics
        .push(counts("first", &[("/a".into(), 5)]).resource_metrics[0].scope_metrics[0].metrics[0].clone());
    let resp = post(&r, &req).await;
    let ps = resp.partial_success.expect("partial_success");
    assert_eq!(ps.rejected_data_points, 1);
    assert!(ps.error_message.contains("max_series"), "{}", ps.error_message);
    let text = get(&r, "/metrics").await.text().await.unwrap();
    assert!(text.contains("first_total{job=\"shop\",url_path=\"/a\"} 5"), "{text}");
    assert!(!text.contains("second_total"), "{text}");
    assert!(
        text.contains("spindle_cardinality_rejected_points_total{reason=\"no_room\"} 1"),
        "{text}"
    );
    r.shutdown().await.unwrap();
}
