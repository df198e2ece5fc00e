//! Reading a request head without consuming it.
//!
//! The supervisor routes on the `Mcp-Session-Id` header, but the worker must
//! read the request as if it had accepted the connection itself. So the head
//! is read with `MSG_PEEK`: the bytes stay in the kernel's receive queue and
//! travel with the fd. Peeking is bounded in size (`limits.max_head_bytes`)
//! and in time (`limits.header_timeout_ms`, measured by the caller).
//! [`peek_complete_now`] is the accept loop's single try that never waits;
//! anything short of a complete head goes to [`peek_head`].
//!
//! The bytes are peeked into one buffer per thread, reused by every
//! connection: a buffer per connection cost an allocation and a memset of
//! its whole size on every accept, and nothing of it outlives a peek.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use mcpgw_mcp::headers::text::MCP_SESSION_ID;
use mcpgw_protocol::session_id::SessionId;
use nix::sys::socket::{MsgFlags, recv};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// What the head says about routing, or why there is no usable head.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Head {
    /// A complete head; `session` is the id if one was sent and well-formed.
    /// A malformed id routes like no id: the worker answers it with 400.
    Complete { session: Option<SessionId> },
    /// The peer closed (or shut down its sending side) before sending a
    /// complete head.
    Closed,
    /// No complete head within the size bound.
    TooLarge,
    /// Not HTTP/1.x.
    Malformed,
}

const MAX_HEADERS: usize = 100;
const FIRST_PEEK: usize = 2048;

thread_local! {
    /// Borrowed only inside one synchronous peek (never across an await),
    /// so tasks on the same thread cannot see each other's bytes.
    static PEEK_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Peek until a complete head is in the receive queue. Not bounded in time:
/// the caller wraps it in a timeout.
pub(crate) async fn peek_head(stream: &TcpStream, max: usize) -> io::Result<Head> {
    // Most heads fit the first peek; only a longer one gets `max`.
    let mut window = FIRST_PEEK.min(max);
    let mut seen = 0usize;
    loop {
        let ready = stream.ready(Interest::READABLE).await?;
        let peeked = stream.try_io(Interest::READABLE, || {
            peek_once(stream.as_raw_fd(), window, seen)
        });
        let (n, parsed) = match peeked {
            Ok(p) => p,
            // Nothing new after the peer's FIN: the head stays partial for
            // good. (A closed state is never cleared, so waiting again would
            // return at once, forever.)
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && ready.is_read_closed() => {
                return Ok(Head::Closed);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(Head::Closed);
        }
        seen = n;
        match parsed {
            Parsed::Done(head) => return Ok(head),
            Parsed::Partial if n == window => {
                if window >= max {
                    return Ok(Head::TooLarge);
                }
                window = max;
            }
            Parsed::Partial => {}
        }
    }
}

/// One peek that never waits: the head if the bytes already queued hold a
/// complete one (in the first window), else `None` (nothing queued yet,
/// partial, closed, too large, malformed, an error: all for [`peek_head`]
/// to find out again and answer).
pub(crate) fn peek_complete_now(conn: BorrowedFd<'_>, max: usize) -> Option<Head> {
    match peek_once(conn.as_raw_fd(), FIRST_PEEK.min(max), 0) {
        Ok((_, Parsed::Done(head @ Head::Complete { .. }))) => Some(head),
        _ => None,
    }
}

/// One `recv(MSG_PEEK | MSG_DONTWAIT)` of up to `window` bytes, parsed.
/// Exactly `seen` bytes again (and room for more) is reported as
/// WouldBlock: nothing new arrived, and the caller's readiness must clear
/// so its next wait is for new data instead of a spin.
fn peek_once(fd: RawFd, window: usize, seen: usize) -> io::Result<(usize, Parsed)> {
    PEEK_BUF.with_borrow_mut(|buf| {
        if buf.len() < window {
            buf.resize(window, 0);
        }
        let buf = &mut buf[..window];
        let n =
            recv(fd, buf, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT).map_err(io::Error::from)?;
        if n == seen && n != 0 && n < window {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok((n, parse(&buf[..n])))
    })
}

pub(crate) enum Parsed {
    Done(Head),
    Partial,
}

/// What the peeked bytes hold (pure: the fuzz target drives it too).
pub(crate) fn parse(bytes: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => {
            let session = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(MCP_SESSION_ID))
                .and_then(|h| SessionId::parse(h.value.trim_ascii()).ok());
            Parsed::Done(Head::Complete { session })
        }
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => Parsed::Done(Head::TooLarge),
        Err(_) => Parsed::Done(Head::Malformed),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// A connected pair on loopback: (client, accepted).
    pub(crate) async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let c = TcpStream::connect(l.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (s, _) = l.accept().await.expect("accept");
        (c, s)
    }

    const ID: &str = "abcdefghijklmnopqrstuvwxyz";

    #[tokio::test]
    async fn finds_the_session_and_leaves_the_bytes() {
        let (mut c, s) = pair().await;
        let req = format!("POST /mcp HTTP/1.1\r\nHost: x\r\nMcp-Session-Id: {ID}\r\n\r\n{{}}");
        c.write_all(req.as_bytes()).await.expect("write");
        let head = peek_head(&s, 16384).await.expect("peek");
        assert_eq!(
            head,
            Head::Complete {
                session: Some(SessionId::parse(ID.as_bytes()).expect("id"))
            }
        );
        let mut all = vec![0u8; req.len()];
        s.try_read(&mut all).expect("bytes still queued");
        assert_eq!(all, req.as_bytes());
    }

    #[tokio::test]
    async fn waits_for_a_head_sent_in_pieces() {
        let (mut c, s) = pair().await;
        c.write_all(b"GET /mcp HTTP/1.1\r\nHo")
            .await
            .expect("write");
        let task = tokio::spawn(async move { peek_head(&s, 16384).await });
        tokio::task::yield_now().await;
        c.write_all(b"st: x\r\nmcp-session-id: bad\r\n\r\n")
            .await
            .expect("write");
        assert_eq!(
            task.await.expect("join").expect("peek"),
            Head::Complete { session: None }
        );
    }

    #[tokio::test]
    async fn the_immediate_peek_takes_only_a_complete_head() {
        use std::os::fd::AsFd;
        let (mut c, s) = pair().await;
        // Nothing yet, then a partial head: both left to the waiting peek.
        assert_eq!(peek_complete_now(s.as_fd(), 16384), None);
        c.write_all(b"GET /mcp HTTP/1.1\r\nHo")
            .await
            .expect("write");
        s.readable().await.expect("readable");
        assert_eq!(peek_complete_now(s.as_fd(), 16384), None);
        c.write_all(format!("st: x\r\nMcp-Session-Id: {ID}\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let want = Head::Complete {
            session: Some(SessionId::parse(ID.as_bytes()).expect("id")),
        };
        let mut got = None;
        while got.is_none() {
            tokio::task::yield_now().await;
            got = peek_complete_now(s.as_fd(), 16384);
        }
        assert_eq!(got, Some(want));

        // Garbage and a close are not "complete" either.
        let (mut c, s) = pair().await;
        c.write_all(b"\x16\x03\x01garbage\r\n\r\n")
            .await
            .expect("write");
        s.readable().await.expect("readable");
        assert_eq!(peek_complete_now(s.as_fd(), 16384), None);
        let (c, s) = pair().await;
        drop(c);
        s.readable().await.expect("readable");
        assert_eq!(peek_complete_now(s.as_fd(), 16384), None);
    }

    #[tokio::test]
    async fn bounds_size_and_reports_close_and_garbage() {
        let (mut c, s) = pair().await;
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(5000));
        c.write_all(big.as_bytes()).await.expect("write");
        assert_eq!(peek_head(&s, 4096).await.expect("peek"), Head::TooLarge);

        let (mut c, s) = pair().await;
        c.write_all(b"\x16\x03\x01garbage\r\n\r\n")
            .await
            .expect("write");
        assert_eq!(peek_head(&s, 4096).await.expect("peek"), Head::Malformed);

        let (c, s) = pair().await;
        drop(c);
        assert_eq!(peek_head(&s, 4096).await.expect("peek"), Head::Closed);
    }

    /// The bytes of a partial head stay queued after the peer's FIN, so the
    /// peek sees "nothing new" rather than the end: it must still end.
    #[tokio::test]
    async fn a_peer_that_leaves_after_a_partial_head_is_closed() {
        let (mut c, s) = pair().await;
        c.write_all(b"GET /mcp HTTP/1.1\r\nHo")
            .await
            .expect("write");
        let task = tokio::spawn(async move { peek_head(&s, 16384).await });
        tokio::task::yield_now().await;
        drop(c);
        let peeked = tokio::time::timeout(std::time::Duration::from_secs(10), task)
            .await
            .expect("the peek ends once the peer is gone")
            .expect("join")
            .expect("peek");
        assert_eq!(peeked, Head::Closed);
    }
}
