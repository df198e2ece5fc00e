//! The stateless MCP revision (2026-07-28) in front of stateful upstreams, end to end
//! through the real `mcpgw` binary, with hand-written HTTP requests
//! ([`mcpgw_tests::stateless`]):
//!
//! - `server/discover`: every version served, the endpoint's capabilities and
//!   `serverInfo` (the upstream's for one upstream, the gateway's and merged for
//!   several), no caching, no session;
//! - stateless requests get upstream sessions of their own, opened per request and
//!   closed after it, so no two requests (concurrent or not) share upstream state;
//!   every result is completed with `resultType`, lists and reads with cache hints;
//! - `Mcp-Name` in its `=?base64?…?=` form;
//! - every refusal the revision defines (HTTP status and JSON-RPC code), none of which
//!   reaches an upstream or disturbs another client;
//! - a stateful session and stateless requests side by side on one gateway;
//! - `mcpgw_requests_total` counts stateless requests by method and outcome;
//! - `subscriptions/listen`: acknowledged with what the upstreams can honour, then only
//!   the asked notifications, tagged; its upstream session closes with the stream.

use std::sync::Arc;
use std::time::Duration;

use mcpgw_tests::http::{HttpConn, Request, Response};
use mcpgw_tests::mcp::{SESSION_HEADER, VERSION_HEADER};
use mcpgw_tests::ops::{admin_get, metric_sum};
use mcpgw_tests::stateless::{
    self, META_CAPABILITIES, METHOD_HEADER, MODERN_VERSION, NAME_HEADER, StatelessClient,
};
use mcpgw_tests::stream::MessageStream;
use mcpgw_tests::{
    CounterOpts, CounterServer, Gateway, GatewayConfig, RpcReply, Stats, WorkerTag, start_counter,
    wait_until,
};
use serde_json::{Value, json};

/// The counter-server's tools, by their own names.
const COUNTER_TOOLS: [&str; 4] = ["fail", "get_count", "increment", "slow"];

/// What `server/discover` lists, newest first.
const SUPPORTED: [&str; 4] = ["2026-07-28", "2025-11-25", "2025-06-18", "2025-03-26"];

/// How long upstream sessions closed in the background may take to be gone.
const CLOSE_WITHIN: Duration = Duration::from_secs(15);

/// One counter-server behind a gateway with `workers` workers on `/mcp`, without the
/// warm pool, so that every upstream session the counter sees is one request's own
/// (the pool has a test of its own below).
fn counter_behind_gateway(workers: usize) -> (CounterServer, Gateway) {
    let counter = start_counter!().expect("start counter-server");
    let gateway = Gateway::start(&no_warm_pool(
        GatewayConfig::new(workers).upstream("counter", &counter.url()),
    ))
    .expect("start mcpgw");
    (counter, gateway)
}

fn no_warm_pool(mut config: GatewayConfig) -> GatewayConfig {
    config
        .extra
        .push_str("\n[sessions]\nstateless_warm_sessions = 0\n");
    config
}

fn stateless_client(gateway: &Gateway) -> StatelessClient {
    StatelessClient::new(gateway.addr, "/mcp")
}

/// Waits until every upstream session the counter saw opened has been closed again
/// (stateless requests close theirs in the background), and returns its stats.
async fn wait_all_closed(counter: &CounterServer) -> Stats {
    wait_until(
        "every upstream session closed (live_sessions 0, one DELETE per initialize)",
        CLOSE_WITHIN,
        || async {
            let stats = counter.stats().await?;
            Ok((stats.live_sessions == 0 && stats.delete == stats.initialize).then_some(stats))
        },
    )
    .await
    .expect("upstream sessions of stateless requests are closed")
}

/// A stateless answer: HTTP 200, JSON, no session id, a result with `resultType`.
fn assert_complete(reply: &RpcReply) -> &Value {
    assert_eq!(reply.status(), 200, "{}", reply.message);
    assert_eq!(
        reply.response.media_type().as_deref(),
        Some("application/json")
    );
    assert_eq!(
        reply.response.header(SESSION_HEADER),
        None,
        "a stateless answer mints no session"
    );
    let result = reply.result().expect("a result");
    assert_eq!(result["resultType"], "complete", "{result}");
    result
}

/// A refusal: `status`, the JSON-RPC error `code`, and the request's own id.
fn assert_refused(reply: &RpcReply, id: &Value, status: u16, code: i64, what: &str) {
    assert_eq!(reply.status(), status, "{what}: {}", reply.message);
    let (got, message) = reply
        .error()
        .unwrap_or_else(|| panic!("{what}: expected an error, got {}", reply.message));
    assert_eq!(got, code, "{what}: {message}");
    assert!(!message.is_empty(), "{what}: an empty error message");
    assert_eq!(&reply.message["id"], id, "{what}: {}", reply.message);
    assert_eq!(reply.response.header(SESSION_HEADER), None, "{what}");
}

fn increment_params() -> Value {
    json!({"name": "increment", "arguments": {}})
}

/// The names of a `tools/list` result's tools, sorted.
fn tool_names(result: &Value) -> Vec<String> {
    let mut names: Vec<String> = result["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("no tools in {result}"))
        .iter()
        .map(|t| t["name"].as_str().expect("tool name").to_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_answers_who_the_endpoint_is_without_a_session() {
    let (counter, gateway) = counter_behind_gateway(2);

    // Exactly the request of the revision, written out in full.
    let body = json!({
        "jsonrpc": "2.0",
        "id": 1,
        "method": "server/discover",
        "params": {"_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
        }},
    });
    let request = Request::post("/mcp", body.to_string())
        .header("Content-Type", "application/json")
        .header("Accept", "application/json, text/event-stream")
        .header("MCP-Protocol-Version", "2026-07-28")
        .header("Mcp-Method", "server/discover");
    let response = stateless::send(gateway.addr, &request)
        .await
        .expect("server/discover");
    let reply = RpcReply::from_response(response, &json!(1)).expect("an answer to id 1");
    let result = assert_complete(&reply);
    assert_eq!(result["supportedVersions"], json!(SUPPORTED), "{result}");
    assert!(result["capabilities"]["tools"].is_object(), "{result}");
    assert_eq!(result["ttlMs"], 0, "{result}");
    assert_eq!(result["cacheScope"], "private", "{result}");
    let server_info = &result["_meta"]["io.modelcontextprotocol/serverInfo"];
    assert_eq!(server_info["name"], "counter", "{result}");

    // One upstream: the same identity a stateful client gets from initialize.
    let mut session = gateway.client();
    let init = session.initialize().await.expect("initialize");
    let init = init.result().expect("initialize result");
    assert_eq!(result["capabilities"], init["capabilities"], "{result}");
    assert_eq!(server_info, &init["serverInfo"], "{result}");

    // The discover's upstream session was its own, and is closed again; the
    // stateful session's stays open.
    wait_until(
        "the discover's upstream session closed",
        CLOSE_WITHIN,
        || async {
            let stats = counter.stats().await?;
            Ok(
                (stats.initialize == 2 && stats.live_sessions == 1 && stats.delete == 1)
                    .then_some(()),
            )
        },
    )
    .await
    .expect("one upstream session per discover, closed after it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_of_a_federated_endpoint_is_the_gateways_with_merged_capabilities() {
    let a = start_counter!(CounterOpts::named("a")).expect("start a");
    let b = start_counter!(CounterOpts::named("b")).expect("start b");
    let gateway = Gateway::start(&no_warm_pool(
        GatewayConfig::new(2)
            .upstream("a", &a.url())
            .upstream("b", &b.url()),
    ))
    .expect("start mcpgw");

    let reply = stateless_client(&gateway)
        .request("server/discover", Value::Null)
        .await
        .expect("server/discover");
    let result = assert_complete(&reply);
    assert_eq!(result["supportedVersions"], json!(SUPPORTED), "{result}");
    assert_eq!(result["ttlMs"], 0, "{result}");
    assert_eq!(result["cacheScope"], "private", "{result}");
    assert_eq!(
        result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"], "mcpgw",
        "{result}"
    );
    let caps = &result["capabilities"];
    assert!(caps["tools"].is_object(), "{result}");
    assert_eq!(caps["prompts"], json!({}), "{result}");

    // Merged as for initialize.
    let mut session = gateway.client();
    let init = session.initialize().await.expect("initialize");
    let init = init.result().expect("initialize result");
    assert_eq!(caps, &init["capabilities"], "{result}");
    assert_eq!(
        result["_meta"]["io.modelcontextprotocol/serverInfo"], init["serverInfo"],
        "{result}"
    );

    // Each upstream saw one upstream session for the discover (closed again) and one
    // for the stateful session.
    for counter in [&a, &b] {
        wait_until(
            "the discover's upstream sessions closed",
            CLOSE_WITHIN,
            || async {
                let stats = counter.stats().await?;
                Ok(
                    (stats.initialize == 2 && stats.live_sessions == 1 && stats.delete == 1)
                        .then_some(()),
                )
            },
        )
        .await
        .unwrap_or_else(|e| panic!("upstream {}: {e:#}", counter.name));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_stateless_request_has_upstream_sessions_of_its_own() {
    let (counter, gateway) = counter_behind_gateway(2);
    let mut client = stateless_client(&gateway);

    for _ in 0..2 {
        let reply = client
            .request("tools/call", increment_params())
            .await
            .expect("tools/call increment");
        assert_complete(&reply);
        assert_eq!(
            reply.count().expect("count"),
            1,
            "a stateless request starts from a fresh upstream session"
        );
    }

    let reply = client
        .request("tools/list", Value::Null)
        .await
        .expect("tools/list");
    let result = assert_complete(&reply);
    assert_eq!(result["ttlMs"], 0, "{result}");
    assert_eq!(result["cacheScope"], "private", "{result}");
    assert_eq!(tool_names(result), COUNTER_TOOLS, "{result}");

    let reply = client
        .request("resources/read", json!({"uri": "counter://value"}))
        .await
        .expect("resources/read");
    let result = assert_complete(&reply);
    assert_eq!(result["ttlMs"], 0, "{result}");
    assert_eq!(result["cacheScope"], "private", "{result}");
    assert_eq!(result["contents"][0]["text"], "0", "{result}");

    // Four requests, four upstream sessions, all closed again; two calls.
    let stats = wait_all_closed(&counter).await;
    assert_eq!(stats.initialize, 4, "{stats:?}");
    assert_eq!(stats.tools_call, 2, "{stats:?}");

    // Concurrent stateless clients never see each other's counts.
    const CONCURRENT: usize = 8;
    let barrier = Arc::new(tokio::sync::Barrier::new(CONCURRENT));
    let tasks: Vec<_> = (0..CONCURRENT)
        .map(|_| {
            let barrier = barrier.clone();
            let mut client = stateless_client(&gateway);
            tokio::spawn(async move {
                barrier.wait().await;
                client.count("increment").await
            })
        })
        .collect();
    for task in tasks {
        let count = task.await.expect("task").expect("concurrent increment");
        assert_eq!(count, 1, "a concurrent stateless call saw another's count");
    }
    let stats = wait_all_closed(&counter).await;
    assert_eq!(stats.initialize, 4 + CONCURRENT as u64, "{stats:?}");
    assert_eq!(stats.tools_call, 2 + CONCURRENT as u64, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_name_in_the_base64_form_is_accepted() {
    let (counter, gateway) = counter_behind_gateway(1);
    let mut client = stateless_client(&gateway);
    let (id, request) = client.prepare("tools/call", increment_params());
    // Standard base64 of "increment".
    let request = request.set_header(NAME_HEADER, "=?base64?aW5jcmVtZW50?=");
    let reply = client.send(&id, &request).await.expect("tools/call");
    assert_complete(&reply);
    assert_eq!(reply.count().expect("count"), 1);

    // The encoded form of another name is still a disagreement.
    let (id, request) = client.prepare("tools/call", increment_params());
    // Standard base64 of "get_count".
    let request = request.set_header(NAME_HEADER, "=?base64?Z2V0X2NvdW50?=");
    let reply = client.send(&id, &request).await.expect("tools/call");
    assert_refused(&reply, &id, 400, -32020, "base64 Mcp-Name of another tool");

    let stats = wait_all_closed(&counter).await;
    assert_eq!(stats.tools_call, 1, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_say_why_and_disturb_no_one() {
    let (counter, gateway) = counter_behind_gateway(2);
    let mut client = stateless_client(&gateway);

    // A stateful session already running on the gateway.
    let mut session = gateway.client();
    session.initialize().await.expect("initialize");
    assert_eq!(session.count("increment").await.expect("increment"), 1);
    let before = counter.stats().await.expect("stats");

    // Mcp-Name disagrees with params.name.
    let (id, request) = client.prepare("tools/call", increment_params());
    let request = request.set_header(NAME_HEADER, "get_count");
    let reply = client.send(&id, &request).await.expect("send");
    assert_refused(&reply, &id, 400, -32020, "Mcp-Name != params.name");

    // Mcp-Name missing on a tools/call.
    let (id, request) = client.prepare("tools/call", increment_params());
    let request = request.without_header(NAME_HEADER);
    let reply = client.send(&id, &request).await.expect("send");
    assert_refused(&reply, &id, 400, -32020, "no Mcp-Name");

    // Mcp-Method missing.
    let (id, request) = client.prepare("tools/list", Value::Null);
    let request = request.without_header(METHOD_HEADER);
    let reply = client.send(&id, &request).await.expect("send");
    assert_refused(&reply, &id, 400, -32020, "no Mcp-Method");

    // Mcp-Method disagrees with the body's method.
    let (id, request) = client.prepare("tools/list", Value::Null);
    let request = request.set_header(METHOD_HEADER, "prompts/list");
    let reply = client.send(&id, &request).await.expect("send");
    assert_refused(&reply, &id, 400, -32020, "Mcp-Method != method");

    // MCP-Protocol-Version differs from _meta's, either way round.
    let (id, request) = client.prepare("tools/list", Value::Null);
    let request = request.set_header(VERSION_HEADER, "2025-11-25");
    let reply = client.send(&id, &request).await.expect("send");
    assert_refused(
        &reply,
        &id,
        400,
        -32020,
        "header 2025-11-25, _meta 2026-07-28",
    );
    let mut message = stateless::message(Some(json!("v")), "tools/list", Value::Null);
    message["params"]["_meta"][stateless::META_VERSION] = json!("2025-11-25");
    let request = stateless::post("/mcp", &message).set_header(VERSION_HEADER, MODERN_VERSION);
    let reply = client.send(&json!("v"), &request).await.expect("send");
    assert_refused(
        &reply,
        &json!("v"),
        400,
        -32020,
        "header 2026-07-28, _meta 2025-11-25",
    );

    // _meta without clientCapabilities.
    let mut message = stateless::message(Some(json!(101)), "tools/list", Value::Null);
    message["params"]["_meta"]
        .as_object_mut()
        .expect("_meta")
        .remove(META_CAPABILITIES);
    let reply = client
        .send(&json!(101), &stateless::post("/mcp", &message))
        .await
        .expect("send");
    assert_refused(&reply, &json!(101), 400, -32602, "no clientCapabilities");

    // A version nobody serves, in header and _meta alike.
    let mut message = stateless::message(Some(json!(102)), "tools/list", Value::Null);
    message["params"]["_meta"][stateless::META_VERSION] = json!("2099-01-01");
    let request = stateless::post("/mcp", &message);
    assert!(
        request
            .headers
            .iter()
            .any(|(n, v)| n == VERSION_HEADER && v == "2099-01-01"),
        "{request:?}"
    );
    let reply = client.send(&json!(102), &request).await.expect("send");
    assert_refused(&reply, &json!(102), 400, -32022, "version 2099-01-01");
    let data = &reply.message["error"]["data"];
    let supported = data["supported"].as_array().expect("data.supported");
    assert!(supported.contains(&json!("2026-07-28")), "{data}");
    assert_eq!(data["supported"], json!(SUPPORTED), "{data}");
    assert_eq!(data["requested"], "2099-01-01", "{data}");

    // Methods the revision removed.
    for (method, params) in [
        ("ping", Value::Null),
        ("logging/setLevel", json!({"level": "info"})),
        ("resources/subscribe", json!({"uri": "counter://value"})),
    ] {
        let (id, request) = client.prepare(method, params);
        let reply = client.send(&id, &request).await.expect("send");
        assert_refused(&reply, &id, 404, -32601, method);
    }

    // A batch, with the modern headers.
    let batch = json!([
        stateless::message(Some(json!(201)), "tools/list", Value::Null),
        stateless::message(Some(json!(202)), "tools/list", Value::Null),
    ]);
    let request = Request::post("/mcp", batch.to_string())
        .header("Content-Type", "application/json")
        .header("Accept", "application/json, text/event-stream")
        .header(VERSION_HEADER, MODERN_VERSION)
        .header(METHOD_HEADER, "tools/list");
    let response = stateless::send(gateway.addr, &request)
        .await
        .expect("batch");
    let reply = RpcReply::from_response(response, &Value::Null).expect("an error to id null");
    assert_refused(&reply, &Value::Null, 400, -32600, "batch");

    // A notification is taken: 202, nothing in the body.
    let message = stateless::message(
        None,
        "notifications/cancelled",
        json!({"requestId": 7, "reason": "test"}),
    );
    let response = stateless::send(gateway.addr, &stateless::post("/mcp", &message))
        .await
        .expect("notification");
    assert_eq!(response.status, 202, "{}", response.text());
    assert!(response.body.is_empty(), "{:?}", response.text());

    // GET and DELETE have no meaning without a session.
    for method in ["GET", "DELETE"] {
        let request = Request::new(method, "/mcp")
            .header("Accept", "application/json, text/event-stream")
            .header(VERSION_HEADER, MODERN_VERSION);
        let response: Response = stateless::send(gateway.addr, &request).await.expect("send");
        assert_eq!(response.status, 405, "{method}: {}", response.text());
        assert_eq!(response.header("Allow"), Some("POST"), "{method}");
    }

    // None of it reached the upstream.
    let after = counter.stats().await.expect("stats");
    assert_eq!(after.initialize, before.initialize, "{after:?}");
    assert_eq!(after.tools_call, before.tools_call, "{after:?}");

    // A modern request's Mcp-Session-Id is ignored, garbage or well-formed, even the id
    // of a live session.
    let live = session.session_id().expect("session id").to_owned();
    for sid in ["garbage!not-a-session", "aaaaaaaaaaaaaaaaaaaaaaaaaa", &live] {
        let (id, request) = client.prepare("tools/call", increment_params());
        let request = request.header(SESSION_HEADER, sid);
        let reply = client.send(&id, &request).await.expect("send");
        assert_complete(&reply);
        assert_eq!(reply.count().expect("count"), 1, "Mcp-Session-Id {sid:?}");
    }

    // The stateful session carries on where it was.
    assert_eq!(session.count("increment").await.expect("increment"), 2);
    let mut fresh = gateway.client();
    fresh.initialize().await.expect("initialize after refusals");
    assert_eq!(fresh.count("increment").await.expect("increment"), 1);
    assert_eq!(session.count("get_count").await.expect("get_count"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_and_stateless_requests_side_by_side() {
    let (counter, gateway) = counter_behind_gateway(2);
    let mut session = gateway.client();
    session.initialize().await.expect("initialize");
    let mut client = stateless_client(&gateway);
    for expected in 1..=3 {
        assert_eq!(
            session.count("increment").await.expect("session increment"),
            expected
        );
        assert_eq!(
            client
                .count("increment")
                .await
                .expect("stateless increment"),
            1
        );
    }
    assert_eq!(session.count("get_count").await.expect("get_count"), 3);

    // One upstream session for the session, kept; one per stateless request, closed.
    wait_until(
        "the stateless requests' upstream sessions closed",
        CLOSE_WITHIN,
        || async {
            let stats = counter.stats().await?;
            Ok((stats.live_sessions == 1 && stats.delete == 3).then_some(stats))
        },
    )
    .await
    .map(|stats| assert_eq!(stats.initialize, 4, "{stats:?}"))
    .expect("the session's upstream session stays, the others close");
}

/// The sum over workers of `mcpgw_requests_total{method, outcome}`.
fn requests_total(metrics: &str, method: &str, outcome: &str) -> f64 {
    let method = format!("method=\"{method}\"");
    let outcome = format!("outcome=\"{outcome}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("mcpgw_requests_total{"))
        .filter(|l| l.contains(&method) && l.contains(&outcome))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateless_requests_are_counted_by_method_and_outcome() {
    let (_counter, gateway) = counter_behind_gateway(2);
    let mut client = stateless_client(&gateway);

    for _ in 0..3 {
        assert_eq!(client.count("increment").await.expect("increment"), 1);
    }
    let failed = client
        .request("tools/call", json!({"name": "fail", "arguments": {}}))
        .await
        .expect("tools/call fail");
    assert_eq!(
        failed.result().expect("a tool error is a result")["isError"],
        true
    );
    assert_complete(
        &client
            .request("tools/list", Value::Null)
            .await
            .expect("list"),
    );
    assert_complete(
        &client
            .request("server/discover", Value::Null)
            .await
            .expect("discover"),
    );

    // Refusals.
    let (id, request) = client.prepare("tools/call", increment_params());
    let request = request.set_header(NAME_HEADER, "get_count");
    let reply = client.send(&id, &request).await.expect("send");
    assert_refused(&reply, &id, 400, -32020, "Mcp-Name != params.name");
    let (id, request) = client.prepare("ping", Value::Null);
    let reply = client.send(&id, &request).await.expect("send");
    assert_refused(&reply, &id, 404, -32601, "ping");
    let mut message = stateless::message(Some(json!(900)), "tools/list", Value::Null);
    message["params"]["_meta"][stateless::META_VERSION] = json!("2099-01-01");
    let reply = client
        .send(&json!(900), &stateless::post("/mcp", &message))
        .await
        .expect("send");
    assert_refused(&reply, &json!(900), 400, -32022, "version 2099-01-01");

    let (status, text) = admin_get(&gateway, "/metrics").await;
    assert_eq!(status, 200, "{text}");
    for (method, outcome, expected) in [
        ("tools/call", "ok", 3.0),
        ("tools/call", "tool_error", 1.0),
        ("tools/call", "jsonrpc_error", 1.0),
        ("tools/list", "ok", 1.0),
        ("tools/list", "jsonrpc_error", 1.0),
        ("server/discover", "ok", 1.0),
        ("ping", "jsonrpc_error", 1.0),
        ("ping", "ok", 0.0),
        ("tools/call", "refused", 0.0),
    ] {
        assert_eq!(
            requests_total(&text, method, outcome),
            expected,
            "mcpgw_requests_total{{method={method:?},outcome={outcome:?}}} in:\n{text}"
        );
    }
}

/// With the warm pool (on by default), a stateless request takes an upstream session
/// opened ahead and the pool is refilled behind it; each session still serves one
/// request (the count is 1 every time). A kind of client starts with one session
/// ahead, and a request that finds none ready doubles that; the pool's sessions are
/// closed when the gateway stops.
#[tokio::test]
async fn the_warm_pool_serves_each_request_a_session_opened_ahead() {
    let counter = start_counter!().expect("start counter-server");
    let mut gateway = Gateway::start(&GatewayConfig::new(1).upstream("counter", &counter.url()))
        .expect("start mcpgw");
    let mut client = stateless_client(&gateway);
    let pool_holds = |at_least: u64| {
        let counter = &counter;
        async move {
            // Every request's own session closed (one per call), and the pool's
            // sessions open.
            wait_until("the warm pool is full", CLOSE_WITHIN, || async {
                let stats = counter.stats().await?;
                Ok(
                    (stats.delete == stats.tools_call && stats.live_sessions >= at_least)
                        .then_some(stats),
                )
            })
            .await
            .unwrap_or_else(|e| panic!("{at_least} sessions ready: {e:#}"))
        }
    };
    for _ in 0..5 {
        let reply = client
            .request("tools/call", json!({"name": "increment", "arguments": {}}))
            .await
            .expect("increment");
        assert_eq!(reply.count().expect("count"), 1, "{}", reply.message);
        // At least one kept ahead (a refill slower than the next request
        // is a miss, and the kind then keeps two).
        pool_holds(1).await;
    }
    // Four at once: one takes the ready session, the others find none and open their
    // own; the kind now keeps more ahead.
    let mut clients: Vec<_> = (0..3).map(|_| stateless_client(&gateway)).collect();
    clients.push(client);
    let call = json!({"name": "increment", "arguments": {}});
    let replies = futures_util::future::join_all(
        clients
            .iter_mut()
            .map(|c| c.request("tools/call", call.clone())),
    )
    .await;
    for reply in replies {
        let reply = reply.expect("increment");
        assert_eq!(reply.count().expect("count"), 1, "{}", reply.message);
    }
    pool_holds(2).await;
    let (_, text) = mcpgw_tests::ops::admin_get(&gateway, "/metrics").await;
    let taken: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("mcpgw_upstream_session_events_total{")
                && l.contains("event=\"warm_taken\"")
                && l.contains("upstream=\"counter\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        (5.0..8.0).contains(&taken),
        "the first request opened its own, the next four took one, and of the four at once at least one did and one did not:\n{text}"
    );
    gateway.stop().await;
    counter.assert_all_sessions_closed().await;
}

/// `subscriptions/listen`: the gateway follows the upstream on a session of the
/// subscription's own, acknowledges the part of the filter the upstream can honour (the
/// counter has tools and resources `listChanged`, resource subscriptions, but no prompts
/// `listChanged`), then passes on only the asked notifications, each tagged with the
/// subscription id; a client that goes away ends it, and its upstream session closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_gets_what_it_asked_for_tagged() {
    use mcpgw_tests::stateless::META_SUBSCRIPTION_ID as SUBSCRIPTION_ID;
    let within = Duration::from_secs(10);
    let (counter, gateway) = counter_behind_gateway(1);
    let mut client = stateless_client(&gateway);

    // Refusals first: a stream needs SSE, and the filter is required.
    let (id, request) = client.prepare(
        "subscriptions/listen",
        json!({"notifications": {"toolsListChanged": true}}),
    );
    let request = request.set_header("Accept", "application/json");
    let reply = client.send(&id, &request).await.expect("answer");
    assert_refused(&reply, &id, 400, -32600, "listen without text/event-stream");
    let (id, request) = client.prepare("subscriptions/listen", json!({}));
    let reply = client.send(&id, &request).await.expect("answer");
    assert_refused(&reply, &id, 400, -32602, "listen without a filter");

    let (id, request) = client.prepare(
        "subscriptions/listen",
        json!({"notifications": {
            "toolsListChanged": true,
            "promptsListChanged": true,
            "resourceSubscriptions": ["counter://value"],
        }}),
    );
    let mut stream = MessageStream::send(gateway.addr, &request)
        .await
        .expect("a subscription stream");
    let ack = stream.expect(within).await.expect("acknowledgement");
    assert_eq!(
        ack["method"], "notifications/subscriptions/acknowledged",
        "{ack}"
    );
    assert_eq!(ack["params"]["_meta"][SUBSCRIPTION_ID], id, "{ack}");
    assert_eq!(
        ack["params"]["notifications"],
        json!({"toolsListChanged": true, "resourceSubscriptions": ["counter://value"]}),
        "only what the upstream can notify of is honoured: {ack}"
    );
    assert!(
        counter
            .events()
            .await
            .expect("counter events")
            .iter()
            .any(|e| e["kind"] == "resources/subscribe" && e["uri"] == "counter://value"),
        "the resource was subscribed to upstream"
    );

    // notify_all puts tools/list_changed, prompts/list_changed, resources/updated and a
    // log message on every GET stream, in that order; twice, so that seeing
    // tools → updated → tools proves the two kinds in between were dropped.
    for round in 0..2 {
        let streams = client
            .request(
                "tools/call",
                json!({"name": "notify_all", "arguments": {"tag": round}}),
            )
            .await
            .expect("notify_all");
        let result = assert_complete(&streams);
        assert_eq!(result["structuredContent"]["streams"], 1, "{result}");
    }
    let mut seen = Vec::new();
    for _ in 0..4 {
        let m = stream.expect(within).await.expect("a notification");
        assert_eq!(m["params"]["_meta"][SUBSCRIPTION_ID], id, "tagged: {m}");
        assert!(m.get("id").is_none(), "{m}");
        seen.push(m["method"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(
        seen,
        [
            "notifications/tools/list_changed",
            "notifications/resources/updated",
            "notifications/tools/list_changed",
            "notifications/resources/updated",
        ]
    );

    stream.close();
    let stats = wait_all_closed(&counter).await;
    assert!(stats.initialize >= 1, "{stats:?}");
    drop(gateway);
}

/// MRTR bridged for a stateless client in front of a stateful upstream that asks it
/// something mid-call: the upstream's `elicitation/create` comes back as an
/// `input_required` result (the call parked in the worker that ran it, its
/// `requestState` a handle); the client's retry, landing on the other worker, is
/// forwarded to that one, where the answer reaches the upstream and the call ends with
/// its result, under the retry's id. A used, tampered or foreign handle is refused
/// with -32602, and the upstream session ends with the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateful_upstreams_question_reaches_a_stateless_client_through_mrtr() {
    let (counter, gateway) = counter_behind_gateway(2);
    let question = json!({"message": "Your name?", "requestedSchema": {"type": "object",
        "properties": {"name": {"type": "string"}}}});
    let call = |id: u64, extra: Value| {
        stateless::ask(
            id,
            "elicitation/create",
            question.clone(),
            json!({"elicitation": {}}),
            extra,
        )
    };

    let mut first_conn = HttpConn::connect(gateway.addr).await.expect("connect");
    let first = first_conn
        .send(&call(1, json!({})))
        .await
        .expect("first answer");
    assert_eq!(first.status, 200, "{}", first.text());
    let parked_on = WorkerTag::of(&first).expect("worker").slot;
    let (key, request, state) =
        stateless::input_request(&first.json().expect("json")).expect("input_required");
    assert_eq!(request["method"], "elicitation/create", "{request}");
    assert_eq!(request["params"]["message"], "Your name?", "{request}");
    let state = state.as_str().expect("requestState").to_owned();
    assert!(state.starts_with("mcpgw1."), "{state}");
    assert_eq!(metric_sum(&gateway, "mcpgw_mrtr_parked_calls").await, 1.0);

    // A connection the other worker holds (a cheap request tells which).
    let mut other = None;
    for _ in 0..100 {
        let mut conn = HttpConn::connect(gateway.addr).await.expect("connect");
        let probe = stateless::post(
            "/mcp",
            &stateless::message(Some(json!(0)), "tools/list", Value::Null),
        );
        let answer = conn.send(&probe).await.expect("tools/list");
        if WorkerTag::of(&answer).expect("worker").slot != parked_on {
            other = Some(conn);
            break;
        }
    }
    let mut other = other.expect("a connection on the other worker");

    let answer = json!({"action": "accept", "content": {"name": "Ada"}});
    let retry = |state: &str| {
        call(
            2,
            json!({"inputResponses": {key.clone(): answer.clone()}, "requestState": state}),
        )
    };
    let done = other.send(&retry(&state)).await.expect("retry answer");
    assert_eq!(done.status, 200, "{}", done.text());
    assert_eq!(
        WorkerTag::of(&done).expect("worker").slot,
        parked_on,
        "answered by the worker that held the call"
    );
    let done = done.json().expect("json");
    assert_eq!(done["id"], 2, "the retry's id: {done}");
    assert_eq!(done["result"]["resultType"], "complete", "{done}");
    assert_eq!(
        done["result"]["structuredContent"]["answer"]["result"], answer,
        "the upstream got the client's answer: {done}"
    );

    // Used once; tampered; not the gateway's slot.
    let tampered = format!(
        "{}{}",
        &state[..state.len() - 1],
        if state.ends_with('0') { '1' } else { '0' }
    );
    for (why, state) in [
        ("replayed", state.clone()),
        ("tampered", tampered),
        (
            "foreign slot",
            "mcpgw1.9.00000000000000000000000000000000".to_owned(),
        ),
    ] {
        let refused = stateless::send(gateway.addr, &retry(&state))
            .await
            .expect("an answer");
        assert_eq!(refused.status, 400, "{why}: {}", refused.text());
        let refused = refused.json().expect("json");
        assert_eq!(refused["error"]["code"], -32602, "{why}: {refused}");
        assert!(
            refused["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("unknown, expired or already used")),
            "{why}: {refused}"
        );
    }
    assert_eq!(metric_sum(&gateway, "mcpgw_mrtr_parked_calls").await, 0.0);
    wait_all_closed(&counter).await;
}

/// A parked MRTR call whose client never comes back is let go after
/// `[sessions] input_wait_secs`: the upstream's question is answered with an error, its
/// upstream session closes, and the late retry's `requestState` is unknown (-32602).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_call_expires_when_its_client_does_not_come_back() {
    let counter = start_counter!().expect("start counter-server");
    let mut config = GatewayConfig::new(1).upstream("counter", &counter.url());
    config
        .extra
        .push_str("\n[sessions]\nstateless_warm_sessions = 0\ninput_wait_secs = 1\n");
    let gateway = Gateway::start(&config).expect("start mcpgw");
    let call =
        |extra: Value| stateless::ask(1, "roots/list", json!({}), json!({"roots": {}}), extra);
    let first = stateless::send(gateway.addr, &call(json!({})))
        .await
        .expect("answer")
        .json()
        .expect("json");
    let (key, _, state) = stateless::input_request(&first).expect("input_required");
    wait_until("the parked call to expire", CLOSE_WITHIN, || async {
        Ok((metric_sum(&gateway, "mcpgw_mrtr_parked_calls").await == 0.0).then_some(()))
    })
    .await
    .expect("expired");
    wait_all_closed(&counter).await;
    let late = stateless::send(
        gateway.addr,
        &call(json!({"inputResponses": {key: {"roots": []}}, "requestState": state})),
    )
    .await
    .expect("answer");
    assert_eq!(late.status, 400, "{}", late.text());
    assert_eq!(late.json().expect("json")["error"]["code"], -32602);
}
