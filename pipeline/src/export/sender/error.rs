//! The sender stack's errors, one enum per operation: building a client from an exporter's config
//! ([`BuildError`]), queueing a payload ([`PushError`]) and one attempt at sending a batch
//! ([`AttemptError`]). Both exporters return these; `receive/status.rs` maps [`PushError`] to the
//! receivers' "overloaded" answer.

use std::time::Duration;

/// Errors building an exporter's client from its configuration (a start-up error).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The endpoint is not a usable URL, or the HTTP client cannot be built for it.
    #[error("invalid endpoint `{url}`: {detail}", url = crate::util::redact::url(.0), detail = .1)]
    Endpoint(String, String),
    /// A TLS file (CA, client certificate or key) cannot be read or used.
    #[error("cannot use TLS file `{0}`: {1}")]
    Tls(String, String),
    /// A header name or value is not valid.
    #[error("invalid header `{0}`")]
    Header(String),
    /// The disk queue's directory cannot be opened or read.
    #[error("cannot open the disk queue in `{0}`: {1}")]
    Queue(String, String),
    /// A `headers_from_files` file cannot be read or holds no valid value (the message names the
    /// file, never its content).
    #[error("header `{0}`: {1}")]
    HeaderFile(String, String),
}

/// Why a queue refused a payload; nothing was queued. Receivers answer both as "overloaded"
/// (retryable): the sender's client backs off and tries again.
///
/// Deliberately exhaustive: a new variant must be mapped in `receive/status.rs` (a compile error
/// there, never a silent fallback).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The queue holds its bound (`queue_max_bytes`).
    #[error("the export queue is full")]
    Full,
    /// The exporter has shut down: the queue accepts nothing any more.
    #[error("the exporter is shutting down")]
    Closed,
    /// A durable queue could not write the payload to disk (disk full, I/O error).
    #[error("the export queue cannot write to disk")]
    Unwritable,
}

/// Why one attempt at sending a batch did not deliver it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttemptError {
    /// Worth retrying, after at least `after` if the peer asked for it (gRPC `RetryInfo`, HTTP
    /// `Retry-After`).
    #[error("{why}")]
    Retryable {
        /// The delay the peer asked for.
        after: Option<Duration>,
        /// What went wrong, for logs.
        why: String,
    },
    /// Never worth retrying: the batch is dropped and counted.
    #[error("{0}")]
    Permanent(String),
}
