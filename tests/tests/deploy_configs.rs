//! The deployment files — `Dockerfile`, `docker-compose.yml` and everything in `collector-config/`
//! — checked by their own tools where this machine has them, and against each other and against
//! a running Spindle where it has not.
//!
//! - `spindle.yaml`: Spindle's real config loader (`Config::from_yaml_with_env`, the code behind
//!   `spindle validate`), every key `spindle print-config` prints present and documented.
//! - `prometheus.yml` and `alerts/*.yml`: `promtool check config` / `promtool check rules`.
//! - Grafana: datasources and dashboard provider parsed; dashboards parsed as JSON, every panel on
//!   a provisioned datasource, exemplars on the latency panels.
//! - Every metric name (and label) the dashboards and alert rules query is produced by Spindle: an
//!   in-process Spindle is fed the demo service's metrics over OTLP and spans through a tonic
//!   `TraceServiceClient`, and its OpenMetrics `/metrics` must show them. Exceptions: the series
//!   Prometheus makes itself (`up`, `scrape_samples_scraped`) and the rules' own recorded series.
//! - `otelcol-agent.yaml`: parsed (no `otelcol-contrib` here): loadbalancing by service to
//!   Spindle's OTLP/gRPC port. `spindle.service`: parsed for the hardening keys and checked
//!   with `systemd-analyze verify` when the machine has it.
//! - `docker-compose.yml` (no Docker engine here): services, ports, mounted files, build targets
//!   and every hostname/port the configs use agree. The secured setup, with the files
//!   `collector-config/gen-secrets.sh` makes in a temporary directory: every secret a service reads
//!   is followed through `secrets-init` to a generated file, owned by the service's user and
//!   mounted read-only; Spindle's config as compose sets it validates with TLS on, tokens on OTLP
//!   and basic auth on `/metrics`; each demo service sends over TLS with its own limited token;
//!   Prometheus scrapes over https with the password whose hash Spindle holds; Grafana is not
//!   anonymous; every port is published on 127.0.0.1 only; the script prints no secret.
//!   `Dockerfile`: stages, `EXPOSE`, non-root `USER`, `HEALTHCHECK`, the config it copies.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Exemplar, Histogram, HistogramDataPoint, Metric, NumberDataPoint, Sum, exemplar, metric,
    number_data_point,
};
use opentelemetry_proto::tonic::trace::v1::{Span, Status};
use serde_yaml_ng::Value;
use spindle::config::Config;
use spindle::testing::{self, int_kv, kv};
use spindle_e2e::{
    gen_secrets, peer_binary, read_env_file, run_process, start_spindle, wait_for_openmetrics, workspace_root,
};

// ---------------------------------------------------------------------------------------------
// files

fn path(rel: &str) -> PathBuf {
    workspace_root().join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(path(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

fn yaml(rel: &str) -> Value {
    serde_yaml_ng::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not valid YAML: {e}"))
}

fn json(rel: &str) -> serde_json::Value {
    serde_json::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not valid JSON: {e}"))
}

/// Files in `dir` (relative to the workspace) whose name ends with `suffix`, sorted.
fn files_in(dir: &str, suffix: &str) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(path(dir))
        .unwrap_or_else(|e| panic!("read dir {dir}: {e}"))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(suffix))
        .map(|n| format!("{dir}/{n}"))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no *{suffix} files in {dir}");
    out
}

/// `v[a][b]…` for string keys; `Value::Null` when missing.
fn at<'a>(v: &'a Value, keys: &[&str]) -> &'a Value {
    keys.iter().fold(v, |cur, k| cur.get(*k).unwrap_or(&Value::Null))
}

fn s<'a>(v: &'a Value, keys: &[&str]) -> &'a str {
    at(v, keys)
        .as_str()
        .unwrap_or_else(|| panic!("expected a string at {}", keys.join(".")))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|seq| seq.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// `(host, port)` of `http://host:port/...` or `host:port`.
fn host_port(url: &str) -> (String, u16) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = authority
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("`{url}` has no explicit port"));
    (
        host.to_owned(),
        port.parse().unwrap_or_else(|_| panic!("bad port in `{url}`")),
    )
}

/// The shipped Spindle config, through the real loader, without the test's environment.
fn spindle_config() -> Config {
    Config::from_yaml_with_env(&read("collector-config/spindle.yaml"), std::iter::empty())
        .unwrap_or_else(|e| panic!("collector-config/spindle.yaml does not validate:\n{e}"))
}

// ---------------------------------------------------------------------------------------------
// spindle.yaml

/// Every leaf key path of a YAML mapping (`a.b.c`); mappings empty in `v` count as leaves.
fn leaf_paths(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v.as_mapping() {
        Some(m) if !m.is_empty() => {
            for (k, child) in m {
                let k = k.as_str().expect("string keys");
                let p = if prefix.is_empty() {
                    k.to_owned()
                } else {
                    format!("{prefix}.{k}")
                };
                leaf_paths(child, &p, out);
            }
        }
        _ => {
            out.insert(prefix.to_owned());
        }
    }
}

#[test]
fn spindle_yaml_validates_lists_every_key_with_its_default_and_listens_on_all_interfaces() {
    let config = spindle_config();
    for (key, addr, port) in [
        ("receivers.otlp.grpc.listen", config.receivers.otlp.grpc.listen, 4317),
        ("receivers.otlp.http.listen", config.receivers.otlp.http.listen, 4318),
        ("prometheus.listen", config.prometheus.listen, 9464),
    ] {
        assert!(
            addr.ip().is_unspecified(),
            "{key} must listen on 0.0.0.0 in a container, got {addr}"
        );
        assert_eq!(addr.port(), port, "{key} port");
    }

    // Every key `spindle print-config` prints is in the file.
    let mut expected = BTreeSet::new();
    leaf_paths(
        &serde_yaml_ng::to_value(Config::default()).expect("defaults serialize"),
        "",
        &mut expected,
    );
    let mut shipped = BTreeSet::new();
    leaf_paths(&yaml("collector-config/spindle.yaml"), "", &mut shipped);
    let missing: Vec<_> = expected.difference(&shipped).collect();
    assert!(
        missing.is_empty(),
        "collector-config/spindle.yaml lacks keys `spindle print-config` prints: {missing:?}"
    );

    // Every key that has a value is documented: its comment block names the default.
    let text = read("collector-config/spindle.yaml");
    let mut comment = String::new();
    for (n, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('#') {
            comment.push_str(t);
            comment.push('\n');
            continue;
        }
        if let Some((key, value)) = t.split_once(':')
            && !value.trim().is_empty()
        {
            assert!(
                comment.contains("Default") || line.contains("# Default"),
                "collector-config/spindle.yaml line {}: `{key}` has no comment naming its default",
                n + 1
            );
        }
        comment.clear();
    }
}

// ---------------------------------------------------------------------------------------------
// Prometheus

#[tokio::test]
async fn prometheus_config_and_alert_rules_pass_promtool() {
    let promtool = peer_binary("promtool");
    let config = path("collector-config/prometheus.yml");
    let (ok, out) = run_process(&promtool, &["check", "config", config.to_str().unwrap()], None).await;
    assert!(ok, "promtool check config failed:\n{}{}", out.stdout, out.stderr);
    // `check config` also checks the rule files it finds; make sure it found ours.
    let rules = files_in("collector-config/alerts", ".yml");
    assert!(
        out.stdout.contains(&format!("{} rule files found", rules.len())),
        "prometheus.yml's rule_files do not match collector-config/alerts/*.yml:\n{}",
        out.stdout
    );

    let mut args = vec!["check".to_owned(), "rules".to_owned()];
    args.extend(rules.iter().map(|r| path(r).display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out) = run_process(&promtool, &args, None).await;
    assert!(ok, "promtool check rules failed:\n{}{}", out.stdout, out.stderr);

    let prom = yaml("collector-config/prometheus.yml");
    let jobs = at(&prom, &["scrape_configs"]).as_sequence().expect("scrape_configs");
    let spindle_job = jobs
        .iter()
        .find(|j| j["job_name"].as_str() == Some("spindle"))
        .expect("a `spindle` scrape job");
    assert_eq!(
        spindle_job["honor_labels"].as_bool(),
        Some(true),
        "Spindle must be scraped with honor_labels: true"
    );
}

#[test]
fn alert_rules_cover_spindle_health_and_service_slos() {
    let mut alerts = BTreeSet::new();
    for file in files_in("collector-config/alerts", ".yml") {
        for group in at(&yaml(&file), &["groups"]).as_sequence().expect("groups") {
            for rule in group["rules"].as_sequence().expect("rules") {
                if let Some(a) = rule["alert"].as_str() {
                    assert!(
                        rule["labels"]["severity"].as_str().is_some(),
                        "{file}: {a} has no severity"
                    );
                    assert!(
                        rule["annotations"]["summary"].as_str().is_some(),
                        "{file}: {a} has no summary"
                    );
                    alerts.insert(a.to_owned());
                }
            }
        }
    }
    for wanted in [
        "SpindleDown",
        "SpindleOverloaded",
        "SpindleRefusingRequests",
        "SpindleDroppingSpans",
        "SpindleExportQueueNearFull",
        "SpindleSeriesNearLimit",
        "SpindleCardinalityOverflow",
        "ServiceErrorBudgetFastBurn",
        "ServiceErrorBudgetSlowBurn",
        "ServiceLatencyHigh",
        "ServiceMemoryGrowing",
        "ServiceFileDescriptorsNearLimit",
        "TokioGlobalQueueBacklog",
    ] {
        assert!(alerts.contains(wanted), "alert {wanted} missing; have {alerts:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Grafana

/// `uid → type` of the provisioned datasources.
fn datasources() -> BTreeMap<String, Value> {
    let ds = yaml("collector-config/grafana/provisioning/datasources/datasources.yaml");
    at(&ds, &["datasources"])
        .as_sequence()
        .expect("datasources list")
        .iter()
        .map(|d| (s(d, &["uid"]).to_owned(), d.clone()))
        .collect()
}

#[test]
fn grafana_datasources_link_exemplars_to_tempo() {
    let ds = datasources();
    let prom = ds.get("prometheus").expect("a datasource with uid `prometheus`");
    let tempo = ds.get("tempo").expect("a datasource with uid `tempo`");
    assert_eq!(s(prom, &["type"]), "prometheus");
    assert_eq!(s(tempo, &["type"]), "tempo");
    let dests = at(prom, &["jsonData", "exemplarTraceIdDestinations"])
        .as_sequence()
        .expect("exemplarTraceIdDestinations");
    assert!(
        dests
            .iter()
            .any(|d| d["name"].as_str() == Some("trace_id") && d["datasourceUid"].as_str() == Some("tempo")),
        "Prometheus exemplars' trace_id must link to the Tempo datasource: {dests:?}"
    );
}

/// `(file, query)` pairs.
type Queries = Vec<(String, String)>;

/// Every PromQL expression in the dashboards (panel targets) and the label_values variable
/// queries, with the file they come from.
fn dashboard_queries() -> (Queries, Queries) {
    let mut exprs = Vec::new();
    let mut variables = Vec::new();
    for file in files_in("collector-config/grafana/dashboards", ".json") {
        let d = json(&file);
        for v in d["templating"]["list"].as_array().into_iter().flatten() {
            if let Some(q) = v["query"]["query"].as_str().or(v["query"].as_str()) {
                variables.push((file.clone(), q.to_owned()));
            }
        }
        for p in d["panels"].as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    exprs.push((file.clone(), e.to_owned()));
                }
            }
        }
    }
    (exprs, variables)
}

#[test]
fn dashboards_parse_use_provisioned_datasources_and_show_exemplars() {
    let ds = datasources();
    let mut uids = BTreeSet::new();
    let mut exemplar_panels = Vec::new();
    for file in files_in("collector-config/grafana/dashboards", ".json") {
        let d = json(&file);
        let uid = d["uid"].as_str().unwrap_or_else(|| panic!("{file}: no uid"));
        assert!(uids.insert(uid.to_owned()), "{file}: dashboard uid {uid} used twice");
        assert!(d["title"].as_str().is_some(), "{file}: no title");
        let panels = d["panels"].as_array().unwrap_or_else(|| panic!("{file}: no panels"));
        assert!(!panels.is_empty(), "{file}: no panels");
        let mut ids = BTreeSet::new();
        for p in panels {
            let title = p["title"].as_str().unwrap_or("?");
            assert!(ids.insert(p["id"].as_i64()), "{file}: panel id of {title:?} repeated");
            let targets = p["targets"]
                .as_array()
                .unwrap_or_else(|| panic!("{file}: {title}: no targets"));
            assert!(!targets.is_empty(), "{file}: {title}: no targets");
            for t in targets.iter().map(|t| &t["datasource"]).chain([&p["datasource"]]) {
                let uid = t["uid"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{file}: {title}: no datasource uid"));
                assert!(
                    ds.contains_key(uid),
                    "{file}: {title}: datasource {uid} is not provisioned"
                );
            }
            for t in targets {
                if t["exemplar"].as_bool() == Some(true) {
                    exemplar_panels.push((file.clone(), t["expr"].as_str().unwrap_or_default().to_owned()));
                }
            }
        }
    }
    for metric in [
        "traces_span_metrics_duration_seconds_bucket",
        "http_server_request_duration_seconds_bucket",
    ] {
        assert!(
            exemplar_panels.iter().any(|(_, e)| e.contains(metric)),
            "no latency panel on {metric} shows exemplars: {exemplar_panels:?}"
        );
    }

    // The provider loads from where compose mounts the dashboards.
    let provider = yaml("collector-config/grafana/provisioning/dashboards/dashboards.yaml");
    let dir = s(&at(&provider, &["providers"])[0], &["options", "path"]).to_owned();
    let compose = Compose::load();
    assert_eq!(
        compose.mount_source("grafana", &dir).as_deref(),
        Some("collector-config/grafana/dashboards"),
        "the dashboard provider reads {dir}, which compose must mount from collector-config/grafana/dashboards"
    );
}

// ---------------------------------------------------------------------------------------------
// PromQL references

/// What a PromQL expression refers to.
#[derive(Debug, Default)]
struct Refs {
    /// Metric names in selectors.
    metrics: BTreeSet<String>,
    /// Label names in matchers and grouping clauses.
    labels: BTreeSet<String>,
    /// `label="value"` equality matchers.
    matchers: BTreeSet<(String, String)>,
}

/// Operators, modifiers and aggregations (which may be followed by `by (…)` instead of `(`).
const KEYWORDS: [&str; 22] = [
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
    "Inf",
    "NaN",
    "atan2",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];
const GROUPING: [&str; 6] = ["by", "without", "on", "ignoring", "group_left", "group_right"];

/// A small PromQL tokenizer: identifiers outside `{…}` that are not followed by `(` and are not
/// keywords are metric names; identifiers inside `{…}` and in `by (…)`-style lists are labels.
/// Strings, numbers, durations (`[5m]`) and Grafana variables (`$service`) are skipped.
fn promql_refs(expr: &str, refs: &mut Refs) {
    let b: Vec<char> = expr.chars().collect();
    let ident_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let ident_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let next_non_space = |mut j: usize| {
        while j < b.len() && b[j].is_whitespace() {
            j += 1;
        }
        j
    };
    let read_string = |mut j: usize| {
        let quote = b[j];
        let mut out = String::new();
        j += 1;
        while j < b.len() && b[j] != quote {
            if b[j] == '\\' {
                j += 1;
            }
            if j < b.len() {
                out.push(b[j]);
            }
            j += 1;
        }
        (out, j + 1)
    };
    let (mut i, mut braces, mut in_list) = (0, 0usize, false);
    while i < b.len() {
        let c = b[i];
        if matches!(c, '"' | '\'' | '`') {
            i = read_string(i).1;
        } else if c == '[' {
            while i < b.len() && b[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c == '$' {
            i += 1;
            while i < b.len() && (ident_char(b[i]) || b[i] == '{' || b[i] == '}') {
                i += 1;
            }
        } else if c.is_ascii_digit() || (c == '.' && b.get(i + 1).is_some_and(|d| d.is_ascii_digit())) {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == '.' || b[i] == '_') {
                i += 1;
            }
        } else if ident_start(c) {
            let start = i;
            while i < b.len() && ident_char(b[i]) {
                i += 1;
            }
            let word: String = b[start..i].iter().collect();
            let j = next_non_space(i);
            let next = b.get(j).copied();
            if braces > 0 {
                // A label matcher: name, operator, string.
                let mut k = j;
                let mut op = String::new();
                while k < b.len() && matches!(b[k], '=' | '!' | '~') {
                    op.push(b[k]);
                    k += 1;
                }
                let k = next_non_space(k);
                if op == "=" && b.get(k).is_some_and(|q| matches!(q, '"' | '\'' | '`')) {
                    let (value, _) = read_string(k);
                    if !value.contains('$') {
                        refs.matchers.insert((word.clone(), value));
                    }
                }
                refs.labels.insert(word);
            } else if in_list {
                refs.labels.insert(word);
            } else if GROUPING.contains(&word.as_str()) {
                if next == Some('(') {
                    in_list = true;
                    i = j + 1;
                }
            } else if KEYWORDS.contains(&word.as_str()) || next == Some('(') {
                // operator, keyword, function or aggregation
            } else {
                refs.metrics.insert(word);
            }
        } else {
            match c {
                '{' => braces += 1,
                '}' => braces = braces.saturating_sub(1),
                ')' if in_list => in_list = false,
                _ => {}
            }
            i += 1;
        }
    }
}

/// Grafana variable queries: `label_values(metric, label)` or `label_values(label)`.
fn variable_refs(query: &str, refs: &mut Refs) {
    let Some(args) = query
        .trim()
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
    else {
        panic!("unsupported variable query `{query}` (only label_values is checked)");
    };
    match args.rsplit_once(',') {
        Some((selector, label)) => {
            promql_refs(selector, refs);
            refs.labels.insert(label.trim().to_owned());
        }
        None => {
            refs.labels.insert(args.trim().to_owned());
        }
    }
}

#[test]
fn promql_tokenizer_finds_metrics_and_labels() {
    let mut r = Refs::default();
    promql_refs(
        r#"histogram_quantile(0.99, sum by (service_name, le) (rate(x_bucket{span_kind="SPAN_KIND_SERVER", a=~"$v"}[$__rate_interval]))) > 1e3
           and on (instance) max(up{job="spindle"}) / 2000000 > bool 0.5 unless y:rec:rate5m offset 5m"#,
        &mut r,
    );
    assert_eq!(
        r.metrics,
        ["up", "x_bucket", "y:rec:rate5m"]
            .map(String::from)
            .into_iter()
            .collect()
    );
    assert_eq!(
        r.labels,
        ["a", "instance", "job", "le", "service_name", "span_kind"]
            .map(String::from)
            .into_iter()
            .collect()
    );
    assert!(r.matchers.contains(&("span_kind".into(), "SPAN_KIND_SERVER".into())));
    assert!(
        !r.matchers.iter().any(|(l, _)| l == "a"),
        "regex matchers are not equality matchers"
    );
}

// ---------------------------------------------------------------------------------------------
// metric names against a running Spindle

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The resource attributes of `service`'s one instance.
fn resource(service: &str) -> Vec<KeyValue> {
    vec![
        kv("service.name", service),
        kv("service.instance.id", format!("{service}-1")),
    ]
}

fn monotonic(name: &str, attrs: Vec<KeyValue>, value: i64, monotonic: bool, unit: &str) -> Metric {
    Metric {
        name: name.into(),
        unit: unit.into(),
        data: Some(metric::Data::Sum(Sum {
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: monotonic,
            data_points: vec![NumberDataPoint {
                attributes: attrs,
                time_unix_nano: now_nanos(),
                value: Some(number_data_point::Value::AsInt(value)),
                ..Default::default()
            }],
        })),
        ..Default::default()
    }
}

/// What examples/demo-service exports (spindle-instrument's HTTP layer and the demo's own
/// counters), as OTLP: the names the RED dashboard and the HTTP alert query.
fn demo_service_metrics(service: &str, trace_id: &[u8], span_id: &[u8]) -> ExportMetricsServiceRequest {
    let point = |status: i64, count: u64, trace: bool| HistogramDataPoint {
        attributes: vec![
            kv("http.request.method", "GET"),
            kv("http.route", "/orders/{id}"),
            int_kv("http.response.status_code", status),
        ],
        time_unix_nano: now_nanos(),
        count,
        sum: Some(0.03 * count as f64),
        explicit_bounds: vec![0.005, 0.01, 0.025, 0.05, 0.075, 0.1],
        bucket_counts: vec![0, 0, 0, count, 0, 0, 0],
        exemplars: if trace {
            vec![Exemplar {
                time_unix_nano: now_nanos(),
                trace_id: trace_id.to_vec(),
                span_id: span_id.to_vec(),
                value: Some(exemplar::Value::AsDouble(0.03)),
                ..Default::default()
            }]
        } else {
            Vec::new()
        },
        ..Default::default()
    };
    let metrics: Vec<Metric> = vec![
        Metric {
            name: "http.server.request.duration".into(),
            unit: "s".into(),
            data: Some(metric::Data::Histogram(Histogram {
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                data_points: vec![point(200, 9, true), point(500, 1, false)],
            })),
            ..Default::default()
        },
        monotonic(
            "http.server.active_requests",
            vec![kv("http.request.method", "GET")],
            1,
            false,
            "{request}",
        ),
        monotonic("demo.user.lookups", vec![kv("result", "found")], 7, true, ""),
        monotonic("demo.slow.calls", vec![], 2, true, ""),
    ]
    .into_iter()
    .chain(process_and_runtime_metrics())
    .collect();
    let scope = testing::scope("spindle-instrument", "0.1.0");
    testing::metrics_request_in(Some(testing::resource(resource(service))), Some(scope), metrics)
}

/// spindle-instrument's process and Tokio runtime metrics (`instrumentation/src/process.rs`), with
/// their units and kinds: what the process & runtime dashboard and `alerts/process.rules.yml`
/// query. Gauges are sent as non-monotonic sums; both become Prometheus gauges of the same name.
fn process_and_runtime_metrics() -> Vec<Metric> {
    vec![
        monotonic("process.cpu.time", vec![kv("cpu.mode", "user")], 3, true, "s"),
        monotonic("process.memory.usage", vec![], 30_000_000, false, "By"),
        monotonic("process.memory.virtual", vec![], 400_000_000, false, "By"),
        monotonic(
            "process.open_file_descriptor.count",
            vec![],
            20,
            false,
            "{file_descriptor}",
        ),
        monotonic(
            "process.open_file_descriptor.limit",
            vec![],
            1024,
            false,
            "{file_descriptor}",
        ),
        monotonic("process.thread.count", vec![], 7, false, "{thread}"),
        monotonic("process.uptime", vec![], 60, false, "s"),
        monotonic("tokio.runtime.workers", vec![], 2, false, "{worker}"),
        monotonic("tokio.runtime.alive_tasks", vec![], 5, false, "{task}"),
        monotonic("tokio.runtime.global_queue.depth", vec![], 0, false, "{task}"),
        monotonic(
            "tokio.runtime.worker.busy_time",
            vec![int_kv("tokio.worker.index", 0)],
            1,
            true,
            "s",
        ),
    ]
}

/// A server span that succeeds, one that fails and a client span, for `service`.
fn demo_service_spans(service: &str, trace_id: &[u8]) -> ExportTraceServiceRequest {
    let start = now_nanos() - 50_000_000;
    let span = |n: u8, name: &str, kind: i32, code: i32| Span {
        trace_id: trace_id.to_vec(),
        span_id: vec![0x10, 0, 0, 0, 0, 0, 0, n],
        name: name.into(),
        kind,
        start_time_unix_nano: start,
        end_time_unix_nano: start + u64::from(n) * 10_000_000,
        status: Some(Status {
            code,
            ..Default::default()
        }),
        ..Default::default()
    };
    let spans = vec![
        span(1, "GET /orders/{id}", 2, 0),
        span(2, "GET /users/{id}", 2, 2),
        span(3, "GET", 3, 0),
    ];
    testing::traces_request(resource(service), spans)
}

/// Names Prometheus makes itself for every target (not on Spindle's `/metrics`).
const PROMETHEUS_SYNTHETIC: [&str; 2] = ["up", "scrape_samples_scraped"];
/// Labels Prometheus attaches to Spindle's own series from the scrape target.
const TARGET_LABELS: [&str; 3] = ["job", "instance", "__name__"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboards_and_alerts_query_is_produced_by_spindle() {
    // What the dashboards and rules refer to.
    let mut refs = Refs::default();
    let (exprs, variables) = dashboard_queries();
    for (_, e) in &exprs {
        promql_refs(e, &mut refs);
    }
    for (_, q) in &variables {
        variable_refs(q, &mut refs);
    }
    let mut recorded = BTreeSet::new();
    let mut rule_exprs = 0;
    for file in files_in("collector-config/alerts", ".yml") {
        for group in at(&yaml(&file), &["groups"]).as_sequence().expect("groups") {
            for rule in group["rules"].as_sequence().expect("rules") {
                if let Some(r) = rule["record"].as_str() {
                    recorded.insert(r.to_owned());
                }
                promql_refs(rule["expr"].as_str().expect("expr"), &mut refs);
                rule_exprs += 1;
            }
        }
    }
    assert!(exprs.len() >= 20 && rule_exprs >= 15, "too few queries found");

    // Spindle, fed what the demo services send: their metrics and their spans; one metric is
    // limited to its overflow series so the cardinality panels and alerts have something to show.
    let spindle = start_spindle(|c| {
        c.processors.cardinality.metrics = vec![spindle::config::MetricOverride {
            pattern: "demo_slow_calls_total".into(),
            max_series: Some(1),
            max_label_values: None,
            allow_labels: None,
            deny_labels: None,
        }];
    })
    .await;
    let endpoint = format!("http://{}", spindle.grpc_addr);
    let mut metrics = MetricsServiceClient::connect(endpoint.clone()).await.expect("connect");
    let mut traces = TraceServiceClient::connect(endpoint).await.expect("connect");
    for (n, service) in ["demo-frontend", "demo-backend"].into_iter().enumerate() {
        let trace_id = [0xa0 + n as u8; 16];
        traces
            .export(demo_service_spans(service, &trace_id))
            .await
            .expect("spans accepted");
        metrics
            .export(demo_service_metrics(service, &trace_id, &[0x10, 0, 0, 0, 0, 0, 0, 1]))
            .await
            .expect("metrics accepted");
    }
    let exp = wait_for_openmetrics(
        spindle.prometheus_addr,
        "span metrics with an error series and the demo services' HTTP histogram",
        "traces_span_metrics_calls",
        |exp| {
            !exp.find(
                "traces_span_metrics_calls_total",
                &[("service_name", "demo-backend"), ("status_code", "STATUS_CODE_ERROR")],
            )
            .is_empty()
                && !exp
                    .find(
                        "http_server_request_duration_seconds_bucket",
                        &[("job", "demo-backend")],
                    )
                    .is_empty()
                && !exp
                    .find("demo_slow_calls_total", &[("otel_metric_overflow", "true")])
                    .is_empty()
        },
    )
    .await;
    spindle.shutdown().await.expect("clean shutdown");

    let produced: BTreeSet<&str> = exp.samples.iter().map(|s| s.name.as_str()).collect();
    let missing: Vec<&String> = refs
        .metrics
        .iter()
        .filter(|m| !produced.contains(m.as_str()))
        .filter(|m| !PROMETHEUS_SYNTHETIC.contains(&m.as_str()) && !recorded.contains(*m))
        .collect();
    assert!(
        missing.is_empty(),
        "dashboards/alerts query metrics Spindle does not produce: {missing:?}\nproduced: {produced:?}"
    );
    for known in [
        "traces_span_metrics_calls_total",
        "traces_span_metrics_duration_seconds_bucket",
        "http_server_request_duration_seconds_bucket",
        "spindle_refused_requests_total",
        "spindle_exporter_queue_capacity_bytes",
    ] {
        assert!(refs.metrics.contains(known), "the tokenizer missed {known}");
    }

    let labels: BTreeSet<&str> = exp
        .samples
        .iter()
        .flat_map(|s| s.labels.keys())
        .map(String::as_str)
        .collect();
    let unknown: Vec<&String> = refs
        .labels
        .iter()
        .filter(|l| !labels.contains(l.as_str()) && !TARGET_LABELS.contains(&l.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "queries use labels no Spindle series has: {unknown:?}"
    );
    for (label, value) in &refs.matchers {
        if TARGET_LABELS.contains(&label.as_str()) {
            continue;
        }
        assert!(
            exp.samples.iter().any(|s| s.label(label) == value),
            "queries match {label}=\"{value}\", which no Spindle series has"
        );
    }

    // The latency panels' exemplars exist, on both kinds of histogram.
    for name in [
        "traces_span_metrics_duration_seconds_bucket",
        "http_server_request_duration_seconds_bucket",
    ] {
        assert!(
            exp.samples
                .iter()
                .any(|s| s.name == name && s.exemplar.as_ref().is_some_and(|e| e.labels.contains_key("trace_id"))),
            "no exemplar with a trace_id on {name}:\n{}",
            exp.lines_of(name)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// docker-compose.yml

struct Compose {
    doc: Value,
}

impl Compose {
    fn load() -> Self {
        Self {
            doc: yaml("docker-compose.yml"),
        }
    }

    fn services(&self) -> BTreeMap<String, &Value> {
        at(&self.doc, &["services"])
            .as_mapping()
            .expect("services")
            .iter()
            .map(|(k, v)| (k.as_str().expect("service name").to_owned(), v))
            .collect()
    }

    fn service(&self, name: &str) -> &Value {
        let v = at(&self.doc, &["services", name]);
        assert!(!v.is_null(), "docker-compose.yml has no service `{name}`");
        v
    }

    fn env(&self, service: &str) -> BTreeMap<String, String> {
        let e = &self.service(service)["environment"];
        let mut out = BTreeMap::new();
        if let Some(m) = e.as_mapping() {
            for (k, v) in m {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => String::new(),
                };
                out.insert(k.as_str().unwrap_or_default().to_owned(), v);
            }
        }
        for item in strings(e) {
            if let Some((k, v)) = item.split_once('=') {
                out.insert(k.to_owned(), v.to_owned());
            }
        }
        out
    }

    /// Container ports the service publishes.
    fn published(&self, service: &str) -> BTreeSet<u16> {
        strings(&self.service(service)["ports"])
            .iter()
            .map(|p| {
                let container = p.rsplit(':').next().unwrap_or(p);
                container
                    .split('/')
                    .next()
                    .and_then(|x| x.parse().ok())
                    .unwrap_or_else(|| panic!("port mapping `{p}` of {service}"))
            })
            .collect()
    }

    /// `(source, target)` of the service's volumes, short (`src:dst[:ro]`) or long syntax.
    fn volumes(&self, service: &str) -> Vec<(String, String)> {
        self.mounts(service)
            .into_iter()
            .map(|(src, dst, _)| (src, dst))
            .collect()
    }

    /// `(source, target, read_only)` of the service's volumes, short or long syntax.
    fn mounts(&self, service: &str) -> Vec<(String, String, bool)> {
        let Some(seq) = self.service(service)["volumes"].as_sequence() else {
            return Vec::new();
        };
        seq.iter()
            .map(|v| match v.as_str() {
                Some(v) => {
                    let mut parts = v.split(':');
                    let src = parts.next().unwrap_or_default().to_owned();
                    let dst = parts
                        .next()
                        .unwrap_or_else(|| panic!("volume `{v}` of {service}"))
                        .to_owned();
                    (src, dst, parts.next() == Some("ro"))
                }
                None => (
                    s(v, &["source"]).to_owned(),
                    s(v, &["target"]).to_owned(),
                    v["read_only"].as_bool() == Some(true),
                ),
            })
            .collect()
    }

    /// The workspace-relative paths of the service's `env_file`s.
    fn env_files(&self, service: &str) -> Vec<String> {
        let e = &self.service(service)["env_file"];
        let files = match e.as_str() {
            Some(one) => vec![one.to_owned()],
            None => strings(e),
        };
        files.iter().map(|f| f.trim_start_matches("./").to_owned()).collect()
    }

    /// The `put FILE VOLUME UID:GID MODE` lines of `secrets-init`'s script.
    fn secret_puts(&self) -> Vec<SecretPut> {
        let script = strings(&self.service("secrets-init")["command"]).join("\n");
        script
            .lines()
            .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>().as_slice() {
                ["put", file, volume, owner, mode] => Some(SecretPut {
                    file: (*file).to_owned(),
                    volume: (*volume).to_owned(),
                    owner: (*owner).to_owned(),
                    mode: (*mode).to_owned(),
                }),
                _ => None,
            })
            .collect()
    }

    /// What `service` finds at `container_path` when that is on a volume `secrets-init` fills: the
    /// file of collector-config/secrets/ copied there, its owner and mode. Also checks that the
    /// service mounts the volume read-only and waits for `secrets-init` to complete.
    fn secret(&self, service: &str, container_path: &str) -> SecretPut {
        let (volume, rest, ro) = self
            .mounts(service)
            .into_iter()
            .find_map(|(src, dst, ro)| {
                let rest = container_path.strip_prefix(&dst)?.strip_prefix('/')?;
                Some((src, rest.to_owned(), ro))
            })
            .unwrap_or_else(|| panic!("{service}: nothing is mounted at {container_path}"));
        assert!(
            ro,
            "{service}: the secrets at {container_path} must be mounted read-only"
        );
        let (_, out_dir) = self
            .volumes("secrets-init")
            .into_iter()
            .find(|(src, _)| *src == volume)
            .unwrap_or_else(|| {
                panic!("{service}: {container_path} is on volume {volume}, which secrets-init does not fill")
            });
        let sub = out_dir.strip_prefix("/out/").expect("secrets-init fills /out/<volume>");
        assert_eq!(
            at(self.service(service), &["depends_on", "secrets-init", "condition"]).as_str(),
            Some("service_completed_successfully"),
            "{service} reads secrets, so it must wait for secrets-init to complete"
        );
        self.secret_puts()
            .into_iter()
            .find(|p| p.volume == sub && p.file == rest)
            .unwrap_or_else(|| panic!("{service}: secrets-init puts no {rest} into {volume} (for {container_path})"))
    }

    /// The workspace-relative source of the bind mount at `target` in `service`.
    fn mount_source(&self, service: &str, target: &str) -> Option<String> {
        self.volumes(service)
            .into_iter()
            .find(|(_, dst)| dst == target)
            .map(|(src, _)| src.trim_start_matches("./").to_owned())
    }

    /// Container path → workspace-relative path, through the service's bind mounts.
    fn host_path(&self, service: &str, container_path: &str) -> Option<String> {
        self.volumes(service).into_iter().find_map(|(src, dst)| {
            let rest = container_path.strip_prefix(&dst)?;
            (rest.is_empty() || rest.starts_with('/')).then(|| format!("{}{rest}", src.trim_start_matches("./")))
        })
    }
}

/// A file `secrets-init` copies from collector-config/secrets/ into a service's volume.
#[derive(Debug, Clone, PartialEq)]
struct SecretPut {
    /// Its name in collector-config/secrets/ and in the volume.
    file: String,
    /// The volume, as mounted under `/out/` in `secrets-init`.
    volume: String,
    /// `uid:gid`.
    owner: String,
    /// Octal mode.
    mode: String,
}

/// collector-config/gen-secrets.sh run into a fresh directory: what collector-config/secrets/
/// holds once a user has run it.
struct Secrets {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    /// What the script printed.
    printed: String,
}

impl Secrets {
    fn generate() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("secrets");
        let printed = gen_secrets(&dir);
        Self {
            _tmp: tmp,
            dir,
            printed,
        }
    }

    /// A workspace-relative path, with collector-config/secrets/ mapped to the generated directory.
    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file)).unwrap_or_else(|e| panic!("gen-secrets.sh made no {file}: {e}"))
    }

    fn host(&self, rel: &str) -> PathBuf {
        match rel.strip_prefix(SECRETS_DIR) {
            Some(rest) => self.dir.join(rest.trim_start_matches('/')),
            None => path(rel),
        }
    }
}

/// Where gen-secrets.sh writes by default, and compose reads.
const SECRETS_DIR: &str = "collector-config/secrets";

/// Spindle's config as compose runs it: spindle.yaml, the service's environment and env files,
/// with every path under /etc/spindle/secrets/ followed through secrets-init to the generated
/// file. Checks that each such file reaches the container owned by Spindle's user.
fn compose_spindle_config(compose: &Compose, secrets: &Secrets) -> Config {
    let user = Dockerfile::load().stage_user("spindle");
    let mut env = compose.env("spindle");
    for f in compose.env_files("spindle") {
        env.extend(read_env_file(&secrets.host(&f)));
    }
    for (k, v) in env.iter_mut() {
        if v.starts_with("/etc/spindle/secrets/") {
            let put = compose.secret("spindle", v);
            assert_eq!(put.owner, user, "spindle: {k}={v} must belong to the image's user");
            *v = secrets.dir.join(&put.file).display().to_string();
        }
    }
    Config::from_yaml_with_env(&read("collector-config/spindle.yaml"), env).unwrap_or_else(|e| {
        panic!("spindle.yaml with compose's environment and the generated secrets does not validate:\n{e}")
    })
}

#[test]
fn compose_services_ports_mounts_and_hostnames_agree_with_the_configs() {
    let secrets = Secrets::generate();
    let compose = Compose::load();
    let services = compose.services();
    for wanted in [
        "spindle",
        "demo-frontend",
        "demo-backend",
        "prometheus",
        "tempo",
        "grafana",
    ] {
        assert!(services.contains_key(wanted), "compose service {wanted} missing");
    }
    let named_volumes: BTreeSet<String> = at(&compose.doc, &["volumes"])
        .as_mapping()
        .map(|m| m.keys().filter_map(|k| k.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let dockerfile = Dockerfile::load();
    // Durability: Spindle's storage.path is a named volume, so queues and state outlive the
    // container.
    let spindle = compose.service("spindle");
    let storage = s(spindle, &["environment", "SPINDLE__STORAGE__PATH"]);
    let mounts = strings(at(spindle, &["volumes"]));
    assert!(
        mounts
            .iter()
            .any(|m| m.split(':').nth(1) == Some(storage) && named_volumes.contains(m.split(':').next().unwrap_or(""))),
        "spindle's storage.path {storage} is not on a named volume: {mounts:?}"
    );

    for (name, svc) in &services {
        // Every bind-mounted file or directory exists; named volumes are declared.
        for (src, dst) in compose.volumes(name) {
            if src.starts_with("./") || src.starts_with('/') {
                assert!(
                    Path::new(&src).is_relative() && secrets.host(src.trim_start_matches("./")).exists(),
                    "{name}: mounted {src} (→ {dst}) does not exist in the workspace (or is not made by gen-secrets.sh)"
                );
            } else {
                assert!(named_volumes.contains(&src), "{name}: volume {src} is not declared");
            }
        }
        // depends_on names services.
        let deps: Vec<String> = match &svc["depends_on"] {
            Value::Mapping(m) => m.keys().filter_map(|k| k.as_str().map(str::to_owned)).collect(),
            other => strings(other),
        };
        for d in deps {
            assert!(services.contains_key(&d), "{name} depends on unknown service {d}");
        }
        // Build targets are Dockerfile stages.
        if let Some(target) = svc["build"]["target"].as_str() {
            assert!(
                dockerfile.stages.contains(&target.to_owned()),
                "{name} builds target {target}, not a Dockerfile stage ({:?})",
                dockerfile.stages
            );
        }
    }

    // Spindle: its config is the shipped file, its ports are published, it forwards to Tempo.
    let config = spindle_config();
    assert_eq!(
        compose.mount_source("spindle", "/etc/spindle/spindle.yaml").as_deref(),
        Some("collector-config/spindle.yaml")
    );
    assert_eq!(dockerfile.env("SPINDLE_CONFIG"), Some("/etc/spindle/spindle.yaml"));
    let grpc_port = config.receivers.otlp.grpc.listen.port();
    let metrics_port = config.prometheus.listen.port();
    assert_eq!(
        compose.published("spindle"),
        [grpc_port, config.receivers.otlp.http.listen.port(), metrics_port].into(),
        "spindle publishes exactly its three listeners"
    );
    let spindle_env = compose.env("spindle");
    let endpoint = spindle_env
        .get("SPINDLE__EXPORTERS__TRACES__OTLP__ENDPOINT")
        .expect("compose sets Spindle's trace exporter endpoint");
    let mut with_env = compose_spindle_config(&compose, &secrets);
    assert_eq!(
        with_env.exporters.traces.otlp.endpoint.take().as_deref(),
        Some(endpoint.as_str())
    );
    let (host, port) = host_port(endpoint);
    assert_eq!(host, "tempo");
    let tempo = yaml("collector-config/tempo.yaml");
    let (_, tempo_grpc) = host_port(s(
        &tempo,
        &["distributor", "receivers", "otlp", "protocols", "grpc", "endpoint"],
    ));
    assert_eq!(
        port, tempo_grpc,
        "Spindle exports to the port Tempo's OTLP gRPC receiver listens on"
    );
    let tempo_cmd = strings(&compose.service("tempo")["command"]).join(" ");
    let tempo_cfg = tempo_cmd
        .split("-config.file=")
        .nth(1)
        .expect("tempo -config.file")
        .split_whitespace()
        .next()
        .unwrap_or_default();
    assert_eq!(
        compose.host_path("tempo", tempo_cfg).as_deref(),
        Some("collector-config/tempo.yaml")
    );

    // Demo services: export to Spindle's gRPC port, call each other on their listen ports.
    for demo in ["demo-frontend", "demo-backend"] {
        let env = compose.env(demo);
        let (host, port) = host_port(&env["OTEL_EXPORTER_OTLP_ENDPOINT"]);
        assert_eq!(
            (host.as_str(), port),
            ("spindle", grpc_port),
            "{demo} exports OTLP to Spindle"
        );
        assert_eq!(env.get("OTEL_EXPORTER_OTLP_PROTOCOL").map(String::as_str), Some("grpc"));
        assert_eq!(env.get("OTEL_SERVICE_NAME").map(String::as_str), Some(demo));
        let (other, port) = host_port(&env["DEMO_DOWNSTREAM"]);
        assert!(
            other != demo && other.starts_with("demo-"),
            "{demo} calls the other demo service"
        );
        let (_, other_listen) = host_port(&compose.env(&other)["DEMO_LISTEN"]);
        assert_eq!(port, other_listen, "{demo} calls {other} on the port it listens on");
    }

    // Prometheus: scrapes Spindle's metrics port, loads prometheus.yml and the alert rules,
    // exemplar storage and native histograms enabled.
    let prom_cmd = strings(&compose.service("prometheus")["command"]);
    let flag = |name: &str| {
        prom_cmd
            .iter()
            .find_map(|a| a.strip_prefix(name))
            .unwrap_or_else(|| panic!("prometheus command lacks {name}"))
            .to_owned()
    };
    let features = flag("--enable-feature=");
    for f in ["exemplar-storage", "native-histograms"] {
        assert!(
            features.split(',').any(|x| x == f),
            "prometheus needs --enable-feature={f}"
        );
    }
    let prom_config = flag("--config.file=");
    assert_eq!(
        compose.host_path("prometheus", &prom_config).as_deref(),
        Some("collector-config/prometheus.yml")
    );
    let prom = yaml("collector-config/prometheus.yml");
    let prom_dir = Path::new(&prom_config).parent().expect("config dir");
    for pattern in strings(at(&prom, &["rule_files"])) {
        let dir = Path::new(&pattern).parent().expect("rule glob in a directory");
        let in_container = prom_dir.join(dir);
        assert_eq!(
            compose
                .host_path("prometheus", in_container.to_str().unwrap())
                .as_deref(),
            Some("collector-config/alerts"),
            "rule_files {pattern} resolve to {} in the container, which must be collector-config/alerts",
            in_container.display()
        );
    }
    let jobs = at(&prom, &["scrape_configs"]).as_sequence().expect("scrape_configs");
    let job = jobs
        .iter()
        .find(|j| j["job_name"].as_str() == Some("spindle"))
        .expect("spindle job");
    let targets = strings(&job["static_configs"][0]["targets"]);
    assert!(!targets.is_empty());
    for t in targets {
        assert_eq!(host_port(&t), ("spindle".to_owned(), metrics_port), "scrape target {t}");
    }

    // Grafana: provisioning mounted; datasource URLs name compose services on their ports.
    assert_eq!(
        compose.mount_source("grafana", "/etc/grafana/provisioning").as_deref(),
        Some("collector-config/grafana/provisioning")
    );
    let ds = datasources();
    assert_eq!(
        host_port(s(&ds["prometheus"], &["url"])),
        ("prometheus".to_owned(), 9090),
        "Grafana → Prometheus"
    );
    assert!(compose.published("prometheus").contains(&9090));
    let tempo_http = at(&tempo, &["server", "http_listen_port"])
        .as_u64()
        .expect("tempo http port");
    assert_eq!(
        host_port(s(&ds["tempo"], &["url"])),
        ("tempo".to_owned(), tempo_http as u16),
        "Grafana → Tempo query API"
    );
    if let Some(home) = compose.env("grafana").get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH") {
        let host = compose.host_path("grafana", home).expect("home dashboard is mounted");
        assert!(path(&host).is_file(), "home dashboard {host} exists");
    }
}

/// The users of the third-party images that read secrets: prom/prometheus runs as `nobody`,
/// grafana/grafana as 472 in group root.
const PROMETHEUS_USER: &str = "65534:65534";
const GRAFANA_USER: &str = "472:0";

#[tokio::test]
async fn compose_runs_the_secured_setup_with_the_generated_secrets_and_publishes_on_loopback_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let secrets = Secrets::generate();
    let compose = Compose::load();
    let dockerfile = Dockerfile::load();

    // The secrets come from collector-config/secrets/, which stays out of git and images.
    assert_eq!(
        compose.mount_source("secrets-init", "/secrets").as_deref(),
        Some(SECRETS_DIR),
        "secrets-init copies from collector-config/secrets/"
    );
    assert!(
        compose
            .mounts("secrets-init")
            .iter()
            .any(|(_, dst, ro)| dst == "/secrets" && *ro),
        "secrets-init mounts the secrets read-only"
    );
    for ignore in [".gitignore", ".dockerignore"] {
        assert!(
            read(ignore)
                .lines()
                .any(|l| l.trim().trim_end_matches('/') == SECRETS_DIR),
            "{ignore} must list {SECRETS_DIR}/"
        );
    }
    // What reaches a container: keys, tokens and passwords readable by its user alone.
    for put in compose.secret_puts() {
        let want = if put.file.ends_with(".crt") { "0444" } else { "0400" };
        assert_eq!(put.mode, want, "secrets-init: mode of {} in {}", put.file, put.volume);
        assert!(
            secrets.dir.join(&put.file).is_file(),
            "gen-secrets.sh makes no {}",
            put.file
        );
    }
    // What the script leaves on the host: only certificates are readable by others.
    for entry in std::fs::read_dir(&secrets.dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
        let want = if name.ends_with(".crt") { 0o644 } else { 0o600 };
        assert_eq!(mode, want, "gen-secrets.sh: mode of {name} is {mode:o}");
    }

    // Spindle: TLS on every listener, a token on OTLP, basic auth on /metrics.
    let config = compose_spindle_config(&compose, &secrets);
    assert!(config.receivers.otlp.tls.enabled(), "compose: receivers.otlp.tls");
    assert!(config.prometheus.tls.enabled(), "compose: prometheus.tls");
    let tokens_file = config
        .receivers
        .otlp
        .auth
        .bearer_tokens_file
        .as_ref()
        .expect("compose: receivers.otlp.auth.bearer_tokens_file");
    let tokens: BTreeMap<String, String> = std::fs::read_to_string(tokens_file)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (tok, globs) = l.split_once(' ').expect("every token is limited to services");
            (tok.to_owned(), globs.trim().to_owned())
        })
        .collect();
    let users = &config.prometheus.auth.basic_auth_users;
    assert!(!users.is_empty(), "compose: prometheus.auth.basic_auth_users");

    // Demo services: OTLP over TLS to Spindle with their own token, limited to their service.
    let demo_user = dockerfile.stage_user("demo");
    for demo in ["demo-frontend", "demo-backend"] {
        let env = compose.env(demo);
        assert!(
            env["OTEL_EXPORTER_OTLP_ENDPOINT"].starts_with("https://"),
            "{demo} sends OTLP over TLS"
        );
        let ca = compose.secret(demo, &env["OTEL_EXPORTER_OTLP_CERTIFICATE"]);
        assert_eq!(
            (ca.file.as_str(), ca.owner.as_str()),
            ("ca.crt", demo_user.as_str()),
            "{demo}"
        );
        assert_eq!(
            compose.env_files(demo),
            [format!("{SECRETS_DIR}/{demo}.env")],
            "{demo} env_file"
        );
        let from_file = read_env_file(&secrets.host(&format!("{SECRETS_DIR}/{demo}.env")));
        let header = from_file
            .get("OTEL_EXPORTER_OTLP_HEADERS")
            .unwrap_or_else(|| panic!("{demo}.env sets no OTEL_EXPORTER_OTLP_HEADERS"));
        let token = header
            .strip_prefix("authorization=Bearer%20")
            .unwrap_or_else(|| panic!("{demo}.env: OTEL_EXPORTER_OTLP_HEADERS is not authorization=Bearer%20<token>"));
        assert_eq!(
            tokens.get(token).map(String::as_str),
            Some(demo),
            "{demo}'s token must be in the tokens file, limited to {demo}"
        );
    }

    // Prometheus scrapes Spindle over https, checking its certificate, with basic auth.
    let prom = yaml("collector-config/prometheus.yml");
    let job = at(&prom, &["scrape_configs"])
        .as_sequence()
        .expect("scrape_configs")
        .iter()
        .find(|j| j["job_name"].as_str() == Some("spindle"))
        .expect("spindle job")
        .clone();
    assert_eq!(s(&job, &["scheme"]), "https", "Prometheus scrapes Spindle over https");
    assert_ne!(at(&job, &["tls_config", "insecure_skip_verify"]).as_bool(), Some(true));
    let ca = compose.secret("prometheus", s(&job, &["tls_config", "ca_file"]));
    assert_eq!((ca.file.as_str(), ca.owner.as_str()), ("ca.crt", PROMETHEUS_USER));
    let user = s(&job, &["basic_auth", "username"]);
    let hash = users
        .get(user)
        .unwrap_or_else(|| panic!("Prometheus scrapes as {user}, not in prometheus.auth.basic_auth_users"));
    let pw = compose.secret("prometheus", s(&job, &["basic_auth", "password_file"]));
    assert_eq!(pw.owner, PROMETHEUS_USER);
    let password = secrets.read(&pw.file);
    assert!(
        bcrypt::verify(&password, hash).unwrap_or(false),
        "the hash Spindle gets is not of the password Prometheus sends"
    );
    // Spindle's certificate is valid for the name Prometheus scrapes (and for localhost).
    let (target, _) = host_port(&strings(&job["static_configs"][0]["targets"])[0]);
    for host in [target.as_str(), "localhost"] {
        let (ok, out) = run_process(
            Path::new("openssl"),
            &[
                "verify",
                "-CAfile",
                secrets.dir.join("ca.crt").to_str().unwrap(),
                "-verify_hostname",
                host,
                secrets.dir.join("spindle.crt").to_str().unwrap(),
            ],
            None,
        )
        .await;
        assert!(ok, "spindle.crt is not valid for {host}: {}{}", out.stdout, out.stderr);
    }

    // Grafana: a login with the generated admin password; nobody gets in anonymously.
    let gf = compose.env("grafana");
    assert_eq!(gf.get("GF_AUTH_ANONYMOUS_ENABLED").map(String::as_str), Some("false"));
    assert_ne!(gf.get("GF_AUTH_DISABLE_LOGIN_FORM").map(String::as_str), Some("true"));
    let admin = compose.secret("grafana", &gf["GF_SECURITY_ADMIN_PASSWORD__FILE"]);
    assert_eq!(
        (admin.file.as_str(), admin.owner.as_str()),
        ("grafana-admin-password", GRAFANA_USER)
    );

    // Nothing is published beyond this machine.
    for name in compose.services().keys() {
        for p in strings(&compose.service(name)["ports"]) {
            assert!(
                p.starts_with("127.0.0.1:") && p.split(':').count() == 3,
                "{name} publishes `{p}`: bind it to 127.0.0.1 (\"127.0.0.1:HOST:CONTAINER\")"
            );
        }
    }

    // The script printed what it made, never a secret.
    let mut secret_values: Vec<String> = tokens.keys().cloned().collect();
    secret_values.extend([password, secrets.read("grafana-admin-password"), hash.clone()]);
    secret_values.push(secrets.read("spindle.key"));
    for v in secret_values {
        let v = v.trim();
        assert!(
            !v.is_empty() && !secrets.printed.contains(v),
            "gen-secrets.sh printed a secret"
        );
    }
    assert!(secrets.printed.contains("otlp-tokens"), "{}", secrets.printed);
}

// ---------------------------------------------------------------------------------------------
// Dockerfile

struct Dockerfile {
    /// Instructions of the last stage (the default build target), continuation lines joined.
    last: Vec<(String, String)>,
    /// Every instruction.
    all: Vec<(String, String)>,
    /// Stage names (`FROM … AS name`).
    stages: Vec<String>,
}

impl Dockerfile {
    fn load() -> Self {
        let text = read("Dockerfile");
        let mut joined = Vec::new();
        let mut cur = String::new();
        for line in text.lines() {
            let t = line.trim();
            if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
                continue;
            }
            if let Some(head) = t.strip_suffix('\\') {
                cur.push_str(head);
                cur.push(' ');
            } else {
                cur.push_str(t);
                joined.push(std::mem::take(&mut cur));
            }
        }
        let (mut all, mut last, mut stages) = (Vec::new(), Vec::new(), Vec::new());
        for line in joined {
            let (instr, args) = line.split_once(' ').unwrap_or((&line, ""));
            let instr = instr.to_ascii_uppercase();
            let args = args.trim().to_owned();
            if instr == "FROM" {
                last.clear();
                let words: Vec<&str> = args.split_whitespace().collect();
                if let [.., as_kw, name] = words.as_slice()
                    && as_kw.eq_ignore_ascii_case("as")
                {
                    stages.push((*name).to_owned());
                }
            }
            last.push((instr.clone(), args.clone()));
            all.push((instr, args));
        }
        Self { last, all, stages }
    }

    fn last_args(&self, instr: &str) -> Vec<&str> {
        self.last
            .iter()
            .filter(|(i, _)| i == instr)
            .map(|(_, a)| a.as_str())
            .collect()
    }

    /// The `USER` of stage `name`.
    fn stage_user(&self, name: &str) -> String {
        let mut in_stage = false;
        let mut user = None;
        for (instr, args) in &self.all {
            if instr == "FROM" {
                let words: Vec<&str> = args.split_whitespace().collect();
                in_stage = matches!(words.as_slice(), [.., as_kw, n] if as_kw.eq_ignore_ascii_case("as") && *n == name);
            } else if in_stage && instr == "USER" {
                user = Some(args.clone());
            }
        }
        user.unwrap_or_else(|| panic!("Dockerfile stage {name} sets no USER"))
    }

    /// An `ENV` value of the last stage (`ENV K=V [K2=V2 …]` form).
    fn env(&self, key: &str) -> Option<&str> {
        self.last_args("ENV")
            .into_iter()
            .flat_map(|a| a.split_whitespace())
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    }
}

#[test]
fn dockerfile_runtime_stage_is_small_non_root_healthchecked_and_ships_a_valid_config() {
    let df = Dockerfile::load();
    assert!(df.stages.len() >= 2, "multi-stage build expected: {:?}", df.stages);
    assert_eq!(
        df.stages.last().map(String::as_str),
        Some("spindle"),
        "spindle is the default target"
    );
    let from = df.last_args("FROM");
    assert!(
        from[0].contains("distroless") || from[0].contains("scratch") || from[0].contains("alpine"),
        "runtime base should be small: {from:?}"
    );
    // A build stage compiles; the runtime stage only copies the binary.
    assert!(
        df.all
            .iter()
            .any(|(i, a)| i == "RUN" && a.contains("cargo build --release")),
        "a stage runs cargo build --release"
    );
    assert!(
        !df.last.iter().any(|(i, _)| i == "RUN"),
        "the runtime stage runs nothing"
    );

    let exposed: BTreeSet<u16> = df
        .last_args("EXPOSE")
        .iter()
        .flat_map(|a| a.split_whitespace())
        .map(|p| p.split('/').next().unwrap_or(p).parse().expect("EXPOSE port"))
        .collect();
    assert_eq!(exposed, [4317, 4318, 9464].into(), "EXPOSE");

    let user = df.last_args("USER");
    let user = user.last().expect("the runtime stage sets USER");
    let name = user.split(':').next().unwrap_or_default();
    assert!(
        !matches!(name, "root" | "0" | ""),
        "runtime USER must not be root: {user}"
    );

    let hc = df.last_args("HEALTHCHECK");
    let hc = hc.last().expect("HEALTHCHECK");
    assert!(
        hc.contains("CMD") && hc.contains("spindle") && hc.contains("healthcheck"),
        "HEALTHCHECK runs `spindle healthcheck` (GET /healthz): {hc}"
    );
    let entry = df.last_args("ENTRYPOINT");
    let binary = entry
        .last()
        .and_then(|e| serde_json::from_str::<Vec<String>>(e).ok())
        .and_then(|v| v.first().cloned())
        .expect("ENTRYPOINT in exec form");
    assert!(hc.contains(&binary), "HEALTHCHECK uses the shipped binary {binary}");

    // The config it copies exists, validates and listens on 0.0.0.0 (checked in detail above).
    let config_path = df.env("SPINDLE_CONFIG").expect("ENV SPINDLE_CONFIG");
    let copied = df
        .last_args("COPY")
        .into_iter()
        .find_map(|a| {
            let parts: Vec<&str> = a.split_whitespace().collect();
            (parts.len() == 2 && parts[1] == config_path).then(|| parts[0].to_owned())
        })
        .unwrap_or_else(|| panic!("the runtime stage copies a config to {config_path}"));
    assert_eq!(copied, "collector-config/spindle.yaml");
    let config = spindle_config();
    assert!(config.prometheus.listen.ip().is_unspecified());

    // The build context keeps every workspace member and the config, drops target/.
    let ignore = read(".dockerignore");
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(
        patterns.iter().any(|p| p.trim_end_matches('/') == "target"),
        ".dockerignore drops target/"
    );
    for kept in [
        "pipeline",
        "instrumentation",
        "examples",
        "tests",
        "bench",
        "collector-config",
        "Cargo.lock",
    ] {
        assert!(
            !patterns.iter().any(|p| p.trim_end_matches('/') == kept),
            ".dockerignore must not drop {kept}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// OpenTelemetry Collector agent

#[test]
fn otel_agent_load_balances_by_service_onto_spindle_grpc() {
    let agent = yaml("collector-config/otelcol-agent.yaml");
    let lb = at(&agent, &["exporters", "loadbalancing"]);
    assert_eq!(s(lb, &["routing_key"]), "service");
    assert!(!at(lb, &["protocol", "otlp"]).is_null(), "loadbalancing exports OTLP");
    let grpc_port = spindle_config().receivers.otlp.grpc.listen.port();
    let hosts = strings(at(lb, &["resolver", "static", "hostnames"]));
    assert!(hosts.len() >= 2, "a fleet of Spindle instances: {hosts:?}");
    for h in &hosts {
        assert_eq!(host_port(h).1, grpc_port, "{h} must name Spindle's OTLP/gRPC port");
    }
    let defined = |kind: &str, name: &str| !at(&agent, &[kind, name]).is_null();
    for signal in ["traces", "metrics"] {
        let pipeline = at(&agent, &["service", "pipelines", signal]);
        assert_eq!(strings(&pipeline["exporters"]), ["loadbalancing"], "{signal} pipeline");
        for (kind, key) in [("receivers", "receivers"), ("processors", "processors")] {
            for name in strings(&pipeline[key]) {
                assert!(defined(kind, &name), "{signal} pipeline uses undefined {kind}.{name}");
            }
        }
    }
    assert!(
        read("collector-config/otelcol-agent.yaml").contains("dns:"),
        "the agent config documents the dns resolver"
    );
}

// ---------------------------------------------------------------------------------------------
// systemd

#[tokio::test]
async fn systemd_unit_is_hardened_and_verifies() {
    let rel = "collector-config/systemd/spindle.service";
    let text = read(rel);
    let mut sections: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut current = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.to_owned();
            sections.entry(current.clone()).or_default();
        } else {
            let (k, v) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{rel}: bad line `{line}`"));
            assert!(!current.is_empty(), "{rel}: `{line}` outside a section");
            sections
                .entry(current.clone())
                .or_default()
                .push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    for s in ["Unit", "Service", "Install"] {
        assert!(sections.contains_key(s), "{rel}: no [{s}] section");
    }
    let service = &sections["Service"];
    let get = |key: &str| {
        service
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        get("ExecStart"),
        ["/usr/local/bin/spindle --config /etc/spindle/spindle.yaml"]
    );
    assert!(get("ExecReload").is_empty(), "Spindle does not reload its config");
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("CapabilityBoundingSet", ""),
        ("SystemCallFilter", "@system-service"),
        ("Restart", "on-failure"),
    ] {
        assert!(
            get(key).contains(&value),
            "{rel}: expected {key}={value}, have {:?}",
            get(key)
        );
    }
    assert!(
        get("DynamicUser") == ["yes"] || !get("User").is_empty(),
        "{rel}: DynamicUser=yes or a dedicated User="
    );
    // Durability: storage.path is the StateDirectory, kept across restarts and reboots.
    assert_eq!(get("StateDirectory"), ["spindle"], "{rel}: StateDirectory=spindle");
    assert!(
        get("Environment").contains(&"SPINDLE__STORAGE__PATH=/var/lib/spindle"),
        "{rel}: storage.path must be the StateDirectory, /var/lib/spindle"
    );
    let families = get("RestrictAddressFamilies").join(" ");
    for f in ["AF_INET", "AF_INET6"] {
        assert!(
            families.split_whitespace().any(|x| x == f),
            "{rel}: RestrictAddressFamilies lacks {f}"
        );
    }
    assert!(
        get("LimitNOFILE")
            .first()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            >= 65536,
        "{rel}: LimitNOFILE"
    );

    // systemd's own check where the machine has it. It insists that the binary exists, so the
    // copy it checks names one that does.
    match which("systemd-analyze") {
        Some(analyze) => {
            let dir = tempfile::tempdir().expect("tempdir");
            let unit = dir.path().join("spindle.service");
            std::fs::write(&unit, text.replace("/usr/local/bin/spindle", "/bin/true")).expect("write unit");
            let (ok, out) = tokio::time::timeout(
                Duration::from_secs(60),
                run_process(&analyze, &["verify", unit.to_str().unwrap()], None),
            )
            .await
            .expect("systemd-analyze verify finishes");
            assert!(
                ok && out.stderr.trim().is_empty(),
                "systemd-analyze verify {rel}:\n{}{}",
                out.stdout,
                out.stderr
            );
        }
        None => eprintln!("systemd-analyze not on PATH: {rel} checked by parsing only"),
    }
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}
