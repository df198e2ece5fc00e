//! What stops a worker from starting or running: one variant per step.

use mcpgw_protocol::channel::ChannelError;

use crate::upstream;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("taking inherited fd {fd}: {cause} (is this process started by `mcpgw serve`?)")]
    InheritedFd { fd: i32, cause: std::io::Error },
    #[error("starting the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("control channel: {0}")]
    Control(ChannelError),
    #[error("the supervisor closed the control channel before the handshake")]
    NoInit,
    #[error("handshake: {0}")]
    Handshake(String),
    #[error("binding the internal socket {path}: {cause}")]
    Internal {
        path: std::path::PathBuf,
        cause: std::io::Error,
    },
    #[error(transparent)]
    Upstream(#[from] upstream::ServerConfigError),
    #[error("setting up metrics: {0}")]
    Metrics(prometheus::Error),
    #[error("TLS listener {0}")]
    Tls(String),
    #[error("[auth] keys: {0}")]
    AuthKeys(crate::auth::keys::KeysError),
    #[error("{0}")]
    Cluster(String),
}

// By hand, not `#[from]`: the message already carries the cause, and a
// `source()` too would print it twice at the edge.
impl From<ChannelError> for WorkerError {
    fn from(e: ChannelError) -> Self {
        Self::Control(e)
    }
}
