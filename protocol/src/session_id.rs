//! The session-id format: 128 bits from the OS CSPRNG, written as 26
//! characters of lowercase RFC 4648 base32 (`a-z2-7`, no padding).
//!
//! A fixed length and alphabet let both processes reject a malformed id before
//! it becomes a map key, a log field or a store key, and keep the id free of
//! anything that needs escaping in a header, a path or a Redis key.
//! Minting for a given slot (drawing until the routing hash agrees) lives
//! here too, so that the supervisor can route by hashing alone.
//!
//! With a cluster key (`[cluster] key_file`) the last 32 of the 128 bits are
//! a MAC of the first 96 ([`crate::cluster::ClusterKey::id_tag`]): any host
//! of the cluster tells an id a gateway minted from a forged or random one
//! ([`SessionId::tagged_by`]) without a store lookup, while 96 random bits
//! remain for the id's secrecy.

use std::fmt;

use crate::cluster::ClusterKey;
use crate::routing;

/// Length of an encoded session id.
pub const LEN: usize = 26;
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// A validated session id. `Copy` and fixed-size: no allocation to pass it on.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId([u8; LEN]);

/// Why a presented session id was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidSessionId {
    #[error("session id must be {LEN} characters, got {0}")]
    Length(usize),
    #[error("session id may only contain a-z and 2-7")]
    Alphabet,
}

/// The OS random source failed; minting cannot continue safely.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random source failed: {0}")]
pub struct RandomUnavailable(getrandom::Error);

impl SessionId {
    /// Validate an id presented by a client (header bytes, not yet trusted).
    pub fn parse(raw: &[u8]) -> Result<Self, InvalidSessionId> {
        let bytes: [u8; LEN] = raw
            .try_into()
            .map_err(|_| InvalidSessionId::Length(raw.len()))?;
        if bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(b))
        {
            Ok(Self(bytes))
        } else {
            Err(InvalidSessionId::Alphabet)
        }
    }

    /// Draw a fresh id whose routing hash over `slots` lands on `slot`, so the
    /// supervisor sends every later request of the session to its minter.
    pub fn mint_for_slot(slot: u16, slots: u16) -> Result<Self, RandomUnavailable> {
        Self::mint(slot, slots, None)
    }

    /// [`Self::mint_for_slot`], tagged with `key` when there is one.
    pub fn mint(
        slot: u16,
        slots: u16,
        key: Option<&ClusterKey>,
    ) -> Result<Self, RandomUnavailable> {
        debug_assert!(slot < slots.max(1));
        let mut entropy = [0u8; 16 * 8];
        loop {
            getrandom::fill(&mut entropy).map_err(RandomUnavailable)?;
            for chunk in entropy.chunks_exact(16) {
                let mut raw = [0u8; 16];
                raw.copy_from_slice(chunk);
                if let Some(key) = key {
                    let mut head = [0u8; 12];
                    head.copy_from_slice(&raw[..12]);
                    raw[12..].copy_from_slice(&key.id_tag(&head));
                }
                let id = Self::encode(raw);
                if routing::slot_for(&id, slots) == slot {
                    return Ok(id);
                }
            }
        }
    }

    /// The id minting makes of these 128 bits (for the fuzz target: the
    /// validator must accept every id the generator can make).
    #[cfg(feature = "fuzzing")]
    pub(crate) fn from_random(raw: [u8; 16]) -> Self {
        Self::encode(raw)
    }

    fn encode(raw: [u8; 16]) -> Self {
        let value = u128::from_be_bytes(raw);
        let mut out = [0u8; LEN];
        // 26 * 5 = 130 bits: the first character carries the top 3 bits.
        for (i, slot) in out.iter_mut().enumerate() {
            let shift = 5 * (LEN - 1 - i);
            let digit = if shift >= 128 {
                0
            } else {
                (value >> shift) & 0x1f
            };
            *slot = ALPHABET[digit as usize];
        }
        Self(out)
    }

    /// The 128 bits this id encodes; `None` for a well-formed id no
    /// gateway can have minted (its first character is past `h`, so it
    /// would need 130 bits).
    fn bits(&self) -> Option<[u8; 16]> {
        let mut value: u128 = 0;
        for (i, c) in self.0.iter().enumerate() {
            let digit = match c {
                b'a'..=b'z' => c - b'a',
                _ => c - b'2' + 26,
            };
            if i == 0 && digit >= 8 {
                return None;
            }
            value = (value << 5) | u128::from(digit);
        }
        Some(value.to_be_bytes())
    }

    /// Whether this id carries the tag of `key` (was minted by a gateway of
    /// the cluster), checked without any lookup.
    pub fn tagged_by(&self, key: &ClusterKey) -> bool {
        let Some(raw) = self.bits() else {
            return false;
        };
        let mut head = [0u8; 12];
        head.copy_from_slice(&raw[..12]);
        key.id_tag(&head) == raw[12..]
    }

    /// The id as text (always ASCII).
    pub fn as_str(&self) -> &str {
        // Only ever built from ASCII bytes by `parse` or `encode`.
        std::str::from_utf8(&self.0).unwrap_or("")
    }

    pub fn as_bytes(&self) -> &[u8; LEN] {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({})", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_ids_parse_and_route_to_their_slot() {
        for slots in [1u16, 2, 3, 8, 64] {
            for slot in 0..slots {
                let id = SessionId::mint_for_slot(slot, slots).expect("random");
                assert_eq!(SessionId::parse(id.as_bytes()), Ok(id));
                assert_eq!(routing::slot_for(&id, slots), slot);
            }
        }
    }

    #[test]
    fn tagged_ids_verify_under_their_key_only() {
        let key = ClusterKey::from_bytes(b"0123456789abcdef0123456789abcdef");
        let other = ClusterKey::from_bytes(b"fedcba9876543210fedcba9876543210");
        for slots in [1u16, 3] {
            for slot in 0..slots {
                let id = SessionId::mint(slot, slots, Some(&key)).expect("random");
                assert_eq!(routing::slot_for(&id, slots), slot);
                assert!(id.tagged_by(&key));
                assert!(!id.tagged_by(&other));
            }
        }
        let untagged = SessionId::mint_for_slot(0, 1).expect("random");
        // One in 2^32 untagged ids carries a valid tag by chance; this
        // one is fixed, so the test cannot flake.
        assert_eq!(untagged.bits().map(|b| b.len()), Some(16));
        let fixed = SessionId::parse(b"aaaaaaaaaaaaaaaaaaaaaaaaaa").expect("parse");
        assert!(!fixed.tagged_by(&key));
        // Past 128 bits: never minted.
        let too_big = SessionId::parse(b"zaaaaaaaaaaaaaaaaaaaaaaaaa").expect("parse");
        assert_eq!(too_big.bits(), None);
        assert!(!too_big.tagged_by(&key));
        // Decoding inverts encoding.
        let raw = [0xa5u8; 16];
        assert_eq!(SessionId::encode(raw).bits(), Some(raw));
    }

    #[test]
    fn minted_ids_differ() {
        let a = SessionId::mint_for_slot(0, 1).expect("random");
        let b = SessionId::mint_for_slot(0, 1).expect("random");
        assert_ne!(a, b);
    }

    #[test]
    fn rejects_bad_length_and_alphabet() {
        assert_eq!(SessionId::parse(b"abc"), Err(InvalidSessionId::Length(3)));
        assert_eq!(
            SessionId::parse(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
            Err(InvalidSessionId::Alphabet)
        );
        assert_eq!(
            SessionId::parse(b"abcdefghijklmnopqrstuvwxy1"),
            Err(InvalidSessionId::Alphabet)
        );
        assert_eq!(
            SessionId::parse(b"abcdefghijklmnopqrstuvwxy/"),
            Err(InvalidSessionId::Alphabet)
        );
        assert!(SessionId::parse(b"abcdefghijklmnopqrstuvwxy7").is_ok());
    }
}
