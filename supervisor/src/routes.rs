//! The supervisor's routing exceptions and their distribution to workers.
//!
//! Most sessions go where the rendezvous hash says. The exceptions (slots
//! marked down after a crash loop, sessions moved off their hash slot) live
//! in one [`RouteTable`]; dispatch reads it (skipping the lock while there
//! are no exceptions), and every change is sent, in order, to every serving
//! worker by one broadcaster task, because workers forward requests by the
//! same table.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use mcpgw_protocol::control::ToWorker;
use mcpgw_protocol::routing::{self, RouteTable, RouteUpdate};
use mcpgw_protocol::session_id::SessionId;
use tokio::sync::mpsc;
use tracing::debug;

use crate::pool::{Pool, Worker};

enum Broadcast {
    /// To every serving worker.
    All(RouteUpdate),
    /// The whole table, to a worker that just started.
    Snapshot(Arc<Worker>),
}

pub(crate) struct Routes {
    table: RwLock<RouteTable>,
    /// No exceptions: the hash alone decides.
    plain: AtomicBool,
    /// Holds the slot count this table routes over (`Pool::len`); a
    /// resize changes both under the table's lock.
    pool: Arc<Pool>,
    out: mpsc::UnboundedSender<Broadcast>,
}

impl Routes {
    pub(crate) fn new(pool: Arc<Pool>) -> Arc<Self> {
        let (out, rx) = mpsc::unbounded_channel();
        let slots = pool.len();
        let routes = Arc::new(Self {
            table: RwLock::new(RouteTable::new(slots)),
            plain: AtomicBool::new(true),
            pool: pool.clone(),
            out,
        });
        tokio::spawn(broadcast(Arc::downgrade(&routes), pool, rx));
        routes
    }

    /// The slot that serves `id`.
    pub(crate) fn owner(&self, id: &SessionId) -> u16 {
        if self.plain.load(Ordering::Acquire) {
            return routing::slot_for(id, self.pool.len());
        }
        self.read(|t| t.owner(id))
    }

    pub(crate) fn is_down(&self, slot: u16) -> bool {
        !self.plain.load(Ordering::Acquire) && self.read(|t| t.is_down(slot))
    }

    /// Mark `slot` down or up; returns whether that changed anything.
    pub(crate) fn set_down(&self, slot: u16, down: bool) -> bool {
        if self.is_down(slot) == down {
            return false;
        }
        self.change(|t| {
            let mut list = t.down_slots();
            list.retain(|s| *s != slot);
            if down {
                list.push(slot);
            }
            RouteUpdate {
                down: list,
                ..RouteUpdate::default()
            }
        });
        true
    }

    /// Sessions now served by another slot than their hash slot.
    pub(crate) fn moved(&self, sessions: Vec<(SessionId, u16)>) {
        if sessions.is_empty() {
            return;
        }
        self.change(|t| RouteUpdate {
            down: t.down_slots(),
            moved: sessions
                .iter()
                .map(|(id, s)| (id.to_string(), *s))
                .collect(),
            ..RouteUpdate::default()
        });
    }

    /// Keep `id` on `slot` (where it was created or claimed) if the hash
    /// alone would send it elsewhere.
    pub(crate) fn keep_at(&self, id: SessionId, slot: u16) {
        if self.owner(&id) != slot {
            self.moved(vec![(id, slot)]);
        }
    }

    /// Sessions that ended: their overrides go (if they had any).
    pub(crate) fn ended(&self, sessions: &[SessionId]) {
        if self.plain.load(Ordering::Acquire) || sessions.is_empty() {
            return;
        }
        let with_override: Vec<String> = self.read(|t| {
            sessions
                .iter()
                .filter(|id| t.is_moved(id))
                .map(|id| id.to_string())
                .collect()
        });
        if with_override.is_empty() {
            return;
        }
        self.change(|t| RouteUpdate {
            down: t.down_slots(),
            cleared: with_override,
            ..RouteUpdate::default()
        });
    }

    /// The pool now has `slots` slots; `stay` are sessions that keep their
    /// slot although the hash over the new count puts them elsewhere.
    pub(crate) fn resize(&self, slots: u16, stay: Vec<(SessionId, u16)>) {
        self.change(|t| RouteUpdate {
            slots,
            down: t.down_slots().into_iter().filter(|s| *s < slots).collect(),
            moved: stay.iter().map(|(id, s)| (id.to_string(), *s)).collect(),
            ..RouteUpdate::default()
        });
    }

    /// Send the whole table to `worker` (just started), if there is any.
    pub(crate) fn introduce(&self, worker: Arc<Worker>) {
        if !self.plain.load(Ordering::Acquire) {
            let _ = self.out.send(Broadcast::Snapshot(worker));
        }
    }

    fn change(&self, make: impl FnOnce(&RouteTable) -> RouteUpdate) {
        let update = {
            let mut table = match self.table.write() {
                Ok(t) => t,
                Err(poisoned) => poisoned.into_inner(),
            };
            let update = make(&table);
            if update.slots != 0 {
                // Readers take the locked path while the count changes, so
                // none routes by the new count without the overrides.
                self.plain.store(false, Ordering::Release);
                self.pool.set_len(update.slots);
            }
            table.apply(&update);
            self.plain.store(table.is_plain(), Ordering::Release);
            update
        };
        let _ = self.out.send(Broadcast::All(update));
    }

    fn read<T>(&self, f: impl FnOnce(&RouteTable) -> T) -> T {
        match self.table.read() {
            Ok(t) => f(&t),
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }
}

/// Sends updates one at a time, so every worker sees them in order.
async fn broadcast(
    routes: std::sync::Weak<Routes>,
    pool: Arc<Pool>,
    mut rx: mpsc::UnboundedReceiver<Broadcast>,
) {
    while let Some(msg) = rx.recv().await {
        let (targets, update) = match msg {
            Broadcast::All(update) => (
                pool.slots().iter().filter_map(|s| s.serving()).collect(),
                update,
            ),
            Broadcast::Snapshot(worker) => {
                let Some(routes) = routes.upgrade() else {
                    return;
                };
                (vec![worker], routes.read(|t| t.snapshot()))
            }
        };
        let msg = ToWorker::Routes(update);
        for w in targets {
            if let Err(e) = w.control.lock().await.send(&msg).await {
                debug!(worker = %w.id, error = %e, "routing update not sent");
            }
        }
    }
}
