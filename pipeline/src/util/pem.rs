//! Reading PEM files: certificate chains and private keys, with errors that say which file and
//! what was wrong (used by the listeners' TLS and the exporters' client certificates).

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Every certificate in the PEM file at `path`, in order.
///
/// # Errors
/// A message when the file cannot be read or holds no certificate.
pub fn certs(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read `{path}`: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("`{path}` is not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "`{path}` holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)"
        ));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in the PEM file at `path`.
///
/// # Errors
/// A message when the file cannot be read or holds no private key.
pub fn key(path: &str) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read `{path}`: {e}"))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        tokio_rustls::rustls::pki_types::pem::Error::NoItemsFound => {
            format!("`{path}` holds no PEM private key (`-----BEGIN PRIVATE KEY-----`)")
        }
        e => format!("`{path}` is not a valid PEM private key: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_empty_and_wrong_files_are_errors_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("spindle-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not pem\n").unwrap();
        let empty = empty.to_str().unwrap();
        assert!(
            certs("/nonexistent.pem")
                .unwrap_err()
                .contains("cannot read `/nonexistent.pem`")
        );
        assert!(certs(empty).unwrap_err().contains("no PEM certificate"));
        assert!(key(empty).unwrap_err().contains("no PEM private key"));
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = dir.join("cert.pem");
        let keyf = dir.join("key.pem");
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&keyf, ck.signing_key.serialize_pem()).unwrap();
        assert_eq!(certs(cert.to_str().unwrap()).unwrap().len(), 1);
        assert!(key(keyf.to_str().unwrap()).is_ok());
        assert!(key(cert.to_str().unwrap()).is_err(), "a certificate is not a key");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
