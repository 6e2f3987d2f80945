//! Whatever a peer sends, the metrics path (translate → store → render, and with the cardinality
//! limiter folding everything into overflow series) neither panics nor emits a histogram whose `le`
//! bounds go backwards. Random requests with extreme values: integers at their
//! limits, NaN and infinities, any scale and offset, huge counts, mismatched bucket lists.

use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::exponential_histogram_data_point::Buckets;
use opentelemetry_proto::tonic::metrics::v1::{
    ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
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
        let limiter = Limiter::new(&cfg, 10_000, Default::default()).unwrap();
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
