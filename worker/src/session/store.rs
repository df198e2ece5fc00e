//! This worker's side of the session store: writing down what another
//! worker would need to resume a session, admitting new sessions under the
//! host's caps, and fetching a record when this worker inherits a session
//! whose owner died. It also owns the short negative cache of session ids
//! the store does not know.
//!
//! Writes go over the control channel in order and are awaited before the
//! client is answered, so a record is in the supervisor's socket buffer even
//! if this process dies right after. Fetches and admissions are
//! request/answer with a deadline; the control reader delivers answers
//! ([`StoreClient::deliver_record`], [`StoreClient::deliver_opened`]).
//!
//! The negative cache: a well-formed but unknown session id would otherwise
//! cost a round trip to the supervisor (and with Redis one `HMGET`) on every
//! request. Only the store's "no record at all" answer ([`Fetched::Absent`])
//! is remembered, never "someone else's" or "could not ask", and only for
//! [`NEGATIVE_TTL`], at most [`NEGATIVE_CAP`] ids (oldest dropped first).
//! Whatever may hand this worker a session it did not own (routes changing,
//! a reload, a record arriving) empties it ([`StoreClient::forget_absent`]),
//! so a live session is never answered 404 from a stale entry.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mcpgw_protocol::channel::Sender;
use mcpgw_protocol::control::FromWorker;
use mcpgw_protocol::session_id::SessionId;
use mcpgw_protocol::store::{Fetched, SessionCap, SessionCaps, SessionRecord, StoreWrite};
use tokio::sync::{Mutex, oneshot};
use tokio::time::Instant;
use tracing::warn;

/// Someone waiting for the supervisor's answer to a request.
enum Waiter {
    Fetch(oneshot::Sender<Fetched>),
    Open(oneshot::Sender<Option<SessionCap>>),
}

pub(crate) struct StoreClient {
    control: Arc<Mutex<Sender<FromWorker>>>,
    pending: std::sync::Mutex<HashMap<u64, Waiter>>,
    next: AtomicU64,
    absent: std::sync::Mutex<Absent>,
}

const FETCH_DEADLINE: Duration = Duration::from_secs(2);
/// How long "the store has no such session" is believed without asking.
pub(crate) const NEGATIVE_TTL: Duration = Duration::from_secs(1);
/// Unknown ids remembered at once; beyond it the oldest are forgotten.
const NEGATIVE_CAP: usize = 4096;

/// A fetch as this worker answered it.
pub(crate) enum Lookup {
    /// The negative cache said the store has no such session; not asked.
    CachedAbsent,
    Asked(Fetched),
}

/// Why a new session could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpenRefused {
    Cap(SessionCap),
    /// The supervisor did not answer in time (or the channel broke).
    NoAnswer,
}

/// Ids the store said it has no record of, oldest first. Every entry has
/// the same lifetime, so the oldest is also the first to expire.
#[derive(Default)]
struct Absent {
    order: VecDeque<(SessionId, Instant)>,
    ids: HashSet<SessionId>,
    /// Bumped by every [`StoreClient::forget_absent`]: an answer asked for
    /// before it is not remembered after it.
    epoch: u64,
}

impl Absent {
    fn expire(&mut self, now: Instant) {
        while let Some((id, at)) = self.order.front() {
            if now.saturating_duration_since(*at) < NEGATIVE_TTL {
                break;
            }
            self.ids.remove(id);
            self.order.pop_front();
        }
    }

    fn contains(&mut self, id: &SessionId, now: Instant) -> bool {
        self.expire(now);
        self.ids.contains(id)
    }

    fn remember(&mut self, id: SessionId, now: Instant) {
        self.expire(now);
        if self.ids.contains(&id) {
            return;
        }
        while self.order.len() >= NEGATIVE_CAP {
            match self.order.pop_front() {
                Some((old, _)) => {
                    self.ids.remove(&old);
                }
                None => break,
            }
        }
        self.order.push_back((id, now));
        self.ids.insert(id);
    }

    fn clear(&mut self) {
        self.order.clear();
        self.ids.clear();
        self.epoch = self.epoch.wrapping_add(1);
    }
}

impl StoreClient {
    pub(crate) fn new(control: Arc<Mutex<Sender<FromWorker>>>) -> Self {
        Self {
            control,
            pending: std::sync::Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            absent: std::sync::Mutex::new(Absent::default()),
        }
    }

    pub(crate) async fn write(&self, write: StoreWrite) {
        if let Err(e) = self
            .control
            .lock()
            .await
            .send(&FromWorker::Store(write))
            .await
        {
            warn!(error = %e, "writing a session record failed; the session cannot fail over");
        }
    }

    fn with_absent<T>(&self, f: impl FnOnce(&mut Absent) -> T) -> T {
        match self.absent.lock() {
            Ok(mut a) => f(&mut a),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// Ownership may have changed: nothing the store said was absent is
    /// believed any more.
    pub(crate) fn forget_absent(&self) {
        self.with_absent(Absent::clear);
    }

    /// Send `msg` (built with a fresh request id) and wait for the answer
    /// delivered under that id, within [`FETCH_DEADLINE`].
    async fn ask<T>(
        &self,
        waiter: impl FnOnce(oneshot::Sender<T>) -> Waiter,
        msg: impl FnOnce(u64) -> FromWorker,
        what: &str,
    ) -> Option<T> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().ok()?.insert(id, waiter(tx));
        let sent = self.control.lock().await.send(&msg(id)).await;
        let answer = match sent {
            Ok(()) => tokio::time::timeout(FETCH_DEADLINE, rx)
                .await
                .ok()
                .and_then(Result::ok),
            Err(e) => {
                warn!(error = %e, what, "asking the supervisor failed");
                None
            }
        };
        if let Ok(mut p) = self.pending.lock() {
            p.remove(&id);
        }
        answer
    }

    /// The record of `session`, if the store holds one owned by this worker
    /// (or could claim it for this worker).
    pub(crate) async fn fetch(&self, session: &SessionId) -> Lookup {
        let epoch = self.with_absent(|a| (!a.contains(session, Instant::now())).then_some(a.epoch));
        let Some(epoch) = epoch else {
            return Lookup::CachedAbsent;
        };
        let answer = self
            .ask(
                Waiter::Fetch,
                |id| FromWorker::StoreFetch {
                    id,
                    session: session.to_string(),
                },
                "store fetch",
            )
            .await
            .unwrap_or(Fetched::Withheld);
        if answer == Fetched::Absent {
            self.with_absent(|a| {
                if a.epoch == epoch {
                    a.remember(*session, Instant::now());
                }
            });
        }
        Lookup::Asked(answer)
    }

    /// Admit a new session under `caps` and store its record (one step in
    /// the supervisor).
    pub(crate) async fn open(
        &self,
        record: SessionRecord,
        caps: SessionCaps,
    ) -> Result<(), OpenRefused> {
        let record = Box::new(record);
        match self
            .ask(
                Waiter::Open,
                |id| FromWorker::Open { id, caps, record },
                "session admission",
            )
            .await
        {
            Some(None) => Ok(()),
            Some(Some(cap)) => Err(OpenRefused::Cap(cap)),
            None => Err(OpenRefused::NoAnswer),
        }
    }

    fn take_waiter(&self, id: u64) -> Option<Waiter> {
        self.pending.lock().ok().and_then(|mut p| p.remove(&id))
    }

    pub(crate) fn deliver_record(&self, id: u64, answer: Fetched) {
        if matches!(answer, Fetched::Record(_)) {
            // A record arriving means sessions move; see the module doc.
            self.forget_absent();
        }
        if let Some(Waiter::Fetch(tx)) = self.take_waiter(id) {
            let _ = tx.send(answer);
        }
    }

    pub(crate) fn deliver_opened(&self, id: u64, refused: Option<SessionCap>) {
        if let Some(Waiter::Open(tx)) = self.take_waiter(id) {
            let _ = tx.send(refused);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> SessionId {
        SessionId::mint_for_slot(0, 1).expect("id")
    }

    #[test]
    fn absent_ids_expire_are_bounded_and_cleared() {
        let mut a = Absent::default();
        let now = Instant::now();
        let first = id();
        a.remember(first, now);
        assert!(a.contains(&first, now));
        assert!(!a.contains(&first, now + NEGATIVE_TTL), "expired");

        a.remember(first, now);
        for _ in 0..NEGATIVE_CAP {
            a.remember(id(), now);
        }
        assert_eq!(a.order.len(), NEGATIVE_CAP);
        assert_eq!(a.ids.len(), NEGATIVE_CAP);
        assert!(!a.contains(&first, now), "the oldest went first");

        let last = id();
        a.remember(last, now);
        let epoch = a.epoch;
        a.clear();
        assert!(!a.contains(&last, now));
        assert_ne!(a.epoch, epoch);
    }
}
