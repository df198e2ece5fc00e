//! One accepted connection, from `accept` to the worker that serves it.
//!
//! Peek the head (bounded in size and time), pick the worker (the session's
//! owner by rendezvous hash, else the least loaded), hand the fd over and
//! drop our copy. Most connections take [`Dispatcher::hand_over_now`], run
//! inline by the accept loop: their head is already queued (the listeners
//! defer accept until data arrives), their worker is serving and its queue
//! has room, so there is nothing to wait for and no task, timer or epoll
//! registration is needed. Everything else takes [`Dispatcher::dispatch`],
//! a task per connection. A connection whose owner is restarting waits for
//! it for `limits.dispatch_wait_ms`, then gets 503 with `Retry-After`. Heads
//! that are too large, too slow or not HTTP are answered here, never passed
//! on.
//!
//! Connections whose head has not arrived yet are the ones a slow client
//! can pile up (each a task, a timer and an fd for up to the header
//! timeout), so at most `limits.max_pending_connections` of them are held
//! at once ([`Dispatcher::admit_pending`]). One past that is answered 503
//! with `Retry-After` by [`Dispatcher::refuse_pending_full`], inline and
//! without waiting, so a flood costs no task per refused connection.
//! Nothing here reads bodies or knows what MCP is.

use std::io::{Read, Write};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use mcpgw_protocol::config::Limits;
use mcpgw_protocol::control::ConnMeta;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::peek::{Head, peek_complete_now, peek_head};
use crate::pool::{MAX_SLOTS, Pool, Worker};
use crate::routes::Routes;

/// What a dispatch task needs; shared by all of them.
pub(crate) struct Dispatcher {
    pub pool: Arc<Pool>,
    routes: Arc<Routes>,
    metrics: Arc<Metrics>,
    /// Per-slot handles, made once per slot: no label lookup per
    /// connection. Slots a reload adds get theirs on first use.
    dispatched: Box<[OnceLock<prometheus::IntCounter>]>,
    /// Replaced by a reload; copied once per connection.
    limits: RwLock<DispatchLimits>,
    /// Connections held while their heads are read (see [`PendingHead`]).
    pending: AtomicUsize,
    /// Refusals past the pending cap come at the rate clients connect.
    pending_full_log: Throttled,
}

#[derive(Debug, Clone, Copy)]
struct DispatchLimits {
    max_head: usize,
    header_timeout: Duration,
    wait_for_worker: Duration,
    max_pending: usize,
}

impl From<&Limits> for DispatchLimits {
    fn from(limits: &Limits) -> Self {
        Self {
            max_head: limits.max_head_bytes as usize,
            header_timeout: limits.header_timeout(),
            wait_for_worker: Duration::from_millis(limits.dispatch_wait_ms),
            max_pending: usize::try_from(limits.max_pending_connections).unwrap_or(usize::MAX),
        }
    }
}

/// What [`Dispatcher::hand_over_now`] did with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Now {
    /// Passed to a worker; our copy of the fd may close.
    HandedOver,
    /// Its head is not (all) here: it must wait for it, under the pending
    /// cap.
    NeedsHead,
    /// Its head is complete (or it is TLS), but its worker cannot take it
    /// at once.
    NeedsWorker,
}

/// One connection counted against `limits.max_pending_connections` while
/// its head is read; dropping it frees the place.
pub(crate) struct PendingHead(Arc<Dispatcher>);

impl Drop for PendingHead {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.pending.dec();
    }
}

impl Dispatcher {
    pub(crate) fn new(
        pool: Arc<Pool>,
        routes: Arc<Routes>,
        limits: &Limits,
        metrics: Arc<Metrics>,
    ) -> Self {
        let dispatched: Box<[OnceLock<prometheus::IntCounter>]> =
            (0..MAX_SLOTS).map(|_| OnceLock::new()).collect();
        let dispatcher = Self {
            pool,
            routes,
            metrics,
            dispatched,
            limits: RwLock::new(limits.into()),
            pending: AtomicUsize::new(0),
            pending_full_log: Throttled::new(Duration::from_secs(1)),
        };
        // The configured slots' series exist from the start, at 0.
        for slot in 0..dispatcher.pool.len() {
            dispatcher.dispatched(slot);
        }
        dispatcher
    }

    /// Slot `slot`'s counter, made on first use (slots a reload adds).
    fn dispatched(&self, slot: u16) -> Option<&prometheus::IntCounter> {
        self.dispatched.get(usize::from(slot)).map(|c| {
            c.get_or_init(|| {
                self.metrics
                    .dispatched
                    .with_label_values(&[&slot.to_string()])
            })
        })
    }

    pub(crate) fn set_limits(&self, limits: &Limits) {
        match self.limits.write() {
            Ok(mut l) => *l = limits.into(),
            Err(poisoned) => *poisoned.into_inner() = limits.into(),
        }
    }

    fn limits(&self) -> DispatchLimits {
        match self.limits.read() {
            Ok(l) => *l,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    /// Hand `conn` over now if nothing needs waiting for: a complete head
    /// already queued (plaintext), a serving worker, room in its queue.
    /// Anything else leaves `conn` to [`Self::dispatch`], which starts over,
    /// and says what it would wait for; no answer is ever sent from here.
    pub(crate) fn hand_over_now(&self, conn: BorrowedFd<'_>, meta: ConnMeta) -> Now {
        let accepted = Instant::now();
        let worker = match meta {
            ConnMeta::Tls { .. } => self.pool.least_loaded(),
            ConnMeta::Plain | ConnMeta::Peer => {
                match peek_complete_now(conn, self.limits().max_head) {
                    Some(Head::Complete { session: Some(id) }) => {
                        self.pool.slot(self.routes.owner(&id)).serving()
                    }
                    Some(Head::Complete { session: None }) => self.pool.least_loaded(),
                    _ => return Now::NeedsHead,
                }
            }
        };
        let Some(worker) = worker else {
            return Now::NeedsWorker;
        };
        match worker.conns.try_send(meta, conn) {
            Ok(()) => {
                self.handed_over(&worker, accepted);
                Now::HandedOver
            }
            Err(e) => {
                // Full queue or a worker that just died: the slow path
                // waits for room or for the slot's replacement.
                debug!(worker = %worker.id, error = %e, "immediate hand-over failed; dispatching");
                Now::NeedsWorker
            }
        }
    }

    /// A place among the connections whose heads are being read, or `None`
    /// when `limits.max_pending_connections` are held already.
    pub(crate) fn admit_pending(self: &Arc<Self>) -> Option<PendingHead> {
        let max = self.limits().max_pending;
        self.pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        self.metrics.pending.inc();
        Some(PendingHead(self.clone()))
    }

    /// Answer 503 to a connection past the pending cap and close it, now:
    /// one non-blocking write (the answer fits an empty send buffer), then
    /// the bytes already queued are dropped so the close is a FIN, not a
    /// reset that could destroy the answer. Best effort by design: waiting
    /// on a refused connection is what the cap is there to avoid.
    pub(crate) fn refuse_pending_full(&self, conn: OwnedFd) {
        let why = Reject::PendingFull;
        self.metrics
            .rejected
            .with_label_values(&[why.label()])
            .inc();
        if let Some(skipped) = self.pending_full_log.hit() {
            warn!(
                limit = self.limits().max_pending,
                not_logged_since_last = skipped,
                "too many connections waiting for their request heads (limits.max_pending_connections); answering 503"
            );
        }
        let mut stream = std::net::TcpStream::from(conn);
        if stream.write(why.response().as_bytes()).is_err() {
            return;
        }
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let mut sink = [0u8; 4096];
        for _ in 0..16 {
            match stream.read(&mut sink) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
    }

    fn handed_over(&self, worker: &Worker, accepted: Instant) {
        worker.note_dispatched();
        if let Some(c) = self.dispatched(worker.id.slot) {
            c.inc();
        }
        self.metrics
            .dispatch_seconds
            .observe(accepted.elapsed().as_secs_f64());
    }

    /// `pending` is the connection's place under the pending cap, if it
    /// waits for its head; it is given up once the head is in.
    pub(crate) async fn dispatch(
        &self,
        stream: TcpStream,
        meta: ConnMeta,
        pending: Option<PendingHead>,
    ) {
        let accepted = Instant::now();
        let limits = self.limits();
        if let ConnMeta::Tls { .. } = meta {
            // Nothing to peek inside TLS: balance by load; the worker that
            // terminates it forwards requests of sessions it does not own.
            return match self.pool.least_loaded() {
                Some(worker) => self.hand_over(stream, meta, worker, accepted, limits).await,
                None => self.reject(stream, Reject::Unavailable).await,
            };
        }
        // Only for log lines: no getpeername on the path that logs nothing.
        let peer = || stream.peer_addr().ok();
        let peeked = timeout(limits.header_timeout, peek_head(&stream, limits.max_head)).await;
        drop(pending);
        let head = match peeked {
            Ok(Ok(head)) => head,
            Ok(Err(e)) => {
                debug!(peer = ?peer(), error = %e, "connection failed before its request head");
                return;
            }
            Err(_) => {
                info!(
                    peer = ?peer(),
                    timeout_ms = limits.header_timeout.as_millis() as u64,
                    "request head not received in time; closing"
                );
                return self.reject(stream, Reject::Timeout).await;
            }
        };
        let session = match head {
            Head::Complete { session } => session,
            Head::Closed => return,
            Head::TooLarge => {
                info!(peer = ?peer(), limit = limits.max_head, "request head too large");
                return self.reject(stream, Reject::HeadTooLarge).await;
            }
            Head::Malformed => {
                info!(peer = ?peer(), "request is not HTTP/1.x");
                return self.reject(stream, Reject::Malformed).await;
            }
        };
        let worker = match session {
            Some(id) => {
                let slot = self.routes.owner(&id);
                self.owner(slot, None, limits.wait_for_worker).await
            }
            None => self.pool.least_loaded(),
        };
        let Some(worker) = worker else {
            warn!(peer = ?peer(), "no worker is serving; answering 503");
            return self.reject(stream, Reject::Unavailable).await;
        };
        self.hand_over(stream, meta, worker, accepted, limits).await;
    }

    /// Pass the fd. A send can fail if the worker died after we picked it;
    /// then wait (bounded) for its slot's replacement.
    async fn hand_over(
        &self,
        stream: TcpStream,
        meta: ConnMeta,
        mut worker: Arc<Worker>,
        accepted: Instant,
        limits: DispatchLimits,
    ) {
        loop {
            match worker.conns.send(meta, &stream).await {
                Ok(()) => return self.handed_over(&worker, accepted),
                Err(e) => {
                    debug!(worker = %worker.id, error = %e, "handing the connection over failed");
                    match self
                        .owner(
                            worker.id.slot,
                            Some(worker.id.generation),
                            limits.wait_for_worker,
                        )
                        .await
                    {
                        Some(next) => worker = next,
                        None => return self.reject(stream, Reject::Unavailable).await,
                    }
                }
            }
        }
    }

    async fn reject(&self, stream: TcpStream, why: Reject) {
        self.metrics
            .rejected
            .with_label_values(&[why.label()])
            .inc();
        // Boxed: its 4 KiB drain buffer would otherwise make every dispatch
        // future that large, copied several times per accepted connection.
        Box::pin(reject(stream, why)).await;
    }

    /// The serving worker of `slot`, waiting (bounded) while it restarts.
    /// `not_generation` skips a worker already found dead.
    async fn owner(
        &self,
        slot: u16,
        not_generation: Option<u64>,
        wait: Duration,
    ) -> Option<Arc<Worker>> {
        let mut rx = self.pool.slot(slot).subscribe();
        let deadline = Instant::now() + wait;
        let found = timeout_at(
            deadline,
            rx.wait_for(|w| {
                w.as_ref()
                    .is_some_and(|w| Some(w.id.generation) != not_generation)
            }),
        )
        .await;
        match found {
            Ok(Ok(w)) => w.clone(),
            _ => None,
        }
    }
}

/// Every [`Reject`] label, so the metric's series exist from the start.
pub(crate) const REJECT_REASONS: [&str; 5] = [
    "head_too_large",
    "head_timeout",
    "malformed",
    "unavailable",
    "pending_limit",
];

#[derive(Clone, Copy)]
enum Reject {
    HeadTooLarge,
    Timeout,
    Malformed,
    Unavailable,
    PendingFull,
}

impl Reject {
    /// The `reason` label of `mcpgw_connections_rejected_total`.
    fn label(self) -> &'static str {
        match self {
            Reject::HeadTooLarge => "head_too_large",
            Reject::Timeout => "head_timeout",
            Reject::Malformed => "malformed",
            Reject::Unavailable => "unavailable",
            Reject::PendingFull => "pending_limit",
        }
    }

    /// The whole HTTP response. A cold path: built when needed.
    fn response(self) -> String {
        let (status, extra, body) = match self {
            Reject::HeadTooLarge => (
                "431 Request Header Fields Too Large",
                "",
                "request head too large\n",
            ),
            Reject::Timeout => (
                "408 Request Timeout",
                "",
                "request head not received in time\n",
            ),
            Reject::Malformed => ("400 Bad Request", "", "request is not HTTP/1.x\n"),
            Reject::Unavailable => (
                "503 Service Unavailable",
                "retry-after: 1\r\n",
                "no worker is available; retry\n",
            ),
            Reject::PendingFull => (
                "503 Service Unavailable",
                "retry-after: 1\r\n",
                "too many connections are waiting to send a request head; retry\n",
            ),
        };
        format!(
            "HTTP/1.1 {status}\r\n{extra}content-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    }
}

/// A warning for an event that can come as often as clients connect:
/// logged at most once per `every`, with how many were not logged since.
struct Throttled {
    every: Duration,
    epoch: std::time::Instant,
    /// Milliseconds since `epoch` before which nothing is logged.
    next_ms: AtomicU64,
    skipped: AtomicU64,
}

impl Throttled {
    fn new(every: Duration) -> Self {
        Self {
            every,
            epoch: std::time::Instant::now(),
            next_ms: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        }
    }

    /// `Some(events not logged since the last one)` when this one is to be
    /// logged.
    fn hit(&self) -> Option<u64> {
        let now_ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.hit_at(now_ms)
    }

    fn hit_at(&self, now_ms: u64) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Relaxed);
        let every_ms = u64::try_from(self.every.as_millis()).unwrap_or(u64::MAX);
        // Of threads hitting at once, only the one that moves `next_ms` logs.
        if now_ms >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now_ms.saturating_add(every_ms),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.skipped.swap(0, Ordering::Relaxed));
        }
        self.skipped.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// Answer a connection the supervisor will not pass on, then close it
/// without resetting: stop writing, drain briefly, close.
async fn reject(mut stream: TcpStream, why: Reject) {
    let response = why.response();
    let _ = timeout(Duration::from_secs(2), async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut left = 256 * 1024usize;
        while left > 0 {
            let n = stream.read(&mut sink).await?;
            if n == 0 {
                break;
            }
            left = left.saturating_sub(n);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peek::tests::pair;
    use mcpgw_protocol::control::WorkerId;
    use mcpgw_protocol::fdpass::{ConnReceiver, ConnSender, seqpacket_pair};
    use std::os::fd::AsFd;

    /// A dispatcher over one slot and, if `serving`, a worker in it whose
    /// connection socket ends in the returned receiver.
    fn dispatcher(serving: bool) -> (Dispatcher, ConnReceiver) {
        let pool = Arc::new(Pool::new(1));
        let (tx, rx) = seqpacket_pair().expect("pair");
        let rx = ConnReceiver::new(rx).expect("rx");
        if serving {
            let id = WorkerId {
                slot: 0,
                generation: 1,
            };
            let worker = Worker::detached(id, ConnSender::new(tx).expect("tx")).expect("worker");
            pool.slot(0).set(Some(worker));
        }
        let routes = Routes::new(pool.clone());
        let metrics = Arc::new(Metrics::new(1).expect("metrics"));
        let d = Dispatcher::new(pool, routes, &Limits::default(), metrics);
        (d, rx)
    }

    const HEAD: &[u8] = b"GET /mcp HTTP/1.1\r\nHost: x\r\n\r\n";

    /// A connection whose client sent `bytes`, readable on the server side.
    async fn sent(bytes: &[u8]) -> (TcpStream, TcpStream) {
        let (mut c, s) = pair().await;
        c.write_all(bytes).await.expect("write");
        s.readable().await.expect("readable");
        (c, s)
    }

    #[tokio::test]
    async fn a_complete_head_is_handed_over_at_once() {
        let (d, rx) = dispatcher(true);
        let (_c, s) = sent(HEAD).await;
        assert_eq!(d.hand_over_now(s.as_fd(), ConnMeta::Plain), Now::HandedOver);
        let (meta, _fd) = rx.recv().await.expect("recv").expect("a connection");
        assert_eq!(meta, ConnMeta::Plain);
        assert_eq!(d.pool.slot(0).serving().expect("serving").load(), 1);
    }

    #[tokio::test]
    async fn anything_that_needs_waiting_falls_back() {
        // Nothing sent yet, then half a head: the dispatch task's job.
        let (d, rx) = dispatcher(true);
        let (mut c, s) = pair().await;
        assert_eq!(d.hand_over_now(s.as_fd(), ConnMeta::Plain), Now::NeedsHead);
        c.write_all(b"GET /mcp HTTP/1.1\r\nHo")
            .await
            .expect("write");
        s.readable().await.expect("readable");
        assert_eq!(d.hand_over_now(s.as_fd(), ConnMeta::Plain), Now::NeedsHead);
        // Garbage is answered (400) by the dispatch task, not dropped here.
        let (_c2, s2) = sent(b"\x16\x03\x01garbage\r\n\r\n").await;
        assert_eq!(d.hand_over_now(s2.as_fd(), ConnMeta::Plain), Now::NeedsHead);
        // Nothing was passed.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), rx.recv())
                .await
                .is_err()
        );

        // No worker serving: the dispatch task waits for one, or answers 503.
        let (d, _rx) = dispatcher(false);
        let (_c, s) = sent(HEAD).await;
        assert_eq!(
            d.hand_over_now(s.as_fd(), ConnMeta::Plain),
            Now::NeedsWorker
        );
        assert_eq!(
            d.hand_over_now(s.as_fd(), ConnMeta::Tls { index: 0 }),
            Now::NeedsWorker
        );
    }

    #[tokio::test]
    async fn a_full_worker_queue_falls_back() {
        let (d, _rx) = dispatcher(true);
        let (_c, s) = sent(HEAD).await;
        // Nobody receives: the seqpacket queue fills, then the immediate
        // hand-over refuses instead of waiting.
        let mut sent = 0;
        while d.hand_over_now(s.as_fd(), ConnMeta::Plain) == Now::HandedOver {
            sent += 1;
            assert!(sent < 100_000, "the queue never filled");
        }
        assert!(sent > 0);
    }

    #[tokio::test]
    async fn the_pending_cap_admits_up_to_its_limit_and_refuses_with_503() {
        let pool = Arc::new(Pool::new(1));
        let routes = Routes::new(pool.clone());
        let metrics = Arc::new(Metrics::new(1).expect("metrics"));
        let limits = Limits {
            max_pending_connections: 2,
            ..Limits::default()
        };
        let d = Arc::new(Dispatcher::new(pool, routes, &limits, metrics.clone()));
        let first = d.admit_pending().expect("first place");
        let second = d.admit_pending().expect("second place");
        assert!(d.admit_pending().is_none(), "the cap is 2");
        assert_eq!(metrics.pending.get(), 2);
        drop(first);
        assert_eq!(metrics.pending.get(), 1);
        let third = d.admit_pending().expect("a freed place is reused");
        drop((second, third));
        assert_eq!(metrics.pending.get(), 0);

        // The refused client reads a 503 with Retry-After, then the close.
        let (mut c, s) = sent(b"GET /mcp HTTP/1.1\r\nHo").await;
        let fd = OwnedFd::from(s.into_std().expect("std"));
        d.refuse_pending_full(fd);
        let mut answer = Vec::new();
        c.read_to_end(&mut answer)
            .await
            .expect("a FIN, not a reset");
        let text = String::from_utf8_lossy(&answer);
        assert!(
            text.starts_with("HTTP/1.1 503 ") && text.contains("retry-after: 1\r\n"),
            "{text}"
        );
        assert_eq!(
            metrics.rejected.with_label_values(&["pending_limit"]).get(),
            1
        );
    }

    #[test]
    fn a_throttled_warning_is_logged_once_per_period_with_the_skipped_count() {
        let t = Throttled::new(Duration::from_secs(1));
        assert_eq!(t.hit_at(0), Some(0));
        assert_eq!(t.hit_at(10), None);
        assert_eq!(t.hit_at(999), None);
        assert_eq!(t.hit_at(1000), Some(2));
        assert_eq!(t.hit_at(1500), None);
        assert_eq!(t.hit_at(5000), Some(1));
        // A clock at its end saturates instead of wrapping.
        assert_eq!(t.hit_at(u64::MAX), Some(0));
        assert_eq!(t.hit_at(u64::MAX), Some(0));
    }

    #[test]
    fn rejections_are_well_formed_http() {
        for (why, code) in [
            (Reject::HeadTooLarge, 431),
            (Reject::Timeout, 408),
            (Reject::Malformed, 400),
            (Reject::Unavailable, 503),
            (Reject::PendingFull, 503),
        ] {
            assert!(REJECT_REASONS.contains(&why.label()));
            let text = why.response();
            let mut headers = [httparse::EMPTY_HEADER; 8];
            let mut resp = httparse::Response::new(&mut headers);
            let httparse::Status::Complete(at) = resp.parse(text.as_bytes()).expect("parse") else {
                panic!("incomplete response for {code}");
            };
            assert_eq!(resp.code, Some(code));
            let len = resp
                .headers
                .iter()
                .find(|h| h.name == "content-length")
                .map(|h| {
                    std::str::from_utf8(h.value)
                        .expect("ascii")
                        .parse::<usize>()
                })
                .expect("content-length")
                .expect("number");
            assert_eq!(len, text.len() - at);
        }
    }
}
