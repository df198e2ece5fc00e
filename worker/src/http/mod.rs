//! HTTP, blind to MCP: the HTTP/1.1 server on client (and forwarded)
//! connections, the pooled HTTP/1.1 client for upstreams, the framing they
//! share, bodies and the `Host`/`Origin` policy. Nothing here imports
//! anything MCP; the MCP layers above use it.
//!
//! - [`server`]: request heads and bodies in, answers out, keep-alive.
//! - [`client`]: pooled connections to one upstream authority and the
//!   client that speaks on them (run in the caller's task).
//! - [`wire`]: HTTP/1.1 heads and framing (client and server).
//! - [`body`]: the answer body type and its constructors.
//! - [`sse`]: server-sent events, parsed and written (`mcpgw_mcp::sse`,
//!   shared with the wrapper; imported here, where the worker looks for it).
//! - [`origin`]: which `Host` and `Origin` headers are allowed.

pub(crate) mod body;
pub(crate) mod client;
pub(crate) mod origin;
pub(crate) mod server;
pub(crate) use mcpgw_mcp::sse;
pub(crate) mod wire;
