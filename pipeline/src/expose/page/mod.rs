//! The status page on the Prometheus listener: `GET /` (receivers, exporters, store, the top
//! metrics by series against their limits, the effective configuration) and `GET
//! /explore?metric=NAME` (one metric's labels by distinct values, overflow series, and what was
//! folded, normalized or dropped, and why).
//!
//! In: the routes' [`ExposeState`] (store, limiter, Spindle's own metrics) and what only the wiring
//! knows ([`PageInfo`]: the redacted configuration, the exporters' endpoints and last errors).
//! Out: self-contained HTML — inline style and script, no external asset, readable without
//! JavaScript. Every figure comes from what `/metrics` renders ([`history::Snapshot`]) or from the
//! sources of `/api/v1/cardinality` (`super::api::families_by_series`, `super::api::label_values`,
//! the limiter's [`LimiterSnapshot`](crate::process::cardinality::LimiterSnapshot)); nothing here
//! runs on the ingest or scrape paths. Rates are computed here from two snapshots
//! ([`history::History`]); the script only re-fetches the page and swaps its live sections in.
//! All text that reaches the page goes through [`html::Esc`].
//!
//! The routes sit behind `prometheus.auth` like every other (`super::auth::protect`).

mod explore;
pub mod history;
pub mod html;
mod status;

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderValue, StatusCode, header};

use super::routes::ExposeState;
pub use crate::export::stats::LastError;

/// Metrics the status page lists by default.
pub const DEFAULT_TOP: usize = 25;
/// Most metrics it lists (`?top=`).
pub const MAX_TOP: usize = 1000;
/// Most labels the metric view lists.
pub const MAX_LABELS: usize = 100;

/// Reads an exporter's newest failed attempt.
pub type LastErrorFn = Arc<dyn Fn() -> Option<LastError> + Send + Sync>;

/// Which exporter a row of the page is about: it names the exporter's self-metric families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExporterKind {
    /// `exporters.traces.otlp`.
    Traces,
    /// `exporters.remote_write`.
    RemoteWrite,
}

impl ExporterKind {
    /// The name the page shows.
    pub const fn title(self) -> &'static str {
        match self {
            ExporterKind::Traces => "traces (OTLP)",
            ExporterKind::RemoteWrite => "remote write",
        }
    }

    /// Its families in `/metrics`: sent, dropped (by `reason`), retries, queue bytes, queue
    /// bound, attempt duration histogram.
    pub const fn families(self) -> [&'static str; 6] {
        match self {
            ExporterKind::Traces => [
                "spindle_exporter_sent_spans_total",
                "spindle_exporter_dropped_spans_total",
                "spindle_exporter_retries_total",
                "spindle_exporter_queue_bytes",
                "spindle_exporter_queue_capacity_bytes",
                "spindle_exporter_export_duration_seconds",
            ],
            ExporterKind::RemoteWrite => [
                "spindle_remote_write_sent_samples_total",
                "spindle_remote_write_dropped_samples_total",
                "spindle_remote_write_retries_total",
                "spindle_remote_write_queue_bytes",
                "spindle_remote_write_queue_capacity_bytes",
                "spindle_remote_write_request_duration_seconds",
            ],
        }
    }

    /// What it sends (for column headers).
    pub const fn items(self) -> &'static str {
        match self {
            ExporterKind::Traces => "spans",
            ExporterKind::RemoteWrite => "samples",
        }
    }
}

/// One exporter as the wiring configured it.
#[derive(Clone)]
pub struct ExporterInfo {
    /// Which one.
    pub kind: ExporterKind,
    /// Its endpoint, credentials redacted; `None` when it is not configured.
    pub endpoint: Option<String>,
    /// Reads its newest failed attempt.
    pub last_error: LastErrorFn,
}

impl fmt::Debug for ExporterInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExporterInfo")
            .field("kind", &self.kind)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// What the page shows that only the wiring knows.
#[derive(Debug, Clone, Default)]
pub struct PageInfo {
    /// Spindle's version.
    pub version: String,
    /// The effective configuration as YAML with its secrets redacted (what `spindle
    /// print-config` prints).
    pub config_yaml: String,
    /// `prometheus.max_series`: the store's bound.
    pub store_max_series: usize,
    /// The exporters, configured or not.
    pub exporters: Vec<ExporterInfo>,
}

/// The page's state: what it reads, and the snapshots its rates are computed from.
#[derive(Debug)]
pub struct PageState {
    expose: ExposeState,
    info: PageInfo,
    history: history::History,
    started: Instant,
}

impl PageState {
    /// The page of `expose`'s store, limiter and own metrics, with `info` from the wiring.
    pub fn new(expose: ExposeState, info: PageInfo) -> Self {
        Self {
            expose,
            info,
            history: history::History::default(),
            started: Instant::now(),
        }
    }

    /// Renders the status page listing the `top` metrics by series into `out` (a snapshot of the
    /// own metrics is kept for later views' rates). Reads the store's family list and the
    /// limiter's counts, no series: call it off the async workers all the same (it takes their
    /// locks).
    pub fn render_status(&self, top: usize, out: &mut String) {
        status::render(self, top.clamp(1, MAX_TOP), out);
    }

    /// Renders the view of metric `name` into `out`; `false` (and a "not found" page) when the
    /// store has no such metric. Walks the metric's label sets a chunk at a time: call it off the
    /// async workers.
    pub fn render_metric(&self, name: &str, out: &mut String) -> bool {
        explore::render(self, name, out)
    }
}

/// The status page's routes: `/` and `/explore`.
pub fn router(state: Arc<PageState>) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/explore", get(explore_page))
        .with_state(state)
}

/// Query of `/`.
#[derive(Debug, serde::Deserialize)]
struct StatusQuery {
    top: Option<usize>,
}

/// Query of `/explore`.
#[derive(Debug, serde::Deserialize)]
struct ExploreQuery {
    metric: Option<String>,
}

async fn status_page(State(s): State<Arc<PageState>>, query: Result<Query<StatusQuery>, QueryRejection>) -> Response {
    let top = match query {
        Ok(q) => q.top.unwrap_or(DEFAULT_TOP),
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{}; use `?top=N`\n", e.body_text())).into_response(),
    };
    let page = tokio::task::spawn_blocking(move || {
        let mut out = String::with_capacity(32 << 10);
        s.render_status(top, &mut out);
        out
    })
    .await;
    match page {
        Ok(body) => html_response(StatusCode::OK, body),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "status page failed\n").into_response(),
    }
}

async fn explore_page(State(s): State<Arc<PageState>>, query: Result<Query<ExploreQuery>, QueryRejection>) -> Response {
    let Some(name) = query.ok().and_then(|q| q.0.metric) else {
        return (StatusCode::BAD_REQUEST, "use /explore?metric=NAME\n").into_response();
    };
    let page = tokio::task::spawn_blocking(move || {
        let mut out = String::with_capacity(16 << 10);
        let found = s.render_metric(&name, &mut out);
        (found, out)
    })
    .await;
    match page {
        Ok((true, body)) => html_response(StatusCode::OK, body),
        Ok((false, body)) => html_response(StatusCode::NOT_FOUND, body),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "metric page failed\n").into_response(),
    }
}

fn html_response(status: StatusCode, body: String) -> Response {
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if let Ok(csp) = HeaderValue::from_str(&html::CSP) {
        h.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    resp
}

#[cfg(test)]
mod tests;
