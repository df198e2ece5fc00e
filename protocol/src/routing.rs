//! The routing hash: which worker slot owns a session id.
//!
//! Rendezvous (highest random weight) hashing over the configured slots:
//! every slot scores the id and the highest score wins. Both the supervisor
//! (routing a connection) and a worker (minting ids for itself, finding the
//! owner to forward to) compute it, so it must be deterministic across
//! processes: a fixed-key FNV-1a over the id, mixed with the slot number by
//! the SplitMix64 finalizer. Ids are random CSPRNG output minted by the
//! gateway, so the hash needs spread, not secrecy. Rendezvous keeps most
//! sessions in place when the slot count changes.

use crate::session_id::SessionId;

/// The slot (0-based) that owns `id` in a pool of `slots` slots.
/// A pool of zero slots is treated as one.
pub fn slot_for(id: &SessionId, slots: u16) -> u16 {
    let base = fnv1a(id.as_bytes());
    let mut best = 0u16;
    let mut best_score = 0u64;
    for slot in 0..slots.max(1) {
        let score = mix(base ^ u64::from(slot).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        if slot == 0 || score > best_score {
            best = slot;
            best_score = score;
        }
    }
    best
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> SessionId {
        SessionId::parse(text.as_bytes()).expect("valid id")
    }

    #[test]
    fn golden_values_pin_the_hash() {
        // If these change, sessions of a running fleet would move on upgrade.
        let a = id("abcdefghijklmnopqrstuvwxyz");
        let b = id("zzzzzzzzzzzzzzzzzzzzzzzzz2");
        assert_eq!(
            [
                slot_for(&a, 4),
                slot_for(&b, 4),
                slot_for(&a, 7),
                slot_for(&b, 7)
            ],
            GOLDEN
        );
    }
    const GOLDEN: [u16; 4] = [1, 0, 1, 0];

    #[test]
    fn spreads_over_slots_and_moves_few_on_growth() {
        let ids: Vec<SessionId> = (0..4000)
            .map(|_| SessionId::mint_for_slot(0, 1).expect("random"))
            .collect();
        let mut counts = [0usize; 4];
        for i in &ids {
            counts[slot_for(i, 4) as usize] += 1;
        }
        for c in counts {
            assert!((700..1300).contains(&c), "uneven spread: {counts:?}");
        }
        let moved = ids
            .iter()
            .filter(|i| slot_for(i, 4) != slot_for(i, 5))
            .count();
        // Rendezvous: growing 4 → 5 slots moves about a fifth, never more.
        assert!(moved < ids.len() * 3 / 10, "moved {moved}");
        assert!(ids.iter().all(|i| {
            let s5 = slot_for(i, 5);
            s5 == 4 || s5 == slot_for(i, 4)
        }));
    }
}
