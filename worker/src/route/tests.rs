//! Routing over several upstreams, driven directly: a [`Source`] that opens
//! upstream sessions itself, and small MCP servers on loopback that say
//! which of them answered. No worker, no supervisor, no session table.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use mcpgw_protocol::config::Upstream;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::upstream::fake::{dead_url, fake_upstream};

use super::env::Env;
use super::reply::Accept;
use super::source::Source;
use crate::endpoints::Endpoint;
use crate::jsonrpc;
use crate::metrics::{Metrics, OutcomeSlot};
use crate::relay::Relay;
use crate::upstream::{UpstreamError, UpstreamServer, UpstreamSession};

const INIT_PARAMS: &str = r#"{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"route-tests","version":"0"}}"#;

/// Routing's view of one client: its endpoint and the upstream sessions it
/// opened, one per upstream.
struct Direct {
    endpoint: Arc<Endpoint>,
    relay: Arc<Relay>,
    opened: Mutex<HashMap<Arc<str>, Arc<UpstreamSession>>>,
    closed: watch::Sender<bool>,
    /// The process-wide answer budget, shared with the other tests that
    /// read answers while this one lives.
    _budget: std::sync::RwLockReadGuard<'static, ()>,
}

impl Direct {
    fn new(upstreams: &[(&str, &str)]) -> Self {
        // The worker sizes the process-wide answer budget at start; tests
        // share the process, and so the budget.
        let budget = crate::upstream::answer_budget::shared_for_tests();
        let upstreams = upstreams
            .iter()
            .map(|(id, url)| {
                Arc::new(UpstreamServer::new(&Upstream::http(id, url), None).expect("upstream"))
            })
            .collect();
        Self {
            endpoint: Arc::new(Endpoint {
                path: "/mcp".into(),
                upstreams,
                separator: "__".into(),
                authz: None,
                limiter: None,
            }),
            relay: Arc::new(Relay::new(INIT_PARAMS)),
            opened: Mutex::new(HashMap::new()),
            closed: watch::Sender::new(false),
            _budget: budget,
        }
    }

    fn opened(&self) -> Vec<Arc<str>> {
        let mut ids: Vec<_> = self.opened.lock().expect("lock").keys().cloned().collect();
        ids.sort();
        ids
    }
}

impl Source for Direct {
    fn endpoint(&self) -> Arc<Endpoint> {
        self.endpoint.clone()
    }

    fn who(&self) -> &dyn fmt::Display {
        &"route-test"
    }

    fn relay(&self) -> &Arc<Relay> {
        &self.relay
    }

    fn closed(&self) -> watch::Receiver<bool> {
        self.closed.subscribe()
    }

    async fn upstream(
        &self,
        server: &Arc<UpstreamServer>,
    ) -> Result<Arc<UpstreamSession>, UpstreamError> {
        if let Some(us) = self.opened.lock().expect("lock").get(&server.id) {
            return Ok(us.clone());
        }
        let us = UpstreamSession::initialize(server.clone(), INIT_PARAMS).await?;
        self.opened
            .lock()
            .expect("lock")
            .insert(server.id.clone(), us.clone());
        Ok(us)
    }

    async fn evict(&self, failed: &Arc<UpstreamSession>, _why: &UpstreamError) {
        self.opened.lock().expect("lock").remove(&failed.server.id);
    }
}

/// Route one request as a JSON client would; its answer, parsed.
async fn route(src: &Direct, method: &str, params: Value) -> Value {
    let body = Bytes::from(
        json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params}).to_string(),
    );
    let metrics = Metrics::new().expect("metrics");
    let outcome = OutcomeSlot::new();
    let ctx = Env {
        metrics: &metrics,
        outcome: &outcome,
        tool_call: false,
        learns_tools: false,
        notes_route: false,
        caller: None,
    };
    let env = jsonrpc::parse(&body).expect("envelope");
    let accept = Accept {
        json: true,
        sse: false,
    };
    let resp = super::request(ctx, src, method, &env, &body, accept).await;
    assert_eq!(resp.status(), StatusCode::OK, "{method}");
    let bytes = resp
        .into_body()
        .collect()
        .await
        .expect("answer body")
        .to_bytes();
    serde_json::from_slice(&bytes).expect("answer is JSON")
}

fn text(answer: &Value) -> &str {
    answer["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text in {answer}"))
}

#[tokio::test]
async fn a_namespaced_name_reaches_its_upstream_under_its_own_name() {
    let (a, b) = (fake_upstream("a").await, fake_upstream("b").await);
    let src = Direct::new(&[("a", &a.url), ("b", &b.url)]);

    let answer = route(&src, "tools/call", json!({"name": "b__echo"})).await;
    assert_eq!(text(&answer), "b:echo");
    // Only the upstream that was needed has an upstream session.
    assert_eq!(src.opened(), vec![Arc::from("b")]);

    let answer = route(&src, "tools/call", json!({"name": "a__echo"})).await;
    assert_eq!(text(&answer), "a:echo");

    let unknown = route(&src, "tools/call", json!({"name": "c__echo"})).await;
    assert_eq!(unknown["error"]["code"], jsonrpc::INVALID_PARAMS);
    assert_eq!(src.opened().len(), 2);
}

#[tokio::test]
async fn one_upstream_is_transparent() {
    let a = fake_upstream("a").await;
    let src = Direct::new(&[("a", &a.url)]);
    let answer = route(&src, "tools/call", json!({"name": "echo"})).await;
    assert_eq!(text(&answer), "a:echo");
    let list = route(&src, "tools/list", json!({})).await;
    assert_eq!(list["result"]["tools"][0]["name"], "echo");
}

#[tokio::test]
async fn a_merged_list_leaves_out_a_failing_upstream_and_keeps_the_order() {
    let (a, b) = (fake_upstream("a").await, fake_upstream("b").await);
    let dead = dead_url().await;
    let src = Direct::new(&[("a", &a.url), ("down", &dead), ("b", &b.url)]);

    let list = route(&src, "tools/list", json!({})).await;
    let names: Vec<&str> = list["result"]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, ["a__echo", "a__slow", "b__echo", "b__slow"]);

    // A call to the failing upstream is an error for that call only.
    let failed = route(&src, "tools/call", json!({"name": "down__echo"})).await;
    assert_eq!(failed["error"]["code"], jsonrpc::INTERNAL_ERROR);
    let answer = route(&src, "tools/call", json!({"name": "b__echo"})).await;
    assert_eq!(text(&answer), "b:echo");
}

#[tokio::test]
async fn a_merged_list_has_the_smallest_ttl_and_is_private_if_any_part_is() {
    let hints = |list: &Value| {
        (
            list["result"]["ttlMs"].clone(),
            list["result"]["cacheScope"].clone(),
        )
    };
    let (p500, p200) = (
        fake_upstream("public500").await,
        fake_upstream("public200").await,
    );
    let src = Direct::new(&[("a", &p500.url), ("b", &p200.url)]);
    let list = route(&src, "tools/list", json!({})).await;
    assert_eq!(hints(&list), (json!(200), json!("public")), "{list}");

    let private = fake_upstream("private300").await;
    let src = Direct::new(&[("a", &p500.url), ("b", &private.url)]);
    let list = route(&src, "tools/list", json!({})).await;
    assert_eq!(hints(&list), (json!(300), json!("private")), "{list}");

    // A part without hints (a stateful upstream), or one left out: no hints at all.
    let plain = fake_upstream("plain").await;
    let src = Direct::new(&[("a", &p500.url), ("b", &plain.url)]);
    let list = route(&src, "tools/list", json!({})).await;
    assert_eq!(hints(&list), (Value::Null, Value::Null), "{list}");
    let dead = dead_url().await;
    let src = Direct::new(&[("a", &p500.url), ("down", &dead)]);
    let list = route(&src, "tools/list", json!({})).await;
    assert_eq!(hints(&list), (Value::Null, Value::Null), "{list}");
}

#[tokio::test]
async fn a_resource_uri_is_routed_to_the_upstream_that_knows_it() {
    let (a, b) = (fake_upstream("a").await, fake_upstream("b").await);
    let src = Direct::new(&[("a", &a.url), ("b", &b.url)]);

    // Not listed yet: each upstream is asked in turn.
    let read = route(&src, "resources/read", json!({"uri": "mem://b/doc"})).await;
    assert_eq!(read["result"]["contents"][0]["text"], "b");
    let learned = src.relay.resource_routes.lock().expect("lock").clone();
    assert_eq!(learned.get("mem://b/doc").map(|id| &**id), Some("b"));

    // Listed: the list teaches the route of each URI.
    let list = route(&src, "resources/list", json!({})).await;
    assert_eq!(
        list["result"]["resources"].as_array().map(Vec::len),
        Some(2)
    );
    let learned = src.relay.resource_routes.lock().expect("lock").clone();
    assert_eq!(learned.get("mem://a/doc").map(|id| &**id), Some("a"));

    let missing = route(&src, "resources/read", json!({"uri": "mem://c/doc"})).await;
    assert_eq!(missing["error"]["code"], super::RESOURCE_NOT_FOUND);
}

#[tokio::test]
async fn a_cancellation_targets_the_upstream_that_runs_the_call() {
    let (a, b) = (fake_upstream("a").await, fake_upstream("b").await);
    let src = Direct::new(&[("a", &a.url), ("b", &b.url)]);

    let call = route(&src, "tools/call", json!({"name": "b__slow"}));
    let cancel = async {
        let params =
            serde_json::value::RawValue::from_string(r#"{"requestId":7}"#.to_owned()).expect("raw");
        // Registered once the call is on its way: poll the relay until then.
        let target = loop {
            if let Some(target) = src.relay.cancel_target(Some(&params)) {
                break target;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        };
        assert_eq!(&*target.upstream().server.id, "b");
        target.interrupt();
    };
    let (answer, ()) = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        tokio::join!(call, cancel)
    })
    .await
    .expect("the cancelled call ends");
    assert_eq!(answer["error"]["code"], super::reply::REQUEST_CANCELLED);
    b.release.notify_waiters();
    drop(a);
}
