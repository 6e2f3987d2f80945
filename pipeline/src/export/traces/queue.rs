//! The exporter's queue: pending requests bounded by the memory they hold decoded ([`held_bytes`]),
//! taken in batches by size and time.
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::model::batch::Samples;

pub(super) struct Pending {
    pub(super) req: ExportTraceServiceRequest,
    /// Memory this item holds (request, exemplars and the queue slot), reserved from the bound.
    pub(super) bytes: u64,
    pub(super) spans: u64,
    pub(super) exemplars: Samples,
}

#[derive(Default)]
pub(super) struct Items {
    pub(super) queued: VecDeque<Pending>,
    /// Set once the worker has finished: nothing is accepted any more.
    pub(super) closed: bool,
}

pub(super) struct Queue {
    pub(super) items: Mutex<Items>,
    /// Bytes of memory held by queued and in-flight batches.
    pub(super) bytes: AtomicU64,
    pub(super) capacity: u64,
    /// Spans of the batch being exported (counted if the worker is aborted).
    pub(super) inflight_spans: AtomicU64,
    /// Set when the worker has counted everything it will not deliver.
    pub(super) settled: AtomicBool,
    pub(super) notify: Notify,
}

impl Queue {
    pub(super) fn new(capacity: u64) -> Self {
        Self {
            items: Mutex::new(Items::default()),
            bytes: AtomicU64::new(0),
            capacity,
            inflight_spans: AtomicU64::new(0),
            settled: AtomicBool::new(false),
            notify: Notify::new(),
        }
    }

    /// Reserves `n` bytes if they fit the bound. A request larger than the whole bound is
    /// admitted into an empty queue (nothing queued or in flight), so that it can still be
    /// forwarded; memory is then that one request.
    pub(super) fn reserve(&self, n: u64) -> bool {
        self.bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                (cur == 0 || cur + n <= self.capacity).then_some(cur + n)
            })
            .is_ok()
    }

    pub(super) fn release(&self, n: u64) {
        self.bytes.fetch_sub(n, Ordering::AcqRel);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.items.lock().queued.is_empty()
    }

    pub(super) fn queued_spans(&self) -> u64 {
        self.items.lock().queued.iter().map(|p| p.spans).sum()
    }

    /// Pops items up to `max_spans` spans (always at least one).
    pub(super) fn take_batch(&self, max_spans: u64) -> Vec<Pending> {
        let mut items = self.items.lock();
        let mut out = Vec::new();
        let mut spans = 0;
        while let Some(p) = items.queued.front() {
            if !out.is_empty() && spans + p.spans > max_spans {
                break;
            }
            spans += p.spans;
            out.extend(items.queued.pop_front());
        }
        out
    }

    /// Refuses every later request and empties the queue; returns the spans it held.
    pub(super) fn close(&self) -> u64 {
        let drained: Vec<Pending> = {
            let mut items = self.items.lock();
            items.closed = true;
            items.queued.drain(..).collect()
        };
        let bytes: u64 = drained.iter().map(|p| p.bytes).sum();
        self.release(bytes);
        drained.iter().map(|p| p.spans).sum()
    }
}

/// Bytes of memory a decoded request holds: the struct itself plus every string, bytes and vector
/// allocation (by capacity, with the inline size of each element), walked once. This is what the
/// export queue counts against `exporters.traces.otlp.queue_max_bytes`; the encoded length
/// undercounts it several times (an empty span is 2 bytes on the wire and ~260 bytes decoded).
/// Allocator overhead (size classes, headers) is not included.
pub fn held_bytes(req: &ExportTraceServiceRequest) -> u64 {
    size_of::<ExportTraceServiceRequest>() as u64 + heap_bytes(req)
}

/// The part of [`held_bytes`] outside the request struct itself.
pub(super) fn heap_bytes(req: &ExportTraceServiceRequest) -> u64 {
    held::vec(&req.resource_spans, held::resource_spans) as u64
}

/// Heap bytes a batch of exemplars holds (its arenas, by capacity; the struct itself not).
pub(super) fn samples_heap_bytes(s: &Samples) -> u64 {
    use crate::model::batch::{FamilyMeta, Label, Point};
    let families: usize = s
        .families
        .iter()
        .map(|f| f.name.capacity() + f.help.capacity() + f.unit.capacity())
        .sum();
    (s.families.capacity() * size_of::<FamilyMeta>()
        + families
        + s.points.capacity() * size_of::<Point>()
        + s.labels.capacity() * size_of::<Label>()
        + s.text.capacity()
        + s.floats.capacity() * size_of::<f64>()
        + s.counts.capacity() * size_of::<u64>()
        + s.exemplars.capacity() * size_of::<crate::model::Exemplar>()
        + s.outcome.message.capacity()) as u64
}

/// The heap part of each OTLP trace type (its inline size is counted by the vector or struct
/// that holds it).
mod held {
    use opentelemetry_proto::tonic::common::v1::{AnyValue, EntityRef, InstrumentationScope, KeyValue, any_value};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, span};

    /// A vector's allocation plus the heap parts of its elements.
    pub(super) fn vec<T>(v: &Vec<T>, heap: impl Fn(&T) -> usize) -> usize {
        v.capacity() * size_of::<T>() + v.iter().map(heap).sum::<usize>()
    }

    fn strings(v: &Vec<String>) -> usize {
        vec(v, String::capacity)
    }

    pub(super) fn resource_spans(rs: &ResourceSpans) -> usize {
        rs.resource.as_ref().map_or(0, resource) + vec(&rs.scope_spans, scope_spans) + rs.schema_url.capacity()
    }

    fn resource(r: &Resource) -> usize {
        vec(&r.attributes, key_value) + vec(&r.entity_refs, entity_ref)
    }

    fn entity_ref(e: &EntityRef) -> usize {
        e.schema_url.capacity() + e.r#type.capacity() + strings(&e.id_keys) + strings(&e.description_keys)
    }

    fn scope_spans(ss: &ScopeSpans) -> usize {
        ss.scope.as_ref().map_or(0, scope) + vec(&ss.spans, self::span) + ss.schema_url.capacity()
    }

    fn scope(s: &InstrumentationScope) -> usize {
        s.name.capacity() + s.version.capacity() + vec(&s.attributes, key_value)
    }

    fn span(s: &Span) -> usize {
        s.trace_id.capacity()
            + s.span_id.capacity()
            + s.trace_state.capacity()
            + s.parent_span_id.capacity()
            + s.name.capacity()
            + vec(&s.attributes, key_value)
            + vec(&s.events, event)
            + vec(&s.links, link)
            + s.status.as_ref().map_or(0, |st| st.message.capacity())
    }

    fn event(e: &span::Event) -> usize {
        e.name.capacity() + vec(&e.attributes, key_value)
    }

    fn link(l: &span::Link) -> usize {
        l.trace_id.capacity() + l.span_id.capacity() + l.trace_state.capacity() + vec(&l.attributes, key_value)
    }

    fn key_value(kv: &KeyValue) -> usize {
        kv.key.capacity() + kv.value.as_ref().map_or(0, any_value)
    }

    /// Recursive through arrays and key-value lists; the decoder bounds their depth.
    fn any_value(v: &AnyValue) -> usize {
        use any_value::Value;
        match &v.value {
            Some(Value::StringValue(s)) => s.capacity(),
            Some(Value::BytesValue(b)) => b.capacity(),
            Some(Value::ArrayValue(a)) => vec(&a.values, any_value),
            Some(Value::KvlistValue(l)) => vec(&l.values, key_value),
            Some(Value::BoolValue(_) | Value::IntValue(_) | Value::DoubleValue(_) | Value::StringValueStrindex(_))
            | None => 0,
        }
    }
}
