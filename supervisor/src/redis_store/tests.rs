use super::*;
use mcpgw_tests::redis::RedisServer;
use scripts::Moved;

fn record(id: &SessionId) -> SessionRecord {
    crate::store::test_record(
        id,
        WorkerId {
            slot: 0,
            generation: 1,
        },
    )
}

/// Reassigners and claimers racing on one dead worker's sessions, on a
/// real Redis: every session ends with exactly one owner, in exactly one
/// owner set, and each moved exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_reassigners_never_make_two_owners() {
    let server = RedisServer::start().expect("redis-server");
    let conn = conn::connect_url(&server.url()).expect("client");
    let scripts = Arc::new(Scripts::new("race:"));
    let dead = "h/0/1";
    let ids: Vec<SessionId> = (0..200)
        .map(|_| SessionId::mint_for_slot(0, 1).expect("id"))
        .collect();
    for id in &ids {
        let put = scripts
            .put(&mut conn.clone(), "h", dead, &record(id), id, 60_000)
            .await
            .expect("put");
        assert!(put);
    }
    let targets = ["h/0/2", "h/0/3", "h/1/7", "h/2/9"];
    let mut tasks = Vec::new();
    for to in targets {
        let (scripts, mut conn) = (scripts.clone(), conn.clone());
        tasks.push(tokio::spawn(async move {
            scripts
                .reassign(&mut conn, dead, to, 60_000)
                .await
                .expect("reassign")
        }));
    }
    for claimer in ["other/0/5", "other/1/6"] {
        let (scripts, mut conn, ids) = (scripts.clone(), conn.clone(), ids.clone());
        tasks.push(tokio::spawn(async move {
            let mut won = 0;
            for id in ids.iter().rev() {
                if scripts
                    .claim(&mut conn, id, dead, claimer, true, None, 60_000)
                    .await
                    .expect("claim")
                    != Claim::Changed
                {
                    won += 1;
                }
            }
            won
        }));
    }
    let mut moved = 0;
    for t in tasks {
        moved += t.await.expect("task");
    }
    assert_eq!(moved, ids.len() as u64, "each session moved exactly once");

    let mut conn = conn.clone();
    let owners = targets.iter().chain(["other/0/5", "other/1/6"].iter());
    let mut members: Vec<(String, Vec<String>)> = Vec::new();
    for owner in owners {
        let set: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys::owner_sessions("race:", owner))
            .query_async(&mut conn)
            .await
            .expect("smembers");
        members.push(((*owner).to_owned(), set));
    }
    for id in &ids {
        let (owner, _) = scripts
            .get(&mut conn, id)
            .await
            .expect("get")
            .expect("record");
        let holders: Vec<&String> = members
            .iter()
            .filter(|(_, set)| set.iter().any(|s| s == id.as_str()))
            .map(|(o, _)| o)
            .collect();
        assert_eq!(holders, vec![&owner], "session {id}");
    }
    let dead_set: i64 = redis::cmd("SCARD")
        .arg(keys::owner_sessions("race:", dead))
        .query_async(&mut conn)
        .await
        .expect("scard");
    assert_eq!(dead_set, 0);
}

/// `west/0/1` claims the session of `east/0/1` (a cluster member).
async fn claim_as_west(scripts: &Scripts, conn: &mut RedisConn) -> Claim {
    let id = SessionId::parse(CLAIMED.as_bytes()).expect("id");
    scripts
        .claim(
            conn,
            &id,
            "east/0/1",
            "west/0/1",
            true,
            Some("east"),
            60_000,
        )
        .await
        .expect("claim")
}

const CLAIMED: &str = "abcdefghijklmnopqrstuvwxyz";

/// A claim on another host's worker waits for its heartbeat to expire;
/// a put never overwrites another host's record.
#[tokio::test]
async fn claims_respect_heartbeats_and_hosts() {
    let server = RedisServer::start().expect("redis-server");
    let mut conn = conn::connect_url(&server.url()).expect("client");
    let scripts = Scripts::new("hb:");
    let id = SessionId::parse(CLAIMED.as_bytes()).expect("id");
    let owner = "east/0/1";
    assert!(
        scripts
            .put(&mut conn, "east", owner, &record(&id), &id, 60_000)
            .await
            .expect("put")
    );
    let _: () = redis::cmd("SET")
        .arg(keys::heartbeat("hb:", owner))
        .arg(1)
        .query_async(&mut conn)
        .await
        .expect("set heartbeat");
    let claim = scripts
        .claim(&mut conn, &id, owner, "west/0/1", true, None, 60_000)
        .await
        .expect("claim");
    assert_eq!(claim, Claim::Alive(None), "the owner is alive");
    // A cluster member: its entry comes back, to forward to.
    let _: () = redis::cmd("HSET")
        .arg(keys::members("hb:"))
        .arg("east")
        .arg(r#"{"advertise":"10.0.0.1:9000","beat_ms":1,"sessions":1}"#)
        .query_async(&mut conn)
        .await
        .expect("hset");
    let claim = claim_as_west(&scripts, &mut conn).await;
    assert_eq!(
        claim,
        Claim::Alive(Some(
            r#"{"advertise":"10.0.0.1:9000","beat_ms":1,"sessions":1}"#.into()
        ))
    );
    assert!(
        !scripts
            .put(&mut conn, "west", "west/0/1", &record(&id), &id, 60_000)
            .await
            .expect("put"),
        "another host's record is not overwritten"
    );
    assert!(
        !scripts
            .remove(&mut conn, "west", &id)
            .await
            .expect("remove")
    );
    let _: () = redis::cmd("DEL")
        .arg(keys::heartbeat("hb:", owner))
        .query_async(&mut conn)
        .await
        .expect("del heartbeat");
    let claim = claim_as_west(&scripts, &mut conn).await;
    assert!(
        matches!(claim, Claim::Claimed(_)),
        "a dead owner's session is claimed"
    );
    let (now, _) = scripts
        .get(&mut conn, &id)
        .await
        .expect("get")
        .expect("rec");
    assert_eq!(now, "west/0/1");
}

/// Two survivors take over a dead member's sessions at once, on a real
/// Redis: each session ends with exactly one owner, a live worker of
/// one survivor at the slot its hash gives, both get a share, nothing
/// moves while the dead host's heartbeat is there, and the member
/// leaves the members hash once it holds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survivors_split_a_dead_hosts_sessions_without_two_owners() {
    let server = RedisServer::start().expect("redis-server");
    let mut conn = conn::connect_url(&server.url()).expect("client");
    let scripts = Scripts::new("mcpgw:");
    let dead = "gw-a/0/1";
    let ids: Vec<SessionId> = (0..150)
        .map(|_| SessionId::mint_for_slot(0, 1).expect("id"))
        .collect();
    for id in &ids {
        assert!(
            scripts
                .put(&mut conn, "gw-a", dead, &record(id), id, 60_000)
                .await
                .expect("put")
        );
    }
    let _: () = redis::cmd("SET")
        .arg(keys::heartbeat("mcpgw:", dead))
        .arg(1)
        .query_async(&mut conn)
        .await
        .expect("heartbeat");
    // Its last heartbeat just now: it expires after the TTL, and the
    // survivors share its sessions until twice that.
    let entry = format!(
        r#"{{"advertise":"127.0.0.2:1","beat_ms":{},"sessions":150}}"#,
        mcpgw_protocol::cluster::now_ms()
    );
    let _: () = redis::cmd("HSET")
        .arg(keys::members("mcpgw:"))
        .arg("gw-a")
        .arg(&entry)
        .query_async(&mut conn)
        .await
        .expect("hset");
    let mut stores = Vec::new();
    for (i, host) in ["gw-b", "gw-c"].into_iter().enumerate() {
        let store = RedisStore::start(
            &StoreConfig::default(),
            &server.url(),
            Settings {
                host: host.into(),
                boot: 10,
                idle_timeout: Duration::from_secs(60),
                heartbeat_every: Duration::from_millis(50),
                heartbeat_ttl: Duration::from_millis(200),
                advertise: Some(format!("127.0.0.{}:1", i + 3)),
            },
            Arc::new(Metrics::new(2).expect("metrics")),
        )
        .expect("store");
        let workers: Vec<(WorkerId, u32)> = (0..2)
            .map(|slot| {
                (
                    WorkerId {
                        slot,
                        generation: 10,
                    },
                    100 + u32::from(slot),
                )
            })
            .collect();
        store.heartbeat(&workers, 2);
        stores.push(store);
    }
    let owner_of = |mut conn: RedisConn, id: SessionId| async move {
        Scripts::new("mcpgw:")
            .get(&mut conn, &id)
            .await
            .expect("get")
            .map(|(o, _)| o)
    };
    // The dead host's heartbeat is still there: nothing moves.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(owner_of(conn.clone(), ids[0]).await.as_deref(), Some(dead));
    let _: () = redis::cmd("DEL")
        .arg(keys::heartbeat("mcpgw:", dead))
        .query_async(&mut conn)
        .await
        .expect("del");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let gone: bool = redis::cmd("HEXISTS")
            .arg(keys::members("mcpgw:"))
            .arg("gw-a")
            .query_async::<i64>(&mut conn)
            .await
            .expect("hexists")
            == 0;
        if gone {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "gw-a never left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut per_host = std::collections::HashMap::<String, usize>::new();
    for id in &ids {
        let owner = owner_of(conn.clone(), *id).await.expect("an owner");
        let (host, w) = parse_owner_id(&owner).expect("owner id");
        assert_eq!(w.slot, mcpgw_protocol::routing::slot_for(id, 2), "{id}");
        let holders = {
            let mut n = 0;
            for o in ["gw-b/0/10", "gw-b/1/10", "gw-c/0/10", "gw-c/1/10", dead] {
                let member: bool = redis::cmd("SISMEMBER")
                    .arg(keys::owner_sessions("mcpgw:", o))
                    .arg(id.as_str())
                    .query_async::<i64>(&mut conn)
                    .await
                    .expect("sismember")
                    == 1;
                n += usize::from(member);
            }
            n
        };
        assert_eq!(holders, 1, "{id} is in exactly one owner set");
        *per_host.entry(host.to_owned()).or_default() += 1;
    }
    assert_eq!(
        per_host.len(),
        2,
        "both survivors took a share: {per_host:?}"
    );
    let in_memory: usize = stores.iter().map(|s| s.len()).sum();
    assert_eq!(
        in_memory,
        ids.len(),
        "each claimed record is held by its new host"
    );
}

/// A batch moves a session only away from an owner without a heartbeat
/// (when asked to check), only to an owner with one, and only if the
/// session is still the expected owner's; ids it no longer holds leave
/// its set.
#[tokio::test]
async fn batch_moves_go_only_from_dead_owners_to_live_ones() {
    let server = RedisServer::start().expect("redis-server");
    let mut conn = conn::connect_url(&server.url()).expect("client");
    let scripts = Scripts::new("mb:");
    let (dead, to) = ("gw-a/0/1", "gw-b/1/7");
    let id = SessionId::mint_for_slot(0, 1).expect("id");
    let stale = SessionId::mint_for_slot(0, 1).expect("id");
    assert!(
        scripts
            .put(&mut conn, "gw-a", dead, &record(&id), &id, 60_000)
            .await
            .expect("put")
    );
    let set_key = |conn: RedisConn, k: String| async move {
        let mut conn = conn;
        let _: () = redis::cmd("SET")
            .arg(k)
            .arg(1)
            .query_async(&mut conn)
            .await
            .expect("set");
    };
    // A session whose record is gone, still listed in the owner's set.
    let _: () = redis::cmd("SADD")
        .arg(keys::owner_sessions("mb:", dead))
        .arg(stale.as_str())
        .query_async(&mut conn)
        .await
        .expect("sadd");
    let moves = vec![(id, to.to_owned()), (stale, to.to_owned())];
    let batch = |conn: &mut RedisConn| {
        let (scripts, moves) = (&scripts, &moves);
        let mut conn = conn.clone();
        async move {
            scripts
                .move_batch(&mut conn, dead, true, moves, 60_000)
                .await
                .expect("move")
        }
    };
    assert_eq!(
        batch(&mut conn).await,
        Moved::Done(Vec::new()),
        "the new owner has no heartbeat"
    );
    set_key(conn.clone(), keys::heartbeat("mb:", dead)).await;
    set_key(conn.clone(), keys::heartbeat("mb:", to)).await;
    assert_eq!(batch(&mut conn).await, Moved::OwnerAlive);
    let _: () = redis::cmd("DEL")
        .arg(keys::heartbeat("mb:", dead))
        .query_async(&mut conn)
        .await
        .expect("del");
    match batch(&mut conn).await {
        Moved::Done(moved) => {
            assert_eq!(moved.len(), 1, "{moved:?}");
            assert_eq!(moved[0].0, id.as_str());
        }
        other => panic!("{other:?}"),
    }
    let (owner, _) = scripts
        .get(&mut conn, &id)
        .await
        .expect("get")
        .expect("rec");
    assert_eq!(owner, to);
    let left: i64 = redis::cmd("SCARD")
        .arg(keys::owner_sessions("mb:", dead))
        .query_async(&mut conn)
        .await
        .expect("scard");
    assert_eq!(
        left, 0,
        "the moved and the stale id left the dead owner's set"
    );
    assert_eq!(
        batch(&mut conn).await,
        Moved::Done(Vec::new()),
        "a second move finds another owner"
    );
    assert_eq!(
        scripts
            .owners_of_host(&mut conn, "gw-b")
            .await
            .expect("scan"),
        vec![to.to_owned()]
    );
    assert!(
        scripts
            .owners_of_host(&mut conn, "gw-a")
            .await
            .expect("scan")
            .is_empty()
    );
}
