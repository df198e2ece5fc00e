//! Growing or shrinking the worker pool when a reload changes `workers`:
//! which sessions stay put (route overrides), which move to another slot by
//! compare-and-swap, and how the workers of removed slots hand their
//! sessions over. Starting the new slots' workers is [`crate::slot_life`]'s;
//! the routing exceptions are [`crate::routes`]'.

use mcpgw_protocol::control::{AfterStop, ToWorker, WorkerId};
use mcpgw_protocol::routing;
use mcpgw_protocol::session_id::SessionId;
use tracing::info;

use crate::slot_life::SlotLife;
use crate::{Supervisor, kill, unix_ms};

impl Supervisor {
    /// Change the number of worker slots without moving a live session
    /// silently: on growth, sessions the hash over the new count would move
    /// stay where they are (overrides); on shrinking, the sessions of the
    /// removed slots move by compare-and-swap to the slot the hash over the
    /// remaining ones picks, and the removed workers drain without closing
    /// upstream sessions (the new owners re-attach them).
    pub(crate) fn resize(&mut self, slots: u16) -> Option<String> {
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
}
