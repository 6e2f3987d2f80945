//! Interop of the cardinality limiter (`processors.cardinality`) with the OpenTelemetry Python SDK.
//!
//! The real SDK (`tests/python/send_high_cardinality.py`, its own cardinality limit raised) sends a
//! counter and a histogram with 100,000 distinct `user_id` values over OTLP/gRPC, cumulative, in
//! two exports: the second re-sends every stream's running total, including the streams Spindle
//! folded in the first, and adds streams seen for the first time. The counter is held by
//! `max_series_per_metric`, the histogram by `max_label_values` (a per-metric override). Then:
//! the OpenMetrics output parses with `prometheus_client`'s strict parser; each metric has at most
//! its limit of series, one of them `{otel_metric_overflow="true"}`; the sums over all series of
//! the counter and of the histogram's `_count`, `_sum` and every `_bucket` equal exactly what the
//! SDK sent; `/api/v1/cardinality` names both metrics with their limits and folded points; and
//! `spindle_cardinality_folded_points_total` counts the same folds.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde::Deserialize;
use spindle::config::MetricOverride;
use spindle_e2e::{
    Exposition, Sample, VISIBLE_TIMEOUT, fetch_openmetrics, get, parse_exposition, parse_with_prometheus_client,
    run_python, start_spindle, wait_for_openmetrics,
};

/// Distinct `user_id` values the SDK sends.
const USERS: u64 = 100_000;
/// Users that first appear in the second export.
const LATE_USERS: u64 = 500;
/// `processors.cardinality.max_series_per_metric`: holds the counter.
const MAX_SERIES_PER_METRIC: usize = 1000;
/// `max_label_values` of the histogram's override.
const HIST_MAX_LABEL_VALUES: usize = 300;

const COUNTER: &str = "hc_requests_total";
const COUNTER_FAMILY: &str = "hc_requests";
const HIST: &str = "hc_latency_milliseconds";
const OVERFLOW: (&str, &str) = ("otel_metric_overflow", "true");

/// What the SDK exported in one round.
#[derive(Debug, Deserialize)]
struct SentRound {
    /// OTel metric name → data points exported (every stream seen so far: cumulative).
    points: HashMap<String, u64>,
}

#[derive(Debug, Deserialize)]
struct SentCounter {
    total: u64,
}

#[derive(Debug, Deserialize)]
struct SentHistogram {
    count: u64,
    sum: u64,
    /// Cumulative count per upper bound (`"10.0"`, …, `"+Inf"`).
    buckets: BTreeMap<String, u64>,
}

/// The JSON line `send_high_cardinality.py` prints.
#[derive(Debug, Deserialize)]
struct Sent {
    instance: String,
    users: u64,
    rounds: Vec<SentRound>,
    counter: SentCounter,
    histogram: SentHistogram,
    timings: serde_json::Value,
}

impl Sent {
    /// Points of `metric` over all rounds.
    fn points(&self, metric: &str) -> u64 {
        self.rounds
            .iter()
            .map(|r| r.points.get(metric).copied().unwrap_or(0))
            .sum()
    }
}

/// Sum over every series of the samples named `name` (with `labels`).
fn total(exp: &Exposition, name: &str, labels: &[(&str, &str)]) -> f64 {
    exp.find(name, labels).iter().map(|s| s.value).sum()
}

/// Distinct label sets (without `le`) of the samples named `name`.
fn series(exp: &Exposition, name: &str) -> BTreeSet<Vec<(String, String)>> {
    exp.find(name, &[])
        .iter()
        .map(|s| {
            s.labels
                .iter()
                .filter(|(k, _)| *k != "le")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .collect()
}

/// The bucket sums by numeric `le` (`+Inf` as infinity).
fn bucket_totals(exp: &Exposition) -> BTreeMap<u64, f64> {
    let mut out = BTreeMap::new();
    for s in exp.find(&format!("{HIST}_bucket"), &[]) {
        let le: f64 = s.label("le").parse().expect("le is a number");
        *out.entry(le.to_bits()).or_insert(0.0) += s.value;
    }
    out
}

/// Whether the exposition shows exactly the totals the SDK sent.
fn totals_match(exp: &Exposition, sent: &Sent) -> bool {
    let h = &sent.histogram;
    total(exp, COUNTER, &[]) == sent.counter.total as f64
        && total(exp, &format!("{HIST}_count"), &[]) == h.count as f64
        && total(exp, &format!("{HIST}_sum"), &[]) == h.sum as f64
        && {
            let got = bucket_totals(exp);
            h.buckets.iter().all(|(le, n)| {
                let le: f64 = le.parse().expect("bound");
                got.get(&le.to_bits()) == Some(&(*n as f64))
            })
        }
}

fn summary_of(exp: &Exposition, sent: &Sent) -> String {
    let h = &sent.histogram;
    format!(
        "counter sum {} (sent {}), histogram _count sum {} (sent {}), _sum sum {} (sent {}), buckets {:?} \
         (sent {:?}); series: counter {}, histogram {}",
        total(exp, COUNTER, &[]),
        sent.counter.total,
        total(exp, &format!("{HIST}_count"), &[]),
        h.count,
        total(exp, &format!("{HIST}_sum"), &[]),
        h.sum,
        bucket_totals(exp)
            .iter()
            .map(|(b, v)| (f64::from_bits(*b), *v))
            .collect::<Vec<_>>(),
        h.buckets,
        series(exp, COUNTER).len(),
        series(exp, &format!("{HIST}_count")).len(),
    )
}

/// The single overflow series sample of `name`, which carries `otel_metric_overflow` only.
fn overflow_sample<'a>(exp: &'a Exposition, name: &str) -> &'a Sample {
    let s = exp.one(name, &[OVERFLOW]);
    assert_eq!(
        s.labels.keys().collect::<Vec<_>>(),
        vec!["otel_metric_overflow"],
        "the overflow series of `{name}` must carry that label only"
    );
    s
}

/// `spindle_cardinality_folded_points_total{metric=<one of names>,reason}` summed.
fn self_folded(exp: &Exposition, names: &[&str], reason: &str) -> f64 {
    exp.find("spindle_cardinality_folded_points_total", &[("reason", reason)])
        .iter()
        .filter(|s| names.contains(&s.label("metric")))
        .map(|s| s.value)
        .sum()
}

/// The entry of `report["limited_metrics"]` whose metric is one of `names`.
fn limited<'a>(report: &'a serde_json::Value, names: &[&str]) -> &'a serde_json::Value {
    report["limited_metrics"]
        .as_array()
        .expect("limited_metrics is an array")
        .iter()
        .find(|m| names.contains(&m["metric"].as_str().unwrap_or("")))
        .unwrap_or_else(|| panic!("/api/v1/cardinality names none of {names:?} in limited_metrics: {report:#}"))
}

/// The entry of `report["top_metrics"]` whose name is one of `names`.
fn top<'a>(report: &'a serde_json::Value, names: &[&str]) -> &'a serde_json::Value {
    report["top_metrics"]
        .as_array()
        .expect("top_metrics is an array")
        .iter()
        .find(|m| names.contains(&m["name"].as_str().unwrap_or("")))
        .unwrap_or_else(|| panic!("/api/v1/cardinality names none of {names:?} in top_metrics: {report:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_high_cardinality_folds_with_exact_totals() {
    let started = Instant::now();
    let spindle = start_spindle(|cfg| {
        let c = &mut cfg.processors.cardinality;
        c.max_series_per_metric = MAX_SERIES_PER_METRIC;
        c.metrics = vec![MetricOverride {
            pattern: format!("{HIST}*"),
            max_series: None,
            max_label_values: Some(HIST_MAX_LABEL_VALUES),
            allow_labels: None,
            deny_labels: None,
        }];
    })
    .await;

    let endpoint = format!("http://{}", spindle.grpc_addr);
    let (users, late) = (USERS.to_string(), LATE_USERS.to_string());
    let args = [
        "--protocol",
        "grpc",
        "--endpoint",
        &endpoint,
        "--service",
        "hc-shop",
        "--users",
        &users,
        "--late-users",
        &late,
    ];
    let out = run_python("send_high_cardinality.py", &args, None).await;
    let sent: Sent = serde_json::from_str(out.stdout.lines().last().unwrap_or_default()).unwrap_or_else(|err| {
        panic!(
            "send_high_cardinality.py printed no valid summary ({err}):\n{}\n{}",
            out.stdout, out.stderr
        )
    });
    let python_done = started.elapsed();
    assert_eq!(sent.users, USERS, "precondition: the SDK sent every user");

    // (3) Totals over all series, overflow included, equal exactly what the SDK sent, after the
    // second (cumulative) export re-sent every folded stream.
    // Polled here rather than with wait_for_openmetrics, so that a timeout reports the totals
    // instead of some 2,000 lines of series.
    let deadline = Instant::now() + VISIBLE_TIMEOUT;
    let exp = loop {
        let exp = parse_exposition(&fetch_openmetrics(spindle.prometheus_addr).await);
        if totals_match(&exp, &sent) {
            break exp;
        }
        assert!(
            Instant::now() < deadline,
            "totals summed over all series (overflow included) must equal what the SDK sent; after \
             {VISIBLE_TIMEOUT:?}: {}\nspindle_cardinality_rejected_points_total:\n{}",
            summary_of(&exp, &sent),
            exp.lines_of("spindle_cardinality_rejected_points_total")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(exp.eof, "OpenMetrics output does not end with # EOF");
    assert_eq!(exp.types.get(COUNTER_FAMILY).map(String::as_str), Some("counter"));
    assert_eq!(exp.types.get(HIST).map(String::as_str), Some("histogram"));

    // (1) The strict prometheus_client OpenMetrics parser accepts the output and sees the same.
    let parsed = parse_with_prometheus_client(&exp.text).await;
    let family = |name: &str| {
        parsed
            .families
            .iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("prometheus_client saw no family `{name}`"))
    };
    let counter_family = family(COUNTER_FAMILY);
    assert_eq!(counter_family.kind, "counter");
    let parsed_counter: f64 = counter_family
        .samples
        .iter()
        .filter(|s| s.name == COUNTER)
        .map(|s| s.value.as_f64().expect("numeric counter value"))
        .sum();
    assert_eq!(
        parsed_counter, sent.counter.total as f64,
        "counter total as prometheus_client parsed it"
    );
    assert!(
        counter_family
            .samples
            .iter()
            .any(|s| s.labels.get(OVERFLOW.0).map(String::as_str) == Some(OVERFLOW.1)),
        "prometheus_client saw no overflow series of {COUNTER}"
    );
    let hist_family = family(HIST);
    assert_eq!(hist_family.kind, "histogram");
    let parsed_count: f64 = hist_family
        .samples
        .iter()
        .filter(|s| s.name == format!("{HIST}_count"))
        .map(|s| s.value.as_f64().expect("numeric _count"))
        .sum();
    assert_eq!(
        parsed_count, sent.histogram.count as f64,
        "histogram count as prometheus_client parsed it"
    );

    // (2) Series per metric within the limit, overflow series included, and the overflow present.
    let counter_series = series(&exp, COUNTER);
    assert!(
        counter_series.len() <= MAX_SERIES_PER_METRIC,
        "{COUNTER} has {} series, more than max_series_per_metric = {MAX_SERIES_PER_METRIC}",
        counter_series.len()
    );
    // Far more users than room: the limiter fills the metric up to its limit.
    assert_eq!(
        counter_series.len(),
        MAX_SERIES_PER_METRIC,
        "{COUNTER}: {} ordinary series + the overflow series",
        MAX_SERIES_PER_METRIC - 1
    );
    let counter_overflow = overflow_sample(&exp, COUNTER);
    assert!(
        counter_overflow.value > 0.0,
        "the counter's overflow series counts the folded users"
    );
    for s in exp.find(COUNTER, &[]).iter().filter(|s| !s.has_labels(&[OVERFLOW])) {
        assert!(
            s.has_labels(&[("job", "hc-shop"), ("instance", &sent.instance)]) && s.label("user_id").starts_with('u'),
            "an ordinary counter series keeps its labels: {:?}",
            s.labels
        );
    }

    let hist_series = series(&exp, &format!("{HIST}_count"));
    for suffix in ["_sum", "_bucket"] {
        assert_eq!(
            series(&exp, &format!("{HIST}{suffix}")),
            hist_series,
            "{HIST}{suffix} has the same series as {HIST}_count"
        );
    }
    assert!(
        hist_series.len() <= MAX_SERIES_PER_METRIC,
        "{HIST} has {} series, more than max_series_per_metric = {MAX_SERIES_PER_METRIC}",
        hist_series.len()
    );
    let users_shown: BTreeSet<&str> = exp
        .find(&format!("{HIST}_count"), &[])
        .iter()
        .map(|s| s.label("user_id"))
        .filter(|u| !u.is_empty())
        .collect();
    assert_eq!(
        users_shown.len(),
        HIST_MAX_LABEL_VALUES,
        "{HIST}: user_id must have max_label_values = {HIST_MAX_LABEL_VALUES} distinct values"
    );
    assert_eq!(
        hist_series.len(),
        HIST_MAX_LABEL_VALUES + 1,
        "{HIST}: one series per admitted user_id + the overflow series"
    );
    let hist_overflow = overflow_sample(&exp, &format!("{HIST}_count"));
    assert!(
        hist_overflow.value > 0.0,
        "the histogram's overflow series counts the folded users"
    );
    overflow_sample(&exp, &format!("{HIST}_sum"));
    assert_eq!(
        exp.find(&format!("{HIST}_bucket"), &[OVERFLOW]).len(),
        sent.histogram.buckets.len(),
        "the histogram's overflow series has every bucket"
    );

    // Every exported point either updated an admitted series (the same streams in both rounds:
    // cumulative exports re-send every stream) or folded.
    let counter_folded = sent.points("hc.requests") - 2 * (MAX_SERIES_PER_METRIC as u64 - 1);
    let hist_folded = sent.points("hc.latency") - 2 * HIST_MAX_LABEL_VALUES as u64;

    // (4) The report names both metrics, their limits and their folded points.
    let resp = get(spindle.prometheus_addr, "/api/v1/cardinality?limit=50", &[]).await;
    assert_eq!(resp.status, 200, "GET /api/v1/cardinality status");
    assert!(
        resp.content_type.starts_with("application/json"),
        "content type {}",
        resp.content_type
    );
    let report: serde_json::Value = serde_json::from_slice(&resp.body).expect("/api/v1/cardinality is JSON");
    let limits = &report["limits"];
    assert_eq!(limits["max_series_per_metric"], MAX_SERIES_PER_METRIC, "{report:#}");
    assert_eq!(limits["max_label_values"], 0, "{report:#}");
    assert_eq!(
        limits["metrics"][0]["max_label_values"], HIST_MAX_LABEL_VALUES,
        "{report:#}"
    );

    // The limiter names metrics by family: counters without `_total`.
    let counter_names = [COUNTER_FAMILY];
    let c = limited(&report, &counter_names);
    assert_eq!(c["folded_points"], counter_folded, "counter folded points: {c:#}");
    assert_eq!(c["folded_by_reason"]["max_series_per_metric"], counter_folded, "{c:#}");
    assert_eq!(c["admitted_series"], MAX_SERIES_PER_METRIC - 1, "{c:#}");
    assert_eq!(c["rejected_points"], serde_json::json!({}), "{c:#}");
    let h = limited(&report, &[HIST]);
    assert_eq!(h["folded_points"], hist_folded, "histogram folded points: {h:#}");
    assert_eq!(h["folded_by_reason"]["max_label_values"], hist_folded, "{h:#}");
    assert_eq!(h["admitted_series"], HIST_MAX_LABEL_VALUES, "{h:#}");
    assert_eq!(h["rejected_points"], serde_json::json!({}), "{h:#}");
    let at_limit = h["labels_at_limit"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["name"] == "user_id"))
        .unwrap_or_else(|| panic!("histogram: user_id not in labels_at_limit: {h:#}"));
    assert_eq!(at_limit["distinct_values"], HIST_MAX_LABEL_VALUES, "{h:#}");

    let tc = top(&report, &counter_names);
    assert_eq!(tc["series"], MAX_SERIES_PER_METRIC, "{tc:#}");
    assert_eq!(tc["has_overflow_series"], true, "{tc:#}");
    assert_eq!(tc["limits"]["max_series"], MAX_SERIES_PER_METRIC, "{tc:#}");
    let th = top(&report, &[HIST]);
    assert_eq!(th["series"], HIST_MAX_LABEL_VALUES + 1, "{th:#}");
    assert_eq!(th["has_overflow_series"], true, "{th:#}");
    assert_eq!(th["limits"]["max_label_values"], HIST_MAX_LABEL_VALUES, "{th:#}");
    assert_eq!(th["limits"]["max_series"], MAX_SERIES_PER_METRIC, "{th:#}");
    assert_eq!(
        report["rejected_points"]
            .as_object()
            .map(|m| m.values().all(|v| v == 0)),
        Some(true),
        "no point may be rejected: {report:#}"
    );

    // (5) The self metric counts the same folds (re-read: the scrape that matched the totals may
    // predate the telemetry update of the last batch by a moment).
    let final_exp = wait_for_openmetrics(
        spindle.prometheus_addr,
        "spindle_cardinality_folded_points_total for both metrics",
        "spindle_cardinality_",
        |e| {
            self_folded(e, &counter_names, "max_series_per_metric") == counter_folded as f64
                && self_folded(e, &[HIST], "max_label_values") == hist_folded as f64
        },
    )
    .await;
    assert!(
        final_exp
            .find("spindle_cardinality_rejected_points_total", &[])
            .iter()
            .all(|s| s.value == 0.0),
        "no point may be rejected:\n{}",
        final_exp.lines_of("spindle_cardinality_rejected_points_total")
    );

    spindle.shutdown().await.expect("spindle shuts down cleanly");
    eprintln!(
        "interop_cardinality: python peer {:.1?} (timings {}), whole test {:.1?}",
        python_done,
        sent.timings,
        started.elapsed()
    );
}
