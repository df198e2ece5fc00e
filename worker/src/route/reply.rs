//! Answers to one JSON-RPC request in the format the client takes (JSON or
//! an SSE stream of one event), and the JSON-RPC errors every layer gives.

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderValue, Request, Response, StatusCode};

use crate::http::body::{self, Body};
use crate::jsonrpc;

/// Which answer formats the client takes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Accept {
    pub(crate) json: bool,
    pub(crate) sse: bool,
}

impl Accept {
    pub(crate) fn of<B>(req: &Request<B>) -> Self {
        let mut a = Accept {
            json: false,
            sse: false,
        };
        let mut any = false;
        let mut values = req.headers().get_all(ACCEPT).iter();
        // What every MCP SDK sends, alone: no splitting and trimming.
        if let (Some(v), None) = (values.next(), values.next())
            && v.as_bytes() == b"application/json, text/event-stream"
        {
            return Accept {
                json: true,
                sse: true,
            };
        }
        for v in req.headers().get_all(ACCEPT) {
            let Ok(v) = v.to_str() else { continue };
            for item in v.split(',') {
                any = true;
                let media = item.split(';').next().unwrap_or("").trim();
                // Media types are case-insensitive (RFC 9110 §8.3.1).
                let is = |m: &str| media.eq_ignore_ascii_case(m);
                if is("application/json") || is("application/*") {
                    a.json = true;
                } else if is("text/event-stream") || is("text/*") {
                    a.sse = true;
                } else if media == "*/*" {
                    a.json = true;
                    a.sse = true;
                }
            }
        }
        if !any {
            // No Accept at all: be lenient and answer JSON (and allow GET).
            a = Accept {
                json: true,
                sse: true,
            };
        }
        a
    }
}

/// A JSON-RPC message as JSON, or as one SSE event for SSE-only clients.
pub(crate) fn rpc(accept: Accept, status: StatusCode, message: Bytes) -> Response<Body> {
    let (body, ct) = if accept.json || !accept.sse {
        (message, "application/json")
    } else {
        (
            crate::http::sse::message_event(&message),
            "text/event-stream",
        )
    };
    let mut r = Response::new(body::full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ct));
    r
}

/// A JSON-RPC error made by the gateway itself.
pub(crate) fn rpc_error(
    accept: Accept,
    status: StatusCode,
    id: &str,
    code: i32,
    message: &str,
) -> Response<Body> {
    rpc(accept, status, jsonrpc::error(id, code, message, None))
}

pub(crate) fn invalid_params(accept: Accept, id: &str, message: &str) -> Response<Body> {
    rpc_error(accept, StatusCode::OK, id, jsonrpc::INVALID_PARAMS, message)
}

/// Answer to a request the client cancelled itself.
pub(crate) const REQUEST_CANCELLED: i32 = -32800;

/// The answer to a call the client cancelled (it ignores it, but an HTTP
/// request needs one). -32800 is the code JSON-RPC peers use for it (LSP);
/// MCP names none.
pub(crate) fn cancelled(accept: Accept, id: &str) -> Response<Body> {
    rpc_error(
        accept,
        StatusCode::OK,
        id,
        REQUEST_CANCELLED,
        "Request cancelled by the client",
    )
}
