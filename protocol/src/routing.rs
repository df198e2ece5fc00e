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

//!
//! [`RouteTable`] adds the exceptions: slots marked down (a crash loop; their
//! sessions go to the best-scoring live slot, which is the rendezvous answer
//! over the live slots) and per-session overrides (sessions moved off their
//! hash slot, which stay where they were moved even when that slot is back).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::session_id::SessionId;

/// The slot (0-based) that owns `id` in a pool of `slots` slots.
/// A pool of zero slots is treated as one.
pub fn slot_for(id: &SessionId, slots: u16) -> u16 {
    best_slot(id, slots.max(1), |_| true).unwrap_or(0)
}

/// The highest-scoring slot among those `allowed`, if any is.
pub fn best_slot(id: &SessionId, slots: u16, allowed: impl Fn(u16) -> bool) -> Option<u16> {
    let base = fnv1a(id.as_bytes());
    let mut best: Option<(u16, u64)> = None;
    for slot in (0..slots).filter(|s| allowed(*s)) {
        let score = mix(base ^ u64::from(slot).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        if best.is_none_or(|(_, b)| score > b) {
            best = Some((slot, score));
        }
    }
    best.map(|(slot, _)| slot)
}

/// The host among `hosts` that takes over `id` when its own host is gone
/// (`[cluster]`): rendezvous over host names, so every survivor that sees
/// the same live members picks the same one, each takes about an equal
/// share, and a host joining or leaving moves only its own share.
pub fn best_host<'a>(id: &SessionId, hosts: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let base = fnv1a(id.as_bytes());
    hosts
        .into_iter()
        .map(|h| (h, mix(base ^ fnv1a(h.as_bytes()).rotate_left(17))))
        .max_by(|(ha, a), (hb, b)| a.cmp(b).then_with(|| hb.cmp(ha)))
        .map(|(h, _)| h)
}

/// A change to the routing exceptions, sent by the supervisor to every
/// worker (workers forward requests by the same table).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RouteUpdate {
    /// Start from an empty table (a newly started worker gets the whole
    /// table this way).
    pub reset: bool,
    /// The number of slots now (0: unchanged).
    pub slots: u16,
    /// Every slot that is down now.
    pub down: Vec<u16>,
    /// Sessions that live on another slot than their hash says.
    pub moved: Vec<(String, u16)>,
    /// Sessions whose override ended (the session ended).
    pub cleared: Vec<String>,
}

/// Hash routing plus its exceptions. Both processes keep one; the
/// supervisor changes its own and sends the same [`RouteUpdate`] to workers.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    slots: u16,
    down: Vec<bool>,
    moved: HashMap<SessionId, u16>,
}

impl RouteTable {
    pub fn new(slots: u16) -> Self {
        Self {
            slots: slots.max(1),
            down: vec![false; usize::from(slots.max(1))],
            moved: HashMap::new(),
        }
    }

    /// No exceptions: the hash alone decides (lets callers skip the table).
    pub fn is_plain(&self) -> bool {
        self.moved.is_empty() && !self.down.iter().any(|d| *d)
    }

    pub fn slots(&self) -> u16 {
        self.slots
    }

    pub fn is_down(&self, slot: u16) -> bool {
        self.down.get(usize::from(slot)).copied().unwrap_or(false)
    }

    /// The slot that serves `id`.
    pub fn owner(&self, id: &SessionId) -> u16 {
        if let Some(slot) = self.moved.get(id) {
            return *slot;
        }
        let slot = slot_for(id, self.slots);
        if !self.is_down(slot) {
            return slot;
        }
        best_slot(id, self.slots, |s| !self.is_down(s)).unwrap_or(slot)
    }

    /// Apply an update; entries naming a malformed id or a slot out of range
    /// are skipped.
    pub fn apply(&mut self, update: &RouteUpdate) {
        if update.reset {
            self.moved.clear();
        }
        if update.slots != 0 {
            self.set_slots(update.slots);
        }
        self.down.iter_mut().for_each(|d| *d = false);
        for slot in &update.down {
            if let Some(d) = self.down.get_mut(usize::from(*slot)) {
                *d = true;
            }
        }
        for (id, slot) in &update.moved {
            if let Ok(id) = SessionId::parse(id.as_bytes())
                && *slot < self.slots
            {
                self.moved.insert(id, *slot);
            }
        }
        for id in &update.cleared {
            if let Ok(id) = SessionId::parse(id.as_bytes()) {
                self.moved.remove(&id);
            }
        }
    }

    /// The whole table as one update (for a worker that just started).
    pub fn snapshot(&self) -> RouteUpdate {
        RouteUpdate {
            reset: true,
            slots: self.slots,
            down: self.down_slots(),
            moved: self
                .moved
                .iter()
                .map(|(id, slot)| (id.to_string(), *slot))
                .collect(),
            cleared: Vec::new(),
        }
    }

    pub fn down_slots(&self) -> Vec<u16> {
        (0..self.slots).filter(|s| self.is_down(*s)).collect()
    }

    /// The pool has `slots` slots now; exceptions about removed slots go.
    pub fn set_slots(&mut self, slots: u16) {
        let slots = slots.max(1);
        if slots == self.slots {
            return;
        }
        self.slots = slots;
        self.down.resize(usize::from(slots), false);
        self.moved.retain(|_, s| *s < slots);
    }

    /// Whether `id` has an override of its own.
    pub fn is_moved(&self, id: &SessionId) -> bool {
        self.moved.contains_key(id)
    }
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

    #[test]
    fn best_host_is_order_free_and_spreads() {
        let hosts = ["gw-a", "gw-b", "gw-c"];
        let mut counts = [0usize; 3];
        for _ in 0..3000 {
            let id = SessionId::mint_for_slot(0, 1).expect("id");
            let h = best_host(&id, hosts).expect("a host");
            assert_eq!(best_host(&id, hosts.iter().rev().copied()), Some(h));
            counts[hosts.iter().position(|x| *x == h).expect("listed")] += 1;
            // Without the winner, the others keep their sessions.
            let others: Vec<&str> = hosts.iter().copied().filter(|x| *x != h).collect();
            let second = best_host(&id, others.iter().copied()).expect("a host");
            assert_ne!(second, h);
        }
        assert!(counts.iter().all(|c| *c > 700), "{counts:?}");
        assert_eq!(
            best_host(&SessionId::mint_for_slot(0, 1).expect("id"), []),
            None
        );
    }

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
    fn down_slots_spill_by_rendezvous_and_overrides_stick() {
        let ids: Vec<SessionId> = (0..400)
            .map(|_| SessionId::mint_for_slot(0, 1).expect("random"))
            .collect();
        let mut table = RouteTable::new(4);
        assert!(table.is_plain());
        table.apply(&RouteUpdate {
            down: vec![2],
            ..RouteUpdate::default()
        });
        for i in &ids {
            let owner = table.owner(i);
            assert_ne!(owner, 2);
            if slot_for(i, 4) != 2 {
                assert_eq!(owner, slot_for(i, 4), "live slots keep their sessions");
            }
        }
        let victim = ids
            .iter()
            .find(|i| slot_for(i, 4) == 2)
            .expect("some id hashes to slot 2");
        let moved_to = table.owner(victim);
        table.apply(&RouteUpdate {
            moved: vec![(victim.to_string(), moved_to)],
            ..RouteUpdate::default()
        });
        // Slot 2 is back: the moved session stays where it was moved.
        table.apply(&RouteUpdate::default());
        assert!(!table.is_down(2));
        assert_eq!(table.owner(victim), moved_to);
        let mut copy = RouteTable::new(4);
        copy.apply(&table.snapshot());
        assert_eq!(copy.owner(victim), moved_to);
        table.apply(&RouteUpdate {
            cleared: vec![victim.to_string()],
            ..RouteUpdate::default()
        });
        assert_eq!(table.owner(victim), 2);
        assert!(table.is_plain());
    }

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
