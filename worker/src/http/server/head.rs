//! Request heads in, answer heads out: the pure half of the HTTP/1.1
//! server, no I/O, so every rule is unit-tested without a socket.
//!
//! What a request head may be follows RFC 9112 with the strict choices a
//! gateway should make: a body framed by both `Transfer-Encoding` and
//! `Content-Length`, by a transfer coding other than a final `chunked`, or
//! by disagreeing lengths is refused (request smuggling lives in those
//! gaps), and so is any version but HTTP/1.0 and HTTP/1.1.

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, Version};

use crate::http::wire::{
    Malformed, has_token, header_lines, parse_decimal, push_decimal, share_head,
};

/// Most headers in one request head.
const MAX_HEADERS: usize = 100;

/// How a request's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

/// A parsed request head.
#[derive(Debug)]
pub(crate) struct RequestHead {
    pub parts: Parts,
    pub framing: BodyFraming,
    /// The client lets the connection carry another request after this one.
    pub keep_alive: bool,
    /// `Expect: 100-continue`: the client waits for a go before its body.
    pub expect_continue: bool,
}

impl RequestHead {
    pub(crate) fn is_http10(&self) -> bool {
        self.parts.version == Version::HTTP_10
    }
}

/// Why a request head is refused; the answer is the status, then close.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {reason}")]
pub(crate) struct Refused {
    pub status: StatusCode,
    pub reason: &'static str,
}

fn bad(reason: &'static str) -> Refused {
    Refused {
        status: StatusCode::BAD_REQUEST,
        reason,
    }
}

/// Parse the request head at the start of `buf`: `Ok(None)` while it is
/// incomplete, with the head's length when it is whole.
pub(crate) fn parse_request(
    buf: &[u8],
    max_head: usize,
) -> Result<Option<(RequestHead, usize)>, Refused> {
    let too_large = Refused {
        status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        reason: "request head too large",
    };
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut req, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(len)) if len > max_head => return Err(too_large),
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= max_head => return Err(too_large),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refused {
                reason: "too many headers",
                ..too_large
            });
        }
        Err(httparse::Error::Version) => {
            return Err(Refused {
                status: StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                reason: "only HTTP/1.0 and HTTP/1.1 are served here",
            });
        }
        Err(_) => return Err(bad("malformed request head")),
    };
    let (Some(method), Some(path), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(bad("incomplete request line"));
    };
    let share = share_head(&buf[..len]);
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| bad("bad method"))?;
    let uri =
        Uri::from_maybe_shared(share(path.as_bytes())).map_err(|_| bad("bad request target"))?;
    let http10 = minor == 0;
    let lines = header_lines(req.headers, &share).map_err(|Malformed(why)| bad(why))?;
    let keep_alive = !lines.close && (!http10 || lines.keep_alive);
    let framing = match (lines.transfer_encoded, lines.length) {
        (true, Some(_)) => return Err(bad("both transfer-encoding and content-length")),
        (true, None) if http10 => return Err(bad("transfer-encoding in an HTTP/1.0 request")),
        (true, None) if !lines.chunked => return Err(bad("transfer coding other than chunked")),
        (true, None) => BodyFraming::Chunked,
        (false, Some(0) | None) => BodyFraming::None,
        (false, Some(n)) => BodyFraming::Length(n),
    };
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = if http10 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    parts.headers = lines.headers;
    Ok(Some((
        RequestHead {
            parts,
            framing,
            keep_alive,
            expect_continue: lines.expect_continue && !http10,
        },
        len,
    )))
}

/// How an answer's body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AnswerFraming {
    /// No body at all (1xx, 204, 304, an answer to `HEAD`); `Content-Length`
    /// still says how long the body would be when it is known.
    Bodiless(Option<u64>),
    Length(u64),
    Chunked,
    /// Until the connection closes (a streamed answer to HTTP/1.0).
    UntilClose,
}

impl AnswerFraming {
    /// The framing for an answer with `status` whose body is `len` bytes
    /// when known in advance.
    pub(crate) fn choose(
        status: StatusCode,
        head_only: bool,
        http10: bool,
        len: Option<u64>,
    ) -> Self {
        if status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return AnswerFraming::Bodiless(None);
        }
        match (head_only, len) {
            (true, len) => AnswerFraming::Bodiless(len),
            (false, Some(n)) => AnswerFraming::Length(n),
            (false, None) if http10 => AnswerFraming::UntilClose,
            (false, None) => AnswerFraming::Chunked,
        }
    }
}

/// Append an answer head to `out`. Framing headers in `headers` are not
/// written: `framing` says how the body goes, and `keep_alive` whether the
/// connection stays open.
pub(crate) fn write_answer_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    framing: AnswerFraming,
    keep_alive: bool,
    http10: bool,
) {
    let seen = write_answer_start(out, status, headers);
    write_answer_end(out, &seen, framing, keep_alive, http10);
}

/// What the handler's answer headers said about framing, noted while they
/// were written (one pass over them instead of lookups).
#[derive(Debug, Default)]
pub(crate) struct Seen {
    /// `Connection: close`.
    pub close: bool,
    /// A valid `Content-Length` (a forwarded answer's).
    pub length: Option<u64>,
    dated: bool,
}

/// The status line and every header but the framing ones.
pub(crate) fn write_answer_start(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
) -> Seen {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut seen = Seen::default();
    for (name, value) in headers {
        if name == CONTENT_LENGTH {
            seen.length = parse_decimal(value.as_bytes());
            continue;
        }
        if name == CONNECTION {
            seen.close |= has_token(value.as_bytes(), b"close");
            continue;
        }
        if name == TRANSFER_ENCODING {
            continue;
        }
        seen.dated |= name == DATE;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    seen
}

/// `Date` unless the handler set one, the framing, the connection's fate
/// and the end of the head.
pub(crate) fn write_answer_end(
    out: &mut Vec<u8>,
    seen: &Seen,
    framing: AnswerFraming,
    keep_alive: bool,
    http10: bool,
) {
    if !seen.dated {
        push_date(out);
    }
    match framing {
        AnswerFraming::Length(n) | AnswerFraming::Bodiless(Some(n)) => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        AnswerFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        AnswerFraming::Bodiless(None) | AnswerFraming::UntilClose => {}
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A whole answer the server makes itself (a refused head), closing the
/// connection.
pub(crate) fn write_refusal(out: &mut Vec<u8>, status: StatusCode, reason: &str) {
    let mut headers = HeaderMap::with_capacity(1);
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    let body_len = reason.len() as u64 + 1;
    write_answer_head(
        out,
        status,
        &headers,
        AnswerFraming::Length(body_len),
        false,
        false,
    );
    out.extend_from_slice(reason.as_bytes());
    out.push(b'\n');
}

/// Append the `Date` header, formatted at most once a second.
fn push_date(out: &mut Vec<u8>) {
    thread_local! {
        static CACHED: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with_borrow_mut(|(at, text)| {
        if *at != secs {
            let s = httpdate::fmt_http_date(now);
            if s.len() == text.len() {
                text.copy_from_slice(s.as_bytes());
                *at = secs;
            } else {
                // Not the fixed IMF-fixdate width (a year past 9999): write
                // it uncached.
                out.extend_from_slice(b"date: ");
                out.extend_from_slice(s.as_bytes());
                out.extend_from_slice(b"\r\n");
                return;
            }
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(text);
        out.extend_from_slice(b"\r\n");
    });
}

/// Chunk framing before `len` data bytes.
pub(crate) fn push_chunk_size(out: &mut Vec<u8>, len: usize) {
    let mut digits = [0u8; 16];
    let mut at = digits.len();
    let mut n = len;
    loop {
        at -= 1;
        digits[at] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
    out.extend_from_slice(b"\r\n");
}

// In tests a panic is the failure report.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use mcpgw_mcp::headers::{MCP_PROTOCOL_VERSION, MCP_SESSION_ID};

    fn parse(raw: &str) -> Result<Option<(RequestHead, usize)>, Refused> {
        parse_request(raw.as_bytes(), 16 * 1024)
    }

    fn head(raw: &str) -> RequestHead {
        parse(raw).expect("valid").expect("complete").0
    }

    fn refused(raw: &str) -> StatusCode {
        parse(raw).expect_err("refused").status
    }

    #[test]
    fn a_post_with_a_length_is_parsed_with_its_headers() {
        let raw = "POST /mcp?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nMcp-Session-Id: s1\r\nAccept: a\r\nAccept: b\r\n\r\nhello";
        let (h, len) = parse(raw).unwrap().unwrap();
        assert_eq!(len, raw.len() - 5);
        assert_eq!(h.parts.method, Method::POST);
        assert_eq!(h.parts.uri.path(), "/mcp");
        assert_eq!(h.parts.uri.query(), Some("x=1"));
        assert_eq!(h.parts.version, Version::HTTP_11);
        assert_eq!(h.parts.headers["mcp-session-id"], "s1");
        let mixed = head("GET / HTTP/1.1\r\nMCP-Protocol-Version: v\r\nMcp-Session-ID: s\r\n\r\n");
        assert_eq!(mixed.parts.headers[MCP_PROTOCOL_VERSION], "v");
        assert_eq!(mixed.parts.headers[MCP_SESSION_ID], "s");
        assert_eq!(h.parts.headers.get_all("accept").iter().count(), 2);
        assert_eq!(h.framing, BodyFraming::Length(5));
        assert!(h.keep_alive && !h.expect_continue);
        // Framing and connection headers describe this hop only.
        let hop = head(
            "POST / HTTP/1.1\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\nX: y\r\n\r\n",
        );
        assert_eq!(hop.parts.headers.len(), 1);
        assert!(!h.parts.headers.contains_key("content-length"));
    }

    #[test]
    fn an_incomplete_head_asks_for_more_until_the_limit() {
        assert!(
            parse("POST /mcp HTTP/1.1\r\nHost: a\r\n")
                .unwrap()
                .is_none()
        );
        let long = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(200));
        assert_eq!(
            parse_request(long.as_bytes(), 100).unwrap_err().status,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        let whole = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(200));
        assert_eq!(
            parse_request(whole.as_bytes(), 100).unwrap_err().status,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X{i}: v\r\n")).collect();
        assert_eq!(
            refused(&format!("GET / HTTP/1.1\r\n{many}\r\n")),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        for raw in [
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5x\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nX: a\rb\r\n\r\n",
            "GARBAGE\r\n\r\n",
        ] {
            assert_eq!(refused(raw), StatusCode::BAD_REQUEST, "{raw:?}");
        }
        assert_eq!(
            refused("GET / HTTP/2.0\r\n\r\n"),
            StatusCode::HTTP_VERSION_NOT_SUPPORTED
        );
        let same = head("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(same.framing, BodyFraming::Length(5));
        let chunked = head("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n");
        assert_eq!(chunked.framing, BodyFraming::Chunked);
        assert_eq!(head("GET / HTTP/1.1\r\n\r\n").framing, BodyFraming::None);
        assert_eq!(
            head("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").framing,
            BodyFraming::None
        );
    }

    #[test]
    fn keep_alive_and_expectations_follow_the_version() {
        assert!(!head("GET / HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive);
        let old = head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(old.keep_alive && old.is_http10());
        let expect = head("POST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n");
        assert!(expect.expect_continue);
        // HTTP/1.0 clients do not know 100 Continue (RFC 9110 §10.1.1).
        let old = head("POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n");
        assert!(!old.expect_continue);
    }

    #[test]
    fn answer_framing_by_status_method_and_version() {
        let ok = StatusCode::OK;
        assert_eq!(
            AnswerFraming::choose(ok, false, false, Some(3)),
            AnswerFraming::Length(3)
        );
        assert_eq!(
            AnswerFraming::choose(ok, false, false, None),
            AnswerFraming::Chunked
        );
        assert_eq!(
            AnswerFraming::choose(ok, false, true, None),
            AnswerFraming::UntilClose
        );
        assert_eq!(
            AnswerFraming::choose(ok, true, false, Some(3)),
            AnswerFraming::Bodiless(Some(3))
        );
        let none = StatusCode::NO_CONTENT;
        assert_eq!(
            AnswerFraming::choose(none, false, false, Some(0)),
            AnswerFraming::Bodiless(None)
        );
    }

    #[test]
    fn answer_heads_carry_their_own_framing_and_a_date() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("99"));
        headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        headers.insert(CONNECTION, HeaderValue::from_static("keep-alive"));
        let mut out = Vec::new();
        write_answer_head(
            &mut out,
            StatusCode::OK,
            &headers,
            AnswerFraming::Length(12),
            true,
            false,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ndate: "),
            "{text}"
        );
        assert!(
            text.ends_with(" GMT\r\ncontent-length: 12\r\n\r\n"),
            "{text}"
        );
        assert_eq!(text.matches("content-length").count(), 1);
        assert!(!text.contains("chunked") && !text.contains("connection"));

        let mut out = Vec::new();
        write_answer_head(
            &mut out,
            StatusCode::OK,
            &HeaderMap::new(),
            AnswerFraming::Chunked,
            false,
            false,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("transfer-encoding: chunked\r\nconnection: close\r\n\r\n"),
            "{text}"
        );

        let mut out = Vec::new();
        write_answer_head(
            &mut out,
            StatusCode::OK,
            &HeaderMap::new(),
            AnswerFraming::Length(0),
            true,
            true,
        );
        assert!(
            String::from_utf8(out)
                .unwrap()
                .contains("connection: keep-alive\r\n")
        );
    }

    #[test]
    fn refusals_are_whole_answers_that_close() {
        let mut out = Vec::new();
        write_refusal(&mut out, StatusCode::BAD_REQUEST, "bad method");
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        assert!(
            text.contains("content-length: 11\r\nconnection: close\r\n\r\nbad method\n"),
            "{text}"
        );
    }

    #[test]
    fn chunk_sizes_are_lowercase_hex() {
        let mut out = Vec::new();
        push_chunk_size(&mut out, 0);
        push_chunk_size(&mut out, 255);
        push_chunk_size(&mut out, 4096);
        assert_eq!(out, b"0\r\nff\r\n1000\r\n");
    }
}
