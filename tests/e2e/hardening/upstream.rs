//! Hardening regressions: a misbehaving upstream (`rogue-server`) and a client that
//! sends an endless chunked trailer. Whatever the upstream sends, no session gets
//! another's answer, the worker's memory stays bounded, and a broken answer is a clear
//! error (502 with a JSON-RPC error), never a cut connection.

use std::process::{Command, Stdio};

use mcpgw_tests::ops::{rss_kib, worker_pids};
use mcpgw_tests::process::{ChildGuard, LineReader, TempDir};

#[allow(unused_imports)]
use super::*;

/// A running `rogue-server`, killed on drop.
struct Rogue {
    _child: ChildGuard,
    addr: std::net::SocketAddr,
    _dir: TempDir,
}

impl Rogue {
    fn start() -> Rogue {
        let dir = TempDir::new("mcpgw-rogue").expect("scratch dir");
        let log = dir.path().join("stderr.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rogue-server"));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"));
        let mut child = ChildGuard::spawn("rogue-server", cmd, Some(log)).expect("spawn");
        let lines = LineReader::new(child.take_stdout().expect("stdout"));
        let line = lines
            .next_line(Instant::now() + Duration::from_secs(20))
            .expect("ready line")
            .expect("a line");
        let addr = line
            .strip_prefix("rogue-server listening http://")
            .expect("ready line format")
            .parse()
            .expect("address");
        Rogue {
            _child: child,
            addr,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    async fn stats(&self) -> Value {
        let mut conn = HttpConn::connect(self.addr).await.expect("connect");
        let resp = conn.send(&Request::get("/stats")).await.expect("stats");
        resp.json().expect("stats JSON")
    }

    async fn release(&self) {
        let mut conn = HttpConn::connect(self.addr).await.expect("connect");
        conn.send(&Request::post("/release", "{}"))
            .await
            .expect("release");
    }
}

/// One worker, so that every session shares the worker's pool of connections to the
/// upstream: the place where one session's stray answer could reach another.
fn gateway_for(rogue: &Rogue, limits: &[(&str, &str)], request_timeout_ms: u64) -> Gateway {
    gateway_with(rogue, limits, &[("rogue", request_timeout_ms)])
}

/// The same rogue server as several upstreams `(id, request_timeout_ms)`.
fn gateway_with(rogue: &Rogue, limits: &[(&str, &str)], upstreams: &[(&str, u64)]) -> Gateway {
    let mut config = GatewayConfig::new(1);
    config.limits = limits
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    for (id, timeout) in upstreams {
        config.extra.push_str(&format!(
            "[[upstream]]\nid = \"{id}\"\nurl = \"{}\"\nrequest_timeout_ms = {timeout}\n\n",
            rogue.url()
        ));
    }
    Gateway::start(&config).expect("start mcpgw")
}

async fn session(gateway: &Gateway) -> McpClient {
    let mut c = gateway.client();
    c.initialize().await.expect("initialize");
    c
}

/// `echo` must answer with this session's own upstream session, every time.
async fn echo_is_own(client: &mut McpClient) -> String {
    let reply = client.call_tool("echo", json!({})).await.expect("echo");
    let text = reply.text().expect("echo text");
    assert!(text.starts_with("echo from rogue-"), "{text}");
    text
}

/// The reply is a clear failure: a JSON-RPC error, never a result, never "SMUGGLED".
fn assert_refused(reply: &mcpgw_tests::RpcReply, what: &str) {
    let body = reply.message.to_string();
    assert!(
        !body.contains("SMUGGLED"),
        "{what}: a stray answer got through: {body}"
    );
    let (code, message) = reply
        .error()
        .unwrap_or_else(|| panic!("{what}: expected a JSON-RPC error, got {body}"));
    assert_eq!(code, -32603, "{what}: {message}");
}

#[tokio::test]
async fn a_second_unsolicited_answer_never_reaches_another_session() {
    let rogue = Rogue::start();
    let gateway = gateway_for(&rogue, &[], 10_000);
    let mut a = session(&gateway).await;
    let mut b = session(&gateway).await;
    let own_b = echo_is_own(&mut b).await;
    for round in 0..5 {
        // The stray answer follows the real one at once (caught at the next
        // checkout, or read with the first answer), or comes when the next
        // request is already on the connection (only the id check stands
        // between it and that request, which then fails instead).
        for tool in ["double", "double_late"] {
            let reply = a.call_tool(tool, json!({})).await.expect("double");
            assert!(
                reply.text().expect("text").starts_with("echo from rogue-"),
                "{tool}, round {round}"
            );
            let reply = b.call_tool("echo", json!({})).await.expect("answer");
            if reply.error().is_some() {
                assert_refused(&reply, "the request after a stray answer");
                assert_eq!(reply.status(), 502);
            } else {
                assert_eq!(reply.text().expect("text"), own_b, "{tool}, round {round}");
            }
            // And the connection that carried it is not used again.
            assert_eq!(echo_is_own(&mut b).await, own_b, "{tool}, round {round}");
        }
    }
}

#[tokio::test]
async fn broken_answers_are_502_with_a_jsonrpc_error_and_close_their_connection() {
    let rogue = Rogue::start();
    let gateway = gateway_for(&rogue, &[("max_answer_bytes", "1048576")], 10_000);
    let mut healthy = session(&gateway).await;
    let own = echo_is_own(&mut healthy).await;
    let mut c = session(&gateway).await;

    let reply = c
        .call_tool("truncated", json!({}))
        .await
        .expect("truncated");
    assert_refused(&reply, "a body cut short");
    assert_eq!(reply.status(), 502);

    let reply = c
        .call_tool("big", json!({"size": 3 * 1024 * 1024}))
        .await
        .expect("big");
    assert_refused(&reply, "an answer over max_answer_bytes");
    assert_eq!(reply.status(), 502);
    assert!(
        reply.error().expect("error").1.contains("max_answer_bytes"),
        "{}",
        reply.message
    );
    let reply = c
        .call_tool("big", json!({"size": 512 * 1024}))
        .await
        .expect("big");
    assert!(reply.result().is_ok(), "an answer under the limit passes");

    let reply = c.call_tool("big_head", json!({})).await.expect("big head");
    assert_refused(&reply, "an 82 KB answer head");

    // Both framings at once: answered, and the connection is not reused.
    let before = rogue.stats().await["connections"].as_u64().expect("count");
    let reply = c
        .call_tool("ambiguous", json!({}))
        .await
        .expect("ambiguous");
    assert!(reply.result().is_ok(), "{}", reply.message);
    echo_is_own(&mut c).await;
    let after = rogue.stats().await["connections"].as_u64().expect("count");
    // One for each /stats, and a new one for the echo after the ambiguous answer.
    assert!(
        after >= before + 2,
        "the connection of an ambiguous answer was reused"
    );

    assert_eq!(echo_is_own(&mut healthy).await, own);
}

#[tokio::test]
async fn an_endless_answer_trailer_is_cut_off_with_bounded_memory() {
    let rogue = Rogue::start();
    let gateway = gateway_for(&rogue, &[], 30_000);
    let mut healthy = session(&gateway).await;
    let own = echo_is_own(&mut healthy).await;
    let pid = worker_pids(&gateway).await[0];
    let before = rss_kib(pid);
    let mut c = session(&gateway).await;
    let reply = c.call_tool("trailer", json!({})).await.expect("trailer");
    assert_refused(&reply, "an endless trailer");
    let grown = rss_kib(pid).saturating_sub(before);
    // The trailer section is bounded by 64 KiB; before the fix the worker kept every
    // byte of the 128 MB the upstream sends. 32 MiB leaves room for allocator noise.
    assert!(grown < 32 * 1024, "the worker grew by {grown} KiB");
    assert_eq!(echo_is_own(&mut healthy).await, own);
}

#[tokio::test]
async fn an_endless_request_trailer_is_refused_with_bounded_memory() {
    let setup = Setup::new(GatewayConfig::new(1)).await;
    let mut setup = setup;
    let pid = worker_pids(&setup.gateway).await[0];
    let before = rss_kib(pid);
    let mut conn = HttpConn::connect(setup.gateway.addr)
        .await
        .expect("connect");
    let mut head = format!(
        "POST /mcp HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAccept: application/json\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{{}}\r\n0\r\nX: ",
        conn.host()
    )
    .into_bytes();
    head.extend(std::iter::repeat_n(b'a', 65_533));
    head.push(b'\n');
    conn.write_raw(&head)
        .await
        .expect("head and first trailer line");
    // Then up to 128 MB without a newline, until the gateway answers and hangs up.
    let piece = vec![b'b'; 64 * 1024];
    for _ in 0..2048 {
        if conn.write_raw(&piece).await.is_err() || conn.peer_closed() {
            break;
        }
    }
    let answer = conn.read_response(false).await.expect("an answer");
    assert_eq!(answer.status, 400, "{}", answer.text());
    let grown = rss_kib(pid).saturating_sub(before);
    assert!(grown < 32 * 1024, "the worker grew by {grown} KiB");
    setup.healthy_still_works().await;
}

#[tokio::test]
async fn answers_held_by_a_worker_are_bounded_in_total() {
    let rogue = Rogue::start();
    // Each answer is 1.2 MB; the worker may hold 2 MiB of answers at once. The same
    // server twice: the first answer may wait as long as the test needs, the second
    // gives up after 3 s.
    let gateway = gateway_with(
        &rogue,
        &[
            ("max_answer_bytes", "1572864"),
            ("max_buffered_answer_bytes", "2097152"),
        ],
        &[("patient", 60_000), ("hasty", 3_000)],
    );
    let mut a = session(&gateway).await;
    let mut b = session(&gateway).await;
    let first = tokio::spawn(async move {
        a.call_tool("patient__stalled_big", json!({"size": 1_200_000}))
            .await
            .expect("first big answer")
    });
    wait_until(
        "the first answer to stall",
        Duration::from_secs(20),
        || async { Ok((rogue.stats().await["stalled"].as_u64() == Some(1)).then_some(())) },
    )
    .await
    .expect("stalled");
    // The second cannot get room while the first holds most of the budget: it waits
    // for its deadline (3 s), then fails clearly.
    let reply = b
        .call_tool("hasty__stalled_big", json!({"size": 1_200_000}))
        .await
        .expect("second big answer");
    assert_refused(&reply, "an answer past the worker's budget");
    assert!(
        reply
            .error()
            .expect("error")
            .1
            .contains("max_buffered_answer_bytes"),
        "{}",
        reply.message
    );
    rogue.release().await;
    let reply = first.await.expect("first task");
    assert!(reply.result().is_ok(), "{}", reply.message);
    // Room is given back: the same answer now passes.
    let reply = b
        .call_tool("hasty__big", json!({"size": 1_200_000}))
        .await
        .expect("third big answer");
    assert!(reply.result().is_ok(), "{}", reply.message);
}

#[tokio::test]
async fn request_ids_that_are_not_strings_or_numbers_get_invalid_request() {
    let mut setup = Setup::new(GatewayConfig::new(1)).await;
    let mut client = setup.gateway.client();
    client.initialize().await.expect("initialize");
    for id in ["[[1]]", "{\"a\":1}", "true"] {
        let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/list"}}"#);
        let resp = client
            .send(&client.post_request(body))
            .await
            .expect("answer");
        let v = resp.json().expect("JSON");
        assert_eq!(v["error"]["code"], -32600, "id {id}: {v}");
        assert_eq!(v["id"], Value::Null, "id {id} must not be echoed: {v}");
    }
    setup.healthy_still_works().await;
}
