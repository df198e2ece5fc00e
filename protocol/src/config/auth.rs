//! `auth` / `[auth]`: the OAuth 2.1 resource-server front door (who may
//! call the MCP endpoints), as configured. The worker validates tokens
//! (`worker/src/auth/`); this module owns the configuration shape, its
//! checks, and the rule that a gateway listening beyond loopback must say
//! how it authenticates.
//!
//! The key is written either as a table (`[auth]`, JWT validation) or as the
//! string `auth = "off"` (explicitly no authentication). TOML lets one key be
//! either, so serde reads it with a visitor that takes both; on the control
//! channel (bincode, not self-describing) it travels as a plain tagged enum.

use std::path::PathBuf;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

use super::error::invalid;
use super::{Config, ConfigError};

/// Top-level `auth`: unset, `"off"`, or an `[auth]` table.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum AuthSetting {
    /// Not written: no authentication, allowed only while every listener is
    /// on a loopback address.
    #[default]
    Unset,
    /// `auth = "off"`: no authentication, on purpose (warned at start).
    Off,
    /// `[auth]`: every MCP request needs a valid bearer token.
    Jwt(Box<Auth>),
}

impl AuthSetting {
    /// The `[auth]` table, when authentication is on.
    pub fn jwt(&self) -> Option<&Auth> {
        match self {
            Self::Jwt(a) => Some(a),
            Self::Unset | Self::Off => None,
        }
    }
}

/// The `[auth]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Auth {
    /// The authorization server's issuer identifier: tokens' `iss` must equal it.
    pub issuer: String,
    /// What tokens' `aud` must contain (RFC 8707 resource indicator), for
    /// every endpoint without its own `auth_audience`. Unset: the endpoint's
    /// URL as the client reached it (`http(s)://<Host><path>`).
    pub audience: Option<String>,
    /// Where the issuer publishes its keys (JWKS). Fetched by the workers at
    /// start and again (at most every 30 s, in the background) when a token
    /// names a key id it does not know. `http://` to a loopback address only
    /// for now (the worker's HTTP client has no TLS yet).
    pub jwks_url: Option<String>,
    /// The JWKS as a file, re-read on every reload (SIGHUP).
    pub jwks_file: Option<PathBuf>,
    /// Scopes every token must carry (`scope`, space separated, or `scp`),
    /// for every endpoint without its own `auth_required_scopes`.
    pub required_scopes: Vec<String>,
    /// Authorization servers named in the protected resource metadata
    /// (RFC 9728); empty: `[issuer]`.
    pub authorization_servers: Vec<String>,
    /// Open sessions one principal (`iss` + `sub`) may hold on this gateway
    /// host, all workers together; 0: no cap.
    pub max_sessions_per_principal: u32,
    /// The claim whose values (an array of strings, or one string of
    /// space-separated values) are the caller's groups for
    /// `[[endpoint.authz]]` `when.groups`.
    pub groups_claim: String,
    /// The claim holding the caller's roles, for `when.roles`.
    pub roles_claim: String,
}

impl Default for Auth {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            audience: None,
            jwks_url: None,
            jwks_file: None,
            required_scopes: Vec::new(),
            authorization_servers: Vec::new(),
            max_sessions_per_principal: 64,
            groups_claim: "groups".to_owned(),
            roles_claim: "roles".to_owned(),
        }
    }
}

impl Auth {
    /// The authorization servers for the metadata document.
    pub fn authorization_servers(&self) -> Vec<String> {
        if self.authorization_servers.is_empty() {
            vec![self.issuer.clone()]
        } else {
            self.authorization_servers.clone()
        }
    }
}

/// The wire form (bincode), self-describing enough for a non-self-describing format.
#[derive(Serialize, Deserialize)]
enum Wire {
    Unset,
    Off,
    Jwt(Box<Auth>),
}

impl Serialize for AuthSetting {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            // As written: nothing, "off", or the table (`/admin/config`).
            return match self {
                Self::Unset => s.serialize_none(),
                Self::Off => s.serialize_str("off"),
                Self::Jwt(a) => a.serialize(s),
            };
        }
        match self {
            Self::Unset => Wire::Unset,
            Self::Off => Wire::Off,
            Self::Jwt(a) => Wire::Jwt(a.clone()),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for AuthSetting {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if !d.is_human_readable() {
            return Ok(match Wire::deserialize(d)? {
                Wire::Unset => Self::Unset,
                Wire::Off => Self::Off,
                Wire::Jwt(a) => Self::Jwt(a),
            });
        }
        struct Either;
        impl<'de> Visitor<'de> for Either {
            type Value = AuthSetting;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("the string \"off\" or an [auth] table")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                if v == "off" {
                    Ok(AuthSetting::Off)
                } else {
                    Err(E::custom(format!(
                        "auth = {v:?}: the only string allowed is \"off\"; \
                         authentication is configured as an [auth] table"
                    )))
                }
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(AuthSetting::Unset)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(AuthSetting::Unset)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                // Through `Auth`'s own derive: unknown keys and bad values
                // keep their precise messages.
                Auth::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|a| AuthSetting::Jwt(Box::new(a)))
            }
        }
        d.deserialize_any(Either)
    }
}

/// A scope as it may appear in `WWW-Authenticate` and in a `scope` claim:
/// printable ASCII without spaces, quotes or backslashes (RFC 6749 §3.3).
fn is_scope(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
}

/// Whether `url` is `http://` to a loopback host (an IP literal or `localhost`).
fn is_loopback_http(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.split(':').next().unwrap_or(""),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Config {
    /// The `auth` checks: the table's own values, the per-endpoint
    /// overrides, and the rule that a listener beyond loopback needs either
    /// `[auth]` or an explicit `auth = "off"`.
    pub(super) fn validate_auth(&self) -> Result<(), ConfigError> {
        let exposed = self
            .listen
            .iter()
            .chain(self.tls_listener.iter().map(|t| &t.addr))
            .find(|a| !a.ip().is_loopback());
        if let (AuthSetting::Unset, Some(addr)) = (&self.auth, exposed) {
            return Err(invalid(
                "auth",
                format!(
                    "required because the listener {addr} is not a loopback address: add an \
                     [auth] table (OAuth 2.1 bearer tokens) or write auth = \"off\" to serve \
                     anyone who can reach it without authentication"
                ),
            ));
        }
        let Some(a) = self.auth.jwt() else {
            for (i, e) in self.endpoint.iter().enumerate() {
                if e.auth_audience.is_some() || e.auth_required_scopes.is_some() {
                    return Err(invalid(
                        format!("endpoint[{i}]"),
                        "auth_audience and auth_required_scopes need an [auth] table",
                    ));
                }
            }
            return Ok(());
        };
        if a.issuer.is_empty() || a.issuer.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(invalid(
                "auth.issuer",
                "must be the issuer identifier (a URL, without spaces)",
            ));
        }
        match (&a.jwks_url, &a.jwks_file) {
            (None, None) => {
                return Err(invalid(
                    "auth",
                    "needs jwks_url or jwks_file: where the issuer's signing keys are",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "auth.jwks_url",
                    "set jwks_url or jwks_file, not both",
                ));
            }
            (Some(url), None)
                if !(url.starts_with("https://") || is_loopback_http(url))
                    || url.bytes().any(|b| !b.is_ascii_graphic()) =>
            {
                return Err(invalid(
                    "auth.jwks_url",
                    format!(
                        "{:?}: must be https:// (checked against the system's CAs), or \
                         http:// to a loopback address (127.0.0.1, [::1], localhost): keys \
                         fetched over plain http from elsewhere could be forged on the way",
                        crate::redact::url(url)
                    ),
                ));
            }
            _ => {}
        }
        if let Some(aud) = &a.audience {
            check_audience("auth.audience", aud)?;
        }
        check_scopes("auth.required_scopes", &a.required_scopes)?;
        for (i, s) in a.authorization_servers.iter().enumerate() {
            if !(s.starts_with("https://") || s.starts_with("http://"))
                || s.bytes().any(|b| !b.is_ascii_graphic() || b == b'"')
            {
                return Err(invalid(
                    format!("auth.authorization_servers[{i}]"),
                    format!("{s:?} must be an issuer URL"),
                ));
            }
        }
        for (i, e) in self.endpoint.iter().enumerate() {
            if let Some(aud) = &e.auth_audience {
                check_audience(&format!("endpoint[{i}].auth_audience"), aud)?;
            }
            if let Some(scopes) = &e.auth_required_scopes {
                check_scopes(&format!("endpoint[{i}].auth_required_scopes"), scopes)?;
            }
        }
        Ok(())
    }
}

fn check_audience(key: &str, aud: &str) -> Result<(), ConfigError> {
    if aud.is_empty() || aud.bytes().any(|b| !b.is_ascii_graphic() || b == b'"') {
        return Err(invalid(
            key,
            format!("{aud:?} must be a URI (printable ASCII, no spaces or quotes)"),
        ));
    }
    Ok(())
}

fn check_scopes(key: &str, scopes: &[String]) -> Result<(), ConfigError> {
    for (i, s) in scopes.iter().enumerate() {
        if !is_scope(s) {
            return Err(invalid(
                format!("{key}[{i}]"),
                format!("{s:?} is not a scope (printable ASCII, no spaces, quotes or backslashes)"),
            ));
        }
    }
    Ok(())
}
