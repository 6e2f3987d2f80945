//! `try_init` installs the process-wide defaults, so this test has a binary (a process) of its
//! own: with Spindle down (a closed port), requests through the layer still complete quickly,
//! flushes report failure, shutdown returns in bounded time, and the SDK's export errors reach
//! the log at most once per call site per interval.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use spindle_instrument::{Builder, HttpLayer};
use tower::ServiceExt;

#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_down_spindle_never_blocks_the_service_or_floods_the_log() {
    let log = Lines::default();
    let writer = log.clone();
    let closed = format!("http://127.0.0.1:{}", spindle_e2e::free_port());
    let lookup = move |name: &str| match name {
        "OTEL_EXPORTER_OTLP_ENDPOINT" => Some(closed.clone()),
        "OTEL_SERVICE_NAME" => Some("down-test".to_owned()),
        _ => None,
    };
    // Built from synchronous code: the gRPC exporters bring their own runtime.
    let guard = Builder::new()
        .with_env_lookup(lookup)
        .with_metric_export_interval(Duration::from_millis(100))
        .with_export_error_log_interval(Duration::from_secs(60))
        .with_log_writer(move || writer.clone())
        .try_init()
        .expect("try_init");
    assert!(
        Builder::new().try_init().is_err(),
        "a second global init is an error, not a panic"
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let router = Router::new()
        .route("/users/{id}", get(|| async { "user" }))
        .layer(HttpLayer::new());
    let started = Instant::now();
    runtime.block_on(async {
        for i in 0..500 {
            let resp = router
                .clone()
                .oneshot(Request::get(format!("/users/{i}")).body(Body::empty()).expect("req"))
                .await
                .expect("resp");
            assert_eq!(resp.status(), 200);
        }
    });
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(2),
        "500 requests took {elapsed:?} with Spindle down"
    );

    for _ in 0..3 {
        assert!(
            guard.force_flush().is_err(),
            "flushing to a closed port reports failure"
        );
    }
    // Let the periodic reader fail a few more times on its own (interval 100 ms).
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    assert!(guard.shutdown().is_err(), "the final flush fails too");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "shutdown took {:?}",
        started.elapsed()
    );

    let text = String::from_utf8(log.0.lock().expect("lock").clone()).expect("utf-8");
    let mut per_call_site: HashMap<String, usize> = HashMap::new();
    for line in text.lines().filter(|l| l.contains("opentelemetry")) {
        let key = line
            .split("name=")
            .nth(1)
            .unwrap_or(line)
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_owned();
        *per_call_site.entry(key).or_default() += 1;
    }
    assert!(!per_call_site.is_empty(), "export failures are reported:\n{text}");
    assert!(
        per_call_site.values().all(|n| *n == 1),
        "one line per SDK call site per interval: {per_call_site:#?}\n{text}"
    );
}
