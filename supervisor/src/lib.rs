//! The mcpgw supervisor: small, boring, hard to crash. It binds the
//! listeners, starts and restarts worker processes, and hands every accepted
//! connection to one of them. It never parses a body and never talks to an
//! upstream.
//!
//! Module map:
//! - [`listeners`]: binding the public sockets and accepting on them.
//! - [`admin`]: the admin listener (`/metrics`, JSON status), gathered from
//!   the workers; [`metrics`]: the supervisor's own metrics and merging;
//!   [`admin_guard`]: who may use it (Host/Origin policy, bearer token).
//! - [`peek`]: reading a request head with `MSG_PEEK`, bounded.
//! - [`dispatch`]: one connection from accept to its worker.
//! - [`pool`]: slots, the worker serving each, spawning a worker process.
//! - [`runtime_dir`]: the private directory for internal sockets.
//! - [`systemd`]: readiness notification and socket activation.
//! - [`status`]: `mcpgw status`, a client of the admin API.
//! - [`announce`]: the stdout lines (`mcpgw listening …`) and the output
//!   format the workers inherit.
//! - [`store`]: the session store trait, the records and the embedded
//!   backend; [`redis_store`]: the Redis backend.
//! - [`routes`]: routing exceptions (down slots, moved sessions), shared
//!   with the workers.
//! - this file: the main loop, which turns child exits, worker messages,
//!   timers and signals into [`Event`]s and handles them one at a time.

mod admin;
mod admin_guard;
mod announce;
mod dispatch;
mod listeners;
mod metrics;
mod peek;
mod pool;
mod redis_store;
mod routes;
mod runtime_dir;
mod status;
mod store;
mod systemd;

use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use mcpgw_protocol::channel::ChannelError;
use mcpgw_protocol::config::Config;
use mcpgw_protocol::control::{AfterStop, FromWorker, PROTOCOL_VERSION, ToWorker, WorkerId};
use mcpgw_protocol::routing;
use mcpgw_protocol::session_id::SessionId;
use mcpgw_protocol::store::{Fetched, StoreWrite};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};
use tracing::{debug, error, info, warn};

use crate::dispatch::Dispatcher;
use crate::listeners::ListenerKey;
use crate::pool::{Pool, Worker};
use crate::routes::Routes;
use crate::runtime_dir::RuntimeDir;
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

/// What the main loop knows of one slot beyond who serves it.
struct SlotLife {
    /// The worker started most recently in this slot (serving or not).
    current: Option<Arc<Worker>>,
    next_generation: u64,
    started_at: Instant,
    /// Consecutive exits soon after start; drives the restart backoff.
    quick_failures: u32,
    alive: bool,
    /// Which configuration the current worker was started with.
    config_generation: u64,
    /// The worker that died in this slot, until its sessions are moved to
    /// the next one.
    previous: Option<WorkerId>,
}

impl SlotLife {
    fn new(first_generation: u64) -> Self {
        Self {
            current: None,
            next_generation: first_generation,
            started_at: Instant::now(),
            quick_failures: 0,
            alive: false,
            config_generation: 0,
            previous: None,
        }
    }
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

/// A worker that exits sooner than this after starting counts as a crash
/// loop for the backoff.
const QUICK_EXIT: Duration = Duration::from_secs(5);
/// After this many quick exits in a row a slot is marked down: its sessions
/// move to the live slots (restarts go on, with the longest backoff).
const DOWN_AFTER: u32 = 3;

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
const MAX_BACKOFF: Duration = Duration::from_secs(10);

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
        }),
        stop_rx,
    ));
    let mut public = Vec::new();
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
    sup.store.close().await;
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
    fn start_worker(&mut self, slot: u16) {
        let life = &mut self.life[usize::from(slot)];
        let id = WorkerId {
            slot,
            generation: life.next_generation,
        };
        life.next_generation += 1;
        life.started_at = Instant::now();
        if let Some(dead) = life.previous.take() {
            // Compare-and-swap before the replacement serves: its first
            // request for a moved session finds the record already its own.
            let moved = self.store.reassign(dead, id);
            if moved > 0 {
                info!(from = %dead, to = %id, sessions = moved, "sessions reassigned to the replacement worker");
                self.metrics.reassigned.inc_by(moved as u64);
            }
        }
        let (worker, mut child, mut control_rx) = match pool::spawn(id) {
            Ok(started) => started,
            Err(e) => {
                error!(worker = %id, error = %e, "cannot start worker");
                // Sessions may already name this id (CAS above): the next
                // attempt takes them over from it.
                life.previous = Some(id);
                life.quick_failures += 1;
                self.schedule_restart(slot);
                return;
            }
        };
        info!(worker = %id, pid = worker.pid, "worker started");
        life.current = Some(worker.clone());
        life.alive = true;
        life.config_generation = self.config_generation;

        let init = ToWorker::Init {
            protocol: PROTOCOL_VERSION,
            id,
            slots: self.pool.len(),
            runtime_dir: self.runtime_dir.path().to_owned(),
            config: Box::new((*self.config).clone()),
        };
        let events = self.events.clone();
        let gatherer = self.gatherer.clone();
        let store = self.store.clone();
        let routes = self.routes.clone();
        tokio::spawn(async move {
            if let Err(e) = worker.control.lock().await.send(&init).await {
                let _ = events.send(Event::ControlFailed { id, error: e });
                return;
            }
            loop {
                match control_rx.recv().await {
                    // Answers to scattered requests go straight to whoever
                    // waits for them: the main loop may be that waiter.
                    Ok(Some(FromWorker::Gathered { id: request, data })) => {
                        gatherer.deliver(request, id, admin::Answer::Gathered(data));
                    }
                    Ok(Some(FromWorker::Reloaded { id: request, error })) => {
                        gatherer.deliver(request, id, admin::Answer::Reloaded(error));
                    }
                    // Store traffic is served here too, not by the main loop,
                    // so a resuming worker never waits behind a reload.
                    Ok(Some(FromWorker::Heartbeat { touched })) => {
                        worker.note_alive();
                        store.touch(&touched);
                    }
                    Ok(Some(FromWorker::Store(write))) => {
                        let created = matches!(write, StoreWrite::Put(_));
                        match store.apply(id, write) {
                            Some((session, true)) => routes.ended(&[session]),
                            // Minted by a worker that did not know yet of
                            // a new slot count: it lives where it was made.
                            Some((session, false)) if created => {
                                routes.keep_at(session, id.slot);
                            }
                            _ => {}
                        }
                    }
                    Ok(Some(FromWorker::StoreFetch {
                        id: request,
                        session,
                    })) => {
                        let w = worker.clone();
                        let (store, routes) = (store.clone(), routes.clone());
                        tokio::spawn(async move {
                            // Validated before it goes near a store key.
                            let answer = match SessionId::parse(session.as_bytes()) {
                                Ok(session) => {
                                    let answer = store.fetch(session, id).await;
                                    if matches!(answer, Fetched::Record(_)) {
                                        // Claimed away from its slot (that
                                        // slot is down): keep it here.
                                        routes.keep_at(session, id.slot);
                                    }
                                    answer
                                }
                                Err(e) => {
                                    warn!(worker = %id, error = %e, "store fetch for a malformed session id");
                                    Fetched::Withheld
                                }
                            };
                            let reply = ToWorker::StoreRecord {
                                id: request,
                                answer,
                            };
                            if let Err(e) = w.control.lock().await.send(&reply).await {
                                debug!(worker = %w.id, error = %e, "store answer not sent");
                            }
                        });
                    }
                    // Answered here, under the store's lock and in this
                    // worker's message order: the check and the record are
                    // one step, so initializes racing on several workers
                    // cannot pass a cap together.
                    Ok(Some(FromWorker::Open {
                        id: request,
                        caps,
                        record,
                    })) => {
                        let refused = match store.open(id, record, caps) {
                            Ok(Some(session)) => {
                                // As for a Put: it lives where it was made.
                                routes.keep_at(session, id.slot);
                                None
                            }
                            Ok(None) => None,
                            Err(cap) => Some(cap),
                        };
                        let w = worker.clone();
                        tokio::spawn(async move {
                            let reply = ToWorker::Opened {
                                id: request,
                                refused,
                            };
                            if let Err(e) = w.control.lock().await.send(&reply).await {
                                debug!(worker = %w.id, error = %e, "admission answer not sent");
                            }
                        });
                    }
                    Ok(Some(msg)) => {
                        if events.send(Event::Message { id, msg }).is_err() {
                            return;
                        }
                    }
                    // EOF: the worker is exiting; its exit event follows.
                    Ok(None) => return,
                    Err(error) => {
                        let _ = events.send(Event::ControlFailed { id, error });
                        return;
                    }
                }
            }
        });
        let events = self.events.clone();
        tokio::spawn(async move {
            let status = child.wait().await.ok();
            let _ = events.send(Event::Exited { id, status });
        });
    }

    /// Change the number of worker slots without moving a live session
    /// silently: on growth, sessions the hash over the new count would move
    /// stay where they are (overrides); on shrinking, the sessions of the
    /// removed slots move by compare-and-swap to the slot the hash over the
    /// remaining ones picks, and the removed workers drain without closing
    /// upstream sessions (the new owners re-attach them).
    fn resize(&mut self, slots: u16) -> Option<String> {
        let old = self.pool.len();
        if slots == old {
            return None;
        }
        if slots > old {
            let stay: Vec<(SessionId, u16)> = self
                .store
                .owners()
                .into_iter()
                .filter(|(id, owner)| routing::slot_for(id, slots) != owner.slot)
                .map(|(id, owner)| (id, owner.slot))
                .collect();
            let kept = stay.len();
            self.routes.resize(slots, stay);
            for slot in old..slots {
                self.life.push(SlotLife::new(unix_ms()));
                self.start_worker(slot);
            }
            info!(
                from = old,
                to = slots,
                sessions_kept_in_place = kept,
                "worker pool grown"
            );
            return Some(format!("workers {old} → {slots}"));
        }
        // Shrinking: the workers of removed slots stop serving at once.
        let mut leaving = Vec::new();
        for slot in slots..old {
            self.pool.slot(slot).set(None);
            let life = &mut self.life[usize::from(slot)];
            if let Some(w) = life.current.take() {
                leaving.push(w);
            }
            life.alive = false;
        }
        let targets: Vec<Option<WorkerId>> = self.life[..usize::from(slots)]
            .iter()
            .map(|l| l.current.as_ref().map(|w| w.id))
            .collect();
        let target = |id: &SessionId| targets[usize::from(routing::slot_for(id, slots))];
        let owners: Vec<WorkerId> = leaving
            .iter()
            .map(|w| w.id)
            .chain(
                self.life[usize::from(slots)..]
                    .iter()
                    .filter_map(|l| l.previous),
            )
            .collect();
        let moved: usize = owners
            .into_iter()
            .map(|owner| self.store.move_each(owner, &target).len())
            .sum();
        self.metrics.reassigned.inc_by(moved as u64);
        self.routes.resize(slots, Vec::new());
        self.life.truncate(usize::from(slots));
        let grace_ms = self.config.shutdown.grace_ms;
        for w in leaving {
            tokio::spawn(async move {
                let stop = ToWorker::Shutdown {
                    grace_ms,
                    sessions: AfterStop::HandOver,
                };
                if w.control.lock().await.send(&stop).await.is_err() {
                    kill(w.pid);
                }
            });
        }
        self.report_status();
        info!(
            from = old,
            to = slots,
            sessions_moved = moved,
            "worker pool shrunk"
        );
        Some(format!("workers {old} → {slots} ({moved} sessions moved)"))
    }

    /// A slot that cannot start: serve its sessions from the live slots,
    /// each where rendezvous over the live slots puts it, moved by
    /// compare-and-swap and recorded as overrides.
    fn mark_down(&mut self, slot: u16) {
        let newly = self.routes.set_down(slot, true);
        if newly {
            self.metrics.slots_down.inc();
        }
        let Some(dead) = self.life[usize::from(slot)].previous else {
            return;
        };
        let serving: Vec<Option<WorkerId>> = self
            .pool
            .slots()
            .iter()
            .map(|s| s.serving().map(|w| w.id))
            .collect();
        let n = self.pool.len();
        let target = |id: &SessionId| {
            routing::best_slot(id, n, |s| {
                s != slot && serving.get(usize::from(s)).is_some_and(Option::is_some)
            })
            .and_then(|s| serving[usize::from(s)])
        };
        let moved = self.store.move_each(dead, &target);
        if newly || !moved.is_empty() {
            error!(
                slot,
                failures = self.life[usize::from(slot)].quick_failures,
                sessions_moved = moved.len(),
                "worker slot keeps crashing at start; marked down, its sessions are served by the other slots"
            );
        }
        self.metrics.reassigned.inc_by(moved.len() as u64);
        self.routes
            .moved(moved.into_iter().map(|(id, w)| (id, w.slot)).collect());
    }

    fn schedule_restart(&self, slot: u16) {
        let failures = self.life[usize::from(slot)].quick_failures;
        let delay = if failures == 0 {
            Duration::ZERO
        } else {
            (Duration::from_millis(100) * 2u32.saturating_pow(failures - 1)).min(MAX_BACKOFF)
        };
        if !delay.is_zero() {
            warn!(
                slot,
                failures,
                delay_ms = delay.as_millis() as u64,
                "worker keeps exiting; backing off"
            );
        }
        let events = self.events.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = events.send(Event::RestartDue { slot });
        });
    }

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
            // Handled by the control reader (see `start_worker`).
            FromWorker::Gathered { .. }
            | FromWorker::Reloaded { .. }
            | FromWorker::Heartbeat { .. }
            | FromWorker::Store(_)
            | FromWorker::StoreFetch { .. }
            | FromWorker::Open { .. } => {}
        }
    }

    fn on_exit(&mut self, id: WorkerId, status: Option<ExitStatus>) {
        let slot = usize::from(id.slot);
        if self.is_current(id).is_none() {
            return;
        }
        let life = &mut self.life[slot];
        life.alive = false;
        life.current = None;
        // Keep the oldest dead owner: sessions not yet moved still name it.
        if life.previous.is_none() {
            life.previous = Some(id);
        } else if let Some(prev) = life.previous {
            // Two deaths before a successful start: fold them together.
            self.store.reassign(id, prev);
        }
        self.pool.slot(id.slot).set(None);
        let status = status.map_or_else(|| "unknown".to_owned(), |s| s.to_string());
        if self.phase == Phase::Draining {
            info!(worker = %id, %status, "worker exited");
            return;
        }
        warn!(worker = %id, %status, "worker exited unexpectedly; restarting its slot");
        self.metrics
            .restarts
            .with_label_values(&[&id.slot.to_string()])
            .inc();
        if life.started_at.elapsed() < QUICK_EXIT {
            life.quick_failures += 1;
        } else {
            life.quick_failures = 0;
        }
        if life.quick_failures >= DOWN_AFTER {
            self.mark_down(id.slot);
        }
        self.schedule_restart(id.slot);
        self.report_status();
    }

    /// First stop signal: drain. A second one: stop now.
    async fn on_stop_signal(&mut self, name: &str, deadline: Option<Instant>) -> Instant {
        if self.phase == Phase::Draining {
            warn!(signal = name, "second stop signal; killing workers now");
            self.kill_all();
            return deadline.unwrap_or_else(Instant::now);
        }
        info!(
            signal = name,
            "stopping: no new connections; draining workers"
        );
        self.phase = Phase::Draining;
        self.notifier.notify("STOPPING=1\nSTATUS=draining");
        let _ = self.stop_accepting.send(true);
        for (_, stop) in &self.listeners {
            let _ = stop.send(true);
        }
        // Connections already accepted get to their worker before it is told
        // to stop, so none is accepted and then dropped.
        self.in_flight
            .wait_idle(self.config.limits.header_timeout() + Duration::from_secs(1))
            .await;
        let grace_ms = self.config.shutdown.grace_ms;
        // Sessions recorded in Redis outlive this run: the next one resumes them.
        let sessions = if self.config.store.redis_url.is_some() {
            AfterStop::Keep
        } else {
            AfterStop::Close
        };
        for life in &self.life {
            let Some(w) = life.current.clone() else {
                continue;
            };
            tokio::spawn(async move {
                if w.control
                    .lock()
                    .await
                    .send(&ToWorker::Shutdown { grace_ms, sessions })
                    .await
                    .is_err()
                {
                    kill(w.pid);
                }
            });
        }
        Instant::now() + Duration::from_millis(grace_ms) + Duration::from_secs(5)
    }

    /// SIGHUP or `POST /admin/reload`: read the configuration again and, if
    /// it is valid, apply it everywhere without dropping a request. An
    /// invalid one is logged and counted, and the running one stays.
    async fn reload(&mut self) -> Result<String, String> {
        if self.phase == Phase::Draining {
            return Err("the gateway is stopping".to_owned());
        }
        self.notifier.notify(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}",
            systemd::monotonic_usec()
        ));
        let result = self.apply_reload().await;
        match &result {
            Ok(message) => {
                info!(%message, "reload applied");
                self.metrics.reloads.with_label_values(&["ok"]).inc();
            }
            Err(error) => {
                error!(%error, "reload refused; the running configuration stays in force");
                self.metrics.reloads.with_label_values(&["failed"]).inc();
            }
        }
        self.notifier.notify("READY=1");
        self.report_status();
        result
    }

    async fn apply_reload(&mut self) -> Result<String, String> {
        let mut new = (self.source)()?;
        let mut kept = Vec::new();
        // What cannot change without a restart keeps its running value, and
        // the log says so.
        // Workers learn the effective count from the config they are sent.
        new.workers = Some(new.worker_count());
        if new.admin_listen != self.config.admin_listen {
            kept.push(format!(
                "admin_listen stays {} (restart to apply)",
                self.config.admin_listen
            ));
            new.admin_listen = self.config.admin_listen;
        }
        if new.store != self.config.store {
            kept.push("[store] stays (restart to apply)".to_owned());
            new.store.clone_from(&self.config.store);
        }
        if new.runtime_dir != self.config.runtime_dir {
            kept.push("runtime_dir stays (restart to apply)".to_owned());
            new.runtime_dir.clone_from(&self.config.runtime_dir);
        }
        if self.socket_activated && new.listen != self.config.listen {
            kept.push("listen is ignored: the sockets come from systemd".to_owned());
            new.listen.clone_from(&self.config.listen);
        }
        // Again, with the kept values: e.g. a file that moved admin_listen to
        // loopback and dropped the token file, while the listener stays put.
        new.validate().map_err(|e| e.to_string())?;
        // Re-read on every reload, so that a rotated token takes effect.
        let admin_token = new.read_admin_token().map_err(|e| e.to_string())?;
        for k in &kept {
            warn!("reload: {k}");
        }
        // Bind new listeners first: if that fails nothing has changed yet.
        let wanted: Vec<ListenerKey> = ListenerKey::all(&new)
            .into_iter()
            .filter(|k| !(self.socket_activated && matches!(k, ListenerKey::Plain(_))))
            .collect();
        let added: Vec<ListenerKey> = wanted
            .iter()
            .filter(|k| !self.listeners.iter().any(|(have, _)| have == *k))
            .copied()
            .collect();
        let addrs: Vec<std::net::SocketAddr> = added.iter().map(|k| k.addr()).collect();
        let bound = listeners::bind_all(&addrs).map_err(|e| e.to_string())?;
        let config = Arc::new(new);
        self.config = config.clone();
        self.config_generation += 1;
        self.dispatcher.set_limits(&config.limits);
        if let Ok(mut json) = self.config_json.lock() {
            *json = admin::redacted_config(&config);
        }
        if let Ok(mut guard) = self.admin_guard.lock() {
            *guard = Arc::new(admin_guard::Guard::new(&config, admin_token));
        }
        for life in self.life.iter_mut().filter(|l| l.current.is_some()) {
            life.config_generation = self.config_generation;
        }
        self.listeners.retain(|(key, stop)| {
            let keep = wanted.contains(key)
                || (self.socket_activated && matches!(key, ListenerKey::Plain(_)));
            if !keep {
                info!(addr = %key.addr(), "reload: no longer listening");
                let _ = stop.send(true);
            }
            keep
        });
        for (key, listener) in added.into_iter().zip(bound) {
            self.listeners.push(listeners::serve_listener(
                key,
                listener,
                self.dispatcher.clone(),
                self.in_flight.clone(),
            ));
        }
        self.metrics.set_tls_expiry(&config);
        let resized = self.resize(config.worker_count());

        let answers = self
            .gatherer
            .scatter(&self.pool, |id| ToWorker::Reload {
                id,
                config: Box::new((*config).clone()),
            })
            .await;
        let mut failed = Vec::new();
        for (worker, answer) in &answers {
            match answer {
                Some(admin::Answer::Reloaded(None)) => {}
                Some(admin::Answer::Reloaded(Some(e))) => {
                    failed.push(format!("{}: {e}", worker.id))
                }
                _ => failed.push(format!("{}: no answer", worker.id)),
            }
        }
        if !failed.is_empty() {
            // A worker that could not apply it would serve the old
            // configuration: restart it, and it starts with the new one.
            for (worker, answer) in &answers {
                if !matches!(answer, Some(admin::Answer::Reloaded(None))) {
                    kill(worker.pid);
                }
            }
            return Err(format!(
                "applied, but these workers were restarted to pick it up: {}",
                failed.join("; ")
            ));
        }
        let mut message = format!("applied in {} workers", answers.len());
        if let Some(change) = resized {
            message.push_str("; ");
            message.push_str(&change);
        }
        if !kept.is_empty() {
            message.push_str("; ");
            message.push_str(&kept.join("; "));
        }
        Ok(message)
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
        self.store.heartbeat(&live);
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

    fn kill_all(&self) {
        for w in self.life.iter().filter_map(|l| l.current.as_ref()) {
            kill(w.pid);
        }
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
