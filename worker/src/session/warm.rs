//! Upstream sessions opened ahead of need for stateless clients: the
//! `initialize` round trip of a stateless request's own upstream session
//! is taken off the request's path.
//!
//! A pooled session is made for one kind of client: it was opened with a
//! client's capabilities and info (a server may offer a client what that
//! client can use, so a session opened for one kind is no good for
//! another), and the pool is keyed by them. A session leaves the pool for
//! exactly one request and is closed after it, never returned: a stateless
//! request never sees state another request left upstream (#4205). Each
//! take asks for a replacement in the background, so a steady stream of
//! requests of one kind finds its sessions ready.
//!
//! Adaptive: a kind starts with one session kept ahead and doubles that
//! each time a request finds none ready (its requests come faster than
//! one background `initialize`), up to `depth`. A client seen once costs
//! the upstream one idle session, not `depth` of them; a busy kind gets
//! the depth that keeps its requests off the `initialize` path.
//!
//! Bounded: `depth` sessions per (upstream, kind), at most [`MAX_KINDS`]
//! kinds per upstream (the least recently used kind is dropped and its
//! sessions closed), kinds whose description is over [`MAX_KEY_BYTES`]
//! are never pooled, and a session idle past the probe age is closed
//! rather than handed out (the upstream may have forgotten it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::upstream::{UpstreamServer, UpstreamSession};

/// Kinds of client kept per upstream.
pub(crate) const MAX_KINDS: usize = 64;
/// The longest client description (initialize params) pooled.
pub(crate) const MAX_KEY_BYTES: usize = 4096;

/// One kind of client on one upstream: its ready sessions and how many
/// are being opened for it.
#[derive(Default)]
struct Kind {
    ready: Vec<Arc<UpstreamSession>>,
    opening: usize,
    /// Sessions kept ahead for this kind: 1 at first, doubled on a miss,
    /// at most the pool's depth.
    ahead: usize,
    /// For the least-recently-used choice.
    last_used: u64,
}

#[derive(Default)]
struct State {
    kinds: HashMap<(Arc<str>, Box<str>), Kind>,
    clock: u64,
    /// Drained for good (the worker stops): nothing is pooled any more.
    closed: bool,
}

pub(crate) struct WarmPool {
    depth: usize,
    max_idle: Duration,
    state: Mutex<State>,
}

/// What [`WarmPool::take`] found.
pub(crate) struct Taken {
    /// A ready session, if there was one.
    pub(crate) session: Option<Arc<UpstreamSession>>,
    /// How many sessions to open now for this kind (the caller opens them
    /// in the background and [`WarmPool::put`]s them).
    pub(crate) refill: usize,
    /// Sessions that must be closed: stale, of an older server (reload), or
    /// of a kind dropped to make room.
    pub(crate) discard: Vec<Arc<UpstreamSession>>,
}

impl WarmPool {
    pub(crate) fn new(depth: usize, max_idle: Duration) -> Self {
        Self {
            depth,
            max_idle,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn poolable(&self, init_params: &str) -> bool {
        self.depth > 0 && init_params.len() <= MAX_KEY_BYTES
    }

    /// A ready session of `server` for this kind of client, and how many to
    /// open to keep the kind's sessions at depth.
    pub(crate) fn take(&self, server: &Arc<UpstreamServer>, init_params: &str) -> Taken {
        let mut taken = Taken {
            session: None,
            refill: 0,
            discard: Vec::new(),
        };
        if !self.poolable(init_params) {
            return taken;
        }
        let mut st = self.state();
        if st.closed {
            return taken;
        }
        st.clock += 1;
        let now = st.clock;
        let key = (server.id.clone(), Box::<str>::from(init_params));
        if !st.kinds.contains_key(&key) {
            let kinds_here = st.kinds.keys().filter(|(id, _)| *id == server.id).count();
            if kinds_here >= MAX_KINDS
                && let Some(oldest) = st
                    .kinds
                    .iter()
                    .filter(|((id, _), _)| *id == server.id)
                    .min_by_key(|(_, k)| k.last_used)
                    .map(|(k, _)| k.clone())
                && let Some(dropped) = st.kinds.remove(&oldest)
            {
                taken.discard.extend(dropped.ready);
            }
        }
        let kind = st.kinds.entry(key).or_default();
        let seen_before = kind.ahead > 0;
        kind.last_used = now;
        while let Some(us) = kind.ready.pop() {
            if Arc::ptr_eq(&us.server, server) && us.idle_for() < self.max_idle {
                taken.session = Some(us);
                break;
            }
            taken.discard.push(us);
        }
        kind.ahead = match (seen_before, &taken.session) {
            (false, _) => 1,
            (true, None) => (kind.ahead * 2).min(self.depth),
            (true, Some(_)) => kind.ahead,
        };
        let wanted = kind.ahead.saturating_sub(kind.ready.len() + kind.opening);
        kind.opening += wanted;
        taken.refill = wanted;
        taken
    }

    /// A session opened for this kind (`None`: opening failed). Returns it
    /// when the pool has no room for it any more (the caller closes it).
    pub(crate) fn put(
        &self,
        server: &Arc<UpstreamServer>,
        init_params: &str,
        opened: Option<Arc<UpstreamSession>>,
    ) -> Option<Arc<UpstreamSession>> {
        let mut st = self.state();
        let key = (server.id.clone(), Box::<str>::from(init_params));
        let Some(kind) = st.kinds.get_mut(&key) else {
            // The kind was dropped meanwhile.
            return opened;
        };
        kind.opening = kind.opening.saturating_sub(1);
        let us = opened?;
        if kind.ready.len() >= kind.ahead || !Arc::ptr_eq(&us.server, server) {
            return Some(us);
        }
        kind.ready.push(us);
        None
    }

    /// Every pooled session, for good (the worker stops): sessions opened
    /// after this are not pooled but handed back by [`WarmPool::put`].
    pub(crate) fn drain(&self) -> Vec<Arc<UpstreamSession>> {
        let mut st = self.state();
        st.closed = true;
        st.kinds.drain().flat_map(|(_, k)| k.ready).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::fake::fake_upstream;
    use mcpgw_protocol::config::Upstream;

    const KIND_A: &str = r#"{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"a","version":"1"}}"#;
    const KIND_B: &str = r#"{"protocolVersion":"2025-11-25","capabilities":{"elicitation":{}},"clientInfo":{"name":"b","version":"1"}}"#;

    fn server(url: &str) -> Arc<UpstreamServer> {
        Arc::new(UpstreamServer::new(&Upstream::http("up", url), None).expect("server"))
    }

    #[allow(clippy::await_holding_lock)] // a shared guard, see `answer_budget::TESTS`
    async fn open(server: &Arc<UpstreamServer>, kind: &str) -> Arc<UpstreamSession> {
        let _budget = crate::upstream::answer_budget::shared_for_tests();
        UpstreamSession::initialize(server.clone(), kind)
            .await
            .expect("initialize")
    }

    #[tokio::test]
    async fn a_kind_is_kept_at_depth_and_each_session_goes_out_once() {
        let up = fake_upstream("up").await;
        let server = server(&up.url);
        let pool = WarmPool::new(2, Duration::from_secs(60));

        // A new kind: nothing to hand out, one to open ahead.
        let first = pool.take(&server, KIND_A);
        assert!(first.session.is_none());
        assert_eq!(first.refill, 1);
        // A miss while it is being opened: the kind wants two ahead now.
        assert_eq!(pool.take(&server, KIND_A).refill, 1);
        // And never more than the pool's depth.
        assert_eq!(pool.take(&server, KIND_A).refill, 0);
        for _ in 0..2 {
            let us = open(&server, KIND_A).await;
            assert!(pool.put(&server, KIND_A, Some(us)).is_none());
        }
        let a = pool.take(&server, KIND_A);
        assert_eq!(a.refill, 1, "each take asks for its replacement");
        let a = a.session.expect("a ready session");
        let b = pool.take(&server, KIND_A).session.expect("another one");
        assert!(!Arc::ptr_eq(&a, &b), "a session goes out once");
        // Another kind of client never gets them.
        assert!(pool.take(&server, KIND_B).session.is_none());
        assert_eq!(pool.drain().len(), 0);
    }

    #[tokio::test]
    async fn a_kind_seen_once_keeps_one_session_ahead() {
        let up = fake_upstream("up").await;
        let server = server(&up.url);
        let pool = WarmPool::new(8, Duration::from_secs(60));
        assert_eq!(pool.take(&server, KIND_A).refill, 1);
        assert!(
            pool.put(&server, KIND_A, Some(open(&server, KIND_A).await))
                .is_none()
        );
        // Found ready: the kind keeps one ahead, and a second one offered
        // for it finds no room.
        let taken = pool.take(&server, KIND_A);
        assert!(taken.session.is_some());
        assert_eq!(taken.refill, 1);
        assert!(
            pool.put(&server, KIND_A, Some(open(&server, KIND_A).await))
                .is_none()
        );
        let extra = open(&server, KIND_A).await;
        assert!(pool.put(&server, KIND_A, Some(extra)).is_some(), "no room");
    }

    #[tokio::test]
    async fn stale_sessions_and_old_servers_are_discarded_not_handed_out() {
        let up = fake_upstream("up").await;
        let old = server(&up.url);
        let pool = WarmPool::new(1, Duration::from_secs(60));
        assert_eq!(pool.take(&old, KIND_A).refill, 1);
        assert!(
            pool.put(&old, KIND_A, Some(open(&old, KIND_A).await))
                .is_none()
        );
        // A reload made a new server for the same id: the old one's session goes.
        let new = server(&up.url);
        let taken = pool.take(&new, KIND_A);
        assert!(taken.session.is_none());
        assert_eq!(taken.discard.len(), 1);

        let strict = WarmPool::new(1, Duration::ZERO);
        assert_eq!(strict.take(&new, KIND_A).refill, 1);
        assert!(
            strict
                .put(&new, KIND_A, Some(open(&new, KIND_A).await))
                .is_none()
        );
        let taken = strict.take(&new, KIND_A);
        assert!(taken.session.is_none(), "idle past the probe age");
        assert_eq!(taken.discard.len(), 1);
    }

    #[tokio::test]
    async fn a_full_pool_and_a_drained_one_hand_sessions_back() {
        let up = fake_upstream("up").await;
        let server = server(&up.url);
        let pool = WarmPool::new(1, Duration::from_secs(60));
        assert_eq!(pool.take(&server, KIND_A).refill, 1);
        assert!(
            pool.put(&server, KIND_A, Some(open(&server, KIND_A).await))
                .is_none()
        );
        let extra = open(&server, KIND_A).await;
        assert!(pool.put(&server, KIND_A, Some(extra)).is_some(), "no room");
        assert_eq!(pool.drain().len(), 1);
        assert!(pool.take(&server, KIND_A).refill == 0, "drained for good");
        let late = open(&server, KIND_A).await;
        assert!(pool.put(&server, KIND_A, Some(late)).is_some());
        // Too long a description is never pooled; depth 0 pools nothing.
        let long = "x".repeat(MAX_KEY_BYTES + 1);
        assert_eq!(
            WarmPool::new(2, Duration::from_secs(60))
                .take(&server, &long)
                .refill,
            0
        );
        assert_eq!(
            WarmPool::new(0, Duration::from_secs(60))
                .take(&server, KIND_A)
                .refill,
            0
        );
    }

    #[tokio::test]
    async fn past_max_kinds_the_least_recently_used_kind_goes() {
        let up = fake_upstream("up").await;
        let server = server(&up.url);
        let pool = WarmPool::new(1, Duration::from_secs(60));
        let kind = |i: usize| format!(r#"{{"clientInfo":{{"name":"c{i}"}}}}"#);
        assert_eq!(pool.take(&server, &kind(0)).refill, 1);
        assert!(
            pool.put(&server, &kind(0), Some(open(&server, KIND_A).await))
                .is_none()
        );
        for i in 1..MAX_KINDS {
            pool.take(&server, &kind(i));
        }
        // Kind 0 is the oldest: the next new kind pushes it (and its session) out.
        let taken = pool.take(&server, &kind(MAX_KINDS));
        assert_eq!(taken.discard.len(), 1);
        assert_eq!(
            pool.take(&server, &kind(0)).refill,
            1,
            "kind 0 starts afresh"
        );
    }
}
