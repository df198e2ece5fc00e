//! The stateless-client scenario. MCP's 2026-07-28 revision lets a client call a tool
//! with no `initialize` and no session: every request carries its version, method and
//! tool name in headers and the client's description in `params._meta`. mcpgw serves
//! such a client in front of a stateful upstream by giving each request an upstream
//! session of its own (opened ahead in a warm pool, closed after the request), so a
//! stateless call costs the gateway more than a call in a session; this scenario says
//! how much.
//!
//! The counter upstream is stateful, so neither it nor nginx can serve a stateless
//! client. Per repetition, back to back: (a) a stateful client against the upstream
//! directly, (c) the same stateful client through mcpgw, (s) a stateless client through
//! mcpgw; at each `--stateless-concurrency` (default 1 and 16). The claim is the
//! latency a stateless call adds over direct at C = 1 as a ratio to what a stateful
//! call adds in the same run (target ≤ 1.3), and the keep-alive throughput beside the
//! stateful client's.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use crate::compare::{Scenario, Settings, TargetRuns, measured_run, spec, with_logs};
use crate::load::{self, Probe};
use crate::mcp::{Endpoint, Era};
use crate::procs::Proc;

/// The scenario's targets, in the order every repetition runs them.
pub(crate) const TARGETS: [&str; 3] = ["direct", "mcpgw", "mcpgw stateless"];

/// Runs the scenario against `endpoints` (direct, mcpgw), whose CPU `probes` are in the
/// same order; one [`Scenario`] per concurrency.
pub(crate) async fn run(
    settings: &Settings,
    endpoints: [&Endpoint; 2],
    probes: [&Probe; 2],
    ticks_per_second: u64,
    procs: &[&Proc],
) -> Result<Vec<Scenario>> {
    let [direct, gateway] = endpoints;
    // What each target is: where it goes, which client, which processes it measures.
    let targets = [
        (direct, Era::Stateful, probes[0]),
        (gateway, Era::Stateful, probes[1]),
        (gateway, Era::Stateless, probes[1]),
    ];

    // Warm-up, unrecorded: fills the gateway's pool of upstream sessions for this kind
    // of client, and stops the run early if stateless calls do not work at all.
    let warm = spec(
        settings,
        gateway,
        16,
        false,
        Duration::from_secs(1),
        None,
        Era::Stateless,
    );
    let r = with_logs(load::run(warm).await, procs).context("warm-up of mcpgw stateless")?;
    if r.errors.total > 0 {
        bail!(
            "warm-up of mcpgw stateless: {} errors, first: {}",
            r.errors.total,
            r.errors.first.unwrap_or_default()
        );
    }
    eprintln!("# warm-up mcpgw stateless: {:.0} req/s", r.throughput);

    let duration = Duration::from_secs_f64(settings.duration_secs);
    let mut out = Vec::with_capacity(settings.stateless_concurrency.len());
    for &c in &settings.stateless_concurrency {
        let name = format!("stateless client, keep-alive C={c}");
        let mut scenario = Scenario {
            name: name.clone(),
            concurrency: c,
            new_connection: false,
            targets: TARGETS.iter().map(|t| TargetRuns::new(t)).collect(),
        };
        for rep in 0..settings.reps {
            for (i, &(ep, era, probe)) in targets.iter().enumerate() {
                let spec = spec(settings, ep, c, false, duration, Some(probe.clone()), era);
                let r = measured_run(spec, &name, rep, settings.reps, TARGETS[i], procs).await?;
                scenario.targets[i].runs.push(r);
            }
        }
        for t in &mut scenario.targets {
            t.summarize(ticks_per_second);
        }
        out.push(scenario);
    }
    Ok(out)
}
