//! A stateless client in front of a stateful upstream that asks it
//! something mid-call (elicitation, sampling, roots): MRTR, the 2026-07-28
//! way. The upstream's server→client request has no stream to go on, so
//! the relay hands it here ([`Relay::capture`]); the call stays running,
//! parked in this worker with its upstream session, and the client gets an
//! `input_required` result whose `requestState` is a handle to it. The
//! client's retry (with `inputResponses` and that handle) reaches whichever
//! worker the supervisor picks; it is forwarded to the worker that holds
//! the call (the handle names its slot), where the answers go to the
//! upstream as the responses it waits for, and the call goes on: to its
//! result, or to another round of input.
//!
//! The handle (`mcpgw1.<slot>.<128 random bits>`) carries no state of its
//! own, so there is nothing to sign and no key to rotate: what it names
//! lives only here, answers only to the principal that started the call,
//! can be used once (a retry that matches takes it), and is dropped
//! `[sessions] input_wait_secs` after it was made. A tampered, foreign, used or expired
//! handle is one this worker does not hold: -32602.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use rmcp::model::{InputRequest, InputRequests, InputRequiredResult};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::ctx::Ctx;
use crate::jsonrpc;
use crate::metrics::OutcomeSlot;
use crate::relay::{self, Captured};
use crate::route::reply::Accept;
use crate::route::source::{PerRequest, Source};
use crate::route::{self, env::Env};
use crate::session::parked::{Next, Parked, Running};

/// The prefix of the gateway's own `requestState` handles (a version, so
/// that another form can follow).
pub(crate) const STATE_PREFIX: &str = "mcpgw1.";
/// Calls one worker keeps parked at most; past it a call that asks for
/// input ends with an error instead.
const MAX_PARKED: usize = 4096;
/// Server→client requests one call may have waiting at once.
const MAX_ASKED: usize = 16;

/// Methods whose answer may be `input_required` (MRTR).
pub(crate) fn may_ask(method: &str) -> bool {
    matches!(method, "tools/call" | "prompts/get" | "resources/read")
}

/// Why a retry was refused (-32602 with this text).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct BadRetry(String);

/// A `requestState` of the gateway's: the slot that holds the call and its
/// key there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Handle {
    pub slot: u16,
    key: u128,
}

impl Handle {
    /// The handle in `state`, when it is one of the gateway's form; `None`
    /// for another server's `requestState` (passed through untouched).
    pub(crate) fn parse(state: &str) -> Option<Result<Self, BadRetry>> {
        let rest = state.strip_prefix(STATE_PREFIX)?;
        let parsed = rest.split_once('.').and_then(|(slot, key)| {
            Some(Self {
                slot: slot.parse().ok()?,
                key: u128::from_str_radix(key, 16)
                    .ok()
                    .filter(|_| key.len() == 32)?,
            })
        });
        Some(parsed.ok_or_else(|| BadRetry(unknown())))
    }

    /// The handle, if its slot is one of the pool's `slots`.
    pub(crate) fn within(self, slots: u16) -> Result<Self, BadRetry> {
        if self.slot < slots {
            Ok(self)
        } else {
            Err(BadRetry(unknown()))
        }
    }

    fn new(slot: u16) -> Option<Self> {
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw).ok()?;
        Some(Self {
            slot,
            key: u128::from_le_bytes(raw),
        })
    }
}

impl std::fmt::Display for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{STATE_PREFIX}{}.{:032x}", self.slot, self.key)
    }
}

fn unknown() -> String {
    "requestState is unknown, expired or already used: send the request again without it".into()
}

/// What a call needs to run: who asks, and what.
pub(crate) struct Call<'a> {
    pub id: &'a str,
    pub method: &'a str,
    pub name: Option<&'a str>,
    pub body: &'a Bytes,
    pub principal: Option<&'a crate::auth::Principal>,
}

impl Call<'_> {
    fn principal_id(&self) -> &str {
        self.principal.map_or("", crate::auth::Principal::id)
    }
}

/// Runs `call` on `src` in the background, so that it can outlive this
/// request when its upstream asks the client something; returns its answer,
/// or an `input_required` result for the client.
pub(crate) async fn start(ctx: &Arc<Ctx>, src: PerRequest, call: Call<'_>) -> Bytes {
    let (asks_tx, asks) = mpsc::channel(MAX_ASKED);
    src.relay().capture(asks_tx);
    let (done_tx, done) = oneshot::channel();
    let running = Running {
        relay: src.relay().clone(),
        done,
        asks,
    };
    let (task_ctx, body, method) = (ctx.clone(), call.body.clone(), call.method.to_owned());
    let principal = call.principal.cloned();
    tokio::spawn(async move {
        let Some(env) = jsonrpc::parse(&body) else {
            return;
        };
        let outcome = OutcomeSlot::new();
        let route_env = Env {
            tool_call: method == "tools/call",
            ..task_ctx.route_env(&outcome, principal.as_ref())
        };
        let whole = Accept {
            json: true,
            sse: false,
        };
        let resp = route::request(route_env, &src, &method, &env, &body, whole).await;
        let message = match resp.into_body().collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => {
                info!(error = %e, "stateless answer could not be read");
                jsonrpc::error(
                    env.id_raw(),
                    jsonrpc::INTERNAL_ERROR,
                    "the upstream answer could not be read",
                    None,
                )
            }
        };
        // The upstream sessions end with the call.
        drop(src);
        let _ = done_tx.send(message);
    });
    proceed(ctx, running, &call).await
}

/// The client's retry of a parked call: its answers to the upstream, and
/// the call goes on.
pub(crate) async fn resume(
    ctx: &Arc<Ctx>,
    handle: Handle,
    call: Call<'_>,
    responses: Option<&RawValue>,
) -> Result<Bytes, BadRetry> {
    let responses: Map<String, Value> = responses
        .map(|r| serde_json::from_str(r.get()))
        .transpose()
        .map_err(|e| BadRetry(format!("inputResponses: {e}")))?
        .unwrap_or_default();
    let parked = {
        let mut calls = ctx.parked.lock();
        let fits = calls.get(&handle.key).map(|p| {
            p.expires > Instant::now()
                && *p.principal == *call.principal_id()
                && *p.method == *call.method
                && p.name.as_deref() == call.name
        });
        match fits {
            Some(true) => {}
            // Not this caller's, or another request: as if unknown, and
            // left for its owner.
            Some(false) | None => return Err(BadRetry(unknown())),
        }
        let Some(parked) = calls.get(&handle.key) else {
            return Err(BadRetry(unknown()));
        };
        if let Some(missing) = parked
            .asked
            .iter()
            .map(|id| id.trim_matches('"'))
            .find(|key| !responses.contains_key(*key))
        {
            return Err(BadRetry(format!(
                "inputResponses has no answer for {missing:?}"
            )));
        }
        match calls.remove(&handle.key) {
            Some(p) => p,
            None => return Err(BadRetry(unknown())),
        }
    };
    for gateway_id in &parked.asked {
        let Some(result) = responses.get(gateway_id.trim_matches('"')) else {
            continue;
        };
        let answer = format!(r#"{{"jsonrpc":"2.0","id":{gateway_id},"result":{result}}}"#);
        match parked
            .running
            .relay
            .take_answer(gateway_id, &Bytes::from(answer))
        {
            Ok(Some((us, rewritten))) => {
                if let Err(e) = relay::deliver_upstream(&us, rewritten).await {
                    warn!(upstream = %us.server.id, error = %e, "the client's input did not reach the upstream");
                }
            }
            Ok(None) => {}
            Err(e) => debug!(error = %e, "input for a request the upstream no longer waits for"),
        }
    }
    debug!(handle = %handle, "parked call resumed with the client's input");
    Ok(proceed(ctx, parked.running, &call).await)
}

/// Waits for what the call says next: its answer (with this request's id)
/// goes to the client; the upstream's questions park it again.
async fn proceed(ctx: &Arc<Ctx>, mut running: Running, call: &Call<'_>) -> Bytes {
    match running.next(call.id).await {
        Next::Answer(answer) => with_id(answer, call.id),
        Next::Asks(asks) => park(ctx, running, asks, call),
    }
}

/// Keeps the call for the client's retry and tells the client what to
/// answer.
fn park(ctx: &Arc<Ctx>, running: Running, asks: Vec<Captured>, call: &Call<'_>) -> Bytes {
    let refuse = |why: &str| {
        warn!(
            why,
            "a stateless client's call asked for input and cannot wait for it"
        );
        // Dropping `running` ends the call: its upstream is told.
        jsonrpc::error(call.id, jsonrpc::INTERNAL_ERROR, why, None)
    };
    let mut requests = InputRequests::new();
    for ask in &asks {
        let mut message: Map<String, Value> = match serde_json::from_slice(&ask.message) {
            Ok(m) => m,
            Err(_) => return refuse("the upstream's request is not JSON"),
        };
        message.remove("jsonrpc");
        message.remove("id");
        match serde_json::from_value::<InputRequest>(Value::Object(message)) {
            Ok(request) => {
                requests.insert(ask.gateway_id.trim_matches('"').to_owned(), request);
            }
            Err(e) => {
                return refuse(&format!(
                    "the upstream asked for something MRTR cannot carry: {e}"
                ));
            }
        }
    }
    let Some(handle) = Handle::new(ctx.id.slot) else {
        return refuse("no randomness for a requestState");
    };
    {
        let mut calls = ctx.parked.lock();
        if calls.len() >= MAX_PARKED {
            calls.drop_expired();
            if calls.len() >= MAX_PARKED {
                drop(calls);
                return refuse("too many calls are waiting for their clients' input");
            }
        }
        calls.insert(
            handle.key,
            Parked {
                running,
                asked: asks.into_iter().map(|a| a.gateway_id).collect(),
                principal: call.principal_id().into(),
                method: call.method.into(),
                name: call.name.map(Into::into),
                expires: Instant::now()
                    + Duration::from_secs(ctx.live().config.sessions.input_wait_secs),
            },
        );
    }
    info!(handle = %handle, inputs = requests.len(), "call parked until the client answers (MRTR)");
    let result = InputRequiredResult::new(Some(requests), Some(handle.to_string()));
    match serde_json::to_string(&result) {
        Ok(text) => jsonrpc::result(call.id, &text),
        Err(e) => refuse(&format!("input_required: {e}")),
    }
}

/// `answer` with the id of the request that gets it (a retry has its own).
fn with_id(answer: Bytes, id: &str) -> Bytes {
    match jsonrpc::response_kind(&answer, false) {
        Some((current, _)) if current == id => answer,
        _ => std::str::from_utf8(&answer)
            .ok()
            .and_then(|text| jsonrpc::with_member(text, "id", id))
            .map_or(answer, Bytes::from),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_round_trip_and_others_pass() {
        let h = Handle::new(3).expect("random");
        let text = h.to_string();
        assert!(text.starts_with("mcpgw1.3."), "{text}");
        assert_eq!(Handle::parse(&text).expect("ours").expect("valid"), h);
        assert!(
            Handle::parse("opaque-state-1").is_none(),
            "another server's"
        );
        for bad in [
            "mcpgw1.",
            "mcpgw1.x.00",
            "mcpgw1.3.zz",
            "mcpgw1.3.abc",
            "mcpgw1.70000.00000000000000000000000000000000",
        ] {
            assert!(Handle::parse(bad).expect("ours").is_err(), "{bad}");
        }
    }

    #[test]
    fn a_retry_answer_takes_the_retrys_id() {
        let answer = Bytes::from_static(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#);
        let v: Value = serde_json::from_slice(&with_id(answer.clone(), "\"r\"")).expect("json");
        assert_eq!(v["id"], "r");
        assert_eq!(with_id(answer.clone(), "1"), answer);
    }
}
