//! The shipped secured setup, run for real: `collector-config/gen-secrets.sh` into a temporary
//! directory; the `spindle` binary on `collector-config/spindle.yaml` with docker-compose.yml's
//! `SPINDLE__` variables and the generated `spindle.env` (paths under `/etc/spindle/secrets/`
//! pointed at the generated files, listeners on free loopback ports) — `spindle validate` passes,
//! `spindle healthcheck` (the image's HEALTHCHECK) probes it over https; the OpenTelemetry Python
//! SDK configured as compose configures demo-frontend (the CA, its env file's
//! `OTEL_EXPORTER_OTLP_HEADERS`) is accepted over TLS on gRPC and HTTP, refused without the token,
//! in plaintext, and for another service; a real Prometheus with the shipped `prometheus.yml`'s
//! scrape settings (https, `tls_config.ca_file`, `basic_auth` with `password_file`) scrapes it and
//! the target is up, and without the credentials gets 401. No secret appears in Spindle's output.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_yaml_ng::Value;
use spindle_e2e::{Prometheus, free_port, gen_secrets, read_env_file, send_tls, workspace_root};

const BIN: &str = env!("CARGO_BIN_EXE_spindle");

/// Where compose mounts each service's secrets; the files keep their names from
/// collector-config/secrets/ (tests/tests/deploy_configs.rs follows every one through secrets-init).
const SPINDLE_SECRETS: &str = "/etc/spindle/secrets/";
const PROMETHEUS_SECRETS: &str = "/etc/prometheus/secrets/";

fn yaml(rel: &str) -> Value {
    let text = std::fs::read_to_string(workspace_root().join(rel)).unwrap();
    serde_yaml_ng::from_str(&text).unwrap()
}

/// A `spindle` process, killed on drop; its stdout and stderr go to a file.
struct SpindleProcess {
    child: Child,
    log: PathBuf,
}

impl Drop for SpindleProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl SpindleProcess {
    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Runs `spindle ARGS --config collector-config/spindle.yaml` with exactly `env` as its `SPINDLE_*`
/// environment.
fn spindle_cmd(args: &[&str], env: &BTreeMap<String, String>) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .arg("--config")
        .arg(workspace_root().join("collector-config/spindle.yaml"));
    for (k, _) in std::env::vars() {
        if k.starts_with("SPINDLE_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env);
    cmd
}

/// docker-compose.yml's environment for Spindle plus the generated `spindle.env`, with the secrets
/// in `secrets`, Spindle's state in `state` and its listeners on the given loopback ports.
fn compose_spindle_env(secrets: &Path, state: &Path, ports: [u16; 3]) -> BTreeMap<String, String> {
    let compose = yaml("docker-compose.yml");
    let mut env = BTreeMap::new();
    for (k, v) in compose["services"]["spindle"]["environment"]
        .as_mapping()
        .expect("spindle's environment is a mapping")
    {
        let (k, v) = (
            k.as_str().unwrap().to_owned(),
            v.as_str().unwrap_or_default().to_owned(),
        );
        if k.starts_with("SPINDLE__") {
            env.insert(k, v);
        }
    }
    env.extend(read_env_file(&secrets.join("spindle.env")));
    let mut mapped = 0;
    for v in env.values_mut() {
        if let Some(file) = v.strip_prefix(SPINDLE_SECRETS) {
            *v = secrets.join(file).display().to_string();
            mapped += 1;
        }
    }
    assert!(mapped >= 5, "compose points Spindle at too few secrets: {env:?}");
    // No Tempo here; Spindle's state in a directory of the test's.
    env.remove("SPINDLE__EXPORTERS__TRACES__OTLP__ENDPOINT");
    env.insert("SPINDLE__STORAGE__PATH".into(), state.display().to_string());
    for (key, port) in [
        ("SPINDLE__RECEIVERS__OTLP__GRPC__LISTEN", ports[0]),
        ("SPINDLE__RECEIVERS__OTLP__HTTP__LISTEN", ports[1]),
        ("SPINDLE__PROMETHEUS__LISTEN", ports[2]),
    ] {
        env.insert(key.into(), format!("127.0.0.1:{port}"));
    }
    env
}

/// The shipped prometheus.yml's `spindle` job without what the test sets itself (targets,
/// interval, honor_labels), its paths under /etc/prometheus/secrets/ pointed at `secrets`,
/// `basic_auth` left out when `!credentials`: YAML lines indented under a job.
fn shipped_scrape_settings(secrets: &Path, credentials: bool) -> String {
    let prom = yaml("collector-config/prometheus.yml");
    let mut job = prom["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|j| j["job_name"].as_str() == Some("spindle"))
        .expect("prometheus.yml has a spindle job")
        .as_mapping()
        .unwrap()
        .clone();
    for k in ["job_name", "static_configs", "honor_labels", "scrape_interval"] {
        job.remove(k);
    }
    if !credentials {
        assert!(job.remove("basic_auth").is_some(), "the spindle job has basic_auth");
    }
    let mut text = serde_yaml_ng::to_string(&job).unwrap();
    let mapped = text.matches(PROMETHEUS_SECRETS).count();
    assert_eq!(mapped, if credentials { 2 } else { 1 }, "{text}");
    text = text.replace(PROMETHEUS_SECRETS, &format!("{}/", secrets.display()));
    text.lines().map(|l| format!("    {l}\n")).collect()
}

/// Runs `send_tls.py` (the Python SDK's OTLP exporters, configured only by the OTel variables)
/// with `env`; returns whether the span and the metric exports both succeeded.
async fn sdk_send(protocol: &str, service: &str, env: &[(&str, String)]) -> bool {
    match send_tls(protocol, service, env, &["OTEL_EXPORTER_OTLP_HEADERS"]).await {
        (s, m) if s == "SUCCESS" && m == "SUCCESS" => true,
        (s, m) if s == "FAILURE" && m == "FAILURE" => false,
        other => panic!("spans and metrics disagree: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secured_compose_setup_accepts_only_tls_with_a_token_and_prometheus_scrapes_it_with_credentials() {
    let tmp = tempfile::tempdir().unwrap();
    let secrets = tmp.path().join("secrets");
    gen_secrets(&secrets);
    let state = tmp.path().join("state");
    let ports = [free_port(), free_port(), free_port()];
    let env = compose_spindle_env(&secrets, &state, ports);

    // `spindle validate` (what the systemd unit runs first) passes on the secured configuration.
    let out = spindle_cmd(&["validate"], &env).output().unwrap();
    assert!(
        out.status.success(),
        "spindle validate with compose's environment failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let log = tmp.path().join("spindle.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let child = spindle_cmd(&[], &env)
        .env("RUST_LOG", "debug")
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let spindle = SpindleProcess { child, log };

    // The image's HEALTHCHECK (`spindle healthcheck`, same environment) turns healthy over https.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = spindle_cmd(&["healthcheck", "--timeout", "2s"], &env).output().unwrap();
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "spindle healthcheck never passed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            spindle.output()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The Python SDK set up as compose sets up demo-frontend: the CA, its env file's header.
    let ca = secrets.join("ca.crt").display().to_string();
    let frontend = read_env_file(&secrets.join("demo-frontend.env"));
    let headers = frontend["OTEL_EXPORTER_OTLP_HEADERS"].clone();
    let sdk = |scheme: &str, protocol: &str, headers: Option<&str>| {
        let port = if protocol == "grpc" { ports[0] } else { ports[1] };
        let mut e = vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("{scheme}://localhost:{port}")),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca.clone()),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "5".into()),
        ];
        if let Some(h) = headers {
            e.push(("OTEL_EXPORTER_OTLP_HEADERS", h.to_owned()));
        }
        e
    };
    for protocol in ["grpc", "http"] {
        assert!(
            sdk_send(protocol, "demo-frontend", &sdk("https", protocol, Some(&headers))).await,
            "{protocol}: demo-frontend's token over TLS was refused\n{}",
            spindle.output()
        );
        assert!(
            !sdk_send(protocol, &format!("no-token-{protocol}"), &sdk("https", protocol, None)).await,
            "{protocol}: accepted over TLS without a token"
        );
        assert!(
            !sdk_send(protocol, "demo-frontend", &sdk("http", protocol, Some(&headers))).await,
            "{protocol}: accepted in plaintext"
        );
        assert!(
            !sdk_send(protocol, "demo-backend", &sdk("https", protocol, Some(&headers))).await,
            "{protocol}: demo-frontend's token wrote demo-backend"
        );
    }

    // A real Prometheus with the shipped scrape settings: up with the credentials ...
    let target: std::net::SocketAddr = format!("127.0.0.1:{}", ports[2]).parse().unwrap();
    let prom = Prometheus::start_with(target, &shipped_scrape_settings(&secrets, true)).await;
    prom.wait_for_up("1").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = prom.api("/api/v1/query?query=tls_requests_total").await;
        let jobs: std::collections::BTreeSet<String> = v["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["metric"]["job"].as_str().map(str::to_owned))
            .collect();
        if !jobs.is_empty() {
            assert_eq!(
                jobs,
                ["demo-frontend".to_owned()].into(),
                "only what demo-frontend's token may write is stored"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the SDK's counter never reached Prometheus: {v}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    drop(prom);
    // ... and 401 without them.
    let prom = Prometheus::start_with(target, &shipped_scrape_settings(&secrets, false)).await;
    prom.wait_for_up("0").await;
    let health = prom.target_health().await;
    assert!(health.contains("401"), "{health}");
    drop(prom);

    // The same by hand: the CA is trusted, /metrics wants the password, /healthz stays open.
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap())
        .build()
        .unwrap();
    let base = format!("https://localhost:{}", ports[2]);
    let password = std::fs::read_to_string(secrets.join("scrape-password")).unwrap();
    let status = |r: reqwest::Response| r.status().as_u16();
    let anonymous = client.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(status(anonymous), 401);
    let wrong = client
        .get(format!("{base}/metrics"))
        .basic_auth("prometheus", Some("not-the-password"))
        .send()
        .await
        .unwrap();
    assert_eq!(status(wrong), 401);
    let right = client
        .get(format!("{base}/metrics"))
        .basic_auth("prometheus", Some(&password))
        .send()
        .await
        .unwrap();
    assert_eq!(status(right), 200);
    assert_eq!(status(client.get(format!("{base}/healthz")).send().await.unwrap()), 200);

    // Nothing secret in what Spindle printed, at debug level.
    let output = spindle.output();
    let tokens = std::fs::read_to_string(secrets.join("otlp-tokens")).unwrap();
    let mut secret_values: Vec<String> = tokens
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    secret_values.push(password);
    secret_values.extend(read_env_file(&secrets.join("spindle.env")).into_values());
    assert!(secret_values.len() >= 4);
    for v in secret_values {
        assert!(!output.contains(v.trim()), "Spindle printed a secret");
    }
    assert!(output.contains("listening"), "{output}");
}
