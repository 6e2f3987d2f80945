//! The one stats type every exporter reports ([`ExporterStats`]): items sent and dropped (by a
//! closed set of reasons, [`Reason`]), retries, queue fill and bound, and attempt durations.
//! `crate::telemetry` holds one per exporter and renders them; the sender and the exporters only
//! count. The newest failed attempt ([`LastError`]) is kept beside the counters for the status
//! page (`expose::page`); it is not a metric (its text is not from a closed set).

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// A closed set of `reason` label values for an exporter's drops.
pub trait Reason: Copy + Into<usize> + Send + Sync + 'static {
    /// Every value, in label order (`ALL[i]` converts to `i`).
    const ALL: &'static [Self];
    /// The peer refused a batch with a non-retryable error.
    const PERMANENT: Self;
    /// What was still held when the shutdown deadline came.
    const SHUTDOWN: Self;
    /// Items the peer accepted a batch with but rejected (`partial_success`); `None` when the
    /// protocol has no such answer (then they count as [`Reason::PERMANENT`]).
    const REJECTED: Option<Self>;
    /// The `reason` label value.
    fn as_str(self) -> &'static str;
}

/// Most drop reasons any exporter has.
pub const MAX_REASONS: usize = 3;

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

/// What a disk queue counts while it runs, shared between the queue and its exporter's stats.
#[derive(Debug, Default)]
pub struct QueueEvents {
    /// Records that failed their checksum: read back while running, or stretches skipped or
    /// truncated at start.
    pub corrupt: AtomicU64,
    /// Writes, flushes and position updates that failed (disk full, I/O errors).
    pub io_errors: AtomicU64,
}

#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    resent: AtomicU64,
    disk: Arc<QueueEvents>,
    sent_exemplars: AtomicU64,
    dropped: [AtomicU64; MAX_REASONS],
    retries: AtomicU64,
    tls_failures: Arc<AtomicU64>,
    queue_bytes: AtomicU64,
    queue_capacity: AtomicU64,
    attempts: DurationHistogram,
    last_error: parking_lot::Mutex<Option<LastError>>,
}

/// An exporter's newest failed attempt: when, what went wrong (the text its log line carries,
/// without secrets) and whether it was retried or the batch dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastError {
    /// When the attempt failed.
    pub at: SystemTime,
    /// What went wrong, at most [`LastError::MAX_LEN`] bytes.
    pub message: String,
    /// `true`: not retried, the batch was dropped; `false`: retried.
    pub permanent: bool,
}

impl LastError {
    /// Longest message kept, in bytes (cut at a character boundary).
    pub const MAX_LEN: usize = 512;
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
    /// Counts items delivered again after a restart (a durable queue delivers at least once).
    pub fn resent(&self, n: u64) {
        self.inner.resent.fetch_add(n, Ordering::Relaxed);
    }

    /// Items delivered again after a restart.
    pub fn resent_total(&self) -> u64 {
        self.inner.resent.load(Ordering::Relaxed)
    }

    /// The counters a disk queue updates.
    pub fn disk(&self) -> &Arc<QueueEvents> {
        &self.inner.disk
    }

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

    /// The counter of attempts that failed in the TLS handshake, for the client
    /// ([`super::client::TlsFailures`]).
    pub fn tls_failure_counter(&self) -> Arc<AtomicU64> {
        self.inner.tls_failures.clone()
    }

    /// Attempts that failed in the TLS handshake so far.
    pub fn tls_failures_total(&self) -> u64 {
        self.inner.tls_failures.load(Ordering::Relaxed)
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

    /// Records a failed attempt (once per attempt, never per item): `permanent` when the batch
    /// is dropped rather than retried. Replaces the previous one.
    pub fn failed(&self, message: &str, permanent: bool) {
        let mut end = message.len().min(LastError::MAX_LEN);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        *self.inner.last_error.lock() = Some(LastError {
            at: SystemTime::now(),
            message: message[..end].to_string(),
            permanent,
        });
    }

    /// The newest failed attempt, if any.
    pub fn last_error(&self) -> Option<LastError> {
        self.inner.last_error.lock().clone()
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

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Why {
        Permanent,
        Shutdown,
    }

    impl From<Why> for usize {
        fn from(w: Why) -> usize {
            w as usize
        }
    }

    impl Reason for Why {
        const ALL: &'static [Self] = &[Why::Permanent, Why::Shutdown];
        const PERMANENT: Self = Why::Permanent;
        const SHUTDOWN: Self = Why::Shutdown;
        const REJECTED: Option<Self> = None;
        fn as_str(self) -> &'static str {
            match self {
                Why::Permanent => "permanent_error",
                Why::Shutdown => "shutdown",
            }
        }
    }

    #[test]
    fn clones_count_into_the_same_counters() {
        let a = ExporterStats::<Why>::default();
        let b = a.clone();
        b.sent(3);
        b.dropped(Why::Shutdown, 2);
        b.took(Duration::from_millis(3));
        assert_eq!(a.sent_total(), 3);
        assert_eq!(a.dropped_total(Why::Shutdown), 2);
        assert_eq!(a.dropped_total(Why::Permanent), 0);
        assert_eq!(a.attempts().cumulative()[1], 0);
        assert_eq!(a.attempts().cumulative()[2], 1);
        assert_eq!(a.last_error(), None);
        b.failed("HTTP 503: busy", false);
        b.failed(&"é".repeat(400), true);
        let e = a.last_error().expect("recorded");
        assert!(e.permanent);
        assert!(e.message.len() <= LastError::MAX_LEN && e.message.len() >= LastError::MAX_LEN - 1);
        assert!(e.message.chars().all(|c| c == 'é'));
    }
}
