//! Passing accepted connections from the supervisor to a worker, and the fd
//! plumbing around exec. The only module in mcpgw allowed `unsafe`.
//!
//! Connections travel on a `SOCK_SEQPACKET` socket pair: one message is one
//! [`ConnMeta`] header plus exactly one fd in `SCM_RIGHTS`, so message
//! boundaries need no framing and a message can never carry half a header.
//! Received fds arrive with `MSG_CMSG_CLOEXEC` and are owned (`OwnedFd`) at
//! once; truncated control data or an unexpected fd count is an error and
//! every fd that did arrive is closed.
//!
//! Connections are accepted here too ([`accept_nonblocking`]): non-blocking
//! and close-on-exec from the start. `O_NONBLOCK` is a flag of the open file
//! description, which the passed fd shares with the supervisor's copy, so a
//! worker receives it already non-blocking and sets nothing.
//! [`set_defer_accept`] is here because neither nix nor socket2 wraps it.
//!
//! Exec plumbing: [`raise_above_stdio`] moves a child's socket ends out of the
//! way of their target numbers in the parent; [`install_in_child`] (for
//! `pre_exec`) puts them at fixed numbers without touching any other fd;
//! [`take_inherited`] claims such an fd in the child exactly once.

#![allow(unsafe_code)]

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, accept4,
    recvmsg, sendmsg, socketpair,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::control::ConnMeta;

#[derive(Debug, thiserror::Error)]
pub enum FdPassError {
    #[error("creating the connection socket pair: {0}")]
    SocketPair(nix::Error),
    #[error("sending a connection to the worker: {0}")]
    Send(io::Error),
    #[error("receiving a connection from the supervisor: {0}")]
    Recv(io::Error),
    #[error("control data was truncated; the fds that arrived were closed")]
    Truncated,
    #[error("expected one fd with the message, got {0}")]
    FdCount(usize),
    #[error("malformed connection header ({0} bytes)")]
    Header(usize),
}

/// A blocking `SOCK_SEQPACKET` pair, both ends close-on-exec.
pub fn seqpacket_pair() -> Result<(OwnedFd, OwnedFd), FdPassError> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(FdPassError::SocketPair)
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    let flags = fcntl(fd.as_fd(), FcntlArg::F_GETFL).map_err(io::Error::from)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
    Ok(())
}

fn register(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: `OwnedFd` keeps the same fd open for as long as the `AsyncFd`
    // lives, which is what registration requires.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(|e| e.into_parts().1)
}

/// The supervisor's end: sends connections to one worker.
pub struct ConnSender {
    fd: AsyncFd<OwnedFd>,
}

impl ConnSender {
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        set_nonblocking(&fd)?;
        Ok(Self {
            fd: register(fd, Interest::WRITABLE)?,
        })
    }

    /// Send `conn` with its header. The caller still owns `conn` and closes
    /// its copy afterwards (the kernel holds a reference in flight).
    pub async fn send(&self, meta: ConnMeta, conn: impl AsFd) -> Result<(), FdPassError> {
        let header = meta.encode();
        let raw = [conn.as_fd().as_raw_fd()];
        loop {
            let mut guard = self.fd.writable().await.map_err(FdPassError::Send)?;
            let res = guard.try_io(|inner| {
                sendmsg::<()>(
                    inner.get_ref().as_raw_fd(),
                    &[IoSlice::new(&header)],
                    &[ControlMessage::ScmRights(&raw)],
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(io::Error::from)
            });
            match res {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => return Err(FdPassError::Send(e)),
                Err(_would_block) => continue,
            }
        }
    }

    /// Send `conn` now or not at all: `Err(Send(WouldBlock))` when the
    /// worker's queue is full. For callers that have a slower path to fall
    /// back on; the caller still owns `conn`, as with [`Self::send`].
    pub fn try_send(&self, meta: ConnMeta, conn: impl AsFd) -> Result<(), FdPassError> {
        let header = meta.encode();
        let raw = [conn.as_fd().as_raw_fd()];
        // The socket is non-blocking, so this never waits. A WouldBlock here
        // leaves the `AsyncFd` readiness set; the next `send` then sees
        // WouldBlock itself and clears it.
        sendmsg::<()>(
            self.fd.get_ref().as_raw_fd(),
            &[IoSlice::new(&header)],
            &[ControlMessage::ScmRights(&raw)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map(drop)
        .map_err(|e| FdPassError::Send(e.into()))
    }
}

/// Accept one connection from `listener`, non-blocking and close-on-exec
/// (one `accept4`, no `fcntl`). `WouldBlock` when none is queued.
pub fn accept_nonblocking(listener: &impl AsFd) -> io::Result<OwnedFd> {
    let raw = accept4(
        listener.as_fd().as_raw_fd(),
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    // SAFETY: accept4 returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Register a (non-blocking) listener with tokio for [`accept_nonblocking`]
/// in a readiness loop.
pub fn watch_listener(
    listener: std::net::TcpListener,
) -> io::Result<AsyncFd<std::net::TcpListener>> {
    // SAFETY: the listener owns its fd and lives inside the `AsyncFd`, so
    // the fd stays open for as long as it is registered.
    unsafe { AsyncFd::register_with_interest(listener, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

/// Whether `fd`'s open file description is non-blocking.
pub fn is_nonblocking(fd: &impl AsFd) -> io::Result<bool> {
    let flags = fcntl(fd.as_fd(), FcntlArg::F_GETFL).map_err(io::Error::from)?;
    Ok(OFlag::from_bits_truncate(flags).contains(OFlag::O_NONBLOCK))
}

/// Linux `TCP_DEFER_ACCEPT` on a listening socket: `accept` returns a
/// connection only once its first bytes arrived, or after about `secs`
/// seconds without any (then it is accepted as usual).
pub fn set_defer_accept(listener: &impl AsFd, secs: u32) -> io::Result<()> {
    let value = std::ffi::c_int::try_from(secs).unwrap_or(std::ffi::c_int::MAX);
    // SAFETY: setsockopt reads exactly `size_of::<c_int>()` bytes from a
    // live local; the fd is borrowed for the call.
    let rc = unsafe {
        nix::libc::setsockopt(
            listener.as_fd().as_raw_fd(),
            nix::libc::IPPROTO_TCP,
            nix::libc::TCP_DEFER_ACCEPT,
            (&raw const value).cast(),
            std::mem::size_of::<std::ffi::c_int>() as nix::libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The worker's end: receives connections from the supervisor.
pub struct ConnReceiver {
    fd: AsyncFd<OwnedFd>,
}

impl ConnReceiver {
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        set_nonblocking(&fd)?;
        Ok(Self {
            fd: register(fd, Interest::READABLE)?,
        })
    }

    /// The next connection, or `None` once the supervisor closed its end.
    pub async fn recv(&self) -> Result<Option<(ConnMeta, OwnedFd)>, FdPassError> {
        loop {
            let mut guard = self.fd.readable().await.map_err(FdPassError::Recv)?;
            match guard.try_io(|inner| recv_one(inner.get_ref().as_raw_fd())) {
                Ok(Ok(res)) => return res,
                Ok(Err(e)) => return Err(FdPassError::Recv(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

/// Room for the control data of one message: up to 4 fds, so that a
/// message carrying too many is still received whole (and its fds closed)
/// rather than truncated.
const CMSG_SPACE: usize = nix::sys::socket::cmsg_space::<[RawFd; 4]>();

/// Control data buffer on the stack (no allocation per connection), aligned
/// for `cmsghdr` as the kernel's parsing of it requires.
#[repr(C, align(8))]
struct CmsgBuf([u8; CMSG_SPACE]);

/// One `recvmsg`; `Err(io WouldBlock)` is surfaced through the outer io error
/// so `try_io` can clear readiness.
fn recv_one(sock: RawFd) -> io::Result<Result<Option<(ConnMeta, OwnedFd)>, FdPassError>> {
    let mut header = [0u8; ConnMeta::WIRE_LEN + 1];
    let mut cmsg = CmsgBuf([0u8; CMSG_SPACE]);
    let mut iov = [IoSliceMut::new(&mut header)];
    let msg = match recvmsg::<()>(
        sock,
        &mut iov,
        Some(&mut cmsg.0[..]),
        MsgFlags::MSG_CMSG_CLOEXEC,
    ) {
        Ok(msg) => msg,
        Err(nix::Error::EAGAIN) => return Err(io::ErrorKind::WouldBlock.into()),
        Err(nix::Error::EINTR) => return Err(io::ErrorKind::WouldBlock.into()),
        Err(e) => return Ok(Err(FdPassError::Recv(e.into()))),
    };
    // The first fd, and how many came: any others are owned and closed
    // at once (dropped), so nothing leaks whatever the count.
    let mut fd: Option<OwnedFd> = None;
    let mut count = 0usize;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmRights(raw) = c {
                for one in raw {
                    // SAFETY: the kernel just installed this fd in our table
                    // for us (SCM_RIGHTS); nothing else owns it.
                    let owned = unsafe { OwnedFd::from_raw_fd(one) };
                    count += 1;
                    fd.get_or_insert(owned);
                }
            }
        }
    }
    let bytes = msg.bytes;
    let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
    if bytes == 0 && count == 0 {
        return Ok(Ok(None));
    }
    if truncated {
        return Ok(Err(FdPassError::Truncated));
    }
    if count != 1 {
        return Ok(Err(FdPassError::FdCount(count)));
    }
    let Some(meta) = ConnMeta::decode(&header[..bytes.min(header.len())]) else {
        return Ok(Err(FdPassError::Header(bytes)));
    };
    Ok(Ok(fd.map(|fd| (meta, fd))))
}

/// Duplicate `fd` to a number ≥ 10 (close-on-exec), so that installing a
/// child's fds at 3, 4, … in `pre_exec` can never overwrite another of them.
pub fn raise_above_stdio(fd: &OwnedFd) -> io::Result<OwnedFd> {
    let raw = fcntl(fd.as_fd(), FcntlArg::F_DUPFD_CLOEXEC(10)).map_err(io::Error::from)?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Arrange for each `(fd, target)` to appear at number `target` (3..10) in
/// the child `cmd` starts, without close-on-exec; no other fd is inherited.
/// The fds are raised with [`raise_above_stdio`] first so that no `dup2`
/// can overwrite another source. They stay open as long as `cmd` lives.
pub fn install_on_exec(cmd: &mut std::process::Command, fds: Vec<(OwnedFd, RawFd)>) {
    use std::os::unix::process::CommandExt;
    let pairs: Vec<(RawFd, RawFd)> = fds.iter().map(|(fd, t)| (fd.as_raw_fd(), *t)).collect();
    // SAFETY: the closure runs between fork and exec and only calls dup2
    // (async-signal-safe); it allocates nothing (`pairs` is built before).
    unsafe {
        cmd.pre_exec(move || {
            let _keep_open = &fds;
            install_in_child(&pairs)
        });
    }
}

/// Make the child `cmd` starts receive SIGKILL when the thread that starts
/// it dies (Linux `PR_SET_PDEATHSIG`), so that a worker killed outright
/// leaves no stdio upstream behind. Start it from the thread that lives as
/// long as the process (a worker's runtime thread).
pub fn kill_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and only calls prctl
    // (async-signal-safe); it allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc_prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Make the child `cmd` starts block SIGINT and SIGTERM (the mask survives
/// exec): a worker takes stop orders from its supervisor only, so Ctrl-C in
/// a terminal or `kill -- -PGID`, which reach the whole process group, make
/// the supervisor drain instead of killing workers under it. Blocked rather
/// than ignored because the Rust runtime clears the mask (not ignored
/// dispositions) in the processes the worker starts in turn (stdio
/// upstreams), which thus get the default handling back.
pub fn block_stop_signals(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(nix::sys::signal::Signal::SIGINT);
    set.add(nix::sys::signal::Signal::SIGTERM);
    // SAFETY: the closure runs between fork and exec (after std resets the
    // child's signal mask) and only calls pthread_sigmask, which is
    // async-signal-safe; `set` is built before the fork, nothing allocates.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::signal::pthread_sigmask(
                nix::sys::signal::SigmaskHow::SIG_BLOCK,
                Some(&set),
                None,
            )
            .map_err(io::Error::from)
        });
    }
}

const PR_SET_PDEATHSIG: i32 = 1;
const SIGKILL: std::ffi::c_ulong = 9;

/// For `pre_exec`: place each `(source, target)` fd at `target` without
/// close-on-exec. Sources must be ≥ 10 ([`raise_above_stdio`]) and targets
/// below 10. Only async-signal-safe calls (`dup2`).
fn install_in_child(pairs: &[(RawFd, RawFd)]) -> io::Result<()> {
    for &(source, target) in pairs {
        if source < 10 || !(3..10).contains(&target) {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        // SAFETY: dup2 on fds the parent owns for this child; async-signal-safe.
        if unsafe { libc_dup2(source, target) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

unsafe extern "C" {
    #[link_name = "dup2"]
    fn libc_dup2(oldfd: RawFd, newfd: RawFd) -> RawFd;
    #[link_name = "prctl"]
    fn libc_prctl(option: i32, ...) -> i32;
}

/// Claim an fd inherited across exec at a fixed number. Marks it close-on-exec
/// so it does not leak further (e.g. into stdio upstream children).
/// Call at most once per number, early in `main`.
pub fn take_inherited(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl on a number we do not own yet only queries/sets flags;
    // EBADF tells us it is not open.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    fcntl(borrowed, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(io::Error::from)?;
    // SAFETY: the fd is open (fcntl succeeded) and by contract nothing else
    // in this process owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    #[tokio::test]
    async fn a_connection_crosses_with_its_header() {
        let (a, b) = seqpacket_pair().expect("pair");
        let tx = ConnSender::new(a).expect("tx");
        let rx = ConnReceiver::new(b).expect("rx");
        let (mut mine, theirs) = UnixStream::pair().expect("stream pair");
        tx.send(ConnMeta::Tls { index: 3 }, &theirs)
            .await
            .expect("send");
        drop(theirs);
        let (meta, fd) = rx.recv().await.expect("recv").expect("some");
        assert_eq!(meta, ConnMeta::Tls { index: 3 });
        let mut got = UnixStream::from(fd);
        mine.write_all(b"hi").expect("write");
        let mut buf = [0u8; 2];
        got.read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"hi");
        let flags = fcntl(got.as_fd(), FcntlArg::F_GETFD).expect("getfd");
        assert!(FdFlag::from_bits_truncate(flags).contains(FdFlag::FD_CLOEXEC));
    }

    #[tokio::test]
    async fn closed_sender_is_none_and_missing_fd_is_an_error() {
        let (a, b) = seqpacket_pair().expect("pair");
        let rx = ConnReceiver::new(b).expect("rx");
        nix::sys::socket::send(a.as_raw_fd(), &ConnMeta::Plain.encode(), MsgFlags::empty())
            .expect("send");
        assert!(matches!(rx.recv().await, Err(FdPassError::FdCount(0))));
        let (x, y) = UnixStream::pair().expect("stream pair");
        let two = [x.as_raw_fd(), y.as_raw_fd()];
        sendmsg::<()>(
            a.as_raw_fd(),
            &[IoSlice::new(&ConnMeta::Plain.encode())],
            &[ControlMessage::ScmRights(&two)],
            MsgFlags::empty(),
            None,
        )
        .expect("sendmsg");
        assert!(matches!(rx.recv().await, Err(FdPassError::FdCount(2))));
        drop(a);
        assert!(rx.recv().await.expect("eof").is_none());
    }

    /// The worker relies on this instead of setting `O_NONBLOCK` itself.
    #[tokio::test]
    async fn an_accepted_connection_arrives_non_blocking() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        set_defer_accept(&listener, 1).expect("defer accept");
        let wouldblock = accept_nonblocking(&listener).expect_err("nothing queued");
        assert_eq!(wouldblock.kind(), io::ErrorKind::WouldBlock);
        let mut client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        // Deferred: accepted once the first bytes are there.
        client.write_all(b"x").expect("write");
        let accepted = loop {
            match accept_nonblocking(&listener) {
                Ok(fd) => break fd,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        assert!(is_nonblocking(&accepted).expect("getfl"));

        let (a, b) = seqpacket_pair().expect("pair");
        let tx = ConnSender::new(a).expect("tx");
        let rx = ConnReceiver::new(b).expect("rx");
        tx.try_send(ConnMeta::Plain, &accepted).expect("try_send");
        drop(accepted);
        let (meta, fd) = rx.recv().await.expect("recv").expect("some");
        assert_eq!(meta, ConnMeta::Plain);
        assert!(is_nonblocking(&fd).expect("getfl"));
        let mut got = std::net::TcpStream::from(fd);
        let mut buf = [0u8; 1];
        got.read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"x");
    }

    #[test]
    fn raised_fds_are_above_the_install_range() {
        let (a, _b) = seqpacket_pair().expect("pair");
        let raised = raise_above_stdio(&a).expect("dup");
        assert!(raised.as_raw_fd() >= 10);
        assert!(install_in_child(&[(3, 4)]).is_err());
    }
}
