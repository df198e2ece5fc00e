//! The embedded session store: the supervisor's in-memory copy of every
//! session record, written by the worker that owns the session.
//!
//! Ownership is the invariant: only the owner may change a record, and a
//! record is handed out only to its owner. When a worker dies its sessions
//! move to its replacement by compare-and-swap ([`EmbeddedStore::reassign`]:
//! owner == dead → new), so two workers can never both resume one session.
//! Records nobody touched for longer than the idle timeout are swept.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use mcpgw_protocol::control::WorkerId;
use mcpgw_protocol::session_id::SessionId;
use mcpgw_protocol::store::{SessionRecord, StoreWrite};
use tracing::{debug, warn};

struct Entry {
    record: SessionRecord,
    last_seen: Instant,
}

#[derive(Default)]
pub(crate) struct EmbeddedStore {
    records: HashMap<SessionId, Entry>,
    by_owner: HashMap<WorkerId, HashSet<SessionId>>,
}

impl EmbeddedStore {
    /// Apply a write from worker `from`. Writes to sessions it does not own
    /// are refused (logged): a stale worker must not undo a reassignment.
    pub(crate) fn apply(&mut self, from: WorkerId, write: StoreWrite) {
        let session = match &write {
            StoreWrite::Put(r) => r.id.as_str(),
            StoreWrite::SetUpstream { session, .. }
            | StoreWrite::ClearUpstream { session, .. }
            | StoreWrite::Remove { session } => session.as_str(),
        };
        let Ok(id) = SessionId::parse(session.as_bytes()) else {
            warn!(worker = %from, "store write for a malformed session id; ignored");
            return;
        };
        if let StoreWrite::Put(mut record) = write {
            if let Some(existing) = self.records.get(&id)
                && existing.record.owner != from
            {
                warn!(worker = %from, owner = %existing.record.owner, session = %id, "put refused: not the owner");
                return;
            }
            record.owner = from;
            self.by_owner.entry(from).or_default().insert(id);
            self.records.insert(
                id,
                Entry {
                    record: *record,
                    last_seen: Instant::now(),
                },
            );
            return;
        }
        let Some(entry) = self.records.get_mut(&id) else {
            debug!(session = %id, "store write for an unknown session; ignored");
            return;
        };
        if entry.record.owner != from {
            warn!(worker = %from, owner = %entry.record.owner, session = %id, "write refused: not the owner");
            return;
        }
        entry.last_seen = Instant::now();
        match write {
            StoreWrite::SetUpstream { upstream, .. } => {
                entry
                    .record
                    .upstreams
                    .retain(|u| u.upstream != upstream.upstream);
                entry.record.upstreams.push(upstream);
            }
            StoreWrite::ClearUpstream { upstream, .. } => {
                entry.record.upstreams.retain(|u| u.upstream != upstream);
            }
            StoreWrite::Remove { .. } => {
                self.records.remove(&id);
                if let Some(set) = self.by_owner.get_mut(&from) {
                    set.remove(&id);
                }
            }
            StoreWrite::Put(_) => {}
        }
    }

    /// The record of `session`, only for its owner.
    pub(crate) fn fetch(&mut self, session: &str, for_worker: WorkerId) -> Option<SessionRecord> {
        let id = SessionId::parse(session.as_bytes()).ok()?;
        let entry = self.records.get_mut(&id)?;
        if entry.record.owner != for_worker {
            debug!(session = %id, owner = %entry.record.owner, asker = %for_worker, "fetch refused: not the owner");
            return None;
        }
        entry.last_seen = Instant::now();
        Some(entry.record.clone())
    }

    /// Compare-and-swap every session owned by `from` to `to`; returns how
    /// many moved.
    pub(crate) fn reassign(&mut self, from: WorkerId, to: WorkerId) -> usize {
        let Some(ids) = self.by_owner.remove(&from) else {
            return 0;
        };
        let mut moved = 0;
        for id in ids {
            if let Some(entry) = self.records.get_mut(&id)
                && entry.record.owner == from
            {
                entry.record.owner = to;
                self.by_owner.entry(to).or_default().insert(id);
                moved += 1;
            }
        }
        moved
    }

    pub(crate) fn touch(&mut self, sessions: &[String]) {
        let now = Instant::now();
        for s in sessions {
            if let Ok(id) = SessionId::parse(s.as_bytes())
                && let Some(e) = self.records.get_mut(&id)
            {
                e.last_seen = now;
            }
        }
    }

    /// Drop records nobody used for `idle`; returns how many.
    pub(crate) fn sweep(&mut self, idle: Duration) -> usize {
        let before = self.records.len();
        let expired: Vec<(SessionId, WorkerId)> = self
            .records
            .iter()
            .filter(|(_, e)| e.last_seen.elapsed() > idle)
            .map(|(id, e)| (*id, e.record.owner))
            .collect();
        for (id, owner) in expired {
            self.records.remove(&id);
            if let Some(set) = self.by_owner.get_mut(&owner) {
                set.remove(&id);
            }
        }
        before - self.records.len()
    }

    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcpgw_protocol::store::UpstreamRecord;

    fn w(slot: u16, generation: u32) -> WorkerId {
        WorkerId { slot, generation }
    }

    fn record(id: &SessionId) -> Box<SessionRecord> {
        Box::new(SessionRecord {
            id: id.to_string(),
            owner: w(9, 9),
            principal: String::new(),
            endpoint: "/mcp".into(),
            version: "2025-11-25".into(),
            init_params: "{}".into(),
            created_ms: 0,
            upstreams: Vec::new(),
        })
    }

    #[test]
    fn owner_writes_others_are_refused_and_cas_moves_ownership() {
        let mut store = EmbeddedStore::default();
        let id = SessionId::mint_for_slot(0, 1).expect("id");
        let (a, b) = (w(0, 0), w(0, 1));
        store.apply(a, StoreWrite::Put(record(&id)));
        assert_eq!(store.fetch(id.as_str(), a).map(|r| r.owner), Some(a));
        assert!(store.fetch(id.as_str(), b).is_none());
        let up = UpstreamRecord {
            upstream: "u".into(),
            session_id: Some("s1".into()),
            version: "2025-11-25".into(),
        };
        store.apply(
            b,
            StoreWrite::SetUpstream {
                session: id.to_string(),
                upstream: up.clone(),
            },
        );
        assert!(
            store
                .fetch(id.as_str(), a)
                .expect("rec")
                .upstreams
                .is_empty()
        );
        store.apply(
            a,
            StoreWrite::SetUpstream {
                session: id.to_string(),
                upstream: up.clone(),
            },
        );
        assert_eq!(
            store.fetch(id.as_str(), a).expect("rec").upstreams,
            vec![up]
        );

        assert_eq!(store.reassign(a, b), 1);
        assert_eq!(
            store.reassign(a, b),
            0,
            "a second CAS from the dead owner moves nothing"
        );
        assert!(store.fetch(id.as_str(), a).is_none());
        let moved = store.fetch(id.as_str(), b).expect("new owner");
        assert_eq!(moved.owner, b);
        assert_eq!(moved.upstreams.len(), 1);
        // The dead owner cannot remove it any more; the new one can.
        store.apply(
            a,
            StoreWrite::Remove {
                session: id.to_string(),
            },
        );
        assert_eq!(store.len(), 1);
        store.apply(
            b,
            StoreWrite::Remove {
                session: id.to_string(),
            },
        );
        assert_eq!(store.len(), 0);
    }

    #[test]
    fn malformed_ids_never_become_keys_and_idle_records_are_swept() {
        let mut store = EmbeddedStore::default();
        let mut bad = record(&SessionId::mint_for_slot(0, 1).expect("id"));
        bad.id = "../../etc".into();
        store.apply(w(0, 0), StoreWrite::Put(bad));
        assert_eq!(store.len(), 0);
        let id = SessionId::mint_for_slot(0, 1).expect("id");
        store.apply(w(0, 0), StoreWrite::Put(record(&id)));
        assert_eq!(store.sweep(Duration::from_secs(60)), 0);
        assert_eq!(store.sweep(Duration::ZERO), 1);
    }
}
