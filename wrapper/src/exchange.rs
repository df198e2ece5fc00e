//! One POST and everything the server says in answer to it.
//!
//! [`Bridge::exchange`] sends one message and delivers what comes back — an
//! `application/json` body, or a `text/event-stream` that may carry notifications and
//! server→client requests before the response — until every request it carries is
//! answered, by this answer or by someone else (the GET stream, a lost session). A
//! stream that breaks after the server gave event ids is resumed with GET and
//! `Last-Event-ID`. Everything is bounded by `--timeout`; whatever stays unanswered
//! gets a JSON-RPC error saying why ([`crate::failure::Failure`]).
//!
//! [`Bridge::deliver`] is the single place where a server message reaches stdout:
//! responses only through [`crate::pending::Pending::take`], so each request gets
//! exactly one answer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::StatusCode;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use mcpgw_mcp::headers::MCP_SESSION_ID;
use mcpgw_mcp::sse::{Parser, TooLarge};
use serde_json::Value;
use tokio::time::{Instant, timeout, timeout_at};
use tracing::{debug, warn};

use crate::bridge::Bridge;
use crate::failure::Failure;
use crate::jsonrpc::{self, IdKey, Kind};
use crate::session::Phase;
use crate::transport::{
    Routing, SessionHeaders, TransportError, media_type, next_chunk, read_body,
};

/// Largest JSON answer buffered, and largest single SSE event.
pub(crate) const MAX_ANSWER: usize = 64 * 1024 * 1024;
/// Most of an error body quoted in an error message.
const MAX_ERROR_BODY: usize = 64 * 1024;
const QUOTED_ERROR_CHARS: usize = 500;
/// Resumption of a broken answer stream: attempts in a row without a new event.
const MAX_RESUME_ATTEMPTS: u32 = 3;
/// Delay before resuming when the server did not say (`retry:`).
const DEFAULT_RETRY: Duration = Duration::from_secs(1);
/// Bound on the `notifications/cancelled` sent after a timeout.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// One message to send.
#[derive(Debug)]
pub(crate) struct Outgoing<'a> {
    pub(crate) body: Bytes,
    /// The pending requests it carries (none for a notification or a response).
    pub(crate) keys: Vec<IdKey>,
    pub(crate) routing: Routing<'a>,
    pub(crate) headers: SessionHeaders,
    pub(crate) generation: u64,
    /// Keep a copy of the responses to `keys` (for `initialize`).
    pub(crate) capture: bool,
}

/// What an exchange yielded besides the messages it delivered.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// The server accepted the message (a 2xx status).
    pub(crate) accepted: bool,
    /// The `Mcp-Session-Id` of the answer.
    pub(crate) session_id: Option<HeaderValue>,
    /// The responses to the exchange's requests, when captured.
    pub(crate) captured: Vec<Value>,
    pub(crate) transport_error: Option<TransportError>,
    pub(crate) failure: Option<Failure>,
}

impl Outcome {
    /// The session an `initialize` exchange established, if its answer was a result.
    pub(crate) fn established(&self) -> Option<Phase> {
        if !self.accepted {
            return None;
        }
        let result = self.captured.first()?.get("result")?;
        let protocol_version = result
            .get("protocolVersion")
            .and_then(Value::as_str)
            .and_then(|v| HeaderValue::from_str(v).ok());
        Some(Phase::Established {
            session_id: self.session_id.clone(),
            protocol_version,
        })
    }

    /// Why the exchange did not yield a result, for logs.
    pub(crate) fn describe_failure(&self) -> String {
        if let Some(failure) = &self.failure {
            return failure.to_string();
        }
        match self.captured.first().and_then(|a| a.get("error")) {
            Some(error) => format!("the server answered with an error: {error}"),
            None => "no answer".to_owned(),
        }
    }
}

/// Per-exchange bookkeeping while answers are delivered.
#[derive(Debug)]
pub(crate) struct Ctx {
    keys: Vec<IdKey>,
    capture: bool,
    outcome: Outcome,
    /// The message of an error the server sent with a null id (it could not read ours).
    stray_error: Option<String>,
}

/// How reading one SSE stream ended.
enum StreamEnd {
    AllAnswered,
    Ended,
    Broken(TransportError),
    TooLarge(TooLarge),
}

impl Bridge {
    /// Sends one message and delivers its answers; see the module docs.
    pub(crate) async fn exchange(self: &Arc<Self>, out: Outgoing<'_>) -> Outcome {
        let deadline = Instant::now() + self.options.timeout;
        let mut ctx = Ctx {
            keys: out.keys.clone(),
            capture: out.capture,
            outcome: Outcome::default(),
            stray_error: None,
        };
        let failure = match timeout_at(deadline, self.exchange_inner(&out, &mut ctx)).await {
            Err(_elapsed) => Some(Failure::Timeout {
                timeout: self.options.timeout,
            }),
            Ok(Err(failure)) => Some(failure),
            Ok(Ok(())) if self.all_answered(&ctx) => None,
            Ok(Ok(())) => Some(Failure::NoAnswer {
                detail: "the MCP server's answer held no response to this request".to_owned(),
            }),
        };
        if let Some(failure) = failure {
            if ctx.keys.is_empty() {
                warn!(
                    method = out.routing.method.unwrap_or("(response)"),
                    "message not delivered: {failure}"
                );
            }
            let timed_out = matches!(failure, Failure::Timeout { .. });
            for key in &ctx.keys {
                if let Some(entry) = self.pending.take(key) {
                    self.fail(&entry, &failure).await;
                    if timed_out && entry.to_client {
                        self.cancel_on_server(entry.id, out.headers.clone());
                    }
                }
            }
            ctx.outcome.failure = Some(failure);
        }
        ctx.outcome
    }

    async fn exchange_inner(
        self: &Arc<Self>,
        out: &Outgoing<'_>,
        ctx: &mut Ctx,
    ) -> Result<(), Failure> {
        let url = self.transport.url().clone();
        let response = match self
            .transport
            .post(out.body.clone(), &out.headers, out.routing)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                self.note_connection_failure(&e);
                let failure = Failure::from_transport(&e);
                ctx.outcome.transport_error = Some(e);
                return Err(failure);
            }
        };
        self.note_server_ok();
        let status = response.status();
        if status == StatusCode::NOT_FOUND
            && let Some(session_id) = &out.headers.session_id
        {
            let session_id = String::from_utf8_lossy(session_id.as_bytes()).into_owned();
            // Fails every request of this session, ours included.
            boxed_session_lost(self.clone(), out.generation, session_id.clone()).await;
            return Err(Failure::SessionLost {
                reason: format!("the MCP server no longer knows session {session_id} (HTTP 404)"),
                reinitialize: false,
            });
        }
        if !status.is_success() {
            let body = read_body(&url, response.into_body(), MAX_ERROR_BODY)
                .await
                .unwrap_or_default();
            return Err(self.http_failure(status, &body, ctx).await);
        }
        ctx.outcome.accepted = true;
        ctx.outcome.session_id = response.headers().get(MCP_SESSION_ID).cloned();
        if media_type(&response).as_deref() == Some("text/event-stream") {
            return self
                .read_answer_stream(response.into_body(), out, ctx)
                .await;
        }
        let body = match read_body(&url, response.into_body(), MAX_ANSWER).await {
            Ok(body) => body,
            Err(e) => {
                self.note_connection_failure(&e);
                return Err(Failure::from_transport(&e));
            }
        };
        if body.iter().all(u8::is_ascii_whitespace) {
            // 202 Accepted: nothing more here. A request's answer may still come on the
            // GET stream (some servers answer there).
            return self.wait_answered(ctx).await;
        }
        let value: Value = serde_json::from_slice(&body).map_err(|e| Failure::InvalidAnswer {
            detail: format!("not JSON ({e})"),
        })?;
        self.deliver_all(value, Some(ctx)).await;
        match ctx.stray_error.take() {
            Some(message) if !self.all_answered(ctx) => Err(Failure::NoAnswer {
                detail: format!("the MCP server could not process the request: {message}"),
            }),
            _ => Ok(()),
        }
    }

    /// An error status: the server's own JSON-RPC error for our request is relayed as is;
    /// otherwise the status and what the body says make the error.
    async fn http_failure(
        self: &Arc<Self>,
        status: StatusCode,
        body: &[u8],
        ctx: &mut Ctx,
    ) -> Failure {
        let mut detail = String::new();
        if let Ok(value) = serde_json::from_slice::<Value>(body) {
            let messages = match value {
                Value::Array(items) => items,
                other => vec![other],
            };
            for message in messages {
                match jsonrpc::classify(&message) {
                    Kind::Response { id } if ctx.keys.contains(&IdKey::of(&id)) => {
                        self.deliver(message, Some(ctx)).await;
                    }
                    _ => {
                        if let Some(text) =
                            message.pointer("/error/message").and_then(Value::as_str)
                        {
                            detail = text.to_owned();
                        }
                    }
                }
            }
        }
        if detail.is_empty() {
            detail = String::from_utf8_lossy(body)
                .trim()
                .chars()
                .take(QUOTED_ERROR_CHARS)
                .collect();
        }
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            detail = format!("{detail} (check --bearer-token-file / --header)")
                .trim_start()
                .to_owned();
        }
        Failure::Http { status, detail }
    }

    /// Reads a POST's event stream; if it ends before our answer and the server gave
    /// event ids, resumes it with GET and `Last-Event-ID`.
    async fn read_answer_stream(
        self: &Arc<Self>,
        body: Incoming,
        out: &Outgoing<'_>,
        ctx: &mut Ctx,
    ) -> Result<(), Failure> {
        let mut parser = Parser::with_limit(MAX_ANSWER);
        let (mut end, _) = self.read_events(body, &mut parser, Some(ctx)).await;
        let mut attempts = 0;
        loop {
            match &end {
                StreamEnd::AllAnswered => return Ok(()),
                StreamEnd::TooLarge(e) => {
                    return Err(Failure::InvalidAnswer {
                        detail: e.to_string(),
                    });
                }
                StreamEnd::Ended | StreamEnd::Broken(_) => {}
            }
            let Some(last_event_id) = parser.last_event_id().map(str::to_owned) else {
                break;
            };
            if attempts >= MAX_RESUME_ATTEMPTS {
                break;
            }
            attempts += 1;
            let delay = parser.retry().unwrap_or(DEFAULT_RETRY);
            debug!(%last_event_id, ?delay, "answer stream ended early; resuming it");
            // The answer may also arrive elsewhere meanwhile.
            if timeout(delay, self.wait_answered(ctx)).await.is_ok() {
                return Ok(());
            }
            let response = match self
                .transport
                .get_stream(&out.headers, Some(&last_event_id))
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    self.note_connection_failure(&e);
                    end = StreamEnd::Broken(e);
                    break;
                }
            };
            self.note_server_ok();
            let status = response.status();
            if !status.is_success() || media_type(&response).as_deref() != Some("text/event-stream")
            {
                debug!("resuming the answer stream failed: HTTP {status}");
                break;
            }
            parser.restart();
            let (next_end, events) = self
                .read_events(response.into_body(), &mut parser, Some(ctx))
                .await;
            if events > 0 {
                attempts = 0;
            }
            end = next_end;
        }
        Err(match end {
            StreamEnd::Broken(e) => {
                self.note_connection_failure(&e);
                Failure::from_transport(&e)
            }
            _ => Failure::NoAnswer {
                detail: match ctx.stray_error.take() {
                    Some(message) => {
                        format!("the MCP server could not process the request: {message}")
                    }
                    None => {
                        "the MCP server ended the answer stream without a response to this request"
                            .to_owned()
                    }
                },
            },
        })
    }

    /// Delivers the events of one stream. With `ctx`, stops as soon as all of its
    /// requests are answered. Also returns how many events arrived.
    async fn read_events(
        self: &Arc<Self>,
        mut body: Incoming,
        parser: &mut Parser,
        mut ctx: Option<&mut Ctx>,
    ) -> (StreamEnd, usize) {
        let url = self.transport.url().clone();
        let mut changed = self.pending.changed();
        let mut events = Vec::new();
        let mut count = 0;
        loop {
            if let Some(ctx) = ctx.as_deref()
                && self.all_answered(ctx)
            {
                return (StreamEnd::AllAnswered, count);
            }
            let chunk = tokio::select! {
                chunk = next_chunk(&url, &mut body) => chunk,
                Ok(()) = changed.changed(), if ctx.is_some() => continue,
            };
            let bytes = match chunk {
                Ok(Some(bytes)) => bytes,
                Ok(None) => return (StreamEnd::Ended, count),
                Err(e) => return (StreamEnd::Broken(e), count),
            };
            if let Err(e) = parser.feed(&bytes, &mut events) {
                return (StreamEnd::TooLarge(e), count);
            }
            for event in events.drain(..) {
                count += 1;
                if event.data.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<Value>(&event.data) {
                    Ok(message) => self.deliver_all(message, ctx.as_deref_mut()).await,
                    Err(e) => warn!("ignoring a server-sent event that is not JSON: {e}"),
                }
            }
        }
    }

    /// Delivers the events of the GET stream until it ends; `Err` says how it broke.
    pub(crate) async fn read_stream_events(
        self: &Arc<Self>,
        body: Incoming,
        parser: &mut Parser,
    ) -> (Result<(), String>, usize) {
        let (end, count) = self.read_events(body, parser, None).await;
        let result = match end {
            StreamEnd::AllAnswered | StreamEnd::Ended => Ok(()),
            StreamEnd::Broken(e) => Err(e.to_string()),
            StreamEnd::TooLarge(e) => Err(e.to_string()),
        };
        (result, count)
    }

    /// Waits until every request of `ctx` is answered (bounded by the caller).
    async fn wait_answered(&self, ctx: &Ctx) -> Result<(), Failure> {
        let mut changed = self.pending.changed();
        while !self.all_answered(ctx) {
            if changed.changed().await.is_err() {
                break;
            }
        }
        Ok(())
    }

    fn all_answered(&self, ctx: &Ctx) -> bool {
        ctx.keys.iter().all(|k| !self.pending.contains(k))
    }

    pub(crate) async fn deliver_all(&self, message: Value, mut ctx: Option<&mut Ctx>) {
        match message {
            Value::Array(items) => {
                for item in items {
                    self.deliver(item, ctx.as_deref_mut()).await;
                }
            }
            other => self.deliver(other, ctx).await,
        }
    }

    /// Hands one server message to the client: responses only to a pending request
    /// (exactly once), anything else (notifications, server→client requests) as is.
    async fn deliver(&self, message: Value, ctx: Option<&mut Ctx>) {
        match jsonrpc::classify(&message) {
            Kind::Response { id } => {
                let key = IdKey::of(&id);
                let Some(entry) = self.pending.take(&key) else {
                    debug!(%key, "dropping an answer to a request that is no longer pending");
                    return;
                };
                if let Some(ctx) = ctx
                    && ctx.capture
                    && ctx.keys.contains(&key)
                {
                    ctx.outcome.captured.push(message.clone());
                }
                if entry.to_client {
                    self.out.send(&message).await;
                }
            }
            Kind::Invalid { id: None, .. } if message.get("error").is_some() => {
                let text = message
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("(no message)")
                    .to_owned();
                match ctx {
                    Some(ctx) if !ctx.keys.is_empty() => ctx.stray_error = Some(text),
                    _ => warn!("the MCP server reported an error: {text}"),
                }
            }
            Kind::Invalid { reason, .. } => {
                warn!("dropping a server message that is not JSON-RPC ({reason}): {message}");
            }
            Kind::Request { .. } | Kind::Notification { .. } => self.out.send(&message).await,
        }
    }

    /// Tells the server to stop working on a request the client got a timeout for.
    fn cancel_on_server(self: &Arc<Self>, id: Value, headers: SessionHeaders) {
        let bridge = self.clone();
        tokio::spawn(async move {
            let note = jsonrpc::cancelled(&id, "mcpgw wrapper: --timeout expired");
            let routing = Routing {
                method: Some("notifications/cancelled"),
                name: None,
            };
            let sent = timeout(
                CANCEL_TIMEOUT,
                bridge
                    .transport
                    .post(Bytes::from(note.to_string()), &headers, routing),
            )
            .await;
            debug!(%id, ok = matches!(sent, Ok(Ok(_))), "sent notifications/cancelled");
        });
    }
}

/// [`Bridge::session_lost`] behind a box: it replays `initialize` through
/// [`Bridge::exchange`], which is what calls it, and async recursion needs a
/// type-erased future somewhere in the cycle.
pub(crate) fn boxed_session_lost(
    bridge: Arc<Bridge>,
    generation: u64,
    session_id: String,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(bridge.session_lost(generation, session_id))
}
