//! Prometheus remote write exporter: every `interval`, a snapshot of the series store is pushed
//! as remote write 1.0 (`prompb.WriteRequest`, protobuf + snappy block format) to Prometheus,
//! Mimir, Thanos Receive or VictoriaMetrics.
//!
//! In: the [`Store`] (read, like a scrape). Out: HTTP `POST`s with `Content-Encoding: snappy`,
//! `Content-Type: application/x-protobuf` and `X-Prometheus-Remote-Write-Version: 0.1.0`.
//! [`convert`] turns a snapshot into the samples `/metrics` shows, with exemplars (each sent
//! once), in requests of at most `max_samples_per_request` samples.
//!
//! Requests wait in a queue bounded in compressed bytes, sent one at a time in order (receivers
//! refuse out-of-order samples). A snapshot of a pull-style store is lossy by nature: when a new
//! snapshot does not fit, the oldest queued snapshot's requests are dropped (the newer one
//! supersedes their values) and counted in `spindle_remote_write_dropped_samples_total
//! {reason="queue_full"}`. HTTP 5xx, 429 and connection errors are retried with exponential
//! backoff and jitter, honouring `Retry-After`; other 4xx drop the request
//! (`reason="permanent_error"`). On shutdown a last snapshot is queued and the queue flushed
//! for at most `shutdown_timeout`, measured from when shutdown began: a request in flight at the
//! deadline is cut off, and a retry that would come after it is not attempted. What is left, in
//! flight and queued, is counted once (`reason="shutdown"`) and logged once with its count.

pub mod config;
pub mod convert;
pub mod proto;

pub use config::RemoteWriteConfig;

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::stats::{ExporterStats, RemoteWriteDropReason};
use super::{jitter, retry_after};
use crate::store::Store;
use convert::{Converter, Encoded};

/// Value of the `X-Prometheus-Remote-Write-Version` header (remote write 1.0).
pub const PROTOCOL_VERSION: &str = "0.1.0";

/// Errors building the exporter from its configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteWriteError {
    /// The endpoint is not a usable URL, or the HTTP client cannot be built for it.
    #[error("invalid endpoint `{0}`: {1}")]
    Endpoint(String, String),
    /// A header name or value is not valid.
    #[error("invalid header `{0}`")]
    Header(String),
}

/// A queued request and the snapshot it belongs to.
#[derive(Debug)]
struct Queued {
    snapshot: u64,
    req: Encoded,
}

#[derive(Debug, Default)]
struct QueueState {
    items: VecDeque<Queued>,
    bytes: u64,
}

/// The request queue, bounded in compressed bytes (the request being sent is not counted).
#[derive(Debug)]
struct Queue {
    state: Mutex<QueueState>,
    capacity: u64,
    notify: Notify,
}

impl Queue {
    fn new(capacity: u64) -> Self {
        Self {
            state: Mutex::new(QueueState::default()),
            capacity,
            notify: Notify::new(),
        }
    }

    /// Appends the requests of snapshot `id`. While the queue is over capacity, the oldest
    /// queued snapshot's requests are dropped as a whole; a snapshot larger than the whole queue
    /// loses its last requests. Returns the samples dropped.
    fn push_snapshot(&self, id: u64, reqs: Vec<Encoded>) -> u64 {
        let mut st = self.state.lock();
        for req in reqs {
            st.bytes += req.body.len() as u64;
            st.items.push_back(Queued { snapshot: id, req });
        }
        let mut dropped = 0;
        while st.bytes > self.capacity {
            let oldest = st.items.front().map(|q| q.snapshot);
            let victim = if oldest.is_some_and(|s| s != id) {
                st.items.pop_front()
            } else {
                st.items.pop_back()
            };
            let Some(q) = victim else { break };
            st.bytes -= q.req.body.len() as u64;
            dropped += q.req.samples;
        }
        drop(st);
        self.notify.notify_one();
        dropped
    }

    fn pop(&self) -> Option<Encoded> {
        let mut st = self.state.lock();
        let q = st.items.pop_front()?;
        st.bytes -= q.req.body.len() as u64;
        Some(q.req)
    }

    /// Empties the queue; returns the samples it held.
    fn clear(&self) -> u64 {
        let mut st = self.state.lock();
        st.bytes = 0;
        st.items.drain(..).map(|q| q.req.samples).sum()
    }

    fn bytes(&self) -> u64 {
        self.state.lock().bytes
    }
}

/// Builds the exporter and spawns it: a snapshot every `interval` until `drain` is cancelled,
/// then a last snapshot and a flush of at most `shutdown_timeout`.
///
/// # Errors
/// [`RemoteWriteError`] when the endpoint or headers are unusable.
pub fn spawn(
    config: &RemoteWriteConfig,
    endpoint: &str,
    store: Arc<Store>,
    stats: impl Into<ExporterStats<RemoteWriteDropReason>>,
    drain: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, RemoteWriteError> {
    let client = Client::new(config, endpoint)?;
    let queue = Arc::new(Queue::new(config.queue_max_bytes.0));
    let stats = stats.into();
    stats.queue(0, queue.capacity);
    let sender = Sender {
        queue: queue.clone(),
        client,
        config: config.clone(),
        stats: stats.clone(),
        drain: drain.clone(),
        flushing: CancellationToken::new(),
        deadline: Arc::new(OnceLock::new()),
    };
    let snapshots = Snapshots {
        queue,
        store,
        stats,
        config: config.clone(),
        converter: Converter::default(),
        last_ms: 0,
        id: 0,
    };
    Ok(tokio::spawn(run(snapshots, sender, drain)))
}

async fn run(mut snapshots: Snapshots, sender: Sender, drain: CancellationToken) {
    let flushing = sender.flushing.clone();
    let deadline = sender.deadline.clone();
    let shutdown_timeout = sender.config.shutdown_timeout.0;
    let sending = tokio::spawn(sender.run());
    // The first snapshot one interval after start: at start the receivers have only just opened,
    // so a snapshot then would race them and usually carry nothing.
    let every = snapshots.config.interval.0;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = drain.cancelled() => break,
            _ = tick.tick() => snapshots.take().await,
        }
    }
    // The last snapshot carries what the receivers accepted before they stopped.
    deadline.get_or_init(|| Instant::now() + shutdown_timeout);
    snapshots.take().await;
    flushing.cancel();
    if let Err(e) = sending.await {
        tracing::error!(error = %e, "remote-write sender panicked");
    }
}

struct Snapshots {
    queue: Arc<Queue>,
    store: Arc<Store>,
    stats: ExporterStats<RemoteWriteDropReason>,
    config: RemoteWriteConfig,
    converter: Converter,
    last_ms: i64,
    id: u64,
}

impl Snapshots {
    /// Converts the store on a blocking thread and queues the requests.
    async fn take(&mut self) {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        // Strictly increasing, so no receiver sees two values for one timestamp.
        let ts = now_ms.max(self.last_ms + 1);
        self.last_ms = ts;
        self.id += 1;
        let mut converter = std::mem::take(&mut self.converter);
        let store = self.store.clone();
        let max = self.config.max_samples_per_request;
        let res = tokio::task::spawn_blocking(move || {
            let reqs = converter.snapshot(&store, ts, max);
            (converter, reqs)
        })
        .await;
        let reqs = match res {
            Ok((converter, reqs)) => {
                self.converter = converter;
                reqs
            }
            Err(e) => {
                tracing::error!(error = %e, "remote-write snapshot failed");
                return;
            }
        };
        if reqs.is_empty() {
            return;
        }
        let dropped = self.queue.push_snapshot(self.id, reqs);
        if dropped > 0 {
            tracing::warn!(
                samples = dropped,
                "remote-write queue full; dropped the oldest queued snapshot"
            );
            self.stats.dropped(RemoteWriteDropReason::QueueFull, dropped);
        }
        self.stats.queue(self.queue.bytes(), self.queue.capacity);
    }
}

/// What one request attempt came to.
#[derive(Debug, PartialEq)]
enum Attempt {
    /// Accepted.
    Sent,
    /// Worth retrying, after at least this long if the receiver said so.
    Retry { after: Option<Duration>, why: String },
    /// Never worth retrying.
    Permanent(String),
}

/// Remote write 1.0: 2xx is success; 5xx and 429 are retried (honouring `Retry-After`); every
/// other status is permanent.
fn classify(status: u16, after: Option<Duration>, why: String) -> Attempt {
    match status {
        200..=299 => Attempt::Sent,
        429 | 500..=599 => Attempt::Retry { after, why },
        _ => Attempt::Permanent(why),
    }
}

struct Sender {
    queue: Arc<Queue>,
    client: Client,
    config: RemoteWriteConfig,
    stats: ExporterStats<RemoteWriteDropReason>,
    /// Cancelled when shutdown begins.
    drain: CancellationToken,
    /// Cancelled once the last snapshot is queued: send what is left, then stop.
    flushing: CancellationToken,
    /// When flushing must end: `shutdown_timeout` after shutdown began (set by whichever task
    /// sees it first).
    deadline: Arc<OnceLock<Instant>>,
}

/// A request given up because shutdown's deadline came first.
struct Undelivered {
    samples: u64,
    why: String,
}

impl Sender {
    async fn run(self) {
        let mut undelivered = None;
        loop {
            if self.past_deadline() {
                undelivered = Some(Undelivered {
                    samples: 0,
                    why: "shutdown_timeout reached".into(),
                });
                break;
            }
            match self.queue.pop() {
                Some(req) => {
                    self.stats.queue(self.queue.bytes(), self.queue.capacity);
                    if let Err(u) = self.send(req).await {
                        undelivered = Some(u);
                        break;
                    }
                }
                None if self.flushing.is_cancelled() => break,
                None => {
                    tokio::select! {
                        _ = self.queue.notify.notified() => {}
                        _ = self.flushing.cancelled() => {}
                    }
                }
            }
        }
        if let Some(u) = undelivered {
            // The last snapshot may still be on its way into the queue: wait for it (the snapshot
            // is bounded work), so that it is counted with the rest.
            self.flushing.cancelled().await;
            let left = u.samples + self.queue.clear();
            if left > 0 {
                tracing::warn!(
                    samples = left,
                    last_error = %u.why,
                    "remote write: shutdown_timeout ({:?}) reached with the receiver unreachable; dropping {left} queued samples",
                    self.config.shutdown_timeout.0
                );
                self.stats.dropped(RemoteWriteDropReason::Shutdown, left);
            }
        }
        self.stats.queue(self.queue.bytes(), self.queue.capacity);
    }

    /// The shutdown deadline, fixed the first time it is asked for (only once draining).
    fn deadline(&self) -> Instant {
        *self
            .deadline
            .get_or_init(|| Instant::now() + self.config.shutdown_timeout.0)
    }

    fn past_deadline(&self) -> bool {
        self.drain.is_cancelled() && Instant::now() >= self.deadline()
    }

    /// Completes at the shutdown deadline; never while running.
    async fn shutdown_deadline(&self) {
        self.drain.cancelled().await;
        tokio::time::sleep_until(tokio::time::Instant::from_std(self.deadline())).await;
    }

    /// Sends one request, retrying until it is accepted or refused for good (both counted here),
    /// or, once shutdown began, until its deadline leaves no time (returned, not yet counted).
    async fn send(&self, req: Encoded) -> Result<(), Undelivered> {
        let mut backoff = self.config.retry_initial_backoff.0;
        loop {
            let start = Instant::now();
            let attempt = tokio::select! {
                biased;
                _ = self.shutdown_deadline() => {
                    return Err(Undelivered {
                        samples: req.samples,
                        why: "a request was still in flight at shutdown_timeout".into(),
                    });
                }
                a = self.client.send(req.body.clone()) => a,
            };
            self.stats.took(start.elapsed());
            let (after, why) = match attempt {
                Attempt::Sent => {
                    self.stats.sent(req.samples);
                    self.stats.sent_exemplars(req.exemplars);
                    return Ok(());
                }
                Attempt::Permanent(why) => {
                    tracing::warn!(samples = req.samples, %why, "remote-write receiver refused a request; dropping it");
                    self.stats.dropped(RemoteWriteDropReason::Permanent, req.samples);
                    return Ok(());
                }
                Attempt::Retry { after, why } => (after, why),
            };
            let wait = after.unwrap_or(backoff).max(jitter(backoff));
            backoff = (backoff * 2).min(self.config.retry_max_backoff.0);
            let retry_at = Instant::now() + wait;
            // Wait for the retry; once shutdown began, give up if it would come after the deadline.
            loop {
                if self.drain.is_cancelled() && retry_at > self.deadline() {
                    return Err(Undelivered {
                        samples: req.samples,
                        why,
                    });
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(tokio::time::Instant::from_std(retry_at)) => break,
                    _ = self.drain.cancelled(), if !self.drain.is_cancelled() => {}
                }
            }
            self.stats.retried();
            tracing::debug!(%why, ?wait, "remote write failed; retrying");
        }
    }
}

#[derive(Debug)]
struct Client {
    http: reqwest::Client,
    url: String,
}

impl Client {
    fn new(config: &RemoteWriteConfig, endpoint: &str) -> Result<Self, RemoteWriteError> {
        let mut headers = http::HeaderMap::new();
        for (k, v) in &config.headers {
            let name = http::HeaderName::from_bytes(k.as_bytes()).map_err(|_| RemoteWriteError::Header(k.clone()))?;
            let val = http::HeaderValue::from_str(v).map_err(|_| RemoteWriteError::Header(k.clone()))?;
            headers.insert(name, val);
        }
        // The protocol's headers win over configured ones.
        for (k, v) in [
            (http::header::CONTENT_ENCODING, "snappy"),
            (http::header::CONTENT_TYPE, "application/x-protobuf"),
        ] {
            headers.insert(k, http::HeaderValue::from_static(v));
        }
        headers.insert(
            http::HeaderName::from_static("x-prometheus-remote-write-version"),
            http::HeaderValue::from_static(PROTOCOL_VERSION),
        );
        let http = reqwest::Client::builder()
            .timeout(config.timeout.0)
            .user_agent(concat!("spindle/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers)
            .build()
            .map_err(|e| RemoteWriteError::Endpoint(endpoint.into(), e.to_string()))?;
        Ok(Self {
            http,
            url: endpoint.to_string(),
        })
    }

    async fn send(&self, body: Bytes) -> Attempt {
        let resp = match self.http.post(&self.url).body(body).send().await {
            Ok(r) => r,
            Err(e) => {
                return Attempt::Retry {
                    after: None,
                    why: format!("sending: {e}"),
                };
            }
        };
        let status = resp.status();
        let after = retry_after(resp.headers());
        if status.is_success() {
            return Attempt::Sent;
        }
        let bytes = resp.bytes().await.unwrap_or_default();
        let why = format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).trim()
        );
        classify(status.as_u16(), after, why)
    }
}

#[cfg(test)]
mod tests;
