//! Messages on a worker's control channel (supervisor ⇄ worker).
//!
//! The supervisor sends [`ToWorker`], the worker sends [`FromWorker`]; the
//! first message each way is the handshake ([`ToWorker::Init`] /
//! [`FromWorker::Ready`]) and carries [`PROTOCOL_VERSION`], so a worker exec'd
//! from a different build is refused instead of misreading frames.
//! Connections themselves travel on a separate socket ([`crate::fdpass`]) so
//! that a burst of accepts never queues behind control traffic.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::routing::RouteUpdate;
use crate::store::{Fetched, SessionCap, SessionCaps, SessionRecord, StoreWrite};

/// Bumped on any change to these types or their encoding.
pub const PROTOCOL_VERSION: u32 = 9;

/// The fd a worker finds its control channel at (the supervisor puts it
/// there before exec; carries [`ToWorker`] / [`FromWorker`]).
pub const WORKER_CONTROL_FD: i32 = 3;
/// The fd a worker receives handed-over connections on (see
/// [`crate::fdpass`]).
pub const WORKER_CONN_FD: i32 = 4;

/// A worker process: its slot in the pool and which incarnation of that slot.
///
/// Generations are unique across restarts of the gateway on one host (the
/// first one is the supervisor's start time in Unix milliseconds, then +1
/// per restart of the slot), so a record written by a previous run never
/// names a worker of this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WorkerId {
    pub slot: u16,
    pub generation: u64,
}

impl std::fmt::Display for WorkerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.slot, self.generation)
    }
}

/// Supervisor → worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToWorker {
    /// First message: who the worker is and what it serves.
    Init {
        protocol: u32,
        id: WorkerId,
        /// Number of slots in the pool (the routing hash's modulus).
        slots: u16,
        /// Private directory holding every worker's internal socket.
        runtime_dir: PathBuf,
        config: Box<Config>,
    },
    /// Stop taking connections, finish in-flight requests within the grace
    /// period, do with the sessions what `sessions` says, exit 0.
    Shutdown { grace_ms: u64, sessions: AfterStop },
    /// Send metrics and status back as [`FromWorker::Gathered`] with `id`.
    Gather { id: u64 },
    /// Apply a new (validated) configuration; answer [`FromWorker::Reloaded`].
    Reload { id: u64, config: Box<Config> },
    /// Answer to [`FromWorker::StoreFetch`].
    StoreRecord { id: u64, answer: Fetched },
    /// Routing exceptions changed (a slot went down or came back, sessions
    /// were moved off their hash slot); see [`crate::routing::RouteTable`].
    Routes(RouteUpdate),
    /// Answer to [`FromWorker::Open`]: `None` when the session was admitted
    /// and its record stored, else the cap that refused it (nothing stored).
    Opened {
        id: u64,
        refused: Option<SessionCap>,
    },
}

/// What a stopping worker does with its sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AfterStop {
    /// Close their upstream sessions (DELETE upstream): they end here.
    Close,
    /// Keep upstream sessions open and records in the store: the gateway's
    /// next run resumes them (records in Redis).
    Keep,
    /// Keep them, and first let open connections end by themselves (every
    /// answer says `Connection: close`): other workers take the sessions
    /// over now (the worker's slot is removed).
    HandOver,
}

/// A worker's answer to [`ToWorker::Gather`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gathered {
    /// Prometheus text exposition of the worker's registry.
    pub metrics: String,
    pub sessions: u32,
    pub connections: u32,
    /// (upstream id, live upstream sessions, oldest one's age in ms).
    pub upstream_sessions: Vec<(String, u32, u64)>,
}

/// Worker → supervisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FromWorker {
    /// The worker serves: its internal socket is bound and it takes fds.
    Ready {
        protocol: u32,
        id: WorkerId,
        pid: u32,
    },
    /// Open client connections, sent when it changes (at most every 50 ms);
    /// the supervisor balances new sessions by it.
    Load {
        connections: u32,
    },
    Gathered {
        id: u64,
        data: Box<Gathered>,
    },
    /// A reload was applied (`error: None`) or could not be.
    Reloaded {
        id: u64,
        error: Option<String>,
    },
    /// Liveness, every `sessions.heartbeat_ms`, with the sessions used
    /// since the previous one (so the store keeps their records).
    Heartbeat {
        touched: Vec<String>,
    },
    /// Record a change to a session this worker owns.
    Store(StoreWrite),
    /// The record of a session this worker was asked to serve but does not
    /// hold (it is resuming it); answered by [`ToWorker::StoreRecord`].
    StoreFetch {
        id: u64,
        session: String,
    },
    /// A new session (`initialize`): admit it under `caps` and store its
    /// record in one step, so that concurrent initializes on several
    /// workers can never pass a cap together; answered by
    /// [`ToWorker::Opened`].
    Open {
        id: u64,
        caps: SessionCaps,
        record: Box<SessionRecord>,
    },
}

/// Where a handed-over connection was accepted; sent with its fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnMeta {
    /// A plaintext listener; the request head was peeked for routing.
    Plain,
    /// `tls_listener[index]`: the worker terminates TLS with that
    /// listener's certificate.
    Tls { index: u16 },
    /// The cluster listener (`[cluster] listen`): another gateway host
    /// forwarding a request; the worker checks its signature.
    Peer,
}

impl ConnMeta {
    pub const WIRE_LEN: usize = 5;
    const MAGIC: u8 = 0xc7;

    pub fn encode(self) -> [u8; Self::WIRE_LEN] {
        let (kind, index) = match self {
            Self::Plain => (0, 0u16),
            Self::Tls { index } => (1, index),
            Self::Peer => (2, 0),
        };
        let i = index.to_le_bytes();
        [Self::MAGIC, PROTOCOL_VERSION as u8, kind, i[0], i[1]]
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        match bytes {
            [Self::MAGIC, v, kind, i0, i1] if u32::from(*v) == PROTOCOL_VERSION => match kind {
                0 => Some(Self::Plain),
                1 => Some(Self::Tls {
                    index: u16::from_le_bytes([*i0, *i1]),
                }),
                2 => Some(Self::Peer),
                _ => None,
            },
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc<T: Serialize>(v: &T) -> Vec<u8> {
        bincode::serde::encode_to_vec(v, bincode::config::standard()).expect("encode")
    }

    #[test]
    fn golden_bytes() {
        // Wire compatibility between a supervisor and the workers it execs.
        assert_eq!(
            enc(&ToWorker::Shutdown {
                grace_ms: 300,
                sessions: AfterStop::Keep
            }),
            [1, 251, 44, 1, 1]
        );
        assert_eq!(enc(&FromWorker::Load { connections: 7 }), [1, 7]);
        assert_eq!(
            enc(&FromWorker::Ready {
                protocol: 1,
                id: WorkerId {
                    slot: 2,
                    generation: 3
                },
                pid: 9
            }),
            [0, 1, 2, 3, 9]
        );
    }

    #[test]
    fn conn_meta_round_trips_and_rejects_garbage() {
        for m in [
            ConnMeta::Plain,
            ConnMeta::Tls { index: 513 },
            ConnMeta::Peer,
        ] {
            assert_eq!(ConnMeta::decode(&m.encode()), Some(m));
        }
        assert_eq!(ConnMeta::decode(&[0, 1, 2, 3, 4]), None);
        assert_eq!(ConnMeta::decode(&[0xc7, 1, 9, 0, 0]), None);
        assert_eq!(ConnMeta::decode(&[]), None);
    }
}
