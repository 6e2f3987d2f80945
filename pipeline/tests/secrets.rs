//! Secrets never leak: with a bearer token, a token read from a file (`headers_from_files`) and a
//! URL password on the trace exporter, and an API key, a key read from a file and a URL password on
//! remote write, nothing Spindle prints — `print-config`, `validate`'s
//! errors, its logs at `trace` level while both exporters send and are retried, `/metrics` and
//! `/api/v1/cardinality` — contains any of them, while the backend does receive them.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_spindle");

const SECRETS: [&str; 8] = [
    "SECRET-TOKEN-abc123",
    "SECRET-FILETOKEN",
    "SECRET-RWFILEKEY",
    "SECRET-URLPASS",
    "SECRET-RWKEY",
    "SECRET-RWPASS",
    // The URL credentials as they go out, in `Authorization: Basic`.
    "dHJhY2V1c2VyOlNFQ1JFVC1VUkxQQVNT",
    "cnd1c2VyOlNFQ1JFVC1SV1BBU1M=",
];

fn dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("spindle-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// An HTTP/1.1 backend that hangs up on the first two requests (a transport error, whose message
/// would name the URL), then answers every request 503 (so exporters retry and log), recording
/// each request's head.
fn backend() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let s = s.clone();
            std::thread::spawn(move || {
                conn.set_read_timeout(Some(Duration::from_secs(5))).ok();
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                loop {
                    let mut head = String::new();
                    let mut len = 0usize;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                        head.push_str(&line);
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0; len];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let n = {
                        let mut seen = s.lock().unwrap();
                        seen.push(head);
                        seen.len()
                    };
                    if n <= 2 {
                        return;
                    }
                    let answer = "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy";
                    if conn.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// A plain HTTP/1.1 request; the whole answer.
fn http(addr: &str, method: &str, path: &str, body: &str) -> String {
    let mut c = TcpStream::connect(addr).unwrap();
    write!(
        c,
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    out
}

/// The secret files of `headers_from_files`, each ending with a newline (dropped when read).
fn secret_files() -> (String, String) {
    let token = dir().join("trace-token");
    std::fs::write(&token, "Bearer SECRET-FILETOKEN\n").unwrap();
    let key = dir().join("rw-key");
    std::fs::write(&key, "SECRET-RWFILEKEY\r\n").unwrap();
    (token.display().to_string(), key.display().to_string())
}

fn config(backend: SocketAddr) -> String {
    let (token, key) = secret_files();
    format!(
        r#"receivers:
  otlp:
    grpc: {{listen: 127.0.0.1:0}}
    http: {{listen: 127.0.0.1:0}}
prometheus: {{listen: 127.0.0.1:0}}
exporters:
  traces:
    otlp:
      endpoint: "http://traceuser:SECRET-URLPASS@{backend}"
      protocol: http/protobuf
      headers: {{X-Auth-Token: "Bearer SECRET-TOKEN-abc123"}}
      headers_from_files: {{X-File-Token: "{token}"}}
      batch_timeout: 10ms
      retry_initial_backoff: 50ms
      retry_max_backoff: 100ms
      shutdown_timeout: 1s
  remote_write:
    endpoint: "http://rwuser:SECRET-RWPASS@{backend}/api/v1/write"
    headers: {{X-Api-Key: SECRET-RWKEY}}
    headers_from_files: {{X-Rw-Key: "{key}"}}
    interval: 1s
    retry_initial_backoff: 50ms
    retry_max_backoff: 100ms
    shutdown_timeout: 1s
"#
    )
}

fn assert_no_secret(what: &str, text: &str) {
    for s in SECRETS.iter().chain(&["SECRET-BADPASS"]) {
        assert!(!text.contains(s), "{what} shows `{s}`:\n{text}");
    }
}

#[test]
fn print_config_and_validate_show_no_secret() {
    let (addr, _) = backend();
    let p = dir().join("secrets.yaml");
    std::fs::write(&p, config(addr)).unwrap();
    let out = Command::new(BIN)
        .args(["print-config", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_no_secret("print-config", &printed);
    assert_eq!(printed.matches("<redacted>").count(), 4, "{printed}");
    assert!(printed.contains("X-Auth-Token: <redacted>"), "{printed}");
    assert!(printed.contains(&format!("http://<redacted>@{addr}")), "{printed}");
    // Values read from files are shown by their paths.
    let (token, key) = secret_files();
    assert!(printed.contains(&format!("X-File-Token: {token}")), "{printed}");
    assert!(printed.contains(&format!("X-Rw-Key: {key}")), "{printed}");

    // An unreadable or empty secret file is a start-up error naming the key and the file only.
    let missing = dir().join("missing.yaml");
    let empty = dir().join("empty-token");
    std::fs::write(&empty, "\n").unwrap();
    std::fs::write(
        &missing,
        format!(
            "exporters:\n  traces:\n    otlp:\n      endpoint: http://h:4317\n      headers_from_files: {{authorization: /nonexistent/token}}\n  remote_write:\n    endpoint: http://h/api/v1/write\n    headers_from_files: {{X-Key: \"{}\"}}\n",
            empty.display()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["validate", "--config"])
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("exporters.traces.otlp.headers_from_files.authorization") && err.contains("/nonexistent/token"),
        "{err}"
    );
    assert!(
        err.contains("exporters.remote_write.headers_from_files.X-Key") && err.contains("is empty"),
        "{err}"
    );

    // An endpoint that fails validation is named without its credentials.
    let bad = dir().join("bad.yaml");
    std::fs::write(
        &bad,
        "exporters:\n  traces:\n    otlp:\n      endpoint: \"ftp://u:SECRET-BADPASS@h\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["validate", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exporters.traces.otlp.endpoint"), "{err}");
    assert!(err.contains("ftp://<redacted>@h"), "{err}");
    assert_no_secret("validate", &err);
}

#[test]
fn logs_at_trace_level_and_the_http_endpoints_show_no_secret_while_exporters_send_them() {
    let (addr, seen) = backend();
    let p = dir().join("run.yaml");
    std::fs::write(&p, config(addr)).unwrap();
    let log = dir().join("run.log");
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&p)
        .env("RUST_LOG", "trace")
        .env("NO_COLOR", "1")
        .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
        .stderr(Stdio::from(std::fs::File::options().append(true).open(&log).unwrap()))
        .spawn()
        .unwrap();
    // The listen addresses, from the log.
    // A bound, not a timing check: at trace level a debug build on a loaded machine starts slowly.
    let find = |what: &str| -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.contains(what)) {
                let addr = line.rsplit('=').next().unwrap().trim();
                return addr.to_string();
            }
            assert!(Instant::now() < deadline, "no `{what}` in the log");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let otlp_http = find("OTLP/HTTP receiver listening");
    let prometheus = find("Prometheus endpoint listening");
    let span = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"svc"}}]},"scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"op","kind":2,"startTimeUnixNano":"1700000000000000000","endTimeUnixNano":"1700000000100000000"}]}]}]}"#;
    assert!(http(&otlp_http, "POST", "/v1/traces", span).starts_with("HTTP/1.1 200"));
    let gauge = r#"{"resourceMetrics":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"svc"}}]},"scopeMetrics":[{"metrics":[{"name":"g","gauge":{"dataPoints":[{"asDouble":1.5,"timeUnixNano":"1700000000000000000"}]}}]}]}]}"#;
    assert!(http(&otlp_http, "POST", "/v1/metrics", gauge).starts_with("HTTP/1.1 200"));
    // Both exporters send, are refused with 503 and retry.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let heads = seen.lock().unwrap().join("\n");
        let traces = heads.matches("POST /v1/traces").count();
        let rw = heads.matches("POST /api/v1/write").count();
        if traces >= 3 && rw >= 3 {
            // The secrets did go where they belong.
            let lower = heads.to_ascii_lowercase();
            assert!(lower.contains("x-auth-token: bearer secret-token-abc123"), "{heads}");
            assert!(lower.contains("x-api-key: secret-rwkey"), "{heads}");
            assert!(heads.contains(&format!("Basic {}", SECRETS[6])), "{heads}");
            assert!(heads.contains(&format!("Basic {}", SECRETS[7])), "{heads}");
            // Read from their files, without the trailing newline.
            assert!(lower.contains("x-file-token: bearer secret-filetoken\r\n"), "{heads}");
            assert!(lower.contains("x-rw-key: secret-rwfilekey\r\n"), "{heads}");
            break;
        }
        assert!(Instant::now() < deadline, "the exporters did not retry:\n{heads}");
        std::thread::sleep(Duration::from_millis(50));
    }
    for path in ["/metrics", "/api/v1/cardinality"] {
        let answer = http(&prometheus, "GET", path, "");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert_no_secret(path, &answer);
    }
    common::sigterm_and_wait(&mut child, Duration::from_secs(15));
    let text = std::fs::read_to_string(&log).unwrap();
    // The log is the trace-level one, with the exporters' retries in it.
    assert!(text.contains("TRACE"), "not a trace-level log");
    assert!(text.contains("retrying"), "no retry was logged:\n{text}");
    assert!(
        text.contains("sending: error sending request"),
        "no transport error was logged:\n{text}"
    );
    assert!(text.contains("forwarding traces"), "{text}");
    assert_no_secret("the log", &text);
}
