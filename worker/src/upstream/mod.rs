//! Talking to one upstream MCP server over Streamable HTTP.
//!
//! [`UpstreamServer`] is a configured server with its own HTTP connection
//! pool ([`ConnPool`]), shared by every upstream session to it in this worker.
//! [`UpstreamSession`] is one logical MCP session on that server, owned by
//! exactly one downstream session (the registry enforces that): it knows its
//! `Mcp-Session-Id` and negotiated version, sends requests on it, probes it
//! and closes it. Answers come back as `application/json` or as an SSE stream;
//! [`read_answer`] reduces either to the one JSON-RPC response the gateway
//! asked for, while call answers are passed through untouched by the caller.
//!
//! A server of the stateless revision (2026-07-28, [`modern`]) has no
//! sessions: its [`UpstreamSession`] is a handle with no session id whose
//! identity comes from `server/discover` and whose requests are rewritten
//! to carry the client in `_meta`. Which era a server speaks is asked once
//! and kept on its [`UpstreamServer`] ([`UpstreamServer::era`]).

pub(crate) mod adapter;
pub(crate) mod answer_budget;
#[cfg(test)]
pub(crate) mod fake;
pub(crate) mod modern;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use mcpgw_mcp::headers::{LAST_EVENT_ID, MCP_PROTOCOL_VERSION, MCP_SESSION_ID};
use mcpgw_protocol::config::{Transport, Upstream, UpstreamEra};
use serde::Deserialize;
use tokio::time::{Instant, timeout_at};
use tracing::{debug, warn};

use crate::http::client::{ConnError, ConnPool, HeaderBlock, Outgoing, Unfit, UpstreamBody};
use crate::http::sse;
use crate::jsonrpc::{self, Answer};

/// The id of the gateway's `initialize` upstream, and the same as raw JSON.
const INIT_ID: &str = "mcpgw-init";
const INIT_ID_RAW: &str = "\"mcpgw-init\"";

#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("upstream {upstream} is unreachable: {cause}")]
    Transport {
        upstream: Arc<str>,
        cause: ConnError,
    },
    #[error("upstream {upstream} did not answer within {timeout_ms} ms")]
    Timeout { upstream: Arc<str>, timeout_ms: u64 },
    #[error("upstream {upstream} no longer knows its session (HTTP 404)")]
    SessionGone { upstream: Arc<str> },
    #[error("upstream {upstream} answered HTTP {status}")]
    Status {
        upstream: Arc<str>,
        status: StatusCode,
    },
    #[error("upstream {upstream} sent an unusable answer: {reason}")]
    Protocol { upstream: Arc<str>, reason: String },
    #[error("upstream {upstream} refused initialize: {message}")]
    Initialize { upstream: Arc<str>, message: String },
}

impl UpstreamError {
    pub(crate) fn upstream(&self) -> &str {
        match self {
            Self::Transport { upstream, .. }
            | Self::Timeout { upstream, .. }
            | Self::SessionGone { upstream }
            | Self::Status { upstream, .. }
            | Self::Protocol { upstream, .. }
            | Self::Initialize { upstream, .. } => upstream,
        }
    }

    /// Bounded label for metrics.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Transport { cause, .. } if cause.is_tls() => "tls",
            Self::Transport { .. } => "transport",
            Self::Timeout { .. } => "timeout",
            Self::SessionGone { .. } => "session_gone",
            Self::Status { .. } => "status",
            Self::Protocol { .. } => "protocol",
            Self::Initialize { .. } => "initialize",
        }
    }

    /// Errors after which the upstream session must not be reused: the
    /// connection failed or the server forgot the session. A tool error, a
    /// timeout or an HTTP error status leaves it in place.
    pub(crate) fn evicts(&self) -> bool {
        matches!(self, Self::Transport { .. } | Self::SessionGone { .. })
    }
}

/// A configured upstream server and its connection pool.
pub(crate) struct UpstreamServer {
    pub id: Arc<str>,
    /// Origin-form (`/path?query`): what a request line carries.
    path: Box<str>,
    /// What every request to this server carries: the configured headers,
    /// `Host`, `Content-Type`, `Accept`; the base of its sessions' headers.
    headers: HeaderMap,
    /// The same, rendered once for the wire (requests outside a session).
    block: HeaderBlock,
    pool: ConnPool,
    /// Milliseconds; a reload may change it in place (it does not affect
    /// connections, so upstream sessions stay).
    request_timeout_ms: AtomicU64,
    /// What this server was built from, to tell a reload what changed.
    pub config: Upstream,
    /// For an `https://` upstream: the digest of its TLS files as read at
    /// this (re)load; new contents under the same paths are a change too.
    tls_fingerprint: Option<u64>,
    /// For a stdio or legacy SSE upstream: the local adapter this server
    /// talks to (its backends end when the server is dropped).
    _stdio: Option<crate::upstream::adapter::Adapter>,
    /// The era this server speaks, once known (`None`: not asked yet, or
    /// forgotten after a transport failure). Held while it is asked, so
    /// concurrent first uses ask once.
    era: tokio::sync::Mutex<Option<KnownEra>>,
    /// `mcpgw_upstream_session_events_total{upstream=id, event="reused"}`,
    /// resolved on first use: it counts every call, and a labelled lookup
    /// costs more than the increment.
    pub(crate) reused: std::sync::OnceLock<prometheus::IntCounter>,
    /// This upstream's children of the per-upstream request families,
    /// resolved on first use, as `reused`.
    pub(crate) counted: std::sync::OnceLock<crate::metrics::UpstreamChildren>,
}

/// What went wrong building a server from its (validated) config.
#[derive(Debug, thiserror::Error)]
#[error("upstream {id}: {reason}")]
pub struct ServerConfigError {
    id: String,
    reason: String,
}

impl UpstreamServer {
    /// A server for `cfg`; `tls` is its client TLS configuration when its
    /// url is `https://` (built by the caller from the upstream's files,
    /// once per (re)load: [`mcpgw_protocol::tls::client_config`]).
    pub(crate) fn new(
        cfg: &Upstream,
        tls: Option<mcpgw_protocol::tls::ClientTls>,
    ) -> Result<Self, ServerConfigError> {
        let bad = |reason: String| ServerConfigError {
            id: cfg.id.clone(),
            reason,
        };
        let tls_fingerprint = tls.as_ref().map(|t| t.fingerprint);
        let tls_config = tls.map(|t| t.config);
        let (stdio, pool_tls) = match cfg.transport {
            Transport::StreamableHttp => (None, tls_config),
            // The adapter is reached over loopback http; it speaks TLS to
            // a legacy SSE server itself.
            Transport::Stdio | Transport::Sse => (
                Some(
                    crate::upstream::adapter::Adapter::start(cfg, tls_config)
                        .map_err(|e| bad(e.to_string()))?,
                ),
                None,
            ),
        };
        let url = match &stdio {
            Some(adapter) => format!("http://{}/mcp", adapter.addr),
            None => cfg.url.clone(),
        };
        // Errors name the URL without its user info or query values (secrets).
        let shown = mcpgw_protocol::redact::url(&url);
        let uri: Uri = url
            .parse()
            .map_err(|e| bad(format!("url {shown:?}: {e}")))?;
        let mut headers = HeaderMap::with_capacity(cfg.headers.len() + 4);
        if let Some(adapter) = &stdio {
            headers.insert(crate::upstream::adapter::KEY_HEADER, adapter.key.clone());
        }
        for (k, v) in &cfg.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| bad(format!("header {k:?}: {e}")))?;
            let value = HeaderValue::from_str(v).map_err(|e| bad(format!("header {k:?}: {e}")))?;
            headers.insert(name, value);
        }
        if !headers.contains_key(HOST) {
            let authority = uri
                .authority()
                .ok_or_else(|| bad(format!("url {shown:?} has no host")))?;
            let host = HeaderValue::from_str(authority.as_str())
                .map_err(|e| bad(format!("url {shown:?}: host: {e}")))?;
            headers.insert(HOST, host);
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        let path = uri.path_and_query().map_or("/", |pq| pq.as_str()).into();
        let pool = ConnPool::new(
            &uri,
            Duration::from_millis(cfg.connect_timeout_ms),
            pool_tls,
        )
        .map_err(|reason| bad(format!("url {shown:?}: {reason}")))?;
        Ok(Self {
            id: Arc::from(cfg.id.as_str()),
            path,
            block: HeaderBlock::new(&headers),
            headers,
            pool,
            request_timeout_ms: AtomicU64::new(cfg.request_timeout_ms),
            config: cfg.clone(),
            tls_fingerprint,
            _stdio: stdio,
            era: tokio::sync::Mutex::new(None),
            reused: std::sync::OnceLock::new(),
            counted: std::sync::OnceLock::new(),
        })
    }

    /// The era this server speaks: as configured, else as its answer to
    /// `server/discover` said (asked on first use with `client`'s
    /// capabilities and info, then kept until [`Self::forget_era`]).
    /// stdio and legacy SSE upstreams sit behind the session adapter and
    /// are never asked.
    pub(crate) async fn era(
        &self,
        client: &modern::ClientMeta,
        deadline: Instant,
    ) -> Result<KnownEra, UpstreamError> {
        if self.config.era == UpstreamEra::Stateful
            || self.config.transport != Transport::StreamableHttp
        {
            return Ok(KnownEra::Stateful);
        }
        let mut known = self.era.lock().await;
        if let Some(era) = known.as_ref() {
            return Ok(era.clone());
        }
        let era = match modern::probe(self, client, deadline).await? {
            modern::Probed::Modern(found) => KnownEra::Modern(Arc::new(found)),
            modern::Probed::Legacy(why) if self.config.era == UpstreamEra::Stateless => {
                return Err(self.protocol_error(format!(
                    "era = \"stateless\" but server/discover got a legacy answer: {why}"
                )));
            }
            modern::Probed::Legacy(why) => {
                debug!(upstream = %self.id, answer = %why, "server/discover: a session server");
                KnownEra::Stateful
            }
        };
        *known = Some(era.clone());
        Ok(era)
    }

    /// Ask again on next use: the server may have been replaced by one of
    /// another era behind the same URL. A probe in flight decides anyway.
    pub(crate) fn forget_era(&self) {
        if let Ok(mut known) = self.era.try_lock() {
            *known = None;
        }
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms.load(Ordering::Relaxed))
    }

    /// Whether `new` can keep this server's connections and upstream
    /// sessions: only the request timeout may differ (it is applied here).
    /// `tls_fingerprint` is the digest of `new`'s TLS files as read now: a
    /// certificate, key or CA bundle replaced under the same path is a
    /// connection change like a new url.
    pub(crate) fn adopt(&self, new: &Upstream, tls_fingerprint: Option<u64>) -> bool {
        let same = Upstream {
            request_timeout_ms: self.config.request_timeout_ms,
            ..new.clone()
        } == self.config
            && tls_fingerprint == self.tls_fingerprint;
        if same {
            self.request_timeout_ms
                .store(new.request_timeout_ms, Ordering::Relaxed);
        }
        same
    }

    /// The headers of every request of one upstream session.
    fn headers_for(
        &self,
        session: Option<&HeaderValue>,
        version: Option<&HeaderValue>,
    ) -> HeaderMap {
        let mut h = self.headers.clone();
        h.reserve(2);
        if let Some(s) = session {
            h.insert(MCP_SESSION_ID, s.clone());
        }
        if let Some(v) = version {
            h.insert(MCP_PROTOCOL_VERSION, v.clone());
        }
        h
    }

    /// Send and wait for the answer's head, bounded by `deadline`.
    async fn send(
        &self,
        method: &Method,
        headers: &HeaderBlock,
        body: Bytes,
        deadline: Instant,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        self.send_with(method, headers, b"", body, deadline).await
    }

    /// [`Self::send`] with header lines of this request only (`extra`).
    async fn send_with(
        &self,
        method: &Method,
        headers: &HeaderBlock,
        extra: &[u8],
        body: Bytes,
        deadline: Instant,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let req = Outgoing {
            method,
            path: &self.path,
            headers,
            extra,
            body,
        };
        match timeout_at(deadline, self.pool.send(req)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(cause)) => Err(UpstreamError::Transport {
                upstream: self.id.clone(),
                cause,
            }),
            Err(_) => Err(self.timeout_error()),
        }
    }

    pub(crate) fn timeout_error(&self) -> UpstreamError {
        UpstreamError::Timeout {
            upstream: self.id.clone(),
            timeout_ms: self.request_timeout_ms.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn protocol_error(&self, reason: impl Into<String>) -> UpstreamError {
        UpstreamError::Protocol {
            upstream: self.id.clone(),
            reason: reason.into(),
        }
    }

    /// An answer that could not be read whole.
    pub(crate) fn answer_error(&self, e: answer_budget::ReadError) -> UpstreamError {
        match e {
            answer_budget::ReadError::TimedOut => self.timeout_error(),
            e => self.protocol_error(format!("reading the answer: {e}")),
        }
    }
}

/// What a server's era is known to be.
#[derive(Clone)]
pub(crate) enum KnownEra {
    Stateful,
    /// What its `server/discover` answer said.
    Modern(Arc<modern::Discovered>),
}

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
    fn modern(
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
        us.modern = Some(client);
        debug!(upstream = %us.server.id, "stateless upstream handle made");
        Arc::new(us)
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
        self.send_traced(body, deadline, b"").await
    }

    /// [`Self::send`] carrying the client's trace context (`traceparent`
    /// and `tracestate` header lines, or nothing).
    pub(crate) async fn send_traced(
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
                let (body, headers) =
                    modern::rewrite(&body, client, &self.headers).ok_or_else(|| {
                        self.server
                            .protocol_error("the request could not be rewritten for 2026-07-28")
                    })?;
                let sent = self
                    .server
                    .send_with(
                        &Method::POST,
                        &HeaderBlock::new(&headers),
                        trace,
                        body,
                        deadline,
                    )
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

    /// A success passes; 404 on a session means the upstream forgot it.
    fn accepted(
        &self,
        resp: Response<UpstreamBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        match resp.status() {
            s if s.is_success() => Ok(resp),
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

/// Reduce an answer (JSON or SSE) to the one JSON-RPC response in it, which
/// must answer `expected_id` (raw JSON). An answer to another request means
/// the upstream is out of step on that connection (it answered twice, or
/// late): the answer is refused and the connection is not reused, so the
/// stray answer cannot reach another request.
pub(crate) async fn read_answer(
    server: &UpstreamServer,
    resp: Response<UpstreamBody>,
    expected_id: &str,
    deadline: Instant,
) -> Result<Bytes, UpstreamError> {
    let is_sse = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.trim_start().starts_with("text/event-stream"));
    let mut body = resp.into_body();
    let unfit = body.unfit();
    if !is_sse {
        let held = answer_budget::read_whole(body, deadline)
            .await
            .map_err(|e| server.answer_error(e))?;
        check_answer_id(server, &held.bytes, expected_id, &unfit)?;
        return Ok(held.bytes);
    }
    let limit = answer_budget::max_answer();
    let mut parser = sse::Parser::default();
    let mut total = 0usize;
    loop {
        let frame = timeout_at(deadline, body.frame())
            .await
            .map_err(|_| server.timeout_error())?;
        let Some(frame) = frame else {
            return Err(server.protocol_error("event stream ended without a response"));
        };
        let frame = frame.map_err(|e| server.protocol_error(format!("reading the stream: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total = total.saturating_add(data.len());
        if total > limit {
            return Err(server.protocol_error(format!(
                "answer larger than {limit} bytes (limits.max_answer_bytes)"
            )));
        }
        parser.push(&data);
        while let Some(event) = parser.next_event() {
            if let Some(env) = jsonrpc::parse(event.data.as_bytes())
                && env.kind() == jsonrpc::Kind::Response
            {
                let message = Bytes::from(event.data);
                check_answer_id(server, &message, expected_id, &unfit)?;
                return Ok(message);
            }
        }
    }
}

/// `message` must be the response to `expected_id`; otherwise the
/// connection it came on is marked unfit and the answer refused.
pub(crate) fn check_answer_id(
    server: &UpstreamServer,
    message: &[u8],
    expected_id: &str,
    unfit: &Unfit,
) -> Result<(), UpstreamError> {
    check_answer_kind(server, message, expected_id, unfit, false).map(|_| ())
}

/// [`check_answer_id`], also saying what kind of answer it is (for a tool
/// call, whether the tool failed), from the same scan.
pub(crate) fn check_answer_kind(
    server: &UpstreamServer,
    message: &[u8],
    expected_id: &str,
    unfit: &Unfit,
    tool_call: bool,
) -> Result<jsonrpc::AnswerKind, UpstreamError> {
    match jsonrpc::response_kind(message, tool_call) {
        Some((id, kind)) if jsonrpc::same_id(id, expected_id) => Ok(kind),
        got => {
            unfit.set();
            let got = got.map_or_else(|| "no response".to_owned(), |(id, _)| format!("id {id}"));
            Err(server.protocol_error(format!(
                "answered another request ({got}, expected id {expected_id}); its connection is closed"
            )))
        }
    }
}
