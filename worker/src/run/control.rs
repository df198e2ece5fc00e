//! The worker's side of the control channel besides the serving loop:
//! the reader (store answers and route updates go straight to where they
//! are awaited), load reports, heartbeats, gathers for the admin listener,
//! and idle-session expiry.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use mcpgw_protocol::channel::{Receiver, Sender};
use mcpgw_protocol::control::{FromWorker, ToWorker};
use tokio::sync::mpsc;
use tracing::{error, info};

use crate::ctx::Ctx;

/// Read the control channel in a task; what the serving loop must see
/// comes out of the returned queue (`None`: the channel ended).
pub(crate) fn read(mut rx: Receiver<ToWorker>, ctx: Arc<Ctx>) -> mpsc::Receiver<Option<ToWorker>> {
    let (ctl_tx, ctl_rx) = mpsc::channel::<Option<ToWorker>>(4);
    tokio::spawn(async move {
        loop {
            let msg = match rx.recv().await {
                // Straight to the request waiting for it.
                Ok(Some(ToWorker::StoreRecord { id, answer })) => {
                    ctx.store.deliver_record(id, answer);
                    continue;
                }
                Ok(Some(ToWorker::Opened { id, refused })) => {
                    ctx.store.deliver_opened(id, refused);
                    continue;
                }
                Ok(Some(ToWorker::Routes(update))) => {
                    ctx.set_routes(&update);
                    continue;
                }
                Ok(m) => m,
                Err(e) => {
                    error!(error = %e, "control channel broke");
                    None
                }
            };
            let end = msg.is_none();
            if ctl_tx.send(msg).await.is_err() || end {
                return;
            }
        }
    });
    ctl_rx
}

/// Tell the supervisor how many connections are open when it changes, so it
/// can send new sessions to the least-loaded worker.
pub(crate) async fn report_load(
    tx: Arc<tokio::sync::Mutex<Sender<FromWorker>>>,
    open: Arc<AtomicU32>,
) {
    let mut last = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let now = open.load(Ordering::Relaxed);
        if now != last {
            if tx
                .lock()
                .await
                .send(&FromWorker::Load { connections: now })
                .await
                .is_err()
            {
                return;
            }
            last = now;
        }
    }
}

/// Metrics and status for the supervisor's admin listener.
pub(crate) fn gathered(ctx: &Ctx, connections: u32) -> mcpgw_protocol::control::Gathered {
    let sessions = ctx.sessions.all();
    mcpgw_protocol::control::Gathered {
        metrics: ctx.metrics.render(),
        sessions: sessions.len() as u32,
        connections,
        upstream_sessions: ctx
            .registry
            .snapshot(&sessions)
            .into_iter()
            .map(|(id, n, oldest)| (id.to_string(), n as u32, oldest.as_millis() as u64))
            .collect(),
    }
}

/// Tell the supervisor this worker is alive, with the sessions used since
/// the last beat (the store keeps their records).
pub(crate) async fn heartbeats(ctx: Arc<Ctx>, tx: Arc<tokio::sync::Mutex<Sender<FromWorker>>>) {
    loop {
        let period = Duration::from_millis(ctx.live().config.sessions.heartbeat_ms);
        tokio::time::sleep(period).await;
        let touched = ctx.sessions.used_within(period);
        if tx
            .lock()
            .await
            .send(&FromWorker::Heartbeat { touched })
            .await
            .is_err()
        {
            return;
        }
    }
}

/// End sessions that have been idle longer than the configured timeout.
pub(crate) async fn expire_sessions(ctx: Arc<Ctx>) {
    loop {
        // Read each time: a reload may change the timeout.
        let sessions = &ctx.live().config.sessions;
        let ttl = Duration::from_secs(sessions.idle_timeout_secs);
        // Parked MRTR calls are let go within half their wait past it.
        let input_wait = Duration::from_secs(sessions.input_wait_secs);
        let every = (ttl / 10).min(input_wait / 2);
        tokio::time::sleep(every.clamp(Duration::from_secs(1), Duration::from_secs(60))).await;
        ctx.parked.sweep();
        let expired = ctx.sessions.take_expired(ttl);
        if !expired.is_empty() {
            info!(count = expired.len(), "sessions expired after being idle");
            ctx.end_sessions(&expired).await;
        }
    }
}
