//! `mcpgw wrapper` end to end: the real binary as a stdio MCP server in front of the real
//! gateway, or directly in front of the counter server ("any Streamable HTTP MCP
//! server"), driven over its stdin/stdout by the test or by the Python MCP SDK's stdio
//! client.
//!
//! Each test pins one promise of the wrapper: one session for the whole conversation
//! (ContextForge #4419), server→client requests answered by a real client library,
//! DELETE and exit 0 on stdin EOF, JSON-RPC errors and a non-zero exit when the server
//! goes away, concurrency, stateless servers, lost sessions, timeouts.

use std::collections::VecDeque;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, ensure};
use mcpgw_tests::gateway::gateway_binary;
use mcpgw_tests::http::{HttpConn, Request};
use mcpgw_tests::process::{ChildGuard, LineReader, TempDir};
use mcpgw_tests::python;
use mcpgw_tests::{
    CounterOpts, CounterServer, Gateway, GatewayConfig, IO_TIMEOUT, Stats, start_counter,
    wait_until,
};
use serde_json::{Value, json};

/// Bound on the wrapper's exit once it should exit; generous, it only bounds a hang.
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on a counter-server condition the test waits for.
const STATS_TIMEOUT: Duration = Duration::from_secs(15);

/// A running `mcpgw wrapper`: the test writes its stdin and reads its stdout; its stderr
/// goes to a log printed if the test fails.
struct Wrapper {
    // Dropped first, so the log in `_dir` still exists when a failure prints it.
    child: ChildGuard,
    stdin: Option<std::io::PipeWriter>,
    stdout: LineReader,
    /// Messages read while looking for another one.
    unread: VecDeque<Value>,
    _dir: TempDir,
}

impl Wrapper {
    /// Starts `mcpgw wrapper --url URL EXTRA...`.
    fn start(url: &str, extra: &[&str]) -> Result<Self> {
        Self::start_with_env(url, extra, &[])
    }

    /// [`Wrapper::start`] with more environment variables.
    fn start_with_env(url: &str, extra: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        let bin = gateway_binary()?;
        let dir = TempDir::new("mcpgw-wrapper")?;
        let log = dir.path().join("stderr.log");
        let (stdin_read, stdin_write) = std::io::pipe()?;
        let mut cmd = Command::new(bin);
        cmd.args(["wrapper", "--url", url])
            .args(extra)
            .env("MCPGW_LOG", "debug")
            .envs(env.iter().copied())
            .stdin(Stdio::from(stdin_read))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?);
        // `spawn` consumes `cmd`, closing our copy of the pipe's read end: dropping
        // `stdin_write` is then an EOF for the wrapper.
        let mut child = ChildGuard::spawn("mcpgw wrapper", cmd, Some(log))?;
        let stdout = LineReader::new(child.take_stdout().context("no stdout pipe")?);
        Ok(Self {
            child,
            stdin: Some(stdin_write),
            stdout,
            unread: VecDeque::new(),
            _dir: dir,
        })
    }

    fn send(&mut self, message: &Value) -> Result<()> {
        let stdin = self.stdin.as_mut().context("stdin already closed")?;
        writeln!(stdin, "{message}")?;
        stdin.flush()?;
        Ok(())
    }

    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The next line of stdout, which must be one JSON-RPC message; `None` at EOF.
    fn read_message(&mut self) -> Result<Option<Value>> {
        let deadline = Instant::now() + IO_TIMEOUT;
        let line = tokio::task::block_in_place(|| self.stdout.next_line(deadline))
            .with_context(|| format!("no message from the wrapper; stderr:\n{}", self.stderr()))?;
        let Some(line) = line else { return Ok(None) };
        let message = serde_json::from_str(&line)
            .with_context(|| format!("the wrapper wrote a line that is not JSON: {line:?}"))?;
        Ok(Some(message))
    }

    /// The next message, in order.
    fn next(&mut self) -> Result<Value> {
        if let Some(message) = self.unread.pop_front() {
            return Ok(message);
        }
        self.read_message()?
            .ok_or_else(|| anyhow!("stdout closed; stderr:\n{}", self.stderr()))
    }

    /// The answer to request `id`, keeping other messages for [`Wrapper::next`].
    fn answer(&mut self, id: &Value) -> Result<Value> {
        let is_answer = |m: &Value| m.get("id") == Some(id) && m.get("method").is_none();
        if let Some(pos) = self.unread.iter().position(is_answer) {
            return self.unread.remove(pos).context("position was valid");
        }
        loop {
            let message = self.read_message()?.ok_or_else(|| {
                anyhow!(
                    "stdout closed before the answer to {id}; stderr:\n{}",
                    self.stderr()
                )
            })?;
            if is_answer(&message) {
                return Ok(message);
            }
            self.unread.push_back(message);
        }
    }

    fn request(&mut self, id: Value, method: &str, params: Value) -> Result<Value> {
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))?;
        self.answer(&id)
    }

    fn call(&mut self, id: Value, tool: &str, arguments: Value) -> Result<Value> {
        self.request(
            id,
            "tools/call",
            json!({"name": tool, "arguments": arguments}),
        )
    }

    /// `initialize` answered with the wrapper's "unreachable" error.
    fn initialize_is_unreachable(&mut self) {
        let answer = self
            .request(
                json!(0),
                "initialize",
                json!({"protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"}}),
            )
            .expect("an answer to initialize");
        let (_, _, kind) = error_of(&answer).expect("an error");
        assert_eq!(kind, "unreachable", "{answer}");
    }

    /// `initialize` and `notifications/initialized`; returns the initialize result.
    fn initialize(&mut self) -> Result<Value> {
        let answer = self.request(
            json!(0),
            "initialize",
            json!({
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "mcpgw-wrapper-tests", "version": "1"},
            }),
        )?;
        let result = result_of(&answer)?.clone();
        self.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))?;
        Ok(result)
    }

    async fn wait_exit(&mut self) -> Result<ExitStatus> {
        self.child.wait_exit(EXIT_TIMEOUT).await
    }

    /// Everything the wrapper wrote after what was read, up to EOF (after it exited).
    fn rest_of_stdout(&mut self) -> Result<Vec<Value>> {
        let mut rest: Vec<Value> = self.unread.drain(..).collect();
        while let Some(message) = self.read_message()? {
            rest.push(message);
        }
        Ok(rest)
    }

    fn stderr(&self) -> String {
        self.child.log_tail()
    }
}

fn result_of(answer: &Value) -> Result<&Value> {
    answer
        .get("result")
        .ok_or_else(|| anyhow!("expected a result, got {answer}"))
}

/// `(code, message, data.kind)` of an error answer.
fn error_of(answer: &Value) -> Result<(i64, String, String)> {
    let error = answer
        .get("error")
        .ok_or_else(|| anyhow!("expected an error, got {answer}"))?;
    let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_owned();
    Ok((
        error
            .get("code")
            .and_then(Value::as_i64)
            .unwrap_or_default(),
        text(error.get("message")),
        text(error.pointer("/data/kind")),
    ))
}

fn count_of(answer: &Value) -> Result<u64> {
    result_of(answer)?
        .pointer("/structuredContent/count")
        .and_then(Value::as_u64)
        .ok_or_else(|| anyhow!("no count in {answer}"))
}

async fn wait_stats(
    counter: &CounterServer,
    what: &str,
    check: impl Fn(&Stats) -> bool,
) -> Result<Stats> {
    wait_until(what, STATS_TIMEOUT, || async {
        let stats = counter.stats().await?;
        Ok(check(&stats).then_some(stats))
    })
    .await
}

/// #4419: every request after `initialize` must reach the same session. Through the real
/// gateway: tools/list and two increments (1, then 2: one upstream session kept), one
/// upstream `initialize` in all, and the session deleted when stdin closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_4419_reproducer_keeps_one_session_through_the_gateway() {
    let counter = start_counter!().expect("start counter-server");
    let gateway = Gateway::start(&GatewayConfig::new(2).upstream("counter", &counter.url()))
        .expect("start mcpgw");
    let mut w =
        Wrapper::start(&format!("http://{}/mcp", gateway.addr), &[]).expect("start wrapper");

    let init = w.initialize().expect("initialize");
    assert_eq!(init["protocolVersion"], "2025-11-25", "{init}");
    let tools = w
        .request(json!(1), "tools/list", json!({}))
        .expect("tools/list");
    let names: Vec<&str> = result_of(&tools).expect("tools/list result")["tools"]
        .as_array()
        .map(|t| t.iter().filter_map(|t| t["name"].as_str()).collect())
        .unwrap_or_default();
    assert!(names.contains(&"increment"), "{tools}");
    let first = w.call(json!(2), "increment", json!({})).expect("increment");
    assert_eq!(count_of(&first).expect("count"), 1, "{first}");
    let second = w.call(json!(3), "increment", json!({})).expect("increment");
    assert_eq!(count_of(&second).expect("count"), 2, "{second}");

    let stats = counter.stats().await.expect("stats");
    assert_eq!(
        stats.initialize, 1,
        "the gateway saw more than one session: {stats:?}"
    );

    w.close_stdin();
    let status = w.wait_exit().await.expect("wrapper exits");
    assert!(status.success(), "{status}; stderr:\n{}", w.stderr());
    assert_eq!(w.rest_of_stdout().expect("stdout"), Vec::<Value>::new());
    wait_stats(&counter, "the upstream session to be deleted", |s| {
        s.delete == 1 && s.live_sessions == 0
    })
    .await
    .expect("DELETE reached the upstream through the gateway");
}

/// The Python SDK's stdio client against the wrapper, pointed directly at the counter
/// server: a whole session, including `ask_roots`, whose tools/call stream carries a
/// `roots/list` request that the client answers through the wrapper.
const PYTHON_CLIENT: &str = r#"
import sys

import anyio
import mcp_types as types
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

ROOT = "file:///srv/mcpgw-wrapper-test-root"
asked = []


async def list_roots(context):
    asked.append(context.request_id)
    return types.ListRootsResult(roots=[types.Root(uri=ROOT, name="wrapper-test")])


async def main(mcpgw: str, url: str) -> None:
    server = StdioServerParameters(command=mcpgw, args=["wrapper", "--url", url])
    async with stdio_client(server) as (read, write):
        async with ClientSession(read, write, list_roots_callback=list_roots) as session:
            init = await session.initialize()
            print("protocol version:", init.protocol_version)
            tools = await session.list_tools()
            assert "increment" in [t.name for t in tools.tools], tools
            result = await session.call_tool("ask_roots", {})
            assert not result.is_error, result
            assert ROOT in result.content[0].text, result
            assert len(asked) == 1, asked
            for expected in (1, 2):
                counted = await session.call_tool("increment", {})
                assert counted.structured_content == {"count": expected}, counted
            await session.send_ping()
    print("OK")


anyio.run(main, sys.argv[1], sys.argv[2])
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_stdio_client_answers_a_server_request_through_the_wrapper() {
    let python = python::interpreter();
    let counter = start_counter!().expect("start counter-server");
    let mcpgw = gateway_binary().expect("mcpgw binary");
    python::expect_ok(
        "the Python client (stderr: client and wrapper)",
        tokio::process::Command::new(&python)
            .arg("-c")
            .arg(PYTHON_CLIENT)
            .arg(mcpgw)
            .arg(counter.url())
            .env("MCPGW_LOG", "debug"),
    )
    .await;
    // The client closed the wrapper's stdin on exit: the session was deleted.
    let stats = wait_stats(&counter, "the session to be deleted", |s| s.delete == 1)
        .await
        .expect("DELETE after the client closed stdin");
    assert_eq!(stats.initialize, 1, "{stats:?}");
    assert_eq!(stats.tools_call, 3, "{stats:?}");
    assert_eq!(stats.live_sessions, 0, "{stats:?}");
}

/// stdin EOF: the session is deleted (counted by the server) and the wrapper exits 0,
/// having written nothing but the answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_stdin_deletes_the_session_and_exits_zero() {
    let counter = start_counter!().expect("start counter-server");
    let mut w = Wrapper::start(&counter.url(), &[]).expect("start wrapper");
    w.initialize().expect("initialize");
    let answer = w
        .call(json!("a"), "increment", json!({}))
        .expect("increment");
    assert_eq!(count_of(&answer).expect("count"), 1);
    let before = counter.stats().await.expect("stats");
    assert_eq!((before.delete, before.live_sessions), (0, 1), "{before:?}");

    w.close_stdin();
    let status = w.wait_exit().await.expect("wrapper exits");
    assert_eq!(status.code(), Some(0), "{status}; stderr:\n{}", w.stderr());
    assert_eq!(w.rest_of_stdout().expect("stdout"), Vec::<Value>::new());
    let after = counter.stats().await.expect("stats");
    assert_eq!((after.delete, after.live_sessions), (1, 0), "{after:?}");
}

/// The server dies while a `slow` call is pending: that call gets a JSON-RPC error, so
/// does a later request, and once stdin closes the wrapper exits non-zero saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_goes_away_fails_pending_requests_and_exits_nonzero() {
    let mut counter = start_counter!().expect("start counter-server");
    let mut w = Wrapper::start(&counter.url(), &[]).expect("start wrapper");
    w.initialize().expect("initialize");
    w.send(&json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "slow", "arguments": {"ms": 60_000}}}))
        .expect("send slow");
    wait_stats(&counter, "the slow call to be running", |s| {
        s.slow_in_flight == 1
    })
    .await
    .expect("slow call in flight");
    counter.kill();

    let answer = w.answer(&json!(7)).expect("an answer to the pending call");
    let (code, message, kind) = error_of(&answer).expect("an error");
    assert_eq!(code, -32000, "{answer}");
    assert_eq!(kind, "connection_lost", "{answer}");
    assert!(message.contains("connection"), "{answer}");

    let answer = w
        .request(json!(8), "ping", json!({}))
        .expect("an answer to ping");
    let (code, message, kind) = error_of(&answer).expect("an error");
    assert_eq!((code, kind.as_str()), (-32000, "unreachable"), "{answer}");
    assert!(message.contains("unreachable"), "{answer}");

    w.close_stdin();
    let status = w.wait_exit().await.expect("wrapper exits");
    assert!(!status.success(), "exit 0 although the server went away");
    let stderr = w.stderr();
    assert!(
        stderr.contains("mcpgw: the MCP server at") && stderr.contains("went away"),
        "{stderr}"
    );
}

/// Nothing listens at the URL: `initialize` gets a JSON-RPC error and the wrapper exits
/// non-zero at once, without waiting for stdin to close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_fails_initialize_and_exits_at_once() {
    let mut counter = start_counter!().expect("start counter-server");
    let url = counter.url();
    counter.kill();
    let mut w = Wrapper::start(&url, &[]).expect("start wrapper");
    w.initialize_is_unreachable();
    // stdin stays open.
    let status = w.wait_exit().await.expect("wrapper exits on its own");
    assert!(!status.success(), "exit 0 with an unreachable server");
    let stderr = w.stderr();
    assert!(
        stderr.contains("unreachable") && stderr.contains(&url),
        "{stderr}"
    );
}

/// A ping sent while a 2 s `slow` call runs is answered first: requests do not queue
/// behind each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_call_does_not_delay_a_ping() {
    let counter = start_counter!().expect("start counter-server");
    let mut w = Wrapper::start(&counter.url(), &[]).expect("start wrapper");
    w.initialize().expect("initialize");
    w.send(
        &json!({"jsonrpc": "2.0", "id": "slow", "method": "tools/call",
        "params": {"name": "slow", "arguments": {"ms": 2000}}}),
    )
    .expect("send slow");
    wait_stats(&counter, "the slow call to be running", |s| {
        s.slow_in_flight == 1
    })
    .await
    .expect("slow call in flight");
    w.send(&json!({"jsonrpc": "2.0", "id": "ping", "method": "ping"}))
        .expect("send ping");
    let first = w.next().expect("first answer");
    assert_eq!(
        first["id"], "ping",
        "the ping waited for the slow call: {first}"
    );
    result_of(&first).expect("ping result");
    let second = w.next().expect("second answer");
    assert_eq!(second["id"], "slow", "{second}");
    result_of(&second).expect("slow result");
}

/// A `counter-server --stateless` (no session id on initialize; 400 unless `Mcp-Method`,
/// `Mcp-Name` and `MCP-Protocol-Version` match the body and no `Mcp-Session-Id` is sent):
/// every request succeeds, and no DELETE is sent at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateless_server_gets_no_session_id_and_the_routing_headers() {
    // The harness starts counter-servers with a fixed set of flags; a one-line script in
    // front of the binary adds `--stateless`.
    let dir = TempDir::new("mcpgw-wrapper-stateless").expect("temp dir");
    let script = stateless_counter_script(dir.path()).expect("script");
    let counter =
        CounterServer::start(&script, CounterOpts::default()).expect("start counter-server");
    let mut w = Wrapper::start(&counter.url(), &[]).expect("start wrapper");

    w.initialize().expect("initialize");
    let tools = w
        .request(json!(1), "tools/list", json!({}))
        .expect("tools/list");
    result_of(&tools).expect("tools/list result");
    let answer = w.call(json!(2), "increment", json!({})).expect("increment");
    assert_eq!(count_of(&answer).expect("count"), 1, "{answer}");
    let read = w
        .request(
            json!(3),
            "resources/read",
            json!({"uri": "counter://value"}),
        )
        .expect("resources/read");
    assert_eq!(
        result_of(&read).expect("read")["contents"][0]["text"],
        "1",
        "{read}"
    );
    let ping = w.request(json!(4), "ping", json!({})).expect("ping");
    result_of(&ping).expect("ping result");

    w.close_stdin();
    let status = w.wait_exit().await.expect("wrapper exits");
    assert!(status.success(), "{status}; stderr:\n{}", w.stderr());
    let stats = counter.stats().await.expect("stats");
    assert_eq!(stats.delete, 0, "DELETE without a session: {stats:?}");
    assert_eq!(stats.initialize, 1, "{stats:?}");
}

fn stateless_counter_script(dir: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let exe = env!("CARGO_BIN_EXE_counter-server");
    ensure!(!exe.contains('\''), "unexpected quote in {exe}");
    let path = dir.join("counter-stateless");
    std::fs::write(
        &path,
        format!("#!/bin/sh\nexec '{exe}' --stateless \"$@\"\n"),
    )?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))?;
    Ok(path)
}

/// Makes the counter server forget every session, as a restarted server would.
async fn forget_sessions(counter: &CounterServer) -> Result<()> {
    let mut conn = HttpConn::connect(counter.addr).await?;
    let response = conn.send(&Request::post("/forget-sessions", "")).await?;
    ensure!(
        response.status == 200,
        "/forget-sessions answered {}",
        response.status
    );
    Ok(())
}

/// The server loses the session (404). Without `--reinitialize`, requests get an error
/// saying so; with it, the client's `initialize` is replayed and a request succeeds on a
/// fresh session (count 1 again) without the client doing anything but retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_session_is_reported_or_replaced_with_reinitialize() {
    let counter = start_counter!().expect("start counter-server");

    let mut plain = Wrapper::start(&counter.url(), &[]).expect("start wrapper");
    plain.initialize().expect("initialize");
    let answer = plain
        .call(json!(1), "increment", json!({}))
        .expect("increment");
    assert_eq!(count_of(&answer).expect("count"), 1);
    forget_sessions(&counter).await.expect("forget sessions");
    let answer = plain
        .call(json!(2), "increment", json!({}))
        .expect("increment");
    let (code, message, kind) = error_of(&answer).expect("an error after the loss");
    assert_eq!((code, kind.as_str()), (-32000, "session_lost"), "{answer}");
    assert!(message.contains("404"), "{answer}");
    plain.close_stdin();
    let status = plain.wait_exit().await.expect("wrapper exits");
    assert!(
        status.success(),
        "a lost session is not a lost server: {status}"
    );
    assert_eq!(counter.stats().await.expect("stats").initialize, 1);

    let mut w = Wrapper::start(&counter.url(), &["--reinitialize"]).expect("start wrapper");
    w.initialize().expect("initialize");
    for (id, expected) in [(1, 1), (2, 2)] {
        let answer = w
            .call(json!(id), "increment", json!({}))
            .expect("increment");
        assert_eq!(count_of(&answer).expect("count"), expected, "{answer}");
    }
    forget_sessions(&counter).await.expect("forget sessions");
    // The loss is seen either by this request (which then gets an error asking for a
    // retry) or first by the GET stream (and the request goes to the new session).
    let mut answer = w.call(json!(3), "increment", json!({})).expect("increment");
    if answer.get("error").is_some() {
        let (_, message, kind) = error_of(&answer).expect("an error");
        assert_eq!(kind, "session_lost", "{answer}");
        assert!(message.contains("retry"), "{answer}");
        answer = w.call(json!(4), "increment", json!({})).expect("increment");
    }
    assert_eq!(
        count_of(&answer).expect("count on the new session"),
        1,
        "{answer}"
    );
    let stats = counter.stats().await.expect("stats");
    assert_eq!(stats.initialize, 3, "one replayed initialize: {stats:?}");
    assert_eq!(stats.live_sessions, 1, "{stats:?}");
    w.close_stdin();
    let status = w.wait_exit().await.expect("wrapper exits");
    assert!(status.success(), "{status}; stderr:\n{}", w.stderr());
    wait_stats(&counter, "the new session to be deleted", |s| {
        s.live_sessions == 0
    })
    .await
    .expect("DELETE of the replacement session");
}

/// `--timeout` bounds a request: the client gets error -32001 and the wrapper carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_timeout_gets_an_error() {
    let counter = start_counter!().expect("start counter-server");
    let mut w = Wrapper::start(&counter.url(), &["--timeout", "0.5"]).expect("start wrapper");
    w.initialize().expect("initialize");
    let answer = w
        .call(json!(1), "slow", json!({"ms": 10_000}))
        .expect("slow");
    let (code, message, kind) = error_of(&answer).expect("a timeout error");
    assert_eq!((code, kind.as_str()), (-32001, "timeout"), "{answer}");
    assert!(message.contains("--timeout"), "{answer}");
    let ping = w.request(json!(2), "ping", json!({})).expect("ping");
    result_of(&ping).expect("ping after a timeout");
    // Exactly one answer per request: nothing more comes for the timed-out call.
    w.close_stdin();
    let rest = w.rest_of_stdout().expect("stdout");
    assert_eq!(rest, Vec::<Value>::new(), "messages after the last answer");
}

/// An https server: its certificate is checked against the system's CAs (here a test CA,
/// through `SSL_CERT_FILE`), and calls go through as over http. Without that CA the
/// server is unreachable, and the wrapper says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_server_is_reached_with_the_system_roots() {
    let pki = mcpgw_tests::pki::Pki::new();
    pki.issue("server", "127.0.0.1", "subjectAltName=IP:127.0.0.1");
    let counter = start_counter!(mcpgw_tests::CounterOpts {
        tls: Some(mcpgw_tests::CounterTls {
            cert: pki.path("server.pem"),
            key: pki.path("server.key"),
            client_ca: None,
        }),
        ..mcpgw_tests::CounterOpts::default()
    })
    .expect("start counter-server with TLS");
    let url = counter.https_url("127.0.0.1").expect("an https url");
    let ca = pki.path("ca.pem").display().to_string();
    let mut w =
        Wrapper::start_with_env(&url, &[], &[("SSL_CERT_FILE", &ca)]).expect("start wrapper");
    w.initialize().expect("initialize over https");
    for expected in 1..=2 {
        let answer = w
            .call(json!(expected), "increment", json!({}))
            .expect("increment");
        assert_eq!(count_of(&answer).expect("count"), expected);
    }
    w.close_stdin();
    let status = w.wait_exit().await.expect("wrapper exits");
    assert_eq!(status.code(), Some(0), "{status}; stderr:\n{}", w.stderr());

    let mut untrusting = Wrapper::start(&url, &[]).expect("start wrapper");
    untrusting.initialize_is_unreachable();
    let status = untrusting.wait_exit().await.expect("wrapper exits");
    assert!(!status.success());
    let stderr = untrusting.stderr();
    assert!(stderr.contains("UnknownIssuer"), "{stderr}");
}
