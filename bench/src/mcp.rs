//! MCP over Streamable HTTP, as much as the load generator needs: the endpoint, request
//! bytes rendered ahead of time (per session: the whole head; per request only the id
//! and `Content-Length` are written), and the check of an answer, JSON or SSE.
//!
//! Two eras of clients ([`Era`]): the stateful one (`initialize`, then the session's
//! `Mcp-Session-Id` on every request) and the stateless revision 2026-07-28 (no
//! session; every request repeats its version, method and tool name in headers and
//! carries the client's description in `params._meta`). Both render to a fixed head
//! and a body around the id, so the per-request cost in the generator is the same.
//!
//! An answer counts as a success only if it is 2xx, parses, is the JSON-RPC response to
//! the request sent (same id) and carries a `result` whose `isError` is not `true`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{SocketAddr, ToSocketAddrs as _};

use anyhow::{Context as _, Result, bail};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::http::{ContentKind, Head};

/// The protocol version the load generator asks for in `initialize`.
pub(crate) const DEFAULT_PROTOCOL_VERSION: &str = "2025-11-25";

/// The stateless revision a stateless client speaks.
pub(crate) const STATELESS_PROTOCOL_VERSION: &str = "2026-07-28";

/// Which kind of MCP client the load generator is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Era {
    /// Sessions: `initialize` once, then `Mcp-Session-Id` on every request.
    #[default]
    Stateful,
    /// 2026-07-28: no `initialize`, no session; each request stands alone.
    Stateless,
}

/// Where requests go: a loopback address and an HTTP path, plus the extra header lines
/// sent with every request.
#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    pub(crate) addr: SocketAddr,
    host: String,
    path: String,
    /// `Name: Value\r\n` lines.
    extra_headers: String,
}

impl Endpoint {
    /// Parses `http://HOST:PORT/PATH`. Only loopback addresses are accepted: a benchmark
    /// here sends traffic to this machine only.
    pub(crate) fn parse(url: &str, extra_headers: &[String]) -> Result<Self> {
        let rest = url
            .strip_prefix("http://")
            .with_context(|| format!("{url}: only http:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let addr = authority
            .to_socket_addrs()
            .with_context(|| format!("{url}: cannot resolve {authority} (HOST:PORT)"))?
            .next()
            .with_context(|| format!("{url}: {authority} resolves to nothing"))?;
        if !addr.ip().is_loopback() {
            bail!("{url}: {addr} is not a loopback address; this tool only loads this machine");
        }
        let mut extra = String::new();
        for h in extra_headers {
            let Some((name, value)) = h.split_once(':') else {
                bail!("header {h:?} is not `Name: Value`");
            };
            let (name, value) = (name.trim(), value.trim());
            if name.is_empty() || name.contains(char::is_whitespace) || value.contains(['\r', '\n'])
            {
                bail!("header {h:?} is not a valid header line");
            }
            let _ = write!(extra, "{name}: {value}\r\n");
        }
        Ok(Self {
            addr,
            host: authority.to_owned(),
            path: path.to_owned(),
            extra_headers: extra,
        })
    }

    /// The request head up to (not including) `Content-Length`, for a POST with the
    /// MCP header lines `mcp` (session or routing headers, each ending `\r\n`), and
    /// `Connection: close` when `close`.
    fn post_head(&self, mcp: &str, close: bool) -> Vec<u8> {
        let mut head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n{mcp}",
            self.path, self.host
        );
        head.push_str(&self.extra_headers);
        if close {
            head.push_str("Connection: close\r\n");
        }
        head.into_bytes()
    }

    /// A complete `DELETE` request ending `session`; none for a stateless caller, which
    /// has no session to end.
    pub(crate) fn delete(&self, session: &Session, close: bool) -> Option<Vec<u8>> {
        let id = session.id.as_deref()?;
        let mut req = format!(
            "DELETE {} HTTP/1.1\r\nHost: {}\r\nMcp-Session-Id: {id}\r\nMCP-Protocol-Version: {}\r\n{}",
            self.path, self.host, session.version, self.extra_headers
        );
        if close {
            req.push_str("Connection: close\r\n");
        }
        req.push_str("\r\n");
        Some(req.into_bytes())
    }

    /// A complete `initialize` request.
    pub(crate) fn initialize(&self, id: u64, version: &str, close: bool) -> Vec<u8> {
        let body = json!({
            "jsonrpc": "2.0",
            "id": id,
            "method": "initialize",
            "params": {
                "protocolVersion": version,
                "capabilities": {},
                "clientInfo": client_info(),
            },
        })
        .to_string();
        finish(self.post_head("", close), body.as_bytes())
    }
}

/// Appends `Content-Length`, the blank line and the body to a head.
fn finish(mut head: Vec<u8>, body: &[u8]) -> Vec<u8> {
    let _ = write!(head, "Content-Length: {}\r\n\r\n", body.len());
    head.extend_from_slice(body);
    head
}

/// An MCP session opened by `initialize`, or a stateless caller (no session), with its
/// request head rendered once.
#[derive(Debug)]
pub(crate) struct Session {
    /// `Mcp-Session-Id`; `None` for a stateless caller.
    pub(crate) id: Option<String>,
    pub(crate) version: String,
    /// The POST head for this session, up to `Content-Length`.
    head: Vec<u8>,
}

impl Session {
    pub(crate) fn new(endpoint: &Endpoint, id: String, version: String, close: bool) -> Self {
        let lines = format!("Mcp-Session-Id: {id}\r\nMCP-Protocol-Version: {version}\r\n");
        let head = endpoint.post_head(&lines, close);
        Self {
            id: Some(id),
            version,
            head,
        }
    }

    /// A stateless (2026-07-28) caller of `call`: no session; the head carries the
    /// routing headers the revision requires on a `tools/call`, which must agree with
    /// the body (the version in `_meta`, the method, the tool's name).
    pub(crate) fn stateless(endpoint: &Endpoint, call: &CallTemplate, close: bool) -> Self {
        let lines = format!(
            "MCP-Protocol-Version: {STATELESS_PROTOCOL_VERSION}\r\nMcp-Method: tools/call\r\nMcp-Name: {}\r\n",
            header_value(&call.tool)
        );
        Self {
            id: None,
            version: STATELESS_PROTOCOL_VERSION.to_owned(),
            head: endpoint.post_head(&lines, close),
        }
    }

    /// The complete `notifications/initialized` request.
    pub(crate) fn initialized(&self) -> Vec<u8> {
        finish(
            self.head.clone(),
            br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        )
    }

    /// Renders a `tools/call` with JSON-RPC id `id` into `out` (cleared first).
    pub(crate) fn render_call(&self, call: &CallTemplate, id: u64, out: &mut Vec<u8>) {
        let mut digits = [0u8; 20];
        let id_text = format_u64(id, &mut digits);
        out.clear();
        out.extend_from_slice(&self.head);
        let len = call.prefix.len() + id_text.len() + call.suffix.len();
        let _ = write!(out, "Content-Length: {len}\r\n\r\n");
        out.extend_from_slice(call.prefix);
        out.extend_from_slice(id_text);
        out.extend_from_slice(&call.suffix);
    }
}

/// Formats `n` in decimal into `buf`; returns the digits.
fn format_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// The body of a `tools/call` around its id: `prefix ID suffix`.
#[derive(Debug)]
pub(crate) struct CallTemplate {
    prefix: &'static [u8],
    suffix: Vec<u8>,
    /// The tool's name, for a stateless caller's `Mcp-Name`.
    tool: String,
    era: Era,
}

impl CallTemplate {
    /// A call of `tool` with `arguments` by a client of `era`. A stateless call carries
    /// in `_meta` what a stateful client said once in `initialize`: the protocol
    /// version, its capabilities (none) and who it is.
    pub(crate) fn new(tool: &str, arguments: &Value, era: Era) -> Self {
        let params = match era {
            Era::Stateful => json!({"name": tool, "arguments": arguments}),
            Era::Stateless => json!({
                "name": tool,
                "arguments": arguments,
                "_meta": {
                    "io.modelcontextprotocol/protocolVersion": STATELESS_PROTOCOL_VERSION,
                    "io.modelcontextprotocol/clientCapabilities": {},
                    "io.modelcontextprotocol/clientInfo": client_info(),
                },
            }),
        };
        Self {
            prefix: br#"{"jsonrpc":"2.0","id":"#,
            suffix: format!(r#","method":"tools/call","params":{params}}}"#).into_bytes(),
            tool: tool.to_owned(),
            era,
        }
    }

    pub(crate) fn era(&self) -> Era {
        self.era
    }
}

/// The `clientInfo` the generator gives, in `initialize` and in a stateless `_meta`.
fn client_info() -> Value {
    json!({"name": "mcpgw-bench", "version": env!("CARGO_PKG_VERSION")})
}

/// A header value that says `text`: as is when it is plain visible ASCII (spaces inside
/// only), else in the revision's `=?base64?…?=` form (UTF-8, standard alphabet), which
/// is also how a name that itself looks like that form has to be sent.
fn header_value(text: &str) -> String {
    let plain = !text.is_empty()
        && text.bytes().all(|b| (0x20..0x7f).contains(&b))
        && !text.starts_with(' ')
        && !text.ends_with(' ')
        && !text.starts_with("=?base64?");
    if plain {
        return text.to_owned();
    }
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::from("=?base64?");
    for chunk in text.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out.push_str("?=");
    out
}

/// How one exchange ended, for the error counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    /// A non-2xx status.
    Status,
    /// No JSON-RPC response to the request could be read from the body.
    Unparsable,
    /// A JSON-RPC `error`.
    RpcError,
    /// A `result` with `isError: true`.
    ToolError,
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    id: Option<u64>,
    #[serde(default)]
    result: Option<ResultFlags>,
    #[serde(default)]
    error: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct ResultFlags {
    #[serde(rename = "isError", default)]
    is_error: Option<bool>,
}

/// Checks the answer to the request with JSON-RPC id `id`.
pub(crate) fn check_answer(head: &Head, body: &[u8], id: u64) -> Outcome {
    if !(200..300).contains(&head.status) {
        return Outcome::Status;
    }
    let answer = match head.kind {
        ContentKind::Json => serde_json::from_slice::<Answer>(body)
            .ok()
            .filter(|a| a.id == Some(id)),
        ContentKind::EventStream => sse_answer(body, id),
        ContentKind::Other => None,
    };
    match answer {
        None => Outcome::Unparsable,
        Some(a) if a.error.is_some() => Outcome::RpcError,
        Some(Answer {
            result: Some(r), ..
        }) if r.is_error == Some(true) => Outcome::ToolError,
        Some(Answer {
            result: Some(_), ..
        }) => Outcome::Ok,
        Some(_) => Outcome::Unparsable,
    }
}

/// Finds the JSON-RPC response with id `id` among the events of an SSE body;
/// notifications and requests on the stream are skipped.
fn sse_answer(body: &[u8], id: u64) -> Option<Answer> {
    let mut data: Vec<u8> = Vec::new();
    let mut found = None;
    let mut on_event = |data: &mut Vec<u8>| {
        if !data.is_empty() {
            if let Ok(a) = serde_json::from_slice::<Answer>(data)
                && a.id == Some(id)
                && (a.result.is_some() || a.error.is_some())
            {
                found = Some(a);
            }
            data.clear();
        }
    };
    for line in body.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            on_event(&mut data);
            continue;
        }
        if let Some(value) = line.strip_prefix(b"data:") {
            let value = value.strip_prefix(b" ").unwrap_or(value);
            if !data.is_empty() {
                data.push(b'\n');
            }
            data.extend_from_slice(value);
        }
    }
    on_event(&mut data);
    found
}

/// Reads the `initialize` answer: the negotiated protocol version.
pub(crate) fn initialize_answer(head: &Head, body: &[u8]) -> Result<String> {
    if !(200..300).contains(&head.status) {
        bail!(
            "initialize answered HTTP {}: {}",
            head.status,
            String::from_utf8_lossy(body)
        );
    }
    let message: Value = match head.kind {
        ContentKind::Json => serde_json::from_slice(body)?,
        ContentKind::EventStream => {
            let text = std::str::from_utf8(body)?;
            let data: String = text
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim_start)
                .collect::<Vec<_>>()
                .join("\n");
            serde_json::from_str(&data)?
        }
        ContentKind::Other => bail!("initialize answer has an unexpected content type"),
    };
    if let Some(error) = message.get("error") {
        bail!("initialize failed: {error}");
    }
    message
        .pointer("/result/protocolVersion")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .context("initialize answer has no result.protocolVersion")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(status: u16, kind: ContentKind) -> Head {
        Head {
            status,
            kind,
            session_id: None,
            close: false,
        }
    }

    #[test]
    fn json_answers() {
        let ok = br#"{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"1"}],"structuredContent":{"count":1}}}"#;
        assert_eq!(
            check_answer(&head(200, ContentKind::Json), ok, 7),
            Outcome::Ok
        );
        assert_eq!(
            check_answer(&head(200, ContentKind::Json), ok, 8),
            Outcome::Unparsable
        );
        assert_eq!(
            check_answer(&head(500, ContentKind::Json), ok, 7),
            Outcome::Status
        );
        let tool_error = br#"{"jsonrpc":"2.0","id":7,"result":{"content":[],"isError":true}}"#;
        assert_eq!(
            check_answer(&head(200, ContentKind::Json), tool_error, 7),
            Outcome::ToolError
        );
        let rpc_error = br#"{"jsonrpc":"2.0","id":7,"error":{"code":-32602,"message":"no"}}"#;
        assert_eq!(
            check_answer(&head(200, ContentKind::Json), rpc_error, 7),
            Outcome::RpcError
        );
        assert_eq!(
            check_answer(&head(200, ContentKind::Json), b"{not json", 7),
            Outcome::Unparsable
        );
    }

    #[test]
    fn sse_answer_after_a_notification() {
        let body = b"event: message\r\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{}}\r\n\r\nid: 1\ndata: {\"jsonrpc\":\"2.0\",\ndata: \"id\":3,\"result\":{}}\n\n";
        assert_eq!(
            check_answer(&head(200, ContentKind::EventStream), body, 3),
            Outcome::Ok
        );
        assert_eq!(
            check_answer(&head(200, ContentKind::EventStream), body, 4),
            Outcome::Unparsable
        );
    }

    #[test]
    fn call_rendering() -> Result<()> {
        let ep = Endpoint::parse("http://127.0.0.1:9/mcp", &["X-A: b".to_owned()])?;
        let session = Session::new(&ep, "s1".to_owned(), "2025-06-18".to_owned(), false);
        let call = CallTemplate::new("increment", &json!({}), Era::Stateful);
        let mut out = Vec::new();
        session.render_call(&call, 1234, &mut out);
        let text = String::from_utf8(out)?;
        let (head, body) = text.split_once("\r\n\r\n").context("no blank line")?;
        assert!(head.starts_with("POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:9\r\n"));
        assert!(
            head.contains(
                "\r\nMcp-Session-Id: s1\r\nMCP-Protocol-Version: 2025-06-18\r\nX-A: b\r\n"
            )
        );
        assert!(head.ends_with(&format!("Content-Length: {}", body.len())));
        let v: Value = serde_json::from_str(body)?;
        assert_eq!(
            v,
            json!({"jsonrpc":"2.0","id":1234,"method":"tools/call","params":{"name":"increment","arguments":{}}})
        );
        Ok(())
    }

    #[test]
    fn stateless_call_rendering() -> Result<()> {
        let ep = Endpoint::parse("http://127.0.0.1:9/mcp", &[])?;
        let call = CallTemplate::new("increment", &json!({"by": 2}), Era::Stateless);
        let caller = Session::stateless(&ep, &call, false);
        assert_eq!(ep.delete(&caller, false), None);
        let mut out = Vec::new();
        caller.render_call(&call, 7, &mut out);
        let text = String::from_utf8(out)?;
        let (head, body) = text.split_once("\r\n\r\n").context("no blank line")?;
        assert!(head.contains(
            "\r\nMCP-Protocol-Version: 2026-07-28\r\nMcp-Method: tools/call\r\nMcp-Name: increment\r\n"
        ));
        assert!(!head.contains("Mcp-Session-Id"));
        assert!(head.ends_with(&format!("Content-Length: {}", body.len())));
        let v: Value = serde_json::from_str(body)?;
        assert_eq!(v["id"], 7);
        assert_eq!(v["params"]["arguments"], json!({"by": 2}));
        let meta = &v["params"]["_meta"];
        assert_eq!(
            meta["io.modelcontextprotocol/protocolVersion"],
            "2026-07-28"
        );
        assert_eq!(
            meta["io.modelcontextprotocol/clientCapabilities"],
            json!({})
        );
        assert_eq!(
            meta["io.modelcontextprotocol/clientInfo"]["name"],
            "mcpgw-bench"
        );
        Ok(())
    }

    #[test]
    fn header_values() {
        assert_eq!(header_value("get weather"), "get weather");
        // UTF-8 "Wä" is 57 C3 A4.
        assert_eq!(header_value("Wä"), "=?base64?V8Ok?=");
        assert_eq!(header_value("weather"), "weather");
        assert_eq!(header_value("a\u{e9}"), "=?base64?YcOp?=");
        assert_eq!(header_value(" x"), "=?base64?IHg=?=");
        assert_eq!(header_value(""), "=?base64??=");
    }

    #[test]
    fn only_loopback() {
        assert!(Endpoint::parse("http://192.0.2.1:80/mcp", &[]).is_err());
        assert!(Endpoint::parse("https://127.0.0.1:80/mcp", &[]).is_err());
        assert!(Endpoint::parse("http://localhost:80/mcp", &[]).is_ok());
    }
}
