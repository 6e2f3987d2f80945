//! The chain every exporter runs: queue → batch → retry → client, and the shutdown flush.
//!
//! The worker runs `max_in_flight` lanes over one queue. Each lane waits for payloads, lets a batch
//! fill for at most the batching timeout or until it holds `max_items`, and sends it — its
//! payloads' bodies back to back, so concatenated encodings form one request — retrying with
//! backoff until it is delivered or refused for good (both acknowledged to the queue and counted).
//! Several lanes keep several requests in flight, so a backend's round trip does not cap the rate
//! (batches may then arrive out of order; an exporter that needs order, as remote write, runs one
//! lane). While running, a batch is retried for as long as it takes: the full queue behind it is
//! the backpressure. Once draining, the lanes send what is left until the input has ended and the
//! queue is empty, within the deadline; what the deadline leaves is handed back to the queue, the
//! queue is closed, and what it will never deliver is counted once and logged once.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::client::Client;
use super::error::AttemptError;
use super::queue::{Batch, Queue};
use super::retry::{Backoff, RetryPolicy};
use super::shutdown::Shutdown;
use super::stats::{ExporterStats, Reason};

/// How batches are formed.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Most items in one batch (a single payload larger than this is sent alone).
    pub max_items: u64,
    /// Longest the first payload of a batch waits for more to join it.
    pub timeout: Duration,
    /// Batches sent at once (at least 1). With more than one, batches may arrive out of order.
    pub max_in_flight: usize,
}

/// What an exporter does at the points where exporters differ: its sidecars once a batch is
/// delivered, and its log lines (one per batch or per shutdown, never per item).
pub trait Hooks<S>: Send + Sync + 'static {
    /// The peer acknowledged the batch these sidecars came with.
    fn delivered(&self, sidecars: Vec<S>);
    /// A batch of `items` was refused for good and dropped.
    fn refused(&self, items: u64, why: &str);
    /// An attempt failed and is retried after `wait`.
    fn retrying(&self, why: &str, wait: Duration);
    /// At the shutdown deadline, `items` were left undelivered (`why`: the last error).
    fn undelivered(&self, items: u64, why: &str, timeout: Duration);
    /// `items` were queued after the final flush (nothing, unless a producer lingered).
    fn late(&self, items: u64);
}

/// One exporter's sender: drives its queue through the client until shutdown.
pub struct Worker<S, R, H> {
    /// The queue it drains.
    pub queue: Arc<dyn Queue<S>>,
    /// The client it sends with.
    pub client: Client,
    /// Batch size and time.
    pub batching: Batching,
    /// Retry delays.
    pub retry: RetryPolicy,
    /// Where it counts.
    pub stats: ExporterStats<R>,
    /// Drain signal, end of input and deadline.
    pub shutdown: Arc<Shutdown>,
    /// The exporter's own parts.
    pub hooks: H,
}

impl<S, R, H> std::fmt::Debug for Worker<S, R, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("queue", &self.queue)
            .field("batching", &self.batching)
            .finish_non_exhaustive()
    }
}

/// A batch given up because the shutdown deadline came first.
struct Undelivered<S> {
    batch: Batch<S>,
    why: String,
}

/// Why a batch's attempts stopped without delivering it.
enum Stop {
    Permanent(String),
    Shutdown(String),
}

impl<S: Send + 'static, R: Reason, H: Hooks<S>> Worker<S, R, H> {
    /// Runs until shutdown has drained the queue or reached its deadline.
    pub async fn run(self) {
        let worker = Arc::new(self);
        // Owned here: if this task is aborted, so are the lanes.
        let mut lanes = tokio::task::JoinSet::new();
        for _ in 0..worker.batching.max_in_flight.max(1) {
            let w = worker.clone();
            lanes.spawn(async move { w.lane().await });
        }
        let mut undelivered = Vec::new();
        while let Some(lane) = lanes.join_next().await {
            match lane {
                Ok(Some(u)) => undelivered.push(u),
                Ok(None) => {}
                // A lane cannot panic on what a peer sends; should one, the others still finish.
                Err(e) => tracing::error!(error = %e, "exporter lane failed"),
            }
        }
        if undelivered.is_empty() {
            let late = worker.queue.close();
            if late > 0 {
                worker.hooks.late(late);
                worker.stats.dropped(R::SHUTDOWN, late);
            }
            worker.report_queue();
        } else {
            worker.give_up(undelivered).await;
        }
    }

    /// One lane: sends batches one at a time until shutdown has drained the queue (`None`) or the
    /// deadline stopped a batch (returned, uncounted).
    async fn lane(&self) -> Option<Undelivered<S>> {
        let max = self.batching.max_items;
        let sd = self.shutdown.clone();
        while !sd.draining() {
            if self.queue.is_empty() {
                tokio::select! {
                    _ = self.queue.pushed().notified() => {}
                    _ = sd.drained() => {}
                }
                continue;
            }
            // Let a small batch fill up for at most the batching timeout.
            let fill = Instant::now() + self.batching.timeout;
            while self.queue.queued_items() < max && !sd.draining() {
                tokio::select! {
                    _ = self.queue.pushed().notified() => {}
                    _ = tokio::time::sleep_until(fill) => break,
                    _ = sd.drained() => break,
                }
            }
            if let Some(batch) = self.queue.pop(max)
                && let Err(u) = self.send(batch).await
            {
                return Some(u);
            }
        }
        // Draining: send what is queued and what the input still brings, within the deadline.
        sd.deadline();
        loop {
            match self.queue.pop(max) {
                Some(batch) => {
                    if let Err(u) = self.send(batch).await {
                        return Some(u);
                    }
                }
                None if sd.input_ended() => return None,
                None => {
                    tokio::select! {
                        _ = self.queue.pushed().notified() => {}
                        _ = sd.input_done() => {}
                    }
                }
            }
        }
    }

    fn report_queue(&self) {
        self.stats.queue(self.queue.bytes(), self.queue.capacity());
    }

    /// Counts and logs, once, everything not delivered: the batches the lanes gave up and the
    /// whole queue (handed back first, so a durable queue keeps them).
    async fn give_up(&self, undelivered: Vec<Undelivered<S>>) {
        // A producer still finishing (a last snapshot) is bounded work: wait for it, so that what
        // it queues is counted with the rest.
        self.shutdown.input_done().await;
        let why = undelivered.first().map(|u| u.why.clone()).unwrap_or_default();
        // Oldest first: each goes back to the front of the queue.
        let mut batches: Vec<Batch<S>> = undelivered.into_iter().map(|u| u.batch).collect();
        batches.sort_by_key(|b| std::cmp::Reverse(b.ticket.seq));
        for b in batches {
            self.queue.nack(b);
        }
        let queued = self.queue.queued_items();
        let left = self.queue.close();
        if left > 0 {
            self.hooks.undelivered(left, &why, self.shutdown.timeout());
            self.stats.dropped(R::SHUTDOWN, left);
        } else if queued > 0 {
            // A durable queue keeps them: nothing is lost, they go out after the next start.
            tracing::info!(
                items = queued,
                last_error = %why,
                "shutdown_timeout reached with the peer unreachable; {queued} queued items stay on disk for the next start"
            );
        }
        self.report_queue();
    }

    /// Sends one batch with retries, until it is delivered or refused for good (both counted
    /// here) or, once draining, until the deadline leaves no time (returned, uncounted).
    async fn send(&self, batch: Batch<S>) -> Result<(), Undelivered<S>> {
        self.report_queue();
        let items = batch.items();
        let body: Vec<Bytes> = batch.payloads.iter().map(|p| p.body.clone()).collect();
        let outcome = self.attempts(&body).await;
        drop(body);
        match outcome {
            Ok(rejected) => {
                self.queue.ack(batch.ticket);
                self.report_queue();
                let rejected = rejected.min(items);
                self.stats.sent(items - rejected);
                self.stats.resent(batch.resent);
                if rejected > 0 {
                    self.stats.dropped(R::REJECTED.unwrap_or(R::PERMANENT), rejected);
                }
                self.hooks
                    .delivered(batch.payloads.into_iter().map(|p| p.sidecar).collect());
                Ok(())
            }
            Err(Stop::Permanent(why)) => {
                self.queue.ack(batch.ticket);
                self.report_queue();
                self.hooks.refused(items, &why);
                self.stats.dropped(R::PERMANENT, items);
                Ok(())
            }
            Err(Stop::Shutdown(why)) => Err(Undelivered { batch, why }),
        }
    }

    /// Attempts at one body: the peer's `rejected` count, or why they stopped.
    async fn attempts(&self, body: &[Bytes]) -> Result<u64, Stop> {
        let sd = &self.shutdown;
        let mut backoff = Backoff::new(self.retry);
        let mut last = String::from("no attempt was made before shutdown_timeout");
        loop {
            if sd.past_deadline() {
                return Err(Stop::Shutdown(last));
            }
            let start = Instant::now();
            let attempt = tokio::select! {
                biased;
                _ = sd.reached() => {
                    return Err(Stop::Shutdown("an attempt was still in flight at shutdown_timeout".into()));
                }
                a = self.client.send(body) => a,
            };
            self.stats.took(start.elapsed());
            let (after, why) = match attempt {
                Ok(sent) => return Ok(sent.rejected),
                Err(AttemptError::Permanent(why)) => {
                    self.stats.failed(&why, true);
                    return Err(Stop::Permanent(why));
                }
                Err(AttemptError::Retryable { after, why }) => {
                    self.stats.failed(&why, false);
                    (after, why)
                }
            };
            let wait = backoff.next_delay(after);
            let retry_at = Instant::now() + wait;
            // Wait for the retry; once draining, give up if it would come after the deadline.
            loop {
                if sd.too_late(retry_at) {
                    return Err(Stop::Shutdown(why));
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(retry_at) => break,
                    _ = sd.drained(), if !sd.draining() => {}
                }
            }
            self.stats.retried();
            self.hooks.retrying(&why, wait);
            last = why;
        }
    }
}
