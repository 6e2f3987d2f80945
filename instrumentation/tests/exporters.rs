//! `OTEL_METRICS_EXPORTER` / `OTEL_TRACES_EXPORTER`, the Prometheus scrape endpoint (its own
//! listener or the service's router), and the process and runtime metrics, against a real
//! in-process Spindle where the OTLP path is compared with the direct one.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use spindle_e2e::{Exposition, fetch_text, parse_exposition, start_spindle};
use spindle_instrument::{
    Builder, HttpLayer, InitError, Instrumentation, MetricsExporter, OtlpMetricsCapture, TracesExporter,
};
use tower::ServiceExt;

fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + Send + Sync + 'static {
    let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |k: &str| map.get(k).cloned()
}

fn loopback0() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn build_err(vars: &[(&str, &str)]) -> InitError {
    Builder::new()
        .with_env_lookup(env(vars))
        .with_log_writer(std::io::sink)
        .build()
        .expect_err("should be rejected")
}

#[test]
fn bad_exporter_variables_are_errors_naming_the_variable() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_port = taken.local_addr().expect("addr").port().to_string();
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("OTEL_METRICS_EXPORTER", "console")], "OTEL_METRICS_EXPORTER"),
        (&[("OTEL_METRICS_EXPORTER", "otlp,none")], "OTEL_METRICS_EXPORTER"),
        (
            &[("OTEL_METRICS_EXPORTER", "otlp,,prometheus")],
            "OTEL_METRICS_EXPORTER",
        ),
        (&[("OTEL_METRICS_EXPORTER", "Prometheus")], "OTEL_METRICS_EXPORTER"),
        (&[("OTEL_TRACES_EXPORTER", "zipkin")], "OTEL_TRACES_EXPORTER"),
        (&[("OTEL_TRACES_EXPORTER", "otlp,jaeger")], "OTEL_TRACES_EXPORTER"),
        (
            &[
                ("OTEL_METRICS_EXPORTER", "prometheus"),
                ("OTEL_EXPORTER_PROMETHEUS_PORT", "99999"),
            ],
            "OTEL_EXPORTER_PROMETHEUS_PORT",
        ),
        (
            &[
                ("OTEL_METRICS_EXPORTER", "prometheus"),
                ("OTEL_EXPORTER_PROMETHEUS_PORT", "http"),
            ],
            "OTEL_EXPORTER_PROMETHEUS_PORT",
        ),
        (
            &[
                ("OTEL_METRICS_EXPORTER", "prometheus"),
                ("OTEL_EXPORTER_PROMETHEUS_HOST", "no-such-host.invalid"),
            ],
            "OTEL_EXPORTER_PROMETHEUS_HOST",
        ),
    ];
    for (vars, name) in cases {
        let err = build_err(vars);
        assert!(
            matches!(&err, InitError::InvalidEnv { name: n, .. } if n == name),
            "{vars:?}: {err}"
        );
    }
    // A port in use is an init error too (not a panic, not a silent no-op), naming the address.
    let err = build_err(&[
        ("OTEL_METRICS_EXPORTER", "prometheus"),
        ("OTEL_EXPORTER_PROMETHEUS_HOST", "127.0.0.1"),
        ("OTEL_EXPORTER_PROMETHEUS_PORT", &taken_port),
    ]);
    assert!(
        matches!(&err, InitError::PrometheusListener { address, .. } if address.ends_with(&taken_port)),
        "{err}"
    );
}

fn app(inst: &Instrumentation) -> Router {
    Router::new()
        .route("/users/{id}", get(|| async { "user" }))
        .layer(HttpLayer::with_meter(&inst.guard.meter()))
}

async fn requests(router: &Router, paths: &[&str]) {
    for p in paths {
        let resp = router
            .clone()
            .oneshot(Request::get(*p).body(Body::empty()).expect("request"))
            .await
            .expect("response");
        assert!(resp.status().is_success() || resp.status() == 404, "{p}");
    }
}

async fn scrape(addr: SocketAddr) -> Exposition {
    parse_exposition(&fetch_text(addr).await)
}

/// Sample names of an exposition, without Prometheus' own `target_info`.
fn names(exp: &Exposition) -> BTreeSet<String> {
    exp.samples
        .iter()
        .map(|s| s.name.clone())
        .filter(|n| n != "target_info")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_only_serves_http_process_and_runtime_metrics_and_pushes_nothing() {
    let capture = OtlpMetricsCapture::new();
    let inst = Builder::for_package("direct", "1.0.0")
        .with_env_lookup(env(&[("OTEL_METRICS_EXPORTER", "prometheus")]))
        .with_prometheus_addr(loopback0())
        .with_otlp_metrics_capture(capture.clone())
        .with_metric_export_interval(Duration::from_millis(50))
        .with_log_writer(std::io::sink)
        .build()
        .expect("build");
    let addr = inst.guard.prometheus_addr().expect("a listener");
    let router = app(&inst);
    requests(&router, &["/users/1", "/users/2", "/nope"]).await;
    let exp = scrape(addr).await;

    let count = |route: &str| -> f64 {
        exp.find(
            "http_server_request_duration_seconds_count",
            &[("http_route", route), ("otel_scope_name", "spindle-instrument")],
        )
        .iter()
        .map(|s| s.value)
        .sum()
    };
    assert_eq!(
        count("/users/{id}"),
        2.0,
        "{}",
        exp.lines_of("http_server_request_duration_seconds")
    );
    assert_eq!(count("unmatched"), 1.0);
    assert_eq!(
        exp.types
            .get("http_server_request_duration_seconds")
            .map(String::as_str),
        Some("histogram")
    );
    for name in [
        "process_memory_usage_bytes",
        "process_memory_virtual_bytes",
        "process_open_file_descriptor_count",
        "process_open_file_descriptor_limit",
        "process_thread_count",
        "process_uptime_seconds",
        "tokio_runtime_workers",
        "tokio_runtime_alive_tasks",
        "tokio_runtime_global_queue_depth",
    ] {
        let s = exp.one(name, &[]);
        assert!(s.value >= 0.0, "{name}");
    }
    assert!(
        exp.one("process_memory_usage_bytes", &[]).value > 1e6,
        "a resident set of more than 1 MB"
    );
    assert_eq!(exp.one("tokio_runtime_workers", &[]).value, 2.0, "this test's runtime");
    assert_eq!(
        exp.find("tokio_runtime_worker_busy_time_seconds_total", &[]).len(),
        2,
        "one per worker"
    );
    let user = exp.one("process_cpu_time_seconds_total", &[("cpu_mode", "user")]).value;
    assert!(
        exp.one("process_cpu_time_seconds_total", &[("cpu_mode", "system")])
            .value
            >= 0.0
    );

    // CPU time is read at scrape time: burn some and scrape again.
    let spin = Instant::now();
    let mut x = 0u64;
    while spin.elapsed() < Duration::from_millis(300) {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
    let later = scrape(addr)
        .await
        .one("process_cpu_time_seconds_total", &[("cpu_mode", "user")])
        .value;
    assert!(
        later >= user + 0.1,
        "user CPU {user} → {later} after 300 ms of spinning"
    );

    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(capture.requests().is_empty(), "prometheus alone pushes nothing");
    drop(inst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_router_mounts_on_the_service_port_and_the_setters_turn_things_off() {
    let inst = Builder::for_package("mounted", "1.0.0")
        .with_env_lookup(env(&[]))
        .with_metrics_exporters([MetricsExporter::Prometheus])
        .with_traces_exporter(TracesExporter::None)
        .with_prometheus_listener(false)
        .with_process_metrics(false)
        .with_runtime_metrics(false)
        .with_log_writer(std::io::sink)
        .build()
        .expect("build");
    assert_eq!(inst.guard.prometheus_addr(), None, "no listener of its own");
    let router = app(&inst).merge(inst.guard.metrics_router().expect("prometheus is on"));
    requests(&router, &["/users/7"]).await;
    let resp = router
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).expect("request"))
        .await
        .expect("response");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers().get("content-type").and_then(|v| v.to_str().ok()),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let body = axum::body::to_bytes(resp.into_body(), 1 << 22).await.expect("body");
    let exp = parse_exposition(std::str::from_utf8(&body).expect("utf-8"));
    assert!(
        !exp.find(
            "http_server_request_duration_seconds_count",
            &[("http_route", "/users/{id}")]
        )
        .is_empty()
    );
    let turned_off: Vec<&String> = exp
        .samples
        .iter()
        .map(|s| &s.name)
        .filter(|n| n.starts_with("process_") || n.starts_with("tokio_"))
        .collect();
    assert!(
        turned_off.is_empty(),
        "process and runtime metrics are off: {turned_off:?}"
    );
    // `none` for both: builds, exports nothing, serves nothing.
    let none = Builder::new()
        .with_env_lookup(env(&[
            ("OTEL_METRICS_EXPORTER", "none"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ]))
        .with_log_writer(std::io::sink)
        .build()
        .expect("build");
    assert!(none.guard.metrics_router().is_none() && none.guard.prometheus_addr().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_and_runtime_metrics_are_pushed_over_otlp_by_default() {
    let capture = OtlpMetricsCapture::new();
    let inst = Builder::for_package("pushed", "1.0.0")
        .with_env_lookup(env(&[]))
        .with_otlp_metrics_capture(capture.clone())
        .with_log_writer(std::io::sink)
        .build()
        .expect("build");
    inst.guard.force_flush().expect("flush");
    let requests = capture.requests();
    let metrics: HashMap<String, (String, &'static str)> = requests
        .iter()
        .flat_map(|r| &r.resource_metrics)
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .map(|m| {
            let kind = match &m.data {
                Some(Data::Sum(s)) if s.is_monotonic => "counter",
                Some(Data::Sum(_)) => "updown",
                Some(Data::Gauge(_)) => "gauge",
                _ => "other",
            };
            (m.name.clone(), (m.unit.clone(), kind))
        })
        .collect();
    for (name, unit, kind) in [
        ("process.cpu.time", "s", "counter"),
        ("process.memory.usage", "By", "updown"),
        ("process.memory.virtual", "By", "updown"),
        ("process.open_file_descriptor.count", "{file_descriptor}", "updown"),
        ("process.open_file_descriptor.limit", "{file_descriptor}", "gauge"),
        ("process.thread.count", "{thread}", "updown"),
        ("process.uptime", "s", "gauge"),
        ("tokio.runtime.workers", "{worker}", "gauge"),
        ("tokio.runtime.alive_tasks", "{task}", "gauge"),
        ("tokio.runtime.global_queue.depth", "{task}", "gauge"),
        ("tokio.runtime.worker.busy_time", "s", "counter"),
    ] {
        assert_eq!(
            metrics.get(name),
            Some(&(unit.to_owned(), kind)),
            "{name}: semantic-convention unit and instrument kind; have {metrics:?}"
        );
    }
}

/// `otlp,prometheus`: the same instruments reach Spindle over OTLP and the service's own
/// `/metrics`; every metric has the same Prometheus name on both paths, the same label names
/// (Spindle adds `job` and `instance`), and the request counts agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_paths_give_the_same_names_labels_and_counts() {
    let spindle = start_spindle(|_| {}).await;
    let inst = Builder::for_package("both-paths", "1.0.0")
        .with_env_lookup(env(&[("OTEL_METRICS_EXPORTER", "otlp,prometheus")]))
        .with_endpoint(format!("http://{}", spindle.grpc_addr))
        .with_traces_exporter(TracesExporter::None)
        .with_prometheus_addr(loopback0())
        .with_metric_export_interval(Duration::from_secs(3600))
        .with_log_writer(std::io::sink)
        .build()
        .expect("build");
    let addr = inst.guard.prometheus_addr().expect("listener");
    let router = app(&inst);
    requests(&router, &["/users/1", "/users/2", "/users/3", "/x"]).await;
    inst.guard.force_flush().expect("metrics reach Spindle");
    let direct = scrape(addr).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let via_spindle = loop {
        let exp = scrape(spindle.prometheus_addr).await;
        if !exp
            .find("process_cpu_time_seconds_total", &[("job", "both-paths")])
            .is_empty()
        {
            break exp;
        }
        assert!(
            Instant::now() < deadline,
            "nothing from both-paths on Spindle:\n{}",
            exp.text
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let spindle_names: BTreeSet<String> = via_spindle
        .samples
        .iter()
        .filter(|s| s.label("job") == "both-paths" && s.name != "target_info")
        .map(|s| s.name.clone())
        .collect();
    let direct_names = names(&direct);
    for wanted in [
        "http_server_request_duration_seconds_bucket",
        "http_server_active_requests",
        "process_cpu_time_seconds_total",
        "process_memory_usage_bytes",
        "tokio_runtime_worker_busy_time_seconds_total",
        "tokio_runtime_global_queue_depth",
    ] {
        assert!(direct_names.contains(wanted), "{wanted} missing: {direct_names:?}");
    }
    assert_eq!(direct_names, spindle_names, "the same sample names on both paths");
    for name in &direct_names {
        let labels = |exp: &Exposition, job: Option<&str>| -> BTreeSet<String> {
            exp.samples
                .iter()
                .filter(|s| &s.name == name && job.is_none_or(|j| s.label("job") == j))
                .flat_map(|s| s.labels.keys().cloned())
                .filter(|k| k != "job" && k != "instance")
                .collect()
        };
        assert_eq!(
            labels(&direct, None),
            labels(&via_spindle, Some("both-paths")),
            "labels of {name}"
        );
        assert_eq!(
            direct.types.get(
                name.trim_end_matches("_bucket")
                    .trim_end_matches("_count")
                    .trim_end_matches("_sum")
            ),
            via_spindle.types.get(
                name.trim_end_matches("_bucket")
                    .trim_end_matches("_count")
                    .trim_end_matches("_sum")
            ),
            "type of {name}"
        );
    }
    let count = |exp: &Exposition, route: &str| -> f64 {
        exp.find("http_server_request_duration_seconds_count", &[("http_route", route)])
            .iter()
            .filter(|s| s.label("job").is_empty() || s.label("job") == "both-paths")
            .map(|s| s.value)
            .sum()
    };
    assert_eq!(count(&direct, "/users/{id}"), 3.0);
    assert_eq!(count(&via_spindle, "/users/{id}"), 3.0);
    assert_eq!(count(&direct, "unmatched"), count(&via_spindle, "unmatched"));
    drop(inst);
    spindle.shutdown().await.expect("spindle shuts down");
}
