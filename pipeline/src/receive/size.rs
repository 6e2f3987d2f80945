//! The memory a request will take once decoded, estimated from its bytes before decoding.
//!
//! In: an uncompressed OTLP body (protobuf or JSON). Out: the heap bytes its decoded
//! `opentelemetry-proto` structs will hold, or a [`DecodeError`] when the body is not even
//! well-formed enough to walk. Admission reserves this figure from `max_inflight_bytes`, so the
//! decoded bytes in flight are bounded whatever arrives: a request of 4 million empty spans (2 bytes
//! each on the wire, ~250 bytes each decoded) is refused before a single span is allocated.
//!
//! The walk follows the OTLP schema ([`Kind`]): every repeated message costs its struct size times
//! the capacity a `Vec` reaches when decoding pushes one element at a time, every string or byte
//! field its length, every packed number array eight bytes an element. Unknown fields cost nothing
//! (the decoders skip them). The walk allocates nothing and is a fraction of the cost of decoding.

use std::mem::size_of;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, EntityRef, InstrumentationScope, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::metrics::v1 as pm;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1 as pt;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::decode::DecodeError;

use crate::util::protobuf::{MAX_DEPTH, PlainValue, plain_key_value, take as skip, varint};

/// The OTLP message types a request can contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Kind {
    ExportTraces,
    ResourceSpans,
    ScopeSpans,
    Span,
    Event,
    Link,
    Status,
    ExportMetrics,
    ResourceMetrics,
    ScopeMetrics,
    Metric,
    Gauge,
    Sum,
    Histogram,
    ExpHistogram,
    Summary,
    NumberPoint,
    HistogramPoint,
    ExpPoint,
    Buckets,
    SummaryPoint,
    Quantile,
    Exemplar,
    Resource,
    Scope,
    EntityRef,
    KeyValue,
    AnyValue,
    ArrayValue,
    KvList,
}

/// What a field holds, as far as memory goes.
#[derive(Debug, Clone, Copy)]
enum F {
    /// A message, inline (`Option<T>` or a oneof arm): its own fields cost, not its struct.
    Msg(Kind),
    /// A repeated message: a `Vec<T>` element each.
    Rep(Kind),
    /// A string or bytes field: its length.
    Str,
    /// A repeated string: a `String` and its length each.
    RepStr,
    /// A repeated number (packed or not): eight bytes an element.
    Nums,
}

use F::{Msg, Nums, Rep, RepStr, Str};

type Fields = &'static [(u32, &'static str, F)];

const KV: F = Rep(Kind::KeyValue);

impl Kind {
    /// Bytes of one element of a `Vec` of this message.
    fn struct_size(self) -> usize {
        match self {
            Kind::ExportTraces => size_of::<ExportTraceServiceRequest>(),
            Kind::ResourceSpans => size_of::<pt::ResourceSpans>(),
            Kind::ScopeSpans => size_of::<pt::ScopeSpans>(),
            Kind::Span => size_of::<pt::Span>(),
            Kind::Event => size_of::<pt::span::Event>(),
            Kind::Link => size_of::<pt::span::Link>(),
            Kind::Status => size_of::<pt::Status>(),
            Kind::ExportMetrics => size_of::<ExportMetricsServiceRequest>(),
            Kind::ResourceMetrics => size_of::<pm::ResourceMetrics>(),
            Kind::ScopeMetrics => size_of::<pm::ScopeMetrics>(),
            Kind::Metric => size_of::<pm::Metric>(),
            Kind::Gauge => size_of::<pm::Gauge>(),
            Kind::Sum => size_of::<pm::Sum>(),
            Kind::Histogram => size_of::<pm::Histogram>(),
            Kind::ExpHistogram => size_of::<pm::ExponentialHistogram>(),
            Kind::Summary => size_of::<pm::Summary>(),
            Kind::NumberPoint => size_of::<pm::NumberDataPoint>(),
            Kind::HistogramPoint => size_of::<pm::HistogramDataPoint>(),
            Kind::ExpPoint => size_of::<pm::ExponentialHistogramDataPoint>(),
            Kind::Buckets => size_of::<pm::exponential_histogram_data_point::Buckets>(),
            Kind::SummaryPoint => size_of::<pm::SummaryDataPoint>(),
            Kind::Quantile => size_of::<pm::summary_data_point::ValueAtQuantile>(),
            Kind::Exemplar => size_of::<pm::Exemplar>(),
            Kind::Resource => size_of::<Resource>(),
            Kind::Scope => size_of::<InstrumentationScope>(),
            Kind::EntityRef => size_of::<EntityRef>(),
            Kind::KeyValue => size_of::<KeyValue>(),
            Kind::AnyValue => size_of::<AnyValue>(),
            Kind::ArrayValue => size_of::<ArrayValue>(),
            Kind::KvList => size_of::<KeyValueList>(),
        }
    }

    /// The fields that hold heap memory once decoded: protobuf number, OTLP/JSON name, what it holds.
    /// Scalars are absent: they live inside the struct.
    const fn fields(self) -> Fields {
        match self {
            Kind::ExportTraces => &[(1, "resourceSpans", Rep(Kind::ResourceSpans))],
            Kind::ResourceSpans => &[
                (1, "resource", Msg(Kind::Resource)),
                (2, "scopeSpans", Rep(Kind::ScopeSpans)),
                (3, "schemaUrl", Str),
            ],
            Kind::ScopeSpans => &[
                (1, "scope", Msg(Kind::Scope)),
                (2, "spans", Rep(Kind::Span)),
                (3, "schemaUrl", Str),
            ],
            Kind::Span => &[
                (1, "traceId", Str),
                (2, "spanId", Str),
                (3, "traceState", Str),
                (4, "parentSpanId", Str),
                (5, "name", Str),
                (9, "attributes", KV),
                (11, "events", Rep(Kind::Event)),
                (13, "links", Rep(Kind::Link)),
                (15, "status", Msg(Kind::Status)),
            ],
            Kind::Event => &[(2, "name", Str), (3, "attributes", KV)],
            Kind::Link => &[
                (1, "traceId", Str),
                (2, "spanId", Str),
                (3, "traceState", Str),
                (4, "attributes", KV),
            ],
            Kind::Status => &[(2, "message", Str)],
            Kind::ExportMetrics => &[(1, "resourceMetrics", Rep(Kind::ResourceMetrics))],
            Kind::ResourceMetrics => &[
                (1, "resource", Msg(Kind::Resource)),
                (2, "scopeMetrics", Rep(Kind::ScopeMetrics)),
                (3, "schemaUrl", Str),
            ],
            Kind::ScopeMetrics => &[
                (1, "scope", Msg(Kind::Scope)),
                (2, "metrics", Rep(Kind::Metric)),
                (3, "schemaUrl", Str),
            ],
            Kind::Metric => &[
                (1, "name", Str),
                (2, "description", Str),
                (3, "unit", Str),
                (5, "gauge", Msg(Kind::Gauge)),
                (7, "sum", Msg(Kind::Sum)),
                (9, "histogram", Msg(Kind::Histogram)),
                (10, "exponentialHistogram", Msg(Kind::ExpHistogram)),
                (11, "summary", Msg(Kind::Summary)),
                (12, "metadata", KV),
            ],
            Kind::Gauge | Kind::Sum => &[(1, "dataPoints", Rep(Kind::NumberPoint))],
            Kind::Histogram => &[(1, "dataPoints", Rep(Kind::HistogramPoint))],
            Kind::ExpHistogram => &[(1, "dataPoints", Rep(Kind::ExpPoint))],
            Kind::Summary => &[(1, "dataPoints", Rep(Kind::SummaryPoint))],
            Kind::NumberPoint => &[(7, "attributes", KV), (5, "exemplars", Rep(Kind::Exemplar))],
            Kind::HistogramPoint => &[
                (9, "attributes", KV),
                (6, "bucketCounts", Nums),
                (7, "explicitBounds", Nums),
                (8, "exemplars", Rep(Kind::Exemplar)),
            ],
            Kind::ExpPoint => &[
                (1, "attributes", KV),
                (8, "positive", Msg(Kind::Buckets)),
                (9, "negative", Msg(Kind::Buckets)),
                (11, "exemplars", Rep(Kind::Exemplar)),
            ],
            Kind::Buckets => &[(2, "bucketCounts", Nums)],
            Kind::SummaryPoint => &[(7, "attributes", KV), (6, "quantileValues", Rep(Kind::Quantile))],
            Kind::Quantile => &[],
            Kind::Exemplar => &[(7, "filteredAttributes", KV), (4, "spanId", Str), (5, "traceId", Str)],
            Kind::Resource => &[(1, "attributes", KV), (3, "entityRefs", Rep(Kind::EntityRef))],
            Kind::Scope => &[(1, "name", Str), (2, "version", Str), (3, "attributes", KV)],
            Kind::EntityRef => &[
                (1, "schemaUrl", Str),
                (2, "type", Str),
                (3, "idKeys", RepStr),
                (4, "descriptionKeys", RepStr),
            ],
            Kind::KeyValue => &[(1, "key", Str), (2, "value", Msg(Kind::AnyValue))],
            Kind::AnyValue => &[
                (1, "stringValue", Str),
                (5, "arrayValue", Msg(Kind::ArrayValue)),
                (6, "kvlistValue", Msg(Kind::KvList)),
                (7, "bytesValue", Str),
            ],
            Kind::ArrayValue => &[(1, "values", Rep(Kind::AnyValue))],
            Kind::KvList => &[(1, "values", KV)],
        }
    }

    fn field(self, number: u32) -> Option<(usize, F)> {
        let i = *LOOKUP[self as usize].get(number as usize)?;
        (i != NONE).then(|| (i as usize, self.fields()[i as usize].2))
    }

    fn json_field(self, name: &str) -> Option<(usize, F)> {
        self.fields()
            .iter()
            .enumerate()
            .find(|(_, (_, n, _))| *n == name)
            .map(|(i, (_, _, f))| (i, *f))
    }
}

const KINDS: usize = Kind::KvList as usize + 1;
/// Highest protobuf field number with heap memory (`Metric.metadata`), plus one.
const MAX_FIELD: usize = 17;
const NONE: u8 = u8::MAX;

/// `LOOKUP[kind][field number]` → index into `kind.fields()`, or [`NONE`]: the walk's hot lookup.
static LOOKUP: [[u8; MAX_FIELD]; KINDS] = {
    let mut t = [[NONE; MAX_FIELD]; KINDS];
    let mut k = 0;
    while k < KINDS {
        let fields = ALL_KINDS[k].fields();
        let mut i = 0;
        while i < fields.len() {
            t[k][fields[i].0 as usize] = i as u8;
            i += 1;
        }
        k += 1;
    }
    t
};

const ALL_KINDS: [Kind; KINDS] = [
    Kind::ExportTraces,
    Kind::ResourceSpans,
    Kind::ScopeSpans,
    Kind::Span,
    Kind::Event,
    Kind::Link,
    Kind::Status,
    Kind::ExportMetrics,
    Kind::ResourceMetrics,
    Kind::ScopeMetrics,
    Kind::Metric,
    Kind::Gauge,
    Kind::Sum,
    Kind::Histogram,
    Kind::ExpHistogram,
    Kind::Summary,
    Kind::NumberPoint,
    Kind::HistogramPoint,
    Kind::ExpPoint,
    Kind::Buckets,
    Kind::SummaryPoint,
    Kind::Quantile,
    Kind::Exemplar,
    Kind::Resource,
    Kind::Scope,
    Kind::EntityRef,
    Kind::KeyValue,
    Kind::AnyValue,
    Kind::ArrayValue,
    Kind::KvList,
];

/// The capacity a `Vec` reaches when `n` elements are pushed one at a time.
fn vec_cap(n: u64) -> u64 {
    match n {
        0 => 0,
        1..=4 => 4,
        _ => n.checked_next_power_of_two().unwrap_or(u64::MAX),
    }
}

/// The heap a string or byte field of `len` bytes takes: a `Vec<u8>` grown to `len` has room for at
/// least 8.
fn str_cost(len: u64) -> u64 {
    if len == 0 { 0 } else { len.max(8) }
}

/// The heap cost of `n` elements of a repeated field.
fn repeated_cost(f: F, n: u64) -> u64 {
    let elem = match f {
        Rep(k) => k.struct_size() as u64,
        RepStr => size_of::<String>() as u64,
        Nums => 8,
        Msg(_) | Str => 0,
    };
    vec_cap(n).saturating_mul(elem)
}

/// Per-field element counts of one message being walked (no message has more than 9 heap fields).
#[derive(Default)]
struct Counts {
    n: [u64; 10],
    touched: u16,
}

impl Counts {
    #[inline]
    fn add(&mut self, i: usize, n: u64) {
        self.n[i] = self.n[i].saturating_add(n);
        self.touched |= 1 << i;
    }

    fn cost(&self, kind: Kind) -> u64 {
        if self.touched == 0 {
            return 0;
        }
        let fields = kind.fields();
        (0..fields.len())
            .filter(|i| self.touched & (1 << i) != 0)
            .fold(0u64, |acc, i| acc.saturating_add(repeated_cost(fields[i].2, self.n[i])))
    }
}

/// Heap bytes the decoded form of a protobuf `body` of message `root` will hold.
///
/// # Errors
/// [`DecodeError::Protobuf`] when the bytes are not well-formed protobuf (truncated, bad wire type,
/// nested too deep).
pub fn protobuf(root: Kind, body: &[u8]) -> Result<u64, DecodeError> {
    walk(root, body, 0)
        .map(|c| c.saturating_add(root.struct_size() as u64))
        .map_err(|e| DecodeError::Protobuf(e.to_string()))
}

fn walk(kind: Kind, mut buf: &[u8], depth: u32) -> Result<u64, &'static str> {
    if depth > MAX_DEPTH {
        return Err("recursion limit reached");
    }
    let mut counts = Counts::default();
    let mut cost = 0u64;
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let number = u32::try_from(key >> 3).map_err(|_| "invalid field number")?;
        if number == 0 {
            return Err("invalid field number 0");
        }
        let field = kind.field(number);
        match key & 7 {
            0 => {
                varint(&mut buf)?;
                if let Some((i, Nums)) = field {
                    counts.add(i, 1);
                }
            }
            1 => {
                skip(&mut buf, 8)?;
                if let Some((i, Nums)) = field {
                    counts.add(i, 1);
                }
            }
            5 => {
                skip(&mut buf, 4)?;
            }
            2 => {
                let len = varint(&mut buf)?;
                let data = skip(&mut buf, len)?;
                match field {
                    // Most messages of a request are attributes: walked without the generic bookkeeping.
                    Some((i, Rep(Kind::KeyValue))) => {
                        cost = cost.saturating_add(walk_key_value(data, depth + 1)?);
                        counts.add(i, 1);
                    }
                    Some((i, Rep(Kind::Span))) => {
                        cost = cost.saturating_add(walk_span(data, depth + 1)?);
                        counts.add(i, 1);
                    }
                    Some((_, Msg(k))) => cost = cost.saturating_add(walk(k, data, depth + 1)?),
                    Some((i, Rep(k))) => {
                        cost = cost.saturating_add(walk(k, data, depth + 1)?);
                        counts.add(i, 1);
                    }
                    Some((_, Str)) => cost = cost.saturating_add(str_cost(len)),
                    Some((i, RepStr)) => {
                        cost = cost.saturating_add(str_cost(len));
                        counts.add(i, 1);
                    }
                    Some((i, Nums)) => {
                        // Packed: fixed64/double elements are 8 bytes, varints end in a byte < 0x80.
                        let n = match (kind, number) {
                            (Kind::Buckets, _) => data.iter().filter(|b| **b < 0x80).count() as u64,
                            _ => len / 8,
                        };
                        counts.add(i, n);
                    }
                    None => {}
                }
            }
            3 | 4 => return Err("groups are not supported"),
            _ => return Err("invalid wire type"),
        }
    }
    Ok(cost.saturating_add(counts.cost(kind)))
}

/// [`walk`] of a `Span`, by hand (a traces request is mostly spans): its strings, attributes,
/// events, links and status, with what their vectors cost.
fn walk_span(mut buf: &[u8], depth: u32) -> Result<u64, &'static str> {
    if depth > MAX_DEPTH {
        return Err("recursion limit reached");
    }
    let (mut cost, mut attrs, mut events, mut links) = (0u64, 0u64, 0u64, 0u64);
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        // Length-delimited fields 1–5, 9, 11, 13 and 15; every other key is skipped as the generic
        // walk skips it.
        if !matches!(key, 0x0a | 0x12 | 0x1a | 0x22 | 0x2a | 0x4a | 0x5a | 0x6a | 0x7a) {
            skip_field(&mut buf, key)?;
            continue;
        }
        let len = varint(&mut buf)?;
        let data = skip(&mut buf, len)?;
        let add = match key {
            0x4a => {
                attrs += 1;
                walk_key_value(data, depth + 1)?
            }
            0x5a => {
                events += 1;
                walk(Kind::Event, data, depth + 1)?
            }
            0x6a => {
                links += 1;
                walk(Kind::Link, data, depth + 1)?
            }
            0x7a => walk(Kind::Status, data, depth + 1)?,
            // trace_id, span_id, trace_state, parent_span_id, name
            _ => str_cost(len),
        };
        cost = cost.saturating_add(add);
    }
    Ok([(KV, attrs), (Rep(Kind::Event), events), (Rep(Kind::Link), links)]
        .into_iter()
        .fold(cost, |c, (f, n)| c.saturating_add(repeated_cost(f, n))))
}

/// [`walk`] of a `KeyValue`, by hand: its key, and its value when that is a string or bytes (the
/// generic walk for arrays and maps).
fn walk_key_value(mut buf: &[u8], depth: u32) -> Result<u64, &'static str> {
    // The usual shape first: a key, then one `AnyValue` of one string or scalar field.
    if depth < MAX_DEPTH
        && let Some((key, value)) = plain_key_value(buf)
    {
        let value = match value {
            PlainValue::Str(s) => str_cost(s.len() as u64),
            _ => 0,
        };
        return Ok(str_cost(key.len() as u64).saturating_add(value));
    }
    let mut cost = 0u64;
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        match key {
            0x0a => {
                let len = varint(&mut buf)?;
                skip(&mut buf, len)?;
                cost = cost.saturating_add(str_cost(len));
            }
            0x12 => {
                let len = varint(&mut buf)?;
                let mut value = skip(&mut buf, len)?;
                if depth + 1 > MAX_DEPTH {
                    return Err("recursion limit reached");
                }
                while !value.is_empty() {
                    match varint(&mut value)? {
                        // string_value, bytes_value
                        0x0a | 0x3a => {
                            let len = varint(&mut value)?;
                            skip(&mut value, len)?;
                            cost = cost.saturating_add(str_cost(len));
                        }
                        // array_value, kvlist_value
                        k @ (0x2a | 0x32) => {
                            let len = varint(&mut value)?;
                            let inner = skip(&mut value, len)?;
                            let kind = if k == 0x2a { Kind::ArrayValue } else { Kind::KvList };
                            cost = cost.saturating_add(walk(kind, inner, depth + 2)?);
                        }
                        // bool, int, string_value_strindex
                        0x10 | 0x18 | 0x40 => {
                            varint(&mut value)?;
                        }
                        // double
                        0x21 => {
                            skip(&mut value, 8)?;
                        }
                        other => skip_field(&mut value, other)?,
                    }
                }
            }
            other => skip_field(&mut buf, other)?,
        }
    }
    Ok(cost)
}

/// Skips the value of a field whose key is `key` (one the memory walk does not count).
fn skip_field(buf: &mut &[u8], key: u64) -> Result<(), &'static str> {
    if key >> 3 == 0 {
        return Err("invalid field number 0");
    }
    if key >> 3 > u64::from(u32::MAX) {
        return Err("invalid field number");
    }
    match key & 7 {
        0 => varint(buf).map(drop),
        1 => skip(buf, 8).map(drop),
        2 => {
            let len = varint(buf)?;
            skip(buf, len).map(drop)
        }
        5 => skip(buf, 4).map(drop),
        3 | 4 => Err("groups are not supported"),
        _ => Err("invalid wire type"),
    }
}

/// Heap bytes the decoded form of an OTLP/JSON `body` of message `root` will hold.
///
/// # Errors
/// [`DecodeError::Json`] when the body is not well-formed JSON.
pub fn json(root: Kind, body: &[u8]) -> Result<u64, DecodeError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let cost = Message(root)
        .deserialize(&mut de)
        .and_then(|c| de.end().map(|()| c))
        .map_err(|e| DecodeError::Json(e.to_string()))?;
    Ok(cost.saturating_add(root.struct_size() as u64))
}

/// Scalars and mismatched shapes cost nothing here: the typed decode that follows reports them with
/// their path. Only JSON syntax errors (which both would report the same way) end the walk.
macro_rules! lenient_scalars {
    ($zero:expr) => {
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($zero)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($zero)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($zero)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($zero)
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok($zero)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok($zero)
        }
    };
}

/// Walks one JSON object as message `0`, returning the heap its fields will hold.
struct Message(Kind);

impl<'de> DeserializeSeed<'de> for Message {
    type Value = u64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Message {
    type Value = u64;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "an OTLP {:?} object", self.0)
    }

    lenient_scalars!(0);

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(0)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u64, A::Error> {
        let mut counts = Counts::default();
        let mut cost = 0u64;
        while let Some(field) = map.next_key_seed(Key(self.0))? {
            let c = match field {
                Some((_, Msg(k))) => map.next_value_seed(Message(k))?,
                Some((i, f @ (Rep(_) | RepStr | Nums))) => {
                    let (n, c) = map.next_value_seed(Repeated(f))?;
                    counts.add(i, n);
                    c
                }
                Some((_, Str)) => map.next_value_seed(Text)?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                    0
                }
            };
            cost = cost.saturating_add(c);
        }
        Ok(cost.saturating_add(counts.cost(self.0)))
    }
}

/// A JSON object key, resolved to the field of message `0` it names (without allocating).
struct Key(Kind);

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Option<(usize, F)>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Option<(usize, F)>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.0.json_field(v))
    }
}

/// A JSON array of a repeated field: (elements, heap of their contents).
struct Repeated(F);

impl<'de> DeserializeSeed<'de> for Repeated {
    type Value = (u64, u64);
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(u64, u64), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Repeated {
    type Value = (u64, u64);

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array")
    }

    lenient_scalars!((0, 0));

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(u64, u64), A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok((0, 0))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(u64, u64), A::Error> {
        let (mut n, mut cost) = (0u64, 0u64);
        loop {
            let c = match self.0 {
                Rep(k) => seq.next_element_seed(Message(k))?,
                RepStr => seq.next_element_seed(Text)?,
                _ => seq.next_element::<IgnoredAny>()?.map(|_| 0),
            };
            match c {
                Some(c) => {
                    n += 1;
                    cost = cost.saturating_add(c);
                }
                None => return Ok((n, cost)),
            }
        }
    }
}

/// A JSON string: its length (hex ids decode to half of it; an upper bound is what admission needs).
struct Text;

impl<'de> DeserializeSeed<'de> for Text {
    type Value = u64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Text {
    type Value = u64;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E>(self, v: &str) -> Result<u64, E> {
        Ok(str_cost(v.len() as u64))
    }

    fn visit_unit<E>(self) -> Result<u64, E> {
        Ok(0)
    }

    fn visit_bool<E>(self, _: bool) -> Result<u64, E> {
        Ok(0)
    }

    fn visit_i64<E>(self, _: i64) -> Result<u64, E> {
        Ok(0)
    }

    fn visit_u64<E>(self, _: u64) -> Result<u64, E> {
        Ok(0)
    }

    fn visit_f64<E>(self, _: f64) -> Result<u64, E> {
        Ok(0)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
        // Some encoders write bytes as an array of numbers.
        let mut n = 0u64;
        while seq.next_element::<IgnoredAny>()?.is_some() {
            n += 1;
        }
        Ok(n)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u64, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::any_value;
    use prost::Message as _;

    fn nested(depth: usize) -> ExportMetricsServiceRequest {
        let mut v = AnyValue {
            value: Some(any_value::Value::IntValue(1)),
        };
        for _ in 0..depth {
            v = AnyValue {
                value: Some(any_value::Value::ArrayValue(ArrayValue { values: vec![v] })),
            };
        }
        let point = pm::NumberDataPoint {
            attributes: vec![KeyValue {
                key: "k".into(),
                value: Some(v),
                ..Default::default()
            }],
            ..Default::default()
        };
        ExportMetricsServiceRequest {
            resource_metrics: vec![pm::ResourceMetrics {
                scope_metrics: vec![pm::ScopeMetrics {
                    metrics: vec![pm::Metric {
                        data: Some(pm::metric::Data::Gauge(pm::Gauge {
                            data_points: vec![point],
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn lookup_table_matches_the_schema() {
        for (k, kind) in ALL_KINDS.iter().enumerate() {
            assert_eq!(*kind as usize, k);
            for (i, (number, _, _)) in kind.fields().iter().enumerate() {
                assert_eq!(kind.field(*number).map(|(j, _)| j), Some(i), "{kind:?}.{number}");
            }
        }
    }

    #[test]
    fn nesting_limit_matches_prost() {
        for depth in 40..56 {
            let body = nested(depth).encode_to_vec();
            let walked = protobuf(Kind::ExportMetrics, &body).is_ok();
            let decoded = ExportMetricsServiceRequest::decode(&body[..]).is_ok();
            assert_eq!(walked, decoded, "depth {depth}");
        }
        let deep = nested(200).encode_to_vec();
        let e = protobuf(Kind::ExportMetrics, &deep).unwrap_err();
        assert!(e.to_string().contains("recursion limit"), "{e}");
    }

    #[test]
    fn malformed_bytes_are_errors_not_panics() {
        for body in [
            &[0x0a, 0x05, 1][..],
            &[0x0b][..],
            &[0x08, 0xff, 0xff][..],
            &[0x00, 0x00][..],
        ] {
            assert!(protobuf(Kind::ExportTraces, body).is_err(), "{body:?}");
        }
        assert!(json(Kind::ExportTraces, b"{\"resourceSpans\": [").is_err());
        assert!(json(Kind::ExportTraces, b"{} trailing").is_err());
        // Wrong shapes are not the walk's to report: the typed decoder names them with their path.
        for body in [
            &br#"{"resourceSpans": 5}"#[..],
            br#"{"resourceSpans": [{"scopeSpans": {"a": 1}}]}"#,
            b"[1, 2]",
        ] {
            assert!(
                json(Kind::ExportTraces, body).is_ok(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn empty_messages_cost_their_structs() {
        // 1,000 empty spans: 2 bytes each on the wire, a whole `Span` each decoded.
        let mut spans = Vec::new();
        for _ in 0..1000 {
            spans.extend_from_slice(&[0x12, 0x00]);
        }
        // resource_spans (1) → scope_spans (2) → the spans; lengths 2003 and 2000 as varints.
        let resource = [&[0x12, 0xd0, 0x0f][..], &spans].concat();
        let req = [&[0x0a, 0xd3, 0x0f][..], &resource].concat();
        let est = protobuf(Kind::ExportTraces, &req).unwrap();
        assert!(est >= 1024 * size_of::<pt::Span>() as u64, "{est}");
        let decoded = ExportTraceServiceRequest::decode(&req[..]).unwrap();
        assert_eq!(decoded.resource_spans[0].scope_spans[0].spans.len(), 1000);
    }

    #[test]
    fn the_hand_walk_of_a_span_costs_what_the_generic_walk_does() {
        use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValueList};
        use pt::span::{Event, Link};
        let kv = |k: &str, v: any_value::Value| KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        };
        let attrs = |n: usize| -> Vec<KeyValue> {
            (0..n)
                .map(|i| match i % 4 {
                    0 => kv("http.route", any_value::Value::StringValue("/users/{id}".into())),
                    1 => kv("n", any_value::Value::IntValue(i as i64)),
                    2 => kv(
                        "list",
                        any_value::Value::ArrayValue(ArrayValue {
                            values: vec![AnyValue {
                                value: Some(any_value::Value::BytesValue(vec![1; 20])),
                            }],
                        }),
                    ),
                    _ => kv(
                        "map",
                        any_value::Value::KvlistValue(KeyValueList {
                            values: vec![kv("a", any_value::Value::BoolValue(true))],
                        }),
                    ),
                })
                .collect()
        };
        let spans = [
            pt::Span::default(),
            pt::Span {
                trace_id: vec![1; 16],
                span_id: vec![2; 8],
                trace_state: "k=v".into(),
                parent_span_id: vec![3; 8],
                name: "GET /users/{id}".into(),
                kind: 2,
                start_time_unix_nano: 1,
                end_time_unix_nano: 2,
                attributes: attrs(9),
                events: (0..3)
                    .map(|i| Event {
                        name: format!("event {i}"),
                        attributes: attrs(i),
                        ..Default::default()
                    })
                    .collect(),
                links: vec![Link {
                    trace_id: vec![4; 16],
                    span_id: vec![5; 8],
                    trace_state: "a=b".into(),
                    attributes: attrs(2),
                    ..Default::default()
                }],
                status: Some(pt::Status {
                    message: "boom".into(),
                    code: 2,
                }),
                flags: 0x301,
                ..Default::default()
            },
        ];
        for span in &spans {
            let mut bytes = span.encode_to_vec();
            assert_eq!(walk_span(&bytes, 3), walk(Kind::Span, &bytes, 3), "{span:?}");
            // Unknown fields and known numbers with other wire types are skipped alike.
            bytes.extend([0xf8, 0x06, 0x01, 0x2d, 1, 2, 3, 4, 0x28, 0x07, 0x4d, 0, 0, 0, 0]);
            assert_eq!(walk_span(&bytes, 3), walk(Kind::Span, &bytes, 3));
            // Malformed: truncated, a group, a zero field number, too deep.
            for bad in [&bytes[..bytes.len() - 3], &[0x0b][..], &[0x00, 0x00][..]] {
                assert!(walk_span(bad, 3).is_err() && walk(Kind::Span, bad, 3).is_err());
            }
            assert_eq!(
                walk_span(&bytes, MAX_DEPTH + 1),
                walk(Kind::Span, &bytes, MAX_DEPTH + 1)
            );
        }
    }

    #[test]
    fn the_hand_walk_of_a_key_value_costs_what_the_generic_walk_does() {
        use opentelemetry_proto::tonic::common::v1::ArrayValue;
        let kv = |key: &str, value: Option<any_value::Value>| {
            KeyValue {
                key: key.into(),
                value: Some(AnyValue { value }),
                ..Default::default()
            }
            .encode_to_vec()
        };
        let long = "v".repeat(300);
        let mut cases = vec![
            kv("http.route", Some(any_value::Value::StringValue("/users/{id}".into()))),
            kv("a", Some(any_value::Value::StringValue("1234567".into()))),
            kv("n", Some(any_value::Value::IntValue(-1))),
            kv("ok", Some(any_value::Value::BoolValue(true))),
            kv("d", Some(any_value::Value::DoubleValue(2.5))),
            kv("none", None),
            kv("long", Some(any_value::Value::StringValue(long))),
            kv("b", Some(any_value::Value::BytesValue(vec![9; 30]))),
            kv(
                "arr",
                Some(any_value::Value::ArrayValue(ArrayValue {
                    values: vec![AnyValue {
                        value: Some(any_value::Value::StringValue("abcdefghijk".into())),
                    }],
                })),
            ),
            KeyValue::default().encode_to_vec(),
        ];
        let mut unknown = kv("k", Some(any_value::Value::StringValue("abcdefghij".into())));
        unknown.extend([0x20, 0x01]);
        cases.push(unknown);
        cases.push(vec![0x0a, 0x01, b'k', 0x12, 0x02, 0x18, 0x80]);
        for case in &cases {
            for depth in [1, MAX_DEPTH - 1, MAX_DEPTH] {
                assert_eq!(
                    walk_key_value(case, depth),
                    walk(Kind::KeyValue, case, depth),
                    "{case:?} at {depth}"
                );
            }
        }
    }
}
