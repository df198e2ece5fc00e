//! The admin listener: `/metrics` and the JSON admin API, served by the
//! supervisor from what it gathers from every worker.
//!
//! Gathering is scatter/gather with a deadline: one `Gather` message per
//! serving worker, answers collected until all are in or the deadline passes
//! (a hung worker costs one page its numbers, never the page). The main loop
//! hands each `Gathered` answer to [`Gatherer::deliver`].
//!
//! Every request passes [`crate::admin_guard`] first (Host/Origin, token).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body as AxumBody;
use axum::extract::State;
use axum::routing::{get, post};
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, ORIGIN, WWW_AUTHENTICATE};
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

use crate::admin_guard::{Guard, Refusal};
use crate::metrics::{self, Metrics};
use crate::pool::{Pool, Worker};

const GATHER_DEADLINE: Duration = Duration::from_secs(2);

/// A worker's answer to a scattered request.
#[derive(Debug)]
pub(crate) enum Answer {
    Gathered(Box<Gathered>),
    /// `None`: applied; `Some`: why not.
    Reloaded(Option<String>),
}

/// Open scatter/gather requests, by id.
#[derive(Default)]
pub(crate) struct Gatherer {
    next: AtomicU64,
    pending: Mutex<HashMap<u64, mpsc::UnboundedSender<(WorkerId, Answer)>>>,
}

impl Gatherer {
    pub(crate) fn deliver(&self, id: u64, from: WorkerId, answer: Answer) {
        let tx = self.pending.lock().ok().and_then(|p| p.get(&id).cloned());
        if let Some(tx) = tx {
            let _ = tx.send((from, answer));
        }
    }

    /// Metrics and status from every serving worker.
    async fn gather(&self, pool: &Pool) -> Vec<(Arc<Worker>, Option<Box<Gathered>>)> {
        self.scatter(pool, |id| ToWorker::Gather { id })
            .await
            .into_iter()
            .map(|(w, a)| match a {
                Some(Answer::Gathered(g)) => (w, Some(g)),
                _ => (w, None),
            })
            .collect()
    }

    /// Send `make(id)` to every serving worker; return each with its
    /// answer, if it came before the deadline.
    pub(crate) async fn scatter(
        &self,
        pool: &Pool,
        make: impl Fn(u64) -> ToWorker,
    ) -> Vec<(Arc<Worker>, Option<Answer>)> {
        let workers: Vec<Arc<Worker>> = pool.slots().iter().filter_map(|s| s.serving()).collect();
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::unbounded_channel();
        if let Ok(mut p) = self.pending.lock() {
            p.insert(id, tx);
        }
        for w in &workers {
            let w = w.clone();
            let msg = make(id);
            tokio::spawn(async move {
                if let Err(e) = w.control.lock().await.send(&msg).await {
                    debug!(worker = %w.id, error = %e, "scattered request not sent");
                }
            });
        }
        let mut answers: HashMap<WorkerId, Answer> = HashMap::new();
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
    /// To ask the main loop for a reload (and hear how it went).
    pub events: mpsc::UnboundedSender<crate::Event>,
    /// The configuration in force, already redacted, as JSON.
    pub config_json: Arc<Mutex<String>>,
    /// Who may do what; replaced on reload.
    pub guard: Arc<Mutex<Arc<Guard>>>,
    /// The session store, for `/admin/cluster` (its members).
    pub store: Arc<dyn crate::store::SessionStore>,
}

pub(crate) async fn serve(
    listener: TcpListener,
    admin: Arc<Admin>,
    mut stop: watch::Receiver<bool>,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    let routes = routes(admin.clone());
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let (admin, routes) = (admin.clone(), routes.clone());
                    let svc = service_fn(move |req| {
                        let (admin, routes) = (admin.clone(), routes.clone());
                        async move { Ok::<_, Infallible>(handle(&admin, routes, req).await) }
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

/// The admin API. A known path asked with another method gets 405 with
/// `Allow`; everything the API answers with an error is JSON.
fn routes(admin: Arc<Admin>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_page))
        .route("/admin/workers", get(workers))
        .route("/admin/reload", post(reload))
        .route("/admin/config", get(config))
        .route("/admin/cluster", get(cluster))
        .route("/healthz", get(healthz))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such admin path") })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "this admin path does not take that method (see Allow)",
            )
        })
        .with_state(admin)
}

/// The guard first (Host/Origin, token), then the routes.
async fn handle(admin: &Admin, mut routes: Router, req: Request<Incoming>) -> Response<AxumBody> {
    let guard = admin
        .guard
        .lock()
        .map_or_else(|poisoned| poisoned.into_inner().clone(), |g| g.clone());
    let headers = req.headers();
    let verdict = guard.check(
        req.method(),
        headers.get(HOST).and_then(|h| h.to_str().ok()),
        // Present but not visible ASCII: checked (and refused) as "".
        headers.get(ORIGIN).map(|o| o.to_str().unwrap_or("")),
        headers.get(AUTHORIZATION).map(HeaderValue::as_bytes),
    );
    if let Err(refusal) = verdict {
        return refused(refusal, req.method(), req.uri().path()).map(AxumBody::new);
    }
    match tower_service::Service::call(&mut routes, req.map(AxumBody::new)).await {
        Ok(resp) => resp,
        Err(never) => match never {},
    }
}

type Shared = State<Arc<Admin>>;

async fn metrics_page(State(admin): Shared) -> Response<Full<Bytes>> {
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

async fn workers(State(admin): Shared) -> Response<Full<Bytes>> {
    let gathered = admin.gatherer.gather(&admin.pool).await;
    reply(StatusCode::OK, "application/json", workers_json(&gathered))
}

async fn reload(State(admin): Shared) -> Response<Full<Bytes>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    if admin
        .events
        .send(crate::Event::ReloadRequested { reply: Some(tx) })
        .is_err()
    {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the supervisor is stopping",
        );
    }
    let (status, doc) = match rx.await {
        Ok(Ok(message)) => (
            StatusCode::OK,
            serde_json::json!({"result": "ok", "message": message}),
        ),
        Ok(Err(error)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            serde_json::json!({"result": "failed", "error": error}),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"result": "failed", "error": "the supervisor is stopping"}),
        ),
    };
    reply(status, "application/json", doc.to_string())
}

async fn config(State(admin): Shared) -> Response<Full<Bytes>> {
    let doc = admin
        .config_json
        .lock()
        .map(|c| c.clone())
        .unwrap_or_default();
    reply(StatusCode::OK, "application/json", doc)
}

/// `[cluster]`: the member hosts as this one last read them from Redis
/// (with its heartbeat), sorted by host; 404 outside a cluster.
async fn cluster(State(admin): Shared) -> Response<Full<Bytes>> {
    match admin.store.members() {
        Some(members) => {
            let members: Vec<serde_json::Value> = members
                .iter()
                .map(|m| {
                    serde_json::json!({
                        "host": m.host,
                        "advertise": m.advertise,
                        "heartbeat_age_ms": m.heartbeat_age_ms,
                        "sessions": m.sessions,
                        "live": m.live,
                    })
                })
                .collect();
            let doc = serde_json::json!({ "members": members });
            reply(StatusCode::OK, "application/json", doc.to_string())
        }
        None => error(
            StatusCode::NOT_FOUND,
            "this gateway is not in a cluster ([cluster] listen is not set)",
        ),
    }
}

async fn healthz(State(admin): Shared) -> Response<Full<Bytes>> {
    if admin.pool.slots().iter().any(|s| s.serving().is_some()) {
        reply(StatusCode::OK, "text/plain", "ok\n".to_owned())
    } else {
        reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "no worker is serving\n".to_owned(),
        )
    }
}

/// An error of the admin API, as JSON.
fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    reply(
        status,
        "application/json",
        serde_json::json!({ "error": message }).to_string(),
    )
}

/// The answer to a request the guard refused, and the log line that says why.
fn refused(refusal: Refusal, method: &Method, path: &str) -> Response<Full<Bytes>> {
    let (status, error) = match refusal {
        Refusal::Header(refused) => {
            warn!(%method, path, header = refused.header(), reason = %refused,
                "admin request refused (DNS rebinding protection)");
            (StatusCode::FORBIDDEN, refused.to_string())
        }
        Refusal::NoTokenConfigured => {
            warn!(%method, path, "admin request refused: no admin_token_file is configured");
            (
                StatusCode::FORBIDDEN,
                "state-changing admin requests need a bearer token: set admin_token_file \
                 (SIGHUP reloads without one)"
                    .to_owned(),
            )
        }
        Refusal::BadToken => {
            warn!(%method, path, "admin request refused: missing or wrong bearer token");
            let mut r = reply(
                StatusCode::UNAUTHORIZED,
                "application/json",
                serde_json::json!({
                    "error": "missing or wrong token: send Authorization: Bearer <the content of admin_token_file>"
                })
                .to_string(),
            );
            r.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    };
    reply(
        status,
        "application/json",
        serde_json::json!({ "error": error }).to_string(),
    )
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

/// The configuration as JSON with what may hold credentials redacted:
/// upstream header and `env` values, every stdio `args` entry (tokens are
/// often passed as flags, and no rule tells a flag's value from a path),
/// an upstream's `oauth.client_secret` (even a reference: it names where the
/// secret lives), and the user info and query values of the upstream, token
/// endpoint and Redis URLs, and `store.sentinel_password`; `[tracing]`'s
/// header values and the user info and query values of its collector URL.
pub(crate) fn redacted_config(config: &mcpgw_protocol::config::Config) -> String {
    use mcpgw_protocol::redact::{self, REDACTED};
    // As written: `${…}` references, not what they resolved to.
    let mut doc = serde_json::to_value(config.as_written()).unwrap_or_default();
    let redact_url = |url: &mut serde_json::Value| {
        if let Some(text) = url.as_str() {
            *url = serde_json::Value::from(redact::url(text));
        }
    };
    if let Some(upstreams) = doc.get_mut("upstream").and_then(|u| u.as_array_mut()) {
        for u in upstreams {
            for secrets in ["headers", "env"] {
                if let Some(map) = u.get_mut(secrets).and_then(|h| h.as_object_mut()) {
                    for v in map.values_mut() {
                        *v = serde_json::Value::from(REDACTED);
                    }
                }
            }
            if let Some(args) = u.get_mut("args").and_then(|a| a.as_array_mut()) {
                for a in args {
                    *a = serde_json::Value::from(REDACTED);
                }
            }
            if let Some(url) = u.get_mut("url") {
                redact_url(url);
            }
            if let Some(oauth) = u.get_mut("oauth").and_then(|o| o.as_object_mut()) {
                if let Some(secret) = oauth.get_mut("client_secret") {
                    *secret = serde_json::Value::from(REDACTED);
                }
                if let Some(url) = oauth.get_mut("token_url") {
                    redact_url(url);
                }
            }
        }
    }
    if let Some(store) = doc.get_mut("store").and_then(|s| s.as_object_mut()) {
        if let Some(url) = store.get_mut("redis_url") {
            redact_url(url);
        }
        if let Some(password) = store.get_mut("sentinel_password")
            && !password.is_null()
        {
            *password = serde_json::Value::from(REDACTED);
        }
    }
    if let Some(tracing) = doc.get_mut("tracing").and_then(|t| t.as_object_mut()) {
        if let Some(map) = tracing.get_mut("headers").and_then(|h| h.as_object_mut()) {
            for v in map.values_mut() {
                *v = serde_json::Value::from(REDACTED);
            }
        }
        if let Some(url) = tracing.get_mut("otlp_endpoint") {
            redact_url(url);
        }
    }
    doc.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_redacted() {
        let c = mcpgw_protocol::config::Config::parse(
            "[[upstream]]\nid = \"a\"\nurl = \"http://x/\"\nheaders = { Authorization = \"Bearer s3cret\" }",
        )
        .expect("config");
        let doc = redacted_config(&c);
        assert!(!doc.contains("s3cret"), "{doc}");
        assert!(doc.contains("\"Authorization\":\"<redacted>\""), "{doc}");
        let c = mcpgw_protocol::config::Config::parse(
            "[store]\nredis_url = \"redis://:hunter2@10.0.0.1:6379/0\"",
        )
        .expect("config");
        let doc = redacted_config(&c);
        assert!(!doc.contains("hunter2"), "{doc}");
        assert!(doc.contains("redis://<redacted>@10.0.0.1:6379/0"), "{doc}");
    }

    /// A secret from a reference is shown as the reference, wherever it
    /// went (here a URL path, which no redaction rule covers).
    #[test]
    fn references_are_shown_as_written() {
        let dir = std::env::temp_dir().join(format!("mcpgw-admin-ref-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("token");
        std::fs::write(&file, "p4th-s3cret\n").expect("write");
        let c = mcpgw_protocol::config::Config::parse(&format!(
            "[[upstream]]\nid = \"a\"\nurl = \"http://127.0.0.1:1/${{file:{}}}/mcp\"",
            file.display()
        ))
        .expect("config");
        assert_eq!(c.upstream[0].url, "http://127.0.0.1:1/p4th-s3cret/mcp");
        let doc = redacted_config(&c);
        assert!(!doc.contains("p4th-s3cret"), "{doc}");
        assert!(doc.contains("/${file:"), "{doc}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn tracing_headers_and_collector_url_secrets_are_redacted() {
        let c = mcpgw_protocol::config::Config::parse(concat!(
            "[tracing]\notlp_endpoint = \"http://127.0.0.1:4318/?key=c0llector\"\n",
            "headers = { x-api-key = \"h3ader\" }\n",
        ))
        .expect("config");
        let doc = redacted_config(&c);
        for secret in ["c0llector", "h3ader"] {
            assert!(!doc.contains(secret), "{secret} in {doc}");
        }
        assert!(doc.contains("\"x-api-key\":\"<redacted>\""), "{doc}");
        assert!(
            doc.contains("http://127.0.0.1:4318/?key=<redacted>"),
            "{doc}"
        );
    }

    #[test]
    fn redis_credentials_are_redacted() {
        let c = mcpgw_protocol::config::Config::parse(concat!(
            "[store]\nredis_url = \"rediss://gwuser:hunter2@mymaster/0\"\n",
            "sentinels = [\"10.0.0.1:26379\"]\nsentinel_master = \"mymaster\"\n",
            "sentinel_password = \"s3ntinel\"\n",
        ))
        .expect("config");
        let doc = redacted_config(&c);
        for secret in ["hunter2", "s3ntinel", "gwuser"] {
            assert!(!doc.contains(secret), "{secret} in {doc}");
        }
        assert!(doc.contains("rediss://<redacted>@mymaster/0"), "{doc}");
        assert!(
            doc.contains("\"sentinel_password\":\"<redacted>\""),
            "{doc}"
        );
        assert!(doc.contains("\"sentinels\":[\"10.0.0.1:26379\"]"), "{doc}");
    }

    #[test]
    fn an_upstream_oauth_client_secret_is_redacted() {
        let c = mcpgw_protocol::config::Config::parse(concat!(
            "[[upstream]]\nid = \"a\"\nurl = \"http://127.0.0.1:1/mcp\"\n",
            "[upstream.oauth]\ntoken_url = \"http://127.0.0.1:2/token?k=v4lue\"\n",
            "client_id = \"mcpgw\"\nclient_secret = \"cl13nt-s3cret\"\n",
        ))
        .expect("config");
        let doc = redacted_config(&c);
        for secret in ["cl13nt-s3cret", "v4lue"] {
            assert!(!doc.contains(secret), "{secret} in {doc}");
        }
        assert!(doc.contains("\"client_secret\":\"<redacted>\""), "{doc}");
        assert!(doc.contains("\"client_id\":\"mcpgw\""), "{doc}");
    }

    #[test]
    fn url_secrets_and_args_are_redacted() {
        let c = mcpgw_protocol::config::Config::parse(concat!(
            "[[upstream]]\nid = \"a\"\nurl = \"http://127.0.0.1:1/mcp?api_key=k3y\"\n",
            "[[upstream]]\nid = \"b\"\ntransport = \"stdio\"\ncommand = \"server\"\n",
            "args = [\"--token\", \"t0ken\"]\n",
            "[store]\nredis_url = \"unix:///run/redis.sock?pass=hunter2\"",
        ))
        .expect("config");
        let doc = redacted_config(&c);
        for secret in ["k3y", "t0ken", "--token", "hunter2"] {
            assert!(!doc.contains(secret), "{secret} in {doc}");
        }
        assert!(
            doc.contains("http://127.0.0.1:1/mcp?api_key=<redacted>"),
            "{doc}"
        );
        assert!(
            doc.contains("\"args\":[\"<redacted>\",\"<redacted>\"]"),
            "{doc}"
        );
        assert!(doc.contains("\"command\":\"server\""), "{doc}");
    }
}
