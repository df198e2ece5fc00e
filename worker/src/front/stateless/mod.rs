//! The stateless MCP era (2026-07-28): every POST is one self-contained
//! request. Its `_meta` says who the client is and what it can do, its
//! headers repeat the method and name so that they can be routed without
//! a parse (and must agree with the body), and nothing outlives it: no
//! session id is minted or read, GET and DELETE have no meaning.
//!
//! In front of stateful upstreams, a request gets upstream sessions of its
//! own ([`PerRequest`]): opened with the client's capabilities and info,
//! used by this request alone, closed after it, so two clients (or two
//! requests of one client) never share upstream state. Routing is the same
//! as for the stateful era ([`crate::route`]); this front end only checks
//! the request, and completes each result as the revision requires
//! (`resultType`, cache hints).
//!
//! - [`meta`]: the request's `_meta` and its routing headers, checked.
//! - [`listen`]: `subscriptions/listen`, the one request answered with a
//!   stream.
//! - [`mrtr`]: a stateful upstream's question to a stateless client
//!   (`input_required`, the call parked until the client's retry).

mod listen;
mod meta;
pub(crate) mod mrtr;

use crate::front::common::{Caller, accepted};
use crate::front::identity::EndpointIdentity;
use crate::route::reply::{Accept, rpc};
use crate::route::source::{PerRequest, Source};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::BodyExt;
use mcpgw_mcp::headers::MCP_PROTOCOL_VERSION;
use mcpgw_mcp::version::{META_PROTOCOL_VERSION, ProtocolVersion};
use tracing::info;

use crate::ctx::Ctx;
use crate::endpoints::Endpoint;
use crate::front::stateless::meta::{Refusal, RequestMeta};
use crate::http::body::{self, Body};
use crate::http::server::ReqBody;
use crate::http::sse;
use crate::jsonrpc::{self, Answer, Kind, RawObject};
use crate::metrics::{Outcome, OutcomeSlot};
use crate::relay;
use crate::route;
use mcpgw_protocol::headers::FORWARDED;
use serde_json::value::RawValue;
use tokio::sync::mpsc;

/// The one stateless revision served.
pub(crate) const VERSION: ProtocolVersion = ProtocolVersion::V2026_07_28;

/// Every version a client may use here, newest first (`server/discover`'s
/// `supportedVersions`, and what a -32022 lists).
fn supported() -> impl Iterator<Item = &'static str> {
    ProtocolVersion::ALL.iter().rev().map(|v| v.as_str())
}

/// The stateful version the gateway speaks to a stateful upstream on a
/// stateless client's behalf.
const UPSTREAM_VERSION: ProtocolVersion = ProtocolVersion::LATEST_STATEFUL;

/// Methods the 2026-07-28 revision removed: a stateless client that sends
/// one gets "method not found", as from any server of the revision.
/// (`initialize` is one only when its `_meta` claims the revision, see
/// [`by_body`]; otherwise, whatever its headers say, it selects the
/// stateful era and opens a session, as the revision's
/// backward-compatibility rules have a dual-era server do.)
const REMOVED: [&str; 7] = [
    "initialize",
    "ping",
    "logging/setLevel",
    "resources/subscribe",
    "resources/unsubscribe",
    "tasks/list",
    "tasks/result",
];

/// A request of the stateless era by its headers: its `MCP-Protocol-Version`
/// names the stateless revision. Such a request's `Mcp-Session-Id` is
/// ignored, as the revision says.
pub(crate) fn by_header(headers: &HeaderMap) -> bool {
    headers
        .get(MCP_PROTOCOL_VERSION)
        .is_some_and(|v| ProtocolVersion::from_bytes(v.as_bytes()) == Some(VERSION))
}

/// A request without a session that is of the stateless era by its body:
/// `server/discover`, or per-request `_meta` naming a protocol version. A
/// scan, not a parse: it runs only for requests without a session. An
/// `initialize` is parsed (its `params._meta` must name a protocol
/// version): it is the stateful handshake unless it claims the revision
/// outright, so a client's info that happens to hold the key does not make
/// it stateless.
pub(crate) fn by_body(env: &jsonrpc::Envelope<'_>) -> bool {
    match env.kind() {
        Kind::Request("initialize") => env.params.is_some_and(claims_revision),
        Kind::Request("server/discover") => true,
        _ => env
            .params
            .is_some_and(|p| p.get().contains(META_PROTOCOL_VERSION)),
    }
}

/// Params whose `_meta` names a protocol version.
fn claims_revision(params: &RawValue) -> bool {
    #[derive(serde::Deserialize)]
    struct Params<'a> {
        #[serde(rename = "_meta", borrow, default)]
        meta: Option<RawObject<'a>>,
    }
    serde_json::from_str::<Params<'_>>(params.get())
        .ok()
        .and_then(|p| p.meta)
        .is_some_and(|meta| meta.get(META_PROTOCOL_VERSION).is_some())
}

/// GET or DELETE of a stateless client: there is no stream or session to
/// open or end.
pub(crate) fn no_session_method() -> Response<Body> {
    let mut r = crate::front::common::plain(
        StatusCode::METHOD_NOT_ALLOWED,
        "a stateless (2026-07-28) client has no session: use POST\n",
    );
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static("POST"));
    r
}

/// One stateless POST (not a batch: the caller refuses those) of
/// `principal` (for the endpoint's authorization rules).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn post(
    ctx: &Arc<Ctx>,
    endpoint: Arc<Endpoint>,
    accept: Accept,
    parts: &http::request::Parts,
    env: &jsonrpc::Envelope<'_>,
    body: &Bytes,
    outcome: &OutcomeSlot,
    caller: &Caller,
) -> Response<Body> {
    let headers = &parts.headers;
    let principal = caller.principal.as_ref();
    let id = env.id_raw();
    let method = match env.kind() {
        Kind::Request(m) => m,
        // The revision defines none a client would send over HTTP; they
        // are taken and dropped, as a server of the revision does.
        Kind::Notification(_) => return accepted(),
        Kind::Response | Kind::Invalid => {
            return refuse(
                accept,
                outcome,
                id,
                Refusal::Invalid("a stateless client sends requests only".into()),
            );
        }
    };
    let meta = match RequestMeta::check(headers, method, env.params) {
        Ok(meta) => meta,
        Err(refusal) => return refuse(accept, outcome, id, refusal),
    };
    if method == "tools/call"
        && let Some(name) = meta.name.as_deref()
        && let Err(refusal) = meta::check_param_headers(&endpoint, headers, name, meta.arguments)
    {
        return refuse(accept, outcome, id, refusal);
    }
    if method == "subscriptions/listen" {
        return match listen::serve(ctx, endpoint, accept, &meta, id, env.params, principal).await {
            Ok(stream) => stream,
            Err(refusal) => refuse(accept, outcome, id, refusal),
        };
    }
    if REMOVED.contains(&method) {
        return refuse(
            accept,
            outcome,
            id,
            Refusal::NoMethod(format!("Method not found: {method}")),
        );
    }
    // MRTR: the retry of a call the gateway parked (its `requestState` is
    // one of the gateway's handles), or a call that may ask its client.
    let may_ask = mrtr::may_ask(method);
    let call = |name| mrtr::Call {
        id,
        method,
        name,
        body,
        principal,
    };
    if may_ask && let Some(handle) = meta.request_state.as_deref().and_then(mrtr::Handle::parse) {
        // A slot beyond the pool's was never one that made a handle.
        let handle = match handle.and_then(|h| h.within(ctx.slot_count())) {
            Ok(handle) => handle,
            Err(bad) => return refuse(accept, outcome, id, Refusal::Meta(bad.to_string())),
        };
        if handle.slot != ctx.id.slot && !headers.contains_key(FORWARDED) {
            // The worker that holds the call answers; forwarded once.
            let mut request = http::Request::new(ReqBody::whole(body.clone()));
            *request.method_mut() = parts.method.clone();
            *request.uri_mut() = parts.uri.clone();
            *request.headers_mut() = parts.headers.clone();
            ctx.metrics.forwarded.with_label_values(&["out"]).inc();
            return Box::pin(ctx.forwarder.forward(
                handle.slot,
                request,
                principal,
                caller.addr.map(|a| a.0),
            ))
            .await;
        }
        return match mrtr::resume(
            ctx,
            handle,
            call(meta.name.as_deref()),
            meta.input_responses,
        )
        .await
        {
            Ok(message) => rpc(accept, StatusCode::OK, complete_result(message, false)),
            Err(bad) => refuse(accept, outcome, id, Refusal::Meta(bad.to_string())),
        };
    }
    let src = PerRequest::new(
        ctx.registry.clone(),
        endpoint,
        meta.upstream_init_params(UPSTREAM_VERSION.as_str()),
    );
    // A stateful upstream asks its client mid-call (a server request): the
    // call runs where it can be parked. Upstreams of the revision ask with
    // `input_required` results of their own, passed on as they are: then
    // the call is routed like any other request.
    if may_ask && src.relay().caps.can_be_asked() && !src.all_modern().await {
        let message = mrtr::start(ctx, src, call(meta.name.as_deref())).await;
        return rpc(
            accept,
            StatusCode::OK,
            complete_result(message, method == "resources/read"),
        );
    }
    if method == "server/discover" {
        let opened = src.open_all().await;
        let who = EndpointIdentity::of(&src.endpoint(), &opened);
        return rpc(
            accept,
            StatusCode::OK,
            jsonrpc::result(id, &discover_result(who)),
        );
    }
    // Routed as for any client, then completed for the revision. Answered
    // whole (the upstream sessions end with the request), unless the client
    // asked to hear how the request goes (a progress token) and takes SSE:
    // then an upstream's streamed answer is streamed on, its notifications
    // first.
    let cache_hints = matches!(
        method,
        "tools/list"
            | "prompts/list"
            | "resources/list"
            | "resources/templates/list"
            | "resources/read"
    );
    let routed = Accept {
        json: true,
        sse: accept.sse && route::wants_progress(env.params),
    };
    let env_route = ctx.route_env(outcome, principal);
    let env_route = route::env::Env {
        tool_call: method == "tools/call",
        ..env_route
    };
    let resp = route::request(env_route, &src, method, env, body, routed).await;
    if is_event_stream(&resp) {
        return completed_stream(resp, src, cache_hints);
    }
    drop(src);
    let status = resp.status();
    let message = match resp.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            info!(error = %e, "stateless answer could not be read");
            outcome.set(Outcome::UpstreamError);
            jsonrpc::error(
                id,
                jsonrpc::INTERNAL_ERROR,
                "the upstream answer could not be read",
                None,
            )
        }
    };
    rpc(accept, status, complete_result(message, cache_hints))
}

fn is_event_stream(resp: &Response<Body>) -> bool {
    resp.headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
}

/// A streamed answer passed on event by event, the JSON-RPC response in it
/// completed for the revision ([`complete_result`]); `src`, the request's
/// upstream sessions, is kept until the stream ends (or its client goes).
fn completed_stream(resp: Response<Body>, src: PerRequest, cache_hints: bool) -> Response<Body> {
    let (parts, mut inner) = resp.into_parts();
    let (tx, rx) = mpsc::channel::<Bytes>(relay::STREAM_QUEUE);
    tokio::spawn(async move {
        let _src = src;
        // The relay wrote these events and bounded them already.
        let mut parser = sse::Parser::default();
        let mut events = Vec::new();
        while let Some(Ok(frame)) = inner.frame().await {
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if parser.feed(&data, &mut events).is_err() {
                return;
            }
            for event in events.drain(..).filter(|e| !e.data.is_empty()) {
                let message = Bytes::from(event.data);
                let message = match jsonrpc::response_kind(&message, false) {
                    Some(_) => complete_result(message, cache_hints),
                    None => message,
                };
                if tx.send(sse::message_event(&message)).await.is_err() {
                    return;
                }
            }
        }
    });
    Response::from_parts(parts, body::channel(rx))
}

/// A refused request: the status and JSON-RPC error the revision gives
/// each reason, and a log line that says what was wrong.
fn refuse(accept: Accept, outcome: &OutcomeSlot, id: &str, refusal: Refusal) -> Response<Body> {
    info!(reason = %refusal, "stateless request refused");
    outcome.set(Outcome::JsonrpcError);
    let (status, code, data) = match &refusal {
        Refusal::Invalid(_) => (StatusCode::BAD_REQUEST, jsonrpc::INVALID_REQUEST, None),
        Refusal::Meta(_) => (StatusCode::BAD_REQUEST, jsonrpc::INVALID_PARAMS, None),
        Refusal::Header(_) => (StatusCode::BAD_REQUEST, jsonrpc::HEADER_MISMATCH, None),
        Refusal::Version(requested) => (
            StatusCode::BAD_REQUEST,
            jsonrpc::UNSUPPORTED_PROTOCOL_VERSION,
            Some(serde_json::json!({"supported": supported().collect::<Vec<_>>(), "requested": requested})
                    .to_string()),
        ),
        Refusal::NoMethod(_) => (StatusCode::NOT_FOUND, jsonrpc::METHOD_NOT_FOUND, None),
    };
    outcome.note_error_code(code.into());
    rpc(
        accept,
        status,
        jsonrpc::error(id, code, &refusal.to_string(), data.as_deref()),
    )
}

/// The `server/discover` result: every version served, who the endpoint
/// is, and no caching (what the upstreams offer may change with the
/// client's capabilities, and stateful upstreams give no lifetime).
fn discover_result(who: EndpointIdentity) -> String {
    let mut result = serde_json::json!({
        "resultType": "complete",
        "supportedVersions": supported().collect::<Vec<_>>(),
        "capabilities": who.capabilities,
        "ttlMs": 0,
        "cacheScope": "private",
        "_meta": {"io.modelcontextprotocol/serverInfo": who.server_info},
    });
    if let (Some(text), Some(obj)) = (who.instructions, result.as_object_mut()) {
        obj.insert("instructions".into(), serde_json::Value::from(text));
    }
    result.to_string()
}

/// A result as the revision requires it: `resultType` on every one, and
/// cache hints on lists and reads (`ttlMs` 0 and `private` when the
/// upstream gave none: a stateful upstream's results were never meant to
/// be cached or shared). Errors pass unchanged.
fn complete_result(message: Bytes, cache_hints: bool) -> Bytes {
    let Some(Answer::Result(result)) = jsonrpc::answer(&message) else {
        return message;
    };
    let raw = result.get().trim();
    let Some(rest) = raw.strip_prefix('{') else {
        return message;
    };
    let Ok(members) = serde_json::from_str::<RawObject<'_>>(raw) else {
        return message;
    };
    let mut added = String::with_capacity(64);
    let mut add = |key: &str, value: &str| {
        if members.get(key).is_none() {
            if !added.is_empty() {
                added.push(',');
            }
            jsonrpc::push_json_string(&mut added, key);
            added.push(':');
            added.push_str(value);
        }
    };
    add("resultType", "\"complete\"");
    if cache_hints {
        add("ttlMs", "0");
        add("cacheScope", "\"private\"");
    }
    if added.is_empty() {
        return message;
    }
    let mut completed = String::with_capacity(raw.len() + added.len() + 2);
    completed.push('{');
    completed.push_str(&added);
    if !members.0.is_empty() {
        completed.push(',');
    }
    completed.push_str(rest);
    let id = jsonrpc::response_kind(&message, false).map_or("null", |(id, _)| id);
    jsonrpc::result(id, &completed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result_of(message: &Bytes) -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_slice(message).expect("json");
        v["result"].clone()
    }

    #[test]
    fn initialize_is_stateless_only_when_its_meta_claims_a_version() {
        let params = |raw: &str| RawValue::from_string(raw.to_owned()).expect("json");
        assert!(claims_revision(&params(
            r#"{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}"#
        )));
        assert!(!claims_revision(&params(
            r#"{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"io.modelcontextprotocol/protocolVersion","version":"1"}}"#
        )));
        assert!(!claims_revision(&params(
            r#"{"_meta":{"progressToken":1}}"#
        )));
        assert!(!claims_revision(&params("[]")));
    }

    #[test]
    fn results_are_completed_once() {
        let m = complete_result(
            Bytes::from_static(br#"{"jsonrpc":"2.0","id":3,"result":{"tools":[]}}"#),
            true,
        );
        let r = result_of(&m);
        assert_eq!(r["resultType"], "complete");
        assert_eq!(r["ttlMs"], 0);
        assert_eq!(r["cacheScope"], "private");
        assert_eq!(r["tools"], serde_json::json!([]));
        let v: serde_json::Value = serde_json::from_slice(&m).expect("json");
        assert_eq!(v["id"], 3);

        let empty = complete_result(
            Bytes::from_static(br#"{"jsonrpc":"2.0","id":"a","result":{}}"#),
            false,
        );
        assert_eq!(
            result_of(&empty),
            serde_json::json!({"resultType": "complete"})
        );

        let given = Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":1,"result":{"resultType":"complete","ttlMs":5,"cacheScope":"public","tools":[]}}"#,
        );
        assert_eq!(complete_result(given.clone(), true), given);

        let error = Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"no"}}"#,
        );
        assert_eq!(complete_result(error.clone(), true), error);
    }
}
