//! The one sender stack every exporter rides: queue → batch → retry → client, with shutdown
//! bounded by a deadline.
//!
//! - [`queue`]: encoded payloads ([`Payload`]: a request's protobuf body as `Bytes`, its item
//!   count, a small sidecar) behind the [`Queue`] trait, bounded in bytes held; push answers a
//!   typed [`PushError`] (`Full` / `Closed`). [`MemoryQueue`] is today's implementation; a
//!   disk-backed one replaces it without touching the exporters.
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
pub mod error;
pub mod queue;
pub mod retry;
pub mod shutdown;
pub mod stats;
pub mod worker;

pub use client::{Answers, BodyCompression, Client, ClientConfig, TlsFailures, Transport};
pub use error::{AttemptError, BuildError, PushError};
pub use queue::{Batch, MemoryQueue, Payload, Queue, Ticket};
pub use retry::RetryPolicy;
pub use shutdown::Shutdown;
pub use stats::{ExporterStats, Reason};
pub use worker::{Batching, Hooks, Worker};

#[cfg(test)]
mod tests;
