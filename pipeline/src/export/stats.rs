//! What the exporters report about themselves: items sent and dropped (by a closed set of
//! reasons), retries, queue fill and bound, and attempt durations. `crate::telemetry` holds one
//! [`ExporterStats`] per exporter and renders them; the exporters only count.

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A closed set of `reason` label values for an exporter's drops.
pub trait Reason: Copy + Into<usize> + 'static {
    /// Every value, in label order (`ALL[i]` converts to `i`).
    const ALL: &'static [Self];
    /// The `reason` label value.
    fn as_str(self) -> &'static str;
}

/// Why spans were dropped by the trace exporter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The backend refused the batch with a non-retryable error.
    Permanent,
    /// The backend accepted the batch but rejected these spans (`partial_success`).
    RejectedByBackend,
    /// The queue could not be flushed within `shutdown_timeout`.
    Shutdown,
}

impl Reason for DropReason {
    const ALL: &'static [Self] = &[
        DropReason::Permanent,
        DropReason::RejectedByBackend,
        DropReason::Shutdown,
    ];

    fn as_str(self) -> &'static str {
        match self {
            DropReason::Permanent => "permanent_error",
            DropReason::RejectedByBackend => "rejected_by_backend",
            DropReason::Shutdown => "shutdown",
        }
    }
}

/// Why the remote-write exporter dropped samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteWriteDropReason {
    /// A newer snapshot did not fit in `queue_max_bytes`, so older queued requests were dropped.
    QueueFull,
    /// The receiver refused the request with a non-retryable status (4xx other than 429).
    Permanent,
    /// The queue could not be flushed within `shutdown_timeout`.
    Shutdown,
}

impl Reason for RemoteWriteDropReason {
    const ALL: &'static [Self] = &[
        RemoteWriteDropReason::QueueFull,
        RemoteWriteDropReason::Permanent,
        RemoteWriteDropReason::Shutdown,
    ];

    fn as_str(self) -> &'static str {
        match self {
            RemoteWriteDropReason::QueueFull => "queue_full",
            RemoteWriteDropReason::Permanent => "permanent_error",
            RemoteWriteDropReason::Shutdown => "shutdown",
        }
    }
}

impl From<DropReason> for usize {
    fn from(r: DropReason) -> usize {
        r as usize
    }
}

impl From<RemoteWriteDropReason> for usize {
    fn from(r: RemoteWriteDropReason) -> usize {
        r as usize
    }
}

/// Most drop reasons any exporter has.
const MAX_REASONS: usize = 3;

// Every reason indexes the `dropped` counters: the sets must fit and list their values in order.
const _: () = {
    assert!(DropReason::ALL.len() <= MAX_REASONS);
    assert!(RemoteWriteDropReason::ALL.len() <= MAX_REASONS);
    let mut i = 0;
    while i < DropReason::ALL.len() {
        assert!(DropReason::ALL[i] as usize == i);
        i += 1;
    }
    let mut i = 0;
    while i < RemoteWriteDropReason::ALL.len() {
        assert!(RemoteWriteDropReason::ALL[i] as usize == i);
        i += 1;
    }
};

/// Upper bounds (seconds) of the attempt and scrape duration histograms.
pub const DURATION_BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// A duration histogram with the fixed [`DURATION_BUCKETS`].
#[derive(Debug, Default)]
pub struct DurationHistogram {
    buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl DurationHistogram {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = DURATION_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(DURATION_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    /// Cumulative counts: one per bound of [`DURATION_BUCKETS`], then the `+Inf` count.
    pub fn cumulative(&self) -> [u64; DURATION_BUCKETS.len() + 1] {
        let mut out = [0; DURATION_BUCKETS.len() + 1];
        let mut cum = 0;
        for (o, b) in out.iter_mut().zip(&self.buckets) {
            cum += b.load(Ordering::Relaxed);
            *o = cum;
        }
        out
    }

    /// Sum of the recorded durations, in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9
    }
}

/// What every exporter reports: items sent, items dropped by reason, retried attempts, queue fill
/// and bound, and attempt durations. A cheap handle: clones count into the same counters.
#[derive(Debug)]
pub struct ExporterStats<R> {
    inner: Arc<Counters>,
    reason: PhantomData<R>,
}

#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    sent_exemplars: AtomicU64,
    dropped: [AtomicU64; MAX_REASONS],
    retries: AtomicU64,
    queue_bytes: AtomicU64,
    queue_capacity: AtomicU64,
    attempts: DurationHistogram,
}

impl<R> Clone for ExporterStats<R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            reason: PhantomData,
        }
    }
}

impl<R> Default for ExporterStats<R> {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            reason: PhantomData,
        }
    }
}

impl<R: Reason> ExporterStats<R> {
    /// Counts items the receiving end acknowledged.
    pub fn sent(&self, n: u64) {
        self.inner.sent.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts exemplars the receiving end acknowledged (remote write, which sends them apart from
    /// samples).
    pub fn sent_exemplars(&self, n: u64) {
        self.inner.sent_exemplars.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts dropped items.
    pub fn dropped(&self, reason: R, n: u64) {
        self.inner.dropped[reason.into()].fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one failed attempt that will be retried.
    pub fn retried(&self) {
        self.inner.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets the queue's fill and bound, in bytes.
    pub fn queue(&self, bytes: u64, capacity: u64) {
        self.inner.queue_bytes.store(bytes, Ordering::Relaxed);
        self.inner.queue_capacity.store(capacity, Ordering::Relaxed);
    }

    /// Records the duration of one attempt.
    pub fn took(&self, d: Duration) {
        self.inner.attempts.observe(d);
    }

    /// Items sent so far.
    pub fn sent_total(&self) -> u64 {
        self.inner.sent.load(Ordering::Relaxed)
    }

    /// Exemplars sent so far.
    pub fn sent_exemplars_total(&self) -> u64 {
        self.inner.sent_exemplars.load(Ordering::Relaxed)
    }

    /// Items dropped for `reason` so far.
    pub fn dropped_total(&self, reason: R) -> u64 {
        self.inner.dropped[reason.into()].load(Ordering::Relaxed)
    }

    /// Retried attempts so far.
    pub fn retries_total(&self) -> u64 {
        self.inner.retries.load(Ordering::Relaxed)
    }

    /// Bytes queued now.
    pub fn queue_bytes(&self) -> u64 {
        self.inner.queue_bytes.load(Ordering::Relaxed)
    }

    /// The queue's bound, in bytes.
    pub fn queue_capacity(&self) -> u64 {
        self.inner.queue_capacity.load(Ordering::Relaxed)
    }

    /// Attempt durations.
    pub fn attempts(&self) -> &DurationHistogram {
        &self.inner.attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lists every variant of `R` with an exhaustive match (adding a variant fails to compile
    /// here) and checks `ALL` holds each one at its index with a distinct label value.
    fn assert_closed<R: Reason + PartialEq + std::fmt::Debug>(every: &[R]) {
        assert_eq!(R::ALL, every, "ALL lists every variant in order");
        for (i, r) in R::ALL.iter().enumerate() {
            assert_eq!((*r).into(), i);
            assert!(R::ALL[..i].iter().all(|o| o.as_str() != r.as_str()), "{r:?}");
        }
    }

    #[test]
    fn drop_reasons_are_closed_sets() {
        let every = |r: DropReason| match r {
            DropReason::Permanent | DropReason::RejectedByBackend | DropReason::Shutdown => r,
        };
        assert_closed(&[
            every(DropReason::Permanent),
            every(DropReason::RejectedByBackend),
            every(DropReason::Shutdown),
        ]);
        let every = |r: RemoteWriteDropReason| match r {
            RemoteWriteDropReason::QueueFull | RemoteWriteDropReason::Permanent | RemoteWriteDropReason::Shutdown => r,
        };
        assert_closed(&[
            every(RemoteWriteDropReason::QueueFull),
            every(RemoteWriteDropReason::Permanent),
            every(RemoteWriteDropReason::Shutdown),
        ]);
    }

    #[test]
    fn clones_count_into_the_same_counters() {
        let a = ExporterStats::<DropReason>::default();
        let b = a.clone();
        b.sent(3);
        b.dropped(DropReason::Shutdown, 2);
        b.took(Duration::from_millis(3));
        assert_eq!(a.sent_total(), 3);
        assert_eq!(a.dropped_total(DropReason::Shutdown), 2);
        assert_eq!(a.attempts().cumulative()[1], 0);
        assert_eq!(a.attempts().cumulative()[2], 1);
    }
}
