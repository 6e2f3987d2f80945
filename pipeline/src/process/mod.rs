//! Pure, synchronous transforms over owned batches.
//!
//! [`translate`] turns OTLP metrics into Prometheus samples. Later stages (enrichment,
//! cardinality limits, span metrics) sit here too; none of them does I/O.

pub mod span_metrics;
pub mod translate;
