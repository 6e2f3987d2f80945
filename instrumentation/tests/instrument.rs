//! Behaviour of `spindle-instrument` with in-memory exporters and, for the OTLP transports, a real
//! OTLP receiver (`spindle_e2e::otlp_sink`). No test installs anything globally: each uses
//! `Builder::build` and a scoped `tracing::dispatcher::set_default`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, Temporality};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use spindle_e2e::otlp_sink::{OtlpSink, SPAN_KIND_SERVER};
use spindle_instrument::http::{client_span, extract_context, inject_context, record_response};
use spindle_instrument::{Builder, HttpLayer, InitError, Instrumentation, SamplerConfig, UNMATCHED_ROUTE};
use tower::ServiceExt;
use tracing_opentelemetry::OpenTelemetrySpanExt;

fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + Send + Sync + 'static {
    let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |k: &str| map.get(k).cloned()
}

struct InMemory {
    inst: Instrumentation,
    spans: InMemorySpanExporter,
    metrics: InMemoryMetricExporter,
}

impl InMemory {
    fn new(vars: &[(&str, &str)]) -> Self {
        Self::with(Builder::for_package("test-pkg", "0.0.1").with_env_lookup(env(vars)))
    }

    fn with(builder: Builder) -> Self {
        let spans = InMemorySpanExporter::default();
        let metrics = InMemoryMetricExporter::default();
        let inst = builder
            .with_span_exporter(spans.clone())
            .with_metric_exporter(metrics.clone())
            .with_log_writer(std::io::sink)
            .build()
            .expect("build");
        Self { inst, spans, metrics }
    }

    fn finished_spans(&self) -> Vec<SpanData> {
        self.inst.guard.force_flush().expect("flush");
        self.spans.get_finished_spans().expect("spans")
    }

    fn finished_metrics(&self) -> Vec<ResourceMetrics> {
        self.inst.guard.force_flush().expect("flush");
        self.metrics.get_finished_metrics().expect("metrics")
    }
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs.iter().find(|kv| kv.key.as_str() == key).map(|kv| &kv.value)
}

fn attr_str(attrs: &[KeyValue], key: &str) -> String {
    attr(attrs, key).map(|v| v.as_str().into_owned()).unwrap_or_default()
}

#[test]
fn tracing_spans_become_otel_spans_with_resource_and_threshold() {
    let t = InMemory::new(&[
        ("OTEL_SERVICE_NAME", "checkout"),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment.name=test,service.version=9.9,service.name=ignored",
        ),
    ]);
    tracing::dispatcher::with_default(&t.inst.dispatch, || {
        let outer = tracing::info_span!("outer", order.id = 7);
        outer.in_scope(|| {
            tracing::info_span!("inner").in_scope(|| {});
        });
    });
    let spans = t.finished_spans();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let outer = spans.iter().find(|s| s.name == "outer").expect("outer");
    let inner = spans.iter().find(|s| s.name == "inner").expect("inner");
    assert_eq!(inner.parent_span_id, outer.span_context.span_id());
    assert_eq!(inner.span_context.trace_id(), outer.span_context.trace_id());
    assert_eq!(attr(&outer.attributes, "order.id"), Some(&Value::I64(7)));
    // Default sampler parentbased_always_on: the root records th:0, the child inherits it.
    assert_eq!(outer.span_context.trace_state().header(), "ot=th:0");
    assert_eq!(inner.span_context.trace_state().header(), "ot=th:0");
    assert_eq!(outer.instrumentation_scope.name(), spindle_instrument::SCOPE_NAME);

    // The resource (seen on the metrics export): code/env precedence.
    tracing::dispatcher::with_default(&t.inst.dispatch, || {
        tracing::info!(monotonic_counter.pings = 1u64);
    });
    let metrics = t.finished_metrics();
    let resource = metrics.last().expect("an export").resource();
    let get = |k: &'static str| {
        resource
            .get(&opentelemetry::Key::from_static_str(k))
            .map(|v| v.as_str().into_owned())
    };
    assert_eq!(
        get("service.name").as_deref(),
        Some("checkout"),
        "OTEL_SERVICE_NAME wins"
    );
    assert_eq!(
        get("service.version").as_deref(),
        Some("9.9"),
        "env beats the package default"
    );
    assert_eq!(get("deployment.environment.name").as_deref(), Some("test"));
    assert_eq!(get("service.instance.id").map(|s| s.len()), Some(36), "generated UUID");
    assert_eq!(get("telemetry.sdk.language").as_deref(), Some("rust"));
}

#[test]
fn package_defaults_and_code_overrides() {
    let t = InMemory::with(
        Builder::for_package("pkg-name", "1.2.3")
            .with_env_lookup(env(&[("OTEL_RESOURCE_ATTRIBUTES", "service.instance.id=from-env")]))
            .with_resource_attribute(KeyValue::new("team", "core")),
    );
    tracing::dispatcher::with_default(&t.inst.dispatch, || tracing::info!(counter.x = 1i64));
    let metrics = t.finished_metrics();
    let resource = metrics.last().expect("an export").resource();
    let get = |k: &'static str| {
        resource
            .get(&opentelemetry::Key::from_static_str(k))
            .map(|v| v.as_str().into_owned())
    };
    assert_eq!(get("service.name").as_deref(), Some("pkg-name"));
    assert_eq!(get("service.version").as_deref(), Some("1.2.3"));
    assert_eq!(get("service.instance.id").as_deref(), Some("from-env"));
    assert_eq!(get("team").as_deref(), Some("core"));

    let t = InMemory::with(
        Builder::for_package("pkg-name", "1.2.3")
            .with_env_lookup(env(&[("OTEL_SERVICE_NAME", "from-env")]))
            .with_service_name("from-code"),
    );
    tracing::dispatcher::with_default(&t.inst.dispatch, || tracing::info!(counter.x = 1i64));
    let metrics = t.finished_metrics();
    let name = metrics.last().expect("export").resource().get(&"service.name".into());
    assert_eq!(name.map(|v| v.as_str().into_owned()).as_deref(), Some("from-code"));
}

#[test]
fn ratio_sampling_records_threshold_and_keeps_about_the_ratio() {
    let t = InMemory::new(&[
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
    ]);
    tracing::dispatcher::with_default(&t.inst.dispatch, || {
        for _ in 0..2000 {
            tracing::info_span!("root").in_scope(|| tracing::info_span!("child").in_scope(|| {}));
        }
    });
    let spans = t.finished_spans();
    let roots: Vec<&SpanData> = spans.iter().filter(|s| s.name == "root").collect();
    let children = spans.iter().filter(|s| s.name == "child").count();
    assert!((400..600).contains(&roots.len()), "kept {} of 2000 roots", roots.len());
    assert_eq!(children, roots.len(), "children follow their parent");
    for s in &spans {
        assert_eq!(s.span_context.trace_state().header(), "ot=th:c");
        let r = u64::from_be_bytes(s.span_context.trace_id().to_bytes()[8..].try_into().expect("8 bytes"))
            & ((1 << 56) - 1);
        assert!(r >= 0xc0_0000_0000_0000, "kept span has R >= T");
    }
}

fn sum_points(metrics: &[ResourceMetrics], name: &str) -> Vec<(Vec<KeyValue>, f64)> {
    let mut out = Vec::new();
    let Some(last) = metrics.last() else { return out };
    for sm in last.scope_metrics() {
        for m in sm.metrics().filter(|m| m.name() == name) {
            match m.data() {
                AggregatedMetrics::U64(MetricData::Sum(s)) => out.extend(
                    s.data_points()
                        .map(|p| (p.attributes().cloned().collect(), p.value() as f64)),
                ),
                AggregatedMetrics::I64(MetricData::Sum(s)) => out.extend(
                    s.data_points()
                        .map(|p| (p.attributes().cloned().collect(), p.value() as f64)),
                ),
                AggregatedMetrics::F64(MetricData::Sum(s)) => {
                    out.extend(s.data_points().map(|p| (p.attributes().cloned().collect(), p.value())))
                }
                AggregatedMetrics::I64(MetricData::Gauge(g)) => out.extend(
                    g.data_points()
                        .map(|p| (p.attributes().cloned().collect(), p.value() as f64)),
                ),
                AggregatedMetrics::F64(MetricData::Histogram(h)) => out.extend(
                    h.data_points()
                        .map(|p| (p.attributes().cloned().collect(), p.count() as f64)),
                ),
                other => panic!("unexpected data for {name}: {other:?}"),
            }
        }
    }
    out
}

#[test]
fn metrics_from_events_and_the_meter() {
    let t = InMemory::new(&[]);
    tracing::dispatcher::with_default(&t.inst.dispatch, || {
        tracing::info!(monotonic_counter.jobs_done = 2u64, queue = "a");
        tracing::info!(monotonic_counter.jobs_done = 3u64, queue = "a");
        tracing::info!(counter.in_flight = -1i64);
        tracing::info!(histogram.job_seconds = 0.25f64);
        tracing::info!(histogram.job_seconds = 0.75f64);
        tracing::info!(gauge.queue_depth = 7i64);
    });
    let counter = t.inst.guard.meter().u64_counter("direct.calls").build();
    counter.add(4, &[KeyValue::new("k", "v")]);
    let metrics = t.finished_metrics();
    assert_eq!(
        t.metrics
            .get_finished_metrics()
            .expect("metrics")
            .last()
            .map(|m| m.scope_metrics().count()),
        Some(2),
        "the event metrics scope and spindle-instrument"
    );
    let jobs = sum_points(&metrics, "jobs_done");
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].1, 5.0);
    assert_eq!(attr_str(&jobs[0].0, "queue"), "a");
    assert_eq!(sum_points(&metrics, "in_flight")[0].1, -1.0);
    assert_eq!(sum_points(&metrics, "job_seconds")[0].1, 2.0, "histogram count");
    assert_eq!(sum_points(&metrics, "queue_depth")[0].1, 7.0);
    assert_eq!(sum_points(&metrics, "direct.calls")[0].1, 4.0);
    // Cumulative, as Prometheus wants.
    let last = metrics.last().expect("export");
    let temporality = last
        .scope_metrics()
        .flat_map(|s| s.metrics())
        .find(|m| m.name() == "jobs_done")
        .map(|m| match m.data() {
            AggregatedMetrics::U64(MetricData::Sum(s)) => s.temporality(),
            _ => Temporality::Delta,
        });
    assert_eq!(temporality, Some(Temporality::Cumulative));
}

fn app(layer: HttpLayer) -> Router {
    Router::new()
        .route("/users/{id}", get(|| async { "user" }))
        .route("/boom", get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }))
        .layer(layer)
}

#[tokio::test]
async fn http_layer_spans_and_metrics_use_the_route_template() {
    let t = InMemory::new(&[]);
    let _default = tracing::dispatcher::set_default(&t.inst.dispatch);
    let router = app(HttpLayer::with_meter(&t.inst.guard.meter()));

    let parent_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_span = "00f067aa0ba902b7";
    let resp = router
        .clone()
        .oneshot(
            Request::get("/users/42?verbose=1")
                .header("traceparent", format!("00-{parent_trace}-{parent_span}-01"))
                .header("tracestate", "ot=th:8,vendor=x")
                .header("user-agent", "test-agent")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(resp.status(), 200);
    let resp = router
        .clone()
        .oneshot(Request::get("/users/7").body(Body::empty()).expect("req"))
        .await
        .expect("resp");
    assert_eq!(resp.status(), 200);
    let resp = router
        .clone()
        .oneshot(Request::get("/no/such/path").body(Body::empty()).expect("req"))
        .await
        .expect("resp");
    assert_eq!(resp.status(), 404);
    let resp = router
        .clone()
        .oneshot(Request::get("/boom").body(Body::empty()).expect("req"))
        .await
        .expect("resp");
    assert_eq!(resp.status(), 500);
    let resp = router
        .clone()
        .oneshot(
            Request::builder()
                .method("PURGE")
                .uri("/users/1")
                .body(Body::empty())
                .expect("req"),
        )
        .await
        .expect("resp");
    assert_eq!(resp.status(), 405);

    let spans = t.finished_spans();
    assert_eq!(spans.len(), 5, "{spans:#?}");
    let users: Vec<&SpanData> = spans.iter().filter(|s| s.name == "GET /users/{id}").collect();
    assert_eq!(users.len(), 2);
    let first = users
        .iter()
        .find(|s| attr_str(&s.attributes, "url.path") == "/users/42")
        .expect("span of /users/42");
    assert_eq!(first.span_kind, SpanKind::Server);
    assert_eq!(
        first.span_context.trace_id().to_string(),
        parent_trace,
        "joins the caller's trace"
    );
    assert_eq!(first.parent_span_id.to_string(), parent_span);
    assert!(first.parent_span_is_remote);
    assert_eq!(
        first.span_context.trace_state().header(),
        "ot=th:8,vendor=x",
        "tracestate propagated"
    );
    assert_eq!(attr_str(&first.attributes, "http.route"), "/users/{id}");
    assert_eq!(attr_str(&first.attributes, "http.request.method"), "GET");
    assert_eq!(attr_str(&first.attributes, "url.scheme"), "http");
    assert_eq!(attr_str(&first.attributes, "url.query"), "verbose=1");
    assert_eq!(attr_str(&first.attributes, "user_agent.original"), "test-agent");
    assert_eq!(attr_str(&first.attributes, "network.protocol.version"), "1.1");
    assert_eq!(
        attr(&first.attributes, "http.response.status_code"),
        Some(&Value::I64(200))
    );
    assert_eq!(first.status, Status::Unset);

    let unmatched = spans
        .iter()
        .find(|s| attr_str(&s.attributes, "url.path") == "/no/such/path")
        .expect("404 span");
    assert_eq!(
        unmatched.name, "GET",
        "no route: the span is named after the method only"
    );
    assert_eq!(attr_str(&unmatched.attributes, "http.route"), UNMATCHED_ROUTE);
    let boom = spans.iter().find(|s| s.name == "GET /boom").expect("500 span");
    assert!(matches!(boom.status, Status::Error { .. }), "{:?}", boom.status);
    assert_eq!(attr_str(&boom.attributes, "error.type"), "500");
    let purge = spans
        .iter()
        .find(|s| attr_str(&s.attributes, "http.request.method") == "_OTHER")
        .expect("PURGE");
    assert_eq!(attr_str(&purge.attributes, "http.request.method_original"), "PURGE");

    let metrics = t.finished_metrics();
    let durations = sum_points(&metrics, "http.server.request.duration");
    let by_route = |route: &str, status: i64| {
        durations
            .iter()
            .filter(|(a, _)| {
                attr_str(a, "http.route") == route && attr(a, "http.response.status_code") == Some(&Value::I64(status))
            })
            .map(|(_, c)| *c)
            .sum::<f64>()
    };
    assert_eq!(by_route("/users/{id}", 200), 2.0);
    assert_eq!(by_route(UNMATCHED_ROUTE, 404), 1.0);
    assert_eq!(by_route("/boom", 500), 1.0);
    assert!(
        durations.iter().all(|(a, _)| !attr_str(a, "http.route").contains("42")),
        "never the raw path"
    );
    let boom_attrs = &durations
        .iter()
        .find(|(a, _)| attr_str(a, "http.route") == "/boom")
        .expect("boom")
        .0;
    assert_eq!(attr_str(boom_attrs, "error.type"), "500");
    let last = metrics.last().expect("export");
    let unit = last
        .scope_metrics()
        .flat_map(|s| s.metrics())
        .find(|m| m.name() == "http.server.request.duration")
        .map(|m| m.unit().to_owned());
    assert_eq!(unit.as_deref(), Some("s"));
    let active = sum_points(&metrics, "http.server.active_requests");
    assert!(!active.is_empty());
    assert!(active.iter().all(|(_, v)| *v == 0.0), "all requests done: {active:?}");
}

#[tokio::test]
async fn active_requests_counts_in_flight_and_cancelled_requests() {
    let t = InMemory::new(&[]);
    let _default = tracing::dispatcher::set_default(&t.inst.dispatch);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let rx = Arc::new(Mutex::new(Some(rx)));
    let router = Router::new()
        .route(
            "/wait",
            get(move || {
                let rx = rx.lock().expect("lock").take();
                async move {
                    if let Some(rx) = rx {
                        let _ = rx.await;
                    }
                    "done"
                }
            }),
        )
        .layer(HttpLayer::with_meter(&t.inst.guard.meter()));
    let pending = tokio::spawn(
        router
            .clone()
            .oneshot(Request::get("/wait").body(Body::empty()).expect("req")),
    );
    let in_flight = |t: &InMemory| {
        sum_points(&t.finished_metrics(), "http.server.active_requests")
            .iter()
            .map(|(_, v)| *v)
            .sum::<f64>()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while in_flight(&t) != 1.0 {
        assert!(Instant::now() < deadline, "the waiting request never showed as active");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    pending.abort();
    let _ = pending.await;
    drop(tx);
    assert_eq!(in_flight(&t), 0.0, "a cancelled request is no longer active");
}

/// A request whose `traceparent` says not sampled: no span is exported (neither the server span nor
/// the handler's), the handler still sees the caller's trace (its outgoing `traceparent` carries the
/// same trace id, flags `00`), and the HTTP metrics are recorded as for any request.
#[tokio::test]
async fn not_sampled_requests_export_no_span_but_propagate_and_count() {
    #[tracing::instrument]
    async fn handler() -> String {
        let mut headers = axum::http::HeaderMap::new();
        inject_context(&mut headers);
        headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_owned()
    }
    let t = InMemory::new(&[]);
    let _default = tracing::dispatcher::set_default(&t.inst.dispatch);
    let router = Router::new()
        .route("/users/{id}", get(handler))
        .layer(HttpLayer::with_meter(&t.inst.guard.meter()));
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let resp = router
        .oneshot(
            Request::get("/users/42")
                .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-00"))
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(resp.status(), 200);
    let body = axum::body::to_bytes(resp.into_body(), 1024).await.expect("body");
    let outgoing = String::from_utf8_lossy(&body).into_owned();
    assert!(
        outgoing.starts_with(&format!("00-{trace}-")) && outgoing.ends_with("-00"),
        "the handler continues the caller's unsampled trace: {outgoing}"
    );
    assert!(t.finished_spans().is_empty(), "nothing exported for an unsampled trace");
    let metrics = t.finished_metrics();
    let counts: f64 = sum_points(&metrics, "http.server.request.duration")
        .iter()
        .map(|(_, count)| *count)
        .sum();
    assert_eq!(counts, 1.0, "the request is measured although its trace is not sampled");
    let active = sum_points(&metrics, "http.server.active_requests");
    assert_eq!(active.len(), 1, "{active:?}");
    assert_eq!(attr_str(&active[0].0, "http.request.method"), "GET");
    assert_eq!(attr_str(&active[0].0, "url.scheme"), "http");
    assert_eq!(active[0].1, 0.0);
}

#[test]
fn inject_and_extract_round_trip_the_current_span() {
    let t = InMemory::new(&[]);
    tracing::dispatcher::with_default(&t.inst.dispatch, || {
        let uri: axum::http::Uri = "http://backend:8081/users/1".parse().expect("uri");
        let span = client_span(&axum::http::Method::GET, &uri);
        let mut headers = axum::http::HeaderMap::new();
        span.in_scope(|| inject_context(&mut headers));
        record_response(&span, Some(503));
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        let traceparent = headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .expect("traceparent");
        assert_eq!(traceparent, format!("00-{}-{}-01", sc.trace_id(), sc.span_id()));
        assert_eq!(headers.get("tracestate").and_then(|v| v.to_str().ok()), Some("ot=th:0"));
        let back = extract_context(&headers);
        assert_eq!(back.span().span_context().trace_id(), sc.trace_id());
        assert!(back.span().span_context().is_remote());
    });
    let spans = t.finished_spans();
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].name, "GET");
    assert_eq!(spans[0].span_kind, SpanKind::Client);
    assert_eq!(attr_str(&spans[0].attributes, "server.address"), "backend");
    assert_eq!(attr(&spans[0].attributes, "server.port"), Some(&Value::I64(8081)));
    assert_eq!(attr_str(&spans[0].attributes, "error.type"), "503");
}

fn build_err(vars: &[(&str, &str)]) -> InitError {
    Builder::new()
        .with_env_lookup(env(vars))
        .with_log_writer(std::io::sink)
        .build()
        .expect_err("should be rejected")
}

#[test]
fn bad_environment_values_are_errors_naming_the_variable() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("OTEL_SDK_DISABLED", "maybe")], "OTEL_SDK_DISABLED"),
        (&[("OTEL_TRACES_SAMPLER", "sometimes")], "OTEL_TRACES_SAMPLER"),
        (
            &[
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "2"),
            ],
            "OTEL_TRACES_SAMPLER_ARG",
        ),
        (
            &[("OTEL_METRIC_EXPORT_INTERVAL", "soon")],
            "OTEL_METRIC_EXPORT_INTERVAL",
        ),
        (&[("OTEL_METRIC_EXPORT_INTERVAL", "0")], "OTEL_METRIC_EXPORT_INTERVAL"),
        (
            &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")],
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
        (
            &[("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "udp")],
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        ),
        (
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "not a url")],
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ),
        (
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4317")],
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ),
        (
            &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "ftp://collector:4317")],
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ),
        (
            &[("OTEL_EXPORTER_OTLP_HEADERS", "authorization")],
            "OTEL_EXPORTER_OTLP_HEADERS",
        ),
        (
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4317"),
                ("OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE", "/nonexistent/ca.pem"),
            ],
            "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE",
        ),
        (&[("OTEL_RESOURCE_ATTRIBUTES", "team")], "OTEL_RESOURCE_ATTRIBUTES"),
        (&[("RUST_LOG", "info,[{")], "RUST_LOG"),
    ];
    for (vars, name) in cases {
        let err = build_err(vars).to_string();
        assert!(err.contains(name), "{vars:?}: {err}");
    }
    let err = Builder::new()
        .with_env_lookup(env(&[]))
        .with_threshold_precision(13)
        .build()
        .expect_err("precision out of range");
    assert!(err.to_string().contains("threshold_precision"), "{err}");
}

#[test]
fn sdk_disabled_exports_nothing_but_still_builds() {
    let t = InMemory::new(&[("OTEL_SDK_DISABLED", "TRUE")]);
    tracing::dispatcher::with_default(&t.inst.dispatch, || {
        tracing::info_span!("x").in_scope(|| tracing::info!(monotonic_counter.y = 1u64));
    });
    assert!(t.inst.guard.tracer_provider().is_none());
    assert!(t.spans.get_finished_spans().expect("spans").is_empty());
    assert!(t.metrics.get_finished_metrics().expect("metrics").is_empty());
}

/// Real OTLP export over both transports; the signal-specific variable beats the generic one,
/// and for http/protobuf the generic endpoint gets `/v1/<signal>` appended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_over_grpc_and_http_protobuf_with_endpoint_precedence() {
    let sink = OtlpSink::start().await;
    let closed = format!("http://127.0.0.1:{}", spindle_e2e::free_port());
    for (protocol, vars) in [
        (
            "grpc",
            vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", closed.clone()),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", sink.grpc_endpoint()),
                ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", sink.grpc_endpoint()),
            ],
        ),
        (
            "http/protobuf",
            vec![
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_owned()),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", sink.http_endpoint()),
            ],
        ),
    ] {
        let mut vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let service = format!("svc-{}", protocol.replace('/', "-"));
        vars.push(("OTEL_SERVICE_NAME", &service));
        let inst = Builder::new()
            .with_env_lookup(env(&vars))
            .with_log_writer(std::io::sink)
            .build()
            .expect("build");
        let router = app(HttpLayer::with_meter(&inst.guard.meter()));
        {
            let _default = tracing::dispatcher::set_default(&inst.dispatch);
            let resp = router
                .oneshot(Request::get("/users/5").body(Body::empty()).expect("req"))
                .await
                .expect("resp");
            assert_eq!(resp.status(), 200);
        }
        let guard = inst.guard;
        tokio::task::spawn_blocking(move || guard.shutdown())
            .await
            .expect("join")
            .unwrap_or_else(|e| panic!("{protocol}: shutdown flushes to the sink: {e}"));
        let spans = sink
            .wait_for_spans(Duration::from_secs(10), protocol, |spans| {
                spans.iter().any(|s| s.service_name == service)
            })
            .await;
        let span = spans.iter().find(|s| s.service_name == service).expect("span");
        assert_eq!(span.name, "GET /users/{id}");
        assert_eq!(span.kind, SPAN_KIND_SERVER);
        assert_eq!(span.attr("http.route"), Some("/users/{id}"));
        assert_eq!(span.trace_state, "ot=th:0");
        assert!(
            sink.wait_for(Duration::from_secs(10), |s| s
                .metric_names()
                .contains("http.server.request.duration"))
                .await,
            "{protocol}: metrics reach the sink"
        );
    }
}

#[test]
fn sampler_config_from_code_beats_env() {
    let t = InMemory::with(
        Builder::new()
            .with_env_lookup(env(&[("OTEL_TRACES_SAMPLER", "always_off")]))
            .with_sampler(SamplerConfig::TraceIdRatio(1.0)),
    );
    tracing::dispatcher::with_default(&t.inst.dispatch, || tracing::info_span!("kept").in_scope(|| {}));
    assert_eq!(t.finished_spans().len(), 1);
}

#[test]
fn quiet_logs_do_not_lose_spans() {
    let t = InMemory::new(&[("RUST_LOG", "error")]);
    tracing::dispatcher::with_default(&t.inst.dispatch, || tracing::info_span!("still_traced").in_scope(|| {}));
    assert_eq!(t.finished_spans().len(), 1);
    let t = InMemory::with(Builder::new().with_env_lookup(env(&[])).with_traces_filter("warn"));
    tracing::dispatcher::with_default(&t.inst.dispatch, || tracing::info_span!("filtered").in_scope(|| {}));
    assert!(t.finished_spans().is_empty());
}
