//! The mcpgw supervisor: small, boring, hard to crash. It binds the
//! listeners, starts and restarts worker processes, and hands every accepted
//! connection to one of them. It never parses a body and never talks to an
//! upstream.
//!
//! Module map:
//! - [`listeners`]: binding the public sockets and accepting on them.
//! - [`admin`]: the admin listener (`/metrics`, JSON status), gathered from
//!   the workers; [`metrics`]: the supervisor's own metrics and merging.
//! - [`peek`]: reading a request head with `MSG_PEEK`, bounded.
//! - [`dispatch`]: one connection from accept to its worker.
//! - [`pool`]: slots, the worker serving each, spawning a worker process.
//! - [`runtime_dir`]: the private directory for internal sockets.
//! - [`systemd`]: readiness notification and socket activation.
//! - [`status`]: `mcpgw status`, a client of the admin API.
//! - this file: the main loop, which turns child exits, worker messages,
//!   timers and signals into [`Event`]s and handles them one at a time.

mod admin;
mod dispatch;
mod listeners;
mod metrics;
mod peek;
mod pool;
mod runtime_dir;
mod status;
mod systemd;

use std::io::Write;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use mcpgw_protocol::channel::ChannelError;
use mcpgw_protocol::config::Config;
use mcpgw_protocol::control::{FromWorker, PROTOCOL_VERSION, ToWorker, WorkerId};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};
use tracing::{error, info, warn};

use crate::dispatch::Dispatcher;
use crate::pool::{Pool, Worker};
use crate::runtime_dir::RuntimeDir;

pub use crate::listeners::ListenError;
pub use crate::pool::{WORKER_CONN_FD, WORKER_CONTROL_FD};
pub use crate::runtime_dir::RuntimeDirError;
pub use crate::status::{StatusError, status};

/// Why the supervisor could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("starting the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error(transparent)]
    RuntimeDir(#[from] RuntimeDirError),
    #[error("setting up metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("installing the handler for {signal}: {source}")]
    Signal {
        signal: &'static str,
        source: std::io::Error,
    },
}

/// Run the gateway until it is told to stop. Returns after a clean drain.
pub fn run(config: Config) -> Result<(), SupervisorError> {
    // Before any thread exists: these fds and variables are process-wide.
    let activated = systemd::take_activated();
    let notifier = systemd::Notifier::from_env();
    // One thread: the supervisor's work per connection is a peek and a
    // sendmsg; the workers do everything else.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(SupervisorError::Runtime)?;
    rt.block_on(run_async(config, activated, notifier))
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
enum Event {
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
}

/// What the main loop knows of one slot beyond who serves it.
struct SlotLife {
    /// The worker started most recently in this slot (serving or not).
    current: Option<Arc<Worker>>,
    next_generation: u32,
    started_at: Instant,
    /// Consecutive exits soon after start; drives the restart backoff.
    quick_failures: u32,
    alive: bool,
}

struct Supervisor {
    config: Arc<Config>,
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
}

/// A worker that exits sooner than this after starting counts as a crash
/// loop for the backoff.
const QUICK_EXIT: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

async fn run_async(
    config: Config,
    activated: Vec<(String, std::os::fd::OwnedFd)>,
    notifier: systemd::Notifier,
) -> Result<(), SupervisorError> {
    let config = Arc::new(config);
    let slots = config.worker_count();
    let runtime_dir = RuntimeDir::create(config.runtime_dir.as_deref())?;
    let bound = if activated.is_empty() {
        listeners::bind_all(&config.listen)?
    } else {
        let names: Vec<&str> = activated.iter().map(|(n, _)| n.as_str()).collect();
        info!(
            ?names,
            "using sockets from systemd; `listen` in the config is not used"
        );
        listeners::adopt(activated.into_iter().map(|(_, fd)| fd).collect())?
    };
    let admin_listener = listeners::bind_all(&[config.admin_listen])?.remove(0);
    {
        let mut out = std::io::stdout().lock();
        for l in &bound {
            let addr = l.local_addr().map_err(listeners::ListenError::LocalAddr)?;
            info!(%addr, "listening");
            let _ = writeln!(out, "mcpgw listening http://{addr}");
        }
        let addr = admin_listener
            .local_addr()
            .map_err(listeners::ListenError::LocalAddr)?;
        info!(%addr, "admin listening");
        let _ = writeln!(out, "mcpgw admin http://{addr}");
        let _ = out.flush();
    }
    let metrics = Arc::new(metrics::Metrics::new()?);
    let gatherer = Arc::new(admin::Gatherer::default());

    let pool = Arc::new(Pool::new(slots));
    let (events, mut events_rx) = mpsc::unbounded_channel();
    let (stop_accepting, stop_rx) = watch::channel(false);
    let in_flight = Arc::new(listeners::InFlight::default());
    let dispatcher = Arc::new(Dispatcher::new(
        pool.clone(),
        &config.limits,
        metrics.clone(),
    ));
    tokio::spawn(admin::serve(
        admin_listener,
        Arc::new(admin::Admin {
            pool: pool.clone(),
            gatherer: gatherer.clone(),
            metrics: metrics.clone(),
        }),
        stop_rx.clone(),
    ));
    for (index, listener) in bound.into_iter().enumerate() {
        tokio::spawn(listeners::accept_loop(
            listener,
            index as u16,
            dispatcher.clone(),
            in_flight.clone(),
            stop_rx.clone(),
        ));
    }

    let mut sup = Supervisor {
        config,
        pool,
        runtime_dir,
        events,
        life: (0..slots)
            .map(|_| SlotLife {
                current: None,
                next_generation: 0,
                started_at: Instant::now(),
                quick_failures: 0,
                alive: false,
            })
            .collect(),
        phase: Phase::Starting,
        stop_accepting,
        in_flight,
        notifier,
        metrics,
        gatherer,
    };
    for slot in 0..slots {
        sup.start_worker(slot);
    }

    let mut sigterm = install(SignalKind::terminate(), "SIGTERM")?;
    let mut sigint = install(SignalKind::interrupt(), "SIGINT")?;
    let mut sighup = install(SignalKind::hangup(), "SIGHUP")?;
    let mut drain_deadline: Option<Instant> = None;
    let mut watchdog = tokio::time::interval(
        sup.notifier
            .watchdog_period()
            .unwrap_or(Duration::from_secs(3600)),
    );
    loop {
        let deadline = drain_deadline;
        tokio::select! {
            Some(ev) = events_rx.recv() => sup.handle(ev),
            _ = sigterm.recv() => drain_deadline = Some(sup.on_stop_signal("SIGTERM", drain_deadline).await),
            _ = sigint.recv() => drain_deadline = Some(sup.on_stop_signal("SIGINT", drain_deadline).await),
            _ = watchdog.tick() => {
                if sup.notifier.watchdog_period().is_some() && sup.healthy() {
                    sup.notifier.notify("WATCHDOG=1");
                }
            }
            _ = sighup.recv() => {
                warn!("SIGHUP received: configuration reload is not available in this version; \
                       the running configuration stays in force");
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
    info!("all workers exited; supervisor stops");
    sup.runtime_dir.remove();
    Ok(())
}

fn install(
    kind: SignalKind,
    name: &'static str,
) -> Result<tokio::signal::unix::Signal, SupervisorError> {
    signal(kind).map_err(|source| SupervisorError::Signal {
        signal: name,
        source,
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
        let (worker, mut child, mut control_rx) = match pool::spawn(id) {
            Ok(started) => started,
            Err(e) => {
                error!(worker = %id, error = %e, "cannot start worker");
                life.quick_failures += 1;
                self.schedule_restart(slot);
                return;
            }
        };
        info!(worker = %id, pid = worker.pid, "worker started");
        life.current = Some(worker.clone());
        life.alive = true;

        let init = ToWorker::Init {
            protocol: PROTOCOL_VERSION,
            id,
            slots: self.pool.len(),
            runtime_dir: self.runtime_dir.path().to_owned(),
            config: Box::new((*self.config).clone()),
        };
        let events = self.events.clone();
        tokio::spawn(async move {
            if let Err(e) = worker.control.lock().await.send(&init).await {
                let _ = events.send(Event::ControlFailed { id, error: e });
                return;
            }
            loop {
                match control_rx.recv().await {
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

    fn handle(&mut self, ev: Event) {
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
                self.pool.slots[usize::from(id.slot)].set(Some(worker));
                self.report_status();
                if self.phase == Phase::Starting
                    && self.pool.slots.iter().all(|s| s.serving().is_some())
                {
                    self.phase = Phase::Running;
                    info!(workers = self.pool.len(), "ready");
                    self.notifier.notify("READY=1");
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "mcpgw ready workers={}", self.pool.len());
                    let _ = out.flush();
                }
            }
            FromWorker::Load { connections } => worker.note_report(connections),
            FromWorker::Gathered { id: request, data } => self.gatherer.deliver(request, id, data),
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
        self.pool.slots[slot].set(None);
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
        // Connections already accepted get to their worker before it is told
        // to stop, so none is accepted and then dropped.
        self.in_flight
            .wait_idle(self.config.limits.header_timeout() + Duration::from_secs(1))
            .await;
        let grace_ms = self.config.shutdown.grace_ms;
        for life in &self.life {
            let Some(w) = life.current.clone() else {
                continue;
            };
            tokio::spawn(async move {
                if w.control
                    .lock()
                    .await
                    .send(&ToWorker::Shutdown { grace_ms })
                    .await
                    .is_err()
                {
                    kill(w.pid);
                }
            });
        }
        Instant::now() + Duration::from_millis(grace_ms) + Duration::from_secs(5)
    }

    /// Healthy enough to pet the watchdog: some worker serves and no slot is
    /// in a crash loop.
    fn healthy(&self) -> bool {
        self.pool.slots.iter().any(|s| s.serving().is_some())
            && self.life.iter().all(|l| l.quick_failures < 3)
    }

    fn report_status(&self) {
        let serving = self
            .pool
            .slots
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
