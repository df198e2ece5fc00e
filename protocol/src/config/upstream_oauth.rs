//! `[upstream.oauth]`: an upstream's own credentials from the OAuth 2.1
//! client-credentials grant (RFC 6749 §4.4), as configured, and their
//! checks. The client's own token is never passed upstream (the MCP
//! authorization spec forbids token passthrough); an upstream that wants a
//! bearer token gets one the gateway obtained for itself. The worker fetches,
//! caches and refreshes the tokens (`worker/src/upstream/credentials/`).

use serde::{Deserialize, Serialize};

/// An upstream's `[upstream.oauth]` table.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamOAuth {
    /// The authorization server's token endpoint, `http://` or `https://`
    /// (https: this upstream's `ca_file`, else the system roots, and its
    /// client certificate if it has one).
    pub token_url: String,
    pub client_id: String,
    /// A secret: write it as a `${NAME}` or `${file:/path}` reference;
    /// `/admin/config` never shows it.
    pub client_secret: String,
    /// Sent space-separated as `scope`; none: no `scope` parameter.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// RFC 8707 `resource` parameter (the upstream's URL, usually), so the
    /// token is issued for this upstream only.
    #[serde(default)]
    pub resource: Option<String>,
    /// How the client authenticates to the token endpoint.
    #[serde(default)]
    pub auth_method: ClientAuthMethod,
}

/// How the gateway authenticates to the token endpoint (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMethod {
    /// HTTP Basic with the form-encoded id and secret (the default).
    #[default]
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
}

/// Never prints the secret (configs are `Debug`-printed in logs and panics).
impl std::fmt::Debug for UpstreamOAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamOAuth")
            .field("token_url", &crate::redact::url(&self.token_url))
            .field("client_id", &self.client_id)
            .field("client_secret", &crate::redact::REDACTED)
            .field("scopes", &self.scopes)
            .field("resource", &self.resource)
            .field("auth_method", &self.auth_method)
            .finish()
    }
}

impl UpstreamOAuth {
    /// Whether the token endpoint is reached over TLS.
    pub fn is_https(&self) -> bool {
        self.token_url.starts_with("https://")
    }

    /// Checks serde cannot make. `Err((key under oauth, reason))`; reasons
    /// never show the secret.
    pub(super) fn validate(&self) -> Result<(), (&'static str, String)> {
        super::validate::check_upstream_url(&self.token_url).map_err(|r| ("token_url", r))?;
        if self.token_url.contains('#') {
            return Err((
                "token_url",
                format!(
                    "{:?} must not have a fragment",
                    crate::redact::url(&self.token_url)
                ),
            ));
        }
        if self.client_id.is_empty() || self.client_id.chars().any(char::is_control) {
            return Err((
                "client_id",
                "must be non-empty, without control characters".to_owned(),
            ));
        }
        if self.client_secret.is_empty() {
            return Err((
                "client_secret",
                "must be non-empty (the client-credentials grant is for confidential clients)"
                    .to_owned(),
            ));
        }
        if self.client_secret.chars().any(char::is_control) {
            return Err((
                "client_secret",
                "contains control characters (a file reference keeps only trailing ones out)"
                    .to_owned(),
            ));
        }
        // RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ).
        if let Some(bad) = self.scopes.iter().find(|s| {
            s.is_empty()
                || !s
                    .bytes()
                    .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
        }) {
            return Err((
                "scopes",
                format!("{bad:?} is not a scope token (printable ASCII, no space, '\"' or '\\')"),
            ));
        }
        if let Some(resource) = &self.resource
            && !is_absolute_uri(resource)
        {
            return Err((
                "resource",
                format!(
                    "{:?} must be an absolute URI without a fragment (RFC 8707), \
                     e.g. the upstream's URL",
                    crate::redact::url(resource)
                ),
            ));
        }
        Ok(())
    }
}

/// `scheme:rest`, printable ASCII, no fragment (RFC 8707 §2).
fn is_absolute_uri(text: &str) -> bool {
    let Some((scheme, rest)) = text.split_once(':') else {
        return false;
    };
    let mut s = scheme.bytes();
    s.next().is_some_and(|b| b.is_ascii_alphabetic())
        && s.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        && !rest.is_empty()
        && !text.contains('#')
        && text.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oauth() -> UpstreamOAuth {
        UpstreamOAuth {
            token_url: "https://idp.example.com/oauth/token".to_owned(),
            client_id: "mcpgw".to_owned(),
            client_secret: "s3cret".to_owned(),
            scopes: vec!["crm.read".to_owned()],
            resource: Some("https://crm.example.com/mcp".to_owned()),
            auth_method: ClientAuthMethod::ClientSecretBasic,
        }
    }

    #[test]
    fn a_good_table_passes_and_bad_fields_are_named() {
        assert_eq!(oauth().validate(), Ok(()));
        type Edit = fn(&mut UpstreamOAuth);
        let cases: [(Edit, &str); 6] = [
            (|o| o.token_url = "ftp://idp/token".into(), "token_url"),
            (|o| o.token_url = "https://idp/token#x".into(), "token_url"),
            (|o| o.client_id = String::new(), "client_id"),
            (|o| o.client_secret = String::new(), "client_secret"),
            (|o| o.scopes = vec!["a b".into()], "scopes"),
            (|o| o.resource = Some("crm/mcp".into()), "resource"),
        ];
        for (edit, key) in cases {
            let mut o = oauth();
            edit(&mut o);
            let (got, reason) = o.validate().expect_err(key);
            assert_eq!(got, key, "{reason}");
            assert!(!reason.contains("s3cret"), "{reason}");
        }
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let shown = format!("{:?}", oauth());
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("mcpgw"), "{shown}");
    }

    #[test]
    fn absolute_uris() {
        assert!(is_absolute_uri("https://crm.example.com/mcp"));
        assert!(is_absolute_uri("urn:example:crm"));
        assert!(!is_absolute_uri("/mcp"));
        assert!(!is_absolute_uri("https://crm/mcp#frag"));
        assert!(!is_absolute_uri("1x:y"));
        assert!(!is_absolute_uri("https://crm/ mcp"));
    }
}
