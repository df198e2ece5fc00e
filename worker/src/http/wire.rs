//! HTTP/1.1 on the wire, for both sides of the worker: the upstream
//! client's request and answer heads ([`write_head`], [`parse_head`]), and
//! what the client and the server ([`crate::http::server`]) share: reading
//! header lines into a map ([`header_lines`], [`share_head`]), chunked
//! decoding, taking message bytes out of a read buffer, one vectored write.
//!
//! Pure functions over buffers, no I/O (but that one write), so every branch
//! is unit-tested without a socket. What the gateway sends is narrow
//! (origin-form `GET`, `POST` and `DELETE` with a known length); what it
//! accepts follows RFC 9112: a body is framed by `Transfer-Encoding:
//! chunked`, else by `Content-Length`, else by the connection's close, and
//! 1xx heads are skipped.

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;

use tokio::io::{AsyncWrite, AsyncWriteExt};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

/// Longest answer head (status line and headers) accepted.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// Most headers in one answer head.
const MAX_HEADERS: usize = 100;
/// Longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 1024;

/// Why bytes from the upstream are not HTTP/1.1 the client can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Malformed(pub &'static str);

/// Header lines ready for a request head, `name: value\r\n` each, framing
/// headers left out: rendered once for the headers every request of an
/// upstream server or session carries, so a request copies one block.
#[derive(Debug, Clone)]
pub(crate) struct HeaderBlock(Bytes);

impl HeaderBlock {
    pub(crate) fn new(headers: &HeaderMap) -> Self {
        Self::except(headers, |_| false)
    }

    /// As [`Self::new`], without the headers `left_out` names (those a
    /// request sets for itself).
    pub(crate) fn except(headers: &HeaderMap, left_out: impl Fn(&HeaderName) -> bool) -> Self {
        let mut out = Vec::with_capacity(headers.len() * 32);
        for (name, value) in headers {
            if name == CONTENT_LENGTH || name == TRANSFER_ENCODING || left_out(name) {
                continue;
            }
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Self(Bytes::from(out))
    }
}

/// Append a request head to `out`. `body_len` is `None` for a request
/// without a body and without a `Content-Length` (a `GET`).
pub(crate) fn write_head(
    out: &mut Vec<u8>,
    method: &Method,
    path: &str,
    headers: &HeaderBlock,
    extra: &[u8],
    body_len: Option<usize>,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    out.extend_from_slice(&headers.0);
    out.extend_from_slice(extra);
    if let Some(len) = body_len {
        out.extend_from_slice(b"content-length: ");
        push_decimal(out, len as u64);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

pub(crate) fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Write `head` then `body` whole, in as few writes as the socket takes.
/// `Err((error, nothing_written))`: whether the peer got no byte at all
/// tells a caller when resending is safe.
pub(crate) async fn write_two<W>(
    io: &mut W,
    head: &[u8],
    body: &[u8],
) -> Result<(), (io::Error, bool)>
where
    W: AsyncWrite + Unpin,
{
    let (mut h, mut b) = (0, 0);
    while h < head.len() || b < body.len() {
        let bufs = [IoSlice::new(&head[h..]), IoSlice::new(&body[b..])];
        let n = match io.write_vectored(&bufs).await {
            Ok(0) => Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => Ok(n),
            Err(e) => Err(e),
        }
        .map_err(|e| (e, h == 0 && b == 0))?;
        let from_head = n.min(head.len() - h);
        h += from_head;
        b += n - from_head;
    }
    Ok(())
}

/// Header names the application expects on most messages and `http` does
/// not know (this layer does not know which: the worker names them at
/// start), so they are read without an allocation.
static INTERNED: std::sync::OnceLock<Box<[HeaderName]>> = std::sync::OnceLock::new();

/// Name the headers read without an allocation; the first call wins.
pub(crate) fn intern_header_names(names: &[&'static str]) {
    let _ = INTERNED.set(names.iter().map(|n| HeaderName::from_static(n)).collect());
}

/// A header name; an interned one without an allocation.
fn header_name(raw: &[u8]) -> Option<HeaderName> {
    if let Some(known) = INTERNED.get().and_then(|names| {
        names
            .iter()
            .find(|n| raw.eq_ignore_ascii_case(n.as_str().as_bytes()))
    }) {
        return Some(known.clone());
    }
    HeaderName::from_bytes(raw).ok()
}

/// Bytes a message takes out of a connection's read buffer: copied when
/// small, so the buffer stays unshared and the next read reuses it in place
/// (a split would allocate a shared header now, and a new buffer at the
/// next read if the piece is still alive), split off when large (no copy).
pub(crate) fn take_bytes(buf: &mut BytesMut, n: usize) -> Bytes {
    const COPY_BELOW: usize = 16 * 1024;
    if n < COPY_BELOW {
        let piece = Bytes::copy_from_slice(&buf[..n]);
        buf.advance(n);
        piece
    } else {
        buf.split_to(n).freeze()
    }
}

/// What a head's header lines say about framing and the connection, read
/// while they go into the map (requests and answers alike).
pub(crate) struct HeaderLines {
    pub headers: HeaderMap,
    /// `Content-Length`, all its values equal.
    pub length: Option<u64>,
    pub transfer_encoded: bool,
    /// The last transfer coding is `chunked` (only it frames the body,
    /// RFC 9112 §6.3).
    pub chunked: bool,
    /// `Connection` tokens.
    pub close: bool,
    pub keep_alive: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
}

/// Read parsed header lines into a map whose values are slices `share`
/// makes of the head (see [`share_head`]). `Content-Length`,
/// `Transfer-Encoding` and `Connection` are read, not kept: they describe
/// this hop (RFC 9110 §7.6.1), and whoever sends the message on frames it
/// anew.
pub(crate) fn header_lines(
    lines: &[httparse::Header<'_>],
    share: &impl Fn(&[u8]) -> Bytes,
) -> Result<HeaderLines, Malformed> {
    let mut out = HeaderLines {
        headers: HeaderMap::with_capacity(lines.len()),
        length: None,
        transfer_encoded: false,
        chunked: false,
        close: false,
        keep_alive: false,
        expect_continue: false,
    };
    for h in lines {
        let name = header_name(h.name.as_bytes()).ok_or(Malformed("bad header name"))?;
        let value = HeaderValue::from_maybe_shared(share(h.value))
            .map_err(|_| Malformed("bad header value"))?;
        if name == CONTENT_LENGTH {
            let n = parse_decimal(h.value).ok_or(Malformed("bad content-length"))?;
            if out.length.is_some_and(|l| l != n) {
                return Err(Malformed("conflicting content-lengths"));
            }
            out.length = Some(n);
            continue;
        } else if name == TRANSFER_ENCODING {
            out.transfer_encoded = true;
            out.chunked = last_token(h.value).eq_ignore_ascii_case(b"chunked");
            continue;
        } else if name == CONNECTION {
            out.close |= has_token(h.value, b"close");
            out.keep_alive |= has_token(h.value, b"keep-alive");
            continue;
        } else if name == EXPECT {
            out.expect_continue = h.value.eq_ignore_ascii_case(b"100-continue");
        }
        out.headers.append(name, value);
    }
    Ok(out)
}

/// One copy of a head that slices of it (URI, header values) share: one
/// allocation instead of one per value, and a value kept past its message
/// pins only these bytes, never a connection's buffer. The function it
/// returns takes any slice of `head`.
pub(crate) fn share_head(head: &[u8]) -> impl Fn(&[u8]) -> Bytes {
    let shared = Bytes::copy_from_slice(head);
    let base = head.as_ptr() as usize;
    move |part: &[u8]| {
        let at = part.as_ptr() as usize - base;
        shared.slice(at..at + part.len())
    }
}

/// How an answer's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body (204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes the connection, which then cannot be reused.
    UntilClose,
}

/// A parsed answer head.
#[derive(Debug)]
pub(crate) struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The connection may carry another request once the body is read.
    pub keep_alive: bool,
}

/// What the start of a buffer holds.
#[derive(Debug)]
pub(crate) enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// A 1xx head of this many bytes, to skip: the answer follows it.
    Interim(usize),
    /// The answer's head, of this many bytes.
    Head(Head, usize),
}

/// Parse the answer head at the start of `buf`.
pub(crate) fn parse_head(buf: &[u8]) -> Result<Parsed, Malformed> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots)
    {
        // A head is judged by its size whole or not: a complete one that
        // arrived in one read is no more acceptable past the limit.
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => {
            return Err(Malformed("answer head too large"));
        }
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(Malformed("answer head too large"));
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(Malformed("too many headers")),
        Err(_) => return Err(Malformed("answer head is not HTTP/1.x")),
    };
    let code = resp.code.ok_or(Malformed("no status code"))?;
    let status = StatusCode::from_u16(code).map_err(|_| Malformed("invalid status code"))?;
    if status.is_informational() {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(Malformed("unrequested protocol switch"));
        }
        return Ok(Parsed::Interim(len));
    }
    let http10 = resp.version == Some(0);
    let lines = header_lines(resp.headers, &share_head(&buf[..len]))?;
    let close = lines.close || (http10 && !lines.keep_alive);
    let (headers, length, transfer_encoded, chunked) = (
        lines.headers,
        lines.length,
        lines.transfer_encoded,
        lines.chunked,
    );
    let framing = if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        Framing::Empty
    } else if transfer_encoded {
        if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else {
        match length {
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    // Both framings at once is how a response is smuggled past one reader
    // and not another (RFC 9112 §6.3): the chunked coding frames this body,
    // and the connection carries nothing after it.
    let ambiguous = transfer_encoded && length.is_some();
    let keep_alive = !close && !ambiguous && framing != Framing::UntilClose;
    Ok(Parsed::Head(
        Head {
            status,
            headers,
            framing,
            keep_alive,
        },
        len,
    ))
}

pub(crate) fn parse_decimal(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    v.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',').map(<[u8]>::trim_ascii)
}

pub(crate) fn has_token(v: &[u8], token: &[u8]) -> bool {
    tokens(v).any(|t| t.eq_ignore_ascii_case(token))
}

fn last_token(v: &[u8]) -> &[u8] {
    tokens(v).filter(|t| !t.is_empty()).last().unwrap_or(b"")
}

/// Incremental decoder of a chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunked {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk, this many data bytes left.
    Data(u64),
    /// After a chunk's data, before its CRLF.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one; bytes of
    /// trailer section so far (bounded by [`MAX_HEAD`], like a head).
    Trailer(usize),
    Done,
}

/// One decoding step.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// More bytes are needed.
    Need,
    Data(Bytes),
    /// The body ended; what is left in the buffer is not part of it.
    Done,
}

impl Chunked {
    /// Decode from the front of `buf`, consuming what it uses.
    pub(crate) fn step(&mut self, buf: &mut BytesMut) -> Result<Step, Malformed> {
        loop {
            match *self {
                Chunked::Size => {
                    let Some(line) = take_line(buf, MAX_CHUNK_LINE)? else {
                        return Ok(Step::Need);
                    };
                    let size = chunk_size(&line)?;
                    *self = if size == 0 {
                        Chunked::Trailer(0)
                    } else {
                        Chunked::Data(size)
                    };
                }
                Chunked::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Step::Need);
                    }
                    let n = (buf.len() as u64).min(left) as usize;
                    let data = take_bytes(buf, n);
                    let left = left - n as u64;
                    *self = if left == 0 {
                        Chunked::DataEnd
                    } else {
                        Chunked::Data(left)
                    };
                    return Ok(Step::Data(data));
                }
                Chunked::DataEnd => match buf.first() {
                    None => return Ok(Step::Need),
                    Some(b'\n') => {
                        buf.advance(1);
                        *self = Chunked::Size;
                    }
                    Some(b'\r') => match buf.get(1) {
                        None => return Ok(Step::Need),
                        Some(b'\n') => {
                            buf.advance(2);
                            *self = Chunked::Size;
                        }
                        Some(_) => return Err(Malformed("chunk data not followed by CRLF")),
                    },
                    Some(_) => return Err(Malformed("chunk data not followed by CRLF")),
                },
                Chunked::Trailer(seen) => {
                    // `seen` never passes MAX_HEAD (checked below), so the
                    // room left cannot wrap; saturating all the same, since
                    // a wrapped bound is an unbounded buffer.
                    let room = MAX_HEAD.saturating_sub(seen);
                    let Some(line) = take_line(buf, room)? else {
                        return Ok(Step::Need);
                    };
                    // Trailers carry nothing the gateway uses; they are skipped.
                    if line.is_empty() {
                        *self = Chunked::Done;
                    } else {
                        let seen = seen.saturating_add(line.len()).saturating_add(2);
                        if seen > MAX_HEAD {
                            return Err(Malformed("chunked trailer section too long"));
                        }
                        *self = Chunked::Trailer(seen);
                    }
                }
                Chunked::Done => return Ok(Step::Done),
            }
        }
    }
}

/// Take one line (without its CRLF or LF) from the front of `buf`, of at
/// most `max` bytes before its LF. Only the first `max + 1` bytes are
/// searched: a peer that never sends a newline costs one bounded scan per
/// read, not a rescan of everything it sent.
fn take_line(buf: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, Malformed> {
    let window = &buf[..buf.len().min(max.saturating_add(1))];
    let Some(at) = window.iter().position(|&b| b == b'\n') else {
        if buf.len() > max {
            return Err(Malformed("chunk framing line too long"));
        }
        return Ok(None);
    };
    let mut line = buf.split_to(at + 1);
    line.truncate(at);
    if line.last() == Some(&b'\r') {
        line.truncate(at - 1);
    }
    Ok(Some(line))
}

/// The hex size at the start of a chunk-size line (extensions ignored).
fn chunk_size(line: &[u8]) -> Result<u64, Malformed> {
    let digits = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let rest = line[digits..].trim_ascii_start();
    if digits == 0 || digits > 15 || !(rest.is_empty() || rest[0] == b';') {
        return Err(Malformed("bad chunk size"));
    }
    Ok(line[..digits].iter().fold(0u64, |n, &b| {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => b - b'A' + 10,
        };
        n * 16 + u64::from(d)
    }))
}

/// A chunked body decoded from `wire` fed in reads of `piece` bytes (for
/// tests and the fuzz targets): the data and how many bytes of `wire` the
/// body took, `Ok(None)` when the input ended inside the body.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn decode_chunked(
    wire: &[u8],
    piece: usize,
) -> Result<Option<(Vec<u8>, usize)>, Malformed> {
    let mut dec = Chunked::Size;
    let mut buf = BytesMut::new();
    let mut data = Vec::new();
    let mut fed = 0;
    loop {
        match dec.step(&mut buf)? {
            Step::Data(d) => {
                assert!(!d.is_empty(), "the decoder handed out an empty piece");
                data.extend_from_slice(&d);
            }
            Step::Done => return Ok(Some((data, fed - buf.len()))),
            Step::Need => {
                if fed == wire.len() {
                    return Ok(None);
                }
                let end = fed.saturating_add(piece).min(wire.len());
                buf.extend_from_slice(&wire[fed..end]);
                fed = end;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> (Head, usize) {
        match parse_head(text.as_bytes()).expect("parse") {
            Parsed::Head(h, len) => (h, len),
            other => panic!("not a head: {other:?}"),
        }
    }

    #[test]
    fn request_heads_carry_the_length_and_skip_framing_headers() {
        let written = |method: &Method, path: &str, headers: &HeaderMap, len: Option<usize>| {
            let mut out = Vec::new();
            write_head(&mut out, method, path, &HeaderBlock::new(headers), b"", len);
            String::from_utf8(out).expect("utf8")
        };
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("up:80"));
        headers.insert("content-length", HeaderValue::from_static("999"));
        headers.insert("mcp-session-id", HeaderValue::from_static("s1"));
        assert_eq!(
            written(&Method::POST, "/mcp?x=1", &headers, Some(1234)),
            "POST /mcp?x=1 HTTP/1.1\r\nhost: up:80\r\nmcp-session-id: s1\r\ncontent-length: 1234\r\n\r\n"
        );
        let none = HeaderMap::new();
        assert_eq!(
            written(&Method::GET, "/", &none, None),
            "GET / HTTP/1.1\r\n\r\n"
        );
        assert_eq!(
            written(&Method::DELETE, "/", &none, Some(0)),
            "DELETE / HTTP/1.1\r\ncontent-length: 0\r\n\r\n"
        );
    }

    #[test]
    fn answer_framing_follows_rfc_9112() {
        let (h, len) = head("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nMcp-Session-Id: a\r\n\r\nok");
        assert_eq!(
            (h.framing, h.keep_alive, len),
            (Framing::Length(2), true, 57)
        );
        assert_eq!(h.headers.get("mcp-session-id").expect("id"), "a");
        let (h, _) = head(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 5\r\n\r\n",
        );
        assert_eq!(h.framing, Framing::Chunked);
        let (h, _) = head("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::UntilClose, false));
        let (h, _) = head("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::UntilClose, false));
        let (h, _) = head("HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Empty, true));
        let (h, _) =
            head("HTTP/1.1 200 OK\r\nconnection: Keep-Alive, Close\r\ncontent-length: 0\r\n\r\n");
        assert!(!h.keep_alive);
        let (h, _) = head("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n");
        assert!(!h.keep_alive);
        let (h, _) = head("HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n");
        assert!(h.keep_alive);
    }

    #[test]
    fn interim_partial_and_bad_heads() {
        assert!(matches!(
            parse_head(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200"),
            Ok(Parsed::Interim(25))
        ));
        assert!(matches!(
            parse_head(b"HTTP/1.1 200 OK\r\ncontent-le"),
            Ok(Parsed::Partial)
        ));
        assert!(matches!(parse_head(b""), Ok(Parsed::Partial)));
        for bad in [
            &b"HTTP/1.1 101 Switching Protocols\r\n\r\n"[..],
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
        ] {
            assert!(parse_head(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let mut long = b"HTTP/1.1 200 OK\r\nx: ".to_vec();
        long.resize(MAX_HEAD + 1, b'a');
        assert_eq!(
            parse_head(&long).expect_err("too large"),
            Malformed("answer head too large")
        );
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(parse_head(&many).is_err());
    }

    /// Feed `wire` to a decoder in pieces of `piece` bytes; the data and
    /// what is left after the body.
    fn decode(wire: &[u8], piece: usize) -> Result<(Vec<u8>, Vec<u8>), Malformed> {
        match decode_chunked(wire, piece)? {
            Some((data, took)) => Ok((data, wire[took..].to_vec())),
            None => Err(Malformed("test: input ended")),
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_boundaries() {
        let wire = b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        for piece in [1, 2, 3, 7, 64, wire.len()] {
            let (data, rest) = decode(wire, piece).expect("decode");
            assert_eq!(data, b"helloabcdefghijklmnopqrstuvwxyz", "piece {piece}");
            // Pieces past the body stay in the buffer.
            assert!(b"NEXT".starts_with(&rest), "piece {piece}: {rest:?}");
        }
        // Bare LF line ends are tolerated.
        assert_eq!(decode(b"2\nhi\n0\n\n", 1).expect("lf").0, b"hi");
    }

    #[test]
    fn bad_chunk_framing_is_an_error() {
        for bad in [
            &b"zz\r\n"[..],
            b"\r\n",
            b"5 x\r\n",
            b"1000000000000000\r\n",
            b"2\r\nhiXX0\r\n\r\n",
        ] {
            assert!(
                decode(bad, 1).is_err_and(|e| e.0 != "test: input ended"),
                "{bad:?}"
            );
        }
        let long = vec![b'1'; MAX_CHUNK_LINE + 2];
        assert!(decode(&long, 4096).is_err());
    }

    #[test]
    fn trailer_sections_are_bounded_whatever_their_lines() {
        // One trailer line just under the limit, then one more byte and no
        // newline: the bound must hold once the section passes MAX_HEAD (a
        // subtraction here once wrapped and let the buffer grow forever).
        let mut wire = b"2\r\n{}\r\n0\r\nX: ".to_vec();
        wire.resize(wire.len() + MAX_HEAD - 3, b'a');
        wire.extend_from_slice(b"\n");
        wire.resize(wire.len() + 2 * MAX_HEAD, b'b');
        assert_eq!(
            decode(&wire, 8192).expect_err("bounded"),
            Malformed("chunked trailer section too long")
        );
        // Many short lines add up to the same bound.
        let mut many = b"0\r\n".to_vec();
        while many.len() < 2 * MAX_HEAD {
            many.extend_from_slice(b"x-t: 1\r\n");
        }
        assert!(decode(&many, 4096).is_err());
        // A trailer line with no newline at all is cut at the bound.
        let mut endless = b"0\r\nX: ".to_vec();
        endless.resize(4 * MAX_HEAD, b'a');
        assert!(decode(&endless, 4096).is_err());
    }

    #[test]
    fn heads_over_the_limit_are_refused_even_when_complete() {
        let mut big = b"HTTP/1.1 200 OK\r\nx: ".to_vec();
        big.resize(MAX_HEAD + 100, b'a');
        big.extend_from_slice(b"\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(
            parse_head(&big).expect_err("too large"),
            Malformed("answer head too large")
        );
    }

    #[test]
    fn both_framings_at_once_end_the_connection() {
        let (h, _) =
            head("HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, false));
    }
}
