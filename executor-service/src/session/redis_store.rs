//! [`SessionStore`] on Redis. Every conditional write is one Lua script (one round
//! trip), not WATCH/MULTI: on a shared multiplexed connection other tasks' commands
//! would interleave with a WATCH.

use super::governance::{Reservation, SpendOutcome, SpendRequest, TaskSpend, TenantSpend};
use super::listing::{Cursor, IndexEntry, ListPage, ListQuery, ListedTask};
use super::redis_index::{
    FilterArgs, INDEX_LUA, INDEX_PUT, LIST, PRUNE_PER_WRITE, decode_entry, direct_update,
    index_prefix,
};
use super::{
    Checkpoint, CheckpointOutcome, Claimed, CreateOutcome, Lease, SessionStore, StoredEvent,
    TaskKeys,
};
use crate::error::{Error, Result};
use crate::redis_connection::{RedisConn, RedisTarget};
use prost::Message;
use redis::aio::ConnectionManager;
use redis::{Script, Value};
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use taskrouter_proto::SESSION_SCHEMA_VERSION;
use taskrouter_proto::v1::{IterationRecord, ProgressEvent, SessionState, Task, TaskStatus};

/// Events kept per task stream (approximate trim).
const EVENTS_MAXLEN: u64 = 10_000;

/// Indexes the task `id` at `version` when `KEYS[ix]` (the index entry hash) is given,
/// i.e. on standalone Redis, where one script may touch the task's keys and the index's
/// together. On a cluster the store makes the same update with a second call
/// (`INDEX_PUT`), since a script may touch one slot only there.
///
/// `index_direct` is the short way for a writer that named the entry it replaces and the
/// sets that change (`redis_index::direct_update`): when that entry is what is stored,
/// only those sets are touched and nothing is decoded. Either way the writer's own JSON
/// is stored as it came whenever the script would not change it, so its next write can
/// name it.
const INDEX_IN_SCRIPT: &str = r#"
local function index_here(ix, json, id, version, ttl)
  if KEYS[ix] == nil or json == '' then return end
  local pfx = string.sub(KEYS[ix], 1, -6)
  local e = cjson.decode(json)
  local raw = nil
  if ttl <= 0 and e.t ~= nil and e.v == version and e.x == 0 then raw = json end
  e.v = version
  e.x = 0
  if ttl > 0 then
    local now = ix_now()
    e.x = now + ttl
    ix_put(pfx, id, e)
    ix_prune(pfx, now, PRUNE_PER_WRITE)
  else
    ix_put(pfx, id, e, raw)
  end
end
local function index_direct(ix, id, json, before, score, added, removed)
  if KEYS[ix] == nil or before == '' then return false end
  local pfx = string.sub(KEYS[ix], 1, -6)
  if redis.call('HGET', pfx .. 'entry', id) ~= before then return false end
  for k in string.gmatch(removed, '[^\n]+') do redis.call('ZREM', pfx .. k, id) end
  for k in string.gmatch(added, '[^\n]+') do redis.call('ZADD', pfx .. k, score, id) end
  redis.call('HSET', pfx .. 'entry', id, json)
  return true
end
"#;

/// A state script with the index helpers in front of `body`.
fn with_index(body: &str) -> Script {
    let helpers = INDEX_IN_SCRIPT.replace("PRUNE_PER_WRITE", &PRUNE_PER_WRITE.to_string());
    Script::new(&[INDEX_LUA, &helpers, body].concat())
}

/// KEYS: state, events, [index entry]. ARGV: schema, status, data, event, events_maxlen,
/// task, index entry JSON, task id.
/// Returns `{1}` when created, `{0, data, version, task}` when it already existed.
static CREATE: LazyLock<Script> = LazyLock::new(|| {
    with_index(
        r#"
local existing = redis.call('HMGET', KEYS[1], 'data', 'version', 'task')
if existing[1] then
  return {0, existing[1], existing[2] or '0', existing[3] or ''}
end
redis.call('HSET', KEYS[1], 'schema', ARGV[1], 'version', 1, 'fence', 0, 'status', ARGV[2], 'evseq', 1, 'data', ARGV[3], 'task', ARGV[6])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'seq', 1, 'ev', ARGV[4])
index_here(3, ARGV[7], ARGV[8], 1, 0)
return {1}
"#,
    )
});

/// KEYS: state, log, events, lease, fence, cancel, spend, [index entry].
/// ARGV: expected_version, fencing_token, owner, data, status, log_entry, archive_ttl_ms,
///       schema, events_maxlen, unreserved spend, its largest call, index entry JSON,
///       task id, the replaced entry's JSON ('' when unknown), score, sets to add, sets
///       to remove (`redis_index::direct_update`), event...
/// Returns `{version, cancel}` on success; `{-1, current}` version mismatch;
/// `{-2, current}` lease not held; `{-3, current}` stale fencing token. Archiving also
/// releases the lease.
static CHECKPOINT: LazyLock<Script> = LazyLock::new(|| {
    with_index(
        r#"
local vf = redis.call('HMGET', KEYS[1], 'version', 'fence', 'evseq')
local cur = tonumber(vf[1] or '0')
if redis.call('GET', KEYS[4]) ~= ARGV[3] then
  return {-2, cur}
end
local fence = tonumber(vf[2] or '0')
if tonumber(ARGV[2]) < fence then
  return {-3, cur}
end
if cur ~= tonumber(ARGV[1]) then
  return {-1, cur}
end
local ver = cur + 1
-- Event numbers continue from the hash's `evseq`, advanced once for all of them.
local seq = tonumber(vf[3] or '0')
redis.call('HSET', KEYS[1], 'schema', ARGV[8], 'version', ver, 'fence', ARGV[2], 'status', ARGV[5], 'data', ARGV[4], 'evseq', seq + #ARGV - 17)
if ARGV[6] ~= '' then
  redis.call('RPUSH', KEYS[2], ARGV[6])
end
for i = 18, #ARGV do
  seq = seq + 1
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[9], '*', 'seq', seq, 'ev', ARGV[i])
end
local spend = tonumber(ARGV[10])
if spend > 0 then
  redis.call('HINCRBY', KEYS[7], 'spent', spend)
  if tonumber(ARGV[11]) > tonumber(redis.call('HGET', KEYS[7], 'maxcall') or '0') then
    redis.call('HSET', KEYS[7], 'maxcall', ARGV[11])
  end
end
local ttl = tonumber(ARGV[7])
if ttl > 0 then
  for i = 1, 7 do
    if i ~= 4 then redis.call('PEXPIRE', KEYS[i], ttl) end
  end
  redis.call('DEL', KEYS[4])
end
if not index_direct(8, ARGV[13], ARGV[12], ARGV[14], ARGV[15], ARGV[16], ARGV[17]) then
  index_here(8, ARGV[12], ARGV[13], ver, ttl)
end
return {ver, redis.call('EXISTS', KEYS[6])}
"#,
    )
});

/// KEYS: lease, fence, state, spend. ARGV: owner, ttl_ms.
/// Takes the lease and reads the state under it: `{0}` if another owner holds it, else
/// `{fencing token, schema, version, data, task, held}` (`held`: open reservations).
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {0}
end
local fence = redis.call('INCR', KEYS[2])
local f = redis.call('HMGET', KEYS[3], 'schema', 'version', 'data', 'task')
local held = tonumber(redis.call('HGET', KEYS[4], 'held') or '0')
return {fence, f[1], f[2], f[3], f[4], held}
"#,
    )
});

/// KEYS: lease, fence. ARGV: owner, ttl_ms. Returns the fencing token, or 0 if held by another.
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return 0
"#,
    )
});

/// KEYS: lease. ARGV: owner, ttl_ms. Returns 1 if renewed, 0 if not ours.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#,
    )
});

/// KEYS: lease. ARGV: owner. Deletes the lease only if it is still ours.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#,
    )
});

/// SessionState store on Redis, standalone or Cluster (each script touches the keys of
/// one task, which share the hash tag `{task_id}`).
#[derive(Clone)]
pub struct RedisStore {
    conn: RedisConn,
    prefix: String,
    /// `<prefix>:{index}:`.
    index: String,
    /// The page-token key, read once.
    token_key: Arc<tokio::sync::OnceCell<Vec<u8>>>,
    /// Where Watch's blocking reads open their connections; `None` waits by polling.
    target: Option<RedisTarget>,
    /// Idle dedicated connections for blocking reads (one per concurrent watcher at most).
    blocking: Arc<std::sync::Mutex<Vec<RedisConn>>>,
}

impl RedisStore {
    /// A store using `conn` with keys under `prefix`.
    pub fn new(conn: impl Into<RedisConn>, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        Self {
            conn: conn.into(),
            index: index_prefix(&prefix),
            prefix,
            token_key: Arc::default(),
            target: None,
            blocking: Default::default(),
        }
    }

    /// Waits for events with blocking reads on dedicated connections opened from `target`.
    pub fn with_blocking_reads(mut self, target: RedisTarget) -> Self {
        self.target = Some(target);
        self
    }

    async fn blocking_conn(&self, target: &RedisTarget) -> Result<RedisConn> {
        let idle = self
            .blocking
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop();
        match idle {
            Some(c) => Ok(c),
            None => Ok(target.dedicated().await?),
        }
    }

    /// The hash of index entries (the key every index script declares).
    fn index_entry_key(&self) -> String {
        format!("{}entry", self.index)
    }

    /// Whether the state scripts update the index themselves (standalone Redis: one
    /// round trip per write) instead of a second call (a cluster: the index has a slot of
    /// its own and a script may touch one slot only).
    fn index_in_scripts(&self) -> bool {
        !self.conn.is_cluster()
    }

    /// Writes `state`'s index entry at `version` (archived for `ttl_ms` when > 0).
    /// Idempotent, and never replaces an entry of a newer version, so a late or
    /// repeated call is harmless.
    async fn index_put(&self, state: &SessionState, version: u64, ttl_ms: u64) -> Result<()> {
        let key = self.index_entry_key();
        let mut conn = self.conn.clone();
        let _: i64 = INDEX_PUT
            .key(&key)
            .arg(&state.task_id)
            .arg(IndexEntry::of(state).to_json())
            .arg(version)
            .arg(ttl_ms)
            .invoke_async(&mut conn)
            .await
            .map_err(map_err(&key))?;
        Ok(())
    }

    /// The second step of every state write: the index update, in the index's own hash
    /// slot (`{index}`), made before the write returns so `List` shows it at once. It is
    /// not one script with the state write because on Redis Cluster a script may touch one
    /// slot only. The state write has succeeded by now and is not undone: if this fails
    /// (Redis went away in between, or the process died) the index lags until the task's
    /// next write or `--rebuild-indexes` (docs/OPERATIONS.md).
    async fn index_after_write(&self, state: &SessionState, version: u64, ttl_ms: u64) {
        let mut last = None;
        for _ in 0..2 {
            match self.index_put(state, version, ttl_ms).await {
                Ok(()) => return,
                Err(e) => last = Some(e),
            }
        }
        if let Some(e) = last {
            tracing::warn!(
                task_id = %state.task_id,
                version,
                error = %e,
                "index update failed after the state write; List lags for this task until its next write or --rebuild-indexes"
            );
            crate::telemetry::index_write_failed();
        }
    }

    /// Re-indexes the tasks behind `state_keys` (`<prefix>:{id}:state`); returns how many
    /// still exist. Each task is read in its own slot, then indexed in the index slot.
    async fn reindex_keys(&self, state_keys: &[String]) -> Result<u64> {
        let mut conn = self.conn.clone();
        let mut indexed = 0;
        for key in state_keys {
            let Some(id) = key
                .strip_prefix(&format!("{}:{{", self.prefix))
                .and_then(|k| k.strip_suffix("}:state"))
            else {
                continue;
            };
            let state = match self.load(id).await {
                Ok(Some(s)) => s,
                Ok(None) => continue,
                Err(Error::CorruptState { key, .. }) => {
                    // Kept for inspection, out of the listing.
                    tracing::warn!(key = %key, "unreadable state left out of the indexes");
                    continue;
                }
                Err(e) => return Err(e),
            };
            let pttl: i64 = redis::cmd("PTTL")
                .arg(key)
                .query_async(&mut conn)
                .await
                .map_err(map_err(key))?;
            // -2: expired since the load; -1: no expiry (not archived).
            if pttl == -2 {
                continue;
            }
            self.index_put(&state, state.version, pttl.max(0) as u64)
                .await?;
            indexed += 1;
        }
        Ok(indexed)
    }

    /// The keys of `task_id`.
    pub fn keys(&self, task_id: &str) -> TaskKeys {
        TaskKeys::new(&self.prefix, task_id)
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A handle on the shared connection.
    pub(super) fn conn(&self) -> RedisConn {
        self.conn.clone()
    }

    /// Decodes the fields `schema`, `version`, `data` and `task` of the state hash at
    /// `key` as read by `HMGET`: `None` when the hash does not exist.
    fn decode_fields(
        key: &str,
        schema: Option<Vec<u8>>,
        version: Option<Vec<u8>>,
        data: Option<Vec<u8>>,
        task: Option<Vec<u8>>,
    ) -> Result<Option<SessionState>> {
        let schema = schema.map(|b| String::from_utf8_lossy(&b).into_owned());
        let version = match version {
            None => None,
            Some(raw) => Some(
                std::str::from_utf8(&raw)
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| Error::CorruptState {
                        key: key.to_string(),
                        reason: "the `version` field is not a number".into(),
                    })?,
            ),
        };
        let Some(data) = data else {
            return match (schema, version) {
                (None, None) => Ok(None),
                _ => Err(Error::CorruptState {
                    key: key.to_string(),
                    reason: "the hash has no `data` field".into(),
                }),
            };
        };
        let schema_ok = schema
            .as_deref()
            .and_then(|s| s.parse::<u32>().ok())
            .is_some_and(|s| s == SESSION_SCHEMA_VERSION);
        if !schema_ok {
            return Err(Error::CorruptState {
                key: key.to_string(),
                reason: format!(
                    "schema version {:?}, expected {SESSION_SCHEMA_VERSION}",
                    schema.unwrap_or_default()
                ),
            });
        }
        Self::decode_state(
            key,
            &data,
            task.as_deref().unwrap_or_default(),
            version.unwrap_or(0),
        )
        .map(Some)
    }

    /// Decodes a stored state the way loading does: `data` (protobuf `SessionState`) and
    /// `task` (protobuf `Task`, empty when absent) of the hash at `key`, with its schema
    /// check. Anything unreadable is `Error::CorruptState` naming `key`, never a panic.
    /// Public so fuzzers can reach the decode path without a Redis server.
    pub fn decode_state(key: &str, data: &[u8], task: &[u8], version: u64) -> Result<SessionState> {
        let mut state = SessionState::decode(data).map_err(|e| Error::CorruptState {
            key: key.to_string(),
            reason: format!("not a SessionState protobuf: {e}"),
        })?;
        if !task.is_empty() {
            state.task = Some(Task::decode(task).map_err(|e| Error::CorruptState {
                key: key.to_string(),
                reason: format!("the `task` field is not a Task protobuf: {e}"),
            })?);
        }
        if state.schema_version != SESSION_SCHEMA_VERSION {
            return Err(Error::CorruptState {
                key: key.to_string(),
                reason: format!(
                    "schema version {} inside the record, expected {SESSION_SCHEMA_VERSION}",
                    state.schema_version
                ),
            });
        }
        state.version = version;
        Ok(state)
    }
}

fn corrupt(key: &str, e: &redis::RedisError) -> Option<Error> {
    // A foreign value under our key (e.g. a plain string) shows up as WRONGTYPE.
    (e.code() == Some("WRONGTYPE")).then(|| Error::CorruptState {
        key: key.to_string(),
        reason: "the key holds a value of the wrong Redis type".to_string(),
    })
}

fn map_err(key: &str) -> impl Fn(redis::RedisError) -> Error + '_ {
    move |e| corrupt(key, &e).unwrap_or(Error::Redis(e))
}

fn as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn as_bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        _ => None,
    }
}

#[async_trait::async_trait]
impl SessionStore for RedisStore {
    async fn create(&self, state: &SessionState, event: &ProgressEvent) -> Result<CreateOutcome> {
        let keys = self.keys(&state.task_id);
        let task_bytes = state
            .task
            .as_ref()
            .map(|t| t.encode_to_vec())
            .unwrap_or_default();
        let body = SessionState {
            task: None,
            version: 1,
            ..state.clone()
        };
        let mut stored = state.clone();
        stored.version = 1;
        let indexed_here = self.index_in_scripts();
        let mut inv = CREATE.prepare_invoke();
        inv.key(&keys.state).key(&keys.events);
        if indexed_here {
            inv.key(self.index_entry_key());
        }
        inv.arg(SESSION_SCHEMA_VERSION)
            .arg(status_name(stored.status))
            .arg(body.encode_to_vec())
            .arg(event.encode_to_vec())
            .arg(EVENTS_MAXLEN)
            .arg(task_bytes)
            .arg(if indexed_here {
                IndexEntry::of(&stored).to_json()
            } else {
                String::new()
            })
            .arg(&stored.task_id);
        let mut conn = self.conn.clone();
        let reply: Vec<Value> = inv
            .invoke_async(&mut conn)
            .await
            .map_err(map_err(&keys.state))?;
        match reply.first().and_then(as_i64) {
            Some(1) => {
                if !indexed_here {
                    self.index_after_write(&stored, 1, 0).await;
                }
                Ok(CreateOutcome::Created(stored))
            }
            Some(0) => {
                let data = reply.get(1).and_then(as_bytes).unwrap_or_default();
                let version = reply.get(2).and_then(as_i64).unwrap_or(0).max(0) as u64;
                let task = reply.get(3).and_then(as_bytes).unwrap_or_default();
                Ok(CreateOutcome::Existing(Self::decode_state(
                    &keys.state,
                    data,
                    task,
                    version,
                )?))
            }
            _ => Err(Error::Internal(
                "unexpected reply from the create script".into(),
            )),
        }
    }

    async fn load(&self, task_id: &str) -> Result<Option<SessionState>> {
        let keys = self.keys(task_id);
        let mut conn = self.conn.clone();
        // Every field as raw bytes: a `schema` that is not text or a `version` that is
        // not a number is a corrupt record (DATA_LOSS), not a failed Redis call.
        type Fields = (
            Option<Vec<u8>>,
            Option<Vec<u8>>,
            Option<Vec<u8>>,
            Option<Vec<u8>>,
        );
        let (schema, version, data, task): Fields = redis::cmd("HMGET")
            .arg(&keys.state)
            .arg("schema")
            .arg("version")
            .arg("data")
            .arg("task")
            .query_async(&mut conn)
            .await
            .map_err(map_err(&keys.state))?;
        Self::decode_fields(&keys.state, schema, version, data, task)
    }

    async fn checkpoint(&self, cp: Checkpoint<'_>) -> Result<CheckpointOutcome> {
        let keys = self.keys(&cp.state.task_id);
        // The task was stored once at create; a checkpoint never rewrites it.
        let state = SessionState {
            task: None,
            version: cp.expected_version + 1,
            fencing_token: cp.lease.fencing_token,
            ..cp.state.clone()
        };
        let ttl_ms = cp
            .archive_ttl
            .map(|d| d.as_millis().max(1) as u64)
            .unwrap_or(0);
        let indexed_here = self.index_in_scripts();
        let mut inv = CHECKPOINT.prepare_invoke();
        inv.key(&keys.state)
            .key(&keys.log)
            .key(&keys.events)
            .key(&keys.lease)
            .key(&keys.fence)
            .key(&keys.cancel)
            .key(&keys.spend);
        if indexed_here {
            inv.key(self.index_entry_key());
        }
        inv.arg(cp.expected_version)
            .arg(cp.lease.fencing_token)
            .arg(&cp.lease.owner)
            .arg(state.encode_to_vec())
            .arg(status_name(state.status))
            .arg(cp.iteration.map(|r| r.encode_to_vec()).unwrap_or_default())
            .arg(ttl_ms)
            .arg(SESSION_SCHEMA_VERSION)
            .arg(EVENTS_MAXLEN)
            .arg(cp.unreserved_spend.total.max(0))
            .arg(cp.unreserved_spend.largest.max(0))
            .arg(match (indexed_here, cp.index) {
                (true, Some(change)) => change.after.to_json(),
                (true, None) => IndexEntry::of(cp.state).to_json(),
                (false, _) => String::new(),
            })
            .arg(&state.task_id);
        let direct = cp
            .index
            .filter(|_| indexed_here && ttl_ms == 0)
            .and_then(|c| direct_update(c.before, c.after))
            .unwrap_or_default();
        for a in &direct {
            inv.arg(a);
        }
        for ev in cp.events {
            inv.arg(ev.encode_to_vec());
        }
        let mut conn = self.conn.clone();
        let (code, second): (i64, i64) = inv
            .invoke_async(&mut conn)
            .await
            .map_err(map_err(&keys.state))?;
        let stale = |reason: String| Error::StaleWrite {
            task_id: state.task_id.clone(),
            reason,
        };
        match code {
            -1 => Err(stale(format!(
                "expected version {}, stored version is {second}",
                cp.expected_version
            ))),
            -2 => Err(stale("the lease is no longer held by this worker".into())),
            -3 => Err(stale(format!(
                "fencing token {} is older than the stored one",
                cp.lease.fencing_token
            ))),
            v if v > 0 => {
                if !indexed_here {
                    self.index_after_write(cp.state, v as u64, ttl_ms).await;
                }
                Ok(CheckpointOutcome {
                    version: v as u64,
                    cancel_requested: second == 1,
                })
            }
            _ => Err(Error::Internal(
                "unexpected reply from the checkpoint script".into(),
            )),
        }
    }

    async fn iterations(&self, task_id: &str, limit: usize) -> Result<Vec<IterationRecord>> {
        let keys = self.keys(task_id);
        let mut conn = self.conn.clone();
        let start = -(limit.max(1) as i64);
        let raw: Vec<Vec<u8>> = redis::cmd("LRANGE")
            .arg(&keys.log)
            .arg(start)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .map_err(map_err(&keys.log))?;
        raw.iter()
            .map(|b| {
                IterationRecord::decode(b.as_slice()).map_err(|e| Error::CorruptState {
                    key: keys.log.clone(),
                    reason: format!("not an IterationRecord protobuf: {e}"),
                })
            })
            .collect()
    }

    async fn iterations_page(
        &self,
        task_id: &str,
        offset: u64,
        limit: usize,
    ) -> Result<(Vec<IterationRecord>, u64)> {
        let keys = self.keys(task_id);
        let mut conn = self.conn.clone();
        let end = offset.saturating_add(limit.max(1) as u64 - 1);
        let (raw, total): (Vec<Vec<u8>>, u64) = redis::pipe()
            .atomic()
            .cmd("LRANGE")
            .arg(&keys.log)
            .arg(offset.min(i64::MAX as u64))
            .arg(end.min(i64::MAX as u64))
            .cmd("LLEN")
            .arg(&keys.log)
            .query_async(&mut conn)
            .await
            .map_err(map_err(&keys.log))?;
        let records = raw
            .iter()
            .map(|b| {
                IterationRecord::decode(b.as_slice()).map_err(|e| Error::CorruptState {
                    key: keys.log.clone(),
                    reason: format!("not an IterationRecord protobuf: {e}"),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((records, total))
    }

    async fn list(&self, query: &ListQuery) -> Result<ListPage> {
        let entry_key = self.index_entry_key();
        let (filter, page_size, cursor_score, cursor_id) = FilterArgs::script_args(query);
        let mut conn = self.conn.clone();
        let (counts, items, more): (Vec<Value>, Vec<Vec<u8>>, i64) = LIST
            .key(&entry_key)
            .arg(filter)
            .arg(page_size)
            .arg(cursor_score)
            .arg(cursor_id)
            .invoke_async(&mut conn)
            .await
            .map_err(map_err(&entry_key))?;
        let counts = counts
            .chunks(2)
            .filter_map(|pair| {
                let name = std::str::from_utf8(pair.first().and_then(as_bytes)?).ok()?;
                let status = TaskStatus::from_str_name(name)?;
                Some((status, as_i64(pair.get(1)?)?.max(0) as u64))
            })
            .collect();
        let listed: Vec<(String, IndexEntry)> = items
            .chunks(2)
            .filter_map(|pair| {
                let id = String::from_utf8(pair.first()?.clone()).ok()?;
                Some((id, decode_entry(pair.get(1)?).unwrap_or_default()))
            })
            .collect();
        // The states of the page, read concurrently over the multiplexed connection: one
        // command per task, since on a cluster each task's keys live in their own slot
        // (a pipeline must stay in one slot there).
        let states: Vec<(Option<Vec<u8>>, Option<u64>)> =
            futures::future::try_join_all(listed.iter().map(|(id, _)| {
                let mut conn = self.conn.clone();
                let key = self.keys(id).state;
                async move {
                    redis::cmd("HMGET")
                        .arg(&key)
                        .arg("data")
                        .arg("version")
                        .query_async::<(Option<Vec<u8>>, Option<u64>)>(&mut conn)
                        .await
                        .map_err(|e| map_err(&key)(e))
                }
            }))
            .await?;
        let mut tasks = Vec::with_capacity(listed.len());
        for ((id, entry), (data, version)) in listed.iter().zip(states) {
            // Gone between the index read and this one (expired): not listed.
            let Some(data) = data else { continue };
            let key = self.keys(id).state;
            let state = Self::decode_state(&key, &data, &[], version.unwrap_or(0))?;
            tasks.push(ListedTask {
                state,
                tenant: entry.t.clone().unwrap_or_default(),
            });
        }
        let next = (more == 1)
            .then(|| listed.last())
            .flatten()
            .map(|(id, e)| Cursor {
                updated_ms: e.u,
                task_id: id.clone(),
            });
        Ok(ListPage {
            tasks,
            next,
            counts,
        })
    }

    async fn rebuild_indexes(&self) -> Result<u64> {
        let mut conn = self.conn.clone();
        // Drop the index (not the token key), then index every task. A write racing
        // with this re-indexes its own task; an index write never replaces a newer entry.
        // On a cluster every master is scanned (the index keys all sit in one slot).
        let token_key = format!("{}token-key", self.index);
        let nodes = self.conn.key_nodes().await.map_err(Error::Redis)?;
        for node in &nodes {
            let mut cursor = 0u64;
            loop {
                let (next, keys) = self
                    .conn
                    .scan_step(node, cursor, &format!("{}*", self.index), None)
                    .await
                    .map_err(Error::Redis)?;
                let doomed: Vec<&String> = keys.iter().filter(|k| **k != token_key).collect();
                if !doomed.is_empty() {
                    let _: i64 = redis::cmd("UNLINK")
                        .arg(doomed)
                        .query_async(&mut conn)
                        .await
                        .map_err(Error::Redis)?;
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        let mut indexed = 0;
        for node in &nodes {
            let mut cursor = 0u64;
            loop {
                let (next, keys) = self
                    .conn
                    .scan_step(
                        node,
                        cursor,
                        &format!("{}:{{*}}:state", self.prefix),
                        Some("hash"),
                    )
                    .await
                    .map_err(Error::Redis)?;
                indexed += self.reindex_keys(&keys).await?;
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        // Every task is indexed by this version now, status × tenant sets included. Set
        // here too because the first write after the drop may have set it mid-drop.
        let ready = format!("{}{}", self.index, super::redis_index::ST_TENANT_READY);
        let _: () = redis::cmd("SET")
            .arg(&ready)
            .arg(1)
            .query_async(&mut conn)
            .await
            .map_err(map_err(&ready))?;
        Ok(indexed)
    }

    async fn page_token_key(&self) -> Result<Vec<u8>> {
        let key = self
            .token_key
            .get_or_try_init(|| async {
                let mut conn = self.conn.clone();
                let name = format!("{}token-key", self.index);
                let fresh: [u8; 32] = rand::random();
                // The first replica's key wins; every replica signs with it.
                let _: Option<String> = redis::cmd("SET")
                    .arg(&name)
                    .arg(fresh.as_slice())
                    .arg("NX")
                    .query_async(&mut conn)
                    .await
                    .map_err(Error::Redis)?;
                let stored: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(&name)
                    .query_async(&mut conn)
                    .await
                    .map_err(map_err(&name))?;
                stored
                    .filter(|k| k.len() >= 16)
                    .ok_or_else(|| Error::CorruptState {
                        key: name,
                        reason: "the page-token key is missing or too short".into(),
                    })
            })
            .await?;
        Ok(key.clone())
    }

    async fn events_after(
        &self,
        task_id: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StoredEvent>> {
        let keys = self.keys(task_id);
        let start = match cursor {
            Some(c) => format!("({c}"),
            None => "-".to_string(),
        };
        let mut conn = self.conn.clone();
        let reply: Value = redis::cmd("XRANGE")
            .arg(&keys.events)
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(limit.max(1))
            .query_async(&mut conn)
            .await
            .map_err(map_err(&keys.events))?;
        parse_events(&keys.events, reply)
    }

    async fn wait_events(
        &self,
        task_id: &str,
        cursor: Option<&str>,
        limit: usize,
        wait: Duration,
    ) -> Result<Vec<StoredEvent>> {
        let Some(target) = &self.target else {
            let got = self.events_after(task_id, cursor, limit).await?;
            if !got.is_empty() {
                return Ok(got);
            }
            tokio::time::sleep(wait.min(Duration::from_millis(100))).await;
            return self.events_after(task_id, cursor, limit).await;
        };
        let keys = self.keys(task_id);
        let mut conn = self.blocking_conn(target).await?;
        // Dropped on error or when the watcher leaves mid-wait: its state is unknown.
        let reply: Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(limit.max(1))
            .arg("BLOCK")
            .arg(wait.as_millis().max(1) as u64)
            .arg("STREAMS")
            .arg(&keys.events)
            .arg(cursor.unwrap_or("0-0"))
            .query_async(&mut conn)
            .await
            .map_err(map_err(&keys.events))?;
        self.blocking
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn);
        // [[key, entries]] (RESP2), {key: entries} (RESP3) or nil on timeout.
        let entries = match reply {
            Value::Array(mut streams) if !streams.is_empty() => match streams.swap_remove(0) {
                Value::Array(mut kv) if kv.len() == 2 => kv.swap_remove(1),
                _ => Value::Nil,
            },
            Value::Map(mut m) if !m.is_empty() => m.swap_remove(0).1,
            _ => Value::Nil,
        };
        parse_events(&keys.events, entries)
    }

    async fn claim(&self, task_id: &str, owner: &str, ttl: Duration) -> Result<Option<Claimed>> {
        let keys = self.keys(task_id);
        let mut conn = self.conn.clone();
        let reply: Vec<Value> = CLAIM
            .key(&keys.lease)
            .key(&keys.fence)
            .key(&keys.state)
            .key(&keys.spend)
            .arg(owner)
            .arg(ttl.as_millis().max(1) as u64)
            .invoke_async(&mut conn)
            .await
            .map_err(map_err(&keys.state))?;
        let fencing_token = match reply.first().and_then(as_i64) {
            Some(0) => return Ok(None),
            Some(t) if t > 0 => t as u64,
            _ => {
                return Err(Error::Internal(
                    "unexpected reply from the claim script".into(),
                ));
            }
        };
        let lease = Lease {
            task_id: task_id.to_string(),
            owner: owner.to_string(),
            fencing_token,
            ttl,
        };
        let field = |i: usize| reply.get(i).and_then(as_bytes).map(<[u8]>::to_vec);
        let open_reservations = reply.get(5).and_then(as_i64).unwrap_or(1) > 0;
        match Self::decode_fields(&keys.state, field(1), field(2), field(3), field(4)) {
            Ok(state) => Ok(Some(Claimed {
                lease,
                state,
                open_reservations,
            })),
            Err(e) => {
                let _ = self.release_lease(&lease).await;
                Err(e)
            }
        }
    }

    async fn acquire_lease(
        &self,
        task_id: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>> {
        let keys = self.keys(task_id);
        let mut conn = self.conn.clone();
        let token: i64 = ACQUIRE
            .key(&keys.lease)
            .key(&keys.fence)
            .arg(owner)
            .arg(ttl.as_millis().max(1) as u64)
            .invoke_async(&mut conn)
            .await
            .map_err(map_err(&keys.lease))?;
        Ok((token > 0).then(|| Lease {
            task_id: task_id.to_string(),
            owner: owner.to_string(),
            fencing_token: token as u64,
            ttl,
        }))
    }

    async fn renew_lease(&self, lease: &Lease) -> Result<bool> {
        let keys = self.keys(&lease.task_id);
        let mut conn = self.conn.clone();
        let ok: i64 = RENEW
            .key(&keys.lease)
            .arg(&lease.owner)
            .arg(lease.ttl.as_millis().max(1) as u64)
            .invoke_async(&mut conn)
            .await
            .map_err(map_err(&keys.lease))?;
        Ok(ok == 1)
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        let keys = self.keys(&lease.task_id);
        let mut conn = self.conn.clone();
        let _: i64 = RELEASE
            .key(&keys.lease)
            .arg(&lease.owner)
            .invoke_async(&mut conn)
            .await
            .map_err(map_err(&keys.lease))?;
        Ok(())
    }

    async fn request_cancel(&self, task_id: &str, ttl: Duration) -> Result<()> {
        let keys = self.keys(task_id);
        let mut conn = self.conn.clone();
        let _: () = redis::cmd("SET")
            .arg(&keys.cancel)
            .arg(1)
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async(&mut conn)
            .await
            .map_err(Error::Redis)?;
        Ok(())
    }

    async fn ping(&self) -> Result<()> {
        self.conn.check().await.map_err(Error::Redis)
    }

    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn reserve_spend(&self, req: &SpendRequest<'_>) -> Result<SpendOutcome> {
        self.reserve_spend_redis(req).await
    }

    async fn settle_spend(&self, r: &Reservation, actual: i64) -> Result<()> {
        self.settle_spend_redis(r, actual).await
    }

    async fn reconcile_spend(&self, task_id: &str, owner: &str) -> Result<usize> {
        self.reconcile_spend_redis(task_id, owner).await
    }

    async fn task_spend(&self, task_id: &str) -> Result<TaskSpend> {
        self.task_spend_redis(task_id).await
    }

    async fn tenant_spend(&self, tenant: &str, day: &str) -> Result<TenantSpend> {
        self.tenant_spend_redis(tenant, day).await
    }

    async fn set_approval_deadline(&self, task_id: &str, at_ms: i64) -> Result<()> {
        self.set_deadline_redis(task_id, at_ms).await
    }

    async fn clear_approval_deadline(&self, task_id: &str) -> Result<()> {
        self.clear_deadline_redis(task_id).await
    }

    async fn due_approvals(&self, now_ms: i64, limit: usize) -> Result<Vec<String>> {
        self.due_deadlines_redis(now_ms, limit).await
    }
}

/// Parses stream entries `[[id, [seq, n, ev, bytes]], ...]` of the events stream `key`.
fn parse_events(key: &str, reply: Value) -> Result<Vec<StoredEvent>> {
    let Value::Array(entries) = reply else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(parts) = entry else { continue };
        let (Some(id), Some(Value::Array(fields))) = (parts.first(), parts.get(1)) else {
            continue;
        };
        let cursor = match id {
            Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            Value::SimpleString(s) => s.clone(),
            _ => continue,
        };
        let mut seq = 0u64;
        let mut ev = None;
        for pair in fields.chunks(2) {
            match (pair.first().and_then(as_bytes), pair.get(1)) {
                (Some(b"seq"), Some(v)) => seq = as_i64(v).unwrap_or(0).max(0) as u64,
                (Some(b"ev"), Some(v)) => ev = as_bytes(v).map(<[u8]>::to_vec),
                _ => {}
            }
        }
        let Some(bytes) = ev else { continue };
        let mut event =
            ProgressEvent::decode(bytes.as_slice()).map_err(|e| Error::CorruptState {
                key: key.to_string(),
                reason: format!("not a ProgressEvent protobuf: {e}"),
            })?;
        event.sequence = seq;
        out.push(StoredEvent { cursor, event });
    }
    Ok(out)
}

/// The stored `status` field: the proto enum name, for operators reading Redis.
pub fn status_name(status: i32) -> &'static str {
    TaskStatus::try_from(status)
        .map(|s| s.as_str_name())
        .unwrap_or("TASK_STATUS_UNSPECIFIED")
}

/// Connects a [`ConnectionManager`] lazily, so the service starts (NOT_SERVING) while
/// Redis is down and reconnects by itself when it returns.
pub fn connect_lazy(url: &str) -> std::result::Result<ConnectionManager, redis::RedisError> {
    connect_lazy_client(redis::Client::open(url)?)
}

/// Like [`connect_lazy`], for an already-built client (e.g. one with TLS certificates).
pub fn connect_lazy_client(
    client: redis::Client,
) -> std::result::Result<ConnectionManager, redis::RedisError> {
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(5)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client, config)
}
