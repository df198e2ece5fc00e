//! Operating a running gateway from a test: sessions spread over every
//! worker, the admin listener, and reading metrics.

use std::collections::BTreeSet;

use serde_json::json;

use crate::http::{HttpConn, Request};
use crate::{Gateway, McpClient};

/// Sessions (each with one `increment`) until every worker slot owns one.
pub async fn sessions_on_every_worker(gateway: &Gateway) -> Vec<McpClient> {
    let mut clients = Vec::new();
    let mut slots = BTreeSet::new();
    for _ in 0..64 {
        let mut c = gateway.client();
        let reply = c.initialize().await.expect("initialize");
        slots.insert(reply.worker().expect("worker header").slot);
        c.call_tool("increment", json!({}))
            .await
            .expect("increment");
        clients.push(c);
        if slots.len() == gateway.workers {
            return clients;
        }
    }
    panic!(
        "64 sessions did not cover {} workers: {slots:?}",
        gateway.workers
    );
}

pub async fn admin_get(gateway: &Gateway, path: &str) -> (u16, String) {
    let admin = gateway
        .admin
        .expect("the gateway announced its admin listener");
    let mut conn = HttpConn::connect(admin).await.expect("connect to admin");
    let resp = conn.send(&Request::get(path)).await.expect("admin answer");
    (resp.status, resp.text())
}

pub fn sum_of(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The value of one un-labelled-by-worker supervisor sample, 0 when absent.
pub async fn supervisor_metric(gateway: &Gateway, sample: &str) -> f64 {
    let (_, text) = admin_get(gateway, "/metrics").await;
    text.lines()
        .find(|l| l.starts_with(sample) && l[sample.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Sum of every sample whose line starts with `prefix` (e.g. a family name
/// and `{`), across workers.
pub async fn metric_sum(gateway: &Gateway, prefix: &str) -> f64 {
    let (_, text) = admin_get(gateway, "/metrics").await;
    sum_of(&text, prefix)
}

/// The pids of the running workers, from `/admin/workers`.
pub async fn worker_pids(gateway: &Gateway) -> Vec<u32> {
    let (status, text) = admin_get(gateway, "/admin/workers").await;
    assert_eq!(status, 200, "/admin/workers: {text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("/admin/workers is JSON");
    let workers = v
        .get("workers")
        .and_then(|w| w.as_array())
        .or_else(|| v.as_array())
        .expect("a list of workers");
    workers
        .iter()
        .filter_map(|w| w.get("pid")?.as_u64())
        .map(|p| p as u32)
        .collect()
}

/// A process's resident set size in KiB (`VmRSS` in `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
