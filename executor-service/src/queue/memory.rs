//! [`WorkQueue`] in process memory, for the `taskctl demo` only.
//!
//! It behaves like the Redis Stream with one consumer group: entries are delivered once
//! to one consumer, stay pending until acknowledged, are reclaimed (with their delivery
//! count raised) once idle for long enough, and a heartbeat resets their idle time. The
//! group always exists (as if created at `0` before the first entry), so
//! [`WorkQueue::ensure_group`] has nothing to do. Nothing survives the process and
//! nothing is shared between processes: never use it for real work.

use super::{Delivery, QueueDepth, WorkQueue};
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// An entry moved to the dead-letter list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// The task.
    pub task_id: String,
    /// The queue entry it came from.
    pub entry_id: String,
    /// Deliveries it had.
    pub delivery_count: u64,
    /// Why it was given up.
    pub reason: String,
}

#[derive(Debug)]
struct Entry {
    task_id: String,
    traceparent: String,
    initial_state: Vec<u8>,
}

#[derive(Debug)]
struct Pending {
    consumer: String,
    delivered_at: Instant,
    delivery_count: u64,
}

#[derive(Debug, Default)]
struct Inner {
    entries: BTreeMap<u64, Entry>,
    last_id: u64,
    last_delivered: u64,
    pending: BTreeMap<u64, Pending>,
    dead_letters: Vec<DeadLetter>,
}

/// Work queue in process memory (demo only; entries are lost on exit).
#[derive(Debug, Default)]
pub struct MemoryQueue {
    inner: Mutex<Inner>,
    /// Wakes blocked readers when an entry arrives.
    arrived: tokio::sync::Notify,
}

impl MemoryQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Entries given up so far, oldest first.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.lock().dead_letters.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update is complete before the lock is released and nothing panics
        // while holding it, so a poisoned lock still guards consistent data.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Entry ids look like stream ids (`<n>-0`) but only this queue can read them.
fn format_id(n: u64) -> String {
    format!("{n}-0")
}

fn parse_id(id: &str) -> Result<u64> {
    id.strip_suffix("-0")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| {
            Error::Internal(format!(
                "queue entry id {id:?} is not one this queue issued"
            ))
        })
}

impl Inner {
    fn delivery(&self, id: u64, count: u64) -> Option<Delivery> {
        let e = self.entries.get(&id)?;
        Some(Delivery {
            entry_id: format_id(id),
            task_id: e.task_id.clone(),
            traceparent: e.traceparent.clone(),
            delivery_count: count,
            shard: 0,
            initial_state: e.initial_state.clone(),
            received_at: Some(std::time::Instant::now()),
        })
    }

    fn ack(&mut self, id: u64) {
        self.pending.remove(&id);
        self.entries.remove(&id);
    }
}

#[async_trait::async_trait]
impl WorkQueue for MemoryQueue {
    async fn ensure_group(&self) -> Result<()> {
        Ok(())
    }

    async fn enqueue(
        &self,
        task_id: &str,
        traceparent: &str,
        initial_state: &[u8],
    ) -> Result<String> {
        let id = {
            let mut inner = self.lock();
            if let Some((id, _)) = inner.entries.iter().find(|(_, e)| e.task_id == task_id) {
                return Ok(format_id(*id));
            }
            inner.last_id += 1;
            let id = inner.last_id;
            inner.entries.insert(
                id,
                Entry {
                    task_id: task_id.to_string(),
                    traceparent: traceparent.to_string(),
                    initial_state: initial_state.to_vec(),
                },
            );
            id
        };
        self.arrived.notify_waiters();
        Ok(format_id(id))
    }

    async fn requeue(&self, d: &Delivery) -> Result<()> {
        let old = parse_id(&d.entry_id)?;
        {
            let mut inner = self.lock();
            let state = inner
                .entries
                .get(&old)
                .map(|e| e.initial_state.clone())
                .unwrap_or_default();
            inner.ack(old);
            inner.last_id += 1;
            let id = inner.last_id;
            inner.entries.insert(
                id,
                Entry {
                    task_id: d.task_id.clone(),
                    traceparent: d.traceparent.clone(),
                    initial_state: state,
                },
            );
        }
        self.arrived.notify_waiters();
        Ok(())
    }

    async fn read_new(
        &self,
        _shard: usize,
        consumer: &str,
        count: usize,
        block: Option<Duration>,
    ) -> Result<Vec<Delivery>> {
        let got = self.read_now(consumer, count);
        let Some(wait) = block.filter(|_| got.is_empty()) else {
            return Ok(got);
        };
        let arrived = self.arrived.notified();
        tokio::pin!(arrived);
        arrived.as_mut().enable();
        let got = self.read_now(consumer, count);
        if !got.is_empty() {
            return Ok(got);
        }
        let _ = tokio::time::timeout(wait, arrived).await;
        Ok(self.read_now(consumer, count))
    }

    async fn next_reclaim(&self, _shard: usize, min_idle: Duration) -> Result<Option<Duration>> {
        let now = Instant::now();
        Ok(self
            .lock()
            .pending
            .values()
            .map(|p| min_idle.saturating_sub(now.duration_since(p.delivered_at)))
            .min())
    }

    async fn reclaim(
        &self,
        _shard: usize,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Delivery>> {
        self.reclaim_now(consumer, min_idle, count)
    }

    async fn touch(&self, consumer: &str, d: &Delivery) -> Result<()> {
        let id = parse_id(&d.entry_id)?;
        let mut inner = self.lock();
        if let Some(p) = inner.pending.get_mut(&id) {
            p.consumer = consumer.to_string();
            p.delivered_at = Instant::now();
        }
        Ok(())
    }

    async fn ack(&self, d: &Delivery) -> Result<()> {
        let id = parse_id(&d.entry_id)?;
        self.lock().ack(id);
        Ok(())
    }

    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<()> {
        let id = parse_id(&delivery.entry_id)?;
        let mut inner = self.lock();
        inner.dead_letters.push(DeadLetter {
            task_id: delivery.task_id.clone(),
            entry_id: delivery.entry_id.clone(),
            delivery_count: delivery.delivery_count,
            reason: reason.to_string(),
        });
        inner.ack(id);
        Ok(())
    }

    async fn depth(&self) -> Result<QueueDepth> {
        let inner = self.lock();
        Ok(QueueDepth {
            length: inner.entries.len() as u64,
            pending: inner.pending.len() as u64,
        })
    }
}

impl MemoryQueue {
    fn read_now(&self, consumer: &str, count: usize) -> Vec<Delivery> {
        let now = Instant::now();
        let mut inner = self.lock();
        let ids: Vec<u64> = inner
            .entries
            .range(inner.last_delivered + 1..)
            .take(count.max(1))
            .map(|(id, _)| *id)
            .collect();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            inner.last_delivered = id;
            inner.pending.insert(
                id,
                Pending {
                    consumer: consumer.to_string(),
                    delivered_at: now,
                    delivery_count: 1,
                },
            );
            out.extend(inner.delivery(id, 1));
        }
        out
    }

    fn reclaim_now(
        &self,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Delivery>> {
        let now = Instant::now();
        let mut inner = self.lock();
        let idle: Vec<u64> = inner
            .pending
            .iter()
            .filter(|(_, p)| now.duration_since(p.delivered_at) >= min_idle)
            .map(|(id, _)| *id)
            .collect();
        let mut out = Vec::new();
        for id in idle {
            if out.len() >= count.max(1) {
                break;
            }
            if !inner.entries.contains_key(&id) {
                // Deleted from the stream: nothing to run (Redis 7 drops it from the PEL).
                inner.pending.remove(&id);
                continue;
            }
            let Some(p) = inner.pending.get_mut(&id) else {
                continue;
            };
            p.consumer = consumer.to_string();
            p.delivered_at = now;
            p.delivery_count += 1;
            let count = p.delivery_count;
            out.extend(inner.delivery(id, count));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn entries_queued_before_any_read_are_delivered_in_order() {
        let q = MemoryQueue::new();
        for t in ["a", "b", "c"] {
            q.enqueue(t, "", b"").await.unwrap();
        }
        let got: Vec<String> = q
            .read_new(0, "w", 10, None)
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.task_id)
            .collect();
        assert_eq!(got, vec!["a", "b", "c"]);
    }

    #[tokio::test]
    async fn dead_letters_are_kept_for_inspection() {
        let q = MemoryQueue::new();
        q.enqueue("a", "tp", b"").await.unwrap();
        let d = q.read_new(0, "w", 1, None).await.unwrap().remove(0);
        q.dead_letter(&d, "gave up").await.unwrap();
        let dl = q.dead_letters();
        assert_eq!(dl.len(), 1);
        assert_eq!(dl[0].reason, "gave up");
        assert_eq!(q.depth().await.unwrap(), QueueDepth::default());
    }

    #[tokio::test]
    async fn a_foreign_entry_id_is_an_error() {
        let q = MemoryQueue::new();
        let d = Delivery {
            entry_id: "1700000000000-5".into(),
            task_id: "a".into(),
            traceparent: String::new(),
            delivery_count: 1,
            shard: 0,
            initial_state: Vec::new(),
            received_at: None,
        };
        assert!(q.ack(&d).await.is_err());
    }
}
