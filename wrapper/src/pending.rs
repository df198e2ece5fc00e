//! The client's requests that still await an answer, and the rule that each gets
//! exactly one.
//!
//! A request is registered when it is read from stdin. Whoever answers it first (its
//! own POST answer, the server's GET stream, a timeout, a lost session, shutdown) must
//! [`Pending::take`] it, and only the taker writes an answer; a late answer for an id
//! no longer pending is dropped. Each entry remembers the session generation it was
//! sent on, so a lost session fails exactly the requests that were sent on it.
//! Waiters learn about removals through a version counter ([`Pending::changed`]).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use serde_json::Value;
use tokio::sync::watch;

use crate::jsonrpc::IdKey;

/// One request awaiting its answer.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) id: Value,
    pub(crate) method: String,
    pub(crate) generation: u64,
    /// `false` for the wrapper's own requests (a replayed `initialize`): their answers
    /// and errors are not written to the client.
    pub(crate) to_client: bool,
}

/// The requests in flight.
#[derive(Debug)]
pub(crate) struct Pending {
    entries: Mutex<HashMap<IdKey, Entry>>,
    removed: watch::Sender<u64>,
}

impl Default for Pending {
    fn default() -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            removed: watch::channel(0).0,
        }
    }
}

impl Pending {
    fn lock(&self) -> MutexGuard<'_, HashMap<IdKey, Entry>> {
        // Every critical section is one map operation, so a poisoned map is consistent.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a request; `false` if a request with this id is already in flight (the
    /// earlier entry is kept, and the first answer will serve both).
    pub(crate) fn register(&self, key: IdKey, entry: Entry) -> bool {
        let mut entries = self.lock();
        if entries.contains_key(&key) {
            return false;
        }
        entries.insert(key, entry);
        true
    }

    /// Removes a request; `Some` means the caller now owns answering it.
    pub(crate) fn take(&self, key: &IdKey) -> Option<Entry> {
        let taken = self.lock().remove(key);
        if taken.is_some() {
            self.removed.send_modify(|n| *n += 1);
        }
        taken
    }

    /// Records the generation a request is actually sent on; `false` if it is no longer
    /// pending (answered meanwhile), in which case it must not be sent.
    pub(crate) fn set_generation(&self, key: &IdKey, generation: u64) -> bool {
        match self.lock().get_mut(key) {
            Some(entry) => {
                entry.generation = generation;
                true
            }
            None => false,
        }
    }

    pub(crate) fn contains(&self, key: &IdKey) -> bool {
        self.lock().contains_key(key)
    }

    /// Removes every request sent on session `generation`.
    pub(crate) fn take_generation(&self, generation: u64) -> Vec<Entry> {
        let taken: Vec<Entry> = {
            let mut entries = self.lock();
            let keys: Vec<IdKey> = entries
                .iter()
                .filter(|(_, e)| e.generation == generation)
                .map(|(k, _)| k.clone())
                .collect();
            keys.iter().filter_map(|k| entries.remove(k)).collect()
        };
        if !taken.is_empty() {
            self.removed.send_modify(|n| *n += 1);
        }
        taken
    }

    /// Removes every request.
    pub(crate) fn take_all(&self) -> Vec<Entry> {
        let taken: Vec<Entry> = self.lock().drain().map(|(_, e)| e).collect();
        if !taken.is_empty() {
            self.removed.send_modify(|n| *n += 1);
        }
        taken
    }

    /// A receiver that sees a change whenever an entry is removed.
    pub(crate) fn changed(&self) -> watch::Receiver<u64> {
        self.removed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(id: i64, generation: u64) -> (IdKey, Entry) {
        let id = json!(id);
        (
            IdKey::of(&id),
            Entry {
                id,
                method: "ping".into(),
                generation,
                to_client: true,
            },
        )
    }

    #[test]
    fn each_request_is_taken_once() {
        let p = Pending::default();
        let (k, e) = entry(1, 1);
        assert!(p.register(k.clone(), e.clone()));
        assert!(!p.register(k.clone(), e));
        assert!(p.take(&k).is_some());
        assert!(p.take(&k).is_none());
        assert!(!p.contains(&k));
    }

    #[test]
    fn take_generation_leaves_other_generations() {
        let p = Pending::default();
        for (id, generation) in [(1, 1), (2, 1), (3, 2)] {
            let (k, e) = entry(id, generation);
            p.register(k, e);
        }
        let mut gone: Vec<_> = p.take_generation(1).into_iter().map(|e| e.id).collect();
        gone.sort_by_key(|v| v.as_i64());
        assert_eq!(gone, [json!(1), json!(2)]);
        assert!(p.contains(&IdKey::of(&json!(3))));
        assert!(p.set_generation(&IdKey::of(&json!(3)), 1));
        assert!(!p.set_generation(&IdKey::of(&json!(1)), 2), "already taken");
        assert_eq!(p.take_generation(1).len(), 1);
        assert!(p.take_all().is_empty());
    }

    #[tokio::test]
    async fn removals_wake_waiters() {
        let p = Pending::default();
        let (k, e) = entry(1, 1);
        p.register(k.clone(), e);
        let mut rx = p.changed();
        rx.borrow_and_update();
        p.take(&k);
        assert!(rx.has_changed().expect("sender alive"));
    }
}
