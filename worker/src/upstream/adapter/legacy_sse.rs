//! The deprecated HTTP+SSE transport (MCP 2024-11-05) as a backend of the
//! [`crate::upstream::adapter`]: one upstream session is one event stream.
//!
//! Opening a session GETs the configured `url` (an event stream); the
//! server's first `endpoint` event names the URL to POST messages to.
//! Everything the server says afterwards (responses, its own requests,
//! notifications) arrives as `message` events on that stream, and the
//! adapter routes it like a stdio process's output. Closing the session
//! closes the stream (the old transport has no DELETE).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderValue, Method, Uri};
use http_body_util::{BodyExt, Limited};
use mcpgw_protocol::config::Upstream;
use tokio::time::timeout;
use tracing::info;

use crate::http::client::{ConnPool, HeaderBlock, Outgoing, UpstreamBody};
use crate::http::sse;

/// Longest wait for the `endpoint` event after the stream opened.
const ENDPOINT_WAIT: Duration = Duration::from_secs(10);
/// Longest wait for one POST to be accepted.
const POST_TIMEOUT: Duration = Duration::from_secs(30);
/// Most of an acceptance's body read (to keep its connection).
const MAX_ACCEPT_BODY: usize = 64 * 1024;

/// Where a session's messages are POSTed, over kept-alive connections.
pub(crate) struct Poster {
    pool: ConnPool,
    authority: String,
    path: String,
    headers: HeaderBlock,
}

impl Poster {
    pub(crate) async fn post(&self, line: &[u8]) -> Result<(), String> {
        let req = Outgoing {
            method: &Method::POST,
            path: &self.path,
            headers: &self.headers,
            extra: b"",
            body: Bytes::copy_from_slice(line),
        };
        let exchange = async {
            let resp = self.pool.send(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            // Read the (short) acceptance to its end so the connection is
            // kept for the next message.
            let _ = Limited::new(resp.into_body(), MAX_ACCEPT_BODY)
                .collect()
                .await;
            Ok::<_, String>(status)
        };
        let status = timeout(POST_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("POST to {} timed out", self.authority))??;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!(
                "the legacy SSE server answered a message with HTTP {status}"
            ))
        }
    }
}

/// A pool for the server at `authority`.
fn pool_for(authority: &str, connect_timeout: Duration) -> Result<ConnPool, String> {
    let uri: Uri = format!("http://{authority}/")
        .parse()
        .map_err(|e| format!("{authority:?}: {e}"))?;
    ConnPool::new(&uri, connect_timeout)
}

/// An opened legacy session: where its messages go, and the stream its
/// messages come from (for [`read_events`]).
pub(crate) struct Opened {
    pub(crate) poster: Poster,
    pub(crate) events: Events,
}

/// The rest of the event stream after its `endpoint` event.
pub(crate) struct Events {
    body: UpstreamBody,
    parser: sse::Parser,
}

/// Open the event stream at `config.url` and wait for its `endpoint`
/// event; the caller starts [`read_events`] on what is returned.
pub(crate) async fn open(upstream: &Arc<str>, config: &Upstream) -> Result<Opened, String> {
    let fail = |what: String| format!("legacy SSE upstream {upstream}: {what}");
    let uri: Uri = config.url.parse().map_err(|e| fail(format!("url: {e}")))?;
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .ok_or_else(|| fail("url has no host".into()))?;
    let connect_timeout = Duration::from_millis(config.connect_timeout_ms);
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut headers = HeaderMap::with_capacity(2);
    headers.insert(
        HOST,
        HeaderValue::from_str(&authority).map_err(|e| fail(e.to_string()))?,
    );
    headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
    let stream_pool = pool_for(&authority, connect_timeout).map_err(&fail)?;
    let req = Outgoing {
        method: &Method::GET,
        path,
        headers: &HeaderBlock::new(&headers),
        extra: b"",
        body: Bytes::new(),
    };
    let resp = timeout(connect_timeout, stream_pool.send(req))
        .await
        .map_err(|_| fail("no answer to the GET of its event stream".into()))?
        .map_err(|e| fail(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(fail(format!(
            "GET {} answered HTTP {}",
            config.url,
            resp.status()
        )));
    }
    let mut body = resp.into_body();
    let mut parser = sse::Parser::default();
    let endpoint = timeout(ENDPOINT_WAIT, async {
        loop {
            while let Some(event) = parser.next_event() {
                if event.event == "endpoint" {
                    return Ok(event.data);
                }
            }
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        parser.push(&data);
                    }
                }
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("the event stream ended before its endpoint event".to_owned()),
            }
        }
    })
    .await
    .map_err(|_| fail("no endpoint event".into()))?
    .map_err(&fail)?;
    let (post_authority, post_path) = resolve(&authority, endpoint.trim())
        .ok_or_else(|| fail(format!("endpoint {endpoint:?} is not an http URL or path")))?;
    let mut post_headers = HeaderMap::with_capacity(2);
    post_headers.insert(
        HOST,
        HeaderValue::from_str(&post_authority).map_err(|e| fail(e.to_string()))?,
    );
    post_headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    // Usually the same server: its pool serves the POSTs too.
    let pool = if post_authority == authority {
        stream_pool
    } else {
        pool_for(&post_authority, connect_timeout).map_err(&fail)?
    };
    let poster = Poster {
        pool,
        authority: post_authority,
        path: post_path.to_string(),
        headers: HeaderBlock::new(&post_headers),
    };
    info!(upstream = %upstream, "legacy SSE upstream session opened");
    Ok(Opened {
        poster,
        events: Events { body, parser },
    })
}

/// An `endpoint` value: a path on the stream's server, or an http URL.
fn resolve(authority: &str, endpoint: &str) -> Option<(String, Uri)> {
    if let Some(rest) = endpoint.strip_prefix("http://") {
        let (auth, path) = rest.split_once('/').unwrap_or((rest, ""));
        return Some((auth.to_owned(), format!("/{path}").parse().ok()?));
    }
    endpoint
        .starts_with('/')
        .then(|| endpoint.parse().ok().map(|p| (authority.to_owned(), p)))
        .flatten()
}

/// Hand every `message` event to `route` until the stream ends or `gone`
/// is set; the reason it stopped.
pub(crate) async fn read_events(
    events: Events,
    mut gone: tokio::sync::watch::Receiver<Option<String>>,
    route: impl Fn(&[u8]),
) -> String {
    let Events {
        mut body,
        mut parser,
    } = events;
    loop {
        while let Some(event) = parser.next_event() {
            if event.event == "message" {
                route(event.data.as_bytes());
            }
        }
        let frame = tokio::select! {
            f = body.frame() => f,
            _ = gone.wait_for(Option::is_some) => return "closed".to_owned(),
        };
        match frame {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    parser.push(&data);
                }
            }
            Some(Err(e)) => return format!("its event stream failed: {e}"),
            None => return "its event stream ended".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_resolve_against_the_stream_server() {
        let (a, p) = resolve("127.0.0.1:9", "/messages/?session_id=ab").expect("path");
        assert_eq!(
            (a.as_str(), p.to_string().as_str()),
            ("127.0.0.1:9", "/messages/?session_id=ab")
        );
        let (a, p) = resolve("127.0.0.1:9", "http://10.0.0.2:80/m?s=1").expect("url");
        assert_eq!(
            (a.as_str(), p.to_string().as_str()),
            ("10.0.0.2:80", "/m?s=1")
        );
        assert!(resolve("h:1", "ftp://x/").is_none());
        assert!(resolve("h:1", "relative").is_none());
    }
}
