//! This worker's HTTP/1.1 connections to one upstream server, and the
//! client that speaks on them.
//!
//! [`ConnPool`] opens connections (resolve, TCP connect bounded by the
//! upstream's `connect_timeout_ms`, `TCP_NODELAY`, TCP keep-alive) and keeps
//! idle ones for the next request, however many upstream sessions share the
//! server. A request is exchanged by the caller's own task on a connection
//! it holds alone: the head and body go out in one vectored write, the
//! answer's head is parsed from the connection's buffer ([`crate::http::wire`]), and the
//! body ([`UpstreamBody`]) reads from the same connection as the caller
//! polls it. When the body has been read to its end the connection goes back
//! to the pool from inside that poll; a small answer that arrived whole with
//! its head is handed over as one buffer and the connection is back in the
//! pool before the caller sees the answer. This is the whole client: no
//! connection task, no channel between the caller and the connection, no
//! header map cloned per request (hyper's client cost about 15 000
//! instructions per request in this worker, a third of all it did).
//!
//! An `https://` server's connections are the same, with a TLS client
//! session over the TCP stream ([`Stream::Tls`]): the handshake (SNI from
//! the URL's host, the server's certificate verified against the
//! upstream's roots, ALPN `http/1.1`) runs when the connection is opened,
//! bounded by the connect timeout, with the upstream's `ClientConfig` built
//! once per (re)load. A plaintext connection pays nothing for it: the
//! stream is an enum, not a boxed trait object, and only the TLS variant is
//! boxed (once per connection, to keep plaintext connections small).
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
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::rustls;
use tracing::debug;

pub(crate) use crate::http::wire::HeaderBlock;
pub(crate) use crate::http::wire::Malformed;
use crate::http::wire::{self, Chunked, Framing, Parsed, Step};

#[cfg(feature = "fuzzing")]
pub(crate) mod fuzz;
mod stream;

use stream::Stream;

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
    /// The TLS handshake failed: an unknown CA, a certificate for another
    /// name, no protocol in common, a refused client certificate (the
    /// cause is rustls's own words, or the alert the server sent).
    #[error("TLS handshake with {host} ({addr}) failed: {cause}")]
    Tls {
        host: String,
        addr: SocketAddr,
        cause: io::Error,
    },
    #[error("TLS handshake with {host} ({addr}) timed out after {timeout_ms} ms")]
    TlsTimeout {
        host: String,
        addr: SocketAddr,
        timeout_ms: u64,
    },
    #[error("sending the request: {0}")]
    Write(io::Error),
    #[error("reading the answer: {0}")]
    Read(io::Error),
    #[error("the connection closed before an answer")]
    Closed,
    #[error("the answer is not usable HTTP/1.1: {0}")]
    Malformed(Malformed),
}

impl ConnError {
    /// A TLS failure: the handshake, or an alert or bad record on an
    /// established connection (a server that refuses a missing client
    /// certificate says so only after a TLS 1.3 handshake, on the first
    /// read). For metrics; the message says which.
    pub(crate) fn is_tls(&self) -> bool {
        match self {
            Self::Tls { .. } | Self::TlsTimeout { .. } => true,
            Self::Read(e) | Self::Write(e) => {
                e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>())
            }
            _ => false,
        }
    }
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
    /// Header lines of this request only (`name: value\r\n` each), after
    /// the shared block; usually empty.
    pub extra: &'a [u8],
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

/// How an `https://` pool's connections are secured; built once per pool.
struct TlsTarget {
    connector: tokio_rustls::TlsConnector,
    /// SNI and the name the certificate must carry: the URL's host.
    name: rustls::pki_types::ServerName<'static>,
}

/// One connection and its buffers, kept with it so a request allocates none.
struct Conn {
    io: Stream,
    /// Bytes read and not yet consumed.
    buf: BytesMut,
    /// The request head being written.
    out: Vec<u8>,
    /// Shared with the bodies of the answers read on it.
    unfit: Unfit,
}

impl Conn {
    fn new(io: Stream) -> Self {
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
        wire::write_head(
            &mut self.out,
            req.method,
            req.path,
            req.headers,
            req.extra,
            len,
        );
        wire::write_two(&mut self.io, &self.out, &req.body).await?;
        if let Stream::Tls(tls) = &mut self.io {
            // rustls may still hold encrypted records the socket did not
            // take; the plaintext stream has nothing to flush.
            tls.flush().await.map_err(|e| (e, false))?;
        }
        Ok(())
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
        !self.unfit.is_set() && self.io.is_quiet()
    }

    /// Worth dropping from the pool's old end: marked unfit, or closed (or
    /// sent bytes) as far as the runtime has seen, confirmed by
    /// [`Self::idle_and_open`]. A close the runtime has not seen yet waits
    /// for the next sweep; a connection handed out is always checked in
    /// full, so this only delays releasing an fd, never reuses a bad one.
    fn seen_unfit(&mut self) -> bool {
        self.unfit.is_set() || (self.io.may_have_input() && !self.idle_and_open())
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
    /// `Some` for an `https://` server.
    tls: Option<TlsTarget>,
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
    /// nothing else would release their fds before [`IDLE_TIMEOUT`]. This
    /// runs at every checkout and checkin, so it asks the kernel only about
    /// a connection the runtime saw something arrive on (two system calls
    /// per request saved on the hot path).
    fn expire(&self, idle: &mut VecDeque<Idle>, now: Instant) {
        while idle.front_mut().is_some_and(|i| {
            now.duration_since(i.since) >= self.idle_timeout || i.conn.seen_unfit()
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
    /// A pool for the `http://` or `https://` server in `uri`; `tls` is
    /// the client configuration of an `https://` one (and must be `None`
    /// for `http://`). Opens nothing yet.
    pub(crate) fn new(
        uri: &Uri,
        connect_timeout: Duration,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Self, String> {
        let host = uri.host().ok_or("the URL has no host")?;
        // `Uri::host` keeps the brackets of an IPv6 literal.
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let (tls, default_port) = match (uri.scheme_str(), tls) {
            (Some("https"), Some(config)) => {
                let name = rustls::pki_types::ServerName::try_from(bare.to_owned())
                    .map_err(|e| format!("{host:?} is not a TLS server name: {e}"))?;
                let target = TlsTarget {
                    connector: tokio_rustls::TlsConnector::from(config),
                    name,
                };
                (Some(target), 443)
            }
            (Some("https"), None) => return Err("an https URL without a TLS configuration".into()),
            (Some("http"), None) => (None, 80),
            (Some("http"), Some(_)) => return Err("TLS settings for an http:// URL".into()),
            (scheme, _) => return Err(format!("unsupported scheme {scheme:?}")),
        };
        let port = uri.port_u16().unwrap_or(default_port);
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
                tls,
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
                i.conn.io.tcp().poll_read_ready(&mut cx).is_ready()
            });
            if all_closed {
                return;
            }
            tokio::task::yield_now().await;
        }
    }

    async fn connect(&self) -> Result<Conn, ConnError> {
        let tcp = match &self.shared.target {
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
        let Some(tls) = &self.shared.tls else {
            return Ok(Conn::new(Stream::Plain(tcp)));
        };
        let addr = tcp
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let host = || tls.name.to_str().into_owned();
        // The handshake gets a connect timeout of its own: an upstream that
        // accepts and never answers must not hold the request until its
        // (much longer) deadline.
        let timeout = self.shared.connect_timeout;
        let stream = tokio::time::timeout(timeout, tls.connector.connect(tls.name.clone(), tcp))
            .await
            .map_err(|_| ConnError::TlsTimeout {
                host: host(),
                addr,
                timeout_ms: timeout.as_millis() as u64,
            })?
            .map_err(|cause| ConnError::Tls {
                host: host(),
                addr,
                cause,
            })?;
        Ok(Conn::new(Stream::Tls(Box::new(stream))))
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
mod tests;
