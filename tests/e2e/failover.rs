//! Failover with the embedded store: when a worker dies (killed, or hung and
//! caught by its missing heartbeats), its sessions move to the replacement by
//! compare-and-swap and carry on with their upstream state, without a new
//! upstream `initialize`. Real binary, real processes, real signals.

use std::collections::BTreeMap;
use std::time::Duration;

use mcpgw_tests::ops::{admin_get, metric_sum, sessions_on_every_worker};
use mcpgw_tests::{Gateway, GatewayConfig, McpClient, WorkerTag, start_counter, wait_until};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

/// Sessions grouped by the worker that owns them, each with its count.
async fn sessions_by_worker(gateway: &Gateway) -> BTreeMap<u32, Vec<(McpClient, WorkerTag, u64)>> {
    let mut by_slot: BTreeMap<u32, Vec<(McpClient, WorkerTag, u64)>> = BTreeMap::new();
    for _ in 0..3 {
        for mut c in sessions_on_every_worker(gateway).await {
            let reply = c
                .call_tool("increment", json!({}))
                .await
                .expect("increment");
            let tag = reply.worker().expect("worker header");
            by_slot.entry(tag.slot).or_default().push((c, tag, 2));
        }
    }
    by_slot
}

/// One more `increment` on a session that failed over: the count goes on
/// from where it was (the upstream state survived). Returns who served it.
async fn increment_and_check(client: &mut McpClient, count: &mut u64) -> WorkerTag {
    let reply = client
        .call_tool("increment", json!({}))
        .await
        .expect("served after failover");
    *count += 1;
    assert_eq!(
        reply.count().expect("count"),
        *count,
        "upstream state survived"
    );
    reply.worker().expect("worker header")
}

async fn slot_generation(gateway: &Gateway, slot: u32) -> Option<u64> {
    let (_, body) = admin_get(gateway, "/admin/workers").await;
    let doc: Value = serde_json::from_str(&body).ok()?;
    doc["workers"]
        .as_array()?
        .iter()
        .find(|w| w["slot"] == slot)
        .and_then(|w| w["generation"].as_u64())
}

#[tokio::test]
async fn killed_worker_sessions_carry_on_with_their_upstream_state() {
    let counter = start_counter!().expect("counter-server");
    let gateway = Gateway::start(&GatewayConfig::new(2).upstream("counter", &counter.url()))
        .expect("start mcpgw");
    let mut by_slot = sessions_by_worker(&gateway).await;
    let initializes = counter.stats().await.expect("stats").initialize;
    let (&slot, _) = by_slot.iter().next().expect("a worker with sessions");
    let mut victims = by_slot.remove(&slot).expect("victims");
    let victim_pid = victims[0].1.pid;
    kill(Pid::from_raw(victim_pid as i32), Signal::SIGKILL).expect("kill the worker");
    // A request written to the dying process itself is lost with it (its
    // connections reset); wait until it is gone, as a client would see.
    wait_until("the worker to die", Duration::from_secs(10), || async {
        Ok((!mcpgw_tests::process::process_alive(victim_pid)).then_some(()))
    })
    .await
    .expect("dead");

    // Right away: new connections wait in the supervisor for the
    // replacement, then find their session, counter intact.
    for (client, old, count) in &mut victims {
        let tag = increment_and_check(client, count).await;
        assert_eq!(tag.slot, old.slot);
        assert!(
            tag.generation > old.generation,
            "served by the replacement: {tag:?}"
        );
    }
    // The survivors never noticed.
    for (client, tag, count) in by_slot.values_mut().flatten() {
        let reply = client
            .call_tool("increment", json!({}))
            .await
            .expect("increment");
        *count += 1;
        assert_eq!(reply.count().expect("count"), *count);
        assert_eq!(reply.worker().expect("worker").pid, tag.pid);
    }
    let stats = counter.stats().await.expect("stats");
    assert_eq!(
        stats.initialize, initializes,
        "upstream sessions were re-attached, not re-created"
    );
    assert_eq!(
        metric_sum(&gateway, "mcpgw_sessions_reassigned_total").await,
        victims.len() as f64
    );
    assert_eq!(
        metric_sum(&gateway, "mcpgw_sessions_resumed_total{").await,
        victims.len() as f64
    );

    // A resumed session still ends properly: DELETE reaches the upstream.
    let (client, _, _) = &mut victims[0];
    let deletes = stats.delete;
    client.delete().await.expect("delete");
    wait_until("the upstream DELETE", Duration::from_secs(10), || async {
        Ok((counter.stats().await?.delete > deletes).then_some(()))
    })
    .await
    .expect("upstream session closed");
}

#[tokio::test]
async fn hung_worker_is_killed_and_its_sessions_move() {
    let counter = start_counter!().expect("counter-server");
    let mut config = GatewayConfig::new(2).upstream("counter", &counter.url());
    config.extra = "[sessions]\nheartbeat_ms = 100\nheartbeat_ttl_ms = 500\n".to_owned();
    let gateway = Gateway::start(&config).expect("start mcpgw");
    let mut by_slot = sessions_by_worker(&gateway).await;
    let initializes = counter.stats().await.expect("stats").initialize;
    let (&slot, _) = by_slot.iter().next().expect("a worker with sessions");
    let mut victims = by_slot.remove(&slot).expect("victims");
    let old = victims[0].1;
    // Frozen, not dead: only the missing heartbeats give it away.
    kill(Pid::from_raw(old.pid as i32), Signal::SIGSTOP).expect("stop the worker");
    wait_until(
        "the hung worker to be replaced",
        Duration::from_secs(20),
        || async {
            Ok(slot_generation(&gateway, slot)
                .await
                .filter(|g| *g > old.generation))
        },
    )
    .await
    .expect("replaced");
    assert_eq!(metric_sum(&gateway, "mcpgw_workers_hung_total").await, 1.0);
    for (client, _, count) in &mut victims {
        increment_and_check(client, count).await;
    }
    assert_eq!(
        counter.stats().await.expect("stats").initialize,
        initializes
    );
    assert!(
        !mcpgw_tests::process::process_alive(old.pid),
        "the hung worker was killed"
    );
}
