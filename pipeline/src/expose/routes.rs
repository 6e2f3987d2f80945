//! HTTP routes of the Prometheus endpoint: `GET /metrics` (content negotiation, gzip),
//! `/healthz` (alive) and `/readyz` (receivers bound and accepting).

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, HeaderValue, StatusCode, header};

use crate::model::Format;
use crate::store::Store;
use crate::telemetry::Telemetry;

/// What the routes read.
#[derive(Debug, Clone)]
pub struct ExposeState {
    /// The series store.
    pub store: Arc<Store>,
    /// Self metrics.
    pub telemetry: Arc<Telemetry>,
    /// Set once every receiver is bound and serving; cleared on shutdown.
    pub ready: Arc<AtomicBool>,
}

/// The Prometheus endpoint's routes.
pub fn router(state: ExposeState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn readyz(State(s): State<ExposeState>) -> Response {
    if s.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

/// Picks the exposition format from an `Accept` header: OpenMetrics when asked for, else text.
pub fn negotiate(accept: Option<&str>) -> Format {
    match accept {
        Some(a)
            if a.split(',').any(|part| {
                let essence = part.split(';').next().unwrap_or("").trim();
                essence.eq_ignore_ascii_case("application/openmetrics-text")
                    && !part.contains("q=0,")
                    && !part.trim_end().ends_with("q=0")
            }) =>
        {
            Format::OpenMetrics
        }
        _ => Format::Text,
    }
}

fn wants_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| {
            let mut parts = e.split(';');
            let name = parts.next().unwrap_or("").trim();
            let q0 = parts.any(|p| matches!(p.trim(), "q=0" | "q=0.0" | "q=0.00" | "q=0.000"));
            name.eq_ignore_ascii_case("gzip") && !q0
        })
}

async fn metrics(State(s): State<ExposeState>, headers: HeaderMap) -> Response {
    let format = negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let gzip = wants_gzip(&headers);
    // Rendering a large store is CPU work: keep it off the async workers.
    let rendered = tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        let mut body = Vec::with_capacity(64 * 1024);
        super::render(&s.store, &s.telemetry, format, &mut body);
        s.telemetry.scrape_took(start.elapsed());
        if gzip {
            let mut enc =
                flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4), flate2::Compression::fast());
            enc.write_all(&body).and_then(|_| enc.finish())
        } else {
            Ok(body)
        }
    })
    .await;
    let body = match rendered {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("compression failed: {e}\n")).into_response(),
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("render failed: {e}\n")).into_response(),
    };
    let ct = match format {
        Format::OpenMetrics => super::openmetrics::CONTENT_TYPE,
        Format::Text => super::text::CONTENT_TYPE,
    };
    let mut resp = ([(header::CONTENT_TYPE, ct)], body).into_response();
    if gzip {
        resp.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    resp.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("Accept, Accept-Encoding"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation() {
        assert_eq!(negotiate(None), Format::Text);
        assert_eq!(negotiate(Some("text/plain")), Format::Text);
        assert_eq!(
            negotiate(Some("application/openmetrics-text; version=1.0.0")),
            Format::OpenMetrics
        );
        // What Prometheus sends.
        assert_eq!(
            negotiate(Some(
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
            )),
            Format::OpenMetrics
        );
        assert_eq!(negotiate(Some("application/openmetrics-text;q=0")), Format::Text);
    }
}
