//! Store snapshot → remote-write requests: the samples a scrape shows, batched and encoded.
//!
//! In: the series store and the snapshot's timestamp. Out: snappy-compressed `WriteRequest`
//! bodies of at most `max_samples_per_request` samples (an exemplar counts as one), each with the
//! metadata of the families it carries. Names and labels are those of `/metrics`: `__name__`
//! (`foo_total` for counters, `foo_bucket`/`foo_count`/`foo_sum` for histograms, `foo` with
//! `quantile` for summaries, `target_info`) plus the series' labels, parsed back from their
//! rendered bytes. Every request is encoded as soon as it is full, so a snapshot never holds more
//! than one request's series unencoded.
//!
//! Exemplars are sent once: a fingerprint of every exemplar sent with the previous snapshot is
//! kept, and an exemplar still in the store is not sent again. The set is rebuilt per snapshot, so
//! it holds at most one entry per exemplar slot in the store.

use std::hash::{BuildHasher, Hash, Hasher};

use bytes::Bytes;
use hashbrown::HashSet;
use prost::Message;

use super::proto::{Exemplar, Label, MetricMetadata, MetricType, Sample, TimeSeries, WriteRequest};
use crate::model::batch::FamilyMeta;
use crate::model::{self, MetricKind};
use crate::store::{self, SeriesValue, Store};

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
}

impl Converter {
    /// Every sample of `store` at `timestamp_ms`, in requests of at most `max_samples`.
    pub(crate) fn snapshot(&mut self, store: &Store, timestamp_ms: i64, max_samples: usize) -> Vec<Encoded> {
        let mut batcher = Batcher::new(max_samples);
        let mut sent_now = HashSet::with_capacity(self.sent.len());
        for handle in store.families() {
            let fam = handle.lock();
            if fam.series().is_empty() {
                continue;
            }
            batcher.begin_family(metadata(&fam.meta));
            for s in fam.series() {
                let Some(labels) = store::parse_labels(s.labels()) else {
                    continue;
                };
                let mut out = SeriesOut {
                    name: &fam.meta.name,
                    rendered: s.labels(),
                    labels: &labels,
                    timestamp_ms,
                    previous: &self.sent,
                    sent_now: &mut sent_now,
                    seed: &self.seed,
                    batcher: &mut batcher,
                };
                out.series(fam.meta.kind, &s.value);
            }
        }
        self.sent = sent_now;
        batcher.finish()
    }
}

fn metadata(meta: &FamilyMeta) -> MetricMetadata {
    let ty = match meta.kind {
        MetricKind::Counter => MetricType::Counter,
        MetricKind::Gauge => MetricType::Gauge,
        MetricKind::Histogram => MetricType::Histogram,
        MetricKind::Summary => MetricType::Summary,
        MetricKind::Info => MetricType::Info,
    };
    MetricMetadata {
        r#type: ty as i32,
        metric_family_name: meta.name.clone(),
        help: meta.help.clone(),
        unit: meta.unit.clone(),
    }
}

/// Writes the samples of one series; mirrors `expose::write_series`, sample for sample.
struct SeriesOut<'a> {
    name: &'a str,
    rendered: &'a [u8],
    labels: &'a [(String, String)],
    timestamp_ms: i64,
    previous: &'a HashSet<u64>,
    sent_now: &'a mut HashSet<u64>,
    seed: &'a foldhash::fast::FixedState,
    batcher: &'a mut Batcher,
}

impl SeriesOut<'_> {
    fn series(&mut self, kind: MetricKind, value: &SeriesValue) {
        match value {
            SeriesValue::Number { value, exemplar } => {
                if kind == MetricKind::Counter {
                    self.sample("_total", None, *value, exemplar.as_ref());
                } else {
                    self.sample("", None, *value, None);
                }
            }
            SeriesValue::Info => self.sample("_info", None, 1.0, None),
            SeriesValue::Histogram(h) => {
                // As on /metrics: `_count` equals the `+Inf` bucket.
                let total = h.count.max(h.counts.iter().sum());
                let mut cum = 0u64;
                for (i, c) in h.counts.iter().enumerate() {
                    cum += c;
                    let (le, v) = match h.bounds.get(i) {
                        Some(b) => (*b, cum),
                        None => (f64::INFINITY, total),
                    };
                    self.sample("_bucket", Some(("le", le)), v as f64, h.exemplars[i].as_ref());
                }
                let negative = h.bounds.first().is_some_and(|b| *b < 0.0);
                self.count_sum(total, h.sum, negative);
            }
            SeriesValue::Exponential(h) => {
                let buckets = h.classic_buckets();
                let total = buckets.last().map_or(h.count, |b| b.1);
                for (le, cum, ex) in &buckets {
                    self.sample("_bucket", Some(("le", *le)), *cum as f64, *ex);
                }
                let negative = buckets.first().is_some_and(|b| b.0 < 0.0);
                self.count_sum(total, h.sum, negative);
            }
            SeriesValue::Summary(sm) => {
                for (q, v) in sm.quantiles.iter() {
                    self.sample("", Some(("quantile", *q)), *v, None);
                }
                self.count_sum(sm.count, sm.sum, false);
            }
        }
    }

    /// `_count` and `_sum`, left out where `/metrics` leaves them out.
    fn count_sum(&mut self, count: u64, sum: f64, negative_buckets: bool) {
        if sum.is_nan() || sum < 0.0 || negative_buckets {
            return;
        }
        self.sample("_count", None, count as f64, None);
        self.sample("_sum", None, sum, None);
    }

    fn sample(&mut self, suffix: &str, extra: Option<(&str, f64)>, value: f64, exemplar: Option<&model::Exemplar>) {
        let mut labels = Vec::with_capacity(self.labels.len() + 2);
        labels.push(Label {
            name: "__name__".into(),
            value: format!("{}{suffix}", self.name),
        });
        labels.extend(self.labels.iter().map(|(k, v)| Label {
            name: k.clone(),
            value: v.clone(),
        }));
        if let Some((k, v)) = extra {
            labels.push(Label {
                name: k.into(),
                value: format_float(v),
            });
        }
        labels.sort_by(|a, b| a.name.cmp(&b.name));
        let exemplars = exemplar
            .filter(|e| {
                let fp = self.fingerprint(suffix, extra, e);
                self.sent_now.insert(fp);
                !self.previous.contains(&fp)
            })
            .map(|e| vec![exemplar_proto(e, self.timestamp_ms)])
            .unwrap_or_default();
        self.batcher.push(TimeSeries {
            labels,
            samples: vec![Sample {
                value,
                timestamp: self.timestamp_ms,
            }],
            exemplars,
        });
    }

    fn fingerprint(&self, suffix: &str, extra: Option<(&str, f64)>, e: &model::Exemplar) -> u64 {
        let mut h = self.seed.build_hasher();
        self.name.hash(&mut h);
        suffix.hash(&mut h);
        self.rendered.hash(&mut h);
        extra.map(|(_, v)| v.to_bits()).hash(&mut h);
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
                value: hex(&e.span_id),
            },
            Label {
                name: "trace_id".into(),
                value: hex(&e.trace_id),
            },
        ],
        value: e.value,
        timestamp,
    }
}

fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

/// A float as `/metrics` writes it in `le` and `quantile` labels: `+Inf`, `-Inf`, `NaN`, or the
/// shortest round-tripping decimal with at least one fractional digit (`1.0`, `0.25`, `1e-5`).
pub(crate) fn format_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        ryu::Buffer::new().format_finite(v).to_owned()
    }
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
        let n = (ts.samples.len() + ts.exemplars.len()) as u64;
        if self.samples + self.exemplars > 0 && self.samples + self.exemplars + n > self.max as u64 {
            self.flush();
        }
        if !self.family_in_current {
            self.current.metadata.extend(self.family.clone());
            self.family_in_current = true;
        }
        self.samples += ts.samples.len() as u64;
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
