//! Prometheus text format 0.0.4 encoder: `# HELP`/`# TYPE`, no exemplars, no `# EOF`.

use super::walk::Family;
use super::{Encoder, escape_help};
use crate::model::{Exemplar, Format, MetricKind};

/// The `Content-Type` of text-format responses.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The text-format encoder.
#[derive(Debug, Clone, Copy)]
pub struct Text;

impl Encoder for Text {
    fn header(&self, out: &mut Vec<u8>, meta: &Family<'_>) {
        // Text format names the family by its sample name and has no counter/info split.
        let (suffix, ty): (&[u8], &[u8]) = match meta.kind {
            MetricKind::Counter => (b"_total", b"counter"),
            MetricKind::Info => (b"_info", b"gauge"),
            MetricKind::Gauge => (b"", b"gauge"),
            MetricKind::Histogram => (b"", b"histogram"),
            MetricKind::Summary => (b"", b"summary"),
        };
        let name = meta.name.as_bytes();
        out.extend_from_slice(b"# HELP ");
        out.extend_from_slice(name);
        out.extend_from_slice(suffix);
        out.push(b' ');
        escape_help(meta.help, false, out);
        out.extend_from_slice(b"\n# TYPE ");
        out.extend_from_slice(name);
        out.extend_from_slice(suffix);
        out.push(b' ');
        out.extend_from_slice(ty);
        out.push(b'\n');
    }

    fn exemplar(&self, _out: &mut Vec<u8>, _e: &Exemplar) {}

    fn finish(&self, _out: &mut Vec<u8>) {}

    fn format(&self) -> Format {
        Format::Text
    }
}
