//! The export thread against an in-process OTLP/HTTP receiver: batching by count, time and
//! flush, drops counted when the channel is full, failures and the export deadline returned to
//! flush, and the `OTEL_BSP_*` and `…_TIMEOUT` variables.

use std::io::Read as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, UNIX_EPOCH};

use opentelemetry::InstrumentationScope;
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks, SpanProcessor as _};
use prost::Message as _;

use super::*;
use crate::transport::RetryPolicy;

const FAST: RetryPolicy = RetryPolicy {
    max_retries: 1,
    initial_delay: Duration::from_millis(10),
    max_delay: Duration::from_millis(10),
    max_jitter: Duration::from_millis(1),
};

#[derive(Clone, Default)]
struct Received {
    /// Spans per request, in arrival order.
    batches: Arc<Mutex<Vec<usize>>>,
    calls: Arc<AtomicUsize>,
}

impl Received {
    fn batches(&self) -> Vec<usize> {
        self.batches.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// An OTLP/HTTP receiver on `rt` recording each request's span count.
fn receiver(rt: &tokio::runtime::Runtime) -> (String, Received) {
    let seen = Received::default();
    let s = seen.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let s = s.clone();
            async move {
                s.calls.fetch_add(1, Ordering::SeqCst);
                assert_eq!(
                    headers.get("content-encoding").map(|v| v.as_bytes()),
                    Some(&b"gzip"[..])
                );
                let mut raw = Vec::new();
                flate2::read::GzDecoder::new(&body[..])
                    .read_to_end(&mut raw)
                    .expect("gzip");
                let req = ExportTraceServiceRequest::decode(raw.as_slice()).expect("OTLP");
                let n = req
                    .resource_spans
                    .iter()
                    .flat_map(|r| &r.scope_spans)
                    .map(|s| s.spans.len())
                    .sum();
                s.batches.lock().unwrap_or_else(PoisonError::into_inner).push(n);
                "ok"
            }
        }),
    );
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
    let addr = listener.local_addr().expect("addr");
    rt.spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/v1/traces"), seen)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

fn processor(rt: &tokio::runtime::Runtime, url: &str, batch: BatchSettings) -> OtlpSpanProcessor {
    let transport = Transport::http(url, &ClientSettings::default()).expect("transport");
    let resource = Resource::builder().with_service_name("svc").build();
    OtlpSpanProcessor::start_with_retry(transport, rt.handle().clone(), &resource, batch, FAST).expect("start")
}

fn span(i: u64) -> SpanData {
    SpanData {
        span_context: SpanContext::new(
            TraceId::from(7),
            SpanId::from(i + 1),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: SpanId::INVALID,
        parent_span_is_remote: false,
        span_kind: SpanKind::Internal,
        name: "op".into(),
        start_time: UNIX_EPOCH + Duration::from_secs(1),
        end_time: UNIX_EPOCH + Duration::from_secs(2),
        attributes: vec![opentelemetry::KeyValue::new("i", i as i64)],
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: Status::Unset,
        instrumentation_scope: InstrumentationScope::builder("test").build(),
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn full_batches_go_at_once_the_rest_on_flush_and_shutdown() {
    let rt = runtime();
    let (url, seen) = receiver(&rt);
    let batch = BatchSettings {
        max_queue_size: 100,
        scheduled_delay: Duration::from_secs(3600),
        max_export_batch_size: 10,
        ..BatchSettings::default()
    };
    let p = processor(&rt, &url, batch);
    for i in 0..25 {
        p.on_end(span(i));
    }
    wait_until("the two full batches", || seen.batches().iter().sum::<usize>() >= 20);
    p.force_flush().expect("flush");
    assert_eq!(seen.batches().iter().sum::<usize>(), 25);
    assert!(seen.batches().iter().all(|&n| n <= 10), "{:?}", seen.batches());
    for i in 0..3 {
        p.on_end(span(i));
    }
    p.shutdown_with_timeout(Duration::from_secs(5)).expect("shutdown");
    assert_eq!(
        seen.batches().iter().sum::<usize>(),
        28,
        "shutdown exports what is queued"
    );
    p.on_end(span(99));
    assert!(p.force_flush().is_err(), "after shutdown");
}

#[test]
fn the_delay_exports_a_partial_batch() {
    let rt = runtime();
    let (url, seen) = receiver(&rt);
    let batch = BatchSettings {
        max_queue_size: 100,
        scheduled_delay: Duration::from_millis(50),
        max_export_batch_size: 512,
        ..BatchSettings::default()
    };
    let p = processor(&rt, &url, batch);
    p.on_end(span(1));
    wait_until("the timer's export", || seen.batches() == [1]);
    p.shutdown_with_timeout(Duration::from_secs(5)).expect("shutdown");
}

#[test]
fn a_full_channel_drops_and_counts_and_never_blocks() {
    let rt = runtime();
    let (url, seen) = receiver(&rt);
    let batch = BatchSettings {
        max_queue_size: 4,
        scheduled_delay: Duration::from_secs(3600),
        max_export_batch_size: 100,
        ..BatchSettings::default()
    };
    let p = processor(&rt, &url, batch);
    for i in 0..10 {
        p.on_end(span(i));
    }
    assert_eq!(p.dropped(), 6);
    p.shutdown_with_timeout(Duration::from_secs(5)).expect("shutdown");
    assert_eq!(seen.batches(), [4]);
}

#[test]
fn a_failed_export_is_the_flush_error() {
    let rt = runtime();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let p = processor(
        &rt,
        &format!("http://127.0.0.1:{port}/v1/traces"),
        BatchSettings::default(),
    );
    p.on_end(span(1));
    let err = p.force_flush().expect_err("nobody listens");
    assert!(err.to_string().contains("after 2 attempts"), "{err}");
    p.shutdown_with_timeout(Duration::from_secs(5))
        .expect("nothing left to send");
}

#[test]
fn an_export_is_cut_at_the_timeout() {
    let rt = runtime();
    // A receiver that accepts connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/v1/traces", listener.local_addr().expect("addr"));
    let batch = BatchSettings {
        export_timeout: Duration::from_millis(200),
        ..BatchSettings::default()
    };
    let p = processor(&rt, &url, batch);
    p.on_end(span(1));
    let started = Instant::now();
    let err = p.force_flush().expect_err("no answer");
    assert!(err.to_string().contains("timed out after 200ms"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
    p.shutdown_with_timeout(Duration::from_secs(5)).expect("shutdown");
    drop(listener);
}

#[test]
fn bsp_variables_are_read_as_the_sdk_reads_them() {
    let env = |vars: &'static [(&'static str, &'static str)]| {
        move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
    };
    assert_eq!(BatchSettings::from_env(&env(&[])), BatchSettings::default());
    let s = BatchSettings::from_env(&env(&[
        (OTEL_BSP_MAX_QUEUE_SIZE, "100"),
        (OTEL_BSP_SCHEDULE_DELAY, "250"),
        (OTEL_BSP_MAX_EXPORT_BATCH_SIZE, "1000"),
        (OTEL_EXPORTER_OTLP_TIMEOUT, "3000"),
    ]));
    assert_eq!(
        s,
        BatchSettings {
            max_queue_size: 100,
            scheduled_delay: Duration::from_millis(250),
            max_export_batch_size: 100,
            export_timeout: Duration::from_secs(3),
        }
    );
    let s = BatchSettings::from_env(&env(&[
        (OTEL_EXPORTER_OTLP_TIMEOUT, "3000"),
        (OTEL_EXPORTER_OTLP_TRACES_TIMEOUT, "500"),
    ]));
    assert_eq!(
        s.export_timeout,
        Duration::from_millis(500),
        "the signal's own variable first"
    );
    let s = BatchSettings::from_env(&env(&[(OTEL_BSP_MAX_QUEUE_SIZE, "lots")]));
    assert_eq!(
        s,
        BatchSettings::default(),
        "unparsable values are ignored, as the SDK does"
    );
}

#[test]
fn a_partial_success_is_logged_as_opentelemetry_otlp_logged_it() {
    use opentelemetry_proto::tonic::collector::trace::v1::{ExportTracePartialSuccess, ExportTraceServiceResponse};

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let transport = Transport::http("http://localhost:4318/v1/traces", &ClientSettings::default()).expect("transport");
    let answer = |rejected_spans, error_message: &str| {
        ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans,
                error_message: error_message.to_owned(),
            }),
        }
        .encode_to_vec()
    };
    tracing::subscriber::with_default(subscriber, || {
        processor::log_partial_success(&transport, &answer(3, "service not allowed"));
        processor::log_partial_success(&transport, &answer(0, ""));
        processor::log_partial_success(&transport, &[]);
        processor::log_partial_success(&transport, b"not protobuf \xff\xff");
    });
    let text = String::from_utf8_lossy(&lines.0.lock().unwrap_or_else(PoisonError::into_inner)).into_owned();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains("WARN opentelemetry-otlp")
            && text.contains("HttpTraceClient.PartialSuccess")
            && text.contains("rejected_spans=3")
            && text.contains("service not allowed"),
        "{text}"
    );
}
