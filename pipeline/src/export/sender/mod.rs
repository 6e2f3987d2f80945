//! The one sender stack every exporter rides: queue → batch → retry → client, with shutdown
//! bounded by a deadline.
//!
//! - [`queue`]: encoded payloads ([`Payload`]: a request's protobuf body as `Bytes`, its item
//!   count, a small sidecar) behind the [`Queue`] trait, bounded in bytes held; push answers a
//!   typed [`PushError`] (`Full` / `Closed` / `Unwritable`). [`MemoryQueue`] holds them in memory;
//!   `disk::DiskQueue` (with `storage.path`) in a checksummed segment log, durable before the
//!   sender is answered (group commit), resumed after a restart.
//! - [`worker`]: batching by size and time, the retry loop and the shutdown flush ([`Worker`]);
//!   an exporter plugs in its sidecar handling and log lines through [`Hooks`].
//! - [`retry`]: exponential backoff with jitter, honouring gRPC `RetryInfo` and HTTP
//!   `Retry-After`.
//! - [`client`]: one client over gRPC (tonic) and HTTP (reqwest): headers, TLS, timeout, body
//!   compression, and how answers are classified.
//! - [`error`]: the stack's errors; [`stats`]: the one stats type, [`ExporterStats`], generic over
//!   an exporter's drop reasons; [`shutdown`]: the drain signal and its deadline.
//!
//! In: payloads an exporter encoded (once, at enqueue). Out: requests to a peer; per batch, the
//! sidecars of what the peer acknowledged (handed to the exporter's hooks) and counts.

pub mod client;
#[cfg(unix)]
pub mod disk;
pub mod error;
pub mod queue;
pub mod retry;
pub mod shutdown;
pub mod stats;
pub mod worker;

pub use client::{Answers, BodyCompression, Client, ClientConfig, TlsFailures, Transport};
pub use error::{AttemptError, BuildError, PushError};
pub use queue::{Batch, MemoryQueue, Payload, Persist, Queue, Ticket};
pub use retry::RetryPolicy;
pub use shutdown::Shutdown;
pub use stats::{ExporterStats, Reason};
pub use worker::{Batching, Hooks, Worker};

use std::path::PathBuf;
use std::sync::Arc;

/// Where an exporter's queue lives on disk (`storage.path`), and its bound there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskPlace {
    /// The queue's own directory.
    pub dir: PathBuf,
    /// The bound of records not yet delivered, in bytes.
    pub max_bytes: u64,
}

/// The queue an exporter rides: on disk at `disk` when given (recovering what a previous run
/// left), else in memory bounded at `memory_max_bytes`. `name` names it in logs; a disk queue
/// counts into `events`.
///
/// # Errors
/// [`BuildError::Queue`] when the disk queue cannot be opened.
pub fn open_queue<S: Persist + Send + 'static>(
    memory_max_bytes: u64,
    disk: Option<&DiskPlace>,
    name: &str,
    events: &Arc<stats::QueueEvents>,
) -> Result<Arc<dyn Queue<S>>, BuildError> {
    let Some(d) = disk else {
        return Ok(Arc::new(MemoryQueue::new(memory_max_bytes)));
    };
    #[cfg(unix)]
    {
        let (q, _) = disk::DiskQueue::open(&d.dir, d.max_bytes, name, events.clone())
            .map_err(|e| BuildError::Queue(d.dir.display().to_string(), e.to_string()))?;
        Ok(Arc::new(q))
    }
    #[cfg(not(unix))]
    {
        let _ = (name, events);
        Err(BuildError::Queue(
            d.dir.display().to_string(),
            "durable storage needs a Unix system".into(),
        ))
    }
}

#[cfg(test)]
mod tests;
