//! `subscriptions/listen` of a stateless (2026-07-28) client: the one
//! request whose answer is a stream. It replaces the stateful era's GET
//! stream and `resources/subscribe`.
//!
//! The gateway opens upstream sessions of the subscription's own (one per
//! upstream, declaring no client capabilities: nothing on them could be
//! answered), follows each one's GET stream and subscribes to the asked
//! resources at their owners. Once every upstream has answered (stream
//! open or refused, subscription taken or not), the client gets the
//! acknowledgement: the part of its filter that some upstream can honour.
//! From then on each notification of a requested kind goes to the client
//! tagged with the subscription id (the id of the listen request), and
//! nothing else does. The stream ends when the client goes away, or, with
//! the listen request's result (the revision's graceful end), when the
//! worker stops or no upstream can send any more; the upstream sessions
//! close with it.
//!
//! An upstream of the stateless revision has no session or GET stream: it
//! gets a `subscriptions/listen` of its own with the client's filter, and
//! its acknowledgement counts as its answer; what it sends after is
//! filtered and tagged like the rest (its own subscription id replaced).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Response};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, timeout_at};
use tracing::{debug, info};

use crate::auth::Principal;
use crate::ctx::Ctx;
use crate::endpoints::Endpoint;
use crate::front::stateless::UPSTREAM_VERSION;
use crate::front::stateless::meta::{Refusal, RequestMeta};
use crate::http::body::{self, Body};
use crate::http::sse;
use crate::jsonrpc::{self, Answer};
use crate::relay;
use crate::route;
use crate::route::reply::Accept;
use crate::route::source::{PerRequest, Source};
use crate::upstream::UpstreamSession;

/// Resources one subscription may name.
const MAX_RESOURCES: usize = 256;
/// How often an idle subscription stream carries a comment, so that
/// proxies do not time it out.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// The `_meta` key that tags every message of a subscription.
const SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";

/// The notifications a client asks for (`params.notifications`), or the
/// part of them the gateway honours.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct Filter {
    #[serde(default)]
    tools_list_changed: bool,
    #[serde(default)]
    prompts_list_changed: bool,
    #[serde(default)]
    resources_list_changed: bool,
    #[serde(default)]
    resource_subscriptions: Vec<String>,
}

impl Filter {
    /// The filter from the request's params; a refusal says what is wrong.
    fn of(params: Option<&RawValue>) -> Result<Self, Refusal> {
        #[derive(Deserialize)]
        struct P {
            notifications: Option<Filter>,
        }
        let p = params
            .map(|p| serde_json::from_str::<P>(p.get()))
            .transpose()
            .map_err(|e| Refusal::Meta(format!("subscriptions/listen params: {e}")))?;
        let filter = p.and_then(|p| p.notifications).ok_or_else(|| {
            Refusal::Meta("subscriptions/listen needs params.notifications".into())
        })?;
        if filter.resource_subscriptions.len() > MAX_RESOURCES {
            return Err(Refusal::Meta(format!(
                "subscriptions/listen names {} resources; at most {MAX_RESOURCES}",
                filter.resource_subscriptions.len()
            )));
        }
        Ok(filter)
    }

    /// As JSON, for the acknowledgement: only what is on.
    fn to_json(&self) -> Value {
        let mut o = serde_json::Map::new();
        for (key, on) in [
            ("toolsListChanged", self.tools_list_changed),
            ("promptsListChanged", self.prompts_list_changed),
            ("resourcesListChanged", self.resources_list_changed),
        ] {
            if on {
                o.insert(key.into(), Value::Bool(true));
            }
        }
        if !self.resource_subscriptions.is_empty() {
            o.insert(
                "resourceSubscriptions".into(),
                Value::from(self.resource_subscriptions.clone()),
            );
        }
        Value::Object(o)
    }

    /// Whether a notification with this method and params is asked for.
    fn wants(&self, method: &str, params: Option<&Value>) -> bool {
        match method {
            "notifications/tools/list_changed" => self.tools_list_changed,
            "notifications/prompts/list_changed" => self.prompts_list_changed,
            "notifications/resources/list_changed" => self.resources_list_changed,
            "notifications/resources/updated" => params
                .and_then(|p| p.get("uri"))
                .and_then(Value::as_str)
                .is_some_and(|uri| self.resource_subscriptions.iter().any(|s| s == uri)),
            _ => false,
        }
    }
}

/// What an upstream's `initialize` answer says it can notify of.
#[derive(Default)]
struct Notifies {
    tools: bool,
    prompts: bool,
    resources: bool,
}

impl Notifies {
    fn of(us: &UpstreamSession) -> Self {
        let caps: Value = serde_json::from_str(us.capabilities()).unwrap_or(Value::Null);
        let list_changed = |kind: &str| caps[kind]["listChanged"] == Value::Bool(true);
        Self {
            tools: list_changed("tools"),
            prompts: list_changed("prompts"),
            resources: list_changed("resources"),
        }
    }
}

/// Serve one `subscriptions/listen` (its `_meta` and headers already
/// checked) of `principal`. Refusals are returned for the caller to answer.
pub(crate) async fn serve(
    ctx: &Arc<Ctx>,
    endpoint: Arc<Endpoint>,
    accept: Accept,
    meta: &RequestMeta<'_>,
    id: &str,
    params: Option<&RawValue>,
    principal: Option<&Principal>,
) -> Result<Response<Body>, Refusal> {
    if !accept.sse {
        return Err(Refusal::Invalid(
            "subscriptions/listen answers with a stream: Accept must include text/event-stream"
                .into(),
        ));
    }
    let mut asked = Filter::of(params)?;
    // Resources the caller may not use are left out of the subscription
    // before any upstream hears of them: the acknowledgement then omits
    // them, as it omits resources no upstream knows.
    if let Some(rules) = &endpoint.authz {
        let claims = principal.map(Principal::claims);
        asked
            .resource_subscriptions
            .retain(|uri| rules.check(&ctx.metrics, crate::authz::Kind::Resource, uri, claims));
    }
    let deadline = Instant::now()
        + endpoint
            .upstreams
            .iter()
            .map(|u| u.request_timeout())
            .max()
            .unwrap_or(Duration::from_secs(30));
    let src = PerRequest::new(
        ctx.registry.clone(),
        endpoint,
        meta.listener_init_params(UPSTREAM_VERSION.as_str()),
    );
    let opened = src.open_all().await;

    // Streams first, so that nothing said after a subscription is taken
    // can be missed.
    let (alive_tx, alive) = watch::channel(());
    let (raw_tx, raw_rx) = mpsc::channel::<Bytes>(relay::STREAM_QUEUE);
    let (modern, followed): (Vec<_>, Vec<_>) = opened.iter().partition(|us| us.is_modern());
    let acks = followed
        .iter()
        .map(|us| relay::follow(src.relay(), us, alive.clone(), raw_tx.clone()));
    let acks = join_all(
        acks.map(|ack| async move { matches!(timeout_at(deadline, ack).await, Ok(Ok(true))) }),
    );
    let asked_json = asked.to_json().to_string();
    let modern_acks = join_all(modern.iter().map(|us| async {
        let ack = relay::follow_modern(
            src.relay(),
            us,
            &asked_json,
            deadline,
            alive.clone(),
            raw_tx.clone(),
        )
        .await?;
        serde_json::from_value::<Filter>(ack).ok()
    }));
    let (acks, modern_acks) = tokio::join!(acks, modern_acks);
    drop(raw_tx);
    let mut honoured = Filter::default();
    for (us, ack) in modern.iter().zip(modern_acks) {
        let Some(ack) = ack else {
            debug!(upstream = %us.server.id, "no subscription at this stateless upstream");
            continue;
        };
        honoured.tools_list_changed |= asked.tools_list_changed && ack.tools_list_changed;
        honoured.prompts_list_changed |= asked.prompts_list_changed && ack.prompts_list_changed;
        honoured.resources_list_changed |=
            asked.resources_list_changed && ack.resources_list_changed;
        for uri in ack.resource_subscriptions {
            if asked.resource_subscriptions.contains(&uri)
                && !honoured.resource_subscriptions.contains(&uri)
            {
                honoured.resource_subscriptions.push(uri);
            }
        }
    }
    for (us, streaming) in followed.iter().zip(acks) {
        if !streaming {
            debug!(upstream = %us.server.id, "no GET stream; its list changes are not followed");
            continue;
        }
        let can = Notifies::of(us);
        honoured.tools_list_changed |= asked.tools_list_changed && can.tools;
        honoured.prompts_list_changed |= asked.prompts_list_changed && can.prompts;
        honoured.resources_list_changed |= asked.resources_list_changed && can.resources;
    }
    // URIs a stateless upstream took are its; the rest go to the session
    // upstreams that own them.
    let rest: Vec<&String> = asked
        .resource_subscriptions
        .iter()
        .filter(|uri| !honoured.resource_subscriptions.contains(uri))
        .collect();
    let subscribed = if followed.is_empty() {
        vec![false; rest.len()]
    } else {
        join_all(
            rest.iter()
                .enumerate()
                .map(|(n, uri)| subscribe(ctx, &src, uri, n)),
        )
        .await
    };
    honoured.resource_subscriptions.extend(
        rest.into_iter()
            .zip(subscribed)
            .filter(|(_, ok)| *ok)
            .map(|(uri, _)| uri.clone()),
    );

    let tag: Value = serde_json::from_str(id).unwrap_or(Value::Null);
    let ack = serde_json::json!({
        "jsonrpc": "2.0",
        "method": "notifications/subscriptions/acknowledged",
        "params": {"notifications": honoured.to_json(), "_meta": {SUBSCRIPTION_ID: tag}},
    });
    info!(
        upstreams = followed.len() + modern.len(),
        asked = %asked.to_json(),
        honoured = %honoured.to_json(),
        "subscription opened"
    );
    let (tx, rx) = mpsc::channel::<Bytes>(relay::STREAM_QUEUE);
    // The channel is new and holds one slot at least: this cannot wait.
    let _ = tx.try_send(sse::message_event(ack.to_string().as_bytes()));
    tokio::spawn(deliver(
        src,
        honoured,
        tag,
        raw_rx,
        tx,
        ctx.stopping.clone(),
        alive_tx,
    ));
    let mut r = Response::new(body::channel(rx));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(r)
}

/// `resources/subscribe` of `uri` at its owner, as routing finds it.
async fn subscribe(ctx: &Arc<Ctx>, src: &PerRequest, uri: &str, n: usize) -> bool {
    let id = format!("\"mcpgw:l{n}\"");
    let mut body = String::with_capacity(96 + uri.len());
    body.push_str("{\"jsonrpc\":\"2.0\",\"id\":");
    body.push_str(&id);
    body.push_str(",\"method\":\"resources/subscribe\",\"params\":{\"uri\":");
    jsonrpc::push_json_string(&mut body, uri);
    body.push_str("}}");
    let outcome = crate::metrics::OutcomeSlot::default();
    let whole = Accept {
        json: true,
        sse: false,
    };
    let resp = route::by_uri(
        ctx.route_env(&outcome, None),
        src,
        uri,
        Bytes::from(body),
        &id,
        whole,
        false,
    )
    .await;
    let Ok(answer) = resp.into_body().collect().await.map(|b| b.to_bytes()) else {
        return false;
    };
    let taken = matches!(jsonrpc::answer(&answer), Some(Answer::Result(_)));
    if !taken {
        debug!(uri, "resource subscription not taken by any upstream");
    }
    taken
}

/// Pass the notifications the client asked for to its stream, tagged,
/// until the client goes away or the worker stops; then the upstream
/// streams stop (`alive` dropped) and the upstream sessions close (`src`
/// dropped).
async fn deliver(
    src: PerRequest,
    honoured: Filter,
    tag: Value,
    mut raw: mpsc::Receiver<Bytes>,
    tx: mpsc::Sender<Bytes>,
    mut stopping: watch::Receiver<bool>,
    alive: watch::Sender<()>,
) {
    let mut tick = tokio::time::interval(KEEPALIVE);
    tick.tick().await;
    let graceful = loop {
        let out = tokio::select! {
            message = raw.recv() => match message {
                Some(m) => tagged(&m, &honoured, &tag),
                // Every upstream stream gave up: nothing more can come.
                None => break true,
            },
            _ = tick.tick() => Some(Bytes::from_static(b": keep-alive\n\n")),
            _ = tx.closed() => break false,
            _ = relay::became_true(&mut stopping) => break true,
        };
        if let Some(out) = out
            && tx.send(out).await.is_err()
        {
            break false;
        }
    };
    if graceful {
        // The revision's graceful end: the listen request's own result.
        // Best effort: a client that does not read gets its stream closed.
        let id = tag.to_string();
        let result = serde_json::json!({"resultType": "complete", "_meta": {SUBSCRIPTION_ID: tag}});
        let _ = tx.try_send(sse::message_event(&jsonrpc::result(
            &id,
            &result.to_string(),
        )));
    }
    debug!("subscription ended");
    drop(alive);
    drop(src);
}

/// The client's copy of an upstream message, if it is a notification the
/// client asked for: as an SSE event, with the subscription id in its
/// `params._meta`.
fn tagged(message: &[u8], honoured: &Filter, tag: &Value) -> Option<Bytes> {
    let mut m: Value = serde_json::from_slice(message).ok()?;
    if m.get("id").is_some() {
        // A request or answer: never part of a subscription.
        return None;
    }
    let method = m.get("method")?.as_str()?;
    if !honoured.wants(method, m.get("params")) {
        return None;
    }
    let params = m
        .as_object_mut()?
        .entry("params")
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    let meta = params
        .as_object_mut()?
        .entry("_meta")
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    meta.as_object_mut()?
        .insert(SUBSCRIPTION_ID.into(), tag.clone());
    Some(sse::message_event(m.to_string().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).expect("json")
    }

    #[test]
    fn the_filter_is_read_and_bounded() {
        let f = Filter::of(Some(&raw(
            r#"{"notifications":{"toolsListChanged":true,"resourceSubscriptions":["a://b"]}}"#,
        )))
        .expect("filter");
        assert!(f.tools_list_changed && !f.prompts_list_changed);
        assert_eq!(f.resource_subscriptions, ["a://b"]);
        assert!(Filter::of(None).is_err());
        assert!(Filter::of(Some(&raw("{}"))).is_err());
        assert!(Filter::of(Some(&raw(r#"{"notifications":{"toolsListChanged":1}}"#))).is_err());
        let many: Vec<String> = (0..=MAX_RESOURCES).map(|n| format!("r://{n}")).collect();
        let body = serde_json::json!({"notifications": {"resourceSubscriptions": many}});
        assert!(Filter::of(Some(&raw(&body.to_string()))).is_err());
    }

    #[test]
    fn only_asked_notifications_pass_tagged() {
        let f = Filter {
            tools_list_changed: true,
            resource_subscriptions: vec!["counter://value".into()],
            ..Filter::default()
        };
        let tag = Value::from(7);
        let event = tagged(
            br#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}"#,
            &f,
            &tag,
        )
        .expect("passes");
        let text = std::str::from_utf8(&event).expect("utf8");
        assert!(
            text.contains(r#""_meta":{"io.modelcontextprotocol/subscriptionId":7}"#),
            "{text}"
        );
        let updated = |uri: &str| {
            format!(
                r#"{{"jsonrpc":"2.0","method":"notifications/resources/updated","params":{{"uri":"{uri}","_meta":{{"x":1}}}}}}"#
            )
        };
        let kept = tagged(updated("counter://value").as_bytes(), &f, &tag).expect("asked uri");
        let text = std::str::from_utf8(&kept).expect("utf8");
        assert!(
            text.contains(r#""x":1"#) && text.contains("subscriptionId"),
            "{text}"
        );
        assert!(tagged(updated("other://x").as_bytes(), &f, &tag).is_none());
        for other in [
            r#"{"jsonrpc":"2.0","method":"notifications/prompts/list_changed"}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"notifications/tools/list_changed"}"#,
            r#"{"jsonrpc":"2.0","id":"mcpgw:s1","method":"ping"}"#,
            "not json",
        ] {
            assert!(tagged(other.as_bytes(), &f, &tag).is_none(), "{other}");
        }
    }

    #[test]
    fn the_acknowledgement_lists_only_what_is_on() {
        let f = Filter {
            prompts_list_changed: true,
            ..Filter::default()
        };
        assert_eq!(f.to_json(), serde_json::json!({"promptsListChanged": true}));
        assert_eq!(Filter::default().to_json(), serde_json::json!({}));
    }
}
