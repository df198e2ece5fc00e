//! A real `redis-server` owned by a test: on a Unix socket in a private
//! directory (no port to collide on), without persistence, so that a restart
//! comes back empty, as a Redis that lost its data does. Killed on drop.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use redis::aio::MultiplexedConnection;

use crate::process::{ChildGuard, TempDir};

const START_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug)]
pub struct RedisServer {
    child: Option<ChildGuard>,
    socket: PathBuf,
    dir: TempDir,
}

impl RedisServer {
    /// Starts `redis-server` (installed by `scripts/test-all.sh`) and waits
    /// until it answers.
    pub fn start() -> Result<Self> {
        let dir = TempDir::new("mcpgw-redis")?;
        let socket = dir.path().join("redis.sock");
        let mut server = Self {
            child: None,
            socket,
            dir,
        };
        server.restart()?;
        Ok(server)
    }

    /// `unix:///…/redis.sock`, for `[store] redis_url`.
    pub fn url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Kills the server (its data is gone: nothing is persisted).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
        let _ = std::fs::remove_file(&self.socket);
    }

    /// Starts the server again, empty, on the same socket.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        let log = self.dir.path().join("redis.log");
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", "0", "--save", "", "--appendonly", "no"])
            .arg("--unixsocket")
            .arg(&self.socket)
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(
            ChildGuard::spawn("redis-server", cmd, Some(log))
                .context("starting redis-server (apt-get install redis-server)")?,
        );
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(mut conn) = std::os::unix::net::UnixStream::connect(&self.socket) {
                use std::io::{Read as _, Write as _};
                let mut reply = [0u8; 7];
                if conn.write_all(b"PING\r\n").is_ok()
                    && conn.read_exact(&mut reply).is_ok()
                    && &reply == b"+PONG\r\n"
                {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!("redis-server did not answer within {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A connection for a test's own checks.
    pub async fn connect(&self) -> Result<MultiplexedConnection> {
        let client = redis::Client::open(self.url())?;
        Ok(client.get_multiplexed_async_connection().await?)
    }

    /// Keys matching `pattern` (`KEYS`; test data is small).
    pub async fn keys(&self, pattern: &str) -> Result<Vec<String>> {
        let mut conn = self.connect().await?;
        Ok(redis::cmd("KEYS")
            .arg(pattern)
            .query_async(&mut conn)
            .await?)
    }
}
