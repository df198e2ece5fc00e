//! Authorization rules (`authz_default`, `[[endpoint.authz]]`) and rate
//! limits (`rate_limit`) through the real binary, with tokens of two
//! principals in different groups: lists filtered per caller, a denied call
//! answered exactly like an unknown name (both eras, a federated endpoint and
//! a one-upstream one), resources denied in lists, reads and stateless
//! subscriptions, 429 with `Retry-After` over a principal's limit while
//! another principal goes on, and the counters of both.

use mcpgw_tests::stateless::StatelessClient;
use mcpgw_tests::stream::MessageStream;

use super::*;

/// Two counter-servers (`crm`, `docs`) federated at `/mcp`, `crm` alone at
/// `/one`, and `/limited` with a rate limit; one audience for all.
fn authz_config(crm: &str, docs: &str, keys: &Keys, workers: usize) -> GatewayConfig {
    let mut config = GatewayConfig::new(workers)
        .upstream("crm", crm)
        .upstream("docs", docs);
    config.extra = format!(
        "[auth]\nissuer = \"{ISSUER}\"\njwks_file = \"{}\"\naudience = \"{AUDIENCE}\"\n\
         groups_claim = \"groups\"\n\n\
         [[endpoint]]\npath = \"/mcp\"\nupstreams = [\"crm\", \"docs\"]\n\
         authz_default = \"allow\"\n\
         [[endpoint.authz]]\neffect = \"deny\"\ntools = [\"crm__slow\", \"crm__fail\"]\n\
         resources = [\"counter://*\"]\nwhen = {{ groups = [\"contractors\"] }}\n\
         [[endpoint.authz]]\neffect = \"deny\"\nprompts = [\"docs__*\"]\n\n\
         [[endpoint]]\npath = \"/one\"\nupstreams = [\"crm\"]\n\
         [[endpoint.authz]]\neffect = \"deny\"\ntools = [\"fail\"]\n\
         when = {{ groups = [\"contractors\"] }}\n\n\
         [[endpoint]]\npath = \"/limited\"\nupstreams = [\"crm\"]\n\
         rate_limit = {{ per_principal = \"1/h\", burst = 3 }}\n\n\
         [[endpoint]]\npath = \"/shared\"\nupstreams = [\"crm\"]\n\
         rate_limit = {{ endpoint = \"1/h\", endpoint_burst = 2 }}\n",
        keys.jwks_path().display()
    );
    config
}

/// Keys, two counter-servers and a gateway with [`authz_config`].
struct Setup {
    // Dropped first: the gateway goes before its upstreams and keys.
    gateway: Gateway,
    crm: CounterServer,
    _docs: CounterServer,
    rsa: SigningKey,
    _keys: Keys,
}

impl Setup {
    fn start(workers: usize, alg: Algorithm) -> Self {
        let keys = Keys::new();
        let rsa = keys.make(alg, "key-1");
        keys.publish(&[&rsa]);
        let crm = start_counter!().expect("crm counter-server");
        let docs = start_counter!().expect("docs counter-server");
        let gateway = Gateway::start(&authz_config(&crm.url(), &docs.url(), &keys, workers))
            .expect("start mcpgw");
        Self {
            gateway,
            crm,
            _docs: docs,
            rsa,
            _keys: keys,
        }
    }
}

/// A token for `sub` in `groups`.
fn member(key: &SigningKey, sub: &str, groups: &[&str]) -> String {
    let mut c = claims(sub);
    c["groups"] = json!(groups);
    sign(key, &c)
}

/// The names (or URIs) in a list result's `key` array, each item's `member`.
fn names(result: &Value, key: &str, member: &str) -> Vec<String> {
    result[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} in {result}"))
        .iter()
        .map(|i| i[member].as_str().expect("string member").to_owned())
        .collect()
}

/// A stateless (2026-07-28) request with a bearer token; its answer.
async fn stateless_request(
    gateway: &Gateway,
    path: &str,
    token: &str,
    method: &str,
    params: Value,
) -> mcpgw_tests::RpcReply {
    let mut client = StatelessClient::new(gateway.addr, path);
    let (id, request) = client.prepare(method, params);
    let request = request.header("Authorization", &format!("Bearer {token}"));
    client.send(&id, &request).await.expect("stateless answer")
}

#[tokio::test]
async fn rules_filter_lists_and_deny_calls_like_unknown_names_in_both_eras() {
    let setup = Setup::start(2, Algorithm::RS256);
    let (gateway, crm, rsa) = (&setup.gateway, &setup.crm, &setup.rsa);
    let alice = member(rsa, "alice", &["staff"]);
    let bob = member(rsa, "bob", &["staff", "contractors"]);

    let mut staff = gateway.client().with_bearer(&alice);
    staff.initialize().await.expect("alice initialize");
    let mut contractor = gateway.client().with_bearer(&bob);
    contractor.initialize().await.expect("bob initialize");

    // Tools: the same endpoint, two lists.
    let all: Vec<String> = ["crm", "docs"]
        .iter()
        .flat_map(|u| {
            ["increment", "get_count", "slow", "fail"]
                .iter()
                .map(move |t| format!("{u}__{t}"))
        })
        .collect();
    assert_eq!(staff.tool_names().await.expect("alice tools"), all);
    let without: Vec<String> = all
        .iter()
        .filter(|n| *n != "crm__slow" && *n != "crm__fail")
        .cloned()
        .collect();
    assert_eq!(contractor.tool_names().await.expect("bob tools"), without);

    // A denied call: exactly what a name no upstream has gets.
    let denied = contractor
        .call_tool("crm__fail", json!({}))
        .await
        .expect("answer");
    let unknown = contractor
        .call_tool("nobody__fail", json!({}))
        .await
        .expect("answer");
    assert_eq!(denied.status(), unknown.status());
    assert_eq!(
        denied.error(),
        Some((-32602, "Unknown tool: crm__fail".to_owned()))
    );
    assert_eq!(
        unknown.error(),
        Some((-32602, "Unknown tool: nobody__fail".to_owned()))
    );
    assert_eq!(
        crm.stats().await.expect("stats").tools_call,
        0,
        "nothing reached crm"
    );
    // Alice may: her call reaches the upstream (a tool error is its answer).
    let allowed = staff
        .call_tool("crm__fail", json!({}))
        .await
        .expect("answer");
    assert_eq!(allowed.result().expect("result")["isError"], true);
    assert_eq!(
        contractor
            .count("crm__increment")
            .await
            .expect("bob increments"),
        1
    );

    // Prompts: a rule without `when` hides docs__* from everyone.
    let prompts = staff
        .request("prompts/list", Value::Null)
        .await
        .expect("prompts");
    assert_eq!(
        names(prompts.result().expect("result"), "prompts", "name"),
        ["crm__greeting"]
    );
    let get = staff
        .request(
            "prompts/get",
            json!({"name": "docs__greeting", "arguments": {"name": "x"}}),
        )
        .await
        .expect("answer");
    assert_eq!(
        get.error(),
        Some((-32602, "Unknown prompt: docs__greeting".to_owned()))
    );

    // Resources: hidden from lists (templates too), unreadable, unsubscribable.
    let listed = |reply: &mcpgw_tests::RpcReply, key: &str, member: &str| {
        names(reply.result().expect("result"), key, member)
    };
    let resources = staff
        .request("resources/list", Value::Null)
        .await
        .expect("list");
    assert_eq!(listed(&resources, "resources", "uri"), ["counter://value"]);
    let resources = contractor
        .request("resources/list", Value::Null)
        .await
        .expect("list");
    assert!(listed(&resources, "resources", "uri").is_empty());
    let templates = contractor
        .request("resources/templates/list", Value::Null)
        .await
        .expect("templates");
    assert!(listed(&templates, "resourceTemplates", "uriTemplate").is_empty());
    let read = contractor
        .request("resources/read", json!({"uri": "counter://value"}))
        .await
        .expect("answer");
    assert_eq!(
        read.error(),
        Some((-32002, "Resource not found: counter://value".to_owned()))
    );
    let read = staff
        .request("resources/read", json!({"uri": "counter://value"}))
        .await
        .expect("answer");
    read.result().expect("alice reads");
    let sub = contractor
        .request("resources/subscribe", json!({"uri": "counter://value"}))
        .await
        .expect("answer");
    assert_eq!(sub.error().map(|(code, _)| code), Some(-32002));

    // The stateless era: the same lists and the same refusals.
    let list = stateless_request(gateway, "/mcp", &bob, "tools/list", json!({})).await;
    assert_eq!(listed(&list, "tools", "name"), without);
    let call = stateless_request(
        gateway,
        "/mcp",
        &bob,
        "tools/call",
        json!({"name": "crm__fail", "arguments": {}}),
    )
    .await;
    assert_eq!(call.status(), 200);
    assert_eq!(
        call.error(),
        Some((-32602, "Unknown tool: crm__fail".to_owned()))
    );
    let read = stateless_request(
        gateway,
        "/mcp",
        &bob,
        "resources/read",
        json!({"uri": "counter://value"}),
    )
    .await;
    assert_eq!(read.error().map(|(code, _)| code), Some(-32002));
    let ok = stateless_request(
        gateway,
        "/mcp",
        &alice,
        "tools/call",
        json!({"name": "crm__increment", "arguments": {}}),
    )
    .await;
    assert_eq!(ok.count().expect("alice's stateless call"), 1);
    // A stateless subscription leaves the denied resource out, as an unknown one.
    for (token, honoured) in [
        (
            &alice,
            json!({"resourceSubscriptions": ["counter://value"]}),
        ),
        (&bob, json!({})),
    ] {
        let (_, listen) = StatelessClient::new(gateway.addr, "/mcp").prepare(
            "subscriptions/listen",
            json!({"notifications": {"resourceSubscriptions": ["counter://value"]}}),
        );
        let listen = listen.header("Authorization", &format!("Bearer {token}"));
        let mut stream = MessageStream::send(gateway.addr, &listen)
            .await
            .expect("a subscription stream");
        let ack = stream
            .expect(Duration::from_secs(30))
            .await
            .expect("acknowledgement");
        assert_eq!(
            ack["method"], "notifications/subscriptions/acknowledged",
            "{ack}"
        );
        assert_eq!(ack["params"]["notifications"], honoured, "{ack}");
        stream.close();
    }

    // One upstream: transparent names, the list still filtered.
    let mut one = gateway.client_at("/one").with_bearer(&bob);
    one.initialize().await.expect("bob on /one");
    assert_eq!(
        one.tool_names().await.expect("tools"),
        ["increment", "get_count", "slow"]
    );
    let denied = one.call_tool("fail", json!({})).await.expect("answer");
    assert_eq!(
        denied.error(),
        Some((-32602, "Unknown tool: fail".to_owned()))
    );
    let list = stateless_request(gateway, "/one", &bob, "tools/list", json!({})).await;
    assert_eq!(
        listed(&list, "tools", "name"),
        ["increment", "get_count", "slow"]
    );
    assert_eq!(list.result().expect("result")["resultType"], "complete");

    // Counted, and each denial logged with its rule.
    let (_, metrics) = admin_get(gateway, "/metrics").await;
    let decided = |decision: &str, kind: &str| {
        let (decision, kind) = (
            format!("decision=\"{decision}\""),
            format!("kind=\"{kind}\""),
        );
        let lines: String = metrics
            .lines()
            .filter(|l| l.starts_with("mcpgw_authz_decisions_total{"))
            .filter(|l| l.contains(&decision) && l.contains(&kind))
            .map(|l| format!("{l}\n"))
            .collect();
        sum_of(&lines, "mcpgw_authz_decisions_total{")
    };
    // Tools denied: crm__fail twice (both eras), fail on /one; resources:
    // read, subscribe, stateless read, the stateless subscription.
    assert_eq!(decided("deny", "tool"), 3.0);
    assert_eq!(decided("deny", "resource"), 4.0);
    assert_eq!(decided("deny", "prompt"), 1.0);
    // Allowed: three calls, and the name no upstream has (the rules let it
    // through; routing found no upstream for it).
    assert_eq!(decided("allow", "tool"), 4.0);
    // Two tools hidden per list of bob's on /mcp (two lists), one per list on /one.
    assert_eq!(decided("hidden", "tool"), 6.0);
    assert!(decided("hidden", "resource") >= 2.0);
    let log = gateway.log();
    assert!(
        log.lines()
            .any(|l| l.contains("denied by authorization rules")
                && l.contains("crm__fail")
                && l.contains("authz[0]")
                && l.contains("bob")),
        "{log}"
    );
}

#[tokio::test]
async fn over_the_rate_limit_is_429_with_retry_after_and_others_go_on() {
    // One worker: the whole budget is its own (N workers enforce 1/N each).
    let setup = Setup::start(1, Algorithm::ES256);
    let (gateway, crm, rsa) = (&setup.gateway, &setup.crm, &setup.rsa);
    let alice = member(rsa, "alice", &[]);
    let bob = member(rsa, "bob", &[]);

    // A burst of 3: initialize and two calls.
    let mut greedy = gateway.client_at("/limited").with_bearer(&alice);
    greedy.initialize().await.expect("initialize");
    assert_eq!(greedy.count("increment").await.expect("1"), 1);
    assert_eq!(greedy.count("increment").await.expect("2"), 2);
    let calls_before = crm.stats().await.expect("stats").tools_call;
    let refused = greedy
        .call_tool("increment", json!({}))
        .await
        .expect("answer");
    assert_eq!(refused.status(), 429, "{}", refused.message);
    let retry_after: u64 = refused
        .response
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("whole seconds");
    let (code, message) = refused.error().expect("a JSON-RPC error");
    assert_eq!(code, -32029, "{message}");
    let ms = refused.message["error"]["data"]["retryAfterMs"]
        .as_u64()
        .expect("data.retryAfterMs");
    assert!(
        ms > 0 && retry_after == ms.div_ceil(1000),
        "{retry_after} s, {ms} ms"
    );
    assert!(retry_after <= 3600, "one token of 1/h");
    assert_eq!(
        crm.stats().await.expect("stats").tools_call,
        calls_before,
        "refused before any upstream work"
    );
    // Notifications take no token.
    let note = greedy
        .notify("notifications/initialized", Value::Null)
        .await
        .expect("answer");
    assert_eq!(note.status, 202);
    // The stateless era counts against the same principal.
    let stateless = stateless_request(
        gateway,
        "/limited",
        &alice,
        "tools/call",
        json!({"name": "increment", "arguments": {}}),
    )
    .await;
    assert_eq!(stateless.status(), 429);
    assert!(stateless.response.header("retry-after").is_some());

    // Another principal has a bucket of its own.
    let mut other = gateway.client_at("/limited").with_bearer(&bob);
    other.initialize().await.expect("bob initialize");
    assert_eq!(other.count("increment").await.expect("bob"), 1);

    // An endpoint-wide limit: two requests for everyone together.
    let mut first = gateway.client_at("/shared").with_bearer(&alice);
    first.initialize().await.expect("initialize");
    let mut second = gateway.client_at("/shared").with_bearer(&bob);
    second.initialize().await.expect("initialize");
    let shared = second
        .call_tool("increment", json!({}))
        .await
        .expect("answer");
    assert_eq!(shared.status(), 429, "{}", shared.message);

    let limited = |scope: &'static str| {
        let gateway = &gateway;
        async move {
            labelled(
                gateway,
                "mcpgw_rate_limited_total",
                &format!("scope=\"{scope}\""),
            )
            .await
        }
    };
    assert_eq!(limited("principal").await, 2.0);
    assert_eq!(limited("endpoint").await, 1.0);
}

#[test]
fn check_config_refuses_rules_that_can_never_match() {
    let dir = TempDir::new("mcpgw-authz-check").expect("temp dir");
    let upstreams = "[[upstream]]\nid = \"crm\"\nurl = \"http://127.0.0.1:9/mcp\"\n\
                     [[upstream]]\nid = \"docs\"\nurl = \"http://127.0.0.1:9/mcp\"\n\
                     [[endpoint]]\npath = \"/mcp\"\nupstreams = [\"crm\", \"docs\"]\n";
    let (ok, out) = config_accepted(
        dir.path(),
        &format!("{upstreams}[[endpoint.authz]]\neffect = \"deny\"\ntools = [\"delete_*\"]\n"),
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("check.toml:12: endpoint[0].authz[0].tools[0]: \"delete_*\" can never match"),
        "{out}"
    );
    let (ok, out) = config_accepted(
        dir.path(),
        &format!(
            "{upstreams}[[endpoint.authz]]\neffect = \"deny\"\nwhen = {{ groups = [\"x\"] }}\n"
        ),
    );
    assert!(!ok && out.contains("endpoint[0].authz[0].when"), "{out}");
    let (ok, out) = config_accepted(
        dir.path(),
        &format!("{upstreams}rate_limit = {{ per_principal = \"20/day\" }}\n"),
    );
    assert!(!ok && out.contains("N/s, N/m or N/h"), "{out}");
    let (ok, out) = config_accepted(
        dir.path(),
        &format!(
            "{upstreams}rate_limit = {{ per_principal = \"20/s\", burst = 40 }}\n\
             [[endpoint.authz]]\neffect = \"deny\"\ntools = [\"crm__delete_*\"]\n"
        ),
    );
    assert!(ok, "{out}");
}

/// A request another worker receives is forwarded to the session's owner
/// with the principal's claims: the owner filters and denies on what the
/// token said.
#[tokio::test]
async fn forwarded_requests_are_decided_on_the_callers_claims() {
    let setup = Setup::start(2, Algorithm::RS256);
    let (gateway, rsa) = (&setup.gateway, &setup.rsa);
    let bob = member(rsa, "bob", &["contractors"]);
    let mut on_slot = sessions_on_each_worker(gateway, "/one", &bob).await;
    // One connection (so one worker) for both sessions: one of them is
    // forwarded to its owner.
    let mut shared = HttpConn::connect(gateway.addr).await.expect("connect");
    for (client, _) in on_slot.values_mut() {
        let list = client
            .request_on(&mut shared, "tools/list", Value::Null)
            .await
            .expect("tools/list");
        let tools = names(list.result().expect("result"), "tools", "name");
        assert_eq!(
            tools,
            ["increment", "get_count", "slow"],
            "{}",
            list.message
        );
        let denied = client
            .request_on(
                &mut shared,
                "tools/call",
                json!({"name": "fail", "arguments": {}}),
            )
            .await
            .expect("answer");
        assert_eq!(
            denied.error(),
            Some((-32602, "Unknown tool: fail".to_owned()))
        );
    }
    assert_forwarded(gateway).await;
}
