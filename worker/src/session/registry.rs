//! The upstream registry: for every (downstream session, upstream server)
//! pair exactly one upstream MCP session, never shared, reused for every call
//! of its session, closed when the session ends.
//!
//! Each downstream session has one cell per upstream server it has used,
//! keyed by upstream id ([`crate::session::upstreams::SessionUpstreams`]), so a reload that changes an
//! endpoint's upstream list keeps the cells of the upstreams that stay. A
//! cell's async lock is held only while the upstream
//! session is created or probed, so concurrent first calls create exactly
//! one, and calls on an existing one run concurrently. Reuse after an idle
//! period is checked with a probe; a transport failure evicts (only the
//! session that failed, never a newer one). Closing runs concurrently and is
//! bounded: a close that hangs is abandoned with a warning.
//!
//! Work done after a stateless request's answer (closing its upstream
//! sessions, refilling the warm pool) runs in tracked background tasks, so
//! a stopping worker waits for it ([`Registry::close_warm`]) instead of
//! exiting with an upstream session opened and never closed.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::bounded::join_all_within;
use crate::metrics::Metrics;
use crate::session::Session;
use crate::session::store::StoreClient;
use crate::session::warm::WarmPool;
use crate::upstream::{UpstreamError, UpstreamServer, UpstreamSession, modern};
use mcpgw_protocol::store::StoreWrite;

pub(crate) struct Registry {
    probe_after: Duration,
    probe_timeout: Duration,
    close_grace: Duration,
    metrics: Arc<Metrics>,
    store: Arc<StoreClient>,
    /// Upstream sessions opened ahead for stateless clients.
    warm: WarmPool,
    /// Closes and warm-pool refills still running in the background.
    background: TaskTracker,
}

impl Registry {
    pub(crate) fn new(
        probe_after: Duration,
        close_grace: Duration,
        warm_depth: usize,
        metrics: Arc<Metrics>,
        store: Arc<StoreClient>,
    ) -> Self {
        Self {
            probe_after,
            probe_timeout: Duration::from_secs(2),
            close_grace,
            metrics,
            store,
            warm: WarmPool::new(warm_depth, probe_after),
            background: TaskTracker::new(),
        }
    }

    /// Put upstream sessions taken over from a dead worker into the cells of
    /// a resumed session (see [`UpstreamSession::attach`]).
    pub(crate) async fn adopt(&self, session: &Session, attached: Vec<Arc<UpstreamSession>>) {
        for us in attached {
            let cell = session.upstreams.cell(&us.server.id);
            let mut cell = cell.lock().await;
            if cell.is_none() {
                self.live(&us.server.id, 1);
                self.event(&us.server.id, "reattached");
                *cell = Some(us);
            }
        }
    }

    fn event(&self, upstream: &str, event: &str) {
        self.metrics
            .upstream_session_events
            .with_label_values(&[upstream, event])
            .inc();
    }

    /// One more live upstream session, counted as `created`.
    fn note_created(&self, upstream: &str) {
        self.event(upstream, "created");
        self.live(upstream, 1);
    }

    /// One live upstream session fewer, counted as `event`.
    fn note_gone(&self, us: &UpstreamSession, event: &str) {
        self.live(&us.server.id, -1);
        self.event(&us.server.id, event);
    }

    fn live(&self, upstream: &str, delta: i64) {
        self.metrics
            .upstream_sessions
            .with_label_values(&[upstream])
            .add(delta);
    }

    /// The upstream session of `session` on `server`, created on first use.
    pub(crate) async fn get(
        &self,
        session: &Session,
        server: &Arc<UpstreamServer>,
    ) -> Result<Arc<UpstreamSession>, UpstreamError> {
        let cell = session.upstreams.cell(&server.id);
        let mut cell = cell.lock().await;
        if cell
            .as_ref()
            .is_some_and(|us| !Arc::ptr_eq(&us.server, server))
        {
            // The upstream's connection settings changed (reload): the old
            // upstream session belongs to the old server.
            if let Some(old) = cell.take() {
                self.live(&server.id, -1);
                self.event(&server.id, "evicted_reload");
                let grace = self.close_grace;
                tokio::spawn(async move { old.close(grace).await });
            }
        }
        if let Some(existing) = cell.as_ref() {
            if existing.idle_for() < self.probe_after
                || Box::pin(existing.probe(self.probe_timeout)).await
            {
                existing.touch();
                server
                    .reused
                    .get_or_init(|| {
                        self.metrics
                            .upstream_session_events
                            .with_label_values(&[&*server.id, "reused"])
                    })
                    .inc();
                return Ok(existing.clone());
            }
            self.event(&server.id, "evicted_probe");
            warn!(session = %session.id, upstream = %server.id, "idle upstream session failed its probe; recreating it");
            if let Some(old) = cell.take() {
                self.live(&server.id, -1);
                let grace = self.close_grace;
                tokio::spawn(async move { old.close(grace).await });
            }
        }
        // Boxed: opening is rare and its future large; every call awaits `get`.
        Box::pin(self.open(session, server, &mut cell)).await
    }

    /// Open an upstream session for `session` into its (locked) cell.
    async fn open(
        &self,
        session: &Session,
        server: &Arc<UpstreamServer>,
        cell: &mut Option<Arc<UpstreamSession>>,
    ) -> Result<Arc<UpstreamSession>, UpstreamError> {
        let created = match UpstreamSession::open(server.clone(), &session.init_params).await {
            Ok(c) => c,
            Err(e) => {
                self.metrics
                    .upstream_errors
                    .with_label_values(&[&server.id, e.kind()])
                    .inc();
                return Err(e);
            }
        };
        self.event(&server.id, "created");
        if session.is_closed() {
            // The session ended while we were creating: do not leak this one.
            created.close(self.close_grace).await;
            self.event(&server.id, "closed");
            return Ok(created);
        }
        self.live(&server.id, 1);
        *cell = Some(created.clone());
        // Logging level and GET-stream listening, as for the session's others.
        crate::relay::upstream_created(&session.relay, &created);
        // Written before the call proceeds: a worker that takes this session
        // over re-attaches the same upstream session.
        self.store
            .write(StoreWrite::SetUpstream {
                session: session.id.to_string(),
                upstream: created.record(),
            })
            .await;
        Ok(created)
    }

    /// An upstream session for one request only (a stateless client's):
    /// kept in no cell and never handed to another request; the caller
    /// closes it with [`Registry::close_unkept`]. Taken from the warm pool
    /// when one is ready for this kind of client (`init_params`), which is
    /// refilled in the background.
    pub(crate) async fn open_unkept(
        self: &Arc<Self>,
        server: &Arc<UpstreamServer>,
        init_params: &str,
        client: &modern::ClientMeta,
    ) -> Result<Arc<UpstreamSession>, UpstreamError> {
        if let Some(found) = server.known_modern() {
            // A server of the stateless revision has no session to open
            // ahead or to close after: its handle is made on the spot, off
            // the warm pool and its refills.
            self.note_created(&server.id);
            return Ok(UpstreamSession::modern(
                server.clone(),
                &found,
                client.clone(),
            ));
        }
        let taken = self.warm.take(server, init_params);
        self.close_unkept(taken.discard);
        for _ in 0..taken.refill {
            let (registry, server, params) =
                (self.clone(), server.clone(), Box::<str>::from(init_params));
            self.background.spawn(async move {
                let opened = registry.open_counted(&server, &params).await.ok();
                if let Some(unwanted) = registry.warm.put(&server, &params, opened) {
                    registry.close_unkept(vec![unwanted]);
                }
            });
        }
        if let Some(ready) = taken.session {
            self.event(&server.id, "warm_taken");
            return Ok(ready);
        }
        self.open_counted(server, init_params).await
    }

    /// Close the warm pool's sessions for good (the worker stops), and wait
    /// for the closes and refills still running (a refill that ends after
    /// this is handed back by the drained pool and closed too), bounded.
    pub(crate) async fn close_warm(&self) {
        let taken = self.warm.drain();
        let grace = self.close_grace * 2;
        self.close_all(taken, "closed", grace).await;
        self.background.close();
        if tokio::time::timeout(grace, self.background.wait())
            .await
            .is_err()
        {
            warn!(
                left = self.background.len(),
                "upstream closes still running at stop; abandoned"
            );
        }
    }

    /// `initialize` an upstream session kept in no cell, counted.
    async fn open_counted(
        &self,
        server: &Arc<UpstreamServer>,
        init_params: &str,
    ) -> Result<Arc<UpstreamSession>, UpstreamError> {
        match UpstreamSession::open(server.clone(), init_params).await {
            Ok(created) => {
                self.note_created(&server.id);
                Ok(created)
            }
            Err(e) => {
                self.metrics
                    .upstream_errors
                    .with_label_values(&[&server.id, e.kind()])
                    .inc();
                Err(e)
            }
        }
    }

    /// Close upstream sessions made by [`Registry::open_unkept`], in the
    /// background: the request they served has its answer already.
    pub(crate) fn close_unkept(self: &Arc<Self>, mut taken: Vec<Arc<UpstreamSession>>) {
        // A handle with no upstream session (a stateless server's) has
        // nothing to send: accounted for here, without a task.
        taken.retain(|us| {
            if !us.has_session() {
                self.note_gone(us, "closed");
            }
            us.has_session()
        });
        if taken.is_empty() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let registry = self.clone();
        self.background.spawn_on(
            async move {
                registry
                    .close_all(taken, "closed", registry.close_grace * 2)
                    .await;
            },
            &rt,
        );
    }

    /// Drop `failed` from its cell after a transport error, unless the cell
    /// already holds a newer upstream session.
    pub(crate) async fn evict(
        &self,
        session: &Session,
        failed: &Arc<UpstreamSession>,
        why: &UpstreamError,
    ) {
        let cell = session.upstreams.cell(&failed.server.id);
        let mut cell = cell.lock().await;
        if cell.as_ref().is_some_and(|cur| Arc::ptr_eq(cur, failed)) {
            *cell = None;
            self.live(&failed.server.id, -1);
            self.event(&failed.server.id, "evicted_error");
            self.store
                .write(StoreWrite::ClearUpstream {
                    session: session.id.to_string(),
                    upstream: failed.server.id.to_string(),
                })
                .await;
            info!(session = %session.id, upstream = %failed.server.id, reason = %why, "upstream session evicted");
        }
    }

    /// Close every upstream session of these (already removed) sessions,
    /// concurrently; returns within about two grace periods whatever happens.
    pub(crate) async fn close_sessions(&self, sessions: &[Arc<Session>]) {
        // Server requests still waiting are answered while their upstream
        // sessions are still there to hear it.
        // Half a grace period, taken from the two that bound closing in all.
        let started = tokio::time::Instant::now();
        let bound = self.close_grace / 2;
        let relays = sessions.iter().map(|s| {
            let relay = s.relay.clone();
            async move { relay.close(bound).await }
        });
        join_all_within(relays, bound).await;
        let mut taken = Vec::new();
        for s in sessions {
            for (_, cell) in s.upstreams.all() {
                // A cell locked by an in-flight create: that create sees the
                // session closed and closes its result itself.
                if let Ok(mut guard) = cell.try_lock()
                    && let Some(us) = guard.take()
                {
                    taken.push(us);
                }
            }
        }
        let left = (self.close_grace * 2).saturating_sub(started.elapsed());
        self.close_all(taken, "closed", left).await;
    }

    /// Close the upstream sessions of `session` on these upstreams (a reload
    /// changed or removed them), concurrently and bounded.
    pub(crate) async fn close_upstreams(&self, session: &Session, upstreams: &[Arc<str>]) {
        let mut taken = Vec::new();
        for id in upstreams {
            // The cell stays: a create in flight stores its result there, and
            // the next use sees it belongs to an old server, or the session's
            // end closes it.
            if let Some(cell) = session.upstreams.existing(id)
                && let Ok(mut guard) = cell.try_lock()
                && let Some(us) = guard.take()
            {
                taken.push(us);
            }
        }
        self.close_all(taken, "evicted_reload", self.close_grace * 2)
            .await;
    }

    /// Close these concurrently, each within a grace period, all within
    /// `bound`; what is left then is abandoned.
    async fn close_all(&self, taken: Vec<Arc<UpstreamSession>>, event: &str, bound: Duration) {
        if taken.is_empty() {
            return;
        }
        for us in &taken {
            self.note_gone(us, event);
        }
        let grace = self.close_grace;
        let closes = taken
            .into_iter()
            .map(|us| async move { us.close(grace).await });
        let left = join_all_within(closes, bound).await;
        if left > 0 {
            warn!(
                left,
                "upstream session closes did not finish in time; abandoning them"
            );
        }
    }

    /// Live upstream sessions per upstream, with the oldest one's age.
    pub(crate) fn snapshot(&self, sessions: &[Arc<Session>]) -> Vec<(Arc<str>, usize, Duration)> {
        let mut per_upstream: Vec<(Arc<str>, usize, Duration)> = Vec::new();
        for s in sessions {
            for (id, cell) in s.upstreams.all() {
                if let Ok(guard) = cell.try_lock()
                    && let Some(us) = guard.as_ref()
                {
                    let age = us.age();
                    match per_upstream.iter_mut().find(|e| e.0 == id) {
                        Some(e) => {
                            e.1 += 1;
                            e.2 = e.2.max(age);
                        }
                        None => per_upstream.push((id, 1, age)),
                    }
                }
            }
        }
        per_upstream
    }
}
