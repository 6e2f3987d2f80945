//! Spindle: an OpenTelemetry pipeline. OTLP in (gRPC and HTTP), Prometheus/OpenMetrics with
//! exemplars out.
//!
//! Data flows one way: [`receive`] decodes and admits requests, [`process`] translates OTLP into
//! Prometheus series updates, [`store`] keeps series state, [`expose`] renders it for scrapes.
//! [`app`] wires the pieces together; [`config`] describes them.
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

pub mod app;
pub mod config;
pub mod export;
pub mod expose;
pub mod model;
pub mod process;
pub mod receive;
pub mod server;
pub mod storage;
pub mod store;
pub mod telemetry;
/// Builders for tests and benches: OTLP requests and a Spindle on port 0.
pub mod testing;
pub mod util;
