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
    counter: CounterServer,
    redis: RedisServer,
    _keys: TempDir,
}

impl Cluster {
    fn start() -> Self {
        let redis = RedisServer::start().expect("redis-server");
        let counter = start_counter!().expect("counter-server");
        let keys = TempDir::new("mcpgw-cluster-key").expect("temp dir");
        let key_file = keys.path().join("cluster.key");
        std::fs::write(&key_file, KEY).expect("write key");
        let hosts = HOSTS
            .iter()
            .map(|(name, ip)| {
                let mut config = GatewayConfig::new(2).upstream("counter", &counter.url());
                config.ip = Some((*ip).to_owned());
                // Loopback names other than 127.0.0.1 are allowed by name.
                config.extra = format!(
                    "[security]\nallowed_hosts = [\"{ip}\"]\n\n[store]\nredis_url = {:?}\nhost = {name:?}\n\n[cluster]\nlisten = \"{ip}:0\"\nkey_file = {:?}\n",
                    redis.url(),
                    key_file.display().to_string(),
                );
                Gateway::start(&config).expect("start a gateway host")
            })
            .collect();
        Self {
            hosts,
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
