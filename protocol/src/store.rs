//! Session records: what a worker writes down about each session so that
//! another worker can resume it after the first one died.
//!
//! With the embedded store (the default) the supervisor keeps these records
//! in memory and workers reach them over the control channel
//! ([`crate::control`]). With Redis (`[store] redis_url`, for several hosts
//! and for sessions that outlive a restart of the gateway) the supervisor
//! keeps the same in-memory copy of its own workers' records and writes them
//! through to Redis under the keys of [`keys`]; workers still talk only to
//! their supervisor.
//!
//! ## Redis layout (`P` is `[store] prefix`, default `mcpgw:`)
//!
//! | key | type | content | expiry |
//! |---|---|---|---|
//! | `P s:<session id>` | hash | `owner` = owner id, `record` = [`SessionRecord`] as JSON | idle timeout + heartbeat TTL, renewed on use |
//! | `P w:<owner id>` | set | the session ids that owner holds | same, renewed on write |
//! | `P hb:<owner id>` | string | the worker's pid | heartbeat TTL, renewed every heartbeat |
//! | `P host:<host>` | string | the start time of the gateway now running as `<host>` | none (it tells a Redis that lost its data) |
//! | `P members` | hash | field `<host>` = [`Member`] as JSON, rewritten every heartbeat by hosts with `[cluster]` | none (a member's age says whether it is alive); a dead member's field is deleted by a survivor once it holds no sessions, a host that handed everything over deletes its own |
//!
//! An owner id is `<host>/<slot>/<generation>` ([`owner_id`]). Session ids
//! are validated ([`crate::session_id::SessionId`]) and hosts restricted to
//! `[A-Za-z0-9._-]` before they become part of a key. Ownership changes only
//! by compare-and-swap in a Lua script (owner == expected → new), so two
//! reassigners can never both win.

use serde::{Deserialize, Serialize};

use crate::control::WorkerId;
use crate::session_id::SessionId;

/// `<host>/<slot>/<generation>`: who owns a session, across hosts.
pub fn owner_id(host: &str, worker: WorkerId) -> String {
    format!("{host}/{}/{}", worker.slot, worker.generation)
}

/// Split an owner id into its host and worker, if well formed.
pub fn parse_owner_id(text: &str) -> Option<(&str, WorkerId)> {
    let mut parts = text.rsplitn(3, '/');
    let generation = parts.next()?.parse().ok()?;
    let slot = parts.next()?.parse().ok()?;
    let host = parts.next().filter(|h| crate::config::is_key_safe(h))?;
    Some((host, WorkerId { slot, generation }))
}

/// Redis key names (see the module documentation).
pub mod keys {
    use super::SessionId;

    pub fn session(prefix: &str, id: &SessionId) -> String {
        format!("{prefix}s:{id}")
    }

    pub fn owner_sessions(prefix: &str, owner: &str) -> String {
        format!("{prefix}w:{owner}")
    }

    pub fn heartbeat(prefix: &str, owner: &str) -> String {
        format!("{prefix}hb:{owner}")
    }

    pub fn host(prefix: &str, host: &str) -> String {
        format!("{prefix}host:{host}")
    }

    pub fn members(prefix: &str) -> String {
        format!("{prefix}members")
    }
}

/// A gateway host of a cluster as it publishes itself in Redis (the field
/// `<host>` of [`keys::members`]) every heartbeat period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// `host:port` of its internal listener (`[cluster] advertise`).
    pub advertise: String,
    /// Unix milliseconds of the heartbeat that wrote this.
    pub beat_ms: u64,
    /// Sessions it holds.
    pub sessions: u64,
    /// Its worker slots (0: not published, by a host before this field).
    #[serde(default)]
    pub slots: u16,
    /// The owner ids of its live workers: where another host may hand a
    /// session over to (`cluster.handover_on_stop`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workers: Vec<String>,
}

/// Everything needed to rebuild a session on another worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The session id (validated [`crate::session_id::SessionId`] text).
    pub id: String,
    pub owner: WorkerId,
    /// Who opened the session, with `[auth]`: `<iss> <sub>` (the issuer
    /// has no spaces, so the first space separates them); empty without.
    /// Only requests of this principal may use the session, on any worker
    /// that resumes it.
    pub principal: String,
    /// The IP address the session was opened from (text), empty when not
    /// known; the supervisor counts sessions per client by it
    /// ([`SessionCaps::per_client`]). Absent in records written before it
    /// existed.
    #[serde(default)]
    pub client: String,
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
    /// The upstream's capabilities from its `initialize` answer (raw JSON).
    #[serde(default)]
    pub capabilities: String,
}

/// The session caps an `initialize` is admitted under (`[limits]`), sent
/// by the worker with the record so that the check uses the configuration
/// the request was served under, reloads included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionCaps {
    /// Live sessions on this host, all workers together.
    pub total: u32,
    /// Live sessions owned by the asking worker.
    pub per_worker: u32,
    /// Live sessions opened from one client: its principal with `[auth]`
    /// (`auth.max_sessions_per_principal`), else its IP address
    /// (`limits.max_sessions_per_client`).
    pub per_client: u32,
}

/// The cap that refused a new session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionCap {
    Worker,
    Client,
    Total,
}

impl SessionCap {
    /// The metric label and the word in the client's error message.
    pub fn label(self) -> &'static str {
        match self {
            Self::Worker => "worker",
            Self::Client => "client",
            Self::Total => "total",
        }
    }
}

/// The store's answer to a worker asking for a session's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Fetched {
    /// The record, now owned by the asker.
    Record(Box<SessionRecord>),
    /// The store holds no record of this session at all: an answer the
    /// worker may remember for a moment (a negative cache).
    Absent,
    /// There is a record the asker may not have (its owner is alive), or the
    /// store could not be asked: not an answer to remember.
    Withheld,
    /// A live worker of another gateway host owns the session: forward the
    /// request to that host's internal listener (`[cluster]`).
    Elsewhere {
        /// The owner's host name (`[store] host`).
        host: String,
        /// Where that host's internal listener is reached (`host:port`).
        advertise: String,
    },
}

impl Fetched {
    pub fn into_record(self) -> Option<Box<SessionRecord>> {
        match self {
            Self::Record(r) => Some(r),
            Self::Absent | Self::Withheld | Self::Elsewhere { .. } => None,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_ids_round_trip_and_reject_junk() {
        let w = WorkerId {
            slot: 3,
            generation: 1_764_460_000_123,
        };
        let text = owner_id("gw-1.example", w);
        assert_eq!(text, "gw-1.example/3/1764460000123");
        assert_eq!(parse_owner_id(&text), Some(("gw-1.example", w)));
        for junk in ["", "a/b/c", "h/1", "bad host/1/2", "/1/2", "h/70000/1"] {
            assert_eq!(parse_owner_id(junk), None, "{junk}");
        }
    }
}
