//! One MCP session on an upstream server ([`UpstreamSession`]): opened by
//! `initialize` (or, for a server of the stateless revision, a handle with
//! no session), its calls and streams, its idle probe and its close. The
//! server it lives on (connections, era, errors) is the parent module's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use mcpgw_mcp::headers::{LAST_EVENT_ID, MCP_SESSION_ID};
use serde::Deserialize;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::{INIT_ID, INIT_ID_RAW, KnownEra, UpstreamError, UpstreamServer, modern, read_answer};
use crate::http::client::{HeaderBlock, UpstreamBody};
use crate::jsonrpc::{self, Answer};

/// One MCP session on an upstream server, owned by one downstream session.
pub(crate) struct UpstreamSession {
    pub server: Arc<UpstreamServer>,
    /// `None` for a server that runs without sessions.
    session_id: Option<HeaderValue>,
    version: HeaderValue,
    /// The server's headers plus this session's id and version, made once
    /// (and rendered once: every call of the session writes `block`).
    headers: HeaderMap,
    block: HeaderBlock,
    created: Instant,
    last_used: Mutex<Instant>,
    next_id: AtomicU64,
    /// Generation of the client GET stream this session's own GET stream is
    /// listened to for (0: none), so one client stream gets one listener.
    listened_for: AtomicU64,
    /// The server's capabilities from its `initialize` answer (raw JSON),
    /// kept in the session record.
    capabilities: Box<str>,
    /// What the server said of itself in its `initialize` answer
    /// (`serverInfo`, `instructions`), for the gateway's own `initialize`
    /// answer. Unknown for a session taken over from another worker.
    identity: Option<Identity>,
    /// For a server of the stateless revision: the downstream client as
    /// every request carries it (no upstream session exists then).
    modern: Option<modern::ClientMeta>,
}

/// The parts of an upstream's `initialize` answer the gateway passes on to
/// its client: `serverInfo` (raw JSON) and `instructions`.
#[derive(Debug, Default)]
pub(crate) struct Identity {
    pub server_info: Option<Box<str>>,
    pub instructions: Option<Box<str>>,
}

#[derive(Deserialize)]
struct InitializeResult<'a> {
    #[serde(rename = "protocolVersion", borrow)]
    protocol_version: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    capabilities: Option<&'a serde_json::value::RawValue>,
    #[serde(rename = "serverInfo", borrow, default)]
    server_info: Option<&'a serde_json::value::RawValue>,
    #[serde(default)]
    instructions: Option<String>,
}

impl UpstreamSession {
    /// The upstream session of a downstream client (its `initialize` params,
    /// or those a stateless client's `_meta` made) on `server`: a session
    /// `initialize`d for a session server, a handle without a session for a
    /// server of the stateless revision.
    pub(crate) async fn open(
        server: Arc<UpstreamServer>,
        init_params: &str,
    ) -> Result<Arc<Self>, UpstreamError> {
        let client = modern::ClientMeta::from_init_params(init_params);
        let deadline = Instant::now() + server.request_timeout();
        match server.era(&client, deadline).await? {
            KnownEra::Stateful => Self::initialize(server, init_params).await,
            KnownEra::Modern(found) => Ok(Self::modern(server, &found, client)),
        }
    }

    /// A handle on a server of the stateless revision: nothing is opened
    /// upstream; every request carries `client` and the revision's version.
    pub(crate) fn modern(
        server: Arc<UpstreamServer>,
        found: &modern::Discovered,
        client: modern::ClientMeta,
    ) -> Arc<Self> {
        let mut us = Self::build(
            server,
            None,
            HeaderValue::from_static(modern::VERSION.as_str()),
            found.capabilities.clone(),
            Some(found.identity()),
        );
        // The routing headers are each request's own (`modern::rewrite`).
        us.block = HeaderBlock::except(&us.headers, modern::is_routing_header);
        us.modern = Some(client);
        debug!(upstream = %us.server.id, "stateless upstream handle made");
        Arc::new(us)
    }

    /// Whether there is an upstream session to end ([`Self::close`] sends
    /// nothing otherwise).
    pub(crate) fn has_session(&self) -> bool {
        self.session_id.is_some()
    }

    /// Whether the server speaks the stateless revision (no session).
    pub(crate) fn is_modern(&self) -> bool {
        self.modern.is_some()
    }

    /// `initialize` + `notifications/initialized` with the downstream
    /// client's own parameters (capabilities, clientInfo, version).
    pub(crate) async fn initialize(
        server: Arc<UpstreamServer>,
        init_params: &str,
    ) -> Result<Arc<Self>, UpstreamError> {
        let deadline = Instant::now() + server.request_timeout();
        let body = jsonrpc::request(INIT_ID, "initialize", Some(init_params));
        let resp = server
            .send(&Method::POST, &server.block, body, deadline)
            .await?;
        if !resp.status().is_success() {
            return Err(UpstreamError::Status {
                upstream: server.id.clone(),
                status: resp.status(),
            });
        }
        let session_id = resp.headers().get(&MCP_SESSION_ID).cloned();
        let message = read_answer(&server, resp, INIT_ID_RAW, deadline).await?;
        let (version, capabilities, identity) = match jsonrpc::answer(&message) {
            Some(Answer::Result(r)) => {
                let result = serde_json::from_str::<InitializeResult<'_>>(r.get())
                    .map_err(|e| server.protocol_error(format!("initialize result: {e}")))?;
                (
                    result.protocol_version.into_owned(),
                    result.capabilities.map_or("{}", |c| c.get()).into(),
                    Identity {
                        server_info: result.server_info.map(|v| v.get().into()),
                        instructions: result.instructions.map(String::into_boxed_str),
                    },
                )
            }
            Some(Answer::Error { code, message }) => {
                return Err(UpstreamError::Initialize {
                    upstream: server.id.clone(),
                    message: format!("{message} ({code})"),
                });
            }
            None => return Err(server.protocol_error("initialize answer is not JSON-RPC")),
        };
        let version = HeaderValue::from_str(&version)
            .map_err(|_| server.protocol_error(format!("protocol version {version:?}")))?;
        let session = Self::with_ids(server, session_id, version, capabilities, Some(identity));
        let note = jsonrpc::notification("notifications/initialized");
        let resp = session
            .server
            .send(&Method::POST, &session.block, note, deadline)
            .await?;
        if !resp.status().is_success() {
            warn!(upstream = %session.server.id, status = %resp.status(),
                "upstream refused notifications/initialized; continuing");
        }
        debug!(upstream = %session.server.id, version = ?session.version, "upstream session created");
        Ok(session)
    }

    /// Take over an upstream session another worker created (failover):
    /// no `initialize`, the upstream sees the same session continue. If it
    /// forgot the session, the first request gets 404 and a new one starts.
    pub(crate) fn attach(
        server: Arc<UpstreamServer>,
        session_id: Option<&str>,
        version: &str,
        capabilities: &str,
    ) -> Result<Arc<Self>, UpstreamError> {
        let bad =
            |what: &str| server.protocol_error(format!("stored {what} is not a header value"));
        let session_id = session_id
            .map(HeaderValue::from_str)
            .transpose()
            .map_err(|_| bad("session id"))?;
        if version == modern::VERSION.as_str() {
            // Nothing upstream to carry on: the next use makes a new handle
            // (it needs the client's `_meta`, which the record does not keep
            // here).
            return Err(server.protocol_error(
                "a stateless upstream has no session to re-attach; a new handle is made on use",
            ));
        }
        let version = HeaderValue::from_str(version).map_err(|_| bad("version"))?;
        let capabilities = if capabilities.is_empty() {
            "{}"
        } else {
            capabilities
        };
        Ok(Self::with_ids(
            server,
            session_id,
            version,
            capabilities.into(),
            None,
        ))
    }

    fn with_ids(
        server: Arc<UpstreamServer>,
        session_id: Option<HeaderValue>,
        version: HeaderValue,
        capabilities: Box<str>,
        identity: Option<Identity>,
    ) -> Arc<Self> {
        Arc::new(Self::build(
            server,
            session_id,
            version,
            capabilities,
            identity,
        ))
    }

    fn build(
        server: Arc<UpstreamServer>,
        session_id: Option<HeaderValue>,
        version: HeaderValue,
        capabilities: Box<str>,
        identity: Option<Identity>,
    ) -> Self {
        let headers = server.headers_for(session_id.as_ref(), Some(&version));
        Self {
            server,
            session_id,
            version,
            block: HeaderBlock::new(&headers),
            headers,
            created: Instant::now(),
            last_used: Mutex::new(Instant::now()),
            next_id: AtomicU64::new(1),
            listened_for: AtomicU64::new(0),
            capabilities,
            identity,
            modern: None,
        }
    }

    /// The server's capabilities from its `initialize` answer (raw JSON).
    pub(crate) fn capabilities(&self) -> &str {
        &self.capabilities
    }

    /// What the server said of itself when this session opened, if this
    /// worker opened it.
    pub(crate) fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    /// What the store keeps of this upstream session.
    pub(crate) fn record(&self) -> mcpgw_protocol::store::UpstreamRecord {
        mcpgw_protocol::store::UpstreamRecord {
            upstream: self.server.id.to_string(),
            session_id: self
                .session_id
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            version: self.version.to_str().unwrap_or_default().to_owned(),
            capabilities: self.capabilities.to_string(),
        }
    }

    pub(crate) fn touch(&self) {
        if let Ok(mut t) = self.last_used.lock() {
            *t = Instant::now();
        }
    }

    pub(crate) fn idle_for(&self) -> Duration {
        self.last_used
            .lock()
            .map_or(Duration::ZERO, |t| t.elapsed())
    }

    pub(crate) fn age(&self) -> Duration {
        self.created.elapsed()
    }

    /// Send a client message (raw bytes, already rewritten where needed) and
    /// return the answer's head; the caller streams or reads the body.
    pub(crate) async fn send(
        &self,
        body: Bytes,
        deadline: Instant,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        self.send_traced(body, deadline, crate::otel::TraceRef::default())
            .await
    }

    /// [`Self::send`] carrying the request's trace: with a span
    /// (`[tracing]`), a child span for this exchange whose id goes in the
    /// `traceparent`; else the client's trace context header lines as they
    /// came (or nothing). The span ends with the answer's head.
    pub(crate) async fn send_traced(
        &self,
        body: Bytes,
        deadline: Instant,
        trace: crate::otel::TraceRef<'_>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let Some(parent) = trace.parent else {
            return self.send_lines(body, deadline, trace.lines).await;
        };
        let url = match self.server.config.transport {
            mcpgw_protocol::config::Transport::Stdio => "",
            _ => &self.server.config.url,
        };
        let span = parent.upstream_span(&self.server.id, url);
        let lines = span.header_lines(trace.lines);
        let sent = self.send_lines(body, deadline, &lines).await;
        span.finish(match &sent {
            Ok(resp) => Ok(resp.status().as_u16()),
            Err(UpstreamError::Status { status, .. }) => Ok(status.as_u16()),
            Err(e) => Err(e.kind()),
        });
        sent
    }

    async fn send_lines(
        &self,
        body: Bytes,
        deadline: Instant,
        trace: &[u8],
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        self.touch();
        let sent = match &self.modern {
            None => {
                self.server
                    .send_with(&Method::POST, &self.block, trace, body, deadline)
                    .await
            }
            Some(client) => {
                let (body, mut lines) = modern::rewrite(&body, client, &self.server.tool_params)
                    .ok_or_else(|| {
                        self.server
                            .protocol_error("the request could not be rewritten for 2026-07-28")
                    })?;
                lines.extend_from_slice(trace);
                // `self.block` has no routing headers (see `Self::modern`).
                let sent = self
                    .server
                    .send_with(&Method::POST, &self.block, &lines, body, deadline)
                    .await;
                if matches!(sent, Err(UpstreamError::Transport { .. })) {
                    // It may come back as another server: ask its era again.
                    self.server.forget_era();
                }
                sent
            }
        };
        self.accepted(sent?)
    }

    /// A success passes; 404 on a session means the upstream forgot it. A
    /// 2026-07-28 server answers the errors of its revision with a 4xx
    /// status and the JSON-RPC error as a JSON body (400 for a missing
    /// client capability, 404 for an unknown method): that is an answer,
    /// passed on like any other (its id is checked as any answer's).
    fn accepted(
        &self,
        resp: Response<UpstreamBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        match resp.status() {
            s if s.is_success() => Ok(resp),
            s if s.is_client_error() && self.modern.is_some() && is_json(&resp) => Ok(resp),
            StatusCode::NOT_FOUND if self.session_id.is_some() => Err(UpstreamError::SessionGone {
                upstream: self.server.id.clone(),
            }),
            status => Err(UpstreamError::Status {
                upstream: self.server.id.clone(),
                status,
            }),
        }
    }

    /// Open this session's GET stream (server-initiated messages); returns
    /// the answer's head once it is a success.
    pub(crate) async fn open_stream(
        &self,
        deadline: Instant,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        self.get_stream(None, deadline).await
    }

    /// Resume a stream the upstream closed before it was done (SSE polling,
    /// SEP-1699): GET with `Last-Event-ID`; the upstream replays what
    /// followed that event on the stream it belonged to.
    pub(crate) async fn resume_stream(
        &self,
        last_event_id: &str,
        deadline: Instant,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        self.get_stream(Some(last_event_id), deadline).await
    }

    async fn get_stream(
        &self,
        last_event_id: Option<&str>,
        deadline: Instant,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let mut h = self.headers.clone();
        h.remove(CONTENT_TYPE);
        h.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
        if let Some(id) = last_event_id {
            let id = HeaderValue::from_str(id)
                .map_err(|_| self.server.protocol_error("event id is not a header value"))?;
            h.insert(LAST_EVENT_ID, id);
        }
        let resp = self
            .server
            .send(&Method::GET, &HeaderBlock::new(&h), Bytes::new(), deadline)
            .await?;
        self.accepted(resp)
    }

    /// Claim the listener for client stream `generation`; false when this
    /// session is already listened to for it.
    pub(crate) fn claim_listener(&self, generation: u64) -> bool {
        self.listened_for.swap(generation, Ordering::Relaxed) != generation
    }

    /// A request on the gateway's own account; returns the whole answer.
    pub(crate) async fn call(
        &self,
        method: &str,
        params: Option<&str>,
        deadline: Instant,
    ) -> Result<Bytes, UpstreamError> {
        let id = format!("mcpgw-{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        let resp = self
            .send(jsonrpc::request(&id, method, params), deadline)
            .await?;
        read_answer(&self.server, resp, &jsonrpc::json_string(&id), deadline).await
    }

    /// Is the session still usable? `ping`, else a cheap list call for
    /// servers that do not implement ping.
    /// A stateless upstream has no ping (and no session to lose): it is
    /// asked `server/discover` again, which must still say 2026-07-28.
    pub(crate) async fn probe(&self, bound: Duration) -> bool {
        let deadline = Instant::now() + bound;
        if let Some(client) = &self.modern {
            return match modern::probe(&self.server, client, deadline).await {
                Ok(modern::Probed::Modern(_)) => true,
                Ok(modern::Probed::Legacy(_)) | Err(_) => {
                    self.server.forget_era();
                    false
                }
            };
        }
        match self.call("ping", None, deadline).await {
            Ok(answer) => match jsonrpc::answer(&answer) {
                Some(Answer::Result(_)) => true,
                Some(Answer::Error { .. }) => self.call("tools/list", None, deadline).await.is_ok(),
                None => false,
            },
            Err(e) => {
                debug!(upstream = %self.server.id, error = %e, "probe failed");
                false
            }
        }
    }

    /// End the session upstream (HTTP DELETE), bounded by `bound`.
    pub(crate) async fn close(&self, bound: Duration) {
        if self.session_id.is_none() {
            return;
        }
        let deadline = Instant::now() + bound;
        match self
            .server
            .send(&Method::DELETE, &self.block, Bytes::new(), deadline)
            .await
        {
            Ok(resp) => {
                let status = resp.status();
                if !(status.is_success()
                    || status == StatusCode::NOT_FOUND
                    || status == StatusCode::METHOD_NOT_ALLOWED)
                {
                    warn!(upstream = %self.server.id, %status, "upstream refused session DELETE");
                }
            }
            Err(e) => {
                warn!(upstream = %self.server.id, error = %e, "closing upstream session failed; abandoning it")
            }
        }
    }
}

/// An answer whose body is JSON (not SSE, not text).
fn is_json(resp: &Response<UpstreamBody>) -> bool {
    resp.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.trim_start().starts_with("application/json"))
}
