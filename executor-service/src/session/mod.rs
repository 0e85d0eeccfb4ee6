//! The session layer, below the engine and the paths: SessionState persistence (the
//! [`SessionStore`] trait, its Redis and in-memory implementations), the [`Lease`] a
//! worker holds while it runs a task, its [`heartbeat`], and the [`ActiveSession`] a
//! path writes its progress through.
//!
//! Layout per task (every key shares the Redis Cluster hash tag `{task_id}`):
//! - `<prefix>:{id}:state` — hash: `schema`, `version`, `fence`, `status`, `evseq`, `task`
//!   (protobuf `Task`, written once) and `data` (protobuf `SessionState` without the task
//!   and without the iteration log, so a checkpoint's size depends on neither);
//! - `<prefix>:{id}:log` — list of protobuf `IterationRecord`s, appended per iteration;
//! - `<prefix>:{id}:events` — stream of progress events (`seq`, `ev`), capped;
//! - `<prefix>:{id}:lease` — owner token of the worker running the task (with expiry);
//! - `<prefix>:{id}:fence` — counter incremented on every lease acquisition;
//! - `<prefix>:{id}:cancel` — present once Cancel was requested;
//! - `<prefix>:{id}:spend` — spend reservations (see [`governance`]).
//!
//! The secondary indexes `List` reads live under `<prefix>:{index}:` (see [`redis_index`]).

pub mod active;
pub mod delivery;
pub mod governance;
pub mod heartbeat;
pub mod listing;
pub mod memory;
mod memory_governance;
mod redis_governance;
pub mod redis_index;
pub mod redis_store;

use crate::error::{Error, Result};
use governance::{Reservation, SpendOutcome, SpendRequest, TaskSpend, TenantSpend};
use std::time::Duration;
use taskrouter_proto::v1::{IterationRecord, ProgressEvent, SessionState};

pub use listing::{Cursor, IndexEntry, ListPage, ListQuery, ListedTask, TaskFilter};

pub use active::{ActiveSession, CheckpointRetry};
pub use heartbeat::Heartbeat;
pub use memory::MemoryStore;
pub use redis_store::RedisStore;

/// A held lease: which worker runs a task. A lease is `SET NX PX` with an owner token,
/// renewed by a [`Heartbeat`] while the task runs and released by a token-checked script.
/// Each acquisition also yields a fencing token (a per-task counter) that every
/// checkpoint carries, so a worker that lost its lease can no longer write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The task id.
    pub task_id: String,
    /// Unique owner token of this acquisition.
    pub owner: String,
    /// Fencing token: strictly greater than any earlier acquisition's.
    pub fencing_token: u64,
    /// Expiry the lease is (re)set to.
    pub ttl: Duration,
}

impl Lease {
    /// A new unique owner token for `worker_id`.
    pub fn new_owner(worker_id: &str) -> String {
        format!("{worker_id}:{}", uuid::Uuid::new_v4().simple())
    }
}

/// The Redis keys of one task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskKeys {
    /// Hash holding the encoded state and its version/fence.
    pub state: String,
    /// List of encoded iteration records.
    pub log: String,
    /// Stream of encoded progress events.
    pub events: String,
    /// Lease owner token.
    pub lease: String,
    /// Fencing-token counter.
    pub fence: String,
    /// Cancel marker.
    pub cancel: String,
    /// Spend reservations and settled spend.
    pub spend: String,
}

impl TaskKeys {
    /// Keys of `task_id` under `prefix`, all in the hash slot of `{task_id}`.
    pub fn new(prefix: &str, task_id: &str) -> Self {
        let base = format!("{prefix}:{{{task_id}}}");
        Self {
            state: format!("{base}:state"),
            log: format!("{base}:log"),
            events: format!("{base}:events"),
            lease: format!("{base}:lease"),
            fence: format!("{base}:fence"),
            cancel: format!("{base}:cancel"),
            spend: format!("{base}:spend"),
        }
    }
}

/// One atomic, conditional write of a task's progress.
#[derive(Debug)]
pub struct Checkpoint<'a> {
    /// The new state. Its `version` is ignored (the store sets it) and so is its `task`:
    /// the task is stored once by `create` and kept unchanged.
    pub state: &'a SessionState,
    /// The version the writer last saw; the write fails if the stored one differs.
    pub expected_version: u64,
    /// The writer's lease; the write fails unless it is still the current holder.
    pub lease: &'a Lease,
    /// Iteration to append to the log, if one just finished.
    pub iteration: Option<&'a IterationRecord>,
    /// Progress events to publish (sequence numbers are assigned by the store).
    pub events: &'a [ProgressEvent],
    /// When set, archive: every key of the task expires after this long, and the lease
    /// is released by the same write (an archived task is final: nobody runs it again).
    pub archive_ttl: Option<Duration>,
    /// Spend of agent calls made without a reservation (no budget applies to the run),
    /// settled into the task's spend by this write instead of a call of its own.
    pub unreserved_spend: UnreservedSpend,
    /// The task's index entry before and after this write, as the writer knows them;
    /// `None` leaves the store to work the change out from what it has indexed.
    pub index: Option<IndexChange<'a>>,
}

/// A task's index entry at the version a checkpoint expects and at the version it
/// writes (tenant included), so the store can update only the memberships that change.
#[derive(Clone, Copy, Debug)]
pub struct IndexChange<'a> {
    /// The entry of the state at the expected version.
    pub before: &'a IndexEntry,
    /// The entry of the state this write stores.
    pub after: &'a IndexEntry,
}

/// Agent-call cost settled by a checkpoint (micro-dollars).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnreservedSpend {
    /// Sum of the calls' costs.
    pub total: i64,
    /// The costliest single call among them (raises the task's reservation size).
    pub largest: i64,
}

/// What [`SessionStore::claim`] returns: the lease and the state read under it.
#[derive(Debug)]
pub struct Claimed {
    /// The lease just taken.
    pub lease: Lease,
    /// The state under the lease; `None` for an unknown id (the lease is still held).
    pub state: Option<SessionState>,
    /// Whether the task may have spend reservations open (a previous holder's, to be
    /// reconciled before this run reserves).
    pub open_reservations: bool,
}

/// What a successful checkpoint returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointOutcome {
    /// The stored version after the write.
    pub version: u64,
    /// Whether a Cancel has been requested for the task.
    pub cancel_requested: bool,
}

/// Result of creating a task's state.
#[derive(Clone, Debug, PartialEq)]
pub enum CreateOutcome {
    /// The state was created.
    Created(SessionState),
    /// A state already existed for this id; it is returned unchanged.
    Existing(SessionState),
}

/// A stored progress event with its position in the task's event stream.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredEvent {
    /// Opaque stream position, for reading after it.
    pub cursor: String,
    /// The event, with `sequence` filled in.
    pub event: ProgressEvent,
}

/// Durable storage of SessionState, iteration logs, progress events and leases.
#[async_trait::async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Creates the state if the id is unknown (atomically), publishing `event`.
    async fn create(&self, state: &SessionState, event: &ProgressEvent) -> Result<CreateOutcome>;

    /// Loads a task's state (`version` filled from the store). `None` if unknown;
    /// `Error::CorruptState` if the value cannot be read (it is left in place).
    async fn load(&self, task_id: &str) -> Result<Option<SessionState>>;

    /// Loads a task's state that must exist: `Error::NotFound` if it is unknown.
    async fn get(&self, task_id: &str) -> Result<SessionState> {
        self.load(task_id).await?.ok_or_else(|| Error::NotFound {
            task_id: task_id.to_string(),
        })
    }

    /// Writes a checkpoint atomically if `expected_version` and the lease still hold.
    async fn checkpoint(&self, cp: Checkpoint<'_>) -> Result<CheckpointOutcome>;

    /// The most recent `limit` iteration records, oldest first.
    async fn iterations(&self, task_id: &str, limit: usize) -> Result<Vec<IterationRecord>>;

    /// Up to `limit` iteration records starting at 0-based `offset`, oldest first, and
    /// the number of records in the log.
    async fn iterations_page(
        &self,
        task_id: &str,
        offset: u64,
        limit: usize,
    ) -> Result<(Vec<IterationRecord>, u64)>;

    /// One page of the tasks matching `query.filter`, last updated first, with counts
    /// per status over every page. Reads the secondary indexes: exact and immediate.
    async fn list(&self, query: &ListQuery) -> Result<ListPage>;

    /// Rebuilds the secondary indexes from the task keys; returns the tasks indexed.
    async fn rebuild_indexes(&self) -> Result<u64>;

    /// The secret that signs page tokens (the same for every replica on this store).
    async fn page_token_key(&self) -> Result<Vec<u8>>;

    /// Events after `cursor` (`None` = from the beginning), at most `limit`.
    async fn events_after(
        &self,
        task_id: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StoredEvent>>;

    /// Like [`events_after`](Self::events_after), but when there are none yet waits up to
    /// `wait` for the first to arrive (Redis: `XREAD … BLOCK` on a connection of its own).
    async fn wait_events(
        &self,
        task_id: &str,
        cursor: Option<&str>,
        limit: usize,
        wait: Duration,
    ) -> Result<Vec<StoredEvent>> {
        let got = self.events_after(task_id, cursor, limit).await?;
        if !got.is_empty() {
            return Ok(got);
        }
        tokio::time::sleep(wait.min(Duration::from_millis(100))).await;
        self.events_after(task_id, cursor, limit).await
    }

    /// Takes the task's lease for `owner` if it is free (or already ours), returning
    /// it with a fresh fencing token; `None` if another owner holds it.
    async fn acquire_lease(
        &self,
        task_id: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>>;

    /// Takes the lease like [`acquire_lease`](Self::acquire_lease) and reads the state
    /// under it, in one round trip where the store can. `None` when another owner holds
    /// the lease. On an error the lease is released again.
    async fn claim(&self, task_id: &str, owner: &str, ttl: Duration) -> Result<Option<Claimed>> {
        let Some(lease) = self.acquire_lease(task_id, owner, ttl).await? else {
            return Ok(None);
        };
        match self.load(task_id).await {
            Ok(state) => Ok(Some(Claimed {
                lease,
                state,
                open_reservations: true,
            })),
            Err(e) => {
                let _ = self.release_lease(&lease).await;
                Err(e)
            }
        }
    }

    /// Extends the lease; `false` if it is no longer ours.
    async fn renew_lease(&self, lease: &Lease) -> Result<bool>;

    /// Releases the lease if it is still ours.
    async fn release_lease(&self, lease: &Lease) -> Result<()>;

    /// Marks the task as cancel-requested (seen by the running worker at its next checkpoint).
    async fn request_cancel(&self, task_id: &str, ttl: Duration) -> Result<()>;

    /// Whether the store answers (drives the health status).
    async fn ping(&self) -> Result<()>;

    /// Short backend name ("redis", "memory").
    fn kind(&self) -> &'static str;

    /// Reserves spend for one agent call against the task's budget and then its tenant's
    /// (see [`governance`] for the order and crash handling).
    async fn reserve_spend(&self, req: &SpendRequest<'_>) -> Result<SpendOutcome>;

    /// Closes a reservation with the call's actual cost in micro-dollars (0 releases it).
    async fn settle_spend(&self, r: &Reservation, actual: i64) -> Result<()>;

    /// Drops every open reservation of `task_id` not owned by `owner` (a previous lease
    /// holder's) and releases their tenant holds; returns how many it dropped.
    async fn reconcile_spend(&self, task_id: &str, owner: &str) -> Result<usize>;

    /// The task's recorded spend.
    async fn task_spend(&self, task_id: &str) -> Result<TaskSpend>;

    /// A tenant's spend on a UTC day (`YYYY-MM-DD`).
    async fn tenant_spend(&self, tenant: &str, day: &str) -> Result<TenantSpend>;

    /// Records when the gate `task_id` waits at times out (ms since the epoch).
    async fn set_approval_deadline(&self, task_id: &str, at_ms: i64) -> Result<()>;

    /// Forgets `task_id`'s approval deadline.
    async fn clear_approval_deadline(&self, task_id: &str) -> Result<()>;

    /// Up to `limit` task ids whose approval deadline is at or before `now_ms`.
    async fn due_approvals(&self, now_ms: i64, limit: usize) -> Result<Vec<String>>;
}
