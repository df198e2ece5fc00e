//! An SSE response read message by message while it is still open: a call's answer
//! stream or a session's GET stream, with the server→client requests and notifications
//! that come on it before (or instead of) a response.

use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use serde_json::Value;

use crate::http::{HttpConn, Response};
use crate::mcp::McpClient;
use crate::sse;

/// One open event stream on its own connection.
#[derive(Debug)]
pub struct MessageStream {
    conn: HttpConn,
    head: Response,
    text: String,
    ready: std::collections::VecDeque<Value>,
    ended: bool,
}

impl MessageStream {
    /// POSTs `message` (a JSON-RPC request) for `client`'s session on a new connection
    /// and returns its answer stream once the head has arrived; the answer must be SSE.
    pub async fn post(
        client: &McpClient,
        addr: std::net::SocketAddr,
        message: &Value,
    ) -> Result<Self> {
        let request = client.post_request(message.to_string());
        Self::open(addr, &request.to_bytes(&addr.to_string())).await
    }

    /// Opens `client`'s GET stream on a new connection.
    pub async fn get(client: &McpClient, addr: std::net::SocketAddr) -> Result<Self> {
        let request = client.stream_request();
        Self::open(addr, &request.to_bytes(&addr.to_string())).await
    }

    /// Sends any `request` on a new connection; its answer must be an event stream
    /// (a stateless client's `subscriptions/listen`).
    pub async fn send(addr: std::net::SocketAddr, request: &crate::http::Request) -> Result<Self> {
        Self::open(addr, &request.to_bytes(&addr.to_string())).await
    }

    async fn open(addr: std::net::SocketAddr, bytes: &[u8]) -> Result<Self> {
        let mut conn = HttpConn::connect(addr).await?;
        conn.write_raw(bytes).await?;
        let head = conn.read_head().await?;
        ensure!(
            head.status == 200 && head.media_type().as_deref() == Some("text/event-stream"),
            "expected a 200 event stream, got {} {:?}",
            head.status,
            head.media_type()
        );
        Ok(Self {
            conn,
            head,
            text: String::new(),
            ready: Default::default(),
            ended: false,
        })
    }

    /// The next JSON-RPC message, waiting at most `within`; `None` when the stream ended.
    pub async fn next(&mut self, within: Duration) -> Result<Option<Value>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(m) = self.ready.pop_front() {
                return Ok(Some(m));
            }
            if self.ended {
                return Ok(None);
            }
            let piece = tokio::time::timeout_at(deadline, self.conn.read_piece(&self.head))
                .await
                .map_err(|_| anyhow!("no message within {within:?} (so far: {:?})", self.text))??;
            match piece {
                None => self.ended = true,
                Some(bytes) => self.text.push_str(&String::from_utf8_lossy(&bytes)),
            }
            // Complete events end with a blank line; keep an unfinished one for later.
            let cut = self.text.rfind("\n\n").map(|i| i + 2).unwrap_or(0);
            let complete: String = self.text.drain(..cut).collect();
            for event in sse::parse(&complete) {
                let message = serde_json::from_str(&event.data)
                    .with_context(|| format!("event data is not JSON: {:?}", event.data))?;
                self.ready.push_back(message);
            }
        }
    }

    /// The next message, which must be there within `within`.
    pub async fn expect(&mut self, within: Duration) -> Result<Value> {
        self.next(within)
            .await?
            .ok_or_else(|| anyhow!("the stream ended"))
    }

    /// Reads messages until the response to `id`; returns it and what came before.
    pub async fn until_response(
        &mut self,
        id: &Value,
        within: Duration,
    ) -> Result<(Value, Vec<Value>)> {
        let mut before = Vec::new();
        loop {
            let Some(m) = self.next(within).await? else {
                bail!("the stream ended before the response to {id}; saw {before:?}");
            };
            if m.get("id") == Some(id) && (m.get("result").is_some() || m.get("error").is_some()) {
                return Ok((m, before));
            }
            before.push(m);
        }
    }

    /// Closes the connection (the client goes away).
    pub fn close(self) {
        drop(self.conn);
    }
}
