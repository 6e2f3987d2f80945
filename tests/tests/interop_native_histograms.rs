//! Native histograms with a real Prometheus: the OpenTelemetry Python SDK records an exponential
//! histogram (a View with `ExponentialBucketHistogramAggregation`) inside sampled spans and sends
//! it over gRPC; Prometheus (Debian package, `--enable-feature=native-histograms,exemplar-storage`)
//! scrapes Spindle, which serves it the protobuf exposition. Prometheus's API must return a native
//! histogram whose count and sum are what the SDK recorded, a `histogram_quantile` close to the
//! true median, no classic `_count` series (it is native, not classic), and exemplars with the
//! SDK's trace ids. The same through remote write (`send_native_histograms: true`) into a
//! Prometheus remote-write receiver with native histograms on.
//!
//! Span metrics: the Python SDK sends spans (`send_spans.py`, whose durations cycle through its
//! `DURATIONS_MS`) to a Spindle with `processors.span_metrics.histogram: native`, and to one with
//! `both`; Prometheus with native histograms on must hold `traces_span_metrics_duration_seconds`
//! as a native histogram per series whose count is the spans sent for it and whose
//! `histogram_quantile` lies within one bucket of the durations' true quantile. With `both`, a
//! Prometheus without native histograms scrapes the configured classic buckets with exact counts,
//! and a native one keeps them beside the native histogram when its version can
//! (`scrape_classic_histograms`, 2.45+) — 2.42 cannot, and keeps only the native one.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;
use spindle::config::HistogramKind;
use spindle_e2e::{
    Prometheus, Protocol, SentSpans, classic_histograms_option, run_python, send_spans_to, start_spindle, unix_now,
    url_encode,
};

const TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Deserialize)]
struct Sent {
    count: u64,
    sum: f64,
    values: Vec<f64>,
    trace_ids: Vec<String>,
    scale: i32,
    exemplars: Vec<String>,
}

/// The single value of an instant query, polled until `ok` holds or the timeout.
async fn poll_value(prom: &Prometheus, query: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let path = format!("/api/v1/query?query={}", url_encode(query));
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let answer = prom.api(&path).await;
        let value = answer["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok());
        if let Some(v) = value.filter(|v| ok(*v)) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{query}: last answer {answer}\ntarget: {}\nPrometheus log:\n{}",
            prom.target_health().await,
            prom.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Runs the SDK's sender against Spindle's gRPC receiver.
async fn send(spindle: &spindle::app::Running) -> Sent {
    let endpoint = format!("http://{}", spindle.grpc_addr);
    let out = run_python(
        "send_exponential.py",
        &["--protocol", "grpc", "--endpoint", &endpoint, "--service", "native-svc"],
        None,
    )
    .await;
    let sent: Sent = serde_json::from_str(out.stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("send_exponential.py: {e}\n{}\n{}", out.stdout, out.stderr));
    assert!(
        sent.scale >= 0,
        "the SDK picked a scale Prometheus holds as is: {}",
        sent.scale
    );
    sent
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_native_histograms_with_exemplars() {
    let spindle = start_spindle(|_| {}).await;
    let prom = Prometheus::start_native_histograms(spindle.prometheus_addr).await;
    let sent = send(&spindle).await;
    check(&prom, &sent).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn remote_write_carries_native_histograms_with_exemplars() {
    let prom = Prometheus::start_native_remote_write_receiver().await;
    let url = prom.remote_write_url();
    let spindle = start_spindle(|c| {
        let rw = &mut c.exporters.remote_write;
        rw.endpoint = Some(url);
        rw.interval = spindle::config::DurationStr(Duration::from_secs(1));
        rw.send_native_histograms = true;
    })
    .await;
    let sent = send(&spindle).await;
    check(&prom, &sent).await;
}

/// What Prometheus must hold of what the SDK sent: a native histogram with its count, sum, a
/// median within one bucket, no classic series, and exemplars of the SDK's spans.
async fn check(prom: &Prometheus, sent: &Sent) {
    let series = "demo_exp_latency_seconds{job=\"native-svc\",route=\"/search\"}";
    let count = poll_value(prom, &format!("histogram_count({series})"), |v| v == sent.count as f64).await;
    assert_eq!(count, sent.count as f64);
    let sum = poll_value(prom, &format!("histogram_sum({series})"), |_| true).await;
    assert!((sum - sent.sum).abs() <= 1e-9 * sent.sum, "sum {sum} vs {}", sent.sum);

    let mut sorted = sent.values.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let q = poll_value(prom, &format!("histogram_quantile(0.5, {series})"), |_| true).await;
    // At the SDK's scale a bucket is at most 2^(2^-scale) wide: within one bucket of the truth.
    let width = 2f64.powf(2f64.powi(-sent.scale));
    assert!(
        q / median <= width && median / q <= width,
        "median {median}, histogram_quantile {q}, bucket width factor {width}"
    );

    // Native only: no classic series were stored beside it.
    let classic = prom
        .api(&format!(
            "/api/v1/query?query={}",
            url_encode("demo_exp_latency_seconds_count")
        ))
        .await;
    assert_eq!(classic["data"]["result"], Value::Array(Vec::new()), "{classic}");

    // Exemplars, with the SDK's trace ids.
    let now = unix_now();
    let path = format!(
        "/api/v1/query_exemplars?query={}&start={}&end={}",
        url_encode(series),
        now - 600.0,
        now + 60.0
    );
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let answer = prom.api(&path).await;
        let traces: Vec<String> = answer["data"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["exemplars"].as_array().cloned().unwrap_or_default())
            .filter_map(|e| e["labels"]["trace_id"].as_str().map(str::to_owned))
            .collect();
        if !traces.is_empty() {
            for t in &traces {
                assert!(sent.trace_ids.contains(t), "exemplar trace {t} is not the SDK's");
                assert!(
                    sent.exemplars.contains(t),
                    "exemplar trace {t} was not one the SDK attached"
                );
            }
            break;
        }
        assert!(Instant::now() < deadline, "no exemplars: {answer}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

const DURATION: &str = "traces_span_metrics_duration_seconds";

/// A span-metrics series: (span name, kind, status).
type SeriesKey = (String, String, String);

/// The durations (seconds) `send_spans.py` gave each series' spans.
fn durations(sent: &SentSpans) -> BTreeMap<SeriesKey, Vec<f64>> {
    let mut out: BTreeMap<SeriesKey, Vec<f64>> = BTreeMap::new();
    for s in &sent.spans {
        out.entry((s.name.clone(), s.kind.clone(), s.status.clone()))
            .or_default()
            .push(s.duration_ms as f64 / 1000.0);
    }
    out
}

/// Every series of an instant query's vector answer, by (span name, kind, status) and, when
/// given, one more label (`le`), with its value; polled until `ok` holds or the timeout.
async fn poll_vector(
    prom: &Prometheus,
    query: &str,
    extra: Option<&str>,
    ok: impl Fn(&BTreeMap<(SeriesKey, String), f64>) -> bool,
) -> BTreeMap<(SeriesKey, String), f64> {
    let path = format!("/api/v1/query?query={}", url_encode(query));
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let answer = prom.api(&path).await;
        let got: BTreeMap<(SeriesKey, String), f64> = answer["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| {
                let m = &r["metric"];
                let label = |k: &str| m[k].as_str().unwrap_or_default().to_owned();
                let key = (label("span_name"), label("span_kind"), label("status_code"));
                let value = r["value"][1].as_str()?.parse::<f64>().ok()?;
                Some(((key, extra.map(label).unwrap_or_default()), value))
            })
            .collect();
        if ok(&got) {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{query}: last answer {answer}\ntarget: {}\nPrometheus log:\n{}",
            prom.target_health().await,
            prom.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The native schema Spindle holds a series with these durations at, at the coarsest: each
/// request is recorded from scale 20 down until its buckets fit in 160 (`native_max_buckets`),
/// a request's durations are some of the series', and Prometheus holds at most schema 8.
fn coarsest_schema(values: &[f64]) -> i32 {
    let (lo, hi) = values
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    let index = |v: f64, s: i32| (v.log2() * 2f64.powi(s)).ceil() as i64 - 1;
    let mut s = 20;
    while s > -10 && index(hi, s) - index(lo, s) + 1 > 160 {
        s -= 1;
    }
    s.min(8)
}

/// Sends spans through the SDK and checks what a Prometheus with native histograms holds of
/// them: a native histogram per series counting its spans, with quantiles within one bucket of
/// the truth, and the same calls counted.
async fn check_span_native_histograms(prom: &Prometheus, sent: &SentSpans) {
    let want = durations(sent);
    let selector = format!("{DURATION}{{service_name=\"{}\"}}", sent.service);
    let counts: BTreeMap<SeriesKey, f64> = want.iter().map(|(k, v)| (k.clone(), v.len() as f64)).collect();
    let by_series = |got: &BTreeMap<(SeriesKey, String), f64>| -> BTreeMap<SeriesKey, f64> {
        got.iter().map(|((k, _), v)| (k.clone(), *v)).collect()
    };
    poll_vector(prom, &format!("histogram_count({selector})"), None, |got| {
        by_series(got) == counts
    })
    .await;
    let sum = poll_vector(prom, &format!("histogram_sum({selector})"), None, |got| {
        got.len() == want.len()
    })
    .await;
    for (key, values) in &want {
        let total: f64 = values.iter().sum();
        let got = sum[&(key.clone(), String::new())];
        assert!(
            (got - total).abs() <= 1e-9 * total.max(1.0),
            "{key:?}: sum {got} vs {total}"
        );
    }
    for q in [0.5, 0.9] {
        let got = poll_vector(prom, &format!("histogram_quantile({q}, {selector})"), None, |got| {
            got.len() == want.len()
        })
        .await;
        for (key, values) in &want {
            let mut sorted = values.clone();
            sorted.sort_by(f64::total_cmp);
            // Prometheus's rank q·count falls in the bucket of the ⌈q·count⌉-th smallest value.
            let truth = sorted[((q * sorted.len() as f64).ceil() as usize).max(1) - 1];
            let estimate = got[&(key.clone(), String::new())];
            let width = 2f64.powf(2f64.powi(-coarsest_schema(values))) * (1.0 + 1e-9);
            assert!(
                estimate / truth <= width && truth / estimate <= width,
                "{key:?}: q{q} true {truth}, histogram_quantile {estimate}, bucket width factor {width}"
            );
        }
    }
}

/// What a Prometheus holds of the classic buckets of `sent`'s spans: at each of `bounds` (and
/// `+Inf`) the spans at most that long, exactly, per series, and `_count`.
async fn check_span_classic_buckets(prom: &Prometheus, sent: &SentSpans, bounds: &[f64]) {
    let want_durations = durations(sent);
    let mut want: BTreeMap<(SeriesKey, String), f64> = BTreeMap::new();
    for (key, values) in &want_durations {
        for le in bounds.iter().copied().chain([f64::INFINITY]) {
            let n = values.iter().filter(|v| **v <= le).count() as f64;
            want.insert((key.clone(), format_le(le)), n);
        }
    }
    let selector = format!("{DURATION}_bucket{{service_name=\"{}\"}}", sent.service);
    let normalize = |got: &BTreeMap<(SeriesKey, String), f64>| -> BTreeMap<(SeriesKey, String), f64> {
        got.iter()
            .map(|((k, le), v)| ((k.clone(), format_le(le.parse::<f64>().unwrap_or(f64::NAN))), *v))
            .collect()
    };
    let got = poll_vector(prom, &selector, Some("le"), |got| normalize(got) == want).await;
    assert_eq!(normalize(&got), want);
    let count = poll_vector(
        prom,
        &format!("{DURATION}_count{{service_name=\"{}\"}}", sent.service),
        None,
        |got| got.len() == want_durations.len(),
    )
    .await;
    for (key, values) in &want_durations {
        assert_eq!(count[&(key.clone(), String::new())], values.len() as f64, "{key:?}");
    }
}

/// A bucket bound as a comparable string (`le` values Prometheus returns are formatted its way).
fn format_le(le: f64) -> String {
    if le.is_infinite() {
        "+Inf".into()
    } else {
        format!("{le:e}")
    }
}

/// How many series of `query` Prometheus has now.
async fn series_count(prom: &Prometheus, query: &str) -> usize {
    let answer = prom.api(&format!("/api/v1/query?query={}", url_encode(query))).await;
    answer["data"]["result"].as_array().map_or(0, Vec::len)
}

/// `histogram: native`: span durations reach Prometheus as native histograms only.
#[tokio::test(flavor = "multi_thread")]
async fn span_metrics_native_histograms_reach_prometheus() {
    let spindle = start_spindle(|c| c.processors.span_metrics.histogram = HistogramKind::Native).await;
    let prom = Prometheus::start_native_histograms(spindle.prometheus_addr).await;
    let sent = send_spans_to(
        spindle.grpc_addr,
        spindle.http_addr,
        Protocol::Grpc,
        "spans-native",
        40,
        5,
    )
    .await;
    check_span_native_histograms(&prom, &sent).await;
    assert_eq!(
        series_count(&prom, &format!("{DURATION}_bucket")).await,
        0,
        "native only: no classic series"
    );
}

/// `histogram: both`: the native histogram as with `native`, and the configured classic buckets
/// for a scraper without native histograms — and beside the native histogram in a native one
/// that keeps classic buckets (Prometheus 2.45+); Prometheus 2.42 has no such option and keeps
/// only the native histogram.
#[tokio::test(flavor = "multi_thread")]
async fn span_metrics_both_reach_prometheus_as_native_and_classic_histograms() {
    let spindle = start_spindle(|c| c.processors.span_metrics.histogram = HistogramKind::Both).await;
    let bounds = spindle::config::SpanMetricsConfig::default().buckets;
    let keep = classic_histograms_option();
    let extra = keep.map(|k| format!("    {k}: true\n")).unwrap_or_default();
    let native = Prometheus::start_native_histograms_with(spindle.prometheus_addr, &extra).await;
    let classic = Prometheus::start(spindle.prometheus_addr).await;
    let sent = send_spans_to(
        spindle.grpc_addr,
        spindle.http_addr,
        Protocol::Http,
        "spans-both",
        40,
        5,
    )
    .await;
    check_span_native_histograms(&native, &sent).await;
    check_span_classic_buckets(&classic, &sent, &bounds).await;
    if keep.is_some() {
        check_span_classic_buckets(&native, &sent, &bounds).await;
    } else {
        // Scrapes after the native histograms arrived carried the classic buckets too; 2.42
        // ingests only the native ones.
        assert_eq!(
            series_count(&native, &format!("{DURATION}_bucket")).await,
            0,
            "Prometheus before 2.45 keeps only the native buckets of a histogram that has both"
        );
    }
}
