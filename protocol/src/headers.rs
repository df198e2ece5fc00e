//! The gateway's own HTTP header names, which supervisor and workers agree
//! on. Lowercase, as `http::HeaderName` wants them. MCP's header names
//! (`Mcp-Session-Id`, …) are `mcpgw_mcp::headers`.

/// Set by a worker on a request it forwards to the owning worker; honoured
/// only on the internal socket, so a client cannot forge it.
pub const FORWARDED: &str = "x-mcpgw-forwarded";
/// Set by a worker on a request it forwards: the client's IP address (a
/// rate limit without `[auth]` counts by it); honoured only on the
/// internal socket.
pub const CLIENT_ADDR: &str = "x-mcpgw-client";
/// Diagnostic response header naming the worker that served the request
/// (`slot/generation/pid`), present only when `diagnostics.worker_header`.
pub const WORKER: &str = "x-mcpgw-worker";
/// Prefix of every gateway-internal header; stripped from client requests.
pub const INTERNAL_PREFIX: &str = "x-mcpgw-";
