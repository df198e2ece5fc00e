//! A small HTTP/1.1 client over `tokio::net::TcpStream`.
//!
//! Hand-written on purpose: the tests need byte-level control that a general client
//! hides (several requests on one keep-alive connection, a head that stalls half-way,
//! heads and bodies over the gateway's limits, seeing exactly when a connection closes).
//! Every read is bounded by [`IO_TIMEOUT`](crate::IO_TIMEOUT) so a hung peer fails the
//! test instead of hanging it.

use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, recv};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::IO_TIMEOUT;

/// Heads longer than this are a protocol error on the server's side.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// An HTTP request to be written as-is (plus `Host` and `Content-Length` when missing).
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn new(method: &str, path: &str) -> Self {
        Self {
            method: method.to_owned(),
            path: path.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn get(path: &str) -> Self {
        Self::new("GET", path)
    }

    pub fn post(path: &str, body: impl Into<Vec<u8>>) -> Self {
        Self::new("POST", path).body(body)
    }

    pub fn delete(path: &str) -> Self {
        Self::new("DELETE", path)
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Drops every header `name` (case-insensitive).
    pub fn without_header(mut self, name: &str) -> Self {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }

    /// Replaces every header `name` with one saying `value`.
    pub fn set_header(self, name: &str, value: &str) -> Self {
        self.without_header(name).header(name, value)
    }

    fn has_header(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    /// The request's bytes on the wire.
    pub fn to_bytes(&self, host: &str) -> Vec<u8> {
        let mut head = format!("{} {} HTTP/1.1\r\n", self.method, self.path);
        if !self.has_header("host") {
            head.push_str(&format!("Host: {host}\r\n"));
        }
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        let framed = self.has_header("content-length") || self.has_header("transfer-encoding");
        if !framed && (!self.body.is_empty() || self.method == "POST") {
            head.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

/// A complete HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The media type of `Content-Type`, lowercased, without parameters.
    pub fn media_type(&self) -> Option<String> {
        self.header("content-type").map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("response body is not JSON: {:?}", self.text()))
    }

    /// Whether the server announced it will close the connection after this response.
    pub fn closes_connection(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
    }
}

/// How a connection ended, as seen by [`HttpConn::wait_closed`].
#[derive(Debug)]
pub struct Closed {
    /// Bytes received before the end (for example a 408 response).
    pub received: Vec<u8>,
    /// True if it ended with a reset rather than an orderly FIN.
    pub reset: bool,
}

/// One client connection. Requests on it are sent one after another (no pipelining).
#[derive(Debug)]
pub struct HttpConn {
    stream: TcpStream,
    host: String,
    buf: Vec<u8>,
    timeout: Duration,
}

impl HttpConn {
    pub async fn connect(addr: SocketAddr) -> Result<Self> {
        let stream = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
            .await
            .with_context(|| format!("connecting to {addr}: timed out"))?
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            host: addr.to_string(),
            buf: Vec::new(),
            timeout: IO_TIMEOUT,
        })
    }

    /// The `Host` this connection's requests carry by default (the address it
    /// connected to, as a client would).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Writes raw bytes: the test controls exactly what the server sees.
    pub async fn write_raw(&mut self, bytes: &[u8]) -> Result<()> {
        tokio::time::timeout(self.timeout, self.stream.write_all(bytes))
            .await
            .context("write timed out")?
            .context("write failed")?;
        Ok(())
    }

    /// Sends one request and reads its response.
    pub async fn send(&mut self, request: &Request) -> Result<Response> {
        let bytes = request.to_bytes(&self.host);
        self.write_raw(&bytes).await?;
        self.read_response(request.method == "HEAD")
            .await
            .with_context(|| format!("{} {}", request.method, request.path))
    }

    /// Whether the peer has closed (or reset) this connection while it was idle. Checked
    /// before reusing a kept-alive connection; it never consumes data.
    pub fn peer_closed(&self) -> bool {
        let mut probe = [0u8; 1];
        match recv(
            self.stream.as_raw_fd(),
            &mut probe,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
        ) {
            Err(Errno::EAGAIN) => false,
            // Data nobody asked for also makes the connection unusable for a next request.
            Ok(_) | Err(_) => true,
        }
    }

    /// Reads one response (skipping 1xx interim responses).
    pub async fn read_response(&mut self, head_request: bool) -> Result<Response> {
        loop {
            let mut response = self.read_head().await?;
            if (100..200).contains(&response.status) && response.status != 101 {
                continue;
            }
            if head_request || response.status == 204 || response.status == 304 {
                return Ok(response);
            }
            response.body = self.read_body(&response).await?;
            return Ok(response);
        }
    }

    /// Reads a response head only (the returned body is empty), so that a test can act
    /// while a stream is open and read its body with [`Self::read_body`] later.
    pub async fn read_head(&mut self) -> Result<Response> {
        loop {
            if !self.buf.is_empty() {
                let mut slots = [httparse::EMPTY_HEADER; 64];
                let mut parsed = httparse::Response::new(&mut slots);
                match parsed.parse(&self.buf).context("malformed response head")? {
                    httparse::Status::Complete(len) => {
                        let status = parsed.code.context("response without status")?;
                        let headers = parsed
                            .headers
                            .iter()
                            .map(|h| {
                                (
                                    h.name.to_owned(),
                                    String::from_utf8_lossy(h.value).into_owned(),
                                )
                            })
                            .collect();
                        self.buf.drain(..len);
                        return Ok(Response {
                            status,
                            headers,
                            body: Vec::new(),
                        });
                    }
                    httparse::Status::Partial => {}
                }
                ensure!(
                    self.buf.len() <= MAX_RESPONSE_HEAD,
                    "response head too large"
                );
            }
            if self.fill().await? == 0 {
                bail!(
                    "connection closed before a complete response head ({} bytes received: {:?})",
                    self.buf.len(),
                    String::from_utf8_lossy(&self.buf)
                );
            }
        }
    }

    /// Reads the body that follows `head` to its end, as framed by its headers.
    pub async fn read_body(&mut self, head: &Response) -> Result<Vec<u8>> {
        if is_chunked(head) {
            let mut body = Vec::new();
            while let Some(piece) = self.read_piece(head).await? {
                body.extend(piece);
            }
            return Ok(body);
        }
        if let Some(len) = head.header("content-length") {
            let len: usize = len.trim().parse().context("bad Content-Length")?;
            return self.take_exact(len).await;
        }
        // Neither framing: the body runs to the end of the connection.
        while self.fill().await? > 0 {}
        Ok(std::mem::take(&mut self.buf))
    }

    /// Reads the next piece of an open body, as framed by `head`: one chunk of a chunked
    /// body (`None` after the last), or whatever arrived of an unframed one (`None` at
    /// the end of the connection). For reading a stream while it is still open.
    pub async fn read_piece(&mut self, head: &Response) -> Result<Option<Vec<u8>>> {
        if !is_chunked(head) {
            if self.buf.is_empty() && self.fill().await? == 0 {
                return Ok(None);
            }
            return Ok(Some(std::mem::take(&mut self.buf)));
        }
        let line = self.take_line().await?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .with_context(|| format!("bad chunk size line {line:?}"))?;
        if size == 0 {
            while !self.take_line().await?.is_empty() {}
            return Ok(None);
        }
        let data = self.take_exact(size).await?;
        ensure!(
            self.take_line().await?.is_empty(),
            "chunk not followed by CRLF"
        );
        Ok(Some(data))
    }

    async fn take_line(&mut self) -> Result<String> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..pos]).into_owned();
                self.buf.drain(..pos + 2);
                return Ok(line);
            }
            ensure!(
                self.fill().await? > 0,
                "connection closed inside a chunked body"
            );
        }
    }

    async fn take_exact(&mut self, len: usize) -> Result<Vec<u8>> {
        while self.buf.len() < len {
            ensure!(
                self.fill().await? > 0,
                "connection closed after {} of {len} body bytes",
                self.buf.len()
            );
        }
        Ok(self.buf.drain(..len).collect())
    }

    async fn fill(&mut self) -> Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(self.timeout, self.stream.read(&mut chunk))
            .await
            .with_context(|| format!("no data from the server within {:?}", self.timeout))?
            .context("read failed")?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Reads until the server ends the connection, failing if it is still open after
    /// `within`.
    pub async fn wait_closed(&mut self, within: Duration) -> Result<Closed> {
        let deadline = Instant::now() + within;
        let mut received = std::mem::take(&mut self.buf);
        let mut chunk = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.stream.read(&mut chunk)).await {
                Err(_) => bail!(
                    "connection still open after {within:?} (received {:?})",
                    String::from_utf8_lossy(&received)
                ),
                Ok(Ok(0)) => {
                    return Ok(Closed {
                        received,
                        reset: false,
                    });
                }
                Ok(Ok(n)) => received.extend_from_slice(&chunk[..n]),
                Ok(Err(_)) => {
                    return Ok(Closed {
                        received,
                        reset: true,
                    });
                }
            }
        }
    }
}

/// Parses the status code of a raw response (for answers read with
/// [`HttpConn::wait_closed`]).
pub fn status_of(raw: &[u8]) -> Option<u16> {
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut slots);
    parsed.parse(raw).ok()?;
    parsed.code
}

fn is_chunked(head: &Response) -> bool {
    head.header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
}

impl HttpConn {
    /// Like [`HttpConn::connect`], from the local address `from` (another loopback
    /// address, so that a test can be a second client host).
    pub async fn connect_from(from: std::net::IpAddr, addr: SocketAddr) -> Result<Self> {
        let socket = match from {
            std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket
            .bind(SocketAddr::new(from, 0))
            .with_context(|| format!("binding to {from}"))?;
        let stream = tokio::time::timeout(IO_TIMEOUT, socket.connect(addr))
            .await
            .with_context(|| format!("connecting from {from} to {addr}: timed out"))?
            .with_context(|| format!("connecting from {from} to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            host: addr.to_string(),
            buf: Vec::new(),
            timeout: IO_TIMEOUT,
        })
    }
}
