//! This worker's Prometheus metrics.
//!
//! Each worker keeps its own registry; the supervisor gathers every worker's
//! text exposition over the control channel and merges them under a `worker`
//! label (so no metric here carries one). Label values are bounded: MCP
//! methods outside the known set count as `other`, upstream ids come from the
//! config, and nothing carries a session id or an argument.

use std::sync::{Arc, OnceLock};

use foldhash::HashMap;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Methods counted by name; anything else is `other`.
const KNOWN_METHODS: [&str; 18] = [
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "prompts/list",
    "prompts/get",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "completion/complete",
    "logging/setLevel",
    "server/discover",
    "notification",
    "response",
    "batch",
    "other",
];

/// How a request ended, as `mcpgw_requests_total` labels it. The order is
/// the index into [`Outcome::LABELS`] and the kept counter children.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Outcome {
    /// Answered with a result (streamed SSE answers: counted at head time).
    Ok = 0,
    /// Answered with a JSON-RPC error, the upstream's or the gateway's.
    JsonrpcError = 1,
    /// A `tools/call` result with `isError: true`.
    ToolError = 2,
    /// No usable answer from the upstream: transport, timeout, bad answer.
    UpstreamError = 3,
    /// HTTP 4xx the gateway answered itself (bad input, unknown session…).
    Refused = 4,
    /// Any other HTTP 5xx.
    Error = 5,
}

impl Outcome {
    const LABELS: [&str; 6] = [
        "ok",
        "jsonrpc_error",
        "tool_error",
        "upstream_error",
        "refused",
        "error",
    ];

    pub(crate) fn label(self) -> &'static str {
        Self::LABELS[self as usize]
    }

    /// The outcome of an answer nobody classified: by its HTTP status only.
    pub(crate) fn of_status(status: http::StatusCode) -> Self {
        match status.as_u16() {
            200..=299 => Outcome::Ok,
            400..=499 => Outcome::Refused,
            502 | 504 => Outcome::UpstreamError,
            _ => Outcome::Error,
        }
    }

    pub(crate) fn of_answer(kind: crate::jsonrpc::AnswerKind) -> Self {
        match kind {
            crate::jsonrpc::AnswerKind::Result => Outcome::Ok,
            crate::jsonrpc::AnswerKind::Error => Outcome::JsonrpcError,
            crate::jsonrpc::AnswerKind::ToolError => Outcome::ToolError,
        }
    }
}

/// Where routing reports how a request ended, when the HTTP status cannot
/// tell (a JSON-RPC error or a failed tool travels in a 200), and, for the
/// access log, where it went. One per POST, on its stack; atomic and
/// `OnceLock` only so the request's future stays `Send` (it is never shared
/// between threads).
#[derive(Default)]
pub(crate) struct OutcomeSlot {
    outcome: std::sync::atomic::AtomicU8,
    /// Filled only when the access log is on (see [`crate::route::env::Env`]).
    routed: OnceLock<Routed>,
    /// The client's W3C trace context as header lines for the upstream
    /// request (`traceparent: …\r\n`, `tracestate: …\r\n`); empty without.
    trace: Box<[u8]>,
    /// With `[tracing]`, when the request is sampled: its span, which its
    /// upstream exchanges are children of. Boxed: it is large, and every
    /// request's future carries this slot, traced or not.
    span: Option<Box<crate::otel::Parent>>,
    /// The JSON-RPC error code of the answer, where known (`NO_CODE`
    /// otherwise); recorded for the request's span.
    error_code: std::sync::atomic::AtomicI64,
}

/// Where a request was routed: the upstream, and the tool or prompt name
/// or resource URI it was routed by.
pub(crate) struct Routed {
    pub(crate) upstream: std::sync::Arc<str>,
    pub(crate) name: Option<Box<str>>,
}

impl OutcomeSlot {
    const UNSET: u8 = u8::MAX;

    const NO_CODE: i64 = i64::MIN;

    pub(crate) fn new() -> Self {
        Self::with_trace(Box::default(), None)
    }

    /// For a request that carries a trace context (header lines, or
    /// empty), and has a span when it is traced.
    pub(crate) fn with_trace(trace: Box<[u8]>, span: Option<Box<crate::otel::Parent>>) -> Self {
        Self {
            outcome: std::sync::atomic::AtomicU8::new(Self::UNSET),
            routed: OnceLock::new(),
            trace,
            span,
            error_code: std::sync::atomic::AtomicI64::new(Self::NO_CODE),
        }
    }

    /// What upstream exchanges carry of the request's trace.
    pub(crate) fn trace(&self) -> crate::otel::TraceRef<'_> {
        crate::otel::TraceRef {
            lines: &self.trace,
            parent: self.span.as_deref(),
        }
    }

    /// Whether the request has a span (routing then notes where it went).
    pub(crate) fn traced(&self) -> bool {
        self.span.is_some()
    }

    /// A JSON-RPC error answered with `code`.
    pub(crate) fn fail(&self, code: i64) {
        self.set(Outcome::JsonrpcError);
        self.note_error_code(code);
    }

    /// The answer's JSON-RPC error code, whatever the outcome says.
    pub(crate) fn note_error_code(&self, code: i64) {
        self.error_code
            .store(code, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn error_code(&self) -> Option<i64> {
        Some(self.error_code.load(std::sync::atomic::Ordering::Relaxed))
            .filter(|c| *c != Self::NO_CODE)
    }

    pub(crate) fn set(&self, outcome: Outcome) {
        self.outcome
            .store(outcome as u8, std::sync::atomic::Ordering::Relaxed);
    }

    /// The first route reported wins: a request routed by name reports its
    /// name before the call reports the upstream alone.
    pub(crate) fn note_route(&self, upstream: &std::sync::Arc<str>, name: Option<&str>) {
        if self.routed.get().is_none() {
            let _ = self.routed.set(Routed {
                upstream: upstream.clone(),
                name: name.map(Box::from),
            });
        }
    }

    pub(crate) fn routed(&self) -> Option<&Routed> {
        self.routed.get()
    }

    /// What was reported, else what the status says.
    pub(crate) fn outcome(&self, status: http::StatusCode) -> Outcome {
        match self.outcome.load(std::sync::atomic::Ordering::Relaxed) {
            0 => Outcome::Ok,
            1 => Outcome::JsonrpcError,
            2 => Outcome::ToolError,
            3 => Outcome::UpstreamError,
            4 => Outcome::Refused,
            5 => Outcome::Error,
            _ => Outcome::of_status(status),
        }
    }
}

/// Bounded label value for an MCP method.
pub(crate) fn method_label(method: &str) -> &'static str {
    KNOWN_METHODS
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("other")
}

/// The relay's own messages to upstreams (error answers, cancels) dropped
/// because too many were already on their way. Process-wide: the relay
/// sends them from wherever a session's traffic is, without the context.
pub(crate) static NOTICES_DROPPED: std::sync::LazyLock<IntCounter> =
    std::sync::LazyLock::new(|| {
        IntCounter::new(
            "mcpgw_relay_notices_dropped_total",
            "Error answers and cancels to upstreams dropped because too many were pending.",
        )
        .unwrap_or_else(|e| unreachable!("a valid metric name and help: {e}"))
    });

/// Requests to upstreams' OAuth token endpoints (`[upstream.oauth]`), by
/// upstream and outcome (`crate::upstream::credentials::grant::OUTCOMES`).
/// Process-wide like [`NOTICES_DROPPED`]: a token cache is made with its
/// upstream server, where the context is not at hand.
pub(crate) static TOKEN_FETCHES: std::sync::LazyLock<IntCounterVec> =
    std::sync::LazyLock::new(|| {
        IntCounterVec::new(
            Opts::new(
                "mcpgw_upstream_token_fetches_total",
                "Access token requests to upstreams' OAuth token endpoints, by upstream and \
                 outcome (ok, transport, timeout, oauth_error, http_error, bad_answer).",
            ),
            &["upstream", "outcome"],
        )
        .unwrap_or_else(|e| unreachable!("a valid metric name and help: {e}"))
    });

pub(crate) struct Metrics {
    registry: Registry,
    /// `method`, `outcome` (an [`Outcome`] label).
    pub requests: IntCounterVec,
    /// `method`.
    pub duration: HistogramVec,
    pub sessions: IntGauge,
    /// Stateless clients' calls parked until the client's input (MRTR).
    pub parked_calls: IntGauge,
    /// `upstream`.
    pub upstream_sessions: IntGaugeVec,
    /// `upstream`, `event` (created, reused, warm_taken, evicted_*, reattached, closed).
    pub upstream_session_events: IntCounterVec,
    /// `upstream`, `kind` (transport, timeout, session_gone, status, protocol, initialize).
    pub upstream_errors: IntCounterVec,
    /// `direction` (out: sent to the owner, in: received for a session we own).
    pub forwarded: IntCounterVec,
    /// Sessions taken over from a dead worker.
    pub resumed: prometheus::IntCounter,
    /// `cap` (params, worker, client, total): `initialize` refused.
    pub sessions_refused: IntCounterVec,
    /// The front door's decisions, one child per outcome
    /// ([`crate::auth::Decision::LABELS`]), looked up once.
    pub auth_decisions: [IntCounter; crate::auth::Decision::LABELS.len()],
    /// `endpoint`, `kind` (tool, prompt, resource), `decision` (allow,
    /// deny, hidden): authorization rules at work (`crate::authz`).
    pub authz_decisions: IntCounterVec,
    /// `endpoint`, `scope` (principal, endpoint): requests refused with 429.
    pub rate_limited: IntCounterVec,
    /// `answer` (record, absent, withheld, elsewhere): record look-ups sent to the
    /// supervisor for a session id this worker does not hold.
    pub store_fetches: IntCounterVec,
    /// Look-ups answered by the negative cache instead.
    pub store_fetches_cached: IntCounter,
    /// `[cluster]`: requests forwarded to another gateway host, by `peer`
    /// (its host name; bounded by the cluster's size) and `outcome` (ok,
    /// unreachable, misdirected).
    pub cluster_forwarded: IntCounterVec,
    /// `[cluster]`: requests on the cluster listener refused with 403, by
    /// `reason` ([`mcpgw_protocol::cluster::Refusal::LABELS`]).
    pub cluster_refused: IntCounterVec,
    /// `[cluster]`: session ids without the cluster's tag, answered 404
    /// without a store look-up.
    pub untagged_ids: IntCounter,
    /// Children of `requests` and `duration`, looked up by label once each
    /// and kept: a lookup hashes the labels and takes a lock on every request.
    /// Filled on first use, so a series appears when it first counts.
    request_children: [[OnceLock<IntCounter>; Outcome::LABELS.len()]; KNOWN_METHODS.len()],
    duration_children: [OnceLock<Histogram>; KNOWN_METHODS.len()],
    /// `upstream`, `outcome`: calls passed to an upstream.
    upstream_requests: IntCounterVec,
    /// `upstream`: time to the upstream answer's head.
    upstream_duration: HistogramVec,
    /// `upstream`, `tool` (the upstream's own name), `outcome`.
    tool_calls: IntCounterVec,
    /// The (upstream, tool) pairs counted under their own name so far, with
    /// their counters; past [`MAX_TOOL_SERIES`] a new pair counts as tool
    /// `_other`.
    tool_series: std::sync::Mutex<ToolSeries>,
}

/// The per-tool counters made so far, found by borrowed names (no key is
/// built and no label value hashed on a call).
#[derive(Default)]
struct ToolSeries {
    pairs: usize,
    by_upstream: HashMap<Arc<str>, HashMap<Box<str>, ToolChildren>>,
}

/// One (upstream, tool) pair's counter per outcome, made on first use.
type ToolChildren = [Option<IntCounter>; Outcome::LABELS.len()];

/// Distinct (upstream, tool) label pairs per worker: tool names come from
/// upstreams, and an upstream with a tool per user must not blow up the
/// series count.
pub(crate) const MAX_TOOL_SERIES: usize = 500;
/// The tool label of the pairs past [`MAX_TOOL_SERIES`].
const OTHER_TOOL: &str = "_other";

/// One upstream's children of the per-upstream families, looked up once
/// (kept on its [`crate::upstream::UpstreamServer`]).
pub(crate) struct UpstreamChildren {
    outcomes: [IntCounter; Outcome::LABELS.len()],
    duration: Histogram,
}

impl UpstreamChildren {
    pub(crate) fn observe(&self, outcome: Outcome, seconds: f64) {
        self.outcomes[outcome as usize].inc();
        self.duration.observe(seconds);
    }
}

impl Metrics {
    pub(crate) fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "mcpgw_requests_total",
                "MCP messages handled, by method and outcome: ok, jsonrpc_error (a JSON-RPC error answer), \
                 tool_error (tools/call result with isError), upstream_error (no usable upstream answer: \
                 transport, timeout, bad answer), refused (HTTP 4xx from the gateway), error (other 5xx). \
                 Streamed SSE answers count when their head is sent; a batch counts once, by its status.",
            ),
            &["method", "outcome"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "mcpgw_request_duration_seconds",
                "Time to the answer's head, by MCP method.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
            &["method"],
        )?;
        let sessions = IntGauge::new("mcpgw_sessions_active", "Downstream MCP sessions owned.")?;
        let parked_calls = IntGauge::new(
            "mcpgw_mrtr_parked_calls",
            "Stateless clients' calls parked until the client answers its upstream's input request (MRTR).",
        )?;
        let upstream_sessions = IntGaugeVec::new(
            Opts::new(
                "mcpgw_upstream_sessions_active",
                "Live upstream MCP sessions, by upstream.",
            ),
            &["upstream"],
        )?;
        let upstream_session_events = IntCounterVec::new(
            Opts::new(
                "mcpgw_upstream_session_events_total",
                "Upstream session life events, by upstream and event.",
            ),
            &["upstream", "event"],
        )?;
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "mcpgw_upstream_errors_total",
                "Failed upstream requests, by upstream and kind.",
            ),
            &["upstream", "kind"],
        )?;
        let forwarded = IntCounterVec::new(
            Opts::new(
                "mcpgw_forwarded_requests_total",
                "Requests forwarded between workers to a session's owner.",
            ),
            &["direction"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(sessions.clone()))?;
        registry.register(Box::new(parked_calls.clone()))?;
        registry.register(Box::new(upstream_sessions.clone()))?;
        registry.register(Box::new(upstream_session_events.clone()))?;
        registry.register(Box::new(upstream_errors.clone()))?;
        registry.register(Box::new(forwarded.clone()))?;
        let resumed = prometheus::IntCounter::new(
            "mcpgw_sessions_resumed_total",
            "Sessions rebuilt from their record after their worker died.",
        )?;
        registry.register(Box::new(resumed.clone()))?;
        let sessions_refused = IntCounterVec::new(
            Opts::new(
                "mcpgw_sessions_refused_total",
                "initialize refused by a session limit, by cap (params, worker, client, total).",
            ),
            &["cap"],
        )?;
        let store_fetches = IntCounterVec::new(
            Opts::new(
                "mcpgw_store_fetches_total",
                "Session records asked of the supervisor for unknown session ids, by answer.",
            ),
            &["answer"],
        )?;
        let store_fetches_cached = IntCounter::new(
            "mcpgw_store_fetches_cached_total",
            "Unknown session ids answered from the negative cache without asking the store.",
        )?;
        registry.register(Box::new(sessions_refused.clone()))?;
        let auth_vec = IntCounterVec::new(
            Opts::new(
                "mcpgw_auth_decisions_total",
                "Bearer token checks on MCP requests ([auth]), by outcome (ok, missing, invalid, \
                 expired, insufficient_scope, wrong_principal).",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(auth_vec.clone()))?;
        let auth_decisions =
            crate::auth::Decision::LABELS.map(|o| auth_vec.with_label_values(&[o]));
        registry.register(Box::new(store_fetches.clone()))?;
        registry.register(Box::new(store_fetches_cached.clone()))?;
        let cluster_forwarded = IntCounterVec::new(
            Opts::new(
                "mcpgw_cluster_forwarded_total",
                "Requests forwarded to the gateway host that owns their session, by peer host and outcome (ok, unreachable, misdirected).",
            ),
            &["peer", "outcome"],
        )?;
        let cluster_refused = IntCounterVec::new(
            Opts::new(
                "mcpgw_cluster_refused_total",
                "Requests on the cluster listener refused with 403, by reason (missing, skew, bad_signature, replay).",
            ),
            &["reason"],
        )?;
        for reason in mcpgw_protocol::cluster::Refusal::LABELS {
            cluster_refused.with_label_values(&[reason]);
        }
        let untagged_ids = IntCounter::new(
            "mcpgw_cluster_untagged_session_ids_total",
            "Session ids without the cluster key's tag (forged or random), answered 404 without a store look-up.",
        )?;
        registry.register(Box::new(cluster_forwarded.clone()))?;
        registry.register(Box::new(cluster_refused.clone()))?;
        registry.register(Box::new(untagged_ids.clone()))?;
        // Endpoint paths come from the config; kinds and decisions are fixed.
        let authz_decisions = IntCounterVec::new(
            Opts::new(
                "mcpgw_authz_decisions_total",
                "Authorization rules at work, by endpoint, kind (tool, prompt, resource) and \
                 decision: allow or deny for a call by name or URI (a denied one is answered as \
                 unknown), hidden for each item left out of a list. Endpoints without rules \
                 count nothing.",
            ),
            &["endpoint", "kind", "decision"],
        )?;
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "mcpgw_rate_limited_total",
                "JSON-RPC requests refused with 429 by an endpoint's rate_limit, by endpoint and \
                 the bucket that was empty (principal: the caller's, endpoint: everyone's).",
            ),
            &["endpoint", "scope"],
        )?;
        registry.register(Box::new(authz_decisions.clone()))?;
        registry.register(Box::new(rate_limited.clone()))?;
        let upstream_requests = IntCounterVec::new(
            Opts::new(
                "mcpgw_upstream_requests_total",
                "Calls passed to an upstream, by upstream and outcome (as mcpgw_requests_total).",
            ),
            &["upstream", "outcome"],
        )?;
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "mcpgw_upstream_request_duration_seconds",
                "Time from a call's start to its upstream answer's head, by upstream.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
            &["upstream"],
        )?;
        let tool_calls = IntCounterVec::new(
            Opts::new(
                "mcpgw_tool_calls_total",
                "tools/call by upstream, the upstream's tool name and outcome; past 500 distinct \
                 (upstream, tool) pairs per worker, new ones count as tool=\"_other\".",
            ),
            &["upstream", "tool", "outcome"],
        )?;
        registry.register(Box::new(upstream_requests.clone()))?;
        registry.register(Box::new(upstream_duration.clone()))?;
        registry.register(Box::new(tool_calls.clone()))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        registry.register(Box::new(NOTICES_DROPPED.clone()))?;
        registry.register(Box::new(TOKEN_FETCHES.clone()))?;
        for cap in ["params", "worker", "client", "total"] {
            sessions_refused.with_label_values(&[cap]);
        }
        // Bounded label sets exist from the start, so rates see zeros.
        for direction in ["in", "out"] {
            forwarded.with_label_values(&[direction]);
        }
        Ok(Self {
            registry,
            requests,
            duration,
            sessions,
            parked_calls,
            upstream_sessions,
            upstream_session_events,
            upstream_errors,
            forwarded,
            resumed,
            sessions_refused,
            auth_decisions,
            authz_decisions,
            rate_limited,
            store_fetches,
            store_fetches_cached,
            cluster_forwarded,
            cluster_refused,
            untagged_ids,
            request_children: Default::default(),
            duration_children: Default::default(),
            upstream_requests,
            upstream_duration,
            tool_calls,
            tool_series: Default::default(),
        })
    }

    /// The per-upstream children for `upstream`.
    pub(crate) fn upstream_children(&self, upstream: &str) -> UpstreamChildren {
        UpstreamChildren {
            outcomes: Outcome::LABELS
                .map(|o| self.upstream_requests.with_label_values(&[upstream, o])),
            duration: self.upstream_duration.with_label_values(&[upstream]),
        }
    }

    /// Count one `tools/call` of `tool` on `upstream`.
    pub(crate) fn tool_call(&self, upstream: &Arc<str>, tool: &str, outcome: Outcome) {
        let mut series = self
            .tool_series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let ToolSeries { pairs, by_upstream } = &mut *series;
        let bump = |children: &mut ToolChildren, name: &str| {
            children[outcome as usize]
                .get_or_insert_with(|| {
                    self.tool_calls
                        .with_label_values(&[upstream, name, outcome.label()])
                })
                .inc();
        };
        // The usual case: a pair seen before, one lookup each.
        if let Some(children) = by_upstream
            .get_mut(&**upstream)
            .and_then(|tools| tools.get_mut(tool))
        {
            return bump(children, tool);
        }
        let tools = by_upstream.entry(upstream.clone()).or_default();
        let name = if *pairs < MAX_TOOL_SERIES {
            *pairs += 1;
            tool
        } else {
            OTHER_TOOL
        };
        bump(tools.entry(Box::from(name)).or_default(), name);
    }

    /// Count one request of `method` (a [`method_label`]) with `outcome`
    /// and its time to the answer's head.
    pub(crate) fn observe_request(&self, method: &str, outcome: Outcome, seconds: f64) {
        let m = KNOWN_METHODS.iter().position(|k| *k == method);
        let o = outcome as usize;
        let outcome = outcome.label();
        match m {
            Some(m) => {
                self.request_children[m][o]
                    .get_or_init(|| self.requests.with_label_values(&[method, outcome]))
                    .inc();
                self.duration_children[m]
                    .get_or_init(|| self.duration.with_label_values(&[method]))
                    .observe(seconds);
            }
            // Not a bounded value: counted as it comes (never on the hot path).
            None => {
                self.requests.with_label_values(&[method, outcome]).inc();
                self.duration.with_label_values(&[method]).observe(seconds);
            }
        }
    }

    /// The text exposition of everything registered.
    pub(crate) fn render(&self) -> String {
        let mut out = Vec::with_capacity(8 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_bounded() {
        assert_eq!(method_label("tools/call"), "tools/call");
        assert_eq!(method_label("x/".repeat(100).as_str()), "other");
    }

    #[test]
    fn tool_series_are_capped_and_later_pairs_count_as_other() {
        let m = Metrics::new().expect("metrics");
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        for i in 0..MAX_TOOL_SERIES {
            m.tool_call(&a, &format!("t{i}"), Outcome::Ok);
        }
        m.tool_call(&a, "t0", Outcome::ToolError);
        m.tool_call(&b, "late", Outcome::Ok);
        m.tool_call(&b, "later", Outcome::Ok);
        m.tool_call(&a, "t1", Outcome::Ok);
        let text = m.render();
        for line in [
            "mcpgw_tool_calls_total{outcome=\"ok\",tool=\"t0\",upstream=\"a\"} 1",
            "mcpgw_tool_calls_total{outcome=\"tool_error\",tool=\"t0\",upstream=\"a\"} 1",
            "mcpgw_tool_calls_total{outcome=\"ok\",tool=\"t1\",upstream=\"a\"} 2",
            "mcpgw_tool_calls_total{outcome=\"ok\",tool=\"_other\",upstream=\"b\"} 2",
        ] {
            assert!(text.contains(line), "{line} not in the page");
        }
        assert!(!text.contains("tool=\"late\""));
    }

    #[test]
    fn kept_children_count_in_the_registry() {
        let m = Metrics::new().expect("metrics");
        m.observe_request("tools/call", Outcome::Ok, 0.001);
        m.observe_request("tools/call", Outcome::Ok, 0.001);
        m.observe_request("tools/call", Outcome::ToolError, 0.001);
        m.observe_request("x", Outcome::Ok, 0.001);
        let text = m.render();
        for line in [
            "mcpgw_requests_total{method=\"tools/call\",outcome=\"ok\"} 2",
            "mcpgw_requests_total{method=\"tools/call\",outcome=\"tool_error\"} 1",
            "mcpgw_requests_total{method=\"x\",outcome=\"ok\"} 1",
            "mcpgw_request_duration_seconds_count{method=\"tools/call\"} 3",
        ] {
            assert!(text.contains(line), "{line} not in {text}");
        }
        assert!(!text.contains("outcome=\"refused\""), "{text}");
    }

    #[test]
    fn renders_text_exposition() {
        let m = Metrics::new().expect("metrics");
        m.requests.with_label_values(&["ping", "ok"]).inc();
        m.upstream_sessions.with_label_values(&["a"]).set(2);
        let text = m.render();
        assert!(
            text.contains("mcpgw_requests_total{method=\"ping\",outcome=\"ok\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("mcpgw_upstream_sessions_active{upstream=\"a\"} 2"),
            "{text}"
        );
    }
}
