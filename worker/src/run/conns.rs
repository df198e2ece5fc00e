//! Serving one connection: a handed-over client connection (plain, or TLS
//! terminated here) or one on the internal socket, with the endpoint as its
//! handler; counting open connections and refusing past the cap.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use mcpgw_protocol::control::ConnMeta;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::ctx::Ctx;
use crate::front::{
    self,
    common::{ClientAddr, Origin},
};
use crate::http::body::Body;
use crate::http::server::{self, Handler, Limits, ReqBody};

/// Serve a connection the supervisor handed over, on `tracker`.
pub(crate) fn serve_handed(
    ctx: &Arc<Ctx>,
    tracker: &TaskTracker,
    open: &Arc<AtomicU32>,
    stream: TcpStream,
    meta: ConnMeta,
    closing: watch::Receiver<bool>,
) {
    let guard = ConnGuard::new(open);
    let peer = stream.peer_addr().ok().map(|a| a.ip().to_canonical());
    let handler = Serving {
        ctx: ctx.clone(),
        origin: match meta {
            ConnMeta::Peer => Origin::Peer,
            ConnMeta::Plain | ConnMeta::Tls { .. } => Origin::Public {
                client: peer.map(ClientAddr),
                tls: matches!(meta, ConnMeta::Tls { .. }),
            },
        },
    };
    match meta {
        ConnMeta::Plain | ConnMeta::Peer => {
            // Boxed (here and below): a connection future is several KiB,
            // the endpoint's request future inside it, and spawning it by
            // value would copy it more than once.
            tracker.spawn(Box::pin(async move {
                if let Err(e) = server::serve(stream, &handler, closing).await {
                    debug!(error = %e, "connection ended with an error");
                }
                drop(guard);
            }));
        }
        ConnMeta::Tls { index } => {
            let Some(acceptor) = ctx.live().tls.get(usize::from(index)).cloned() else {
                warn!(
                    index,
                    "connection for a TLS listener that no longer exists; closing"
                );
                return;
            };
            let handshake_timeout = ctx.live().config.limits.header_timeout();
            tracker.spawn(Box::pin(async move {
                match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        if let Err(e) = server::serve(tls, &handler, closing).await {
                            debug!(error = %e, "TLS connection ended with an error");
                        }
                    }
                    Ok(Err(e)) => info!(error = %e, "TLS handshake failed"),
                    Err(_) => info!("TLS handshake timed out"),
                }
                drop(guard);
            }));
        }
    }
}

/// Serve a connection from another worker on the internal socket.
pub(crate) fn serve_internal(
    ctx: &Arc<Ctx>,
    tracker: &TaskTracker,
    stream: UnixStream,
    closing: watch::Receiver<bool>,
) {
    let handler = Serving {
        ctx: ctx.clone(),
        origin: Origin::Internal,
    };
    tracker.spawn(Box::pin(async move {
        if let Err(e) = server::serve(stream, &handler, closing).await {
            debug!(error = %e, "internal connection ended with an error");
        }
    }));
}

/// The endpoint as the HTTP server on a connection calls it.
struct Serving {
    ctx: Arc<Ctx>,
    /// Public (with the handed-over socket's peer address) or internal.
    origin: Origin,
}

impl Handler for Serving {
    fn limits(&self) -> Limits {
        let live = self.ctx.live();
        Limits {
            header_timeout: live.config.limits.header_timeout(),
            body_timeout: live.config.limits.body_timeout(),
            max_head: live.config.limits.max_head_bytes as usize,
            max_body: live.max_body,
        }
    }

    fn call(
        &self,
        req: http::Request<ReqBody>,
    ) -> impl std::future::Future<Output = http::Response<Body>> {
        front::handle(self.ctx.clone(), req, self.origin)
    }
}

/// Counts an open client connection for as long as it lives.
struct ConnGuard(Arc<AtomicU32>);

impl ConnGuard {
    fn new(open: &Arc<AtomicU32>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        Self(open.clone())
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Refusals past the connection cap come at the rate clients connect (an
/// attack is exactly when they flood): one log line a second at most, with
/// how many were refused since the last one.
#[derive(Default)]
pub(crate) struct Refusals {
    last: Option<std::time::Instant>,
    since: u64,
}

impl Refusals {
    pub(crate) fn note(&mut self, cap: u32) {
        self.since += 1;
        let now = std::time::Instant::now();
        if self
            .last
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            warn!(
                cap,
                refused = self.since,
                "connection cap reached (limits.max_connections_per_worker); answering 503"
            );
            self.last = Some(now);
            self.since = 0;
        }
    }
}

pub(crate) async fn refuse_over_cap(mut stream: TcpStream) {
    let _ = stream
        .write_all(b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        .await;
    let _ = stream.shutdown().await;
    // Read and drop what the client still sends for a moment: closing with
    // unread bytes would reset the connection, and the client would see the
    // reset instead of the 503.
    let mut sink = [0u8; 4096];
    let linger = async {
        let mut left = 64 * 1024usize;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), linger).await;
}
