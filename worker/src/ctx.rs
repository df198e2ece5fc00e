//! The worker context: what request handlers read ([`Ctx`]), and the
//! configuration in force with what is built from it ([`Live`]), which a
//! reload swaps whole.

use foldhash::{HashMap, HashMapExt};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use mcpgw_protocol::config::Config;
use mcpgw_protocol::control::WorkerId;
use mcpgw_protocol::routing::{RouteTable, RouteUpdate};
use mcpgw_protocol::session_id::SessionId;
use tokio::sync::watch;

use crate::endpoints::Endpoint;
use crate::error::WorkerError;
use crate::forward::Forwarder;
use crate::metrics::Metrics;
use crate::session::registry::Registry;
use crate::session::store::StoreClient;
use crate::session::{Session, Sessions};
use crate::upstream::UpstreamServer;

/// What every request handler sees.
pub(crate) struct Ctx {
    pub id: WorkerId,
    /// The slot count and the routing exceptions (down slots, moved sessions) from the supervisor.
    routes: std::sync::RwLock<RouteTable>,
    /// What a reload replaces; a request reads it once ([`Ctx::live`]).
    live: std::sync::RwLock<Arc<Live>>,
    pub sessions: Sessions,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub store: Arc<StoreClient>,
    pub forwarder: Forwarder,
    /// Stateless clients' calls waiting for their input (MRTR).
    pub parked: crate::session::parked::ParkedCalls,
    /// Flips to true when the worker starts to stop; open streams end on it.
    pub stopping: watch::Receiver<bool>,
    /// `[log] access`, as of the last (re)load: read by every request, so
    /// kept apart from `live`.
    pub access_log: std::sync::atomic::AtomicBool,
    /// `[tracing]`: request spans exported to a collector, or off.
    pub otel: crate::otel::Otel,
    /// `[cluster]`: which host owns sessions of other hosts (a cache).
    pub owners: crate::cluster::Owners,
    /// `[cluster]`: nonces of requests other hosts forwarded here.
    pub replays: crate::cluster::Replays,
    /// `[cluster]`: refusals on the cluster listener, logged throttled.
    pub refusals: crate::cluster::RefusalLog,
}

/// The configuration in force and what is built from it.
pub(crate) struct Live {
    pub config: Arc<Config>,
    /// Upstream servers by id; an unchanged server survives a reload with
    /// its connection pool and upstream sessions.
    pub servers: HashMap<Arc<str>, Arc<UpstreamServer>>,
    pub endpoints: HashMap<Box<str>, Arc<Endpoint>>,
    pub worker_header: Option<HeaderValue>,
    pub max_body: usize,
    pub host_policy: crate::http::origin::HostPolicy,
    /// One acceptor per `tls_listener`, by index. New handshakes use the
    /// acceptor in force; live connections keep the one they started with.
    pub tls: Vec<tokio_rustls::TlsAcceptor>,
    /// The front door (`[auth]`); `None`: requests are not authenticated.
    pub auth: Option<Arc<crate::auth::Gate>>,
    /// `[cluster] key_file`, read on every (re)load: signs and checks
    /// requests between hosts and tags session ids. `None` outside a
    /// cluster.
    pub cluster_key: Option<Arc<mcpgw_protocol::cluster::ClusterKey>>,
}

impl Ctx {
    /// The part of the context routing sees, for a request of `caller`; it
    /// reports the request's outcome into `outcome`.
    pub(crate) fn route_env<'a>(
        &'a self,
        outcome: &'a crate::metrics::OutcomeSlot,
        caller: Option<&'a crate::auth::Principal>,
    ) -> crate::route::env::Env<'a> {
        crate::route::env::Env {
            metrics: &self.metrics,
            outcome,
            tool_call: false,
            learns_tools: false,
            notes_route: self.access_log.load(std::sync::atomic::Ordering::Relaxed)
                || outcome.traced(),
            caller: caller.map(crate::auth::Principal::claims),
        }
    }

    /// End sessions already taken out of the table: their records leave
    /// the store (they would count against the session caps until swept)
    /// and their upstream sessions close.
    pub(crate) async fn end_sessions(&self, ended: &[Arc<Session>]) {
        for s in ended {
            self.store
                .write(mcpgw_protocol::store::StoreWrite::Remove {
                    session: s.id.to_string(),
                })
                .await;
        }
        self.registry.close_sessions(ended).await;
    }

    pub(crate) fn live(&self) -> Arc<Live> {
        match self.live.read() {
            Ok(l) => l.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The slot that owns `id`: its hash slot unless the supervisor said
    /// otherwise.
    pub(crate) fn owner_of(&self, id: &SessionId) -> u16 {
        self.with_routes(|r| r.owner(id))
    }

    /// Slots in the pool (the modulus new session ids are minted for).
    pub(crate) fn slot_count(&self) -> u16 {
        self.with_routes(RouteTable::slots)
    }

    fn with_routes<T>(&self, f: impl FnOnce(&RouteTable) -> T) -> T {
        match self.routes.read() {
            Ok(r) => f(&r),
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }

    pub(crate) fn change_routes(&self, f: impl FnOnce(&mut RouteTable)) {
        match self.routes.write() {
            Ok(mut r) => f(&mut r),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    pub(crate) fn set_routes(&self, update: &RouteUpdate) {
        self.change_routes(|r| r.apply(update));
        // Sessions may have moved to this worker.
        self.store.forget_absent();
    }

    pub(crate) fn set_live(&self, live: Arc<Live>) {
        match self.live.write() {
            Ok(mut l) => *l = live,
            Err(poisoned) => *poisoned.into_inner() = live,
        }
    }
}

impl Live {
    /// Build from `config`, keeping the servers of `previous` whose
    /// connection settings did not change. Returns the ids of servers that
    /// were replaced or removed: their upstream sessions must go.
    pub(crate) fn build(
        id: WorkerId,
        config: Arc<Config>,
        previous: Option<&Live>,
    ) -> Result<(Self, Vec<Arc<str>>), WorkerError> {
        let mut servers = HashMap::new();
        let mut gone = Vec::new();
        let mut system_roots = mcpgw_protocol::tls::SystemRoots::default();
        for u in &config.upstream {
            // Read on every (re)load, so that new files under the same
            // paths are seen (and make a new server below).
            let tls = u
                .needs_tls()
                .then(|| mcpgw_protocol::tls::client_config(u.tls_files(), &mut system_roots))
                .transpose()
                .map_err(|e| WorkerError::Tls(format!("upstream {}: {e}", u.id)))?;
            let fingerprint = tls.as_ref().map(|t| t.fingerprint);
            let kept = previous
                .and_then(|p| p.servers.get(u.id.as_str()))
                .filter(|old| old.adopt(u, fingerprint))
                .cloned();
            let server = match kept {
                Some(s) => s,
                None => {
                    if previous.is_some_and(|p| p.servers.contains_key(u.id.as_str())) {
                        gone.push(Arc::from(u.id.as_str()));
                    }
                    Arc::new(UpstreamServer::new(u, tls)?)
                }
            };
            servers.insert(server.id.clone(), server);
        }
        if let Some(p) = previous {
            gone.extend(
                p.servers
                    .keys()
                    .filter(|k| !servers.contains_key(*k))
                    .cloned(),
            );
        }
        let worker_header = config
            .diagnostics
            .worker_header
            .then(|| {
                HeaderValue::from_str(&format!(
                    "{}/{}/{}",
                    id.slot,
                    id.generation,
                    std::process::id()
                ))
                .ok()
            })
            .flatten();
        let tls = config
            .tls_listener
            .iter()
            .map(|t| {
                mcpgw_protocol::tls::server_config(&t.cert, &t.key)
                    .map(tokio_rustls::TlsAcceptor::from)
                    .map_err(|e| WorkerError::Tls(format!("{}: {e}", t.addr)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        crate::upstream::answer_budget::configure(
            config.limits.max_answer_bytes as usize,
            usize::try_from(config.limits.max_buffered_answer_bytes).unwrap_or(usize::MAX),
        );
        let auth = crate::auth::Gate::build(&config, previous.and_then(|p| p.auth.as_deref()))
            .map_err(WorkerError::AuthKeys)?;
        let cluster_key = config
            .cluster
            .read_key()
            .map_err(|e| WorkerError::Cluster(e.to_string()))?
            .map(Arc::new);
        Ok((
            Self {
                auth,
                cluster_key,
                tls,
                endpoints: crate::endpoints::endpoints(
                    &config,
                    &servers,
                    previous.map(|p| (&*p.config, &p.endpoints)),
                ),
                max_body: config.limits.max_body_bytes as usize,
                host_policy: crate::http::origin::HostPolicy::from_config(&config),
                worker_header,
                servers,
                config,
            },
            gone,
        ))
    }
}

pub(crate) fn build_ctx(
    id: WorkerId,
    slots: u16,
    config: Arc<Config>,
    runtime_dir: std::path::PathBuf,
    stopping: watch::Receiver<bool>,
    store: Arc<StoreClient>,
) -> Result<Ctx, WorkerError> {
    let (live, _) = Live::build(id, config.clone(), None)?;
    let metrics = Arc::new(Metrics::new().map_err(WorkerError::Metrics)?);
    let parked = crate::session::parked::ParkedCalls::new(metrics.parked_calls.clone());
    Ok(Ctx {
        id,
        routes: std::sync::RwLock::new(RouteTable::new(slots)),
        live: std::sync::RwLock::new(Arc::new(live)),
        sessions: Sessions::new(metrics.sessions.clone()),
        registry: Arc::new(Registry::new(
            Duration::from_secs(config.sessions.upstream_probe_after_secs),
            Duration::from_millis(config.sessions.upstream_close_grace_ms),
            config.sessions.stateless_warm_sessions as usize,
            metrics.clone(),
            store.clone(),
        )),
        metrics,
        store,
        forwarder: Forwarder::new(
            runtime_dir,
            id.slot,
            Duration::from_millis(config.limits.dispatch_wait_ms),
        ),
        parked,
        stopping,
        access_log: std::sync::atomic::AtomicBool::new(config.log.access),
        otel: crate::otel::Otel::new(&config.tracing, id),
        owners: crate::cluster::Owners::default(),
        replays: crate::cluster::Replays::default(),
        refusals: crate::cluster::RefusalLog::default(),
    })
}
