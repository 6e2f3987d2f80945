//! `demo-service`: see the crate documentation and README.md.
//!
//! Prints `listening on http://ADDR` on stdout once it accepts connections (tests read it), logs
//! to stderr, and exits cleanly on SIGINT/SIGTERM after flushing its telemetry.

use clap::Parser;
use demo_service::{AppState, Config, app, serve};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let guard = spindle_instrument::builder!()
        .with_prometheus_listener(!config.metrics_on_listen)
        .try_init()?;
    let state = AppState::new(&config)?;
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let mut router = app(state);
    if config.metrics_on_listen {
        match guard.metrics_router() {
            Some(metrics) => router = router.merge(metrics),
            None => anyhow::bail!("--metrics-on-listen needs OTEL_METRICS_EXPORTER to include `prometheus`"),
        }
    }
    println!("listening on http://{addr}");
    if let Some(metrics) = guard.prometheus_addr() {
        println!("metrics on http://{metrics}/metrics");
    } else if config.metrics_on_listen {
        println!("metrics on http://{addr}/metrics");
    }
    tracing::info!(%addr, downstream = config.downstream.as_deref().unwrap_or("-"), "demo-service listening");
    serve(listener, router, shutdown_signal()).await?;
    tracing::info!("shutting down");
    tokio::task::spawn_blocking(move || guard.shutdown()).await??;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
