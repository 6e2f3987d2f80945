//! `prometheus.auth`: basic auth (bcrypt hashes, as Prometheus's `web.yml`) and bearer tokens on
//! every route of the Prometheus endpoint but `/healthz` and `/readyz`.
//!
//! bcrypt is slow by design, so a successful basic-auth check is cached for [`CACHE_TTL`], keyed by
//! the SHA-256 of the `Authorization` value (the password itself is never kept), in a cache of at
//! most [`CACHE_MAX`] entries; a scrape every few seconds costs one bcrypt per `CACHE_TTL`. bcrypt
//! runs on a blocking thread, one at a time, so wrong passwords cannot take every core.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use sha2::{Digest, Sha256};

use super::config::PrometheusAuthConfig;
use crate::util::tokens::{TokenFile, bearer};

/// How long a successful basic-auth verification is remembered.
pub const CACHE_TTL: Duration = Duration::from_secs(60);
/// Most remembered verifications.
pub const CACHE_MAX: usize = 64;

/// The Prometheus endpoint's credentials.
#[derive(Debug)]
pub struct ScrapeAuth {
    users: BTreeMap<String, String>,
    tokens: Option<TokenFile>,
    verified: Arc<parking_lot::Mutex<HashMap<[u8; 32], Instant>>>,
    bcrypt: Arc<tokio::sync::Semaphore>,
}

impl ScrapeAuth {
    /// The credentials of `config`, or `None` when none is configured.
    ///
    /// # Errors
    /// The token file cannot be read or parsed.
    pub fn new(config: &PrometheusAuthConfig) -> Result<Option<Self>, String> {
        if !config.enabled() {
            return Ok(None);
        }
        let tokens = config.bearer_tokens_file.as_deref().map(TokenFile::load).transpose()?;
        Ok(Some(Self {
            users: config.basic_auth_users.clone(),
            tokens,
            verified: Default::default(),
            bcrypt: Arc::new(tokio::sync::Semaphore::new(1)),
        }))
    }

    /// Whether the `Authorization` header value is a valid credential.
    pub async fn check(&self, value: &[u8]) -> bool {
        if let (Some(tokens), Some(token)) = (&self.tokens, bearer(value)) {
            return tokens.check(token).is_some();
        }
        if self.users.is_empty() || value.len() < 6 || !value[..6].eq_ignore_ascii_case(b"basic ") {
            return false;
        }
        let key: [u8; 32] = Sha256::digest(value).into();
        if self
            .verified
            .lock()
            .get(&key)
            .is_some_and(|at| at.elapsed() < CACHE_TTL)
        {
            return true;
        }
        let Some((user, password)) = basic(&value[6..]) else {
            return false;
        };
        let Some(hash) = self.users.get(&user).cloned() else {
            return false;
        };
        let Ok(permit) = self.bcrypt.clone().acquire_owned().await else {
            return false;
        };
        // The check and the cache entry are made on the blocking thread, so a scraper that gives
        // up (its scrape timeout) before bcrypt finishes still finds the result cached next time.
        let verified = self.verified.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let ok = bcrypt::verify(password, &hash).unwrap_or(false);
            if ok {
                let mut v = verified.lock();
                if v.len() >= CACHE_MAX {
                    v.retain(|_, at| at.elapsed() < CACHE_TTL);
                }
                if v.len() >= CACHE_MAX {
                    v.clear();
                }
                v.insert(key, Instant::now());
            }
            ok
        })
        .await
        .unwrap_or(false)
    }

    /// The `WWW-Authenticate` challenge of a 401.
    fn challenge(&self) -> &'static str {
        if self.users.is_empty() {
            "Bearer"
        } else {
            "Basic realm=\"spindle\""
        }
    }
}

/// `user:password` of a basic-auth credential (base64).
fn basic(encoded: &[u8]) -> Option<(String, String)> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim_ascii())
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (u, p) = s.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

/// `router` with every route but `/healthz` and `/readyz` behind `auth` (unchanged when `None`).
pub fn protect(router: Router, auth: Option<Arc<ScrapeAuth>>) -> Router {
    match auth {
        Some(auth) => router.layer(axum::middleware::from_fn_with_state(auth, require)),
        None => router,
    }
}

async fn require(State(auth): State<Arc<ScrapeAuth>>, req: Request, next: Next) -> Response {
    if matches!(req.uri().path(), "/healthz" | "/readyz") {
        return next.run(req).await;
    }
    let ok = match req.headers().get(header::AUTHORIZATION) {
        Some(v) => auth.check(v.as_bytes()).await,
        None => false,
    };
    if ok {
        return next.run(req).await;
    }
    let mut resp = (StatusCode::UNAUTHORIZED, "unauthorized\n").into_response();
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(auth.challenge()));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn basic_auth_is_verified_once_then_cached() {
        let config = PrometheusAuthConfig {
            basic_auth_users: BTreeMap::from([("prom".to_string(), bcrypt::hash("s3cret", 4).unwrap())]),
            bearer_tokens_file: None,
        };
        let auth = ScrapeAuth::new(&config).unwrap().unwrap();
        use base64::Engine;
        let enc = |s: &str| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(s));
        assert!(auth.check(enc("prom:s3cret").as_bytes()).await);
        assert_eq!(auth.verified.lock().len(), 1);
        assert!(auth.check(enc("prom:s3cret").as_bytes()).await);
        assert!(!auth.check(enc("prom:wrong").as_bytes()).await);
        assert!(!auth.check(enc("other:s3cret").as_bytes()).await);
        assert!(!auth.check(b"Bearer s3cret").await);
        assert_eq!(auth.verified.lock().len(), 1);
        assert_eq!(auth.challenge(), "Basic realm=\"spindle\"");
    }
}
