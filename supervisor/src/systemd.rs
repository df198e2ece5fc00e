//! systemd integration, without libsystemd: readiness notification
//! (`sd_notify`) and socket activation (`LISTEN_FDS`).
//!
//! Both are no-ops when systemd did not start us, so the same binary runs
//! unchanged by hand, in a container or under another supervisor.
//! Worker processes are started without these variables ([`VARIABLES`]), so
//! neither they nor anything they start mistake them for their own.

use std::os::fd::{OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use tracing::{debug, warn};

/// The environment variables systemd passes that only the supervisor uses.
pub(crate) const VARIABLES: [&str; 6] = [
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
];

/// A connection to `$NOTIFY_SOCKET`, if systemd gave us one.
pub(crate) struct Notifier {
    socket: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    pub(crate) fn from_env() -> Self {
        let watchdog = watchdog_interval();
        let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let addr = {
                let bytes = path.as_encoded_bytes();
                match bytes.first() {
                    Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]),
                    Some(b'/') => SocketAddr::from_pathname(std::path::Path::new(&path)),
                    _ => return None,
                }
            };
            let addr = match addr {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "NOTIFY_SOCKET is not a usable address; not notifying systemd");
                    return None;
                }
            };
            match UnixDatagram::unbound() {
                Ok(s) => Some((s, addr)),
                Err(e) => {
                    warn!(error = %e, "cannot create the notification socket");
                    None
                }
            }
        });
        Self { socket, watchdog }
    }

    /// Send one notification (`READY=1`, `STATUS=...`, ...). Errors are
    /// logged, never fatal: systemd may have gone away.
    pub(crate) fn notify(&self, state: &str) {
        if let Some((sock, addr)) = &self.socket
            && let Err(e) = sock.send_to_addr(state.as_bytes(), addr)
        {
            debug!(error = %e, state, "sd_notify failed");
        }
    }

    /// How often to send `WATCHDOG=1`: half the interval systemd expects.
    pub(crate) fn watchdog_period(&self) -> Option<Duration> {
        self.socket.as_ref().and(self.watchdog).map(|d| d / 2)
    }
}

fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Some(pid) = std::env::var("WATCHDOG_PID").ok()
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// `RELOADING=1` must carry `CLOCK_MONOTONIC` in microseconds.
pub(crate) fn monotonic_usec() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000)
        .unwrap_or(0)
}

/// Sockets passed by systemd socket activation, with their names
/// (`FileDescriptorName=`; systemd's default name is "unknown").
pub(crate) fn take_activated() -> Vec<(String, OwnedFd)> {
    const FIRST: RawFd = 3;
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    let count: RawFd = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|n| n.split(':').map(str::to_owned).collect())
        .unwrap_or_default();
    if !ours || count <= 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for i in 0..count.min(64) {
        match mcpgw_protocol::fdpass::take_inherited(FIRST + i) {
            Ok(fd) => out.push((
                names
                    .get(i as usize)
                    .cloned()
                    .unwrap_or_else(|| "unknown".to_owned()),
                fd,
            )),
            Err(e) => warn!(fd = FIRST + i, error = %e, "socket activation fd is not open"),
        }
    }
    out
}
