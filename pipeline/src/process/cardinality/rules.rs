//! Label rules of `processors.cardinality`: compiled normalizers, the per-metric policy, and the
//! allow/deny/normalize rewrite of a point's labels.

use regex::{Captures, Regex};

use crate::model::batch::{Label, Samples, Span};
use crate::util::glob::Glob;

use super::state::FamilyState;
use super::{BatchState, Limiter, NormalizeKind};

/// A label-value normalizer, compiled.
#[derive(Debug)]
pub(super) struct Normalizer {
    pub(super) labels: Vec<String>,
    pub(super) metrics: Vec<Glob>,
    pub(super) kind: NormalizeKind,
    pub(super) re: Regex,
    pub(super) replacement: String,
}

impl Normalizer {
    /// The value with every match replaced; `None` when nothing changed.
    pub(super) fn apply(&self, value: &str) -> Option<String> {
        // Cheap checks first: most values cannot match a built-in pattern at all.
        let b = value.as_bytes();
        let possible = match self.kind {
            NormalizeKind::Regex => true,
            NormalizeKind::Uuid => b.len() >= 36 && b.contains(&b'-'),
            NormalizeKind::HexId => b.len() >= 8 && b.iter().any(u8::is_ascii_digit),
            NormalizeKind::Number => b.iter().any(u8::is_ascii_digit),
            NormalizeKind::Ip => b.iter().any(|c| matches!(c, b'.' | b':')),
        };
        if !possible {
            return None;
        }
        let out = match self.kind {
            NormalizeKind::Regex => self.re.replace_all(value, self.replacement.as_str()),
            NormalizeKind::HexId => self.re.replace_all(value, |c: &Captures| {
                let m = &c[0];
                if m.bytes().any(|b| b.is_ascii_digit()) {
                    self.replacement.clone()
                } else {
                    m.to_string()
                }
            }),
            NormalizeKind::Ip => self.re.replace_all(value, |c: &Captures| {
                let m = &c[0];
                if m.parse::<std::net::IpAddr>().is_ok() {
                    self.replacement.clone()
                } else {
                    m.to_string()
                }
            }),
            NormalizeKind::Uuid | NormalizeKind::Number => {
                self.re.replace_all(value, regex::NoExpand(self.replacement.as_str()))
            }
        };
        match out {
            std::borrow::Cow::Owned(s) if s != value => Some(s),
            _ => None,
        }
    }
}

pub(super) fn builtin_pattern(kind: NormalizeKind) -> &'static str {
    match kind {
        NormalizeKind::Uuid => r"(?i)\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b",
        NormalizeKind::HexId => r"\b[0-9a-fA-F]{8,}\b",
        NormalizeKind::Number => r"\b[0-9]+(?:\.[0-9]+)?\b",
        NormalizeKind::Ip => r"(?i)\b(?:[0-9]{1,3}\.){3}[0-9]{1,3}\b|(?:[0-9a-f]{0,4}:){2,7}[0-9a-f]{0,4}",
        NormalizeKind::Regex => "",
    }
}

/// What applies to one metric.
#[derive(Debug, Default)]
pub(super) struct Policy {
    pub(super) max_series: usize,
    pub(super) max_label_values: usize,
    pub(super) allow: Vec<String>,
    pub(super) deny: Vec<String>,
    /// Indices into [`Limiter::normalizers`].
    pub(super) normalizers: Vec<usize>,
}

impl Policy {
    pub(super) fn rewrites(&self) -> bool {
        !self.allow.is_empty() || !self.deny.is_empty() || !self.normalizers.is_empty()
    }
}

impl Limiter {
    /// Applies allow/deny lists and normalizers to point `i`; returns whether anything changed.
    pub(super) fn rewrite(&self, fam: &mut FamilyState, batch: &mut Samples, i: usize, st: &mut BatchState) -> bool {
        let pol = &fam.policy;
        let span = batch.points[i].labels;
        let start = batch.labels.len();
        let mut changed = false;
        for j in span.range() {
            let l = batch.labels[j];
            let name = batch.str(l.name);
            let keep = if pol.deny.iter().any(|d| d == name) {
                false
            } else {
                pol.allow.is_empty() || matches!(name, "job" | "instance") || pol.allow.iter().any(|a| a == name)
            };
            if !keep {
                fam.stats.dropped_labels += 1;
                changed = true;
                continue;
            }
            let mut value: Option<String> = None;
            for &r in &pol.normalizers {
                let n = &self.normalizers[r];
                let Some(li) = n.labels.iter().position(|x| x == name) else {
                    continue;
                };
                if let Some(v) = n.apply(value.as_deref().unwrap_or(batch.str(l.value))) {
                    value = Some(v);
                    st.normalize(r, li);
                    fam.stats.normalized += 1;
                }
            }
            match value {
                Some(v) => {
                    let vs = batch.text.len();
                    batch.text.push_str(&v);
                    batch.labels.push(Label {
                        name: l.name,
                        value: Span::new(vs, batch.text.len()),
                    });
                    changed = true;
                }
                None => batch.labels.push(l),
            }
        }
        if changed {
            batch.points[i].labels = Span::new(start, batch.labels.len());
        } else {
            batch.labels.truncate(start);
        }
        changed
    }
}
