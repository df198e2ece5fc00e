//! The modern-upstream scenario: a client of MCP's 2026-07-28 revision in front of an
//! upstream of the same revision (the test crate's `modern-server`, built on rmcp), so
//! neither side has a session and mcpgw passes each call through after checking it
//! (headers against body, `_meta`, the version). Per repetition, back to back: (a) the
//! modern server directly, (b) nginx in front of it, (c) a second mcpgw in front of it;
//! each at `--modern-concurrency` (default 1 and 16), keep-alive, `tools/call add`. The
//! claim is mcpgw's keep-alive throughput as a ratio to nginx's (target ≥ 0.85), as for
//! the stateful scenarios.
//!
//! Its own upstream, nginx and gateway are started here and stopped at the end, so the
//! other scenarios' processes are untouched.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use serde_json::json;

use crate::compare::{Interleaved, Scenario, Settings, TARGETS, cpu_probe, spec, warm_up};
use crate::load::{LoadSpec, Probe};
use crate::mcp::{CallTemplate, Endpoint, Era};
use crate::procs::{self, Proc};

/// The call every request makes: a tool of the modern server's that needs no state.
fn call() -> CallTemplate {
    CallTemplate::new("add", &json!({"a": 1, "b": 2}), Era::Stateless)
}

/// Runs the scenario; one [`Scenario`] per concurrency, targets in [`TARGETS`] order.
pub(crate) async fn run(
    settings: &Settings,
    dir: &Path,
    ticks_per_second: u64,
    others: &[&Proc],
) -> Result<Vec<Scenario>> {
    let (server, upstream) = procs::start_modern(&settings.bin_dir, dir).await?;
    eprintln!("# modern-server on {upstream} (pid {})", server.pid());
    let (nginx, nginx_addr) = procs::start_nginx(
        &settings.nginx,
        dir,
        "nginx-modern",
        settings.workers,
        upstream,
    )
    .await?;
    eprintln!("# nginx (modern) on {nginx_addr} (pid {})", nginx.pid());
    let gateway = procs::start_mcpgw_with(
        &settings.bin_dir,
        dir,
        "mcpgw-modern",
        settings.workers,
        &format!("url = \"http://{upstream}/mcp\"\n"),
    )
    .await?;
    eprintln!(
        "# mcpgw (modern upstream) on {} (pid {})",
        gateway.addr,
        gateway.proc.pid()
    );
    let mut procs: Vec<&Proc> = others.to_vec();
    procs.extend([&server, &nginx, &gateway.proc]);

    let endpoints = [upstream, nginx_addr, gateway.addr]
        .map(|addr| Endpoint::parse(&format!("http://{addr}/mcp"), &[]));
    let [Ok(direct), Ok(via_nginx), Ok(via_mcpgw)] = endpoints else {
        anyhow::bail!("an endpoint of the modern scenario did not parse");
    };
    let endpoints: [Endpoint; 3] = [direct, via_nginx, via_mcpgw];
    let probes: Vec<Probe> = [None, Some(nginx.pid()), Some(gateway.proc.pid())]
        .into_iter()
        .map(|proxy| cpu_probe(proxy, server.pid()))
        .collect();
    let modern = |mut spec: LoadSpec| {
        spec.call = call();
        spec
    };

    for (target, ep) in TARGETS.iter().zip(&endpoints) {
        let warm = spec(
            settings,
            ep,
            16,
            false,
            Duration::from_secs(1),
            None,
            Era::Stateless,
        );
        warm_up(modern(warm), &format!("{target} (modern upstream)"), &procs).await?;
    }

    let duration = Duration::from_secs_f64(settings.duration_secs);
    let mut out = Vec::with_capacity(settings.modern_concurrency.len());
    for &c in &settings.modern_concurrency {
        let name = format!("modern upstream, keep-alive C={c}");
        let spec_of = |i: usize| {
            modern(spec(
                settings,
                &endpoints[i],
                c,
                false,
                duration,
                Some(probes[i].clone()),
                Era::Stateless,
            ))
        };
        let at = Interleaved {
            name: &name,
            concurrency: c,
            new_connection: false,
            targets: &TARGETS,
        };
        out.push(at.run(settings, spec_of, ticks_per_second, &procs).await?);
    }
    Ok(out)
}
