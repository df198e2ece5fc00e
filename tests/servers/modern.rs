//! `modern-server`: a test upstream that speaks only the stateless MCP revision
//! (2026-07-28) over Streamable HTTP, built on rmcp (the official Rust SDK), so the
//! gateway's modern-upstream client is tested against an implementation it did not
//! write.
//!
//! - No sessions (rmcp's legacy session mode off): `initialize` is refused and every
//!   request must carry its `_meta` and routing headers.
//! - Tools: `add` (a + b), `echo_meta` (what this request's `_meta` said of its client:
//!   `clientInfo` name and `clientCapabilities`), `needs_input` (answers
//!   `resultType: "input_required"` with no input requests, round after round),
//!   `ask_name` (asks an elicitation through `input_required`, then greets the name it
//!   got), `deploy` (its `region` argument is annotated `x-mcp-header: Region`, so a
//!   call must mirror it in `Mcp-Param-Region`, which rmcp checks), `notify` (a
//!   `tools/list_changed` on every open subscription; answers how many).
//! - `subscriptions/listen`: every filter is accepted as far as the capabilities go
//!   (tools `listChanged` only).
//! - `GET /log`: every HTTP request received, as `{"http": METHOD, "method": body method}`,
//!   so tests can check that no `initialize` or `DELETE` was sent.
//!
//! Prints `modern-server listening http://ADDR` on stdout once it serves. Two
//! runtime threads, as the counter server has, so the benchmark compares like with like.

use std::borrow::Cow;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use clap::Parser;
use rmcp::ErrorData as McpError;
use rmcp::ServerHandler;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    InputRequiredResult, ListToolsResult, PaginatedRequestParams, ProtocolVersion,
    ServerCapabilities, ServerConfig, ServerNotification, SubscriptionFilter, Tool,
};
use rmcp::service::{
    MaybeSendFuture, RequestContext, RoleServer, SubscriptionContext, SubscriptionSink,
};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    #[arg(long, default_value = "modern")]
    name: String,
    /// Keep no request log (`GET /log` answers `[]`): for the benchmark, where
    /// the log would grow with every request and serialise them on its lock.
    #[arg(long)]
    no_log: bool,
}

/// Every HTTP request seen, in order.
type Log = Arc<Mutex<Vec<Value>>>;

#[derive(Clone)]
struct Modern {
    name: String,
    /// The open subscriptions (`subscriptions/listen`), for `notify`.
    subscribers: Arc<Mutex<Vec<SubscriptionSink>>>,
}

fn tool(name: &'static str, description: &'static str, schema: Value) -> Tool {
    let schema = match schema {
        Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    Tool::new(name, description, Arc::new(schema))
}

fn tools() -> Vec<Tool> {
    let number = json!({"type": "number"});
    vec![
        tool(
            "add",
            "a + b",
            json!({"type": "object", "properties": {"a": number, "b": number}}),
        ),
        tool(
            "echo_meta",
            "what this request's _meta said of its client",
            json!({"type": "object"}),
        ),
        tool(
            "needs_input",
            "always asks for input (resultType input_required)",
            json!({"type": "object"}),
        ),
        tool(
            "deploy",
            "deploys to a region, which is mirrored in the Mcp-Param-Region header",
            json!({"type": "object", "properties": {
            "region": {"type": "string", "x-mcp-header": "Region"}}}),
        ),
        tool(
            "ask_name",
            "asks the client's name (elicitation, MRTR), then greets it",
            json!({"type": "object"}),
        ),
    ]
}

fn text(s: impl Into<String>) -> CallToolResponse {
    CallToolResult::success(vec![ContentBlock::text(s)]).into()
}

impl ServerHandler for Modern {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .build(),
        )
        .with_server_info(Implementation::new(self.name.clone(), "1.0.0"))
        .with_instructions(format!("{} speaks only 2026-07-28", self.name))
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        Some(requested.clone())
    }

    fn listen(
        &self,
        context: SubscriptionContext,
    ) -> impl Future<Output = Result<(), McpError>> + MaybeSendFuture + '_ {
        if let Ok(mut subscribers) = self.subscribers.lock() {
            subscribers.push(context.sink().clone());
        }
        async move {
            context.cancelled().await;
            Ok(())
        }
    }

    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        Cow::Borrowed(&[ProtocolVersion::V_2026_07_28])
    }

    fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<ListToolsResult, McpError>> + MaybeSendFuture + '_ {
        std::future::ready(Ok(ListToolsResult::with_all_items(tools())))
    }

    /// rmcp checks a call's `Mcp-Param-*` headers against the tool's schema
    /// it finds here.
    fn get_tool(&self, name: &str) -> Option<Tool> {
        tools().into_iter().find(|t| t.name == name)
    }

    fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<CallToolResponse, McpError>> + MaybeSendFuture + '_ {
        let args = request.arguments.unwrap_or_default();
        let answer = match &*request.name {
            "add" => {
                let n = |k: &str| args.get(k).and_then(Value::as_f64);
                match (n("a"), n("b")) {
                    (Some(a), Some(b)) => Ok(text(format!("{}", a + b))),
                    _ => Err(McpError::invalid_params("add needs numbers a and b", None)),
                }
            }
            "echo_meta" => {
                let info = context.client_info().map(|i| i.name);
                let caps = context
                    .client_capabilities()
                    .and_then(|c| serde_json::to_value(c).ok())
                    .unwrap_or(Value::Null);
                let version = context.protocol_version().map(|v| v.to_string());
                Ok(text(
                    json!({"clientInfo": info, "clientCapabilities": caps, "protocolVersion": version})
                        .to_string(),
                ))
            }
            "needs_input" => Ok(CallToolResponse::InputRequired(
                InputRequiredResult::from_request_state("opaque-state-1"),
            )),
            "ask_name" => ask_name(request.input_responses, request.request_state),
            // rmcp checks the Mcp-Param-Region header against the argument
            // before the call gets here.
            "deploy" => Ok(text(format!(
                "deployed to {}",
                args.get("region")
                    .and_then(Value::as_str)
                    .unwrap_or("nowhere")
            ))),
            "notify" => {
                let sinks = self
                    .subscribers
                    .lock()
                    .map(|s| s.clone())
                    .unwrap_or_default();
                return futures_util::future::Either::Left(async move {
                    let mut sent = 0;
                    for sink in sinks {
                        let changed =
                            ServerNotification::ToolListChangedNotification(Default::default());
                        if sink.send(changed).await.is_ok() {
                            sent += 1;
                        }
                    }
                    Ok(text(sent.to_string()))
                });
            }
            other => Err(McpError::invalid_params(format!("no tool {other}"), None)),
        };
        futures_util::future::Either::Right(std::future::ready(answer))
    }
}

/// `ask_name`: without input, an `input_required` with one elicitation (key `name`)
/// and the state `ask-name-1`; with the client's answer under that state, `hello
/// <name>` (or `declined`); any other state is refused.
fn ask_name(
    responses: Option<rmcp::model::InputResponses>,
    state: Option<String>,
) -> Result<CallToolResponse, McpError> {
    const STATE: &str = "ask-name-1";
    match (responses, state.as_deref()) {
        (Some(responses), Some(STATE)) => {
            let name = responses
                .get("name")
                .and_then(|r| r.pointer("/content/name"))
                .and_then(Value::as_str);
            Ok(text(
                name.map_or("declined".to_owned(), |n| format!("hello {n}")),
            ))
        }
        (_, Some(other)) => Err(McpError::invalid_params(
            format!("unknown requestState {other:?}"),
            None,
        )),
        (_, None) => serde_json::from_value::<InputRequiredResult>(json!({
            "resultType": "input_required",
            "inputRequests": {"name": {"method": "elicitation/create", "params": {
                "mode": "form", "message": "Your name?",
                "requestedSchema": {"type": "object",
                    "properties": {"name": {"type": "string"}}, "required": ["name"]}}}},
            "requestState": STATE,
        }))
        .map(CallToolResponse::InputRequired)
        .map_err(|e| McpError::internal_error(e.to_string(), None)),
    }
}

/// Record each request (HTTP method and JSON-RPC method) before rmcp sees it.
async fn record(State(log): State<Log>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 4 << 20).await else {
        return (axum::http::StatusCode::BAD_REQUEST, "body").into_response();
    };
    let method = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v.get("method").cloned())
        .unwrap_or(Value::Null);
    if let Ok(mut log) = log.lock() {
        log.push(json!({"http": parts.method.as_str(), "method": method}));
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

async fn show_log(State(log): State<Log>) -> Response {
    let entries = log.lock().map(|l| l.clone()).unwrap_or_default();
    axum::Json(Value::Array(entries)).into_response()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let handler = Modern {
        name: args.name,
        subscribers: Arc::default(),
    };
    let service: StreamableHttpService<Modern, LocalSessionManager> = StreamableHttpService::new(
        move || Ok(handler.clone()),
        Default::default(),
        StreamableHttpServerConfig::default()
            .with_legacy_session_mode(false)
            .with_json_response(true)
            .disable_allowed_hosts(),
    );
    let log: Log = Arc::default();
    let mut mcp = Router::new().nest_service("/mcp", service);
    if !args.no_log {
        mcp = mcp.layer(axum::middleware::from_fn_with_state(log.clone(), record));
    }
    let app = Router::new()
        .route("/log", axum::routing::get(show_log))
        .with_state(log)
        .merge(mcp);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let local = listener.local_addr()?;
    // The harness waits for exactly this line; it must be flushed before serving.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "modern-server listening http://{local}")?;
    stdout.flush()?;
    drop(stdout);
    axum::serve(listener, app).await?;
    Ok(())
}
