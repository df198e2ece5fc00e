//! mcpgw in front of upstreams of the stateless revision (2026-07-28 only): the
//! `modern-server` test upstream (rmcp), reached by stateful clients, stateless clients,
//! the rmcp client in its three lifecycle modes and the Python SDK's client, alone or
//! federated with the stateful counter-server, and pinned to the wrong era.

use std::time::Duration;

use mcpgw_tests::http::{HttpConn, Request};
use mcpgw_tests::modern::ModernServer;
use mcpgw_tests::stream::MessageStream;
use mcpgw_tests::{CounterServer, Gateway, GatewayConfig, start_counter, start_modern, wait_until};
use mcpgw_tests::{python, rmcp_client};
use serde_json::{Value, json};

/// The modern server alone behind a gateway with `workers` workers.
fn modern_behind_gateway(workers: usize) -> (ModernServer, Gateway) {
    let modern = start_modern!("modern").expect("start modern-server");
    let gateway = Gateway::start(&GatewayConfig::new(workers).upstream("modern", &modern.url()))
        .expect("start mcpgw");
    (modern, gateway)
}

/// One endpoint, `/mcp`, over the stateful counter-server and the modern server.
fn federated_behind_gateway() -> (CounterServer, ModernServer, Gateway) {
    let counter = start_counter!().expect("start counter-server");
    let modern = start_modern!("modern").expect("start modern-server");
    let gateway = Gateway::start(
        &GatewayConfig::new(1)
            .upstream("counter", &counter.url())
            .upstream("modern", &modern.url())
            .endpoint("/mcp", &["counter", "modern"]),
    )
    .expect("start mcpgw");
    (counter, modern, gateway)
}

/// The JSON text a tool answered, parsed.
fn json_text(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("tool text {text:?} is not JSON: {e}"))
}

/// A stateful client (initialize, session) reaches a 2026-07-28-only upstream: its
/// requests go as stateless requests carrying the client's own info and capabilities,
/// and the upstream never sees an `initialize` or a `DELETE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateful_client_reaches_a_modern_upstream() {
    let (modern, gateway) = modern_behind_gateway(1);
    let mut client = gateway.client();
    let init = client
        .initialize_with(json!({"roots": {"listChanged": true}}))
        .await
        .expect("initialize");
    let result = init.result().expect("initialize result");
    assert_eq!(result["serverInfo"]["name"], "modern", "{result}");
    assert_eq!(result["instructions"], "modern speaks only 2026-07-28");
    assert!(result["capabilities"]["tools"].is_object(), "{result}");

    let sum = client
        .call_tool("add", json!({"a": 2, "b": 40}))
        .await
        .expect("add");
    assert_eq!(sum.text().expect("add text"), "42");

    let echo = client
        .call_tool("echo_meta", json!({}))
        .await
        .expect("echo_meta");
    let said = json_text(&echo.text().expect("echo_meta text"));
    assert_eq!(said["clientInfo"], "mcpgw-tests", "{said}");
    assert_eq!(
        said["clientCapabilities"]["roots"]["listChanged"], true,
        "{said}"
    );
    assert_eq!(said["protocolVersion"], "2026-07-28", "{said}");

    let mut names = client.tool_names().await.expect("tools/list");
    names.sort();
    assert_eq!(
        names,
        ["add", "ask_name", "deploy", "echo_meta", "needs_input"]
    );

    // MRTR is bridged, within bounds: an upstream that asks for input round after
    // round gets an error naming it after ten rounds.
    let asked = client
        .call_tool("needs_input", json!({}))
        .await
        .expect("needs_input");
    let (_, message) = asked.error().expect("input_required must become an error");
    assert!(
        message.contains("upstream modern asked for input 10 times without finishing"),
        "{message}"
    );

    let deleted = client.delete().await.expect("DELETE");
    assert!(deleted.status < 300, "{}", deleted.status);
    let log = modern.log().await.expect("log");
    assert!(
        log.iter().all(|e| e["http"] == "POST"),
        "only POSTs upstream: {log:?}"
    );
    assert!(
        !log.iter().any(|e| e["method"] == "initialize"),
        "no initialize upstream: {log:?}"
    );
    assert_eq!(
        log.iter()
            .filter(|e| e["method"] == "server/discover")
            .count(),
        1,
        "the era is asked once: {log:?}"
    );
}

/// A hand-written stateless request, as `front/stateless/meta.rs` requires it.
fn stateless_request(method: &str, name: Option<&str>, params: Value) -> Request {
    let mut params = params;
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {"sampling": {}},
        "io.modelcontextprotocol/clientInfo": {"name": "hand-written", "version": "1"},
        "progressToken": "kept",
    });
    let body = json!({"jsonrpc": "2.0", "id": 9, "method": method, "params": params});
    let mut req = Request::post("/mcp", body.to_string())
        .header("Content-Type", "application/json")
        .header("Accept", "application/json, text/event-stream")
        .header("MCP-Protocol-Version", "2026-07-28")
        .header("Mcp-Method", method);
    if let Some(n) = name {
        req = req.header("Mcp-Name", n);
    }
    req
}

/// A stateless client reaches the modern upstream; its `_meta` reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateless_client_reaches_a_modern_upstream() {
    let (modern, gateway) = modern_behind_gateway(1);
    let mut conn = HttpConn::connect(gateway.addr).await.expect("connect");
    let call = |name: &str, args: Value| {
        stateless_request(
            "tools/call",
            Some(name),
            json!({"name": name, "arguments": args}),
        )
    };
    let resp = conn
        .send(&call("add", json!({"a": 1, "b": 2})))
        .await
        .expect("add");
    assert_eq!(resp.status, 200, "{:?}", resp.text());
    let v = resp.json().expect("json");
    assert_eq!(v["result"]["content"][0]["text"], "3", "{v}");
    assert_eq!(v["result"]["resultType"], "complete", "{v}");

    let resp = conn
        .send(&call("echo_meta", json!({})))
        .await
        .expect("echo_meta");
    let v = resp.json().expect("json");
    let said = json_text(v["result"]["content"][0]["text"].as_str().expect("text"));
    assert_eq!(said["clientInfo"], "hand-written", "{said}");
    assert_eq!(said["clientCapabilities"]["sampling"], json!({}), "{said}");

    // One upstream: its input_required passes through, requestState and all.
    let resp = conn
        .send(&call("needs_input", json!({})))
        .await
        .expect("needs_input");
    let v = resp.json().expect("json");
    assert_eq!(v["result"]["resultType"], "input_required", "{v}");
    assert_eq!(v["result"]["requestState"], "opaque-state-1", "{v}");

    let resp = conn
        .send(&stateless_request("server/discover", None, json!({})))
        .await
        .expect("discover");
    let v = resp.json().expect("json");
    assert_eq!(
        v["result"]["_meta"]["io.modelcontextprotocol/serverInfo"]["name"], "modern",
        "{v}"
    );
    let log = modern.log().await.expect("log");
    assert!(
        !log.iter()
            .any(|e| e["method"] == "initialize" || e["http"] != "POST"),
        "{log:?}"
    );
}

/// One endpoint over the stateful counter-server and the modern server: lists merge,
/// calls go to each by namespaced name, for a stateful and a stateless client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateful_and_a_modern_upstream_federate() {
    let (counter, _modern, gateway) = federated_behind_gateway();
    let mut client = gateway.client();
    client.initialize().await.expect("initialize");
    let names = client.tool_names().await.expect("tools/list");
    for expected in ["counter__increment", "modern__add", "modern__echo_meta"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
    assert_eq!(
        client.count("counter__increment").await.expect("increment"),
        1
    );
    assert_eq!(
        client.count("counter__increment").await.expect("increment"),
        2
    );
    let sum = client
        .call_tool("modern__add", json!({"a": 5, "b": 6}))
        .await
        .expect("add");
    assert_eq!(sum.text().expect("text"), "11");
    // A stateful client has the upstream's input_required bridged (see
    // `a_stateful_client_answers_a_modern_upstreams_elicitation`): one that asks round
    // after round is given up on after ten, with an error that says so.
    let asked = client
        .call_tool("modern__needs_input", json!({}))
        .await
        .expect("needs_input answer");
    let (_, message) = asked.error().expect("an error");
    assert!(
        message.contains("upstream modern asked for input 10 times without finishing"),
        "{message}"
    );
    // A stateless client gets input_required as it is, even with two upstreams: its
    // retry names the same namespaced tool, so it reaches the same upstream.
    let mut conn = HttpConn::connect(gateway.addr).await.expect("connect");
    let resp = conn
        .send(&stateless_request(
            "tools/call",
            Some("modern__needs_input"),
            json!({"name": "modern__needs_input"}),
        ))
        .await
        .expect("needs_input");
    let v = resp.json().expect("json");
    assert_eq!(v["result"]["resultType"], "input_required", "{v}");
    assert_eq!(v["result"]["requestState"], "opaque-state-1", "{v}");
    let resp = conn
        .send(&stateless_request(
            "tools/call",
            Some("modern__add"),
            json!({"name": "modern__add", "arguments": {"a": 1, "b": 1}}),
        ))
        .await
        .expect("stateless add");
    let v = resp.json().expect("json");
    assert_eq!(v["result"]["content"][0]["text"], "2", "{v}");
    let stats = counter.stats().await.expect("stats");
    assert!(stats.initialize >= 1, "{stats:?}");
}

/// `era = "stateful"` pinned on a modern upstream: it refuses `initialize`, and the
/// client's error names the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_modern_upstream_pinned_stateful_fails_clearly() {
    let modern = start_modern!("modern").expect("start modern-server");
    let mut config = GatewayConfig::new(1);
    config.extra = format!(
        "[[upstream]]\nid = \"pinned\"\nurl = {:?}\nera = \"stateful\"",
        modern.url()
    );
    let gateway = Gateway::start(&config).expect("start mcpgw");
    let mut client = gateway.client();
    // The session opens (its upstream failed to open; initialize names it or goes on
    // without it) and the first call says which upstream failed and why.
    let _ = client.initialize().await;
    if client.session_id().is_some() {
        let reply = client
            .call_tool("add", json!({"a": 1, "b": 2}))
            .await
            .expect("tools/call");
        let (_, message) = reply
            .error()
            .expect("a pinned stateful modern upstream fails");
        assert!(message.contains("pinned"), "{message}");
        assert!(message.contains("initialize"), "{message}");
    }
    let log = modern.log().await.expect("log");
    assert!(
        log.iter().any(|e| e["method"] == "initialize"),
        "pinned stateful: initialize was tried: {log:?}"
    );
    assert!(
        !log.iter().any(|e| e["method"] == "server/discover"),
        "pinned: never asked: {log:?}"
    );
}

/// The official Rust SDK (rmcp) as a client in each of its lifecycle modes, through mcpgw
/// (two workers), in front of the modern server alone. `auto` (its default) and
/// `discover` settle on 2026-07-28 with the gateway (modern → modern: passed through);
/// `initialize` opens a session of a stateful version (stateful → modern: bridged, the
/// gateway speaks 2026-07-28 upstream for it). Each lists the modern server's tools and
/// calls `add`; `echo_meta` shows that the upstream got the client's own name and
/// 2026-07-28 in every request's `_meta`, whichever era the client speaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmcp_client_in_each_lifecycle_mode_through_mcpgw_to_a_modern_upstream() {
    use rmcp::ClientHandler as _;
    use rmcp::model::CallToolRequestParams;
    use rmcp::service::ClientLifecycleMode;

    let (modern, gateway) = modern_behind_gateway(2);
    let url = format!("http://{}/mcp", gateway.addr);
    let own_name = ().get_info().client_info.name;
    let modes = [
        ("auto", rmcp_client::auto(), true),
        ("discover", rmcp_client::discover(), true),
        ("initialize", ClientLifecycleMode::Initialize, false),
    ];
    for (what, mode, stateless) in modes {
        let client = rmcp_client::connect(&url, mode)
            .await
            .unwrap_or_else(|e| panic!("rmcp client in {what} mode: {e:#}"));
        let info = client.peer_info().expect("what the server said of itself");
        let version = info.protocol_version.to_string();
        assert_eq!(version == "2026-07-28", stateless, "{what}: {info:?}");
        let server = info.server_info.as_ref().map(|s| s.name.as_str());
        assert_eq!(server, Some("modern"), "{what}: {info:?}");

        let tools = client.list_all_tools().await.expect("tools/list");
        let mut names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
        names.sort();
        assert_eq!(
            names,
            ["add", "ask_name", "deploy", "echo_meta", "needs_input"],
            "{what}"
        );

        let mut args = serde_json::Map::new();
        args.insert("a".into(), json!(20));
        args.insert("b".into(), json!(22));
        let result = client
            .call_tool(CallToolRequestParams::new("add").with_arguments(args))
            .await
            .unwrap_or_else(|e| panic!("{what}: tools/call add: {e}"));
        let content = serde_json::to_value(&result.content).expect("content");
        assert_eq!(content[0]["text"], "42", "{what}: {content}");

        let result = client
            .call_tool(CallToolRequestParams::new("echo_meta"))
            .await
            .unwrap_or_else(|e| panic!("{what}: tools/call echo_meta: {e}"));
        let content = serde_json::to_value(&result.content).expect("content");
        let said = json_text(content[0]["text"].as_str().expect("echo_meta text"));
        assert_eq!(said["clientInfo"], own_name.as_str(), "{what}: {said}");
        assert_eq!(said["protocolVersion"], "2026-07-28", "{what}: {said}");
        client.cancel().await.expect("close the client");
    }
    let log = modern.log().await.expect("log");
    assert!(
        !log.iter()
            .any(|e| e["method"] == "initialize" || e["http"] != "POST"),
        "the modern server never gets an initialize, a GET or a DELETE: {log:?}"
    );
}

/// The official Python MCP SDK (2.3, in `tests/.venv`) as a client in its default mode,
/// through mcpgw in front of the modern server alone: it must negotiate 2026-07-28
/// with the gateway, list the modern server's tools, get `add`'s sum, and `echo_meta`
/// must show that its own client name reached the upstream (`tests/python/modern_client.py`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_client_through_mcpgw_to_a_modern_upstream() {
    let (modern, gateway) = modern_behind_gateway(2);
    let url = format!("http://{}/mcp", gateway.addr);
    let out = python::expect_ok(
        "modern_client.py",
        python::script("modern_client.py").arg(&url),
    )
    .await;
    assert!(out.contains("protocol version: 2026-07-28"), "{out}");
    let log = modern.log().await.expect("log");
    assert!(
        log.iter().any(|e| e["method"] == "tools/call"),
        "the calls reached the modern server: {log:?}"
    );
    assert!(
        !log.iter().any(|e| e["method"] == "initialize"),
        "no initialize upstream: {log:?}"
    );
}

/// `subscriptions/listen` of a stateless client on an endpoint over the stateful counter
/// and the modern server: the counter is followed on its GET stream, the modern server
/// gets a `subscriptions/listen` of its own; one acknowledgement after both, then the
/// list changes of each, with the client's subscription id (not the upstream's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_spans_a_stateful_and_a_modern_upstream() {
    use mcpgw_tests::stateless::META_SUBSCRIPTION_ID as SUBSCRIPTION_ID;
    let within = Duration::from_secs(15);
    let (_counter, modern, gateway) = federated_behind_gateway();
    let mut listen = stateless_request(
        "subscriptions/listen",
        None,
        json!({"notifications": {"toolsListChanged": true, "promptsListChanged": true}}),
    );
    listen = listen.set_header("Accept", "text/event-stream, application/json");
    let mut stream = MessageStream::send(gateway.addr, &listen)
        .await
        .expect("a subscription stream");
    let ack = stream.expect(within).await.expect("acknowledgement");
    assert_eq!(
        ack["method"], "notifications/subscriptions/acknowledged",
        "{ack}"
    );
    assert_eq!(ack["params"]["_meta"][SUBSCRIPTION_ID], 9, "{ack}");
    assert_eq!(
        ack["params"]["notifications"],
        json!({"toolsListChanged": true}),
        "{ack}"
    );
    let log = modern.log().await.expect("modern log");
    assert!(
        log.iter().any(|e| e["method"] == "subscriptions/listen"),
        "the modern server was asked: {log:?}"
    );

    let mut conn = HttpConn::connect(gateway.addr).await.expect("connect");
    for (tool, expected) in [("modern__notify", "1"), ("counter__notify_all", "1")] {
        let resp = conn
            .send(&stateless_request(
                "tools/call",
                Some(tool),
                json!({"name": tool, "arguments": {}}),
            ))
            .await
            .expect(tool);
        let v = resp.json().expect("json");
        assert_eq!(v["result"]["content"][0]["text"], expected, "{tool}: {v}");
        let m = stream.expect(within).await.expect("a notification");
        assert_eq!(
            m["method"], "notifications/tools/list_changed",
            "{tool}: {m}"
        );
        assert_eq!(m["params"]["_meta"][SUBSCRIPTION_ID], 9, "{tool}: {m}");
    }
    stream.close();
    drop(gateway);
}

/// A stateful client's GET stream hears a stateless upstream's list changes: the
/// gateway keeps a subscription of its own at that upstream while the client's stream is
/// open, and passes what comes on it to the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateful_clients_stream_hears_a_modern_upstream() {
    let (modern, gateway) = modern_behind_gateway(1);
    let mut client = gateway.client();
    client.initialize().await.expect("initialize");
    // The upstream handle exists once the session used it.
    let sum = client
        .call_tool("add", json!({"a": 1, "b": 2}))
        .await
        .expect("add");
    assert_eq!(sum.text().expect("text"), "3");
    let mut stream = MessageStream::get(&client, gateway.addr)
        .await
        .expect("GET stream");
    // The subscription opens in the background: notify until it reaches one.
    let client = tokio::sync::Mutex::new(client);
    wait_until(
        "the gateway's subscription at the modern server is open",
        Duration::from_secs(15),
        || async {
            let reply = client.lock().await.call_tool("notify", json!({})).await?;
            Ok((reply.text()? == "1").then_some(()))
        },
    )
    .await
    .expect("notify reaches one subscription");
    let m = stream
        .expect(Duration::from_secs(15))
        .await
        .expect("a notification on the GET stream");
    assert_eq!(m["method"], "notifications/tools/list_changed", "{m}");
    stream.close();
    let log = modern.log().await.expect("log");
    assert!(
        !log.iter()
            .any(|e| e["method"] == "initialize" || e["http"] == "DELETE"),
        "{log:?}"
    );
}

/// MRTR bridged for a stateful client: a 2026-07-28 upstream answers `input_required`
/// with an elicitation; the gateway puts it to the client on the call's SSE stream (as
/// a 2025 upstream's elicitation would come), takes the client's answer, and sends the
/// call again with `inputResponses` and the upstream's `requestState`, which the
/// client never sees. A client without the elicitation capability gets an error that
/// names it; so does one whose answer is an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateful_client_answers_a_modern_upstreams_elicitation() {
    let within = Duration::from_secs(15);
    let (modern, gateway) = modern_behind_gateway(1);
    let mut client = gateway.client();
    client
        .initialize_with(json!({"elicitation": {"form": {}}}))
        .await
        .expect("initialize");
    let call = |id: &str| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": "ask_name", "arguments": {}}})
    };
    for (round, answer, expected) in [
        (
            "accepted",
            json!({"result": {"action": "accept", "content": {"name": "Ada"}}}),
            Ok("hello Ada"),
        ),
        (
            "declined",
            json!({"result": {"action": "decline"}}),
            Ok("declined"),
        ),
        (
            "refused",
            json!({"error": {"code": -1, "message": "no thanks"}}),
            Err("the client refused the upstream's input request: no thanks"),
        ),
    ] {
        let mut stream = MessageStream::post(&client, gateway.addr, &call(round))
            .await
            .expect("call stream");
        let request = stream.expect(within).await.expect("the input request");
        assert_eq!(request["method"], "elicitation/create", "{request}");
        assert_eq!(request["params"]["message"], "Your name?", "{request}");
        let gateway_id = request["id"].as_str().expect("a string id").to_owned();
        assert!(gateway_id.starts_with("mcpgw:s"), "{request}");
        let mut reply = answer.clone();
        reply["jsonrpc"] = json!("2.0");
        reply["id"] = json!(gateway_id);
        let status = client
            .send(&client.post_request(reply.to_string()))
            .await
            .expect("POST the answer")
            .status;
        assert_eq!(status, 202, "{round}: the answer was not taken");
        let (response, rest) = stream
            .until_response(&json!(round), within)
            .await
            .expect("the call's answer");
        assert!(rest.is_empty(), "{round}: unexpected messages {rest:?}");
        let text = response.to_string();
        assert!(
            !text.contains("ask-name-1"),
            "the requestState leaked: {text}"
        );
        match expected {
            Ok(greeting) => assert_eq!(
                response["result"]["content"][0]["text"], greeting,
                "{round}: {response}"
            ),
            Err(message) => {
                assert_eq!(response["error"]["message"], message, "{round}: {response}")
            }
        }
    }
    // The upstream saw each call once more per answered round, never an initialize.
    let calls = modern
        .log()
        .await
        .expect("modern log")
        .iter()
        .filter(|r| r["method"] == "tools/call")
        .count();
    assert_eq!(calls, 2 + 2 + 1, "two rounds for each answered call");

    // A client that cannot be asked: an error naming the capability, no retry.
    let mut plain = gateway.client();
    plain.initialize().await.expect("initialize");
    let reply = plain
        .call_tool("ask_name", json!({}))
        .await
        .expect("an answer");
    let (_, message) = reply.error().expect("an error");
    assert!(
        message.contains("did not declare the elicitation (form mode) capability"),
        "{message}"
    );
}

/// `Mcp-Param-*` (a tool's `x-mcp-header` arguments mirrored in headers): the gateway
/// learns a tool's annotations from the `tools/list` answers it passes (or, for a tool
/// never listed through it, from a `tools/list` of its own after the upstream refused
/// the call with -32020, then sends the call once more), mirrors the arguments of a
/// call it sends to a 2026-07-28 upstream (which checks them: rmcp refuses a call
/// without them), and checks the headers of a stateless client's call against its
/// body before anything goes upstream (-32020 when they disagree).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameter_headers_are_mirrored_upstream_and_checked_from_clients() {
    let (modern, gateway) = modern_behind_gateway(1);
    // A stateful client: its requests reach the upstream as 2026-07-28 ones.
    let mut client = gateway.client();
    client.initialize().await.expect("initialize");
    // Not listed yet: refused upstream once, learned, sent again.
    let first = client
        .call_tool("deploy", json!({"region": "ap-1"}))
        .await
        .expect("deploy");
    assert_eq!(
        first.text().expect("text"),
        "deployed to ap-1",
        "{}",
        first.message
    );
    let log = modern.log().await.expect("log");
    let methods: Vec<&str> = log.iter().filter_map(|e| e["method"].as_str()).collect();
    assert!(
        methods.ends_with(&["tools/call", "tools/list", "tools/call"]),
        "{methods:?}"
    );
    let names = client.tool_names().await.expect("tools/list");
    assert!(names.iter().any(|n| n == "deploy"), "{names:?}");
    for region in ["eu-west-1", "é-1"] {
        let done = client
            .call_tool("deploy", json!({"region": region}))
            .await
            .expect("deploy");
        assert_eq!(
            done.text().expect("text"),
            format!("deployed to {region}"),
            "{}",
            done.message
        );
    }

    // A stateless client: its own headers are checked against the body.
    let calls_before = modern
        .log()
        .await
        .expect("log")
        .iter()
        .filter(|e| e["method"] == "tools/call")
        .count();
    let deploy = |region: &str| {
        stateless_request(
            "tools/call",
            Some("deploy"),
            json!({"name": "deploy",
            "arguments": {"region": region}}),
        )
    };
    let mut conn = HttpConn::connect(gateway.addr).await.expect("connect");
    for (why, request) in [
        ("missing", deploy("eu")),
        ("different", deploy("eu").header("Mcp-Param-Region", "us")),
        (
            "no argument",
            stateless_request(
                "tools/call",
                Some("deploy"),
                json!({"name": "deploy", "arguments": {}}),
            )
            .header("Mcp-Param-Region", "eu"),
        ),
    ] {
        let refused = conn.send(&request).await.expect("answer");
        assert_eq!(refused.status, 400, "{why}: {}", refused.text());
        let v = refused.json().expect("json");
        assert_eq!(v["error"]["code"], -32020, "{why}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("mcp-param-region")),
            "{why}: {v}"
        );
    }
    let ok = conn
        .send(&deploy("eu").header("Mcp-Param-Region", "eu"))
        .await
        .expect("answer");
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(
        ok.json().expect("json")["result"]["content"][0]["text"],
        "deployed to eu"
    );
    let calls_after = modern
        .log()
        .await
        .expect("log")
        .iter()
        .filter(|e| e["method"] == "tools/call")
        .count();
    assert_eq!(
        calls_after,
        calls_before + 1,
        "refused calls never went upstream"
    );
}
