//! Shared harness for the mcpgw end-to-end tests: everything a test needs to start real
//! processes, talk to them over real sockets, and clean up after itself.
//!
//! Module map:
//! - [`process`]: child processes in their own process group, killed on drop (also on
//!   panic), and private scratch directories.
//! - [`gateway`]: builds the `mcpgw` binary once per test binary, writes a config, starts
//!   `mcpgw serve` and waits for it to be ready.
//! - [`counter`]: starts the `counter-server` test upstream and reads its `/stats`.
//! - [`modern`]: starts the `modern-server` test upstream (2026-07-28 only, on rmcp).
//! - [`http`]: a small HTTP/1.1 client over `TcpStream` with byte-level control
//!   (keep-alive, partial heads, oversized requests).
//! - [`sse`]: parsing `text/event-stream` bodies.
//! - [`stream`]: an open SSE response read message by message (server→client traffic).
//! - [`mcp`]: an MCP Streamable HTTP client on top of [`http`].
//! - [`stateless`]: hand-written requests of the stateless revision (2026-07-28).
//! - [`ops`]: sessions on every worker, the admin listener, reading metrics.
//! - [`python`]: the Python MCP SDK's venv and running its client scripts.
//! - [`rmcp_client`]: the rmcp SDK client in each lifecycle mode.
//! - [`idp`]: a test OAuth token endpoint (client-credentials grant) whose tokens a
//!   `counter-server --bearer-file` accepts.
//! - [`pki`]: a throwaway CA and certificates (`openssl`), for TLS listeners and https
//!   upstreams.
//! - [`redis`]: a real `redis-server` on a private Unix socket.
//! - [`otlp`]: a test OTLP/HTTP collector that keeps the spans it receives.
//!
//! Waiting is always on a condition with a deadline ([`wait_until`]), never on a fixed
//! sleep.

pub mod counter;
pub mod gateway;
pub mod http;
pub mod idp;
pub mod mcp;
pub mod modern;
pub mod ops;
pub mod otlp;
pub mod pki;
pub mod process;
pub mod python;
pub mod redis;
pub mod rmcp_client;
pub mod sse;
pub mod stateless;
pub mod stream;

use std::future::Future;
use std::time::{Duration, Instant};

pub use counter::{CounterOpts, CounterServer, CounterTls, Stats};
pub use gateway::{Gateway, GatewayConfig};
pub use http::{HttpConn, Request, Response};
pub use mcp::{McpClient, RpcReply, WorkerTag};

/// How long one socket read or connect may take before a test gives up on it. Generous:
/// it only bounds a hang, it is never a performance threshold.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Polling interval of [`wait_until`].
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Polls `probe` until it yields `Some`, or fails after `within`. Probe errors are kept
/// (the last one is reported on timeout) but do not stop the polling, since the thing
/// waited on is often not reachable yet.
pub async fn wait_until<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + within;
    let mut last_error = None;
    loop {
        match probe().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if Instant::now() >= deadline {
            match last_error {
                Some(e) => anyhow::bail!(
                    "timed out after {within:?} waiting for {what}; last error: {e:#}"
                ),
                None => anyhow::bail!("timed out after {within:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Starts a `counter-server` from the calling test binary, where Cargo provides its path.
///
/// `start_counter!()` uses the defaults; `start_counter!(opts)` takes a [`CounterOpts`].
#[macro_export]
macro_rules! start_counter {
    () => {
        $crate::start_counter!($crate::CounterOpts::default())
    };
    ($opts:expr) => {
        $crate::CounterServer::start(
            ::std::path::Path::new(env!("CARGO_BIN_EXE_counter-server")),
            $opts,
        )
    };
}
