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
//! Nothing here reads bodies or knows what MCP is.

use std::os::fd::BorrowedFd;
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
}

#[derive(Debug, Clone, Copy)]
struct DispatchLimits {
    max_head: usize,
    header_timeout: Duration,
    wait_for_worker: Duration,
}

impl From<&Limits> for DispatchLimits {
    fn from(limits: &Limits) -> Self {
        Self {
            max_head: limits.max_head_bytes as usize,
            header_timeout: limits.header_timeout(),
            wait_for_worker: Duration::from_millis(limits.dispatch_wait_ms),
        }
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
    /// `false` leaves `conn` to [`Self::dispatch`], which starts over; no
    /// answer is ever sent from here.
    pub(crate) fn hand_over_now(&self, conn: BorrowedFd<'_>, meta: ConnMeta) -> bool {
        let accepted = Instant::now();
        let worker = match meta {
            ConnMeta::Tls { .. } => self.pool.least_loaded(),
            ConnMeta::Plain => match peek_complete_now(conn, self.limits().max_head) {
                Some(Head::Complete { session: Some(id) }) => {
                    self.pool.slot(self.routes.owner(&id)).serving()
                }
                Some(Head::Complete { session: None }) => self.pool.least_loaded(),
                _ => None,
            },
        };
        let Some(worker) = worker else {
            return false;
        };
        match worker.conns.try_send(meta, conn) {
            Ok(()) => {
                self.handed_over(&worker, accepted);
                true
            }
            Err(e) => {
                // Full queue or a worker that just died: the slow path
                // waits for room or for the slot's replacement.
                debug!(worker = %worker.id, error = %e, "immediate hand-over failed; dispatching");
                false
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

    pub(crate) async fn dispatch(&self, stream: TcpStream, meta: ConnMeta) {
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
        let head = match timeout(limits.header_timeout, peek_head(&stream, limits.max_head)).await {
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

#[derive(Clone, Copy)]
enum Reject {
    HeadTooLarge,
    Timeout,
    Malformed,
    Unavailable,
}

impl Reject {
    fn label(self) -> &'static str {
        match self {
            Reject::HeadTooLarge => "head_too_large",
            Reject::Timeout => "head_timeout",
            Reject::Malformed => "malformed",
            Reject::Unavailable => "unavailable",
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
        };
        format!(
            "HTTP/1.1 {status}\r\n{extra}content-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
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
        assert!(d.hand_over_now(s.as_fd(), ConnMeta::Plain));
        let (meta, _fd) = rx.recv().await.expect("recv").expect("a connection");
        assert_eq!(meta, ConnMeta::Plain);
        assert_eq!(d.pool.slot(0).serving().expect("serving").load(), 1);
    }

    #[tokio::test]
    async fn anything_that_needs_waiting_falls_back() {
        // Nothing sent yet, then half a head: the dispatch task's job.
        let (d, rx) = dispatcher(true);
        let (mut c, s) = pair().await;
        assert!(!d.hand_over_now(s.as_fd(), ConnMeta::Plain));
        c.write_all(b"GET /mcp HTTP/1.1\r\nHo")
            .await
            .expect("write");
        s.readable().await.expect("readable");
        assert!(!d.hand_over_now(s.as_fd(), ConnMeta::Plain));
        // Garbage is answered (400) by the dispatch task, not dropped here.
        let (_c2, s2) = sent(b"\x16\x03\x01garbage\r\n\r\n").await;
        assert!(!d.hand_over_now(s2.as_fd(), ConnMeta::Plain));
        // Nothing was passed.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), rx.recv())
                .await
                .is_err()
        );

        // No worker serving: the dispatch task waits for one, or answers 503.
        let (d, _rx) = dispatcher(false);
        let (_c, s) = sent(HEAD).await;
        assert!(!d.hand_over_now(s.as_fd(), ConnMeta::Plain));
        assert!(!d.hand_over_now(s.as_fd(), ConnMeta::Tls { index: 0 }));
    }

    #[tokio::test]
    async fn a_full_worker_queue_falls_back() {
        let (d, _rx) = dispatcher(true);
        let (_c, s) = sent(HEAD).await;
        // Nobody receives: the seqpacket queue fills, then the immediate
        // hand-over refuses instead of waiting.
        let mut sent = 0;
        while d.hand_over_now(s.as_fd(), ConnMeta::Plain) {
            sent += 1;
            assert!(sent < 100_000, "the queue never filled");
        }
        assert!(sent > 0);
    }

    #[test]
    fn rejections_are_well_formed_http() {
        for (why, code) in [
            (Reject::HeadTooLarge, 431),
            (Reject::Timeout, 408),
            (Reject::Malformed, 400),
            (Reject::Unavailable, 503),
        ] {
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
