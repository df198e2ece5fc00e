//! The session's life, as the bridge drives it: the client's `initialize` (in line),
//! the replay after a lost session (`--reinitialize`), the reaction to a 404, the GET
//! stream task's start and stop, and the end: DELETE once stdin is closed.
//!
//! A child of [`crate::bridge`], sharing its private state.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::{Bridge, Stop, lock};
use crate::exchange::Outgoing;
use crate::failure::Failure;
use crate::jsonrpc::IdKey;
use crate::pending::Entry;
use crate::session::Phase;
use crate::transport::{Routing, SessionHeaders};

impl Bridge {
    /// `initialize`, in line: the session it creates must exist before anything else is
    /// sent. The old session, if the client had one, is deleted.
    pub(super) async fn initialize(
        self: &Arc<Self>,
        id: Value,
        message: Value,
    ) -> Result<(), Stop> {
        let params = message.get("params").cloned().unwrap_or_else(|| json!({}));
        let (generation, replaced) = self.session.begin_client_initialize(params);
        self.stop_stream();
        if let Some(old) = replaced {
            info!("client initializes again; ending the previous session");
            let bridge = self.clone();
            tokio::spawn(async move { bridge.delete_session(&old).await });
        }
        let key = IdKey::of(&id);
        let entry = Entry {
            id,
            method: "initialize".to_owned(),
            generation,
            to_client: true,
        };
        if !self.pending.register(key.clone(), entry) {
            warn!(%key, "initialize reuses the id of a request still in flight");
        }
        let routing = Routing {
            method: Some("initialize"),
            name: None,
        };
        let outcome = self
            .exchange(Outgoing {
                body: Bytes::from(message.to_string()),
                keys: vec![key],
                routing,
                headers: SessionHeaders::default(),
                generation,
                capture: true,
            })
            .await;
        match outcome.established() {
            Some(phase) => {
                if let Phase::Established {
                    session_id,
                    protocol_version,
                } = &phase
                {
                    info!(
                        session = session_id
                            .as_ref()
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("(none: stateless server)"),
                        protocol_version = protocol_version
                            .as_ref()
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("(not given)"),
                        "session established"
                    );
                }
                self.session.finish_initialize(generation, phase);
                Ok(())
            }
            None => {
                self.session.finish_initialize(generation, Phase::Fresh);
                match outcome.transport_error {
                    Some(e) if e.is_connection_failure() => Err(Stop::Unreachable(e)),
                    _ => Ok(()),
                }
            }
        }
    }

    /// Replays the client's `initialize` after the server lost the session, then
    /// `notifications/initialized` and the GET stream as before. Concurrent callers
    /// return at once; they wait for the outcome in [`Session::settled`].
    pub(crate) async fn reinitialize(self: &Arc<Self>) {
        let Some((generation, params)) = self.session.begin_reinitialize() else {
            return;
        };
        info!("starting a new session (--reinitialize)");
        let id = json!(format!("mcpgw-wrapper-reinitialize-{generation}"));
        let key = IdKey::of(&id);
        self.pending.register(
            key.clone(),
            Entry {
                id: id.clone(),
                method: "initialize".to_owned(),
                generation,
                to_client: false,
            },
        );
        let message = json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": params});
        let outcome = self
            .exchange(Outgoing {
                body: Bytes::from(message.to_string()),
                keys: vec![key],
                routing: Routing {
                    method: Some("initialize"),
                    name: None,
                },
                headers: SessionHeaders::default(),
                generation,
                capture: true,
            })
            .await;
        let Some(phase) = outcome.established() else {
            let reason = format!(
                "the MCP server lost the session and starting a new one failed: {}",
                outcome.describe_failure()
            );
            warn!("{reason}");
            self.session
                .finish_initialize(generation, Phase::Lost { reason });
            return;
        };
        let headers = match &phase {
            Phase::Established {
                session_id,
                protocol_version,
            } => SessionHeaders {
                session_id: session_id.clone(),
                protocol_version: protocol_version.clone(),
            },
            _ => SessionHeaders::default(),
        };
        self.session.finish_initialize(generation, phase);
        info!(
            session = headers
                .session_id
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or("(none)"),
            "new session established"
        );
        if self.session.now().client_initialized {
            let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
            let outcome = self
                .exchange(Outgoing {
                    body: Bytes::from(note.to_string()),
                    keys: Vec::new(),
                    routing: Routing {
                        method: Some("notifications/initialized"),
                        name: None,
                    },
                    headers: headers.clone(),
                    generation,
                    capture: false,
                })
                .await;
            if outcome.accepted && self.session.now().generation == generation {
                self.start_stream(generation, headers);
            }
        }
    }

    /// The server answered 404 to session `generation`: fail what was sent on it and,
    /// with `--reinitialize`, start a new one.
    pub(crate) async fn session_lost(self: Arc<Self>, generation: u64, session_id: String) {
        let reason = format!("the MCP server no longer knows session {session_id} (HTTP 404)");
        if !self.session.mark_lost(generation, reason.clone()) {
            return;
        }
        let reinitialize = self.options.reinitialize && self.session.now().init_params.is_some();
        warn!(
            "{reason}; {}",
            if reinitialize {
                "starting a new one"
            } else {
                "requests will fail until the client initializes again (see --reinitialize)"
            }
        );
        self.stop_stream();
        let failure = Failure::SessionLost {
            reason,
            reinitialize,
        };
        for entry in self.pending.take_generation(generation) {
            self.fail(&entry, &failure).await;
        }
        if reinitialize {
            self.reinitialize().await;
        }
    }

    /// Starts the GET stream of session `generation`, replacing any running one.
    pub(super) fn start_stream(self: &Arc<Self>, generation: u64, headers: SessionHeaders) {
        let bridge = self.clone();
        let handle = tokio::spawn(async move { bridge.run_stream(generation, headers).await });
        if let Some(old) = lock(&self.stream_task).replace(handle.abort_handle()) {
            old.abort();
        }
    }

    fn stop_stream(&self) {
        if let Some(old) = lock(&self.stream_task).take() {
            old.abort();
        }
    }

    /// Ends a session with DELETE. 405 (not allowed) and 404 (already gone) are fine.
    async fn delete_session(&self, headers: &SessionHeaders) {
        let timeout = self.options.delete_timeout;
        match tokio::time::timeout(timeout, self.transport.delete(headers)).await {
            Ok(Ok(status)) if status.is_success() => {
                self.note_server_ok();
                info!("session ended (DELETE answered {status})");
            }
            Ok(Ok(status)) if status.as_u16() == 405 || status.as_u16() == 404 => {
                self.note_server_ok();
                debug!("DELETE answered {status}; nothing to end");
            }
            Ok(Ok(status)) => {
                self.note_server_ok();
                warn!("DELETE of the session answered HTTP {status}");
            }
            Ok(Err(e)) => {
                self.note_connection_failure(&e);
                warn!("could not end the session: {e}");
            }
            Err(_) => warn!("DELETE of the session got no answer within {timeout:?}"),
        }
    }

    /// stdin is closed: give requests in flight a bounded time, answer the rest with an
    /// error, stop the GET stream, and end the session.
    pub(super) async fn shutdown(self: &Arc<Self>, mut tasks: JoinSet<()>, grace: Duration) {
        while tasks.try_join_next().is_some() {}
        if !tasks.is_empty() && !grace.is_zero() {
            info!(
                "stdin closed; waiting up to {grace:?} for {} requests in flight",
                tasks.len()
            );
            let drained =
                tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
                    .await;
            if drained.is_err() {
                warn!("requests still in flight after {grace:?}; giving up on them");
            }
        }
        tasks.abort_all();
        let failure = Failure::Shutdown { grace };
        for entry in self.pending.take_all() {
            self.fail(&entry, &failure).await;
        }
        self.stop_stream();
        if let Phase::Established {
            session_id: Some(id),
            protocol_version,
        } = self.session.now().phase
        {
            let headers = SessionHeaders {
                session_id: Some(id),
                protocol_version,
            };
            self.delete_session(&headers).await;
        }
    }
}
