//! The lines `mcpgw serve` prints on stdout, a contract that scripts, the
//! tests and the bench parse; and the output format (text or JSON) that the
//! workers are started with.
//!
//! Logs go to stderr; stdout carries these lines only, each flushed at once:
//!
//! | text mode                     | JSON mode                                        |
//! |-------------------------------|--------------------------------------------------|
//! | `mcpgw admin http://A`        | `{"event":"admin","url":"http://A"}`             |
//! | `mcpgw listening http://A`    | `{"event":"listening","url":"http://A"}`         |
//! | `mcpgw listening https://A`   | `{"event":"listening","url":"https://A"}`        |
//! | `mcpgw cluster http://A`      | `{"event":"cluster","url":"http://A"}` (`[cluster] listen`) |
//! | `mcpgw ready workers=N`       | `{"event":"ready","workers":N}`                  |
//!
//! In JSON mode every line a process of the gateway writes (stdout and the
//! logs on stderr, supervisor and workers) is one JSON object, so a journal
//! that captures both streams stays machine-readable.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::OnceLock;

/// How the gateway writes its logs and its stdout lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    #[default]
    Text,
    Json,
}

impl OutputFormat {
    /// The `--log-format` value that selects this format.
    pub fn flag(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

// Process-wide, like the logger it mirrors: set once by `run` before any
// line is printed or any worker started.
static FORMAT: OnceLock<OutputFormat> = OnceLock::new();

pub(crate) fn set_format(format: OutputFormat) {
    let _ = FORMAT.set(format);
}

pub(crate) fn format() -> OutputFormat {
    FORMAT.get().copied().unwrap_or_default()
}

pub(crate) fn admin(addr: SocketAddr) {
    emit(&line(format(), Line::Admin(addr)));
}

pub(crate) fn listening(scheme: &str, addr: SocketAddr) {
    emit(&line(format(), Line::Listening(scheme, addr)));
}

pub(crate) fn cluster(addr: SocketAddr) {
    emit(&line(format(), Line::Cluster(addr)));
}

pub(crate) fn ready(workers: u16) {
    emit(&line(format(), Line::Ready(workers)));
}

enum Line<'a> {
    Admin(SocketAddr),
    Listening(&'a str, SocketAddr),
    Cluster(SocketAddr),
    Ready(u16),
}

fn line(format: OutputFormat, what: Line<'_>) -> String {
    match (format, what) {
        (OutputFormat::Text, Line::Admin(addr)) => format!("mcpgw admin http://{addr}"),
        (OutputFormat::Text, Line::Listening(scheme, addr)) => {
            format!("mcpgw listening {scheme}://{addr}")
        }
        (OutputFormat::Text, Line::Cluster(addr)) => format!("mcpgw cluster http://{addr}"),
        (OutputFormat::Text, Line::Ready(n)) => format!("mcpgw ready workers={n}"),
        (OutputFormat::Json, Line::Admin(addr)) => {
            serde_json::json!({"event": "admin", "url": format!("http://{addr}")}).to_string()
        }
        (OutputFormat::Json, Line::Listening(scheme, addr)) => {
            serde_json::json!({"event": "listening", "url": format!("{scheme}://{addr}")})
                .to_string()
        }
        (OutputFormat::Json, Line::Cluster(addr)) => {
            serde_json::json!({"event": "cluster", "url": format!("http://{addr}")}).to_string()
        }
        (OutputFormat::Json, Line::Ready(n)) => {
            serde_json::json!({"event": "ready", "workers": n}).to_string()
        }
    }
}

fn emit(line: &str) {
    let mut out = std::io::stdout().lock();
    // A closed stdout must not stop the gateway: the lines are a courtesy to
    // whoever started it, and the logs say the same.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_lines_are_the_documented_contract() {
        let a: SocketAddr = "127.0.0.1:8411".parse().expect("addr");
        assert_eq!(
            line(OutputFormat::Text, Line::Admin(a)),
            "mcpgw admin http://127.0.0.1:8411"
        );
        assert_eq!(
            line(OutputFormat::Text, Line::Listening("https", a)),
            "mcpgw listening https://127.0.0.1:8411"
        );
        assert_eq!(
            line(OutputFormat::Text, Line::Cluster(a)),
            "mcpgw cluster http://127.0.0.1:8411"
        );
        assert_eq!(
            line(OutputFormat::Text, Line::Ready(2)),
            "mcpgw ready workers=2"
        );
    }

    #[test]
    fn json_lines_are_one_object_each() {
        let a: SocketAddr = "[::1]:80".parse().expect("addr");
        assert_eq!(
            line(OutputFormat::Json, Line::Admin(a)),
            r#"{"event":"admin","url":"http://[::1]:80"}"#
        );
        assert_eq!(
            line(OutputFormat::Json, Line::Listening("http", a)),
            r#"{"event":"listening","url":"http://[::1]:80"}"#
        );
        assert_eq!(
            line(OutputFormat::Json, Line::Ready(3)),
            r#"{"event":"ready","workers":3}"#
        );
    }
}
