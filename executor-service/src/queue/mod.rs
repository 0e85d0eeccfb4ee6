//! The shared work queue: Redis Streams (one per shard, each with its own hash tag) with
//! one consumer group for every executor replica. Entries whose consumer died are
//! reclaimed per shard with `XAUTOCLAIM` once idle longer than a lease; dead-lettering
//! counts only deliveries that made no progress (see the engine's worker).

pub mod memory;
pub mod redis_queue;

use crate::error::Result;
use std::time::Duration;

pub use memory::MemoryQueue;
pub use redis_queue::RedisQueue;

/// Upper bound of `--queue-shards`.
pub const MAX_SHARDS: usize = 256;

/// The shard of `task_id` among `shards`: a fixed function of the id, so every replica
/// agrees (CRC-16/XMODEM, the hash Redis Cluster uses for slots).
pub fn shard_of(task_id: &str, shards: usize) -> usize {
    crc16::State::<crc16::XMODEM>::calculate(task_id.as_bytes()) as usize % shards.max(1)
}

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
    /// The shard the entry is in.
    pub shard: usize,
    /// The task's initial state (protobuf `SessionState`) as submitted, so a worker can
    /// store it if the submitter stopped between queueing and storing; empty if none.
    pub initial_state: Vec<u8>,
    /// When this process received the entry (reading or claiming it resets its idle
    /// time in the stream); `None` if unknown.
    pub received_at: Option<std::time::Instant>,
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
    /// Number of shards (streams); shard numbers are `0..shards()`.
    fn shards(&self) -> usize {
        1
    }
    /// Creates every shard's stream and consumer group if missing.
    async fn ensure_group(&self) -> Result<()>;
    /// Queues `task_id` in its shard unless an entry for it is already queued (then that
    /// entry's id is returned): a task is never queued twice. `initial_state` rides along
    /// (see [`Delivery::initial_state`]).
    async fn enqueue(
        &self,
        task_id: &str,
        traceparent: &str,
        initial_state: &[u8],
    ) -> Result<String>;
    /// Replaces `delivery` with a fresh entry (never delivered) in one step, handing the
    /// task to whichever replica reads next.
    async fn requeue(&self, delivery: &Delivery) -> Result<()>;
    /// Up to `count` entries of `shard` never delivered before, for `consumer`; with
    /// `block`, waits up to that long for one (on a connection of its own).
    async fn read_new(
        &self,
        shard: usize,
        consumer: &str,
        count: usize,
        block: Option<Duration>,
    ) -> Result<Vec<Delivery>>;
    /// Up to `count` entries of `shard` idle for at least `min_idle` (their consumer is
    /// presumed dead), claimed for `consumer` with their delivery counts.
    async fn reclaim(
        &self,
        shard: usize,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Delivery>>;
    /// How long until some pending entry of `shard` has been idle for `min_idle` (zero if
    /// one already has); `None` when nothing is pending.
    async fn next_reclaim(&self, shard: usize, min_idle: Duration) -> Result<Option<Duration>>;
    /// Resets an entry's idle time without counting a delivery (heartbeat).
    async fn touch(&self, consumer: &str, delivery: &Delivery) -> Result<()>;
    /// Acknowledges and deletes an entry.
    async fn ack(&self, delivery: &Delivery) -> Result<()>;
    /// Moves an entry to its shard's dead-letter stream with `reason`, then acknowledges it.
    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<()>;
    /// Current depth, summed over the shards.
    async fn depth(&self) -> Result<QueueDepth>;
}
