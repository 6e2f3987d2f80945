//! The `spindle` command: run the pipeline, validate a config, or print the effective config.
//! The only place that exits non-zero.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// jemalloc, when built with `--features jemalloc` (measured, not the default).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use spindle::config::{Config, ConfigError, ENV_CONFIG};

/// OpenTelemetry pipeline: OTLP in, Prometheus/OpenMetrics with exemplars out.
#[derive(Debug, Parser)]
#[command(name = "spindle", version, about)]
struct Cli {
    /// YAML config file; without one, embedded defaults are used.
    #[arg(long, global = true, env = ENV_CONFIG)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a config file and print every problem with its key path; exit 0 if valid, 2 if not.
    Validate,
    /// Print the effective configuration (defaults, file and environment overrides) as YAML.
    PrintConfig,
    /// Probe a running Spindle: exit 0 when `GET /healthz` answers 200 within the timeout, else 1.
    /// For container health checks (the runtime image has no curl).
    Healthcheck {
        /// URL to probe. Default: `/healthz` on the configured `prometheus.listen` address
        /// (`0.0.0.0`/`::` become loopback), so it follows `--config` and `SPINDLE__*` overrides;
        /// over https when `prometheus.tls` is set, without verifying the certificate (a liveness
        /// probe of the local process that sends no credential, as Kubernetes' HTTPS probes), and
        /// presenting `prometheus.tls`'s own certificate when `client_ca_file` requires one.
        #[arg(long)]
        url: Option<String>,
        /// Longest the whole probe may take, e.g. `2s`, `500ms`.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
}

fn load(path: Option<&std::path::Path>) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("{e}");
        match e {
            ConfigError::Invalid(_) | ConfigError::Read { .. } => ExitCode::from(2),
            _ => ExitCode::from(2),
        }
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Validate) => {
            let Some(path) = cli.config.as_deref() else {
                eprintln!("spindle validate needs --config FILE (or SPINDLE_CONFIG)");
                return ExitCode::from(2);
            };
            match load(Some(path)) {
                Ok(_) => {
                    println!("{}: valid", path.display());
                    ExitCode::SUCCESS
                }
                Err(code) => code,
            }
        }
        Some(Command::Healthcheck { url, timeout }) => {
            let probe = match url {
                Some(url) => Probe { url, local_tls: None },
                None => match load(cli.config.as_deref()) {
                    Ok(c) => Probe::local(&c),
                    Err(_) => return ExitCode::FAILURE,
                },
            };
            let url = probe.url.clone();
            match healthcheck(probe, timeout) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("unhealthy: {url}: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Command::PrintConfig) => match load(cli.config.as_deref()) {
            Ok(c) => {
                print!("{}", c.redacted().to_yaml());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        None => {
            let config = match load(cli.config.as_deref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .init();
            match run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// What `spindle healthcheck` GETs, and how.
struct Probe {
    url: String,
    /// `Some` when probing this config's own https listener: the certificate is not verified, and
    /// the listener's certificate file and key (when it requires client certificates) are
    /// presented as the client's.
    local_tls: Option<Option<(String, String)>>,
}

impl Probe {
    /// `/healthz` on `prometheus.listen` (an unspecified IP is probed on loopback), https when
    /// `prometheus.tls` is set.
    fn local(config: &Config) -> Self {
        let listen = config.prometheus.listen;
        let ip = match listen.ip() {
            std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let tls = &config.prometheus.tls;
        let scheme = if tls.enabled() { "https" } else { "http" };
        let identity = match (&tls.client_ca_file, &tls.cert_file, &tls.key_file) {
            (Some(_), Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            _ => None,
        };
        Self {
            url: format!("{scheme}://{}/healthz", std::net::SocketAddr::new(ip, listen.port())),
            local_tls: tls.enabled().then_some(identity),
        }
    }
}

/// One `GET` of the probe's URL bounded by `timeout`; `Ok` only for HTTP 200.
fn healthcheck(probe: Probe, timeout: std::time::Duration) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut builder = reqwest::Client::builder().timeout(timeout);
        if let Some(identity) = probe.local_tls {
            builder = builder.danger_accept_invalid_certs(true);
            if let Some((cert, key)) = identity {
                let mut pem = std::fs::read(&cert).with_context(|| format!("read prometheus.tls.cert_file {cert}"))?;
                pem.push(b'\n');
                pem.extend(std::fs::read(&key).with_context(|| format!("read prometheus.tls.key_file {key}"))?);
                builder = builder.identity(reqwest::Identity::from_pem(&pem)?);
            }
        }
        let client = builder.build()?;
        let resp = tokio::time::timeout(timeout, client.get(&probe.url).send())
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {timeout:?}"))??;
        let status = resp.status();
        anyhow::ensure!(status == reqwest::StatusCode::OK, "answered HTTP {status}");
        Ok(())
    })
}

fn run(config: Config) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        // Handlers first: a SIGTERM that arrives while starting must still drain, not kill.
        let signals = shutdown_signals()?;
        let running = spindle::app::start(config).await?;
        let cancel = running.cancel_token();
        tokio::spawn(async move {
            signals.await;
            tracing::info!("shutting down");
            cancel.cancel();
        });
        running.wait().await
    })
}

/// Resolves on SIGINT or SIGTERM; the handlers are registered when this returns.
fn shutdown_signals() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
