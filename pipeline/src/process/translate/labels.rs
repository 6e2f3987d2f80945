//! Label sets in the arena: sorting and merging colliding names, label-name sanitizing and the
//! rendering of OTLP attribute values as label values.

use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};

use super::limits::truncate_value;
use super::samples::{Label, Samples, Span};

/// Sorts the labels from `start` by name and joins values of names that collide (`;`, in the
/// order they were pushed), truncating joined values to `max_value` bytes. Returns how many
/// joined values were truncated.
pub(super) fn finish_labels(out: &mut Samples, start: usize, max_value: usize) -> u64 {
    if !sort_labels(out, start) {
        return 0;
    }
    merge_labels(out, start, max_value, &mut String::new())
}

/// Sorts the labels from `start` by name, stably (colliding labels keep the order they were
/// pushed in). Returns whether any names collide.
pub(super) fn sort_labels(out: &mut Samples, start: usize) -> bool {
    let Samples { labels, text, .. } = out;
    let ls = &mut labels[start..];
    ls.sort_by(|a, b| text[a.name.range()].cmp(&text[b.name.range()]));
    ls.windows(2)
        .any(|w| text[w[0].name.range()] == text[w[1].name.range()])
}

/// Replaces each run of same-named labels from `start` (sorted, see [`sort_labels`]) by one label
/// whose value is the run's values joined with `;`. Each joined value is built once in `buf` and
/// written to the arena once, and building stops once it exceeds `max_value` (it is then
/// truncated): linear in the labels' bytes. Returns how many joined values were truncated.
pub(super) fn merge_labels(out: &mut Samples, start: usize, max_value: usize, buf: &mut String) -> u64 {
    let Samples { labels, text, .. } = out;
    let n = labels.len();
    let (mut read, mut write, mut truncations) = (start, start, 0);
    while read < n {
        let mut label = labels[read];
        let name = label.name.range();
        let mut end = read + 1;
        while end < n && text[labels[end].name.range()] == text[name.clone()] {
            end += 1;
        }
        if end - read > 1 {
            buf.clear();
            for (i, l) in labels[read..end].iter().enumerate() {
                if i > 0 {
                    buf.push(';');
                }
                if buf.len() > max_value {
                    break;
                }
                buf.push_str(&text[l.value.range()]);
            }
            truncations += u64::from(truncate_value(buf, max_value));
            label.value = push_str(text, buf);
        }
        labels[write] = label;
        write += 1;
        read = end;
    }
    labels.truncate(write);
    truncations
}

pub(super) fn push_str(text: &mut String, s: &str) -> Span {
    let start = text.len();
    text.push_str(s);
    Span::new(start, text.len())
}

pub(super) fn push_label(text: &mut String, name: &str, value: &str) -> Label {
    let name = push_str(text, name);
    let value = push_str(text, value);
    Label { name, value }
}

/// Appends `raw` sanitized as a label name: invalid characters → `_`, runs of `_` collapsed,
/// `key_` prefix when it would start with a digit, `key` prefix when it would start with `_`.
/// An attribute key as the label name translation gives it (`http.route` → `http_route`).
pub fn sanitized_label_name(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len() + 4);
    push_sanitized_label_name(&mut out, raw);
    out
}

pub(super) fn push_sanitized_label_name(text: &mut String, raw: &str) -> Span {
    let start = text.len();
    match raw.chars().next() {
        Some(c) if c.is_ascii_digit() => text.push_str("key_"),
        Some('_') => text.push_str("key"),
        None => text.push_str("key_empty"),
        _ => {}
    }
    push_sanitized(text, raw, false);
    Span::new(start, text.len())
}

/// Appends `raw` with characters outside `[a-zA-Z0-9_]` (and `:` if `colon`) replaced by `_`, and
/// runs of `_` collapsed to one.
pub(super) fn push_sanitized(out: &mut String, raw: &str, colon: bool) {
    for c in raw.chars() {
        let ok = c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':');
        let c = if ok { c } else { '_' };
        if c == '_' && out.ends_with('_') {
            continue;
        }
        out.push(c);
    }
}

/// Renders an attribute value as a label value: strings as is, scalars in their usual form,
/// arrays and maps as JSON.
pub(crate) fn write_any(v: &AnyValue, out: &mut String) {
    use std::fmt::Write;
    match &v.value {
        Some(any_value::Value::StringValue(s)) => out.push_str(s),
        Some(any_value::Value::BoolValue(b)) => out.push_str(if *b { "true" } else { "false" }),
        Some(any_value::Value::IntValue(i)) => {
            let _ = write!(out, "{i}");
        }
        Some(any_value::Value::DoubleValue(d)) => {
            let _ = write!(out, "{d}");
        }
        Some(any_value::Value::BytesValue(b)) => {
            for byte in b {
                let _ = write!(out, "{byte:02x}");
            }
        }
        Some(any_value::Value::ArrayValue(a)) => {
            out.push('[');
            for (i, x) in a.values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json_any(x, out);
            }
            out.push(']');
        }
        Some(any_value::Value::KvlistValue(kv)) => {
            out.push('{');
            for (i, x) in kv.values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String(x.key.clone()).to_string());
                out.push(':');
                match &x.value {
                    Some(v) => write_json_any(v, out),
                    None => out.push_str("null"),
                }
            }
            out.push('}');
        }
        // Dictionary references only occur in profiles; there is nothing to resolve them against.
        Some(any_value::Value::StringValueStrindex(_)) | None => {}
    }
}

pub(super) fn write_json_any(v: &AnyValue, out: &mut String) {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => out.push_str(&serde_json::Value::String(s.clone()).to_string()),
        Some(any_value::Value::ArrayValue(_) | any_value::Value::KvlistValue(_))
        | Some(any_value::Value::BoolValue(_) | any_value::Value::IntValue(_)) => write_any(v, out),
        Some(any_value::Value::DoubleValue(d)) if d.is_finite() => write_any(v, out),
        Some(_) => {
            let mut s = String::new();
            write_any(v, &mut s);
            out.push_str(&serde_json::Value::String(s).to_string());
        }
        None => out.push_str("null"),
    }
}
