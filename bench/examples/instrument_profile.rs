//! A fixed number of requests through one of the stacks of `benches/instrument.rs`, on one thread,
//! for `valgrind --tool=callgrind` (instruction counts are deterministic where time on this shared
//! machine is not): run it with two request counts and divide the difference of the totals by the
//! difference of the counts; the export threads' work is included.
//!
//! `cargo build --release -p spindle-bench --example instrument_profile`, then
//! `instrument_profile STACK [sampled|unsampled] [REQUESTS]` with `STACK` one of `bare` (the router
//! alone), `spindle` (`HttpLayer` with full instrumentation, spans to a no-op exporter),
//! `spindle-otlp` (the same with the crate's default OTLP/gRPC span export, encoding, gzip and
//! transport included, to the receiver at `PROFILE_OTLP_ENDPOINT`, default
//! `http://127.0.0.1:4317`, such as a release `spindle`; run it with `OTEL_BSP_MAX_QUEUE_SIZE=1000000`
//! so that no span is dropped and check that the receiver got them all; `OTEL_EXPORTER_OTLP_COMPRESSION=none`
//! sends the spans uncompressed) or `hand-built` (tower-http `TraceLayer` +
//! `tracing-opentelemetry` + the batch span processor, spans only).

#[path = "../shared/instrument_stacks.rs"]
mod stacks;

use std::hint::black_box;
use std::sync::atomic::Ordering;

use spindle_instrument::HttpLayer;
use stacks::*;
use tracing::Dispatch;

fn main() {
    let mut args = std::env::args().skip(1);
    let stack = args.next().unwrap_or_else(|| "spindle".into());
    let traceparent = match args.next().as_deref() {
        Some("unsampled") => NOT_SAMPLED,
        _ => SAMPLED,
    };
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let spans = NoopSpans::default();
    let inst = instrumentation(spans.clone());
    let (hand_dispatch, provider, hand_router) = hand_built(spans.clone());
    let otlp = (stack == "spindle-otlp").then(|| {
        let endpoint = std::env::var("PROFILE_OTLP_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:4317".into());
        otlp_instrumentation(&endpoint)
    });
    let (dispatch, router) = match stack.as_str() {
        "bare" => (Dispatch::none(), routes()),
        "hand-built" => (hand_dispatch, hand_router),
        "spindle-otlp" => {
            let inst = otlp.as_ref().expect("built above");
            (
                inst.dispatch.clone(),
                routes().layer(HttpLayer::with_meter(&inst.guard.meter())),
            )
        }
        _ => (
            inst.dispatch.clone(),
            routes().layer(HttpLayer::with_meter(&inst.guard.meter())),
        ),
    };
    tracing::dispatcher::with_default(&dispatch, || {
        for _ in 0..n {
            black_box(call_with(&router, traceparent));
        }
    });
    let _ = inst.guard.force_flush();
    if let Some(otlp) = &otlp
        && let Err(e) = otlp.guard.force_flush()
    {
        eprintln!("OTLP export: {e}");
    }
    let _ = provider.force_flush();
    println!(
        "{stack}: {n} requests, {} spans exported",
        spans.0.load(Ordering::Relaxed)
    );
}
