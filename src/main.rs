//! `mcpgw`: the one binary. `serve` (the default) runs the supervisor,
//! `worker` is what the supervisor execs for each worker process, and
//! `check-config` validates a file without starting anything, `status` shows
//! a running gateway through its admin listener.
//!
//! Each flag belongs to its subcommand (`--log-format` applies to all);
//! `mcpgw` alone, or with `serve`'s flags, is `mcpgw serve`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory as _, Parser, Subcommand};
use mcpgw_protocol::config::{self, AdminToken, Config};
use mcpgw_supervisor::OutputFormat;
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
    about = "A gateway for the Model Context Protocol",
    after_help = "Without a subcommand, `mcpgw [--config FILE] [--listen IP:PORT] [--workers N]` is `mcpgw serve`."
)]
struct Cli {
    /// Log format: `text`, or `json` (the default under journald). Applies
    /// wherever it is given; in JSON mode stdout's lines are JSON too.
    #[arg(long, global = true, value_name = "FORMAT")]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Option<Command>,
    /// `serve`'s flags, for `mcpgw` without a subcommand.
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(clap::Args, Default)]
struct ServeArgs {
    /// Configuration file (TOML). Without one, the embedded defaults apply.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Listen address (IP:PORT); replaces `listen` from the file. Repeatable.
    #[arg(long, value_name = "IP:PORT", value_parser = listen_addr)]
    listen: Vec<std::net::SocketAddr>,
    /// Worker processes; replaces `workers` from the file.
    #[arg(long)]
    workers: Option<u16>,
}

fn listen_addr(text: &str) -> Result<std::net::SocketAddr, String> {
    config::parse_listen_addr(text)
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
        /// The gateway's configuration: `admin_listen` and `admin_token_file`
        /// are taken from it unless --admin and --token-file are given.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
        /// The gateway's admin listener (`admin_listen`). Default: the
        /// config's, else 127.0.0.1:8411.
        #[arg(long, value_name = "IP:PORT")]
        admin: Option<std::net::SocketAddr>,
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
    // Serve's flags before a subcommand (`mcpgw --workers 1 serve`) are
    // refused, not silently dropped: each flag belongs to its subcommand.
    // (Not clap's `args_conflicts_with_subcommands`: it refuses the global
    // `--log-format` there too.)
    let ServeArgs {
        config,
        listen,
        workers,
    } = &cli.serve;
    if cli.command.is_some() && (config.is_some() || !listen.is_empty() || workers.is_some()) {
        Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--config, --listen and --workers go after the subcommand \
                 (`mcpgw serve --config FILE`), or without one (`mcpgw --config FILE`)",
            )
            .exit();
    }
    if let Some(Command::Worker { slot, .. }) = &cli.command {
        name_worker_thread(*slot);
    }
    let logging = init_logging(cli.log_format);
    match run(cli, logging.json) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The one place an error is printed; `{:#}` adds the contexts,
            // and no error type repeats its cause (see ConfigError). stderr
            // is also where logs go (and what journald captures, then at
            // error priority).
            use std::io::Write as _;
            let mut out = journal::Event::new(
                std::io::stderr(),
                logging.journal.then_some(tracing::Level::ERROR),
            );
            // Nowhere to report a failure to write to stderr.
            let _ = writeln!(out, "mcpgw: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `top` and `ps -L` show a thread's name (`comm`), which for a worker exec'd
/// from /proc/self/exe would be `exe`. The kernel keeps 15 bytes of it, so
/// slots above 99 lose their last digit there; argv[0] (`mcpgw: worker N`,
/// set by the supervisor) is whole in `ps -f` and /proc/PID/cmdline.
fn name_worker_thread(slot: u16) {
    if let Ok(name) = std::ffi::CString::new(format!("mcpgw-worker-{slot}")) {
        // A cosmetic: a failure changes nothing else.
        let _ = nix::sys::prctl::set_name(&name);
    }
}

fn run(cli: Cli, json: bool) -> anyhow::Result<()> {
    let format = if json {
        OutputFormat::Json
    } else {
        OutputFormat::Text
    };
    match cli.command {
        None => serve(cli.serve, format),
        Some(Command::Serve(args)) => serve(args, format),
        Some(Command::CheckConfig { file }) => {
            let config = Config::load(&file)?;
            config
                .check_tls_files()
                .map_err(|e| e.in_file(&file, None))?;
            config
                .read_admin_token()
                .map_err(|e| e.in_file(&file, None))?;
            config
                .cluster
                .read_key()
                .map_err(|e| e.in_file(&file, None))?;
            mcpgw_worker::check_auth_files(&config)
                .with_context(|| format!("{}: [auth]", file.display()))?;
            if let Some(warning) = auth_warning(&config) {
                eprintln!("warning: {warning}");
            }
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
        Some(Command::Status {
            config,
            admin,
            token_file,
        }) => status(config, admin, token_file),
        Some(Command::Worker { slot, generation }) => {
            mcpgw_worker::run(mcpgw_worker::Args { slot, generation })
                .with_context(|| format!("worker {slot}/{generation}"))
        }
    }
}

/// `mcpgw status`: flags first, then the config file's settings, then the
/// default admin address.
fn status(
    config: Option<PathBuf>,
    admin: Option<std::net::SocketAddr>,
    token_file: Option<PathBuf>,
) -> anyhow::Result<()> {
    let (admin, token_file, from) = match config {
        None => (
            admin.unwrap_or_else(|| Config::default().admin_listen),
            token_file,
            None,
        ),
        Some(path) => {
            // Not `Config::load`: status needs two keys, not the secrets the
            // file may reference (they may be in the service's environment
            // only) nor the rest of a validation.
            let config = Config::read_unchecked(&path)?;
            (
                admin.unwrap_or(config.admin_listen),
                token_file.or(config.admin_token_file),
                Some(path),
            )
        }
    };
    if admin.port() == 0 {
        let from = from.map_or_else(String::new, |p| format!(" in {}", p.display()));
        anyhow::bail!(
            "admin_listen{from} is {admin}: port 0 is chosen at start; pass the address \
             the gateway printed (`mcpgw admin http://…`) as --admin"
        );
    }
    let token = token_file
        .map(|path| AdminToken::read(&path))
        .transpose()
        .map_err(anyhow::Error::msg)
        .context("--token-file")?;
    print!("{}", mcpgw_supervisor::status(admin, token.as_ref())?);
    Ok(())
}

/// The warning for a gateway that serves beyond loopback with `auth = "off"`
/// (at every start and reload, and by `check-config`).
fn auth_warning(config: &Config) -> Option<String> {
    if config.auth != mcpgw_protocol::config::AuthSetting::Off {
        return None;
    }
    let exposed = config
        .listen
        .iter()
        .chain(config.tls_listener.iter().map(|t| &t.addr))
        .find(|a| !a.ip().is_loopback())?;
    Some(format!(
        "auth = \"off\": the listener {exposed} is not a loopback address and MCP requests \
         are NOT authenticated: anyone who can reach it can open sessions and call every \
         upstream. Add an [auth] table to require OAuth bearer tokens."
    ))
}

fn serve(args: ServeArgs, format: OutputFormat) -> anyhow::Result<()> {
    let ServeArgs {
        config: path,
        listen,
        workers,
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
        config.check_tls_files().map_err(|e| match &path {
            Some(path) => e.in_file(path, None),
            None => e,
        })?;
        config.cluster.read_key().map_err(|e| match &path {
            Some(path) => e.in_file(path, None),
            None => e,
        })?;
        mcpgw_worker::check_auth_files(&config).context("[auth]")?;
        if let Some(warning) = auth_warning(&config) {
            tracing::warn!("{warning}");
        }
        Ok(config)
    };
    let config = load()?;
    mcpgw_supervisor::run(
        config,
        Box::new(move || load().map_err(|e| format!("{e:#}"))),
        format,
    )?;
    Ok(())
}

/// Logs go to stderr, in `format` (JSON under journald by default).
struct Logging {
    json: bool,
    /// stderr is a journald stream: lines carry a `<N>` priority prefix.
    journal: bool,
}

fn init_logging(format: Option<LogFormat>) -> Logging {
    let filter = EnvFilter::try_from_env("MCPGW_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        Some(LogFormat::Json) => true,
        Some(LogFormat::Text) => false,
        // systemd sets JOURNAL_STREAM when stderr goes to the journal.
        None => std::env::var_os("JOURNAL_STREAM").is_some(),
    };
    // Only when stderr itself is that stream: the variable is inherited by
    // whatever the service starts, which may have redirected stderr (workers
    // inherit the supervisor's stderr and variable, so they match too).
    let journal = std::env::var("JOURNAL_STREAM").is_ok_and(|value| journal::stderr_is(&value));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(journal::Stderr { prefix: journal });
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
    Logging { json, journal }
}

/// journald reads a `<N>` syslog priority at the start of each line of a
/// stream (`SyslogLevelPrefix=yes`, systemd's default) and strips it; without
/// one every line is info, and `journalctl -p warning` filters nothing.
mod journal {
    use std::io::{self, Write};
    use std::os::fd::AsFd as _;
    use std::os::unix::fs::MetadataExt as _;

    use tracing::{Level, Metadata};
    use tracing_subscriber::fmt::MakeWriter;

    /// Whether stderr is the journal stream `JOURNAL_STREAM` names
    /// ("DEVICE:INODE", see systemd.exec(5)).
    pub(crate) fn stderr_is(value: &str) -> bool {
        let Some((dev, ino)) = value.split_once(':') else {
            return false;
        };
        let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
            return false;
        };
        // A duplicate of fd 2, as a File, to fstat it without unsafe code.
        let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
            return false;
        };
        std::fs::File::from(fd)
            .metadata()
            .is_ok_and(|m| m.dev() == dev && m.ino() == ino)
    }

    /// syslog priorities (sd-daemon.h's SD_ERR ... SD_DEBUG).
    pub(crate) fn prefix(level: Level) -> &'static [u8] {
        match level {
            Level::ERROR => b"<3>",
            Level::WARN => b"<4>",
            Level::INFO => b"<6>",
            Level::DEBUG | Level::TRACE => b"<7>",
        }
    }

    /// stderr, with each event's lines prefixed by its priority when
    /// `prefix` is set.
    pub(crate) struct Stderr {
        pub(crate) prefix: bool,
    }

    impl<'a> MakeWriter<'a> for Stderr {
        type Writer = Event<io::Stderr>;

        fn make_writer(&'a self) -> Self::Writer {
            Event::new(io::stderr(), self.prefix.then_some(Level::INFO))
        }

        fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
            Event::new(io::stderr(), self.prefix.then_some(*meta.level()))
        }
    }

    /// One event's output: collected, then written with one `write_all`
    /// when dropped, so that lines from the supervisor and the workers
    /// (one stderr) do not interleave inside a line. With a level, each line
    /// starts with its priority: a multi-line message (an error's context
    /// chain, a debug dump) stays at its level in every line.
    pub(crate) struct Event<W: Write> {
        out: W,
        level: Option<Level>,
        buf: Vec<u8>,
    }

    impl<W: Write> Event<W> {
        pub(crate) fn new(out: W, level: Option<Level>) -> Self {
            Self {
                out,
                level,
                buf: Vec::new(),
            }
        }
    }

    impl<W: Write> Write for Event<W> {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            let Some(level) = self.level else {
                self.buf.extend_from_slice(data);
                return Ok(data.len());
            };
            for line in data.split_inclusive(|&b| b == b'\n') {
                if self.buf.is_empty() || self.buf.ends_with(b"\n") {
                    self.buf.extend_from_slice(prefix(level));
                }
                self.buf.extend_from_slice(line);
            }
            Ok(data.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            if !self.buf.is_empty() {
                self.out.write_all(&self.buf)?;
                self.buf.clear();
            }
            self.out.flush()
        }
    }

    impl<W: Write> Drop for Event<W> {
        fn drop(&mut self) {
            // Nowhere to report a failure to write the log.
            let _ = self.flush();
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn written(level: Option<Level>, parts: &[&[u8]]) -> Vec<u8> {
            let mut out = Vec::new();
            {
                let mut event = Event::new(&mut out, level);
                for part in parts {
                    event.write_all(part).expect("write to a Vec");
                }
            }
            out
        }

        #[test]
        fn each_line_gets_the_priority_of_its_level() {
            assert_eq!(
                written(Some(Level::WARN), &[b"a warning\n"]),
                b"<4>a warning\n"
            );
            assert_eq!(written(Some(Level::ERROR), &[b"x\n"]), b"<3>x\n");
            assert_eq!(written(Some(Level::INFO), &[b"x\n"]), b"<6>x\n");
            assert_eq!(written(Some(Level::DEBUG), &[b"x\n"]), b"<7>x\n");
            assert_eq!(written(Some(Level::TRACE), &[b"x\n"]), b"<7>x\n");
            // Split writes: the prefix only where a line starts.
            assert_eq!(
                written(Some(Level::WARN), &[b"one ", b"line\nsecond", b" line\n"]),
                b"<4>one line\n<4>second line\n"
            );
            assert_eq!(written(Some(Level::ERROR), &[b"", b"x"]), b"<3>x");
        }

        #[test]
        fn without_journal_the_output_is_unchanged() {
            assert_eq!(written(None, &[b"a ", b"line\n", b"b\n"]), b"a line\nb\n");
            assert_eq!(written(None, &[]), b"");
        }

        #[test]
        fn the_stream_must_name_stderr() {
            for value in ["", "1", "x:y", "1:", ":1", "0:0"] {
                assert!(!stderr_is(value), "{value:?}");
            }
        }
    }
}
