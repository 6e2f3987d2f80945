//! Exporters: forwarding to other systems. [`traces`] forwards spans over OTLP;
//! [`remote_write`] pushes snapshots of the series store with Prometheus remote write.
//!
//! Both ride one sender stack, [`sender`]: a byte-bounded queue of encoded payloads behind a
//! small interface, batching by size and time, retries with backoff and jitter, one client over
//! gRPC and HTTP, one error set, one stats type and one shutdown deadline. An exporter only
//! encodes what it queues and says what happens to a delivered batch's sidecars.

pub mod config;
pub mod remote_write;
pub mod sender;
pub mod stats;
pub mod traces;
