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
