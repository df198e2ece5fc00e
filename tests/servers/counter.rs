//! `counter-server`: a small stateful MCP server (Streamable HTTP, protocol 2025-03-26,
//! 2025-06-18 and 2025-11-25) that the end-to-end tests put behind the gateway.
//!
//! Its state is one counter per MCP session, so that any sharing or re-creation of
//! upstream sessions by the gateway shows up as a wrong count (ContextForge #4205). It
//! also counts what it received (`GET /stats`) so tests can assert on how many upstream
//! sessions the gateway opened and closed.
//!
//! For the `mcpgw wrapper` tests it also has a hidden `ask_roots` tool (a server→client
//! `roots/list` request inside a tools/call stream), a `--stateless` mode (no session id,
//! routing headers required) and `POST /forget-sessions` (a server that lost its
//! sessions); see the end of the file.
//!
//! For the relay tests (server→client traffic through the gateway) it has hidden tools
//! `ask` (a sampling, elicitation or roots request on the call's stream or on the GET
//! stream, waiting for the client's answer), `chatty` (progress and log notifications,
//! then a result), `notify` (list_changed, resources/updated and a log message on the GET
//! stream; `notify_all`: on every session's GET stream), a cancellable `slow`, and `GET /debug/events`: what the server received that a
//! test cannot see otherwise (initialize capabilities, cancellations, answers to its
//! requests, logging levels, subscriptions, other notifications).
//!
//! For the hardening tests it has a hidden `flood` tool (an SSE answer carrying many
//! server→client `ping` requests, then the result) and counts, in `GET /stats`, the
//! TCP connections it accepted and the answers to `flood` pings it received.
//!
//! For the https-upstream tests it can serve the same app over TLS as well, on a second
//! port (`--tls-cert`/`--tls-key`, optionally requiring a client certificate signed by
//! `--tls-client-ca`), announced as a second line `counter-server listening https://ADDR`;
//! the plaintext port stays for the harness's `/stats`. A minimal legacy HTTP+SSE
//! (2024-11-05) face, `GET /sse` and `POST /messages?session=ID`, serves the same tools
//! (plain requests and notifications only), so a legacy upstream can be tested over TLS
//! too.
//!
//! For the upstream-credentials tests, `--bearer-file PATH` makes every MCP and legacy
//! request need `Authorization: Bearer TOKEN` for a line `TOKEN [EXPIRES_UNIX_MS]` of
//! that file as it is now, unexpired (401 otherwise, counted as `unauthorized` in
//! `/stats`), so a test's token endpoint decides which tokens are valid by rewriting it. Every `Authorization` value the
//! server received is listed by `GET /debug/authorizations`.
//!
//! It owns only test-server behaviour; the harness that starts it lives in
//! `support/counter.rs`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt as _;
use clap::Parser;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};

const SUPPORTED_VERSIONS: [&str; 3] = ["2025-03-26", "2025-06-18", "2025-11-25"];
const LATEST_VERSION: &str = "2025-11-25";
const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";
/// How often an open GET stream carries a comment, so that idle-timeout handling of
/// long-lived streams in the gateway gets exercised.
const STREAM_KEEPALIVE: Duration = Duration::from_secs(5);
/// Upper bound for the `slow` tool, so a mistaken argument cannot hang a test run.
const MAX_SLOW_MS: u64 = 120_000;

#[derive(Parser, Debug)]
#[command(about = "Stateful counter MCP server for mcpgw tests")]
struct Args {
    /// Address to listen on; use port 0 for an ephemeral port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Answer every request as `text/event-stream` instead of `application/json`.
    #[arg(long)]
    sse: bool,
    /// Server name reported in `serverInfo` and in prompt text.
    #[arg(long, default_value = "counter")]
    name: String,
    /// `instructions` in the `initialize` answer (none without it).
    #[arg(long)]
    instructions: Option<String>,
    /// Paginate `tools/list` with at most this many tools per page.
    #[arg(long)]
    page_size: Option<usize>,
    /// Hand out no session id (one shared counter) and require the 2026-07-28 routing
    /// headers (`Mcp-Method`, `Mcp-Name`, `MCP-Protocol-Version`) on every POST.
    #[arg(long)]
    stateless: bool,
    /// Refuse (401) every POST without this header, as 'Name: value'
    /// (an upstream that wants a credential).
    #[arg(long, value_name = "NAME: VALUE")]
    require_header: Option<String>,
    /// Also serve over TLS (rustls) with this certificate chain (PEM), on an
    /// ephemeral port of the `--listen` address.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Require TLS clients to present a certificate signed by this CA (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<std::path::PathBuf>,
    /// Refuse (401) every MCP and legacy request whose `Authorization` is not
    /// `Bearer TOKEN` for an unexpired line `TOKEN [EXPIRES_UNIX_MS]` of this file,
    /// read anew for each request.
    #[arg(long)]
    bearer_file: Option<std::path::PathBuf>,
}

struct Session {
    count: u64,
    /// Dropped with the session; open GET streams watch it to end when the session does.
    _alive: watch::Sender<()>,
    alive_rx: watch::Receiver<()>,
    /// The open GET stream's queue of server-initiated messages, if one is open.
    stream: Option<mpsc::UnboundedSender<Value>>,
}

#[derive(Default)]
struct Stats {
    initialize: AtomicU64,
    delete: AtomicU64,
    tools_call: AtomicU64,
    ping: AtomicU64,
    slow_in_flight: AtomicU64,
    open_streams: AtomicU64,
    /// TCP connections accepted, ever.
    connections: Arc<AtomicU64>,
    /// Answers (responses) received to `flood`'s pings.
    flood_answers: AtomicU64,
    /// Requests refused for want of the `--bearer-file` token.
    unauthorized: AtomicU64,
}

struct Server {
    name: String,
    instructions: Option<String>,
    sse: bool,
    page_size: Option<usize>,
    sessions: Mutex<HashMap<String, Session>>,
    stats: Stats,
    stateless: bool,
    /// Server→client requests awaiting the client's response, by request id.
    asked: Mutex<HashMap<String, Asked>>,
    next_ask: AtomicU64,
    /// Running `slow` calls by (session, request id as JSON), to cancel them.
    running: Mutex<HashMap<(String, String), oneshot::Sender<String>>>,
    /// What `GET /debug/events` reports, in arrival order.
    events: Mutex<Vec<Value>>,
    /// `--require-header`, split into name and value.
    required_header: Option<(String, String)>,
    /// `--bearer-file`.
    bearer_file: Option<std::path::PathBuf>,
    /// Every distinct `Authorization` value received (at most 1000).
    authorizations: Mutex<std::collections::BTreeSet<String>>,
}

impl Server {
    fn sessions(&self) -> MutexGuard<'_, HashMap<String, Session>> {
        // A panic while holding the lock cannot leave the map half-updated (every
        // critical section is a single insert/remove/increment), so poisoning is ignored.
        self.sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A JSON-RPC error object.
struct RpcError {
    code: i64,
    message: String,
}

impl RpcError {
    fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(-32602, message)
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let local = listener.local_addr()?;
    let server = Arc::new(Server {
        name: args.name,
        instructions: args.instructions,
        sse: args.sse,
        page_size: args.page_size.filter(|&n| n > 0),
        sessions: Mutex::new(HashMap::new()),
        stats: Stats::default(),
        stateless: args.stateless,
        asked: Mutex::new(HashMap::new()),
        next_ask: AtomicU64::new(1),
        running: Mutex::new(HashMap::new()),
        events: Mutex::new(Vec::new()),
        required_header: args.require_header.as_deref().map(|h| {
            let (name, value) = h.split_once(':').unwrap_or((h, ""));
            (name.trim().to_owned(), value.trim().to_owned())
        }),
        bearer_file: args.bearer_file,
        authorizations: Mutex::new(std::collections::BTreeSet::new()),
    });
    if server.stateless {
        server
            .sessions()
            .insert(STATELESS_SESSION.to_owned(), Session::new());
    }
    let app = Router::new()
        .route("/mcp", get(get_mcp).post(post_mcp).delete(delete_mcp))
        .route("/stats", get(stats))
        .route("/forget-sessions", axum::routing::post(forget_sessions))
        .route("/debug/events", get(debug_events))
        .route("/debug/authorizations", get(debug_authorizations))
        .route("/sse", get(legacy_stream))
        .route("/messages", axum::routing::post(legacy_message))
        .with_state(server.clone());

    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let acceptor = tls_acceptor(cert, key, args.tls_client_ca.as_deref())?;
            let tcp = tokio::net::TcpListener::bind(SocketAddr::new(local.ip(), 0)).await?;
            Some(TlsListener { tcp, acceptor })
        }
        _ => None,
    };

    // The harness waits for exactly these lines; they must be flushed before serving.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "counter-server listening http://{local}")?;
    if let Some(tls) = &tls {
        writeln!(
            stdout,
            "counter-server listening https://{}",
            tls.tcp.local_addr()?
        )?;
    }
    stdout.flush()?;
    drop(stdout);
    if let Some(tls) = tls {
        let app = app.clone();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(tls, app).await {
                eprintln!("TLS listener failed: {e}");
            }
        });
    }
    eprintln!(
        "[{}] listening on {local} (sse={}, page_size={:?})",
        server.name, server.sse, server.page_size
    );

    // Small SSE writes must not wait for Nagle.
    let connections = server.stats.connections.clone();
    let listener = listener.tap_io(move |tcp| {
        connections.fetch_add(1, Ordering::SeqCst);
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await?;
    Ok(())
}

/// A rustls server configuration: ALPN http/1.1, and with `client_ca` a
/// required client certificate signed by it.
fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
    client_ca: Option<&std::path::Path>,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use anyhow::Context as _;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading {}", cert.display()))?;
    let key =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca)
                .with_context(|| format!("reading {}", ca.display()))?
            {
                roots.add(c?)?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// The TLS port as an axum listener. Handshakes run one at a time, each bounded, which
/// is plenty for tests; a failed one (a client that refused our certificate, or one
/// without a client certificate) is logged and skipped.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (tcp, addr) = match self.tcp.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    eprintln!("TLS accept: {e}");
                    // An fd limit or similar: do not spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            match tokio::time::timeout(Duration::from_secs(5), self.acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => return (tls, addr),
                Ok(Err(e)) => eprintln!("TLS handshake from {addr} failed: {e}"),
                Err(_) => eprintln!("TLS handshake from {addr} timed out"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// Legacy HTTP+SSE: a new session whose messages are answered on this stream, after
/// an `endpoint` event naming where to POST them.
async fn legacy_stream(State(srv): State<Arc<Server>>, headers: HeaderMap) -> Response {
    if let Some(refused) = refuse_without_bearer(&srv, &headers) {
        return refused;
    }
    let Ok(session) = mint_session_id() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let (tx, rx) = mpsc::unbounded_channel::<Value>();
    let mut s = Session::new();
    s.stream = Some(tx);
    srv.sessions().insert(session.clone(), s);
    let first = Bytes::from(format!(
        "event: endpoint\ndata: /messages?session={session}\n\n"
    ));
    let stream = futures_util::stream::unfold((Some(first), rx), |(first, mut rx)| async move {
        if let Some(first) = first {
            return Some((Ok::<_, Infallible>(first), (None, rx)));
        }
        let message = rx.recv().await?;
        let chunk = Bytes::from(format!("event: message\ndata: {message}\n\n"));
        Some((Ok(chunk), (None, rx)))
    });
    let mut response = Response::new(Body::from_stream(stream));
    set_content_type(&mut response, "text/event-stream");
    response
}

/// Legacy HTTP+SSE: a message of session `?session=ID`; the answer goes on its stream.
async fn legacy_message(
    State(srv): State<Arc<Server>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = refuse_without_bearer(&srv, &headers) {
        return refused;
    }
    let Some(session) = uri.query().and_then(|q| q.strip_prefix("session=")) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let Ok(msg) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let method = msg.get("method").and_then(Value::as_str).unwrap_or("");
    let params = msg.get("params").cloned().unwrap_or(Value::Null);
    let Some(id) = msg.get("id").cloned() else {
        return StatusCode::ACCEPTED.into_response();
    };
    let answer = if method == "initialize" {
        srv.stats.initialize.fetch_add(1, Ordering::SeqCst);
        let result = initialize_result(&srv, "2024-11-05");
        json!({"jsonrpc": "2.0", "id": id, "result": result})
    } else {
        match dispatch(&srv, session, method, &params).await {
            Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
            Err(e) => error_message(&id, e.code, &e.message),
        }
    };
    let sent = srv
        .sessions()
        .get(session)
        .and_then(|s| s.stream.as_ref())
        .is_some_and(|tx| tx.send(answer).is_ok());
    if sent {
        StatusCode::ACCEPTED.into_response()
    } else {
        SessionProblem::Unknown.into_response()
    }
}

async fn stats(State(srv): State<Arc<Server>>) -> Response {
    let live = srv.sessions().len();
    let s = &srv.stats;
    json_response(
        StatusCode::OK,
        &json!({
            "initialize": s.initialize.load(Ordering::SeqCst),
            "delete": s.delete.load(Ordering::SeqCst),
            "live_sessions": live,
            "tools_call": s.tools_call.load(Ordering::SeqCst),
            "ping": s.ping.load(Ordering::SeqCst),
            "slow_in_flight": s.slow_in_flight.load(Ordering::SeqCst),
            "open_streams": s.open_streams.load(Ordering::SeqCst),
            "connections": s.connections.load(Ordering::SeqCst),
            "flood_answers": s.flood_answers.load(Ordering::SeqCst),
            "unauthorized": s.unauthorized.load(Ordering::SeqCst),
        }),
    )
}

/// Why a request's session is not usable, as the HTTP answer the transport spec asks for.
enum SessionProblem {
    Missing,
    Unknown,
    BadVersion(String),
}

impl SessionProblem {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            Self::Missing => (StatusCode::BAD_REQUEST, "missing Mcp-Session-Id".to_owned()),
            Self::Unknown => (StatusCode::NOT_FOUND, "unknown session".to_owned()),
            Self::BadVersion(v) => (
                StatusCode::BAD_REQUEST,
                format!("unsupported MCP-Protocol-Version {v:?}"),
            ),
        };
        json_response(status, &error_message(&Value::Null, -32600, &message))
    }
}

/// Returns the session id named by the request, if it exists and the request's
/// protocol-version header (when present) is one this server speaks.
fn check_session(srv: &Server, headers: &HeaderMap) -> Result<String, SessionProblem> {
    if let Some(v) = headers.get(VERSION_HEADER) {
        let v = v.to_str().unwrap_or_default();
        if !SUPPORTED_VERSIONS.contains(&v) {
            return Err(SessionProblem::BadVersion(v.to_owned()));
        }
    }
    let id = headers
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or(SessionProblem::Missing)?;
    if srv.sessions().contains_key(id) {
        Ok(id.to_owned())
    } else {
        Err(SessionProblem::Unknown)
    }
}

async fn post_mcp(State(srv): State<Arc<Server>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(refused) = refuse_without_bearer(&srv, &headers) {
        return refused;
    }
    if let Some((name, value)) = &srv.required_header
        && headers.get(name.as_str()).and_then(|v| v.to_str().ok()) != Some(value.as_str())
    {
        return json_response(
            StatusCode::UNAUTHORIZED,
            &serde_json::json!({"error": format!("header {name} missing or wrong")}),
        );
    }
    let msg: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                &error_message(&Value::Null, -32700, &format!("parse error: {e}")),
            );
        }
    };
    let Some(obj) = msg.as_object() else {
        return json_response(
            StatusCode::BAD_REQUEST,
            &error_message(
                &Value::Null,
                -32600,
                "expected one JSON-RPC object (batches are not supported)",
            ),
        );
    };
    let id = obj.get("id").cloned();
    let params = obj.get("params").cloned().unwrap_or(Value::Null);
    if let Some(trace) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
        srv.record(json!({"kind": "traceparent", "method": obj.get("method"),
            "traceparent": trace,
            "tracestate": headers.get("tracestate").and_then(|v| v.to_str().ok())}));
    }
    let Some(method) = obj.get("method").and_then(Value::as_str) else {
        // A response to a server-initiated request: `ask_roots` waits for it, others are dropped.
        if obj.contains_key("result") || obj.contains_key("error") {
            return client_answered(&srv, &headers, &msg);
        }
        return json_response(
            StatusCode::BAD_REQUEST,
            &error_message(&id.unwrap_or(Value::Null), -32600, "missing method"),
        );
    };

    if srv.stateless
        && let Err(problem) = check_routing_headers(&headers, method, &params)
    {
        let id = id.unwrap_or(Value::Null);
        return json_response(
            StatusCode::BAD_REQUEST,
            &error_message(&id, -32600, &problem),
        );
    }
    if method == "initialize" {
        return initialize(&srv, id.unwrap_or(Value::Null), &params);
    }
    let session = if srv.stateless {
        STATELESS_SESSION.to_owned()
    } else {
        match check_session(&srv, &headers) {
            Ok(s) => s,
            Err(problem) => return problem.into_response(),
        }
    };
    let Some(id) = id else {
        client_notification(&srv, &session, method, &params);
        return StatusCode::ACCEPTED.into_response();
    };
    if method == "tools/call" && params.get("name").and_then(Value::as_str) == Some("ask_roots") {
        srv.stats.tools_call.fetch_add(1, Ordering::SeqCst);
        return ask_roots(srv, session, id);
    }
    if method == "tools/call" {
        let name = params.get("name").and_then(Value::as_str).unwrap_or("");
        let relay_tool = match name {
            "ask" => Some(ask(srv.clone(), session.clone(), id.clone(), &params)),
            "chatty" => Some(chatty(&srv, &id, &params)),
            "notify" => Some(notify(&srv, &session, &id, &params)),
            "notify_all" => Some(notify_all(&srv, &id, &params)),
            "flood" => Some(flood(&id, &params)),
            "slow" => Some(slow(srv.clone(), session.clone(), id.clone(), &params).await),
            _ => None,
        };
        if let Some(response) = relay_tool {
            srv.stats.tools_call.fetch_add(1, Ordering::SeqCst);
            return response;
        }
    }
    let answer = match dispatch(&srv, &session, method, &params).await {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err(e) => error_message(&id, e.code, &e.message),
    };
    rpc_response(&srv, &answer, None)
}

fn initialize(srv: &Server, id: Value, params: &Value) -> Response {
    srv.stats.initialize.fetch_add(1, Ordering::SeqCst);
    let requested = params.get("protocolVersion").and_then(Value::as_str);
    let version = requested
        .filter(|v| SUPPORTED_VERSIONS.contains(v))
        .unwrap_or(LATEST_VERSION);
    if srv.stateless {
        // No session: the answer carries no Mcp-Session-Id and nothing is remembered.
        eprintln!("[{}] initialize without a session ({version})", srv.name);
        let answer = json!({"jsonrpc": "2.0", "id": id, "result": initialize_result(srv, version)});
        return rpc_response(srv, &answer, None);
    }
    let session_id = match mint_session_id() {
        Ok(s) => s,
        Err(e) => {
            return json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &error_message(&id, -32603, &format!("no randomness: {e}")),
            );
        }
    };
    srv.sessions().insert(session_id.clone(), Session::new());
    srv.record(json!({
        "kind": "initialize",
        "session": session_id,
        "capabilities": params.get("capabilities").cloned().unwrap_or(Value::Null),
        "clientInfo": params.get("clientInfo").cloned().unwrap_or(Value::Null),
    }));
    eprintln!(
        "[{}] initialize -> session {session_id} ({version})",
        srv.name
    );
    let result = initialize_result(srv, version);
    rpc_response(
        srv,
        &json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Some(&session_id),
    )
}

fn initialize_result(srv: &Server, version: &str) -> Value {
    let mut result = json!({
        "protocolVersion": version,
        "capabilities": {
            "tools": {"listChanged": true}, "prompts": {},
            "resources": {"subscribe": true, "listChanged": true},
            "logging": {}, "completions": {}
        },
        "serverInfo": {"name": srv.name, "version": "1.0.0"},
    });
    if let Some(text) = &srv.instructions {
        result["instructions"] = json!(text);
    }
    result
}

fn mint_session_id() -> Result<String, getrandom::Error> {
    let mut raw = [0u8; 16];
    getrandom::fill(&mut raw)?;
    Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
}

async fn dispatch(
    srv: &Server,
    session: &str,
    method: &str,
    params: &Value,
) -> Result<Value, RpcError> {
    match method {
        "ping" => {
            srv.stats.ping.fetch_add(1, Ordering::SeqCst);
            Ok(json!({}))
        }
        "tools/list" => list_tools(srv, params),
        "tools/call" => {
            srv.stats.tools_call.fetch_add(1, Ordering::SeqCst);
            call_tool(srv, session, params).await
        }
        "prompts/list" => Ok(json!({"prompts": [{
            "name": "greeting",
            "description": "Greets someone by name",
            "arguments": [{"name": "name", "description": "Who to greet", "required": true}],
        }]})),
        "prompts/get" => get_prompt(srv, params),
        "resources/list" => Ok(json!({"resources": [{
            "uri": "counter://value",
            "name": "value",
            "description": "This session's counter",
            "mimeType": "text/plain",
        }]})),
        "resources/templates/list" => Ok(json!({"resourceTemplates": [{
            "uriTemplate": "counter://sessions/{id}",
            "name": "session",
            "description": "A session's counter",
            "mimeType": "text/plain",
        }]})),
        "resources/read" => read_resource(srv, session, params),
        "completion/complete" => Ok(json!({
            "completion": {"values": ["alice", "bob"], "total": 2, "hasMore": false}
        })),
        "logging/setLevel" => {
            srv.record(json!({"kind": "setLevel", "session": session,
                "level": params.get("level").cloned().unwrap_or(Value::Null)}));
            Ok(json!({}))
        }
        "resources/subscribe" | "resources/unsubscribe" => {
            srv.record(json!({"kind": method, "session": session,
                "uri": params.get("uri").cloned().unwrap_or(Value::Null)}));
            Ok(json!({}))
        }
        other => Err(RpcError::new(-32601, format!("method not found: {other}"))),
    }
}

fn tool_definitions() -> Vec<Value> {
    let no_args = json!({"type": "object", "properties": {}});
    let count_schema = json!({
        "type": "object",
        "properties": {"count": {"type": "integer"}},
        "required": ["count"],
    });
    vec![
        json!({
            "name": "increment",
            "description": "Adds 1 to this session's counter and returns the new value",
            "inputSchema": no_args,
            "outputSchema": count_schema,
        }),
        json!({
            "name": "get_count",
            "description": "Returns this session's counter",
            "inputSchema": no_args,
            "outputSchema": count_schema,
        }),
        json!({
            "name": "slow",
            "description": "Sleeps for `ms` milliseconds, then answers",
            "inputSchema": {
                "type": "object",
                "properties": {"ms": {"type": "integer", "minimum": 0}},
                "required": ["ms"],
            },
        }),
        json!({
            "name": "fail",
            "description": "Always returns a tool error",
            "inputSchema": no_args,
        }),
    ]
}

fn list_tools(srv: &Server, params: &Value) -> Result<Value, RpcError> {
    let tools = tool_definitions();
    let Some(page) = srv.page_size else {
        return Ok(json!({ "tools": tools }));
    };
    // Cursors are opaque to clients; here they are just "p" + the offset of the next page.
    let start = match params.get("cursor") {
        None | Some(Value::Null) => 0,
        Some(c) => c
            .as_str()
            .and_then(|c| c.strip_prefix('p'))
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&n| n < tools.len())
            .ok_or_else(|| RpcError::invalid_params(format!("invalid cursor {c}")))?,
    };
    let end = (start + page).min(tools.len());
    let mut result = json!({ "tools": tools[start..end] });
    if end < tools.len() {
        result["nextCursor"] = json!(format!("p{end}"));
    }
    Ok(result)
}

async fn call_tool(srv: &Server, session: &str, params: &Value) -> Result<Value, RpcError> {
    let name = params
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| RpcError::invalid_params("tools/call without a tool name"))?;
    match name {
        "increment" | "get_count" => {
            let mut sessions = srv.sessions();
            let s = sessions
                .get_mut(session)
                .ok_or_else(|| RpcError::new(-32600, "session ended"))?;
            if name == "increment" {
                s.count += 1;
            }
            Ok(count_result(s.count))
        }
        "fail" => Ok(json!({
            "content": [{"type": "text", "text": "fail: this tool always fails"}],
            "isError": true,
        })),
        other => Err(RpcError::invalid_params(format!("Unknown tool: {other}"))),
    }
}

fn count_result(count: u64) -> Value {
    json!({
        "content": [{"type": "text", "text": count.to_string()}],
        "structuredContent": {"count": count},
        "isError": false,
    })
}

/// Counts a request as in flight until it is answered or dropped (client gone).
struct InFlight<'a>(&'a AtomicU64);

impl<'a> InFlight<'a> {
    fn enter(counter: &'a AtomicU64) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Self(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn get_prompt(srv: &Server, params: &Value) -> Result<Value, RpcError> {
    let name = params.get("name").and_then(Value::as_str).unwrap_or("");
    if name != "greeting" {
        return Err(RpcError::invalid_params(format!("Unknown prompt: {name}")));
    }
    let who = params
        .pointer("/arguments/name")
        .and_then(Value::as_str)
        .ok_or_else(|| RpcError::invalid_params("greeting needs the argument name"))?;
    Ok(json!({
        "description": "A greeting",
        "messages": [{
            "role": "user",
            "content": {"type": "text", "text": format!("Hello, {who} from {}", srv.name)},
        }],
    }))
}

fn read_resource(srv: &Server, session: &str, params: &Value) -> Result<Value, RpcError> {
    let uri = params.get("uri").and_then(Value::as_str).unwrap_or("");
    let sessions = srv.sessions();
    let target = if uri == "counter://value" {
        Some(session)
    } else {
        uri.strip_prefix("counter://sessions/")
    };
    let count = target
        .and_then(|id| sessions.get(id))
        .map(|s| s.count)
        .ok_or_else(|| RpcError::new(-32002, format!("Resource not found: {uri}")))?;
    Ok(json!({"contents": [{"uri": uri, "mimeType": "text/plain", "text": count.to_string()}]}))
}

async fn get_mcp(State(srv): State<Arc<Server>>, headers: HeaderMap) -> Response {
    if let Some(refused) = refuse_without_bearer(&srv, &headers) {
        return refused;
    }
    if srv.stateless {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let session = match check_session(&srv, &headers) {
        Ok(s) => s,
        Err(problem) => return problem.into_response(),
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let alive = {
        let mut sessions = srv.sessions();
        let Some(s) = sessions.get_mut(&session) else {
            return SessionProblem::Unknown.into_response();
        };
        // A newer GET stream replaces an older one, whose queue then ends.
        s.stream = Some(tx);
        s.alive_rx.clone()
    };
    let open = OpenStream::enter(&srv);
    // The stream ends when the session is deleted (its watch sender is dropped) or the
    // stream is replaced (its queue's sender is dropped).
    let stream = futures_util::stream::unfold(
        (alive, rx, true, open),
        |(mut alive, mut rx, first, open)| async move {
            if first {
                return Some((
                    Ok::<_, Infallible>(Bytes::from_static(b": open\n\n")),
                    (alive, rx, false, open),
                ));
            }
            let chunk = tokio::select! {
                _ = tokio::time::sleep(STREAM_KEEPALIVE) => Bytes::from_static(b": keepalive\n\n"),
                _ = alive.changed() => return None,
                message = rx.recv() => Bytes::from(format!("event: message\ndata: {}\n\n", message?)),
            };
            Some((Ok(chunk), (alive, rx, false, open)))
        },
    );
    let mut response = Response::new(Body::from_stream(stream));
    set_content_type(&mut response, "text/event-stream");
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

async fn delete_mcp(State(srv): State<Arc<Server>>, headers: HeaderMap) -> Response {
    if let Some(refused) = refuse_without_bearer(&srv, &headers) {
        return refused;
    }
    // Counted per request received, so a gateway that deletes twice is visible.
    srv.stats.delete.fetch_add(1, Ordering::SeqCst);
    if srv.stateless {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let session = match check_session(&srv, &headers) {
        Ok(s) => s,
        Err(problem) => return problem.into_response(),
    };
    srv.sessions().remove(&session);
    eprintln!("[{}] delete session {session}", srv.name);
    StatusCode::OK.into_response()
}

fn error_message(id: &Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

fn set_content_type(response: &mut Response, value: &'static str) {
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    set_content_type(&mut response, "application/json");
    response
}

/// Answers a JSON-RPC request in the configured format: JSON, or one SSE event and close.
fn rpc_response(srv: &Server, message: &Value, session_id: Option<&str>) -> Response {
    let mut response = if srv.sse {
        let mut r = Response::new(Body::from(format!("event: message\ndata: {message}\n\n")));
        set_content_type(&mut r, "text/event-stream");
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        r
    } else {
        json_response(StatusCode::OK, message)
    };
    if let Some(id) = session_id.and_then(|id| HeaderValue::from_str(id).ok()) {
        response.headers_mut().insert(SESSION_HEADER, id);
    }
    response
}

// ---- For the `mcpgw wrapper` tests -------------------------------------------------

/// The one session a `--stateless` server keeps its counter in.
const STATELESS_SESSION: &str = "stateless";
/// How long `ask_roots` waits for the client's answer to its `roots/list`.
const ASK_TIMEOUT: Duration = Duration::from_secs(30);
const METHOD_HEADER: &str = "mcp-method";
const NAME_HEADER: &str = "mcp-name";

impl Session {
    fn new() -> Self {
        let (alive, alive_rx) = watch::channel(());
        Self {
            count: 0,
            _alive: alive,
            alive_rx,
            stream: None,
        }
    }
}

/// A server→client request waiting for its response: who was asked, and where the
/// answer goes.
struct Asked {
    session: String,
    answer: tokio::sync::oneshot::Sender<Value>,
}

impl Server {
    fn asked(&self) -> MutexGuard<'_, HashMap<String, Asked>> {
        // Single insert/remove critical sections, as for `sessions`.
        self.asked.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `ask_roots` (not listed by `tools/list`, so the tool lists other tests assert on are
/// unchanged): answers the tools/call with an SSE stream that first carries a
/// `roots/list` request to the client, then, once the client's response has arrived
/// (as its own POST, on the same session), the tool result: the client's roots.
fn ask_roots(srv: Arc<Server>, session: String, id: Value) -> Response {
    let ask_id = json!(format!(
        "ask-{}",
        srv.next_ask.fetch_add(1, Ordering::SeqCst)
    ));
    let (tx, rx) = tokio::sync::oneshot::channel();
    srv.asked().insert(
        ask_id.to_string(),
        Asked {
            session,
            answer: tx,
        },
    );
    let ask = json!({"jsonrpc": "2.0", "id": ask_id, "method": "roots/list", "params": {}});
    let first = Bytes::from(format!("event: message\ndata: {ask}\n\n"));
    let rest = async move {
        let result = match tokio::time::timeout(ASK_TIMEOUT, rx).await {
            Ok(Ok(answer)) => match answer.get("result") {
                Some(roots) => json!({
                    "content": [{"type": "text", "text": roots.to_string()}],
                    "structuredContent": roots,
                    "isError": false,
                }),
                None => json!({
                    "content": [{"type": "text", "text": format!("the client refused: {answer}")}],
                    "isError": true,
                }),
            },
            _ => {
                srv.asked().remove(&ask_id.to_string());
                json!({
                    "content": [{"type": "text", "text": "no answer to roots/list"}],
                    "isError": true,
                })
            }
        };
        let response = json!({"jsonrpc": "2.0", "id": id, "result": result});
        Ok::<_, Infallible>(Bytes::from(format!("event: message\ndata: {response}\n\n")))
    };
    use futures_util::StreamExt as _;
    let stream = futures_util::stream::once(async move { Ok::<_, Infallible>(first) })
        .chain(futures_util::stream::once(rest));
    let mut response = Response::new(Body::from_stream(stream));
    set_content_type(&mut response, "text/event-stream");
    response
}

/// A client's response to a server→client request: handed to the `ask_roots` call that
/// waits for it, if it comes on the session that was asked; anything else is dropped.
fn client_answered(srv: &Server, headers: &HeaderMap, message: &Value) -> Response {
    let key = message.get("id").map(Value::to_string).unwrap_or_default();
    if key.starts_with("\"flood-") {
        srv.stats.flood_answers.fetch_add(1, Ordering::SeqCst);
    }
    if !srv.asked().contains_key(&key) {
        return StatusCode::ACCEPTED.into_response();
    }
    let session = if srv.stateless {
        STATELESS_SESSION.to_owned()
    } else {
        match check_session(srv, headers) {
            Ok(s) => s,
            Err(problem) => return problem.into_response(),
        }
    };
    let mut asked = srv.asked();
    if asked.get(&key).is_some_and(|a| a.session != session) {
        drop(asked);
        return json_response(
            StatusCode::BAD_REQUEST,
            &error_message(
                &Value::Null,
                -32600,
                "response on another session than the request",
            ),
        );
    }
    if let Some(waiting) = asked.remove(&key) {
        drop(asked);
        srv.record(
            json!({"kind": "answer", "session": session, "id": message.get("id"),
            "answer": message}),
        );
        let _ = waiting.answer.send(message.clone());
    }
    StatusCode::ACCEPTED.into_response()
}

/// `--stateless`: the routing headers must match the body, and no session id may come.
fn check_routing_headers(headers: &HeaderMap, method: &str, params: &Value) -> Result<(), String> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if header(SESSION_HEADER).is_some() {
        return Err("this server hands out no sessions, yet Mcp-Session-Id was sent".to_owned());
    }
    if header(METHOD_HEADER) != Some(method) {
        return Err(format!(
            "Mcp-Method {:?} does not match the method {method:?}",
            header(METHOD_HEADER)
        ));
    }
    let name = params
        .get("name")
        .and_then(Value::as_str)
        .or_else(|| params.get("uri").and_then(Value::as_str));
    if let Some(name) = name
        && header(NAME_HEADER) != Some(name)
    {
        return Err(format!(
            "Mcp-Name {:?} does not match {name:?}",
            header(NAME_HEADER)
        ));
    }
    if method != "initialize" {
        match header(VERSION_HEADER) {
            Some(v) if SUPPORTED_VERSIONS.contains(&v) => {}
            other => {
                return Err(format!(
                    "MCP-Protocol-Version missing or unsupported: {other:?}"
                ));
            }
        }
    }
    Ok(())
}

/// `POST /forget-sessions`: drops every session, as a server that restarted would
/// (their GET streams end); returns how many there were.
async fn forget_sessions(State(srv): State<Arc<Server>>) -> Response {
    let forgotten: Vec<String> = srv.sessions().drain().map(|(id, _)| id).collect();
    eprintln!("[{}] forgot {} sessions", srv.name, forgotten.len());
    json_response(StatusCode::OK, &json!({"forgotten": forgotten.len()}))
}

// ---- For the relay tests -----------------------------------------------------------

/// Counts an open GET stream for as long as it is open.
struct OpenStream(Arc<Server>);

impl OpenStream {
    fn enter(srv: &Arc<Server>) -> Self {
        srv.stats.open_streams.fetch_add(1, Ordering::SeqCst);
        Self(srv.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.stats.open_streams.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Server {
    fn record(&self, event: Value) {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(event);
    }

    fn running(&self) -> MutexGuard<'_, HashMap<(String, String), oneshot::Sender<String>>> {
        // Single insert/remove critical sections, as for `sessions`.
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Records the request's `Authorization`; with `--bearer-file`, the 401 for a request
/// without the file's current token.
fn refuse_without_bearer(srv: &Server, headers: &HeaderMap) -> Option<Response> {
    let got = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Some(value) = got {
        let mut seen = srv.authorizations.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() < 1000 {
            seen.insert(value.to_owned());
        }
    }
    let path = srv.bearer_file.as_ref()?;
    let valid = std::fs::read_to_string(path).unwrap_or_default();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let presented = got.and_then(|v| v.strip_prefix("Bearer "));
    let accepted = valid.lines().any(|line| {
        let mut parts = line.split_whitespace();
        let token = parts.next();
        let unexpired = parts
            .next()
            .and_then(|ms| ms.parse::<u128>().ok())
            .is_none_or(|until| now_ms < until);
        token.is_some() && token == presented && unexpired
    });
    if accepted {
        return None;
    }
    srv.stats.unauthorized.fetch_add(1, Ordering::SeqCst);
    let mut refused = json_response(StatusCode::UNAUTHORIZED, &json!({"error": "invalid_token"}));
    refused.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer error=\"invalid_token\""),
    );
    Some(refused)
}

async fn debug_authorizations(State(srv): State<Arc<Server>>) -> Response {
    let seen: Vec<Value> = srv
        .authorizations
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|v| Value::from(v.as_str()))
        .collect();
    json_response(StatusCode::OK, &Value::Array(seen))
}

async fn debug_events(State(srv): State<Arc<Server>>) -> Response {
    let events = srv.events.lock().unwrap_or_else(|p| p.into_inner()).clone();
    json_response(StatusCode::OK, &Value::Array(events))
}

/// A notification from the client: a cancellation stops the `slow` call it names (and
/// is recorded either way); others are recorded.
fn client_notification(srv: &Server, session: &str, method: &str, params: &Value) {
    if method == "notifications/cancelled" {
        let request_id = params.get("requestId").cloned().unwrap_or(Value::Null);
        let reason = params
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let running = srv
            .running()
            .remove(&(session.to_owned(), request_id.to_string()));
        let was_running = running.is_some();
        if let Some(stop) = running {
            let _ = stop.send(reason.clone());
        }
        eprintln!(
            "[{}] cancelled {request_id} (running: {was_running})",
            srv.name
        );
        srv.record(
            json!({"kind": "cancelled", "session": session, "requestId": request_id,
            "reason": reason, "running": was_running}),
        );
    } else if method != "notifications/initialized" {
        srv.record(
            json!({"kind": "notification", "session": session, "method": method,
            "params": params}),
        );
    }
}

/// `slow`: sleeps for `ms` milliseconds, then answers (JSON); a `notifications/cancelled`
/// for it ends it early with error -32800.
async fn slow(srv: Arc<Server>, session: String, id: Value, params: &Value) -> Response {
    let Some(ms) = params
        .pointer("/arguments/ms")
        .and_then(Value::as_u64)
        .filter(|&ms| ms <= MAX_SLOW_MS)
    else {
        let message = format!("slow needs an integer argument ms <= {MAX_SLOW_MS}");
        return rpc_response(&srv, &error_message(&id, -32602, &message), None);
    };
    let (stop, stopped) = oneshot::channel();
    let running = Running::enter(&srv, (session, id.to_string()), stop);
    let answer = {
        let _in_flight = InFlight::enter(&srv.stats.slow_in_flight);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(ms)) => {
                json!({"jsonrpc": "2.0", "id": id, "result":
                    {"content": [{"type": "text", "text": "slept"}], "isError": false}})
            }
            Ok(reason) = stopped => error_message(&id, -32800, &format!("cancelled: {reason}")),
        }
    };
    drop(running);
    rpc_response(&srv, &answer, None)
}

/// A `slow` call in the cancellable set until it ends, also when its request is dropped
/// (the client went away).
struct Running<'a> {
    srv: &'a Server,
    key: (String, String),
}

impl<'a> Running<'a> {
    fn enter(srv: &'a Server, key: (String, String), stop: oneshot::Sender<String>) -> Self {
        srv.running().insert(key.clone(), stop);
        Self { srv, key }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.srv.running().remove(&self.key);
    }
}

/// `ask` {method, params, via}: sends a server→client request (`method` with `params`)
/// on this call's stream (`via` "call", the default) or on the session's GET stream
/// ("get"), waits for the client's answer, and returns it as the tool result
/// (`structuredContent.answer`: the whole response message; `isError` when it is an
/// error or no answer came).
fn ask(srv: Arc<Server>, session: String, id: Value, params: &Value) -> Response {
    let args = params.get("arguments").cloned().unwrap_or(Value::Null);
    let method = args
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or("roots/list")
        .to_owned();
    let request_params = args.get("params").cloned().unwrap_or_else(|| json!({}));
    let via_stream = args.get("via").and_then(Value::as_str) == Some("get");
    let ask_id = json!(format!(
        "ask-{}",
        srv.next_ask.fetch_add(1, Ordering::SeqCst)
    ));
    let request =
        json!({"jsonrpc": "2.0", "id": ask_id, "method": method, "params": request_params});
    let (tx, rx) = oneshot::channel();
    srv.asked().insert(
        ask_id.to_string(),
        Asked {
            session: session.clone(),
            answer: tx,
        },
    );
    let mut first = None;
    if via_stream {
        let sent = srv
            .sessions()
            .get(&session)
            .and_then(|s| s.stream.as_ref())
            .is_some_and(|stream| stream.send(request).is_ok());
        if !sent {
            srv.asked().remove(&ask_id.to_string());
            let result = json!({"content": [{"type": "text", "text": "no GET stream is open"}],
                "isError": true});
            return rpc_response(
                &srv,
                &json!({"jsonrpc": "2.0", "id": id, "result": result}),
                None,
            );
        }
    } else {
        first = Some(Bytes::from(format!("event: message\ndata: {request}\n\n")));
    }
    let rest = async move {
        let result = match tokio::time::timeout(ASK_TIMEOUT, rx).await {
            Ok(Ok(answer)) => {
                let refused = answer.get("result").is_none();
                json!({
                    "content": [{"type": "text", "text": answer.to_string()}],
                    "structuredContent": {"answer": answer},
                    "isError": refused,
                })
            }
            _ => {
                srv.asked().remove(&ask_id.to_string());
                json!({"content": [{"type": "text", "text": "no answer"}], "isError": true})
            }
        };
        let response = json!({"jsonrpc": "2.0", "id": id, "result": result});
        Ok::<_, Infallible>(Bytes::from(format!("event: message\ndata: {response}\n\n")))
    };
    use futures_util::StreamExt as _;
    let stream = futures_util::stream::iter(first.map(Ok::<_, Infallible>))
        .chain(futures_util::stream::once(rest));
    let mut response = Response::new(Body::from_stream(stream));
    set_content_type(&mut response, "text/event-stream");
    response
}

/// `chatty` {steps, tag}: an SSE answer with, per step, a `notifications/progress` (when
/// the request has a progress token) and a `notifications/message` carrying `tag`, then
/// the result, whose `structuredContent.progressToken` is the token as this server saw it.
fn chatty(srv: &Server, id: &Value, params: &Value) -> Response {
    let steps = params
        .pointer("/arguments/steps")
        .and_then(Value::as_u64)
        .unwrap_or(3)
        .min(1000);
    let tag = params
        .pointer("/arguments/tag")
        .cloned()
        .unwrap_or(Value::Null);
    let token = params.pointer("/_meta/progressToken").cloned();
    let mut out = String::new();
    for step in 1..=steps {
        if let Some(token) = &token {
            let progress = json!({"jsonrpc": "2.0", "method": "notifications/progress",
                "params": {"progressToken": token, "progress": step, "total": steps,
                    "message": tag}});
            out.push_str(&format!("event: message\ndata: {progress}\n\n"));
        }
        let log = json!({"jsonrpc": "2.0", "method": "notifications/message",
            "params": {"level": "info", "logger": srv.name, "data": {"tag": tag, "step": step}}});
        out.push_str(&format!("event: message\ndata: {log}\n\n"));
    }
    let result = json!({
        "content": [{"type": "text", "text": format!("{steps} steps")}],
        "structuredContent": {"progressToken": token, "steps": steps},
        "isError": false,
    });
    let response = json!({"jsonrpc": "2.0", "id": id, "result": result});
    out.push_str(&format!("event: message\ndata: {response}\n\n"));
    let mut r = Response::new(Body::from(out));
    set_content_type(&mut r, "text/event-stream");
    r
}

/// `notify_all` {tag}: what `notify` puts on one session's GET stream, on
/// every open GET stream of the server (a server-wide change, as when a
/// tool is installed); the result says on how many streams.
fn notify_all(srv: &Server, id: &Value, params: &Value) -> Response {
    let messages = change_notifications(srv, params, true);
    let streams = srv
        .sessions()
        .values()
        .filter_map(|s| s.stream.as_ref())
        .filter(|stream| messages.iter().all(|m| stream.send(m.clone()).is_ok()))
        .count();
    number_result(srv, id, "streams", streams)
}

/// What `notify` and `notify_all` send: tools (and, with `prompts`, prompts) list
/// changed, `counter://value` updated, and a log message carrying the call's `tag`.
fn change_notifications(srv: &Server, params: &Value, prompts: bool) -> Vec<Value> {
    let tag = params
        .pointer("/arguments/tag")
        .cloned()
        .unwrap_or(Value::Null);
    let mut messages =
        vec![json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})];
    if prompts {
        messages.push(json!({"jsonrpc": "2.0", "method": "notifications/prompts/list_changed"}));
    }
    messages.push(
        json!({"jsonrpc": "2.0", "method": "notifications/resources/updated",
        "params": {"uri": "counter://value"}}),
    );
    messages.push(json!({"jsonrpc": "2.0", "method": "notifications/message",
        "params": {"level": "info", "logger": srv.name, "data": {"tag": tag}}}));
    messages
}

/// A tool result of one number: `n` as its text and as `{key: n}`.
fn number_result(srv: &Server, id: &Value, key: &str, n: usize) -> Response {
    let result = json!({
        "content": [{"type": "text", "text": n.to_string()}],
        "structuredContent": {key: n},
        "isError": false,
    });
    rpc_response(
        srv,
        &json!({"jsonrpc": "2.0", "id": id, "result": result}),
        None,
    )
}

/// `notify` {tag}: puts `notifications/tools/list_changed`,
/// `notifications/resources/updated` (counter://value) and a `notifications/message`
/// carrying `tag` on this session's GET stream; the result says how many were queued
/// (0 without an open GET stream).
fn notify(srv: &Server, session: &str, id: &Value, params: &Value) -> Response {
    let messages = change_notifications(srv, params, false);
    let queued = srv
        .sessions()
        .get(session)
        .and_then(|s| s.stream.as_ref())
        .map_or(0, |stream| {
            messages
                .into_iter()
                .take_while(|m| stream.send(m.clone()).is_ok())
                .count()
        });
    number_result(srv, id, "queued", queued)
}

/// `flood` {count}: an SSE answer carrying `count` server→client `ping` requests (ids
/// `flood-<n>`, nobody waits for their answers; `flood_answers` in `/stats` counts the
/// ones that come), then the result.
fn flood(id: &Value, params: &Value) -> Response {
    let count = params
        .pointer("/arguments/count")
        .and_then(Value::as_u64)
        .unwrap_or(10)
        .min(100_000);
    let mut out = String::new();
    for n in 1..=count {
        let ping = json!({"jsonrpc": "2.0", "id": format!("flood-{n}"), "method": "ping"});
        out.push_str(&format!("event: message\ndata: {ping}\n\n"));
    }
    let result = json!({
        "content": [{"type": "text", "text": format!("{count} pings")}],
        "structuredContent": {"pings": count},
        "isError": false,
    });
    let response = json!({"jsonrpc": "2.0", "id": id, "result": result});
    out.push_str(&format!("event: message\ndata: {response}\n\n"));
    let mut r = Response::new(Body::from(out));
    set_content_type(&mut r, "text/event-stream");
    r
}
