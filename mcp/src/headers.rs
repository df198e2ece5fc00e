//! The HTTP header names MCP's Streamable HTTP transport defines, as
//! [`HeaderName`] constants for code that holds a `HeaderMap`, and as text
//! ([`text`]) for code that reads raw request heads (`httparse`) or needs a
//! `&'static str` in a constant.
//!
//! Only MCP's own names live here; the gateway-internal ones (`x-mcpgw-…`)
//! belong to `mcpgw_protocol::headers`. How a value is encoded for a header
//! is left to the code that sends it.

use http::HeaderName;

/// The header names in lowercase, as `HeaderName::from_static` requires.
pub mod text {
    /// See [`super::MCP_SESSION_ID`].
    pub const MCP_SESSION_ID: &str = "mcp-session-id";
    /// See [`super::MCP_PROTOCOL_VERSION`].
    pub const MCP_PROTOCOL_VERSION: &str = "mcp-protocol-version";
    /// See [`super::LAST_EVENT_ID`].
    pub const LAST_EVENT_ID: &str = "last-event-id";
    /// See [`super::MCP_METHOD`].
    pub const MCP_METHOD: &str = "mcp-method";
    /// See [`super::MCP_NAME`].
    pub const MCP_NAME: &str = "mcp-name";
}

/// `Mcp-Session-Id`: the session a request belongs to (stateful era,
/// 2025-03-26 to 2025-11-25); the server sets it on its `initialize` answer.
pub const MCP_SESSION_ID: HeaderName = HeaderName::from_static(text::MCP_SESSION_ID);
/// `MCP-Protocol-Version`: the negotiated protocol version, sent by clients
/// on every request after `initialize` (2025-06-18 onwards) and on every
/// request in the 2026-07-28 revision.
pub const MCP_PROTOCOL_VERSION: HeaderName = HeaderName::from_static(text::MCP_PROTOCOL_VERSION);
/// `Last-Event-ID`: the SSE header a client sends to resume a stream after
/// the last event it received.
pub const LAST_EVENT_ID: HeaderName = HeaderName::from_static(text::LAST_EVENT_ID);
/// `Mcp-Method`: the request's JSON-RPC method, so an HTTP router can route
/// without reading the body (2026-07-28).
pub const MCP_METHOD: HeaderName = HeaderName::from_static(text::MCP_METHOD);
/// `Mcp-Name`: the request's `params.name` or `params.uri`, for the same
/// routers (2026-07-28).
pub const MCP_NAME: HeaderName = HeaderName::from_static(text::MCP_NAME);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_their_text() {
        for (name, text) in [
            (MCP_SESSION_ID, text::MCP_SESSION_ID),
            (MCP_PROTOCOL_VERSION, text::MCP_PROTOCOL_VERSION),
            (LAST_EVENT_ID, text::LAST_EVENT_ID),
            (MCP_METHOD, text::MCP_METHOD),
            (MCP_NAME, text::MCP_NAME),
        ] {
            assert_eq!(name.as_str(), text);
        }
    }
}
