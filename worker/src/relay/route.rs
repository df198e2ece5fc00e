//! Where each message an upstream sends on a stream goes: the call's answer,
//! server→client requests (capability check, id and token rewriting, the
//! stream that carries them), progress back to its call with the client's
//! token, an upstream's cancel of its own request.

use std::sync::Arc;

use bytes::Bytes;
use tracing::{debug, info, warn};

use super::{Call, Origin, Pending, Relay, id_key, spawn_notice};
use crate::http::sse;
use crate::jsonrpc::{self, Kind, RawObject};
use crate::upstream::UpstreamSession;

/// Where an upstream message came from.
#[derive(Clone, Copy)]
pub(super) enum Source<'a> {
    /// The SSE answer of a client call.
    Call(&'a Arc<Call>),
    /// The upstream session's GET stream.
    Stream,
}

/// What to do with one upstream message.
pub(super) enum Routed {
    /// Send it on the stream it belongs to (the call's, or the GET stream
    /// for messages from the upstream's GET stream).
    Forward(Bytes),
    /// The call's answer.
    Response(Bytes),
    /// A response to another request than the call's (its raw id): the
    /// upstream is out of step on this connection.
    Foreign(String),
    /// Delivered elsewhere, answered, or dropped.
    Done,
}

impl Relay {
    /// Route one message an upstream sent on a stream.
    pub(super) fn route(
        &self,
        us: &Arc<UpstreamSession>,
        data: String,
        from: Source<'_>,
    ) -> Routed {
        let Some(env) = jsonrpc::parse(data.as_bytes()) else {
            warn!(upstream = %us.server.id, "upstream sent a stream event that is not JSON-RPC; dropped");
            return Routed::Done;
        };
        match env.kind() {
            Kind::Response => match from {
                Source::Call(call) => {
                    if id_key(env.id_raw()).is_some_and(|k| k == call.key) {
                        Routed::Response(Bytes::from(data))
                    } else {
                        Routed::Foreign(env.id_raw().to_owned())
                    }
                }
                Source::Stream => {
                    debug!(upstream = %us.server.id, "response on the GET stream; dropped");
                    Routed::Done
                }
            },
            Kind::Request(method) => self.server_request(us, &env, method, &data, from),
            Kind::Notification(method) => {
                let rewritten = match method {
                    "notifications/progress" => self.progress_back(&env, &data, from),
                    "notifications/cancelled" => self.upstream_cancelled(us, &env, &data),
                    "notifications/resources/list_changed" => {
                        self.forget_resources_of(&us.server.id);
                        Some(Bytes::from(data))
                    }
                    _ => Some(Bytes::from(data)),
                };
                match rewritten {
                    Some(b) => Routed::Forward(b),
                    None => Routed::Done,
                }
            }
            Kind::Invalid => {
                warn!(upstream = %us.server.id, "upstream sent an invalid JSON-RPC message; dropped");
                Routed::Done
            }
        }
    }

    fn server_request(
        &self,
        us: &Arc<UpstreamSession>,
        env: &jsonrpc::Envelope<'_>,
        method: &str,
        data: &str,
        from: Source<'_>,
    ) -> Routed {
        let original_id = env.id_raw();
        let refuse = |why: &str| {
            info!(upstream = %us.server.id, method, why, "server request refused");
            spawn_notice(
                us.clone(),
                jsonrpc::error(original_id, jsonrpc::METHOD_NOT_FOUND, why, None),
            );
            Routed::Done
        };
        if let Some(cap) = self.caps.missing_for(method, env.params) {
            return refuse(&format!("the client did not declare the {cap} capability"));
        }
        // The call's own stream when the client streams its answer, else
        // the session's GET stream.
        let mut captured = None;
        let (origin, stream) = match from {
            Source::Call(call) if call.stream().is_some() => (Origin::Call(call.seq), None),
            _ => match (self.server_stream(), from) {
                (Some((tx, generation)), _) => (Origin::Stream(generation), Some((tx, generation))),
                (None, Source::Call(call)) if let Some(tx) = self.capturer() => {
                    captured = Some(tx);
                    (Origin::Call(call.seq), None)
                }
                (None, _) => return refuse("the client has no open stream to receive requests"),
            },
        };
        // Tokens from several upstreams could collide at the client too.
        let mapped = data
            .contains("progressToken")
            .then(|| Relay::map_progress(data.as_bytes()))
            .flatten();
        let (data, token) = match &mapped {
            Some((body, token)) => match std::str::from_utf8(body) {
                Ok(text) => (text, Some(token.clone())),
                Err(_) => (data, None),
            },
            None => (data, None),
        };
        let Some(gateway_id) = self.add_pending(Pending {
            upstream: us.clone(),
            original_id: original_id.into(),
            origin,
            token,
        }) else {
            return refuse("too many requests are waiting for this client");
        };
        let Some(message) = jsonrpc::with_member(data, "id", &gateway_id) else {
            self.state().pending.remove(&gateway_id);
            return refuse("malformed request");
        };
        if let Some(tx) = captured {
            debug!(upstream = %us.server.id, method, id = %original_id, gateway_id, "server request captured for a stateless client");
            let taken = tx.try_send(super::Captured {
                gateway_id: gateway_id.clone(),
                message: Bytes::from(message),
            });
            if taken.is_err() {
                self.state().pending.remove(&gateway_id);
                return refuse("too many requests are waiting for this client");
            }
            return Routed::Done;
        }
        debug!(upstream = %us.server.id, method, id = %original_id, gateway_id, "server request relayed");
        match (from, stream) {
            // The pump or the GET listener sends it where it belongs.
            (Source::Stream, _) | (_, None) => Routed::Forward(Bytes::from(message)),
            // A call answered as JSON: its requests go on the GET stream.
            (Source::Call(_), Some((tx, _))) => {
                if tx.try_send(sse::message_event(message.as_bytes())).is_err() {
                    self.state().pending.remove(&gateway_id);
                    return refuse("the client's stream is not taking messages");
                }
                Routed::Done
            }
        }
    }

    /// `notifications/progress` with the client's own token; sent on the
    /// token's call stream when it came from elsewhere.
    fn progress_back(
        &self,
        env: &jsonrpc::Envelope<'_>,
        data: &str,
        from: Source<'_>,
    ) -> Option<Bytes> {
        let params = env.params?;
        let obj: RawObject<'_> = serde_json::from_str(params.get()).ok()?;
        let token = obj.get("progressToken")?;
        let key = id_key(token.get())?;
        let Some(call) = self.state().tokens.get(&key).cloned() else {
            // Not one of ours: the upstream's own business, pass it on.
            return Some(Bytes::from(data.to_owned()));
        };
        let (_, original) = call.token.as_ref()?;
        let new_params = jsonrpc::with_member(params.get(), "progressToken", original)?;
        let message = Bytes::from(jsonrpc::with_member(data, "params", &new_params)?);
        let same_call = matches!(from, Source::Call(c) if Arc::ptr_eq(c, &call));
        if same_call {
            return Some(message);
        }
        if let Some(tx) = call.stream() {
            let _ = tx.try_send(sse::message_event(&message));
            return None;
        }
        // The call is answered as plain JSON: its progress has nowhere to go.
        None
    }

    /// An upstream cancels one of its server→client requests: the client
    /// sees the id it was given.
    fn upstream_cancelled(
        &self,
        us: &Arc<UpstreamSession>,
        env: &jsonrpc::Envelope<'_>,
        data: &str,
    ) -> Option<Bytes> {
        let params = env.params?;
        let obj: RawObject<'_> = serde_json::from_str(params.get()).ok()?;
        let original = id_key(obj.get("requestId")?.get())?;
        let gateway_id = {
            let mut st = self.state();
            let key = st
                .pending
                .iter()
                .find(|(_, p)| {
                    Arc::ptr_eq(&p.upstream, us)
                        && id_key(&p.original_id).as_deref() == Some(original.as_str())
                })
                .map(|(k, _)| k.clone())?;
            st.pending.remove(&key);
            key
        };
        let new_params = jsonrpc::with_member(params.get(), "requestId", &gateway_id)?;
        jsonrpc::with_member(data, "params", &new_params).map(Bytes::from)
    }
}
