//! The state of a task while a worker runs it: the latest SessionState, its stored
//! version and the lease, with checkpointing that retries while Redis is briefly away.

use super::governance::usd_to_micros;
use super::listing::{IndexEntry, tenant_of};
use super::{Checkpoint, IndexChange, Lease, SessionStore, UnreservedSpend};
use crate::agent::IterationOutput;
use crate::error::{Error, Result};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};
use taskrouter_proto::v1::{IterationRecord, ProgressEvent, SessionState, Task, progress_event};

/// How long a failing checkpoint write is retried before the run gives up (the task
/// stays resumable: nothing is marked done with unsaved work).
#[derive(Clone, Copy, Debug)]
pub struct CheckpointRetry {
    /// Total time to keep retrying.
    pub budget: Duration,
    /// First backoff; doubles up to `max_backoff`.
    pub initial_backoff: Duration,
    /// Largest backoff.
    pub max_backoff: Duration,
}

impl Default for CheckpointRetry {
    fn default() -> Self {
        Self {
            budget: Duration::from_secs(30),
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
        }
    }
}

/// A task being run under a lease.
pub struct ActiveSession {
    store: Arc<dyn SessionStore>,
    /// The latest state (what the next checkpoint writes), without the task: the task
    /// is immutable and stored once, so checkpoints never rewrite the description.
    pub state: SessionState,
    task: Arc<Task>,
    version: u64,
    lease: Lease,
    retry: CheckpointRetry,
    cancel_requested: bool,
    /// Iterations started but not yet checkpointed (team path reserves slots).
    pub in_flight: u32,
    /// Whether agent calls' costs are settled by the checkpoint that records them (the
    /// run reserves nothing: no budget applies) rather than by calls of their own.
    pub settle_on_checkpoint: bool,
    unsettled: UnreservedSpend,
    /// Events the next checkpoint publishes before its own.
    pending_events: Vec<ProgressEvent>,
    /// An iteration record the next checkpoint writes (see [`Self::defer_iteration`]).
    pending_iteration: Option<IterationRecord>,
    /// The index entry of the state at `version` (what the store has indexed, unless
    /// another writer changed it since: the store checks before relying on it).
    indexed: IndexEntry,
    /// Whether a previous holder may have left spend reservations open.
    open_reservations: bool,
    /// Set once the lease is released (by an archiving checkpoint or by `release`).
    released: Arc<AtomicBool>,
}

impl ActiveSession {
    /// Opens a task for writing: takes its lease for `worker_id`, then re-reads the state
    /// under the lease (the previous holder may have written since). `None` when
    /// another worker holds the lease; on any error the lease is released again.
    pub async fn open(
        store: Arc<dyn SessionStore>,
        task_id: &str,
        worker_id: &str,
        lease_ttl: Duration,
        retry: CheckpointRetry,
    ) -> Result<Option<Self>> {
        let owner = Lease::new_owner(worker_id);
        // One round trip on Redis: lease, fencing token and state in one script.
        let Some(claimed) = store.claim(task_id, &owner, lease_ttl).await? else {
            return Ok(None);
        };
        let Some(state) = claimed.state else {
            let _ = store.release_lease(&claimed.lease).await;
            return Err(Error::NotFound {
                task_id: task_id.to_string(),
            });
        };
        let mut session = Self::new(store, state, claimed.lease, retry);
        session.open_reservations = claimed.open_reservations;
        Ok(Some(session))
    }

    /// Wraps a freshly loaded state.
    pub fn new(
        store: Arc<dyn SessionStore>,
        mut state: SessionState,
        lease: Lease,
        retry: CheckpointRetry,
    ) -> Self {
        let indexed = IndexEntry::of(&state);
        let task = Arc::new(state.task.take().unwrap_or_default());
        let version = state.version;
        let cancel_requested = state.cancel_requested;
        Self {
            store,
            state,
            task,
            version,
            lease,
            retry,
            cancel_requested,
            in_flight: 0,
            settle_on_checkpoint: false,
            unsettled: UnreservedSpend::default(),
            pending_events: Vec::new(),
            pending_iteration: None,
            indexed,
            open_reservations: true,
            released: Arc::default(),
        }
    }

    /// Whether a previous lease holder may have left spend reservations open (when
    /// `false` the store saw none when the lease was taken: nothing to reconcile).
    pub fn may_have_open_reservations(&self) -> bool {
        self.open_reservations
    }

    /// Queues `event` for the next checkpoint, so a state change that needs no write of
    /// its own (routing, just before the run starts) costs no extra round trip.
    pub fn defer_event(&mut self, event: ProgressEvent) {
        self.pending_events.push(event);
    }

    /// Whether events wait for the next checkpoint.
    pub fn has_deferred_events(&self) -> bool {
        !self.pending_events.is_empty()
    }

    /// Leaves the record (and events) of the iteration that ended its path to the
    /// checkpoint that follows at once, the finish or the park at a gate, so a finishing
    /// task writes once instead of twice. Nothing is awaited in between: a crash there
    /// loses the iteration just as a crash before its own checkpoint would, and the
    /// resumed run repeats it.
    pub fn defer_iteration(
        &mut self,
        record: IterationRecord,
        events: impl IntoIterator<Item = ProgressEvent>,
    ) {
        self.pending_iteration = Some(record);
        self.pending_events.extend(events);
    }

    /// A flag that turns true once this session's lease is released on purpose (the
    /// heartbeat stops quietly instead of reporting the lease lost).
    pub fn released_flag(&self) -> Arc<AtomicBool> {
        self.released.clone()
    }

    /// The task being run.
    pub fn task(&self) -> &Arc<Task> {
        &self.task
    }

    /// The full state, task included (for answers to callers).
    pub fn full_state(&self) -> SessionState {
        SessionState {
            task: Some(Task::clone(&self.task)),
            ..self.state.clone()
        }
    }

    /// The lease this run holds.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// The stored version the next write expects.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether a Cancel has been seen.
    pub fn cancel_requested(&self) -> bool {
        self.cancel_requested
    }

    /// Builds an event for this task.
    pub fn event(&self, kind: progress_event::Kind) -> ProgressEvent {
        ProgressEvent {
            task_id: self.state.task_id.clone(),
            sequence: 0,
            at: Some(now()),
            kind: Some(kind),
        }
    }

    /// Adds one finished iteration to the state's totals and returns its log record
    /// (written by the next [`commit`](Self::commit)).
    pub fn apply_iteration(
        &mut self,
        worker_id: &str,
        role: &str,
        iteration: u32,
        out: IterationOutput,
    ) -> IterationRecord {
        self.state.iteration_count += 1;
        self.state.cost_usd += out.cost_usd;
        self.state.tokens_in += out.tokens_in;
        self.state.tokens_out += out.tokens_out;
        self.state.last_error.clear();
        self.state.worker_id = worker_id.to_string();
        if self.settle_on_checkpoint && out.cost_usd.is_finite() && out.cost_usd > 0.0 {
            let cost = usd_to_micros(out.cost_usd);
            self.unsettled.total += cost;
            self.unsettled.largest = self.unsettled.largest.max(cost);
        }
        IterationRecord {
            iteration,
            role: role.to_string(),
            output: out.output,
            done: out.done,
            cost_usd: out.cost_usd,
            tokens_in: out.tokens_in,
            tokens_out: out.tokens_out,
            at: Some(now()),
            worker_id: worker_id.to_string(),
        }
    }

    /// Checkpoints the current state (plus an iteration record and events) in one
    /// atomic conditional write. Transient Redis errors are retried with backoff
    /// within the retry budget; a stale write is returned at once.
    pub async fn commit(
        &mut self,
        iteration: Option<&IterationRecord>,
        events: &[ProgressEvent],
        archive_ttl: Option<Duration>,
    ) -> Result<()> {
        use tracing::Instrument as _;
        let span = tracing::info_span!(
            "checkpoint",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            db.system = self.store.kind(),
            db.operation.name = "EVALSHA",
            task.id = %self.state.task_id,
            checkpoint.expected_version = self.version,
            checkpoint.events = events.len() as u64,
            checkpoint.iteration = iteration.is_some(),
            checkpoint.archive = archive_ttl.is_some(),
        );
        let result = self
            .commit_inner(iteration, events, archive_ttl)
            .instrument(span.clone())
            .await;
        if result.is_err() {
            span.record("otel.status_code", "ERROR");
        }
        result
    }

    async fn commit_inner(
        &mut self,
        iteration: Option<&IterationRecord>,
        events: &[ProgressEvent],
        archive_ttl: Option<Duration>,
    ) -> Result<()> {
        if iteration.is_some() && self.pending_iteration.is_some() {
            // A deferred iteration ends its path: the next write is the finish or a park,
            // which bring none of their own. Should one ever come, a write carries one log
            // record, so the waiting one goes first, on its own.
            debug_assert!(
                false,
                "a commit with an iteration while another is deferred"
            );
            self.write(None, &[], None).await?;
        }
        self.write(iteration, events, archive_ttl).await
    }

    /// One checkpoint write (with whatever was deferred to it), retried while transient.
    async fn write(
        &mut self,
        iteration: Option<&IterationRecord>,
        events: &[ProgressEvent],
        archive_ttl: Option<Duration>,
    ) -> Result<()> {
        let pending = self.pending_iteration.take();
        let iteration = iteration.or(pending.as_ref());
        self.state.updated_at = Some(now());
        let indexed = IndexEntry {
            v: self.version + 1,
            t: Some(tenant_of(&self.task)),
            ..IndexEntry::of(&self.state)
        };
        let deferred;
        let events = if self.pending_events.is_empty() {
            events
        } else {
            deferred = [self.pending_events.as_slice(), events].concat();
            deferred.as_slice()
        };
        let started = Instant::now();
        let mut backoff = self.retry.initial_backoff;
        loop {
            let t0 = Instant::now();
            let res = self
                .store
                .checkpoint(Checkpoint {
                    state: &self.state,
                    expected_version: self.version,
                    lease: &self.lease,
                    iteration,
                    events,
                    archive_ttl,
                    unreserved_spend: self.unsettled,
                    index: Some(IndexChange {
                        before: &self.indexed,
                        after: &indexed,
                    }),
                })
                .await;
            crate::telemetry::checkpoint_latency(t0.elapsed(), res.is_ok());
            match res {
                Ok(outcome) => {
                    self.pending_events.clear();
                    self.unsettled = UnreservedSpend::default();
                    if archive_ttl.is_some() {
                        self.released.store(true, Ordering::Release);
                    }
                    self.version = outcome.version;
                    self.state.version = outcome.version;
                    self.indexed = indexed;
                    self.state.fencing_token = self.lease.fencing_token;
                    if outcome.cancel_requested {
                        self.cancel_requested = true;
                        self.state.cancel_requested = true;
                    }
                    return Ok(());
                }
                Err(e) if e.is_transient() && started.elapsed() < self.retry.budget => {
                    tracing::warn!(task_id = %self.state.task_id, error = %e, backoff_ms = backoff.as_millis() as u64, "checkpoint failed; retrying");
                    crate::telemetry::checkpoint_retry();
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.retry.max_backoff);
                }
                Err(e) => {
                    self.pending_iteration = pending;
                    return Err(e);
                }
            }
        }
    }

    /// Releases the lease (best effort: it expires by itself otherwise).
    pub async fn release(&self) {
        if self.released.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Err(e) = self.store.release_lease(&self.lease).await {
            tracing::warn!(task_id = %self.state.task_id, error = %e, "lease release failed; it will expire");
        }
    }
}

/// Current time as a protobuf timestamp.
pub fn now() -> prost_types::Timestamp {
    prost_types::Timestamp::from(SystemTime::now())
}

/// Maps an error from a commit to whether the run may simply stop (leaving the task
/// resumable) rather than fail the task.
pub fn leaves_task_resumable(e: &Error) -> bool {
    matches!(
        e,
        Error::Redis(_) | Error::StaleWrite { .. } | Error::ShuttingDown
    )
}
