//! Stateless clients' calls parked in this worker until the client answers
//! what their upstream asked (MRTR, see `front::stateless::mrtr`, which
//! parks and resumes them): each call still running in its task, the
//! questions it waits on, whose it is and until when. Kept here, beside the
//! sessions, because the worker context holds them and the front end works
//! on them.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use foldhash::HashMap;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::jsonrpc;
use crate::relay::{Captured, Relay};

/// Bound on telling an upstream that its questions will not be answered.
const ASK_NOTICE_BOUND: Duration = Duration::from_secs(5);

/// What a call running in the background says next.
pub(crate) enum Next {
    /// Its answer (the original request's id).
    Answer(Bytes),
    /// The upstream asks the client these.
    Asks(Vec<Captured>),
}

/// A call running in the background: its answer, and the requests its
/// upstream puts to the client meanwhile.
pub(crate) struct Running {
    pub(crate) relay: Arc<Relay>,
    pub(crate) done: oneshot::Receiver<Bytes>,
    pub(crate) asks: mpsc::Receiver<Captured>,
}

impl Drop for Running {
    fn drop(&mut self) {
        // Given up on (answered, expired, refused, or its client left): the
        // upstream's questions still open are answered with an error, so
        // its call ends now rather than at its timeout.
        let relay = self.relay.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { relay.close(ASK_NOTICE_BOUND).await });
        }
    }
}

impl Running {
    pub(crate) async fn next(&mut self, id: &str) -> Next {
        tokio::select! {
            biased;
            Some(first) = self.asks.recv() => {
                let mut asks = vec![first];
                while let Ok(more) = self.asks.try_recv() {
                    asks.push(more);
                }
                Next::Asks(asks)
            }
            answer = &mut self.done => Next::Answer(answer.unwrap_or_else(|_| {
                jsonrpc::error(id, jsonrpc::INTERNAL_ERROR, "the call ended without an answer", None)
            })),
        }
    }
}

/// A call waiting for its client's retry.
pub(crate) struct Parked {
    pub(crate) running: Running,
    /// The gateway ids (raw JSON) of the requests the client must answer.
    pub(crate) asked: Vec<String>,
    /// `Principal::id` of the caller, or empty without `[auth]`.
    pub(crate) principal: Box<str>,
    /// The method and name the retry must repeat.
    pub(crate) method: Box<str>,
    pub(crate) name: Option<Box<str>>,
    pub(crate) expires: Instant,
}

/// This worker's parked calls, counted in `mcpgw_mrtr_parked_calls`.
pub(crate) struct ParkedCalls {
    calls: Mutex<HashMap<u128, Parked>>,
    gauge: prometheus::IntGauge,
}

impl ParkedCalls {
    pub(crate) fn new(gauge: prometheus::IntGauge) -> Self {
        Self {
            calls: Mutex::new(HashMap::default()),
            gauge,
        }
    }

    pub(crate) fn lock(&self) -> Calls<'_> {
        Calls {
            map: self.calls.lock().unwrap_or_else(PoisonError::into_inner),
            gauge: &self.gauge,
        }
    }

    /// Drops calls whose client did not come back in time (their upstream
    /// sessions end with them); run by the worker's periodic sweep.
    pub(crate) fn sweep(&self) {
        self.lock().drop_expired();
    }
}

/// The parked calls, locked; the gauge follows the map when the lock goes.
pub(crate) struct Calls<'a> {
    map: MutexGuard<'a, HashMap<u128, Parked>>,
    gauge: &'a prometheus::IntGauge,
}

impl Calls<'_> {
    pub(crate) fn drop_expired(&mut self) {
        let now = Instant::now();
        self.map.retain(|_, p| p.expires > now);
    }
}

impl std::ops::Deref for Calls<'_> {
    type Target = HashMap<u128, Parked>;
    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl std::ops::DerefMut for Calls<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.map
    }
}

impl Drop for Calls<'_> {
    fn drop(&mut self) {
        self.gauge
            .set(i64::try_from(self.map.len()).unwrap_or(i64::MAX));
    }
}
