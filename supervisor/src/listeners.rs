//! The public listening sockets: binding them and the accept loops.
//!
//! Options that accepted sockets need are set once on the listener:
//! `TCP_NODELAY` is inherited by every accepted socket (Linux), and
//! `TCP_DEFER_ACCEPT` makes `accept` return a connection once its first
//! bytes (the request head, or a TLS ClientHello) arrived, so the head can
//! usually be peeked at once.
//!
//! An accept loop accepts with a raw non-blocking fd and first tries to hand
//! it over inline ([`Dispatcher::hand_over_now`]); a connection that must
//! wait for anything goes to a dispatch task instead, and one that must
//! wait for its head only while fewer than `limits.max_pending_connections`
//! do (else it gets 503 at once). A loop stops when the
//! supervisor stops accepting; dropping the listener then closes the socket
//! so new connection attempts are refused instead of queueing. [`InFlight`]
//! counts dispatch tasks so a drain can wait for accepted connections to
//! reach a worker before the workers are told to stop (inline hand-overs
//! finish before the loop looks at its stop switch again).

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mcpgw_protocol::control::ConnMeta;
use mcpgw_protocol::fdpass;
use nix::sys::socket::{setsockopt, sockopt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, watch};
use tracing::{debug, warn};

use crate::dispatch::{Dispatcher, Now};

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen on {addr}: {cause}")]
    Bind {
        addr: SocketAddr,
        cause: std::io::Error,
    },
    #[error("reading a listener's local address: {0}")]
    LocalAddr(std::io::Error),
    #[error("using a socket passed by systemd: {0}")]
    Adopt(std::io::Error),
}

const BACKLOG: u32 = 4096;

/// `TCP_DEFER_ACCEPT` for sockets mcpgw binds. A client that connects and
/// sends nothing is accepted after about this long anyway, and only then
/// does `limits.header_timeout_ms` start; clients that speak first (HTTP,
/// TLS) are not delayed at all.
const DEFER_ACCEPT_SECS: u32 = 1;

/// Connections accepted inline per wake-up before other tasks get a turn.
const ACCEPT_BATCH: usize = 64;

pub(crate) fn bind_all(addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, ListenError> {
    addrs
        .iter()
        .map(|&addr| bind(addr).map_err(|cause| ListenError::Bind { addr, cause }))
        .collect()
}

/// Listeners handed over by systemd socket activation. `TCP_NODELAY` is
/// set here whatever the unit says, because accepted sockets get it only
/// from their listener; `TCP_DEFER_ACCEPT` is the unit's (`DeferAcceptSec=`).
pub(crate) fn adopt(fds: Vec<OwnedFd>) -> Result<Vec<TcpListener>, ListenError> {
    fds.into_iter()
        .map(|fd| {
            let std = std::net::TcpListener::from(fd);
            std.set_nonblocking(true)?;
            setsockopt(&std, sockopt::TcpNoDelay, &true)?;
            TcpListener::from_std(std)
        })
        .collect::<std::io::Result<_>>()
        .map_err(ListenError::Adopt)
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    // Small SSE writes must not wait for Nagle; every accepted socket
    // inherits this, so no setsockopt per connection.
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(BACKLOG)?;
    fdpass::set_defer_accept(&listener, DEFER_ACCEPT_SECS)?;
    Ok(listener)
}

/// A public listener as configured: what a reload compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListenerKey {
    Plain(SocketAddr),
    Tls {
        index: u16,
        addr: SocketAddr,
    },
    /// `[cluster] listen`: requests other gateway hosts forward here,
    /// routed like a plain listener's. Not in [`ListenerKey::all`]: it is
    /// bound once at start.
    Cluster(SocketAddr),
}

impl ListenerKey {
    /// Every public listener of `config`: `listen`, then `tls_listener`.
    pub(crate) fn all(config: &mcpgw_protocol::config::Config) -> Vec<Self> {
        let plain = config.listen.iter().map(|a| Self::Plain(*a));
        let tls = config
            .tls_listener
            .iter()
            .enumerate()
            .map(|(i, t)| Self::Tls {
                index: i as u16,
                addr: t.addr,
            });
        plain.chain(tls).collect()
    }

    pub(crate) fn addr(self) -> SocketAddr {
        match self {
            Self::Plain(a) | Self::Tls { addr: a, .. } | Self::Cluster(a) => a,
        }
    }

    pub(crate) fn meta(self) -> ConnMeta {
        match self {
            Self::Plain(_) => ConnMeta::Plain,
            Self::Tls { index, .. } => ConnMeta::Tls { index },
            Self::Cluster(_) => ConnMeta::Peer,
        }
    }

    pub(crate) fn scheme(self) -> &'static str {
        match self {
            Self::Plain(_) | Self::Cluster(_) => "http",
            Self::Tls { .. } => "https",
        }
    }
}

/// Dispatch tasks still running.
#[derive(Default)]
pub(crate) struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl InFlight {
    fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(self.clone())
    }

    /// Wait until no dispatch task runs, or `bound` passes.
    pub(crate) async fn wait_idle(&self, bound: Duration) {
        let _ = tokio::time::timeout(bound, async {
            loop {
                let notified = self.idle.notified();
                if self.count.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        })
        .await;
    }
}

/// Announce `listener` on stdout and start accepting on it; returns the
/// switch that stops it.
pub(crate) fn serve_listener(
    key: ListenerKey,
    listener: TcpListener,
    dispatcher: Arc<Dispatcher>,
    in_flight: Arc<InFlight>,
) -> (ListenerKey, watch::Sender<bool>) {
    if let Ok(local) = listener.local_addr() {
        if let ListenerKey::Cluster(_) = key {
            tracing::info!(%local, "cluster listener: forwarded requests from other hosts");
            crate::announce::cluster(local);
        } else {
            tracing::info!(%local, scheme = key.scheme(), "listening");
            crate::announce::listening(key.scheme(), local);
        }
    }
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(accept_loop(
        listener,
        key.meta(),
        dispatcher,
        in_flight,
        stop_rx,
    ));
    (key, stop)
}

async fn accept_loop(
    listener: TcpListener,
    meta: ConnMeta,
    dispatcher: Arc<Dispatcher>,
    in_flight: Arc<InFlight>,
    mut stop: watch::Receiver<bool>,
) {
    // Accepted with a raw fd instead of through tokio's listener, so that a
    // connection handed over inline is never registered with epoll.
    let listener = match listener.into_std().and_then(fdpass::watch_listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(?meta, error = %e, "cannot watch a listener; it is closed");
            return;
        }
    };
    loop {
        let mut ready = tokio::select! {
            // Stop first: once a drain has sent it, no further connection
            // is accepted and handed to a worker that is being stopped.
            biased;
            // The only change ever sent is "stop".
            _ = stop.changed() => break,
            ready = listener.readable() => match ready {
                Ok(ready) => ready,
                Err(e) => {
                    warn!(?meta, error = %e, "waiting for connections failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let mut batch = Batch::Full;
        for _ in 0..ACCEPT_BATCH {
            match ready.try_io(|l| fdpass::accept_nonblocking(l.get_ref())) {
                Ok(Ok(conn)) => accepted(conn, meta, &dispatcher, &in_flight),
                Ok(Err(e)) if is_resource_error(&e) => {
                    warn!(error = %e, "accept failed");
                    batch = Batch::Failed;
                    break;
                }
                Ok(Err(e)) => debug!(error = %e, "accept failed"),
                // The queue is empty; readiness is cleared.
                Err(_would_block) => {
                    batch = Batch::Drained;
                    break;
                }
            }
        }
        drop(ready);
        match batch {
            // Wait for readiness again.
            Batch::Drained => {}
            // More may be queued: let other tasks run first.
            Batch::Full => tokio::task::yield_now().await,
            // EMFILE/ENFILE/ENOBUFS/ENOMEM: back off instead of spinning.
            Batch::Failed => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    debug!(?meta, "stopped accepting");
}

/// How one batch of accepts ended.
enum Batch {
    Drained,
    Full,
    Failed,
}

/// An accept error that retrying at once would only repeat (out of fds or
/// memory), as opposed to one about a single connection (reset before
/// accept, interrupted).
fn is_resource_error(e: &std::io::Error) -> bool {
    !matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::Interrupted
    )
}

/// One accepted connection: handed over inline if it can be, else to a
/// dispatch task counted in `in_flight` (refused at once if it would wait
/// for its head past the pending cap). Either way the fd is passed or
/// closed exactly once (`OwnedFd`).
fn accepted(
    conn: OwnedFd,
    meta: ConnMeta,
    dispatcher: &Arc<Dispatcher>,
    in_flight: &Arc<InFlight>,
) {
    let pending = match dispatcher.hand_over_now(conn.as_fd(), meta) {
        // Passed: our copy closes here.
        Now::HandedOver => return,
        Now::NeedsWorker => None,
        Now::NeedsHead => match dispatcher.admit_pending() {
            Some(place) => Some(place),
            None => return dispatcher.refuse_pending_full(conn),
        },
    };
    let stream = match TcpStream::from_std(std::net::TcpStream::from(conn)) {
        Ok(stream) => stream,
        Err(e) => {
            warn!(error = %e, "cannot register an accepted connection; closing it");
            return;
        }
    };
    let guard = in_flight.enter();
    let d = dispatcher.clone();
    tokio::spawn(async move {
        d.dispatch(stream, meta, pending).await;
        drop(guard);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::getsockopt;
    use std::io::Write as _;

    /// Accept loops set no option per connection: this is why they need not.
    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay_from_the_listener() {
        let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let listener = bind(addr).expect("bind");
        assert!(getsockopt(&listener, sockopt::TcpNoDelay).expect("listener nodelay"));
        let mut client =
            std::net::TcpStream::connect(listener.local_addr().expect("local")).expect("connect");
        // Deferred accept: the connection is accepted once bytes arrive.
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").expect("write");
        let (accepted, _) = listener.accept().await.expect("accept");
        assert!(getsockopt(&accepted, sockopt::TcpNoDelay).expect("accepted nodelay"));
    }
}
