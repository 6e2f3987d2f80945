//! Wiring: builds the components from a [`Config`], binds every listener, runs the servers and
//! the expiry task, and drains in order on shutdown.
//!
//! Data path: receivers → [`Pipeline`] (translate → store) → `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::expose::routes::{self, ExposeState};
use crate::model::Outcome;
use crate::process::translate::Translator;
use crate::receive::status::Refusal;
use crate::receive::{Consumer, Shared, grpc, http};
use crate::store::Store;
use crate::telemetry::Telemetry;

/// The metrics and traces path behind the receivers.
#[derive(Debug)]
pub struct Pipeline {
    translator: Translator,
    store: Arc<Store>,
}

impl Pipeline {
    /// A pipeline writing translated metrics into `store`.
    pub fn new(translator: Translator, store: Arc<Store>) -> Self {
        Self { translator, store }
    }
}

impl Consumer for Pipeline {
    fn consume_metrics(&self, req: ExportMetricsServiceRequest) -> Result<Outcome, Refusal> {
        let samples = self.translator.translate(req);
        Ok(self.store.write(samples, Instant::now()))
    }

    fn consume_traces(&self, req: ExportTraceServiceRequest) -> Result<Outcome, Refusal> {
        // Accepted and counted; span metrics and forwarding come later.
        let mut out = Outcome::default();
        for rs in &req.resource_spans {
            for ss in &rs.scope_spans {
                for span in &ss.spans {
                    if span.trace_id.len() == 16 && span.span_id.len() == 8 {
                        out.accepted += 1;
                    } else {
                        out.reject(1, || {
                            "span with a trace_id that is not 16 bytes or a span_id that is not 8 bytes".into()
                        });
                    }
                }
            }
        }
        Ok(out)
    }
}

/// A running Spindle: its bound addresses and the handle to stop it.
#[derive(Debug)]
pub struct Running {
    /// Bound OTLP/gRPC address.
    pub grpc_addr: SocketAddr,
    /// Bound OTLP/HTTP address.
    pub http_addr: SocketAddr,
    /// Bound Prometheus endpoint address.
    pub prometheus_addr: SocketAddr,
    /// The series store (for tests and embedding).
    pub store: Arc<Store>,
    /// Self metrics (for tests and embedding).
    pub telemetry: Arc<Telemetry>,
    cancel: CancellationToken,
    ready: Arc<AtomicBool>,
    tasks: JoinSet<anyhow::Result<()>>,
}

async fn bind(addr: SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (`{key}`)"))
}

/// How often expired series are swept: a tenth of the TTL, between 1 s and 30 s.
fn sweep_interval(ttl: Duration) -> Duration {
    (ttl / 10).clamp(Duration::from_secs(1), Duration::from_secs(30))
}

/// Builds every component from `config`, binds every listener and starts serving.
///
/// # Errors
/// When a listener cannot be bound.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let telemetry = Arc::new(Telemetry::default());
    let reserved = Telemetry::reserved_names();
    let reserved: Vec<&str> = reserved.iter().map(String::as_str).collect();
    let store = Arc::new(Store::new(
        config.prometheus.series_ttl.0,
        config.prometheus.max_series,
        &reserved,
    ));
    let pipeline = Arc::new(Pipeline::new(
        Translator::new(config.prometheus.promote_resource_attributes.clone()),
        store.clone(),
    ));
    let otlp = &config.receivers.otlp;
    let shared = Shared::new(
        pipeline,
        otlp.max_request_size.0,
        otlp.max_inflight_bytes.0,
        telemetry.clone(),
    );

    let grpc_l = bind(otlp.grpc.listen, "receivers.otlp.grpc.listen").await?;
    let http_l = bind(otlp.http.listen, "receivers.otlp.http.listen").await?;
    let prom_l = bind(config.prometheus.listen, "prometheus.listen").await?;
    let grpc_addr = grpc_l.local_addr()?;
    let http_addr = http_l.local_addr()?;
    let prometheus_addr = prom_l.local_addr()?;

    let cancel = CancellationToken::new();
    let ready = Arc::new(AtomicBool::new(false));
    let mut tasks = JoinSet::new();

    let c = cancel.clone();
    let s = shared.clone();
    tasks.spawn(async move { grpc::serve(grpc_l, s, c).await.context("OTLP/gRPC server failed") });

    let c = cancel.clone();
    let router = http::router(shared);
    tasks.spawn(async move {
        axum::serve(http_l, router)
            .with_graceful_shutdown(c.cancelled_owned())
            .await
            .context("OTLP/HTTP server failed")
    });

    let c = cancel.clone();
    let state = ExposeState {
        store: store.clone(),
        telemetry: telemetry.clone(),
        ready: ready.clone(),
        buffers: Default::default(),
    };
    tasks.spawn(async move {
        axum::serve(prom_l, routes::router(state))
            .with_graceful_shutdown(c.cancelled_owned())
            .await
            .context("Prometheus endpoint failed")
    });

    let c = cancel.clone();
    let (st, tel) = (store.clone(), telemetry.clone());
    let every = sweep_interval(config.prometheus.series_ttl.0);
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = c.cancelled() => return Ok(()),
                _ = tick.tick() => {
                    let st = st.clone();
                    let n = tokio::task::spawn_blocking(move || st.expire(Instant::now())).await.unwrap_or(0);
                    tel.expired(n);
                }
            }
        }
    });

    ready.store(true, Ordering::Release);
    tracing::info!(%grpc_addr, "OTLP/gRPC receiver listening");
    tracing::info!(%http_addr, "OTLP/HTTP receiver listening");
    tracing::info!(%prometheus_addr, "Prometheus endpoint listening on /metrics");
    Ok(Running {
        grpc_addr,
        http_addr,
        prometheus_addr,
        store,
        telemetry,
        cancel,
        ready,
        tasks,
    })
}

impl Running {
    /// A token that stops Spindle when cancelled.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Runs until the token is cancelled or a server fails, then drains.
    ///
    /// # Errors
    /// The first server failure.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let first = tokio::select! {
            _ = self.cancel.cancelled() => Ok(()),
            Some(res) = self.tasks.join_next() => res.context("task panicked").and_then(|r| r),
        };
        self.drain().await?;
        first
    }

    /// Stops accepting, lets in-flight requests finish, and waits for every task.
    ///
    /// # Errors
    /// The first task failure seen while draining.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.drain().await
    }

    async fn drain(&mut self) -> anyhow::Result<()> {
        self.ready.store(false, Ordering::Release);
        self.cancel.cancel();
        let mut first = Ok(());
        let deadline = tokio::time::sleep(Duration::from_secs(10));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => {
                    tracing::warn!("shutdown took longer than 10s; aborting remaining tasks");
                    self.tasks.abort_all();
                    break;
                }
                next = self.tasks.join_next() => match next {
                    None => break,
                    Some(res) => {
                        if let Err(e) = res.context("task panicked").and_then(|r| r)
                            && first.is_ok()
                        {
                            first = Err(e);
                        }
                    }
                },
            }
        }
        first
    }
}
