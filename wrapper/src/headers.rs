//! Which headers the wrapper manages itself, and how a value from a JSON-RPC body
//! becomes a routing-header value. The names are `mcpgw_mcp::headers`.
//!
//! `Mcp-Method` and `Mcp-Name` (the routing headers of the 2026-07-28 revision) copy
//! the method and `params.name`/`params.uri` of the message; a value that is not safe
//! printable ASCII (non-ASCII, control characters, leading or trailing whitespace) is
//! sent as `=?base64?<base64 of its UTF-8>?=`, so a tool name can never inject a header.
//! Building requests is [`crate::transport`]'s job; this module only names and encodes.

use hyper::header::HeaderValue;
use mcpgw_mcp::headers::text;

/// Headers the wrapper manages itself; `--header` may not set them.
pub(crate) const MANAGED: [&str; 9] = [
    text::MCP_SESSION_ID,
    text::MCP_PROTOCOL_VERSION,
    text::MCP_METHOD,
    text::MCP_NAME,
    text::LAST_EVENT_ID,
    "accept",
    "content-type",
    "content-length",
    "host",
];

/// `value` as a routing-header value: unchanged when it is safe printable ASCII without
/// surrounding whitespace (and does not look like the base64 sentinel), base64-wrapped
/// otherwise.
pub(crate) fn routing_value(value: &str) -> HeaderValue {
    mcpgw_mcp::params::encode(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_pass_unchanged() {
        assert_eq!(routing_value("increment"), "increment");
        assert_eq!(routing_value("counter://value"), "counter://value");
    }

    #[test]
    fn unsafe_names_are_base64_wrapped() {
        assert_eq!(routing_value("café"), "=?base64?Y2Fmw6k=?=");
        assert_eq!(routing_value("a\r\nEvil: 1"), "=?base64?YQ0KRXZpbDogMQ==?=");
        assert_eq!(routing_value(" padded"), "=?base64?IHBhZGRlZA==?=");
        assert_eq!(routing_value("=?base64?x?="), "=?base64?PT9iYXNlNjQ/eD89?=");
    }
}
