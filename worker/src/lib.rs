//! An mcpgw worker process: it serves the connections the supervisor hands
//! it, owns the MCP sessions routed to it and their upstream sessions, and
//! shares nothing in memory with its siblings.
//!
//! Module map (arrows point down: a module imports only those below it or
//! beside it, never one that imports it back):
//! - [`run`]: start-up (handshake), the serving loop, connections (plain,
//!   TLS, internal), the control channel, heartbeats, reload, shutdown.
//! - [`ctx`]: what request handlers read ([`ctx::Ctx`]) and the
//!   configuration in force ([`ctx::Live`]).
//! - [`auth`]: the OAuth 2.1 front door (`[auth]`): bearer tokens checked
//!   against the issuer's keys, 401/403 answers, RFC 9728 metadata; the
//!   [`auth::Principal`] a session is bound to.
//! - [`front`]: from an HTTP request to an MCP request and back, for each
//!   protocol era ([`front::stateful`] with sessions, [`front::stateless`]
//!   for 2026-07-28).
//! - [`forward`]: requests for sessions another worker (or another
//!   gateway host) owns; [`cluster`]: signing and checking requests
//!   between hosts, the cache of other hosts' sessions.
//! - [`route`]: era-neutral routing of a request to upstreams (namespacing,
//!   merged lists), with a [`route::source::Source`] of upstream sessions.
//! - [`session`]: the downstream sessions this worker owns, their upstream
//!   sessions ([`session::registry`]), the warm pool for stateless clients
//!   ([`session::warm`]) and their records ([`session::store`]: admission
//!   under the caps, resume, negative cache).
//! - [`relay`]: server→client requests, notifications and cancellation
//!   between a session and its upstream sessions; the id/token maps.
//! - [`endpoints`]: the configured endpoints and their namespacing rule.
//! - [`authz`]: an endpoint's authorization rules (who may see and use which
//!   tool, prompt, resource), compiled; [`rate_limit`]: its token buckets.
//! - [`upstream`]: the MCP client side of one upstream server, its
//!   transports (the [`upstream::adapter`] puts stdio and legacy HTTP+SSE
//!   behind Streamable HTTP) and the [`upstream::answer_budget`].
//! - [`http`]: HTTP, blind to MCP: the server, the pooled client, framing,
//!   bodies, SSE, the `Host`/`Origin` policy.
//! - [`metrics`]: this worker's Prometheus registry; [`otel`]: `[tracing]`,
//!   request and upstream spans exported over OTLP/HTTP (off by default).
//! - [`bounded`]: background jobs under one time bound (closing paths);
//!   [`error`]: why a worker stops.
//!
//! The MCP vocabulary (JSON-RPC as raw bytes, error codes, SSE, header
//! names, protocol versions) is the `mcpgw-mcp` crate, shared with the
//! wrapper; `jsonrpc` and `versions` are imported here under the names the
//! modules above have always used.

mod auth;
mod authz;
mod bounded;
mod cluster;
mod ctx;
mod endpoints;
mod error;
mod forward;
mod front;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzz;
mod http;
mod metrics;
mod otel;
mod rate_limit;
mod relay;
mod route;
mod run;
mod session;
pub mod upstream;

use mcpgw_mcp::jsonrpc;
use mcpgw_mcp::version as versions;
use mcpgw_protocol::control::{WORKER_CONN_FD, WORKER_CONTROL_FD};
use mcpgw_protocol::fdpass;

pub use crate::auth::check_config_files as check_auth_files;
pub use crate::auth::keys::KeysError as AuthKeysError;
pub use crate::error::WorkerError;
pub use crate::run::Args;

/// Run a worker until the supervisor tells it to stop (or disappears).
pub fn run(args: Args) -> Result<(), WorkerError> {
    let take =
        |fd| fdpass::take_inherited(fd).map_err(|cause| WorkerError::InheritedFd { fd, cause });
    let control = take(WORKER_CONTROL_FD)?;
    let conns = take(WORKER_CONN_FD)?;
    // One thread per worker process; the pool has one worker per core.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // Its blocking-pool threads, in `ps -L` and `top -H`.
        .thread_name(format!("mcpgw-worker-{}", args.slot))
        .build()
        .map_err(WorkerError::Runtime)?;
    rt.block_on(run::serve(args, control, conns))
}
