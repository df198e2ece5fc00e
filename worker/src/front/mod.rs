//! From an HTTP request to an MCP request and back.
//!
//! Order of work per request: the `Host`/`Origin` policy; find the endpoint
//! by path; find the session (forward to its owner worker if another one
//! owns it); enforce content type, `Accept`, body size and protocol version;
//! read only the envelope; then either answer locally (initialize, ping,
//! merged lists) or hand the request to [`crate::route`], which passes the
//! client's bytes to the one upstream the request belongs to and streams its
//! answer back. Every refusal is a JSON-RPC error with the right HTTP
//! status.
//!
//! - [`common`]: request origin, plain refusals, session errors.
//! - [`stateful`]: the stateful protocol era (2025-03-26 to 2025-11-25):
//!   sessions, initialize, GET streams, DELETE, batches.
//! - [`stateless`]: the stateless era (2026-07-28): self-contained
//!   requests, `server/discover`, upstream sessions per request.
//! - [`identity`]: who an endpoint is to its clients (either era).
//! - [`rate`]: an endpoint's rate limit taken per JSON-RPC request, and
//!   the 429 answer.

pub(crate) mod common;
pub(crate) mod identity;
pub(crate) mod rate;
pub(crate) mod stateful;
pub(crate) mod stateless;

use crate::front::common::Origin;
use crate::route::reply::{Accept, rpc_error};
use std::sync::Arc;

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response, StatusCode};
use mcpgw_protocol::headers::WORKER;
use tracing::info;

use crate::ctx::Ctx;
use crate::http::body::{self, Body};
use crate::http::server::ReqBody;
use crate::jsonrpc;

/// The answer to one request.
///
/// Branches off the `tools/call` path (forwarding, resuming, batches,
/// initialize, notifications, SSE answers …) are boxed where they are
/// awaited: a future is as large as its largest branch, and this one is
/// held in every connection's task, moved when a connection starts, and
/// touched by every request.
pub(crate) async fn handle(ctx: Arc<Ctx>, req: Request<ReqBody>, origin: Origin) -> Response<Body> {
    // One snapshot of the reloadable configuration for the whole request.
    let live = ctx.live();
    // Another host's request is believed only with its signature.
    let req = match origin {
        Origin::Peer => match check_peer(&ctx, &live, req) {
            Ok(req) => req,
            Err(why) => return peer_refused(&ctx, why),
        },
        Origin::Public { .. } | Origin::Internal => req,
    };
    // Forwarded requests were checked by the worker that received them.
    let (refused, repeated) = match origin {
        Origin::Public { .. } => match common::repeated_singleton(req.headers()) {
            Some(name) => (None, Some(name)),
            None => (live.host_policy.check(req.headers()).err(), None),
        },
        Origin::Internal | Origin::Peer => (None, None),
    };
    let mut resp = match refused {
        _ if let Some(name) = repeated => {
            info!(
                header = name,
                "request refused: a header that may appear once is repeated"
            );
            rpc_error(
                Accept::of(&req),
                StatusCode::BAD_REQUEST,
                "null",
                jsonrpc::INVALID_REQUEST,
                &format!("header {name} given more than once"),
            )
        }
        Some(reason) => {
            info!(%reason, "request refused (DNS rebinding protection)");
            rpc_error(
                Accept::of(&req),
                StatusCode::FORBIDDEN,
                "null",
                jsonrpc::INVALID_REQUEST,
                &reason,
            )
        }
        None if origin == Origin::Internal && req.uri().path() == SNAPSHOT_PATH => snapshot(&ctx),
        // RFC 9728 documents, with `[auth]` only (else the path is unknown).
        None if live.auth.is_some() && req.uri().path().starts_with(crate::auth::METADATA_PATH) => {
            let tls = matches!(origin, Origin::Public { tls: true, .. });
            live.auth
                .as_ref()
                .and_then(|gate| gate.metadata(req.method(), req.headers(), req.uri().path(), tls))
                .unwrap_or_else(|| {
                    common::plain(StatusCode::NOT_FOUND, "no MCP endpoint at this path\n")
                })
        }
        None => {
            if origin.is_forwarded() {
                ctx.metrics.forwarded.with_label_values(&["in"]).inc();
            }
            stateful::serve(&ctx, &live, req, origin).await
        }
    };
    if let Some(v) = &live.worker_header {
        // A forwarded answer already names the owner that served it.
        resp.headers_mut()
            .entry(WORKER)
            .or_insert_with(|| v.clone());
    }
    if *ctx.stopping.borrow() {
        // The client learns from this answer that the connection ends, and
        // sends its next request on a new one (to whichever worker serves
        // the session then), instead of racing the close.
        resp.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// A request on the cluster listener, if another host of the cluster
/// signed it; else why not.
fn check_peer(
    ctx: &Ctx,
    live: &crate::ctx::Live,
    req: Request<ReqBody>,
) -> Result<Request<ReqBody>, mcpgw_protocol::cluster::Refusal> {
    let (parts, body) = req.into_parts();
    let checked = match (&live.cluster_key, &body) {
        (Some(key), ReqBody::Whole(bytes)) => crate::cluster::check(
            key,
            &ctx.replays,
            &parts,
            bytes.as_deref().unwrap_or_default(),
        ),
        // Not in a cluster (any more: a reload), or a body past the limit,
        // which a forwarding host never sends.
        _ => Err(mcpgw_protocol::cluster::Refusal::Missing),
    };
    checked.map(|()| Request::from_parts(parts, body))
}

/// The 403 for a request on the cluster listener that another host of the
/// cluster did not sign (counted, logged at most once a second).
fn peer_refused(ctx: &Ctx, why: mcpgw_protocol::cluster::Refusal) -> Response<Body> {
    ctx.metrics
        .cluster_refused
        .with_label_values(&[why.label()])
        .inc();
    ctx.refusals.note(why);
    common::plain(
        StatusCode::FORBIDDEN,
        "forwarding between gateway hosts needs the cluster's signature\n",
    )
}

/// Path of the worker's own status on its internal socket (never public).
pub(crate) const SNAPSHOT_PATH: &str = "/_mcpgw/snapshot";

/// This worker's sessions and upstream sessions as JSON.
pub(crate) fn snapshot(ctx: &Ctx) -> Response<Body> {
    let sessions = ctx.sessions.all();
    let per_upstream: serde_json::Map<String, serde_json::Value> = ctx
        .registry
        .snapshot(&sessions)
        .iter()
        .map(|(id, count, oldest)| {
            (
                id.to_string(),
                serde_json::json!({"upstream_sessions": count, "oldest_age_secs": oldest.as_secs_f64()}),
            )
        })
        .collect();
    let doc = serde_json::json!({
        "worker": ctx.id.to_string(),
        "sessions": sessions.len(),
        "upstreams": per_upstream,
    });
    let mut r = Response::new(body::full(doc.to_string()));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}
