//! The streams the relay reads: a call's SSE answer ([`pump_call`]) and the
//! upstream sessions' GET streams, while a session's client has its own open
//! ([`listen`]) or for a stateless client's subscription ([`follow`]).

use std::sync::Arc;
use std::time::Duration;

use crate::http::client::UpstreamBody;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, timeout_at};
use tracing::{debug, warn};

use super::route::{Routed, Source};
use super::{CallGuard, NOTICE_TIMEOUT, Relay};
use crate::http::sse;
use crate::upstream::{UpstreamError, UpstreamSession};

/// How a streamed call ended.
pub(crate) enum PumpEnd {
    /// The call's answer (already sent on the client's stream, if any).
    Answer(Bytes),
    /// The client's stream or the session went away; nobody to answer.
    ClientGone,
    /// The client cancelled the call; it ignores any answer.
    Cancelled,
    Failed(UpstreamError),
}

/// Stream an upstream call's SSE answer to the client (`out`), routing
/// every message in it; or, with no `out`, collect the answer. With
/// `hold_answer` the answer itself is not sent on `out`, only returned (its
/// caller may have more to do before the client sees it). Ends at the
/// answer, at `deadline`, when the client goes away or the session ends.
pub(crate) async fn pump_call(
    relay: Arc<Relay>,
    mut guard: CallGuard,
    mut body: UpstreamBody,
    out: Option<mpsc::Sender<Bytes>>,
    hold_answer: bool,
    deadline: Instant,
    mut session_closed: watch::Receiver<bool>,
) -> PumpEnd {
    let us = guard.call.upstream.clone();
    if let Some(tx) = &out {
        guard.set_stream(tx);
    }
    let mut parser = sse::Parser::default();
    let mut resumed = 0u32;
    let mut forwarded_retry = None;
    loop {
        let frame = tokio::select! {
            f = timeout_at(deadline, body.frame()) => f,
            _ = client_gone(out.as_ref()) => {
                debug!(upstream = %us.server.id, "client left during a streamed call");
                return PumpEnd::ClientGone;
            }
            _ = became_true(&mut session_closed) => return PumpEnd::ClientGone,
            _ = guard.call.interrupt.notified() => return PumpEnd::Cancelled,
        };
        let frame = match frame {
            Err(_) => return PumpEnd::Failed(us.server.timeout_error()),
            Ok(None) => {
                // An upstream that gave its events ids may close the stream
                // before the answer (SSE polling): come back for the rest.
                let Some(last) = parser.last_event_id().map(str::to_owned) else {
                    return PumpEnd::Failed(
                        us.server
                            .protocol_error("event stream ended without a response"),
                    );
                };
                resumed += 1;
                if resumed > MAX_RESUMPTIONS {
                    return PumpEnd::Failed(us.server.protocol_error(format!(
                        "event stream closed {MAX_RESUMPTIONS} times without a response"
                    )));
                }
                let wait = Duration::from_millis(parser.retry_ms().unwrap_or(0).min(MAX_RETRY_MS));
                tokio::time::sleep(wait).await;
                debug!(upstream = %us.server.id, last_event_id = %last, "resuming a call stream the upstream closed");
                match us.resume_stream(&last, deadline).await {
                    Ok(resp) => {
                        body = resp.into_body();
                        // A new stream: the broken one's unfinished event is
                        // void, and this one may open with a BOM.
                        parser.restart();
                        continue;
                    }
                    Err(e) => return PumpEnd::Failed(e),
                }
            }
            Ok(Some(Err(e))) => {
                return PumpEnd::Failed(
                    us.server.protocol_error(format!("reading the stream: {e}")),
                );
            }
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        parser.push(&data);
        while let Some(event) = parser.next_event() {
            // The upstream's reconnection time applies to the client's
            // stream too: pass it on (once per value).
            if let (Some(tx), Some(ms)) = (&out, parser.retry_ms())
                && forwarded_retry != Some(ms)
            {
                forwarded_retry = Some(ms);
                if tx
                    .send(Bytes::from(format!("retry: {ms}\n\n")))
                    .await
                    .is_err()
                {
                    return PumpEnd::ClientGone;
                }
            }
            match relay.route(&us, event.data, Source::Call(&guard.call)) {
                Routed::Response(answer) => {
                    if let Some(tx) = out.as_ref().filter(|_| !hold_answer)
                        && tx.send(sse::message_event(&answer)).await.is_err()
                    {
                        return PumpEnd::ClientGone;
                    }
                    guard.finish();
                    return PumpEnd::Answer(answer);
                }
                Routed::Foreign(got) => {
                    // Never passed on: it may be another request's answer.
                    body.unfit().set();
                    return PumpEnd::Failed(us.server.protocol_error(format!(
                        "answered another request (id {got}) on a call's stream; its connection is closed"
                    )));
                }
                Routed::Forward(message) => {
                    if let Some(tx) = &out
                        && tx.send(sse::message_event(&message)).await.is_err()
                    {
                        return PumpEnd::ClientGone;
                    }
                }
                Routed::Done => {}
            }
        }
        if let Some(end) = event_too_large(&parser, &us) {
            return end;
        }
    }
}

/// How often one call's stream may be resumed before the call fails.
const MAX_RESUMPTIONS: u32 = 100;
/// Longest reconnection wait honoured from an upstream's `retry:`.
const MAX_RETRY_MS: u64 = 5_000;

/// The relay holds an incomplete event up to the answer limit
/// (`limits.max_answer_bytes`).
fn event_too_large(parser: &sse::Parser, us: &UpstreamSession) -> Option<PumpEnd> {
    let limit = crate::upstream::answer_budget::max_answer();
    (parser.pending_bytes() > limit).then(|| {
        PumpEnd::Failed(us.server.protocol_error(format!(
            "an event over {limit} bytes (limits.max_answer_bytes)"
        )))
    })
}

/// Resolves when the client's stream receiver is gone; never without one.
async fn client_gone(out: Option<&mpsc::Sender<Bytes>>) {
    match out {
        Some(tx) => tx.closed().await,
        None => std::future::pending().await,
    }
}

/// A new upstream session of this session: it gets the client's logging
/// level, and is listened to if the client has its GET stream open.
pub(crate) fn upstream_created(relay: &Arc<Relay>, us: &Arc<UpstreamSession>) {
    listen(relay, us);
    if us.is_modern() {
        // A stateless (2026-07-28) upstream has no `logging/setLevel` (its
        // requests could carry the level in `_meta` instead: not done yet).
        return;
    }
    let level = relay.log_level.lock().ok().and_then(|l| l.clone());
    if let Some(params) = level {
        let us = us.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + NOTICE_TIMEOUT;
            if let Err(e) = us.call("logging/setLevel", Some(&params), deadline).await {
                debug!(upstream = %us.server.id, error = %e, "applying the logging level failed");
            }
        });
    }
}

/// Start listening to `us`'s GET stream on behalf of the session's open GET
/// stream, unless someone already does for this stream.
pub(crate) fn listen(relay: &Arc<Relay>, us: &Arc<UpstreamSession>) {
    let Some((generation, alive)) = relay.stream_alive() else {
        return;
    };
    if !us.claim_listener(generation) {
        return;
    }
    if us.is_modern() {
        // No session upstream, so no GET stream: a subscription instead.
        tokio::spawn(modern_session_loop(relay.clone(), us.clone(), alive));
        return;
    }
    tokio::spawn(listen_loop(
        relay.clone(),
        us.clone(),
        alive,
        Sink::Session,
        None,
    ));
}

/// Follow `us`'s GET stream for a subscription: what the relay forwards
/// from it goes to `tx` as raw JSON-RPC messages, until `alive`'s sender
/// is dropped. The receiver says whether the stream opened at the first
/// attempt (the upstream's acknowledgement); later attempts reconnect.
pub(crate) fn follow(
    relay: &Arc<Relay>,
    us: &Arc<UpstreamSession>,
    alive: watch::Receiver<()>,
    tx: mpsc::Sender<Bytes>,
) -> oneshot::Receiver<bool> {
    let (opened, acknowledged) = oneshot::channel();
    tokio::spawn(listen_loop(
        relay.clone(),
        us.clone(),
        alive,
        Sink::Subscription(tx),
        Some(opened),
    ));
    acknowledged
}

/// What a session's client hears of a stateless upstream: every kind of
/// list change (the stateful era had no filter; resource updates need a
/// subscription the session would have asked for, not bridged yet).
const SESSION_FILTER: &str =
    r#"{"toolsListChanged":true,"promptsListChanged":true,"resourcesListChanged":true}"#;

/// Keep a subscription open at a stateless upstream while the session's GET
/// stream is, reopening it with backoff, and route what comes on it there.
async fn modern_session_loop(
    relay: Arc<Relay>,
    us: Arc<UpstreamSession>,
    mut alive: watch::Receiver<()>,
) {
    let mut backoff = Duration::from_millis(250);
    loop {
        let deadline = Instant::now() + us.server.request_timeout();
        let opened = tokio::select! {
            o = open_modern(&us, SESSION_FILTER, deadline) => o,
            _ = alive.changed() => return,
        };
        if let Some((_, body, parser)) = opened {
            backoff = Duration::from_millis(250);
            if !pump_modern(&relay, &us, body, parser, &mut alive, &Sink::Session).await {
                return;
            }
            debug!(upstream = %us.server.id, "upstream subscription ended; reopening");
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = alive.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// A subscription of the gateway's own at a stateless (2026-07-28)
/// upstream, with `filter` (JSON): its acknowledged filter (what it
/// honours), or `None` when it gives none (an error, no stream, no answer
/// by `deadline`). What it sends after goes to `tx`, routed like any
/// upstream stream, until `alive`'s sender is dropped or the upstream ends
/// the subscription (then it is not asked again).
pub(crate) async fn follow_modern(
    relay: &Arc<Relay>,
    us: &Arc<UpstreamSession>,
    filter: &str,
    deadline: Instant,
    mut alive: watch::Receiver<()>,
    tx: mpsc::Sender<Bytes>,
) -> Option<serde_json::Value> {
    let (honoured, body, parser) = open_modern(us, filter, deadline).await?;
    let (relay, us) = (relay.clone(), us.clone());
    tokio::spawn(async move {
        let sink = Sink::Subscription(tx);
        pump_modern(&relay, &us, body, parser, &mut alive, &sink).await;
    });
    Some(honoured)
}

/// Send `subscriptions/listen` with `filter` and read up to its
/// acknowledgement: the acknowledged filter, the stream and its parser.
async fn open_modern(
    us: &UpstreamSession,
    filter: &str,
    deadline: Instant,
) -> Option<(serde_json::Value, UpstreamBody, sse::Parser)> {
    let request = format!(
        r#"{{"jsonrpc":"2.0","id":"mcpgw:listen","method":"subscriptions/listen","params":{{"notifications":{filter}}}}}"#
    );
    let resp = match us.send(Bytes::from(request), deadline).await {
        Ok(resp) => resp,
        Err(e) => {
            debug!(upstream = %us.server.id, error = %e, "subscriptions/listen refused");
            return None;
        }
    };
    let mut body = resp.into_body();
    let mut parser = sse::Parser::default();
    let limit = crate::upstream::answer_budget::max_answer();
    loop {
        if let Some(event) = parser.next_event() {
            let mut m: serde_json::Value = serde_json::from_str(&event.data).ok()?;
            if m["method"] != "notifications/subscriptions/acknowledged" {
                debug!(upstream = %us.server.id, message = %m, "subscriptions/listen not acknowledged");
                return None;
            }
            return Some((m["params"]["notifications"].take(), body, parser));
        }
        match timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    parser.push(&data);
                }
            }
            _ => return None,
        }
        if parser.pending_bytes() > limit {
            return None;
        }
    }
}

/// Route what a stateless upstream sends on its subscription to `sink`
/// until the subscription ends (true: open another) or nobody listens
/// (false).
async fn pump_modern(
    relay: &Arc<Relay>,
    us: &Arc<UpstreamSession>,
    mut body: UpstreamBody,
    mut parser: sse::Parser,
    alive: &mut watch::Receiver<()>,
    sink: &Sink,
) -> bool {
    let limit = crate::upstream::answer_budget::max_answer();
    loop {
        while let Some(event) = parser.next_event() {
            if !event.data.contains("\"method\"") {
                // The listen request's own result: the upstream ended it.
                return true;
            }
            if let Routed::Forward(message) = relay.route(us, event.data, Source::Stream)
                && !sink.send(relay, message).await
            {
                return false;
            }
        }
        let frame = tokio::select! {
            f = body.frame() => f,
            _ = alive.changed() => return false,
        };
        match frame {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    parser.push(&data);
                }
            }
            _ => return true,
        }
        if parser.pending_bytes() > limit {
            warn!(upstream = %us.server.id, "upstream subscription event too large; reopening");
            return true;
        }
    }
}

/// Where what an upstream says on its GET stream goes.
enum Sink {
    /// The session's GET stream, whichever is open now (SSE events).
    Session,
    /// A subscription's filter (raw messages).
    Subscription(mpsc::Sender<Bytes>),
}

impl Sink {
    /// Pass `message` on; false once nobody takes it any more.
    async fn send(&self, relay: &Relay, message: Bytes) -> bool {
        match self {
            Self::Session => match relay.server_stream() {
                Some((tx, _)) => tx.send(sse::message_event(&message)).await.is_ok(),
                None => false,
            },
            Self::Subscription(tx) => tx.send(message).await.is_ok(),
        }
    }
}

/// Keep the upstream session's GET stream open while `alive` says so,
/// reconnecting with backoff, and route what comes on it to `sink`.
/// `first` learns whether the first attempt opened the stream.
async fn listen_loop(
    relay: Arc<Relay>,
    us: Arc<UpstreamSession>,
    mut alive: watch::Receiver<()>,
    sink: Sink,
    mut first: Option<oneshot::Sender<bool>>,
) {
    let mut backoff = Duration::from_millis(250);
    loop {
        let deadline = Instant::now() + us.server.request_timeout();
        let opened = tokio::select! {
            r = us.open_stream(deadline) => r,
            _ = alive.changed() => return,
        };
        if let Some(first) = first.take() {
            // The receiver may have stopped waiting; nothing to tell then.
            let _ = first.send(opened.is_ok());
        }
        match opened {
            Ok(resp) => {
                backoff = Duration::from_millis(250);
                let mut body = resp.into_body();
                let mut parser = sse::Parser::default();
                loop {
                    let frame = tokio::select! {
                        f = body.frame() => f,
                        _ = alive.changed() => return,
                    };
                    let Some(Ok(frame)) = frame else { break };
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    parser.push(&data);
                    if parser.pending_bytes() > crate::upstream::answer_budget::max_answer() {
                        warn!(upstream = %us.server.id, "upstream GET stream event too large; reopening");
                        break;
                    }
                    while let Some(event) = parser.next_event() {
                        if let Routed::Forward(message) =
                            relay.route(&us, event.data, Source::Stream)
                            && !sink.send(&relay, message).await
                        {
                            return;
                        }
                    }
                }
                debug!(upstream = %us.server.id, "upstream GET stream ended; reopening");
            }
            Err(UpstreamError::Status { status, .. })
                if status == StatusCode::METHOD_NOT_ALLOWED =>
            {
                debug!(upstream = %us.server.id, "upstream offers no GET stream");
                return;
            }
            Err(e @ UpstreamError::SessionGone { .. }) => {
                debug!(upstream = %us.server.id, error = %e, "upstream session gone; stop listening");
                return;
            }
            Err(e) => {
                debug!(upstream = %us.server.id, error = %e, "opening the upstream GET stream failed");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = alive.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// Resolves once the flag is (or becomes) true, or its sender is gone.
pub(crate) async fn became_true(flag: &mut tokio::sync::watch::Receiver<bool>) {
    while !*flag.borrow_and_update() {
        if flag.changed().await.is_err() {
            return;
        }
    }
}
