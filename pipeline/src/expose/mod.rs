//! Exposition: the store (and Spindle's own metrics) rendered for Prometheus.
//!
//! [`openmetrics`] and [`text`] are pure encoders (store read → bytes) behind one [`Encoder`]
//! trait; the sample-writing logic they share lives here. [`routes`] serves them over HTTP with
//! content negotiation and gzip, beside `/healthz` and `/readyz`.
//!
//! Rendering appends each series' pre-rendered label bytes; the only per-series work is number
//! formatting.

pub mod config;
pub mod openmetrics;
pub mod routes;
pub mod text;

use crate::model::batch::FamilyMeta;
use crate::model::{Exemplar, Format, MetricKind};
use crate::store::{Series, SeriesValue, Store};
use crate::telemetry::Telemetry;

/// What differs between the exposition formats.
pub trait Encoder {
    /// Writes the `# HELP` / `# TYPE` (/ `# UNIT`) lines of a family.
    fn header(&self, out: &mut Vec<u8>, meta: &FamilyMeta);
    /// Writes an exemplar after a sample value (before the newline); a no-op where unsupported.
    fn exemplar(&self, out: &mut Vec<u8>, e: &Exemplar);
    /// Writes whatever ends the exposition.
    fn finish(&self, out: &mut Vec<u8>);
    /// The format, for the self metrics.
    fn format(&self) -> Format;
}

/// Renders every stored family and the self metrics in `format` into `out`.
pub fn render(store: &Store, telemetry: &Telemetry, format: Format, out: &mut Vec<u8>) {
    match format {
        Format::OpenMetrics => render_with(&openmetrics::OpenMetrics, store, telemetry, out),
        Format::Text => render_with(&text::Text, store, telemetry, out),
    }
}

fn render_with<E: Encoder>(enc: &E, store: &Store, telemetry: &Telemetry, out: &mut Vec<u8>) {
    for h in store.families() {
        let fam = h.lock();
        if fam.series().is_empty() {
            continue;
        }
        enc.header(out, &fam.meta);
        for s in fam.series() {
            write_series(enc, out, &fam.meta, s);
        }
    }
    let mut own = String::new();
    telemetry.render(enc.format(), store.series_count(), &mut own);
    out.extend_from_slice(own.as_bytes());
    enc.finish(out);
}

fn write_series<E: Encoder>(enc: &E, out: &mut Vec<u8>, meta: &FamilyMeta, s: &Series) {
    let name = meta.name.as_bytes();
    let labels = s.labels();
    match &s.value {
        SeriesValue::Number { value, exemplar } => {
            let suffix: &[u8] = if meta.kind == MetricKind::Counter {
                b"_total"
            } else {
                b""
            };
            sample(out, name, suffix, labels, None, |o| write_f64(o, *value));
            if let Some(e) = exemplar.as_ref().filter(|_| meta.kind == MetricKind::Counter) {
                enc.exemplar(out, e);
            }
            out.push(b'\n');
        }
        SeriesValue::Info => {
            sample(out, name, b"_info", labels, None, |o| o.push(b'1'));
            out.push(b'\n');
        }
        SeriesValue::Histogram(h) => {
            // `_count` equals the `+Inf` bucket even when a sender's count and buckets disagree.
            let total = h.count.max(h.counts.iter().fold(0u64, |a, c| a.saturating_add(*c)));
            let mut cum = 0u64;
            for (i, c) in h.counts.iter().enumerate() {
                cum = cum.saturating_add(*c);
                let (le, v) = match h.bounds.get(i) {
                    Some(b) => (*b, cum),
                    None => (f64::INFINITY, total),
                };
                sample(out, name, b"_bucket", labels, Some((b"le", le)), |o| write_u64(o, v));
                if let Some(e) = &h.exemplars[i] {
                    enc.exemplar(out, e);
                }
                out.push(b'\n');
            }
            let negative = h.bounds.first().is_some_and(|b| *b < 0.0);
            count_sum(out, name, labels, total, h.sum, negative);
        }
        SeriesValue::Exponential(h) => {
            let buckets = h.classic_buckets();
            let total = buckets.last().map_or(h.count, |b| b.1);
            for (le, cum, ex) in &buckets {
                sample(out, name, b"_bucket", labels, Some((b"le", *le)), |o| {
                    write_u64(o, *cum)
                });
                if let Some(e) = ex {
                    enc.exemplar(out, e);
                }
                out.push(b'\n');
            }
            let negative = buckets.first().is_some_and(|b| b.0 < 0.0);
            count_sum(out, name, labels, total, h.sum, negative);
        }
        SeriesValue::Summary(sm) => {
            for (q, v) in sm.quantiles.iter() {
                sample(out, name, b"", labels, Some((b"quantile", *q)), |o| write_f64(o, *v));
                out.push(b'\n');
            }
            count_sum(out, name, labels, sm.count, sm.sum, false);
        }
    }
}

/// `_count` and `_sum`, which go together. Left out when the sum is unknown or negative, or when
/// buckets have negative bounds (OpenMetrics allows no `_sum` then).
fn count_sum(out: &mut Vec<u8>, name: &[u8], labels: &[u8], count: u64, sum: f64, negative_buckets: bool) {
    if sum.is_nan() || sum < 0.0 || negative_buckets {
        return;
    }
    sample(out, name, b"_count", labels, None, |o| write_u64(o, count));
    out.push(b'\n');
    sample(out, name, b"_sum", labels, None, |o| write_f64(o, sum));
    out.push(b'\n');
}

/// `name suffix {labels[,extra="v"]} value` (no newline).
fn sample(
    out: &mut Vec<u8>,
    name: &[u8],
    suffix: &[u8],
    labels: &[u8],
    extra: Option<(&[u8], f64)>,
    value: impl FnOnce(&mut Vec<u8>),
) {
    out.extend_from_slice(name);
    out.extend_from_slice(suffix);
    if !labels.is_empty() || extra.is_some() {
        out.push(b'{');
        out.extend_from_slice(labels);
        if let Some((k, v)) = extra {
            if !labels.is_empty() {
                out.push(b',');
            }
            out.extend_from_slice(k);
            out.extend_from_slice(b"=\"");
            write_f64(out, v);
            out.push(b'"');
        }
        out.push(b'}');
    }
    out.push(b' ');
    value(out);
}

/// Writes a float the way both formats accept: `NaN`, `+Inf`, `-Inf`, or the shortest
/// round-tripping decimal (`1.0`, `0.25`, `1e-5`).
pub fn write_f64(out: &mut Vec<u8>, v: f64) {
    if v.is_nan() {
        out.extend_from_slice(b"NaN");
    } else if v.is_infinite() {
        out.extend_from_slice(if v > 0.0 { b"+Inf" } else { b"-Inf" });
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        // Integral values are most of a scrape (counts, counters): integer formatting is several
        // times cheaper than shortest-float formatting and gives the same text.
        if v.is_sign_negative() {
            out.push(b'-');
        }
        write_u64(out, v.abs() as u64);
        out.extend_from_slice(b".0");
    } else {
        let mut b = ryu::Buffer::new();
        out.extend_from_slice(b.format_finite(v).as_bytes());
    }
}

/// Writes an integer.
pub fn write_u64(out: &mut Vec<u8>, v: u64) {
    let mut b = itoa::Buffer::new();
    out.extend_from_slice(b.format(v).as_bytes());
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
mod tests;
