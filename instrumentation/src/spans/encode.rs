//! OTLP `ExportTraceServiceRequest` protobuf bytes written straight from the SDK's `SpanData`,
//! with no `opentelemetry-proto` structs in between (no `String` or `Vec` per span, attribute or
//! value): one resource, spans grouped by instrumentation scope in order of first appearance, each
//! span in batch order — what `opentelemetry-proto`'s `group_spans_by_resource_and_scope` (the
//! SDK's OTLP exporter) builds, field for field, including the `flags` bits it sets (the W3C trace
//! flags, `CONTEXT_HAS_IS_REMOTE`, and `CONTEXT_IS_REMOTE` for a remote parent or link).
//!
//! What comes in: a batch of `SpanData` and the resource encoded once ([`encode_resource`]). What
//! goes out: the request's bytes, appended to a buffer the caller reuses. The unit tests decode
//! the bytes with prost and compare them with `opentelemetry-proto`'s own conversion.
//!
//! A nested message is written in place: one byte is reserved for its length, and the rare
//! message of 128 bytes or more is moved up by the extra length bytes when it ends.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status};
use opentelemetry::{Array, InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SpanData;

/// `SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK`.
const HAS_IS_REMOTE: u32 = 0x100;
/// `SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK`.
const IS_REMOTE: u32 = 0x200;

const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

/// A protobuf writer over a `Vec<u8>`; see the module documentation for nested messages.
struct Writer<'a> {
    buf: &'a mut Vec<u8>,
}

impl Writer<'_> {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    fn key(&mut self, field: u32, wire: u32) {
        self.varint(u64::from(field << 3 | wire));
    }

    /// Opens a length-delimited field; returns where its body starts, for [`Writer::end`].
    fn begin(&mut self, field: u32) -> usize {
        self.key(field, LEN);
        self.buf.push(0);
        self.buf.len()
    }

    /// Closes the field [`Writer::begin`] opened, writing its length.
    fn end(&mut self, start: usize) {
        let len = self.buf.len() - start;
        if len < 0x80 {
            self.buf[start - 1] = len as u8;
            return;
        }
        let mut head = [0u8; 10];
        let (mut v, mut n) = (len as u64, 0);
        while v >= 0x80 {
            head[n] = (v as u8) | 0x80;
            v >>= 7;
            n += 1;
        }
        head[n] = v as u8;
        self.buf.splice(start - 1..start, head[..=n].iter().copied());
    }

    /// A `bytes` or `string` field; empty ones are left out, as prost does.
    fn bytes(&mut self, field: u32, b: &[u8]) {
        if b.is_empty() {
            return;
        }
        self.key(field, LEN);
        self.varint(b.len() as u64);
        self.buf.extend_from_slice(b);
    }

    fn uint(&mut self, field: u32, v: u64) {
        if v != 0 {
            self.key(field, VARINT);
            self.varint(v);
        }
    }

    fn fixed64(&mut self, field: u32, v: u64) {
        if v != 0 {
            self.key(field, FIXED64);
            self.buf.extend_from_slice(&v.to_le_bytes());
        }
    }

    fn fixed32(&mut self, field: u32, v: u32) {
        if v != 0 {
            self.key(field, FIXED32);
            self.buf.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// `opentelemetry-proto`'s `to_nanos`: nanoseconds since the epoch, 0 before it.
fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// `KeyValue { key, value: Some(AnyValue) }` as field `field`.
fn key_value(w: &mut Writer<'_>, field: u32, key: &str, value: &Value) {
    let kv = w.begin(field);
    w.bytes(1, key.as_bytes());
    any_value(w, 2, value);
    w.end(kv);
}

fn attributes(w: &mut Writer<'_>, field: u32, attrs: &[KeyValue]) {
    for kv in attrs {
        key_value(w, field, kv.key.as_str(), &kv.value);
    }
}

/// `AnyValue` as field `field`: a oneof, so a set value is written even when it is the default.
fn any_value(w: &mut Writer<'_>, field: u32, value: &Value) {
    let av = w.begin(field);
    match value {
        Value::Bool(b) => {
            w.key(2, VARINT);
            w.varint(u64::from(*b));
        }
        Value::I64(i) => {
            w.key(3, VARINT);
            w.varint(*i as u64);
        }
        Value::F64(f) => {
            w.key(4, FIXED64);
            w.buf.extend_from_slice(&f.to_le_bytes());
        }
        Value::String(s) => {
            w.key(1, LEN);
            w.varint(s.as_str().len() as u64);
            w.buf.extend_from_slice(s.as_str().as_bytes());
        }
        Value::Array(array) => {
            let arr = w.begin(5);
            match array {
                Array::Bool(v) => v.iter().for_each(|b| any_value(w, 1, &Value::Bool(*b))),
                Array::I64(v) => v.iter().for_each(|i| any_value(w, 1, &Value::I64(*i))),
                Array::F64(v) => v.iter().for_each(|f| any_value(w, 1, &Value::F64(*f))),
                Array::String(v) => {
                    for s in v {
                        let one = w.begin(1);
                        w.key(1, LEN);
                        w.varint(s.as_str().len() as u64);
                        w.buf.extend_from_slice(s.as_str().as_bytes());
                        w.end(one);
                    }
                }
                // A kind added to the API later: an empty array rather than a panic.
                _ => {}
            }
            w.end(arr);
        }
        // A kind added to the API later: an `AnyValue` without a value rather than a panic.
        _ => {}
    }
    w.end(av);
}

/// The `Resource` message body (attributes in the resource's order, as `opentelemetry-proto`
/// reads them) and its schema URL, encoded once per resource.
#[derive(Debug, Clone, Default)]
pub(crate) struct EncodedResource {
    /// `Resource` message fields.
    body: Vec<u8>,
    schema_url: String,
}

/// Encodes `resource` for [`encode_request`].
pub(crate) fn encode_resource(resource: &Resource) -> EncodedResource {
    let mut body = Vec::new();
    let mut w = Writer { buf: &mut body };
    for (k, v) in resource.iter() {
        key_value(&mut w, 1, k.as_str(), v);
    }
    EncodedResource {
        body,
        schema_url: resource.schema_url().unwrap_or_default().to_owned(),
    }
}

/// Appends the `ExportTraceServiceRequest` of `spans` under `resource` to `out`. `groups` is
/// scratch space the caller keeps between batches.
pub(crate) fn encode_request<'a>(
    resource: &EncodedResource,
    spans: &'a [SpanData],
    groups: &mut Vec<(&'a InstrumentationScope, Vec<u32>)>,
    out: &mut Vec<u8>,
) {
    groups.clear();
    for (i, span) in spans.iter().enumerate() {
        let scope = &span.instrumentation_scope;
        match groups.iter_mut().find(|(s, _)| *s == scope) {
            Some((_, members)) => members.push(i as u32),
            None => groups.push((scope, vec![i as u32])),
        }
    }
    let mut w = Writer { buf: out };
    let rs = w.begin(1);
    let r = w.begin(1);
    w.buf.extend_from_slice(&resource.body);
    w.end(r);
    for (scope, members) in groups.iter() {
        let ss = w.begin(2);
        let sc = w.begin(1);
        w.bytes(1, scope.name().as_bytes());
        w.bytes(2, scope.version().unwrap_or_default().as_bytes());
        for kv in scope.attributes() {
            key_value(&mut w, 3, kv.key.as_str(), &kv.value);
        }
        w.end(sc);
        for &i in members {
            span(&mut w, &spans[i as usize]);
        }
        w.bytes(3, scope.schema_url().unwrap_or_default().as_bytes());
        w.end(ss);
    }
    w.bytes(3, resource.schema_url.as_bytes());
    w.end(rs);
}

/// `flags`: the W3C trace flags, with whether the parent (or linked context) is remote.
fn flags(trace_flags: u8, remote: bool) -> u32 {
    u32::from(trace_flags) | HAS_IS_REMOTE | if remote { IS_REMOTE } else { 0 }
}

fn ids(w: &mut Writer<'_>, cx: &SpanContext) {
    w.bytes(1, &cx.trace_id().to_bytes());
    w.bytes(2, &cx.span_id().to_bytes());
    w.bytes(3, cx.trace_state().header().as_bytes());
}

/// One `Span` (field 2 of `ScopeSpans`).
fn span(w: &mut Writer<'_>, s: &SpanData) {
    let sp = w.begin(2);
    ids(w, &s.span_context);
    if s.parent_span_id != SpanId::INVALID {
        w.bytes(4, &s.parent_span_id.to_bytes());
    }
    w.bytes(5, s.name.as_bytes());
    let kind: u64 = match s.span_kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    };
    w.uint(6, kind);
    w.fixed64(7, nanos(s.start_time));
    w.fixed64(8, nanos(s.end_time));
    attributes(w, 9, &s.attributes);
    w.uint(10, u64::from(s.dropped_attributes_count));
    for event in s.events.iter() {
        let ev = w.begin(11);
        w.fixed64(1, nanos(event.timestamp));
        w.bytes(2, event.name.as_bytes());
        attributes(w, 3, &event.attributes);
        w.uint(4, u64::from(event.dropped_attributes_count));
        w.end(ev);
    }
    w.uint(12, u64::from(s.events.dropped_count));
    for link in s.links.iter() {
        let l = w.begin(13);
        ids(w, &link.span_context);
        attributes(w, 4, &link.attributes);
        w.uint(5, u64::from(link.dropped_attributes_count));
        w.fixed32(
            6,
            flags(link.span_context.trace_flags().to_u8(), link.span_context.is_remote()),
        );
        w.end(l);
    }
    w.uint(14, u64::from(s.links.dropped_count));
    let st = w.begin(15);
    match &s.status {
        Status::Unset => {}
        Status::Ok => w.uint(3, 1),
        Status::Error { description } => {
            w.bytes(2, description.as_bytes());
            w.uint(3, 2);
        }
    }
    w.end(st);
    w.fixed32(16, flags(s.span_context.trace_flags().to_u8(), s.parent_span_is_remote));
    w.end(sp);
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::time::Duration;

    use opentelemetry::trace::{Event, Link, SpanContext, TraceFlags, TraceId, TraceState};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
    use prost::Message as _;

    use super::*;

    fn every_value() -> Vec<KeyValue> {
        vec![
            KeyValue::new("str", "value"),
            KeyValue::new("empty.str", ""),
            KeyValue::new("bool.true", true),
            KeyValue::new("bool.false", false),
            KeyValue::new("int", 42_i64),
            KeyValue::new("int.zero", 0_i64),
            KeyValue::new("int.negative", -7_i64),
            KeyValue::new("double", 3.5_f64),
            KeyValue::new("double.zero", 0.0_f64),
            KeyValue::new("double.negative", -1e300_f64),
            KeyValue::new("array.bool", Value::Array(Array::Bool(vec![true, false]))),
            KeyValue::new("array.int", Value::Array(Array::I64(vec![1, -1, 0]))),
            KeyValue::new("array.double", Value::Array(Array::F64(vec![0.5, 0.0]))),
            KeyValue::new(
                "array.string",
                Value::Array(Array::String(vec!["a".into(), "".into(), "x".repeat(300).into()])),
            ),
            KeyValue::new("array.empty", Value::Array(Array::I64(vec![]))),
            KeyValue::new("long", "y".repeat(20_000)),
            KeyValue::new("", "empty key"),
        ]
    }

    fn context(trace: u128, span: u64, flags: TraceFlags, remote: bool, state: &str) -> SpanContext {
        SpanContext::new(
            TraceId::from(trace),
            SpanId::from(span),
            flags,
            remote,
            state.parse::<TraceState>().expect("trace state"),
        )
    }

    /// A span with every field set.
    fn full_span(scope: InstrumentationScope, id: u64, remote_parent: bool) -> SpanData {
        let mut events = SpanEvents::default();
        events.events.push(Event::new(
            "exception",
            UNIX_EPOCH + Duration::from_nanos(1_500),
            every_value(),
            3,
        ));
        events.events.push(Event::new("bare", UNIX_EPOCH, vec![], 0));
        events.dropped_count = 4;
        let mut links = SpanLinks::default();
        links.links.push(Link::new(
            context(0x2233, 0x2030, TraceFlags::SAMPLED, true, "vendor=link,ot=th:8"),
            vec![KeyValue::new("link.attr", "linked")],
            5,
        ));
        links.links.push(Link::new(
            context(0x4455, 0x4040, TraceFlags::default(), false, ""),
            vec![],
            0,
        ));
        links.dropped_count = 6;
        SpanData {
            span_context: context(
                0x1122_3344_5566_7788_99aa,
                id,
                TraceFlags::SAMPLED,
                false,
                "ot=th:0,vendor=span",
            ),
            parent_span_id: SpanId::from(0x8877_6655_4433_2211),
            parent_span_is_remote: remote_parent,
            span_kind: SpanKind::Server,
            name: Cow::Owned(format!("span {id} ✓")),
            start_time: UNIX_EPOCH + Duration::from_nanos(1_000),
            end_time: UNIX_EPOCH + Duration::from_nanos(2_500),
            attributes: every_value(),
            dropped_attributes_count: 2,
            events,
            links,
            status: Status::error("failed"),
            instrumentation_scope: scope,
        }
    }

    fn minimal_span(scope: InstrumentationScope, id: u64, kind: SpanKind, status: Status) -> SpanData {
        SpanData {
            span_context: context(1, id, TraceFlags::default(), false, ""),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: kind,
            name: Cow::Borrowed(""),
            start_time: UNIX_EPOCH - Duration::from_secs(1),
            end_time: UNIX_EPOCH,
            attributes: vec![],
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: scope,
        }
    }

    /// What this module writes, decoded by prost, against `opentelemetry-proto`'s conversion of
    /// the same spans (the SDK's OTLP exporter's).
    fn assert_same(resource: &Resource, spans: Vec<SpanData>) {
        let mut bytes = Vec::new();
        encode_request(&encode_resource(resource), &spans, &mut Vec::new(), &mut bytes);
        let ours = ExportTraceServiceRequest::decode(bytes.as_slice()).expect("decodes");
        let theirs = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(spans, &ResourceAttributesWithSchema::from(resource)),
        };
        assert_eq!(ours, theirs);
    }

    #[test]
    fn every_field_is_what_opentelemetry_proto_converts() {
        let scope = InstrumentationScope::builder("spindle-instrument")
            .with_version("1.2.3")
            .with_schema_url("https://opentelemetry.io/schemas/1.30.0")
            .with_attributes(every_value())
            .build();
        let other = InstrumentationScope::builder("other").build();
        let resource = Resource::builder_empty()
            .with_schema_url(every_value(), "https://example.com/resource/1")
            .build();
        assert_same(
            &resource,
            vec![
                full_span(scope.clone(), 1, false),
                minimal_span(other.clone(), 2, SpanKind::Internal, Status::Unset),
                full_span(scope.clone(), 3, true),
                minimal_span(other.clone(), 4, SpanKind::Client, Status::Ok),
                minimal_span(scope.clone(), 5, SpanKind::Producer, Status::error("")),
                minimal_span(other, 6, SpanKind::Consumer, Status::Unset),
            ],
        );
    }

    #[test]
    fn empty_and_plain_resources_and_batches() {
        let scope = InstrumentationScope::builder("s").build();
        assert_same(&Resource::builder_empty().build(), vec![]);
        assert_same(
            &Resource::builder_empty().build(),
            vec![minimal_span(scope.clone(), 1, SpanKind::Internal, Status::Unset)],
        );
        let resource = Resource::builder().with_service_name("svc").build();
        let spans: Vec<SpanData> = (0..600).map(|i| full_span(scope.clone(), i + 1, i % 2 == 0)).collect();
        assert_same(&resource, spans);
    }

    #[test]
    fn lengths_of_every_size_are_written_minimally() {
        for len in [0, 1, 127, 128, 129, 16_383, 16_384, 2_097_152] {
            let mut buf = Vec::new();
            let mut w = Writer { buf: &mut buf };
            let start = w.begin(1);
            w.buf.extend(std::iter::repeat_n(7u8, len));
            w.end(start);
            let mut slice = &buf[1..];
            let decoded = prost::encoding::decode_varint(&mut slice).expect("varint");
            assert_eq!(decoded as usize, len);
            assert_eq!(slice.len(), len, "the length is followed by the body alone");
            assert_eq!(buf.len(), 1 + prost::encoding::encoded_len_varint(len as u64) + len);
        }
    }
}
