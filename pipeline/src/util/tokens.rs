//! Bearer tokens from a file, shared by the OTLP receivers (`receivers.otlp.auth`) and the
//! Prometheus endpoint (`prometheus.auth`).
//!
//! The file holds one token a line, optionally followed by whitespace and a comma-separated list
//! of `service.name` globs the token may write (`tok-7f3a checkout-*,cart`); no list = any service.
//! Blank lines and `#` comments are ignored. The file is checked for changes (modification time
//! and size) at most once a second, on use; a reload that fails keeps the previous tokens and is
//! logged once. Tokens are kept only as SHA-256 digests and compared in constant time; they are
//! never logged, and parse errors name the line, never its content.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

use super::glob::Glob;

/// How often the file is checked for changes, at most.
pub const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// What a token may write.
#[derive(Debug, Clone)]
pub enum Scope {
    /// Any service.
    Any,
    /// Only services whose `service.name` matches one of these globs.
    Services(Arc<[Glob]>),
}

impl Scope {
    /// Whether the token may write `service`.
    pub fn allows(&self, service: &str) -> bool {
        match self {
            Scope::Any => true,
            Scope::Services(globs) => globs.iter().any(|g| g.matches(service)),
        }
    }
}

#[derive(Debug)]
struct Entry {
    digest: [u8; 32],
    scope: Scope,
}

/// A parsed token file.
#[derive(Debug, Default)]
pub struct Tokens(Vec<Entry>);

impl Tokens {
    /// Parses a token file's text.
    ///
    /// # Errors
    /// The first bad line, by number (never its content: it holds a secret).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            let token = parts.next().unwrap_or_default();
            let scope = match parts.next() {
                None => Scope::Any,
                Some(list) => {
                    let globs: Vec<&str> = list.split(',').collect();
                    if globs.iter().any(|g| g.is_empty()) {
                        return Err(format!("line {}: empty service glob in the list", i + 1));
                    }
                    Scope::Services(globs.into_iter().map(Glob::new).collect())
                }
            };
            if parts.next().is_some() {
                return Err(format!(
                    "line {}: more than a token and one comma-separated glob list (no spaces after the commas)",
                    i + 1
                ));
            }
            out.push(Entry {
                digest: Sha256::digest(token.as_bytes()).into(),
                scope,
            });
        }
        Ok(Self(out))
    }

    /// Reads and parses the file at `path`.
    ///
    /// # Errors
    /// The file cannot be read or a line is bad.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// How many tokens there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is no token (every request is refused).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The scope of `token`, or `None` when it is not listed. Every entry is compared, in constant
    /// time, whatever matches.
    pub fn check(&self, token: &[u8]) -> Option<Scope> {
        let digest: [u8; 32] = Sha256::digest(token).into();
        let mut found = Choice::from(0);
        let mut index = 0u64;
        for (i, e) in self.0.iter().enumerate() {
            let eq = e.digest.ct_eq(&digest);
            index = u64::conditional_select(&index, &(i as u64), eq & !found);
            found |= eq;
        }
        bool::from(found).then(|| self.0[index as usize].scope.clone())
    }
}

#[derive(Debug)]
struct State {
    tokens: Arc<Tokens>,
    stamp: Option<(SystemTime, u64)>,
    checked: Instant,
    failing: bool,
}

/// A token file, reloaded when it changes.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    state: parking_lot::Mutex<State>,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl TokenFile {
    /// Loads the file at `path`.
    ///
    /// # Errors
    /// As [`Tokens::read`].
    pub fn load(path: impl Into<PathBuf>) -> Result<Self, String> {
        let path = path.into();
        let stamp = stamp(&path);
        let tokens = Tokens::read(&path)?;
        Ok(Self {
            path,
            state: parking_lot::Mutex::new(State {
                tokens: Arc::new(tokens),
                stamp,
                checked: Instant::now(),
                failing: false,
            }),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current tokens, reloaded first when the file changed (checked at most once per
    /// [`RELOAD_CHECK`]).
    pub fn tokens(&self) -> Arc<Tokens> {
        let mut s = self.state.lock();
        if s.checked.elapsed() >= RELOAD_CHECK {
            s.checked = Instant::now();
            let now = stamp(&self.path);
            if now != s.stamp || s.failing {
                match Tokens::read(&self.path) {
                    Ok(t) => {
                        tracing::info!(path = %self.path.display(), tokens = t.len(), "reloaded the bearer token file");
                        s.tokens = Arc::new(t);
                        s.stamp = now;
                        s.failing = false;
                    }
                    Err(e) => {
                        if !s.failing || now != s.stamp {
                            tracing::warn!(error = %e, "cannot reload the bearer token file; keeping the previous tokens");
                        }
                        s.failing = true;
                        s.stamp = now;
                    }
                }
            }
        }
        s.tokens.clone()
    }

    /// The scope of `token` under the current tokens.
    pub fn check(&self, token: &[u8]) -> Option<Scope> {
        self.tokens().check(token)
    }
}

/// The token of an `Authorization: Bearer <token>` header value (scheme case-insensitive).
pub fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    (scheme.eq_ignore_ascii_case(b"bearer ")).then(|| rest.trim_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tokens_scopes_comments_and_checks() {
        let t = Tokens::parse("# c\n\nopen\n  tok-7f3a checkout-*,cart  \n").unwrap();
        assert_eq!(t.len(), 2);
        assert!(matches!(t.check(b"open"), Some(Scope::Any)));
        let s = t.check(b"tok-7f3a").unwrap();
        assert!(s.allows("checkout-eu") && s.allows("cart") && !s.allows("billing"));
        assert!(t.check(b"tok-7f3").is_none() && t.check(b"").is_none() && t.check(b"# c").is_none());
        let e = Tokens::parse("ok\nsecret-x a,,b\n").unwrap_err();
        assert_eq!(e, "line 2: empty service glob in the list");
        assert!(
            Tokens::parse("secret-y a b")
                .unwrap_err()
                .starts_with("line 1: more than")
        );
    }

    #[test]
    fn bearer_header_values() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bear"), None);
    }

    #[test]
    fn reloads_on_change_and_keeps_tokens_when_a_reload_fails() {
        let dir = std::env::temp_dir().join(format!("spindle-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens");
        std::fs::write(&path, "one\n").unwrap();
        let f = TokenFile::load(&path).unwrap();
        assert!(f.check(b"one").is_some());
        std::fs::write(&path, "two checkout-*\n").unwrap();
        f.state.lock().checked -= RELOAD_CHECK;
        assert!(f.check(b"one").is_none());
        assert!(f.check(b"two").is_some());
        std::fs::write(&path, "bad a,,b\nthree\n").unwrap();
        f.state.lock().checked -= RELOAD_CHECK;
        assert!(f.check(b"two").is_some(), "a failed reload keeps the previous tokens");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
