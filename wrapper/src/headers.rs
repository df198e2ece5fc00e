//! Which headers the wrapper manages itself, and how a value from a JSON-RPC body
//! becomes a routing-header value. The names are `mcpgw_mcp::headers`.
//!
//! `Mcp-Method` and `Mcp-Name` (the routing headers of the 2026-07-28 revision) copy
//! the method and `params.name`/`params.uri` of the message; a value that is not safe
//! printable ASCII (non-ASCII, control characters, leading or trailing whitespace) is
//! sent as `=?base64?<base64 of its UTF-8>?=`, so a tool name can never inject a header.
//! Building requests is [`crate::transport`]'s job; this module only names and encodes.

use hyper::header::HeaderValue;
use mcpgw_mcp::headers::text;

/// Headers the wrapper manages itself; `--header` may not set them.
pub(crate) const MANAGED: [&str; 9] = [
    text::MCP_SESSION_ID,
    text::MCP_PROTOCOL_VERSION,
    text::MCP_METHOD,
    text::MCP_NAME,
    text::LAST_EVENT_ID,
    "accept",
    "content-type",
    "content-length",
    "host",
];

const BASE64_PREFIX: &str = "=?base64?";
const BASE64_SUFFIX: &str = "?=";

/// `value` as a routing-header value: unchanged when it is safe printable ASCII without
/// surrounding whitespace (and does not look like the base64 sentinel), base64-wrapped
/// otherwise.
pub(crate) fn routing_value(value: &str) -> HeaderValue {
    let plain = !value.is_empty()
        && value.bytes().all(|b| (0x20..0x7f).contains(&b))
        && !value.starts_with(' ')
        && !value.ends_with(' ')
        && !value.starts_with(BASE64_PREFIX);
    if plain && let Ok(v) = HeaderValue::from_str(value) {
        return v;
    }
    let encoded = format!("{BASE64_PREFIX}{}{BASE64_SUFFIX}", base64(value.as_bytes()));
    // Base64 output and the sentinel are plain ASCII, which is always a valid value.
    HeaderValue::from_str(&encoded).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Standard base64 with padding (RFC 4648 §4).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected);
        }
    }

    #[test]
    fn plain_names_pass_unchanged() {
        assert_eq!(routing_value("increment"), "increment");
        assert_eq!(routing_value("counter://value"), "counter://value");
    }

    #[test]
    fn unsafe_names_are_base64_wrapped() {
        assert_eq!(routing_value("café"), "=?base64?Y2Fmw6k=?=");
        assert_eq!(routing_value("a\r\nEvil: 1"), "=?base64?YQ0KRXZpbDogMQ==?=");
        assert_eq!(routing_value(" padded"), "=?base64?IHBhZGRlZA==?=");
        assert_eq!(routing_value("=?base64?x?="), "=?base64?PT9iYXNlNjQ/eD89?=");
    }
}
