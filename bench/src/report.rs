//! What a comparison writes: the machine it ran on, the results table with ratios, the
//! stateless-client table, the targets met or missed, the raw runs as JSON and a hand-written SVG plot of throughput
//! and latency by concurrency. Optionally it replaces the results section of
//! `BENCHMARKS.md` (between [`BEGIN`] and [`END`]).

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use crate::compare::{Comparison, Scenario, Settings, TARGETS, median};
use crate::load::LoadReport;

/// Markers of the generated section in a document.
pub(crate) const BEGIN: &str = "<!-- mcpgw-bench:results:begin -->";
pub(crate) const END: &str = "<!-- mcpgw-bench:results:end -->";

/// Plot colours for direct, nginx, mcpgw.
const COLOURS: [&str; 3] = ["#6b6b6b", "#1f77b4", "#d62728"];

/// The machine a comparison ran on.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Machine {
    pub(crate) nproc: usize,
    pub(crate) cpu: String,
    pub(crate) kernel: String,
    pub(crate) rustc: String,
    pub(crate) nginx: String,
    pub(crate) commit: String,
    pub(crate) date: String,
}

impl Machine {
    pub(crate) fn probe(nginx: &Path) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".to_owned(), |(_, v)| v.trim().to_owned());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned());
        let rustc = command_output(
            std::env::var("RUSTC").as_deref().unwrap_or("rustc"),
            &["--version"],
        );
        // `nginx -v` prints to stderr.
        let nginx = Command::new(nginx)
            .arg("-v")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        let mut commit = command_output("git", &["rev-parse", "--short", "HEAD"]);
        if !command_output("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty() {
            commit.push_str(" (with uncommitted changes)");
        }
        Self {
            nproc: std::thread::available_parallelism().map_or(0, usize::from),
            cpu,
            kernel,
            rustc,
            nginx,
            commit,
            date: command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        }
    }

    pub(crate) fn one_line(&self) -> String {
        format!(
            "{} cores, {}, Linux {}, {}, {}",
            self.nproc, self.cpu, self.kernel, self.rustc, self.nginx
        )
    }
}

fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(String::new, |o| {
            String::from_utf8_lossy(&o.stdout).trim().to_owned()
        })
}

/// Writes `compare.json`, `compare.md` and `compare.svg` into the results directory and
/// updates the document, if one was named.
pub(crate) fn write(c: &Comparison, settings: &Settings) -> Result<()> {
    let dir = &settings.results;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = serde_json::to_string_pretty(c)?;
    std::fs::write(dir.join("compare.json"), json + "\n")?;
    std::fs::write(dir.join("compare.svg"), svg(c))?;
    let md = markdown(c);
    std::fs::write(dir.join("compare.md"), &md)?;
    eprintln!("# wrote {}/compare.{{json,md,svg}}", dir.display());
    if let Some(doc) = &settings.update_doc {
        update_doc(doc, &md)?;
        eprintln!("# updated {}", doc.display());
    }
    Ok(())
}

/// Replaces the text between the markers in `doc` with `section`.
fn update_doc(doc: &Path, section: &str) -> Result<()> {
    let text =
        std::fs::read_to_string(doc).with_context(|| format!("reading {}", doc.display()))?;
    let (Some(b), Some(e)) = (text.find(BEGIN), text.find(END)) else {
        bail!("{} has no {BEGIN} … {END} section", doc.display());
    };
    if e < b {
        bail!("{}: {END} comes before {BEGIN}", doc.display());
    }
    let updated = format!("{}{BEGIN}\n{section}{}", &text[..b], &text[e..]);
    std::fs::write(doc, updated)?;
    Ok(())
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() {
        format!("{:.2}", a / b)
    } else {
        "–".to_owned()
    }
}

fn thousands(v: f64) -> String {
    let n = v.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// A target's value in a scenario, by target index.
fn values(s: &Scenario, f: impl Fn(&crate::compare::TargetRuns) -> f64) -> [f64; 3] {
    values_of(s, &TARGETS, f)
}

/// The values of the targets `names` in a scenario, in that order.
fn values_of(
    s: &Scenario,
    names: &[&str; 3],
    f: impl Fn(&crate::compare::TargetRuns) -> f64,
) -> [f64; 3] {
    let mut v = [0.0; 3];
    for (i, name) in names.iter().enumerate() {
        v[i] = s.target(name).map_or(0.0, &f);
    }
    v
}

/// The ratios c / a, c / b, b / a of a per-run metric, each the median over the
/// repetitions of the ratio within one repetition (the three targets of a repetition
/// run back to back, so slow drifts in the machine's background load cancel out).
fn paired_ratios(s: &Scenario, f: impl Fn(&LoadReport) -> f64) -> [String; 3] {
    [
        paired_ratio(s, 2, 0, &f),
        paired_ratio(s, 2, 1, &f),
        paired_ratio(s, 1, 0, &f),
    ]
}

/// Target `num` over target `den` (indices) of a per-run metric: the median over the
/// repetitions of the ratio within one repetition.
fn paired_ratio(s: &Scenario, num: usize, den: usize, f: impl Fn(&LoadReport) -> f64) -> String {
    let (Some(n), Some(d)) = (s.targets.get(num), s.targets.get(den)) else {
        return "–".to_owned();
    };
    let ratios: Vec<f64> = n
        .runs
        .iter()
        .zip(&d.runs)
        .filter(|(_, d)| f(d) > 0.0)
        .map(|(n, d)| f(n) / f(d))
        .collect();
    if ratios.is_empty() {
        "–".to_owned()
    } else {
        format!("{:.2}", median(ratios.into_iter()))
    }
}

/// The median over repetitions of `f(target) - f(direct)`, for targets 1 and 2 (nginx
/// and mcpgw; in the stateless-client scenario, mcpgw with a stateful and a stateless
/// client).
fn paired_added(s: &Scenario, f: impl Fn(&LoadReport) -> f64) -> [f64; 2] {
    let added = |i: usize| {
        median(
            s.targets[i]
                .runs
                .iter()
                .zip(&s.targets[0].runs)
                .map(|(t, d)| f(t) - f(d)),
        )
    };
    [added(1), added(2)]
}

/// The latency each hop adds over direct at C = 1: ((nginx, mcpgw) p50, (nginx, mcpgw) p99).
fn added_latency(c: &Comparison) -> Option<([f64; 2], [f64; 2])> {
    let s = c
        .scenarios
        .iter()
        .find(|s| s.concurrency == 1 && !s.new_connection && s.targets.len() == 3)?;
    Some((
        paired_added(s, |r| r.latency_ms.p50),
        paired_added(s, |r| r.latency_ms.p99),
    ))
}

/// The latency a stateful and a stateless client's call through mcpgw add over direct at
/// C = 1: ((stateful, stateless) p50, (stateful, stateless) p99).
fn stateless_added_latency(c: &Comparison) -> Option<([f64; 2], [f64; 2])> {
    let s = c
        .stateless
        .iter()
        .find(|s| s.concurrency == 1 && s.targets.len() == 3)?;
    Some((
        paired_added(s, |r| r.latency_ms.p50),
        paired_added(s, |r| r.latency_ms.p99),
    ))
}

/// The median over repetitions of mcpgw's throughput / nginx's in the same repetition.
fn paired_throughput_ratio(s: &Scenario) -> f64 {
    let (Some(n), Some(g)) = (s.target("nginx"), s.target("mcpgw")) else {
        return 0.0;
    };
    median(
        g.runs
            .iter()
            .zip(&n.runs)
            .filter(|(_, n)| n.throughput > 0.0)
            .map(|(g, n)| g.throughput / n.throughput),
    )
}

/// One target check: what, the measured value, the bound, met.
struct Check {
    what: String,
    measured: f64,
    bound: String,
    met: bool,
}

fn checks(c: &Comparison) -> Vec<Check> {
    let mut out = Vec::new();
    for s in &c.scenarios {
        let (what, min) = match (s.new_connection, s.concurrency) {
            (false, 16 | 64) => (format!("{} throughput, mcpgw / nginx", s.name), 0.85),
            (true, _) => (format!("{} throughput, mcpgw / nginx", s.name), 0.80),
            _ => continue,
        };
        let measured = paired_throughput_ratio(s);
        out.push(Check {
            what,
            measured,
            bound: format!("≥ {min:.2}"),
            met: measured >= min,
        });
    }
    for s in c.modern.iter().filter(|s| s.concurrency > 1) {
        let measured = paired_throughput_ratio(s);
        out.push(Check {
            what: format!("{} throughput, mcpgw / nginx", s.name),
            measured,
            bound: "≥ 0.85".to_owned(),
            met: measured >= 0.85,
        });
    }
    if let Some((p50, _)) = added_latency(c) {
        let measured = if p50[0] > 0.0 {
            p50[1] / p50[0]
        } else {
            f64::INFINITY
        };
        out.push(Check {
            what: "added p50 latency at C=1, mcpgw / nginx".to_owned(),
            measured,
            bound: "≤ 1.20".to_owned(),
            met: measured <= 1.2,
        });
    }
    if let Some((p50, _)) = stateless_added_latency(c) {
        let measured = if p50[0] > 0.0 {
            p50[1] / p50[0]
        } else {
            f64::INFINITY
        };
        out.push(Check {
            what: "added p50 latency at C=1, mcpgw: stateless client / stateful client".to_owned(),
            measured,
            bound: "≤ 1.30".to_owned(),
            met: measured <= 1.3,
        });
    }
    if let Some(r) = &c.reload {
        out.push(Check {
            what: format!(
                "failed requests during {} SIGHUPs (reloads applied: {})",
                r.signals, r.reloads_applied
            ),
            measured: r.run.errors.total as f64,
            bound: "0".to_owned(),
            met: r.run.errors.total == 0 && r.reloads_applied == u64::from(r.signals),
        });
    }
    if let Some(f) = &c.failover {
        let p99 = f.recovery_quantile(0.99);
        out.push(Check {
            what: format!(
                "failover: SIGKILL → first success, p99 over the dead workers' sessions ({} kills)",
                f.kills
            ),
            measured: p99,
            bound: "≤ 250 ms".to_owned(),
            met: !f.recovery_ms.is_empty()
                && p99 <= 250.0
                && f.lost_sessions == 0
                && f.bystander_failures == 0,
        });
    }
    if let Some(idle) = &c.idle {
        out.push(Check {
            what: format!("RSS per idle session ({} sessions), KiB", idle.sessions),
            measured: idle.kib_per_session,
            bound: "≤ 16".to_owned(),
            met: idle.kib_per_session <= 16.0,
        });
    }
    out
}

/// The generated results section.
pub(crate) fn markdown(c: &Comparison) -> String {
    let m = &c.machine;
    let st = &c.settings;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "Run {} at commit {}: {} cores ({}), Linux {}, {}, {}.\n",
        m.date, m.commit, m.nproc, m.cpu, m.kernel, m.rustc, m.nginx
    );
    let _ = writeln!(
        o,
        "Settings: {} workers (mcpgw) = {} worker processes (nginx); {} sessions; each run {} s after {} s warm-up; {} runs per target and scenario, interleaved direct, nginx, mcpgw. Values are medians over the runs; each ratio is the median over repetitions of the ratio within one repetition; added latency is the median over repetitions of (target − direct) within one repetition.\n",
        st.workers, st.workers, st.sessions, st.duration_secs, st.warmup_secs, st.reps
    );
    let _ = writeln!(
        o,
        "| scenario | metric | (a) direct | (b) nginx | (c) mcpgw | c / a | c / b | b / a |"
    );
    let _ = writeln!(o, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    three_target_rows(&c.scenarios, &mut o);
    if let Some((p50, p99)) = added_latency(c) {
        for (metric, v) in [("added p50 ms", p50), ("added p99 ms", p99)] {
            let _ = writeln!(
                o,
                "| latency added over direct, keep-alive C=1 | {metric} | – | {:+.3} | {:+.3} | – | {} | – |",
                v[0],
                v[1],
                ratio(v[1], v[0]),
            );
        }
    }
    totals_row(&c.scenarios, "all scenarios", &mut o);
    if let Some(idle) = &c.idle {
        let _ = writeln!(
            o,
            "| {} idle sessions, one upstream session each (mcpgw only) | RSS KiB / session | | | {:.2} | | | |",
            thousands(idle.sessions as f64),
            idle.kib_per_session
        );
    }
    o.push('\n');
    let _ = writeln!(
        o,
        "CPU time per request over the measured part (user + system, µs, from `/proc/PID/stat`; medians):\n"
    );
    let _ = writeln!(
        o,
        "| scenario | proxy: (b) nginx | proxy: (c) mcpgw | c / b | upstream under a / b / c | load generator under a / b / c |"
    );
    let _ = writeln!(o, "| --- | ---: | ---: | ---: | ---: | ---: |");
    cpu_rows(&c.scenarios, &mut o);
    o.push('\n');
    stateless_markdown(c, &mut o);
    modern_markdown(c, &mut o);
    tls_markdown(c, &mut o);
    two_hosts_markdown(c, &mut o);
    if let Some(idle) = &c.idle {
        let _ = writeln!(
            o,
            "Idle sessions: RSS of the supervisor and its {} workers {} KiB before, {} KiB after opening {} sessions ({:.1} s); (after − before) / sessions = {:.2} KiB.\n",
            idle.processes_after.len().saturating_sub(1),
            thousands(idle.rss_before_kib as f64),
            thousands(idle.rss_after_kib as f64),
            thousands(idle.sessions as f64),
            idle.setup_secs,
            idle.kib_per_session
        );
    }
    if let Some(r) = &c.reload {
        let _ = writeln!(
            o,
            "Reload (mcpgw only): {} SIGHUPs 250 ms apart under keep-alive load at C=16 ({} reloads applied, {} refused, per `mcpgw_reloads_total`): {} failed of {} requests, {:.0} req/s, p99 {:.3} ms, max {:.3} ms.{}\n",
            r.signals,
            r.reloads_applied,
            r.reloads_refused,
            r.run.errors.total,
            r.run.requests + r.run.errors.total,
            r.run.throughput,
            r.run.latency_ms.p99,
            r.run.latency_ms.max,
            r.run
                .errors
                .first
                .as_deref()
                .map(|f| format!(" First failure: {f}"))
                .unwrap_or_default()
        );
    }
    if let Some(f) = &c.failover {
        let _ = writeln!(
            o,
            "Failover (mcpgw only): {} times, {} sessions under keep-alive load (one connection each), SIGKILL of one worker: {} of its sessions; kill → first success p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {} of them never served again; {} failed requests of other workers' sessions, {} of the killed workers' (in flight or on their dead connection) among {} requests.\n",
            f.kills,
            f.sessions_per_kill,
            f.recovery_ms.len() + f.lost_sessions,
            f.recovery_quantile(0.5),
            f.recovery_quantile(0.99),
            f.recovery_quantile(1.0),
            f.lost_sessions,
            f.bystander_failures,
            f.victim_failures,
            f.requests,
        );
    }
    let _ = writeln!(o, "Targets:\n");
    let _ = writeln!(o, "| target | measured | bound | |");
    let _ = writeln!(o, "| --- | ---: | ---: | --- |");
    for ch in checks(c) {
        let _ = writeln!(
            o,
            "| {} | {:.2} | {} | {} |",
            ch.what,
            ch.measured,
            ch.bound,
            if ch.met { "met" } else { "**missed**" }
        );
    }
    o.push_str("\n![throughput and latency by concurrency](bench/results/compare.svg)\n\n");
    o
}

/// Throughput, p50 and p99 rows of scenarios whose targets are direct, nginx, mcpgw.
fn three_target_rows(scenarios: &[Scenario], o: &mut String) {
    for s in scenarios {
        let v = values(s, |t| t.median_throughput);
        let r = paired_ratios(s, |r| r.throughput);
        let _ = writeln!(
            o,
            "| {} | req/s | {} | {} | {} | {} | {} | {} |",
            s.name,
            thousands(v[0]),
            thousands(v[1]),
            thousands(v[2]),
            r[0],
            r[1],
            r[2],
        );
    }
    for s in scenarios {
        for (metric, f, g) in [
            (
                "p50 ms",
                (|t: &crate::compare::TargetRuns| t.median_p50_ms) as fn(&_) -> f64,
                (|r: &LoadReport| r.latency_ms.p50) as fn(&_) -> f64,
            ),
            ("p99 ms", |t| t.median_p99_ms, |r| r.latency_ms.p99),
        ] {
            let v = values(s, f);
            let r = paired_ratios(s, g);
            let _ = writeln!(
                o,
                "| {} | {metric} | {:.3} | {:.3} | {:.3} | {} | {} | {} |",
                s.name, v[0], v[1], v[2], r[0], r[1], r[2],
            );
        }
    }
}

/// The failed and successful requests of each of direct, nginx, mcpgw over `scenarios`.
fn totals_row(scenarios: &[Scenario], label: &str, o: &mut String) {
    let sum = |t: &str, f: &dyn Fn(&crate::compare::TargetRuns) -> u64| -> u64 {
        scenarios.iter().filter_map(|s| s.target(t)).map(f).sum()
    };
    let cell = |t: &str| {
        format!(
            "{} / {}",
            sum(t, &|r| r.errors),
            thousands(sum(t, &|r| r.runs.iter().map(|x| x.requests).sum()) as f64)
        )
    };
    let _ = writeln!(
        o,
        "| {label} | failed / successful requests | {} | {} | {} | | | |",
        cell(TARGETS[0]),
        cell(TARGETS[1]),
        cell(TARGETS[2]),
    );
}

/// CPU per request rows (proxy, upstream, load generator) of direct/nginx/mcpgw scenarios.
fn cpu_rows(scenarios: &[Scenario], o: &mut String) {
    for s in scenarios {
        let proxy = values(s, |t| t.median_proxy_cpu_us);
        let up = values(s, |t| t.median_upstream_cpu_us);
        let lg = values(s, |t| t.median_loadgen_cpu_us);
        let _ = writeln!(
            o,
            "| {} | {:.1} | {:.1} | {} | {:.1} / {:.1} / {:.1} | {:.1} / {:.1} / {:.1} |",
            s.name,
            proxy[1],
            proxy[2],
            ratio(proxy[2], proxy[1]),
            up[0],
            up[1],
            up[2],
            lg[0],
            lg[1],
            lg[2],
        );
    }
}

/// The modern-upstream table (a 2026-07-28 client and upstream): direct, nginx, mcpgw;
/// nothing when the scenario did not run.
fn modern_markdown(c: &Comparison, o: &mut String) {
    if c.modern.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "Modern upstream (2026-07-28 on both sides: a stateless client calling `add` on rmcp's `modern-server`, no sessions anywhere), interleaved per repetition: (a) the server directly, (b) nginx, (c) mcpgw, which checks each request's headers against its body and `_meta` and passes it through.\n"
    );
    let _ = writeln!(
        o,
        "| scenario | metric | (a) direct | (b) nginx | (c) mcpgw | c / a | c / b | b / a |"
    );
    let _ = writeln!(o, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    three_target_rows(&c.modern, o);
    totals_row(&c.modern, "modern upstream", o);
    let _ = writeln!(
        o,
        "\n| scenario | proxy: (b) nginx | proxy: (c) mcpgw | c / b | upstream under a / b / c | load generator under a / b / c |"
    );
    let _ = writeln!(o, "| --- | ---: | ---: | ---: | ---: | ---: |");
    cpu_rows(&c.modern, o);
    o.push('\n');
}

/// The https-upstream table: mcpgw with the plain upstream (c) and with the same
/// upstream over https (t); nothing when the scenario did not run.
fn tls_markdown(c: &Comparison, o: &mut String) {
    let Some(s) = &c.tls else {
        return;
    };
    let (Some(plain), Some(tls)) = (s.targets.first(), s.targets.get(1)) else {
        return;
    };
    let _ = writeln!(
        o,
        "An https upstream: (c) mcpgw in front of the counter server over http, (t) a second mcpgw in front of the same server over https (TLS 1.3, a throwaway CA as the upstream's `ca_file`), interleaved per repetition. CPU is per request, µs, of the gateway's processes.\n"
    );
    let _ = writeln!(
        o,
        "| scenario | metric | (c) http upstream | (t) https upstream | t / c |"
    );
    let _ = writeln!(o, "| --- | --- | ---: | ---: | ---: |");
    let ms = |v: f64| format!("{v:.3}");
    let rows: [(&str, String, String, String); 4] = [
        (
            "req/s",
            thousands(plain.median_throughput),
            thousands(tls.median_throughput),
            paired_ratio(s, 1, 0, |r| r.throughput),
        ),
        (
            "p50 ms",
            ms(plain.median_p50_ms),
            ms(tls.median_p50_ms),
            paired_ratio(s, 1, 0, |r| r.latency_ms.p50),
        ),
        (
            "p99 ms",
            ms(plain.median_p99_ms),
            ms(tls.median_p99_ms),
            paired_ratio(s, 1, 0, |r| r.latency_ms.p99),
        ),
        (
            "gateway CPU µs/request",
            format!("{:.1}", plain.median_proxy_cpu_us),
            format!("{:.1}", tls.median_proxy_cpu_us),
            format!(
                "{:.2}",
                tls.median_proxy_cpu_us / plain.median_proxy_cpu_us.max(f64::MIN_POSITIVE)
            ),
        ),
    ];
    for (metric, a, b, ratio) in rows {
        let _ = writeln!(o, "| {} | {metric} | {a} | {b} | {ratio} |", s.name);
    }
    o.push('\n');
}

/// The two-host table: one mcpgw host (1), two hosts with half of the requests
/// forwarded (2); nothing when the scenario did not run.
fn two_hosts_markdown(c: &Comparison, o: &mut String) {
    let Some(t) = &c.two_hosts else {
        return;
    };
    let s = &t.scenario;
    let (Some(one), Some(two)) = (s.targets.first(), s.targets.get(1)) else {
        return;
    };
    let _ = writeln!(
        o,
        "Two gateway hosts (`[cluster]`, 127.0.0.2 and 127.0.0.3, sessions in one redis-server), interleaved per repetition: (1) one host, every request on the host that owns its session; (2) sessions spread over both hosts and each session's requests alternating between the two, so that half of them are forwarded to the owner. Both hosts share this machine's cores. CPU is per request, µs, of both hosts and Redis.\n"
    );
    let _ = writeln!(
        o,
        "| scenario | metric | (1) one host | (2) two hosts, half forwarded | 2 / 1 |"
    );
    let _ = writeln!(o, "| --- | --- | ---: | ---: | ---: |");
    let ms = |v: f64| format!("{v:.3}");
    let rows: [(&str, String, String, String); 4] = [
        (
            "req/s",
            thousands(one.median_throughput),
            thousands(two.median_throughput),
            paired_ratio(s, 1, 0, |r| r.throughput),
        ),
        (
            "p50 ms",
            ms(one.median_p50_ms),
            ms(two.median_p50_ms),
            paired_ratio(s, 1, 0, |r| r.latency_ms.p50),
        ),
        (
            "p99 ms",
            ms(one.median_p99_ms),
            ms(two.median_p99_ms),
            paired_ratio(s, 1, 0, |r| r.latency_ms.p99),
        ),
        (
            "gateways + Redis CPU µs/request",
            format!("{:.1}", one.median_proxy_cpu_us),
            format!("{:.1}", two.median_proxy_cpu_us),
            format!(
                "{:.2}",
                two.median_proxy_cpu_us / one.median_proxy_cpu_us.max(f64::MIN_POSITIVE)
            ),
        ),
    ];
    for (metric, a, b, ratio) in rows {
        let _ = writeln!(o, "| {} | {metric} | {a} | {b} | {ratio} |", s.name);
    }
    let _ = writeln!(
        o,
        "| {} | forwarded / sent (`mcpgw_cluster_forwarded_total`) | 0 | {} / {} = {:.1} % | |",
        s.name,
        thousands(t.forwarded as f64),
        thousands(t.requests as f64),
        100.0 * t.forwarded_share()
    );
    let _ = writeln!(
        o,
        "| {} | failed requests; failed forwards | {} | {}; {} | |\n",
        s.name, one.errors, two.errors, t.forward_failures
    );
}

/// The stateless-client table: direct, mcpgw with a stateful client, mcpgw with a
/// stateless client; nothing when the scenario did not run.
fn stateless_markdown(c: &Comparison, o: &mut String) {
    use crate::stateless::TARGETS as S;
    if c.stateless.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "Stateless clients (2026-07-28) through mcpgw, beside stateful ones, interleaved per repetition: (a) a stateful client against the upstream directly, (c) a stateful client through mcpgw, (s) a stateless client through mcpgw (no `initialize`, no session: each call gets an upstream session of its own). CPU is per request, µs, of the proxy (mcpgw) and of the upstream.\n"
    );
    let _ = writeln!(
        o,
        "| scenario | metric | (a) direct | (c) mcpgw, stateful client | (s) mcpgw, stateless client | s / a | s / c |"
    );
    let _ = writeln!(o, "| --- | --- | ---: | ---: | ---: | ---: | ---: |");
    let ms = |v: f64| format!("{v:.3}");
    for s in &c.stateless {
        let tp = values_of(s, &S, |t| t.median_throughput);
        stateless_row(o, s, "req/s", tp.map(thousands), |r| r.throughput);
        let p50 = values_of(s, &S, |t| t.median_p50_ms);
        stateless_row(o, s, "p50 ms", p50.map(ms), |r| r.latency_ms.p50);
        let p99 = values_of(s, &S, |t| t.median_p99_ms);
        stateless_row(o, s, "p99 ms", p99.map(ms), |r| r.latency_ms.p99);
    }
    if let Some((p50, p99)) = stateless_added_latency(c) {
        for (metric, v) in [("added p50 ms", p50), ("added p99 ms", p99)] {
            let _ = writeln!(
                o,
                "| latency added over direct, keep-alive C=1 | {metric} | – | {:+.3} | {:+.3} | – | {} |",
                v[0],
                v[1],
                ratio(v[1], v[0]),
            );
        }
    }
    for s in &c.stateless {
        let proxy = values_of(s, &S, |t| t.median_proxy_cpu_us);
        let up = values_of(s, &S, |t| t.median_upstream_cpu_us);
        let _ = writeln!(
            o,
            "| {} | CPU µs / request: proxy; upstream | –; {:.1} | {:.1}; {:.1} | {:.1}; {:.1} | | {}; {} |",
            s.name,
            up[0],
            proxy[1],
            up[1],
            proxy[2],
            up[2],
            ratio(proxy[2], proxy[1]),
            ratio(up[2], up[1]),
        );
    }
    let count = |i: usize, f: &dyn Fn(&LoadReport) -> u64| -> u64 {
        c.stateless
            .iter()
            .filter_map(|s| s.target(S[i]))
            .flat_map(|t| t.runs.iter().map(f))
            .sum()
    };
    let failed = |r: &LoadReport| r.errors.total;
    let ok = |r: &LoadReport| r.requests;
    let _ = writeln!(
        o,
        "| all | failed / successful requests | {} / {} | {} / {} | {} / {} | | |",
        count(0, &failed),
        thousands(count(0, &ok) as f64),
        count(1, &failed),
        thousands(count(1, &ok) as f64),
        count(2, &failed),
        thousands(count(2, &ok) as f64),
    );
    o.push('\n');
}

/// One row of the stateless-client table: the three medians as given, then s / a and
/// s / c of the per-run metric `f`, paired within repetitions.
fn stateless_row(
    o: &mut String,
    s: &Scenario,
    metric: &str,
    v: [String; 3],
    f: impl Fn(&LoadReport) -> f64,
) {
    let _ = writeln!(
        o,
        "| {} | {metric} | {} | {} | {} | {} | {} |",
        s.name,
        v[0],
        v[1],
        v[2],
        paired_ratio(s, 2, 0, &f),
        paired_ratio(s, 2, 1, &f),
    );
}

/// A plot of throughput (left) and p50/p99 latency (right, log scale) by keep-alive
/// concurrency for the three targets.
pub(crate) fn svg(c: &Comparison) -> String {
    let keep: Vec<&Scenario> = c.scenarios.iter().filter(|s| !s.new_connection).collect();
    let (w, h) = (900.0_f64, 400.0_f64);
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let panel_w = 360.0;
    let panel_h = 260.0;
    let top = 50.0;
    let lefts = [70.0, 520.0];
    let xs: Vec<f64> = (0..keep.len())
        .map(|i| {
            if keep.len() <= 1 {
                panel_w / 2.0
            } else {
                20.0 + (panel_w - 40.0) * i as f64 / (keep.len() - 1) as f64
            }
        })
        .collect();

    // Throughput, linear.
    let max_tp = keep
        .iter()
        .flat_map(|s| s.targets.iter().map(|t| t.median_throughput))
        .fold(0.0_f64, f64::max);
    let tp_top = nice_ceiling(max_tp.max(1.0));
    let left = lefts[0];
    panel(
        &mut o,
        left,
        top,
        panel_w,
        panel_h,
        "throughput, keep-alive tools/call (req/s)",
    );
    for i in 0..=5 {
        let v = tp_top * i as f64 / 5.0;
        let y = top + panel_h - panel_h * i as f64 / 5.0;
        grid(&mut o, left, y, panel_w, &thousands(v));
    }
    for (ti, _) in TARGETS.iter().enumerate() {
        let pts: Vec<(f64, f64)> = keep
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let v = s.targets[ti].median_throughput;
                (left + xs[i], top + panel_h - panel_h * v / tp_top)
            })
            .collect();
        polyline(&mut o, &pts, COLOURS[ti], false);
    }
    x_labels(&mut o, left, top + panel_h, &xs, &keep);

    // Latency, log scale.
    let left = lefts[1];
    let all_lat: Vec<f64> = keep
        .iter()
        .flat_map(|s| {
            s.targets
                .iter()
                .flat_map(|t| [t.median_p50_ms, t.median_p99_ms])
        })
        .filter(|v| *v > 0.0)
        .collect();
    let lo = all_lat
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min)
        .max(1e-3)
        .log10()
        .floor();
    let hi = all_lat
        .iter()
        .copied()
        .fold(0.0_f64, f64::max)
        .max(1e-3)
        .log10()
        .ceil()
        .max(lo + 1.0);
    panel(
        &mut o,
        left,
        top,
        panel_w,
        panel_h,
        "latency (ms, log scale): p50 solid, p99 dashed",
    );
    let y_of = |v: f64| top + panel_h - panel_h * (v.max(1e-3).log10() - lo) / (hi - lo);
    let mut d = lo;
    while d <= hi + 1e-9 {
        let v = 10f64.powf(d);
        let label = if v >= 1.0 {
            format!("{v:.0}")
        } else {
            format!("{v}")
        };
        grid(&mut o, left, y_of(v), panel_w, &label);
        d += 1.0;
    }
    for (ti, _) in TARGETS.iter().enumerate() {
        for p99 in [false, true] {
            let pts: Vec<(f64, f64)> = keep
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let t = &s.targets[ti];
                    let v = if p99 {
                        t.median_p99_ms
                    } else {
                        t.median_p50_ms
                    };
                    (left + xs[i], y_of(v))
                })
                .collect();
            polyline(&mut o, &pts, COLOURS[ti], p99);
        }
    }
    x_labels(&mut o, left, top + panel_h, &xs, &keep);

    // Legend.
    for (ti, label) in ["(a) direct", "(b) nginx", "(c) mcpgw"].iter().enumerate() {
        let x = 250.0 + 150.0 * ti as f64;
        let y = h - 25.0;
        let _ = writeln!(
            o,
            r#"<line x1="{x}" y1="{y}" x2="{}" y2="{y}" stroke="{}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            x + 24.0,
            COLOURS[ti],
            x + 30.0,
            y + 4.0,
            label
        );
    }
    let _ = writeln!(
        o,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">mcpgw-bench compare, {} cores, {} sessions, medians of {} runs ({})</text>"#,
        w / 2.0,
        c.machine.nproc,
        c.settings.sessions,
        c.settings.reps,
        xml_escape(&c.machine.date)
    );
    o.push_str("</svg>\n");
    o
}

fn panel(o: &mut String, left: f64, top: f64, w: f64, h: f64, title: &str) {
    let _ = writeln!(
        o,
        r##"<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#333"/><text x="{}" y="{}" text-anchor="middle">{}</text>"##,
        left + w / 2.0,
        top - 8.0,
        xml_escape(title)
    );
}

fn grid(o: &mut String, left: f64, y: f64, w: f64, label: &str) {
    let _ = writeln!(
        o,
        r##"<line x1="{left}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
        left + w,
        left - 6.0,
        y + 4.0,
        xml_escape(label)
    );
}

fn x_labels(o: &mut String, left: f64, bottom: f64, xs: &[f64], keep: &[&Scenario]) {
    for (i, s) in keep.iter().enumerate() {
        let _ = writeln!(
            o,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">C={}</text>"#,
            left + xs[i],
            bottom + 18.0,
            s.concurrency
        );
    }
    let _ = writeln!(
        o,
        r#"<text x="{:.1}" y="{}" text-anchor="middle">concurrency (connections, one request in flight each)</text>"#,
        left + 180.0,
        bottom + 36.0
    );
}

fn polyline(o: &mut String, pts: &[(f64, f64)], colour: &str, dashed: bool) {
    let points: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
    let dash = if dashed {
        r#" stroke-dasharray="6 4""#
    } else {
        ""
    };
    let _ = writeln!(
        o,
        r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>"#,
        points.join(" ")
    );
    for (x, y) in pts {
        let _ = writeln!(
            o,
            r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{colour}"/>"#
        );
    }
}

/// 1, 2 or 5 times a power of ten, at least `v`.
fn nice_ceiling(v: f64) -> f64 {
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * p >= v {
            return m * p;
        }
    }
    10.0 * p
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::TargetRuns;
    use crate::load::{Errors, Latency};
    use crate::mcp::Era;

    /// A run with only what the report reads of it.
    fn run(era: Era, throughput: f64, p50: f64) -> LoadReport {
        LoadReport {
            era,
            sessions: 64,
            concurrency: 1,
            new_connection: false,
            requests: 1000,
            errors: Errors::default(),
            elapsed_secs: 1.0,
            throughput,
            latency_ms: Latency {
                p50,
                p99: 2.0 * p50,
                ..Latency::default()
            },
            connections_opened: 0,
            server_closes: 0,
            setup_secs: 0.0,
            probe_delta: Vec::new(),
        }
    }

    fn comparison(stateless: Vec<Scenario>) -> Comparison {
        Comparison {
            machine: Machine {
                nproc: 2,
                cpu: "cpu".into(),
                kernel: "k".into(),
                rustc: "rustc".into(),
                nginx: "nginx".into(),
                commit: "abc".into(),
                date: "today".into(),
            },
            ticks_per_second: 100,
            settings: Settings {
                bin_dir: ".".into(),
                nginx: "nginx".into(),
                results: ".".into(),
                update_doc: None,
                workers: 2,
                reps: 2,
                duration_secs: 1.0,
                warmup_secs: 0.0,
                sessions: 64,
                concurrency: vec![1],
                new_connection_concurrency: 16,
                stateless_concurrency: vec![1],
                modern_concurrency: Vec::new(),
                idle_sessions: 0,
                idle_concurrency: 64,
                reload: false,
                tls: false,
                cluster: false,
                reload_signals: 0,
                failover_kills: 0,
                failover_sessions: 0,
            },
            scenarios: Vec::new(),
            stateless,
            modern: Vec::new(),
            tls: None,
            idle: None,
            reload: None,
            failover: None,
            two_hosts: None,
        }
    }

    #[test]
    fn the_modern_table_and_its_throughput_target() {
        // Per repetition: direct, nginx, mcpgw. mcpgw / nginx: 0.90 and 0.80, median 0.85.
        let runs = [
            [(20_000.0, 0.5), (10_000.0, 1.0), (9_000.0, 1.2)],
            [(20_000.0, 0.5), (10_000.0, 1.0), (8_000.0, 1.3)],
        ];
        let mut targets: Vec<TargetRuns> = TARGETS.iter().map(|t| TargetRuns::new(t)).collect();
        for rep in runs {
            for (i, (tp, p50)) in rep.into_iter().enumerate() {
                targets[i].runs.push(run(Era::Stateless, tp, p50));
            }
        }
        for t in &mut targets {
            t.summarize(100);
        }
        let mut c = comparison(Vec::new());
        c.modern.push(Scenario {
            name: "modern upstream, keep-alive C=16".into(),
            concurrency: 16,
            new_connection: false,
            targets,
        });
        let md = markdown(&c);
        assert!(
            md.contains(
                "| modern upstream, keep-alive C=16 | req/s | 20,000 | 10,000 | 8,500 | 0.43 | 0.85 | 0.50 |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| modern upstream | failed / successful requests | 0 / 2,000 | 0 / 2,000 | 0 / 2,000 |"),
            "{md}"
        );
        let check = checks(&c)
            .into_iter()
            .find(|ch| ch.what.starts_with("modern upstream"))
            .map(|ch| (ch.measured, ch.met));
        assert!(
            matches!(check, Some((m, true)) if (m - 0.85).abs() < 1e-9),
            "{md}"
        );
        assert!(!markdown(&comparison(Vec::new())).contains("Modern upstream"));
    }

    #[test]
    fn stateless_added_latency_is_a_ratio_of_paired_differences() {
        // Per repetition: direct, mcpgw stateful, mcpgw stateless. Added p50: stateful
        // +0.05 both times, stateless +0.06 both times: 1.20, within the target.
        let runs = [
            [(10_000.0, 0.10), (7_000.0, 0.15), (6_000.0, 0.16)],
            [(9_000.0, 0.12), (6_000.0, 0.17), (5_000.0, 0.18)],
        ];
        let eras = [Era::Stateful, Era::Stateful, Era::Stateless];
        let mut targets: Vec<TargetRuns> = crate::stateless::TARGETS
            .iter()
            .map(|t| TargetRuns::new(t))
            .collect();
        for rep in runs {
            for (i, (tp, p50)) in rep.into_iter().enumerate() {
                targets[i].runs.push(run(eras[i], tp, p50));
            }
        }
        for t in &mut targets {
            t.summarize(100);
        }
        let c = comparison(vec![Scenario {
            name: "stateless client, keep-alive C=1".into(),
            concurrency: 1,
            new_connection: false,
            targets,
        }]);
        let md = markdown(&c);
        assert!(
            md.contains("| latency added over direct, keep-alive C=1 | added p50 ms | – | +0.050 | +0.060 | – | 1.20 |"),
            "{md}"
        );
        // Throughput s / a: 0.60 and 0.56, median 0.58; s / c: 0.86 and 0.83, median 0.85.
        assert!(
            md.contains(
                "| stateless client, keep-alive C=1 | req/s | 9,500 | 6,500 | 5,500 | 0.58 | 0.85 |"
            ),
            "{md}"
        );
        let check = checks(&c)
            .into_iter()
            .find(|ch| ch.what.contains("stateless"))
            .map(|ch| (ch.measured, ch.met));
        assert!(
            matches!(check, Some((m, true)) if (m - 1.2).abs() < 1e-9),
            "{md}"
        );
        // Without the scenario there is neither table nor target.
        let none = comparison(Vec::new());
        assert!(!markdown(&none).contains("stateless"));
    }

    #[test]
    fn formatting() {
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(nice_ceiling(31_000.0), 50_000.0);
        assert_eq!(nice_ceiling(1.0), 1.0);
        assert_eq!(ratio(1.0, 0.0), "–");
        assert_eq!(ratio(1.0, 2.0), "0.50");
    }
}
