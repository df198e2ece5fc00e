//! The answer reader's fuzz entry point (the `fuzzing` feature; see
//! `crate::fuzz`): a pooled connection whose upstream is memory.

use http_body_util::BodyExt;

use super::*;
use crate::fuzz::{MemIo, decode_chunked, piece_and_rest, runtime};

/// What the pure parser finds at the start of an answer: the final head
/// (1xx heads skipped) and where it ends, if there is a usable one.
fn expected_head(input: &[u8]) -> Option<(wire::Head, usize)> {
    let mut at = 0;
    loop {
        match wire::parse_head(&input[at..]).ok()? {
            Parsed::Interim(len) => at += len,
            Parsed::Head(head, len) => return Some((head, at + len)),
            Parsed::Partial => return None,
        }
    }
}

/// The upstream answer reader on an answer read from memory (the first
/// byte sets the read size; the low bit of the second makes the caller
/// take a whole answer first, as `upstream` does): `Conn::read_head` finds
/// the head the pure parser finds past the 1xx heads, or fails when there
/// is none; the body `UpstreamBody` hands out is exactly what its framing
/// says, or an error when the input ends or breaks the framing; and the
/// connection is reusable afterwards exactly when the answer allows it and
/// nothing follows the answer.
pub fn upstream_answer(data: &[u8]) {
    let (piece, rest) = piece_and_rest(data);
    let (take_whole, input) = match rest.split_first() {
        Some((flags, input)) => (flags & 1 == 1, input),
        None => (false, rest),
    };
    let uri = Uri::from_static("http://127.0.0.1:9/mcp");
    let pool = ConnPool::new(&uri, Duration::from_secs(1), None).expect("a pool for an address");
    let headers = HeaderBlock::new(&http::HeaderMap::new());
    runtime().block_on(async {
        let mut conn = Conn::new(Stream::Mem(Box::new(MemIo::new(input, piece))));
        let req = Outgoing {
            method: &Method::POST,
            path: "/mcp",
            headers: &headers,
            extra: b"",
            body: Bytes::from_static(b"{}"),
        };
        if let Err((e, _)) = conn.write_request(&req).await {
            panic!("writing to memory failed: {e}");
        }
        let expected = expected_head(input);
        let head = match conn.read_head().await {
            Ok(head) => head,
            Err(e) => {
                assert!(
                    matches!(e, ConnError::Closed | ConnError::Malformed(_)),
                    "{e}"
                );
                assert!(expected.is_none(), "the reader missed a head: {e}");
                return;
            }
        };
        let Some((parsed, head_end)) = expected else {
            panic!("the reader found a head the parser does not");
        };
        assert_eq!(head.status, parsed.status);
        assert_eq!(head.headers, parsed.headers);
        assert_eq!(head.framing, parsed.framing);
        assert_eq!(head.keep_alive, parsed.keep_alive);
        let (framing, keep_alive) = (head.framing, head.keep_alive);
        let mut body = UpstreamBody::new(conn, &head, &pool.shared);
        let mut got = Vec::new();
        if take_whole && let Some(whole) = body.take_whole() {
            got.extend_from_slice(&whole);
        }
        let mut failed = None;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if let Ok(d) = frame.into_data() {
                        got.extend_from_slice(&d);
                    }
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        assert!(
            !matches!(failed, Some(BodyError::Read(_))),
            "memory cannot fail a read"
        );
        let after = &input[head_end..];
        // How many bytes past the head the body took, when it ended well.
        let took = match framing {
            Framing::Empty => {
                assert!(got.is_empty() && failed.is_none());
                Some(0)
            }
            Framing::Length(n) => {
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                if after.len() >= n {
                    assert!(failed.is_none(), "a whole body failed: {failed:?}");
                    assert_eq!(got, &after[..n]);
                    Some(n)
                } else {
                    assert!(matches!(failed, Some(BodyError::Truncated)), "{failed:?}");
                    None
                }
            }
            Framing::Chunked => match decode_chunked(after, usize::MAX) {
                Ok(Some((data, took))) => {
                    assert!(failed.is_none(), "a whole chunked body failed: {failed:?}");
                    assert_eq!(got, data);
                    Some(took)
                }
                Ok(None) => {
                    assert!(matches!(failed, Some(BodyError::Truncated)), "{failed:?}");
                    None
                }
                Err(_) => {
                    assert!(
                        matches!(failed, Some(BodyError::Malformed(_))),
                        "{failed:?}"
                    );
                    None
                }
            },
            Framing::UntilClose => {
                assert!(failed.is_none() && got == after && !keep_alive);
                None
            }
        };
        let reusable = keep_alive && took.is_some_and(|took| head_end + took == input.len());
        assert_eq!(
            pool.shared.checkout().is_some(),
            reusable,
            "reuse after a {framing:?} answer (keep-alive {keep_alive}, body {took:?} of {})",
            after.len()
        );
    });
}
