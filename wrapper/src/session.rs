//! The one MCP session the wrapper holds for its client: which phase it is in, its
//! `Mcp-Session-Id` and negotiated `MCP-Protocol-Version`, and the client's
//! `initialize` params (kept for `--reinitialize`).
//!
//! Every session (the client's own `initialize`, or a replay after the server lost the
//! previous one) gets a new *generation* number; requests remember the generation they
//! were sent on (see [`crate::pending`]). State lives in a `watch` channel so that
//! messages arriving while an `initialize` is in flight wait for its outcome instead of
//! going out without a session id (ContextForge #4419). The transitions are here; the
//! HTTP exchanges that drive them are in [`crate::bridge`].

use hyper::header::HeaderValue;
use serde_json::Value;
use tokio::sync::watch;

use crate::transport::SessionHeaders;

/// Where the session is in its life.
#[derive(Debug, Clone)]
pub(crate) enum Phase {
    /// No `initialize` yet. Messages go out without session headers, which is also how
    /// a 2026-07-28 (stateless) client that never initializes is served.
    Fresh,
    /// An `initialize` is in flight; other messages wait for it.
    Initializing,
    /// Initialized. `session_id` is `None` for a server that hands out no session.
    Established {
        session_id: Option<HeaderValue>,
        protocol_version: Option<HeaderValue>,
    },
    /// The server lost the session and no new one exists (yet); requests are answered
    /// with an error carrying `reason` until the client (or `--reinitialize`) starts one.
    Lost { reason: String },
}

#[derive(Debug, Clone)]
pub(crate) struct State {
    pub(crate) generation: u64,
    pub(crate) phase: Phase,
    /// The params of the client's last `initialize`.
    pub(crate) init_params: Option<Value>,
    /// The client has sent `notifications/initialized`: the GET stream should run, and a
    /// replayed `initialize` is followed by the notification too.
    pub(crate) client_initialized: bool,
}

impl State {
    /// The headers a message sent now carries, unless the session is lost.
    pub(crate) fn headers(&self) -> Result<SessionHeaders, String> {
        match &self.phase {
            Phase::Fresh | Phase::Initializing => Ok(SessionHeaders::default()),
            Phase::Established {
                session_id,
                protocol_version,
            } => Ok(SessionHeaders {
                session_id: session_id.clone(),
                protocol_version: protocol_version.clone(),
            }),
            Phase::Lost { reason } => Err(reason.clone()),
        }
    }
}

/// The session cell.
#[derive(Debug)]
pub(crate) struct Session {
    tx: watch::Sender<State>,
}

impl Default for Session {
    fn default() -> Self {
        Self {
            tx: watch::channel(State {
                generation: 0,
                phase: Phase::Fresh,
                init_params: None,
                client_initialized: false,
            })
            .0,
        }
    }
}

impl Session {
    /// The current state, once no `initialize` is in flight.
    pub(crate) async fn settled(&self) -> State {
        let mut rx = self.tx.subscribe();
        match rx
            .wait_for(|s| !matches!(s.phase, Phase::Initializing))
            .await
        {
            Ok(state) => state.clone(),
            // The sender lives in `self`, so it cannot be gone while we borrow it.
            Err(_) => self.tx.borrow().clone(),
        }
    }

    /// The current state, without waiting.
    pub(crate) fn now(&self) -> State {
        self.tx.borrow().clone()
    }

    /// The client sends `initialize`: a new generation starts. Returns it, and the
    /// headers of the session it replaces, if that one had an id (to be deleted).
    pub(crate) fn begin_client_initialize(&self, params: Value) -> (u64, Option<SessionHeaders>) {
        let mut replaced = None;
        let mut generation = 0;
        self.tx.send_modify(|s| {
            if let Phase::Established {
                session_id: Some(id),
                protocol_version,
            } = &s.phase
            {
                replaced = Some(SessionHeaders {
                    session_id: Some(id.clone()),
                    protocol_version: protocol_version.clone(),
                });
            }
            s.generation += 1;
            s.phase = Phase::Initializing;
            s.init_params = Some(params);
            s.client_initialized = false;
            generation = s.generation;
        });
        (generation, replaced)
    }

    /// Starts replaying `initialize` after the session was lost; `None` if the session
    /// is not lost (someone else is already replaying, or it was replaced) or the
    /// client never initialized. Returns the new generation and the params to replay.
    pub(crate) fn begin_reinitialize(&self) -> Option<(u64, Value)> {
        let mut started = None;
        self.tx.send_if_modified(|s| {
            let (Phase::Lost { .. }, Some(params)) = (&s.phase, &s.init_params) else {
                return false;
            };
            started = Some((s.generation + 1, params.clone()));
            s.generation += 1;
            s.phase = Phase::Initializing;
            true
        });
        started
    }

    /// Ends the `initialize` of `generation` with its outcome; ignored if a newer
    /// generation has started meanwhile.
    pub(crate) fn finish_initialize(&self, generation: u64, phase: Phase) {
        self.tx.send_if_modified(|s| {
            if s.generation != generation {
                return false;
            }
            s.phase = phase;
            true
        });
    }

    /// The server no longer knows the session of `generation`. Returns whether this call
    /// made the transition (only the first reporter acts on it).
    pub(crate) fn mark_lost(&self, generation: u64, reason: String) -> bool {
        self.tx.send_if_modified(|s| {
            if s.generation != generation || !matches!(s.phase, Phase::Established { .. }) {
                return false;
            }
            s.phase = Phase::Lost { reason };
            true
        })
    }

    /// Records `notifications/initialized` on `generation`; whether it is still current.
    pub(crate) fn set_client_initialized(&self, generation: u64) -> bool {
        self.tx.send_if_modified(|s| {
            if s.generation != generation {
                return false;
            }
            s.client_initialized = true;
            true
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn established(id: &'static str) -> Phase {
        Phase::Established {
            session_id: Some(HeaderValue::from_static(id)),
            protocol_version: Some(HeaderValue::from_static("2025-11-25")),
        }
    }

    #[tokio::test]
    async fn initialize_then_loss_then_replay() {
        let s = Session::default();
        let (g1, replaced) = s.begin_client_initialize(json!({"protocolVersion": "2025-11-25"}));
        assert!(replaced.is_none());
        assert!(matches!(s.now().phase, Phase::Initializing));
        s.finish_initialize(g1, established("a"));
        assert!(s.set_client_initialized(g1));
        let state = s.settled().await;
        assert_eq!(
            state
                .headers()
                .expect("live")
                .session_id
                .as_ref()
                .map(|v| v.as_bytes()),
            Some(&b"a"[..])
        );

        assert!(s.begin_reinitialize().is_none(), "not lost");
        assert!(s.mark_lost(g1, "gone".into()));
        assert!(
            !s.mark_lost(g1, "again".into()),
            "only the first reporter acts"
        );
        assert_eq!(s.now().headers().expect_err("lost"), "gone");

        let (g2, params) = s.begin_reinitialize().expect("replay");
        assert_eq!(g2, g1 + 1);
        assert_eq!(params, json!({"protocolVersion": "2025-11-25"}));
        assert!(s.begin_reinitialize().is_none(), "one replay at a time");
        s.finish_initialize(g1, established("stale"));
        assert!(
            matches!(s.now().phase, Phase::Initializing),
            "stale outcome ignored"
        );
        s.finish_initialize(g2, established("b"));
        assert!(s.now().client_initialized, "kept across the replay");
    }

    #[tokio::test]
    async fn a_second_client_initialize_replaces_the_session() {
        let s = Session::default();
        let (g1, _) = s.begin_client_initialize(json!({}));
        s.finish_initialize(g1, established("a"));
        let (g2, replaced) = s.begin_client_initialize(json!({}));
        assert_eq!(g2, g1 + 1);
        assert!(replaced.and_then(|h| h.session_id).is_some());
        assert!(!s.now().client_initialized);
    }

    #[tokio::test]
    async fn settled_waits_for_initialize() {
        let s = std::sync::Arc::new(Session::default());
        let (g, _) = s.begin_client_initialize(json!({}));
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.settled().await.generation }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        s.finish_initialize(g, established("a"));
        assert_eq!(waiter.await.expect("join"), g);
    }
}
