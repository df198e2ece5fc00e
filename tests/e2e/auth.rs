//! The OAuth 2.1 front door (`[auth]`) through the real binary: keys made
//! with the `openssl` command, tokens signed here with `jsonwebtoken`, the
//! JWKS served to the gateway as a `jwks_file`. Refusals (401/403 with
//! `WWW-Authenticate`), the RFC 9728 documents, sessions bound to their
//! principal (also across a worker's death), the per-principal session cap,
//! JWKS rotation on SIGHUP, and the rule that a listener beyond loopback
//! needs `[auth]` or an explicit `auth = "off"`. Authorization rules and
//! rate limits, which match on the tokens' claims, are in `auth/authz.rs`.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mcpgw_tests::gateway::{config_accepted, gateway_binary};
use mcpgw_tests::ops::{admin_get, sum_of};
use mcpgw_tests::process::TempDir;
use mcpgw_tests::python;
use mcpgw_tests::rmcp_client;
use mcpgw_tests::stateless;
use mcpgw_tests::{
    CounterServer, Gateway, GatewayConfig, HttpConn, McpClient, Request, Response, start_counter,
    wait_until,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

// Authorization rules and rate limits, with the helpers of this file.
#[path = "auth/authz.rs"]
mod authz;

const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "https://mcp.test/mcp";

/// Signing keys made by `openssl`, and the JWKS file the gateway reads.
struct Keys {
    dir: TempDir,
}

/// One signing key: its algorithm, key id and private key.
struct SigningKey {
    alg: Algorithm,
    kid: String,
    key: EncodingKey,
}

impl Keys {
    fn new() -> Self {
        Self {
            dir: TempDir::new("mcpgw-auth-keys").expect("temp dir"),
        }
    }

    fn jwks_path(&self) -> PathBuf {
        self.dir.path().join("jwks.json")
    }

    /// A new key of `alg`'s type, named `kid`.
    fn make(&self, alg: Algorithm, kid: &str) -> SigningKey {
        let file = format!("{kid}.pem");
        let args: &[&str] = match alg {
            Algorithm::RS256 => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
            Algorithm::ES256 => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            Algorithm::EdDSA => &["-algorithm", "ED25519"],
            other => panic!("no key type for {other:?}"),
        };
        let out = Command::new("openssl")
            .arg("genpkey")
            .args(args)
            .args(["-out", &file])
            .current_dir(self.dir.path())
            .output()
            .expect("the openssl command is installed");
        assert!(
            out.status.success(),
            "openssl genpkey: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pem = std::fs::read(self.dir.path().join(&file)).expect("read key");
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
            _ => EncodingKey::from_ed_pem(&pem),
        }
        .expect("parse key");
        SigningKey {
            alg,
            kid: kid.to_owned(),
            key,
        }
    }

    /// Publish the public halves of `keys` as the JWKS file.
    fn publish(&self, keys: &[&SigningKey]) {
        let set = JwkSet {
            keys: keys
                .iter()
                .map(|k| {
                    let mut jwk = Jwk::from_encoding_key(&k.key, k.alg).expect("public jwk");
                    jwk.common.key_id = Some(k.kid.clone());
                    jwk
                })
                .collect(),
        };
        let tmp = self.dir.path().join("jwks.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&set).expect("jwks json")).expect("write jwks");
        std::fs::rename(&tmp, self.jwks_path()).expect("install jwks");
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Claims of a good token for `sub` (an hour left), to be edited.
fn claims(sub: &str) -> Value {
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": sub,
        "scope": "openid mcp",
        "iat": now(),
        "exp": now() + 3600,
    })
}

fn sign(key: &SigningKey, claims: &Value) -> String {
    let mut header = Header::new(key.alg);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, claims, &key.key).expect("sign")
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A token whose header says `alg: none`, with no signature.
fn unsigned(claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims.to_string().as_bytes())
    )
}

/// The gateway's `[auth]` section (and endpoints): `/mcp` with the fixed
/// audience, `/scoped` needing scope `admin` with the default audience (its
/// own URL).
fn auth_config(counter_url: &str, keys: &Keys, workers: usize, more_auth: &str) -> GatewayConfig {
    let mut config = GatewayConfig::new(workers).upstream("counter", counter_url);
    // The front door's debug lines on: the test checks no token reaches the log.
    config
        .env
        .push(("MCPGW_LOG".into(), "info,mcpgw_worker::auth=debug".into()));
    config.extra = format!(
        "[log]\naccess = true\n\n[auth]\nissuer = \"{ISSUER}\"\njwks_file = \"{}\"\n\
         required_scopes = [\"mcp\"]\n{more_auth}\n\n\
         [[endpoint]]\npath = \"/mcp\"\nupstreams = [\"counter\"]\nauth_audience = \"{AUDIENCE}\"\n\n\
         [[endpoint]]\npath = \"/scoped\"\nupstreams = [\"counter\"]\nauth_required_scopes = [\"admin\"]\n",
        keys.jwks_path().display()
    );
    config
}

/// One RS256 key (`rsa-1`) published as the JWKS, a counter upstream, and a
/// gateway with [`auth_config`] in front of it.
struct OneKey {
    rsa: SigningKey,
    _counter: CounterServer,
    gateway: Gateway,
    _keys: Keys,
}

impl OneKey {
    fn start(workers: usize, more_auth: &str) -> Self {
        let keys = Keys::new();
        let rsa = keys.make(Algorithm::RS256, "rsa-1");
        keys.publish(&[&rsa]);
        let counter = start_counter!().expect("counter-server");
        let gateway = Gateway::start(&auth_config(&counter.url(), &keys, workers, more_auth))
            .expect("start mcpgw");
        Self {
            rsa,
            _counter: counter,
            gateway,
            _keys: keys,
        }
    }
}

fn initialize_request(client: &McpClient) -> Request {
    client.post_request(
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"}}})
        .to_string(),
    )
}

/// Sends `initialize` with `token` (or none) and returns the raw answer.
async fn try_token(gateway: &Gateway, path: &str, token: Option<&str>) -> Response {
    let mut client = gateway.client_at(path);
    client.set_bearer(token);
    let request = initialize_request(&client);
    client.send(&request).await.expect("answer")
}

fn challenge(resp: &Response) -> String {
    resp.header("www-authenticate")
        .unwrap_or_else(|| panic!("no WWW-Authenticate on {}: {}", resp.status, resp.text()))
        .to_owned()
}

/// The quoted value of `param` in a `WWW-Authenticate` challenge.
fn param(challenge: &str, param: &str) -> Option<String> {
    let start = challenge.find(&format!("{param}=\""))? + param.len() + 2;
    let rest = &challenge[start..];
    Some(rest[..rest.find('"')?].to_owned())
}

/// `mcpgw_auth_decisions_total{outcome}`, summed over workers.
async fn decisions(gateway: &Gateway, outcome: &str) -> f64 {
    labelled(
        gateway,
        "mcpgw_auth_decisions_total",
        &format!("outcome=\"{outcome}\""),
    )
    .await
}

/// The samples of `family` with the label `label` (`name="value"`), summed
/// over workers (whose label comes first).
async fn labelled(gateway: &Gateway, family: &str, label: &str) -> f64 {
    let (_, text) = admin_get(gateway, "/metrics").await;
    let prefix = format!("{family}{{");
    let lines: String = text
        .lines()
        .filter(|l| l.starts_with(&prefix) && l.contains(label))
        .map(|l| format!("{l}\n"))
        .collect();
    sum_of(&lines, &prefix)
}

async fn get(gateway: &Gateway, path: &str) -> Response {
    let mut conn = HttpConn::connect(gateway.addr).await.expect("connect");
    conn.send(&Request::get(path)).await.expect("answer")
}

#[tokio::test]
async fn tokens_are_checked_and_refusals_point_at_the_metadata() {
    let keys = Keys::new();
    let rsa = keys.make(Algorithm::RS256, "rsa-1");
    let ec = keys.make(Algorithm::ES256, "ec-1");
    let ed = keys.make(Algorithm::EdDSA, "ed-1");
    keys.publish(&[&rsa, &ec, &ed]);
    let counter = start_counter!().expect("counter-server");
    let gateway = Gateway::start(&auth_config(&counter.url(), &keys, 1, "")).expect("start mcpgw");

    // No token: 401, a challenge naming the metadata and the scope.
    let resp = try_token(&gateway, "/mcp", None).await;
    assert_eq!(resp.status, 401, "{}", resp.text());
    let c = challenge(&resp);
    assert!(c.starts_with("Bearer "), "{c}");
    assert_eq!(param(&c, "scope").as_deref(), Some("mcp"), "{c}");
    assert_eq!(
        param(&c, "error"),
        None,
        "no error code without a token: {c}"
    );
    let metadata_url = param(&c, "resource_metadata").expect("resource_metadata");
    let prefix = format!("http://{}", gateway.addr);
    let metadata_path = metadata_url
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{metadata_url} is on this gateway ({prefix})"));
    assert_eq!(metadata_path, "/.well-known/oauth-protected-resource/mcp");

    // The RFC 9728 document, path-suffixed and at the root.
    let doc = get(&gateway, metadata_path).await;
    assert_eq!(doc.status, 200, "{}", doc.text());
    let doc = doc.json().expect("json");
    assert_eq!(doc["resource"], AUDIENCE);
    assert_eq!(doc["authorization_servers"], json!([ISSUER]));
    assert_eq!(doc["scopes_supported"], json!(["mcp"]));
    assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
    let root = get(&gateway, "/.well-known/oauth-protected-resource").await;
    assert_eq!(root.json().expect("json")["resource"], AUDIENCE);
    let scoped = get(&gateway, "/.well-known/oauth-protected-resource/scoped").await;
    let scoped = scoped.json().expect("json");
    assert_eq!(
        scoped["resource"],
        format!("http://{}/scoped", gateway.addr)
    );
    assert_eq!(scoped["scopes_supported"], json!(["admin"]));
    assert_eq!(
        get(&gateway, "/.well-known/oauth-protected-resource/nope")
            .await
            .status,
        404
    );

    // Refused tokens: 401 invalid_token.
    let forger = keys.make(Algorithm::RS256, "rsa-1");
    let mut wrong_iss = claims("alice");
    wrong_iss["iss"] = json!("https://evil.test");
    let mut wrong_aud = claims("alice");
    wrong_aud["aud"] = json!("https://other.test/mcp");
    let mut expired = claims("alice");
    expired["exp"] = json!(now() - 3600);
    let mut not_yet = claims("alice");
    not_yet["nbf"] = json!(now() + 3600);
    let mut no_sub = claims("alice");
    no_sub.as_object_mut().expect("object").remove("sub");
    let hmac = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("rsa-1".to_owned());
        let secret = EncodingKey::from_secret(b"the public key is public").expect("hmac key");
        jsonwebtoken::encode(&header, &claims("alice"), &secret).expect("sign")
    };
    let unknown_kid = {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("nobody".to_owned());
        jsonwebtoken::encode(&header, &claims("alice"), &rsa.key).expect("sign")
    };
    for (what, token) in [
        ("bad signature", sign(&forger, &claims("alice"))),
        ("wrong iss", sign(&rsa, &wrong_iss)),
        ("wrong aud", sign(&rsa, &wrong_aud)),
        ("expired", sign(&rsa, &expired)),
        ("not yet valid", sign(&rsa, &not_yet)),
        ("no sub", sign(&rsa, &no_sub)),
        ("alg none", unsigned(&claims("alice"))),
        ("HS256", hmac),
        ("unknown kid", unknown_kid),
        ("garbage", "not.a.token".to_owned()),
    ] {
        let resp = try_token(&gateway, "/mcp", Some(&token)).await;
        assert_eq!(resp.status, 401, "{what}: {}", resp.text());
        let c = challenge(&resp);
        assert_eq!(
            param(&c, "error").as_deref(),
            Some("invalid_token"),
            "{what}: {c}"
        );
        assert!(param(&c, "resource_metadata").is_some(), "{what}: {c}");
    }
    // A token of another audience is not let in by the endpoint's URL either.
    let mut for_mcp = claims("alice");
    for_mcp["aud"] = json!(format!("http://{}/mcp", gateway.addr));
    assert_eq!(
        try_token(&gateway, "/mcp", Some(&sign(&rsa, &for_mcp)))
            .await
            .status,
        401
    );

    // A valid token without the scope: 403 insufficient_scope.
    let mut no_scope = claims("alice");
    no_scope["scope"] = json!("openid");
    let resp = try_token(&gateway, "/mcp", Some(&sign(&rsa, &no_scope))).await;
    assert_eq!(resp.status, 403, "{}", resp.text());
    let c = challenge(&resp);
    assert_eq!(
        param(&c, "error").as_deref(),
        Some("insufficient_scope"),
        "{c}"
    );
    assert_eq!(param(&c, "scope").as_deref(), Some("mcp"), "{c}");

    // Good tokens, of each key type: the counter works.
    for key in [&rsa, &ec, &ed] {
        let mut client = gateway.client().with_bearer(&sign(key, &claims("alice")));
        client.initialize().await.expect("initialize");
        assert_eq!(client.count("increment").await.expect("increment"), 1);
        assert_eq!(client.count("increment").await.expect("increment"), 2);
    }
    // `scp` as an array works too.
    let mut scp = claims("alice");
    scp.as_object_mut().expect("object").remove("scope");
    scp["scp"] = json!(["mcp"]);
    let mut client = gateway.client().with_bearer(&sign(&rsa, &scp));
    client.initialize().await.expect("initialize with scp");

    // A stateless (2026-07-28) request: checked the same way.
    let message = stateless::message(
        Some(json!(7)),
        "tools/call",
        json!({"name": "increment", "arguments": {}}),
    );
    let request = stateless::post("/mcp", &message);
    let mut conn = HttpConn::connect(gateway.addr).await.expect("connect");
    let refused = conn.send(&request).await.expect("answer");
    assert_eq!(refused.status, 401, "{}", refused.text());
    let good = sign(&rsa, &claims("alice"));
    let request = request.header("Authorization", &format!("Bearer {good}"));
    let answer = conn.send(&request).await.expect("answer");
    assert_eq!(answer.status, 200, "{}", answer.text());
    let reply = mcpgw_tests::RpcReply::from_response(answer, &json!(7)).expect("reply");
    assert_eq!(reply.count().expect("count"), 1);

    // `/scoped`: its own scope, and its own URL as the default audience.
    let mut scoped_claims = claims("alice");
    scoped_claims["aud"] = json!(format!("http://{}/scoped", gateway.addr));
    let resp = try_token(&gateway, "/scoped", Some(&sign(&rsa, &scoped_claims))).await;
    assert_eq!(resp.status, 403, "mcp is not admin: {}", resp.text());
    assert_eq!(param(&challenge(&resp), "scope").as_deref(), Some("admin"));
    scoped_claims["scope"] = json!("admin");
    let resp = try_token(&gateway, "/scoped", Some(&sign(&rsa, &scoped_claims))).await;
    assert_eq!(resp.status, 200, "{}", resp.text());

    // Counted by outcome; the token never reaches the log.
    assert!(decisions(&gateway, "ok").await >= 5.0);
    assert_eq!(decisions(&gateway, "missing").await, 2.0);
    assert_eq!(decisions(&gateway, "expired").await, 1.0);
    assert!(decisions(&gateway, "invalid").await >= 10.0);
    assert_eq!(decisions(&gateway, "insufficient_scope").await, 2.0);
    // The configuration in force shows the table.
    let (status, shown) = admin_get(&gateway, "/admin/config").await;
    assert_eq!(status, 200, "{shown}");
    let shown: Value = serde_json::from_str(&shown).expect("json");
    assert_eq!(shown["auth"]["issuer"], ISSUER, "{shown}");
    let log = gateway.log();
    assert!(!log.contains(&good), "a token was logged");
    assert!(
        log.contains("principal=\"alice\"") || log.contains("principal=alice"),
        "access log names the principal"
    );
}

#[tokio::test]
async fn sessions_answer_only_to_their_principal() {
    let fx = OneKey::start(1, "max_sessions_per_principal = 2");
    let (rsa, gateway) = (&fx.rsa, &fx.gateway);
    let alice = sign(rsa, &claims("alice"));
    let bob = sign(rsa, &claims("bob"));

    let mut owner = gateway.client().with_bearer(&alice);
    owner.initialize().await.expect("initialize");
    assert_eq!(owner.count("increment").await.expect("increment"), 1);
    let sid = owner.session_id().expect("session id").to_owned();

    // Bob with Alice's session id: as unknown as a made-up one.
    let mut thief = gateway.client().with_bearer(&bob);
    thief.set_session_id(&sid);
    let reply = thief
        .call_tool("increment", json!({}))
        .await
        .expect("answer");
    assert_eq!(reply.status(), 404, "{}", reply.message);
    let mut stranger = gateway.client().with_bearer(&bob);
    stranger.set_session_id("abzmftwiebzmftwiebzmftwieb");
    let unknown = stranger
        .call_tool("increment", json!({}))
        .await
        .expect("answer");
    assert_eq!(unknown.status(), 404);
    assert_eq!(
        reply.message["error"], unknown.message["error"],
        "the same answer as an unknown id"
    );
    // Without a token: 401 before the session is even looked up.
    let mut anonymous = gateway.client();
    anonymous.set_session_id(&sid);
    let resp = anonymous
        .send(&anonymous.post_request(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#))
        .await
        .expect("answer");
    assert_eq!(resp.status, 401);
    // The owner carries on, counter intact.
    assert_eq!(owner.count("increment").await.expect("increment"), 2);
    assert_eq!(decisions(gateway, "wrong_principal").await, 1.0);

    // Per-principal cap: Alice's third session is refused as any session
    // over a cap is; Bob is not affected.
    let mut second = gateway.client().with_bearer(&alice);
    second.initialize().await.expect("second session");
    let mut third = gateway.client().with_bearer(&alice);
    let refused = third
        .request(
            "initialize",
            json!({"protocolVersion": "2025-11-25", "capabilities": {},
                   "clientInfo": {"name": "t", "version": "1"}}),
        )
        .await
        .expect("answer");
    let (code, message) = refused.error().expect("refused");
    assert_eq!(code, -32000, "{message}");
    assert!(message.contains("max_sessions_per_principal"), "{message}");
    let mut bobs = gateway.client().with_bearer(&bob);
    bobs.initialize().await.expect("bob is under his own cap");
    // Ending one makes room again.
    second.delete().await.expect("delete");
    let mut again = gateway.client().with_bearer(&alice);
    again.initialize().await.expect("room after a DELETE");
}

#[tokio::test]
async fn a_bound_session_fails_over_for_its_owner_only() {
    let fx = OneKey::start(2, "");
    let (rsa, gateway) = (&fx.rsa, &fx.gateway);
    let alice = sign(rsa, &claims("alice"));
    let bob = sign(rsa, &claims("bob"));

    let mut owner = gateway.client().with_bearer(&alice);
    let tag = owner
        .initialize()
        .await
        .expect("initialize")
        .worker()
        .expect("worker header");
    assert_eq!(owner.count("increment").await.expect("increment"), 1);
    let sid = owner.session_id().expect("session id").to_owned();
    kill(Pid::from_raw(tag.pid as i32), Signal::SIGKILL).expect("kill the owner");
    wait_until("the worker to die", Duration::from_secs(10), || async {
        Ok((!mcpgw_tests::process::process_alive(tag.pid)).then_some(()))
    })
    .await
    .expect("dead");

    // Bob first: the replacement resumes the session from its record, which
    // names Alice, and answers Bob as if it did not exist.
    let mut thief = gateway.client().with_bearer(&bob);
    thief.set_session_id(&sid);
    let reply = thief
        .call_tool("increment", json!({}))
        .await
        .expect("answer");
    assert_eq!(reply.status(), 404, "{}", reply.message);
    // Alice goes on where she was, on the replacement.
    let reply = owner
        .call_tool("increment", json!({}))
        .await
        .expect("served after failover");
    assert_eq!(reply.count().expect("count"), 2, "upstream state survived");
    let now = reply.worker().expect("worker header");
    assert_eq!(now.slot, tag.slot);
    assert!(now.generation > tag.generation, "the replacement: {now:?}");
    // And Bob still cannot.
    let reply = thief
        .call_tool("increment", json!({}))
        .await
        .expect("answer");
    assert_eq!(reply.status(), 404);
}

#[tokio::test]
async fn a_rotated_jwks_file_is_read_on_sighup() {
    let keys = Keys::new();
    let old = keys.make(Algorithm::RS256, "2026-old");
    keys.publish(&[&old]);
    let counter = start_counter!().expect("counter-server");
    // Every probe below opens a session: no per-principal cap in the way.
    let gateway = Gateway::start(&auth_config(
        &counter.url(),
        &keys,
        2,
        "max_sessions_per_principal = 0",
    ))
    .expect("start mcpgw");
    let new = keys.make(Algorithm::ES256, "2026-new");
    let new_token = sign(&new, &claims("alice"));
    let old_token = sign(&old, &claims("alice"));
    assert_eq!(
        try_token(&gateway, "/mcp", Some(&new_token)).await.status,
        401
    );
    assert_eq!(
        try_token(&gateway, "/mcp", Some(&old_token)).await.status,
        200
    );

    keys.publish(&[&new]);
    gateway.signal(Signal::SIGHUP).expect("SIGHUP");
    // Every worker takes the new set: fresh connections spread over them.
    wait_until(
        "the new key to be accepted",
        Duration::from_secs(30),
        || async {
            for _ in 0..4 {
                if try_token(&gateway, "/mcp", Some(&new_token)).await.status != 200 {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await
    .expect("new key accepted after SIGHUP");
    assert_eq!(
        try_token(&gateway, "/mcp", Some(&old_token)).await.status,
        401,
        "the withdrawn key no longer verifies"
    );
}

#[test]
fn a_listener_beyond_loopback_needs_auth_or_an_explicit_off() {
    let keys = Keys::new();
    let rsa = keys.make(Algorithm::RS256, "k");
    keys.publish(&[&rsa]);
    let dir = TempDir::new("mcpgw-check").expect("temp dir");
    let exposed = "listen = [\"0.0.0.0:0\"]\n";
    let (ok, out) = config_accepted(dir.path(), exposed);
    assert!(!ok, "{out}");
    assert!(
        out.contains("auth") && out.contains("not a loopback address"),
        "{out}"
    );
    let (ok, out) = config_accepted(dir.path(), &format!("{exposed}auth = \"off\"\n"));
    assert!(ok, "{out}");
    assert!(out.contains("NOT authenticated"), "warned: {out}");
    let with_auth = format!(
        "{exposed}[auth]\nissuer = \"{ISSUER}\"\njwks_file = \"{}\"\n",
        keys.jwks_path().display()
    );
    let (ok, out) = config_accepted(dir.path(), &with_auth);
    assert!(ok, "{out}");
    // A JWKS file without a usable key, and a jwks_url over https.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).expect("write");
    let (ok, out) = config_accepted(
        dir.path(),
        &format!(
            "[auth]\nissuer = \"{ISSUER}\"\njwks_file = \"{}\"\n",
            bad.display()
        ),
    );
    assert!(!ok && out.contains("no usable signing key"), "{out}");
    let (ok, out) = config_accepted(
        dir.path(),
        &format!("[auth]\nissuer = \"{ISSUER}\"\njwks_url = \"{ISSUER}/jwks\"\n"),
    );
    assert!(ok, "an https JWKS: {out}");
    let (ok, out) = config_accepted(
        dir.path(),
        &format!("[auth]\nissuer = \"{ISSUER}\"\njwks_url = \"http://idp.test/jwks\"\n"),
    );
    assert!(
        !ok && out.contains("loopback"),
        "plain http beyond loopback: {out}"
    );
    // Existing loopback configurations need nothing new.
    let (ok, out) = config_accepted(dir.path(), "listen = [\"127.0.0.1:0\"]\n");
    assert!(ok, "{out}");
}

#[test]
fn serve_refuses_to_start_beyond_loopback_without_auth() {
    let dir = TempDir::new("mcpgw-serve").expect("temp dir");
    let file = dir.path().join("mcpgw.toml");
    std::fs::write(
        &file,
        "listen = [\"0.0.0.0:0\"]\nadmin_listen = \"127.0.0.1:0\"\n",
    )
    .expect("write config");
    let out = Command::new(gateway_binary().expect("mcpgw binary"))
        .args(["serve", "--config"])
        .arg(&file)
        .output()
        .expect("run mcpgw serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("not a loopback address"), "{stderr}");
}

/// A JWKS served over loopback HTTP, as `jwks_url` wants it, counting fetches.
struct JwksServer {
    addr: std::net::SocketAddr,
    body: std::sync::Arc<std::sync::Mutex<String>>,
    fetches: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(keys: &Keys) -> Self {
        use axum::routing::get;
        let text = std::fs::read_to_string(keys.jwks_path()).expect("read jwks");
        let body = std::sync::Arc::new(std::sync::Mutex::new(text));
        let fetches = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (served, counted) = (body.clone(), fetches.clone());
        let app = axum::Router::new().route(
            "/jwks.json",
            get(move || {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let text = served.lock().expect("lock").clone();
                async move { ([("content-type", "application/json")], text) }
            }),
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            body,
            fetches,
            task,
        }
    }

    /// Serve what `keys` published last.
    fn serve_file(&self, keys: &Keys) {
        *self.body.lock().expect("lock") =
            std::fs::read_to_string(keys.jwks_path()).expect("read jwks");
    }

    fn fetches(&self) -> u64 {
        self.fetches.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn a_jwks_url_is_fetched_at_start_and_again_for_an_unknown_key() {
    let keys = Keys::new();
    let first = keys.make(Algorithm::ES256, "first");
    keys.publish(&[&first]);
    let jwks = JwksServer::start(&keys).await;
    let counter = start_counter!().expect("counter-server");
    let mut config = auth_config(&counter.url(), &keys, 1, "max_sessions_per_principal = 0");
    config.extra = config.extra.replace(
        &format!("jwks_file = \"{}\"", keys.jwks_path().display()),
        &format!("jwks_url = \"http://{}/jwks.json\"", jwks.addr),
    );
    let gateway = Gateway::start(&config).expect("start mcpgw");
    let token = sign(&first, &claims("alice"));
    // Fetched at start, in the background.
    wait_until("the first fetch", Duration::from_secs(20), || async {
        Ok((try_token(&gateway, "/mcp", Some(&token)).await.status == 200).then_some(()))
    })
    .await
    .expect("keys fetched at start");
    let after_start = jwks.fetches();
    assert_eq!(after_start, 1, "one fetch at start");

    // The issuer rotates: a token with the new kid makes the worker fetch
    // again, at most once per 30 s, without holding up the requests.
    let second = keys.make(Algorithm::EdDSA, "second");
    keys.publish(&[&first, &second]);
    jwks.serve_file(&keys);
    let new_token = sign(&second, &claims("alice"));
    wait_until("the new key", Duration::from_secs(60), || async {
        Ok((try_token(&gateway, "/mcp", Some(&new_token)).await.status == 200).then_some(()))
    })
    .await
    .expect("new key fetched after an unknown kid");
    assert_eq!(
        jwks.fetches(),
        2,
        "many unknown-kid requests, one more fetch (rate-limited)"
    );
    assert_eq!(try_token(&gateway, "/mcp", Some(&token)).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rmcp_client_works_with_a_bearer_token() {
    use rmcp::model::CallToolRequestParams;
    use rmcp::service::ClientLifecycleMode;
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;

    let fx = OneKey::start(2, "");
    let (rsa, gateway) = (&fx.rsa, &fx.gateway);
    let token = sign(rsa, &claims("alice"));
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(format!("http://{}/mcp", gateway.addr))
            .auth_header(token),
    );
    let client = rmcp_client::over(transport, ClientLifecycleMode::Initialize)
        .await
        .expect("rmcp client with a bearer token");
    for expected in 1..=2 {
        let result = client
            .call_tool(CallToolRequestParams::new("increment"))
            .await
            .expect("increment");
        let count = result
            .structured_content
            .as_ref()
            .and_then(|s| s.get("count"))
            .and_then(Value::as_u64);
        assert_eq!(count, Some(expected), "{result:?}");
    }
    client.cancel().await.expect("close the client");
}

/// Requests of sessions owned by two workers on one kept-alive connection:
/// the worker holding the connection checks the token and forwards the other
/// session's requests with the principal (not the token) to the owner, which
/// binds them as if they had come to it directly.
#[tokio::test]
async fn forwarded_requests_carry_the_principal_to_the_owner() {
    let fx = OneKey::start(2, "max_sessions_per_principal = 0");
    let (rsa, gateway) = (&fx.rsa, &fx.gateway);
    let alice = sign(rsa, &claims("alice"));
    let bob = sign(rsa, &claims("bob"));
    let mut on_slot = sessions_on_each_worker(gateway, "/mcp", &alice).await;
    let mut shared = HttpConn::connect(gateway.addr).await.expect("connect");
    for round in 1..=2u64 {
        for (client, pid) in on_slot.values_mut() {
            let reply = client
                .request_on(
                    &mut shared,
                    "tools/call",
                    json!({"name": "increment", "arguments": {}}),
                )
                .await
                .expect("increment on the shared connection");
            assert_eq!(reply.count().expect("count"), round, "{}", reply.message);
            assert_eq!(
                reply.worker().expect("worker").pid,
                *pid,
                "served by the owner"
            );
        }
    }
    // Bob, on the same connection, with either of Alice's ids: 404 from
    // whichever worker decides.
    for (client, _) in on_slot.values() {
        let mut thief = gateway.client().with_bearer(&bob);
        thief.set_session_id(client.session_id().expect("session id"));
        let reply = thief
            .request_on(
                &mut shared,
                "tools/call",
                json!({"name": "increment", "arguments": {}}),
            )
            .await
            .expect("answer");
        assert_eq!(reply.status(), 404, "{}", reply.message);
    }
    assert!(
        decisions(gateway, "wrong_principal").await >= 2.0,
        "both refusals counted"
    );
    assert_forwarded(gateway).await;
}

/// Requests went from one worker to another (two at least).
async fn assert_forwarded(gateway: &Gateway) {
    assert!(
        labelled(
            gateway,
            "mcpgw_forwarded_requests_total",
            "direction=\"out\""
        )
        .await
            >= 2.0,
        "requests were forwarded between the workers"
    );
}

/// One session of `token`'s at `path` on each of a two-worker gateway's
/// workers, by slot, with the owner's pid.
async fn sessions_on_each_worker(
    gateway: &Gateway,
    path: &str,
    token: &str,
) -> std::collections::BTreeMap<u32, (McpClient, u32)> {
    let mut on_slot = std::collections::BTreeMap::new();
    for _ in 0..64 {
        let mut c = gateway.client_at(path).with_bearer(token);
        let tag = c
            .initialize()
            .await
            .expect("initialize")
            .worker()
            .expect("worker header");
        on_slot.entry(tag.slot).or_insert((c, tag.pid));
        if on_slot.len() == 2 {
            break;
        }
    }
    assert_eq!(on_slot.len(), 2, "sessions on both workers");
    on_slot
}

/// The Python MCP SDK (installed into `tests/.venv` by `scripts/test-all.sh`)
/// as a client with a bearer token, in both of its modes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_client_works_with_a_bearer_token() {
    let fx = OneKey::start(2, "");
    let (rsa, gateway) = (&fx.rsa, &fx.gateway);
    let url = format!("http://{}/mcp", gateway.addr);
    let token = sign(rsa, &claims("alice"));
    for mode in ["legacy", "auto"] {
        python::expect_ok(
            &format!("client_smoke.py {mode}"),
            python::script("client_smoke.py")
                .arg(&url)
                .arg(mode)
                .env("MCPGW_BEARER_TOKEN", &token),
        )
        .await;
    }
    assert_eq!(
        decisions(gateway, "missing").await,
        0.0,
        "every request had the token"
    );
}

/// No token passthrough: with `[auth]` on, the client's bearer token stays at the
/// gateway. An upstream with `[upstream.oauth]` sees the gateway's own token (from the
/// test's token endpoint), on a gateway with two workers (forwarded requests too), and
/// never the client's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_sees_the_gateway_token_never_the_client_token() {
    let keys = Keys::new();
    let rsa = keys.make(Algorithm::RS256, "rsa-1");
    keys.publish(&[&rsa]);
    let idp = mcpgw_tests::idp::TokenEndpoint::start("mcpgw", "gw-s3cret")
        .await
        .expect("token endpoint");
    let counter = start_counter!(mcpgw_tests::CounterOpts {
        bearer_file: Some(idp.bearer_file()),
        ..mcpgw_tests::CounterOpts::default()
    })
    .expect("counter-server");
    let mut config = auth_config(&counter.url(), &keys, 2, "");
    // Right after the `[[upstream]]` table auth_config wrote.
    config.extra = format!(
        "[upstream.oauth]\ntoken_url = \"{}\"\nclient_id = \"mcpgw\"\n\
         client_secret = \"gw-s3cret\"\n\n{}",
        idp.token_url(),
        config.extra
    );
    let gateway = Gateway::start(&config).expect("start mcpgw");
    let alice = sign(&rsa, &claims("alice"));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let mut c = gateway.client().with_bearer(&alice);
        c.initialize().await.expect("initialize");
        assert_eq!(c.count("increment").await.expect("increment"), 1);
        clients.push(c);
    }
    // A request for a session another worker owns is forwarded to it.
    let sid = clients[0].session_id().expect("session id").to_owned();
    for _ in 0..4 {
        let mut c = gateway.client().with_bearer(&alice);
        c.set_session_id(&sid);
        c.count("increment").await.expect("increment");
    }
    let seen = counter.authorizations().await.expect("authorizations");
    assert!(!seen.is_empty(), "the upstream got the gateway's token");
    for value in &seen {
        assert!(!value.contains(&alice), "the client's token went upstream");
        assert!(value.starts_with("Bearer tok"), "{value:?}");
    }
    assert!(
        idp.issued() >= 1 && idp.issued() <= 2,
        "one token per worker"
    );
}

/// MRTR `requestState` is bound to the principal that started the call: another
/// principal's retry with it is refused as an unknown handle (and leaves it to its
/// owner), the owner's retry completes the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_calls_request_state_answers_only_its_principal() {
    let fx = OneKey::start(1, "max_sessions_per_principal = 0");
    let (rsa, gateway) = (&fx.rsa, &fx.gateway);
    let call = |token: &str, extra: Value| {
        stateless::ask(1, "roots/list", json!({}), json!({"roots": {}}), extra)
            .header("Authorization", &format!("Bearer {token}"))
    };
    let (alice, bob) = (sign(rsa, &claims("alice")), sign(rsa, &claims("bob")));
    let first = stateless::send(gateway.addr, &call(&alice, json!({})))
        .await
        .expect("answer")
        .json()
        .expect("json");
    let (key, _, state) = stateless::input_request(&first).expect("input_required");
    let retry = json!({"inputResponses": {key: {"roots": []}}, "requestState": state});

    let stolen = stateless::send(gateway.addr, &call(&bob, retry.clone()))
        .await
        .expect("answer");
    assert_eq!(stolen.status, 400, "{}", stolen.text());
    assert_eq!(stolen.json().expect("json")["error"]["code"], -32602);
    let done = stateless::send(gateway.addr, &call(&alice, retry))
        .await
        .expect("answer")
        .json()
        .expect("json");
    assert_eq!(
        done["result"]["structuredContent"]["answer"]["result"],
        json!({"roots": []}),
        "{done}"
    );
}

/// `jwks_url` over https: the issuer's certificate (from a test CA, trusted through
/// `SSL_CERT_FILE` as the system roots are) is checked, and the keys fetched at start.
#[tokio::test]
async fn a_jwks_url_over_https_is_fetched_with_the_system_roots() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let keys = Keys::new();
    let key = keys.make(Algorithm::ES256, "tls-1");
    keys.publish(&[&key]);
    let pki = mcpgw_tests::pki::Pki::new();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(
        pki.server_config("jwks", "127.0.0.1"),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let body = std::fs::read_to_string(keys.jwks_path()).expect("jwks");
    let fetches = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = fetches.clone();
    let server = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, body, counted) = (acceptor.clone(), body.clone(), counted.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 << 10 {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    let counter = start_counter!().expect("counter-server");
    let mut config = auth_config(&counter.url(), &keys, 1, "max_sessions_per_principal = 0");
    config.extra = config.extra.replace(
        &format!("jwks_file = \"{}\"", keys.jwks_path().display()),
        &format!("jwks_url = \"https://{addr}/jwks.json\""),
    );
    config.env.push((
        "SSL_CERT_FILE".into(),
        pki.path("ca.pem").display().to_string(),
    ));
    let gateway = Gateway::start(&config).expect("start mcpgw");
    let token = sign(&key, &claims("alice"));
    wait_until(
        "keys fetched over https",
        Duration::from_secs(20),
        || async {
            Ok((try_token(&gateway, "/mcp", Some(&token)).await.status == 200).then_some(()))
        },
    )
    .await
    .expect("keys fetched over https");
    assert!(fetches.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    // The same issuer, its CA not trusted: no keys, and a log line that says why.
    config.env.retain(|(k, _)| k != "SSL_CERT_FILE");
    let untrusting = Gateway::start(&config).expect("start mcpgw");
    wait_until(
        "the failed fetch logged",
        Duration::from_secs(20),
        || async { Ok(untrusting.log().contains("UnknownIssuer").then_some(())) },
    )
    .await
    .expect("an untrusted issuer certificate is refused");
    assert_eq!(
        try_token(&untrusting, "/mcp", Some(&token)).await.status,
        401
    );
    server.abort();
}
