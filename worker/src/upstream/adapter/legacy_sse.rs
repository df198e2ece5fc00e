//! The deprecated HTTP+SSE transport (MCP 2024-11-05) as a backend of the
//! [`crate::upstream::adapter`]: one upstream session is one event stream.
//!
//! Opening a session GETs the configured `url` (an event stream); the
//! server's first `endpoint` event names the URL to POST messages to.
//! Everything the server says afterwards (responses, its own requests,
//! notifications) arrives as `message` events on that stream, and the
//! adapter routes it like a stdio process's output. Closing the session
//! closes the stream (the old transport has no DELETE).
//!
//! An `https://` stream url is reached over TLS with the upstream's client
//! configuration, and so is an endpoint on the same server; an endpoint the
//! server names on another host keeps the scheme it names (`http://` or
//! `https://`, the latter with the same roots and client identity).
//!
//! The upstream's own credentials go with the stream's GET and every POST:
//! its configured `headers`, and with `[upstream.oauth]` its bearer token
//! ([`crate::upstream::credentials`], retried once on a 401).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderValue, Method, Uri};
use http_body_util::{BodyExt, Limited};
use mcpgw_protocol::config::Upstream;
use tokio::time::timeout;
use tracing::info;

use tokio_rustls::rustls::ClientConfig;

use crate::http::client::{ConnPool, HeaderBlock, Outgoing, UpstreamBody};
use crate::http::sse;
use crate::upstream::credentials::{Credentials, SendError};

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
    credentials: Option<Arc<Credentials>>,
}

/// Send `req` on `pool`, with the upstream's token when it has one.
async fn send(
    pool: &ConnPool,
    credentials: Option<&Arc<Credentials>>,
    req: Outgoing<'_>,
) -> Result<http::Response<UpstreamBody>, String> {
    match credentials {
        None => pool.send(req).await.map_err(|e| e.to_string()),
        Some(c) => c.send(pool, req).await.map_err(|e| match e {
            SendError::Conn(e) => e.to_string(),
            SendError::Token(e) => format!("no access token: {e}"),
        }),
    }
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
            let resp = send(&self.pool, self.credentials.as_ref(), req).await?;
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

/// A pool for the server at `origin` (`https` or `http`, authority).
fn pool_for(
    origin: &Origin,
    connect_timeout: Duration,
    tls: Option<&Arc<ClientConfig>>,
) -> Result<ConnPool, String> {
    let scheme = if origin.https { "https" } else { "http" };
    let authority = &origin.authority;
    let uri: Uri = format!("{scheme}://{authority}/")
        .parse()
        .map_err(|e| format!("{authority:?}: {e}"))?;
    let tls = match (origin.https, tls) {
        (false, _) => None,
        (true, Some(config)) => Some(config.clone()),
        // The stream's url was http:// and it names an https endpoint:
        // no roots were configured for that.
        (true, None) => {
            return Err(format!(
                "the server names an https endpoint ({authority}) but its url is http://"
            ));
        }
    };
    ConnPool::new(&uri, connect_timeout, tls)
}

/// Where a server is: scheme and authority.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    https: bool,
    authority: String,
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
pub(crate) async fn open(
    upstream: &Arc<str>,
    config: &Upstream,
    tls: Option<Arc<ClientConfig>>,
    credentials: Option<Arc<Credentials>>,
) -> Result<Opened, String> {
    let fail = |what: String| format!("legacy SSE upstream {upstream}: {what}");
    let uri: Uri = config.url.parse().map_err(|e| fail(format!("url: {e}")))?;
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .ok_or_else(|| fail("url has no host".into()))?;
    let origin = Origin {
        https: uri.scheme_str() == Some("https"),
        authority: authority.clone(),
    };
    let connect_timeout = Duration::from_millis(config.connect_timeout_ms);
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut headers = configured_headers(config).map_err(&fail)?;
    if !headers.contains_key(HOST) {
        headers.insert(
            HOST,
            HeaderValue::from_str(&authority).map_err(|e| fail(e.to_string()))?,
        );
    }
    headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
    let stream_pool = pool_for(&origin, connect_timeout, tls.as_ref()).map_err(&fail)?;
    let req = Outgoing {
        method: &Method::GET,
        path,
        headers: &HeaderBlock::new(&headers),
        extra: b"",
        body: Bytes::new(),
    };
    // The token fetch, if one is due, is bounded on its own.
    let resp = timeout(
        connect_timeout + crate::upstream::credentials::grant::FETCH_TIMEOUT,
        send(&stream_pool, credentials.as_ref(), req),
    )
    .await
    .map_err(|_| fail("no answer to the GET of its event stream".into()))?
    .map_err(&fail)?;
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
    let (post_origin, post_path) = resolve(&origin, endpoint.trim()).ok_or_else(|| {
        fail(format!(
            "endpoint {endpoint:?} is not an http(s) URL or path"
        ))
    })?;
    let mut post_headers = configured_headers(config).map_err(&fail)?;
    post_headers.insert(
        HOST,
        HeaderValue::from_str(&post_origin.authority).map_err(|e| fail(e.to_string()))?,
    );
    post_headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    // Usually the same server: its pool serves the POSTs too.
    let pool = if post_origin == origin {
        stream_pool
    } else {
        pool_for(&post_origin, connect_timeout, tls.as_ref()).map_err(&fail)?
    };
    let poster = Poster {
        pool,
        authority: post_origin.authority,
        path: post_path.to_string(),
        headers: HeaderBlock::new(&post_headers),
        credentials,
    };
    info!(upstream = %upstream, "legacy SSE upstream session opened");
    Ok(Opened {
        poster,
        events: Events { body, parser },
    })
}

/// The upstream's configured `headers` (validated names and values).
fn configured_headers(config: &Upstream) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::with_capacity(config.headers.len() + 2);
    for (k, v) in &config.headers {
        let name =
            http::HeaderName::from_bytes(k.as_bytes()).map_err(|e| format!("header {k:?}: {e}"))?;
        let value = HeaderValue::from_str(v).map_err(|e| format!("header {k:?}: {e}"))?;
        headers.insert(name, value);
    }
    Ok(headers)
}

/// An `endpoint` value: a path on the stream's server, or an http(s) URL.
fn resolve(stream: &Origin, endpoint: &str) -> Option<(Origin, Uri)> {
    let absolute = endpoint
        .strip_prefix("http://")
        .map(|rest| (false, rest))
        .or_else(|| endpoint.strip_prefix("https://").map(|rest| (true, rest)));
    if let Some((https, rest)) = absolute {
        let (auth, path) = rest.split_once('/').unwrap_or((rest, ""));
        let origin = Origin {
            https,
            authority: auth.to_owned(),
        };
        return Some((origin, format!("/{path}").parse().ok()?));
    }
    endpoint
        .starts_with('/')
        .then(|| endpoint.parse().ok().map(|p| (stream.clone(), p)))
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

    fn origin(https: bool, authority: &str) -> Origin {
        Origin {
            https,
            authority: authority.to_owned(),
        }
    }

    #[test]
    fn endpoints_resolve_against_the_stream_server() {
        let stream = origin(true, "127.0.0.1:9");
        let (a, p) = resolve(&stream, "/messages/?session_id=ab").expect("path");
        assert_eq!(a, stream);
        assert_eq!(p.to_string(), "/messages/?session_id=ab");
        let (a, p) = resolve(&stream, "http://10.0.0.2:80/m?s=1").expect("url");
        assert_eq!(a, origin(false, "10.0.0.2:80"));
        assert_eq!(p.to_string(), "/m?s=1");
        let (a, _) = resolve(&origin(false, "h:1"), "https://h:2/m").expect("https url");
        assert_eq!(a, origin(true, "h:2"));
        assert!(resolve(&stream, "ftp://x/").is_none());
        assert!(resolve(&stream, "relative").is_none());
    }

    #[test]
    fn an_https_endpoint_needs_tls_settings() {
        let err = pool_for(&origin(true, "h:2"), Duration::from_secs(1), None)
            .err()
            .expect("refused");
        assert!(err.contains("https endpoint"), "{err}");
    }
}
