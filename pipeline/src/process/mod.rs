//! Pure, synchronous transforms over owned batches.
//!
//! [`enrich`] edits attributes first; [`translate`] turns OTLP metrics into Prometheus samples;
//! [`span_metrics`] derives RED metrics from spans; [`cardinality`] rewrites labels and enforces
//! series limits on translated batches before the store (keeping bounded state of admitted series
//! and folded streams, expired on the store's clock). None of them does I/O (the enrichment catalog
//! is reloaded by a task in `app`).
//!
//! [`pipeline`] strings them together per request, as the receivers' `Consumer`: it is the one
//! place where a batch reaches the store and spans reach the trace exporter's queue.

pub mod cardinality;
pub mod enrich;
pub mod pipeline;
pub mod span_metrics;
pub mod translate;
