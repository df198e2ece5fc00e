//! The Redis backend of the session store (`[store] redis_url`; how it is
//! reached, directly or through Sentinel, is `conn`).
//!
//! The supervisor keeps its own workers' records in memory ([`Records`]),
//! exactly as the embedded store does, and writes them through to Redis in
//! the background: the control readers never wait on the network, sessions
//! this host knows keep working while Redis is away, and what changed in the
//! meantime (a dirty set of session ids) is written once it is back. Redis
//! holds what must outlive this process or be seen by another host: the
//! records themselves, which worker owns each, and worker heartbeats. Key
//! layout: [`mcpgw_protocol::store`].
//!
//! Ownership changes in Redis only by compare-and-swap in Lua scripts
//! ([`scripts`]):
//! - `PUT`/`REMOVE` succeed only if the record is absent or owned by a
//!   worker of this host (this supervisor decides for its own workers; a
//!   record another host has claimed is never overwritten);
//! - `CLAIM` moves one record from a given dead owner to the asker, and,
//!   for another host's worker, only while that worker has no heartbeat;
//! - `REASSIGN` moves every session of a dead worker to its replacement;
//! - `MOVE_BATCH` moves a bounded batch of one dead owner's sessions, each
//!   to a live worker, for the takeovers of [`takeover`] (a dead cluster
//!   member's sessions, this host's previous run's, a handover on stop).
//!
//! Once a heartbeat period the task publishes heartbeats of the live
//! workers, renews the expiry of sessions used since, and checks this host's
//! marker key: if it is gone or another run's, Redis lost its data (or this
//! is a new run) and every live record is written again.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mcpgw_protocol::config::Store as StoreConfig;
use mcpgw_protocol::control::WorkerId;
use mcpgw_protocol::session_id::SessionId;
use mcpgw_protocol::store::{
    Fetched, Member, SessionCap, SessionCaps, SessionRecord, StoreWrite, keys, owner_id,
    parse_owner_id,
};
use redis::RedisError;
use tokio::sync::Notify;
use tracing::{debug, error, info, warn};

use crate::metrics::Metrics;
use crate::store::{BoxFuture, Records, SessionStore};

mod conn;
mod scripts;
mod takeover;

use conn::{RESPONSE_TIMEOUT, RedisConn, connect};

use scripts::{Claim, Scripts};

const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub(crate) enum RedisStoreError {
    #[error("store.redis_url: {0}")]
    Url(RedisError),
    #[error("{key}: cannot read {}: {cause}", path.display())]
    File {
        key: &'static str,
        path: std::path::PathBuf,
        cause: std::io::Error,
    },
    #[error("store.sentinels: {0}")]
    Sentinel(RedisError),
    #[error("store.sentinels: {0:?} is not host:port")]
    SentinelAddr(String),
}

/// Why Redis handed out no record.
enum Miss {
    /// Redis holds no record of the session.
    Absent,
    /// Its owner is alive or changed, or Redis could not be asked.
    Withheld,
    /// A live worker of another cluster member owns it.
    Elsewhere { host: String, advertise: String },
}

/// A cluster member as this host last read it from Redis.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MemberView {
    pub host: String,
    pub advertise: String,
    pub heartbeat_age_ms: u64,
    pub sessions: u64,
    pub live: bool,
}

/// A reassignment Redis has not seen yet.
#[derive(Debug, Clone, Copy)]
struct Reassign {
    from: WorkerId,
    to: WorkerId,
}

/// What the background task still has to tell Redis.
#[derive(Default)]
struct Pending {
    /// Sessions whose record (or its absence) Redis must be told.
    dirty: HashSet<SessionId>,
    reassigns: Vec<Reassign>,
    touched: HashSet<SessionId>,
    /// Workers alive now, with their pids.
    live: Vec<(WorkerId, u32)>,
    /// The number of worker slots.
    slots: u16,
}

struct Shared {
    host: String,
    /// This run's start (Unix ms): the value of the host marker key.
    boot: u64,
    record_ttl_ms: u64,
    heartbeat_ttl_ms: u64,
    heartbeat_every: Duration,
    scripts: Scripts,
    conn: RedisConn,
    records: Mutex<Records>,
    pending: Mutex<Pending>,
    wake: Notify,
    /// Last known state of Redis, to log transitions once, not every retry.
    up: AtomicBool,
    metrics: Arc<Metrics>,
    /// `[cluster]`: where peers reach this host's internal listener; it is
    /// published with every heartbeat.
    advertise: Option<String>,
    /// `[cluster]`: the members as of the last heartbeat.
    members: Mutex<Vec<MemberView>>,
    /// `[cluster]`: the same, for taking over dead members' sessions.
    view: Mutex<takeover::ClusterView>,
    /// `[cluster]`: passes left to adopt the previous run's sessions.
    adopt_passes: AtomicU32,
}

pub(crate) struct RedisStore {
    shared: Arc<Shared>,
}

pub(crate) struct Settings {
    pub host: String,
    pub boot: u64,
    pub idle_timeout: Duration,
    pub heartbeat_every: Duration,
    pub heartbeat_ttl: Duration,
    /// `[cluster]`: the address published for peers (`advertise`).
    pub advertise: Option<String>,
}

impl RedisStore {
    /// Set up the backend and start its background task. Redis need not be
    /// reachable yet.
    pub(crate) fn start(
        config: &StoreConfig,
        url: &str,
        settings: Settings,
        metrics: Arc<Metrics>,
    ) -> Result<Self, RedisStoreError> {
        let conn = connect(config, url)?;
        let shared = Arc::new(Shared {
            host: settings.host,
            boot: settings.boot,
            record_ttl_ms: (settings.idle_timeout + settings.heartbeat_ttl).as_millis() as u64,
            heartbeat_ttl_ms: settings.heartbeat_ttl.as_millis() as u64,
            heartbeat_every: settings.heartbeat_every,
            scripts: Scripts::new(&config.prefix),
            conn,
            records: Mutex::new(Records::default()),
            pending: Mutex::new(Pending::default()),
            wake: Notify::new(),
            up: AtomicBool::new(true),
            metrics,
            advertise: settings.advertise,
            members: Mutex::new(Vec::new()),
            view: Mutex::new(takeover::ClusterView::default()),
            adopt_passes: AtomicU32::new(takeover::ADOPT_PASSES),
        });
        tokio::spawn(sync(shared.clone()));
        Ok(Self { shared })
    }
}

impl Shared {
    fn records<T>(&self, f: impl FnOnce(&mut Records) -> T) -> T {
        match self.records.lock() {
            Ok(mut r) => f(&mut r),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    fn pending<T>(&self, f: impl FnOnce(&mut Pending) -> T) -> T {
        match self.pending.lock() {
            Ok(mut p) => f(&mut p),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    fn mark_dirty(&self, ids: impl IntoIterator<Item = SessionId>) {
        self.pending(|p| p.dirty.extend(ids));
        self.wake.notify_one();
    }

    fn owner(&self, w: WorkerId) -> String {
        owner_id(&self.host, w)
    }

    fn went_down(&self, op: &'static str, e: &RedisError) {
        self.metrics.store_errors.with_label_values(&[op]).inc();
        if self.up.swap(false, Ordering::Relaxed) {
            self.metrics.store_up.set(0);
            error!(error = %e, op, "Redis is unreachable; sessions keep working from memory and are written once it is back");
        } else {
            debug!(error = %e, op, "Redis still unreachable");
        }
    }

    fn came_up(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            self.metrics.store_up.set(1);
            info!("Redis is reachable again");
        }
    }

    /// Is `owner` (an owner id read from Redis) certainly dead, and must a
    /// claim also check its heartbeat? `None`: alive, do not claim.
    fn claim_rule(&self, owner: &str) -> Option<bool> {
        match parse_owner_id(owner) {
            // One of ours: alive only if it is running now. Generations
            // never repeat, so an id of an earlier run is dead for sure.
            Some((host, w)) if host == self.host => {
                let live = self.pending(|p| p.live.iter().any(|(l, _)| *l == w));
                (!live).then_some(false)
            }
            // Another host's worker: dead once its heartbeat expired, which
            // the claim script checks atomically.
            Some(_) => Some(true),
            None => {
                warn!(owner, "session record with a malformed owner; not claimed");
                None
            }
        }
    }

    /// The record of `id` from Redis, claimed for `asker` if its owner is
    /// dead; else why there is none to hand out ([`Miss`]).
    async fn fetch_remote(&self, id: SessionId, asker: WorkerId) -> Result<SessionRecord, Miss> {
        let mut conn = self.conn.clone();
        let me = self.owner(asker);
        let (owner, json) = match self.scripts.get(&mut conn, &id).await {
            Ok(Some(found)) => found,
            Ok(None) => {
                self.came_up();
                return Err(Miss::Absent);
            }
            Err(e) => {
                self.went_down("fetch", &e);
                return Err(Miss::Withheld);
            }
        };
        let json = if owner == me {
            json
        } else {
            let check_heartbeat = self.claim_rule(&owner).ok_or(Miss::Withheld)?;
            // Another host's worker: if it is alive, where to forward to.
            let owner_host = parse_owner_id(&owner)
                .map(|(h, _)| h)
                .filter(|h| *h != self.host && self.advertise.is_some());
            match self
                .scripts
                .claim(
                    &mut conn,
                    &id,
                    &owner,
                    &me,
                    check_heartbeat,
                    owner_host,
                    self.record_ttl_ms,
                )
                .await
            {
                Ok(Claim::Claimed(json)) => {
                    info!(session = %id, from = owner, to = me, "session claimed from a dead owner");
                    self.metrics.claimed.inc();
                    json
                }
                Ok(Claim::Alive(member)) => {
                    self.came_up();
                    let advertise = member
                        .and_then(|m| serde_json::from_str::<Member>(&m).ok())
                        .map(|m| m.advertise);
                    return match (owner_host, advertise) {
                        (Some(host), Some(advertise)) => Err(Miss::Elsewhere {
                            host: host.to_owned(),
                            advertise,
                        }),
                        _ => {
                            debug!(session = %id, owner, "session not claimed: its owner is alive (and not reachable as a cluster member)");
                            Err(Miss::Withheld)
                        }
                    };
                }
                Ok(Claim::Changed) => {
                    debug!(session = %id, owner, "session not claimed: its owner changed");
                    return Err(Miss::Withheld);
                }
                Err(e) => {
                    self.went_down("fetch", &e);
                    return Err(Miss::Withheld);
                }
            }
        };
        self.came_up();
        let record: SessionRecord = match serde_json::from_str(&json) {
            Ok(r) => r,
            Err(e) => {
                warn!(session = %id, error = %e, "unreadable session record in Redis; ignored");
                return Err(Miss::Withheld);
            }
        };
        if record.id != id.as_str() {
            warn!(session = %id, "session record in Redis names another session; ignored");
            return Err(Miss::Withheld);
        }
        self.records(|r| r.adopt(record.clone(), asker));
        let mut record = record;
        record.owner = asker;
        Ok(record)
    }

    /// One pass: reassignments, then dirty records. Returns false if Redis
    /// failed (what was not done stays pending).
    async fn flush(&self) -> bool {
        let mut conn = self.conn.clone();
        let reassigns = self.pending(|p| std::mem::take(&mut p.reassigns));
        for (i, r) in reassigns.iter().enumerate() {
            let (from, to) = (self.owner(r.from), self.owner(r.to));
            match self
                .scripts
                .reassign(&mut conn, &from, &to, self.record_ttl_ms)
                .await
            {
                Ok(moved) => debug!(from, to, moved, "reassigned in Redis"),
                Err(e) => {
                    self.went_down("reassign", &e);
                    self.pending(|p| {
                        let mut rest = reassigns[i..].to_vec();
                        rest.append(&mut p.reassigns);
                        p.reassigns = rest;
                    });
                    return false;
                }
            }
        }
        let dirty: Vec<SessionId> = self.pending(|p| p.dirty.drain().collect());
        for (i, id) in dirty.iter().enumerate() {
            let record = self.records(|r| r.get(id).cloned());
            let result = match &record {
                Some(rec) => {
                    let owner = self.owner(rec.owner);
                    self.scripts
                        .put(&mut conn, &self.host, &owner, rec, id, self.record_ttl_ms)
                        .await
                }
                None => self.scripts.remove(&mut conn, &self.host, id).await,
            };
            match result {
                Ok(true) => {}
                Ok(false) => {
                    // Another host claimed it while we could not reach
                    // Redis: it is theirs now.
                    warn!(session = %id, "another gateway owns this session now; forgetting it here");
                    self.records(|r| r.forget(id));
                }
                Err(e) => {
                    self.went_down("write", &e);
                    self.pending(|p| p.dirty.extend(dirty[i..].iter().copied()));
                    return false;
                }
            }
        }
        true
    }

    /// Heartbeats, expiry renewal, and the check that Redis still has our
    /// records. Returns false if Redis failed.
    async fn beat(&self) -> bool {
        let (live, touched, slots) =
            self.pending(|p| (p.live.clone(), std::mem::take(&mut p.touched), p.slots));
        let mut pipe = redis::pipe();
        for (w, pid) in &live {
            pipe.cmd("SET")
                .arg(keys::heartbeat(&self.scripts.prefix, &self.owner(*w)))
                .arg(*pid)
                .arg("PX")
                .arg(self.heartbeat_ttl_ms)
                .ignore();
        }
        for id in &touched {
            pipe.cmd("PEXPIRE")
                .arg(keys::session(&self.scripts.prefix, id))
                .arg(self.record_ttl_ms)
                .ignore();
        }
        pipe.cmd("GET")
            .arg(keys::host(&self.scripts.prefix, &self.host));
        let now_ms = mcpgw_protocol::cluster::now_ms();
        if let Some(advertise) = &self.advertise {
            let me = Member {
                advertise: advertise.clone(),
                beat_ms: now_ms,
                sessions: self.records(|r| r.len()) as u64,
                slots,
                workers: live.iter().map(|(w, _)| self.owner(*w)).collect(),
            };
            let members = keys::members(&self.scripts.prefix);
            if let Ok(json) = serde_json::to_string(&me) {
                pipe.cmd("HSET")
                    .arg(&members)
                    .arg(&self.host)
                    .arg(json)
                    .ignore();
            }
            pipe.cmd("HGETALL").arg(&members);
        }
        let mut conn = self.conn.clone();
        type Members = std::collections::HashMap<String, String>;
        let answer: Result<(Option<u64>, Option<Members>), RedisError> = if self.advertise.is_some()
        {
            pipe.query_async(&mut conn)
                .await
                .map(|(m, all): (Option<u64>, Members)| (m, Some(all)))
        } else {
            pipe.query_async(&mut conn)
                .await
                .map(|(m,): (Option<u64>,)| (m, None))
        };
        match answer {
            Ok((marker, members)) => {
                self.came_up();
                if let Some(members) = members {
                    self.note_members(&members, now_ms);
                }
                if marker != Some(self.boot) {
                    let ids = self.records(|r| r.ids());
                    if marker.is_some() || !ids.is_empty() {
                        warn!(
                            sessions = ids.len(),
                            "Redis does not hold this gateway's records (restarted empty?); writing them again"
                        );
                        self.metrics.store_resyncs.inc();
                    }
                    self.mark_dirty(ids);
                    let set: Result<(), RedisError> = redis::cmd("SET")
                        .arg(keys::host(&self.scripts.prefix, &self.host))
                        .arg(self.boot)
                        .query_async(&mut conn)
                        .await;
                    if let Err(e) = set {
                        self.went_down("heartbeat", &e);
                        return false;
                    }
                }
                true
            }
            Err(e) => {
                self.pending(|p| p.touched.extend(touched));
                self.went_down("heartbeat", &e);
                false
            }
        }
    }
}

impl Shared {
    /// Keep the members Redis listed (`HGETALL` of [`keys::members`]) for
    /// `/admin/cluster`, and set their metrics.
    fn note_members(&self, members: &std::collections::HashMap<String, String>, now_ms: u64) {
        let mut cluster = takeover::ClusterView::default();
        let mut views: Vec<MemberView> = members
            .iter()
            .filter_map(|(host, json)| {
                let m: Member = serde_json::from_str(json)
                    .inspect_err(|e| debug!(host, error = %e, "unreadable cluster member entry"))
                    .ok()?;
                let age = now_ms.saturating_sub(m.beat_ms);
                if age <= self.heartbeat_ttl_ms || *host == self.host {
                    cluster.live.push(host.clone());
                    if *host != self.host {
                        cluster.peers.push((host.clone(), m.clone()));
                    }
                } else {
                    cluster.dead.push(takeover::DeadMember {
                        host: host.clone(),
                        entry: json.clone(),
                        dead_for_ms: age - self.heartbeat_ttl_ms,
                    });
                }
                Some(MemberView {
                    host: host.clone(),
                    advertise: m.advertise,
                    heartbeat_age_ms: age,
                    sessions: m.sessions,
                    live: age <= self.heartbeat_ttl_ms,
                })
            })
            .collect();
        views.sort_by(|a, b| a.host.cmp(&b.host));
        self.metrics.member_sessions.reset();
        self.metrics.member_age.reset();
        for v in &views {
            self.metrics
                .member_sessions
                .with_label_values(&[&v.host])
                .set(i64::try_from(v.sessions).unwrap_or(i64::MAX));
            self.metrics
                .member_age
                .with_label_values(&[&v.host])
                .set(v.heartbeat_age_ms as f64 / 1000.0);
        }
        self.metrics
            .members_live
            .set(views.iter().filter(|v| v.live).count() as i64);
        match self.members.lock() {
            Ok(mut m) => *m = views,
            Err(poisoned) => *poisoned.into_inner() = views,
        }
        match self.view.lock() {
            Ok(mut v) => *v = cluster,
            Err(poisoned) => *poisoned.into_inner() = cluster,
        }
    }
}

/// The background writer: wakes on changes and every heartbeat period;
/// after a failure it waits (doubling up to [`MAX_BACKOFF`]) before trying
/// again, so an absent Redis costs a few attempts a second at most.
async fn sync(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.heartbeat_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut backoff = Duration::ZERO;
    loop {
        // A heartbeat was published: time for a takeover pass too.
        let mut beat = true;
        if backoff.is_zero() {
            tokio::select! {
                _ = tick.tick() => {
                    if !shared.beat().await {
                        backoff = Duration::from_millis(100);
                        continue;
                    }
                }
                _ = shared.wake.notified() => beat = false,
            }
        } else {
            tokio::time::sleep(backoff).await;
            if !shared.beat().await {
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        }
        backoff = if shared.flush().await {
            if beat {
                shared.take_over().await;
            }
            Duration::ZERO
        } else {
            (backoff * 2).clamp(Duration::from_millis(100), MAX_BACKOFF)
        };
    }
}

impl SessionStore for RedisStore {
    fn apply(&self, from: WorkerId, write: StoreWrite) -> Option<(SessionId, bool)> {
        let applied = self.shared.records(|r| r.apply(from, write));
        if let Some((id, _)) = applied {
            self.shared.mark_dirty([id]);
        }
        applied
    }

    fn open(
        &self,
        from: WorkerId,
        record: Box<SessionRecord>,
        caps: SessionCaps,
    ) -> Result<Option<SessionId>, SessionCap> {
        let opened = self.shared.records(|r| r.open(from, record, caps));
        if let Ok(Some(id)) = opened {
            self.shared.mark_dirty([id]);
        }
        opened
    }

    fn fetch(&self, session: SessionId, asker: WorkerId) -> BoxFuture<'_, Fetched> {
        Box::pin(async move {
            // Ours (this host's workers): memory answers, Redis or not.
            if let Some(record) = self.shared.records(|r| {
                r.get(&session)
                    .map(|rec| (rec.owner == asker).then(|| rec.clone()))
            }) {
                return record.map_or(Fetched::Withheld, |r| Fetched::Record(Box::new(r)));
            }
            match tokio::time::timeout(RESPONSE_TIMEOUT, self.shared.fetch_remote(session, asker))
                .await
            {
                Ok(Ok(record)) => Fetched::Record(Box::new(record)),
                Ok(Err(Miss::Absent)) => Fetched::Absent,
                Ok(Err(Miss::Elsewhere { host, advertise })) => {
                    Fetched::Elsewhere { host, advertise }
                }
                Ok(Err(Miss::Withheld)) | Err(_) => Fetched::Withheld,
            }
        })
    }

    fn reassign(&self, from: WorkerId, to: WorkerId) -> usize {
        let moved = self.shared.records(|r| r.reassign(from, to));
        // The REASSIGN script moves what Redis holds; a record not written
        // yet is still dirty and goes out under its new owner anyway.
        self.shared
            .pending(|p| p.reassigns.push(Reassign { from, to }));
        self.shared.wake.notify_one();
        moved.len()
    }

    fn move_each(
        &self,
        from: WorkerId,
        target: &dyn Fn(&SessionId) -> Option<WorkerId>,
    ) -> Vec<(SessionId, WorkerId)> {
        let moved = self.shared.records(|r| r.move_each(from, target));
        self.shared.mark_dirty(moved.iter().map(|(id, _)| *id));
        moved
    }

    fn owners(&self) -> Vec<(SessionId, WorkerId)> {
        self.shared.records(|r| r.owners())
    }

    fn touch(&self, sessions: &[String]) {
        self.shared.records(|r| r.touch(sessions));
        let ids = sessions
            .iter()
            .filter_map(|s| SessionId::parse(s.as_bytes()).ok());
        self.shared.pending(|p| p.touched.extend(ids));
    }

    fn sweep(&self, idle: Duration) -> Vec<SessionId> {
        let swept = self.shared.records(|r| r.sweep(idle));
        self.shared.mark_dirty(swept.iter().copied());
        swept
    }

    fn len(&self) -> usize {
        self.shared.records(|r| r.len())
    }

    fn heartbeat(&self, live: &[(WorkerId, u32)], slots: u16) {
        self.shared.pending(|p| {
            p.live.clear();
            p.live.extend_from_slice(live);
            p.slots = slots;
        });
    }

    fn members(&self) -> Option<Vec<MemberView>> {
        self.shared.advertise.as_ref()?;
        Some(match self.shared.members.lock() {
            Ok(m) => m.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        })
    }

    fn close(&self, handover: bool) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let shared = &self.shared;
            let cluster = shared.advertise.is_some();
            if cluster && handover {
                // Generous: every session is one compare-and-swap.
                let done = tokio::time::timeout(RESPONSE_TIMEOUT * 10, async {
                    shared.flush().await;
                    let live = shared.pending(|p| std::mem::take(&mut p.live));
                    let mut conn = shared.conn.clone();
                    let left = shared.hand_over(&mut conn).await?;
                    shared.leave(&mut conn, &live, left).await
                })
                .await;
                match done {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        warn!(error = %e, "handover on stop failed; the other hosts claim the sessions once this host's heartbeats expire")
                    }
                    Err(_) => warn!(
                        "handover on stop took too long; the other hosts claim the rest once this host's heartbeats expire"
                    ),
                }
                return;
            }
            // Write what is pending. Outside a cluster, drop our workers'
            // heartbeats too: the next run may take their sessions at once.
            // In a cluster they run out by themselves: until then the other
            // hosts leave this host's sessions to its next run (a restart
            // within the TTL keeps them).
            let done = tokio::time::timeout(RESPONSE_TIMEOUT * 2, async {
                shared.flush().await;
                let live = shared.pending(|p| std::mem::take(&mut p.live));
                let mut pipe = redis::pipe();
                if !cluster {
                    for (w, _) in &live {
                        pipe.cmd("DEL")
                            .arg(keys::heartbeat(&shared.scripts.prefix, &shared.owner(*w)))
                            .ignore();
                    }
                }
                let mut conn = shared.conn.clone();
                pipe.query_async::<()>(&mut conn).await
            })
            .await;
            match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(error = %e, "could not clear heartbeats in Redis at exit"),
                Err(_) => warn!("Redis did not answer at exit; heartbeats expire by themselves"),
            }
        })
    }
}

#[cfg(test)]
mod tests;
