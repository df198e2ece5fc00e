//! One load run against one MCP endpoint: open N sessions over C clients, drive
//! `tools/call` for a duration or a request count, report throughput, latency
//! percentiles and errors.
//!
//! Everything runs on the caller's single-threaded runtime (`spawn_local`), so the
//! generator takes at most one core and shares its counters without locks. A client is
//! one connection with one request in flight (keep-alive), or a new TCP connection per
//! request (`new_connection`). Session `s` is opened by client `s mod C` on its own
//! connection and is then used by that client only, in rotation with the client's other
//! sessions: C clients, each with N/C sessions, as MCP clients that each hold their
//! sessions over their own connection. When C > N, client `k` uses session `k mod N`.
//! Setup (initialize, notifications/initialized, `setup_calls` calls per session, which
//! also make a gateway open its upstream sessions) and teardown (DELETE) are not
//! measured; neither is the warm-up.
//!
//! With an `alternate` address (a second gateway host of a cluster), odd clients open
//! their sessions there, and each client alternates its requests between the two
//! addresses so that every session's requests reach the host that does not own it half
//! of the time.
//!
//! A stateless (2026-07-28) client has no sessions: each of the C clients is one caller
//! whose every request stands alone, so N does not apply; its setup is the
//! `setup_calls` calls alone, and there is nothing to tear down.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::http::{Conn, Head, HttpError};
use crate::mcp::{self, CallTemplate, Endpoint, Era, Outcome, Session};

/// Bound on one exchange; a request that takes longer counts as a timeout and its
/// connection is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on waiting for the server's FIN after a `Connection: close` exchange.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Bound on opening all sessions.
const SETUP_TIMEOUT: Duration = Duration::from_secs(600);
/// Bound on deleting all sessions at the end.
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(60);

/// When the measured part of a run ends.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Stop {
    /// After this long (requests in flight then still finish and count).
    Duration(Duration),
    /// After this many measured requests, or `max_time`, whichever comes first.
    Requests(u64),
}

/// What one run does.
pub(crate) struct LoadSpec {
    pub(crate) endpoint: Endpoint,
    pub(crate) sessions: usize,
    pub(crate) concurrency: usize,
    pub(crate) stop: Stop,
    /// Unmeasured load before the measured part.
    pub(crate) warmup: Duration,
    /// Bound on the load phase in `Stop::Requests` mode.
    pub(crate) max_time: Duration,
    /// The call, and the era of client that makes it.
    pub(crate) call: CallTemplate,
    pub(crate) new_connection: bool,
    /// Asked for in `initialize` (stateful clients only).
    pub(crate) protocol_version: String,
    /// `tools/call`s per session during setup (unmeasured).
    pub(crate) setup_calls: u32,
    /// DELETE every session at the end (unmeasured).
    pub(crate) delete_sessions: bool,
    /// Read at the start and at the end of the measured part (e.g. CPU time of the
    /// processes under test); the report carries the differences.
    pub(crate) probe: Option<Probe>,
    /// A second address of the same service (another gateway host of a cluster, which
    /// takes the endpoint's `Host`): odd clients open their sessions there, and every
    /// client sends each session's requests to its home and to the other address in
    /// turn, so that half of them land on the host that does not own the session.
    pub(crate) alternate: Option<std::net::SocketAddr>,
}

/// Counters read at the start and the end of the measured part.
pub(crate) type Probe = Rc<dyn Fn() -> Vec<u64>>;

/// Failed measured requests, by cause.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Errors {
    pub(crate) total: u64,
    /// Non-2xx answers.
    pub(crate) status: u64,
    /// No JSON-RPC response to the request in the body.
    pub(crate) unparsable: u64,
    /// JSON-RPC `error` answers.
    pub(crate) rpc_error: u64,
    /// `result.isError == true`.
    pub(crate) tool_error: u64,
    /// Connect, write or read failures, or a connection closed mid-response.
    pub(crate) io: u64,
    /// No answer within the per-request bound.
    pub(crate) timeout: u64,
    /// The first failure, described.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) first: Option<String>,
}

/// Latency of successful measured requests, in milliseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Latency {
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
    pub(crate) mean: f64,
}

/// The result of one run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct LoadReport {
    /// The era of client (runs recorded before stateless clients existed are stateful).
    #[serde(default)]
    pub(crate) era: Era,
    /// Sessions opened (0 for a stateless client).
    pub(crate) sessions: usize,
    pub(crate) concurrency: usize,
    pub(crate) new_connection: bool,
    /// Successful measured requests.
    pub(crate) requests: u64,
    pub(crate) errors: Errors,
    /// From the end of the warm-up to the last measured answer.
    pub(crate) elapsed_secs: f64,
    /// Successful requests per second.
    pub(crate) throughput: f64,
    pub(crate) latency_ms: Latency,
    /// TCP connections opened during the measured part (keep-alive: reconnects).
    pub(crate) connections_opened: u64,
    /// Answers that carried `Connection: close` during the measured part.
    pub(crate) server_closes: u64,
    /// Time to open all sessions.
    pub(crate) setup_secs: f64,
    /// End minus start of the spec's probe over the measured part.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) probe_delta: Vec<u64>,
}

/// Counters shared by the clients of a run (one thread: `Cell`/`RefCell`, no locks).
struct Shared {
    spec: Rc<LoadSpec>,
    next_id: Cell<u64>,
    tickets: Cell<u64>,
    measure_start: Cell<Instant>,
    deadline: Cell<Instant>,
    hard_deadline: Cell<Instant>,
    stats: RefCell<Stats>,
}

impl Shared {
    fn next_id(&self) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        id
    }
}

struct Stats {
    /// Nanoseconds.
    histogram: Histogram<u64>,
    errors: Errors,
    last_end: Option<Instant>,
    connections_opened: u64,
    server_closes: u64,
}

/// A client's connection: kept alive, or one per exchange.
struct Link {
    addr: std::net::SocketAddr,
    keep_alive: bool,
    conn: Option<Conn>,
    /// A `Connection: close` exchange whose server FIN is still awaited.
    closing: Option<Conn>,
    opened: u64,
    server_closes: u64,
}

impl Link {
    fn new(spec: &LoadSpec) -> Self {
        Self::to(spec.endpoint.addr, spec)
    }

    fn to(addr: std::net::SocketAddr, spec: &LoadSpec) -> Self {
        Self {
            addr,
            keep_alive: !spec.new_connection,
            conn: None,
            closing: None,
            opened: 0,
            server_closes: 0,
        }
    }

    /// Sends one request and reads its answer; the body is then [`Link::body`].
    async fn exchange(&mut self, request: &[u8]) -> Result<Head, HttpError> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            slot @ None => {
                self.opened += 1;
                slot.insert(Conn::connect(self.addr).await?)
            }
        };
        match conn.exchange(request).await {
            Ok(head) => {
                if head.close || !self.keep_alive {
                    if head.close {
                        self.server_closes += 1;
                    }
                    self.closing = self.conn.take();
                }
                Ok(head)
            }
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }

    fn body(&self) -> &[u8] {
        self.conn
            .as_ref()
            .or(self.closing.as_ref())
            .map(Conn::body)
            .unwrap_or_default()
    }

    /// Drops a connection that is no longer usable (after a timeout).
    fn reset(&mut self) {
        self.conn = None;
    }

    /// Ends the exchange: a connection the server closes is dropped once it has.
    async fn finish(&mut self) {
        if let Some(conn) = self.closing.take() {
            conn.wait_for_close(CLOSE_WAIT).await;
        }
    }

    /// One unmeasured exchange whose failure is an error of the run.
    async fn must(&mut self, request: &[u8], what: &str) -> Result<Head> {
        let head = tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(request))
            .await
            .with_context(|| format!("{what}: no answer within {REQUEST_TIMEOUT:?}"))?
            .with_context(|| what.to_owned())?;
        Ok(head)
    }
}

/// Runs one load run on the current `LocalSet`.
pub(crate) async fn run(spec: LoadSpec) -> Result<LoadReport> {
    let stateless = spec.call.era() == Era::Stateless;
    if (spec.sessions == 0 && !stateless) || spec.concurrency == 0 {
        bail!("sessions and concurrency must be at least 1");
    }
    let spec = Rc::new(spec);
    let now = Instant::now();
    let shared = Rc::new(Shared {
        spec: spec.clone(),
        next_id: Cell::new(1),
        tickets: Cell::new(0),
        measure_start: Cell::new(now),
        deadline: Cell::new(now),
        hard_deadline: Cell::new(now),
        stats: RefCell::new(Stats {
            histogram: Histogram::new_with_bounds(1, 120_000_000_000, 3)?,
            errors: Errors::default(),
            last_end: None,
            connections_opened: 0,
            server_closes: 0,
        }),
    });

    // Setup: client k (k < min(C, N)) opens sessions k, k + C, k + 2C, ...; every
    // stateless client is its own caller.
    let setup_start = Instant::now();
    let owners = if stateless {
        spec.concurrency
    } else {
        spec.concurrency.min(spec.sessions)
    };
    let mut tasks = Vec::with_capacity(owners);
    for k in 0..owners {
        tasks.push(tokio::task::spawn_local(open_sessions(shared.clone(), k)));
    }
    let mut owned: Vec<(Link, Vec<Rc<Session>>)> = Vec::with_capacity(owners);
    let joined = tokio::time::timeout(SETUP_TIMEOUT, async {
        for task in tasks.drain(..) {
            owned.push(task.await??);
        }
        anyhow::Ok(())
    })
    .await;
    for task in &tasks {
        task.abort();
    }
    joined.with_context(|| {
        format!(
            "opening {} sessions took over {SETUP_TIMEOUT:?}",
            spec.sessions
        )
    })??;
    let setup_secs = setup_start.elapsed().as_secs_f64();

    // Load.
    let start = Instant::now();
    shared.measure_start.set(start + spec.warmup);
    let (deadline, hard) = match spec.stop {
        Stop::Duration(d) => (start + spec.warmup + d, start + spec.warmup + d),
        Stop::Requests(_) => {
            let bound = start + spec.warmup + spec.max_time;
            (bound, bound)
        }
    };
    shared.deadline.set(deadline);
    shared.hard_deadline.set(hard);
    let mut links: Vec<Link> = Vec::with_capacity(owners);
    let mut owned_sessions: Vec<Vec<Rc<Session>>> = Vec::with_capacity(owners);
    for (link, sessions) in owned {
        links.push(link);
        owned_sessions.push(sessions);
    }
    let probe_start = spec.probe.clone().map(|probe| {
        let at = start + spec.warmup;
        tokio::task::spawn_local(async move {
            tokio::time::sleep_until(at.into()).await;
            probe()
        })
    });
    let mut clients = Vec::with_capacity(spec.concurrency);
    for k in 0..spec.concurrency {
        let (link, sessions) = if k < owners {
            (
                std::mem::replace(&mut links[k], Link::new(&spec)),
                owned_sessions[k].clone(),
            )
        } else {
            // C > N: clients beyond the owners share the owners' first sessions.
            (
                Link::new(&spec),
                vec![owned_sessions[k % spec.sessions][0].clone()],
            )
        };
        let opened_before = link.opened;
        let closes_before = link.server_closes;
        clients.push(tokio::task::spawn_local(drive(
            shared.clone(),
            link,
            sessions,
            opened_before,
            closes_before,
        )));
    }
    // Every client stops by the hard deadline plus one request bound.
    for (k, client) in clients.into_iter().enumerate() {
        let link = client.await?;
        if k < owners {
            links[k] = link;
        }
    }
    let probe_delta = match (probe_start, &spec.probe) {
        (Some(task), Some(probe)) => {
            let end = probe();
            let start = task.await?;
            end.iter()
                .zip(start)
                .map(|(e, s)| e.saturating_sub(s))
                .collect()
        }
        _ => Vec::new(),
    };

    if spec.delete_sessions {
        let mut deletes = Vec::with_capacity(owners);
        for (link, sessions) in links.into_iter().zip(owned_sessions) {
            deletes.push(tokio::task::spawn_local(delete_sessions(
                spec.clone(),
                link,
                sessions,
            )));
        }
        let _ = tokio::time::timeout(TEARDOWN_TIMEOUT, async {
            for d in deletes {
                let _ = d.await;
            }
        })
        .await;
    }

    let stats = shared.stats.borrow();
    let elapsed = stats.last_end.map_or(0.0, |end| {
        end.saturating_duration_since(shared.measure_start.get())
            .as_secs_f64()
    });
    let h = &stats.histogram;
    let ms = |ns: u64| ns as f64 / 1e6;
    let requests = h.len();
    Ok(LoadReport {
        era: spec.call.era(),
        sessions: if stateless { 0 } else { spec.sessions },
        concurrency: spec.concurrency,
        new_connection: spec.new_connection,
        requests,
        errors: stats.errors.clone(),
        elapsed_secs: elapsed,
        throughput: if elapsed > 0.0 {
            requests as f64 / elapsed
        } else {
            0.0
        },
        latency_ms: Latency {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
            mean: h.mean() / 1e6,
        },
        connections_opened: stats.connections_opened,
        server_closes: stats.server_closes,
        setup_secs,
        probe_delta,
    })
}

/// Setup of client `k`: opens its sessions on its own link (a stateless client: makes
/// its caller and its setup calls).
async fn open_sessions(shared: Rc<Shared>, k: usize) -> Result<(Link, Vec<Rc<Session>>)> {
    let spec = &shared.spec;
    let close = spec.new_connection;
    let mut link = match spec.alternate {
        Some(other) if k % 2 == 1 => Link::to(other, spec),
        _ => Link::new(spec),
    };
    let mut request = Vec::with_capacity(1024);
    if spec.call.era() == Era::Stateless {
        let caller = Session::stateless(&spec.endpoint, &spec.call, close);
        setup_calls(
            &shared,
            &mut link,
            &caller,
            &mut request,
            &format!("client {k}"),
        )
        .await?;
        return Ok((link, vec![Rc::new(caller)]));
    }
    let mut sessions = Vec::with_capacity(spec.sessions / spec.concurrency + 1);
    for s in (k..spec.sessions).step_by(spec.concurrency) {
        let init = spec
            .endpoint
            .initialize(shared.next_id(), &spec.protocol_version, close);
        let head = link.must(&init, "initialize").await?;
        let version =
            mcp::initialize_answer(&head, link.body()).with_context(|| format!("session {s}"))?;
        let id = head
            .session_id
            .clone()
            .with_context(|| format!("session {s}: initialize answer has no Mcp-Session-Id"))?;
        link.finish().await;
        let session = Session::new(&spec.endpoint, id, version, close);
        let head = link
            .must(&session.initialized(), "notifications/initialized")
            .await?;
        if !(200..300).contains(&head.status) {
            bail!(
                "session {s}: notifications/initialized answered HTTP {}",
                head.status
            );
        }
        link.finish().await;
        setup_calls(
            &shared,
            &mut link,
            &session,
            &mut request,
            &format!("session {s}"),
        )
        .await?;
        sessions.push(Rc::new(session));
    }
    Ok((link, sessions))
}

/// The unmeasured `setup_calls` of one session or caller (`who`, for errors).
async fn setup_calls(
    shared: &Shared,
    link: &mut Link,
    session: &Session,
    request: &mut Vec<u8>,
    who: &str,
) -> Result<()> {
    let spec = &shared.spec;
    for _ in 0..spec.setup_calls {
        let id = shared.next_id();
        session.render_call(&spec.call, id, request);
        let head = link.must(request, "tools/call (setup)").await?;
        let outcome = mcp::check_answer(&head, link.body(), id);
        if outcome != Outcome::Ok {
            bail!(
                "{who}: setup tools/call failed ({outcome:?}, HTTP {}): {}",
                head.status,
                snippet(link.body())
            );
        }
        link.finish().await;
    }
    Ok(())
}

/// The load loop of one client.
async fn drive(
    shared: Rc<Shared>,
    mut link: Link,
    sessions: Vec<Rc<Session>>,
    opened_before: u64,
    closes_before: u64,
) -> Link {
    let spec = shared.spec.clone();
    let mut request = Vec::with_capacity(1024);
    let mut opened_at_measure = None;
    let mut next = 0usize;
    // With an alternate address: the other host, for every other request of a session.
    let mut away = spec.alternate.map(|other| {
        let addr = if link.addr == other {
            spec.endpoint.addr
        } else {
            other
        };
        Link::to(addr, &spec)
    });
    let mut away_opened = (0, 0);
    loop {
        let now = Instant::now();
        if now >= shared.hard_deadline.get() {
            break;
        }
        let measured = now >= shared.measure_start.get();
        if measured {
            if opened_at_measure.is_none() {
                opened_at_measure = Some((link.opened, link.server_closes));
                if let Some(away) = &away {
                    away_opened = (away.opened, away.server_closes);
                }
            }
            match spec.stop {
                Stop::Duration(_) if now >= shared.deadline.get() => break,
                Stop::Duration(_) => {}
                Stop::Requests(n) => {
                    let taken = shared.tickets.get();
                    if taken >= n {
                        break;
                    }
                    shared.tickets.set(taken + 1);
                }
            }
        }
        let session = &sessions[next % sessions.len()];
        // Round r of the rotation sends session j to its home when r + j is even.
        let to_away = (next / sessions.len() + next % sessions.len()) % 2 == 1;
        next += 1;
        let id = shared.next_id();
        session.render_call(&spec.call, id, &mut request);
        let link = match &mut away {
            Some(away) if to_away => away,
            _ => &mut link,
        };
        let t0 = Instant::now();
        let result = tokio::time::timeout(REQUEST_TIMEOUT, link.exchange(&request)).await;
        let t1 = Instant::now();
        let failure = match result {
            Ok(Ok(head)) => match mcp::check_answer(&head, link.body(), id) {
                Outcome::Ok => None,
                outcome => Some((
                    Failure::Answer(outcome),
                    format!("{outcome:?}: HTTP {} {}", head.status, snippet(link.body())),
                )),
            },
            Ok(Err(e)) => Some((Failure::Io, e.to_string())),
            Err(_) => {
                link.reset();
                Some((
                    Failure::Timeout,
                    format!("no answer within {REQUEST_TIMEOUT:?}"),
                ))
            }
        };
        link.finish().await;
        if measured {
            let mut stats = shared.stats.borrow_mut();
            stats.last_end = Some(stats.last_end.map_or(t1, |e| e.max(t1)));
            match failure {
                None => {
                    let ns = u64::try_from((t1 - t0).as_nanos()).unwrap_or(u64::MAX);
                    stats.histogram.saturating_record(ns.max(1));
                }
                Some((kind, description)) => stats.errors.count(kind, description),
            }
        }
    }
    let (opened0, closes0) = opened_at_measure.unwrap_or((opened_before, closes_before));
    let mut stats = shared.stats.borrow_mut();
    stats.connections_opened += link.opened - opened0;
    stats.server_closes += link.server_closes - closes0;
    if let Some(away) = &away
        && opened_at_measure.is_some()
    {
        stats.connections_opened += away.opened - away_opened.0;
        stats.server_closes += away.server_closes - away_opened.1;
    }
    drop(stats);
    link
}

async fn delete_sessions(spec: Rc<LoadSpec>, mut link: Link, sessions: Vec<Rc<Session>>) {
    for session in sessions {
        // A stateless caller has no session to end.
        let Some(request) = spec.endpoint.delete(&session, spec.new_connection) else {
            continue;
        };
        let _ = tokio::time::timeout(REQUEST_TIMEOUT, link.exchange(&request)).await;
        link.finish().await;
    }
}

#[derive(Clone, Copy)]
enum Failure {
    Answer(Outcome),
    Io,
    Timeout,
}

impl Errors {
    fn count(&mut self, kind: Failure, description: String) {
        self.total += 1;
        match kind {
            Failure::Answer(Outcome::Status) => self.status += 1,
            Failure::Answer(Outcome::RpcError) => self.rpc_error += 1,
            Failure::Answer(Outcome::ToolError) => self.tool_error += 1,
            Failure::Answer(Outcome::Unparsable | Outcome::Ok) => self.unparsable += 1,
            Failure::Io => self.io += 1,
            Failure::Timeout => self.timeout += 1,
        }
        if self.first.is_none() {
            self.first = Some(description);
        }
    }
}

/// The start of a body, for error messages.
fn snippet(body: &[u8]) -> String {
    let end = body.len().min(200);
    String::from_utf8_lossy(&body[..end]).into_owned()
}
