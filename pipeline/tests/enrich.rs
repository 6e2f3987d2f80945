//! Enrichment end to end, in-process on port 0: an enriched attribute becomes a Prometheus label
//! and a span-metrics dimension; the service catalog reloads without a restart, and a broken
//! catalog file keeps the previous one and is counted.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{kv, spindle};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, span};
use prost::Message;
use spindle::app::Running;
use spindle::config::{
    CatalogConfig, Dimension, DurationStr, EnrichRule, RuleAction, RuleTarget, StaticAction, StaticAttribute,
};

fn resource() -> Option<Resource> {
    Some(Resource {
        attributes: vec![kv("service.name", "checkout")],
        ..Default::default()
    })
}

fn metrics(name: &str) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: resource(),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: name.into(),
                    data: Some(metric::Data::Sum(Sum {
                        aggregation_temporality: AggregationTemporality::Cumulative as i32,
                        is_monotonic: true,
                        data_points: vec![NumberDataPoint {
                            attributes: vec![kv("http.target", "/api/v2/orders/17"), kv("user.id", "alice")],
                            value: Some(number_data_point::Value::AsInt(1)),
                            ..Default::default()
                        }],
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn traces() -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: resource(),
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: vec![1; 16],
                    span_id: vec![2; 8],
                    name: "GET /api/{version}/orders".into(),
                    kind: span::SpanKind::Server as i32,
                    start_time_unix_nano: 1_000_000_000,
                    end_time_unix_nano: 1_050_000_000,
                    attributes: vec![kv("http.target", "/api/v2/orders/17")],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

async fn post(r: &Running, path: &str, body: Vec<u8>) {
    let resp = reqwest::Client::new()
        .post(format!("http://{}{path}", r.http_addr))
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// The sample line of `series` (a name followed by `{`) whose labels include every `label`.
fn line_with<'a>(text: &'a str, series: &str, labels: &[&str]) -> Option<&'a str> {
    text.lines()
        .find(|l| l.starts_with(&format!("{series}{{")) && labels.iter().all(|x| l.contains(x)))
}

fn extract_rule() -> EnrichRule {
    EnrichRule {
        action: RuleAction::Extract,
        key: "http.target".into(),
        value: None,
        new_key: None,
        pattern: Some(r"^/api/(?P<api_version>v\d+)/".into()),
        target: RuleTarget::Attributes,
        signals: Vec::new(),
        services: vec!["check*".into()],
        names: Vec::new(),
    }
}

fn temp_catalog(test: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("spindle-enrich-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("catalog.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn enriched_attributes_become_labels_and_span_metric_dimensions() {
    let r = spindle(|c| {
        let e = &mut c.processors.enrich;
        e.resource_attributes = vec![StaticAttribute {
            key: "team".into(),
            value: "payments".into(),
            action: StaticAction::Insert,
        }];
        let hash = EnrichRule {
            action: RuleAction::Hash,
            pattern: None,
            key: "user.id".into(),
            services: Vec::new(),
            ..extract_rule()
        };
        let drop_target = EnrichRule {
            action: RuleAction::Delete,
            pattern: None,
            ..extract_rule()
        };
        e.rules = vec![extract_rule(), hash, drop_target];
        c.prometheus.promote_resource_attributes = vec!["team".into()];
        c.processors.span_metrics.dimensions = vec![
            Dimension {
                name: "api_version".into(),
                default: None,
            },
            Dimension {
                name: "team".into(),
                default: None,
            },
        ];
    })
    .await;
    post(&r, "/v1/metrics", metrics("orders").encode_to_vec()).await;
    post(&r, "/v1/traces", traces().encode_to_vec()).await;
    let text = common::scrape(&r).await;
    let sample = line_with(&text, "orders_total", &["api_version=\"v2\"", "team=\"payments\""])
        .unwrap_or_else(|| panic!("no enriched orders_total:\n{text}"));
    assert!(!sample.contains("http_target"), "deleted after extraction: {sample}");
    assert!(!sample.contains("alice"), "user.id is hashed: {sample}");
    assert!(
        sample.contains("user_id=\"2bd806c97f0e00af1a1fc3328fa763a9269723c8db8fac4f93af71db186d6e90\""),
        "{sample}"
    );
    assert!(
        line_with(
            &text,
            "traces_span_metrics_calls_total",
            &["api_version=\"v2\"", "team=\"payments\"", "service_name=\"checkout\""]
        )
        .is_some(),
        "span metrics carry the enriched dimensions:\n{text}"
    );
    r.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_catalog_reloads_without_restart_and_a_broken_file_keeps_the_old_one() {
    let path = temp_catalog("reload", "checkout: {team: payments, tier: '1'}\n");
    let p = path.display().to_string();
    let r = spindle(|c| {
        c.processors.enrich.catalog = Some(CatalogConfig {
            path: p,
            format: None,
            reload_interval: DurationStr(Duration::from_millis(100)),
        });
        c.prometheus.promote_resource_attributes = vec!["team".into(), "tier".into()];
    })
    .await;
    post(&r, "/v1/metrics", metrics("before").encode_to_vec()).await;
    let text = common::scrape(&r).await;
    assert!(
        line_with(&text, "before_total", &["team=\"payments\"", "tier=\"1\""]).is_some(),
        "catalog attributes from the start:\n{text}"
    );

    std::fs::write(&path, "checkout: {team: checkout-core, tier: '2'}\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        post(&r, "/v1/metrics", metrics("after").encode_to_vec()).await;
        let text = common::scrape(&r).await;
        if line_with(&text, "after_total", &["team=\"checkout-core\"", "tier=\"2\""]).is_some() {
            assert!(
                text.contains("spindle_enrich_catalog_reloads_total{result=\"ok\"} 1"),
                "{text}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the new catalog never applied:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    std::fs::write(&path, "checkout: [broken\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = common::scrape(&r).await;
        if text.contains("spindle_enrich_catalog_reloads_total{result=\"error\"} 1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the broken catalog was never counted:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    post(&r, "/v1/metrics", metrics("broken").encode_to_vec()).await;
    let text = common::scrape(&r).await;
    assert!(
        line_with(&text, "broken_total", &["team=\"checkout-core\"", "tier=\"2\""]).is_some(),
        "the previous catalog stays live:\n{text}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = common::scrape(&r).await;
    assert!(
        text.contains("spindle_enrich_catalog_reloads_total{result=\"error\"} 1"),
        "an unchanged broken file is counted once:\n{text}"
    );
    r.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}
