//! Hardening regressions: sessions. What a session keeps is bounded (`initialize`
//! params), so are the sessions themselves (per worker, per client address, per host),
//! a batch's length, the store look-ups unknown session ids cost, and the error answers
//! the relay sends to an upstream's surplus server→client requests.

#[allow(unused_imports)]
use super::*;

use std::net::{IpAddr, Ipv4Addr};

use mcpgw_tests::ops::{admin_get, metric_sum, rss_kib, supervisor_metric, worker_pids};

/// A second client host: another loopback address.
const OTHER_HOST: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

fn initialize_body(client_info: Value) -> String {
    json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                   "clientInfo": client_info},
    })
    .to_string()
}

/// The JSON-RPC error (code, message) of a JSON answer.
fn rpc_error_of(response: &Response) -> Option<(i64, String)> {
    let v: Value = response.json().ok()?;
    Some((
        v.pointer("/error/code")?.as_i64()?,
        v.pointer("/error/message")?.as_str()?.to_owned(),
    ))
}

/// `initialize` from `from` on a connection of its own; the client holds the new
/// session on success, the answer is returned either way.
async fn initialize_from(gateway: &Gateway, from: IpAddr, client: &mut McpClient) -> Response {
    let mut conn = HttpConn::connect_from(from, gateway.addr)
        .await
        .expect("connect");
    let request = gateway
        .client()
        .post_request(initialize_body(json!({"name": "t", "version": "1"})));
    let response = conn.send(&request).await.expect("initialize answer");
    if let Some(id) = response.header("mcp-session-id") {
        client.set_session_id(id);
    }
    response
}

/// A session that must work: its `get_count` answers.
async fn works(client: &mut McpClient) {
    client
        .count("get_count")
        .await
        .expect("the session keeps working");
}

/// The answer refuses a new session past `key` (HTTP 200, JSON-RPC -32000 naming it),
/// and carries no session id.
fn assert_refused_by(response: &Response, key: &str) {
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(response.header("mcp-session-id").is_none());
    let (code, message) = rpc_error_of(response).expect("a JSON-RPC error");
    assert_eq!(code, -32000, "{message}");
    assert!(message.contains(key), "{message:?} does not name {key}");
}

/// `mcpgw_sessions_refused_total{cap}`, all workers together (the supervisor puts
/// its `worker` label first).
async fn refused(gateway: &Gateway, cap: &str) -> f64 {
    let (_, text) = admin_get(gateway, "/metrics").await;
    let label = format!(",cap=\"{cap}\"}}");
    text.lines()
        .filter(|l| l.starts_with("mcpgw_sessions_refused_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn supervisor_and_workers_rss(gateway: &Gateway) -> (u64, u64) {
    let workers = worker_pids(gateway).await.iter().map(|p| rss_kib(*p)).sum();
    (rss_kib(gateway.pid()), workers)
}

/// Defect 4: 20 sessions with a 4.1 MB `clientInfo` grew the supervisor by 90 MB and the
/// worker by 102 MB. Now each such `initialize` is refused with -32602 and nothing is
/// kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_initialize_params_are_refused_and_not_kept() {
    let mut setup = Setup::new(GatewayConfig::new(2)).await;
    let gateway = &setup.gateway;
    let (supervisor_before, workers_before) = supervisor_and_workers_rss(gateway).await;
    let big = "a".repeat(4_000_000);
    for _ in 0..20 {
        let request = gateway
            .client()
            .post_request(initialize_body(json!({"name": big, "version": "1"})));
        let response = send_once(gateway, &request).await;
        assert_eq!(response.status, 200, "{}", response.text());
        assert!(response.header("mcp-session-id").is_none());
        let (code, message) = rpc_error_of(&response).expect("a JSON-RPC error");
        assert_eq!(code, -32602, "{message}");
        assert!(
            message.contains("max_session_params_bytes") && message.contains("65536"),
            "{message:?} does not name the limit"
        );
    }
    assert_eq!(refused(gateway, "params").await, 20.0);
    assert_eq!(
        metric_sum(gateway, "mcpgw_sessions_active").await,
        1.0,
        "only the healthy session lives"
    );
    // The gauge follows the store once a heartbeat period.
    wait_until(
        "only the healthy session is stored",
        Duration::from_secs(10),
        || async {
            Ok((supervisor_metric(gateway, "mcpgw_store_sessions").await == 1.0).then_some(()))
        },
    )
    .await
    .expect("one stored session");
    // The bound: 80 MB of params went through; what stays is the allocator's
    // high-water mark of a few request bodies, not one copy per session.
    let (supervisor_after, workers_after) = supervisor_and_workers_rss(gateway).await;
    let grown = |before: u64, after: u64| after.saturating_sub(before);
    assert!(
        grown(supervisor_before, supervisor_after) < 8 * 1024,
        "supervisor RSS {supervisor_before} → {supervisor_after} KiB"
    );
    assert!(
        grown(workers_before, workers_after) < 40 * 1024,
        "workers' RSS {workers_before} → {workers_after} KiB"
    );
    setup.healthy_still_works().await;
}

/// Params right at the limit are taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initialize_params_within_the_limit_open_a_session() {
    let mut setup = Setup::new(GatewayConfig {
        limits: vec![("max_session_params_bytes".into(), "4096".into())],
        ..GatewayConfig::new(1)
    })
    .await;
    let mut client = setup.gateway.client();
    let response =
        initialize_from(&setup.gateway, IpAddr::V4(Ipv4Addr::LOCALHOST), &mut client).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(response.header("mcp-session-id").is_some());
    let request = setup.gateway.client().post_request(initialize_body(
        json!({"name": "b".repeat(5000), "version": "1"}),
    ));
    let response = send_once(&setup.gateway, &request).await;
    let (code, message) = rpc_error_of(&response).expect("a JSON-RPC error");
    assert_eq!(code, -32602, "{message}");
    assert!(message.contains("4096"), "{message:?}");
    setup.healthy_still_works().await;
}

/// Past `max_sessions_per_worker` a new session is refused; nothing is evicted, and a
/// DELETE makes room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_per_worker_are_capped() {
    let mut setup = Setup::new(GatewayConfig {
        limits: vec![("max_sessions_per_worker".into(), "3".into())],
        ..GatewayConfig::new(1)
    })
    .await;
    let gateway = &setup.gateway;
    let mut others = Vec::new();
    for _ in 0..2 {
        let mut c = gateway.client();
        c.initialize().await.expect("within the cap");
        others.push(c);
    }
    let mut late = gateway.client();
    let response = initialize_from(gateway, IpAddr::V4(Ipv4Addr::LOCALHOST), &mut late).await;
    assert_refused_by(&response, "max_sessions_per_worker");
    assert_eq!(refused(gateway, "worker").await, 1.0);
    for c in &mut others {
        works(c).await;
    }
    setup.healthy_still_works().await;

    let response = others[0].delete().await.expect("DELETE");
    assert_eq!(response.status, 200, "{}", response.text());
    let mut admitted = setup.gateway.client();
    admitted.initialize().await.expect("a DELETE made room");
    works(&mut admitted).await;
    works(&mut others[1]).await;
    setup.healthy_still_works().await;
}

/// `max_sessions` counts every worker's sessions (initialize goes to the least-loaded
/// worker, so they are spread over both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_capped_for_the_whole_host() {
    let mut setup = Setup::new(GatewayConfig {
        limits: vec![("max_sessions".into(), "4".into())],
        ..GatewayConfig::new(2)
    })
    .await;
    let gateway = &setup.gateway;
    let mut others = Vec::new();
    for _ in 0..3 {
        let mut c = gateway.client().with_fresh_connections();
        c.initialize().await.expect("within the cap");
        others.push(c);
    }
    for _ in 0..3 {
        let mut late = gateway.client();
        let response = initialize_from(gateway, OTHER_HOST, &mut late).await;
        assert_refused_by(&response, "max_sessions");
    }
    assert_eq!(refused(gateway, "total").await, 3.0);
    for c in &mut others {
        works(c).await;
    }
    setup.healthy_still_works().await;

    let response = others[2].delete().await.expect("DELETE");
    assert_eq!(response.status, 200, "{}", response.text());
    let mut admitted = setup.gateway.client();
    admitted.initialize().await.expect("a DELETE made room");
    works(&mut admitted).await;
    setup.healthy_still_works().await;
}

/// `max_sessions_per_client` counts by client address: one address at its cap is
/// refused, another is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_per_client_address_are_capped() {
    let mut setup = Setup::new(GatewayConfig {
        limits: vec![("max_sessions_per_client".into(), "2".into())],
        ..GatewayConfig::new(2)
    })
    .await;
    let gateway = &setup.gateway;
    let local = IpAddr::V4(Ipv4Addr::LOCALHOST);
    // The healthy session is one of 127.0.0.1's two.
    let mut second = gateway.client();
    let response = initialize_from(gateway, local, &mut second).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let mut third = gateway.client();
    let response = initialize_from(gateway, local, &mut third).await;
    assert_refused_by(&response, "max_sessions_per_client");
    assert_eq!(refused(gateway, "client").await, 1.0);

    let mut elsewhere = Vec::new();
    for _ in 0..2 {
        let mut c = gateway.client();
        let response = initialize_from(gateway, OTHER_HOST, &mut c).await;
        assert_eq!(response.status, 200, "{}", response.text());
        assert!(response.header("mcp-session-id").is_some());
        works(&mut c).await;
        elsewhere.push(c);
    }
    let mut c = gateway.client();
    let response = initialize_from(gateway, OTHER_HOST, &mut c).await;
    assert_refused_by(&response, "max_sessions_per_client");

    works(&mut second).await;
    setup.healthy_still_works().await;
    let response = second.delete().await.expect("DELETE");
    assert_eq!(response.status, 200, "{}", response.text());
    let response = initialize_from(&setup.gateway, local, &mut third).await;
    assert_eq!(
        response.status,
        200,
        "a DELETE made room: {}",
        response.text()
    );
    works(&mut third).await;
    setup.healthy_still_works().await;
}

/// A batch longer than `max_batch_len` gets one -32600 and none of it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_over_the_cap_are_refused_whole() {
    let mut setup = Setup::new(GatewayConfig {
        limits: vec![("max_batch_len".into(), "3".into())],
        ..GatewayConfig::new(2)
    })
    .await;
    let mut client = setup.gateway.client();
    client
        .initialize_version("2025-03-26", json!({}))
        .await
        .expect("a 2025-03-26 session (batches exist there only)");
    let batch = |n: usize| {
        let calls: Vec<Value> = (0..n)
            .map(|i| {
                json!({"jsonrpc": "2.0", "id": 100 + i, "method": "tools/call",
                            "params": {"name": "increment", "arguments": {}}})
            })
            .collect();
        Value::Array(calls).to_string()
    };
    let response = client
        .send(&client.post_request(batch(4)))
        .await
        .expect("answer");
    assert_eq!(response.status, 400, "{}", response.text());
    let v: Value = response.json().expect("one JSON-RPC error");
    assert_eq!(v["id"], Value::Null, "{v}");
    assert_eq!(v["error"]["code"], -32600, "{v}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("max_batch_len"), "{message:?}");
    assert_eq!(
        client.count("get_count").await.expect("count"),
        0,
        "nothing ran"
    );

    let response = client
        .send(&client.post_request(batch(3)))
        .await
        .expect("answer");
    assert_eq!(response.status, 200, "{}", response.text());
    let answers: Vec<Value> = serde_json::from_slice(&response.body).expect("a JSON array");
    assert_eq!(answers.len(), 3, "{answers:?}");
    assert_eq!(client.count("get_count").await.expect("count"), 3);
    setup.healthy_still_works().await;
}

/// An unknown (well-formed) session id gets 404 every time, and the store is not asked
/// every time: every look-up is either sent or answered by the negative cache, and the
/// cache answers some.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_session_ids_cost_bounded_store_lookups() {
    let mut setup = Setup::new(GatewayConfig::new(2)).await;
    let gateway = &setup.gateway;
    let sent = || metric_sum(gateway, "mcpgw_store_fetches_total{");
    let cached = || metric_sum(gateway, "mcpgw_store_fetches_cached_total");
    let (sent_before, cached_before) = (sent().await, cached().await);
    const ASKS: u32 = 50;
    let mut client = gateway.client();
    client.set_session_id("abcdefghijklmnopqrstuvwxyz");
    for _ in 0..ASKS {
        let response = client
            .send(&client.post_request(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#))
            .await
            .expect("answer");
        assert_eq!(response.status, 404, "{}", response.text());
    }
    let sent_now = sent().await - sent_before;
    let cached_now = cached().await - cached_before;
    assert_eq!(sent_now + cached_now, f64::from(ASKS));
    assert!(cached_now >= 1.0, "sent {sent_now}, cached {cached_now}");
    assert!(
        sent_now <= f64::from(ASKS / 2),
        "sent {sent_now} of {ASKS} look-ups to the store"
    );
    setup.healthy_still_works().await;
}

/// An upstream's server→client requests that cannot reach the client (no stream) are
/// answered with errors, at most a few at a time: 1,100 pings no longer open ~1,000
/// upstream connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn surplus_server_requests_do_not_open_a_connection_each() {
    const PINGS: u64 = 1100;
    let mut setup = Setup::new(GatewayConfig::new(1)).await;
    // One kept-alive connection for every probe, so probing opens none.
    let probe = std::sync::Arc::new(tokio::sync::Mutex::new(
        HttpConn::connect(setup.counter.addr)
            .await
            .expect("connect to counter"),
    ));
    let stats = || {
        let probe = probe.clone();
        async move {
            let response = probe
                .lock()
                .await
                .send(&Request::get("/stats"))
                .await
                .expect("stats");
            let v: Value = response.json().expect("stats JSON");
            (
                v["connections"].as_u64().unwrap_or(0),
                v["flood_answers"].as_u64().unwrap_or(0),
            )
        }
    };
    let (connections_before, _) = stats().await;
    // JSON only and no GET stream: the pings have nowhere to go.
    let mut client = setup.gateway.client().with_accept("application/json");
    client.initialize().await.expect("initialize");
    let reply = client
        .call_tool("flood", json!({"count": PINGS}))
        .await
        .expect("tools/call");
    reply.result().expect("the call itself succeeds");
    let gateway = &setup.gateway;
    let (answered, dropped) = wait_until(
        "every ping answered or dropped",
        Duration::from_secs(60),
        || async {
            let (_, answered) = stats().await;
            let dropped = metric_sum(gateway, "mcpgw_relay_notices_dropped_total").await as u64;
            Ok((answered + dropped >= PINGS).then_some((answered, dropped)))
        },
    )
    .await
    .expect("the pings are dealt with");
    assert_eq!(answered + dropped, PINGS);
    let (connections_after, _) = stats().await;
    let opened = connections_after - connections_before;
    // 32 notices in flight at most, plus the session's own few (initialize, the call).
    // Unbounded, this was about one connection per ping.
    assert!(
        opened <= 32 + 16,
        "{opened} upstream connections for {PINGS} pings ({answered} answered, {dropped} dropped)"
    );
    setup.healthy_still_works().await;
}
