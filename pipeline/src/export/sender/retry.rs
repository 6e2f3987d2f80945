//! When to try again: exponential backoff with jitter, honouring the delay a peer asks for (gRPC
//! `RetryInfo`, HTTP `Retry-After`). One policy for every exporter, set by its
//! `retry_initial_backoff` and `retry_max_backoff` keys.

use std::time::{Duration, Instant};

use tonic_types::StatusExt;

/// An exporter's retry delays: the first one, doubled per attempt up to the longest one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// First retry delay (`retry_initial_backoff`).
    pub initial: Duration,
    /// Longest retry delay (`retry_max_backoff`); a peer may ask for more.
    pub max: Duration,
}

/// The delays of one batch's retries.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: RetryPolicy,
    next: Duration,
}

impl Backoff {
    /// The schedule of a new batch: its first retry waits about `policy.initial`.
    pub fn new(policy: RetryPolicy) -> Self {
        Self {
            policy,
            next: policy.initial,
        }
    }

    /// How long to wait before the next attempt, given the delay the peer `asked` for: the longer
    /// of that delay (or, when the peer asked nothing, the current backoff) and the backoff scaled
    /// by a random factor in [0.8, 1.2] — jitter, so that senders that failed together do not
    /// retry together. Without an ask the wait is in [1.0, 1.2] × the backoff; a peer's delay
    /// beyond that is honoured in full. Then the backoff doubles, capped at `policy.max`.
    pub fn next_delay(&mut self, asked: Option<Duration>) -> Duration {
        self.delay_with(asked, jitter(self.next))
    }

    /// [`Backoff::next_delay`] with the jittered backoff given (for tests).
    fn delay_with(&mut self, asked: Option<Duration>, jittered: Duration) -> Duration {
        let wait = asked.unwrap_or(self.next).max(jittered);
        self.next = self.next.saturating_mul(2).min(self.policy.max);
        wait
    }
}

/// `d` scaled by a random factor in [0.8, 1.2].
pub fn jitter(d: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    let r = (h.finish() % 4001) as f64 / 10_000.0; // 0.0 ..= 0.4
    d.mul_f64(0.8 + r)
}

/// The delay an HTTP `Retry-After` header asks for, when it is given in seconds (an HTTP date
/// falls back to the backoff).
pub fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// The delay a gRPC status's `google.rpc.RetryInfo` detail asks for.
pub fn retry_info(status: &tonic::Status) -> Option<Duration> {
    status.get_details_retry_info().and_then(|r| r.retry_delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RetryPolicy = RetryPolicy {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(1),
    };

    #[test]
    fn jitter_stays_within_twenty_percent() {
        for _ in 0..1000 {
            let j = jitter(Duration::from_millis(1000));
            assert!(
                j >= Duration::from_millis(800) && j <= Duration::from_millis(1200),
                "{j:?}"
            );
        }
    }

    #[test]
    fn the_schedule_doubles_up_to_the_cap_with_jitter() {
        let mut b = Backoff::new(POLICY);
        let waits: Vec<Duration> = (0..7).map(|_| b.next_delay(None)).collect();
        let base = [100, 200, 400, 800, 1000, 1000, 1000].map(Duration::from_millis);
        for (w, base) in waits.iter().zip(base) {
            assert!(*w >= base && *w <= base.mul_f64(1.2), "{w:?} for a backoff of {base:?}");
        }
        // Exactly, with the jitter fixed at its extremes.
        let mut b = Backoff::new(POLICY);
        assert_eq!(
            b.delay_with(None, Duration::from_millis(80)),
            Duration::from_millis(100),
            "never under the backoff"
        );
        assert_eq!(
            b.delay_with(None, Duration::from_millis(240)),
            Duration::from_millis(240)
        );
    }

    #[test]
    fn a_delay_the_peer_asks_for_is_honoured_but_never_shortens_the_backoff() {
        let mut b = Backoff::new(POLICY);
        // Longer than the backoff, and than its cap: waited as asked.
        assert_eq!(b.next_delay(Some(Duration::from_secs(3))), Duration::from_secs(3));
        // The backoff went on doubling meanwhile (200ms now): a shorter ask waits the jittered
        // backoff.
        let w = b.next_delay(Some(Duration::from_millis(1)));
        assert!(
            w >= Duration::from_millis(160) && w <= Duration::from_millis(240),
            "{w:?}"
        );
    }

    #[test]
    fn retry_after_reads_seconds() {
        let mut h = http::HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(http::header::RETRY_AFTER, http::HeaderValue::from_static(" 3 "));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), None, "dates fall back to the backoff");
    }

    #[test]
    fn retry_info_reads_the_grpc_detail() {
        let with_info = tonic::Status::with_error_details(
            tonic::Code::ResourceExhausted,
            "busy",
            tonic_types::ErrorDetails::with_retry_info(Some(Duration::from_secs(3))),
        );
        assert_eq!(retry_info(&with_info), Some(Duration::from_secs(3)));
        assert_eq!(retry_info(&tonic::Status::unavailable("down")), None);
        // What the exporter then waits: the peer's 3s, over a 100ms backoff.
        let mut b = Backoff::new(POLICY);
        assert_eq!(b.next_delay(retry_info(&with_info)), Duration::from_secs(3));
    }
}
