//! Starting the demo-service binary in tests: one command line (a clean environment, any port,
//! fast export intervals) and one wait for the address it prints.

#![allow(dead_code)] // each test binary uses its own subset

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The demo-service binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_demo-service");

/// A running demo-service, killed on drop.
pub struct Demo {
    /// The process (its stderr is whatever the command said).
    pub child: Child,
    /// `http://127.0.0.1:<port>`, as it printed.
    pub url: String,
}

/// The demo-service command for service `name`: a clean environment (only `PATH`), any port,
/// metrics exported every 300 ms and spans every 100 ms, `RUST_LOG=warn`, killed on drop; then
/// `envs` (which may override any of these).
pub fn command(name: &str, envs: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("OTEL_SERVICE_NAME", name)
        .env("DEMO_LISTEN", "127.0.0.1:0")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "300")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd
}

/// Starts `cmd` (stdout is taken over here) and waits for the address it prints first; its stdout
/// is then drained, so it never blocks on a full pipe.
///
/// # Panics
/// When it cannot start, exits, or prints no address within 20 s.
pub async fn start(mut cmd: Command, name: &str) -> Demo {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .unwrap_or_else(|_| panic!("{name} did not report its address within 20 s"))
        .expect("read stdout")
        .unwrap_or_else(|| panic!("{name} exited before listening"));
    let url = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{name}: unexpected first line {line:?}"))
        .to_owned();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Demo { child, url }
}
