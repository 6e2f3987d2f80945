//! Interop of Spindle's `/metrics` exposition with independent parsers.
//!
//! After the OpenTelemetry Python SDK has sent data (with exemplars), the OpenMetrics output must
//! parse with `prometheus_client`'s strict OpenMetrics parser (exemplars intact), the Prometheus
//! text 0.0.4 output must pass `promtool check metrics` and carry no exemplars, content
//! negotiation must follow the `Accept` header Prometheus really sends, and gzip must be served
//! when asked for.

use spindle::app::Running;
use spindle_e2e::{
    OPENMETRICS_ACCEPT, ParsedSample, Protocol, SendOptions, SentSummary, get, parse_exposition,
    parse_with_prometheus_client, peer_binary, run_process, send_metrics, start_spindle, wait_for_openmetrics,
};

/// The `Accept` header Prometheus 2.x sends when OpenMetrics is enabled (exemplar storage on).
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// Starts Spindle, sends one round from the Python SDK inside spans, waits until it is visible.
async fn spindle_with_sdk_data(service: &str) -> (Running, SentSummary) {
    let spindle = start_spindle(|_| {}).await;
    let sent = send_metrics(&spindle, &SendOptions::new(Protocol::Grpc, service)).await;
    let want = sent.requests["/checkout"] as f64;
    wait_for_openmetrics(
        spindle.prometheus_addr,
        "demo_requests_total from the Python SDK",
        "demo_requests_total",
        |exp| {
            exp.find("demo_requests_total", &[("job", &sent.job), ("route", "/checkout")])
                .iter()
                .any(|s| s.value == want && s.exemplar.is_some())
        },
    )
    .await;
    (spindle, sent)
}

#[tokio::test(flavor = "multi_thread")]
async fn openmetrics_parses_with_prometheus_client_and_keeps_exemplars() {
    let (spindle, sent) = spindle_with_sdk_data("expo-om").await;
    let scrape = get(spindle.prometheus_addr, "/metrics", &[("accept", OPENMETRICS_ACCEPT)]).await;
    assert_eq!(scrape.status, 200);
    assert!(
        scrape.content_type.starts_with("application/openmetrics-text")
            && scrape.content_type.contains("version=1.0.0"),
        "OpenMetrics Content-Type, got {:?}",
        scrape.content_type
    );
    let text = scrape.text();
    assert!(text.ends_with("# EOF\n"), "OpenMetrics must end with `# EOF\\n`");

    let parsed = parse_with_prometheus_client(&text).await;
    let family = |name: &str| {
        parsed.families.iter().find(|f| f.name == name).unwrap_or_else(|| {
            panic!(
                "prometheus_client found no family `{name}`; families: {:?}",
                parsed.families.iter().map(|f| &f.name).collect::<Vec<_>>()
            )
        })
    };
    for (name, kind) in [
        ("demo_requests", "counter"),
        ("demo_latency_seconds", "histogram"),
        ("demo_queue_depth", "gauge"),
        ("demo_temperature", "gauge"),
        ("target", "info"),
    ] {
        assert_eq!(family(name).kind, kind, "type of family `{name}`");
    }

    let ours = |s: &&ParsedSample| s.labels.get("job") == Some(&sent.job);
    let counter = family("demo_requests")
        .samples
        .iter()
        .filter(ours)
        .find(|s| s.name == "demo_requests_total" && s.labels.get("route").map(String::as_str) == Some("/checkout"))
        .expect("demo_requests_total{route=\"/checkout\"} after prometheus_client parsing");
    assert_eq!(counter.value.as_f64(), Some(sent.requests["/checkout"] as f64));
    let ex = counter
        .exemplar
        .as_ref()
        .expect("the counter's exemplar survives prometheus_client parsing");
    assert!(
        sent.has_span(&ex.labels["trace_id"], &ex.labels["span_id"]),
        "exemplar {:?} is one of the SDK's spans",
        ex.labels
    );
    assert!(ex.timestamp.is_some(), "exemplar timestamp survives parsing");

    let bucket_exemplars: Vec<_> = family("demo_latency_seconds")
        .samples
        .iter()
        .filter(ours)
        .filter(|s| s.name == "demo_latency_seconds_bucket")
        .filter_map(|s| s.exemplar.as_ref())
        .collect();
    assert!(
        !bucket_exemplars.is_empty(),
        "histogram bucket exemplars survive prometheus_client parsing"
    );
    for ex in bucket_exemplars {
        assert!(
            sent.has_span(&ex.labels["trace_id"], &ex.labels["span_id"]),
            "bucket exemplar {:?} is one of the SDK's spans",
            ex.labels
        );
    }
    spindle.shutdown().await.expect("spindle shuts down cleanly");
}

#[tokio::test(flavor = "multi_thread")]
async fn text_format_passes_promtool_and_has_no_exemplars() {
    let (spindle, sent) = spindle_with_sdk_data("expo-text").await;
    let scrape = get(spindle.prometheus_addr, "/metrics", &[]).await;
    assert_eq!(scrape.status, 200);
    assert!(
        scrape.content_type.starts_with("text/plain") && scrape.content_type.contains("0.0.4"),
        "text format Content-Type, got {:?}",
        scrape.content_type
    );
    let text = scrape.text();
    assert!(
        !text.contains("# {"),
        "text format 0.0.4 must not contain exemplars:\n{text}"
    );
    assert!(!text.contains("# EOF"), "text format 0.0.4 has no `# EOF`");
    let exp = parse_exposition(&text);
    let counter = exp.one("demo_requests_total", &[("job", &sent.job), ("route", "/checkout")]);
    assert_eq!(counter.value, sent.requests["/checkout"] as f64);
    assert_eq!(
        exp.types.get("demo_requests_total").map(String::as_str),
        Some("counter"),
        "text format names the counter family with its _total suffix"
    );

    let promtool = peer_binary("promtool");
    let (ok, out) = run_process(&promtool, &["check", "metrics"], Some(text.as_bytes())).await;
    assert!(
        ok,
        "`promtool check metrics` rejected the text output:\n--- promtool stdout ---\n{}\n--- promtool stderr ---\n{}\n--- input ---\n{text}",
        out.stdout, out.stderr
    );
    spindle.shutdown().await.expect("spindle shuts down cleanly");
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_accept_header_negotiates_openmetrics() {
    let (spindle, _sent) = spindle_with_sdk_data("expo-accept").await;
    let scrape = get(spindle.prometheus_addr, "/metrics", &[("accept", PROMETHEUS_ACCEPT)]).await;
    assert_eq!(scrape.status, 200);
    assert!(
        scrape.content_type.starts_with("application/openmetrics-text"),
        "Prometheus' own Accept header must select OpenMetrics, got Content-Type {:?}",
        scrape.content_type
    );
    let text = scrape.text();
    assert!(text.ends_with("# EOF\n"));
    assert!(text.contains(" # {"), "OpenMetrics output carries exemplars");

    let plain = get(
        spindle.prometheus_addr,
        "/metrics",
        &[("accept", "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")],
    )
    .await;
    assert!(
        plain.content_type.starts_with("text/plain"),
        "a text-only Accept header selects text 0.0.4, got {:?}",
        plain.content_type
    );
    spindle.shutdown().await.expect("spindle shuts down cleanly");
}

#[tokio::test(flavor = "multi_thread")]
async fn gzip_when_asked_for() {
    let (spindle, sent) = spindle_with_sdk_data("expo-gzip").await;
    for (accept, eof) in [(Some(OPENMETRICS_ACCEPT), true), (None, false)] {
        let mut headers = vec![("accept-encoding", "gzip")];
        if let Some(a) = accept {
            headers.push(("accept", a));
        }
        let scrape = get(spindle.prometheus_addr, "/metrics", &headers).await;
        assert_eq!(scrape.status, 200);
        assert_eq!(
            scrape.content_encoding, "gzip",
            "Content-Encoding with Accept-Encoding: gzip (accept {accept:?})"
        );
        assert_eq!(&scrape.body[..2], &[0x1f, 0x8b], "body is gzip (magic bytes)");
        let text = scrape.text();
        assert_eq!(
            text.ends_with("# EOF\n"),
            eof,
            "format after gunzip (accept {accept:?})"
        );
        let exp = parse_exposition(&text);
        assert_eq!(
            exp.one("demo_requests_total", &[("job", &sent.job), ("route", "/checkout")])
                .value,
            sent.requests["/checkout"] as f64
        );
    }
    let identity = get(spindle.prometheus_addr, "/metrics", &[("accept-encoding", "identity")]).await;
    assert!(
        identity.content_encoding.is_empty() || identity.content_encoding == "identity",
        "no compression unless asked, got {:?}",
        identity.content_encoding
    );
    spindle.shutdown().await.expect("spindle shuts down cleanly");
}
