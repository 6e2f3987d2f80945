//! The trace export queue's bound counts the memory its requests really hold, measured with a
//! counting allocator (hence a test binary of its own, with one test): requests of many tiny
//! spans fill the queue, and the bytes it counts stay within 1.5× of the heap they really hold —
//! which, now that the queue holds encoded bodies, is several times less than the same requests
//! take decoded.

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
async fn the_queue_bound_counts_the_memory_queued_spans_hold() {
    const SPANS: u32 = 2000;
    // About 33 of the 60 requests (~62 KB each encoded) fit.
    const CAPACITY: u64 = 2 << 20;
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
        None,
    )
    .unwrap();
    // Encoded requests are built beforehand: only their decoded and queued forms are measured.
    let bodies: Vec<Vec<u8>> = (0..60).map(|i| tiny_spans(i * SPANS, SPANS)).collect();
    // Decoded as a receiver decodes them: what a queue of decoded requests would hold.
    let base = LIVE.load(Ordering::Relaxed);
    let decoded: Vec<ExportTraceServiceRequest> = bodies
        .iter()
        .map(|b| ExportTraceServiceRequest::decode(&b[..]).unwrap())
        .collect();
    let decoded_heap = (LIVE.load(Ordering::Relaxed) - base) as u64;
    let mut encoded = 0u64;
    let mut queued = 0;
    let mut decoded_queued = 0u64;
    let per_request = decoded_heap / bodies.len() as u64;
    for (req, body) in decoded.into_iter().zip(&bodies) {
        // The decoded request is handed over (and dropped): only what the queue keeps stays.
        if exporter.try_enqueue(req, u64::from(SPANS), Samples::default()).is_err() {
            break;
        }
        encoded += body.len() as u64;
        decoded_queued += per_request;
        queued += 1;
    }
    // Every decoded request is gone by now (queued ones were encoded, the rest dropped).
    let held = (LIVE.load(Ordering::Relaxed) - base) as u64;
    let mut text = String::new();
    telemetry.render(Format::Text, 0, &mut text);
    let counted = gauge(&text, "spindle_exporter_queue_bytes");
    eprintln!(
        "{queued} requests of {SPANS} tiny spans: counted {counted} B, heap held {held} B, encoded {encoded} B, \
         {decoded_queued} B decoded"
    );
    assert!(
        counted as f64 <= held as f64 * 1.5 && held as f64 <= counted as f64 * 1.5,
        "counted {counted} B is within 1.5× of the {held} B the queued requests hold"
    );
    assert!(
        held * 3 < decoded_queued,
        "the queue holds far less ({held} B) than the same requests decoded ({decoded_queued} B)"
    );
    assert!(
        queued > 0 && queued < bodies.len(),
        "the queue filled up ({queued} requests)"
    );
    assert!(counted <= CAPACITY, "{counted} B within the bound");
    drain.cancel();
    let _ = worker.await;
}
