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
//!
//! A server with `[upstream.oauth]` sends every request with a bearer token
//! of the gateway's own ([`credentials`]: fetched, cached, refreshed, and a
//! 401 answered by one retry with a new token); the client's token never
//! goes upstream.
//!
//! Submodules: [`session`] (one upstream session), [`modern`] (the
//! stateless revision), [`adapter`] (stdio and legacy HTTP+SSE behind
//! Streamable HTTP), [`answer_budget`] (the memory bound on answers),
//! [`credentials`] (the upstream's own OAuth token).

pub(crate) mod adapter;
pub(crate) mod answer_budget;
pub(crate) mod credentials;
#[cfg(test)]
pub(crate) mod fake;
pub(crate) mod modern;
mod session;

pub(crate) use session::{Identity, UpstreamSession};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use mcpgw_mcp::headers::{MCP_PROTOCOL_VERSION, MCP_SESSION_ID};
use mcpgw_protocol::config::{Transport, Upstream, UpstreamEra};
use tokio::time::{Instant, timeout_at};
use tracing::debug;

use crate::http::client::{ConnError, ConnPool, HeaderBlock, Outgoing, Unfit, UpstreamBody};
use crate::http::sse;
use crate::jsonrpc::{self};

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
    /// `[upstream.oauth]`: no token to send (its message names no secret).
    #[error("upstream {upstream} has no access token: {cause}")]
    Credentials {
        upstream: Arc<str>,
        cause: credentials::TokenError,
    },
}

impl UpstreamError {
    pub(crate) fn upstream(&self) -> &str {
        match self {
            Self::Transport { upstream, .. }
            | Self::Timeout { upstream, .. }
            | Self::SessionGone { upstream }
            | Self::Status { upstream, .. }
            | Self::Protocol { upstream, .. }
            | Self::Initialize { upstream, .. }
            | Self::Credentials { upstream, .. } => upstream,
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
            Self::Credentials { .. } => "credentials",
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
    /// `[upstream.oauth]`: the token cache (for a legacy SSE upstream, its
    /// adapter holds it: the adapter talks to the server).
    credentials: Option<Arc<credentials::Credentials>>,
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
    /// The `Mcp-Param-*` headers of this server's tools, learned from its
    /// `tools/list` answers as they pass.
    pub(crate) tool_params: ToolParams,
}

/// Tools of one server that have parameter headers (`x-mcp-header`), by
/// name, as the last `tools/list` answer that named them said. Learned,
/// not asked for: a tool never listed through this worker has none known,
/// so its headers are neither checked nor sent (as an SDK client does for
/// a tool it never listed).
#[derive(Default)]
pub(crate) struct ToolParams {
    tools: std::sync::RwLock<foldhash::HashMap<Box<str>, Arc<[mcpgw_mcp::params::Binding]>>>,
}

/// Tools with parameter headers kept per server at most (a bound on what
/// an upstream's lists can make a worker hold).
const MAX_TOOLS_WITH_PARAMS: usize = 1024;

impl ToolParams {
    /// Learns from one `tools/list` result (raw JSON); a result without
    /// annotations costs a substring scan.
    pub(crate) fn learn(&self, result: &str) {
        let found = mcpgw_mcp::params::tools_with_bindings(result);
        if found.is_empty() {
            return;
        }
        let Ok(mut tools) = self.tools.write() else {
            return;
        };
        for (name, bindings) in found {
            if tools.len() < MAX_TOOLS_WITH_PARAMS || tools.contains_key(name.as_str()) {
                tools.insert(name.into_boxed_str(), bindings.into());
            }
        }
    }

    /// The parameter headers of tool `name`, if it has any known.
    pub(crate) fn of(&self, name: &str) -> Option<Arc<[mcpgw_mcp::params::Binding]>> {
        self.tools.read().ok()?.get(name).cloned()
    }
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
        // The TLS configuration is there for an https url or an https token
        // endpoint (or both); each takes it only for itself.
        let url_tls = tls_config.clone().filter(|_| cfg.is_https());
        let credentials = cfg
            .oauth
            .as_ref()
            .map(|o| {
                credentials::Credentials::new(
                    &cfg.id,
                    o,
                    Duration::from_millis(cfg.connect_timeout_ms),
                    tls_config,
                )
                .map(Arc::new)
            })
            .transpose()
            .map_err(bad)?;
        let (stdio, pool_tls, credentials) = match cfg.transport {
            Transport::StreamableHttp => (None, url_tls, credentials),
            // The adapter is reached over loopback http; it speaks TLS (and
            // sends the token) to a legacy SSE server itself.
            Transport::Stdio | Transport::Sse => (
                Some(
                    crate::upstream::adapter::Adapter::start(cfg, url_tls, credentials)
                        .map_err(|e| bad(e.to_string()))?,
                ),
                None,
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
            credentials,
            era: tokio::sync::Mutex::new(None),
            reused: std::sync::OnceLock::new(),
            counted: std::sync::OnceLock::new(),
            tool_params: ToolParams::default(),
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

    /// What the server said of itself, when it is known to speak the
    /// stateless revision; `None` when it is not, is not known yet, or is
    /// being asked right now (callers then take the path that asks).
    pub(crate) fn known_modern(&self) -> Option<Arc<modern::Discovered>> {
        match self.era.try_lock().ok()?.as_ref()? {
            KnownEra::Modern(found) => Some(found.clone()),
            KnownEra::Stateful => None,
        }
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
        let sent = match &self.credentials {
            None => timeout_at(deadline, self.pool.send(req))
                .await
                .map(|r| r.map_err(credentials::SendError::Conn)),
            Some(c) => timeout_at(deadline, c.send(&self.pool, req)).await,
        };
        match sent {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(credentials::SendError::Conn(cause))) => Err(UpstreamError::Transport {
                upstream: self.id.clone(),
                cause,
            }),
            Ok(Err(credentials::SendError::Token(cause))) => Err(UpstreamError::Credentials {
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
