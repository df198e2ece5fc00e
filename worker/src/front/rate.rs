//! The front ends' side of an endpoint's `rate_limit`: tokens taken for a
//! POST's JSON-RPC requests before any other work (both eras, each request
//! of a batch), and the answer when a bucket is empty: HTTP 429 with
//! `Retry-After` (whole seconds, rounded up) and a JSON-RPC error
//! [`RATE_LIMITED`] whose `data.retryAfterMs` says the same in
//! milliseconds. The buckets themselves are `crate::rate_limit`'s.

use std::time::Instant;

use http::header::RETRY_AFTER;
use http::{HeaderValue, Response, StatusCode};
use tracing::debug;

use crate::ctx::Ctx;
use crate::endpoints::Endpoint;
use crate::front::common::Caller;
use crate::http::body::Body;
use crate::jsonrpc;
use crate::rate_limit::{self, Limited};
use crate::route::reply::{Accept, rpc};

/// The gateway's JSON-RPC error for a request over an endpoint's rate
/// limit (in the implementation-defined -32000 to -32099 range; 429 in it).
pub(crate) const RATE_LIMITED: i32 = -32029;

/// Take `n` tokens for `caller`'s requests to `endpoint`; `Some(answer)`
/// when the caller (or the endpoint) is over its limit. `id`: the request's
/// (`null` for a batch).
pub(crate) fn over_limit(
    ctx: &Ctx,
    endpoint: &Endpoint,
    caller: &Caller,
    n: u32,
    accept: Accept,
    id: &str,
) -> Option<Response<Body>> {
    let limiter = endpoint.limiter.as_ref()?;
    let who = match (&caller.principal, caller.addr) {
        (Some(p), _) => Some(rate_limit::Caller::Principal(p.id())),
        (None, Some(addr)) => Some(rate_limit::Caller::Addr(addr.0)),
        (None, None) => None,
    };
    let Limited { scope, retry_after } = limiter.take(who, n, Instant::now()).err()?;
    ctx.metrics
        .rate_limited
        .with_label_values(&[&*endpoint.path, scope.label()])
        .inc();
    let ms = u64::try_from(retry_after.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let secs = ms.div_ceil(1000);
    // Debug: a client over its limit sends many; the counter shows them.
    debug!(
        endpoint = %endpoint.path,
        principal = caller.principal.as_ref().map_or("-", |p| p.sub()),
        client = ?caller.addr.map(|a| a.0),
        scope = scope.label(),
        retry_after_ms = ms,
        "request refused: over the endpoint's rate limit"
    );
    let message = jsonrpc::error(
        id,
        RATE_LIMITED,
        &format!(
            "Too many requests: this endpoint's rate limit ({}) is used up; retry after {secs} s",
            if scope == rate_limit::Scope::Principal {
                "per principal"
            } else {
                "for all callers"
            }
        ),
        Some(&format!("{{\"retryAfterMs\":{ms}}}")),
    );
    let mut r = rpc(accept, StatusCode::TOO_MANY_REQUESTS, message);
    r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
    Some(r)
}
