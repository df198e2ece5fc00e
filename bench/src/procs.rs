//! The processes a comparison runs: the counter upstream, nginx and mcpgw, each in its
//! own process group with its files in a private temporary directory, and the memory
//! they hold.
//!
//! Every process is a [`Proc`], which SIGKILLs its whole process group when dropped
//! (supervisor and workers, nginx master and workers), on success, on error and when the
//! comparison is interrupted (SIGINT/SIGTERM end the comparison future, which drops
//! them). Only a SIGKILL of the benchmark itself leaves them behind.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, ChildStdout, Command};

/// Bound on a process printing its readiness line.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// A private directory under the system temp dir, removed when dropped.
pub(crate) struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    pub(crate) fn new(prefix: &str) -> Result<Self> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path, keep: false })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the directory (its logs) after the run.
    pub(crate) fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A child process leading its own process group; the group is killed on drop.
pub(crate) struct Proc {
    name: &'static str,
    child: Child,
    pid: u32,
    /// Where its stderr goes.
    pub(crate) log: PathBuf,
}

impl Proc {
    /// Starts `command` in a new process group, stdout piped, stderr to `log`.
    fn spawn(
        name: &'static str,
        mut command: Command,
        log: PathBuf,
    ) -> Result<(Self, ChildStdout)> {
        let stderr =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", command.as_std().get_program()))?;
        let pid = child
            .id()
            .with_context(|| format!("{name} exited at once"))?;
        let stdout = child
            .stdout
            .take()
            .with_context(|| format!("{name}: no stdout pipe"))?;
        Ok((
            Self {
                name,
                child,
                pid,
                log,
            },
            stdout,
        ))
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends `signal` to the process itself (not its group).
    pub(crate) fn signal(&self, signal: Signal) -> Result<()> {
        kill(pid_of(self.pid), signal).with_context(|| format!("signalling {}", self.name))
    }

    /// Whether it has exited (and so cannot serve).
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last lines of its log, for error reports.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = killpg(pid_of(self.pid), Signal::SIGKILL);
        let _ = self.child.start_kill();
        // Reap it so that no zombie outlives the run; SIGKILL makes this quick.
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn pid_of(pid: u32) -> Pid {
    Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX))
}

/// Reads stdout lines until one starts with `prefix`; returns the rest of that line.
async fn wait_for_line(
    name: &str,
    lines: &mut tokio::io::Lines<BufReader<ChildStdout>>,
    prefix: &str,
) -> Result<String> {
    tokio::time::timeout(STARTUP_TIMEOUT, async {
        while let Some(line) = lines.next_line().await? {
            let line = announcement_text(&line);
            if let Some(rest) = line.strip_prefix(prefix) {
                return Ok(rest.trim().to_owned());
            }
        }
        bail!("{name} closed its stdout before printing {prefix:?}")
    })
    .await
    .with_context(|| format!("{name} did not print {prefix:?} within {STARTUP_TIMEOUT:?}"))?
}

/// Drains the rest of a child's stdout so that it never blocks on a full pipe.
fn drain(lines: tokio::io::Lines<BufReader<ChildStdout>>) {
    let mut reader = lines.into_inner();
    tokio::task::spawn_local(async move {
        let _ = tokio::io::copy(&mut reader, &mut tokio::io::sink()).await;
    });
}

/// The counter MCP server (`counter-server` from the tests crate).
pub(crate) async fn start_counter(bin_dir: &Path, dir: &Path) -> Result<(Proc, SocketAddr)> {
    spawn_server(
        bin_dir,
        dir,
        "counter-server",
        "counter",
        &[],
        "counter-server listening http://",
    )
    .await
}

/// A second counter server that also serves https with `cert`/`key`; its https
/// address.
pub(crate) async fn start_tls_counter(
    bin_dir: &Path,
    dir: &Path,
    cert: &Path,
    key: &Path,
) -> Result<(Proc, SocketAddr)> {
    let tls = [
        "--tls-cert".as_ref(),
        cert.as_os_str(),
        "--tls-key".as_ref(),
        key.as_os_str(),
    ];
    spawn_server(
        bin_dir,
        dir,
        "counter-server",
        "counter-tls",
        &tls,
        "counter-server listening https://",
    )
    .await
}

/// The test crate's `modern-server` (a 2026-07-28 upstream on rmcp, tool `add`),
/// without its request log.
pub(crate) async fn start_modern(bin_dir: &Path, dir: &Path) -> Result<(Proc, SocketAddr)> {
    spawn_server(
        bin_dir,
        dir,
        "modern-server",
        "modern",
        &["--no-log".as_ref()],
        "modern-server listening http://",
    )
    .await
}

/// A test server `program` on an ephemeral port, logging to `dir/name.log`; the
/// address it printed after `announced`.
async fn spawn_server(
    bin_dir: &Path,
    dir: &Path,
    program: &'static str,
    name: &str,
    args: &[&std::ffi::OsStr],
    announced: &str,
) -> Result<(Proc, SocketAddr)> {
    let bin = binary(bin_dir, program)?;
    let mut command = Command::new(&bin);
    command.args(["--listen", "127.0.0.1:0"]).args(args);
    let (proc, stdout) = Proc::spawn(program, command, dir.join(format!("{name}.log")))?;
    let mut lines = BufReader::new(stdout).lines();
    let addr = wait_for_line(program, &mut lines, announced)
        .await?
        .parse()
        .with_context(|| format!("{program} printed an unparsable address"))?;
    drain(lines);
    Ok((proc, addr))
}

/// A started mcpgw: its process and the addresses it printed.
pub(crate) struct Gateway {
    pub(crate) proc: Proc,
    pub(crate) addr: SocketAddr,
    pub(crate) admin: SocketAddr,
}

/// A line of mcpgw's stdout in its text form (`--log-format json` prints
/// `{"event":"listening","url":"http://A"}` for `mcpgw listening http://A`).
fn announcement_text(line: &str) -> String {
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
        (Some("ready"), _, Some(n)) => format!("mcpgw ready workers={n}"),
        _ => line.to_owned(),
    }
}

/// mcpgw with `workers` workers in front of `upstream`.
pub(crate) async fn start_mcpgw(
    bin_dir: &Path,
    dir: &Path,
    name: &str,
    workers: u16,
    upstream: SocketAddr,
) -> Result<Gateway> {
    let upstream = format!("url = \"http://{upstream}/mcp\"\n");
    start_mcpgw_with(bin_dir, dir, name, workers, &upstream).await
}

/// mcpgw with `workers` workers in front of the upstream `upstream_keys` (TOML lines
/// of its `[[upstream]]` table beside `id`) describes.
pub(crate) async fn start_mcpgw_with(
    bin_dir: &Path,
    dir: &Path,
    name: &str,
    workers: u16,
    upstream_keys: &str,
) -> Result<Gateway> {
    let text = format!(
        "listen = [\"127.0.0.1:0\"]\n\
         admin_listen = \"127.0.0.1:0\"\n\
         workers = {workers}\n\
         runtime_dir = {{runtime_dir}}\n\
         \n\
         [[upstream]]\n\
         id = \"counter\"\n\
         {upstream_keys}"
    );
    start_mcpgw_config(bin_dir, dir, name, workers, &text).await
}

/// mcpgw with the configuration `text`, in which `{runtime_dir}` stands for a fresh
/// runtime directory of its own (a TOML string).
pub(crate) async fn start_mcpgw_config(
    bin_dir: &Path,
    dir: &Path,
    name: &str,
    workers: u16,
    text: &str,
) -> Result<Gateway> {
    let bin = binary(bin_dir, "mcpgw")?;
    let config = dir.join(format!("{name}.toml"));
    let runtime_dir = dir.join(format!("{name}-run"));
    std::fs::create_dir(&runtime_dir)?;
    std::fs::write(
        &config,
        text.replace(
            "{runtime_dir}",
            &format!("{:?}", runtime_dir.display().to_string()),
        ),
    )?;
    let mut command = Command::new(&bin);
    command.arg("serve").arg("--config").arg(&config);
    let (proc, stdout) = Proc::spawn("mcpgw", command, dir.join(format!("{name}.log")))?;
    let mut lines = BufReader::new(stdout).lines();
    // It prints `mcpgw admin http://…` and `mcpgw listening http://…`, then
    // `mcpgw ready workers=N` once every worker serves.
    let (mut addr, mut admin) = (None, None);
    let ready = tokio::time::timeout(STARTUP_TIMEOUT, async {
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.strip_prefix("mcpgw listening http://") {
                addr.get_or_insert(rest.trim().parse::<SocketAddr>()?);
            } else if let Some(rest) = line.strip_prefix("mcpgw admin http://") {
                admin = Some(rest.trim().parse::<SocketAddr>()?);
            } else if let Some(rest) = line.strip_prefix("mcpgw ready workers=") {
                return anyhow::Ok(rest.trim().to_owned());
            }
        }
        bail!("mcpgw closed its stdout before it was ready")
    })
    .await
    .with_context(|| format!("mcpgw was not ready within {STARTUP_TIMEOUT:?}"))??;
    if ready != workers.to_string() {
        bail!("mcpgw is ready with {ready} workers, {workers} were configured");
    }
    let addr = addr.context("mcpgw printed no `mcpgw listening` line")?;
    let admin = admin.context("mcpgw printed no `mcpgw admin` line")?;
    drain(lines);
    Ok(Gateway { proc, addr, admin })
}

/// redis-server (Debian package redis-server) on a Unix socket in `dir`: no TCP port,
/// nothing persisted. Returns the process and the socket's path.
pub(crate) async fn start_redis(dir: &Path) -> Result<(Proc, PathBuf)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let socket = dir.join("redis.sock");
    let mut command = Command::new("redis-server");
    command
        .args(["--port", "0", "--save", "", "--appendonly", "no"])
        .arg("--unixsocket")
        .arg(&socket)
        .arg("--dir")
        .arg(dir);
    let (proc, stdout) = Proc::spawn("redis-server", command, dir.join("redis.log"))
        .context("starting redis-server (Debian package redis-server)")?;
    drain(BufReader::new(stdout).lines());
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if let Ok(mut conn) = tokio::net::UnixStream::connect(&socket).await {
            let mut reply = [0u8; 7];
            if conn.write_all(b"PING\r\n").await.is_ok()
                && conn.read_exact(&mut reply).await.is_ok()
                && &reply == b"+PONG\r\n"
            {
                return Ok((proc, socket));
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "redis-server did not answer on {} within {STARTUP_TIMEOUT:?}",
                socket.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// nginx as a plain HTTP/1.1 reverse proxy in front of `upstream`: upstream keep-alive,
/// no buffering, `workers` worker processes, in the foreground with every file in `dir`.
pub(crate) async fn start_nginx(
    nginx: &Path,
    dir: &Path,
    name: &str,
    workers: u16,
    upstream: SocketAddr,
) -> Result<(Proc, SocketAddr)> {
    let prefix = dir.join(name);
    std::fs::create_dir(&prefix)?;
    let port = free_port()?;
    let addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], port));
    let conf = prefix.join("nginx.conf");
    let p = prefix.display();
    // Running as root, nginx would switch its workers to `nobody`, who cannot enter the
    // private temp dir; they stay root instead. Not root: the directive is ignored.
    let user = if is_root() { "user root;\n" } else { "" };
    let mut f = std::fs::File::create(&conf)?;
    write!(
        f,
        "{user}daemon off;
master_process on;
worker_processes {workers};
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {p}/client_body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    keepalive_requests 1000000;
    upstream mcp_upstream {{
        server {upstream};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen {addr};
        location / {{
            proxy_pass http://mcp_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_buffering off;
        }}
    }}
}}
"
    )?;
    drop(f);
    let mut command = Command::new(nginx);
    command
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(prefix.join("error.log"));
    let (mut proc, stdout) = Proc::spawn("nginx", command, dir.join(format!("{name}.log")))?;
    drop(stdout);
    // nginx cannot report its port: wait until it accepts on the one it was given.
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if let Some(status) = proc.exited() {
            bail!(
                "nginx exited ({status}) at startup:\n{}\n{}",
                proc.log_tail(20),
                std::fs::read_to_string(prefix.join("error.log")).unwrap_or_default()
            );
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        if Instant::now() > deadline {
            bail!("nginx did not accept on {addr} within {STARTUP_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((proc, addr))
}

/// A port that was free a moment ago (bound to port 0, then released).
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

fn binary(bin_dir: &Path, name: &str) -> Result<PathBuf> {
    let path = bin_dir.join(name);
    if !path.is_file() {
        bail!(
            "{} does not exist; build first: cargo build --release -p mcpgw -p mcpgw-tests -p mcpgw-bench",
            path.display()
        );
    }
    Ok(path)
}

/// A process and all its descendants (by parent pid, from `/proc`).
pub(crate) fn tree(root: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = parent_of(pid) {
                parents.push((pid, ppid));
            }
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|&&(_, pp)| pp == parent)
                .map(|&(p, _)| p),
        );
        i += 1;
    }
    tree
}

/// CPU time (user + system, all threads) of a process tree, in clock ticks.
pub(crate) fn tree_cpu_ticks(root: u32) -> u64 {
    tree(root).into_iter().map(cpu_ticks).sum()
}

/// CPU time (user + system, all threads) of one process, in clock ticks; 0 if gone.
pub(crate) fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let Some(close) = stat.rfind(')') else {
        return 0;
    };
    // Fields after the command: state(3) ... utime(14) stime(15).
    let mut fields = stat[close + 1..].split_whitespace().skip(11);
    let utime: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    let stime: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    utime + stime
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 if that fails).
pub(crate) fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// Resident memory of a process and all its descendants, in KiB, from
/// `/proc/PID/status` `VmRSS`, with the pids counted.
pub(crate) fn tree_rss_kib(root: u32) -> Result<(u64, Vec<(u32, u64)>)> {
    let tree = tree(root);
    let mut per = Vec::with_capacity(tree.len());
    let mut total = 0;
    for pid in tree {
        let rss = vm_rss_kib(pid).with_context(|| format!("reading VmRSS of {pid}"))?;
        total += rss;
        per.push((pid, rss));
    }
    Ok((total, per))
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: fields after the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

fn vm_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("no VmRSS line")?;
    let kib = line
        .split_whitespace()
        .next()
        .context("empty VmRSS")?
        .parse()?;
    Ok(kib)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_of_self() {
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(tree_cpu_ticks(std::process::id()) > 0);
        assert!(clock_ticks_per_second() >= 1);
    }

    #[test]
    fn rss_of_self() -> Result<()> {
        let (total, per) = tree_rss_kib(std::process::id())?;
        assert!(total > 0);
        assert_eq!(per[0].0, std::process::id());
        Ok(())
    }
}
