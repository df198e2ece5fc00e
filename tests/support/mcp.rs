//! An MCP Streamable HTTP client (protocol 2025-11-25) for tests, on top of [`crate::http`].
//!
//! It does what a real client does (keeps `Mcp-Session-Id` and `MCP-Protocol-Version`
//! from `initialize`, sends `notifications/initialized`, accepts JSON and SSE answers)
//! and leaves the connection under the test's control: one kept-alive connection by
//! default, a fresh connection per request on demand (so the gateway's supervisor routes
//! every request by its session id), or a connection the test passes in (to put several
//! sessions on one connection).

use std::net::SocketAddr;

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use serde_json::{Value, json};

use crate::http::{HttpConn, Request, Response};
use crate::sse;

pub const PROTOCOL_VERSION: &str = "2025-11-25";
pub const ACCEPT_BOTH: &str = "application/json, text/event-stream";
pub const SESSION_HEADER: &str = "Mcp-Session-Id";
pub const VERSION_HEADER: &str = "MCP-Protocol-Version";
pub const WORKER_HEADER: &str = "x-mcpgw-worker";

/// Which worker served a response, from the gateway's `x-mcpgw-worker: SLOT/GEN/PID`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WorkerTag {
    pub slot: u32,
    pub generation: u64,
    pub pid: u32,
}

impl WorkerTag {
    pub fn parse(value: &str) -> Result<Self> {
        let parts: Vec<&str> = value.trim().split('/').collect();
        let [slot, generation, pid] = parts[..] else {
            bail!("{WORKER_HEADER} is not SLOT/GEN/PID: {value:?}");
        };
        Ok(Self {
            slot: slot.parse().with_context(|| format!("slot in {value:?}"))?,
            generation: generation
                .parse()
                .with_context(|| format!("generation in {value:?}"))?,
            pid: pid.parse().with_context(|| format!("pid in {value:?}"))?,
        })
    }

    pub fn of(response: &Response) -> Result<Self> {
        let value = response.header(WORKER_HEADER).ok_or_else(|| {
            anyhow!(
                "response (status {}) has no {WORKER_HEADER} header",
                response.status
            )
        })?;
        Self::parse(value)
    }
}

/// The answer to one JSON-RPC request: the HTTP response and the JSON-RPC message in it.
#[derive(Debug, Clone)]
pub struct RpcReply {
    pub response: Response,
    pub message: Value,
}

impl RpcReply {
    /// Extracts the JSON-RPC response with `id` from a JSON or SSE body.
    pub fn from_response(response: Response, id: &Value) -> Result<Self> {
        let message = match response.media_type().as_deref() {
            Some("application/json") => response.json()?,
            Some("text/event-stream") => {
                let text = response.text();
                sse::parse(&text)
                    .into_iter()
                    .filter_map(|e| serde_json::from_str::<Value>(&e.data).ok())
                    .find(|m| {
                        m.get("id") == Some(id)
                            && (m.get("result").is_some() || m.get("error").is_some())
                    })
                    .ok_or_else(|| anyhow!("no response with id {id} in the SSE body {text:?}"))?
            }
            other => bail!(
                "unexpected answer: status {}, content type {other:?}, body {:?}",
                response.status,
                response.text()
            ),
        };
        Ok(Self { response, message })
    }

    pub fn status(&self) -> u16 {
        self.response.status
    }

    /// The `result`, or an error describing the JSON-RPC error.
    pub fn result(&self) -> Result<&Value> {
        if let Some(error) = self.message.get("error") {
            bail!("JSON-RPC error {error} (HTTP {})", self.status());
        }
        self.message
            .get("result")
            .ok_or_else(|| anyhow!("neither result nor error in {}", self.message))
    }

    /// The JSON-RPC error code and message, if this is an error.
    pub fn error(&self) -> Option<(i64, String)> {
        let error = self.message.get("error")?;
        Some((
            error
                .get("code")
                .and_then(Value::as_i64)
                .unwrap_or_default(),
            error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        ))
    }

    pub fn worker(&self) -> Result<WorkerTag> {
        WorkerTag::of(&self.response)
    }

    /// The counter value of an `increment`/`get_count` result, checked against its text.
    pub fn count(&self) -> Result<u64> {
        let result = self.result()?;
        ensure!(
            result.get("isError") != Some(&Value::Bool(true)),
            "tool error: {result}"
        );
        let count = result
            .pointer("/structuredContent/count")
            .and_then(Value::as_u64)
            .ok_or_else(|| anyhow!("no structuredContent.count in {result}"))?;
        let text = result.pointer("/content/0/text").and_then(Value::as_str);
        ensure!(
            text == Some(count.to_string().as_str()),
            "text content {text:?} != count {count}"
        );
        Ok(count)
    }

    /// The text of the first content block of a tool result.
    pub fn text(&self) -> Result<String> {
        self.result()?
            .pointer("/content/0/text")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no text content in {}", self.message))
    }
}

/// Whether `id` has the gateway's session-id format: 26 chars of lowercase base32.
pub fn is_gateway_session_id(id: &str) -> bool {
    id.len() == 26
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
}

/// One MCP client session.
#[derive(Debug)]
pub struct McpClient {
    addr: SocketAddr,
    path: String,
    accept: String,
    session_id: Option<String>,
    protocol_version: Option<String>,
    next_id: u64,
    conn: Option<HttpConn>,
    fresh_connections: bool,
    /// `Authorization: Bearer …` on every request, when set.
    bearer: Option<String>,
}

impl McpClient {
    pub fn new(addr: SocketAddr, path: &str) -> Self {
        Self {
            addr,
            path: path.to_owned(),
            accept: ACCEPT_BOTH.to_owned(),
            session_id: None,
            protocol_version: None,
            next_id: 1,
            conn: None,
            fresh_connections: false,
            bearer: None,
        }
    }

    /// Sends `Authorization: Bearer <token>` with every request from now on
    /// (`None`: no `Authorization` header).
    pub fn set_bearer(&mut self, token: Option<&str>) {
        self.bearer = token.map(str::to_owned);
    }

    /// [`Self::set_bearer`], as a builder.
    pub fn with_bearer(mut self, token: &str) -> Self {
        self.set_bearer(Some(token));
        self
    }

    /// Uses this `Accept` header instead of JSON + SSE.
    pub fn with_accept(mut self, accept: &str) -> Self {
        self.accept = accept.to_owned();
        self
    }

    /// Opens a new connection for every request instead of keeping one alive.
    pub fn with_fresh_connections(mut self) -> Self {
        self.fresh_connections = true;
        self
    }

    /// Talks to another gateway from now on (same session: a restarted
    /// gateway, or another host sharing the store).
    pub fn retarget(&mut self, addr: SocketAddr) {
        self.addr = addr;
        self.conn = None;
    }

    pub fn session_id(&self) -> Option<&str> {
        self.session_id.as_deref()
    }

    /// Pretends to hold this session id (for malformed or unknown ids).
    pub fn set_session_id(&mut self, id: &str) {
        self.session_id = Some(id.to_owned());
        self.protocol_version
            .get_or_insert_with(|| PROTOCOL_VERSION.to_owned());
    }

    /// Adds this session's id and protocol version, as every request after
    /// `initialize` must carry them, and the bearer token if there is one.
    fn with_session(&self, mut request: Request) -> Request {
        if let Some(id) = &self.session_id {
            request = request.header(SESSION_HEADER, id);
        }
        if let Some(version) = &self.protocol_version {
            request = request.header(VERSION_HEADER, version);
        }
        if let Some(token) = &self.bearer {
            request = request.header("Authorization", &format!("Bearer {token}"));
        }
        request
    }

    /// A POST of `body` with this session's headers.
    pub fn post_request(&self, body: impl Into<Vec<u8>>) -> Request {
        self.with_session(
            Request::post(&self.path, body)
                .header("Content-Type", "application/json")
                .header("Accept", &self.accept),
        )
    }

    /// A GET that opens this session's server stream.
    pub fn stream_request(&self) -> Request {
        self.with_session(Request::get(&self.path).header("Accept", "text/event-stream"))
    }

    /// Sends a request on this client's own connection.
    pub async fn send(&mut self, request: &Request) -> Result<Response> {
        let reuse = !self.fresh_connections && self.conn.as_ref().is_some_and(|c| !c.peer_closed());
        let mut conn = match self.conn.take() {
            Some(conn) if reuse => conn,
            _ => HttpConn::connect(self.addr).await?,
        };
        let response = conn.send(request).await?;
        if !self.fresh_connections && !response.closes_connection() {
            self.conn = Some(conn);
        }
        Ok(response)
    }

    fn next_request(&mut self, method: &str, params: Value) -> (Value, Value) {
        let id = json!(self.next_id);
        self.next_id += 1;
        let mut message = json!({"jsonrpc": "2.0", "id": id, "method": method});
        if !params.is_null() {
            message["params"] = params;
        }
        (id, message)
    }

    /// Sends a JSON-RPC request and returns its answer (which may be a JSON-RPC error).
    pub async fn request(&mut self, method: &str, params: Value) -> Result<RpcReply> {
        let (id, message) = self.next_request(method, params);
        let request = self.post_request(message.to_string());
        let response = self.send(&request).await?;
        RpcReply::from_response(response, &id).with_context(|| format!("answer to {method}"))
    }

    /// Like [`Self::request`], on a connection the caller owns.
    pub async fn request_on(
        &mut self,
        conn: &mut HttpConn,
        method: &str,
        params: Value,
    ) -> Result<RpcReply> {
        let (id, message) = self.next_request(method, params);
        let request = self.post_request(message.to_string());
        let response = conn.send(&request).await?;
        RpcReply::from_response(response, &id).with_context(|| format!("answer to {method}"))
    }

    /// Sends a notification; the answer should be 202 with no body.
    pub async fn notify(&mut self, method: &str, params: Value) -> Result<Response> {
        let mut message = json!({"jsonrpc": "2.0", "method": method});
        if !params.is_null() {
            message["params"] = params;
        }
        let request = self.post_request(message.to_string());
        self.send(&request).await
    }

    /// `initialize` + `notifications/initialized`. Returns the initialize answer, whose
    /// worker header names the session's owner.
    pub async fn initialize(&mut self) -> Result<RpcReply> {
        self.initialize_with(json!({})).await
    }

    /// [`Self::initialize`] declaring these client capabilities.
    pub async fn initialize_with(&mut self, capabilities: Value) -> Result<RpcReply> {
        self.initialize_version(PROTOCOL_VERSION, capabilities)
            .await
    }

    /// [`Self::initialize`] asking for protocol `version`.
    pub async fn initialize_version(
        &mut self,
        version: &str,
        capabilities: Value,
    ) -> Result<RpcReply> {
        self.session_id = None;
        self.protocol_version = None;
        let reply = self
            .request(
                "initialize",
                json!({
                    "protocolVersion": version,
                    "capabilities": capabilities,
                    "clientInfo": {"name": "mcpgw-tests", "version": "0.1.0"},
                }),
            )
            .await?;
        ensure!(
            reply.status() == 200,
            "initialize answered HTTP {}: {:?}",
            reply.status(),
            reply.response.text()
        );
        let version = reply
            .result()?
            .get("protocolVersion")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                anyhow!(
                    "initialize result without protocolVersion: {}",
                    reply.message
                )
            })?
            .to_owned();
        let session = reply
            .response
            .header(SESSION_HEADER)
            .ok_or_else(|| anyhow!("initialize answer without {SESSION_HEADER}"))?
            .to_owned();
        self.session_id = Some(session);
        self.protocol_version = Some(version);
        let ack = self
            .notify("notifications/initialized", Value::Null)
            .await?;
        ensure!(
            ack.status == 202,
            "notifications/initialized answered {} {:?}",
            ack.status,
            ack.text()
        );
        Ok(reply)
    }

    pub async fn call_tool(&mut self, name: &str, arguments: Value) -> Result<RpcReply> {
        self.request("tools/call", json!({"name": name, "arguments": arguments}))
            .await
    }

    /// Calls a counting tool (`increment`, `get_count`, or a namespaced one) and returns
    /// the count.
    pub async fn count(&mut self, tool: &str) -> Result<u64> {
        self.call_tool(tool, json!({}))
            .await?
            .count()
            .with_context(|| format!("calling {tool}"))
    }

    /// All tool names, following `nextCursor` pages.
    pub async fn tool_names(&mut self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let params = match &cursor {
                Some(c) => json!({"cursor": c}),
                None => Value::Null,
            };
            let reply = self.request("tools/list", params).await?;
            let result = reply.result()?;
            let tools = result
                .get("tools")
                .and_then(Value::as_array)
                .ok_or_else(|| anyhow!("tools/list without tools: {result}"))?;
            for tool in tools {
                let name = tool.get("name").and_then(Value::as_str);
                names.push(
                    name.ok_or_else(|| anyhow!("tool without name: {tool}"))?
                        .to_owned(),
                );
            }
            match result.get("nextCursor").and_then(Value::as_str) {
                Some(next) => {
                    ensure!(names.len() < 10_000, "tools/list pagination does not end");
                    cursor = Some(next.to_owned());
                }
                None => return Ok(names),
            }
        }
    }

    /// Ends the session with DELETE.
    pub async fn delete(&mut self) -> Result<Response> {
        let request = self.with_session(Request::delete(&self.path));
        self.send(&request).await
    }
}
