//! Builders for tests and benches: OTLP attributes, metrics, spans and requests, and a Spindle
//! started in-process with every listener on `127.0.0.1:0`.
//!
//! One place for what the pipeline's unit and integration tests, the e2e tests and the benches
//! used to write again each. The builders fill the fields a test cares about and leave the rest at
//! their defaults; a test that needs more sets it with struct-update syntax
//! (`Span { kind: 3, ..span("op", 1, vec![]) }`). Nothing here runs in a production path.

use std::net::{Ipv4Addr, SocketAddr};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    self as pm, AggregationTemporality, ResourceMetrics, ScopeMetrics, metric::Data, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

use crate::app::{Running, start};
use crate::config::{Config, EnrichRule, RuleAction, RuleTarget};

// ---- attributes ----------------------------------------------------------------------------

/// A string value.
pub fn str_value(value: impl Into<String>) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(value.into())),
    }
}

/// A string attribute `key = value`.
pub fn kv(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(str_value(value)),
        ..Default::default()
    }
}

/// An integer attribute `key = value`.
pub fn int_kv(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

/// String attributes from `(key, value)` pairs, in order.
pub fn kvs(pairs: &[(&str, &str)]) -> Vec<KeyValue> {
    pairs.iter().map(|(k, v)| kv(k, *v)).collect()
}

// ---- metrics -------------------------------------------------------------------------------

/// The OTLP aggregation temporality: delta when `delta`, else cumulative.
pub fn temporality(delta: bool) -> i32 {
    if delta {
        AggregationTemporality::Delta as i32
    } else {
        AggregationTemporality::Cumulative as i32
    }
}

/// A number point with a double `value` and the given attributes.
pub fn point(value: f64, attributes: Vec<KeyValue>) -> pm::NumberDataPoint {
    pm::NumberDataPoint {
        attributes,
        value: Some(number_data_point::Value::AsDouble(value)),
        ..Default::default()
    }
}

/// A number point with an integer `value` and the given attributes.
pub fn int_point(value: i64, attributes: Vec<KeyValue>) -> pm::NumberDataPoint {
    pm::NumberDataPoint {
        attributes,
        value: Some(number_data_point::Value::AsInt(value)),
        ..Default::default()
    }
}

/// Gauge data.
pub fn gauge(points: Vec<pm::NumberDataPoint>) -> Data {
    Data::Gauge(pm::Gauge { data_points: points })
}

/// Sum data, monotonic or not, delta or cumulative.
pub fn sum(monotonic: bool, delta: bool, points: Vec<pm::NumberDataPoint>) -> Data {
    Data::Sum(pm::Sum {
        data_points: points,
        aggregation_temporality: temporality(delta),
        is_monotonic: monotonic,
    })
}

/// Counter data: a cumulative monotonic sum.
pub fn counter(points: Vec<pm::NumberDataPoint>) -> Data {
    sum(true, false, points)
}

/// A histogram point with explicit `bounds` and per-bucket `counts` (its count is their total).
pub fn hpoint(bounds: &[f64], counts: &[u64], sum: Option<f64>, attributes: Vec<KeyValue>) -> pm::HistogramDataPoint {
    pm::HistogramDataPoint {
        attributes,
        count: counts.iter().sum(),
        sum,
        bucket_counts: counts.to_vec(),
        explicit_bounds: bounds.to_vec(),
        ..Default::default()
    }
}

/// Explicit-bucket histogram data, delta or cumulative.
pub fn histogram(delta: bool, points: Vec<pm::HistogramDataPoint>) -> Data {
    Data::Histogram(pm::Histogram {
        data_points: points,
        aggregation_temporality: temporality(delta),
    })
}

/// A metric named `name` with `unit` (may be empty) and `data`.
pub fn metric(name: &str, unit: &str, data: Data) -> pm::Metric {
    pm::Metric {
        name: name.into(),
        unit: unit.into(),
        data: Some(data),
        ..Default::default()
    }
}

/// A gauge metric `name` with one double point `value`.
pub fn gauge_metric(name: &str, value: f64, attributes: Vec<KeyValue>) -> pm::Metric {
    metric(name, "", gauge(vec![point(value, attributes)]))
}

/// A counter metric `name` (cumulative, monotonic) with one integer point `value`.
pub fn counter_metric(name: &str, value: i64, attributes: Vec<KeyValue>) -> pm::Metric {
    metric(name, "", counter(vec![int_point(value, attributes)]))
}

// ---- resources, scopes, requests -----------------------------------------------------------

/// A resource with the given attributes.
pub fn resource(attributes: Vec<KeyValue>) -> Resource {
    Resource {
        attributes,
        ..Default::default()
    }
}

/// An instrumentation scope `name` at `version` (either may be empty).
pub fn scope(name: &str, version: &str) -> InstrumentationScope {
    InstrumentationScope {
        name: name.into(),
        version: version.into(),
        ..Default::default()
    }
}

/// One resource (`None`: no resource at all) and one scope (`None`: no scope) holding `metrics`.
pub fn metrics_request_in(
    resource: Option<Resource>,
    scope: Option<InstrumentationScope>,
    metrics: Vec<pm::Metric>,
) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource,
            scope_metrics: vec![ScopeMetrics {
                scope,
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// One resource with `resource` attributes, one scope without a name, holding `metrics`.
pub fn metrics_request(resource: Vec<KeyValue>, metrics: Vec<pm::Metric>) -> ExportMetricsServiceRequest {
    metrics_request_in(Some(self::resource(resource)), None, metrics)
}

/// A server span `name` with trace id `[id; 16]`, span id `[id; 8]`, lasting 5 ms from 1 s after
/// the epoch, with the given attributes.
pub fn span(name: &str, id: u8, attributes: Vec<KeyValue>) -> Span {
    Span {
        trace_id: vec![id; 16],
        span_id: vec![id; 8],
        name: name.into(),
        kind: 2,
        start_time_unix_nano: 1_000_000_000,
        end_time_unix_nano: 1_005_000_000,
        attributes,
        ..Default::default()
    }
}

/// One resource with `resource` attributes, one scope without a name, holding `spans`.
pub fn traces_request(resource: Vec<KeyValue>, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(self::resource(resource)),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

// ---- processor rules -----------------------------------------------------------------------

/// An enrichment rule `action` on attribute `key`, applying to every signal, service and name,
/// with no value, new key or pattern.
pub fn enrich_rule(action: RuleAction, key: &str) -> EnrichRule {
    EnrichRule {
        action,
        key: key.into(),
        value: None,
        new_key: None,
        pattern: None,
        target: RuleTarget::Attributes,
        signals: Vec::new(),
        services: Vec::new(),
        names: Vec::new(),
    }
}

// ---- a Spindle on port 0 -------------------------------------------------------------------

/// The default configuration with every listener on `127.0.0.1:0`, then `tweak`.
pub fn config_on_port_0(tweak: impl FnOnce(&mut Config)) -> Config {
    let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let mut c = Config::default();
    c.receivers.otlp.grpc.listen = any;
    c.receivers.otlp.http.listen = any;
    c.prometheus.listen = any;
    tweak(&mut c);
    c
}

/// A Spindle started in-process from [`config_on_port_0`]; the addresses it bound are on the
/// returned [`Running`]. Call [`Running::shutdown`] at the end of the test.
///
/// # Panics
/// When the configuration does not validate or the start fails: a test set-up error.
pub async fn start_on_port_0(tweak: impl FnOnce(&mut Config)) -> Running {
    let c = config_on_port_0(tweak);
    let problems = c.validate();
    assert!(problems.is_empty(), "test config must validate: {problems:?}");
    match start(c).await {
        Ok(running) => running,
        Err(err) => panic!("spindle::app::start failed: {err:#}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_fill_what_they_name_and_leave_the_rest_default() {
        let hist = hpoint(&[1.0, 2.0], &[1, 2, 3], Some(4.5), vec![int_kv("code", 200)]);
        assert_eq!((hist.count, hist.sum), (6, Some(4.5)));
        let req = metrics_request(
            vec![kv("service.name", "svc")],
            vec![
                counter_metric("c", 3, vec![kv("a", "b")]),
                gauge_metric("g", 1.5, vec![]),
                metric("h", "s", histogram(true, vec![hist])),
            ],
        );
        let rm = &req.resource_metrics[0];
        assert_eq!(
            rm.resource.as_ref().map(|r| r.attributes.clone()),
            Some(kvs(&[("service.name", "svc")]))
        );
        let metrics = &rm.scope_metrics[0].metrics;
        assert!(matches!(&metrics[0].data, Some(Data::Sum(s)) if s.is_monotonic
            && s.aggregation_temporality == AggregationTemporality::Cumulative as i32));
        assert!(matches!(&metrics[2].data, Some(Data::Histogram(h))
            if h.aggregation_temporality == AggregationTemporality::Delta as i32));

        let req = traces_request(vec![], vec![span("op", 7, vec![])]);
        let s = &req.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(
            (s.trace_id.as_slice(), s.span_id.as_slice()),
            (&[7u8; 16][..], &[7u8; 8][..])
        );
        assert_eq!(s.end_time_unix_nano - s.start_time_unix_nano, 5_000_000);
    }

    #[test]
    fn config_on_port_0_puts_every_listener_on_port_0_then_applies_the_tweak() {
        let c = config_on_port_0(|c| c.prometheus.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 9)));
        assert_eq!(c.receivers.otlp.grpc.listen, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        assert_eq!(c.receivers.otlp.http.listen, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        assert_eq!(c.prometheus.listen.port(), 9);
        assert_eq!(c.validate(), vec![]);
    }

    #[tokio::test]
    async fn start_on_port_0_binds_free_loopback_ports() {
        let r = start_on_port_0(|_| {}).await;
        let addrs = [r.grpc_addr, r.http_addr, r.prometheus_addr];
        assert!(addrs.iter().all(|a| a.port() != 0 && a.ip().is_loopback()), "{addrs:?}");
        r.shutdown().await.unwrap();
    }

    #[tokio::test]
    #[should_panic(expected = "test config must validate")]
    async fn start_on_port_0_refuses_an_invalid_config() {
        start_on_port_0(|c| c.prometheus.series_ttl.0 = std::time::Duration::ZERO).await;
    }
}
