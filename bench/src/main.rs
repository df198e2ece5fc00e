//! `mcpgw-bench`: a load generator for MCP over Streamable HTTP (`load`) and the
//! standard side-by-side comparison of mcpgw with the upstream reached directly and with
//! nginx in front of it (`compare`). See `BENCHMARKS.md` at the repository root.
//!
//! Modules:
//! - `http`: a minimal HTTP/1.1 client (exact connections, `TCP_NODELAY`);
//! - `mcp`: MCP requests rendered ahead of time and the check of answers (JSON, SSE);
//! - `load`: one load run (sessions, concurrency, duration or count, percentiles);
//! - `procs`: the processes a comparison starts and kills, and their RSS;
//! - `compare`: the scenarios, interleaved over the three targets;
//! - `failover`: the SIGKILL-a-worker scenario (mcpgw only);
//! - `stateless`: stateless (2026-07-28) clients through mcpgw beside stateful ones;
//! - `cluster`: two mcpgw hosts with `[cluster]` on one Redis against one host;
//! - `report`: tables, targets, JSON, SVG.
//!
//! The whole tool runs on one single-threaded tokio runtime, so that the generator takes
//! at most one of the machine's cores from the processes it measures.

mod cluster;
mod compare;
mod failover;
mod http;
mod load;
mod mcp;
mod modern;
mod procs;
mod report;
mod stateless;
mod tls;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

use crate::load::{LoadSpec, Stop};
use crate::mcp::{CallTemplate, Endpoint, Era};

/// Upper bound on any one load phase, so that a mistyped duration cannot run for hours.
const MAX_SECONDS: f64 = 3600.0;

#[derive(Parser, Debug)]
#[command(
    name = "mcpgw-bench",
    version,
    about = "Load generator and side-by-side benchmark for MCP gateways"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Drive `tools/call` load against one MCP endpoint (loopback only) and report.
    Load(LoadArgs),
    /// Run the standard scenarios against direct upstream, nginx and mcpgw, interleaved,
    /// and write the results (JSON, markdown, SVG).
    Compare(CompareArgs),
    /// Regenerate the markdown, the SVG (and the document section) from a compare.json.
    Report(ReportArgs),
}

#[derive(clap::Args, Debug)]
struct ReportArgs {
    /// The comparison to render.
    #[arg(default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results/compare.json"))]
    json: PathBuf,
    /// Replace the generated section of this document (e.g. BENCHMARKS.md).
    #[arg(long)]
    update_doc: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct LoadArgs {
    /// The MCP endpoint, e.g. http://127.0.0.1:8080/mcp (loopback addresses only).
    #[arg(long)]
    url: String,
    /// The kind of client: `stateful` opens sessions; `stateless` (2026-07-28) sends
    /// self-contained requests (no initialize, no session; --sessions does not apply).
    #[arg(long, value_enum, default_value_t = Era::Stateful)]
    era: Era,
    /// Sessions to open (initialize + notifications/initialized each).
    #[arg(long, short = 'n', default_value_t = 64)]
    sessions: usize,
    /// Clients, each one connection with one request in flight.
    #[arg(long, short = 'c', default_value_t = 16)]
    concurrency: usize,
    /// Seconds of measured load (after the warm-up).
    #[arg(long, short = 'd', default_value_t = 5.0, conflicts_with = "requests")]
    duration: f64,
    /// Stop after this many measured requests instead of after a duration.
    #[arg(long)]
    requests: Option<u64>,
    /// Bound in seconds on the measured part when --requests is given.
    #[arg(long, default_value_t = 300.0)]
    max_time: f64,
    /// Seconds of unmeasured load before measuring.
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    /// The tool to call.
    #[arg(long, default_value = "increment")]
    tool: String,
    /// The tool's arguments, as a JSON object.
    #[arg(long, default_value = "{}")]
    arguments: String,
    /// An extra header for every request, `Name: Value`; repeatable.
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// A new TCP connection for every request (`Connection: close`).
    #[arg(long)]
    new_connection: bool,
    /// The protocol version asked for in `initialize` (stateful clients).
    #[arg(long, default_value = mcp::DEFAULT_PROTOCOL_VERSION)]
    protocol_version: String,
    /// Unmeasured calls per session (stateless: per client) during setup (0: the first
    /// call is measured).
    #[arg(long, default_value_t = 1)]
    setup_calls: u32,
    /// Leave the sessions open at the end instead of sending DELETE.
    #[arg(long)]
    keep_sessions: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct CompareArgs {
    /// Where `mcpgw`, `counter-server` are (default: the directory of this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The nginx binary.
    #[arg(long, default_value = "nginx")]
    nginx: PathBuf,
    /// mcpgw workers, and nginx worker processes.
    #[arg(long, default_value_t = 2)]
    workers: u16,
    /// Runs per target and scenario.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Seconds of measured load per run.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Seconds of unmeasured load at the start of each run.
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    /// Sessions per run.
    #[arg(long, default_value_t = 64)]
    sessions: usize,
    /// Keep-alive concurrencies, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,
    /// Concurrency of the new-connection-per-request scenario.
    #[arg(long, default_value_t = 16)]
    new_connection_concurrency: usize,
    /// Idle sessions for the RSS scenario (0: skip it).
    #[arg(long, default_value_t = 10_000)]
    idle_sessions: usize,
    /// Connections that open the idle sessions.
    #[arg(long, default_value_t = 64)]
    idle_concurrency: usize,
    /// Concurrencies of the stateless-client scenario (stateless and stateful clients
    /// through mcpgw beside direct), comma-separated; the first should be 1, for the
    /// added latency.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    stateless_concurrency: Vec<usize>,
    /// Skip the stateless-client scenario.
    #[arg(long)]
    no_stateless: bool,
    /// Concurrencies of the modern-upstream scenario (a 2026-07-28 client and upstream,
    /// direct, through nginx and through mcpgw), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    modern_concurrency: Vec<usize>,
    /// Skip the modern-upstream scenario.
    #[arg(long)]
    no_modern: bool,
    /// Skip the reload scenario (failed requests during SIGHUPs under load).
    #[arg(long)]
    no_reload: bool,
    /// Skip the https-upstream scenario (mcpgw with an https upstream beside a plain
    /// one; needs the `openssl` command).
    #[arg(long)]
    no_tls: bool,
    /// Skip the two-host scenario (two mcpgw hosts with `[cluster]` on one
    /// redis-server, half of the requests forwarded; needs redis-server).
    #[arg(long)]
    no_cluster: bool,
    /// SIGHUPs sent in the reload scenario.
    #[arg(long, default_value_t = 20)]
    reload_signals: u32,
    /// Workers killed, one at a time, in the failover scenario (0: skip it).
    #[arg(long, default_value_t = 3)]
    failover_kills: usize,
    /// Sessions under load (one connection each) while a worker is killed.
    #[arg(long, default_value_t = 16)]
    failover_sessions: usize,
    /// Directory for compare.json, compare.md, compare.svg.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results"))]
    results: PathBuf,
    /// Replace the generated section of this document (e.g. BENCHMARKS.md).
    #[arg(long)]
    update_doc: Option<PathBuf>,
    /// Print the whole comparison as JSON on stdout (the table is printed otherwise).
    #[arg(long)]
    json: bool,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        // Dropping the work future on a signal drops every process guard it holds.
        tokio::select! {
            r = command(cli.command) => r,
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
            _ = term.recv() => bail!("terminated"),
        }
    })
}

async fn command(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Load(args) => load_command(args).await,
        Cmd::Compare(args) => compare_command(args).await,
        Cmd::Report(args) => report_command(args),
    }
}

fn seconds(what: &str, v: f64) -> Result<Duration> {
    if !(0.0..=MAX_SECONDS).contains(&v) {
        bail!("{what} must be between 0 and {MAX_SECONDS} seconds");
    }
    Ok(Duration::from_secs_f64(v))
}

async fn load_command(args: LoadArgs) -> Result<()> {
    let arguments: serde_json::Value =
        serde_json::from_str(&args.arguments).context("--arguments is not JSON")?;
    if !arguments.is_object() {
        bail!("--arguments must be a JSON object");
    }
    let stop = match args.requests {
        Some(n) => Stop::Requests(n),
        None => Stop::Duration(seconds("--duration", args.duration)?),
    };
    let spec = LoadSpec {
        endpoint: Endpoint::parse(&args.url, &args.headers)?,
        sessions: args.sessions,
        concurrency: args.concurrency,
        stop,
        warmup: seconds("--warmup", args.warmup)?,
        max_time: seconds("--max-time", args.max_time)?,
        call: CallTemplate::new(&args.tool, &arguments, args.era),
        new_connection: args.new_connection,
        protocol_version: args.protocol_version,
        setup_calls: args.setup_calls,
        delete_sessions: !args.keep_sessions,
        probe: None,
        alternate: None,
    };
    let r = load::run(spec).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        let clients = match r.era {
            Era::Stateful => format!("{} sessions", r.sessions),
            Era::Stateless => "stateless (2026-07-28), no sessions".to_owned(),
        };
        println!(
            "{clients}, concurrency {}, {}",
            r.concurrency,
            if r.new_connection {
                "new connection per request"
            } else {
                "keep-alive"
            }
        );
        println!(
            "requests   {} ok, {} failed in {:.2} s (setup {:.2} s)",
            r.requests, r.errors.total, r.elapsed_secs, r.setup_secs
        );
        println!("throughput {:.0} req/s", r.throughput);
        println!(
            "latency    p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
            r.latency_ms.p50, r.latency_ms.p90, r.latency_ms.p99, r.latency_ms.max
        );
        println!(
            "errors     status {}  unparsable {}  rpc {}  tool {}  io {}  timeout {}",
            r.errors.status,
            r.errors.unparsable,
            r.errors.rpc_error,
            r.errors.tool_error,
            r.errors.io,
            r.errors.timeout
        );
        if let Some(first) = &r.errors.first {
            println!("first error: {first}");
        }
        println!(
            "connections opened {}, closed by the server {}",
            r.connections_opened, r.server_closes
        );
    }
    if r.requests == 0 {
        bail!("no request succeeded");
    }
    Ok(())
}

fn report_command(args: ReportArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.json)
        .with_context(|| format!("reading {}", args.json.display()))?;
    let mut comparison: compare::Comparison =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", args.json.display()))?;
    comparison.settings.results = args
        .json
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    comparison.settings.update_doc = args.update_doc;
    let settings = comparison.settings.clone();
    report::write(&comparison, &settings)?;
    print!("{}", report::markdown(&comparison));
    Ok(())
}

async fn compare_command(args: CompareArgs) -> Result<()> {
    let bin_dir = match args.bin_dir {
        Some(d) => d,
        None => std::env::current_exe()?
            .parent()
            .map(Path::to_path_buf)
            .context("this binary has no directory")?,
    };
    if args.reps == 0
        || args.concurrency.is_empty()
        || args.concurrency.contains(&0)
        || args.stateless_concurrency.contains(&0)
        || args.modern_concurrency.contains(&0)
    {
        bail!(
            "--reps and every --concurrency, --stateless-concurrency and --modern-concurrency must be at least 1"
        );
    }
    seconds("--duration", args.duration)?;
    seconds("--warmup", args.warmup)?;
    let settings = compare::Settings {
        bin_dir,
        nginx: args.nginx,
        results: args.results,
        update_doc: args.update_doc,
        workers: args.workers,
        reps: args.reps,
        duration_secs: args.duration,
        warmup_secs: args.warmup,
        sessions: args.sessions,
        concurrency: args.concurrency,
        new_connection_concurrency: args.new_connection_concurrency,
        stateless_concurrency: if args.no_stateless {
            Vec::new()
        } else {
            args.stateless_concurrency
        },
        modern_concurrency: if args.no_modern {
            Vec::new()
        } else {
            args.modern_concurrency
        },
        idle_sessions: args.idle_sessions,
        idle_concurrency: args.idle_concurrency,
        reload: !args.no_reload,
        tls: !args.no_tls,
        cluster: !args.no_cluster,
        reload_signals: args.reload_signals,
        failover_kills: args.failover_kills,
        failover_sessions: args.failover_sessions,
    };
    let comparison = compare::run(settings).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&comparison)?);
    } else {
        print!("{}", report::markdown(&comparison));
    }
    Ok(())
}
