//! What this worker holds of upstream answers in memory: one answer read
//! whole is at most `limits.max_answer_bytes`, and all answers held at once
//! (read whole, or waiting to be written to a slow client) are at most
//! `limits.max_buffered_answer_bytes` together. Without the second bound a
//! few clients asking for large answers at once could take a worker's
//! memory, whatever the first bound says.
//!
//! The budget is one per worker process, so it is a process-wide value
//! sized by [`configure`] at start and on every reload. A request that
//! would pass it waits for room until its deadline, then fails; bytes are
//! taken as they arrive, so a small answer never waits for a large one's
//! declared length.

use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{Bytes, BytesMut};
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::{Instant, timeout_at};

use crate::http::client::{BodyError, UpstreamBody};

static ROOM: Semaphore = Semaphore::const_new(0);
/// Permits `ROOM` was given in all (its size), to resize it by the difference.
static TOTAL: AtomicUsize = AtomicUsize::new(0);
static MAX_ANSWER: AtomicUsize = AtomicUsize::new(64 * 1024 * 1024);

/// Unit tests share the process-wide budget: those that read answers hold
/// a read guard ([`shared_for_tests`]), and the budget's own test, which
/// resizes it to a few bytes, holds the write guard, so neither disturbs
/// the other.
#[cfg(test)]
static TESTS: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// The budget sized as a worker sizes it by default, for a test that reads
/// answers; hold the guard while it does.
#[cfg(test)]
pub(crate) fn shared_for_tests() -> std::sync::RwLockReadGuard<'static, ()> {
    let guard = TESTS
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    configure(1 << 20, 64 << 20);
    guard
}

/// Size the budget (worker start and reloads). Shrinking takes effect as
/// held answers are released.
pub(crate) fn configure(max_answer: usize, max_buffered: usize) {
    MAX_ANSWER.store(max_answer, Ordering::Relaxed);
    // Permits of one semaphore are counted in usize but capped well below.
    let max_buffered = max_buffered.min(Semaphore::MAX_PERMITS);
    let before = TOTAL.swap(max_buffered, Ordering::Relaxed);
    if max_buffered > before {
        ROOM.add_permits(max_buffered - before);
    } else {
        // What cannot be taken now (held by answers) is taken as they go.
        let mut left = before - max_buffered;
        while left > 0 {
            let n = ROOM.forget_permits(left);
            if n == 0 {
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(shrink_later(left));
                }
                break;
            }
            left -= n;
        }
    }
}

async fn shrink_later(mut left: usize) {
    while left > 0 {
        let n = u32::try_from(left).unwrap_or(u32::MAX);
        match ROOM.acquire_many(n).await {
            Ok(p) => {
                p.forget();
                left -= n as usize;
            }
            Err(_) => return,
        }
    }
}

/// The largest answer read whole.
pub(crate) fn max_answer() -> usize {
    MAX_ANSWER.load(Ordering::Relaxed)
}

/// Why an answer could not be read whole.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error("{0}")]
    Body(BodyError),
    #[error("the answer is larger than {limit} bytes (limits.max_answer_bytes)")]
    TooLarge { limit: usize },
    #[error("the answer did not arrive within the request timeout")]
    TimedOut,
    #[error(
        "the worker holds too many upstream answers to take this one within the request timeout (limits.max_buffered_answer_bytes)"
    )]
    NoRoom,
}

/// An answer read whole and the budget it holds until dropped.
pub(crate) struct Held {
    pub bytes: Bytes,
    permit: Option<SemaphorePermit<'static>>,
}

impl Held {
    /// Room for `n` more bytes, waiting until `deadline` at most.
    async fn take(&mut self, n: usize, deadline: Instant) -> Result<(), ReadError> {
        let n = u32::try_from(n).map_err(|_| ReadError::TooLarge {
            limit: max_answer(),
        })?;
        let more = match ROOM.try_acquire_many(n) {
            Ok(p) => p,
            Err(_) => timeout_at(deadline, ROOM.acquire_many(n))
                .await
                .map_err(|_| ReadError::NoRoom)?
                .map_err(|_| ReadError::NoRoom)?,
        };
        match &mut self.permit {
            Some(p) => p.merge(more),
            None => self.permit = Some(more),
        }
        Ok(())
    }

    /// The bytes as a response body that gives the room back once written.
    pub(crate) fn into_body(self) -> crate::http::body::Body {
        crate::http::body::full_holding(self.bytes, self.permit)
    }
}

/// Read `body` whole, within the answer limit, the worker's budget and
/// `deadline`. An answer that came whole with its head (most do) is taken
/// as it is: no copy.
pub(crate) async fn read_whole(
    mut body: UpstreamBody,
    deadline: Instant,
) -> Result<Held, ReadError> {
    let limit = max_answer();
    match body.take_whole() {
        Some(bytes) if bytes.len() > limit => return Err(ReadError::TooLarge { limit }),
        Some(bytes) => {
            let Ok(n) = u32::try_from(bytes.len()) else {
                return Err(ReadError::TooLarge { limit });
            };
            if let Ok(permit) = ROOM.try_acquire_many(n) {
                return Ok(Held {
                    bytes,
                    permit: Some(permit),
                });
            }
            let mut held = Held {
                bytes: Bytes::new(),
                permit: None,
            };
            Box::pin(held.take(bytes.len(), deadline)).await?;
            held.bytes = bytes;
            return Ok(held);
        }
        None => {}
    }
    // Boxed: the rare branch, whose future would otherwise make every
    // request's larger.
    Box::pin(read_streamed(body, limit, deadline)).await
}

async fn read_streamed(
    mut body: UpstreamBody,
    limit: usize,
    deadline: Instant,
) -> Result<Held, ReadError> {
    if body.size_hint().exact().is_some_and(|n| n > limit as u64) {
        return Err(ReadError::TooLarge { limit });
    }
    let mut held = Held {
        bytes: Bytes::new(),
        permit: None,
    };
    let mut joined: Option<BytesMut> = None;
    loop {
        let frame = match timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(ReadError::TimedOut),
            Ok(None) => break,
            Ok(Some(frame)) => frame.map_err(ReadError::Body)?,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let so_far = held.bytes.len() + joined.as_ref().map_or(0, BytesMut::len);
        if so_far.saturating_add(data.len()) > limit {
            return Err(ReadError::TooLarge { limit });
        }
        held.take(data.len(), deadline).await?;
        if held.bytes.is_empty() && joined.is_none() {
            held.bytes = data;
        } else {
            let j = joined.get_or_insert_with(|| {
                let mut j = BytesMut::with_capacity(held.bytes.len() * 2 + data.len());
                j.extend_from_slice(&std::mem::take(&mut held.bytes));
                j
            });
            j.extend_from_slice(&data);
        }
    }
    if let Some(j) = joined {
        held.bytes = j.freeze();
    }
    Ok(held)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    #[allow(clippy::await_holding_lock)] // held alone on purpose: see `TESTS`
    async fn the_budget_is_taken_and_given_back() {
        // Polled, never queued: a queued writer would block the read guard
        // a test takes while it already holds one (two sources in a test).
        let _alone = loop {
            match TESTS.try_write() {
                Ok(alone) => break alone,
                Err(std::sync::TryLockError::Poisoned(p)) => break p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
        };
        configure(1024, 100);
        let mut a = Held {
            bytes: Bytes::new(),
            permit: None,
        };
        let soon = Instant::now() + std::time::Duration::from_millis(20);
        a.take(60, soon).await.expect("room");
        let mut b = Held {
            bytes: Bytes::new(),
            permit: None,
        };
        assert!(matches!(b.take(60, soon).await, Err(ReadError::NoRoom)));
        drop(a);
        b.take(60, soon).await.expect("room once a is gone");
        drop(b);
        assert_eq!(ROOM.available_permits(), 100);
        configure(1024, 40);
        assert_eq!(ROOM.available_permits(), 40);
    }
}
