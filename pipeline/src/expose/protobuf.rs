//! The Prometheus protobuf exposition format: length-delimited `io.prometheus.client.MetricFamily`
//! messages (prometheus/client_model `metrics.proto`), the format Prometheus scrapes native
//! histograms in.
//!
//! A [`Sink`] of the one sample walk: each series' samples are gathered between
//! [`Sink::series`] and [`Sink::end_series`] into one `Metric`, and each family's metrics into one
//! `MetricFamily`. Counters, gauges, summaries and classic histograms carry what the text formats
//! carry (exemplars on counters and on every bucket, the `+Inf` bucket's included); an OTLP
//! exponential histogram becomes a **native histogram** — schema, zero threshold and count,
//! positive and negative spans and deltas, count, sum and its exemplars — beside its classic
//! buckets (as client_golang writes a histogram that has both; for a histogram kept both ways,
//! span metrics' `histogram: both`, its own configured buckets), exactly, at its own
//! scale when Prometheus can hold it (schema −4 to 8; a finer scale is downscaled to 8 exactly, a
//! coarser one than −4 stays classic buckets). The messages are written with prost's field
//! encoders straight into the response buffer: no message structs, one scratch buffer per nesting
//! level, reused across series.

use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};

use super::walk::{Family, Native, Sample, SampleKind, Sink, Value};
use crate::model::exp::{Buckets, ExpHistogram};
use crate::model::{Exemplar, MetricKind};
use crate::store;
use crate::util::hex;
use crate::util::labels::unescape_label_value;

/// The `Content-Type` of protobuf responses, exact and complete, as Prometheus 3 parses it.
pub const CONTENT_TYPE: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

/// Finest native-histogram schema Prometheus stores.
pub const MAX_SCHEMA: i32 = 8;
/// Coarsest native-histogram schema Prometheus stores.
pub const MIN_SCHEMA: i32 = -4;

/// Bytes reserved for a family's length prefix: a varint of up to 5 bytes holds any length below
/// 32 GiB.
const PREFIX: usize = 5;

/// `io.prometheus.client.MetricType`.
fn metric_type(kind: MetricKind) -> u64 {
    match kind {
        MetricKind::Counter => 0,
        MetricKind::Gauge | MetricKind::Info => 1,
        MetricKind::Summary => 2,
        MetricKind::Histogram => 4,
    }
}

/// The protobuf encoder: appends delimited `MetricFamily` messages to `out`.
#[derive(Debug)]
pub struct Protobuf<'o> {
    out: &'o mut Vec<u8>,
    /// Where the current family's length prefix goes in `out`: the family is written in place
    /// after [`PREFIX`] reserved bytes, and the prefix is put in once its length is known.
    family: Option<usize>,
    /// Whether `family` has at least one metric (an empty family is not written).
    has_metrics: bool,
    kind: MetricKind,
    /// The current series.
    series: Series,
    /// Scratch buffers for nested messages, reused.
    metric: Vec<u8>,
    inner: Vec<u8>,
    leaf: Vec<u8>,
}

/// What a series' samples add up to.
#[derive(Debug, Default)]
struct Series {
    /// The rendered label set (`name="escaped value",…`), copied into a reused buffer.
    labels: Vec<u8>,
    value: Option<f64>,
    exemplar: Option<Exemplar>,
    buckets: Vec<(f64, u64, Option<Exemplar>)>,
    count: Option<u64>,
    sum: Option<f64>,
    quantiles: Vec<(f64, f64)>,
    native: Option<ExpHistogram>,
    /// When the series' stream started (Unix epoch nanoseconds; 0: unknown), written as the
    /// `created_timestamp` of counters, histograms and summaries.
    start: u64,
}

impl<'o> Protobuf<'o> {
    /// Appends to `out`.
    pub fn new(out: &'o mut Vec<u8>) -> Self {
        Protobuf {
            out,
            family: None,
            has_metrics: false,
            kind: MetricKind::Gauge,
            series: Series::default(),
            metric: Vec::new(),
            inner: Vec::new(),
            leaf: Vec::new(),
        }
    }

    /// Writes the last family; call once the walk is done.
    pub fn finish(mut self) {
        self.flush_family();
    }

    /// Ends the current family: puts its length prefix in front of it (moving it back over the
    /// reserved bytes the prefix does not need), or drops it when it has no metrics.
    fn flush_family(&mut self) {
        let Some(start) = self.family.take() else { return };
        if !self.has_metrics {
            self.out.truncate(start);
            return;
        }
        let body = start + PREFIX;
        let len = self.out.len() - body;
        let mut prefix = Vec::with_capacity(PREFIX);
        encode_varint(len as u64, &mut prefix);
        let shift = PREFIX - prefix.len();
        self.out[start..start + prefix.len()].copy_from_slice(&prefix);
        if shift > 0 {
            self.out.copy_within(body.., start + prefix.len());
            self.out.truncate(self.out.len() - shift);
        }
        self.has_metrics = false;
    }

    /// The `Metric` of the current series, appended to the family as field 4.
    fn write_metric(&mut self) {
        let s = &self.series;
        let m = &mut self.metric;
        m.clear();
        for (name, value) in store::label_pairs(&s.labels) {
            if value.contains(&b'\\') {
                self.leaf.clear();
                unescape_label_value(value, &mut self.leaf);
                label_pair(1, name, &self.leaf, m);
            } else {
                label_pair(1, name, value, m);
            }
        }
        let inner = &mut self.inner;
        inner.clear();
        match self.kind {
            MetricKind::Gauge | MetricKind::Info => {
                double(1, s.value.unwrap_or(0.0), inner);
                message(2, inner, m);
            }
            MetricKind::Counter => {
                double(1, s.value.unwrap_or(0.0), inner);
                if let Some(e) = &s.exemplar {
                    exemplar(2, e, inner);
                }
                timestamp(3, s.start, inner);
                message(3, inner, m);
            }
            MetricKind::Summary => {
                uint64(1, s.count.unwrap_or(0), inner);
                double(2, s.sum.unwrap_or(f64::NAN), inner);
                for (q, v) in &s.quantiles {
                    self.leaf.clear();
                    double(1, *q, &mut self.leaf);
                    double(2, *v, &mut self.leaf);
                    message(3, &self.leaf, inner);
                }
                timestamp(4, s.start, inner);
                message(4, inner, m);
            }
            MetricKind::Histogram => {
                match &s.native {
                    Some(h) => native_histogram(h, &s.buckets, inner, &mut self.leaf),
                    None => classic_histogram(s, inner, &mut self.leaf),
                }
                timestamp(15, s.start, inner);
                message(7, inner, m);
            }
        }
        message(4, m, self.out);
        self.has_metrics = true;
    }
}

impl Sink for Protobuf<'_> {
    fn family(&mut self, family: &Family<'_>) {
        self.flush_family();
        self.family = Some(self.out.len());
        self.out.extend_from_slice(&[0; PREFIX]);
        self.kind = family.kind;
        let suffix = match family.kind {
            MetricKind::Counter => "_total",
            MetricKind::Info => "_info",
            _ => "",
        };
        let f = &mut *self.out;
        encode_key(1, WireType::LengthDelimited, f);
        encode_varint((family.name.len() + suffix.len()) as u64, f);
        f.extend_from_slice(family.name.as_bytes());
        f.extend_from_slice(suffix.as_bytes());
        if !family.help.is_empty() {
            string(2, family.help, f);
        }
        uint64(3, metric_type(family.kind), f);
        if !family.unit.is_empty() {
            string(5, family.unit, f);
        }
    }

    fn series(&mut self, labels: &[u8]) -> bool {
        let s = &mut self.series;
        s.labels.clear();
        s.labels.extend_from_slice(labels);
        s.value = None;
        s.exemplar = None;
        s.buckets.clear();
        s.count = None;
        s.sum = None;
        s.quantiles.clear();
        s.native = None;
        s.start = 0;
        true
    }

    fn start(&mut self, unix_nano: u64) {
        self.series.start = unix_nano;
    }

    fn sample(&mut self, s: &Sample<'_>) {
        let value = s.value;
        let series = &mut self.series;
        match s.kind {
            SampleKind::Value | SampleKind::Total | SampleKind::Info => {
                series.value = Some(value.as_f64());
                series.exemplar = s.exemplar.copied();
            }
            SampleKind::Bucket(le) => {
                let count = match value {
                    Value::Int(c) => c,
                    Value::Float(c) => c as u64,
                };
                series.buckets.push((le, count, s.exemplar.copied()));
            }
            SampleKind::Count => {
                series.count = Some(match value {
                    Value::Int(c) => c,
                    Value::Float(c) => c as u64,
                });
            }
            SampleKind::Sum => series.sum = Some(value.as_f64()),
            SampleKind::Quantile(q) => series.quantiles.push((q, value.as_f64())),
        }
    }

    fn end_series(&mut self) {
        self.write_metric();
    }

    fn native(&mut self, _name: &str, _labels: &[u8], histogram: &ExpHistogram) -> Native {
        if histogram.scale < MIN_SCHEMA {
            return Native::Declined;
        }
        // The classic buckets go along, with their exemplars, as client_golang writes a histogram
        // that has both: a scraper without native histograms reads those, and Prometheus before
        // 2.47 takes a native histogram's exemplars from them (later ones from field 16). The
        // walk writes them: derived from this histogram, or a histogram's own (`both`).
        self.series.native = Some(histogram.with_max_scale(MAX_SCHEMA));
        Native::Beside
    }
}

/// A classic histogram: cumulative buckets (the `+Inf` one included, for its exemplar), count
/// and sum (`NaN` when the walk left them out: an unknown or negative sum).
fn classic_histogram(s: &Series, out: &mut Vec<u8>, scratch: &mut Vec<u8>) {
    let total = s.buckets.last().map_or(0, |b| b.1);
    uint64(1, s.count.unwrap_or(total), out);
    double(2, s.sum.unwrap_or(f64::NAN), out);
    classic_buckets(&s.buckets, out, scratch);
}

/// Cumulative `Bucket`s (field 3), each with its exemplar.
fn classic_buckets(buckets: &[(f64, u64, Option<Exemplar>)], out: &mut Vec<u8>, scratch: &mut Vec<u8>) {
    for (le, count, e) in buckets {
        scratch.clear();
        uint64(1, *count, scratch);
        double(2, *le, scratch);
        if let Some(e) = e {
            exemplar(3, e, scratch);
        }
        message(3, scratch, out);
    }
}

/// A native histogram from an exponential one at a schema Prometheus holds. OTLP bucket `i` of a
/// side holds `(base^i, base^(i+1)]`; Prometheus's bucket `i` holds `(base^(i-1), base^i]`, so
/// indexes shift by one. Each side is written as spans of non-empty buckets (runs of empty
/// buckets longer than two start a new span) and delta-encoded counts.
fn native_histogram(
    h: &ExpHistogram,
    classic: &[(f64, u64, Option<Exemplar>)],
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) {
    uint64(1, h.count, out);
    double(2, h.sum, out);
    classic_buckets(classic, out, scratch);
    sint(5, i64::from(h.scale), out);
    double(6, h.zero_threshold, out);
    uint64(7, h.zero_count, out);
    side(&h.negative, 9, 10, out, scratch);
    side(&h.positive, 12, 13, out, scratch);
    // At most one per bucket (the zero bucket's included), each within its bucket.
    for (_, e) in &h.exemplars {
        exemplar(16, e, out);
    }
}

/// One side's `BucketSpan`s (field `span_tag`) and deltas (packed, field `delta_tag`).
fn side(b: &Buckets, span_tag: u32, delta_tag: u32, out: &mut Vec<u8>, scratch: &mut Vec<u8>) {
    let (spans, deltas) = native_spans(b);
    for (offset, length) in spans {
        scratch.clear();
        sint(1, i64::from(offset), scratch);
        uint64(2, u64::from(length), scratch);
        message(span_tag, scratch, out);
    }
    if !deltas.is_empty() {
        scratch.clear();
        for d in &deltas {
            encode_varint(zigzag(*d), scratch);
        }
        message(delta_tag, scratch, out);
    }
}

/// One side of an exponential histogram as a native histogram's spans `(offset, length)` and
/// delta-encoded counts, in Prometheus's indexing (OTLP bucket `i` holds `(base^i, base^(i+1)]`,
/// Prometheus's bucket `i` holds `(base^(i-1), base^i]`: indexes shift by one). Runs of more than
/// two empty buckets start a new span; shorter ones are written as zeros. Shared by this encoder
/// and remote write's `Histogram`.
pub fn native_spans(b: &Buckets) -> (Vec<(i32, u32)>, Vec<i64>) {
    let mut spans: Vec<(i32, u32)> = Vec::new();
    let mut deltas = Vec::new();
    let mut prev = 0i64;
    // The index after the last bucket written (Prometheus indexing).
    let mut next_index: Option<i32> = None;
    let mut i = 0usize;
    while i < b.counts.len() {
        if b.counts[i] == 0 {
            i += 1;
            continue;
        }
        let index = b.offset + i as i32 + 1;
        match (next_index, spans.last_mut()) {
            // Close enough to the last span: extend it over the empty buckets between.
            (Some(next), Some(last)) if index - next <= 2 => {
                for _ in next..index {
                    deltas.push(-prev);
                    prev = 0;
                }
                last.1 += (index - next) as u32 + 1;
            }
            (Some(next), _) => spans.push((index - next, 1)),
            (None, _) => spans.push((index, 1)),
        }
        let c = b.counts[i] as i64;
        deltas.push(c - prev);
        prev = c;
        next_index = Some(index + 1);
        i += 1;
    }
    (spans, deltas)
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// An `Exemplar` as field `tag`: `trace_id` and `span_id` labels, value and timestamp; written
/// in place (its length is known from its parts).
fn exemplar(tag: u32, e: &Exemplar, out: &mut Vec<u8>) {
    let mut trace = [0u8; 32];
    for (i, b) in e.trace_id.iter().enumerate() {
        trace[2 * i..2 * i + 2].copy_from_slice(&hex::pair(*b));
    }
    let mut span = [0u8; 16];
    for (i, b) in e.span_id.iter().enumerate() {
        span[2 * i..2 * i + 2].copy_from_slice(&hex::pair(*b));
    }
    let ts_len = timestamp_len(e.time_unix_nano);
    let len = label_pair_len(b"trace_id", &trace) + label_pair_len(b"span_id", &span) + 9 + 2 + ts_len;
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(len as u64, out);
    label_pair(1, b"trace_id", &trace, out);
    label_pair(1, b"span_id", &span, out);
    double(2, e.value, out);
    encode_key(3, WireType::LengthDelimited, out);
    encode_varint(ts_len as u64, out);
    timestamp_fields(e.time_unix_nano, out);
}

/// A `google.protobuf.Timestamp` of `unix_nano` as field `tag` (the `created_timestamp` of
/// `Counter`, `Summary` and `Histogram`); nothing when 0 (unknown).
fn timestamp(tag: u32, unix_nano: u64, out: &mut Vec<u8>) {
    if unix_nano == 0 {
        return;
    }
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(timestamp_len(unix_nano) as u64, out);
    timestamp_fields(unix_nano, out);
}

/// Bytes the fields of a `google.protobuf.Timestamp` of `unix_nano` take (seconds and nanos, each
/// left out when 0).
fn timestamp_len(unix_nano: u64) -> usize {
    let (secs, nanos) = (unix_nano / 1_000_000_000, unix_nano % 1_000_000_000);
    (if secs != 0 { 1 + encoded_len_varint(secs) } else { 0 })
        + if nanos != 0 { 1 + encoded_len_varint(nanos) } else { 0 }
}

/// The fields of a `google.protobuf.Timestamp` of `unix_nano` ([`timestamp_len`] bytes).
fn timestamp_fields(unix_nano: u64, out: &mut Vec<u8>) {
    let (secs, nanos) = (unix_nano / 1_000_000_000, unix_nano % 1_000_000_000);
    if secs != 0 {
        encode_key(1, WireType::Varint, out);
        encode_varint(secs, out);
    }
    if nanos != 0 {
        encode_key(2, WireType::Varint, out);
        encode_varint(nanos, out);
    }
}

/// Bytes a `LabelPair` field takes, key and length included.
fn label_pair_len(name: &[u8], value: &[u8]) -> usize {
    let inner =
        2 + encoded_len_varint(name.len() as u64) + name.len() + encoded_len_varint(value.len() as u64) + value.len();
    1 + encoded_len_varint(inner as u64) + inner
}

/// A `LabelPair` as field `tag`, written in place.
fn label_pair(tag: u32, name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    let inner =
        2 + encoded_len_varint(name.len() as u64) + name.len() + encoded_len_varint(value.len() as u64) + value.len();
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(inner as u64, out);
    bytes_field(1, name, out);
    bytes_field(2, value, out);
}

/// A nested message (or packed field) `body` as field `tag`.
fn message(tag: u32, body: &[u8], out: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, out);
    out.reserve(encoded_len_varint(body.len() as u64) + body.len());
    encode_varint(body.len() as u64, out);
    out.extend_from_slice(body);
}

fn bytes_field(tag: u32, v: &[u8], out: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(v.len() as u64, out);
    out.extend_from_slice(v);
}

fn string(tag: u32, v: &str, out: &mut Vec<u8>) {
    bytes_field(tag, v.as_bytes(), out);
}

/// A `double` field; written even when zero (proto2 optional fields in client_model).
fn double(tag: u32, v: f64, out: &mut Vec<u8>) {
    encode_key(tag, WireType::SixtyFourBit, out);
    out.extend_from_slice(&v.to_le_bytes());
}

fn uint64(tag: u32, v: u64, out: &mut Vec<u8>) {
    encode_key(tag, WireType::Varint, out);
    encode_varint(v, out);
}

fn sint(tag: u32, v: i64, out: &mut Vec<u8>) {
    encode_key(tag, WireType::Varint, out);
    encode_varint(zigzag(v), out);
}
