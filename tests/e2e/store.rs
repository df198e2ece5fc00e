//! Sessions that outlive their worker, their slot, Redis trouble and the
//! gateway itself: failover under load with the embedded store and with a
//! real `redis-server`, a slot that crashes at every start, Redis stopped
//! under load, and a whole-gateway restart resuming from Redis. Real
//! binary, real processes, real signals.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mcpgw_tests::ops::{metric_sum, sessions_on_every_worker, supervisor_metric};
use mcpgw_tests::redis::RedisServer;
use mcpgw_tests::{Gateway, GatewayConfig, McpClient, WorkerTag, start_counter, wait_until};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use tokio::sync::Mutex;

/// One `increment` as seen by a load task.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    at: Instant,
    ok: Option<(u64, WorkerTag)>,
}

/// A session under continuous load: its client, and every outcome so far.
struct Loaded {
    client: Mutex<McpClient>,
    home: WorkerTag,
    outcomes: std::sync::Mutex<Vec<Outcome>>,
}

impl Loaded {
    fn outcomes(&self) -> Vec<Outcome> {
        self.outcomes.lock().map(|o| o.clone()).unwrap_or_default()
    }
}

async fn increment(client: &mut McpClient) -> Option<(u64, WorkerTag)> {
    let reply = client.call_tool("increment", json!({})).await.ok()?;
    if reply.status() != 200 {
        return None;
    }
    Some((reply.count().ok()?, reply.worker().ok()?))
}

/// `n` sessions covering every worker, each with one increment done.
async fn open_sessions(gateway: &Gateway, n: usize) -> Vec<Arc<Loaded>> {
    let mut clients = sessions_on_every_worker(gateway).await;
    while clients.len() < n {
        let mut c = gateway.client();
        c.initialize().await.expect("initialize");
        clients.push(c);
    }
    let mut sessions = Vec::new();
    for mut c in clients.into_iter().take(n) {
        let (_, home) = increment(&mut c).await.expect("first increment");
        sessions.push(Arc::new(Loaded {
            client: Mutex::new(c),
            home,
            outcomes: std::sync::Mutex::new(Vec::new()),
        }));
    }
    sessions
}

/// Every session increments in its own task until `stop`.
fn drive(sessions: &[Arc<Loaded>], stop: &Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<()>> {
    sessions
        .iter()
        .map(|s| {
            let (s, stop) = (s.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let ok = increment(&mut *s.client.lock().await).await;
                    if let Ok(mut o) = s.outcomes.lock() {
                        o.push(Outcome {
                            at: Instant::now(),
                            ok,
                        });
                    }
                    if ok.is_none() {
                        // A failed request is retried at once by a real client too,
                        // but not in a hot loop.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            })
        })
        .collect()
}

/// Successes of `s` since `since`.
fn successes_since(s: &Loaded, since: Instant) -> usize {
    s.outcomes()
        .iter()
        .filter(|o| o.at >= since && o.ok.is_some())
        .count()
}

/// Waits until every session has had `n` successes since `since`.
async fn wait_for_successes<S: AsRef<Loaded>>(
    what: &str,
    sessions: &[S],
    since: Instant,
    n: usize,
) {
    wait_until(what, Duration::from_secs(30), || async {
        Ok(sessions
            .iter()
            .all(|s| successes_since(s.as_ref(), since) >= n)
            .then_some(()))
    })
    .await
    .expect(what);
}

/// Stops the load and waits for every load task.
async fn stop_load(stop: &AtomicBool, tasks: Vec<tokio::task::JoinHandle<()>>) {
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("load task");
    }
}

/// Counts only go up: a reset (the upstream session re-created) would start
/// again from 1.
fn assert_counts_continue(s: &Loaded) {
    let mut last = 1;
    for o in s.outcomes() {
        if let Some((count, _)) = o.ok {
            assert!(
                count > last,
                "session on {:?}: count went from {last} to {count}",
                s.home
            );
            last = count;
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// 20 sessions over 4 workers under continuous load; SIGKILL one worker.
async fn failover_under_load(redis: Option<&RedisServer>) {
    let counter = start_counter!().expect("counter-server");
    let mut config = GatewayConfig::new(4).upstream("counter", &counter.url());
    if let Some(r) = redis {
        config.extra = format!("[store]\nredis_url = {:?}\nhost = \"gw-a\"\n", r.url());
    }
    let gateway = Gateway::start(&config).expect("start mcpgw");
    let sessions = open_sessions(&gateway, 20).await;
    let initializes = counter.stats().await.expect("stats").initialize;
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = drive(&sessions, &stop);
    let started = Instant::now();
    wait_for_successes("load on every session", &sessions, started, 3).await;

    let victim = sessions[0].home;
    kill(Pid::from_raw(victim.pid as i32), Signal::SIGKILL).expect("kill the worker");
    let killed = Instant::now();
    let (victims, others): (Vec<_>, Vec<_>) =
        sessions.iter().partition(|s| s.home.pid == victim.pid);
    wait_for_successes(
        "the dead worker's sessions to be served again",
        &victims,
        killed,
        3,
    )
    .await;
    // Some more load on everyone after the failover.
    let after = Instant::now();
    wait_for_successes("load after the failover", &sessions, after, 2).await;
    stop_load(&stop, tasks).await;

    for s in &others {
        let failed = s.outcomes().iter().filter(|o| o.ok.is_none()).count();
        assert_eq!(
            failed, 0,
            "a session of a live worker ({:?}) saw {failed} failures",
            s.home
        );
    }
    let mut recovery = Vec::new();
    for s in &victims {
        let first = s
            .outcomes()
            .iter()
            .find(|o| o.at >= killed && o.ok.is_some())
            .map(|o| o.at - killed)
            .expect("served after the kill");
        recovery.push(first);
        let last = s
            .outcomes()
            .iter()
            .rev()
            .find_map(|o| o.ok)
            .expect("a success");
        assert_eq!(last.1.slot, victim.slot, "served by the replacement");
        assert!(last.1.generation > victim.generation);
    }
    for s in &sessions {
        assert_counts_continue(s);
    }
    recovery.sort();
    eprintln!(
        "failover ({}): {} sessions of the killed worker; kill → first success p50 {:?}, p99 {:?}, max {:?}",
        if redis.is_some() { "redis" } else { "embedded" },
        recovery.len(),
        percentile(&recovery, 0.5),
        percentile(&recovery, 0.99),
        recovery.last().copied().unwrap_or_default(),
    );
    assert_eq!(
        counter.stats().await.expect("stats").initialize,
        initializes,
        "upstream sessions were re-attached, not re-created"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_under_load_with_the_embedded_store() {
    failover_under_load(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_under_load_with_redis() {
    let redis = RedisServer::start().expect("redis-server");
    failover_under_load(Some(&redis)).await;
    // The records are in Redis, under the gateway's prefix and host.
    let keys = redis.keys("mcpgw:s:*").await.expect("keys");
    assert_eq!(keys.len(), 20, "{keys:?}");
    // A record: owner, the client's initialize, each upstream session with
    // its id, version and server capabilities.
    let mut conn = redis.connect().await.expect("connect");
    let (owner, record): (String, String) = redis::cmd("HMGET")
        .arg(&keys[0])
        .arg("owner")
        .arg("record")
        .query_async(&mut conn)
        .await
        .expect("record");
    assert!(owner.starts_with("gw-a/"), "{owner}");
    let record: serde_json::Value = serde_json::from_str(&record).expect("JSON record");
    let upstream = &record["upstreams"][0];
    assert_eq!(upstream["upstream"], "counter", "{record}");
    assert!(
        upstream["session_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{record}"
    );
    let caps: serde_json::Value =
        serde_json::from_str(upstream["capabilities"].as_str().expect("capabilities"))
            .expect("caps");
    assert!(caps.get("tools").is_some(), "{record}");
    assert!(
        record["init_params"]
            .as_str()
            .is_some_and(|p| p.contains("clientInfo")),
        "{record}"
    );
}

/// The internal socket path of `slot` in the gateway's runtime directory:
/// the one `mcpgw.*` directory (its name is random) under `runtime`.
fn internal_socket(runtime: &std::path::Path, slot: u32) -> std::path::PathBuf {
    let dirs: Vec<std::path::PathBuf> = std::fs::read_dir(runtime)
        .expect("read runtime_dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("mcpgw."))
        })
        .collect();
    assert_eq!(
        dirs.len(),
        1,
        "one gateway's directory in {runtime:?}: {dirs:?}"
    );
    dirs[0].join(format!("w{slot}.sock"))
}

#[tokio::test]
async fn slot_that_crashes_at_every_start_is_marked_down_and_served_around() {
    let counter = start_counter!().expect("counter-server");
    let runtime = mcpgw_tests::process::TempDir::new("mcpgw-runtime").expect("dir");
    let mut config = GatewayConfig::new(3).upstream("counter", &counter.url());
    config.runtime_dir = Some(runtime.path().to_owned());
    let gateway = Gateway::start(&config).expect("start mcpgw");
    let mut by_slot: BTreeMap<u32, Vec<(McpClient, u64)>> = BTreeMap::new();
    for mut c in sessions_on_every_worker(&gateway).await {
        let (count, tag) = increment(&mut c).await.expect("increment");
        by_slot.entry(tag.slot).or_default().push((c, count));
    }
    let initializes = counter.stats().await.expect("stats").initialize;
    let victim_slot = *by_slot.keys().next().expect("a slot");
    let mut victims = by_slot.remove(&victim_slot).expect("victims");
    let (_, tag) = {
        let (c, _) = &mut victims[0];
        let reply = c.call_tool("get_count", json!({})).await.expect("get");
        (reply.count().expect("count"), reply.worker().expect("tag"))
    };
    // Make the slot unable to start: its internal socket path becomes a
    // directory that cannot be removed, so every new worker there fails to
    // bind and exits at once.
    let path = internal_socket(runtime.path(), victim_slot);
    std::fs::remove_file(&path).expect("remove the socket file");
    std::fs::create_dir_all(path.join("blocker")).expect("block the path");
    kill(Pid::from_raw(tag.pid as i32), Signal::SIGKILL).expect("kill the worker");

    wait_until(
        "the slot to be marked down",
        Duration::from_secs(30),
        || async {
            Ok((supervisor_metric(&gateway, "mcpgw_worker_slots_down").await == 1.0).then_some(()))
        },
    )
    .await
    .expect("slot down");
    for (client, count) in &mut victims {
        let (now, served_by) = increment(client).await.expect("served by another slot");
        *count += 1;
        assert_eq!(now, *count, "the counter continued");
        assert_ne!(served_by.slot, victim_slot);
    }
    for (client, count) in by_slot.values_mut().flatten() {
        let (now, _) = increment(client).await.expect("other sessions unaffected");
        *count += 1;
        assert_eq!(now, *count);
    }
    assert_eq!(
        counter.stats().await.expect("stats").initialize,
        initializes,
        "moved sessions were re-attached, not re-created"
    );
    // New sessions only land on live slots.
    let mut slots = HashSet::new();
    for _ in 0..12 {
        let mut c = gateway.client();
        let reply = c.initialize().await.expect("initialize");
        slots.insert(reply.worker().expect("tag").slot);
    }
    assert!(!slots.contains(&victim_slot), "{slots:?}");
    assert!(metric_sum(&gateway, "mcpgw_sessions_resumed_total{").await >= victims.len() as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_under_load_then_back_empty() {
    let mut redis = RedisServer::start().expect("redis-server");
    let counter = start_counter!().expect("counter-server");
    let mut config = GatewayConfig::new(2).upstream("counter", &counter.url());
    config.extra = format!(
        "[store]\nredis_url = {:?}\n\n[sessions]\nheartbeat_ms = 200\nheartbeat_ttl_ms = 1000\n",
        redis.url()
    );
    let gateway = Gateway::start(&config).expect("start mcpgw");
    let sessions = open_sessions(&gateway, 6).await;
    wait_until("records in Redis", Duration::from_secs(20), || async {
        Ok((redis.keys("mcpgw:s:*").await?.len() == 6).then_some(()))
    })
    .await
    .expect("records written");
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = drive(&sessions, &stop);

    redis.stop();
    let stopped = Instant::now();
    wait_until("the gateway to notice", Duration::from_secs(20), || async {
        Ok((supervisor_metric(&gateway, "mcpgw_store_up").await == 0.0).then_some(()))
    })
    .await
    .expect("store down seen");
    // New sessions work while Redis is away.
    let mut late = Vec::new();
    for _ in 0..4 {
        let mut c = gateway.client();
        c.initialize().await.expect("initialize without Redis");
        increment(&mut c).await.expect("increment without Redis");
        late.push(c);
    }
    // Ten seconds without Redis, under load.
    wait_until("10 s of outage", Duration::from_secs(30), || async {
        Ok((stopped.elapsed() >= Duration::from_secs(10)).then_some(()))
    })
    .await
    .expect("outage");
    redis.restart().expect("restart redis, empty");
    let back = Instant::now();
    wait_until(
        "every live session recorded again",
        Duration::from_secs(30),
        || async { Ok((redis.keys("mcpgw:s:*").await?.len() == 10).then_some(())) },
    )
    .await
    .expect("records converge");
    wait_for_successes("load after Redis is back", &sessions, back, 2).await;
    stop_load(&stop, tasks).await;
    for s in &sessions {
        let failed = s.outcomes().iter().filter(|o| o.ok.is_none()).count();
        assert_eq!(failed, 0, "a session failed while Redis was away");
        assert_counts_continue(s);
    }
    assert_eq!(supervisor_metric(&gateway, "mcpgw_store_up").await, 1.0);
    assert!(supervisor_metric(&gateway, "mcpgw_store_resyncs_total").await >= 1.0);
    assert!(metric_sum(&gateway, "mcpgw_store_errors_total").await >= 1.0);
    // Heartbeats are back too, one per worker.
    let beats = redis.keys("mcpgw:hb:*").await.expect("keys");
    assert_eq!(beats.len(), 2, "{beats:?}");
}

#[tokio::test]
async fn gateway_restarted_on_the_same_redis_resumes_its_sessions() {
    let redis = RedisServer::start().expect("redis-server");
    let counter = start_counter!().expect("counter-server");
    let mut config = GatewayConfig::new(2).upstream("counter", &counter.url());
    config.extra = format!("[store]\nredis_url = {:?}\n", redis.url());
    let mut first = Gateway::start(&config).expect("start mcpgw");
    let mut clients: Vec<(McpClient, u64)> = Vec::new();
    for mut c in sessions_on_every_worker(&first).await {
        let (count, _) = increment(&mut c).await.expect("increment");
        clients.push((c, count));
    }
    let initializes = counter.stats().await.expect("stats").initialize;
    let deletes = counter.stats().await.expect("stats").delete;
    first.signal(Signal::SIGTERM).expect("SIGTERM");
    let status = first
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("exit");
    assert!(status.success(), "{status:?}");

    let second = Gateway::start(&config).expect("start mcpgw again");
    for (client, count) in &mut clients {
        client.retarget(second.addr);
        let (now, _) = increment(client).await.expect("old session id served");
        *count += 1;
        assert_eq!(now, *count, "the upstream session went on");
    }
    let stats = counter.stats().await.expect("stats");
    assert_eq!(stats.initialize, initializes, "no new upstream session");
    assert_eq!(stats.delete, deletes, "no upstream session was closed");
    assert_eq!(
        metric_sum(&second, "mcpgw_sessions_claimed_total").await,
        clients.len() as f64
    );
}

/// Serving workers, as the admin API lists them.
async fn serving_slots(gateway: &Gateway) -> Vec<u64> {
    let (_, body) = mcpgw_tests::ops::admin_get(gateway, "/admin/workers").await;
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let mut slots: Vec<u64> = doc["workers"]
        .as_array()
        .map(|ws| ws.iter().filter_map(|w| w["slot"].as_u64()).collect())
        .unwrap_or_default();
    slots.sort_unstable();
    slots
}

async fn reload_to_workers(
    gateway: &Gateway,
    config: &mut GatewayConfig,
    workers: usize,
    nth: f64,
) {
    config.workers = workers;
    std::fs::write(gateway.config_path(), config.to_toml()).expect("rewrite config");
    gateway.signal(Signal::SIGHUP).expect("SIGHUP");
    wait_until("the reload", Duration::from_secs(30), || async {
        Ok(
            (supervisor_metric(gateway, "mcpgw_reloads_total{result=\"ok\"}").await >= nth)
                .then_some(()),
        )
    })
    .await
    .expect("reload applied");
    let want: Vec<u64> = (0..workers as u64).collect();
    wait_until(
        &format!("{workers} workers serving"),
        Duration::from_secs(30),
        || async { Ok((serving_slots(gateway).await == want).then_some(())) },
    )
    .await
    .expect("pool resized");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_count_changes_on_reload_without_losing_a_session() {
    let counter = start_counter!().expect("counter-server");
    let mut config = GatewayConfig::new(2).upstream("counter", &counter.url());
    let gateway = Gateway::start(&config).expect("start mcpgw");
    let sessions = open_sessions(&gateway, 8).await;
    let initializes = counter.stats().await.expect("stats").initialize;
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = drive(&sessions, &stop);

    // Grow 2 → 4: live sessions stay where they are; new ones use all four.
    reload_to_workers(&gateway, &mut config, 4, 1.0).await;
    let grown = Instant::now();
    let mut slots = HashSet::new();
    for _ in 0..24 {
        let mut c = gateway.client();
        let reply = c.initialize().await.expect("initialize");
        slots.insert(reply.worker().expect("tag").slot);
        increment(&mut c).await.expect("new session works");
    }
    // New sessions go to the least loaded workers: the new ones.
    assert!(
        slots.contains(&2) && slots.contains(&3),
        "new sessions on the new slots: {slots:?}"
    );
    wait_for_successes("load after growing", &sessions, grown, 2).await;

    // Shrink 4 → 1: every session moves to the one slot left, upstream
    // sessions re-attached.
    reload_to_workers(&gateway, &mut config, 1, 2.0).await;
    let shrunk = Instant::now();
    wait_until("load after shrinking", Duration::from_secs(30), || async {
        Ok(sessions
            .iter()
            .all(|s| {
                s.outcomes()
                    .iter()
                    .filter(|o| o.at >= shrunk)
                    .filter_map(|o| o.ok)
                    .filter(|(_, tag)| tag.slot == 0)
                    .count()
                    >= 2
            })
            .then_some(()))
    })
    .await
    .expect("load on the remaining slot");
    stop_load(&stop, tasks).await;
    for s in &sessions {
        let failed = s.outcomes().iter().filter(|o| o.ok.is_none()).count();
        assert_eq!(
            failed, 0,
            "a request of {:?} failed during a resize",
            s.home
        );
        assert_counts_continue(s);
    }
    assert_eq!(
        counter.stats().await.expect("stats").initialize,
        initializes + 24,
        "the 8 loaded sessions kept their upstream sessions; only the 24 new ones initialized"
    );
}
