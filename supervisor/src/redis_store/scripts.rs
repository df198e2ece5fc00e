//! The Lua scripts through which ownership of a session record changes in
//! Redis, each a compare-and-swap (the rules are in the parent module's
//! doc), and the calls that run them and read a record back, against the
//! key layout of [`mcpgw_protocol::store::keys`]. The store and its tests
//! share them; when to call them is the store's business.

use mcpgw_protocol::session_id::SessionId;
use mcpgw_protocol::store::{SessionRecord, keys};
use redis::{RedisError, Script};

use super::RedisConn;

const PUT: &str = r"
local cur = redis.call('HGET', KEYS[1], 'owner')
if cur and cur ~= ARGV[1] then
  if string.sub(cur, 1, string.len(ARGV[4])) ~= ARGV[4] then return 0 end
  redis.call('SREM', ARGV[5] .. cur, ARGV[6])
end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'record', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('SADD', ARGV[5] .. ARGV[1], ARGV[6])
redis.call('PEXPIRE', ARGV[5] .. ARGV[1], ARGV[3])
return 1
";

const REMOVE: &str = r"
local cur = redis.call('HGET', KEYS[1], 'owner')
if not cur then return 1 end
if string.sub(cur, 1, string.len(ARGV[1])) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', ARGV[2] .. cur, ARGV[3])
return 1
";

const CLAIM: &str = r"
local cur = redis.call('HGET', KEYS[1], 'owner')
if cur ~= ARGV[1] then return {0, ''} end
if ARGV[3] ~= '' and redis.call('EXISTS', ARGV[3]) == 1 then
  local member = false
  if ARGV[7] ~= '' then member = redis.call('HGET', ARGV[7], ARGV[8]) end
  return {1, member or ''}
end
redis.call('HSET', KEYS[1], 'owner', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('SREM', ARGV[4] .. cur, ARGV[5])
redis.call('SADD', ARGV[4] .. ARGV[2], ARGV[5])
redis.call('PEXPIRE', ARGV[4] .. ARGV[2], ARGV[6])
return {2, redis.call('HGET', KEYS[1], 'record') or ''}
";

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Claim {
    /// The record (JSON), now the asker's.
    Claimed(String),
    /// The expected owner still has a heartbeat; with its host's entry in
    /// the cluster's members (JSON), if asked for and present.
    Alive(Option<String>),
    /// The record is gone or has another owner now.
    Changed,
}

const REASSIGN: &str = r"
local moved = 0
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = ARGV[3] .. id
  if redis.call('HGET', key, 'owner') == ARGV[1] then
    redis.call('HSET', key, 'owner', ARGV[2])
    redis.call('SADD', ARGV[4] .. ARGV[2], id)
    moved = moved + 1
  end
end
redis.call('DEL', KEYS[1])
if moved > 0 then redis.call('PEXPIRE', ARGV[4] .. ARGV[2], ARGV[5]) end
return moved
";

/// Move a batch of one owner's sessions, each to the worker given with it
/// (ARGV from 7: id, new owner, id, new owner, ...): compare-and-swap per
/// session (owner == ARGV[1]), only while ARGV[1] has no heartbeat (key
/// ARGV[2], unless empty), and only to a new owner whose heartbeat exists
/// (a session never moves to a worker that is gone). Ids the owner no longer
/// holds leave its set. Returns 'alive' first if the owner has a heartbeat,
/// else 'ok' followed by id, record pairs of the sessions moved.
const MOVE_BATCH: &str = r"
if ARGV[2] ~= '' and redis.call('EXISTS', ARGV[2]) == 1 then return {'alive'} end
local out = {'ok'}
local live = {}
for i = 7, #ARGV, 2 do
  local id, to = ARGV[i], ARGV[i + 1]
  local key = ARGV[3] .. id
  if redis.call('HGET', key, 'owner') ~= ARGV[1] then
    redis.call('SREM', ARGV[4] .. ARGV[1], id)
  else
    if live[to] == nil then live[to] = redis.call('EXISTS', ARGV[5] .. to) == 1 end
    if live[to] then
      redis.call('HSET', key, 'owner', to)
      redis.call('PEXPIRE', key, ARGV[6])
      redis.call('SREM', ARGV[4] .. ARGV[1], id)
      redis.call('SADD', ARGV[4] .. to, id)
      redis.call('PEXPIRE', ARGV[4] .. to, ARGV[6])
      out[#out + 1] = id
      out[#out + 1] = redis.call('HGET', key, 'record') or ''
    end
  end
end
return out
";

/// Remove a member from the cluster's members hash if its entry is still
/// the one read (it did not come back meanwhile).
const FORGET_MEMBER: &str = r"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
return 0
";

/// What a batch move found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Moved {
    /// The owner still has a heartbeat: nothing moved.
    OwnerAlive,
    /// The sessions moved (id, record JSON); the rest had another owner
    /// or a target without a heartbeat.
    Done(Vec<(String, String)>),
}

/// The Lua scripts and the key names, shared by the store and its tests.
pub(crate) struct Scripts {
    pub(crate) prefix: String,
    put: Script,
    remove: Script,
    claim: Script,
    reassign: Script,
    move_batch: Script,
    forget_member: Script,
}

impl Scripts {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            put: Script::new(PUT),
            remove: Script::new(REMOVE),
            claim: Script::new(CLAIM),
            reassign: Script::new(REASSIGN),
            move_batch: Script::new(MOVE_BATCH),
            forget_member: Script::new(FORGET_MEMBER),
        }
    }

    /// Write `record` as owned by `owner`, unless another host owns it.
    pub(crate) async fn put(
        &self,
        conn: &mut RedisConn,
        host: &str,
        owner: &str,
        record: &SessionRecord,
        id: &SessionId,
        ttl_ms: u64,
    ) -> Result<bool, RedisError> {
        let json = serde_json::to_string(record).map_err(|e| {
            RedisError::from((
                redis::ErrorKind::Client,
                "encoding a session record",
                e.to_string(),
            ))
        })?;
        let done: i64 = self
            .put
            .key(keys::session(&self.prefix, id))
            .arg(owner)
            .arg(json)
            .arg(ttl_ms)
            .arg(format!("{host}/"))
            .arg(keys::owner_sessions(&self.prefix, ""))
            .arg(id.as_str())
            .invoke_async(conn)
            .await?;
        Ok(done == 1)
    }

    /// Delete the record of `id`, unless another host owns it.
    pub(crate) async fn remove(
        &self,
        conn: &mut RedisConn,
        host: &str,
        id: &SessionId,
    ) -> Result<bool, RedisError> {
        let done: i64 = self
            .remove
            .key(keys::session(&self.prefix, id))
            .arg(format!("{host}/"))
            .arg(keys::owner_sessions(&self.prefix, ""))
            .arg(id.as_str())
            .invoke_async(conn)
            .await?;
        Ok(done == 1)
    }

    /// Compare-and-swap the owner of `id` from `expected` to `new`; with
    /// `unless_heartbeat`, only while `expected` has no heartbeat, and then
    /// an owner that is alive comes back with its host's member entry
    /// (`owner_host`, when given).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn claim(
        &self,
        conn: &mut RedisConn,
        id: &SessionId,
        expected: &str,
        new: &str,
        unless_heartbeat: bool,
        owner_host: Option<&str>,
        ttl_ms: u64,
    ) -> Result<Claim, RedisError> {
        let hb = if unless_heartbeat {
            keys::heartbeat(&self.prefix, expected)
        } else {
            String::new()
        };
        let members = owner_host.map_or(String::new(), |_| keys::members(&self.prefix));
        let (kind, value): (i64, String) = self
            .claim
            .key(keys::session(&self.prefix, id))
            .arg(expected)
            .arg(new)
            .arg(hb)
            .arg(keys::owner_sessions(&self.prefix, ""))
            .arg(id.as_str())
            .arg(ttl_ms)
            .arg(members)
            .arg(owner_host.unwrap_or(""))
            .invoke_async(conn)
            .await?;
        Ok(match kind {
            2 => Claim::Claimed(value),
            1 => Claim::Alive((!value.is_empty()).then_some(value)),
            _ => Claim::Changed,
        })
    }

    /// Compare-and-swap every session of `from` to `to`; returns how many.
    pub(crate) async fn reassign(
        &self,
        conn: &mut RedisConn,
        from: &str,
        to: &str,
        ttl_ms: u64,
    ) -> Result<u64, RedisError> {
        self.reassign
            .key(keys::owner_sessions(&self.prefix, from))
            .arg(from)
            .arg(to)
            .arg(format!("{}s:", self.prefix))
            .arg(keys::owner_sessions(&self.prefix, ""))
            .arg(ttl_ms)
            .invoke_async(conn)
            .await
    }

    /// Compare-and-swap each of `moves` (session, new owner) away from
    /// `expected`; with `unless_heartbeat`, only while `expected` has no
    /// heartbeat. See [`MOVE_BATCH`].
    pub(crate) async fn move_batch(
        &self,
        conn: &mut RedisConn,
        expected: &str,
        unless_heartbeat: bool,
        moves: &[(SessionId, String)],
        ttl_ms: u64,
    ) -> Result<Moved, RedisError> {
        let hb = if unless_heartbeat {
            keys::heartbeat(&self.prefix, expected)
        } else {
            String::new()
        };
        let mut call = self.move_batch.prepare_invoke();
        call.arg(expected)
            .arg(hb)
            .arg(format!("{}s:", self.prefix))
            .arg(keys::owner_sessions(&self.prefix, ""))
            .arg(keys::heartbeat(&self.prefix, ""))
            .arg(ttl_ms);
        for (id, to) in moves {
            call.arg(id.as_str()).arg(to);
        }
        let answer: Vec<String> = call.invoke_async(conn).await?;
        let mut it = answer.into_iter();
        match it.next().as_deref() {
            Some("ok") => {}
            _ => return Ok(Moved::OwnerAlive),
        }
        let mut moved = Vec::new();
        while let (Some(id), Some(record)) = (it.next(), it.next()) {
            moved.push((id, record));
        }
        Ok(Moved::Done(moved))
    }

    /// Remove `host` from the members hash if its entry is still `entry`.
    pub(crate) async fn forget_member(
        &self,
        conn: &mut RedisConn,
        host: &str,
        entry: &str,
    ) -> Result<bool, RedisError> {
        let done: i64 = self
            .forget_member
            .key(keys::members(&self.prefix))
            .arg(host)
            .arg(entry)
            .invoke_async(conn)
            .await?;
        Ok(done == 1)
    }

    /// The owner ids of `host` that hold a set of sessions in Redis
    /// (`SCAN` for `w:<host>/*`: only while a host is being taken over).
    pub(crate) async fn owners_of_host(
        &self,
        conn: &mut RedisConn,
        host: &str,
    ) -> Result<Vec<String>, RedisError> {
        let sets = keys::owner_sessions(&self.prefix, "");
        let pattern = format!("{}{host}/*", glob_escape(&sets));
        let mut cursor: u64 = 0;
        let mut owners = Vec::new();
        loop {
            let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(conn)
                .await?;
            owners.extend(found.into_iter().filter_map(|k| {
                k.strip_prefix(sets.as_str())
                    .filter(|o| {
                        mcpgw_protocol::store::parse_owner_id(o).is_some_and(|(h, _)| h == host)
                    })
                    .map(str::to_owned)
            }));
            if next == 0 {
                break;
            }
            cursor = next;
        }
        owners.sort();
        owners.dedup();
        Ok(owners)
    }

    /// The sessions `owner`'s set lists.
    pub(crate) async fn sessions_of(
        &self,
        conn: &mut RedisConn,
        owner: &str,
    ) -> Result<Vec<String>, RedisError> {
        redis::cmd("SMEMBERS")
            .arg(keys::owner_sessions(&self.prefix, owner))
            .query_async(conn)
            .await
    }

    /// The owner and record of `id`, if Redis has it.
    pub(crate) async fn get(
        &self,
        conn: &mut RedisConn,
        id: &SessionId,
    ) -> Result<Option<(String, String)>, RedisError> {
        let (owner, record): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(keys::session(&self.prefix, id))
            .arg("owner")
            .arg("record")
            .query_async(conn)
            .await?;
        Ok(owner.zip(record))
    }
}

/// `text` as a literal in a Redis glob pattern.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\' | '^') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
