//! The bad-input catalogue: every hostile request of the kinds a gateway meets, sent
//! through the real binary, each checked against its documented answer, with a session
//! opened beforehand that must keep its count throughout. What is covered elsewhere is
//! named, not repeated: oversized heads and bodies (`oversized_head_gets_431`,
//! `oversized_body_gets_413`), slowloris (`stalled_heads_…`, `trickled_head_…`,
//! `bodies::slow_bodies_…`), huge batches (`sessions::batches_over_the_cap_…`), a
//! malicious upstream (`upstream::*`), and forged, foreign, expired and `alg: none`
//! tokens and another principal's session id (`tests/e2e/auth.rs`).

use super::*;

/// A raw request head for `/mcp` on the healthy session's connection settings, with
/// `extra` header lines (each ending in CRLF) and then `body`.
fn raw(setup: &Setup, extra: &str, body: &str) -> Vec<u8> {
    let sid = setup.healthy.session_id().expect("session id");
    format!(
        "POST /mcp HTTP/1.1\r\nHost: {}\r\nAccept: application/json, text/event-stream\r\n\
         Content-Type: application/json\r\nMcp-Session-Id: {sid}\r\n\
         MCP-Protocol-Version: 2025-11-25\r\n{extra}\r\n{body}",
        setup.gateway.addr
    )
    .into_bytes()
}

/// Sends `bytes` on a new connection and returns the status of the first answer, and
/// whether the gateway then closed the connection (a refused head must close it: what
/// follows it on the wire cannot be trusted to be a request).
async fn refused_and_closed(setup: &Setup, bytes: &[u8]) -> (u16, bool) {
    let mut conn = HttpConn::connect(setup.gateway.addr)
        .await
        .expect("connect");
    conn.write_raw(bytes).await.expect("write");
    let answer = conn.read_response(false).await.expect("an answer");
    let closed = conn.wait_closed(Duration::from_secs(15)).await.is_ok();
    (answer.status, closed)
}

const PING: &str = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;

/// Request smuggling and head-parsing differentials: every framing a front proxy and
/// the gateway could read two ways is refused with 400 (or 501 for an unknown coding)
/// and the connection closed, so no second request hides in the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_variants_are_refused_and_close_the_connection() {
    let mut setup = Setup::new(GatewayConfig::new(2)).await;
    let len = PING.len();
    let smuggled =
        format!("{PING}POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n{PING}");
    let cases: Vec<(&str, String, String)> = vec![
        (
            "CL + TE",
            format!("Content-Length: {len}\r\nTransfer-Encoding: chunked\r\n"),
            format!("{len:x}\r\n{PING}\r\n0\r\n\r\n"),
        ),
        (
            "TE + CL",
            format!("Transfer-Encoding: chunked\r\nContent-Length: {len}\r\n"),
            format!("{len:x}\r\n{PING}\r\n0\r\n\r\n"),
        ),
        (
            "conflicting CL",
            format!(
                "Content-Length: {len}\r\nContent-Length: {}\r\n",
                smuggled.len()
            ),
            smuggled.clone(),
        ),
        (
            "CL list",
            format!("Content-Length: {len}, {}\r\n", smuggled.len()),
            smuggled.clone(),
        ),
        ("negative CL", "Content-Length: -1\r\n".into(), PING.into()),
        (
            "CL with a sign",
            format!("Content-Length: +{len}\r\n"),
            PING.into(),
        ),
        (
            "CL overflowing u64",
            "Content-Length: 99999999999999999999999\r\n".into(),
            PING.into(),
        ),
        (
            "TE chunked then identity",
            "Transfer-Encoding: chunked, identity\r\n".into(),
            format!("{len:x}\r\n{PING}\r\n0\r\n\r\n"),
        ),
        (
            "TE twice",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n".into(),
            format!("{len:x}\r\n{PING}\r\n0\r\n\r\n"),
        ),
        (
            "space before the colon",
            format!("Transfer-Encoding : chunked\r\nContent-Length: {len}\r\n"),
            PING.into(),
        ),
        (
            "obs-fold",
            format!("Content-Length: {len}\r\nX-Folded: a\r\n b\r\n"),
            PING.into(),
        ),
        (
            "NUL in a header value",
            format!("Content-Length: {len}\r\nX-Nul: a\0b\r\n"),
            PING.into(),
        ),
        (
            "chunk size overflowing u64",
            "Transfer-Encoding: chunked\r\n".into(),
            format!("fffffffffffffffffffff\r\n{PING}\r\n0\r\n\r\n"),
        ),
    ];
    for (name, extra, body) in cases {
        let (status, closed) = refused_and_closed(&setup, &raw(&setup, &extra, &body)).await;
        assert_eq!(status, 400, "{name}");
        assert!(
            closed,
            "{name}: the connection must close after a refused head"
        );
    }
    // Headers that may appear once, repeated: the supervisor routes by the first session
    // id, a proxy in front may check the last token; refused whole, the connection kept.
    for (name, extra) in [
        (
            "two session ids",
            "Mcp-Session-Id: aaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
        ),
        ("two hosts", "Host: evil.example\r\n"),
        ("two versions", "MCP-Protocol-Version: 2026-07-28\r\n"),
        (
            "two tokens",
            "Authorization: Bearer a\r\nAuthorization: Bearer b\r\n",
        ),
        (
            "two methods",
            "Mcp-Method: ping\r\nMcp-Method: tools/call\r\n",
        ),
    ] {
        let mut conn = HttpConn::connect(setup.gateway.addr)
            .await
            .expect("connect");
        conn.write_raw(&raw(
            &setup,
            &format!("{extra}Content-Length: {len}\r\n"),
            PING,
        ))
        .await
        .expect("write");
        let answer = conn.read_response(false).await.expect("an answer");
        assert_eq!(answer.status, 400, "{name}: {}", answer.text());
        assert_eq!(rpc_error_code(&answer), Some(-32600), "{name}");
        assert!(
            answer.text().contains("more than once"),
            "{name}: {}",
            answer.text()
        );
    }
    // An unknown transfer coding: 501, as RFC 9112 says.
    let (status, closed) = refused_and_closed(
        &setup,
        &raw(&setup, "Transfer-Encoding: xchunked\r\n", PING),
    )
    .await;
    assert!(status == 501 || status == 400, "unknown coding: {status}");
    assert!(closed);
    // Bare LF line ends: the whole head is read the one way or refused, never half.
    let bare = String::from_utf8(raw(&setup, &format!("Content-Length: {len}\r\n"), PING))
        .expect("ASCII")
        .replace("\r\n", "\n");
    let (status, _) = refused_and_closed(&setup, bare.as_bytes()).await;
    assert!(status == 200 || status == 400, "bare LF: {status}");
    setup.healthy_still_works().await;
    assert_eq!(
        setup.counter.stats().await.expect("stats").tools_call,
        setup.healthy_count,
        "no smuggled request reached the upstream"
    );
}

/// A JSON-RPC answer's error code from a 4xx/2xx answer (JSON or SSE).
async fn rpc_code_of(setup: &Setup, body: &str) -> (u16, Option<i64>) {
    let request = setup.healthy.post_request(body.to_owned());
    let response = send_once(&setup.gateway, &request).await;
    (response.status, rpc_error_code(&response))
}

/// Hostile JSON: nesting deep enough to blow a recursive parser's stack, `null` and
/// duplicate ids, ids and methods of the wrong type. Each gets its JSON-RPC error;
/// nothing reaches the upstream that should not, and the healthy session counts on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_json_and_ids_get_their_jsonrpc_errors() {
    let mut setup = Setup::new(GatewayConfig::new(2)).await;
    let calls_before = setup.counter.stats().await.expect("stats").tools_call;

    // 200,000 levels of nesting, as the whole body and inside the arguments.
    let deep = format!("{}{}", "[".repeat(200_000), "]".repeat(200_000));
    let (status, code) = rpc_code_of(&setup, &deep).await;
    assert_eq!(status, 400, "deep array body");
    assert!(
        matches!(code, Some(-32700 | -32600)),
        "deep array body: {code:?}"
    );
    let deep_object = format!("{}1{}", r#"{"a":"#.repeat(100_000), "}".repeat(100_000));
    let (status, code) = rpc_code_of(&setup, &deep_object).await;
    assert_eq!(status, 400, "deep object body");
    assert!(
        matches!(code, Some(-32700 | -32600)),
        "deep object body: {code:?}"
    );
    let deep_args = format!(
        r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"increment","arguments":{{"x":{deep}}}}}}}"#
    );
    // The gateway reads only the envelope: arguments are the upstream's to judge, and
    // its refusal comes back as this request's error.
    let response = send_once(&setup.gateway, &setup.healthy.post_request(deep_args)).await;
    let (status, code, deep_text) = (response.status, rpc_error_code(&response), response.text());
    assert!(
        matches!(code, Some(-32700 | -32600 | -32602 | -32603)),
        "deep arguments: {status} {code:?} {}",
        deep_text
    );

    // `null` id: not a request the gateway can answer by id.
    let (status, code) = rpc_code_of(
        &setup,
        r#"{"jsonrpc":"2.0","id":null,"method":"tools/call","params":{"name":"increment","arguments":{}}}"#,
    )
    .await;
    assert_eq!(code, Some(-32600), "null id ({status})");
    // An object as id, a number as method, no jsonrpc member.
    for body in [
        r#"{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":7}"#,
        r#"{"id":1,"method":"ping"}"#,
        r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
    ] {
        let (status, code) = rpc_code_of(&setup, body).await;
        assert_eq!(code, Some(-32600), "{body} ({status})");
    }
    // Duplicate ids in one batch (batches are of protocol 2025-03-26): their answers
    // could not be told apart.
    let mut old = setup.gateway.client();
    old.initialize_version("2025-03-26", json!({}))
        .await
        .expect("a 2025-03-26 session");
    let batch = old.post_request(
        r#"[{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"increment","arguments":{}}},
            {"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"increment","arguments":{}}}]"#,
    );
    let response = send_once(&setup.gateway, &batch).await;
    assert_eq!(
        rpc_error_code(&response),
        Some(-32600),
        "duplicate ids in a batch: {} {}",
        response.status,
        response.text()
    );
    assert_eq!(
        setup.counter.stats().await.expect("stats").tools_call,
        calls_before,
        "none of the refused calls reached the upstream"
    );

    // Session ids crafted to reach into store keys: `malformed_session_ids_get_400`.
    setup.healthy_still_works().await;
}
