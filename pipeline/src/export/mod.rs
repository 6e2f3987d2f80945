//! Exporters: forwarding to other systems. [`traces`] forwards spans over OTLP.

pub mod traces;
