//! The stateful MCP Streamable HTTP era (2025-03-26 to 2025-11-25): the
//! session a request belongs to (forwarded to its owner, or resumed from
//! the store), POST (one message or a batch), GET and DELETE.
//!
//! - [`initialize`]: opening a session under the session caps.
//! - [`lifecycle`]: the GET stream, resuming an inherited session, DELETE.
//! - [`messages`]: client notifications and responses.

mod initialize;
mod lifecycle;
mod messages;

use crate::cluster::Peer;
use crate::forward::{HostConn, HostOutcome};
use crate::front::common::{
    Caller, ClientAddr, Origin, accepted, is_json_content_type, plain, session_not_found,
    trace_context,
};
use crate::front::rate::over_limit;
use crate::front::stateful::initialize::initialize;
use crate::front::stateful::lifecycle::{Resumed, delete, get, resume};
use crate::front::stateful::messages::{client_notification, client_response};
use crate::front::stateless;
use crate::route::reply::{Accept, rpc_error};
use crate::route::request;
use crate::route::source::InSession;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use mcpgw_mcp::headers::{MCP_PROTOCOL_VERSION, MCP_SESSION_ID};
use mcpgw_mcp::version::ProtocolVersion;
use mcpgw_protocol::headers::CLIENT_ADDR;
use mcpgw_protocol::session_id::SessionId;
use tokio::time::Instant;
use tracing::{debug, info};

use crate::auth::{Decision, Principal};
use crate::ctx::{Ctx, Live};
use crate::endpoints::Endpoint;
use crate::http::body::{self, Body};
use crate::http::server::ReqBody;
use crate::jsonrpc::{self, Kind};
use crate::metrics::{self, Outcome, OutcomeSlot};
use crate::session::Session;
use crate::versions;

pub(crate) async fn serve(
    ctx: &Arc<Ctx>,
    live: &Live,
    req: Request<ReqBody>,
    origin: Origin,
) -> Response<Body> {
    let Some(endpoint) = live.endpoints.get(req.uri().path()).cloned() else {
        return plain(StatusCode::NOT_FOUND, "no MCP endpoint at this path\n");
    };
    let accept = Accept::of(&req);
    // Who is calling, before anything is looked up (`[auth]`; no cost without).
    let principal = match (&live.auth, origin) {
        (None, _) => None,
        // The forwarding worker checked the token and names the principal.
        (Some(_), origin)
            if origin.is_forwarded()
                && req.headers().contains_key(crate::auth::PRINCIPAL_HEADER) =>
        {
            Principal::from_forwarded(req.headers())
        }
        // A public request, or one forwarded by a worker that had no
        // `[auth]` yet (a reload in progress): its token is checked here.
        (Some(gate), origin) => {
            let tls = matches!(origin, Origin::Public { tls: true, .. });
            match gate.check(req.headers(), &endpoint.path, tls) {
                Ok(p) => {
                    ctx.metrics.auth_decisions[Decision::Ok.index()].inc();
                    Some(p)
                }
                Err(d) => {
                    ctx.metrics.auth_decisions[d.index()].inc();
                    // Debug: a flood of bad tokens must not flood the log
                    // (mcpgw_auth_decisions_total counts them).
                    debug!(outcome = Decision::LABELS[d.index()], endpoint = %endpoint.path, "request refused by [auth]");
                    return gate.refusal(d, req.headers(), &endpoint.path, tls);
                }
            }
        }
    };
    // A session answers only to the principal that opened it; to anyone
    // else it is as unknown as an id never issued.
    let owned_by = |s: &Session| {
        let ok = *s.principal == *principal.as_ref().map_or("", Principal::id);
        if !ok {
            ctx.metrics.auth_decisions[Decision::WrongPrincipal.index()].inc();
        }
        ok
    };
    // A stateless client's request: its session id, if any, is ignored.
    let stateless = stateless::by_header(req.headers());
    let session = match req.headers().get(MCP_SESSION_ID) {
        _ if stateless => None,
        None => None,
        Some(raw) => match SessionId::parse(raw.as_bytes()) {
            Err(e) => {
                info!(error = %e, "malformed Mcp-Session-Id");
                return rpc_error(
                    accept,
                    StatusCode::BAD_REQUEST,
                    "null",
                    jsonrpc::INVALID_REQUEST,
                    &format!("invalid Mcp-Session-Id: {e}"),
                );
            }
            Ok(id) => match ctx.sessions.get(&id) {
                Some(s) if s.endpoint().path == endpoint.path && owned_by(&s) => Some(s),
                Some(_) => {
                    return session_not_found(
                        accept,
                        &id,
                        "it belongs to another endpoint or principal",
                    );
                }
                None => {
                    // `[cluster]`: an id no gateway of the cluster minted is
                    // unknown everywhere, and no store is asked about it.
                    if let Some(key) = &live.cluster_key
                        && !id.tagged_by(key)
                    {
                        ctx.metrics.untagged_ids.inc();
                        return session_not_found(accept, &id, "unknown or expired");
                    }
                    let client = client_of(origin, req.headers());
                    let owner = ctx.owner_of(&id);
                    if owner != ctx.id.slot && origin != Origin::Internal {
                        ctx.metrics.forwarded.with_label_values(&["out"]).inc();
                        return Box::pin(ctx.forwarder.forward(
                            owner,
                            req,
                            principal.as_ref(),
                            client,
                        ))
                        .await;
                    }
                    // Not held here: another host's, inherited from a dead
                    // worker, or unknown. A request another host forwarded
                    // never goes on to a third.
                    let key = live.cluster_key.as_ref().filter(|_| origin != Origin::Peer);
                    match Box::pin(locate(ctx, key, &id)).await {
                        Located::Host(peer, conn) => {
                            return Box::pin(forward_to_host(
                                ctx,
                                key,
                                peer,
                                conn,
                                id,
                                req,
                                principal.as_ref(),
                                client,
                            ))
                            .await;
                        }
                        Located::Here(Resumed::Session(s))
                            if s.endpoint().path == endpoint.path && owned_by(&s) =>
                        {
                            Some(s)
                        }
                        Located::Here(Resumed::Elsewhere(_)) if origin == Origin::Peer => {
                            // The forwarding host's view is stale.
                            return plain(
                                StatusCode::MISDIRECTED_REQUEST,
                                "this gateway host does not own the session\n",
                            );
                        }
                        Located::Unreachable => return unavailable_owner(),
                        _ => return session_not_found(accept, &id, "unknown or expired"),
                    }
                }
            },
        },
    };
    match *req.method() {
        Method::POST => {
            let caller = Caller {
                addr: client_of(origin, req.headers()).map(ClientAddr),
                principal,
            };
            post(ctx, endpoint, session, accept, req, &caller, stateless).await
        }
        Method::GET | Method::DELETE if stateless => stateless::no_session_method(),
        Method::GET => get(ctx, session, accept),
        Method::DELETE => Box::pin(delete(ctx, session, accept)).await,
        _ => {
            let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "use POST, GET or DELETE\n");
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, POST, DELETE"));
            r
        }
    }
}

/// The client's address: the connection's, or on a forwarded request the
/// one the forwarding worker saw (`x-mcpgw-client`).
fn client_of(origin: Origin, headers: &http::HeaderMap) -> Option<std::net::IpAddr> {
    match origin {
        Origin::Public { client, .. } => client.map(|c| c.0),
        Origin::Internal | Origin::Peer => headers
            .get(CLIENT_ADDR)
            .and_then(|v| v.to_str().ok()?.parse().ok()),
    }
}

/// Forward a request for a session `peer` owns to that host (`[cluster]`),
/// counting the outcome; a miss of any kind drops the cached owner.
#[allow(clippy::too_many_arguments)]
async fn forward_to_host(
    ctx: &Arc<Ctx>,
    key: Option<&Arc<mcpgw_protocol::cluster::ClusterKey>>,
    peer: Arc<Peer>,
    conn: HostConn,
    id: SessionId,
    req: Request<ReqBody>,
    principal: Option<&Principal>,
    client: Option<std::net::IpAddr>,
) -> Response<Body> {
    let Some(key) = key else {
        return unavailable_owner();
    };
    let (resp, outcome) = ctx
        .forwarder
        .forward_to_host(conn, &peer, req, principal, client, key)
        .await;
    let label = match outcome {
        HostOutcome::Answered if resp.status() != StatusCode::NOT_FOUND => "ok",
        HostOutcome::Answered => {
            // The session ended there (or expired): nothing to remember.
            ctx.owners.forget(&id);
            "ok"
        }
        HostOutcome::Misdirected => {
            ctx.owners.forget(&id);
            "misdirected"
        }
        HostOutcome::Failed => {
            ctx.owners.forget(&id);
            "unreachable"
        }
    };
    ctx.metrics
        .cluster_forwarded
        .with_label_values(&[&peer.host, label])
        .inc();
    resp
}

/// Where a session this worker does not hold is served.
enum Located {
    /// By another gateway host, connected to.
    Host(Arc<Peer>, HostConn),
    /// Here, or nowhere (what the store said).
    Here(Resumed),
    /// By another gateway host that cannot be reached now.
    Unreachable,
}

/// Find a session this worker does not hold: another host's (cached, or
/// as the store says; `key` is `None` when the request may not go to
/// another host), else inherited here from a dead worker, or unknown.
async fn locate(
    ctx: &Arc<Ctx>,
    key: Option<&Arc<mcpgw_protocol::cluster::ClusterKey>>,
    id: &SessionId,
) -> Located {
    if key.is_some()
        && let Some(peer) = ctx.owners.get(id)
    {
        match ctx.forwarder.connect_host(&peer).await {
            Some(conn) => return Located::Host(peer, conn),
            // Dead or moved: ask the store again.
            None => unreachable(ctx, &peer, id),
        }
    }
    match resume(ctx, id).await {
        Resumed::Elsewhere(peer) if key.is_some() => {
            match ctx.forwarder.connect_host(&peer).await {
                Some(conn) => {
                    ctx.owners.insert(*id, peer.clone());
                    Located::Host(peer, conn)
                }
                None => {
                    unreachable(ctx, &peer, id);
                    Located::Unreachable
                }
            }
        }
        other => Located::Here(other),
    }
}

/// `peer` could not be reached for `id`: forget where the session was.
fn unreachable(ctx: &Ctx, peer: &Peer, id: &SessionId) {
    ctx.owners.forget(id);
    ctx.metrics
        .cluster_forwarded
        .with_label_values(&[&peer.host, "unreachable"])
        .inc();
}

/// The host that owns the session cannot be reached now: 503, retry.
fn unavailable_owner() -> Response<Body> {
    let mut r = plain(
        StatusCode::SERVICE_UNAVAILABLE,
        "the gateway host that owns this session is unreachable; retry\n",
    );
    r.headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// POST, counted and timed by method and outcome.
pub(crate) async fn post(
    ctx: &Arc<Ctx>,
    endpoint: Arc<Endpoint>,
    session: Option<Arc<Session>>,
    accept: Accept,
    req: Request<ReqBody>,
    caller: &Caller,
    stateless: bool,
) -> Response<Body> {
    let start = Instant::now();
    let mut method = "other";
    // With `[tracing]`, when sampled: the request's span.
    let span = ctx.otel.request_span(req.headers());
    // Filled by routing when the status cannot tell (see `OutcomeSlot`).
    let outcome = OutcomeSlot::with_trace(
        trace_context(req.headers()),
        span.as_ref().map(|s| Box::new(s.parent())),
    );
    let logged = ctx.access_log.load(std::sync::atomic::Ordering::Relaxed);
    // What the access log and the span need that the request takes away
    // (only when either is on).
    let kept =
        (logged || span.is_some()).then(|| (endpoint.path.clone(), session.as_ref().map(|s| s.id)));
    let resp = post_inner(
        ctx,
        endpoint,
        session,
        accept,
        req,
        caller,
        stateless,
        &mut method,
        &outcome,
    )
    .await;
    let (ended, seconds) = (
        outcome.outcome(resp.status()),
        start.elapsed().as_secs_f64(),
    );
    ctx.metrics.observe_request(method, ended, seconds);
    let Some((path, session)) = kept else {
        return resp;
    };
    // A new session's id is in its initialize answer.
    let session = session.map(|s| s.to_string()).or_else(|| {
        resp.headers()
            .get(MCP_SESSION_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    });
    let routed = outcome.routed();
    if let Some(span) = span {
        span.finish(crate::otel::Ended {
            method,
            endpoint: &path,
            name: routed.and_then(|r| r.name.as_deref()),
            upstream: routed.map(|r| &*r.upstream),
            session: session.as_deref(),
            outcome: ended,
            error_code: outcome.error_code(),
            status: resp.status().as_u16(),
        });
    }
    if logged {
        info!(
            target: "mcpgw::access",
            endpoint = %path,
            method,
            name = routed.and_then(|r| r.name.as_deref()).unwrap_or("-"),
            upstream = routed.map_or("-", |r| &*r.upstream),
            // A prefix identifies a session in the logs without handing
            // the whole bearer-like id to whoever reads them.
            session = session.as_deref().map_or("-", |s| s.get(..8).unwrap_or(s)),
            principal = caller.principal.as_ref().map_or("-", Principal::sub),
            outcome = ended.label(),
            status = resp.status().as_u16(),
            duration_us = (seconds * 1e6) as u64,
            "request"
        );
    }
    resp
}

/// `method_label` and `outcome` are filled in for [`post`]'s counting.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn post_inner(
    ctx: &Arc<Ctx>,
    endpoint: Arc<Endpoint>,
    session: Option<Arc<Session>>,
    accept: Accept,
    req: Request<ReqBody>,
    caller: &Caller,
    stateless: bool,
    method_label: &mut &'static str,
    outcome: &OutcomeSlot,
) -> Response<Body> {
    if !is_json_content_type(&req) {
        return rpc_error(
            accept,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "null",
            jsonrpc::INVALID_REQUEST,
            "Content-Type must be application/json",
        );
    }
    if !accept.json && !accept.sse {
        return plain(
            StatusCode::NOT_ACCEPTABLE,
            "Accept must include application/json or text/event-stream\n",
        );
    }
    let (parts, body) = req.into_parts();
    let header_version = parts.headers.get(MCP_PROTOCOL_VERSION);
    let body = match body {
        ReqBody::Whole(bytes) => bytes.unwrap_or_default(),
        ReqBody::TooLarge { limit } => {
            info!(limit, "request body too large");
            return rpc_error(
                accept,
                StatusCode::PAYLOAD_TOO_LARGE,
                "null",
                jsonrpc::INVALID_REQUEST,
                &format!("request body exceeds {limit} bytes"),
            );
        }
    };
    if jsonrpc::is_batch(&body) {
        *method_label = "batch";
        if stateless {
            outcome.set(Outcome::JsonrpcError);
            return rpc_error(
                accept,
                StatusCode::BAD_REQUEST,
                "null",
                jsonrpc::INVALID_REQUEST,
                "a stateless (2026-07-28) request cannot be a batch",
            );
        }
        return Box::pin(batch(ctx, &endpoint, session, accept, &body, caller)).await;
    }
    let Some(env) = jsonrpc::parse(&body) else {
        info!("request body is not a JSON-RPC message");
        // JSON-RPC tells malformed JSON (-32700) from well-formed JSON that
        // is no request (-32600); the second parse runs on refusals only.
        let (code, message) = match serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
            Ok(_) => (
                jsonrpc::INVALID_REQUEST,
                "Invalid Request: the body is JSON but not a JSON-RPC message",
            ),
            Err(_) => (
                jsonrpc::PARSE_ERROR,
                "Parse error: the body is not a JSON object",
            ),
        };
        return rpc_error(accept, StatusCode::BAD_REQUEST, "null", code, message);
    };
    if !env.is_v2() {
        info!("request refused: not JSON-RPC 2.0");
        return rpc_error(
            accept,
            StatusCode::BAD_REQUEST,
            env.id_raw(),
            jsonrpc::INVALID_REQUEST,
            "Invalid Request: \"jsonrpc\" must be \"2.0\"",
        );
    }
    *method_label = match env.kind() {
        Kind::Request(m) => metrics::method_label(m),
        Kind::Notification(_) => "notification",
        Kind::Response => "response",
        Kind::Invalid => "other",
    };
    if let Kind::Request(_) = env.kind()
        && let Some(refused) = over_limit(ctx, &endpoint, caller, 1, accept, env.id_raw())
    {
        outcome.set(Outcome::Refused);
        return refused;
    }
    // An `initialize` is stateless only by its body (`by_body`): by the
    // header alone it is still the stateful handshake.
    if session.is_none()
        && ((stateless && !matches!(env.kind(), Kind::Request("initialize")))
            || stateless::by_body(&env))
    {
        return Box::pin(stateless::post(
            ctx, endpoint, accept, &parts, &env, &body, outcome, caller,
        ))
        .await;
    }
    let Some(session) = session else {
        return Box::pin(sessionless(ctx, endpoint, accept, &env, caller, outcome)).await;
    };
    session.touch();
    if let Some(v) = &header_version {
        // The transport spec asks for 400 on an invalid or unsupported
        // version only; a supported one other than the negotiated one is
        // let through (the session's own version governs the exchange).
        match versions::lookup(v.as_bytes()) {
            Some(_) => {}
            None => {
                return rpc_error(
                    accept,
                    StatusCode::BAD_REQUEST,
                    env.id_raw(),
                    jsonrpc::INVALID_REQUEST,
                    &format!(
                        "unsupported MCP-Protocol-Version {:?} (this session speaks {}; supported: {})",
                        String::from_utf8_lossy(v.as_bytes()),
                        session.version,
                        versions::SUPPORTED.join(", ")
                    ),
                );
            }
        }
    }
    dispatch(
        ctx,
        &session,
        &env,
        &body,
        accept,
        outcome,
        caller.principal.as_ref(),
    )
    .await
}

/// One message of a session, by its kind (`principal`: who sent it, for
/// the endpoint's authorization rules).
pub(crate) async fn dispatch(
    ctx: &Arc<Ctx>,
    session: &Arc<Session>,
    env: &jsonrpc::Envelope<'_>,
    body: &Bytes,
    accept: Accept,
    outcome: &OutcomeSlot,
    principal: Option<&Principal>,
) -> Response<Body> {
    match env.kind() {
        Kind::Request(method) => {
            let src = InSession {
                registry: &ctx.registry,
                session,
            };
            let route_env = ctx.route_env(outcome, principal);
            request(route_env, &src, method, env, body, accept).await
        }
        Kind::Notification(method) => {
            Box::pin(client_notification(session, method, env, body)).await
        }
        Kind::Response => Box::pin(client_response(session, env, body, accept)).await,
        Kind::Invalid => rpc_error(
            accept,
            StatusCode::BAD_REQUEST,
            env.id_raw(),
            jsonrpc::INVALID_REQUEST,
            "Invalid Request: not a JSON-RPC 2.0 request, notification or response",
        ),
    }
}

/// A JSON-RPC batch, which 2025-03-26 allows (later versions removed it):
/// each message is handled as if posted alone, one after the other, and the
/// answers to its requests come back together as one JSON array.
pub(crate) async fn batch(
    ctx: &Arc<Ctx>,
    endpoint: &Endpoint,
    session: Option<Arc<Session>>,
    accept: Accept,
    body: &Bytes,
    caller: &Caller,
) -> Response<Body> {
    let refuse = |message: &str| {
        rpc_error(
            accept,
            StatusCode::BAD_REQUEST,
            "null",
            jsonrpc::INVALID_REQUEST,
            message,
        )
    };
    let Some(session) = session else {
        return refuse("a batch needs a session (initialize cannot be batched)");
    };
    if ProtocolVersion::parse(session.version) != Some(ProtocolVersion::V2025_03_26) {
        return refuse(&format!(
            "JSON-RPC batches exist in protocol 2025-03-26 only; this session speaks {}",
            session.version
        ));
    }
    let Ok(messages) = serde_json::from_slice::<Vec<&serde_json::value::RawValue>>(body) else {
        return rpc_error(
            accept,
            StatusCode::BAD_REQUEST,
            "null",
            jsonrpc::PARSE_ERROR,
            "Parse error: the batch is not a JSON array",
        );
    };
    if messages.is_empty() {
        return refuse("an empty batch");
    }
    let max_batch = usize::try_from(ctx.live().config.limits.max_batch_len).unwrap_or(usize::MAX);
    if messages.len() > max_batch {
        info!(session = %session.id, len = messages.len(), limit = max_batch, "batch refused: over max_batch_len");
        return refuse(&format!(
            "a batch of {} messages; at most {max_batch} are allowed (max_batch_len)",
            messages.len()
        ));
    }
    let envelopes: Vec<_> = messages
        .iter()
        .map(|raw| jsonrpc::parse(raw.get().as_bytes()))
        .collect();
    // Answers are told apart by their ids only (a batch's may come in any
    // order): two requests with one id would make them ambiguous.
    let mut ids: Vec<&str> = envelopes
        .iter()
        .flatten()
        .filter(|env| matches!(env.kind(), Kind::Request(_)))
        .map(|env| env.id_raw())
        .collect();
    ids.sort_unstable();
    if let Some(pair) = ids.windows(2).find(|pair| pair[0] == pair[1]) {
        info!(session = %session.id, id = pair[0], "batch refused: two requests with one id");
        return refuse(&format!(
            "two requests of the batch have the id {}",
            pair[0]
        ));
    }
    // Each request in it takes a token; notifications and responses none.
    if !ids.is_empty()
        && let Some(refused) = over_limit(
            ctx,
            endpoint,
            caller,
            u32::try_from(ids.len()).unwrap_or(u32::MAX),
            accept,
            "null",
        )
    {
        return refused;
    }
    session.touch();
    // Each answer is read whole: a batch answer is one JSON document.
    let one = Accept {
        json: true,
        sse: false,
    };
    let mut answers: Vec<Bytes> = Vec::new();
    for (raw, env) in messages.iter().zip(envelopes) {
        let message = body.slice_ref(raw.get().as_bytes());
        let Some(env) = env.filter(jsonrpc::Envelope::is_v2) else {
            answers.push(jsonrpc::error(
                "null",
                jsonrpc::INVALID_REQUEST,
                "Invalid Request: a batch member is not a JSON-RPC 2.0 message",
                None,
            ));
            continue;
        };
        if let Kind::Request("initialize") = env.kind() {
            answers.push(jsonrpc::error(
                env.id_raw(),
                jsonrpc::INVALID_REQUEST,
                "initialize cannot be part of a batch",
                None,
            ));
            continue;
        }
        // A batch counts once, by its status; its members' own outcomes
        // are not kept.
        let resp = dispatch(
            ctx,
            &session,
            &env,
            &message,
            one,
            &OutcomeSlot::new(),
            caller.principal.as_ref(),
        )
        .await;
        if resp.status() == StatusCode::ACCEPTED {
            continue;
        }
        let id = env.id_raw();
        let answer = resp.into_body().collect().await.map(|b| b.to_bytes());
        match answer {
            Ok(b) if jsonrpc::parse(&b).is_some() => answers.push(b),
            Ok(_) | Err(_) => answers.push(jsonrpc::error(
                id,
                jsonrpc::INTERNAL_ERROR,
                "no JSON-RPC answer for this batch member",
                None,
            )),
        }
    }
    if answers.is_empty() {
        return accepted();
    }
    let mut out = Vec::with_capacity(answers.iter().map(|a| a.len() + 1).sum::<usize>() + 2);
    out.push(b'[');
    for (i, a) in answers.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(a);
    }
    out.push(b']');
    let mut r = Response::new(body::full(out));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// A POST without a session: only `initialize` may open one.
pub(crate) async fn sessionless(
    ctx: &Arc<Ctx>,
    endpoint: Arc<Endpoint>,
    accept: Accept,
    env: &jsonrpc::Envelope<'_>,
    caller: &Caller,
    outcome: &OutcomeSlot,
) -> Response<Body> {
    match env.kind() {
        Kind::Request("initialize") => {
            Box::pin(initialize(ctx, endpoint, accept, env, caller, outcome)).await
        }
        _ => rpc_error(
            accept,
            StatusCode::BAD_REQUEST,
            env.id_raw(),
            jsonrpc::INVALID_REQUEST,
            "Bad Request: missing Mcp-Session-Id header; send initialize first",
        ),
    }
}
