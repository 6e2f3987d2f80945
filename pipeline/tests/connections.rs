//! Idle and slow clients cannot lock anyone out (issue 17): a flood of idle, slow-header and
//! slow-body connections on all three listeners, while `/healthz`, `/metrics` and well-behaved
//! OTLP senders keep being served; every flood connection is closed by the server within its
//! timeout (plus a margin), and the closes are counted.
//!
//! Every loop is bounded in count and time; everything talks to 127.0.0.1 only.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{gauge, int_point, kv, metric, metrics_request};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use prost::Message;
use spindle::config::{Config, DurationStr};
use spindle::telemetry::{CloseReason, ListenerKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// The timeouts of every listener in this test.
const TIMEOUT: Duration = Duration::from_secs(1);
/// How long after its timeout a flood connection may stay open: the watchdog ticks every
/// 125 ms here; the rest is slack for a loaded 2-core machine.
const MARGIN: Duration = Duration::from_secs(2);
/// The connection cap of every listener in this test.
const CAP: usize = 50;
/// Liveness bound for one `/healthz`, `/metrics` or export (generous: not a benchmark).
const LIVE: Duration = Duration::from_secs(2);

fn small_limits(c: &mut Config) {
    let t = DurationStr(TIMEOUT);
    let h = &mut c.receivers.otlp.http;
    (
        h.max_connections,
        h.idle_timeout,
        h.header_read_timeout,
        h.body_read_timeout,
    ) = (CAP, t, t, t);
    let p = &mut c.prometheus;
    (
        p.max_connections,
        p.idle_timeout,
        p.header_read_timeout,
        p.body_read_timeout,
    ) = (CAP, t, t, t);
    let g = &mut c.receivers.otlp.grpc;
    (g.max_connections, g.idle_timeout) = (CAP, t);
}

fn request() -> ExportMetricsServiceRequest {
    let good = metric("good_gauge", "", gauge(vec![int_point(1, vec![])]));
    metrics_request(vec![kv("service.name", "good")], vec![good])
}

/// What a flood connection does once connected.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Sends nothing.
    Silent,
    /// Sends a request head one line at a time, never finishing it.
    SlowHeader,
    /// Sends a whole head announcing 1000 body bytes, then the body one byte at a time.
    SlowBody,
    /// Sends one complete request, reads the answer, then keeps the connection open, idle.
    KeepAliveIdle,
    /// gRPC: the HTTP/2 preface, its last 8 bytes one at a time, never finishing it.
    SlowPreface,
}

/// Opens one flood connection and waits until the server closes it; `Err` describes a
/// connection still open past `TIMEOUT + MARGIN` (from when it became subject to a timeout).
async fn flood_one(addr: SocketAddr, kind: Kind, path: &'static str) -> Result<String, String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let mut start = Instant::now();
    let head = format!("POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/x-protobuf\r\n");
    match kind {
        Kind::Silent => {}
        Kind::SlowHeader => {
            let _ = s.write_all(head.as_bytes()).await;
        }
        Kind::SlowBody => {
            let _ = s
                .write_all(format!("{head}content-length: 1000\r\n\r\n0123456789").as_bytes())
                .await;
            start = Instant::now();
        }
        Kind::KeepAliveIdle => {
            let req = "GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n";
            let _ = s.write_all(req.as_bytes()).await;
            let mut buf = [0u8; 1024];
            let n = tokio::time::timeout(LIVE, s.read(&mut buf))
                .await
                .map_err(|_| "no answer to the keep-alive request".to_string())?
                .map_err(|e| format!("keep-alive read: {e}"))?;
            if n == 0 {
                return Ok(String::new()); // closed (e.g. to make room) before answering
            }
            start = Instant::now();
        }
        Kind::SlowPreface => {
            let _ = s.write_all(b"PRI * HTTP/2.0\r\n").await;
        }
    }
    let (mut rd, mut wr) = s.into_split();
    // Keep trickling (bounded: at most 40 writes), so a per-byte timeout would never fire. The
    // write half stays open until the read below is done (dropping it would send a FIN).
    let trickle = tokio::spawn(async move {
        for i in 0..40u32 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let bytes = match kind {
                Kind::SlowHeader => format!("x-slow-{i}: y\r\n").into_bytes(),
                Kind::SlowBody => b"z".to_vec(),
                Kind::SlowPreface if i < 7 => vec![b"\r\nSM\r\n\r\n"[i as usize]],
                _ => break,
            };
            if wr.write_all(&bytes).await.is_err() {
                break;
            }
        }
        std::future::pending::<()>().await;
        drop(wr);
    });
    let deadline = start + TIMEOUT + MARGIN;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let res = loop {
        match tokio::time::timeout_at(deadline.into(), rd.read(&mut buf)).await {
            Err(_) => {
                break Err(format!(
                    "{kind:?} connection to {addr} still open after {:?}",
                    TIMEOUT + MARGIN
                ));
            }
            Ok(Ok(0)) | Ok(Err(_)) => break Ok(String::from_utf8_lossy(&got).into_owned()),
            Ok(Ok(n)) if got.len() < 4096 => got.extend_from_slice(&buf[..n]),
            Ok(Ok(_)) => {}
        }
    };
    trickle.abort();
    res
}

/// `GET url` on a fresh connection, timed.
async fn timed_get(url: &str) -> (Duration, Result<(u16, String), String>) {
    let t = Instant::now();
    let client = reqwest::Client::builder().timeout(LIVE * 2).build().unwrap();
    let res = match client.get(url).send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            r.text().await.map(|b| (status, b)).map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    };
    (t.elapsed(), res)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_clients_cannot_lock_anyone_out() {
    let r = common::spindle(small_limits).await;
    let (http, grpc, prom) = (r.http_addr, r.grpc_addr, r.prometheus_addr);

    // The flood: per listener, several times its cap. Slow bodies hold a request in flight, so
    // fewer of them than the cap (they are bounded by the body timeout, not by eviction).
    let mut flood = JoinSet::new();
    // In waves, so each kind is still there when its timeout fires: at the cap a new connection
    // closes the least recently active idle one, so the idle flood evicts itself oldest first,
    // while slow bodies (a request in flight) are never evicted; hence fewer of them than the cap.
    let waves: [&[(SocketAddr, &'static str, Kind, usize)]; 3] = [
        &[
            (http, "/v1/metrics", Kind::SlowBody, 20),
            (prom, "/metrics", Kind::SlowBody, 10),
        ],
        &[
            (http, "/v1/metrics", Kind::Silent, 120),
            (http, "/v1/metrics", Kind::SlowHeader, 40),
            (prom, "/metrics", Kind::Silent, 120),
            (prom, "/metrics", Kind::SlowHeader, 40),
            (grpc, "", Kind::Silent, 150),
            (grpc, "", Kind::SlowPreface, 40),
        ],
        &[
            (http, "/v1/metrics", Kind::KeepAliveIdle, 10),
            (prom, "/metrics", Kind::KeepAliveIdle, 10),
        ],
    ];
    let mut opened = 0;
    for wave in waves {
        for &(addr, path, kind, n) in wave {
            for _ in 0..n {
                opened += 1;
                flood.spawn(async move { (kind, addr, flood_one(addr, kind, path).await) });
            }
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // Let the flood connect and fill every cap (the `max_connections` counts below prove it did).
    tokio::time::sleep(Duration::from_millis(300)).await;

    // While it lasts, everyone well-behaved is served, each within LIVE.
    let mut slowest_healthz = Duration::ZERO;
    for round in 0..3 {
        let (took, res) = timed_get(&format!("http://{prom}/healthz")).await;
        slowest_healthz = slowest_healthz.max(took);
        let (status, _) = res.unwrap_or_else(|e| panic!("round {round}: /healthz failed after {took:?}: {e}"));
        assert_eq!(status, 200, "round {round}: /healthz");
        assert!(took < LIVE, "round {round}: /healthz took {took:?}");

        let (took, res) = timed_get(&format!("http://{prom}/metrics")).await;
        let (status, body) = res.unwrap_or_else(|e| panic!("round {round}: /metrics failed after {took:?}: {e}"));
        assert_eq!(status, 200, "round {round}: /metrics");
        assert!(body.contains("spindle_received_requests"), "round {round}: {body}");
        assert!(took < LIVE, "round {round}: /metrics took {took:?}");

        let t = Instant::now();
        let resp = reqwest::Client::builder()
            .timeout(LIVE * 2)
            .build()
            .unwrap()
            .post(format!("http://{http}/v1/metrics"))
            .header("content-type", "application/x-protobuf")
            .body(request().encode_to_vec())
            .send()
            .await
            .unwrap_or_else(|e| panic!("round {round}: OTLP/HTTP export failed after {:?}: {e}", t.elapsed()));
        assert_eq!(resp.status(), 200, "round {round}: OTLP/HTTP export");
        assert!(
            t.elapsed() < LIVE,
            "round {round}: OTLP/HTTP export took {:?}",
            t.elapsed()
        );

        let t = Instant::now();
        let grpc_export = async {
            let mut c = MetricsServiceClient::connect(format!("http://{grpc}")).await?;
            c.export(request()).await?;
            Ok::<_, Box<dyn std::error::Error>>(())
        };
        match tokio::time::timeout(LIVE * 2, grpc_export).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("round {round}: OTLP/gRPC export failed after {:?}: {e}", t.elapsed()),
            Err(_) => panic!("round {round}: OTLP/gRPC export did not finish"),
        }
        assert!(
            t.elapsed() < LIVE,
            "round {round}: OTLP/gRPC export took {:?}",
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    eprintln!("slowest /healthz under the flood: {slowest_healthz:?}");

    // Every flood connection was closed by the server in time.
    let all = tokio::time::timeout(TIMEOUT + MARGIN + Duration::from_secs(10), async {
        let mut out = Vec::new();
        while let Some(res) = flood.join_next().await {
            out.push(res.unwrap());
        }
        out
    })
    .await
    .expect("flood connections did not finish");
    assert_eq!(all.len(), opened);
    let open: Vec<&String> = all.iter().filter_map(|(_, _, res)| res.as_ref().err()).collect();
    assert!(
        open.is_empty(),
        "{} of {opened} still open, e.g. {:?}",
        open.len(),
        &open[..open.len().min(3)]
    );
    // A slow body on OTLP/HTTP is answered 408 unless it was closed before to make room.
    let slow_bodies: Vec<&String> = all
        .iter()
        .filter(|(k, a, _)| matches!(k, Kind::SlowBody) && *a == http)
        .filter_map(|(_, _, res)| res.as_ref().ok())
        .collect();
    assert!(
        slow_bodies
            .iter()
            .all(|b| b.is_empty() || b.starts_with("HTTP/1.1 408")),
        "{slow_bodies:?}"
    );
    assert!(
        slow_bodies.iter().any(|b| b.starts_with("HTTP/1.1 408")),
        "{slow_bodies:?}"
    );

    // The closes are counted, per listener and reason, and shown on /metrics.
    let c = &r.telemetry.connections;
    for (l, reasons) in [
        (
            ListenerKind::OtlpHttp,
            &[
                CloseReason::MaxConnections,
                CloseReason::IdleTimeout,
                CloseReason::HeaderReadTimeout,
                CloseReason::BodyReadTimeout,
            ][..],
        ),
        (
            ListenerKind::Prometheus,
            &[CloseReason::MaxConnections, CloseReason::HeaderReadTimeout][..],
        ),
        (
            ListenerKind::OtlpGrpc,
            &[CloseReason::MaxConnections, CloseReason::IdleTimeout][..],
        ),
    ] {
        for &reason in reasons {
            assert!(c.closed_total(l, reason) > 0, "{l:?} {reason:?} not counted");
        }
    }
    let (_, res) = timed_get(&format!("http://{prom}/metrics")).await;
    let (_, text) = res.unwrap();
    // A body that timed out is a connection problem, not a malformed request.
    assert!(
        text.contains("spindle_refused_requests_total{signal=\"metrics\",protocol=\"http\",reason=\"malformed\"} 0"),
        "{text}"
    );
    for line in [
        "spindle_connections_closed_total{listener=\"otlp_http\",reason=\"body_read_timeout\"}",
        "spindle_connections_closed_total{listener=\"otlp_grpc\",reason=\"idle_timeout\"}",
        "spindle_open_connections{listener=\"prometheus\"}",
    ] {
        assert!(text.contains(line), "{line} missing from /metrics");
    }
    // The flood is gone: only connections of this test's own clients may remain.
    assert!(
        c.open_now(ListenerKind::OtlpHttp) <= 5,
        "{}",
        c.open_now(ListenerKind::OtlpHttp)
    );
    assert!(
        c.open_now(ListenerKind::OtlpGrpc) <= 5,
        "{}",
        c.open_now(ListenerKind::OtlpGrpc)
    );
    r.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_do_not_hold_up_shutdown() {
    // Default timeouts (10 s header, 2 m / 5 m idle): only the shutdown may close these.
    let r = common::spindle(|_| {}).await;
    let mut held = Vec::new();
    for addr in [r.http_addr, r.grpc_addr, r.prometheus_addr] {
        for _ in 0..20 {
            held.push(TcpStream::connect(addr).await.unwrap());
        }
    }
    // And one keep-alive connection that has been served once.
    let mut ka = TcpStream::connect(r.prometheus_addr).await.unwrap();
    ka.write_all(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(LIVE, ka.read(&mut buf)).await.unwrap().unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    held.push(ka);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(r.telemetry.connections.open_now(ListenerKind::OtlpGrpc), 20);

    let t = Instant::now();
    tokio::time::timeout(Duration::from_secs(30), r.shutdown())
        .await
        .expect("shutdown hung")
        .unwrap();
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "shutdown took {took:?} with idle connections open"
    );
    // Every held connection was closed by the server (gRPC ones after the server's SETTINGS).
    for (i, mut s) in held.into_iter().enumerate() {
        let mut rest = Vec::new();
        match tokio::time::timeout(LIVE, s.read_to_end(&mut rest)).await {
            Ok(_) => {}
            Err(_) => panic!("connection {i} not closed at shutdown"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_grpc_request_body_is_cancelled_after_request_timeout() {
    let r = common::spindle(|c| c.receivers.otlp.grpc.request_timeout = DurationStr(TIMEOUT)).await;
    let tcp = TcpStream::connect(r.grpc_addr).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::post(format!(
        "http://{}/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        r.grpc_addr
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .unwrap();
    let (resp, mut body) = client.send_request(req, false).unwrap();
    // A gRPC frame header announcing 1000 bytes, then one byte: the rest never comes.
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 3, 232, 1]), false)
        .unwrap();
    let t = Instant::now();
    let resp = tokio::time::timeout(TIMEOUT + MARGIN, resp)
        .await
        .expect("a slow gRPC body was not answered within request_timeout + margin")
        .unwrap();
    assert!(t.elapsed() >= TIMEOUT - Duration::from_millis(100), "{:?}", t.elapsed());
    // Trailers-only answer: grpc-status CANCELLED (1), which OTLP clients retry.
    assert_eq!(
        resp.headers().get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"1"[..]),
        "{resp:?}"
    );
    // The connection still serves well-behaved requests.
    let mut c = MetricsServiceClient::connect(format!("http://{}", r.grpc_addr))
        .await
        .unwrap();
    c.export(request()).await.unwrap();
}
