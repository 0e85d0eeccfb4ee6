//! [`WorkQueue`] on a Redis Stream and consumer group.

use super::{Delivery, QueueDepth, WorkQueue};
use crate::error::{Error, Result};
use redis::Value;
use redis::aio::ConnectionManager;
use std::time::Duration;

/// Consumer group shared by every executor replica.
pub const GROUP: &str = "executors";

/// Work queue on Redis Streams.
#[derive(Clone)]
pub struct RedisQueue {
    conn: ConnectionManager,
    stream: String,
    dead_letters: String,
}

impl RedisQueue {
    /// A queue at `<prefix>:queue` with dead letters at `<prefix>:deadletter`.
    pub fn new(conn: ConnectionManager, prefix: &str) -> Self {
        Self {
            conn,
            stream: format!("{prefix}:queue"),
            dead_letters: format!("{prefix}:deadletter"),
        }
    }

    /// The stream key.
    pub fn stream_key(&self) -> &str {
        &self.stream
    }

    /// The dead-letter stream key.
    pub fn dead_letter_key(&self) -> &str {
        &self.dead_letters
    }

    async fn delivery_counts(&self, ids: &[String]) -> Result<Vec<u64>> {
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("XPENDING")
                .arg(&self.stream)
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

/// Parses `[[id, [k, v, ...]], ...]` into (id, task_id, traceparent).
fn entries(v: &Value) -> Vec<(String, String, String)> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|e| {
            let Value::Array(parts) = e else { return None };
            let id = text(parts.first()?)?;
            let Value::Array(fields) = parts.get(1)? else {
                // A deleted entry (nil fields) has nothing to run.
                return Some((id, String::new(), String::new()));
            };
            let mut task_id = String::new();
            let mut traceparent = String::new();
            for pair in fields.chunks(2) {
                match (pair.first().and_then(text).as_deref(), pair.get(1)) {
                    (Some("task_id"), Some(v)) => task_id = text(v).unwrap_or_default(),
                    (Some("traceparent"), Some(v)) => traceparent = text(v).unwrap_or_default(),
                    _ => {}
                }
            }
            Some((id, task_id, traceparent))
        })
        .collect()
}

#[async_trait::async_trait]
impl WorkQueue for RedisQueue {
    async fn ensure_group(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        let r: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(Error::Redis(e)),
        }
    }

    async fn enqueue(&self, task_id: &str, traceparent: &str) -> Result<String> {
        let mut conn = self.conn.clone();
        let id: String = redis::cmd("XADD")
            .arg(&self.stream)
            .arg("*")
            .arg("task_id")
            .arg(task_id)
            .arg("traceparent")
            .arg(traceparent)
            .query_async(&mut conn)
            .await?;
        Ok(id)
    }

    async fn read_new(&self, consumer: &str, count: usize) -> Result<Vec<Delivery>> {
        let mut conn = self.conn.clone();
        let reply: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(consumer)
            .arg("COUNT")
            .arg(count.max(1))
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(">")
            .query_async(&mut conn)
            .await?;
        // [[stream, [[id, fields], ...]]] or nil / a map in RESP3.
        let streams = match &reply {
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
                for (entry_id, task_id, traceparent) in entries(list) {
                    out.push(Delivery {
                        entry_id,
                        task_id,
                        traceparent,
                        delivery_count: 1,
                    });
                }
            }
        }
        Ok(out)
    }

    async fn reclaim(
        &self,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Delivery>> {
        let mut conn = self.conn.clone();
        let reply: Value = redis::cmd("XAUTOCLAIM")
            .arg(&self.stream)
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
        let claimed = parts.get(1).map(entries).unwrap_or_default();
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = claimed.iter().map(|(id, _, _)| id.clone()).collect();
        let counts = self.delivery_counts(&ids).await?;
        Ok(claimed
            .into_iter()
            .zip(counts)
            .map(
                |((entry_id, task_id, traceparent), delivery_count)| Delivery {
                    entry_id,
                    task_id,
                    traceparent,
                    delivery_count,
                },
            )
            .collect())
    }

    async fn touch(&self, consumer: &str, entry_id: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: Value = redis::cmd("XCLAIM")
            .arg(&self.stream)
            .arg(GROUP)
            .arg(consumer)
            .arg(0)
            .arg(entry_id)
            .arg("JUSTID")
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn ack(&self, entry_id: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: Value = redis::pipe()
            .cmd("XACK")
            .arg(&self.stream)
            .arg(GROUP)
            .arg(entry_id)
            .cmd("XDEL")
            .arg(&self.stream)
            .arg(entry_id)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: Value = redis::pipe()
            .cmd("XADD")
            .arg(&self.dead_letters)
            .arg("MAXLEN")
            .arg("~")
            .arg(100_000)
            .arg("*")
            .arg("task_id")
            .arg(&delivery.task_id)
            .arg("entry_id")
            .arg(&delivery.entry_id)
            .arg("delivery_count")
            .arg(delivery.delivery_count)
            .arg("reason")
            .arg(reason)
            .cmd("XACK")
            .arg(&self.stream)
            .arg(GROUP)
            .arg(&delivery.entry_id)
            .cmd("XDEL")
            .arg(&self.stream)
            .arg(&delivery.entry_id)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn depth(&self) -> Result<QueueDepth> {
        let mut conn = self.conn.clone();
        let (length, pending): (u64, Value) = redis::pipe()
            .cmd("XLEN")
            .arg(&self.stream)
            .cmd("XPENDING")
            .arg(&self.stream)
            .arg(GROUP)
            .query_async(&mut conn)
            .await?;
        let pending = match &pending {
            Value::Array(p) => p.first().and_then(int).unwrap_or(0).max(0) as u64,
            _ => 0,
        };
        Ok(QueueDepth { length, pending })
    }
}
