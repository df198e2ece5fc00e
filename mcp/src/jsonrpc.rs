//! JSON-RPC 2.0 messages as raw bytes.
//!
//! mcpgw reads only what routing needs (`id`, `method`, a few params) and
//! rewrites only what must change, splicing raw JSON: tool arguments,
//! results and unknown fields are never parsed into values and re-encoded,
//! so nothing a newer client or server sends is lost in transit.
//! Also: the JSON-RPC and MCP error codes, and the builders for the
//! messages mcpgw writes on its own account. Which code a given failure
//! gets is the caller's decision.

use std::borrow::Cow;
use std::fmt::Write;

use bytes::Bytes;
use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use serde_json::value::RawValue;

/// JSON-RPC 2.0: the message is not valid JSON.
pub const PARSE_ERROR: i32 = -32700;
/// JSON-RPC 2.0: valid JSON, but not a request object.
pub const INVALID_REQUEST: i32 = -32600;
/// JSON-RPC 2.0: no such method.
pub const METHOD_NOT_FOUND: i32 = -32601;
/// JSON-RPC 2.0: the method exists, its params are wrong (MCP also uses it
/// for an unknown tool, prompt or, from 2026-07-28, resource).
pub const INVALID_PARAMS: i32 = -32602;
/// JSON-RPC 2.0: the server failed on its side.
pub const INTERNAL_ERROR: i32 = -32603;
/// MCP (2025 revisions): `resources/read` of a URI the server does not have.
pub const RESOURCE_NOT_FOUND: i32 = -32002;
/// MCP 2026-07-28: a routing header (`Mcp-Method`, `Mcp-Name`,
/// `MCP-Protocol-Version`) is missing, malformed or disagrees with the body.
pub const HEADER_MISMATCH: i32 = -32020;
/// MCP 2026-07-28: the request needs a client capability the request's
/// `_meta` does not declare.
pub const MISSING_REQUIRED_CLIENT_CAPABILITY: i32 = -32021;
/// MCP 2026-07-28: the request's protocol version is not supported here;
/// `data` says which are (see [`crate::version::unsupported_data`]).
pub const UNSUPPORTED_PROTOCOL_VERSION: i32 = -32022;

/// The top level of one JSON-RPC message, borrowed from the request body.
#[derive(Debug, Deserialize)]
pub struct Envelope<'a> {
    /// The `jsonrpc` member as raw JSON (`"2.0"` with its quotes when valid).
    #[serde(borrow, default)]
    pub jsonrpc: Option<&'a RawValue>,
    /// `Some("null")` for an explicit null (invalid in MCP), `None` if absent.
    #[serde(borrow, default, deserialize_with = "present")]
    pub id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub method: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub params: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub result: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub error: Option<&'a RawValue>,
}

/// Keep an explicit `null` distinguishable from an absent member.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// What kind of message an envelope is.
#[derive(Debug, PartialEq, Eq)]
pub enum Kind<'e> {
    Request(&'e str),
    Notification(&'e str),
    Response,
    Invalid,
}

impl Envelope<'_> {
    /// Whether the message says it is JSON-RPC 2.0 (`"jsonrpc": "2.0"`), as
    /// every MCP message must.
    pub fn is_v2(&self) -> bool {
        self.jsonrpc.map(RawValue::get) == Some("\"2.0\"")
    }

    pub fn kind(&self) -> Kind<'_> {
        match (&self.method, self.id) {
            (Some(m), Some(id)) if is_request_id(id.get()) => Kind::Request(m),
            (Some(m), None) => Kind::Notification(m),
            (None, Some(id))
                if (self.result.is_some() || self.error.is_some()) && is_answer_id(id.get()) =>
            {
                Kind::Response
            }
            _ => Kind::Invalid,
        }
    }

    /// The id as raw JSON for an answer to this message: `null` when it is
    /// absent or not an id at all (an array or object is never echoed back).
    pub fn id_raw(&self) -> &str {
        self.id
            .map(RawValue::get)
            .filter(|id| is_answer_id(id))
            .unwrap_or("null")
    }
}

/// A request's id: a string or a number (JSON-RPC 2.0; MCP also forbids
/// `null`). The raw text is valid JSON already, so its first byte tells.
fn is_request_id(raw: &str) -> bool {
    matches!(raw.as_bytes().first(), Some(b'"' | b'-' | b'0'..=b'9'))
}

/// An answer's id: a request id, or `null` (an error about a request whose
/// id could not be read).
fn is_answer_id(raw: &str) -> bool {
    is_request_id(raw) || raw == "null"
}

/// Whether two raw JSON ids are the same id: the same text, or the same
/// string written with other escapes (`"a"` and `"\u0061"`).
pub fn same_id(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim(), b.trim());
    if a == b {
        return true;
    }
    if !(a.starts_with('"') && b.starts_with('"') && (a.contains('\\') || b.contains('\\'))) {
        return false;
    }
    matches!(
        (serde_json::from_str::<String>(a), serde_json::from_str::<String>(b)),
        (Ok(x), Ok(y)) if x == y
    )
}

/// The raw `id` of the JSON-RPC response in `message`, if it is one: a
/// top-level object with an `id`, a `result` or an `error`, and no `method`.
///
/// Every upstream answer passes here, and its `result` can be large, so the
/// top level is scanned and every other member skipped over (strings and
/// nesting tracked, nothing decoded or validated) instead of parsed: the
/// bytes go to the client as they are, and the client judges them; the id
/// only decides whether they go. What a scan cannot settle is refused: an
/// `id` given twice (parsers disagree on which counts), a member name with
/// escapes (it could spell `id`), anything that does not end where it should.
/// The gateway uses [`response_kind`], which is this scan.
#[cfg(test)]
fn response_id(message: &[u8]) -> Option<&str> {
    response_kind(message, false).map(|(id, _)| id)
}

/// What a JSON-RPC response says, as far as counting it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerKind {
    /// A `result` (for a tool call: without `isError: true`).
    Result,
    /// An `error` member: the request failed as a JSON-RPC request.
    Error,
    /// A `tools/call` result with `isError: true`: the tool ran and failed.
    ToolError,
}

/// [`response_id`] and, in the same scan, whether the answer is a `result`
/// or an `error`; with `tool_call`, the `result` object's own top level is
/// walked (members skipped, nothing decoded) for an `isError` that is
/// `true`, so a failed tool is told from a successful one at no extra pass.
pub fn response_kind(message: &[u8], tool_call: bool) -> Option<(&str, AnswerKind)> {
    let b = message;
    let start = skip_ws(b, 0);
    if b.get(start) != Some(&b'{') {
        return None;
    }
    let (mut id, mut kind, mut method) = (None, None, false);
    walk_object(b, start, |key, start| {
        let end = match key {
            b"result" if tool_call && b.get(start) == Some(&b'{') => {
                let mut is_error = false;
                let end = walk_object(b, start, |flag, at| {
                    let end = value_end(b, at)?;
                    if flag == b"isError" {
                        is_error = &b[at..end] == b"true";
                    }
                    Some(end)
                })?;
                kind = Some(if is_error {
                    AnswerKind::ToolError
                } else {
                    AnswerKind::Result
                });
                end
            }
            _ => value_end(b, start)?,
        };
        match key {
            b"id" if id.is_some() => return None,
            b"id" => id = Some(&b[start..end]),
            b"result" => kind = kind.or(Some(AnswerKind::Result)),
            b"error" => kind = Some(AnswerKind::Error),
            b"method" => method = true,
            k if k.contains(&b'\\') => return None,
            _ => {}
        }
        Some(end)
    })?;
    let id = std::str::from_utf8(id?).ok()?;
    let kind = kind?;
    (!method && is_answer_id(id)).then_some((id, kind))
}

/// Walk the object that opens at `b[i]` member by member, nothing decoded:
/// `visit(name, value_start)` returns where the member's value ends (or
/// `None` to refuse the object). Just past the object's end; `None` when it
/// does not end where it should.
fn walk_object(
    b: &[u8],
    i: usize,
    mut visit: impl FnMut(&[u8], usize) -> Option<usize>,
) -> Option<usize> {
    let mut i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return Some(i + 1);
    }
    loop {
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = string_end(b, i)?;
        let key = &b[i + 1..key_end - 1];
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        let end = visit(key, skip_ws(b, i + 1))?;
        i = skip_ws(b, end);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => return Some(i + 1),
            _ => return None,
        }
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// Just past the string that opens at `b[i]` (a `"`). Strings are most of
/// an answer's bytes (tool output is text): searched a word at a time.
fn string_end(b: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    loop {
        i += memchr::memchr2(b'"', b'\\', b.get(i..)?)?;
        if b[i] == b'"' {
            return Some(i + 1);
        }
        i += 2;
    }
}

/// Just past the value that starts at `b[i]`.
fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => string_end(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while let Some(&c) = b.get(j) {
                match c {
                    b'"' => {
                        j = string_end(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.saturating_sub(1);
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            // A number or a literal: up to the next delimiter.
            let end = b[i..]
                .iter()
                .position(|c| matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                .map_or(b.len(), |n| i + n);
            (end > i).then_some(end)
        }
    }
}

/// Parse one message; `None` when the body is not a JSON object at all.
pub fn parse(body: &[u8]) -> Option<Envelope<'_>> {
    // serde would also take an array as a struct (sequence form).
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    let text = std::str::from_utf8(body).ok()?;
    serde_json::from_str(text).ok()
}

/// Whether a body is a JSON array (a batch) rather than one message.
pub fn is_batch(body: &[u8]) -> bool {
    body.iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'[')
}

/// A JSON object's members in order, values left raw.
pub struct RawObject<'a>(pub Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for RawObject<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = RawObject<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(4));
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    let value: &'de RawValue = map.next_value()?;
                    members.push((key, value));
                }
                Ok(RawObject(members))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

impl RawObject<'_> {
    pub fn get(&self, key: &str) -> Option<&RawValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
}

/// The message `body` with `params.<key>` set to `value` (raw JSON); `params`
/// is the message's current params. Everything else is copied byte for byte.
pub fn with_param(body: &[u8], params: &str, key: &str, value: &str) -> Option<String> {
    let new_params = with_member(params, key, value)?;
    with_member(std::str::from_utf8(body).ok()?, "params", &new_params)
}

/// Rebuild the JSON object `raw` with member `key` set to `value` (raw JSON),
/// added if absent. Every other member is copied byte for byte.
pub fn with_member(raw: &str, key: &str, value: &str) -> Option<String> {
    let obj: RawObject<'_> = serde_json::from_str(raw).ok()?;
    let mut out = String::with_capacity(raw.len() + value.len() + key.len() + 4);
    out.push('{');
    let mut replaced = false;
    for (k, v) in &obj.0 {
        if out.len() > 1 {
            out.push(',');
        }
        push_json_string(&mut out, k);
        out.push(':');
        if k == key {
            out.push_str(value);
            replaced = true;
        } else {
            out.push_str(v.get());
        }
    }
    if !replaced {
        if out.len() > 1 {
            out.push(',');
        }
        push_json_string(&mut out, key);
        out.push(':');
        out.push_str(value);
    }
    out.push('}');
    Some(out)
}

/// Append `s` as a JSON string literal.
pub fn push_json_string(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    // Runs of characters that need no escape are copied whole: every byte
    // that needs one is ASCII, so each cut is on a character boundary.
    let mut clean = 0;
    for (at, &b) in s.as_bytes().iter().enumerate() {
        let escaped = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[clean..at]);
        if escaped.is_empty() {
            let _ = write!(out, "\\u{:04x}", b);
        } else {
            out.push_str(escaped);
        }
        clean = at + 1;
    }
    out.push_str(&s[clean..]);
    out.push('"');
}

pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    push_json_string(&mut out, s);
    out
}

/// A request the gateway sends on its own account.
pub fn request(id: &str, method: &str, params: Option<&str>) -> Bytes {
    let mut out = String::with_capacity(64 + params.map_or(0, str::len));
    out.push_str("{\"jsonrpc\":\"2.0\",\"id\":");
    push_json_string(&mut out, id);
    out.push_str(",\"method\":");
    push_json_string(&mut out, method);
    if let Some(p) = params {
        out.push_str(",\"params\":");
        out.push_str(p);
    }
    out.push('}');
    Bytes::from(out)
}

/// A notification the gateway sends on its own account.
pub fn notification(method: &str) -> Bytes {
    let mut out = String::from("{\"jsonrpc\":\"2.0\",\"method\":");
    push_json_string(&mut out, method);
    out.push('}');
    Bytes::from(out)
}

/// A success answer with a raw result.
pub fn result(id_raw: &str, result_raw: &str) -> Bytes {
    let mut out = String::with_capacity(40 + id_raw.len() + result_raw.len());
    out.push_str("{\"jsonrpc\":\"2.0\",\"id\":");
    out.push_str(id_raw);
    out.push_str(",\"result\":");
    out.push_str(result_raw);
    out.push('}');
    Bytes::from(out)
}

/// An error answer; `data_raw` is raw JSON when present.
pub fn error(id_raw: &str, code: i32, message: &str, data_raw: Option<&str>) -> Bytes {
    let mut out = String::with_capacity(64 + message.len());
    out.push_str("{\"jsonrpc\":\"2.0\",\"id\":");
    out.push_str(id_raw);
    let _ = write!(out, ",\"error\":{{\"code\":{code},\"message\":");
    push_json_string(&mut out, message);
    if let Some(d) = data_raw {
        out.push_str(",\"data\":");
        out.push_str(d);
    }
    out.push_str("}}");
    Bytes::from(out)
}

/// The `result` (or the error) of an answer the gateway asked for itself.
pub enum Answer<'a> {
    Result(&'a RawValue),
    Error { code: i64, message: String },
}

pub fn answer(message: &[u8]) -> Option<Answer<'_>> {
    #[derive(Deserialize)]
    struct ErrorObj {
        code: i64,
        #[serde(default)]
        message: String,
    }
    let env = parse(message)?;
    if let Some(r) = env.result {
        return Some(Answer::Result(r));
    }
    let e: ErrorObj = serde_json::from_str(env.error?.get()).ok()?;
    Some(Answer::Error {
        code: e.code,
        message: e.message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_and_read_back_the_same() {
        for s in [
            "",
            "plain",
            "quote \" and \\ back",
            "line\nfeed\r\ttab",
            "\u{0}\u{1f}\u{7f}",
            "é \u{1F600} \"é\"",
            "\"",
        ] {
            let out = json_string(s);
            let back: String = serde_json::from_str(&out).expect(&out);
            assert_eq!(back, s, "{out}");
        }
        assert_eq!(json_string("a\u{1}b"), r#""a\u0001b""#);
    }

    #[test]
    fn answer_kinds_in_the_id_scan() {
        let k = |s: &str, tool: bool| {
            response_kind(s.as_bytes(), tool).map(|(id, k)| (id.to_owned(), k))
        };
        let r = |id: &str, kind| Some((id.to_owned(), kind));
        assert_eq!(
            k(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#, true),
            r("1", AnswerKind::Result)
        );
        assert_eq!(
            k(
                r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"x"}}"#,
                true
            ),
            r("1", AnswerKind::Error)
        );
        let failed = r#"{"result":{"content":[{"type":"text","text":"\"isError\":true"}],"isError" : true},"id":"a","jsonrpc":"2.0"}"#;
        assert_eq!(k(failed, true), r("\"a\"", AnswerKind::ToolError));
        // Only for a tool call, and only at the result's own top level.
        assert_eq!(k(failed, false), r("\"a\"", AnswerKind::Result));
        let nested = r#"{"id":2,"result":{"structuredContent":{"isError":true},"isError":false}}"#;
        assert_eq!(k(nested, true), r("2", AnswerKind::Result));
        assert_eq!(k(r#"{"id":2,"result":{"isError":true"#, true), None);
        assert_eq!(
            k(r#"{"id":2,"result":[1,2]}"#, true),
            r("2", AnswerKind::Result)
        );
        assert_eq!(k(r#"{"id":2}"#, true), None);
    }

    #[test]
    fn only_jsonrpc_2_0_is_v2() {
        let v2 = |s: &str| parse(s.as_bytes()).expect("parse").is_v2();
        assert!(v2(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#));
        assert!(v2(r#"{"id":1, "jsonrpc" : "2.0","method":"ping"}"#));
        assert!(!v2(r#"{"id":1,"method":"ping"}"#));
        assert!(!v2(r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#));
        assert!(!v2(r#"{"jsonrpc":2.0,"id":1,"method":"ping"}"#));
        assert!(!v2(r#"{"jsonrpc":"2.0\u0000","id":1,"method":"ping"}"#));
    }

    #[test]
    fn kinds() {
        let k = |s: &str| parse(s.as_bytes()).map(|e| format!("{:?}", e.kind()));
        assert_eq!(
            k(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#).as_deref(),
            Some("Request(\"ping\")")
        );
        assert_eq!(
            k(r#"{"jsonrpc":"2.0","method":"n"}"#).as_deref(),
            Some("Notification(\"n\")")
        );
        assert_eq!(
            k(r#"{"jsonrpc":"2.0","id":"a","result":{}}"#).as_deref(),
            Some("Response")
        );
        assert_eq!(
            k(r#"{"jsonrpc":"2.0","id":null,"method":"x"}"#).as_deref(),
            Some("Invalid")
        );
        assert_eq!(k(r#"{"id":1}"#).as_deref(), Some("Invalid"));
        assert!(parse(b"{nope").is_none());
        assert!(parse(b"[1]").is_none());
        assert!(is_batch(b"  [{}]"));
    }

    #[test]
    fn ids_that_are_not_strings_or_numbers_are_invalid_and_never_echoed() {
        for body in [
            r#"{"jsonrpc":"2.0","id":[[1]],"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":true,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":[1],"result":{}}"#,
        ] {
            let env = parse(body.as_bytes()).expect("parse");
            assert_eq!(env.kind(), Kind::Invalid, "{body}");
            assert_eq!(env.id_raw(), "null", "{body}");
        }
        let env = parse(br#"{"jsonrpc":"2.0","id":-3,"method":"ping"}"#).expect("parse");
        assert_eq!((env.kind(), env.id_raw()), (Kind::Request("ping"), "-3"));
        let env = parse(br#"{"jsonrpc":"2.0","id":null,"error":{"code":1}}"#).expect("parse");
        assert_eq!(env.kind(), Kind::Response);
    }

    #[test]
    fn ids_compare_by_value_for_strings_and_by_text_otherwise() {
        assert!(same_id("7", " 7"));
        assert!(same_id(r#""a""#, r#""\u0061""#));
        assert!(!same_id("7", r#""7""#));
        assert!(!same_id("99", "1"));
        assert_eq!(
            response_id(br#"{"jsonrpc":"2.0","id":"x","result":{}}"#),
            Some(r#""x""#)
        );
        assert_eq!(
            response_id(br#"{"jsonrpc":"2.0","id":1,"method":"m"}"#),
            None
        );
    }

    #[test]
    fn the_answer_id_scan_agrees_with_a_parser_and_refuses_what_it_cannot_settle() {
        let agree = [
            r#"{"jsonrpc":"2.0","id":3,"result":{"content":[{"type":"text","text":"a \"}\" ]"}],"id":9}}"#,
            r#" { "result" : [ 1 , { "id" : 2 } ] , "jsonrpc" : "2.0" , "id" : "x\"y" } "#,
            r#"{"jsonrpc":"2.0","error":{"code":-32600,"message":"m"},"id":null}"#,
            r#"{"id":-12.5e3,"result":true}"#,
            r#"{"id":"\u0061","result":{}}"#,
            r#"{"result":{},"id":[1]}"#,
            r#"{"id":1}"#,
            r#"{"id":1,"method":"x","result":{}}"#,
            r#"{}"#,
            r#"[{"id":1,"result":{}}]"#,
        ];
        for m in agree {
            let by_parser = parse(m.as_bytes())
                .filter(|e| e.kind() == Kind::Response)
                .map(|e| e.id.map_or("null", RawValue::get).to_owned());
            assert_eq!(
                response_id(m.as_bytes()).map(str::to_owned),
                by_parser,
                "{m}"
            );
        }
        for refused in [
            &br#"{"id":1,"result":{},"id":99}"#[..],
            br#"{"\u0069d":99,"id":1,"result":{}}"#,
            br#"{"id":1,"result":{"a":"unterminated}"#,
            br#"{"id":1,"result":{} x"#,
            br#"{"id":1 "result":{}}"#,
            b"",
        ] {
            assert_eq!(
                response_id(refused),
                None,
                "{}",
                String::from_utf8_lossy(refused)
            );
        }
    }

    #[test]
    fn escaped_method_names_still_parse() {
        let e = parse(br#"{"jsonrpc":"2.0","id":1,"method":"tools\/call"}"#).expect("parse");
        assert_eq!(e.kind(), Kind::Request("tools/call"));
    }

    #[test]
    fn with_member_replaces_and_keeps_everything_else() {
        let raw = r#"{"name":"a__inc","arguments":{"x":[1,2,{"y":"\u00e9"}]},"_meta":{"progressToken":7},"zz":1}"#;
        let out = with_member(raw, "name", &json_string("inc")).expect("object");
        assert_eq!(
            out,
            r#"{"name":"inc","arguments":{"x":[1,2,{"y":"\u00e9"}]},"_meta":{"progressToken":7},"zz":1}"#
        );
        let added = with_member(r#"{}"#, "cursor", "\"c\"").expect("object");
        assert_eq!(added, r#"{"cursor":"c"}"#);
        assert!(with_member("[1]", "a", "1").is_none());
    }

    #[test]
    fn builders_produce_valid_json() {
        let e = error(
            "7",
            INVALID_PARAMS,
            "Unknown tool: \"x\"\n",
            Some(r#"{"a":1}"#),
        );
        let v: serde_json::Value = serde_json::from_slice(&e).expect("json");
        assert_eq!(v["error"]["code"], -32602);
        assert_eq!(v["error"]["message"], "Unknown tool: \"x\"\n");
        let r = request("mcpgw-1", "tools/list", Some(r#"{"cursor":"c"}"#));
        let v: serde_json::Value = serde_json::from_slice(&r).expect("json");
        assert_eq!(v["params"]["cursor"], "c");
        assert!(matches!(
            answer(&result("1", "{\"ok\":true}")),
            Some(Answer::Result(_))
        ));
        assert!(matches!(
            answer(&e),
            Some(Answer::Error { code: -32602, .. })
        ));
    }
}
