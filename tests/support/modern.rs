//! Starting the `modern-server` test upstream (a 2026-07-28-only server on rmcp,
//! `servers/modern.rs`) and reading what it received. Start it with
//! [`crate::start_modern!`], which supplies the binary's path from the calling test crate.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, ensure};
use serde_json::Value;

use crate::http::{HttpConn, Request};
use crate::process::{ChildGuard, LineReader, TempDir};

const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
const READY_PREFIX: &str = "modern-server listening http://";

/// A running `modern-server`, killed on drop.
#[derive(Debug)]
pub struct ModernServer {
    _child: ChildGuard,
    pub addr: SocketAddr,
    pub name: String,
    _dir: TempDir,
}

impl ModernServer {
    pub fn start(exe: &Path, name: &str) -> Result<Self> {
        let dir = TempDir::new("mcpgw-modern")?;
        let log = dir.path().join("stderr.log");
        let mut cmd = Command::new(exe);
        cmd.args(["--listen", "127.0.0.1:0", "--name", name]);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?);
        let mut child = ChildGuard::spawn(&format!("modern-server {name}"), cmd, Some(log))?;
        let stdout = child.take_stdout().context("no stdout pipe")?;
        let line = LineReader::new(stdout)
            .next_line(Instant::now() + STARTUP_TIMEOUT)
            .with_context(|| format!("modern-server {name} did not start: {}", child.log_tail()))?
            .ok_or_else(|| anyhow!("modern-server {name} exited at start: {}", child.log_tail()))?;
        let addr = line
            .strip_prefix(READY_PREFIX)
            .ok_or_else(|| anyhow!("unexpected first line from modern-server: {line:?}"))?
            .parse()
            .with_context(|| format!("address in {line:?}"))?;
        Ok(Self {
            _child: child,
            addr,
            name: name.to_owned(),
            _dir: dir,
        })
    }

    /// The MCP endpoint URL, for gateway configs.
    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    /// Every request it received (`GET /log`): `{"http": METHOD, "method": JSON-RPC method}`.
    pub async fn log(&self) -> Result<Vec<Value>> {
        let mut conn = HttpConn::connect(self.addr).await?;
        let response = conn.send(&Request::get("/log")).await?;
        ensure!(response.status == 200, "/log answered {}", response.status);
        match response.json()? {
            Value::Array(entries) => Ok(entries),
            other => Err(anyhow!("/log is not an array: {other}")),
        }
    }
}

/// Start `modern-server` named `$name` from the calling test crate's binary.
#[macro_export]
macro_rules! start_modern {
    ($name:expr) => {
        $crate::modern::ModernServer::start(
            ::std::path::Path::new(env!("CARGO_BIN_EXE_modern-server")),
            $name,
        )
    };
}
