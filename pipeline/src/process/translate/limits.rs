//! The limits of `receivers.otlp.limits`: why an item was refused or changed, per-batch counts,
//! value truncation, and the label-count and label-name checks.

use std::borrow::Cow;

use crate::receive::config::LimitsConfig;

use crate::model::batch::{LimitReason, Samples};

/// The marker that ends a truncated label value.
pub const TRUNCATION_MARKER: &str = "…";

/// Cuts `s` to at most `max` bytes, ending with [`TRUNCATION_MARKER`], at a UTF-8 boundary.
/// Returns whether it was cut.
pub fn truncate_value(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let mut end = max.saturating_sub(TRUNCATION_MARKER.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    if s.len() + TRUNCATION_MARKER.len() <= max {
        s.push_str(TRUNCATION_MARKER);
    }
    true
}

/// `s`, or a copy cut by [`truncate_value`] when it is longer than `max` bytes.
pub fn truncated(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    let mut end = max.saturating_sub(TRUNCATION_MARKER.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::with_capacity(max);
    out.push_str(&s[..end]);
    if out.len() + TRUNCATION_MARKER.len() <= max {
        out.push_str(TRUNCATION_MARKER);
    }
    Cow::Owned(out)
}

/// At most the first 64 bytes of `s` (at a UTF-8 boundary), for messages about oversized input.
pub(super) fn preview(s: &str) -> Cow<'_, str> {
    truncated(s, 64)
}

/// A limit that refused an item, and the message for the sender.
pub(super) type Limited = (LimitReason, String);

pub(super) fn too_many_attributes(what: &str, n: usize, max: usize) -> String {
    format!("{what} has {n} attributes, more than receivers.otlp.limits.max_attributes_per_point ({max})")
}

pub(super) fn label_name_too_long(name: &str, max: usize) -> String {
    format!(
        "label name `{}` ({} bytes) is longer than receivers.otlp.limits.max_label_name_length ({max})",
        preview(name),
        name.len()
    )
}

/// Checks the finished labels from `start`: name lengths and the label-set size.
pub(super) fn check_labels(out: &Samples, start: usize, limits: &LimitsConfig) -> Result<(), Limited> {
    let mut size = 0usize;
    for l in &out.labels[start..] {
        if l.name.len() > limits.max_label_name_length {
            let why = label_name_too_long(out.str(l.name), limits.max_label_name_length);
            return Err((LimitReason::LabelNameTooLong, why));
        }
        size += l.name.len() + l.value.len();
    }
    let max = limits.max_label_set_size.0;
    if size as u64 > max {
        return Err((
            LimitReason::LabelSetTooLarge,
            format!(
                "label set of {size} bytes is larger than receivers.otlp.limits.max_label_set_size ({})",
                limits.max_label_set_size
            ),
        ));
    }
    Ok(())
}
