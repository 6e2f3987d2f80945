//! Shutdown with a deadline, for every exporter: once `drain` is cancelled, the exporter has
//! `shutdown_timeout` — measured from the first moment anyone looks after the drain began — to
//! send what it holds. The deadline is observed everywhere: an attempt in flight at the deadline
//! is cut off, and a retry that would come after it is not attempted.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// One exporter's shutdown: the drain signal, the end of its input, and the deadline.
#[derive(Debug)]
pub struct Shutdown {
    drain: CancellationToken,
    input_done: CancellationToken,
    timeout: Duration,
    deadline: OnceLock<Instant>,
}

impl Shutdown {
    /// Shutdown begins when `drain` is cancelled; the input has ended by then (receivers stop
    /// before the exporters drain).
    pub fn new(drain: CancellationToken, timeout: Duration) -> Self {
        Self::with_input(drain.clone(), drain, timeout)
    }

    /// Shutdown begins when `drain` is cancelled, and the input ends when `input_done` is (e.g.
    /// after a last snapshot was queued): until then the sender keeps waiting for more.
    pub fn with_input(drain: CancellationToken, input_done: CancellationToken, timeout: Duration) -> Self {
        Self {
            drain,
            input_done,
            timeout,
            deadline: OnceLock::new(),
        }
    }

    /// `shutdown_timeout`.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether shutdown has begun.
    pub fn draining(&self) -> bool {
        self.drain.is_cancelled()
    }

    /// Completes when shutdown begins.
    pub async fn drained(&self) {
        self.drain.cancelled().await;
    }

    /// Whether the input has ended.
    pub fn input_ended(&self) -> bool {
        self.input_done.is_cancelled()
    }

    /// Completes when the input has ended.
    pub async fn input_done(&self) {
        self.input_done.cancelled().await;
    }

    /// The deadline, fixed the first time it is asked for (ask only once draining).
    pub fn deadline(&self) -> Instant {
        *self.deadline.get_or_init(|| Instant::now() + self.timeout)
    }

    /// Whether shutdown has begun and its deadline has passed.
    pub fn past_deadline(&self) -> bool {
        self.draining() && Instant::now() >= self.deadline()
    }

    /// Completes at the deadline; never while running.
    pub async fn reached(&self) {
        self.drained().await;
        tokio::time::sleep_until(self.deadline()).await;
    }

    /// Whether an attempt at `at` would come after the deadline (never while running).
    pub fn too_late(&self, at: Instant) -> bool {
        self.draining() && at > self.deadline()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_deadline_runs_from_the_drain_and_is_fixed_once() {
        let drain = CancellationToken::new();
        let s = Shutdown::new(drain.clone(), Duration::from_secs(10));
        assert!(!s.past_deadline() && !s.too_late(Instant::now() + Duration::from_secs(3600)));
        tokio::time::advance(Duration::from_secs(100)).await;
        drain.cancel();
        assert!(s.input_ended(), "the input ends with the drain by default");
        let d = s.deadline();
        assert_eq!(d, Instant::now() + Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(s.deadline(), d, "fixed");
        assert!(!s.past_deadline());
        assert!(s.too_late(Instant::now() + Duration::from_secs(6)));
        s.reached().await;
        assert_eq!(Instant::now(), d);
        assert!(s.past_deadline());
    }
}
