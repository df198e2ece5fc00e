//! The gateway's spine, end to end through the real `mcpgw` binary: per-session upstream
//! state (#4205), upstream session reuse, federation of several upstreams, routing of
//! every request to its session's owner worker, DELETE, SSE and JSON answers, and a real
//! client library (the Python MCP SDK).
//!
//! The first test checks the counter-server itself, without a gateway, so that a broken
//! test upstream is not mistaken for a broken gateway.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mcpgw_tests::http::{HttpConn, Response};
use mcpgw_tests::mcp::is_gateway_session_id;
use mcpgw_tests::python;
use mcpgw_tests::rmcp_client;
use mcpgw_tests::{
    CounterOpts, CounterServer, Gateway, GatewayConfig, McpClient, WorkerTag, start_counter,
    wait_until,
};
use serde_json::{Value, json};

/// The counter-server's tools, by their own names.
const COUNTER_TOOLS: [&str; 4] = ["fail", "get_count", "increment", "slow"];

fn sorted(names: Vec<String>) -> Vec<String> {
    let mut names = names;
    names.sort();
    names
}

fn namespaced(upstream: &str) -> Vec<String> {
    COUNTER_TOOLS
        .iter()
        .map(|t| format!("{upstream}__{t}"))
        .collect()
}

/// One counter-server behind a gateway with `workers` workers on `/mcp`.
fn counter_behind_gateway(workers: usize) -> (CounterServer, Gateway) {
    let counter = start_counter!().expect("start counter-server");
    let gateway = Gateway::start(&GatewayConfig::new(workers).upstream("counter", &counter.url()))
        .expect("start mcpgw");
    (counter, gateway)
}

/// Sends `client`'s GET for its server stream on a new connection and reads the head.
async fn open_stream(addr: SocketAddr, client: &McpClient) -> (HttpConn, Response) {
    let mut conn = HttpConn::connect(addr).await.expect("connect");
    let head = open_stream_on(&mut conn, client).await;
    (conn, head)
}

async fn open_stream_on(conn: &mut HttpConn, client: &McpClient) -> Response {
    conn.write_raw(&client.stream_request().to_bytes(conn.host()))
        .await
        .expect("GET");
    conn.read_head().await.expect("GET head")
}

/// The stream's body must come to its end (not just stall) once its session is gone.
async fn stream_ends(conn: &mut HttpConn, head: &Response) {
    tokio::time::timeout(Duration::from_secs(15), conn.read_body(head))
        .await
        .expect("the stream ends within 15 s of its session's end")
        .expect("the stream ends cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_server_keeps_one_counter_per_session() {
    let counter = start_counter!(CounterOpts {
        page_size: Some(3),
        ..CounterOpts::named("direct")
    })
    .expect("start counter-server");

    let mut a = counter.client();
    let mut b = counter.client();
    a.initialize().await.expect("initialize a");
    b.initialize().await.expect("initialize b");
    assert_ne!(a.session_id(), b.session_id());
    for expected in 1..=3 {
        assert_eq!(a.count("increment").await.expect("increment a"), expected);
    }
    assert_eq!(b.count("increment").await.expect("increment b"), 1);
    assert_eq!(a.count("get_count").await.expect("get_count a"), 3);

    // Pagination: 3 + 1 tools, every one exactly once.
    assert_eq!(
        sorted(a.tool_names().await.expect("tools/list")),
        COUNTER_TOOLS
    );

    let unknown = a
        .call_tool("nope", json!({}))
        .await
        .expect("tools/call nope");
    let (code, message) = unknown.error().expect("unknown tool must be an error");
    assert_eq!(code, -32602);
    assert!(message.contains("nope"), "{message}");
    let (code, _) = a
        .request("no/such", Value::Null)
        .await
        .expect("request")
        .error()
        .expect("error");
    assert_eq!(code, -32601);
    let failed = a.call_tool("fail", json!({})).await.expect("fail");
    assert_eq!(
        failed.result().expect("tool errors are results")["isError"],
        true
    );
    let prompt = a
        .request(
            "prompts/get",
            json!({"name": "greeting", "arguments": {"name": "ann"}}),
        )
        .await
        .expect("prompts/get");
    assert_eq!(
        prompt.result().expect("prompt")["messages"][0]["content"]["text"],
        "Hello, ann from direct"
    );

    let mut stray = counter.client();
    let missing = stray
        .send(&stray.post_request(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#))
        .await
        .expect("post");
    assert_eq!(missing.status, 400);
    stray.set_session_id("0123");
    let unknown = stray
        .send(&stray.post_request(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#))
        .await
        .expect("post");
    assert_eq!(unknown.status, 404);

    // GET opens the session's stream.
    let (mut stream, head) = open_stream(counter.addr, &a).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.media_type().as_deref(), Some("text/event-stream"));

    assert_eq!(a.delete().await.expect("delete").status, 200);
    stream_ends(&mut stream, &head).await;
    let gone = a
        .send(&a.post_request(r#"{"jsonrpc":"2.0","id":9,"method":"ping"}"#))
        .await
        .expect("post");
    assert_eq!(gone.status, 404);

    let stats = counter.stats().await.expect("stats");
    assert_eq!(stats.initialize, 2);
    assert_eq!(stats.delete, 1);
    assert_eq!(stats.live_sessions, 1);
    assert_eq!(stats.tools_call, 7);

    // --sse answers every request as one SSE event; the client reads it the same way.
    let sse = start_counter!(CounterOpts {
        sse: true,
        ..CounterOpts::default()
    })
    .expect("start sse counter");
    let mut c = sse.client();
    let init = c.initialize().await.expect("initialize over SSE");
    assert_eq!(
        init.response.media_type().as_deref(),
        Some("text/event-stream")
    );
    assert_eq!(c.count("increment").await.expect("increment over SSE"), 1);
}

/// ContextForge #4205: two sessions must never see each other's upstream state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_4205_two_sessions_keep_separate_counters() {
    let (counter, gateway) = counter_behind_gateway(2);
    let mut a = gateway.client();
    let mut b = gateway.client();
    let init_a = a.initialize().await.expect("initialize A");
    b.initialize().await.expect("initialize B");
    let sid = a.session_id().expect("session A").to_owned();
    assert!(
        is_gateway_session_id(&sid),
        "session id {sid:?} is not 26 chars of [a-z2-7]"
    );
    assert_ne!(a.session_id(), b.session_id());
    init_a.worker().expect("worker header on initialize");

    // Both sessions step through a barrier before each of their first three calls, so
    // their calls interleave while running concurrently.
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let run = |mut client: McpClient, calls: u64, barrier: Arc<tokio::sync::Barrier>| async move {
        for expected in 1..=calls {
            if expected <= 3 {
                barrier.wait().await;
            }
            let count = client.count("increment").await.expect("increment");
            assert_eq!(count, expected, "session {:?}", client.session_id());
        }
        client
    };
    let task_a = tokio::spawn(run(a, 5, barrier.clone()));
    let task_b = tokio::spawn(run(b, 3, barrier));
    let mut a = task_a.await.expect("session A task");
    let mut b = task_b.await.expect("session B task");

    assert_eq!(a.count("get_count").await.expect("get_count A"), 5);
    assert_eq!(b.count("get_count").await.expect("get_count B"), 3);
    let stats = counter.stats().await.expect("stats");
    assert_eq!(
        stats.initialize, 2,
        "one upstream session per downstream session: {stats:?}"
    );
    assert_eq!(stats.live_sessions, 2, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_session_reuses_one_upstream_session() {
    let (counter, gateway) = counter_behind_gateway(2);
    let mut client = gateway.client();
    client.initialize().await.expect("initialize");
    let before = counter.stats().await.expect("stats");
    assert_eq!(
        before.initialize, 1,
        "the upstream session is opened by the client's initialize: {before:?}"
    );

    for expected in 1..=50 {
        assert_eq!(
            client.count("increment").await.expect("increment"),
            expected
        );
    }
    let stats = counter.stats().await.expect("stats");
    assert_eq!(
        stats.initialize, 1,
        "50 calls, one upstream session: {stats:?}"
    );
    assert_eq!(stats.tools_call, 50, "{stats:?}");
}

/// A closed local port: bound, then released.
fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}/mcp")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_upstreams_hold_separate_state_under_namespaced_names() {
    let a = start_counter!(CounterOpts::named("a")).expect("start a");
    let mut b = start_counter!(CounterOpts::named("b")).expect("start b");
    let gateway = Gateway::start(
        &GatewayConfig::new(2)
            .upstream("a", &a.url())
            .upstream("b", &b.url())
            .upstream("dead", &closed_port_url()),
    )
    .expect("start mcpgw");
    let mut client = gateway.client();
    client.initialize().await.expect("initialize");

    let mut expected = namespaced("a");
    expected.extend(namespaced("b"));
    assert_eq!(
        sorted(client.tool_names().await.expect("tools/list")),
        sorted(expected),
        "a dead upstream drops out; the others' tools are namespaced"
    );

    assert_eq!(client.count("a__increment").await.expect("a__increment"), 1);
    assert_eq!(client.count("a__increment").await.expect("a__increment"), 2);
    assert_eq!(client.count("b__increment").await.expect("b__increment"), 1);
    assert_eq!(client.count("a__get_count").await.expect("a__get_count"), 2);
    assert_eq!(client.count("b__get_count").await.expect("b__get_count"), 1);
    assert_eq!(a.stats().await.expect("stats a").initialize, 1);
    assert_eq!(b.stats().await.expect("stats b").initialize, 1);

    let prompts = client
        .request("prompts/list", Value::Null)
        .await
        .expect("prompts/list");
    let names: BTreeSet<&str> = prompts.result().expect("prompts")["prompts"]
        .as_array()
        .expect("prompts array")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, BTreeSet::from(["a__greeting", "b__greeting"]));
    let greeting = client
        .request(
            "prompts/get",
            json!({"name": "b__greeting", "arguments": {"name": "zoe"}}),
        )
        .await
        .expect("prompts/get");
    assert_eq!(
        greeting.result().expect("prompt")["messages"][0]["content"]["text"],
        "Hello, zoe from b"
    );

    for tool in ["a__nope", "zzz__nope"] {
        let reply = client.call_tool(tool, json!({})).await.expect("tools/call");
        let (code, message) = reply
            .error()
            .unwrap_or_else(|| panic!("{tool} must fail: {}", reply.message));
        assert_eq!(code, -32602, "{tool}: {message}");
        assert!(
            message.contains("nope"),
            "{tool}: message {message:?} does not name the tool"
        );
    }

    b.kill();
    assert_eq!(
        sorted(client.tool_names().await.expect("tools/list after b died")),
        sorted(namespaced("a")),
    );
    assert_eq!(
        client.count("a__get_count").await.expect("a after b died"),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_with_one_upstream_keeps_names() {
    let counter = start_counter!().expect("start counter");
    let other = start_counter!(CounterOpts::named("other")).expect("start other");
    let gateway = Gateway::start(
        &GatewayConfig::new(2)
            .upstream("counter", &counter.url())
            .upstream("other", &other.url())
            .endpoint("/counter/mcp", &["counter"]),
    )
    .expect("start mcpgw");
    let mut client = gateway.client_at("/counter/mcp");
    client.initialize().await.expect("initialize");
    assert_eq!(
        sorted(client.tool_names().await.expect("tools/list")),
        COUNTER_TOOLS
    );
    assert_eq!(client.count("increment").await.expect("increment"), 1);
    let greeting = client
        .request(
            "prompts/get",
            json!({"name": "greeting", "arguments": {"name": "al"}}),
        )
        .await
        .expect("prompts/get");
    assert_eq!(
        greeting.result().expect("prompt")["messages"][0]["content"]["text"],
        "Hello, al from counter"
    );
    let read = client
        .request("resources/read", json!({"uri": "counter://value"}))
        .await
        .expect("resources/read");
    assert_eq!(read.result().expect("resource")["contents"][0]["text"], "1");
    assert_eq!(
        other.stats().await.expect("stats").initialize,
        0,
        "other is not behind this endpoint"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paginated_upstream_lists_are_merged_completely() {
    let a = start_counter!(CounterOpts {
        page_size: Some(1),
        ..CounterOpts::named("a")
    })
    .expect("start a");
    let b = start_counter!(CounterOpts {
        page_size: Some(3),
        ..CounterOpts::named("b")
    })
    .expect("start b");
    let gateway = Gateway::start(
        &GatewayConfig::new(2)
            .upstream("a", &a.url())
            .upstream("b", &b.url()),
    )
    .expect("start mcpgw");
    let mut client = gateway.client();
    client.initialize().await.expect("initialize");
    let mut expected = namespaced("a");
    expected.extend(namespaced("b"));
    assert_eq!(
        sorted(client.tool_names().await.expect("tools/list")),
        sorted(expected)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_served_by_its_sessions_owner() {
    let (counter, gateway) = counter_behind_gateway(2);
    assert_eq!(gateway.workers, 2);

    let mut sessions = Vec::new();
    for _ in 0..32 {
        let mut client = gateway.client().with_fresh_connections();
        let owner = client
            .initialize()
            .await
            .expect("initialize")
            .worker()
            .expect("owner");
        sessions.push((client, owner));
    }
    let slots: BTreeSet<u32> = sessions.iter().map(|(_, owner)| owner.slot).collect();
    assert_eq!(
        slots.len(),
        gateway.workers,
        "every worker owns sessions: {slots:?}"
    );

    for (client, owner) in &mut sessions {
        for expected in 1..=2 {
            let reply = client
                .call_tool("increment", json!({}))
                .await
                .expect("increment");
            assert_eq!(reply.count().expect("count"), expected);
            assert_eq!(
                reply.worker().expect("worker"),
                *owner,
                "session {:?}",
                client.session_id()
            );
        }
    }

    // Several sessions, owned by different workers, on one kept-alive connection.
    let mut by_slot: HashMap<u32, Vec<usize>> = HashMap::new();
    for (i, (_, owner)) in sessions.iter().enumerate() {
        by_slot.entry(owner.slot).or_default().push(i);
    }
    let mixed: Vec<usize> = by_slot
        .values()
        .flat_map(|ids| ids.iter().take(3).copied())
        .collect();
    let mut conn = HttpConn::connect(gateway.addr).await.expect("connect");
    for round in 0..3u64 {
        for &i in &mixed {
            let (client, owner) = &mut sessions[i];
            let reply = client
                .request_on(
                    &mut conn,
                    "tools/call",
                    json!({"name": "increment", "arguments": {}}),
                )
                .await
                .expect("increment on the shared connection");
            assert_eq!(reply.count().expect("count"), 3 + round);
            assert_eq!(reply.worker().expect("worker"), *owner);
            assert!(
                !reply.response.closes_connection(),
                "the shared connection must stay open"
            );
        }
    }
    let stats = counter.stats().await.expect("stats");
    assert_eq!(stats.initialize, 32, "{stats:?}");
}

/// Waits until `counter` has received `deletes` DELETEs and has `live` sessions left;
/// closing upstream sessions may finish after the client's DELETE was answered.
async fn wait_for_deletes(counter: &CounterServer, deletes: u64, live: u64) {
    let what = format!(
        "{} to have seen {deletes} DELETE(s), {live} live session(s)",
        counter.name
    );
    wait_until(&what, Duration::from_secs(10), || async {
        let s = counter.stats().await?;
        Ok((s.delete >= deletes && s.live_sessions == live).then_some(()))
    })
    .await
    .expect("upstream sessions closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_ends_every_upstream_session() {
    let a = start_counter!(CounterOpts::named("a")).expect("start a");
    let b = start_counter!(CounterOpts::named("b")).expect("start b");
    let gateway = Gateway::start(
        &GatewayConfig::new(2)
            .upstream("a", &a.url())
            .upstream("b", &b.url()),
    )
    .expect("start mcpgw");

    let mut both = gateway.client();
    both.initialize().await.expect("initialize");
    assert_eq!(both.count("a__increment").await.expect("a"), 1);
    assert_eq!(both.count("b__increment").await.expect("b"), 1);
    let mut only_a = gateway.client();
    only_a.initialize().await.expect("initialize");
    assert_eq!(only_a.count("a__increment").await.expect("a"), 1);

    let response = both.delete().await.expect("DELETE");
    assert_eq!(response.status, 200, "{}", response.text());
    // `only_a` has a session on b too: initialize opens every upstream's.
    wait_for_deletes(&a, 1, 1).await;
    wait_for_deletes(&b, 1, 1).await;

    let again = both
        .send(&both.post_request(r#"{"jsonrpc":"2.0","id":77,"method":"ping"}"#))
        .await
        .expect("post");
    assert_eq!(
        again.status,
        404,
        "a deleted session is unknown: {}",
        again.text()
    );
    assert_eq!(both.delete().await.expect("second DELETE").status, 404);

    assert_eq!(only_a.delete().await.expect("DELETE").status, 200);
    wait_for_deletes(&a, 2, 0).await;
    wait_for_deletes(&b, 2, 0).await;
    assert_eq!(
        a.stats().await.expect("stats").delete,
        2,
        "one DELETE per upstream session"
    );
    assert_eq!(
        b.stats().await.expect("stats").delete,
        2,
        "one DELETE per upstream session"
    );
}

/// A session's GET stream is served by its owner, also when it arrives on a connection
/// that another worker serves (forwarded, streaming), and ends when the session does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_streams_are_served_by_the_owner_and_end_with_the_session() {
    let (_counter, gateway) = counter_behind_gateway(2);
    let mut by_slot: BTreeMap<u32, (McpClient, WorkerTag)> = BTreeMap::new();
    for _ in 0..32 {
        if by_slot.len() == gateway.workers {
            break;
        }
        let mut client = gateway.client().with_fresh_connections();
        let owner = client
            .initialize()
            .await
            .expect("initialize")
            .worker()
            .expect("owner");
        by_slot.entry(owner.slot).or_insert((client, owner));
    }
    assert_eq!(
        by_slot.len(),
        gateway.workers,
        "32 sessions did not reach every worker"
    );
    let mut sessions = by_slot.into_values();
    let (mut streamed, owner) = sessions.next().expect("a session");
    let (mut other, other_owner) = sessions.next().expect("a session of another worker");

    let (mut direct, direct_head) = open_stream(gateway.addr, &streamed).await;
    assert_eq!(direct_head.status, 200);
    assert_eq!(
        direct_head.media_type().as_deref(),
        Some("text/event-stream")
    );
    assert_eq!(WorkerTag::of(&direct_head).expect("worker"), owner);

    // This connection is served by the other session's owner; the GET must be forwarded.
    let mut shared = HttpConn::connect(gateway.addr).await.expect("connect");
    let reply = other
        .request_on(
            &mut shared,
            "tools/call",
            json!({"name": "get_count", "arguments": {}}),
        )
        .await
        .expect("get_count");
    assert_eq!(reply.worker().expect("worker"), other_owner);
    let forwarded_head = open_stream_on(&mut shared, &streamed).await;
    assert_eq!(forwarded_head.status, 200);
    assert_eq!(
        forwarded_head.media_type().as_deref(),
        Some("text/event-stream")
    );
    assert_eq!(WorkerTag::of(&forwarded_head).expect("worker"), owner);

    assert_eq!(streamed.delete().await.expect("DELETE").status, 200);
    stream_ends(&mut direct, &direct_head).await;
    stream_ends(&mut shared, &forwarded_head).await;
    assert_eq!(
        other.count("increment").await.expect("the other session"),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_upstream_answers_reach_sse_and_json_clients() {
    let counter = start_counter!(CounterOpts {
        sse: true,
        ..CounterOpts::default()
    })
    .expect("start counter");
    let gateway = Gateway::start(&GatewayConfig::new(2).upstream("counter", &counter.url()))
        .expect("start mcpgw");

    let mut both = gateway.client();
    both.initialize().await.expect("initialize");
    for expected in 1..=3 {
        assert_eq!(both.count("increment").await.expect("increment"), expected);
    }
    assert_eq!(
        sorted(both.tool_names().await.expect("tools/list")),
        COUNTER_TOOLS
    );

    let mut json_only = gateway.client().with_accept("application/json");
    json_only_increments(&mut json_only, 3).await;
    assert_eq!(both.count("get_count").await.expect("get_count"), 3);
}

/// Initialize a JSON-only client and increment `times`, checking that every
/// answer is `application/json` and counts up from 1.
async fn json_only_increments(client: &mut McpClient, times: u64) {
    let init = client.initialize().await.expect("initialize");
    assert_eq!(
        init.response.media_type().as_deref(),
        Some("application/json")
    );
    for expected in 1..=times {
        let reply = client
            .call_tool("increment", json!({}))
            .await
            .expect("increment");
        assert_eq!(
            reply.response.media_type().as_deref(),
            Some("application/json")
        );
        assert_eq!(reply.count().expect("count"), expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_only_client_gets_json_answers() {
    let (_counter, gateway) = counter_behind_gateway(2);
    let mut client = gateway.client().with_accept("application/json");
    json_only_increments(&mut client, 2).await;
    let list = client
        .request("tools/list", Value::Null)
        .await
        .expect("tools/list");
    assert_eq!(
        list.response.media_type().as_deref(),
        Some("application/json")
    );
}

/// A `server/discover` without the revision's `_meta` is refused as the revision says
/// (-32602, HTTP 400), and the same client can still open a session with `initialize`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_discover_is_refused_and_initialize_still_works() {
    let (_counter, gateway) = counter_behind_gateway(2);
    let mut client = gateway.client();
    let reply = client
        .request("server/discover", json!({"protocolVersion": "2026-07-28"}))
        .await
        .expect("server/discover");
    let (code, message) = reply
        .error()
        .unwrap_or_else(|| panic!("expected an error: {}", reply.message));
    assert_eq!(code, -32602, "{message}");
    assert_eq!(reply.status(), 400, "{message}");
    assert_eq!(client.session_id(), None);
    client
        .initialize()
        .await
        .expect("initialize after the refused discover");
    assert_eq!(client.count("increment").await.expect("increment"), 1);
}

/// The Python MCP SDK (installed into `tests/.venv` by `scripts/test-all.sh`) as a client,
/// in its default mode (`auto`: it must settle on the stateless 2026-07-28 protocol) and in
/// `legacy` mode (one session, one upstream session, as before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_client_works_through_the_gateway() {
    let (counter, gateway) = counter_behind_gateway(2);
    let url = format!("http://{}/mcp", gateway.addr);
    for mode in ["legacy", "auto"] {
        let before = counter.stats().await.expect("stats");
        python::expect_ok(
            &format!("client_smoke.py {mode}"),
            python::script("client_smoke.py").arg(&url).arg(mode),
        )
        .await;
        let stats = counter.stats().await.expect("stats");
        let opened = stats.initialize - before.initialize;
        if mode == "legacy" {
            assert_eq!(opened, 1, "one upstream session for the session: {stats:?}");
        } else {
            // discover, tools/list, 2 × increment, prompts/get, resources/read: an
            // upstream session each (some of them opened ahead, in the warm pool).
            assert!(
                opened >= 6,
                "an upstream session per stateless request: {stats:?}"
            );
        }
    }
    upstream_sessions_all_closed_at_stop(&counter, gateway).await;
}

/// A 2025-03-26 client may send JSON-RPC batches (later versions removed them): the
/// gateway answers the requests of a batch together, as one JSON array, while its
/// upstream speaks 2025-11-25. A session of a later version gets 400 for a batch.
#[tokio::test]
async fn batches_of_a_2025_03_26_session_are_answered_as_one_array() {
    let (counter, gateway) = counter_behind_gateway(2);
    let mut old = gateway.client();
    let reply = old
        .initialize_version("2025-03-26", json!({}))
        .await
        .expect("initialize 2025-03-26");
    assert_eq!(
        reply.result().expect("result")["protocolVersion"],
        "2025-03-26"
    );
    let batch = json!([
        {"jsonrpc": "2.0", "id": 10, "method": "tools/call", "params": {"name": "increment", "arguments": {}}},
        {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": "t", "progress": 1}},
        {"jsonrpc": "2.0", "id": "b", "method": "tools/call", "params": {"name": "increment", "arguments": {}}},
    ]);
    let resp = old
        .send(&old.post_request(batch.to_string()))
        .await
        .expect("batch answer");
    assert_eq!(resp.status, 200, "{}", resp.text());
    let answers: Vec<Value> = serde_json::from_str(&resp.text()).expect("a JSON array");
    let ids: Vec<&Value> = answers.iter().map(|a| &a["id"]).collect();
    assert_eq!(ids, [&json!(10), &json!("b")]);
    let counts: Vec<u64> = answers
        .iter()
        .map(|a| {
            a.pointer("/result/structuredContent/count")
                .and_then(Value::as_u64)
                .expect("count")
        })
        .collect();
    assert_eq!(counts, [1, 2], "one upstream session, in order");
    assert_eq!(counter.stats().await.expect("stats").initialize, 1);

    let mut new = gateway.client();
    new.initialize().await.expect("initialize");
    let resp = new
        .send(&new.post_request(batch.to_string()))
        .await
        .expect("answer");
    assert_eq!(resp.status, 400, "{}", resp.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initialize_shows_who_is_behind_the_endpoint() {
    let a = start_counter!(CounterOpts {
        instructions: Some("count with a".to_owned()),
        ..CounterOpts::named("alpha")
    })
    .expect("start a");
    let b = start_counter!(CounterOpts {
        instructions: Some("count with b".to_owned()),
        ..CounterOpts::named("beta")
    })
    .expect("start b");
    let gateway = Gateway::start(
        &GatewayConfig::new(1)
            .upstream("a", &a.url())
            .upstream("b", &b.url())
            .endpoint("/one/mcp", &["a"])
            .endpoint("/both/mcp", &["a", "b"]),
    )
    .expect("start mcpgw");

    // One upstream: the gateway is transparent, the upstream's identity too.
    let mut one = gateway.client_at("/one/mcp");
    let init = one.initialize().await.expect("initialize /one");
    let result = init.result().expect("result");
    assert_eq!(result["serverInfo"]["name"], "alpha", "{result}");
    assert_eq!(result["serverInfo"]["version"], "1.0.0", "{result}");
    assert_eq!(result["instructions"], "count with a", "{result}");
    // The counter offers prompts without listChanged; the gateway used to
    // add it.
    assert_eq!(result["capabilities"]["prompts"], json!({}), "{result}");
    assert_eq!(
        result["capabilities"]["tools"]["listChanged"], true,
        "{result}"
    );
    assert_eq!(a.stats().await.expect("stats").initialize, 1);
    assert_eq!(one.count("increment").await.expect("increment"), 1);
    assert_eq!(
        a.stats().await.expect("stats").initialize,
        1,
        "the first call uses the upstream session initialize opened"
    );

    // Federated: the gateway's serverInfo, merged capabilities, every
    // upstream's instructions under its id.
    let mut both = gateway.client_at("/both/mcp");
    let init = both.initialize().await.expect("initialize /both");
    let result = init.result().expect("result");
    assert_eq!(result["serverInfo"]["name"], "mcpgw", "{result}");
    let instructions = result["instructions"].as_str().expect("instructions");
    assert!(
        instructions.contains("[upstream a]\ncount with a")
            && instructions.contains("[upstream b]\ncount with b"),
        "{instructions}"
    );
    let caps = &result["capabilities"];
    assert_eq!(caps["prompts"], json!({}), "{result}");
    assert_eq!(
        caps["resources"],
        json!({"subscribe": true, "listChanged": true}),
        "{result}"
    );
    assert!(
        caps["logging"].is_object() && caps["completions"].is_object(),
        "{result}"
    );
    assert_eq!(b.stats().await.expect("stats").initialize, 1);
}

/// The count in a counter-server tool result.
fn rmcp_count(result: &rmcp::model::CallToolResult) -> u64 {
    result
        .structured_content
        .as_ref()
        .and_then(|s| s.get("count"))
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no count in {result:?}"))
}

/// The official Rust SDK (rmcp) as a client, in each of its lifecycle modes. `discover`
/// and `auto` settle on the stateless 2026-07-28 protocol (the gateway answers
/// `server/discover`); `initialize` is the handshake and one session. A stateless client
/// has no session, so each of its calls reaches the stateful counter through an upstream
/// session of its own and counts from zero; the session's calls count on (#4205: two
/// clients never share a count either way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmcp_client_works_through_the_gateway_in_each_lifecycle_mode() {
    use rmcp::model::CallToolRequestParams;
    use rmcp::service::ClientLifecycleMode;

    let (counter, gateway) = counter_behind_gateway(2);
    let url = format!("http://{}/mcp", gateway.addr);
    let connect = |mode: ClientLifecycleMode| rmcp_client::connect(&url, mode);
    let auto = connect(rmcp_client::auto())
        .await
        .expect("rmcp client in auto mode");
    let discover = connect(rmcp_client::discover())
        .await
        .expect("rmcp client in discover mode");
    let session = connect(ClientLifecycleMode::Initialize)
        .await
        .expect("rmcp client in initialize mode");
    let clients = [(&auto, true), (&discover, true), (&session, false)];
    for (client, stateless) in clients {
        let info = client.peer_info().expect("what the server said of itself");
        let version = info.protocol_version.to_string();
        assert_eq!(version == "2026-07-28", stateless, "{info:?}");
        let server = info.server_info.as_ref().map(|s| s.name.as_str());
        assert_eq!(server, Some("counter"), "{info:?}");
        let tools = client.list_all_tools().await.expect("tools/list");
        let mut names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
        names.sort();
        assert_eq!(names, COUNTER_TOOLS);
    }
    for round in 1..=3 {
        for (client, stateless) in clients {
            let result = client
                .call_tool(CallToolRequestParams::new("increment"))
                .await
                .expect("increment");
            let expected = if stateless { 1 } else { round };
            assert_eq!(rmcp_count(&result), expected, "stateless: {stateless}");
        }
    }
    for client in [auto, discover, session] {
        client.cancel().await.expect("close the client");
    }
    upstream_sessions_all_closed_at_stop(&counter, gateway).await;
}

/// Every upstream session is closed once its client is done or the gateway stops: those
/// of a stateless request after it, a session's at its DELETE, and the warm pool's (opened
/// ahead for stateless clients, in each worker) when the gateway stops.
async fn upstream_sessions_all_closed_at_stop(counter: &CounterServer, mut gateway: Gateway) {
    gateway.stop().await;
    counter.assert_all_sessions_closed().await;
}

/// The rmcp client's own `subscriptions/listen` (auto mode settles on 2026-07-28): the
/// gateway acknowledges what the counter can notify of, the client's later call of
/// `notify_all` comes back on the subscription as the asked notifications (tagged, as
/// rmcp checks), and a gateway that stops ends the subscription gracefully (the listen
/// request's result) and closes every upstream session it opened for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmcp_client_listens_through_the_gateway() {
    use rmcp::model::{CallToolRequestParams, ServerNotification, SubscriptionFilter};
    use rmcp::service::SubscriptionEnd;

    let within = Duration::from_secs(15);
    let (counter, gateway) = counter_behind_gateway(1);
    let client = rmcp_client::connect(&format!("http://{}/mcp", gateway.addr), rmcp_client::auto())
        .await
        .expect("rmcp client in auto mode");

    let asked = SubscriptionFilter::builder()
        .tools_list_changed()
        .prompts_list_changed()
        .resource_subscription("counter://value")
        .build();
    let mut subscription = tokio::time::timeout(within, client.listen(asked))
        .await
        .expect("acknowledged in time")
        .expect("subscriptions/listen");
    let honoured = subscription.acknowledged().clone();
    assert_eq!(honoured.tools_list_changed, Some(true), "{honoured:?}");
    assert_eq!(honoured.prompts_list_changed, None, "{honoured:?}");
    assert_eq!(
        honoured.resource_subscriptions.as_deref(),
        Some(&["counter://value".to_owned()][..]),
        "{honoured:?}"
    );

    let mut call = CallToolRequestParams::new("notify_all");
    call.arguments = serde_json::json!({"tag": "rmcp"}).as_object().cloned();
    client.call_tool(call).await.expect("notify_all");
    let mut seen = Vec::new();
    for _ in 0..2 {
        let notification = tokio::time::timeout(within, subscription.next())
            .await
            .expect("a notification in time")
            .expect("a well-formed notification")
            .expect("the subscription is open");
        seen.push(match notification {
            ServerNotification::ToolListChangedNotification(_) => "tools".to_owned(),
            ServerNotification::ResourceUpdatedNotification(n) => n.params.uri.clone(),
            other => format!("unexpected {other:?}"),
        });
    }
    assert_eq!(seen, ["tools", "counter://value"]);

    let mut gateway = gateway;
    gateway
        .signal(nix::sys::signal::Signal::SIGTERM)
        .expect("SIGTERM");
    let end = tokio::time::timeout(within, subscription.next())
        .await
        .expect("the subscription ends in time");
    assert!(matches!(end, Ok(None)), "{end:?}");
    assert!(
        matches!(subscription.end(), Some(SubscriptionEnd::Graceful(_))),
        "{:?}",
        subscription.end()
    );
    drop(subscription);
    let _ = client.cancel().await;
    gateway
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("the gateway stops");
    counter.assert_all_sessions_closed().await;
}
