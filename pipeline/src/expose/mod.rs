//! Exposition: the store (and Spindle's own metrics) rendered for Prometheus.
//!
//! [`walk`] is the one walk over a series' samples (`_total`, cumulative `le` buckets ending in
//! `+Inf`, `_count` equal to `+Inf`, `_sum`, quantiles, exemplars, when `_count`/`_sum` are left
//! out); every encoder is a [`walk::Sink`] of it, and [`float`] is their one number formatter.
//! [`openmetrics`] and [`text`] differ only in what their [`Encoder`] writes around the sample
//! lines, which [`Lines`] writes for both. [`routes`] serves them over HTTP with content
//! negotiation and gzip, beside `/healthz`, `/readyz` and `/api/v1/cardinality`, which [`api`]
//! renders from the cardinality limiter's typed counts and the store; [`auth`] puts every route but
//! `/healthz` and `/readyz` behind `prometheus.auth`; [`page`] is the status page at `/`, for
//! people (live figures and the cardinality explorer, from the same sources). Families that are
//! not in the store (Spindle's own metrics) come in through [`SelfMetrics`] and are walked by the
//! same code.
//!
//! Rendering appends each series' pre-rendered label bytes; the only per-series work is number
//! formatting.

pub mod api;
pub mod auth;
pub mod config;
pub mod float;
pub mod openmetrics;
pub mod page;
pub mod protobuf;
pub mod routes;
pub mod text;
pub mod walk;

use std::time::Duration;

pub use float::{write_f64, write_u64};
use walk::{Family, Names, Sample, Sink, Value};

use crate::model::{Escaping, Exemplar, Format};
use crate::store::Store;
use crate::util::labels::{escape_label_value, is_legacy_name};

/// What differs between the exposition formats.
pub trait Encoder {
    /// Writes the `# HELP` / `# TYPE` (/ `# UNIT`) lines of a family.
    fn header(&self, out: &mut Vec<u8>, family: &Family<'_>);
    /// Writes an exemplar after a sample value (before the newline); a no-op where unsupported.
    fn exemplar(&self, out: &mut Vec<u8>, e: &Exemplar);
    /// Writes whatever ends the exposition.
    fn finish(&self, out: &mut Vec<u8>);
    /// The format, for the self metrics.
    fn format(&self) -> Format;
}

/// Families rendered after the stored ones: Spindle's own metrics (`crate::telemetry`). The
/// scrape walks them through the same [`Sink`] as the store, and reports its duration back.
pub trait SelfMetrics: std::fmt::Debug + Send + Sync {
    /// Walks every family into `sink`; `active_series` is the store's series count at the scrape.
    fn walk(&self, active_series: usize, sink: &mut dyn Sink);
    /// Records how long a scrape took to render.
    fn scrape_took(&self, took: Duration);
}

/// Renders every stored family and then `own`'s families in `format` into `out`, names outside
/// the legacy character set escaped with underscores (a scraper that names no escaping).
pub fn render(store: &Store, own: &dyn SelfMetrics, format: Format, out: &mut Vec<u8>) {
    render_escaped(store, own, format, Escaping::Underscores, out);
}

/// [`render`] for a scraper that asked for `escaping`: with [`Escaping::AllowUtf8`] names are
/// served as stored (quoted in the text formats where outside the legacy set), else escaped by
/// the scheme.
pub fn render_escaped(store: &Store, own: &dyn SelfMetrics, format: Format, escaping: Escaping, out: &mut Vec<u8>) {
    let names = |utf8: Names| match escaping {
        Escaping::AllowUtf8 => utf8,
        e => Names::Escape(e),
    };
    match format {
        Format::OpenMetrics => render_with(openmetrics::OpenMetrics, store, own, names(Names::Quote), out),
        Format::Text => render_with(text::Text, store, own, names(Names::Quote), out),
        Format::Protobuf => {
            let mut pb = protobuf::Protobuf::new(out);
            walk::store_as(store, &mut pb, names(Names::AsIs));
            own.walk(store.series_count(), &mut pb);
            pb.finish();
        }
    }
}

fn render_with<E: Encoder>(enc: E, store: &Store, own: &dyn SelfMetrics, names: Names, out: &mut Vec<u8>) {
    let mut lines = Lines::new(enc, out);
    walk::store_as(store, &mut lines, names);
    own.walk(store.series_count(), &mut lines);
    lines.enc.finish(lines.out);
}

/// Renders only `own`'s families in `format` (no OpenMetrics `# EOF`), with `active_series` as the
/// store's series count.
pub fn render_own(own: &dyn SelfMetrics, format: Format, active_series: usize, out: &mut Vec<u8>) {
    match format {
        Format::OpenMetrics => own.walk(active_series, &mut Lines::new(openmetrics::OpenMetrics, out)),
        Format::Text => own.walk(active_series, &mut Lines::new(text::Text, out)),
        Format::Protobuf => {
            let mut pb = protobuf::Protobuf::new(out);
            own.walk(active_series, &mut pb);
            pb.finish();
        }
    }
}

/// The sink of the line formats: one `name{labels} value[ exemplar]` line per sample, with the
/// family headers, exemplar syntax and ending of encoder `E`.
#[derive(Debug)]
pub struct Lines<'o, E> {
    enc: E,
    out: &'o mut Vec<u8>,
    /// The current family's name lies outside the legacy set: samples are written
    /// `{"name",labels}` (only when the scrape asked for `escaping=allow-utf-8`).
    quote: bool,
}

impl<'o, E: Encoder> Lines<'o, E> {
    /// Appends to `out`.
    pub fn new(enc: E, out: &'o mut Vec<u8>) -> Self {
        Lines { enc, out, quote: false }
    }
}

/// Appends a metric name (with `suffix`) as the line formats write it: as is when `name` is in
/// the legacy character set, else quoted and escaped (`"http.server.duration_total"`), which only
/// a scraper that asked for `escaping=allow-utf-8` is served.
fn write_name(out: &mut Vec<u8>, name: &str, suffix: &str) {
    if is_legacy_name(name, true) {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(suffix.as_bytes());
    } else {
        out.push(b'"');
        escape_label_value(name, out);
        out.extend_from_slice(suffix.as_bytes());
        out.push(b'"');
    }
}

impl<E: Encoder> Sink for Lines<'_, E> {
    fn family(&mut self, family: &Family<'_>) {
        self.quote = !is_legacy_name(family.name, true);
        self.enc.header(self.out, family);
    }

    // Inlined into the walk, where the sample kind is a constant: the suffix and label copies
    // become fixed-size moves.
    #[inline(always)]
    fn sample(&mut self, s: &Sample<'_>) {
        let out = &mut *self.out;
        let extra = s.kind.label();
        if self.quote {
            // `{"name",labels}`: the name moves inside the braces.
            out.push(b'{');
            write_name(out, s.name, s.kind.suffix());
            if !s.labels.is_empty() || extra.is_some() {
                out.push(b',');
            }
        } else {
            out.extend_from_slice(s.name.as_bytes());
            out.extend_from_slice(s.kind.suffix().as_bytes());
        }
        if self.quote || !s.labels.is_empty() || extra.is_some() {
            if !self.quote {
                out.push(b'{');
            }
            out.extend_from_slice(s.labels);
            if let Some((k, v)) = extra {
                if !s.labels.is_empty() {
                    out.push(b',');
                }
                out.extend_from_slice(k.as_bytes());
                out.extend_from_slice(b"=\"");
                write_f64(out, v);
                out.push(b'"');
            }
            out.push(b'}');
        }
        out.push(b' ');
        match s.value {
            Value::Int(v) => write_u64(out, v),
            Value::Float(v) => write_f64(out, v),
        }
        if let Some(e) = s.exemplar {
            self.enc.exemplar(out, e);
        }
        out.push(b'\n');
    }
}

/// Escapes `# HELP` text: `\` and newline always, `"` too in OpenMetrics.
fn escape_help(help: &str, quote: bool, out: &mut Vec<u8>) {
    for c in help.bytes() {
        match c {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'"' if quote => out.extend_from_slice(b"\\\""),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
