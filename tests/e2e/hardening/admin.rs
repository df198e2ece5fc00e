//! Hardening regressions: the admin listener (defect 5: Host/Origin, the
//! admin token, secrets in `/admin/config` and in config errors) and the
//! runtime directory (defect 6: unpredictable, private, checked).

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;

use mcpgw_tests::gateway::{config_accepted, gateway_binary};
use mcpgw_tests::ops::{admin_get, supervisor_metric};
use mcpgw_tests::process::TempDir;

use super::*;

const TOKEN: &str = "adm1n-t0ken";
const RELOADS_OK: &str = "mcpgw_reloads_total{result=\"ok\"}";
const RELOADS_FAILED: &str = "mcpgw_reloads_total{result=\"failed\"}";

/// Writes `token` to a file in `dir`; the `admin_token_file` line naming it.
fn token_file(dir: &TempDir, token: &str) -> (PathBuf, String) {
    let path = dir.path().join("admin.token");
    std::fs::write(&path, format!("{token}\n")).expect("write the token file");
    let line = format!(
        "admin_token_file = {}",
        Value::from(path.to_string_lossy().as_ref())
    );
    (path, line)
}

async fn admin_send(gateway: &Gateway, request: &Request) -> Response {
    let admin = gateway.admin.expect("the admin listener");
    let mut conn = HttpConn::connect(admin).await.expect("connect to admin");
    conn.send(request).await.expect("an admin answer")
}

fn reload(token: Option<&str>) -> Request {
    let request = Request::post("/admin/reload", Vec::new());
    match token {
        Some(t) => request.header("Authorization", &format!("Bearer {t}")),
        None => request,
    }
}

/// A reload answers only once it is applied or refused, so the counters are
/// final when its answer (or its refusal) has arrived.
async fn reloads(gateway: &Gateway) -> (f64, f64) {
    (
        supervisor_metric(gateway, RELOADS_OK).await,
        supervisor_metric(gateway, RELOADS_FAILED).await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_rebinding_requests_are_refused_and_not_applied() {
    let secrets = TempDir::new("mcpgw-admin").expect("temp dir");
    let (_, line) = token_file(&secrets, TOKEN);
    let mut setup = Setup::new(GatewayConfig {
        top: line,
        ..GatewayConfig::new(1)
    })
    .await;
    let gateway = &setup.gateway;

    // What a page on evil.com gets after rebinding its name to 127.0.0.1:
    // refused even with the right token (a page cannot know it, but the
    // Host check must not depend on that).
    let rebound = reload(Some(TOKEN))
        .header("Host", "evil.com")
        .header("Origin", "http://evil.com");
    let response = admin_send(gateway, &rebound).await;
    assert_eq!(response.status, 403, "{}", response.text());
    assert!(response.text().contains("Host"), "{}", response.text());
    // A loopback Host from a foreign page: the Origin gives it away.
    let foreign = reload(Some(TOKEN)).header("Origin", "http://evil.com");
    let response = admin_send(gateway, &foreign).await;
    assert_eq!(response.status, 403, "{}", response.text());
    assert!(response.text().contains("Origin"), "{}", response.text());
    assert_eq!(reloads(gateway).await, (0.0, 0.0), "nothing was reloaded");

    // Reading is refused to rebound names as well.
    for path in ["/admin/config", "/metrics"] {
        let response =
            admin_send(gateway, &Request::get(path).header("Host", "evil.com:9090")).await;
        assert_eq!(response.status, 403, "{path}: {}", response.text());
    }

    // The same reload from the operator's side is applied: the counter
    // would have seen the refused ones.
    let response = admin_send(gateway, &reload(Some(TOKEN))).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(reloads(gateway).await, (1.0, 0.0));
    setup.healthy_still_works().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_without_a_token_file_is_refused_but_sighup_works() {
    let mut setup = Setup::new(GatewayConfig::new(1)).await;
    let gateway = &setup.gateway;
    let response = admin_send(gateway, &reload(Some("anything"))).await;
    assert_eq!(response.status, 403, "{}", response.text());
    assert!(
        response.text().contains("admin_token_file"),
        "the refusal says what to set: {}",
        response.text()
    );
    assert_eq!(reloads(gateway).await, (0.0, 0.0));

    // Reading on loopback needs no token.
    let (status, metrics) = admin_get(gateway, "/metrics").await;
    assert_eq!(status, 200, "{metrics}");
    let (status, body) = admin_get(gateway, "/admin/workers").await;
    assert_eq!(status, 200, "{body}");

    gateway.signal(Signal::SIGHUP).expect("SIGHUP");
    wait_until("the SIGHUP reload", Duration::from_secs(30), || async {
        Ok((reloads(gateway).await == (1.0, 0.0)).then_some(()))
    })
    .await
    .expect("SIGHUP still reloads");
    setup.healthy_still_works().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_needs_the_right_token_and_a_rotated_one_takes_over() {
    let secrets = TempDir::new("mcpgw-admin").expect("temp dir");
    let (path, line) = token_file(&secrets, TOKEN);
    let mut setup = Setup::new(GatewayConfig {
        top: line,
        ..GatewayConfig::new(1)
    })
    .await;
    let gateway = &setup.gateway;
    for (what, request) in [
        ("no token", reload(None)),
        ("a wrong token", reload(Some("adm1n-t0ke"))),
        ("a longer token", reload(Some("adm1n-t0ken2"))),
        (
            "another scheme",
            reload(None).header("Authorization", &format!("Basic {TOKEN}")),
        ),
    ] {
        let response = admin_send(gateway, &request).await;
        assert_eq!(response.status, 401, "{what}: {}", response.text());
        assert_eq!(
            response.header("www-authenticate"),
            Some("Bearer"),
            "{what}"
        );
    }
    assert_eq!(reloads(gateway).await, (0.0, 0.0), "nothing was reloaded");

    // `mcpgw status` reads with or without the token on loopback.
    let admin = gateway.admin.expect("admin").to_string();
    let bin = gateway_binary().expect("mcpgw binary");
    let out = Command::new(bin)
        .args(["status", "--admin", &admin, "--token-file"])
        .arg(&path)
        .output()
        .expect("run mcpgw status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(bin)
        .args(["status", "--admin", &admin, "--token-file"])
        .arg(secrets.path().join("missing"))
        .output()
        .expect("run mcpgw status");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--token-file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The right token: applied. A new token in the file is read by that
    // reload, and from then on only it is accepted.
    std::fs::write(&path, "r0tated\n").expect("rotate the token");
    let response = admin_send(gateway, &reload(Some(TOKEN))).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let response = admin_send(gateway, &reload(Some(TOKEN))).await;
    assert_eq!(response.status, 401, "{}", response.text());
    let response = admin_send(gateway, &reload(Some("r0tated"))).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(reloads(gateway).await, (2.0, 0.0));

    // An emptied token file fails the reload and keeps the token in force.
    std::fs::write(&path, "\n").expect("empty the token file");
    let response = admin_send(gateway, &reload(Some("r0tated"))).await;
    assert_eq!(response.status, 422, "{}", response.text());
    assert!(
        response.text().contains("admin_token_file"),
        "{}",
        response.text()
    );
    assert_eq!(reloads(gateway).await, (2.0, 1.0));
    setup.healthy_still_works().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_config_shows_no_url_or_argument_secret() {
    let mut setup = Setup::new(GatewayConfig {
        extra: concat!(
            "[[upstream]]\nid = \"keyed\"\n",
            "url = \"http://127.0.0.1:9/mcp?api_key=qu3ry-s3cret&region=eu\"\n\n",
            "[[upstream]]\nid = \"local\"\ntransport = \"stdio\"\ncommand = \"mcp-server\"\n",
            "args = [\"--api-key\", \"arg-s3cret\"]\n",
        )
        .to_owned(),
        // The other upstreams are never reached: /mcp serves the counter.
        ..GatewayConfig::new(1).endpoint("/mcp", &["counter"])
    })
    .await;
    let (status, config) = admin_get(&setup.gateway, "/admin/config").await;
    assert_eq!(status, 200, "{config}");
    for secret in ["qu3ry-s3cret", "arg-s3cret", "--api-key"] {
        assert!(!config.contains(secret), "{secret} shown: {config}");
    }
    let doc: Value = serde_json::from_str(&config).expect("JSON");
    let keyed = doc["upstream"]
        .as_array()
        .and_then(|u| u.iter().find(|u| u["id"] == "keyed"))
        .expect("the keyed upstream");
    assert_eq!(
        keyed["url"], "http://127.0.0.1:9/mcp?api_key=<redacted>&region=<redacted>",
        "the URL stays recognisable: {config}"
    );
    setup.healthy_still_works().await;
}

#[test]
fn config_errors_never_print_a_password_and_name_the_admin_token_file() {
    let dir = TempDir::new("mcpgw-check").expect("temp dir");
    let (ok, out) = config_accepted(
        dir.path(),
        "[[upstream]]\nid = \"a\"\nurl = \"http://user:s3cret@127.0.0.1:1/mcp?key=k3y\"\n",
    );
    assert!(!ok, "{out}");
    assert!(out.contains("upstream[0].url"), "{out}");
    assert!(!out.contains("s3cret") && !out.contains("k3y"), "{out}");
    let (ok, out) = config_accepted(
        dir.path(),
        "[store]\nredis_url = \"http://:hunter2@127.0.0.1:6379\"\n",
    );
    assert!(!ok && out.contains("store.redis_url"), "{out}");
    assert!(!out.contains("hunter2"), "{out}");

    // The token file is read by check-config: missing or empty is an error
    // that names the key and the file.
    let token = dir.path().join("admin.token");
    let line = format!(
        "admin_token_file = {}\n",
        Value::from(token.to_string_lossy().as_ref())
    );
    let (ok, out) = config_accepted(dir.path(), &line);
    assert!(
        !ok && out.contains("admin_token_file") && out.contains("admin.token"),
        "{out}"
    );
    std::fs::write(&token, "  \n").expect("write");
    let (ok, out) = config_accepted(dir.path(), &line);
    assert!(
        !ok && out.contains("admin_token_file") && out.contains("empty"),
        "{out}"
    );
    std::fs::write(&token, "t0ken\n").expect("write");
    let (ok, out) = config_accepted(dir.path(), &line);
    assert!(ok, "{out}");
    assert!(!out.contains("t0ken"), "{out}");

    // An admin listener off loopback without a token file is refused.
    let (ok, out) = config_accepted(dir.path(), "admin_listen = \"0.0.0.0:9090\"\n");
    assert!(!ok && out.contains("admin_token_file"), "{out}");
}

/// The gateways' directories (`mcpgw.*`) in `base`.
fn runtime_dirs(base: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(base)
        .expect("read the runtime base")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("mcpgw."))
        })
        .collect();
    dirs.sort();
    dirs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_directories_are_private_and_unpredictable() {
    let counter = start_counter!().expect("start counter-server");
    let base = TempDir::new("mcpgw-runtime").expect("temp dir");
    // One gateway told by `runtime_dir`, one by `$XDG_RUNTIME_DIR`: the
    // same parent, the same moment.
    let configured = GatewayConfig {
        runtime_dir: Some(base.path().to_owned()),
        ..GatewayConfig::new(1).upstream("counter", &counter.url())
    };
    let from_env = GatewayConfig {
        env: vec![(
            "XDG_RUNTIME_DIR".to_owned(),
            base.path().to_string_lossy().into_owned(),
        )],
        ..GatewayConfig::new(1).upstream("counter", &counter.url())
    };
    let mut first = Gateway::start(&configured).expect("start the first gateway");
    let second = Gateway::start(&from_env).expect("start the second gateway");
    let dirs = runtime_dirs(base.path());
    assert_eq!(dirs.len(), 2, "one directory each: {dirs:?}");
    for dir in &dirs {
        let mode = std::fs::metadata(dir).expect("stat").mode() & 0o7777;
        assert_eq!(mode, 0o700, "{dir:?}");
        let name = dir.file_name().and_then(|n| n.to_str()).expect("name");
        for pid in [first.pid(), second.pid()] {
            assert_ne!(name, format!("mcpgw.{pid}"), "a predictable name");
        }
        assert!(
            dir.join("w0.sock").exists(),
            "{dir:?} holds a worker socket"
        );
    }
    let mut client = second.client();
    client.initialize().await.expect("initialize");
    assert_eq!(client.count("increment").await.expect("increment"), 1);

    // A clean stop removes the gateway's own directory, and only it.
    first.signal(Signal::SIGTERM).expect("SIGTERM");
    let status = first
        .wait_exit(Duration::from_secs(60))
        .await
        .expect("the gateway exits");
    assert!(status.success(), "{status}");
    assert_eq!(runtime_dirs(base.path()).len(), 1);
}

#[test]
fn unsafe_runtime_dirs_are_refused() {
    let base = TempDir::new("mcpgw-runtime").expect("temp dir");
    let open = base.path().join("open");
    std::fs::create_dir(&open).expect("mkdir");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let config = GatewayConfig {
        runtime_dir: Some(open.clone()),
        ..GatewayConfig::new(1)
    };
    let e = format!(
        "{:#}",
        Gateway::start(&config).expect_err("a world-writable runtime_dir")
    );
    assert!(e.contains(&open.display().to_string()), "{e}");
    assert!(
        e.contains("mode 0777") && e.contains("writable by group or others"),
        "{e}"
    );
    assert!(runtime_dirs(&open).is_empty(), "nothing was created in it");

    // Someone else's directory, closed to others: refused as well (the
    // tests run as root, so the directory can be given away).
    let theirs = base.path().join("theirs");
    std::fs::create_dir(&theirs).expect("mkdir");
    let me = std::fs::metadata(&theirs).expect("stat").uid();
    if me != 0 {
        eprintln!("not root: cannot give a directory away; the ownership check is unit-tested");
        return;
    }
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).expect("chown to nobody");
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let config = GatewayConfig {
        runtime_dir: Some(theirs.clone()),
        ..GatewayConfig::new(1)
    };
    let e = format!(
        "{:#}",
        Gateway::start(&config).expect_err("another user's runtime_dir")
    );
    assert!(e.contains(&theirs.display().to_string()), "{e}");
    assert!(
        e.contains("owned by another user") && e.contains("uid 65534"),
        "{e}"
    );
}
