//! DNS rebinding protection: which `Host` and `Origin` headers a public
//! request may carry ([`HostPolicy`], built from `[security]` and the
//! listeners at start and on reload).
//!
//! A gateway listening only on loopback addresses is a local service: a web
//! page that got the browser to resolve its own name to 127.0.0.1 must not
//! reach it, so only loopback host names pass unless `allowed_hosts` says
//! otherwise. A gateway on other addresses accepts any `Host` by default
//! (it is reached by whatever name its operator gave it).

use http::HeaderMap;
use http::header::{HOST, ORIGIN};
use mcpgw_protocol::config::Config;

const LOOPBACK_NAMES: [&str; 4] = ["localhost", "127.0.0.1", "::1", "[::1]"];

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HostPolicy {
    /// `None`: any host.
    hosts: Option<Vec<String>>,
    origins: Vec<String>,
}

impl HostPolicy {
    pub(crate) fn from_config(config: &Config) -> Self {
        let loopback_only = config
            .listen
            .iter()
            .chain(config.tls_listener.iter().map(|t| &t.addr))
            .all(|a| a.ip().is_loopback());
        let hosts = match &config.security.allowed_hosts {
            Some(list) => Some(list.iter().map(|h| h.to_ascii_lowercase()).collect()),
            None if loopback_only => Some(LOOPBACK_NAMES.iter().map(|h| (*h).to_owned()).collect()),
            None => None,
        };
        Self {
            hosts,
            origins: config
                .security
                .allowed_origins
                .iter()
                .map(|o| o.to_ascii_lowercase())
                .collect(),
        }
    }

    fn host_allowed(&self, host: &str) -> bool {
        self.hosts
            .as_ref()
            .is_none_or(|list| list.iter().any(|h| h.eq_ignore_ascii_case(host)))
    }

    /// `Err` names the header that is not allowed.
    pub(crate) fn check(&self, headers: &HeaderMap) -> Result<(), String> {
        if self.hosts.is_some() {
            let host = headers
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("");
            if !self.host_allowed(strip_port(host)) {
                return Err(format!(
                    "Host {host:?} is not allowed (security.allowed_hosts)"
                ));
            }
        }
        let Some(origin) = headers.get(ORIGIN) else {
            return Ok(());
        };
        let origin = origin.to_str().unwrap_or("");
        let allowed = if self.origins.is_empty() {
            // "null" (a sandboxed or file page) has no host to allow.
            origin_host(origin).is_some_and(|h| self.host_allowed(h))
        } else {
            self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin))
        };
        if allowed {
            Ok(())
        } else {
            Err(format!(
                "Origin {origin:?} is not allowed (security.allowed_origins)"
            ))
        }
    }
}

/// `host[:port]` or `[v6]:port` → the host.
fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority
            .split_once(']')
            .map_or(authority, |(h, _)| &authority[..=h.len()]);
    }
    authority.split(':').next().unwrap_or(authority)
}

/// `scheme://host[:port]` → the host.
fn origin_host(origin: &str) -> Option<&str> {
    let (_, rest) = origin.split_once("://")?;
    let authority = rest.split('/').next()?;
    Some(strip_port(authority)).filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(host: &str, origin: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_str(host).expect("host"));
        if let Some(o) = origin {
            h.insert(ORIGIN, HeaderValue::from_str(o).expect("origin"));
        }
        h
    }

    #[test]
    fn loopback_gateway_refuses_rebound_names() {
        let policy = HostPolicy::from_config(&Config::default());
        assert!(policy.check(&headers("127.0.0.1:8080", None)).is_ok());
        assert!(
            policy
                .check(&headers("localhost", Some("http://localhost:3000")))
                .is_ok()
        );
        assert!(policy.check(&headers("[::1]:8080", None)).is_ok());
        assert!(policy.check(&headers("evil.example.com", None)).is_err());
        assert!(
            policy
                .check(&headers("127.0.0.1:8080", Some("http://evil.example.com")))
                .is_err()
        );
        assert!(policy.check(&headers("127.0.0.1", Some("null"))).is_err());
    }

    #[test]
    fn public_gateway_takes_any_host_unless_listed() {
        let mut config = Config::parse("listen = [\"0.0.0.0:8080\"]").expect("config");
        let open = HostPolicy::from_config(&config);
        assert!(
            open.check(&headers("mcp.example.com", Some("https://app.example.com")))
                .is_ok()
        );
        config.security.allowed_hosts = Some(vec!["mcp.example.com".into()]);
        config.security.allowed_origins = vec!["https://app.example.com".into()];
        let strict = HostPolicy::from_config(&config);
        assert!(
            strict
                .check(&headers(
                    "MCP.example.com:443",
                    Some("https://app.example.com")
                ))
                .is_ok()
        );
        assert!(strict.check(&headers("other.example.com", None)).is_err());
        assert!(
            strict
                .check(&headers(
                    "mcp.example.com",
                    Some("https://evil.example.com")
                ))
                .is_err()
        );
    }
}
