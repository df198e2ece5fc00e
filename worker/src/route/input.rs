//! A 2026-07-28 upstream's `input_required` answer (MRTR) bridged for a
//! stateful client, which knows nothing of it. Each of the upstream's input
//! requests goes to the client as a server→client request on the call's SSE
//! stream, as a 2025 upstream's own elicitation would; the client's answers
//! are collected, and the request goes to the upstream again with
//! `inputResponses` and the upstream's `requestState`, for as many rounds as
//! the upstream asks (at most [`MAX_ROUNDS`]). The client sees one call that
//! asked it something on the way, the 2025 way.
//!
//! The upstream's answers are read with rmcp's model types (this is not the
//! hot path: a call gets here only when its upstream asked for input). The
//! `requestState` is the upstream's own, passed back untouched; it never
//! reaches the client.

use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use rmcp::model::InputRequiredResult;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, timeout_at};
use tracing::{debug, info, warn};

use crate::http::sse;
use crate::jsonrpc;
use crate::relay::{self, CallGuard, PumpEnd, Relay};
use crate::upstream::{self, UpstreamSession, answer_budget, modern};

/// Rounds of input one request may go through before the gateway gives up
/// (rmcp's clients stop at the same number).
pub(crate) const MAX_ROUNDS: usize = rmcp::model::DEFAULT_MRTR_MAX_ROUNDS;

/// Input requests the 2026-07-28 revision allows in `inputRequests`.
const INPUT_METHODS: [&str; 3] = ["elicitation/create", "sampling/createMessage", "roots/list"];

/// One bridged request, owned, so that it can outlive the handler that
/// returned the stream's head.
pub(crate) struct Bridge {
    pub relay: Arc<Relay>,
    pub upstream: Arc<UpstreamSession>,
    /// The request as sent upstream (its progress token already mapped).
    pub request: Bytes,
    /// The request's id, raw JSON.
    pub id: String,
    /// (gateway token, the client's token) when the client asked for
    /// progress: each round registers it again.
    pub token: Option<(String, Box<str>)>,
    pub deadline: Instant,
    pub closed: watch::Receiver<bool>,
    /// The client's trace context header lines, passed on each round.
    pub trace: Box<[u8]>,
    pub tool_call: bool,
}

/// Why a bridged request ended without the upstream's final answer.
enum Stop {
    /// The client's stream or session went away, or it cancelled: nobody
    /// to tell.
    Gone,
    /// Told to the client as the request's JSON-RPC error.
    Failed(String),
}

impl Bridge {
    /// Runs the rounds, starting from the upstream's first `input_required`
    /// answer. Everything for the client goes on `tx`: the input requests,
    /// progress and notifications of later rounds, and last the upstream's
    /// final answer or the request's error.
    pub(crate) async fn run(self, first: Bytes, tx: mpsc::Sender<Bytes>) {
        let mut answer = first;
        let mut rounds = 0;
        let end = loop {
            if !modern::needs_input(&answer) {
                break Ok(answer);
            }
            if rounds == MAX_ROUNDS {
                break Err(Stop::Failed(format!(
                    "upstream {} asked for input {MAX_ROUNDS} times without finishing",
                    self.upstream.server.id
                )));
            }
            rounds += 1;
            match self.round(&answer, &tx).await {
                Ok(next) => answer = next,
                Err(stop) => break Err(stop),
            }
        };
        let message = match end {
            Ok(answer) => answer,
            Err(Stop::Gone) => return,
            Err(Stop::Failed(why)) => {
                warn!(upstream = %self.upstream.server.id, id = %self.id, error = %why, "bridged input request failed");
                jsonrpc::error(&self.id, jsonrpc::INTERNAL_ERROR, &why, None)
            }
        };
        let _ = tx.send(sse::message_event(&message)).await;
    }

    /// One round: the client answers what `answer` asks, the upstream gets
    /// the request again; returns the upstream's next answer.
    async fn round(&self, answer: &[u8], tx: &mpsc::Sender<Bytes>) -> Result<Bytes, Stop> {
        let asked = parse_input_required(answer).map_err(Stop::Failed)?;
        // Registered for the whole round: a client's cancel ends it.
        let guard = CallGuard::start(&self.relay, &self.upstream, &self.id, self.token.as_ref());
        let responses = tokio::select! {
            r = self.ask_client(&asked, tx) => r?,
            _ = guard.interrupted() => return Err(Stop::Gone),
        };
        let retry = retry_body(&self.request, responses, asked.request_state)
            .ok_or_else(|| Stop::Failed("the request could not be sent again".into()))?;
        self.send(retry, guard, tx).await
    }

    /// Puts each input request to the client and waits for every answer;
    /// returns them by the upstream's keys.
    async fn ask_client(
        &self,
        asked: &InputRequiredResult,
        tx: &mpsc::Sender<Bytes>,
    ) -> Result<Map<String, Value>, Stop> {
        let requests = asked.input_requests.iter().flatten();
        let mut waiting: Vec<(&String, String, oneshot::Receiver<Bytes>)> = Vec::new();
        let result = async {
            for (key, request) in requests {
                let request = serde_json::to_value(request)
                    .map_err(|e| Stop::Failed(format!("input request {key:?}: {e}")))?;
                let method = request["method"].as_str().unwrap_or_default();
                if !INPUT_METHODS.contains(&method) {
                    return Err(Stop::Failed(format!(
                        "upstream {} asked for input with {method:?}, which MRTR does not allow",
                        self.upstream.server.id
                    )));
                }
                let params = request
                    .get("params")
                    .and_then(|p| RawValue::from_string(p.to_string()).ok());
                if let Some(cap) = self.relay.caps.missing_for(method, params.as_deref()) {
                    return Err(Stop::Failed(format!(
                        "upstream {} needs input ({method}) and the client did not declare the {cap} capability",
                        self.upstream.server.id
                    )));
                }
                let (gateway_id, rx) = self.relay.ask().ok_or_else(|| {
                    Stop::Failed("too many requests are waiting for this client".into())
                })?;
                let mut message = Map::new();
                message.insert("jsonrpc".into(), "2.0".into());
                message.insert(
                    "id".into(),
                    serde_json::from_str(&gateway_id).unwrap_or(Value::Null),
                );
                message.insert("method".into(), method.into());
                if let Some(p) = request.get("params") {
                    message.insert("params".into(), p.clone());
                }
                let bytes = serde_json::to_vec(&message)
                    .map_err(|e| Stop::Failed(format!("input request {key:?}: {e}")))?;
                debug!(upstream = %self.upstream.server.id, key = %key, method, gateway_id, "input request put to the client");
                waiting.push((key, gateway_id, rx));
                if tx.send(sse::message_event(&bytes)).await.is_err() {
                    return Err(Stop::Gone);
                }
            }
            let mut responses = Map::new();
            for (key, _, rx) in &mut waiting {
                let mut closed = self.closed.clone();
                let reply = tokio::select! {
                    r = timeout_at(self.deadline, rx) => r,
                    _ = tx.closed() => return Err(Stop::Gone),
                    _ = relay::became_true(&mut closed) => return Err(Stop::Gone),
                };
                let body = match reply {
                    Err(_) => {
                        return Err(Stop::Failed(
                            "the client did not answer the upstream's input request in time"
                                .into(),
                        ));
                    }
                    Ok(Err(_)) => return Err(Stop::Gone),
                    Ok(Ok(body)) => body,
                };
                let mut reply: Map<String, Value> = serde_json::from_slice(&body)
                    .map_err(|e| Stop::Failed(format!("the client's answer: {e}")))?;
                match (reply.remove("result"), reply.remove("error")) {
                    (Some(result), None) => {
                        responses.insert((*key).clone(), result);
                    }
                    (_, Some(error)) => {
                        return Err(Stop::Failed(format!(
                            "the client refused the upstream's input request: {}",
                            error["message"].as_str().unwrap_or("no reason given")
                        )));
                    }
                    (None, None) => {
                        return Err(Stop::Failed(
                            "the client's answer has neither result nor error".into(),
                        ));
                    }
                }
            }
            Ok(responses)
        }
        .await;
        // Answers that did not come are not waited for any more.
        self.relay
            .forget_asked(waiting.iter().map(|(_, id, _)| id.as_str()));
        result
    }

    /// Sends the request again and reads the upstream's answer: a JSON one
    /// whole, an SSE one through the relay (its progress and server
    /// requests reach the client as the round goes).
    async fn send(
        &self,
        retry: Bytes,
        mut guard: CallGuard,
        tx: &mpsc::Sender<Bytes>,
    ) -> Result<Bytes, Stop> {
        let server = &self.upstream.server;
        let failed = |e: upstream::UpstreamError| Stop::Failed(e.to_string());
        let resp = self
            .upstream
            .send_traced(
                retry,
                self.deadline,
                crate::otel::TraceRef {
                    lines: &self.trace,
                    parent: None,
                },
            )
            .await
            .map_err(failed)?;
        let sse = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.trim_start().starts_with("text/event-stream"));
        if !sse {
            guard.finish();
            let body = resp.into_body();
            let unfit = body.unfit();
            let held = answer_budget::read_whole(body, self.deadline)
                .await
                .map_err(|e| failed(server.answer_error(e)))?;
            upstream::check_answer_kind(server, &held.bytes, &self.id, &unfit, self.tool_call)
                .map_err(failed)?;
            return Ok(held.bytes);
        }
        match relay::pump_call(
            self.relay.clone(),
            guard,
            resp.into_body(),
            Some(tx.clone()),
            true,
            self.deadline,
            self.closed.clone(),
        )
        .await
        {
            PumpEnd::Answer(answer) => Ok(answer),
            PumpEnd::ClientGone | PumpEnd::Cancelled => Err(Stop::Gone),
            PumpEnd::Failed(e) => Err(failed(e)),
        }
    }
}

/// The `input_required` result of a JSON-RPC answer.
fn parse_input_required(answer: &[u8]) -> Result<InputRequiredResult, String> {
    #[derive(serde::Deserialize)]
    struct Answer {
        result: InputRequiredResult,
    }
    serde_json::from_slice::<Answer>(answer)
        .map(|a| a.result)
        .map_err(|e| format!("the upstream's input_required result is malformed: {e}"))
}

/// The request again, with the client's answers and the upstream's state.
fn retry_body(
    request: &[u8],
    responses: Map<String, Value>,
    state: Option<String>,
) -> Option<Bytes> {
    let mut message: Map<String, Value> = serde_json::from_slice(request).ok()?;
    let params = message
        .entry("params")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()?;
    params.insert("inputResponses".into(), Value::Object(responses));
    match state {
        Some(state) => params.insert("requestState".into(), state.into()),
        None => params.remove("requestState"),
    };
    info!(
        inputs = params["inputResponses"].as_object().map_or(0, Map::len),
        "sending a request again with the client's input"
    );
    serde_json::to_vec(&message).ok().map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_input_required_answer_is_read_with_its_requests() {
        let answer = br#"{"jsonrpc":"2.0","id":1,"result":{"resultType":"input_required",
            "inputRequests":{"name":{"method":"elicitation/create","params":{"mode":"form",
            "message":"Name?","requestedSchema":{"type":"object","properties":{}}}}},
            "requestState":"s-1"}}"#;
        let asked = parse_input_required(answer).expect("input_required");
        assert_eq!(asked.request_state.as_deref(), Some("s-1"));
        let requests = asked.input_requests.expect("requests");
        let name = serde_json::to_value(&requests["name"]).expect("json");
        assert_eq!(name["method"], "elicitation/create");
        assert_eq!(name["params"]["message"], "Name?");
        assert!(parse_input_required(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#).is_err());
    }

    #[test]
    fn the_retry_carries_the_answers_and_the_state() {
        let request = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"t","requestState":"old"}}"#;
        let mut answers = Map::new();
        answers.insert("name".into(), serde_json::json!({"action": "accept"}));
        let retry = retry_body(request, answers.clone(), Some("new".into())).expect("retry");
        let retry: Value = serde_json::from_slice(&retry).expect("json");
        assert_eq!(retry["id"], 7);
        assert_eq!(retry["params"]["name"], "t");
        assert_eq!(retry["params"]["requestState"], "new");
        assert_eq!(
            retry["params"]["inputResponses"]["name"]["action"],
            "accept"
        );
        let retry = retry_body(
            br#"{"jsonrpc":"2.0","id":7,"method":"prompts/get","params":{"requestState":"old"}}"#,
            answers,
            None,
        )
        .expect("retry");
        let retry: Value = serde_json::from_slice(&retry).expect("json");
        assert!(retry["params"].get("requestState").is_none(), "{retry}");
    }
}
