//! Store snapshot → remote-write requests: the samples a scrape shows, batched and encoded.
//!
//! In: the series store and the snapshot's timestamp. Out: snappy-compressed `WriteRequest`
//! bodies of at most `max_samples_per_request` samples (an exemplar counts as one), each with the
//! metadata of the families it carries. The samples are those of `/metrics`, from the same walk
//! ([`crate::expose::walk`], of which [`Snapshot`] is a sink): `__name__` (`foo_total` for
//! counters, `foo_bucket`/`foo_count`/`foo_sum` for histograms, `foo` with `quantile` for
//! summaries, `target_info`) plus the series' labels, parsed back from their rendered bytes, and
//! `le`/`quantile` values written by the exposition's float formatter. Every request is encoded as
//! soon as it is full, so a snapshot never holds more than one request's series unencoded.
//!
//! Exemplars are sent once: a fingerprint of every exemplar sent with the previous snapshot is
//! kept, and an exemplar still in the store is not sent again. The set is rebuilt per snapshot, so
//! it holds at most one entry per exemplar slot in the store.

use std::hash::{BuildHasher, Hash, Hasher};

use bytes::Bytes;
use hashbrown::HashSet;
use prost::Message;

use super::proto::{
    BucketSpan, Exemplar, Histogram, Label, MetricMetadata, MetricType, Sample, TimeSeries, WriteRequest,
};
use crate::expose::walk::{self, Family, Native, Sink};
use crate::expose::{float, protobuf};
use crate::model::exp::ExpHistogram;
use crate::model::{self, MetricKind};
use crate::store::{self, Store};
use crate::util::hex;

/// One encoded request, ready to send.
#[derive(Debug, Clone)]
pub(crate) struct Encoded {
    /// Snappy-compressed `WriteRequest`.
    pub(crate) body: Bytes,
    /// Samples it carries.
    pub(crate) samples: u64,
    /// Exemplars it carries.
    pub(crate) exemplars: u64,
}

/// Turns store snapshots into requests; remembers which exemplars went out.
#[derive(Debug, Default)]
pub(crate) struct Converter {
    sent: HashSet<u64>,
    seed: foldhash::fast::FixedState,
    /// Exponential histograms go as native histograms (`send_native_histograms`), not classic
    /// buckets.
    native: bool,
}

impl Converter {
    /// A converter; `native`: exponential histograms go as native histograms.
    pub(crate) fn new(native: bool) -> Self {
        Converter {
            native,
            ..Converter::default()
        }
    }

    /// Every sample of `store` at `timestamp_ms`, in requests of at most `max_samples`.
    pub(crate) fn snapshot(&mut self, store: &Store, timestamp_ms: i64, max_samples: usize) -> Vec<Encoded> {
        let mut out = Snapshot {
            timestamp_ms,
            previous: &self.sent,
            sent_now: HashSet::with_capacity(self.sent.len()),
            seed: &self.seed,
            batcher: Batcher::new(max_samples),
            labels: Vec::new(),
            native: self.native,
        };
        walk::store(store, &mut out);
        let Snapshot { sent_now, batcher, .. } = out;
        self.sent = sent_now;
        batcher.finish()
    }
}

fn metadata(f: &Family<'_>) -> MetricMetadata {
    let ty = match f.kind {
        MetricKind::Counter => MetricType::Counter,
        MetricKind::Gauge => MetricType::Gauge,
        MetricKind::Histogram => MetricType::Histogram,
        MetricKind::Summary => MetricType::Summary,
        MetricKind::Info => MetricType::Info,
    };
    MetricMetadata {
        r#type: ty as i32,
        metric_family_name: f.name.to_owned(),
        help: f.help.to_owned(),
        unit: f.unit.to_owned(),
    }
}

/// The walk's sink for one snapshot: each sample becomes a `TimeSeries` of one sample.
struct Snapshot<'a> {
    timestamp_ms: i64,
    previous: &'a HashSet<u64>,
    sent_now: HashSet<u64>,
    seed: &'a foldhash::fast::FixedState,
    batcher: Batcher,
    /// The current series' labels, parsed from its rendered bytes.
    labels: Vec<(String, String)>,
    native: bool,
}

impl Sink for Snapshot<'_> {
    fn family(&mut self, family: &Family<'_>) {
        self.batcher.begin_family(metadata(family));
    }

    fn series(&mut self, labels: &[u8]) -> bool {
        match store::parse_labels(labels) {
            Some(l) => {
                self.labels = l;
                true
            }
            None => false,
        }
    }

    fn sample(&mut self, s: &walk::Sample<'_>) {
        let labels = self.labels_named(format!("{}{}", s.name, s.kind.suffix()), s.kind.label());
        let exemplars = s
            .exemplar
            .filter(|e| {
                let fp = self.fingerprint(s, e);
                self.fresh(fp)
            })
            .map(|e| vec![exemplar_proto(e, self.timestamp_ms)])
            .unwrap_or_default();
        self.batcher.push(TimeSeries {
            labels,
            samples: vec![Sample {
                value: s.value.as_f64(),
                timestamp: self.timestamp_ms,
            }],
            exemplars,
            histograms: Vec::new(),
        });
    }

    /// With `send_native_histograms`, an exponential histogram goes as one native histogram
    /// sample (at a schema of at most 8, as the protobuf exposition gives it) with its exemplars,
    /// without classic series derived from it. A histogram kept both ways (`histogram: both`)
    /// still sends its own classic series beside it, as Prometheus forwards what it scraped with
    /// `scrape_classic_histograms`.
    fn native(&mut self, name: &str, labels: &[u8], h: &ExpHistogram) -> Native {
        if !self.native || h.scale < protobuf::MIN_SCHEMA {
            return Native::Declined;
        }
        let h = h.with_max_scale(protobuf::MAX_SCHEMA);
        let spans = |b| {
            let (spans, deltas) = protobuf::native_spans(b);
            let spans = spans
                .into_iter()
                .map(|(offset, length)| BucketSpan { offset, length })
                .collect();
            (spans, deltas)
        };
        let (negative_spans, negative_deltas) = spans(&h.negative);
        let (positive_spans, positive_deltas) = spans(&h.positive);
        let mut exemplars = Vec::new();
        for (_, e) in &h.exemplars {
            let fp = self
                .seed
                .hash_one((name, labels, e.trace_id, e.span_id, e.value.to_bits(), e.time_unix_nano));
            if self.fresh(fp) {
                exemplars.push(exemplar_proto(e, self.timestamp_ms));
            }
        }
        let labels = self.labels_named(name.to_owned(), None);
        // The exemplars follow in a series of their own: a receiver appends a series' exemplars
        // before its histograms (Prometheus 2.x), so on the first write they would name a series
        // that does not exist yet.
        let exemplar_series = (!exemplars.is_empty()).then(|| TimeSeries {
            labels: labels.clone(),
            samples: Vec::new(),
            exemplars,
            histograms: Vec::new(),
        });
        self.batcher.push(TimeSeries {
            labels,
            samples: Vec::new(),
            exemplars: Vec::new(),
            histograms: vec![Histogram {
                count_int: h.count,
                sum: h.sum,
                schema: h.scale,
                zero_threshold: h.zero_threshold,
                zero_count_int: h.zero_count,
                negative_spans,
                negative_deltas,
                positive_spans,
                positive_deltas,
                timestamp: self.timestamp_ms,
            }],
        });
        if let Some(ts) = exemplar_series {
            self.batcher.push(ts);
        }
        Native::Alone
    }
}

impl Snapshot<'_> {
    /// `__name__` = `name`, then the series' labels, sorted by name.
    fn labels_named(&self, name: String, extra: Option<(&str, f64)>) -> Vec<Label> {
        let mut labels = Vec::with_capacity(self.labels.len() + 2);
        labels.push(Label {
            name: "__name__".into(),
            value: name,
        });
        labels.extend(self.labels.iter().map(|(k, v)| Label {
            name: k.clone(),
            value: v.clone(),
        }));
        if let Some((k, v)) = extra {
            labels.push(Label {
                name: k.into(),
                value: float::format_f64(v),
            });
        }
        labels.sort_by(|a, b| a.name.cmp(&b.name));
        labels
    }

    /// Whether `e` of series `name{labels}` goes out with this snapshot (not sent with the last
    /// one); remembered either way.
    fn fresh(&mut self, fp: u64) -> bool {
        self.sent_now.insert(fp);
        !self.previous.contains(&fp)
    }

    /// Identifies an exemplar in its slot: the sample it is on and the exemplar itself.
    fn fingerprint(&self, s: &walk::Sample<'_>, e: &model::Exemplar) -> u64 {
        let mut h = self.seed.build_hasher();
        s.name.hash(&mut h);
        s.kind.suffix().hash(&mut h);
        s.labels.hash(&mut h);
        s.kind.label().map(|(_, v)| v.to_bits()).hash(&mut h);
        e.trace_id.hash(&mut h);
        e.span_id.hash(&mut h);
        e.value.to_bits().hash(&mut h);
        e.time_unix_nano.hash(&mut h);
        h.finish()
    }
}

/// An exemplar with `trace_id`/`span_id` labels (lower-case hex) and a millisecond timestamp
/// (the snapshot's when the exemplar has none).
fn exemplar_proto(e: &model::Exemplar, snapshot_ms: i64) -> Exemplar {
    let timestamp = if e.time_unix_nano == 0 {
        snapshot_ms
    } else {
        (e.time_unix_nano / 1_000_000) as i64
    };
    Exemplar {
        labels: vec![
            Label {
                name: "span_id".into(),
                value: hex::encode(&e.span_id),
            },
            Label {
                name: "trace_id".into(),
                value: hex::encode(&e.trace_id),
            },
        ],
        value: e.value,
        timestamp,
    }
}

/// A float as `/metrics` writes it in `le` and `quantile` labels (the exposition's one formatter).
#[cfg(test)]
pub(crate) fn format_float(v: f64) -> String {
    float::format_f64(v)
}

/// Groups series into requests of at most `max` samples and encodes each once full.
#[derive(Debug)]
pub(crate) struct Batcher {
    max: usize,
    current: WriteRequest,
    samples: u64,
    exemplars: u64,
    family: Option<MetricMetadata>,
    family_in_current: bool,
    out: Vec<Encoded>,
    buf: Vec<u8>,
    encoder: SnappyEncoder,
}

/// `snap::raw::Encoder` (block format, as remote write requires).
struct SnappyEncoder(snap::raw::Encoder);

impl std::fmt::Debug for SnappyEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SnappyEncoder")
    }
}

impl Batcher {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            current: WriteRequest::default(),
            samples: 0,
            exemplars: 0,
            family: None,
            family_in_current: false,
            out: Vec::new(),
            buf: Vec::new(),
            encoder: SnappyEncoder(snap::raw::Encoder::new()),
        }
    }

    /// The following series belong to the family described by `meta`.
    pub(crate) fn begin_family(&mut self, meta: MetricMetadata) {
        self.family = Some(meta);
        self.family_in_current = false;
    }

    pub(crate) fn push(&mut self, ts: TimeSeries) {
        let samples = (ts.samples.len() + ts.histograms.len()) as u64;
        let n = samples + ts.exemplars.len() as u64;
        if self.samples + self.exemplars > 0 && self.samples + self.exemplars + n > self.max as u64 {
            self.flush();
        }
        if !self.family_in_current {
            self.current.metadata.extend(self.family.clone());
            self.family_in_current = true;
        }
        self.samples += samples;
        self.exemplars += ts.exemplars.len() as u64;
        self.current.timeseries.push(ts);
    }

    fn flush(&mut self) {
        if self.current.timeseries.is_empty() {
            return;
        }
        self.buf.clear();
        // Encoding into a Vec cannot fail (it grows as needed).
        let _ = self.current.encode(&mut self.buf);
        let body = match self.encoder.0.compress_vec(&self.buf) {
            Ok(b) => Bytes::from(b),
            // Only for inputs beyond snappy's 4 GiB limit, which a bounded request never reaches.
            Err(e) => {
                tracing::error!(error = %e, "cannot snappy-compress a remote-write request; dropping it");
                Bytes::new()
            }
        };
        if !body.is_empty() {
            self.out.push(Encoded {
                body,
                samples: self.samples,
                exemplars: self.exemplars,
            });
        }
        self.current.timeseries.clear();
        self.current.metadata.clear();
        self.samples = 0;
        self.exemplars = 0;
        self.family_in_current = false;
    }

    pub(crate) fn finish(mut self) -> Vec<Encoded> {
        self.flush();
        self.out
    }
}
