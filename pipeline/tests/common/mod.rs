//! Helpers shared by the in-process integration tests: the builders of [`spindle::testing`], and a
//! scrape.

#![allow(dead_code, unused_imports)] // each test binary uses its own subset

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use spindle::app::Running;
pub use spindle::testing::*;

/// Defaults with every listener on `127.0.0.1:0`, then `tweak`.
pub use spindle::testing::config_on_port_0 as config;
/// A Spindle started from [`config`]; the configuration must validate.
pub use spindle::testing::start_on_port_0 as spindle;

/// The text of `GET /metrics` (Prometheus text format).
pub async fn scrape(r: &Running) -> String {
    reqwest::get(format!("http://{}/metrics", r.prometheus_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// `POST`s a protobuf `body` to Spindle's OTLP/HTTP `path`, expects 200 and returns the answer's body.
pub async fn post_protobuf(r: &Running, path: &str, body: Vec<u8>) -> bytes::Bytes {
    let resp = reqwest::Client::new()
        .post(format!("http://{}{path}", r.http_addr))
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap()
}

/// An address nothing listens on (the port was bound, then released).
pub fn closed_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A backend that accepts connections and never answers; counts the connections it holds open.
pub async fn hanging_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let n = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            n.fetch_add(1, Ordering::SeqCst);
            held.push(socket);
        }
    });
    (addr, accepted)
}

/// Sends SIGTERM to `child` and waits for it to exit, for at most `within`; returns its exit
/// status and how long it took.
///
/// # Panics
/// When `kill` fails or the process is still running after `within`.
pub fn sigterm_and_wait(
    child: &mut std::process::Child,
    within: std::time::Duration,
) -> (std::process::ExitStatus, std::time::Duration) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -TERM failed");
    let t = std::time::Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return (st, t.elapsed());
        }
        assert!(
            t.elapsed() < within,
            "spindle did not exit within {within:?} of SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// An OTLP/protobuf request of `n` spans numbered from `first` (the number is in the last four
/// bytes of the trace id, see [`span_numbers`]), each with a `payload` attribute of `payload` bytes.
pub fn numbered_spans(first: u32, n: u32, payload: usize) -> Vec<u8> {
    use prost::Message;
    let spans = (first..first + n)
        .map(|i| {
            let mut s = span("GET /cart", 1, vec![kv("payload", "x".repeat(payload))]);
            s.trace_id[12..].copy_from_slice(&i.to_be_bytes());
            s.span_id[4..].copy_from_slice(&i.to_be_bytes());
            s
        })
        .collect();
    traces_request(vec![kv("service.name", "cart")], spans).encode_to_vec()
}

/// The numbers of [`numbered_spans`] a sink received.
pub fn span_numbers(sink: &spindle_e2e::otlp_sink::OtlpSink) -> std::collections::BTreeSet<u32> {
    sink.spans()
        .iter()
        .filter_map(|s| u32::from_str_radix(s.trace_id.get(24..)?, 16).ok())
        .collect()
}

/// Sends `requests` requests of [`numbered_spans`] (`per_request` spans each) to the OTLP/HTTP
/// receiver at `http`; returns the numbers of the spans acknowledged (200) and the bodies of the
/// 503 answers. Any other status fails.
pub async fn send_numbered(
    http: SocketAddr,
    requests: u32,
    per_request: u32,
    payload: usize,
) -> (std::collections::BTreeSet<u32>, Vec<String>) {
    let client = reqwest::Client::new();
    let mut accepted = std::collections::BTreeSet::new();
    let mut refused = Vec::new();
    for r in 0..requests {
        let first = r * per_request;
        let resp = client
            .post(format!("http://{http}/v1/traces"))
            .header("content-type", "application/x-protobuf")
            .body(numbered_spans(first, per_request, payload))
            .send()
            .await
            .unwrap();
        match resp.status().as_u16() {
            200 => accepted.extend(first..first + per_request),
            503 => {
                assert!(resp.headers().contains_key("retry-after"), "503 without Retry-After");
                refused.push(resp.text().await.unwrap());
            }
            other => panic!("unexpected status {other}"),
        }
    }
    (accepted, refused)
}

/// Waits until `sink` holds exactly the spans numbered `want` (at most 30 s).
pub async fn assert_delivered_exactly(sink: &spindle_e2e::otlp_sink::OtlpSink, want: &std::collections::BTreeSet<u32>) {
    let n = want.len();
    assert!(
        sink.wait_for(std::time::Duration::from_secs(30), |s| s.spans().len() >= n)
            .await,
        "only {} of {n} acknowledged spans arrived",
        sink.spans().len()
    );
    assert_eq!(&span_numbers(sink), want, "exactly the acknowledged spans");
}
