//! Prometheus text format 0.0.4 encoder: `# HELP`/`# TYPE`, no exemplars, no `# EOF`.

use super::walk::Family;
use super::{Encoder, escape_help, write_name};
use crate::model::{Exemplar, Format, MetricKind};

/// The `Content-Type` of text-format responses.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The `Content-Type` of text-format responses to a scraper that asked for `version=1.0.0` (the
/// same lines; UTF-8 names quoted when it also asked for `escaping=allow-utf-8`).
pub const CONTENT_TYPE_V1: &str = "text/plain; version=1.0.0; charset=utf-8";

/// The text-format encoder.
#[derive(Debug, Clone, Copy)]
pub struct Text;

impl Encoder for Text {
    fn header(&self, out: &mut Vec<u8>, meta: &Family<'_>) {
        // Text format names the family by its sample name and has no counter/info split.
        let (suffix, ty): (&str, &[u8]) = match meta.kind {
            MetricKind::Counter => ("_total", b"counter"),
            MetricKind::Info => ("_info", b"gauge"),
            MetricKind::Gauge => ("", b"gauge"),
            MetricKind::Histogram => ("", b"histogram"),
            MetricKind::Summary => ("", b"summary"),
        };
        out.extend_from_slice(b"# HELP ");
        write_name(out, meta.name, suffix);
        out.push(b' ');
        escape_help(meta.help, false, out);
        out.extend_from_slice(b"\n# TYPE ");
        write_name(out, meta.name, suffix);
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
