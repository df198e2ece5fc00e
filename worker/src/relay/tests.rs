use super::route::{Routed, Source};
use super::*;

#[test]
fn capabilities_are_read_from_initialize_params() {
    let caps = ClientCaps::from_init_params(
        r#"{"protocolVersion":"2025-11-25","capabilities":{"sampling":{},"roots":{"listChanged":true}},"clientInfo":{}}"#,
    );
    assert_eq!(
        caps,
        ClientCaps {
            sampling: true,
            elicitation_form: false,
            elicitation_url: false,
            roots: true
        }
    );
    assert_eq!(
        caps.missing_for("elicitation/create", None),
        Some("elicitation (form mode)")
    );
    assert_eq!(caps.missing_for("sampling/createMessage", None), None);
    assert_eq!(caps.missing_for("ping", None), None);
    assert_eq!(ClientCaps::from_init_params("[]"), ClientCaps::default());

    // An empty elicitation capability is form mode (as before modes);
    // URL mode must be declared.
    let raw = |s: &str| RawValue::from_string(s.to_owned()).expect("json");
    let url = raw(r#"{"mode":"url","url":"https://x","message":"m","elicitationId":"1"}"#);
    let old = ClientCaps::from_init_params(r#"{"capabilities":{"elicitation":{}}}"#);
    assert_eq!(old.missing_for("elicitation/create", None), None);
    assert!(old.missing_for("elicitation/create", Some(&url)).is_some());
    let url_only = ClientCaps::from_init_params(r#"{"capabilities":{"elicitation":{"url":{}}}}"#);
    assert_eq!(url_only.missing_for("elicitation/create", Some(&url)), None);
    assert!(url_only.missing_for("elicitation/create", None).is_some());
}

#[test]
fn a_list_change_forgets_only_that_upstreams_resources() {
    let relay = Relay::new("{}");
    let a = upstream("a");
    if let Ok(mut map) = relay.resource_routes.lock() {
        map.insert("x://1".into(), Arc::from("a"));
        map.insert("y://1".into(), Arc::from("b"));
    }
    let note = r#"{"jsonrpc":"2.0","method":"notifications/resources/list_changed"}"#;
    assert!(matches!(
        relay.route(&a, note.to_owned(), Source::Stream),
        Routed::Forward(_)
    ));
    let map = relay.resource_routes.lock().expect("map");
    assert_eq!(map.len(), 1);
    assert_eq!(map.get("y://1").map(|u| &**u), Some("b"));
}

#[test]
fn id_keys_normalise_strings_only() {
    assert_eq!(id_key(" 7 ").as_deref(), Some("7"));
    assert_eq!(id_key(r#""a""#).as_deref(), Some(r#""a""#));
    assert_eq!(id_key(r#""\u0061""#).as_deref(), Some(r#""a""#));
}

#[test]
fn progress_tokens_are_replaced_and_everything_else_kept() {
    let body = br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"x","arguments":{"a":[1]},"_meta":{"progressToken":"tok","other":1}}}"#;
    let (new, (gateway, original)) = Relay::map_progress(body).expect("mapped");
    assert_eq!(&*original, "\"tok\"");
    let v: serde_json::Value = serde_json::from_slice(&new).expect("json");
    assert_eq!(
        serde_json::Value::String(v["params"]["_meta"]["progressToken"].to_string()),
        serde_json::Value::String(gateway)
    );
    assert_eq!(v["params"]["_meta"]["other"], 1);
    assert_eq!(v["params"]["arguments"]["a"][0], 1);
    assert!(Relay::map_progress(br#"{"id":1,"params":{}}"#).is_none());
}

fn upstream(id: &str) -> Arc<UpstreamSession> {
    let server = Arc::new(
        crate::upstream::UpstreamServer::new(
            &mcpgw_protocol::config::Upstream {
                connect_timeout_ms: 1,
                request_timeout_ms: 1,
                ..mcpgw_protocol::config::Upstream::http(id, "http://127.0.0.1:1/mcp")
            },
            None,
        )
        .expect("server"),
    );
    UpstreamSession::attach(server, Some("s"), "2025-11-25", "{}").expect("attach")
}

fn forwarded(r: Routed) -> serde_json::Value {
    match r {
        Routed::Forward(b) => serde_json::from_slice(&b).expect("json"),
        Routed::Response(_) | Routed::Foreign(_) => panic!("a response"),
        Routed::Done => panic!("not forwarded"),
    }
}

#[tokio::test]
async fn server_requests_get_gateway_ids_and_answers_go_back_with_the_original() {
    let relay = Arc::new(Relay::new(r#"{"capabilities":{"roots":{}}}"#));
    let (a, b) = (upstream("a"), upstream("b"));
    let (tx, _rx) = mpsc::channel(4);
    let call_a = CallGuard::start(&relay, &a, "1", None);
    call_a.set_stream(&tx);
    let call_b = CallGuard::start(&relay, &b, "2", None);
    call_b.set_stream(&tx);
    let ask = r#"{"jsonrpc":"2.0","id":"ask-1","method":"roots/list","params":{}}"#;
    let from_a = forwarded(relay.route(&a, ask.to_owned(), Source::Call(&call_a.call)));
    let from_b = forwarded(relay.route(&b, ask.to_owned(), Source::Call(&call_b.call)));
    assert_ne!(from_a["id"], from_b["id"]);
    assert_eq!(from_a["params"], serde_json::json!({}));

    let answer = format!(
        r#"{{"jsonrpc":"2.0","id":{},"result":{{"roots":[]}}}}"#,
        from_b["id"]
    );
    let answer = Bytes::from(answer);
    let (to, body) = relay
        .take_answer(&from_b["id"].to_string(), &answer)
        .expect("pending")
        .expect("an upstream's request");
    assert!(Arc::ptr_eq(&to, &b));
    let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(body["id"], "ask-1");
    assert!(matches!(
        relay.take_answer(&from_b["id"].to_string(), &answer),
        Err(AnswerError::Unknown)
    ));

    // The upstream withdraws its request: the client sees the gateway id.
    let cancel =
        r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"ask-1"}}"#;
    let seen = forwarded(relay.route(&a, cancel.to_owned(), Source::Call(&call_a.call)));
    assert_eq!(seen["params"]["requestId"], from_a["id"]);
    assert!(relay.state().pending.is_empty());

    // Not declared by the client: refused, never forwarded.
    let sampling = r#"{"jsonrpc":"2.0","id":5,"method":"sampling/createMessage","params":{}}"#;
    assert!(matches!(
        relay.route(&a, sampling.to_owned(), Source::Call(&call_a.call)),
        Routed::Done
    ));
    // No stream to carry it: refused too.
    assert!(matches!(
        relay.route(&a, ask.to_owned(), Source::Stream),
        Routed::Done
    ));
    assert!(relay.state().pending.is_empty());
}

#[tokio::test]
async fn progress_comes_back_with_the_clients_token_and_calls_clean_up() {
    let relay = Arc::new(Relay::new("{}"));
    let a = upstream("a");
    let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","_meta":{"progressToken":{"odd":true}}}}"#;
    let (_, token) = Relay::map_progress(body).expect("mapped");
    let mut call = CallGuard::start(&relay, &a, "1", Some(&token));
    let note = format!(
        r#"{{"jsonrpc":"2.0","method":"notifications/progress","params":{{"progressToken":{},"progress":1}}}}"#,
        token.0
    );
    let seen = forwarded(relay.route(&a, note.clone(), Source::Call(&call.call)));
    assert_eq!(
        seen["params"]["progressToken"],
        serde_json::json!({"odd": true})
    );
    assert_eq!(seen["params"]["progress"], 1);
    // The client cancels it: found by its id, and only then.
    assert!(
        relay
            .cancel_target(
                RawValue::from_string(r#"{"requestId":2}"#.into())
                    .ok()
                    .as_deref()
            )
            .is_none()
    );
    let target = relay.cancel_target(
        RawValue::from_string(r#"{"requestId":1}"#.into())
            .ok()
            .as_deref(),
    );
    assert!(target.is_some_and(|t| Arc::ptr_eq(t.upstream(), &a)));
    call.finish();
    drop(call);
    let st = relay.state();
    assert!(st.calls.is_empty() && st.tokens.is_empty());
}

#[tokio::test]
async fn client_progress_on_a_server_request_goes_to_the_upstream_that_asked() {
    let relay = Arc::new(Relay::new(r#"{"capabilities":{"sampling":{}}}"#));
    let (a, b) = (upstream("a"), upstream("b"));
    let (tx, _rx) = mpsc::channel(4);
    let call = CallGuard::start(&relay, &a, "1", None);
    call.set_stream(&tx);
    let ask = r#"{"jsonrpc":"2.0","id":9,"method":"sampling/createMessage","params":{"_meta":{"progressToken":"up"},"maxTokens":1}}"#;
    let seen = forwarded(relay.route(&a, ask.to_owned(), Source::Call(&call.call)));
    let token = seen["params"]["_meta"]["progressToken"].clone();
    assert!(
        token.as_str().is_some_and(|t| t.starts_with("mcpgw:p")),
        "{seen}"
    );
    assert_eq!(seen["params"]["maxTokens"], 1);
    let note = format!(
        r#"{{"jsonrpc":"2.0","method":"notifications/progress","params":{{"progressToken":{token},"progress":1}}}}"#
    );
    let params = RawValue::from_string(format!(r#"{{"progressToken":{token},"progress":1}}"#))
        .expect("json");
    let (to, body) = relay
        .client_progress(Some(&params), note.as_bytes())
        .expect("routed");
    assert!(Arc::ptr_eq(&to, &a) && !Arc::ptr_eq(&to, &b));
    let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(body["params"]["progressToken"], "up");
    let unknown = RawValue::from_string(r#"{"progressToken":"up"}"#.into()).expect("json");
    assert!(relay.client_progress(Some(&unknown), b"{}").is_none());
}

#[tokio::test]
async fn a_closed_session_keeps_nothing() {
    let relay = Arc::new(Relay::new(r#"{"capabilities":{"roots":{}}}"#));
    let a = upstream("a");
    let (tx, _rx) = mpsc::channel(4);
    let (generation, mut alive) = relay.open_stream(tx);
    let ask = r#"{"jsonrpc":"2.0","id":1,"method":"roots/list"}"#;
    forwarded(relay.route(&a, ask.to_owned(), Source::Stream));
    assert_eq!(relay.state().pending.len(), 1);
    relay.close(Duration::from_millis(50)).await;
    assert!(relay.state().pending.is_empty());
    assert!(
        alive.changed().await.is_err(),
        "the stream's tasks are told to end"
    );
    relay.stream_gone(generation);
    let (tx, _rx) = mpsc::channel(4);
    let (_, mut alive) = relay.open_stream(tx);
    assert!(
        alive.changed().await.is_err(),
        "no stream opens on a closed session"
    );
}

#[tokio::test]
async fn the_gateways_own_requests_get_their_answers_and_are_forgotten() {
    let relay = Relay::new("{}");
    let (id, rx) = relay.ask().expect("room to ask");
    assert!(id.starts_with("\"mcpgw:s"), "{id}");
    let answer = Bytes::from(format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{{}}}}"#));
    assert!(matches!(relay.take_answer(&id, &answer), Ok(None)));
    assert_eq!(rx.await.expect("the answer"), answer);
    // Answered once: a second answer is unknown.
    assert!(matches!(
        relay.take_answer(&id, &answer),
        Err(AnswerError::Unknown)
    ));

    // Given up on (the request ended): an answer that comes late is unknown.
    let (id, rx) = relay.ask().expect("room to ask");
    relay.forget_asked([id.as_str()]);
    assert!(matches!(
        relay.take_answer(&id, &answer),
        Err(AnswerError::Unknown)
    ));
    assert!(rx.await.is_err());

    // The session ends: whoever waits learns that no answer will come.
    let (_, rx) = relay.ask().expect("room to ask");
    relay.close(Duration::from_secs(1)).await;
    assert!(rx.await.is_err());
    assert!(relay.ask().is_none(), "nothing new after the close");
}
