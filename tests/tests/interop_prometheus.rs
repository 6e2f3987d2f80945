//! Interop with a real Prometheus server scraping Spindle.
//!
//! Prometheus (Debian package `prometheus`, `--enable-feature=exemplar-storage`, `honor_labels:
//! true`, scrape interval 1 s) scrapes an in-process Spindle that received metrics from the
//! OpenTelemetry Python SDK. Prometheus' query API must return the counter with the exact value
//! and Spindle's `job`/`instance` labels, and its exemplar API must return histogram and counter
//! exemplars whose trace ids are the SDK's. Exemplars reach Prometheus only through OpenMetrics,
//! so this also proves content negotiation with a real scraper.

use std::time::{Duration, Instant};

use serde_json::Value;
use spindle_e2e::{Prometheus, Protocol, SendOptions, SentSummary, send_metrics, start_spindle, unix_now, url_encode};

/// Upper bound for Prometheus to show what Spindle exposes.
const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(60);

/// Polls `check` every 500 ms until it returns `Some`, for at most [`PROMETHEUS_TIMEOUT`].
/// On timeout, fails with `what`, the last API answer, target health and Prometheus' log.
async fn poll<T>(prom: &Prometheus, what: &str, path: &str, check: impl Fn(&Value) -> Option<T>) -> T {
    let deadline = Instant::now() + PROMETHEUS_TIMEOUT;
    loop {
        let answer = prom.api(path).await;
        if let Some(found) = check(&answer) {
            return found;
        }
        if Instant::now() > deadline {
            let log = prom.log();
            let tail: Vec<_> = log.lines().rev().take(20).collect();
            panic!(
                "timed out after {PROMETHEUS_TIMEOUT:?} waiting for {what}\nlast answer of {path}: {answer}\n\
                 scrape target: {}\nPrometheus log (last lines, newest first):\n{}",
                prom.target_health().await,
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Exemplars of `selector` in the last 10 minutes whose `trace_id`/`span_id` are the SDK's.
fn sdk_exemplars(answer: &Value, sent: &SentSummary) -> Vec<(String, f64)> {
    let mut found = Vec::new();
    for series in answer["data"].as_array().into_iter().flatten() {
        for ex in series["exemplars"].as_array().into_iter().flatten() {
            let trace = ex["labels"]["trace_id"].as_str().unwrap_or("");
            let span = ex["labels"]["span_id"].as_str().unwrap_or("");
            if sent.has_span(trace, span) {
                let value = ex["value"].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
                found.push((trace.to_owned(), value));
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_values_labels_and_exemplars() {
    let spindle = start_spindle(|_| {}).await;
    let prom = Prometheus::start(spindle.prometheus_addr).await;
    let sent = send_metrics(&spindle, &SendOptions::new(Protocol::Grpc, "prom-checkout")).await;

    let want = sent.requests["/checkout"] as f64;
    let selector = format!("demo_requests_total{{job=\"{}\",route=\"/checkout\"}}", sent.job);
    let query = format!("/api/v1/query?query={}", url_encode(&selector));
    let metric = poll(
        &prom,
        &format!("{selector} == {want} in Prometheus"),
        &query,
        |answer| {
            let result = answer["data"]["result"].as_array()?;
            let series = result.first()?;
            let value: f64 = series["value"][1].as_str()?.parse().ok()?;
            (result.len() == 1 && value == want).then(|| series["metric"].clone())
        },
    )
    .await;
    // honor_labels: Spindle's job/instance win over the scrape config's.
    for (label, expected) in [
        ("job", sent.job.as_str()),
        ("instance", sent.instance.as_str()),
        ("otel_scope_name", sent.scope.name.as_str()),
        ("otel_scope_version", sent.scope.version.as_str()),
    ] {
        assert_eq!(
            metric[label].as_str(),
            Some(expected),
            "label `{label}` of the series in Prometheus: {metric}"
        );
    }

    let target_info = format!(
        "/api/v1/query?query={}",
        url_encode(&format!(
            "target_info{{job=\"{}\",deployment_environment=\"test\"}}",
            sent.job
        ))
    );
    poll(&prom, "target_info in Prometheus", &target_info, |answer| {
        (answer["data"]["result"].as_array()?.len() == 1).then_some(())
    })
    .await;

    let now = unix_now();
    let (start, end) = (format!("{:.3}", now - 600.0), format!("{:.3}", now + 120.0));
    for (name, kind) in [
        ("demo_latency_seconds_bucket", "histogram bucket"),
        ("demo_requests_total", "counter"),
    ] {
        let selector = format!("{name}{{job=\"{}\"}}", sent.job);
        let path = format!(
            "/api/v1/query_exemplars?query={}&start={start}&end={end}",
            url_encode(&selector)
        );
        let exemplars = poll(
            &prom,
            &format!("{kind} exemplars with the SDK's trace ids from {selector}"),
            &path,
            |answer| {
                let found = sdk_exemplars(answer, &sent);
                (!found.is_empty()).then_some(found)
            },
        )
        .await;
        assert!(
            exemplars.iter().all(|(_, v)| v.is_finite()),
            "{kind} exemplar values are numbers: {exemplars:?}"
        );
    }

    drop(prom);
    spindle.shutdown().await.expect("spindle shuts down cleanly");
}
