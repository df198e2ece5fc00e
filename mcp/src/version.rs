//! The MCP protocol versions this gateway speaks, and negotiation.

/// Stateful (handshake-era) versions, newest first.
pub(crate) const SUPPORTED: [&str; 3] = ["2025-11-25", "2025-06-18", "2025-03-26"];
pub(crate) const LATEST: &str = SUPPORTED[0];

/// The client's version when we speak it, else our latest (the client then
/// decides whether it can continue), as the lifecycle spec prescribes.
pub(crate) fn negotiate(requested: &str) -> &'static str {
    SUPPORTED
        .iter()
        .find(|v| **v == requested)
        .copied()
        .unwrap_or(LATEST)
}

pub(crate) fn lookup(header: &[u8]) -> Option<&'static str> {
    SUPPORTED.iter().find(|v| v.as_bytes() == header).copied()
}

/// `data` of a -32022 error: what we support and what was asked.
pub(crate) fn unsupported_data(requested: &str) -> String {
    let mut out = String::from("{\"supported\":[");
    for (i, v) in SUPPORTED.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        crate::jsonrpc::push_json_string(&mut out, v);
    }
    out.push_str("],\"requested\":");
    crate::jsonrpc::push_json_string(&mut out, requested);
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation() {
        assert_eq!(negotiate("2025-03-26"), "2025-03-26");
        assert_eq!(negotiate("2024-11-05"), LATEST);
        assert_eq!(negotiate("2026-07-28"), LATEST);
        assert_eq!(lookup(b"2025-06-18"), Some("2025-06-18"));
        assert_eq!(lookup(b"1999-01-01"), None);
        let d: serde_json::Value =
            serde_json::from_str(&unsupported_data("2026-07-28")).expect("json");
        assert_eq!(d["supported"][0], "2025-03-26");
        assert_eq!(d["requested"], "2026-07-28");
    }
}
