//! The admin listener: `/metrics` and the JSON admin API, served by the
//! supervisor from what it gathers from every worker.
//!
//! Gathering is scatter/gather with a deadline: one `Gather` message per
//! serving worker, answers collected until all are in or the deadline passes
//! (a hung worker costs one page its numbers, never the page). The main loop
//! hands each `Gathered` answer to [`Gatherer::deliver`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use mcpgw_protocol::control::{Gathered, ToWorker, WorkerId};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use crate::metrics::{self, Metrics};
use crate::pool::{Pool, Worker};

const GATHER_DEADLINE: Duration = Duration::from_secs(2);

type Answer = (WorkerId, Box<Gathered>);

/// Open gather requests, by id.
#[derive(Default)]
pub(crate) struct Gatherer {
    next: AtomicU64,
    pending: Mutex<HashMap<u64, mpsc::UnboundedSender<Answer>>>,
}

impl Gatherer {
    pub(crate) fn deliver(&self, id: u64, from: WorkerId, data: Box<Gathered>) {
        let tx = self.pending.lock().ok().and_then(|p| p.get(&id).cloned());
        if let Some(tx) = tx {
            let _ = tx.send((from, data));
        }
    }

    /// Ask every serving worker; return each with its answer, if it came.
    async fn gather(&self, pool: &Pool) -> Vec<(Arc<Worker>, Option<Box<Gathered>>)> {
        let workers: Vec<Arc<Worker>> = pool.slots.iter().filter_map(|s| s.serving()).collect();
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::unbounded_channel();
        if let Ok(mut p) = self.pending.lock() {
            p.insert(id, tx);
        }
        for w in &workers {
            let w = w.clone();
            tokio::spawn(async move {
                if let Err(e) = w.control.lock().await.send(&ToWorker::Gather { id }).await {
                    debug!(worker = %w.id, error = %e, "gather request not sent");
                }
            });
        }
        let mut answers: HashMap<WorkerId, Box<Gathered>> = HashMap::new();
        let collect = async {
            while answers.len() < workers.len() {
                match rx.recv().await {
                    Some((from, data)) => {
                        answers.insert(from, data);
                    }
                    None => break,
                }
            }
        };
        if tokio::time::timeout(GATHER_DEADLINE, collect)
            .await
            .is_err()
        {
            warn!(
                answered = answers.len(),
                asked = workers.len(),
                "not every worker answered the gather in time"
            );
        }
        if let Ok(mut p) = self.pending.lock() {
            p.remove(&id);
        }
        workers
            .into_iter()
            .map(|w| {
                let a = answers.remove(&w.id);
                (w, a)
            })
            .collect()
    }
}

/// What the admin handlers need.
pub(crate) struct Admin {
    pub pool: Arc<Pool>,
    pub gatherer: Arc<Gatherer>,
    pub metrics: Arc<Metrics>,
}

pub(crate) async fn serve(
    listener: TcpListener,
    admin: Arc<Admin>,
    mut stop: watch::Receiver<bool>,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let admin = admin.clone();
                    let svc = service_fn(move |req| {
                        let admin = admin.clone();
                        async move { Ok::<_, Infallible>(handle(&admin, req).await) }
                    });
                    let conn = http.serve_connection(TokioIo::new(stream), svc);
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            debug!(error = %e, "admin connection error");
                        }
                    });
                }
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

async fn handle(admin: &Admin, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            let gathered = admin.gatherer.gather(&admin.pool).await;
            let workers: Vec<(u16, String)> = gathered
                .into_iter()
                .filter_map(|(w, a)| a.map(|a| (w.id.slot, a.metrics)))
                .collect();
            let page = metrics::merge(&admin.metrics.render(), &workers);
            reply(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                page,
            )
        }
        (&Method::GET, "/admin/workers") => {
            let gathered = admin.gatherer.gather(&admin.pool).await;
            reply(StatusCode::OK, "application/json", workers_json(&gathered))
        }
        (&Method::GET, "/healthz") => {
            if admin.pool.slots.iter().any(|s| s.serving().is_some()) {
                reply(StatusCode::OK, "text/plain", "ok\n".to_owned())
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "no worker is serving\n".to_owned(),
                )
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
    }
}

fn reply(status: StatusCode, ct: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ct));
    r
}

fn workers_json(gathered: &[(Arc<Worker>, Option<Box<Gathered>>)]) -> String {
    let workers: Vec<serde_json::Value> = gathered
        .iter()
        .map(|(w, a)| {
            let mut v = serde_json::json!({
                "slot": w.id.slot,
                "generation": w.id.generation,
                "pid": w.pid,
                "uptime_secs": w.started.elapsed().as_secs(),
                "answered": a.is_some(),
            });
            if let Some(a) = a {
                v["connections"] = a.connections.into();
                v["sessions"] = a.sessions.into();
                v["upstream_sessions"] = a
                    .upstream_sessions
                    .iter()
                    .map(|(id, n, oldest_ms)| {
                        serde_json::json!({"upstream": id, "count": n, "oldest_age_secs": *oldest_ms as f64 / 1000.0})
                    })
                    .collect::<Vec<_>>()
                    .into();
            }
            v
        })
        .collect();
    let sessions: u64 = gathered
        .iter()
        .filter_map(|(_, a)| a.as_ref())
        .map(|a| u64::from(a.sessions))
        .sum();
    serde_json::json!({ "workers": workers, "sessions": sessions }).to_string()
}
