//! The server's fuzz entry points (the `fuzzing` feature; see
//! `crate::fuzz`): the request head parser alone, and whole connections
//! served from memory.

use std::cell::RefCell;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;

use super::head::{self, AnswerFraming, BodyFraming};
use super::{Handler, Limits, ReqBody, ServeError, serve};
use crate::fuzz::{MemIo, decode_chunked, piece_and_rest, runtime};
use crate::http::body::{Body, full};
use crate::http::wire::{self, Framing, Parsed};

/// The head limit of the fuzzed parses and connections: small, so that
/// the fuzzer reaches it.
const MAX_HEAD: usize = 2048;
const MAX_BODY: usize = 4096;

/// One chunk as the server frames it (for the chunked round trip).
pub(crate) fn push_chunk(out: &mut Vec<u8>, data: &[u8]) {
    head::push_chunk_size(out, data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The request head parser: a head's length is within the input and the
/// limit and it parses the same alone; its framing is one RFC 9112 allows;
/// hop-by-hop headers are not kept; what is kept goes out in an answer
/// head and comes back through the client's parser unchanged.
pub fn request_head(data: &[u8]) {
    let parsed = head::parse_request(data, MAX_HEAD);
    let (head, len) = match parsed {
        Ok(Some(whole)) => whole,
        Ok(None) => {
            assert!(data.len() < MAX_HEAD, "a partial head past the limit");
            return;
        }
        Err(refused) => {
            assert!(
                matches!(refused.status.as_u16(), 400 | 431 | 505),
                "refused with {}",
                refused.status
            );
            return;
        }
    };
    assert!(len <= data.len() && len <= MAX_HEAD, "head of {len} bytes");
    let again = head::parse_request(&data[..len], MAX_HEAD)
        .expect("the head alone parses")
        .expect("the head alone is complete");
    assert_eq!(again.1, len);
    assert_eq!(again.0.framing, head.framing);
    assert_eq!(again.0.keep_alive, head.keep_alive);
    assert_eq!(again.0.parts.headers, head.parts.headers);
    match head.framing {
        BodyFraming::Length(n) => assert!(n > 0),
        BodyFraming::Chunked => assert!(!head.is_http10()),
        BodyFraming::None => {}
    }
    if head.expect_continue {
        assert!(!head.is_http10());
    }
    let headers = &head.parts.headers;
    for hop in [CONTENT_LENGTH, TRANSFER_ENCODING, CONNECTION] {
        assert!(!headers.contains_key(&hop), "{hop} kept");
    }
    // Round trip through an answer head (the forwarder's path: a request's
    // headers become another message's), unless the date the answer adds
    // would pass the client's header count.
    if headers.len() + 1 >= 100 {
        return;
    }
    let mut out = Vec::with_capacity(len + 128);
    head::write_answer_head(
        &mut out,
        StatusCode::OK,
        headers,
        AnswerFraming::Length(0),
        true,
        false,
    );
    let Ok(Parsed::Head(back, back_len)) = wire::parse_head(&out) else {
        panic!("an answer head with the request's headers does not parse")
    };
    assert_eq!(back_len, out.len());
    let mut back_headers = back.headers;
    if !headers.contains_key(DATE) {
        back_headers.remove(DATE);
    }
    assert_eq!(&back_headers, headers, "headers changed on the way back");
    assert_eq!(back.framing, Framing::Length(0));
}

/// Answers every request with its body's length, and records the methods
/// it was called for (in order).
struct Echo {
    calls: RefCell<Vec<Method>>,
}

impl Handler for Echo {
    fn limits(&self) -> Limits {
        Limits {
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(30),
            max_head: MAX_HEAD,
            max_body: MAX_BODY,
        }
    }

    fn call(&self, req: Request<ReqBody>) -> impl Future<Output = Response<Body>> {
        let (parts, body) = req.into_parts();
        self.calls.borrow_mut().push(parts.method.clone());
        async move {
            let (status, len) = match body {
                ReqBody::Whole(data) => {
                    let len = data.map_or(0, |d| d.len());
                    assert!(len <= MAX_BODY, "a body over the limit was read");
                    (StatusCode::OK, len)
                }
                ReqBody::TooLarge { limit } => {
                    assert_eq!(limit, MAX_BODY);
                    (StatusCode::PAYLOAD_TOO_LARGE, 0)
                }
            };
            let text = Bytes::from(format!("{len}"));
            // A GET gets a streamed answer (chunked, or until the close for
            // HTTP/1.0), everything else a whole one.
            let body = if parts.method == Method::GET {
                let frames = [Ok::<_, std::convert::Infallible>(http_body::Frame::data(
                    text,
                ))];
                http_body_util::StreamBody::new(futures_util::stream::iter(frames))
                    .map_err(|never| match never {})
                    .boxed()
            } else {
                full(text)
            };
            let mut resp = Response::new(body);
            *resp.status_mut() = status;
            resp
        }
    }
}

/// A whole connection served from memory (the first byte sets the read
/// size): every answer the server writes is well-formed HTTP/1.1 that the
/// client's parser reads back, one per request the handler got (plus at
/// most one refusal, which ends the connection), each saying the length
/// of the body the handler saw.
pub fn http_server(data: &[u8]) {
    let (piece, input) = piece_and_rest(data);
    let mut io = MemIo::new(input, piece);
    let echo = Echo {
        calls: RefCell::new(Vec::new()),
    };
    let (_closing_tx, closing) = tokio::sync::watch::channel(false);
    let served = runtime().block_on(serve(&mut io, &echo, closing));
    match served {
        Ok(()) => {}
        // The input ended inside a body: the connection ends without an
        // answer to that request (nothing else can fail in memory).
        Err(ServeError::Read(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => panic!("serving from memory failed: {e}"),
    }
    let calls = echo.calls.into_inner();
    let mut out = &io.written[..];
    let mut answered = 0;
    while !out.is_empty() {
        let (head, len) = match wire::parse_head(out) {
            Ok(Parsed::Interim(len)) => {
                out = &out[len..];
                continue;
            }
            Ok(Parsed::Head(head, len)) => (head, len),
            other => panic!("the server wrote an answer the client cannot read: {other:?}"),
        };
        out = &out[len..];
        let called = calls.get(answered);
        let body = match (called, head.framing) {
            // Bodiless by the request's method, not by the answer's head.
            (Some(&Method::HEAD), _) | (_, Framing::Empty) => Vec::new(),
            (_, Framing::Length(n)) => {
                let n = usize::try_from(n).expect("a small length");
                assert!(out.len() >= n, "the body is shorter than its length");
                let body = out[..n].to_vec();
                out = &out[n..];
                body
            }
            (_, Framing::Chunked) => {
                let (body, took) = decode_chunked(out, usize::MAX)
                    .expect("the server's chunked framing is valid")
                    .expect("the server's chunked body is whole");
                out = &out[took..];
                body
            }
            (_, Framing::UntilClose) => std::mem::take(&mut out).to_vec(),
        };
        if called.is_none() {
            // The server's own refusal: the last thing on the connection.
            assert!(
                !head.keep_alive && out.is_empty(),
                "a refusal did not close"
            );
            assert!(head.status.is_client_error() || head.status.is_server_error());
            return;
        }
        answered += 1;
        if !body.is_empty() {
            let said = std::str::from_utf8(&body).expect("the echo is text");
            said.parse::<usize>().expect("the echo is a length");
        }
        if !head.keep_alive {
            assert!(out.is_empty(), "bytes after an answer that closes");
        }
    }
    assert_eq!(
        answered,
        calls.len(),
        "a request the handler saw got no answer"
    );
}

/// A whole head, or `None` (partial or refused).
pub(crate) fn parse_request(data: &[u8], max: usize) -> Option<(head::RequestHead, usize)> {
    head::parse_request(data, max).ok().flatten()
}
