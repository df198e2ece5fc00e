//! The MCP Streamable HTTP endpoint (stateful protocol, 2025-03-26 to
//! 2025-11-25): one HTTP request in, one answer out.
//!
//! Order of work per request: find the endpoint by path; find the session
//! (forward to its owner worker if another one owns it); enforce content type,
//! `Accept`, body size and protocol version; read only the envelope; then
//! either answer locally (initialize, ping, merged lists) or pass the client's
//! bytes to the one upstream the request belongs to and stream its answer
//! back. Every refusal is a JSON-RPC error with the right HTTP status.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use mcpgw_protocol::headers::{MCP_PROTOCOL_VERSION, MCP_SESSION_ID, WORKER};
use mcpgw_protocol::session_id::SessionId;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::answer_budget;
use crate::body::{self, Body};
use crate::conn_pool::UpstreamBody;
use crate::federation::{self, Endpoint, ListKind};
use crate::h1_server::ReqBody;
use crate::jsonrpc::{self, Kind};
use crate::metrics;
use crate::relay::{self, CallGuard, PumpEnd, Relay};
use crate::sessions::Session;
use crate::store::{Lookup, OpenRefused};
use crate::upstream::{self, UpstreamError, UpstreamServer, UpstreamSession, read_answer};
use crate::{Ctx, Live, versions};
use mcpgw_protocol::store::{Fetched, SessionCap, SessionCaps, SessionRecord, StoreWrite};

/// Where a connection came from: the public listeners, or a sibling worker
/// forwarding a request for a session this worker owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A client connection, with the client's address where known.
    Public(Option<ClientAddr>),
    /// Forwarded by another worker over the internal socket.
    Internal,
}

/// The client's IP address, from the connection that received the request
/// (absent on forwarded requests, which never open sessions); the
/// per-client session cap counts by it. Passed along, not put in the
/// request's extensions: that would allocate a map for every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClientAddr(pub std::net::IpAddr);

/// The gateway's JSON-RPC error for `initialize` past a session cap (the
/// -32000 to -32099 range is for implementation-defined server errors).
const SESSION_LIMIT: i32 = -32000;

/// Error code conventional for an unknown or expired session.
const SESSION_NOT_FOUND: i32 = -32001;
/// Answer to a request the client cancelled itself.
const REQUEST_CANCELLED: i32 = -32800;
/// MCP's code for an unknown resource.
const RESOURCE_NOT_FOUND: i32 = -32002;

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
    // Forwarded requests were checked by the worker that received them.
    let refused = match origin {
        Origin::Public(_) => live.host_policy.check(req.headers()).err(),
        Origin::Internal => None,
    };
    let mut resp = match refused {
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
        None => route(&ctx, &live, req, origin).await,
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

/// Path of the worker's own status on its internal socket (never public).
const SNAPSHOT_PATH: &str = "/_mcpgw/snapshot";

async fn route(
    ctx: &Arc<Ctx>,
    live: &Live,
    req: Request<ReqBody>,
    origin: Origin,
) -> Response<Body> {
    if origin == Origin::Internal {
        if req.uri().path() == SNAPSHOT_PATH {
            return snapshot(ctx);
        }
        ctx.metrics.forwarded.with_label_values(&["in"]).inc();
    }
    let Some(endpoint) = live.endpoints.get(req.uri().path()).cloned() else {
        return plain(StatusCode::NOT_FOUND, "no MCP endpoint at this path\n");
    };
    let accept = Accept::of(&req);
    let session = match req.headers().get(MCP_SESSION_ID) {
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
                Some(s) if s.endpoint().path == endpoint.path => Some(s),
                Some(_) => return session_not_found(accept, &id, "it belongs to another endpoint"),
                None => {
                    let owner = ctx.owner_of(&id);
                    if owner != ctx.id.slot && matches!(origin, Origin::Public(_)) {
                        ctx.metrics.forwarded.with_label_values(&["out"]).inc();
                        return Box::pin(ctx.forwarder.forward(owner, req)).await;
                    }
                    // Ours but unknown: maybe inherited from a dead worker.
                    match Box::pin(resume(ctx, &id)).await {
                        Some(s) if s.endpoint().path == endpoint.path => Some(s),
                        _ => return session_not_found(accept, &id, "unknown or expired"),
                    }
                }
            },
        },
    };
    match *req.method() {
        Method::POST => {
            let client = match origin {
                Origin::Public(client) => client,
                Origin::Internal => None,
            };
            post(ctx, endpoint, session, accept, req, client).await
        }
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

/// Which answer formats the client takes.
#[derive(Debug, Clone, Copy)]
struct Accept {
    json: bool,
    sse: bool,
}

impl Accept {
    fn of<B>(req: &Request<B>) -> Self {
        let mut a = Accept {
            json: false,
            sse: false,
        };
        let mut any = false;
        let mut values = req.headers().get_all(ACCEPT).iter();
        // What every MCP SDK sends, alone: no splitting and trimming.
        if let (Some(v), None) = (values.next(), values.next())
            && v.as_bytes() == b"application/json, text/event-stream"
        {
            return Accept {
                json: true,
                sse: true,
            };
        }
        for v in req.headers().get_all(ACCEPT) {
            let Ok(v) = v.to_str() else { continue };
            for item in v.split(',') {
                any = true;
                let media = item.split(';').next().unwrap_or("").trim();
                // Media types are case-insensitive (RFC 9110 §8.3.1).
                let is = |m: &str| media.eq_ignore_ascii_case(m);
                if is("application/json") || is("application/*") {
                    a.json = true;
                } else if is("text/event-stream") || is("text/*") {
                    a.sse = true;
                } else if media == "*/*" {
                    a.json = true;
                    a.sse = true;
                }
            }
        }
        if !any {
            // No Accept at all: be lenient and answer JSON (and allow GET).
            a = Accept {
                json: true,
                sse: true,
            };
        }
        a
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(body::full(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A JSON-RPC message as JSON, or as one SSE event for SSE-only clients.
fn rpc(accept: Accept, status: StatusCode, message: Bytes) -> Response<Body> {
    let (body, ct) = if accept.json || !accept.sse {
        (message, "application/json")
    } else {
        (crate::sse::message_event(&message), "text/event-stream")
    };
    let mut r = Response::new(body::full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ct));
    r
}

/// A JSON-RPC error made by the gateway itself.
fn rpc_error(
    accept: Accept,
    status: StatusCode,
    id: &str,
    code: i32,
    message: &str,
) -> Response<Body> {
    rpc(accept, status, jsonrpc::error(id, code, message, None))
}

fn session_not_found(accept: Accept, id: &SessionId, why: &str) -> Response<Body> {
    debug!(session = %id, why, "session not found");
    rpc_error(
        accept,
        StatusCode::NOT_FOUND,
        "null",
        SESSION_NOT_FOUND,
        "Session not found; initialize a new session",
    )
}

fn is_json_content_type<B>(req: &Request<B>) -> bool {
    let Some(v) = req.headers().get(CONTENT_TYPE) else {
        return false;
    };
    // The usual value, compared before any parsing.
    if v.as_bytes() == b"application/json" {
        return true;
    }
    v.to_str()
        .ok()
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

/// POST, counted and timed by method and outcome.
async fn post(
    ctx: &Arc<Ctx>,
    endpoint: Arc<Endpoint>,
    session: Option<Arc<Session>>,
    accept: Accept,
    req: Request<ReqBody>,
    client: Option<ClientAddr>,
) -> Response<Body> {
    let start = Instant::now();
    let mut method = "other";
    let resp = post_inner(ctx, endpoint, session, accept, req, client, &mut method).await;
    let outcome = match resp.status().as_u16() {
        200..=299 => "ok",
        400..=499 => "rejected",
        _ => "error",
    };
    ctx.metrics
        .observe_request(method, outcome, start.elapsed().as_secs_f64());
    resp
}

async fn post_inner(
    ctx: &Arc<Ctx>,
    endpoint: Arc<Endpoint>,
    session: Option<Arc<Session>>,
    accept: Accept,
    req: Request<ReqBody>,
    client: Option<ClientAddr>,
    method_label: &mut &'static str,
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
    let header_version = req.headers().get(MCP_PROTOCOL_VERSION).cloned();
    let body = match req.into_body() {
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
        return Box::pin(batch(ctx, session, accept, &body)).await;
    }
    let Some(env) = jsonrpc::parse(&body) else {
        info!("request body is not a JSON-RPC message");
        return rpc_error(
            accept,
            StatusCode::BAD_REQUEST,
            "null",
            jsonrpc::PARSE_ERROR,
            "Parse error: the body is not a JSON object",
        );
    };
    *method_label = match env.kind() {
        Kind::Request(m) => metrics::method_label(m),
        Kind::Notification(_) => "notification",
        Kind::Response => "response",
        Kind::Invalid => "other",
    };
    let Some(session) = session else {
        return Box::pin(sessionless(
            ctx,
            endpoint,
            accept,
            &env,
            header_version.as_ref(),
            client,
        ))
        .await;
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
    dispatch(ctx, &session, &env, &body, accept).await
}

/// One message of a session, by its kind.
async fn dispatch(
    ctx: &Arc<Ctx>,
    session: &Arc<Session>,
    env: &jsonrpc::Envelope<'_>,
    body: &Bytes,
    accept: Accept,
) -> Response<Body> {
    match env.kind() {
        Kind::Request(method) => request(ctx, session, method, env, body, accept).await,
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
async fn batch(
    ctx: &Arc<Ctx>,
    session: Option<Arc<Session>>,
    accept: Accept,
    body: &Bytes,
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
    if session.version != "2025-03-26" {
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
    session.touch();
    // Each answer is read whole: a batch answer is one JSON document.
    let one = Accept {
        json: true,
        sse: false,
    };
    let mut answers: Vec<Bytes> = Vec::new();
    for raw in messages {
        let message = body.slice_ref(raw.get().as_bytes());
        let Some(env) = jsonrpc::parse(&message) else {
            answers.push(jsonrpc::error(
                "null",
                jsonrpc::INVALID_REQUEST,
                "Invalid Request: a batch member is not a JSON object",
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
        let resp = dispatch(ctx, &session, &env, &message, one).await;
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

fn accepted() -> Response<Body> {
    let mut r = Response::new(body::empty());
    *r.status_mut() = StatusCode::ACCEPTED;
    r
}

/// A POST without a session: only `initialize` may open one.
async fn sessionless(
    ctx: &Arc<Ctx>,
    endpoint: Arc<Endpoint>,
    accept: Accept,
    env: &jsonrpc::Envelope<'_>,
    header_version: Option<&HeaderValue>,
    client: Option<ClientAddr>,
) -> Response<Body> {
    match env.kind() {
        Kind::Request("initialize") => {
            Box::pin(initialize(ctx, endpoint, accept, env, client)).await
        }
        Kind::Request("server/discover") => {
            // The stateless 2026-07-28 protocol is not served yet; this error
            // makes current clients fall back to `initialize`.
            let requested = header_version
                .and_then(|v| v.to_str().ok())
                .unwrap_or("2026-07-28");
            rpc(
                accept,
                StatusCode::OK,
                jsonrpc::error(
                    env.id_raw(),
                    jsonrpc::UNSUPPORTED_PROTOCOL_VERSION,
                    "Unsupported protocol version: this server speaks the initialize handshake",
                    Some(&versions::unsupported_data(requested)),
                ),
            )
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

/// Open a session. What it keeps for its life is bounded: the params (the
/// only part the client fills) up to `max_session_params_bytes`, the rest
/// fixed-size or from the configuration. It is admitted under the session
/// caps by the supervisor, which stores its record in the same step
/// ([`crate::store::StoreClient::open`]); past a cap the client gets
/// [`SESSION_LIMIT`] and no other session is touched.
async fn initialize(
    ctx: &Arc<Ctx>,
    endpoint: Arc<Endpoint>,
    accept: Accept,
    env: &jsonrpc::Envelope<'_>,
    client: Option<ClientAddr>,
) -> Response<Body> {
    #[derive(Deserialize)]
    struct Params<'a> {
        #[serde(rename = "protocolVersion", borrow)]
        protocol_version: Cow<'a, str>,
    }
    let id = env.id_raw();
    let Some(params) = env.params else {
        return invalid_params(accept, id, "initialize needs params");
    };
    let limits = &ctx.live().config.limits;
    let max_params = usize::try_from(limits.max_session_params_bytes).unwrap_or(usize::MAX);
    if params.get().len() > max_params {
        info!(
            bytes = params.get().len(),
            limit = max_params,
            "initialize refused: params over max_session_params_bytes"
        );
        ctx.metrics
            .sessions_refused
            .with_label_values(&["params"])
            .inc();
        return invalid_params(
            accept,
            id,
            &format!(
                "initialize params are {} bytes; this gateway keeps at most {max_params} (max_session_params_bytes)",
                params.get().len()
            ),
        );
    }
    let caps = SessionCaps {
        total: limits.max_sessions,
        per_worker: limits.max_sessions_per_worker,
        per_client: limits.max_sessions_per_client,
    };
    let Ok(p) = serde_json::from_str::<Params<'_>>(params.get()) else {
        return invalid_params(
            accept,
            id,
            "initialize needs params.protocolVersion (a string)",
        );
    };
    let version = versions::negotiate(&p.protocol_version);
    let Some(init_params) = jsonrpc::with_member(
        params.get(),
        "protocolVersion",
        &jsonrpc::json_string(version),
    ) else {
        return invalid_params(accept, id, "initialize params must be an object");
    };
    let session_id = match SessionId::mint_for_slot(ctx.id.slot, ctx.slot_count()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot mint a session id");
            return rpc_error(
                accept,
                StatusCode::INTERNAL_SERVER_ERROR,
                id,
                jsonrpc::INTERNAL_ERROR,
                "cannot create a session right now",
            );
        }
    };
    let record = SessionRecord {
        id: session_id.to_string(),
        owner: ctx.id,
        principal: String::new(),
        client: client.map(|c| c.0.to_string()).unwrap_or_default(),
        endpoint: endpoint.path.to_string(),
        version: version.to_owned(),
        init_params: init_params.clone(),
        created_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        upstreams: Vec::new(),
    };
    // Recorded before the client learns the id, so the session can fail over
    // from its first request on.
    if let Err(refused) = ctx.store.open(record, caps).await {
        return session_refused(ctx, accept, id, refused, caps, client);
    }
    let session = Arc::new(Session::new(
        session_id,
        endpoint,
        version,
        init_params.into_boxed_str(),
    ));
    ctx.sessions.insert(session);
    info!(session = %session_id, version, requested = %p.protocol_version, "session created");
    let result = format!(
        concat!(
            "{{\"protocolVersion\":\"{}\",\"capabilities\":{{",
            // The relay forwards list changes and resource subscriptions of
            // every upstream, so the gateway offers them whatever each
            // upstream turns out to support (it is contacted lazily).
            "\"tools\":{{\"listChanged\":true}},\"prompts\":{{\"listChanged\":true}},",
            "\"resources\":{{\"subscribe\":true,\"listChanged\":true}},",
            "\"logging\":{{}},\"completions\":{{}}}},",
            "\"serverInfo\":{{\"name\":\"mcpgw\",\"version\":\"{}\"}}}}"
        ),
        version,
        env!("CARGO_PKG_VERSION")
    );
    let mut r = rpc(accept, StatusCode::OK, jsonrpc::result(id, &result));
    if let Ok(v) = HeaderValue::from_str(session_id.as_str()) {
        r.headers_mut().insert(MCP_SESSION_ID, v);
    }
    r
}

/// The answer to an `initialize` past a session cap (HTTP 200, as every
/// JSON-RPC error to a well-formed request; the message names the cap and
/// its `[limits]` key), or when the supervisor could not admit it (503).
fn session_refused(
    ctx: &Ctx,
    accept: Accept,
    id: &str,
    refused: OpenRefused,
    caps: SessionCaps,
    client: Option<ClientAddr>,
) -> Response<Body> {
    let cap = match refused {
        OpenRefused::Cap(cap) => cap,
        OpenRefused::NoAnswer => {
            warn!("the supervisor did not admit a new session in time; initialize refused");
            let mut r = rpc_error(
                accept,
                StatusCode::SERVICE_UNAVAILABLE,
                id,
                jsonrpc::INTERNAL_ERROR,
                "cannot create a session right now; try again",
            );
            r.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
            return r;
        }
    };
    let (what, key, limit) = match cap {
        SessionCap::Worker => (
            "this gateway worker has",
            "max_sessions_per_worker",
            caps.per_worker,
        ),
        SessionCap::Client => (
            "your address has",
            "max_sessions_per_client",
            caps.per_client,
        ),
        SessionCap::Total => ("this gateway has", "max_sessions", caps.total),
    };
    info!(cap = cap.label(), limit, client = ?client.map(|c| c.0), "initialize refused: session cap reached");
    ctx.metrics
        .sessions_refused
        .with_label_values(&[cap.label()])
        .inc();
    rpc(
        accept,
        StatusCode::OK,
        jsonrpc::error(
            id,
            SESSION_LIMIT,
            &format!(
                "Session limit reached: {what} {limit} open sessions ({key}); end one (DELETE) or try later"
            ),
            Some(&format!(
                "{{\"cap\":\"{}\",\"limit\":{limit}}}",
                cap.label()
            )),
        ),
    )
}

fn invalid_params(accept: Accept, id: &str, message: &str) -> Response<Body> {
    rpc_error(accept, StatusCode::OK, id, jsonrpc::INVALID_PARAMS, message)
}

/// A request inside a session.
async fn request(
    ctx: &Arc<Ctx>,
    session: &Arc<Session>,
    method: &str,
    env: &jsonrpc::Envelope<'_>,
    body: &Bytes,
    accept: Accept,
) -> Response<Body> {
    let id = env.id_raw();
    let endpoint = session.endpoint();
    let namespaced = endpoint.namespaced();
    match method {
        "initialize" => rpc_error(
            accept,
            StatusCode::BAD_REQUEST,
            id,
            jsonrpc::INVALID_REQUEST,
            "this session is already initialized",
        ),
        "ping" => rpc(accept, StatusCode::OK, jsonrpc::result(id, "{}")),
        "tools/call" => by_name(ctx, session, env, body, accept, "tool").await,
        "prompts/get" => by_name(ctx, session, env, body, accept, "prompt").await,
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            #[derive(Deserialize)]
            struct P<'a> {
                #[serde(borrow)]
                uri: Cow<'a, str>,
            }
            match env
                .params
                .and_then(|p| serde_json::from_str::<P<'_>>(p.get()).ok())
            {
                Some(p) => {
                    let progress = wants_progress(env.params);
                    by_uri(ctx, session, &p.uri, body.clone(), id, accept, progress).await
                }
                None => invalid_params(accept, id, &format!("{method} needs params.uri")),
            }
        }
        "completion/complete" => complete(ctx, session, env, body, accept).await,
        "logging/setLevel" => {
            let resp = if namespaced {
                Box::pin(broadcast(ctx, session, method, env, accept)).await
            } else {
                passthrough(
                    ctx,
                    session,
                    &endpoint.upstreams[0],
                    body.clone(),
                    id,
                    accept,
                    false,
                )
                .await
            };
            // Recorded after it went out, so the upstream sessions it just
            // created do not get it twice.
            if let Some(p) = env.params {
                session.relay.set_log_level(p.get());
            }
            resp
        }
        m if !namespaced => {
            // One upstream: the gateway is transparent, lists and methods it
            // does not know included.
            let _ = m;
            passthrough(
                ctx,
                session,
                &endpoint.upstreams[0],
                body.clone(),
                id,
                accept,
                wants_progress(env.params),
            )
            .await
        }
        m => {
            if let Some(kind) = ListKind::from_method(m) {
                #[derive(Deserialize, Default)]
                struct P {
                    #[serde(default)]
                    cursor: Option<String>,
                }
                let p: P = env
                    .params
                    .and_then(|p| serde_json::from_str(p.get()).ok())
                    .unwrap_or_default();
                return match federation::merged_list(
                    &ctx.registry,
                    session,
                    kind,
                    p.cursor.as_deref(),
                )
                .await
                {
                    Ok(result) => rpc(accept, StatusCode::OK, jsonrpc::result(id, &result)),
                    Err(e) => invalid_params(accept, id, &e.to_string()),
                };
            }
            rpc_error(
                accept,
                StatusCode::OK,
                id,
                jsonrpc::METHOD_NOT_FOUND,
                &format!("Method not found: {m}"),
            )
        }
    }
}

/// `tools/call` and `prompts/get`: route by `params.name`, strip the
/// namespace, pass through.
async fn by_name(
    ctx: &Arc<Ctx>,
    session: &Arc<Session>,
    env: &jsonrpc::Envelope<'_>,
    body: &Bytes,
    accept: Accept,
    what: &str,
) -> Response<Body> {
    #[derive(Deserialize)]
    struct Meta<'a> {
        #[serde(rename = "progressToken", borrow, default)]
        progress_token: Option<&'a serde_json::value::RawValue>,
    }
    // `_meta` is read in the same pass as the name, so the hot path does
    // not scan the body again for a progress token.
    #[derive(Deserialize)]
    struct P<'a> {
        #[serde(borrow)]
        name: Cow<'a, str>,
        #[serde(rename = "_meta", borrow, default)]
        meta: Option<Meta<'a>>,
    }
    let id = env.id_raw();
    let Some(params) = env.params else {
        return invalid_params(accept, id, &format!("missing params.name ({what} name)"));
    };
    let Ok(p) = serde_json::from_str::<P<'_>>(params.get()) else {
        return invalid_params(accept, id, &format!("missing params.name ({what} name)"));
    };
    let endpoint = session.endpoint();
    let Some((pos, upstream_name)) = endpoint.resolve(&p.name) else {
        info!(session = %session.id, name = %p.name, what, "unknown name");
        return invalid_params(accept, id, &format!("Unknown {what}: {}", p.name));
    };
    let body = if upstream_name == p.name {
        body.clone()
    } else {
        match jsonrpc::with_param(
            body,
            params.get(),
            "name",
            &jsonrpc::json_string(upstream_name),
        ) {
            Some(b) => Bytes::from(b),
            None => return invalid_params(accept, id, "params must be an object"),
        }
    };
    let progress = p.meta.is_some_and(|m| m.progress_token.is_some());
    passthrough(
        ctx,
        session,
        &endpoint.upstreams[pos],
        body,
        id,
        accept,
        progress,
    )
    .await
}

/// Whether a request asks for progress (then its token is mapped). A scan,
/// not a parse: most requests have none.
fn wants_progress(params: Option<&serde_json::value::RawValue>) -> bool {
    params.is_some_and(|p| p.get().contains("progressToken"))
}

/// Route by resource URI: the learned map, else the single upstream, else
/// ask each upstream in turn until one knows it.
async fn by_uri(
    ctx: &Arc<Ctx>,
    session: &Arc<Session>,
    uri: &str,
    body: Bytes,
    id: &str,
    accept: Accept,
    progress: bool,
) -> Response<Body> {
    let endpoint = session.endpoint();
    if !endpoint.namespaced() {
        return passthrough(
            ctx,
            session,
            &endpoint.upstreams[0],
            body,
            id,
            accept,
            progress,
        )
        .await;
    }
    let known = session
        .relay
        .resource_routes
        .lock()
        .ok()
        .and_then(|m| m.get(uri).cloned())
        .and_then(|upstream| {
            endpoint
                .upstreams
                .iter()
                .find(|u| u.id == upstream)
                .cloned()
        });
    if let Some(server) = known {
        return passthrough(ctx, session, &server, body, id, accept, progress).await;
    }
    let mut last_error = None;
    for server in endpoint.upstreams.iter() {
        let deadline = Instant::now() + server.request_timeout();
        let attempt = async {
            let us = ctx.registry.get(session, server).await?;
            let resp = us.send(body.clone(), deadline).await?;
            read_answer(server, resp, id, deadline).await
        };
        match attempt.await {
            Ok(message) => match jsonrpc::answer(&message) {
                Some(jsonrpc::Answer::Result(_)) => {
                    if let Ok(mut m) = session.relay.resource_routes.lock() {
                        m.insert(uri.to_owned(), server.id.clone());
                    }
                    return rpc(accept, StatusCode::OK, message);
                }
                _ => last_error = Some(message),
            },
            Err(e) => debug!(upstream = %server.id, error = %e, "resource lookup failed"),
        }
    }
    let message = last_error.unwrap_or_else(|| {
        jsonrpc::error(
            id,
            RESOURCE_NOT_FOUND,
            &format!("Resource not found: {uri}"),
            None,
        )
    });
    rpc(accept, StatusCode::OK, message)
}

/// `completion/complete`: by prompt name or resource URI in `params.ref`.
async fn complete(
    ctx: &Arc<Ctx>,
    session: &Arc<Session>,
    env: &jsonrpc::Envelope<'_>,
    body: &Bytes,
    accept: Accept,
) -> Response<Body> {
    #[derive(Deserialize)]
    struct Ref<'a> {
        #[serde(rename = "type", borrow)]
        kind: Cow<'a, str>,
        #[serde(borrow, default)]
        name: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        uri: Option<Cow<'a, str>>,
    }
    #[derive(Deserialize)]
    struct P<'a> {
        #[serde(rename = "ref", borrow)]
        reference: Ref<'a>,
    }
    let id = env.id_raw();
    let Some(params) = env.params else {
        return invalid_params(accept, id, "completion/complete needs params.ref");
    };
    let Ok(p) = serde_json::from_str::<P<'_>>(params.get()) else {
        return invalid_params(accept, id, "completion/complete needs params.ref");
    };
    match (p.reference.kind.as_ref(), p.reference.name, p.reference.uri) {
        ("ref/prompt", Some(name), _) => {
            let endpoint = session.endpoint();
            let Some((pos, upstream_name)) = endpoint.resolve(&name) else {
                return invalid_params(accept, id, &format!("Unknown prompt: {name}"));
            };
            let body = if upstream_name == name {
                body.clone()
            } else {
                let Ok(obj) = serde_json::from_str::<jsonrpc::RawObject<'_>>(params.get()) else {
                    return invalid_params(accept, id, "params must be an object");
                };
                let Some(new_ref) = obj.get("ref").and_then(|r| {
                    jsonrpc::with_member(r.get(), "name", &jsonrpc::json_string(upstream_name))
                }) else {
                    return invalid_params(accept, id, "params.ref must be an object");
                };
                match jsonrpc::with_param(body, params.get(), "ref", &new_ref) {
                    Some(b) => Bytes::from(b),
                    None => return invalid_params(accept, id, "params must be an object"),
                }
            };
            let progress = wants_progress(env.params);
            passthrough(
                ctx,
                session,
                &endpoint.upstreams[pos],
                body,
                id,
                accept,
                progress,
            )
            .await
        }
        ("ref/resource", _, Some(uri)) => {
            let progress = wants_progress(env.params);
            by_uri(ctx, session, &uri, body.clone(), id, accept, progress).await
        }
        _ => invalid_params(
            accept,
            id,
            "params.ref must be ref/prompt with name or ref/resource with uri",
        ),
    }
}

/// Send the same request to every upstream of the session (e.g.
/// `logging/setLevel`); succeed if any upstream did.
async fn broadcast(
    ctx: &Arc<Ctx>,
    session: &Arc<Session>,
    method: &str,
    env: &jsonrpc::Envelope<'_>,
    accept: Accept,
) -> Response<Body> {
    let params = env.params.map(|p| p.get().to_owned());
    let mut set = tokio::task::JoinSet::new();
    for server in session.endpoint().upstreams.iter() {
        let (ctx, session, params, method, server) = (
            ctx.clone(),
            session.clone(),
            params.clone(),
            method.to_owned(),
            server.clone(),
        );
        set.spawn(async move {
            let deadline = Instant::now() + server.request_timeout();
            let us = ctx.registry.get(&session, &server).await.ok()?;
            let answer = us.call(&method, params.as_deref(), deadline).await.ok()?;
            matches!(jsonrpc::answer(&answer), Some(jsonrpc::Answer::Result(_))).then_some(())
        });
    }
    let mut any = false;
    while let Some(r) = set.join_next().await {
        any |= matches!(r, Ok(Some(())));
    }
    let id = env.id_raw();
    if any {
        rpc(accept, StatusCode::OK, jsonrpc::result(id, "{}"))
    } else {
        rpc_error(
            accept,
            StatusCode::OK,
            id,
            jsonrpc::INTERNAL_ERROR,
            &format!("no upstream accepted {method}"),
        )
    }
}

/// The hot path: the client's bytes to one upstream of the session, the
/// upstream's answer streamed back. A 404 from the upstream (it forgot the
/// session) starts a new upstream session and retries once: the request was
/// not processed. Other failures are answered, never retried, so a tool
/// call is never run twice. While it runs the call is registered with the
/// session's relay (cancellation, progress, server requests in its stream).
async fn passthrough(
    ctx: &Arc<Ctx>,
    session: &Arc<Session>,
    server: &Arc<UpstreamServer>,
    body: Bytes,
    id: &str,
    accept: Accept,
    progress: bool,
) -> Response<Body> {
    let deadline = Instant::now() + server.request_timeout();
    let (body, token) = match progress.then(|| Relay::map_progress(&body)).flatten() {
        Some((rewritten, token)) => (rewritten, Some(token)),
        None => (body, None),
    };
    let mut retried = false;
    loop {
        let us = match ctx.registry.get(session, server).await {
            Ok(us) => us,
            Err(e) => return upstream_failure(ctx, accept, id, session, &e),
        };
        let mut call = CallGuard::start(&session.relay, &us, id, token.as_ref());
        let sent = tokio::select! {
            sent = us.send(body.clone(), deadline) => sent,
            _ = call.interrupted() => return cancelled(accept, id),
        };
        match sent {
            Ok(resp) => {
                return answer_call(ctx, session, resp, accept, id, deadline, server, call).await;
            }
            Err(e) => {
                // Only a timed-out call may still be running upstream; the
                // guard cancels it there when dropped unfinished.
                if !matches!(e, UpstreamError::Timeout { .. }) {
                    call.finish();
                }
                if e.evicts() {
                    ctx.registry.evict(session, &us, &e).await;
                }
                if matches!(e, UpstreamError::SessionGone { .. }) && !retried {
                    warn!(session = %session.id, upstream = %server.id,
                        "upstream lost its session; starting a new upstream session (its state is gone)");
                    retried = true;
                    continue;
                }
                return upstream_failure(ctx, accept, id, session, &e);
            }
        }
    }
}

/// The answer to a call the client cancelled (it ignores it, but an HTTP
/// request needs one). -32800 is the code JSON-RPC peers use for it (LSP);
/// MCP names none.
fn cancelled(accept: Accept, id: &str) -> Response<Body> {
    rpc_error(
        accept,
        StatusCode::OK,
        id,
        REQUEST_CANCELLED,
        "Request cancelled by the client",
    )
}

fn upstream_failure(
    ctx: &Ctx,
    accept: Accept,
    id: &str,
    session: &Session,
    e: &UpstreamError,
) -> Response<Body> {
    failed_call(ctx, accept, StatusCode::OK, id, session, e)
}

/// An upstream answer that arrived but cannot be passed on (cut short,
/// malformed, too large, or the answer to another request): 502, as the
/// client gets no answer from the upstream, with a JSON-RPC error for its
/// request.
fn bad_answer(
    ctx: &Ctx,
    accept: Accept,
    id: &str,
    session: &Session,
    e: &UpstreamError,
) -> Response<Body> {
    failed_call(ctx, accept, StatusCode::BAD_GATEWAY, id, session, e)
}

fn failed_call(
    ctx: &Ctx,
    accept: Accept,
    status: StatusCode,
    id: &str,
    session: &Session,
    e: &UpstreamError,
) -> Response<Body> {
    warn!(session = %session.id, error = %e, "upstream request failed");
    if !matches!(e, UpstreamError::Initialize { .. }) {
        // Initialize failures are counted where the registry makes them.
        ctx.metrics
            .upstream_errors
            .with_label_values(&[e.upstream(), e.kind()])
            .inc();
    }
    rpc_error(accept, status, id, jsonrpc::INTERNAL_ERROR, &e.to_string())
}

/// Pass an upstream answer back in a format the client takes. A JSON answer
/// is read whole (usually it came whole with its head: no copy) and passed
/// on untouched once its id is the request's; an SSE answer goes through
/// the relay, which rewrites ids and tokens and routes server requests, and
/// is streamed to an SSE client or reduced to its response for a JSON one.
#[allow(clippy::too_many_arguments)]
async fn answer_call(
    ctx: &Ctx,
    session: &Arc<Session>,
    resp: Response<UpstreamBody>,
    accept: Accept,
    id: &str,
    deadline: Instant,
    server: &UpstreamServer,
    mut call: CallGuard,
) -> Response<Body> {
    let ct = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let upstream_sse = ct.trim_start().starts_with("text/event-stream");
    let upstream_json = ct.trim_start().starts_with("application/json");
    if upstream_json {
        // The upstream has answered; nothing is left to cancel.
        call.finish();
        let (mut parts, body) = resp.into_parts();
        let unfit = body.unfit();
        let held = match answer_budget::read_whole(body, deadline).await {
            Ok(held) => held,
            Err(e) => return bad_answer(ctx, accept, id, session, &server.answer_error(e)),
        };
        // Checked before a byte goes out: an answer left on a pooled
        // connection by an upstream that answered twice must never reach
        // the request (perhaps another session's) sent on it next.
        if let Err(e) = upstream::check_answer_id(server, &held.bytes, id, &unfit) {
            return bad_answer(ctx, accept, id, session, &e);
        }
        if !accept.json {
            return rpc(accept, StatusCode::OK, held.bytes);
        }
        // The upstream's answer headers, emptied, carry ours: the map is
        // already allocated.
        parts.headers.clear();
        parts
            .headers
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        parts.status = StatusCode::OK;
        return Response::from_parts(parts, held.into_body());
    }
    if !upstream_sse {
        call.finish();
        let e = UpstreamError::Protocol {
            upstream: server.id.clone(),
            reason: format!("answer has content type {ct:?}"),
        };
        return bad_answer(ctx, accept, id, session, &e);
    }
    let relay = session.relay.clone();
    let closed = session.close_signal();
    if !accept.sse {
        return match Box::pin(relay::pump_call(
            relay,
            call,
            resp.into_body(),
            None,
            deadline,
            closed,
        ))
        .await
        {
            PumpEnd::Answer(message) => rpc(accept, StatusCode::OK, message),
            PumpEnd::ClientGone => rpc_error(
                accept,
                StatusCode::OK,
                id,
                jsonrpc::INTERNAL_ERROR,
                "the session ended during the call",
            ),
            PumpEnd::Cancelled => cancelled(accept, id),
            PumpEnd::Failed(e) => bad_answer(ctx, accept, id, session, &e),
        };
    }
    let (tx, rx) = mpsc::channel::<Bytes>(relay::STREAM_QUEUE);
    let id = id.to_owned();
    let body = resp.into_body();
    tokio::spawn(async move {
        if let PumpEnd::Failed(e) =
            relay::pump_call(relay, call, body, Some(tx.clone()), deadline, closed).await
        {
            warn!(error = %e, "streamed call failed");
            let message = jsonrpc::error(&id, jsonrpc::INTERNAL_ERROR, &e.to_string(), None);
            let _ = tx.send(crate::sse::message_event(&message)).await;
        }
    });
    let mut r = Response::new(body::channel(rx));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// A notification from the client. Cancellation goes to the one upstream
/// session running the request, never to the others; the gateway already
/// sent `notifications/initialized` to each upstream itself; anything else
/// (roots/list_changed, unknown ones) concerns every upstream session of
/// the session that exists.
async fn client_notification(
    session: &Arc<Session>,
    method: &str,
    env: &jsonrpc::Envelope<'_>,
    body: &Bytes,
) -> Response<Body> {
    match method {
        "notifications/initialized" => {}
        "notifications/cancelled" => match session.relay.cancel_target(env.params) {
            Some(call) => {
                let us = call.upstream();
                info!(session = %session.id, upstream = %us.server.id, "client cancelled a call");
                if let Err(e) = relay::deliver_upstream(us, body.clone()).await {
                    warn!(session = %session.id, error = %e, "relaying a cancellation failed");
                }
                // Only now: the upstream hears of the cancel before the call's
                // connection to it goes away.
                call.interrupt();
            }
            None => {
                debug!(session = %session.id, "cancellation of a request not in flight; ignored")
            }
        },
        "notifications/progress" => match session.relay.client_progress(env.params, body) {
            // Progress on a server request: to the upstream that asked.
            Some((us, rewritten)) => {
                if let Err(e) = relay::deliver_upstream(&us, rewritten).await {
                    debug!(session = %session.id, error = %e, "relaying progress failed");
                }
            }
            None => {
                debug!(session = %session.id, "progress for no pending server request; dropped")
            }
        },
        _ => {
            let mut set = tokio::task::JoinSet::new();
            for us in session.upstreams.live() {
                let body = body.clone();
                set.spawn(async move {
                    if let Err(e) = relay::deliver_upstream(&us, body).await {
                        debug!(upstream = %us.server.id, error = %e, "relaying a notification failed");
                    }
                });
            }
            while set.join_next().await.is_some() {}
        }
    }
    accepted()
}

/// The client's answer to a server→client request: to the upstream that
/// asked, with its own id.
async fn client_response(
    session: &Arc<Session>,
    env: &jsonrpc::Envelope<'_>,
    body: &Bytes,
    accept: Accept,
) -> Response<Body> {
    let result = match session.relay.take_answer(env.id_raw(), body) {
        Ok((us, rewritten)) => relay::deliver_upstream(&us, rewritten)
            .await
            .map_err(relay::AnswerError::from),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => accepted(),
        Err(e) => {
            info!(session = %session.id, id = env.id_raw(), error = %e, "client response not relayed");
            rpc_error(
                accept,
                e.status(),
                "null",
                jsonrpc::INVALID_REQUEST,
                &e.to_string(),
            )
        }
    }
}

/// The session's server stream: open until the session ends or the worker
/// stops, with keep-alive comments so proxies do not time it out.
fn get(ctx: &Arc<Ctx>, session: Option<Arc<Session>>, accept: Accept) -> Response<Body> {
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
                _ = became_true(&mut closed) => break,
                _ = became_true(&mut stopping) => break,
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

/// Rebuild a session this worker inherited (its owner died and the store
/// moved it here) from its record, re-attaching every upstream session by
/// its stored id: no new `initialize`, so upstream state carries on.
async fn resume(ctx: &Arc<Ctx>, id: &SessionId) -> Option<Arc<Session>> {
    let record = match ctx.store.fetch(id).await {
        Lookup::CachedAbsent => {
            ctx.metrics.store_fetches_cached.inc();
            return None;
        }
        Lookup::Asked(answer) => {
            let label = match &answer {
                Fetched::Record(_) => "record",
                Fetched::Absent => "absent",
                Fetched::Withheld => "withheld",
            };
            ctx.metrics.store_fetches.with_label_values(&[label]).inc();
            answer.into_record()?
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
        return None;
    };
    let session = Arc::new(Session::new(
        *id,
        endpoint.clone(),
        version,
        record.init_params.into(),
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
    Some(session)
}

/// Resolves once the flag is (or becomes) true, or its sender is gone.
pub(crate) async fn became_true(flag: &mut tokio::sync::watch::Receiver<bool>) {
    while !*flag.borrow_and_update() {
        if flag.changed().await.is_err() {
            return;
        }
    }
}

/// End the session: close its upstream sessions (bounded), then answer.
async fn delete(ctx: &Arc<Ctx>, session: Option<Arc<Session>>, accept: Accept) -> Response<Body> {
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

/// This worker's sessions and upstream sessions as JSON.
fn snapshot(ctx: &Ctx) -> Response<Body> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn req(name: http::HeaderName, values: &[&'static str]) -> Request<()> {
        let mut r = Request::new(());
        for v in values {
            r.headers_mut()
                .append(name.clone(), HeaderValue::from_static(v));
        }
        r
    }

    fn accept(values: &[&'static str]) -> (bool, bool) {
        let a = Accept::of(&req(ACCEPT, values));
        (a.json, a.sse)
    }

    #[test]
    fn accept_lists_are_read_case_insensitively_with_or_without_the_fast_path() {
        assert_eq!(
            accept(&["application/json, text/event-stream"]),
            (true, true)
        );
        assert_eq!(
            accept(&["Application/JSON;q=0.9 , TEXT/event-stream"]),
            (true, true)
        );
        assert_eq!(
            accept(&["application/json", "text/event-stream"]),
            (true, true)
        );
        assert_eq!(accept(&["application/json"]), (true, false));
        assert_eq!(accept(&["text/*"]), (false, true));
        assert_eq!(accept(&["*/*"]), (true, true));
        assert_eq!(accept(&["image/png"]), (false, false));
        // No Accept at all: lenient.
        assert_eq!(accept(&[]), (true, true));
    }

    #[test]
    fn json_content_types() {
        let is = |v: &'static str| is_json_content_type(&req(CONTENT_TYPE, &[v]));
        assert!(is("application/json"));
        assert!(is("Application/Json; charset=utf-8"));
        assert!(!is("text/plain"));
        assert!(!is_json_content_type(&Request::new(())));
    }
}
