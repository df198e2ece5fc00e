//! Session records in the supervisor: the [`SessionStore`] trait the
//! supervisor uses, the in-memory [`Records`] every backend keeps of its own
//! workers' sessions, and the embedded backend ([`EmbeddedStore`]), which is
//! just those records. The Redis backend is in [`crate::redis_store`].
//!
//! Ownership is the invariant: only the owner may change a record, and a
//! record is handed out only to its owner. When a worker dies its sessions
//! move to its replacement by compare-and-swap ([`Records::reassign`]:
//! owner == dead → new), so two workers can never both resume one session.
//! Records nobody touched for longer than the idle timeout are swept.
//!
//! The records are also what the host-wide session caps count
//! ([`Records::open`]): live sessions in total, per owning worker and per
//! client address. Counting the records (rather than keeping a separate
//! tally) means every way a session ends (DELETE, idle expiry, sweep, a
//! claim by another host) frees its place without extra bookkeeping.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mcpgw_protocol::control::WorkerId;
use mcpgw_protocol::session_id::SessionId;
use mcpgw_protocol::store::{Fetched, SessionCap, SessionCaps, SessionRecord, StoreWrite};
use tracing::{debug, warn};

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the supervisor asks of a session store, whichever backend holds it.
/// Everything but [`SessionStore::fetch`] and [`SessionStore::close`] is
/// answered from memory at once: the control readers call them inline and
/// must never wait on a network.
pub(crate) trait SessionStore: Send + Sync {
    /// A write from worker `from` (refused unless it owns the session).
    /// Returns the session and whether the write ended it.
    fn apply(&self, from: WorkerId, write: StoreWrite) -> Option<(SessionId, bool)>;
    /// A new session of worker `from`: stored if no cap in `caps` is
    /// reached, else refused with the cap (nothing stored).
    fn open(
        &self,
        from: WorkerId,
        record: Box<SessionRecord>,
        caps: SessionCaps,
    ) -> Result<Option<SessionId>, SessionCap>;
    /// The record of `session` for worker `asker`, if it owns it, or if its
    /// owner is dead and the record could be claimed for `asker`.
    fn fetch(&self, session: SessionId, asker: WorkerId) -> BoxFuture<'_, Fetched>;
    /// Compare-and-swap every session owned by `from` to `to`.
    fn reassign(&self, from: WorkerId, to: WorkerId) -> usize;
    /// Compare-and-swap each session of `from` to the worker `target` picks.
    fn move_each(
        &self,
        from: WorkerId,
        target: &dyn Fn(&SessionId) -> Option<WorkerId>,
    ) -> Vec<(SessionId, WorkerId)>;
    /// Every session this supervisor holds, with its owner.
    fn owners(&self) -> Vec<(SessionId, WorkerId)>;
    /// Sessions used recently (from a worker's heartbeat).
    fn touch(&self, sessions: &[String]);
    /// Drop records unused for `idle`; returns their ids.
    fn sweep(&self, idle: Duration) -> Vec<SessionId>;
    fn len(&self) -> usize;
    /// Every heartbeat period, with the workers alive now (id, pid) and
    /// the number of slots.
    fn heartbeat(&self, live: &[(WorkerId, u32)], slots: u16);
    /// `[cluster]`: the member hosts as of the last heartbeat; `None` when
    /// this host is not in a cluster.
    fn members(&self) -> Option<Vec<crate::redis_store::MemberView>> {
        None
    }
    /// The supervisor is exiting, its workers gone; with `handover`
    /// (`cluster.handover_on_stop`), its sessions go to the other hosts.
    fn close(&self, handover: bool) -> BoxFuture<'_, ()>;
}

/// The embedded backend: the records in the supervisor's memory.
#[derive(Default)]
pub(crate) struct EmbeddedStore {
    records: Mutex<Records>,
}

impl EmbeddedStore {
    fn with<T>(&self, f: impl FnOnce(&mut Records) -> T) -> T {
        match self.records.lock() {
            Ok(mut r) => f(&mut r),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }
}

impl SessionStore for EmbeddedStore {
    fn apply(&self, from: WorkerId, write: StoreWrite) -> Option<(SessionId, bool)> {
        self.with(|r| r.apply(from, write))
    }

    fn open(
        &self,
        from: WorkerId,
        record: Box<SessionRecord>,
        caps: SessionCaps,
    ) -> Result<Option<SessionId>, SessionCap> {
        self.with(|r| r.open(from, record, caps))
    }

    fn fetch(&self, session: SessionId, asker: WorkerId) -> BoxFuture<'_, Fetched> {
        let answer = self.with(|r| match r.fetch(&session, asker) {
            Some(record) => Fetched::Record(Box::new(record)),
            // Embedded: this memory is the whole store.
            None if r.get(&session).is_none() => Fetched::Absent,
            None => Fetched::Withheld,
        });
        Box::pin(std::future::ready(answer))
    }

    fn reassign(&self, from: WorkerId, to: WorkerId) -> usize {
        self.with(|r| r.reassign(from, to).len())
    }

    fn move_each(
        &self,
        from: WorkerId,
        target: &dyn Fn(&SessionId) -> Option<WorkerId>,
    ) -> Vec<(SessionId, WorkerId)> {
        self.with(|r| r.move_each(from, target))
    }

    fn owners(&self) -> Vec<(SessionId, WorkerId)> {
        self.with(|r| r.owners())
    }

    fn touch(&self, sessions: &[String]) {
        self.with(|r| r.touch(sessions));
    }

    fn sweep(&self, idle: Duration) -> Vec<SessionId> {
        self.with(|r| r.sweep(idle))
    }

    fn len(&self) -> usize {
        self.with(|r| r.len())
    }

    fn heartbeat(&self, _live: &[(WorkerId, u32)], _slots: u16) {}

    fn close(&self, _handover: bool) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }
}

struct Entry {
    record: SessionRecord,
    last_seen: Instant,
}

/// Session records by id, with an index by owner and a count by client.
#[derive(Default)]
pub(crate) struct Records {
    records: HashMap<SessionId, Entry>,
    by_owner: HashMap<WorkerId, HashSet<SessionId>>,
    /// Live records per client key ([`client_key`]); keys whose count drops
    /// to zero are removed, so this is bounded by the records.
    by_client: HashMap<String, u32>,
}

/// Whom a record counts against for the per-client cap: its principal with
/// `[auth]`, else the address it was opened from; `None` when
/// neither is known (nothing to count it against).
fn client_key(record: &SessionRecord) -> Option<&str> {
    [record.principal.as_str(), record.client.as_str()]
        .into_iter()
        .find(|k| !k.is_empty())
}

impl Records {
    fn count_client(&mut self, record: &SessionRecord) {
        if let Some(k) = client_key(record) {
            let n = self.by_client.entry(k.to_owned()).or_default();
            *n = n.saturating_add(1);
        }
    }

    fn uncount_client(&mut self, record: &SessionRecord) {
        if let Some(k) = client_key(record)
            && let Some(n) = self.by_client.get_mut(k)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.by_client.remove(k);
            }
        }
    }

    /// Insert or replace the record of `id`, keeping the client counts.
    fn insert(&mut self, id: SessionId, record: SessionRecord) {
        self.count_client(&record);
        let old = self.records.insert(
            id,
            Entry {
                record,
                last_seen: Instant::now(),
            },
        );
        if let Some(old) = old {
            self.uncount_client(&old.record);
        }
    }

    /// Remove the record of `id`, keeping the client counts (not the owner
    /// index: callers know which set it is in).
    fn take(&mut self, id: &SessionId) -> Option<Entry> {
        let e = self.records.remove(id)?;
        self.uncount_client(&e.record);
        Some(e)
    }

    /// Live sessions opened by `key` (a principal or an address).
    pub(crate) fn sessions_of_client(&self, key: &str) -> u32 {
        self.by_client.get(key).copied().unwrap_or(0)
    }

    /// Admit a new session of worker `from` under `caps` and store its
    /// record, or say which cap refuses it. Never evicts anything: a full
    /// host refuses newcomers, its live sessions stay.
    pub(crate) fn open(
        &mut self,
        from: WorkerId,
        record: Box<SessionRecord>,
        caps: SessionCaps,
    ) -> Result<Option<SessionId>, SessionCap> {
        let too_many = |n: usize, cap: u32| n >= usize::try_from(cap).unwrap_or(usize::MAX);
        if too_many(self.records.len(), caps.total) {
            return Err(SessionCap::Total);
        }
        let on_worker = self.by_owner.get(&from).map_or(0, HashSet::len);
        if too_many(on_worker, caps.per_worker) {
            return Err(SessionCap::Worker);
        }
        // 0: no per-client cap (the default; see `Limits::max_sessions_per_client`).
        if caps.per_client != 0
            && let Some(k) = client_key(&record)
            && too_many(self.sessions_of_client(k) as usize, caps.per_client)
        {
            return Err(SessionCap::Client);
        }
        // `None`: a malformed id or someone else's session, refused and
        // logged by `apply` as any such Put is (the session then cannot fail
        // over); not the client's doing, so not a cap refusal.
        Ok(self.apply(from, StoreWrite::Put(record)).map(|(id, _)| id))
    }

    /// Apply a write from worker `from`. Writes to sessions it does not own
    /// are refused (logged): a stale worker must not undo a reassignment.
    pub(crate) fn apply(&mut self, from: WorkerId, write: StoreWrite) -> Option<(SessionId, bool)> {
        let session = match &write {
            StoreWrite::Put(r) => r.id.as_str(),
            StoreWrite::SetUpstream { session, .. }
            | StoreWrite::ClearUpstream { session, .. }
            | StoreWrite::Remove { session } => session.as_str(),
        };
        let Ok(id) = SessionId::parse(session.as_bytes()) else {
            warn!(worker = %from, "store write for a malformed session id; ignored");
            return None;
        };
        if let StoreWrite::Put(mut record) = write {
            if let Some(existing) = self.records.get(&id)
                && existing.record.owner != from
            {
                warn!(worker = %from, owner = %existing.record.owner, session = %id, "put refused: not the owner");
                return None;
            }
            record.owner = from;
            self.by_owner.entry(from).or_default().insert(id);
            self.insert(id, *record);
            return Some((id, false));
        }
        let Some(entry) = self.records.get_mut(&id) else {
            debug!(session = %id, "store write for an unknown session; ignored");
            return None;
        };
        if entry.record.owner != from {
            warn!(worker = %from, owner = %entry.record.owner, session = %id, "write refused: not the owner");
            return None;
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
                self.take(&id);
                if let Some(set) = self.by_owner.get_mut(&from) {
                    set.remove(&id);
                }
                return Some((id, true));
            }
            StoreWrite::Put(_) => {}
        }
        Some((id, false))
    }

    /// The record of `session`, only for its owner.
    pub(crate) fn fetch(&mut self, id: &SessionId, for_worker: WorkerId) -> Option<SessionRecord> {
        let entry = self.records.get_mut(id)?;
        if entry.record.owner != for_worker {
            debug!(session = %id, owner = %entry.record.owner, asker = %for_worker, "fetch refused: not the owner");
            return None;
        }
        entry.last_seen = Instant::now();
        Some(entry.record.clone())
    }

    /// Compare-and-swap every session owned by `from` to `to`; returns the
    /// sessions that moved.
    pub(crate) fn reassign(&mut self, from: WorkerId, to: WorkerId) -> Vec<SessionId> {
        self.move_each(from, &|_| Some(to))
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }

    /// Compare-and-swap each session owned by `from` to the worker `target`
    /// picks for it (sessions it picks none for stay).
    pub(crate) fn move_each(
        &mut self,
        from: WorkerId,
        target: &dyn Fn(&SessionId) -> Option<WorkerId>,
    ) -> Vec<(SessionId, WorkerId)> {
        let Some(ids) = self.by_owner.remove(&from) else {
            return Vec::new();
        };
        let mut moved = Vec::new();
        let mut stayed = HashSet::new();
        for id in ids {
            let Some(entry) = self.records.get_mut(&id) else {
                continue;
            };
            if entry.record.owner != from {
                continue;
            }
            match target(&id) {
                Some(to) => {
                    entry.record.owner = to;
                    self.by_owner.entry(to).or_default().insert(id);
                    moved.push((id, to));
                }
                None => {
                    stayed.insert(id);
                }
            }
        }
        if !stayed.is_empty() {
            self.by_owner.insert(from, stayed);
        }
        moved
    }

    /// Take in a record claimed from a dead owner elsewhere (Redis), owned
    /// by `owner` from now on.
    pub(crate) fn adopt(
        &mut self,
        mut record: SessionRecord,
        owner: WorkerId,
    ) -> Option<SessionId> {
        let id = SessionId::parse(record.id.as_bytes()).ok()?;
        record.owner = owner;
        if let Some(old) = self.records.get(&id).map(|e| e.record.owner)
            && let Some(set) = self.by_owner.get_mut(&old)
        {
            set.remove(&id);
        }
        self.by_owner.entry(owner).or_default().insert(id);
        self.insert(id, record);
        Some(id)
    }

    /// Drop the record of `id` whoever owns it (another gateway took it).
    pub(crate) fn forget(&mut self, id: &SessionId) {
        if let Some(e) = self.take(id)
            && let Some(set) = self.by_owner.get_mut(&e.record.owner)
        {
            set.remove(id);
        }
    }

    /// The record of `id`, whoever owns it.
    pub(crate) fn get(&self, id: &SessionId) -> Option<&SessionRecord> {
        self.records.get(id).map(|e| &e.record)
    }

    pub(crate) fn owners(&self) -> Vec<(SessionId, WorkerId)> {
        self.records
            .iter()
            .map(|(id, e)| (*id, e.record.owner))
            .collect()
    }

    pub(crate) fn ids(&self) -> Vec<SessionId> {
        self.records.keys().copied().collect()
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

    /// Drop records nobody used for `idle`; returns their ids.
    pub(crate) fn sweep(&mut self, idle: Duration) -> Vec<SessionId> {
        let expired: Vec<SessionId> = self
            .records
            .iter()
            .filter(|(_, e)| e.last_seen.elapsed() > idle)
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            self.forget(id);
        }
        expired
    }

    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }
}

/// A minimal record for unit tests of the store backends.
#[cfg(test)]
pub(crate) fn test_record(id: &SessionId, owner: WorkerId) -> SessionRecord {
    SessionRecord {
        id: id.to_string(),
        owner,
        principal: String::new(),
        client: String::new(),
        endpoint: "/mcp".into(),
        version: "2025-11-25".into(),
        init_params: "{}".into(),
        created_ms: 0,
        upstreams: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcpgw_protocol::store::UpstreamRecord;

    fn w(slot: u16, generation: u64) -> WorkerId {
        WorkerId { slot, generation }
    }

    fn record(id: &SessionId) -> Box<SessionRecord> {
        Box::new(test_record(id, w(9, 9)))
    }

    #[test]
    fn owner_writes_others_are_refused_and_cas_moves_ownership() {
        let mut store = Records::default();
        let id = SessionId::mint_for_slot(0, 1).expect("id");
        let (a, b) = (w(0, 0), w(0, 1));
        store.apply(a, StoreWrite::Put(record(&id)));
        assert_eq!(store.fetch(&id, a).map(|r| r.owner), Some(a));
        assert!(store.fetch(&id, b).is_none());
        let up = UpstreamRecord {
            upstream: "u".into(),
            session_id: Some("s1".into()),
            version: "2025-11-25".into(),
            capabilities: r#"{"tools":{}}"#.into(),
        };
        store.apply(
            b,
            StoreWrite::SetUpstream {
                session: id.to_string(),
                upstream: up.clone(),
            },
        );
        assert!(store.fetch(&id, a).expect("rec").upstreams.is_empty());
        store.apply(
            a,
            StoreWrite::SetUpstream {
                session: id.to_string(),
                upstream: up.clone(),
            },
        );
        assert_eq!(store.fetch(&id, a).expect("rec").upstreams, vec![up]);

        assert_eq!(store.reassign(a, b).len(), 1);
        assert_eq!(
            store.reassign(a, b).len(),
            0,
            "a second CAS from the dead owner moves nothing"
        );
        assert!(store.fetch(&id, a).is_none());
        let moved = store.fetch(&id, b).expect("new owner");
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
    fn caps_count_live_records_per_host_worker_and_client_and_never_evict() {
        let mut store = Records::default();
        let (a, b) = (w(0, 1), w(1, 1));
        let caps = SessionCaps {
            total: 4,
            per_worker: 2,
            per_client: 2,
        };
        let from = |client: &str| {
            let mut r = record(&SessionId::mint_for_slot(0, 1).expect("id"));
            r.client = client.into();
            r
        };
        let first = store
            .open(a, from("10.0.0.1"), caps)
            .expect("admitted")
            .expect("stored");
        store.open(a, from("10.0.0.2"), caps).expect("admitted");
        assert_eq!(
            store.open(a, from("10.0.0.3"), caps),
            Err(SessionCap::Worker)
        );
        store.open(b, from("10.0.0.1"), caps).expect("admitted");
        assert_eq!(
            store.open(b, from("10.0.0.1"), caps),
            Err(SessionCap::Client)
        );
        // A principal, once there is one, counts instead of the address.
        let mut by_principal = from("10.0.0.1");
        by_principal.principal = "alice".into();
        store.open(b, by_principal, caps).expect("admitted");
        assert_eq!(
            store.open(b, from("10.0.0.9"), caps),
            Err(SessionCap::Total)
        );
        assert_eq!(store.len(), 4, "nothing was evicted");
        assert_eq!(store.sessions_of_client("10.0.0.1"), 2);

        // An ended session frees its places.
        store.apply(
            a,
            StoreWrite::Remove {
                session: first.to_string(),
            },
        );
        assert_eq!(store.sessions_of_client("10.0.0.1"), 1);
        store
            .open(a, from("10.0.0.1"), caps)
            .expect("admitted again");
        // Swept ones too.
        store.sweep(Duration::ZERO);
        assert_eq!(store.len(), 0);
        assert_eq!(store.sessions_of_client("10.0.0.1"), 0);
        assert!(store.by_client.is_empty());
    }

    #[test]
    fn malformed_ids_never_become_keys_and_idle_records_are_swept() {
        let mut store = Records::default();
        let mut bad = record(&SessionId::mint_for_slot(0, 1).expect("id"));
        bad.id = "../../etc".into();
        store.apply(w(0, 0), StoreWrite::Put(bad));
        assert_eq!(store.len(), 0);
        let id = SessionId::mint_for_slot(0, 1).expect("id");
        store.apply(w(0, 0), StoreWrite::Put(record(&id)));
        assert!(store.sweep(Duration::from_secs(60)).is_empty());
        assert_eq!(store.sweep(Duration::ZERO), vec![id]);
    }
}
