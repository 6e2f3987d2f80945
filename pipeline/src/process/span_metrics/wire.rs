//! A borrowing reader of encoded `ExportTraceServiceRequest`s: what span metrics and the span
//! checks need, read straight from the received bytes, so a request that is forwarded unchanged is
//! never decoded into structs (and never re-encoded).
//!
//! [`WireRequest::parse`] checks the whole request the way prost's decoder does — wire types of
//! known fields, UTF-8 of string fields, lengths, nesting depth — so that a request it accepts would
//! also decode, and a backend receives nothing Spindle itself would have refused. It allocates two
//! vectors per request (resources and spans, plus one of attributes), each sized once, none per span.

pub use crate::process::translate::attrs::{WireAttr, WireError};
use crate::process::translate::attrs::{key_value, resource_message};
use crate::util::protobuf::{Wire, field, field_with_key, take, utf8, varint};

/// One span, with what span metrics and the span checks read.
#[derive(Debug, Clone, Copy, Default)]
pub struct WireSpan<'a> {
    /// Index into [`WireRequest::resources`].
    pub resource: u32,
    /// `trace_id` bytes.
    pub trace_id: &'a [u8],
    /// `span_id` bytes.
    pub span_id: &'a [u8],
    /// W3C `tracestate`.
    pub trace_state: &'a str,
    /// Span name.
    pub name: &'a str,
    /// OTLP span kind.
    pub kind: i32,
    /// Start, Unix nanoseconds.
    pub start_time_unix_nano: u64,
    /// End, Unix nanoseconds.
    pub end_time_unix_nano: u64,
    /// Status code (`0` when there is no status).
    pub status_code: i32,
    attrs: (u32, u32),
}

/// A request's spans and resource attributes, borrowed from its bytes.
#[derive(Debug, Default)]
pub struct WireRequest<'a> {
    /// Per resource (one per `ResourceSpans`): its attributes, as a range of `resource_attrs`.
    resources: Vec<(u32, u32)>,
    resource_attrs: Vec<WireAttr<'a>>,
    /// Every span, in request order.
    pub spans: Vec<WireSpan<'a>>,
    /// Span attributes; a span's are a range of these.
    attrs: Vec<WireAttr<'a>>,
}

impl<'a> WireRequest<'a> {
    /// Reads an encoded `ExportTraceServiceRequest`.
    ///
    /// # Errors
    /// A [`WireError`] naming what prost's decoder would also have refused.
    pub fn parse(body: &'a [u8]) -> Result<Self, WireError> {
        let mut r = WireRequest::default();
        let mut buf = body;
        while !buf.is_empty() {
            match field(&mut buf)? {
                (1, Wire::Len(rs)) => r.resource_spans(rs)?,
                (1, _) => return Err("invalid wire type for resource_spans"),
                (_, w) => w.skip_unknown()?,
            }
        }
        Ok(r)
    }

    /// Number of resources.
    pub fn resources(&self) -> usize {
        self.resources.len()
    }

    /// The attributes of resource `i`.
    pub fn resource_attrs(&self, i: u32) -> &[WireAttr<'a>] {
        let (a, b) = self.resources[i as usize];
        &self.resource_attrs[a as usize..b as usize]
    }

    /// The attributes of `span`.
    pub fn span_attrs(&self, span: &WireSpan<'a>) -> &[WireAttr<'a>] {
        &self.attrs[span.attrs.0 as usize..span.attrs.1 as usize]
    }

    fn resource_spans(&mut self, mut buf: &'a [u8]) -> Result<(), WireError> {
        let resource = self.resources.len() as u32;
        let start = self.resource_attrs.len() as u32;
        // Spans come before or after the resource on the wire: their resource index is known now.
        while !buf.is_empty() {
            match field(&mut buf)? {
                (1, Wire::Len(res)) => resource_message(res, 1, &mut self.resource_attrs)?,
                (2, Wire::Len(ss)) => self.scope_spans(ss, resource)?,
                (3, Wire::Len(s)) => utf8(s).map(drop)?,
                (1..=3, _) => return Err("invalid wire type in ResourceSpans"),
                (_, w) => w.skip_unknown()?,
            }
        }
        self.resources.push((start, self.resource_attrs.len() as u32));
        Ok(())
    }

    fn scope_spans(&mut self, mut buf: &'a [u8], resource: u32) -> Result<(), WireError> {
        // The vectors are sized once: the scope's spans are counted by a shallow scan (a key and a
        // length each), their attributes guessed from the first span's — but no more than one per
        // two bytes left, the smallest encoded `KeyValue`, so a crafted request cannot make this
        // reserve more than its own bytes justify.
        let mut spans = count_len_fields(buf, 2);
        self.spans.reserve(spans);
        while !buf.is_empty() {
            match field(&mut buf)? {
                (1, Wire::Len(scope)) => check_scope(scope)?,
                (2, Wire::Len(span)) => {
                    let s = self.span(span, resource)?;
                    if spans > 0 {
                        let per_span = (s.attrs.1 - s.attrs.0) as usize;
                        self.attrs
                            .reserve(per_span.saturating_mul(spans - 1).min(buf.len() / 2));
                        spans = 0;
                    }
                    self.spans.push(s);
                }
                (3, Wire::Len(s)) => utf8(s).map(drop)?,
                (1..=3, _) => return Err("invalid wire type in ScopeSpans"),
                (_, w) => w.skip_unknown()?,
            }
        }
        Ok(())
    }

    /// One `Span`, read by its keys (the fields it reads are each one byte of key).
    fn span(&mut self, mut buf: &'a [u8], resource: u32) -> Result<WireSpan<'a>, WireError> {
        let mut s = WireSpan {
            resource,
            ..WireSpan::default()
        };
        let start = self.attrs.len() as u32;
        while !buf.is_empty() {
            let key = varint(&mut buf)?;
            match key {
                // Length-delimited: trace_id, span_id, trace_state, parent_span_id, name,
                // attributes, events, links, status.
                0x0a | 0x12 | 0x1a | 0x22 | 0x2a | 0x4a | 0x5a | 0x6a | 0x7a => {
                    let len = varint(&mut buf)?;
                    let b = take(&mut buf, len)?;
                    match key {
                        0x0a => s.trace_id = b,
                        0x12 => s.span_id = b,
                        0x1a => s.trace_state = utf8(b)?,
                        0x2a => s.name = utf8(b)?,
                        0x4a => self.attrs.push(key_value(b, 1)?),
                        0x5a => check_event(b)?,
                        0x6a => check_link(b)?,
                        0x7a => {
                            if let Some(code) = status(b)? {
                                s.status_code = code;
                            }
                        }
                        _ => {}
                    }
                }
                0x30 => s.kind = varint(&mut buf)? as i32,
                0x39 | 0x41 => {
                    let t = u64::from_le_bytes(take(&mut buf, 8)?.try_into().map_err(|_| "truncated")?);
                    if key == 0x39 {
                        s.start_time_unix_nano = t;
                    } else {
                        s.end_time_unix_nano = t;
                    }
                }
                // The dropped counts and flags.
                0x50 | 0x60 | 0x70 => {
                    varint(&mut buf)?;
                }
                0x85 => {
                    take(&mut buf, 4)?;
                }
                _ => {
                    // Anything else, as the general reader takes it: a known field with another wire
                    // type is refused, an unknown one skipped.
                    match field_with_key(key, &mut buf)? {
                        (1..=16, _) => return Err("invalid wire type in Span"),
                        (_, w) => w.skip_unknown()?,
                    }
                }
            }
        }
        s.attrs = (start, self.attrs.len() as u32);
        Ok(s)
    }
}

/// How many length-delimited fields `number` the message `buf` holds at its top level (counted up to
/// the first malformed field, which the reader itself will refuse).
fn count_len_fields(mut buf: &[u8], number: u32) -> usize {
    let mut n = 0;
    while let Ok((f, w)) = field(&mut buf) {
        n += usize::from(f == number && matches!(w, Wire::Len(_)));
    }
    n
}

fn check_scope(mut buf: &[u8]) -> Result<(), WireError> {
    while !buf.is_empty() {
        match field(&mut buf)? {
            (1 | 2, Wire::Len(s)) => utf8(s).map(drop)?,
            (3, Wire::Len(kv)) => key_value(kv, 2).map(drop)?,
            (4, Wire::Varint(_)) => {}
            (1..=4, _) => return Err("invalid wire type in InstrumentationScope"),
            (_, w) => w.skip_unknown()?,
        }
    }
    Ok(())
}

fn check_event(mut buf: &[u8]) -> Result<(), WireError> {
    while !buf.is_empty() {
        match field(&mut buf)? {
            (1, Wire::Fixed64(_)) | (4, Wire::Varint(_)) => {}
            (2, Wire::Len(s)) => utf8(s).map(drop)?,
            (3, Wire::Len(kv)) => key_value(kv, 2).map(drop)?,
            (1..=4, _) => return Err("invalid wire type in Span.Event"),
            (_, w) => w.skip_unknown()?,
        }
    }
    Ok(())
}

fn check_link(mut buf: &[u8]) -> Result<(), WireError> {
    while !buf.is_empty() {
        match field(&mut buf)? {
            (1 | 2, Wire::Len(_)) | (5, Wire::Varint(_)) | (6, Wire::Fixed32) => {}
            (3, Wire::Len(s)) => utf8(s).map(drop)?,
            (4, Wire::Len(kv)) => key_value(kv, 2).map(drop)?,
            (1..=6, _) => return Err("invalid wire type in Span.Link"),
            (_, w) => w.skip_unknown()?,
        }
    }
    Ok(())
}

/// `Status`: its code, if the message carries one (the last wins).
fn status(mut buf: &[u8]) -> Result<Option<i32>, WireError> {
    let mut code = None;
    while !buf.is_empty() {
        match field(&mut buf)? {
            (2, Wire::Len(s)) => utf8(s).map(drop)?,
            (3, Wire::Varint(c)) => code = Some(c as i32),
            (2 | 3, _) => return Err("invalid wire type in Status"),
            (_, w) => w.skip_unknown()?,
        }
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValue, KeyValueList, any_value::Value};
    use opentelemetry_proto::tonic::trace::v1::{Span, Status, span};
    use proptest::prelude::*;
    use prost::Message;

    use super::WireRequest;
    use crate::config::{Dimension, SpanMetricsConfig};
    use crate::process::span_metrics::SpanMetrics;
    use crate::testing::{kv, traces_request};

    fn value(v: Value) -> Option<AnyValue> {
        Some(AnyValue { value: Some(v) })
    }

    /// Spans with every kind of attribute value a dimension may read, events, links and status.
    fn request(seed: u64) -> ExportTraceServiceRequest {
        let attrs = |i: u64| {
            vec![
                kv("s", format!("v{}", i % 3)),
                KeyValue {
                    key: "b".into(),
                    value: value(Value::BoolValue(i % 2 == 0)),
                    ..Default::default()
                },
                KeyValue {
                    key: "i".into(),
                    value: value(Value::IntValue(-(i as i64))),
                    ..Default::default()
                },
                KeyValue {
                    key: "d".into(),
                    value: value(Value::DoubleValue(i as f64 / 3.0)),
                    ..Default::default()
                },
                KeyValue {
                    key: "x".into(),
                    value: value(Value::BytesValue(vec![0xab, i as u8])),
                    ..Default::default()
                },
                KeyValue {
                    key: "a".into(),
                    value: value(Value::ArrayValue(ArrayValue {
                        values: vec![value(Value::StringValue("q".into())).unwrap_or_default()],
                    })),
                    ..Default::default()
                },
                KeyValue {
                    key: "m".into(),
                    value: value(Value::KvlistValue(KeyValueList {
                        values: vec![kv("k", "v")],
                    })),
                    ..Default::default()
                },
                KeyValue {
                    key: "none".into(),
                    value: None,
                    ..Default::default()
                },
            ]
        };
        let spans = (0..40u64)
            .map(|i| Span {
                trace_id: [[(seed as u8).wrapping_add(1); 8], i.to_be_bytes()].concat(),
                span_id: (i + 1).to_be_bytes().to_vec(),
                trace_state: if i % 4 == 0 { "ot=th:8".into() } else { String::new() },
                name: format!("op-{}", i % 5),
                kind: (i % 6) as i32,
                start_time_unix_nano: 1_700_000_000_000_000_000,
                end_time_unix_nano: 1_700_000_000_000_000_000 + (i + 1) * 7_000_000,
                attributes: attrs(i + seed),
                events: vec![span::Event {
                    name: "e".into(),
                    attributes: vec![kv("ek", "ev")],
                    ..Default::default()
                }],
                links: vec![span::Link {
                    trace_id: vec![1; 16],
                    span_id: vec![2; 8],
                    ..Default::default()
                }],
                status: (i % 3 != 0).then(|| Status {
                    code: (i % 3) as i32,
                    message: "m".into(),
                }),
                ..Default::default()
            })
            .collect();
        traces_request(vec![kv("service.name", "svc"), kv("region", "eu")], spans)
    }

    fn processor() -> SpanMetrics {
        let dims = ["s", "b", "i", "d", "x", "a", "m", "none", "region", "absent"];
        SpanMetrics::new(SpanMetricsConfig {
            dimensions: dims
                .iter()
                .map(|n| Dimension {
                    name: (*n).into(),
                    default: (*n == "absent").then(|| "dflt".into()),
                })
                .collect(),
            ..SpanMetricsConfig::default()
        })
    }

    #[test]
    fn span_metrics_from_the_wire_equal_those_from_the_decoded_request() {
        let sm = processor();
        for seed in 0..4 {
            let req = request(seed);
            let body = req.encode_to_vec();
            let wire = WireRequest::parse(&body).expect("a valid request");
            assert_eq!(wire.spans.len(), 40);
            let decoded = sm.process(&req);
            let read = sm.process_wire(&wire);
            assert_eq!(format!("{:?}", read.counts), format!("{:?}", decoded.counts));
            assert_eq!(format!("{:?}", read.exemplars), format!("{:?}", decoded.exemplars));
            assert_eq!((read.spans, read.limited), (decoded.spans, decoded.limited));
            assert!(decoded.counts.points.len() > 10, "the request spreads over many series");
        }
    }

    #[test]
    fn repeated_fields_read_as_prost_merges_them() {
        // Two resources in one ResourceSpans and a KeyValue with two value messages, built by
        // concatenating encodings (as a sender may).
        let mut req = request(1);
        let one = req.encode_to_vec();
        let mut body = one.clone();
        body.extend_from_slice(&one);
        let doubled = ExportTraceServiceRequest::decode(&body[..]).expect("concatenation decodes");
        let sm = processor();
        let wire = WireRequest::parse(&body).expect("valid");
        assert_eq!(
            format!("{:?}", sm.process_wire(&wire).counts),
            format!("{:?}", sm.process(&doubled).counts)
        );
        let kv_twice = {
            let mut a = KeyValue {
                key: "s".into(),
                value: value(Value::StringValue("first".into())),
                ..Default::default()
            }
            .encode_to_vec();
            a.extend(
                KeyValue {
                    key: "s".into(),
                    value: Some(AnyValue::default()),
                    ..Default::default()
                }
                .encode_to_vec(),
            );
            a
        };
        req.resource_spans[0].scope_spans[0].spans[0].attributes =
            vec![KeyValue::decode(&kv_twice[..]).expect("merges")];
        let merged_body = {
            // Put the two-value KeyValue's raw bytes in place of the decoded one.
            let mut span = req.resource_spans[0].scope_spans[0].spans[0].clone();
            span.attributes.clear();
            let mut s = span.encode_to_vec();
            prost::encoding::encode_key(9, prost::encoding::WireType::LengthDelimited, &mut s);
            prost::encoding::encode_varint(kv_twice.len() as u64, &mut s);
            s.extend_from_slice(&kv_twice);
            s
        };
        let decoded_span = Span::decode(&merged_body[..]).expect("valid span");
        assert_eq!(
            decoded_span.attributes[0].value,
            value(Value::StringValue("first".into()))
        );
    }

    proptest! {
        /// Whatever the bytes, the reader never accepts what prost refuses, and accepts what
        /// prost and the admission walk both accept.
        #[test]
        fn the_reader_accepts_exactly_what_prost_decodes(
            flips in proptest::collection::vec((0usize..4000, any::<u8>()), 1..4),
            cut in 0usize..4000,
        ) {
            let mut body = request(2).encode_to_vec();
            for (at, b) in flips {
                let at = at % body.len();
                body[at] = b;
            }
            body.truncate(cut.max(body.len() / 2));
            let prost_ok = ExportTraceServiceRequest::decode(&body[..]).is_ok();
            let walk_ok = crate::receive::size::protobuf(crate::receive::size::Kind::ExportTraces, &body).is_ok();
            let wire_ok = WireRequest::parse(&body).is_ok();
            if wire_ok {
                prop_assert!(prost_ok, "the reader accepted bytes prost refuses");
            }
            if prost_ok && walk_ok {
                prop_assert!(wire_ok, "the reader refused bytes prost and the walk accept");
            }
        }
    }
}
