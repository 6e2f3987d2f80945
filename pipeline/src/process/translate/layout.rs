//! The label layout of the last data point whose labels sorted without collisions, reused by the
//! next point with the same scope labels and attribute keys (as most points of a metric are): its
//! sanitized label names, and the order that sorts its labels. A stable sort's order depends on
//! the names alone, so reusing it gives exactly the labels sorting would.

use std::ops::Range;

use super::attrs::Attr;
use crate::model::batch::{Label, Samples};

/// See the module documentation. Scope labels are compared by their spans: a scope's labels are
/// written to the arena once and never cut back, so equal spans are the same names.
#[derive(Debug, Default)]
pub(super) struct Layout {
    valid: bool,
    scope: Vec<Label>,
    /// Attribute keys and their sanitized names, as ranges of `text`.
    keys: Vec<(Range<usize>, Range<usize>)>,
    text: String,
    /// The sorted position's source index, for each position.
    order: Vec<u32>,
    tmp: Vec<Label>,
}

impl Layout {
    /// Whether a point with these scope labels and attributes has the cached layout.
    pub(super) fn matches<A: Attr>(&self, scope: &[Label], attrs: &[A]) -> bool {
        self.valid
            && self.keys.len() == attrs.len()
            && self.scope == scope
            && self
                .keys
                .iter()
                .zip(attrs)
                .all(|((k, _), a)| self.text[k.clone()] == *a.attr_key())
    }

    /// The sanitized label name of attribute `i` of the cached layout.
    pub(super) fn name(&self, i: usize) -> &str {
        &self.text[self.keys[i].1.clone()]
    }

    /// Sorts the labels from `start` (the scope labels, then one per attribute) by name, stably,
    /// and caches the layout. Returns whether names collide (then nothing is cached, and the
    /// labels are left unsorted).
    pub(super) fn sort<A: Attr>(&mut self, scope: &[Label], attrs: &[A], out: &mut Samples, start: usize) -> bool {
        let Samples { labels, text, .. } = out;
        let ls = &mut labels[start..];
        self.order.clear();
        self.order.extend(0..ls.len() as u32);
        let name = |i: u32| &text[ls[i as usize].name.range()];
        self.order.sort_by(|&a, &b| name(a).cmp(name(b)));
        if self.order.windows(2).any(|w| name(w[0]) == name(w[1])) {
            self.valid = false;
            return true;
        }
        self.scope.clear();
        self.scope.extend_from_slice(scope);
        self.keys.clear();
        self.text.clear();
        for (a, l) in attrs.iter().zip(&ls[scope.len()..]) {
            let k = self.text.len()..self.text.len() + a.attr_key().len();
            self.text.push_str(a.attr_key());
            let n = self.text.len()..self.text.len() + l.name.len();
            self.text.push_str(&text[l.name.range()]);
            self.keys.push((k, n));
        }
        self.valid = true;
        self.apply(ls);
        false
    }

    /// Puts labels pushed in the cached layout's order into sorted order.
    pub(super) fn apply(&mut self, ls: &mut [Label]) {
        self.tmp.clear();
        self.tmp.extend(self.order.iter().map(|&i| ls[i as usize]));
        ls.copy_from_slice(&self.tmp);
    }
}
