//! TLS for every listener (OTLP/gRPC, OTLP/HTTP, Prometheus): the `tls` config block
//! ([`TlsConfig`]) and its checks, and [`ServerTls`], the rustls (ring) server configuration that
//! follows its files.
//!
//! The handshake runs inside the accepted [`super::Conn`], so it is under the listener's
//! connection cap and timeouts like any slow client (a client that never finishes it is closed by
//! the header-read or idle timeout). Certificates, key and client CA are re-read when one of their
//! files changes (looked at, at most once a second, when a connection is accepted): new
//! connections get the new certificate, open ones keep theirs. A reload that fails keeps the
//! previous configuration and is logged once.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};

use crate::config::types::Problem;
use crate::util::pem;

/// The lowest TLS version a listener accepts: `"1.2"` or `"1.3"` (a YAML number, `1.3`, is read
/// the same).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub enum MinTlsVersion {
    /// TLS 1.2 and 1.3.
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    Tls13,
}

impl<'de> Deserialize<'de> for MinTlsVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = MinTlsVersion;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("`1.2` or `1.3`")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<MinTlsVersion, E> {
                match v.trim() {
                    "1.2" => Ok(MinTlsVersion::Tls12),
                    "1.3" => Ok(MinTlsVersion::Tls13),
                    other => Err(E::custom(format!(
                        "`{other}` is not a TLS version Spindle accepts: use `1.2` or `1.3`"
                    ))),
                }
            }

            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<MinTlsVersion, E> {
                self.visit_str(&v.to_string())
            }
        }
        d.deserialize_any(V)
    }
}

/// A listener's `tls` block. TLS is on when `cert_file` is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain the listener presents (leaf first). Default: none — no TLS.
    pub cert_file: Option<String>,
    /// PEM private key of that certificate (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<String>,
    /// PEM CA certificates: when set, clients must present a certificate signed by one of them
    /// (mTLS); others are refused at the handshake.
    pub client_ca_file: Option<String>,
    /// Lowest TLS version accepted: `"1.2"` (default) or `"1.3"`.
    pub min_version: MinTlsVersion,
}

impl TlsConfig {
    /// Whether TLS is configured.
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some()
    }

    /// Checks the block at `prefix` (e.g. `receivers.otlp.tls`): a key needs a certificate and a
    /// certificate a key, every file must hold what it should, and the key must match the
    /// certificate.
    pub fn validate(&self, prefix: &str) -> Vec<Problem> {
        let problem = |key: &str, message: String, hint: &str| Problem {
            path: format!("{prefix}.{key}"),
            message,
            hint: hint.into(),
        };
        let mut out = Vec::new();
        let Some(cert) = &self.cert_file else {
            for (key, set) in [("key_file", &self.key_file), ("client_ca_file", &self.client_ca_file)] {
                if set.is_some() {
                    out.push(problem(
                        key,
                        format!("set without `{prefix}.cert_file`"),
                        "set cert_file (and key_file) to serve TLS, or remove this key",
                    ));
                }
            }
            return out;
        };
        let Some(key) = &self.key_file else {
            out.push(problem(
                "key_file",
                "missing: cert_file is set".into(),
                "the path of the PEM private key of cert_file",
            ));
            return out;
        };
        let files = TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: self.client_ca_file.clone(),
            min_version: self.min_version,
        };
        let certs = pem::certs(cert).map_err(|e| problem("cert_file", e, "the path of a PEM certificate chain"));
        let key = pem::key(key).map_err(|e| problem("key_file", e, "the path of a PEM private key"));
        let ca = files
            .client_ca
            .as_deref()
            .map(|ca| pem::certs(ca).map_err(|e| problem("client_ca_file", e, "the path of PEM CA certificates")));
        let mut ok = true;
        for r in [certs.err(), key.err(), ca.and_then(Result::err)].into_iter().flatten() {
            out.push(r);
            ok = false;
        }
        if ok && let Err(e) = files.server_config(&[]) {
            out.push(problem(
                "key_file",
                e,
                "the key must be the private key of cert_file's first certificate",
            ));
        }
        out
    }
}

/// The files and version of a listener's TLS.
#[derive(Debug, Clone)]
struct TlsFiles {
    cert: String,
    key: String,
    client_ca: Option<String>,
    min_version: MinTlsVersion,
}

/// What identifies a file's content without reading it: modification time, length, inode.
type Stamp = Vec<Option<(SystemTime, u64, u64)>>;

impl TlsFiles {
    fn paths(&self) -> impl Iterator<Item = &str> {
        [
            Some(self.cert.as_str()),
            Some(self.key.as_str()),
            self.client_ca.as_deref(),
        ]
        .into_iter()
        .flatten()
    }

    fn stamp(&self) -> Stamp {
        self.paths()
            .map(|p| {
                let m = std::fs::metadata(p).ok()?;
                #[cfg(unix)]
                let ino = std::os::unix::fs::MetadataExt::ino(&m);
                #[cfg(not(unix))]
                let ino = 0;
                Some((m.modified().ok()?, m.len(), ino))
            })
            .collect()
    }

    /// Reads the files into a rustls server configuration offering `alpn`.
    fn server_config(&self, alpn: &[&[u8]]) -> Result<ServerConfig, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&rustls::SupportedProtocolVersion] = match self.min_version {
            MinTlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            MinTlsVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| e.to_string())?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in pem::certs(ca)? {
                    roots.add(c).map_err(|e| format!("`{ca}`: {e}"))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| format!("`{ca}`: {e}"))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(pem::certs(&self.cert)?, pem::key(&self.key)?)
            .map_err(|e| format!("`{}` with `{}`: {e}", self.cert, self.key))?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }
}

/// A listener's TLS: the current rustls configuration, re-read when its files change.
#[derive(Debug)]
pub struct ServerTls {
    files: TlsFiles,
    alpn: Vec<&'static [u8]>,
    /// The listener's key prefix, for the logs.
    key: &'static str,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    acceptor: TlsAcceptorDebug,
    stamp: Stamp,
    checked: Instant,
}

struct TlsAcceptorDebug(TlsAcceptor);

impl std::fmt::Debug for TlsAcceptorDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsAcceptor")
    }
}

/// How often at most the files are looked at.
const CHECK_EVERY: Duration = Duration::from_secs(1);

impl ServerTls {
    /// Reads `config`'s files (`key` is the block's key path, for errors and logs). `alpn` is what
    /// the listener offers: `h2` for gRPC, `h2` and `http/1.1` for HTTP. `None` when TLS is not
    /// configured.
    ///
    /// # Errors
    /// What is wrong with the files.
    pub fn new(config: &TlsConfig, key: &'static str, alpn: &[&'static [u8]]) -> Result<Option<Arc<Self>>, String> {
        let (Some(cert), Some(key_file)) = (&config.cert_file, &config.key_file) else {
            return Ok(None);
        };
        let files = TlsFiles {
            cert: cert.clone(),
            key: key_file.clone(),
            client_ca: config.client_ca_file.clone(),
            min_version: config.min_version,
        };
        let stamp = files.stamp();
        let server = files.server_config(alpn).map_err(|e| format!("{key}: {e}"))?;
        Ok(Some(Arc::new(Self {
            files,
            alpn: alpn.to_vec(),
            key,
            state: Mutex::new(State {
                acceptor: TlsAcceptorDebug(TlsAcceptor::from(Arc::new(server))),
                stamp,
                checked: Instant::now(),
            }),
        })))
    }

    /// The acceptor for a new connection: the current configuration, re-read first if a file
    /// changed (looked at most once a second).
    pub fn acceptor(&self) -> TlsAcceptor {
        let mut s = self.state.lock();
        if s.checked.elapsed() >= CHECK_EVERY {
            s.checked = Instant::now();
            let stamp = self.files.stamp();
            if stamp != s.stamp {
                // Whatever comes of it, this version of the files is tried once.
                s.stamp = stamp;
                match self.files.server_config(&self.alpn) {
                    Ok(c) => {
                        s.acceptor = TlsAcceptorDebug(TlsAcceptor::from(Arc::new(c)));
                        tracing::info!(key = self.key, "reloaded the TLS certificate");
                    }
                    Err(e) => tracing::warn!(
                        key = self.key,
                        error = %e,
                        "cannot reload the TLS certificate; serving the previous one"
                    ),
                }
            }
        }
        s.acceptor.0.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Files {
        dir: std::path::PathBuf,
    }

    impl Files {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("spindle-tls-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Self { dir }
        }

        fn write(&self, name: &str, text: &str) -> String {
            let p = self.dir.join(name);
            std::fs::write(&p, text).unwrap();
            p.display().to_string()
        }
    }

    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn pair() -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    fn paths(p: &[Problem]) -> Vec<&str> {
        p.iter().map(|p| p.path.as_str()).collect()
    }

    #[test]
    fn validate_reports_missing_mismatched_and_unreadable_files_with_key_paths_and_hints() {
        let f = Files::new("validate");
        let (cert, key) = pair();
        let (_, other_key) = pair();
        let cert = f.write("cert.pem", &cert);
        let key = f.write("key.pem", &key);
        let other_key = f.write("other.key", &other_key);
        let garbage = f.write("garbage.pem", "hello\n");
        let p = "receivers.otlp.tls";
        let tls = |cert: Option<&str>, key: Option<&str>, ca: Option<&str>| TlsConfig {
            cert_file: cert.map(Into::into),
            key_file: key.map(Into::into),
            client_ca_file: ca.map(Into::into),
            min_version: MinTlsVersion::Tls13,
        };
        assert_eq!(TlsConfig::default().validate(p), vec![]);
        assert_eq!(tls(Some(&cert), Some(&key), Some(&cert)).validate(p), vec![]);
        let v = tls(None, Some(&key), Some(&cert)).validate(p);
        assert_eq!(paths(&v), [format!("{p}.key_file"), format!("{p}.client_ca_file")]);
        assert!(
            v[0].message.contains("without `receivers.otlp.tls.cert_file`"),
            "{}",
            v[0]
        );
        let v = tls(Some(&cert), None, None).validate(p);
        assert_eq!(paths(&v), [format!("{p}.key_file")]);
        assert!(v[0].message.contains("missing"), "{}", v[0]);
        let v = tls(Some("/nonexistent/cert.pem"), Some(&garbage), Some(&garbage)).validate("prometheus.tls");
        assert_eq!(
            paths(&v),
            [
                "prometheus.tls.cert_file",
                "prometheus.tls.key_file",
                "prometheus.tls.client_ca_file"
            ]
        );
        assert!(v[0].message.contains("cannot read `/nonexistent/cert.pem`"), "{}", v[0]);
        assert!(v[1].message.contains("no PEM private key"), "{}", v[1]);
        assert!(v[2].message.contains("no PEM certificate"), "{}", v[2]);
        let v = tls(Some(&cert), Some(&other_key), None).validate(p);
        assert_eq!(paths(&v), [format!("{p}.key_file")]);
        assert!(v[0].hint.contains("private key of cert_file"), "{}", v[0]);
        assert!(v.iter().all(|p| !p.hint.is_empty()));
    }

    #[test]
    fn the_root_config_checks_both_tls_blocks_and_min_version_parses() {
        let mut c = crate::config::Config::default();
        c.receivers.otlp.tls.key_file = Some("/k".into());
        c.prometheus.tls.cert_file = Some("/nonexistent.pem".into());
        let v = c.validate();
        let got = paths(&v);
        assert!(got.contains(&"receivers.otlp.tls.key_file"), "{got:?}");
        assert!(got.contains(&"prometheus.tls.key_file"), "{got:?}");
        c.prometheus.tls.key_file = Some("/nonexistent.key".into());
        let v = c.validate();
        assert!(paths(&v).contains(&"prometheus.tls.cert_file"), "{v:?}");
        let v: MinTlsVersion = serde_yaml_ng::from_str("'1.3'").unwrap();
        assert_eq!(v, MinTlsVersion::Tls13);
        assert_eq!(
            serde_yaml_ng::from_str::<MinTlsVersion>("1.2").unwrap(),
            MinTlsVersion::Tls12
        );
        assert_eq!(
            serde_yaml_ng::from_str::<MinTlsVersion>("1.3").unwrap(),
            MinTlsVersion::Tls13
        );
        let e = serde_yaml_ng::from_str::<MinTlsVersion>("'1.1'")
            .unwrap_err()
            .to_string();
        assert!(e.contains("use `1.2` or `1.3`"), "{e}");
        assert!(serde_yaml_ng::from_str::<MinTlsVersion>("[1]").is_err());
    }

    #[test]
    fn a_changed_file_is_reloaded_and_a_bad_one_keeps_the_old_configuration() {
        let f = Files::new("reload");
        let (cert1, key1) = pair();
        let cert = f.write("cert.pem", &cert1);
        let key = f.write("key.pem", &key1);
        let config = TlsConfig {
            cert_file: Some(cert.clone()),
            key_file: Some(key.clone()),
            ..TlsConfig::default()
        };
        let tls = ServerTls::new(&config, "prometheus.tls", &[b"h2"]).unwrap().unwrap();
        let first = tls.files.stamp();
        assert_eq!(tls.state.lock().stamp, first);
        // A bad certificate: looked at (once the second has passed) and not taken.
        std::fs::write(&cert, "garbage, longer than before\n").unwrap();
        tls.state.lock().checked -= CHECK_EVERY;
        let before = Arc::as_ptr(tls.state.lock().acceptor.0.config());
        let _ = tls.acceptor();
        assert_ne!(tls.state.lock().stamp, first, "the change was seen");
        assert_eq!(
            Arc::as_ptr(tls.state.lock().acceptor.0.config()),
            before,
            "the old one stays"
        );
        // A good pair: taken.
        let (cert2, key2) = pair();
        std::fs::write(&cert, cert2).unwrap();
        std::fs::write(&key, key2).unwrap();
        // Within the second nothing is looked at.
        let _ = tls.acceptor();
        assert_eq!(Arc::as_ptr(tls.state.lock().acceptor.0.config()), before);
        tls.state.lock().checked -= CHECK_EVERY;
        let _ = tls.acceptor();
        assert_ne!(Arc::as_ptr(tls.state.lock().acceptor.0.config()), before, "reloaded");
        assert!(ServerTls::new(&TlsConfig::default(), "x", &[]).unwrap().is_none());
    }
}
