//! The bridge against a scripted in-process Streamable HTTP server, for what the
//! counter server used by the end-to-end tests does not do: a GET stream that carries
//! a notification and a server→client request, ends, and must be reopened with
//! `Last-Event-ID`; and a POST answer stream that ends after a priming event and must be
//! resumed with GET before its response arrives.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::header::HeaderMap;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::options::{Args, Options};
use crate::stdio::Output;

const WAIT: Duration = Duration::from_secs(10);

/// A response body: some bytes, then either the end or whatever a sender pushes.
struct TestBody {
    first: Option<Bytes>,
    rest: Option<mpsc::UnboundedReceiver<Bytes>>,
}

impl hyper::body::Body for TestBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(bytes) = this.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(bytes))));
        }
        match &mut this.rest {
            None => Poll::Ready(None),
            Some(rx) => rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b)))),
        }
    }
}

/// One request the server received.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    headers: HeaderMap,
    body: Value,
}

#[derive(Default)]
struct Script {
    seen: Mutex<Vec<Seen>>,
    /// The id of the `resumable` tools/call, answered on the resumed stream.
    resumable_id: Mutex<Option<Value>>,
    /// Senders of streams kept open, so that they do not end.
    open: Mutex<Vec<mpsc::UnboundedSender<Bytes>>>,
    gets: Mutex<u32>,
}

fn sse(text: String, keep_open: Option<&Script>) -> Response<TestBody> {
    let rest = keep_open.map(|script| {
        let (tx, rx) = mpsc::unbounded_channel();
        script.open.lock().expect("lock").push(tx);
        rx
    });
    let mut response = Response::new(TestBody {
        first: Some(Bytes::from(text)),
        rest,
    });
    response
        .headers_mut()
        .insert("content-type", "text/event-stream".parse().expect("value"));
    response
}

fn status(code: StatusCode) -> Response<TestBody> {
    let mut response = Response::new(TestBody {
        first: None,
        rest: None,
    });
    *response.status_mut() = code;
    response
}

async fn serve(
    script: Arc<Script>,
    request: Request<Incoming>,
) -> Result<Response<TestBody>, Infallible> {
    let (parts, body) = request.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    script.seen.lock().expect("lock").push(Seen {
        method: parts.method.clone(),
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    let last_event_id = parts
        .headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok(match parts.method {
        Method::POST => match body.get("method").and_then(Value::as_str) {
            Some("initialize") => {
                let answer = json!({"jsonrpc": "2.0", "id": body["id"],
                    "result": {"protocolVersion": "2025-06-18", "capabilities": {},
                               "serverInfo": {"name": "script", "version": "1"}}});
                let mut response = Response::new(TestBody {
                    first: Some(Bytes::from(answer.to_string())),
                    rest: None,
                });
                let headers = response.headers_mut();
                headers.insert("content-type", "application/json".parse().expect("value"));
                headers.insert("mcp-session-id", "s1".parse().expect("value"));
                response
            }
            Some("tools/call") => {
                *script.resumable_id.lock().expect("lock") = Some(body["id"].clone());
                // A priming event, then the stream ends before the answer.
                sse("id: r1\nretry: 10\ndata:\n\n".to_owned(), None)
            }
            _ => status(StatusCode::ACCEPTED),
        },
        Method::GET if last_event_id.as_deref() == Some("r1") => {
            let id = script
                .resumable_id
                .lock()
                .expect("lock")
                .clone()
                .unwrap_or(Value::Null);
            let answer =
                json!({"jsonrpc": "2.0", "id": id, "result": {"content": [], "resumed": true}});
            sse(format!("id: r2\ndata: {answer}\n\n"), None)
        }
        Method::GET => {
            let n = {
                let mut gets = script.gets.lock().expect("lock");
                *gets += 1;
                *gets
            };
            match n {
                1 => {
                    let note = json!({"jsonrpc": "2.0", "method": "notifications/message",
                        "params": {"level": "info", "data": "hello"}});
                    // Split across a CRLF, then the stream ends.
                    sse(format!("retry: 10\r\nid: e1\r\ndata: {note}\r\n\r\n"), None)
                }
                2 => {
                    let ping = json!({"jsonrpc": "2.0", "id": "srv-1", "method": "ping"});
                    sse(format!("id: e2\ndata: {ping}\n\n"), Some(&script))
                }
                _ => sse(": idle\n\n".to_owned(), Some(&script)),
            }
        }
        Method::DELETE => status(StatusCode::OK),
        _ => status(StatusCode::METHOD_NOT_ALLOWED),
    })
}

async fn start_server(script: Arc<Script>) -> std::io::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/mcp", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let script = script.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| serve(script.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    Ok(url)
}

async fn next_line(rx: &mut mpsc::Receiver<String>) -> Value {
    let line = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a message within the deadline")
        .expect("output open");
    serde_json::from_str(&line).expect("one JSON message per line")
}

#[tokio::test]
async fn get_stream_is_relayed_and_resumed_and_answer_streams_resume() {
    let script = Arc::new(Script::default());
    let url = start_server(script.clone()).await.expect("server");
    let options = Options::from_args(&Args {
        url,
        headers: vec!["X-Test: yes".to_owned()],
        bearer_token_file: None,
        timeout_secs: 10.0,
        reinitialize: false,
    })
    .expect("options");
    let (in_tx, in_rx) = mpsc::channel(16);
    let (out_tx, mut out_rx) = mpsc::channel(16);
    let bridge = tokio::spawn(crate::bridge::run(
        options,
        in_rx,
        Output::from_sender(out_tx),
        false,
    ));
    let send = |v: Value| {
        let in_tx = in_tx.clone();
        async move {
            in_tx
                .send(v.to_string().into_bytes())
                .await
                .expect("bridge reads")
        }
    };

    send(json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}))
    .await;
    assert_eq!(next_line(&mut out_rx).await["id"], 1);
    send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await;

    // The first GET stream's notification, then (reopened with Last-Event-ID) a ping.
    let mut by_kind: HashMap<&str, Value> = HashMap::new();
    for _ in 0..2 {
        let message = next_line(&mut out_rx).await;
        let kind = if message.get("id").is_some() {
            "request"
        } else {
            "notification"
        };
        by_kind.insert(kind, message);
    }
    assert_eq!(by_kind["notification"]["method"], "notifications/message");
    assert_eq!(
        by_kind["request"],
        json!({"jsonrpc": "2.0", "id": "srv-1", "method": "ping"})
    );
    send(json!({"jsonrpc": "2.0", "id": "srv-1", "result": {}})).await;

    // An answer stream that ends after its priming event is resumed with GET.
    send(
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "resumable"}}),
    )
    .await;
    let answer = next_line(&mut out_rx).await;
    assert_eq!(answer["id"], 2, "{answer}");
    assert_eq!(answer["result"]["resumed"], true, "{answer}");

    drop(in_tx);
    tokio::time::timeout(WAIT, bridge)
        .await
        .expect("the bridge ends once stdin closes")
        .expect("join")
        .expect("clean exit");

    let seen = script.seen.lock().expect("lock").clone();
    let header = |s: &Seen, name: &str| {
        s.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    for s in &seen {
        assert_eq!(header(s, "x-test").as_deref(), Some("yes"), "{s:?}");
        if s.body.get("method") != Some(&json!("initialize")) {
            assert_eq!(header(s, "mcp-session-id").as_deref(), Some("s1"), "{s:?}");
            assert_eq!(
                header(s, "mcp-protocol-version").as_deref(),
                Some("2025-06-18"),
                "{s:?}"
            );
        }
        if s.method == Method::POST {
            let accept = header(s, "accept").unwrap_or_default();
            assert!(
                accept.contains("application/json") && accept.contains("text/event-stream"),
                "{s:?}"
            );
            assert_eq!(
                header(s, "content-type").as_deref(),
                Some("application/json")
            );
            let method = s
                .body
                .get("method")
                .and_then(Value::as_str)
                .map(str::to_owned);
            assert_eq!(header(s, "mcp-method"), method, "{s:?}");
        }
    }
    let gets: Vec<Option<String>> = seen
        .iter()
        .filter(|s| s.method == Method::GET)
        .map(|s| header(s, "last-event-id"))
        .collect();
    assert_eq!(gets[0], None);
    assert_eq!(
        gets[1].as_deref(),
        Some("e1"),
        "reopened with Last-Event-ID: {gets:?}"
    );
    assert!(
        gets.contains(&Some("r1".to_owned())),
        "answer stream resumed: {gets:?}"
    );
    let pong = seen
        .iter()
        .find(|s| s.body.get("id") == Some(&json!("srv-1")))
        .expect("the client's answer to the ping was posted");
    assert_eq!(pong.body["result"], json!({}));
    let call = seen
        .iter()
        .find(|s| s.body.get("method") == Some(&json!("tools/call")))
        .expect("tools/call");
    assert_eq!(header(call, "mcp-name").as_deref(), Some("resumable"));
    assert_eq!(seen.last().map(|s| s.method.clone()), Some(Method::DELETE));
}
