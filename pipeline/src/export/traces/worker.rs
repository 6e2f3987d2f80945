//! The export worker: takes batches from the queue, sends them with retries and backoff, hands
//! acknowledged exemplars on, and observes the shutdown deadline.
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::export::jitter;
use crate::export::stats::{DropReason, ExporterStats, Reason};
use crate::model::batch::Samples;

use super::OnForwarded;
use super::client::{Attempt, Client};
use super::config::OtlpExporterConfig;
use super::queue::{Pending, Queue, samples_heap_bytes};

pub(super) struct Worker {
    pub(super) queue: Arc<Queue>,
    pub(super) client: Client,
    pub(super) config: OtlpExporterConfig,
    pub(super) stats: ExporterStats<DropReason>,
    pub(super) on_forwarded: OnForwarded,
    pub(super) drain: CancellationToken,
    /// When the flush must end: `shutdown_timeout` after `drain` was first seen cancelled.
    pub(super) deadline: OnceLock<Instant>,
}

/// A batch given up because shutdown's deadline came first.
pub(super) struct Undelivered {
    pub(super) spans: u64,
    pub(super) why: String,
}

impl Worker {
    pub(super) async fn run(self) {
        let max = self.config.max_batch_spans as u64;
        while !self.drain.is_cancelled() {
            if self.queue.is_empty() {
                tokio::select! {
                    _ = self.queue.notify.notified() => {}
                    _ = self.drain.cancelled() => {}
                }
                continue;
            }
            // Let a small batch fill up for at most batch_timeout.
            let fill = Instant::now() + self.config.batch_timeout.0;
            while self.queue.queued_spans() < max && !self.drain.is_cancelled() {
                tokio::select! {
                    _ = self.queue.notify.notified() => {}
                    _ = tokio::time::sleep_until(fill) => break,
                    _ = self.drain.cancelled() => break,
                }
            }
            // While running, retry until sent or permanently refused (backpressure holds the
            // queue); once draining, only until the deadline.
            if let Err(u) = self.send(self.queue.take_batch(max)).await {
                return self.give_up(u);
            }
        }
        // Draining: flush what is queued, within the shutdown timeout.
        self.deadline();
        loop {
            let batch = self.queue.take_batch(max);
            if batch.is_empty() {
                break;
            }
            if let Err(u) = self.send(batch).await {
                return self.give_up(u);
            }
        }
        self.queue.settled.store(true, Ordering::Release);
        // Receivers stop before the exporter drains, so this is nothing unless one lingered.
        let late = self.queue.close();
        if late > 0 {
            tracing::warn!(
                spans = late,
                "trace exporter: dropping {late} spans queued after the final flush"
            );
            self.stats.dropped(DropReason::Shutdown, late);
        }
        self.stats.queue(0, self.queue.capacity);
    }

    /// The shutdown deadline, fixed the first time it is asked for (only once draining).
    pub(super) fn deadline(&self) -> Instant {
        *self
            .deadline
            .get_or_init(|| Instant::now() + self.config.shutdown_timeout.0)
    }

    /// Completes at the shutdown deadline; never while running.
    pub(super) async fn shutdown_deadline(&self) {
        self.drain.cancelled().await;
        tokio::time::sleep_until(self.deadline()).await;
    }

    pub(super) fn past_deadline(&self) -> bool {
        self.drain.is_cancelled() && Instant::now() >= self.deadline()
    }

    /// Counts and logs, once, everything not delivered: the batch given up and the whole queue.
    pub(super) fn give_up(self, u: Undelivered) {
        self.queue.settled.store(true, Ordering::Release);
        let left = u.spans + self.queue.close();
        if left > 0 {
            tracing::warn!(
                spans = left,
                last_error = %u.why,
                "trace exporter: shutdown_timeout ({:?}) reached with the backend unreachable; dropping {left} queued spans",
                self.config.shutdown_timeout.0
            );
            self.stats.dropped(DropReason::Shutdown, left);
        }
        self.stats.queue(0, self.queue.capacity);
    }

    /// Sends one batch with retries, until it is delivered or permanently refused (both counted
    /// here) or, once draining, until the shutdown deadline leaves no time (returned, uncounted).
    pub(super) async fn send(&self, batch: Vec<Pending>) -> Result<(), Undelivered> {
        let spans: u64 = batch.iter().map(|p| p.spans).sum();
        let reserved: u64 = batch.iter().map(|p| p.bytes).sum();
        self.queue.inflight_spans.store(spans, Ordering::Release);
        let mut exemplars = Vec::with_capacity(batch.len());
        let mut req = ExportTraceServiceRequest::default();
        for p in batch {
            req.resource_spans.extend(p.req.resource_spans);
            exemplars.push(p.exemplars);
        }
        let body = Bytes::from(req.encode_to_vec());
        drop(req);
        // In flight, the batch holds its encoded body and its exemplars.
        let held = (body.len() + exemplars.capacity() * size_of::<Samples>()) as u64
            + exemplars.iter().map(samples_heap_bytes).sum::<u64>();
        let held = held.min(reserved);
        self.queue.release(reserved - held);
        self.stats
            .queue(self.queue.bytes.load(Ordering::Relaxed), self.queue.capacity);
        let outcome = self.attempts(body).await;
        self.queue.inflight_spans.store(0, Ordering::Release);
        self.queue.release(held);
        self.stats
            .queue(self.queue.bytes.load(Ordering::Relaxed), self.queue.capacity);
        match outcome {
            Ok(rejected) => {
                self.stats.sent(spans.saturating_sub(rejected));
                if rejected > 0 {
                    self.stats.dropped(DropReason::RejectedByBackend, rejected);
                }
                for e in exemplars {
                    (self.on_forwarded)(e);
                }
                Ok(())
            }
            Err(Stop::Permanent(why)) => {
                tracing::warn!(
                    spans,
                    %why,
                    reason = DropReason::Permanent.as_str(),
                    "dropping trace batch"
                );
                self.stats.dropped(DropReason::Permanent, spans);
                Ok(())
            }
            Err(Stop::Shutdown(why)) => Err(Undelivered { spans, why }),
        }
    }

    /// Export attempts of one body: the backend's `rejected` count, or why it stopped.
    pub(super) async fn attempts(&self, body: Bytes) -> Result<u64, Stop> {
        let mut backoff = self.config.retry_initial_backoff.0;
        let mut last = String::from("no attempt was made before shutdown_timeout");
        loop {
            if self.past_deadline() {
                return Err(Stop::Shutdown(last));
            }
            let start = Instant::now();
            let attempt = tokio::select! {
                biased;
                _ = self.shutdown_deadline() => {
                    return Err(Stop::Shutdown("an export attempt was still in flight at shutdown_timeout".into()));
                }
                a = self.client.export(body.clone()) => a,
            };
            self.stats.took(start.elapsed());
            let (after, why) = match attempt {
                Attempt::Sent { rejected } => return Ok(rejected),
                Attempt::Permanent(why) => return Err(Stop::Permanent(why)),
                Attempt::Retry { after, why } => (after, why),
            };
            let wait = after.unwrap_or(backoff).max(jitter(backoff));
            backoff = (backoff * 2).min(self.config.retry_max_backoff.0);
            let retry_at = Instant::now() + wait;
            // Wait for the retry; once draining, give up if it would come after the deadline.
            loop {
                if self.drain.is_cancelled() && retry_at > self.deadline() {
                    return Err(Stop::Shutdown(why));
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(retry_at) => break,
                    _ = self.drain.cancelled(), if !self.drain.is_cancelled() => {}
                }
            }
            self.stats.retried();
            tracing::debug!(%why, ?wait, "trace export failed; retrying");
            last = why;
        }
    }
}

/// Why a batch's attempts stopped without delivering it.
pub(super) enum Stop {
    Permanent(String),
    Shutdown(String),
}
