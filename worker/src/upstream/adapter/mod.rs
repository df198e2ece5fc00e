//! Upstreams that do not speak Streamable HTTP, presented to the rest of
//! the worker as Streamable HTTP servers: stdio programs (one child process
//! per upstream session) and servers of the deprecated HTTP+SSE transport
//! (one event stream per upstream session, [`crate::upstream::adapter::legacy_sse`]).
//!
//! Every such upstream gets, in each worker, a small HTTP server on a
//! loopback port of its own (guarded by a random key header that only this
//! worker knows), and its [`crate::upstream::UpstreamServer`] talks to it like
//! to any other upstream. So everything built for HTTP upstreams — relay of
//! server requests and notifications, cancellation, probes, failover
//! re-attach, eviction on reload — works for them unchanged. The adapter:
//! - on `initialize` (a POST without `Mcp-Session-Id`) opens a new backend
//!   (starts the process: `command`, `args`, `env`, `cwd`; or opens the event
//!   stream at `url`), refusing beyond `max_processes` with an answer that
//!   says so, and names the session;
//! - writes each POSTed message to that process's stdin as one line, and
//!   answers a request with an SSE stream carrying what the process says
//!   about it (its response, progress, logs, requests it makes while the
//!   call runs); notifications and responses get 202;
//! - delivers what belongs to no call on the session's GET stream;
//! - on DELETE closes stdin, then kills the process after a grace period;
//! - when a process exits, answers its pending requests with a JSON-RPC
//!   error naming the exit status, forgets the session (the next request
//!   gets 404, so the gateway starts a new process), and logs it.
//!
//! Processes die with the worker (`PR_SET_PDEATHSIG`), so a session whose
//! worker died cannot be re-attached: its new owner starts a new process.
//! stderr lines go to the log with the upstream id.

mod legacy_sse;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use mcpgw_mcp::headers::MCP_SESSION_ID;
use mcpgw_protocol::config::{Transport, Upstream};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::http::body::Body;
use crate::http::sse;
use crate::jsonrpc;

/// The header that proves a request comes from this worker.
pub(crate) const KEY_HEADER: HeaderName = HeaderName::from_static("x-mcpgw-stdio-key");
/// Longest line (one message) read from a process.
const MAX_LINE: usize = 16 * 1024 * 1024;
/// Longest message POSTed to a process.
const MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// Between closing a process's stdin and killing it.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// A running adapter; dropping it stops the listener and every backend.
pub(crate) struct Adapter {
    pub(crate) addr: SocketAddr,
    pub(crate) key: HeaderValue,
    _stop: watch::Sender<bool>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum StdioError {
    #[error("binding the loopback port for upstream {0}: {1}")]
    Bind(String, std::io::Error),
}

struct Shared {
    upstream: Arc<str>,
    config: Upstream,
    /// A legacy HTTP+SSE upstream at an `https://` url: its TLS client
    /// configuration (built once per (re)load, shared by its streams).
    tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
    /// A legacy HTTP+SSE upstream with `[upstream.oauth]`: its token cache.
    credentials: Option<Arc<crate::upstream::credentials::Credentials>>,
    key: HeaderValue,
    sessions: Mutex<HashMap<String, Arc<Process>>>,
    next: AtomicU64,
}

/// Where a session's messages to the upstream go.
pub(crate) enum Sink {
    /// A process's stdin, one message per line.
    Stdin(ChildStdin),
    /// The endpoint a legacy HTTP+SSE server named.
    Post(legacy_sse::Poster),
}

/// One backend (a process, or a legacy event stream): one upstream session.
pub(crate) struct Process {
    id: String,
    pub(crate) upstream: Arc<str>,
    sink: tokio::sync::Mutex<Option<Sink>>,
    routes: Mutex<Routes>,
    /// Set when the backend ended (the reason).
    pub(crate) gone: watch::Sender<Option<String>>,
}

/// Where the process's messages go.
#[derive(Default)]
struct Routes {
    /// Request id (raw JSON) → the stream of the POST that sent it, in
    /// the order they were sent.
    calls: Vec<(String, mpsc::Sender<Bytes>)>,
    /// Progress token (raw JSON) → request id.
    progress: HashMap<String, String>,
    /// The session's GET stream.
    stream: Option<mpsc::Sender<Bytes>>,
}

impl Routes {
    fn call(&self, id: &str) -> Option<&mpsc::Sender<Bytes>> {
        self.calls.iter().find(|(i, _)| i == id).map(|(_, tx)| tx)
    }

    fn latest_call(&self) -> Option<&mpsc::Sender<Bytes>> {
        self.calls.last().map(|(_, tx)| tx)
    }

    fn end_call(&mut self, id: &str) {
        self.calls.retain(|(i, _)| i != id);
        self.progress.retain(|_, r| r != id);
    }
}

/// The parts of a JSON-RPC message routing needs.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    method: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    params: Option<Params<'a>>,
}

#[derive(Deserialize)]
struct Params<'a> {
    #[serde(rename = "progressToken", borrow, default)]
    progress_token: Option<&'a RawValue>,
    #[serde(rename = "_meta", borrow, default)]
    meta: Option<Meta<'a>>,
}

#[derive(Deserialize)]
struct Meta<'a> {
    #[serde(rename = "progressToken", borrow, default)]
    progress_token: Option<&'a RawValue>,
}

impl Adapter {
    /// Start the adapter for a (validated) stdio or legacy SSE upstream;
    /// `tls` for a legacy SSE one at an `https://` url, `credentials` for
    /// one with `[upstream.oauth]`.
    pub(crate) fn start(
        config: &Upstream,
        tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
        credentials: Option<Arc<crate::upstream::credentials::Credentials>>,
    ) -> Result<Self, StdioError> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(|l| {
                let addr = l.local_addr()?;
                Ok((tokio::net::TcpListener::from_std(l)?, addr))
            });
        let (listener, addr) = listener.map_err(|e| StdioError::Bind(config.id.clone(), e))?;
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw).map_err(|e| {
            StdioError::Bind(config.id.clone(), std::io::Error::other(e.to_string()))
        })?;
        let key: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let key = HeaderValue::from_str(&key).map_err(|e| {
            StdioError::Bind(config.id.clone(), std::io::Error::other(e.to_string()))
        })?;
        let shared = Arc::new(Shared {
            upstream: Arc::from(config.id.as_str()),
            config: config.clone(),
            tls,
            credentials,
            key: key.clone(),
            sessions: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
        });
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(serve(listener, shared, stopped));
        Ok(Self {
            addr,
            key,
            _stop: stop,
        })
    }
}

async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let shared = shared.clone();
                    let svc = service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(shared, req).await) }
                    });
                    tokio::spawn(async move {
                        if let Err(e) = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await
                        {
                            debug!(error = %e, "stdio adapter connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    warn!(error = %e, "stdio adapter accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => break,
        }
    }
    // The upstream was removed or replaced: end every process.
    let all: Vec<Arc<Process>> = match shared.sessions.lock() {
        Ok(mut s) => s.drain().map(|(_, p)| p).collect(),
        Err(_) => Vec::new(),
    };
    for p in all {
        tokio::spawn(async move { p.close().await });
    }
}

fn answer(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut resp = Response::new(crate::http::body::full(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn rpc_error(
    status: StatusCode,
    id: Option<&RawValue>,
    code: i32,
    message: &str,
) -> Response<Body> {
    answer(
        status,
        "application/json",
        jsonrpc::error(id.map_or("null", RawValue::get), code, message, None),
    )
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    if req.headers().get(&KEY_HEADER) != Some(&shared.key) {
        return answer(StatusCode::FORBIDDEN, "text/plain", "forbidden\n");
    }
    let session = req
        .headers()
        .get(MCP_SESSION_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let process = match &session {
        None => None,
        Some(id) => match shared.sessions.lock().ok().and_then(|s| s.get(id).cloned()) {
            Some(p) => Some(p),
            None => return answer(StatusCode::NOT_FOUND, "text/plain", "no such session\n"),
        },
    };
    match (req.method().clone(), process) {
        (Method::POST, process) => post(shared, process, req).await,
        (Method::GET, Some(p)) => {
            let (tx, rx) = mpsc::channel(64);
            if let Ok(mut r) = p.routes.lock() {
                r.stream = Some(tx);
            }
            stream_response(rx, None)
        }
        (Method::DELETE, Some(p)) => {
            if let Ok(mut s) = shared.sessions.lock() {
                s.remove(&p.id);
            }
            p.close().await;
            answer(StatusCode::OK, "text/plain", "")
        }
        (Method::GET | Method::DELETE, None) => answer(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "Mcp-Session-Id required\n",
        ),
        _ => answer(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use POST, GET or DELETE\n",
        ),
    }
}

async fn post(
    shared: Arc<Shared>,
    process: Option<Arc<Process>>,
    req: Request<Incoming>,
) -> Response<Body> {
    let body = match Limited::new(req.into_body(), MAX_MESSAGE).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return answer(
                StatusCode::PAYLOAD_TOO_LARGE,
                "text/plain",
                format!("{e}\n"),
            );
        }
    };
    let Ok(envelope) = serde_json::from_slice::<Envelope<'_>>(&body) else {
        return rpc_error(
            StatusCode::BAD_REQUEST,
            None,
            jsonrpc::PARSE_ERROR,
            "not a JSON-RPC message",
        );
    };
    // A session opened by this very request names itself in the answer.
    let opened = process.is_none();
    let process = match process {
        Some(p) => p,
        None => {
            if envelope.method.as_deref() != Some("initialize") {
                return rpc_error(
                    StatusCode::BAD_REQUEST,
                    envelope.id,
                    jsonrpc::INVALID_REQUEST,
                    "Mcp-Session-Id required (only initialize starts a session)",
                );
            }
            match open(&shared).await {
                Ok(p) => p,
                // The answer to the `initialize` (HTTP 200), so that the
                // reason reaches the client instead of a bare HTTP status.
                Err(reason) => {
                    return rpc_error(
                        StatusCode::OK,
                        envelope.id,
                        jsonrpc::INTERNAL_ERROR,
                        &reason,
                    );
                }
            }
        }
    };
    let line = one_line(&body);
    let (Some(id), Some(_)) = (envelope.id, envelope.method.as_ref()) else {
        // A notification, or the client's answer to the process's request.
        return match process.write(&line).await {
            Ok(()) => answer(StatusCode::ACCEPTED, "text/plain", ""),
            Err(reason) => rpc_error(
                StatusCode::BAD_GATEWAY,
                None,
                jsonrpc::INTERNAL_ERROR,
                &reason,
            ),
        };
    };
    let id = id.get().to_owned();
    let (tx, rx) = mpsc::channel(64);
    if let Ok(mut r) = process.routes.lock() {
        if r.call(&id).is_some() {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                envelope.id,
                jsonrpc::INVALID_REQUEST,
                "a request with this id is still running",
            );
        }
        r.calls.push((id.clone(), tx));
        let token = envelope
            .params
            .as_ref()
            .and_then(|p| p.meta.as_ref().and_then(|m| m.progress_token));
        if let Some(token) = token {
            r.progress.insert(token.get().to_owned(), id.clone());
        }
    }
    if let Err(reason) = process.write(&line).await {
        if let Ok(mut r) = process.routes.lock() {
            r.end_call(&id);
        }
        return rpc_error(
            StatusCode::BAD_GATEWAY,
            envelope.id,
            jsonrpc::INTERNAL_ERROR,
            &reason,
        );
    }
    let mut resp = stream_response(rx, Some((process.clone(), id)));
    if opened && let Ok(v) = HeaderValue::from_str(&process.id) {
        resp.headers_mut().insert(MCP_SESSION_ID, v);
    }
    resp
}

/// The message as one line: raw CR/LF can only be insignificant whitespace
/// in JSON, so they become spaces.
fn one_line(body: &[u8]) -> Vec<u8> {
    let mut line: Vec<u8> = body
        .iter()
        .map(|b| if matches!(b, b'\n' | b'\r') { b' ' } else { *b })
        .collect();
    line.push(b'\n');
    line
}

/// An SSE answer fed by `rx`; for a call, it ends the call's routing when
/// the gateway stops reading (the call ended or the client went away).
fn stream_response(
    rx: mpsc::Receiver<Bytes>,
    call: Option<(Arc<Process>, String)>,
) -> Response<Body> {
    struct EndCall(Option<(Arc<Process>, String)>);
    impl Drop for EndCall {
        fn drop(&mut self) {
            if let Some((p, id)) = self.0.take()
                && let Ok(mut r) = p.routes.lock()
            {
                r.end_call(&id);
            }
        }
    }
    let mut resp = Response::new(crate::http::body::channel_guarded(rx, EndCall(call)));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    resp
}

/// Open a backend for a new session, within the cap; else why not.
async fn open(shared: &Arc<Shared>) -> Result<Arc<Process>, String> {
    let cap = shared.config.max_processes as usize;
    let live = shared.sessions.lock().map_or(0, |s| s.len());
    if live >= cap {
        warn!(upstream = %shared.upstream, cap, "upstream at its cap of live sessions; session refused");
        return Err(format!(
            "upstream {} already holds {cap} sessions in this worker (max_processes)",
            shared.upstream
        ));
    }
    let process = match shared.config.transport {
        Transport::Sse => {
            let id = format!("sse-{}", shared.next.fetch_add(1, Ordering::Relaxed));
            let opened = legacy_sse::open(
                &shared.upstream,
                &shared.config,
                shared.tls.clone(),
                shared.credentials.clone(),
            )
            .await?;
            let process = new_process(id, shared.upstream.clone(), Sink::Post(opened.poster));
            let reader = process.clone();
            tokio::spawn(async move {
                let gone = reader.gone.subscribe();
                let reason =
                    legacy_sse::read_events(opened.events, gone, |m| reader.route(m)).await;
                reader.ended(&format!(
                    "legacy SSE upstream {}: {reason}",
                    reader.upstream
                ));
            });
            process
        }
        Transport::Stdio | Transport::StreamableHttp => start_process(shared)?,
    };
    if let Ok(mut s) = shared.sessions.lock() {
        s.insert(process.id.clone(), process.clone());
    }
    let watched = process.clone();
    let shared = shared.clone();
    tokio::spawn(async move {
        let mut gone = watched.gone.subscribe();
        let _ = gone.wait_for(Option::is_some).await;
        if let Ok(mut s) = shared.sessions.lock() {
            s.remove(&watched.id);
        }
    });
    Ok(process)
}

/// A backend session named `id`, writing to `sink`.
fn new_process(id: String, upstream: Arc<str>, sink: Sink) -> Arc<Process> {
    let (gone, _) = watch::channel(None);
    Arc::new(Process {
        id,
        upstream,
        sink: tokio::sync::Mutex::new(Some(sink)),
        routes: Mutex::new(Routes::default()),
        gone,
    })
}

/// Start a process for a new session.
fn start_process(shared: &Arc<Shared>) -> Result<Arc<Process>, String> {
    let c = &shared.config;
    let program = c.command.as_deref().unwrap_or_default();
    let mut cmd = std::process::Command::new(program);
    cmd.args(&c.args)
        .envs(&c.env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(dir) = &c.cwd {
        cmd.current_dir(dir);
    }
    mcpgw_protocol::fdpass::kill_with_parent(&mut cmd);
    let mut child = match Command::from(cmd).kill_on_drop(true).spawn() {
        Ok(child) => child,
        Err(e) => {
            warn!(upstream = %shared.upstream, command = program, error = %e, "cannot start stdio upstream");
            return Err(format!(
                "cannot start stdio upstream {} ({program}): {e}",
                shared.upstream
            ));
        }
    };
    let pid = child.id().unwrap_or(0);
    let id = format!(
        "stdio-{pid}-{}",
        shared.next.fetch_add(1, Ordering::Relaxed)
    );
    let Some(stdin) = child.stdin.take() else {
        return Err(format!("stdio upstream {}: no stdin pipe", shared.upstream));
    };
    let process = new_process(id, shared.upstream.clone(), Sink::Stdin(stdin));
    if let Some(stderr) = child.stderr.take() {
        let upstream = shared.upstream.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                info!(upstream = %upstream, pid, "stderr: {line}");
            }
        });
    }
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(read_messages(process.clone(), stdout));
    }
    tokio::spawn(watch_exit(process.clone(), child));
    info!(upstream = %shared.upstream, pid, "stdio upstream process started");
    Ok(process)
}

/// Route every line the process writes.
async fn read_messages(process: Arc<Process>, stdout: tokio::process::ChildStdout) {
    let mut reader = BufReader::new(stdout);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) => return,
            Ok(_) if line.len() > MAX_LINE => {
                warn!(upstream = %process.upstream, "stdio upstream wrote a message over {MAX_LINE} bytes; stopping it");
                process.close().await;
                return;
            }
            Ok(_) => process.route(trim(&line)),
            Err(e) => {
                debug!(upstream = %process.upstream, error = %e, "reading a stdio upstream failed");
                return;
            }
        }
    }
}

fn trim(line: &[u8]) -> &[u8] {
    let end = line
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    &line[..end]
}

/// Wait for the process to end; then fail what waits on it.
async fn watch_exit(process: Arc<Process>, mut child: Child) {
    let mut gone = process.gone.subscribe();
    let status = tokio::select! {
        status = child.wait() => status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
        _ = gone.changed() => {
            // Closing: give it the grace period after stdin closed.
            match tokio::time::timeout(CLOSE_GRACE, child.wait()).await {
                Ok(status) => status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
                Err(_) => {
                    let _ = child.kill().await;
                    "killed after the close grace period".to_owned()
                }
            }
        }
    };
    process.ended(&format!(
        "stdio upstream {} exited ({status})",
        process.upstream
    ));
}

impl Process {
    /// The backend is gone (`reason`): fail the calls waiting on it. A
    /// close the gateway asked for is not an error.
    pub(crate) fn ended(&self, reason: &str) {
        let closing = self.gone.borrow().is_some();
        let calls = self
            .routes
            .lock()
            .map(|mut r| std::mem::take(&mut r.calls))
            .unwrap_or_default();
        if closing {
            debug!(upstream = %self.upstream, reason, "upstream session backend ended");
        } else {
            warn!(upstream = %self.upstream, reason, pending = calls.len(), "upstream session backend ended");
        }
        for (id, tx) in calls {
            let _ = tx.try_send(sse::message_event(&jsonrpc::error(
                &id,
                jsonrpc::INTERNAL_ERROR,
                reason,
                None,
            )));
        }
        self.gone
            .send_if_modified(|g| g.is_none().then(|| *g = Some(reason.to_owned())).is_some());
    }

    async fn write(&self, line: &[u8]) -> Result<(), String> {
        if let Some(reason) = self.gone.borrow().clone() {
            return Err(reason);
        }
        let mut sink = self.sink.lock().await;
        match sink.as_mut() {
            None => Err(format!("upstream {} session is closing", self.upstream)),
            Some(Sink::Stdin(pipe)) => match pipe.write_all(line).await {
                Ok(()) => pipe.flush().await.map_err(|e| e.to_string()),
                Err(e) => Err(format!("writing to stdio upstream {}: {e}", self.upstream)),
            },
            Some(Sink::Post(poster)) => poster.post(line).await,
        }
    }

    /// Close stdin (the MCP way to ask a stdio server to exit; the exit
    /// watcher kills it if it does not within the grace period), or the
    /// legacy event stream.
    pub(crate) async fn close(&self) {
        self.sink.lock().await.take();
        self.gone.send_if_modified(|g| {
            g.is_none()
                .then(|| *g = Some("closed".to_owned()))
                .is_some()
        });
    }

    /// Deliver one message from the process to whoever waits for it.
    pub(crate) fn route(&self, message: &[u8]) {
        if message.is_empty() {
            return;
        }
        let Ok(envelope) = serde_json::from_slice::<Envelope<'_>>(message) else {
            warn!(upstream = %self.upstream, "stdio upstream wrote a line that is not JSON-RPC; ignored");
            return;
        };
        let event = sse::message_event(message);
        let Ok(mut routes) = self.routes.lock() else {
            return;
        };
        let target = match (&envelope.method, envelope.id) {
            // A response: to its call, which it ends.
            (None, Some(id)) => {
                let id = id.get().to_owned();
                let tx = routes.call(&id).cloned();
                routes.end_call(&id);
                tx
            }
            (Some(method), _) if method == "notifications/progress" => {
                let token = envelope
                    .params
                    .as_ref()
                    .and_then(|p| p.progress_token)
                    .map(|t| t.get().to_owned());
                token
                    .and_then(|t| routes.progress.get(&t).cloned())
                    .and_then(|id| routes.call(&id).cloned())
                    .or_else(|| routes.stream.clone())
            }
            // Requests and logs while a call runs belong to that call.
            (Some(method), id) if id.is_some() || method == "notifications/message" => routes
                .latest_call()
                .cloned()
                .or_else(|| routes.stream.clone()),
            _ => routes
                .stream
                .clone()
                .or_else(|| routes.latest_call().cloned()),
        };
        drop(routes);
        match target {
            Some(tx) => {
                if tx.try_send(event).is_err() {
                    debug!(upstream = %self.upstream, "a stdio upstream message found no reader; dropped");
                }
            }
            None => {
                debug!(upstream = %self.upstream, "a stdio upstream message belongs to no stream; dropped")
            }
        }
    }
}
