//! The OAuth 2.1 front door (`[auth]`): who is calling. It owns bearer
//! token validation on every MCP request of both protocol eras, before any
//! session is looked up (signature against the issuer's keys, `iss`, `aud`,
//! `exp`/`nbf` with [`LEEWAY_SECS`] of clock skew, the endpoint's required
//! scopes), the answers to a refused request (401/403 with
//! `WWW-Authenticate`, as the MCP authorization spec describes), and the
//! RFC 9728 protected resource metadata documents. What it hands on is a
//! [`Principal`], with the claims authorization rules match on (`sub`,
//! scopes, and the configured groups and roles claims) read in the same
//! pass; binding sessions to it is the front ends' part
//! (`front::stateful`), counting sessions per principal the store's,
//! deciding on its claims `crate::authz`'s.
//!
//! - [`keys`]: the issuer's keys (JWKS file or URL), kept and refetched.
//!
//! Without `[auth]` nothing here runs: [`crate::ctx::Live::auth`] is
//! `None` and a request pays one `Option` check.

pub(crate) mod keys;

use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use foldhash::{HashMap, HashMapExt};
use http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HOST, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use mcpgw_protocol::config::Config;
use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::authz::Claims as Grants;
use crate::http::body::{self, Body};
use crate::jsonrpc;
use keys::{KeySet, KeyStore, KeysError};

/// Clock skew allowed on `exp` and `nbf`, in seconds.
pub(crate) const LEEWAY_SECS: u64 = 60;

/// The RFC 9728 well-known path; an endpoint's document is at this path
/// followed by the endpoint's path.
pub(crate) const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// Internal header carrying the principal of a request one worker
/// authenticated and forwards to the session's owner (base64url of a JSON
/// object: [`Principal::id`] and the claims authorization rules match on).
/// Honoured only on the internal socket; the forwarder
/// strips every client-sent `x-mcpgw-` header before setting it.
pub(crate) const PRINCIPAL_HEADER: &str = "x-mcpgw-principal";

/// Signature algorithms a token may use: asymmetric only. `none` is not an
/// algorithm `jsonwebtoken` parses, and HMAC would let anyone holding the
/// public key sign.
const ACCEPTED: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// How a token check ended; the order is the index into
/// [`crate::metrics::Metrics::auth_decisions`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Decision {
    Ok = 0,
    /// No `Authorization` header.
    Missing = 1,
    /// A token that is malformed, forged, for another issuer or audience,
    /// signed with an unknown key or a refused algorithm, or not yet valid.
    Invalid = 2,
    Expired = 3,
    /// A valid token without the endpoint's required scopes.
    InsufficientScope = 4,
    /// A valid token presenting a session id another principal opened
    /// (answered as an unknown session).
    WrongPrincipal = 5,
}

impl Decision {
    pub(crate) const LABELS: [&'static str; 6] = [
        "ok",
        "missing",
        "invalid",
        "expired",
        "insufficient_scope",
        "wrong_principal",
    ];

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Who is calling: the token's issuer and subject, and what authorization
/// rules match on ([`Grants`]), read once when the token was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Principal {
    /// `<iss> <sub>`: the issuer has no spaces (checked in the config), so
    /// the first space separates them. This is the session record's
    /// `principal`.
    id: Box<str>,
    sub_at: usize,
    claims: Grants,
}

/// The forwarded form of a principal ([`PRINCIPAL_HEADER`], JSON).
#[derive(Serialize, Deserialize)]
struct Forwarded<'a> {
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
    #[serde(flatten)]
    claims: Grants,
}

impl Principal {
    fn new(iss: &str, claims: Grants) -> Self {
        let sub = &claims.sub;
        let mut id = String::with_capacity(iss.len() + 1 + sub.len());
        id.push_str(iss);
        id.push(' ');
        id.push_str(sub);
        Self {
            id: id.into_boxed_str(),
            sub_at: iss.len() + 1,
            claims,
        }
    }

    /// From a forwarded id (`<iss> <sub>`) and claims.
    fn from_parts(id: &str, mut claims: Grants) -> Option<Self> {
        let (iss, sub) = id.split_once(' ')?;
        if iss.is_empty() || sub.is_empty() {
            return None;
        }
        claims.sub = Box::from(sub);
        Some(Self::new(iss, claims))
    }

    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// The subject alone (for the access log).
    pub(crate) fn sub(&self) -> &str {
        self.id.get(self.sub_at..).unwrap_or("")
    }

    /// What authorization rules match on.
    pub(crate) fn claims(&self) -> &Grants {
        &self.claims
    }

    /// The value of [`PRINCIPAL_HEADER`] for a forwarded request: the id
    /// and the claims, so the owner decides on what the token said.
    pub(crate) fn header_value(&self) -> Option<HeaderValue> {
        let json = serde_json::to_vec(&Forwarded {
            id: std::borrow::Cow::Borrowed(&self.id),
            claims: self.claims.clone(),
        })
        .ok()?;
        let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
        HeaderValue::from_str(&encoded).ok()
    }

    /// The principal a forwarding worker established, if the request
    /// carries one.
    pub(crate) fn from_forwarded(headers: &HeaderMap) -> Option<Self> {
        let raw = headers.get(PRINCIPAL_HEADER)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(raw.as_bytes())
            .ok()?;
        let f: Forwarded<'_> = serde_json::from_slice(&bytes).ok()?;
        Self::from_parts(&f.id, f.claims)
    }
}

/// One endpoint's requirements.
struct Policy {
    /// The configured audience; `None`: the endpoint's URL as reached.
    audience: Option<Box<str>>,
    scopes: Box<[Box<str>]>,
    /// The scopes space-separated (`WWW-Authenticate`'s `scope`).
    scope_text: Box<str>,
    /// `iss`, `aud` (when configured), leeway: made once per accepted
    /// algorithm (index in [`ACCEPTED`]), since `jsonwebtoken` wants the
    /// algorithms of one validation to be of one key family.
    validations: Box<[Validation]>,
}

/// The front door in force (rebuilt by every reload; the keys of a
/// `jwks_url` carry over while the URL stays the same).
pub(crate) struct Gate {
    issuer: Box<str>,
    keys: Arc<KeyStore>,
    /// By endpoint path.
    policies: HashMap<Box<str>, Policy>,
    /// The endpoint the root metadata document describes: the first one.
    first_endpoint: Box<str>,
    authorization_servers: Vec<String>,
    /// `[auth] max_sessions_per_principal`.
    pub(crate) max_sessions_per_principal: u32,
    /// `[auth] groups_claim`, `roles_claim`: where a token's groups and
    /// roles are, for authorization rules.
    groups_claim: Box<str>,
    roles_claim: Box<str>,
}

/// The claims read from a token beyond those `jsonwebtoken` checks.
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    scp: Option<Scp>,
    /// Every other claim: the configured groups and roles claims are
    /// among them (their names are configuration, not known here).
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

/// `scp`: an array of scopes (Okta, Azure AD), sometimes one string.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scp {
    Many(Vec<String>),
    One(String),
}

/// The strings of a claim's value: each string of an array, or a string
/// alone; anything else has none.
fn claim_values(value: Option<&serde_json::Value>) -> Box<[Box<str>]> {
    match value {
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .filter_map(serde_json::Value::as_str)
            .map(Box::from)
            .collect(),
        Some(serde_json::Value::String(one)) => Box::from([Box::from(one.as_str())]),
        _ => Box::default(),
    }
}

impl Claims {
    /// Every scope the token carries (`scope` and `scp`).
    fn scopes(&self) -> Box<[Box<str>]> {
        let text = |t: &str| {
            t.split_ascii_whitespace()
                .map(Box::from)
                .collect::<Vec<_>>()
        };
        let mut all = self.scope.as_deref().map(text).unwrap_or_default();
        match &self.scp {
            Some(Scp::Many(list)) => all.extend(list.iter().map(|s| Box::from(s.as_str()))),
            Some(Scp::One(t)) => all.extend(text(t)),
            None => {}
        }
        all.into_boxed_slice()
    }

    fn has_scope(&self, wanted: &str) -> bool {
        let in_text = |t: &str| t.split_ascii_whitespace().any(|s| s == wanted);
        self.scope.as_deref().is_some_and(in_text)
            || match &self.scp {
                Some(Scp::Many(list)) => list.iter().any(|s| s == wanted),
                Some(Scp::One(t)) => in_text(t),
                None => false,
            }
    }
}

/// Read the key source of `[auth]` now, as `check-config`, the supervisor
/// (at start and on reload) and a worker's build do: a `jwks_file` must
/// hold at least one usable key. A `jwks_url` is not fetched here.
pub fn check_config_files(config: &Config) -> Result<(), KeysError> {
    if let Some(a) = config.auth.jwt()
        && let Some(path) = &a.jwks_file
    {
        KeySet::read(path)?;
    }
    Ok(())
}

impl Gate {
    /// The gate for `config`, or `None` without `[auth]`. A `jwks_file` is
    /// read now; a `jwks_url` store is kept from `previous` when the URL is
    /// the same, else made and its first fetch started.
    pub(crate) fn build(
        config: &Config,
        previous: Option<&Gate>,
    ) -> Result<Option<Arc<Gate>>, KeysError> {
        let Some(a) = config.auth.jwt() else {
            return Ok(None);
        };
        let keys = match (&a.jwks_file, &a.jwks_url) {
            (Some(path), _) => Arc::new(KeyStore::from_file(path)?),
            (None, Some(url)) => match previous.filter(|p| p.keys.url() == Some(url.as_str())) {
                Some(p) => p.keys.clone(),
                None => {
                    let store = Arc::new(KeyStore::from_url(url)?);
                    store.refresh();
                    store
                }
            },
            // Refused by the config's validation; no keys, no tokens pass.
            (None, None) => Arc::new(KeyStore::empty()),
        };
        let mut policies = HashMap::new();
        let endpoints = config.effective_endpoints();
        for e in &endpoints {
            let audience = e.auth_audience.as_ref().or(a.audience.as_ref());
            let scopes: Box<[Box<str>]> = e
                .auth_required_scopes
                .as_ref()
                .unwrap_or(&a.required_scopes)
                .iter()
                .map(|s| Box::from(s.as_str()))
                .collect();
            let validations = ACCEPTED
                .iter()
                .map(|alg| {
                    let mut v = Validation::new(*alg);
                    v.leeway = LEEWAY_SECS;
                    v.validate_nbf = true;
                    v.set_issuer(&[a.issuer.as_str()]);
                    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
                    if let Some(aud) = audience {
                        v.set_audience(&[aud.as_str()]);
                    }
                    v
                })
                .collect();
            policies.insert(
                Box::from(e.path.as_str()),
                Policy {
                    audience: audience.map(|s| Box::from(s.as_str())),
                    scope_text: scopes.join(" ").into_boxed_str(),
                    scopes,
                    validations,
                },
            );
        }
        Ok(Some(Arc::new(Gate {
            issuer: Box::from(a.issuer.as_str()),
            keys,
            policies,
            first_endpoint: endpoints
                .first()
                .map_or_else(|| Box::from("/mcp"), |e| Box::from(e.path.as_str())),
            authorization_servers: a.authorization_servers(),
            max_sessions_per_principal: a.max_sessions_per_principal,
            groups_claim: Box::from(a.groups_claim.as_str()),
            roles_claim: Box::from(a.roles_claim.as_str()),
        })))
    }

    /// Check the bearer token of a request to the endpoint at `path`
    /// (`https`: whether it came over TLS, for the endpoint's own URL).
    pub(crate) fn check(
        &self,
        headers: &HeaderMap,
        path: &str,
        https: bool,
    ) -> Result<Principal, Decision> {
        let Some(policy) = self.policies.get(path) else {
            return Err(Decision::Invalid);
        };
        let mut values = headers.get_all(AUTHORIZATION).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return Err(if headers.contains_key(AUTHORIZATION) {
                Decision::Invalid
            } else {
                Decision::Missing
            });
        };
        let token = bearer(value.as_bytes()).ok_or(Decision::Invalid)?;
        let header = jsonwebtoken::decode_header(token).map_err(|e| {
            debug!(error = %e, "bearer token refused: malformed header");
            Decision::Invalid
        })?;
        let Some(alg_index) = ACCEPTED.iter().position(|a| *a == header.alg) else {
            debug!(alg = ?header.alg, "bearer token refused: algorithm not accepted");
            return Err(Decision::Invalid);
        };
        let Some(fixed) = policy.validations.get(alg_index) else {
            return Err(Decision::Invalid);
        };
        let set = self.keys.current();
        if self.keys.is_stale() {
            self.keys.refresh();
        }
        let derived;
        let validation = match &policy.audience {
            Some(_) => fixed,
            None => {
                let mut v = fixed.clone();
                v.set_audience(&[endpoint_url(headers, path, https)]);
                derived = v;
                &derived
            }
        };
        let claims = match &header.kid {
            Some(kid) => {
                let Some(key) = set.by_kid(kid) else {
                    debug!(kid, "bearer token refused: unknown key id");
                    // The issuer may have rotated its keys.
                    self.keys.refresh();
                    return Err(Decision::Invalid);
                };
                verify(token, key, header.alg, validation)?
            }
            None => {
                let mut last = Err(Decision::Invalid);
                for key in set
                    .keys
                    .iter()
                    .filter(|k| k.algorithms.contains(&header.alg))
                {
                    last = verify(token, key, header.alg, validation);
                    if matches!(last, Ok(_) | Err(Decision::Expired)) {
                        break;
                    }
                }
                last?
            }
        };
        let sub = claims
            .sub
            .as_deref()
            .filter(|s| !s.is_empty())
            .ok_or(Decision::Invalid)?;
        if !policy.scopes.iter().all(|s| claims.has_scope(s)) {
            return Err(Decision::InsufficientScope);
        }
        let grants = Grants {
            sub: Box::from(sub),
            scopes: claims.scopes(),
            groups: claim_values(claims.other.get(&*self.groups_claim)),
            roles: claim_values(claims.other.get(&*self.roles_claim)),
        };
        // `iss` was checked equal to the configured issuer.
        Ok(Principal::new(&self.issuer, grants))
    }

    /// The answer to a refused request: 401 (no token, or one that is not
    /// valid) or 403 (scopes missing), with `WWW-Authenticate` naming the
    /// metadata document and the scopes the endpoint needs. The body is a
    /// JSON-RPC error, for clients that show it.
    pub(crate) fn refusal(
        &self,
        decision: Decision,
        headers: &HeaderMap,
        path: &str,
        https: bool,
    ) -> Response<Body> {
        let scope = self.policies.get(path).map_or("", |p| &p.scope_text);
        let (status, error, message) = match decision {
            Decision::Missing => (
                StatusCode::UNAUTHORIZED,
                None,
                "Unauthorized: this endpoint needs an OAuth bearer token (Authorization: Bearer …)",
            ),
            Decision::Expired => (
                StatusCode::UNAUTHORIZED,
                Some(("invalid_token", "the token expired")),
                "Unauthorized: the bearer token expired",
            ),
            Decision::InsufficientScope => (
                StatusCode::FORBIDDEN,
                Some(("insufficient_scope", "the token lacks a required scope")),
                "Forbidden: the bearer token lacks a scope this endpoint needs",
            ),
            Decision::Invalid | Decision::Ok | Decision::WrongPrincipal => (
                StatusCode::UNAUTHORIZED,
                Some(("invalid_token", "the token is not valid here")),
                "Unauthorized: the bearer token is not valid for this endpoint",
            ),
        };
        let mut challenge = format!(
            "Bearer resource_metadata=\"{}\"",
            metadata_url(headers, path, https)
        );
        if !scope.is_empty() {
            challenge.push_str(&format!(", scope=\"{scope}\""));
        }
        if let Some((code, description)) = error {
            challenge.push_str(&format!(
                ", error=\"{code}\", error_description=\"{description}\""
            ));
        }
        let mut r = Response::new(body::full(jsonrpc::error(
            "null",
            jsonrpc::INVALID_REQUEST,
            message,
            None,
        )));
        *r.status_mut() = status;
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        // Built from validated config and a Host the host policy let in;
        // a value the header cannot carry leaves the challenge bare.
        let value = HeaderValue::from_str(&challenge)
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer"));
        r.headers_mut().insert(WWW_AUTHENTICATE, value);
        r
    }

    /// The RFC 9728 document for a request to a path under
    /// [`METADATA_PATH`], or `None` when the path names no endpoint. The
    /// bare well-known path describes the first endpoint.
    pub(crate) fn metadata(
        &self,
        method: &Method,
        headers: &HeaderMap,
        request_path: &str,
        https: bool,
    ) -> Option<Response<Body>> {
        let suffix = request_path.strip_prefix(METADATA_PATH)?;
        let endpoint = if suffix.is_empty() || suffix == "/" {
            &*self.first_endpoint
        } else {
            suffix
        };
        let (path, policy) = self.policies.get_key_value(endpoint)?;
        if method != Method::GET && method != Method::HEAD {
            let mut r = crate::front::common::plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
            r.headers_mut()
                .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return Some(r);
        }
        let resource = policy
            .audience
            .as_deref()
            .map_or_else(|| endpoint_url(headers, path, https), str::to_owned);
        let doc = serde_json::json!({
            "resource": resource,
            "authorization_servers": self.authorization_servers,
            "scopes_supported": policy.scopes,
            "bearer_methods_supported": ["header"],
            "resource_name": "mcpgw",
        });
        let mut r = Response::new(body::full(Bytes::from(doc.to_string())));
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        r.headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("max-age=300"));
        Some(r)
    }
}

/// Verify `token` with `key` under `validation`; the claims, or why not.
fn verify(
    token: &str,
    key: &keys::Key,
    alg: Algorithm,
    validation: &Validation,
) -> Result<Claims, Decision> {
    if !key.algorithms.contains(&alg) {
        debug!(?alg, kid = ?key.kid, "bearer token refused: algorithm does not fit its key");
        return Err(Decision::Invalid);
    }
    match jsonwebtoken::decode::<Claims>(token, &key.decoding, validation) {
        Ok(data) => Ok(data.claims),
        Err(e) => {
            // The kind only: never the token or its claims.
            debug!(error = ?e.kind(), "bearer token refused");
            Err(match e.kind() {
                ErrorKind::ExpiredSignature => Decision::Expired,
                _ => Decision::Invalid,
            })
        }
    }
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive).
fn bearer(value: &[u8]) -> Option<&str> {
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = std::str::from_utf8(rest).ok()?.trim();
    (!token.is_empty()).then_some(token)
}

/// `http(s)://<Host><path>`: the endpoint's URL as the client reached it.
fn endpoint_url(headers: &HeaderMap, path: &str, https: bool) -> String {
    // Only a plain host[:port] goes into a URL (and so into a quoted
    // challenge parameter); anything else is not a name this gateway has.
    let host = headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-_:[]".contains(&b))
        })
        .unwrap_or("localhost");
    let scheme = if https { "https" } else { "http" };
    format!("{scheme}://{host}{path}")
}

/// The endpoint's metadata document URL (path-suffixed form).
fn metadata_url(headers: &HeaderMap, path: &str, https: bool) -> String {
    endpoint_url(headers, &format!("{METADATA_PATH}{path}"), https)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_round_trip_through_the_forward_header() {
        let p = Principal::new(
            "https://idp.example.com",
            Grants {
                sub: "alice smith".into(),
                scopes: Box::from([Box::from("mcp")]),
                groups: Box::from([Box::from("staff"), Box::from("ops team")]),
                roles: Box::default(),
            },
        );
        assert_eq!(p.id(), "https://idp.example.com alice smith");
        assert_eq!(p.sub(), "alice smith");
        let mut h = HeaderMap::new();
        h.insert(PRINCIPAL_HEADER, p.header_value().expect("encodes"));
        assert_eq!(Principal::from_forwarded(&h), Some(p));
        h.insert(PRINCIPAL_HEADER, HeaderValue::from_static("!!"));
        assert_eq!(Principal::from_forwarded(&h), None);
        assert_eq!(Principal::from_parts("no-space", Grants::default()), None);
    }

    #[test]
    fn groups_and_roles_come_from_the_configured_claims() {
        let c: Claims = serde_json::from_str(
            r#"{"sub":"a","scope":"mcp read","scp":["x"],"grp":["staff",7,"ops"],"role":"admin"}"#,
        )
        .expect("claims");
        assert_eq!(
            &*c.scopes(),
            [Box::from("mcp"), Box::from("read"), Box::from("x")]
        );
        assert_eq!(
            &*claim_values(c.other.get("grp")),
            [Box::from("staff"), Box::from("ops")]
        );
        assert_eq!(&*claim_values(c.other.get("role")), [Box::from("admin")]);
        assert!(claim_values(c.other.get("groups")).is_empty());
    }

    #[test]
    fn only_a_plain_host_makes_the_endpoint_url() {
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_static("mcp.example.com:8443"));
        assert_eq!(
            endpoint_url(&h, "/mcp", true),
            "https://mcp.example.com:8443/mcp"
        );
        h.insert(HOST, HeaderValue::from_static("evil\", x=\"y"));
        assert_eq!(endpoint_url(&h, "/mcp", false), "http://localhost/mcp");
    }

    #[test]
    fn bearer_tokens_are_read_case_insensitively() {
        assert_eq!(bearer(b"Bearer abc.def.ghi"), Some("abc.def.ghi"));
        assert_eq!(bearer(b"bearer  x "), Some("x"));
        assert_eq!(bearer(b"Basic dXNlcg=="), None);
        assert_eq!(bearer(b"Bearer "), None);
    }

    #[test]
    fn scopes_come_from_scope_or_scp() {
        let c: Claims = serde_json::from_str(r#"{"scope":"read mcp"}"#).expect("claims");
        assert!(c.has_scope("mcp") && !c.has_scope("write"));
        let c: Claims = serde_json::from_str(r#"{"scp":["mcp","x"]}"#).expect("claims");
        assert!(c.has_scope("mcp"));
        let c: Claims = serde_json::from_str(r#"{"scp":"a mcp"}"#).expect("claims");
        assert!(c.has_scope("mcp"));
        let c: Claims = serde_json::from_str(r#"{"sub":"x"}"#).expect("claims");
        assert!(!c.has_scope("mcp"));
    }
}
