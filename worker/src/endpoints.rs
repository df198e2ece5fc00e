//! Endpoints ("virtual servers"): a path and the upstream servers it
//! serves, and how names are namespaced when there are several. Config
//! data and pure functions of it; the routing that uses them is in
//! `crate::route` (which imports this module, not the other way).

use foldhash::HashMap;
use std::sync::Arc;

use mcpgw_protocol::config::Config;

use crate::authz::Rules;
use crate::rate_limit::Limiter;
use crate::upstream::UpstreamServer;

pub(crate) struct Endpoint {
    pub path: Box<str>,
    pub upstreams: Box<[Arc<UpstreamServer>]>,
    pub(crate) separator: Box<str>,
    /// Its authorization rules; `None`: everything is allowed, nothing to
    /// decide.
    pub(crate) authz: Option<Rules>,
    /// Its token buckets; `None` without `rate_limit`. Kept across a
    /// reload that leaves the endpoint's `rate_limit` and the worker count
    /// as they were, so a reload is no way to a fresh budget.
    pub(crate) limiter: Option<Arc<Limiter>>,
}

impl Endpoint {
    /// Names carry the upstream id unless there is exactly one upstream
    /// (with none, lists are empty and every name is unknown).
    pub(crate) fn namespaced(&self) -> bool {
        self.upstreams.len() != 1
    }

    /// Which upstream a public tool/prompt name belongs to, and its name
    /// there. `None` when no upstream matches.
    pub(crate) fn resolve<'n>(&self, public: &'n str) -> Option<(usize, &'n str)> {
        if !self.namespaced() {
            return Some((0, public));
        }
        self.upstreams.iter().enumerate().find_map(|(pos, u)| {
            public
                .strip_prefix(u.id.as_ref())
                .and_then(|rest| rest.strip_prefix(self.separator.as_ref()))
                .map(|name| (pos, name))
        })
    }

    pub(crate) fn public_name(&self, pos: usize, name: &str) -> String {
        let mut s =
            String::with_capacity(self.upstreams[pos].id.len() + self.separator.len() + name.len());
        s.push_str(&self.upstreams[pos].id);
        s.push_str(&self.separator);
        s.push_str(name);
        s
    }
}

/// The endpoints by path.
pub(crate) type Table = HashMap<Box<str>, Arc<Endpoint>>;

/// Build the endpoint table from a validated config; `previous` is the
/// configuration and table in force before a reload (limiters carry over).
pub(crate) fn endpoints(
    config: &Config,
    servers: &HashMap<Arc<str>, Arc<UpstreamServer>>,
    previous: Option<(&Config, &Table)>,
) -> Table {
    let workers = config.worker_count();
    config
        .effective_endpoints()
        .into_iter()
        .map(|e| {
            let upstreams = e
                .upstreams
                .iter()
                .filter_map(|id| servers.get(id.as_str()).cloned())
                .collect();
            let limiter = e.rate_limit.as_ref().map(|limit| {
                previous
                    .filter(|(old, _)| old.worker_count() == workers)
                    .and_then(|(old, table)| {
                        let same = old
                            .effective_endpoints()
                            .iter()
                            .any(|o| o.path == e.path && o.rate_limit.as_ref() == Some(limit));
                        same.then(|| table.get(e.path.as_str()))
                            .flatten()
                            .and_then(|ep| ep.limiter.clone())
                    })
                    .unwrap_or_else(|| {
                        Arc::new(Limiter::new(limit, workers, std::time::Instant::now()))
                    })
            });
            let ep = Endpoint {
                path: e.path.clone().into_boxed_str(),
                upstreams,
                separator: config.namespace_separator.clone().into_boxed_str(),
                authz: Rules::compile(&e),
                limiter,
            };
            (ep.path.clone(), Arc::new(ep))
        })
        .collect()
}
