//! OTLP trace export (`[tracing]`): one server span per JSON-RPC request
//! (made in `front::stateful::post`), parented on the client's
//! `traceparent`, and one client span per exchange with an upstream (made
//! in `upstream::session::UpstreamSession::send_traced`), whose id goes
//! upstream in the `traceparent` so that the upstream's spans join the
//! trace. Spans are batched by the SDK's batch processor (its own thread)
//! and posted by [`client::Collector`] on this worker's runtime.
//!
//! Off (no `otlp_endpoint`) nothing is built: a request pays one relaxed
//! load and a branch ([`Otel::request_span`]), and allocates nothing.
//!
//! Owns the exporter's life: built at start, rebuilt on a reload that
//! changes `[tracing]`, flushed and shut down when the worker stops
//! ([`Otel::shutdown`]). Leaves the client's own trace context header lines
//! (passed upstream when no span is made) to `front::common`.
//!
//! Not covered: a batch's messages (the batch gets one span, method
//! `batch`), a call parked for a stateless client's retry (MRTR) or bridged
//! to a stateful client's stream (its later upstream exchanges carry the
//! client's `traceparent`, not a child span), and requests forwarded to
//! another worker or host (spanned where they are served, if the
//! `traceparent` travels with them).

mod client;

use std::borrow::Cow;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::HeaderMap;
use mcpgw_protocol::config::Tracing;
use mcpgw_protocol::control::WorkerId;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, Span,
};
use tracing::{info, warn};

use crate::metrics::Outcome;

/// How long one export request may take (retries included).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a stop or reload waits for the spans still queued to go out.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// This worker's tracing: off, or an exporter and its tracer.
pub(crate) struct Otel {
    /// Mirrors `current.is_some()`: what every request reads.
    on: AtomicBool,
    current: RwLock<Option<Pipeline>>,
    worker: WorkerId,
}

/// An exporter built from one `[tracing]`.
struct Pipeline {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    config: Tracing,
}

impl Otel {
    /// Tracing as `config` says (off without an endpoint). Must run on the
    /// worker's runtime: exports are spawned onto it.
    pub(crate) fn new(config: &Tracing, worker: WorkerId) -> Self {
        let otel = Self {
            on: AtomicBool::new(false),
            current: RwLock::new(None),
            worker,
        };
        if config.is_on() {
            otel.install(build(config, worker));
        }
        otel
    }

    fn install(&self, pipeline: Option<Pipeline>) -> Option<Pipeline> {
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        self.on.store(pipeline.is_some(), Ordering::Relaxed);
        std::mem::replace(&mut *current, pipeline)
    }

    /// Apply a reloaded `[tracing]`: an unchanged one keeps its exporter; a
    /// changed one replaces it, the old one flushed first.
    pub(crate) async fn apply(&self, config: &Tracing) {
        let unchanged = {
            let current = self.current.read().unwrap_or_else(|p| p.into_inner());
            match &*current {
                Some(p) => p.config == *config,
                None => !config.is_on(),
            }
        };
        if unchanged {
            return;
        }
        let next = config.is_on().then(|| build(config, self.worker)).flatten();
        let on = next.is_some();
        if let Some(old) = self.install(next) {
            flush(old).await;
        }
        info!(on, "[tracing] applied");
    }

    /// Export what is queued and stop exporting (the worker is stopping).
    pub(crate) async fn shutdown(&self) {
        if let Some(old) = self.install(None) {
            flush(old).await;
        }
    }

    /// The server span of a request with these headers, parented on the
    /// client's `traceparent` when it has a valid one; `None` when tracing
    /// is off or the request is not sampled.
    #[inline]
    pub(crate) fn request_span(&self, headers: &HeaderMap) -> Option<RequestSpan> {
        if !self.on.load(Ordering::Relaxed) {
            return None;
        }
        self.start(headers)
    }

    #[cold]
    fn start(&self, headers: &HeaderMap) -> Option<RequestSpan> {
        let tracer = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()?
            .tracer
            .clone();
        let parent = headers
            .get("traceparent")
            .and_then(|v| remote_parent(v.as_bytes()))
            .map_or_else(Context::new, |sc| {
                Context::new().with_remote_span_context(sc)
            });
        let span = tracer
            .span_builder("mcp")
            .with_kind(SpanKind::Server)
            .start_with_context(&tracer, &parent);
        // Not sampled: nothing would be exported; the client's own
        // trace context goes upstream as it came.
        span.is_recording().then_some(RequestSpan { span, tracer })
    }
}

/// Build an exporter; `None` (logged) when it cannot be, which validation
/// should have made impossible.
fn build(config: &Tracing, worker: WorkerId) -> Option<Pipeline> {
    let url = config.traces_url()?;
    let collector = match client::Collector::new(&url, EXPORT_TIMEOUT) {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "[tracing]: cannot reach the collector; tracing stays off");
            return None;
        }
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(collector)
        .with_endpoint(url)
        .with_timeout(EXPORT_TIMEOUT)
        .with_headers(config.headers.clone().into_iter().collect())
        .build();
    let exporter = match exporter {
        Ok(e) => e,
        Err(e) => {
            warn!(error = %e, "[tracing]: cannot build the OTLP exporter; tracing stays off");
            return None;
        }
    };
    // `OTEL_BSP_*` variables still tune the batches (delay, sizes).
    let batches = BatchSpanProcessor::builder(exporter)
        .with_batch_config(BatchConfigBuilder::default().build())
        .build();
    let resource = opentelemetry_sdk::Resource::builder_empty()
        .with_service_name(config.service_name.clone())
        // As `x-mcpgw-worker` says it: slot/generation/pid.
        .with_attribute(KeyValue::new(
            "service.instance.id",
            format!("{worker}/{}", std::process::id()),
        ))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(batches)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sample_ratio,
        ))))
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("mcpgw");
    Some(Pipeline {
        provider,
        tracer,
        config: config.clone(),
    })
}

/// Shut `old` down off the runtime thread: the batch processor waits for
/// its last export, which runs on this runtime.
async fn flush(old: Pipeline) {
    let provider = old.provider;
    match tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(FLUSH_TIMEOUT)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "[tracing]: spans may be lost: the last export failed"),
        Err(e) => warn!(error = %e, "[tracing]: the exporter's shutdown did not finish"),
    }
}

/// `version-traceid-parentid-flags` in lowercase hex (2-32-16-2), version
/// not `ff`, trace and parent ids not all zero (W3C Trace Context).
pub(crate) fn is_traceparent(v: &[u8]) -> bool {
    let hex = |s: &[u8]| {
        s.iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    };
    let zero = |s: &[u8]| s.iter().all(|b| *b == b'0');
    // Later versions may append fields after the four: only the four are read.
    if v.len() < 55 || (v.len() > 55 && v[55] != b'-') {
        return false;
    }
    let (version, trace, parent, flags) = (&v[0..2], &v[3..35], &v[36..52], &v[53..55]);
    v[2] == b'-'
        && v[35] == b'-'
        && v[52] == b'-'
        && hex(version)
        && version != b"ff"
        && hex(trace)
        && !zero(trace)
        && hex(parent)
        && !zero(parent)
        && hex(flags)
}

/// The client's span, from a valid `traceparent`.
fn remote_parent(v: &[u8]) -> Option<SpanContext> {
    if !is_traceparent(v) {
        return None;
    }
    let text = std::str::from_utf8(v).ok()?;
    let trace = TraceId::from_hex(&text[3..35]).ok()?;
    let span = SpanId::from_hex(&text[36..52]).ok()?;
    let flags = u8::from_str_radix(&text[53..55], 16).ok()?;
    Some(SpanContext::new(
        trace,
        span,
        TraceFlags::new(flags & 1),
        true,
        TraceState::default(),
    ))
}

/// `traceparent` for `sc`.
fn traceparent(sc: &SpanContext) -> String {
    format!(
        "00-{:032x}-{:016x}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    )
}

/// A request's server span, ended by [`RequestSpan::finish`] (or, unfinished,
/// when dropped).
pub(crate) struct RequestSpan {
    span: Span,
    tracer: SdkTracer,
}

/// What a request span is told when its request is answered.
pub(crate) struct Ended<'a> {
    pub method: &'static str,
    pub endpoint: &'a str,
    /// The tool or prompt name or resource URI it was routed by.
    pub name: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub session: Option<&'a str>,
    pub outcome: Outcome,
    pub error_code: Option<i64>,
    pub status: u16,
}

impl RequestSpan {
    /// What the request's upstream exchanges are made children of.
    pub(crate) fn parent(&self) -> Parent {
        Parent {
            cx: self.span.span_context().clone(),
            tracer: self.tracer.clone(),
        }
    }

    pub(crate) fn finish(mut self, e: Ended<'_>) {
        // MCP semantic conventions: `{method} {target}` for named targets.
        let name: Cow<'static, str> = match e.name {
            Some(n) if matches!(e.method, "tools/call" | "prompts/get") => {
                format!("{} {n}", e.method).into()
            }
            _ => e.method.into(),
        };
        self.span.update_name(name);
        let span = &mut self.span;
        span.set_attribute(KeyValue::new("mcp.method.name", e.method));
        span.set_attribute(KeyValue::new("mcpgw.endpoint", e.endpoint.to_owned()));
        if let Some(n) = e.name {
            let key = match e.method {
                "tools/call" => "gen_ai.tool.name",
                "prompts/get" => "gen_ai.prompt.name",
                m if m.starts_with("resources/") => "mcp.resource.uri",
                _ => "mcpgw.name",
            };
            span.set_attribute(KeyValue::new(key, n.to_owned()));
        }
        if let Some(u) = e.upstream {
            span.set_attribute(KeyValue::new("mcpgw.upstream", u.to_owned()));
        }
        if let Some(s) = e.session {
            // A prefix, as in the access log: the whole id is bearer-like.
            let prefix = s.get(..8).unwrap_or(s);
            span.set_attribute(KeyValue::new("mcp.session.id", prefix.to_owned()));
        }
        span.set_attribute(KeyValue::new("mcpgw.outcome", e.outcome.label()));
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(e.status),
        ));
        if let Some(code) = e.error_code {
            span.set_attribute(KeyValue::new("rpc.jsonrpc.error_code", code));
        }
        if e.outcome != Outcome::Ok {
            span.set_status(Status::error(e.outcome.label()));
        }
        span.end();
    }
}

/// What an upstream exchange carries of its request's trace: the client's
/// trace context header lines (maybe empty), and the request's span when
/// it has one.
#[derive(Clone, Copy, Default)]
pub(crate) struct TraceRef<'a> {
    pub lines: &'a [u8],
    pub parent: Option<&'a Parent>,
}

/// What an upstream exchange's span is a child of: the request span's
/// context, and the tracer that made it.
pub(crate) struct Parent {
    cx: SpanContext,
    tracer: SdkTracer,
}

impl Parent {
    /// A client span for one exchange with upstream `id` (reached at `url`,
    /// or a local program when `url` is empty).
    pub(crate) fn upstream_span(&self, id: &str, url: &str) -> UpstreamSpan {
        let parent = Context::new().with_remote_span_context(self.cx.clone());
        let mut span = self
            .tracer
            .span_builder(format!("upstream {id}"))
            .with_kind(SpanKind::Client)
            .start_with_context(&self.tracer, &parent);
        span.set_attribute(KeyValue::new("mcpgw.upstream", id.to_owned()));
        if let Some((host, port)) = host_port(url) {
            span.set_attribute(KeyValue::new("server.address", host.to_owned()));
            if let Some(port) = port {
                span.set_attribute(KeyValue::new("server.port", i64::from(port)));
            }
        }
        UpstreamSpan { span }
    }
}

/// Host and port of an `http(s)://` URL.
fn host_port(url: &str) -> Option<(&str, Option<u16>)> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    if authority.is_empty() {
        return None;
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => Some((host, port.parse().ok())),
        _ => Some((authority, None)),
    }
}

/// One upstream exchange's span; ended by [`UpstreamSpan::finish`].
pub(crate) struct UpstreamSpan {
    span: Span,
}

impl UpstreamSpan {
    /// Trace context header lines for the upstream request: this span's
    /// `traceparent`, and the client's `tracestate` line when
    /// `client_lines` (see `front::common::trace_context`) has one.
    pub(crate) fn header_lines(&self, client_lines: &[u8]) -> Vec<u8> {
        let mut lines = Vec::with_capacity(72 + client_lines.len());
        lines.extend_from_slice(b"traceparent: ");
        lines.extend_from_slice(traceparent(self.span.span_context()).as_bytes());
        lines.extend_from_slice(b"\r\n");
        // The client's lines are `traceparent` first, then `tracestate`.
        if let Some(end) = memchr::memchr(b'\n', client_lines) {
            lines.extend_from_slice(&client_lines[end + 1..]);
        }
        lines
    }

    /// The exchange ended with the answer's head (`Ok(status)`) or failed
    /// (`Err(kind)`, the error's metric label).
    pub(crate) fn finish(mut self, result: Result<u16, &'static str>) {
        match result {
            Ok(status) => {
                self.span.set_attribute(KeyValue::new(
                    "http.response.status_code",
                    i64::from(status),
                ));
                if status >= 400 {
                    self.span.set_status(Status::error(""));
                }
            }
            Err(kind) => {
                self.span.set_attribute(KeyValue::new("error.type", kind));
                self.span.set_status(Status::error(kind));
            }
        }
        self.span.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_becomes_a_remote_parent() {
        let sc = remote_parent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .expect("valid");
        assert!(sc.is_remote() && sc.is_sampled());
        assert_eq!(
            traceparent(&sc),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        let sc = remote_parent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
            .expect("valid");
        assert!(!sc.is_sampled());
        assert!(remote_parent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7").is_none());
    }

    const SAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[tokio::test]
    async fn off_builds_nothing_and_on_follows_the_parent_then_the_ratio() {
        let id = WorkerId {
            slot: 0,
            generation: 1,
        };
        let mut sampled = HeaderMap::new();
        sampled.insert("traceparent", http::HeaderValue::from_static(SAMPLED));
        let off = Otel::new(&Tracing::default(), id);
        assert!(off.current.read().expect("lock").is_none());
        assert!(off.request_span(&sampled).is_none());

        let never = Tracing {
            // Nothing listens there: the export at shutdown fails, logged.
            otlp_endpoint: Some("http://127.0.0.1:9".to_owned()),
            sample_ratio: 0.0,
            ..Tracing::default()
        };
        let on = Otel::new(&never, id);
        assert!(on.request_span(&HeaderMap::new()).is_none(), "ratio 0");
        let mut unsampled = HeaderMap::new();
        unsampled.insert(
            "traceparent",
            http::HeaderValue::from_static(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            ),
        );
        assert!(on.request_span(&unsampled).is_none(), "parent not sampled");
        let span = on
            .request_span(&sampled)
            .expect("a sampled parent is followed");
        let child = span
            .parent()
            .upstream_span("up", "http://127.0.0.1:3000/mcp");
        let lines = child.header_lines(b"traceparent: x\r\ntracestate: a=b\r\n");
        let text = String::from_utf8(lines).expect("text");
        let own = traceparent(child.span.span_context());
        assert_eq!(text, format!("traceparent: {own}\r\ntracestate: a=b\r\n"));
        assert!(own.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && own.ends_with("-01"));
        assert!(
            !own.contains("00f067aa0ba902b7"),
            "the child's own id: {own}"
        );
        child.finish(Ok(200));
        drop(span);
        on.shutdown().await;
        assert!(!on.on.load(Ordering::Relaxed));
    }

    #[test]
    fn host_and_port_of_urls() {
        assert_eq!(
            host_port("http://127.0.0.1:3000/mcp"),
            Some(("127.0.0.1", Some(3000)))
        );
        assert_eq!(host_port("https://h/mcp?x=1"), Some(("h", None)));
        assert_eq!(host_port("http://[::1]:80/"), Some(("[::1]", Some(80))));
        assert_eq!(host_port("http://[::1]/"), Some(("[::1]", None)));
        assert_eq!(host_port(""), None);
    }
}
