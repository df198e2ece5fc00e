//! Starting the `counter-server` test upstream and reading what it counted.
//!
//! The server itself is `servers/counter.rs`; start it with [`crate::start_counter!`],
//! which supplies the binary's path from the calling test crate.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, ensure};
use serde::Deserialize;

use crate::http::{HttpConn, Request};
use crate::mcp::McpClient;
use crate::process::{ChildGuard, LineReader, TempDir};

const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
const READY_PREFIX: &str = "counter-server listening http://";
const TLS_READY_PREFIX: &str = "counter-server listening https://";

/// Command-line options of `counter-server`.
#[derive(Debug, Clone, Default)]
pub struct CounterOpts {
    pub sse: bool,
    pub name: Option<String>,
    pub page_size: Option<usize>,
    /// `--require-header 'Name: value'`: POSTs without it get 401.
    pub require_header: Option<String>,
    /// `--instructions TEXT`: `instructions` in its `initialize` answer.
    pub instructions: Option<String>,
    /// Also serve over TLS on a second port ([`CounterServer::tls_addr`]).
    pub tls: Option<CounterTls>,
    /// `--bearer-file PATH`: every MCP request needs `Authorization: Bearer TOKEN` for
    /// an unexpired line `TOKEN [EXPIRES_UNIX_MS]` of the file ([`crate::idp`] writes it).
    pub bearer_file: Option<std::path::PathBuf>,
}

/// `--tls-cert`, `--tls-key` and `--tls-client-ca` of `counter-server`.
#[derive(Debug, Clone)]
pub struct CounterTls {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    /// Require a client certificate signed by this CA.
    pub client_ca: Option<std::path::PathBuf>,
}

impl CounterOpts {
    pub fn named(name: &str) -> Self {
        Self {
            name: Some(name.to_owned()),
            ..Self::default()
        }
    }
}

/// What the server has received (`GET /stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Stats {
    pub initialize: u64,
    pub delete: u64,
    pub live_sessions: u64,
    pub tools_call: u64,
    pub ping: u64,
    pub slow_in_flight: u64,
    /// GET streams open now.
    pub open_streams: u64,
    /// Requests refused (401) for want of the `--bearer-file` token.
    #[serde(default)]
    pub unauthorized: u64,
}

/// A running `counter-server`, killed on drop.
#[derive(Debug)]
pub struct CounterServer {
    child: ChildGuard,
    pub addr: SocketAddr,
    /// The TLS port, when started with [`CounterOpts::tls`].
    pub tls_addr: Option<SocketAddr>,
    pub name: String,
    _dir: TempDir,
}

impl CounterServer {
    pub fn start(exe: &Path, opts: CounterOpts) -> Result<Self> {
        let name = opts.name.clone().unwrap_or_else(|| "counter".to_owned());
        let dir = TempDir::new("mcpgw-counter")?;
        let log = dir.path().join("stderr.log");
        let mut cmd = Command::new(exe);
        cmd.args(["--listen", "127.0.0.1:0", "--name", &name]);
        if opts.sse {
            cmd.arg("--sse");
        }
        if let Some(n) = opts.page_size {
            cmd.args(["--page-size", &n.to_string()]);
        }
        if let Some(text) = &opts.instructions {
            cmd.args(["--instructions", text]);
        }
        if let Some(h) = &opts.require_header {
            cmd.args(["--require-header", h]);
        }
        if let Some(path) = &opts.bearer_file {
            cmd.arg("--bearer-file").arg(path);
        }
        if let Some(tls) = &opts.tls {
            cmd.arg("--tls-cert").arg(&tls.cert);
            cmd.arg("--tls-key").arg(&tls.key);
            if let Some(ca) = &tls.client_ca {
                cmd.arg("--tls-client-ca").arg(ca);
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?);
        let mut child = ChildGuard::spawn(&format!("counter-server {name}"), cmd, Some(log))?;
        let stdout = child.take_stdout().context("no stdout pipe")?;
        let lines = LineReader::new(stdout);
        let line = lines
            .next_line(Instant::now() + STARTUP_TIMEOUT)
            .with_context(|| format!("counter-server {name} did not start: {}", child.log_tail()))?
            .ok_or_else(|| {
                anyhow!(
                    "counter-server {name} exited at start: {}",
                    child.log_tail()
                )
            })?;
        let addr = line
            .strip_prefix(READY_PREFIX)
            .ok_or_else(|| anyhow!("unexpected first line from counter-server: {line:?}"))?
            .parse()
            .with_context(|| format!("address in {line:?}"))?;
        let tls_addr = match &opts.tls {
            None => None,
            Some(_) => {
                let line = lines
                    .next_line(Instant::now() + STARTUP_TIMEOUT)
                    .with_context(|| {
                        format!(
                            "counter-server {name} did not announce TLS: {}",
                            child.log_tail()
                        )
                    })?
                    .ok_or_else(|| anyhow!("counter-server {name} exited: {}", child.log_tail()))?;
                Some(
                    line.strip_prefix(TLS_READY_PREFIX)
                        .ok_or_else(|| anyhow!("unexpected second line: {line:?}"))?
                        .parse()
                        .with_context(|| format!("address in {line:?}"))?,
                )
            }
        };
        Ok(Self {
            child,
            addr,
            tls_addr,
            name,
            _dir: dir,
        })
    }

    /// The MCP endpoint URL, for gateway configs.
    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    /// The MCP endpoint URL on the TLS port, naming the server `host` (the
    /// port is the TLS port's). `None` without TLS.
    pub fn https_url(&self, host: &str) -> Option<String> {
        self.tls_addr
            .map(|a| format!("https://{host}:{}/mcp", a.port()))
    }

    /// A client talking to this server directly (no gateway).
    pub fn client(&self) -> McpClient {
        McpClient::new(self.addr, "/mcp")
    }

    /// Checks, once the gateway in front of this server has stopped, that it closed
    /// (`DELETE`) every upstream session it opened here and left none live.
    pub async fn assert_all_sessions_closed(&self) {
        let stats = self.stats().await.expect("stats");
        assert_eq!(stats.live_sessions, 0, "{stats:?}");
        assert_eq!(stats.initialize, stats.delete, "{stats:?}");
    }

    pub async fn stats(&self) -> Result<Stats> {
        let mut conn = HttpConn::connect(self.addr).await?;
        let response = conn.send(&Request::get("/stats")).await?;
        ensure!(
            response.status == 200,
            "/stats answered {}",
            response.status
        );
        Ok(serde_json::from_value(response.json()?)?)
    }

    /// What `GET /debug/events` recorded (initialize capabilities, cancellations,
    /// answers to server requests, logging levels, subscriptions, notifications).
    pub async fn events(&self) -> Result<Vec<serde_json::Value>> {
        let mut conn = HttpConn::connect(self.addr).await?;
        let response = conn.send(&Request::get("/debug/events")).await?;
        ensure!(
            response.status == 200,
            "/debug/events answered {}",
            response.status
        );
        Ok(serde_json::from_value(response.json()?)?)
    }

    /// Recorded events of one kind.
    pub async fn events_of(&self, kind: &str) -> Result<Vec<serde_json::Value>> {
        Ok(self
            .events()
            .await?
            .into_iter()
            .filter(|e| e.get("kind").and_then(serde_json::Value::as_str) == Some(kind))
            .collect())
    }

    /// Every distinct `Authorization` header value the server received.
    pub async fn authorizations(&self) -> Result<Vec<String>> {
        let mut conn = HttpConn::connect(self.addr).await?;
        let response = conn.send(&Request::get("/debug/authorizations")).await?;
        ensure!(
            response.status == 200,
            "/debug/authorizations answered {}",
            response.status
        );
        Ok(serde_json::from_value(response.json()?)?)
    }

    /// Kills the server now (for dead-upstream tests); its port is then closed.
    pub fn kill(&mut self) {
        self.child.kill();
    }
}
