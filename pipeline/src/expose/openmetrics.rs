//! OpenMetrics 1.0.0 encoder: `# TYPE`/`# UNIT`/`# HELP`, exemplars, `# EOF`.

use super::walk::Family;
use super::{Encoder, escape_help, write_f64, write_name, write_u64};
use crate::model::{Exemplar, Format};
use crate::util::hex;

/// The `Content-Type` of OpenMetrics responses.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The OpenMetrics encoder.
#[derive(Debug, Clone, Copy)]
pub struct OpenMetrics;

impl Encoder for OpenMetrics {
    fn header(&self, out: &mut Vec<u8>, f: &Family<'_>) {
        let help = |out: &mut Vec<u8>| {
            if !f.help.is_empty() {
                out.extend_from_slice(b"# HELP ");
                write_name(out, f.name, "");
                out.push(b' ');
                escape_help(f.help, true, out);
                out.push(b'\n');
            }
        };
        if f.help_first {
            help(out);
        }
        out.extend_from_slice(b"# TYPE ");
        write_name(out, f.name, "");
        out.push(b' ');
        out.extend_from_slice(f.kind.openmetrics_type().as_bytes());
        out.push(b'\n');
        if !f.unit.is_empty() {
            out.extend_from_slice(b"# UNIT ");
            write_name(out, f.name, "");
            out.push(b' ');
            out.extend_from_slice(f.unit.as_bytes());
            out.push(b'\n');
        }
        if !f.help_first {
            help(out);
        }
    }

    fn exemplar(&self, out: &mut Vec<u8>, e: &Exemplar) {
        // The label part has a fixed length: assemble it on the stack and append it at once.
        const A: &[u8] = b" # {trace_id=\"";
        const B: &[u8] = b"\",span_id=\"";
        const C: &[u8] = b"\"} ";
        const LEN: usize = A.len() + 32 + B.len() + 16 + C.len();
        let mut buf = [0u8; LEN];
        let mut i = 0;
        let mut put = |bytes: &[u8]| {
            buf[i..i + bytes.len()].copy_from_slice(bytes);
            i += bytes.len();
        };
        put(A);
        for b in e.trace_id {
            put(&hex::pair(b));
        }
        put(B);
        for b in e.span_id {
            put(&hex::pair(b));
        }
        put(C);
        out.extend_from_slice(&buf);
        write_f64(out, e.value);
        if e.time_unix_nano > 0 {
            out.push(b' ');
            let secs = e.time_unix_nano / 1_000_000_000;
            let millis = ((e.time_unix_nano % 1_000_000_000) / 1_000_000) as usize;
            write_u64(out, secs);
            out.extend_from_slice(&[
                b'.',
                DIGITS[millis / 100],
                DIGITS[millis / 10 % 10],
                DIGITS[millis % 10],
            ]);
        }
    }

    fn finish(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"# EOF\n");
    }

    fn format(&self) -> Format {
        Format::OpenMetrics
    }
}

const DIGITS: &[u8; 10] = b"0123456789";
