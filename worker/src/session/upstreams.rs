//! A downstream session's upstream sessions: one cell per upstream id, so
//! a reload that changes an endpoint's upstream list keeps the cells of the
//! upstreams that stay. The cells are a field of the session; the
//! [`super::registry`] decides what goes in them.

use foldhash::HashMap;
use std::sync::Arc;

use tokio::sync::Mutex;

use crate::upstream::UpstreamSession;

pub(crate) type Cell = Mutex<Option<Arc<UpstreamSession>>>;

/// A downstream session's upstream sessions, one cell per upstream id.
#[derive(Default)]
pub(crate) struct SessionUpstreams {
    cells: std::sync::Mutex<HashMap<Arc<str>, Arc<Cell>>>,
}

impl SessionUpstreams {
    pub(crate) fn cell(&self, upstream: &Arc<str>) -> Arc<Cell> {
        let Ok(mut cells) = self.cells.lock() else {
            // A poisoned map only means a panic elsewhere; a fresh cell is safe.
            return Arc::new(Mutex::new(None));
        };
        cells.entry(upstream.clone()).or_default().clone()
    }

    pub(crate) fn all(&self) -> Vec<(Arc<str>, Arc<Cell>)> {
        self.cells
            .lock()
            .map(|c| c.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    /// The upstream sessions that exist now (none is created); a cell busy
    /// creating or probing is skipped.
    pub(crate) fn live(&self) -> Vec<Arc<UpstreamSession>> {
        self.all()
            .into_iter()
            .filter_map(|(_, cell)| cell.try_lock().ok()?.clone())
            .collect()
    }

    pub(crate) fn existing(&self, upstream: &str) -> Option<Arc<Cell>> {
        self.cells.lock().ok()?.get(upstream).cloned()
    }
}
