//! This worker's side of the session store: writing down what another
//! worker would need to resume a session, and fetching a record when this
//! worker inherits a session whose owner died.
//!
//! Writes go over the control channel in order and are awaited before the
//! client is answered, so a record is in the supervisor's socket buffer even
//! if this process dies right after. Fetches are request/answer with a
//! deadline; the control reader delivers answers ([`StoreClient::deliver`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mcpgw_protocol::channel::Sender;
use mcpgw_protocol::control::FromWorker;
use mcpgw_protocol::session_id::SessionId;
use mcpgw_protocol::store::{SessionRecord, StoreWrite};
use tokio::sync::{Mutex, oneshot};
use tracing::warn;

type Pending = HashMap<u64, oneshot::Sender<Option<Box<SessionRecord>>>>;

pub(crate) struct StoreClient {
    control: Arc<Mutex<Sender<FromWorker>>>,
    pending: std::sync::Mutex<Pending>,
    next: AtomicU64,
}

const FETCH_DEADLINE: Duration = Duration::from_secs(2);

impl StoreClient {
    pub(crate) fn new(control: Arc<Mutex<Sender<FromWorker>>>) -> Self {
        Self {
            control,
            pending: std::sync::Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
        }
    }

    pub(crate) async fn write(&self, write: StoreWrite) {
        if let Err(e) = self
            .control
            .lock()
            .await
            .send(&FromWorker::Store(write))
            .await
        {
            warn!(error = %e, "writing a session record failed; the session cannot fail over");
        }
    }

    /// The record of `session`, if the store holds one owned by this worker.
    pub(crate) async fn fetch(&self, session: &SessionId) -> Option<Box<SessionRecord>> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().ok()?.insert(id, tx);
        let sent = self
            .control
            .lock()
            .await
            .send(&FromWorker::StoreFetch {
                id,
                session: session.to_string(),
            })
            .await;
        let answer = match sent {
            Ok(()) => tokio::time::timeout(FETCH_DEADLINE, rx)
                .await
                .ok()
                .and_then(Result::ok)
                .flatten(),
            Err(e) => {
                warn!(error = %e, "asking the store for a session record failed");
                None
            }
        };
        if let Ok(mut p) = self.pending.lock() {
            p.remove(&id);
        }
        answer
    }

    pub(crate) fn deliver(&self, id: u64, record: Option<Box<SessionRecord>>) {
        let waiter = self.pending.lock().ok().and_then(|mut p| p.remove(&id));
        if let Some(tx) = waiter {
            let _ = tx.send(record);
        }
    }
}
