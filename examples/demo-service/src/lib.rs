//! The demo service: a small axum app instrumented with `spindle-instrument`.
//!
//! Routes (all under [`app`]):
//! - `GET /users/{id}` — looks a user up in a pretend database (an `#[instrument]`ed function);
//!   ids divisible by 10 are not found (404), ids divisible by 7 fail (500), other numbers are
//!   found, anything else is a 400.
//! - `GET /orders/{id}` — calls `GET {downstream}/users/{id}` with the trace context injected
//!   (or the local lookup when no downstream is set), so two instances form one trace.
//! - `GET /slow` — waits on a simulated slow dependency (50–450 ms).
//! - `GET /healthz`.
//!
//! Metrics go where `OTEL_METRICS_EXPORTER` says: to Spindle over OTLP (`otlp`, the default), to
//! a Prometheus scrape endpoint of the service's own (`prometheus`, on `localhost:9464` or, with
//! `--metrics-on-listen`, at `/metrics` on the service's port), or both (`otlp,prometheus`).
//!
//! Custom metrics: `demo.user.lookups` (a counter through the OpenTelemetry API, attribute
//! `result`) and `demo.slow.calls` (from a `tracing` event's `monotonic_counter.` field).

#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;
use serde_json::json;
use spindle_instrument::HttpLayer;
use spindle_instrument::http::{client_span, inject_context, record_response};
use tracing::Instrument;

/// Environment variable for `--listen`.
pub const LISTEN_ENV: &str = "DEMO_LISTEN";
/// Environment variable for `--downstream`.
pub const DOWNSTREAM_ENV: &str = "DEMO_DOWNSTREAM";
/// Environment variable for `--metrics-on-listen`.
pub const METRICS_ON_LISTEN_ENV: &str = "DEMO_METRICS_ON_LISTEN";
/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// Command line and environment configuration.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "demo-service",
    about = "Demo axum service instrumented with spindle-instrument"
)]
pub struct Config {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, env = LISTEN_ENV, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Base URL of another demo-service instance that `/orders/{id}` calls, e.g.
    /// `http://127.0.0.1:8081`.
    #[arg(long, env = DOWNSTREAM_ENV)]
    pub downstream: Option<String>,
    /// With `OTEL_METRICS_EXPORTER=prometheus`: serve `/metrics` on `--listen` (the service's own
    /// port) instead of on `OTEL_EXPORTER_PROMETHEUS_HOST:OTEL_EXPORTER_PROMETHEUS_PORT`.
    #[arg(long, env = METRICS_ON_LISTEN_ENV)]
    pub metrics_on_listen: bool,
}

/// Shared state of the handlers.
#[derive(Debug, Clone)]
pub struct AppState {
    downstream: Option<String>,
    client: reqwest::Client,
    lookups: Counter<u64>,
}

impl AppState {
    /// State for `config`; create it after `spindle_instrument` is initialised so its metrics
    /// use the real meter.
    ///
    /// # Errors
    /// When the downstream URL is not an `http://` URL.
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        if let Some(d) = &config.downstream {
            let uri: Uri = d.parse().map_err(|e| anyhow::anyhow!("--downstream {d:?}: {e}"))?;
            anyhow::ensure!(
                uri.scheme_str() == Some("http") && uri.host().is_some(),
                "--downstream {d:?}: expected http://host:port"
            );
        }
        Ok(Self {
            downstream: config.downstream.as_ref().map(|d| d.trim_end_matches('/').to_owned()),
            client: reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?,
            lookups: spindle_instrument::meter()
                .u64_counter("demo.user.lookups")
                .with_description("User lookups by result.")
                .build(),
        })
    }
}

/// The router with every route and the [`HttpLayer`].
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/users/{id}", get(get_user))
        .route("/orders/{id}", get(get_order))
        .route("/slow", get(slow))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state)
        .layer(HttpLayer::new())
}

/// Serves `router` on `listener` until `shutdown` completes.
///
/// # Errors
/// When the server fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

#[derive(Debug)]
enum Lookup {
    Found(serde_json::Value),
    NotFound,
    Failed(&'static str),
}

/// The pretend database.
#[tracing::instrument(level = "info", skip(state))]
async fn load_user(state: &AppState, id: u64) -> Lookup {
    tokio::time::sleep(Duration::from_millis(2 + id % 5)).await;
    let result = if id % 10 == 0 {
        Lookup::NotFound
    } else if id % 7 == 0 {
        tracing::warn!(user.id = id, "database error");
        Lookup::Failed("database error")
    } else {
        Lookup::Found(json!({ "id": id, "name": format!("user-{id}") }))
    };
    let label = match result {
        Lookup::Found(_) => "found",
        Lookup::NotFound => "not_found",
        Lookup::Failed(_) => "error",
    };
    state.lookups.add(1, &[KeyValue::new("result", label)]);
    result
}

fn lookup_response(lookup: Lookup) -> Response {
    match lookup {
        Lookup::Found(user) => Json(user).into_response(),
        Lookup::NotFound => (StatusCode::NOT_FOUND, "no such user").into_response(),
        Lookup::Failed(why) => (StatusCode::INTERNAL_SERVER_ERROR, why).into_response(),
    }
}

async fn get_user(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match id.parse::<u64>() {
        Ok(id) => lookup_response(load_user(&state, id).await),
        Err(_) => (StatusCode::BAD_REQUEST, "user id must be a number").into_response(),
    }
}

async fn get_order(State(state): State<AppState>, Path(id): Path<u64>) -> Response {
    let Some(base) = &state.downstream else {
        return match load_user(&state, id).await {
            Lookup::Found(user) => Json(json!({ "order": id, "user": user, "via": "local" })).into_response(),
            other => lookup_response(other),
        };
    };
    let url = format!("{base}/users/{id}");
    let Ok(uri) = url.parse::<Uri>() else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "bad downstream URL").into_response();
    };
    let span = client_span(&Method::GET, &uri);
    let result = async {
        let mut request = state.client.get(&url);
        let mut headers = reqwest::header::HeaderMap::new();
        inject_context(&mut headers);
        request = request.headers(headers);
        request.send().await
    }
    .instrument(span.clone())
    .await;
    match result {
        Ok(resp) => {
            let status = resp.status();
            record_response(&span, Some(status.as_u16()));
            drop(span);
            if !status.is_success() {
                return (StatusCode::BAD_GATEWAY, format!("downstream answered {status}")).into_response();
            }
            match resp.json::<serde_json::Value>().await {
                Ok(user) => Json(json!({ "order": id, "user": user, "via": base })).into_response(),
                Err(_) => (StatusCode::BAD_GATEWAY, "downstream sent no JSON").into_response(),
            }
        }
        Err(err) => {
            record_response(&span, None);
            tracing::warn!(error = %err, "downstream call failed");
            (StatusCode::BAD_GATEWAY, "downstream unreachable").into_response()
        }
    }
}

/// A dependency that is sometimes slow.
#[tracing::instrument(level = "info")]
async fn slow_dependency() -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let wait = Duration::from_millis(50 + u64::from(nanos % 400));
    tokio::time::sleep(wait).await;
    tracing::info!(monotonic_counter.demo.slow.calls = 1u64, "slow dependency answered");
    wait
}

async fn slow() -> Json<serde_json::Value> {
    let waited = slow_dependency().await;
    Json(json!({ "waited_ms": waited.as_millis() as u64 }))
}
