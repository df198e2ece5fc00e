//! The HTTP/1.1 server side of a client connection: read a request head and
//! its body, hand the request to the endpoint, write the answer, repeat
//! while the connection is kept alive.
//!
//! It replaces hyper's server for the gateway's own connections because a
//! proxy hop is cheap only when its HTTP layer is: this one runs in the
//! connection's task with one read buffer and one write buffer for the
//! connection's life, reads a request body whole before the endpoint sees
//! it (MCP messages are single JSON documents, and the size limit then
//! applies before any byte is buffered past it), and writes a whole answer
//! with its head in one write.
//!
//! The rules a client meets: the head must arrive within the header
//! timeout (an idle keep-alive connection that sends nothing in that time
//! is closed; a partial head gets 408); a refused head gets its status
//! (400, 431, 505) and the connection closes; a body over the limit is not
//! read, the endpoint answers 413, and the connection closes after reading
//! and dropping what the client still sends for a moment (so it sees the
//! answer instead of a reset). The whole body must arrive within the body
//! timeout, counted from the end of its head, and no gap between its bytes
//! may be longer than the header timeout; otherwise it gets 408 and the
//! connection closes. A body's buffer grows with the bytes that arrived,
//! never to its declared length up front, so a client that declares a
//! large body and sends it slowly holds little memory. While a request is served and while its
//! answer streams (SSE), the connection is watched for the client's close,
//! which drops the request's future (the endpoint cancels upstream) or
//! ends the stream.
//! Once `closing` turns true, an idle connection closes and a busy one
//! closes after its answer.
//!
//! [`head`] is the pure half: request heads in, answer heads out.

#[cfg(feature = "fuzzing")]
pub(crate) mod fuzz;
mod head;

use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info};

use crate::http::body::Body;
use crate::http::wire::{self, Chunked, Step};
use head::{AnswerFraming, BodyFraming, RequestHead};

/// Limits read afresh for every request (a reload changes them).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// For a whole request head, and between reads of a body.
    pub header_timeout: Duration,
    /// For a whole request body, from the end of its head.
    pub body_timeout: Duration,
    pub max_head: usize,
    pub max_body: usize,
}

/// What serves the requests of a connection.
pub(crate) trait Handler {
    fn limits(&self) -> Limits;
    fn call(&self, req: Request<ReqBody>) -> impl Future<Output = Response<Body>>;
}

/// A request body, read whole before the handler sees it.
#[derive(Debug)]
pub(crate) enum ReqBody {
    Whole(Option<Bytes>),
    /// Longer than the limit: not read (the connection closes after the
    /// answer).
    TooLarge {
        limit: usize,
    },
}

impl ReqBody {
    pub(crate) fn whole(bytes: Bytes) -> Self {
        ReqBody::Whole(Some(bytes))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("request body exceeds {limit} bytes")]
pub(crate) struct BodyTooLarge {
    pub limit: usize,
}

impl HttpBody for ReqBody {
    type Data = Bytes;
    type Error = BodyTooLarge;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyTooLarge>>> {
        Poll::Ready(match self.get_mut() {
            ReqBody::Whole(data) => data
                .take()
                .filter(|b| !b.is_empty())
                .map(|b| Ok(Frame::data(b))),
            ReqBody::TooLarge { limit } => Some(Err(BodyTooLarge { limit: *limit })),
        })
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, ReqBody::Whole(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Whole(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ReqBody::Whole(None) => SizeHint::with_exact(0),
            ReqBody::TooLarge { .. } => SizeHint::default(),
        }
    }
}

/// Why a connection ended other than by a close in good order.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServeError {
    #[error("reading from the client: {0}")]
    Read(io::Error),
    #[error("writing to the client: {0}")]
    Write(io::Error),
    #[error("the answer body failed: {0}")]
    Answer(crate::http::body::BoxError),
    #[error("the answer body's length is not what its head said")]
    AnswerLength,
    #[error("the client closed the connection during a streamed answer")]
    ClientGone,
}

/// Bytes a read asks room for.
const READ_CHUNK: usize = 8 * 1024;
/// A whole answer up to this size is written with its head in one buffer;
/// a larger data frame goes out by itself instead of being copied.
const COPY_LIMIT: usize = 16 * 1024;
/// After an answer to a request whose body was not read: how long and how
/// much to keep reading and dropping, so the client's write finishes and
/// it reads the answer instead of a reset.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 4 * 1024 * 1024;

/// Serve the requests of one connection until it closes.
pub(crate) async fn serve<IO, H>(
    mut io: IO,
    handler: &H,
    mut closing: watch::Receiver<bool>,
) -> Result<(), ServeError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    loop {
        let limits = handler.limits();
        let head = match read_head(&mut io, &mut buf, &limits, &mut closing).await? {
            HeadRead::Head(head) => head,
            HeadRead::Closed => return Ok(()),
            HeadRead::Refused(refused) => {
                info!(status = %refused.status, reason = refused.reason, "request head refused");
                return refuse(&mut io, &mut out, refused.status, refused.reason).await;
            }
        };
        let http10 = head.is_http10();
        let head_only = head.parts.method == Method::HEAD;
        let mut keep_alive = head.keep_alive;
        // Most bodies came whole with their head: taken without a future.
        // The reading one (a deadline timer inside) is boxed so that it
        // does not widen the connection's future, which is moved on every
        // request.
        let read = match body_at_hand(&mut buf, &head, &limits) {
            Some(read) => read,
            None => Box::pin(read_body(&mut io, &mut buf, &head, &limits)).await?,
        };
        let body = match read {
            BodyRead::Body(body) => body,
            // The connection is out of step (malformed chunked framing) or
            // the client too slow: it cannot carry another request.
            BodyRead::Refused(refused) => {
                return refuse(&mut io, &mut out, refused.status, refused.reason).await;
            }
        };
        let unread_body = matches!(body, ReqBody::TooLarge { .. });
        keep_alive &= !unread_body;
        // The client leaving cancels its request: the handler's future is
        // dropped, which is how the endpoint learns to cancel upstream. It
        // is boxed: several KiB that would otherwise widen the connection's
        // future (copied whole when the connection is spawned) and be
        // copied again into the select's state.
        let call = Box::pin(handler.call(Request::from_parts(head.parts, body)));
        let resp = tokio::select! {
            biased;
            resp = call => resp,
            gone = client_gone(&mut io, &mut buf, limits.max_head) => return Err(gone),
        };
        if *closing.borrow() {
            keep_alive = false;
        }
        write_answer(
            &mut io,
            &mut buf,
            &mut out,
            resp,
            &mut keep_alive,
            head_only,
            http10,
            &limits,
        )
        .await?;
        if !keep_alive {
            if io.shutdown().await.is_ok() && unread_body {
                linger(&mut io, &mut buf).await;
            }
            return Ok(());
        }
    }
}

/// Answer `status` and close: the connection cannot carry another request.
async fn refuse<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    out: &mut Vec<u8>,
    status: StatusCode,
    reason: &str,
) -> Result<(), ServeError> {
    out.clear();
    head::write_refusal(out, status, reason);
    io.write_all(out).await.map_err(ServeError::Write)?;
    let _ = io.shutdown().await;
    Ok(())
}

// Returned once per request and moved straight out: boxing the large
// variant would add an allocation per request to save a copy.
#[allow(clippy::large_enum_variant)]
enum HeadRead {
    Head(RequestHead),
    Closed,
    Refused(head::Refused),
}

async fn read_head<IO>(
    io: &mut IO,
    buf: &mut BytesMut,
    limits: &Limits,
    closing: &mut watch::Receiver<bool>,
) -> Result<HeadRead, ServeError>
where
    IO: AsyncRead + Unpin,
{
    let deadline = after(limits.header_timeout);
    loop {
        if !buf.is_empty() {
            match head::parse_request(buf, limits.max_head) {
                Ok(Some((head, len))) => {
                    buf.advance(len);
                    return Ok(HeadRead::Head(head));
                }
                Ok(None) => {}
                Err(refused) => return Ok(HeadRead::Refused(refused)),
            }
        }
        let idle = buf.is_empty();
        if idle && *closing.borrow() {
            return Ok(HeadRead::Closed);
        }
        buf.reserve(READ_CHUNK);
        tokio::select! {
            biased;
            read = io.read_buf(buf) => match read {
                Ok(0) => {
                    if !idle {
                        debug!(bytes = buf.len(), "client closed in the middle of a request head");
                    }
                    return Ok(HeadRead::Closed);
                }
                Ok(_) => {}
                // A reset between requests is how many clients say goodbye.
                Err(e) if idle && e.kind() == io::ErrorKind::ConnectionReset => return Ok(HeadRead::Closed),
                Err(e) => return Err(ServeError::Read(e)),
            },
            () = tokio::time::sleep_until(deadline) => {
                return Ok(if idle {
                    HeadRead::Closed
                } else {
                    HeadRead::Refused(head::Refused {
                        status: StatusCode::REQUEST_TIMEOUT,
                        reason: "the request head did not arrive in time",
                    })
                });
            }
            changed = closing.changed(), if idle => {
                // A dropped sender means the worker is going away: close too.
                if changed.is_err() {
                    return Ok(HeadRead::Closed);
                }
            }
        }
    }
}

/// A request body read whole, or why the connection must end with an
/// answer instead.
enum BodyRead {
    Body(ReqBody),
    Refused(head::Refused),
}

const BODY_TOO_SLOW: head::Refused = head::Refused {
    status: StatusCode::REQUEST_TIMEOUT,
    reason: "the request body did not arrive in time",
};

/// Read the request's body whole. A body that came with its head (the
/// common case) costs no timer and no allocation past the connection's
/// buffer; the clock starts at the first read that has to wait.
async fn read_body<IO>(
    io: &mut IO,
    buf: &mut BytesMut,
    head: &RequestHead,
    limits: &Limits,
) -> Result<BodyRead, ServeError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let limit = limits.max_body;
    match head.framing {
        BodyFraming::None => Ok(BodyRead::Body(ReqBody::Whole(None))),
        BodyFraming::Length(n) if n > limit as u64 => {
            Ok(BodyRead::Body(ReqBody::TooLarge { limit }))
        }
        BodyFraming::Length(n) => {
            // At most `limit`, a usize: the guard above.
            let n = usize::try_from(n).unwrap_or(limit);
            if buf.len() < n {
                if head.expect_continue {
                    continue_now(io).await?;
                }
                let mut clock = BodyClock::start(limits);
                while buf.len() < n {
                    if buf.capacity() == buf.len() {
                        grow(buf, n);
                    }
                    if !clock.read(io, buf).await? {
                        return Ok(clock.too_slow(buf.len(), Some(n)));
                    }
                }
            }
            Ok(BodyRead::Body(ReqBody::whole(wire::take_bytes(buf, n))))
        }
        BodyFraming::Chunked => {
            if head.expect_continue && buf.is_empty() {
                continue_now(io).await?;
            }
            let mut decoder = Chunked::Size;
            let mut body = BytesMut::new();
            let mut clock: Option<BodyClock> = None;
            loop {
                match decoder.step(buf) {
                    Ok(Step::Data(data)) => {
                        if body.len().saturating_add(data.len()) > limit {
                            return Ok(BodyRead::Body(ReqBody::TooLarge { limit }));
                        }
                        body.extend_from_slice(&data);
                    }
                    Ok(Step::Need) => {
                        let clock = clock.get_or_insert_with(|| BodyClock::start(limits));
                        buf.reserve(READ_CHUNK);
                        if !clock.read(io, buf).await? {
                            return Ok(clock.too_slow(body.len(), None));
                        }
                    }
                    Ok(Step::Done) => return Ok(BodyRead::Body(ReqBody::whole(body.freeze()))),
                    Err(e) => {
                        info!(error = %e, "malformed chunked request body");
                        return Ok(BodyRead::Refused(head::Refused {
                            status: StatusCode::BAD_REQUEST,
                            reason: "malformed chunked body",
                        }));
                    }
                }
            }
        }
    }
}

/// The body, when no read is needed for it: none, refused for its declared
/// length, or already in the buffer whole.
fn body_at_hand(buf: &mut BytesMut, head: &RequestHead, limits: &Limits) -> Option<BodyRead> {
    let limit = limits.max_body;
    match head.framing {
        BodyFraming::None => Some(BodyRead::Body(ReqBody::Whole(None))),
        BodyFraming::Length(n) if n > limit as u64 => {
            Some(BodyRead::Body(ReqBody::TooLarge { limit }))
        }
        BodyFraming::Length(n) if buf.len() as u64 >= n => {
            // At most `limit`, a usize: the guard above.
            let n = usize::try_from(n).unwrap_or(limit);
            Some(BodyRead::Body(ReqBody::whole(wire::take_bytes(buf, n))))
        }
        _ => None,
    }
}

/// Room for more of a Content-Length body of `declared` bytes: the buffer
/// doubles from what arrived, and never past the declared length, so
/// memory follows the bytes a client sent, not the length it claimed.
fn grow(buf: &mut BytesMut, declared: usize) {
    let target = next_capacity(buf.len(), declared);
    // An allocation of exactly `target`: `reserve` may double the whole
    // capacity, past the declared length.
    let mut grown = BytesMut::with_capacity(target);
    grown.extend_from_slice(buf);
    *buf = grown;
}

/// The capacity for a body buffer holding `have` of `declared` bytes.
fn next_capacity(have: usize, declared: usize) -> usize {
    have.saturating_mul(2)
        .max(have.saturating_add(READ_CHUNK))
        .min(declared)
        .max(have)
}

/// The time limits of one body being read: the whole body by `deadline`,
/// and no read waiting longer than `idle`.
struct BodyClock {
    started: Instant,
    deadline: Instant,
    idle: Duration,
    /// Which limit the last failed read met: the body's (`true`) or idle.
    whole: bool,
}

impl BodyClock {
    fn start(limits: &Limits) -> Self {
        Self {
            started: Instant::now(),
            deadline: after(limits.body_timeout),
            idle: limits.header_timeout,
            whole: false,
        }
    }

    /// One read of body bytes within both limits; `false` when one passed.
    /// The end of the stream before the body's end is an error.
    async fn read<IO: AsyncRead + Unpin>(
        &mut self,
        io: &mut IO,
        buf: &mut BytesMut,
    ) -> Result<bool, ServeError> {
        let idle_end = after(self.idle);
        let until = idle_end.min(self.deadline);
        match tokio::time::timeout_at(until, io.read_buf(buf)).await {
            Ok(Ok(0)) => Err(ServeError::Read(io::ErrorKind::UnexpectedEof.into())),
            Ok(Ok(_)) => Ok(true),
            Ok(Err(e)) => Err(ServeError::Read(e)),
            Err(_) => {
                self.whole = self.deadline <= idle_end;
                Ok(false)
            }
        }
    }

    /// The 408 for a body that stopped short, logged with how much of it
    /// arrived (`declared` is `None` for a chunked body).
    fn too_slow(&self, received: usize, declared: Option<usize>) -> BodyRead {
        let waited_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let limit = if self.whole {
            "body_timeout_ms"
        } else {
            "header_timeout_ms (between body bytes)"
        };
        match declared {
            Some(declared) => info!(
                received,
                declared,
                waited_ms,
                limit,
                "request body did not arrive in time; answering 408 and closing"
            ),
            None => info!(
                received,
                declared = "chunked",
                waited_ms,
                limit,
                "request body did not arrive in time; answering 408 and closing"
            ),
        }
        BodyRead::Refused(BODY_TOO_SLOW)
    }
}

/// `d` from now; a duration too long for the clock (a configured timeout,
/// not checked for size) means no deadline rather than a panic.
fn after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

async fn continue_now<IO: AsyncWrite + Unpin>(io: &mut IO) -> Result<(), ServeError> {
    io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
        .await
        .map_err(ServeError::Write)?;
    io.flush().await.map_err(ServeError::Write)
}

#[allow(clippy::too_many_arguments)]
async fn write_answer<IO>(
    io: &mut IO,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    resp: Response<Body>,
    keep_alive: &mut bool,
    head_only: bool,
    http10: bool,
    limits: &Limits,
) -> Result<(), ServeError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let (parts, mut body) = resp.into_parts();
    out.clear();
    let seen = head::write_answer_start(out, parts.status, &parts.headers);
    if seen.close {
        *keep_alive = false;
    }
    // A length the handler set (a forwarded answer's) frames the body like
    // one known from the body itself.
    let declared = seen.length.or_else(|| body.size_hint().exact());
    let framing = AnswerFraming::choose(parts.status, head_only, http10, declared);
    if framing == AnswerFraming::UntilClose {
        *keep_alive = false;
    }
    head::write_answer_end(out, &seen, framing, *keep_alive, http10);
    if let AnswerFraming::Bodiless(_) = framing {
        return write_out(io, out).await;
    }
    let chunked = framing == AnswerFraming::Chunked;
    let mut written: u64 = 0;
    // Pending bytes go out whenever the body has nothing ready, so a
    // streamed event reaches the client at once and a whole answer leaves
    // in one write with its head.
    loop {
        let polled = poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await;
        let frame = match polled {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                if !out.is_empty() {
                    write_out(io, out).await?;
                }
                next_frame(io, buf, &mut body, limits.max_head).await?
            }
        };
        match frame {
            None => break,
            Some(Err(e)) => return Err(ServeError::Answer(e)),
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue; // trailers: HTTP/1.1 answers here carry none
                };
                if data.is_empty() {
                    continue;
                }
                written += data.len() as u64;
                if let AnswerFraming::Length(n) = framing
                    && written > n
                {
                    return Err(ServeError::AnswerLength);
                }
                if chunked {
                    head::push_chunk_size(out, data.len());
                }
                if data.len() <= COPY_LIMIT {
                    out.extend_from_slice(&data);
                } else {
                    wire::write_two(io, out, &data)
                        .await
                        .map_err(|(e, _)| ServeError::Write(e))?;
                    out.clear();
                }
                if chunked {
                    out.extend_from_slice(b"\r\n");
                }
            }
        }
    }
    if let AnswerFraming::Length(n) = framing
        && written != n
    {
        return Err(ServeError::AnswerLength);
    }
    if chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    write_out(io, out).await
}

async fn write_out<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    out: &mut Vec<u8>,
) -> Result<(), ServeError> {
    io.write_all(out).await.map_err(ServeError::Write)?;
    out.clear();
    // Plain TCP has nothing to flush; TLS does.
    io.flush().await.map_err(ServeError::Write)
}

/// Wait for the body's next frame while watching for the client's close,
/// which ends a streamed answer.
async fn next_frame<IO>(
    io: &mut IO,
    buf: &mut BytesMut,
    body: &mut Body,
    max_head: usize,
) -> Result<Option<Result<Frame<Bytes>, crate::http::body::BoxError>>, ServeError>
where
    IO: AsyncRead + Unpin,
{
    tokio::select! {
        biased;
        frame = poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)) => Ok(frame),
        gone = client_gone(io, buf, max_head) => Err(gone),
    }
}

/// Resolves when the client closes the connection or it fails. Bytes the
/// client sends meanwhile (its next request) are kept, up to a head's
/// worth; past that the connection is not watched any more. No read is
/// tried before the socket says it is readable, so the watch costs no
/// system call.
async fn client_gone<IO: AsyncRead + Unpin>(
    io: &mut IO,
    buf: &mut BytesMut,
    max_head: usize,
) -> ServeError {
    loop {
        if buf.len() >= max_head {
            return std::future::pending().await;
        }
        buf.reserve(READ_CHUNK);
        match io.read_buf(buf).await {
            Ok(0) => return ServeError::ClientGone,
            Ok(_) => {}
            Err(e) => return ServeError::Read(e),
        }
    }
}

/// Read and drop what the client still sends, for a bounded time and
/// amount, after the write side was shut down. It reads into the
/// connection's buffer: an array here would live in every connection's
/// future.
async fn linger<IO: AsyncRead + Unpin>(io: &mut IO, buf: &mut BytesMut) {
    let deadline = Instant::now() + LINGER_TIME;
    let mut dropped = 0;
    while dropped < LINGER_BYTES {
        buf.clear();
        buf.reserve(READ_CHUNK);
        match tokio::time::timeout_at(deadline, io.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => dropped += n,
            _ => return,
        }
    }
}

// In tests a panic is the failure report.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
