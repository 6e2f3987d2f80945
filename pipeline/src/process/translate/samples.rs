//! Building a translated batch ([`Samples`], in `model`) from other processors (span metrics).

use crate::model::batch::{FamilyMeta, Label, Point, PointValue, Samples, Span};
use crate::model::{Exemplar, Temporality};

use super::family_index;
use super::labels::{finish_labels, push_sanitized_label_name, push_str};

/// Building batches from other processors (span metrics): labels first, then the point.
impl Samples {
    /// Adds a family and returns its index.
    pub fn add_family(&mut self, meta: FamilyMeta) -> u32 {
        family_index(self, meta)
    }

    /// Adds a label to the point being built; `name` is sanitized.
    pub fn add_label(&mut self, name: &str, value: &str) {
        let name = push_sanitized_label_name(&mut self.text, name);
        let value = push_str(&mut self.text, value);
        self.labels.push(Label { name, value });
    }

    /// Adds a label to the point being built; `name` is already sanitized (see
    /// [`crate::util::labels::sanitized_label_name`]).
    pub fn add_sanitized_label(&mut self, name: &str, value: &str) {
        let name = push_str(&mut self.text, name);
        let value = push_str(&mut self.text, value);
        self.labels.push(Label { name, value });
    }

    /// Adds a copy of an earlier point's labels to the point being built.
    pub fn copy_labels(&mut self, labels: Span) {
        self.labels.extend_from_within(labels.range());
    }

    /// Adds bounds and per-bucket counts for a histogram value.
    pub fn add_buckets(&mut self, bounds: &[f64], counts: &[u64]) -> (Span, Span) {
        let (f, c) = (self.floats.len(), self.counts.len());
        self.floats.extend_from_slice(bounds);
        self.counts.extend_from_slice(counts);
        (Span::new(f, self.floats.len()), Span::new(c, self.counts.len()))
    }

    /// Finishes a point whose labels were added since index `labels_start` (see
    /// [`Samples::labels`]); returns its label span.
    pub fn add_point(
        &mut self,
        family: u32,
        labels_start: usize,
        temporality: Temporality,
        value: PointValue,
        exemplars: &[Exemplar],
    ) -> Span {
        finish_labels(self, labels_start, usize::MAX);
        let labels = Span::new(labels_start, self.labels.len());
        let e = self.exemplars.len();
        self.exemplars.extend_from_slice(exemplars);
        let exemplars = Span::new(e, self.exemplars.len());
        self.points.push(Point {
            family,
            labels,
            temporality,
            value,
            exemplars,
            start_time_unix_nano: 0,
        });
        self.outcome.accepted += 1;
        labels
    }
}
