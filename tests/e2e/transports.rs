//! Upstream transports other than Streamable HTTP, through the real binary: stdio
//! servers (one process per upstream session, never shared), built with the official
//! Python MCP SDK (`tests/python/stdio_counter.py`, in the venv `scripts/test-all.sh`
//! makes).

use std::path::Path;
use std::time::Duration;

use mcpgw_tests::ops::metric_sum;
use mcpgw_tests::python;
use mcpgw_tests::{Gateway, GatewayConfig, McpClient, wait_until};
use serde_json::json;

/// A gateway whose only upstream, `counter`, is the stdio counter.
fn stdio_gateway(workers: usize, max_processes: u32) -> Gateway {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/stdio_counter.py");
    let mut config = GatewayConfig::new(workers);
    config.extra = format!(
        "[[upstream]]\nid = \"counter\"\ntransport = \"stdio\"\ncommand = {:?}\nargs = [{:?}]\nenv = {{ PYTHONUNBUFFERED = \"1\" }}\nmax_processes = {max_processes}\n",
        python::interpreter().display().to_string(),
        script.display().to_string(),
    );
    Gateway::start(&config).expect("start mcpgw")
}

async fn text_of(client: &mut McpClient, tool: &str) -> String {
    let reply = client.call_tool(tool, json!({})).await.expect(tool);
    reply
        .text()
        .unwrap_or_else(|e| panic!("{tool}: {e}: {}", reply.message))
}

async fn pid_of(client: &mut McpClient) -> u32 {
    text_of(client, "pid").await.parse().expect("pid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdio_sessions_get_their_own_process_which_ends_with_them() {
    let gateway = stdio_gateway(2, 8);
    let mut a = gateway.client();
    let mut b = gateway.client();
    a.initialize().await.expect("initialize a");
    b.initialize().await.expect("initialize b");
    for _ in 0..3 {
        text_of(&mut a, "increment").await;
    }
    assert_eq!(
        text_of(&mut b, "increment").await,
        "1",
        "b has its own process"
    );
    assert_eq!(text_of(&mut a, "get_count").await, "3");
    let (pa, pb) = (pid_of(&mut a).await, pid_of(&mut b).await);
    assert_ne!(pa, pb);
    assert!(mcpgw_tests::process::process_alive(pa));
    // One process per session, reused for every call.
    assert_eq!(pid_of(&mut a).await, pa);

    a.delete().await.expect("delete");
    wait_until(
        "the process of the deleted session to end",
        Duration::from_secs(15),
        || async { Ok((!mcpgw_tests::process::process_alive(pa)).then_some(())) },
    )
    .await
    .expect("process ended");
    assert!(
        mcpgw_tests::process::process_alive(pb),
        "the other session's process lives on"
    );
    assert_eq!(text_of(&mut b, "get_count").await, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_stdio_process_is_reported_and_replaced() {
    let gateway = stdio_gateway(1, 8);
    let mut client = gateway.client();
    client.initialize().await.expect("initialize");
    text_of(&mut client, "increment").await;
    let first = pid_of(&mut client).await;
    let reply = client
        .call_tool("crash", json!({}))
        .await
        .expect("crash answer");
    let (code, message) = reply
        .error()
        .expect("a JSON-RPC error for the crashed call");
    assert_eq!(code, -32603, "{message}");
    assert!(message.contains("exited"), "{message}");
    // The next call starts a new process (state starts over: it cannot survive).
    assert_eq!(text_of(&mut client, "increment").await, "1");
    let second = pid_of(&mut client).await;
    assert_ne!(first, second);
    assert!(metric_sum(&gateway, "mcpgw_upstream_session_events_total").await > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdio_process_cap_gives_a_clear_error() {
    let gateway = stdio_gateway(1, 2);
    let mut clients = Vec::new();
    for _ in 0..2 {
        let mut c = gateway.client();
        c.initialize().await.expect("initialize");
        text_of(&mut c, "increment").await;
        clients.push(c);
    }
    let mut third = gateway.client();
    third.initialize().await.expect("initialize");
    let reply = third
        .call_tool("increment", json!({}))
        .await
        .expect("answer");
    let (_, message) = reply.error().expect("refused beyond the cap");
    assert!(message.contains("max_processes"), "{message}");
    // Ending a session frees its place.
    clients[0].delete().await.expect("delete");
    let third = tokio::sync::Mutex::new(third);
    wait_until("a free process slot", Duration::from_secs(15), || async {
        let reply = third.lock().await.call_tool("increment", json!({})).await?;
        Ok(reply.text().ok())
    })
    .await
    .expect("served once a process ended");
}

/// A port nobody listens on right now (bound, then released) for a server that
/// cannot be told to pick its own.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_sse_upstream_serves_lists_and_calls() {
    let port = free_port();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/stdio_counter.py");
    let mut cmd = std::process::Command::new(python::interpreter());
    cmd.arg(&script)
        .arg("--sse")
        .arg(port.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    let _server = mcpgw_tests::process::ChildGuard::spawn("legacy-sse-counter", cmd, None)
        .expect("start the legacy SSE server");
    wait_until("the legacy SSE server", Duration::from_secs(30), || async {
        Ok(tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(|_| ()))
    })
    .await
    .expect("legacy server listening");

    let mut config = GatewayConfig::new(2);
    config.extra = format!(
        "[[upstream]]\nid = \"old\"\ntransport = \"sse\"\nurl = \"http://127.0.0.1:{port}/sse\"\n"
    );
    let gateway = Gateway::start(&config).expect("start mcpgw");
    let mut client = gateway.client();
    client.initialize().await.expect("initialize");
    let tools = client
        .request("tools/list", json!({}))
        .await
        .expect("tools/list");
    let names: Vec<&str> = tools.result().expect("list result")["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(names.contains(&"increment"), "{names:?}");
    assert_eq!(text_of(&mut client, "increment").await, "1");
    assert_eq!(text_of(&mut client, "increment").await, "2");
    client.delete().await.expect("delete");
}
