//! The stateful MCP surface through the real `mcpgw` binary (two workers, two
//! counter-server upstreams `a` and `b` on `/mcp`): server→client requests (sampling,
//! elicitation, roots) on a call's stream and on the GET stream, with ids rewritten and
//! the client's answers correlated back; progress and log notifications to the calling
//! client only; notifications on the GET stream to their session only; logging levels on
//! every upstream; cancellation to the one upstream running the call, also when the
//! client goes away; pending server requests failed when their client or session ends.
//!
//! The counter-server's hidden tools (`ask`, `chatty`, `notify`, cancellable `slow`) and
//! its `/debug/events` show what the upstream saw.

use std::time::Duration;

use mcpgw_tests::python;
use mcpgw_tests::stream::MessageStream;
use mcpgw_tests::{
    CounterServer, Gateway, GatewayConfig, HttpConn, McpClient, start_counter, wait_until,
};
use serde_json::{Value, json};

/// Bound on waiting for one message or condition; only a hang takes this long.
const WAIT: Duration = Duration::from_secs(20);

const ALL_CAPS: fn() -> Value =
    || json!({"sampling": {}, "elicitation": {}, "roots": {"listChanged": true}});

struct Setup {
    a: CounterServer,
    b: CounterServer,
    gateway: Gateway,
}

fn setup() -> Setup {
    let a = start_counter!(mcpgw_tests::CounterOpts::named("a")).expect("start counter a");
    let b = start_counter!(mcpgw_tests::CounterOpts::named("b")).expect("start counter b");
    let gateway = Gateway::start(
        &GatewayConfig::new(2)
            .upstream("a", &a.url())
            .upstream("b", &b.url()),
    )
    .expect("start mcpgw");
    Setup { a, b, gateway }
}

/// Sends a 60 s `a__slow` call with JSON-RPC id `id` for `c`'s session on a
/// connection of its own, and waits until upstream `a` runs it.
async fn start_slow_call(s: &Setup, c: &McpClient, id: u64) -> HttpConn {
    let mut conn = HttpConn::connect(s.gateway.addr).await.expect("connect");
    let slow = c.post_request(call(json!(id), "a__slow", json!({"ms": 60_000})).to_string());
    conn.write_raw(&slow.to_bytes(conn.host()))
        .await
        .expect("send slow");
    wait_until("the slow call to run", WAIT, || async {
        Ok((s.a.stats().await?.slow_in_flight == 1).then_some(()))
    })
    .await
    .expect("slow call in flight");
    conn
}

async fn client(gateway: &Gateway, capabilities: Value) -> McpClient {
    let mut c = gateway.client().with_fresh_connections();
    c.initialize_with(capabilities).await.expect("initialize");
    c
}

fn call(id: Value, tool: &str, arguments: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": tool, "arguments": arguments}})
}

/// POSTs a message (a response or notification) for `client`'s session; returns the
/// HTTP status.
async fn post(client: &mut McpClient, message: &Value) -> u16 {
    let request = client.post_request(message.to_string());
    client.send(&request).await.expect("POST").status
}

/// The tool result's `structuredContent.answer`: the response the upstream got.
fn answer_seen_upstream(response: &Value) -> &Value {
    &response["result"]["structuredContent"]["answer"]
}

async fn wait_events(counter: &CounterServer, kind: &str, n: usize) -> Vec<Value> {
    wait_until(
        &format!("{n} {kind} events at {}", counter.name),
        WAIT,
        || async {
            let events = counter.events_of(kind).await?;
            Ok((events.len() >= n).then_some(events))
        },
    )
    .await
    .expect("upstream events")
}

async fn wait_open_streams(counter: &CounterServer, n: u64) {
    wait_until(
        &format!("{n} GET streams open at {}", counter.name),
        WAIT,
        || async { Ok((counter.stats().await?.open_streams == n).then_some(())) },
    )
    .await
    .expect("upstream GET streams");
}

/// Asks the client `method` through tool `tool` on the call's stream, checks what the
/// client sees, answers with `result`, and returns the gateway's id for the request.
async fn ask_on_call_stream(
    s: &Setup,
    c: &mut McpClient,
    tool: &str,
    method: &str,
    params: Value,
    result: Value,
) -> String {
    let id = json!(format!("call-{method}"));
    let mut stream = MessageStream::post(
        c,
        s.gateway.addr,
        &call(
            id.clone(),
            tool,
            json!({"method": method, "params": params}),
        ),
    )
    .await
    .expect("call stream");
    let request = stream.expect(WAIT).await.expect("the server request");
    assert_eq!(request["method"], method, "{request}");
    assert_eq!(request["params"], params, "{request}");
    let gateway_id = request["id"].as_str().expect("a string id").to_owned();
    assert!(
        gateway_id.starts_with("mcpgw:s"),
        "the upstream's id was not rewritten: {request}"
    );
    let status = post(
        c,
        &json!({"jsonrpc": "2.0", "id": gateway_id, "result": result}),
    )
    .await;
    assert_eq!(status, 202, "the client's answer was not accepted");
    let (response, rest) = stream.until_response(&id, WAIT).await.expect("tool result");
    assert!(rest.is_empty(), "unexpected messages: {rest:?}");
    assert_eq!(response["result"]["isError"], false, "{response}");
    let seen = answer_seen_upstream(&response);
    assert_eq!(seen["result"], result, "{response}");
    assert!(
        seen["id"].as_str().is_some_and(|i| i.starts_with("ask-")),
        "the upstream did not get its own id back: {response}"
    );
    gateway_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_elicitation_and_roots_complete_with_the_clients_answers() {
    let s = setup();
    let mut c = client(&s.gateway, ALL_CAPS()).await;

    let sampling = ask_on_call_stream(
        &s,
        &mut c,
        "a__ask",
        "sampling/createMessage",
        json!({"messages": [{"role": "user", "content": {"type": "text", "text": "hi"}}],
            "maxTokens": 10}),
        json!({"role": "assistant", "content": {"type": "text", "text": "hello"},
            "model": "test-model"}),
    )
    .await;
    let elicitation = ask_on_call_stream(
        &s,
        &mut c,
        "a__ask",
        "elicitation/create",
        json!({"message": "Your name?", "requestedSchema": {"type": "object",
            "properties": {"name": {"type": "string"}}}}),
        json!({"action": "accept", "content": {"name": "Ada"}}),
    )
    .await;
    let roots = ask_on_call_stream(
        &s,
        &mut c,
        "b__ask",
        "roots/list",
        json!({}),
        json!({"roots": [{"uri": "file:///srv/relay-test", "name": "test"}]}),
    )
    .await;
    let mut ids = vec![sampling, elicitation, roots];
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "gateway ids were reused: {ids:?}");

    // The upstream saw the client's real capabilities in its own initialize.
    let inits = s.a.events_of("initialize").await.expect("events");
    assert_eq!(inits.len(), 1, "{inits:?}");
    assert_eq!(inits[0]["capabilities"], ALL_CAPS(), "{inits:?}");
    assert_eq!(inits[0]["clientInfo"]["name"], "mcpgw-tests", "{inits:?}");

    // On the GET stream: the tool asks there, the answer goes back the same way.
    let mut get = MessageStream::get(&c, s.gateway.addr)
        .await
        .expect("GET stream");
    wait_open_streams(&s.a, 1).await;
    let id = json!("via-get");
    let mut answer = MessageStream::post(
        &c,
        s.gateway.addr,
        &call(
            id.clone(),
            "a__ask",
            json!({"method": "roots/list", "via": "get"}),
        ),
    )
    .await
    .expect("call");
    let request = get.expect(WAIT).await.expect("request on the GET stream");
    assert_eq!(request["method"], "roots/list", "{request}");
    let gateway_id = request["id"].clone();
    assert!(
        gateway_id
            .as_str()
            .is_some_and(|i| i.starts_with("mcpgw:s")),
        "{request}"
    );
    let roots = json!({"roots": [{"uri": "file:///via-get"}]});
    assert_eq!(
        post(
            &mut c,
            &json!({"jsonrpc": "2.0", "id": gateway_id, "result": roots})
        )
        .await,
        202
    );
    let (response, _) = answer.until_response(&id, WAIT).await.expect("result");
    assert_eq!(
        answer_seen_upstream(&response)["result"],
        roots,
        "{response}"
    );

    // An answer nobody waits for is refused, with a JSON-RPC error.
    assert_eq!(
        post(
            &mut c,
            &json!({"jsonrpc": "2.0", "id": gateway_id, "result": roots})
        )
        .await,
        400
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_from_two_upstreams_get_distinct_ids_and_their_own_answers() {
    let s = setup();
    let mut c = client(&s.gateway, ALL_CAPS()).await;
    let ask = json!({"method": "roots/list"});
    // Both fresh counters call their first request "ask-1".
    let mut from_a =
        MessageStream::post(&c, s.gateway.addr, &call(json!(1), "a__ask", ask.clone()))
            .await
            .expect("a");
    let mut from_b = MessageStream::post(&c, s.gateway.addr, &call(json!(2), "b__ask", ask))
        .await
        .expect("b");
    let req_a = from_a.expect(WAIT).await.expect("a's request");
    let req_b = from_b.expect(WAIT).await.expect("b's request");
    assert_ne!(req_a["id"], req_b["id"], "ids collide: {req_a} {req_b}");
    // Answer b first, then a: each must reach the upstream that asked.
    for (req, uri) in [(&req_b, "file:///b"), (&req_a, "file:///a")] {
        let status = post(
            &mut c,
            &json!({"jsonrpc": "2.0", "id": req["id"], "result": {"roots": [{"uri": uri}]}}),
        )
        .await;
        assert_eq!(status, 202);
    }
    let (ra, _) = from_a
        .until_response(&json!(1), WAIT)
        .await
        .expect("a done");
    let (rb, _) = from_b
        .until_response(&json!(2), WAIT)
        .await
        .expect("b done");
    assert_eq!(
        answer_seen_upstream(&ra)["result"]["roots"][0]["uri"],
        "file:///a"
    );
    assert_eq!(
        answer_seen_upstream(&rb)["result"]["roots"][0]["uri"],
        "file:///b"
    );
    assert_eq!(answer_seen_upstream(&ra)["id"], "ask-1", "{ra}");
    assert_eq!(answer_seen_upstream(&rb)["id"], "ask-1", "{rb}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capability_the_client_did_not_declare_is_refused_by_the_gateway() {
    let s = setup();
    let mut c = client(&s.gateway, json!({"roots": {}})).await;
    let id = json!(5);
    let mut stream = MessageStream::post(
        &c,
        s.gateway.addr,
        &call(
            id.clone(),
            "a__ask",
            json!({"method": "sampling/createMessage", "params": {"messages": [], "maxTokens": 1}}),
        ),
    )
    .await
    .expect("call");
    let (response, before) = stream.until_response(&id, WAIT).await.expect("result");
    assert!(before.is_empty(), "the client was asked anyway: {before:?}");
    assert_eq!(response["result"]["isError"], true, "{response}");
    let refusal = answer_seen_upstream(&response);
    assert_eq!(refusal["error"]["code"], -32601, "{response}");
    assert!(
        refusal["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("sampling")),
        "{response}"
    );
    let inits = s.a.events_of("initialize").await.expect("events");
    assert_eq!(inits[0]["capabilities"], json!({"roots": {}}), "{inits:?}");
    // Declared ones still work.
    ask_on_call_stream(
        &s,
        &mut c,
        "a__ask",
        "roots/list",
        json!({}),
        json!({"roots": []}),
    )
    .await;
}

/// Reads one `chatty` call's stream: `steps` progress + log pairs for `tag`, in order,
/// with the client's own token back, then the result. Returns the token the upstream saw.
async fn read_chatty(
    stream: &mut MessageStream,
    id: &Value,
    token: &Value,
    tag: &str,
    steps: u64,
) -> Value {
    let (response, before) = stream.until_response(id, WAIT).await.expect("result");
    assert_eq!(before.len() as u64, steps * 2, "{tag}: {before:?}");
    for (i, pair) in before.chunks(2).enumerate() {
        let step = i as u64 + 1;
        let (progress, log) = (&pair[0], &pair[1]);
        assert_eq!(progress["method"], "notifications/progress", "{progress}");
        assert_eq!(progress["params"]["progressToken"], *token, "{progress}");
        assert_eq!(progress["params"]["progress"], step, "{progress}");
        assert_eq!(
            progress["params"]["message"], tag,
            "another client's progress: {progress}"
        );
        assert_eq!(log["method"], "notifications/message", "{log}");
        assert_eq!(
            log["params"]["data"],
            json!({"tag": tag, "step": step}),
            "{log}"
        );
    }
    response["result"]["structuredContent"]["progressToken"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_and_logs_reach_only_the_calling_client_in_order() {
    let s = setup();
    let one = client(&s.gateway, json!({})).await;
    let two = client(&s.gateway, json!({})).await;
    // Same request id, same progress token, same upstream, at the same time.
    let id = json!(42);
    let token = json!("tok");
    let message = |tag: &str| {
        json!({"jsonrpc": "2.0", "id": 42, "method": "tools/call", "params": {
            "name": "a__chatty", "arguments": {"steps": 5, "tag": tag},
            "_meta": {"progressToken": "tok"}}})
    };
    let (m1, m2) = (message("one"), message("two"));
    let (s1, s2) = tokio::join!(
        MessageStream::post(&one, s.gateway.addr, &m1),
        MessageStream::post(&two, s.gateway.addr, &m2),
    );
    let (mut s1, mut s2) = (s1.expect("one"), s2.expect("two"));
    let seen1 = read_chatty(&mut s1, &id, &token, "one", 5).await;
    let seen2 = read_chatty(&mut s2, &id, &token, "two", 5).await;
    for seen in [&seen1, &seen2] {
        assert!(
            seen.as_str().is_some_and(|t| t.starts_with("mcpgw:p")),
            "the upstream saw the client's token: {seen}"
        );
    }
    // (The two tokens may be equal: each session has its own upstream session.)
    // A numeric token comes back as a number.
    let mut c = client(&s.gateway, json!({})).await;
    let mut stream = MessageStream::post(
        &c,
        s.gateway.addr,
        &json!({"jsonrpc": "2.0", "id": "n", "method": "tools/call", "params": {
            "name": "b__chatty", "arguments": {"steps": 2, "tag": "n"},
            "_meta": {"progressToken": 7}}}),
    )
    .await
    .expect("call");
    read_chatty(&mut stream, &json!("n"), &json!(7), "n", 2).await;
    let _ = c.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_set_level_reaches_every_upstream_of_the_session() {
    let s = setup();
    let mut c = client(&s.gateway, json!({})).await;
    let reply = c
        .request("logging/setLevel", json!({"level": "warning"}))
        .await
        .expect("setLevel");
    reply.result().expect("setLevel result");
    for counter in [&s.a, &s.b] {
        let events = wait_events(counter, "setLevel", 1).await;
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0]["level"], "warning", "{events:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_call_is_cancelled_on_its_upstream_only() {
    let s = setup();
    let mut c = client(&s.gateway, json!({})).await;
    // Both upstreams have a session, so a broadcast would show at b.
    c.count("a__get_count").await.expect("a");
    c.count("b__get_count").await.expect("b");
    let mut conn = start_slow_call(&s, &c, 7).await;
    let status = post(
        &mut c,
        &json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
            "params": {"requestId": 7, "reason": "changed my mind"}}),
    )
    .await;
    assert_eq!(status, 202);
    let cancelled = wait_events(&s.a, "cancelled", 1).await;
    assert_eq!(cancelled.len(), 1, "{cancelled:?}");
    assert_eq!(cancelled[0]["requestId"], 7, "{cancelled:?}");
    assert_eq!(cancelled[0]["running"], true, "{cancelled:?}");
    assert_eq!(cancelled[0]["reason"], "changed my mind", "{cancelled:?}");
    // The call's HTTP exchange still ends, with an error the client ignores.
    let answer = conn.read_response(false).await.expect("the call ends");
    assert_eq!(answer.status, 200);
    let answer = answer.json().expect("JSON");
    assert_eq!(answer["id"], 7, "{answer}");
    assert_eq!(answer["error"]["code"], -32800, "{answer}");
    // b never heard of it.
    let at_b = s.b.events_of("cancelled").await.expect("events");
    assert!(at_b.is_empty(), "b saw a cancellation: {at_b:?}");
    // A cancellation of nothing in flight goes nowhere.
    let status = post(
        &mut c,
        &json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
            "params": {"requestId": 99}}),
    )
    .await;
    assert_eq!(status, 202);
    c.count("a__get_count").await.expect("a still works");
    assert_eq!(s.a.events_of("cancelled").await.expect("events").len(), 1);
    assert!(s.b.events_of("cancelled").await.expect("events").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_cancels_its_call_and_fails_its_pending_requests() {
    let s = setup();
    let c = client(&s.gateway, ALL_CAPS()).await;

    // A streamed call with a server request waiting for the client: the client leaves.
    let mut stream = MessageStream::post(
        &c,
        s.gateway.addr,
        &call(json!("gone"), "a__ask", json!({"method": "roots/list"})),
    )
    .await
    .expect("call");
    let request = stream.expect(WAIT).await.expect("the request");
    assert_eq!(request["method"], "roots/list");
    stream.close();
    let answers = wait_events(&s.a, "answer", 1).await;
    assert!(
        answers[0]["answer"]["error"].is_object(),
        "the upstream's request was not failed: {answers:?}"
    );
    assert_eq!(answers[0]["id"], "ask-1", "{answers:?}");
    let cancelled = wait_events(&s.a, "cancelled", 1).await;
    assert_eq!(cancelled[0]["requestId"], "gone", "{cancelled:?}");

    // A call waiting for a JSON answer: the client leaves.
    let conn = start_slow_call(&s, &c, 8).await;
    drop(conn);
    let cancelled = wait_events(&s.a, "cancelled", 2).await;
    // (Whether the call was still running when the cancel came depends on how soon the
    // upstream noticed its own request's connection close.)
    assert_eq!(cancelled[1]["requestId"], 8, "{cancelled:?}");
    wait_until("the slow call to end upstream", WAIT, || async {
        Ok((s.a.stats().await?.slow_in_flight == 0).then_some(()))
    })
    .await
    .expect("slow call ended");
    assert!(s.b.events_of("cancelled").await.expect("events").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_a_session_fails_its_pending_server_requests() {
    let s = setup();
    let mut c = client(&s.gateway, ALL_CAPS()).await;
    let mut stream = MessageStream::post(
        &c,
        s.gateway.addr,
        &call(
            json!(1),
            "b__ask",
            json!({"method": "elicitation/create", "params": {"message": "?",
                "requestedSchema": {"type": "object", "properties": {}}}}),
        ),
    )
    .await
    .expect("call");
    stream.expect(WAIT).await.expect("the request");
    let deleted = c.delete().await.expect("DELETE");
    assert_eq!(deleted.status, 200);
    let answers = wait_events(&s.b, "answer", 1).await;
    assert!(answers[0]["answer"]["error"].is_object(), "{answers:?}");
    // The call's stream ends too.
    let end = tokio::time::timeout(WAIT, async {
        while stream.next(WAIT).await.expect("read").is_some() {}
    })
    .await;
    assert!(
        end.is_ok(),
        "the call's stream did not end with its session"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_notifications_on_the_get_stream_reach_only_their_session() {
    let s = setup();
    let mut one = client(&s.gateway, json!({})).await;
    let mut two = client(&s.gateway, json!({})).await;
    // Upstream sessions first, then the GET streams: the gateway listens upstream for
    // sessions that exist when the client's stream opens ...
    one.count("a__get_count").await.expect("one");
    let mut g1 = MessageStream::get(&one, s.gateway.addr)
        .await
        .expect("GET one");
    let mut g2 = MessageStream::get(&two, s.gateway.addr)
        .await
        .expect("GET two");
    // ... and for those created while it is open.
    two.count("a__get_count").await.expect("two");
    wait_open_streams(&s.a, 2).await;

    let expect_three = |tag: &'static str| {
        move |got: Vec<Value>| {
            assert_eq!(
                got[0]["method"], "notifications/tools/list_changed",
                "{got:?}"
            );
            assert_eq!(
                got[1]["method"], "notifications/resources/updated",
                "{got:?}"
            );
            assert_eq!(got[1]["params"]["uri"], "counter://value", "{got:?}");
            assert_eq!(got[2]["method"], "notifications/message", "{got:?}");
            assert_eq!(got[2]["params"]["data"]["tag"], tag, "{got:?}");
        }
    };
    async fn three(stream: &mut MessageStream) -> Vec<Value> {
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(stream.expect(WAIT).await.expect("notification"));
        }
        got
    }
    let queued = one
        .call_tool("a__notify", json!({"tag": "one"}))
        .await
        .expect("notify one");
    assert_eq!(
        queued.result().expect("result")["structuredContent"]["queued"],
        3
    );
    expect_three("one")(three(&mut g1).await);
    two.call_tool("a__notify", json!({"tag": "two"}))
        .await
        .expect("notify two");
    expect_three("two")(three(&mut g2).await);
    // Had two's notifications leaked to one, they would come before these.
    one.call_tool("a__notify", json!({"tag": "one-again"}))
        .await
        .expect("notify one again");
    expect_three("one-again")(three(&mut g1).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cancellation_without_a_running_call_is_not_broadcast() {
    let s = setup();
    let mut c = client(&s.gateway, json!({})).await;
    c.count("a__get_count").await.expect("a");
    c.count("b__get_count").await.expect("b");
    // Other notifications (roots changed) concern every upstream of the session.
    let status = post(
        &mut c,
        &json!({"jsonrpc": "2.0", "method": "notifications/roots/list_changed"}),
    )
    .await;
    assert_eq!(status, 202);
    for counter in [&s.a, &s.b] {
        let got = wait_events(counter, "notification", 1).await;
        assert_eq!(
            got[0]["method"], "notifications/roots/list_changed",
            "{got:?}"
        );
    }
    let status = post(
        &mut c,
        &json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
            "params": {"requestId": 1}}),
    )
    .await;
    assert_eq!(status, 202);
    c.count("a__get_count").await.expect("a");
    assert!(s.a.events_of("cancelled").await.expect("a").is_empty());
    assert!(s.b.events_of("cancelled").await.expect("b").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_go_to_the_upstream_that_owns_the_resource() {
    let s = setup();
    let mut c = client(&s.gateway, json!({})).await;
    // Both upstreams list counter://value: the first upstream of the endpoint
    // owns it, and the merged list shows it once.
    let list = c
        .request("resources/list", Value::Null)
        .await
        .expect("resources/list");
    let uris: Vec<&str> = list.result().expect("list")["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(|r| r["uri"].as_str())
        .collect();
    assert_eq!(uris, ["counter://value"]);
    c.request("resources/subscribe", json!({"uri": "counter://value"}))
        .await
        .expect("subscribe")
        .result()
        .expect("subscribed");
    c.request("resources/unsubscribe", json!({"uri": "counter://value"}))
        .await
        .expect("unsubscribe")
        .result()
        .expect("unsubscribed");
    let mut owners = Vec::new();
    for counter in [&s.a, &s.b] {
        let subscribed = counter
            .events_of("resources/subscribe")
            .await
            .expect("events");
        let unsubscribed = counter
            .events_of("resources/unsubscribe")
            .await
            .expect("events");
        assert_eq!(
            subscribed.len(),
            unsubscribed.len(),
            "{subscribed:?} {unsubscribed:?}"
        );
        if !subscribed.is_empty() {
            owners.push(counter.name.clone());
        }
    }
    assert_eq!(owners, ["a"], "subscribe went to {owners:?}");
}

/// The Python MCP SDK (installed into `tests/.venv` by `scripts/test-all.sh`) as a real
/// client: its sampling, elicitation, roots, progress and logging callbacks through the
/// gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_callbacks_work_through_the_gateway() {
    let s = setup();
    let url = format!("http://{}/mcp", s.gateway.addr);
    python::expect_ok(
        "relay_interop.py",
        python::script("relay_interop.py").arg(&url),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_streamed_call_ends_its_stream_and_its_server_requests() {
    let s = setup();
    let mut c = client(&s.gateway, ALL_CAPS()).await;
    let mut stream = MessageStream::post(
        &c,
        s.gateway.addr,
        &call(json!("streamed"), "b__ask", json!({"method": "roots/list"})),
    )
    .await
    .expect("call");
    stream.expect(WAIT).await.expect("the request");
    let status = post(
        &mut c,
        &json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
            "params": {"requestId": "streamed"}}),
    )
    .await;
    assert_eq!(status, 202);
    let cancelled = wait_events(&s.b, "cancelled", 1).await;
    assert_eq!(cancelled[0]["requestId"], "streamed", "{cancelled:?}");
    // The stream ends without an answer (the client ignores it anyway) ...
    assert_eq!(stream.next(WAIT).await.expect("read"), None);
    // ... and the upstream's request to the client is failed, not left waiting.
    let answers = wait_events(&s.b, "answer", 1).await;
    assert!(answers[0]["answer"]["error"].is_object(), "{answers:?}");
    assert_eq!(s.b.events_of("cancelled").await.expect("events").len(), 1);
    assert!(s.a.events_of("cancelled").await.expect("events").is_empty());
}
