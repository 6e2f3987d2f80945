//! Whatever a peer sends, the metrics path (translate → store → render, and with the cardinality
//! limiter folding everything into overflow series) neither panics nor emits a histogram whose `le`
//! bounds go backwards. Random requests with extreme values: integers at their
//! limits, NaN and infinities, any scale and offset, huge counts, mismatched bucket lists.
//! And hostile label shapes — keys repeated hundreds of times, keys that collide after sanitizing
//! (`a.b`, `a-b`, `a_b`) on points, scopes and resources, long values — always render parseable
//! lines whose size stays within `receivers.otlp.limits`.

use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::exponential_histogram_data_point::Buckets;
use opentelemetry_proto::tonic::metrics::v1::{
    ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use proptest::prelude::*;
use spindle::app::write_metrics;
use spindle::config::CardinalityConfig;
use spindle::expose::render;
use spindle::model::Format;
use spindle::process::cardinality::Limiter;
use spindle::process::translate::Translator;
use spindle::store::Store;
use spindle::telemetry::Telemetry;

fn float() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>(),
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(f64::MAX),
        Just(-0.0),
        -10.0..10.0f64
    ]
}

fn count() -> impl Strategy<Value = u64> {
    prop_oneof![Just(u64::MAX), Just(u64::MAX / 2), 0..100u64]
}

fn data() -> impl Strategy<Value = metric::Data> {
    let number = prop_oneof![
        any::<i64>().prop_map(number_data_point::Value::AsInt),
        float().prop_map(number_data_point::Value::AsDouble)
    ];
    let points = proptest::collection::vec(number, 1..3).prop_map(|vs| {
        vs.into_iter()
            .map(|v| NumberDataPoint {
                value: Some(v),
                ..Default::default()
            })
            .collect::<Vec<_>>()
    });
    let temporality = prop_oneof![Just(1), Just(2), Just(0), Just(7)];
    let sum = (points.clone(), temporality.clone(), any::<bool>()).prop_map(|(data_points, t, m)| {
        metric::Data::Sum(Sum {
            data_points,
            aggregation_temporality: t,
            is_monotonic: m,
        })
    });
    let gauge = points.prop_map(|data_points| metric::Data::Gauge(Gauge { data_points }));
    let hist = (
        proptest::collection::vec(float(), 0..4),
        proptest::collection::vec(count(), 0..5),
        count(),
        temporality.clone(),
    )
        .prop_map(|(bounds, counts, c, t)| {
            metric::Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    count: c,
                    sum: Some(1.0),
                    explicit_bounds: bounds,
                    bucket_counts: counts,
                    ..Default::default()
                }],
                aggregation_temporality: t,
            })
        });
    let expo = (-12..24i32, side(), side(), count(), float(), temporality).prop_map(|(scale, p, n, z, zt, t)| {
        metric::Data::ExponentialHistogram(ExponentialHistogram {
            data_points: vec![ExponentialHistogramDataPoint {
                scale,
                positive: Some(p),
                negative: Some(n),
                zero_count: z,
                zero_threshold: zt,
                count: z,
                sum: Some(1.0),
                ..Default::default()
            }],
            aggregation_temporality: t,
        })
    });
    prop_oneof![sum, gauge, hist, expo]
}

/// Exponential buckets at any offset: half the time anywhere in `i32`, else near zero.
fn side() -> impl Strategy<Value = Buckets> {
    (any::<i32>(), -5000..5000i32, proptest::collection::vec(count(), 0..4)).prop_map(|(a, b, counts)| Buckets {
        offset: if a % 2 == 0 { a } else { b },
        bucket_counts: counts,
    })
}

fn request() -> impl Strategy<Value = ExportMetricsServiceRequest> {
    let metric = ("[a-c]{1,2}", "(s|By|1|ms|\\{x\\}|)", data()).prop_map(|(name, unit, d)| Metric {
        name,
        unit,
        data: Some(d),
        ..Default::default()
    });
    proptest::collection::vec(metric, 1..6).prop_map(|metrics| ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            scope_metrics: vec![ScopeMetrics {
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    })
}

/// Every histogram's buckets, per series, have strictly increasing `le` and non-decreasing counts.
fn buckets_are_ordered(text: &str) -> Result<(), String> {
    let mut last: Option<(String, f64, f64)> = None;
    for line in text.lines().filter(|l| l.contains("_bucket{")) {
        let (series, rest) = line.split_once("le=\"").ok_or("no le")?;
        let (le, rest) = rest.split_once('"').ok_or("unterminated le")?;
        let le: f64 = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().map_err(|_| format!("bad le {le}"))?
        };
        let value: f64 = rest
            .trim_start_matches('}')
            .split_whitespace()
            .next()
            .ok_or("no value")?
            .parse()
            .map_err(|_| "bad value")?;
        if let Some((s, l, v)) = &last
            && s == series
            && (le <= *l || value < *v)
        {
            return Err(format!("out of order at `{line}`"));
        }
        last = Some((series.to_string(), le, value));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
    #[test]
    fn hostile_requests_never_panic_and_render_valid_buckets(reqs in proptest::collection::vec(request(), 1..4)) {
        let store = Store::new(Duration::from_secs(60), 10_000, &[]);
        // A second store behind a limiter that folds every series: cumulative points become
        // increments against the stream's previous report.
        let folded = Store::new(Duration::from_secs(60), 10_000, &[]);
        let cfg = CardinalityConfig { max_series_per_metric: 1, ..Default::default() };
        let limiter = Limiter::new(&cfg, 10_000, spindle::process::cardinality::LimiterStats::default()).unwrap();
        let t = Translator::default();
        for r in reqs {
            // Twice: deltas accumulate, cumulative points replace.
            for _ in 0..2 {
                store.write(t.translate(r.clone()), Instant::now());
                write_metrics(&folded, Some(&limiter), t.translate(r.clone()), true);
            }
        }
        let telemetry = Telemetry::default();
        for s in [&store, &folded] {
            for format in [Format::OpenMetrics, Format::Text] {
                let mut out = Vec::new();
                render(s, &telemetry, format, &mut out);
                let text = String::from_utf8(out).expect("UTF-8 output");
                prop_assert!(buckets_are_ordered(&text).is_ok(), "{:?}\n{text}", buckets_are_ordered(&text));
            }
            s.expire(Instant::now() + Duration::from_secs(120));
            prop_assert_eq!(s.series_count(), 0);
        }
    }
}

/// Attribute lists built from keys that repeat and collide after sanitizing, with values from
/// empty to past `max_label_value_length`, sometimes more than `max_attributes_per_point` long.
fn hostile_attrs() -> impl Strategy<Value = Vec<KeyValue>> {
    let key = prop_oneof![
        Just("a.b"),
        Just("a-b"),
        Just("a/b"),
        Just("a_b"),
        Just("a..b"),
        Just("_a_b"),
        Just("1a"),
        Just(""),
        Just("le"),
        Just("job"),
        Just("service.name"),
        Just("otel.scope.name"),
    ];
    let value = prop_oneof![
        4 => "\\PC{0,12}",
        1 => (1usize..3).prop_map(|n| "é\"\\\n".repeat(n * 1500)),
    ];
    let attr = (key, value).prop_map(|(k, v)| spindle::testing::kv(k, v));
    prop_oneof![
        3 => proptest::collection::vec(attr.clone(), 0..20),
        1 => (attr.clone(), 100usize..300).prop_map(|(a, n)| vec![a; n]),
        1 => proptest::collection::vec(attr, 100..200),
    ]
}

fn colliding_request() -> impl Strategy<Value = ExportMetricsServiceRequest> {
    (
        hostile_attrs(),
        hostile_attrs(),
        proptest::collection::vec(hostile_attrs(), 1..4),
        data(),
    )
        .prop_map(|(resource, scope, points, d)| {
            let mut metrics = Vec::new();
            for attrs in points {
                let mut d = d.clone();
                match &mut d {
                    metric::Data::Sum(s) => s.data_points.iter_mut().for_each(|p| p.attributes = attrs.clone()),
                    metric::Data::Gauge(g) => g.data_points.iter_mut().for_each(|p| p.attributes = attrs.clone()),
                    metric::Data::Histogram(h) => h.data_points.iter_mut().for_each(|p| p.attributes = attrs.clone()),
                    metric::Data::ExponentialHistogram(h) => {
                        h.data_points.iter_mut().for_each(|p| p.attributes = attrs.clone())
                    }
                    metric::Data::Summary(s) => s.data_points.iter_mut().for_each(|p| p.attributes = attrs.clone()),
                }
                metrics.push(Metric {
                    name: "m".into(),
                    data: Some(d),
                    ..Default::default()
                });
            }
            ExportMetricsServiceRequest {
                resource_metrics: vec![ResourceMetrics {
                    resource: Some(Resource {
                        attributes: resource,
                        ..Default::default()
                    }),
                    scope_metrics: vec![ScopeMetrics {
                        scope: Some(InstrumentationScope {
                            name: "lib".into(),
                            attributes: scope,
                            ..Default::default()
                        }),
                        metrics,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            }
        })
}

/// Parses one sample line of the text format: `name{label="escaped",...} value[ timestamp]`.
/// Returns the label names, or why the line does not parse.
fn parse_sample(line: &str) -> Result<Vec<String>, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let (name, mut rest) = line.split_at(name_end);
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut names = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        while !rest.starts_with('}') {
            let eq = rest.find("=\"").ok_or("no =\"")?;
            let label = &rest[..eq];
            if label.is_empty() || !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("bad label name {label:?}"));
            }
            names.push(label.to_string());
            let mut chars = rest[eq + 2..].char_indices();
            let end = loop {
                match chars.next().ok_or("unterminated value")? {
                    (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                        '\\' | '"' | 'n' => {}
                        c => return Err(format!("bad escape \\{c}")),
                    },
                    (_, '\n') => return Err("raw newline".into()),
                    (i, '"') => break eq + 2 + i + 1,
                    _ => {}
                }
            };
            rest = &rest[end..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
        rest = &rest[1..];
    }
    let value = rest.strip_prefix(' ').ok_or("no space before the value")?;
    let v = value.split(' ').next().unwrap_or("");
    if v.parse::<f64>().is_err() && !["+Inf", "-Inf", "NaN"].contains(&v) {
        return Err(format!("bad value {v:?}"));
    }
    Ok(names)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 120, ..ProptestConfig::default() })]
    #[test]
    fn repeated_and_colliding_keys_render_parseable_and_bounded(reqs in proptest::collection::vec(colliding_request(), 1..3)) {
        let store = Store::new(Duration::from_secs(60), 10_000, &[]);
        let t = Translator::default();
        for r in reqs {
            let input = prost::Message::encoded_len(&r);
            let s = t.translate(r);
            // Linear: the text arena is a small multiple of the request (the old quadratic merge
            // reached gigabytes on a 400 KB request).
            prop_assert!(s.text.len() <= 4 * input + 4096, "arena {} for {input} input bytes", s.text.len());
            store.write(s, Instant::now());
        }
        let telemetry = Telemetry::default();
        for format in [Format::OpenMetrics, Format::Text] {
            let mut out = Vec::new();
            render(&store, &telemetry, format, &mut out);
            let text = String::from_utf8(out).expect("UTF-8 output");
            for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
                let sample = line.split(" # ").next().unwrap_or(line);
                let names = parse_sample(sample).map_err(|e| TestCaseError::fail(format!("{e}: {line:.200}")))?;
                let mut sorted = names.clone();
                sorted.sort();
                sorted.dedup();
                prop_assert_eq!(sorted.len(), names.len(), "duplicate label names in {:.200}", line);
                // A series' label set is at most 16 KiB raw; escaping at most doubles it.
                prop_assert!(line.len() < 40 << 10, "line of {} bytes", line.len());
            }
        }
    }
}
