//! Checks every exporter's config shares: the endpoint URL, the retry backoff pair, the
//! configured headers and the TLS files. Each exporter's `validate()` calls them with its own key prefix.

use crate::config::types::{DurationStr, Problem};

/// An exporter endpoint must be an `http://` or `https://` URL with a host.
pub(crate) fn endpoint_problem(path: &str, endpoint: &str, hint: &str) -> Option<Problem> {
    let ok = endpoint
        .parse::<http::Uri>()
        .ok()
        .filter(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some());
    ok.is_none().then(|| Problem {
        path: path.into(),
        message: format!(
            "`{}` is not an http:// or https:// URL with a host",
            crate::util::redact::url(endpoint)
        ),
        hint: hint.into(),
    })
}

/// An exporter's first retry delay must not exceed its longest one.
pub(crate) fn backoff_problem(prefix: &str, initial: DurationStr, max: DurationStr) -> Option<Problem> {
    (initial.0 > max.0).then(|| Problem {
        path: format!("{prefix}.retry_initial_backoff"),
        message: "is longer than retry_max_backoff".into(),
        hint: "e.g. initial `100ms`, max `5s`".into(),
    })
}

/// Every configured header must be a valid HTTP header name and value.
pub(crate) fn header_problems(prefix: &str, headers: &std::collections::BTreeMap<String, String>) -> Vec<Problem> {
    let mut out = Vec::new();
    for (k, v) in headers {
        let problem = if http::HeaderName::from_bytes(k.as_bytes()).is_err() {
            (
                "is not a valid HTTP header name",
                "use letters, digits and `-`, e.g. `X-Scope-OrgID`",
            )
        } else if http::HeaderValue::from_str(v).is_err() {
            (
                "is not a valid HTTP header value",
                "use visible ASCII without line breaks",
            )
        } else {
            continue;
        };
        out.push(Problem {
            path: format!("{prefix}.headers.{k}"),
            message: problem.0.into(),
            hint: problem.1.into(),
        });
    }
    out
}

/// The value of a `headers_from_files` entry: the file's text without its trailing line break(s).
/// Errors name the file, never its content.
pub(crate) fn read_header_file(path: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read `{path}`: {e}"))?;
    let value = text.trim_end_matches(['\n', '\r']);
    if value.is_empty() {
        return Err(format!("`{path}` is empty"));
    }
    if http::HeaderValue::from_str(value).is_err() {
        return Err(format!(
            "`{path}` does not hold a valid HTTP header value (visible ASCII on one line)"
        ));
    }
    Ok(value.to_owned())
}

/// Every `headers_from_files` entry must be a valid header name, not also in `headers`, and name
/// a readable file holding a valid header value (read here, so `spindle validate` reports it).
pub(crate) fn header_file_problems(
    prefix: &str,
    headers: &std::collections::BTreeMap<String, String>,
    files: &std::collections::BTreeMap<String, String>,
) -> Vec<Problem> {
    let mut out = Vec::new();
    for (k, path) in files {
        let problem = |message: String, hint: &str| Problem {
            path: format!("{prefix}.headers_from_files.{k}"),
            message,
            hint: hint.into(),
        };
        if http::HeaderName::from_bytes(k.as_bytes()).is_err() {
            out.push(problem(
                "is not a valid HTTP header name".into(),
                "use letters, digits and `-`, e.g. `authorization`",
            ));
        } else if headers.keys().any(|h| h.eq_ignore_ascii_case(k)) {
            out.push(problem(
                format!("`{k}` is also in {prefix}.headers"),
                "set each header in one of the two",
            ));
        } else if let Err(e) = read_header_file(path) {
            out.push(problem(
                e,
                "the path of a file holding the value alone, e.g. `Bearer <token>` (a trailing newline is dropped)",
            ));
        }
    }
    out
}

/// The headers an exporter sends: `headers`, and the values of `headers_from_files` read now.
///
/// # Errors
/// [`BuildError::HeaderFile`] when a file cannot be read or holds no valid value.
pub(crate) fn resolved_headers(
    headers: &std::collections::BTreeMap<String, String>,
    files: &std::collections::BTreeMap<String, String>,
) -> Result<std::collections::BTreeMap<String, String>, crate::export::sender::BuildError> {
    let mut out = headers.clone();
    for (k, path) in files {
        let value = read_header_file(path).map_err(|e| crate::export::sender::BuildError::HeaderFile(k.clone(), e))?;
        out.insert(k.clone(), value);
    }
    Ok(out)
}

/// The client TLS files: `ca_file` must hold certificates; `cert_file` and `key_file` (the client
/// certificate for mTLS) go together and must hold a certificate and its key.
pub(crate) fn tls_problems(prefix: &str, ca: Option<&str>, cert: Option<&str>, key: Option<&str>) -> Vec<Problem> {
    use crate::util::pem;
    let problem = |k: &str, message: String, hint: &str| Problem {
        path: format!("{prefix}.{k}"),
        message,
        hint: hint.into(),
    };
    let mut out = Vec::new();
    if let Some(ca) = ca
        && let Err(e) = pem::certs(ca)
    {
        out.push(problem("ca_file", e, "give the path of a PEM certificate"));
    }
    match (cert, key) {
        (None, None) => {}
        (Some(_), None) => out.push(problem(
            "key_file",
            "missing: cert_file is set".into(),
            "the path of the PEM private key of cert_file",
        )),
        (None, Some(_)) => out.push(problem(
            "cert_file",
            "missing: key_file is set".into(),
            "the path of the PEM client certificate whose key key_file holds",
        )),
        (Some(cert), Some(key)) => {
            if let Err(e) = pem::certs(cert) {
                out.push(problem("cert_file", e, "the path of a PEM client certificate"));
            }
            if let Err(e) = pem::key(key) {
                out.push(problem("key_file", e, "the path of a PEM private key"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::config::testing::problems;

    #[test]
    fn both_exporters_share_endpoint_backoff_and_header_checks() {
        let p = problems(
            "exporters:\n  traces:\n    otlp:\n      endpoint: tempo:4317\n      headers: {\"bad key\": x}\n      retry_initial_backoff: 10s\n      retry_max_backoff: 1s\n  remote_write:\n    endpoint: ftp://x\n    headers: {\"bad key\": x}\n    retry_initial_backoff: 10s\n    retry_max_backoff: 1s\n",
        );
        let paths: Vec<_> = p.iter().map(|p| p.path.as_str()).collect();
        for prefix in ["exporters.traces.otlp", "exporters.remote_write"] {
            for key in ["endpoint", "headers.bad key", "retry_initial_backoff"] {
                assert!(
                    paths.contains(&format!("{prefix}.{key}").as_str()),
                    "{prefix}.{key} missing: {paths:?}"
                );
            }
        }
    }

    #[test]
    fn client_certificate_and_key_go_together_and_must_be_readable() {
        use super::tls_problems;
        let paths = |v: Vec<crate::config::types::Problem>| v.into_iter().map(|p| p.path).collect::<Vec<_>>();
        assert!(tls_problems("x", None, None, None).is_empty());
        assert_eq!(paths(tls_problems("x", None, Some("/c"), None)), ["x.key_file"]);
        assert_eq!(paths(tls_problems("x", None, None, Some("/k"))), ["x.cert_file"]);
        assert_eq!(
            paths(tls_problems(
                "x",
                Some("/nonexistent"),
                Some("/nonexistent"),
                Some("/nonexistent")
            )),
            ["x.ca_file", "x.cert_file", "x.key_file"]
        );
        let p = problems(
            "exporters:\n  traces:\n    otlp:\n      endpoint: https://tempo:4317\n      cert_file: /nonexistent.pem\n  remote_write:\n    endpoint: https://prom/api/v1/write\n    key_file: /k.pem\n",
        );
        let got: Vec<_> = p.iter().map(|p| p.path.as_str()).collect();
        assert!(got.contains(&"exporters.traces.otlp.key_file"), "{got:?}");
        assert!(got.contains(&"exporters.remote_write.cert_file"), "{got:?}");
    }
}
