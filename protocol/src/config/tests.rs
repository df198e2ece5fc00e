//! Tests of the configuration: defaults, refused values, error places, secrets.

use super::*;

#[test]
fn empty_file_is_the_embedded_default() {
    let c = Config::parse("").expect("valid");
    assert_eq!(c, Config::default());
    assert_eq!(c.listen, vec!["127.0.0.1:8080".parse().expect("addr")]);
    assert!(c.worker_count() >= 1);
    assert_eq!(c.effective_endpoints()[0].path, "/mcp");
    assert_eq!(c.admin_listen, "127.0.0.1:8411".parse().expect("addr"));
}

#[test]
fn issue_example_parses() {
    let c = Config::parse(
        r#"
        listen = ["127.0.0.1:8080"]
        workers = 4
        [[upstream]]
        id = "counter"
        url = "http://127.0.0.1:3101/mcp"
        headers = { "X-Api-Key" = "k" }
        [[endpoint]]
        path = "/counter/mcp"
        upstreams = ["counter"]
        "#,
    )
    .expect("valid");
    assert_eq!(c.worker_count(), 4);
    assert_eq!(c.upstream[0].transport, Transport::StreamableHttp);
    assert_eq!(c.effective_endpoints()[0].upstreams, vec!["counter"]);
}

fn err(text: &str) -> String {
    Config::parse(text)
        .expect_err("must be refused")
        .to_string()
}

#[test]
fn errors_name_the_key() {
    assert!(err("workers = 0").starts_with("workers:"));
    assert!(err("listen = []").starts_with("listen:"));
    assert!(err("bogus = 1").contains("bogus"));
    assert!(err("[limits]\nmax_body_bytes = 0").starts_with("limits.max_body_bytes:"));
    assert!(err("[[upstream]]\nid = \"a b\"\nurl = \"http://x/\"").starts_with("upstream[0].id:"));
    assert!(
        err("[[upstream]]\nid = \"a\"\ntransport = \"stdio\"").starts_with("upstream[0].command:")
    );
    assert!(
        err(
            "[[upstream]]\nid = \"a\"\ntransport = \"stdio\"\ncommand = \"x\"\nurl = \"http://x/\""
        )
        .starts_with("upstream[0].url:")
    );
    assert!(
        err("[[upstream]]\nid = \"a\"\nurl = \"http://x/\"\ncommand = \"x\"")
            .starts_with("upstream[0].command:")
    );
    let stdio = Config::parse(
        "[[upstream]]\nid = \"fs\"\ntransport = \"stdio\"\ncommand = \"npx\"\nargs = [\"-y\", \"server\"]\nenv = { TOKEN = \"t\" }",
    )
    .expect("stdio upstream");
    assert_eq!(stdio.upstream[0].transport, Transport::Stdio);
    assert_eq!(stdio.upstream[0].max_processes, 64);
    assert!(err("[[upstream]]\nid = \"a\"\nurl = \"ftp://x/\"").starts_with("upstream[0].url:"));
    assert!(err(
        "[[upstream]]\nid = \"a\"\nurl = \"http://x/\"\n[[upstream]]\nid = \"a\"\nurl = \"http://y/\""
    )
    .contains("duplicate"));
    assert!(
        err("[[endpoint]]\npath = \"/x\"\nupstreams = [\"nope\"]")
            .starts_with("endpoint[0].upstreams:")
    );
    assert!(err("[[endpoint]]\npath = \"x\"\nupstreams = []").starts_with("endpoint[0].path:"));
}

/// Errors of a file named `f.toml` holding `text`.
fn err_in_file(text: &str) -> String {
    Config::parse(text)
        .expect_err("must be refused")
        .in_file(Path::new("f.toml"), Some(text))
        .to_string()
}

#[test]
fn errors_name_the_file_the_real_key_and_its_line() {
    let two = "[[upstream]]\nid = \"a\"\nurl = \"http://x/\"\n\n[[upstream]]\nid = \"b\"\nurl = \"http://x/\"\n";
    assert_eq!(
        err_in_file(&format!("{two}connect_timeout_ms = 0\n")),
        "f.toml:8: upstream[1].connect_timeout_ms: must be greater than 0"
    );
    assert_eq!(
        err_in_file(&format!("{two}request_timeout_ms = 0\n")),
        "f.toml:8: upstream[1].request_timeout_ms: must be greater than 0"
    );
    assert_eq!(
        err_in_file("workers = 2\n\n[limits]\nmax_body_bytes = 0\n"),
        "f.toml:4: limits.max_body_bytes: must be greater than 0"
    );
    assert_eq!(
        err_in_file("[[upstream]]\nid = \"a\"\nurl = \"http://x/\"\nargs = [\"x\"]\n"),
        "f.toml:4: upstream[0].args: command, args and env are for transport = \"stdio\""
    );
    // A key left at its default has no line of its own: its table's header.
    let e = err_in_file("[sessions]\nheartbeat_ms = 5000\n");
    assert_eq!(
        e,
        "f.toml:1: sessions.heartbeat_ttl_ms: must be at least twice sessions.heartbeat_ms"
    );
    // Without a file: the key alone, as before.
    assert_eq!(err("workers = 0"), "workers: must be 1..=256, got 0");
    // TOML's own errors keep their line and column, once.
    let e = Config::parse("lsten = []")
        .expect_err("unknown key")
        .in_file(Path::new("f.toml"), None)
        .to_string();
    assert!(
        e.starts_with("f.toml: TOML parse error at line 1, column 1"),
        "{e}"
    );
    assert_eq!(e.matches("unknown field").count(), 1, "{e}");
}

#[test]
fn a_host_name_as_listen_address_says_an_ip_address_is_needed() {
    let e = err("listen = [\"localhost:8080\"]");
    assert!(e.contains("line 1"), "{e}");
    assert!(
        e.contains("\"localhost:8080\" is not an IP address and port")
            && e.contains("e.g. 127.0.0.1:8080"),
        "{e}"
    );
    assert!(err("admin_listen = \"example.com:1\"").contains("host names are not resolved"));
    assert!(
        err("[[tls_listener]]\naddr = \"8443\"\ncert = \"c\"\nkey = \"k\"")
            .contains("\"8443\" is not an IP address and port")
    );
    let c = Config::parse("listen = [\"[::1]:8080\", \"127.0.0.1:0\"]").expect("IP addresses");
    assert_eq!(c.listen.len(), 2);
    assert_eq!(parse_listen_addr("127.0.0.1:9").expect("ok").port(), 9);
}

struct Env;

impl crate::secrets::Resolver for Env {
    fn var(&self, name: &str) -> Result<String, String> {
        match name {
            "UPSTREAM_TOKEN" => Ok("s3cret".to_owned()),
            "REDIS_PASSWORD" => Ok("hunter2".to_owned()),
            _ => Err(format!("${{{name}}}: {name} is not set in the environment")),
        }
    }

    fn file(&self, path: &Path) -> Result<String, String> {
        Err(format!("${{file:{}}}: cannot read it", path.display()))
    }
}

#[test]
fn references_resolve_and_the_written_form_is_kept_for_display() {
    let text = "[[upstream]]\nid = \"a\"\nurl = \"http://127.0.0.1:1/${UPSTREAM_TOKEN}/mcp\"\nheaders = { Authorization = \"Bearer ${UPSTREAM_TOKEN}\", X-Price = \"$$5\" }\n[store]\nredis_url = \"redis://:${REDIS_PASSWORD}@127.0.0.1:6379/0\"\n";
    let c = Config::parse_with(text, &Env).expect("valid");
    let u = &c.upstream[0];
    assert_eq!(u.url, "http://127.0.0.1:1/s3cret/mcp");
    assert_eq!(u.headers["Authorization"], "Bearer s3cret");
    assert_eq!(u.headers["X-Price"], "$5");
    assert_eq!(
        c.store.redis_url.as_deref(),
        Some("redis://:hunter2@127.0.0.1:6379/0")
    );
    let written = c.as_written();
    assert_eq!(
        written.upstream[0].headers["Authorization"],
        "Bearer ${UPSTREAM_TOKEN}"
    );
    assert_eq!(
        written.upstream[0].url,
        "http://127.0.0.1:1/${UPSTREAM_TOKEN}/mcp"
    );
    assert!(written.as_written.is_none());
    // Without references nothing is kept twice.
    assert!(
        Config::parse_with("workers = 1", &Env)
            .expect("valid")
            .as_written
            .is_none()
    );
}

#[test]
fn an_unresolvable_reference_names_the_key_and_the_variable() {
    let text = "[[upstream]]\nid = \"a\"\nurl = \"http://127.0.0.1:1/mcp\"\nheaders = { Authorization = \"Bearer ${UPSTREAM_TOKEN}${MISSING_TOKEN}\" }\n";
    let e = Config::parse_with(text, &Env)
        .expect_err("unset")
        .in_file(Path::new("f.toml"), Some(text))
        .to_string();
    assert_eq!(
        e,
        "f.toml:4: upstream[0].headers: header \"Authorization\": ${MISSING_TOKEN}: MISSING_TOKEN is not set in the environment"
    );
    let e = Config::parse_with("[store]\nredis_url = \"redis://:${file:/nope}@h/\"", &Env)
        .expect_err("unreadable")
        .to_string();
    assert!(e.starts_with("store.redis_url: ${file:/nope}"), "{e}");
}

#[test]
fn errors_never_show_a_password() {
    let e = err("[[upstream]]\nid = \"a\"\nurl = \"http://user:s3cret@127.0.0.1:1/mcp\"");
    assert!(e.starts_with("upstream[0].url:"), "{e}");
    assert!(
        !e.contains("s3cret") && e.contains("<redacted>@127.0.0.1:1"),
        "{e}"
    );
    let e = err("[[upstream]]\nid = \"a\"\nurl = \"https://u:s3cret@x/?key=k3y\"");
    assert!(!e.contains("s3cret") && !e.contains("k3y"), "{e}");
    let e = err("[store]\nredis_url = \"http://:hunter2@10.0.0.1/\"");
    assert!(
        e.starts_with("store.redis_url:") && !e.contains("hunter2"),
        "{e}"
    );
    let e = err(concat!(
        "[store]\nredis_url = \"redis://u:hunter2@10.0.0.1/0\"\n",
        "sentinels = [\"10.0.0.2:26379\"]\nsentinel_master = \"mymaster\"\n",
    ));
    assert!(
        e.starts_with("store.redis_url:") && !e.contains("hunter2"),
        "{e}"
    );
}

/// `rediss://`, its TLS files, ACL credentials in the URL, and Sentinel:
/// what is accepted and how the rest is refused.
#[test]
fn redis_for_production() {
    let c = Config::parse(concat!(
        "[store]\nredis_url = \"rediss://mcpgw:pw@redis.internal:6380/2\"\n",
        "redis_ca_file = \"/etc/mcpgw/redis-ca.pem\"\n",
        "redis_client_cert_file = \"/etc/mcpgw/redis.crt\"\n",
        "redis_client_key_file = \"/etc/mcpgw/redis.key\"\n",
    ))
    .expect("valid");
    assert_eq!(c.store.redis_target(), RedisTarget::Direct);
    let files = c.store.redis_tls_files();
    assert_eq!(files.ca_file, Some(Path::new("/etc/mcpgw/redis-ca.pem")));
    assert!(files.identity.is_some());
    let c = Config::parse(concat!(
        "[store]\nredis_url = \"redis://mcpgw:pw@mymaster/0\"\n",
        "sentinels = [\"10.0.0.1:26379\", \"sentinel-2:26379\"]\n",
        "sentinel_master = \"mymaster\"\nsentinel_password = \"s3nt\"\n",
    ))
    .expect("valid");
    assert_eq!(
        c.store.redis_target(),
        RedisTarget::Sentinel {
            sentinels: &["10.0.0.1:26379".to_owned(), "sentinel-2:26379".to_owned()],
            master: "mymaster"
        }
    );
    for (text, expected) in [
        (
            "redis_url = \"redis://h/\"\nredis_ca_file = \"/ca.pem\"",
            "store.redis_ca_file: needs a rediss:// store.redis_url",
        ),
        (
            "redis_client_cert_file = \"/c.pem\"",
            "store.redis_client_cert_file: needs a rediss:// store.redis_url",
        ),
        (
            "redis_url = \"rediss://h/\"\nredis_client_cert_file = \"/c.pem\"",
            "store.redis_client_key_file: required with store.redis_client_cert_file",
        ),
        (
            "redis_url = \"rediss://h/\"\nredis_client_key_file = \"/k.pem\"",
            "store.redis_client_cert_file: required with store.redis_client_key_file",
        ),
        (
            "redis_url = \"redis://m/\"\nsentinels = [\"h:26379\"]",
            "store.sentinel_master: required with store.sentinels",
        ),
        (
            "redis_url = \"redis://m/\"\nsentinel_master = \"m\"",
            "store.sentinels: required with store.sentinel_master",
        ),
        (
            "sentinel_password = \"p\"",
            "store.sentinel_password: needs store.sentinels",
        ),
        (
            "redis_url = \"redis://m/\"\nsentinel_master = \"m\"\nsentinels = [\"h\"]",
            "store.sentinels[0]: \"h\" must be host:port",
        ),
        (
            "sentinel_master = \"m\"\nsentinels = [\"h:26379\"]",
            "store.redis_url: required with store.sentinels",
        ),
        (
            "redis_url = \"unix:///r.sock\"\nsentinel_master = \"m\"\nsentinels = [\"h:1\"]",
            "store.redis_url: \"unix:///r.sock\": with store.sentinels it must be redis:// or rediss://",
        ),
        (
            "redis_url = \"redis://m:6379/\"\nsentinel_master = \"m\"\nsentinels = [\"h:1\"]",
            "store.redis_url: \"redis://m:6379/\": with store.sentinels its host must be the master's name \"m\"",
        ),
    ] {
        let e = err(&format!("[store]\n{text}\n"));
        assert!(e.starts_with(expected), "{text}: {e}");
    }
}

/// The sentinels' password may come from a reference, like `redis_url`'s.
#[test]
fn the_sentinel_password_may_be_a_reference() {
    let c = Config::parse_with(
        concat!(
            "[store]\nredis_url = \"redis://:${REDIS_PASSWORD}@m/\"\n",
            "sentinels = [\"h:26379\"]\nsentinel_master = \"m\"\n",
            "sentinel_password = \"${REDIS_PASSWORD}\"\n",
        ),
        &Env,
    )
    .expect("valid");
    assert_eq!(c.store.sentinel_password.as_deref(), Some("hunter2"));
    assert_eq!(
        c.as_written().store.sentinel_password.as_deref(),
        Some("${REDIS_PASSWORD}")
    );
}

#[test]
fn an_admin_api_off_loopback_needs_a_token_file() {
    let e = err("admin_listen = \"0.0.0.0:9090\"");
    assert!(e.starts_with("admin_token_file:"), "{e}");
    assert!(e.contains("0.0.0.0:9090"), "{e}");
    Config::parse("admin_listen = \"0.0.0.0:9090\"\nadmin_token_file = \"/t\"")
        .expect("with a token file");
    Config::parse("admin_listen = \"[::1]:9090\"").expect("loopback needs none");
}

#[test]
fn admin_token_is_read_trimmed_and_checked() {
    let dir = std::env::temp_dir().join(format!("mcpgw-token-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("token");
    let mut config = Config::default();
    assert_eq!(config.read_admin_token().expect("none"), None);
    config.admin_token_file = Some(file.clone());
    let e = config
        .read_admin_token()
        .expect_err("missing file")
        .to_string();
    assert!(
        e.starts_with("admin_token_file: cannot read") && e.contains("token"),
        "{e}"
    );
    std::fs::write(&file, " \n").expect("write");
    let e = config.read_admin_token().expect_err("empty").to_string();
    assert!(
        e.starts_with("admin_token_file:") && e.ends_with("is empty"),
        "{e}"
    );
    std::fs::write(&file, "two words\n").expect("write");
    assert!(config.read_admin_token().is_err());
    std::fs::write(&file, "t0ken\n").expect("write");
    let token = config.read_admin_token().expect("read").expect("a token");
    assert_eq!(token.as_bytes(), b"t0ken");
    assert!(!format!("{token:?}").contains("t0ken"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn survives_the_control_channel_encoding() {
    let c = Config::parse(
        "[[upstream]]\nid = \"a\"\nurl = \"http://127.0.0.1:1/mcp\"\nheaders = { k = \"v\" }",
    )
    .expect("valid");
    let bytes = bincode::serde::encode_to_vec(&c, bincode::config::standard()).expect("enc");
    let (back, _): (Config, usize) =
        bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).expect("dec");
    assert_eq!(back, c);
}

#[test]
fn upstream_era_defaults_to_auto_and_is_checked() {
    let c = Config::parse("[[upstream]]\nid = \"a\"\nurl = \"http://x/\"").expect("valid");
    assert_eq!(c.upstream[0].era, UpstreamEra::Auto);
    for (text, era) in [
        ("auto", UpstreamEra::Auto),
        ("stateful", UpstreamEra::Stateful),
        ("stateless", UpstreamEra::Stateless),
    ] {
        let c = Config::parse(&format!(
            "[[upstream]]\nid = \"a\"\nurl = \"http://x/\"\nera = \"{text}\""
        ))
        .expect("valid");
        assert_eq!(c.upstream[0].era, era);
    }
    assert!(err("[[upstream]]\nid = \"a\"\nurl = \"http://x/\"\nera = \"modern\"").contains("era"));
    assert!(
        err("[[upstream]]\nid = \"a\"\ntransport = \"sse\"\nurl = \"http://x/sse\"\nera = \"stateless\"")
            .starts_with("upstream[0].era:")
    );
    // A stdio upstream may pin the session protocol (it is all it speaks).
    Config::parse(
        "[[upstream]]\nid = \"a\"\ntransport = \"stdio\"\ncommand = \"x\"\nera = \"stateful\"",
    )
    .expect("valid");
}

#[test]
fn https_upstreams_and_their_tls_keys() {
    let c = Config::parse(
        "[[upstream]]\nid = \"a\"\nurl = \"https://mcp.example.com/mcp\"\nca_file = \"/etc/ca.pem\"\n\
         client_cert_file = \"/etc/c.pem\"\nclient_key_file = \"/etc/c.key\"\n",
    )
    .expect("valid");
    let u = &c.upstream[0];
    assert!(u.is_https());
    let files = u.tls_files();
    assert_eq!(files.ca_file, Some(Path::new("/etc/ca.pem")));
    assert_eq!(
        files.identity,
        Some((Path::new("/etc/c.pem"), Path::new("/etc/c.key")))
    );
    let sse = "[[upstream]]\nid = \"a\"\ntransport = \"sse\"\nurl = \"https://h/sse\"\n";
    assert!(Config::parse(sse).expect("https legacy SSE").upstream[0].is_https());

    let cert_only = err(
        "[[upstream]]\nid = \"a\"\nurl = \"https://h/mcp\"\nclient_cert_file = \"/etc/c.pem\"\n",
    );
    assert!(
        cert_only.starts_with("upstream[0].client_key_file:"),
        "{cert_only}"
    );
    assert!(cert_only.contains("both or neither"), "{cert_only}");
    let key_only =
        err("[[upstream]]\nid = \"a\"\nurl = \"https://h/mcp\"\nclient_key_file = \"/k\"\n");
    assert!(
        key_only.starts_with("upstream[0].client_cert_file:"),
        "{key_only}"
    );
    let on_http = err("[[upstream]]\nid = \"a\"\nurl = \"http://h/mcp\"\nca_file = \"/ca\"\n");
    assert!(on_http.starts_with("upstream[0].ca_file:"), "{on_http}");
    assert!(on_http.contains("https://"), "{on_http}");
    let on_stdio = err(
        "[[upstream]]\nid = \"a\"\ntransport = \"stdio\"\ncommand = \"x\"\nca_file = \"/ca\"\n",
    );
    assert!(on_stdio.starts_with("upstream[0].ca_file:"), "{on_stdio}");
    assert!(err("[[upstream]]\nid = \"a\"\nurl = \"ftp://h/\"\n").contains("http:// or https://"));
}

#[test]
fn check_tls_files_names_the_upstream_key() {
    let dir = std::env::temp_dir().join(format!("mcpgw-tls-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let missing = dir.join("missing.pem");
    let not_pem = dir.join("not.pem");
    std::fs::write(&not_pem, "no certificate here\n").expect("write");
    for (file, want) in [
        (&missing, "reading"),
        (&not_pem, "no usable CA certificate"),
    ] {
        let c = Config::parse(&format!(
            "[[upstream]]\nid = \"a\"\nurl = \"https://h/mcp\"\nca_file = {:?}\n",
            file.display().to_string()
        ))
        .expect("valid");
        let e = c.check_tls_files().expect_err("refused").to_string();
        assert!(e.starts_with("upstream[0].ca_file:"), "{e}");
        assert!(e.contains(want), "{e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

const AUTH: &str =
    "[auth]\nissuer = \"https://idp.example.com\"\njwks_file = \"/etc/mcpgw/jwks.json\"\n";

#[test]
fn auth_is_a_table_or_off() {
    let c = Config::parse(&format!("{AUTH}required_scopes = [\"mcp\"]")).expect("valid");
    let a = c.auth.jwt().expect("jwt");
    assert_eq!(a.issuer, "https://idp.example.com");
    assert_eq!(a.required_scopes, vec!["mcp"]);
    assert_eq!(a.max_sessions_per_principal, 64);
    assert_eq!(a.authorization_servers(), vec!["https://idp.example.com"]);
    let off = Config::parse("auth = \"off\"").expect("valid");
    assert_eq!(off.auth, AuthSetting::Off);
    assert_eq!(Config::parse("").expect("valid").auth, AuthSetting::Unset);
    assert!(err("auth = \"on\"").contains("only string allowed is \"off\""));
    assert!(err(&format!("{AUTH}bogus = 1")).contains("bogus"));
}

#[test]
fn auth_travels_the_control_channel() {
    let cfg = bincode::config::standard();
    for text in ["", "auth = \"off\"", AUTH] {
        let c = Config::parse(text).expect("valid");
        let bytes = bincode::serde::encode_to_vec(&c, cfg).expect("encodes");
        let (back, _): (Config, usize) =
            bincode::serde::decode_from_slice(&bytes, cfg).expect("decodes");
        assert_eq!(back, c, "{text}");
    }
}

#[test]
fn a_listener_beyond_loopback_needs_auth_or_an_explicit_off() {
    let e = err("listen = [\"0.0.0.0:8080\"]");
    assert!(e.starts_with("auth:") && e.contains("0.0.0.0:8080"), "{e}");
    let tls = err("[[tls_listener]]\naddr = \"10.0.0.1:8443\"\ncert = \"c\"\nkey = \"k\"");
    assert!(tls.starts_with("auth:"), "{tls}");
    Config::parse("listen = [\"0.0.0.0:8080\"]\nauth = \"off\"").expect("explicitly off");
    Config::parse(&format!("listen = [\"0.0.0.0:8080\"]\n{AUTH}")).expect("with [auth]");
    Config::parse("listen = [\"127.0.0.1:8080\", \"[::1]:8080\"]").expect("loopback only");
}

#[test]
fn auth_values_are_checked() {
    let key_src = "[auth]\nissuer = \"https://i\"\n";
    assert!(err(key_src).contains("jwks_url or jwks_file"));
    assert!(
        err(&format!(
            "{key_src}jwks_file = \"/j\"\njwks_url = \"http://127.0.0.1/j\""
        ))
        .starts_with("auth.jwks_url:")
    );
    Config::parse(&format!("{key_src}jwks_url = \"https://i/jwks\"")).expect("https");
    assert!(
        err(&format!(
            "{key_src}jwks_url = \"http://idp.example.com/jwks\""
        ))
        .contains("loopback")
    );
    Config::parse(&format!("{key_src}jwks_url = \"http://127.0.0.1:9/jwks\"")).expect("loopback");
    assert!(err("[auth]\nissuer = \"\"\njwks_file = \"/j\"").starts_with("auth.issuer:"));
    assert!(
        err(&format!("{AUTH}required_scopes = [\"a b\"]")).starts_with("auth.required_scopes[0]:")
    );
    let per_endpoint = "[[upstream]]\nid = \"a\"\nurl = \"http://x/\"\n[[endpoint]]\npath = \"/a\"\nupstreams = [\"a\"]\nauth_audience = \"https://a\"\nauth_required_scopes = [\"x\"]\n";
    assert!(err(per_endpoint).starts_with("endpoint[0]:"));
    let c = Config::parse(&format!("{AUTH}{per_endpoint}")).expect("valid with [auth]");
    assert_eq!(c.endpoint[0].auth_audience.as_deref(), Some("https://a"));
    assert!(
        err(&format!("{AUTH}{per_endpoint}").replace("[\"x\"]", "[\"\"]"))
            .starts_with("endpoint[0].auth_required_scopes[0]:")
    );
}

/// Two upstreams behind `/mcp` (names namespaced `crm__…`, `docs__…`).
const FEDERATED: &str = "[[upstream]]\nid = \"crm\"\nurl = \"http://x/\"\n\
    [[upstream]]\nid = \"docs\"\nurl = \"http://y/\"\n\
    [[endpoint]]\npath = \"/mcp\"\nupstreams = [\"crm\", \"docs\"]\n";

#[test]
fn authz_rules_and_rate_limits_parse_and_travel_the_control_channel() {
    let text = format!(
        "{AUTH}groups_claim = \"https://idp/groups\"\n{FEDERATED}authz_default = \"deny\"\n\
         rate_limit = {{ per_principal = \"20/s\", burst = 40, endpoint = \"500/m\" }}\n\
         [[endpoint.authz]]\neffect = \"deny\"\ntools = [\"crm__delete_*\"]\n\
         resources = [\"file:///secret/*\"]\nwhen = {{ groups = [\"contractors\"] }}\n\
         [[endpoint.authz]]\neffect = \"allow\"\n"
    );
    let c = Config::parse(&text).expect("valid");
    let e = &c.endpoint[0];
    assert_eq!(e.authz_default, Effect::Deny);
    assert_eq!(e.authz.len(), 2);
    assert_eq!(e.authz[0].effect, Effect::Deny);
    assert_eq!(
        e.authz[0].when.as_ref().and_then(|w| w.groups.clone()),
        Some(vec!["contractors".to_owned()])
    );
    assert_eq!(e.authz[1].tools, None);
    let limit = e.rate_limit.as_ref().expect("rate_limit");
    assert_eq!(
        limit.per_principal.map(|r| r.to_string()),
        Some("20/s".into())
    );
    assert_eq!(limit.endpoint.map(|r| r.per_secs), Some(60));
    assert_eq!(
        c.auth.jwt().map(|a| a.groups_claim.as_str()),
        Some("https://idp/groups")
    );
    assert_eq!(c.auth.jwt().map(|a| a.roles_claim.as_str()), Some("roles"));
    let cfg = bincode::config::standard();
    let bytes = bincode::serde::encode_to_vec(&c, cfg).expect("encodes");
    let (back, _): (Config, usize) =
        bincode::serde::decode_from_slice(&bytes, cfg).expect("decodes");
    assert_eq!(back, c);
    // Shown as written in /admin/config (TOML out, TOML in).
    let shown = toml::to_string(&c).expect("toml");
    assert!(shown.contains("per_principal = \"20/s\""), "{shown}");
}

#[test]
fn authz_rules_that_can_never_match_are_refused_with_their_line() {
    let rule =
        |body: &str| format!("{AUTH}{FEDERATED}[[endpoint.authz]]\neffect = \"deny\"\n{body}\n");
    // A bare name on a federated endpoint: every name there is namespaced.
    let e = err_in_file(&rule("tools = [\"delete_*\"]"));
    assert!(
        e.starts_with("f.toml:")
            && e.contains("endpoint[0].authz[0].tools[0]: \"delete_*\" can never match"),
        "{e}"
    );
    assert!(e.contains("crm__"), "{e}");
    Config::parse(&rule("tools = [\"*delete*\", \"docs__x\"]")).expect("can match");
    assert!(err(&rule("tools = []")).contains("can never match"));
    assert!(err(&rule("tools = [\"crm__a\\\\\"]")).starts_with("endpoint[0].authz[0].tools[0]:"));
    assert!(err(&rule("resources = [\"\"]")).contains("empty pattern"));
    assert!(err(&rule("when = { groups = [] }")).starts_with("endpoint[0].authz[0].when.groups:"));
    assert!(err(&rule("when = { team = [\"x\"] }")).contains("team"));
    // Without [auth] callers have no claims: a rule on claims is nonsense.
    let no_auth =
        format!("{FEDERATED}[[endpoint.authz]]\neffect = \"deny\"\nwhen = {{ sub = [\"a\"] }}\n");
    assert!(
        err(&no_auth).starts_with("endpoint[0].authz[0].when:"),
        "{}",
        err(&no_auth)
    );
    // Rules without `when` apply to everyone, [auth] or not.
    Config::parse(&format!(
        "{FEDERATED}[[endpoint.authz]]\neffect = \"deny\"\nresources = [\"x://*\"]\n"
    ))
    .expect("valid without [auth]");
    assert!(err(&format!("{AUTH}groups_claim = \"\"\n")).starts_with("auth.groups_claim:"));
}

#[test]
fn rate_limits_are_checked() {
    let limit = |body: &str| format!("{FEDERATED}rate_limit = {{ {body} }}\n");
    Config::parse(&limit("per_principal = \"2/s\"")).expect("burst defaults");
    assert!(err(&limit("burst = 3")).starts_with("endpoint[0].rate_limit:"));
    assert!(
        err(&limit("endpoint = \"5/s\", burst = 3")).starts_with("endpoint[0].rate_limit.burst:")
    );
    assert!(err(&limit("per_principal = \"2/s\", burst = 0")).contains("at least 1"));
    assert!(err(&limit("per_principal = \"2/d\"")).contains("N/s, N/m or N/h"));
    assert!(err(&limit("per_principal = \"0/s\"")).contains("refuses everything"));
}

const OAUTH: &str = "[[upstream]]\nid = \"crm\"\nurl = \"http://127.0.0.1:1/mcp\"\n\n\
[upstream.oauth]\ntoken_url = \"http://127.0.0.1:2/oauth/token\"\nclient_id = \"mcpgw\"\n\
client_secret = \"${UPSTREAM_TOKEN}\"\nscopes = [\"crm.read\", \"crm.write\"]\n";

#[test]
fn upstream_oauth_parses_resolves_its_secret_and_travels() {
    let c = Config::parse_with(OAUTH, &Env).expect("valid");
    let o = c.upstream[0].oauth.as_ref().expect("oauth");
    assert_eq!(o.client_secret, "s3cret");
    assert_eq!(o.scopes, ["crm.read", "crm.write"]);
    assert_eq!(o.auth_method, ClientAuthMethod::ClientSecretBasic);
    assert_eq!(o.resource, None);
    let written = c.as_written().upstream[0].oauth.as_ref().expect("oauth");
    assert_eq!(written.client_secret, "${UPSTREAM_TOKEN}");
    assert!(!c.upstream[0].needs_tls());
    let bytes = bincode::serde::encode_to_vec(&c, bincode::config::standard()).expect("enc");
    let (back, _): (Config, usize) =
        bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).expect("dec");
    assert_eq!(
        back.upstream, c.upstream,
        "as_written stays with the supervisor"
    );
    let post = format!("{OAUTH}auth_method = \"client_secret_post\"\n");
    let c = Config::parse_with(&post, &Env).expect("valid");
    assert_eq!(
        c.upstream[0].oauth.as_ref().map(|o| o.auth_method),
        Some(ClientAuthMethod::ClientSecretPost)
    );
}

#[test]
fn upstream_oauth_refusals_name_the_key_and_line() {
    let in_file = |text: &str| {
        Config::parse_with(text, &Env)
            .expect_err("refused")
            .in_file(Path::new("f.toml"), Some(text))
            .to_string()
    };
    let e = in_file(&OAUTH.replace("http://127.0.0.1:2", "ftp://idp"));
    assert!(
        e.starts_with("f.toml:6: upstream[0].oauth.token_url:"),
        "{e}"
    );
    let e = in_file(
        &format!("{OAUTH}scopes = [\"a b\"]\n")
            .replace("scopes = [\"crm.read\", \"crm.write\"]\n", ""),
    );
    assert!(e.starts_with("f.toml:9: upstream[0].oauth.scopes:"), "{e}");
    let e = in_file(&format!("{OAUTH}auth_method = \"private_key_jwt\"\n"));
    assert!(
        e.contains("auth_method") || e.contains("unknown variant"),
        "{e}"
    );
    // A static Authorization header and the grant are mutually exclusive.
    let both = OAUTH.replace(
        "url = \"http://127.0.0.1:1/mcp\"\n",
        "url = \"http://127.0.0.1:1/mcp\"\nheaders = { authorization = \"Bearer x\" }\n",
    );
    let e = in_file(&both);
    assert!(e.starts_with("f.toml:6: upstream[0].oauth:"), "{e}");
    assert!(e.contains("mutually exclusive"), "{e}");
    let stdio = "[[upstream]]\nid = \"a\"\ntransport = \"stdio\"\ncommand = \"x\"\n\
        [upstream.oauth]\ntoken_url = \"http://i/t\"\nclient_id = \"c\"\nclient_secret = \"s\"\n";
    assert!(err(stdio).starts_with("upstream[0].oauth:"));
    // The secret never shows in a refusal.
    let e = in_file(&format!("{OAUTH}resource = \"relative\"\n"));
    assert!(e.contains("upstream[0].oauth.resource"), "{e}");
    assert!(!e.contains("s3cret"), "{e}");
}

#[test]
fn an_https_token_endpoint_allows_tls_keys_on_an_http_upstream() {
    let text = OAUTH.replace("http://127.0.0.1:2", "https://idp.example.com")
        + "ca_file = \"/etc/ca.pem\"\n";
    // `ca_file` after the sub-table belongs to it: put it before.
    let text = text.replace("ca_file = \"/etc/ca.pem\"\n", "").replace(
        "url = \"http://127.0.0.1:1/mcp\"\n",
        "url = \"http://127.0.0.1:1/mcp\"\nca_file = \"/etc/ca.pem\"\n",
    );
    let c = Config::parse_with(&text, &Env).expect("valid");
    assert!(c.upstream[0].needs_tls());
    assert!(!c.upstream[0].is_https());
    let plain = OAUTH.replace(
        "url = \"http://127.0.0.1:1/mcp\"\n",
        "url = \"http://127.0.0.1:1/mcp\"\nca_file = \"/etc/ca.pem\"\n",
    );
    let e = Config::parse_with(&plain, &Env).expect_err("no https anywhere");
    assert!(e.to_string().starts_with("upstream[0].ca_file:"), "{e}");
}

#[test]
fn cluster_needs_redis_a_key_and_an_address_peers_can_reach() {
    let redis = "[store]\nredis_url = \"redis://127.0.0.1:6379/\"\n";
    let ok = Config::parse(&format!(
        "{redis}[cluster]\nlisten = \"10.0.0.2:9000\"\nkey_file = \"/etc/mcpgw/cluster.key\"\n"
    ))
    .expect("a cluster host");
    assert_eq!(
        ok.cluster.listen,
        Some("10.0.0.2:9000".parse().expect("addr"))
    );
    assert_eq!(ok.cluster.advertise, None);
    assert!(
        !ok.cluster.handover_on_stop,
        "hosts keep their sessions by default"
    );
    assert!(Config::default().cluster.listen.is_none());
    let handing = Config::parse(&format!(
        "{redis}[cluster]\nlisten = \"10.0.0.2:9000\"\nkey_file = \"/k\"\nhandover_on_stop = true\n"
    ))
    .expect("handover on stop");
    assert!(handing.cluster.handover_on_stop);
    assert!(
        err("[cluster]\nhandover_on_stop = true\n")
            .starts_with("cluster.handover_on_stop: needs cluster.listen")
    );
    assert!(
        err(&format!(
            "{redis}[cluster]\nlisten = \"10.0.0.2:9000\"\nkey_file = \"/k\"\nhandover_on_stop = \"yes\"\n"
        ))
        .contains("handover_on_stop")
    );

    assert!(
        err("[cluster]\nlisten = \"10.0.0.2:9000\"\nkey_file = \"/k\"\n")
            .starts_with("cluster.listen: needs store.redis_url")
    );
    assert!(
        err(&format!("{redis}[cluster]\nlisten = \"10.0.0.2:9000\"\n"))
            .starts_with("cluster.key_file:")
    );
    assert!(
        err(&format!(
            "{redis}[cluster]\nlisten = \"0.0.0.0:9000\"\nkey_file = \"/k\"\n"
        ))
        .starts_with("cluster.advertise: required")
    );
    for bad in ["gw-2", "gw-2:0", ":9000", "gw/2:9000", "gw-2:99999"] {
        assert!(
            err(&format!(
                "{redis}[cluster]\nlisten = \"0.0.0.0:9000\"\nadvertise = \"{bad}\"\nkey_file = \"/k\"\n"
            ))
            .starts_with("cluster.advertise:"),
            "{bad}"
        );
    }
    Config::parse(&format!(
        "{redis}[cluster]\nlisten = \"0.0.0.0:9000\"\nadvertise = \"gw-2.internal:9000\"\nkey_file = \"/k\"\n"
    ))
    .expect("advertised by name");
    assert!(
        err("[cluster]\nadvertise = \"gw-2:9000\"\n")
            .starts_with("cluster.advertise: needs cluster.listen")
    );
    assert!(err("[cluster]\nlisten = \"gw-2:9000\"\n").contains("not an IP address"));
}

#[test]
fn tracing_is_off_by_default_and_its_keys_are_checked() {
    let c = Config::parse("").expect("valid");
    assert!(!c.tracing.is_on());
    assert_eq!(c.tracing.traces_url(), None);
    assert_eq!(c.tracing.service_name, "mcpgw");
    assert_eq!(c.tracing.sample_ratio, 1.0);
    let c = Config::parse(
        "[tracing]\notlp_endpoint = \"http://127.0.0.1:4318\"\nsample_ratio = 0.25\nservice_name = \"gw\"\nheaders = { x-api-key = \"k\" }",
    )
    .expect("valid");
    assert_eq!(
        c.tracing.traces_url().as_deref(),
        Some("http://127.0.0.1:4318/v1/traces")
    );
    let bytes = bincode::serde::encode_to_vec(&c, bincode::config::standard()).expect("enc");
    let (back, _): (Config, usize) =
        bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).expect("dec");
    assert_eq!(back, c);
    let full = Config::parse("[tracing]\notlp_endpoint = \"https://otel.example/v1/traces/\"")
        .expect("valid");
    assert_eq!(
        full.tracing.traces_url().as_deref(),
        Some("https://otel.example/v1/traces")
    );

    let text =
        "workers = 1\n\n[tracing]\notlp_endpoint = \"http://127.0.0.1:4318\"\nsample_ratio = 1.5\n";
    assert_eq!(
        err_in_file(text),
        "f.toml:5: tracing.sample_ratio: must be between 0.0 and 1.0 (a share of traces), got 1.5"
    );
    let e = err_in_file("[tracing]\notlp_endpoint = \"127.0.0.1:4318\"\n");
    assert!(
        e.starts_with("f.toml:2: tracing.otlp_endpoint: \"127.0.0.1:4318\" must start with http"),
        "{e}"
    );
    let e = err("[tracing]\notlp_endpoint = \"http://u:pw@h:4318\"");
    assert!(
        e.starts_with("tracing.otlp_endpoint:") && !e.contains("pw"),
        "{e}"
    );
    let e = err("[tracing]\nheaders = { a = \"b\" }");
    assert!(
        e.starts_with("tracing.headers: needs tracing.otlp_endpoint"),
        "{e}"
    );
    let e = err("[tracing]\notlp_endpoint = \"http://h\"\nheaders = { \"a b\" = \"s3cret\" }");
    assert!(e.starts_with("tracing.headers: header \"a b\": "), "{e}");
    let e = err("[tracing]\notlp_endpoint = \"http://h\"\nheaders = { a = \"s3cret\\n\" }");
    assert!(e.contains("control") && !e.contains("s3cret"), "{e}");
    assert!(err("[tracing]\nservice_name = \"\"").starts_with("tracing.service_name:"));
    assert!(err("[tracing]\nsample_ratio = -0.1").starts_with("tracing.sample_ratio:"));
    assert!(err("[tracing]\nsample_ratio = nan").starts_with("tracing.sample_ratio:"));
    assert!(err("[tracing]\notlp = \"http://h\"").contains("unknown field `otlp`"));
}

#[test]
fn tracing_headers_and_endpoint_take_references() {
    let text = "[tracing]\notlp_endpoint = \"http://127.0.0.1:4318/${UPSTREAM_TOKEN}\"\nheaders = { authorization = \"Bearer ${UPSTREAM_TOKEN}\" }\n";
    let c = Config::parse_with(text, &Env).expect("valid");
    assert_eq!(c.tracing.headers["authorization"], "Bearer s3cret");
    assert_eq!(
        c.tracing.otlp_endpoint.as_deref(),
        Some("http://127.0.0.1:4318/s3cret")
    );
    assert_eq!(
        c.as_written().tracing.headers["authorization"],
        "Bearer ${UPSTREAM_TOKEN}"
    );
    let e = Config::parse_with(
        "[tracing]\notlp_endpoint = \"http://h\"\nheaders = { k = \"${MISSING_TOKEN}\" }",
        &Env,
    )
    .expect_err("unset")
    .to_string();
    assert!(
        e.starts_with("tracing.headers: header \"k\": ${MISSING_TOKEN}"),
        "{e}"
    );
}
