//! What every front end shares: where a request came from, plain HTTP
//! refusals, the session errors.

use crate::route::reply::{Accept, rpc_error};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use mcpgw_mcp::headers::{
    LAST_EVENT_ID, MCP_METHOD, MCP_NAME, MCP_PROTOCOL_VERSION, MCP_SESSION_ID,
};
use mcpgw_protocol::session_id::SessionId;
use tracing::debug;

use crate::http::body::{self, Body};

/// Where a connection came from: the public listeners, or a sibling worker
/// forwarding a request for a session this worker owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A client connection, with the client's address where known, and
    /// whether it came over TLS (the scheme of the endpoint's own URL).
    Public {
        client: Option<ClientAddr>,
        tls: bool,
    },
    /// Forwarded by another worker over the internal socket.
    Internal,
    /// Forwarded by another gateway host to the cluster listener
    /// (`[cluster]`): trusted like [`Origin::Internal`] once its signature
    /// is checked ([`crate::front::handle`]), and never forwarded to a
    /// third host.
    Peer,
}

impl Origin {
    /// Forwarded by a worker of this host or of another one: the host
    /// policy was applied and the principal established where the client
    /// connected, and the `x-mcpgw-` headers are the forwarder's.
    pub(crate) fn is_forwarded(self) -> bool {
        matches!(self, Self::Internal | Self::Peer)
    }
}

/// The client's IP address, from the connection that received the request
/// (on a forwarded request, from the forwarding worker's
/// `x-mcpgw-client`); the per-client session cap and, without `[auth]`,
/// rate limits count by it. Passed along, not put in the
/// request's extensions: that would allocate a map for every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClientAddr(pub std::net::IpAddr);

/// Who sent a POST: the address it came from (public connections) and the
/// principal its bearer token names (with `[auth]`).
#[derive(Debug, Default)]
pub(crate) struct Caller {
    pub addr: Option<ClientAddr>,
    pub principal: Option<crate::auth::Principal>,
}

/// The gateway's JSON-RPC error for `initialize` past a session cap (the
/// -32000 to -32099 range is for implementation-defined server errors).
pub(crate) const SESSION_LIMIT: i32 = -32000;

/// Error code conventional for an unknown or expired session.
pub(crate) const SESSION_NOT_FOUND: i32 = -32001;

/// Headers a request may carry once at most: whoever reads two of them
/// (the supervisor routing by the first session id, a proxy in front
/// checking the last token) could read two different requests out of one.
static SINGLETONS: [HeaderName; 7] = [
    HOST,
    AUTHORIZATION,
    MCP_SESSION_ID,
    MCP_PROTOCOL_VERSION,
    MCP_METHOD,
    MCP_NAME,
    LAST_EVENT_ID,
];

/// The first of [`SINGLETONS`] that `headers` repeats. One length compare
/// when no header at all is repeated, the usual case.
pub(crate) fn repeated_singleton(headers: &HeaderMap) -> Option<&'static str> {
    if headers.len() == headers.keys_len() {
        return None;
    }
    SINGLETONS
        .iter()
        .find(|name| headers.get_all(*name).iter().nth(1).is_some())
        .map(HeaderName::as_str)
}

pub(crate) fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(body::full(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

pub(crate) fn session_not_found(accept: Accept, id: &SessionId, why: &str) -> Response<Body> {
    debug!(session = %id, why, "session not found");
    rpc_error(
        accept,
        StatusCode::NOT_FOUND,
        "null",
        SESSION_NOT_FOUND,
        "Session not found; initialize a new session",
    )
}

pub(crate) fn is_json_content_type<B>(req: &Request<B>) -> bool {
    let Some(v) = req.headers().get(CONTENT_TYPE) else {
        return false;
    };
    // The usual value, compared before any parsing.
    if v.as_bytes() == b"application/json" {
        return true;
    }
    v.to_str()
        .ok()
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

/// The client's W3C trace context (`traceparent`, and `tracestate` with it)
/// as header lines for the upstream request, so the upstream's spans join
/// the client's trace. A malformed `traceparent` is dropped (and the
/// `tracestate` with it), as the Trace Context spec asks of a forwarder
/// that cannot parse it; nothing is invented when there is none.
pub(crate) fn trace_context(headers: &http::HeaderMap) -> Box<[u8]> {
    let Some(parent) = headers.get("traceparent").map(HeaderValue::as_bytes) else {
        return Box::default();
    };
    if !crate::otel::is_traceparent(parent) {
        return Box::default();
    }
    let mut lines = Vec::with_capacity(96);
    lines.extend_from_slice(b"traceparent: ");
    lines.extend_from_slice(parent);
    lines.extend_from_slice(b"\r\n");
    // The spec bounds what a vendor list needs; more is dropped, not cut.
    if let Some(state) = headers.get("tracestate").map(HeaderValue::as_bytes)
        && state.len() <= 512
        && state.iter().all(|b| (0x20..0x7f).contains(b))
    {
        lines.extend_from_slice(b"tracestate: ");
        lines.extend_from_slice(state);
        lines.extend_from_slice(b"\r\n");
    }
    lines.into_boxed_slice()
}

pub(crate) fn accepted() -> Response<Body> {
    let mut r = Response::new(body::empty());
    *r.status_mut() = StatusCode::ACCEPTED;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_well_formed_traceparent_is_passed_on() {
        let mut h = http::HeaderMap::new();
        assert!(trace_context(&h).is_empty());
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        h.insert("traceparent", HeaderValue::from_static(good));
        h.insert("tracestate", HeaderValue::from_static("congo=t61rcWkgMzE"));
        assert_eq!(
            &*trace_context(&h),
            format!("traceparent: {good}\r\ntracestate: congo=t61rcWkgMzE\r\n").as_bytes()
        );
        for bad in [
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            h.insert("traceparent", HeaderValue::from_static(bad));
            assert!(trace_context(&h).is_empty(), "{bad}");
        }
    }
    use crate::route::reply::Accept;
    use http::header::ACCEPT;

    fn req(name: http::HeaderName, values: &[&'static str]) -> Request<()> {
        let mut r = Request::new(());
        for v in values {
            r.headers_mut()
                .append(name.clone(), HeaderValue::from_static(v));
        }
        r
    }

    fn accept(values: &[&'static str]) -> (bool, bool) {
        let a = Accept::of(&req(ACCEPT, values));
        (a.json, a.sse)
    }

    #[test]
    fn accept_lists_are_read_case_insensitively_with_or_without_the_fast_path() {
        assert_eq!(
            accept(&["application/json, text/event-stream"]),
            (true, true)
        );
        assert_eq!(
            accept(&["Application/JSON;q=0.9 , TEXT/event-stream"]),
            (true, true)
        );
        assert_eq!(
            accept(&["application/json", "text/event-stream"]),
            (true, true)
        );
        assert_eq!(accept(&["application/json"]), (true, false));
        assert_eq!(accept(&["text/*"]), (false, true));
        assert_eq!(accept(&["*/*"]), (true, true));
        assert_eq!(accept(&["image/png"]), (false, false));
        // No Accept at all: lenient.
        assert_eq!(accept(&[]), (true, true));
    }

    #[test]
    fn json_content_types() {
        let is = |v: &'static str| is_json_content_type(&req(CONTENT_TYPE, &[v]));
        assert!(is("application/json"));
        assert!(is("Application/Json; charset=utf-8"));
        assert!(!is("text/plain"));
        assert!(!is_json_content_type(&Request::new(())));
    }
}
