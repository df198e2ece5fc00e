//! `rogue-server`: a misbehaving upstream MCP server for the hardening tests.
//!
//! It speaks just enough Streamable HTTP (`initialize`, notifications,
//! `tools/list`, `ping`, DELETE) over raw TCP to be an upstream, and then
//! breaks HTTP/1.1 and JSON-RPC on purpose, one tool per misbehaviour, so
//! that a test can show the gateway keeps every session's answers its own
//! and its memory bounded:
//!
//! - `echo`: a correct answer naming the upstream session it came on.
//! - `double`: a correct answer, then an unsolicited second answer
//!   (id 99, "SMUGGLED") on the same connection right away.
//! - `double_late`: a correct answer; the unsolicited one is written when
//!   the next request arrives on that connection, before its real answer.
//! - `trailer`: a chunked answer followed by an endless trailer line.
//! - `big_head`: an answer whose head is 82 KB.
//! - `truncated`: `Content-Length: 100`, ten bytes, then the connection closes.
//! - `ambiguous`: an answer with both `Content-Length` and chunked framing.
//! - `big`: an answer of `size` bytes (argument), sent whole.
//! - `stalled_big`: an answer of `size` bytes of which all but the last 100
//!   are sent at once; the rest follows `POST /release`.
//!
//! `GET /stats` reports connections accepted and stalled answers waiting.
//! The first stdout line is `rogue-server listening http://ADDR`.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

#[derive(Default)]
struct State {
    connections: AtomicU64,
    sessions: AtomicU64,
    stalled: AtomicU64,
    release: Notify,
}

const SMUGGLED: &str =
    r#"{"jsonrpc":"2.0","id":99,"result":{"content":[{"type":"text","text":"SMUGGLED"}]}}"#;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let local = listener.local_addr()?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "rogue-server listening http://{local}")?;
    stdout.flush()?;
    let state = Arc::new(State::default());
    loop {
        let (conn, _) = listener.accept().await?;
        state.connections.fetch_add(1, Ordering::Relaxed);
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = serve(conn, &state).await {
                eprintln!("[rogue] connection ended: {e:#}");
            }
        });
    }
}

struct Req {
    method: String,
    path: String,
    session: Option<String>,
    body: Vec<u8>,
}

/// One request from `buf`+`conn`; `None` at a clean end of the connection.
async fn read_request(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Option<Req>> {
    let end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut chunk = [0u8; 8192];
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_owned();
    let path = first.next().unwrap_or("").to_owned();
    let mut length = 0usize;
    let mut session = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse().context("content-length")?;
        } else if name.eq_ignore_ascii_case("mcp-session-id") {
            session = Some(value.to_owned());
        }
    }
    while buf.len() < end + length {
        let mut chunk = [0u8; 8192];
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed inside a body");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[end..end + length].to_vec();
    buf.drain(..end + length);
    Ok(Some(Req {
        method,
        path,
        session,
        body,
    }))
}

fn answer(status: &str, extra: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn result(id: &Value, result: Value) -> String {
    json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string()
}

fn text(id: &Value, text: &str) -> String {
    result(id, json!({"content": [{"type": "text", "text": text}]}))
}

async fn serve(mut conn: TcpStream, state: &State) -> Result<()> {
    let mut buf = Vec::new();
    // A stray answer owed to the next request on this connection.
    let mut owed = false;
    while let Some(req) = read_request(&mut conn, &mut buf).await? {
        if std::mem::take(&mut owed) {
            conn.write_all(&answer("200 OK", "", SMUGGLED)).await?;
        }
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/stats") => {
                let stats = json!({
                    "connections": state.connections.load(Ordering::Relaxed),
                    "stalled": state.stalled.load(Ordering::Relaxed),
                });
                conn.write_all(&answer("200 OK", "", &stats.to_string()))
                    .await?;
            }
            ("POST", "/release") => {
                state.release.notify_waiters();
                conn.write_all(&answer("200 OK", "", "{}")).await?;
            }
            ("DELETE", _) => conn.write_all(&answer("200 OK", "", "")).await?,
            ("GET", _) => {
                conn.write_all(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n")
                    .await?
            }
            ("POST", _) => {
                if !rpc(&mut conn, &req, state, &mut owed).await? {
                    return Ok(());
                }
            }
            _ => {
                conn.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                    .await?
            }
        }
    }
    Ok(())
}

/// Answer one JSON-RPC message; `false` when the connection must end.
async fn rpc(conn: &mut TcpStream, req: &Req, state: &State, owed: &mut bool) -> Result<bool> {
    let msg: Value = serde_json::from_slice(&req.body).context("JSON body")?;
    let id = msg.get("id").cloned().unwrap_or(Value::Null);
    let method = msg.get("method").and_then(Value::as_str).unwrap_or("");
    if msg.get("id").is_none() {
        conn.write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")
            .await?;
        return Ok(true);
    }
    match method {
        "initialize" => {
            let n = state.sessions.fetch_add(1, Ordering::Relaxed) + 1;
            let version = msg
                .pointer("/params/protocolVersion")
                .cloned()
                .unwrap_or(json!("2025-06-18"));
            let body = result(
                &id,
                json!({
                    "protocolVersion": version,
                    "capabilities": {"tools": {}},
                    "serverInfo": {"name": "rogue", "version": "1"}
                }),
            );
            let extra = format!("mcp-session-id: rogue-{n}\r\n");
            conn.write_all(&answer("200 OK", &extra, &body)).await?;
        }
        "ping" => {
            conn.write_all(&answer("200 OK", "", &result(&id, json!({}))))
                .await?
        }
        "tools/list" => {
            let tools: Vec<Value> = [
                "echo",
                "double",
                "double_late",
                "trailer",
                "big_head",
                "truncated",
                "ambiguous",
                "big",
                "stalled_big",
            ]
            .iter()
            .map(|n| json!({"name": n, "inputSchema": {"type": "object"}}))
            .collect();
            let body = result(&id, json!({ "tools": tools }));
            conn.write_all(&answer("200 OK", "", &body)).await?;
        }
        "tools/call" => return call(conn, req, state, owed, &msg, &id).await,
        _ => {
            let body =
                json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": "no"}});
            conn.write_all(&answer("200 OK", "", &body.to_string()))
                .await?;
        }
    }
    Ok(true)
}

async fn call(
    conn: &mut TcpStream,
    req: &Req,
    state: &State,
    owed: &mut bool,
    msg: &Value,
    id: &Value,
) -> Result<bool> {
    let name = msg
        .pointer("/params/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let size = msg
        .pointer("/params/arguments/size")
        .and_then(Value::as_u64)
        .unwrap_or(1024) as usize;
    let session = req.session.as_deref().unwrap_or("none");
    let echo = text(id, &format!("echo from {session}"));
    match name {
        "echo" => conn.write_all(&answer("200 OK", "", &echo)).await?,
        "double" => {
            // Two writes: the second may arrive after the gateway took the
            // first answer and put the connection back in its pool.
            conn.write_all(&answer("200 OK", "", &echo)).await?;
            conn.flush().await?;
            tokio::task::yield_now().await;
            conn.write_all(&answer("200 OK", "", SMUGGLED)).await?;
        }
        "double_late" => {
            conn.write_all(&answer("200 OK", "", &echo)).await?;
            *owed = true;
        }
        "trailer" => {
            let body = echo.as_bytes();
            let mut out = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n",
                body.len()
            )
            .into_bytes();
            out.extend_from_slice(body);
            out.extend_from_slice(b"\r\n0\r\nX: ");
            out.extend(std::iter::repeat_n(b'a', 65_533));
            out.push(b'\n');
            conn.write_all(&out).await?;
            // Then up to 128 MB without a newline, until the gateway hangs up.
            let piece = vec![b'b'; 64 * 1024];
            for _ in 0..2048 {
                if conn.write_all(&piece).await.is_err() {
                    break;
                }
            }
            return Ok(false);
        }
        "big_head" => {
            let filler = "a".repeat(82 * 1024);
            let extra = format!("x-filler: {filler}\r\n");
            conn.write_all(&answer("200 OK", &extra, &echo)).await?;
        }
        "truncated" => {
            conn.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"jsonrpc\"",
            )
            .await?;
            return Ok(false);
        }
        "ambiguous" => {
            let body = echo.as_bytes();
            let mut out = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n",
                body.len(),
                body.len()
            )
            .into_bytes();
            out.extend_from_slice(body);
            out.extend_from_slice(b"\r\n0\r\n\r\n");
            conn.write_all(&out).await?;
        }
        "big" | "stalled_big" => {
            let pad = size.saturating_sub(echo.len() + 16).max(1);
            let body = text(id, &"x".repeat(pad));
            let all = answer("200 OK", "", &body);
            if name == "big" {
                conn.write_all(&all).await?;
            } else {
                let cut = all.len().saturating_sub(100);
                conn.write_all(&all[..cut]).await?;
                let released = state.release.notified();
                state.stalled.fetch_add(1, Ordering::Relaxed);
                released.await;
                state.stalled.fetch_sub(1, Ordering::Relaxed);
                conn.write_all(&all[cut..]).await?;
            }
        }
        other => {
            let body = json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32602, "message": format!("no tool {other}")}});
            conn.write_all(&answer("200 OK", "", &body.to_string()))
                .await?;
        }
    }
    Ok(true)
}
