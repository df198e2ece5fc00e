//! Era-neutral routing of one JSON-RPC request to the upstreams of an
//! endpoint: answered here (ping, merged lists), to one upstream by
//! `params.name` (namespaced) or by resource URI, broadcast to all
//! (`logging/setLevel`), or passed through when the endpoint has one
//! upstream. Nothing here reads HTTP headers or session ids.
//!
//! - [`lists`]: namespacing and merged lists.
//! - [`source`]: where a request's upstream sessions come from.
//! - [`env`]: what routing sees of the worker.
//! - [`call`]: running one call on one upstream and framing its answer.
//! - [`input`]: a 2026-07-28 upstream's `input_required` bridged for a
//!   stateful client (its input requests put to the client, then a retry).
//! - [`reply`]: answers and JSON-RPC errors in the client's format.

pub(crate) mod call;
pub(crate) mod env;
pub(crate) mod input;
pub(crate) mod lists;
pub(crate) mod reply;
pub(crate) mod source;
#[cfg(test)]
mod tests;

use crate::route::call::passthrough;
use crate::route::reply::{Accept, rpc, rpc_error};
use std::borrow::Cow;

use bytes::Bytes;
use http::{Response, StatusCode};
use serde::Deserialize;
use tokio::time::Instant;
use tracing::{debug, info};

use crate::authz::Kind;
use crate::http::body::Body;
use crate::jsonrpc::{self, RESOURCE_NOT_FOUND};
use crate::route::env::Env;
use crate::route::lists::ListKind;
use crate::route::source::Source;
use crate::upstream::read_answer;

/// Route one request that is not the lifecycle's own (`initialize` is
/// refused: the source is open already).
pub(crate) async fn request<S: Source>(
    ctx: Env<'_>,
    src: &S,
    method: &str,
    env: &jsonrpc::Envelope<'_>,
    body: &Bytes,
    accept: Accept,
) -> Response<Body> {
    let id = env.id_raw();
    let endpoint = src.endpoint();
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
        "tools/call" => {
            let ctx = Env {
                tool_call: true,
                ..ctx
            };
            by_name(ctx, src, env, body, accept, Kind::Tool).await
        }
        "prompts/get" => by_name(ctx, src, env, body, accept, Kind::Prompt).await,
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
                // A resource the caller may not use is as unknown as one
                // no upstream has (subscriptions included).
                Some(p) if !ctx.allows(&endpoint, Kind::Resource, &p.uri) => {
                    resource_not_found(ctx, accept, id, &p.uri)
                }
                Some(p) => {
                    let progress = wants_progress(env.params);
                    by_uri(ctx, src, &p.uri, body.clone(), id, accept, progress).await
                }
                None => ctx.invalid_params(accept, id, &format!("{method} needs params.uri")),
            }
        }
        "completion/complete" => complete(ctx, src, env, body, accept).await,
        "logging/setLevel" => {
            let resp = if namespaced {
                Box::pin(broadcast(ctx, src, method, env, accept)).await
            } else {
                passthrough(
                    ctx,
                    src,
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
                src.relay().set_log_level(p.get());
            }
            resp
        }
        m if !namespaced => {
            // One upstream: the gateway is transparent, lists and methods it
            // does not know included; lists are filtered when the endpoint
            // has authorization rules.
            if endpoint.authz.is_some()
                && let Some(kind) = ListKind::from_method(m)
            {
                let progress = wants_progress(env.params);
                return lists::filtered_list(ctx, src, kind, body.clone(), id, accept, progress)
                    .await;
            }
            let ctx = Env {
                learns_tools: m == "tools/list",
                ..ctx
            };
            passthrough(
                ctx,
                src,
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
                return match lists::merged_list(ctx, src, kind, p.cursor.as_deref()).await {
                    Ok(result) => rpc(accept, StatusCode::OK, jsonrpc::result(id, &result)),
                    Err(e) => ctx.invalid_params(accept, id, &e.to_string()),
                };
            }
            ctx.rpc_error(
                accept,
                id,
                jsonrpc::METHOD_NOT_FOUND,
                &format!("Method not found: {m}"),
            )
        }
    }
}

/// `tools/call` and `prompts/get`: route by `params.name`, strip the
/// namespace, pass through. A name the caller may not use gets the answer
/// of a name no upstream has.
pub(crate) async fn by_name<S: Source>(
    ctx: Env<'_>,
    src: &S,
    env: &jsonrpc::Envelope<'_>,
    body: &Bytes,
    accept: Accept,
    kind: Kind,
) -> Response<Body> {
    let what = kind.label();
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
        return ctx.invalid_params(accept, id, &format!("missing params.name ({what} name)"));
    };
    let Ok(p) = serde_json::from_str::<P<'_>>(params.get()) else {
        return ctx.invalid_params(accept, id, &format!("missing params.name ({what} name)"));
    };
    let endpoint = src.endpoint();
    if !ctx.allows(&endpoint, kind, &p.name) {
        return unknown_name(ctx, accept, id, kind, &p.name);
    }
    let Some((pos, upstream_name)) = endpoint.resolve(&p.name) else {
        info!(session = %src.who(), name = %p.name, what, "unknown name");
        return unknown_name(ctx, accept, id, kind, &p.name);
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
            None => return ctx.invalid_params(accept, id, "params must be an object"),
        }
    };
    let progress = p.meta.is_some_and(|m| m.progress_token.is_some());
    let server = &endpoint.upstreams[pos];
    if ctx.notes_route {
        ctx.outcome.note_route(&server.id, Some(&p.name));
    }
    let resp = passthrough(ctx, src, server, body, id, accept, progress).await;
    if ctx.tool_call {
        let outcome = ctx.outcome.outcome(resp.status());
        ctx.metrics.tool_call(&server.id, upstream_name, outcome);
    }
    resp
}

/// The gateway's answer to a tool or prompt name no upstream of the
/// endpoint has (and to one the caller may not use): -32602, as the MCP
/// spec has servers answer an unknown tool or prompt.
fn unknown_name(ctx: Env<'_>, accept: Accept, id: &str, kind: Kind, name: &str) -> Response<Body> {
    ctx.invalid_params(accept, id, &format!("Unknown {}: {name}", kind.label()))
}

/// The gateway's answer to a resource URI no upstream knows (and to one
/// the caller may not use): -32002, the MCP spec's "resource not found".
fn resource_not_found(ctx: Env<'_>, accept: Accept, id: &str, uri: &str) -> Response<Body> {
    ctx.rpc_error(
        accept,
        id,
        RESOURCE_NOT_FOUND,
        &format!("Resource not found: {uri}"),
    )
}

/// Whether a request asks for progress (then its token is mapped). A scan,
/// not a parse: most requests have none.
pub(crate) fn wants_progress(params: Option<&serde_json::value::RawValue>) -> bool {
    params.is_some_and(|p| p.get().contains("progressToken"))
}

/// Route by resource URI: the learned map, else the single upstream, else
/// ask each upstream in turn until one knows it.
pub(crate) async fn by_uri<S: Source>(
    ctx: Env<'_>,
    src: &S,
    uri: &str,
    body: Bytes,
    id: &str,
    accept: Accept,
    progress: bool,
) -> Response<Body> {
    let endpoint = src.endpoint();
    if ctx.notes_route
        && let Some(only) = endpoint.upstreams.first()
        && !endpoint.namespaced()
    {
        ctx.outcome.note_route(&only.id, Some(uri));
    }
    if !endpoint.namespaced() {
        return passthrough(ctx, src, &endpoint.upstreams[0], body, id, accept, progress).await;
    }
    let known = src
        .relay()
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
        if ctx.notes_route {
            ctx.outcome.note_route(&server.id, Some(uri));
        }
        return passthrough(ctx, src, &server, body, id, accept, progress).await;
    }
    let mut last_error = None;
    for server in endpoint.upstreams.iter() {
        let deadline = Instant::now() + server.request_timeout();
        let attempt = async {
            let us = src.upstream(server).await?;
            let resp = us
                .send_traced(body.clone(), deadline, ctx.outcome.trace())
                .await?;
            read_answer(server, resp, id, deadline).await
        };
        match attempt.await {
            Ok(message) => match jsonrpc::answer(&message) {
                Some(jsonrpc::Answer::Result(_)) => {
                    if ctx.notes_route {
                        ctx.outcome.note_route(&server.id, Some(uri));
                    }
                    if let Ok(mut m) = src.relay().resource_routes.lock() {
                        m.insert(uri.to_owned(), server.id.clone());
                    }
                    return rpc(accept, StatusCode::OK, message);
                }
                _ => last_error = Some(message),
            },
            Err(e) => debug!(upstream = %server.id, error = %e, "resource lookup failed"),
        }
    }
    match last_error {
        Some(message) => {
            ctx.outcome.set(crate::metrics::Outcome::JsonrpcError);
            rpc(accept, StatusCode::OK, message)
        }
        None => resource_not_found(ctx, accept, id, uri),
    }
}

/// `completion/complete`: by prompt name or resource URI in `params.ref`.
pub(crate) async fn complete<S: Source>(
    ctx: Env<'_>,
    src: &S,
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
        return ctx.invalid_params(accept, id, "completion/complete needs params.ref");
    };
    let Ok(p) = serde_json::from_str::<P<'_>>(params.get()) else {
        return ctx.invalid_params(accept, id, "completion/complete needs params.ref");
    };
    match (p.reference.kind.as_ref(), p.reference.name, p.reference.uri) {
        ("ref/prompt", Some(name), _) => {
            let endpoint = src.endpoint();
            if !ctx.allows(&endpoint, Kind::Prompt, &name) {
                return unknown_name(ctx, accept, id, Kind::Prompt, &name);
            }
            let Some((pos, upstream_name)) = endpoint.resolve(&name) else {
                return unknown_name(ctx, accept, id, Kind::Prompt, &name);
            };
            let body = if upstream_name == name {
                body.clone()
            } else {
                let Ok(obj) = serde_json::from_str::<jsonrpc::RawObject<'_>>(params.get()) else {
                    return ctx.invalid_params(accept, id, "params must be an object");
                };
                let Some(new_ref) = obj.get("ref").and_then(|r| {
                    jsonrpc::with_member(r.get(), "name", &jsonrpc::json_string(upstream_name))
                }) else {
                    return ctx.invalid_params(accept, id, "params.ref must be an object");
                };
                match jsonrpc::with_param(body, params.get(), "ref", &new_ref) {
                    Some(b) => Bytes::from(b),
                    None => return ctx.invalid_params(accept, id, "params must be an object"),
                }
            };
            let progress = wants_progress(env.params);
            passthrough(
                ctx,
                src,
                &endpoint.upstreams[pos],
                body,
                id,
                accept,
                progress,
            )
            .await
        }
        ("ref/resource", _, Some(uri)) if !ctx.allows(&src.endpoint(), Kind::Resource, &uri) => {
            resource_not_found(ctx, accept, id, &uri)
        }
        ("ref/resource", _, Some(uri)) => {
            let progress = wants_progress(env.params);
            by_uri(ctx, src, &uri, body.clone(), id, accept, progress).await
        }
        _ => ctx.invalid_params(
            accept,
            id,
            "params.ref must be ref/prompt with name or ref/resource with uri",
        ),
    }
}

/// Send the same request to every upstream of the endpoint (e.g.
/// `logging/setLevel`); succeed if any upstream did.
pub(crate) async fn broadcast<S: Source>(
    ctx: Env<'_>,
    src: &S,
    method: &str,
    env: &jsonrpc::Envelope<'_>,
    accept: Accept,
) -> Response<Body> {
    let params = env.params.map(|p| p.get());
    let endpoint = src.endpoint();
    let each = endpoint.upstreams.iter().map(|server| async move {
        let deadline = Instant::now() + server.request_timeout();
        let Ok(us) = src.upstream(server).await else {
            return false;
        };
        if us.is_modern() && crate::upstream::modern::REMOVED.contains(&method) {
            // The stateless revision has no such method (a log level could
            // travel in each request's `_meta` instead: not done yet).
            return false;
        }
        let Ok(answer) = us.call(method, params, deadline).await else {
            return false;
        };
        matches!(jsonrpc::answer(&answer), Some(jsonrpc::Answer::Result(_)))
    });
    let any = futures_util::future::join_all(each)
        .await
        .into_iter()
        .any(|accepted| accepted);
    let id = env.id_raw();
    if any {
        rpc(accept, StatusCode::OK, jsonrpc::result(id, "{}"))
    } else {
        ctx.rpc_error(
            accept,
            id,
            jsonrpc::INTERNAL_ERROR,
            &format!("no upstream accepted {method}"),
        )
    }
}
