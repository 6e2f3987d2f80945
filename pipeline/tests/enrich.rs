//! Enrichment end to end, in-process on port 0: an enriched attribute becomes a Prometheus label
//! and a span-metrics dimension; the service catalog reloads without a restart, and a broken
//! catalog file keeps the previous one and is counted.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{counter_metric, kv, metrics_request, post_protobuf, span, spindle, traces_request};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use spindle::config::{
    CatalogConfig, Dimension, DurationStr, EnrichRule, RuleAction, RuleTarget, StaticAction, StaticAttribute,
};

/// The resource every request here comes from.
fn checkout() -> Vec<KeyValue> {
    vec![kv("service.name", "checkout")]
}

fn metrics(name: &str) -> ExportMetricsServiceRequest {
    let attrs = vec![kv("http.target", "/api/v2/orders/17"), kv("user.id", "alice")];
    metrics_request(checkout(), vec![counter_metric(name, 1, attrs)])
}

fn traces() -> ExportTraceServiceRequest {
    let span = Span {
        span_id: vec![2; 8],
        end_time_unix_nano: 1_050_000_000,
        ..span(
            "GET /api/{version}/orders",
            1,
            vec![kv("http.target", "/api/v2/orders/17")],
        )
    };
    traces_request(checkout(), vec![span])
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
    post_protobuf(&r, "/v1/metrics", metrics("orders").encode_to_vec()).await;
    post_protobuf(&r, "/v1/traces", traces().encode_to_vec()).await;
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
    post_protobuf(&r, "/v1/metrics", metrics("before").encode_to_vec()).await;
    let text = common::scrape(&r).await;
    assert!(
        line_with(&text, "before_total", &["team=\"payments\"", "tier=\"1\""]).is_some(),
        "catalog attributes from the start:\n{text}"
    );

    std::fs::write(&path, "checkout: {team: checkout-core, tier: '2'}\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        post_protobuf(&r, "/v1/metrics", metrics("after").encode_to_vec()).await;
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
    post_protobuf(&r, "/v1/metrics", metrics("broken").encode_to_vec()).await;
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
