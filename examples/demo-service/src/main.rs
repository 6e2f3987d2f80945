//! `demo-service`: see the crate documentation and README.md.
//!
//! Prints `listening on http://ADDR` on stdout once it accepts connections (tests read it), logs
//! to stderr, and exits cleanly on SIGINT/SIGTERM after flushing its telemetry.

use clap::Parser;
use demo_service::{AppState, Config, app, serve};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let guard = spindle_instrument::builder!().try_init()?;
    let state = AppState::new(&config)?;
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");
    tracing::info!(%addr, downstream = config.downstream.as_deref().unwrap_or("-"), "demo-service listening");
    serve(listener, app(state), shutdown_signal()).await?;
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
