//! The in-place translation against the decoded one (and both against the decoded one without the
//! label-layout cache): the same samples, outcome and limit counts for every request prost decodes (random requests of every metric type, re-encoded with fields
//! shuffled, repeated, split and unpacked), and nothing prost refuses.

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value::Value,
};
use opentelemetry_proto::tonic::metrics::v1::{self as pm, metric::Data};
use opentelemetry_proto::tonic::resource::v1::Resource;
use proptest::prelude::*;
use prost::Message;

use crate::config::types::ByteSize;
use crate::process::translate::Translator;
use crate::receive::config::LimitsConfig;
use crate::util::protobuf::{Wire, field};

/// A small deterministic generator (splitmix64), and the keys the points of the current metric
/// mostly share (as real points do; translation caches their label layout).
struct Rng(u64, Vec<&'static str>);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed, Vec::new())
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
    fn f64(&mut self) -> f64 {
        *self.pick(&[
            0.0,
            -0.0,
            1.5,
            -2.0,
            0.25,
            7.0,
            1e300,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            3.0,
        ])
    }
}

fn any_value(r: &mut Rng, depth: u32) -> AnyValue {
    let value = match r.below(if depth > 2 { 6 } else { 10 }) {
        0 => None,
        1 | 2 => Some(Value::StringValue(
            r.pick(&["v", "", "é\"x", "a;b", "long-value-0123456789"]).to_string(),
        )),
        3 => Some(Value::BoolValue(r.chance(50))),
        4 => Some(Value::IntValue(*r.pick(&[0, -7, i64::MAX, 42]))),
        5 => Some(Value::DoubleValue(r.f64())),
        6 => Some(Value::BytesValue(vec![0xab; r.below(3) as usize])),
        7 => Some(Value::StringValueStrindex(3)),
        8 => Some(Value::ArrayValue(ArrayValue {
            values: (0..r.below(3)).map(|_| any_value(r, depth + 1)).collect(),
        })),
        _ => Some(Value::KvlistValue(KeyValueList {
            values: (0..r.below(3)).map(|_| attr(r, depth + 1)).collect(),
        })),
    };
    AnyValue { value }
}

const KEYS: &[&str] = &[
    "a",
    "b",
    "a.b",
    "a_b",
    "a-b",
    "le",
    "quantile",
    "9lives",
    "",
    "region",
    "service.name",
    "service.namespace",
    "service.instance.id",
    "host.name",
    "host_name",
    "a-very-long-attribute-key",
];

fn attr(r: &mut Rng, depth: u32) -> KeyValue {
    KeyValue {
        key: r.pick(KEYS).to_string(),
        value: (!r.chance(10)).then(|| any_value(r, depth + 1)),
        key_strindex: if r.chance(10) { 2 } else { 0 },
    }
}

fn attrs(r: &mut Rng, max: u64) -> Vec<KeyValue> {
    (0..r.below(max + 1)).map(|_| attr(r, 0)).collect()
}

/// A point's attributes: mostly the metric's shared keys (values vary), sometimes others.
fn point_attrs(r: &mut Rng) -> Vec<KeyValue> {
    if !r.chance(75) {
        return attrs(r, 4);
    }
    let keys = r.1.clone();
    keys.into_iter()
        .map(|k| KeyValue {
            key: k.into(),
            value: (!r.chance(5)).then(|| any_value(r, 1)),
            ..Default::default()
        })
        .collect()
}

fn exemplars(r: &mut Rng) -> Vec<pm::Exemplar> {
    (0..r.below(3))
        .map(|_| pm::Exemplar {
            filtered_attributes: attrs(r, 1),
            time_unix_nano: r.next(),
            span_id: vec![r.below(2) as u8 + 1; *r.pick(&[8, 8, 7, 0])],
            trace_id: vec![r.below(2) as u8; *r.pick(&[16, 16, 15, 0])],
            value: match r.below(3) {
                0 => None,
                1 => Some(pm::exemplar::Value::AsDouble(r.f64())),
                _ => Some(pm::exemplar::Value::AsInt(*r.pick(&[1, -1, 9]))),
            },
        })
        .collect()
}

fn flags(r: &mut Rng) -> u32 {
    if r.chance(10) { 1 } else { 0 }
}

fn number(r: &mut Rng) -> pm::NumberDataPoint {
    pm::NumberDataPoint {
        attributes: point_attrs(r),
        start_time_unix_nano: 1,
        time_unix_nano: 2,
        exemplars: exemplars(r),
        flags: flags(r),
        value: match r.below(5) {
            0 => None,
            1 | 2 => Some(pm::number_data_point::Value::AsDouble(r.f64())),
            _ => Some(pm::number_data_point::Value::AsInt(*r.pick(&[0, 5, -3, i64::MIN]))),
        },
    }
}

fn histogram(r: &mut Rng) -> pm::HistogramDataPoint {
    let bounds: Vec<f64> = match r.below(5) {
        0 => vec![],
        1 => vec![2.0, 1.0],
        2 => vec![1.0, f64::INFINITY],
        _ => vec![0.5, 1.0, 5.0],
    };
    let n = match r.below(4) {
        0 => 0,
        1 => bounds.len(),
        _ => bounds.len() + 1,
    };
    pm::HistogramDataPoint {
        attributes: point_attrs(r),
        count: r.below(100),
        sum: r.chance(70).then(|| r.f64()),
        bucket_counts: (0..n).map(|_| r.below(9)).collect(),
        explicit_bounds: bounds,
        exemplars: exemplars(r),
        flags: flags(r),
        min: r.chance(30).then_some(0.1),
        max: r.chance(30).then_some(9.0),
        ..Default::default()
    }
}

fn buckets(r: &mut Rng) -> Option<pm::exponential_histogram_data_point::Buckets> {
    r.chance(70).then(|| pm::exponential_histogram_data_point::Buckets {
        offset: *r.pick(&[0, -3, 5, i32::MAX, i32::MIN]),
        bucket_counts: (0..r.below(4)).map(|_| r.below(300)).collect(),
    })
}

fn exponential(r: &mut Rng) -> pm::ExponentialHistogramDataPoint {
    pm::ExponentialHistogramDataPoint {
        attributes: point_attrs(r),
        count: r.below(100),
        sum: r.chance(70).then(|| r.f64()),
        scale: *r.pick(&[0, 3, -2, 20, 21, -11, -10]),
        zero_count: r.below(5),
        positive: buckets(r),
        negative: buckets(r),
        flags: flags(r),
        exemplars: exemplars(r),
        zero_threshold: *r.pick(&[0.0, 1e-9, -1.0, f64::NAN]),
        ..Default::default()
    }
}

fn summary(r: &mut Rng) -> pm::SummaryDataPoint {
    pm::SummaryDataPoint {
        attributes: point_attrs(r),
        count: r.below(10),
        sum: *r.pick(&[0.0, 3.5, -1.0]),
        quantile_values: (0..r.below(3))
            .map(|_| pm::summary_data_point::ValueAtQuantile {
                quantile: *r.pick(&[0.5, 0.99, 1.5]),
                value: *r.pick(&[1.0, 2.0, -1.0]),
            })
            .collect(),
        flags: flags(r),
        ..Default::default()
    }
}

fn data(r: &mut Rng) -> Option<Data> {
    r.1 = (0..r.below(5)).map(|_| *r.pick(KEYS)).collect();
    let n = r.below(6);
    let t = *r.pick(&[0, 1, 2, 7]);
    Some(match r.below(7) {
        0 => return None,
        1 => Data::Gauge(pm::Gauge {
            data_points: (0..n).map(|_| number(r)).collect(),
        }),
        2 | 3 => Data::Sum(pm::Sum {
            data_points: (0..n).map(|_| number(r)).collect(),
            aggregation_temporality: t,
            is_monotonic: r.chance(60),
        }),
        4 => Data::Histogram(pm::Histogram {
            data_points: (0..n).map(|_| histogram(r)).collect(),
            aggregation_temporality: t,
        }),
        5 => Data::ExponentialHistogram(pm::ExponentialHistogram {
            data_points: (0..n).map(|_| exponential(r)).collect(),
            aggregation_temporality: t,
        }),
        _ => Data::Summary(pm::Summary {
            data_points: (0..n).map(|_| summary(r)).collect(),
        }),
    })
}

fn metric(r: &mut Rng) -> pm::Metric {
    pm::Metric {
        name: r
            .pick(&[
                "http.requests",
                "",
                "9x",
                "latency_total",
                "a-really-long-metric-name-past-limits",
            ])
            .to_string(),
        description: r
            .pick(&["", "Help.", "A description longer than a short limit."])
            .to_string(),
        unit: r.pick(&["", "s", "By", "1", "{req}", "ms/s", "{a}m"]).to_string(),
        metadata: attrs(r, 1),
        data: data(r),
    }
}

fn request(r: &mut Rng) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: (0..r.below(3) + 1)
            .map(|_| pm::ResourceMetrics {
                resource: r.chance(80).then(|| Resource {
                    attributes: attrs(r, 5),
                    ..Default::default()
                }),
                scope_metrics: (0..r.below(3))
                    .map(|_| pm::ScopeMetrics {
                        scope: r.chance(70).then(|| InstrumentationScope {
                            name: r.pick(&["", "lib", "a-scope-name-that-is-long"]).to_string(),
                            version: r.pick(&["", "1.0"]).to_string(),
                            attributes: attrs(r, 4),
                            dropped_attributes_count: 0,
                        }),
                        metrics: (0..r.below(4)).map(|_| metric(r)).collect(),
                        schema_url: r.pick(&["", "https://s"]).to_string(),
                    })
                    .collect(),
                schema_url: r.pick(&["", "u"]).to_string(),
            })
            .collect(),
    }
}

/// Message types, for the shuffler.
#[derive(Clone, Copy, PartialEq)]
enum M {
    Request,
    ResourceMetrics,
    Resource,
    ScopeMetrics,
    Scope,
    Metric,
    Data,
    Number,
    Histogram,
    Exponential,
    Buckets,
    Summary,
    Exemplar,
    KeyValue,
    Other,
}

/// The message type of field `n` of a message of type `m` (`None`: not a message).
fn child(m: M, n: u32) -> Option<M> {
    Some(match (m, n) {
        (M::Request, 1) => M::ResourceMetrics,
        (M::ResourceMetrics, 1) => M::Resource,
        (M::ResourceMetrics, 2) => M::ScopeMetrics,
        (M::Resource, 1) | (M::Scope, 3) | (M::Metric, 12) => M::KeyValue,
        (M::ScopeMetrics, 1) => M::Scope,
        (M::ScopeMetrics, 2) => M::Metric,
        (M::Metric, 5 | 7 | 9 | 10 | 11) => M::Data,
        (M::Number, 7) | (M::Histogram, 9) | (M::Exponential, 1) | (M::Summary, 7) => M::KeyValue,
        (M::Number, 5) | (M::Histogram, 8) | (M::Exponential, 11) => M::Exemplar,
        (M::Exponential, 8 | 9) => M::Buckets,
        (M::Exemplar, 7) => M::KeyValue,
        _ => return None,
    })
}

/// Re-encodes `msg` (of type `m`; a data message's points are of type `points`) with its fields
/// shuffled, some repeated (messages merge, scalars and repeated fields as prost reads them),
/// some split in two (a message field as two halves that merge back) and packed fields unpacked.
fn shuffle(r: &mut Rng, mut msg: &[u8], m: M, points: M, out: &mut Vec<u8>) {
    let mut fields: Vec<Vec<u8>> = Vec::new();
    while !msg.is_empty() {
        let (n, w) = field(&mut msg).expect("prost's own encoding");
        let sub = if m == M::Data && n == 1 {
            Some(points)
        } else {
            child(m, n)
        };
        let points = if m == M::Metric {
            match n {
                5 | 7 => M::Number,
                9 => M::Histogram,
                10 => M::Exponential,
                _ => M::Summary,
            }
        } else {
            points
        };
        let packed64 = matches!((m, n), (M::Histogram, 6 | 7));
        let packed_varint = matches!((m, n), (M::Buckets, 2));
        let mut f = Vec::new();
        match w {
            Wire::Len(b) if packed64 && r.chance(50) => {
                for v in b.chunks_exact(8) {
                    prost::encoding::encode_key(n, prost::encoding::WireType::SixtyFourBit, &mut f);
                    f.extend_from_slice(v);
                }
            }
            Wire::Len(mut b) if packed_varint && r.chance(50) => {
                while !b.is_empty() {
                    let v = crate::util::protobuf::varint(&mut b).expect("valid");
                    prost::encoding::encode_key(n, prost::encoding::WireType::Varint, &mut f);
                    prost::encoding::encode_varint(v, &mut f);
                }
            }
            Wire::Len(b) => {
                let body = match sub {
                    Some(s) => {
                        let mut inner = Vec::new();
                        shuffle(r, b, s, points, &mut inner);
                        inner
                    }
                    None => b.to_vec(),
                };
                prost::encoding::encode_key(n, prost::encoding::WireType::LengthDelimited, &mut f);
                prost::encoding::encode_varint(body.len() as u64, &mut f);
                f.extend_from_slice(&body);
            }
            Wire::Varint(v) => {
                prost::encoding::encode_key(n, prost::encoding::WireType::Varint, &mut f);
                prost::encoding::encode_varint(v, &mut f);
            }
            Wire::Fixed64(v) => {
                prost::encoding::encode_key(n, prost::encoding::WireType::SixtyFourBit, &mut f);
                f.extend_from_slice(&v.to_le_bytes());
            }
            Wire::Fixed32 => unreachable!("no fixed32 fields in metrics"),
        }
        if r.chance(5) {
            // The same field twice: a message merges, a string or scalar is set again.
            let again = f.clone();
            f.extend_from_slice(&again);
        }
        fields.push(f);
    }
    if m != M::Other && r.chance(10) {
        // An unknown field, which prost skips.
        prost::encoding::encode_key(999, prost::encoding::WireType::LengthDelimited, out);
        prost::encoding::encode_varint(1, out);
        out.push(0);
    }
    // Repeated fields keep their order relative to each other (their order is their meaning, and
    // both readers see the same bytes anyway); everything else moves.
    for i in (1..fields.len()).rev() {
        if r.chance(30) {
            fields.swap(i, r.below(i as u64 + 1) as usize);
        }
    }
    for f in fields {
        out.extend_from_slice(&f);
    }
}

fn limits(r: &mut Rng) -> LimitsConfig {
    if r.chance(40) {
        return LimitsConfig::default();
    }
    LimitsConfig {
        max_metric_name_length: *r.pick(&[10, 30, 200]),
        max_label_name_length: *r.pick(&[8, 20, 200]),
        max_label_value_length: *r.pick(&[4, 12, 2048]),
        max_attributes_per_point: *r.pick(&[2, 4, 128]),
        max_label_set_size: ByteSize(*r.pick(&[60, 200, 1 << 20])),
        ..LimitsConfig::default()
    }
}

fn translator(r: &mut Rng) -> Translator {
    Translator::new(vec!["region".into(), "a.b".into(), "absent".into()]).with_limits(limits(r))
}

/// Both paths agree on `body`. The reader may refuse only what admission's size walk refuses
/// too (groups in unknown fields), and only when `walk_may_refuse`.
fn same(t: &Translator, body: &[u8], walk_may_refuse: bool) -> Result<(), TestCaseError> {
    let decoded = ExportMetricsServiceRequest::decode(body);
    let read = t.translate_encoded(body);
    match (decoded, read) {
        (Ok(req), Ok(read)) => {
            // Against the decoded path without the label-layout cache, and with it.
            let fresh = t.translate_fresh(req.clone());
            prop_assert_eq!(format!("{read:?}"), format!("{fresh:?}"));
            let want = t.translate(req);
            prop_assert_eq!(format!("{read:?}"), format!("{want:?}"));
        }
        (Err(_), Ok(_)) => prop_assert!(false, "the reader accepted bytes prost refuses"),
        (Ok(_), Err(e)) => {
            let walk = crate::receive::size::protobuf(crate::receive::size::Kind::ExportMetrics, body);
            prop_assert!(
                walk_may_refuse && walk.is_err(),
                "the reader refused a request prost decodes: {e}"
            );
        }
        (Err(_), Err(_)) => {}
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Random requests, as prost encodes them and with their fields reordered, repeated and
    /// unpacked: the same samples, outcome and limit counts.
    #[test]
    fn reading_in_place_translates_as_decoding_does(seed in any::<u64>()) {
        let mut r = Rng::new(seed);
        let t = translator(&mut r);
        let req = request(&mut r);
        let body = req.encode_to_vec();
        prop_assert!(ExportMetricsServiceRequest::decode(&body[..]).is_ok());
        same(&t, &body, false)?;
        let mut shuffled = Vec::new();
        shuffle(&mut r, &body, M::Request, M::Other, &mut shuffled);
        prop_assert!(ExportMetricsServiceRequest::decode(&shuffled[..]).is_ok(), "the shuffler keeps requests valid");
        same(&t, &shuffled, false)?;
        // Two requests back to back are one request (prost merges), and so are two metrics.
        let mut twice = body.clone();
        twice.extend_from_slice(&shuffled);
        same(&t, &twice, false)?;
    }

    /// Corrupted bytes: never accepted when prost refuses them, and translated alike otherwise.
    #[test]
    fn corrupted_requests_are_refused_or_read_alike(
        seed in any::<u64>(),
        flips in proptest::collection::vec((0usize..4000, any::<u8>()), 1..4),
        cut in 0usize..4000,
    ) {
        let mut r = Rng::new(seed);
        let t = translator(&mut r);
        let mut body = request(&mut r).encode_to_vec();
        if body.is_empty() {
            return Ok(());
        }
        for (at, b) in flips {
            let at = at % body.len();
            body[at] = b;
        }
        body.truncate(cut.max(body.len() / 2));
        same(&t, &body, true)?;
    }
}

/// A metric's `data` given as one variant and then another: prost keeps the last (after decoding
/// the first), or merges two of the same variant.
#[test]
fn data_variants_replace_and_merge_as_in_prost() {
    let t = Translator::default();
    let gauge = crate::testing::gauge_metric("g", 1.0, crate::testing::kvs(&[("a", "1")]));
    let counter = crate::testing::counter_metric("c", 2, crate::testing::kvs(&[("b", "2")]));
    for (first, second) in [
        (&gauge, &counter),
        (&counter, &gauge),
        (&gauge, &gauge),
        (&counter, &counter),
    ] {
        let mut m = first.encode_to_vec();
        m.extend_from_slice(&second.encode_to_vec());
        m.extend_from_slice(&first.encode_to_vec());
        let req = crate::testing::metrics_request(vec![], vec![pm::Metric::decode(&m[..]).expect("merges")]);
        // The same metric as raw concatenated bytes inside the request.
        let mut body = Vec::new();
        let mut sm = Vec::new();
        prost::encoding::encode_key(2, prost::encoding::WireType::LengthDelimited, &mut sm);
        prost::encoding::encode_varint(m.len() as u64, &mut sm);
        sm.extend_from_slice(&m);
        let mut rm = Vec::new();
        prost::encoding::encode_key(2, prost::encoding::WireType::LengthDelimited, &mut rm);
        prost::encoding::encode_varint(sm.len() as u64, &mut rm);
        rm.extend_from_slice(&sm);
        prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, &mut body);
        prost::encoding::encode_varint(rm.len() as u64, &mut body);
        body.extend_from_slice(&rm);
        let decoded = ExportMetricsServiceRequest::decode(&body[..]).expect("valid");
        assert_eq!(
            decoded.resource_metrics[0].scope_metrics[0].metrics,
            req.resource_metrics[0].scope_metrics[0].metrics
        );
        let read = t.translate_encoded(&body).expect("valid");
        assert_eq!(format!("{read:?}"), format!("{:?}", t.translate(decoded)));
        assert!(read.outcome.accepted >= 1);
    }
}

/// Attribute values nested up to prost's recursion limit and one past it.
#[test]
fn nesting_is_refused_where_prost_refuses_it() {
    let t = Translator::default();
    for depth in 80..100 {
        let mut v = AnyValue {
            value: Some(Value::StringValue("x".into())),
        };
        for _ in 0..depth {
            v = AnyValue {
                value: Some(Value::ArrayValue(ArrayValue { values: vec![v] })),
            };
        }
        let point = pm::NumberDataPoint {
            attributes: vec![KeyValue {
                key: "deep".into(),
                value: Some(v),
                ..Default::default()
            }],
            value: Some(pm::number_data_point::Value::AsInt(1)),
            ..Default::default()
        };
        let req = crate::testing::metrics_request(
            vec![],
            vec![crate::testing::metric("m", "", crate::testing::gauge(vec![point]))],
        );
        let body = req.encode_to_vec();
        let prost_ok = ExportMetricsServiceRequest::decode(&body[..]).is_ok();
        let wire_ok = t.translate_encoded(&body).is_ok();
        assert_eq!(wire_ok, prost_ok, "nesting {depth}");
    }
}

/// Generated requests read alike, and the generator reaches what it should.
#[test]
fn generated_requests_read_alike() {
    let mut r = Rng::new(7);
    let (mut accepted, mut rejected, mut limited) = (0, 0, 0);
    for _ in 0..200 {
        let t = translator(&mut r);
        let body = request(&mut r).encode_to_vec();
        let read = t.translate_encoded(&body).expect("valid");
        let want = t.translate_fresh(ExportMetricsServiceRequest::decode(&body[..]).expect("valid"));
        assert_eq!(format!("{read:?}"), format!("{want:?}"));
        accepted += read.outcome.accepted;
        rejected += read.outcome.rejected;
        limited += read.limited.0.iter().sum::<u64>();
    }
    // The generator reaches accepted points, rejections and every kind of limit.
    assert!(
        accepted > 200 && rejected > 200 && limited > 100,
        "{accepted} {rejected} {limited}"
    );
}
