//! `mcpgw status`: the admin API's view of a running gateway, as a table.
//!
//! Plain blocking HTTP/1.1 GETs of `/admin/workers`, then `/admin/cluster`
//! (the member hosts, when the gateway is in a cluster), on the admin
//! listener (with the admin token when given: an admin listener off
//! loopback needs it); it runs outside the gateway and needs no async
//! runtime.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use mcpgw_protocol::config::AdminToken;

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(
        "cannot reach the admin listener at {addr}: {cause} (is mcpgw running? see admin_listen)"
    )]
    Connect {
        addr: SocketAddr,
        cause: std::io::Error,
    },
    #[error("reading from {addr}: {cause}")]
    Io {
        addr: SocketAddr,
        cause: std::io::Error,
    },
    #[error(
        "the admin listener at {addr} refused the token (or wants one): \
         pass --token-file with the file admin_token_file names"
    )]
    Unauthorized { addr: SocketAddr },
    #[error("unexpected answer from {addr}: {what}")]
    Answer { addr: SocketAddr, what: String },
}

/// Fetch the workers' status (and the cluster's members) and render it as
/// tables. `token`: the admin API's bearer token (`admin_token_file`), if
/// the caller has it.
pub fn status(addr: SocketAddr, token: Option<&AdminToken>) -> Result<String, StatusError> {
    let workers = get(addr, token, "/admin/workers")?.ok_or_else(|| StatusError::Answer {
        addr,
        what: "/admin/workers: 404".to_owned(),
    })?;
    let mut out = render(&workers);
    if let Some(cluster) = get(addr, token, "/admin/cluster")? {
        out.push_str(&render_members(&cluster));
    }
    Ok(out)
}

/// GET `path` as JSON; `None` for a 404.
fn get(
    addr: SocketAddr,
    token: Option<&AdminToken>,
    path: &str,
) -> Result<Option<serde_json::Value>, StatusError> {
    let io = |cause| StatusError::Io { addr, cause };
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|cause| StatusError::Connect { addr, cause })?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(token) = token {
        // AdminToken::read admits printable ASCII only.
        request.push_str("Authorization: Bearer ");
        request.push_str(&String::from_utf8_lossy(token.as_bytes()));
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(io)?;
    let bad = |what: &str| StatusError::Answer {
        addr,
        what: what.to_owned(),
    };
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no HTTP head"))?;
    if raw.starts_with(b"HTTP/1.1 401") {
        return Err(StatusError::Unauthorized { addr });
    }
    if raw.starts_with(b"HTTP/1.1 404") {
        return Ok(None);
    }
    if !raw.starts_with(b"HTTP/1.1 200") {
        return Err(bad(&String::from_utf8_lossy(&raw[..split.min(80)])));
    }
    serde_json::from_slice(&raw[split + 4..])
        .map(Some)
        .map_err(|e| bad(&format!("not JSON: {e}")))
}

/// The cluster's members, one line each.
fn render_members(doc: &serde_json::Value) -> String {
    let empty = Vec::new();
    let members = doc["members"].as_array().unwrap_or(&empty);
    let mut out = format!("\ncluster members: {}\n", members.len());
    let rows: Vec<[String; 5]> = members
        .iter()
        .map(|m| {
            let age = m["heartbeat_age_ms"].as_u64().unwrap_or(0);
            [
                m["host"].as_str().unwrap_or("?").to_owned(),
                m["advertise"].as_str().unwrap_or("?").to_owned(),
                if m["live"].as_bool().unwrap_or(false) {
                    "live".to_owned()
                } else {
                    "expired".to_owned()
                },
                format!("{}.{:03}s", age / 1000, age % 1000),
                m["sessions"].to_string(),
            ]
        })
        .collect();
    let header = ["HOST", "ADVERTISE", "STATE", "HEARTBEAT AGE", "SESSIONS"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut line = |cells: [&str; 5]| {
        let text: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    };
    line(header);
    for row in &rows {
        line(row.each_ref().map(String::as_str));
    }
    out
}

/// One column: its header and whether it is right-aligned (numbers).
const COLUMNS: [(&str, bool); 7] = [
    ("SLOT", true),
    ("GENERATION", true),
    ("PID", true),
    ("UPTIME", true),
    ("CONNECTIONS", true),
    ("SESSIONS", true),
    ("UPSTREAM SESSIONS", false),
];

fn render(doc: &serde_json::Value) -> String {
    let empty = Vec::new();
    let mut rows: Vec<[String; 7]> = Vec::new();
    for w in doc["workers"].as_array().unwrap_or(&empty) {
        let upstreams: Vec<String> = w["upstream_sessions"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .map(|u| format!("{}={}", u["upstream"].as_str().unwrap_or("?"), u["count"]))
            .collect();
        let answered = w["answered"].as_bool().unwrap_or(false);
        let num = |k: &str| {
            if answered {
                w[k].to_string()
            } else {
                "-".to_owned()
            }
        };
        rows.push([
            w["slot"].to_string(),
            w["generation"].to_string(),
            w["pid"].to_string(),
            format!("{}s", w["uptime_secs"]),
            num("connections"),
            num("sessions"),
            if answered {
                upstreams.join(" ")
            } else {
                "(no answer)".to_owned()
            },
        ]);
    }
    // Widths from the content: generations are Unix milliseconds (13
    // digits), wider than any fixed guess.
    let mut widths = COLUMNS.map(|(h, _)| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: [&str; 7]| {
        let mut text = String::new();
        for (i, ((cell, width), (_, right))) in cells.iter().zip(widths).zip(COLUMNS).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            if i == COLUMNS.len() - 1 {
                text.push_str(cell);
            } else if right {
                text.push_str(&format!("{cell:>width$}"));
            } else {
                text.push_str(&format!("{cell:<width$}"));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(COLUMNS.map(|(h, _)| h));
    for row in &rows {
        line(row.each_ref().map(String::as_str));
    }
    out.push_str(&format!("sessions: {}\n", doc["sessions"]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_row_per_member() {
        let doc = serde_json::json!({"members":[
            {"host":"gw-1","advertise":"10.0.0.1:9000","heartbeat_age_ms":250,"sessions":4,"live":true},
            {"host":"gw-2","advertise":"10.0.0.2:9000","heartbeat_age_ms":61000,"sessions":0,"live":false}]});
        let t = render_members(&doc);
        assert!(t.contains("cluster members: 2"), "{t}");
        let gw1 = t.lines().find(|l| l.starts_with("gw-1")).expect("gw-1");
        assert!(
            gw1.contains("10.0.0.1:9000")
                && gw1.contains("live")
                && gw1.contains("0.250s")
                && gw1.ends_with('4'),
            "{t}"
        );
        assert!(
            t.lines()
                .any(|l| l.starts_with("gw-2") && l.contains("expired") && l.contains("61.000s")),
            "{t}"
        );
    }

    #[test]
    fn renders_a_row_per_worker() {
        let doc = serde_json::json!({"workers":[
            {"slot":0,"generation":2,"pid":10,"uptime_secs":5,"answered":true,"connections":1,"sessions":3,
             "upstream_sessions":[{"upstream":"a","count":3,"oldest_age_secs":1.0}]},
            {"slot":1,"generation":0,"pid":11,"uptime_secs":5,"answered":false}],"sessions":3});
        let t = render(&doc);
        assert_eq!(t.lines().count(), 4, "{t}");
        assert!(
            t.lines()
                .nth(1)
                .is_some_and(|l| l.contains("a=3") && l.trim_start().starts_with('0')),
            "{t}"
        );
        assert!(t.contains("(no answer)"));
        assert!(t.ends_with("sessions: 3\n"));
    }

    /// Every header ends (right-aligned columns) or starts (the last one)
    /// where its cells do, whatever the widths of the values.
    #[test]
    fn columns_line_up_under_their_headers() {
        let doc = serde_json::json!({"workers":[
            {"slot":0,"generation":1796396959578u64,"pid":16373,"uptime_secs":0,"answered":true,
             "connections":0,"sessions":0,"upstream_sessions":[]},
            {"slot":12,"generation":1796396959579u64,"pid":7,"uptime_secs":123456,"answered":true,
             "connections":1234567,"sessions":5,"upstream_sessions":[{"upstream":"counter","count":5}]}],
            "sessions":5});
        let t = render(&doc);
        let lines: Vec<&str> = t.lines().collect();
        let header = lines[0];
        let ends = |line: &str| -> Vec<usize> {
            // Ends of whitespace-separated fields, the header's two-word
            // last column counted as one.
            let mut ends = Vec::new();
            let mut prev = ' ';
            for (i, c) in line.char_indices() {
                if c == ' ' && prev != ' ' {
                    ends.push(i);
                }
                prev = c;
            }
            if prev != ' ' {
                ends.push(line.len());
            }
            ends
        };
        let header_ends = ends(header);
        for row in &lines[1..3] {
            let row_ends = ends(row);
            assert_eq!(row_ends[..6], header_ends[..6], "\n{t}");
        }
        let last = header.find("UPSTREAM SESSIONS").expect("last header");
        assert_eq!(lines[2].find("counter=5"), Some(last), "\n{t}");
    }
}
