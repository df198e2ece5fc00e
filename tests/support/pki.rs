//! A throwaway PKI for the TLS tests (listener and upstream), made with the
//! `openssl` command in a temporary directory.

use std::process::Command;

use crate::process::TempDir;

/// A throwaway PKI made with the `openssl` command: a CA and leaf
/// certificates for 127.0.0.1 signed by it. Each `Pki` is its own CA.
pub struct Pki {
    dir: TempDir,
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

impl Pki {
    pub fn new() -> Self {
        Self::with_ca_name("mcpgw test CA")
    }

    /// A PKI whose CA has this common name (two CAs of the same name look
    /// like one CA with a bad signature to a verifier).
    pub fn with_ca_name(ca_name: &str) -> Self {
        let dir = TempDir::new("mcpgw-pki").expect("temp dir");
        let pki = Self { dir };
        pki.openssl(&[
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
            "30",
            "-subj",
            &format!("/CN={ca_name}"),
        ]);
        std::fs::write(pki.path("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").expect("ext");
        pki
    }

    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    pub fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("the openssl command is installed");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A new leaf key and certificate for 127.0.0.1 written to `cert.pem` / `key.pem`
    /// (replacing the previous ones); returns the certificate's DER.
    pub fn issue_leaf(&self) -> Vec<u8> {
        self.sign_leaf(["cert.pem", "key.pem", "leaf.csr", "ext.cnf"], "127.0.0.1");
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        CertificateDer::from_pem_file(self.path("cert.pem"))
            .expect("leaf")
            .to_vec()
    }

    /// A server configuration with a new certificate for `ip` (files `{stem}.pem` /
    /// `{stem}.key`) signed by this CA.
    pub fn server_config(&self, stem: &str, ip: &str) -> rustls::ServerConfig {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        self.issue(stem, ip, &format!("subjectAltName=IP:{ip}"));
        let chain = CertificateDer::pem_file_iter(self.path(&format!("{stem}.pem")))
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .expect("certificate");
        let key = PrivateKeyDer::from_pem_file(self.path(&format!("{stem}.key"))).expect("key");
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server config");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config
    }

    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(self.path("ca.pem")).expect("ca"))
            .expect("trust the CA");
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
    }

    /// A new leaf key and certificate signed by this CA, written to
    /// `{stem}.pem` / `{stem}.key`, with the given X.509 v3 extensions
    /// (e.g. `subjectAltName=IP:127.0.0.1` or `extendedKeyUsage=clientAuth`).
    pub fn issue(&self, stem: &str, cn: &str, extensions: &str) {
        let (cert, key, csr, ext) = (
            format!("{stem}.pem"),
            format!("{stem}.key"),
            format!("{stem}.csr"),
            format!("{stem}.cnf"),
        );
        std::fs::write(self.path(&ext), format!("{extensions}\n")).expect("extensions");
        self.sign_leaf([&cert, &key, &csr, &ext], cn);
    }

    /// A new P-256 key and a certificate for `cn` signed by this CA, valid for a week,
    /// with the extensions in the `ext` file: `[cert, key, csr, ext]` name the files.
    fn sign_leaf(&self, [cert, key, csr, ext]: [&str; 4], cn: &str) {
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            key,
            "-out",
            csr,
            "-subj",
            &format!("/CN={cn}"),
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            cert,
            "-days",
            "7",
            "-extfile",
            ext,
        ]);
    }
}
