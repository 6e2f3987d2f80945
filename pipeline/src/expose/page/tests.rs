use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use super::history::{History, MIN_SPAN, Rates, Snapshot, WINDOW};
use super::html::{Bar, Count, Esc, PerSecond, Query};
use super::*;
use crate::config::CardinalityConfig;
use crate::export::stats::DropReason;
use crate::expose::api::CardinalityReports;
use crate::model::batch::{FamilyMeta, PointValue, Samples};
use crate::model::{MetricKind, Protocol, Signal, Temporality};
use crate::process::cardinality::Limiter;
use crate::process::pipeline::write_metrics;
use crate::store::Store;
use crate::telemetry::Telemetry;

/// A page over an empty store, with `config` for the limiter, and the telemetry it reads.
fn page_with(config: &CardinalityConfig) -> (PageState, Arc<Telemetry>) {
    let telemetry = Arc::new(Telemetry::default());
    let store = Arc::new(Store::new(Duration::from_secs(300), 1_000_000, &[]));
    let limiter = Limiter::new(config, 1_000_000, telemetry.clone()).expect("limiter");
    let expose = ExposeState {
        store,
        telemetry: telemetry.clone(),
        ready: Arc::new(AtomicBool::new(true)),
        buffers: Default::default(),
        limiter: Arc::new(limiter),
        reports: Default::default(),
    };
    let (t, r) = (telemetry.traces.clone(), telemetry.remote_write.clone());
    let info = PageInfo {
        version: "test".into(),
        config_yaml: "exporters:\n  traces:\n    otlp:\n      headers: {authorization: <redacted>}\n".into(),
        store_max_series: 1_000_000,
        exporters: vec![
            ExporterInfo {
                kind: ExporterKind::Traces,
                endpoint: Some("http://tempo:4317".into()),
                last_error: Arc::new(move || t.last_error()),
            },
            ExporterInfo {
                kind: ExporterKind::RemoteWrite,
                endpoint: None,
                last_error: Arc::new(move || r.last_error()),
            },
        ],
    };
    (PageState::new(expose, info), telemetry)
}

/// Writes one delta counter point per label set into `metric`, through the page's limiter.
fn write(page: &PageState, metric: &str, label: &str, values: &[String]) {
    let mut b = Samples::default();
    let f = b.add_family(FamilyMeta {
        name: metric.into(),
        kind: MetricKind::Counter,
        help: "help with <b>markup</b>".into(),
        unit: String::new(),
    });
    for v in values {
        let start = b.labels.len();
        b.add_label(label, v);
        b.add_point(f, start, Temporality::Delta, PointValue::Number(1.0), &[]);
    }
    write_metrics(&page.expose.store, Some(&page.expose.limiter), b, true);
}

fn status(page: &PageState) -> String {
    let mut out = String::new();
    page.render_status(DEFAULT_TOP, &mut out);
    out
}

fn metric(page: &PageState, name: &str) -> (bool, String) {
    let mut out = String::new();
    let found = page.render_metric(name, &mut out);
    (found, out)
}

/// Every `<script` in `html` is the page's own one.
fn only_own_scripts(html: &str) -> bool {
    html.matches("<script").count() == html.matches(&format!("<script>{}", html::JS)).count()
}

#[test]
fn esc_escapes_what_html_needs() {
    assert_eq!(
        Esc("<script>alert('x') & \"y\"</script>").to_string(),
        "&lt;script&gt;alert(&#39;x&#39;) &amp; &quot;y&quot;&lt;/script&gt;"
    );
    assert_eq!(Esc("plain_name:total").to_string(), "plain_name:total");
    assert_eq!(Query("a b&c=<d>/é").to_string(), "a%20b%26c%3D%3Cd%3E%2F%C3%A9");
}

#[test]
fn numbers_read_as_people_write_them() {
    assert_eq!(Count(1_234_567.0).to_string(), "1,234,567");
    assert_eq!(Count(999.0).to_string(), "999");
    assert_eq!(Count(0.4).to_string(), "0");
    assert_eq!(PerSecond(None).to_string(), "—");
    assert_eq!(PerSecond(Some(0.0)).to_string(), "0/s");
    assert_eq!(PerSecond(Some(0.256)).to_string(), "0.26/s");
    assert_eq!(PerSecond(Some(12.34)).to_string(), "12.3/s");
    assert_eq!(PerSecond(Some(4321.0)).to_string(), "4,321/s");
    assert_eq!(html::Bytes(512.0).to_string(), "512 B");
    assert_eq!(html::Bytes(64.0 * 1024.0 * 1024.0).to_string(), "64.0 MiB");
    assert_eq!(html::Seconds(Some(0.0125)).to_string(), "12.5 ms");
    let bar = Bar {
        value: 90.0,
        max: 100.0,
        of: "of the limit",
    };
    assert!((bar.share() - 0.9).abs() < 1e-9);
    let svg = bar.to_string();
    assert!(
        svg.contains("class=\"bar warn\"") && svg.contains("aria-label=\"90% of the limit\""),
        "{svg}"
    );
    let zero = Bar {
        value: 5.0,
        max: 0.0,
        of: "",
    };
    assert_eq!(zero.share(), 0.0);
}

/// A label value, a metric's help text and the example folded label set are attacker-controlled:
/// they reach the page escaped, and no script but the page's own is on it.
#[test]
fn label_values_are_escaped_on_every_page() {
    let config = CardinalityConfig {
        max_series_per_metric: 3,
        ..Default::default()
    };
    let (page, _) = page_with(&config);
    let evil: Vec<String> = (0..6).map(|i| format!("<script>alert({i})</script>\"'&")).collect();
    write(&page, "evil", "path", &evil);
    let (found, html) = metric(&page, "evil");
    assert!(found);
    assert!(!html.contains("<script>alert"), "{html}");
    assert!(
        html.contains("&lt;script&gt;alert("),
        "the example folded label set is shown, escaped: {html}"
    );
    assert!(html.contains("help with &lt;b&gt;markup&lt;/b&gt;"), "{html}");
    assert!(only_own_scripts(&html));
    // The overflow series as /metrics shows it.
    assert!(
        html.contains("evil_total{otel_metric_overflow=&quot;true&quot;} 4"),
        "{html}"
    );
    let status = status(&page);
    assert!(!status.contains("<script>alert"));
    assert!(only_own_scripts(&status));
    // A name that is not stored is echoed escaped on the 404 page.
    let (found, html) = metric(&page, "<img src=x onerror=alert(1)>");
    assert!(!found);
    assert!(
        html.contains("&lt;img src=x onerror=alert(1)&gt;") && !html.contains("<img"),
        "{html}"
    );
}

#[test]
fn metric_view_lists_labels_overflow_and_why() {
    let config = CardinalityConfig {
        max_series_per_metric: 10,
        max_label_values: 4,
        deny_labels: vec!["session".into()],
        normalize: vec![crate::config::NormalizeRule {
            labels: vec!["route".into()],
            kind: crate::config::NormalizeKind::Number,
            pattern: None,
            replacement: None,
            metrics: vec!["http_*".into()],
        }],
        ..Default::default()
    };
    let (page, _) = page_with(&config);
    let users: Vec<String> = (0..8).map(|i| format!("u{i}")).collect();
    write(&page, "http_requests", "user", &users);
    write(&page, "http_requests", "route", &["/a/1".into(), "/a/2".into()]);
    let (found, html) = metric(&page, "http_requests");
    assert!(found);
    // 4 user values admitted (max_label_values), the folded rest in the overflow series, and the
    // route normalized to one value: 4 + 1 + 1 series.
    assert!(html.contains("id=\"series\" data-value=\"6\""), "{html}");
    assert!(
        html.contains("<code>max_label_values</code></th><td class=\"n\">4</td>"),
        "{html}"
    );
    assert!(
        html.contains("http_requests_total{otel_metric_overflow=&quot;true&quot;} 4"),
        "{html}"
    );
    assert!(
        html.contains("<code>user</code></th><td class=\"n\" data-value=\"4\">4</td>"),
        "{html}"
    );
    assert!(html.contains("2 label values normalized"), "{html}");
    assert!(html.contains("<code>session</code>"), "the deny list in effect: {html}");
    assert!(
        html.contains("<code>{number}</code>"),
        "the normalize rule that applies: {html}"
    );
    assert!(
        html.contains("user_id") || html.contains("user=&quot;u"),
        "an example folded label set: {html}"
    );
    // A metric the normalize rule is not scoped to.
    write(&page, "other", "route", &["/a/1".into()]);
    let (_, html) = metric(&page, "other");
    assert!(html.contains("No <code>normalize</code> rule applies."), "{html}");
    assert!(html.contains("None: no point of this metric is folded"), "{html}");
}

/// The page's figures are `/metrics`'s: every family the page reads is one Spindle renders, and
/// the exporter queue, drops and last error show what the stats hold.
#[test]
fn status_shows_what_metrics_renders() {
    let (page, t) = page_with(&CardinalityConfig::default());
    let mut rendered = Vec::new();
    crate::expose::render_own(&*t, crate::model::Format::Text, 0, &mut rendered);
    let rendered = String::from_utf8(rendered).expect("utf-8");
    let families: BTreeSet<&str> = rendered
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let mut read = vec![
        "spindle_received_requests_total",
        "spindle_received_items_total",
        "spindle_rejected_items_total",
        "spindle_refused_requests_total",
        "spindle_limited_items_total",
        "spindle_active_series",
        "spindle_expired_series_total",
        "spindle_scrape_duration_seconds_count",
        "spindle_scrape_duration_seconds_sum",
        "spindle_scrape_duration_seconds_bucket",
        "spindle_cardinality_rejected_points_total",
    ];
    for k in [ExporterKind::Traces, ExporterKind::RemoteWrite] {
        let [a, b, c, d, e, hist] = k.families();
        read.extend([a, b, c, d, e]);
        for s in ["_count", "_sum", "_bucket"] {
            assert!(families.contains(format!("{hist}{s}").as_str()), "{hist}{s}");
        }
    }
    for name in read {
        assert!(
            families.contains(name),
            "the page reads `{name}`, which /metrics does not render"
        );
    }

    t.receiver.received(Signal::Metrics, Protocol::Grpc, 1234, 5);
    t.receiver.refused(
        Signal::Traces,
        Protocol::Http,
        crate::receive::stats::RefusalReason::Overloaded,
    );
    t.traces.queue(4096, 1 << 20);
    t.traces.sent(77);
    t.traces.dropped(DropReason::Permanent, 3);
    t.traces.failed("gRPC Unavailable: <backend> down", false);
    let html = status(&page);
    assert!(
        html.contains("data-bytes=\"4096\" data-capacity=\"1048576\">4.0 KiB<br><span class=\"muted\">of 1.0 MiB"),
        "{html}"
    );
    assert!(
        html.contains("<code class=\"endpoint\">http://tempo:4317</code>"),
        "{html}"
    );
    assert!(html.contains("data-value=\"77\""), "{html}");
    assert!(html.contains("permanent_error: 3"), "{html}");
    assert!(html.contains("gRPC Unavailable: &lt;backend&gt; down"), "{html}");
    assert!(html.contains("data-value=\"1234\""), "{html}");
    assert!(html.contains("<th scope=\"row\">overloaded</th>"), "{html}");
    assert!(
        html.contains("remote write</th><td colspan=\"7\" class=\"muted\">not configured"),
        "{html}"
    );
    assert!(html.contains("authorization: &lt;redacted&gt;"), "{html}");
    assert!(html.contains(" data-no-rates"), "a first view has no rates: {html}");
}

/// The top metrics are `/api/v1/cardinality`'s, in its order, with their series counts.
#[test]
fn top_metrics_match_the_cardinality_report() {
    let (page, _) = page_with(&CardinalityConfig::default());
    for (name, n) in [("small", 3), ("big", 40), ("mid", 12)] {
        let values: Vec<String> = (0..n).map(|i| format!("v{i}")).collect();
        write(&page, name, "k", &values);
    }
    let report = CardinalityReports::default().report(&page.expose.limiter, &page.expose.store, 20);
    let html = status(&page);
    let table = &html[html.find("id=\"top-metrics\"").expect("table")..];
    let mut at = 0;
    for m in report["top_metrics"].as_array().expect("array") {
        let name = m["name"].as_str().expect("name");
        let row = format!(
            "<a href=\"/explore?metric={name}\">{name}</a></th><td class=\"n series\" data-value=\"{}\">",
            m["series"]
        );
        let i = table[at..]
            .find(&row)
            .unwrap_or_else(|| panic!("{row} after {at} in {table}"));
        at += i + row.len();
    }
}

/// At 1,000 metrics the page stays a few tens of kilobytes: it lists the top ones.
#[test]
fn page_size_at_a_thousand_metrics() {
    let (page, _) = page_with(&CardinalityConfig::default());
    for m in 0..1000 {
        let values: Vec<String> = (0..(m % 7 + 1)).map(|i| format!("value-{i}")).collect();
        write(
            &page,
            &format!("service_metric_number_{m:04}_seconds"),
            "label",
            &values,
        );
    }
    let html = status(&page);
    assert!(html.len() < 48 << 10, "{} bytes", html.len());
    assert!(html.contains("1,000 metrics"), "{html}");
}

#[test]
fn rates_come_from_the_newest_snapshot_a_window_old() {
    let t0 = Instant::now();
    let snap = |secs: f64, v: u64| {
        Arc::new(Snapshot::parse(
            &format!("# TYPE x counter\nx_total{{a=\"b\"}} {v}\ny 5\n"),
            t0 + Duration::from_secs_f64(secs),
        ))
    };
    let h = History::default();
    assert!(h.record(snap(0.0, 0)).is_none(), "nothing before the first view");
    assert!(h.record(snap(0.5, 5)).is_none(), "less than MIN_SPAN apart");
    assert_eq!(h.len(), 1, "not kept either: too close to the previous one");
    let base = h.record(snap(2.0, 20)).expect("2 s after the first");
    assert_eq!(base.at, t0);
    for s in 3u32..=14 {
        h.record(snap(f64::from(s), u64::from(s) * 10));
    }
    let now = snap(15.0, 150);
    let base = h.record(now.clone()).expect("a base");
    // The newest kept snapshot at least WINDOW old: taken at 5 s.
    assert_eq!(base.at, t0 + Duration::from_secs(5));
    let r = Rates {
        now: &now,
        base: Some(&base),
    };
    assert_eq!(r.span(), Some(WINDOW));
    assert_eq!(r.per_second("x_total{a=\"b\"}"), Some(10.0));
    assert_eq!(r.value("y"), 5.0);
    assert_eq!(r.per_second("missing"), Some(0.0));
    assert!(h.len() <= 12, "older snapshots are dropped: {}", h.len());
    assert!(MIN_SPAN < WINDOW);
    let none = Rates { now: &now, base: None };
    assert_eq!(none.per_second("x_total{a=\"b\"}"), None);
}

#[test]
fn histogram_means_and_bounds_over_the_window() {
    let t0 = Instant::now();
    let text = |n: [u64; 3], sum: f64| {
        format!(
            "d_bucket{{le=\"0.1\"}} {}\nd_bucket{{le=\"1.0\"}} {}\nd_bucket{{le=\"+Inf\"}} {}\nd_sum {sum}\nd_count {}\nd_other 1\n",
            n[0], n[1], n[2], n[2]
        )
    };
    let base = Snapshot::parse(&text([10, 10, 10], 0.5), t0);
    let now = Snapshot::parse(&text([10, 109, 110], 50.5), t0 + Duration::from_secs(10));
    let r = Rates {
        now: &now,
        base: Some(&base),
    };
    let (recent, overall) = r.mean("d");
    assert_eq!(recent, Some(0.5));
    assert!((overall.expect("observed") - 50.5 / 110.0).abs() < 1e-12);
    assert_eq!(r.quantile_bound("d", 0.99), Some(1.0));
    assert_eq!(r.quantile_bound("d", 1.0), Some(f64::INFINITY));
    assert_eq!(
        now.series("d_bucket").count(),
        3,
        "d_bucket only, not d_bucketx or d_other"
    );
    let idle = Rates {
        now: &base,
        base: Some(&base),
    };
    assert_eq!(idle.mean("d").0, None);
    assert_eq!(idle.quantile_bound("d", 0.99), None);
}

/// `/` and `/explore` answer HTML with the page's security headers; the script and style the page
/// inlines are the ones the CSP allows.
#[tokio::test]
async fn routes_serve_html_with_a_strict_policy() {
    use tower::ServiceExt as _;
    let (page, _) = page_with(&CardinalityConfig::default());
    write(&page, "m", "k", &["v".into()]);
    let app = router(Arc::new(page));
    for (path, status) in [
        ("/", http::StatusCode::OK),
        ("/?top=3", http::StatusCode::OK),
        ("/?top=x", http::StatusCode::BAD_REQUEST),
        ("/explore?metric=m", http::StatusCode::OK),
        ("/explore?metric=nope", http::StatusCode::NOT_FOUND),
        ("/explore", http::StatusCode::BAD_REQUEST),
    ] {
        let req = http::Request::get(path)
            .body(axum::body::Body::empty())
            .expect("request");
        let resp = app.clone().oneshot(req).await.expect("infallible");
        assert_eq!(resp.status(), status, "{path}");
        if status == http::StatusCode::BAD_REQUEST {
            continue;
        }
        let h = resp.headers();
        assert_eq!(h["content-type"], "text/html; charset=utf-8");
        assert_eq!(h["cache-control"], "no-store");
        let csp = h["content-security-policy"].to_str().expect("ascii");
        assert!(csp.starts_with("default-src 'none'; script-src 'sha256-"), "{csp}");
        assert_eq!(csp, html::CSP.as_str());
    }
}
