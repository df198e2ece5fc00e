use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

fn headers() -> HeaderBlock {
    let mut h = http::HeaderMap::new();
    h.insert("host", http::HeaderValue::from_static("test"));
    HeaderBlock::new(&h)
}

fn request(headers: &HeaderBlock, n: u32) -> Outgoing<'_> {
    Outgoing {
        method: &Method::POST,
        path: "/mcp",
        headers,
        extra: b"",
        body: Bytes::from(format!("{{\"n\":{n}}}")),
    }
}

fn pool_for(addr: SocketAddr, connect_timeout: Duration) -> ConnPool {
    let uri: Uri = format!("http://{addr}/mcp").parse().expect("uri");
    ConnPool::new(&uri, connect_timeout, None).expect("pool")
}

async fn body_of(resp: Response<UpstreamBody>) -> Bytes {
    use http_body_util::BodyExt;
    resp.into_body().collect().await.expect("body").to_bytes()
}

/// Read one request head and its small body (the tests' bodies fit one read).
async fn read_request(conn: &mut TcpStream) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    let mut have = 0;
    loop {
        let n = conn.read(&mut buf[have..]).await.ok()?;
        if n == 0 {
            return None;
        }
        have += n;
        let text = String::from_utf8_lossy(&buf[..have]).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if have >= end + 4 + len {
                return Some(text);
            }
        }
    }
}

#[tokio::test]
async fn reuses_one_connection_for_sequential_requests() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.expect("accept");
        let mut served = 0;
        while read_request(&mut conn).await.is_some() {
            conn.write_all(ANSWER).await.expect("answer");
            served += 1;
        }
        // Only one connection was ever opened: a second accept would
        // block, so report what this one carried.
        served
    });
    let pool = pool_for(addr, Duration::from_secs(5));
    let h = headers();
    for n in 0..5 {
        let resp = pool.send(request(&h, n)).await.expect("send");
        assert_eq!(body_of(resp).await, "ok");
    }
    assert_eq!(pool.pooled(), 1);
    drop(pool);
    assert_eq!(server.await.expect("server"), 5);
}

#[tokio::test]
async fn a_chunked_answer_in_pieces_streams_and_frees_its_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (go_tx, mut go_rx) = tokio::sync::mpsc::channel::<()>(1);
    let server = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.expect("accept");
        read_request(&mut conn).await.expect("first");
        conn.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel")
            .await
            .expect("head");
        // The rest only once the client has taken the first bytes.
        go_rx.recv().await.expect("go");
        for piece in [&b"lo\r"[..], b"\n6\r\n world\r\n0\r\n", b"\r\n"] {
            conn.write_all(piece).await.expect("piece");
            conn.flush().await.expect("flush");
        }
        read_request(&mut conn)
            .await
            .expect("second on the same connection");
        conn.write_all(ANSWER).await.expect("answer");
    });
    let pool = pool_for(addr, Duration::from_secs(5));
    let h = headers();
    let mut body = pool.send(request(&h, 1)).await.expect("send").into_body();
    use http_body_util::BodyExt;
    let first = body
        .frame()
        .await
        .expect("frame")
        .expect("ok")
        .into_data()
        .expect("data");
    assert_eq!(first, "hel");
    assert_eq!(pool.pooled(), 0, "busy while its body is read");
    go_tx.send(()).await.expect("go");
    let rest = body.collect().await.expect("rest").to_bytes();
    assert_eq!(rest, "lo world");
    assert_eq!(pool.pooled(), 1, "back once the body ended");
    let resp = pool.send(request(&h, 2)).await.expect("second");
    assert_eq!(body_of(resp).await, "ok");
    server.await.expect("server");
}

#[tokio::test]
async fn a_truncated_answer_is_an_error_and_its_connection_is_not_reused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let (mut first, _) = listener.accept().await.expect("accept");
        read_request(&mut first).await.expect("first");
        first
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
            .await
            .expect("partial");
        drop(first);
        let (mut second, _) = listener.accept().await.expect("a new connection");
        read_request(&mut second).await.expect("second");
        second.write_all(ANSWER).await.expect("answer");
    });
    let pool = pool_for(addr, Duration::from_secs(5));
    let h = headers();
    let resp = pool.send(request(&h, 1)).await.expect("head");
    use http_body_util::BodyExt;
    let err = resp.into_body().collect().await.expect_err("truncated");
    assert!(matches!(err, BodyError::Truncated), "{err:?}");
    assert_eq!(pool.pooled(), 0);
    let resp = pool.send(request(&h, 2)).await.expect("second");
    assert_eq!(body_of(resp).await, "ok");
    server.await.expect("server");
}

#[tokio::test]
async fn interim_heads_are_skipped_and_close_or_extra_bytes_end_reuse() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        // 1: an interim head, then an answer that closes the connection.
        let (mut a, _) = listener.accept().await.expect("accept a");
        read_request(&mut a).await.expect("first");
        a.write_all(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok")
            .await
            .expect("answer");
        // 2: on a new connection, an answer followed by bytes nobody asked for.
        let (mut b, _) = listener.accept().await.expect("accept b");
        read_request(&mut b).await.expect("second");
        b.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n")
            .await
            .expect("answer");
        // 3: so a third connection.
        let (mut c, _) = listener.accept().await.expect("accept c");
        read_request(&mut c).await.expect("third");
        c.write_all(ANSWER).await.expect("answer");
        (a, b, c)
    });
    let pool = pool_for(addr, Duration::from_secs(5));
    let h = headers();
    for n in 0..3 {
        // A connection wrongly reused would wait for an answer that
        // never comes: bounded, so that fails instead of hanging.
        let exchange = async {
            let resp = pool.send(request(&h, n)).await.expect("send");
            assert_eq!(resp.status(), http::StatusCode::OK);
            body_of(resp).await
        };
        let body = tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .expect("answered on a fresh connection");
        assert_eq!(body, "ok");
    }
    assert_eq!(pool.pooled(), 1, "only the third connection is kept");
    drop(server.await.expect("server"));
}

#[tokio::test]
async fn idle_connections_the_upstream_closed_are_released_from_the_old_end() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (finish_a, finish_a_rx) = tokio::sync::oneshot::channel::<()>();
    let (close_b, close_b_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        // A: its answer's body is held back until the client has opened B.
        let (mut a, _) = listener.accept().await.expect("accept a");
        read_request(&mut a).await.expect("request on a");
        a.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\no")
            .await
            .expect("head on a");
        let (mut b, _) = listener.accept().await.expect("accept b");
        read_request(&mut b).await.expect("request on b");
        b.write_all(ANSWER).await.expect("answer on b");
        finish_a_rx.await.expect("finish a");
        a.write_all(b"k").await.expect("rest on a");
        // B went back to the pool first (the old end): the upstream closes it.
        close_b_rx.await.expect("close b");
        drop(b);
        read_request(&mut a).await.expect("third request, on a");
        a.write_all(ANSWER).await.expect("answer on a");
        a
    });
    let pool = pool_for(addr, Duration::from_secs(5));
    let h = headers();
    let held = pool.send(request(&h, 1)).await.expect("a");
    let resp = pool.send(request(&h, 2)).await.expect("b");
    assert_eq!(body_of(resp).await, "ok");
    finish_a.send(()).expect("finish a");
    assert_eq!(body_of(held).await, "ok");
    assert_eq!(pool.pooled(), 2);
    close_b.send(()).expect("close b");
    // Until the runtime has seen B's end.
    loop {
        let seen = pool.shared.lock().front().is_some_and(|i| {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            i.conn.io.tcp().poll_read_ready(&mut cx).is_ready()
        });
        if seen {
            break;
        }
        tokio::task::yield_now().await;
    }
    let resp = pool.send(request(&h, 3)).await.expect("third");
    assert_eq!(body_of(resp).await, "ok");
    assert_eq!(pool.pooled(), 1, "the closed connection was let go");
    drop(server.await.expect("server"));
}

#[tokio::test]
async fn a_host_name_is_resolved_and_each_address_tried() {
    // Only IPv4 listens: where `localhost` also resolves to ::1, that
    // address is refused first and the next one is tried.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.expect("accept");
        let req = read_request(&mut conn).await.expect("request");
        conn.write_all(ANSWER).await.expect("answer");
        req
    });
    let uri: Uri = format!("http://localhost:{port}/mcp").parse().expect("uri");
    let pool = ConnPool::new(&uri, Duration::from_secs(5), None).expect("pool");
    let h = headers();
    assert!(matches!(pool.shared.target, Target::Name { .. }));
    let resp = pool.send(request(&h, 1)).await.expect("send");
    assert_eq!(body_of(resp).await, "ok");
    assert!(
        server
            .await
            .expect("server")
            .starts_with("POST /mcp HTTP/1.1")
    );
}

#[tokio::test]
async fn a_get_stream_keeps_its_connection_to_itself() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        read_request(&mut stream).await.expect("GET");
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            .await
            .expect("stream head");
        let (mut post, _) = listener.accept().await.expect("accept");
        read_request(&mut post).await.expect("POST");
        post.write_all(ANSWER).await.expect("answer");
        (stream, post)
    });
    let pool = pool_for(addr, Duration::from_secs(5));
    let h = headers();
    let get = Outgoing {
        method: &Method::GET,
        path: "/mcp",
        headers: &h,
        extra: b"",
        body: Bytes::new(),
    };
    let stream = pool.send(get).await.expect("GET");
    assert_eq!(pool.pooled(), 0);
    let resp = pool.send(request(&h, 1)).await.expect("POST");
    assert_eq!(body_of(resp).await, "ok");
    assert_eq!(pool.pooled(), 1);
    drop((stream, server.await.expect("server")));
}

#[tokio::test]
async fn a_connection_idle_too_long_is_closed_not_reused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let (mut first, _) = listener.accept().await.expect("accept");
        read_request(&mut first).await.expect("request");
        first.write_all(ANSWER).await.expect("answer");
        let (mut second, _) = listener.accept().await.expect("accept");
        read_request(&mut second).await.expect("request");
        second.write_all(ANSWER).await.expect("answer");
        // The pool let go of the first connection: hyper closes it.
        read_request(&mut first).await.is_none()
    });
    let mut pool = pool_for(addr, Duration::from_secs(5));
    let h = headers();
    // Every pooled connection is already too old at the next checkout.
    Arc::get_mut(&mut pool.shared)
        .expect("unshared")
        .idle_timeout = Duration::ZERO;
    for n in 0..2 {
        let resp = pool.send(request(&h, n)).await.expect("send");
        assert_eq!(body_of(resp).await, "ok");
    }
    assert!(
        server.await.expect("server"),
        "the idle connection stayed open"
    );
}

#[tokio::test]
async fn a_connection_the_upstream_closed_is_replaced() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(async move {
        // First connection: one answer, then the upstream closes it
        // while it is idle in the pool.
        let (mut first, _) = listener.accept().await.expect("accept");
        read_request(&mut first).await.expect("request");
        first.write_all(ANSWER).await.expect("answer");
        drop(first);
        let _ = closed_tx.send(());
        let (mut second, _) = listener.accept().await.expect("accept");
        let req = read_request(&mut second).await.expect("request");
        second.write_all(ANSWER).await.expect("answer");
        req
    });
    let pool = pool_for(addr, Duration::from_secs(5));
    let h = headers();
    let resp = pool.send(request(&h, 1)).await.expect("first");
    assert_eq!(body_of(resp).await, "ok");
    closed_rx.await.expect("server closed");
    pool.wait_until_closed().await;
    let resp = pool.send(request(&h, 2)).await.expect("second");
    assert_eq!(body_of(resp).await, "ok");
    let second = server.await.expect("server");
    assert!(second.ends_with("{\"n\":2}"), "{second}");
}

#[tokio::test]
async fn a_request_the_upstream_read_is_not_sent_again() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.expect("accept");
        read_request(&mut conn).await.expect("first");
        conn.write_all(ANSWER).await.expect("answer");
        // Read the second request, then fail without answering.
        read_request(&mut conn).await.expect("second");
        drop(conn);
        listener
    });
    let pool = pool_for(addr, Duration::from_secs(5));
    let h = headers();
    let resp = pool.send(request(&h, 1)).await.expect("first");
    assert_eq!(body_of(resp).await, "ok");
    let err = pool.send(request(&h, 2)).await.expect_err("no answer");
    assert!(matches!(err, ConnError::Closed), "{err:?}");
    // A retry would have connected before `send` returned, so it would
    // wait in the accept queue now.
    let listener = server.await.expect("server");
    let pending =
        std::future::poll_fn(|cx| std::task::Poll::Ready(listener.poll_accept(cx).is_ready()))
            .await;
    assert!(!pending, "the request was sent again on a new connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stray_bytes_and_unfit_marks_keep_a_connection_out_of_use() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stray_sent, stray_rx) = std::sync::mpsc::channel::<()>();
    let (pooled_tx, pooled_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        // A: one answer, then an unsolicited second one once the
        // connection is back in the pool.
        let (mut a, _) = listener.accept().await.expect("accept a");
        read_request(&mut a).await.expect("first");
        a.write_all(ANSWER).await.expect("answer");
        pooled_rx.await.expect("pooled");
        a.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstray")
            .await
            .expect("stray");
        let _ = stray_sent.send(());
        // B: answers once; the client then marks it unfit.
        let (mut b, _) = listener.accept().await.expect("accept b");
        read_request(&mut b).await.expect("second");
        b.write_all(ANSWER).await.expect("answer");
        // C: the third request.
        let (mut c, _) = listener.accept().await.expect("accept c");
        read_request(&mut c).await.expect("third");
        c.write_all(ANSWER).await.expect("answer");
        (a, b, c)
    });
    let pool = pool_for(addr, Duration::from_secs(5));
    let h = headers();
    let resp = pool.send(request(&h, 1)).await.expect("first");
    assert_eq!(body_of(resp).await, "ok");
    assert_eq!(pool.pooled(), 1);
    pooled_tx.send(()).expect("tell the server");
    // Wait on a std channel, blocking this thread: whether or not the
    // runtime has seen the stray bytes arrive, the kernel has them.
    tokio::task::block_in_place(|| stray_rx.recv().expect("stray sent"));
    let resp = pool.send(request(&h, 2)).await.expect("second");
    let unfit = resp.body().unfit();
    assert_eq!(body_of(resp).await, "ok", "not the stray answer");
    assert_eq!(pool.pooled(), 1);
    unfit.set();
    let resp = pool.send(request(&h, 3)).await.expect("third");
    assert_eq!(body_of(resp).await, "ok");
    drop(server.await.expect("server"));
}

#[tokio::test]
async fn connect_timeout_and_refusal_are_errors() {
    // A loopback listener whose accept queue is full: Linux drops the
    // SYNs of further connects, which then hang (tests send nothing to
    // any address beyond loopback).
    let full =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    full.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    full.listen(0).expect("listen");
    let blackhole = full.local_addr().expect("addr").as_socket().expect("inet");
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(s) = std::net::TcpStream::connect_timeout(&blackhole, Duration::from_millis(200))
        {
            fillers.push(s);
        }
    }
    let pool = pool_for(blackhole, Duration::from_millis(50));
    let h = headers();
    match pool.send(request(&h, 1)).await {
        Err(ConnError::ConnectTimeout { addr, timeout_ms }) => {
            assert_eq!((addr, timeout_ms), (blackhole, 50));
        }
        other => panic!("expected a connect timeout, got {other:?}"),
    }
    drop((fillers, full));

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let pool = pool_for(addr, Duration::from_secs(5));
    let h = headers();
    let err = pool.send(request(&h, 1)).await.expect_err("refused");
    assert!(matches!(err, ConnError::Connect { .. }), "{err:?}");
}

fn client_config() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
    )
}

#[test]
fn the_scheme_and_the_tls_settings_go_together() {
    let t = Duration::from_secs(1);
    let https: Uri = "https://mcp.example.com/mcp".parse().expect("uri");
    let http: Uri = "http://mcp.example.com/mcp".parse().expect("uri");
    let pool = ConnPool::new(&https, t, Some(client_config())).expect("https pool");
    assert_eq!(
        pool.shared.target,
        Target::Name {
            host: "mcp.example.com".into(),
            port: 443
        }
    );
    assert!(ConnPool::new(&https, t, None).is_err());
    assert!(ConnPool::new(&http, t, Some(client_config())).is_err());
    let ip: Uri = "https://[::1]:8443/mcp".parse().expect("uri");
    ConnPool::new(&ip, t, Some(client_config())).expect("an IP literal is a server name");
}

/// A server that is not TLS (or an unknown CA, or a wrong name) fails the
/// handshake with `ConnError::Tls`, naming the host; nothing is pooled.
#[tokio::test]
async fn a_failed_handshake_is_a_tls_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.expect("accept");
        // The ClientHello, answered with plaintext HTTP.
        let mut hello = [0u8; 512];
        let _ = conn.read(&mut hello).await;
        let _ = conn.write_all(ANSWER).await;
        let _ = conn.read(&mut hello).await;
    });
    let uri: Uri = format!("https://{addr}/mcp").parse().expect("uri");
    let pool = ConnPool::new(&uri, Duration::from_secs(5), Some(client_config())).expect("pool");
    let h = headers();
    let err = pool.send(request(&h, 1)).await.expect_err("not TLS");
    assert!(matches!(err, ConnError::Tls { .. }), "{err}");
    assert!(
        err.to_string().contains("TLS handshake with 127.0.0.1"),
        "{err}"
    );
    assert_eq!(pool.pooled(), 0);
    server.abort();
}
