//! What the mcpgw supervisor and its workers must agree on, and nothing else.
//!
//! Module map:
//! - [`config`]: the TOML configuration, its defaults and its validation.
//! - [`session_id`]: the session-id format (mint, parse, validate).
//! - [`routing`]: the rendezvous hash that maps a session id to a worker slot.
//! - [`control`]: the messages exchanged on a worker's control channel.
//! - [`channel`]: length-prefixed bincode framing for those messages.
//! - [`fdpass`]: handing connections (file descriptors) to workers; the only
//!   module allowed `unsafe`.
//! - [`glob`]: the glob patterns of authorization rules (`*`, `?`), compiled
//!   and matched.
//! - [`headers`]: HTTP header names both processes read or write.
//! - [`host_policy`]: which `Host` and `Origin` headers requests may carry
//!   (public and admin listeners alike).
//! - [`redact`]: hiding secrets in configuration values that are shown.
//! - `secrets`: `${NAME}` and `${file:/path}` references in the values
//!   that carry credentials, resolved when the configuration is loaded.
//! - [`tls`]: reading TLS certificates and keys, certificate expiry.
//! - [`store`]: session records, written by workers, kept by the store.
//! - [`cluster`]: what gateway hosts sharing a Redis agree on to forward
//!   requests to one another (the key, request signatures, id tags).
//!
//! Runtime policy (when to restart, how to balance) lives in the processes,
//! not here.

pub mod channel;
pub mod cluster;
pub mod config;
pub mod control;
pub mod fdpass;
pub mod glob;
pub mod headers;
pub mod host_policy;
pub mod redact;
pub mod routing;
mod secrets;
pub mod session_id;
pub mod store;
pub mod tls;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzz;
