//! Running a worker: the handshake with the supervisor, the serving loop
//! (handed-over connections, the internal socket, control messages) and
//! shutdown.
//!
//! - [`conns`]: serving one connection (plain or TLS), the connection cap.
//! - [`control`]: the control channel reader, load reports, heartbeats,
//!   gathers, idle-session expiry.
//! - [`reload`]: applying a new configuration.

mod conns;
mod control;
mod reload;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use mcpgw_mcp::headers::text::{MCP_PROTOCOL_VERSION, MCP_SESSION_ID};
use mcpgw_protocol::channel::{self, ChannelError};
use mcpgw_protocol::config::Config;
use mcpgw_protocol::control::{AfterStop, FromWorker, PROTOCOL_VERSION, ToWorker};
use mcpgw_protocol::fdpass::{self, ConnReceiver};
use tokio::net::{TcpStream, UnixListener};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::ctx::build_ctx;
use crate::error::WorkerError;
use crate::forward;
use crate::session::store::StoreClient;

/// Who this worker is, from its command line.
#[derive(Debug, Clone, Copy)]
pub struct Args {
    pub slot: u16,
    pub generation: u64,
}

pub(crate) async fn serve(
    args: Args,
    control: std::os::fd::OwnedFd,
    conns: std::os::fd::OwnedFd,
) -> Result<(), WorkerError> {
    let control = std::os::unix::net::UnixStream::from(control);
    control.set_nonblocking(true).map_err(ChannelError::Io)?;
    let control = tokio::net::UnixStream::from_std(control).map_err(ChannelError::Io)?;
    let (tx, mut rx) = channel::split::<FromWorker, ToWorker>(control);
    // Shared: the load reporter, heartbeats, store writes and answers.
    let tx = Arc::new(tokio::sync::Mutex::new(tx));
    let Some(init) = rx.recv().await? else {
        return Err(WorkerError::NoInit);
    };
    let ToWorker::Init {
        protocol,
        id,
        slots,
        runtime_dir,
        config,
    } = init
    else {
        return Err(WorkerError::Handshake("first message was not Init".into()));
    };
    if protocol != PROTOCOL_VERSION || id.slot != args.slot || id.generation != args.generation {
        return Err(WorkerError::Handshake(format!(
            "Init for {id} protocol {protocol}, but this is {}/{} protocol {PROTOCOL_VERSION}",
            args.slot, args.generation
        )));
    }

    // Every request of a session carries these; `http` does not know them.
    crate::http::wire::intern_header_names(&[MCP_SESSION_ID, MCP_PROTOCOL_VERSION]);
    let (stop_tx, stopping) = watch::channel(false);
    let config: Arc<Config> = Arc::from(config);
    let store = Arc::new(StoreClient::new(tx.clone()));
    let ctx = Arc::new(build_ctx(
        id,
        slots,
        config.clone(),
        runtime_dir.clone(),
        stopping,
        store,
    )?);

    let path = forward::socket_path(&runtime_dir, id.slot);
    let _ = std::fs::remove_file(&path);
    let internal = UnixListener::bind(&path).map_err(|cause| WorkerError::Internal {
        path: path.clone(),
        cause,
    })?;
    let receiver = ConnReceiver::new(conns).map_err(|e| WorkerError::Handshake(e.to_string()))?;

    let pid = std::process::id();
    tx.lock()
        .await
        .send(&FromWorker::Ready {
            protocol: PROTOCOL_VERSION,
            id,
            pid,
        })
        .await?;
    info!(worker = %id, pid, "serving");

    let open = Arc::new(AtomicU32::new(0));
    tokio::spawn(control::report_load(tx.clone(), open.clone()));
    tokio::spawn(control::heartbeats(ctx.clone(), tx.clone()));
    tokio::spawn(control::expire_sessions(ctx.clone()));

    // Control messages arrive through a task so a half-read frame is never
    // dropped by the select below.
    let mut ctl_rx = control::read(rx, ctx.clone());

    // Connections watch `closing` (idle ones close when it turns true) and
    // run on `tracker`, which the shutdown waits on.
    let (closing_tx, closing) = watch::channel(false);
    let tracker = TaskTracker::new();
    let mut cap = config.limits.max_connections_per_worker;
    let mut refusals = conns::Refusals::default();

    // Stopping without being told how (the supervisor is gone): sessions
    // recorded in Redis stay for the next run, others end here.
    let alone = if config.store.redis_url.is_some() {
        AfterStop::Keep
    } else {
        AfterStop::Close
    };
    let (grace, after) = loop {
        tokio::select! {
            conn = receiver.recv() => match conn {
                Ok(Some((meta, fd))) => {
                    // Already non-blocking: the supervisor accepts that way
                    // and the flag travels with the fd (see `fdpass`), so no
                    // ioctl per connection.
                    debug_assert!(
                        fdpass::is_nonblocking(&fd).unwrap_or(false),
                        "the supervisor passed a blocking socket"
                    );
                    let stream = match TcpStream::from_std(std::net::TcpStream::from(fd)) {
                        Ok(stream) => stream,
                        Err(e) => {
                            warn!(error = %e, "handed-over connection unusable");
                            continue;
                        }
                    };
                    if open.load(Ordering::Relaxed) >= cap {
                        refusals.note(cap);
                        tokio::spawn(conns::refuse_over_cap(stream));
                        continue;
                    }
                    conns::serve_handed(&ctx, &tracker, &open, stream, meta, closing.clone());
                }
                Ok(None) => {
                    warn!("the supervisor closed the connection channel; stopping");
                    break (1_000, alone);
                }
                Err(e) => warn!(error = %e, "receiving a connection failed"),
            },
            accepted = internal.accept() => match accepted {
                Ok((stream, _)) => conns::serve_internal(&ctx, &tracker, stream, closing.clone()),
                Err(e) => {
                    warn!(error = %e, "internal accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            msg = ctl_rx.recv() => match msg.flatten() {
                Some(ToWorker::Shutdown { grace_ms, sessions }) => {
                    info!(grace_ms, ?sessions, "shutdown requested");
                    break (grace_ms, sessions);
                }
                Some(ToWorker::Init { .. }) => warn!("ignoring a second Init"),
                // Normally delivered by the reader task already.
                Some(ToWorker::StoreRecord { id, answer }) => ctx.store.deliver_record(id, answer),
                Some(ToWorker::Opened { id, refused }) => ctx.store.deliver_opened(id, refused),
                Some(ToWorker::Routes(update)) => ctx.set_routes(&update),
                Some(ToWorker::Reload { id, config }) => {
                    // The connection cap applies at once (HTTP limits are read
                    // per request); the rest (upstreams, endpoints, sessions)
                    // in a task, so closing changed upstream sessions never
                    // stalls accepting.
                    cap = config.limits.max_connections_per_worker;
                    let (ctx, tx) = (ctx.clone(), tx.clone());
                    tokio::spawn(async move {
                        let error = reload::reload(&ctx, *config).await.err().map(|e| e.to_string());
                        if let Some(e) = &error {
                            error!(error = %e, "reload failed; the previous configuration stays");
                        }
                        if let Err(e) = tx.lock().await.send(&FromWorker::Reloaded { id, error }).await {
                            warn!(error = %e, "acknowledging a reload failed");
                        }
                    });
                }
                Some(ToWorker::Gather { id }) => {
                    let data = Box::new(control::gathered(&ctx, open.load(Ordering::Relaxed)));
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        if let Err(e) = tx.lock().await.send(&FromWorker::Gathered { id, data }).await {
                            warn!(error = %e, "answering a gather failed");
                        }
                    });
                }
                None => {
                    warn!("the supervisor is gone; stopping");
                    break (1_000, alone);
                }
            },
        }
    };

    // Stop taking work, end open streams, let in-flight requests finish.
    drop(receiver);
    drop(internal);
    let _ = std::fs::remove_file(&path);
    let _ = stop_tx.send(true);
    if after == AfterStop::HandOver {
        // The sessions live on elsewhere: let open connections end by
        // themselves (every answer now says `Connection: close`; idle ones
        // time out), so no client has its connection closed under a request.
        let wait = Duration::from_millis(grace).min(config.limits.header_timeout());
        let deadline = tokio::time::Instant::now() + wait;
        while open.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let _ = closing_tx.send(true);
    tracker.close();
    if tokio::time::timeout(Duration::from_millis(grace), tracker.wait())
        .await
        .is_err()
    {
        warn!(
            open = open.load(Ordering::Relaxed),
            "grace period over; cutting the connections left"
        );
    }
    // Upstream sessions opened ahead for stateless clients belong to no
    // session: nothing resumes them, so they are closed whatever happens to
    // the sessions.
    ctx.registry.close_warm().await;
    // The spans of the requests just finished go out before the process ends.
    ctx.otel.shutdown().await;
    if after != AfterStop::Close {
        // The records stay in the store and the upstream sessions open:
        // another worker (or the gateway's next run) resumes these sessions.
        info!(
            sessions = ctx.sessions.all().len(),
            "sessions kept in the store for the next start"
        );
        info!("worker stopped");
        return Ok(());
    }
    let all = ctx.sessions.take_all();
    if !all.is_empty() {
        info!(sessions = all.len(), "closing upstream sessions");
        ctx.registry.close_sessions(&all).await;
    }
    info!("worker stopped");
    Ok(())
}
