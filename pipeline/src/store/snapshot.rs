//! The store as a batch: every series as a cumulative point (counters, gauges, histograms and
//! summaries with their exemplars), so that writing the batch back into an empty store recreates
//! the same series with the same values. This is how the metric state survives a graceful restart
//! (`storage::snapshot` keeps it on disk).

use std::time::Instant;

use super::exp::ExpHistogram;
use super::{Histogram, SeriesValue, Store};
use crate::model::Temporality;
use crate::model::batch::{ExpPoint, Label, Point, PointValue, Samples, Span};

impl Store {
    /// Every series of the store, as cumulative points of one batch, and beside each point how
    /// many seconds ago its series was last updated.
    pub fn to_samples(&self, now: Instant) -> (Samples, Vec<u32>) {
        let tick = self.tick(now);
        let mut s = Samples::default();
        let mut ages = Vec::new();
        for h in self.families() {
            let f = h.lock();
            if f.removed {
                continue;
            }
            let family = s.families.len() as u32;
            s.families.push(f.meta.clone());
            for series in &f.series {
                let Some(pairs) = super::parse_labels(&series.labels) else {
                    continue;
                };
                let l0 = s.labels.len();
                for (k, v) in pairs {
                    let n0 = s.text.len();
                    s.text.push_str(&k);
                    let v0 = s.text.len();
                    s.text.push_str(&v);
                    s.labels.push(Label {
                        name: Span::new(n0, v0),
                        value: Span::new(v0, s.text.len()),
                    });
                }
                let labels = Span::new(l0, s.labels.len());
                let e0 = s.exemplars.len();
                let value = match &series.value {
                    SeriesValue::Number { value, exemplar } => {
                        s.exemplars.extend(exemplar);
                        PointValue::Number(*value)
                    }
                    SeriesValue::Histogram(h) => {
                        let (bounds, counts) = push_histogram(&mut s, h);
                        PointValue::Histogram {
                            count: h.count,
                            sum: h.sum,
                            bounds,
                            counts,
                        }
                    }
                    SeriesValue::Exponential(e) => PointValue::Exponential(push_exp(&mut s, e)),
                    SeriesValue::Both(b) => {
                        let (bounds, counts) = push_histogram(&mut s, &b.classic);
                        let native = push_exp(&mut s, &b.native);
                        // Both parts are offered every exemplar on restore: each keeps its own
                        // (the newest in each of its buckets), so one copy of each is enough.
                        let classic = e0..e0 + b.classic.exemplars.iter().flatten().count();
                        let mut k = classic.end;
                        while k < s.exemplars.len() {
                            if s.exemplars[classic.clone()].contains(&s.exemplars[k]) {
                                s.exemplars.remove(k);
                            } else {
                                k += 1;
                            }
                        }
                        PointValue::Both { bounds, counts, native }
                    }
                    SeriesValue::Summary(q) => {
                        let q0 = s.floats.len();
                        for (quantile, v) in &q.quantiles {
                            s.floats.extend([*quantile, *v]);
                        }
                        PointValue::Summary {
                            count: q.count,
                            sum: q.sum,
                            quantiles: Span::new(q0, s.floats.len()),
                        }
                    }
                    SeriesValue::Info => PointValue::Info,
                };
                s.points.push(Point {
                    family,
                    labels,
                    temporality: Temporality::Cumulative,
                    value,
                    exemplars: Span::new(e0, s.exemplars.len()),
                    start_time_unix_nano: series.start_unix_nano(),
                });
                ages.push(tick.saturating_sub(series.last_seen));
            }
        }
        s.outcome.accepted = s.points.len() as u64;
        (s, ages)
    }
}

/// Pushes an explicit histogram's bounds, counts and exemplars to `s`; returns the bounds' and
/// counts' spans.
fn push_histogram(s: &mut Samples, h: &Histogram) -> (Span, Span) {
    let b0 = s.floats.len();
    s.floats.extend_from_slice(&h.bounds);
    let c0 = s.counts.len();
    s.counts.extend_from_slice(&h.counts);
    s.exemplars.extend(h.exemplars.iter().flatten());
    (Span::new(b0, s.floats.len()), Span::new(c0, s.counts.len()))
}

/// Pushes an exponential histogram's buckets and exemplars to `s`; returns its point.
fn push_exp(s: &mut Samples, e: &ExpHistogram) -> ExpPoint {
    let p0 = s.counts.len();
    s.counts.extend_from_slice(&e.positive.counts);
    let n0 = s.counts.len();
    s.counts.extend_from_slice(&e.negative.counts);
    s.exemplars.extend(e.exemplars.iter().map(|(_, x)| *x));
    ExpPoint {
        count: e.count,
        sum: e.sum,
        scale: e.scale,
        zero_count: e.zero_count,
        zero_threshold: e.zero_threshold,
        positive_offset: e.positive.offset,
        positive: Span::new(p0, n0),
        negative_offset: e.negative.offset,
        negative: Span::new(n0, s.counts.len()),
    }
}
