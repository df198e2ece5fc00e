//! Sessions whose host is gone (`[cluster]`), moved before any request
//! asks for them:
//! - a **dead member** (its last heartbeat older than the TTL): each
//!   survivor claims its share, the sessions [`routing::best_host`] over the
//!   live members gives it, for the worker of the slot the routing hash gives
//!   (so no routing exception is needed); once a member has been dead for
//!   twice the TTL, a survivor claims whatever is left (a share whose
//!   claimant died too). A member that holds nothing more leaves the
//!   members hash;
//! - this host's **previous run** (a restart within the TTL keeps its
//!   sessions): its old workers' sessions, adopted at start;
//! - **handover on stop** (`cluster.handover_on_stop`): this host's
//!   sessions, given to the live workers of the other members.
//!
//! Every move is the compare-and-swap of [`super::scripts`]'s `MOVE_BATCH`,
//! a bounded batch per call: two survivors scanning at once never make two
//! owners, a dead owner's session moves only while it has no heartbeat,
//! and only to a worker that has one. The lazy per-request claim
//! (`Shared::fetch_remote`) stays the backstop. Upstream sessions follow
//! with the record: the new owner's worker re-attaches them by id.

use super::RedisConn;
use mcpgw_protocol::control::WorkerId;
use mcpgw_protocol::routing;
use mcpgw_protocol::session_id::SessionId;
use mcpgw_protocol::store::{Member, SessionRecord, keys, parse_owner_id};
use redis::RedisError;
use tracing::{debug, info, warn};

use super::Shared;
use super::scripts::Moved;

/// Sessions per `MOVE_BATCH` call: bounds the time Redis spends in one
/// script.
const BATCH: usize = 64;
/// Start-up passes that try to adopt the previous run's sessions (a slot
/// whose worker is not up yet is retried on the next one).
pub(super) const ADOPT_PASSES: u32 = 10;

/// A member whose heartbeat expired, as last read.
#[derive(Debug, Clone)]
pub(super) struct DeadMember {
    pub host: String,
    /// Its entry in the members hash, exactly as read (removed only if
    /// unchanged).
    pub entry: String,
    /// How long past the TTL its last heartbeat is.
    pub dead_for_ms: u64,
}

/// What the last heartbeat said about the other members.
#[derive(Debug, Clone, Default)]
pub(super) struct ClusterView {
    /// Hosts whose heartbeat is live, this one included.
    pub live: Vec<String>,
    pub dead: Vec<DeadMember>,
    /// The live members other than this host, with their entries.
    pub peers: Vec<(String, Member)>,
}

/// Who gets one session being moved.
type Pick<'a> = dyn Fn(&SessionId) -> Option<String> + Sync + 'a;

impl Shared {
    fn view(&self) -> ClusterView {
        match self.view.lock() {
            Ok(v) => v.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// This host's live worker for the slot the routing hash gives `id`.
    fn local_target(&self, id: &SessionId) -> Option<WorkerId> {
        self.pending(|p| {
            let slot = routing::slot_for(id, p.slots);
            p.live.iter().map(|(w, _)| *w).find(|w| w.slot == slot)
        })
    }

    /// One pass after a heartbeat: adopt the previous run's sessions (at
    /// start), claim this host's share of every dead member's, and forget
    /// members that hold nothing more.
    pub(super) async fn take_over(&self) {
        if self.advertise.is_none() {
            return;
        }
        let mut conn = self.conn.clone();
        if let Err(e) = self.take_over_with(&mut conn).await {
            self.went_down("takeover", &e);
        }
    }

    async fn take_over_with(&self, conn: &mut RedisConn) -> Result<(), RedisError> {
        let passes = self.adopt_passes.load(std::sync::atomic::Ordering::Relaxed);
        if passes > 0 {
            let left = self.adopt_previous_run(conn).await?;
            let next = if left == 0 { 0 } else { passes - 1 };
            self.adopt_passes
                .store(next, std::sync::atomic::Ordering::Relaxed);
        }
        let view = self.view();
        for dead in &view.dead {
            let everything = dead.dead_for_ms > 2 * self.heartbeat_ttl_ms;
            let live = &view.live;
            let pick = |id: &SessionId| {
                let mine = everything
                    || routing::best_host(id, live.iter().map(String::as_str))
                        == Some(self.host.as_str());
                if !mine {
                    return None;
                }
                self.local_target(id).map(|w| self.owner(w))
            };
            let owners = self.scripts.owners_of_host(conn, &dead.host).await?;
            let mut held = 0;
            for owner in &owners {
                let (moved, left) = self.move_sessions(conn, owner, true, &pick).await?;
                if moved > 0 {
                    self.metrics
                        .cluster_claimed
                        .with_label_values(&[&dead.host])
                        .inc_by(moved as u64);
                    info!(
                        from = owner,
                        sessions = moved,
                        "claimed sessions of a dead gateway host"
                    );
                }
                held += left;
            }
            if held == 0
                && self
                    .scripts
                    .forget_member(conn, &dead.host, &dead.entry)
                    .await?
            {
                info!(
                    host = dead.host,
                    "dead gateway host holds no sessions any more; removed from the cluster's members"
                );
            }
        }
        Ok(())
    }

    /// Adopt the sessions of this host's workers of an earlier run (their
    /// generations never repeat, so they are dead for sure), each for the
    /// live worker of its hash slot. Returns how many are left.
    async fn adopt_previous_run(&self, conn: &mut RedisConn) -> Result<usize, RedisError> {
        let live: Vec<String> =
            self.pending(|p| p.live.iter().map(|(w, _)| self.owner(*w)).collect());
        if live.is_empty() {
            return Ok(1);
        }
        let pick = |id: &SessionId| self.local_target(id).map(|w| self.owner(w));
        let mut left = 0;
        for owner in self.scripts.owners_of_host(conn, &self.host).await? {
            if live.contains(&owner) {
                continue;
            }
            let (moved, rest) = self.move_sessions(conn, &owner, false, &pick).await?;
            if moved > 0 {
                self.metrics.claimed.inc_by(moved as u64);
                info!(
                    from = owner,
                    sessions = moved,
                    "adopted sessions of this host's previous run"
                );
            }
            left += rest;
        }
        Ok(left)
    }

    /// Move the sessions of `owner` that `pick` gives a worker of this
    /// host, in batches, and take their records in. Returns how many moved
    /// and how many `owner` still holds.
    async fn move_sessions(
        &self,
        conn: &mut RedisConn,
        owner: &str,
        unless_heartbeat: bool,
        pick: &Pick<'_>,
    ) -> Result<(usize, usize), RedisError> {
        let ids = self.scripts.sessions_of(conn, owner).await?;
        let mut moves: Vec<(SessionId, String)> = ids
            .iter()
            .filter_map(|raw| SessionId::parse(raw.as_bytes()).ok())
            .filter_map(|id| pick(&id).map(|to| (id, to)))
            .collect();
        let total = ids.len();
        let mut moved = 0;
        while !moves.is_empty() {
            let batch: Vec<(SessionId, String)> = moves.drain(..moves.len().min(BATCH)).collect();
            match self
                .scripts
                .move_batch(conn, owner, unless_heartbeat, &batch, self.record_ttl_ms)
                .await?
            {
                Moved::OwnerAlive => {
                    debug!(
                        owner,
                        "its heartbeat is still there; claimed on a later pass"
                    );
                    return Ok((moved, total - moved));
                }
                Moved::Done(records) => {
                    for (id, json) in records {
                        moved += 1;
                        self.take_in(&batch, &id, &json);
                    }
                }
            }
        }
        // What is left: other survivors' shares, and ids whose record went
        // (the script dropped those from the set; they are not counted).
        let left = self.scripts.sessions_of(conn, owner).await?.len();
        Ok((moved, left))
    }

    /// A record a batch moved to one of this host's workers: keep it in
    /// memory, as a record this host's worker wrote.
    fn take_in(&self, batch: &[(SessionId, String)], id: &str, json: &str) {
        let Some((sid, to)) = batch.iter().find(|(s, _)| s.as_str() == id) else {
            return;
        };
        let Some((_, worker)) = parse_owner_id(to) else {
            return;
        };
        match serde_json::from_str::<SessionRecord>(json) {
            Ok(record) if record.id == sid.as_str() => {
                self.records(|r| r.adopt(record, worker));
            }
            _ => warn!(session = %sid, "unreadable session record in Redis; left to a lazy claim"),
        }
    }

    /// `cluster.handover_on_stop`: give every session of this host to the
    /// live worker of another member (rendezvous over the live members, then
    /// the slot its routing hash gives there). Returns how many could not
    /// be handed over (no live member, or its worker is gone).
    pub(super) async fn hand_over(&self, conn: &mut RedisConn) -> Result<usize, RedisError> {
        let view = self.view();
        let peers: Vec<&(String, Member)> = view
            .peers
            .iter()
            .filter(|(_, m)| m.slots > 0 && !m.workers.is_empty())
            .collect();
        let target = |id: &SessionId| -> Option<String> {
            let host = routing::best_host(id, peers.iter().map(|(h, _)| h.as_str()))?;
            let (_, member) = peers.iter().find(|(h, _)| h == host)?;
            let slot = routing::slot_for(id, member.slots);
            member
                .workers
                .iter()
                .find(|w| parse_owner_id(w).is_some_and(|(h, w)| h == host && w.slot == slot))
                .cloned()
        };
        let mut by_owner: std::collections::HashMap<WorkerId, Vec<(SessionId, String)>> =
            std::collections::HashMap::new();
        let mut left = 0;
        for (id, owner) in self.records(|r| r.owners()) {
            match target(&id) {
                Some(to) => by_owner.entry(owner).or_default().push((id, to)),
                None => left += 1,
            }
        }
        let mut handed = 0;
        for (owner, moves) in by_owner {
            let from = self.owner(owner);
            for batch in moves.chunks(BATCH) {
                if let Moved::Done(records) = self
                    .scripts
                    .move_batch(conn, &from, false, batch, self.record_ttl_ms)
                    .await?
                {
                    handed += records.len();
                    left += batch.len() - records.len();
                    for (id, _) in records {
                        if let Ok(id) = SessionId::parse(id.as_bytes()) {
                            self.records(|r| r.forget(&id));
                        }
                    }
                }
            }
        }
        info!(
            sessions = handed,
            left, "handed this host's sessions over to the other members"
        );
        Ok(left)
    }

    /// After a handover: this host's heartbeats go, and so does its members
    /// entry if it holds nothing more; else the entry says it is dead now,
    /// so the survivors claim the rest at once.
    pub(super) async fn leave(
        &self,
        conn: &mut RedisConn,
        live: &[(WorkerId, u32)],
        left: usize,
    ) -> Result<(), RedisError> {
        let mut pipe = redis::pipe();
        for (w, _) in live {
            pipe.cmd("DEL")
                .arg(keys::heartbeat(&self.scripts.prefix, &self.owner(*w)))
                .ignore();
        }
        let members = keys::members(&self.scripts.prefix);
        if left == 0 {
            pipe.cmd("HDEL").arg(&members).arg(&self.host).ignore();
        } else if let Ok(json) = serde_json::to_string(&Member {
            advertise: self.advertise.clone().unwrap_or_default(),
            beat_ms: 0,
            sessions: left as u64,
            slots: 0,
            workers: Vec::new(),
        }) {
            pipe.cmd("HSET")
                .arg(&members)
                .arg(&self.host)
                .arg(json)
                .ignore();
        }
        pipe.query_async(conn).await
    }
}
