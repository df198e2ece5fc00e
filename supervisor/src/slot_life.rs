//! The life of each worker slot as the main loop sees it ([`SlotLife`]):
//! starting the slot's worker (a new generation, the control task of
//! [`crate::worker_control`], a watcher for its exit), handling that exit,
//! restarting with backoff, and failover: a dead worker's sessions move to
//! its replacement, and a slot that keeps crashing at start is marked down
//! so the live slots serve its sessions. Spawning the process is
//! [`crate::pool`]'s; the store does the compare-and-swap moves.

use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use mcpgw_protocol::control::{PROTOCOL_VERSION, ToWorker, WorkerId};
use mcpgw_protocol::routing;
use mcpgw_protocol::session_id::SessionId;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::pool::{self, Worker};
use crate::worker_control::WorkerControl;
use crate::{Event, Phase, Supervisor};

/// A worker that exits sooner than this after starting counts as a crash
/// loop for the backoff.
const QUICK_EXIT: Duration = Duration::from_secs(5);
/// After this many quick exits in a row a slot is marked down: its sessions
/// move to the live slots (restarts go on, with the longest backoff).
const DOWN_AFTER: u32 = 3;
/// The restart backoff doubles from 100 ms up to this, so a slot that
/// cannot start is retried without spinning.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What the main loop knows of one slot beyond who serves it.
pub(crate) struct SlotLife {
    /// The worker started most recently in this slot (serving or not).
    pub(crate) current: Option<Arc<Worker>>,
    pub(crate) next_generation: u64,
    pub(crate) started_at: Instant,
    /// Consecutive exits soon after start; drives the restart backoff.
    pub(crate) quick_failures: u32,
    pub(crate) alive: bool,
    /// Which configuration the current worker was started with.
    pub(crate) config_generation: u64,
    /// The worker that died in this slot, until its sessions are moved to
    /// the next one.
    pub(crate) previous: Option<WorkerId>,
}

impl SlotLife {
    pub(crate) fn new(first_generation: u64) -> Self {
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

impl Supervisor {
    /// Start a new generation in `slot`. It serves once it says `Ready`
    /// (handled by the main loop); a failed spawn is retried like a crash.
    pub(crate) fn start_worker(&mut self, slot: u16) {
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
        let (worker, mut child, control_rx) = match pool::spawn(id) {
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
        let control = WorkerControl {
            worker,
            events: self.events.clone(),
            gatherer: self.gatherer.clone(),
            store: self.store.clone(),
            routes: self.routes.clone(),
        };
        tokio::spawn(control.serve(init, control_rx));
        let events = self.events.clone();
        tokio::spawn(async move {
            let status = child.wait().await.ok();
            let _ = events.send(Event::Exited { id, status });
        });
    }

    pub(crate) fn on_exit(&mut self, id: WorkerId, status: Option<ExitStatus>) {
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
}
