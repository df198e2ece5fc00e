//! The gateway under abuse and failure, end to end through the real `mcpgw` binary:
//! requests over the limits, malformed input, slow clients, a worker killed with SIGKILL,
//! and SIGTERM while requests are in flight.
//!
//! Each bad-input test also checks that a well-behaved session, opened before the bad
//! input arrived, keeps working afterwards.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use mcpgw_tests::http::{HttpConn, Request, Response, status_of};
use mcpgw_tests::process::process_alive;
use mcpgw_tests::sse;
use mcpgw_tests::{
    CounterServer, Gateway, GatewayConfig, McpClient, WorkerTag, start_counter, wait_until,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

// Regression tests for the defects of the hardening issue, one module per area.
#[path = "hardening/admin.rs"]
mod admin;
#[path = "hardening/bodies.rs"]
mod bodies;
#[path = "hardening/catalogue.rs"]
mod catalogue;
#[path = "hardening/sessions.rs"]
mod sessions;
#[path = "hardening/upstream.rs"]
mod upstream;

/// A gateway in front of one counter-server, plus a session that tests use to show
/// that other clients are unaffected by whatever the test does.
struct Setup {
    gateway: Gateway,
    counter: CounterServer,
    healthy: McpClient,
    healthy_count: u64,
}

impl Setup {
    async fn new(config: GatewayConfig) -> Self {
        let counter = start_counter!().expect("start counter-server");
        let gateway =
            Gateway::start(&config.upstream("counter", &counter.url())).expect("start mcpgw");
        let mut healthy = gateway.client();
        healthy
            .initialize()
            .await
            .expect("initialize the healthy session");
        let mut setup = Self {
            gateway,
            counter,
            healthy,
            healthy_count: 0,
        };
        setup.healthy_still_works().await;
        setup
    }

    /// The healthy session's next increment must succeed with the next count.
    async fn healthy_still_works(&mut self) {
        self.healthy_count += 1;
        let count = self
            .healthy
            .count("increment")
            .await
            .expect("the healthy session keeps working");
        assert_eq!(count, self.healthy_count);
    }
}

/// The JSON-RPC error code in a JSON or SSE error answer.
fn rpc_error_code(response: &Response) -> Option<i64> {
    let message: Value = match response.media_type().as_deref() {
        Some("text/event-stream") => sse::parse(&response.text())
            .iter()
            .find_map(|e| serde_json::from_str(&e.data).ok())?,
        _ => response.json().ok()?,
    };
    message.pointer("/error/code").and_then(Value::as_i64)
}

async fn send_once(gateway: &Gateway, request: &Request) -> Response {
    let mut conn = HttpConn::connect(gateway.addr).await.expect("connect");
    conn.send(request).await.expect("an HTTP answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_head_gets_431() {
    let mut setup = Setup::new(GatewayConfig {
        max_head_bytes: Some(16384),
        ..GatewayConfig::new(2)
    })
    .await;
    let request = setup
        .gateway
        .client()
        .post_request(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#)
        .header("X-Filler", &"a".repeat(20_000));
    let response = send_once(&setup.gateway, &request).await;
    assert_eq!(response.status, 431, "{}", response.text());
    setup.healthy_still_works().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_gets_413() {
    let mut setup = Setup::new(GatewayConfig {
        max_body_bytes: Some(65536),
        ..GatewayConfig::new(2)
    })
    .await;
    let body = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                   "clientInfo": {"name": "big", "version": "1"}, "pad": "a".repeat(100_000)},
    });
    let request = setup.gateway.client().post_request(body.to_string());
    let response = send_once(&setup.gateway, &request).await;
    assert_eq!(response.status, 413, "{}", response.text());

    // Within a session too.
    let request = setup.healthy.post_request(
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
               "params": {"name": "increment", "arguments": {"pad": "b".repeat(100_000)}}})
        .to_string(),
    );
    let response = send_once(&setup.gateway, &request).await;
    assert_eq!(response.status, 413, "{}", response.text());
    setup.healthy_still_works().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_gets_parse_error() {
    let mut setup = Setup::new(GatewayConfig::new(2)).await;
    let request = setup
        .healthy
        .post_request(r#"{"jsonrpc":"2.0","id":1,"method":"#);
    let response = send_once(&setup.gateway, &request).await;
    assert_eq!(response.status, 400, "{}", response.text());
    assert_eq!(
        rpc_error_code(&response),
        Some(-32700),
        "{}",
        response.text()
    );
    setup.healthy_still_works().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_method_and_unknown_tool_are_jsonrpc_errors() {
    let mut setup = Setup::new(GatewayConfig::new(2)).await;
    let reply = setup
        .healthy
        .request("no/such/method", json!({}))
        .await
        .expect("request");
    assert_eq!(
        reply.error().map(|(code, _)| code),
        Some(-32601),
        "{}",
        reply.message
    );

    let reply = setup
        .healthy
        .call_tool("no_such_tool", json!({}))
        .await
        .expect("tools/call");
    let (code, message) = reply
        .error()
        .unwrap_or_else(|| panic!("must fail: {}", reply.message));
    assert_eq!(code, -32602, "{message}");
    assert!(
        message.contains("no_such_tool"),
        "message {message:?} does not name the tool"
    );
    setup.healthy_still_works().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_session_ids_get_400() {
    let mut setup = Setup::new(GatewayConfig::new(2)).await;
    let malformed = [
        "x",
        "ABCDEFGHIJKLMNOPQRSTUVWXYZ",  // right length, wrong case
        "abcdefghijklmnopqrstuvwxy0",  // '0' is not base32
        "abcdefghijklmnopqrstuvwxyza", // 27 chars
        "abcdefghijklm/../nopqrstuv",
        // Crafted to reach into store keys or headers (the bad-input catalogue).
        "*",
        "mcpgw:session:aaaaaaaaaaaaaaaaaaaaaaaaaa",
        "aaaaaaaaaaaaa*aaaaaaaaaaaa",
        "aaaaaaaaaaaaa?aaaaaaaaaaaa",
        "aaaaaaaaaaaaa%0d%0aaaaaaaaaa",
        "aaaaaaaaaaaaa aaaaaaaaaaaa",
        "aaaaaaaaaaaaaaaaaaaaaaaaaa:1",
    ];
    for id in malformed {
        let mut client = setup.gateway.client();
        client.set_session_id(id);
        let request = client.post_request(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#);
        let response = send_once(&setup.gateway, &request).await;
        assert_eq!(
            response.status,
            400,
            "session id {id:?}: {}",
            response.text()
        );
    }
    setup.healthy_still_works().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_session_ids_get_404() {
    let mut setup = Setup::new(GatewayConfig::new(2)).await;
    // Several ids, so that they hash to different workers.
    let unknown = [
        "abcdefghijklmnopqrstuvwxyz",
        "aaaaaaaaaaaaaaaaaaaaaaaaaa",
        "22222222222222222222222222",
        "77777777777777777777777777",
        "zyxwvutsrqponmlkjihgfedcba",
        "mcpgwmcpgwmcpgwmcpgwmcpgw2",
    ];
    for id in unknown {
        let mut client = setup.gateway.client();
        client.set_session_id(id);
        let request = client.post_request(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#);
        let response = send_once(&setup.gateway, &request).await;
        assert_eq!(
            response.status,
            404,
            "session id {id:?}: {}",
            response.text()
        );
        let response = client.delete().await.expect("DELETE");
        assert_eq!(
            response.status,
            404,
            "DELETE of session id {id:?}: {}",
            response.text()
        );
    }
    setup.healthy_still_works().await;
    assert_eq!(
        setup.counter.stats().await.expect("stats").initialize,
        1,
        "only the healthy session"
    );
}

/// Slow-headers clients are cut off after `header_timeout_ms` and do not hold up others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_heads_are_cut_off_while_others_are_served() {
    let mut setup = Setup::new(GatewayConfig {
        header_timeout_ms: Some(1000),
        ..GatewayConfig::new(2)
    })
    .await;
    // More stalled connections than workers.
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let mut conn = HttpConn::connect(setup.gateway.addr)
            .await
            .expect("connect");
        conn.write_raw(b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
            .await
            .expect("partial head");
        stalled.push(conn);
    }

    // Meanwhile, a new session and the existing one are served.
    let mut newcomer = setup.gateway.client().with_fresh_connections();
    newcomer
        .initialize()
        .await
        .expect("initialize while heads are stalled");
    assert_eq!(newcomer.count("increment").await.expect("increment"), 1);
    setup.healthy_still_works().await;

    for mut conn in stalled {
        let closed = conn
            .wait_closed(Duration::from_secs(15))
            .await
            .expect("the gateway closes a connection whose head never completes");
        let status = status_of(&closed.received);
        assert!(
            closed.received.is_empty() || status == Some(408),
            "a stalled head may only get a 408 before the close, got {:?}",
            String::from_utf8_lossy(&closed.received)
        );
    }
    setup.healthy_still_works().await;
}

/// A client that connects and sends nothing: the listener defers accept until data
/// arrives (`TCP_DEFER_ACCEPT`), but the kernel accepts such a connection after about a
/// second anyway, so it still meets the header timeout and gets 408, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_cut_off() {
    let mut setup = Setup::new(GatewayConfig {
        header_timeout_ms: Some(1000),
        ..GatewayConfig::new(1)
    })
    .await;
    let mut silent = HttpConn::connect(setup.gateway.addr)
        .await
        .expect("connect");
    let closed = silent
        .wait_closed(Duration::from_secs(15))
        .await
        .expect("the gateway closes a connection that never sends a head");
    assert_eq!(
        status_of(&closed.received),
        Some(408),
        "a silent connection gets 408, got {:?}",
        String::from_utf8_lossy(&closed.received)
    );
    setup.healthy_still_works().await;
}

/// A head that keeps trickling in (a byte at a time) must not outlive the header timeout
/// either: the timeout bounds the whole head, not the gap between bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_head_is_cut_off() {
    let mut setup = Setup::new(GatewayConfig {
        header_timeout_ms: Some(1000),
        ..GatewayConfig::new(2)
    })
    .await;
    let mut conn = HttpConn::connect(setup.gateway.addr)
        .await
        .expect("connect");
    conn.write_raw(b"POST /mcp HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("partial head");
    // Keep sending one header byte every 200 ms for at most 15 s; the gateway must close
    // the connection before that.
    let mut closed = false;
    for _ in 0..75 {
        if conn.peer_closed() || conn.write_raw(b"X").await.is_err() {
            closed = true;
            break;
        }
        // Pacing the attack, not synchronising on the gateway.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        closed,
        "a head trickling in for 15 s was never cut off (header_timeout_ms = 1000)"
    );
    setup.healthy_still_works().await;
}

/// Opens sessions until every worker slot owns at least `per_slot` of them.
async fn sessions_on_every_slot(gateway: &Gateway, per_slot: usize) -> Vec<(McpClient, WorkerTag)> {
    let mut sessions: Vec<(McpClient, WorkerTag)> = Vec::new();
    for _ in 0..64 {
        let mut per: BTreeMap<u32, usize> = BTreeMap::new();
        for (_, tag) in &sessions {
            *per.entry(tag.slot).or_default() += 1;
        }
        if per.len() == gateway.workers && per.values().all(|&n| n >= per_slot) {
            return sessions;
        }
        let mut client = gateway.client().with_fresh_connections();
        let owner = client
            .initialize()
            .await
            .expect("initialize")
            .worker()
            .expect("owner");
        sessions.push((client, owner));
    }
    panic!(
        "64 new sessions did not reach every worker slot: {:?}",
        sessions.iter().map(|(_, t)| t).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_is_replaced_and_others_keep_serving() {
    let counter = start_counter!().expect("start counter-server");
    let gateway = Gateway::start(&GatewayConfig::new(2).upstream("counter", &counter.url()))
        .expect("start mcpgw");
    let sessions = sessions_on_every_slot(&gateway, 2).await;
    let victim = sessions[0].1;
    let mut survivors: Vec<(McpClient, WorkerTag, u64)> = sessions
        .into_iter()
        .filter(|(_, tag)| tag.slot != victim.slot)
        .map(|(client, tag)| (client, tag, 0))
        .collect();
    assert!(!survivors.is_empty());
    for (client, owner, count) in &mut survivors {
        *count += 1;
        let reply = client
            .call_tool("increment", json!({}))
            .await
            .expect("increment");
        assert_eq!(reply.count().expect("count"), *count);
        assert_eq!(reply.worker().expect("worker"), *owner);
    }

    kill(Pid::from_raw(victim.pid as i32), Signal::SIGKILL).expect("kill -9 the worker");

    // Until a new session lands on the victim's slot with the next generation, keep
    // using the surviving sessions: none of their calls may fail.
    let deadline = Instant::now() + Duration::from_secs(30);
    let replacement = loop {
        for (client, owner, count) in survivors.iter_mut() {
            *count += 1;
            let reply = client
                .call_tool("increment", json!({}))
                .await
                .expect("a surviving session's call");
            assert_eq!(reply.count().expect("count"), *count);
            assert_eq!(reply.worker().expect("worker"), *owner);
        }
        let mut client = gateway.client().with_fresh_connections();
        let last_attempt = match client.initialize().await.and_then(|reply| reply.worker()) {
            Ok(tag) if tag.slot == victim.slot && tag.generation > victim.generation => {
                break (client, tag);
            }
            other => other,
        };
        assert!(
            Instant::now() < deadline,
            "no new session on a replacement of {victim:?} within 30 s; last attempt: {last_attempt:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (mut fresh, tag) = replacement;
    assert_eq!(
        tag.generation,
        victim.generation + 1,
        "{tag:?} replaces {victim:?}"
    );
    assert_ne!(tag.pid, victim.pid);
    assert!(
        !process_alive(victim.pid),
        "the killed worker {} is still running",
        victim.pid
    );
    assert_eq!(
        fresh
            .count("increment")
            .await
            .expect("increment on the new worker"),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish() {
    const CALLS: usize = 8;
    let counter = start_counter!().expect("start counter-server");
    let mut gateway = Gateway::start(&GatewayConfig {
        grace_ms: Some(30_000),
        ..GatewayConfig::new(2).upstream("counter", &counter.url())
    })
    .expect("start mcpgw");

    let mut workers = BTreeSet::new();
    let mut clients = Vec::new();
    for _ in 0..CALLS {
        let mut client = gateway.client();
        let tag = client
            .initialize()
            .await
            .expect("initialize")
            .worker()
            .expect("owner");
        workers.insert(tag.pid);
        clients.push(client);
    }
    assert_eq!(
        workers.len(),
        gateway.workers,
        "{CALLS} sessions did not reach every worker"
    );
    let calls: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let reply = client.call_tool("slow", json!({"ms": 1500})).await?;
                reply.text()
            })
        })
        .collect();
    wait_until(
        "every slow call to reach the upstream",
        Duration::from_secs(30),
        || async { Ok((counter.stats().await?.slow_in_flight == CALLS as u64).then_some(())) },
    )
    .await
    .expect("slow calls in flight");

    gateway.signal(Signal::SIGTERM).expect("SIGTERM");
    for call in calls {
        let text = call
            .await
            .expect("task")
            .expect("an in-flight call completes during the drain");
        assert_eq!(text, "slept");
    }
    let status = gateway
        .wait_exit(Duration::from_secs(60))
        .await
        .expect("the supervisor exits");
    assert!(
        status.success(),
        "the supervisor exits 0 after a drain, got {status}"
    );
    // Workers learned from response headers; every one must be gone.
    assert!(!workers.is_empty());
    wait_until(
        "every worker process to exit",
        Duration::from_secs(10),
        || async { Ok(workers.iter().all(|&pid| !process_alive(pid)).then_some(())) },
    )
    .await
    .expect("no worker outlives the supervisor");
}

/// HTTP/1.1 as a worker serves it on a kept-alive connection, through the real binary:
/// pipelined requests answered in order, a chunked request body, `Expect: 100-continue`,
/// HTTP/1.0, and a malformed head (400, then the connection closes). The healthy session
/// is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_wire_rules_hold_on_a_kept_alive_connection() {
    let mut setup = Setup::new(GatewayConfig::new(2)).await;
    let mut client = setup.gateway.client();
    client.initialize().await.expect("initialize");
    let call = |id: u64| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
               "params": {"name": "increment", "arguments": {}}})
        .to_string()
    };
    let count_of = |response: &Response| {
        assert_eq!(response.status, 200, "{}", response.text());
        response
            .json()
            .expect("a JSON answer")
            .pointer("/result/structuredContent/count")
            .and_then(Value::as_u64)
            .expect("a count")
    };
    let mut conn = HttpConn::connect(setup.gateway.addr)
        .await
        .expect("connect");
    let first = conn
        .send(&client.post_request(call(1)))
        .await
        .expect("first");
    assert_eq!(count_of(&first), 1);
    assert!(first.header("date").is_some(), "answers carry a Date");

    // Two requests in one write: two answers, in order.
    let mut pipelined = client.post_request(call(2)).to_bytes(conn.host());
    pipelined.extend(client.post_request(call(3)).to_bytes(conn.host()));
    conn.write_raw(&pipelined).await.expect("pipelined");
    let second = conn.read_response(false).await.expect("second");
    let third = conn.read_response(false).await.expect("third");
    assert_eq!((count_of(&second), count_of(&third)), (2, 3));

    // A chunked body, split mid-chunk.
    let body = call(4);
    let (a, b) = body.split_at(body.len() / 2);
    let chunked = client
        .post_request(Vec::new())
        .header("Transfer-Encoding", "chunked")
        .to_bytes(conn.host());
    conn.write_raw(&chunked).await.expect("head");
    conn.write_raw(format!("{:x}\r\n{a}\r\n{:x}\r\n{b}", a.len(), b.len()).as_bytes())
        .await
        .expect("chunks");
    conn.write_raw(b"\r\n0\r\n\r\n").await.expect("last chunk");
    assert_eq!(
        count_of(&conn.read_response(false).await.expect("chunked")),
        4
    );

    // Expect: 100-continue — the body goes only after the go-ahead.
    let body = call(5);
    let head = client
        .post_request(Vec::new())
        .header("Expect", "100-continue")
        .header("Content-Length", &body.len().to_string())
        .to_bytes(conn.host());
    conn.write_raw(&head).await.expect("head");
    let interim = conn.read_head().await.expect("100 Continue");
    assert_eq!(interim.status, 100);
    conn.write_raw(body.as_bytes()).await.expect("body");
    assert_eq!(
        count_of(&conn.read_response(false).await.expect("after 100")),
        5
    );

    // A malformed head on the same connection: 400, and the connection ends.
    conn.write_raw(b"POST /mcp HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx")
        .await
        .expect("bad head");
    let refused = conn.read_response(false).await.expect("refusal");
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert!(refused.closes_connection());
    conn.wait_closed(Duration::from_secs(15))
        .await
        .expect("the connection closes after a refused head");

    // HTTP/1.0: answered, then closed (no keep-alive asked for).
    let mut old = HttpConn::connect(setup.gateway.addr)
        .await
        .expect("connect");
    let raw = String::from_utf8(client.post_request(call(6)).to_bytes(old.host()))
        .expect("ASCII")
        .replacen("HTTP/1.1", "HTTP/1.0", 1);
    old.write_raw(raw.as_bytes())
        .await
        .expect("HTTP/1.0 request");
    let answer = old.read_response(false).await.expect("HTTP/1.0 answer");
    assert_eq!(count_of(&answer), 6);
    assert!(answer.closes_connection());
    old.wait_closed(Duration::from_secs(15))
        .await
        .expect("an HTTP/1.0 connection closes after its answer");

    setup.healthy_still_works().await;
}
