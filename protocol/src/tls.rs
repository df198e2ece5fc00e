//! TLS material: reading a certificate chain and key into a rustls server
//! configuration, an `https://` upstream's files (CA bundle, client
//! identity) into a rustls client configuration, and the leaf certificate's
//! expiry.
//!
//! Both processes read the same files the same way: the supervisor to refuse
//! a bad configuration (at start, on reload, in `check-config`) and to export
//! the expiry metric, the workers to terminate TLS and to connect to https
//! upstreams. Only HTTP/1.1 is offered (ALPN `http/1.1`). Upstream
//! certificates are always verified, with SNI: there is no switch to turn
//! either off.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: rustls::pki_types::pem::Error,
    },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("the certificate and key do not make a usable server identity: {0}")]
    Identity(rustls::Error),
    #[error("cannot read the certificate's validity period")]
    Validity,
    #[error("reading {path}: {cause}")]
    ReadFile {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path} holds no private key (PEM PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)")]
    NoKey { path: PathBuf },
    #[error("{path} holds no usable CA certificate")]
    NoCa { path: PathBuf },
    /// `detail` is empty or ` (what the loader said)`.
    #[error(
        "no system CA certificates could be loaded{detail}; set ca_file for this upstream \
         (or SSL_CERT_FILE / SSL_CERT_DIR for the gateway)"
    )]
    NoSystemRoots { detail: String },
    #[error("the client certificate and key do not make a usable client identity: {0}")]
    ClientIdentity(rustls::Error),
}

/// The certificate chain (leaf first) and private key from PEM files.
pub fn load_identity(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|cause| TlsError::Read {
            path: cert.to_owned(),
            cause,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|cause| TlsError::Read {
        path: key.to_owned(),
        cause,
    })?;
    Ok((chain, key))
}

/// A server configuration for these files; checks that key and certificate
/// belong together.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let (chain, key) = load_identity(cert, key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Identity)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(TlsError::Identity)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The TLS files of one `https://` upstream (see `config::Upstream`).
#[derive(Debug, Clone, Copy, Default)]
pub struct UpstreamTlsFiles<'a> {
    /// Trust these CAs instead of the system roots.
    pub ca_file: Option<&'a Path>,
    /// Client certificate chain and key (mTLS).
    pub identity: Option<(&'a Path, &'a Path)>,
}

/// An upstream's TLS client configuration, built once per upstream and
/// (re)load and shared by all its connections.
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub config: Arc<rustls::ClientConfig>,
    /// A digest of the bytes of the files it was built from: a reload that
    /// finds the same paths with new contents sees a different value, and
    /// re-opens the upstream's connections and sessions.
    pub fingerprint: u64,
}

/// Why an upstream's TLS configuration could not be built, and which of
/// its keys to fix.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {cause}")]
pub struct UpstreamTlsError {
    /// `ca_file`, `client_cert_file`, `client_key_file` or `url` (system
    /// roots for an https URL).
    pub key: &'static str,
    pub cause: TlsError,
}

/// The system's CA certificates, loaded on first need and then shared by
/// every upstream of one (re)load (loading parses the whole bundle).
#[derive(Default)]
pub struct SystemRoots(Option<Arc<rustls::RootCertStore>>);

impl SystemRoots {
    fn get(&mut self) -> Result<Arc<rustls::RootCertStore>, TlsError> {
        if let Some(roots) = &self.0 {
            return Ok(roots.clone());
        }
        // Honours SSL_CERT_FILE and SSL_CERT_DIR; on Linux the
        // distribution's bundle otherwise.
        let found = rustls_native_certs::load_native_certs();
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(found.certs);
        if roots.is_empty() {
            let errors = found
                .errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            let detail = if errors.is_empty() {
                String::new()
            } else {
                format!(" ({errors})")
            };
            return Err(TlsError::NoSystemRoots { detail });
        }
        let roots = Arc::new(roots);
        self.0 = Some(roots.clone());
        Ok(roots)
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|cause| TlsError::ReadFile {
        path: path.to_owned(),
        cause,
    })
}

/// A client configuration for an `https://` upstream: its CA bundle (else
/// the system roots from `system`), its client identity if any, ALPN
/// `http/1.1`. Certificate and host name verification are rustls's
/// defaults and cannot be turned off.
pub fn client_config(
    files: UpstreamTlsFiles<'_>,
    system: &mut SystemRoots,
) -> Result<ClientTls, UpstreamTlsError> {
    use std::hash::{Hash, Hasher};
    let at = |key: &'static str| move |cause: TlsError| UpstreamTlsError { key, cause };
    // Not adversarial: only tells one version of these files from the next.
    let mut digest = std::hash::DefaultHasher::new();
    let roots = match files.ca_file {
        Some(path) => {
            let pem = read_file(path).map_err(at("ca_file"))?;
            pem.hash(&mut digest);
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|cause| TlsError::Read {
                    path: path.to_owned(),
                    cause,
                })
                .map_err(at("ca_file"))?;
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates(certs);
            if roots.is_empty() {
                return Err(at("ca_file")(TlsError::NoCa {
                    path: path.to_owned(),
                }));
            }
            Arc::new(roots)
        }
        None => system.get().map_err(at("url"))?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| at("url")(TlsError::ClientIdentity(e)))?
        .with_root_certificates(roots);
    let mut config = match files.identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let cert_pem = read_file(cert).map_err(at("client_cert_file"))?;
            let key_pem = read_file(key).map_err(at("client_key_file"))?;
            cert_pem.hash(&mut digest);
            key_pem.hash(&mut digest);
            let chain = CertificateDer::pem_slice_iter(&cert_pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|cause| TlsError::Read {
                    path: cert.to_owned(),
                    cause,
                })
                .map_err(at("client_cert_file"))?;
            if chain.is_empty() {
                return Err(at("client_cert_file")(TlsError::NoCertificate {
                    path: cert.to_owned(),
                }));
            }
            let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
                .map_err(|cause| match cause {
                    rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
                        path: key.to_owned(),
                    },
                    cause => TlsError::Read {
                        path: key.to_owned(),
                        cause,
                    },
                })
                .map_err(at("client_key_file"))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| at("client_key_file")(TlsError::ClientIdentity(e)))?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(ClientTls {
        config: Arc::new(config),
        fingerprint: digest.finish(),
    })
}

/// When the leaf certificate in `cert` expires, in seconds since the epoch.
pub fn not_after(cert: &Path) -> Result<i64, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|mut certs| certs.next().transpose())
        .map_err(|cause| TlsError::Read {
            path: cert.to_owned(),
            cause,
        })?
        .ok_or_else(|| TlsError::NoCertificate {
            path: cert.to_owned(),
        })?;
    der_not_after(chain.as_ref()).ok_or(TlsError::Validity)
}

/// Walk the DER of an X.509 certificate to `tbsCertificate.validity.notAfter`.
fn der_not_after(der: &[u8]) -> Option<i64> {
    let (cert, _) = der_item(der, 0x30)?;
    let (mut tbs, _) = der_item(cert, 0x30)?;
    if tbs.first() == Some(&0xa0) {
        tbs = der_skip(tbs)?; // [0] EXPLICIT version
    }
    tbs = der_skip(tbs)?; // serialNumber
    tbs = der_skip(tbs)?; // signature
    tbs = der_skip(tbs)?; // issuer
    let (validity, _) = der_item(tbs, 0x30)?;
    let after = der_skip(validity)?; // notBefore
    let tag = *after.first()?;
    let (time, _) = der_item(after, tag)?;
    let text = std::str::from_utf8(time).ok()?;
    let digits = text.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 => {
            let yy: i64 = digits.get(0..2)?.parse().ok()?;
            (
                if yy >= 50 { 1900 + yy } else { 2000 + yy },
                digits.get(2..)?,
            )
        }
        0x18 => (digits.get(0..4)?.parse().ok()?, digits.get(4..)?),
        _ => return None,
    };
    let field = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let (month, day, hour, minute, second) =
        (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second)
}

/// One DER item with the expected tag: (contents, rest).
fn der_item(der: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    if *der.first()? != tag {
        return None;
    }
    let first = *der.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let len = der
            .get(2..2 + n)?
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    Some((der.get(header..end)?, der.get(end..)?))
}

fn der_skip(der: &[u8]) -> Option<&[u8]> {
    der_item(der, *der.first()?).map(|(_, rest)| rest)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2038, 1, 19), 24_855);
    }

    #[test]
    fn validity_from_hand_made_der() {
        // SEQ { SEQ { [0]{INT 2}, INT 1, SEQ{}, SEQ{}, SEQ { UTCTime, GeneralizedTime } } }
        let not_before = b"\x17\x0d700101000000Z";
        let not_after = b"\x18\x0f20380119031407Z";
        let mut validity = vec![0x30, (not_before.len() + not_after.len()) as u8];
        validity.extend_from_slice(not_before);
        validity.extend_from_slice(not_after);
        let mut tbs_body = vec![0xa0, 3, 2, 1, 2, 2, 1, 1, 0x30, 0, 0x30, 0];
        tbs_body.extend_from_slice(&validity);
        let mut tbs = vec![0x30, tbs_body.len() as u8];
        tbs.extend_from_slice(&tbs_body);
        let mut cert = vec![0x30, tbs.len() as u8];
        cert.extend_from_slice(&tbs);
        assert_eq!(der_not_after(&cert), Some(2_147_483_647));
        assert_eq!(der_not_after(&cert[..cert.len() - 3]), None);
        assert_eq!(der_not_after(b"\x02\x01\x00"), None);
    }
}
