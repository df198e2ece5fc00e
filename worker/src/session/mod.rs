//! The downstream sessions this worker owns.
//!
//! A [`Session`] is created by `initialize` on this worker (its id hashes to
//! this worker's slot) and lives until DELETE, idle expiry or shutdown. It
//! holds what later requests need: the endpoint it was opened on, the
//! negotiated version, the client's initialize parameters (replayed to each
//! upstream), its upstream sessions ([`crate::session::registry`]) and its relay
//! state ([`crate::relay`]).

pub(crate) mod parked;
pub(crate) mod registry;
pub(crate) mod store;
pub(crate) mod upstreams;
pub(crate) mod warm;

use foldhash::{HashMap, HashMapExt};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use mcpgw_protocol::session_id::SessionId;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::endpoints::Endpoint;
use crate::relay::Relay;
use crate::session::upstreams::SessionUpstreams;

pub(crate) struct Session {
    pub id: SessionId,
    /// Replaced when a reload rebuilds the endpoint; read it once per request.
    endpoint: Mutex<Arc<Endpoint>>,
    /// Negotiated protocol version; one of [`crate::versions::SUPPORTED`].
    pub version: &'static str,
    /// The client's `initialize` params with the negotiated version, raw.
    pub init_params: Box<str>,
    /// Who opened it (`<iss> <sub>`, [`crate::auth::Principal::id`]); empty
    /// without `[auth]`. Only the same principal may use the session.
    pub principal: Box<str>,
    pub upstreams: SessionUpstreams,
    /// Server→client requests, progress tokens, in-flight calls.
    pub relay: Arc<Relay>,
    last_used: Mutex<Instant>,
    /// Flips to true when the session ends; its open streams close on it.
    closed: watch::Sender<bool>,
}

impl Session {
    pub(crate) fn new(
        id: SessionId,
        endpoint: Arc<Endpoint>,
        version: &'static str,
        init_params: Box<str>,
        principal: Box<str>,
    ) -> Self {
        Self {
            id,
            principal,
            endpoint: Mutex::new(endpoint),
            version,
            relay: Arc::new(Relay::new(&init_params)),
            init_params,
            upstreams: SessionUpstreams::default(),
            last_used: Mutex::new(Instant::now()),
            closed: watch::Sender::new(false),
        }
    }

    /// The endpoint this session serves, as of now.
    pub(crate) fn endpoint(&self) -> Arc<Endpoint> {
        match self.endpoint.lock() {
            Ok(e) => e.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub(crate) fn set_endpoint(&self, endpoint: Arc<Endpoint>) {
        match self.endpoint.lock() {
            Ok(mut e) => *e = endpoint,
            Err(poisoned) => *poisoned.into_inner() = endpoint,
        }
    }

    pub(crate) fn touch(&self) {
        if let Ok(mut t) = self.last_used.lock() {
            *t = Instant::now();
        }
    }

    fn idle_for(&self, now: Instant) -> Duration {
        self.last_used
            .lock()
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(*t))
    }

    pub(crate) fn close_signal(&self) -> watch::Receiver<bool> {
        self.closed.subscribe()
    }

    pub(crate) fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    fn mark_closed(&self) {
        // Before the signal: whatever ends on it finds the relay closing.
        self.relay.begin_close();
        self.closed.send_replace(true);
    }
}

/// All sessions this worker owns; keeps the sessions gauge in step.
pub(crate) struct Sessions {
    map: Mutex<HashMap<SessionId, Arc<Session>>>,
    gauge: prometheus::IntGauge,
}

impl Sessions {
    pub(crate) fn new(gauge: prometheus::IntGauge) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            gauge,
        }
    }

    fn sync_gauge(&self, m: &HashMap<SessionId, Arc<Session>>) {
        self.gauge.set(m.len() as i64);
    }

    /// The table, also after a panic elsewhere poisoned its lock: every
    /// change to it is a single map operation, so it is never left half
    /// made, and refusing it would lose sessions (a client handed an id
    /// that was never stored).
    fn table(&self) -> MutexGuard<'_, HashMap<SessionId, Arc<Session>>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn insert(&self, s: Arc<Session>) {
        let mut m = self.table();
        m.insert(s.id, s);
        self.sync_gauge(&m);
    }

    /// Insert unless a session with this id is already there; returns the
    /// one in the table (two requests may resume the same session at once).
    pub(crate) fn insert_if_absent(&self, s: Arc<Session>) -> (Arc<Session>, bool) {
        let mut m = self.table();
        if let Some(existing) = m.get(&s.id) {
            return (existing.clone(), false);
        }
        m.insert(s.id, s.clone());
        self.sync_gauge(&m);
        (s, true)
    }

    /// Ids of sessions used within `window` (reported with heartbeats so the
    /// store keeps their records).
    pub(crate) fn used_within(&self, window: Duration) -> Vec<String> {
        let now = Instant::now();
        self.map
            .lock()
            .map(|m| {
                m.values()
                    .filter(|s| s.idle_for(now) <= window)
                    .map(|s| s.id.to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(crate) fn get(&self, id: &SessionId) -> Option<Arc<Session>> {
        self.map.lock().ok()?.get(id).cloned()
    }

    /// Remove a session and mark it closed; the caller closes its upstreams.
    pub(crate) fn remove(&self, id: &SessionId) -> Option<Arc<Session>> {
        let mut m = self.map.lock().ok()?;
        let s = m.remove(id)?;
        self.sync_gauge(&m);
        s.mark_closed();
        Some(s)
    }

    /// Remove and return every session idle longer than `ttl`.
    pub(crate) fn take_expired(&self, ttl: Duration) -> Vec<Arc<Session>> {
        let now = Instant::now();
        let Ok(mut m) = self.map.lock() else {
            return Vec::new();
        };
        let expired: Vec<SessionId> = m
            .values()
            .filter(|s| s.idle_for(now) > ttl)
            .map(|s| s.id)
            .collect();
        let out: Vec<Arc<Session>> = expired
            .iter()
            .filter_map(|id| m.remove(id))
            .inspect(|s| s.mark_closed())
            .collect();
        self.sync_gauge(&m);
        out
    }

    /// Remove every session (shutdown).
    pub(crate) fn take_all(&self) -> Vec<Arc<Session>> {
        let Ok(mut m) = self.map.lock() else {
            return Vec::new();
        };
        let out = m
            .drain()
            .map(|(_, s)| s)
            .inspect(|s| s.mark_closed())
            .collect();
        self.sync_gauge(&m);
        out
    }

    pub(crate) fn all(&self) -> Vec<Arc<Session>> {
        self.map
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Arc<Session> {
        let endpoint = Arc::new(Endpoint {
            path: "/mcp".into(),
            upstreams: Box::new([]),
            separator: "__".into(),
            authz: None,
            limiter: None,
        });
        let id = SessionId::mint_for_slot(0, 1).expect("random");
        Arc::new(Session::new(
            id,
            endpoint,
            "2025-06-18",
            "{}".into(),
            "".into(),
        ))
    }

    #[test]
    fn a_poisoned_table_still_stores_what_it_is_given() {
        let sessions = Arc::new(Sessions::new(
            prometheus::IntGauge::new("s", "s").expect("gauge"),
        ));
        let poisoner = sessions.clone();
        let _ = std::thread::spawn(move || {
            let _held = poisoner.map.lock();
            panic!("poison the session table");
        })
        .join();
        assert!(sessions.map.is_poisoned());
        let a = session();
        sessions.insert(a.clone());
        let b = session();
        let (kept, inserted) = sessions.insert_if_absent(b.clone());
        assert!(inserted && Arc::ptr_eq(&kept, &b));
        assert!(Arc::ptr_eq(&sessions.table()[&a.id], &a));
        assert_eq!(sessions.table().len(), 2);
    }
}
