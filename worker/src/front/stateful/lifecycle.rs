//! A session's life outside its calls: the GET stream of server messages,
//! resuming a session inherited from another worker, DELETE.

use crate::front::common::plain;
use crate::route::reply::{Accept, rpc_error};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};
use mcpgw_protocol::session_id::SessionId;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::ctx::Ctx;
use crate::http::body::{self, Body};
use crate::jsonrpc;
use crate::relay;
use crate::session::Session;
use crate::session::store::Lookup;
use crate::upstream::UpstreamSession;
use crate::versions;
use mcpgw_protocol::store::{Fetched, StoreWrite};

/// The session's server stream: open until the session ends or the worker
/// stops, with keep-alive comments so proxies do not time it out.
pub(crate) fn get(ctx: &Arc<Ctx>, session: Option<Arc<Session>>, accept: Accept) -> Response<Body> {
    let Some(session) = session else {
        return plain(
            StatusCode::BAD_REQUEST,
            "GET needs an Mcp-Session-Id header\n",
        );
    };
    if !accept.sse {
        return plain(
            StatusCode::NOT_ACCEPTABLE,
            "GET needs Accept: text/event-stream\n",
        );
    }
    let (tx, rx) = mpsc::channel::<Bytes>(relay::STREAM_QUEUE);
    let (generation, mut alive) = session.relay.open_stream(tx.clone());
    // Server-initiated messages of existing upstream sessions reach the
    // client from now on; later ones start listening when created.
    for us in session.upstreams.live() {
        relay::listen(&session.relay, &us);
    }
    let mut closed = session.close_signal();
    let mut stopping = ctx.stopping.clone();
    let relay = session.relay.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(15));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = relay::became_true(&mut closed) => break,
                _ = relay::became_true(&mut stopping) => break,
                // A newer GET replaced this stream.
                _ = alive.changed() => break,
                _ = tx.closed() => break,
                _ = tick.tick() => {
                    if tx.send(Bytes::from_static(b": keep-alive\n\n")).await.is_err() {
                        break;
                    }
                }
            }
        }
        relay.stream_gone(generation);
    });
    let mut r = Response::new(body::channel(rx));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// What the store knew of a session this worker does not hold.
pub(crate) enum Resumed {
    /// Inherited: rebuilt here.
    Session(Arc<Session>),
    /// A live worker of another gateway host owns it (`[cluster]`).
    Elsewhere(Arc<crate::cluster::Peer>),
    /// Unknown, ended, or not this worker's to take.
    Unknown,
}

/// Rebuild a session this worker inherited (its owner died and the store
/// moved it here) from its record, re-attaching every upstream session by
/// its stored id: no new `initialize`, so upstream state carries on; or
/// say which other host owns it.
pub(crate) async fn resume(ctx: &Arc<Ctx>, id: &SessionId) -> Resumed {
    match resume_here(ctx, id).await {
        Ok(Some(session)) => Resumed::Session(session),
        Ok(None) => Resumed::Unknown,
        Err(peer) => Resumed::Elsewhere(peer),
    }
}

/// [`resume`]; `Err`: the host that owns the session.
async fn resume_here(
    ctx: &Arc<Ctx>,
    id: &SessionId,
) -> Result<Option<Arc<Session>>, Arc<crate::cluster::Peer>> {
    let record = match ctx.store.fetch(id).await {
        Lookup::CachedAbsent => {
            ctx.metrics.store_fetches_cached.inc();
            return Ok(None);
        }
        Lookup::Asked(answer) => {
            let label = match &answer {
                Fetched::Record(_) => "record",
                Fetched::Absent => "absent",
                Fetched::Withheld => "withheld",
                Fetched::Elsewhere { .. } => "elsewhere",
            };
            ctx.metrics.store_fetches.with_label_values(&[label]).inc();
            match answer {
                Fetched::Record(r) => r,
                Fetched::Elsewhere { host, advertise } => {
                    return Err(Arc::new(crate::cluster::Peer {
                        host: host.into(),
                        addr: advertise.into(),
                    }));
                }
                Fetched::Absent | Fetched::Withheld => return Ok(None),
            }
        }
    };
    let live = ctx.live();
    let (Some(endpoint), Some(version)) = (
        live.endpoints.get(record.endpoint.as_str()).cloned(),
        versions::lookup(record.version.as_bytes()),
    ) else {
        info!(session = %id, endpoint = %record.endpoint, "inherited session no longer fits the configuration; ended");
        ctx.store
            .write(StoreWrite::Remove {
                session: id.to_string(),
            })
            .await;
        return Ok(None);
    };
    // The principal travels with the record: after a failover the session
    // still answers only to whoever opened it.
    let session = Arc::new(Session::new(
        *id,
        endpoint.clone(),
        version,
        record.init_params.into(),
        record.principal.into(),
    ));
    let (session, fresh) = ctx.sessions.insert_if_absent(session);
    if fresh {
        let attached: Vec<_> = record
            .upstreams
            .iter()
            .filter_map(|u| {
                let server = endpoint.upstreams.iter().find(|s| *s.id == *u.upstream)?;
                UpstreamSession::attach(
                    server.clone(),
                    u.session_id.as_deref(),
                    &u.version,
                    &u.capabilities,
                )
                .inspect_err(
                    |e| warn!(session = %id, error = %e, "cannot re-attach an upstream session"),
                )
                .ok()
            })
            .collect();
        info!(session = %id, upstream_sessions = attached.len(), "session resumed after its worker died");
        ctx.metrics.resumed.inc();
        ctx.registry.adopt(&session, attached).await;
    }
    Ok(Some(session))
}

/// End the session: close its upstream sessions (bounded), then answer.
pub(crate) async fn delete(
    ctx: &Arc<Ctx>,
    session: Option<Arc<Session>>,
    accept: Accept,
) -> Response<Body> {
    let Some(session) = session else {
        return rpc_error(
            accept,
            StatusCode::BAD_REQUEST,
            "null",
            jsonrpc::INVALID_REQUEST,
            "DELETE needs an Mcp-Session-Id header",
        );
    };
    if let Some(s) = ctx.sessions.remove(&session.id) {
        info!(session = %s.id, "session ended by the client");
        ctx.store
            .write(StoreWrite::Remove {
                session: s.id.to_string(),
            })
            .await;
        ctx.registry.close_sessions(&[s]).await;
    }
    let mut r = Response::new(body::empty());
    *r.status_mut() = StatusCode::OK;
    r
}
