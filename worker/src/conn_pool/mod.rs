//! This worker's HTTP/1.1 connections to one upstream server, and the
//! client that speaks on them.
//!
//! [`ConnPool`] opens connections (resolve, TCP connect bounded by the
//! upstream's `connect_timeout_ms`, `TCP_NODELAY`, TCP keep-alive) and keeps
//! idle ones for the next request, however many upstream sessions share the
//! server. A request is exchanged by the caller's own task on a connection
//! it holds alone: the head and body go out in one vectored write, the
//! answer's head is parsed from the connection's buffer ([`crate::wire`]), and the
//! body ([`UpstreamBody`]) reads from the same connection as the caller
//! polls it. When the body has been read to its end the connection goes back
//! to the pool from inside that poll; a small answer that arrived whole with
//! its head is handed over as one buffer and the connection is back in the
//! pool before the caller sees the answer. This is the whole client: no
//! connection task, no channel between the caller and the connection, no
//! header map cloned per request (hyper's client cost about 15 000
//! instructions per request in this worker, a third of all it did).
//!
//! The idle list is LIFO and bounded ([`MAX_POOLED`]); entries older than
//! [`IDLE_TIMEOUT`], and those the upstream closed, are dropped from the old
//! end when the list is next touched, which closes their sockets (there is
//! no reaper task: a pool nobody uses keeps its idle sockets, closed by the
//! upstream or not, until it is used again or the server is dropped by a
//! reload). A body dropped before its end closes its connection.
//!
//! A connection the upstream closed while it sat idle is the classic
//! keep-alive race. At checkout, a connection the runtime has seen become
//! readable (the upstream's FIN, a reset, stray bytes) is dropped. A request
//! is sent again on a new connection only when the write on a reused
//! connection failed before any byte of it was accepted: then the upstream
//! cannot have seen it. A request that was written is never sent twice, so a
//! `tools/call` never runs twice. What the request *means* (sessions,
//! timeouts, statuses) is the caller's business (`upstream.rs`).

use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

pub(crate) use crate::wire::HeaderBlock;
pub(crate) use crate::wire::Malformed;
use crate::wire::{self, Chunked, Framing, Parsed, Step};

/// Idle connections kept per upstream server and worker; beyond it the
/// oldest is closed.
pub(crate) const MAX_POOLED: usize = 256;
/// A pooled connection unused for this long is closed.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// TCP keep-alive probes on upstream connections after this much silence, so
/// a vanished upstream host is noticed on a pooled connection.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// Room made in a connection's read buffer when it runs short.
const READ_SIZE: usize = 16 * 1024;
/// A read buffer grown past this by a large answer is not kept for the next.
const MAX_KEPT_BUFFER: usize = 256 * 1024;

/// Why a request could not be exchanged with the upstream. Messages carry
/// their cause and no `source()`, so a chain printed at the edge says it
/// once (this holds for every error type of the worker).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    #[error("resolving {host}: {cause}")]
    Resolve { host: String, cause: io::Error },
    #[error("{host} resolves to no address")]
    NoAddress { host: String },
    #[error("connecting to {addr}: {cause}")]
    Connect { addr: SocketAddr, cause: io::Error },
    #[error("connecting to {addr} timed out after {timeout_ms} ms")]
    ConnectTimeout { addr: SocketAddr, timeout_ms: u64 },
    #[error("sending the request: {0}")]
    Write(io::Error),
    #[error("reading the answer: {0}")]
    Read(io::Error),
    #[error("the connection closed before an answer")]
    Closed,
    #[error("the answer is not usable HTTP/1.1: {0}")]
    Malformed(Malformed),
}

/// Why an answer body could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("reading the answer body: {0}")]
    Read(io::Error),
    #[error("the connection closed in the middle of the answer body")]
    Truncated,
    #[error("the answer body is not usable HTTP/1.1: {0}")]
    Malformed(Malformed),
}

/// A request to send: origin-form `path`, headers including `Host`.
pub(crate) struct Outgoing<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub headers: &'a HeaderBlock,
    pub body: Bytes,
}

/// Where the connections go.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// An IP literal: no resolver call per connection.
    Addr(SocketAddr),
    /// A name, resolved for every new connection (it may move).
    Name { host: String, port: u16 },
}

/// One connection and its buffers, kept with it so a request allocates none.
struct Conn {
    io: TcpStream,
    /// Bytes read and not yet consumed.
    buf: BytesMut,
    /// The request head being written.
    out: Vec<u8>,
    /// Shared with the bodies of the answers read on it.
    unfit: Unfit,
}

impl Conn {
    fn new(io: TcpStream) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            out: Vec::with_capacity(512),
            unfit: Unfit::default(),
        }
    }

    /// Write the head and body whole. `Err((error, nothing_written))`.
    async fn write_request(&mut self, req: &Outgoing<'_>) -> Result<(), (io::Error, bool)> {
        self.out.clear();
        let len = (!req.body.is_empty() || req.method != Method::GET).then_some(req.body.len());
        wire::write_head(&mut self.out, req.method, req.path, req.headers, len);
        wire::write_two(&mut self.io, &self.out, &req.body).await
    }

    /// Read until the answer's head is in; 1xx heads are skipped.
    async fn read_head(&mut self) -> Result<wire::Head, ConnError> {
        loop {
            match wire::parse_head(&self.buf).map_err(ConnError::Malformed)? {
                Parsed::Head(head, len) => {
                    self.buf.advance(len);
                    return Ok(head);
                }
                Parsed::Interim(len) => {
                    self.buf.advance(len);
                    continue;
                }
                Parsed::Partial => {}
            }
            let n = std::future::poll_fn(|cx| self.poll_fill(cx))
                .await
                .map_err(ConnError::Read)?;
            if n == 0 {
                return Err(if self.buf.is_empty() {
                    ConnError::Closed
                } else {
                    ConnError::Malformed(Malformed("the connection closed inside the answer head"))
                });
            }
        }
    }

    /// Read what the socket has into the buffer; `Ok(0)` at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_SIZE / 4 {
            self.buf.reserve(READ_SIZE);
        }
        // Through `AsyncRead`: a short read clears the socket's readiness, so
        // the next wait goes straight to the reactor instead of a read that
        // would block.
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    /// Still fit to carry a request after sitting idle: not marked unfit,
    /// and nothing to read on it. A connection with something to read was
    /// closed or reset by the upstream, or holds bytes nobody asked for
    /// (an upstream that answers twice): those bytes would be taken for the
    /// answer to the next request, which may be another session's.
    ///
    /// The runtime's cached readiness is not enough: it is updated only
    /// when the reactor next polls, so bytes that arrived a moment ago are
    /// not in it yet. Only asking the kernel (a non-blocking peek, one
    /// system call per checkout) closes that window.
    fn idle_and_open(&mut self) -> bool {
        if self.unfit.is_set() {
            return false;
        }
        let mut probe = [MaybeUninit::<u8>::uninit(); 1];
        match socket2::SockRef::from(&self.io).peek(&mut probe) {
            // Readiness the reactor still holds from the last answer is
            // harmless: the next read finds it stale and clears it.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
            // Data (stray bytes), end of stream, or an error.
            _ => false,
        }
    }
}

/// Set when an answer read on a connection proved the upstream out of step
/// (an answer to another request): the connection is then closed instead
/// of reused, even if it already went back to the pool.
#[derive(Clone, Default)]
pub(crate) struct Unfit(Arc<std::sync::atomic::AtomicBool>);

impl Unfit {
    pub(crate) fn set(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn is_set(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// What the pool and the bodies reading from its connections share.
struct Shared {
    target: Target,
    connect_timeout: Duration,
    /// [`IDLE_TIMEOUT`]; shorter in tests.
    idle_timeout: Duration,
    /// Oldest at the front, most recently used at the back.
    idle: Mutex<VecDeque<Idle>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, VecDeque<Idle>> {
        // Nothing in the list can be left inconsistent by a panic.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drop from the old end (entries are in the order they were put back)
    /// the connections unused for too long and those the upstream closed:
    /// an upstream's own keep-alive timeout closes the oldest first, and
    /// nothing else would release their fds before [`IDLE_TIMEOUT`].
    fn expire(&self, idle: &mut VecDeque<Idle>, now: Instant) {
        while idle.front_mut().is_some_and(|i| {
            now.duration_since(i.since) >= self.idle_timeout || !i.conn.idle_and_open()
        }) {
            idle.pop_front();
        }
    }

    /// The most recently used idle connection still open.
    fn checkout(&self) -> Option<Conn> {
        let now = Instant::now();
        let mut idle = self.lock();
        self.expire(&mut idle, now);
        while let Some(mut i) = idle.pop_back() {
            if i.conn.idle_and_open() {
                return Some(i.conn);
            }
        }
        None
    }

    /// Take back a connection whose answer was read to its end.
    fn checkin(&self, mut conn: Conn) {
        if !conn.buf.is_empty() {
            // Bytes after the answer: the upstream is out of step; close.
            return;
        }
        if conn.buf.capacity() > MAX_KEPT_BUFFER {
            conn.buf = BytesMut::new();
        }
        let now = Instant::now();
        let mut idle = self.lock();
        self.expire(&mut idle, now);
        if idle.len() >= MAX_POOLED {
            idle.pop_front();
        }
        idle.push_back(Idle { conn, since: now });
    }
}

/// The connections of one worker to one upstream server.
pub(crate) struct ConnPool {
    shared: Arc<Shared>,
}

impl ConnPool {
    /// A pool for the `http://` server in `uri` (the caller checked the
    /// scheme). Opens nothing yet.
    pub(crate) fn new(uri: &Uri, connect_timeout: Duration) -> Result<Self, String> {
        let host = uri.host().ok_or("the URL has no host")?;
        let port = uri.port_u16().unwrap_or(80);
        // `Uri::host` keeps the brackets of an IPv6 literal.
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let target = match bare.parse::<IpAddr>() {
            Ok(ip) => Target::Addr(SocketAddr::new(ip, port)),
            Err(_) => Target::Name {
                host: host.to_owned(),
                port,
            },
        };
        Ok(Self {
            shared: Arc::new(Shared {
                target,
                connect_timeout,
                idle_timeout: IDLE_TIMEOUT,
                idle: Mutex::new(VecDeque::new()),
            }),
        })
    }

    /// Exchange `req` for the answer's head; the body reads from the
    /// connection as the caller polls it.
    pub(crate) async fn send(
        &self,
        req: Outgoing<'_>,
    ) -> Result<Response<UpstreamBody>, ConnError> {
        let (mut conn, reused) = match self.shared.checkout() {
            Some(conn) => (conn, true),
            // Boxed: connecting (resolver included) is the rare branch and
            // its future the large one; every request awaits `send`.
            None => (Box::pin(self.connect()).await?, false),
        };
        if let Err((e, nothing_written)) = conn.write_request(&req).await {
            // Refused before a byte went out: the upstream never saw it,
            // so sending it again is safe.
            if !(reused && nothing_written) {
                return Err(ConnError::Write(e));
            }
            debug!(error = %e, "pooled upstream connection was closed; retrying on a new one");
            conn = Box::pin(self.connect()).await?;
            conn.write_request(&req)
                .await
                .map_err(|(e, _)| ConnError::Write(e))?;
        }
        let head = conn.read_head().await?;
        let mut resp = Response::new(UpstreamBody::new(conn, &head, &self.shared));
        *resp.status_mut() = head.status;
        *resp.headers_mut() = head.headers;
        Ok(resp)
    }

    /// Idle connections in the list.
    #[cfg(test)]
    fn pooled(&self) -> usize {
        self.shared.lock().len()
    }

    /// Wait until the runtime has seen every idle connection closed by the
    /// upstream.
    #[cfg(test)]
    async fn wait_until_closed(&self) {
        loop {
            let all_closed = self.shared.lock().iter().all(|i| {
                let mut cx = Context::from_waker(std::task::Waker::noop());
                i.conn.io.poll_read_ready(&mut cx).is_ready()
            });
            if all_closed {
                return;
            }
            tokio::task::yield_now().await;
        }
    }

    async fn connect(&self) -> Result<Conn, ConnError> {
        let stream = match &self.shared.target {
            Target::Addr(addr) => self.connect_to(*addr).await?,
            Target::Name { host, port } => {
                let addrs = tokio::net::lookup_host((host.as_str(), *port))
                    .await
                    .map_err(|cause| ConnError::Resolve {
                        host: host.clone(),
                        cause,
                    })?;
                let mut last = None;
                let mut stream = None;
                for addr in addrs {
                    match self.connect_to(addr).await {
                        Ok(s) => {
                            stream = Some(s);
                            break;
                        }
                        Err(e) => last = Some(e),
                    }
                }
                match (stream, last) {
                    (Some(s), _) => s,
                    (None, Some(e)) => return Err(e),
                    (None, None) => return Err(ConnError::NoAddress { host: host.clone() }),
                }
            }
        };
        Ok(Conn::new(stream))
    }

    async fn connect_to(&self, addr: SocketAddr) -> Result<TcpStream, ConnError> {
        let timeout = self.shared.connect_timeout;
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ConnError::ConnectTimeout {
                addr,
                timeout_ms: timeout.as_millis() as u64,
            })?
            .map_err(|cause| ConnError::Connect { addr, cause })?;
        // Requests are written whole; Nagle would only delay small SSE
        // writes and answers.
        if let Err(e) = stream.set_nodelay(true) {
            debug!(error = %e, "TCP_NODELAY on an upstream connection");
        }
        let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
        if let Err(e) = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive) {
            debug!(error = %e, "TCP keep-alive on an upstream connection");
        }
        Ok(stream)
    }
}

/// An upstream answer's body. It owns the connection while the body is
/// being read and gives it back to the pool at the body's end (when the
/// connection may carry another request).
pub(crate) struct UpstreamBody {
    state: State,
    /// The connection's mark, kept past its return to the pool.
    unfit: Unfit,
}

enum State {
    /// Read whole with the head (or empty); the connection is already back.
    Whole(Option<Bytes>),
    Reading {
        conn: Conn,
        framing: Reading,
        keep_alive: bool,
        pool: Weak<Shared>,
    },
    Done,
}

enum Reading {
    Length(u64),
    Chunked(Chunked),
    UntilClose,
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Whole(_) => "whole",
            State::Reading { .. } => "reading",
            State::Done => "done",
        };
        f.debug_struct("UpstreamBody")
            .field("state", &state)
            .finish()
    }
}

impl UpstreamBody {
    fn new(mut conn: Conn, head: &wire::Head, pool: &Arc<Shared>) -> Self {
        let unfit = conn.unfit.clone();
        let framing = match head.framing {
            Framing::Empty => Reading::Length(0),
            Framing::Length(n) => Reading::Length(n),
            Framing::Chunked => Reading::Chunked(Chunked::Size),
            Framing::UntilClose => Reading::UntilClose,
        };
        if let Reading::Length(n) = framing
            && conn.buf.len() as u64 >= n
        {
            let data = (n > 0).then(|| wire::take_bytes(&mut conn.buf, n as usize));
            if head.keep_alive {
                pool.checkin(conn);
            }
            return Self {
                state: State::Whole(data),
                unfit,
            };
        }
        Self {
            state: State::Reading {
                conn,
                framing,
                keep_alive: head.keep_alive,
                pool: Arc::downgrade(pool),
            },
            unfit,
        }
    }

    /// The whole answer, if it came whole with its head (the connection is
    /// already back in the pool); the body has ended then.
    pub(crate) fn take_whole(&mut self) -> Option<Bytes> {
        let State::Whole(data) = &mut self.state else {
            return None;
        };
        let data = data.take().unwrap_or_default();
        self.state = State::Done;
        Some(data)
    }

    /// The mark that keeps this answer's connection from being reused,
    /// for a caller that finds the answer was not the one it asked for.
    pub(crate) fn unfit(&self) -> Unfit {
        self.unfit.clone()
    }

    /// The body ended: give the connection back if it can be reused.
    fn finish(&mut self) {
        if let State::Reading {
            conn,
            keep_alive: true,
            pool,
            ..
        } = std::mem::replace(&mut self.state, State::Done)
            && let Some(pool) = pool.upgrade()
        {
            pool.checkin(conn);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        loop {
            let (conn, framing) = match &mut this.state {
                State::Whole(data) => {
                    let data = data.take();
                    this.state = State::Done;
                    return Poll::Ready(data.map(|d| Ok(Frame::data(d))));
                }
                State::Done => return Poll::Ready(None),
                State::Reading { conn, framing, .. } => (conn, framing),
            };
            let data = match framing {
                Reading::Length(0) => None,
                Reading::Length(left) if !conn.buf.is_empty() => {
                    let n = (conn.buf.len() as u64).min(*left);
                    *left -= n;
                    Some(wire::take_bytes(&mut conn.buf, n as usize))
                }
                Reading::UntilClose if !conn.buf.is_empty() => Some(conn.buf.split().freeze()),
                Reading::Chunked(dec) => match dec.step(&mut conn.buf) {
                    Ok(Step::Data(d)) => Some(d),
                    Ok(Step::Done) => None,
                    Ok(Step::Need) => {
                        if ready!(this.fill(cx))? {
                            continue;
                        }
                        this.state = State::Done;
                        return Poll::Ready(Some(Err(BodyError::Truncated)));
                    }
                    Err(e) => {
                        this.state = State::Done;
                        return Poll::Ready(Some(Err(BodyError::Malformed(e))));
                    }
                },
                Reading::Length(_) | Reading::UntilClose => {
                    if ready!(this.fill(cx))? {
                        continue;
                    }
                    if let State::Reading {
                        framing: Reading::UntilClose,
                        ..
                    } = this.state
                    {
                        this.state = State::Done;
                        return Poll::Ready(None);
                    }
                    this.state = State::Done;
                    return Poll::Ready(Some(Err(BodyError::Truncated)));
                }
            };
            return Poll::Ready(match data {
                Some(d) => {
                    if matches!(
                        &this.state,
                        State::Reading {
                            framing: Reading::Length(0),
                            ..
                        }
                    ) {
                        // The last bytes: the connection can go back now,
                        // before the caller asks for the end.
                        this.finish_keeping(d)
                    } else {
                        Some(Ok(Frame::data(d)))
                    }
                }
                None => {
                    this.finish();
                    None
                }
            });
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            State::Whole(data) => data.is_none(),
            State::Done => true,
            State::Reading { framing, .. } => matches!(framing, Reading::Length(0)),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            State::Whole(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            State::Done => SizeHint::with_exact(0),
            State::Reading {
                framing: Reading::Length(n),
                ..
            } => SizeHint::with_exact(*n),
            State::Reading { .. } => SizeHint::default(),
        }
    }
}

impl UpstreamBody {
    /// Read more into the connection's buffer: `Ok(true)` if bytes came,
    /// `Ok(false)` at the connection's end (the body state is left for the
    /// caller to judge). A read error ends the body.
    fn fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, BodyError>> {
        let State::Reading { conn, .. } = &mut self.state else {
            return Poll::Ready(Ok(false));
        };
        match ready!(conn.poll_fill(cx)) {
            Ok(n) => Poll::Ready(Ok(n > 0)),
            Err(e) => {
                self.state = State::Done;
                Poll::Ready(Err(BodyError::Read(e)))
            }
        }
    }

    /// Hand out the body's last bytes and end it in the same poll.
    fn finish_keeping(&mut self, last: Bytes) -> Option<Result<Frame<Bytes>, BodyError>> {
        self.finish();
        Some(Ok(Frame::data(last)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    fn headers() -> HeaderBlock {
        let mut h = http::HeaderMap::new();
        h.insert("host", http::HeaderValue::from_static("test"));
        HeaderBlock::new(&h)
    }

    fn request(headers: &HeaderBlock, n: u32) -> Outgoing<'_> {
        Outgoing {
            method: &Method::POST,
            path: "/mcp",
            headers,
            body: Bytes::from(format!("{{\"n\":{n}}}")),
        }
    }

    fn pool_for(addr: SocketAddr, connect_timeout: Duration) -> ConnPool {
        let uri: Uri = format!("http://{addr}/mcp").parse().expect("uri");
        ConnPool::new(&uri, connect_timeout).expect("pool")
    }

    async fn body_of(resp: Response<UpstreamBody>) -> Bytes {
        use http_body_util::BodyExt;
        resp.into_body().collect().await.expect("body").to_bytes()
    }

    /// Read one request head and its small body (the tests' bodies fit one read).
    async fn read_request(conn: &mut TcpStream) -> Option<String> {
        let mut buf = vec![0u8; 4096];
        let mut have = 0;
        loop {
            let n = conn.read(&mut buf[have..]).await.ok()?;
            if n == 0 {
                return None;
            }
            have += n;
            let text = String::from_utf8_lossy(&buf[..have]).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let len = text
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if have >= end + 4 + len {
                    return Some(text);
                }
            }
        }
    }

    #[tokio::test]
    async fn reuses_one_connection_for_sequential_requests() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.expect("accept");
            let mut served = 0;
            while read_request(&mut conn).await.is_some() {
                conn.write_all(ANSWER).await.expect("answer");
                served += 1;
            }
            // Only one connection was ever opened: a second accept would
            // block, so report what this one carried.
            served
        });
        let pool = pool_for(addr, Duration::from_secs(5));
        let h = headers();
        for n in 0..5 {
            let resp = pool.send(request(&h, n)).await.expect("send");
            assert_eq!(body_of(resp).await, "ok");
        }
        assert_eq!(pool.pooled(), 1);
        drop(pool);
        assert_eq!(server.await.expect("server"), 5);
    }

    #[tokio::test]
    async fn a_chunked_answer_in_pieces_streams_and_frees_its_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (go_tx, mut go_rx) = tokio::sync::mpsc::channel::<()>(1);
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.expect("accept");
            read_request(&mut conn).await.expect("first");
            conn.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel")
                .await
                .expect("head");
            // The rest only once the client has taken the first bytes.
            go_rx.recv().await.expect("go");
            for piece in [&b"lo\r"[..], b"\n6\r\n world\r\n0\r\n", b"\r\n"] {
                conn.write_all(piece).await.expect("piece");
                conn.flush().await.expect("flush");
            }
            read_request(&mut conn)
                .await
                .expect("second on the same connection");
            conn.write_all(ANSWER).await.expect("answer");
        });
        let pool = pool_for(addr, Duration::from_secs(5));
        let h = headers();
        let mut body = pool.send(request(&h, 1)).await.expect("send").into_body();
        use http_body_util::BodyExt;
        let first = body
            .frame()
            .await
            .expect("frame")
            .expect("ok")
            .into_data()
            .expect("data");
        assert_eq!(first, "hel");
        assert_eq!(pool.pooled(), 0, "busy while its body is read");
        go_tx.send(()).await.expect("go");
        let rest = body.collect().await.expect("rest").to_bytes();
        assert_eq!(rest, "lo world");
        assert_eq!(pool.pooled(), 1, "back once the body ended");
        let resp = pool.send(request(&h, 2)).await.expect("second");
        assert_eq!(body_of(resp).await, "ok");
        server.await.expect("server");
    }

    #[tokio::test]
    async fn a_truncated_answer_is_an_error_and_its_connection_is_not_reused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut first, _) = listener.accept().await.expect("accept");
            read_request(&mut first).await.expect("first");
            first
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
                .await
                .expect("partial");
            drop(first);
            let (mut second, _) = listener.accept().await.expect("a new connection");
            read_request(&mut second).await.expect("second");
            second.write_all(ANSWER).await.expect("answer");
        });
        let pool = pool_for(addr, Duration::from_secs(5));
        let h = headers();
        let resp = pool.send(request(&h, 1)).await.expect("head");
        use http_body_util::BodyExt;
        let err = resp.into_body().collect().await.expect_err("truncated");
        assert!(matches!(err, BodyError::Truncated), "{err:?}");
        assert_eq!(pool.pooled(), 0);
        let resp = pool.send(request(&h, 2)).await.expect("second");
        assert_eq!(body_of(resp).await, "ok");
        server.await.expect("server");
    }

    #[tokio::test]
    async fn interim_heads_are_skipped_and_close_or_extra_bytes_end_reuse() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            // 1: an interim head, then an answer that closes the connection.
            let (mut a, _) = listener.accept().await.expect("accept a");
            read_request(&mut a).await.expect("first");
            a.write_all(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok")
                .await
                .expect("answer");
            // 2: on a new connection, an answer followed by bytes nobody asked for.
            let (mut b, _) = listener.accept().await.expect("accept b");
            read_request(&mut b).await.expect("second");
            b.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n")
                .await
                .expect("answer");
            // 3: so a third connection.
            let (mut c, _) = listener.accept().await.expect("accept c");
            read_request(&mut c).await.expect("third");
            c.write_all(ANSWER).await.expect("answer");
            (a, b, c)
        });
        let pool = pool_for(addr, Duration::from_secs(5));
        let h = headers();
        for n in 0..3 {
            // A connection wrongly reused would wait for an answer that
            // never comes: bounded, so that fails instead of hanging.
            let exchange = async {
                let resp = pool.send(request(&h, n)).await.expect("send");
                assert_eq!(resp.status(), http::StatusCode::OK);
                body_of(resp).await
            };
            let body = tokio::time::timeout(Duration::from_secs(10), exchange)
                .await
                .expect("answered on a fresh connection");
            assert_eq!(body, "ok");
        }
        assert_eq!(pool.pooled(), 1, "only the third connection is kept");
        drop(server.await.expect("server"));
    }

    #[tokio::test]
    async fn idle_connections_the_upstream_closed_are_released_from_the_old_end() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (finish_a, finish_a_rx) = tokio::sync::oneshot::channel::<()>();
        let (close_b, close_b_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            // A: its answer's body is held back until the client has opened B.
            let (mut a, _) = listener.accept().await.expect("accept a");
            read_request(&mut a).await.expect("request on a");
            a.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\no")
                .await
                .expect("head on a");
            let (mut b, _) = listener.accept().await.expect("accept b");
            read_request(&mut b).await.expect("request on b");
            b.write_all(ANSWER).await.expect("answer on b");
            finish_a_rx.await.expect("finish a");
            a.write_all(b"k").await.expect("rest on a");
            // B went back to the pool first (the old end): the upstream closes it.
            close_b_rx.await.expect("close b");
            drop(b);
            read_request(&mut a).await.expect("third request, on a");
            a.write_all(ANSWER).await.expect("answer on a");
            a
        });
        let pool = pool_for(addr, Duration::from_secs(5));
        let h = headers();
        let held = pool.send(request(&h, 1)).await.expect("a");
        let resp = pool.send(request(&h, 2)).await.expect("b");
        assert_eq!(body_of(resp).await, "ok");
        finish_a.send(()).expect("finish a");
        assert_eq!(body_of(held).await, "ok");
        assert_eq!(pool.pooled(), 2);
        close_b.send(()).expect("close b");
        // Until the runtime has seen B's end.
        loop {
            let seen = pool.shared.lock().front().is_some_and(|i| {
                let mut cx = Context::from_waker(std::task::Waker::noop());
                i.conn.io.poll_read_ready(&mut cx).is_ready()
            });
            if seen {
                break;
            }
            tokio::task::yield_now().await;
        }
        let resp = pool.send(request(&h, 3)).await.expect("third");
        assert_eq!(body_of(resp).await, "ok");
        assert_eq!(pool.pooled(), 1, "the closed connection was let go");
        drop(server.await.expect("server"));
    }

    #[tokio::test]
    async fn a_host_name_is_resolved_and_each_address_tried() {
        // Only IPv4 listens: where `localhost` also resolves to ::1, that
        // address is refused first and the next one is tried.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.expect("accept");
            let req = read_request(&mut conn).await.expect("request");
            conn.write_all(ANSWER).await.expect("answer");
            req
        });
        let uri: Uri = format!("http://localhost:{port}/mcp").parse().expect("uri");
        let pool = ConnPool::new(&uri, Duration::from_secs(5)).expect("pool");
        let h = headers();
        assert!(matches!(pool.shared.target, Target::Name { .. }));
        let resp = pool.send(request(&h, 1)).await.expect("send");
        assert_eq!(body_of(resp).await, "ok");
        assert!(
            server
                .await
                .expect("server")
                .starts_with("POST /mcp HTTP/1.1")
        );
    }

    #[tokio::test]
    async fn a_get_stream_keeps_its_connection_to_itself() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            read_request(&mut stream).await.expect("GET");
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                .await
                .expect("stream head");
            let (mut post, _) = listener.accept().await.expect("accept");
            read_request(&mut post).await.expect("POST");
            post.write_all(ANSWER).await.expect("answer");
            (stream, post)
        });
        let pool = pool_for(addr, Duration::from_secs(5));
        let h = headers();
        let get = Outgoing {
            method: &Method::GET,
            path: "/mcp",
            headers: &h,
            body: Bytes::new(),
        };
        let stream = pool.send(get).await.expect("GET");
        assert_eq!(pool.pooled(), 0);
        let resp = pool.send(request(&h, 1)).await.expect("POST");
        assert_eq!(body_of(resp).await, "ok");
        assert_eq!(pool.pooled(), 1);
        drop((stream, server.await.expect("server")));
    }

    #[tokio::test]
    async fn a_connection_idle_too_long_is_closed_not_reused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut first, _) = listener.accept().await.expect("accept");
            read_request(&mut first).await.expect("request");
            first.write_all(ANSWER).await.expect("answer");
            let (mut second, _) = listener.accept().await.expect("accept");
            read_request(&mut second).await.expect("request");
            second.write_all(ANSWER).await.expect("answer");
            // The pool let go of the first connection: hyper closes it.
            read_request(&mut first).await.is_none()
        });
        let mut pool = pool_for(addr, Duration::from_secs(5));
        let h = headers();
        // Every pooled connection is already too old at the next checkout.
        Arc::get_mut(&mut pool.shared)
            .expect("unshared")
            .idle_timeout = Duration::ZERO;
        for n in 0..2 {
            let resp = pool.send(request(&h, n)).await.expect("send");
            assert_eq!(body_of(resp).await, "ok");
        }
        assert!(
            server.await.expect("server"),
            "the idle connection stayed open"
        );
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_replaced() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
        let server = tokio::spawn(async move {
            // First connection: one answer, then the upstream closes it
            // while it is idle in the pool.
            let (mut first, _) = listener.accept().await.expect("accept");
            read_request(&mut first).await.expect("request");
            first.write_all(ANSWER).await.expect("answer");
            drop(first);
            let _ = closed_tx.send(());
            let (mut second, _) = listener.accept().await.expect("accept");
            let req = read_request(&mut second).await.expect("request");
            second.write_all(ANSWER).await.expect("answer");
            req
        });
        let pool = pool_for(addr, Duration::from_secs(5));
        let h = headers();
        let resp = pool.send(request(&h, 1)).await.expect("first");
        assert_eq!(body_of(resp).await, "ok");
        closed_rx.await.expect("server closed");
        pool.wait_until_closed().await;
        let resp = pool.send(request(&h, 2)).await.expect("second");
        assert_eq!(body_of(resp).await, "ok");
        let second = server.await.expect("server");
        assert!(second.ends_with("{\"n\":2}"), "{second}");
    }

    #[tokio::test]
    async fn a_request_the_upstream_read_is_not_sent_again() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.expect("accept");
            read_request(&mut conn).await.expect("first");
            conn.write_all(ANSWER).await.expect("answer");
            // Read the second request, then fail without answering.
            read_request(&mut conn).await.expect("second");
            drop(conn);
            listener
        });
        let pool = pool_for(addr, Duration::from_secs(5));
        let h = headers();
        let resp = pool.send(request(&h, 1)).await.expect("first");
        assert_eq!(body_of(resp).await, "ok");
        let err = pool.send(request(&h, 2)).await.expect_err("no answer");
        assert!(matches!(err, ConnError::Closed), "{err:?}");
        // A retry would have connected before `send` returned, so it would
        // wait in the accept queue now.
        let listener = server.await.expect("server");
        let pending =
            std::future::poll_fn(|cx| std::task::Poll::Ready(listener.poll_accept(cx).is_ready()))
                .await;
        assert!(!pending, "the request was sent again on a new connection");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stray_bytes_and_unfit_marks_keep_a_connection_out_of_use() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stray_sent, stray_rx) = std::sync::mpsc::channel::<()>();
        let (pooled_tx, pooled_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            // A: one answer, then an unsolicited second one once the
            // connection is back in the pool.
            let (mut a, _) = listener.accept().await.expect("accept a");
            read_request(&mut a).await.expect("first");
            a.write_all(ANSWER).await.expect("answer");
            pooled_rx.await.expect("pooled");
            a.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstray")
                .await
                .expect("stray");
            let _ = stray_sent.send(());
            // B: answers once; the client then marks it unfit.
            let (mut b, _) = listener.accept().await.expect("accept b");
            read_request(&mut b).await.expect("second");
            b.write_all(ANSWER).await.expect("answer");
            // C: the third request.
            let (mut c, _) = listener.accept().await.expect("accept c");
            read_request(&mut c).await.expect("third");
            c.write_all(ANSWER).await.expect("answer");
            (a, b, c)
        });
        let pool = pool_for(addr, Duration::from_secs(5));
        let h = headers();
        let resp = pool.send(request(&h, 1)).await.expect("first");
        assert_eq!(body_of(resp).await, "ok");
        assert_eq!(pool.pooled(), 1);
        pooled_tx.send(()).expect("tell the server");
        // Wait on a std channel, blocking this thread: whether or not the
        // runtime has seen the stray bytes arrive, the kernel has them.
        tokio::task::block_in_place(|| stray_rx.recv().expect("stray sent"));
        let resp = pool.send(request(&h, 2)).await.expect("second");
        let unfit = resp.body().unfit();
        assert_eq!(body_of(resp).await, "ok", "not the stray answer");
        assert_eq!(pool.pooled(), 1);
        unfit.set();
        let resp = pool.send(request(&h, 3)).await.expect("third");
        assert_eq!(body_of(resp).await, "ok");
        drop(server.await.expect("server"));
    }

    #[tokio::test]
    async fn connect_timeout_and_refusal_are_errors() {
        // A loopback listener whose accept queue is full: Linux drops the
        // SYNs of further connects, which then hang (tests send nothing to
        // any address beyond loopback).
        let full = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        full.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .expect("bind");
        full.listen(0).expect("listen");
        let blackhole = full.local_addr().expect("addr").as_socket().expect("inet");
        let mut fillers = Vec::new();
        for _ in 0..4 {
            if let Ok(s) =
                std::net::TcpStream::connect_timeout(&blackhole, Duration::from_millis(200))
            {
                fillers.push(s);
            }
        }
        let pool = pool_for(blackhole, Duration::from_millis(50));
        let h = headers();
        match pool.send(request(&h, 1)).await {
            Err(ConnError::ConnectTimeout { addr, timeout_ms }) => {
                assert_eq!((addr, timeout_ms), (blackhole, 50));
            }
            other => panic!("expected a connect timeout, got {other:?}"),
        }
        drop((fillers, full));

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let pool = pool_for(addr, Duration::from_secs(5));
        let h = headers();
        let err = pool.send(request(&h, 1)).await.expect_err("refused");
        assert!(matches!(err, ConnError::Connect { .. }), "{err:?}");
    }
}
