//! Upstream servers of the stateless revision (2026-07-28): telling them
//! from session servers, and rewriting requests for them.
//!
//! Such a server has no `initialize` and no session: every request is one
//! POST that says who the client is in `params._meta` and repeats its
//! method (and tool, prompt or resource) in headers. [`probe`] asks a
//! server which era it speaks (`server/discover`); [`ClientMeta`] is what a
//! downstream client's `initialize` params become on every request;
//! [`rewrite`] adds them to one request's bytes (raw splicing, no serde
//! round trip of the body) and makes its routing headers. The session
//! handle built on this lives in [`super::UpstreamSession`].

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode};

use crate::http::client::HeaderBlock;
use mcpgw_mcp::headers::{MCP_METHOD, MCP_NAME};
use mcpgw_mcp::params;
use mcpgw_mcp::version::{META_PROTOCOL_VERSION, ProtocolVersion};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::{Identity, UpstreamError, UpstreamServer, read_answer};
use crate::jsonrpc::{self, Answer, RawObject};

/// The one stateless revision spoken to upstreams.
pub(crate) const VERSION: ProtocolVersion = ProtocolVersion::V2026_07_28;

const META_CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
const META_CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";

/// Session-era methods the revision removed: never sent to a modern
/// upstream on the gateway's own account (broadcasts skip it).
pub(crate) const REMOVED: [&str; 4] = [
    "ping",
    "logging/setLevel",
    "resources/subscribe",
    "resources/unsubscribe",
];

/// The id of the gateway's own `server/discover`, and the same as raw JSON.
const DISCOVER_ID: &str = "mcpgw-discover";
const DISCOVER_ID_RAW: &str = "\"mcpgw-discover\"";

/// Errors a server of the revision gives a request it cannot serve as
/// sent (header mismatch, missing capability, unsupported version): a
/// modern server that answers `server/discover` with one of them is still
/// modern, and is not mistaken for a legacy one.
const MODERN_ERRORS: [i64; 3] = [
    jsonrpc::HEADER_MISMATCH as i64,
    jsonrpc::MISSING_REQUIRED_CLIENT_CAPABILITY as i64,
    jsonrpc::UNSUPPORTED_PROTOCOL_VERSION as i64,
];

/// What a modern server said of itself in its `server/discover` answer.
#[derive(Debug)]
pub(crate) struct Discovered {
    /// Its capabilities (raw JSON).
    pub capabilities: Box<str>,
    pub server_info: Option<Box<str>>,
    pub instructions: Option<Box<str>>,
}

impl Discovered {
    pub(crate) fn identity(&self) -> Identity {
        Identity {
            server_info: self.server_info.clone(),
            instructions: self.instructions.clone(),
        }
    }
}

#[derive(Deserialize)]
struct DiscoverResult<'a> {
    #[serde(rename = "supportedVersions", default)]
    supported_versions: Vec<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    capabilities: Option<&'a RawValue>,
    #[serde(rename = "_meta", borrow, default)]
    meta: Option<RawObject<'a>>,
    #[serde(default)]
    instructions: Option<String>,
}

/// The downstream client as a modern upstream must hear it on every
/// request: the three `_meta` members, rendered once per upstream
/// session (`"key":value,…`, without braces).
#[derive(Debug, Clone)]
pub(crate) struct ClientMeta {
    rendered: Box<str>,
    /// Where the capabilities' and the client info's values are in
    /// `rendered`.
    capabilities: std::ops::Range<usize>,
    info: std::ops::Range<usize>,
}

#[derive(Deserialize)]
struct InitParams<'a> {
    #[serde(borrow, default)]
    capabilities: Option<&'a RawValue>,
    #[serde(rename = "clientInfo", borrow, default)]
    client_info: Option<&'a RawValue>,
}

impl ClientMeta {
    /// From a client's `initialize` params (a stateful client's own, or
    /// the ones a stateless client's `_meta` made). Capabilities that are
    /// not an object count as none; a missing `clientInfo` is the
    /// gateway's.
    pub(crate) fn from_init_params(init_params: &str) -> Self {
        let parsed = serde_json::from_str::<InitParams<'_>>(init_params).ok();
        let capabilities = parsed
            .as_ref()
            .and_then(|p| p.capabilities)
            .map(RawValue::get)
            .filter(|c| c.trim_start().starts_with('{'))
            .unwrap_or("{}");
        let info = parsed
            .as_ref()
            .and_then(|p| p.client_info)
            .map(RawValue::get)
            .filter(|c| c.trim_start().starts_with('{'))
            .unwrap_or(GATEWAY_INFO);
        let mut out = String::with_capacity(128 + capabilities.len() + info.len());
        jsonrpc::push_json_string(&mut out, META_PROTOCOL_VERSION);
        out.push(':');
        jsonrpc::push_json_string(&mut out, VERSION.as_str());
        out.push(',');
        jsonrpc::push_json_string(&mut out, META_CLIENT_CAPABILITIES);
        out.push(':');
        let capabilities_at = out.len()..out.len() + capabilities.len();
        out.push_str(capabilities);
        out.push(',');
        jsonrpc::push_json_string(&mut out, META_CLIENT_INFO);
        out.push(':');
        let info_at = out.len()..out.len() + info.len();
        out.push_str(info);
        Self {
            rendered: out.into_boxed_str(),
            capabilities: capabilities_at,
            info: info_at,
        }
    }

    /// Whether `meta` already says what these members say, each once: a
    /// stateless client's own `_meta`, which this was made from, needs no
    /// rewriting.
    fn already_in(&self, meta: &RawObject<'_>) -> bool {
        let mut seen = [false; 3];
        for (k, v) in &meta.0 {
            let (i, same) = match &**k {
                META_PROTOCOL_VERSION => (
                    0,
                    v.get().strip_prefix('"').and_then(|v| v.strip_suffix('"'))
                        == Some(VERSION.as_str()),
                ),
                META_CLIENT_CAPABILITIES => {
                    (1, v.get() == &self.rendered[self.capabilities.clone()])
                }
                META_CLIENT_INFO => (2, v.get() == &self.rendered[self.info.clone()]),
                _ => continue,
            };
            if seen[i] || !same {
                return false;
            }
            seen[i] = true;
        }
        seen == [true; 3]
    }

    /// `_meta` (raw JSON object) with these members set, every other
    /// member of `existing` (a progress token, a client's own keys) kept;
    /// `Some(None)` when `existing` says it all already.
    fn merged_into(&self, existing: Option<&str>) -> Option<Option<String>> {
        let mut out = String::with_capacity(self.rendered.len() + existing.map_or(0, str::len) + 2);
        out.push('{');
        if let Some(raw) = existing {
            let obj: RawObject<'_> = serde_json::from_str(raw).ok()?;
            if self.already_in(&obj) {
                return Some(None);
            }
            for (k, v) in &obj.0 {
                if matches!(
                    &**k,
                    META_PROTOCOL_VERSION | META_CLIENT_CAPABILITIES | META_CLIENT_INFO
                ) {
                    continue;
                }
                jsonrpc::push_json_string(&mut out, k);
                out.push(':');
                out.push_str(v.get());
                out.push(',');
            }
        }
        out.push_str(&self.rendered);
        out.push('}');
        Some(Some(out))
    }
}

/// The gateway's own `clientInfo`, for a client that gave none.
const GATEWAY_INFO: &str = concat!(
    "{\"name\":\"mcpgw\",\"version\":\"",
    env!("CARGO_PKG_VERSION"),
    "\"}"
);

#[derive(Deserialize)]
struct Routed<'a> {
    #[serde(borrow, default)]
    name: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    uri: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "_meta", borrow, default)]
    meta: Option<&'a RawValue>,
    #[serde(borrow, default)]
    arguments: Option<&'a RawValue>,
}

/// Whether header `name` is one [`rewrite`] sets per request: left out
/// of the blocks its lines are appended to, so that no header is sent
/// twice (an operator's `[upstream] headers` cannot override them).
pub(crate) fn is_routing_header(name: &HeaderName) -> bool {
    name == MCP_METHOD || name == MCP_NAME || name.as_str().starts_with("mcp-param-")
}

/// One request for a modern upstream: the body with `params._meta`
/// carrying the client, and the header lines the revision requires
/// (`name: value\r\n` each, to append to a block of the session's
/// headers without [`is_routing_header`]s). A message that is not a
/// request or notification (a response) goes unchanged, with no lines.
/// `None` when the body is not a JSON-RPC object (the gateway never sends
/// one).
pub(crate) fn rewrite(
    body: &Bytes,
    client: &ClientMeta,
    tool_params: &super::ToolParams,
) -> Option<(Bytes, Vec<u8>)> {
    let env = jsonrpc::parse(body)?;
    let Some(method) = env.method.as_deref() else {
        return Some((body.clone(), Vec::new()));
    };
    let mut lines = Vec::with_capacity(96);
    push_line(&mut lines, &MCP_METHOD, &params::encode(method));
    let routed = match env.params {
        Some(p) => Some(serde_json::from_str::<Routed<'_>>(p.get()).ok()?),
        None => None,
    };
    let name = match method {
        "tools/call" | "prompts/get" => routed.as_ref().and_then(|r| r.name.as_deref()),
        "resources/read" => routed.as_ref().and_then(|r| r.uri.as_deref()),
        _ => None,
    };
    if let Some(name) = name {
        push_line(&mut lines, &MCP_NAME, &params::encode(name));
    }
    // A tool's annotated arguments, mirrored as the revision asks.
    if method == "tools/call"
        && let Some(bindings) = name.and_then(|n| tool_params.of(n))
    {
        let arguments = routed
            .as_ref()
            .and_then(|r| r.arguments)
            .and_then(|a| serde_json::from_str::<serde_json::Value>(a.get()).ok())
            .unwrap_or(serde_json::Value::Null);
        // One value per header name, the last binding's (as a map would).
        let mut mirrored: Vec<(HeaderName, HeaderValue)> = Vec::new();
        for b in bindings.iter() {
            if let (Some(value), Ok(name)) = (
                b.value_in(&arguments),
                HeaderName::from_bytes(b.header_name().as_bytes()),
            ) {
                mirrored.retain(|(n, _)| *n != name);
                mirrored.push((name, params::encode(&value)));
            }
        }
        for (name, value) in &mirrored {
            push_line(&mut lines, name, value);
        }
    }
    let Some(meta) = client.merged_into(routed.as_ref().and_then(|r| r.meta).map(RawValue::get))?
    else {
        return Some((body.clone(), lines));
    };
    let text = match env.params {
        Some(p) => jsonrpc::with_param(body, p.get(), "_meta", &meta)?,
        None => {
            let mut params = String::with_capacity(meta.len() + 10);
            params.push_str("{\"_meta\":");
            params.push_str(&meta);
            params.push('}');
            jsonrpc::with_member(std::str::from_utf8(body).ok()?, "params", &params)?
        }
    };
    Some((Bytes::from(text), lines))
}

/// Header lines as [`rewrite`] makes them, read back (tests and fuzzing).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn lines_to_map(lines: &[u8]) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for line in lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let line = line.strip_suffix(b"\r").expect("CRLF");
        let at = line
            .windows(2)
            .position(|w| w == b": ")
            .expect("name: value");
        map.append(
            HeaderName::from_bytes(&line[..at]).expect("name"),
            HeaderValue::from_bytes(&line[at + 2..]).expect("value"),
        );
    }
    map
}

fn push_line(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// What `server/discover` said of a server's era.
pub(crate) enum Probed {
    Modern(Discovered),
    /// A legacy answer: a JSON-RPC error the revision does not define, or
    /// an HTTP 4xx (a session server refusing a request without a session).
    Legacy(String),
}

/// Ask `server` which era it speaks, as a client of the revision would:
/// `server/discover` with `client`'s `_meta` and the routing headers. A
/// transport failure, a timeout or a 5xx tells nothing (an error).
pub(crate) async fn probe(
    server: &UpstreamServer,
    client: &ClientMeta,
    deadline: Instant,
) -> Result<Probed, UpstreamError> {
    let request = jsonrpc::request(DISCOVER_ID, "server/discover", Some("{}"));
    let (body, lines) = rewrite(&request, client, &server.tool_params)
        .ok_or_else(|| server.protocol_error("server/discover could not be written"))?;
    let headers = server.headers_for(None, Some(&HeaderValue::from_static(VERSION.as_str())));
    let block = HeaderBlock::except(&headers, is_routing_header);
    let resp = server
        .send_with(&Method::POST, &block, &lines, body, deadline)
        .await?;
    let status = resp.status();
    if status.is_client_error() && status != StatusCode::REQUEST_TIMEOUT {
        // The body may still hold a JSON-RPC error of the revision (a
        // modern server refusing our headers): read it when it is JSON.
        let answer = read_answer(server, resp, DISCOVER_ID_RAW, deadline)
            .await
            .ok();
        if let Some(Answer::Error { code, message }) = answer.as_deref().and_then(jsonrpc::answer)
            && MODERN_ERRORS.contains(&code)
        {
            return Err(
                server.protocol_error(format!("server/discover refused: {message} ({code})"))
            );
        }
        return Ok(Probed::Legacy(format!("HTTP {status}")));
    }
    if !status.is_success() {
        return Err(UpstreamError::Status {
            upstream: server.id.clone(),
            status,
        });
    }
    let message = read_answer(server, resp, DISCOVER_ID_RAW, deadline).await?;
    match jsonrpc::answer(&message) {
        Some(Answer::Result(r)) => discovered(server, r.get()),
        Some(Answer::Error { code, message }) if MODERN_ERRORS.contains(&code) => {
            Err(server.protocol_error(format!("server/discover refused: {message} ({code})")))
        }
        Some(Answer::Error { code, message }) => Ok(Probed::Legacy(format!("{message} ({code})"))),
        None => Err(server.protocol_error("server/discover answer is not JSON-RPC")),
    }
}

/// A `server/discover` result: modern when it lists 2026-07-28.
fn discovered(server: &UpstreamServer, raw: &str) -> Result<Probed, UpstreamError> {
    let result = serde_json::from_str::<DiscoverResult<'_>>(raw)
        .map_err(|e| server.protocol_error(format!("server/discover result: {e}")))?;
    if !result
        .supported_versions
        .iter()
        .any(|v| v == VERSION.as_str())
    {
        return Ok(Probed::Legacy(format!(
            "server/discover lists {:?}, not {}",
            result.supported_versions, VERSION
        )));
    }
    Ok(Probed::Modern(Discovered {
        capabilities: result.capabilities.map_or("{}", RawValue::get).into(),
        server_info: result
            .meta
            .as_ref()
            .and_then(|m| m.get(META_SERVER_INFO))
            .map(|v| v.get().into()),
        instructions: result.instructions.map(String::into_boxed_str),
    }))
}

/// What a modern upstream's result asks of the gateway.
pub(crate) fn needs_input(message: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Kind<'a> {
        #[serde(rename = "resultType", borrow, default)]
        result_type: Option<std::borrow::Cow<'a, str>>,
    }
    // A substring scan first: almost every answer is not one.
    if memchr::memmem::find(message, b"input_required").is_none() {
        return false;
    }
    matches!(jsonrpc::answer(message), Some(Answer::Result(r))
        if serde_json::from_str::<Kind<'_>>(r.get())
            .is_ok_and(|k| k.result_type.as_deref() == Some("input_required")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::ToolParams;

    fn json(b: &[u8]) -> serde_json::Value {
        serde_json::from_slice(b).expect("json")
    }

    /// [`rewrite`], its header lines read back into a map.
    pub(crate) fn rewrite_map(
        body: &Bytes,
        client: &ClientMeta,
        tool_params: &ToolParams,
    ) -> Option<(Bytes, http::HeaderMap)> {
        let (out, lines) = rewrite(body, client, tool_params)?;
        Some((out, lines_to_map(&lines)))
    }

    #[test]
    fn client_meta_comes_from_init_params() {
        let m = ClientMeta::from_init_params(
            r#"{"protocolVersion":"2025-11-25","capabilities":{"elicitation":{}},"clientInfo":{"name":"c","version":"1"}}"#,
        );
        let v = json(m.merged_into(None).flatten().expect("meta").as_bytes());
        assert_eq!(v[META_PROTOCOL_VERSION], "2026-07-28");
        assert_eq!(
            v[META_CLIENT_CAPABILITIES],
            serde_json::json!({"elicitation": {}})
        );
        assert_eq!(v[META_CLIENT_INFO]["name"], "c");
        let bare = json(
            ClientMeta::from_init_params("not json")
                .merged_into(None)
                .flatten()
                .expect("meta")
                .as_bytes(),
        );
        assert_eq!(bare[META_CLIENT_CAPABILITIES], serde_json::json!({}));
        assert_eq!(bare[META_CLIENT_INFO]["name"], "mcpgw");
    }

    #[test]
    fn requests_gain_meta_and_headers() {
        let m = ClientMeta::from_init_params(r#"{"capabilities":{},"clientInfo":{"name":"c"}}"#);
        let body = Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"h\u00e9","arguments":{"a":1},"_meta":{"progressToken":"t","io.modelcontextprotocol/clientInfo":{"name":"old"}}}}"#,
        );
        let (out, h) = rewrite_map(&body, &m, &ToolParams::default()).expect("rewritten");
        let v = json(&out);
        assert_eq!(v["id"], 7);
        assert_eq!(v["params"]["arguments"]["a"], 1);
        assert_eq!(v["params"]["_meta"]["progressToken"], "t");
        assert_eq!(v["params"]["_meta"][META_CLIENT_INFO]["name"], "c");
        assert_eq!(h[&MCP_METHOD], "tools/call");
        assert_eq!(h[&MCP_NAME], "=?base64?aMOp?=");

        let list = Bytes::from_static(br#"{"jsonrpc":"2.0","id":"x","method":"tools/list"}"#);
        let (out, h) = rewrite_map(&list, &m, &ToolParams::default()).expect("rewritten");
        assert_eq!(
            json(&out)["params"]["_meta"][META_PROTOCOL_VERSION],
            "2026-07-28"
        );
        assert!(h.get(&MCP_NAME).is_none());

        let read = Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"mem://a/b"}}"#,
        );
        let (_, h) = rewrite_map(&read, &m, &ToolParams::default()).expect("rewritten");
        assert_eq!(h[&MCP_NAME], "mem://a/b");
    }

    #[test]
    fn a_stateless_clients_own_meta_is_sent_as_it_is() {
        let m = ClientMeta::from_init_params(
            r#"{"capabilities":{"elicitation":{}},"clientInfo":{"name":"c","version":"1"}}"#,
        );
        let own = Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"add","_meta":{"io.modelcontextprotocol/clientInfo":{"name":"c","version":"1"},"progressToken":1,"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{"elicitation":{}}}}}"#,
        );
        let (out, h) = rewrite_map(&own, &m, &ToolParams::default()).expect("rewritten");
        assert_eq!(out, own, "the same bytes, not a copy rewritten");
        assert_eq!(h[&MCP_NAME], "add");
        // One member that differs (or is given twice) and the whole is rewritten.
        for other in [
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/clientInfo":{"name":"d","version":"1"},"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{"elicitation":{}}}}}"#,
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/clientInfo":{"name":"c","version":"1"},"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#,
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/clientInfo":{"name":"c","version":"1"},"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{"elicitation":{}},"io.modelcontextprotocol/clientInfo":{"name":"x"}}}}"#,
        ] {
            let body = Bytes::from(other);
            let (out, _) = rewrite_map(&body, &m, &ToolParams::default()).expect("rewritten");
            assert_ne!(out, body, "{other}");
            let meta = &json(&out)["params"]["_meta"];
            assert_eq!(meta[META_CLIENT_INFO]["name"], "c", "{other}");
            assert_eq!(
                meta[META_CLIENT_CAPABILITIES],
                serde_json::json!({"elicitation": {}}),
                "{other}"
            );
        }
    }

    #[test]
    fn a_listed_tools_annotated_arguments_become_headers() {
        let m = ClientMeta::from_init_params("{}");
        let params = ToolParams::default();
        params.learn(
            r#"{"tools":[{"name":"deploy","inputSchema":{"type":"object","properties":{
                "region":{"type":"string","x-mcp-header":"Region"},
                "force":{"type":"boolean","x-mcp-header":"Force"}}}}]}"#,
        );
        let call = Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"deploy","arguments":{"region":"\u00e9u"}}}"#,
        );
        let (_, h) = rewrite_map(&call, &m, &params).expect("rewritten");
        assert_eq!(h["mcp-param-region"], "=?base64?w6l1?=");
        assert!(
            h.get("mcp-param-force").is_none(),
            "absent argument, no header"
        );
        let other = Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"other","arguments":{"region":"x"}}}"#,
        );
        let (_, h) = rewrite_map(&other, &m, &params).expect("rewritten");
        assert!(h.get("mcp-param-region").is_none());
    }

    #[test]
    fn input_required_is_seen() {
        assert!(needs_input(
            br#"{"jsonrpc":"2.0","id":1,"result":{"resultType":"input_required","inputRequests":{}}}"#
        ));
        assert!(!needs_input(
            br#"{"jsonrpc":"2.0","id":1,"result":{"resultType":"complete","content":[{"type":"text","text":"input_required"}]}}"#
        ));
    }
}
