//! A real `redis-server` owned by a test: on a Unix socket in a private
//! directory (no port to collide on), without persistence, so that a restart
//! comes back empty, as a Redis that lost its data does. Killed on drop.
//!
//! [`RedisOptions`] adds what production setups have: a TCP port, a TLS
//! port (`--tls-port`, certificates from [`crate::pki::Pki`]), ACL users, a
//! replica of another server. [`Sentinel`] is `redis-server --sentinel`
//! monitoring one master. The Unix socket stays on in every case (plain,
//! default user), so that readiness and the tests' own checks need neither
//! TLS nor credentials.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use redis::aio::MultiplexedConnection;

use crate::process::{ChildGuard, TempDir};

const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A TLS port's files (PEM): the server's certificate and key, and the CA
/// client certificates must chain to.
#[derive(Debug, Clone)]
pub struct RedisTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    /// `tls-auth-clients yes`: a client must present a certificate.
    pub auth_clients: bool,
}

/// How a test's Redis is started beyond the default (Unix socket only).
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// A plaintext TCP port on 127.0.0.1 (see [`free_port`]).
    pub port: Option<u16>,
    /// A TLS port on 127.0.0.1 and its files.
    pub tls: Option<(u16, RedisTls)>,
    /// Further `redis-server` arguments, e.g. an ACL user:
    /// `["--user", "mcpgw", "on", ">pw", "~*", "&*", "+@all"]`.
    pub args: Vec<String>,
}

#[derive(Debug)]
pub struct RedisServer {
    child: Option<ChildGuard>,
    socket: PathBuf,
    options: RedisOptions,
    dir: TempDir,
}

/// A TCP port on 127.0.0.1 that was free a moment ago (redis-server takes
/// no port 0 for a port it must tell others, such as a master's).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl RedisServer {
    /// Starts `redis-server` (installed by `scripts/test-all.sh`) and waits
    /// until it answers.
    pub fn start() -> Result<Self> {
        Self::start_with(RedisOptions::default())
    }

    /// Starts one with a TCP or TLS port, ACL users or other arguments.
    pub fn start_with(options: RedisOptions) -> Result<Self> {
        let dir = TempDir::new("mcpgw-redis")?;
        let socket = dir.path().join("redis.sock");
        let mut server = Self {
            child: None,
            socket,
            options,
            dir,
        };
        server.restart()?;
        Ok(server)
    }

    /// `unix:///…/redis.sock`, for `[store] redis_url`.
    pub fn url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The plaintext TCP port, if one was asked for.
    pub fn port(&self) -> Option<u16> {
        self.options.port
    }

    /// Kills the server (its data is gone: nothing is persisted).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
        let _ = std::fs::remove_file(&self.socket);
    }

    /// Starts the server again, empty, on the same socket and ports.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        let log = self.dir.path().join("redis.log");
        let mut cmd = Command::new("redis-server");
        cmd.args(["--save", "", "--appendonly", "no"])
            .arg("--port")
            .arg(self.options.port.unwrap_or(0).to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--unixsocket")
            .arg(&self.socket)
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log);
        if let Some((port, tls)) = &self.options.tls {
            cmd.arg("--tls-port")
                .arg(port.to_string())
                .arg("--tls-cert-file")
                .arg(&tls.cert)
                .arg("--tls-key-file")
                .arg(&tls.key)
                .arg("--tls-ca-cert-file")
                .arg(&tls.ca)
                .arg("--tls-auth-clients")
                .arg(if tls.auth_clients { "yes" } else { "no" });
        }
        cmd.args(&self.options.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(
            ChildGuard::spawn("redis-server", cmd, Some(log.clone()))
                .context("starting redis-server (apt-get install redis-server)")?,
        );
        let ready = wait_for_pong("redis-server", || {
            std::os::unix::net::UnixStream::connect(&self.socket).map(Box::new)
        });
        if ready.is_err() && self.options.tls.is_some() {
            let said = std::fs::read_to_string(&log).unwrap_or_default();
            if said.contains("TLS") {
                bail!(
                    "redis-server did not start with --tls-port (a build without TLS? \
                     Debian's redis-server package has it, built with BUILD_TLS=yes): {said}"
                );
            }
        }
        ready
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

    /// `ROLE`'s first word: `master` or `slave`.
    pub async fn role(&self) -> Result<String> {
        let mut conn = self.connect().await?;
        let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut conn).await?;
        match role.first() {
            Some(redis::Value::BulkString(b)) => Ok(String::from_utf8_lossy(b).into_owned()),
            other => bail!("ROLE answered {other:?}"),
        }
    }
}

/// `redis-server --sentinel` monitoring one master (quorum 1, down after
/// one second), on a TCP port of 127.0.0.1. Killed on drop.
#[derive(Debug)]
pub struct Sentinel {
    child: ChildGuard,
    port: u16,
    _dir: TempDir,
}

impl Sentinel {
    /// Starts a sentinel for the master `name` at 127.0.0.1:`master_port`
    /// and waits until it answers.
    pub fn start(name: &str, master_port: u16) -> Result<Self> {
        let dir = TempDir::new("mcpgw-sentinel")?;
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        // The sentinel rewrites its file (known replicas, epochs): it must
        // be its own and writable.
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                 sentinel monitor {name} 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds {name} 1000\n\
                 sentinel failover-timeout {name} 5000\n\
                 sentinel parallel-syncs {name} 1\n",
                dir = dir.path().display()
            ),
        )?;
        let log = dir.path().join("sentinel.log");
        let mut cmd = Command::new("redis-server");
        cmd.arg(&conf)
            .arg("--sentinel")
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = ChildGuard::spawn("redis-sentinel", cmd, Some(log))
            .context("starting redis-server --sentinel")?;
        wait_for_pong("redis-server --sentinel", || {
            TcpStream::connect((Ipv4Addr::LOCALHOST, port)).map(Box::new)
        })?;
        Ok(Self {
            child,
            port,
            _dir: dir,
        })
    }

    /// `127.0.0.1:PORT`, for `[store] sentinels`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The master's port as this sentinel sees it now.
    pub async fn master_port(&self, name: &str) -> Result<u16> {
        let client = redis::Client::open(format!("redis://{}", self.addr()))?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let (_, port): (String, u16) = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(name)
            .query_async(&mut conn)
            .await?;
        Ok(port)
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }
}

/// Polls `connect` with `PING` until `+PONG`, within [`START_TIMEOUT`].
fn wait_for_pong<S, F>(name: &str, connect: F) -> Result<()>
where
    S: std::io::Read + std::io::Write,
    F: Fn() -> std::io::Result<Box<S>>,
{
    use std::io::{Read as _, Write as _};
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(mut conn) = connect() {
            let mut reply = [0u8; 7];
            if conn.write_all(b"PING\r\n").is_ok()
                && conn.read_exact(&mut reply).is_ok()
                && &reply == b"+PONG\r\n"
            {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            bail!("{name} did not answer within {START_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
