//! A test OAuth 2.1 token endpoint for the client-credentials grant, served over real
//! HTTP from the test process: it checks the client's id and secret (HTTP Basic or in
//! the form), issues tokens with the lifetime the test sets, counts requests, can be
//! told to fail, and publishes the tokens it issued (each with its expiry, plus a
//! second of grace for the trip) in a bearer file that `counter-server --bearer-file`
//! reads on every request: the upstream then accepts exactly the tokens this endpoint
//! issued and has not revoked.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use serde_json::json;

use crate::process::TempDir;

/// Added to each token's expiry in the bearer file: the upstream still takes a token
/// sent just before its end.
const GRACE: Duration = Duration::from_secs(1);

/// How the endpoint answers instead of issuing a token.
#[derive(Debug, Clone, Copy)]
pub enum Failure {
    /// HTTP 400 with `{"error": CODE}` (RFC 6749 §5.2).
    OAuth(&'static str),
    /// HTTP 503 with a plain text body.
    Unavailable,
}

struct Idp {
    client_id: String,
    secret: Mutex<String>,
    lifetime: Mutex<Duration>,
    failure: Mutex<Option<Failure>>,
    requests: AtomicU64,
    issued: AtomicU64,
    /// Issued, unrevoked tokens and their expiry (Unix ms, grace included).
    valid: Mutex<Vec<(String, u128)>>,
    bearer_file: PathBuf,
    /// Every form body received, in order.
    forms: Mutex<Vec<String>>,
    /// Every `Authorization` header received, in order.
    client_auth: Mutex<Vec<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

impl Idp {
    /// Rewrite the bearer file from `valid` (whole, by rename).
    fn publish(&self, valid: &[(String, u128)]) {
        let text: String = valid.iter().map(|(t, ms)| format!("{t} {ms}\n")).collect();
        let tmp = self.bearer_file.with_extension("tmp");
        if std::fs::write(&tmp, text).is_ok() {
            let _ = std::fs::rename(&tmp, &self.bearer_file);
        }
    }

    /// Whether the request authenticates the client, by Basic or in the form.
    fn authenticated(&self, headers: &HeaderMap, form: &[(String, String)]) -> bool {
        let secret = lock(&self.secret).clone();
        let basic = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .and_then(|b| String::from_utf8(b).ok());
        let field = |name: &str| {
            form.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        match basic {
            Some(pair) => pair == format!("{}:{secret}", self.client_id),
            None => {
                field("client_id") == Some(self.client_id.as_str())
                    && field("client_secret") == Some(secret.as_str())
            }
        }
    }
}

/// A running token endpoint; stops when dropped.
pub struct TokenEndpoint {
    pub addr: SocketAddr,
    idp: Arc<Idp>,
    task: tokio::task::JoinHandle<()>,
    _dir: TempDir,
}

impl Drop for TokenEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TokenEndpoint {
    /// An endpoint for client `client_id` with `secret`, issuing tokens that live an hour.
    pub async fn start(client_id: &str, secret: &str) -> Result<Self> {
        let dir = TempDir::new("mcpgw-idp")?;
        let idp = Arc::new(Idp {
            client_id: client_id.to_owned(),
            secret: Mutex::new(secret.to_owned()),
            lifetime: Mutex::new(Duration::from_secs(3600)),
            failure: Mutex::new(None),
            requests: AtomicU64::new(0),
            issued: AtomicU64::new(0),
            valid: Mutex::new(Vec::new()),
            bearer_file: dir.path().join("bearer"),
            forms: Mutex::new(Vec::new()),
            client_auth: Mutex::new(Vec::new()),
        });
        idp.publish(&[]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/oauth/token", post(token))
            .with_state(idp.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("token endpoint stopped: {e}");
            }
        });
        Ok(Self {
            addr,
            idp,
            task,
            _dir: dir,
        })
    }

    pub fn token_url(&self) -> String {
        format!("http://{}/oauth/token", self.addr)
    }

    /// The file `counter-server --bearer-file` reads.
    pub fn bearer_file(&self) -> PathBuf {
        self.idp.bearer_file.clone()
    }

    /// Token requests received, answered or not.
    pub fn requests(&self) -> u64 {
        self.idp.requests.load(Ordering::SeqCst)
    }

    /// Tokens issued.
    pub fn issued(&self) -> u64 {
        self.idp.issued.load(Ordering::SeqCst)
    }

    /// `expires_in` of the tokens issued from now on.
    pub fn set_lifetime(&self, lifetime: Duration) {
        *lock(&self.idp.lifetime) = lifetime;
    }

    /// Fail every request from now on (`None`: issue tokens again).
    pub fn fail_with(&self, failure: Option<Failure>) {
        *lock(&self.idp.failure) = failure;
    }

    /// The secret the client must present from now on.
    pub fn set_secret(&self, secret: &str) {
        *lock(&self.idp.secret) = secret.to_owned();
    }

    /// Every token issued so far stops being accepted by the upstream.
    pub fn revoke_all(&self) {
        let mut valid = lock(&self.idp.valid);
        valid.clear();
        self.idp.publish(&valid);
    }

    /// The form bodies received, in order.
    pub fn forms(&self) -> Vec<String> {
        lock(&self.idp.forms).clone()
    }

    /// The `Authorization` headers received, in order.
    pub fn client_auth(&self) -> Vec<String> {
        lock(&self.idp.client_auth).clone()
    }
}

/// `application/x-www-form-urlencoded` pairs, decoded.
fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = |b: u8| char::from(b).to_digit(16);
                    match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                        (Some(hi), Some(lo)) => {
                            out.push((hi * 16 + lo) as u8);
                            i += 2;
                        }
                        _ => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

async fn token(State(idp): State<Arc<Idp>>, headers: HeaderMap, body: Bytes) -> Response {
    idp.requests.fetch_add(1, Ordering::SeqCst);
    lock(&idp.forms).push(String::from_utf8_lossy(&body).into_owned());
    if let Some(auth) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        lock(&idp.client_auth).push(auth.to_owned());
    }
    let failure = *lock(&idp.failure);
    match failure {
        Some(Failure::OAuth(code)) => {
            return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": code}))).into_response();
        }
        Some(Failure::Unavailable) => {
            return (StatusCode::SERVICE_UNAVAILABLE, "down for maintenance\n").into_response();
        }
        None => {}
    }
    let form = parse_form(&body);
    if !idp.authenticated(&headers, &form) {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "invalid_client", "error_description": "client authentication failed"})),
        )
            .into_response();
    }
    if !form
        .iter()
        .any(|(k, v)| k == "grant_type" && v == "client_credentials")
    {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "unsupported_grant_type"})),
        )
            .into_response();
    }
    let n = idp.issued.fetch_add(1, Ordering::SeqCst) + 1;
    let mut raw = [0u8; 12];
    if getrandom::fill(&mut raw).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let random: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let access_token = format!("tok{n}.{random}");
    let lifetime = *lock(&idp.lifetime);
    {
        let mut valid = lock(&idp.valid);
        let now = now_ms();
        valid.retain(|(_, until)| *until > now);
        valid.push((access_token.clone(), now + (lifetime + GRACE).as_millis()));
        idp.publish(&valid);
    }
    axum::Json(json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": lifetime.as_secs(),
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode() {
        assert_eq!(
            parse_form(b"grant_type=client_credentials&scope=a+b&resource=http%3A%2F%2Fx"),
            [
                ("grant_type".to_owned(), "client_credentials".to_owned()),
                ("scope".to_owned(), "a b".to_owned()),
                ("resource".to_owned(), "http://x".to_owned()),
            ]
        );
    }
}
