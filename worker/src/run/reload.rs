//! Applying a new configuration in a running worker.

use std::sync::Arc;

use mcpgw_protocol::config::Config;
use tracing::info;

use crate::ctx::{Ctx, Live};
use crate::error::WorkerError;

/// Apply a new configuration: swap what requests read, move every session
/// to its endpoint's new definition, and close upstream sessions whose
/// server changed or went away. A session whose endpoint is gone ends.
pub(crate) async fn reload(ctx: &Arc<Ctx>, config: Config) -> Result<(), WorkerError> {
    let previous = ctx.live();
    let slots = config.worker_count();
    ctx.change_routes(|r| r.set_slots(slots));
    // A resize moves sessions between workers.
    ctx.store.forget_absent();
    ctx.access_log
        .store(config.log.access, std::sync::atomic::Ordering::Relaxed);
    ctx.otel.apply(&config.tracing).await;
    let (live, gone) = Live::build(ctx.id, Arc::new(config), Some(&previous))?;
    let live = Arc::new(live);
    ctx.set_live(live.clone());
    let mut ended = Vec::new();
    for session in ctx.sessions.all() {
        let path = session.endpoint().path.clone();
        match live.endpoints.get(&path) {
            Some(endpoint) => {
                let old = session.endpoint();
                let mut close: Vec<Arc<str>> = gone.clone();
                close.extend(
                    old.upstreams
                        .iter()
                        .filter(|u| !endpoint.upstreams.iter().any(|n| n.id == u.id))
                        .map(|u| u.id.clone()),
                );
                session.set_endpoint(endpoint.clone());
                if !close.is_empty() {
                    ctx.registry.close_upstreams(&session, &close).await;
                }
            }
            None => {
                if let Some(s) = ctx.sessions.remove(&session.id) {
                    ended.push(s);
                }
            }
        }
    }
    if !ended.is_empty() {
        info!(
            sessions = ended.len(),
            "endpoint removed by reload; its sessions end"
        );
        ctx.end_sessions(&ended).await;
    }
    info!(changed_or_removed = ?gone, "configuration reloaded");
    Ok(())
}
