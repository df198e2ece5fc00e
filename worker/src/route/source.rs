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
use crate::upstream::{UpstreamError, UpstreamServer, UpstreamSession};

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
