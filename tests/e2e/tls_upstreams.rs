//! `https://` upstreams: the real `counter-server` behind its own rustls listener, reached
//! by the gateway's pooled client with a per-upstream `ca_file` (and, for mTLS,
//! `client_cert_file`/`client_key_file`). A session's counter stays continuous over
//! TLS; a wrong CA, a wrong host name or a missing client certificate fail clearly for
//! that upstream only; a reload that changes an upstream's TLS files re-opens its
//! sessions; `check-config` refuses half an identity. Certificates come from a
//! throwaway PKI (`openssl`), ports are ephemeral, every process is killed on drop.

use std::path::Path;
use std::time::Duration;

use mcpgw_tests::gateway::check_config;
use mcpgw_tests::ops::admin_get;
use mcpgw_tests::pki::Pki;
use mcpgw_tests::process::TempDir;
use mcpgw_tests::{
    CounterOpts, CounterServer, CounterTls, Gateway, GatewayConfig, McpClient, start_counter,
    wait_until,
};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

/// A TOML string.
fn quote(s: &str) -> String {
    Value::from(s).to_string()
}

fn quote_path(p: &Path) -> String {
    quote(&p.to_string_lossy())
}

/// A CA and a server certificate for 127.0.0.1 (`server.pem`/`server.key`).
fn server_pki() -> Pki {
    let pki = Pki::new();
    pki.issue("server", "127.0.0.1", "subjectAltName=IP:127.0.0.1");
    pki
}

/// A counter-server that also serves TLS with `pki`'s server certificate; with
/// `client_ca`, TLS clients must present a certificate signed by it.
fn tls_counter(name: &str, pki: &Pki, client_ca: Option<&Path>) -> CounterServer {
    start_counter!(CounterOpts {
        tls: Some(CounterTls {
            cert: pki.path("server.pem"),
            key: pki.path("server.key"),
            client_ca: client_ca.map(Path::to_path_buf),
        }),
        ..CounterOpts::named(name)
    })
    .expect("start counter-server with TLS")
}

/// One `[[upstream]]` table; `tls_keys` are extra `key = path` lines.
fn upstream_toml(id: &str, url: &str, tls_keys: &[(&str, &Path)]) -> String {
    let mut t = format!("[[upstream]]\nid = {}\nurl = {}\n", quote(id), quote(url));
    for (key, path) in tls_keys {
        t.push_str(&format!("{key} = {}\n", quote_path(path)));
    }
    t.push('\n');
    t
}

fn gateway_with(workers: usize, upstreams: &[String]) -> Gateway {
    let config = GatewayConfig {
        extra: upstreams.concat(),
        ..GatewayConfig::new(workers)
    };
    Gateway::start(&config).expect("start mcpgw")
}

/// The JSON-RPC error message of a call that must fail.
async fn call_error(client: &mut McpClient, tool: &str) -> String {
    let reply = client.call_tool(tool, json!({})).await.expect(tool);
    let (_, message) = reply
        .error()
        .unwrap_or_else(|| panic!("{tool} must fail, got {:?}", reply.result()));
    message
}

/// `mcpgw_upstream_errors_total` for one upstream and kind, over every worker.
async fn upstream_errors(gateway: &Gateway, upstream: &str, kind: &str) -> f64 {
    let (_, text) = admin_get(gateway, "/metrics").await;
    let (u, k) = (
        format!("upstream=\"{upstream}\""),
        format!("kind=\"{kind}\""),
    );
    text.lines()
        .filter(|l| l.starts_with("mcpgw_upstream_errors_total{"))
        .filter(|l| l.contains(&u) && l.contains(&k))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A session's counter through an https upstream (ca_file) stays its own and
/// continuous, on a gateway with two workers; a reload that puts new contents in the
/// same `ca_file` path re-opens the upstream's sessions, one that changes nothing
/// keeps them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateful_client_counts_through_an_https_upstream() {
    let pki = server_pki();
    let counter = tls_counter("secure", &pki, None);
    let url = counter.https_url("127.0.0.1").expect("TLS port");
    let ca = pki.path("ca.pem");
    let gateway = gateway_with(2, &[upstream_toml("secure", &url, &[("ca_file", &ca)])]);

    let mut a = gateway.client();
    let mut b = gateway.client();
    a.initialize().await.expect("initialize a");
    b.initialize().await.expect("initialize b");
    for want in 1..=3 {
        assert_eq!(a.count("increment").await.expect("a increments"), want);
    }
    assert_eq!(b.count("increment").await.expect("b increments"), 1);
    assert_eq!(a.count("get_count").await.expect("a reads"), 3);
    let stats = counter.stats().await.expect("stats");
    assert_eq!(
        stats.initialize, 2,
        "one upstream session per client: {stats:?}"
    );

    // The same config, the same files: nothing to re-open.
    gateway.signal(Signal::SIGHUP).expect("SIGHUP");
    wait_for_reloads(&gateway, 1.0).await;
    assert_eq!(a.count("increment").await.expect("a after reload"), 4);
    assert_eq!(counter.stats().await.expect("stats").initialize, 2);

    // New contents under the same ca_file path (the CA, and another one beside it):
    // a connection change, so the upstream sessions are closed and opened anew.
    let other = Pki::with_ca_name("another CA");
    let mut bundle = std::fs::read(&ca).expect("read CA");
    bundle.extend(std::fs::read(other.path("ca.pem")).expect("read other CA"));
    std::fs::write(&ca, bundle).expect("rewrite ca_file");
    gateway.signal(Signal::SIGHUP).expect("SIGHUP");
    wait_for_reloads(&gateway, 2.0).await;
    wait_until(
        "the old upstream sessions closed",
        Duration::from_secs(20),
        || async { Ok((counter.stats().await?.delete >= 2).then_some(())) },
    )
    .await
    .expect("re-opened on TLS change");
    assert_eq!(a.count("increment").await.expect("a after TLS change"), 1);
    assert_eq!(b.count("increment").await.expect("b after TLS change"), 1);
    assert_eq!(counter.stats().await.expect("stats").initialize, 4);
}

async fn wait_for_reloads(gateway: &Gateway, count: f64) {
    let sample = "mcpgw_reloads_total{result=\"ok\"}";
    wait_until("the reload", Duration::from_secs(30), || async {
        let n = mcpgw_tests::ops::supervisor_metric(gateway, sample).await;
        Ok((n >= count).then_some(()))
    })
    .await
    .expect("reload applied");
}

/// A server certificate from an unknown CA, and one for another name, are refused:
/// the client gets a JSON-RPC error naming the upstream and rustls's reason, the
/// failure is counted as kind "tls", and the plaintext upstream of the same endpoint
/// (and the gateway) carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_or_host_name_is_refused_and_nothing_else_is_affected() {
    let pki = server_pki();
    let stranger = Pki::with_ca_name("a stranger's CA");
    let secure = tls_counter("secure", &pki, None);
    let plain = start_counter!(CounterOpts::named("plain")).expect("plain counter-server");
    let ca = pki.path("ca.pem");
    let gateway = gateway_with(
        1,
        &[
            upstream_toml("plain", &plain.url(), &[]),
            upstream_toml(
                "wrongca",
                &secure.https_url("127.0.0.1").expect("TLS port"),
                &[("ca_file", &stranger.path("ca.pem"))],
            ),
            // The certificate names IP 127.0.0.1 only.
            upstream_toml(
                "wrongname",
                &secure.https_url("localhost").expect("TLS port"),
                &[("ca_file", &ca)],
            ),
        ],
    );
    let mut client = gateway.client();
    client.initialize().await.expect("initialize");
    assert_eq!(client.count("plain__increment").await.expect("plain"), 1);

    let message = call_error(&mut client, "wrongca__increment").await;
    assert!(message.contains("upstream wrongca"), "{message}");
    assert!(message.contains("TLS handshake"), "{message}");
    assert!(message.contains("UnknownIssuer"), "{message}");

    let message = call_error(&mut client, "wrongname__increment").await;
    assert!(message.contains("upstream wrongname"), "{message}");
    assert!(
        message.contains("TLS handshake with localhost"),
        "{message}"
    );
    assert!(
        message.to_lowercase().contains("not valid for name"),
        "{message}"
    );

    assert_eq!(client.count("plain__increment").await.expect("plain"), 2);
    let mut other = gateway.client();
    other.initialize().await.expect("a new session still opens");
    assert_eq!(other.count("plain__increment").await.expect("plain"), 1);
    assert_eq!(secure.stats().await.expect("stats").initialize, 0);

    assert!(upstream_errors(&gateway, "wrongca", "tls").await >= 1.0);
    assert!(upstream_errors(&gateway, "wrongname", "tls").await >= 1.0);
    let log = gateway.log();
    assert!(
        log.contains("upstream wrongca") && log.contains("UnknownIssuer"),
        "the failure is logged with the upstream and the reason:\n{log}"
    );
}

/// A legacy HTTP+SSE upstream at an `https://` url: its event stream and its message
/// POSTs both go over TLS with the upstream's `ca_file`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_sse_upstream_over_https() {
    let pki = server_pki();
    let counter = tls_counter("legacy", &pki, None);
    let port = counter.tls_addr.expect("TLS port").port();
    let upstream = format!(
        "[[upstream]]\nid = \"old\"\ntransport = \"sse\"\nurl = \"https://127.0.0.1:{port}/sse\"\n\
         ca_file = {}\n",
        quote_path(&pki.path("ca.pem"))
    );
    let gateway = gateway_with(1, &[upstream]);
    let mut client = gateway.client();
    client.initialize().await.expect("initialize");
    for want in 1..=3 {
        assert_eq!(client.count("increment").await.expect("increment"), want);
    }
    assert_eq!(counter.stats().await.expect("stats").initialize, 1);
}

/// An upstream that requires a client certificate works with
/// `client_cert_file`/`client_key_file`, and fails clearly for an upstream entry
/// without them (same server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_upstream_needs_the_client_certificate() {
    let pki = server_pki();
    pki.issue("client", "mcpgw gateway", "extendedKeyUsage=clientAuth");
    let ca = pki.path("ca.pem");
    let counter = tls_counter("mutual", &pki, Some(&ca));
    let url = counter.https_url("127.0.0.1").expect("TLS port");
    let gateway = gateway_with(
        1,
        &[
            upstream_toml(
                "withcert",
                &url,
                &[
                    ("ca_file", &ca),
                    ("client_cert_file", &pki.path("client.pem")),
                    ("client_key_file", &pki.path("client.key")),
                ],
            ),
            upstream_toml("nocert", &url, &[("ca_file", &ca)]),
        ],
    );
    let mut client = gateway.client();
    client.initialize().await.expect("initialize");
    assert_eq!(client.count("withcert__increment").await.expect("mTLS"), 1);
    assert_eq!(client.count("withcert__increment").await.expect("mTLS"), 2);

    let message = call_error(&mut client, "nocert__increment").await;
    assert!(message.contains("upstream nocert"), "{message}");
    assert!(message.contains("unreachable"), "{message}");

    assert_eq!(client.count("withcert__increment").await.expect("mTLS"), 3);
    assert_eq!(counter.stats().await.expect("stats").initialize, 1);
    assert!(upstream_errors(&gateway, "nocert", "tls").await >= 1.0);
    assert_eq!(upstream_errors(&gateway, "withcert", "tls").await, 0.0);
}

/// `check-config` reads an https upstream's files: half a client identity, a missing
/// file, a key that is not a key, and TLS keys on an http:// url are refused, each
/// naming the key; a complete one passes.
#[test]
fn check_config_refuses_half_an_identity_and_bad_files() {
    let pki = server_pki();
    pki.issue("client", "mcpgw gateway", "extendedKeyUsage=clientAuth");
    let dir = TempDir::new("mcpgw-tls-check").expect("temp dir");
    let url = "https://127.0.0.1:1/mcp";
    let (ca, cert, key) = (
        pki.path("ca.pem"),
        pki.path("client.pem"),
        pki.path("client.key"),
    );

    let (code, out) = check_config(
        dir.path(),
        "cert-only.toml",
        &upstream_toml("u", url, &[("ca_file", &ca), ("client_cert_file", &cert)]),
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("upstream[0].client_key_file"), "{out}");
    assert!(out.contains("both or neither"), "{out}");

    let (code, out) = check_config(
        dir.path(),
        "key-only.toml",
        &upstream_toml("u", url, &[("client_key_file", &key)]),
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("upstream[0].client_cert_file"), "{out}");

    let missing = dir.path().join("missing.pem");
    let (code, out) = check_config(
        dir.path(),
        "missing-ca.toml",
        &upstream_toml("u", url, &[("ca_file", &missing)]),
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("upstream[0].ca_file"), "{out}");
    assert!(
        out.contains(&missing.to_string_lossy().into_owned()),
        "{out}"
    );

    // A certificate where the key should be.
    let (code, out) = check_config(
        dir.path(),
        "not-a-key.toml",
        &upstream_toml(
            "u",
            url,
            &[("client_cert_file", &cert), ("client_key_file", &cert)],
        ),
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("upstream[0].client_key_file"), "{out}");
    assert!(out.contains("no private key"), "{out}");

    let (code, out) = check_config(
        dir.path(),
        "plain-with-ca.toml",
        &upstream_toml("u", "http://127.0.0.1:1/mcp", &[("ca_file", &ca)]),
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("upstream[0].ca_file"), "{out}");
    assert!(out.contains("https://"), "{out}");

    let (code, out) = check_config(
        dir.path(),
        "good.toml",
        &upstream_toml(
            "u",
            url,
            &[
                ("ca_file", &ca),
                ("client_cert_file", &cert),
                ("client_key_file", &key),
            ],
        ),
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(": ok"), "{out}");
}
