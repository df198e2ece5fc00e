//! DNS rebinding protection: which `Host` and `Origin` header values a
//! request may carry ([`HostPolicy`]). The one place this policy lives: the
//! workers apply it to the public listeners, the supervisor to the admin
//! listener. It is derived from `[security]` and listener addresses only, so
//! both sides build it from the configuration at start and on reload.
//!
//! A gateway listening only on loopback addresses is a local service: a web
//! page that got the browser to resolve its own name to 127.0.0.1 must not
//! reach it, so only loopback host names pass unless `allowed_hosts` says
//! otherwise. A gateway on other addresses accepts any `Host` by default
//! (it is reached by whatever name its operator gave it).

use std::net::SocketAddr;

use crate::config::{Config, Security};

const LOOPBACK_NAMES: [&str; 4] = ["localhost", "127.0.0.1", "::1", "[::1]"];

/// Which header was refused, with its value as received.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("Host {0:?} is not allowed (security.allowed_hosts)")]
    Host(String),
    #[error("Origin {0:?} is not allowed (security.allowed_origins)")]
    Origin(String),
}

impl Refused {
    /// The refused header's name, for logs.
    pub fn header(&self) -> &'static str {
        match self {
            Refused::Host(_) => "Host",
            Refused::Origin(_) => "Origin",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HostPolicy {
    /// `None`: any host.
    hosts: Option<Vec<String>>,
    origins: Vec<String>,
}

impl HostPolicy {
    /// The policy for `security` on a gateway listening on `listeners`.
    pub fn new(security: &Security, listeners: impl IntoIterator<Item = SocketAddr>) -> Self {
        let loopback_only = listeners.into_iter().all(|a| a.ip().is_loopback());
        let hosts = match &security.allowed_hosts {
            Some(list) => Some(list.iter().map(|h| h.to_ascii_lowercase()).collect()),
            None if loopback_only => Some(LOOPBACK_NAMES.iter().map(|h| (*h).to_owned()).collect()),
            None => None,
        };
        Self {
            hosts,
            origins: security
                .allowed_origins
                .iter()
                .map(|o| o.to_ascii_lowercase())
                .collect(),
        }
    }

    /// For the public listeners (plain and TLS).
    pub fn public(config: &Config) -> Self {
        Self::new(&config.security, public_listeners(config))
    }

    /// For the admin listener, judged by its own address alone: an admin
    /// API on loopback takes loopback names only (and `allowed_hosts`, if
    /// set), even when the public listeners are on `0.0.0.0`, which is the
    /// usual production layout and exactly where a rebound page must not
    /// read metrics or config.
    pub fn admin(config: &Config) -> Self {
        let mut policy = Self::new(&config.security, [config.admin_listen]);
        if config.admin_listen.ip().is_loopback()
            && let Some(hosts) = &mut policy.hosts
        {
            for name in LOOPBACK_NAMES {
                if !hosts.iter().any(|h| h == name) {
                    hosts.push(name.to_owned());
                }
            }
        }
        policy
    }

    fn host_allowed(&self, host: &str) -> bool {
        self.hosts
            .as_ref()
            .is_none_or(|list| list.iter().any(|h| h.eq_ignore_ascii_case(host)))
    }

    /// `host`: the `Host` header (`None` when absent or not visible ASCII);
    /// `origin`: the `Origin` header when present (`Some("")` when it is not
    /// visible ASCII: present but unreadable is refused, absent is not).
    pub fn check(&self, host: Option<&str>, origin: Option<&str>) -> Result<(), Refused> {
        if self.hosts.is_some() {
            let host = host.unwrap_or("");
            if !self.host_allowed(strip_port(host)) {
                return Err(Refused::Host(host.to_owned()));
            }
        }
        let Some(origin) = origin else {
            return Ok(());
        };
        let allowed = if self.origins.is_empty() {
            // "null" (a sandboxed or file page) has no host to allow.
            origin_host(origin).is_some_and(|h| self.host_allowed(h))
        } else {
            self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin))
        };
        if allowed {
            Ok(())
        } else {
            Err(Refused::Origin(origin.to_owned()))
        }
    }
}

fn public_listeners(config: &Config) -> impl Iterator<Item = SocketAddr> + '_ {
    config
        .listen
        .iter()
        .copied()
        .chain(config.tls_listener.iter().map(|t| t.addr))
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

    #[test]
    fn loopback_gateway_refuses_rebound_names() {
        let policy = HostPolicy::public(&Config::default());
        assert_eq!(policy.check(Some("127.0.0.1:8080"), None), Ok(()));
        assert_eq!(
            policy.check(Some("localhost"), Some("http://localhost:3000")),
            Ok(())
        );
        assert_eq!(policy.check(Some("[::1]:8080"), None), Ok(()));
        assert_eq!(
            policy.check(Some("evil.example.com"), None),
            Err(Refused::Host("evil.example.com".into()))
        );
        assert_eq!(policy.check(None, None), Err(Refused::Host(String::new())));
        let refused = policy
            .check(Some("127.0.0.1:8080"), Some("http://evil.example.com"))
            .expect_err("a foreign origin");
        assert_eq!(refused.header(), "Origin");
        assert!(refused.to_string().contains("evil.example.com"));
        assert!(policy.check(Some("127.0.0.1"), Some("null")).is_err());
        // Present but unreadable is refused; absent is not.
        assert!(policy.check(Some("127.0.0.1"), Some("")).is_err());
    }

    #[test]
    fn public_gateway_takes_any_host_unless_listed() {
        let mut config =
            Config::parse("listen = [\"0.0.0.0:8080\"]\nauth = \"off\"").expect("config");
        let open = HostPolicy::public(&config);
        assert_eq!(
            open.check(Some("mcp.example.com"), Some("https://app.example.com")),
            Ok(())
        );
        config.security.allowed_hosts = Some(vec!["mcp.example.com".into()]);
        config.security.allowed_origins = vec!["https://app.example.com".into()];
        let strict = HostPolicy::public(&config);
        assert_eq!(
            strict.check(Some("MCP.example.com:443"), Some("https://app.example.com")),
            Ok(())
        );
        assert!(strict.check(Some("other.example.com"), None).is_err());
        assert!(
            strict
                .check(Some("mcp.example.com"), Some("https://evil.example.com"))
                .is_err()
        );
    }

    #[test]
    fn the_admin_listener_is_judged_by_its_own_address() {
        // Public listeners on every address, the admin API on loopback: the
        // admin API still takes loopback names only.
        let mixed = Config::parse(
            "listen = [\"0.0.0.0:8080\"]\nauth = \"off\"\nadmin_listen = \"127.0.0.1:9090\"",
        )
        .expect("config");
        assert!(
            HostPolicy::admin(&mixed)
                .check(Some("evil.com"), None)
                .is_err()
        );
        assert_eq!(
            HostPolicy::admin(&mixed).check(Some("localhost:9090"), None),
            Ok(())
        );
        assert_eq!(
            HostPolicy::public(&mixed).check(Some("evil.com"), None),
            Ok(())
        );
        // With allowed_hosts, a loopback admin API takes those and loopback names.
        let named = Config::parse(
            "listen = [\"0.0.0.0:8080\"]\nauth = \"off\"\n[security]\nallowed_hosts = [\"mcp.example.com\"]",
        )
        .expect("config");
        let admin = HostPolicy::admin(&named);
        assert_eq!(admin.check(Some("127.0.0.1:9090"), None), Ok(()));
        assert_eq!(admin.check(Some("mcp.example.com"), None), Ok(()));
        assert!(admin.check(Some("evil.com"), None).is_err());
    }

    #[test]
    fn the_admin_address_counts_as_a_listener() {
        // Everything on loopback: the admin API takes loopback names only.
        let local = Config::parse("admin_listen = \"127.0.0.1:9090\"").expect("config");
        assert!(
            HostPolicy::admin(&local)
                .check(Some("evil.com"), None)
                .is_err()
        );
        assert_eq!(
            HostPolicy::admin(&local).check(Some("127.0.0.1:9090"), None),
            Ok(())
        );
        // An admin API on another address is reached by its own name, like
        // a public listener there; the public policy does not change.
        let exposed = Config::parse(
            "admin_listen = \"10.0.0.1:9090\"\nadmin_token_file = \"/etc/mcpgw/admin.token\"",
        )
        .expect("config");
        assert_eq!(
            HostPolicy::admin(&exposed).check(Some("gw.example.com"), None),
            Ok(())
        );
        assert!(
            HostPolicy::public(&exposed)
                .check(Some("gw.example.com"), None)
                .is_err()
        );
    }
}
