//! The two-host scenario: two mcpgw hosts with `[cluster]` (on 127.0.0.2 and
//! 127.0.0.3, one key file, sessions in one redis-server on a Unix socket) in front of
//! the counter server. Per repetition, back to back at keep-alive C = 16: (1) one host,
//! every request on the host that owns its session; (2) both hosts, sessions opened on
//! both (odd clients on the second), each session's requests alternating between its
//! host and the other one, so that half of them are forwarded (`load`'s `alternate`).
//! The claim is (2) / (1) throughput, with the share of requests forwarded read from
//! both hosts' `mcpgw_cluster_forwarded_total` on their admin `/metrics`. Both hosts
//! share this machine's cores: the ratio is what forwarding costs, not what a second
//! machine would add.

use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use crate::compare::{Scenario, Settings, TargetRuns, measured_run, spec, warm_up};
use crate::http::Conn;
use crate::load::Probe;
use crate::mcp::{Endpoint, Era};
use crate::procs::{self, Proc};

/// The scenario's targets, in the order every repetition runs them.
pub(crate) const TARGETS: [&str; 2] = ["one host", "two hosts, half forwarded"];

/// Concurrency of the scenario.
pub(crate) const CONCURRENCY: usize = 16;

/// What the two-host scenario measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct TwoHosts {
    pub(crate) scenario: Scenario,
    /// Requests forwarded between the hosts during the two-host runs (all outcomes),
    /// and those whose forwarding failed (outcome other than `ok`).
    pub(crate) forwarded: u64,
    pub(crate) forward_failures: u64,
    /// Requests sent in the two-host runs (measured successes and failures).
    pub(crate) requests: u64,
}

impl TwoHosts {
    /// Forwarded / sent, over the two-host runs.
    pub(crate) fn forwarded_share(&self) -> f64 {
        self.forwarded as f64 / self.requests.max(1) as f64
    }
}

/// Starts redis-server and the two hosts in `dir`, in front of `upstream`, and runs the
/// scenario; `procs` are the comparison's processes (for logs on failure).
pub(crate) async fn run(
    settings: &Settings,
    dir: &Path,
    upstream: SocketAddr,
    counter: &Proc,
    ticks_per_second: u64,
) -> Result<TwoHosts> {
    let (redis, socket) = procs::start_redis(dir).await?;
    let key_file = dir.join("cluster.key");
    std::fs::write(&key_file, random_hex_key()?)?;
    let mut hosts = Vec::new();
    for (name, ip) in [("bench-a", "127.0.0.2"), ("bench-b", "127.0.0.3")] {
        let text = format!(
            "listen = [\"{ip}:0\"]\n\
             admin_listen = \"{ip}:0\"\n\
             workers = {workers}\n\
             runtime_dir = {{runtime_dir}}\n\
             \n\
             [security]\n\
             # One name for the service, as behind a load balancer.\n\
             allowed_hosts = [\"127.0.0.2\", \"127.0.0.3\"]\n\
             \n\
             [store]\n\
             redis_url = {redis:?}\n\
             host = \"{name}\"\n\
             \n\
             [cluster]\n\
             listen = \"{ip}:0\"\n\
             key_file = {key:?}\n\
             \n\
             [[upstream]]\n\
             id = \"counter\"\n\
             url = \"http://{upstream}/mcp\"\n",
            workers = settings.workers,
            redis = format!("unix://{}", socket.display()),
            key = key_file.display().to_string(),
        );
        let gateway =
            procs::start_mcpgw_config(&settings.bin_dir, dir, name, settings.workers, &text)
                .await
                .with_context(|| format!("starting {name} on {ip}"))?;
        eprintln!(
            "# cluster host {name} on {} (pid {})",
            gateway.addr,
            gateway.proc.pid()
        );
        hosts.push(gateway);
    }
    let (a, b) = (&hosts[0], &hosts[1]);
    let procs: [&Proc; 4] = [counter, &redis, &a.proc, &b.proc];
    let members = [a.proc.pid(), b.proc.pid(), redis.pid()];
    let (upstream_pid, own) = (counter.pid(), std::process::id());
    // The proxy's CPU: both hosts and Redis, in both targets (the second host idles in
    // the one-host runs).
    let probe: Probe = Rc::new(move || {
        vec![
            members.iter().map(|&p| procs::tree_cpu_ticks(p)).sum(),
            procs::tree_cpu_ticks(upstream_pid),
            procs::cpu_ticks(own),
        ]
    });
    let ep = Endpoint::parse(&format!("http://{}/mcp", a.addr), &[])?;
    let load = |duration: Duration, alternate: Option<SocketAddr>, probe: Option<Probe>| {
        let mut s = spec(
            settings,
            &ep,
            CONCURRENCY,
            false,
            duration,
            probe,
            Era::Stateful,
        );
        // No warm-up: every measured request is one the forwarding counters see.
        s.warmup = Duration::ZERO;
        s.alternate = alternate;
        s
    };
    for (target, alternate) in TARGETS.iter().zip([None, Some(b.addr)]) {
        warm_up(
            load(Duration::from_secs(1), alternate, None),
            target,
            &procs,
        )
        .await?;
    }
    let name = format!("two hosts, keep-alive C={CONCURRENCY}");
    let mut scenario = Scenario {
        name: name.clone(),
        concurrency: CONCURRENCY,
        new_connection: false,
        targets: TARGETS.iter().map(|t| TargetRuns::new(t)).collect(),
    };
    let duration = Duration::from_secs_f64(settings.duration_secs);
    let (mut forwarded, mut forward_failures, mut requests) = (0, 0, 0);
    for rep in 0..settings.reps {
        for (i, alternate) in [None, Some(b.addr)].into_iter().enumerate() {
            let before = forwards(&[a.admin, b.admin]).await?;
            let spec = load(duration, alternate, Some(probe.clone()));
            let r = measured_run(spec, &name, rep, settings.reps, TARGETS[i], &procs).await?;
            let after = forwards(&[a.admin, b.admin]).await?;
            if alternate.is_some() {
                forwarded += after.0 - before.0;
                forward_failures += after.1 - before.1;
                requests += r.requests + r.errors.total;
            } else if after.0 != before.0 {
                bail!("the one-host run forwarded {} requests", after.0 - before.0);
            }
            scenario.targets[i].runs.push(r);
        }
    }
    for t in &mut scenario.targets {
        t.summarize(ticks_per_second);
    }
    let result = TwoHosts {
        scenario,
        forwarded,
        forward_failures,
        requests,
    };
    eprintln!(
        "# two hosts: {forwarded} of {requests} requests forwarded ({:.1} %), {forward_failures} forwarding failures",
        100.0 * result.forwarded_share()
    );
    Ok(result)
}

/// `mcpgw_cluster_forwarded_total` summed over the hosts' admin `/metrics`: (all
/// outcomes, outcomes other than `ok`).
async fn forwards(admins: &[SocketAddr]) -> Result<(u64, u64)> {
    let (mut all, mut failed) = (0, 0);
    for &admin in admins {
        let mut conn = Conn::connect(admin).await?;
        let request =
            format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
        let head = tokio::time::timeout(Duration::from_secs(10), conn.exchange(request.as_bytes()))
            .await
            .context("GET /metrics timed out")??;
        if head.status != 200 {
            bail!("GET /metrics on {admin} answered HTTP {}", head.status);
        }
        let text = String::from_utf8_lossy(conn.body());
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("mcpgw_cluster_forwarded_total{") else {
                continue;
            };
            let value = rest
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .map_or(0, |v| v as u64);
            all += value;
            if !rest.contains("outcome=\"ok\"") {
                failed += value;
            }
        }
    }
    Ok((all, failed))
}

/// 32 random bytes from the kernel, hex: what `openssl rand -hex 32` gives.
fn random_hex_key() -> Result<String> {
    use std::io::Read as _;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom for the cluster key")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
