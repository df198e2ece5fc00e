//! The bridge: reads the client's messages, decides how each goes to the server, and
//! runs the session's life from the first `initialize` to the closing `DELETE`.
//!
//! - `initialize` is sent in line (nothing else is read until it is answered), so the
//!   session id and negotiated version it yields are on every later message.
//! - Other requests each run as their own task ([`crate::exchange`]), so a slow tool
//!   call never holds up a ping.
//! - Notifications and the client's responses to server requests are sent in line and
//!   in order (a server may insist on `notifications/initialized` before requests);
//!   `notifications/initialized` then opens the server's GET stream ([`crate::stream`]).
//! - A lost session (404) fails the requests sent on it and, with `--reinitialize`,
//!   replays the client's `initialize` params for a new one.
//! - stdin EOF: in-flight requests get a few seconds, then the session is deleted.
//!   SIGTERM/SIGINT: the same without the wait (a client that kills its server after a
//!   short grace still gets its session deleted).
//!
//! Whether the server went away (a connection failed and nothing succeeded since) is
//! tracked here and decides the exit status. The session's life (initialize, replay,
//! loss, GET stream, DELETE) is in the `lifecycle` child module.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tracing::{debug, info, warn};

use crate::WrapperError;
use crate::exchange::Outgoing;
use crate::failure::Failure;
use crate::jsonrpc::{self, IdKey, Kind};
use crate::options::Options;
use crate::pending::{Entry, Pending};
use crate::session::Session;
use crate::stdio::Output;
use crate::transport::{Routing, SessionHeaders, Transport, TransportError};

mod lifecycle;

/// Everything the tasks of one wrapper process share.
#[derive(Debug)]
pub(crate) struct Bridge {
    pub(crate) options: Options,
    pub(crate) transport: Transport,
    pub(crate) session: Session,
    pub(crate) pending: Pending,
    pub(crate) out: Output,
    /// The last connection failure, cleared by any later successful exchange.
    server_gone: Mutex<Option<String>>,
    /// The GET stream task of the current session, if one runs.
    stream_task: Mutex<Option<AbortHandle>>,
}

/// Why the read loop stopped early.
enum Stop {
    /// The server could not be reached for `initialize`: nothing useful can follow.
    Unreachable(TransportError),
    /// SIGTERM or SIGINT: end the session now, without waiting for requests in flight.
    Signal(&'static str),
}

/// SIGTERM and SIGINT, if they can be watched.
struct Signals {
    terminate: Option<Signal>,
    interrupt: Option<Signal>,
}

impl Signals {
    fn new(enabled: bool) -> Self {
        let watch = |kind: SignalKind, name: &str| {
            if !enabled {
                return None;
            }
            signal(kind)
                .inspect_err(|e| warn!("cannot watch {name}: {e}"))
                .ok()
        };
        Self {
            terminate: watch(SignalKind::terminate(), "SIGTERM"),
            interrupt: watch(SignalKind::interrupt(), "SIGINT"),
        }
    }

    /// The name of the next signal received.
    async fn recv(&mut self) -> &'static str {
        async fn one(s: &mut Option<Signal>) {
            if let Some(s) = s
                && s.recv().await.is_some()
            {
                return;
            }
            std::future::pending().await
        }
        tokio::select! {
            () = one(&mut self.terminate) => "SIGTERM",
            () = one(&mut self.interrupt) => "SIGINT",
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a single assignment, so a poisoned value is consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Serves the client on `input`/`out` until stdin closes (or, with `watch_signals`,
/// SIGTERM/SIGINT arrives; tests leave the process's signal handling alone).
pub(crate) async fn run(
    options: Options,
    mut input: mpsc::Receiver<Vec<u8>>,
    out: Output,
    watch_signals: bool,
) -> Result<(), WrapperError> {
    let bridge = Arc::new(Bridge {
        transport: Transport::new(&options).map_err(WrapperError::Start)?,
        options,
        session: Session::default(),
        pending: Pending::default(),
        out,
        server_gone: Mutex::new(None),
        stream_task: Mutex::new(None),
    });
    info!(url = %bridge.transport.url(), "mcpgw wrapper: bridging stdio to the MCP server");
    let mut tasks = JoinSet::new();
    let mut signals = Signals::new(watch_signals);
    let stop = loop {
        while tasks.try_join_next().is_some() {}
        let line = tokio::select! {
            line = input.recv() => line,
            name = signals.recv() => break Some(Stop::Signal(name)),
        };
        let Some(line) = line else {
            debug!("stdin closed");
            break None;
        };
        if let Err(stop) = bridge.handle_line(&line, &mut tasks).await {
            break Some(stop);
        }
    };
    let grace = match &stop {
        Some(Stop::Signal(name)) => {
            info!("{name} received; ending the session");
            Duration::ZERO
        }
        _ => bridge.options.shutdown_grace,
    };
    bridge.shutdown(tasks, grace).await;
    match stop {
        Some(Stop::Unreachable(e)) => Err(WrapperError::Unreachable {
            url: bridge.transport.url().to_string(),
            reason: e.to_string(),
        }),
        Some(Stop::Signal(_)) | None => match lock(&bridge.server_gone).take() {
            Some(reason) => Err(WrapperError::ServerGone {
                url: bridge.transport.url().to_string(),
                reason,
            }),
            None => Ok(()),
        },
    }
}

impl Bridge {
    async fn handle_line(
        self: &Arc<Self>,
        line: &[u8],
        tasks: &mut JoinSet<()>,
    ) -> Result<(), Stop> {
        let message: Value = match serde_json::from_slice(line) {
            Ok(v) => v,
            Err(e) => {
                warn!("client sent a line that is not JSON: {e}");
                let error = jsonrpc::error_response(
                    &Value::Null,
                    jsonrpc::PARSE_ERROR,
                    &format!("parse error: {e}"),
                    None,
                );
                self.out.send(&error).await;
                return Ok(());
            }
        };
        if let Value::Array(batch) = &message {
            self.start_batch(batch, &message, tasks).await;
            return Ok(());
        }
        match jsonrpc::classify(&message) {
            Kind::Request { id, method } if method == "initialize" => {
                self.initialize(id, message).await
            }
            Kind::Request { id, method } => {
                let key = IdKey::of(&id);
                if !self.register(&key, id, &method).await {
                    return Ok(());
                }
                let bridge = self.clone();
                tasks.spawn(async move { bridge.request(vec![key], message).await });
                Ok(())
            }
            Kind::Notification { method } => {
                self.one_way(&message, Some(&method)).await;
                if method == "notifications/cancelled" {
                    self.forget_cancelled(&message);
                }
                Ok(())
            }
            Kind::Response { .. } => {
                self.one_way(&message, None).await;
                Ok(())
            }
            Kind::Invalid { id, reason } => {
                warn!("client sent an invalid message: {reason}");
                let id = id.unwrap_or(Value::Null);
                let error = jsonrpc::error_response(
                    &id,
                    jsonrpc::INVALID_REQUEST,
                    &format!("invalid request: {reason}"),
                    None,
                );
                self.out.send(&error).await;
                Ok(())
            }
        }
    }

    /// Registers a client request as pending; answers it with an error and returns
    /// `false` if its id is already in flight.
    async fn register(&self, key: &IdKey, id: Value, method: &str) -> bool {
        let entry = Entry {
            id: id.clone(),
            method: method.to_owned(),
            generation: self.session.now().generation,
            to_client: true,
        };
        if self.pending.register(key.clone(), entry) {
            return true;
        }
        warn!(%key, "client reused the id of a request still in flight");
        let error = jsonrpc::error_response(
            &id,
            jsonrpc::INVALID_REQUEST,
            &format!("mcpgw wrapper: a request with id {key} is already in flight"),
            None,
        );
        self.out.send(&error).await;
        false
    }

    /// The client cancelled one of its requests: it expects no answer, and the server
    /// may send none, so stop waiting for one (the request's stream is dropped).
    fn forget_cancelled(&self, message: &Value) {
        if let Some(id) = message.pointer("/params/requestId")
            && self.pending.take(&IdKey::of(id)).is_some()
        {
            debug!(%id, "request cancelled by the client");
        }
    }

    /// A batch goes to the server as it is; its requests are answered one by one.
    async fn start_batch(
        self: &Arc<Self>,
        batch: &[Value],
        message: &Value,
        tasks: &mut JoinSet<()>,
    ) {
        if batch.is_empty() {
            let error = jsonrpc::error_response(
                &Value::Null,
                jsonrpc::INVALID_REQUEST,
                "invalid request: empty batch",
                None,
            );
            self.out.send(&error).await;
            return;
        }
        let mut keys = Vec::new();
        for item in batch {
            if let Kind::Request { id, method } = jsonrpc::classify(item) {
                let key = IdKey::of(&id);
                if self.register(&key, id, &method).await {
                    keys.push(key);
                }
            }
        }
        let bridge = self.clone();
        let message = message.clone();
        tasks.spawn(async move { bridge.request(keys, message).await });
    }

    /// The session headers to send on, after any `initialize` in flight; with
    /// `--reinitialize`, a lost session is replaced first. `Err` carries why there is
    /// no session to send on.
    pub(crate) async fn ready(self: &Arc<Self>) -> Result<(u64, SessionHeaders), String> {
        let state = self.session.settled().await;
        match state.headers() {
            Ok(headers) => Ok((state.generation, headers)),
            Err(reason) if self.options.reinitialize && state.init_params.is_some() => {
                self.reinitialize().await;
                let state = self.session.settled().await;
                state
                    .headers()
                    .map(|h| (state.generation, h))
                    .map_err(|_| reason)
            }
            Err(reason) => Err(reason),
        }
    }

    /// One client request (or batch) as its own task.
    async fn request(self: Arc<Self>, keys: Vec<IdKey>, message: Value) {
        let (generation, mut headers) = match self.ready().await {
            Ok(ready) => ready,
            Err(reason) => {
                for key in &keys {
                    if let Some(entry) = self.pending.take(key) {
                        self.fail(
                            &entry,
                            &Failure::NoSession {
                                reason: reason.clone(),
                            },
                        )
                        .await;
                    }
                }
                return;
            }
        };
        // Requests failed while waiting (a lost session) must not be sent after all.
        let keys: Vec<IdKey> = keys
            .into_iter()
            .filter(|k| self.pending.set_generation(k, generation))
            .collect();
        if keys.is_empty() && !message.is_array() {
            return;
        }
        if let Some(version) = jsonrpc::meta_protocol_version(&message) {
            headers.protocol_version = hyper::header::HeaderValue::from_str(version).ok();
        }
        let method = message.get("method").and_then(Value::as_str);
        let routing = Routing {
            method,
            name: jsonrpc::routing_name(&message),
        };
        let body = Bytes::from(message.to_string());
        self.exchange(Outgoing {
            body,
            keys,
            routing,
            headers,
            generation,
            capture: false,
        })
        .await;
    }

    /// A notification or a response to a server request, in line and in order.
    async fn one_way(self: &Arc<Self>, message: &Value, method: Option<&str>) {
        let (generation, mut headers) = match self.ready().await {
            Ok(ready) => ready,
            Err(reason) => {
                warn!(
                    method = method.unwrap_or("(response)"),
                    "not sent: {reason}"
                );
                return;
            }
        };
        if let Some(version) = jsonrpc::meta_protocol_version(message) {
            headers.protocol_version = hyper::header::HeaderValue::from_str(version).ok();
        }
        let routing = Routing {
            method,
            name: jsonrpc::routing_name(message),
        };
        let outcome = self
            .exchange(Outgoing {
                body: Bytes::from(message.to_string()),
                keys: Vec::new(),
                routing,
                headers: headers.clone(),
                generation,
                capture: false,
            })
            .await;
        if method == Some("notifications/initialized")
            && outcome.accepted
            && self.session.set_client_initialized(generation)
        {
            self.start_stream(generation, headers);
        }
    }

    /// Writes the error answering `entry` (a client request only).
    pub(crate) async fn fail(&self, entry: &Entry, failure: &Failure) {
        if !entry.to_client {
            return;
        }
        debug!(id = %entry.id, method = %entry.method, "answering with an error: {failure}");
        self.out.send(&failure.to_response(&entry.id)).await;
    }

    pub(crate) fn note_connection_failure(&self, error: &TransportError) {
        if error.is_connection_failure() {
            *lock(&self.server_gone) = Some(error.to_string());
        }
    }

    pub(crate) fn note_server_ok(&self) {
        *lock(&self.server_gone) = None;
    }
}
