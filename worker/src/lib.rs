//! An mcpgw worker process: it serves the connections the supervisor hands
//! it, owns the MCP sessions routed to it and their upstream sessions, and
//! shares nothing in memory with its siblings.
//!
//! Module map:
//! - this file: start-up (inherited fds, handshake), the serving loop, the
//!   control loop and shutdown; [`Ctx`] is what every request sees.
//! - [`h1_server`]: HTTP/1.1 on client connections (and forwarded ones):
//!   request heads and bodies in, answers out, keep-alive.
//! - [`endpoint`]: the MCP Streamable HTTP endpoint (one request → answer).
//! - [`federation`]: endpoints, namespacing, merged lists.
//! - [`sessions`]: the downstream sessions this worker owns.
//! - [`registry`]: one upstream session per (session, upstream server).
//! - [`relay`]: server→client requests, notifications and cancellation
//!   between a session and its upstream sessions; the id/token maps.
//! - [`store`]: session records (write-through), admitting new sessions
//!   under the session caps, resuming inherited ones, the negative cache.
//! - [`upstream`]: the MCP client side of one upstream server;
//!   [`conn_pool`]: its HTTP/1.1 connections and the client that speaks on
//!   them (run in the caller's task).
//! - [`adapter`]: stdio and legacy HTTP+SSE upstreams behind a loopback
//!   Streamable HTTP adapter, one backend per upstream session;
//!   [`legacy_sse`]: the HTTP+SSE backend.
//! - [`forward`]: requests for sessions another worker owns.
//! - [`metrics`]: this worker's Prometheus registry.
//! - [`origin`]: which `Host` and `Origin` headers are allowed (DNS rebinding).
//! - [`answer_budget`]: upstream answers read whole, within the per-answer
//!   and per-worker memory bounds.
//! - [`jsonrpc`], [`sse`], [`body`], [`versions`]: message plumbing;
//!   [`wire`]: HTTP/1.1 heads and framing (upstream client and server);
//!   [`bounded`]: background jobs under one time bound (closing paths).

mod adapter;
mod answer_budget;
mod body;
mod bounded;
mod conn_pool;
mod endpoint;
mod federation;
mod forward;
mod h1_server;
mod jsonrpc;
mod legacy_sse;
mod metrics;
mod origin;
mod registry;
mod relay;
mod sessions;
mod sse;
mod store;
pub mod upstream;
mod versions;
mod wire;

use foldhash::{HashMap, HashMapExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use http::HeaderValue;
use mcpgw_protocol::channel::{self, ChannelError, Sender};
use mcpgw_protocol::config::Config;
use mcpgw_protocol::control::{
    AfterStop, ConnMeta, FromWorker, PROTOCOL_VERSION, ToWorker, WorkerId,
};
use mcpgw_protocol::fdpass::{self, ConnReceiver};
use mcpgw_protocol::routing::{RouteTable, RouteUpdate};
use mcpgw_protocol::session_id::SessionId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener};
use tokio::sync::{mpsc, watch};
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::endpoint::Origin;
use crate::federation::Endpoint;
use crate::forward::Forwarder;
use crate::registry::Registry;
use crate::sessions::Sessions;
use crate::upstream::UpstreamServer;

/// fd numbers the supervisor puts our sockets at (see `mcpgw-supervisor`).
pub const CONTROL_FD: i32 = 3;
pub const CONN_FD: i32 = 4;

/// Who this worker is, from its command line.
#[derive(Debug, Clone, Copy)]
pub struct Args {
    pub slot: u16,
    pub generation: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("taking inherited fd {fd}: {cause} (is this process started by `mcpgw serve`?)")]
    InheritedFd { fd: i32, cause: std::io::Error },
    #[error("starting the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("control channel: {0}")]
    Control(ChannelError),
    #[error("the supervisor closed the control channel before the handshake")]
    NoInit,
    #[error("handshake: {0}")]
    Handshake(String),
    #[error("binding the internal socket {path}: {cause}")]
    Internal {
        path: std::path::PathBuf,
        cause: std::io::Error,
    },
    #[error(transparent)]
    Upstream(#[from] upstream::ServerConfigError),
    #[error("setting up metrics: {0}")]
    Metrics(prometheus::Error),
    #[error("TLS listener {0}")]
    Tls(String),
}

// By hand, not `#[from]`: the message already carries the cause, and a
// `source()` too would print it twice at the edge.
impl From<ChannelError> for WorkerError {
    fn from(e: ChannelError) -> Self {
        Self::Control(e)
    }
}

/// What every request handler sees.
pub(crate) struct Ctx {
    pub id: WorkerId,
    /// The slot count and the routing exceptions (down slots, moved sessions) from the supervisor.
    routes: std::sync::RwLock<RouteTable>,
    /// What a reload replaces; a request reads it once ([`Ctx::live`]).
    live: std::sync::RwLock<Arc<Live>>,
    pub sessions: Sessions,
    pub registry: Arc<Registry>,
    pub metrics: Arc<metrics::Metrics>,
    pub store: Arc<store::StoreClient>,
    pub forwarder: Forwarder,
    /// Flips to true when the worker starts to stop; open streams end on it.
    pub stopping: watch::Receiver<bool>,
}

/// The configuration in force and what is built from it.
pub(crate) struct Live {
    pub config: Arc<Config>,
    /// Upstream servers by id; an unchanged server survives a reload with
    /// its connection pool and upstream sessions.
    pub servers: HashMap<Arc<str>, Arc<UpstreamServer>>,
    pub endpoints: HashMap<Box<str>, Arc<Endpoint>>,
    pub worker_header: Option<HeaderValue>,
    pub max_body: usize,
    pub host_policy: origin::HostPolicy,
    /// One acceptor per `tls_listener`, by index. New handshakes use the
    /// acceptor in force; live connections keep the one they started with.
    pub tls: Vec<tokio_rustls::TlsAcceptor>,
}

impl Ctx {
    pub(crate) fn live(&self) -> Arc<Live> {
        match self.live.read() {
            Ok(l) => l.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The slot that owns `id`: its hash slot unless the supervisor said
    /// otherwise.
    pub(crate) fn owner_of(&self, id: &SessionId) -> u16 {
        self.with_routes(|r| r.owner(id))
    }

    /// Slots in the pool (the modulus new session ids are minted for).
    pub(crate) fn slot_count(&self) -> u16 {
        self.with_routes(RouteTable::slots)
    }

    fn with_routes<T>(&self, f: impl FnOnce(&RouteTable) -> T) -> T {
        match self.routes.read() {
            Ok(r) => f(&r),
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }

    fn change_routes(&self, f: impl FnOnce(&mut RouteTable)) {
        match self.routes.write() {
            Ok(mut r) => f(&mut r),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    fn set_routes(&self, update: &RouteUpdate) {
        self.change_routes(|r| r.apply(update));
        // Sessions may have moved to this worker.
        self.store.forget_absent();
    }

    fn set_live(&self, live: Arc<Live>) {
        match self.live.write() {
            Ok(mut l) => *l = live,
            Err(poisoned) => *poisoned.into_inner() = live,
        }
    }
}

impl Live {
    /// Build from `config`, keeping the servers of `previous` whose
    /// connection settings did not change. Returns the ids of servers that
    /// were replaced or removed: their upstream sessions must go.
    fn build(
        id: WorkerId,
        config: Arc<Config>,
        previous: Option<&Live>,
    ) -> Result<(Self, Vec<Arc<str>>), WorkerError> {
        let mut servers = HashMap::new();
        let mut gone = Vec::new();
        for u in &config.upstream {
            let kept = previous
                .and_then(|p| p.servers.get(u.id.as_str()))
                .filter(|old| old.adopt(u))
                .cloned();
            let server = match kept {
                Some(s) => s,
                None => {
                    if previous.is_some_and(|p| p.servers.contains_key(u.id.as_str())) {
                        gone.push(Arc::from(u.id.as_str()));
                    }
                    Arc::new(UpstreamServer::new(u)?)
                }
            };
            servers.insert(server.id.clone(), server);
        }
        if let Some(p) = previous {
            gone.extend(
                p.servers
                    .keys()
                    .filter(|k| !servers.contains_key(*k))
                    .cloned(),
            );
        }
        let worker_header = config
            .diagnostics
            .worker_header
            .then(|| {
                HeaderValue::from_str(&format!(
                    "{}/{}/{}",
                    id.slot,
                    id.generation,
                    std::process::id()
                ))
                .ok()
            })
            .flatten();
        let tls = config
            .tls_listener
            .iter()
            .map(|t| {
                mcpgw_protocol::tls::server_config(&t.cert, &t.key)
                    .map(tokio_rustls::TlsAcceptor::from)
                    .map_err(|e| WorkerError::Tls(format!("{}: {e}", t.addr)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        answer_budget::configure(
            config.limits.max_answer_bytes as usize,
            usize::try_from(config.limits.max_buffered_answer_bytes).unwrap_or(usize::MAX),
        );
        Ok((
            Self {
                tls,
                endpoints: federation::endpoints(&config, &servers),
                max_body: config.limits.max_body_bytes as usize,
                host_policy: origin::HostPolicy::from_config(&config),
                worker_header,
                servers,
                config,
            },
            gone,
        ))
    }
}

/// Run a worker until the supervisor tells it to stop (or disappears).
pub fn run(args: Args) -> Result<(), WorkerError> {
    let take =
        |fd| fdpass::take_inherited(fd).map_err(|cause| WorkerError::InheritedFd { fd, cause });
    let control = take(CONTROL_FD)?;
    let conns = take(CONN_FD)?;
    // One thread per worker process; the pool has one worker per core.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // Its blocking-pool threads, in `ps -L` and `top -H`.
        .thread_name(format!("mcpgw-worker-{}", args.slot))
        .build()
        .map_err(WorkerError::Runtime)?;
    rt.block_on(serve(args, control, conns))
}

async fn serve(
    args: Args,
    control: std::os::fd::OwnedFd,
    conns: std::os::fd::OwnedFd,
) -> Result<(), WorkerError> {
    let control = std::os::unix::net::UnixStream::from(control);
    control.set_nonblocking(true).map_err(ChannelError::Io)?;
    let control = tokio::net::UnixStream::from_std(control).map_err(ChannelError::Io)?;
    let (tx, mut rx) = channel::split::<FromWorker, ToWorker>(control);
    // Shared: the load reporter, heartbeats, store writes and answers.
    let tx = Arc::new(tokio::sync::Mutex::new(tx));
    let Some(init) = rx.recv().await? else {
        return Err(WorkerError::NoInit);
    };
    let ToWorker::Init {
        protocol,
        id,
        slots,
        runtime_dir,
        config,
    } = init
    else {
        return Err(WorkerError::Handshake("first message was not Init".into()));
    };
    if protocol != PROTOCOL_VERSION || id.slot != args.slot || id.generation != args.generation {
        return Err(WorkerError::Handshake(format!(
            "Init for {id} protocol {protocol}, but this is {}/{} protocol {PROTOCOL_VERSION}",
            args.slot, args.generation
        )));
    }

    let (stop_tx, stopping) = watch::channel(false);
    let config: Arc<Config> = Arc::from(config);
    let store = Arc::new(store::StoreClient::new(tx.clone()));
    let ctx = Arc::new(build_ctx(
        id,
        slots,
        config.clone(),
        runtime_dir.clone(),
        stopping,
        store,
    )?);

    let path = forward::socket_path(&runtime_dir, id.slot);
    let _ = std::fs::remove_file(&path);
    let internal = UnixListener::bind(&path).map_err(|cause| WorkerError::Internal {
        path: path.clone(),
        cause,
    })?;
    let receiver = ConnReceiver::new(conns).map_err(|e| WorkerError::Handshake(e.to_string()))?;

    let pid = std::process::id();
    tx.lock()
        .await
        .send(&FromWorker::Ready {
            protocol: PROTOCOL_VERSION,
            id,
            pid,
        })
        .await?;
    info!(worker = %id, pid, "serving");

    let open = Arc::new(AtomicU32::new(0));
    tokio::spawn(report_load(tx.clone(), open.clone()));
    tokio::spawn(heartbeats(ctx.clone(), tx.clone()));
    tokio::spawn(expire_sessions(ctx.clone()));

    // Control messages arrive through a task so a half-read frame is never
    // dropped by the select below.
    let (ctl_tx, mut ctl_rx) = mpsc::channel::<Option<ToWorker>>(4);
    let reader_ctx = ctx.clone();
    tokio::spawn(async move {
        loop {
            let msg = match rx.recv().await {
                // Straight to the request waiting for it.
                Ok(Some(ToWorker::StoreRecord { id, answer })) => {
                    reader_ctx.store.deliver_record(id, answer);
                    continue;
                }
                Ok(Some(ToWorker::Opened { id, refused })) => {
                    reader_ctx.store.deliver_opened(id, refused);
                    continue;
                }
                Ok(Some(ToWorker::Routes(update))) => {
                    reader_ctx.set_routes(&update);
                    continue;
                }
                Ok(m) => m,
                Err(e) => {
                    error!(error = %e, "control channel broke");
                    None
                }
            };
            let end = msg.is_none();
            if ctl_tx.send(msg).await.is_err() || end {
                return;
            }
        }
    });

    // Connections watch `closing` (idle ones close when it turns true) and
    // run on `tracker`, which the shutdown waits on.
    let (closing_tx, closing) = watch::channel(false);
    let tracker = TaskTracker::new();
    let mut cap = config.limits.max_connections_per_worker;
    let mut refusals = Refusals {
        last: None,
        since: 0,
    };

    // Stopping without being told how (the supervisor is gone): sessions
    // recorded in Redis stay for the next run, others end here.
    let alone = if config.store.redis_url.is_some() {
        AfterStop::Keep
    } else {
        AfterStop::Close
    };
    let (grace, after) = loop {
        tokio::select! {
            conn = receiver.recv() => match conn {
                Ok(Some((meta, fd))) => {
                    // Already non-blocking: the supervisor accepts that way
                    // and the flag travels with the fd (see `fdpass`), so no
                    // ioctl per connection.
                    debug_assert!(
                        fdpass::is_nonblocking(&fd).unwrap_or(false),
                        "the supervisor passed a blocking socket"
                    );
                    let stream = match TcpStream::from_std(std::net::TcpStream::from(fd)) {
                        Ok(stream) => stream,
                        Err(e) => {
                            warn!(error = %e, "handed-over connection unusable");
                            continue;
                        }
                    };
                    if open.load(Ordering::Relaxed) >= cap {
                        refusals.note(cap);
                        tokio::spawn(refuse_over_cap(stream));
                        continue;
                    }
                    let guard = ConnGuard::new(&open);
                    let peer = stream.peer_addr().ok().map(|a| a.ip().to_canonical());
                    let handler = Serving { ctx: ctx.clone(), origin: Origin::Public(peer.map(endpoint::ClientAddr)) };
                    let closing = closing.clone();
                    match meta {
                        ConnMeta::Plain => {
                            // Boxed (here and below): a connection future is
                            // several KiB, the endpoint's request future inside it,
                            // and spawning it by value would copy it more than once.
                            tracker.spawn(Box::pin(async move {
                                if let Err(e) = h1_server::serve(stream, &handler, closing).await {
                                    debug!(error = %e, "connection ended with an error");
                                }
                                drop(guard);
                            }));
                        }
                        ConnMeta::Tls { index } => {
                            let Some(acceptor) = ctx.live().tls.get(usize::from(index)).cloned() else {
                                warn!(index, "connection for a TLS listener that no longer exists; closing");
                                continue;
                            };
                            let handshake_timeout = ctx.live().config.limits.header_timeout();
                            tracker.spawn(Box::pin(async move {
                                match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                                    Ok(Ok(tls)) => {
                                        if let Err(e) = h1_server::serve(tls, &handler, closing).await {
                                            debug!(error = %e, "TLS connection ended with an error");
                                        }
                                    }
                                    Ok(Err(e)) => info!(error = %e, "TLS handshake failed"),
                                    Err(_) => info!("TLS handshake timed out"),
                                }
                                drop(guard);
                            }));
                        }
                    }
                }
                Ok(None) => {
                    warn!("the supervisor closed the connection channel; stopping");
                    break (1_000, alone);
                }
                Err(e) => warn!(error = %e, "receiving a connection failed"),
            },
            accepted = internal.accept() => match accepted {
                Ok((stream, _)) => {
                    let handler = Serving { ctx: ctx.clone(), origin: Origin::Internal };
                    let closing = closing.clone();
                    tracker.spawn(Box::pin(async move {
                        if let Err(e) = h1_server::serve(stream, &handler, closing).await {
                            debug!(error = %e, "internal connection ended with an error");
                        }
                    }));
                }
                Err(e) => {
                    warn!(error = %e, "internal accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            msg = ctl_rx.recv() => match msg.flatten() {
                Some(ToWorker::Shutdown { grace_ms, sessions }) => {
                    info!(grace_ms, ?sessions, "shutdown requested");
                    break (grace_ms, sessions);
                }
                Some(ToWorker::Init { .. }) => warn!("ignoring a second Init"),
                // Normally delivered by the reader task already.
                Some(ToWorker::StoreRecord { id, answer }) => ctx.store.deliver_record(id, answer),
                Some(ToWorker::Opened { id, refused }) => ctx.store.deliver_opened(id, refused),
                Some(ToWorker::Routes(update)) => ctx.set_routes(&update),
                Some(ToWorker::Reload { id, config }) => {
                    // The connection cap applies at once (HTTP limits are read
                    // per request); the rest (upstreams, endpoints, sessions)
                    // in a task, so closing changed upstream sessions never
                    // stalls accepting.
                    cap = config.limits.max_connections_per_worker;
                    let (ctx, tx) = (ctx.clone(), tx.clone());
                    tokio::spawn(async move {
                        let error = reload(&ctx, *config).await.err().map(|e| e.to_string());
                        if let Some(e) = &error {
                            error!(error = %e, "reload failed; the previous configuration stays");
                        }
                        if let Err(e) = tx.lock().await.send(&FromWorker::Reloaded { id, error }).await {
                            warn!(error = %e, "acknowledging a reload failed");
                        }
                    });
                }
                Some(ToWorker::Gather { id }) => {
                    let data = Box::new(gathered(&ctx, open.load(Ordering::Relaxed)));
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        if let Err(e) = tx.lock().await.send(&FromWorker::Gathered { id, data }).await {
                            warn!(error = %e, "answering a gather failed");
                        }
                    });
                }
                None => {
                    warn!("the supervisor is gone; stopping");
                    break (1_000, alone);
                }
            },
        }
    };

    // Stop taking work, end open streams, let in-flight requests finish.
    drop(receiver);
    drop(internal);
    let _ = std::fs::remove_file(&path);
    let _ = stop_tx.send(true);
    if after == AfterStop::HandOver {
        // The sessions live on elsewhere: let open connections end by
        // themselves (every answer now says `Connection: close`; idle ones
        // time out), so no client has its connection closed under a request.
        let wait = Duration::from_millis(grace).min(config.limits.header_timeout());
        let deadline = tokio::time::Instant::now() + wait;
        while open.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let _ = closing_tx.send(true);
    tracker.close();
    if tokio::time::timeout(Duration::from_millis(grace), tracker.wait())
        .await
        .is_err()
    {
        warn!(
            open = open.load(Ordering::Relaxed),
            "grace period over; cutting the connections left"
        );
    }
    if after != AfterStop::Close {
        // The records stay in the store and the upstream sessions open:
        // another worker (or the gateway's next run) resumes these sessions.
        info!(
            sessions = ctx.sessions.all().len(),
            "sessions kept in the store for the next start"
        );
        info!("worker stopped");
        return Ok(());
    }
    let all = ctx.sessions.take_all();
    if !all.is_empty() {
        info!(sessions = all.len(), "closing upstream sessions");
        ctx.registry.close_sessions(&all).await;
    }
    info!("worker stopped");
    Ok(())
}

/// The endpoint as the HTTP server on a connection calls it.
struct Serving {
    ctx: Arc<Ctx>,
    /// Public (with the handed-over socket's peer address) or internal.
    origin: Origin,
}

impl h1_server::Handler for Serving {
    fn limits(&self) -> h1_server::Limits {
        let live = self.ctx.live();
        h1_server::Limits {
            header_timeout: live.config.limits.header_timeout(),
            body_timeout: live.config.limits.body_timeout(),
            max_head: live.config.limits.max_head_bytes as usize,
            max_body: live.max_body,
        }
    }

    fn call(
        &self,
        req: http::Request<h1_server::ReqBody>,
    ) -> impl std::future::Future<Output = http::Response<body::Body>> {
        endpoint::handle(self.ctx.clone(), req, self.origin)
    }
}

fn build_ctx(
    id: WorkerId,
    slots: u16,
    config: Arc<Config>,
    runtime_dir: std::path::PathBuf,
    stopping: watch::Receiver<bool>,
    store: Arc<store::StoreClient>,
) -> Result<Ctx, WorkerError> {
    let (live, _) = Live::build(id, config.clone(), None)?;
    let metrics = Arc::new(metrics::Metrics::new().map_err(WorkerError::Metrics)?);
    Ok(Ctx {
        id,
        routes: std::sync::RwLock::new(RouteTable::new(slots)),
        live: std::sync::RwLock::new(Arc::new(live)),
        sessions: Sessions::new(metrics.sessions.clone()),
        registry: Arc::new(Registry::new(
            Duration::from_secs(config.sessions.upstream_probe_after_secs),
            Duration::from_millis(config.sessions.upstream_close_grace_ms),
            metrics.clone(),
            store.clone(),
        )),
        metrics,
        store,
        forwarder: Forwarder::new(
            runtime_dir,
            id.slot,
            Duration::from_millis(config.limits.dispatch_wait_ms),
        ),
        stopping,
    })
}

/// Apply a new configuration: swap what requests read, move every session
/// to its endpoint's new definition, and close upstream sessions whose
/// server changed or went away. A session whose endpoint is gone ends.
async fn reload(ctx: &Arc<Ctx>, config: Config) -> Result<(), WorkerError> {
    let previous = ctx.live();
    let slots = config.worker_count();
    ctx.change_routes(|r| r.set_slots(slots));
    // A resize moves sessions between workers.
    ctx.store.forget_absent();
    let (live, gone) = Live::build(ctx.id, Arc::new(config), Some(&previous))?;
    let live = Arc::new(live);
    ctx.set_live(live.clone());
    let mut ended = Vec::new();
    for session in ctx.sessions.all() {
        let path = session.endpoint().path.clone();
        match live.endpoints.get(&path) {
            Some(endpoint) => {
                let old = session.endpoint();
                let mut close: Vec<Arc<str>> = gone.clone();
                close.extend(
                    old.upstreams
                        .iter()
                        .filter(|u| !endpoint.upstreams.iter().any(|n| n.id == u.id))
                        .map(|u| u.id.clone()),
                );
                session.set_endpoint(endpoint.clone());
                if !close.is_empty() {
                    ctx.registry.close_upstreams(&session, &close).await;
                }
            }
            None => {
                if let Some(s) = ctx.sessions.remove(&session.id) {
                    ended.push(s);
                }
            }
        }
    }
    if !ended.is_empty() {
        info!(
            sessions = ended.len(),
            "endpoint removed by reload; its sessions end"
        );
        // Their records go too: they would count against the session caps
        // until swept.
        for s in &ended {
            ctx.store
                .write(mcpgw_protocol::store::StoreWrite::Remove {
                    session: s.id.to_string(),
                })
                .await;
        }
        ctx.registry.close_sessions(&ended).await;
    }
    info!(changed_or_removed = ?gone, "configuration reloaded");
    Ok(())
}

/// Counts an open client connection for as long as it lives.
struct ConnGuard(Arc<AtomicU32>);

impl ConnGuard {
    fn new(open: &Arc<AtomicU32>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        Self(open.clone())
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Tell the supervisor how many connections are open when it changes, so it
/// can send new sessions to the least-loaded worker.
async fn report_load(tx: Arc<tokio::sync::Mutex<Sender<FromWorker>>>, open: Arc<AtomicU32>) {
    let mut last = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let now = open.load(Ordering::Relaxed);
        if now != last {
            if tx
                .lock()
                .await
                .send(&FromWorker::Load { connections: now })
                .await
                .is_err()
            {
                return;
            }
            last = now;
        }
    }
}

/// Metrics and status for the supervisor's admin listener.
fn gathered(ctx: &Ctx, connections: u32) -> mcpgw_protocol::control::Gathered {
    let sessions = ctx.sessions.all();
    mcpgw_protocol::control::Gathered {
        metrics: ctx.metrics.render(),
        sessions: sessions.len() as u32,
        connections,
        upstream_sessions: ctx
            .registry
            .snapshot(&sessions)
            .into_iter()
            .map(|(id, n, oldest)| (id.to_string(), n as u32, oldest.as_millis() as u64))
            .collect(),
    }
}

/// Tell the supervisor this worker is alive, with the sessions used since
/// the last beat (the store keeps their records).
async fn heartbeats(ctx: Arc<Ctx>, tx: Arc<tokio::sync::Mutex<Sender<FromWorker>>>) {
    loop {
        let period = Duration::from_millis(ctx.live().config.sessions.heartbeat_ms);
        tokio::time::sleep(period).await;
        let touched = ctx.sessions.used_within(period);
        if tx
            .lock()
            .await
            .send(&FromWorker::Heartbeat { touched })
            .await
            .is_err()
        {
            return;
        }
    }
}

/// End sessions that have been idle longer than the configured timeout.
async fn expire_sessions(ctx: Arc<Ctx>) {
    loop {
        // Read each time: a reload may change the timeout.
        let ttl = Duration::from_secs(ctx.live().config.sessions.idle_timeout_secs);
        tokio::time::sleep((ttl / 10).clamp(Duration::from_secs(1), Duration::from_secs(60))).await;
        let expired = ctx.sessions.take_expired(ttl);
        if !expired.is_empty() {
            info!(count = expired.len(), "sessions expired after being idle");
            for s in &expired {
                ctx.store
                    .write(mcpgw_protocol::store::StoreWrite::Remove {
                        session: s.id.to_string(),
                    })
                    .await;
            }
            ctx.registry.close_sessions(&expired).await;
        }
    }
}

/// Refusals past the connection cap come at the rate clients connect (an
/// attack is exactly when they flood): one log line a second at most, with
/// how many were refused since the last one.
struct Refusals {
    last: Option<std::time::Instant>,
    since: u64,
}

impl Refusals {
    fn note(&mut self, cap: u32) {
        self.since += 1;
        let now = std::time::Instant::now();
        if self
            .last
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            warn!(
                cap,
                refused = self.since,
                "connection cap reached (limits.max_connections_per_worker); answering 503"
            );
            self.last = Some(now);
            self.since = 0;
        }
    }
}

async fn refuse_over_cap(mut stream: TcpStream) {
    let _ = stream
        .write_all(b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        .await;
    let _ = stream.shutdown().await;
    // Read and drop what the client still sends for a moment: closing with
    // unread bytes would reset the connection, and the client would see the
    // reset instead of the 503.
    let mut sink = [0u8; 4096];
    let linger = async {
        let mut left = 64 * 1024usize;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), linger).await;
}
