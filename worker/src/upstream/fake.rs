//! Loopback MCP servers for unit tests of the modules that talk to
//! upstreams (routing, the warm pool): each says which of them answered.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// A loopback MCP server named `name`: one tool (`echo`, answering
/// `"<name>:<tool name it was called with>"`, and `slow`, which answers
/// once `release` is notified), one resource `mem://<name>/doc`. Named
/// `public<N>` or `private<N>`, its tools list has cache hints.
pub(crate) struct FakeUpstream {
    pub(crate) url: String,
    pub(crate) release: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) async fn fake_upstream(name: &'static str) -> FakeUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/mcp", listener.local_addr().expect("addr"));
    let release = Arc::new(Notify::new());
    let released = release.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let released = released.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let released = released.clone();
                    async move { Ok::<_, Infallible>(answer(name, req, &released).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    FakeUpstream { url, release, task }
}

async fn answer(name: &str, req: Request<Incoming>, release: &Notify) -> Response<Full<Bytes>> {
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let msg: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(id) = msg.get("id").cloned() else {
        // Notifications.
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::ACCEPTED;
        return r;
    };
    let params = msg.get("params").cloned().unwrap_or(Value::Null);
    let outcome = match msg.get("method").and_then(Value::as_str).unwrap_or("") {
        "initialize" => Ok(json!({
            "protocolVersion": "2025-06-18",
            "capabilities": {"tools": {}, "resources": {}},
            "serverInfo": {"name": name, "version": "1"},
        })),
        "tools/list" => {
            let mut list = json!({"tools": [
                {"name": "echo", "inputSchema": {"type": "object"}},
                {"name": "slow", "inputSchema": {"type": "object"}},
            ]});
            // Cache hints of the stateless revision, by name: `public500`
            // gives ttlMs 500, public; `private100`, ttlMs 100, private.
            for (prefix, scope) in [("public", "public"), ("private", "private")] {
                if let Some(ttl) = name
                    .strip_prefix(prefix)
                    .and_then(|t| t.parse::<u64>().ok())
                {
                    list["ttlMs"] = json!(ttl);
                    list["cacheScope"] = json!(scope);
                }
            }
            Ok(list)
        }
        "tools/call" => {
            let tool = params["name"].as_str().unwrap_or("").to_owned();
            if tool == "slow" {
                release.notified().await;
            }
            Ok(json!({"content": [{"type": "text", "text": format!("{name}:{tool}")}]}))
        }
        "resources/list" => Ok(json!({"resources": [
            {"uri": format!("mem://{name}/doc"), "name": "doc"},
        ]})),
        "resources/read" => {
            let uri = params["uri"].as_str().unwrap_or("");
            if uri.starts_with(&format!("mem://{name}/")) {
                Ok(json!({"contents": [{"uri": uri, "text": name}]}))
            } else {
                Err(json!({"code": -32002, "message": "Resource not found"}))
            }
        }
        _ => Err(json!({"code": -32601, "message": "Method not found"})),
    };
    let message = match outcome {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err(error) => json!({"jsonrpc": "2.0", "id": id, "error": error}),
    };
    let mut r = Response::new(Full::new(Bytes::from(message.to_string())));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        "mcp-session-id",
        http::HeaderValue::from_static("upstream-session"),
    );
    r
}

/// An address nothing listens on: an upstream that is down.
pub(crate) async fn dead_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    format!("http://{}/mcp", listener.local_addr().expect("addr"))
}
