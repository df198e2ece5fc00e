//! This worker's HTTP/1.1 connections to one upstream server.
//!
//! [`ConnPool`] opens connections (resolve, TCP connect bounded by the
//! upstream's `connect_timeout_ms`, `TCP_NODELAY`, TCP keep-alive) and keeps
//! the ones that stay usable for the next request, however many upstream
//! sessions share the server. It replaces hyper-util's general-purpose pooled
//! client, which cost a keyed pool lookup (two SipHashes and an authority
//! comparison), a boxed executor future and an extra spawned task per request
//! to hand the connection back: here a request takes the most recently used
//! ready connection from a short list and puts it back as soon as the answer's
//! head is in; hyper reports it ready again once the answer has been read to
//! its end, which is when the next checkout may take it.
//!
//! Each connection is driven by one task for its whole life (hyper's
//! `Connection`), not one per request. The list is bounded
//! ([`MAX_POOLED`]) and entries older than [`IDLE_TIMEOUT`] are dropped when
//! the list is next touched, which closes their connections (there is no
//! reaper task: a pool nobody uses keeps its connections until the upstream
//! closes them or the server is dropped by a reload).
//!
//! A connection the upstream closed while it sat in the list is the classic
//! keep-alive race. The request is retried once on a new connection only when
//! hyper hands the request back unwritten (it saw the close before sending)
//! and the connection was a reused one: then the upstream cannot have seen
//! it. A request that was written is never retried, so a `tools/call` never
//! runs twice. What the request *means* (sessions, timeouts, statuses) is the
//! caller's business (`upstream.rs`).
//!
//! The connection of a `GET` is not put back: in MCP a GET opens a session's
//! server stream, which can last as long as the session, and a pooled
//! connection that stays busy that long would only be skipped by every
//! checkout. It closes when its stream ends.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

/// Connections kept per upstream server and worker; beyond it the oldest is
/// closed. Busy connections count too (see the module doc).
pub(crate) const MAX_POOLED: usize = 256;
/// A pooled connection unused for this long is closed.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// TCP keep-alive probes on upstream connections after this much silence, so
/// a vanished upstream host is noticed on a pooled connection.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

type Sender = SendRequest<Full<Bytes>>;

/// Why a request could not be exchanged with the upstream.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    #[error("resolving {host}: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("{host} resolves to no address")]
    NoAddress { host: String },
    #[error("connecting to {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("connecting to {addr} timed out after {timeout_ms} ms")]
    ConnectTimeout { addr: SocketAddr, timeout_ms: u64 },
    #[error("starting HTTP/1.1 on a new connection: {0}")]
    Handshake(#[source] hyper::Error),
    #[error("{0}")]
    Exchange(#[source] hyper::Error),
}

/// Where the connections go.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// An IP literal: no resolver call per connection.
    Addr(SocketAddr),
    /// A name, resolved for every new connection (it may move).
    Name { host: String, port: u16 },
}

struct Pooled {
    sender: Sender,
    since: Instant,
}

/// The connections of one worker to one upstream server.
pub(crate) struct ConnPool {
    target: Target,
    connect_timeout: Duration,
    /// [`IDLE_TIMEOUT`]; shorter in tests.
    idle_timeout: Duration,
    /// Oldest at the front, most recently used at the back.
    pooled: Mutex<VecDeque<Pooled>>,
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
            target,
            connect_timeout,
            idle_timeout: IDLE_TIMEOUT,
            pooled: Mutex::new(VecDeque::new()),
        })
    }

    /// Exchange `req` (origin-form URI, `Host` set) for the answer's head;
    /// the body streams from the connection as the caller reads it.
    pub(crate) async fn send(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, ConnError> {
        let keep = req.method() != Method::GET;
        let (mut sender, reused) = match self.checkout() {
            Some(sender) => (sender, true),
            None => (self.connect().await?, false),
        };
        match sender.try_send_request(req).await {
            Ok(resp) => {
                if keep {
                    self.checkin(sender);
                }
                Ok(resp)
            }
            Err(mut e) => match e.take_message() {
                // Closed before a byte of the request went out: the
                // upstream never saw it, so sending it again is safe.
                Some(req) if reused => {
                    debug!(error = %e.error(), "pooled upstream connection was closed; retrying on a new one");
                    let mut sender = self.connect().await?;
                    let resp = sender
                        .try_send_request(req)
                        .await
                        .map_err(|e| ConnError::Exchange(e.into_error()))?;
                    if keep {
                        self.checkin(sender);
                    }
                    Ok(resp)
                }
                _ => Err(ConnError::Exchange(e.into_error())),
            },
        }
    }

    /// Connections in the list (ready or still reading an answer).
    #[cfg(test)]
    pub(crate) fn pooled(&self) -> usize {
        self.lock().len()
    }

    /// Wait until every pooled connection has seen its upstream close it.
    #[cfg(test)]
    async fn wait_until_closed(&self) {
        while !self.lock().iter().all(|p| p.sender.is_closed()) {
            tokio::task::yield_now().await;
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Pooled>> {
        // Nothing in the list can be left inconsistent by a panic.
        self.pooled.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drop the connections unused for too long, and closed ones, from the
    /// old end (entries are in the order they were put back).
    fn expire(&self, pooled: &mut VecDeque<Pooled>, now: Instant) {
        while pooled.front().is_some_and(|p| {
            now.duration_since(p.since) >= self.idle_timeout || p.sender.is_closed()
        }) {
            pooled.pop_front();
        }
    }

    /// The most recently used connection that can take a request now.
    /// Closed ones met on the way are dropped; busy ones stay.
    fn checkout(&self) -> Option<Sender> {
        let now = Instant::now();
        let mut pooled = self.lock();
        self.expire(&mut pooled, now);
        let mut i = pooled.len();
        while i > 0 {
            i -= 1;
            let sender = &pooled[i].sender;
            if sender.is_ready() {
                return pooled.remove(i).map(|p| p.sender);
            }
            if sender.is_closed() {
                pooled.remove(i);
            }
        }
        None
    }

    fn checkin(&self, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut pooled = self.lock();
        self.expire(&mut pooled, now);
        if pooled.len() >= MAX_POOLED {
            pooled.pop_front();
        }
        pooled.push_back(Pooled { sender, since: now });
    }

    async fn connect(&self) -> Result<Sender, ConnError> {
        let stream = match &self.target {
            Target::Addr(addr) => self.connect_to(*addr).await?,
            Target::Name { host, port } => {
                let addrs = tokio::net::lookup_host((host.as_str(), *port))
                    .await
                    .map_err(|source| ConnError::Resolve {
                        host: host.clone(),
                        source,
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
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(ConnError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    async fn connect_to(&self, addr: SocketAddr) -> Result<TcpStream, ConnError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ConnError::ConnectTimeout {
                addr,
                timeout_ms: self.connect_timeout.as_millis() as u64,
            })?
            .map_err(|source| ConnError::Connect { addr, source })?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    fn request(n: u32) -> Request<Full<Bytes>> {
        Request::builder()
            .method("POST")
            .uri("/mcp")
            .header("host", "test")
            .body(Full::new(Bytes::from(format!("{{\"n\":{n}}}"))))
            .expect("request")
    }

    fn pool_for(addr: SocketAddr, connect_timeout: Duration) -> ConnPool {
        let uri: Uri = format!("http://{addr}/mcp").parse().expect("uri");
        ConnPool::new(&uri, connect_timeout).expect("pool")
    }

    async fn body_of(resp: Response<Incoming>) -> Bytes {
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
        for n in 0..5 {
            let resp = pool.send(request(n)).await.expect("send");
            assert_eq!(body_of(resp).await, "ok");
        }
        assert_eq!(pool.pooled(), 1);
        drop(pool);
        assert_eq!(server.await.expect("server"), 5);
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
        assert!(matches!(pool.target, Target::Name { .. }));
        let resp = pool.send(request(1)).await.expect("send");
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
        let get = Request::builder()
            .method("GET")
            .uri("/mcp")
            .header("host", "test")
            .body(Full::new(Bytes::new()))
            .expect("request");
        let stream = pool.send(get).await.expect("GET");
        assert_eq!(pool.pooled(), 0);
        let resp = pool.send(request(1)).await.expect("POST");
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
        // Every pooled connection is already too old at the next checkout.
        pool.idle_timeout = Duration::ZERO;
        for n in 0..2 {
            let resp = pool.send(request(n)).await.expect("send");
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
        let resp = pool.send(request(1)).await.expect("first");
        assert_eq!(body_of(resp).await, "ok");
        closed_rx.await.expect("server closed");
        pool.wait_until_closed().await;
        let resp = pool.send(request(2)).await.expect("second");
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
        let resp = pool.send(request(1)).await.expect("first");
        assert_eq!(body_of(resp).await, "ok");
        let err = pool.send(request(2)).await.expect_err("no answer");
        assert!(matches!(err, ConnError::Exchange(_)), "{err:?}");
        // A retry would have connected before `send` returned, so it would
        // wait in the accept queue now.
        let listener = server.await.expect("server");
        let pending =
            std::future::poll_fn(|cx| std::task::Poll::Ready(listener.poll_accept(cx).is_ready()))
                .await;
        assert!(!pending, "the request was sent again on a new connection");
    }

    #[tokio::test]
    async fn connect_timeout_and_refusal_are_errors() {
        // A listener whose backlog is full never completes a handshake on
        // some kernels; an unroutable address is the portable way to hang a
        // connect. TEST-NET-1 (192.0.2.0/24) is reserved and never routed.
        let blackhole: SocketAddr = "192.0.2.1:80".parse().expect("addr");
        let pool = pool_for(blackhole, Duration::from_millis(50));
        match pool.send(request(1)).await {
            Err(ConnError::ConnectTimeout { addr, timeout_ms }) => {
                assert_eq!((addr, timeout_ms), (blackhole, 50));
            }
            // No route at all (a sandbox without a default route).
            Err(ConnError::Connect { .. }) => {}
            other => panic!("expected a connect failure, got {other:?}"),
        }

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let pool = pool_for(addr, Duration::from_secs(5));
        let err = pool.send(request(1)).await.expect_err("refused");
        assert!(matches!(err, ConnError::Connect { .. }), "{err:?}");
    }
}
