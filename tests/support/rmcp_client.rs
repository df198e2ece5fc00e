//! The official Rust SDK's client (rmcp) as a real client of the gateway, in each of its
//! lifecycle modes: `initialize` (a session), `discover` (2026-07-28 only) and `auto`
//! (`server/discover` first, `initialize` as the fallback).

use std::time::Duration;

use anyhow::Context as _;
use rmcp::model::ProtocolVersion;
use rmcp::service::{ClientLifecycleMode, RunningService};
use rmcp::transport::{IntoTransport, StreamableHttpClientTransport};
use rmcp::{ClientServiceExt, RoleClient};

/// A connected rmcp client with no handlers of its own.
pub type Client = RunningService<RoleClient, ()>;

/// How long a client's start-up may take (it only bounds a hang).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// `auto`: the stateless revision preferred, `initialize` when the server lacks it.
pub fn auto() -> ClientLifecycleMode {
    ClientLifecycleMode::Auto {
        preferred_versions: vec![ProtocolVersion::V_2026_07_28],
        legacy_version: None,
    }
}

/// `discover`: the stateless revision only.
pub fn discover() -> ClientLifecycleMode {
    ClientLifecycleMode::Discover {
        preferred_versions: vec![ProtocolVersion::V_2026_07_28],
    }
}

/// Connects to the MCP endpoint at `url` in `mode`.
pub async fn connect(url: &str, mode: ClientLifecycleMode) -> anyhow::Result<Client> {
    over(
        StreamableHttpClientTransport::from_uri(url.to_owned()),
        mode,
    )
    .await
}

/// Starts a client over `transport` (a configured one: a bearer token, say) in `mode`.
pub async fn over<T, E, A>(transport: T, mode: ClientLifecycleMode) -> anyhow::Result<Client>
where
    T: IntoTransport<RoleClient, E, A>,
    E: std::error::Error + Send + Sync + 'static,
{
    let started = tokio::time::timeout(START_TIMEOUT, ().serve_with_lifecycle(transport, mode))
        .await
        .with_context(|| format!("the client's start-up did not end within {START_TIMEOUT:?}"))?;
    started.context("the client's start-up")
}
