//! Exemplars in the OTLP that `spindle-instrument` sends: counters and histogram buckets, through
//! the meter and through metric fields on `tracing` events, under each exemplar filter.

use std::collections::HashMap;

use opentelemetry::KeyValue;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::{Exemplar, Metric, metric};
use opentelemetry_sdk::trace::InMemorySpanExporter;
use spindle_instrument::{Builder, ExemplarFilter, InitError, Instrumentation, OtlpMetricsCapture, SamplerConfig};
use tracing_opentelemetry::OpenTelemetrySpanExt;

fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + Send + Sync + 'static {
    let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |k: &str| map.get(k).cloned()
}

fn build(builder: Builder) -> (Instrumentation, OtlpMetricsCapture) {
    let capture = OtlpMetricsCapture::new();
    let inst = builder
        .with_span_exporter(InMemorySpanExporter::default())
        .with_otlp_metrics_capture(capture.clone())
        .with_log_writer(std::io::sink)
        .build()
        .expect("build");
    (inst, capture)
}

fn last_metric(capture: &OtlpMetricsCapture, name: &str) -> Metric {
    let requests: Vec<ExportMetricsServiceRequest> = capture.requests();
    let last = requests.last().expect("one export");
    last.resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("metric {name} not exported"))
        .clone()
}

fn sum_exemplars(m: &Metric) -> Vec<Exemplar> {
    match &m.data {
        Some(metric::Data::Sum(s)) => s.data_points.iter().flat_map(|p| p.exemplars.clone()).collect(),
        other => panic!("not a sum: {other:?}"),
    }
}

/// Records, inside one span, a counter and a histogram through the meter and the same through
/// event fields; returns the span's trace and span ids.
fn record_in_span(inst: &Instrumentation) -> (Vec<u8>, Vec<u8>) {
    let meter = inst.guard.meter();
    let counter = meter.u64_counter("t.requests").build();
    let histogram = meter
        .f64_histogram("t.latency")
        .with_boundaries(vec![0.1, 1.0, 10.0])
        .build();
    tracing::dispatcher::with_default(&inst.dispatch, || {
        let span = tracing::info_span!("work");
        let _e = span.enter();
        counter.add(1, &[KeyValue::new("result", "ok")]);
        histogram.record(0.05, &[]);
        histogram.record(5.0, &[]);
        histogram.record(50.0, &[]);
        tracing::info!(monotonic_counter.t_events = 2_u64, kind = "a", "event counter");
        tracing::info!(histogram.t_event_latency = 0.5_f64, "event histogram");
        let sc = span.context().span().span_context().clone();
        (sc.trace_id().to_bytes().to_vec(), sc.span_id().to_bytes().to_vec())
    })
}

use opentelemetry::trace::TraceContextExt;

#[test]
fn sampled_spans_put_exemplars_on_counters_and_every_histogram_bucket() {
    let (inst, capture) = build(Builder::new().with_env_lookup(env(&[])));
    let (trace_id, span_id) = record_in_span(&inst);
    // Outside any span: counted, but no exemplar under the default (trace_based) filter.
    let outside = inst.guard.meter().u64_counter("t.outside").build();
    outside.add(3, &[]);
    inst.guard.force_flush().expect("flush");

    let counter = sum_exemplars(&last_metric(&capture, "t.requests"));
    assert_eq!(counter.len(), 1, "{counter:?}");
    assert_eq!(counter[0].trace_id, trace_id);
    assert_eq!(counter[0].span_id, span_id);
    assert_eq!(
        counter[0].value,
        Some(opentelemetry_proto::tonic::metrics::v1::exemplar::Value::AsInt(1))
    );
    assert!(counter[0].time_unix_nano > 0);

    let Some(metric::Data::Histogram(h)) = last_metric(&capture, "t.latency").data else {
        panic!("not a histogram")
    };
    let dp = &h.data_points[0];
    assert_eq!(dp.bucket_counts, vec![1, 0, 1, 1]);
    let values: Vec<f64> = dp
        .exemplars
        .iter()
        .map(|e| match e.value {
            Some(opentelemetry_proto::tonic::metrics::v1::exemplar::Value::AsDouble(v)) => v,
            ref other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(values, vec![0.05, 5.0, 50.0], "one exemplar per non-empty bucket");
    assert!(
        dp.exemplars
            .iter()
            .all(|e| e.trace_id == trace_id && e.span_id == span_id)
    );

    let events = sum_exemplars(&last_metric(&capture, "t_events"));
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].trace_id, trace_id);
    let Some(metric::Data::Histogram(eh)) = last_metric(&capture, "t_event_latency").data else {
        panic!("not a histogram")
    };
    assert_eq!(eh.data_points[0].exemplars.len(), 1);
    assert_eq!(eh.data_points[0].exemplars[0].span_id, span_id);

    assert!(sum_exemplars(&last_metric(&capture, "t.outside")).is_empty());
}

#[test]
fn unsampled_spans_give_no_exemplars_unless_always_on() {
    let (inst, capture) = build(
        Builder::new()
            .with_env_lookup(env(&[]))
            .with_sampler(SamplerConfig::AlwaysOff),
    );
    record_in_span(&inst);
    inst.guard.force_flush().expect("flush");
    assert!(sum_exemplars(&last_metric(&capture, "t.requests")).is_empty());

    let (inst, capture) = build(
        Builder::new()
            .with_env_lookup(env(&[("OTEL_METRICS_EXEMPLAR_FILTER", "always_on")]))
            .with_sampler(SamplerConfig::AlwaysOff),
    );
    record_in_span(&inst);
    inst.guard.force_flush().expect("flush");
    let ex = sum_exemplars(&last_metric(&capture, "t.requests"));
    assert_eq!(ex.len(), 1);
    assert!(ex[0].trace_id.is_empty(), "no sampled span, so no trace id");
}

#[test]
fn always_off_and_bad_values() {
    let (inst, capture) = build(Builder::new().with_env_lookup(env(&[("OTEL_METRICS_EXEMPLAR_FILTER", "always_off")])));
    record_in_span(&inst);
    inst.guard.force_flush().expect("flush");
    assert!(sum_exemplars(&last_metric(&capture, "t.requests")).is_empty());

    let (inst, capture) = build(
        Builder::new()
            .with_env_lookup(env(&[("OTEL_METRICS_EXEMPLAR_FILTER", "always_off")]))
            .with_exemplar_filter(ExemplarFilter::TraceBased),
    );
    record_in_span(&inst);
    inst.guard.force_flush().expect("flush");
    assert_eq!(
        sum_exemplars(&last_metric(&capture, "t.requests")).len(),
        1,
        "code beats env"
    );

    let err = Builder::new()
        .with_env_lookup(env(&[("OTEL_METRICS_EXEMPLAR_FILTER", "maybe")]))
        .with_log_writer(std::io::sink)
        .build()
        .expect_err("bad filter");
    assert!(matches!(err, InitError::InvalidEnv { .. }), "{err:?}");
    assert!(err.to_string().contains("OTEL_METRICS_EXEMPLAR_FILTER"), "{err}");
}

fn histogram_points(m: &Metric) -> Vec<opentelemetry_proto::tonic::metrics::v1::HistogramDataPoint> {
    match &m.data {
        Some(metric::Data::Histogram(h)) => h.data_points.clone(),
        other => panic!("not a histogram: {other:?}"),
    }
}

/// Instruments bound to an attribute set (`Counter::bind`, and the HTTP layer's bound duration
/// histograms) keep exemplars like unbound ones: the request in a sampled trace leaves one with
/// its trace id on its route's histogram point, the one in a not-sampled trace none.
#[tokio::test]
async fn bound_instruments_keep_exemplars() {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    let (inst, capture) = build(Builder::new().with_env_lookup(env(&[])));
    let _default = tracing::dispatcher::set_default(&inst.dispatch);
    let bound = inst
        .guard
        .meter()
        .u64_counter("t.bound")
        .build()
        .bind(&[KeyValue::new("result", "ok")]);
    let span = tracing::info_span!("work");
    span.in_scope(|| bound.add(2));
    let span_id = span.context().span().span_context().span_id().to_bytes().to_vec();

    let router = axum::Router::new()
        .route("/sampled", axum::routing::get(|| async { "yes" }))
        .route("/unsampled", axum::routing::get(|| async { "no" }))
        .layer(spindle_instrument::HttpLayer::with_meter(&inst.guard.meter()));
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    for (path, flags) in [("/sampled", "01"), ("/unsampled", "00"), ("/sampled", "01")] {
        let req = Request::get(path)
            .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-{flags}"))
            .body(Body::empty())
            .expect("request");
        let resp = router.clone().oneshot(req).await.expect("response");
        assert_eq!(resp.status(), 200);
    }
    inst.guard.force_flush().expect("flush");

    let counter = sum_exemplars(&last_metric(&capture, "t.bound"));
    assert_eq!(counter.len(), 1, "{counter:?}");
    assert_eq!(counter[0].span_id, span_id);

    let points = histogram_points(&last_metric(&capture, "http.server.request.duration"));
    let route = |p: &opentelemetry_proto::tonic::metrics::v1::HistogramDataPoint| {
        p.attributes
            .iter()
            .find(|kv| kv.key == "http.route")
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.clone())
    };
    let by_route = |r: &str| {
        points
            .iter()
            .find(|p| {
                route(p)
                    == Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(
                        r.to_owned(),
                    ))
            })
            .unwrap_or_else(|| panic!("no point for {r}: {points:?}"))
            .clone()
    };
    let sampled = by_route("/sampled");
    assert_eq!(sampled.count, 2);
    assert_eq!(sampled.exemplars.len(), 1, "{sampled:?}");
    assert_eq!(hex(&sampled.exemplars[0].trace_id), trace);
    let unsampled = by_route("/unsampled");
    assert_eq!(unsampled.count, 1);
    assert!(unsampled.exemplars.is_empty(), "{unsampled:?}");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
