//! Endpoints ("virtual servers"): a path and the upstream servers it
//! serves, and how names are namespaced when there are several. Config
//! data and pure functions of it; the routing that uses them is in
//! `crate::route` (which imports this module, not the other way).

use foldhash::HashMap;
use std::sync::Arc;

use mcpgw_protocol::config::Config;

use crate::upstream::UpstreamServer;

pub(crate) struct Endpoint {
    pub path: Box<str>,
    pub upstreams: Box<[Arc<UpstreamServer>]>,
    pub(crate) separator: Box<str>,
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

/// Build the endpoint table from a validated config.
pub(crate) fn endpoints(
    config: &Config,
    servers: &HashMap<Arc<str>, Arc<UpstreamServer>>,
) -> HashMap<Box<str>, Arc<Endpoint>> {
    config
        .effective_endpoints()
        .into_iter()
        .map(|e| {
            let upstreams = e
                .upstreams
                .iter()
                .filter_map(|id| servers.get(id.as_str()).cloned())
                .collect();
            let ep = Endpoint {
                path: e.path.clone().into_boxed_str(),
                upstreams,
                separator: config.namespace_separator.clone().into_boxed_str(),
            };
            (ep.path.clone(), Arc::new(ep))
        })
        .collect()
}
