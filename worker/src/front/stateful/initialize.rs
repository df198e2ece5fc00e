//! `initialize`: a new session, admitted under the session caps, its
//! record written before the client learns its id, its upstream sessions
//! opened before it answers so the answer can say who is behind it.

use crate::front::common::{Caller, SESSION_LIMIT};
use crate::route::reply::{Accept, invalid_params, rpc, rpc_error};
use std::borrow::Cow;
use std::sync::Arc;

use http::{HeaderValue, Response, StatusCode};
use mcpgw_mcp::headers::MCP_SESSION_ID;
use mcpgw_protocol::session_id::SessionId;
use serde::Deserialize;
use tracing::{info, warn};

use crate::ctx::Ctx;
use crate::endpoints::Endpoint;
use crate::front::identity::EndpointIdentity;
use crate::http::body::Body;
use crate::jsonrpc;
use crate::metrics::{Outcome, OutcomeSlot};
use crate::session::Session;
use crate::session::store::OpenRefused;
use crate::upstream::UpstreamSession;
use crate::versions;
use mcpgw_protocol::store::{SessionCap, SessionCaps, SessionRecord};

/// Open a session. What it keeps for its life is bounded: the params (the
/// only part the client fills) up to `max_session_params_bytes`, the rest
/// fixed-size or from the configuration. It is admitted under the session
/// caps by the supervisor, which stores its record in the same step
/// ([`crate::session::store::StoreClient::open`]); past a cap the client gets
/// [`SESSION_LIMIT`] and no other session is touched.
pub(crate) async fn initialize(
    ctx: &Arc<Ctx>,
    endpoint: Arc<Endpoint>,
    accept: Accept,
    env: &jsonrpc::Envelope<'_>,
    caller: &Caller,
    outcome: &OutcomeSlot,
) -> Response<Body> {
    let invalid_params = |accept, id: &str, message: &str| {
        outcome.set(Outcome::JsonrpcError);
        invalid_params(accept, id, message)
    };
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
    // With a principal the store counts sessions by it, under the
    // `[auth]` cap; without, by address under `[limits]`.
    let per_principal = caller.principal.as_ref().and(
        ctx.live()
            .auth
            .as_ref()
            .map(|g| g.max_sessions_per_principal),
    );
    let caps = SessionCaps {
        total: limits.max_sessions,
        per_worker: limits.max_sessions_per_worker,
        per_client: per_principal.unwrap_or(limits.max_sessions_per_client),
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
    // Tagged in a cluster, so that every host tells it from a forged id.
    let key = ctx.live().cluster_key.clone();
    let session_id = match SessionId::mint(ctx.id.slot, ctx.slot_count(), key.as_deref()) {
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
        principal: caller
            .principal
            .as_ref()
            .map_or_else(String::new, |p| p.id().to_owned()),
        client: caller.addr.map(|c| c.0.to_string()).unwrap_or_default(),
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
        if matches!(refused, OpenRefused::Cap(_)) {
            outcome.set(Outcome::JsonrpcError);
        }
        return session_refused(ctx, accept, id, refused, caps, caller);
    }
    let session = Arc::new(Session::new(
        session_id,
        endpoint,
        version,
        init_params.into_boxed_str(),
        caller
            .principal
            .as_ref()
            .map_or_else(Box::default, |p| Box::from(p.id())),
    ));
    ctx.sessions.insert(session.clone());
    info!(session = %session_id, version, requested = %p.protocol_version, "session created");
    let opened = open_upstreams(ctx, &session).await;
    let result = initialize_result(&session.endpoint(), version, &opened);
    let mut r = rpc(accept, StatusCode::OK, jsonrpc::result(id, &result));
    if let Ok(v) = HeaderValue::from_str(session_id.as_str()) {
        r.headers_mut().insert(MCP_SESSION_ID, v);
    }
    r
}

/// Open the session's upstream sessions now, concurrently, each bounded by
/// its upstream's request timeout: the answer to the client says what they
/// are. An upstream that cannot be reached is left out with a warning (its
/// session is opened on first use, as before). The registry's cell lock
/// keeps one upstream session per (session, upstream): the first call finds
/// the one made here.
async fn open_upstreams(ctx: &Arc<Ctx>, session: &Arc<Session>) -> Vec<Arc<UpstreamSession>> {
    let endpoint = session.endpoint();
    let mut set = tokio::task::JoinSet::new();
    for (pos, server) in endpoint.upstreams.iter().enumerate() {
        let (registry, session, server) = (ctx.registry.clone(), session.clone(), server.clone());
        set.spawn(async move { (pos, registry.get(&session, &server).await) });
    }
    let mut opened = Vec::with_capacity(endpoint.upstreams.len());
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((pos, Ok(us))) => opened.push((pos, us)),
            Ok((pos, Err(e))) => warn!(
                session = %session.id,
                upstream = %endpoint.upstreams[pos].id,
                error = %e,
                "upstream not reachable at initialize; left out of the answer"
            ),
            Err(e) => {
                warn!(session = %session.id, error = %e, "opening an upstream session failed")
            }
        }
    }
    // In endpoint order, so federated instructions read the same each time.
    opened.sort_by_key(|(pos, _)| *pos);
    opened.into_iter().map(|(_, us)| us).collect()
}

/// The `initialize` result: the version and who the endpoint is
/// ([`EndpointIdentity`]).
fn initialize_result(
    endpoint: &Endpoint,
    version: &str,
    opened: &[Arc<UpstreamSession>],
) -> String {
    use serde_json::{Map, Value};
    let who = EndpointIdentity::of(endpoint, opened);
    let mut result = Map::new();
    result.insert("protocolVersion".into(), Value::from(version));
    result.insert("capabilities".into(), who.capabilities);
    result.insert("serverInfo".into(), who.server_info);
    if let Some(text) = who.instructions {
        result.insert("instructions".into(), Value::from(text));
    }
    Value::Object(result).to_string()
}

/// The answer to an `initialize` past a session cap (HTTP 200, as every
/// JSON-RPC error to a well-formed request; the message names the cap and
/// its `[limits]` key), or when the supervisor could not admit it (503).
pub(crate) fn session_refused(
    ctx: &Ctx,
    accept: Accept,
    id: &str,
    refused: OpenRefused,
    caps: SessionCaps,
    caller: &Caller,
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
        SessionCap::Client if caller.principal.is_some() => (
            "you have",
            "auth.max_sessions_per_principal",
            caps.per_client,
        ),
        SessionCap::Client => (
            "your address has",
            "max_sessions_per_client",
            caps.per_client,
        ),
        SessionCap::Total => ("this gateway has", "max_sessions", caps.total),
    };
    info!(cap = cap.label(), limit, client = ?caller.addr.map(|c| c.0), principal = caller.principal.as_ref().map_or("-", |p| p.sub()), "initialize refused: session cap reached");
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
