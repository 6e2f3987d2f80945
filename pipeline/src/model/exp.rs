//! Base-2 exponential histogram state: exact merging of deltas (by downscaling to a common scale)
//! and conversion to classic `le` buckets for exposition. Shared vocabulary: the store keeps series
//! in this form, and the cardinality limiter keeps the last cumulative report of a stream in it.

use super::Exemplar;
use super::batch::{ExpPoint, Samples};

/// Most buckets one side of a stored exponential histogram may span; wider inputs are downscaled,
/// which keeps memory bounded whatever offsets a sender uses.
pub const MAX_BUCKETS: usize = 320;

/// One side (positive or negative) of an exponential histogram.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Buckets {
    /// Index of `counts[0]`.
    pub offset: i32,
    /// Per-bucket counts.
    pub counts: Vec<u64>,
}

impl Buckets {
    fn downscale(&mut self, by: u32) {
        if by == 0 || self.counts.is_empty() {
            return;
        }
        let first = self.offset >> by;
        let last = (self.offset + self.counts.len() as i32 - 1) >> by;
        let mut out = vec![0u64; (last - first + 1) as usize];
        for (i, c) in self.counts.iter().enumerate() {
            let idx = ((self.offset + i as i32) >> by) - first;
            out[idx as usize] = out[idx as usize].saturating_add(*c);
        }
        self.offset = first;
        self.counts = out;
    }

    /// The scale reduction needed so that `self` and `other` together fit in [`MAX_BUCKETS`].
    fn reduction_to_fit(&self, other: &Buckets) -> u32 {
        let ranges = [self, other].into_iter().filter(|b| !b.counts.is_empty());
        let (lo, hi) = ranges.fold((i64::MAX, i64::MIN), |(lo, hi), b| {
            (
                lo.min(b.offset as i64),
                hi.max(b.offset as i64 + b.counts.len() as i64 - 1),
            )
        });
        let mut by = 0;
        while lo <= hi && ((hi >> by) - (lo >> by) + 1) as usize > MAX_BUCKETS {
            by += 1;
        }
        by
    }

    /// `self - other` bucket by bucket; `None` when a bucket of `other` is larger.
    fn minus(&self, other: &Buckets) -> Option<Buckets> {
        let get = |b: &Buckets, i: i64| {
            let k = i - b.offset as i64;
            if k >= 0 {
                b.counts.get(k as usize).copied().unwrap_or(0)
            } else {
                0
            }
        };
        let first = other.offset as i64;
        if other
            .counts
            .iter()
            .enumerate()
            .any(|(k, c)| get(self, first + k as i64) < *c)
        {
            return None;
        }
        let counts: Vec<u64> = (0..self.counts.len() as i64)
            .map(|k| self.counts[k as usize] - get(other, self.offset as i64 + k))
            .collect();
        Some(Buckets {
            offset: self.offset,
            counts,
        })
    }

    fn add(&mut self, other: &Buckets) {
        if other.counts.is_empty() {
            return;
        }
        if self.counts.is_empty() {
            *self = other.clone();
            return;
        }
        let lo = self.offset.min(other.offset);
        let hi = (self.offset + self.counts.len() as i32).max(other.offset + other.counts.len() as i32);
        let mut out = vec![0u64; (hi - lo) as usize];
        for b in [&*self, other] {
            for (i, c) in b.counts.iter().enumerate() {
                let slot = &mut out[(b.offset - lo) as usize + i];
                *slot = slot.saturating_add(*c);
            }
        }
        self.offset = lo;
        self.counts = out;
    }
}

/// Where an exemplar sits: a positive bucket, a negative bucket, or the zero bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Positive bucket index.
    Positive(i32),
    /// Negative bucket index (by absolute value).
    Negative(i32),
    /// The zero bucket.
    Zero,
}

/// Stored exponential histogram.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpHistogram {
    /// Resolution.
    pub scale: i32,
    /// Observations.
    pub count: u64,
    /// Sum of observations (`NaN` when unknown).
    pub sum: f64,
    /// Zero bucket count.
    pub zero_count: u64,
    /// Zero bucket width.
    pub zero_threshold: f64,
    /// Positive buckets.
    pub positive: Buckets,
    /// Negative buckets.
    pub negative: Buckets,
    /// At most one exemplar per bucket.
    pub exemplars: Vec<(Slot, Exemplar)>,
}

/// The stored form of an exponential point of `batch` (normalized), with its exemplars offered.
pub(crate) fn exp_from(p: &ExpPoint, batch: &Samples, exs: &[Exemplar]) -> ExpHistogram {
    let mut h = ExpHistogram {
        scale: p.scale,
        count: p.count,
        sum: p.sum,
        zero_count: p.zero_count,
        zero_threshold: p.zero_threshold,
        positive: Buckets {
            offset: p.positive_offset,
            counts: batch.counts[p.positive.range()].to_vec(),
        },
        negative: Buckets {
            offset: p.negative_offset,
            counts: batch.counts[p.negative.range()].to_vec(),
        },
        exemplars: Vec::new(),
    };
    h.normalize();
    for e in exs {
        h.offer_exemplar(*e);
    }
    h
}

impl ExpHistogram {
    /// Fits the histogram into [`MAX_BUCKETS`] per side.
    pub fn normalize(&mut self) {
        let by = self
            .positive
            .reduction_to_fit(&Buckets::default())
            .max(self.negative.reduction_to_fit(&Buckets::default()));
        self.downscale(by);
    }

    /// This histogram at a scale of at most `max` (downscaled exactly: buckets merge in pairs).
    pub fn with_max_scale(&self, max: i32) -> ExpHistogram {
        let mut h = self.clone();
        if h.scale > max {
            h.downscale((h.scale - max) as u32);
        }
        h
    }

    fn downscale(&mut self, by: u32) {
        if by == 0 {
            return;
        }
        self.positive.downscale(by);
        self.negative.downscale(by);
        self.scale -= by as i32;
        self.rekey_exemplars();
    }

    /// Adds a delta histogram to this one, exactly: both are brought to the coarser scale first.
    pub fn merge_delta(&mut self, mut d: ExpHistogram) {
        let scale = self.scale.min(d.scale);
        self.downscale((self.scale - scale) as u32);
        d.downscale((d.scale - scale) as u32);
        let by = self
            .positive
            .reduction_to_fit(&d.positive)
            .max(self.negative.reduction_to_fit(&d.negative));
        self.downscale(by);
        d.downscale(by);
        self.positive.add(&d.positive);
        self.negative.add(&d.negative);
        self.count = self.count.saturating_add(d.count);
        self.sum += d.sum;
        self.zero_count = self.zero_count.saturating_add(d.zero_count);
        self.zero_threshold = self.zero_threshold.max(d.zero_threshold);
        for (_, e) in d.exemplars {
            self.offer_exemplar(e);
        }
    }

    /// The increment from an earlier cumulative report `prev` to this one, at the coarser of the two
    /// scales (so merging it elsewhere stays exact). `None` when this report is not a continuation
    /// of `prev` (a reset: a count went down, or the zero bucket was resized).
    pub fn delta_since(&self, prev: &ExpHistogram) -> Option<ExpHistogram> {
        if self.count < prev.count || self.zero_count < prev.zero_count || self.zero_threshold != prev.zero_threshold {
            return None;
        }
        let scale = self.scale.min(prev.scale);
        let (mut cur, mut old) = (self.clone(), prev.clone());
        cur.exemplars.clear();
        old.exemplars.clear();
        cur.downscale((cur.scale - scale) as u32);
        old.downscale((old.scale - scale) as u32);
        let positive = cur.positive.minus(&old.positive)?;
        let negative = cur.negative.minus(&old.negative)?;
        Some(ExpHistogram {
            scale,
            count: cur.count - old.count,
            sum: cur.sum - old.sum,
            zero_count: cur.zero_count - old.zero_count,
            zero_threshold: cur.zero_threshold,
            positive,
            negative,
            exemplars: Vec::new(),
        })
    }

    /// Replaces the state with a cumulative report, keeping exemplars the report does not replace.
    pub fn replace(&mut self, new: ExpHistogram) {
        let old = std::mem::take(&mut self.exemplars);
        *self = new;
        for (_, e) in old {
            self.offer_exemplar(e);
        }
    }

    /// The slot a value falls into at the current scale.
    pub fn slot(&self, v: f64) -> Slot {
        let a = v.abs();
        if a <= self.zero_threshold || a == 0.0 || !a.is_finite() {
            return Slot::Zero;
        }
        let idx = bucket_index(a, self.scale);
        if v > 0.0 {
            Slot::Positive(idx)
        } else {
            Slot::Negative(idx)
        }
    }

    /// Keeps `e` as its bucket's exemplar unless that bucket has a newer one.
    pub fn offer_exemplar(&mut self, e: Exemplar) {
        let slot = self.slot(e.value);
        match self.exemplars.iter_mut().find(|(s, _)| *s == slot) {
            Some((_, old)) if old.time_unix_nano <= e.time_unix_nano => *old = e,
            Some(_) => {}
            None => self.exemplars.push((slot, e)),
        }
    }

    fn rekey_exemplars(&mut self) {
        let old = std::mem::take(&mut self.exemplars);
        for (_, e) in old {
            self.offer_exemplar(e);
        }
    }

    /// Classic cumulative buckets, ascending: `(upper bound, cumulative count, exemplar)`, ending
    /// with `+Inf`.
    pub fn classic_buckets(&self) -> Vec<(f64, u64, Option<&Exemplar>)> {
        let ex = |s: Slot| self.exemplars.iter().find(|(k, _)| *k == s).map(|(_, e)| e);
        let mut out = Vec::with_capacity(self.positive.counts.len() + self.negative.counts.len() + 2);
        let mut cum = 0u64;
        let n = &self.negative;
        for (i, c) in n.counts.iter().enumerate().rev() {
            let idx = n.offset + i as i32;
            cum = cum.saturating_add(*c);
            out.push((-lower_boundary(idx, self.scale), cum, ex(Slot::Negative(idx))));
        }
        // Positive buckets that end at or below the zero threshold lie inside the zero bucket.
        let p = &self.positive;
        let upper = |i: usize| lower_boundary(p.offset + i as i32 + 1, self.scale);
        let inside = p
            .counts
            .iter()
            .enumerate()
            .take_while(|(i, _)| upper(*i) <= self.zero_threshold);
        let (folded, skip) = inside.fold((0u64, 0usize), |(c, n), (_, x)| (c.saturating_add(*x), n + 1));
        cum = cum.saturating_add(self.zero_count).saturating_add(folded);
        out.push((self.zero_threshold, cum, ex(Slot::Zero)));
        for (i, c) in p.counts.iter().enumerate().skip(skip) {
            let idx = p.offset + i as i32;
            cum = cum.saturating_add(*c);
            out.push((upper(i), cum, ex(Slot::Positive(idx))));
        }
        out.push((f64::INFINITY, cum.max(self.count), None));
        out
    }
}

/// `base^index` where `base = 2^(2^-scale)`: the lower boundary of bucket `index`.
pub fn lower_boundary(index: i32, scale: i32) -> f64 {
    ((index as f64) * (-(scale as f64)).exp2()).exp2()
}

/// The bucket index of a positive finite value: bucket `i` covers `(base^i, base^(i+1)]`.
pub fn bucket_index(v: f64, scale: i32) -> i32 {
    // Exact for powers of two (which sit on boundaries and belong to the lower bucket).
    let (mantissa, exp) = frexp(v);
    if scale <= 0 {
        let e = if mantissa == 0.5 { exp - 2 } else { exp - 1 };
        return e >> (-scale);
    }
    if mantissa == 0.5 {
        return ((exp - 1) << scale) - 1;
    }
    let idx = (v.log2() * (scale as f64).exp2()).ceil() as i64 - 1;
    // Correct floating error at boundaries.
    let mut idx = idx as i32;
    if lower_boundary(idx, scale) >= v {
        idx -= 1;
    } else if lower_boundary(idx + 1, scale) < v {
        idx += 1;
    }
    idx
}

/// `v = m * 2^e` with `m` in `[0.5, 1)`.
fn frexp(v: f64) -> (f64, i32) {
    if v == 0.0 || !v.is_finite() {
        return (v, 0);
    }
    let bits = v.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i32;
    if exp == 0 {
        let (m, e) = frexp(v * 2f64.powi(64));
        return (m, e - 64);
    }
    let m = f64::from_bits((bits & !(0x7ff << 52)) | (1022 << 52));
    (m, exp - 1022)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bucket_index_matches_spec_examples() {
        // Scale 0: base 2; 1 is in bucket -1 (0.5, 1], 2 in bucket 0 (1, 2], 3 in bucket 1 (2, 4].
        assert_eq!(bucket_index(1.0, 0), -1);
        assert_eq!(bucket_index(2.0, 0), 0);
        assert_eq!(bucket_index(3.0, 0), 1);
        assert_eq!(bucket_index(4.0, 0), 1);
        // Scale 1: base sqrt(2).
        assert_eq!(bucket_index(1.5, 1), 1);
        assert_eq!(bucket_index(2.0, 1), 1);
        // Scale -1: base 4; 5 in bucket 1 (4, 16].
        assert_eq!(bucket_index(5.0, -1), 1);
        assert_eq!(bucket_index(4.0, -1), 0);
    }

    proptest! {
        #[test]
        fn value_lies_within_its_bucket(v in 1e-300f64..1e300, scale in -5i32..=12) {
            let i = bucket_index(v, scale);
            let lo = lower_boundary(i, scale);
            let hi = lower_boundary(i + 1, scale);
            // Allow one ulp-ish of slack in the boundary computation itself.
            prop_assert!(lo <= v * (1.0 + 1e-12) && v <= hi * (1.0 + 1e-12), "{v} not in ({lo}, {hi}] at scale {scale}, idx {i}");
        }

        #[test]
        fn delta_merge_preserves_counts(
            a in proptest::collection::vec(0u64..100, 0..40), ao in -50i32..50, asc in 0i32..6,
            b in proptest::collection::vec(0u64..100, 0..40), bo in -50i32..50, bsc in 0i32..6,
        ) {
            let mk = |counts: Vec<u64>, offset, scale| ExpHistogram {
                scale, count: counts.iter().sum(), sum: 0.0, zero_count: 1, zero_threshold: 0.0,
                positive: Buckets { offset, counts }, negative: Buckets::default(), exemplars: vec![],
            };
            let mut x = mk(a.clone(), ao, asc);
            x.merge_delta(mk(b.clone(), bo, bsc));
            let total: u64 = a.iter().sum::<u64>() + b.iter().sum::<u64>();
            prop_assert_eq!(x.positive.counts.iter().sum::<u64>(), total);
            prop_assert_eq!(x.count, total);
            prop_assert_eq!(x.zero_count, 2);
            prop_assert!(x.positive.counts.len() <= MAX_BUCKETS);
            let buckets = x.classic_buckets();
            prop_assert_eq!(buckets.last().map(|b| b.1), Some(total + 2));
            prop_assert!(buckets.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        }
    }
}
