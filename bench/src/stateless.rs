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

use anyhow::Result;

use crate::compare::{Interleaved, Scenario, Settings, spec, warm_up};
use crate::load::Probe;
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
    warm_up(warm, "mcpgw stateless", procs).await?;

    let duration = Duration::from_secs_f64(settings.duration_secs);
    let mut out = Vec::with_capacity(settings.stateless_concurrency.len());
    for &c in &settings.stateless_concurrency {
        let name = format!("stateless client, keep-alive C={c}");
        let spec_of = |i: usize| {
            let (ep, era, probe) = targets[i];
            spec(settings, ep, c, false, duration, Some(probe.clone()), era)
        };
        let at = Interleaved {
            name: &name,
            concurrency: c,
            new_connection: false,
            targets: &TARGETS,
        };
        out.push(at.run(settings, spec_of, ticks_per_second, procs).await?);
    }
    Ok(out)
}
