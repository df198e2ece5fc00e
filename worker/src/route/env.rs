//! What routing sees of the worker: a borrowed view of the worker context,
//! so routing can be driven without a running worker.

use std::sync::Arc;

use crate::metrics::Metrics;
use crate::session::registry::Registry;

/// What routing needs of the worker: the upstream sessions and the
/// counters. A borrowed view of the worker context, made per request at
/// no cost, so routing never sees the rest of it.
#[derive(Clone, Copy)]
pub(crate) struct Env<'a> {
    pub(crate) registry: &'a Arc<Registry>,
    pub(crate) metrics: &'a Metrics,
}
