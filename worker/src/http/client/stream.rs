//! A pooled connection's byte stream: plain TCP, or TLS over it for an
//! `https://` upstream.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A connection's byte stream: plain TCP or TLS over it. An enum so the
/// plaintext path is a direct call, never a virtual one or an allocation.
pub(super) enum Stream {
    Plain(TcpStream),
    /// Boxed: a client TLS session is large, and a plaintext pool should
    /// not carry its size in every idle entry.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// A connection in memory: the answer reader's fuzz target
    /// (`crate::fuzz`) reads answers from it.
    #[cfg(feature = "fuzzing")]
    Mem(Box<crate::fuzz::MemIo>),
}

impl Stream {
    #[cfg(test)]
    pub(super) fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(tcp) => tcp,
            Self::Tls(tls) => tls.get_ref().0,
            #[cfg(feature = "fuzzing")]
            Self::Mem(_) => panic!("the tests make no connection in memory"),
        }
    }

    /// Nothing to read on it now, and not closed: asked of the kernel (a
    /// non-blocking peek, one system call) and of the TLS layer. See
    /// `Conn::idle_and_open` for why the runtime's readiness is not enough.
    pub(super) fn is_quiet(&mut self) -> bool {
        if self.tls_has_pending() {
            return false;
        }
        let tcp = match self {
            Self::Plain(tcp) => &*tcp,
            Self::Tls(tls) => tls.get_ref().0,
            #[cfg(feature = "fuzzing")]
            Self::Mem(mem) => return mem.unread() == 0,
        };
        let mut probe = [MaybeUninit::<u8>::uninit(); 1];
        match socket2::SockRef::from(tcp).peek(&mut probe) {
            // Readiness the reactor still holds from the last answer is
            // harmless: the next read finds it stale and clears it.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
            // Data (stray bytes), end of stream, or an error.
            _ => false,
        }
    }

    /// Whether anything arrived (bytes, the end, an error) since the last
    /// read, as far as the TLS layer and the runtime's cached readiness
    /// know: no system call. It may lag the kernel (see
    /// `Conn::idle_and_open`), so it can only say "look closer", never
    /// "quiet"; the pool's sweep of its old end uses it to peek only at
    /// connections something happened to.
    pub(super) fn may_have_input(&mut self) -> bool {
        if self.tls_has_pending() {
            return true;
        }
        let tcp = match self {
            Self::Plain(tcp) => &*tcp,
            Self::Tls(tls) => tls.get_ref().0,
            #[cfg(feature = "fuzzing")]
            Self::Mem(mem) => return mem.unread() != 0,
        };
        // An idle pooled connection has no reader, so the no-op waker
        // this leaves registered replaces nobody's.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        tcp.poll_read_ready(&mut cx).is_ready()
    }

    /// Whether the TLS layer holds something for the application already:
    /// plaintext it decrypted and nobody read, or the server's close. The
    /// kernel peek in `Conn::idle_and_open` cannot see what rustls has
    /// already taken from the socket.
    pub(super) fn tls_has_pending(&mut self) -> bool {
        let Self::Tls(tls) = self else {
            return false;
        };
        match tls.get_mut().1.process_new_packets() {
            Ok(state) => state.plaintext_bytes_to_read() > 0 || state.peer_has_closed(),
            Err(_) => true,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Self::Tls(tls) => Pin::new(&mut **tls).poll_read(cx, buf),
            #[cfg(feature = "fuzzing")]
            Self::Mem(mem) => Pin::new(&mut **mem).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Self::Tls(tls) => Pin::new(&mut **tls).poll_write(cx, buf),
            #[cfg(feature = "fuzzing")]
            Self::Mem(mem) => Pin::new(&mut **mem).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Self::Tls(tls) => Pin::new(&mut **tls).poll_write_vectored(cx, bufs),
            #[cfg(feature = "fuzzing")]
            Self::Mem(mem) => Pin::new(&mut **mem).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(tcp) => tcp.is_write_vectored(),
            Self::Tls(tls) => tls.is_write_vectored(),
            #[cfg(feature = "fuzzing")]
            Self::Mem(mem) => mem.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Self::Tls(tls) => Pin::new(&mut **tls).poll_flush(cx),
            #[cfg(feature = "fuzzing")]
            Self::Mem(mem) => Pin::new(&mut **mem).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Self::Tls(tls) => Pin::new(&mut **tls).poll_shutdown(cx),
            #[cfg(feature = "fuzzing")]
            Self::Mem(mem) => Pin::new(&mut **mem).poll_shutdown(cx),
        }
    }
}
