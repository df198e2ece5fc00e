//! One exchange with an upstream's token endpoint: the client-credentials
//! grant request (RFC 6749 §4.4: a form POST, the client authenticated by
//! HTTP Basic or in the form, RFC 8707 `resource`), and the answer read as
//! a token (§5.1) or an OAuth error (§5.2). Blind to caching; the parent
//! module decides when to ask.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use http_body_util::BodyExt;
use mcpgw_protocol::config::{ClientAuthMethod, UpstreamOAuth};
use serde::Deserialize;
use tokio_rustls::rustls::ClientConfig;

use crate::http::client::{ConnPool, HeaderBlock, Outgoing};

/// Bound on one token request, connection and answer included.
pub(crate) const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest token endpoint answer read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// A token without `expires_in` is taken to live this long (RFC 6749 makes
/// it optional); an upstream's 401 ends it sooner.
pub(crate) const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// Longest lifetime believed: a year-long token is refreshed daily anyway.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// How much of an IdP's `error` and `error_description` is kept for logs
/// and the client's error message.
const MAX_ERROR_TEXT: usize = 200;

/// Why no token came from the token endpoint. Messages never carry the
/// client secret or a token; `Clone` so every request waiting on one fetch
/// gets its failure.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum TokenError {
    #[error("its token endpoint {url} is unreachable: {reason}")]
    Transport { url: Arc<str>, reason: String },
    #[error("its token endpoint {url} did not answer within {} s", FETCH_TIMEOUT.as_secs())]
    Timeout { url: Arc<str> },
    #[error("its token endpoint refused the grant: {code}{} (HTTP {status})",
        description.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    OAuth {
        /// The RFC 6749 §5.2 `error` code (`invalid_client`, …).
        code: String,
        description: Option<String>,
        status: StatusCode,
    },
    #[error("its token endpoint answered HTTP {status}")]
    Status { status: StatusCode },
    #[error("its token endpoint's answer is not a usable token: {reason}")]
    Answer { reason: String },
    #[error("the upstream refused a token issued for it just now (HTTP 401)")]
    Rejected,
}

impl TokenError {
    /// `outcome` label of `mcpgw_upstream_token_fetches_total`.
    pub(crate) fn outcome(&self) -> &'static str {
        match self {
            Self::Transport { .. } => "transport",
            Self::Timeout { .. } => "timeout",
            Self::OAuth { .. } => "oauth_error",
            Self::Status { .. } => "http_error",
            Self::Answer { .. } => "bad_answer",
            Self::Rejected => "rejected",
        }
    }

    /// The OAuth error code, for the log line.
    pub(crate) fn oauth_code(&self) -> Option<&str> {
        match self {
            Self::OAuth { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Every outcome label, so their series exist from the start.
pub(crate) const OUTCOMES: [&str; 6] = [
    "ok",
    "transport",
    "timeout",
    "oauth_error",
    "http_error",
    "bad_answer",
];

/// A token as the endpoint issued it.
#[derive(Debug)]
pub(crate) struct Issued {
    pub(crate) access_token: String,
    /// `expires_in`, bounded; [`DEFAULT_LIFETIME`] without it.
    pub(crate) lifetime: Duration,
}

/// An upstream's token endpoint and the request made to it, built once.
pub(crate) struct Grant {
    /// The URL with user info and query values hidden, for messages.
    url: Arc<str>,
    path: Box<str>,
    pool: ConnPool,
    headers: HeaderBlock,
    /// The form body: the same for every request.
    form: Bytes,
}

impl Grant {
    /// `tls`: the upstream's client configuration, for an `https://`
    /// token endpoint. The reason of an error names no secret.
    pub(crate) fn new(
        cfg: &UpstreamOAuth,
        connect_timeout: Duration,
        tls: Option<Arc<ClientConfig>>,
    ) -> Result<Self, String> {
        let shown = mcpgw_protocol::redact::url(&cfg.token_url);
        let uri: Uri = cfg
            .token_url
            .parse()
            .map_err(|e| format!("oauth.token_url {shown:?}: {e}"))?;
        let tls = if cfg.is_https() { tls } else { None };
        let pool = ConnPool::new(&uri, connect_timeout, tls)
            .map_err(|e| format!("oauth.token_url {shown:?}: {e}"))?;
        let mut headers = HeaderMap::with_capacity(5);
        let authority = uri
            .authority()
            .ok_or_else(|| format!("oauth.token_url {shown:?} has no host"))?;
        headers.insert(
            HOST,
            HeaderValue::from_str(authority.as_str())
                .map_err(|e| format!("oauth.token_url {shown:?}: host: {e}"))?,
        );
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if cfg.auth_method == ClientAuthMethod::ClientSecretBasic {
            let mut basic = HeaderValue::from_str(&basic_credentials(cfg))
                .map_err(|_| "oauth.client_id: not usable in a header".to_owned())?;
            basic.set_sensitive(true);
            headers.insert(AUTHORIZATION, basic);
        }
        Ok(Self {
            url: Arc::from(shown),
            path: uri.path_and_query().map_or("/", |pq| pq.as_str()).into(),
            pool,
            headers: HeaderBlock::new(&headers),
            form: Bytes::from(form(cfg)),
        })
    }

    /// Ask for a token, bounded by [`FETCH_TIMEOUT`].
    pub(crate) async fn fetch(&self) -> Result<Issued, TokenError> {
        tokio::time::timeout(FETCH_TIMEOUT, self.exchange())
            .await
            .unwrap_or_else(|_| {
                Err(TokenError::Timeout {
                    url: self.url.clone(),
                })
            })
    }

    async fn exchange(&self) -> Result<Issued, TokenError> {
        let resp = self
            .pool
            .send(Outgoing {
                method: &Method::POST,
                path: &self.path,
                headers: &self.headers,
                extra: b"",
                body: self.form.clone(),
            })
            .await
            .map_err(|e| TokenError::Transport {
                url: self.url.clone(),
                reason: e.to_string(),
            })?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| TokenError::Answer {
                reason: format!("reading it (at most {MAX_ANSWER_BYTES} bytes): {e}"),
            })?
            .to_bytes();
        answer(status, &body)
    }
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))` (RFC 6749 §2.3.1).
fn basic_credentials(cfg: &UpstreamOAuth) -> String {
    let mut pair = String::with_capacity(cfg.client_id.len() + cfg.client_secret.len() + 8);
    form_encode(&mut pair, &cfg.client_id);
    pair.push(':');
    form_encode(&mut pair, &cfg.client_secret);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// The grant's form body.
fn form(cfg: &UpstreamOAuth) -> String {
    let mut out = String::from("grant_type=client_credentials");
    let mut field = |name: &str, value: &str| {
        out.push('&');
        out.push_str(name);
        out.push('=');
        form_encode(&mut out, value);
    };
    if !cfg.scopes.is_empty() {
        field("scope", &cfg.scopes.join(" "));
    }
    if let Some(resource) = &cfg.resource {
        field("resource", resource);
    }
    if cfg.auth_method == ClientAuthMethod::ClientSecretPost {
        field("client_id", &cfg.client_id);
        field("client_secret", &cfg.client_secret);
    }
    out
}

/// `application/x-www-form-urlencoded` (the WHATWG URL spec's byte
/// serializer, which RFC 6749 Appendix B names): `*-._` and alphanumerics
/// stay, space is `+`, every other byte of the UTF-8 is `%XX`.
fn form_encode(out: &mut String, value: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in value.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => {
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xf)]));
            }
        }
    }
}

#[derive(Deserialize)]
struct Success {
    access_token: String,
    token_type: String,
    #[serde(default)]
    expires_in: Option<ExpiresIn>,
}

/// A number, as RFC 6749 says; some servers send it as a string.
#[derive(Deserialize)]
#[serde(untagged)]
enum ExpiresIn {
    Number(f64),
    Text(String),
}

#[derive(Deserialize)]
struct Failure {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// What the token endpoint's answer means.
fn answer(status: StatusCode, body: &[u8]) -> Result<Issued, TokenError> {
    if !status.is_success() {
        return Err(match serde_json::from_slice::<Failure>(body) {
            Ok(f) => TokenError::OAuth {
                code: printable(&f.error),
                description: f.error_description.as_deref().map(printable),
                status,
            },
            Err(_) => TokenError::Status { status },
        });
    }
    let bad = |reason: &str| TokenError::Answer {
        reason: reason.to_owned(),
    };
    let s: Success = serde_json::from_slice(body).map_err(|e| TokenError::Answer {
        // serde's message quotes no value of a string field it could read.
        reason: format!("not a token response (JSON with access_token and token_type): {e}"),
    })?;
    if !s.token_type.eq_ignore_ascii_case("bearer") {
        return Err(TokenError::Answer {
            reason: format!("token_type {:?}, expected Bearer", printable(&s.token_type)),
        });
    }
    // RFC 6750 b64token, loosely: it must fit a header line as it is.
    if s.access_token.is_empty() || !s.access_token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad(
            "access_token is empty or holds characters a header cannot carry",
        ));
    }
    let seconds = match s.expires_in {
        None => None,
        Some(ExpiresIn::Number(n)) => Some(n),
        Some(ExpiresIn::Text(t)) => Some(
            t.trim()
                .parse::<f64>()
                .map_err(|_| bad("expires_in is not a number"))?,
        ),
    };
    let lifetime = match seconds {
        None => DEFAULT_LIFETIME,
        Some(n) if n.is_finite() && n >= 1.0 => {
            Duration::from_secs_f64(n.min(MAX_LIFETIME.as_secs_f64()))
        }
        Some(_) => return Err(bad("expires_in is below 1 second")),
    };
    Ok(Issued {
        access_token: s.access_token,
        lifetime,
    })
}

/// An IdP's text, kept short and printable for logs and messages.
fn printable(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(MAX_ERROR_TEXT)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oauth(method: ClientAuthMethod) -> UpstreamOAuth {
        UpstreamOAuth {
            token_url: "http://127.0.0.1:1/token".to_owned(),
            client_id: "gw client".to_owned(),
            client_secret: "s3:cr/t".to_owned(),
            scopes: vec!["crm.read".to_owned(), "crm.write".to_owned()],
            resource: Some("https://crm.example.com/mcp".to_owned()),
            auth_method: method,
        }
    }

    #[test]
    fn the_form_and_basic_credentials_are_encoded() {
        let basic = oauth(ClientAuthMethod::ClientSecretBasic);
        assert_eq!(
            form(&basic),
            "grant_type=client_credentials&scope=crm.read+crm.write\
             &resource=https%3A%2F%2Fcrm.example.com%2Fmcp"
        );
        let header = basic_credentials(&basic);
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(header.strip_prefix("Basic ").expect("basic"))
            .expect("base64");
        assert_eq!(decoded, b"gw+client:s3%3Acr%2Ft");
        let post = form(&UpstreamOAuth {
            scopes: Vec::new(),
            resource: None,
            ..oauth(ClientAuthMethod::ClientSecretPost)
        });
        assert_eq!(
            post,
            "grant_type=client_credentials&client_id=gw+client&client_secret=s3%3Acr%2Ft"
        );
        let mut s = String::new();
        form_encode(&mut s, "é~");
        assert_eq!(s, "%C3%A9%7E");
    }

    #[test]
    fn answers_become_tokens_or_errors() {
        let ok = answer(
            StatusCode::OK,
            br#"{"access_token":"abc.def","token_type":"bearer","expires_in":120}"#,
        )
        .expect("token");
        assert_eq!(ok.access_token, "abc.def");
        assert_eq!(ok.lifetime, Duration::from_secs(120));
        let text = answer(
            StatusCode::OK,
            br#"{"access_token":"t","token_type":"Bearer","expires_in":"60"}"#,
        )
        .expect("token");
        assert_eq!(text.lifetime, Duration::from_secs(60));
        let none = answer(
            StatusCode::OK,
            br#"{"access_token":"t","token_type":"Bearer"}"#,
        )
        .expect("token");
        assert_eq!(none.lifetime, DEFAULT_LIFETIME);
        let e = answer(
            StatusCode::UNAUTHORIZED,
            br#"{"error":"invalid_client","error_description":"bad\nsecret"}"#,
        )
        .expect_err("refused");
        assert_eq!(e.oauth_code(), Some("invalid_client"));
        assert_eq!(
            e.to_string(),
            "its token endpoint refused the grant: invalid_client: badsecret (HTTP 401 Unauthorized)"
        );
        let e = answer(StatusCode::BAD_GATEWAY, b"<html>").expect_err("status");
        assert_eq!(e.outcome(), "http_error");
        for bad in [
            &br#"{"access_token":"t","token_type":"mac"}"#[..],
            br#"{"access_token":"a b","token_type":"Bearer"}"#,
            br#"{"access_token":"t","token_type":"Bearer","expires_in":0}"#,
            br#"{"token_type":"Bearer"}"#,
            b"not json",
        ] {
            let e = answer(StatusCode::OK, bad).expect_err("bad answer");
            assert_eq!(e.outcome(), "bad_answer", "{e}");
        }
        // A refused token never shows in the reason.
        let e = answer(
            StatusCode::OK,
            br#"{"access_token":"sec ret","token_type":"Bearer"}"#,
        )
        .expect_err("bad");
        assert!(!e.to_string().contains("sec ret"), "{e}");
    }
}
