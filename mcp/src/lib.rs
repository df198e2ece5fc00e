//! The MCP vocabulary that mcpgw's worker (the gateway) and its wrapper (the
//! stdio bridge) both speak, written once. It knows the protocol's words and
//! wire formats, not what the gateway does with them: no configuration, no
//! runtime, no I/O, no policy beyond what the specification prescribes.
//!
//! Module map:
//! - [`jsonrpc`]: JSON-RPC 2.0 messages as raw bytes (envelope, the answer
//!   scan, splicing members), the builders for messages mcpgw writes itself,
//!   and the JSON-RPC and MCP error codes.
//! - [`sse`]: Server-Sent Events: the incremental, bounded parser and the
//!   framing of a `message` event.
//! - [`headers`]: the MCP HTTP header names.
//! - [`params`]: values in headers (`=?base64?…?=`) and the
//!   `Mcp-Param-*` headers of a tool's `x-mcp-header` annotations.
//! - [`version`]: MCP protocol versions, their eras and negotiation.

pub mod headers;
pub mod jsonrpc;
pub mod params;
pub mod sse;
pub mod version;
