//! Unit tests of the enrichment rules, scopes, targets and catalog.

use std::io::Write as _;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{NumberDataPoint, metric};
use opentelemetry_proto::tonic::trace::v1::Span;

use super::*;
use crate::config::{CatalogConfig, DurationStr, EnrichRule, StaticAttribute};
use crate::testing::{self, enrich_rule as rule, kv};

fn with_value(mut r: EnrichRule, v: &str) -> EnrichRule {
    r.value = Some(v.into());
    r
}

fn enricher(rules: Vec<EnrichRule>) -> Enricher {
    Enricher::new(&EnrichConfig {
        rules,
        ..Default::default()
    })
    .unwrap()
}

/// One gauge point without a value, with `attrs`, from `service`.
fn metrics(service: &str, name: &str, attrs: Vec<KeyValue>) -> ExportMetricsServiceRequest {
    let point = NumberDataPoint {
        attributes: attrs,
        ..Default::default()
    };
    let gauge = testing::metric(name, "", testing::gauge(vec![point]));
    testing::metrics_request(vec![kv("service.name", service)], vec![gauge])
}

/// One span with `attrs` and nothing else, from `service`.
fn traces(service: &str, name: &str, attrs: Vec<KeyValue>) -> ExportTraceServiceRequest {
    let span = Span {
        name: name.into(),
        attributes: attrs,
        ..Default::default()
    };
    testing::traces_request(vec![kv("service.name", service)], vec![span])
}

/// The point's attributes as `(key, text)` pairs.
fn point(req: &ExportMetricsServiceRequest) -> Vec<(String, String)> {
    let Some(metric::Data::Gauge(g)) = &req.resource_metrics[0].scope_metrics[0].metrics[0].data else {
        panic!("gauge expected")
    };
    pairs(&g.data_points[0].attributes)
}

fn resource(req: &ExportMetricsServiceRequest) -> Vec<(String, String)> {
    pairs(&req.resource_metrics[0].resource.as_ref().unwrap().attributes)
}

fn span(req: &ExportTraceServiceRequest) -> Vec<(String, String)> {
    pairs(&req.resource_spans[0].scope_spans[0].spans[0].attributes)
}

fn pairs(attrs: &[KeyValue]) -> Vec<(String, String)> {
    attrs
        .iter()
        .map(|kv| {
            let v = kv
                .value
                .as_ref()
                .and_then(value_text)
                .map(Cow::into_owned)
                .unwrap_or_default();
            (kv.key.clone(), v)
        })
        .collect()
}

fn p(k: &str, v: &str) -> (String, String) {
    (k.into(), v.into())
}

fn run(rules: Vec<EnrichRule>, attrs: Vec<KeyValue>) -> Vec<(String, String)> {
    let mut req = metrics("svc", "m", attrs);
    enricher(rules).metrics(&mut req);
    point(&req)
}

#[test]
fn insert_only_when_absent() {
    let r = with_value(rule(RuleAction::Insert, "env"), "prod");
    assert_eq!(run(vec![r.clone()], vec![]), vec![p("env", "prod")]);
    assert_eq!(run(vec![r], vec![kv("env", "dev")]), vec![p("env", "dev")]);
}

#[test]
fn upsert_always() {
    let r = with_value(rule(RuleAction::Upsert, "env"), "prod");
    assert_eq!(run(vec![r.clone()], vec![]), vec![p("env", "prod")]);
    assert_eq!(run(vec![r], vec![kv("env", "dev")]), vec![p("env", "prod")]);
}

#[test]
fn update_only_when_present() {
    let r = with_value(rule(RuleAction::Update, "env"), "prod");
    assert_eq!(run(vec![r.clone()], vec![]), vec![]);
    assert_eq!(run(vec![r], vec![kv("env", "dev")]), vec![p("env", "prod")]);
}

#[test]
fn delete_removes_the_key() {
    let r = rule(RuleAction::Delete, "user.email");
    assert_eq!(
        run(vec![r], vec![kv("user.email", "a@b"), kv("x", "1")]),
        vec![p("x", "1")]
    );
}

#[test]
fn rename_moves_the_value_and_replaces_the_target() {
    let mut r = rule(RuleAction::Rename, "route");
    r.new_key = Some("http.route".into());
    assert_eq!(
        run(vec![r.clone()], vec![kv("route", "/a"), kv("http.route", "old")]),
        vec![p("http.route", "/a")]
    );
    assert_eq!(
        run(vec![r], vec![kv("x", "1")]),
        vec![p("x", "1")],
        "absent key: nothing"
    );
}

#[test]
fn hash_replaces_the_value_with_its_sha256_hex() {
    let r = rule(RuleAction::Hash, "user.id");
    let got = run(vec![r], vec![kv("user.id", "abc")]);
    assert_eq!(
        got,
        vec![p(
            "user.id",
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        )]
    );
    let int = KeyValue {
        key: "n".into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(42)),
        }),
        ..Default::default()
    };
    let got = run(vec![rule(RuleAction::Hash, "n")], vec![int]);
    assert_eq!(got[0].1.len(), 64, "ints hash their decimal text");
}

#[test]
fn extract_turns_named_groups_into_attributes() {
    let mut r = rule(RuleAction::Extract, "http.target");
    r.pattern = Some(r"^/api/(?P<api_version>v\d+)/(?P<resource>\w+)".into());
    assert_eq!(
        run(vec![r.clone()], vec![kv("http.target", "/api/v2/orders/17")]),
        vec![
            p("http.target", "/api/v2/orders/17"),
            p("api_version", "v2"),
            p("resource", "orders")
        ]
    );
    assert_eq!(
        run(vec![r], vec![kv("http.target", "/health")]),
        vec![p("http.target", "/health")],
        "no match: nothing added"
    );
}

#[test]
fn rules_apply_in_order() {
    let mut rename = rule(RuleAction::Rename, "uid");
    rename.new_key = Some("user.id".into());
    let got = run(vec![rename, rule(RuleAction::Hash, "user.id")], vec![kv("uid", "abc")]);
    assert_eq!(got[0].0, "user.id");
    assert_eq!(got[0].1.len(), 64);
}

#[test]
fn signal_scope() {
    let mut r = with_value(rule(RuleAction::Insert, "k"), "v");
    r.signals = vec![Signal::Traces];
    let e = enricher(vec![r]);
    let mut m = metrics("svc", "op", vec![]);
    e.metrics(&mut m);
    assert_eq!(point(&m), vec![]);
    let mut t = traces("svc", "op", vec![]);
    e.traces(&mut t);
    assert_eq!(span(&t), vec![p("k", "v")]);
}

#[test]
fn service_glob_scope() {
    let mut r = with_value(rule(RuleAction::Insert, "k"), "v");
    r.services = vec!["checkout-*".into(), "pay?".into()];
    let e = enricher(vec![r]);
    for (service, hit) in [
        ("checkout-api", true),
        ("pays", true),
        ("payments", false),
        ("cart", false),
    ] {
        let mut t = traces(service, "op", vec![]);
        e.traces(&mut t);
        assert_eq!(span(&t).len(), usize::from(hit), "{service}");
    }
}

#[test]
fn name_glob_scope() {
    let mut r = with_value(rule(RuleAction::Insert, "k"), "v");
    r.names = vec!["http.server.*".into()];
    let e = enricher(vec![r]);
    let mut m = metrics("svc", "http.server.duration", vec![]);
    e.metrics(&mut m);
    assert_eq!(point(&m), vec![p("k", "v")]);
    let mut m = metrics("svc", "db.client.duration", vec![]);
    e.metrics(&mut m);
    assert_eq!(point(&m), vec![]);
    let mut t = traces("svc", "GET /a", vec![]);
    e.traces(&mut t);
    assert_eq!(span(&t), vec![], "span names are scoped too");
}

#[test]
fn resource_target_edits_the_resource_not_the_points() {
    let mut r = with_value(rule(RuleAction::Upsert, "team"), "payments");
    r.target = RuleTarget::Resource;
    let mut m = metrics("svc", "m", vec![]);
    enricher(vec![r]).metrics(&mut m);
    assert_eq!(resource(&m), vec![p("service.name", "svc"), p("team", "payments")]);
    assert_eq!(point(&m), vec![]);
}

#[test]
fn static_resource_attributes_insert_or_upsert() {
    let e = Enricher::new(&EnrichConfig {
        resource_attributes: vec![
            StaticAttribute {
                key: "env".into(),
                value: "prod".into(),
                action: StaticAction::Insert,
            },
            StaticAttribute {
                key: "region".into(),
                value: "eu".into(),
                action: StaticAction::Upsert,
            },
        ],
        ..Default::default()
    })
    .unwrap();
    let mut m = metrics("svc", "m", vec![]);
    m.resource_metrics[0]
        .resource
        .as_mut()
        .unwrap()
        .attributes
        .extend([kv("env", "dev"), kv("region", "us")]);
    e.metrics(&mut m);
    assert_eq!(
        resource(&m),
        vec![p("service.name", "svc"), p("env", "dev"), p("region", "eu")]
    );
}

#[test]
fn default_config_is_a_noop() {
    let e = Enricher::new(&EnrichConfig::default()).unwrap();
    assert!(e.is_noop());
    let mut m = metrics("svc", "m", vec![kv("a", "b")]);
    let before = m.clone();
    e.metrics(&mut m);
    assert_eq!(m, before);
}

#[test]
fn catalogs_parse_from_yaml_and_csv() {
    let y = Catalog::parse(
        "checkout:\n  team: payments\n  tier: 1\ncart: {team: shop}\n",
        CatalogFormat::Yaml,
    )
    .unwrap();
    assert_eq!(
        pairs(y.get("checkout").unwrap()),
        vec![p("team", "payments"), p("tier", "1")]
    );
    assert_eq!(y.len(), 2);
    let c = Catalog::parse(
        "service.name,team,tier,owner\ncheckout,payments,1,\"Doe, Jane\"\ncart,shop,,\n",
        CatalogFormat::Csv,
    )
    .unwrap();
    assert_eq!(
        pairs(c.get("checkout").unwrap()),
        vec![p("team", "payments"), p("tier", "1"), p("owner", "Doe, Jane")]
    );
    assert_eq!(
        pairs(c.get("cart").unwrap()),
        vec![p("team", "shop")],
        "empty cells are left out"
    );
    assert!(Catalog::parse("team,service.name\n", CatalogFormat::Csv).is_err());
    assert!(
        Catalog::parse("service.name,team\na,b,c\n", CatalogFormat::Csv)
            .unwrap_err()
            .contains("line 2")
    );
    assert!(Catalog::parse("checkout: [1, 2]\n", CatalogFormat::Yaml).is_err());
}

#[test]
fn catalog_inserts_without_overwriting_and_reloads_keep_the_old_one_on_error() {
    let dir = std::env::temp_dir().join(format!("spindle-enrich-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("catalog.yaml");
    let write = |text: &str| {
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(text.as_bytes()).unwrap();
    };
    write("svc: {team: payments, tier: '1'}\n");
    let e = Enricher::new(&EnrichConfig {
        catalog: Some(CatalogConfig {
            path: path.display().to_string(),
            format: None,
            reload_interval: DurationStr(std::time::Duration::from_secs(1)),
        }),
        ..Default::default()
    })
    .unwrap();
    let mut m = metrics("svc", "m", vec![]);
    m.resource_metrics[0]
        .resource
        .as_mut()
        .unwrap()
        .attributes
        .push(kv("tier", "0"));
    e.metrics(&mut m);
    assert_eq!(
        resource(&m),
        vec![p("service.name", "svc"), p("tier", "0"), p("team", "payments")],
        "catalog inserts, never overwrites"
    );

    let handle = e.catalog().unwrap();
    assert!(handle.reload().is_none(), "unchanged file: nothing to do");
    write("svc: {team: checkout}\n");
    assert_eq!(handle.reload().unwrap().unwrap(), 1);
    let mut m = metrics("svc", "m", vec![]);
    e.metrics(&mut m);
    assert_eq!(resource(&m), vec![p("service.name", "svc"), p("team", "checkout")]);

    write("svc: [not, a, mapping\n");
    assert!(handle.reload().unwrap().is_err());
    assert!(handle.reload().is_none(), "a bad file is reported once");
    let mut m = metrics("svc", "m", vec![]);
    e.metrics(&mut m);
    assert_eq!(
        resource(&m),
        vec![p("service.name", "svc"), p("team", "checkout")],
        "old catalog kept"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_pattern_fails_the_build() {
    let mut r = rule(RuleAction::Extract, "k");
    r.pattern = Some("(?P<x>".into());
    assert!(matches!(
        Enricher::new(&EnrichConfig {
            rules: vec![r],
            ..Default::default()
        }),
        Err(EnrichError::Pattern { index: 0, .. })
    ));
}

#[test]
fn a_resource_left_out_stays_out_unless_enrichment_fills_it() {
    // A span rule that matches nothing: the request must come out as it went in.
    let mut r = with_value(rule(RuleAction::Insert, "env"), "prod");
    r.names = vec!["no-such-span".into()];
    let e = enricher(vec![r]);
    let mut spans = traces("svc", "op", vec![]);
    spans.resource_spans[0].resource = None;
    let sent = spans.clone();
    e.traces(&mut spans);
    assert_eq!(spans, sent, "no empty resource is added");
    let mut points = metrics("svc", "m", vec![]);
    points.resource_metrics[0].resource = None;
    let sent = points.clone();
    e.metrics(&mut points);
    assert_eq!(points, sent, "no empty resource is added");
    // A static attribute does fill it.
    let e = Enricher::new(&EnrichConfig {
        resource_attributes: vec![StaticAttribute {
            key: "team".into(),
            value: "core".into(),
            action: Default::default(),
        }],
        ..Default::default()
    })
    .unwrap();
    e.traces(&mut spans);
    let attrs = &spans.resource_spans[0]
        .resource
        .as_ref()
        .expect("a resource")
        .attributes;
    assert_eq!(pairs(attrs), vec![p("team", "core")]);
}
