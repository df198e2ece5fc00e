//! Entry points of the fuzz targets in `fuzz/` (the `fuzzing` feature; the
//! gateway's own build never has this module). Each drives one parser that
//! reads bytes from the network on an in-memory input, the way the worker
//! drives it on a socket, and asserts what must hold of the result, so a
//! target is one call. Not an API: hidden, and free to change with the
//! parsers it reaches.
//!
//! - [`request_head`], [`http_server`]: the HTTP/1.1 server (its head
//!   parser alone; a whole connection with bodies, pipelining, refusals).
//! - [`chunked`]: the chunked decoder both sides share.
//! - [`upstream_answer`]: the upstream client's answer reader.
//! - [`rewrite`]: the request rewriting for stateless (2026-07-28)
//!   upstreams.

use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub(crate) use crate::http::wire::decode_chunked;

pub use crate::http::client::fuzz::upstream_answer;
pub use crate::http::server::fuzz::{http_server, request_head};

/// One current-thread runtime per process (built once: a runtime per input
/// would cost more than most inputs).
pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime")
    })
}

/// How the first byte of an input cuts the rest into reads: `0` is one
/// read of everything, `n` reads of at most `n` bytes. Read boundaries are
/// where incremental parsers go wrong.
pub(crate) fn piece_and_rest(data: &[u8]) -> (usize, &[u8]) {
    match data.split_first() {
        None => (usize::MAX, data),
        Some((0, rest)) => (usize::MAX, rest),
        Some((&n, rest)) => (usize::from(n), rest),
    }
}

/// A connection in memory: reads hand out `input` in pieces of at most
/// `piece` bytes, then the end of the stream; writes are kept. Never
/// pending, so a parser driven on it runs to its end in one poll.
pub(crate) struct MemIo {
    input: Bytes,
    at: usize,
    piece: usize,
    pub(crate) written: Vec<u8>,
}

impl MemIo {
    pub(crate) fn new(input: &[u8], piece: usize) -> Self {
        Self {
            input: Bytes::copy_from_slice(input),
            at: 0,
            piece: piece.max(1),
            written: Vec::new(),
        }
    }

    /// Bytes not read yet: for a pooled connection, what a kernel peek
    /// would find (an idle connection is one with none).
    pub(crate) fn unread(&self) -> usize {
        self.input.len() - self.at
    }
}

impl AsyncRead for MemIo {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let n = this.unread().min(this.piece).min(buf.remaining());
        buf.put_slice(&this.input[this.at..this.at + n]);
        this.at += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for MemIo {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().written.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The chunked decoder: the same body (or the same refusal) whatever the
/// read boundaries, never more data than wire bytes, and what the server
/// writes with `push_chunk_size` decodes to what it wrote.
pub fn chunked(data: &[u8]) {
    let (piece, wire) = piece_and_rest(data);
    let whole = decode_chunked(wire, usize::MAX);
    for other in [piece, 1] {
        assert_eq!(
            decode_chunked(wire, other),
            whole,
            "read boundaries changed the body (pieces of {other})"
        );
    }
    if let Ok(Some((body, took))) = &whole {
        assert!(took <= &wire.len() && body.len() <= *took);
    }
    // Round trip: `wire` itself as data, framed as the server frames it.
    let mut framed = Vec::with_capacity(wire.len() + 64);
    for part in wire.chunks(piece.clamp(1, 4096)) {
        crate::http::server::fuzz::push_chunk(&mut framed, part);
    }
    framed.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(
        decode_chunked(&framed, piece),
        Ok(Some((wire.to_vec(), framed.len()))),
        "a body the server framed does not decode to itself"
    );
}

/// The request rewriting for stateless upstreams: a JSON-RPC request or
/// notification comes out with `params._meta` carrying the client (and the
/// rest of the message as it was), with `Mcp-Method` set; anything else
/// comes out unchanged or not at all.
/// Parameter headers of two tools, so that rewrites exercise `Mcp-Param-*`
/// mirroring too (arguments at the top level and nested).
static TOOL_PARAMS: std::sync::LazyLock<crate::upstream::ToolParams> = std::sync::LazyLock::new(
    || {
        let params = crate::upstream::ToolParams::default();
        params.learn(
            r#"{"tools":[{"name":"t","inputSchema":{"properties":{"r":{"type":"string","x-mcp-header":"R"},"o":{"type":"object","properties":{"n":{"type":"integer","x-mcp-header":"N"}}}}}},{"name":"b","inputSchema":{"properties":{"f":{"type":"boolean","x-mcp-header":"F"}}}}]}"#,
        );
        params
    },
);

pub fn rewrite(data: &[u8]) {
    use mcpgw_mcp::headers::MCP_METHOD;
    // The first line is the client's `initialize` params, the rest the body.
    let (init, body) = match memchr::memchr(b'\n', data) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&b"{}"[..], data),
    };
    let client = crate::upstream::modern::ClientMeta::from_init_params(
        std::str::from_utf8(init).unwrap_or("{}"),
    );
    let body = Bytes::copy_from_slice(body);
    let Some((out, lines)) = crate::upstream::modern::rewrite(&body, &client, &TOOL_PARAMS) else {
        return;
    };
    let headers = crate::upstream::modern::lines_to_map(&lines);
    let env = crate::jsonrpc::parse(&body).expect("a rewritten body was a JSON-RPC object");
    let Some(method) = env.method.as_deref() else {
        assert_eq!(out, body, "a message without a method was changed");
        return;
    };
    assert!(
        headers.contains_key(MCP_METHOD),
        "no Mcp-Method for {method:?}"
    );
    // serde_json's `Value` refuses numbers past f64's range that raw
    // values carry through; the members are checked when it parses.
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&out) {
        let meta = &value["params"]["_meta"];
        assert!(meta.is_object(), "no params._meta in {value}");
        assert!(
            meta.get(mcpgw_mcp::version::META_PROTOCOL_VERSION)
                .is_some_and(serde_json::Value::is_string),
            "no protocol version in {meta}"
        );
    }
    let rewritten = crate::jsonrpc::parse(&out).expect("the rewritten body is a JSON-RPC object");
    assert_eq!(rewritten.method.as_deref(), Some(method));
    assert_eq!(
        rewritten.id.map(|id| id.get()),
        env.id.map(|id| id.get()),
        "the id changed"
    );
}

/// The session id the worker reads from a request head (`None` when it
/// refuses the head or it is partial; `Some(None)` without a well-formed
/// id): the peek target holds it against the supervisor's, which must
/// route by the same id.
pub fn request_session(data: &[u8]) -> Option<Option<mcpgw_protocol::session_id::SessionId>> {
    use mcpgw_mcp::headers::MCP_SESSION_ID;
    use mcpgw_protocol::session_id::SessionId;
    let max = data.len().saturating_add(1);
    let (head, _) = crate::http::server::fuzz::parse_request(data, max)?;
    Some(
        head.parts
            .headers
            .get(MCP_SESSION_ID)
            .and_then(|v| SessionId::parse(v.as_bytes()).ok()),
    )
}
