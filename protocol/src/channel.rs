//! Typed, length-prefixed control channel over a Unix stream socket.
//!
//! A frame is a little-endian `u32` length followed by that many bytes of
//! bincode 2 (standard config). The length is checked against
//! [`MAX_FRAME`] before anything is allocated, and decoding is bounded by the
//! same limit. The type parameters say who sends what: the supervisor holds
//! `Sender<ToWorker>` + `Receiver<FromWorker>`, the worker the reverse.

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// Largest frame either side accepts (a config with many upstreams fits).
pub const MAX_FRAME: usize = 8 * 1024 * 1024;

/// The message carries the cause (no `source()` chain), so it reads whole
/// in a log line and prints once at the edge.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("control channel I/O: {0}")]
    Io(std::io::Error),
    #[error("control frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("cannot encode control message: {0}")]
    Encode(bincode::error::EncodeError),
    #[error("cannot decode control message: {0}")]
    Decode(bincode::error::DecodeError),
}

impl From<std::io::Error> for ChannelError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<bincode::error::EncodeError> for ChannelError {
    fn from(e: bincode::error::EncodeError) -> Self {
        Self::Encode(e)
    }
}

impl From<bincode::error::DecodeError> for ChannelError {
    fn from(e: bincode::error::DecodeError) -> Self {
        Self::Decode(e)
    }
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME>()
}

/// Split a connected stream into a typed sender and receiver.
pub fn split<Tx, Rx>(stream: UnixStream) -> (Sender<Tx>, Receiver<Rx>) {
    let (r, w) = stream.into_split();
    (
        Sender {
            inner: w,
            buf: Vec::new(),
            _t: PhantomData,
        },
        Receiver {
            inner: r,
            buf: Vec::new(),
            _t: PhantomData,
        },
    )
}

/// Sending half of a control channel.
pub struct Sender<T> {
    inner: OwnedWriteHalf,
    buf: Vec<u8>,
    _t: PhantomData<fn(T)>,
}

impl<T: Serialize> Sender<T> {
    pub async fn send(&mut self, msg: &T) -> Result<(), ChannelError> {
        self.buf.clear();
        self.buf.extend_from_slice(&[0; 4]);
        bincode::serde::encode_into_std_write(msg, &mut self.buf, bincode_config())?;
        let len = self.buf.len() - 4;
        if len > MAX_FRAME {
            return Err(ChannelError::TooLarge(len));
        }
        self.buf[..4].copy_from_slice(&(len as u32).to_le_bytes());
        self.inner.write_all(&self.buf).await?;
        Ok(())
    }
}

/// Receiving half of a control channel.
pub struct Receiver<T> {
    inner: OwnedReadHalf,
    buf: Vec<u8>,
    _t: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> Receiver<T> {
    /// The next message, or `None` when the peer closed the channel cleanly
    /// (between frames). Cancel-safe only between calls, not within one.
    pub async fn recv(&mut self) -> Result<Option<T>, ChannelError> {
        let mut len = [0u8; 4];
        match self.inner.read_exact(&mut len).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_FRAME {
            return Err(ChannelError::TooLarge(len));
        }
        self.buf.resize(len, 0);
        self.inner.read_exact(&mut self.buf).await?;
        let (msg, _) = bincode::serde::decode_from_slice(&self.buf, bincode_config())?;
        Ok(Some(msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{AfterStop, FromWorker, ToWorker};

    #[tokio::test]
    async fn messages_cross_and_eof_is_none() {
        let (a, b) = UnixStream::pair().expect("pair");
        let (mut tx, _rx_a) = split::<ToWorker, FromWorker>(a);
        let (_tx_b, mut rx) = split::<FromWorker, ToWorker>(b);
        tx.send(&ToWorker::Shutdown {
            grace_ms: 5,
            sessions: AfterStop::Close,
        })
        .await
        .expect("send");
        assert_eq!(
            rx.recv().await.expect("recv"),
            Some(ToWorker::Shutdown {
                grace_ms: 5,
                sessions: AfterStop::Close
            })
        );
        drop(tx);
        drop(_rx_a);
        assert_eq!(rx.recv().await.expect("recv"), None);
    }

    #[tokio::test]
    async fn oversized_length_is_refused_before_allocation() {
        let (mut a, b) = UnixStream::pair().expect("pair");
        let (_tx, mut rx) = split::<FromWorker, ToWorker>(b);
        a.write_all(&u32::MAX.to_le_bytes()).await.expect("write");
        assert!(matches!(rx.recv().await, Err(ChannelError::TooLarge(_))));
    }

    #[tokio::test]
    async fn garbage_is_a_decode_error() {
        let (mut a, b) = UnixStream::pair().expect("pair");
        let (_tx, mut rx) = split::<FromWorker, ToWorker>(b);
        a.write_all(&[1, 0, 0, 0, 0xff]).await.expect("write");
        assert!(matches!(rx.recv().await, Err(ChannelError::Decode(_))));
    }
}
