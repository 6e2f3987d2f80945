//! Native histograms with a real Prometheus: the OpenTelemetry Python SDK records an exponential
//! histogram (a View with `ExponentialBucketHistogramAggregation`) inside sampled spans and sends
//! it over gRPC; Prometheus (Debian package, `--enable-feature=native-histograms,exemplar-storage`)
//! scrapes Spindle, which serves it the protobuf exposition. Prometheus's API must return a native
//! histogram whose count and sum are what the SDK recorded, a `histogram_quantile` close to the
//! true median, no classic `_count` series (it is native, not classic), and exemplars with the
//! SDK's trace ids. The same through remote write (`send_native_histograms: true`) into a
//! Prometheus remote-write receiver with native histograms on.

use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;
use spindle_e2e::{Prometheus, run_python, start_spindle, unix_now, url_encode};

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
