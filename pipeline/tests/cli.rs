//! The `spindle` binary: `validate`, `print-config`, and a real run that logs its addresses and
//! stops cleanly on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_spindle");

fn write(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("spindle-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Runs `spindle validate --config <path>`.
fn validate(path: &std::path::Path) -> std::process::Output {
    Command::new(BIN)
        .args(["validate", "--config"])
        .arg(path)
        .output()
        .unwrap()
}

#[test]
fn validate_accepts_a_good_file() {
    let p = write(
        "good.yaml",
        "prometheus:\n  series_ttl: 1m\n  promote_resource_attributes: [deployment.environment]\n",
    );
    let out = validate(&p);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid"));
}

#[test]
fn validate_reports_every_problem_with_its_path_and_exits_2() {
    let p = write(
        "bad.yaml",
        "receivers:\n  otlp:\n    grpc:\n      listen: 127.0.0.1:9464\n      lisen: x\nprometheus:\n  series_ttl: 10ms\nexporters:\n  logs: {}\n",
    );
    let out = validate(&p);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for path in ["receivers.otlp.grpc.lisen", "exporters.logs"] {
        assert!(err.contains(&format!("{path}: unknown key")), "{path} missing:\n{err}");
    }
    assert!(err.contains("hint:"), "{err}");
    // The semantic problems come in the same run.
    assert!(
        err.contains("receivers.otlp.grpc.listen: address 127.0.0.1:9464"),
        "{err}"
    );
    assert!(err.contains("prometheus.series_ttl:"), "{err}");
}

#[test]
fn validate_catches_contradictory_cardinality_limits_with_a_hint() {
    let p = write(
        "limits.yaml",
        "processors:\n  cardinality:\n    max_series: 1000\n    metrics: [{match: 'http_*', max_series: 5000}]\n    normalize: [{labels: [path], kind: regex, pattern: '[', replacement: x}]\n",
    );
    let out = validate(&p);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("processors.cardinality.metrics[0].max_series: 5000 is above the global series limit (1000)"),
        "{err}"
    );
    assert!(
        err.contains("processors.cardinality.normalize[0].pattern: does not compile"),
        "{err}"
    );
    assert_eq!(err.matches("hint:").count(), 2, "{err}");
}

#[test]
fn print_config_shows_every_key_and_applies_env_overrides() {
    let out = Command::new(BIN)
        .arg("print-config")
        .env("SPINDLE__PROMETHEUS__SERIES_TTL", "2m")
        .env_remove("SPINDLE_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for key in [
        "listen: 127.0.0.1:4317",
        "listen: 127.0.0.1:4318",
        "listen: 127.0.0.1:9464",
        "series_ttl: 2m",
    ] {
        assert!(text.contains(key), "{key} missing:\n{text}");
    }
    // What it prints is itself a valid config.
    let p = write("printed.yaml", &text);
    let out = validate(&p);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn runs_logs_its_addresses_and_stops_on_sigterm() {
    let p = write(
        "run.yaml",
        "receivers:\n  otlp:\n    grpc: {listen: 127.0.0.1:0}\n    http: {listen: 127.0.0.1:0}\nprometheus:\n  listen: 127.0.0.1:0\n",
    );
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&p)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let line = lines
            .next()
            .expect("spindle exited before logging its addresses")
            .unwrap();
        for what in [
            "OTLP/gRPC receiver listening",
            "OTLP/HTTP receiver listening",
            "Prometheus endpoint listening",
        ] {
            if line.contains(what) {
                assert!(line.contains("127.0.0.1:"), "{line}");
                seen.push(what);
            }
        }
    }
    let (st, _) = common::sigterm_and_wait(&mut child, Duration::from_secs(15));
    assert!(st.success(), "exit status {st}");
}

#[test]
fn the_readme_config_block_is_exactly_the_embedded_defaults() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let block = readme
        .split("```yaml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .find(|b| b.starts_with("receivers:"))
        .expect("README has a config block starting with `receivers:`");
    let parsed = spindle::config::Config::from_yaml_with_env(block, Vec::<(String, String)>::new())
        .unwrap_or_else(|e| panic!("README config block is invalid: {e}"));
    assert_eq!(
        parsed,
        spindle::config::Config::default(),
        "README config block differs from the defaults"
    );
}

#[test]
fn an_unusable_storage_path_is_reported_by_validate_and_refused_at_start() {
    let blocker = write("storage-blocker", "a file, not a directory");
    let p = write(
        "storage.yaml",
        &format!(
            "receivers:\n  otlp:\n    grpc: {{listen: 127.0.0.1:0}}\n    http: {{listen: 127.0.0.1:0}}\n\
             prometheus:\n  listen: 127.0.0.1:0\nstorage:\n  path: {}/queues\n",
            blocker.display()
        ),
    );
    let out = validate(&p);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("storage.path:") && err.contains("is not a directory"),
        "{err}"
    );
    // Started anyway, it refuses with the same message instead of running without durability.
    let out = Command::new(BIN).arg("--config").arg(&p).output().unwrap();
    assert!(!out.status.success());
    let all = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(all.contains("storage.path"), "{all}");
}
