//! Redis as production runs it, through the real binary and real
//! `redis-server` processes: TLS (`rediss://`) with a private CA and a
//! client certificate, an ACL user with its password (right and wrong), and
//! Redis Sentinel naming the master, through a failover of Redis itself.

use std::time::Duration;

use mcpgw_tests::ops::{admin_get, supervisor_metric};
use mcpgw_tests::pki::Pki;
use mcpgw_tests::redis::{RedisOptions, RedisServer, RedisTls, Sentinel, free_port};
use mcpgw_tests::{Gateway, GatewayConfig, McpClient, start_counter, wait_until};

const FAST_HEARTBEATS: &str = "[sessions]\nheartbeat_ms = 200\nheartbeat_ttl_ms = 1000\n";

/// A session with one `increment` done; its count.
async fn session(gateway: &Gateway) -> (McpClient, u64) {
    let mut c = gateway.client();
    c.initialize().await.expect("initialize");
    let count = c.count("increment").await.expect("increment");
    (c, count)
}

async fn wait_for_records(redis: &RedisServer, n: usize) {
    wait_until(
        &format!("{n} session records in Redis"),
        Duration::from_secs(30),
        || async { Ok((redis.keys("mcpgw:s:*").await?.len() == n).then_some(())) },
    )
    .await
    .expect("records written");
}

async fn wait_for_store_down(gateway: &Gateway) {
    wait_until(
        "the gateway to count Redis as down",
        Duration::from_secs(20),
        || async { Ok((supervisor_metric(gateway, "mcpgw_store_up").await == 0.0).then_some(())) },
    )
    .await
    .expect("store down");
}

async fn wait_for_log(gateway: &Gateway, text: &str) {
    wait_until(
        &format!("{text:?} in the log"),
        Duration::from_secs(20),
        || async { Ok(gateway.log().contains(text).then_some(())) },
    )
    .await
    .expect("log line");
}

/// `rediss://` to a Redis that takes TLS only (`--port 0 --tls-port`) and
/// asks for a client certificate: the gateway trusts the private CA of
/// `redis_ca_file` and presents `redis_client_cert_file`; its records land
/// in Redis. A gateway trusting another CA counts Redis as down and still
/// opens sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca_and_a_client_certificate() {
    let pki = Pki::new();
    pki.issue("redis", "127.0.0.1", "subjectAltName=IP:127.0.0.1");
    pki.issue("client", "mcpgw gateway", "extendedKeyUsage=clientAuth");
    let tls_port = free_port();
    let redis = RedisServer::start_with(RedisOptions {
        tls: Some((
            tls_port,
            RedisTls {
                cert: pki.path("redis.pem"),
                key: pki.path("redis.key"),
                ca: pki.path("ca.pem"),
                auth_clients: true,
            },
        )),
        ..RedisOptions::default()
    })
    .expect("redis-server with TLS");
    let counter = start_counter!().expect("counter-server");
    let store = |ca: &std::path::Path| {
        format!(
            "[store]\nredis_url = \"rediss://127.0.0.1:{tls_port}/0\"\nredis_ca_file = {:?}\n\
             redis_client_cert_file = {:?}\nredis_client_key_file = {:?}\n{FAST_HEARTBEATS}",
            ca.display(),
            pki.path("client.pem").display(),
            pki.path("client.key").display(),
        )
    };
    let mut config = GatewayConfig::new(2).upstream("counter", &counter.url());
    config.extra = store(&pki.path("ca.pem"));
    let gateway = Gateway::start(&config).expect("start mcpgw");
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(session(&gateway).await);
    }
    wait_for_records(&redis, 3).await;
    let beats = redis.keys("mcpgw:hb:*").await.expect("keys");
    assert_eq!(beats.len(), 2, "a heartbeat per worker: {beats:?}");
    assert_eq!(supervisor_metric(&gateway, "mcpgw_store_up").await, 1.0);
    for (c, count) in &mut sessions {
        assert_eq!(c.count("increment").await.expect("increment"), *count + 1);
    }
    let (_, shown) = admin_get(&gateway, "/admin/config").await;
    assert!(shown.contains("\"redis_ca_file\":"), "{shown}");

    // Another CA: the handshake fails, Redis is down for this gateway, and
    // sessions are served from memory.
    let other = Pki::with_ca_name("another CA");
    let mut config = GatewayConfig::new(1).upstream("counter", &counter.url());
    config.extra =
        store(&other.path("ca.pem")).replace("[store]\n", "[store]\nhost = \"gw-untrusted\"\n");
    let untrusted = Gateway::start(&config).expect("start mcpgw");
    let (mut c, count) = session(&untrusted).await;
    wait_for_store_down(&untrusted).await;
    assert_eq!(c.count("increment").await.expect("increment"), count + 1);
    assert!(
        untrusted.log().contains("Redis is unreachable"),
        "{}",
        untrusted.log()
    );
    assert_eq!(
        redis.keys("mcpgw:hb:gw-untrusted*").await.expect("keys"),
        Vec::<String>::new()
    );
}

/// An ACL user limited to the gateway's prefix, its password from a file
/// (`${file:…}` in `redis_url`): records are written. The wrong password:
/// a log line says the credentials were refused, Redis counts as down, and
/// new sessions still work on this host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_with_the_right_and_a_wrong_password() {
    let port = free_port();
    let redis = RedisServer::start_with(RedisOptions {
        port: Some(port),
        args: [
            "--user",
            "mcpgw",
            "on",
            ">s3cret-pw",
            "~mcpgw:*",
            "&*",
            "+@all",
        ]
        .map(str::to_owned)
        .to_vec(),
        ..RedisOptions::default()
    })
    .expect("redis-server with an ACL user");
    let counter = start_counter!().expect("counter-server");
    let secrets = mcpgw_tests::process::TempDir::new("mcpgw-redis-pw").expect("dir");
    let right = secrets.path().join("right");
    let wrong = secrets.path().join("wrong");
    std::fs::write(&right, "s3cret-pw\n").expect("write");
    std::fs::write(&wrong, "not-the-pw\n").expect("write");
    let store = |file: &std::path::Path, host: &str| {
        format!(
            "[store]\nhost = \"{host}\"\n\
             redis_url = \"redis://mcpgw:${{file:{}}}@127.0.0.1:{port}/0\"\n{FAST_HEARTBEATS}",
            file.display()
        )
    };
    let mut config = GatewayConfig::new(2).upstream("counter", &counter.url());
    config.extra = store(&right, "gw-right");
    let gateway = Gateway::start(&config).expect("start mcpgw");
    let mut sessions = Vec::new();
    for _ in 0..2 {
        sessions.push(session(&gateway).await);
    }
    wait_for_records(&redis, 2).await;
    assert_eq!(supervisor_metric(&gateway, "mcpgw_store_up").await, 1.0);
    let beats = redis.keys("mcpgw:hb:gw-right*").await.expect("keys");
    assert_eq!(beats.len(), 2, "{beats:?}");
    let (_, shown) = admin_get(&gateway, "/admin/config").await;
    assert!(!shown.contains("s3cret-pw"), "{shown}");
    assert!(
        shown.contains(&format!("\"redis://<redacted>@127.0.0.1:{port}/0\"")),
        "{shown}"
    );

    let mut config = GatewayConfig::new(1).upstream("counter", &counter.url());
    config.extra = store(&wrong, "gw-wrong");
    let refused = Gateway::start(&config).expect("start mcpgw");
    let mut late = Vec::new();
    for _ in 0..3 {
        late.push(session(&refused).await);
    }
    wait_for_store_down(&refused).await;
    wait_for_log(&refused, "Redis refused this gateway's credentials").await;
    for (c, count) in &mut late {
        assert_eq!(c.count("increment").await.expect("increment"), *count + 1);
    }
    assert!(!refused.log().contains("not-the-pw"), "{}", refused.log());
    assert_eq!(
        redis.keys("mcpgw:hb:gw-wrong*").await.expect("keys"),
        Vec::<String>::new()
    );
    // The other gateway is unaffected.
    for (c, count) in &mut sessions {
        assert_eq!(c.count("increment").await.expect("increment"), *count + 1);
    }
    // The operator gives the user that password too: the refused gateway
    // picks it up without a restart and writes what it holds.
    let mut conn = redis.connect().await.expect("connect");
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("mcpgw")
        .arg(">not-the-pw")
        .query_async(&mut conn)
        .await
        .expect("ACL SETUSER");
    wait_until(
        "the refused gateway's heartbeats in Redis",
        Duration::from_secs(30),
        || async { Ok((redis.keys("mcpgw:hb:gw-wrong*").await?.len() == 1).then_some(())) },
    )
    .await
    .expect("credentials accepted after the fix");
    wait_for_records(&redis, 5).await;
    assert_eq!(supervisor_metric(&refused, "mcpgw_store_up").await, 1.0);
}

/// `sentinels` and `sentinel_master`: the gateway asks a sentinel for the
/// master and writes there. The master is then killed; the sentinel
/// promotes the replica, and the gateway, asking again, writes its new
/// sessions to the new master while the old ones keep their upstream
/// sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_names_the_master_and_follows_a_failover() {
    let master_port = free_port();
    let mut master = RedisServer::start_with(RedisOptions {
        port: Some(master_port),
        ..RedisOptions::default()
    })
    .expect("master");
    let replica_port = free_port();
    let replica = RedisServer::start_with(RedisOptions {
        port: Some(replica_port),
        args: vec![
            "--replicaof".to_owned(),
            "127.0.0.1".to_owned(),
            master_port.to_string(),
        ],
        ..RedisOptions::default()
    })
    .expect("replica");
    wait_until("the replica in sync", Duration::from_secs(30), || async {
        let mut conn = replica.connect().await?;
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut conn)
            .await?;
        Ok(info.contains("master_link_status:up").then_some(()))
    })
    .await
    .expect("replication");
    let sentinel = Sentinel::start("mymaster", master_port).expect("sentinel");
    let counter = start_counter!().expect("counter-server");
    let mut config = GatewayConfig::new(2).upstream("counter", &counter.url());
    config.extra = format!(
        "[store]\nredis_url = \"redis://mymaster/0\"\nsentinels = [{:?}]\n\
         sentinel_master = \"mymaster\"\n{FAST_HEARTBEATS}",
        sentinel.addr()
    );
    let gateway = Gateway::start(&config).expect("start mcpgw");
    let mut sessions = Vec::new();
    for _ in 0..2 {
        sessions.push(session(&gateway).await);
    }
    wait_for_records(&master, 2).await;
    wait_for_log(&gateway, &format!("127.0.0.1:{master_port}")).await;

    // Failover of Redis itself.
    master.stop();
    wait_until(
        "the sentinel to promote the replica",
        Duration::from_secs(60),
        || async {
            Ok((sentinel.master_port("mymaster").await.ok() == Some(replica_port)).then_some(()))
        },
    )
    .await
    .expect("failover");
    wait_until(
        "the replica to be master",
        Duration::from_secs(30),
        || async { Ok((replica.role().await? == "master").then_some(())) },
    )
    .await
    .expect("promoted");
    // Sessions opened before go on; new ones are written to the new master.
    for (c, count) in &mut sessions {
        assert_eq!(c.count("increment").await.expect("increment"), *count + 1);
    }
    for _ in 0..2 {
        sessions.push(session(&gateway).await);
    }
    wait_for_records(&replica, 4).await;
    wait_for_log(&gateway, &format!("127.0.0.1:{replica_port}")).await;
    wait_until("the store up again", Duration::from_secs(20), || async {
        Ok((supervisor_metric(&gateway, "mcpgw_store_up").await == 1.0).then_some(()))
    })
    .await
    .expect("store up");
    let beats = replica.keys("mcpgw:hb:*").await.expect("keys");
    assert_eq!(beats.len(), 2, "heartbeats on the new master: {beats:?}");
}
