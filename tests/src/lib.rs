//! Helpers shared by Spindle's end-to-end and interop tests (`tests/tests/*.rs`).
//!
//! What comes in: a [`spindle::config::Config`] tweak per test, and the real peers that
//! `scripts/test` installs — the OpenTelemetry Python SDK and `prometheus_client` in a venv
//! (`SPINDLE_PYTHON`, default `<workspace>/target/pyvenv/bin/python`), and the Debian `prometheus`
//! package (`prometheus`, `promtool`), and headless Chromium (Debian `chromium`), driven by
//! [`browser::Browser`]. What goes out: a running in-process Spindle on port 0, the
//! JSON summaries the Python peers print, `/metrics` bodies in both exposition formats and a
//! small lenient parser for them, a [`Prometheus`] server guard, and an [`otlp_sink::OtlpSink`]
//! OTLP receiver that records what Spindle (or an instrumented service) exports.
//!
//! A missing peer is a test failure with a message that says to run `scripts/test`, never a skip.

#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

pub mod browser;
pub mod otlp_sink;
pub mod pki;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;
use spindle::app::Running;
use spindle::config::Config;
use tokio::io::AsyncWriteExt;

/// `Accept` header value that selects OpenMetrics 1.0.0 on Spindle's `/metrics`.
pub const OPENMETRICS_ACCEPT: &str = "application/openmetrics-text; version=1.0.0";

/// Environment variable naming the Python interpreter that has the peers installed.
pub const PYTHON_ENV: &str = "SPINDLE_PYTHON";

/// Upper bound for one Python peer run.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(60);

/// Upper bound for data sent to Spindle to show up on its `/metrics`.
pub const VISIBLE_TIMEOUT: Duration = Duration::from_secs(15);

/// The workspace root (parent of this package's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent directory")
        .to_path_buf()
}

/// Path of a Python peer script in `tests/python/`.
pub fn python_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python").join(name)
}

/// The Python interpreter with the peers installed: `$SPINDLE_PYTHON`, or
/// `<workspace>/target/pyvenv/bin/python` when unset.
///
/// # Panics
/// When the interpreter does not exist — the test fails and says to run `scripts/test`.
pub fn python() -> PathBuf {
    let path = match std::env::var_os(PYTHON_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => workspace_root().join("target/pyvenv/bin/python"),
    };
    assert!(
        path.exists(),
        "Python interpreter with the interop peers not found at {} (set {PYTHON_ENV} or run \
         scripts/test, which installs the OpenTelemetry Python SDK and prometheus_client into \
         target/pyvenv)",
        path.display()
    );
    path
}

/// Path of a required peer binary (`prometheus`, `promtool`) on `PATH`.
///
/// # Panics
/// When the binary is not on `PATH` — the test fails and says to run `scripts/test`.
pub fn peer_binary(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "peer binary `{name}` not found on PATH; run scripts/test, which installs the \
                 Debian package `prometheus` (prometheus + promtool)"
            )
        })
}

/// A free TCP port on 127.0.0.1 (bound once, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Starts Spindle in-process with every listener on `127.0.0.1:0`, after `configure` has had its
/// say on the config (the one helper is [`spindle::testing::start_on_port_0`]). Call
/// [`Running::shutdown`] at the end of the test.
///
/// # Panics
/// When the configuration does not validate or `spindle::app::start` fails.
pub async fn start_spindle(configure: impl FnOnce(&mut Config)) -> Running {
    spindle::testing::start_on_port_0(configure).await
}

/// Runs `collector-config/gen-secrets.sh DIR` (the secured setup's CA, Spindle's certificate, the
/// receiver tokens, the scrape password and its hash, Grafana's password) and returns what it
/// printed on stdout.
///
/// # Panics
/// When the script fails; it needs `openssl` and `htpasswd`, which `scripts/test` installs.
pub fn gen_secrets(dir: &Path) -> String {
    let script = workspace_root().join("collector-config/gen-secrets.sh");
    let out = Command::new(&script)
        .arg(dir)
        .env_remove("SPINDLE_SECRET_SERVICES")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "collector-config/gen-secrets.sh failed (it needs openssl and htpasswd; scripts/test installs \
         them):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The variables of a docker compose env file: `KEY=VALUE` lines, `#` comments and blank lines
/// skipped; a value in single quotes is taken literally (as compose does), one in double quotes
/// without them.
///
/// # Panics
/// When the file cannot be read or a line is not `KEY=VALUE`.
pub fn read_env_file(path: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut out = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{}: a line is not KEY=VALUE", path.display()));
        let v = v
            .strip_prefix('\'')
            .and_then(|v| v.strip_suffix('\''))
            .or_else(|| v.strip_prefix('"').and_then(|v| v.strip_suffix('"')))
            .unwrap_or(v);
        out.insert(k.trim().to_owned(), v.to_owned());
    }
    out
}

/// Output of a successful peer process.
#[derive(Debug)]
pub struct PeerOutput {
    /// Everything the peer wrote to stdout.
    pub stdout: String,
    /// Everything the peer wrote to stderr.
    pub stderr: String,
}

/// Runs `program args…` with `stdin` fed in, bounded by [`PEER_TIMEOUT`], killing it on timeout.
/// Returns the exit status success flag and the output; never panics on a non-zero exit.
///
/// # Panics
/// When the program cannot be started or exceeds the timeout.
pub async fn run_process(program: &Path, args: &[&str], stdin: Option<&[u8]>) -> (bool, PeerOutput) {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {}: {err}", program.display()));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        let input = input.to_vec();
        tokio::spawn(async move {
            // A peer that exits early closes the pipe; its exit status reports why.
            let _ = pipe.write_all(&input).await;
        });
    }
    let output = tokio::time::timeout(PEER_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{} {args:?} did not finish within {PEER_TIMEOUT:?}", program.display()))
        .unwrap_or_else(|err| panic!("waiting for {}: {err}", program.display()));
    (
        output.status.success(),
        PeerOutput {
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        },
    )
}

/// An OpenMetrics exposition as `prometheus_client`'s strict parser (`parse_openmetrics.py`) read it.
#[derive(Debug, Deserialize)]
pub struct ParsedOpenMetrics {
    /// Families in exposition order.
    pub families: Vec<ParsedFamily>,
}

/// One family as `prometheus_client` read it.
#[derive(Debug, Deserialize)]
pub struct ParsedFamily {
    /// Family name (counters without `_total`).
    pub name: String,
    /// `counter`, `gauge`, `histogram`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// Its samples.
    pub samples: Vec<ParsedSample>,
}

/// One sample as `prometheus_client` read it.
#[derive(Debug, Deserialize)]
pub struct ParsedSample {
    /// Sample name (`foo_total`, `foo_bucket`, …).
    pub name: String,
    /// Labels.
    pub labels: HashMap<String, String>,
    /// The value (a number, or a string for special values).
    pub value: serde_json::Value,
    /// The exemplar, if any.
    pub exemplar: Option<ParsedExemplar>,
}

/// An exemplar as `prometheus_client` read it.
#[derive(Debug, Deserialize)]
pub struct ParsedExemplar {
    /// Exemplar labels (`trace_id`, `span_id`).
    pub labels: HashMap<String, String>,
    /// Timestamp in seconds.
    pub timestamp: Option<f64>,
}

/// Parses `text` with `prometheus_client`'s strict OpenMetrics parser; panics when it refuses it.
pub async fn parse_with_prometheus_client(text: &str) -> ParsedOpenMetrics {
    let out = run_python("parse_openmetrics.py", &[], Some(text.as_bytes())).await;
    serde_json::from_str(&out.stdout).expect("parse_openmetrics.py JSON")
}

/// Runs a Python peer script from `tests/python/` with the peers' interpreter ([`python()`]).
///
/// # Panics
/// When the interpreter is missing, or the script fails (its stderr is in the message).
pub async fn run_python(script: &str, args: &[&str], stdin: Option<&[u8]>) -> PeerOutput {
    let script_path = python_script(script);
    let script_str = script_path.to_str().expect("utf-8 path");
    let mut all = vec![script_str];
    all.extend_from_slice(args);
    let (ok, out) = run_process(&python(), &all, stdin).await;
    assert!(
        ok,
        "python peer {script} {args:?} failed\n--- stderr ---\n{}\n--- stdout ---\n{}",
        out.stderr, out.stdout
    );
    out
}

/// OTLP protocol the Python SDK exports with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (`insecure=True`).
    Grpc,
    /// OTLP/HTTP with protobuf bodies.
    Http,
}

/// What `send_metrics.py` is asked to do.
#[derive(Debug, Clone)]
pub struct SendOptions {
    /// Export protocol.
    pub protocol: Protocol,
    /// `service.name`; `service.namespace` is `shop`, `service.instance.id` is `<service>-1`.
    pub service: String,
    /// Delta instead of cumulative temporality for counters and histograms.
    pub delta: bool,
    /// Number of record-and-export rounds.
    pub rounds: u32,
    /// How many of the first rounds record inside sampled spans (`None`: all).
    pub span_rounds: Option<u32>,
}

impl SendOptions {
    /// One cumulative round over `protocol`, recorded inside spans.
    pub fn new(protocol: Protocol, service: &str) -> Self {
        Self {
            protocol,
            service: service.to_owned(),
            delta: false,
            rounds: 1,
            span_rounds: None,
        }
    }
}

/// Totals the SDK sent for one `demo.latency` series (`route`).
#[derive(Debug, Clone, Deserialize)]
pub struct SentHistogram {
    /// Number of recorded values.
    pub count: u64,
    /// Sum of recorded values.
    pub sum: f64,
    /// Cumulative bucket counts by upper bound (`"0.005"`, …, `"+Inf"`).
    pub buckets: BTreeMap<String, u64>,
}

/// The gauge `demo.temperature` as observed by the SDK.
#[derive(Debug, Clone, Deserialize)]
pub struct SentTemperature {
    /// Value of the `room` attribute.
    pub room: String,
    /// Observed value.
    pub value: f64,
}

/// Instrumentation scope of the SDK's meter.
#[derive(Debug, Clone, Deserialize)]
pub struct SentScope {
    /// Scope name.
    pub name: String,
    /// Scope version.
    pub version: String,
}

/// The JSON line `send_metrics.py` prints: what it sent, cumulated over all rounds.
#[derive(Debug, Clone, Deserialize)]
pub struct SentSummary {
    /// `service.name`.
    pub service: String,
    /// `service.instance.id`, i.e. the expected `instance` label.
    pub instance: String,
    /// Expected `job` label (`shop/<service>`).
    pub job: String,
    /// Number of rounds.
    pub rounds: u32,
    /// Number of rounds recorded inside spans.
    pub span_rounds: u32,
    /// The meter's scope.
    pub scope: SentScope,
    /// Trace ids (32 lowercase hex) of the spans measurements were recorded in.
    pub trace_ids: Vec<String>,
    /// Span ids (16 lowercase hex), index-aligned with `trace_ids`.
    pub span_ids: Vec<String>,
    /// Per export: metric name → trace ids of the exemplars the SDK attached.
    pub exemplars_per_round: Vec<HashMap<String, Vec<String>>>,
    /// `demo.requests` totals by `route`.
    pub requests: BTreeMap<String, u64>,
    /// Final value of `demo.queue.depth`.
    pub queue_depth: i64,
    /// `demo.latency` totals by `route`.
    pub latency: BTreeMap<String, SentHistogram>,
    /// `demo.temperature`.
    pub temperature: SentTemperature,
}

impl SentSummary {
    /// Whether `(trace_id, span_id)` is a span the SDK recorded in.
    pub fn has_span(&self, trace_id: &str, span_id: &str) -> bool {
        self.trace_ids
            .iter()
            .zip(&self.span_ids)
            .any(|(t, s)| t == trace_id && s == span_id)
    }
}

/// Runs `send_metrics.py` against a running Spindle and returns its summary.
///
/// # Panics
/// When the peer is missing or fails (e.g. Spindle rejected an export).
pub async fn send_metrics(spindle: &Running, opts: &SendOptions) -> SentSummary {
    send_metrics_to(spindle.grpc_addr, spindle.http_addr, opts).await
}

/// [`send_metrics`] to a Spindle (e.g. another process) with these receiver addresses.
///
/// # Panics
/// When the peer is missing or fails (e.g. Spindle rejected an export).
pub async fn send_metrics_to(grpc_addr: SocketAddr, http_addr: SocketAddr, opts: &SendOptions) -> SentSummary {
    let (protocol, endpoint) = match opts.protocol {
        Protocol::Grpc => ("grpc", format!("http://{grpc_addr}")),
        Protocol::Http => ("http", format!("http://{http_addr}/v1/metrics")),
    };
    let rounds = opts.rounds.to_string();
    let span_rounds = opts.span_rounds.map(|n| n.to_string());
    let mut args = vec![
        "--protocol",
        protocol,
        "--endpoint",
        &endpoint,
        "--service",
        &opts.service,
        "--temporality",
        if opts.delta { "delta" } else { "cumulative" },
        "--rounds",
        &rounds,
    ];
    if let Some(n) = &span_rounds {
        args.extend(["--span-rounds", n]);
    }
    let out = run_python("send_metrics.py", &args, None).await;
    let line = out.stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|err| {
        panic!(
            "send_metrics.py printed no valid summary ({err}):\n{}\n{}",
            out.stdout, out.stderr
        )
    })
}

/// One span `send_spans.py` created and the SDK exported.
#[derive(Debug, Clone, Deserialize)]
pub struct SentSpan {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
    /// Span name.
    pub name: String,
    /// `SPAN_KIND_SERVER`, …
    pub kind: String,
    /// `STATUS_CODE_UNSET`, …
    pub status: String,
    /// The span's duration (end − start) in milliseconds, exact.
    pub duration_ms: u64,
}

/// The JSON line `send_spans.py` prints: every span it created, all exported successfully.
#[derive(Debug, Clone, Deserialize)]
pub struct SentSpans {
    /// `service.name`.
    pub service: String,
    /// The spans.
    pub spans: Vec<SentSpan>,
}

impl SentSpans {
    /// `(trace_id, span_id)` of every span.
    pub fn keys(&self) -> BTreeSet<(String, String)> {
        self.spans
            .iter()
            .map(|s| (s.trace_id.clone(), s.span_id.clone()))
            .collect()
    }

    /// The trace ids.
    pub fn trace_ids(&self) -> BTreeSet<String> {
        self.spans.iter().map(|s| s.trace_id.clone()).collect()
    }

    /// Spans sent per (span name, kind, status).
    pub fn counts(&self) -> BTreeMap<(String, String, String), u64> {
        let mut out = BTreeMap::new();
        for s in &self.spans {
            *out.entry((s.name.clone(), s.kind.clone(), s.status.clone()))
                .or_insert(0) += 1;
        }
        out
    }
}

/// Runs `send_spans.py` (the Python SDK: `traces` traces of `per_trace` spans, service `service`)
/// against the Spindle receivers at `grpc_addr` / `http_addr`, and checks that it reports every span
/// it created, with distinct ids.
///
/// # Panics
/// When the peer is missing or fails (the script fails unless every export succeeded).
pub async fn send_spans_to(
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    protocol: Protocol,
    service: &str,
    traces: u32,
    per_trace: u32,
) -> SentSpans {
    let (protocol, endpoint) = match protocol {
        Protocol::Grpc => ("grpc", format!("http://{grpc_addr}")),
        Protocol::Http => ("http", format!("http://{http_addr}/v1/traces")),
    };
    let want = (traces * per_trace) as usize;
    let (traces, per_trace) = (traces.to_string(), per_trace.to_string());
    let args = [
        "--protocol",
        protocol,
        "--endpoint",
        &endpoint,
        "--service",
        service,
        "--traces",
        &traces,
        "--spans-per-trace",
        &per_trace,
    ];
    let out = run_python("send_spans.py", &args, None).await;
    let line = out.stdout.lines().last().unwrap_or_default();
    let sent: SentSpans = serde_json::from_str(line).unwrap_or_else(|err| {
        panic!(
            "send_spans.py printed no valid summary ({err}):\n{}\n{}",
            out.stdout, out.stderr
        )
    });
    assert_eq!(sent.spans.len(), want, "spans the SDK reports sending");
    assert_eq!(sent.keys().len(), sent.spans.len(), "the SDK's span ids are distinct");
    sent
}

/// Runs `send_tls.py` (the Python SDK's OTLP span and metric exporters, configured only by the
/// OTel variables) with `env`, and without `REQUESTS_CA_BUNDLE`, `CURL_CA_BUNDLE` (which `requests`
/// would let override the CA under test) and the variables in `unset`; returns the results of the
/// span and the metric export (`SUCCESS` / `FAILURE`).
///
/// # Panics
/// When the script fails or prints no summary.
pub async fn send_tls(protocol: &str, service: &str, env: &[(&str, String)], unset: &[&str]) -> (String, String) {
    let mut args: Vec<String> = ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"]
        .iter()
        .chain(unset)
        .flat_map(|v| ["-u".to_string(), v.to_string()])
        .collect();
    args.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
    args.push(python().display().to_string());
    args.push(python_script("send_tls.py").display().to_string());
    args.push(protocol.into());
    args.push(service.into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out) = run_process(Path::new("/usr/bin/env"), &args, None).await;
    assert!(ok, "send_tls.py failed\n{}\n{}", out.stderr, out.stdout);
    let line = out.stdout.lines().last().unwrap_or_default();
    let v: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {}\n{}", out.stdout, out.stderr));
    let result = |k: &str| {
        v[k].as_str()
            .unwrap_or_else(|| panic!("no `{k}` in {line}"))
            .to_string()
    };
    (result("spans"), result("metrics"))
}

/// A `/metrics` response.
#[derive(Debug)]
pub struct Scrape {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type` header (empty when absent).
    pub content_type: String,
    /// `Content-Encoding` header (empty when absent).
    pub content_encoding: String,
    /// Raw body bytes (still compressed when `Content-Encoding` says so).
    pub body: Vec<u8>,
}

impl Scrape {
    /// The body as UTF-8 text, gunzipped first when `Content-Encoding: gzip`.
    ///
    /// # Panics
    /// When the body is not valid gzip or UTF-8.
    pub fn text(&self) -> String {
        let bytes = if self.content_encoding.eq_ignore_ascii_case("gzip") {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(self.body.as_slice()), &mut out)
                .expect("gzip body decodes");
            out
        } else {
            self.body.clone()
        };
        String::from_utf8(bytes).expect("/metrics body is UTF-8")
    }
}

/// GETs `http://{addr}{path}` with the given request headers, without automatic decompression
/// (so `Content-Encoding` can be checked). reqwest adds `Accept: */*` unless `headers` sets it.
///
/// # Panics
/// On connection errors.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Scrape {
    let client = reqwest::Client::builder()
        .no_gzip()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("reqwest client");
    let mut req = client.get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|err| panic!("GET http://{addr}{path}: {err}"));
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let status = resp.status().as_u16();
    let content_type = header("content-type");
    let content_encoding = header("content-encoding");
    let body = resp.bytes().await.expect("response body").to_vec();
    Scrape {
        status,
        content_type,
        content_encoding,
        body,
    }
}

/// `GET /metrics` with `Accept: application/openmetrics-text; version=1.0.0`; returns the body.
///
/// # Panics
/// On errors or a non-200 status.
pub async fn fetch_openmetrics(addr: SocketAddr) -> String {
    let scrape = get(addr, "/metrics", &[("accept", OPENMETRICS_ACCEPT)]).await;
    assert_eq!(scrape.status, 200, "GET /metrics (OpenMetrics) status");
    scrape.text()
}

/// `GET /metrics` without asking for OpenMetrics (Prometheus text 0.0.4); returns the body.
///
/// # Panics
/// On errors or a non-200 status.
pub async fn fetch_text(addr: SocketAddr) -> String {
    let scrape = get(addr, "/metrics", &[]).await;
    assert_eq!(scrape.status, 200, "GET /metrics (text) status");
    scrape.text()
}

/// An exemplar attached to a sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Exemplar {
    /// Exemplar labels (`trace_id`, `span_id`).
    pub labels: BTreeMap<String, String>,
    /// Exemplar value.
    pub value: f64,
    /// Exemplar timestamp in seconds, if present.
    pub timestamp: Option<f64>,
}

/// One sample line of an exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Sample name (`demo_requests_total`, `demo_latency_seconds_bucket`, …).
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
    /// Exemplar, if any.
    pub exemplar: Option<Exemplar>,
}

impl Sample {
    /// The label's value, or `""` when absent.
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map(String::as_str).unwrap_or("")
    }

    /// Whether every `(name, value)` pair is among the labels.
    pub fn has_labels(&self, wanted: &[(&str, &str)]) -> bool {
        wanted.iter().all(|(k, v)| self.label(k) == *v)
    }
}

/// A parsed exposition (OpenMetrics or Prometheus text): enough for assertions, not a validator —
/// validation is the real peers' job (`prometheus_client`, `promtool`, Prometheus).
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    /// Sample lines in order.
    pub samples: Vec<Sample>,
    /// `# TYPE` per metric family name.
    pub types: HashMap<String, String>,
    /// Whether the text ended with `# EOF`.
    pub eof: bool,
    /// The raw text.
    pub text: String,
}

impl Exposition {
    /// All samples named `name` that carry all `labels`.
    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.name == name && s.has_labels(labels))
            .collect()
    }

    /// The single sample named `name` with `labels`.
    ///
    /// # Panics
    /// When there is not exactly one; the message shows the matching lines of the text.
    pub fn one(&self, name: &str, labels: &[(&str, &str)]) -> &Sample {
        let found = self.find(name, labels);
        assert!(
            found.len() == 1,
            "expected exactly one `{name}` sample with {labels:?}, found {}; lines for this name:\n{}",
            found.len(),
            self.lines_of(name)
        );
        found[0]
    }

    /// Lines of the text that mention `name` (for failure messages).
    pub fn lines_of(&self, name: &str) -> String {
        let base = name
            .trim_end_matches("_total")
            .trim_end_matches("_bucket")
            .trim_end_matches("_count")
            .trim_end_matches("_sum");
        let mut out = String::new();
        for line in self.text.lines().filter(|l| l.contains(base)) {
            let _ = writeln!(out, "  {line}");
        }
        if out.is_empty() {
            out = format!("  (none; whole output:)\n{}", self.text);
        }
        out
    }
}

/// Parses an OpenMetrics or Prometheus text exposition.
///
/// # Panics
/// On a line it cannot make sense of (the message quotes the line).
pub fn parse_exposition(text: &str) -> Exposition {
    let mut exp = Exposition {
        text: text.to_owned(),
        ..Default::default()
    };
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let comment = comment.trim_start();
            if comment == "EOF" {
                exp.eof = true;
            } else if let Some(rest) = comment.strip_prefix("TYPE ") {
                let mut parts = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                    exp.types.insert(name.to_owned(), kind.to_owned());
                }
            }
            continue;
        }
        exp.samples
            .push(parse_sample(line).unwrap_or_else(|err| panic!("cannot parse line {line:?}: {err}")));
    }
    exp
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if rest.starts_with('{') {
        let (parsed, after) = parse_labels(rest)?;
        labels = parsed;
        rest = after;
    }
    let (main, exemplar_part) = match rest.split_once(" # ") {
        Some((m, e)) => (m, Some(e)),
        None => (rest, None),
    };
    let mut fields = main.split_whitespace();
    let value = parse_float(fields.next().ok_or("no value")?)?;
    let exemplar = match exemplar_part {
        None => None,
        Some(e) => {
            if !e.starts_with('{') {
                return Err("exemplar does not start with {".into());
            }
            let (labels, after) = parse_labels(e)?;
            let mut fields = after.split_whitespace();
            let value = parse_float(fields.next().ok_or("exemplar without value")?)?;
            let timestamp = fields.next().map(parse_float).transpose()?;
            Some(Exemplar {
                labels,
                value,
                timestamp,
            })
        }
    };
    Ok(Sample {
        name,
        labels,
        value,
        exemplar,
    })
}

fn parse_float(s: &str) -> Result<f64, String> {
    s.parse::<f64>().map_err(|err| format!("bad number {s:?}: {err}"))
}

/// Parses `{a="b",c="d"}` at the start of `s`; returns the labels and the text after `}`.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let bytes = s.as_bytes();
    let mut i = 1; // after '{'
    loop {
        if i >= bytes.len() {
            return Err("unterminated label set".into());
        }
        if bytes[i] == b'}' {
            return Ok((labels, &s[i + 1..]));
        }
        let eq = s[i..].find('=').ok_or("label without =")? + i;
        let key = s[i..eq].trim().to_owned();
        if bytes.get(eq + 1) != Some(&b'"') {
            return Err(format!("label {key} value not quoted"));
        }
        let mut value = String::new();
        let mut j = eq + 2;
        loop {
            let c = *bytes.get(j).ok_or("unterminated label value")?;
            match c {
                b'\\' => {
                    match bytes.get(j + 1) {
                        Some(b'n') => value.push('\n'),
                        Some(b'\\') => value.push('\\'),
                        Some(b'"') => value.push('"'),
                        _ => return Err("bad escape in label value".into()),
                    }
                    j += 2;
                }
                b'"' => break,
                _ => {
                    let ch = s[j..].chars().next().ok_or("bad utf-8")?;
                    value.push(ch);
                    j += ch.len_utf8();
                }
            }
        }
        labels.insert(key, value);
        i = j + 1;
        if bytes.get(i) == Some(&b',') {
            i += 1;
        }
    }
}

/// Polls Spindle's OpenMetrics `/metrics` every 100 ms until `ready` holds, for at most
/// [`VISIBLE_TIMEOUT`]; returns the exposition that satisfied it.
///
/// # Panics
/// On timeout, with `what` and the lines of the last scrape that mention `name`.
pub async fn wait_for_openmetrics(
    addr: SocketAddr,
    what: &str,
    name: &str,
    ready: impl Fn(&Exposition) -> bool,
) -> Exposition {
    let deadline = Instant::now() + VISIBLE_TIMEOUT;
    loop {
        let exp = parse_exposition(&fetch_openmetrics(addr).await);
        if ready(&exp) {
            return exp;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out after {VISIBLE_TIMEOUT:?} waiting for {what}; last scrape, lines for `{name}`:\n{}",
                exp.lines_of(name)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A real Prometheus server (Debian package `prometheus`) scraping one target every second with
/// `honor_labels: true` and `--enable-feature=exemplar-storage`. Killed on drop.
#[derive(Debug)]
pub struct Prometheus {
    child: Child,
    /// Address of Prometheus' web/API listener.
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

/// The `(major, minor)` version of the Prometheus binary at `binary` (`(0, 0)` when it cannot
/// tell).
fn prometheus_version(binary: &Path) -> (u32, u32) {
    let out = Command::new(binary)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr))
        .unwrap_or_default();
    // "prometheus, version 2.42.0+ds (…)"
    let version = out
        .split("version ")
        .nth(1)
        .and_then(|v| v.split(|c: char| !(c.is_ascii_digit() || c == '.')).next())
        .unwrap_or("");
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// Prometheus versions before 2.49 do not know `scrape_protocols`; those negotiate OpenMetrics by
/// default when exemplar storage is enabled.
fn supports_scrape_protocols(binary: &Path) -> bool {
    prometheus_version(binary) >= (2, 49)
}

/// The scrape-config option with which the installed Prometheus keeps a histogram's classic
/// buckets as classic series beside its native buckets: `scrape_classic_histograms` (2.45 to 2.x),
/// `always_scrape_classic_histograms` (3.x). `None` before 2.45, which has no such option: with
/// native histograms on it ingests only the native buckets of a histogram that has both.
pub fn classic_histograms_option() -> Option<&'static str> {
    match prometheus_version(&peer_binary("prometheus")) {
        (major, _) if major >= 3 => Some("always_scrape_classic_histograms"),
        v if v >= (2, 45) => Some("scrape_classic_histograms"),
        _ => None,
    }
}

/// A Prometheus config scraping `target` every second as job `spindle` with `honor_labels: true`
/// and `job_extra` (YAML lines indented under the job).
fn spindle_scrape_config(target: SocketAddr, job_extra: &str) -> String {
    format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
         scrape_configs:\n  - job_name: spindle\n    honor_labels: true\n{job_extra}    \
         static_configs:\n      - targets: ['{target}']\n"
    )
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (`/metrics`) as job `spindle`, and waits until it is ready.
    ///
    /// # Panics
    /// When `prometheus` is not on `PATH`, or it does not become ready within 30 s.
    pub async fn start(target: SocketAddr) -> Self {
        let binary = peer_binary("prometheus");
        let protocols = if supports_scrape_protocols(&binary) {
            "    scrape_protocols: [OpenMetricsText1.0.0, PrometheusText0.0.4]\n"
        } else {
            ""
        };
        let config = spindle_scrape_config(target, protocols);
        Self::launch(&binary, &config, &[]).await
    }

    /// Starts Prometheus with native histograms on (`--enable-feature=native-histograms`, which
    /// makes it ask for the protobuf exposition first) scraping `target` (`/metrics`) as job
    /// `spindle`, and waits until it is ready.
    ///
    /// # Panics
    /// When `prometheus` is not on `PATH`, or it does not become ready within 30 s.
    pub async fn start_native_histograms(target: SocketAddr) -> Self {
        Self::start_native_histograms_with(target, "").await
    }

    /// [`Prometheus::start_native_histograms`] with `job_extra` (YAML lines indented under the
    /// job, e.g. `    scrape_classic_histograms: true\n`).
    ///
    /// # Panics
    /// When `prometheus` is not on `PATH`, or it does not become ready within 30 s.
    pub async fn start_native_histograms_with(target: SocketAddr, job_extra: &str) -> Self {
        let binary = peer_binary("prometheus");
        let protocols = if supports_scrape_protocols(&binary) {
            "    scrape_protocols: [PrometheusProto, OpenMetricsText1.0.0, PrometheusText0.0.4]\n"
        } else {
            ""
        };
        let config = spindle_scrape_config(target, &format!("{protocols}{job_extra}"));
        Self::launch(&binary, &config, &["--enable-feature=native-histograms"]).await
    }

    /// Starts Prometheus scraping `target` (`/metrics`) as job `spindle` with `honor_labels: true`
    /// and `job_extra` (YAML lines indented under the job, e.g. `    basic_auth: {…}\n`), and waits
    /// until it is ready.
    ///
    /// # Panics
    /// When `prometheus` is not on `PATH`, or it does not become ready within 30 s.
    pub async fn start_with(target: SocketAddr, job_extra: &str) -> Self {
        let binary = peer_binary("prometheus");
        let config = spindle_scrape_config(target, job_extra);
        Self::launch(&binary, &config, &[]).await
    }

    /// Starts Prometheus scraping `target` (`/metrics`) over https as job `spindle`, verifying the
    /// server's certificate against the PEM CA at `ca_file` (for the name `localhost`), and waits
    /// until it is ready.
    ///
    /// # Panics
    /// When `prometheus` is not on `PATH`, or it does not become ready within 30 s.
    pub async fn start_https(target: SocketAddr, ca_file: &str) -> Self {
        let binary = peer_binary("prometheus");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: spindle\n    honor_labels: true\n    scheme: https\n    \
             tls_config:\n      ca_file: '{ca_file}'\n      server_name: localhost\n    \
             static_configs:\n      - targets: ['{target}']\n"
        );
        Self::launch(&binary, &config, &[]).await
    }

    /// Starts Prometheus scraping a service's own `/metrics` at `target` directly, as job `job`
    /// (no pipeline in between, so without `honor_labels`: Prometheus sets `job` and `instance`),
    /// and waits until it is ready.
    ///
    /// # Panics
    /// When `prometheus` is not on `PATH`, or it does not become ready within 30 s.
    pub async fn start_direct(target: SocketAddr, job: &str) -> Self {
        let binary = peer_binary("prometheus");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
        );
        Self::launch(&binary, &config, &[]).await
    }

    /// Starts Prometheus as a remote-write receiver (`--web.enable-remote-write-receiver`, with
    /// exemplar storage) that scrapes nothing, and waits until it is ready. Push to
    /// [`Prometheus::remote_write_url`].
    ///
    /// # Panics
    /// When `prometheus` is not on `PATH`, or it does not become ready within 30 s.
    pub async fn start_remote_write_receiver() -> Self {
        Self::start_remote_write_receiver_on(free_port()).await
    }

    /// [`Prometheus::start_remote_write_receiver`] on `127.0.0.1:port` (a sender may be pointed at
    /// it before it starts).
    ///
    /// # Panics
    /// When `prometheus` is not on `PATH`, or it does not become ready within 30 s.
    pub async fn start_remote_write_receiver_on(port: u16) -> Self {
        let binary = peer_binary("prometheus");
        let config = "global:\n  evaluation_interval: 1s\nscrape_configs: []\n";
        Self::launch_on(port, &binary, config, &["--web.enable-remote-write-receiver"]).await
    }

    /// [`Prometheus::start`] on `127.0.0.1:port`.
    ///
    /// # Panics
    /// When `prometheus` is not on `PATH`, or it does not become ready within 30 s.
    pub async fn start_on(port: u16, target: SocketAddr) -> Self {
        let binary = peer_binary("prometheus");
        let protocols = if supports_scrape_protocols(&binary) {
            "    scrape_protocols: [OpenMetricsText1.0.0, PrometheusText0.0.4]\n"
        } else {
            ""
        };
        Self::launch_on(port, &binary, &spindle_scrape_config(target, protocols), &[]).await
    }

    /// Starts Prometheus as a remote-write receiver that accepts native histograms
    /// (`--enable-feature=native-histograms`), with exemplar storage, scraping nothing.
    ///
    /// # Panics
    /// When `prometheus` is not on `PATH`, or it does not become ready within 30 s.
    pub async fn start_native_remote_write_receiver() -> Self {
        let binary = peer_binary("prometheus");
        let config = "global:\n  evaluation_interval: 1s\nscrape_configs: []\n";
        let args = [
            "--web.enable-remote-write-receiver",
            "--enable-feature=native-histograms",
        ];
        Self::launch(&binary, config, &args).await
    }

    /// Waits up to 60 s until `up` of job `spindle` is `want` (`"1"` or `"0"`).
    ///
    /// # Panics
    /// When it is not by then (with the target health and Prometheus' log).
    pub async fn wait_for_up(&self, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = self.api("/api/v1/query?query=up").await;
            let got = v["data"]["result"][0]["value"][1].as_str().map(str::to_owned);
            if got.as_deref() == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "up never became {want} (last {got:?}); targets: {}\n{}",
                self.target_health().await,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The remote-write endpoint, `http://{addr}/api/v1/write` (accepting only when started with
    /// [`Prometheus::start_remote_write_receiver`]).
    pub fn remote_write_url(&self) -> String {
        format!("http://{}/api/v1/write", self.addr)
    }

    async fn launch(binary: &Path, config: &str, extra_args: &[&str]) -> Self {
        Self::launch_on(free_port(), binary, config, extra_args).await
    }

    async fn launch_on(port: u16, binary: &Path, config: &str, extra_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--enable-feature=exemplar-storage")
            .args(extra_args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", binary.display()));
        let mut prom = Self { child, addr, dir };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = prom.child.try_wait() {
                panic!("Prometheus exited during start-up ({status}); its log:\n{}", prom.log());
            }
            let ready = client
                .get(format!("http://{addr}/-/ready"))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ready {
                return prom;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus did not become ready within 30 s; its log:\n{}",
                prom.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Prometheus' own log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// GETs an API path (e.g. `/api/v1/query?query=up`) and returns the JSON body.
    ///
    /// # Panics
    /// On connection errors or a body that is not JSON.
    pub async fn api(&self, path_and_query: &str) -> serde_json::Value {
        let url = format!("http://{}{path_and_query}", self.addr);
        let body = reqwest::Client::new()
            .get(&url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap_or_else(|err| panic!("GET {url}: {err}"))
            .text()
            .await
            .unwrap_or_else(|err| panic!("GET {url} body: {err}"));
        serde_json::from_str(&body).unwrap_or_else(|err| panic!("GET {url}: not JSON ({err}): {body}"))
    }

    /// The scrape target's health and last error, as reported by `/api/v1/targets`.
    pub async fn target_health(&self) -> String {
        let targets = self.api("/api/v1/targets").await;
        targets["data"]["activeTargets"]
            .as_array()
            .map(|ts| {
                ts.iter()
                    .map(|t| {
                        format!(
                            "{} health={} lastError={:?}",
                            t["scrapeUrl"].as_str().unwrap_or("?"),
                            t["health"].as_str().unwrap_or("?"),
                            t["lastError"].as_str().unwrap_or("")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_else(|| targets.to_string())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Minimal percent-encoding for a query-string value (PromQL selectors).
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Seconds since the Unix epoch, as a float.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_openmetrics_sample_with_exemplar() {
        let text = "# TYPE demo_requests counter\n\
                    demo_requests_total{job=\"shop/a\",route=\"/x\\\"y\"} 5 # {trace_id=\"0af7651916cd43dd8448eb211c80319c\",span_id=\"b7ad6b7169203331\"} 1.0 1712345678.123\n\
                    # EOF\n";
        let exp = parse_exposition(text);
        assert!(exp.eof);
        assert_eq!(exp.types["demo_requests"], "counter");
        let s = exp.one("demo_requests_total", &[("route", "/x\"y")]);
        assert_eq!(s.value, 5.0);
        let ex = s.exemplar.as_ref().expect("exemplar");
        assert_eq!(ex.labels["span_id"], "b7ad6b7169203331");
        assert_eq!(ex.value, 1.0);
        assert_eq!(ex.timestamp, Some(1712345678.123));
    }

    #[test]
    fn parses_text_sample_and_special_values() {
        let exp = parse_exposition("a_bucket{le=\"+Inf\"} 3\nb NaN\nc{} -Inf 1712345678\n");
        assert_eq!(exp.samples.len(), 3);
        assert!(exp.samples[1].value.is_nan());
        assert_eq!(exp.samples[2].value, f64::NEG_INFINITY);
        assert!(!exp.eof);
    }
}
