//! The server's GET stream: opened once the client has sent
//! `notifications/initialized`, relayed to the client, reopened with backoff when it
//! ends or breaks (with `Last-Event-ID` when the server gives event ids).
//!
//! 405 means the server offers no such stream, which is fine; another 4xx is taken as
//! "not offered" too (logged), 404 on a session as the session being lost. The task
//! belongs to one session generation and is aborted by [`crate::bridge`] when that
//! session ends; it never stops on its own otherwise.

use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use mcpgw_mcp::sse::Parser;
use tracing::{debug, info, warn};

use crate::bridge::Bridge;
use crate::exchange::{MAX_ANSWER, boxed_session_lost};
use crate::transport::{SessionHeaders, media_type};

/// First reconnection delay when the server did not set one with `retry:`.
const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl Bridge {
    pub(crate) async fn run_stream(self: Arc<Self>, generation: u64, headers: SessionHeaders) {
        let mut parser = Parser::with_limit(MAX_ANSWER);
        let mut backoff = INITIAL_BACKOFF;
        let mut opened_once = false;
        loop {
            match self
                .transport
                .get_stream(&headers, parser.last_event_id())
                .await
            {
                Err(e) => {
                    self.note_connection_failure(&e);
                    warn!("server stream: {e}; retrying in {backoff:?}");
                }
                Ok(response) => {
                    let status = response.status();
                    self.note_server_ok();
                    if status == StatusCode::NOT_FOUND && headers.session_id.is_some() {
                        let session_id = headers
                            .session_id
                            .as_ref()
                            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                            .unwrap_or_default();
                        // In its own task: handling the loss aborts this one.
                        tokio::spawn(boxed_session_lost(self.clone(), generation, session_id));
                        return;
                    }
                    if status == StatusCode::METHOD_NOT_ALLOWED {
                        info!(
                            "the server offers no GET stream (405); server messages arrive on request streams only"
                        );
                        return;
                    }
                    if status.is_client_error() {
                        warn!("the server refused the GET stream (HTTP {status}); not retrying");
                        return;
                    }
                    if status.is_success()
                        && media_type(&response).as_deref() == Some("text/event-stream")
                    {
                        if opened_once {
                            debug!("server stream reopened");
                        } else {
                            info!("server stream open");
                            opened_once = true;
                        }
                        backoff = INITIAL_BACKOFF;
                        parser.restart();
                        let (end, _) = self
                            .read_stream_events(response.into_body(), &mut parser)
                            .await;
                        match end {
                            Ok(()) => debug!("server stream ended; reopening"),
                            Err(e) => {
                                warn!("server stream broke: {e}; reopening");
                            }
                        }
                    } else {
                        warn!(
                            "unexpected answer to the GET stream: HTTP {status}; retrying in {backoff:?}"
                        );
                    }
                }
            }
            tokio::time::sleep(parser.retry().unwrap_or(backoff)).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}
