//! Tests of the OTLP → Prometheus translation: names, units, labels, resource handling, validation.

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{self as pm, DataPointFlags, metric::Data};
use proptest::prelude::*;

use super::*;
use crate::testing::{self, counter, gauge, kvs, metric, metrics_request_in, point, str_value as sv, sum, temporality};

// ---- OTLP builders -------------------------------------------------------------------------

/// One resource (none when `resource` is empty), one scope, the given metrics.
fn request(resource: &[(&str, &str)], scope: (&str, &str), metrics: Vec<pm::Metric>) -> ExportMetricsServiceRequest {
    let resource = (!resource.is_empty()).then(|| testing::resource(kvs(resource)));
    metrics_request_in(resource, Some(testing::scope(scope.0, scope.1)), metrics)
}

fn bare(metrics: Vec<pm::Metric>) -> ExportMetricsServiceRequest {
    request(&[], ("", ""), metrics)
}

fn num(v: f64, attrs: &[(&str, &str)]) -> pm::NumberDataPoint {
    point(v, kvs(attrs))
}

fn updown(delta: bool, points: Vec<pm::NumberDataPoint>) -> Data {
    sum(false, delta, points)
}

fn hpoint(bounds: &[f64], counts: &[u64], sum: f64, attrs: &[(&str, &str)]) -> pm::HistogramDataPoint {
    testing::hpoint(bounds, counts, Some(sum), kvs(attrs))
}

fn histogram(points: Vec<pm::HistogramDataPoint>) -> Data {
    testing::histogram(false, points)
}

fn exp_point(scale: i32, offset: i32, counts: &[u64]) -> pm::ExponentialHistogramDataPoint {
    pm::ExponentialHistogramDataPoint {
        count: counts.iter().sum(),
        sum: Some(1.0),
        scale,
        positive: Some(pm::exponential_histogram_data_point::Buckets {
            offset,
            bucket_counts: counts.to_vec(),
        }),
        ..Default::default()
    }
}

fn exponential(points: Vec<pm::ExponentialHistogramDataPoint>) -> Data {
    Data::ExponentialHistogram(pm::ExponentialHistogram {
        data_points: points,
        aggregation_temporality: temporality(false),
    })
}

fn spoint(quantiles: &[(f64, f64)], attrs: &[(&str, &str)]) -> pm::SummaryDataPoint {
    pm::SummaryDataPoint {
        attributes: kvs(attrs),
        count: 10,
        sum: 5.0,
        quantile_values: quantiles
            .iter()
            .map(|&(quantile, value)| pm::summary_data_point::ValueAtQuantile { quantile, value })
            .collect(),
        ..Default::default()
    }
}

fn summary(points: Vec<pm::SummaryDataPoint>) -> Data {
    Data::Summary(pm::Summary { data_points: points })
}

fn exemplar(trace_id: Vec<u8>, span_id: Vec<u8>, value: f64, t: u64) -> pm::Exemplar {
    pm::Exemplar {
        trace_id,
        span_id,
        time_unix_nano: t,
        value: Some(pm::exemplar::Value::AsDouble(value)),
        ..Default::default()
    }
}

// ---- readers -------------------------------------------------------------------------------

fn labels(s: &Samples, p: &Point) -> Vec<(String, String)> {
    s.point_labels(p)
        .iter()
        .map(|l| (s.str(l.name).to_string(), s.str(l.value).to_string()))
        .collect()
}

fn label<'a>(s: &'a Samples, p: &Point, name: &str) -> Option<&'a str> {
    s.point_labels(p)
        .iter()
        .find(|l| s.str(l.name) == name)
        .map(|l| s.str(l.value))
}

fn family<'a>(s: &'a Samples, p: &Point) -> &'a FamilyMeta {
    &s.families[p.family as usize]
}

/// The points of the family named `name`.
fn points_of<'a>(s: &'a Samples, name: &str) -> Vec<&'a Point> {
    s.points.iter().filter(|p| family(s, p).name == name).collect()
}

fn only_point<'a>(s: &'a Samples, name: &str) -> &'a Point {
    let ps = points_of(s, name);
    assert_eq!(ps.len(), 1, "expected exactly one `{name}` point in {:?}", s.families);
    ps[0]
}

// ---- names ---------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum K {
    Counter,
    Gauge,
    UpDown,
    Histogram,
    Exponential,
    Summary,
}

fn data_of(k: K) -> Data {
    match k {
        K::Counter => counter(vec![num(1.0, &[])]),
        K::Gauge => gauge(vec![num(1.0, &[])]),
        K::UpDown => updown(false, vec![num(-1.0, &[])]),
        K::Histogram => histogram(vec![hpoint(&[1.0], &[1, 0], 1.0, &[])]),
        K::Exponential => exponential(vec![exp_point(0, 0, &[1])]),
        K::Summary => summary(vec![spoint(&[(0.5, 1.0)], &[])]),
    }
}

#[test]
fn metric_names_follow_the_prometheus_conventions() {
    use MetricKind as M;
    // (OTel name, unit, instrument, family name, unit word, exposed kind, first sample name)
    let table: &[(&str, &str, K, &str, &str, M, &str)] = &[
        (
            "http.server.request.duration",
            "s",
            K::Histogram,
            "http_server_request_duration_seconds",
            "seconds",
            M::Histogram,
            "http_server_request_duration_seconds_bucket",
        ),
        (
            "requests",
            "{request}",
            K::Counter,
            "requests",
            "",
            M::Counter,
            "requests_total",
        ),
        (
            "requests_total",
            "",
            K::Counter,
            "requests",
            "",
            M::Counter,
            "requests_total",
        ),
        (
            "http.requests_total",
            "{request}",
            K::Counter,
            "http_requests",
            "",
            M::Counter,
            "http_requests_total",
        ),
        (
            "processed_total",
            "By",
            K::Counter,
            "processed_bytes",
            "bytes",
            M::Counter,
            "processed_bytes_total",
        ),
        (
            "io.time_seconds_total",
            "s",
            K::Counter,
            "io_time_seconds",
            "seconds",
            M::Counter,
            "io_time_seconds_total",
        ),
        (
            "cpu.utilization",
            "1",
            K::Gauge,
            "cpu_utilization_ratio",
            "ratio",
            M::Gauge,
            "cpu_utilization_ratio",
        ),
        ("errors", "1", K::Counter, "errors", "", M::Counter, "errors_total"),
        (
            "memory.usage",
            "By",
            K::Gauge,
            "memory_usage_bytes",
            "bytes",
            M::Gauge,
            "memory_usage_bytes",
        ),
        (
            "queue.size",
            "By",
            K::UpDown,
            "queue_size_bytes",
            "bytes",
            M::Gauge,
            "queue_size_bytes",
        ),
        (
            "db.latency",
            "ms",
            K::Summary,
            "db_latency_milliseconds",
            "milliseconds",
            M::Summary,
            "db_latency_milliseconds",
        ),
        (
            "vehicle.speed",
            "m/s",
            K::Gauge,
            "vehicle_speed_meters_per_second",
            "meters_per_second",
            M::Gauge,
            "vehicle_speed_meters_per_second",
        ),
        (
            "net.throughput",
            "By/s",
            K::Gauge,
            "net_throughput_bytes_per_second",
            "bytes_per_second",
            M::Gauge,
            "net_throughput_bytes_per_second",
        ),
        (
            "packets.rate",
            "{packet}/s",
            K::Gauge,
            "packets_rate_per_second",
            "per_second",
            M::Gauge,
            "packets_rate_per_second",
        ),
        (
            "rpc.latency",
            "s",
            K::Exponential,
            "rpc_latency_seconds",
            "seconds",
            M::Histogram,
            "rpc_latency_seconds_bucket",
        ),
        (
            "duration_seconds",
            "s",
            K::Histogram,
            "duration_seconds",
            "seconds",
            M::Histogram,
            "duration_seconds_bucket",
        ),
        (
            "queue..depth--now",
            "",
            K::Gauge,
            "queue_depth_now",
            "",
            M::Gauge,
            "queue_depth_now",
        ),
        ("a__b___c", "", K::Gauge, "a_b_c", "", M::Gauge, "a_b_c"),
        ("température", "", K::Gauge, "temp_rature", "", M::Gauge, "temp_rature"),
        (
            "ns:sub.metric",
            "",
            K::Gauge,
            "ns:sub_metric",
            "",
            M::Gauge,
            "ns:sub_metric",
        ),
        (
            "2xx.responses",
            "",
            K::Counter,
            "_2xx_responses",
            "",
            M::Counter,
            "_2xx_responses_total",
        ),
    ];
    for &(name, unit, k, fam, word, kind, sample) in table {
        let s = Translator::default().translate(bare(vec![metric(name, unit, data_of(k))]));
        assert_eq!(s.outcome.rejected, 0, "{name}: {}", s.outcome.message);
        assert_eq!(s.families.len(), 1, "{name}");
        let f = &s.families[0];
        assert_eq!(
            (f.name.as_str(), f.unit.as_str(), f.kind),
            (fam, word, kind),
            "{name} [{unit}] as {k:?}"
        );
        let first_sample = match kind {
            M::Counter => format!("{}_total", f.name),
            M::Histogram => format!("{}_bucket", f.name),
            _ => f.name.clone(),
        };
        assert_eq!(first_sample, sample, "{name}");
        // The unit is always the family name's suffix (OpenMetrics requires it for `# UNIT`).
        assert!(word.is_empty() || f.name.ends_with(&format!("_{word}")), "{name}");
    }
}

/// Runs of `_` are collapsed in names, including where the unit's parts are joined.
#[test]
fn unit_suffix_has_no_runs_of_underscores() {
    for (unit, want) in [
        ("req./s", "rate_req_per_second"),
        ("By./s", "rate_By_per_second"),
        ("[x]", "rate_x"),
    ] {
        let (name, _) = prometheus_name("rate", unit, MetricKind::Gauge);
        assert_eq!(name, want, "unit {unit:?}");
    }
}

#[test]
fn help_is_the_description() {
    let mut m = metric("x", "", gauge(vec![num(1.0, &[])]));
    m.description = "What \"x\" means\nreally".into();
    let s = Translator::default().translate(bare(vec![m]));
    assert_eq!(s.families[0].help, "What \"x\" means\nreally");
}

// ---- labels --------------------------------------------------------------------------------

#[test]
fn label_names_are_sanitized() {
    let attrs = [
        ("http.request.method", "GET"),
        ("1st.try", "yes"),
        ("_private", "p"),
        ("a..b--c", "x"),
        ("Ünit", "u"),
        ("", "empty"),
    ];
    let s = Translator::default().translate(bare(vec![metric("g", "", gauge(vec![num(1.0, &attrs)]))]));
    let got = labels(&s, &s.points[0]);
    let want: Vec<(String, String)> = [
        ("_nit", "u"),
        ("a_b_c", "x"),
        ("http_request_method", "GET"),
        ("key_1st_try", "yes"),
        ("key_empty", "empty"),
        ("key_private", "p"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(got, want, "labels are sanitized and sorted by name");
}

#[test]
fn non_string_attribute_values_become_strings() {
    let any = |v| Some(AnyValue { value: Some(v) });
    let attrs = vec![
        KeyValue {
            key: "i".into(),
            value: any(any_value::Value::IntValue(-42)),
            ..Default::default()
        },
        KeyValue {
            key: "b".into(),
            value: any(any_value::Value::BoolValue(true)),
            ..Default::default()
        },
        KeyValue {
            key: "d".into(),
            value: any(any_value::Value::DoubleValue(1.5)),
            ..Default::default()
        },
        KeyValue {
            key: "h".into(),
            value: any(any_value::Value::BytesValue(vec![0xde, 0xad])),
            ..Default::default()
        },
        KeyValue {
            key: "a".into(),
            value: any(any_value::Value::ArrayValue(ArrayValue {
                values: vec![
                    sv("x\"y"),
                    AnyValue {
                        value: Some(any_value::Value::IntValue(1)),
                    },
                ],
            })),
            ..Default::default()
        },
    ];
    let mut p = num(1.0, &[]);
    p.attributes = attrs;
    let s = Translator::default().translate(bare(vec![metric("g", "", gauge(vec![p]))]));
    let p = &s.points[0];
    assert_eq!(label(&s, p, "i"), Some("-42"));
    assert_eq!(label(&s, p, "b"), Some("true"));
    assert_eq!(label(&s, p, "d"), Some("1.5"));
    assert_eq!(label(&s, p, "h"), Some("dead"));
    assert_eq!(label(&s, p, "a"), Some(r#"["x\"y",1]"#));
}

#[test]
fn colliding_label_names_are_joined_with_semicolons() {
    // Attributes arrive in the lexicographic order of their original keys: `a.b` < `a/b` < `a_b`.
    let attrs = [("a.b", "1"), ("a/b", "2"), ("a_b", "3"), ("z", "z")];
    let s = Translator::default().translate(bare(vec![metric("g", "", gauge(vec![num(1.0, &attrs)]))]));
    let got = labels(&s, &s.points[0]);
    assert_eq!(
        got,
        vec![
            ("a_b".to_string(), "1;2;3".to_string()),
            ("z".to_string(), "z".to_string())
        ]
    );
}

/// The spec: "the values MUST be concatenated together, separated by `;`, and ordered by the
/// lexicographical order of the original keys" — whatever order the attributes came in.
#[test]
fn colliding_label_values_are_ordered_by_original_key() {
    // `b.c` sorts before `b_c` ('.' < '_'), so its value comes first.
    let attrs = [("b_c", "underscore"), ("b.c", "dot")];
    let s = Translator::default().translate(bare(vec![metric("g", "", gauge(vec![num(1.0, &attrs)]))]));
    assert_eq!(label(&s, &s.points[0], "b_c"), Some("dot;underscore"));
}

#[test]
fn attribute_colliding_with_a_scope_label_is_joined() {
    let req = request(
        &[],
        ("lib", "1.0"),
        vec![metric("g", "", gauge(vec![num(1.0, &[("otel.scope.name", "attr")])]))],
    );
    let s = Translator::default().translate(req);
    let v = label(&s, &s.points[0], "otel_scope_name").unwrap();
    let mut parts: Vec<&str> = v.split(';').collect();
    parts.sort_unstable();
    assert_eq!(parts, ["attr", "lib"], "both values kept, got {v:?}");
    assert_eq!(
        s.point_labels(&s.points[0]).len(),
        2,
        "one otel_scope_name label plus otel_scope_version"
    );
}

// ---- resource and scope --------------------------------------------------------------------

#[test]
fn job_and_instance_come_from_service_attributes() {
    let res = [
        ("service.name", "checkout"),
        ("service.namespace", "shop"),
        ("service.instance.id", "i-1"),
    ];
    let s = Translator::default().translate(request(
        &res,
        ("", ""),
        vec![metric("g", "", gauge(vec![num(1.0, &[])]))],
    ));
    let p = only_point(&s, "g");
    assert_eq!(
        labels(&s, p),
        vec![
            ("instance".into(), "i-1".into()),
            ("job".into(), "shop/checkout".into())
        ]
    );

    let res = [("service.name", "checkout")];
    let s = Translator::default().translate(request(
        &res,
        ("", ""),
        vec![metric("g", "", gauge(vec![num(1.0, &[])]))],
    ));
    let p = only_point(&s, "g");
    assert_eq!(
        labels(&s, p),
        vec![("job".to_string(), "checkout".to_string())],
        "no namespace, no instance"
    );
}

/// The spec: `job` is `<service.namespace>/<service.name>`, "or `<service.name>` if namespace is
/// empty".
#[test]
fn empty_service_namespace_is_not_part_of_job() {
    let res = [("service.name", "checkout"), ("service.namespace", "")];
    let s = Translator::default().translate(request(
        &res,
        ("", ""),
        vec![metric("g", "", gauge(vec![num(1.0, &[])]))],
    ));
    assert_eq!(label(&s, only_point(&s, "g"), "job"), Some("checkout"));
}

#[test]
fn scope_name_and_version_become_labels() {
    let s = Translator::default().translate(request(
        &[],
        ("io.spindle", "1.2.3"),
        vec![metric("g", "", gauge(vec![num(1.0, &[("k", "v")])]))],
    ));
    assert_eq!(
        labels(&s, &s.points[0]),
        vec![
            ("k".to_string(), "v".to_string()),
            ("otel_scope_name".to_string(), "io.spindle".to_string()),
            ("otel_scope_version".to_string(), "1.2.3".to_string()),
        ]
    );
    // Without a scope name or version there are no scope labels.
    let s = Translator::default().translate(bare(vec![metric("g", "", gauge(vec![num(1.0, &[])]))]));
    assert!(labels(&s, &s.points[0]).is_empty());
}

#[test]
fn target_info_only_for_non_identifying_resource_attributes() {
    // Only identifying attributes: no target_info.
    let res = [
        ("service.name", "svc"),
        ("service.instance.id", "i-1"),
        ("service.namespace", "ns"),
    ];
    let s = Translator::default().translate(request(
        &res,
        ("", ""),
        vec![metric("g", "", gauge(vec![num(1.0, &[])]))],
    ));
    assert!(
        s.families.iter().all(|f| f.kind != MetricKind::Info),
        "{:?}",
        s.families
    );
    assert_eq!(s.outcome.accepted, 1);

    // Extra attributes: one target_info point carrying them (plus job/instance), and the metric
    // points do not carry them.
    let res = [
        ("service.name", "svc"),
        ("service.instance.id", "i-1"),
        ("host.name", "web-1"),
        ("k8s.pod.name", "p"),
    ];
    let s = Translator::default().translate(request(
        &res,
        ("", ""),
        vec![metric("g", "", gauge(vec![num(1.0, &[]), num(2.0, &[("x", "y")])]))],
    ));
    let infos: Vec<&Point> = s
        .points
        .iter()
        .filter(|p| family(&s, p).kind == MetricKind::Info)
        .collect();
    assert_eq!(infos.len(), 1);
    let info = infos[0];
    let meta = family(&s, info);
    assert_eq!((meta.name.as_str(), meta.kind), ("target", MetricKind::Info));
    assert_eq!(info.value, PointValue::Info);
    assert_eq!(
        labels(&s, info),
        vec![
            ("host_name".to_string(), "web-1".to_string()),
            ("instance".to_string(), "i-1".to_string()),
            ("job".to_string(), "svc".to_string()),
            ("k8s_pod_name".to_string(), "p".to_string()),
        ]
    );
    for p in points_of(&s, "g") {
        assert_eq!(label(&s, p, "host_name"), None);
        assert_eq!(label(&s, p, "job"), Some("svc"));
    }
    assert_eq!(s.outcome.accepted, 3, "two gauge points and target_info");
}

#[test]
fn target_info_per_resource() {
    let mut req = request(&[("service.name", "a"), ("host.name", "h1")], ("", ""), vec![]);
    req.resource_metrics
        .extend(request(&[("service.name", "b"), ("host.name", "h2")], ("", ""), vec![]).resource_metrics);
    let s = Translator::default().translate(req);
    let hosts: Vec<(Option<&str>, Option<&str>)> = s
        .points
        .iter()
        .filter(|p| family(&s, p).kind == MetricKind::Info)
        .map(|p| (label(&s, p, "job"), label(&s, p, "host_name")))
        .collect();
    assert_eq!(hosts, vec![(Some("a"), Some("h1")), (Some("b"), Some("h2"))]);
}

#[test]
fn promoted_resource_attributes_become_labels() {
    let res = [
        ("service.name", "svc"),
        ("deployment.environment", "prod"),
        ("host.name", "web-1"),
    ];
    let t = Translator::new(vec!["deployment.environment".into(), "cloud.region".into()]);
    let s = t.translate(request(
        &res,
        ("", ""),
        vec![metric("g", "", gauge(vec![num(1.0, &[("k", "v")])]))],
    ));
    let p = only_point(&s, "g");
    assert_eq!(
        labels(&s, p),
        vec![
            ("deployment_environment".to_string(), "prod".to_string()),
            ("job".to_string(), "svc".to_string()),
            ("k".to_string(), "v".to_string()),
        ],
        "promoted attribute present, missing one absent, others not copied"
    );
    // Not promoted by default.
    let s = Translator::default().translate(request(
        &res,
        ("", ""),
        vec![metric("g", "", gauge(vec![num(1.0, &[("k", "v")])]))],
    ));
    assert_eq!(label(&s, only_point(&s, "g"), "deployment_environment"), None);
    // Still described by target_info.
    assert_eq!(
        label(&s, only_point(&s, "target"), "deployment_environment"),
        Some("prod")
    );
}

// ---- values and validation -----------------------------------------------------------------

#[test]
fn temporality_and_values_are_carried() {
    let s = Translator::default().translate(bare(vec![
        metric("c", "", counter(vec![num(3.0, &[])])),
        metric("u", "", updown(true, vec![num(-2.5, &[])])),
        metric("g", "", gauge(vec![num(-1.0, &[])])),
        metric(
            "i",
            "",
            gauge(vec![pm::NumberDataPoint {
                value: Some(pm::number_data_point::Value::AsInt(-7)),
                ..Default::default()
            }]),
        ),
    ]));
    let v = |n: &str| (only_point(&s, n).temporality, only_point(&s, n).value);
    assert_eq!(v("c"), (Temporality::Cumulative, PointValue::Number(3.0)));
    assert_eq!(v("u"), (Temporality::Delta, PointValue::Number(-2.5)));
    assert_eq!(v("g"), (Temporality::Cumulative, PointValue::Number(-1.0)));
    assert_eq!(v("i"), (Temporality::Cumulative, PointValue::Number(-7.0)));
}

#[test]
fn histogram_buckets_are_carried() {
    let mut bucketless = hpoint(&[], &[], 0.5, &[("b", "none")]);
    bucketless.count = 4;
    bucketless.sum = None;
    let s = Translator::default().translate(bare(vec![metric(
        "h",
        "",
        histogram(vec![hpoint(&[1.0, 2.0], &[3, 4, 5], 9.5, &[]), bucketless]),
    )]));
    assert_eq!(s.outcome.rejected, 0, "{}", s.outcome.message);
    let PointValue::Histogram {
        count,
        sum,
        bounds,
        counts,
    } = s.points[0].value
    else {
        panic!()
    };
    assert_eq!((count, sum), (12, 9.5));
    assert_eq!(&s.floats[bounds.range()], &[1.0, 2.0]);
    assert_eq!(&s.counts[counts.range()], &[3, 4, 5]);
    // No buckets at all: one +Inf bucket holding every observation, unknown sum.
    let PointValue::Histogram {
        count,
        sum,
        bounds,
        counts,
    } = s.points[1].value
    else {
        panic!()
    };
    assert_eq!(count, 4);
    assert!(sum.is_nan());
    assert!(bounds.is_empty());
    assert_eq!(&s.counts[counts.range()], &[4]);
}

#[test]
fn invalid_points_are_rejected_and_valid_ones_survive() {
    let dangling = hpoint(&[1.0, 2.0], &[1, 1], 1.0, &[("case", "mismatch")]);
    let req = bare(vec![
        metric(
            "c",
            "",
            counter(vec![
                num(-1.0, &[("v", "neg")]),
                num(f64::NAN, &[("v", "nan")]),
                num(5.0, &[("v", "ok")]),
            ]),
        ),
        metric(
            "h",
            "",
            histogram(vec![
                dangling,
                hpoint(&[2.0, 1.0], &[1, 1, 1], 1.0, &[("case", "decreasing")]),
                hpoint(&[1.0, 1.0], &[1, 1, 1], 1.0, &[("case", "equal")]),
                hpoint(&[1.0, f64::NAN], &[1, 1, 1], 1.0, &[("case", "nan")]),
                hpoint(&[1.0], &[1, 1], 1.0, &[("le", "5")]),
                hpoint(&[1.0, 2.0], &[1, 2, 3], 4.0, &[("case", "ok")]),
            ]),
        ),
        metric(
            "s",
            "",
            summary(vec![
                spoint(&[(1.5, 1.0)], &[("case", "high")]),
                spoint(&[(-0.1, 1.0)], &[("case", "low")]),
                spoint(&[(0.5, 1.0)], &[("quantile", "x")]),
                spoint(&[(0.5, 1.0), (0.99, 2.0)], &[("case", "ok")]),
            ]),
        ),
        pm::Metric {
            name: "nodata".into(),
            ..Default::default()
        },
        metric("", "", gauge(vec![num(1.0, &[]), num(2.0, &[])])),
        metric("g", "", gauge(vec![num(7.0, &[])])),
    ]);
    let s = Translator::default().translate(req);
    assert_eq!(s.outcome.rejected, 2 + 5 + 3 + 2, "{}", s.outcome.message);
    assert_eq!(s.outcome.accepted, 4);
    assert_eq!(s.points.len(), 4);
    for needle in [
        "non-negative",
        "bucket counts for 2 bounds",
        "not strictly increasing",
        "`le` is reserved",
        "quantile outside [0, 1]",
        "`quantile` is reserved",
        "`nodata` has no data",
        "empty name",
    ] {
        assert!(
            s.outcome.message.contains(needle),
            "message lacks {needle:?}: {}",
            s.outcome.message
        );
    }
    assert_eq!(only_point(&s, "c").value, PointValue::Number(5.0));
    assert_eq!(label(&s, only_point(&s, "h"), "case"), Some("ok"));
    assert_eq!(label(&s, only_point(&s, "s"), "case"), Some("ok"));
    assert_eq!(only_point(&s, "g").value, PointValue::Number(7.0));
    // Rejected points leave no labels behind in the survivors.
    for p in &s.points {
        assert!(labels(&s, p).iter().all(|(k, _)| k != "le" && k != "quantile"));
    }
}

#[test]
fn counter_points_without_value_are_rejected() {
    let p = pm::NumberDataPoint::default();
    let s = Translator::default().translate(bare(vec![metric("c", "", counter(vec![p, num(1.0, &[])]))]));
    assert_eq!((s.outcome.accepted, s.outcome.rejected), (1, 1));
    assert!(s.outcome.message.contains("no value"), "{}", s.outcome.message);
}

#[test]
fn exponential_scale_out_of_range_is_rejected() {
    let s = Translator::default().translate(bare(vec![metric(
        "e",
        "",
        exponential(vec![exp_point(21, 0, &[1]), exp_point(3, -2, &[1, 2])]),
    )]));
    assert_eq!((s.outcome.accepted, s.outcome.rejected), (1, 1));
    assert!(s.outcome.message.contains("scale 21"), "{}", s.outcome.message);
    let PointValue::Exponential(e) = s.points[0].value else {
        panic!()
    };
    assert_eq!((e.scale, e.positive_offset, e.count), (3, -2, 3));
    assert_eq!(&s.counts[e.positive.range()], &[1, 2]);
}

#[test]
fn exemplars_need_a_trace_id_and_span_id() {
    let tid: Vec<u8> = (1..=16).collect();
    let sid: Vec<u8> = (1..=8).collect();
    let exs = vec![
        exemplar(tid.clone(), sid.clone(), 2.0, 100),
        exemplar((1..=8).collect(), sid.clone(), 3.0, 101), // 8-byte trace id
        exemplar(vec![0; 16], sid.clone(), 4.0, 102),       // zero trace id
        exemplar(vec![], vec![], 5.0, 103),                 // no trace context
        exemplar(tid.clone(), vec![], 6.0, 104),            // no span id
    ];
    let mut c = num(1.0, &[]);
    c.exemplars = exs.clone();
    let mut h = hpoint(&[1.0], &[0, 1], 2.0, &[]);
    h.exemplars = exs.clone();
    let mut g = num(1.0, &[]);
    g.exemplars = exs;
    let s = Translator::default().translate(bare(vec![
        metric("c", "", counter(vec![c])),
        metric("h", "", histogram(vec![h])),
        metric("g", "", gauge(vec![g])),
    ]));
    let want = Exemplar {
        trace_id: tid.clone().try_into().unwrap(),
        span_id: sid.clone().try_into().unwrap(),
        value: 2.0,
        time_unix_nano: 100,
    };
    for name in ["c", "h"] {
        let p = only_point(&s, name);
        assert_eq!(&s.exemplars[p.exemplars.range()], &[want], "{name}");
    }
    assert!(only_point(&s, "g").exemplars.is_empty(), "gauge exemplars are dropped");
}

#[test]
fn no_recorded_value_points_are_skipped() {
    let flag = DataPointFlags::NoRecordedValueMask as u32;
    let mut n = num(1.0, &[("stale", "yes")]);
    n.flags = flag;
    let mut h = hpoint(&[1.0], &[1, 1], 1.0, &[("stale", "yes")]);
    h.flags = flag;
    let mut e = exp_point(0, 0, &[1]);
    e.flags = flag;
    let mut sm = spoint(&[(0.5, 1.0)], &[("stale", "yes")]);
    sm.flags = flag;
    let mut neg = num(-1.0, &[("stale", "yes")]); // would be invalid, but it carries no value
    neg.flags = flag;
    let s = Translator::default().translate(bare(vec![
        metric("g", "", gauge(vec![n, num(2.0, &[("stale", "no")])])),
        metric("c", "", counter(vec![neg])),
        metric("h", "", histogram(vec![h])),
        metric("e", "", exponential(vec![e])),
        metric("s", "", summary(vec![sm])),
    ]));
    assert_eq!(
        (s.outcome.accepted, s.outcome.rejected),
        (1, 0),
        "{}",
        s.outcome.message
    );
    assert_eq!(s.points.len(), 1);
    assert_eq!(label(&s, &s.points[0], "stale"), Some("no"));
}

// ---- properties ----------------------------------------------------------------------------

fn is_metric_name(s: &str) -> bool {
    let mut cs = s.chars();
    cs.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && cs.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut cs = s.chars();
    cs.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && cs.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

proptest! {
    /// Whatever names and keys arrive, what comes out is valid Prometheus, without `__` (reserved
    /// prefix) runs, and a point's label names are sorted and unique.
    #[test]
    fn names_and_labels_are_always_valid(
        name in "\\PC{1,20}",
        unit in prop_oneof![Just(String::new()), Just("s".to_string()), Just("1".to_string()), "\\PC{0,6}"],
        kind in 0usize..4,
        keys in proptest::collection::vec("\\PC{0,12}", 0..6),
    ) {
        let attrs: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), "v")).collect();
        let data = match kind {
            0 => counter(vec![num(1.0, &attrs)]),
            1 => gauge(vec![num(1.0, &attrs)]),
            2 => histogram(vec![hpoint(&[1.0], &[1, 1], 1.0, &attrs)]),
            _ => summary(vec![spoint(&[(0.5, 1.0)], &attrs)]),
        };
        let s = Translator::default().translate(request(&[("service.name", "svc"), ("weird key!", "x")], ("sc", "1"), vec![metric(&name, &unit, data)]));
        for f in &s.families {
            prop_assert!(is_metric_name(&f.name), "bad metric name {:?} from {:?}", f.name, name);
            prop_assert!(!f.name.contains("__"), "{:?}", f.name);
        }
        for p in &s.points {
            let ls = labels(&s, p);
            for (k, _) in &ls {
                prop_assert!(is_label_name(k), "bad label name {k:?} from {keys:?}");
                prop_assert!(!k.starts_with("__"), "reserved label name {k:?}");
            }
            prop_assert!(ls.windows(2).all(|w| w[0].0 < w[1].0), "labels not sorted/unique: {ls:?}");
        }
        // `le`/`quantile` attributes get the point rejected; otherwise it is accepted.
        prop_assert_eq!(s.outcome.accepted + s.outcome.rejected, 2);
    }

    /// Every attribute value reaches a label value unchanged (or `;`-joined on collision).
    #[test]
    fn label_values_are_kept_verbatim(values in proptest::collection::vec("\\PC*", 1..5)) {
        let keys = ["k0", "k1", "k2", "k3", "k4"];
        let attrs: Vec<(&str, &str)> = values.iter().enumerate().map(|(i, v)| (keys[i], v.as_str())).collect();
        let s = Translator::default().translate(bare(vec![metric("g", "", gauge(vec![num(1.0, &attrs)]))]));
        let got = labels(&s, &s.points[0]);
        let want: Vec<(String, String)> = attrs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        prop_assert_eq!(got, want);
    }
}

#[test]
fn scope_schema_url_and_attributes_become_labels() {
    let mut req = request(
        &[],
        ("lib", "2.0"),
        vec![metric("g", "", gauge(vec![num(1.0, &[("k", "v")])]))],
    );
    let sm = &mut req.resource_metrics[0].scope_metrics[0];
    sm.schema_url = "https://opentelemetry.io/schemas/1.24.0".into();
    if let Some(scope) = sm.scope.as_mut() {
        scope.attributes = kvs(&[("library.tier", "core")]);
    }
    let s = Translator::default().translate(req);
    let p = &s.points[0];
    assert_eq!(
        label(&s, p, "otel_scope_schema_url"),
        Some("https://opentelemetry.io/schemas/1.24.0")
    );
    assert_eq!(label(&s, p, "otel_scope_library_tier"), Some("core"));
    assert_eq!(label(&s, p, "otel_scope_name"), Some("lib"));
    assert_eq!(label(&s, p, "k"), Some("v"));
}

#[test]
fn exponential_bucket_ranges_must_have_finite_bounds() {
    use super::finite_bucket_range as ok;
    // Scale 0: bucket i spans (2^i, 2^(i+1)]; the last finite upper bound is 2^1023.
    assert!(ok(0, 1022, 1));
    assert!(!ok(0, 1023, 1), "upper bound 2^1024 is +Inf");
    assert!(ok(0, -1075, 1));
    assert!(!ok(0, -1076, 1));
    // Scale 20 multiplies the index range by 2^20; scale -2 divides it by 4.
    assert!(ok(20, (1023 << 20) - 5, 5));
    assert!(
        !ok(20, i32::MAX, 2),
        "offsets near i32::MAX are refused, not overflowed"
    );
    assert!(!ok(20, i32::MIN, 2));
    assert!(ok(-2, 255, 0));
    assert!(!ok(-2, 256, 0));
}

// ---- limits (receivers.otlp.limits) and linear label merging ------------------------------

use crate::config::{ByteSize, LimitsConfig};
use crate::telemetry::Telemetry;

/// Limits high enough that a hostile shape reaches the merge code instead of being refused.
fn roomy() -> LimitsConfig {
    LimitsConfig {
        max_attributes_per_point: 1 << 16,
        max_label_value_length: 1 << 20,
        max_label_set_size: ByteSize(16 << 20),
        ..Default::default()
    }
}

fn encoded_len(req: &ExportMetricsServiceRequest) -> usize {
    prost::Message::encoded_len(req)
}

/// 5,000 copies of one key on one point: the merged value is written once, so the arena stays
/// linear in the input (the old code kept every intermediate `;`-joined value: ~60 MB here).
#[test]
fn repeated_keys_merge_in_linear_space() {
    let attrs: Vec<(&str, &str)> = (0..5_000).map(|_| ("k", "vvvv")).collect();
    let req = bare(vec![metric("g", "", gauge(vec![num(1.0, &attrs)]))]);
    let input = encoded_len(&req);
    let s = Translator::default().with_limits(roomy()).translate(req);
    assert_eq!(s.outcome.rejected, 0, "{}", s.outcome.message);
    let v = label(&s, &s.points[0], "k").unwrap();
    assert_eq!(v.len(), 5_000 * 5 - 1, "every value joined once");
    assert!(v.split(';').all(|p| p == "vvvv"));
    assert!(
        s.text.len() < 4 * input,
        "arena {} bytes for a {input}-byte request",
        s.text.len()
    );
}

/// Resource attributes that collide after sanitizing (`a.b`, `a-b`) on `target_info`.
#[test]
fn colliding_resource_attributes_merge_in_linear_space() {
    let keys = ["a.b", "a-b", "a/b", "a_b"];
    let res: Vec<(&str, &str)> = (0..6_000).map(|i| (keys[i % 4], "vvvv")).collect();
    let mut req = request(&res, ("", ""), vec![metric("g", "", gauge(vec![num(1.0, &[])]))]);
    // Promoted too: they become labels of every point.
    let input = encoded_len(&req);
    let t = Translator::new(vec!["a.b".into(), "a-b".into()]).with_limits(roomy());
    let s = t.translate(std::mem::take(&mut req));
    assert_eq!(s.outcome.rejected, 0, "{}", s.outcome.message);
    let info = only_point(&s, "target");
    let v = label(&s, info, "a_b").unwrap();
    assert_eq!(v.split(';').count(), 6_000);
    // Joined in key order: `a-b` < `a.b` < `a/b` < `a_b`.
    assert!(v.starts_with("vvvv;"));
    assert_eq!(label(&s, only_point(&s, "g"), "a_b"), Some("vvvv;vvvv"));
    assert!(
        s.text.len() < 4 * input,
        "arena {} bytes for a {input}-byte request",
        s.text.len()
    );
}

#[test]
fn merged_values_past_the_value_limit_are_truncated() {
    let attrs: Vec<(&str, &str)> = (0..100).map(|_| ("k", "0123456789")).collect();
    let limits = LimitsConfig {
        max_label_value_length: 64,
        max_attributes_per_point: 1000,
        ..Default::default()
    };
    let s =
        Translator::default()
            .with_limits(limits)
            .translate(bare(vec![metric("g", "", gauge(vec![num(1.0, &attrs)]))]));
    let v = label(&s, &s.points[0], "k").unwrap();
    assert!(v.len() <= 64 && v.ends_with(TRUNCATION_MARKER), "{v:?}");
    assert_eq!(s.limited.get(LimitReason::LabelValueTruncated), 1);
}

#[test]
fn long_values_are_truncated_at_a_char_boundary_with_a_marker() {
    let long = "é".repeat(5_000); // 10,000 bytes of two-byte characters
    let s = Translator::default().translate(request(
        &[("service.name", &long), ("host.name", &long)],
        (&long, "1"),
        vec![metric("g", "", gauge(vec![num(1.0, &[("k", &long), ("short", "x")])]))],
    ));
    assert_eq!(s.outcome.rejected, 0, "{}", s.outcome.message);
    let p = only_point(&s, "g");
    for name in ["k", "job", "otel_scope_name"] {
        let v = label(&s, p, name).unwrap();
        assert!(v.len() <= 4096, "{name}: {} bytes", v.len());
        assert!(v.ends_with(TRUNCATION_MARKER), "{name}");
        assert!(v.trim_end_matches(TRUNCATION_MARKER).chars().all(|c| c == 'é'));
    }
    assert_eq!(label(&s, p, "short"), Some("x"));
    let info = only_point(&s, "target");
    assert!(label(&s, info, "host_name").unwrap().len() <= 4096);
    // k, job (counted once per resource), otel_scope_name, host.name on target_info.
    assert_eq!(s.limited.get(LimitReason::LabelValueTruncated), 4);
}

#[test]
fn truncation_keeps_short_values_and_marks_long_ones() {
    let mut s = "abc".to_string();
    assert!(!truncate_value(&mut s, 3));
    assert_eq!(s, "abc");
    let mut s = "abcdefghij".to_string();
    assert!(truncate_value(&mut s, 8));
    assert_eq!(s, "abcde…");
    // A 4-byte character straddling the cut is dropped whole.
    let mut s = "ab😀cdefgh".to_string();
    assert!(truncate_value(&mut s, 8));
    assert_eq!(s, "ab…");
    assert_eq!(truncated("ab😀cdefgh", 8), "ab…");
}

#[test]
fn a_too_long_metric_name_rejects_its_points_and_keeps_the_rest() {
    let long = "m".repeat(2_000);
    let s = Translator::default().translate(bare(vec![
        metric(&long, "", gauge(vec![num(1.0, &[]), num(2.0, &[])])),
        metric("ok", "", gauge(vec![num(1.0, &[])])),
    ]));
    assert_eq!((s.outcome.accepted, s.outcome.rejected), (1, 2));
    assert!(
        s.outcome.message.contains("max_metric_name_length"),
        "{}",
        s.outcome.message
    );
    assert!(s.outcome.message.len() < 600, "the message quotes a bounded prefix");
    assert_eq!(s.limited.get(LimitReason::MetricNameTooLong), 2);
    assert_eq!(s.families.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(), ["ok"]);
}

#[test]
fn a_too_long_unit_counts_toward_the_name() {
    let unit = "u".repeat(2_000);
    let s = Translator::default().translate(bare(vec![metric("m", &unit, gauge(vec![num(1.0, &[])]))]));
    assert_eq!(s.outcome.rejected, 1);
    assert_eq!(s.limited.get(LimitReason::MetricNameTooLong), 1);
}

#[test]
fn long_descriptions_are_truncated() {
    let mut m = metric("x", "", gauge(vec![num(1.0, &[])]));
    m.description = "d".repeat(100_000);
    let s = Translator::default().translate(bare(vec![m]));
    assert!(s.families[0].help.len() <= 4096 && s.families[0].help.ends_with(TRUNCATION_MARKER));
    assert_eq!(s.limited.get(LimitReason::LabelValueTruncated), 1);
}

#[test]
fn a_too_long_label_name_rejects_the_point() {
    let long = "k".repeat(300);
    let s = Translator::default().translate(bare(vec![metric(
        "g",
        "",
        gauge(vec![num(1.0, &[(&long, "v")]), num(2.0, &[("fine", "v")])]),
    )]));
    assert_eq!((s.outcome.accepted, s.outcome.rejected), (1, 1));
    assert!(
        s.outcome.message.contains("max_label_name_length"),
        "{}",
        s.outcome.message
    );
    assert_eq!(s.limited.get(LimitReason::LabelNameTooLong), 1);
    assert!(!s.text.contains(&long), "a rejected point leaves nothing in the arena");
}

#[test]
fn too_many_attributes_rejects_the_point_quickly() {
    let keys: Vec<String> = (0..100_000).map(|i| format!("k{i}")).collect();
    let attrs: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), "v")).collect();
    let s = Translator::default().translate(bare(vec![metric(
        "g",
        "",
        gauge(vec![num(1.0, &attrs), num(2.0, &[("a", "b")])]),
    )]));
    assert_eq!((s.outcome.accepted, s.outcome.rejected), (1, 1));
    assert!(
        s.outcome.message.contains("max_attributes_per_point (128)"),
        "{}",
        s.outcome.message
    );
    assert_eq!(s.limited.get(LimitReason::TooManyAttributes), 1);
    assert!(
        s.text.len() < 64,
        "nothing of the rejected point was copied: {} bytes",
        s.text.len()
    );
}

#[test]
fn scopes_and_resources_with_too_many_attributes_are_refused() {
    let keys: Vec<String> = (0..200).map(|i| format!("k{i}")).collect();
    let attrs: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), "v")).collect();
    let mut res = attrs.clone();
    res.push(("service.name", "svc"));
    let mut req = request(&res, ("lib", "1"), vec![metric("g", "", gauge(vec![num(1.0, &[])]))]);
    let s = Translator::default().translate(req.clone());
    // target_info refused, the point kept.
    assert_eq!(
        (s.outcome.accepted, s.outcome.rejected),
        (1, 1),
        "{}",
        s.outcome.message
    );
    assert!(s.outcome.message.contains("target_info"), "{}", s.outcome.message);
    if let Some(scope) = req.resource_metrics[0].scope_metrics[0].scope.as_mut() {
        scope.attributes = kvs(&attrs);
    }
    let s = Translator::default().translate(req);
    assert_eq!(
        (s.outcome.accepted, s.outcome.rejected),
        (0, 2),
        "{}",
        s.outcome.message
    );
    assert!(s.outcome.message.contains("scope `lib`"), "{}", s.outcome.message);
    assert_eq!(s.limited.get(LimitReason::TooManyAttributes), 2);
}

#[test]
fn a_too_large_label_set_rejects_the_point() {
    // 8 values of 4,000 bytes: each under the value limit, 32 kB together.
    let v = "x".repeat(4_000);
    let keys: Vec<String> = (0..8).map(|i| format!("k{i}")).collect();
    let attrs: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), v.as_str())).collect();
    let s = Translator::default().translate(bare(vec![metric(
        "g",
        "",
        histogram(vec![
            hpoint(&[1.0], &[1, 1], 1.0, &attrs),
            hpoint(&[1.0], &[1, 1], 1.0, &attrs[..2]),
        ]),
    )]));
    assert_eq!((s.outcome.accepted, s.outcome.rejected), (1, 1));
    assert!(
        s.outcome.message.contains("max_label_set_size (16KiB)"),
        "{}",
        s.outcome.message
    );
    assert_eq!(s.limited.get(LimitReason::LabelSetTooLarge), 1);
    assert_eq!(s.floats.len(), 1, "the rejected histogram's buckets were not kept");
}

#[test]
fn limits_are_counted_in_telemetry_once_per_batch() {
    let tel = Arc::new(Telemetry::default());
    let t = Translator::default().with_stats(tel.limited.clone());
    let long = "k".repeat(300);
    t.translate(bare(vec![metric("g", "", gauge(vec![num(1.0, &[(&long, "v")])]))]));
    t.translate(bare(vec![metric("g", "", gauge(vec![num(1.0, &[(&long, "v")])]))]));
    assert_eq!(
        tel.limited
            .limited_items(Signal::Metrics, LimitReason::LabelNameTooLong),
        2
    );
    let mut text = String::new();
    tel.render(crate::model::Format::OpenMetrics, 0, &mut text);
    assert!(
        text.contains("spindle_limited_items_total{signal=\"metrics\",reason=\"label_name_too_long\"} 2"),
        "{text}"
    );
}

#[test]
fn a_label_name_does_not_depend_on_the_value_before_it() {
    // `.b` sanitizes to `_b`, also right after a value ending in `_` in the arena.
    let req = bare(vec![metric(
        "m",
        "",
        gauge(vec![num(1.0, &[("a", "v_"), (".b", "x")])]),
    )]);
    let out = Translator::default().translate(req);
    let p = &out.points[0];
    let names: Vec<&str> = out.point_labels(p).iter().map(|l| out.str(l.name)).collect();
    assert_eq!(names, ["_b", "a"]);
}
