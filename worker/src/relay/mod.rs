//! The stateful MCP surface between one downstream session and its upstream
//! sessions: server→client requests (sampling, elicitation, roots, ping) and
//! the client's answers to them, notifications both ways, and cancellation.
//!
//! It owns the per-session maps that make this work ([`Relay`]) and the
//! routing of every message an upstream sends outside the one response the
//! client asked for. The endpoint decides when a call starts and how its
//! answer is framed; the registry owns the upstream sessions themselves.
//!
//! Ids and tokens, per downstream session:
//! - **Client request ids** pass upstream unchanged: an upstream session
//!   belongs to exactly one downstream session, so they cannot collide there.
//!   [`Relay`] remembers which upstream session runs each in-flight client id,
//!   so a client's `notifications/cancelled` reaches that one upstream (with
//!   the same id) and nothing else, and a call whose client went away is
//!   cancelled upstream.
//! - **Progress tokens** in client requests are replaced by a gateway token
//!   `"mcpgw:p<n>"` (`n` unique in the worker) and mapped back in
//!   `notifications/progress`, whichever upstream stream it arrives on.
//! - **Server→client request ids** are replaced by `"mcpgw:s<n>"` (`n` unique
//!   in the worker), so requests from several upstreams never collide at the
//!   client; the client's response is sent to the upstream session that asked,
//!   with the upstream's original id. An upstream's `notifications/cancelled`
//!   for such a request is mapped the same way, and so is a progress token
//!   in it (`"mcpgw:p<n>"` to the client; the client's progress goes to the
//!   upstream that asked, with its own token).
//!
//! A server→client request goes out on the stream of the call it arrived on,
//! else on the session's GET stream; with neither, and for a capability the
//! client did not declare at `initialize`, the upstream gets a JSON-RPC error
//! at once. Requests still pending when their stream goes away, or when the
//! session ends, are answered upstream with an error. Those error answers
//! (and cancels) go out a bounded number at a time per worker, with a
//! bounded queue behind them; past it they are dropped, logged and counted
//! (`mcpgw_relay_notices_dropped_total`), so an upstream that floods us with
//! requests cannot make us open a connection for each.
//!
//! Submodules: [`caps`] (what the client declared), [`route`] (where each
//! upstream message goes), [`streams`] (a call's SSE answer, the upstream
//! GET streams).

mod caps;
mod route;
mod streams;

pub(crate) use caps::ClientCaps;
pub(crate) use streams::{
    PumpEnd, became_true, follow, follow_modern, listen, pump_call, upstream_created,
};

use foldhash::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, timeout_at};
use tracing::{debug, info, warn};

use crate::bounded::join_all_within;
use crate::jsonrpc::{self, RawObject};
use crate::upstream::{UpstreamError, UpstreamSession};

/// Bound on delivering one of our own messages (an error answer, a cancel)
/// to an upstream: they are best effort and must not hold anything up.
const NOTICE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on relaying a client's response or notification upstream.
const DELIVER_TIMEOUT: Duration = Duration::from_secs(30);
/// Server→client requests one session may have waiting for the client; more
/// are refused, so a client that never answers cannot grow the map forever.
const MAX_PENDING: usize = 1024;
/// Longest logging level kept for replay (the longest RFC 5424 name MCP
/// uses is 9 bytes).
const MAX_LOG_LEVEL_LEN: usize = 32;
/// Messages queued for a slow client stream before the sender waits.
pub(crate) const STREAM_QUEUE: usize = 64;
/// JSON-RPC code for a server→client request the gateway refuses or that
/// lost its client.
const REQUEST_FAILED: i32 = jsonrpc::INTERNAL_ERROR;

/// Ids and tokens the gateway hands out, unique in this worker process.
static NEXT: AtomicU64 = AtomicU64::new(1);

fn next_number() -> u64 {
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A JSON-RPC id as a map key: numbers as written, strings re-encoded so
/// that two spellings of one string are one key.
pub(crate) fn id_key(raw: &str) -> Option<String> {
    let raw = raw.trim();
    if !raw.starts_with('"') {
        return Some(raw.to_owned());
    }
    if !raw.contains('\\') {
        return Some(raw.to_owned());
    }
    serde_json::from_str::<String>(raw)
        .ok()
        .map(|s| jsonrpc::json_string(&s))
}

/// One client request in flight on an upstream session.
pub(crate) struct Call {
    seq: u64,
    key: String,
    upstream: Arc<UpstreamSession>,
    /// (gateway token, the client's token as raw JSON).
    token: Option<(String, Box<str>)>,
    /// The client's SSE answer stream, once the answer is streamed.
    stream: Mutex<Option<mpsc::Sender<Bytes>>>,
    /// The client cancelled it: the upstream was told already.
    cancelled: AtomicBool,
    /// Wakes whoever waits on the call once the upstream was told of the
    /// client's cancel: the client ignores any answer from then on, and an
    /// upstream need not send one.
    interrupt: tokio::sync::Notify,
}

impl Call {
    fn stream(&self) -> Option<mpsc::Sender<Bytes>> {
        self.stream.lock().ok()?.clone()
    }

    pub(crate) fn upstream(&self) -> &Arc<UpstreamSession> {
        &self.upstream
    }

    /// Stop waiting for this call's answer (after the upstream was told).
    pub(crate) fn interrupt(&self) {
        self.interrupt.notify_one();
    }
}

/// A server→client request waiting for the client's answer.
struct Pending {
    upstream: Arc<UpstreamSession>,
    /// The upstream's id, raw JSON.
    original_id: Box<str>,
    origin: Origin,
    /// (gateway token, the upstream's token as raw JSON) when the request
    /// asked the client for progress.
    token: Option<(String, Box<str>)>,
}

/// Where a pending request was delivered; it fails when that goes away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Call(u64),
    Stream(u64),
}

/// The session's GET stream as the relay sees it.
struct ServerStream {
    generation: u64,
    tx: mpsc::Sender<Bytes>,
    /// Dropped when this stream ends or is replaced; tasks that serve it
    /// (keep-alive, upstream listeners) watch it.
    alive: watch::Sender<()>,
}

#[derive(Default)]
struct State {
    calls: HashMap<String, Arc<Call>>,
    tokens: HashMap<String, Arc<Call>>,
    pending: HashMap<String, Pending>,
    /// Requests the gateway itself put to the client (bridging a
    /// 2026-07-28 upstream's `input_required`), by the id the client sees:
    /// the client's answer goes to whoever waits on the receiver.
    asked: HashMap<String, oneshot::Sender<Bytes>>,
    /// A stateless client's request that may be asked for input (MRTR):
    /// server→client requests of its calls, which have no stream to go
    /// on, are handed here instead of refused (see [`Relay::capture`]).
    capture: Option<mpsc::Sender<Captured>>,
    stream: Option<ServerStream>,
    closed: bool,
}

/// One downstream session's relay state; see the module doc for the maps.
pub(crate) struct Relay {
    pub caps: ClientCaps,
    state: Mutex<State>,
    /// The params of the client's last `logging/setLevel`, raw: applied to
    /// upstream sessions created after it.
    log_level: Mutex<Option<Box<str>>>,
    /// URI → upstream id, learned from `resources/list`; an upstream's
    /// `resources/list_changed` forgets its entries.
    pub(crate) resource_routes: Mutex<std::collections::HashMap<String, Arc<str>>>,
}

impl Relay {
    pub(crate) fn new(init_params: &str) -> Self {
        Self {
            caps: ClientCaps::from_init_params(init_params),
            state: Mutex::new(State::default()),
            log_level: Mutex::new(None),
            resource_routes: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// The upstream's resources changed: its URIs are learned again from the
    /// next `resources/list` (until then, reads ask each upstream in turn).
    pub(crate) fn forget_resources_of(&self, upstream: &str) {
        if let Ok(mut map) = self.resource_routes.lock() {
            map.retain(|_, owner| &**owner != upstream);
        }
    }

    /// Remember the client's logging level (`logging/setLevel` params).
    /// Only the level is kept, and only a short one: the raw params are the
    /// client's to fill (up to the body limit) and would be held for the
    /// session's life.
    pub(crate) fn set_log_level(&self, params: &str) {
        #[derive(Deserialize)]
        struct P<'a> {
            #[serde(borrow)]
            level: std::borrow::Cow<'a, str>,
        }
        let Some(level) = serde_json::from_str::<P<'_>>(params)
            .ok()
            .filter(|p| p.level.len() <= MAX_LOG_LEVEL_LEN)
        else {
            debug!(
                "logging/setLevel without a short params.level; not replayed to new upstream sessions"
            );
            return;
        };
        let kept = format!("{{\"level\":{}}}", jsonrpc::json_string(&level.level));
        if let Ok(mut l) = self.log_level.lock() {
            *l = Some(kept.into());
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every critical section is a few map operations that cannot leave
        // the maps inconsistent, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The GET stream's sender and generation, if one is open.
    fn server_stream(&self) -> Option<(mpsc::Sender<Bytes>, u64)> {
        self.state()
            .stream
            .as_ref()
            .map(|s| (s.tx.clone(), s.generation))
    }

    /// Make `tx` the session's GET stream (a newer GET replaces an older
    /// one, which then ends). Returns its generation and a receiver that
    /// errors once the stream ended.
    pub(crate) fn open_stream(&self, tx: mpsc::Sender<Bytes>) -> (u64, watch::Receiver<()>) {
        let generation = next_number();
        let (alive, alive_rx) = watch::channel(());
        let replaced = {
            let mut st = self.state();
            if st.closed {
                // The session ended meanwhile: the stream ends at once.
                drop(alive);
                return (generation, alive_rx);
            }
            st.stream.replace(ServerStream {
                generation,
                tx,
                alive,
            })
        };
        if let Some(old) = replaced {
            debug!(
                generation = old.generation,
                "a newer GET stream replaces this one"
            );
            self.fail_pending(
                |o| o == Origin::Stream(old.generation),
                "the stream was replaced",
            );
        }
        (generation, alive_rx)
    }

    /// The GET stream of `generation` has ended (client gone, session or
    /// worker stopping): requests delivered on it fail.
    pub(crate) fn stream_gone(&self, generation: u64) {
        let gone = {
            let mut st = self.state();
            match &st.stream {
                Some(s) if s.generation == generation => st.stream.take(),
                _ => None,
            }
        };
        if gone.is_some() {
            self.fail_pending(
                |o| o == Origin::Stream(generation),
                "the client's stream closed",
            );
        }
    }

    /// Receiver for the current GET stream's life, if one is open.
    pub(crate) fn stream_alive(&self) -> Option<(u64, watch::Receiver<()>)> {
        self.state()
            .stream
            .as_ref()
            .map(|s| (s.generation, s.alive.subscribe()))
    }

    /// The session is ending (it was just removed from the table): from now
    /// on nothing new is registered, and what is pending stays for
    /// [`Relay::close`], which answers it before the upstream sessions close.
    /// Calls and streams that end in between (they watch the session's close
    /// signal) would otherwise race their error answers with the upstream
    /// DELETE.
    pub(crate) fn begin_close(&self) {
        self.state().closed = true;
    }

    /// The session ended: pending server→client requests are answered with
    /// an error (bounded), the GET stream and every map entry go.
    pub(crate) async fn close(&self, bound: Duration) {
        let pending: Vec<Pending> = {
            let mut st = self.state();
            st.closed = true;
            st.stream = None;
            st.calls.clear();
            st.tokens.clear();
            // Whoever waits on them learns that no answer will come.
            st.asked.clear();
            st.pending.drain().map(|(_, p)| p).collect()
        };
        if pending.is_empty() {
            return;
        }
        info!(
            count = pending.len(),
            "session ended with server requests pending; answering them with an error"
        );
        let notices = pending.into_iter().map(|p| {
            let body = jsonrpc::error(
                &p.original_id,
                REQUEST_FAILED,
                "the client session ended",
                None,
            );
            async move { post_notice(&p.upstream, body, bound).await }
        });
        join_all_within(notices, bound).await;
    }

    /// Remove pending requests whose origin matches and answer each
    /// upstream with an error (in the background).
    fn fail_pending(&self, matches: impl Fn(Origin) -> bool, why: &'static str) {
        let failed: Vec<Pending> = {
            let mut st = self.state();
            if st.closed {
                // The session is ending: [`Relay::close`] answers them, before
                // the upstream sessions are closed.
                return;
            }
            let keys: Vec<String> = st
                .pending
                .iter()
                .filter(|(_, p)| matches(p.origin))
                .map(|(k, _)| k.clone())
                .collect();
            keys.iter().filter_map(|k| st.pending.remove(k)).collect()
        };
        for p in failed {
            info!(upstream = %p.upstream.server.id, id = %p.original_id, why, "server request lost its client; answering with an error");
            let body = jsonrpc::error(&p.original_id, REQUEST_FAILED, why, None);
            spawn_notice(p.upstream, body);
        }
    }

    /// Register a server→client request; returns the id the client sees, or
    /// `None` when too many are pending.
    fn add_pending(&self, p: Pending) -> Option<String> {
        let mut st = self.state();
        if st.closed || st.pending.len() >= MAX_PENDING {
            return None;
        }
        let id = format!("\"mcpgw:s{}\"", next_number());
        st.pending.insert(id.clone(), p);
        Some(id)
    }

    /// Register a request the gateway itself puts to the client: the id the
    /// client sees (raw JSON) and where its answer will arrive. `None` when
    /// the session is ending or too many requests are waiting.
    pub(crate) fn ask(&self) -> Option<(String, oneshot::Receiver<Bytes>)> {
        let mut st = self.state();
        if st.closed || st.pending.len() + st.asked.len() >= MAX_PENDING {
            return None;
        }
        let id = format!("\"mcpgw:s{}\"", next_number());
        let (tx, rx) = oneshot::channel();
        st.asked.insert(id.clone(), tx);
        Some((id, rx))
    }

    /// Server→client requests that have nowhere to go (a stateless client's
    /// call: no stream) are registered as pending and handed to `tx`
    /// instead of refused; the client answers them later through
    /// [`Relay::take_answer`] with the gateway id.
    pub(crate) fn capture(&self, tx: mpsc::Sender<Captured>) {
        self.state().capture = Some(tx);
    }

    fn capturer(&self) -> Option<mpsc::Sender<Captured>> {
        self.state().capture.clone()
    }

    /// Stop waiting for answers to these [`Relay::ask`] ids (the request
    /// that asked them ended); a late answer is then an unknown one.
    pub(crate) fn forget_asked<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let mut st = self.state();
        for id in ids {
            st.asked.remove(id);
        }
    }

    /// A client request's progress token, replaced by a gateway token.
    /// Returns the rewritten body and the mapping; `None` if the body does
    /// not have the shape a token needs (it is then sent unchanged).
    pub(crate) fn map_progress(body: &[u8]) -> Option<(Bytes, (String, Box<str>))> {
        let text = std::str::from_utf8(body).ok()?;
        let env: RawObject<'_> = serde_json::from_str(text).ok()?;
        let params = env.get("params")?;
        let params_obj: RawObject<'_> = serde_json::from_str(params.get()).ok()?;
        let meta = params_obj.get("_meta")?;
        let meta_obj: RawObject<'_> = serde_json::from_str(meta.get()).ok()?;
        let original = meta_obj.get("progressToken")?;
        let gateway = format!("mcpgw:p{}", next_number());
        let new_meta =
            jsonrpc::with_member(meta.get(), "progressToken", &jsonrpc::json_string(&gateway))?;
        let new_body = jsonrpc::with_param(body, params.get(), "_meta", &new_meta)?;
        Some((
            Bytes::from(new_body),
            (jsonrpc::json_string(&gateway), original.get().into()),
        ))
    }

    /// A client's `notifications/cancelled`: the call it names, if still in
    /// flight. Marks it so that its end does not cancel it a second time.
    pub(crate) fn cancel_target(&self, params: Option<&RawValue>) -> Option<Arc<Call>> {
        #[derive(Deserialize)]
        struct P<'a> {
            #[serde(rename = "requestId", borrow)]
            request_id: &'a RawValue,
        }
        let p: P<'_> = serde_json::from_str(params?.get()).ok()?;
        let key = id_key(p.request_id.get())?;
        let call = self.state().calls.get(&key).cloned()?;
        call.cancelled.store(true, Ordering::Relaxed);
        Some(call)
    }

    /// The client's progress on a server→client request: the upstream that
    /// asked, and the notification with that upstream's own token.
    pub(crate) fn client_progress(
        &self,
        params: Option<&RawValue>,
        body: &[u8],
    ) -> Option<(Arc<UpstreamSession>, Bytes)> {
        let params = params?;
        let obj: RawObject<'_> = serde_json::from_str(params.get()).ok()?;
        let key = id_key(obj.get("progressToken")?.get())?;
        let (us, original) = {
            let st = self.state();
            st.pending.values().find_map(|p| {
                let (gateway, original) = p.token.as_ref()?;
                (*gateway == key).then(|| (p.upstream.clone(), original.clone()))
            })?
        };
        let message = jsonrpc::with_param(body, params.get(), "progressToken", &original)?;
        Some((us, Bytes::from(message)))
    }

    /// The client's answer to a server→client request: where it goes and
    /// the body with the upstream's own id; `None` when the gateway asked
    /// it and has been handed the answer.
    pub(crate) fn take_answer(
        &self,
        id_raw: &str,
        body: &Bytes,
    ) -> Result<Option<(Arc<UpstreamSession>, Bytes)>, AnswerError> {
        let key = id_key(id_raw).ok_or(AnswerError::Unknown)?;
        let pending = {
            let mut st = self.state();
            if let Some(asker) = st.asked.remove(&key) {
                drop(st);
                // A receiver gone (its request ended) makes this answer moot.
                return asker
                    .send(body.clone())
                    .map(|()| None)
                    .map_err(|_| AnswerError::Unknown);
            }
            st.pending.remove(&key).ok_or(AnswerError::Unknown)?
        };
        let rewritten = std::str::from_utf8(body)
            .ok()
            .and_then(|text| jsonrpc::with_member(text, "id", &pending.original_id));
        let Some(rewritten) = rewritten else {
            // The upstream must not wait for an answer that will not come.
            let error = jsonrpc::error(
                &pending.original_id,
                REQUEST_FAILED,
                "the client's answer was malformed",
                None,
            );
            spawn_notice(pending.upstream, error);
            return Err(AnswerError::Malformed);
        };
        Ok(Some((pending.upstream, Bytes::from(rewritten))))
    }
}

/// A server→client request captured for a stateless client (see
/// [`Relay::capture`]).
#[derive(Debug)]
pub(crate) struct Captured {
    /// The id the client answers with (raw JSON, a string).
    pub gateway_id: String,
    /// The request, with that id.
    pub message: Bytes,
}

/// Why a client's response could not be relayed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AnswerError {
    #[error("no server request with this id is waiting for an answer")]
    Unknown,
    #[error("the response is not a JSON object")]
    Malformed,
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

impl AnswerError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::Unknown | Self::Malformed => StatusCode::BAD_REQUEST,
            Self::Upstream(_) => StatusCode::BAD_GATEWAY,
        }
    }
}

/// Send one message of the gateway's own (an error answer, a cancel) to an
/// upstream session and drop its answer.
async fn post_notice(us: &UpstreamSession, body: Bytes, bound: Duration) {
    let deadline = Instant::now() + bound;
    match us.send(body, deadline).await {
        Ok(resp) => {
            let _ = timeout_at(deadline, resp.into_body().collect()).await;
        }
        Err(e) => debug!(upstream = %us.server.id, error = %e, "upstream did not take our message"),
    }
}

/// Our own messages (error answers to server→client requests we cannot
/// deliver, cancels) sent at once by this worker; each holds an upstream
/// connection while it is sent. An upstream that floods us with requests
/// must not make us open a connection per request.
const MAX_NOTICES_IN_FLIGHT: usize = 32;
/// Notices waiting for a slot besides those in flight; past it they are
/// dropped (counted and logged): the upstream's request then times out on
/// its side, which is all a flooding upstream can expect.
const MAX_NOTICES_WAITING: usize = 1024;

static NOTICE_SLOTS: tokio::sync::Semaphore =
    tokio::sync::Semaphore::const_new(MAX_NOTICES_IN_FLIGHT);
/// Notices in flight or waiting.
static NOTICES_QUEUED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// Set while notices are being dropped, so a burst logs one line.
static NOTICES_DROPPING: AtomicBool = AtomicBool::new(false);

/// A place among the queued notices, given back when the notice is done
/// (or its task is dropped).
struct NoticePlace;

impl NoticePlace {
    fn take() -> Option<Self> {
        let before = NOTICES_QUEUED.fetch_add(1, Ordering::AcqRel);
        if before >= MAX_NOTICES_IN_FLIGHT + MAX_NOTICES_WAITING {
            NOTICES_QUEUED.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Self)
    }
}

impl Drop for NoticePlace {
    fn drop(&mut self) {
        NOTICES_QUEUED.fetch_sub(1, Ordering::AcqRel);
    }
}

fn spawn_notice(us: Arc<UpstreamSession>, body: Bytes) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let Some(place) = NoticePlace::take() else {
        crate::metrics::NOTICES_DROPPED.inc();
        if !NOTICES_DROPPING.swap(true, Ordering::Relaxed) {
            warn!(upstream = %us.server.id, in_flight = MAX_NOTICES_IN_FLIGHT, waiting = MAX_NOTICES_WAITING,
                "too many messages to upstreams pending; dropping error answers and cancels (mcpgw_relay_notices_dropped_total)");
        }
        return;
    };
    rt.spawn(async move {
        // The semaphore is never closed; an error would mean no bound, so
        // the notice is dropped rather than sent unbounded.
        let Ok(_slot) = NOTICE_SLOTS.acquire().await else {
            return;
        };
        post_notice(&us, body, NOTICE_TIMEOUT).await;
        drop(place);
        NOTICES_DROPPING.store(false, Ordering::Relaxed);
    });
}

/// Relay a client message (a response or notification, already rewritten)
/// to an upstream session; the upstream must accept it. Bounded more
/// tightly than a call: an upstream takes these at once (202).
pub(crate) async fn deliver_upstream(
    us: &UpstreamSession,
    body: Bytes,
) -> Result<(), UpstreamError> {
    let deadline = Instant::now() + us.server.request_timeout().min(DELIVER_TIMEOUT);
    let resp = us.send(body, deadline).await?;
    let _ = timeout_at(deadline, resp.into_body().collect()).await;
    Ok(())
}

/// A client request registered with the relay for as long as it runs. When
/// it is dropped before its answer was delivered (the client went away, the
/// call timed out), the upstream is told to cancel it.
pub(crate) struct CallGuard {
    relay: Arc<Relay>,
    call: Arc<Call>,
    finished: bool,
}

impl CallGuard {
    /// Register client request `id_raw` as running on `upstream`.
    pub(crate) fn start(
        relay: &Arc<Relay>,
        upstream: &Arc<UpstreamSession>,
        id_raw: &str,
        token: Option<&(String, Box<str>)>,
    ) -> Self {
        let call = Arc::new(Call {
            seq: next_number(),
            key: id_key(id_raw).unwrap_or_default(),
            upstream: upstream.clone(),
            token: token.cloned(),
            stream: Mutex::new(None),
            cancelled: AtomicBool::new(false),
            interrupt: tokio::sync::Notify::new(),
        });
        {
            let mut st = relay.state();
            if !st.closed {
                st.calls.insert(call.key.clone(), call.clone());
                if let Some((gateway, _)) = &call.token {
                    st.tokens.insert(gateway.clone(), call.clone());
                }
            }
        }
        Self {
            relay: relay.clone(),
            call,
            finished: false,
        }
    }

    /// The answer reached the client (or the upstream never ran the
    /// request): nothing to cancel.
    pub(crate) fn finish(&mut self) {
        self.finished = true;
    }

    /// The upstream session the call runs on.
    pub(crate) fn upstream(&self) -> &Arc<UpstreamSession> {
        &self.call.upstream
    }

    /// Resolves once the client cancelled the call (see [`Call::interrupt`]).
    pub(crate) async fn interrupted(&self) {
        self.call.interrupt.notified().await;
    }

    fn set_stream(&self, tx: &mpsc::Sender<Bytes>) {
        if let Ok(mut s) = self.call.stream.lock() {
            *s = Some(tx.clone());
        }
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        let session_closing = {
            let mut st = self.relay.state();
            if st
                .calls
                .get(&self.call.key)
                .is_some_and(|c| Arc::ptr_eq(c, &self.call))
            {
                st.calls.remove(&self.call.key);
            }
            if let Some((gateway, _)) = &self.call.token {
                st.tokens.remove(gateway);
            }
            st.closed
        };
        // Only a streamed call can carry server requests (a JSON answer has
        // nowhere to put them): the common case skips the pending scan.
        let had_stream = self
            .call
            .stream
            .lock()
            .ok()
            .and_then(|mut s| s.take())
            .is_some();
        if session_closing {
            // [`Relay::close`] answers what is pending, and the upstream
            // session itself is about to end: nothing to cancel.
            return;
        }
        if had_stream {
            let seq = self.call.seq;
            self.relay
                .fail_pending(|o| o == Origin::Call(seq), "the client's call ended");
        }
        if !self.finished && !self.call.cancelled.load(Ordering::Relaxed) {
            info!(upstream = %self.call.upstream.server.id, id = %self.call.key,
                "call ended before its answer reached the client; cancelling it upstream");
            let mut body = String::from(
                "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/cancelled\",\"params\":{\"requestId\":",
            );
            body.push_str(&self.call.key);
            body.push_str(",\"reason\":\"the client went away\"}}");
            spawn_notice(self.call.upstream.clone(), Bytes::from(body));
        }
    }
}

#[cfg(test)]
mod tests;
