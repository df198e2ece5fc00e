//! HTTP body types the worker answers with: whole buffers (some holding
//! room in a memory budget until written) and channel-fed streams (SSE).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use tokio::sync::mpsc;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type Body = BoxBody<Bytes, BoxError>;

pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A whole buffer that holds `guard` (room in a budget) until the body is
/// dropped, which is once it has been written or the client has gone.
pub(crate) fn full_holding<G: Send + Sync + Unpin + 'static>(bytes: Bytes, guard: G) -> Body {
    Holding {
        inner: http_body_util::Full::new(bytes),
        _guard: guard,
    }
    .map_err(|never| match never {})
    .boxed()
}

struct Holding<G> {
    inner: http_body_util::Full<Bytes>,
    _guard: G,
}

impl<G: Unpin> HttpBody for Holding<G> {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pub(crate) fn empty() -> Body {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}

/// A body fed by a channel; it ends when every sender is gone.
pub(crate) fn channel(rx: mpsc::Receiver<Bytes>) -> Body {
    ChannelBody { rx, _guard: None }.boxed()
}

/// Like [`channel`], holding `guard` until the body is dropped (its `Drop`
/// is how the producer learns that nobody reads any more).
pub(crate) fn channel_guarded(
    rx: mpsc::Receiver<Bytes>,
    guard: impl Send + Sync + 'static,
) -> Body {
    ChannelBody {
        rx,
        _guard: Some(Box::new(guard)),
    }
    .boxed()
}

struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
    _guard: Option<Box<dyn Send + Sync>>,
}

impl HttpBody for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}
