//! Trace forwarding and span metrics with real peers.
//!
//! The OpenTelemetry Python SDK (`tests/python/send_spans.py`, over OTLP/gRPC or OTLP/HTTP) sends
//! spans to an in-process Spindle whose `exporters.traces.otlp` points at an [`OtlpSink`] — the
//! suite's OTLP receiver, here playing the downstream trace backend. Shows:
//! - every span the SDK sent arrives downstream exactly once, with its trace id, span id, name,
//!   kind, status and service unchanged;
//! - `traces_span_metrics_calls_total` and the duration histogram count exactly what was sent per
//!   (span name, kind, status), and every exemplar on `/metrics` names a span the downstream
//!   acknowledged;
//! - a downstream that fails its first requests, or is down while the SDK sends, loses nothing
//!   once it recovers — and while it is down no exemplar is published;
//! - a real Prometheus with exemplar storage returns span-metric exemplars whose trace ids the
//!   downstream received.
//!
//! Synchronisation is by polling with deadlines: the downstream's span count, Spindle's
//! `spindle_exporter_queue_bytes` (0 once every accepted batch was acknowledged or dropped) and
//! Prometheus' API.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::Value;
use spindle::app::Running;
use spindle::config::{DurationStr, OtlpProtocol};
use spindle_e2e::otlp_sink::{OtlpSink, SinkOptions, SinkSpan};
use spindle_e2e::{
    Exposition, Prometheus, Protocol, SentSpans, fetch_openmetrics, free_port, parse_exposition, send_spans_to,
    start_spindle, unix_now, url_encode,
};

/// Upper bound for spans to reach the downstream (retries included) and Spindle's queue to drain.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(20);
/// Upper bound for Prometheus to show what Spindle exposes.
const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(30);

const CALLS: &str = "traces_span_metrics_calls_total";
const DURATION_COUNT: &str = "traces_span_metrics_duration_seconds_count";
const DURATION_BUCKET: &str = "traces_span_metrics_duration_seconds_bucket";

/// Runs `send_spans.py` against Spindle's OTLP receiver for `protocol`.
async fn send_spans(spindle: &Running, protocol: Protocol, service: &str, traces: u32, per_trace: u32) -> SentSpans {
    send_spans_to(
        spindle.grpc_addr,
        spindle.http_addr,
        protocol,
        service,
        traces,
        per_trace,
    )
    .await
}

/// Spindle forwarding traces over gRPC to `endpoint`, with short batch and retry delays.
async fn spindle_forwarding_to(endpoint: String) -> Running {
    start_spindle(|c| {
        let ex = &mut c.exporters.traces.otlp;
        ex.endpoint = Some(endpoint);
        ex.protocol = OtlpProtocol::Grpc;
        ex.batch_timeout = DurationStr(Duration::from_millis(20));
        ex.retry_initial_backoff = DurationStr(Duration::from_millis(50));
        ex.retry_max_backoff = DurationStr(Duration::from_millis(300));
    })
    .await
}

/// The value of the single sample `name` (no labels expected), if present.
fn value(exp: &Exposition, name: &str) -> Option<f64> {
    exp.samples.iter().find(|s| s.name == name).map(|s| s.value)
}

/// Waits until the downstream has at least `n` spans and Spindle's export queue is empty (every
/// accepted batch acknowledged), then returns the final exposition and the downstream's spans.
/// Once the queue is empty nothing more is sent, so the span list is final.
async fn wait_forwarded(spindle: &Running, down: &OtlpSink, n: usize) -> (Exposition, Vec<SinkSpan>) {
    down.wait_for_spans(FORWARD_TIMEOUT, &format!("at least {n} spans downstream"), |spans| {
        spans.len() >= n
    })
    .await;
    let deadline = Instant::now() + FORWARD_TIMEOUT;
    loop {
        let exp = parse_exposition(&fetch_openmetrics(spindle.prometheus_addr).await);
        if value(&exp, "spindle_exporter_queue_bytes") == Some(0.0) {
            return (exp, down.spans());
        }
        assert!(
            Instant::now() < deadline,
            "Spindle's export queue did not drain within {FORWARD_TIMEOUT:?}:\n{}",
            exp.lines_of("spindle_exporter")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn kind_name(kind: i32) -> &'static str {
    [
        "SPAN_KIND_UNSPECIFIED",
        "SPAN_KIND_INTERNAL",
        "SPAN_KIND_SERVER",
        "SPAN_KIND_CLIENT",
        "SPAN_KIND_PRODUCER",
        "SPAN_KIND_CONSUMER",
    ]
    .get(kind as usize)
    .copied()
    .unwrap_or("?")
}

fn status_name(code: i32) -> &'static str {
    ["STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR"]
        .get(code as usize)
        .copied()
        .unwrap_or("?")
}

/// Every span the SDK sent arrived exactly once, unchanged, and nothing else arrived.
fn assert_received_exactly_once(sent: &SentSpans, received: &[SinkSpan]) {
    let mut seen = BTreeMap::new();
    for r in received {
        *seen.entry((r.trace_id.clone(), r.span_id.clone())).or_insert(0u32) += 1;
    }
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "spans forwarded more than once: {dups:?}");
    let got: BTreeSet<_> = seen.into_keys().collect();
    let want = sent.keys();
    let missing: Vec<_> = want.difference(&got).collect();
    let extra: Vec<_> = got.difference(&want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "downstream spans differ from what the SDK sent: {} missing {missing:?}, {} unexpected {extra:?}",
        missing.len(),
        extra.len()
    );
    assert_eq!(received.len(), sent.spans.len(), "each span exactly once");
    let by_key: BTreeMap<_, _> = received
        .iter()
        .map(|r| ((r.trace_id.as_str(), r.span_id.as_str()), r))
        .collect();
    for s in &sent.spans {
        let r = by_key[&(s.trace_id.as_str(), s.span_id.as_str())];
        assert_eq!(
            (
                r.name.as_str(),
                kind_name(r.kind),
                status_name(r.status_code),
                r.service_name.as_str()
            ),
            (
                s.name.as_str(),
                s.kind.as_str(),
                s.status.as_str(),
                sent.service.as_str()
            ),
            "span {}/{} arrived changed",
            s.trace_id,
            s.span_id
        );
    }
    let trace_ids: BTreeSet<_> = received.iter().map(|r| r.trace_id.clone()).collect();
    assert_eq!(trace_ids, sent.trace_ids(), "trace ids unchanged");
}

/// Span metrics of `service` count exactly what was sent per (name, kind, status), and every
/// span-metric exemplar names a span in `forwarded`. Returns the number of exemplars checked.
fn assert_span_metrics(exp: &Exposition, sent: &SentSpans, forwarded: &BTreeSet<(String, String)>) -> usize {
    let service = [("service_name", sent.service.as_str())];
    let mut shown = BTreeMap::new();
    for s in exp.find(CALLS, &service) {
        let key = (
            s.label("span_name").to_owned(),
            s.label("span_kind").to_owned(),
            s.label("status_code").to_owned(),
        );
        shown.insert(key, s.value);
    }
    let want: BTreeMap<_, _> = sent.counts().into_iter().map(|(k, n)| (k, n as f64)).collect();
    assert_eq!(
        shown,
        want,
        "{CALLS} per (span_name, span_kind, status_code)\n{}",
        exp.lines_of(CALLS)
    );
    for ((name, kind, status), n) in &want {
        let labels = [
            ("service_name", sent.service.as_str()),
            ("span_name", name.as_str()),
            ("span_kind", kind.as_str()),
            ("status_code", status.as_str()),
        ];
        assert_eq!(
            exp.one(DURATION_COUNT, &labels).value,
            *n,
            "{DURATION_COUNT} {labels:?}"
        );
        let inf: Vec<_> = exp
            .find(DURATION_BUCKET, &labels)
            .into_iter()
            .filter(|s| s.label("le") == "+Inf")
            .collect();
        assert_eq!(inf.len(), 1, "one +Inf bucket for {labels:?}");
        assert_eq!(inf[0].value, *n, "+Inf bucket of {labels:?}");
        assert!(
            exp.one(CALLS, &labels).exemplar.is_some(),
            "{CALLS} {labels:?} has an exemplar once its spans were forwarded\n{}",
            exp.lines_of(CALLS)
        );
    }
    let mut checked = 0;
    for s in exp.samples.iter().filter(|s| s.name.starts_with("traces_span_metrics")) {
        let Some(ex) = &s.exemplar else { continue };
        let key = (
            ex.labels.get("trace_id").cloned().unwrap_or_default(),
            ex.labels.get("span_id").cloned().unwrap_or_default(),
        );
        assert!(
            forwarded.contains(&key),
            "exemplar {key:?} on {} {:?} names a span the downstream did not receive",
            s.name,
            s.labels
        );
        checked += 1;
    }
    checked
}

/// SDK over `protocol` → Spindle → downstream: every span once, span metrics and exemplars right.
async fn sdk_spans_arrive_once(protocol: Protocol, service: &str) {
    let down = OtlpSink::start().await;
    let spindle = spindle_forwarding_to(down.grpc_endpoint()).await;
    let sent = send_spans(&spindle, protocol, service, 30, 5).await;

    let (exp, received) = wait_forwarded(&spindle, &down, sent.spans.len()).await;
    assert_received_exactly_once(&sent, &received);
    assert_eq!(
        value(&exp, "spindle_exporter_sent_spans_total"),
        Some(sent.spans.len() as f64)
    );
    let checked = assert_span_metrics(&exp, &sent, &down.span_keys());
    assert!(
        checked > sent.counts().len(),
        "exemplars on counters and buckets ({checked})"
    );
    assert_eq!(down.refused(), 0);
    spindle.shutdown().await.expect("spindle shuts down cleanly");
}

#[tokio::test(flavor = "multi_thread")]
async fn python_sdk_spans_over_grpc_arrive_once_with_span_metrics_and_forwarded_exemplars() {
    sdk_spans_arrive_once(Protocol::Grpc, "traces-grpc").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn python_sdk_spans_over_http_arrive_once_with_span_metrics_and_forwarded_exemplars() {
    sdk_spans_arrive_once(Protocol::Http, "traces-http").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_downstream_failing_its_first_requests_loses_nothing() {
    let down = OtlpSink::start_with(SinkOptions {
        fail_first: 3,
        ..Default::default()
    })
    .await;
    let spindle = spindle_forwarding_to(down.grpc_endpoint()).await;
    let sent = send_spans(&spindle, Protocol::Grpc, "traces-flaky", 20, 4).await;

    let (exp, received) = wait_forwarded(&spindle, &down, sent.spans.len()).await;
    assert_eq!(down.refused(), 3, "the downstream failed its first 3 requests");
    assert_received_exactly_once(&sent, &received);
    let retries = value(&exp, "spindle_exporter_retries_total").unwrap_or(0.0);
    assert!(retries >= 3.0, "spindle_exporter_retries_total = {retries}, want ≥ 3");
    assert_eq!(
        value(&exp, "spindle_exporter_sent_spans_total"),
        Some(sent.spans.len() as f64)
    );
    assert_span_metrics(&exp, &sent, &down.span_keys());
    spindle.shutdown().await.expect("spindle shuts down cleanly");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_downstream_that_is_down_while_the_sdk_sends_loses_nothing() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}").parse().expect("address");
    let spindle = spindle_forwarding_to(format!("http://{addr}")).await;
    let sent = send_spans(&spindle, Protocol::Http, "traces-down", 20, 4).await;

    // The downstream is down: Spindle accepted everything, counts it, retries, and publishes no
    // exemplar (none of the spans has been forwarded yet).
    let deadline = Instant::now() + FORWARD_TIMEOUT;
    loop {
        let exp = parse_exposition(&fetch_openmetrics(spindle.prometheus_addr).await);
        let with_exemplars: Vec<_> = exp
            .samples
            .iter()
            .filter(|s| s.name.starts_with("traces_span_metrics") && s.exemplar.is_some())
            .map(|s| format!("{} {:?}", s.name, s.labels))
            .collect();
        assert!(
            with_exemplars.is_empty(),
            "exemplars published before their spans were forwarded: {with_exemplars:?}"
        );
        assert_eq!(
            value(&exp, "spindle_exporter_sent_spans_total").unwrap_or(0.0),
            0.0,
            "nothing can have been sent"
        );
        let calls: f64 = exp
            .find(CALLS, &[("service_name", "traces-down")])
            .iter()
            .map(|s| s.value)
            .sum();
        let retries = value(&exp, "spindle_exporter_retries_total").unwrap_or(0.0);
        if retries >= 3.0 && calls == sent.spans.len() as f64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Spindle did not count the spans and retry while the downstream was down (calls {calls}, retries {retries})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let down = OtlpSink::start_with(SinkOptions {
        grpc_addr: Some(addr),
        ..Default::default()
    })
    .await;
    let (exp, received) = wait_forwarded(&spindle, &down, sent.spans.len()).await;
    assert_received_exactly_once(&sent, &received);
    assert_eq!(
        value(&exp, "spindle_exporter_sent_spans_total"),
        Some(sent.spans.len() as f64)
    );
    assert_span_metrics(&exp, &sent, &down.span_keys());
    spindle.shutdown().await.expect("spindle shuts down cleanly");
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_returns_span_metric_exemplars_of_forwarded_traces() {
    let down = OtlpSink::start().await;
    let spindle = spindle_forwarding_to(down.grpc_endpoint()).await;
    let prom = Prometheus::start(spindle.prometheus_addr).await;
    let sent = send_spans(&spindle, Protocol::Grpc, "traces-prom", 20, 4).await;
    let (_, received) = wait_forwarded(&spindle, &down, sent.spans.len()).await;
    assert_received_exactly_once(&sent, &received);
    let forwarded_traces = down.trace_ids();
    let forwarded = down.span_keys();

    let now = unix_now();
    let selector = format!("{DURATION_BUCKET}{{service_name=\"{}\"}}", sent.service);
    let path = format!(
        "/api/v1/query_exemplars?query={}&start={:.3}&end={:.3}",
        url_encode(&selector),
        now - 600.0,
        now + 120.0
    );
    let deadline = Instant::now() + PROMETHEUS_TIMEOUT;
    let exemplars = loop {
        let answer: Value = prom.api(&path).await;
        let mut found = Vec::new();
        for series in answer["data"].as_array().into_iter().flatten() {
            for ex in series["exemplars"].as_array().into_iter().flatten() {
                let trace = ex["labels"]["trace_id"].as_str().unwrap_or("").to_owned();
                let span = ex["labels"]["span_id"].as_str().unwrap_or("").to_owned();
                found.push((series["seriesLabels"].clone(), trace, span));
            }
        }
        if !found.is_empty() {
            break found;
        }
        if Instant::now() > deadline {
            panic!(
                "Prometheus returned no exemplars for {selector} within {PROMETHEUS_TIMEOUT:?}\nlast answer: {answer}\n\
                 scrape target: {}\nPrometheus log:\n{}",
                prom.target_health().await,
                prom.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for (series, trace, span) in &exemplars {
        assert!(
            forwarded_traces.contains(trace),
            "Prometheus exemplar on {series} has trace id {trace:?}, which the downstream never received"
        );
        assert!(
            forwarded.contains(&(trace.clone(), span.clone())),
            "Prometheus exemplar on {series} names span {trace}/{span}, which the downstream never received"
        );
    }
    drop(prom);
    spindle.shutdown().await.expect("spindle shuts down cleanly");
}
