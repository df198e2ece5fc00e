//! Child processes and scratch directories owned by a test, and their cleanup.
//!
//! Every process a test starts is the leader of its own process group, and dropping its
//! [`ChildGuard`] SIGKILLs the whole group, so that a gateway's workers die with it even
//! when the test panics. Scratch directories live under the system temp dir with a unique
//! name and are removed on drop.

use std::io::{BufRead as _, BufReader, Read};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// At most this much of a log is printed when a test fails.
const LOG_TAIL_BYTES: usize = 64 * 1024;

/// A private directory under [`std::env::temp_dir`], removed on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates a new, empty directory readable only by this user.
    pub fn new(prefix: &str) -> Result<Self> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let name = format!(
            "{prefix}-{}-{}-{nanos}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        // create_dir (not create_dir_all) fails if the name is taken: no accidental sharing.
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A running child process that leads its own process group.
///
/// Dropping it SIGKILLs the group and reaps the child. If the thread is panicking, the
/// child's log file (if any) is printed first, because that is usually the explanation.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Child,
    log: Option<PathBuf>,
    exited: Option<ExitStatus>,
}

impl ChildGuard {
    /// Spawns `cmd` as the leader of a new process group. `log` is the file its stderr was
    /// redirected to, printed if the test fails.
    pub fn spawn(name: &str, mut cmd: Command, log: Option<PathBuf>) -> Result<Self> {
        cmd.process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {name}: {cmd:?}"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log,
            exited: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// Sends `signal` to the leader only (not its group), as an operator would.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        kill(pid_of(self.pid())?, signal).with_context(|| format!("{signal} to {}", self.name))
    }

    /// The exit status, if the leader has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait()?;
        }
        Ok(self.exited)
    }

    /// Waits for the leader to exit, failing after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} (pid {}) did not exit within {within:?}",
                    self.name,
                    self.pid()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILLs the whole group and reaps the leader.
    pub fn kill(&mut self) {
        if let Ok(pgid) = pid_of(self.child.id()) {
            // ESRCH only means the group is already gone.
            let _ = killpg(pgid, Signal::SIGKILL);
        }
        if self.exited.is_none() {
            self.exited = self.child.wait().ok();
        }
    }

    /// The last part of the log file, for failure reports.
    pub fn log_tail(&self) -> String {
        self.log.as_deref().map(read_tail).unwrap_or_default()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if std::thread::panicking() && self.log.is_some() {
            eprintln!(
                "----- {} (pid {}) stderr -----\n{}\n----- end of {} stderr -----",
                self.name,
                self.pid(),
                self.log_tail(),
                self.name
            );
        }
        self.kill();
    }
}

fn pid_of(pid: u32) -> Result<Pid> {
    Ok(Pid::from_raw(
        i32::try_from(pid).context("pid out of range")?,
    ))
}

/// The last [`LOG_TAIL_BYTES`] of a file, lossily decoded.
pub fn read_tail(path: &Path) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_end(&mut bytes);
    }
    let start = bytes.len().saturating_sub(LOG_TAIL_BYTES);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// Lines of a child's stdout, read on a thread so the child never blocks on a full pipe.
#[derive(Debug)]
pub struct LineReader {
    rx: mpsc::Receiver<String>,
}

impl LineReader {
    pub fn new(stdout: impl Read + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Nobody listens any more; keep draining so the child is not blocked.
                    continue;
                }
            }
        });
        Self { rx }
    }

    /// The next line; `Ok(None)` at end of stream; an error if none arrives by `deadline`.
    pub fn next_line(&self, deadline: Instant) -> Result<Option<String>> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.rx.recv_timeout(left) {
            Ok(line) => Ok(Some(line)),
            Err(mpsc::RecvTimeoutError::Disconnected) => Ok(None),
            Err(mpsc::RecvTimeoutError::Timeout) => bail!("no output line before the deadline"),
        }
    }
}

/// Whether a process is still running. A zombie has exited, so it does not count; its
/// reaping is its parent's business.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesised command name, which may contain spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}
