//! `mcpgw`: the one binary. `serve` (the default) runs the supervisor,
//! `worker` is what the supervisor execs for each worker process, and
//! `check-config` validates a file without starting anything, `status` shows
//! a running gateway through its admin listener.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mcpgw_protocol::config::{AdminToken, Config};
use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc's malloc for every process (supervisor and
/// workers run this binary): a request allocates a few dozen small,
/// short-lived objects (tokio tasks and timers, hyper buffers and header
/// maps), and glibc's allocator was about a fifth of a worker's instructions
/// per request. See BENCHMARKS.md for the measurements.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "mcpgw",
    version,
    about = "A gateway for the Model Context Protocol"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(clap::Args, Default)]
struct ServeArgs {
    /// Configuration file (TOML). Without one, the embedded defaults apply.
    #[arg(long, short = 'c', global = true)]
    config: Option<PathBuf>,
    /// Listen address; replaces `listen` from the file. Repeatable.
    #[arg(long)]
    listen: Vec<std::net::SocketAddr>,
    /// Worker processes; replaces `workers` from the file.
    #[arg(long)]
    workers: Option<u16>,
    /// Log format: `text`, or `json` (the default under journald).
    #[arg(long, global = true)]
    log_format: Option<LogFormat>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (supervisor and workers). The default.
    Serve(ServeArgs),
    /// Validate a configuration file and exit.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Bridge a stdio-only MCP client to a Streamable HTTP MCP server (JSON-RPC on
    /// stdin/stdout, logs on stderr).
    Wrapper {
        /// The server's MCP endpoint, e.g. http://127.0.0.1:8080/mcp (http only).
        #[arg(long)]
        url: String,
        /// A header for every request, as 'Name: Value'. Repeatable.
        #[arg(long = "header", value_name = "NAME: VALUE")]
        headers: Vec<String>,
        /// File holding a bearer token, sent as `Authorization: Bearer <token>`.
        #[arg(long)]
        bearer_token_file: Option<PathBuf>,
        /// Bound on each request, in seconds.
        #[arg(long, default_value_t = 300.0, value_name = "SECS")]
        timeout: f64,
        /// When the server loses the session, start a new one by replaying `initialize`.
        #[arg(long)]
        reinitialize: bool,
    },
    /// Show the workers, sessions and upstream sessions of a running gateway.
    Status {
        /// The gateway's admin listener (`admin_listen`).
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin: std::net::SocketAddr,
        /// File holding the admin API's token (`admin_token_file`); needed
        /// when the admin listener is not on loopback.
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
    },
    /// Internal: a worker process, started by `mcpgw serve`.
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        slot: u16,
        #[arg(long)]
        generation: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_format = match &cli.command {
        Some(Command::Serve(a)) => a.log_format,
        _ => cli.serve.log_format,
    };
    init_logging(log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // stderr is also where logs go (and what journald captures).
            eprintln!("mcpgw: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        None => serve(cli.serve),
        Some(Command::Serve(args)) => serve(args),
        Some(Command::CheckConfig { file }) => {
            let config = Config::load(&file)?;
            config.check_tls_files()?;
            config.read_admin_token()?;
            println!(
                "{}: ok ({} upstreams, {} endpoints, {} workers)",
                file.display(),
                config.upstream.len(),
                config.effective_endpoints().len(),
                config.worker_count()
            );
            Ok(())
        }
        Some(Command::Wrapper {
            url,
            headers,
            bearer_token_file,
            timeout,
            reinitialize,
        }) => Ok(mcpgw_wrapper::run(&mcpgw_wrapper::Args {
            url,
            headers,
            bearer_token_file,
            timeout_secs: timeout,
            reinitialize,
        })?),
        Some(Command::Status { admin, token_file }) => {
            let token = token_file
                .map(|path| AdminToken::read(&path))
                .transpose()
                .map_err(anyhow::Error::msg)
                .context("--token-file")?;
            print!("{}", mcpgw_supervisor::status(admin, token.as_ref())?);
            Ok(())
        }
        Some(Command::Worker { slot, generation }) => {
            mcpgw_worker::run(mcpgw_worker::Args { slot, generation })
                .with_context(|| format!("worker {slot}/{generation}"))
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let ServeArgs {
        config: path,
        listen,
        workers,
        ..
    } = args;
    // The same steps at start and on every reload: the file (if any), then
    // the command-line overrides, then validation.
    let load = move || -> anyhow::Result<Config> {
        let mut config = match &path {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        if !listen.is_empty() {
            config.listen.clone_from(&listen);
        }
        if workers.is_some() {
            config.workers = workers;
        }
        config.validate().context("command-line overrides")?;
        config.check_tls_files()?;
        Ok(config)
    };
    let config = load()?;
    mcpgw_supervisor::run(
        config,
        Box::new(move || load().map_err(|e| format!("{e:#}"))),
    )?;
    Ok(())
}

fn init_logging(format: Option<LogFormat>) {
    let filter = EnvFilter::try_from_env("MCPGW_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        Some(LogFormat::Json) => true,
        Some(LogFormat::Text) => false,
        // systemd sets JOURNAL_STREAM when stderr goes to the journal.
        None => std::env::var_os("JOURNAL_STREAM").is_some(),
    };
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
