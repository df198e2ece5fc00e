//! The worker pool: one slot per worker process, each slot's current worker,
//! and how a worker process is started.
//!
//! A slot is either serving (it has a [`Worker`] that said `Ready`) or not
//! (starting or restarting). Dispatch tasks read slots directly and wait on a
//! slot's `watch` while it restarts; the supervisor's main loop is the only
//! writer. Workers are `mcpgw worker` exec'd from `/proc/self/exe`, so a
//! restarted worker always runs the supervisor's own build, with the control
//! socket at fd 3 and the connection socket at fd 4, under the name
//! `mcpgw: worker N` and with the supervisor's `--log-format`.

use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt as _;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicUsize, Ordering};

use mcpgw_protocol::channel::{self, Receiver, Sender};
use mcpgw_protocol::control::{FromWorker, ToWorker, WorkerId};
use mcpgw_protocol::fdpass::{self, ConnSender};
use tokio::process::{Child, Command};
use tokio::sync::{Mutex, watch};

/// fd numbers a worker finds its sockets at (defined once, in `protocol`).
pub use mcpgw_protocol::control::{WORKER_CONN_FD, WORKER_CONTROL_FD};

#[derive(Debug, thiserror::Error)]
pub(crate) enum SpawnError {
    #[error("creating the control socket pair: {0}")]
    ControlPair(std::io::Error),
    #[error(transparent)]
    ConnPair(#[from] fdpass::FdPassError),
    #[error("preparing fds for the worker: {0}")]
    Fds(std::io::Error),
    #[error("starting the worker process: {0}")]
    Exec(std::io::Error),
}

/// A worker that is serving.
pub(crate) struct Worker {
    pub(crate) id: WorkerId,
    pub(crate) pid: u32,
    pub(crate) conns: ConnSender,
    pub(crate) control: Mutex<Sender<ToWorker>>,
    pub(crate) started: std::time::Instant,
    /// When the worker last said it was alive (heartbeat or any message).
    heartbeat: std::sync::Mutex<std::time::Instant>,
    /// Connections open in the worker, as it last reported.
    reported: AtomicU32,
    /// Connections handed over since that report.
    since_report: AtomicU32,
}

impl Worker {
    /// Estimated open connections: the last report plus what was sent since.
    pub(crate) fn load(&self) -> u32 {
        self.reported
            .load(Ordering::Relaxed)
            .saturating_add(self.since_report.load(Ordering::Relaxed))
    }

    pub(crate) fn note_dispatched(&self) {
        self.since_report.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn note_alive(&self) {
        if let Ok(mut h) = self.heartbeat.lock() {
            *h = std::time::Instant::now();
        }
    }

    pub(crate) fn silent_for(&self) -> std::time::Duration {
        self.heartbeat
            .lock()
            .map_or(std::time::Duration::ZERO, |h| h.elapsed())
    }

    pub(crate) fn note_report(&self, connections: u32) {
        self.reported.store(connections, Ordering::Relaxed);
        self.since_report.store(0, Ordering::Relaxed);
    }

    /// A serving worker with no process behind it: its connection socket is
    /// `conns`, its control socket goes nowhere.
    #[cfg(test)]
    pub(crate) fn detached(id: WorkerId, conns: ConnSender) -> std::io::Result<Arc<Self>> {
        let (ctrl, _) = tokio::net::UnixStream::pair()?;
        let (control, _) = channel::split::<ToWorker, FromWorker>(ctrl);
        Ok(Arc::new(Self {
            id,
            pid: 0,
            conns,
            control: Mutex::new(control),
            started: std::time::Instant::now(),
            heartbeat: std::sync::Mutex::new(std::time::Instant::now()),
            reported: AtomicU32::new(0),
            since_report: AtomicU32::new(0),
        }))
    }
}

/// One slot of the pool.
pub(crate) struct Slot {
    current: watch::Sender<Option<Arc<Worker>>>,
}

impl Slot {
    pub(crate) fn serving(&self) -> Option<Arc<Worker>> {
        self.current.borrow().clone()
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Option<Arc<Worker>>> {
        self.current.subscribe()
    }

    pub(crate) fn set(&self, worker: Option<Arc<Worker>>) {
        self.current.send_replace(worker);
    }
}

/// Most slots a pool can have (`workers` is at most this).
pub(crate) const MAX_SLOTS: u16 = 256;

/// All slots. Allocated for [`MAX_SLOTS`] so that a reload can change the
/// number in use without reallocating what dispatch tasks read.
pub(crate) struct Pool {
    slots: Box<[Slot]>,
    /// Slots in use: `0..active`.
    active: AtomicU16,
    /// Rotates the starting point of least-loaded picks so ties spread.
    rotor: AtomicUsize,
}

impl Pool {
    pub(crate) fn new(slots: u16) -> Self {
        Self {
            slots: (0..MAX_SLOTS)
                .map(|_| Slot {
                    current: watch::Sender::new(None),
                })
                .collect(),
            active: AtomicU16::new(slots.clamp(1, MAX_SLOTS)),
            rotor: AtomicUsize::new(0),
        }
    }

    pub(crate) fn len(&self) -> u16 {
        self.active.load(Ordering::Acquire)
    }

    /// The slots in use.
    pub(crate) fn slots(&self) -> &[Slot] {
        &self.slots[..usize::from(self.len())]
    }

    /// Slot `index`, in use or not (a dispatch task may hold a slot number
    /// from just before a reload shrank the pool; that slot serves nobody).
    pub(crate) fn slot(&self, index: u16) -> &Slot {
        &self.slots[usize::from(index.min(MAX_SLOTS - 1))]
    }

    /// Change the number of slots in use (the caller empties removed ones).
    pub(crate) fn set_len(&self, slots: u16) {
        self.active
            .store(slots.clamp(1, MAX_SLOTS), Ordering::Release);
    }

    /// The serving worker with the fewest open connections, if any serves.
    pub(crate) fn least_loaded(&self) -> Option<Arc<Worker>> {
        let slots = self.slots();
        let n = slots.len();
        let start = self.rotor.fetch_add(1, Ordering::Relaxed) % n.max(1);
        let mut best: Option<Arc<Worker>> = None;
        for i in 0..n {
            let Some(w) = slots[(start + i) % n].serving() else {
                continue;
            };
            if best.as_ref().is_none_or(|b| w.load() < b.load()) {
                best = Some(w);
            }
        }
        best
    }
}

/// fork+exec `mcpgw worker` for `id`, with its two sockets at fixed fds.
/// The returned [`Worker`] is not serving until it says `Ready`.
pub(crate) fn spawn(
    id: WorkerId,
) -> Result<(Arc<Worker>, Child, Receiver<FromWorker>), SpawnError> {
    let (ctrl_parent, ctrl_child) =
        std::os::unix::net::UnixStream::pair().map_err(SpawnError::ControlPair)?;
    let (conn_parent, conn_child) = fdpass::seqpacket_pair()?;
    let ctrl_child =
        fdpass::raise_above_stdio(&OwnedFd::from(ctrl_child)).map_err(SpawnError::Fds)?;
    let conn_child = fdpass::raise_above_stdio(&conn_child).map_err(SpawnError::Fds)?;

    let mut cmd = std::process::Command::new("/proc/self/exe");
    // argv[0] is what `ps` and `/proc/PID/cmdline` show; the worker names
    // its threads (`comm`) itself.
    cmd.arg0(format!("mcpgw: worker {}", id.slot))
        .arg("worker")
        .arg("--log-format")
        .arg(crate::announce::format().flag())
        .arg("--slot")
        .arg(id.slot.to_string())
        .arg("--generation")
        .arg(id.generation.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for var in crate::systemd::VARIABLES {
        cmd.env_remove(var);
    }
    fdpass::block_stop_signals(&mut cmd);
    fdpass::install_on_exec(
        &mut cmd,
        vec![
            (ctrl_child, WORKER_CONTROL_FD),
            (conn_child, WORKER_CONN_FD),
        ],
    );
    let child = Command::from(cmd).spawn().map_err(SpawnError::Exec)?;
    // The command (and with it the child's socket ends) is gone now, so the
    // parent holds only its own ends: EOF on them means the worker is gone.

    ctrl_parent.set_nonblocking(true).map_err(SpawnError::Fds)?;
    let ctrl = tokio::net::UnixStream::from_std(ctrl_parent).map_err(SpawnError::Fds)?;
    let (control_tx, control_rx) = channel::split(ctrl);
    let conns = ConnSender::new(conn_parent).map_err(SpawnError::Fds)?;
    let worker = Arc::new(Worker {
        id,
        pid: child.id().unwrap_or(0),
        conns,
        control: Mutex::new(control_tx),
        started: std::time::Instant::now(),
        heartbeat: std::sync::Mutex::new(std::time::Instant::now()),
        reported: AtomicU32::new(0),
        since_report: AtomicU32::new(0),
    });
    Ok((worker, child, control_rx))
}
