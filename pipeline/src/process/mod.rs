//! Pure, synchronous transforms over owned batches.
//!
//! [`enrich`] edits attributes first; [`translate`] turns OTLP metrics into Prometheus samples;
//! [`span_metrics`] derives RED metrics from spans. None of them does I/O (the enrichment catalog
//! is reloaded by a task in `app`).

pub mod cardinality;
pub mod enrich;
pub mod span_metrics;
pub mod translate;
