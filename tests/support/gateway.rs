//! Building and starting the real `mcpgw` binary.
//!
//! The binary is built once per test binary with a nested `cargo build -p mcpgw` into the
//! same target directory as the running test (or taken from `MCPGW_BIN` if set, to test
//! another build). Each [`Gateway`] gets a private directory holding its config and its
//! stderr log; the log is printed if the test fails. The gateway runs in its own process
//! group and the whole group (supervisor and workers) is SIGKILLed on drop.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::sys::signal::Signal;

use crate::mcp::McpClient;
use crate::process::{ChildGuard, LineReader, TempDir};

/// Startup includes forking workers; generous because CI machines are slow and shared.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const LISTENING_PREFIX: &str = "mcpgw listening http://";
const READY_PREFIX: &str = "mcpgw ready workers=";
const ADMIN_PREFIX: &str = "mcpgw admin http://";
const TLS_PREFIX: &str = "mcpgw listening https://";
const CLUSTER_PREFIX: &str = "mcpgw cluster http://";

/// A line of `mcpgw serve`'s stdout in its text form: JSON mode's
/// `{"event":"listening","url":"http://A"}` becomes `mcpgw listening http://A`
/// (likewise `admin`, and `ready` with `workers`); other lines are returned
/// as they are.
pub fn announcement_text(line: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
        return line.to_owned();
    };
    match (
        v["event"].as_str(),
        v["url"].as_str(),
        v["workers"].as_u64(),
    ) {
        (Some("admin"), Some(url), _) => format!("mcpgw admin {url}"),
        (Some("listening"), Some(url), _) => format!("mcpgw listening {url}"),
        (Some("cluster"), Some(url), _) => format!("mcpgw cluster {url}"),
        (Some("ready"), _, Some(n)) => format!("mcpgw ready workers={n}"),
        _ => line.to_owned(),
    }
}

/// The path of an up-to-date `mcpgw` binary, built on first use.
/// `mcpgw check-config` on `text`, written as `dir/name`: its exit code and its stdout
/// and stderr together.
pub fn check_config(dir: &Path, name: &str, text: &str) -> (Option<i32>, String) {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    let out = Command::new(gateway_binary().expect("mcpgw binary"))
        .arg("check-config")
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .expect("run mcpgw check-config");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// [`check_config`] on `dir/check.toml`: whether the config was accepted, and the output.
pub fn config_accepted(dir: &Path, text: &str) -> (bool, String) {
    let (code, out) = check_config(dir, "check.toml", text);
    (code == Some(0), out)
}

pub fn gateway_binary() -> Result<&'static Path> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| build_gateway().map_err(|e| format!("{e:#}")))
        .as_deref()
        .map_err(|e| anyhow!("{e}"))
}

fn build_gateway() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("MCPGW_BIN") {
        return Ok(PathBuf::from(bin));
    }
    // The test executable is <target>/debug/deps/<name>-<hash>.
    let exe = std::env::current_exe()?;
    let target_dir = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("cannot derive the target dir from {}", exe.display()))?;
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("tests crate has no parent dir"))?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(&cargo)
        .args(["build", "-p", "mcpgw", "--bin", "mcpgw", "--target-dir"])
        .arg(target_dir)
        .current_dir(workspace)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cargo} build -p mcpgw"))?;
    if !output.status.success() {
        bail!(
            "`cargo build -p mcpgw` failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let bin = target_dir.join("debug").join("mcpgw");
    if !bin.is_file() {
        bail!("cargo built mcpgw but {} does not exist", bin.display());
    }
    Ok(bin)
}

/// One `[[upstream]]` entry.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub id: String,
    pub url: String,
}

/// One `[[endpoint]]` entry.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    pub path: String,
    pub upstreams: Vec<String>,
}

/// The parts of the gateway's TOML config that tests vary. Unset limits keep the
/// gateway's defaults. Always listens on one ephemeral port with the worker header on.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub workers: usize,
    /// The IP address the public and admin listeners bind (ephemeral
    /// ports); 127.0.0.1 unless set.
    pub ip: Option<String>,
    pub upstreams: Vec<UpstreamConfig>,
    pub endpoints: Vec<EndpointConfig>,
    pub namespace_separator: Option<String>,
    pub max_head_bytes: Option<u64>,
    pub max_body_bytes: Option<u64>,
    pub header_timeout_ms: Option<u64>,
    pub grace_ms: Option<u64>,
    /// Where the internal sockets go (the gateway's default otherwise).
    pub runtime_dir: Option<PathBuf>,
    /// Raw TOML put before any table, for top-level keys this struct does not name.
    pub top: String,
    /// More `[limits]` keys, as `key = raw TOML value`.
    pub limits: Vec<(String, String)>,
    /// Raw TOML appended at the end, for settings this struct does not name.
    pub extra: String,
    /// Extra environment variables for the gateway process.
    pub env: Vec<(String, String)>,
    /// Extra `mcpgw serve` arguments (after `--config FILE`).
    pub args: Vec<String>,
    /// Set `JOURNAL_STREAM` to the stderr log's device:inode, as systemd does
    /// when stderr is a journald stream: the gateway then logs as for journald.
    pub journal_stream: bool,
}

impl GatewayConfig {
    pub fn new(workers: usize) -> Self {
        Self {
            workers,
            ip: None,
            upstreams: Vec::new(),
            endpoints: Vec::new(),
            namespace_separator: None,
            max_head_bytes: None,
            max_body_bytes: None,
            header_timeout_ms: None,
            grace_ms: None,
            runtime_dir: None,
            top: String::new(),
            limits: Vec::new(),
            extra: String::new(),
            env: Vec::new(),
            args: Vec::new(),
            journal_stream: false,
        }
    }

    pub fn upstream(mut self, id: &str, url: &str) -> Self {
        self.upstreams.push(UpstreamConfig {
            id: id.to_owned(),
            url: url.to_owned(),
        });
        self
    }

    pub fn endpoint(mut self, path: &str, upstreams: &[&str]) -> Self {
        self.endpoints.push(EndpointConfig {
            path: path.to_owned(),
            upstreams: upstreams.iter().map(|s| (*s).to_owned()).collect(),
        });
        self
    }

    pub fn to_toml(&self) -> String {
        let mut t = String::new();
        let ip = self.ip.as_deref().unwrap_or("127.0.0.1");
        let _ = writeln!(t, "listen = [\"{ip}:0\"]");
        let _ = writeln!(t, "admin_listen = \"{ip}:0\"");
        let _ = writeln!(t, "workers = {}", self.workers);
        if let Some(dir) = &self.runtime_dir {
            let _ = writeln!(t, "runtime_dir = {}", quote(&dir.to_string_lossy()));
        }
        if let Some(sep) = &self.namespace_separator {
            let _ = writeln!(t, "namespace_separator = {}", quote(sep));
        }
        if !self.top.is_empty() {
            let _ = writeln!(t, "{}", self.top);
        }
        let limits = [
            ("max_head_bytes", self.max_head_bytes),
            ("max_body_bytes", self.max_body_bytes),
            ("header_timeout_ms", self.header_timeout_ms),
        ];
        if limits.iter().any(|(_, v)| v.is_some()) || !self.limits.is_empty() {
            let _ = writeln!(t, "\n[limits]");
            for (key, value) in limits {
                if let Some(v) = value {
                    let _ = writeln!(t, "{key} = {v}");
                }
            }
            for (key, value) in &self.limits {
                let _ = writeln!(t, "{key} = {value}");
            }
        }
        let _ = writeln!(t, "\n[diagnostics]\nworker_header = true");
        if let Some(grace) = self.grace_ms {
            let _ = writeln!(t, "\n[shutdown]\ngrace_ms = {grace}");
        }
        for up in &self.upstreams {
            let _ = writeln!(
                t,
                "\n[[upstream]]\nid = {}\nurl = {}",
                quote(&up.id),
                quote(&up.url)
            );
        }
        for ep in &self.endpoints {
            let ids: Vec<String> = ep.upstreams.iter().map(|s| quote(s)).collect();
            let _ = writeln!(
                t,
                "\n[[endpoint]]\npath = {}\nupstreams = [{}]",
                quote(&ep.path),
                ids.join(", ")
            );
        }
        if !self.extra.is_empty() {
            let _ = writeln!(t, "\n{}", self.extra);
        }
        t
    }
}

/// A TOML basic string (JSON string escapes are valid TOML escapes).
fn quote(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// A running gateway: supervisor plus workers, killed as a group on drop.
#[derive(Debug)]
pub struct Gateway {
    // Dropped first, so its log file (in `_dir`) still exists when a failure prints it.
    child: ChildGuard,
    /// The first listener's address.
    pub addr: SocketAddr,
    pub listeners: Vec<SocketAddr>,
    /// Worker count announced by the `mcpgw ready` line.
    pub workers: usize,
    /// The admin listener (metrics, admin API).
    pub admin: Option<SocketAddr>,
    /// TLS listeners, in configuration order.
    pub tls_listeners: Vec<SocketAddr>,
    /// The cluster listener (`[cluster] listen`), if announced.
    pub cluster: Option<SocketAddr>,
    /// The stdout lines up to and including the ready line, as printed.
    pub stdout_lines: Vec<String>,
    _stdout: LineReader,
    _dir: TempDir,
}

impl Gateway {
    /// Writes `config`, starts `mcpgw serve` and waits for its ready line.
    pub fn start(config: &GatewayConfig) -> Result<Self> {
        let bin = gateway_binary()?;
        let dir = TempDir::new("mcpgw-gateway")?;
        let config_path = dir.path().join("mcpgw.toml");
        std::fs::write(&config_path, config.to_toml())?;
        let log = dir.path().join("stderr.log");
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?);
        cmd.args(&config.args);
        // The gateway's private runtime directory goes inside this test's own
        // scratch directory (unless the test says otherwise), so a gateway
        // killed with SIGKILL leaves nothing behind in /tmp.
        cmd.env("XDG_RUNTIME_DIR", dir.path());
        cmd.envs(config.env.iter().map(|(k, v)| (k, v)));
        if config.journal_stream {
            use std::os::unix::fs::MetadataExt as _;
            let meta = std::fs::metadata(&log).context("stat the stderr log")?;
            cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
        }
        let mut child = ChildGuard::spawn("mcpgw", cmd, Some(log))?;
        let stdout = LineReader::new(child.take_stdout().context("no stdout pipe")?);

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut listeners = Vec::new();
        let mut admin = None;
        let mut tls_listeners = Vec::new();
        let mut cluster = None;
        let mut seen = Vec::new();
        let mut stdout_lines = Vec::new();
        let workers = loop {
            let line = match stdout.next_line(deadline) {
                Ok(Some(line)) => {
                    let text = announcement_text(&line);
                    stdout_lines.push(line);
                    text
                }
                Ok(None) => bail!(
                    "mcpgw exited before it was ready (stdout: {seen:?}); config:\n{}\nstderr:\n{}",
                    config.to_toml(),
                    child.log_tail()
                ),
                Err(e) => bail!(
                    "mcpgw not ready within {STARTUP_TIMEOUT:?}: {e} (stdout: {seen:?}); stderr:\n{}",
                    child.log_tail()
                ),
            };
            if let Some(addr) = line.strip_prefix(LISTENING_PREFIX) {
                listeners.push(
                    addr.trim()
                        .parse()
                        .with_context(|| format!("address in {line:?}"))?,
                );
            } else if let Some(addr) = line.strip_prefix(TLS_PREFIX) {
                tls_listeners.push(
                    addr.trim()
                        .parse()
                        .with_context(|| format!("address in {line:?}"))?,
                );
            } else if let Some(addr) = line.strip_prefix(CLUSTER_PREFIX) {
                cluster = Some(
                    addr.trim()
                        .parse()
                        .with_context(|| format!("address in {line:?}"))?,
                );
            } else if let Some(addr) = line.strip_prefix(ADMIN_PREFIX) {
                admin = Some(
                    addr.trim()
                        .parse()
                        .with_context(|| format!("address in {line:?}"))?,
                );
            } else if let Some(n) = line.strip_prefix(READY_PREFIX) {
                break n
                    .trim()
                    .parse::<usize>()
                    .with_context(|| format!("worker count in {line:?}"))?;
            }
            seen.push(line);
        };
        let addr = *listeners.first().ok_or_else(|| {
            anyhow!("mcpgw was ready without a `{LISTENING_PREFIX}` line: {seen:?}")
        })?;
        Ok(Self {
            child,
            addr,
            listeners,
            workers,
            admin,
            tls_listeners,
            cluster,
            stdout_lines,
            _stdout: stdout,
            _dir: dir,
        })
    }

    /// A client for the default `/mcp` endpoint.
    pub fn client(&self) -> McpClient {
        McpClient::new(self.addr, "/mcp")
    }

    /// A client for an endpoint path.
    pub fn client_at(&self, path: &str) -> McpClient {
        McpClient::new(self.addr, path)
    }

    /// The supervisor's pid.
    /// The config file the gateway reads (rewrite it, then SIGHUP, to reload).
    pub fn config_path(&self) -> std::path::PathBuf {
        self._dir.path().join("mcpgw.toml")
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// What the gateway wrote to stderr so far (its logs).
    pub fn log(&self) -> String {
        self.child.log_tail()
    }

    /// SIGKILLs the whole process group (supervisor and workers) at once, as
    /// a host that loses power, and reaps the supervisor.
    pub fn kill(&mut self) {
        self.child.kill();
    }

    /// Sends a signal to the supervisor only.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        self.child.signal(signal)
    }

    pub async fn wait_exit(&mut self, within: Duration) -> Result<ExitStatus> {
        self.child.wait_exit(within).await
    }

    /// Stops the gateway as an operator does (SIGTERM, drain) and waits for its exit.
    pub async fn stop(&mut self) {
        self.signal(Signal::SIGTERM).expect("SIGTERM");
        self.wait_exit(Duration::from_secs(30))
            .await
            .expect("the gateway stops");
    }
}
