//! `spindle healthcheck`: the probe the container image's `HEALTHCHECK` runs (the runtime image has
//! no curl). Exit 0 when `GET /healthz` answers 200 within the timeout, else 1 with a message —
//! against a real in-process Spindle (over http, over https when `prometheus.tls` is set, and with
//! the listener's own certificate when it requires client certificates), a closed port, a server
//! answering 503 and one that never answers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_spindle");

/// Runs `spindle healthcheck ARGS` without `SPINDLE_*` variables from the test's environment.
fn healthcheck(args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("healthcheck").args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("SPINDLE_") {
            cmd.env_remove(k);
        }
    }
    cmd.output().expect("run spindle healthcheck")
}

async fn spindle_on_loopback() -> spindle::app::Running {
    spindle::testing::start_on_port_0(|_| {}).await
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_spindle_exits_0_by_url_and_by_config() {
    let running = spindle_on_loopback().await;
    let port = running.prometheus_addr.port();

    let url = format!("http://{}/healthz", running.prometheus_addr);
    let out = tokio::task::spawn_blocking(move || healthcheck(&["--url", &url]))
        .await
        .unwrap();
    assert!(out.status.success(), "healthcheck --url failed: {}", stderr(&out));

    // Without --url the address comes from the config; 0.0.0.0 is probed on loopback, as in the
    // container image (collector-config/spindle.yaml listens on 0.0.0.0).
    let dir = std::env::temp_dir().join(format!("spindle-healthcheck-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("spindle.yaml");
    std::fs::write(&cfg, format!("prometheus:\n  listen: 0.0.0.0:{port}\n")).unwrap();
    let cfg_arg = cfg.to_str().unwrap().to_owned();
    let out = tokio::task::spawn_blocking(move || healthcheck(&["--config", &cfg_arg]))
        .await
        .unwrap();
    assert!(out.status.success(), "healthcheck --config failed: {}", stderr(&out));

    running.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `spindle healthcheck --config` on a file with `yaml` in a fresh directory.
async fn healthcheck_with_config(name: &str, yaml: String) -> Output {
    let dir = std::env::temp_dir().join(format!("spindle-healthcheck-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("spindle.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let cfg_arg = cfg.to_str().unwrap().to_owned();
    let out = tokio::task::spawn_blocking(move || healthcheck(&["--config", &cfg_arg, "--timeout", "5s"]))
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    out
}

/// With `prometheus.tls` in the config the probe speaks https to the loopback listener (its
/// certificate, issued for other names, is not verified), and presents the listener's own
/// certificate when `client_ca_file` requires one; a plain-http probe of that listener fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_from_a_config_with_prometheus_tls_uses_https_and_mtls() {
    let pki = spindle_e2e::pki::Pki::new("healthcheck ca");
    let srv = pki.server_and_client("srv", 7);
    for mtls in [false, true] {
        let (cert, key, ca) = (srv.cert_str(), srv.key_str(), pki.ca_str());
        let running = spindle::testing::start_on_port_0(|c| {
            c.prometheus.tls.cert_file = Some(cert.clone());
            c.prometheus.tls.key_file = Some(key.clone());
            c.prometheus.tls.client_ca_file = mtls.then(|| ca.clone());
        })
        .await;
        let port = running.prometheus_addr.port();
        let client_ca = if mtls {
            format!("    client_ca_file: {ca}\n")
        } else {
            String::new()
        };
        let yaml = format!(
            "prometheus:\n  listen: 0.0.0.0:{port}\n  tls:\n    cert_file: {cert}\n    key_file: {key}\n{client_ca}"
        );
        let out = healthcheck_with_config(&format!("tls-{mtls}"), yaml).await;
        assert!(
            out.status.success(),
            "healthcheck --config with prometheus.tls (mtls {mtls}) failed: {}",
            stderr(&out)
        );

        let url = format!("http://127.0.0.1:{port}/healthz");
        let out = tokio::task::spawn_blocking(move || healthcheck(&["--url", &url, "--timeout", "2s"]))
            .await
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(1),
            "plain http to the https listener: {}",
            stderr(&out)
        );
        running.shutdown().await.unwrap();
    }
}

#[test]
fn closed_port_exits_1_with_a_message() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let out = healthcheck(&["--url", &format!("http://127.0.0.1:{port}/healthz"), "--timeout", "2s"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("unhealthy"), "{}", stderr(&out));
}

/// Serves one connection per accepted client with `reply` (or nothing at all when `None`).
fn fake_server(reply: Option<&'static str>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            match reply {
                Some(r) => {
                    let _ = conn.write_all(r.as_bytes());
                }
                // Hold the connection open without answering, long past the probe's timeout.
                None => std::thread::sleep(Duration::from_secs(5)),
            }
        }
    });
    addr
}

#[test]
fn non_200_answer_exits_1_naming_the_status() {
    let addr = fake_server(Some(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    ));
    let out = healthcheck(&["--url", &format!("http://{addr}/healthz")]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("503"), "{}", stderr(&out));
}

#[test]
fn silent_server_exits_1_within_the_timeout() {
    let addr = fake_server(None);
    let started = Instant::now();
    let out = healthcheck(&["--url", &format!("http://{addr}/healthz"), "--timeout", "300ms"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the probe took {:?} despite --timeout 300ms",
        started.elapsed()
    );
}
