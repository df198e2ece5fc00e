//! What routing sees of the worker: a borrowed view of the worker context,
//! so routing can be driven without a running worker.

use crate::authz::{Claims, Kind};
use crate::endpoints::Endpoint;
use crate::http::body::Body;
use crate::metrics::{Metrics, OutcomeSlot};
use crate::route::reply::{self, Accept};
use http::{Response, StatusCode};

/// What routing needs of the worker: the counters. A borrowed view of the worker context, made per request at
/// no cost, so routing never sees the rest of it.
#[derive(Clone, Copy)]
pub(crate) struct Env<'a> {
    pub(crate) metrics: &'a Metrics,
    /// Where the request's outcome is reported when its HTTP status cannot
    /// tell it (a JSON-RPC error or a failed tool in a 200).
    pub(crate) outcome: &'a OutcomeSlot,
    /// The request is a `tools/call`: its answer's `result.isError` counts.
    pub(crate) tool_call: bool,
    /// The request is a `tools/list` passed through: its answer's tools
    /// teach the upstream's `Mcp-Param-*` headers
    /// ([`crate::upstream::ToolParams`]).
    pub(crate) learns_tools: bool,
    /// The access log is on, or the request has a span: routing notes
    /// where it went.
    pub(crate) notes_route: bool,
    /// What the caller's token said, for the endpoint's authorization
    /// rules (`None` without `[auth]`).
    pub(crate) caller: Option<&'a Claims>,
}

impl Env<'_> {
    /// Whether the endpoint's rules let the caller use the `kind` named
    /// `name` (always, without rules); counted and logged when not.
    pub(crate) fn allows(&self, endpoint: &Endpoint, kind: Kind, name: &str) -> bool {
        endpoint
            .authz
            .as_ref()
            .is_none_or(|rules| rules.check(self.metrics, kind, name, self.caller))
    }

    /// A JSON-RPC error the gateway answers itself in a 200, counted as one.
    pub(crate) fn rpc_error(
        &self,
        accept: Accept,
        id: &str,
        code: i32,
        message: &str,
    ) -> Response<Body> {
        self.outcome.fail(code.into());
        reply::rpc_error(accept, StatusCode::OK, id, code, message)
    }

    pub(crate) fn invalid_params(&self, accept: Accept, id: &str, message: &str) -> Response<Body> {
        self.outcome.fail(crate::jsonrpc::INVALID_PARAMS.into());
        reply::invalid_params(accept, id, message)
    }

    pub(crate) fn cancelled(&self, accept: Accept, id: &str) -> Response<Body> {
        self.outcome.fail(reply::REQUEST_CANCELLED.into());
        reply::cancelled(accept, id)
    }
}
