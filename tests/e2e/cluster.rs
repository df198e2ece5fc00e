//! Several gateway hosts on one Redis (`[cluster]`): three `mcpgw serve`
//! supervisors with their own host names on 127.0.0.2, .3 and .4, one real
//! `redis-server`, and a load-balancer stand-in that sends each request of
//! a session to the next host in turn. Every host serves every session by
//! forwarding it, signed, to the host that owns it; forged forwarding is
//! refused; random session ids cost no Redis round trip.

use std::time::Duration;

use mcpgw_protocol::cluster::{ClusterKey, NONCE, SIGNATURE, Signed, TIMESTAMP, now_ms};
use mcpgw_tests::http::{HttpConn, Request};
use mcpgw_tests::ops::{admin_get, metric_sum};
use mcpgw_tests::process::TempDir;
use mcpgw_tests::redis::RedisServer;
use mcpgw_tests::stream::MessageStream;
use mcpgw_tests::{CounterServer, Gateway, GatewayConfig, McpClient, start_counter, wait_until};
use serde_json::{Value, json};

const KEY: &[u8] = b"a test cluster key of 32+ bytes, not for production";
const HOSTS: [(&str, &str); 3] = [
    ("gw-a", "127.0.0.2"),
    ("gw-b", "127.0.0.3"),
    ("gw-c", "127.0.0.4"),
];
const WAIT: Duration = Duration::from_secs(30);

struct Cluster {
    hosts: Vec<Gateway>,
    /// Each host's configuration, to start it again.
    configs: Vec<GatewayConfig>,
    counter: CounterServer,
    redis: RedisServer,
    _keys: TempDir,
}

impl Cluster {
    fn start() -> Self {
        Self::start_with("")
    }

    /// Three hosts; `more` is appended to each one's configuration
    /// (`[sessions]` heartbeats, more `[cluster]` keys: the table is last).
    fn start_with(more: &str) -> Self {
        let redis = RedisServer::start().expect("redis-server");
        let counter = start_counter!().expect("counter-server");
        let keys = TempDir::new("mcpgw-cluster-key").expect("temp dir");
        let key_file = keys.path().join("cluster.key");
        std::fs::write(&key_file, KEY).expect("write key");
        let configs: Vec<GatewayConfig> = HOSTS
            .iter()
            .map(|(name, ip)| {
                let mut config = GatewayConfig::new(2).upstream("counter", &counter.url());
                config.ip = Some((*ip).to_owned());
                // Loopback names other than 127.0.0.1 are allowed by name.
                config.extra = format!(
                    "[security]\nallowed_hosts = [\"{ip}\"]\n\n[store]\nredis_url = {:?}\nhost = {name:?}\n\n[cluster]\nlisten = \"{ip}:0\"\nkey_file = {:?}\n{more}",
                    redis.url(),
                    key_file.display().to_string(),
                );
                config
            })
            .collect();
        let hosts = configs
            .iter()
            .map(|config| Gateway::start(config).expect("start a gateway host"))
            .collect();
        Self {
            hosts,
            configs,
            counter,
            redis,
            _keys: keys,
        }
    }

    /// Waits until every host lists all three as live members.
    async fn wait_for_members(&self) -> Vec<Value> {
        let mut docs = Vec::new();
        for host in &self.hosts {
            let doc = wait_until("three live members", WAIT, || async {
                let (status, body) = admin_get(host, "/admin/cluster").await;
                anyhow::ensure!(status == 200, "/admin/cluster: {status} {body}");
                let doc: Value = serde_json::from_str(&body)?;
                let live = doc["members"]
                    .as_array()
                    .map_or(0, |m| m.iter().filter(|m| m["live"] == true).count());
                Ok((live == HOSTS.len()).then_some(doc))
            })
            .await
            .expect("membership");
            docs.push(doc);
        }
        docs
    }

    async fn metric(&self, prefix: &str) -> f64 {
        let mut sum = 0.0;
        for host in &self.hosts {
            sum += metric_sum(host, prefix).await;
        }
        sum
    }
}

/// A session whose requests a load balancer without stickiness spreads
/// over every host: each request goes to the next one, on a new connection.
struct Spread {
    client: McpClient,
    addrs: Vec<std::net::SocketAddr>,
    next: usize,
}

impl Spread {
    async fn open(cluster: &Cluster, first: usize) -> Self {
        let addrs: Vec<_> = cluster.hosts.iter().map(|h| h.addr).collect();
        let mut client = McpClient::new(addrs[first % addrs.len()], "/mcp");
        client.initialize().await.expect("initialize");
        Self {
            client,
            addrs,
            next: first + 1,
        }
    }

    /// The load balancer takes hosts out (or puts new addresses in).
    fn over(&mut self, addrs: Vec<std::net::SocketAddr>) {
        self.addrs = addrs;
    }

    fn rotate(&mut self) -> std::net::SocketAddr {
        let addr = self.addrs[self.next % self.addrs.len()];
        self.next += 1;
        self.client.retarget(addr);
        addr
    }

    /// One `increment` on the next host: its count, or why it failed.
    async fn increment(&mut self) -> Result<u64, String> {
        let addr = self.rotate();
        let reply = self
            .client
            .call_tool("increment", json!({}))
            .await
            .map_err(|e| format!("{addr}: {e:#}"))?;
        if reply.status() != 200 {
            return Err(format!("{addr}: status {}", reply.status()));
        }
        reply.count().map_err(|e| format!("{addr}: {e:#}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_spread_over_three_hosts_keep_their_counters() {
    let cluster = Cluster::start();
    let docs = cluster.wait_for_members().await;
    // Every host sees every other at the address it announced.
    for doc in &docs {
        for ((name, _), host) in HOSTS.iter().zip(&cluster.hosts) {
            let member = doc["members"]
                .as_array()
                .and_then(|m| m.iter().find(|m| m["host"] == *name))
                .unwrap_or_else(|| panic!("{name} missing from {doc}"));
            let cluster_addr = host.cluster.expect("cluster listener announced");
            assert_eq!(member["advertise"], cluster_addr.to_string(), "{doc}");
        }
    }

    // Nine sessions, opened on each host in turn, then driven concurrently,
    // each request on the next host.
    const SESSIONS: usize = 9;
    const CALLS: u64 = 30;
    let mut tasks = Vec::new();
    for i in 0..SESSIONS {
        let mut s = Spread::open(&cluster, i).await;
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..CALLS {
                seen.push(s.increment().await);
            }
            (s, seen)
        }));
    }
    let mut spreads = Vec::new();
    for t in tasks {
        let (s, seen) = t.await.expect("load task");
        let errors: Vec<&String> = seen.iter().filter_map(|r| r.as_ref().err()).collect();
        assert!(errors.is_empty(), "errors: {errors:?}");
        let counts: Vec<u64> = seen.into_iter().filter_map(Result::ok).collect();
        assert_eq!(
            counts,
            (1..=CALLS).collect::<Vec<_>>(),
            "a counter reset or skipped"
        );
        spreads.push(s);
    }
    let stats = cluster.counter.stats().await.expect("stats");
    assert_eq!(
        stats.initialize, SESSIONS as u64,
        "one upstream session per session, never re-initialized: {stats:?}"
    );
    // Two of every three requests went to a host that does not own the
    // session (each session's first request went to its owner).
    let ok =
        metric_sum_matching(&cluster, "mcpgw_cluster_forwarded_total{", "outcome=\"ok\"").await;
    assert_eq!(ok, (SESSIONS as u64 * CALLS * 2 / 3) as f64);
    // Forwarded requests reuse connections between hosts: every connection a
    // host's supervisor handed to a worker is a client's (one per request
    // here: initialize and the calls) or another
    // host's, and those are far fewer than the requests they carried.
    let dispatched =
        metric_sum_matching(&cluster, "mcpgw_connections_dispatched_total{", "worker=").await;
    let from_clients = (SESSIONS as u64 * (CALLS + 1)) as f64;
    let between_hosts = dispatched - from_clients;
    assert!(
        between_hosts <= ok / 2.0,
        "{between_hosts} connections between hosts for {ok} forwarded requests ({dispatched} dispatched in all)"
    );

    // An answer streamed as SSE crosses hosts too: progress, then the result.
    let mut s = spreads.pop().expect("a session");
    let addr = s.rotate();
    let mut stream = MessageStream::post(
        &s.client,
        addr,
        &json!({"jsonrpc": "2.0", "id": "sse", "method": "tools/call", "params": {
            "name": "chatty", "arguments": {"steps": 3, "tag": "x"},
            "_meta": {"progressToken": "p"}}}),
    )
    .await
    .expect("streamed call");
    let (response, before) = stream
        .until_response(&json!("sse"), WAIT)
        .await
        .expect("result");
    assert_eq!(before.len(), 6, "{before:?}");
    assert!(response.get("result").is_some(), "{response}");

    // The members as `mcpgw status` shows them.
    let admin = cluster.hosts[1].admin.expect("admin").to_string();
    let out =
        std::process::Command::new(mcpgw_tests::gateway::gateway_binary().expect("mcpgw binary"))
            .args(["status", "--admin", &admin])
            .output()
            .expect("mcpgw status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("cluster members: 3"), "{text}");
    for (name, _) in HOSTS {
        assert!(
            text.lines()
                .any(|l| l.starts_with(name) && l.contains("live")),
            "{text}"
        );
    }
    // Sessions per host, as each member last published them.
    wait_until("every session counted on its host", WAIT, || async {
        let total = metric_sum(&cluster.hosts[0], "mcpgw_cluster_member_sessions{").await;
        let (_, doc) = admin_get(&cluster.hosts[0], "/admin/cluster").await;
        anyhow::ensure!(total <= SESSIONS as f64, "{total}: {doc}");
        Ok((total == SESSIONS as f64).then_some(()))
    })
    .await
    .expect("sessions per host");

    // DELETE through a host that does not own the session ends it upstream.
    for s in &mut spreads {
        s.rotate();
        let resp = s.client.delete().await.expect("delete");
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
}

/// The session ids of `spreads`, in order.
fn session_ids(spreads: &[Spread]) -> Vec<String> {
    spreads
        .iter()
        .map(|s| s.client.session_id().expect("id").to_owned())
        .collect()
}

/// The owner id of each session in Redis (`None`: no record).
async fn owners_in_redis(redis: &RedisServer, ids: &[String]) -> Vec<Option<String>> {
    let mut conn = redis.connect().await.expect("redis");
    let mut owners = Vec::new();
    for id in ids {
        let owner: Option<String> = redis::cmd("HGET")
            .arg(format!("mcpgw:s:{id}"))
            .arg("owner")
            .query_async(&mut conn)
            .await
            .expect("HGET");
        owners.push(owner);
    }
    owners
}

/// The members hash (`mcpgw:members`): host → entry.
async fn members_in_redis(redis: &RedisServer) -> std::collections::HashMap<String, Value> {
    let mut conn = redis.connect().await.expect("redis");
    let all: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg("mcpgw:members")
        .query_async(&mut conn)
        .await
        .expect("HGETALL");
    all.into_iter()
        .map(|(h, json)| (h, serde_json::from_str(&json).expect("member JSON")))
        .collect()
}

/// Opens `n` sessions, the i-th on host `i % 3` (its owner), and gives
/// each one `calls` increments spread over every host.
async fn open_and_count(cluster: &Cluster, n: usize, calls: u64) -> Vec<Spread> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let mut s = Spread::open(cluster, i).await;
        tasks.push(tokio::spawn(async move {
            for want in 1..=calls {
                assert_eq!(s.increment().await, Ok(want), "before the failure");
            }
            s
        }));
    }
    let mut spreads = Vec::new();
    for t in tasks {
        spreads.push(t.await.expect("load task"));
    }
    spreads
}

const HEARTBEAT_MS: u64 = 250;
/// Short, so that a dead host's heartbeats run out soon.
const KILL_TTL_MS: u64 = 1_500;

/// A host loses power under load: its whole process tree is SIGKILLed. Its
/// sessions are claimed by the two survivors before any request asks for
/// them, within the heartbeat TTL plus one second, and carry on there with
/// their upstream sessions (no re-initialize: each counter continues);
/// the other hosts' sessions see no error at any time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_hosts_sessions_continue_on_the_survivors() {
    let cluster = Cluster::start_with(&format!(
        "\n[sessions]\nheartbeat_ms = {HEARTBEAT_MS}\nheartbeat_ttl_ms = {KILL_TTL_MS}\n"
    ));
    cluster.wait_for_members().await;
    const SESSIONS: usize = 12;
    const BEFORE: u64 = 6;
    let spreads = open_and_count(&cluster, SESSIONS, BEFORE).await;
    let ids = session_ids(&spreads);
    let owners = owners_in_redis(&cluster.redis, &ids).await;
    let (mut doomed, mut others) = (Vec::new(), Vec::new());
    for (s, owner) in spreads.into_iter().zip(&owners) {
        let owner = owner.as_deref().expect("a record in Redis");
        if owner.starts_with("gw-a/") {
            doomed.push(s);
        } else {
            others.push(s);
        }
    }
    assert_eq!(doomed.len(), SESSIONS / 3, "{owners:?}");
    let doomed_ids = session_ids(&doomed);

    // The other hosts' sessions run on, through the survivors (the load
    // balancer takes the dead host out), for the whole failover.
    let survivors: Vec<_> = cluster.hosts[1..].iter().map(|h| h.addr).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for mut s in others {
        s.over(survivors.clone());
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                seen.push(s.increment().await);
            }
            seen
        }));
    }
    // Some load before the kill.
    let forwarded = cluster.metric("mcpgw_cluster_forwarded_total{").await;
    wait_until("load on the survivors", WAIT, || async {
        Ok(
            (cluster.metric("mcpgw_cluster_forwarded_total{").await >= forwarded + 8.0)
                .then_some(()),
        )
    })
    .await
    .expect("load");

    let mut cluster = cluster;
    cluster.hosts[0].kill();
    let killed = std::time::Instant::now();
    let cluster = cluster;

    // Claimed proactively: Redis says the survivors own every one of the
    // dead host's sessions while no request has asked for any.
    let claimed_after = wait_until("the dead host's sessions claimed", WAIT, || async {
        let owners = owners_in_redis(&cluster.redis, &doomed_ids).await;
        Ok(owners
            .iter()
            .all(|o| {
                o.as_deref()
                    .is_some_and(|o| o.starts_with("gw-b/") || o.starts_with("gw-c/"))
            })
            .then(|| killed.elapsed()))
    })
    .await
    .expect("proactive claims");
    // Each of them answers on the survivors, its counter where it was,
    // within the heartbeat TTL plus one second of the kill.
    let deadline = killed + Duration::from_millis(KILL_TTL_MS + 1_000);
    let mut answering = Vec::new();
    for mut s in doomed {
        s.over(survivors.clone());
        answering.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            loop {
                match s.increment().await {
                    Ok(count) => return (s, count, killed.elapsed(), failures),
                    Err(e) => failures.push(e),
                }
                if std::time::Instant::now() >= deadline {
                    return (s, 0, killed.elapsed(), failures);
                }
            }
        }));
    }
    let mut doomed = Vec::new();
    let mut answered_after = Duration::ZERO;
    for t in answering {
        let (s, count, after, failures) = t.await.expect("answering task");
        assert_eq!(
            count,
            BEFORE + 1,
            "served within the TTL plus 1 s of the kill, the counter carried on (no re-initialize): {failures:?}"
        );
        answered_after = answered_after.max(after);
        doomed.push(s);
    }
    assert!(
        answered_after <= Duration::from_millis(KILL_TTL_MS + 1_000),
        "served {answered_after:?} after the kill"
    );
    let mut claimed = 0.0;
    for host in &cluster.hosts[1..] {
        claimed += metric_sum(
            host,
            "mcpgw_cluster_claimed_sessions_total{from_host=\"gw-a\"}",
        )
        .await;
    }
    assert_eq!(
        claimed,
        doomed.len() as f64,
        "claimed before any request asked"
    );
    eprintln!(
        "failover: claimed {claimed_after:?} after SIGKILL, every session answered {answered_after:?} after it (heartbeat TTL {KILL_TTL_MS} ms)"
    );
    for s in &mut doomed {
        for want in BEFORE + 2..BEFORE + 6 {
            assert_eq!(s.increment().await, Ok(want));
        }
    }

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in load {
        let seen = t.await.expect("load task");
        let errors: Vec<&String> = seen.iter().filter_map(|r| r.as_ref().err()).collect();
        assert!(
            errors.is_empty(),
            "errors on the other hosts' sessions: {errors:?}"
        );
        let counts: Vec<u64> = seen.into_iter().filter_map(Result::ok).collect();
        assert_eq!(
            counts,
            (BEFORE + 1..=BEFORE + counts.len() as u64).collect::<Vec<_>>(),
            "a counter reset or skipped"
        );
    }
    let stats = cluster.counter.stats().await.expect("stats");
    assert_eq!(
        stats.initialize, SESSIONS as u64,
        "no upstream session was opened again: {stats:?}"
    );
    // The dead host held nothing more: it left the members.
    wait_until("gw-a removed from the members", WAIT, || async {
        Ok((!members_in_redis(&cluster.redis).await.contains_key("gw-a")).then_some(()))
    })
    .await
    .expect("members");
}

/// A drained host (SIGTERM) with `handover_on_stop = true` gives its
/// sessions to the live hosts before it exits: the next request for each,
/// on any host, is served with its upstream session. With the default
/// (false), a host restarted within the TTL keeps its sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_host_hands_over_only_when_configured() {
    const SESSIONS: usize = 6;
    const BEFORE: u64 = 3;
    // Handover: the sessions go to gw-b and gw-c, and gw-a leaves.
    let mut cluster = Cluster::start_with(&format!(
        "handover_on_stop = true\n\n[sessions]\nheartbeat_ms = {HEARTBEAT_MS}\nheartbeat_ttl_ms = 5000\n"
    ));
    cluster.wait_for_members().await;
    let mut spreads = open_and_count(&cluster, SESSIONS, BEFORE).await;
    let ids = session_ids(&spreads);
    let before = owners_in_redis(&cluster.redis, &ids).await;
    let on_a = before
        .iter()
        .filter(|o| o.as_deref().is_some_and(|o| o.starts_with("gw-a/")))
        .count();
    assert_eq!(on_a, SESSIONS / 3, "{before:?}");
    let survivors: Vec<_> = cluster.hosts[1..].iter().map(|h| h.addr).collect();
    cluster.hosts[0].stop().await;
    let after = owners_in_redis(&cluster.redis, &ids).await;
    for (b, a) in before.iter().zip(&after) {
        let a = a.as_deref().expect("a record");
        assert!(
            !a.starts_with("gw-a/"),
            "handed over before exit: {after:?}"
        );
        if !b.as_deref().is_some_and(|b| b.starts_with("gw-a/")) {
            assert_eq!(b.as_deref(), Some(a), "only gw-a's sessions moved");
        }
    }
    assert!(
        !members_in_redis(&cluster.redis).await.contains_key("gw-a"),
        "a host that handed everything over leaves the members"
    );
    for s in &mut spreads {
        s.over(survivors.clone());
        for want in BEFORE + 1..=BEFORE + 3 {
            assert_eq!(
                s.increment().await,
                Ok(want),
                "served at once, counter kept"
            );
        }
    }
    let stats = cluster.counter.stats().await.expect("stats");
    assert_eq!(stats.initialize, SESSIONS as u64, "{stats:?}");
    drop(spreads);
    drop(cluster);

    // The default: gw-a drained and restarted within the TTL keeps them.
    let mut cluster = Cluster::start_with(&format!(
        "\n[sessions]\nheartbeat_ms = {HEARTBEAT_MS}\nheartbeat_ttl_ms = 5000\n"
    ));
    cluster.wait_for_members().await;
    let mut spreads = open_and_count(&cluster, SESSIONS, BEFORE).await;
    let ids = session_ids(&spreads);
    let before = owners_in_redis(&cluster.redis, &ids).await;
    cluster.hosts[0].stop().await;
    assert_eq!(
        owners_in_redis(&cluster.redis, &ids).await,
        before,
        "nothing moved at the stop"
    );
    let restarted = Gateway::start(&cluster.configs[0]).expect("gw-a again");
    cluster.hosts[0] = restarted;
    // Its previous run's sessions are its new workers' now, adopted at
    // start, none taken by another host.
    let want_a: Vec<usize> = (0..SESSIONS)
        .filter(|i| {
            before[*i]
                .as_deref()
                .is_some_and(|o| o.starts_with("gw-a/"))
        })
        .collect();
    assert_eq!(want_a.len(), SESSIONS / 3);
    wait_until("gw-a's sessions adopted by its new run", WAIT, || async {
        let members = members_in_redis(&cluster.redis).await;
        let workers: Vec<String> = members
            .get("gw-a")
            .and_then(|m| m["workers"].as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|w| w.as_str().map(str::to_owned))
            .collect();
        let now = owners_in_redis(&cluster.redis, &ids).await;
        for (i, (b, n)) in before.iter().zip(&now).enumerate() {
            if want_a.contains(&i) {
                anyhow::ensure!(
                    n.as_deref().is_some_and(|n| n.starts_with("gw-a/")),
                    "taken by another host: {now:?}"
                );
                if !n.as_ref().is_some_and(|n| workers.contains(n)) {
                    return Ok(None);
                }
            } else {
                anyhow::ensure!(b == n, "another host's session moved: {now:?}");
            }
        }
        Ok(Some(()))
    })
    .await
    .expect("kept by gw-a");
    let addrs: Vec<_> = cluster.hosts.iter().map(|h| h.addr).collect();
    for s in &mut spreads {
        s.over(addrs.clone());
        for want in BEFORE + 1..=BEFORE + 3 {
            assert_eq!(
                s.increment().await,
                Ok(want),
                "counter kept after the restart"
            );
        }
    }
    let now = owners_in_redis(&cluster.redis, &ids).await;
    for i in &want_a {
        assert!(
            now[*i].as_deref().is_some_and(|o| o.starts_with("gw-a/")),
            "still gw-a's: {now:?}"
        );
    }
    let stats = cluster.counter.stats().await.expect("stats");
    assert_eq!(stats.initialize, SESSIONS as u64, "{stats:?}");
}

/// Sum of the samples of `family` (a prefix up to `{`) whose labels contain
/// `label`, on every host.
async fn metric_sum_matching(cluster: &Cluster, family: &str, label: &str) -> f64 {
    let mut sum = 0.0;
    for host in &cluster.hosts {
        let (_, text) = admin_get(host, "/metrics").await;
        sum += text
            .lines()
            .filter(|l| l.starts_with(family) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    sum
}

/// A POST for session `session` as another host would forward it, signed
/// with `key` (now, with `nonce`) if given.
fn forwarding_request(session: &str, body: &str, key: Option<&ClusterKey>, nonce: &str) -> Request {
    let mut req = Request::post("/mcp", body.as_bytes().to_vec())
        .header("Content-Type", "application/json")
        .header("Accept", "application/json, text/event-stream")
        .header("Mcp-Session-Id", session)
        .header("MCP-Protocol-Version", "2025-11-25");
    if let Some(key) = key {
        let ts = now_ms();
        let signature = key.sign(&Signed {
            method: b"POST",
            path: b"/mcp",
            body: body.as_bytes(),
            timestamp_ms: ts,
            nonce: nonce.as_bytes(),
            session: session.as_bytes(),
            principal: b"",
            client: b"",
        });
        req = req
            .header(TIMESTAMP, &ts.to_string())
            .header(NONCE, nonce)
            .header(SIGNATURE, &signature);
    }
    req
}

async fn send(addr: std::net::SocketAddr, req: &Request) -> (u16, String) {
    let mut conn = HttpConn::connect(addr).await.expect("connect");
    let resp = conn.send(req).await.expect("answer");
    (resp.status, resp.text())
}

/// `cmdstat_<command>` calls in `INFO commandstats`, 0 if never called.
async fn redis_calls(redis: &RedisServer, command: &str) -> u64 {
    let mut conn = redis.connect().await.expect("redis");
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_forwarding_is_refused_and_random_ids_cost_no_redis_lookups() {
    let cluster = Cluster::start();
    cluster.wait_for_members().await;
    let mut owner = McpClient::new(cluster.hosts[0].addr, "/mcp");
    owner.initialize().await.expect("initialize");
    assert_eq!(owner.count("increment").await.expect("increment"), 1);
    let session = owner.session_id().expect("session id").to_owned();
    let target = cluster.hosts[0].cluster.expect("cluster listener");
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "increment", "arguments": {}}})
    .to_string();

    // No signature, a wrong key, a tampered body: 403, logged.
    let (status, body) = send(target, &forwarding_request(&session, &call, None, "")).await;
    assert_eq!(status, 403, "{body}");
    let wrong = ClusterKey::from_bytes(b"not the cluster's key, but 32+ bytes long");
    let (status, body) = send(
        target,
        &forwarding_request(
            &session,
            &call,
            Some(&wrong),
            "00000000000000000000000000000001",
        ),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let key = ClusterKey::from_bytes(KEY);
    let signed = forwarding_request(
        &session,
        &call,
        Some(&key),
        "00000000000000000000000000000002",
    );
    let mut tampered = signed.clone();
    tampered.body = call.replace("increment", "get_count").into_bytes();
    let (status, body) = send(target, &tampered).await;
    assert_eq!(status, 403, "{body}");
    // The same request signed with the cluster's key is served (so the
    // refusals above are the signature's doing), and only once.
    let (status, body) = send(target, &signed).await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).expect("a JSON answer");
    assert_eq!(
        answer.pointer("/result/structuredContent/count"),
        Some(&json!(2)),
        "{body}"
    );
    let (status, body) = send(target, &signed).await;
    assert_eq!(status, 403, "a replay: {body}");
    assert_eq!(
        cluster.metric("mcpgw_cluster_refused_total{").await,
        4.0,
        "missing, bad signature twice, replay"
    );
    wait_until("the refusal logged", WAIT, || async {
        Ok(cluster.hosts[0]
            .log()
            .contains("forwarded request refused on the cluster listener")
            .then_some(()))
    })
    .await
    .expect("log line");

    // A flood of random, well-formed session ids over every host: each is
    // refused (404) without a Redis look-up.
    const FLOOD: usize = 300;
    let before =
        redis_calls(&cluster.redis, "hmget").await + redis_calls(&cluster.redis, "evalsha").await;
    for i in 0..FLOOD {
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw).expect("random");
        let id = random_id(raw);
        let mut c = McpClient::new(cluster.hosts[i % HOSTS.len()].addr, "/mcp");
        c.set_session_id(&id);
        let reply = c
            .call_tool("increment", json!({}))
            .await
            .expect("an answer");
        assert_eq!(reply.status(), 404, "{id}");
    }
    let after =
        redis_calls(&cluster.redis, "hmget").await + redis_calls(&cluster.redis, "evalsha").await;
    assert_eq!(
        after - before,
        0,
        "{FLOOD} random ids made {} record look-ups in Redis",
        after - before
    );
    assert_eq!(
        cluster
            .metric("mcpgw_cluster_untagged_session_ids_total")
            .await,
        FLOOD as f64
    );
    // The real session still works from every host, Redis asked once per
    // host that had not seen it yet.
    let lookups = redis_calls(&cluster.redis, "hmget").await;
    for host in &cluster.hosts[1..] {
        owner.retarget(host.addr);
        owner
            .count("increment")
            .await
            .expect("increment via a peer");
        owner
            .count("increment")
            .await
            .expect("increment via a peer");
    }
    let made = redis_calls(&cluster.redis, "hmget").await - lookups;
    assert_eq!(made, 2, "owner look-ups are cached: one per host");
}

/// 128 random bits as a session id (26 base32 characters, as minted).
fn random_id(raw: [u8; 16]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let value = u128::from_be_bytes(raw);
    (0..26)
        .map(|i| {
            let shift = 5 * (25 - i);
            let digit = if shift >= 128 {
                0
            } else {
                (value >> shift) & 0x1f
            };
            char::from(ALPHABET[digit as usize])
        })
        .collect()
}
