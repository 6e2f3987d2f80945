//! The protobuf exposition: decoded with `io.prometheus.client` messages (prost derives of
//! prometheus/client_model `metrics.proto`, test only), it says what the text formats say, an
//! exponential histogram becomes the same native histogram whatever its buckets (property test),
//! and the golden file pins the whole output.

use proptest::prelude::*;
use prost::Message;

use super::*;
use crate::expose::protobuf::{MAX_SCHEMA, Protobuf};
use crate::model::MetricKind;
use crate::model::exp::{Buckets, ExpHistogram};

/// `io.prometheus.client` messages, as far as Spindle writes them.
mod client_model {
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct LabelPair {
        #[prost(string, tag = "1")]
        pub(super) name: String,
        #[prost(string, tag = "2")]
        pub(super) value: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Gauge {
        #[prost(double, tag = "1")]
        pub(super) value: f64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Counter {
        #[prost(double, tag = "1")]
        pub(super) value: f64,
        #[prost(message, optional, tag = "2")]
        pub(super) exemplar: Option<Exemplar>,
        #[prost(message, optional, tag = "3")]
        pub(super) created_timestamp: Option<Timestamp>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Quantile {
        #[prost(double, tag = "1")]
        pub(super) quantile: f64,
        #[prost(double, tag = "2")]
        pub(super) value: f64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Summary {
        #[prost(uint64, tag = "1")]
        pub(super) sample_count: u64,
        #[prost(double, tag = "2")]
        pub(super) sample_sum: f64,
        #[prost(message, repeated, tag = "3")]
        pub(super) quantile: Vec<Quantile>,
        #[prost(message, optional, tag = "4")]
        pub(super) created_timestamp: Option<Timestamp>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Bucket {
        #[prost(uint64, tag = "1")]
        pub(super) cumulative_count: u64,
        #[prost(double, tag = "2")]
        pub(super) upper_bound: f64,
        #[prost(message, optional, tag = "3")]
        pub(super) exemplar: Option<Exemplar>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct BucketSpan {
        #[prost(sint32, tag = "1")]
        pub(super) offset: i32,
        #[prost(uint32, tag = "2")]
        pub(super) length: u32,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Histogram {
        #[prost(uint64, tag = "1")]
        pub(super) sample_count: u64,
        #[prost(double, tag = "2")]
        pub(super) sample_sum: f64,
        #[prost(message, repeated, tag = "3")]
        pub(super) bucket: Vec<Bucket>,
        #[prost(sint32, tag = "5")]
        pub(super) schema: i32,
        #[prost(double, tag = "6")]
        pub(super) zero_threshold: f64,
        #[prost(uint64, tag = "7")]
        pub(super) zero_count: u64,
        #[prost(message, repeated, tag = "9")]
        pub(super) negative_span: Vec<BucketSpan>,
        #[prost(sint64, repeated, tag = "10")]
        pub(super) negative_delta: Vec<i64>,
        #[prost(message, repeated, tag = "12")]
        pub(super) positive_span: Vec<BucketSpan>,
        #[prost(sint64, repeated, tag = "13")]
        pub(super) positive_delta: Vec<i64>,
        #[prost(message, optional, tag = "15")]
        pub(super) created_timestamp: Option<Timestamp>,
        #[prost(message, repeated, tag = "16")]
        pub(super) exemplars: Vec<Exemplar>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Timestamp {
        #[prost(int64, tag = "1")]
        pub(super) seconds: i64,
        #[prost(int32, tag = "2")]
        pub(super) nanos: i32,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Exemplar {
        #[prost(message, repeated, tag = "1")]
        pub(super) label: Vec<LabelPair>,
        #[prost(double, tag = "2")]
        pub(super) value: f64,
        #[prost(message, optional, tag = "3")]
        pub(super) timestamp: Option<Timestamp>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Metric {
        #[prost(message, repeated, tag = "1")]
        pub(super) label: Vec<LabelPair>,
        #[prost(message, optional, tag = "2")]
        pub(super) gauge: Option<Gauge>,
        #[prost(message, optional, tag = "3")]
        pub(super) counter: Option<Counter>,
        #[prost(message, optional, tag = "4")]
        pub(super) summary: Option<Summary>,
        #[prost(message, optional, tag = "7")]
        pub(super) histogram: Option<Histogram>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct MetricFamily {
        #[prost(string, tag = "1")]
        pub(super) name: String,
        #[prost(string, tag = "2")]
        pub(super) help: String,
        #[prost(int32, tag = "3")]
        pub(super) r#type: i32,
        #[prost(message, repeated, tag = "4")]
        pub(super) metric: Vec<Metric>,
        #[prost(string, tag = "5")]
        pub(super) unit: String,
    }
}

use client_model as cm;

/// The delimited messages of a protobuf exposition.
fn decode_all(mut buf: &[u8]) -> Vec<cm::MetricFamily> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        out.push(cm::MetricFamily::decode_length_delimited(&mut buf).expect("a delimited MetricFamily"));
    }
    out
}

fn labels(m: &cm::Metric) -> Vec<(String, String)> {
    m.label.iter().map(|l| (l.name.clone(), l.value.clone())).collect()
}

/// Absolute bucket index (Prometheus indexing) → count, from spans and deltas.
fn expand(spans: &[cm::BucketSpan], deltas: &[i64]) -> BTreeMap<i32, u64> {
    let mut out = BTreeMap::new();
    let (mut index, mut count, mut d) = (0i32, 0i64, deltas.iter());
    for s in spans {
        // The first offset is an index, each later one the gap after the previous span.
        index += s.offset;
        for _ in 0..s.length {
            count += d.next().expect("a delta per bucket");
            assert!(count >= 0, "a negative bucket count");
            if count > 0 {
                out.insert(index, count as u64);
            }
            index += 1;
        }
    }
    assert!(d.next().is_none(), "more deltas than buckets");
    out
}

/// Index → count of one side of an exponential histogram, shifted to Prometheus indexing.
fn absolute(b: &Buckets) -> BTreeMap<i32, u64> {
    b.counts
        .iter()
        .enumerate()
        .filter(|(_, c)| **c > 0)
        .map(|(i, c)| (b.offset + i as i32 + 1, *c))
        .collect()
}

fn native_of(h: &ExpHistogram) -> Option<cm::Histogram> {
    let mut out = Vec::new();
    let mut pb = Protobuf::new(&mut out);
    pb.family(&walk::Family::own("h", MetricKind::Histogram, ""));
    walk::series(
        &mut pb,
        "h",
        MetricKind::Histogram,
        b"",
        0,
        &crate::store::SeriesValue::Exponential(Box::new(h.clone())),
    );
    pb.finish();
    let families = decode_all(&out);
    let hist = families[0].metric[0].histogram.clone().expect("a histogram");
    (!hist.positive_span.is_empty() || !hist.negative_span.is_empty() || hist.zero_count > 0 || hist.sample_count == 0)
        .then_some(hist)
}

fn buckets_strategy() -> impl Strategy<Value = Buckets> {
    (
        -300i32..300,
        proptest::collection::vec(prop_oneof![3 => 0u64..1, 7 => 0u64..1000], 0..40),
    )
        .prop_map(|(offset, counts)| Buckets { offset, counts })
}

proptest! {
    /// Any exponential histogram at a schema Prometheus holds comes out as the same native
    /// histogram: every bucket's count at its index (shifted by one, as the two index the other
    /// boundary), downscaled exactly when finer than schema 8; count, sum and zero bucket as they
    /// are.
    #[test]
    fn native_histograms_round_trip(
        scale in -4i32..=12,
        positive in buckets_strategy(),
        negative in buckets_strategy(),
        zero_count in 0u64..50,
        sum in 0.0f64..1e6,
    ) {
        let count = zero_count + positive.counts.iter().sum::<u64>() + negative.counts.iter().sum::<u64>();
        let h = ExpHistogram {
            scale,
            count,
            sum,
            zero_count,
            zero_threshold: 1e-9,
            positive,
            negative,
            exemplars: Vec::new(),
        };
        let got = native_of(&h).expect("native");
        let want = h.with_max_scale(MAX_SCHEMA);
        prop_assert_eq!(got.schema, scale.min(MAX_SCHEMA));
        prop_assert_eq!(got.sample_count, count);
        prop_assert_eq!(got.sample_sum, sum);
        prop_assert_eq!(got.zero_count, zero_count);
        prop_assert_eq!(got.zero_threshold, 1e-9);
        let classic: Vec<(f64, u64)> = got.bucket.iter().map(|b| (b.upper_bound, b.cumulative_count)).collect();
        let want_classic: Vec<(f64, u64)> = h.classic_buckets().iter().map(|b| (b.0, b.1)).collect();
        prop_assert_eq!(classic, want_classic, "the classic buckets go along");
        prop_assert_eq!(expand(&got.positive_span, &got.positive_delta), absolute(&want.positive));
        prop_assert_eq!(expand(&got.negative_span, &got.negative_delta), absolute(&want.negative));
    }
}

#[test]
fn a_scale_coarser_than_prometheus_holds_stays_classic() {
    let h = ExpHistogram {
        scale: -5,
        count: 3,
        sum: 10.0,
        zero_count: 0,
        zero_threshold: 0.0,
        positive: Buckets {
            offset: 0,
            counts: vec![3],
        },
        negative: Buckets::default(),
        exemplars: Vec::new(),
    };
    let mut out = Vec::new();
    let mut pb = Protobuf::new(&mut out);
    pb.family(&walk::Family::own("h", MetricKind::Histogram, ""));
    walk::series(
        &mut pb,
        "h",
        MetricKind::Histogram,
        b"",
        0,
        &crate::store::SeriesValue::Exponential(Box::new(h)),
    );
    pb.finish();
    let hist = decode_all(&out)[0].metric[0].histogram.clone().unwrap();
    assert!(hist.positive_span.is_empty());
    assert_eq!(
        hist.bucket.last().map(|b| (b.upper_bound, b.cumulative_count)),
        Some((f64::INFINITY, 3))
    );
    assert_eq!(hist.sample_count, 3);
}

/// Every family of the golden store, decoded, against what the OpenMetrics exposition says:
/// names (with `_total` and `_info`), types, help, units, label sets, values, exemplars, classic
/// buckets (the `+Inf` one included), counts and sums; the exponential histogram as a native one
/// with the same count and sum.
#[test]
fn protobuf_says_what_openmetrics_says() {
    let store = golden_store();
    let mut out = Vec::new();
    render(&store, &Telemetry::default(), Format::Protobuf, &mut out);
    let families = decode_all(&out);
    let om = render_str(&store, Format::OpenMetrics);
    let parsed = parse(&om, Dialect::OpenMetrics).expect("valid OpenMetrics");
    let samples: Vec<&Sample> = parsed.iter().flat_map(|f| &f.samples).collect();
    let find = |name: &str, labels: &[(String, String)]| -> Option<&Sample> {
        let mut labels = labels.to_vec();
        labels.sort();
        samples.iter().copied().find(|s| {
            let mut l: Vec<(String, String)> = s.labels.to_vec();
            l.sort();
            s.name == name && l == labels
        })
    };
    let value_of = |name: &str, labels: &[(String, String)]| find(name, labels).map(|s| s.value);
    let mut natives = 0;
    for f in &families {
        if f.name.starts_with("spindle_scrape_duration") {
            continue;
        }
        for m in &f.metric {
            let l = labels(m);
            match f.r#type {
                0 => {
                    let c = m.counter.as_ref().expect("counter");
                    assert_eq!(value_of(&f.name, &l), Some(c.value), "{} {l:?}", f.name);
                }
                1 => {
                    let g = m.gauge.as_ref().expect("gauge");
                    assert_eq!(value_of(&f.name, &l), Some(g.value), "{} {l:?}", f.name);
                }
                2 => {
                    let s = m.summary.as_ref().expect("summary");
                    assert_eq!(value_of(&format!("{}_count", f.name), &l), Some(s.sample_count as f64));
                    assert_eq!(value_of(&format!("{}_sum", f.name), &l), Some(s.sample_sum));
                    for q in &s.quantile {
                        let mut lq = l.clone();
                        lq.push(("quantile".into(), crate::expose::float::format_f64(q.quantile)));
                        assert_eq!(value_of(&f.name, &lq), Some(q.value));
                    }
                }
                4 => {
                    let h = m.histogram.as_ref().expect("histogram");
                    if !h.positive_span.is_empty() || !h.negative_span.is_empty() {
                        natives += 1;
                        assert!(!h.exemplars.is_empty(), "the native histogram keeps its exemplars");
                    }
                    for b in &h.bucket {
                        let mut lb = l.clone();
                        lb.push(("le".into(), crate::expose::float::format_f64(b.upper_bound)));
                        assert_eq!(
                            value_of(&format!("{}_bucket", f.name), &lb),
                            Some(b.cumulative_count as f64),
                            "{} {lb:?}",
                            f.name
                        );
                        let om_ex = find(&format!("{}_bucket", f.name), &lb).and_then(|s| s.exemplar.clone());
                        assert_eq!(om_ex.is_some(), b.exemplar.is_some(), "{} {lb:?}", f.name);
                    }
                    if let Some(count) = value_of(&format!("{}_count", f.name), &l) {
                        assert_eq!(count, h.sample_count as f64);
                        assert_eq!(value_of(&format!("{}_sum", f.name), &l), Some(h.sample_sum));
                    } else {
                        assert!(h.sample_sum.is_nan(), "no _sum in OpenMetrics, NaN here");
                    }
                }
                t => panic!("type {t}"),
            }
        }
    }
    assert_eq!(natives, 1, "the one exponential histogram");
}

/// A readable dump of the decoded exposition, pinned by a golden file.
#[test]
fn golden_protobuf() {
    let store = golden_store();
    let mut out = Vec::new();
    render(&store, &Telemetry::default(), Format::Protobuf, &mut out);
    let mut dump = String::new();
    for f in decode_all(&out) {
        if f.name.starts_with("spindle_scrape_duration") {
            continue;
        }
        dump.push_str(&format!(
            "{} type={} unit={:?} help={:?}\n",
            f.name, f.r#type, f.unit, f.help
        ));
        for m in &f.metric {
            let rest = cm::Metric {
                label: Vec::new(),
                ..m.clone()
            };
            dump.push_str(&format!("  {:?} {:?}\n", labels(m), rest));
        }
    }
    check_golden("exposition.protobuf.txt", &dump);
}

/// Start times reach `created_timestamp` of counters, histograms (classic and native) and
/// summaries, and only theirs; a series accumulated from deltas carries when it was created.
#[test]
fn start_times_are_created_timestamps() {
    use crate::testing::{kvs, metrics_request_in, point, sum};
    let store = Store::new(std::time::Duration::from_secs(60), 1000, &[]);
    let start = 1_700_000_000_250_000_000u64;
    let mut c = point(3.0, kvs(&[]));
    c.start_time_unix_nano = start;
    let mut g = point(1.0, kvs(&[]));
    g.start_time_unix_nano = start;
    let d = point(2.0, kvs(&[]));
    let req = metrics_request_in(
        None,
        None,
        vec![
            crate::testing::metric("c", "", sum(true, false, vec![c])),
            crate::testing::metric("g", "", crate::testing::gauge(vec![g])),
            crate::testing::metric("d", "", sum(true, true, vec![d])),
        ],
    );
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after the epoch")
        .as_secs() as i64;
    store.write(
        crate::process::translate::Translator::default().translate(req),
        std::time::Instant::now(),
    );
    let mut out = Vec::new();
    render(&store, &Telemetry::default(), Format::Protobuf, &mut out);
    let families = decode_all(&out);
    let family = |name: &str| families.iter().find(|f| f.name == name).expect(name);
    let ct = family("c_total").metric[0]
        .counter
        .as_ref()
        .and_then(|c| c.created_timestamp.clone())
        .expect("a created timestamp");
    assert_eq!((ct.seconds, ct.nanos), (1_700_000_000, 250_000_000));
    assert!(family("g").metric[0].gauge.is_some(), "gauges have no start");
    let created = family("d_total").metric[0]
        .counter
        .as_ref()
        .and_then(|c| c.created_timestamp.clone())
        .expect("a delta series' creation time");
    assert!(created.seconds >= before, "{created:?}");
}

/// Each family's name and the label names of its metrics, from a protobuf exposition.
pub(super) fn decode(buf: &[u8]) -> Vec<(String, Vec<String>)> {
    decode_all(buf)
        .into_iter()
        .map(|f| {
            let labels = f
                .metric
                .iter()
                .flat_map(|m| m.label.iter().map(|l| l.name.clone()))
                .collect();
            (f.name, labels)
        })
        .collect()
}

/// A native histogram as a protobuf exposition carries it, for tests elsewhere.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NativeSeries {
    /// Family name.
    pub(crate) family: String,
    /// Label pairs.
    pub(crate) labels: Vec<(String, String)>,
    /// `sample_count`.
    pub(crate) count: u64,
    /// `sample_sum`.
    pub(crate) sum: f64,
    /// `schema`.
    pub(crate) schema: i32,
    /// `zero_count`.
    pub(crate) zero_count: u64,
    /// Positive buckets, Prometheus indexing → count.
    pub(crate) positive: BTreeMap<i32, u64>,
}

/// Every native histogram of a protobuf exposition.
pub(crate) fn natives(buf: &[u8]) -> Vec<NativeSeries> {
    let mut out = Vec::new();
    for f in decode_all(buf) {
        for m in &f.metric {
            let Some(h) = &m.histogram else { continue };
            if h.positive_span.is_empty() && h.negative_span.is_empty() && h.zero_count == 0 {
                continue;
            }
            out.push(NativeSeries {
                family: f.name.clone(),
                labels: labels(m),
                count: h.sample_count,
                sum: h.sample_sum,
                schema: h.schema,
                zero_count: h.zero_count,
                positive: expand(&h.positive_span, &h.positive_delta),
            });
        }
    }
    out
}

/// Span metrics with `histogram: both`: one stored series per label set whose protobuf `Histogram`
/// carries the configured classic buckets (cumulative, each with the exemplar of a span that fell
/// into it) and the native buckets of the same spans (count, sum, each span in the bucket of its
/// duration, exemplars in field 16), while OpenMetrics shows only the configured buckets.
#[test]
fn span_metrics_both_carry_configured_classic_and_native_buckets_in_one_histogram() {
    use std::time::{Duration, Instant};

    use crate::model::exp::bucket_index;
    use crate::process::span_metrics::{DURATION, HistogramKind, SpanMetrics, SpanMetricsConfig};
    use crate::testing::{self, kv, traces_request};

    let sm = SpanMetrics::new(SpanMetricsConfig {
        buckets: vec![0.01, 0.1, 1.0],
        histogram: HistogramKind::Both,
        ..SpanMetricsConfig::default()
    });
    let millis = [2u64, 5, 40, 40, 300, 2500];
    let spans = millis
        .iter()
        .enumerate()
        .map(|(i, ms)| opentelemetry_proto::tonic::trace::v1::Span {
            end_time_unix_nano: 1_000_000_000 + ms * 1_000_000,
            ..testing::span("GET /a", i as u8 + 1, vec![])
        })
        .collect();
    let out = sm.process(&traces_request(vec![kv("service.name", "checkout")], spans));
    let store = Store::new(Duration::from_secs(60), 1000, &[]);
    let w = store.write(out.counts, Instant::now());
    assert_eq!(w.rejected, 0, "{w:?}");
    store.write(out.exemplars, Instant::now());

    let mut pb = Vec::new();
    render(&store, &Telemetry::default(), Format::Protobuf, &mut pb);
    let families = decode_all(&pb);
    let f = families
        .iter()
        .find(|f| f.name == DURATION)
        .expect("the duration family");
    assert_eq!(f.metric.len(), 1, "one series, not a classic and a native one");
    let h = f.metric[0].histogram.clone().expect("a histogram");
    assert_eq!(h.sample_count, 6);
    assert!((h.sample_sum - 2.887).abs() < 1e-9, "{}", h.sample_sum);
    let classic: Vec<(f64, u64)> = h.bucket.iter().map(|b| (b.upper_bound, b.cumulative_count)).collect();
    assert_eq!(
        classic,
        [(0.01, 2), (0.1, 4), (1.0, 5), (f64::INFINITY, 6)],
        "the configured buckets"
    );
    let trace_of = |e: &cm::Exemplar| {
        e.label
            .iter()
            .find(|l| l.name == "trace_id")
            .map(|l| l.value.clone())
            .expect("a trace_id")
    };
    for b in &h.bucket {
        let e = b.exemplar.as_ref().expect("an exemplar on every classic bucket");
        let lower = classic
            .iter()
            .map(|c| c.0)
            .filter(|le| *le < b.upper_bound)
            .fold(0.0, f64::max);
        assert!(
            e.value > lower && e.value <= b.upper_bound,
            "{e:?} in bucket le={}",
            b.upper_bound
        );
        assert_eq!(trace_of(e).len(), 32);
    }
    // Native: every span in the bucket of its duration at the histogram's schema.
    assert!(
        !h.positive_span.is_empty(),
        "native buckets beside the classic ones: {h:?}"
    );
    let native = expand(&h.positive_span, &h.positive_delta);
    let mut want = BTreeMap::new();
    for ms in millis {
        // OTLP bucket i is Prometheus bucket i + 1.
        *want
            .entry(bucket_index(ms as f64 / 1000.0, h.schema) + 1)
            .or_insert(0u64) += 1;
    }
    assert_eq!(native, want, "schema {}", h.schema);
    assert!(!h.exemplars.is_empty(), "native exemplars");
    for e in &h.exemplars {
        let i = bucket_index(e.value, h.schema) + 1;
        assert!(native.contains_key(&i), "native exemplar {e:?} in an occupied bucket");
    }

    // The text formats: only the configured buckets.
    let om = render_str(&store, Format::OpenMetrics);
    let les: Vec<&str> = om
        .lines()
        .filter(|l| l.starts_with(&format!("{DURATION}_bucket{{")))
        .filter_map(|l| l.split("le=\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(les, ["0.01", "0.1", "1.0", "+Inf"], "{om}");
    assert!(
        om.contains(&format!("{DURATION}_count{{service_name=\"checkout\"")),
        "{om}"
    );
}
