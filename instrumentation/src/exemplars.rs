//! Exemplars for the service's own metrics, which the OpenTelemetry Rust SDK 0.33 does not record
//! (its data points carry an always-empty, crate-private exemplar list).
//!
//! What comes in: every measurement made through the instruments of [`ExemplarMeterProvider`]
//! (what [`crate::meter()`], [`crate::Guard::meter`] and the metrics-from-events layer use). Each
//! is passed on to the SDK instrument unchanged and, when the [`ExemplarFilter`] lets it through,
//! offered to an exemplar reservoir of its instrument and attribute set, following the
//! specification's defaults:
//! - explicit-bucket histograms: one exemplar per bucket, the last measurement that fell in it
//!   (the `AlignedHistogramBucketExemplarReservoir`);
//! - counters: a `SimpleFixedSizeExemplarReservoir` of size one — a uniform sample of the
//!   measurements since the previous collection (the count of measurements seen is reset at each
//!   collection; the sampled exemplar is kept until replaced, as the points are cumulative).
//!
//! Gauges and up-down counters are passed through without exemplars.
//!
//! Reservoirs live in shards: each thread writes to one shard chosen once per thread, so the hot
//! path never takes a lock shared by all threads. The number of series with reservoirs is bounded
//! per shard ([`MAX_SERIES_PER_SHARD`]); beyond it measurements still count, they just carry no
//! exemplar.
//!
//! What goes out: `ExemplarStore::attach` turns an SDK `ResourceMetrics` into the OTLP request
//! and fills in the exemplars of the matching data points; the OTLP exporter of this crate
//! (`crate::otlp`) sends that.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::metrics::{
    AsyncInstrumentBuilder, BoundSyncInstrument, Counter, Gauge, Histogram, HistogramBuilder, InstrumentBuilder,
    InstrumentProvider, Meter, MeterProvider, ObservableCounter, ObservableGauge, ObservableUpDownCounter,
    SyncInstrument, UpDownCounter,
};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::{Exemplar as ProtoExemplar, exemplar, metric};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, Metric, MetricData, ResourceMetrics};

use crate::error::InitError;

/// Which measurements may become exemplars: `always_on`, `always_off` or `trace_based`.
pub const OTEL_METRICS_EXEMPLAR_FILTER: &str = "OTEL_METRICS_EXEMPLAR_FILTER";
/// Default exemplar filter (the specification's default): measurements made while a sampled span
/// is current.
pub const DEFAULT_EXEMPLAR_FILTER: ExemplarFilter = ExemplarFilter::TraceBased;
/// Series (instrument and attribute set) with an exemplar reservoir, per shard.
pub const MAX_SERIES_PER_SHARD: usize = 2000;
/// Default histogram bucket boundaries of the SDK, used when an instrument sets none.
const DEFAULT_BOUNDARIES: &[f64] = &[
    0.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 2500.0, 5000.0, 7500.0, 10000.0,
];

/// The exemplar filter ([`OTEL_METRICS_EXEMPLAR_FILTER`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExemplarFilter {
    /// `always_on`: every measurement is offered to the reservoirs (with the trace and span ids
    /// when a span is current, without them otherwise).
    AlwaysOn,
    /// `always_off`: no exemplars, and no cost beyond one branch per measurement.
    AlwaysOff,
    /// `trace_based`: measurements made while a sampled span is current.
    TraceBased,
}

impl ExemplarFilter {
    /// Parses the value of [`OTEL_METRICS_EXEMPLAR_FILTER`] (`var` names it in the error).
    pub(crate) fn parse(var: &'static str, value: &str) -> Result<Self, InitError> {
        match value.trim().to_ascii_lowercase().as_str() {
            "always_on" => Ok(Self::AlwaysOn),
            "always_off" => Ok(Self::AlwaysOff),
            "trace_based" => Ok(Self::TraceBased),
            _ => Err(InitError::invalid_env(
                var,
                value,
                "expected `always_on`, `always_off` or `trace_based`",
            )),
        }
    }

    /// The trace and span ids to record, `None` when the measurement is not to be sampled.
    #[inline]
    fn admit(self) -> Option<([u8; 16], [u8; 8])> {
        match self {
            Self::AlwaysOff => None,
            Self::AlwaysOn | Self::TraceBased => opentelemetry::Context::map_current(|cx| {
                let span = cx.span();
                let sc = span.span_context();
                if sc.is_valid() && sc.is_sampled() {
                    Some((sc.trace_id().to_bytes(), sc.span_id().to_bytes()))
                } else if self == Self::AlwaysOn {
                    Some(([0; 16], [0; 8]))
                } else {
                    None
                }
            }),
        }
    }
}

/// A measured value, as the instrument recorded it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Num {
    U64(u64),
    F64(f64),
}

impl Num {
    fn as_f64(self) -> f64 {
        match self {
            Num::U64(v) => v as f64,
            Num::F64(v) => v,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Sampled {
    value: Num,
    time: SystemTime,
    trace_id: [u8; 16],
    span_id: [u8; 8],
}

impl Sampled {
    fn to_proto(self) -> ProtoExemplar {
        let is_set = |b: &[u8]| b.iter().any(|&x| x != 0);
        ProtoExemplar {
            filtered_attributes: Vec::new(),
            time_unix_nano: self
                .time
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0),
            span_id: if is_set(&self.span_id) {
                self.span_id.to_vec()
            } else {
                Vec::new()
            },
            trace_id: if is_set(&self.trace_id) {
                self.trace_id.to_vec()
            } else {
                Vec::new()
            },
            value: Some(match self.value {
                Num::U64(v) => exemplar::Value::AsInt(i64::try_from(v).unwrap_or(i64::MAX)),
                Num::F64(v) => exemplar::Value::AsDouble(v),
            }),
        }
    }
}

/// One series' reservoir in one shard.
#[derive(Debug)]
enum Reservoir {
    /// Size-one simple fixed-size reservoir: `seen` measurements since the last collection.
    Counter { seen: u64, sampled: Option<Sampled> },
    /// One slot per bucket (bounds.len() + 1), the last measurement in each.
    Histogram { slots: Vec<Option<Sampled>> },
}

#[derive(Debug, Clone)]
enum Kind {
    Counter,
    Histogram(Arc<[f64]>),
}

/// Index of the bucket of `v` for upper-inclusive `bounds` (as the SDK and Prometheus count).
fn bucket_of(bounds: &[f64], v: f64) -> usize {
    bounds.partition_point(|&b| b < v)
}

/// One series of one shard: instrument, sorted attributes and reservoir.
#[derive(Debug)]
struct Series {
    id: u32,
    attrs: Vec<KeyValue>,
    reservoir: Reservoir,
}

/// Series keyed by the hash of (instrument, sorted attributes), so that a measurement finds its
/// series without building an owned key; equal hashes share the bucket's list.
#[derive(Debug, Default)]
struct Shard {
    series: HashMap<u64, Vec<Series>, BuildHasherDefault<PreHashed>>,
    len: usize,
    rng: u64,
}

/// The `Hasher` of keys that are hashes already.
#[derive(Default)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(FX_SEED);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

/// A fast non-cryptographic hasher (the rustc `FxHasher` mix) for attribute sets.
#[derive(Default)]
pub(crate) struct FxHasher(u64);

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(FX_SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }
    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }
    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }
    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// Attribute sets up to this size are sorted in a stack buffer (no allocation per measurement).
const INLINE_ATTRIBUTES: usize = 16;

impl Shard {
    fn next_random(&mut self) -> u64 {
        // xorshift64*: cheap, and good enough to pick a sample uniformly.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[derive(Debug)]
struct InstrumentInfo {
    scope: String,
    name: String,
}

/// The exemplar reservoirs of one meter provider; see the module documentation.
pub(crate) struct ExemplarStore {
    filter: ExemplarFilter,
    shards: Box<[Mutex<Shard>]>,
    instruments: Mutex<Vec<InstrumentInfo>>,
}

impl fmt::Debug for ExemplarStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExemplarStore")
            .field("filter", &self.filter)
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);
thread_local! {
    static THREAD_INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// A small number for the calling thread, assigned round-robin on first use: which shard of a
/// sharded structure it writes to.
pub(crate) fn thread_index() -> usize {
    THREAD_INDEX.with(|i| {
        let v = i.get();
        if v != usize::MAX {
            return v;
        }
        let v = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
        i.set(v);
        v
    })
}

fn seed() -> u64 {
    RandomState::new().hash_one(thread_index()) | 1
}

/// Sorts `order` (indices into `attributes`) by key and removes duplicate keys; returns the kept
/// prefix.
fn sorted_order<'o>(attributes: &[KeyValue], order: &'o mut [usize]) -> &'o [usize] {
    order.sort_unstable_by(|&a, &b| attributes[a].key.cmp(&attributes[b].key));
    let mut kept = 0;
    for i in 0..order.len() {
        if kept == 0 || attributes[order[kept - 1]].key != attributes[order[i]].key {
            order[kept] = order[i];
            kept += 1;
        }
    }
    &order[..kept]
}

/// `attributes` sorted by key without duplicate keys, as [`ExemplarStore::offer`] keys series.
fn sorted_attributes(attributes: &[KeyValue]) -> Vec<KeyValue> {
    let mut order: Vec<usize> = (0..attributes.len()).collect();
    sorted_order(attributes, &mut order)
        .iter()
        .map(|&i| attributes[i].clone())
        .collect()
}

/// The key of a series (instrument `id`, sorted attributes) in a shard.
fn series_hash<'a>(id: u32, sorted: impl Iterator<Item = &'a KeyValue>) -> u64 {
    let mut hasher = FxHasher(u64::from(id));
    for kv in sorted {
        kv.hash(&mut hasher);
    }
    hasher.finish()
}

impl ExemplarStore {
    /// A store with one shard per available CPU, times two (at least 4, at most 128).
    pub(crate) fn new(filter: ExemplarFilter) -> Self {
        let cpus = std::thread::available_parallelism().map_or(4, |n| n.get());
        let n = (cpus * 2).clamp(4, 128);
        Self {
            filter,
            shards: (0..n)
                .map(|_| {
                    Mutex::new(Shard {
                        series: HashMap::default(),
                        len: 0,
                        rng: seed(),
                    })
                })
                .collect(),
            instruments: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn filter(&self) -> ExemplarFilter {
        self.filter
    }

    fn register(&self, scope: &str, name: &str) -> u32 {
        let mut list = self.instruments.lock().unwrap_or_else(PoisonError::into_inner);
        list.push(InstrumentInfo {
            scope: scope.to_owned(),
            name: name.to_owned(),
        });
        u32::try_from(list.len() - 1).unwrap_or(u32::MAX)
    }

    #[inline]
    fn offer(&self, id: u32, kind: &Kind, value: Num, attributes: &[KeyValue]) {
        let Some(ids) = self.filter.admit() else {
            return;
        };
        // The attributes' order, sorted by key with duplicates removed, without allocating.
        let mut inline = [0usize; INLINE_ATTRIBUTES];
        let mut heap = Vec::new();
        let order: &mut [usize] = if attributes.len() <= INLINE_ATTRIBUTES {
            let order = &mut inline[..attributes.len()];
            for (i, slot) in order.iter_mut().enumerate() {
                *slot = i;
            }
            order
        } else {
            heap.extend(0..attributes.len());
            &mut heap
        };
        let order = sorted_order(attributes, order);
        let hash = series_hash(id, order.iter().map(|&i| &attributes[i]));
        self.offer_series(id, kind, value, ids, hash, order.len(), |k| &attributes[order[k]]);
    }

    /// [`Self::offer`] for attributes already sorted and deduplicated (see [`sorted_attributes`])
    /// whose [`series_hash`] is `hash`: what a bound instrument computed once.
    fn offer_sorted(&self, id: u32, kind: &Kind, value: Num, sorted: &[KeyValue], hash: u64) {
        let Some(ids) = self.filter.admit() else {
            return;
        };
        self.offer_series(id, kind, value, ids, hash, sorted.len(), |k| &sorted[k]);
    }

    /// Offers a measurement to the reservoir of the series `hash` whose `len` sorted attributes
    /// `attr(0..len)` gives.
    #[allow(clippy::too_many_arguments)]
    fn offer_series<'a>(
        &self,
        id: u32,
        kind: &Kind,
        value: Num,
        (trace_id, span_id): ([u8; 16], [u8; 8]),
        hash: u64,
        len: usize,
        attr: impl Fn(usize) -> &'a KeyValue,
    ) {
        let sampled = Sampled {
            value,
            time: SystemTime::now(),
            trace_id,
            span_id,
        };
        let same =
            |s: &Series| s.id == id && s.attrs.len() == len && s.attrs.iter().enumerate().all(|(k, a)| a == attr(k));
        let shard = &self.shards[thread_index() % self.shards.len()];
        let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
        let random = shard.next_random();
        let found = shard.series.get(&hash).and_then(|bucket| bucket.iter().position(same));
        let position = match found {
            Some(p) => p,
            None => {
                if shard.len >= MAX_SERIES_PER_SHARD {
                    return;
                }
                let reservoir = match kind {
                    Kind::Counter => Reservoir::Counter { seen: 0, sampled: None },
                    Kind::Histogram(bounds) => Reservoir::Histogram {
                        slots: vec![None; bounds.len() + 1],
                    },
                };
                let series = Series {
                    id,
                    attrs: (0..len).map(|k| attr(k).clone()).collect(),
                    reservoir,
                };
                shard.len += 1;
                let bucket = shard.series.entry(hash).or_default();
                bucket.push(series);
                bucket.len() - 1
            }
        };
        let Some(Series { reservoir, .. }) = shard.series.get_mut(&hash).and_then(|b| b.get_mut(position)) else {
            return;
        };
        match (reservoir, kind) {
            (Reservoir::Counter { seen, sampled: slot }, _) => {
                *seen += 1;
                // Reservoir sampling with one cell: the n-th measurement replaces it with
                // probability 1/n.
                if *seen == 1 || random % *seen == 0 {
                    *slot = Some(sampled);
                }
            }
            (Reservoir::Histogram { slots }, Kind::Histogram(bounds)) => {
                let i = bucket_of(bounds, value.as_f64());
                if let Some(s) = slots.get_mut(i) {
                    *s = Some(sampled);
                }
            }
            (Reservoir::Histogram { .. }, Kind::Counter) => {}
        }
    }

    /// Collects every reservoir (resetting the counters' measurement counts), keyed by scope
    /// name, instrument name and sorted attributes.
    fn collect(&self) -> HashMap<(String, String), HashMap<Vec<KeyValue>, Collected>> {
        let names: Vec<(String, String)> = self
            .instruments
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|i| (i.scope.clone(), i.name.clone()))
            .collect();
        let mut out: HashMap<(String, String), HashMap<Vec<KeyValue>, Collected>> = HashMap::new();
        let mut pick = seed();
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            for Series { id, attrs, reservoir } in shard.series.values_mut().flatten() {
                let Some(name) = names.get(*id as usize) else {
                    continue;
                };
                let entry = out.entry(name.clone()).or_default();
                match reservoir {
                    Reservoir::Counter { seen, sampled } => {
                        let Some(s) = *sampled else { continue };
                        let this_seen = std::mem::take(seen);
                        let c = entry.entry(attrs.clone()).or_insert(Collected::Counter {
                            total_seen: 0,
                            sampled: None,
                        });
                        if let Collected::Counter { total_seen, sampled } = c {
                            // Merge per-shard samples: a shard's sample stands for the
                            // measurements it saw, so pick it with probability seen / total;
                            // with nothing new, keep the most recent one.
                            *total_seen += this_seen;
                            let replace = match sampled {
                                None => true,
                                Some(prev) if this_seen == 0 => *total_seen == 0 && s.time > prev.time,
                                Some(_) => {
                                    pick ^= pick << 13;
                                    pick ^= pick >> 7;
                                    pick ^= pick << 17;
                                    pick % *total_seen < this_seen
                                }
                            };
                            if replace {
                                *sampled = Some(s);
                            }
                        }
                    }
                    Reservoir::Histogram { slots } => {
                        let c = entry.entry(attrs.clone()).or_insert(Collected::Histogram(Vec::new()));
                        if let Collected::Histogram(list) = c {
                            list.extend(slots.iter().flatten().copied());
                        }
                    }
                }
            }
        }
        out
    }

    /// The OTLP request for `metrics`, with the exemplars of this store on the matching counter
    /// and histogram data points. Histogram exemplars are assigned to the point's own buckets
    /// (the last one per bucket).
    pub(crate) fn attach(&self, metrics: &ResourceMetrics) -> ExportMetricsServiceRequest {
        let mut request = ExportMetricsServiceRequest::from(metrics);
        if self.filter == ExemplarFilter::AlwaysOff {
            return request;
        }
        let collected = self.collect();
        if collected.is_empty() {
            return request;
        }
        let Some(rm) = request.resource_metrics.first_mut() else {
            return request;
        };
        for (sdk_scope, proto_scope) in metrics.scope_metrics().zip(rm.scope_metrics.iter_mut()) {
            let scope_name = sdk_scope.scope().name();
            for (sdk_metric, proto_metric) in sdk_scope.metrics().zip(proto_scope.metrics.iter_mut()) {
                let Some(series) = collected.get(&(scope_name.to_owned(), sdk_metric.name().to_owned())) else {
                    continue;
                };
                let point_attrs = point_attributes(sdk_metric);
                match proto_metric.data.as_mut() {
                    Some(metric::Data::Sum(sum)) => {
                        for (attrs, dp) in point_attrs.iter().zip(sum.data_points.iter_mut()) {
                            if let Some(Collected::Counter { sampled: Some(s), .. }) = series.get(attrs) {
                                dp.exemplars = vec![s.to_proto()];
                            }
                        }
                    }
                    Some(metric::Data::Histogram(h)) => {
                        for (attrs, dp) in point_attrs.iter().zip(h.data_points.iter_mut()) {
                            let Some(Collected::Histogram(list)) = series.get(attrs) else {
                                continue;
                            };
                            let mut per_bucket: Vec<Option<Sampled>> = vec![None; dp.explicit_bounds.len() + 1];
                            for s in list {
                                let i = bucket_of(&dp.explicit_bounds, s.value.as_f64());
                                if let Some(slot) = per_bucket.get_mut(i)
                                    && slot.is_none_or(|prev| prev.time < s.time)
                                {
                                    *slot = Some(*s);
                                }
                            }
                            dp.exemplars = per_bucket.into_iter().flatten().map(Sampled::to_proto).collect();
                        }
                    }
                    _ => {}
                }
            }
        }
        request
    }
}

#[derive(Debug)]
enum Collected {
    Counter { total_seen: u64, sampled: Option<Sampled> },
    Histogram(Vec<Sampled>),
}

/// The (sorted) attributes of each data point of `metric`, in order.
fn point_attributes(metric: &Metric) -> Vec<Vec<KeyValue>> {
    fn of<T>(data: &MetricData<T>) -> Vec<Vec<KeyValue>> {
        match data {
            MetricData::Sum(s) => s.data_points().map(|p| p.attributes().cloned().collect()).collect(),
            MetricData::Histogram(h) => h.data_points().map(|p| p.attributes().cloned().collect()).collect(),
            _ => Vec::new(),
        }
    }
    let mut out = match metric.data() {
        AggregatedMetrics::F64(d) => of(d),
        AggregatedMetrics::U64(d) => of(d),
        AggregatedMetrics::I64(d) => of(d),
    };
    for attrs in &mut out {
        attrs.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    }
    out
}

/// A [`MeterProvider`] whose counters and histograms also sample exemplars into the provider's
/// exemplar store; everything else is the wrapped SDK provider's. [`crate::meter()`],
/// [`crate::Guard::meter`] and the metrics-from-events layer use it.
#[derive(Clone)]
pub struct ExemplarMeterProvider {
    inner: SdkMeterProvider,
    store: Arc<ExemplarStore>,
}

impl fmt::Debug for ExemplarMeterProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExemplarMeterProvider")
            .field("filter", &self.store.filter)
            .finish_non_exhaustive()
    }
}

impl ExemplarMeterProvider {
    pub(crate) fn new(inner: SdkMeterProvider, store: Arc<ExemplarStore>) -> Self {
        Self { inner, store }
    }

    /// The exemplar filter in effect.
    pub fn exemplar_filter(&self) -> ExemplarFilter {
        self.store.filter()
    }

    /// The wrapped SDK meter provider (its instruments record no exemplars).
    pub fn sdk_provider(&self) -> &SdkMeterProvider {
        &self.inner
    }
}

impl MeterProvider for ExemplarMeterProvider {
    fn meter_with_scope(&self, scope: InstrumentationScope) -> Meter {
        let scope_name = scope.name().to_owned();
        let inner = self.inner.meter_with_scope(scope);
        if self.store.filter == ExemplarFilter::AlwaysOff {
            return inner;
        }
        Meter::new(Arc::new(ExemplarInstruments {
            inner,
            scope_name,
            store: Arc::clone(&self.store),
        }))
    }
}

struct ExemplarInstruments {
    inner: Meter,
    scope_name: String,
    store: Arc<ExemplarStore>,
}

/// How a wrapped instrument records into the SDK's.
trait Record<T>: Send + Sync + 'static {
    fn record(&self, value: T, attributes: &[KeyValue]);
    /// The SDK instrument bound to `attributes` (see [`SyncInstrument::bind`]).
    fn bind(&self, attributes: &[KeyValue]) -> Box<dyn Fn(T) + Send + Sync>;
}
impl<T: 'static> Record<T> for Counter<T> {
    #[inline]
    fn record(&self, value: T, attributes: &[KeyValue]) {
        self.add(value, attributes);
    }
    fn bind(&self, attributes: &[KeyValue]) -> Box<dyn Fn(T) + Send + Sync> {
        let bound = Counter::bind(self, attributes);
        Box::new(move |v| bound.add(v))
    }
}
impl<T: 'static> Record<T> for Histogram<T> {
    #[inline]
    fn record(&self, value: T, attributes: &[KeyValue]) {
        Histogram::record(self, value, attributes);
    }
    fn bind(&self, attributes: &[KeyValue]) -> Box<dyn Fn(T) + Send + Sync> {
        let bound = Histogram::bind(self, attributes);
        Box::new(move |v| bound.record(v))
    }
}

struct Sampling<I> {
    inner: I,
    store: Arc<ExemplarStore>,
    id: u32,
    kind: Kind,
}

impl<T, I> SyncInstrument<T> for Sampling<I>
where
    T: Copy + Into<NumOf> + 'static,
    I: Record<T>,
{
    #[inline]
    fn measure(&self, measurement: T, attributes: &[KeyValue]) {
        self.inner.record(measurement, attributes);
        self.store.offer(self.id, &self.kind, measurement.into().0, attributes);
    }

    /// The SDK instrument's bound handle, and exemplars offered with the bound attributes: a
    /// measurement through it is what [`Self::measure`] with those attributes does, minus the
    /// SDK's attribute lookup.
    fn bind(&self, attributes: &[KeyValue]) -> Box<dyn BoundSyncInstrument<T> + Send + Sync> {
        let sorted = sorted_attributes(attributes);
        Box::new(BoundSampling {
            inner: self.inner.bind(attributes),
            store: Arc::clone(&self.store),
            id: self.id,
            kind: self.kind.clone(),
            hash: series_hash(self.id, sorted.iter()),
            sorted,
        })
    }
}

/// A [`Sampling`] instrument bound to one attribute set.
struct BoundSampling<T> {
    inner: Box<dyn Fn(T) + Send + Sync>,
    store: Arc<ExemplarStore>,
    id: u32,
    kind: Kind,
    /// The bound attributes, sorted and deduplicated once, and their series hash.
    sorted: Vec<KeyValue>,
    hash: u64,
}

impl<T> BoundSyncInstrument<T> for BoundSampling<T>
where
    T: Copy + Into<NumOf> + 'static,
{
    #[inline]
    fn measure(&self, measurement: T) {
        (self.inner)(measurement);
        self.store
            .offer_sorted(self.id, &self.kind, measurement.into().0, &self.sorted, self.hash);
    }
}

/// Conversion of `u64`/`f64` measurements to [`Num`].
struct NumOf(Num);
impl From<u64> for NumOf {
    fn from(v: u64) -> Self {
        NumOf(Num::U64(v))
    }
}
impl From<f64> for NumOf {
    fn from(v: f64) -> Self {
        NumOf(Num::F64(v))
    }
}

fn copy_meta<'a, T>(
    description: &Option<Cow<'static, str>>,
    unit: &Option<Cow<'static, str>>,
    mut b: InstrumentBuilder<'a, T>,
) -> InstrumentBuilder<'a, T> {
    if let Some(d) = description {
        b = b.with_description(d.clone());
    }
    if let Some(u) = unit {
        b = b.with_unit(u.clone());
    }
    b
}

macro_rules! delegate_sync {
    ($method:ident, $inst:ty) => {
        fn $method(&self, b: InstrumentBuilder<'_, $inst>) -> $inst {
            copy_meta(&b.description, &b.unit, self.inner.$method(b.name.clone())).build()
        }
    };
}

macro_rules! delegate_async {
    ($method:ident, $inst:ty, $t:ty) => {
        fn $method(&self, b: AsyncInstrumentBuilder<'_, $inst, $t>) -> $inst {
            let mut inner = self.inner.$method(b.name.clone());
            if let Some(d) = b.description {
                inner = inner.with_description(d);
            }
            if let Some(u) = b.unit {
                inner = inner.with_unit(u);
            }
            inner.callbacks = b.callbacks;
            inner.build()
        }
    };
}

impl ExemplarInstruments {
    fn histogram_bounds(boundaries: &Option<Vec<f64>>) -> Arc<[f64]> {
        match boundaries {
            Some(b) => b.as_slice().into(),
            None => DEFAULT_BOUNDARIES.into(),
        }
    }

    fn wrap<T, I: Record<T>>(&self, name: &str, inner: I, kind: Kind) -> Arc<Sampling<I>> {
        let id = self.store.register(&self.scope_name, name);
        Arc::new(Sampling {
            inner,
            store: Arc::clone(&self.store),
            id,
            kind,
        })
    }
}

impl InstrumentProvider for ExemplarInstruments {
    fn u64_counter(&self, b: InstrumentBuilder<'_, Counter<u64>>) -> Counter<u64> {
        let inner = copy_meta(&b.description, &b.unit, self.inner.u64_counter(b.name.clone())).build();
        Counter::new(self.wrap::<u64, _>(&b.name, inner, Kind::Counter))
    }

    fn f64_counter(&self, b: InstrumentBuilder<'_, Counter<f64>>) -> Counter<f64> {
        let inner = copy_meta(&b.description, &b.unit, self.inner.f64_counter(b.name.clone())).build();
        Counter::new(self.wrap::<f64, _>(&b.name, inner, Kind::Counter))
    }

    fn f64_histogram(&self, b: HistogramBuilder<'_, Histogram<f64>>) -> Histogram<f64> {
        let mut inner = self.inner.f64_histogram(b.name.clone());
        if let Some(d) = &b.description {
            inner = inner.with_description(d.clone());
        }
        if let Some(u) = &b.unit {
            inner = inner.with_unit(u.clone());
        }
        if let Some(bounds) = &b.boundaries {
            inner = inner.with_boundaries(bounds.clone());
        }
        let kind = Kind::Histogram(Self::histogram_bounds(&b.boundaries));
        Histogram::new(self.wrap::<f64, _>(&b.name, inner.build(), kind))
    }

    fn u64_histogram(&self, b: HistogramBuilder<'_, Histogram<u64>>) -> Histogram<u64> {
        let mut inner = self.inner.u64_histogram(b.name.clone());
        if let Some(d) = &b.description {
            inner = inner.with_description(d.clone());
        }
        if let Some(u) = &b.unit {
            inner = inner.with_unit(u.clone());
        }
        if let Some(bounds) = &b.boundaries {
            inner = inner.with_boundaries(bounds.clone());
        }
        let kind = Kind::Histogram(Self::histogram_bounds(&b.boundaries));
        Histogram::new(self.wrap::<u64, _>(&b.name, inner.build(), kind))
    }

    delegate_sync!(i64_up_down_counter, UpDownCounter<i64>);
    delegate_sync!(f64_up_down_counter, UpDownCounter<f64>);
    delegate_sync!(u64_gauge, Gauge<u64>);
    delegate_sync!(f64_gauge, Gauge<f64>);
    delegate_sync!(i64_gauge, Gauge<i64>);
    delegate_async!(u64_observable_counter, ObservableCounter<u64>, u64);
    delegate_async!(f64_observable_counter, ObservableCounter<f64>, f64);
    delegate_async!(i64_observable_up_down_counter, ObservableUpDownCounter<i64>, i64);
    delegate_async!(f64_observable_up_down_counter, ObservableUpDownCounter<f64>, f64);
    delegate_async!(u64_observable_gauge, ObservableGauge<u64>, u64);
    delegate_async!(i64_observable_gauge, ObservableGauge<i64>, i64);
    delegate_async!(f64_observable_gauge, ObservableGauge<f64>, f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_values_parse_and_bad_ones_are_errors() {
        let p = |v| ExemplarFilter::parse(OTEL_METRICS_EXEMPLAR_FILTER, v);
        assert_eq!(p("always_on").ok(), Some(ExemplarFilter::AlwaysOn));
        assert_eq!(p(" ALWAYS_OFF ").ok(), Some(ExemplarFilter::AlwaysOff));
        assert_eq!(p("trace_based").ok(), Some(ExemplarFilter::TraceBased));
        let err = p("sometimes").expect_err("invalid value").to_string();
        assert!(
            err.contains(OTEL_METRICS_EXEMPLAR_FILTER) && err.contains("trace_based"),
            "{err}"
        );
    }

    #[test]
    fn buckets_are_upper_inclusive() {
        let b = [1.0, 5.0];
        assert_eq!(bucket_of(&b, 0.5), 0);
        assert_eq!(bucket_of(&b, 1.0), 0);
        assert_eq!(bucket_of(&b, 1.5), 1);
        assert_eq!(bucket_of(&b, 5.0), 1);
        assert_eq!(bucket_of(&b, 7.0), 2);
    }

    #[test]
    fn counter_reservoir_samples_uniformly() {
        // 1000 collections of 4 measurements 0..4 on one thread: each value should be the
        // sample about a quarter of the time.
        let store = ExemplarStore::new(ExemplarFilter::AlwaysOn);
        let id = store.register("s", "c");
        let mut hits = [0u32; 4];
        for _ in 0..1000 {
            for v in 0..4u64 {
                store.offer(id, &Kind::Counter, Num::U64(v), &[]);
            }
            let got = store.collect();
            let series = &got[&("s".to_owned(), "c".to_owned())][&Vec::new()];
            let Collected::Counter {
                sampled: Some(s),
                total_seen,
            } = series
            else {
                panic!("no counter sample: {series:?}");
            };
            assert_eq!(*total_seen, 4);
            let Num::U64(v) = s.value else { panic!("{s:?}") };
            hits[v as usize] += 1;
        }
        for h in hits {
            assert!((150..350).contains(&h), "{hits:?}");
        }
    }

    #[test]
    fn bound_and_unbound_offers_share_a_series() {
        let store = ExemplarStore::new(ExemplarFilter::AlwaysOn);
        let id = store.register("s", "c");
        let attrs = [KeyValue::new("b", 1), KeyValue::new("a", "x"), KeyValue::new("b", 2)];
        store.offer(id, &Kind::Counter, Num::U64(1), &attrs);
        let sorted = sorted_attributes(&attrs);
        assert_eq!(sorted.len(), 2);
        assert_eq!(sorted[0].key.as_str(), "a");
        let hash = series_hash(id, sorted.iter());
        store.offer_sorted(id, &Kind::Counter, Num::U64(2), &sorted, hash);
        let got = store.collect();
        let series = &got[&("s".to_owned(), "c".to_owned())];
        assert_eq!(series.len(), 1, "{series:?}");
        let Some(Collected::Counter { total_seen, .. }) = series.get(&sorted) else {
            panic!("no series for {sorted:?}: {series:?}");
        };
        assert_eq!(*total_seen, 2);
    }

    #[test]
    fn series_per_shard_are_bounded() {
        let store = ExemplarStore::new(ExemplarFilter::AlwaysOn);
        let id = store.register("s", "c");
        for i in 0..(MAX_SERIES_PER_SHARD as i64 + 50) {
            store.offer(id, &Kind::Counter, Num::U64(1), &[KeyValue::new("i", i)]);
        }
        let got = store.collect();
        assert_eq!(got[&("s".to_owned(), "c".to_owned())].len(), MAX_SERIES_PER_SHARD);
    }
}
