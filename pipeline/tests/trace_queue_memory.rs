//! The trace export queue's bound counts the memory its requests hold decoded, measured with a
//! counting allocator (hence a test binary of its own, with one test): requests of many tiny
//! spans fill the queue, and the bytes it counts stay within 1.5× of the heap they really hold —
//! while their encoded length, which the queue used to count, is several times lower.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use spindle::config::{ByteSize, DurationStr, OtlpExporterConfig};
use spindle::export::traces;
use spindle::model::Format;
use spindle::model::batch::Samples;
use spindle::telemetry::Telemetry;
use tokio_util::sync::CancellationToken;

/// Counts the bytes allocated and not yet freed, by every thread.
struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// `n` tiny spans (ids and a one-letter name): ~30 bytes each on the wire.
fn tiny_spans(first: u32, n: u32) -> Vec<u8> {
    let spans = (first..first + n)
        .map(|i| {
            let mut trace_id = vec![7; 16];
            trace_id[12..].copy_from_slice(&i.to_be_bytes());
            Span {
                trace_id,
                span_id: (u64::from(i) + 1).to_be_bytes().to_vec(),
                name: "x".into(),
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

fn gauge(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

#[tokio::test]
async fn the_queue_bound_counts_the_memory_decoded_spans_hold() {
    const SPANS: u32 = 2000;
    const CAPACITY: u64 = 16 << 20;
    let config = OtlpExporterConfig {
        queue_max_bytes: ByteSize(CAPACITY),
        // Nothing leaves the queue during the test: batches wait for a full hour or 10M spans.
        batch_timeout: DurationStr(Duration::from_secs(3600)),
        max_batch_spans: 10_000_000,
        ..Default::default()
    };
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let telemetry = Arc::new(Telemetry::default());
    let drain = CancellationToken::new();
    let (exporter, worker) = traces::spawn(
        &config,
        &format!("http://{closed}"),
        telemetry.clone(),
        Box::new(|_| {}),
        drain.clone(),
    )
    .unwrap();
    // Encoded requests are built beforehand: only their decoded forms are measured.
    let bodies: Vec<Vec<u8>> = (0..60).map(|i| tiny_spans(i * SPANS, SPANS)).collect();
    let before = LIVE.load(Ordering::Relaxed);
    let mut encoded = 0u64;
    let mut queued = 0;
    for body in &bodies {
        // Decoded as a receiver decodes it.
        let req = ExportTraceServiceRequest::decode(&body[..]).unwrap();
        if exporter.try_enqueue(req, u64::from(SPANS), Samples::default()).is_err() {
            break;
        }
        encoded += body.len() as u64;
        queued += 1;
    }
    let held = (LIVE.load(Ordering::Relaxed) - before) as u64;
    let mut text = String::new();
    telemetry.render(Format::Text, 0, &mut text);
    let counted = gauge(&text, "spindle_exporter_queue_bytes");
    eprintln!("{queued} requests of {SPANS} tiny spans: counted {counted} B, heap held {held} B, encoded {encoded} B");
    assert!(
        counted as f64 <= held as f64 * 1.5 && held as f64 <= counted as f64 * 1.5,
        "counted {counted} B is within 1.5× of the {held} B the queued requests hold"
    );
    assert!(
        encoded * 3 < held,
        "the encoded length ({encoded} B) would have undercounted the {held} B held"
    );
    assert!(
        queued > 0 && queued < bodies.len(),
        "the queue filled up ({queued} requests)"
    );
    assert!(counted <= CAPACITY, "{counted} B within the bound");
    drain.cancel();
    let _ = worker.await;
}
