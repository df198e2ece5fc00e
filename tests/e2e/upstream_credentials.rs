//! Upstreams with credentials of their own (`[upstream.oauth]`, the OAuth 2.1
//! client-credentials grant) through the real binary: a token endpoint served by the
//! test (`support/idp.rs`) issues tokens and publishes them to a bearer file, and
//! `counter-server --bearer-file` accepts exactly those. The gateway fetches one token
//! per worker and upstream and reuses it, refreshes it before the upstream stops
//! taking it, answers an upstream 401 by fetching anew and retrying once, fails only
//! the upstream whose token endpoint is broken (a clear JSON-RPC error, a metric, a
//! log line, backoff) and recovers with it, re-opens an upstream's sessions when its
//! secret changes on reload, and never shows the secret in `/admin/config`. Both a
//! Streamable HTTP and a legacy HTTP+SSE upstream.

use std::path::Path;
use std::time::Duration;

use mcpgw_tests::idp::{Failure, TokenEndpoint};
use mcpgw_tests::ops::{admin_get, supervisor_metric};
use mcpgw_tests::process::TempDir;
use mcpgw_tests::{
    CounterOpts, CounterServer, Gateway, GatewayConfig, McpClient, start_counter, wait_until,
};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

const CLIENT_ID: &str = "mcpgw";
const SECRET: &str = "first-s3cret";

/// A TOML string.
fn quote(s: &str) -> String {
    Value::from(s).to_string()
}

/// A counter-server that accepts only the tokens `idp` issued.
fn guarded_counter(name: &str, idp: &TokenEndpoint) -> CounterServer {
    start_counter!(CounterOpts {
        bearer_file: Some(idp.bearer_file()),
        ..CounterOpts::named(name)
    })
    .expect("start counter-server")
}

/// The client secret in a file, referenced as `${file:…}` from the config.
fn secret_file(dir: &TempDir, secret: &str) -> std::path::PathBuf {
    let path = dir.path().join("client_secret");
    std::fs::write(&path, format!("{secret}\n")).expect("write the secret file");
    path
}

/// One `[[upstream]]` with its `[upstream.oauth]`; `more` are extra lines of the latter.
fn oauth_upstream(
    id: &str,
    url: &str,
    transport: &str,
    idp: &TokenEndpoint,
    secret: &Path,
    more: &str,
) -> String {
    format!(
        "[[upstream]]\nid = {}\nurl = {}\ntransport = {}\n\n[upstream.oauth]\n\
         token_url = {}\nclient_id = {}\nclient_secret = {}\n{more}\n",
        quote(id),
        quote(url),
        quote(transport),
        quote(&idp.token_url()),
        quote(CLIENT_ID),
        quote(&format!("${{file:{}}}", secret.display())),
    )
}

/// A token endpoint for [`CLIENT_ID`] and [`SECRET`], an upstream `crm` that takes only
/// its tokens, and the secret in a file.
struct Fixture {
    idp: TokenEndpoint,
    counter: CounterServer,
    dir: TempDir,
    secret: std::path::PathBuf,
}

impl Fixture {
    async fn new() -> Self {
        let idp = TokenEndpoint::start(CLIENT_ID, SECRET)
            .await
            .expect("token endpoint");
        let counter = guarded_counter("crm", &idp);
        let dir = TempDir::new("mcpgw-cred").expect("dir");
        let secret = secret_file(&dir, SECRET);
        Self {
            idp,
            counter,
            dir,
            secret,
        }
    }

    /// The `crm` upstream's table; `more`: extra lines of its `[upstream.oauth]`.
    fn crm(&self, more: &str) -> String {
        oauth_upstream(
            "crm",
            &self.counter.url(),
            "streamable-http",
            &self.idp,
            &self.secret,
            more,
        )
    }
}

fn gateway_with(upstreams: &[String]) -> Gateway {
    let config = GatewayConfig {
        extra: upstreams.concat(),
        ..GatewayConfig::new(1)
    };
    Gateway::start(&config).expect("start mcpgw")
}

/// The samples of `family` carrying every label of `labels` (`name="value"`), summed
/// over workers.
async fn sample(gateway: &Gateway, family: &str, labels: &[&str]) -> f64 {
    let (_, text) = admin_get(gateway, "/metrics").await;
    let prefix = format!("{family}{{");
    text.lines()
        .filter(|l| l.starts_with(&prefix) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `mcpgw_upstream_token_fetches_total` for one upstream and outcome.
async fn token_fetches(gateway: &Gateway, upstream: &str, outcome: &str) -> f64 {
    let (u, o) = (
        format!("upstream=\"{upstream}\""),
        format!("outcome=\"{outcome}\""),
    );
    sample(gateway, "mcpgw_upstream_token_fetches_total", &[&u, &o]).await
}

/// Another client on the session `sid` (no `initialize`).
fn in_session(gateway: &Gateway, sid: &str) -> McpClient {
    let mut c = gateway.client();
    c.set_session_id(sid);
    c
}

/// The JSON-RPC error message of a call that must fail.
async fn call_error(client: &mut McpClient, tool: &str) -> String {
    let reply = client.call_tool(tool, json!({})).await.expect(tool);
    reply
        .error()
        .unwrap_or_else(|| panic!("{tool} must fail, got {}", reply.message))
        .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_token_is_fetched_reused_refreshed_and_replaced_after_a_401() {
    let fx = Fixture::new().await;
    let (idp, counter, secret) = (&fx.idp, &fx.counter, &fx.secret);
    let legacy_url = format!("http://{}/sse", counter.addr);
    let gateway = gateway_with(&[
        fx.crm(&format!(
            "scopes = [\"crm.read\", \"crm.write\"]\nresource = {}",
            quote(&counter.url())
        )),
        oauth_upstream(
            "legacy",
            &legacy_url,
            "sse",
            idp,
            secret,
            "auth_method = \"client_secret_post\"",
        ),
    ]);

    // Sessions opened at once (each opens both upstreams): the first needs of the
    // token wait for one fetch per upstream.
    let mut firsts: Vec<McpClient> = (0..8).map(|_| gateway.client()).collect();
    let counts = futures_util::future::join_all(firsts.iter_mut().map(|c| async move {
        c.initialize().await?;
        c.count("crm__increment").await
    }))
    .await;
    for count in counts {
        assert_eq!(count.expect("a concurrent first call"), 1);
    }
    // Many calls, one token per upstream (this worker's cache), sent as the gateway's own.
    let mut client = gateway.client();
    client.initialize().await.expect("initialize");
    for want in 1..=5 {
        assert_eq!(client.count("crm__increment").await.expect("crm"), want);
    }
    for want in 1..=3 {
        assert_eq!(
            client.count("legacy__increment").await.expect("legacy"),
            want
        );
    }
    assert_eq!(
        idp.requests(),
        2,
        "one fetch per upstream: {:?}",
        idp.forms()
    );
    let seen = counter.authorizations().await.expect("authorizations");
    assert_eq!(seen.len(), 2, "the two tokens, nothing else: {seen:?}");
    assert!(seen.iter().all(|a| a.starts_with("Bearer tok")), "{seen:?}");
    // The grant's parameters: scope and resource for crm (Basic auth), the secret in
    // the form for legacy (client_secret_post).
    let forms = idp.forms();
    assert!(
        forms.iter().any(|f| f.contains("scope=crm.read+crm.write")
            && f.contains("resource=http%3A%2F%2F127.0.0.1")),
        "{forms:?}"
    );
    assert!(
        forms
            .iter()
            .any(|f| f.contains("client_id=mcpgw&client_secret=first-s3cret")),
        "{forms:?}"
    );
    assert_eq!(idp.client_auth().len(), 1, "one Basic, one in the form");
    assert_eq!(token_fetches(&gateway, "crm", "ok").await, 1.0);

    // The secret is never shown, not even where it lives.
    let (status, config) = admin_get(&gateway, "/admin/config").await;
    assert_eq!(status, 200);
    assert!(!config.contains(SECRET), "{config}");
    assert!(!config.contains("client_secret\":\"${file"), "{config}");
    assert!(
        config.contains("\"client_secret\":\"<redacted>\""),
        "{config}"
    );

    // The upstream stops taking the token: its 401 makes the gateway fetch a new one
    // and send the call once more; the client sees nothing, the session goes on.
    idp.revoke_all();
    assert_eq!(client.count("crm__increment").await.expect("crm"), 6);
    assert_eq!(client.count("legacy__increment").await.expect("legacy"), 4);
    assert_eq!(idp.issued(), 4, "one new token per upstream");
    let refused = counter.stats().await.expect("stats").unauthorized;
    assert!(refused >= 2, "the revoked tokens were refused: {refused}");

    // Short-lived tokens are refreshed in the background before the upstream stops
    // taking them: calls go on without an error and without a single 401.
    idp.set_lifetime(Duration::from_secs(2));
    idp.revoke_all();
    let mut want = 7;
    assert_eq!(client.count("crm__increment").await.expect("crm"), want);
    let refused = counter.stats().await.expect("stats").unauthorized;
    let issued = idp.issued();
    let sid = client.session_id().expect("session id").to_owned();
    wait_until(
        "three refreshes of the short-lived token",
        Duration::from_secs(60),
        || {
            want += 1;
            let expected = want;
            let mut same = in_session(&gateway, &sid);
            let idp = &idp;
            async move {
                let count = same.count("crm__increment").await?;
                assert_eq!(count, expected, "a call failed or was lost");
                Ok((idp.issued() >= issued + 3).then_some(()))
            }
        },
    )
    .await
    .expect("refreshed");
    assert_eq!(
        counter.stats().await.expect("stats").unauthorized,
        refused,
        "no request went out with an expired token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_token_endpoint_fails_its_upstream_only_and_is_not_hammered() {
    let fx = Fixture::new().await;
    let idp = &fx.idp;
    idp.fail_with(Some(Failure::OAuth("invalid_scope")));
    let plain = start_counter!(CounterOpts::named("plain")).expect("plain counter");
    let gateway = gateway_with(&[
        fx.crm(""),
        format!(
            "[[upstream]]\nid = \"plain\"\nurl = {}\n",
            quote(&plain.url())
        ),
    ]);

    let mut client = gateway.client();
    client.initialize().await.expect("initialize without crm");
    let message = call_error(&mut client, "crm__increment").await;
    assert!(
        message.contains("upstream crm has no access token") && message.contains("invalid_scope"),
        "{message}"
    );
    assert!(!message.contains(SECRET), "{message}");
    // Other upstreams are not affected.
    assert_eq!(client.count("plain__increment").await.expect("plain"), 1);

    // Failures back off: many calls, far fewer token requests.
    let attempts = 20;
    for _ in 0..attempts {
        call_error(&mut client, "crm__increment").await;
    }
    let asked = idp.requests();
    assert!(
        asked < attempts / 2,
        "{asked} token requests for {attempts} calls: no backoff"
    );
    assert!(token_fetches(&gateway, "crm", "oauth_error").await >= 1.0);
    assert!(
        sample(
            &gateway,
            "mcpgw_upstream_errors_total",
            &["upstream=\"crm\"", "kind=\"credentials\""]
        )
        .await
            >= 1.0
    );
    let log = gateway.log();
    assert!(
        log.contains("oauth_error") && log.contains("invalid_scope"),
        "{log}"
    );
    assert!(!log.contains(SECRET), "the secret reached the log");

    // Another kind of failure says so too.
    idp.fail_with(Some(Failure::Unavailable));
    let sid = client.session_id().expect("session id").to_owned();
    wait_until("the 503 reported", Duration::from_secs(90), || async {
        let mut c = in_session(&gateway, &sid);
        Ok(call_error(&mut c, "crm__increment")
            .await
            .contains("HTTP 503")
            .then_some(()))
    })
    .await
    .expect("503 in the error");
    let (status, _) = admin_get(&gateway, "/healthz").await;
    assert_eq!(status, 200, "the gateway stays healthy");

    // The endpoint recovers: so does the upstream, within the backoff.
    idp.fail_with(None);
    wait_until("crm usable again", Duration::from_secs(120), || async {
        let reply = in_session(&gateway, &sid)
            .call_tool("crm__increment", json!({}))
            .await?;
        Ok(reply.count().ok())
    })
    .await
    .expect("recovered");
    assert_eq!(client.count("plain__increment").await.expect("plain"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_client_secret_on_reload_reopens_the_upstream_sessions() {
    let fx = Fixture::new().await;
    let (idp, counter) = (&fx.idp, &fx.counter);
    let gateway = gateway_with(&[fx.crm("")]);
    let mut client = gateway.client();
    client.initialize().await.expect("initialize");
    assert_eq!(client.count("increment").await.expect("increment"), 1);
    assert_eq!(client.count("increment").await.expect("increment"), 2);

    // The IdP rotates the secret; the operator puts the new one in the file and reloads.
    let rotated = "second-s3cret";
    idp.set_secret(rotated);
    secret_file(&fx.dir, rotated);
    gateway.signal(Signal::SIGHUP).expect("SIGHUP");
    wait_until("the reload", Duration::from_secs(30), || async {
        Ok(
            (supervisor_metric(&gateway, "mcpgw_reloads_total{result=\"ok\"}").await >= 1.0)
                .then_some(()),
        )
    })
    .await
    .expect("reloaded");
    wait_until(
        "the old upstream session closed",
        Duration::from_secs(20),
        || async { Ok((counter.stats().await?.delete >= 1).then_some(())) },
    )
    .await
    .expect("re-opened on a credential change");
    assert_eq!(
        client.count("increment").await.expect("after the reload"),
        1,
        "a new upstream session"
    );
    assert_eq!(counter.stats().await.expect("stats").initialize, 2);
    assert_eq!(idp.issued(), 2, "the cached token went with the old secret");
    let last = idp.client_auth().last().cloned().unwrap_or_default();
    assert_ne!(
        idp.client_auth().first(),
        Some(&last),
        "the new secret was sent"
    );
    let (_, config) = admin_get(&gateway, "/admin/config").await;
    assert!(
        !config.contains(rotated) && !config.contains(SECRET),
        "{config}"
    );
}
