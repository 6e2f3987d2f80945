//! The status page in a real browser: headless Chromium (Debian `chromium`, installed by
//! `scripts/test`, driven over the DevTools protocol, `spindle_e2e::browser`) loads `GET /` of a
//! Spindle that the OpenTelemetry Python SDK fed — high-cardinality metrics over gRPC, metrics
//! with HTML in their label values over HTTP, spans forwarded to an OTLP backend that then goes
//! down, so the trace queue holds spans and the exporter has a last error.
//!
//! The page's script must have refreshed it (its live sections swapped in) with nothing on the
//! console; the DOM's top metric and its series count are `/api/v1/cardinality`'s, its queue,
//! sent and receiver figures are `/metrics`'; the metric view shows a sender's label values as
//! text (escaped), not markup. Screenshots are kept in `target/artifacts/` (`page.png`,
//! `page-explore.png`). A second test proves the console check catches a broken script, and that
//! the page's Content-Security-Policy refuses a script that would get onto it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use spindle::config::MetricOverride;
use spindle_e2e::browser::{Browser, artifacts_dir};
use spindle_e2e::otlp_sink::{OtlpSink, SinkReply};
use spindle_e2e::{fetch_text, get, run_python, start_spindle};

/// `name{labels}` → value of a text-format exposition.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

async fn metrics(addr: SocketAddr) -> BTreeMap<String, f64> {
    samples(&fetch_text(addr).await)
}

fn override_max_series(pattern: &str, max_series: usize) -> MetricOverride {
    MetricOverride {
        pattern: pattern.into(),
        max_series: Some(max_series),
        max_label_values: None,
        allow_labels: None,
        deny_labels: None,
    }
}

/// What the page's DOM says about the exporter, the top metric and the receivers.
const DOM_FIGURES: &str = r#"(() => {
  const q = document.querySelector('#exporter-spans td.queue');
  const top = document.querySelector('#top-metrics tbody tr');
  const receivers = [...document.querySelectorAll('#receivers tbody tr')].map(tr => ({
    signal: tr.cells[0].textContent, protocol: tr.cells[1].textContent,
    requests: Number(tr.cells[2].dataset.value), items: Number(tr.cells[3].dataset.value)}));
  return {
    queue_bytes: Number(q.dataset.bytes), queue_capacity: Number(q.dataset.capacity), queue_text: q.textContent,
    sent: Number(document.querySelector('#exporter-spans td.sent').dataset.value),
    last_error: document.querySelector('#exporter-spans td.err').textContent,
    top_name: top.querySelector('th a').textContent, top_href: top.querySelector('th a').getAttribute('href'),
    top_series: Number(top.querySelector('td.series').dataset.value),
    rates: document.querySelector('#summary').textContent,
    receivers };
})()"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_in_chromium_shows_what_metrics_and_the_cardinality_report_say() {
    let sink = OtlpSink::start().await;
    let endpoint = sink.grpc_endpoint();
    let r = start_spindle(move |c| {
        c.exporters.traces.otlp.endpoint = Some(endpoint);
        // hc_requests keeps all its series (the top metric); the others fold.
        c.processors.cardinality.metrics = vec![
            override_max_series("hc_latency*", 500),
            override_max_series("page_visits*", 50),
        ];
    })
    .await;
    let grpc = format!("http://{}", r.grpc_addr);
    let http = format!("http://{}", r.http_addr);
    run_python(
        "send_high_cardinality.py",
        &[
            "--protocol",
            "grpc",
            "--endpoint",
            &grpc,
            "--service",
            "checkout",
            "--users",
            "2000",
            "--late-users",
            "100",
            "--batch",
            "1000",
        ],
        None,
    )
    .await;
    let sent: Value = serde_json::from_str(
        &run_python("send_page_traffic.py", &["--endpoint", &http, "--service", "web"], None)
            .await
            .stdout,
    )
    .expect("send_page_traffic.py JSON");
    let hostile = sent["hostile"].as_str().expect("hostile value").to_string();
    run_python(
        "send_spans.py",
        &[
            "--protocol",
            "http",
            "--endpoint",
            &http,
            "--service",
            "cart",
            "--traces",
            "20",
        ],
        None,
    )
    .await;
    sink.wait_for_spans(Duration::from_secs(15), "80 spans forwarded", |s| s.len() >= 80)
        .await;
    // The backend goes down: the next spans wait in the queue, retried, and the exporter keeps
    // its last error.
    sink.set_reply(SinkReply::Unavailable);
    run_python(
        "send_spans.py",
        &[
            "--protocol",
            "http",
            "--endpoint",
            &http,
            "--service",
            "cart",
            "--traces",
            "10",
        ],
        None,
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let m = metrics(r.prometheus_addr).await;
        if m["spindle_exporter_queue_bytes"] > 0.0 && m["spindle_exporter_retries_total"] > 0.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "spans never queued behind the failing backend"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let base = format!("http://{}", r.prometheus_addr);
    let mut b = Browser::launch(1280, 1800).await;
    b.open(&format!("{base}/")).await;
    // The script refreshed the page: its live sections came from a second fetch, with rates.
    assert!(
        b.wait_for(
            "Number(document.body.getAttribute('data-refreshes') || 0) >= 1",
            Duration::from_secs(20)
        )
        .await,
        "the page's script never refreshed it; console: {:?}",
        b.console_problems()
    );

    let dom = b.eval(DOM_FIGURES).await;
    let m = metrics(r.prometheus_addr).await;
    let report: Value = serde_json::from_slice(&get(r.prometheus_addr, "/api/v1/cardinality", &[]).await.body)
        .expect("cardinality JSON");
    let top = &report["top_metrics"][0];
    assert_eq!(dom["top_name"], top["name"], "{dom}\n{report}");
    assert_eq!(dom["top_name"], "hc_requests");
    assert_eq!(dom["top_series"], top["series"], "{dom}\n{report}");
    assert_eq!(dom["top_series"], json!(2000));
    assert_eq!(dom["top_href"], "/explore?metric=hc_requests");
    assert_eq!(
        dom["queue_bytes"].as_f64(),
        Some(m["spindle_exporter_queue_bytes"]),
        "{dom}"
    );
    assert_eq!(
        dom["queue_capacity"].as_f64(),
        Some(m["spindle_exporter_queue_capacity_bytes"]),
        "{dom}"
    );
    assert!(
        dom["queue_text"].as_str().unwrap_or("").ends_with("of 64.0 MiB"),
        "{dom}"
    );
    assert_eq!(
        dom["sent"].as_f64(),
        Some(m["spindle_exporter_sent_spans_total"]),
        "{dom}"
    );
    assert!(
        dom["last_error"].as_str().unwrap_or("").contains("Unavailable"),
        "{dom}"
    );
    assert!(
        dom["rates"]
            .as_str()
            .unwrap_or("")
            .contains("Rates are per second over the last"),
        "{dom}"
    );
    for row in dom["receivers"].as_array().expect("receiver rows") {
        let labels = format!(
            "{{signal=\"{}\",protocol=\"{}\"}}",
            row["signal"].as_str().unwrap(),
            row["protocol"].as_str().unwrap()
        );
        assert_eq!(
            row["requests"].as_f64(),
            Some(m[&format!("spindle_received_requests_total{labels}")]),
            "{row}"
        );
        assert_eq!(
            row["items"].as_f64(),
            Some(m[&format!("spindle_received_items_total{labels}")]),
            "{row}"
        );
    }
    // A refresh cycle more, then nothing on the console.
    b.idle(Duration::from_secs(6)).await;
    assert!(
        b.eval("Number(document.body.getAttribute('data-refreshes'))")
            .await
            .as_f64()
            >= Some(2.0)
    );
    assert_eq!(b.console_problems(), &[] as &[String], "console of /");
    b.eval("document.querySelector('#config details').open = true").await;
    b.screenshot(&artifacts_dir().join("page.png")).await;

    // The metric view of the metric whose label values carry markup: shown as text.
    b.open(&format!("{base}/explore?metric=page_visits")).await;
    let view = b
        .eval(
            r#"(() => ({
              scripts: document.scripts.length,
              example: document.querySelector('#example') && document.querySelector('#example').textContent,
              example_elements: document.querySelector('#example') ? document.querySelector('#example').children.length : -1,
              bold: document.querySelectorAll('main b').length,
              series: Number(document.querySelector('#series').dataset.value),
              path: [...document.querySelectorAll('#labels tbody tr')].find(tr => tr.cells[0].textContent === 'path').cells[1].dataset.value,
              overflow: document.querySelector('#overflow') && document.querySelector('#overflow').textContent,
              title: document.title }))()"#,
        )
        .await;
    assert_eq!(view["scripts"], 0, "{view}");
    assert_eq!(view["bold"], 0, "markup from label values became elements: {view}");
    assert_eq!(view["example_elements"], 0, "{view}");
    let example = view["example"].as_str().unwrap_or("");
    assert!(example.contains("path=\"/items/") && example.contains("<b>"), "{view}");
    assert_eq!(view["series"], 50, "{view}");
    assert!(
        view["overflow"]
            .as_str()
            .unwrap_or("")
            .starts_with("page_visits_total{otel_metric_overflow=\"true\"}")
    );
    assert_eq!(view["title"], "Spindle: page_visits");
    // The first value (a script tag) was admitted: the label lists 49 distinct values.
    assert_eq!(view["path"], "49", "{view}");
    assert!(hostile.starts_with("<script>"));
    b.screenshot(&artifacts_dir().join("page-explore.png")).await;
    assert_eq!(b.console_problems(), &[] as &[String], "console of /explore");

    // Without JavaScript: the same figures, as served; nothing refreshes.
    b.scripts_disabled(true).await;
    b.open(&format!("{base}/")).await;
    b.idle(Duration::from_secs(3)).await;
    let html = b.html().await;
    assert!(
        html.contains(
            "<a href=\"/explore?metric=hc_requests\">hc_requests</a></th><td class=\"n series\" data-value=\"2000\">"
        ),
        "{html}"
    );
    assert!(
        html.contains("Without JavaScript this page does not refresh itself"),
        "{html}"
    );
    assert!(
        !html.contains("data-refreshes=\""),
        "refreshed with scripts off: {html}"
    );
    assert_eq!(b.console_problems(), &[] as &[String], "console without JavaScript");
    b.close().await;
    r.shutdown().await.expect("shutdown");
}

/// Serves `html` at every path of a local server (no Content-Security-Policy unless `csp`).
async fn serve(html: String, csp: Option<String>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().fallback(move || {
        let (html, csp) = (html.clone(), csp.clone());
        async move {
            let mut headers = vec![("content-type", "text/html; charset=utf-8".to_string())];
            if let Some(csp) = csp {
                headers.push(("content-security-policy", csp));
            }
            let mut resp = axum::response::IntoResponse::into_response(html);
            for (k, v) in headers {
                resp.headers_mut().insert(k, v.parse().expect("header"));
            }
            resp
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// The console check is real: the page with its script broken (a call to a function that does
/// not exist, as a typo would make) is reported, and so is a script that gets onto the page
/// despite escaping, which the page's Content-Security-Policy refuses to run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_check_catches_a_broken_script_and_the_policy_blocks_injected_ones() {
    let r = start_spindle(|_| {}).await;
    let page = get(r.prometheus_addr, "/", &[]).await;
    assert_eq!(page.status, 200);
    let html = page.text();
    assert!(
        html.contains(".then(swap,"),
        "the page's script changed; update this test"
    );

    let broken = serve(html.replace(".then(swap,", ".then(swapp,"), None).await;
    let mut b = Browser::launch(1024, 768).await;
    b.open(&format!("http://{broken}/")).await;
    b.idle(Duration::from_secs(4)).await;
    assert!(
        b.console_problems().iter().any(|p| p.contains("swapp is not defined")),
        "a broken script went unnoticed: {:?}",
        b.console_problems()
    );

    // The real page with the real policy, and a script injected into it.
    let csp = spindle::expose::page::html::CSP.clone();
    let injected = html.replace("<main>", "<main><script>document.title = 'pwned'</script>");
    let served = serve(injected, Some(csp)).await;
    let mut b2 = Browser::launch(1024, 768).await;
    b2.open(&format!("http://{served}/")).await;
    assert_eq!(
        b2.eval("document.title").await,
        "Spindle status",
        "the injected script ran"
    );
    assert!(
        b2.console_problems()
            .iter()
            .any(|p| p.contains("Content Security Policy")),
        "the refused script is reported: {:?}",
        b2.console_problems()
    );
    b.close().await;
    b2.close().await;
    r.shutdown().await.expect("shutdown");
}
