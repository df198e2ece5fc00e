//! Requests of the stateless MCP revision (2026-07-28), written by hand.
//!
//! Every request is self-contained: `params._meta` names the protocol version, the
//! client's capabilities and its identity, and the routing headers repeat what the body
//! says (`MCP-Protocol-Version`, `Mcp-Method`, and `Mcp-Name` for `tools/call`,
//! `prompts/get` and `resources/read`). [`message`] and [`post`] build a consistent
//! request; a test that wants an inconsistent one edits it afterwards
//! ([`Request::set_header`], [`Request::without_header`], or the JSON before [`post`]).

use std::net::SocketAddr;

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

use crate::http::{HttpConn, Request, Response};
use crate::mcp::{ACCEPT_BOTH, RpcReply, VERSION_HEADER};

/// The stateless revision.
pub const MODERN_VERSION: &str = "2026-07-28";
pub const METHOD_HEADER: &str = "Mcp-Method";
pub const NAME_HEADER: &str = "Mcp-Name";
pub const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
pub const META_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
pub const META_INFO: &str = "io.modelcontextprotocol/clientInfo";
/// The `_meta` key that tags a notification with the subscription it answers.
pub const META_SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";

/// The `_meta` every stateless request carries: version, no capabilities, a client name.
pub fn meta() -> Value {
    json!({
        META_VERSION: MODERN_VERSION,
        META_CAPABILITIES: {},
        META_INFO: {"name": "t", "version": "1"},
    })
}

/// A JSON-RPC request (`id` `Some`) or notification (`None`) with [`meta`] added to
/// `params` (an object, or `Value::Null` for none but `_meta`).
pub fn message(id: Option<Value>, method: &str, params: Value) -> Value {
    let mut params = match params {
        Value::Null => json!({}),
        other => other,
    };
    if let Some(obj) = params.as_object_mut() {
        obj.insert("_meta".to_owned(), meta());
    }
    let mut message = json!({"jsonrpc": "2.0", "method": method, "params": params});
    if let Some(id) = id {
        message["id"] = id;
    }
    message
}

/// A POST of `tools/call` of the counter-server's `ask` tool (it asks the client
/// `method` with `params` mid-call), from a client that declares `capabilities`; the
/// members of `extra` (a retry's `inputResponses` and `requestState`) join the params.
pub fn ask(id: u64, method: &str, params: Value, capabilities: Value, extra: Value) -> Request {
    let mut call = json!({"name": "ask", "arguments": {"method": method, "params": params}});
    if let (Some(call), Value::Object(extra)) = (call.as_object_mut(), extra) {
        call.extend(extra);
    }
    let mut message = message(Some(json!(id)), "tools/call", call);
    message["params"]["_meta"][META_CAPABILITIES] = capabilities;
    post("/mcp", &message)
}

/// The one input request of an `input_required` answer: its key, the request, and the
/// answer's `requestState`.
pub fn input_request(answer: &Value) -> Result<(String, Value, Value)> {
    let result = &answer["result"];
    anyhow::ensure!(
        result["resultType"] == "input_required",
        "not input_required: {answer}"
    );
    let requests = result["inputRequests"]
        .as_object()
        .context("no inputRequests")?;
    anyhow::ensure!(requests.len() == 1, "not one input request: {answer}");
    let (key, request) = requests.iter().next().context("one request")?;
    Ok((key.clone(), request.clone(), result["requestState"].clone()))
}

/// A POST of `message` to `path` with the headers the revision asks for, taken from the
/// message itself: `MCP-Protocol-Version` from `_meta`, `Mcp-Method`, and `Mcp-Name`
/// from `params.name` (`tools/call`, `prompts/get`) or `params.uri` (`resources/read`).
pub fn post(path: &str, message: &Value) -> Request {
    let mut request = Request::post(path, message.to_string())
        .header("Content-Type", "application/json")
        .header("Accept", ACCEPT_BOTH);
    if let Some(version) = message
        .pointer("/params/_meta")
        .and_then(|m| m.get(META_VERSION))
        .and_then(Value::as_str)
    {
        request = request.header(VERSION_HEADER, version);
    }
    let method = message.get("method").and_then(Value::as_str);
    if let Some(method) = method {
        request = request.header(METHOD_HEADER, method);
    }
    let name = match method {
        Some("tools/call" | "prompts/get") => message.pointer("/params/name"),
        Some("resources/read") => message.pointer("/params/uri"),
        _ => None,
    };
    if let Some(name) = name.and_then(Value::as_str) {
        request = request.header(NAME_HEADER, name);
    }
    request
}

/// Sends `request` on a connection of its own.
pub async fn send(addr: SocketAddr, request: &Request) -> Result<Response> {
    let mut conn = HttpConn::connect(addr).await?;
    conn.send(request).await
}

/// A stateless client: nothing but a path and the next request id. Every request goes
/// on a new connection, so the supervisor picks a worker for each.
#[derive(Debug)]
pub struct StatelessClient {
    addr: SocketAddr,
    path: String,
    next_id: u64,
}

impl StatelessClient {
    pub fn new(addr: SocketAddr, path: &str) -> Self {
        Self {
            addr,
            path: path.to_owned(),
            next_id: 1,
        }
    }

    /// The next request id and a consistent POST of `method` with `params`.
    pub fn prepare(&mut self, method: &str, params: Value) -> (Value, Request) {
        let id = json!(self.next_id);
        self.next_id += 1;
        let request = post(&self.path, &message(Some(id.clone()), method, params));
        (id, request)
    }

    /// Sends `request` (made by [`Self::prepare`], maybe edited since) and reads the
    /// answer to `id`.
    pub async fn send(&self, id: &Value, request: &Request) -> Result<RpcReply> {
        let response = send(self.addr, request).await?;
        RpcReply::from_response(response, id)
    }

    /// A consistent request and its answer (which may be a JSON-RPC error).
    pub async fn request(&mut self, method: &str, params: Value) -> Result<RpcReply> {
        let (id, request) = self.prepare(method, params);
        self.send(&id, &request)
            .await
            .with_context(|| format!("answer to stateless {method}"))
    }

    /// Calls a counting tool and returns the count.
    pub async fn count(&mut self, tool: &str) -> Result<u64> {
        self.request("tools/call", json!({"name": tool, "arguments": {}}))
            .await?
            .count()
            .with_context(|| format!("stateless call of {tool}"))
    }
}
