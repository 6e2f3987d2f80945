//! Wiring: builds the components from a [`Config`], binds every listener, runs the servers and
//! the expiry task, and drains in order on shutdown.
//!
//! Data path: receivers → [`Pipeline`] (enrich → translate → cardinality limits → store) →
//! `/metrics` and, when configured, Prometheus remote write.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, DurationStr};
use crate::export::remote_write;
use crate::export::sender::DiskPlace;
use crate::export::traces::{self, TraceExporter};
use crate::expose::auth::{self, ScrapeAuth};
use crate::expose::page::{self, ExporterInfo, ExporterKind, PageInfo, PageState};
use crate::expose::routes::{self, ExposeState};
use crate::process::cardinality::Limiter;
use crate::process::enrich::{CatalogHandle, Enricher};
use crate::process::span_metrics::SpanMetrics;
use crate::process::translate::Translator;
use crate::receive::{Shared, grpc, http};
use crate::server::{self, ConnectionStats, ListenerKind, ServerTls, TlsConfig};
use crate::storage::{Storage, snapshot};
use crate::store::Store;
use crate::telemetry::Telemetry;
use crate::util::redact;
use crate::util::tokens::TokenFile;

pub use crate::process::pipeline::{Pipeline, write_metrics};

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
    /// Cancelled to stop Spindle.
    cancel: CancellationToken,
    ready: Arc<AtomicBool>,
    receivers: Stage,
    /// The trace exporter's stage, how long it may take to stop, and its handle (to count what an
    /// abort would leave behind).
    exporter: Option<(Stage, Duration, TraceExporter)>,
    remote_write: Option<(Stage, Duration)>,
    rest: Stage,
    /// `storage.path`, locked while Spindle runs.
    storage: Option<Storage>,
}

/// A group of tasks stopped together, in shutdown order.
#[derive(Debug)]
struct Stage {
    token: CancellationToken,
    tasks: JoinSet<anyhow::Result<()>>,
}

impl Stage {
    fn new() -> Self {
        Self {
            token: CancellationToken::new(),
            tasks: JoinSet::new(),
        }
    }

    /// Cancels the stage and waits for its tasks, for at most `limit`.
    async fn stop(&mut self, limit: Duration, what: &str) -> anyhow::Result<()> {
        self.token.cancel();
        let mut first = Ok(());
        let deadline = tokio::time::sleep(limit);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => {
                    tracing::warn!("{what} did not stop within {limit:?}; aborting");
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

impl Stage {
    /// Serves `router` on `listener` (with its TLS, if any) through [`server::serve`] until this
    /// stage is cancelled.
    fn serve_http(
        &mut self,
        (listener, tls): (TcpListener, Option<Arc<ServerTls>>),
        router: axum::Router,
        kind: ListenerKind,
        limits: server::Limits,
        conns: Arc<ConnectionStats>,
        failed: &'static str,
    ) {
        let stop = self.token.clone().cancelled_owned();
        self.tasks.spawn(async move {
            server::serve(listener, router, kind, limits, conns, tls, stop)
                .await
                .context(failed)
        });
    }
}

/// An HTTP listener's [`server::Limits`] from its config keys.
fn http_limits(max: usize, idle: DurationStr, header: DurationStr, body: DurationStr) -> server::Limits {
    server::Limits {
        max_connections: max,
        idle_timeout: idle.0,
        header_read_timeout: Some(header.0),
        body_read_timeout: Some(body.0),
    }
}

/// A listener's TLS from its `tls` block (`None` when not configured).
fn server_tls(config: &TlsConfig, key: &'static str, alpn: &[&'static [u8]]) -> anyhow::Result<Option<Arc<ServerTls>>> {
    ServerTls::new(config, key, alpn).map_err(|e| anyhow::anyhow!(e))
}

/// The start-up warning for a listener reachable beyond this machine without TLS or without
/// authentication (`None` on loopback, or with both): what it lacks and the keys that add it.
fn exposure(what: &str, addr: SocketAddr, tls: bool, auth: bool) -> Option<String> {
    if addr.ip().is_loopback() || (tls && auth) {
        return None;
    }
    let lacks = match (tls, auth) {
        (false, false) => "plaintext and open to anyone who can reach it",
        (false, true) => "plaintext: its credentials and data cross the network unencrypted",
        _ => "open to anyone who can reach it (no authentication)",
    };
    let keys = match (what.starts_with("receivers"), tls, auth) {
        (true, false, false) => "set receivers.otlp.tls and receivers.otlp.auth",
        (true, false, true) => "set receivers.otlp.tls",
        (true, _, _) => "set receivers.otlp.auth",
        (false, false, false) => "set prometheus.tls and prometheus.auth",
        (false, false, true) => "set prometheus.tls",
        (false, _, _) => "set prometheus.auth",
    };
    Some(format!(
        "{what} listens on {addr}, beyond this machine, {lacks}; {keys} (README, \"Security\")"
    ))
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
    let storage = Storage::open(&config.storage)?;
    let disk = |name: &str| {
        storage.as_ref().map(|s| DiskPlace {
            dir: s.queue_dir(name),
            max_bytes: s.queue_max_bytes(),
        })
    };
    let reserved = Telemetry::reserved_names();
    let reserved: Vec<&str> = reserved.iter().map(String::as_str).collect();
    let store = Arc::new(Store::new(
        config.prometheus.series_ttl.0,
        config.prometheus.max_series,
        &reserved,
    ));

    if let Some(st) = &storage {
        match snapshot::restore(&store, &st.state_dir(), config.prometheus.series_ttl.0) {
            Ok(r) if r.series + r.expired > 0 => tracing::info!(
                series = r.series,
                expired = r.expired,
                "restored the metric state saved at the last shutdown"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot restore the metric state; counters start from zero"),
        }
    }

    let limiter = Arc::new(
        Limiter::new(
            &config.processors.cardinality,
            config.prometheus.max_series,
            telemetry.cardinality.clone(),
        )
        .map_err(anyhow::Error::msg)
        .context("cannot build `processors.cardinality`")?,
    );

    let mut receivers = Stage::new();
    let mut rest = Stage::new();
    let ex = &config.exporters.traces.otlp;
    let (exporter, exporter_stage) = match &ex.endpoint {
        Some(endpoint) => {
            let mut stage = Stage::new();
            let (st, lim) = (store.clone(), limiter.clone());
            let on_forwarded = Box::new(move |exemplars| {
                write_metrics(&st, Some(&lim), exemplars, false);
            });
            let stats = telemetry.traces.clone();
            let (exporter, handle) = traces::spawn(
                ex,
                endpoint,
                stats,
                on_forwarded,
                stage.token.clone(),
                disk("traces").as_ref(),
            )
            .context("cannot build the trace exporter (`exporters.traces.otlp`)")?;
            stage
                .tasks
                .spawn(async move { handle.await.context("trace exporter panicked") });
            tracing::info!(endpoint = %redact::url(endpoint), protocol = ?ex.protocol, "forwarding traces");
            // The exporter bounds its own flush, in-flight attempts included, by shutdown_timeout;
            // the extra second is only a safety net before aborting it.
            let limit = ex.shutdown_timeout.0 + Duration::from_secs(1);
            (Some(exporter.clone()), Some((stage, limit, exporter)))
        }
        None => (None, None),
    };
    let enricher = Enricher::new(&config.processors.enrich).context("cannot build `processors.enrich`")?;
    let catalog = enricher.catalog();
    let pipeline = Arc::new(
        Pipeline::new(
            Translator::new(config.prometheus.promote_resource_attributes.clone())
                .with_limits(config.receivers.otlp.limits.clone())
                .with_strategy(config.prometheus.translation_strategy)
                .with_stats(telemetry.limited.clone()),
            store.clone(),
            Some(
                SpanMetrics::new(config.processors.span_metrics.clone())
                    .with_limits(config.receivers.otlp.limits.clone())
                    .with_stats(telemetry.limited.clone()),
            ),
            exporter,
        )
        .with_enricher(enricher)
        .with_limiter(limiter.clone()),
    );
    let otlp = &config.receivers.otlp;
    let shared = Shared::new(
        pipeline,
        otlp.max_request_size.0,
        otlp.max_inflight_bytes.0,
        telemetry.receiver.clone(),
    )
    .with_tokens(match &otlp.auth.bearer_tokens_file {
        Some(path) => Some(Arc::new(
            TokenFile::load(path)
                .map_err(anyhow::Error::msg)
                .context("receivers.otlp.auth.bearer_tokens_file")?,
        )),
        None => None,
    });

    let rw = &config.exporters.remote_write;
    let remote_write_stage = match &rw.endpoint {
        Some(endpoint) => {
            let mut stage = Stage::new();
            let stats = telemetry.remote_write.clone();
            let handle = remote_write::spawn(
                rw,
                endpoint,
                store.clone(),
                stats,
                stage.token.clone(),
                disk("remote_write").as_ref(),
            )
            .context("cannot build the remote-write exporter (`exporters.remote_write`)")?;
            stage
                .tasks
                .spawn(async move { handle.await.context("remote-write exporter panicked") });
            tracing::info!(
                endpoint = %redact::url(endpoint),
                interval = %rw.interval,
                "pushing metrics with Prometheus remote write"
            );
            // The exporter bounds its own flush, in-flight requests included, by shutdown_timeout;
            // the extra second is only a safety net before aborting it.
            Some((stage, rw.shutdown_timeout.0 + Duration::from_secs(1)))
        }
        None => None,
    };

    // The listeners' connection caps are checked against the hard limit; make it reachable.
    match server::raise_open_file_limit() {
        Ok((before, after)) if before != after => tracing::info!(before, after, "raised the open-file limit"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    let problems = config.connection_problems(server::open_file_limit());
    if !problems.is_empty() {
        return Err(ConfigError::Invalid(problems)).context("the connection limits do not fit");
    }
    let otlp_tls = server_tls(&otlp.tls, "receivers.otlp.tls", &[b"h2"])?;
    let otlp_http_tls = server_tls(&otlp.tls, "receivers.otlp.tls", &[b"h2", b"http/1.1"])?;
    let prom_tls = server_tls(&config.prometheus.tls, "prometheus.tls", &[b"h2", b"http/1.1"])?;
    let grpc_l = bind(otlp.grpc.listen, "receivers.otlp.grpc.listen").await?;
    let http_l = bind(otlp.http.listen, "receivers.otlp.http.listen").await?;
    let prom_l = bind(config.prometheus.listen, "prometheus.listen").await?;
    let grpc_addr = grpc_l.local_addr()?;
    let http_addr = http_l.local_addr()?;
    let prometheus_addr = prom_l.local_addr()?;

    let ready = Arc::new(AtomicBool::new(false));

    let c = receivers.token.clone();
    let s = shared.clone();
    let grpc_config = otlp.grpc.clone();
    let conns = telemetry.connections.clone();
    receivers.tasks.spawn(async move {
        grpc::serve(grpc_l, s, grpc_config, conns, otlp_tls, c)
            .await
            .context("OTLP/gRPC server failed")
    });

    let h = &otlp.http;
    receivers.serve_http(
        (http_l, otlp_http_tls),
        http::router(shared),
        ListenerKind::OtlpHttp,
        http_limits(
            h.max_connections,
            h.idle_timeout,
            h.header_read_timeout,
            h.body_read_timeout,
        ),
        telemetry.connections.clone(),
        "OTLP/HTTP server failed",
    );

    let scrape_auth = ScrapeAuth::new(&config.prometheus.auth)
        .map_err(anyhow::Error::msg)
        .context("prometheus.auth.bearer_tokens_file")?
        .map(Arc::new);
    let state = ExposeState {
        store: store.clone(),
        telemetry: telemetry.clone(),
        ready: ready.clone(),
        buffers: Default::default(),
        limiter: limiter.clone(),
        reports: Default::default(),
    };
    let page = Arc::new(PageState::new(state.clone(), page_info(&config, &telemetry)));
    let p = &config.prometheus;
    rest.serve_http(
        (prom_l, prom_tls),
        auth::protect(routes::router(state).merge(page::router(page)), scrape_auth),
        ListenerKind::Prometheus,
        http_limits(
            p.max_connections,
            p.idle_timeout,
            p.header_read_timeout,
            p.body_read_timeout,
        ),
        telemetry.connections.clone(),
        "Prometheus endpoint failed",
    );

    let c = rest.token.clone();
    let (st, tel, lim) = (store.clone(), telemetry.clone(), limiter.clone());
    let ttl = config.prometheus.series_ttl.0.as_secs().min(u32::MAX as u64) as u32;
    let every = sweep_interval(config.prometheus.series_ttl.0);
    rest.tasks.spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = c.cancelled() => return Ok(()),
                _ = tick.tick() => {
                    let (st, lim) = (st.clone(), lim.clone());
                    let n = tokio::task::spawn_blocking(move || {
                        let now = Instant::now();
                        let n = st.expire(now);
                        lim.expire(st.tick(now), ttl);
                        n
                    })
                    .await
                    .unwrap_or(0);
                    tel.expired(n);
                }
            }
        }
    });

    if let (Some(handle), Some(c)) = (catalog, &config.processors.enrich.catalog) {
        let every = c.reload_interval.0;
        let (token, tel) = (rest.token.clone(), telemetry.clone());
        rest.tasks
            .spawn(async move { reload_catalog(handle, every, tel, token).await });
    }

    ready.store(true, Ordering::Release);
    // The address last: scripts and tests read it from the end of the line.
    let (otlp_tls, prom_tls) = (otlp.tls.enabled(), config.prometheus.tls.enabled());
    tracing::info!(tls = otlp_tls, %grpc_addr, "OTLP/gRPC receiver listening");
    tracing::info!(tls = otlp_tls, %http_addr, "OTLP/HTTP receiver listening");
    tracing::info!(tls = prom_tls, %prometheus_addr, "Prometheus endpoint listening on /metrics");
    let (otlp_auth, prom_auth) = (otlp.auth.bearer_tokens_file.is_some(), config.prometheus.auth.enabled());
    for (what, addr, tls, auth) in [
        ("receivers.otlp.grpc", grpc_addr, otlp_tls, otlp_auth),
        ("receivers.otlp.http", http_addr, otlp_tls, otlp_auth),
        ("prometheus", prometheus_addr, prom_tls, prom_auth),
    ] {
        if let Some(warning) = exposure(what, addr, tls, auth) {
            tracing::warn!("{warning}");
        }
    }
    Ok(Running {
        grpc_addr,
        http_addr,
        prometheus_addr,
        store,
        telemetry,
        cancel: CancellationToken::new(),
        ready,
        receivers,
        exporter: exporter_stage,
        remote_write: remote_write_stage,
        rest,
        storage,
    })
}

/// Re-reads the service catalog every `every` until cancelled. Requests keep using the current
/// catalog meanwhile; a bad file keeps the old one, is counted and logged once (until it changes).
async fn reload_catalog(
    handle: Arc<CatalogHandle>,
    every: Duration,
    telemetry: Arc<Telemetry>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tick.tick() => {
                let h = handle.clone();
                match tokio::task::spawn_blocking(move || h.reload()).await {
                    Ok(Some(Ok(services))) => {
                        telemetry.catalog_reload(true);
                        tracing::info!(path = handle.path(), services, "service catalog reloaded");
                    }
                    Ok(Some(Err(e))) => {
                        telemetry.catalog_reload(false);
                        tracing::warn!(error = %e, "service catalog not reloaded; keeping the previous one");
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "service catalog reload task failed"),
                }
            }
        }
    }
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
            Some(res) = self.receivers.tasks.join_next() => res.context("task panicked").and_then(|r| r),
            Some(res) = self.rest.tasks.join_next() => res.context("task panicked").and_then(|r| r),
        };
        let drained = self.drain().await;
        first.and(drained)
    }

    /// Stops in order — receivers (letting in-flight requests finish), then the trace export queue
    /// (flushed for at most `shutdown_timeout`, export attempts in flight included; it publishes the
    /// last exemplars; what is left is counted as `reason="shutdown"`), then remote write (a last
    /// snapshot, flushed for at most its `shutdown_timeout`), then the Prometheus endpoint — and
    /// waits for all. The two exporters flush one after the other, each within its own timeout.
    ///
    /// # Errors
    /// The first task failure seen while draining.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.drain().await
    }

    async fn drain(&mut self) -> anyhow::Result<()> {
        self.ready.store(false, Ordering::Release);
        let receivers = self.receivers.stop(Duration::from_secs(10), "receivers").await;
        let exporter = match &mut self.exporter {
            Some((stage, limit, handle)) => {
                let stopped = stage.stop(*limit, "trace exporter").await;
                // Counts what was left if the exporter had to be aborted (nothing otherwise).
                handle.abandon();
                stopped
            }
            None => Ok(()),
        };
        let remote_write = match &mut self.remote_write {
            Some((stage, limit)) => stage.stop(*limit, "remote-write exporter").await,
            None => Ok(()),
        };
        // Nothing writes the store any more: keep its state for the next start.
        if let Some(st) = &self.storage {
            let (store, dir) = (self.store.clone(), st.state_dir());
            match tokio::task::spawn_blocking(move || snapshot::save(&store, &dir)).await {
                Ok(Ok(n)) => tracing::info!(series = n, "saved the metric state for the next start"),
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot save the metric state; counters will start from zero"),
                Err(e) => tracing::warn!(error = %e, "saving the metric state failed"),
            }
        }
        let rest = self.rest.stop(Duration::from_secs(5), "Prometheus endpoint").await;
        receivers.and(exporter).and(remote_write).and(rest)
    }
}

/// What the status page (`GET /`) shows that only the wiring knows: the redacted configuration,
/// the store's bound, and each exporter's endpoint (credentials redacted) and last error.
fn page_info(config: &Config, telemetry: &Arc<Telemetry>) -> PageInfo {
    let endpoint = |e: &Option<String>| e.as_deref().map(|u| redact::url(u).into_owned());
    let (t, r) = (telemetry.traces.clone(), telemetry.remote_write.clone());
    PageInfo {
        version: env!("CARGO_PKG_VERSION").to_string(),
        config_yaml: config.redacted().to_yaml(),
        store_max_series: config.prometheus.max_series,
        exporters: vec![
            ExporterInfo {
                kind: ExporterKind::Traces,
                endpoint: endpoint(&config.exporters.traces.otlp.endpoint),
                last_error: Arc::new(move || t.last_error()),
            },
            ExporterInfo {
                kind: ExporterKind::RemoteWrite,
                endpoint: endpoint(&config.exporters.remote_write.endpoint),
                last_error: Arc::new(move || r.last_error()),
            },
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::exposure;

    #[test]
    fn only_a_listener_beyond_loopback_without_tls_or_auth_is_warned_about() {
        let any = "0.0.0.0:4317".parse().unwrap();
        let lo = "127.0.0.1:4317".parse().unwrap();
        assert_eq!(exposure("receivers.otlp.grpc", lo, false, false), None);
        assert_eq!(exposure("receivers.otlp.grpc", any, true, true), None);
        let w = exposure("receivers.otlp.grpc", any, false, false).unwrap();
        assert!(
            w.contains("plaintext and open") && w.contains("receivers.otlp.tls and receivers.otlp.auth"),
            "{w}"
        );
        let w = exposure("prometheus", "[::]:9464".parse().unwrap(), true, false).unwrap();
        assert!(
            w.contains("no authentication") && w.ends_with("set prometheus.auth (README, \"Security\")"),
            "{w}"
        );
        let w = exposure("prometheus", any, false, true).unwrap();
        assert!(w.contains("unencrypted") && w.contains("set prometheus.tls "), "{w}");
    }
}
