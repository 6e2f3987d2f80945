//! The one walk over a series' samples, shared by every encoder.
//!
//! A series' value becomes the samples Prometheus sees: a counter's `_total` (with its exemplar);
//! a gauge's value; an info series' `_info` 1; a histogram's cumulative `le` buckets ending in
//! `+Inf` (each with its exemplar), `_count` equal to the `+Inf` bucket, and `_sum`; a summary's
//! `quantile` samples, `_count` and `_sum`. `_count` and `_sum` are left out together when the sum
//! is unknown or negative, or when buckets have negative bounds (OpenMetrics allows no `_sum`
//! then). Those rules live here once; each encoder is a [`Sink`] that only writes the samples it is
//! handed: the OpenMetrics and text encoders (`super::Lines`), remote write's converter
//! (`export::remote_write::convert`) and, through [`Own`], Spindle's own metrics
//! (`crate::telemetry`), which are not in the store.
//!
//! Names outside the legacy character set (only the UTF-8 translation strategies store them) are
//! written as the scrape asked ([`Names`]): escaped, quoted (text formats with
//! `escaping=allow-utf-8`) or as they are (protobuf with `allow-utf-8`). Only families flagged by
//! the store ([`crate::store::Family::has_utf8_names`]) take that slower path; the others are
//! walked as stored.
//!
//! A series' start (`crate::store::Series::start_unix_nano`) is offered to [`Sink::start`] for
//! counters, histograms and summaries.
//!
//! A sink that encodes native histograms (a protobuf exposition, remote write's `Histogram`)
//! takes an exponential histogram whole through [`Sink::native`], and says whether the walk still
//! writes the classic buckets derived from it ([`Native`]). A histogram kept both ways (span
//! metrics' `histogram: both`) offers its exponential part the same way and always writes its own
//! classic buckets: the text formats show those, the protobuf exposition carries both in one
//! `Histogram`, remote write sends both. A sink that needs a series as one record (protobuf's `Metric`) collects its samples
//! between [`Sink::series`] and [`Sink::end_series`].

use crate::model::batch::FamilyMeta;
use crate::model::{Escaping, Exemplar, MetricKind};
use crate::store::exp::ExpHistogram;
use crate::store::{Histogram, SeriesValue, Store, label_pairs};
use crate::util::labels::{escape_label_value, is_legacy_name, push_escaped_name};

/// What an encoder writes before a family's samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family<'a> {
    /// The family name (a counter's without `_total`, an info's without `_info`).
    pub name: &'a str,
    /// The exposed type.
    pub kind: MetricKind,
    /// The `# HELP` text (empty when none).
    pub help: &'a str,
    /// The Prometheus unit (empty when none).
    pub unit: &'a str,
    /// Whether `# HELP` comes before `# TYPE` in OpenMetrics. Both orders are valid; Spindle's own
    /// families have always been written help first, stored families type first, and each keeps
    /// its order so scrapes stay byte for byte what they were.
    pub help_first: bool,
}

impl<'a> Family<'a> {
    /// The descriptor of a stored family.
    pub fn of(meta: &'a FamilyMeta) -> Self {
        Family {
            name: &meta.name,
            kind: meta.kind,
            help: &meta.help,
            unit: &meta.unit,
            help_first: false,
        }
    }
}

impl Family<'static> {
    /// The descriptor of one of Spindle's own families (no unit; help first).
    pub const fn own(name: &'static str, kind: MetricKind, help: &'static str) -> Self {
        Family {
            name,
            kind,
            help,
            unit: "",
            help_first: true,
        }
    }
}

/// Which sample of its series a sample is: its name suffix and the label it adds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SampleKind {
    /// A gauge's value: no suffix.
    Value,
    /// A counter's value: `_total`.
    Total,
    /// An info series: `_info`, value 1.
    Info,
    /// A histogram bucket: `_bucket` with `le` (the bucket's upper bound, `+Inf` last).
    Bucket(f64),
    /// `_count`.
    Count,
    /// `_sum`.
    Sum,
    /// A summary quantile: no suffix, with `quantile`.
    Quantile(f64),
}

impl SampleKind {
    /// The suffix appended to the family name.
    #[inline]
    pub const fn suffix(self) -> &'static str {
        match self {
            SampleKind::Value | SampleKind::Quantile(_) => "",
            SampleKind::Total => "_total",
            SampleKind::Info => "_info",
            SampleKind::Bucket(_) => "_bucket",
            SampleKind::Count => "_count",
            SampleKind::Sum => "_sum",
        }
    }

    /// The label this sample adds after the series' labels (`le`, `quantile`), with its value.
    #[inline]
    pub const fn label(self) -> Option<(&'static str, f64)> {
        match self {
            SampleKind::Bucket(le) => Some(("le", le)),
            SampleKind::Quantile(q) => Some(("quantile", q)),
            _ => None,
        }
    }
}

/// A sample value: an exact count, or a float.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// A count (buckets, `_count`, Spindle's own counters), written as an integer.
    Int(u64),
    /// A float (counter and gauge values, sums, quantiles).
    Float(f64),
}

impl Value {
    /// The value as a float (remote write carries every sample as one).
    #[inline]
    pub fn as_f64(self) -> f64 {
        match self {
            Value::Int(v) => v as f64,
            Value::Float(v) => v,
        }
    }
}

/// One sample as the walk hands it to a [`Sink`].
#[derive(Debug, Clone, Copy)]
pub struct Sample<'a> {
    /// The family name; the sample's name is this plus [`SampleKind::suffix`].
    pub name: &'a str,
    /// The series' rendered label set, `name="escaped value",…` without braces (empty for none).
    pub labels: &'a [u8],
    /// Which sample it is.
    pub kind: SampleKind,
    /// Its value.
    pub value: Value,
    /// The exemplar to write with it (only counters' `_total` and histogram buckets carry one).
    pub exemplar: Option<&'a Exemplar>,
}

/// An encoder, as the walk sees it. Calls come in the order family, then per series: `series`,
/// its samples, `end_series`.
pub trait Sink {
    /// A family begins; every series until the next call belongs to it.
    fn family(&mut self, family: &Family<'_>);

    /// A series with the rendered label set `labels` begins. Returning `false` skips it (no
    /// samples, no `end_series`), for sinks that cannot carry it.
    #[inline]
    fn series(&mut self, labels: &[u8]) -> bool {
        let _ = labels;
        true
    }

    /// One sample of the current series.
    fn sample(&mut self, sample: &Sample<'_>);

    /// The current series has no more samples.
    #[inline]
    fn end_series(&mut self) {}

    /// The current series' stream started at `unix_nano` (nanoseconds since the Unix epoch; only
    /// offered when known, for counters, histograms and summaries), before its samples.
    #[inline]
    fn start(&mut self, unix_nano: u64) {
        let _ = unix_nano;
    }

    /// Offered an exponential histogram before the walk writes the series' classic buckets: a
    /// sink that encodes native histograms takes it and says whether the classic buckets derived
    /// from it still follow ([`Native`]). A histogram kept both ways writes its own classic
    /// buckets whatever the answer. `name` and `labels` are the series' family name and label set.
    #[inline]
    fn native(&mut self, name: &str, labels: &[u8], histogram: &ExpHistogram) -> Native {
        let _ = (name, labels, histogram);
        Native::Declined
    }
}

/// What a [`Sink`] did with an exponential histogram offered through [`Sink::native`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Native {
    /// Not taken: the walk writes it as classic buckets at its own boundaries.
    Declined,
    /// Taken as a native histogram, with the classic buckets beside it in the same series (the
    /// protobuf exposition, as client_golang writes a histogram that has both).
    Beside,
    /// Taken as a native histogram alone: the walk writes no classic buckets derived from it
    /// (remote write, where they would be series of their own).
    Alone,
}

/// How the walk writes metric and label names outside the legacy character set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Names {
    /// As stored (protobuf to a scraper that asked for `escaping=allow-utf-8`).
    AsIs,
    /// Label names quoted (`"http.route"="…"`), for the text formats to a scraper that asked for
    /// `escaping=allow-utf-8`; the line sinks quote metric names themselves.
    Quote,
    /// Escaped by the scheme; the names then lie in the legacy set. Label names that escape alike
    /// within a series are joined into one label, values separated by `;` (as translation joins
    /// attributes that sanitize alike), so the scrape never has a duplicate label.
    Escape(Escaping),
}

/// Walks every family of `store` that has series, sorted by name, into `sink`, holding one
/// family's lock at a time; names outside the legacy character set escaped with underscores (what
/// remote write and a scraper that names no escaping get).
pub fn store<S: Sink + ?Sized>(store: &Store, sink: &mut S) {
    store_as(store, sink, Names::Escape(Escaping::Underscores));
}

/// [`store`] with names written as `names` says.
pub fn store_as<S: Sink + ?Sized>(store: &Store, sink: &mut S, names: Names) {
    let mut name_buf = String::new();
    let mut label_buf = Vec::new();
    for h in store.families() {
        let fam = h.lock();
        if fam.series().is_empty() {
            continue;
        }
        let kind = fam.meta.kind;
        if names == Names::AsIs || !fam.has_utf8_names() {
            sink.family(&Family::of(&fam.meta));
            for s in fam.series() {
                series(sink, &fam.meta.name, kind, s.labels(), s.start_unix_nano(), &s.value);
            }
            continue;
        }
        let name = match names {
            Names::Escape(e) => {
                name_buf.clear();
                push_escaped_name(&mut name_buf, &fam.meta.name, e, true);
                name_buf.as_str()
            }
            Names::AsIs | Names::Quote => fam.meta.name.as_str(),
        };
        sink.family(&Family {
            name,
            ..Family::of(&fam.meta)
        });
        for s in fam.series() {
            let labels = if label_pairs(s.labels()).all(|(n, _)| legacy_label(n)) {
                s.labels()
            } else {
                rewrite_labels(s.labels(), names, &mut label_buf);
                &label_buf[..]
            };
            series(sink, name, kind, labels, s.start_unix_nano(), &s.value);
        }
    }
}

fn legacy_label(name: &[u8]) -> bool {
    std::str::from_utf8(name).is_ok_and(|n| is_legacy_name(n, false))
}

/// A rendered label set with its names outside the legacy set quoted or escaped (see [`Names`]).
fn rewrite_labels(labels: &[u8], names: Names, out: &mut Vec<u8>) {
    out.clear();
    match names {
        Names::AsIs => out.extend_from_slice(labels),
        Names::Quote => {
            for (i, (name, value)) in label_pairs(labels).enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                if legacy_label(name) {
                    out.extend_from_slice(name);
                } else {
                    out.push(b'"');
                    escape_label_value(&String::from_utf8_lossy(name), out);
                    out.push(b'"');
                }
                out.extend_from_slice(b"=\"");
                out.extend_from_slice(value);
                out.push(b'"');
            }
        }
        Names::Escape(e) => {
            // Escaped names in order of appearance, values joined when two escape alike.
            let mut pairs: Vec<(String, Vec<u8>)> = Vec::new();
            for (name, value) in label_pairs(labels) {
                let mut n = String::with_capacity(name.len());
                push_escaped_name(&mut n, &String::from_utf8_lossy(name), e, false);
                match pairs.iter_mut().find(|(m, _)| *m == n) {
                    Some((_, v)) => {
                        v.push(b';');
                        v.extend_from_slice(value);
                    }
                    None => pairs.push((n, value.to_vec())),
                }
            }
            for (i, (name, value)) in pairs.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(b"=\"");
                out.extend_from_slice(value);
                out.push(b'"');
            }
        }
    }
}

/// Walks one stored series of family `name` (of type `kind`) into `sink`; `start` is when its
/// stream started (Unix epoch nanoseconds, 0 when unknown).
pub fn series<S: Sink + ?Sized>(
    sink: &mut S,
    name: &str,
    kind: MetricKind,
    labels: &[u8],
    start: u64,
    value: &SeriesValue,
) {
    if !sink.series(labels) {
        return;
    }
    if start != 0 && matches!(kind, MetricKind::Counter | MetricKind::Histogram | MetricKind::Summary) {
        sink.start(start);
    }
    let mut w = Walk {
        sink: &mut *sink,
        name,
        labels,
    };
    match value {
        SeriesValue::Number { value, exemplar } => w.number(kind, Value::Float(*value), exemplar.as_ref()),
        SeriesValue::Info => w.sample(SampleKind::Info, Value::Int(1), None),
        SeriesValue::Histogram(h) => w.classic(h),
        SeriesValue::Exponential(h) => {
            if w.sink.native(name, labels, h) != Native::Alone {
                let buckets = h.classic_buckets();
                // The last classic bucket is `+Inf`; the walk writes that one itself.
                let (finite, inf) = match buckets.split_last() {
                    Some((inf, finite)) => (finite, Some(inf)),
                    None => (&buckets[..], None),
                };
                let inf_exemplar = inf.and_then(|b| b.2);
                w.histogram(finite.iter().copied(), 0, inf_exemplar, h.count, h.sum);
            }
        }
        SeriesValue::Both(b) => {
            // The classic buckets are the series' own, not derived: written whatever the answer.
            let _ = w.sink.native(name, labels, &b.native);
            w.classic(&b.classic);
        }
        SeriesValue::Summary(sm) => {
            for (q, v) in sm.quantiles.iter() {
                w.sample(SampleKind::Quantile(*q), Value::Float(*v), None);
            }
            w.count_sum(sm.count, sm.sum, false);
        }
    }
    sink.end_series();
}

/// The samples of one series, as they are handed to the sink.
struct Walk<'w, 'n, S: ?Sized> {
    sink: &'w mut S,
    name: &'n str,
    labels: &'n [u8],
}

impl<S: Sink + ?Sized> Walk<'_, '_, S> {
    #[inline(always)]
    fn sample(&mut self, kind: SampleKind, value: Value, exemplar: Option<&Exemplar>) {
        self.sink.sample(&Sample {
            name: self.name,
            labels: self.labels,
            kind,
            value,
            exemplar,
        });
    }

    /// An explicit-bucket histogram: its buckets made cumulative, each with its exemplar.
    fn classic(&mut self, h: &Histogram) {
        let mut cum = 0u64;
        let finite = h
            .bounds
            .iter()
            .zip(h.counts.iter())
            .zip(h.exemplars.iter())
            .map(|((le, c), e)| {
                cum = cum.saturating_add(*c);
                (*le, cum, e.as_ref())
            });
        let rest = h.counts.get(h.bounds.len()..).unwrap_or_default();
        let inf = rest.iter().fold(0u64, |a, c| a.saturating_add(*c));
        let inf_exemplar = h.exemplars.get(h.bounds.len()).and_then(Option::as_ref);
        self.histogram(finite, inf, inf_exemplar, h.count, h.sum);
    }

    /// A counter's `_total` with its exemplar, or a gauge's value (gauges carry no exemplar).
    #[inline(always)]
    fn number(&mut self, kind: MetricKind, value: Value, exemplar: Option<&Exemplar>) {
        if kind == MetricKind::Counter {
            self.sample(SampleKind::Total, value, exemplar);
        } else {
            self.sample(SampleKind::Value, value, None);
        }
    }

    /// `finite`: `(le, cumulative count, exemplar)` of each finite bucket, in order. `inf`: the
    /// count of the `+Inf` bucket beyond the last finite one. The `+Inf` bucket and `_count`
    /// are the larger of `count` and the buckets' total, so they agree even when a sender's count
    /// and buckets do not.
    fn histogram<'e>(
        &mut self,
        finite: impl Iterator<Item = (f64, u64, Option<&'e Exemplar>)>,
        inf: u64,
        inf_exemplar: Option<&Exemplar>,
        count: u64,
        sum: f64,
    ) {
        let mut cum = 0u64;
        let mut first_le = None;
        for (le, c, e) in finite {
            first_le.get_or_insert(le);
            cum = c;
            self.sample(SampleKind::Bucket(le), Value::Int(c), e);
        }
        let total = count.max(cum.saturating_add(inf));
        self.sample(SampleKind::Bucket(f64::INFINITY), Value::Int(total), inf_exemplar);
        self.count_sum(total, sum, first_le.is_some_and(|le| le < 0.0));
    }

    /// `_count` and `_sum`, which go together. Left out when the sum is unknown or negative, or
    /// when buckets have negative bounds (OpenMetrics allows no `_sum` then).
    fn count_sum(&mut self, count: u64, sum: f64, negative_buckets: bool) {
        if sum.is_nan() || sum < 0.0 || negative_buckets {
            return;
        }
        self.sample(SampleKind::Count, Value::Int(count), None);
        self.sample(SampleKind::Sum, Value::Float(sum), None);
    }
}

/// Walks families that are not in the store (Spindle's own metrics) with the same rules as stored
/// ones: a family, then its series, each from a label list and a count.
#[derive(Debug)]
pub struct Own<'s, S: ?Sized> {
    sink: &'s mut S,
    family: Family<'static>,
    labels: Vec<u8>,
}

impl<'s, S: Sink + ?Sized> Own<'s, S> {
    /// Walks into `sink`.
    pub fn new(sink: &'s mut S) -> Self {
        Own {
            sink,
            family: Family::own("", MetricKind::Gauge, ""),
            labels: Vec::with_capacity(128),
        }
    }

    /// Begins `family`; the following series belong to it.
    pub fn family(&mut self, family: &Family<'static>) {
        self.family = *family;
        self.sink.family(family);
    }

    /// A counter's (`_total`) or gauge's series of the current family, with `labels` as
    /// `(name, value)` pairs (values are escaped here).
    pub fn number(&mut self, labels: &[(&str, &str)], value: u64) {
        self.render(labels);
        let Own { sink, family, labels } = self;
        if sink.series(labels) {
            Walk {
                sink: &mut **sink,
                name: family.name,
                labels,
            }
            .number(family.kind, Value::Int(value), None);
            sink.end_series();
        }
    }

    /// A histogram series of the current family: `cumulative` holds one count per bound of
    /// `bounds`, then the `+Inf` count; `sum` is the sum of the observations.
    pub fn histogram(&mut self, labels: &[(&str, &str)], bounds: &[f64], cumulative: &[u64], sum: f64) {
        self.render(labels);
        let Own { sink, family, labels } = self;
        if sink.series(labels) {
            let finite = bounds.iter().zip(cumulative).map(|(le, c)| (*le, *c, None));
            let count = cumulative.get(bounds.len()).copied().unwrap_or(0);
            Walk {
                sink: &mut **sink,
                name: family.name,
                labels,
            }
            .histogram(finite, 0, None, count, sum);
            sink.end_series();
        }
    }

    fn render(&mut self, labels: &[(&str, &str)]) {
        self.labels.clear();
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                self.labels.push(b',');
            }
            self.labels.extend_from_slice(k.as_bytes());
            self.labels.extend_from_slice(b"=\"");
            escape_label_value(v, &mut self.labels);
            self.labels.push(b'"');
        }
    }
}
