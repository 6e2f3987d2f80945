//! Memory per request, measured with a counting allocator: the decoded-size estimate that admission
//! reserves is an upper bound of what decoding allocates (and close to it for realistic requests),
//! and hostile request shapes keep the peak heap of one request under the documented multiple of
//! its size (README "What goes in": at most 2× for the body and its decompressed copy plus
//! `DECODED_FACTOR` (16)× decoded).

mod common;

use common::{gauge, kv, metric, metrics_request, traces_request};

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicI64, Ordering};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{Histogram, HistogramDataPoint, Metric, NumberDataPoint, metric};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, span};
use prost::Message;
use spindle::receive::decode::{self, DECODED_FACTOR, Encoding, OtlpRequest};

struct Counting;

static CURRENT: AtomicI64 = AtomicI64::new(0);
static PEAK: AtomicI64 = AtomicI64::new(0);

thread_local! {
    static THREAD: Cell<i64> = const { Cell::new(0) };
}

fn track(delta: i64) {
    let now = CURRENT.fetch_add(delta, Ordering::Relaxed) + delta;
    PEAK.fetch_max(now, Ordering::Relaxed);
    let _ = THREAD.try_with(|t| t.set(t.get() + delta));
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        track(l.size() as i64);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        track(-(l.size() as i64));
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        track(new as i64 - l.size() as i64);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Tests in this binary measure the whole process one at a time.
static SERIAL: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

fn thread_bytes() -> i64 {
    THREAD.with(Cell::get)
}

/// Heap the decoded form of `body` holds (measured) and the estimate admission reserves.
fn measured_and_estimated<M: OtlpRequest>(body: &[u8], enc: Encoding) -> (u64, u64) {
    let estimate = decode::decoded_size::<M>(body, enc).unwrap();
    let before = thread_bytes();
    let m = decode::decode::<M>(body, enc).unwrap();
    let held = thread_bytes() - before;
    drop(m);
    (held.max(0) as u64, estimate)
}

fn nested(depth: usize) -> AnyValue {
    let mut v = AnyValue {
        value: Some(any_value::Value::IntValue(1)),
    };
    for _ in 0..depth {
        v = AnyValue {
            value: Some(any_value::Value::ArrayValue(ArrayValue { values: vec![v] })),
        };
    }
    v
}

fn gauge_request(points: Vec<NumberDataPoint>, resource: Vec<KeyValue>) -> ExportMetricsServiceRequest {
    metrics_request(resource, vec![metric("hostile", "", gauge(points))])
}

fn point(attributes: Vec<KeyValue>) -> NumberDataPoint {
    NumberDataPoint {
        time_unix_nano: 1,
        ..common::point(1.0, attributes)
    }
}

fn realistic_traces(spans: usize) -> ExportTraceServiceRequest {
    let spans = (0..spans as u64)
        .map(|i| Span {
            trace_id: i.to_be_bytes().repeat(2),
            span_id: i.to_be_bytes().to_vec(),
            name: format!("GET /api/v1/items/{}", i % 17),
            kind: 2,
            start_time_unix_nano: 1_700_000_000_000_000_000 + i,
            end_time_unix_nano: 1_700_000_000_000_100_000 + i,
            attributes: (0..8)
                .map(|a| kv(&format!("http.attr_{a}"), format!("value-{i}-{a}")))
                .collect(),
            events: vec![span::Event {
                name: "retry".into(),
                attributes: vec![kv("attempt", "2")],
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    traces_request(vec![kv("service.name", "checkout"), kv("host.name", "node-7")], spans)
}

fn realistic_metrics(points: usize) -> ExportMetricsServiceRequest {
    let histogram = Metric {
        name: "http.server.duration".into(),
        unit: "s".into(),
        data: Some(metric::Data::Histogram(Histogram {
            aggregation_temporality: 2,
            data_points: (0..points)
                .map(|i| HistogramDataPoint {
                    attributes: vec![kv("http.route", format!("/r/{i}")), kv("http.method", "GET")],
                    count: 10,
                    sum: Some(1.5),
                    bucket_counts: vec![1, 2, 3, 4, 0],
                    explicit_bounds: vec![0.1, 0.2, 0.5, 1.0],
                    ..Default::default()
                })
                .collect(),
        })),
        ..Default::default()
    };
    let mut req = gauge_request(
        (0..points).map(|i| point(vec![kv("queue", format!("q{i}"))])).collect(),
        vec![kv("service.name", "svc")],
    );
    req.resource_metrics[0].scope_metrics[0].metrics.push(histogram);
    req
}

#[test]
fn the_estimate_bounds_what_decoding_allocates() {
    let _serial = SERIAL.lock();
    let traces = realistic_traces(1000);
    let metrics = realistic_metrics(1000);
    let nesting = gauge_request(
        vec![point(
            (0..50)
                .map(|i| KeyValue {
                    key: format!("n{i}"),
                    // Deep enough for both decoders' limits: prost's 100 messages, serde_json's 128 levels.
                    value: Some(nested(30)),
                    ..Default::default()
                })
                .collect(),
        )],
        vec![],
    );
    let repeated = gauge_request(vec![point((0..20_000).map(|_| kv("k", "v")).collect())], vec![]);

    for (name, pb, json, realistic) in [
        (
            "traces",
            traces.encode_to_vec(),
            serde_json::to_vec(&traces).unwrap(),
            true,
        ),
        (
            "metrics",
            metrics.encode_to_vec(),
            serde_json::to_vec(&metrics).unwrap(),
            true,
        ),
        (
            "nesting",
            nesting.encode_to_vec(),
            serde_json::to_vec(&nesting).unwrap(),
            false,
        ),
        (
            "repeated keys",
            repeated.encode_to_vec(),
            serde_json::to_vec(&repeated).unwrap(),
            false,
        ),
    ] {
        let is_traces = name == "traces";
        for (enc, body) in [(Encoding::Protobuf, &pb), (Encoding::Json, &json)] {
            let (held, estimate) = if is_traces {
                measured_and_estimated::<ExportTraceServiceRequest>(body, enc)
            } else {
                measured_and_estimated::<ExportMetricsServiceRequest>(body, enc)
            };
            assert!(
                held <= estimate,
                "{name} {enc:?}: decoding held {held} bytes, estimate {estimate}"
            );
            if realistic {
                // Hex ids in JSON count twice their decoded length; Vec capacities are powers of two.
                assert!(
                    estimate <= held * 5 / 2,
                    "{name} {enc:?}: estimate {estimate} is far above the {held} bytes held"
                );
            }
            eprintln!(
                "{name} {enc:?}: {} bytes in, {held} held decoded, estimate {estimate}",
                body.len()
            );
        }
    }
}

/// Sends each hostile shape to a Spindle in this process and measures the peak heap of the whole
/// process while it is handled.
#[test]
fn hostile_shapes_stay_under_the_documented_peak_per_request() {
    let _serial = SERIAL.lock();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(hostile_shapes());
}

async fn hostile_shapes() {
    let r = common::spindle(|_| {}).await;
    let client = reqwest::Client::new();
    // Colliding after sanitizing: `a.b`, `a-b`, `a/b`, `a.-b`, … all become `a_b`.
    let colliding = |n: usize| -> Vec<KeyValue> {
        (0..n)
            .map(|i| {
                let seps: String = (0..12).map(|d| ['.', '-', '/'][(i / 3usize.pow(d)) % 3]).collect();
                kv(&format!("a{seps}b"), "v")
            })
            .collect()
    };
    let empty_spans = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![Span::default(); 200_000],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let shapes: Vec<(&str, &str, Vec<u8>)> = vec![
        (
            "repeated key",
            "/v1/metrics",
            gauge_request(vec![point((0..40_000).map(|_| kv("k", "v")).collect())], vec![]).encode_to_vec(),
        ),
        (
            "colliding point keys",
            "/v1/metrics",
            gauge_request(vec![point(colliding(20_000))], vec![]).encode_to_vec(),
        ),
        (
            "colliding resource keys",
            "/v1/metrics",
            gauge_request(vec![point(vec![])], colliding(20_000)).encode_to_vec(),
        ),
        (
            "max attributes",
            "/v1/metrics",
            gauge_request(
                vec![point((0..100_000).map(|i| kv(&format!("attr{i}"), "v")).collect())],
                vec![],
            )
            .encode_to_vec(),
        ),
        (
            "empty points",
            "/v1/metrics",
            gauge_request(vec![NumberDataPoint::default(); 300_000], vec![]).encode_to_vec(),
        ),
        ("empty spans", "/v1/traces", empty_spans.encode_to_vec()),
        (
            "maximal nesting",
            "/v1/metrics",
            gauge_request(
                vec![point(
                    (0..2_000)
                        .map(|i| KeyValue {
                            key: format!("n{i}"),
                            // The deepest prost decodes here (its limit is 100 nested messages).
                            value: Some(nested(45)),
                            ..Default::default()
                        })
                        .collect(),
                )],
                vec![],
            )
            .encode_to_vec(),
        ),
    ];
    drop(empty_spans);
    for (name, path, body) in shapes {
        let len = body.len() as i64;
        let body = bytes::Bytes::from(body);
        // Let the previous request's buffers go, then measure from here.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let base = CURRENT.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        let resp = client
            .post(format!("http://{}{path}", r.http_addr))
            .header("content-type", "application/x-protobuf")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let peak = PEAK.load(Ordering::Relaxed) - base;
        // Documented: 2× for the body and its decompressed copy, DECODED_FACTOR× decoded; the client
        // in this process holds one more copy of what it sends; 1 MiB for buffers and the response.
        let bound = (2 + DECODED_FACTOR as i64 + 1) * len + (1 << 20);
        eprintln!(
            "{name}: {len} bytes, status {status}, peak {peak} bytes ({:.1}×) — {}",
            peak as f64 / len as f64,
            text.chars().take(160).collect::<String>()
        );
        assert!(
            peak <= bound,
            "{name}: peak {peak} bytes for a {len}-byte request (bound {bound})"
        );
        assert!(
            status.is_success() || status.is_client_error(),
            "{name}: {status} {text}"
        );
    }
    r.shutdown().await.unwrap();
}
