//! Session records: what a worker writes down about each session so that
//! another worker can resume it after the first one died.
//!
//! With the embedded store (the default) the supervisor keeps these records
//! in memory and workers reach them over the control channel
//! ([`crate::control`]); a Redis backend (several hosts, sessions surviving a
//! supervisor restart) will store the same records under keys documented here.

use serde::{Deserialize, Serialize};

use crate::control::WorkerId;

/// Everything needed to rebuild a session on another worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The session id (validated [`crate::session_id::SessionId`] text).
    pub id: String,
    pub owner: WorkerId,
    /// Empty until authentication exists.
    pub principal: String,
    /// The endpoint path the session was opened on.
    pub endpoint: String,
    /// Negotiated protocol version.
    pub version: String,
    /// The client's `initialize` params (capabilities, clientInfo), raw JSON,
    /// with the negotiated version.
    pub init_params: String,
    /// Unix milliseconds.
    pub created_ms: u64,
    pub upstreams: Vec<UpstreamRecord>,
}

/// One upstream session of a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpstreamRecord {
    pub upstream: String,
    /// The upstream's `Mcp-Session-Id`, if it gave one.
    pub session_id: Option<String>,
    /// The protocol version negotiated with the upstream.
    pub version: String,
}

/// A change a worker makes to the records of sessions it owns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StoreWrite {
    /// A new session (or a resumed one, under its new owner).
    Put(Box<SessionRecord>),
    /// An upstream session was created (or replaced) for `session`.
    SetUpstream {
        session: String,
        upstream: UpstreamRecord,
    },
    /// The upstream session of `session` on `upstream` is gone.
    ClearUpstream { session: String, upstream: String },
    /// The session ended.
    Remove { session: String },
}
