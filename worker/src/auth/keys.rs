//! The issuer's signing keys (JWKS): parsing a key set, keeping it in the
//! worker, and getting it again. A `jwks_file` is read when the
//! configuration is built (at start and on every reload); a `jwks_url` is
//! fetched in the background at start, when a token names a key id the set
//! does not have, and when the set is older than [`MAX_AGE`], never more
//! often than every [`MIN_FETCH_INTERVAL`] and never on a request's own path.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use foldhash::HashMap;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use http_body_util::BodyExt;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::http::client::{ConnPool, HeaderBlock, Outgoing};

/// At most one fetch of a `jwks_url` per this long, whatever asks for it.
pub(crate) const MIN_FETCH_INTERVAL: Duration = Duration::from_secs(30);
/// A fetched key set older than this is fetched again (keys the issuer
/// withdrew stop being accepted within about this long).
pub(crate) const MAX_AGE: Duration = Duration::from_secs(600);
/// Largest JWKS document read (a file or an answer).
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Most keys kept from one set: a token without a `kid` is tried against
/// each key of its algorithm.
const MAX_KEYS: usize = 64;
/// Bound on one fetch, connection included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a key set could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("reading {path}: {cause}")]
    Read { path: String, cause: std::io::Error },
    #[error("{what} is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge { what: String },
    #[error("{what} is not a JWKS (a JSON object with a \"keys\" array): {cause}")]
    NotJwks {
        what: String,
        cause: serde_json::Error,
    },
    #[error("{what} has no usable signing key (RSA, EC P-256/P-384 or Ed25519)")]
    NoKeys { what: String },
    #[error("fetching {url}: {reason}")]
    Fetch { url: String, reason: String },
}

/// One verification key and the algorithms a token signed with it may name.
pub(crate) struct Key {
    pub(crate) kid: Option<Box<str>>,
    pub(crate) decoding: DecodingKey,
    pub(crate) algorithms: Box<[Algorithm]>,
}

/// A parsed key set.
#[derive(Default)]
pub(crate) struct KeySet {
    pub(crate) keys: Vec<Arc<Key>>,
    by_kid: HashMap<Box<str>, Arc<Key>>,
}

impl KeySet {
    /// Parse a JWKS document. Keys this gateway cannot or must not use are
    /// left out with a log line: symmetric (`oct`) keys (a public JWKS never
    /// holds a secret, and accepting one would let HMAC tokens in),
    /// encryption keys (`use: enc`), unknown types and curves. A set with no
    /// usable key is an error.
    pub(crate) fn parse(text: &[u8], what: &str) -> Result<Self, KeysError> {
        #[derive(serde::Deserialize)]
        struct Doc {
            keys: Vec<serde_json::Value>,
        }
        let doc: Doc = serde_json::from_slice(text).map_err(|cause| KeysError::NotJwks {
            what: what.to_owned(),
            cause,
        })?;
        let mut set = KeySet::default();
        for (i, raw) in doc.keys.into_iter().enumerate() {
            if set.keys.len() >= MAX_KEYS {
                warn!(
                    what,
                    kept = MAX_KEYS,
                    "JWKS has more keys than kept; the rest are ignored"
                );
                break;
            }
            // One by one: a key of a type this crate does not know must not
            // cost the others.
            let jwk: Jwk = match serde_json::from_value(raw) {
                Ok(j) => j,
                Err(e) => {
                    info!(what, index = i, error = %e, "JWKS key not understood; ignored");
                    continue;
                }
            };
            match usable(&jwk) {
                Ok(algorithms) => match DecodingKey::from_jwk(&jwk) {
                    Ok(decoding) => {
                        let key = Arc::new(Key {
                            kid: jwk.common.key_id.as_deref().map(Box::from),
                            decoding,
                            algorithms,
                        });
                        if let Some(kid) = &key.kid {
                            set.by_kid.insert(kid.clone(), key.clone());
                        }
                        set.keys.push(key);
                    }
                    Err(e) => {
                        info!(what, index = i, error = %e, "JWKS key malformed; ignored")
                    }
                },
                Err(why) => info!(what, index = i, why, "JWKS key not used"),
            }
        }
        if set.keys.is_empty() {
            return Err(KeysError::NoKeys {
                what: what.to_owned(),
            });
        }
        Ok(set)
    }

    /// Read and parse a JWKS file.
    pub(crate) fn read(path: &Path) -> Result<Self, KeysError> {
        let what = path.display().to_string();
        let text = std::fs::read(path).map_err(|cause| KeysError::Read {
            path: what.clone(),
            cause,
        })?;
        if text.len() > MAX_JWKS_BYTES {
            return Err(KeysError::TooLarge { what });
        }
        Self::parse(&text, &what)
    }

    pub(crate) fn by_kid(&self, kid: &str) -> Option<&Arc<Key>> {
        self.by_kid.get(kid)
    }
}

/// The algorithms a JWK may verify, or why it is not used.
fn usable(jwk: &Jwk) -> Result<Box<[Algorithm]>, &'static str> {
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return Err("not a signature key (use)");
    }
    let family: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => &[
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            _ => return Err("unsupported curve"),
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => &[Algorithm::EdDSA],
            _ => return Err("unsupported curve"),
        },
        AlgorithmParameters::OctetKey(_) => return Err("symmetric key (HMAC is refused)"),
        _ => return Err("unknown key type"),
    };
    // A key that names its algorithm verifies that one only.
    match jwk.common.key_algorithm {
        None => Ok(family.into()),
        Some(named) => {
            let alg = match named {
                KeyAlgorithm::RS256 => Algorithm::RS256,
                KeyAlgorithm::RS384 => Algorithm::RS384,
                KeyAlgorithm::RS512 => Algorithm::RS512,
                KeyAlgorithm::PS256 => Algorithm::PS256,
                KeyAlgorithm::PS384 => Algorithm::PS384,
                KeyAlgorithm::PS512 => Algorithm::PS512,
                KeyAlgorithm::ES256 => Algorithm::ES256,
                KeyAlgorithm::ES384 => Algorithm::ES384,
                KeyAlgorithm::EdDSA => Algorithm::EdDSA,
                _ => return Err("its alg is not a signature algorithm this gateway accepts"),
            };
            if family.contains(&alg) {
                Ok(Box::new([alg]))
            } else {
                Err("its alg does not fit its key type")
            }
        }
    }
}

/// Where a worker's keys come from, and the set in force.
pub(crate) struct KeyStore {
    set: RwLock<Arc<KeySet>>,
    fetcher: Option<Fetcher>,
}

/// A `jwks_url` and the state of its fetching.
struct Fetcher {
    url: String,
    uri: Uri,
    pool: ConnPool,
    headers: HeaderBlock,
    /// When a fetch last started (`None`: never); under a lock held only to
    /// read or set it.
    last_attempt: Mutex<Option<Instant>>,
    /// When the set in force was fetched.
    fetched_at: Mutex<Option<Instant>>,
    running: AtomicBool,
}

impl KeyStore {
    /// Keys from a file, read now.
    pub(crate) fn from_file(path: &Path) -> Result<Self, KeysError> {
        Ok(Self {
            set: RwLock::new(Arc::new(KeySet::read(path)?)),
            fetcher: None,
        })
    }

    /// No keys at all (a configuration without a key source, which
    /// validation refuses): every token is refused.
    pub(crate) fn empty() -> Self {
        Self {
            set: RwLock::new(Arc::new(KeySet::default())),
            fetcher: None,
        }
    }

    /// Keys from `url` (validated: `https://`, or `http://` to loopback),
    /// empty until the first fetch, which [`KeyStore::refresh`] starts. An
    /// https issuer's certificate must chain to the system's CAs
    /// (`SSL_CERT_FILE`/`SSL_CERT_DIR` say where they are, as for
    /// upstreams).
    pub(crate) fn from_url(url: &str) -> Result<Self, KeysError> {
        let fail = |reason: String| KeysError::Fetch {
            url: url.to_owned(),
            reason,
        };
        let uri: Uri = url.parse().map_err(|e| fail(format!("{e}")))?;
        let tls = match uri.scheme_str() {
            Some("https") => Some(
                mcpgw_protocol::tls::client_config(
                    mcpgw_protocol::tls::UpstreamTlsFiles {
                        ca_file: None,
                        identity: None,
                    },
                    &mut mcpgw_protocol::tls::SystemRoots::default(),
                )
                .map_err(|e| fail(e.to_string()))?
                .config,
            ),
            _ => None,
        };
        let pool = ConnPool::new(&uri, FETCH_TIMEOUT, tls).map_err(fail)?;
        let mut headers = HeaderMap::new();
        let host = uri.authority().map(|a| a.as_str()).unwrap_or_default();
        headers.insert(
            http::header::HOST,
            HeaderValue::from_str(host).map_err(|e| fail(format!("host: {e}")))?,
        );
        headers.insert(
            http::header::ACCEPT,
            HeaderValue::from_static("application/json, application/jwk-set+json"),
        );
        Ok(Self {
            set: RwLock::new(Arc::new(KeySet::default())),
            fetcher: Some(Fetcher {
                url: url.to_owned(),
                uri,
                pool,
                headers: HeaderBlock::new(&headers),
                last_attempt: Mutex::new(None),
                fetched_at: Mutex::new(None),
                running: AtomicBool::new(false),
            }),
        })
    }

    /// The URL this store fetches, if any (a reload with the same URL keeps
    /// the store and its keys).
    pub(crate) fn url(&self) -> Option<&str> {
        self.fetcher.as_ref().map(|f| f.url.as_str())
    }

    /// The key set in force.
    pub(crate) fn current(&self) -> Arc<KeySet> {
        match self.set.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn replace(&self, set: KeySet) {
        let set = Arc::new(set);
        match self.set.write() {
            Ok(mut s) => *s = set,
            Err(poisoned) => *poisoned.into_inner() = set,
        }
    }

    /// Whether the fetched set is older than [`MAX_AGE`] (never fetched
    /// counts as old). Files are never old: a reload re-reads them.
    pub(crate) fn is_stale(&self) -> bool {
        let Some(f) = &self.fetcher else {
            return false;
        };
        let at = *f.fetched_at.lock().unwrap_or_else(|p| p.into_inner());
        at.is_none_or(|t| t.elapsed() > MAX_AGE)
    }

    /// Start a background fetch of the `jwks_url`, unless one is running or
    /// one started less than [`MIN_FETCH_INTERVAL`] ago. Returns at once;
    /// requests go on with the set in force. A no-op for a file.
    pub(crate) fn refresh(self: &Arc<Self>) {
        let Some(f) = &self.fetcher else {
            return;
        };
        {
            let mut last = f.last_attempt.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < MIN_FETCH_INTERVAL)
                || f.running.swap(true, Ordering::AcqRel)
            {
                return;
            }
            *last = Some(Instant::now());
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            f.running.store(false, Ordering::Release);
            return;
        };
        let store = self.clone();
        rt.spawn(async move {
            let Some(f) = &store.fetcher else { return };
            match tokio::time::timeout(FETCH_TIMEOUT, f.fetch()).await {
                Ok(Ok(set)) => {
                    info!(url = %f.url, keys = set.keys.len(), "JWKS fetched");
                    store.replace(set);
                    *f.fetched_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                }
                Ok(Err(e)) => warn!(error = %e, "JWKS fetch failed; the keys in force stay"),
                Err(_) => warn!(url = %f.url, "JWKS fetch timed out; the keys in force stay"),
            }
            f.running.store(false, Ordering::Release);
        });
    }
}

impl Fetcher {
    async fn fetch(&self) -> Result<KeySet, KeysError> {
        let fail = |reason: String| KeysError::Fetch {
            url: self.url.clone(),
            reason,
        };
        let path = self
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let resp = self
            .pool
            .send(Outgoing {
                method: &Method::GET,
                path: &path,
                headers: &self.headers,
                extra: b"",
                body: bytes::Bytes::new(),
            })
            .await
            .map_err(|e| fail(e.to_string()))?;
        if resp.status() != StatusCode::OK {
            return Err(fail(format!("HTTP {}", resp.status())));
        }
        let body = http_body_util::Limited::new(resp.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| fail(format!("reading the answer: {e}")))?
            .to_bytes();
        KeySet::parse(&body, &self.url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA: &str = r#"{"kty":"RSA","kid":"r1","use":"sig","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"}"#;
    const OCT: &str = r#"{"kty":"oct","kid":"h1","k":"c2VjcmV0"}"#;
    const ENC: &str = r#"{"kty":"RSA","kid":"e1","use":"enc","n":"sXch","e":"AQAB"}"#;
    const ED: &str = r#"{"kty":"OKP","crv":"Ed25519","kid":"d1","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;

    #[test]
    fn keeps_signature_keys_and_refuses_secrets() {
        let doc = format!(r#"{{"keys":[{RSA},{OCT},{ENC},{ED},{{"kty":"weird"}}]}}"#);
        let set = KeySet::parse(doc.as_bytes(), "test").expect("parses");
        assert_eq!(set.keys.len(), 2);
        assert!(set.by_kid("r1").is_some());
        assert!(set.by_kid("h1").is_none(), "oct keys are never used");
        assert!(set.by_kid("e1").is_none(), "encryption keys are never used");
        let ed = set.by_kid("d1").expect("ed25519");
        assert_eq!(&*ed.algorithms, &[Algorithm::EdDSA]);
        let rsa = set.by_kid("r1").expect("rsa");
        assert!(!rsa.algorithms.contains(&Algorithm::HS256));
    }

    #[test]
    fn a_set_without_usable_keys_is_an_error() {
        let doc = format!(r#"{{"keys":[{OCT}]}}"#);
        assert!(matches!(
            KeySet::parse(doc.as_bytes(), "t"),
            Err(KeysError::NoKeys { .. })
        ));
        assert!(matches!(
            KeySet::parse(b"[1]", "t"),
            Err(KeysError::NotJwks { .. })
        ));
    }

    #[test]
    fn a_named_alg_narrows_the_key() {
        let doc = r#"{"keys":[{"kty":"RSA","kid":"a","alg":"RS256","n":"sXch","e":"AQAB"},
            {"kty":"RSA","kid":"b","alg":"ES256","n":"sXch","e":"AQAB"}]}"#;
        let set = KeySet::parse(doc.as_bytes(), "t").expect("parses");
        assert_eq!(
            &*set.by_kid("a").expect("a").algorithms,
            &[Algorithm::RS256]
        );
        assert!(set.by_kid("b").is_none(), "alg must fit the key type");
    }
}
