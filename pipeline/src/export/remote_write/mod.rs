//! Prometheus remote write exporter: every `interval`, a snapshot of the series store is pushed
//! as remote write 1.0 (`prompb.WriteRequest`, protobuf + snappy block format) to Prometheus,
//! Mimir, Thanos Receive or VictoriaMetrics.
//!
//! In: the [`Store`] (read, like a scrape). Out: HTTP `POST`s with `Content-Encoding: snappy`,
//! `Content-Type: application/x-protobuf` and `X-Prometheus-Remote-Write-Version: 0.1.0`.
//! [`convert`] turns a snapshot into the samples `/metrics` shows, with exemplars (each sent
//! once), in requests of at most `max_samples_per_request` samples.
//!
//! Requests ride the shared sender stack ([`crate::export::sender`]): they wait in its queue,
//! bounded in compressed bytes (the request in flight included), and are sent one at a time in
//! order (receivers refuse out-of-order samples). A snapshot of a pull-style store is lossy by nature: when a new
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

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use super::sender::{
    Answers, BodyCompression, BuildError, Client, ClientConfig, DiskPlace, Hooks, Payload, Persist, Queue, Shutdown,
    TlsFailures, Transport, Worker, open_queue,
};
use super::stats::{ExporterStats, RemoteWriteDropReason};
use crate::store::Store;
use convert::{Converter, Encoded};

/// Value of the `X-Prometheus-Remote-Write-Version` header (remote write 1.0).
pub const PROTOCOL_VERSION: &str = "0.1.0";

/// What the queue keeps beside a request's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sidecar {
    /// The snapshot the request belongs to.
    snapshot: u64,
    /// Exemplars it carries (counted once sent).
    exemplars: u64,
}

/// Kept on disk beside a queued request: 16 bytes.
impl Persist for Sidecar {
    fn persist(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.snapshot.to_le_bytes());
        out.extend_from_slice(&self.exemplars.to_le_bytes());
    }

    fn restore(bytes: &[u8]) -> Option<Self> {
        let (a, b) = bytes.split_at_checked(8)?;
        Some(Self {
            snapshot: u64::from_le_bytes(a.try_into().ok()?),
            exemplars: u64::from_le_bytes(b.try_into().ok()?),
        })
    }
}

/// Appends the requests of snapshot `id`. When one does not fit, the oldest queued snapshot's
/// requests are dropped to make room (never the request in flight); a snapshot larger than the
/// whole queue loses its last requests. Returns the samples dropped.
fn push_snapshot(queue: &dyn Queue<Sidecar>, id: u64, reqs: Vec<Encoded>) -> u64 {
    let mut dropped = 0;
    for req in reqs {
        let payload = Payload {
            body: req.body,
            items: req.samples,
            sidecar: Sidecar {
                snapshot: id,
                exemplars: req.exemplars,
            },
            // Counted in compressed bytes, as documented.
            sidecar_bytes: 0,
        };
        dropped += queue.make_room(payload.held_bytes(), &|s: &Sidecar| s.snapshot != id);
        let samples = payload.items;
        if queue.push(payload).is_err() {
            dropped += samples;
        }
    }
    dropped
}

/// Builds the exporter and spawns it: a snapshot every `interval` until `drain` is cancelled,
/// then a last snapshot and a flush of at most `shutdown_timeout`. With `disk`, queued requests
/// are kept there and survive a restart.
///
/// # Errors
/// [`BuildError`] when the endpoint or headers are unusable, or the disk queue cannot be opened.
pub fn spawn(
    config: &RemoteWriteConfig,
    endpoint: &str,
    store: Arc<Store>,
    stats: impl Into<ExporterStats<RemoteWriteDropReason>>,
    drain: CancellationToken,
    disk: Option<&DiskPlace>,
) -> Result<tokio::task::JoinHandle<()>, BuildError> {
    let headers = crate::export::config::resolved_headers(&config.headers, &config.headers_from_files)?;
    let client = Client::new(&ClientConfig {
        endpoint,
        transport: Transport::Http,
        headers: &headers,
        protocol_headers: &[
            ("content-encoding", "snappy"),
            ("content-type", "application/x-protobuf"),
            ("x-prometheus-remote-write-version", PROTOCOL_VERSION),
        ],
        user_agent: Some(concat!("spindle/", env!("CARGO_PKG_VERSION"))),
        timeout: config.timeout.0,
        ca_file: config.ca_file.as_deref(),
        cert_file: config.cert_file.as_deref(),
        key_file: config.key_file.as_deref(),
        compression: BodyCompression::None,
        answers: ANSWERS,
    })?;
    let stats = stats.into();
    let queue: Arc<dyn Queue<Sidecar>> = open_queue(config.queue_max_bytes.0, disk, "remote_write", stats.disk())?;
    stats.queue(0, queue.capacity());
    // The input ends once the last snapshot is queued.
    let last_queued = CancellationToken::new();
    let shutdown = Arc::new(Shutdown::with_input(
        drain.clone(),
        last_queued.clone(),
        config.shutdown_timeout.0,
    ));
    let worker = Worker {
        queue: queue.clone(),
        client: client.with_tls_failures(TlsFailures::new(
            "remote write",
            "exporters.remote_write",
            stats.tls_failure_counter(),
        )),
        batching: config.batching(),
        retry: config.retry_policy(),
        stats: stats.clone(),
        shutdown: shutdown.clone(),
        hooks: Pushed { stats: stats.clone() },
    };
    let snapshots = Snapshots {
        queue,
        store,
        stats,
        config: config.clone(),
        converter: Converter::new(config.send_native_histograms),
        last_ms: 0,
        id: 0,
    };
    Ok(tokio::spawn(run(snapshots, worker, shutdown, last_queued)))
}

async fn run(
    mut snapshots: Snapshots,
    worker: Worker<Sidecar, RemoteWriteDropReason, Pushed>,
    shutdown: Arc<Shutdown>,
    last_queued: CancellationToken,
) {
    let sending = tokio::spawn(worker.run());
    // The first snapshot one interval after start: at start the receivers have only just opened,
    // so a snapshot then would race them and usually carry nothing.
    let every = snapshots.config.interval.0;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.drained() => break,
            _ = tick.tick() => snapshots.take().await,
        }
    }
    // The deadline runs from here; the last snapshot carries what the receivers accepted before
    // they stopped.
    shutdown.deadline();
    snapshots.take().await;
    last_queued.cancel();
    if let Err(e) = sending.await {
        tracing::error!(error = %e, "remote-write sender panicked");
    }
}

struct Snapshots {
    queue: Arc<dyn Queue<Sidecar>>,
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
        let dropped = push_snapshot(&*self.queue, self.id, reqs);
        if dropped > 0 {
            tracing::warn!(
                samples = dropped,
                "remote-write queue full; dropped the oldest queued snapshot"
            );
            self.stats.dropped(RemoteWriteDropReason::QueueFull, dropped);
        }
        self.stats.queue(self.queue.bytes(), self.queue.capacity());
    }
}

/// Remote write 1.0: 2xx is success; 5xx and 429 are retried (honouring `Retry-After`); every
/// other status is permanent. Answers name no rejected samples.
const ANSWERS: Answers = Answers {
    http_retryable: |status| matches!(status, 429 | 500..=599),
    rejected: |_| 0,
};

/// Remote write's part of the sender: exemplars of acknowledged requests are counted, and its log
/// lines.
struct Pushed {
    stats: ExporterStats<RemoteWriteDropReason>,
}

impl Hooks<Sidecar> for Pushed {
    fn delivered(&self, sidecars: Vec<Sidecar>) {
        self.stats.sent_exemplars(sidecars.iter().map(|s| s.exemplars).sum());
    }

    fn refused(&self, samples: u64, why: &str) {
        tracing::warn!(samples, %why, "remote-write receiver refused a request; dropping it");
    }

    fn retrying(&self, why: &str, wait: Duration) {
        tracing::debug!(%why, ?wait, "remote write failed; retrying");
    }

    fn undelivered(&self, left: u64, why: &str, timeout: Duration) {
        tracing::warn!(
            samples = left,
            last_error = %why,
            "remote write: shutdown_timeout ({timeout:?}) reached with the receiver unreachable; dropping {left} queued samples",
        );
    }

    fn late(&self, late: u64) {
        tracing::warn!(
            samples = late,
            "remote write: dropping {late} samples queued after the final flush"
        );
    }
}

#[cfg(test)]
mod tests;
