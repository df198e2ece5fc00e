//! The JSON-RPC envelope parser, the answer scan (`response_kind`, which
//! every upstream answer passes) held against serde_json, the member
//! rewriter every id/token/_meta rewrite goes through, the builders, and
//! the worker's request rewriting for stateless upstreams.
#![no_main]

use mcpgw_mcp::jsonrpc::{self, AnswerKind, Kind};
use serde_json::Value;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let value: Option<Value> = serde_json::from_slice(data).ok();
    if let Some(env) = jsonrpc::parse(data) {
        let id = env.id_raw();
        // serde_json's `Value` refuses numbers out of f64's range that the
        // envelope (raw values) carries through: compared when it parses.
        if let Ok(v) = serde_json::from_str::<Value>(id) {
            assert!(id == "null" || v.is_string() || v.is_number(), "id {id}");
        }
        if let (Kind::Request(m) | Kind::Notification(m), Some(v)) = (env.kind(), &value) {
            assert_eq!(Some(m), v["method"].as_str());
        }
    }
    assert_eq!(
        jsonrpc::is_batch(data),
        data.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[')
    );
    for tool_call in [false, true] {
        let Some((id, kind)) = jsonrpc::response_kind(data, tool_call) else {
            continue;
        };
        // The scan validates nothing it skips; when the whole message is
        // JSON, what it found must be what a parser finds.
        let Some(Value::Object(obj)) = &value else {
            continue;
        };
        let parsed_id: Value = serde_json::from_str(id).expect("the scanned id is JSON");
        assert_eq!(obj.get("id"), Some(&parsed_id), "the scan found another id");
        assert!(!obj.contains_key("method"));
        assert_eq!(
            kind == AnswerKind::Error,
            obj.contains_key("error"),
            "{kind:?}"
        );
        if kind == AnswerKind::ToolError {
            assert!(tool_call && obj["result"]["isError"] == Value::Bool(true));
        }
    }
    // Rewriting a member: the first line is the member's name, the rest
    // the object; the value set is a string (as the id and token rewrites
    // set). Every other member is kept, in order, byte for byte.
    let (key, raw) = match memchr::memchr(b'\n', data) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&b"id"[..], data),
    };
    if let (Ok(key), Ok(raw)) = (std::str::from_utf8(key), std::str::from_utf8(raw)) {
        let new = jsonrpc::json_string(key);
        if let Some(out) = jsonrpc::with_member(raw, key, &new) {
            let before: jsonrpc::RawObject<'_> =
                serde_json::from_str(raw).expect("the input was an object");
            let after: jsonrpc::RawObject<'_> =
                serde_json::from_str(&out).expect("the output is an object");
            let kept = |o: &jsonrpc::RawObject<'_>| -> Vec<(String, String)> {
                o.0.iter()
                    .filter(|(k, _)| k != key)
                    .map(|(k, v)| (k.to_string(), v.get().to_owned()))
                    .collect()
            };
            assert_eq!(kept(&before), kept(&after), "other members changed");
            assert_eq!(after.get(key).map(|v| v.get()), Some(new.as_str()));
        }
        // The builders make JSON that says what they were given.
        let req: Value =
            serde_json::from_slice(&jsonrpc::request(key, raw, None)).expect("request JSON");
        assert_eq!(
            (req["id"].as_str(), req["method"].as_str()),
            (Some(key), Some(raw))
        );
        let err: Value =
            serde_json::from_slice(&jsonrpc::error("1", -32600, raw, None)).expect("error JSON");
        assert_eq!(err["error"]["message"].as_str(), Some(raw));
        assert!(jsonrpc::same_id(&new, &new));
    }
    mcpgw_worker::fuzz::rewrite(data);
});
