//! Tests of the exposition encoders: golden files, escaping, histogram rules, and encode → parse
//! round trips through a small strict parser of both formats.
//!
//! Golden files live in `pipeline/tests/golden/`; after an intended change of the output, rewrite
//! them with `UPDATE_GOLDEN=1 cargo test -p spindle --lib expose::tests` and review the diff.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::{
    self as pm, AggregationTemporality, exponential_histogram_data_point::Buckets, metric::Data,
};
use proptest::prelude::*;

use super::*;
use crate::process::translate::Translator;
use crate::telemetry::Telemetry;
use crate::testing::{self, counter, gauge, kvs, metrics_request_in, point, sum};

// ---- OTLP builders -------------------------------------------------------------------------

fn request(resource: &[(&str, &str)], scope: (&str, &str), metrics: Vec<pm::Metric>) -> ExportMetricsServiceRequest {
    metrics_request_in(
        Some(testing::resource(kvs(resource))),
        Some(testing::scope(scope.0, scope.1)),
        metrics,
    )
}

fn metric(name: &str, unit: &str, help: &str, data: Data) -> pm::Metric {
    pm::Metric {
        description: help.into(),
        ..testing::metric(name, unit, data)
    }
}

const CUMULATIVE: i32 = AggregationTemporality::Cumulative as i32;

fn num(v: f64, attrs: &[(&str, &str)], exemplars: Vec<pm::Exemplar>) -> pm::NumberDataPoint {
    pm::NumberDataPoint {
        exemplars,
        ..point(v, kvs(attrs))
    }
}

fn updown(points: Vec<pm::NumberDataPoint>) -> Data {
    sum(false, false, points)
}

fn hpoint(bounds: &[f64], counts: &[u64], sum: Option<f64>, attrs: &[(&str, &str)]) -> pm::HistogramDataPoint {
    testing::hpoint(bounds, counts, sum, kvs(attrs))
}

fn histogram(points: Vec<pm::HistogramDataPoint>) -> Data {
    testing::histogram(false, points)
}

fn exponential(points: Vec<pm::ExponentialHistogramDataPoint>) -> Data {
    Data::ExponentialHistogram(pm::ExponentialHistogram {
        data_points: points,
        aggregation_temporality: CUMULATIVE,
    })
}

fn ex(trace: u8, value: f64, time_unix_nano: u64) -> pm::Exemplar {
    pm::Exemplar {
        trace_id: (0..16).map(|i| trace.wrapping_add(i)).collect(),
        span_id: (0..8).map(|i| trace.wrapping_mul(3).wrapping_add(i)).collect(),
        time_unix_nano,
        value: Some(pm::exemplar::Value::AsDouble(value)),
        ..Default::default()
    }
}

fn store() -> Store {
    let reserved = Telemetry::reserved_names();
    let reserved: Vec<&str> = reserved.iter().map(String::as_str).collect();
    Store::new(Duration::from_secs(300), 100_000, &reserved)
}

fn load(store: &Store, req: ExportMetricsServiceRequest) {
    let o = store.write(Translator::default().translate(req), Instant::now());
    assert_eq!(o.rejected, 0, "{}", o.message);
}

fn render_str(store: &Store, format: Format) -> String {
    let mut out = Vec::new();
    render(store, &Telemetry::default(), format, &mut out);
    String::from_utf8(out).expect("exposition is UTF-8")
}

fn lines_starting<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(prefix)).collect()
}

// ---- golden files --------------------------------------------------------------------------

const T0: u64 = 1_700_000_000_123_456_789;

/// A fixed store content covering every type, units, help text, escaping and exemplars.
fn golden_store() -> Store {
    let s = store();
    let resource = [
        ("service.name", "checkout"),
        ("service.namespace", "shop"),
        ("service.instance.id", "i-1"),
        ("host.name", "web-1"),
    ];
    let mut duration = hpoint(&[0.005, 0.1, 1.0], &[2, 3, 1, 1], Some(2.5), &[("http.route", "/cart")]);
    duration.exemplars = vec![ex(1, 0.003, T0), ex(2, 0.5, T0 + 1_000_000), ex(3, 3.0, T0 + 2_000_000)];
    // Start times become `created_timestamp` in protobuf (nothing in the text formats).
    duration.start_time_unix_nano = T0 - 60_000_000_000;
    let mut rpc = pm::ExponentialHistogramDataPoint {
        count: 4,
        sum: Some(7.5),
        scale: 0,
        zero_count: 1,
        positive: Some(Buckets {
            offset: 0,
            bucket_counts: vec![1, 2],
        }),
        start_time_unix_nano: T0 - 30_000_000_000,
        ..Default::default()
    };
    rpc.exemplars = vec![ex(4, 3.0, T0)];
    let gc = pm::SummaryDataPoint {
        count: 10,
        sum: 0.5,
        quantile_values: [(0.5, 0.01), (0.99, 0.2)]
            .iter()
            .map(|&(quantile, value)| pm::summary_data_point::ValueAtQuantile { quantile, value })
            .collect(),
        start_time_unix_nano: 1_600_000_000_000_000_000,
        ..Default::default()
    };
    let mut get = num(
        42.0,
        &[("http.request.method", "GET"), ("http.route", "/cart")],
        vec![ex(9, 1.0, T0)],
    );
    get.start_time_unix_nano = T0 - 3_600_000_000_000;
    let metrics = vec![
        metric(
            "http.server.requests",
            "{request}",
            "Requests served.",
            counter(vec![
                get,
                num(7.0, &[("http.request.method", "POST"), ("http.route", "/pay")], vec![]),
            ]),
        ),
        metric(
            "process.memory.usage",
            "By",
            "Resident \"memory\"\nin bytes \\ total",
            gauge(vec![num(123456789.0, &[], vec![])]),
        ),
        metric(
            "cpu.utilization",
            "1",
            "",
            gauge(vec![num(0.25, &[("cpu", "0")], vec![])]),
        ),
        metric(
            "http.server.request.duration",
            "s",
            "Duration of HTTP server requests.",
            histogram(vec![duration]),
        ),
        metric(
            "temperature.change",
            "Cel",
            "Change since the last reading.",
            histogram(vec![hpoint(&[-10.0, 0.0, 10.0], &[1, 2, 3, 4], Some(-3.0), &[])]),
        ),
        metric("rpc.latency", "s", "RPC latency.", exponential(vec![rpc])),
        metric(
            "gc.pause",
            "s",
            "GC pauses.",
            Data::Summary(pm::Summary { data_points: vec![gc] }),
        ),
        metric(
            "weird.values",
            "",
            "Odd label values.",
            counter(vec![num(
                1e-5,
                &[("path", "C:\\dir \"quoted\"\nline2 ünï€")],
                vec![ex(5, 2.0, 0)],
            )]),
        ),
        metric(
            "queue.depth",
            "{item}",
            "Items waiting.",
            updown(vec![num(-3.0, &[("queue", "in")], vec![])]),
        ),
    ];
    load(&s, request(&resource, ("io.spindle.demo", "1.2.0"), metrics));
    s
}

/// Drops the self-metric lines whose values depend on timing.
fn without_timing(text: &str) -> String {
    text.lines()
        .filter(|l| !l.starts_with("spindle_scrape_duration_seconds"))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn check_golden(file: &str, actual: &str) {
    let path = format!("{}/tests/golden/{file}", env!("CARGO_MANIFEST_DIR"));
    let actual = without_timing(actual);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(format!("{}/tests/golden", env!("CARGO_MANIFEST_DIR"))).unwrap();
        std::fs::write(&path, &actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e} (UPDATE_GOLDEN=1 writes it)"));
    let expected = without_timing(&expected);
    if expected != actual {
        let (i, (e, a)) = expected
            .lines()
            .chain(std::iter::repeat("<end>"))
            .zip(actual.lines().chain(std::iter::repeat("<end>")))
            .enumerate()
            .find(|(_, (e, a))| e != a)
            .unwrap();
        panic!(
            "{file} differs at line {}:\nexpected: {e}\n  actual: {a}\n\nfull output:\n{actual}",
            i + 1
        );
    }
}

#[test]
fn golden_openmetrics() {
    let out = render_str(&golden_store(), Format::OpenMetrics);
    check_golden("exposition.openmetrics.txt", &out);
    parse(&out, Dialect::OpenMetrics).unwrap_or_else(|e| panic!("{e}\n{out}"));
}

#[test]
fn golden_text() {
    let out = render_str(&golden_store(), Format::Text);
    check_golden("exposition.text.txt", &out);
    parse(&out, Dialect::Text).unwrap_or_else(|e| panic!("{e}\n{out}"));
}

#[test]
fn golden_comparison_ignores_only_scrape_duration() {
    let t = Telemetry::default();
    t.scrape_took(Duration::from_millis(7));
    let mut with_timing = Vec::new();
    render(&golden_store(), &t, Format::OpenMetrics, &mut with_timing);
    let with_timing = String::from_utf8(with_timing).unwrap();
    let plain = render_str(&golden_store(), Format::OpenMetrics);
    assert_ne!(with_timing, plain);
    assert_eq!(without_timing(&with_timing), without_timing(&plain));
}

// ---- format details ------------------------------------------------------------------------

#[test]
fn openmetrics_and_text_differ_where_they_must() {
    let s = golden_store();
    let om = render_str(&s, Format::OpenMetrics);
    let text = render_str(&s, Format::Text);

    assert!(om.ends_with("\n# EOF\n"), "OpenMetrics ends with # EOF");
    assert_eq!(om.matches("# EOF").count(), 1);
    assert!(!text.contains("# EOF"));

    assert!(om.contains("# TYPE http_server_requests counter\n"));
    assert!(text.contains("# TYPE http_server_requests_total counter\n"));
    assert!(om.contains("# TYPE target info\n"));
    assert!(text.contains("# TYPE target_info gauge\n"));
    assert!(om.contains("# UNIT http_server_request_duration_seconds seconds\n"));
    assert!(!text.contains("# UNIT"));

    let exemplar = " # {trace_id=\"090a0b0c0d0e0f101112131415161718\",span_id=\"1b1c1d1e1f202122\"} 1.0 1700000000.123";
    let sample = "http_server_requests_total{http_request_method=\"GET\",http_route=\"/cart\",instance=\"i-1\",job=\"shop/checkout\",otel_scope_name=\"io.spindle.demo\",otel_scope_version=\"1.2.0\"} 42.0";
    assert!(om.contains(&format!("\n{sample}{exemplar}\n")), "{om}");
    assert!(text.contains(&format!("\n{sample}\n")), "{text}");
    assert!(!text.contains(" # {"), "no exemplars in text format");
    // Exemplar without a timestamp.
    assert!(om.contains("} 2.0\n"), "{om}");
    // Gauges never carry exemplars, summaries neither.
    for l in om.lines().filter(|l| l.contains(" # {")) {
        assert!(l.contains("_total{") || l.contains("_bucket{"), "{l}");
    }
}

#[test]
fn label_values_are_escaped() {
    let s = store();
    let nasty = "q\"uote back\\slash new\nline ünï€😀 {a=\"b\",c} # x";
    load(
        &s,
        request(
            &[],
            ("", ""),
            vec![metric("g", "", "", gauge(vec![num(1.0, &[("v", nasty)], vec![])]))],
        ),
    );
    let want = r#"g{v="q\"uote back\\slash new\nline ünï€😀 {a=\"b\",c} # x"} 1.0"#;
    for f in [Format::OpenMetrics, Format::Text] {
        let out = render_str(&s, f);
        assert!(out.lines().any(|l| l == want), "{f:?}:\n{out}");
    }
}

#[test]
fn help_is_escaped_per_format() {
    let s = store();
    let help = "Says \"hi\"\nand C:\\path\\n.";
    load(
        &s,
        request(
            &[],
            ("", ""),
            vec![metric("g", "", help, gauge(vec![num(1.0, &[], vec![])]))],
        ),
    );
    let om = render_str(&s, Format::OpenMetrics);
    assert!(
        om.starts_with("# TYPE g gauge\n# HELP g Says \\\"hi\\\"\\nand C:\\\\path\\\\n.\n"),
        "{om}"
    );
    let text = render_str(&s, Format::Text);
    assert!(
        text.starts_with("# HELP g Says \"hi\"\\nand C:\\\\path\\\\n.\n# TYPE g gauge\n"),
        "{text}"
    );
}

#[test]
fn negative_bucket_bounds_emit_no_sum_or_count() {
    let s = store();
    let neg = pm::ExponentialHistogramDataPoint {
        count: 3,
        sum: Some(1.0),
        scale: 0,
        positive: Some(Buckets {
            offset: 0,
            bucket_counts: vec![2],
        }),
        negative: Some(Buckets {
            offset: 0,
            bucket_counts: vec![1],
        }),
        ..Default::default()
    };
    load(
        &s,
        request(
            &[],
            ("", ""),
            vec![
                metric(
                    "neg",
                    "",
                    "",
                    histogram(vec![hpoint(&[-1.0, 1.0], &[1, 1, 1], Some(0.5), &[])]),
                ),
                metric(
                    "zero",
                    "",
                    "",
                    histogram(vec![hpoint(&[0.0, 1.0], &[1, 1, 1], Some(0.5), &[])]),
                ),
                metric("eneg", "", "", exponential(vec![neg])),
                metric("unknown", "", "", histogram(vec![hpoint(&[1.0], &[1, 1], None, &[])])),
            ],
        ),
    );
    for f in [Format::OpenMetrics, Format::Text] {
        let out = render_str(&s, f);
        for name in ["neg", "eneg", "unknown"] {
            assert!(
                lines_starting(&out, &format!("{name}_sum")).is_empty(),
                "{f:?} {name}:\n{out}"
            );
            assert!(
                lines_starting(&out, &format!("{name}_count")).is_empty(),
                "{f:?} {name}:\n{out}"
            );
            assert!(!lines_starting(&out, &format!("{name}_bucket{{le=\"+Inf\"}} 3")).is_empty() || name == "unknown");
        }
        assert_eq!(
            lines_starting(&out, "neg_bucket"),
            [
                "neg_bucket{le=\"-1.0\"} 1",
                "neg_bucket{le=\"1.0\"} 2",
                "neg_bucket{le=\"+Inf\"} 3"
            ]
        );
        assert_eq!(
            lines_starting(&out, "eneg_bucket{le=\"-1.0\"}"),
            ["eneg_bucket{le=\"-1.0\"} 1"],
            "{out}"
        );
        // A zero bound is not negative.
        assert_eq!(lines_starting(&out, "zero_count"), ["zero_count 3"]);
        assert_eq!(lines_starting(&out, "zero_sum"), ["zero_sum 0.5"]);
    }
}

#[test]
fn count_equals_the_inf_bucket() {
    let s = store();
    let mut low = hpoint(&[1.0], &[2, 3], Some(4.0), &[("case", "count_low")]);
    low.count = 3;
    let mut high = hpoint(&[1.0], &[2, 3], Some(4.0), &[("case", "count_high")]);
    high.count = 10;
    let exact = hpoint(&[1.0, 2.0], &[1, 0, 4], Some(9.0), &[("case", "exact")]);
    let bucketless = pm::HistogramDataPoint {
        count: 6,
        sum: Some(1.0),
        attributes: kvs(&[("case", "none")]),
        ..Default::default()
    };
    let e = pm::ExponentialHistogramDataPoint {
        count: 2, // fewer than its buckets hold
        sum: Some(9.0),
        scale: 1,
        zero_count: 1,
        positive: Some(Buckets {
            offset: -1,
            bucket_counts: vec![1, 0, 2],
        }),
        ..Default::default()
    };
    load(
        &s,
        request(
            &[],
            ("", ""),
            vec![
                metric("h", "", "", histogram(vec![low, high, exact, bucketless])),
                metric("e", "", "", exponential(vec![e])),
            ],
        ),
    );
    for f in [Format::OpenMetrics, Format::Text] {
        let out = render_str(&s, f);
        let fams = parse(&out, dialect(f)).unwrap_or_else(|e| panic!("{e}\n{out}"));
        let mut checked = 0;
        for fam in fams.iter().filter(|fam| fam.name == "h" || fam.name == "e") {
            let mut by_series: BTreeMap<Labels, Vec<&Sample>> = BTreeMap::new();
            for smp in &fam.samples {
                let key = smp.labels.iter().filter(|(k, _)| k != "le").cloned().collect();
                by_series.entry(key).or_default().push(smp);
            }
            for (labels, samples) in by_series {
                let buckets: Vec<(f64, f64)> = samples
                    .iter()
                    .filter(|x| x.name.ends_with("_bucket"))
                    .map(|x| (le_of(x), x.value))
                    .collect();
                assert!(
                    buckets.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
                    "{labels:?}: {buckets:?}"
                );
                let inf = buckets
                    .last()
                    .filter(|b| b.0 == f64::INFINITY)
                    .expect("ends with +Inf")
                    .1;
                let count = samples
                    .iter()
                    .find(|x| x.name.ends_with("_count"))
                    .expect("has _count")
                    .value;
                assert_eq!(count, inf, "{f:?} {labels:?}");
                checked += 1;
            }
        }
        assert_eq!(checked, 5);
        assert_eq!(
            lines_starting(&out, "h_count{case=\"count_low\"}"),
            ["h_count{case=\"count_low\"} 5"]
        );
        assert_eq!(
            lines_starting(&out, "h_count{case=\"count_high\"}"),
            ["h_count{case=\"count_high\"} 10"]
        );
        assert_eq!(
            lines_starting(&out, "h_bucket{case=\"none\",le=\"+Inf\"}"),
            ["h_bucket{case=\"none\",le=\"+Inf\"} 6"]
        );
        assert_eq!(lines_starting(&out, "e_count"), ["e_count 4"]);
    }
}

#[test]
fn exponential_histogram_becomes_classic_buckets() {
    let out = render_str(&golden_store(), Format::OpenMetrics);
    let l = "instance=\"i-1\",job=\"shop/checkout\",otel_scope_name=\"io.spindle.demo\",otel_scope_version=\"1.2.0\"";
    let want = [
        format!("rpc_latency_seconds_bucket{{{l},le=\"0.0\"}} 1"),
        format!("rpc_latency_seconds_bucket{{{l},le=\"2.0\"}} 2"),
        format!(
            "rpc_latency_seconds_bucket{{{l},le=\"4.0\"}} 4 # {{trace_id=\"0405060708090a0b0c0d0e0f10111213\",span_id=\"0c0d0e0f10111213\"}} 3.0 1700000000.123"
        ),
        format!("rpc_latency_seconds_bucket{{{l},le=\"+Inf\"}} 4"),
        format!("rpc_latency_seconds_count{{{l}}} 4"),
        format!("rpc_latency_seconds_sum{{{l}}} 7.5"),
    ];
    assert_eq!(lines_starting(&out, "rpc_latency_seconds"), want);
}

/// Valid OTLP: a zero bucket of width 0.5 next to an (empty) positive bucket `(0.25, 0.5]`. The
/// classic buckets must still have strictly increasing, unique `le` values.
#[test]
fn exponential_buckets_under_the_zero_threshold_keep_le_increasing() {
    let s = store();
    let e = pm::ExponentialHistogramDataPoint {
        count: 5,
        sum: Some(3.0),
        scale: 0,
        zero_count: 2,
        zero_threshold: 0.5,
        positive: Some(Buckets {
            offset: -2,
            bucket_counts: vec![0, 3],
        }),
        ..Default::default()
    };
    load(
        &s,
        request(&[], ("", ""), vec![metric("e", "", "", exponential(vec![e]))]),
    );
    let out = render_str(&s, Format::OpenMetrics);
    let fams = parse(&out, Dialect::OpenMetrics).unwrap();
    let fam = fams.iter().find(|f| f.name == "e").unwrap();
    let buckets: Vec<(f64, f64)> = fam
        .samples
        .iter()
        .filter(|x| x.name == "e_bucket")
        .map(|x| (le_of(x), x.value))
        .collect();
    assert!(
        buckets.windows(2).all(|w| w[0].0 < w[1].0),
        "le not strictly increasing: {buckets:?}"
    );
    assert_eq!(buckets.first(), Some(&(0.5, 2.0)), "{buckets:?}");
    assert_eq!(buckets.last(), Some(&(f64::INFINITY, 5.0)), "{buckets:?}");
}

#[test]
fn families_without_series_are_not_rendered() {
    let s = Store::new(Duration::from_secs(300), 1, &[]);
    let o = s.write(
        Translator::default().translate(request(
            &[],
            ("", ""),
            vec![
                metric("a", "", "", gauge(vec![num(1.0, &[], vec![])])),
                metric("b", "", "", counter(vec![num(1.0, &[], vec![])])),
            ],
        )),
        Instant::now(),
    );
    assert_eq!(o.rejected, 1);
    for f in [Format::OpenMetrics, Format::Text] {
        let out = render_str(&s, f);
        assert!(out.contains("# TYPE a gauge\n"));
        assert!(
            !out.contains("# TYPE b") && !out.contains("\nb_total"),
            "{f:?}: family b has no series:\n{out}"
        );
        parse(&out, dialect(f)).unwrap();
    }
}

// ---- a small strict parser -----------------------------------------------------------------

/// A parsed label set, in order.
type Labels = Vec<(String, String)>;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Dialect {
    OpenMetrics,
    Text,
}

fn dialect(f: Format) -> Dialect {
    match f {
        Format::OpenMetrics => Dialect::OpenMetrics,
        Format::Text => Dialect::Text,
        Format::Protobuf => unreachable!("the protobuf format is not text; see protobuf_tests.rs"),
    }
}

#[derive(Debug, Clone, PartialEq)]
struct ParsedExemplar {
    labels: Labels,
    value: f64,
    /// Nanoseconds since the epoch.
    timestamp: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: Labels,
    value: f64,
    exemplar: Option<ParsedExemplar>,
}

#[derive(Debug, Clone, PartialEq, Default)]
struct ParsedFamily {
    name: String,
    typ: String,
    unit: Option<String>,
    help: Option<String>,
    samples: Vec<Sample>,
}

fn le_of(s: &Sample) -> f64 {
    let le = &s.labels.iter().find(|(k, _)| k == "le").expect("bucket has le").1;
    parse_float(le).expect("le is a float")
}

fn is_name(s: &str, colon: bool) -> bool {
    let mut cs = s.chars();
    cs.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
        && cs.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
}

/// `NaN`, `+Inf`, `-Inf`, or `[+-]?digits[.digits][e[+-]digits]`.
fn parse_float(s: &str) -> Result<f64, String> {
    match s {
        "NaN" => return Ok(f64::NAN),
        "+Inf" => return Ok(f64::INFINITY),
        "-Inf" => return Ok(f64::NEG_INFINITY),
        _ => {}
    }
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (mantissa, exp) = match body.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e.strip_prefix(['+', '-']).unwrap_or(e))),
        None => (body, None),
    };
    let (int, frac) = match mantissa.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (mantissa, None),
    };
    let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || !frac.is_none_or(digits) || !exp.is_none_or(digits) {
        return Err(format!("bad number {s:?}"));
    }
    s.parse().map_err(|e| format!("bad number {s:?}: {e}"))
}

fn unescape(s: &str, quote: bool) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut cs = s.chars();
    while let Some(c) = cs.next() {
        match c {
            '\\' => match cs.next() {
                Some('\\') => out.push('\\'),
                Some('n') => out.push('\n'),
                Some('"') if quote => out.push('"'),
                other => return Err(format!("bad escape \\{other:?} in {s:?}")),
            },
            '"' if quote => return Err(format!("unescaped quote in {s:?}")),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Parses `{name="value",…}` at the start of `s`; returns the labels and the rest.
fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
    let mut rest = s.strip_prefix('{').ok_or("expected {")?;
    let mut labels: Labels = Vec::new();
    if let Some(r) = rest.strip_prefix('}') {
        return Ok((labels, r));
    }
    loop {
        let eq = rest.find("=\"").ok_or_else(|| format!("expected =\" in {rest:?}"))?;
        let name = &rest[..eq];
        if !is_name(name, false) {
            return Err(format!("bad label name {name:?}"));
        }
        if labels.iter().any(|(k, _)| k == name) {
            return Err(format!("duplicate label {name:?}"));
        }
        rest = &rest[eq + 2..];
        // The value ends at the first quote not escaped by a backslash.
        let mut end = None;
        let mut escaped = false;
        for (i, b) in rest.bytes().enumerate() {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let end = end.ok_or("unterminated label value")?;
        labels.push((name.to_string(), unescape(&rest[..end], true)?));
        rest = &rest[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        } else {
            return Err(format!("expected , or }} after label value, got {rest:?}"));
        }
    }
}

/// `secs[.fraction]` as nanoseconds.
fn parse_timestamp(s: &str) -> Result<u64, String> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    if secs.is_empty()
        || !secs.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 9
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(format!("bad timestamp {s:?}"));
    }
    let frac_ns: u64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().unwrap()
    };
    Ok(secs.parse::<u64>().map_err(|e| e.to_string())? * 1_000_000_000 + frac_ns)
}

fn parse_sample(line: &str, d: Dialect) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("sample without value")?;
    let name = &line[..name_end];
    if !is_name(name, true) {
        return Err(format!("bad metric name {name:?}"));
    }
    let (labels, rest) = if line[name_end..].starts_with('{') {
        parse_labels(&line[name_end..])?
    } else {
        (Vec::new(), &line[name_end..])
    };
    let rest = rest.strip_prefix(' ').ok_or("expected a space before the value")?;
    let (value, exemplar) = match rest.split_once(" # ") {
        Some((v, e)) if d == Dialect::OpenMetrics => {
            let (elabels, erest) = parse_labels(e)?;
            let erest = erest
                .strip_prefix(' ')
                .ok_or("expected a space before the exemplar value")?;
            let (ev, ets) = match erest.split_once(' ') {
                Some((v, ts)) => (v, Some(parse_timestamp(ts)?)),
                None => (erest, None),
            };
            let len: usize = elabels.iter().map(|(k, v)| k.chars().count() + v.chars().count()).sum();
            if len > 128 {
                return Err(format!("exemplar label set of {len} characters"));
            }
            (
                v,
                Some(ParsedExemplar {
                    labels: elabels,
                    value: parse_float(ev)?,
                    timestamp: ets,
                }),
            )
        }
        _ => (rest, None),
    };
    if value.contains(' ') {
        return Err(format!("unexpected text after the value: {value:?}"));
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value: parse_float(value)?,
        exemplar,
    })
}

/// The sample-name suffixes a family of type `typ` may use, and whether they may carry exemplars.
fn allowed_suffixes(typ: &str, d: Dialect) -> &'static [(&'static str, bool)] {
    match (typ, d) {
        ("counter", Dialect::OpenMetrics) => &[("_total", true), ("_created", false)],
        ("counter", Dialect::Text) => &[("", false)],
        ("gauge", _) => &[("", false)],
        ("info", Dialect::OpenMetrics) => &[("_info", false)],
        ("histogram", _) => &[
            ("_bucket", true),
            ("_count", false),
            ("_sum", false),
            ("_created", false),
        ],
        ("summary", _) => &[("", false), ("_count", false), ("_sum", false), ("_created", false)],
        _ => &[],
    }
}

/// A strict parser of both exposition formats as Spindle writes them: metadata before samples,
/// each family once, sample names matching their family's type, exemplars only where allowed,
/// OpenMetrics ending in exactly one `# EOF`.
fn parse(text: &str, d: Dialect) -> Result<Vec<ParsedFamily>, String> {
    let body = match d {
        Dialect::OpenMetrics => text.strip_suffix("# EOF\n").ok_or("OpenMetrics must end with # EOF")?,
        Dialect::Text => text,
    };
    if !body.is_empty() && !body.ends_with('\n') {
        return Err("missing final newline".into());
    }
    let mut fams: Vec<ParsedFamily> = Vec::new();
    for (n, line) in body.lines().enumerate() {
        let err = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if let Some(meta) = line.strip_prefix("# ") {
            let (kw, rest) = meta.split_once(' ').ok_or_else(|| err("bad comment".into()))?;
            let (name, arg) = rest.split_once(' ').unwrap_or((rest, ""));
            if !is_name(name, true) {
                return Err(err("bad family name".into()));
            }
            if fams.last().is_none_or(|f| f.name != name || !f.samples.is_empty()) {
                if fams.iter().any(|f| f.name == name) {
                    return Err(err("family appears twice".into()));
                }
                fams.push(ParsedFamily {
                    name: name.into(),
                    ..Default::default()
                });
            }
            let f = fams.last_mut().unwrap();
            match kw {
                "TYPE" if f.typ.is_empty() => {
                    if allowed_suffixes(arg, d).is_empty() {
                        return Err(err(format!("type {arg:?} not allowed")));
                    }
                    f.typ = arg.into();
                }
                "HELP" if f.help.is_none() => f.help = Some(unescape(arg, d == Dialect::OpenMetrics).map_err(err)?),
                "UNIT" if d == Dialect::OpenMetrics && f.unit.is_none() => {
                    if !name.ends_with(&format!("_{arg}")) {
                        return Err(err("unit is not a suffix of the name".into()));
                    }
                    f.unit = Some(arg.into());
                }
                _ => return Err(err("unexpected or repeated metadata".into())),
            }
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            return Err(err("unexpected line".into()));
        }
        let s = parse_sample(line, d).map_err(err)?;
        let f = fams.last_mut().ok_or_else(|| err("sample before any # TYPE".into()))?;
        if f.typ.is_empty() {
            return Err(err("family without # TYPE".into()));
        }
        let Some(&(_, exemplars_ok)) = allowed_suffixes(&f.typ, d)
            .iter()
            .find(|(sfx, _)| s.name.strip_suffix(sfx) == Some(f.name.as_str()))
        else {
            return Err(err(format!("sample does not belong to {} family {}", f.typ, f.name)));
        };
        if s.exemplar.is_some() && !exemplars_ok {
            return Err(err("exemplar not allowed here".into()));
        }
        if s.labels.iter().any(|(k, _)| k == "le") != s.name.ends_with("_bucket") {
            return Err(err("le goes with _bucket samples".into()));
        }
        f.samples.push(s);
    }
    Ok(fams)
}

#[test]
fn parser_is_strict() {
    let om = Dialect::OpenMetrics;
    let ok = "# TYPE a counter\n# HELP a x\na_total{k=\"v\"} 1.0 # {trace_id=\"ab\"} 2.0 3.5\n# EOF\n";
    let f = parse(ok, om).unwrap();
    assert_eq!(
        f[0].samples[0].exemplar.as_ref().unwrap().timestamp,
        Some(3_500_000_000)
    );
    for bad in [
        "# TYPE a counter\na_total 1\n",                                        // no EOF
        "# TYPE a counter\na 1\n# EOF\n",                                       // counter sample without _total
        "# TYPE a gauge\na 1 # {t=\"1\"} 1\n# EOF\n",                           // exemplar on a gauge
        "# TYPE a gauge\na{k=\"v\"v\"} 1\n# EOF\n",                             // unescaped quote
        "# TYPE a gauge\na{k=\"\\t\"} 1\n# EOF\n",                              // unknown escape
        "# TYPE a gauge\na{k=\"v\",k=\"w\"} 1\n# EOF\n",                        // duplicate label
        "# TYPE a gauge\na 1.5x\n# EOF\n",                                      // bad number
        "# TYPE a gauge\na 1\n# TYPE a gauge\na 2\n# EOF\n",                    // family twice
        "# TYPE a gauge\nb 1\n# EOF\n",                                         // sample from another family
        "# TYPE a_seconds gauge\n# UNIT a_seconds bytes\na_seconds 1\n# EOF\n", // unit not a suffix
        "# TYPE a histogram\na_bucket 1\n# EOF\n",                              // bucket without le
        "# TYPE a gauge\na 1\n# EOF\n# EOF\n",                                  // two EOFs
    ] {
        assert!(parse(bad, om).is_err(), "accepted {bad:?}");
    }
}

// ---- round trips ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct GenExemplar {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    value: f64,
    millis: u64,
}

#[derive(Debug, Clone)]
enum GenValue {
    Counter(f64, Vec<GenExemplar>),
    Gauge(f64),
    /// Per-bucket counts (one more than the family's bounds), sum, exemplars.
    Histogram(Vec<u64>, f64, Vec<GenExemplar>),
}

#[derive(Debug, Clone)]
struct GenFamily {
    kind: u8,
    unit: &'static str,
    help: String,
    bounds: Vec<f64>,
    series: BTreeMap<BTreeMap<String, String>, GenValue>,
}

fn nasty_string() -> BoxedStrategy<String> {
    prop_oneof!["[a-z\"\\\\\n{},=# ü€😀]{0,10}", "\\PC{0,8}", Just(String::new())].boxed()
}

fn gen_exemplars(value: BoxedStrategy<f64>) -> impl Strategy<Value = Vec<GenExemplar>> {
    proptest::collection::vec(
        (any::<[u8; 16]>(), any::<[u8; 8]>(), value, 0u64..4_000_000_000_000).prop_map(
            |(mut t, span_id, value, millis)| {
                t[0] |= 1; // non-zero trace id
                GenExemplar {
                    trace_id: t,
                    span_id,
                    value,
                    millis,
                }
            },
        ),
        0..3,
    )
}

fn gen_family() -> impl Strategy<Value = GenFamily> {
    let labels = proptest::collection::btree_map(
        prop_oneof![Just("a".to_string()), Just("b_c".to_string()), Just("Z9".to_string())],
        nasty_string(),
        0..3,
    )
    .boxed();
    let finite = prop_oneof![-1e6f64..1e6, any::<f64>().prop_filter("finite", |v| v.is_finite())].boxed();
    let bounds = proptest::collection::vec(finite.clone(), 0..5).prop_map(|mut b| {
        b.sort_by(f64::total_cmp);
        b.dedup();
        b
    });
    (
        0u8..3,
        prop_oneof![Just(""), Just("s"), Just("By")],
        nasty_string(),
        bounds,
    )
        .prop_flat_map(move |(kind, unit, help, bounds)| {
            let nb = bounds.len();
            let value: BoxedStrategy<GenValue> = match kind {
                0 => (
                    prop_oneof![
                        0.0f64..1e15,
                        Just(0.0),
                        Just(f64::INFINITY),
                        (0u32..1000).prop_map(f64::from)
                    ],
                    gen_exemplars(any::<f64>().boxed()),
                )
                    .prop_map(|(v, e)| GenValue::Counter(v, e))
                    .boxed(),
                1 => any::<f64>().prop_map(GenValue::Gauge).boxed(),
                _ => (
                    proptest::collection::vec(0u64..1000, nb + 1),
                    prop_oneof![0.0f64..1e9, -1e3f64..0.0, Just(f64::NAN)],
                    gen_exemplars(finite.clone().boxed()),
                )
                    .prop_map(|(c, s, e)| GenValue::Histogram(c, s, e))
                    .boxed(),
            };
            proptest::collection::btree_map(labels.clone(), value, 1..4).prop_map(move |series| GenFamily {
                kind,
                unit,
                help: help.clone(),
                bounds: bounds.clone(),
                series,
            })
        })
}

fn family_name(i: usize, unit: &str) -> String {
    match unit {
        "s" => format!("m{i}_seconds"),
        "By" => format!("m{i}_bytes"),
        _ => format!("m{i}"),
    }
}

fn otlp_exemplars(exs: &[GenExemplar]) -> Vec<pm::Exemplar> {
    exs.iter()
        .map(|e| pm::Exemplar {
            trace_id: e.trace_id.to_vec(),
            span_id: e.span_id.to_vec(),
            time_unix_nano: e.millis * 1_000_000,
            value: Some(pm::exemplar::Value::AsDouble(e.value)),
            ..Default::default()
        })
        .collect()
}

fn build_store(fams: &[GenFamily]) -> Store {
    let s = store();
    let metrics = fams
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let attrs =
                |l: &BTreeMap<String, String>| -> Labels { l.iter().map(|(k, v)| (k.clone(), v.clone())).collect() };
            let data = match f.kind {
                0 | 1 => {
                    let points = f
                        .series
                        .iter()
                        .map(|(l, v)| {
                            let a = attrs(l);
                            let a: Vec<(&str, &str)> = a.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                            match v {
                                GenValue::Counter(x, e) => num(*x, &a, otlp_exemplars(e)),
                                GenValue::Gauge(x) => num(*x, &a, vec![]),
                                GenValue::Histogram(..) => unreachable!(),
                            }
                        })
                        .collect();
                    if f.kind == 0 { counter(points) } else { gauge(points) }
                }
                _ => histogram(
                    f.series
                        .iter()
                        .map(|(l, v)| {
                            let a = attrs(l);
                            let a: Vec<(&str, &str)> = a.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                            let GenValue::Histogram(counts, sum, e) = v else {
                                unreachable!()
                            };
                            let mut p = hpoint(&f.bounds, counts, Some(*sum), &a);
                            p.exemplars = otlp_exemplars(e);
                            p
                        })
                        .collect(),
                ),
            };
            metric(&format!("m{i}"), f.unit, &f.help, data)
        })
        .collect();
    let o = s.write(
        Translator::default().translate(metrics_request_in(None, None, metrics)),
        Instant::now(),
    );
    assert_eq!(o.rejected, 0, "{}", o.message);
    s
}

/// A comparable float: NaNs equal each other, `-0.0` differs from `0.0`.
fn bits(v: f64) -> u64 {
    if v.is_nan() { f64::NAN.to_bits() } else { v.to_bits() }
}

type Key = (String, Labels);
/// Exemplar labels, value bits, timestamp.
type ExemplarVal = (Labels, u64, Option<u64>);
/// Value bits, exemplar.
type Val = (u64, Option<ExemplarVal>);

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn expected_exemplar(e: Option<&GenExemplar>) -> Option<ExemplarVal> {
    e.map(|e| {
        let ns = e.millis * 1_000_000;
        (
            vec![
                ("trace_id".into(), hex(&e.trace_id)),
                ("span_id".into(), hex(&e.span_id)),
            ],
            bits(e.value),
            (ns > 0).then_some(ns),
        )
    })
}

/// The newest exemplar (the later one on equal timestamps).
fn newest<'a>(exs: impl Iterator<Item = &'a GenExemplar>) -> Option<&'a GenExemplar> {
    exs.fold(None, |best: Option<&GenExemplar>, e| match best {
        Some(b) if b.millis > e.millis => Some(b),
        _ => Some(e),
    })
}

/// Canonical form of `le`/`quantile` values, so `1.0` and `1` compare equal.
fn canonical(labels: &[(String, String)]) -> Labels {
    let mut v: Labels = labels
        .iter()
        .map(|(k, v)| match k.as_str() {
            "le" | "quantile" => (k.clone(), format!("{:?}", parse_float(v).unwrap_or(f64::NAN))),
            _ => (k.clone(), v.clone()),
        })
        .collect();
    v.sort();
    v
}

fn expected_samples(fams: &[GenFamily], d: Dialect) -> BTreeMap<Key, Val> {
    let mut out = BTreeMap::new();
    let om = d == Dialect::OpenMetrics;
    for (i, f) in fams.iter().enumerate() {
        let name = family_name(i, f.unit);
        for (labels, v) in &f.series {
            let labels: Labels = labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            let with_le = |le: f64| {
                let mut l = labels.clone();
                l.push((
                    "le".into(),
                    if le == f64::INFINITY {
                        "+Inf".into()
                    } else {
                        format!("{le:?}")
                    },
                ));
                canonical(&l)
            };
            match v {
                GenValue::Counter(x, exs) => {
                    let e = if om {
                        expected_exemplar(newest(exs.iter()))
                    } else {
                        None
                    };
                    out.insert((format!("{name}_total"), canonical(&labels)), (bits(*x), e));
                }
                GenValue::Gauge(x) => {
                    out.insert((name.clone(), canonical(&labels)), (bits(*x), None));
                }
                GenValue::Histogram(counts, sum, exs) => {
                    let bucket_of =
                        |e: &&GenExemplar| f.bounds.iter().position(|b| e.value <= *b).unwrap_or(f.bounds.len());
                    let mut cum = 0u64;
                    for (j, c) in counts.iter().enumerate() {
                        cum += c;
                        let le = f.bounds.get(j).copied().unwrap_or(f64::INFINITY);
                        let e = if om {
                            expected_exemplar(newest(exs.iter().filter(|e| bucket_of(e) == j)))
                        } else {
                            None
                        };
                        out.insert((format!("{name}_bucket"), with_le(le)), (bits(cum as f64), e));
                    }
                    if !(sum.is_nan() || *sum < 0.0 || f.bounds.first().is_some_and(|b| *b < 0.0)) {
                        out.insert((format!("{name}_count"), canonical(&labels)), (bits(cum as f64), None));
                        out.insert((format!("{name}_sum"), canonical(&labels)), (bits(*sum), None));
                    }
                }
            }
        }
    }
    out
}

fn round_trip(fams: &[GenFamily], d: Dialect) -> Result<(), TestCaseError> {
    let store = build_store(fams);
    let format = if d == Dialect::OpenMetrics {
        Format::OpenMetrics
    } else {
        Format::Text
    };
    let out = render_str(&store, format);
    let parsed = parse(&out, d).map_err(|e| TestCaseError::fail(format!("{e}\n{out}")))?;
    // Self metrics come last and parse too.
    prop_assert!(parsed.iter().any(|f| f.name.starts_with("spindle_")));
    let ours: Vec<&ParsedFamily> = parsed.iter().filter(|f| f.name.starts_with('m')).collect();
    prop_assert_eq!(ours.len(), fams.len());
    // Metadata.
    for (i, f) in fams.iter().enumerate() {
        let name = family_name(i, f.unit);
        let (shown, typ) = match (f.kind, d) {
            (0, Dialect::OpenMetrics) => (name.clone(), "counter"),
            (0, Dialect::Text) => (format!("{name}_total"), "counter"),
            (1, _) => (name.clone(), "gauge"),
            _ => (name.clone(), "histogram"),
        };
        let pf = ours
            .iter()
            .find(|p| p.name == shown)
            .ok_or_else(|| TestCaseError::fail(format!("no family {shown}\n{out}")))?;
        prop_assert_eq!(&pf.typ, typ);
        let help = match d {
            Dialect::OpenMetrics => (!f.help.is_empty()).then(|| f.help.clone()),
            Dialect::Text => Some(f.help.clone()),
        };
        prop_assert_eq!(&pf.help, &help);
        if d == Dialect::OpenMetrics {
            let unit = match f.unit {
                "s" => Some("seconds".to_string()),
                "By" => Some("bytes".to_string()),
                _ => None,
            };
            prop_assert_eq!(&pf.unit, &unit);
        }
    }
    // Samples.
    let mut got: BTreeMap<Key, Val> = BTreeMap::new();
    for s in ours.iter().flat_map(|f| &f.samples) {
        let e = s
            .exemplar
            .as_ref()
            .map(|e| (e.labels.clone(), bits(e.value), e.timestamp));
        let prev = got.insert((s.name.clone(), canonical(&s.labels)), (bits(s.value), e));
        prop_assert!(prev.is_none(), "duplicate sample {} {:?}", s.name, s.labels);
    }
    let want = expected_samples(fams, d);
    if got != want {
        let missing: Vec<_> = want.iter().filter(|(k, v)| got.get(*k) != Some(*v)).collect();
        let extra: Vec<_> = got.iter().filter(|(k, v)| want.get(*k) != Some(*v)).collect();
        return Err(TestCaseError::fail(format!(
            "expected but not found: {missing:#?}\nfound but not expected: {extra:#?}\n{out}"
        )));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Random families, series, values, exemplars and nasty label values → OpenMetrics → strict
    /// parse → the same series, values and exemplars.
    #[test]
    fn openmetrics_round_trip(fams in proptest::collection::vec(gen_family(), 1..5)) {
        round_trip(&fams, Dialect::OpenMetrics)?;
    }

    /// The same through the text format (no exemplars).
    #[test]
    fn text_round_trip(fams in proptest::collection::vec(gen_family(), 1..5)) {
        round_trip(&fams, Dialect::Text)?;
    }
}

// ---- the sample walk -----------------------------------------------------------------------

/// A sink that records what the walk hands it, one line per call.
#[derive(Default)]
struct Recorder {
    calls: Vec<String>,
    /// Take exponential histograms natively.
    native: bool,
    /// Skip series whose label set contains this.
    skip: Option<&'static str>,
}

impl walk::Sink for Recorder {
    fn family(&mut self, f: &walk::Family<'_>) {
        self.calls.push(format!("family {} {:?}", f.name, f.kind));
    }

    fn series(&mut self, labels: &[u8]) -> bool {
        let labels = String::from_utf8_lossy(labels);
        if self.skip.is_some_and(|s| labels.contains(s)) {
            return false;
        }
        self.calls.push(format!("series {labels}"));
        true
    }

    fn sample(&mut self, s: &walk::Sample<'_>) {
        let label = s.kind.label().map(|(k, v)| format!(" {k}={v}")).unwrap_or_default();
        let exemplar = s.exemplar.map(|e| format!(" ex={}", e.value)).unwrap_or_default();
        self.calls
            .push(format!("{}{}{label} {:?}{exemplar}", s.name, s.kind.suffix(), s.value));
    }

    fn end_series(&mut self) {
        self.calls.push("end".into());
    }

    fn native(&mut self, name: &str, _labels: &[u8], h: &crate::store::exp::ExpHistogram) -> walk::Native {
        if self.native {
            self.calls
                .push(format!("native {name} count={} scale={}", h.count, h.scale));
            walk::Native::Alone
        } else {
            walk::Native::Declined
        }
    }
}

fn recorded(s: &Store, rec: Recorder) -> Vec<String> {
    let mut rec = rec;
    walk::store(s, &mut rec);
    rec.calls
}

/// What every encoder is handed for a counter, a gauge, both histogram kinds, a summary and an
/// info series: suffixes, `le`/`quantile`, exact counts, exemplars only where they are exposed,
/// `_count` equal to `+Inf`, and `_count`/`_sum` left out for negative bounds.
#[test]
fn the_walk_hands_every_sink_the_samples_of_the_exposition() {
    let calls = recorded(&golden_store(), Recorder::default());
    let of = |prefix: &str| -> Vec<&str> {
        calls
            .iter()
            .map(String::as_str)
            .filter(|c| c.starts_with(prefix))
            .collect()
    };
    assert_eq!(
        of("http_server_requests"),
        [
            "http_server_requests_total Float(42.0) ex=1",
            "http_server_requests_total Float(7.0)"
        ]
    );
    assert_eq!(of("queue_depth"), ["queue_depth Float(-3.0)"]);
    assert_eq!(of("target"), ["target_info Int(1)"]);
    assert_eq!(
        of("http_server_request_duration_seconds"),
        [
            "http_server_request_duration_seconds_bucket le=0.005 Int(2) ex=0.003",
            "http_server_request_duration_seconds_bucket le=0.1 Int(5)",
            "http_server_request_duration_seconds_bucket le=1 Int(6) ex=0.5",
            "http_server_request_duration_seconds_bucket le=inf Int(7) ex=3",
            "http_server_request_duration_seconds_count Int(7)",
            "http_server_request_duration_seconds_sum Float(2.5)",
        ]
    );
    assert_eq!(
        of("rpc_latency_seconds"),
        [
            "rpc_latency_seconds_bucket le=0 Int(1)",
            "rpc_latency_seconds_bucket le=2 Int(2)",
            "rpc_latency_seconds_bucket le=4 Int(4) ex=3",
            "rpc_latency_seconds_bucket le=inf Int(4)",
            "rpc_latency_seconds_count Int(4)",
            "rpc_latency_seconds_sum Float(7.5)",
        ]
    );
    assert_eq!(
        of("gc_pause_seconds"),
        [
            "gc_pause_seconds quantile=0.5 Float(0.01)",
            "gc_pause_seconds quantile=0.99 Float(0.2)",
            "gc_pause_seconds_count Int(10)",
            "gc_pause_seconds_sum Float(0.5)",
        ]
    );
    // Negative bounds: no `_count`, no `_sum`.
    assert_eq!(of("temperature_change_celsius").len(), 4);
    // Each family is announced once before its series; each series is opened and closed once.
    let families: Vec<&str> = of("family ");
    assert_eq!(families.len(), 10, "{families:?}");
    assert_eq!(
        of("family http_server_requests "),
        ["family http_server_requests Counter"]
    );
    assert_eq!(of("series ").len(), 11);
    assert_eq!(of("end").len(), 11);
    assert_eq!(calls.last().map(String::as_str), Some("end"));
}

/// A sink that encodes native histograms takes an exponential histogram whole; the walk then
/// writes no classic samples for it, and explicit-bucket histograms stay classic.
#[test]
fn a_native_sink_takes_exponential_histograms_whole() {
    let calls = recorded(
        &golden_store(),
        Recorder {
            native: true,
            ..Default::default()
        },
    );
    let rpc: Vec<&String> = calls.iter().filter(|c| c.contains("rpc_latency_seconds")).collect();
    assert_eq!(
        rpc,
        [
            "family rpc_latency_seconds Histogram",
            "native rpc_latency_seconds count=4 scale=0"
        ],
        "{calls:#?}"
    );
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.starts_with("http_server_request_duration_seconds_bucket"))
            .count(),
        4
    );
}

/// A series the sink refuses (remote write: labels it cannot parse) gets no samples and no end.
#[test]
fn a_refused_series_gets_no_samples() {
    let all = recorded(&golden_store(), Recorder::default());
    let calls = recorded(
        &golden_store(),
        Recorder {
            skip: Some("POST"),
            ..Default::default()
        },
    );
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.starts_with("http_server_requests_total"))
            .collect::<Vec<_>>(),
        ["http_server_requests_total Float(42.0) ex=1"]
    );
    assert_eq!(
        calls.len(),
        all.len() - 3,
        "the series, its sample and its end are gone"
    );
}

/// The line encoders write exactly what the walk hands them: every sample line of a scrape is one
/// sample of the walk, in the same order.
#[test]
fn scrape_lines_are_the_walked_samples_in_order() {
    let s = golden_store();
    let walked: Vec<String> = recorded(&s, Recorder::default())
        .into_iter()
        .filter(|c| !c.starts_with("family ") && !c.starts_with("series ") && c != "end")
        .collect();
    for f in [Format::OpenMetrics, Format::Text] {
        let out = render_str(&s, f);
        let lines: Vec<&str> = out
            .lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with("spindle_"))
            .collect();
        assert_eq!(lines.len(), walked.len(), "{f:?}");
        for (line, w) in lines.iter().zip(&walked) {
            let name = w.split(' ').next().unwrap_or_default();
            let sample_name = line.split(['{', ' ']).next().unwrap_or_default();
            assert_eq!(sample_name, name, "{f:?}: {line} vs {w}");
            assert_eq!(
                line.contains(" # {"),
                f == Format::OpenMetrics && w.contains(" ex="),
                "{line}"
            );
        }
    }
}

#[path = "protobuf_tests.rs"]
pub(crate) mod protobuf_format;

// ---- translation strategies and escaping ---------------------------------------------------

/// A store translated under `strategy` from metrics with dots, UTF-8 and units.
fn strategy_store(strategy: crate::model::TranslationStrategy) -> Store {
    let s = store();
    let metrics = vec![
        metric(
            "http.server.request.duration",
            "s",
            "Duration.",
            histogram(vec![hpoint(
                &[0.1, 1.0],
                &[1, 2, 3],
                Some(4.0),
                &[("http.route", "/cart")],
            )]),
        ),
        metric(
            "température.cœur",
            "Cel",
            "",
            gauge(vec![num(36.6, &[("zone.név", "a"), ("zone_név", "b")], vec![])]),
        ),
        metric(
            "jobs.done",
            "{job}",
            "",
            counter(vec![num(3.0, &[("queue", "q")], vec![])]),
        ),
    ];
    let req = request(&[("service.name", "svc")], ("scope", "1"), metrics);
    let o = s.write(
        Translator::default().with_strategy(strategy).translate(req),
        Instant::now(),
    );
    assert_eq!(o.rejected, 0, "{}", o.message);
    s
}

fn render_as(store: &Store, format: Format, escaping: crate::model::Escaping) -> Vec<u8> {
    let mut out = Vec::new();
    render_escaped(store, &Telemetry::default(), format, escaping, &mut out);
    out
}

/// Under a UTF-8 strategy the store keeps UTF-8 names: a scrape that asked for `allow-utf-8` gets
/// them (quoted in the text formats), any other gets them escaped as it asked — valid for the
/// strict parser, with label names that escape alike joined into one label.
#[test]
fn utf8_names_are_served_only_to_scrapers_that_ask_for_them() {
    use crate::model::Escaping::*;
    use crate::model::TranslationStrategy::*;
    let s = strategy_store(NoUtf8EscapingWithSuffixes);

    let om = String::from_utf8(render_as(&s, Format::OpenMetrics, AllowUtf8)).expect("UTF-8");
    assert!(
        om.contains("# TYPE \"http.server.request.duration_seconds\" histogram\n"),
        "{om}"
    );
    assert!(
        om.contains("# UNIT \"http.server.request.duration_seconds\" seconds\n"),
        "{om}"
    );
    assert!(
        om.contains("{\"http.server.request.duration_seconds_bucket\",\"http.route\"=\"/cart\",job=\"svc\""),
        "{om}"
    );
    assert!(om.contains("{\"jobs.done_total\",job=\"svc\""), "{om}");
    assert!(om.contains("{\"température.cœur_celsius\",job=\"svc\""), "{om}");
    assert!(om.contains("\"zone.név\"=\"a\",\"zone_név\"=\"b\""), "{om}");

    for format in [Format::OpenMetrics, Format::Text] {
        let text = String::from_utf8(render_as(&s, format, Underscores)).expect("UTF-8");
        let dialect = if format == Format::OpenMetrics {
            Dialect::OpenMetrics
        } else {
            Dialect::Text
        };
        parse(&text, dialect).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(!text.contains('"') || !text.contains("{\""), "nothing quoted: {text}");
        assert!(
            text.contains("http_server_request_duration_seconds_bucket{http_route=\"/cart\",job=\"svc\""),
            "{text}"
        );
        assert!(text.contains("jobs_done_total{job=\"svc\""), "{text}");
        // `zone.név` and `zone_név` both escape to `zone_n_v`: one label, values joined.
        assert!(text.contains("zone_n_v=\"a;b\""), "{text}");
        assert!(text.contains("temp_rature_c_ur_celsius{"), "{text}");
    }
    let dots = String::from_utf8(render_as(&s, Format::OpenMetrics, Dots)).expect("UTF-8");
    assert!(
        dots.contains("http_dot_server_dot_request_dot_duration__seconds_bucket{http_dot_route=\"/cart\""),
        "{dots}"
    );

    let names = |escaping| -> Vec<(String, Vec<String>)> {
        protobuf_format::decode(&render_as(&s, Format::Protobuf, escaping))
    };
    let utf8 = names(AllowUtf8);
    assert!(
        utf8.iter()
            .any(|(n, l)| n == "http.server.request.duration_seconds" && l.contains(&"http.route".to_string())),
        "{utf8:?}"
    );
    let escaped = names(Underscores);
    assert!(
        escaped
            .iter()
            .any(|(n, l)| n == "http_server_request_duration_seconds" && l.contains(&"http_route".to_string())),
        "{escaped:?}"
    );
    assert!(
        escaped.iter().all(|(n, l)| crate::util::labels::is_legacy_name(n, true)
            && l.iter().all(|l| crate::util::labels::is_legacy_name(l, false))),
        "{escaped:?}"
    );
}

/// The default strategy stores legacy names only: every escaping gives the same scrape, byte for
/// byte, so a Prometheus 3 asking for `allow-utf-8` sees what Prometheus 2 sees.
#[test]
fn escaping_changes_nothing_under_the_default_strategy() {
    use crate::model::Escaping::*;
    let s = strategy_store(crate::model::TranslationStrategy::UnderscoreEscapingWithSuffixes);
    for format in [Format::OpenMetrics, Format::Text, Format::Protobuf] {
        let plain = render_as(&s, format, Underscores);
        for e in [AllowUtf8, Dots, Values] {
            assert_eq!(render_as(&s, format, e), plain, "{format:?} {e:?}");
        }
    }
    let om = render_str(&s, Format::OpenMetrics);
    assert!(
        om.contains("http_server_request_duration_seconds_bucket{http_route=\"/cart\""),
        "{om}"
    );
}

/// Without suffixes: no unit suffix and no `# UNIT` (OpenMetrics wants the unit to end the name);
/// counters keep `_total`.
#[test]
fn strategies_without_suffixes_drop_units() {
    use crate::model::TranslationStrategy::*;
    let s = strategy_store(UnderscoreEscapingWithoutSuffixes);
    let om = render_str(&s, Format::OpenMetrics);
    parse(&om, Dialect::OpenMetrics).unwrap_or_else(|e| panic!("{e}\n{om}"));
    assert!(om.contains("# TYPE http_server_request_duration histogram\n"), "{om}");
    assert!(!om.contains("# UNIT"), "{om}");
    assert!(om.contains("jobs_done_total{"), "{om}");
    let s = strategy_store(NoTranslation);
    let om = String::from_utf8(render_as(&s, Format::OpenMetrics, crate::model::Escaping::AllowUtf8)).expect("UTF-8");
    assert!(
        om.contains("# TYPE \"http.server.request.duration\" histogram\n"),
        "{om}"
    );
    assert!(om.contains("{\"température.cœur\",job=\"svc\""), "{om}");
}

/// Two families whose names escape alike cannot both be stored: a scrape without UTF-8 would
/// show one name twice.
#[test]
fn families_that_escape_alike_do_not_mix() {
    let s = store();
    let t = Translator::default().with_strategy(crate::model::TranslationStrategy::NoTranslation);
    let req = request(
        &[("service.name", "svc")],
        ("scope", "1"),
        vec![
            metric("queue.depth", "", "", gauge(vec![num(1.0, &[], vec![])])),
            metric("queue_depth", "", "", gauge(vec![num(2.0, &[], vec![])])),
        ],
    );
    let o = s.write(t.translate(req), Instant::now());
    assert_eq!(o.rejected, 1, "{}", o.message);
    assert!(o.message.contains("queue_depth"), "{}", o.message);
}
