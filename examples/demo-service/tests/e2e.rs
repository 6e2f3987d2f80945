//! End to end: two real `demo-service` processes (the binary cargo builds for this test), a real
//! in-process Spindle and an OTLP trace sink.
//!
//! `demo-frontend` calls `demo-backend` (`/orders/{id}` → `/users/{id}`). Both export METRICS to
//! Spindle over OTLP/gRPC and TRACES straight to the sink (Spindle does not forward traces yet).
//! Asserted: Spindle's OpenMetrics `/metrics` shows `http_server_request_duration_seconds` with
//! `http_route` templates (never a raw path), `http_server_active_requests` and the custom
//! metric, with `job` = each service's name; the sink holds one trace that spans both processes,
//! the frontend's client span being the parent of the backend's server span; the latency histogram
//! and the custom counter carry exemplars (recorded inside request spans) that name traces the
//! backend received, and a real Prometheus with exemplar storage returns them.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

mod common;

use common::{Demo, command, start};
use spindle_e2e::otlp_sink::{OtlpSink, SPAN_KIND_CLIENT, SPAN_KIND_SERVER, SinkSpan};
use spindle_e2e::{Prometheus, start_spindle, wait_for_openmetrics};

/// A demo-service for `name` with `envs`, its stderr shown.
async fn spawn_demo(name: &str, envs: &[(&str, String)]) -> Demo {
    let mut cmd = command(name, envs);
    cmd.stderr(Stdio::inherit());
    start(cmd, name).await
}

async fn get(client: &reqwest::Client, url: &str) -> u16 {
    client
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .status()
        .as_u16()
}

fn two_hop_trace(spans: &[SinkSpan]) -> Option<(SinkSpan, SinkSpan)> {
    spans
        .iter()
        .filter(|c| c.service_name == "demo-frontend" && c.kind == SPAN_KIND_CLIENT)
        .find_map(|client| {
            spans
                .iter()
                .find(|s| {
                    s.service_name == "demo-backend"
                        && s.kind == SPAN_KIND_SERVER
                        && s.trace_id == client.trace_id
                        && s.parent_span_id == client.span_id
                })
                .map(|server| (client.clone(), server.clone()))
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_metrics_on_spindle_and_one_trace_across_both() {
    let sink = OtlpSink::start().await;
    let spindle = start_spindle(|_| {}).await;
    let metrics_endpoint = format!("http://{}", spindle.grpc_addr);

    let backend = spawn_demo(
        "demo-backend",
        &[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", sink.grpc_endpoint()),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", metrics_endpoint.clone()),
        ],
    )
    .await;
    let frontend = spawn_demo(
        "demo-frontend",
        &[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", sink.grpc_endpoint()),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", metrics_endpoint),
            ("DEMO_DOWNSTREAM", backend.url.clone()),
        ],
    )
    .await;

    let client = reqwest::Client::new();
    assert_eq!(get(&client, &format!("{}/orders/41", frontend.url)).await, 200);
    assert_eq!(get(&client, &format!("{}/users/41", frontend.url)).await, 200);
    assert_eq!(get(&client, &format!("{}/users/43", frontend.url)).await, 200);
    assert_eq!(get(&client, &format!("{}/users/7", frontend.url)).await, 500);
    assert_eq!(get(&client, &format!("{}/users/10", frontend.url)).await, 404);
    assert_eq!(get(&client, &format!("{}/no/such/page", frontend.url)).await, 404);
    assert_eq!(
        get(&client, &format!("{}/orders/14", frontend.url)).await,
        502,
        "backend 500 → 502"
    );

    // Metrics, through Spindle.
    let duration = "http_server_request_duration_seconds_bucket";
    let exp = wait_for_openmetrics(
        spindle.prometheus_addr,
        "both services' request durations",
        duration,
        |exp| {
            !exp.find(
                duration,
                &[("job", "demo-frontend"), ("http_route", "/users/{id}"), ("le", "+Inf")],
            )
            .is_empty()
                && !exp
                    .find(
                        duration,
                        &[("job", "demo-backend"), ("http_route", "/users/{id}"), ("le", "+Inf")],
                    )
                    .is_empty()
                && !exp
                    .find(
                        duration,
                        &[("job", "demo-frontend"), ("http_route", "/orders/{id}"), ("le", "+Inf")],
                    )
                    .is_empty()
                && !exp
                    .find("demo_user_lookups_total", &[("job", "demo-frontend")])
                    .is_empty()
        },
    )
    .await;
    let count = |job: &str, route: &str, status: &str| -> f64 {
        exp.find(
            duration,
            &[
                ("job", job),
                ("http_route", route),
                ("http_response_status_code", status),
                ("le", "+Inf"),
            ],
        )
        .iter()
        .map(|s| s.value)
        .sum()
    };
    assert_eq!(
        count("demo-frontend", "/users/{id}", "200"),
        2.0,
        "{}",
        exp.lines_of(duration)
    );
    assert_eq!(count("demo-frontend", "/users/{id}", "500"), 1.0);
    assert_eq!(count("demo-frontend", "/users/{id}", "404"), 1.0);
    assert_eq!(count("demo-frontend", "unmatched", "404"), 1.0);
    assert_eq!(
        count("demo-backend", "/users/{id}", "200"),
        1.0,
        "the hop from /orders/41"
    );
    assert_eq!(
        count("demo-backend", "/users/{id}", "500"),
        1.0,
        "the hop from /orders/14"
    );
    assert_eq!(
        exp.types
            .get("http_server_request_duration_seconds")
            .map(String::as_str),
        Some("histogram")
    );
    for sample in exp.samples.iter().filter(|s| s.labels.contains_key("http_route")) {
        let route = sample.label("http_route");
        assert!(
            route.contains('{') || route == "unmatched" || route == "/healthz" || route == "/slow",
            "raw path as a label: {} {:?}",
            sample.name,
            sample.labels
        );
    }
    let active = exp.find(
        "http_server_active_requests",
        &[("job", "demo-frontend"), ("http_request_method", "GET")],
    );
    assert_eq!(active.len(), 1, "{}", exp.lines_of("http_server_active_requests"));
    assert_eq!(active[0].value, 0.0, "nothing in flight");
    assert!(
        !exp.find("http_server_active_requests", &[("job", "demo-backend")])
            .is_empty()
    );
    let found = exp.one(
        "demo_user_lookups_total",
        &[("job", "demo-frontend"), ("result", "found")],
    );
    assert_eq!(found.value, 2.0);
    let failed = exp.one(
        "demo_user_lookups_total",
        &[("job", "demo-backend"), ("result", "error")],
    );
    assert_eq!(failed.value, 1.0);
    let instance = exp
        .find(duration, &[("job", "demo-backend")])
        .first()
        .map(|s| s.label("instance").to_owned())
        .unwrap_or_default();
    assert_eq!(
        instance.len(),
        36,
        "instance = service.instance.id (a UUID): {instance:?}"
    );

    // Traces, straight from both processes to the sink.
    let spans = sink
        .wait_for_spans(
            Duration::from_secs(15),
            "a client span in demo-frontend parenting a server span in demo-backend",
            |spans| two_hop_trace(spans).is_some(),
        )
        .await;
    let (client_span, server_span) = two_hop_trace(&spans).expect("checked above");
    assert_eq!(client_span.attr("http.request.method"), Some("GET"));
    assert_eq!(server_span.name, "GET /users/{id}");
    assert_eq!(server_span.attr("http.route"), Some("/users/{id}"));
    assert_eq!(
        server_span.trace_state, "ot=th:0",
        "the root's threshold travels with the trace"
    );
    let trace: Vec<&SinkSpan> = spans.iter().filter(|s| s.trace_id == client_span.trace_id).collect();
    let root = trace
        .iter()
        .find(|s| s.service_name == "demo-frontend" && s.kind == SPAN_KIND_SERVER)
        .expect("the frontend's server span is in the same trace");
    assert_eq!(root.name, "GET /orders/{id}");
    assert!(root.parent_span_id.is_empty(), "the frontend's server span is the root");
    assert!(
        trace
            .iter()
            .any(|s| s.service_name == "demo-backend" && s.name == "load_user"),
        "the backend's #[instrument] span joins the trace"
    );
    assert_ne!(client_span.service_instance_id, server_span.service_instance_id);

    // Exemplars at the source: the latency histogram and the custom counter are recorded inside
    // request spans, so Spindle shows exemplars on them — and each names a trace the trace backend
    // received.
    let lookups = "demo_user_lookups_total";
    let exp = wait_for_openmetrics(
        spindle.prometheus_addr,
        "exemplars on the demo's latency buckets and counter",
        duration,
        |exp| {
            let has = |name: &str, job: &str| exp.find(name, &[("job", job)]).iter().any(|s| s.exemplar.is_some());
            has(duration, "demo-frontend") && has(duration, "demo-backend") && has(lookups, "demo-backend")
        },
    )
    .await;
    let exemplar_traces: BTreeSet<String> = [duration, lookups]
        .iter()
        .flat_map(|name| exp.find(name, &[]))
        .filter_map(|s| s.exemplar.as_ref())
        .map(|e| e.labels.get("trace_id").cloned().unwrap_or_default())
        .collect();
    assert!(exemplar_traces.iter().all(|t| t.len() == 32), "{exemplar_traces:?}");
    sink.wait_for_spans(
        Duration::from_secs(15),
        "every exemplar's trace at the trace backend",
        |spans| exemplar_traces.iter().all(|t| spans.iter().any(|s| &s.trace_id == t)),
    )
    .await;

    // A real Prometheus with exemplar storage scrapes Spindle and returns those exemplars.
    let prom = Prometheus::start(spindle.prometheus_addr).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let path = format!(
        "/api/v1/query_exemplars?query=http_server_request_duration_seconds_bucket&start={:.3}&end={:.3}",
        now - 600.0,
        now + 120.0
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let from_prometheus: BTreeSet<String> = loop {
        let answer = prom.api(&path).await;
        let ids: BTreeSet<String> = answer["data"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|series| series["exemplars"].as_array().cloned().unwrap_or_default())
            .filter_map(|e| e["labels"]["trace_id"].as_str().map(str::to_owned))
            .collect();
        if !ids.is_empty() {
            break ids;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exemplars from Prometheus: {answer}\n{}",
            prom.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let received: BTreeSet<String> = sink.spans().into_iter().map(|s| s.trace_id).collect();
    assert!(
        from_prometheus.is_subset(&received),
        "Prometheus exemplars {from_prometheus:?} name traces the backend never received"
    );

    spindle.shutdown().await.expect("spindle shuts down");
}
