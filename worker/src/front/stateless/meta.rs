//! What a stateless request says of itself, checked: its `_meta` (protocol
//! version, client capabilities, client info) and the routing headers that
//! must repeat the body (`MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name`).
//! A header that disagrees with the body is refused, never trusted: a
//! proxy may route on the headers, the gateway acts on the body.

use std::borrow::Cow;
use std::fmt;

use http::{HeaderMap, HeaderName};
use mcpgw_mcp::headers::{MCP_METHOD, MCP_NAME, MCP_PROTOCOL_VERSION};
use mcpgw_mcp::version::{META_PROTOCOL_VERSION, ProtocolVersion};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::VERSION;
use crate::endpoints::Endpoint;

/// Why a stateless request is refused, by the error the revision gives it.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// Not a request at all (-32600).
    Invalid(String),
    /// `_meta` lacks what every request must carry (-32602).
    Meta(String),
    /// A routing header is missing or disagrees with the body (-32020).
    Header(String),
    /// A protocol version not served here (-32022), as asked.
    Version(String),
    /// A method the revision does not have, or not served (-32601).
    NoMethod(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid(m) | Self::Meta(m) | Self::Header(m) | Self::NoMethod(m) => {
                f.write_str(m)
            }
            Self::Version(v) => write!(f, "Unsupported protocol version: {v:?}"),
        }
    }
}

/// The client, as one request describes it, and what else its params say
/// that the front end acts on: read in one pass over the params.
pub(crate) struct RequestMeta<'a> {
    capabilities: &'a RawValue,
    info: Option<&'a RawValue>,
    /// `params.name` (a tool's or prompt's), as sent.
    pub(crate) name: Option<Cow<'a, str>>,
    /// `params.arguments` of a `tools/call`.
    pub(crate) arguments: Option<&'a RawValue>,
    /// `params.requestState`: what a retry (MRTR) echoes.
    pub(crate) request_state: Option<Cow<'a, str>>,
    /// `params.inputResponses`: a retry's answers to what it was asked.
    pub(crate) input_responses: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Meta<'a> {
    #[serde(rename = "io.modelcontextprotocol/protocolVersion", borrow, default)]
    version: Option<Cow<'a, str>>,
    #[serde(rename = "io.modelcontextprotocol/clientCapabilities", borrow, default)]
    capabilities: Option<&'a RawValue>,
    #[serde(rename = "io.modelcontextprotocol/clientInfo", borrow, default)]
    info: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Params<'a> {
    #[serde(rename = "_meta", borrow, default)]
    meta: Option<Meta<'a>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    uri: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    arguments: Option<&'a RawValue>,
    #[serde(rename = "requestState", borrow, default)]
    request_state: Option<Cow<'a, str>>,
    #[serde(rename = "inputResponses", borrow, default)]
    input_responses: Option<&'a RawValue>,
}

impl<'a> RequestMeta<'a> {
    /// Check one request in the revision's order: `_meta`, then the
    /// headers against the body, then the version.
    pub(crate) fn check(
        headers: &HeaderMap,
        method: &str,
        params: Option<&'a RawValue>,
    ) -> Result<Self, Refusal> {
        let missing = |what: &str| {
            Refusal::Meta(format!(
                "request params._meta is missing or has a malformed {what}"
            ))
        };
        let params: Params<'a> = match params {
            Some(p) => {
                serde_json::from_str(p.get()).map_err(|e| Refusal::Meta(format!("params: {e}")))?
            }
            None => return Err(missing(META_PROTOCOL_VERSION)),
        };
        let meta = params.meta.ok_or_else(|| missing(META_PROTOCOL_VERSION))?;
        let version = meta.version.ok_or_else(|| missing(META_PROTOCOL_VERSION))?;
        let capabilities = meta
            .capabilities
            .filter(|c| c.get().trim_start().starts_with('{'))
            .ok_or_else(|| missing("io.modelcontextprotocol/clientCapabilities"))?;

        one_header(headers, &MCP_PROTOCOL_VERSION, &version)?;
        one_header(headers, &MCP_METHOD, method)?;
        let routed = match method {
            "tools/call" | "prompts/get" => Some(("params.name", params.name.as_deref())),
            "resources/read" => Some(("params.uri", params.uri.as_deref())),
            _ => None,
        };
        if let Some((what, value)) = routed {
            let value = value.ok_or_else(|| Refusal::Meta(format!("{method} needs {what}")))?;
            one_header(headers, &MCP_NAME, value)?;
        }

        if ProtocolVersion::parse(&version) != Some(VERSION) {
            return Err(Refusal::Version(version.into_owned()));
        }
        Ok(Self {
            capabilities,
            info: meta.info,
            name: params.name,
            arguments: params.arguments,
            request_state: params.request_state,
            input_responses: params.input_responses,
        })
    }

    /// `initialize` params for a stateful upstream on this client's behalf:
    /// its own capabilities and info, so the upstream offers it what it
    /// would offer the client directly.
    pub(crate) fn upstream_init_params(&self, version: &str) -> String {
        self.init_params(version, self.capabilities.get())
    }

    /// As [`Self::upstream_init_params`], but declaring no client
    /// capabilities: for upstream sessions that only carry notifications
    /// (a subscription), so that an upstream request on them (sampling,
    /// elicitation, roots), which no stateless client could answer there,
    /// is refused at once instead of waiting.
    pub(crate) fn listener_init_params(&self, version: &str) -> String {
        self.init_params(version, "{}")
    }

    fn init_params(&self, version: &str, capabilities: &str) -> String {
        let info = self.info.map_or(
            concat!(
                "{\"name\":\"mcpgw\",\"version\":\"",
                env!("CARGO_PKG_VERSION"),
                "\"}"
            ),
            RawValue::get,
        );
        let mut p = String::with_capacity(64 + capabilities.len() + info.len());
        p.push_str("{\"protocolVersion\":");
        crate::jsonrpc::push_json_string(&mut p, version);
        p.push_str(",\"capabilities\":");
        p.push_str(capabilities);
        p.push_str(",\"clientInfo\":");
        p.push_str(info);
        p.push('}');
        p
    }
}

/// A `tools/call`'s `Mcp-Param-*` headers against its arguments, for a
/// tool whose annotations this worker has seen in a `tools/list` answer
/// (`x-mcp-header`; a tool not listed here is not checked). A header that
/// disagrees with the body, is missing or has no argument: -32020.
pub(super) fn check_param_headers(
    endpoint: &Endpoint,
    headers: &HeaderMap,
    name: &str,
    arguments: Option<&RawValue>,
) -> Result<(), Refusal> {
    let Some(bindings) = endpoint
        .resolve(name)
        .and_then(|(pos, name)| endpoint.upstreams[pos].tool_params.of(name))
    else {
        return Ok(());
    };
    let arguments = arguments
        .and_then(|a| serde_json::from_str(a.get()).ok())
        .unwrap_or(serde_json::Value::Null);
    mcpgw_mcp::params::check(&bindings, &arguments, |name| {
        headers.get(name).map(|v| v.as_bytes())
    })
    .map_err(Refusal::Header)
}

/// Header `name` must be there once and say `expected` (its value may be
/// in the revision's `=?base64?…?=` form).
fn one_header(headers: &HeaderMap, name: &HeaderName, expected: &str) -> Result<(), Refusal> {
    let mut values = headers.get_all(name).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(Refusal::Header(
            match headers.get_all(name).iter().count() {
                0 => format!("the {name} header is required and must be {expected:?}"),
                n => format!("the {name} header is given {n} times"),
            },
        ));
    };
    let decoded = mcpgw_mcp::params::decode(value.as_bytes())
        .ok_or_else(|| Refusal::Header(format!("the {name} header is not valid")))?;
    if decoded != expected {
        return Err(Refusal::Header(format!(
            "the {name} header says {decoded:?} but the body says {expected:?}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    fn params(extra: &str) -> Box<RawValue> {
        RawValue::from_string(format!(
            r#"{{"_meta":{{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{{"elicitation":{{}}}},"io.modelcontextprotocol/clientInfo":{{"name":"c","version":"1"}}}}{extra}}}"#
        ))
        .expect("raw")
    }

    #[test]
    fn a_consistent_request_passes_and_names_its_client() {
        let p = params(r#","name":"weather""#);
        let h = headers(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "=?base64?d2VhdGhlcg==?="),
        ]);
        let meta = RequestMeta::check(&h, "tools/call", Some(&p)).expect("valid");
        let init: serde_json::Value =
            serde_json::from_str(&meta.upstream_init_params("2025-11-25")).expect("json");
        assert_eq!(init["protocolVersion"], "2025-11-25");
        assert_eq!(init["capabilities"], serde_json::json!({"elicitation": {}}));
        assert_eq!(init["clientInfo"]["name"], "c");
    }

    #[test]
    fn each_disagreement_is_refused_for_what_it_is() {
        let p = params(r#","name":"weather""#);
        let base = [
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "weather"),
        ];
        let check = |h: &HeaderMap| RequestMeta::check(h, "tools/call", Some(&p)).err();
        assert!(matches!(
            check(&headers(&base[..2])),
            Some(Refusal::Header(_))
        ));
        let mut wrong = base;
        wrong[2].1 = "rain";
        assert!(matches!(check(&headers(&wrong)), Some(Refusal::Header(_))));
        let mut twice = base.to_vec();
        twice.push(("mcp-method", "tools/call"));
        assert!(matches!(check(&headers(&twice)), Some(Refusal::Header(_))));
        let mut version = base;
        version[0].1 = "2025-11-25";
        assert!(matches!(
            check(&headers(&version)),
            Some(Refusal::Header(_))
        ));
        let bare = RawValue::from_string(r#"{"name":"weather"}"#.into()).expect("raw");
        assert!(matches!(
            RequestMeta::check(&headers(&base), "tools/call", Some(&bare)),
            Err(Refusal::Meta(_))
        ));
        let old = RawValue::from_string(
            r#"{"_meta":{"io.modelcontextprotocol/protocolVersion":"2099-01-01","io.modelcontextprotocol/clientCapabilities":{}}}"#.into(),
        )
        .expect("raw");
        let h = headers(&[
            ("mcp-protocol-version", "2099-01-01"),
            ("mcp-method", "tools/list"),
        ]);
        assert!(matches!(
            RequestMeta::check(&h, "tools/list", Some(&old)),
            Err(Refusal::Version(v)) if v == "2099-01-01"
        ));
    }
}
