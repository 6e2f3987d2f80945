//! Test certificates made with the `openssl` CLI: a CA, server certificates for `localhost` and
//! `127.0.0.1` signed by it (each with its own serial), and client certificates for mTLS.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The PEM certificate.
    pub cert: PathBuf,
    /// The PEM private key (PKCS#8).
    pub key: PathBuf,
}

impl CertFiles {
    /// The certificate's path as a string.
    pub fn cert_str(&self) -> String {
        self.cert.display().to_string()
    }

    /// The key's path as a string.
    pub fn key_str(&self) -> String {
        self.key.display().to_string()
    }
}

/// A throwaway CA in a temporary directory.
#[derive(Debug)]
pub struct Pki {
    /// The directory holding every file (removed on drop).
    pub dir: tempfile::TempDir,
    /// The CA certificate and key.
    pub ca: CertFiles,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("the `openssl` CLI is needed for the TLS tests (apt-get install openssl): {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    /// A new CA named `name` (its subject's CN).
    pub fn new(name: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let subj = format!("/CN={name}");
        openssl(
            dir.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                &subj,
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        let ca = CertFiles {
            cert: dir.path().join("ca.pem"),
            key: dir.path().join("ca.key"),
        };
        Self { dir, ca }
    }

    /// The CA certificate's path as a string.
    pub fn ca_str(&self) -> String {
        self.ca.cert_str()
    }

    fn leaf(&self, file: &str, cn: &str, serial: u32, ext: &str) -> CertFiles {
        let d = self.dir.path();
        let (key, csr, pem, extf) = (
            format!("{file}.key"),
            format!("{file}.csr"),
            format!("{file}.pem"),
            format!("{file}.ext"),
        );
        std::fs::write(d.join(&extf), ext).unwrap();
        let subj = format!("/CN={cn}");
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &subj,
            ],
        );
        let serial = serial.to_string();
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                &serial,
                "-days",
                "2",
                "-out",
                &pem,
                "-extfile",
                &extf,
            ],
        );
        CertFiles {
            cert: d.join(pem),
            key: d.join(key),
        }
    }

    /// A server certificate for `localhost` and `127.0.0.1` with this serial, in `{file}.pem` and
    /// `{file}.key`.
    pub fn server(&self, file: &str, serial: u32) -> CertFiles {
        self.leaf(
            file,
            &format!("spindle test server {serial}"),
            serial,
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
        )
    }

    /// A server certificate for `localhost` and `127.0.0.1` that is also valid as a client
    /// certificate (`extendedKeyUsage=serverAuth,clientAuth`), in `{file}.pem` and `{file}.key`.
    pub fn server_and_client(&self, file: &str, serial: u32) -> CertFiles {
        self.leaf(
            file,
            &format!("spindle test server {serial}"),
            serial,
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n",
        )
    }

    /// A client certificate (for mTLS) in `{file}.pem` and `{file}.key`.
    pub fn client(&self, file: &str) -> CertFiles {
        self.leaf(
            file,
            "spindle test client",
            1000,
            "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n",
        )
    }
}
