//! The connection loop against a client speaking raw bytes over an
//! in-memory pipe, with a handler that answers by path.

use std::sync::Mutex;

use http::HeaderValue;
use http::header::CONNECTION;
use http_body_util::BodyExt;
use tokio::io::{DuplexStream, duplex};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::*;
use crate::http::body;
use crate::http::wire::{Parsed, parse_head};

const WAIT: Duration = Duration::from_secs(10);

struct Fake {
    limits: Limits,
    /// What each request's body was: its bytes, or `None` when too large.
    seen: Mutex<Vec<(String, Option<Bytes>)>>,
    /// Streams: the test holds the sender.
    streams: Mutex<Option<mpsc::Receiver<Bytes>>>,
}

impl Handler for Fake {
    fn limits(&self) -> Limits {
        self.limits
    }

    async fn call(&self, req: Request<ReqBody>) -> Response<Body> {
        let path = req.uri().path().to_owned();
        let body = match req.into_body() {
            ReqBody::Whole(b) => Some(b.unwrap_or_default()),
            ReqBody::TooLarge { .. } => None,
        };
        self.seen.lock().unwrap().push((path.clone(), body.clone()));
        let mut resp = match path.as_str() {
            "/stream" => {
                let rx = self
                    .streams
                    .lock()
                    .unwrap()
                    .take()
                    .expect("one stream per test");
                Response::new(body::channel(rx))
            }
            "/none" => {
                let mut r = Response::new(body::empty());
                *r.status_mut() = StatusCode::NO_CONTENT;
                r
            }
            _ => Response::new(body::full(
                body.unwrap_or_else(|| Bytes::from_static(b"too large")),
            )),
        };
        if path == "/close" {
            resp.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// A handler whose `/stream` answer is fed by the returned sender.
fn fake_streaming() -> (Arc<Fake>, mpsc::Sender<Bytes>) {
    let h = fake(limits());
    let (tx, rx) = mpsc::channel(4);
    *h.streams.lock().unwrap() = Some(rx);
    (h, tx)
}

fn fake(limits: Limits) -> Arc<Fake> {
    Arc::new(Fake {
        limits,
        seen: Mutex::new(Vec::new()),
        streams: Mutex::new(None),
    })
}

use std::sync::Arc;

fn limits() -> Limits {
    Limits {
        header_timeout: Duration::from_secs(5),
        body_timeout: Duration::from_secs(5),
        max_head: 4096,
        max_body: 64,
    }
}

struct Server {
    client: DuplexStream,
    buf: BytesMut,
    closing: watch::Sender<bool>,
    task: JoinHandle<Result<(), ServeError>>,
}

fn start(handler: Arc<Fake>) -> Server {
    let (client, server) = duplex(1 << 20);
    let (closing, rx) = watch::channel(false);
    let task = tokio::spawn(async move { serve(server, &*handler, rx).await });
    Server {
        client,
        buf: BytesMut::new(),
        closing,
        task,
    }
}

/// One answer: head, then the body decoded by its framing.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

fn all_headers(raw: &[u8]) -> http::HeaderMap {
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut slots);
    resp.parse(raw).unwrap();
    resp.headers
        .iter()
        .map(|h| {
            (
                http::HeaderName::from_bytes(h.name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(h.value).unwrap(),
            )
        })
        .collect()
}

impl Server {
    async fn send(&mut self, raw: &[u8]) {
        self.client.write_all(raw).await.unwrap();
    }

    async fn fill(&mut self) -> usize {
        self.buf.reserve(4096);
        tokio::time::timeout(WAIT, self.client.read_buf(&mut self.buf))
            .await
            .expect("the server answers in time")
            .unwrap()
    }

    async fn answer(&mut self) -> Answer {
        let (head, headers) = loop {
            match parse_head(&self.buf).unwrap() {
                Parsed::Head(head, len) => {
                    // Every header as sent, the framing ones included
                    // (`parse_head` keeps only end-to-end ones).
                    let headers = all_headers(&self.buf[..len]);
                    self.buf.advance(len);
                    break (head, headers);
                }
                Parsed::Interim(len) => self.buf.advance(len),
                Parsed::Partial => assert!(self.fill().await > 0, "closed before a head"),
            }
        };
        let mut body = Vec::new();
        match head.framing {
            wire::Framing::Empty => {}
            wire::Framing::Length(n) => {
                while self.buf.len() < n as usize {
                    assert!(self.fill().await > 0, "closed inside a body");
                }
                body.extend_from_slice(&self.buf.split_to(n as usize));
            }
            wire::Framing::Chunked => {
                let mut dec = Chunked::Size;
                loop {
                    match dec.step(&mut self.buf).unwrap() {
                        Step::Data(d) => body.extend_from_slice(&d),
                        Step::Need => assert!(self.fill().await > 0, "closed inside a body"),
                        Step::Done => break,
                    }
                }
            }
            wire::Framing::UntilClose => {
                while self.fill().await > 0 {}
                body.extend_from_slice(&self.buf.split());
            }
        }
        Answer {
            status: head.status,
            headers,
            body,
        }
    }

    /// The server closed its side (after whatever was buffered).
    async fn closed(&mut self) -> bool {
        loop {
            if self.fill().await == 0 {
                return true;
            }
        }
    }

    async fn end(self) -> Result<(), ServeError> {
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the connection ends")
            .unwrap()
    }
}

#[tokio::test]
async fn pipelined_requests_get_answers_in_order_on_one_connection() {
    let h = fake(limits());
    let mut s = start(h.clone());
    s.send(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        .await;
    let a = s.answer().await;
    assert_eq!((a.status, &a.body[..]), (StatusCode::OK, &b"hello"[..]));
    assert_eq!(a.headers["content-length"], "5");
    assert!(a.headers.contains_key("date") && !a.headers.contains_key("connection"));
    let b = s.answer().await;
    assert_eq!(&b.body[..], b"abc");
    // The body arrives in pieces, after the head.
    s.send(b"POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nab")
        .await;
    tokio::task::yield_now().await;
    s.send(b"cdef").await;
    assert_eq!(&s.answer().await.body[..], b"abcdef");
    drop(s.client);
    assert!(
        tokio::time::timeout(WAIT, s.task)
            .await
            .unwrap()
            .unwrap()
            .is_ok()
    );
    let seen: Vec<_> = h
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|(p, _)| p.clone())
        .collect();
    assert_eq!(seen, ["/a", "/b", "/c"]);
}

#[tokio::test]
async fn chunked_bodies_are_read_whole_and_streams_are_sent_chunked() {
    let (h, tx) = fake_streaming();
    let mut s = start(h.clone());
    s.send(b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nT: 1\r\n\r\n")
        .await;
    assert_eq!(&s.answer().await.body[..], b"abcde");
    s.send(b"GET /stream HTTP/1.1\r\n\r\n").await;
    tx.send(Bytes::from_static(b"event one")).await.unwrap();
    // The first event arrives while the stream is still open.
    while !s.buf.windows(9).any(|w| w == b"event one") {
        assert!(s.fill().await > 0);
    }
    tx.send(Bytes::from_static(b", two")).await.unwrap();
    drop(tx);
    let a = s.answer().await;
    assert_eq!(a.headers["transfer-encoding"], "chunked");
    assert_eq!(&a.body[..], b"event one, two");
    // Still kept alive.
    s.send(b"POST /a HTTP/1.1\r\nContent-Length: 1\r\n\r\nz")
        .await;
    assert_eq!(&s.answer().await.body[..], b"z");
}

#[tokio::test]
async fn expect_continue_gets_a_go_before_the_body() {
    let mut s = start(fake(limits()));
    s.send(b"POST /a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
        .await;
    while !s.buf.starts_with(b"HTTP/1.1 100 Continue\r\n\r\n") {
        assert!(s.fill().await > 0);
    }
    s.send(b"body").await;
    let a = s.answer().await;
    assert_eq!((a.status, &a.body[..]), (StatusCode::OK, &b"body"[..]));
}

#[tokio::test]
async fn a_body_over_the_limit_is_not_read_and_the_connection_closes_after_the_answer() {
    let h = fake(limits());
    let mut s = start(h.clone());
    // Expect: the answer comes without the client ever sending the body.
    s.send(b"POST /big HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 100\r\n\r\n")
        .await;
    let a = s.answer().await;
    assert_eq!(&a.body[..], b"too large");
    assert_eq!(a.headers["connection"], "close");
    // The client's body, sent late, is read and dropped, then the end.
    s.send(&[b'x'; 100]).await;
    drop(s.client);
    assert!(
        tokio::time::timeout(WAIT, s.task)
            .await
            .unwrap()
            .unwrap()
            .is_ok()
    );
    assert_eq!(h.seen.lock().unwrap()[0], ("/big".to_owned(), None));

    // Chunked over the limit as well.
    let h = fake(limits());
    let mut s = start(h.clone());
    let big = format!(
        "POST /big HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n41\r\n{}\r\n0\r\n\r\n",
        "y".repeat(65)
    );
    s.send(big.as_bytes()).await;
    assert_eq!(&s.answer().await.body[..], b"too large");
    assert!(s.closed().await);
}

#[tokio::test]
async fn refused_heads_get_their_status_and_a_close() {
    for (raw, status) in [
        (
            &b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..],
            StatusCode::BAD_REQUEST,
        ),
        (
            b"GET / HTTP/3.0\r\n\r\n",
            StatusCode::HTTP_VERSION_NOT_SUPPORTED,
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let mut s = start(fake(limits()));
        s.send(raw).await;
        let a = s.answer().await;
        assert_eq!(a.status, status, "{:?}", String::from_utf8_lossy(raw));
        assert_eq!(a.headers["connection"], "close");
        assert!(s.closed().await);
        assert!(s.end().await.is_ok());
    }
    let mut s = start(fake(limits()));
    s.send(format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(5000)).as_bytes())
        .await;
    assert_eq!(
        s.answer().await.status,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
}

#[tokio::test]
async fn a_slow_head_gets_408_and_an_idle_connection_just_closes() {
    let quick = Limits {
        header_timeout: Duration::from_millis(200),
        ..limits()
    };
    let mut s = start(fake(quick));
    s.send(b"GET / HTTP/1.1\r\n").await;
    assert_eq!(s.answer().await.status, StatusCode::REQUEST_TIMEOUT);
    assert!(s.closed().await);

    let mut s = start(fake(quick));
    s.send(b"POST /a HTTP/1.1\r\nContent-Length: 1\r\n\r\nq")
        .await;
    assert_eq!(&s.answer().await.body[..], b"q");
    assert!(s.closed().await, "an idle keep-alive connection times out");
    assert!(s.buf.is_empty(), "without an answer");
}

#[tokio::test]
async fn http10_closes_unless_asked_and_streams_until_close() {
    let mut s = start(fake(limits()));
    s.send(b"POST /a HTTP/1.0\r\nContent-Length: 2\r\n\r\nok")
        .await;
    let a = s.answer().await;
    assert_eq!(
        (&a.body[..], a.headers["connection"].as_bytes()),
        (&b"ok"[..], &b"close"[..])
    );
    assert!(s.closed().await);

    let mut s = start(fake(limits()));
    s.send(b"POST /a HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok")
        .await;
    assert_eq!(s.answer().await.headers["connection"], "keep-alive");
    let (h, tx) = fake_streaming();
    let mut s2 = start(h);
    s2.send(b"GET /stream HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await;
    tx.send(Bytes::from_static(b"data")).await.unwrap();
    drop(tx);
    let a = s2.answer().await;
    assert!(!a.headers.contains_key("transfer-encoding"));
    assert_eq!(&a.body[..], b"data");
    assert!(s2.end().await.is_ok());
}

#[tokio::test]
async fn answers_without_bodies_and_answers_that_close() {
    let mut s = start(fake(limits()));
    s.send(b"GET /none HTTP/1.1\r\n\r\nHEAD /a HTTP/1.1\r\n\r\nPOST /close HTTP/1.1\r\nContent-Length: 1\r\n\r\nc")
        .await;
    let none = s.answer().await;
    assert_eq!(none.status, StatusCode::NO_CONTENT);
    assert!(!none.headers.contains_key("content-length"));
    // HEAD: the length the body would have, and no body (the next answer
    // follows at once).
    let head = s.buf.clone();
    let text = String::from_utf8_lossy(&head);
    assert!(
        text.starts_with("HTTP/1.1 200 OK\r\n") && text.contains("content-length: 0\r\n"),
        "{text}"
    );
    let end = text.find("\r\n\r\n").unwrap() + 4;
    s.buf.advance(end);
    let close = s.answer().await;
    assert_eq!(
        (&close.body[..], close.headers["connection"].as_bytes()),
        (&b"c"[..], &b"close"[..])
    );
    assert!(s.closed().await);
}

#[tokio::test]
async fn closing_ends_idle_connections_and_busy_ones_after_their_answer() {
    let h = fake(limits());
    let mut s = start(h.clone());
    s.send(b"POST /a HTTP/1.1\r\nContent-Length: 1\r\n\r\na")
        .await;
    s.answer().await;
    s.closing.send(true).unwrap();
    assert!(s.closed().await);
    assert!(s.end().await.is_ok());

    let (h, tx) = fake_streaming();
    let mut s = start(h);
    s.send(b"GET /stream HTTP/1.1\r\n\r\n").await;
    tx.send(Bytes::from_static(b"e")).await.unwrap();
    while !s.buf.windows(1).any(|w| w == b"e") {
        assert!(s.fill().await > 0);
    }
    s.closing.send(true).unwrap();
    drop(tx);
    let a = s.answer().await;
    assert_eq!(&a.body[..], b"e");
    assert!(s.closed().await);
}

#[tokio::test]
async fn a_client_that_leaves_during_a_stream_ends_it() {
    let (h, tx) = fake_streaming();
    let mut s = start(h);
    s.send(b"GET /stream HTTP/1.1\r\n\r\n").await;
    tx.send(Bytes::from_static(b"e")).await.unwrap();
    s.fill().await;
    drop(s.client);
    // The body is dropped: its producer sees nobody reads any more.
    tokio::time::timeout(WAIT, tx.closed())
        .await
        .expect("the stream ends");
    let end = tokio::time::timeout(WAIT, s.task).await.unwrap().unwrap();
    assert!(matches!(end, Err(ServeError::ClientGone)), "{end:?}");
}

#[tokio::test]
async fn request_bodies_report_their_size_and_end() {
    let mut b = ReqBody::whole(Bytes::from_static(b"abc"));
    assert_eq!(b.size_hint().exact(), Some(3));
    assert_eq!(
        b.frame().await.unwrap().unwrap().into_data().unwrap(),
        "abc"
    );
    assert!(b.is_end_stream() && b.frame().await.is_none());
    let mut big = ReqBody::TooLarge { limit: 5 };
    assert!(big.frame().await.unwrap().is_err());
}

#[tokio::test]
async fn a_client_that_leaves_while_its_request_is_served_cancels_it() {
    struct Slow(Mutex<Option<tokio::sync::oneshot::Sender<()>>>);
    impl Handler for Slow {
        fn limits(&self) -> Limits {
            limits()
        }
        async fn call(&self, _req: Request<ReqBody>) -> Response<Body> {
            // Dropped with the future: the sender's drop is the signal.
            let _cancelled = self.0.lock().unwrap().take();
            std::future::pending().await
        }
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let handler = Arc::new(Slow(Mutex::new(Some(tx))));
    let (mut client, server) = duplex(4096);
    let (_closing, closing) = watch::channel(false);
    let h = handler.clone();
    let task = tokio::spawn(async move { serve(server, &*h, closing).await });
    client
        .write_all(b"GET /slow HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    while handler.0.lock().unwrap().is_some() {
        tokio::task::yield_now().await;
    }
    drop(client);
    assert!(
        tokio::time::timeout(WAIT, rx).await.unwrap().is_err(),
        "the call was dropped"
    );
    let end = tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    assert!(matches!(end, Err(ServeError::ClientGone)), "{end:?}");
}

/// Sends `head`, then one byte of body every 20 ms until the
/// server's answer has arrived or `bytes` were sent; then the answer.
async fn trickle(s: &mut Server, head: &[u8], bytes: usize) -> Answer {
    s.send(head).await;
    for _ in 0..bytes {
        // Pacing the client, not waiting for the server.
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Once the server has answered and closed, writes fail: fine.
        if s.client.write_all(b"a").await.is_err() {
            break;
        }
    }
    s.answer().await
}

#[tokio::test]
async fn a_body_that_trickles_in_gets_408_at_the_body_deadline() {
    let slow_body = Limits {
        body_timeout: Duration::from_millis(300),
        max_body: 1 << 20,
        ..limits()
    };
    // Every gap is well within the header timeout (5 s): only the deadline
    // for the whole body can end it.
    let mut s = start(fake(slow_body));
    let a = trickle(
        &mut s,
        b"POST /a HTTP/1.1\r\nContent-Length: 1000\r\n\r\nx",
        100,
    )
    .await;
    assert_eq!(a.status, StatusCode::REQUEST_TIMEOUT);
    assert_eq!(a.headers["connection"], "close");
    assert!(s.closed().await);
    assert!(s.end().await.is_ok());

    let mut s = start(fake(slow_body));
    let head = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\nx";
    let a = trickle(&mut s, head, 100).await;
    assert_eq!(a.status, StatusCode::REQUEST_TIMEOUT);
    assert!(s.closed().await);
}

#[tokio::test]
async fn a_body_that_stops_gets_408_after_the_idle_timeout() {
    let idle = Limits {
        header_timeout: Duration::from_millis(200),
        body_timeout: Duration::from_secs(60),
        ..limits()
    };
    let mut s = start(fake(idle));
    s.send(b"POST /a HTTP/1.1\r\nContent-Length: 10\r\n\r\nab")
        .await;
    assert_eq!(s.answer().await.status, StatusCode::REQUEST_TIMEOUT);
    assert!(s.closed().await);
}

#[tokio::test]
async fn a_body_that_keeps_coming_within_its_deadline_is_read_whole() {
    let lenient = Limits {
        body_timeout: Duration::from_secs(60),
        max_body: 1 << 20,
        ..limits()
    };
    let mut s = start(fake(lenient));
    let a = trickle(
        &mut s,
        b"POST /a HTTP/1.1\r\nContent-Length: 20\r\n\r\n",
        20,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(&a.body[..], &[b'a'; 20][..]);
}

#[test]
fn body_buffers_double_from_what_arrived_up_to_the_declared_length() {
    const MIB: usize = 1 << 20;
    assert_eq!(next_capacity(0, 4 * MIB), READ_CHUNK);
    assert_eq!(next_capacity(100, 4 * MIB), 100 + READ_CHUNK);
    assert_eq!(next_capacity(MIB, 4 * MIB), 2 * MIB);
    assert_eq!(next_capacity(3 * MIB, 4 * MIB), 4 * MIB);
    assert_eq!(next_capacity(10, 20), 20);
    // Lengths near the top of usize saturate instead of wrapping.
    assert_eq!(next_capacity(usize::MAX - 1, usize::MAX), usize::MAX);

    let mut buf = BytesMut::with_capacity(16);
    buf.extend_from_slice(&[1; 16]);
    grow(&mut buf, 4 * MIB);
    assert_eq!(&buf[..], &[1; 16][..]);
    assert!(buf.capacity() >= 16 + READ_CHUNK && buf.capacity() < MIB);
    let mut buf = BytesMut::from(&[2u8; 3000][..]);
    grow(&mut buf, 3500);
    assert!(
        buf.capacity() >= 3500 && buf.capacity() < 4096,
        "{}",
        buf.capacity()
    );
}

#[tokio::test]
async fn a_timeout_too_long_for_the_clock_is_no_deadline_not_a_panic() {
    assert!(after(Duration::MAX) > Instant::now() + Duration::from_secs(3600));
    let limits = Limits {
        header_timeout: Duration::MAX,
        body_timeout: Duration::MAX,
        ..limits()
    };
    let mut s = start(fake(limits));
    s.send(b"POST /a HTTP/1.1\r\nContent-Length: 2\r\n\r\no")
        .await;
    s.send(b"k").await;
    assert_eq!(&s.answer().await.body[..], b"ok");
}
