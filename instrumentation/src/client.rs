//! What the OTLP clients of both signals share: TLS for `https://` endpoints, request headers and
//! compression, read from the OpenTelemetry SDK's environment variables, each signal's own
//! variable overriding the general one as a whole (`OTEL_EXPORTER_OTLP_TRACES_HEADERS` over
//! `OTEL_EXPORTER_OTLP_HEADERS`, and likewise for `…_CERTIFICATE`, `…_CLIENT_CERTIFICATE`,
//! `…_CLIENT_KEY`, `…_COMPRESSION`).
//!
//! What comes in: the variables of one signal ([`SignalVars`]) and its endpoint. What goes out:
//! [`ClientSettings`] — the PEM files read and checked at start, the headers parsed, the
//! compression chosen — which build a tonic [`Channel`] or a [`reqwest::Client`] for that
//! endpoint, and add the headers to each request ([`Headers::apply`], [`Headers::apply_metadata`])
//! of the crate's OTLP transport ([`crate::transport`]), which both signals send through and which
//! applies the compression.
//!
//! Header values are secrets (`authorization=Bearer …`): they are marked sensitive on the wire
//! (HTTP/2 never indexes them, `Debug` never shows them), and no `Debug` output, error or log line
//! of this crate shows them — [`Headers`] prints its names only, and an unusable `…_HEADERS`
//! variable is reported with its value as `<redacted>`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use tonic::transport::Channel;

use crate::InitError;
use crate::transport::Compression;

/// Time allowed for one export request (and for connecting), as the SDK's default
/// `OTEL_EXPORTER_OTLP_TIMEOUT`.
pub(crate) const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// How a secret is shown.
const REDACTED: &str = "<redacted>";

/// The variables one signal's client reads, its own first, then the general one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SignalVars {
    /// `OTEL_EXPORTER_OTLP_{SIGNAL}_CERTIFICATE`: PEM CA certificates trusted for the server.
    pub(crate) certificate: &'static str,
    /// `OTEL_EXPORTER_OTLP_{SIGNAL}_CLIENT_CERTIFICATE`: PEM client certificate (mTLS).
    pub(crate) client_certificate: &'static str,
    /// `OTEL_EXPORTER_OTLP_{SIGNAL}_CLIENT_KEY`: PEM private key of the client certificate.
    pub(crate) client_key: &'static str,
    /// `OTEL_EXPORTER_OTLP_{SIGNAL}_HEADERS`: `key=value` pairs, comma-separated, percent-encoded.
    pub(crate) headers: &'static str,
    /// `OTEL_EXPORTER_OTLP_{SIGNAL}_COMPRESSION`: `gzip` or `none`.
    pub(crate) compression: &'static str,
}

/// The spans' variables.
pub(crate) const TRACES: SignalVars = SignalVars {
    certificate: crate::OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE,
    client_certificate: crate::OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE,
    client_key: crate::OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY,
    headers: crate::OTEL_EXPORTER_OTLP_TRACES_HEADERS,
    compression: crate::OTEL_EXPORTER_OTLP_TRACES_COMPRESSION,
};

/// The metrics' variables.
pub(crate) const METRICS: SignalVars = SignalVars {
    certificate: crate::OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE,
    client_certificate: crate::OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE,
    client_key: crate::OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY,
    headers: crate::OTEL_EXPORTER_OTLP_METRICS_HEADERS,
    compression: crate::OTEL_EXPORTER_OTLP_METRICS_COMPRESSION,
};

/// The general variables, below every signal's own.
const GENERAL: SignalVars = SignalVars {
    certificate: crate::OTEL_EXPORTER_OTLP_CERTIFICATE,
    client_certificate: crate::OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE,
    client_key: crate::OTEL_EXPORTER_OTLP_CLIENT_KEY,
    headers: crate::OTEL_EXPORTER_OTLP_HEADERS,
    compression: crate::OTEL_EXPORTER_OTLP_COMPRESSION,
};

/// Request headers, values marked sensitive. `Debug` shows the names only.
#[derive(Clone, Default)]
pub(crate) struct Headers(Arc<[(HeaderName, HeaderValue)]>);

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, _)| (k.as_str(), REDACTED)))
            .finish()
    }
}

impl Headers {
    /// Parses `key1=value1,key2=value2` (W3C Baggage-style, values percent-encoded) from `var`.
    /// Empty entries are skipped; a later duplicate key wins. An error names the variable and the
    /// entry's position and key, never a value.
    fn parse(var: &'static str, text: &str) -> Result<Self, InitError> {
        let mut out: Vec<(HeaderName, HeaderValue)> = Vec::new();
        let entries = text.split(',').map(str::trim).filter(|e| !e.is_empty());
        for (i, entry) in entries.enumerate() {
            let n = i + 1;
            let bad = |hint: String| InitError::invalid_env(var, REDACTED, hint);
            let Some((key, value)) = entry.split_once('=') else {
                return Err(bad(format!(
                    "entry {n} has no `=`; expected key=value pairs such as authorization=Bearer%20<token>"
                )));
            };
            let key = key.trim();
            let name = HeaderName::from_bytes(key.to_ascii_lowercase().as_bytes())
                .map_err(|_| bad(format!("entry {n}: {key:?} is not a valid header name")))?;
            let value = crate::resource::percent_decode(value.trim()).ok_or_else(|| {
                bad(format!(
                    "entry {n} ({key}): invalid percent-encoding or UTF-8 in the value"
                ))
            })?;
            let mut value = HeaderValue::from_str(&value).map_err(|_| {
                bad(format!(
                    "entry {n} ({key}): the value is not a valid header value (visible ASCII, no line breaks)"
                ))
            })?;
            value.set_sensitive(true);
            out.retain(|(k, _)| *k != name);
            out.push((name, value));
        }
        Ok(Self(out.into()))
    }

    /// Sets every header on `map`, replacing what it held under the same names.
    pub(crate) fn apply(&self, map: &mut HeaderMap) {
        for (k, v) in self.0.iter() {
            map.insert(k.clone(), v.clone());
        }
    }

    /// Sets every header on a gRPC request's metadata, replacing what it held under the same
    /// names. A name gRPC does not take as ASCII metadata was refused by [`Headers::parse`]
    /// already; binary (`-bin`) names are skipped.
    pub(crate) fn apply_metadata(&self, md: &mut tonic::metadata::MetadataMap) {
        for (k, v) in self.0.iter() {
            let Ok(key) = tonic::metadata::AsciiMetadataKey::from_bytes(k.as_str().as_bytes()) else {
                continue;
            };
            if let Ok(mut value) = tonic::metadata::AsciiMetadataValue::try_from(v.as_bytes()) {
                value.set_sensitive(true);
                md.insert(key, value);
            }
        }
    }
}

/// Parses a `…_COMPRESSION` value from `var`: `gzip` or `none`, trimmed, in any case.
///
/// # Errors
/// [`InitError::InvalidEnv`] naming `var` for any other value.
fn parse_compression(var: &'static str, text: &str) -> Result<Compression, InitError> {
    let value = text.trim();
    if value.eq_ignore_ascii_case("gzip") {
        Ok(Compression::Gzip)
    } else if value.eq_ignore_ascii_case("none") {
        Ok(Compression::None)
    } else {
        Err(InitError::invalid_env(var, text, "expected `gzip` or `none`"))
    }
}

/// The TLS files of one signal, read at start.
#[derive(Default)]
struct Tls {
    /// PEM CA certificates: when set, the only ones trusted (else the system's).
    ca: Option<Vec<u8>>,
    /// PEM client certificate and key.
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// One signal's TLS files, headers and compression; see the module documentation.
#[derive(Default)]
pub(crate) struct ClientSettings {
    /// The headers sent with every export request.
    pub(crate) headers: Headers,
    /// How request bodies are compressed (gzip unless a `…_COMPRESSION` variable says `none`).
    pub(crate) compression: Compression,
    tls: Tls,
}

impl fmt::Debug for ClientSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientSettings")
            .field("headers", &self.headers)
            .field("compression", &self.compression)
            .field("ca", &self.tls.ca.is_some())
            .field("client_certificate", &self.tls.identity.is_some())
            .finish()
    }
}

impl ClientSettings {
    /// Reads one signal's settings through `env`. The TLS files are read (and checked) only for
    /// an `https` endpoint: the specification has them for secure connections only. Without a
    /// `…_COMPRESSION` variable, bodies are gzip-compressed.
    ///
    /// # Errors
    /// [`InitError::InvalidEnv`] naming the variable: an unreadable or invalid PEM file, a client
    /// certificate without its key (or the reverse), an unusable header entry, a compression
    /// other than `gzip` or `none`.
    pub(crate) fn from_env(
        env: &dyn Fn(&str) -> Option<String>,
        vars: &SignalVars,
        https: bool,
    ) -> Result<Self, InitError> {
        let pick = |own: &'static str, general: &'static str| {
            env(own)
                .map(|v| (own, v))
                .or_else(|| env(general).map(|v| (general, v)))
        };
        let headers = match pick(vars.headers, GENERAL.headers) {
            Some((var, text)) => Headers::parse(var, &text)?,
            None => Headers::default(),
        };
        let compression = match pick(vars.compression, GENERAL.compression) {
            Some((var, text)) => parse_compression(var, &text)?,
            None => Compression::default(),
        };
        if !https {
            return Ok(Self {
                headers,
                compression,
                tls: Tls::default(),
            });
        }
        let read = |(var, path): (&'static str, String)| {
            let path = path.trim().to_owned();
            std::fs::read(&path)
                .map(|bytes| (var, path.clone(), bytes))
                .map_err(|e| InitError::invalid_env(var, &path, format!("cannot read the file: {e}")))
        };
        let ca = match pick(vars.certificate, GENERAL.certificate) {
            Some(v) => {
                let (var, path, pem) = read(v)?;
                reqwest::Certificate::from_pem_bundle(&pem)
                    .ok()
                    .filter(|c| !c.is_empty())
                    .ok_or_else(|| {
                        InitError::invalid_env(var, &path, "holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)")
                    })?;
                Some(pem)
            }
            None => None,
        };
        let cert = pick(vars.client_certificate, GENERAL.client_certificate);
        let key = pick(vars.client_key, GENERAL.client_key);
        let identity = match (cert, key) {
            (None, None) => None,
            (Some((var, path)), None) => {
                return Err(InitError::invalid_env(
                    var,
                    &path,
                    format!(
                        "a client certificate needs its private key in {} (or {})",
                        vars.client_key, GENERAL.client_key
                    ),
                ));
            }
            (None, Some((var, path))) => {
                return Err(InitError::invalid_env(
                    var,
                    &path,
                    format!(
                        "a client key needs its certificate in {} (or {})",
                        vars.client_certificate, GENERAL.client_certificate
                    ),
                ));
            }
            (Some(c), Some(k)) => {
                let (cert_var, cert_path, cert) = read(c)?;
                let (_, _, key) = read(k)?;
                // Checked here, so a bad pair fails at start rather than at every export.
                reqwest::Identity::from_pem(&identity_pem(&cert, &key)).map_err(|_| {
                    InitError::invalid_env(
                        cert_var,
                        &cert_path,
                        "with its key, is not a PEM certificate and private key (PKCS#8, PKCS#1 or SEC1)",
                    )
                })?;
                Some((cert, key))
            }
        };
        Ok(Self {
            headers,
            compression,
            tls: Tls { ca, identity },
        })
    }

    /// A lazily connecting gRPC channel to `endpoint`, with TLS for `https`. Must be called
    /// inside a Tokio runtime (the exporters' own).
    ///
    /// # Errors
    /// A message when the endpoint or the TLS settings cannot be used.
    pub(crate) fn grpc_channel(&self, endpoint: &str) -> Result<Channel, String> {
        use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
        let mut ep = Endpoint::from_shared(endpoint.to_owned())
            .map_err(|e| e.to_string())?
            .timeout(EXPORT_TIMEOUT)
            .connect_timeout(EXPORT_TIMEOUT);
        if ep.uri().scheme_str() == Some("https") {
            let mut tls = ClientTlsConfig::new();
            tls = match &self.tls.ca {
                Some(pem) => tls.ca_certificate(Certificate::from_pem(pem)),
                None => tls.with_native_roots(),
            };
            if let Some((cert, key)) = &self.tls.identity {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            ep = ep.tls_config(tls).map_err(|e| format!("TLS: {e}"))?;
        }
        Ok(ep.connect_lazy())
    }

    /// An HTTP client with the TLS settings (used for `https` URLs) and [`EXPORT_TIMEOUT`].
    ///
    /// # Errors
    /// A message when the TLS settings cannot be used.
    pub(crate) fn http_client(&self) -> Result<reqwest::Client, String> {
        let mut b = reqwest::Client::builder().timeout(EXPORT_TIMEOUT);
        if let Some(pem) = &self.tls.ca {
            b = b.tls_built_in_root_certs(false);
            for cert in reqwest::Certificate::from_pem_bundle(pem).map_err(|e| format!("CA certificate: {e}"))? {
                b = b.add_root_certificate(cert);
            }
        }
        if let Some((cert, key)) = &self.tls.identity {
            let id = reqwest::Identity::from_pem(&identity_pem(cert, key))
                .map_err(|e| format!("client certificate: {e}"))?;
            b = b.identity(id);
        }
        b.build().map_err(|e| e.to_string())
    }
}

/// A certificate and its key as one PEM buffer (what `reqwest::Identity` reads).
fn identity_pem(cert: &[u8], key: &[u8]) -> Vec<u8> {
    let mut pem = Vec::with_capacity(cert.len() + key.len() + 1);
    pem.extend_from_slice(key);
    pem.push(b'\n');
    pem.extend_from_slice(cert);
    pem
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k: &str| map.get(k).cloned()
    }

    #[test]
    fn signal_headers_replace_the_general_ones_and_values_are_decoded_and_sensitive() {
        let e = env(&[
            ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20general,x-a=1"),
            (
                "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
                " Authorization = Bearer%20metrics , x-b=2,,x-b=3",
            ),
        ]);
        let traces = ClientSettings::from_env(&e, &TRACES, false).expect("traces");
        let metrics = ClientSettings::from_env(&e, &METRICS, false).expect("metrics");
        let mut map = HeaderMap::new();
        traces.headers.apply(&mut map);
        assert_eq!(map["authorization"], "Bearer general");
        assert_eq!(map["x-a"], "1");
        let mut map = HeaderMap::new();
        metrics.headers.apply(&mut map);
        assert_eq!(map["authorization"], "Bearer metrics");
        assert_eq!(map["x-b"], "3", "a later duplicate wins");
        assert!(
            map.get("x-a").is_none(),
            "the signal's variable replaces the general one as a whole"
        );
        assert!(map["authorization"].is_sensitive());
        let mut md = tonic::metadata::MetadataMap::new();
        md.insert("authorization", "from the SDK".parse().expect("ascii"));
        metrics.headers.apply_metadata(&mut md);
        assert_eq!(md.get_all("authorization").iter().count(), 1, "replaced, not appended");
        assert_eq!(
            md.get("authorization").map(|v| v.to_str().ok()),
            Some(Some("Bearer metrics"))
        );
    }

    #[test]
    fn header_values_never_show_in_debug_output_or_errors() {
        let e = env(&[("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20s3cret-tok")]);
        let s = ClientSettings::from_env(&e, &TRACES, false).expect("valid");
        let transport = crate::transport::Transport::http("http://localhost:4318/v1/traces", &s).expect("transport");
        let shown = format!("{s:?} {transport:?}");
        assert!(shown.contains("authorization") && !shown.contains("s3cret"), "{shown}");
        for bad in [
            "authorization",
            "bad key=s3cret-tok",
            "authorization=s3cret%zz",
            "authorization=s3cret%0Aline",
        ] {
            let e = env(&[("OTEL_EXPORTER_OTLP_TRACES_HEADERS", bad)]);
            let err = ClientSettings::from_env(&e, &TRACES, false).expect_err(bad);
            let text = format!("{err} {err:?}");
            assert!(text.contains("OTEL_EXPORTER_OTLP_TRACES_HEADERS"), "{text}");
            assert!(!text.contains("s3cret"), "{text}");
        }
    }

    #[test]
    fn compression_is_gzip_unless_a_variable_says_none_and_the_signal_variable_wins() {
        let compression = |vars: &[(&str, &str)], signal: &SignalVars| {
            ClientSettings::from_env(&env(vars), signal, false)
                .map(|s| s.compression)
                .expect("valid")
        };
        assert_eq!(compression(&[], &TRACES), Compression::Gzip, "the crate's default");
        assert_eq!(compression(&[], &METRICS), Compression::Gzip, "the crate's default");
        for none in ["none", " NONE ", "None", "\tnone\n"] {
            let vars = [("OTEL_EXPORTER_OTLP_COMPRESSION", none)];
            assert_eq!(compression(&vars, &TRACES), Compression::None, "{none:?}");
            assert_eq!(compression(&vars, &METRICS), Compression::None, "{none:?}");
        }
        for gzip in ["gzip", " GZip "] {
            let vars = [("OTEL_EXPORTER_OTLP_COMPRESSION", gzip)];
            assert_eq!(compression(&vars, &TRACES), Compression::Gzip, "{gzip:?}");
        }
        // Each signal's variable replaces the general one, for its signal only.
        let vars = [
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
            ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip"),
        ];
        assert_eq!(compression(&vars, &TRACES), Compression::Gzip);
        assert_eq!(compression(&vars, &METRICS), Compression::None);
        let vars = [
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "none"),
        ];
        assert_eq!(compression(&vars, &TRACES), Compression::Gzip);
        assert_eq!(compression(&vars, &METRICS), Compression::None);
        let vars = [("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "none")];
        assert_eq!(compression(&vars, &TRACES), Compression::None);
        assert_eq!(compression(&vars, &METRICS), Compression::Gzip);
        // Also for https endpoints (the TLS path returns later).
        let s = ClientSettings::from_env(&env(&[("OTEL_EXPORTER_OTLP_COMPRESSION", "none")]), &TRACES, true)
            .expect("valid");
        assert_eq!(s.compression, Compression::None);
    }

    #[test]
    fn an_unsupported_compression_is_an_error_naming_the_variable() {
        for (var, value) in [
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip,none"),
            ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "deflate"),
            ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "identity"),
        ] {
            let err = ClientSettings::from_env(&env(&[(var, value)]), &TRACES, false).expect_err(value);
            assert!(
                matches!(&err, InitError::InvalidEnv { name, value: v, .. } if *name == var && v == value),
                "{err}"
            );
            let text = err.to_string();
            assert!(text.contains(var) && text.contains("`gzip` or `none`"), "{text}");
        }
        // A bad general value is not read when the signal's own variable is set.
        let vars = [
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "brotli"),
            ("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "none"),
        ];
        assert!(ClientSettings::from_env(&env(&vars), &METRICS, false).is_ok());
        let err = ClientSettings::from_env(&env(&vars), &TRACES, false).expect_err("brotli");
        assert!(
            matches!(&err, InitError::InvalidEnv { name, .. } if *name == "OTEL_EXPORTER_OTLP_COMPRESSION"),
            "{err}"
        );
        let vars = [("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "lz4")];
        let err = ClientSettings::from_env(&env(&vars), &METRICS, false).expect_err("lz4");
        assert!(
            matches!(&err, InitError::InvalidEnv { name, .. } if *name == "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION"),
            "{err}"
        );
    }

    #[test]
    fn tls_files_are_read_for_https_only_and_checked_at_start() {
        let dir = std::env::temp_dir().join(format!("spindle-instrument-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "not a certificate\n").expect("write");
        let not_pem = not_pem.to_str().expect("utf-8");
        let e = env(&[("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem")]);
        assert!(
            ClientSettings::from_env(&e, &TRACES, false).is_ok(),
            "ignored for http://"
        );
        let err = ClientSettings::from_env(&e, &TRACES, true).expect_err("unreadable");
        assert!(
            matches!(&err, InitError::InvalidEnv { name, .. } if *name == "OTEL_EXPORTER_OTLP_CERTIFICATE"),
            "{err}"
        );
        let e = env(&[
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem"),
            ("OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE", not_pem),
        ]);
        let err = ClientSettings::from_env(&e, &METRICS, true).expect_err("not PEM");
        assert!(
            matches!(&err, InitError::InvalidEnv { name, .. } if *name == "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE"),
            "{err}"
        );
        let e = env(&[("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", not_pem)]);
        let err = ClientSettings::from_env(&e, &TRACES, true).expect_err("no key");
        assert!(
            err.to_string().contains("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY"),
            "{err}"
        );
        let e = env(&[("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", not_pem)]);
        let err = ClientSettings::from_env(&e, &TRACES, true).expect_err("no certificate");
        assert!(
            err.to_string().contains("OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE"),
            "{err}"
        );
        let e = env(&[
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", not_pem),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", not_pem),
        ]);
        let err = ClientSettings::from_env(&e, &TRACES, true).expect_err("not a pair");
        assert!(
            matches!(&err, InitError::InvalidEnv { name, .. } if *name == "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
