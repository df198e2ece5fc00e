//! The mcpgw supervisor: small, boring, hard to crash. It binds the
//! listeners, starts and restarts worker processes, and hands every accepted
//! connection to one of them. It never parses a body and never talks to an
//! upstream.
//!
//! Module map:
//! - this file: the main loop, which turns child exits, worker messages,
//!   timers and signals into [`Event`]s and handles them one at a time,
//!   and the supervisor's startup ([`run`]).
//! - [`slot_life`]: each slot's worker from start to exit: restarts with
//!   backoff, failover of a dead worker's sessions, slots marked down.
//! - [`worker_control`]: the task serving one worker's control channel
//!   (heartbeats, store traffic, `Open` admission, gathered answers).
//! - [`reload`]: applying a new configuration; [`resize`]: changing the
//!   number of slots on reload; [`drain`]: stopping on a signal.
//! - [`pool`]: slots, the worker serving each, spawning a worker process.
//! - [`listeners`]: binding the public sockets and accepting on them.
//! - [`peek`]: reading a request head with `MSG_PEEK`, bounded.
//! - [`dispatch`]: one connection from accept to its worker.
//! - [`routes`]: routing exceptions (down slots, moved sessions), shared
//!   with the workers.
//! - [`store`]: the session store trait, the records and the embedded
//!   backend; [`redis_store`]: the Redis backend (its Lua scripts in
//!   `redis_store::scripts`; dead cluster members' sessions, the previous
//!   run's, and the handover on stop in `redis_store::takeover`; the
//!   connection, direct or through Sentinel, in `redis_store::conn`).
//! - [`admin`]: the admin listener (`/metrics`, JSON status), gathered from
//!   the workers; [`metrics`]: the supervisor's own metrics and merging;
//!   [`admin_guard`]: who may use it (Host/Origin policy, bearer token).
//! - [`status`]: `mcpgw status`, a client of the admin API.
//! - [`runtime_dir`]: the private directory for internal sockets.
//! - [`systemd`]: readiness notification and socket activation.
//! - [`announce`]: the stdout lines (`mcpgw listening …`) and the output
//!   format the workers inherit.

mod admin;
mod admin_guard;
mod announce;
mod dispatch;
mod drain;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzz;
mod listeners;
mod metrics;
mod peek;
mod pool;
mod redis_store;
mod reload;
mod resize;
mod routes;
mod runtime_dir;
mod slot_life;
mod status;
mod store;
mod systemd;
mod worker_control;

use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use mcpgw_protocol::channel::ChannelError;
use mcpgw_protocol::config::Config;
use mcpgw_protocol::control::{FromWorker, PROTOCOL_VERSION, ToWorker, WorkerId};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};
use tracing::{error, info, warn};

use crate::dispatch::Dispatcher;
use crate::listeners::ListenerKey;
use crate::pool::{Pool, Worker};
use crate::routes::Routes;
use crate::runtime_dir::RuntimeDir;
use crate::slot_life::SlotLife;
use crate::store::SessionStore;

pub use crate::announce::OutputFormat;
pub use crate::listeners::ListenError;
pub use crate::pool::{WORKER_CONN_FD, WORKER_CONTROL_FD};
pub use crate::runtime_dir::RuntimeDirError;
pub use crate::status::{StatusError, status};

/// Why the supervisor could not start or had to stop. Each message carries
/// its cause and none has a `source()`: `{:#}` at the edge prints it once.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("starting the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error(transparent)]
    RuntimeDir(#[from] RuntimeDirError),
    #[error(transparent)]
    Config(#[from] mcpgw_protocol::config::ConfigError),
    #[error("setting up metrics: {0}")]
    Metrics(prometheus::Error),
    #[error("session store: {0}")]
    Store(String),
    #[error("installing the handler for {signal}: {cause}")]
    Signal {
        signal: &'static str,
        cause: std::io::Error,
    },
}

/// Reads the configuration again for a reload (the file plus any
/// command-line overrides); the error says what is wrong with it.
pub type ConfigSource = Box<dyn Fn() -> Result<Config, String> + Send>;

/// Run the gateway until it is told to stop. Returns after a clean drain.
/// `source` is asked again on SIGHUP and `POST /admin/reload`. `format`:
/// how the stdout lines are written, and the `--log-format` workers get.
pub fn run(
    config: Config,
    source: ConfigSource,
    format: OutputFormat,
) -> Result<(), SupervisorError> {
    announce::set_format(format);
    // Before any thread exists: these fds and variables are process-wide.
    let activated = systemd::take_activated();
    let notifier = systemd::Notifier::from_env();
    // One thread: the supervisor's work per connection is a peek and a
    // sendmsg; the workers do everything else.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(SupervisorError::Runtime)?;
    rt.block_on(run_async(config, source, activated, notifier))
}

/// Where the supervisor is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Workers are starting; not every slot has served yet.
    Starting,
    Running,
    /// Stopped accepting; waiting for workers to finish and exit.
    Draining,
}

#[derive(Debug)]
pub(crate) enum Event {
    Exited {
        id: WorkerId,
        status: Option<ExitStatus>,
    },
    Message {
        id: WorkerId,
        msg: FromWorker,
    },
    ControlFailed {
        id: WorkerId,
        error: ChannelError,
    },
    RestartDue {
        slot: u16,
    },
    /// From the admin API; SIGHUP is handled in the loop directly.
    ReloadRequested {
        reply: Option<tokio::sync::oneshot::Sender<Result<String, String>>>,
    },
}

/// Now, in Unix milliseconds: the first generation of a slot (generations
/// never repeat across runs or slots added later).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

struct Supervisor {
    config: Arc<Config>,
    /// Bumped by every applied reload.
    config_generation: u64,
    source: ConfigSource,
    /// Public listeners as configured, each with its own stop switch.
    listeners: Vec<(ListenerKey, watch::Sender<bool>)>,
    /// Listening sockets came from systemd: `listen` changes cannot apply.
    socket_activated: bool,
    dispatcher: Arc<Dispatcher>,
    config_json: Arc<std::sync::Mutex<String>>,
    admin_guard: Arc<std::sync::Mutex<Arc<admin_guard::Guard>>>,
    pool: Arc<Pool>,
    runtime_dir: RuntimeDir,
    events: mpsc::UnboundedSender<Event>,
    life: Vec<SlotLife>,
    phase: Phase,
    stop_accepting: watch::Sender<bool>,
    in_flight: Arc<listeners::InFlight>,
    notifier: systemd::Notifier,
    metrics: Arc<metrics::Metrics>,
    gatherer: Arc<admin::Gatherer>,
    store: Arc<dyn SessionStore>,
    routes: Arc<Routes>,
}

/// This gateway's name in owner ids: `[store] host`, else the host name
/// reduced to the characters a store key may hold.
fn store_host(config: &Config) -> String {
    if let Some(host) = &config.store.host {
        return host.clone();
    }
    let name = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if clean.is_empty() {
        "localhost".to_owned()
    } else {
        clean
    }
}

async fn run_async(
    config: Config,
    source: ConfigSource,
    activated: Vec<(String, std::os::fd::OwnedFd)>,
    notifier: systemd::Notifier,
) -> Result<(), SupervisorError> {
    let mut config = config;
    let slots = config.worker_count();
    let admin_token = config.read_admin_token()?;
    let runtime_dir = RuntimeDir::create(config.runtime_dir.as_deref())?;
    info!(path = %runtime_dir.path().display(), "runtime directory");
    let socket_activated = !activated.is_empty();
    // Plain listeners come from systemd when it passes sockets; TLS ones
    // are always ours.
    let mut bound: Vec<(ListenerKey, TcpListener)> = Vec::new();
    if socket_activated {
        let names: Vec<&str> = activated.iter().map(|(n, _)| n.as_str()).collect();
        info!(
            ?names,
            "using sockets from systemd; `listen` in the config is not used"
        );
        for l in listeners::adopt(activated.into_iter().map(|(_, fd)| fd).collect())? {
            let addr = l.local_addr().map_err(ListenError::LocalAddr)?;
            bound.push((ListenerKey::Plain(addr), l));
        }
        // What workers see as `listen` (their Host policy depends on it).
        config.listen = bound.iter().map(|(k, _)| k.addr()).collect();
    }
    let config = Arc::new(config);
    let ours: Vec<ListenerKey> = ListenerKey::all(&config)
        .into_iter()
        .filter(|k| !(socket_activated && matches!(k, ListenerKey::Plain(_))))
        .collect();
    let addrs: Vec<std::net::SocketAddr> = ours.iter().map(|k| k.addr()).collect();
    bound.extend(ours.into_iter().zip(listeners::bind_all(&addrs)?));
    let admin_listener = listeners::bind_all(&[config.admin_listen])?.remove(0);
    // `[cluster]`: bound now, so the address peers are told is the real one
    // (port 0 picks one).
    config.cluster.read_key()?;
    let cluster = match config.cluster.listen {
        None => None,
        Some(addr) => {
            let listener = listeners::bind_all(&[addr])?.remove(0);
            let bound = listener
                .local_addr()
                .map_err(listeners::ListenError::LocalAddr)?;
            let advertise = config
                .cluster
                .advertise
                .clone()
                .unwrap_or_else(|| bound.to_string());
            Some((ListenerKey::Cluster(bound), listener, advertise))
        }
    };
    {
        let addr = admin_listener
            .local_addr()
            .map_err(listeners::ListenError::LocalAddr)?;
        info!(%addr, "admin listening");
        announce::admin(addr);
    }
    let metrics = Arc::new(metrics::Metrics::new(slots).map_err(SupervisorError::Metrics)?);
    let gatherer = Arc::new(admin::Gatherer::default());

    let pool = Arc::new(Pool::new(slots));
    let routes = Routes::new(pool.clone());
    // Generations start at this run's start time so that they never repeat
    // across runs: a record of an earlier run never names a live worker.
    let boot = unix_ms();
    let store: Arc<dyn SessionStore> = match &config.store.redis_url {
        None => Arc::new(store::EmbeddedStore::default()),
        Some(url) => {
            let host = store_host(&config);
            info!(%host, prefix = %config.store.prefix, "session records in Redis");
            Arc::new(
                redis_store::RedisStore::start(
                    &config.store,
                    url,
                    redis_store::Settings {
                        host,
                        boot,
                        idle_timeout: Duration::from_secs(config.sessions.idle_timeout_secs),
                        heartbeat_every: Duration::from_millis(config.sessions.heartbeat_ms),
                        heartbeat_ttl: Duration::from_millis(config.sessions.heartbeat_ttl_ms),
                        advertise: cluster.as_ref().map(|(_, _, a)| a.clone()),
                    },
                    metrics.clone(),
                )
                .map_err(|e| SupervisorError::Store(e.to_string()))?,
            )
        }
    };
    let (events, mut events_rx) = mpsc::unbounded_channel();
    let (stop_accepting, stop_rx) = watch::channel(false);
    let in_flight = Arc::new(listeners::InFlight::default());
    let config_json = Arc::new(std::sync::Mutex::new(admin::redacted_config(&config)));
    let admin_guard = Arc::new(std::sync::Mutex::new(Arc::new(admin_guard::Guard::new(
        &config,
        admin_token,
    ))));
    let dispatcher = Arc::new(Dispatcher::new(
        pool.clone(),
        routes.clone(),
        &config.limits,
        metrics.clone(),
    ));
    tokio::spawn(admin::serve(
        admin_listener,
        Arc::new(admin::Admin {
            pool: pool.clone(),
            gatherer: gatherer.clone(),
            metrics: metrics.clone(),
            events: events.clone(),
            config_json: config_json.clone(),
            guard: admin_guard.clone(),
            store: store.clone(),
        }),
        stop_rx,
    ));
    let mut public = Vec::new();
    if let Some((key, listener, advertise)) = cluster {
        info!(%advertise, "in a cluster: other hosts forward to this one");
        bound.push((key, listener));
    }
    for (key, listener) in bound {
        public.push(listeners::serve_listener(
            key,
            listener,
            dispatcher.clone(),
            in_flight.clone(),
        ));
    }
    metrics.set_tls_expiry(&config);

    let mut sup = Supervisor {
        config,
        config_generation: 0,
        source,
        listeners: public,
        socket_activated,
        dispatcher,
        config_json,
        admin_guard,
        pool,
        runtime_dir,
        events,
        life: (0..slots).map(|_| SlotLife::new(boot)).collect(),
        phase: Phase::Starting,
        stop_accepting,
        in_flight,
        notifier,
        metrics,
        gatherer,
        store,
        routes,
    };
    for slot in 0..slots {
        sup.start_worker(slot);
    }

    let mut sigterm = install(SignalKind::terminate(), "SIGTERM")?;
    let mut sigint = install(SignalKind::interrupt(), "SIGINT")?;
    let mut sighup = install(SignalKind::hangup(), "SIGHUP")?;
    let mut drain_deadline: Option<Instant> = None;
    let mut liveness =
        tokio::time::interval(Duration::from_millis(sup.config.sessions.heartbeat_ms));
    let mut watchdog = tokio::time::interval(
        sup.notifier
            .watchdog_period()
            .unwrap_or(Duration::from_secs(3600)),
    );
    loop {
        let deadline = drain_deadline;
        tokio::select! {
            Some(ev) = events_rx.recv() => sup.handle(ev).await,
            _ = sigterm.recv() => drain_deadline = Some(sup.on_stop_signal("SIGTERM", drain_deadline).await),
            _ = sigint.recv() => drain_deadline = Some(sup.on_stop_signal("SIGINT", drain_deadline).await),
            _ = liveness.tick() => sup.check_liveness(),
            _ = watchdog.tick() => {
                if sup.notifier.watchdog_period().is_some() && sup.healthy() {
                    sup.notifier.notify("WATCHDOG=1");
                }
            }
            _ = sighup.recv() => {
                info!("SIGHUP: reloading the configuration");
                let _ = sup.reload().await;
            }
            _ = async { sleep_until(deadline.unwrap_or_else(Instant::now)).await }, if deadline.is_some() => {
                warn!("drain deadline passed; killing the workers that are left");
                sup.kill_all();
                drain_deadline = None;
            }
        }
        if sup.phase == Phase::Draining && sup.life.iter().all(|l| !l.alive) {
            break;
        }
    }
    sup.store.close(sup.config.cluster.handover_on_stop).await;
    info!("all workers exited; supervisor stops");
    sup.runtime_dir.remove();
    Ok(())
}

fn install(
    kind: SignalKind,
    name: &'static str,
) -> Result<tokio::signal::unix::Signal, SupervisorError> {
    signal(kind).map_err(|cause| SupervisorError::Signal {
        signal: name,
        cause,
    })
}

impl Supervisor {
    fn is_current(&self, id: WorkerId) -> Option<&Arc<Worker>> {
        self.life
            .get(usize::from(id.slot))
            .and_then(|l| l.current.as_ref())
            .filter(|w| w.id == id)
    }

    async fn handle(&mut self, ev: Event) {
        match ev {
            Event::Message { id, msg } => self.on_message(id, msg),
            Event::ControlFailed { id, error } => {
                error!(worker = %id, %error, "control channel broke; killing the worker");
                if let Some(w) = self.is_current(id) {
                    kill(w.pid);
                }
            }
            Event::Exited { id, status } => self.on_exit(id, status),
            Event::RestartDue { slot } => {
                if self.phase != Phase::Draining {
                    self.start_worker(slot);
                }
            }
            Event::ReloadRequested { reply } => {
                let result = self.reload().await;
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
        }
    }

    fn on_message(&mut self, id: WorkerId, msg: FromWorker) {
        let Some(worker) = self.is_current(id).cloned() else {
            return;
        };
        match msg {
            FromWorker::Ready { protocol, pid, .. } => {
                if protocol != PROTOCOL_VERSION {
                    error!(worker = %id, protocol, expected = PROTOCOL_VERSION,
                        "worker speaks another control protocol; killing it");
                    kill(worker.pid);
                    return;
                }
                info!(worker = %id, pid, "worker serving");
                if self.phase == Phase::Draining {
                    return;
                }
                if self.routes.set_down(id.slot, false) {
                    info!(
                        slot = id.slot,
                        "slot is back up; new sessions may hash to it again"
                    );
                    self.metrics.slots_down.dec();
                }
                self.routes.introduce(worker.clone());
                let life = &mut self.life[usize::from(id.slot)];
                if life.config_generation != self.config_generation {
                    // Started before a reload finished: bring it up to date.
                    life.config_generation = self.config_generation;
                    let msg = ToWorker::Reload {
                        id: u64::MAX,
                        config: Box::new((*self.config).clone()),
                    };
                    let w = worker.clone();
                    tokio::spawn(async move {
                        if w.control.lock().await.send(&msg).await.is_err() {
                            kill(w.pid);
                        }
                    });
                }
                self.pool.slot(id.slot).set(Some(worker));
                self.report_status();
                if self.phase == Phase::Starting
                    && self.pool.slots().iter().all(|s| s.serving().is_some())
                {
                    self.phase = Phase::Running;
                    info!(workers = self.pool.len(), "ready");
                    self.notifier.notify("READY=1");
                    announce::ready(self.pool.len());
                }
            }
            FromWorker::Load { connections } => worker.note_report(connections),
            // Handled by the control reader (`worker_control`).
            FromWorker::Gathered { .. }
            | FromWorker::Reloaded { .. }
            | FromWorker::Heartbeat { .. }
            | FromWorker::Store(_)
            | FromWorker::StoreFetch { .. }
            | FromWorker::Open { .. } => {}
        }
    }

    /// Kill workers that stopped sending heartbeats (their replacement takes
    /// their sessions), and sweep store records nobody used for too long.
    fn check_liveness(&mut self) {
        if self.phase == Phase::Draining {
            return;
        }
        let ttl = Duration::from_millis(self.config.sessions.heartbeat_ttl_ms);
        for slot in self.pool.slots().iter() {
            if let Some(w) = slot.serving()
                && w.silent_for() > ttl
            {
                error!(worker = %w.id, pid = w.pid, silent_ms = w.silent_for().as_millis() as u64,
                    "worker stopped sending heartbeats; killing it");
                self.metrics.hung.inc();
                kill(w.pid);
            }
        }
        let live: Vec<(WorkerId, u32)> = self
            .life
            .iter()
            .filter_map(|l| l.current.as_ref())
            .map(|w| (w.id, w.pid))
            .collect();
        self.store.heartbeat(&live, self.pool.len());
        let idle = Duration::from_secs(self.config.sessions.idle_timeout_secs) + ttl;
        let swept = self.store.sweep(idle);
        if !swept.is_empty() {
            info!(records = swept.len(), "idle session records swept");
            self.routes.ended(&swept);
        }
        self.metrics.stored_sessions.set(self.store.len() as i64);
    }

    /// Healthy enough to pet the watchdog: some worker serves. A slot in a
    /// crash loop is marked down and served around, not a reason to have
    /// systemd restart the whole gateway.
    fn healthy(&self) -> bool {
        self.pool.slots().iter().any(|s| s.serving().is_some())
    }

    fn report_status(&self) {
        let serving = self
            .pool
            .slots()
            .iter()
            .filter(|s| s.serving().is_some())
            .count();
        self.metrics.workers_serving.set(serving as i64);
        self.notifier.notify(&format!(
            "STATUS=serving with {serving} of {} workers",
            self.pool.len()
        ));
    }
}

fn kill(pid: u32) {
    if let Ok(pid) = i32::try_from(pid)
        && pid > 0
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}
