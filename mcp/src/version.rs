//! The MCP protocol versions mcpgw knows ([`ProtocolVersion`]), the era each
//! belongs to ([`Era`]), the `_meta` key that carries one in the 2026-07-28
//! revision, and negotiation of the stateful versions as the lifecycle spec
//! prescribes. The text forms are the only place a version is spelled out.

use std::fmt;

/// One MCP protocol revision. Ordered by date: a later revision compares
/// greater.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProtocolVersion {
    /// The first Streamable HTTP revision (also the only one with JSON-RPC
    /// batches).
    V2025_03_26,
    V2025_06_18,
    V2025_11_25,
    /// The stateless revision: no `initialize` handshake, no session; the
    /// version travels on every request.
    V2026_07_28,
}

/// The two shapes of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Era {
    /// `initialize` handshake, `Mcp-Session-Id`, negotiated version
    /// (2025-03-26 to 2025-11-25).
    Stateful,
    /// Per-request version and capabilities in `_meta`, `server/discover`
    /// (2026-07-28 onwards).
    Modern,
}

impl ProtocolVersion {
    /// Every known version, oldest first.
    pub const ALL: [Self; 4] = [
        Self::V2025_03_26,
        Self::V2025_06_18,
        Self::V2025_11_25,
        Self::V2026_07_28,
    ];
    /// The stateful (handshake-era) versions, newest first: the order
    /// negotiation prefers them in.
    pub const STATEFUL: [Self; 3] = [Self::V2025_11_25, Self::V2025_06_18, Self::V2025_03_26];
    /// The newest stateful version: what `initialize` answers when the
    /// client asked for one not in [`Self::STATEFUL`].
    pub const LATEST_STATEFUL: Self = Self::STATEFUL[0];

    /// The version as written on the wire (`protocolVersion`,
    /// `MCP-Protocol-Version`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::V2025_03_26 => "2025-03-26",
            Self::V2025_06_18 => "2025-06-18",
            Self::V2025_11_25 => "2025-11-25",
            Self::V2026_07_28 => "2026-07-28",
        }
    }

    /// The version named exactly by `text`; `None` for any other text
    /// (versions are compared as written: no trimming, no case folding).
    pub fn parse(text: &str) -> Option<Self> {
        Self::from_bytes(text.as_bytes())
    }

    /// [`Self::parse`] for a raw header value.
    pub fn from_bytes(text: &[u8]) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str().as_bytes() == text)
    }

    pub const fn era(self) -> Era {
        match self {
            Self::V2025_03_26 | Self::V2025_06_18 | Self::V2025_11_25 => Era::Stateful,
            Self::V2026_07_28 => Era::Modern,
        }
    }

    /// Whether this is a stateless (2026-07-28 onwards) revision.
    pub const fn is_modern(self) -> bool {
        matches!(self.era(), Era::Modern)
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `params._meta` key under which a 2026-07-28 request carries its
/// protocol version.
pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";

/// The stateful versions as text, newest first (for messages and the
/// session record, which keep a version as `&'static str`).
pub const SUPPORTED: [&str; 3] = [
    ProtocolVersion::STATEFUL[0].as_str(),
    ProtocolVersion::STATEFUL[1].as_str(),
    ProtocolVersion::STATEFUL[2].as_str(),
];

/// The client's version when it is a stateful one, else the latest stateful
/// one (the client then decides whether it can continue), as the lifecycle
/// spec prescribes for `initialize`.
pub fn negotiate(requested: &str) -> &'static str {
    ProtocolVersion::parse(requested)
        .filter(|v| v.era() == Era::Stateful)
        .unwrap_or(ProtocolVersion::LATEST_STATEFUL)
        .as_str()
}

/// The stateful version a header value (or stored record) names, as text.
pub fn lookup(header: &[u8]) -> Option<&'static str> {
    ProtocolVersion::from_bytes(header)
        .filter(|v| v.era() == Era::Stateful)
        .map(ProtocolVersion::as_str)
}

/// `data` of a -32022 error ([`crate::jsonrpc::UNSUPPORTED_PROTOCOL_VERSION`]):
/// the versions served (oldest first) and what was asked.
pub fn unsupported_data(requested: &str) -> String {
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
        let latest = ProtocolVersion::LATEST_STATEFUL.as_str();
        assert_eq!(latest, "2025-11-25");
        assert_eq!(negotiate("2025-03-26"), "2025-03-26");
        assert_eq!(negotiate("2024-11-05"), latest);
        assert_eq!(negotiate("2026-07-28"), latest);
        assert_eq!(lookup(b"2025-06-18"), Some("2025-06-18"));
        assert_eq!(lookup(b"1999-01-01"), None);
        // The stateless revision is not served as a stateful header value.
        assert_eq!(lookup(b"2026-07-28"), None);
        let d: serde_json::Value =
            serde_json::from_str(&unsupported_data("2026-07-28")).expect("json");
        assert_eq!(
            d["supported"],
            serde_json::json!(["2025-03-26", "2025-06-18", "2025-11-25"])
        );
        assert_eq!(d["requested"], "2026-07-28");
    }

    #[test]
    fn text_round_trips_and_order_follows_dates() {
        for v in ProtocolVersion::ALL {
            assert_eq!(ProtocolVersion::parse(v.as_str()), Some(v));
            assert_eq!(v.to_string(), v.as_str());
        }
        assert!(ProtocolVersion::ALL.is_sorted());
        assert!(ProtocolVersion::ALL.is_sorted_by_key(|v| v.as_str()));
        assert_eq!(ProtocolVersion::parse(" 2025-06-18"), None);
        assert_eq!(ProtocolVersion::parse(""), None);
    }

    #[test]
    fn eras() {
        assert!(ProtocolVersion::V2026_07_28.is_modern());
        assert_eq!(ProtocolVersion::V2025_11_25.era(), Era::Stateful);
        assert!(
            ProtocolVersion::STATEFUL
                .iter()
                .all(|v| v.era() == Era::Stateful)
        );
        assert_eq!(
            ProtocolVersion::ALL
                .iter()
                .filter(|v| v.era() == Era::Stateful)
                .count(),
            ProtocolVersion::STATEFUL.len()
        );
    }
}
