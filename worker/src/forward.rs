//! Forwarding a request to the worker that owns its session.
//!
//! Used when a connection reaches a worker that does not own the session of
//! one of its requests (a keep-alive connection carrying several sessions,
//! TLS connections balanced by load). The request goes over the owner's
//! internal Unix socket as HTTP/1.1, body and answer streamed, marked with
//! `x-mcpgw-forwarded` so the owner never forwards it again (one hop at most).
//! While the owner restarts, connecting is retried for the dispatch wait,
//! then the client gets 503 with `Retry-After`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use mcpgw_protocol::headers::{CLIENT_ADDR, FORWARDED, INTERNAL_PREFIX};
use tokio::net::UnixStream;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::http::body::{self, Body};
use crate::http::server::ReqBody;

pub(crate) struct Forwarder {
    runtime_dir: PathBuf,
    my_slot: HeaderValue,
    wait: Duration,
}

/// The internal socket of the worker in `slot`.
pub(crate) fn socket_path(runtime_dir: &Path, slot: u16) -> PathBuf {
    runtime_dir.join(format!("w{slot}.sock"))
}

impl Forwarder {
    pub(crate) fn new(runtime_dir: PathBuf, my_slot: u16, wait: Duration) -> Self {
        Self {
            runtime_dir,
            my_slot: HeaderValue::from(my_slot),
            wait,
        }
    }

    /// `principal`: who the token of the request names (with `[auth]`);
    /// the owner binds the session to it, and the token itself stays here.
    /// `client`: the client's address, for the owner's rate limits.
    pub(crate) async fn forward(
        &self,
        owner: u16,
        req: Request<ReqBody>,
        principal: Option<&crate::auth::Principal>,
        client: Option<std::net::IpAddr>,
    ) -> Response<Body> {
        if let ReqBody::TooLarge { limit } = req.body() {
            // The owner would refuse it too; its body was never read.
            info!(limit, "request body too large (not forwarded)");
            let mut r = Response::new(body::full(format!("request body exceeds {limit} bytes\n")));
            *r.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
            return r;
        }
        let path = socket_path(&self.runtime_dir, owner);
        let deadline = Instant::now() + self.wait;
        let stream = loop {
            match UnixStream::connect(&path).await {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    debug!(owner, error = %e, "owner not reachable yet; retrying");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => {
                    warn!(owner, error = %e, "owner worker unreachable; answering 503");
                    return unavailable();
                }
            }
        };
        let (mut sender, conn) =
            match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
                Ok(pair) => pair,
                Err(e) => {
                    warn!(owner, error = %e, "handshake with owner failed");
                    return unavailable();
                }
            };
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "forward connection ended with an error");
            }
        });
        // (No `Connection` header to drop: the server keeps hop-by-hop
        // headers out of the map, see `wire::header_lines`.)
        let (mut parts, body) = req.into_parts();
        let internal: Vec<_> = parts
            .headers
            .keys()
            .filter(|k| k.as_str().starts_with(INTERNAL_PREFIX))
            .cloned()
            .collect();
        for k in internal {
            parts.headers.remove(k);
        }
        parts.headers.insert(FORWARDED, self.my_slot.clone());
        if let Some(ip) = client
            && let Ok(v) = HeaderValue::from_str(&ip.to_string())
        {
            parts.headers.insert(CLIENT_ADDR, v);
        }
        if let Some(p) = principal {
            // Checked here; the owner takes the principal, not the token.
            parts.headers.remove(http::header::AUTHORIZATION);
            if let Some(v) = p.header_value() {
                parts.headers.insert(crate::auth::PRINCIPAL_HEADER, v);
            }
        }
        match sender.send_request(Request::from_parts(parts, body)).await {
            Ok(resp) => resp.map(|b| b.map_err(Into::into).boxed()),
            Err(e) => {
                warn!(owner, error = %e, "forwarded request failed");
                unavailable()
            }
        }
    }
}

fn unavailable() -> Response<Body> {
    let mut r = Response::new(body::full(
        &b"the worker that owns this session is unavailable; retry\n"[..],
    ));
    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    r.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
