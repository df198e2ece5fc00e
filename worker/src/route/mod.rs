//! Era-neutral routing of one JSON-RPC request to the upstreams of an
//! endpoint.
//!
//! - [`lists`]: namespacing and merged lists.

pub(crate) mod lists;
