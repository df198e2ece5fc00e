//! Operating the gateway: metrics on the admin listener (merged over workers,
//! valid for `promtool`), the admin API and `mcpgw status`, systemd readiness
//! notification and socket activation. Real binary, real processes.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mcpgw_tests::gateway::gateway_binary;
use mcpgw_tests::http::{HttpConn, Request};
use mcpgw_tests::ops::{admin_get, sessions_on_every_worker, sum_of, supervisor_metric};
use mcpgw_tests::pki::Pki;
use mcpgw_tests::process::{ChildGuard, LineReader, TempDir};
use mcpgw_tests::{CounterServer, Gateway, GatewayConfig, McpClient, start_counter};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

/// `[tracing]`: OTLP export of request spans.
#[path = "operations/otlp.rs"]
mod otlp;

async fn started(workers: usize) -> (CounterServer, Gateway) {
    let counter = start_counter!().expect("start counter-server");
    let gateway = Gateway::start(&GatewayConfig::new(workers).upstream("counter", &counter.url()))
        .expect("start mcpgw");
    (counter, gateway)
}

#[tokio::test]
async fn metrics_merge_every_worker_and_pass_promtool() {
    let (_counter, gateway) = started(2).await;
    let mut clients = sessions_on_every_worker(&gateway).await;
    let unknown = clients[0]
        .call_tool("no_such_tool", json!({}))
        .await
        .expect("call");
    assert!(unknown.error().is_some());

    let (status, text) = admin_get(&gateway, "/metrics").await;
    assert_eq!(status, 200, "{text}");
    for slot in 0..gateway.workers {
        let line = format!(
            "mcpgw_requests_total{{worker=\"{slot}\",method=\"tools/call\",outcome=\"ok\"}}"
        );
        assert!(text.contains(&line), "missing {line} in:\n{text}");
    }
    let n = clients.len() as f64;
    assert_eq!(sum_of(&text, "mcpgw_sessions_active{"), n, "{text}");
    assert_eq!(
        sum_of(&text, "mcpgw_upstream_sessions_active{"),
        n,
        "one upstream session per session:\n{text}"
    );
    let created: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("mcpgw_upstream_session_events_total{") && l.contains("event=\"created\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(
        created, n,
        "one upstream session created per session:\n{text}"
    );
    assert!(
        sum_of(&text, "mcpgw_connections_dispatched_total{") >= n,
        "{text}"
    );
    assert!(text.contains("mcpgw_build_info{version=\""), "{text}");
    assert_eq!(
        text.matches("# TYPE mcpgw_requests_total ").count(),
        1,
        "{text}"
    );
    for c in &clients {
        let id = c.session_id().expect("session id");
        assert!(!text.contains(id), "a label carries session id {id}");
    }

    let dir = TempDir::new("mcpgw-metrics").expect("temp dir");
    let page = dir.path().join("metrics.txt");
    std::fs::write(&page, &text).expect("write metrics");
    let out = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&page).expect("open"))
        .output()
        .expect(
            "promtool is installed (Debian package prometheus; scripts/test-all.sh installs it)",
        );
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    dashboard_matches_the_metrics(&dir, &text);
    alert_rules_match_the_metrics(&text);

    for c in &mut clients {
        c.delete().await.expect("delete");
    }
    let (_, text) = admin_get(&gateway, "/metrics").await;
    assert_eq!(sum_of(&text, "mcpgw_sessions_active{"), 0.0, "{text}");
    assert_eq!(
        sum_of(&text, "mcpgw_upstream_sessions_active{"),
        0.0,
        "{text}"
    );
}

fn deploy_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Families that need no panel, and why.
const NOT_ON_THE_DASHBOARD: [&str; 3] = [
    // A Rust process's address space says nothing its resident set does not.
    "process_virtual_memory_bytes",
    // Restarts are mcpgw_worker_restarts_total; an uptime panel adds nothing.
    "process_start_time_seconds",
    // Workers run one thread each; the supervisor's count is fixed.
    "process_threads",
];

/// Every metric family the gateway can export: those on the live page, and
/// the `mcpgw_*` names the two metrics modules register, which include the
/// families that appear only once something counts (an upstream failed, a
/// rate limit refused, a token was fetched…). Every `mcpgw_*` family on the
/// page must be one of the registered names, so a family registered in
/// another file fails here until this scan reads that file too.
fn every_family(exposition: &str) -> BTreeSet<String> {
    let live: BTreeSet<String> = exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut registered = BTreeSet::new();
    for file in ["worker/src/metrics.rs", "supervisor/src/metrics.rs"] {
        let text = std::fs::read_to_string(root.join(file)).expect(file);
        // Every piece between two quotes, not every other one: escaped
        // quotes in the unit tests' expected lines would shift the count.
        for quoted in text.split('"') {
            if quoted.starts_with("mcpgw_")
                && quoted.len() > "mcpgw_".len()
                && quoted
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                registered.insert(quoted.to_owned());
            }
        }
    }
    for family in live.iter().filter(|f| f.starts_with("mcpgw_")) {
        assert!(
            registered.contains(family),
            "/metrics exports {family}, which the metrics modules do not name"
        );
    }
    for lazy in [
        "mcpgw_authz_decisions_total",
        "mcpgw_rate_limited_total",
        "mcpgw_upstream_token_fetches_total",
    ] {
        assert!(registered.contains(lazy), "the scan missed {lazy}");
    }
    live.into_iter().chain(registered).collect()
}

/// Every expression of the shipped Grafana dashboard parses (promtool),
/// names only metric families the gateway exports, and every family the
/// gateway exports has a panel (but those in [`NOT_ON_THE_DASHBOARD`]).
fn dashboard_matches_the_metrics(dir: &TempDir, exposition: &str) {
    let path = deploy_dir().join("grafana-dashboard.json");
    let dash: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard")).expect("JSON");
    let exprs: Vec<String> = dash["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    assert!(!exprs.is_empty());
    let mut rules = String::from("groups:\n- name: dashboard\n  rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        rules.push_str(&format!(
            "  - record: dashboard:expr{i}\n    expr: {}\n",
            serde_json::to_string(e).expect("quote")
        ));
    }
    let file = dir.path().join("rules.yml");
    std::fs::write(&file, rules).expect("write rules");
    let out = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&file)
        .output()
        .expect("promtool");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let families = every_family(exposition);
    let used = uses_only_exported_families("the dashboard", &exprs, &families);
    let missing: Vec<&String> = families
        .iter()
        .filter(|f| !used.contains(f.as_str()) && !NOT_ON_THE_DASHBOARD.contains(&f.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "no panel of deploy/grafana-dashboard.json shows {missing:?}; add one, or say in \
         NOT_ON_THE_DASHBOARD why it needs none"
    );
}

/// The `expr` values of a rules file: one-line ones and `expr: |` blocks.
fn rule_exprs(rules: &str) -> Vec<String> {
    let mut exprs = Vec::new();
    let mut lines = rules.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(expr) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let expr = expr.trim();
        if expr != "|" {
            exprs.push(expr.to_owned());
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let mut block = String::new();
        while let Some(next) = lines.next_if(|l| l.len() - l.trim_start().len() > indent) {
            block.push_str(next.trim());
            block.push('\n');
        }
        exprs.push(block);
    }
    exprs
}

/// The shipped Prometheus config and alert rules pass promtool (and the
/// rules their unit tests, deploy/mcpgw-alerts.test.yml), and every alert
/// names only metric families the gateway exports.
fn alert_rules_match_the_metrics(exposition: &str) {
    let deploy = deploy_dir();
    for (what, file) in [
        ("check config", "prometheus.yml"),
        ("check rules", "mcpgw-alerts.yml"),
        ("test rules", "mcpgw-alerts.test.yml"),
    ] {
        let out = Command::new("promtool")
            .args(what.split(' '))
            .arg(file)
            .current_dir(&deploy)
            .output()
            .expect("promtool");
        assert!(
            out.status.success(),
            "promtool {what} {file}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rules = std::fs::read_to_string(deploy.join("mcpgw-alerts.yml")).expect("rules");
    let exprs = rule_exprs(&rules);
    assert!(exprs.len() >= 16, "{exprs:?}");
    assert!(exprs.iter().all(|e| !e.is_empty() && e != "|"), "{exprs:?}");
    let families = every_family(exposition);
    let used = uses_only_exported_families("the alert rules", &exprs, &families);
    for wakes in [
        "mcpgw_upstream_token_fetches_total",
        "mcpgw_rate_limited_total",
        "mcpgw_mrtr_parked_calls",
    ] {
        assert!(used.contains(wakes), "no alert watches {wakes}");
    }
}

/// Checks that `exprs` name only `families` and returns the families they
/// name (a histogram's by its base name).
fn uses_only_exported_families<'f>(
    who: &str,
    exprs: &[String],
    families: &'f BTreeSet<String>,
) -> BTreeSet<&'f str> {
    let mut used = BTreeSet::new();
    for e in exprs {
        for name in e
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("mcpgw_") || w.starts_with("process_"))
        {
            let family = families
                .get(name)
                .or_else(|| {
                    ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|suffix| families.get(name.strip_suffix(suffix)?))
                })
                .unwrap_or_else(|| panic!("{who} use {name}, which /metrics does not export"));
            used.insert(family.as_str());
        }
    }
    used
}

#[tokio::test]
async fn admin_api_and_status_command_show_workers_and_sessions() {
    let (_counter, gateway) = started(2).await;
    let clients = sessions_on_every_worker(&gateway).await;

    let (status, body) = admin_get(&gateway, "/admin/workers").await;
    assert_eq!(status, 200, "{body}");
    let doc: Value = serde_json::from_str(&body).expect("json");
    let workers = doc["workers"].as_array().expect("workers");
    assert_eq!(workers.len(), gateway.workers, "{doc}");
    assert!(
        workers
            .iter()
            .all(|w| w["answered"] == true && w["pid"].as_u64().is_some()),
        "{doc}"
    );
    assert_eq!(doc["sessions"], clients.len(), "{doc}");
    let upstream_sessions: u64 = workers
        .iter()
        .flat_map(|w| {
            w["upstream_sessions"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|u| u["count"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(upstream_sessions, clients.len() as u64, "{doc}");

    let (status, _) = admin_get(&gateway, "/healthz").await;
    assert_eq!(status, 200);
    let (status, _) = admin_get(&gateway, "/nope").await;
    assert_eq!(status, 404);

    let admin = gateway.admin.expect("admin").to_string();
    let bin = gateway_binary().expect("mcpgw binary");
    let out = Command::new(bin)
        .args(["status", "--admin", &admin])
        .output()
        .expect("run mcpgw status");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(table.lines().count(), gateway.workers + 2, "{table}");
    assert!(table.contains("counter="), "{table}");
    assert!(
        table.ends_with(&format!("sessions: {}\n", clients.len())),
        "{table}"
    );

    // Nothing listening: a clear error and a non-zero exit.
    drop(gateway);
    let out = Command::new(bin)
        .args(["status", "--admin", &admin])
        .output()
        .expect("run mcpgw status");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the admin listener"));
}

/// Datagrams from the gateway to `$NOTIFY_SOCKET`, read until `want` appears.
fn read_notifications(sock: &std::os::unix::net::UnixDatagram, want: &str, seen: &mut Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = [0u8; 4096];
    while !seen.iter().any(|m| m.lines().any(|l| l == want)) {
        assert!(
            Instant::now() < deadline,
            "no {want} within 30 s; got {seen:?}"
        );
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
}

#[tokio::test]
async fn systemd_is_told_ready_status_and_stopping() {
    let counter = start_counter!().expect("start counter-server");
    let dir = TempDir::new("mcpgw-notify").expect("temp dir");
    let path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut config = GatewayConfig::new(2).upstream("counter", &counter.url());
    config
        .env
        .push(("NOTIFY_SOCKET".into(), path.display().to_string()));
    let mut gateway = Gateway::start(&config).expect("start mcpgw");

    let mut seen = Vec::new();
    read_notifications(&sock, "READY=1", &mut seen);
    assert!(
        seen.iter()
            .any(|m| m.contains("STATUS=serving with 2 of 2 workers")),
        "{seen:?}"
    );
    gateway.signal(Signal::SIGTERM).expect("SIGTERM");
    read_notifications(&sock, "STOPPING=1", &mut seen);
    let status = gateway
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("exit");
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn socket_activation_serves_on_the_passed_socket() {
    let counter = start_counter!().expect("start counter-server");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    // The child must inherit it: clear close-on-exec on our copy.
    nix::fcntl::fcntl(
        &listener,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .expect("clear CLOEXEC");
    let dir = TempDir::new("mcpgw-activation").expect("temp dir");
    let config_path = dir.path().join("mcpgw.toml");
    let mut file = std::fs::File::create(&config_path).expect("config");
    // `listen` names a port that is never bound: systemd's socket wins.
    file.write_all(
        GatewayConfig::new(1)
            .upstream("counter", &counter.url())
            .to_toml()
            .as_bytes(),
    )
    .expect("write config");
    let bin = gateway_binary().expect("mcpgw binary");
    // As systemd does: the socket at fd 3, LISTEN_PID naming the process that
    // execs mcpgw (the shell's own pid, kept across exec).
    let script = format!(
        "exec 3<&{fd}; LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=public exec \"$0\" serve --config \"$1\"",
        fd = listener.as_raw_fd()
    );
    // bash, not sh: dash cannot redirect fd numbers above 9.
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(script)
        .arg(bin)
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("stderr.log")).expect("log"));
    let mut child =
        ChildGuard::spawn("mcpgw", cmd, Some(dir.path().join("stderr.log"))).expect("spawn");
    drop(listener);
    let lines = LineReader::new(child.take_stdout().expect("stdout"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut announced = None;
    loop {
        let line = lines
            .next_line(deadline)
            .expect("gateway output")
            .unwrap_or_else(|| panic!("mcpgw exited: {}", child.log_tail()));
        if let Some(a) = line.strip_prefix("mcpgw listening http://") {
            announced = Some(a.trim().to_owned());
        }
        if line.starts_with("mcpgw ready") {
            break;
        }
    }
    assert_eq!(announced.as_deref(), Some(addr.to_string().as_str()));
    let mut client = McpClient::new(addr, "/mcp");
    client
        .initialize()
        .await
        .expect("initialize on the activated socket");
    assert_eq!(client.count("increment").await.expect("increment"), 1);
    child.signal(Signal::SIGTERM).expect("SIGTERM");
    assert!(
        child
            .wait_exit(Duration::from_secs(30))
            .await
            .expect("exit")
            .success()
    );
}

async fn wait_for_reloads(gateway: &Gateway, result: &str, count: f64) {
    let sample = format!("mcpgw_reloads_total{{result=\"{result}\"}}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = supervisor_metric(gateway, &sample).await;
        if n >= count {
            assert_eq!(n, count, "more {result} reloads than expected");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sample} stayed {n}, wanted {count}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn write_config(gateway: &Gateway, config: &GatewayConfig) {
    std::fs::write(gateway.config_path(), config.to_toml()).expect("rewrite config");
}

/// A POST with the admin token: state-changing admin requests need it.
async fn admin_post(gateway: &Gateway, path: &str, token: &str) -> (u16, String) {
    let admin = gateway.admin.expect("admin listener");
    let mut conn = HttpConn::connect(admin).await.expect("connect to admin");
    let resp = conn
        .send(&Request::post(path, Vec::new()).header("Authorization", &format!("Bearer {token}")))
        .await
        .expect("admin answer");
    (resp.status, resp.text())
}

/// A token file in `dir`, and the `admin_token_file` line naming it.
fn admin_token(dir: &TempDir, token: &str) -> String {
    let path = dir.path().join("admin.token");
    std::fs::write(&path, format!("{token}\n")).expect("write the token file");
    format!(
        "admin_token_file = {}",
        Value::from(path.to_string_lossy().as_ref())
    )
}

#[tokio::test]
async fn sighup_reload_applies_upstream_changes_and_keeps_sessions() {
    let first = start_counter!().expect("first counter-server");
    let second = start_counter!().expect("second counter-server");
    let secrets = TempDir::new("mcpgw-admin-token").expect("temp dir");
    let token_line = admin_token(&secrets, "reload-t0ken");
    let base = |url: &str| GatewayConfig {
        top: token_line.clone(),
        ..GatewayConfig::new(2).upstream("counter", url)
    };
    let gateway = Gateway::start(&base(&first.url())).expect("start mcpgw");
    let mut session = gateway.client();
    session.initialize().await.expect("initialize");
    assert_eq!(session.count("increment").await.expect("increment"), 1);
    assert_eq!(session.count("increment").await.expect("increment"), 2);

    // A change that does not touch connections keeps the upstream session.
    let mut cosmetic = base(&first.url());
    cosmetic.extra = "[sessions]\nidle_timeout_secs = 3600\n".to_owned();
    write_config(&gateway, &cosmetic);
    gateway.signal(Signal::SIGHUP).expect("SIGHUP");
    wait_for_reloads(&gateway, "ok", 1.0).await;
    assert_eq!(session.count("increment").await.expect("increment"), 3);
    assert_eq!(first.stats().await.expect("stats").initialize, 1);

    // An invalid file is refused; everything keeps working.
    std::fs::write(gateway.config_path(), "workers = \"many\"\n").expect("write");
    gateway.signal(Signal::SIGHUP).expect("SIGHUP");
    wait_for_reloads(&gateway, "failed", 1.0).await;
    assert_eq!(session.count("increment").await.expect("increment"), 4);

    // A new URL: the old upstream session is closed (DELETE), the next call
    // opens one on the new server; the client's session id stays valid.
    write_config(&gateway, &base(&second.url()));
    let (status, body) = admin_post(&gateway, "/admin/reload", "reload-t0ken").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"result\":\"ok\""), "{body}");
    wait_for_reloads(&gateway, "ok", 2.0).await;
    let first_stats = first.stats().await.expect("stats");
    assert_eq!(first_stats.delete, 1, "{first_stats:?}");
    assert_eq!(session.count("increment").await.expect("increment"), 1);
    assert_eq!(second.stats().await.expect("stats").initialize, 1);

    // The config in force is served with credentials redacted.
    let mut secret = base(&second.url());
    secret.extra = String::new();
    let toml = secret.to_toml().replace(
        "[[upstream]]\nid = \"counter\"",
        "[[upstream]]\nid = \"counter\"\nheaders = { \"X-Api-Key\" = \"s3cret\" }",
    );
    std::fs::write(gateway.config_path(), &toml).expect("write");
    let (status, body) = admin_post(&gateway, "/admin/reload", "reload-t0ken").await;
    assert_eq!(status, 200, "{body}\n{toml}");
    let (_, config) = admin_get(&gateway, "/admin/config").await;
    assert!(
        config.contains("X-Api-Key") && !config.contains("s3cret"),
        "{config}"
    );
    // A changed header is a connection change: that upstream session goes too.
    assert_eq!(session.count("increment").await.expect("increment"), 1);
}

#[tokio::test]
async fn twenty_reloads_under_load_fail_no_request() {
    let counter = start_counter!().expect("counter-server");
    let config = GatewayConfig::new(2).upstream("counter", &counter.url());
    let gateway = Gateway::start(&config).expect("start mcpgw");
    let stop = std::cell::Cell::new(false);
    let client_loop = || async {
        let mut client = gateway.client();
        client.initialize().await.expect("initialize");
        let mut calls = 0u64;
        while !stop.get() {
            let reply = client
                .call_tool("increment", json!({}))
                .await
                .expect("no request may fail during a reload");
            calls += 1;
            assert_eq!(
                reply.count().expect("count"),
                calls,
                "state lost across a reload"
            );
        }
        calls
    };
    let load = futures_util::future::join_all((0..4).map(|_| client_loop()));
    let reloads = async {
        for i in 0..20u64 {
            // A different (cosmetic) value each time, so every reload changes something.
            let mut next = config.clone();
            next.extra = format!("[sessions]\nidle_timeout_secs = {}\n", 1800 + i);
            write_config(&gateway, &next);
            gateway.signal(Signal::SIGHUP).expect("SIGHUP");
            wait_for_reloads(&gateway, "ok", (i + 1) as f64).await;
        }
        stop.set(true);
    };
    let (calls, ()) = tokio::join!(load, reloads);
    assert!(
        calls.iter().all(|c| *c > 0),
        "every client made progress: {calls:?}"
    );
    assert_eq!(counter.stats().await.expect("stats").initialize, 4);
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn tls_connect(pki: &Pki, addr: std::net::SocketAddr) -> Tls {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let tls = pki
        .connector()
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    tls
}

fn peer_certificate(tls: &Tls) -> Vec<u8> {
    tls.get_ref()
        .1
        .peer_certificates()
        .expect("server certificate")[0]
        .to_vec()
}

/// One MCP POST over an open TLS connection (kept alive); returns the
/// session id header, if any, and the JSON body.
async fn tls_post(tls: &mut Tls, session: Option<&str>, body: &Value) -> (Option<String>, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = body.to_string();
    let mut req = format!(
        "POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\naccept: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    if let Some(s) = session {
        req.push_str(&format!(
            "mcp-session-id: {s}\r\nmcp-protocol-version: 2025-11-25\r\n"
        ));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    tls.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = tls.read(&mut chunk).await.expect("read");
        assert!(
            n > 0,
            "connection closed mid-answer: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(at)) = resp.parse(&buf) else {
            continue;
        };
        assert_eq!(resp.code, Some(200), "{}", String::from_utf8_lossy(&buf));
        let header = |name: &str| {
            resp.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).into_owned())
        };
        let len: usize = header("content-length")
            .expect("the gateway answers JSON with a length")
            .parse()
            .expect("length");
        if buf.len() >= at + len {
            let json = serde_json::from_slice(&buf[at..at + len]).expect("JSON body");
            return (header("mcp-session-id"), json);
        }
    }
}

#[tokio::test]
async fn tls_listener_serves_forwards_and_rotates_certificates_on_reload() {
    let counter = start_counter!().expect("counter-server");
    let pki = Pki::new();
    let first = pki.issue_leaf();
    let mut config = GatewayConfig::new(2).upstream("counter", &counter.url());
    config.extra = format!(
        "[[tls_listener]]\naddr = \"127.0.0.1:0\"\ncert = {:?}\nkey = {:?}\n",
        pki.path("cert.pem").display().to_string(),
        pki.path("key.pem").display().to_string()
    );
    let gateway = Gateway::start(&config).expect("start mcpgw");
    let addr = *gateway.tls_listeners.first().expect("a TLS listener");

    let mut kept = tls_connect(&pki, addr).await;
    assert_eq!(peer_certificate(&kept), first);
    let init = json!({"jsonrpc":"2.0","id":1,"method":"initialize",
        "params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}});
    let (session, reply) = tls_post(&mut kept, None, &init).await;
    let session = session.expect("session id");
    assert_eq!(reply["result"]["protocolVersion"], "2025-11-25");
    let call = |n: u64| json!({"jsonrpc":"2.0","id":n,"method":"tools/call","params":{"name":"increment","arguments":{}}});
    // TLS connections are balanced by load, so some land on the worker that
    // does not own the session and are forwarded: every call still counts.
    for n in 1..=4u64 {
        let mut fresh = tls_connect(&pki, addr).await;
        let (_, reply) = tls_post(&mut fresh, Some(&session), &call(n)).await;
        assert_eq!(reply["result"]["structuredContent"]["count"], n, "{reply}");
    }

    // Rotate the certificate in place and reload.
    let second = pki.issue_leaf();
    assert_ne!(first, second);
    write_config(&gateway, &config);
    gateway.signal(Signal::SIGHUP).expect("SIGHUP");
    wait_for_reloads(&gateway, "ok", 1.0).await;
    let mut fresh = tls_connect(&pki, addr).await;
    assert_eq!(
        peer_certificate(&fresh),
        second,
        "new handshakes get the new certificate"
    );
    let (_, reply) = tls_post(&mut fresh, Some(&session), &call(5)).await;
    assert_eq!(reply["result"]["structuredContent"]["count"], 5, "{reply}");
    // The connection opened before the reload is still up, on its old certificate.
    let (_, reply) = tls_post(&mut kept, Some(&session), &call(6)).await;
    assert_eq!(reply["result"]["structuredContent"]["count"], 6, "{reply}");
    assert_eq!(peer_certificate(&kept), first);

    let (_, text) = admin_get(&gateway, "/metrics").await;
    assert!(
        text.contains("mcpgw_tls_certificate_expiry_timestamp_seconds{listener=\"127.0.0.1:0\"}"),
        "{text}"
    );

    // A key that does not match: the reload is refused and TLS keeps working.
    std::fs::copy(pki.path("ca.key"), pki.path("key.pem")).expect("break the key");
    gateway.signal(Signal::SIGHUP).expect("SIGHUP");
    wait_for_reloads(&gateway, "failed", 1.0).await;
    let mut fresh = tls_connect(&pki, addr).await;
    assert_eq!(peer_certificate(&fresh), second);
    let (_, reply) = tls_post(&mut fresh, Some(&session), &call(7)).await;
    assert_eq!(reply["result"]["structuredContent"]["count"], 7, "{reply}");
}

/// `mcpgw ARGS` to completion: exit success, stdout, stderr.
fn mcpgw_cli(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(gateway_binary().expect("mcpgw binary"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run mcpgw");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn config_errors_print_once_with_file_key_and_line() {
    let dir = TempDir::new("mcpgw-cli-errors").expect("temp dir");
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write config");
        path.to_string_lossy().into_owned()
    };

    let typo = file("typo.toml", "workers = 1\nlsten = [\"127.0.0.1:1\"]\n");
    let (code, _, err) = mcpgw_cli(&["check-config", &typo]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.starts_with(&format!("mcpgw: {typo}: TOML parse error at line 2")),
        "{err}"
    );
    assert_eq!(err.matches("unknown field `lsten`").count(), 1, "{err}");

    let missing = dir
        .path()
        .join("missing.toml")
        .to_string_lossy()
        .into_owned();
    let (code, _, err) = mcpgw_cli(&["check-config", &missing]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    assert!(err.contains(&missing), "{err}");

    let zero = file(
        "zero.toml",
        "[[upstream]]\nid = \"a\"\nurl = \"http://127.0.0.1:1/mcp\"\n\n[[upstream]]\nid = \"b\"\nurl = \"http://127.0.0.1:1/mcp\"\nconnect_timeout_ms = 0\n",
    );
    let (code, _, err) = mcpgw_cli(&["check-config", &zero]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(
        err,
        format!("mcpgw: {zero}:8: upstream[1].connect_timeout_ms: must be greater than 0\n")
    );

    let host = file("host.toml", "listen = [\"localhost:8080\"]\n");
    let (code, _, err) = mcpgw_cli(&["check-config", &host]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("is not an IP address and port") && err.contains("e.g. 127.0.0.1:8080"),
        "{err}"
    );
    assert_eq!(err.matches("is not an IP address").count(), 1, "{err}");
}

#[tokio::test]
async fn a_busy_admin_port_is_reported_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let dir = TempDir::new("mcpgw-busy").expect("temp dir");
    let config = dir.path().join("busy.toml");
    std::fs::write(
        &config,
        format!("listen = [\"127.0.0.1:0\"]\nadmin_listen = \"{addr}\"\nworkers = 1\n"),
    )
    .expect("write config");
    let run = tokio::process::Command::new(gateway_binary().expect("mcpgw binary"))
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("mcpgw exits when its admin port is taken")
        .expect("run mcpgw");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
    assert_eq!(err.matches("Address already in use").count(), 1, "{err}");
}

#[tokio::test]
async fn flags_apply_where_given_and_misplaced_ones_are_refused() {
    let dir = TempDir::new("mcpgw-flags").expect("temp dir");
    let config = dir.path().join("run.toml");
    std::fs::write(
        &config,
        "listen = [\"127.0.0.1:0\"]\nadmin_listen = \"127.0.0.1:0\"\nworkers = 2\n",
    )
    .expect("write config");
    let config = config.to_string_lossy().into_owned();

    // Serve's flags before the subcommand: refused, not dropped.
    let (code, _, err) = mcpgw_cli(&["--workers", "1", "serve", "-c", &config]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("go after the subcommand"), "{err}");
    // -c where it means nothing: refused.
    for sub in [["check-config", "-c"], ["wrapper", "-c"]] {
        let (code, _, err) = mcpgw_cli(&[sub[0], sub[1], &config]);
        assert_eq!(code, Some(2), "{sub:?}: {err}");
        assert!(err.contains("unexpected argument '-c'"), "{sub:?}: {err}");
    }

    // Without a subcommand, serve's flags apply (and the global
    // --log-format is taken before a subcommand).
    let mut cmd = Command::new(gateway_binary().expect("mcpgw binary"));
    cmd.args(["--config", &config, "--workers", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("stderr.log")).expect("log"));
    let mut child =
        ChildGuard::spawn("mcpgw", cmd, Some(dir.path().join("stderr.log"))).expect("spawn");
    let lines = LineReader::new(child.take_stdout().expect("stdout"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let line = lines
            .next_line(deadline)
            .expect("a line before the deadline")
            .expect("mcpgw runs");
        if let Some(n) = line.strip_prefix("mcpgw ready workers=") {
            assert_eq!(n, "1", "--workers 1 without a subcommand");
            break;
        }
    }
    child.signal(Signal::SIGTERM).expect("SIGTERM");
    assert!(
        child
            .wait_exit(Duration::from_secs(60))
            .await
            .expect("exit")
            .success()
    );

    let gateway = Gateway::start(&GatewayConfig {
        args: vec!["--workers".into(), "1".into()],
        ..GatewayConfig::new(2)
    })
    .expect("start mcpgw");
    assert_eq!(
        gateway.workers, 1,
        "serve --workers 1 overrides workers = 2"
    );
}

#[tokio::test]
async fn status_columns_line_up_and_c_finds_the_admin_listener() {
    let (_counter, gateway) = started(2).await;
    let _clients = sessions_on_every_worker(&gateway).await;
    let admin = gateway.admin.expect("admin");
    let dir = TempDir::new("mcpgw-status").expect("temp dir");
    let config = dir.path().join("gw.toml");
    std::fs::write(&config, format!("admin_listen = \"{admin}\"\n")).expect("write config");
    let (code, table, err) = mcpgw_cli(&["status", "-c", &config.to_string_lossy()]);
    assert_eq!(code, Some(0), "{table}{err}");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), gateway.workers + 2, "{table}");
    // Each numeric column ends where its header ends.
    let header = lines[0];
    let ends: Vec<usize> = [
        "SLOT",
        "GENERATION",
        "PID",
        "UPTIME",
        "CONNECTIONS",
        "SESSIONS",
    ]
    .iter()
    .map(|h| header.find(h).expect("header") + h.len())
    .collect();
    for row in &lines[1..=gateway.workers] {
        let mut row_ends = Vec::new();
        let mut prev = ' ';
        for (i, c) in row.char_indices().chain([(row.len(), ' ')]) {
            if c == ' ' && prev != ' ' {
                row_ends.push(i);
            }
            prev = c;
        }
        assert_eq!(row_ends[..6], ends[..], "{table}");
    }
    let upstream_col = header.find("UPSTREAM SESSIONS").expect("header");
    assert!(
        lines[1..=gateway.workers]
            .iter()
            .all(|r| r.find("counter=") == Some(upstream_col)),
        "{table}"
    );

    // --admin wins over the file's admin_listen.
    std::fs::write(&config, "admin_listen = \"127.0.0.1:0\"\n").expect("write config");
    let (code, table, err) = mcpgw_cli(&[
        "status",
        "-c",
        &config.to_string_lossy(),
        "--admin",
        &admin.to_string(),
    ]);
    assert_eq!(code, Some(0), "{table}{err}");
    // The file's port 0 alone: a clear error, not a connection to port 0.
    let (code, _, err) = mcpgw_cli(&["status", "-c", &config.to_string_lossy()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("port 0 is chosen at start"), "{err}");
}

#[tokio::test]
async fn workers_show_their_name_in_ps() {
    let (_counter, gateway) = started(2).await;
    let pids = mcpgw_tests::ops::worker_pids(&gateway).await;
    assert_eq!(pids.len(), 2);
    let mut slots = BTreeSet::new();
    for pid in pids {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
        let argv0 = cmdline.split(|&b| b == 0).next().expect("argv[0]");
        let argv0 = String::from_utf8_lossy(argv0).into_owned();
        let slot = argv0
            .strip_prefix("mcpgw: worker ")
            .unwrap_or_else(|| panic!("argv[0] of worker {pid}: {argv0:?}"))
            .to_owned();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).expect("comm");
        assert_eq!(comm.trim_end(), format!("mcpgw-worker-{slot}"));
        slots.insert(slot);
    }
    assert_eq!(slots.len(), 2, "{slots:?}");
}

/// Ctrl-C in a terminal and `kill -- -PGID` signal every process of the
/// group: workers must leave stopping to the supervisor, which drains.
#[tokio::test]
async fn a_stop_signal_to_the_process_group_drains_cleanly() {
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        let (_counter, mut gateway) = started(2).await;
        let mut client = gateway.client();
        client.initialize().await.expect("initialize");
        let pids = mcpgw_tests::ops::worker_pids(&gateway).await;
        let group = nix::unistd::Pid::from_raw(i32::try_from(gateway.pid()).expect("pid"));
        nix::sys::signal::killpg(group, signal).expect("signal the group");
        let status = gateway
            .wait_exit(Duration::from_secs(60))
            .await
            .expect("the supervisor exits");
        let log = gateway.log();
        assert!(status.success(), "{signal}: {status}\n{log}");
        assert!(!log.contains("unexpectedly"), "{signal}:\n{log}");
        assert!(log.contains("draining workers"), "{signal}:\n{log}");
        assert_eq!(
            log.matches("worker exited").count(),
            2,
            "{signal}: both workers drained:\n{log}"
        );
        assert!(
            log.matches("status=exit status: 0").count() >= 2,
            "{signal}: workers exit 0, not by the signal:\n{log}"
        );
        for pid in pids {
            assert!(
                !mcpgw_tests::process::process_alive(pid),
                "worker {pid} left behind"
            );
        }
    }
}

#[tokio::test]
async fn json_log_format_makes_every_line_json() {
    let counter = start_counter!().expect("start counter-server");
    let mut gateway = Gateway::start(&GatewayConfig {
        args: vec!["--log-format".into(), "json".into()],
        ..GatewayConfig::new(2).upstream("counter", &counter.url())
    })
    .expect("start mcpgw");
    let mut client = gateway.client();
    client.initialize().await.expect("initialize");
    for line in &gateway.stdout_lines {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert!(v["event"].is_string(), "{line}");
    }
    assert_eq!(
        gateway.stdout_lines.last().map(String::as_str),
        Some(r#"{"event":"ready","workers":2}"#)
    );
    gateway.signal(Signal::SIGTERM).expect("SIGTERM");
    assert!(
        gateway
            .wait_exit(Duration::from_secs(60))
            .await
            .expect("exit")
            .success()
    );
    let log = gateway.log();
    // Worker lines included: they used to be plain text.
    assert!(log.contains("\"target\":\"mcpgw_worker"), "{log}");
    for line in log.lines().filter(|l| !l.is_empty()) {
        assert!(
            serde_json::from_str::<Value>(line).is_ok(),
            "not JSON: {line:?}"
        );
    }
}

#[tokio::test]
async fn an_upstream_header_from_the_environment_reaches_the_upstream() {
    let counter = start_counter!(mcpgw_tests::CounterOpts {
        require_header: Some("Authorization: Bearer e2e-t0ken".to_owned()),
        ..mcpgw_tests::CounterOpts::default()
    })
    .expect("start counter-server");
    let upstream = format!(
        "[[upstream]]\nid = \"counter\"\nurl = \"{}\"\nheaders = {{ Authorization = \"Bearer ${{MCPGW_E2E_TOKEN}}\" }}\n",
        counter.url()
    );
    let gateway = Gateway::start(&GatewayConfig {
        extra: upstream.clone(),
        env: vec![("MCPGW_E2E_TOKEN".into(), "e2e-t0ken".into())],
        ..GatewayConfig::new(1)
    })
    .expect("start mcpgw");
    let mut client = gateway.client();
    client.initialize().await.expect("initialize");
    let reply = client
        .call_tool("increment", json!({}))
        .await
        .expect("increment");
    assert_eq!(
        reply.count().expect("a count"),
        1,
        "the upstream took the header"
    );
    let (status, config) = admin_get(&gateway, "/admin/config").await;
    assert_eq!(status, 200, "{config}");
    assert!(!config.contains("e2e-t0ken"), "{config}");

    // The variable unset: refused, naming key and variable.
    let dir = TempDir::new("mcpgw-secret").expect("temp dir");
    let file = dir.path().join("s.toml");
    std::fs::write(&file, &upstream).expect("write config");
    let out = Command::new(gateway_binary().expect("mcpgw binary"))
        .arg("check-config")
        .arg(&file)
        .env_remove("MCPGW_E2E_TOKEN")
        .output()
        .expect("run check-config");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(":4: upstream[0].headers: header \"Authorization\": ${MCPGW_E2E_TOKEN}: MCPGW_E2E_TOKEN is not set"),
        "{err}"
    );
}

/// Under journald (stderr is the stream `JOURNAL_STREAM` names) every line,
/// the supervisor's and the workers', starts with its syslog priority, so
/// that `journalctl -p warning` selects warnings and errors.
#[tokio::test]
async fn under_journald_every_line_carries_its_priority() {
    let counter = start_counter!().expect("start counter-server");
    let dir = TempDir::new("mcpgw-journal").expect("temp dir");
    let config = GatewayConfig {
        journal_stream: true,
        runtime_dir: Some(dir.path().to_path_buf()),
        ..GatewayConfig::new(2).upstream("counter", &counter.url())
    };
    let mut gateway = Gateway::start(&config).expect("start mcpgw");
    // JSON by default under journald: the announcements are JSON.
    assert!(
        gateway
            .stdout_lines
            .iter()
            .all(|l| serde_json::from_str::<Value>(l).is_ok()),
        "{:?}",
        gateway.stdout_lines
    );
    let mut client = gateway.client();
    client.initialize().await.expect("initialize");

    // A warning: runtime_dir changes only with a restart.
    let moved = TempDir::new("mcpgw-journal-moved").expect("temp dir");
    write_config(
        &gateway,
        &GatewayConfig {
            runtime_dir: Some(moved.path().to_path_buf()),
            ..config.clone()
        },
    );
    gateway.signal(Signal::SIGHUP).expect("SIGHUP");
    wait_for_reloads(&gateway, "ok", 1.0).await;
    // An error: a file that does not parse.
    std::fs::write(gateway.config_path(), "workers = [").expect("rewrite config");
    gateway.signal(Signal::SIGHUP).expect("SIGHUP");
    wait_for_reloads(&gateway, "failed", 1.0).await;

    gateway.signal(Signal::SIGTERM).expect("SIGTERM");
    assert!(
        gateway
            .wait_exit(Duration::from_secs(60))
            .await
            .expect("exit")
            .success()
    );
    let log = gateway.log();
    let line_with = |text: &str| {
        log.lines()
            .find(|l| l.contains(text))
            .unwrap_or_else(|| panic!("no line with {text:?} in:\n{log}"))
    };
    assert!(line_with("runtime_dir stays").starts_with("<4>{"), "{log}");
    assert!(line_with("reload refused").starts_with("<3>{"), "{log}");
    assert!(line_with("reload applied").starts_with("<6>{"), "{log}");
    // Worker lines too: they inherit stderr and the variable.
    assert!(
        line_with("\"target\":\"mcpgw_worker").starts_with("<6>{"),
        "{log}"
    );
    for line in log.lines().filter(|l| !l.is_empty()) {
        let json = ["<3>", "<4>", "<6>", "<7>"]
            .iter()
            .find_map(|p| line.strip_prefix(p))
            .unwrap_or_else(|| panic!("no priority prefix: {line:?}"));
        assert!(
            serde_json::from_str::<Value>(json).is_ok(),
            "not JSON after the prefix: {line:?}"
        );
    }
}

/// The container image's default configuration and compose.yaml's pass
/// `check-config` as shipped (so a renamed key cannot break them unseen): the
/// image's listens off loopback with `auth = "off"` said explicitly, and
/// compose's takes alpha's token from the environment and is refused without
/// it. The Dockerfile and compose.yaml use the files under those paths.
#[test]
fn the_container_configs_pass_check_config() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let check = |file: &str, token: Option<&str>| {
        let mut cmd = Command::new(gateway_binary().expect("mcpgw binary"));
        cmd.arg("check-config")
            .arg(root.join(file))
            .env_remove("ALPHA_TOKEN")
            .stdin(Stdio::null());
        if let Some(token) = token {
            cmd.env("ALPHA_TOKEN", token);
        }
        let out = cmd.output().expect("run mcpgw check-config");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };

    let (ok, text) = check("deploy/container/mcpgw.toml", None);
    assert!(ok, "{text}");
    assert!(
        text.contains("0 upstreams") && text.contains("auth = \"off\""),
        "{text}"
    );
    let (ok, text) = check("deploy/container/compose.toml", Some("s3cret"));
    assert!(ok, "{text}");
    assert!(text.contains("2 upstreams"), "{text}");
    let (ok, text) = check("deploy/container/compose.toml", None);
    assert!(!ok, "accepted without ALPHA_TOKEN: {text}");
    assert!(text.contains("ALPHA_TOKEN is not set"), "{text}");

    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).expect("Dockerfile");
    assert!(
        dockerfile.contains("COPY deploy/container/mcpgw.toml /etc/mcpgw/mcpgw.toml"),
        "{dockerfile}"
    );
    let compose = std::fs::read_to_string(root.join("compose.yaml")).expect("compose.yaml");
    assert!(
        compose.contains("./deploy/container/compose.toml:/etc/mcpgw/mcpgw.toml:ro"),
        "{compose}"
    );
}

/// The shipped unit, alone and with the drop-ins in deploy/mcpgw.service.d,
/// passes `systemd-analyze verify`, and `systemd-analyze security` finds the
/// hardening the unit promises. systemd < 253 does not know
/// Type=notify-reload (systemd-before-253.conf is for it): its two
/// complaints about that are the only ones accepted there.
#[test]
fn the_systemd_unit_verifies_and_keeps_its_hardening() {
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let bin = gateway_binary().expect("mcpgw binary");
    let version = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .expect(
            "systemd-analyze is installed (Debian package systemd; scripts/test-all.sh installs it)",
        );
    let version: u32 = String::from_utf8_lossy(&version.stdout)
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("`systemd-analyze --version` starts with `systemd N`");
    let accepted = |line: &str| {
        version < 253
            && (line.ends_with("Failed to parse service type, ignoring: notify-reload")
                || line.ends_with("Unknown key 'ReloadSignal' in section [Service], ignoring."))
    };

    let unit = std::fs::read_to_string(deploy.join("mcpgw.service")).expect("read the unit");
    // verify checks that ExecStart's program exists: the one just built.
    let unit = unit.replace("/usr/local/bin/mcpgw", &bin.to_string_lossy());
    for drop_ins in [false, true] {
        let dir = TempDir::new("mcpgw-unit").expect("temp dir");
        std::fs::write(dir.path().join("mcpgw.service"), &unit).expect("write the unit");
        std::fs::copy(deploy.join("mcpgw.socket"), dir.path().join("mcpgw.socket"))
            .expect("copy the socket unit");
        if drop_ins {
            let to = dir.path().join("mcpgw.service.d");
            std::fs::create_dir(&to).expect("drop-in dir");
            for entry in std::fs::read_dir(deploy.join("mcpgw.service.d")).expect("drop-ins") {
                let entry = entry.expect("drop-in entry");
                std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy a drop-in");
            }
        }
        let out = Command::new("systemd-analyze")
            .args(["verify", "./mcpgw.service", "./mcpgw.socket"])
            .current_dir(dir.path())
            .output()
            .expect("run systemd-analyze verify");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let complaints: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.trim().is_empty() && !accepted(l))
            .collect();
        assert!(
            out.status.success() && complaints.is_empty(),
            "systemd-analyze verify (drop-ins: {drop_ins}), systemd {version}:\n{stderr}"
        );
        if drop_ins {
            continue;
        }
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "./mcpgw.service"])
            .current_dir(dir.path())
            .output()
            .expect("run systemd-analyze security");
        let report = String::from_utf8_lossy(&out.stdout);
        for setting in [
            "ProtectProc=",
            "ProcSubset=",
            "UMask=",
            "PrivateUsers=",
            "PrivateMounts=",
            "SystemCallFilter=~@privileged",
            "SystemCallFilter=~@resources",
            "MemoryDenyWriteExecute=",
            "CapabilityBoundingSet=~CAP_NET_(BIND_SERVICE|BROADCAST|RAW)",
        ] {
            let line = report
                .lines()
                .find(|l| l.split_whitespace().nth(1) == Some(setting))
                .unwrap_or_else(|| panic!("{setting} not in the report:\n{report}"));
            assert!(line.starts_with('✓'), "{line}\n{report}");
        }
        let exposure: f64 = report
            .lines()
            .find_map(|l| l.split("Overall exposure level for mcpgw.service: ").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no overall exposure in:\n{report}"));
        assert!(exposure <= 1.2, "exposure {exposure}:\n{report}");
    }
}

/// `mcpgw_requests_total` tells a JSON-RPC error, a failed tool, an
/// unreachable upstream and a refused request from a success.
#[tokio::test]
async fn request_outcomes_tell_failures_apart() {
    let (counter, gateway) = started(1).await;
    let mut client = gateway.client();
    client.initialize().await.expect("initialize");
    let count = |method: &'static str, outcome: &'static str| {
        let gateway = &gateway;
        async move {
            let series = format!(
                "mcpgw_requests_total{{worker=\"0\",method=\"{method}\",outcome=\"{outcome}\"}}"
            );
            mcpgw_tests::ops::metric_sum(gateway, &series).await
        }
    };

    assert_eq!(client.count("increment").await.expect("increment"), 1);
    assert_eq!(count("tools/call", "ok").await, 1.0);

    let failed = client.call_tool("fail", json!({})).await.expect("fail");
    assert_eq!(failed.result().expect("result")["isError"], true);
    assert_eq!(count("tools/call", "tool_error").await, 1.0);

    let unknown = client
        .call_tool("no_such_tool", json!({}))
        .await
        .expect("call");
    assert!(unknown.error().is_some(), "{unknown:?}");
    assert_eq!(count("tools/call", "jsonrpc_error").await, 1.0);

    let malformed = client
        .send(&client.post_request("{not json".to_owned()))
        .await
        .expect("POST");
    assert_eq!(malformed.status, 400, "{}", malformed.text());
    assert_eq!(count("other", "refused").await, 1.0);

    drop(counter);
    let down = client
        .call_tool("increment", json!({}))
        .await
        .expect("call");
    assert!(down.error().is_some(), "{down:?}");
    assert_eq!(count("tools/call", "upstream_error").await, 1.0);
    assert_eq!(
        count("tools/call", "ok").await,
        1.0,
        "no failure counted as ok"
    );
}

/// `[log] access = true`: one access line per MCP message (endpoint, method, the tool's
/// public name, upstream, a session id prefix, outcome), never the whole session id; the
/// per-upstream and per-tool families say which upstream and which tool answered how; every
/// process exports its `process_*` metrics (the supervisor's unlabelled, each worker's under
/// its `worker` label).
#[tokio::test]
async fn access_log_and_per_upstream_metrics_say_what_went_where() {
    let counter = start_counter!().expect("start counter-server");
    let mut config = GatewayConfig::new(2).upstream("counter", &counter.url());
    config.extra.push_str("\n[log]\naccess = true\n");
    let gateway = Gateway::start(&config).expect("start mcpgw");
    let mut client = gateway.client();
    client.initialize().await.expect("initialize");
    assert_eq!(client.count("increment").await.expect("increment"), 1);
    let failed = client.call_tool("fail", json!({})).await.expect("fail");
    assert_eq!(failed.result().expect("result")["isError"], true);
    let session = client.session_id().expect("session id").to_owned();

    let access_lines = |log: &str| -> Vec<String> {
        log.lines()
            .filter(|l| l.contains("mcpgw::access"))
            .map(str::to_owned)
            .collect()
    };
    let lines = mcpgw_tests::wait_until("access lines", Duration::from_secs(10), || async {
        let lines = access_lines(&gateway.log());
        let done = lines.iter().any(|l| l.contains("tool_error"));
        Ok(done.then_some(lines))
    })
    .await
    .expect("the access log has the failed call");
    let call = lines
        .iter()
        .find(|l| l.contains("increment"))
        .unwrap_or_else(|| panic!("no access line for increment in {lines:#?}"));
    for field in ["/mcp", "tools/call", "counter", "ok", &session[..8]] {
        assert!(call.contains(field), "{field} missing from {call}");
    }
    let fail = lines
        .iter()
        .find(|l| l.contains("tool_error"))
        .unwrap_or_else(|| panic!("no tool_error line in {lines:#?}"));
    assert!(fail.contains("fail"), "{fail}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("initialize") && l.contains(&session[..8])),
        "the initialize line names its new session: {lines:#?}"
    );
    assert!(
        lines.iter().all(|l| !l.contains(&session)),
        "an access line carries the whole session id: {lines:#?}"
    );

    let (status, text) = admin_get(&gateway, "/metrics").await;
    assert_eq!(status, 200, "{text}");
    let has = |prefix: &str, parts: &[&str]| {
        text.lines()
            .any(|l| l.starts_with(prefix) && parts.iter().all(|p| l.contains(p)))
    };
    assert!(
        has(
            "mcpgw_upstream_requests_total{",
            &["upstream=\"counter\"", "outcome=\"ok\""]
        ),
        "{text}"
    );
    assert!(
        has(
            "mcpgw_upstream_request_duration_seconds_count{",
            &["upstream=\"counter\""]
        ),
        "{text}"
    );
    assert!(
        has(
            "mcpgw_tool_calls_total{",
            &["tool=\"increment\"", "outcome=\"ok\""]
        ),
        "{text}"
    );
    assert!(
        has(
            "mcpgw_tool_calls_total{",
            &["tool=\"fail\"", "outcome=\"tool_error\""]
        ),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("process_resident_memory_bytes ")),
        "the supervisor's own process metrics: {text}"
    );
    for slot in 0..gateway.workers {
        let worker = format!("worker=\"{slot}\"");
        assert!(
            has("process_resident_memory_bytes{", &[&worker]),
            "worker {slot}'s process metrics: {text}"
        );
    }
}

/// The admin API answers a wrong method on a known path with 405 and `Allow`, and an
/// unknown path with 404, both as JSON errors (after the guard: an unauthenticated
/// state-changing request is refused before any routing).
#[tokio::test]
async fn admin_api_says_which_methods_a_path_takes() {
    let (_counter, gateway) = started(1).await;
    let admin = gateway.admin.expect("admin listener");
    let mut conn = HttpConn::connect(admin).await.expect("connect to admin");
    let wrong = conn
        .send(&Request::get("/admin/reload"))
        .await
        .expect("GET /admin/reload");
    assert_eq!(wrong.status, 405, "{}", wrong.text());
    assert_eq!(wrong.header("allow"), Some("POST"), "{wrong:?}");
    let body: Value = serde_json::from_str(&wrong.text()).expect("a JSON error");
    assert!(body["error"].is_string(), "{body}");

    let mut conn = HttpConn::connect(admin).await.expect("connect to admin");
    let post = conn
        .send(&Request::post("/metrics", Vec::new()))
        .await
        .expect("POST /metrics");
    // The guard comes before the routes: a state-changing method without a token
    // learns nothing about the path.
    assert_eq!(post.status, 403, "{}", post.text());

    let (status, text) = admin_get(&gateway, "/no/such/path").await;
    assert_eq!(status, 404, "{text}");
    let body: Value = serde_json::from_str(&text).expect("a JSON error");
    assert!(body["error"].is_string(), "{body}");
    let (status, _) = admin_get(&gateway, "/healthz").await;
    assert_eq!(status, 200);
}

/// A client's W3C trace context reaches the upstream with its call, so the upstream's
/// spans join the client's trace; a malformed `traceparent` is dropped, not passed on.
#[tokio::test]
async fn the_clients_trace_context_reaches_the_upstream() {
    let (counter, gateway) = started(1).await;
    let mut client = gateway.client();
    client.initialize().await.expect("initialize");
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let call = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "increment", "arguments": {}}});
    let traced = client
        .post_request(call.to_string())
        .header("traceparent", parent)
        .header("tracestate", "congo=t61rcWkgMzE");
    let resp = client.send(&traced).await.expect("traced call");
    assert_eq!(resp.status, 200, "{}", resp.text());
    let malformed = client
        .post_request(call.to_string())
        .header("traceparent", "00-not-a-trace-01");
    let resp = client.send(&malformed).await.expect("call");
    assert_eq!(resp.status, 200, "{}", resp.text());

    let seen = counter
        .events_of("traceparent")
        .await
        .expect("counter events");
    assert_eq!(seen.len(), 1, "only the well-formed one: {seen:?}");
    assert_eq!(seen[0]["traceparent"], parent);
    assert_eq!(seen[0]["tracestate"], "congo=t61rcWkgMzE");
    assert_eq!(seen[0]["method"], "tools/call");
}
