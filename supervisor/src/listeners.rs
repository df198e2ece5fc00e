//! The public listening sockets: binding them and the accept loops.
//!
//! An accept loop hands each connection to a dispatch task and stops when the
//! supervisor stops accepting; dropping the listener then closes the socket so
//! new connection attempts are refused instead of queueing. [`InFlight`]
//! counts dispatch tasks so a drain can wait for accepted connections to
//! reach a worker before the workers are told to stop.

use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mcpgw_protocol::control::ConnMeta;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{Notify, watch};
use tracing::{debug, warn};

use crate::dispatch::Dispatcher;

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("reading a listener's local address: {0}")]
    LocalAddr(std::io::Error),
    #[error("using a socket passed by systemd: {0}")]
    Adopt(std::io::Error),
}

const BACKLOG: u32 = 4096;

pub(crate) fn bind_all(addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, ListenError> {
    addrs
        .iter()
        .map(|&addr| bind(addr).map_err(|source| ListenError::Bind { addr, source }))
        .collect()
}

/// Listeners handed over by systemd socket activation.
pub(crate) fn adopt(fds: Vec<OwnedFd>) -> Result<Vec<TcpListener>, ListenError> {
    fds.into_iter()
        .map(|fd| {
            let std = std::net::TcpListener::from(fd);
            std.set_nonblocking(true)?;
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
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// A public listener as configured: what a reload compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListenerKey {
    Plain(SocketAddr),
    Tls { index: u16, addr: SocketAddr },
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
            Self::Plain(a) | Self::Tls { addr: a, .. } => a,
        }
    }

    pub(crate) fn meta(self) -> ConnMeta {
        match self {
            Self::Plain(_) => ConnMeta::Plain,
            Self::Tls { index, .. } => ConnMeta::Tls { index },
        }
    }

    pub(crate) fn scheme(self) -> &'static str {
        match self {
            Self::Plain(_) => "http",
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
        tracing::info!(%local, scheme = key.scheme(), "listening");
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "mcpgw listening {}://{local}", key.scheme());
        let _ = out.flush();
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
    loop {
        tokio::select! {
            // The only change ever sent is "stop".
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // Small SSE writes must not wait for Nagle; the option
                    // travels with the fd.
                    if let Err(e) = stream.set_nodelay(true) {
                        debug!(error = %e, "TCP_NODELAY");
                    }
                    let guard = in_flight.enter();
                    let d = dispatcher.clone();
                    tokio::spawn(async move {
                        d.dispatch(stream, meta).await;
                        drop(guard);
                    });
                }
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    debug!(?meta, "stopped accepting");
}
