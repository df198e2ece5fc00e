//! DNS rebinding protection on the public listeners: the shared
//! [`mcpgw_protocol::host_policy`] (where the policy and its reasons live)
//! applied to a request's headers. Built from the configuration at start
//! and on reload.

use http::HeaderMap;
use http::header::{HOST, ORIGIN};
use mcpgw_protocol::config::Config;
use mcpgw_protocol::host_policy;

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HostPolicy(host_policy::HostPolicy);

impl HostPolicy {
    pub(crate) fn from_config(config: &Config) -> Self {
        Self(host_policy::HostPolicy::public(config))
    }

    /// `Err` names the header that is not allowed.
    pub(crate) fn check(&self, headers: &HeaderMap) -> Result<(), String> {
        let host = headers.get(HOST).and_then(|h| h.to_str().ok());
        // Present but not visible ASCII: checked (and refused) as "".
        let origin = headers.get(ORIGIN).map(|o| o.to_str().unwrap_or(""));
        self.0.check(host, origin).map_err(|e| e.to_string())
    }
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
        let mut config =
            Config::parse("listen = [\"0.0.0.0:8080\"]\nauth = \"off\"").expect("config");
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
