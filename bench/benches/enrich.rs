//! Enrichment cost per data point: a 1,100-point metrics request (1,000 counter points and 100
//! histogram points, 5 attributes each) through the default (no-op) enricher and through five
//! rules (extract by regex, upsert, hash, rename, delete scoped by service glob) plus a static
//! resource attribute; translation of the same request for scale.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use spindle::config::{EnrichConfig, RuleAction, StaticAction, StaticAttribute};
use spindle::process::enrich::Enricher;
use spindle::process::translate::Translator;
use spindle::testing::enrich_rule as rule;
use spindle_bench::metrics_request;

fn five_rules() -> EnrichConfig {
    let mut extract = rule(RuleAction::Extract, "http.route");
    extract.pattern = Some(r"^/api/(?P<api_version>v\d+)/".into());
    let mut upsert = rule(RuleAction::Upsert, "env");
    upsert.value = Some("prod".into());
    let mut rename = rule(RuleAction::Rename, "http.status_code");
    rename.new_key = Some("http.response.status_code".into());
    let mut delete = rule(RuleAction::Delete, "region");
    delete.services = vec!["check*".into()];
    EnrichConfig {
        resource_attributes: vec![StaticAttribute {
            key: "deployment.environment".into(),
            value: "prod".into(),
            action: StaticAction::Insert,
        }],
        rules: vec![extract, upsert, rule(RuleAction::Hash, "shard"), rename, delete],
        catalog: None,
    }
}

fn enrich(c: &mut Criterion) {
    let req = metrics_request(1000, 0);
    let noop = Enricher::new(&EnrichConfig::default()).expect("default config builds");
    let rules = Enricher::new(&five_rules()).expect("bench rules build");
    let translator = Translator::default();
    let mut g = c.benchmark_group("enrich");
    g.throughput(Throughput::Elements(1100));
    g.bench_function("default (no-op), 1100 points", |b| {
        b.iter_batched(
            || req.clone(),
            |mut r| {
                noop.metrics(&mut r);
                r
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("5 rules + static attribute, 1100 points", |b| {
        b.iter_batched(
            || req.clone(),
            |mut r| {
                rules.metrics(&mut r);
                r
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("translate (for scale), 1100 points", |b| {
        b.iter_batched(|| req.clone(), |r| translator.translate(r), BatchSize::LargeInput)
    });
    for (name, i) in [("extract", 0), ("upsert", 1), ("hash", 2), ("rename", 3), ("delete", 4)] {
        let mut one = five_rules();
        one.resource_attributes.clear();
        one.rules = vec![one.rules.swap_remove(i)];
        let e = Enricher::new(&one).expect("bench rule builds");
        g.bench_function(format!("only {name}, 1100 points"), |b| {
            b.iter_batched(
                || req.clone(),
                |mut r| {
                    e.metrics(&mut r);
                    r
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, enrich);
criterion_main!(benches);
