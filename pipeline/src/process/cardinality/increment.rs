//! Exactness: cumulative reports turned into increments since the stream's previous report, and
//! folded or merged histograms fitted to the metric's bucket layout.

use std::sync::atomic::Ordering;

use crate::model::Temporality;
use crate::model::batch::{ExpPoint, PointValue, Samples, Span};
use crate::model::exp::{ExpHistogram, exp_from};

use super::state::{FamilyState, Last, LastHistogram, StreamState};
use super::{FoldReason, Limiter, RejectReason};

impl Limiter {
    /// Makes a folded or merged explicit histogram fit the metric's merged bucket layout: the same
    /// bounds, or finer ones whose buckets add up exactly into it.
    pub(super) fn fit_layout(
        &self,
        fam: &mut FamilyState,
        batch: &mut Samples,
        i: usize,
        bounds: Span,
        counts: Span,
    ) -> Result<(), RejectReason> {
        let have = &batch.floats[bounds.range()];
        let Some(target) = &fam.merge_bounds else {
            fam.merge_bounds = Some(have.into());
            return Ok(());
        };
        if target[..] == *have {
            return Ok(());
        }
        // Each target bound must be one of the point's bounds.
        if !target.iter().all(|b| have.contains(b)) {
            return Err(RejectReason::BucketLayout);
        }
        let target = target.clone();
        let c = &batch.counts[counts.range()];
        let mut out = vec![0u64; target.len() + 1];
        for (k, n) in c.iter().enumerate() {
            // Bucket k of the point is (have[k-1], have[k]]; the +Inf bucket is k == have.len().
            let idx = match have.get(k) {
                Some(ub) => target.partition_point(|b| b < ub),
                None => target.len(),
            };
            out[idx] = out[idx].saturating_add(*n);
        }
        let (nb, nc) = batch.add_buckets(&target, &out);
        if let PointValue::Histogram { bounds, counts, .. } | PointValue::Both { bounds, counts, .. } =
            &mut batch.points[i].value
        {
            *bounds = nb;
            *counts = nc;
        }
        Ok(())
    }

    /// Turns point `i` (cumulative) into the increment since the stream's previous report.
    pub(super) fn to_increment(
        &self,
        fam: &mut FamilyState,
        batch: &mut Samples,
        i: usize,
        stream: u64,
        tick: u32,
        folded: Option<FoldReason>,
    ) -> Result<(), RejectReason> {
        let state = match fam.streams.entry(stream) {
            hashbrown::hash_map::Entry::Occupied(e) => e.into_mut(),
            hashbrown::hash_map::Entry::Vacant(e) => {
                if self.streams.fetch_add(1, Ordering::Relaxed) >= self.config.max_stream_states {
                    self.streams.fetch_sub(1, Ordering::Relaxed);
                    return Err(RejectReason::StreamStateFull);
                }
                e.insert(StreamState {
                    tick,
                    folded: None,
                    last: Last::Empty,
                })
            }
        };
        state.tick = tick;
        if folded.is_some() {
            state.folded = folded;
        }
        let p = &mut batch.points[i];
        p.temporality = Temporality::Delta;
        match &mut p.value {
            PointValue::Number(v) => {
                let now = *v;
                if let Last::Number(prev) = state.last
                    && now >= prev
                {
                    *v = now - prev;
                }
                state.last = Last::Number(now);
            }
            PointValue::Summary { count, sum, quantiles } => {
                let (c, s) = (*count, *sum);
                if let Last::Summary { count: pc, sum: ps } = state.last
                    && c >= pc
                {
                    *count = c - pc;
                    *sum = s - ps;
                }
                *quantiles = Span::default();
                state.last = Last::Summary { count: c, sum: s };
            }
            PointValue::Histogram { count, sum, counts, .. } => {
                let (c, s, span) = (*count, *sum, *counts);
                let now = &batch.counts[span.range()];
                let delta = match &state.last {
                    Last::Histogram(prev) => histogram_delta(prev, c, s, now),
                    _ => None,
                };
                state.last = Last::Histogram(Box::new(LastHistogram {
                    count: c,
                    sum: s,
                    counts: now.into(),
                }));
                if let Some((dc, ds, dcounts)) = delta {
                    let start = batch.counts.len();
                    batch.counts.extend_from_slice(&dcounts);
                    if let PointValue::Histogram { count, sum, counts, .. } = &mut batch.points[i].value {
                        *count = dc;
                        *sum = ds;
                        *counts = Span::new(start, batch.counts.len());
                    }
                }
            }
            PointValue::Exponential(e) => {
                let e = *e;
                let now = exp_from(&e, batch, &[]);
                let delta = match &state.last {
                    Last::Exponential(prev) => now.delta_since(prev),
                    _ => None,
                };
                if let Some(d) = delta {
                    batch.points[i].value = PointValue::Exponential(push_exp(batch, &d));
                }
                state.last = Last::Exponential(Box::new(now));
            }
            // Both parts continue their previous report, or the point stays as it is (a reset).
            PointValue::Both { bounds, counts, native } => {
                let (bounds, span, e) = (*bounds, *counts, *native);
                let now = &batch.counts[span.range()];
                let now_exp = exp_from(&e, batch, &[]);
                let delta = match &state.last {
                    Last::Both(prev, prev_exp) => {
                        histogram_delta(prev, e.count, e.sum, now).zip(now_exp.delta_since(prev_exp))
                    }
                    _ => None,
                };
                let last = LastHistogram {
                    count: e.count,
                    sum: e.sum,
                    counts: now.into(),
                };
                state.last = Last::Both(Box::new(last), Box::new(now_exp));
                if let Some(((_, _, dcounts), d)) = delta {
                    let start = batch.counts.len();
                    batch.counts.extend_from_slice(&dcounts);
                    let counts = Span::new(start, batch.counts.len());
                    let native = push_exp(batch, &d);
                    batch.points[i].value = PointValue::Both { bounds, counts, native };
                }
            }
            PointValue::Info => {}
        }
        Ok(())
    }
}

/// The increment from the explicit histogram `prev` to the report (`count`, `sum`, `now`): count,
/// sum and per-bucket counts; `None` when the report does not continue `prev` (a count went down,
/// or the layout changed).
fn histogram_delta(prev: &LastHistogram, count: u64, sum: f64, now: &[u64]) -> Option<(u64, f64, Vec<u64>)> {
    let continues = count >= prev.count
        && prev.counts.len() == now.len()
        && now.iter().zip(prev.counts.iter()).all(|(a, b)| a >= b);
    continues.then(|| {
        let counts = now.iter().zip(prev.counts.iter()).map(|(a, b)| a - b).collect();
        (count - prev.count, sum - prev.sum, counts)
    })
}

/// Pushes the buckets of `d` to `batch`'s count arena; returns its point.
fn push_exp(batch: &mut Samples, d: &ExpHistogram) -> ExpPoint {
    let p0 = batch.counts.len();
    batch.counts.extend_from_slice(&d.positive.counts);
    let n0 = batch.counts.len();
    batch.counts.extend_from_slice(&d.negative.counts);
    ExpPoint {
        count: d.count,
        sum: d.sum,
        scale: d.scale,
        zero_count: d.zero_count,
        zero_threshold: d.zero_threshold,
        positive_offset: d.positive.offset,
        positive: Span::new(p0, n0),
        negative_offset: d.negative.offset,
        negative: Span::new(n0, batch.counts.len()),
    }
}
