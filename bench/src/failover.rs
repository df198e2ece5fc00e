//! The failover scenario (mcpgw only): sessions under keep-alive load, one
//! connection per session as an MCP client holds it, then a SIGKILL of one
//! worker; how long each of the dead worker's sessions waits from the kill
//! to its first successful `tools/call` again.
//!
//! The dead worker's sessions are the ones whose connection broke: a
//! session's connection is served by the worker that minted its id, so its
//! next request after the kill fails, the client reconnects at once, and
//! the supervisor holds the new connection until the replacement worker
//! serves (which resumes the session from its record). Sessions of the
//! other workers must see no failure at all; any they see is counted.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use crate::http::Conn;
use crate::mcp::{self, CallTemplate, Endpoint, Outcome, Session};
use crate::procs::{self, Proc};

/// What one repetition (one kill) measured, and the summary over all.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Failover {
    pub(crate) kills: usize,
    pub(crate) sessions_per_kill: usize,
    /// Kill → first success, ms, for every session of a killed worker.
    pub(crate) recovery_ms: Vec<f64>,
    /// Failed requests of sessions whose worker was not killed.
    pub(crate) bystander_failures: u64,
    /// Failed requests of the killed workers' sessions (the one in flight or
    /// sent on the dead connection, each).
    pub(crate) victim_failures: u64,
    /// Sessions of a killed worker never served again within the run.
    pub(crate) lost_sessions: usize,
    pub(crate) requests: u64,
}

impl Failover {
    /// The `p`-quantile (0..=1) of the recovery times, in ms.
    pub(crate) fn recovery_quantile(&self, p: f64) -> f64 {
        let mut v = self.recovery_ms.clone();
        if v.is_empty() {
            return 0.0;
        }
        v.sort_by(f64::total_cmp);
        let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
        v[i]
    }
}

/// Per session: when each answer came and whether it was a success.
type Log = Rc<RefCell<Vec<(Instant, bool)>>>;

async fn open(endpoint: &Endpoint, call: &CallTemplate, id: &mut u64) -> Result<(Conn, Session)> {
    let mut conn = Conn::connect(endpoint.addr).await?;
    *id += 1;
    let head = conn
        .exchange(&endpoint.initialize(*id, mcp::DEFAULT_PROTOCOL_VERSION, false))
        .await?;
    let version = mcp::initialize_answer(&head, conn.body())?;
    let sid = head
        .session_id
        .clone()
        .context("initialize answer without Mcp-Session-Id")?;
    let session = Session::new(endpoint, sid, version, false);
    conn.exchange(&session.initialized()).await?;
    let mut request = Vec::new();
    *id += 1;
    session.render_call(call, *id, &mut request);
    let head = conn.exchange(&request).await?;
    if mcp::check_answer(&head, conn.body(), *id) != Outcome::Ok {
        bail!("first tools/call failed (HTTP {})", head.status);
    }
    Ok((conn, session))
}

/// One session's client: calls until `until`, reconnecting after a failure.
async fn drive(
    addr: SocketAddr,
    mut conn: Option<Conn>,
    session: Session,
    call: Rc<CallTemplate>,
    first_id: u64,
    until: Instant,
    log: Log,
) {
    let mut request = Vec::with_capacity(512);
    let mut id = first_id;
    while Instant::now() < until {
        id += 1;
        session.render_call(&call, id, &mut request);
        let c = match conn.take() {
            Some(c) => c,
            None => match Conn::connect(addr).await {
                Ok(c) => c,
                Err(_) => {
                    log.borrow_mut().push((Instant::now(), false));
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            },
        };
        let mut c = c;
        let ok = match tokio::time::timeout(Duration::from_secs(10), c.exchange(&request)).await {
            Ok(Ok(head)) => {
                let ok = mcp::check_answer(&head, c.body(), id) == Outcome::Ok;
                if !head.close {
                    conn = Some(c);
                }
                ok
            }
            _ => false,
        };
        log.borrow_mut().push((Instant::now(), ok));
    }
}

/// `kills` repetitions: `sessions` sessions under load, one worker killed
/// `settle` into the run, the run going on for `after` more.
pub(crate) async fn run(
    endpoint: &Endpoint,
    gateway: &Proc,
    sessions: usize,
    kills: usize,
) -> Result<Failover> {
    let settle = Duration::from_millis(700);
    let after = Duration::from_secs(3);
    let call = Rc::new(CallTemplate::new(
        "increment",
        &serde_json::json!({}),
        mcp::Era::Stateful,
    ));
    let mut out = Failover {
        kills,
        sessions_per_kill: sessions,
        ..Failover::default()
    };
    let mut next_id = 1u64 << 40;
    for rep in 0..kills {
        let mut opened = Vec::with_capacity(sessions);
        for _ in 0..sessions {
            opened.push(open(endpoint, &call, &mut next_id).await?);
        }
        let start = Instant::now();
        let until = start + settle + after;
        let mut logs = Vec::with_capacity(sessions);
        let mut tasks = Vec::with_capacity(sessions);
        for (conn, session) in opened {
            let log: Log = Rc::new(RefCell::new(Vec::new()));
            logs.push(log.clone());
            next_id += 1 << 20;
            tasks.push(tokio::task::spawn_local(drive(
                endpoint.addr,
                Some(conn),
                session,
                call.clone(),
                next_id,
                until,
                log,
            )));
        }
        tokio::time::sleep(settle).await;
        let workers: Vec<u32> = procs::tree(gateway.pid())
            .into_iter()
            .filter(|p| *p != gateway.pid())
            .collect();
        let victim = *workers
            .get(rep % workers.len().max(1))
            .context("mcpgw has no worker process to kill")?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim as i32), Signal::SIGKILL)
            .context("killing a worker")?;
        let killed = Instant::now();
        for t in tasks {
            let _ = t.await;
        }
        let (mut victims, mut recovered) = (0, 0);
        for log in &logs {
            let log = log.borrow();
            out.requests += log.len() as u64;
            let failures = log.iter().filter(|(at, ok)| *at >= killed && !ok).count() as u64;
            if failures == 0 {
                out.bystander_failures += log.iter().filter(|(_, ok)| !ok).count() as u64;
                continue;
            }
            victims += 1;
            out.victim_failures += failures;
            // An answer written just before the kill can still be read after
            // it: recovery counts from the first failure on.
            let broke = log
                .iter()
                .position(|(at, ok)| *at >= killed && !ok)
                .unwrap_or(0);
            match log[broke..].iter().find(|(_, ok)| *ok) {
                Some((at, _)) => {
                    recovered += 1;
                    out.recovery_ms.push((*at - killed).as_secs_f64() * 1_000.0);
                }
                None => out.lost_sessions += 1,
            }
        }
        eprintln!(
            "# failover {}/{kills}: killed worker pid {victim}; {victims} of {sessions} sessions were its, {recovered} served again",
            rep + 1
        );
        // The next kill picks among all workers: wait for the replacement.
        let deadline = Instant::now() + Duration::from_secs(10);
        while procs::tree(gateway.pid()).len() <= workers.len() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(out)
}
