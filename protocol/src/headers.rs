//! HTTP header names that both the supervisor (which peeks request heads) and
//! the workers read or write. Lowercase, as `http::HeaderName` wants them.

/// The MCP session header (Streamable HTTP, 2025-03-26 onwards).
pub const MCP_SESSION_ID: &str = "mcp-session-id";
/// The negotiated protocol version, sent by clients after `initialize`.
pub const MCP_PROTOCOL_VERSION: &str = "mcp-protocol-version";
/// Set by a worker on a request it forwards to the owning worker; honoured
/// only on the internal socket, so a client cannot forge it.
pub const FORWARDED: &str = "x-mcpgw-forwarded";
/// Diagnostic response header naming the worker that served the request
/// (`slot/generation/pid`), present only when `diagnostics.worker_header`.
pub const WORKER: &str = "x-mcpgw-worker";
/// Prefix of every gateway-internal header; stripped from client requests.
pub const INTERNAL_PREFIX: &str = "x-mcpgw-";
