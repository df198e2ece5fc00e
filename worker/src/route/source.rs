//! Where routing gets its upstream sessions from, and where what upstreams
//! say outside a call's own answer goes: the [`Source`] of one request.
//!
//! A stateful client's session is one source ([`InSession`]): one upstream
//! session per upstream, kept in the registry for every later call of the
//! session. Routing itself never sees a session id, a registry or a header,
//! so another era's front end can bring a source of its own, and unit tests
//! bring one that opens upstream sessions directly.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;

use crate::endpoints::Endpoint;
use crate::relay::Relay;
use crate::session::Session;
use crate::session::registry::Registry;
use crate::upstream::{KnownEra, UpstreamError, UpstreamServer, UpstreamSession, modern};

/// What one request is routed with.
pub(crate) trait Source: Sync {
    /// The endpoint served, as of now (a reload may replace it between
    /// requests, never during one: read it once per request).
    fn endpoint(&self) -> Arc<Endpoint>;

    /// Who the request is for, in log lines (a session id).
    fn who(&self) -> &dyn fmt::Display;

    /// Id and progress-token maps, in-flight calls and the server→client
    /// messages of the upstream sessions; the resource routes learned from
    /// lists.
    fn relay(&self) -> &Arc<Relay>;

    /// Turns true when whatever the request belongs to ends; streams that
    /// outlive the request's head close on it.
    fn closed(&self) -> watch::Receiver<bool>;

    /// The upstream session to use on `server`, opened if there is none.
    fn upstream(
        &self,
        server: &Arc<UpstreamServer>,
    ) -> impl Future<Output = Result<Arc<UpstreamSession>, UpstreamError>> + Send;

    /// Whether the request stands alone (a stateless client's): an answer
    /// that only its upstream can continue (`input_required`, whose
    /// `requestState` the client sends back) may then reach the client.
    fn stands_alone(&self) -> bool {
        false
    }

    /// `failed` had a transport failure: do not hand it out again (unless
    /// a newer one replaced it already).
    fn evict(
        &self,
        failed: &Arc<UpstreamSession>,
        why: &UpstreamError,
    ) -> impl Future<Output = ()> + Send;
}

/// A stateful session's own upstream sessions, from the worker's registry.
#[derive(Clone, Copy)]
pub(crate) struct InSession<'a> {
    pub(crate) registry: &'a Registry,
    pub(crate) session: &'a Arc<Session>,
}

impl Source for InSession<'_> {
    fn endpoint(&self) -> Arc<Endpoint> {
        self.session.endpoint()
    }

    fn who(&self) -> &dyn fmt::Display {
        &self.session.id
    }

    fn relay(&self) -> &Arc<Relay> {
        &self.session.relay
    }

    fn closed(&self) -> watch::Receiver<bool> {
        self.session.close_signal()
    }

    async fn upstream(
        &self,
        server: &Arc<UpstreamServer>,
    ) -> Result<Arc<UpstreamSession>, UpstreamError> {
        self.registry.get(self.session, server).await
    }

    async fn evict(&self, failed: &Arc<UpstreamSession>, why: &UpstreamError) {
        self.registry.evict(self.session, failed, why).await;
    }
}

/// One request's own upstream sessions, for a client without a session (a
/// stateless 2026-07-28 client in front of stateful upstreams): each is
/// opened with the client's own capabilities and identity from the
/// request, used by this request alone, and closed when the request is
/// done, so two requests never share upstream state (#4205).
pub(crate) struct PerRequest {
    registry: Arc<Registry>,
    endpoint: Arc<Endpoint>,
    /// `initialize` params for the upstreams: the client's capabilities and
    /// info from the request's `_meta`.
    init_params: Box<str>,
    relay: Arc<Relay>,
    opened: std::sync::Mutex<Vec<Arc<UpstreamSession>>>,
    /// The client as a stateless upstream hears it, made once per request.
    client: std::sync::OnceLock<modern::ClientMeta>,
    /// Never flips while the request runs; the request's end drops it.
    closed: watch::Sender<bool>,
}

impl PerRequest {
    pub(crate) fn new(
        registry: Arc<Registry>,
        endpoint: Arc<Endpoint>,
        init_params: String,
    ) -> Self {
        Self {
            registry,
            endpoint,
            relay: Arc::new(Relay::new(&init_params)),
            init_params: init_params.into_boxed_str(),
            opened: std::sync::Mutex::new(Vec::new()),
            client: std::sync::OnceLock::new(),
            closed: watch::Sender::new(false),
        }
    }

    fn client(&self) -> &modern::ClientMeta {
        self.client
            .get_or_init(|| modern::ClientMeta::from_init_params(&self.init_params))
    }

    fn opened(&self) -> std::sync::MutexGuard<'_, Vec<Arc<UpstreamSession>>> {
        self.opened
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The upstream sessions opened so far (what they said of themselves
    /// makes the answer to `server/discover`), in endpoint order.
    pub(crate) async fn open_all(&self) -> Vec<Arc<UpstreamSession>> {
        let each = self.endpoint.upstreams.iter().map(|server| async move {
            match self.upstream(server).await {
                Ok(us) => Some(us),
                Err(e) => {
                    tracing::warn!(upstream = %server.id, error = %e, "upstream not reachable; left out");
                    None
                }
            }
        });
        futures_util::future::join_all(each)
            .await
            .into_iter()
            .flatten()
            .collect()
    }
}

impl PerRequest {
    /// Whether every upstream of the endpoint speaks the stateless revision
    /// (asked with `server/discover` once per server, then known). Such
    /// upstreams ask their client for input with `input_required` results
    /// of their own, never mid-call; one that cannot be asked counts as
    /// not.
    pub(crate) async fn all_modern(&self) -> bool {
        let client = self.client();
        let each = self.endpoint.upstreams.iter().map(|server| async move {
            let deadline = tokio::time::Instant::now() + server.request_timeout();
            matches!(server.era(client, deadline).await, Ok(KnownEra::Modern(_)))
        });
        futures_util::future::join_all(each)
            .await
            .into_iter()
            .all(|modern| modern)
    }
}

impl Drop for PerRequest {
    fn drop(&mut self) {
        // Whatever streams still hang on the request end with it.
        self.closed.send_replace(true);
        let taken = std::mem::take(&mut *self.opened());
        self.registry.close_unkept(taken);
    }
}

impl Source for PerRequest {
    fn endpoint(&self) -> Arc<Endpoint> {
        self.endpoint.clone()
    }

    fn who(&self) -> &dyn fmt::Display {
        &"stateless request"
    }

    fn stands_alone(&self) -> bool {
        true
    }

    fn relay(&self) -> &Arc<Relay> {
        &self.relay
    }

    fn closed(&self) -> watch::Receiver<bool> {
        self.closed.subscribe()
    }

    async fn upstream(
        &self,
        server: &Arc<UpstreamServer>,
    ) -> Result<Arc<UpstreamSession>, UpstreamError> {
        if let Some(us) = self
            .opened()
            .iter()
            .find(|us| Arc::ptr_eq(&us.server, server))
        {
            return Ok(us.clone());
        }
        let us = self
            .registry
            .open_unkept(server, &self.init_params, self.client())
            .await?;
        self.opened().push(us.clone());
        Ok(us)
    }

    async fn evict(&self, failed: &Arc<UpstreamSession>, _why: &UpstreamError) {
        let removed = {
            let mut opened = self.opened();
            let before = opened.len();
            opened.retain(|us| !Arc::ptr_eq(us, failed));
            before - opened.len()
        };
        if removed > 0 {
            self.registry.close_unkept(vec![failed.clone()]);
        }
    }
}
