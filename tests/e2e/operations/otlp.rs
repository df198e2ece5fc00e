//! `[tracing]`: spans exported over OTLP/HTTP to a test collector
//! (`mcpgw_tests::otlp`), through the real binary and a counter upstream.

use std::time::Duration;

use mcpgw_tests::gateway::check_config;
use mcpgw_tests::otlp::{OtlpReceiver, ReceivedSpan};
use mcpgw_tests::process::TempDir;
use mcpgw_tests::{CounterServer, Gateway, GatewayConfig, McpClient, start_counter};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

/// Long enough for a batch to go out on a loaded machine; only bounds a hang.
const EXPORTED_WITHIN: Duration = Duration::from_secs(30);

/// A gateway with one worker in front of `counter`, exporting to `receiver` with
/// `tracing` (extra `[tracing]` keys). The batch delay is cut so that spans arrive
/// soon; the tests wait on them, never on the delay.
fn traced_gateway(counter: &CounterServer, tracing: &str, receiver: &OtlpReceiver) -> Gateway {
    let mut config = GatewayConfig::new(1).upstream("counter", &counter.url());
    config.extra = format!(
        "[tracing]\notlp_endpoint = \"{}\"\n{tracing}",
        receiver.endpoint()
    );
    config.env = vec![("OTEL_BSP_SCHEDULE_DELAY".into(), "50".into())];
    Gateway::start(&config).expect("start mcpgw")
}

async fn call(client: &mut McpClient, tool: &str, traceparent: Option<&str>) -> Value {
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": tool, "arguments": {}}});
    let mut request = client.post_request(body.to_string());
    if let Some(parent) = traceparent {
        request = request
            .header("traceparent", parent)
            .header("tracestate", "congo=t61rcWkgMzE");
    }
    let resp = client.send(&request).await.expect("tools/call");
    assert_eq!(resp.status, 200, "{}", resp.text());
    serde_json::from_str(&resp.text()).expect("a JSON answer")
}

/// `call`, as part of the client's sampled trace `TRACE`.
async fn call_in_trace(client: &mut McpClient, tool: &str) -> Value {
    call(client, tool, Some(&format!("00-{TRACE}-{CLIENT_SPAN}-01"))).await
}

/// The spans exported once `TRACE`'s request and upstream call are in.
async fn wait_for_trace(receiver: &OtlpReceiver, what: &str) -> Vec<ReceivedSpan> {
    receiver
        .wait_for(what, EXPORTED_WITHIN, |s| {
            request_and_upstream(s, TRACE).is_some()
        })
        .await
        .expect("spans exported")
}

/// The trace's server span and the client span under it.
fn request_and_upstream<'a>(
    spans: &'a [ReceivedSpan],
    trace: &str,
) -> Option<(&'a ReceivedSpan, &'a ReceivedSpan)> {
    let server = spans
        .iter()
        .find(|s| s.trace_id == trace && s.kind == ReceivedSpan::SERVER)?;
    let upstream = spans.iter().find(|s| {
        s.trace_id == trace && s.kind == ReceivedSpan::CLIENT && s.parent_span_id == server.span_id
    })?;
    Some((server, upstream))
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn a_request_span_joins_the_clients_trace_and_its_upstream_call_is_a_child() {
    let receiver = OtlpReceiver::start().await.expect("OTLP receiver");
    let counter = start_counter!().expect("start counter-server");
    let gateway = traced_gateway(&counter, "service_name = \"gw-under-test\"\n", &receiver);
    let mut client = gateway.client();
    client.initialize().await.expect("initialize");
    let session = client.session_id().expect("a session").to_owned();

    let answer = call_in_trace(&mut client, "increment").await;
    assert!(answer["result"].is_object(), "{answer}");
    // A failed call, in a trace of its own.
    let failing = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let answer = call(&mut client, "no_such_tool", Some(failing)).await;
    assert!(answer["error"].is_object(), "{answer}");

    let spans = receiver
        .wait_for(
            "both requests and their upstream calls",
            EXPORTED_WITHIN,
            |s| {
                request_and_upstream(s, TRACE).is_some()
                    && request_and_upstream(s, "0af7651916cd43dd8448eb211c80319c").is_some()
            },
        )
        .await
        .expect("spans exported");
    let (server, upstream) = request_and_upstream(&spans, TRACE).expect("found above");
    assert_eq!(server.parent_span_id, CLIENT_SPAN, "{server:#?}");
    assert_eq!(server.service, "gw-under-test");
    assert_eq!(server.name, "tools/call increment");
    assert_eq!(server.attr("mcp.method.name"), Some("tools/call"));
    assert_eq!(server.attr("gen_ai.tool.name"), Some("increment"));
    assert_eq!(server.attr("mcpgw.endpoint"), Some("/mcp"));
    assert_eq!(server.attr("mcpgw.upstream"), Some("counter"));
    assert_eq!(server.attr("mcpgw.outcome"), Some("ok"));
    assert_eq!(server.attr("http.response.status_code"), Some("200"));
    assert_eq!(server.attr("mcp.session.id"), session.get(..8));
    assert_eq!(server.attr("rpc.jsonrpc.error_code"), None);

    assert_eq!(upstream.attr("mcpgw.upstream"), Some("counter"));
    assert_eq!(upstream.attr("server.address"), Some("127.0.0.1"));
    assert_eq!(upstream.attr("http.response.status_code"), Some("200"));
    assert_ne!(upstream.span_id, server.span_id);

    // The upstream saw the child span as its parent, and the client's tracestate.
    let seen = counter.events_of("traceparent").await.expect("events");
    let calls: Vec<&Value> = seen
        .iter()
        .filter(|e| e["traceparent"].as_str().is_some_and(|t| t.contains(TRACE)))
        .collect();
    assert_eq!(calls.len(), 1, "{seen:?}");
    assert_eq!(
        calls[0]["traceparent"],
        format!("00-{TRACE}-{}-01", upstream.span_id)
    );
    assert_eq!(calls[0]["tracestate"], "congo=t61rcWkgMzE");

    let (failed, _) =
        request_and_upstream(&spans, "0af7651916cd43dd8448eb211c80319c").expect("found above");
    assert_eq!(failed.attr("mcpgw.outcome"), Some("jsonrpc_error"));
    let code: i64 = failed
        .attr("rpc.jsonrpc.error_code")
        .expect("an error code")
        .parse()
        .expect("a number");
    assert!(code < 0, "{code}");
    assert_eq!(receiver.undecodable(), 0);
}

/// `sample_ratio = 0` exports nothing of a request that starts its own trace, and
/// passes no trace context on; a client's sampled `traceparent` is still honoured.
#[tokio::test]
async fn sample_ratio_zero_exports_only_what_the_client_sampled() {
    let receiver = OtlpReceiver::start().await.expect("OTLP receiver");
    let counter = start_counter!().expect("start counter-server");
    let gateway = traced_gateway(&counter, "sample_ratio = 0.0\n", &receiver);
    let mut client = gateway.client();
    client.initialize().await.expect("initialize");
    call(&mut client, "increment", None).await;
    // Sent after: once its spans are in, the first request's would be too.
    call_in_trace(&mut client, "increment").await;

    let spans = wait_for_trace(&receiver, "the sampled request").await;
    assert!(
        spans.iter().all(|s| s.trace_id == TRACE),
        "only the client-sampled trace: {spans:#?}"
    );
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let seen = counter.events_of("traceparent").await.expect("events");
    assert_eq!(
        seen.len(),
        1,
        "nothing invented for the unsampled: {seen:?}"
    );
}

/// Tracing off at start and turned on by a reload (SIGHUP) exports from then on.
#[tokio::test]
async fn a_reload_turns_tracing_on() {
    let receiver = OtlpReceiver::start().await.expect("OTLP receiver");
    let counter = start_counter!().expect("start counter-server");
    let base = GatewayConfig::new(1).upstream("counter", &counter.url());
    let gateway = Gateway::start(&base).expect("start mcpgw");
    let mut client = gateway.client();
    client.initialize().await.expect("initialize");
    let before = "00-11111111111111111111111111111111-2222222222222222-01";
    call(&mut client, "increment", Some(before)).await;
    // Off: the client's traceparent goes upstream as it came.
    let seen = counter.events_of("traceparent").await.expect("events");
    assert_eq!(seen[0]["traceparent"], before);

    let mut traced = base.clone();
    traced.extra = format!("[tracing]\notlp_endpoint = \"{}\"\n", receiver.endpoint());
    std::fs::write(gateway.config_path(), traced.to_toml()).expect("rewrite config");
    gateway.signal(Signal::SIGHUP).expect("SIGHUP");
    super::wait_for_reloads(&gateway, "ok", 1.0).await;
    call_in_trace(&mut client, "increment").await;
    let spans = wait_for_trace(&receiver, "the request after the reload").await;
    assert!(spans.iter().all(|s| s.trace_id == TRACE), "{spans:#?}");
}

/// Spans still queued when the gateway stops are exported on the way out: with a
/// batch delay far beyond the test, the stop's flush is the only way they can arrive.
#[tokio::test]
async fn a_stop_flushes_the_spans_still_queued() {
    let receiver = OtlpReceiver::start().await.expect("OTLP receiver");
    let counter = start_counter!().expect("start counter-server");
    let mut config = GatewayConfig::new(1).upstream("counter", &counter.url());
    config.extra = format!("[tracing]\notlp_endpoint = \"{}\"\n", receiver.endpoint());
    config.env = vec![("OTEL_BSP_SCHEDULE_DELAY".into(), "3600000".into())];
    let mut gateway = Gateway::start(&config).expect("start mcpgw");
    let mut client = gateway.client();
    client.initialize().await.expect("initialize");
    call_in_trace(&mut client, "increment").await;
    assert!(receiver.spans().is_empty(), "{:#?}", receiver.spans());
    gateway.stop().await;
    let spans = receiver.spans();
    assert!(
        request_and_upstream(&spans, TRACE).is_some(),
        "flushed at stop: {spans:#?}"
    );
}

#[test]
fn check_config_refuses_a_bad_sample_ratio_or_collector_url() {
    let dir = TempDir::new("mcpgw-tracing-config").expect("temp dir");
    let (code, out) = check_config(
        dir.path(),
        "ratio.toml",
        "[tracing]\notlp_endpoint = \"http://127.0.0.1:4318\"\nsample_ratio = 2.0\n",
    );
    assert_ne!(code, Some(0), "{out}");
    assert!(
        out.contains("ratio.toml:3: tracing.sample_ratio: must be between 0.0 and 1.0"),
        "{out}"
    );
    let (code, out) = check_config(
        dir.path(),
        "url.toml",
        "[tracing]\notlp_endpoint = \"grpc://127.0.0.1:4317\"\n",
    );
    assert_ne!(code, Some(0), "{out}");
    assert!(
        out.contains(
            "url.toml:2: tracing.otlp_endpoint: \"grpc://127.0.0.1:4317\" must start with http"
        ),
        "{out}"
    );
    let (code, out) = check_config(
        dir.path(),
        "good.toml",
        "[tracing]\notlp_endpoint = \"https://otel.example:4318\"\nsample_ratio = 0.1\nheaders = { x-api-key = \"k\" }\n",
    );
    assert_eq!(code, Some(0), "{out}");
}
