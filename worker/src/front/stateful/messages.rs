//! Messages from the client that are not requests: notifications
//! (cancellation to the one upstream running the call) and responses to
//! server requests.

use crate::front::common::accepted;
use crate::route::reply::{Accept, rpc_error};
use std::sync::Arc;

use bytes::Bytes;
use http::Response;
use tracing::{debug, info, warn};

use crate::http::body::Body;
use crate::jsonrpc;
use crate::relay;
use crate::session::Session;

/// A notification from the client. Cancellation goes to the one upstream
/// session running the request, never to the others; the gateway already
/// sent `notifications/initialized` to each upstream itself; anything else
/// (roots/list_changed, unknown ones) concerns every upstream session of
/// the session that exists.
pub(crate) async fn client_notification(
    session: &Arc<Session>,
    method: &str,
    env: &jsonrpc::Envelope<'_>,
    body: &Bytes,
) -> Response<Body> {
    match method {
        "notifications/initialized" => {}
        "notifications/cancelled" => match session.relay.cancel_target(env.params) {
            Some(call) => {
                let us = call.upstream();
                info!(session = %session.id, upstream = %us.server.id, "client cancelled a call");
                if let Err(e) = relay::deliver_upstream(us, body.clone()).await {
                    warn!(session = %session.id, error = %e, "relaying a cancellation failed");
                }
                // Only now: the upstream hears of the cancel before the call's
                // connection to it goes away.
                call.interrupt();
            }
            None => {
                debug!(session = %session.id, "cancellation of a request not in flight; ignored")
            }
        },
        "notifications/progress" => match session.relay.client_progress(env.params, body) {
            // Progress on a server request: to the upstream that asked.
            Some((us, rewritten)) => {
                if let Err(e) = relay::deliver_upstream(&us, rewritten).await {
                    debug!(session = %session.id, error = %e, "relaying progress failed");
                }
            }
            None => {
                debug!(session = %session.id, "progress for no pending server request; dropped")
            }
        },
        _ => {
            let mut set = tokio::task::JoinSet::new();
            for us in session.upstreams.live() {
                let body = body.clone();
                set.spawn(async move {
                    if let Err(e) = relay::deliver_upstream(&us, body).await {
                        debug!(upstream = %us.server.id, error = %e, "relaying a notification failed");
                    }
                });
            }
            while set.join_next().await.is_some() {}
        }
    }
    accepted()
}

/// The client's answer to a server→client request: to the upstream that
/// asked, with its own id.
pub(crate) async fn client_response(
    session: &Arc<Session>,
    env: &jsonrpc::Envelope<'_>,
    body: &Bytes,
    accept: Accept,
) -> Response<Body> {
    let result = match session.relay.take_answer(env.id_raw(), body) {
        Ok(Some((us, rewritten))) => relay::deliver_upstream(&us, rewritten)
            .await
            .map_err(relay::AnswerError::from),
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => accepted(),
        Err(e) => {
            info!(session = %session.id, id = env.id_raw(), error = %e, "client response not relayed");
            rpc_error(
                accept,
                e.status(),
                "null",
                jsonrpc::INVALID_REQUEST,
                &e.to_string(),
            )
        }
    }
}
