//! A minimal HTTP/1.1 client on `tokio::net::TcpStream`.
//!
//! It exists so that the load generator measures what it means: one request in flight
//! per connection, exactly the connections it opened (no pool that opens more or keeps
//! fewer), a new TCP connection per request when asked, `TCP_NODELAY` on every socket,
//! and request bytes written in one `write` as the caller rendered them. It reads
//! `Content-Length`, chunked and read-until-close bodies; it knows nothing of MCP
//! (`mcp.rs` renders requests and checks answers).

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// A response head larger than this is treated as malformed.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// A response body larger than this is treated as malformed (the answers benchmarked are
/// a few hundred bytes; this only bounds a runaway stream).
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// How much room is made in the read buffer before each read.
const READ_CHUNK: usize = 16 * 1024;

/// Why an exchange failed at the HTTP level.
#[derive(Debug)]
pub(crate) enum HttpError {
    /// Connecting, writing or reading failed.
    Io(std::io::Error),
    /// The peer closed the connection before the response was complete.
    Closed,
    /// The response could not be parsed as HTTP/1.1.
    Malformed(&'static str),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "i/o error: {e}"),
            Self::Closed => f.write_str("connection closed before the response was complete"),
            Self::Malformed(what) => write!(f, "malformed response: {what}"),
        }
    }
}

impl std::error::Error for HttpError {}

impl From<std::io::Error> for HttpError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

/// The media type of a response body, as far as MCP cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ContentKind {
    Json,
    EventStream,
    Other,
}

/// What the client keeps of a response head.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) status: u16,
    pub(crate) kind: ContentKind,
    /// `Mcp-Session-Id`, when present.
    pub(crate) session_id: Option<String>,
    /// The server will close the connection after this response.
    pub(crate) close: bool,
}

/// How the body of a response is delimited.
enum Framing {
    None,
    Length(usize),
    Chunked,
    UntilClose,
}

/// One HTTP/1.1 connection; one request at a time.
pub(crate) struct Conn {
    stream: TcpStream,
    /// Bytes read and not yet consumed.
    buf: Vec<u8>,
    /// The body of the last response (decoded when chunked).
    body: Vec<u8>,
}

impl Conn {
    /// Connects with `TCP_NODELAY` set.
    pub(crate) async fn connect(addr: SocketAddr) -> Result<Self, HttpError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(READ_CHUNK),
            body: Vec::with_capacity(READ_CHUNK),
        })
    }

    /// Writes one complete request and reads its response. The body stays readable
    /// through [`Conn::body`] until the next exchange.
    pub(crate) async fn exchange(&mut self, request: &[u8]) -> Result<Head, HttpError> {
        self.stream.write_all(request).await?;
        self.read_response().await
    }

    /// The body of the last response.
    pub(crate) fn body(&self) -> &[u8] {
        &self.body
    }

    /// After a `Connection: close` exchange: waits (bounded) for the server to close, so
    /// that the server, which closes first, holds the TIME_WAIT state and a long run of
    /// new connections does not exhaust the client's ephemeral ports. Returns whether
    /// the server closed in time.
    pub(crate) async fn wait_for_close(mut self, bound: Duration) -> bool {
        let mut scratch = [0u8; 256];
        matches!(
            tokio::time::timeout(bound, self.stream.read(&mut scratch)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    async fn fill(&mut self) -> Result<(), HttpError> {
        self.buf.reserve(READ_CHUNK);
        let n = self.stream.read_buf(&mut self.buf).await?;
        if n == 0 {
            return Err(HttpError::Closed);
        }
        Ok(())
    }

    async fn read_response(&mut self) -> Result<Head, HttpError> {
        let (head, head_len, framing) = loop {
            if !self.buf.is_empty()
                && let Some(parsed) = parse_head(&self.buf)?
            {
                break parsed;
            }
            if self.buf.len() > MAX_HEAD_BYTES {
                return Err(HttpError::Malformed("response head too large"));
            }
            self.fill().await?;
        };
        self.body.clear();
        let mut head = head;
        let consumed = match framing {
            Framing::None => head_len,
            Framing::Length(n) => {
                if n > MAX_BODY_BYTES {
                    return Err(HttpError::Malformed("body too large"));
                }
                while self.buf.len() < head_len + n {
                    self.fill().await?;
                }
                self.body
                    .extend_from_slice(&self.buf[head_len..head_len + n]);
                head_len + n
            }
            Framing::Chunked => self.read_chunked(head_len).await?,
            Framing::UntilClose => {
                loop {
                    if self.buf.len() - head_len > MAX_BODY_BYTES {
                        return Err(HttpError::Malformed("body too large"));
                    }
                    match self.fill().await {
                        Ok(()) => {}
                        Err(HttpError::Closed) => break,
                        Err(e) => return Err(e),
                    }
                }
                head.close = true;
                self.body.extend_from_slice(&self.buf[head_len..]);
                self.buf.len()
            }
        };
        self.buf.drain(..consumed);
        Ok(head)
    }

    /// Decodes a chunked body that starts at `pos` in the buffer; returns the number of
    /// buffer bytes it took (head included).
    async fn read_chunked(&mut self, mut pos: usize) -> Result<usize, HttpError> {
        loop {
            let Some(line_end) = find_crlf(&self.buf[pos..]) else {
                self.fill().await?;
                continue;
            };
            let size = parse_chunk_size(&self.buf[pos..pos + line_end])?;
            let data = pos + line_end + 2;
            if size == 0 {
                // Trailer fields, then an empty line.
                let mut at = data;
                loop {
                    match find_crlf(&self.buf[at..]) {
                        Some(0) => return Ok(at + 2),
                        Some(n) => at += n + 2,
                        None => self.fill().await?,
                    }
                }
            }
            if self.body.len() + size > MAX_BODY_BYTES {
                return Err(HttpError::Malformed("body too large"));
            }
            while self.buf.len() < data + size + 2 {
                self.fill().await?;
            }
            if &self.buf[data + size..data + size + 2] != b"\r\n" {
                return Err(HttpError::Malformed("chunk not followed by CRLF"));
            }
            self.body.extend_from_slice(&self.buf[data..data + size]);
            pos = data + size + 2;
        }
    }
}

/// Parses a complete response head, or returns `None` when more bytes are needed.
fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize, Framing)>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(HttpError::Malformed("unparsable head")),
    };
    let status = response.code.unwrap_or(0);
    let mut head = Head {
        status,
        kind: ContentKind::Other,
        session_id: None,
        close: response.version == Some(0),
    };
    let mut length = None;
    let mut chunked = false;
    for h in response.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let text =
                std::str::from_utf8(h.value).map_err(|_| HttpError::Malformed("content-length"))?;
            length = Some(
                text.trim()
                    .parse::<usize>()
                    .map_err(|_| HttpError::Malformed("content-length"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = contains_token(h.value, b"chunked");
        } else if name.eq_ignore_ascii_case("content-type") {
            head.kind = content_kind(h.value);
        } else if name.eq_ignore_ascii_case("connection") {
            if contains_token(h.value, b"close") {
                head.close = true;
            } else if contains_token(h.value, b"keep-alive") {
                head.close = false;
            }
        } else if name.eq_ignore_ascii_case("mcp-session-id") {
            head.session_id = std::str::from_utf8(h.value).ok().map(str::to_owned);
        }
    }
    let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::None
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    Ok(Some((head, head_len, framing)))
}

fn content_kind(value: &[u8]) -> ContentKind {
    let essence = value.split(|&b| b == b';').next().unwrap_or_default();
    let essence = essence.trim_ascii();
    if essence.eq_ignore_ascii_case(b"application/json") {
        ContentKind::Json
    } else if essence.eq_ignore_ascii_case(b"text/event-stream") {
        ContentKind::EventStream
    } else {
        ContentKind::Other
    }
}

fn contains_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

fn parse_chunk_size(line: &[u8]) -> Result<usize, HttpError> {
    let hex = line
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    let text = std::str::from_utf8(hex).map_err(|_| HttpError::Malformed("chunk size"))?;
    usize::from_str_radix(text, 16).map_err(|_| HttpError::Malformed("chunk size"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_with_length_and_session() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nMcp-Session-Id: abc\r\nContent-Length: 2\r\n\r\n{}";
        let Ok(Some((head, len, framing))) = parse_head(raw) else {
            panic!("head did not parse");
        };
        assert_eq!(head.status, 200);
        assert_eq!(head.kind, ContentKind::Json);
        assert_eq!(head.session_id.as_deref(), Some("abc"));
        assert!(!head.close);
        assert_eq!(len, raw.len() - 2);
        assert!(matches!(framing, Framing::Length(2)));
    }

    #[test]
    fn head_chunked_sse_close() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
        let Ok(Some((head, _, framing))) = parse_head(raw) else {
            panic!("head did not parse");
        };
        assert_eq!(head.kind, ContentKind::EventStream);
        assert!(head.close);
        assert!(matches!(framing, Framing::Chunked));
    }

    #[test]
    fn partial_head() {
        assert!(matches!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-"),
            Ok(None)
        ));
    }

    #[tokio::test]
    async fn chunked_body_across_reads() -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await?;
            let mut req = [0u8; 1024];
            let _ = s.read(&mut req).await?;
            for part in [
                &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"[..],
                b"lo\r\n6;ext=1\r\n world\r\n0\r\n",
                b"\r\nHTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n",
            ] {
                s.write_all(part).await?;
                s.flush().await?;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = s.read(&mut req).await?;
            anyhow::Ok(())
        });
        let mut conn = Conn::connect(addr).await?;
        let head = conn.exchange(b"GET / HTTP/1.1\r\n\r\n").await?;
        assert_eq!(head.status, 200);
        assert_eq!(conn.body(), b"hello world");
        let head = conn.exchange(b"GET / HTTP/1.1\r\n\r\n").await?;
        assert_eq!(head.status, 202);
        assert!(conn.body().is_empty());
        drop(conn);
        server.await??;
        Ok(())
    }
}
