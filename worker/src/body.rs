//! HTTP body types the worker answers with: whole buffers, upstream bodies
//! passed through under a deadline, and channel-fed streams (SSE).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type Body = BoxBody<Bytes, BoxError>;

pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub(crate) fn empty() -> Body {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}

/// Pass `inner` through, failing it if it is still streaming at `deadline`
/// (a hung upstream must not hold a client forever).
pub(crate) fn with_deadline<B>(inner: B, deadline: Instant) -> Body
where
    B: HttpBody<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    Deadline {
        inner,
        deadline,
        sleep: None,
    }
    .boxed()
}

struct Deadline<B> {
    inner: B,
    deadline: Instant,
    /// Made the first time `inner` is not ready: a small answer usually is
    /// all there at the first poll, and then no timer is allocated or armed.
    sleep: Option<Pin<Box<Sleep>>>,
}

#[derive(Debug, thiserror::Error)]
#[error("the upstream answer did not finish within the request timeout")]
pub(crate) struct AnswerTimedOut;

impl<B> HttpBody for Deadline<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        let deadline = self.deadline;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(AnswerTimedOut)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
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
