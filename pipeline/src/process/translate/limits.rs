//! The limits of `receivers.otlp.limits`: why an item was refused or changed, per-batch counts,
//! value truncation, and the label-count and label-name checks.

use std::borrow::Cow;

use crate::receive::config::LimitsConfig;

use super::samples::Samples;

/// Why a limit of `receivers.otlp.limits` refused or changed an item (the `reason` label of
/// `spindle_limited_items_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitReason {
    /// A metric name longer than `max_metric_name_length`: its points are rejected.
    MetricNameTooLong,
    /// A label name longer than `max_label_name_length`: the point is rejected.
    LabelNameTooLong,
    /// A label value longer than `max_label_value_length`: truncated, the point kept.
    LabelValueTruncated,
    /// More attributes than `max_attributes_per_point` / `max_attributes_per_span`: rejected.
    TooManyAttributes,
    /// A label set larger than `max_label_set_size`: the point is rejected.
    LabelSetTooLarge,
}

impl LimitReason {
    /// Every reason, in label order.
    pub const ALL: [LimitReason; 5] = [
        LimitReason::MetricNameTooLong,
        LimitReason::LabelNameTooLong,
        LimitReason::LabelValueTruncated,
        LimitReason::TooManyAttributes,
        LimitReason::LabelSetTooLarge,
    ];

    /// The `reason` label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            LimitReason::MetricNameTooLong => "metric_name_too_long",
            LimitReason::LabelNameTooLong => "label_name_too_long",
            LimitReason::LabelValueTruncated => "label_value_truncated",
            LimitReason::TooManyAttributes => "too_many_attributes",
            LimitReason::LabelSetTooLarge => "label_set_too_large",
        }
    }
}

/// Items each limit refused or changed in one batch, indexed by [`LimitReason`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitCounts(pub [u64; LimitReason::ALL.len()]);

impl LimitCounts {
    /// Adds `n` items for `reason`.
    pub fn add(&mut self, reason: LimitReason, n: u64) {
        self.0[reason as usize] += n;
    }

    /// Items counted for `reason`.
    pub fn get(&self, reason: LimitReason) -> u64 {
        self.0[reason as usize]
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|n| *n == 0)
    }
}

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
