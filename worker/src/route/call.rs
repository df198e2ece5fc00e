//! One call on one upstream session: the hot passthrough path (retry once
//! when the upstream lost its session), the call registered with the
//! relay while it runs, and its answer checked and passed back as JSON or
//! SSE.

use crate::metrics::Outcome;
use crate::route::reply::{Accept, rpc, rpc_error};
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::http::body::{self, Body};
use crate::http::client::UpstreamBody;
use crate::jsonrpc;
use crate::relay::{self, CallGuard, PumpEnd, Relay};
use crate::route::env::Env;
use crate::route::input::Bridge;
use crate::route::source::Source;
use crate::upstream::answer_budget;
use crate::upstream::{self, UpstreamError, UpstreamServer, UpstreamSession};

/// The hot path: the client's bytes to one upstream of the session, the
/// upstream's answer streamed back. A 404 from the upstream (it forgot the
/// session) starts a new upstream session and retries once: the request was
/// not processed. Other failures are answered, never retried, so a tool
/// call is never run twice. While it runs the call is registered with the
/// session's relay (cancellation, progress, server requests in its stream).
pub(crate) async fn passthrough<S: Source>(
    ctx: Env<'_>,
    src: &S,
    server: &Arc<UpstreamServer>,
    body: Bytes,
    id: &str,
    accept: Accept,
    progress: bool,
) -> Response<Body> {
    let started = Instant::now();
    if ctx.notes_route {
        ctx.outcome.note_route(&server.id, None);
    }
    let resp = call(ctx, src, server, body, id, accept, progress).await;
    server
        .counted
        .get_or_init(|| ctx.metrics.upstream_children(&server.id))
        .observe(
            ctx.outcome.outcome(resp.status()),
            started.elapsed().as_secs_f64(),
        );
    resp
}

async fn call<S: Source>(
    ctx: Env<'_>,
    src: &S,
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
        let us = match src.upstream(server).await {
            Ok(us) => us,
            Err(e) => return upstream_failure(ctx, accept, id, src.who(), &e),
        };
        let mut call = CallGuard::start(src.relay(), &us, id, token.as_ref());
        let sent = tokio::select! {
            sent = us.send_traced(body.clone(), deadline, ctx.outcome.trace()) => sent,
            _ = call.interrupted() => return ctx.cancelled(accept, id),
        };
        match sent {
            Ok(resp) => {
                let sent = Sent {
                    body: &body,
                    id,
                    token: token.as_ref(),
                };
                return answer_call(ctx, src, resp, accept, sent, deadline, server, call).await;
            }
            Err(e) => {
                // Only a timed-out call may still be running upstream; the
                // guard cancels it there when dropped unfinished.
                if !matches!(e, UpstreamError::Timeout { .. }) {
                    call.finish();
                }
                if e.evicts() {
                    src.evict(&us, &e).await;
                }
                if matches!(e, UpstreamError::SessionGone { .. }) && !retried {
                    warn!(session = %src.who(), upstream = %server.id,
                        "upstream lost its session; starting a new upstream session (its state is gone)");
                    retried = true;
                    continue;
                }
                return upstream_failure(ctx, accept, id, src.who(), &e);
            }
        }
    }
}

/// An upstream's error answer's code, for the request's span (parsed
/// only when the request has one).
fn note_error_code(ctx: Env<'_>, answer: &[u8]) {
    if let Some(jsonrpc::Answer::Error { code, .. }) = jsonrpc::answer(answer) {
        ctx.outcome.note_error_code(code);
    }
}

/// A `tools/list` answer's `Mcp-Param-*` annotations, learned.
fn learn_tools(server: &UpstreamServer, answer: &[u8]) {
    if let Some(jsonrpc::Answer::Result(result)) = jsonrpc::answer(answer) {
        server.tool_params.learn(result.get());
    }
}

/// A request as it went to the upstream: what a bridged `input_required`
/// needs to send it again.
#[derive(Clone, Copy)]
pub(crate) struct Sent<'a> {
    pub body: &'a Bytes,
    pub id: &'a str,
    /// (gateway token, the client's token) when the client asked for progress.
    pub token: Option<&'a (String, Box<str>)>,
}

/// What to do with an upstream answer, which may be a 2026-07-28
/// `input_required` result (the upstream asks the client something
/// mid-request, MRTR).
enum Input {
    /// Not one, or one the client gets as it is.
    PassOn,
    /// One the gateway answers for: its input requests go to the client.
    Bridge,
    Refuse(Response<Body>),
}

/// A stateless client gets an `input_required` as it is when its retry is
/// sure to reach the upstream that made it: on an endpoint with this one
/// upstream, or for a `tools/call` (routed by its namespaced name, so the
/// same name goes to the same upstream, with the `requestState`
/// untouched). A stateful client has it bridged ([`super::input`]) on the
/// call's SSE stream. Anyone else gets an error that says why, naming the
/// upstream. Only a 2026-07-28 upstream (`modern`) answers so: another's
/// answer is not scanned.
fn input_required<S: Source>(
    ctx: Env<'_>,
    src: &S,
    server: &UpstreamServer,
    modern: bool,
    accept: Accept,
    id: &str,
    message: &[u8],
) -> Input {
    if !modern || !upstream::modern::needs_input(message) {
        return Input::PassOn;
    }
    let why = match src.stands_alone() {
        true if ctx.tool_call || src.endpoint().upstreams.len() == 1 => return Input::PassOn,
        true => "its retry could reach another upstream of this endpoint",
        false if accept.sse => return Input::Bridge,
        false => "the client does not take text/event-stream, where it would be asked",
    };
    warn!(session = %src.who(), upstream = %server.id, why, "upstream asked for input (MRTR); not passed on");
    Input::Refuse(ctx.rpc_error(
        accept,
        id,
        jsonrpc::INTERNAL_ERROR,
        &format!("upstream {} needs input (MRTR): {why}", server.id),
    ))
}

/// A 2026-07-28 upstream refused a tool call's headers (-32020) for a tool
/// whose `Mcp-Param-*` headers this worker did not know (it was never
/// listed here): learn them from the upstream's `tools/list` and send the
/// call once more, as an SDK client does. `None` when nothing new was
/// learned (the refusal then stands).
async fn resend_with_params<S: Source>(
    ctx: Env<'_>,
    src: &S,
    server: &UpstreamServer,
    upstream: &Arc<UpstreamSession>,
    sent: Sent<'_>,
    accept: Accept,
    deadline: Instant,
) -> Option<Response<Body>> {
    #[derive(serde::Deserialize)]
    struct Call<'a> {
        #[serde(borrow)]
        params: Named<'a>,
    }
    #[derive(serde::Deserialize)]
    struct Named<'a> {
        #[serde(borrow)]
        name: std::borrow::Cow<'a, str>,
    }
    let name = serde_json::from_slice::<Call<'_>>(sent.body)
        .ok()?
        .params
        .name;
    if server.tool_params.of(&name).is_some() {
        return None;
    }
    let listed = upstream.call("tools/list", None, deadline).await.ok()?;
    if let Some(jsonrpc::Answer::Result(result)) = jsonrpc::answer(&listed) {
        server.tool_params.learn(result.get());
    }
    server.tool_params.of(&name)?;
    debug!(upstream = %server.id, tool = %name, "parameter headers learned after a -32020; sending the call again");
    let call = CallGuard::start(src.relay(), upstream, sent.id, sent.token);
    let resp = upstream
        .send_traced(sent.body.clone(), deadline, ctx.outcome.trace())
        .await
        .ok()?;
    Some(
        Box::pin(answer_call(
            ctx, src, resp, accept, sent, deadline, server, call,
        ))
        .await,
    )
}

/// The owned state of a bridged request (see [`super::input`]).
fn bridge<S: Source>(
    ctx: Env<'_>,
    src: &S,
    upstream: &Arc<UpstreamSession>,
    sent: Sent<'_>,
    deadline: Instant,
) -> Bridge {
    Bridge {
        relay: src.relay().clone(),
        upstream: upstream.clone(),
        request: sent.body.clone(),
        id: sent.id.to_owned(),
        token: sent.token.cloned(),
        deadline,
        closed: src.closed(),
        trace: ctx.outcome.trace().lines.into(),
        tool_call: ctx.tool_call,
    }
}

/// An SSE answer whose events come from `rx`.
fn event_stream(rx: mpsc::Receiver<Bytes>) -> Response<Body> {
    let mut r = Response::new(body::channel(rx));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

pub(crate) fn upstream_failure(
    ctx: Env<'_>,
    accept: Accept,
    id: &str,
    who: &dyn fmt::Display,
    e: &UpstreamError,
) -> Response<Body> {
    failed_call(ctx, accept, StatusCode::OK, id, who, e)
}

/// An upstream answer that arrived but cannot be passed on (cut short,
/// malformed, too large, or the answer to another request): 502, as the
/// client gets no answer from the upstream, with a JSON-RPC error for its
/// request.
pub(crate) fn bad_answer(
    ctx: Env<'_>,
    accept: Accept,
    id: &str,
    who: &dyn fmt::Display,
    e: &UpstreamError,
) -> Response<Body> {
    failed_call(ctx, accept, StatusCode::BAD_GATEWAY, id, who, e)
}

pub(crate) fn failed_call(
    ctx: Env<'_>,
    accept: Accept,
    status: StatusCode,
    id: &str,
    who: &dyn fmt::Display,
    e: &UpstreamError,
) -> Response<Body> {
    warn!(session = %who, error = %e, "upstream request failed");
    ctx.outcome.set(Outcome::UpstreamError);
    ctx.outcome.note_error_code(jsonrpc::INTERNAL_ERROR.into());
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
pub(crate) async fn answer_call<S: Source>(
    ctx: Env<'_>,
    src: &S,
    resp: Response<UpstreamBody>,
    accept: Accept,
    sent: Sent<'_>,
    deadline: Instant,
    server: &UpstreamServer,
    mut call: CallGuard,
) -> Response<Body> {
    let id = sent.id;
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
            Err(e) => return bad_answer(ctx, accept, id, src.who(), &server.answer_error(e)),
        };
        // Checked before a byte goes out: an answer left on a pooled
        // connection by an upstream that answered twice must never reach
        // the request (perhaps another session's) sent on it next.
        // The same scan tells a result from an error (and, for a tool
        // call, a failed tool) for the request's outcome.
        let kind = match upstream::check_answer_kind(server, &held.bytes, id, &unfit, ctx.tool_call)
        {
            Ok(kind) => kind,
            Err(e) => return bad_answer(ctx, accept, id, src.who(), &e),
        };
        ctx.outcome.set(Outcome::of_answer(kind));
        if kind == jsonrpc::AnswerKind::Error && ctx.outcome.traced() {
            note_error_code(ctx, &held.bytes);
        }
        if ctx.learns_tools {
            learn_tools(server, &held.bytes);
        }
        if ctx.tool_call
            && call.upstream().is_modern()
            && matches!(jsonrpc::answer(&held.bytes),
                Some(jsonrpc::Answer::Error { code, .. }) if code == i64::from(jsonrpc::HEADER_MISMATCH))
            // Boxed: a rare path that would otherwise widen every call's
            // future (and each future that awaits it) by its size.
            && let Some(resent) = Box::pin(resend_with_params(
                ctx,
                src,
                server,
                call.upstream(),
                sent,
                accept,
                deadline,
            ))
            .await
        {
            return resent;
        }
        // A 2026-07-28 upstream's error comes with its status (4xx, see
        // `UpstreamSession::accepted`); a client of the same revision gets
        // it too, a stateful client the 200 of its own.
        let status = match parts.status {
            s if s.is_client_error()
                && kind == jsonrpc::AnswerKind::Error
                && src.stands_alone() =>
            {
                s
            }
            _ => StatusCode::OK,
        };
        match input_required(
            ctx,
            src,
            server,
            call.upstream().is_modern(),
            accept,
            id,
            &held.bytes,
        ) {
            Input::PassOn => {}
            Input::Refuse(refused) => return refused,
            Input::Bridge => {
                let (tx, rx) = mpsc::channel::<Bytes>(relay::STREAM_QUEUE);
                let bridge = bridge(ctx, src, call.upstream(), sent, deadline);
                tokio::spawn(bridge.run(held.bytes, tx));
                return event_stream(rx);
            }
        }
        if !accept.json {
            return rpc(accept, status, held.bytes);
        }
        // The upstream's answer headers, emptied, carry ours: the map is
        // already allocated.
        parts.headers.clear();
        parts
            .headers
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        parts.status = status;
        return Response::from_parts(parts, held.into_body());
    }
    if !upstream_sse {
        call.finish();
        let e = UpstreamError::Protocol {
            upstream: server.id.clone(),
            reason: format!("answer has content type {ct:?}"),
        };
        return bad_answer(ctx, accept, id, src.who(), &e);
    }
    let relay = src.relay().clone();
    let closed = src.closed();
    if !accept.sse {
        let modern = call.upstream().is_modern();
        return match Box::pin(relay::pump_call(
            relay,
            call,
            resp.into_body(),
            None,
            false,
            deadline,
            closed,
        ))
        .await
        {
            PumpEnd::Answer(message) => {
                // The relay has rewritten this answer already; a top-level
                // scan (no parse) of it tells its outcome.
                if let Some((_, kind)) = jsonrpc::response_kind(&message, ctx.tool_call) {
                    ctx.outcome.set(Outcome::of_answer(kind));
                    if kind == jsonrpc::AnswerKind::Error && ctx.outcome.traced() {
                        note_error_code(ctx, &message);
                    }
                }
                if ctx.learns_tools {
                    learn_tools(server, &message);
                }
                match input_required(ctx, src, server, modern, accept, id, &message) {
                    // Without SSE the client cannot be asked (see above).
                    Input::PassOn | Input::Bridge => rpc(accept, StatusCode::OK, message),
                    Input::Refuse(refused) => refused,
                }
            }
            PumpEnd::ClientGone => ctx.rpc_error(
                accept,
                id,
                jsonrpc::INTERNAL_ERROR,
                "the session ended during the call",
            ),
            PumpEnd::Cancelled => ctx.cancelled(accept, id),
            PumpEnd::Failed(e) => bad_answer(ctx, accept, id, src.who(), &e),
        };
    }
    // Streamed to the client: the answer comes after the head, when the
    // request has been counted (as `ok`, by its 200). A 2026-07-28
    // upstream's answer to a stateful client is held back until it is
    // known not to ask for input, which is bridged instead.
    let (tx, rx) = mpsc::channel::<Bytes>(relay::STREAM_QUEUE);
    let bridge = (call.upstream().is_modern() && !src.stands_alone())
        .then(|| bridge(ctx, src, call.upstream(), sent, deadline));
    let learner = ctx.learns_tools.then(|| call.upstream().server.clone());
    let id = id.to_owned();
    let body = resp.into_body();
    tokio::spawn(async move {
        let hold = bridge.is_some();
        match relay::pump_call(relay, call, body, Some(tx.clone()), hold, deadline, closed).await {
            PumpEnd::Failed(e) => {
                warn!(error = %e, "streamed call failed");
                let message = jsonrpc::error(&id, jsonrpc::INTERNAL_ERROR, &e.to_string(), None);
                let _ = tx.send(crate::http::sse::message_event(&message)).await;
            }
            PumpEnd::Answer(answer) => {
                if let Some(server) = learner {
                    learn_tools(&server, &answer);
                }
                if let Some(bridge) = bridge {
                    // Sends the answer itself when it asks for nothing.
                    bridge.run(answer, tx).await;
                }
            }
            PumpEnd::ClientGone | PumpEnd::Cancelled => {}
        }
    });
    event_stream(rx)
}
