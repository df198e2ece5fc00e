//! The standard comparison: the same load against (a) the counter upstream reached
//! directly, (b) nginx as a plain reverse proxy in front of it and (c) mcpgw in front of
//! it, interleaved (a b c a b c …) in one run on one machine, so that every claim is a
//! ratio measured side by side.
//!
//! Scenarios, in order:
//! - keep-alive `tools/call increment` at each concurrency (default 1, 16, 64) over 64
//!   sessions; the C = 1 runs also give the latency each hop adds over direct;
//! - a new TCP connection per request (default C = 16);
//! - stateless (2026-07-28) clients through mcpgw beside stateful ones and direct, at
//!   C = 1 and 16 ([`crate::stateless`]; `--no-stateless` skips it);
//! - a 2026-07-28 client in front of a 2026-07-28 upstream (`modern-server`): direct,
//!   nginx, mcpgw at C = 1 and 16 ([`crate::modern`]; `--no-modern` skips it);
//! - mcpgw only, on a fresh gateway: RSS per idle session after opening 10 000 sessions
//!   with one upstream session each;
//! - mcpgw only: failed requests during 20 SIGHUPs (config reloads) under keep-alive
//!   load at C = 16, with the reloads counted from `/metrics` (`--no-reload` skips it);
//! - mcpgw only: failover, the time from SIGKILL of a worker to each of its sessions
//!   being served again ([`crate::failover`]; `--failover-kills 0` skips it);
//! - mcpgw only: two gateway hosts with `[cluster]` on one Redis, half of the requests
//!   on the host that does not own their session, against one host
//!   ([`crate::cluster`]; `--no-cluster` skips it).
//!
//! It builds nothing: the binaries come from `--bin-dir` (default: beside this one).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use serde_json::json;

use std::rc::Rc;

use crate::http::Conn;
use crate::load::{self, LoadReport, LoadSpec, Probe, Stop};
use crate::mcp::{self, CallTemplate, Endpoint, Era};
use crate::procs::{self, Proc, TempDir};
use crate::report;

/// Settings of a comparison (the command line of `compare`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Settings {
    #[serde(skip)]
    pub(crate) bin_dir: PathBuf,
    #[serde(skip)]
    pub(crate) nginx: PathBuf,
    #[serde(skip)]
    pub(crate) results: PathBuf,
    #[serde(skip)]
    pub(crate) update_doc: Option<PathBuf>,
    pub(crate) workers: u16,
    pub(crate) reps: usize,
    pub(crate) duration_secs: f64,
    pub(crate) warmup_secs: f64,
    pub(crate) sessions: usize,
    pub(crate) concurrency: Vec<usize>,
    pub(crate) new_connection_concurrency: usize,
    /// Concurrencies of the stateless-client scenario (empty: skipped).
    #[serde(default)]
    pub(crate) stateless_concurrency: Vec<usize>,
    /// Concurrencies of the modern-upstream scenario (empty: skipped).
    #[serde(default)]
    pub(crate) modern_concurrency: Vec<usize>,
    pub(crate) idle_sessions: usize,
    pub(crate) idle_concurrency: usize,
    pub(crate) reload: bool,
    pub(crate) reload_signals: u32,
    /// Run the https-upstream scenario.
    #[serde(default)]
    pub(crate) tls: bool,
    /// Run the two-host (`[cluster]`) scenario.
    #[serde(default)]
    pub(crate) cluster: bool,
    #[serde(default)]
    pub(crate) failover_kills: usize,
    #[serde(default)]
    pub(crate) failover_sessions: usize,
}

/// The three targets, in the order every scenario runs them.
pub(crate) const TARGETS: [&str; 3] = ["direct", "nginx", "mcpgw"];

/// One target's runs of one scenario.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct TargetRuns {
    pub(crate) target: String,
    pub(crate) runs: Vec<LoadReport>,
    pub(crate) median_throughput: f64,
    pub(crate) median_p50_ms: f64,
    pub(crate) median_p90_ms: f64,
    pub(crate) median_p99_ms: f64,
    /// CPU time per request (user + system, µs) of the proxy's processes (nginx master
    /// and workers, mcpgw supervisor and workers; 0 for direct), of the upstream, and
    /// of the load generator, over the measured part.
    pub(crate) median_proxy_cpu_us: f64,
    pub(crate) median_upstream_cpu_us: f64,
    pub(crate) median_loadgen_cpu_us: f64,
    pub(crate) errors: u64,
}

impl TargetRuns {
    pub(crate) fn new(target: &str) -> Self {
        Self {
            target: target.to_owned(),
            runs: Vec::new(),
            median_throughput: 0.0,
            median_p50_ms: 0.0,
            median_p90_ms: 0.0,
            median_p99_ms: 0.0,
            median_proxy_cpu_us: 0.0,
            median_upstream_cpu_us: 0.0,
            median_loadgen_cpu_us: 0.0,
            errors: 0,
        }
    }

    pub(crate) fn summarize(&mut self, ticks_per_second: u64) {
        let per_request = |r: &LoadReport, i: usize| {
            let n = (r.requests + r.errors.total).max(1) as f64;
            r.probe_delta.get(i).copied().unwrap_or(0) as f64 * 1e6
                / ticks_per_second.max(1) as f64
                / n
        };
        self.median_proxy_cpu_us = median(self.runs.iter().map(|r| per_request(r, 0)));
        self.median_upstream_cpu_us = median(self.runs.iter().map(|r| per_request(r, 1)));
        self.median_loadgen_cpu_us = median(self.runs.iter().map(|r| per_request(r, 2)));
        self.median_throughput = median(self.runs.iter().map(|r| r.throughput));
        self.median_p50_ms = median(self.runs.iter().map(|r| r.latency_ms.p50));
        self.median_p90_ms = median(self.runs.iter().map(|r| r.latency_ms.p90));
        self.median_p99_ms = median(self.runs.iter().map(|r| r.latency_ms.p99));
        self.errors = self.runs.iter().map(|r| r.errors.total).sum();
    }
}

/// One scenario over the three targets; `targets` follows [`TARGETS`] (or, for the
/// stateless-client scenario, [`crate::stateless::TARGETS`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Scenario {
    pub(crate) name: String,
    pub(crate) concurrency: usize,
    pub(crate) new_connection: bool,
    pub(crate) targets: Vec<TargetRuns>,
}

impl Scenario {
    pub(crate) fn target(&self, name: &str) -> Option<&TargetRuns> {
        self.targets.iter().find(|t| t.target == name)
    }
}

/// RSS of idle sessions on a fresh mcpgw.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Idle {
    pub(crate) sessions: usize,
    pub(crate) rss_before_kib: u64,
    pub(crate) rss_after_kib: u64,
    pub(crate) kib_per_session: f64,
    /// (pid, KiB) of the supervisor and its workers, before and after.
    pub(crate) processes_before: Vec<(u32, u64)>,
    pub(crate) processes_after: Vec<(u32, u64)>,
    pub(crate) setup_secs: f64,
}

/// Keep-alive load on mcpgw while it is sent SIGHUPs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Reload {
    pub(crate) signals: u32,
    /// `mcpgw_reloads_total{result="ok"}` and `{result="failed"}` gained during the run.
    pub(crate) reloads_applied: u64,
    pub(crate) reloads_refused: u64,
    pub(crate) run: LoadReport,
}

/// Everything a comparison measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Comparison {
    pub(crate) machine: report::Machine,
    /// Clock ticks per second of the CPU times read from `/proc`.
    pub(crate) ticks_per_second: u64,
    pub(crate) settings: Settings,
    pub(crate) scenarios: Vec<Scenario>,
    /// The stateless-client scenario, one entry per concurrency.
    #[serde(default)]
    pub(crate) stateless: Vec<Scenario>,
    /// The modern-upstream scenario, one entry per concurrency.
    #[serde(default)]
    pub(crate) modern: Vec<Scenario>,
    /// The https-upstream scenario.
    #[serde(default)]
    pub(crate) tls: Option<Scenario>,
    pub(crate) idle: Option<Idle>,
    pub(crate) reload: Option<Reload>,
    #[serde(default)]
    pub(crate) failover: Option<crate::failover::Failover>,
    /// The two-host (`[cluster]`) scenario.
    #[serde(default)]
    pub(crate) two_hosts: Option<crate::cluster::TwoHosts>,
}

/// The median of some values (0 for none).
pub(crate) fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// Runs the comparison and writes the results.
pub(crate) async fn run(settings: Settings) -> Result<Comparison> {
    let mut dir = TempDir::new("mcpgw-bench")?;
    eprintln!("# working directory {}", dir.path().display());
    let result = run_in(&settings, dir.path()).await;
    if let Err(e) = &result {
        dir.keep();
        eprintln!(
            "# comparison failed ({e:#}); logs kept in {}",
            dir.path().display()
        );
    }
    let comparison = result?;
    report::write(&comparison, &settings)?;
    Ok(comparison)
}

async fn run_in(settings: &Settings, dir: &Path) -> Result<Comparison> {
    let machine = report::Machine::probe(&settings.nginx);
    eprintln!("# {}", machine.one_line());
    let (counter, upstream) = procs::start_counter(&settings.bin_dir, dir).await?;
    eprintln!("# counter-server on {upstream} (pid {})", counter.pid());
    let (nginx, nginx_addr) =
        procs::start_nginx(&settings.nginx, dir, "nginx", settings.workers, upstream).await?;
    eprintln!("# nginx on {nginx_addr} (pid {})", nginx.pid());
    let procs::Gateway {
        proc: gateway,
        addr: gateway_addr,
        admin: gateway_admin,
    } = procs::start_mcpgw(&settings.bin_dir, dir, "mcpgw", settings.workers, upstream).await?;
    eprintln!("# mcpgw on {gateway_addr} (pid {})", gateway.pid());
    let procs = [&counter, &nginx, &gateway];
    let ticks_per_second = procs::clock_ticks_per_second();
    let probes: Vec<Probe> = [None, Some(nginx.pid()), Some(gateway.pid())]
        .into_iter()
        .map(|proxy| cpu_probe(proxy, counter.pid()))
        .collect();

    let endpoints = [
        endpoint(upstream)?,
        endpoint(nginx_addr)?,
        endpoint(gateway_addr)?,
    ];

    // Warm-up: every target once, unrecorded; a target that fails it stops the run.
    for (target, ep) in TARGETS.iter().zip(&endpoints) {
        let warm = spec(
            settings,
            ep,
            16,
            false,
            Duration::from_secs(1),
            None,
            Era::Stateful,
        );
        warm_up(warm, target, &procs).await?;
    }

    let mut scenarios: Vec<(String, usize, bool)> = settings
        .concurrency
        .iter()
        .map(|&c| (format!("keep-alive C={c}"), c, false))
        .collect();
    scenarios.push((
        format!(
            "new connection per request C={}",
            settings.new_connection_concurrency
        ),
        settings.new_connection_concurrency,
        true,
    ));
    let duration = Duration::from_secs_f64(settings.duration_secs);
    let mut results = Vec::with_capacity(scenarios.len());
    for (name, c, new_connection) in scenarios {
        let spec_of = |i: usize| {
            spec(
                settings,
                &endpoints[i],
                c,
                new_connection,
                duration,
                Some(probes[i].clone()),
                Era::Stateful,
            )
        };
        let at = Interleaved {
            name: &name,
            concurrency: c,
            new_connection,
            targets: &TARGETS,
        };
        results.push(at.run(settings, spec_of, ticks_per_second, &procs).await?);
    }

    let stateless = if settings.stateless_concurrency.is_empty() {
        Vec::new()
    } else {
        crate::stateless::run(
            settings,
            [&endpoints[0], &endpoints[2]],
            [&probes[0], &probes[2]],
            ticks_per_second,
            &procs,
        )
        .await?
    };

    let modern = if settings.modern_concurrency.is_empty() {
        Vec::new()
    } else {
        crate::modern::run(settings, dir, ticks_per_second, &procs).await?
    };

    let tls = if settings.tls {
        Some(
            tls_scenario(
                settings,
                dir,
                (&endpoints[2], &probes[2]),
                ticks_per_second,
                &procs,
            )
            .await?,
        )
    } else {
        None
    };

    let two_hosts = if settings.cluster {
        let r = crate::cluster::run(settings, dir, upstream, &counter, ticks_per_second).await;
        Some(r.context("two-host scenario")?)
    } else {
        None
    };

    let reload = if settings.reload {
        Some(reload_scenario(settings, &endpoints[2], &gateway, gateway_admin, &procs).await?)
    } else {
        None
    };

    let failover = if settings.failover_kills > 0 {
        let f = crate::failover::run(
            &endpoints[2],
            &gateway,
            settings.failover_sessions,
            settings.failover_kills,
        )
        .await;
        Some(with_logs(f, &procs).context("failover scenario")?)
    } else {
        None
    };

    // The others hold no sessions: the idle scenario is mcpgw's alone, on a fresh one.
    drop(nginx);
    drop(gateway);
    let idle = if settings.idle_sessions > 0 {
        Some(idle_scenario(settings, dir, upstream, &counter).await?)
    } else {
        None
    };
    drop(counter);

    Ok(Comparison {
        machine,
        ticks_per_second,
        settings: settings.clone(),
        scenarios: results,
        stateless,
        modern,
        tls,
        idle,
        reload,
        failover,
        two_hosts,
    })
}

/// The https-upstream scenario: a counter server that also serves https, and a second
/// mcpgw that reaches it over https, measured beside the first mcpgw.
async fn tls_scenario(
    settings: &Settings,
    dir: &Path,
    plain: (&Endpoint, &Probe),
    ticks_per_second: u64,
    procs: &[&Proc],
) -> Result<Scenario> {
    let (ca, cert, key) = crate::tls::make_pki(dir)?;
    let (counter, https) = procs::start_tls_counter(&settings.bin_dir, dir, &cert, &key).await?;
    let keys = format!(
        "url = \"https://{https}/mcp\"\nca_file = {:?}\n",
        ca.display().to_string()
    );
    let procs::Gateway {
        proc: gateway,
        addr,
        ..
    } = procs::start_mcpgw_with(&settings.bin_dir, dir, "mcpgw-tls", settings.workers, &keys)
        .await?;
    eprintln!(
        "# mcpgw with an https upstream on {addr} (pid {})",
        gateway.pid()
    );
    let probe = cpu_probe(Some(gateway.pid()), counter.pid());
    let ep = endpoint(addr)?;
    let mut all: Vec<&Proc> = procs.to_vec();
    all.extend([&counter, &gateway]);
    crate::tls::run(
        settings,
        [plain.0, &ep],
        [plain.1, &probe],
        ticks_per_second,
        &all,
    )
    .await
}

fn endpoint(addr: SocketAddr) -> Result<Endpoint> {
    Endpoint::parse(&format!("http://{addr}/mcp"), &[])
}

/// An unrecorded run of `target` before it is measured: it fills pools and caches, and
/// a target that fails it stops the comparison.
pub(crate) async fn warm_up(spec: LoadSpec, target: &str, procs: &[&Proc]) -> Result<()> {
    let r =
        with_logs(load::run(spec).await, procs).with_context(|| format!("warm-up of {target}"))?;
    if r.errors.total > 0 {
        bail!(
            "warm-up of {target}: {} errors, first: {}",
            r.errors.total,
            r.errors.first.unwrap_or_default()
        );
    }
    eprintln!("# warm-up {target}: {:.0} req/s", r.throughput);
    Ok(())
}

/// A scenario whose targets run back to back in every repetition (a b c a b c …), so
/// that slow drifts in the machine's background load fall on all of them alike.
pub(crate) struct Interleaved<'a> {
    pub(crate) name: &'a str,
    pub(crate) concurrency: usize,
    pub(crate) new_connection: bool,
    pub(crate) targets: &'a [&'a str],
}

impl Interleaved<'_> {
    /// Runs it: `spec_of(i)` is the load of target `i` for one run.
    pub(crate) async fn run(
        &self,
        settings: &Settings,
        spec_of: impl Fn(usize) -> LoadSpec,
        ticks_per_second: u64,
        procs: &[&Proc],
    ) -> Result<Scenario> {
        let mut scenario = Scenario {
            name: self.name.to_owned(),
            concurrency: self.concurrency,
            new_connection: self.new_connection,
            targets: self.targets.iter().map(|t| TargetRuns::new(t)).collect(),
        };
        for rep in 0..settings.reps {
            for (i, target) in self.targets.iter().enumerate() {
                let r =
                    measured_run(spec_of(i), self.name, rep, settings.reps, target, procs).await?;
                scenario.targets[i].runs.push(r);
            }
        }
        for t in &mut scenario.targets {
            t.summarize(ticks_per_second);
        }
        Ok(scenario)
    }
}

/// The CPU ticks a run reads before and after: of the proxy's process tree (none for
/// a direct target), of the upstream's, and of this load generator.
pub(crate) fn cpu_probe(proxy: Option<u32>, upstream: u32) -> Probe {
    let own = std::process::id();
    Rc::new(move || {
        vec![
            proxy.map_or(0, procs::tree_cpu_ticks),
            procs::tree_cpu_ticks(upstream),
            procs::cpu_ticks(own),
        ]
    })
}

/// One measured run of a scenario's `target`, logged as it ends.
pub(crate) async fn measured_run(
    spec: LoadSpec,
    scenario: &str,
    rep: usize,
    reps: usize,
    target: &str,
    procs: &[&Proc],
) -> Result<LoadReport> {
    let r =
        with_logs(load::run(spec).await, procs).with_context(|| format!("{scenario}, {target}"))?;
    eprintln!(
        "[{scenario}] rep {}/{reps} {target:>6}: {:>8.0} req/s  p50 {:.3} ms  p99 {:.3} ms  errors {}{}",
        rep + 1,
        r.throughput,
        r.latency_ms.p50,
        r.latency_ms.p99,
        r.errors.total,
        r.errors
            .first
            .as_deref()
            .map(|f| format!(" (first: {f})"))
            .unwrap_or_default(),
    );
    Ok(r)
}

pub(crate) fn spec(
    settings: &Settings,
    ep: &Endpoint,
    concurrency: usize,
    new_connection: bool,
    duration: Duration,
    probe: Option<Probe>,
    era: Era,
) -> LoadSpec {
    LoadSpec {
        endpoint: ep.clone(),
        sessions: settings.sessions,
        concurrency,
        stop: Stop::Duration(duration),
        warmup: Duration::from_secs_f64(settings.warmup_secs),
        max_time: duration,
        call: CallTemplate::new("increment", &json!({}), era),
        new_connection,
        protocol_version: mcp::DEFAULT_PROTOCOL_VERSION.to_owned(),
        setup_calls: 1,
        delete_sessions: true,
        probe,
        alternate: None,
    }
}

/// On failure, appends the tails of the processes' logs to the error.
pub(crate) fn with_logs<T>(result: Result<T>, procs: &[&Proc]) -> Result<T> {
    result.map_err(|e| {
        let mut text = String::new();
        for p in procs {
            text.push_str(&format!(
                "\n--- {} (last lines) ---\n{}",
                p.log.display(),
                p.log_tail(15)
            ));
        }
        e.context(text)
    })
}

async fn idle_scenario(
    settings: &Settings,
    dir: &Path,
    upstream: SocketAddr,
    counter: &Proc,
) -> Result<Idle> {
    let procs::Gateway {
        proc: gateway,
        addr,
        ..
    } = procs::start_mcpgw(
        &settings.bin_dir,
        dir,
        "mcpgw-idle",
        settings.workers,
        upstream,
    )
    .await?;
    eprintln!(
        "# idle sessions: fresh mcpgw on {addr} (pid {})",
        gateway.pid()
    );
    let root = gateway.pid();
    // Let the workers finish starting up before the baseline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (before, processes_before) = procs::tree_rss_kib(root)?;
    let ep = endpoint(addr)?;
    let spec = LoadSpec {
        endpoint: ep,
        sessions: settings.idle_sessions,
        concurrency: settings.idle_concurrency,
        stop: Stop::Requests(0),
        warmup: Duration::ZERO,
        max_time: Duration::from_secs(1),
        call: CallTemplate::new("increment", &json!({}), Era::Stateful),
        new_connection: false,
        protocol_version: mcp::DEFAULT_PROTOCOL_VERSION.to_owned(),
        setup_calls: 1,
        delete_sessions: false,
        probe: None,
        alternate: None,
    };
    let started = Instant::now();
    let r = with_logs(load::run(spec).await, &[counter, &gateway])
        .context("opening the idle sessions")?;
    let setup_secs = started.elapsed().as_secs_f64();
    // The connections are closed; the sessions stay. Let the workers settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (after, processes_after) = procs::tree_rss_kib(root)?;
    let kib_per_session = (after as f64 - before as f64) / settings.idle_sessions as f64;
    eprintln!(
        "# idle sessions: {} sessions opened in {:.1} s; RSS {before} KiB -> {after} KiB = {kib_per_session:.2} KiB/session",
        settings.idle_sessions, r.setup_secs
    );
    drop(gateway);
    Ok(Idle {
        sessions: settings.idle_sessions,
        rss_before_kib: before,
        rss_after_kib: after,
        kib_per_session,
        processes_before,
        processes_after,
        setup_secs,
    })
}

async fn reload_scenario(
    settings: &Settings,
    ep: &Endpoint,
    gateway: &Proc,
    admin: SocketAddr,
    procs: &[&Proc],
) -> Result<Reload> {
    let signals = settings.reload_signals;
    let interval = Duration::from_millis(250);
    // The SIGHUPs start 1 s into the load (setup takes a few ms) and end 2 s before it.
    let duration = interval * (signals + 12);
    let before = reload_counts(admin).await?;
    let load = load::run(spec(settings, ep, 16, false, duration, None, Era::Stateful));
    let warmup = Duration::from_secs_f64(settings.warmup_secs);
    let hup = async {
        tokio::time::sleep(warmup + Duration::from_secs(1)).await;
        for _ in 0..signals {
            gateway.signal(Signal::SIGHUP)?;
            tokio::time::sleep(interval).await;
        }
        anyhow::Ok(())
    };
    let (r, sent) = tokio::join!(load, hup);
    sent?;
    let r = with_logs(r, procs).context("reload scenario")?;
    let after = reload_counts(admin).await?;
    let (ok, failed) = (after.0 - before.0, after.1 - before.1);
    eprintln!(
        "# reload: {signals} SIGHUPs, {ok} reloads applied, {failed} refused; {} requests, {} errors",
        r.requests, r.errors.total
    );
    Ok(Reload {
        signals,
        reloads_applied: ok,
        reloads_refused: failed,
        run: r,
    })
}

/// `mcpgw_reloads_total` (ok, failed) from the admin listener's `/metrics`.
async fn reload_counts(admin: SocketAddr) -> Result<(u64, u64)> {
    let mut conn = Conn::connect(admin).await?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    let head = tokio::time::timeout(Duration::from_secs(10), conn.exchange(request.as_bytes()))
        .await
        .context("GET /metrics timed out")??;
    if head.status != 200 {
        bail!("GET /metrics answered HTTP {}", head.status);
    }
    let text = String::from_utf8_lossy(conn.body());
    let series = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    };
    Ok((
        series("mcpgw_reloads_total{result=\"ok\"}"),
        series("mcpgw_reloads_total{result=\"failed\"}"),
    ))
}
