//! Interop with the OpenTelemetry Python SDK as an OTLP client (gRPC and HTTP/protobuf).
//!
//! The real SDK (`tests/python/send_metrics.py`) records a counter, an up-down counter, a
//! histogram and an observable gauge — counter and histogram inside sampled spans, so the SDK
//! attaches exemplars — and exports them to an in-process Spindle. The tests then read Spindle's
//! OpenMetrics `/metrics` and check names, types, labels, exact values, `target_info`, and that
//! exemplars point at the SDK's spans, survive a later export that carries none, and that delta
//! temporality is accumulated into cumulative series.

use spindle_e2e::{
    Exposition, Protocol, SendOptions, SentSummary, parse_exposition, send_metrics, start_spindle, unix_now,
    wait_for_openmetrics,
};

/// Routes in the order `send_metrics.py` records them (one span per route per round).
const ROUTES: [&str; 2] = ["/checkout", "/cart"];

/// Labels every data point series of the SDK's meter must carry.
fn series_labels(sent: &SentSummary) -> Vec<(&str, &str)> {
    vec![
        ("job", sent.job.as_str()),
        ("instance", sent.instance.as_str()),
        ("otel_scope_name", sent.scope.name.as_str()),
        ("otel_scope_version", sent.scope.version.as_str()),
    ]
}

/// True once Spindle shows the final totals of every round for counter and histogram.
fn totals_visible(exp: &Exposition, sent: &SentSummary) -> bool {
    let base = [("job", sent.job.as_str())];
    ROUTES.iter().all(|route| {
        let mut labels = base.to_vec();
        labels.push(("route", route));
        let counter_ok = exp
            .find("demo_requests_total", &labels)
            .iter()
            .any(|s| s.value == sent.requests[*route] as f64);
        let hist_ok = exp
            .find("demo_latency_seconds_count", &labels)
            .iter()
            .any(|s| s.value == sent.latency[*route].count as f64);
        counter_ok && hist_ok
    })
}

/// Sends with the Python SDK and waits until the totals are visible on `/metrics`.
async fn send_and_wait(spindle: &spindle::app::Running, opts: &SendOptions) -> (SentSummary, Exposition) {
    let sent = send_metrics(spindle, opts).await;
    let exp = wait_for_openmetrics(
        spindle.prometheus_addr,
        "the Python SDK's final totals on demo_requests_total and demo_latency_seconds_count",
        "demo_",
        |exp| totals_visible(exp, &sent),
    )
    .await;
    (sent, exp)
}

/// Checks names, types, labels and exact values of everything the SDK sent.
fn assert_values(exp: &Exposition, sent: &SentSummary) {
    assert!(exp.eof, "OpenMetrics output does not end with # EOF");
    for (family, kind) in [
        ("demo_requests", "counter"),
        ("demo_latency_seconds", "histogram"),
        ("demo_queue_depth", "gauge"),
        ("demo_temperature", "gauge"),
        ("target", "info"),
    ] {
        assert_eq!(
            exp.types.get(family).map(String::as_str),
            Some(kind),
            "# TYPE of `{family}`; lines:\n{}",
            exp.lines_of(family)
        );
    }
    let labels = series_labels(sent);

    for route in ROUTES {
        let mut l = labels.clone();
        l.push(("route", route));
        let counter = exp.one("demo_requests_total", &l);
        assert_eq!(
            counter.value, sent.requests[route] as f64,
            "demo_requests_total{{route={route:?}}} must equal the total the SDK sent"
        );

        let hist = &sent.latency[route];
        let count = exp.one("demo_latency_seconds_count", &l);
        assert_eq!(count.value, hist.count as f64, "histogram _count for {route}");
        let sum = exp.one("demo_latency_seconds_sum", &l);
        assert!(
            (sum.value - hist.sum).abs() <= 1e-9 * hist.sum.abs().max(1.0),
            "histogram _sum for {route}: got {}, SDK sent {}",
            sum.value,
            hist.sum
        );
        let buckets = exp.find("demo_latency_seconds_bucket", &l);
        assert_eq!(
            buckets.len(),
            hist.buckets.len(),
            "number of buckets for {route} (SDK boundaries + +Inf); lines:\n{}",
            exp.lines_of("demo_latency_seconds_bucket")
        );
        for (le, expected) in &hist.buckets {
            let le_value: f64 = le.parse().expect("bucket bound");
            let bucket = buckets
                .iter()
                .find(|b| b.label("le").parse::<f64>().ok() == Some(le_value))
                .unwrap_or_else(|| {
                    panic!(
                        "no bucket le={le} for {route}; lines:\n{}",
                        exp.lines_of("demo_latency_seconds_bucket")
                    )
                });
            assert_eq!(
                bucket.value, *expected as f64,
                "bucket le={le} for {route} (cumulative count)"
            );
        }
    }

    let queue = exp.one("demo_queue_depth", &labels);
    assert_eq!(queue.value, sent.queue_depth as f64, "up-down counter value");

    let mut l = labels.clone();
    l.push(("room", sent.temperature.room.as_str()));
    let temp = exp.one("demo_temperature", &l);
    assert_eq!(temp.value, sent.temperature.value, "observable gauge value");

    let info = exp.one("target_info", &[("job", &sent.job), ("instance", &sent.instance)]);
    assert_eq!(info.value, 1.0, "target_info value");
    assert_eq!(
        info.label("deployment_environment"),
        "test",
        "target_info must carry the resource attribute deployment.environment; got {:?}",
        info.labels
    );
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Checks that the counter and histogram exemplars point at the SDK's spans of the right route.
fn assert_exemplars(exp: &Exposition, sent: &SentSummary) {
    let labels = series_labels(sent);
    let now = unix_now();
    for (route_idx, route) in ROUTES.iter().enumerate() {
        let mut l = labels.clone();
        l.push(("route", route));

        let check = |what: &str, ex: &spindle_e2e::Exemplar| {
            let trace = ex.labels.get("trace_id").map(String::as_str).unwrap_or("");
            let span = ex.labels.get("span_id").map(String::as_str).unwrap_or("");
            assert!(
                is_lower_hex(trace, 32) && is_lower_hex(span, 16),
                "{what}: exemplar ids must be 32/16 lowercase hex, got {:?}",
                ex.labels
            );
            let idx = sent
                .trace_ids
                .iter()
                .zip(&sent.span_ids)
                .position(|(t, s)| t == trace && s == span)
                .unwrap_or_else(|| {
                    panic!(
                        "{what}: exemplar {:?} is not one of the SDK's spans {:?}/{:?}",
                        ex.labels, sent.trace_ids, sent.span_ids
                    )
                });
            assert_eq!(
                idx % ROUTES.len(),
                route_idx,
                "{what}: exemplar points at the span of another route"
            );
            let ts = ex
                .timestamp
                .unwrap_or_else(|| panic!("{what}: exemplar has no timestamp"));
            assert!(
                ts > now - 600.0 && ts < now + 60.0,
                "{what}: exemplar timestamp {ts} is not the measurement time (now {now})"
            );
        };

        let counter = exp.one("demo_requests_total", &l);
        let ex = counter.exemplar.as_ref().unwrap_or_else(|| {
            panic!(
                "demo_requests_total{{route={route:?}}} has no exemplar; lines:\n{}",
                exp.lines_of("demo_requests_total")
            )
        });
        check(&format!("demo_requests_total{{route={route:?}}}"), ex);
        let per_add = sent.requests[*route] as f64 / f64::from(sent.rounds);
        assert_eq!(
            ex.value, per_add,
            "counter exemplar value must be the recorded measurement"
        );

        let mut buckets: Vec<_> = exp.find("demo_latency_seconds_bucket", &l);
        buckets.sort_by(|a, b| {
            let (a, b) = (a.label("le"), b.label("le"));
            a.parse::<f64>()
                .unwrap_or(f64::NAN)
                .total_cmp(&b.parse::<f64>().unwrap_or(f64::NAN))
        });
        let mut with_exemplar = 0;
        let mut lower = f64::NEG_INFINITY;
        for bucket in buckets {
            let le: f64 = bucket.label("le").parse().expect("le is a number");
            if let Some(ex) = &bucket.exemplar {
                with_exemplar += 1;
                check(&format!("demo_latency_seconds_bucket{{route={route:?},le={le}}}"), ex);
                assert!(
                    ex.value > lower && ex.value <= le,
                    "bucket le={le} of {route} carries exemplar value {} outside ({lower}, {le}]",
                    ex.value
                );
            }
            lower = le;
        }
        assert!(
            with_exemplar >= 1,
            "no histogram bucket of {route} carries an exemplar; lines:\n{}",
            exp.lines_of("demo_latency_seconds_bucket")
        );
    }
}

/// Two cumulative rounds: the first inside spans (exemplars), the second outside (none).
async fn cumulative_run(protocol: Protocol, service: &str) {
    let spindle = start_spindle(|_| {}).await;
    let opts = SendOptions {
        rounds: 2,
        span_rounds: Some(1),
        ..SendOptions::new(protocol, service)
    };
    let (sent, exp) = send_and_wait(&spindle, &opts).await;
    assert!(
        sent.exemplars_per_round.len() == 2 && sent.exemplars_per_round[1].is_empty(),
        "precondition: the SDK's second export must carry no exemplars: {:?}",
        sent.exemplars_per_round
    );
    assert_values(&exp, &sent);
    // The totals include round 2, whose export had no exemplars: round 1's must still be there.
    assert_exemplars(&exp, &sent);
    // And they stay on later scrapes.
    let again = parse_exposition(&spindle_e2e::fetch_openmetrics(spindle.prometheus_addr).await);
    assert_exemplars(&again, &sent);
    spindle.shutdown().await.expect("spindle shuts down cleanly");
}

/// Two delta rounds inside spans: Spindle must show the sum of both rounds.
async fn delta_run(protocol: Protocol, service: &str) {
    let spindle = start_spindle(|_| {}).await;
    let opts = SendOptions {
        rounds: 2,
        delta: true,
        ..SendOptions::new(protocol, service)
    };
    let (sent, exp) = send_and_wait(&spindle, &opts).await;
    assert_values(&exp, &sent);
    assert_exemplars(&exp, &sent);
    spindle.shutdown().await.expect("spindle shuts down cleanly");
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_cumulative_values_labels_and_exemplars() {
    cumulative_run(Protocol::Grpc, "checkout-grpc").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn http_cumulative_values_labels_and_exemplars() {
    cumulative_run(Protocol::Http, "checkout-http").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_delta_temporality_is_accumulated() {
    delta_run(Protocol::Grpc, "cart-grpc").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn http_delta_temporality_is_accumulated() {
    delta_run(Protocol::Http, "cart-http").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn promoted_resource_attributes_become_labels() {
    let spindle = start_spindle(|c| {
        c.prometheus.promote_resource_attributes = vec!["deployment.environment".to_owned()];
    })
    .await;
    let (sent, exp) = send_and_wait(&spindle, &SendOptions::new(Protocol::Http, "promoted")).await;
    for name in [
        "demo_requests_total",
        "demo_latency_seconds_count",
        "demo_queue_depth",
        "demo_temperature",
    ] {
        let found = exp.find(name, &[("job", &sent.job)]);
        assert!(
            !found.is_empty() && found.iter().all(|s| s.label("deployment_environment") == "test"),
            "`{name}` must carry the promoted label deployment_environment=\"test\"; lines:\n{}",
            exp.lines_of(name)
        );
    }
    let info = exp.one("target_info", &[("job", &sent.job)]);
    assert_eq!(
        info.label("deployment_environment"),
        "test",
        "target_info keeps the attribute"
    );
    spindle.shutdown().await.expect("spindle shuts down cleanly");
}

#[tokio::test(flavor = "multi_thread")]
async fn series_expire_after_ttl() {
    let ttl = std::time::Duration::from_secs(2);
    let spindle = start_spindle(|c| c.prometheus.series_ttl = spindle::config::DurationStr(ttl)).await;
    let (sent, _) = send_and_wait(&spindle, &SendOptions::new(Protocol::Grpc, "expiring")).await;
    let job = sent.job.clone();
    wait_for_openmetrics(
        spindle.prometheus_addr,
        &format!("the SDK's series to expire after series_ttl = {ttl:?}"),
        "demo_",
        move |exp| {
            [
                "demo_requests_total",
                "demo_latency_seconds_bucket",
                "demo_queue_depth",
                "demo_temperature",
            ]
            .iter()
            .all(|name| exp.find(name, &[("job", &job)]).is_empty())
        },
    )
    .await;
    spindle.shutdown().await.expect("spindle shuts down cleanly");
}
