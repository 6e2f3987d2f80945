//! Label sets in the arena: sorting and merging colliding names, label-name sanitizing and the
//! rendering of OTLP attribute values as label values.

use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};

use super::limits::truncate_value;
use crate::model::TranslationStrategy;
use crate::model::batch::{Label, Samples, Span};
use crate::util::labels;

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
    // Labels pushed in order (span metrics) are only checked.
    if ls.windows(2).all(|w| text[w[0].name.range()] < text[w[1].name.range()]) {
        return false;
    }
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

pub(super) fn push_sanitized_label_name(text: &mut String, raw: &str) -> Span {
    let start = text.len();
    labels::push_sanitized_label_name(text, raw);
    Span::new(start, text.len())
}

/// An attribute key as a label name under `strategy`: sanitized ([`push_sanitized_label_name`])
/// when it escapes, else kept as sent (UTF-8) — but an empty key becomes `key_empty` and a key
/// starting with `__` (reserved for Prometheus's own labels) gets a `key` prefix, as sanitizing does.
pub(super) fn push_label_name(text: &mut String, raw: &str, strategy: TranslationStrategy) -> Span {
    if strategy.escapes() {
        return push_sanitized_label_name(text, raw);
    }
    let start = text.len();
    if raw.is_empty() {
        text.push_str("key_empty");
    } else {
        if raw.starts_with("__") {
            text.push_str("key");
        }
        text.push_str(raw);
    }
    Span::new(start, text.len())
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
            crate::util::hex::push_str(b, out);
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
