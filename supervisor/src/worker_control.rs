//! The supervisor's end of one worker's control channel, served by a task of
//! its own from the worker's start to its exit.
//!
//! It owns what must not wait behind the main loop: it sends `Init`, keeps
//! the worker's heartbeat, answers the session store's traffic (writes,
//! fetches, and `Open` admission with its `Opened` answer), and hands answers
//! to scattered requests (`Gathered`, `Reloaded`) straight to the
//! [`Gatherer`], since the main loop may be the one waiting for them.
//! Everything else (`Ready`, `Load`) goes to the main loop as an
//! [`Event::Message`]; a broken channel as [`Event::ControlFailed`]. Which
//! worker serves a slot, restarts and routing decisions stay with the main
//! loop; the store's rules stay with the store.

use std::sync::Arc;

use mcpgw_protocol::channel::Receiver;
use mcpgw_protocol::control::{FromWorker, ToWorker};
use mcpgw_protocol::session_id::SessionId;
use mcpgw_protocol::store::{Fetched, StoreWrite};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::Event;
use crate::admin::{self, Gatherer};
use crate::pool::Worker;
use crate::routes::Routes;
use crate::store::SessionStore;

/// What serving one worker's control channel needs from the supervisor.
pub(crate) struct WorkerControl {
    pub(crate) worker: Arc<Worker>,
    pub(crate) events: mpsc::UnboundedSender<Event>,
    pub(crate) gatherer: Arc<Gatherer>,
    pub(crate) store: Arc<dyn SessionStore>,
    pub(crate) routes: Arc<Routes>,
}

impl WorkerControl {
    /// Send `init`, then serve what the worker sends until its channel ends.
    pub(crate) async fn serve(self, init: ToWorker, mut control_rx: Receiver<FromWorker>) {
        let Self {
            worker,
            events,
            gatherer,
            store,
            routes,
        } = self;
        let id = worker.id;
        if let Err(e) = worker.control.lock().await.send(&init).await {
            let _ = events.send(Event::ControlFailed { id, error: e });
            return;
        }
        loop {
            match control_rx.recv().await {
                // Answers to scattered requests go straight to whoever
                // waits for them: the main loop may be that waiter.
                Ok(Some(FromWorker::Gathered { id: request, data })) => {
                    gatherer.deliver(request, id, admin::Answer::Gathered(data));
                }
                Ok(Some(FromWorker::Reloaded { id: request, error })) => {
                    gatherer.deliver(request, id, admin::Answer::Reloaded(error));
                }
                // Store traffic is served here too, not by the main loop,
                // so a resuming worker never waits behind a reload.
                Ok(Some(FromWorker::Heartbeat { touched })) => {
                    worker.note_alive();
                    store.touch(&touched);
                }
                Ok(Some(FromWorker::Store(write))) => {
                    let created = matches!(write, StoreWrite::Put(_));
                    match store.apply(id, write) {
                        Some((session, true)) => routes.ended(&[session]),
                        // Minted by a worker that did not know yet of
                        // a new slot count: it lives where it was made.
                        Some((session, false)) if created => {
                            routes.keep_at(session, id.slot);
                        }
                        _ => {}
                    }
                }
                Ok(Some(FromWorker::StoreFetch {
                    id: request,
                    session,
                })) => {
                    tokio::spawn(answer_fetch(
                        worker.clone(),
                        store.clone(),
                        routes.clone(),
                        request,
                        session,
                    ));
                }
                // Answered here, under the store's lock and in this
                // worker's message order: the check and the record are
                // one step, so initializes racing on several workers
                // cannot pass a cap together.
                Ok(Some(FromWorker::Open {
                    id: request,
                    caps,
                    record,
                })) => {
                    let refused = match store.open(id, record, caps) {
                        Ok(Some(session)) => {
                            // As for a Put: it lives where it was made.
                            routes.keep_at(session, id.slot);
                            None
                        }
                        Ok(None) => None,
                        Err(cap) => Some(cap),
                    };
                    let w = worker.clone();
                    tokio::spawn(async move {
                        let reply = ToWorker::Opened {
                            id: request,
                            refused,
                        };
                        if let Err(e) = w.control.lock().await.send(&reply).await {
                            debug!(worker = %w.id, error = %e, "admission answer not sent");
                        }
                    });
                }
                Ok(Some(msg)) => {
                    if events.send(Event::Message { id, msg }).is_err() {
                        return;
                    }
                }
                // EOF: the worker is exiting; its exit event follows.
                Ok(None) => return,
                Err(error) => {
                    let _ = events.send(Event::ControlFailed { id, error });
                    return;
                }
            }
        }
    }
}

/// Answer a worker's `StoreFetch`. A task of its own: with Redis a fetch
/// waits on the network, and the channel keeps being served meanwhile.
async fn answer_fetch(
    worker: Arc<Worker>,
    store: Arc<dyn SessionStore>,
    routes: Arc<Routes>,
    request: u64,
    session: String,
) {
    let id = worker.id;
    // Validated before it goes near a store key.
    let answer = match SessionId::parse(session.as_bytes()) {
        Ok(session) => {
            let answer = store.fetch(session, id).await;
            if matches!(answer, Fetched::Record(_)) {
                // Claimed away from its slot (that slot is down): keep it
                // here.
                routes.keep_at(session, id.slot);
            }
            answer
        }
        Err(e) => {
            warn!(worker = %id, error = %e, "store fetch for a malformed session id");
            Fetched::Withheld
        }
    };
    let reply = ToWorker::StoreRecord {
        id: request,
        answer,
    };
    if let Err(e) = worker.control.lock().await.send(&reply).await {
        debug!(worker = %worker.id, error = %e, "store answer not sent");
    }
}
