//! [`WorkQueue`] on Redis Streams and a consumer group, one stream per shard.
//!
//! Shard `i` of `N` owns three keys sharing one hash tag, so every script below touches
//! one slot: `<prefix>:{<tag>}:queue` (the stream), `<prefix>:{<tag>}:queued` (hash
//! task id -> entry id of the task's live entry, which makes queueing idempotent) and
//! `<prefix>:{<tag>}:deadletter`. Tags are chosen so that shard `i` falls in the `i`-th
//! of `N` equal slot ranges: with a cluster's default even slot split, shards spread over
//! every master.

use super::{Delivery, QueueDepth, WorkQueue};
use crate::error::{Error, Result};
use crate::redis_connection::{RedisConn, RedisTarget};
use redis::{Script, Value};
use std::sync::LazyLock;
use std::time::Duration;
use tokio::sync::Mutex;

/// Consumer group shared by every executor replica.
pub const GROUP: &str = "executors";
/// Entries kept in a dead-letter stream (approximate trim).
const DEAD_LETTERS_MAXLEN: u64 = 100_000;
/// Redis Cluster hash slots.
const SLOTS: usize = 16_384;

/// KEYS: stream, queued. ARGV: task_id, traceparent, state.
/// Returns the live entry's id: the existing one, or a new one.
static ENQUEUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local live = redis.call('HGET', KEYS[2], ARGV[1])
if live and #redis.call('XRANGE', KEYS[1], live, live) > 0 then
  return live
end
local id = redis.call('XADD', KEYS[1], '*', 'task_id', ARGV[1], 'traceparent', ARGV[2], 'state', ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], id)
return id
"#,
    )
});

/// KEYS: stream, queued. ARGV: group, entry_id, task_id. Acknowledges and deletes the
/// entry and forgets it as the task's live entry (if it still is).
static ACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if redis.call('HGET', KEYS[2], ARGV[3]) == ARGV[2] then
  redis.call('HDEL', KEYS[2], ARGV[3])
end
return 1
"#,
    )
});

/// KEYS: stream, queued. ARGV: group, entry_id, task_id, traceparent.
/// Replaces the entry with a fresh one; returns the new id.
static REQUEUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local old = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
local state = ''
if #old > 0 then
  local f = old[1][2]
  for i = 1, #f, 2 do
    if f[i] == 'state' then state = f[i + 1] end
  end
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
local id = redis.call('XADD', KEYS[1], '*', 'task_id', ARGV[3], 'traceparent', ARGV[4], 'state', state)
redis.call('HSET', KEYS[2], ARGV[3], id)
return id
"#,
    )
});

/// KEYS: stream, queued, deadletter. ARGV: group, entry_id, task_id, deliveries, reason,
/// maxlen.
static DEAD_LETTER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', 'task_id', ARGV[3], 'entry_id', ARGV[2], 'delivery_count', ARGV[4], 'reason', ARGV[5])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if redis.call('HGET', KEYS[2], ARGV[3]) == ARGV[2] then
  redis.call('HDEL', KEYS[2], ARGV[3])
end
return 1
"#,
    )
});

/// The keys of one shard.
#[derive(Clone, Debug)]
pub struct ShardKeys {
    /// The stream.
    pub stream: String,
    /// Hash task id -> live entry id.
    pub queued: String,
    /// Dead-letter stream.
    pub dead_letters: String,
}

/// The hash tag of shard `shard` of `shards`: the first `q<shard>.<n>` whose slot lies in
/// the shard's slot range.
fn shard_tag(shard: usize, shards: usize) -> String {
    let shards = shards.max(1);
    let (lo, hi) = (shard * SLOTS / shards, (shard + 1) * SLOTS / shards);
    (0u32..)
        .map(|n| format!("q{shard}.{n}"))
        .find(|t| {
            let slot = crc16::State::<crc16::XMODEM>::calculate(t.as_bytes()) as usize % SLOTS;
            (lo..hi).contains(&slot)
        })
        .unwrap_or_else(|| format!("q{shard}"))
}

/// The keys of every shard of a `shards`-shard queue under `prefix`.
pub fn shard_keys(prefix: &str, shards: usize) -> Vec<ShardKeys> {
    let shards = shards.max(1);
    (0..shards)
        .map(|i| {
            let tag = shard_tag(i, shards);
            ShardKeys {
                stream: format!("{prefix}:{{{tag}}}:queue"),
                queued: format!("{prefix}:{{{tag}}}:queued"),
                dead_letters: format!("{prefix}:{{{tag}}}:deadletter"),
            }
        })
        .collect()
}

/// Work queue on Redis Streams.
pub struct RedisQueue {
    conn: RedisConn,
    shards: Vec<ShardKeys>,
    /// Where to open the dedicated connections of blocking reads; `None` reads without
    /// blocking (a queue built around one connection).
    target: Option<RedisTarget>,
    /// One dedicated connection per shard for `XREADGROUP … BLOCK`.
    readers: Vec<Mutex<Option<RedisConn>>>,
}

impl RedisQueue {
    /// A one-shard queue on `conn` under `prefix`, reading without blocking.
    pub fn new(conn: impl Into<RedisConn>, prefix: &str) -> Self {
        Self::build(conn.into(), None, prefix, 1)
    }

    /// A queue of `shards` shards on `target`: ordinary commands on `conn`, blocking reads
    /// on dedicated connections opened from `target`.
    pub fn sharded(conn: RedisConn, target: RedisTarget, prefix: &str, shards: usize) -> Self {
        Self::build(conn, Some(target), prefix, shards)
    }

    fn build(conn: RedisConn, target: Option<RedisTarget>, prefix: &str, shards: usize) -> Self {
        let shards = shards.max(1);
        Self {
            conn,
            shards: shard_keys(prefix, shards),
            target,
            readers: (0..shards).map(|_| Mutex::new(None)).collect(),
        }
    }

    /// The keys of every shard.
    pub fn shard_keys(&self) -> &[ShardKeys] {
        &self.shards
    }

    fn keys(&self, shard: usize) -> Result<&ShardKeys> {
        self.shards
            .get(shard)
            .ok_or_else(|| Error::Internal(format!("queue shard {shard} does not exist")))
    }

    async fn delivery_counts(&self, stream: &str, ids: &[String]) -> Result<Vec<u64>> {
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("XPENDING")
                .arg(stream)
                .arg(GROUP)
                .arg(id)
                .arg(id)
                .arg(1);
        }
        let mut conn = self.conn.clone();
        let replies: Vec<Value> = pipe.query_async(&mut conn).await?;
        Ok(replies
            .iter()
            .map(|r| {
                // [[id, consumer, idle_ms, delivered]]
                let Value::Array(rows) = r else { return 1 };
                let Some(Value::Array(row)) = rows.first() else {
                    return 1;
                };
                row.get(3).and_then(int).unwrap_or(1).max(1) as u64
            })
            .collect())
    }

    async fn blocking_read(
        &self,
        shard: usize,
        target: &RedisTarget,
        cmd: &redis::Cmd,
    ) -> Result<Value> {
        let Some(slot) = self.readers.get(shard) else {
            return Err(Error::Internal(format!(
                "queue shard {shard} does not exist"
            )));
        };
        let mut reader = slot.lock().await;
        let mut conn = match reader.take() {
            Some(c) => c,
            None => target.dedicated().await?,
        };
        // Dropped on error (and when the caller abandons the read): its state is unknown.
        let reply: Value = cmd.query_async(&mut conn).await?;
        *reader = Some(conn);
        Ok(reply)
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => text(other)?.parse().ok(),
    }
}

/// Parses `[[id, [k, v, ...]], ...]` into deliveries of `shard` (delivery count 1).
fn entries(v: &Value, shard: usize) -> Vec<Delivery> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|e| {
            let Value::Array(parts) = e else { return None };
            let mut d = Delivery {
                entry_id: text(parts.first()?)?,
                task_id: String::new(),
                traceparent: String::new(),
                delivery_count: 1,
                shard,
                initial_state: Vec::new(),
                received_at: Some(std::time::Instant::now()),
            };
            // A deleted entry (nil fields) has nothing to run.
            let Some(Value::Array(fields)) = parts.get(1) else {
                return Some(d);
            };
            for pair in fields.chunks(2) {
                match (pair.first().and_then(text).as_deref(), pair.get(1)) {
                    (Some("task_id"), Some(v)) => d.task_id = text(v).unwrap_or_default(),
                    (Some("traceparent"), Some(v)) => d.traceparent = text(v).unwrap_or_default(),
                    (Some("state"), Some(Value::BulkString(b))) => d.initial_state = b.clone(),
                    _ => {}
                }
            }
            Some(d)
        })
        .collect()
}

/// The entries of an `XREADGROUP` reply: `[[stream, entries]]`, nil, or a RESP3 map.
fn read_reply(reply: &Value, shard: usize) -> Vec<Delivery> {
    let streams = match reply {
        Value::Array(s) => s.clone(),
        Value::Map(m) => m
            .iter()
            .map(|(k, v)| Value::Array(vec![k.clone(), v.clone()]))
            .collect(),
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    for s in &streams {
        let Value::Array(parts) = s else { continue };
        if let Some(list) = parts.get(1) {
            out.extend(entries(list, shard));
        }
    }
    out
}

#[async_trait::async_trait]
impl WorkQueue for RedisQueue {
    fn shards(&self) -> usize {
        self.shards.len()
    }

    async fn ensure_group(&self) -> Result<()> {
        for keys in &self.shards {
            let mut conn = self.conn.clone();
            let r: redis::RedisResult<()> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&keys.stream)
                .arg(GROUP)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut conn)
                .await;
            match r {
                Ok(()) => {}
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(Error::Redis(e)),
            }
        }
        Ok(())
    }

    async fn enqueue(
        &self,
        task_id: &str,
        traceparent: &str,
        initial_state: &[u8],
    ) -> Result<String> {
        let keys = self.keys(super::shard_of(task_id, self.shards.len()))?;
        let mut conn = self.conn.clone();
        let id: String = ENQUEUE
            .key(&keys.stream)
            .key(&keys.queued)
            .arg(task_id)
            .arg(traceparent)
            .arg(initial_state)
            .invoke_async(&mut conn)
            .await?;
        Ok(id)
    }

    async fn requeue(&self, d: &Delivery) -> Result<()> {
        let keys = self.keys(d.shard)?;
        let mut conn = self.conn.clone();
        let _: String = REQUEUE
            .key(&keys.stream)
            .key(&keys.queued)
            .arg(GROUP)
            .arg(&d.entry_id)
            .arg(&d.task_id)
            .arg(&d.traceparent)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn read_new(
        &self,
        shard: usize,
        consumer: &str,
        count: usize,
        block: Option<Duration>,
    ) -> Result<Vec<Delivery>> {
        let keys = self.keys(shard)?;
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(consumer)
            .arg("COUNT")
            .arg(count.max(1));
        let reply = match (block, &self.target) {
            (Some(wait), Some(target)) => {
                cmd.arg("BLOCK")
                    .arg(wait.as_millis().max(1) as u64)
                    .arg("STREAMS")
                    .arg(&keys.stream)
                    .arg(">");
                self.blocking_read(shard, target, &cmd).await?
            }
            _ => {
                cmd.arg("STREAMS").arg(&keys.stream).arg(">");
                let mut conn = self.conn.clone();
                let reply: Value = cmd.query_async(&mut conn).await?;
                if let (Some(wait), Value::Nil) = (block, &reply) {
                    // No connection of its own to block on: wait here instead.
                    tokio::time::sleep(wait.min(Duration::from_millis(100))).await;
                }
                reply
            }
        };
        Ok(read_reply(&reply, shard))
    }

    async fn reclaim(
        &self,
        shard: usize,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Delivery>> {
        let keys = self.keys(shard)?;
        let mut conn = self.conn.clone();
        let reply: Value = redis::cmd("XAUTOCLAIM")
            .arg(&keys.stream)
            .arg(GROUP)
            .arg(consumer)
            .arg(min_idle.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(count.max(1))
            .query_async(&mut conn)
            .await?;
        let Value::Array(parts) = reply else {
            return Ok(Vec::new());
        };
        let mut claimed = parts.get(1).map(|v| entries(v, shard)).unwrap_or_default();
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = claimed.iter().map(|d| d.entry_id.clone()).collect();
        let counts = self.delivery_counts(&keys.stream, &ids).await?;
        for (d, n) in claimed.iter_mut().zip(counts) {
            d.delivery_count = n;
        }
        Ok(claimed)
    }

    async fn next_reclaim(&self, shard: usize, min_idle: Duration) -> Result<Option<Duration>> {
        let keys = self.keys(shard)?;
        let mut conn = self.conn.clone();
        let reply: Value = redis::cmd("XPENDING")
            .arg(&keys.stream)
            .arg(GROUP)
            .arg("-")
            .arg("+")
            .arg(100)
            .query_async(&mut conn)
            .await?;
        let Value::Array(rows) = reply else {
            return Ok(None);
        };
        // [[id, consumer, idle_ms, delivered], ...]
        Ok(rows
            .iter()
            .filter_map(|row| match row {
                Value::Array(f) => f.get(2).and_then(int),
                _ => None,
            })
            .map(|idle| min_idle.saturating_sub(Duration::from_millis(idle.max(0) as u64)))
            .min())
    }

    async fn touch(&self, consumer: &str, d: &Delivery) -> Result<()> {
        let keys = self.keys(d.shard)?;
        let mut conn = self.conn.clone();
        let _: Value = redis::cmd("XCLAIM")
            .arg(&keys.stream)
            .arg(GROUP)
            .arg(consumer)
            .arg(0)
            .arg(&d.entry_id)
            .arg("JUSTID")
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn ack(&self, d: &Delivery) -> Result<()> {
        let keys = self.keys(d.shard)?;
        let mut conn = self.conn.clone();
        let _: i64 = ACK
            .key(&keys.stream)
            .key(&keys.queued)
            .arg(GROUP)
            .arg(&d.entry_id)
            .arg(&d.task_id)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn dead_letter(&self, d: &Delivery, reason: &str) -> Result<()> {
        let keys = self.keys(d.shard)?;
        let mut conn = self.conn.clone();
        let _: i64 = DEAD_LETTER
            .key(&keys.stream)
            .key(&keys.queued)
            .key(&keys.dead_letters)
            .arg(GROUP)
            .arg(&d.entry_id)
            .arg(&d.task_id)
            .arg(d.delivery_count)
            .arg(reason)
            .arg(DEAD_LETTERS_MAXLEN)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn depth(&self) -> Result<QueueDepth> {
        let mut total = QueueDepth::default();
        for keys in &self.shards {
            let mut conn = self.conn.clone();
            let (length, pending): (u64, Value) = redis::pipe()
                .cmd("XLEN")
                .arg(&keys.stream)
                .cmd("XPENDING")
                .arg(&keys.stream)
                .arg(GROUP)
                .query_async(&mut conn)
                .await?;
            total.length += length;
            total.pending += match &pending {
                Value::Array(p) => p.first().and_then(int).unwrap_or(0).max(0) as u64,
                _ => 0,
            };
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_tags_fall_in_their_slot_ranges() {
        for shards in [1, 3, 6, 16] {
            for i in 0..shards {
                let tag = shard_tag(i, shards);
                let slot =
                    crc16::State::<crc16::XMODEM>::calculate(tag.as_bytes()) as usize % SLOTS;
                assert!(
                    slot >= i * SLOTS / shards && slot < (i + 1) * SLOTS / shards,
                    "{tag}"
                );
            }
        }
    }
}
