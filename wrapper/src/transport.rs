//! HTTP to the server: one pooled hyper client, and the three requests of Streamable
//! HTTP (POST a message, GET the server stream, DELETE the session), each carrying the
//! configured headers, the session's headers and, on POST, the routing headers.
//!
//! It knows nothing of sessions' life or of JSON-RPC beyond the two routing values it
//! is handed; [`crate::bridge`] decides what to send and what an answer means. Errors
//! keep the whole cause chain, because "connection refused" is what a user needs to read.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mcpgw_mcp::headers::{
    LAST_EVENT_ID, MCP_METHOD, MCP_NAME, MCP_PROTOCOL_VERSION, MCP_SESSION_ID,
};

use crate::headers::routing_value;
use crate::options::Options;

const ACCEPT_POST: HeaderValue = HeaderValue::from_static("application/json, text/event-stream");
const ACCEPT_STREAM: HeaderValue = HeaderValue::from_static("text/event-stream");
const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// A failed exchange with the server.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TransportError {
    #[error("cannot connect to {url}: {detail}")]
    Connect { url: Arc<str>, detail: String },
    #[error("request to {url} failed: {detail}")]
    Request { url: Arc<str>, detail: String },
    #[error("connection to {url} broke while reading the answer: {detail}")]
    Body { url: Arc<str>, detail: String },
    #[error("answer from {url} is larger than {limit} bytes")]
    TooLarge { url: Arc<str>, limit: usize },
}

impl TransportError {
    /// Whether this says the server (or the network to it) is gone, rather than that
    /// one answer was unusable.
    pub(crate) fn is_connection_failure(&self) -> bool {
        !matches!(self, Self::TooLarge { .. })
    }
}

/// The per-session headers of a request; both empty before `initialize` and with a
/// server that hands out no session.
#[derive(Debug, Clone, Default)]
pub(crate) struct SessionHeaders {
    pub(crate) session_id: Option<HeaderValue>,
    pub(crate) protocol_version: Option<HeaderValue>,
}

/// The 2026-07-28 routing headers of a POST: the JSON-RPC method and the name.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Routing<'a> {
    pub(crate) method: Option<&'a str>,
    pub(crate) name: Option<&'a str>,
}

/// A TLS configuration that trusts nothing, for an http:// server (the
/// connector needs one; an http URL never uses it).
fn rustls_client_config_without_roots() -> std::io::Result<rustls::ClientConfig> {
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map(|b| {
        b.with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
    })
    .map_err(std::io::Error::other)
}

/// The HTTP side of the wrapper.
#[derive(Debug)]
pub(crate) struct Transport {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    uri: Uri,
    url: Arc<str>,
    headers: HeaderMap,
}

impl Transport {
    /// `Err` when the URL is `https://` and the system has no usable CA
    /// certificates to check the server's against.
    pub(crate) fn new(options: &Options) -> std::io::Result<Self> {
        let mut connector = HttpConnector::new();
        // Small SSE writes and JSON-RPC messages must not wait for Nagle.
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(options.connect_timeout));
        // The TLS connector wraps the TCP one and needs it to take https URLs.
        connector.enforce_http(false);
        // Server certificates are checked against the system's CAs
        // (`SSL_CERT_FILE`/`SSL_CERT_DIR` say where, as for the gateway).
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = if options.uri.scheme_str() == Some("https") {
            builder.with_native_roots()?
        } else {
            // Plain http never gets to TLS: no roots to load.
            builder.with_tls_config(rustls_client_config_without_roots()?)
        };
        let connector = builder
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self {
            client,
            uri: options.uri.clone(),
            url: Arc::from(options.uri.to_string()),
            headers: options.headers.clone(),
        })
    }

    /// The server URL, for messages.
    pub(crate) fn url(&self) -> &Arc<str> {
        &self.url
    }

    /// POSTs one JSON-RPC message (or batch).
    pub(crate) async fn post(
        &self,
        body: Bytes,
        session: &SessionHeaders,
        routing: Routing<'_>,
    ) -> Result<Response<Incoming>, TransportError> {
        let mut request = self.request(Method::POST, session, Full::new(body));
        let headers = request.headers_mut();
        headers.insert(ACCEPT, ACCEPT_POST);
        headers.insert(CONTENT_TYPE, JSON);
        if let Some(method) = routing.method.filter(|m| !m.is_empty()) {
            headers.insert(MCP_METHOD, routing_value(method));
        }
        if let Some(name) = routing.name.filter(|n| !n.is_empty()) {
            headers.insert(MCP_NAME, routing_value(name));
        }
        self.send(request).await
    }

    /// Opens (or resumes, after `last_event_id`) the server's GET stream.
    pub(crate) async fn get_stream(
        &self,
        session: &SessionHeaders,
        last_event_id: Option<&str>,
    ) -> Result<Response<Incoming>, TransportError> {
        let mut request = self.request(Method::GET, session, Full::new(Bytes::new()));
        let headers = request.headers_mut();
        headers.insert(ACCEPT, ACCEPT_STREAM);
        if let Some(value) = last_event_id.and_then(|id| HeaderValue::from_str(id).ok()) {
            headers.insert(LAST_EVENT_ID, value);
        }
        self.send(request).await
    }

    /// Ends the session; returns the status (405 means the server does not allow it).
    pub(crate) async fn delete(
        &self,
        session: &SessionHeaders,
    ) -> Result<StatusCode, TransportError> {
        let request = self.request(Method::DELETE, session, Full::new(Bytes::new()));
        let response = self.send(request).await?;
        let status = response.status();
        // Drain the (normally empty) body so the connection can be reused or closed cleanly.
        let _ = read_body(&self.url, response.into_body(), 64 * 1024).await;
        Ok(status)
    }

    fn request(
        &self,
        method: Method,
        session: &SessionHeaders,
        body: Full<Bytes>,
    ) -> Request<Full<Bytes>> {
        let mut request = Request::new(body);
        *request.method_mut() = method;
        *request.uri_mut() = self.uri.clone();
        let headers = request.headers_mut();
        for (name, value) in &self.headers {
            headers.append(name, value.clone());
        }
        if let Some(id) = &session.session_id {
            headers.insert(MCP_SESSION_ID, id.clone());
        }
        if let Some(version) = &session.protocol_version {
            headers.insert(MCP_PROTOCOL_VERSION, version.clone());
        }
        request
    }

    async fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, TransportError> {
        self.client.request(request).await.map_err(|e| {
            let detail = error_chain(&e);
            if e.is_connect() {
                TransportError::Connect {
                    url: self.url.clone(),
                    detail,
                }
            } else {
                TransportError::Request {
                    url: self.url.clone(),
                    detail,
                }
            }
        })
    }
}

/// The next data chunk of a body; `None` at its end (trailers are skipped).
pub(crate) async fn next_chunk(
    url: &Arc<str>,
    body: &mut Incoming,
) -> Result<Option<Bytes>, TransportError> {
    loop {
        match body.frame().await {
            None => return Ok(None),
            Some(Err(e)) => {
                return Err(TransportError::Body {
                    url: url.clone(),
                    detail: error_chain(&e),
                });
            }
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    return Ok(Some(data));
                }
            }
        }
    }
}

/// A whole body, refusing more than `limit` bytes.
pub(crate) async fn read_body(
    url: &Arc<str>,
    mut body: Incoming,
    limit: usize,
) -> Result<Bytes, TransportError> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = next_chunk(url, &mut body).await? {
        if buf.len() + chunk.len() > limit {
            return Err(TransportError::TooLarge {
                url: url.clone(),
                limit,
            });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// The media type of a response (`text/event-stream`), lowercased, without parameters.
pub(crate) fn media_type(response: &Response<Incoming>) -> Option<String> {
    let value = response.headers().get(CONTENT_TYPE)?.to_str().ok()?;
    let essence = value.split(';').next()?.trim();
    Some(essence.to_ascii_lowercase())
}

/// `error: cause: cause's cause`, skipping causes whose text the previous one repeats.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}
