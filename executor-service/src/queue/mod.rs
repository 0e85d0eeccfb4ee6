//! The shared work queue: a Redis Stream with one consumer group for every executor
//! replica. Entries whose consumer died are reclaimed with `XAUTOCLAIM` once idle longer
//! than a lease; the stream's delivery count decides dead-lettering.

pub mod memory;
pub mod redis_queue;

use crate::error::Result;
use std::time::Duration;

pub use memory::MemoryQueue;
pub use redis_queue::RedisQueue;

/// One delivered queue entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Stream entry id (for XACK / XCLAIM).
    pub entry_id: String,
    /// The task to run.
    pub task_id: String,
    /// W3C `traceparent` of the submitter, empty if none.
    pub traceparent: String,
    /// How many times the stream has delivered this entry (1 on first delivery).
    pub delivery_count: u64,
}

/// Queue length and entries delivered but not yet acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Entries in the stream (acknowledged ones are deleted).
    pub length: u64,
    /// Entries delivered to a worker and not yet acknowledged.
    pub pending: u64,
}

/// A work queue shared by every executor replica.
#[async_trait::async_trait]
pub trait WorkQueue: Send + Sync + 'static {
    /// Creates the stream and consumer group if missing.
    async fn ensure_group(&self) -> Result<()>;
    /// Appends a task; returns the entry id.
    async fn enqueue(&self, task_id: &str, traceparent: &str) -> Result<String>;
    /// Up to `count` entries never delivered before, for `consumer`.
    async fn read_new(&self, consumer: &str, count: usize) -> Result<Vec<Delivery>>;
    /// Up to `count` entries idle for at least `min_idle` (their consumer is presumed
    /// dead), claimed for `consumer` with their delivery counts.
    async fn reclaim(
        &self,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Delivery>>;
    /// Resets an entry's idle time without counting a delivery (heartbeat).
    async fn touch(&self, consumer: &str, entry_id: &str) -> Result<()>;
    /// Acknowledges and deletes an entry.
    async fn ack(&self, entry_id: &str) -> Result<()>;
    /// Moves an entry to the dead-letter stream with `reason`, then acknowledges it.
    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<()>;
    /// Current depth.
    async fn depth(&self) -> Result<QueueDepth>;
}
