//! `mcpgw wrapper`: a stdio MCP server that bridges one stdio-only MCP client to a
//! remote Streamable HTTP MCP server (mcpgw or any other), keeping the session.
//!
//! The failure it exists to avoid is ContextForge #4419: a bridge that posted every
//! message as an independent request, without `Mcp-Session-Id`, so that everything after
//! `initialize` failed. Here the session id and negotiated protocol version from
//! `initialize` go on every later request; answers may be JSON or SSE streams carrying
//! server→client requests; the GET stream is relayed; requests run concurrently; a lost
//! server or session becomes JSON-RPC errors, never a hang; stdin EOF ends the session
//! with DELETE.
//!
//! Module map:
//! - [`options`]: the command line ([`Args`]) and its validation.
//! - `stdio`: the stdin reader and stdout writer threads (one message per line).
//! - `bridge`: the read loop and per-message dispatch; its child `bridge::lifecycle`:
//!   the session's life (initialize, replay, loss, GET stream start/stop, DELETE).
//! - `exchange`: one POST and everything answered to it; the errors the wrapper writes.
//! - `stream`: the server's GET stream, with reconnection.
//! - `session`: session phases and generations.
//! - `pending`: requests awaiting an answer; exactly one answer each.
//! - `transport`: HTTP requests to the server (hyper, plain http only).
//! - `jsonrpc`: message classification and error responses, on parsed values.
//! - `headers`: the headers the wrapper manages and routing-header value encoding.
//!
//! The MCP vocabulary it shares with the gateway (error codes, the SSE parser, header
//! names, protocol versions) is the `mcpgw-mcp` crate.
//! - `failure`: why a request got an error from the wrapper, as a JSON-RPC error.
//! - `bridge_tests` (tests only): the bridge against a scripted in-process server.

mod bridge;
#[cfg(test)]
mod bridge_tests;
mod exchange;
mod failure;
mod headers;
mod jsonrpc;
pub mod options;
mod pending;
mod session;
mod stdio;
mod stream;
mod transport;

use std::time::Duration;

pub use options::{Args, OptionsError};

/// How long the runtime may take to stop its background threads at exit.
const RUNTIME_SHUTDOWN: Duration = Duration::from_millis(200);

/// Why the wrapper exits with a failure.
#[derive(Debug, thiserror::Error)]
pub enum WrapperError {
    #[error(transparent)]
    Options(#[from] OptionsError),
    #[error("cannot start: {0}")]
    Start(std::io::Error),
    #[error(
        "the MCP server at {url} is unreachable, so the session could not be initialized: {reason}"
    )]
    Unreachable { url: String, reason: String },
    #[error("the MCP server at {url} went away: {reason}")]
    ServerGone { url: String, reason: String },
}

/// Runs the wrapper on this process's stdin and stdout until stdin closes.
///
/// `Ok` means the session ended normally (exit 0). Errors say why the process should
/// exit non-zero: bad options, or a server that could not be reached or went away.
pub fn run(args: &Args) -> Result<(), WrapperError> {
    let options = options::Options::from_args(args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(WrapperError::Start)?;
    let input = stdio::spawn_reader(std::io::stdin()).map_err(WrapperError::Start)?;
    let (output, writer) = stdio::spawn_writer(std::io::stdout()).map_err(WrapperError::Start)?;
    let result = runtime.block_on(bridge::run(options, input, output, true));
    // Tasks still holding an output handle (a cancellation in flight) are dropped here.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    // Every message queued for the client is written before the process exits.
    if writer.join().is_err() {
        tracing::error!("the stdout writer thread panicked");
    }
    result
}
