//! JSON-RPC as far as the wrapper needs it, on parsed [`Value`]s: what kind of message
//! a line is, the keys that route it (`id`, `method`, `params.name`/`params.uri`, the
//! 2026-07-28 `_meta` protocol version), and the error responses the wrapper writes on
//! behalf of a server that could not answer.
//!
//! Messages are otherwise passed through untouched (parsed to [`Value`] and written
//! back in the same key order); the wrapper never rewrites a payload. The error codes
//! and the `_meta` key are the shared vocabulary (`mcpgw_mcp`); what stays here works
//! on `Value`s and has the wrapper's own rules, which differ from the gateway's raw
//! scan on purpose: an `id` of `null` counts as absent and any other `id` is passed on
//! for the server to judge, because the wrapper relays rather than serves.

use mcpgw_mcp::version::META_PROTOCOL_VERSION;
use serde_json::{Value, json};

pub(crate) use mcpgw_mcp::jsonrpc::{INTERNAL_ERROR, INVALID_REQUEST, PARSE_ERROR};

/// The connection to the server failed or the session was lost (the code the MCP SDKs
/// use for a closed connection; the gateway gives -32000 another meaning).
pub(crate) const CONNECTION_CLOSED: i32 = -32000;
/// The request did not complete within `--timeout` (the MCP SDKs' request-timeout code).
pub(crate) const REQUEST_TIMEOUT: i32 = -32001;

/// A JSON-RPC id as a map key: its canonical JSON text, so `1` and `"1"` differ.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct IdKey(String);

impl IdKey {
    pub(crate) fn of(id: &Value) -> Self {
        Self(id.to_string())
    }
}

impl std::fmt::Display for IdKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What one JSON-RPC message is.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    Request {
        id: Value,
        method: String,
    },
    Notification {
        method: String,
    },
    /// A result or error answering the peer's request `id`.
    Response {
        id: Value,
    },
    /// Not a JSON-RPC 2.0 message the wrapper can route; carries the id if there was one.
    Invalid {
        id: Option<Value>,
        reason: &'static str,
    },
}

/// Classifies one message (not a batch).
pub(crate) fn classify(message: &Value) -> Kind {
    let Some(obj) = message.as_object() else {
        return Kind::Invalid {
            id: None,
            reason: "a JSON-RPC message must be an object",
        };
    };
    let id = obj.get("id").filter(|id| !id.is_null()).cloned();
    match (obj.get("method"), id) {
        (Some(Value::String(method)), Some(id)) => Kind::Request {
            id,
            method: method.clone(),
        },
        (Some(Value::String(method)), None) => Kind::Notification {
            method: method.clone(),
        },
        (Some(_), id) => Kind::Invalid {
            id,
            reason: "method must be a string",
        },
        (None, Some(id)) if obj.contains_key("result") || obj.contains_key("error") => {
            Kind::Response { id }
        }
        (None, id) => Kind::Invalid {
            id,
            reason: "neither a request, a notification nor a response",
        },
    }
}

/// The routing name of a message: `params.name`, else `params.uri`, when a string.
pub(crate) fn routing_name(message: &Value) -> Option<&str> {
    let params = message.get("params")?;
    params
        .get("name")
        .and_then(Value::as_str)
        .or_else(|| params.get("uri").and_then(Value::as_str))
}

/// The protocol version a 2026-07-28 request declares in `params._meta`, if any.
pub(crate) fn meta_protocol_version(message: &Value) -> Option<&str> {
    message
        .get("params")?
        .get("_meta")?
        .get(META_PROTOCOL_VERSION)?
        .as_str()
}

/// The error response for request `id`.
pub(crate) fn error_response(id: &Value, code: i32, message: &str, data: Option<Value>) -> Value {
    let mut error = json!({"code": code, "message": message});
    if let (Some(data), Some(obj)) = (data, error.as_object_mut()) {
        obj.insert("data".to_owned(), data);
    }
    json!({"jsonrpc": "2.0", "id": id, "error": error})
}

/// A `notifications/cancelled` for our own request `id`.
pub(crate) fn cancelled(id: &Value, reason: &str) -> Value {
    json!({
        "jsonrpc": "2.0",
        "method": "notifications/cancelled",
        "params": {"requestId": id, "reason": reason},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_the_four_shapes() {
        assert_eq!(
            classify(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"})),
            Kind::Request {
                id: json!(1),
                method: "ping".into()
            }
        );
        assert_eq!(
            classify(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"})),
            Kind::Notification {
                method: "notifications/initialized".into()
            }
        );
        assert_eq!(
            classify(&json!({"jsonrpc": "2.0", "id": "a", "result": {}})),
            Kind::Response { id: json!("a") }
        );
        assert_eq!(
            classify(&json!({"jsonrpc": "2.0", "id": 2, "error": {"code": 1, "message": "x"}})),
            Kind::Response { id: json!(2) }
        );
        assert!(matches!(
            classify(&json!([1])),
            Kind::Invalid { id: None, .. }
        ));
        assert!(matches!(
            classify(&json!({"id": 3, "method": 4})),
            Kind::Invalid { id: Some(_), .. }
        ));
        assert!(matches!(classify(&json!({"id": 3})), Kind::Invalid { .. }));
    }

    #[test]
    fn ids_of_different_types_are_different_keys() {
        assert_ne!(IdKey::of(&json!(1)), IdKey::of(&json!("1")));
        assert_eq!(IdKey::of(&json!("x")), IdKey::of(&json!("x")));
    }

    #[test]
    fn routing_name_prefers_name_then_uri() {
        let call = json!({"method": "tools/call", "params": {"name": "increment"}});
        assert_eq!(routing_name(&call), Some("increment"));
        let read = json!({"method": "resources/read", "params": {"uri": "counter://value"}});
        assert_eq!(routing_name(&read), Some("counter://value"));
        assert_eq!(routing_name(&json!({"method": "ping"})), None);
        assert_eq!(routing_name(&json!({"params": {"name": 5}})), None);
    }

    #[test]
    fn meta_protocol_version_is_read_from_meta() {
        let msg =
            json!({"params": {"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}});
        assert_eq!(meta_protocol_version(&msg), Some("2026-07-28"));
        assert_eq!(meta_protocol_version(&json!({"params": {}})), None);
    }

    #[test]
    fn error_response_shape() {
        let e = error_response(&json!(7), REQUEST_TIMEOUT, "late", Some(json!({"k": 1})));
        assert_eq!(
            e,
            json!({"jsonrpc": "2.0", "id": 7, "error": {"code": -32001, "message": "late", "data": {"k": 1}}})
        );
        let e = error_response(&Value::Null, PARSE_ERROR, "bad", None);
        assert!(e["error"].get("data").is_none());
    }
}
