//! Forwarding a request to the worker, or the gateway host, that owns its
//! session.
//!
//! Used when a connection reaches a worker that does not own the session of
//! one of its requests (a keep-alive connection carrying several sessions,
//! TLS connections balanced by load). The request goes over the owner's
//! internal Unix socket as HTTP/1.1, body and answer streamed, marked with
//! `x-mcpgw-forwarded` so the owner never forwards it again (one hop at most).
//! While the owner restarts, connecting is retried for the dispatch wait,
//! then the client gets 503 with `Retry-After`.
//!
//! A session another gateway host owns (`[cluster]`) is forwarded the same
//! way, with the same headers ([`Forwarder::prepare`]: one contract for
//! both hops), over TCP to that host's cluster listener, and signed
//! ([`crate::cluster::sign`]). That host's supervisor routes it to the
//! owning worker, which never forwards it to a third host. A host that
//! cannot be reached is the caller's to handle ([`Forwarder::connect_host`]
//! gives the request back untouched); one that answers 421 (it does not own
//! the session any more) becomes a 503 with `Retry-After` for the client.
//!
//! Connections are kept for the next request ([`Idle`]), per owner worker
//! and per host: opening one costs a connect, a handshake and, on the
//! other side, an accept and a hand-off through its supervisor. A
//! connection goes back once its answer has been read to the end, and is
//! used again only while it is idle for less than [`IDLE_FOR`] (well within
//! the other side's header timeout, which closes idle connections). A
//! request the kept connection could not take (closed meanwhile) goes on a
//! new one; one it took and lost is the caller's 503, as before.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use mcpgw_protocol::headers::{CLIENT_ADDR, FORWARDED, INTERNAL_PREFIX};
use tokio::net::UnixStream;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::cluster::Peer;
use crate::http::body::{self, Body};
use crate::http::server::ReqBody;

/// Longest wait for a TCP connection to another gateway host.
const HOST_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A connection to another host's cluster listener, ready for one request.
pub(crate) type HostConn = hyper::client::conn::http1::SendRequest<ReqBody>;

/// The longest a kept connection stays idle before it is no longer used.
const IDLE_FOR: Duration = Duration::from_secs(2);
/// Idle connections kept per destination.
const IDLE_PER_DESTINATION: usize = 32;

/// Where a kept connection goes.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Destination {
    /// The worker in this slot (its internal socket).
    Worker(u16),
    /// Another gateway host's cluster listener, by address.
    Host(Arc<str>),
}

/// Idle connections, ready for another request.
#[derive(Default)]
struct Idle {
    kept: Mutex<HashMap<Destination, Vec<(HostConn, Instant)>>>,
}

impl Idle {
    fn kept(&self) -> std::sync::MutexGuard<'_, HashMap<Destination, Vec<(HostConn, Instant)>>> {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used idle connection to `to` that is still open.
    fn take(&self, to: &Destination) -> Option<HostConn> {
        let mut kept = self.kept();
        let conns = kept.get_mut(to)?;
        let fresh_since = Instant::now().checked_sub(IDLE_FOR);
        while let Some((conn, since)) = conns.pop() {
            if conn.is_ready() && fresh_since.is_none_or(|f| since > f) {
                return Some(conn);
            }
        }
        None
    }

    /// Keep `conn` once the answer on it has been read to the end (it is
    /// dropped, and so closed, if it fails meanwhile or there is no room).
    fn give_back(self: &Arc<Self>, to: Destination, mut conn: HostConn) {
        let idle = self.clone();
        tokio::spawn(async move {
            if conn.ready().await.is_err() {
                return;
            }
            let mut kept = idle.kept();
            let conns = kept.entry(to).or_default();
            if conns.len() < IDLE_PER_DESTINATION {
                conns.push((conn, Instant::now()));
            }
        });
    }
}

/// Sends `req` on `conn` (kept or new); a request it never took (closed
/// meanwhile) goes on one `reconnect` opens. The connection that carried it
/// is kept again after the answer.
async fn send_on<F, Fut>(
    idle: &Arc<Idle>,
    to: Destination,
    mut conn: HostConn,
    req: Request<ReqBody>,
    reconnect: F,
) -> Result<hyper::Response<hyper::body::Incoming>, SendError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Option<HostConn>>,
{
    let unsent = match conn.try_send_request(req).await {
        Ok(resp) => {
            idle.give_back(to, conn);
            return Ok(resp);
        }
        Err(mut e) => match e.take_message() {
            Some(unsent) => unsent,
            None => return Err(SendError::Lost(e.into_error())),
        },
    };
    let Some(mut conn) = reconnect().await else {
        return Err(SendError::NoConnection);
    };
    let resp = conn.send_request(unsent).await.map_err(SendError::Lost)?;
    idle.give_back(to, conn);
    Ok(resp)
}

/// Why a forwarded request has no answer.
enum SendError {
    /// No connection could be opened (the reason is logged).
    NoConnection,
    /// The request was sent, and the exchange failed.
    Lost(hyper::Error),
}

/// How a request forwarded to another host ended, for
/// `mcpgw_cluster_forwarded_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HostOutcome {
    /// The host answered (whatever the status, but 421).
    Answered,
    /// The host does not own the session (any more): 421.
    Misdirected,
    /// The request was sent and the exchange failed.
    Failed,
}

pub(crate) struct Forwarder {
    runtime_dir: PathBuf,
    my_slot: HeaderValue,
    wait: Duration,
    idle: Arc<Idle>,
}

/// The internal socket of the worker in `slot`.
pub(crate) fn socket_path(runtime_dir: &Path, slot: u16) -> PathBuf {
    runtime_dir.join(format!("w{slot}.sock"))
}

impl Forwarder {
    pub(crate) fn new(runtime_dir: PathBuf, my_slot: u16, wait: Duration) -> Self {
        Self {
            runtime_dir,
            my_slot: HeaderValue::from(my_slot),
            wait,
            idle: Arc::default(),
        }
    }

    /// `principal`: who the token of the request names (with `[auth]`);
    /// the owner binds the session to it, and the token itself stays here.
    /// `client`: the client's address, for the owner's rate limits.
    pub(crate) async fn forward(
        &self,
        owner: u16,
        req: Request<ReqBody>,
        principal: Option<&crate::auth::Principal>,
        client: Option<std::net::IpAddr>,
    ) -> Response<Body> {
        if let ReqBody::TooLarge { limit } = req.body() {
            return too_large(*limit);
        }
        let (mut parts, body) = req.into_parts();
        self.prepare(&mut parts, principal, client);
        let req = Request::from_parts(parts, body);
        let to = Destination::Worker(owner);
        let conn = match self.idle.take(&to) {
            Some(kept) => kept,
            None => match self.connect_worker(owner).await {
                Some(new) => new,
                None => return unavailable(),
            },
        };
        match send_on(&self.idle, to, conn, req, || self.connect_worker(owner)).await {
            Ok(resp) => resp.map(|b| b.map_err(Into::into).boxed()),
            Err(SendError::NoConnection) => unavailable(),
            Err(SendError::Lost(e)) => {
                warn!(owner, error = %e, "forwarded request failed");
                unavailable()
            }
        }
    }

    /// A new connection to the worker in `owner`'s internal socket, retried
    /// for the dispatch wait while it restarts; `None` (logged) after that.
    async fn connect_worker(&self, owner: u16) -> Option<HostConn> {
        let path = socket_path(&self.runtime_dir, owner);
        let deadline = Instant::now() + self.wait;
        let stream = loop {
            match UnixStream::connect(&path).await {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    debug!(owner, error = %e, "owner not reachable yet; retrying");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => {
                    warn!(owner, error = %e, "owner worker unreachable; answering 503");
                    return None;
                }
            }
        };
        match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
            Ok((sender, conn)) => {
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        debug!(error = %e, "forward connection ended with an error");
                    }
                });
                Some(sender)
            }
            Err(e) => {
                warn!(owner, error = %e, "handshake with owner failed");
                None
            }
        }
    }

    /// The forwarding contract, the same for both hops: no gateway-internal
    /// header of the client's survives; the request is marked forwarded and
    /// carries the client's address and the established principal in place
    /// of the token.
    fn prepare(
        &self,
        parts: &mut http::request::Parts,
        principal: Option<&crate::auth::Principal>,
        client: Option<std::net::IpAddr>,
    ) {
        // (No `Connection` header to drop: the server keeps hop-by-hop
        // headers out of the map, see `wire::header_lines`.)
        let internal: Vec<_> = parts
            .headers
            .keys()
            .filter(|k| k.as_str().starts_with(INTERNAL_PREFIX))
            .cloned()
            .collect();
        for k in internal {
            parts.headers.remove(k);
        }
        parts.headers.insert(FORWARDED, self.my_slot.clone());
        if let Some(ip) = client
            && let Ok(v) = HeaderValue::from_str(&ip.to_string())
        {
            parts.headers.insert(CLIENT_ADDR, v);
        }
        if let Some(p) = principal {
            // Checked here; the owner takes the principal, not the token.
            parts.headers.remove(http::header::AUTHORIZATION);
            if let Some(v) = p.header_value() {
                parts.headers.insert(crate::auth::PRINCIPAL_HEADER, v);
            }
        }
    }

    /// A connection to `peer`'s cluster listener: a kept one, else a new
    /// one; `None` (logged) if it cannot be had within
    /// [`HOST_CONNECT_TIMEOUT`].
    pub(crate) async fn connect_host(&self, peer: &Peer) -> Option<HostConn> {
        match self.idle.take(&Destination::Host(peer.addr.clone())) {
            Some(kept) => Some(kept),
            None => self.open_host(peer).await,
        }
    }

    /// A new connection to `peer`'s cluster listener.
    async fn open_host(&self, peer: &Peer) -> Option<HostConn> {
        let stream = match tokio::time::timeout(
            HOST_CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect(&*peer.addr),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                info!(peer = %peer.host, addr = %peer.addr, error = %e, "gateway host unreachable");
                return None;
            }
            Err(_) => {
                info!(peer = %peer.host, addr = %peer.addr, "gateway host did not accept in time");
                return None;
            }
        };
        // Small SSE writes must not wait for Nagle on this hop either.
        let _ = stream.set_nodelay(true);
        match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
            Ok((sender, conn)) => {
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        debug!(error = %e, "connection to a gateway host ended with an error");
                    }
                });
                Some(sender)
            }
            Err(e) => {
                info!(peer = %peer.host, error = %e, "handshake with a gateway host failed");
                None
            }
        }
    }

    /// Send `req` over `conn` to another gateway host, signed with `key`,
    /// and relay the answer (streamed).
    pub(crate) async fn forward_to_host(
        &self,
        conn: HostConn,
        peer: &Peer,
        req: Request<ReqBody>,
        principal: Option<&crate::auth::Principal>,
        client: Option<std::net::IpAddr>,
        key: &mcpgw_protocol::cluster::ClusterKey,
    ) -> (Response<Body>, HostOutcome) {
        let (mut parts, body) = req.into_parts();
        let bytes = match &body {
            ReqBody::Whole(b) => b.as_deref().unwrap_or_default(),
            ReqBody::TooLarge { limit } => return (too_large(*limit), HostOutcome::Answered),
        };
        self.prepare(&mut parts, principal, client);
        if let Err(e) = crate::cluster::sign(key, &mut parts, bytes) {
            warn!(error = %e, "cannot sign a forwarded request (no randomness)");
            return (unavailable(), HostOutcome::Failed);
        }
        let req = Request::from_parts(parts, body);
        let to = Destination::Host(peer.addr.clone());
        let sent = send_on(&self.idle, to, conn, req, || self.open_host(peer)).await;
        match sent {
            Ok(resp) if resp.status() == StatusCode::MISDIRECTED_REQUEST => {
                info!(peer = %peer.host, "gateway host no longer owns the session; the client retries");
                (unavailable(), HostOutcome::Misdirected)
            }
            Ok(resp) => (
                resp.map(|b| b.map_err(Into::into).boxed()),
                HostOutcome::Answered,
            ),
            Err(SendError::NoConnection) => (unavailable(), HostOutcome::Failed),
            Err(SendError::Lost(e)) => {
                warn!(peer = %peer.host, error = %e, "request forwarded to a gateway host failed");
                (unavailable(), HostOutcome::Failed)
            }
        }
    }
}

/// The owner would refuse it too; its body was never read.
fn too_large(limit: usize) -> Response<Body> {
    info!(limit, "request body too large (not forwarded)");
    let mut r = Response::new(body::full(format!("request body exceeds {limit} bytes\n")));
    *r.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
    r
}

fn unavailable() -> Response<Body> {
    let mut r = Response::new(body::full(
        &b"the worker that owns this session is unavailable; retry\n"[..],
    ));
    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    r.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
