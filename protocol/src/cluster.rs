//! Several gateway hosts on one Redis (`[cluster]`): what two hosts must
//! agree on for one to forward a request to the other.
//!
//! - [`ClusterKey`]: the key every host reads from `cluster.key_file`.
//! - The signature of a forwarded request ([`ClusterKey::sign`],
//!   [`ClusterKey::verify`]): HMAC-SHA256 over a canonical text
//!   ([`Signed`]) of the method, the path, the SHA-256 of the body, a
//!   timestamp, a nonce, and the values of the headers that carry authority
//!   across the hop (`Mcp-Session-Id`, the established principal, the
//!   client's address), so none of them can be changed or replayed under
//!   another's signature. The timestamp must lie within [`MAX_SKEW_MS`] of
//!   the receiver's clock; the receiver remembers nonces for that long.
//! - The tag in session ids ([`ClusterKey::id_tag`]): with a key, the last
//!   32 of a session id's 128 bits are a MAC of the first 96, so a host
//!   tells a forged or random id from one a gateway minted without asking
//!   Redis ([`crate::session_id::SessionId::mint`]).
//!
//! Every item is domain-separated (its own prefix in the MAC input), so a
//! signature can never pass for a tag or the other way round.

use std::path::Path;

use ring::hmac;

/// The signature header: `v1=` and the lowercase hex HMAC.
pub const SIGNATURE: &str = "x-mcpgw-signature";
/// Unix milliseconds when the forwarding host signed the request.
pub const TIMESTAMP: &str = "x-mcpgw-timestamp";
/// 128 random bits (hex) making each signed request unique.
pub const NONCE: &str = "x-mcpgw-nonce";

/// How far a signed request's timestamp may be from the receiver's clock,
/// either way. Hosts' clocks are expected to be NTP-synchronised; this only
/// bounds how long a captured request could be replayed (nonces are
/// remembered for as long).
pub const MAX_SKEW_MS: u64 = 10_000;

/// The shortest key accepted: 256 bits, the HMAC's own strength.
pub const MIN_KEY_LEN: usize = 32;

const SIGN_DOMAIN: &[u8] = b"mcpgw-forward-v1\n";
const TAG_DOMAIN: &[u8] = b"mcpgw-session-id-v1\n";
const VERSION_PREFIX: &str = "v1=";

/// The shared secret of the gateways of one cluster.
pub struct ClusterKey {
    key: hmac::Key,
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(<redacted>)")
    }
}

/// What a forwarding signature covers. Absent headers are empty.
#[derive(Debug, Clone, Copy)]
pub struct Signed<'a> {
    pub method: &'a [u8],
    /// Path and query, as sent.
    pub path: &'a [u8],
    pub body: &'a [u8],
    pub timestamp_ms: u64,
    pub nonce: &'a [u8],
    /// `Mcp-Session-Id`.
    pub session: &'a [u8],
    /// `x-mcpgw-principal`.
    pub principal: &'a [u8],
    /// `x-mcpgw-client`.
    pub client: &'a [u8],
}

/// Why a forwarded request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no signature, timestamp or nonce")]
    Missing,
    #[error("timestamp outside the allowed clock skew")]
    Skew,
    #[error("wrong signature")]
    BadSignature,
    #[error("nonce seen before (a replay)")]
    Replay,
}

impl Refusal {
    /// Every label, so the metric's series exist from the start.
    pub const LABELS: [&'static str; 4] = ["missing", "skew", "bad_signature", "replay"];

    pub fn label(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Skew => "skew",
            Self::BadSignature => "bad_signature",
            Self::Replay => "replay",
        }
    }
}

impl ClusterKey {
    /// The key in `path`: its bytes, without a trailing newline, at least
    /// [`MIN_KEY_LEN`] of them. The error names the file.
    pub fn read(path: &Path) -> Result<Self, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let trimmed = bytes.trim_ascii_end();
        if trimmed.len() < MIN_KEY_LEN {
            return Err(format!(
                "{} holds {} bytes; the cluster key must have at least {MIN_KEY_LEN} \
                 (e.g. `openssl rand -hex 32`)",
                path.display(),
                trimmed.len()
            ));
        }
        Ok(Self::from_bytes(trimmed))
    }

    pub fn from_bytes(secret: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// The canonical text a signature covers: the domain, then each part
    /// followed by a newline (the body by its SHA-256, the time in decimal).
    fn signed_text(what: &Signed<'_>) -> Vec<u8> {
        let digest = ring::digest::digest(&ring::digest::SHA256, what.body);
        let ts = what.timestamp_ms.to_string();
        message(
            SIGN_DOMAIN,
            &[
                what.method,
                what.path,
                digest.as_ref(),
                ts.as_bytes(),
                what.nonce,
                what.session,
                what.principal,
                what.client,
            ],
        )
    }

    /// The value of the [`SIGNATURE`] header for `what`.
    pub fn sign(&self, what: &Signed<'_>) -> String {
        let tag = hmac::sign(&self.key, &Self::signed_text(what));
        let mut out = String::with_capacity(VERSION_PREFIX.len() + 64);
        out.push_str(VERSION_PREFIX);
        push_hex(&mut out, tag.as_ref());
        out
    }

    /// Check a received request: its timestamp against `now_ms`, then its
    /// signature (in constant time). Nonces are the receiver's to remember.
    pub fn verify(&self, what: &Signed<'_>, signature: &[u8], now_ms: u64) -> Result<(), Refusal> {
        if what.timestamp_ms.abs_diff(now_ms) > MAX_SKEW_MS {
            return Err(Refusal::Skew);
        }
        let hex = signature
            .strip_prefix(VERSION_PREFIX.as_bytes())
            .ok_or(Refusal::BadSignature)?;
        let mut raw = [0u8; 32];
        if !decode_hex(hex, &mut raw) {
            return Err(Refusal::BadSignature);
        }
        hmac::verify(&self.key, &Self::signed_text(what), &raw).map_err(|_| Refusal::BadSignature)
    }

    /// The 32-bit tag of a session id's first 96 bits.
    pub fn id_tag(&self, head: &[u8; 12]) -> [u8; 4] {
        let tag = hmac::sign(&self.key, &message(TAG_DOMAIN, &[head]));
        let mut out = [0u8; 4];
        out.copy_from_slice(&tag.as_ref()[..4]);
        out
    }
}

fn message(domain: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let len = parts.iter().map(|p| p.len() + 1).sum::<usize>();
    let mut out = Vec::with_capacity(domain.len() + len);
    out.extend_from_slice(domain);
    for p in parts {
        out.extend_from_slice(p);
        out.push(b'\n');
    }
    out
}

/// 128 random bits as 32 hex digits: a fresh [`NONCE`].
pub fn nonce() -> Result<String, getrandom::Error> {
    let mut raw = [0u8; 16];
    getrandom::fill(&mut raw)?;
    let mut out = String::with_capacity(32);
    push_hex(&mut out, &raw);
    Ok(out)
}

/// Now, in Unix milliseconds (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
}

/// Decode exactly `out.len()` bytes of lowercase or uppercase hex.
fn decode_hex(hex: &[u8], out: &mut [u8]) -> bool {
    if hex.len() != out.len() * 2 {
        return false;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        match (digit(pair[0]), digit(pair[1])) {
            (Some(h), Some(l)) => *o = (h << 4) | l,
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ClusterKey {
        ClusterKey::from_bytes(b"0123456789abcdef0123456789abcdef")
    }

    fn request(body: &[u8]) -> Signed<'_> {
        Signed {
            method: b"POST",
            path: b"/mcp",
            body,
            timestamp_ms: 1_000_000,
            nonce: b"00112233445566778899aabbccddeeff",
            session: b"abcdefghijklmnopqrstuvwxyz",
            principal: b"",
            client: b"10.0.0.1",
        }
    }

    #[test]
    fn a_signature_verifies_and_any_change_breaks_it() {
        let k = key();
        let what = request(b"{}");
        let sig = k.sign(&what);
        assert!(sig.starts_with("v1=") && sig.len() == 67, "{sig}");
        assert_eq!(k.verify(&what, sig.as_bytes(), 1_000_000), Ok(()));
        assert_eq!(
            k.verify(&what, sig.as_bytes(), 1_000_000 + MAX_SKEW_MS),
            Ok(())
        );
        assert_eq!(
            k.verify(&what, sig.as_bytes(), 1_000_001 + MAX_SKEW_MS),
            Err(Refusal::Skew)
        );
        let changed = [
            Signed {
                body: b"{ }",
                ..what
            },
            Signed {
                method: b"GET",
                ..what
            },
            Signed {
                path: b"/other",
                ..what
            },
            Signed {
                timestamp_ms: 1_000_001,
                ..what
            },
            Signed {
                nonce: b"ffffffffffffffffffffffffffffffff",
                ..what
            },
            Signed {
                session: b"bbcdefghijklmnopqrstuvwxyz",
                ..what
            },
            Signed {
                principal: b"eyJpZCI6ImV2ZSJ9",
                ..what
            },
            Signed {
                client: b"10.0.0.2",
                ..what
            },
        ];
        for other in changed {
            assert_eq!(
                k.verify(&other, sig.as_bytes(), 1_000_000),
                Err(Refusal::BadSignature),
                "{other:?}"
            );
        }
        let other_key = ClusterKey::from_bytes(b"another key of at least 32 bytes!!");
        assert_eq!(
            other_key.verify(&what, sig.as_bytes(), 1_000_000),
            Err(Refusal::BadSignature)
        );
        for junk in [&b""[..], b"v1=", b"v1=zz", b"v2=00", &sig.as_bytes()[3..]] {
            assert_eq!(k.verify(&what, junk, 1_000_000), Err(Refusal::BadSignature));
        }
    }

    #[test]
    fn tags_and_signatures_are_domain_separated() {
        let k = key();
        let head = [7u8; 12];
        assert_eq!(k.id_tag(&head), k.id_tag(&head));
        assert_ne!(k.id_tag(&head), k.id_tag(&[8u8; 12]));
        let what = Signed {
            method: &head,
            path: b"",
            body: b"",
            timestamp_ms: 0,
            nonce: b"",
            session: b"",
            principal: b"",
            client: b"",
        };
        assert!(!k.sign(&what).contains(&{
            let mut s = String::new();
            push_hex(&mut s, &k.id_tag(&head));
            s
        }));
    }

    #[test]
    fn keys_are_read_from_files_and_short_ones_refused() {
        let dir = std::env::temp_dir().join(format!("mcpgw-cluster-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("key");
        std::fs::write(&path, "0123456789abcdef0123456789abcdef\n").expect("write");
        let k = ClusterKey::read(&path).expect("read");
        let what = request(b"x");
        assert_eq!(
            key().verify(&what, k.sign(&what).as_bytes(), 1_000_000),
            Ok(()),
            "the trailing newline is not part of the key"
        );
        std::fs::write(&path, "short\n").expect("write");
        let e = ClusterKey::read(&path).expect_err("short");
        assert!(e.contains("at least 32"), "{e}");
        assert!(ClusterKey::read(&dir.join("missing")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
