//! [`SessionStore`] in process memory, for the `taskctl demo` only.
//!
//! It reproduces the Redis store's semantics key by key (create-if-absent, version,
//! lease-owner and fencing checks, the appended iteration log, per-task event sequence
//! numbers, the cancel marker, lease and archive expiry) so the engine behaves the same
//! on it, but nothing survives the process and nothing is shared between processes:
//! never use it for real work. Expiry is checked lazily against [`Instant`]s, as each
//! key is touched, plus an occasional sweep so expired tasks do not pile up.

use super::governance::{Reservation, SpendOutcome, SpendRequest, TaskSpend, TenantSpend};
use super::listing::{Cursor, IndexEntry, ListPage, ListQuery, ListedTask};
use super::memory_governance::Ledger;
use super::{
    Checkpoint, CheckpointOutcome, CreateOutcome, Lease, SessionStore, StoredEvent, TaskKeys,
};
use crate::error::{Error, Result};
use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use taskrouter_proto::SESSION_SCHEMA_VERSION;
use taskrouter_proto::v1::{IterationRecord, ProgressEvent, SessionState};

/// Events kept per task (the Redis store trims its stream to about as many).
const EVENTS_MAXLEN: usize = 10_000;

/// Mutating calls between two sweeps of every task's expired keys.
const SWEEP_EVERY: u64 = 256;

/// One key's value and its expiry, like a Redis key with a PEXPIRE.
#[derive(Debug)]
struct Slot<T> {
    value: T,
    expires: Option<Instant>,
}

impl<T> Slot<T> {
    fn new(value: T) -> Self {
        Self {
            value,
            expires: None,
        }
    }

    fn expires_in(value: T, ttl: Duration, now: Instant) -> Self {
        Self {
            value,
            expires: Some(now + ttl),
        }
    }
}

/// Drops `slot` if it has expired, then returns its live value.
fn live<T>(slot: &mut Option<Slot<T>>, now: Instant) -> Option<&mut T> {
    if slot
        .as_ref()
        .and_then(|s| s.expires)
        .is_some_and(|at| at <= now)
    {
        *slot = None;
    }
    slot.as_mut().map(|s| &mut s.value)
}

/// Sets the expiry of an existing key (PEXPIRE on a missing key does nothing).
fn expire<T>(slot: &mut Option<Slot<T>>, ttl: Duration, now: Instant) {
    if let Some(s) = slot.as_mut() {
        s.expires = Some(now + ttl);
    }
}

/// The `state` hash of the Redis layout.
#[derive(Debug)]
struct StateHash {
    version: u64,
    fence: u64,
    evseq: u64,
    state: SessionState,
}

/// Every key of one task.
#[derive(Debug, Default)]
struct TaskSlots {
    state: Option<Slot<StateHash>>,
    log: Option<Slot<Vec<IterationRecord>>>,
    events: Option<Slot<VecDeque<(u64, ProgressEvent)>>>,
    lease: Option<Slot<String>>,
    fence: Option<Slot<u64>>,
    cancel: Option<Slot<()>>,
}

impl TaskSlots {
    /// Drops expired keys; true when nothing is left.
    fn sweep(&mut self, now: Instant) -> bool {
        live(&mut self.state, now);
        live(&mut self.log, now);
        live(&mut self.events, now);
        live(&mut self.lease, now);
        live(&mut self.fence, now);
        live(&mut self.cancel, now);
        self.state.is_none()
            && self.log.is_none()
            && self.events.is_none()
            && self.lease.is_none()
            && self.fence.is_none()
            && self.cancel.is_none()
    }

    /// Appends an event with the next event id; the caller sets its sequence.
    fn push_event(&mut self, id: u64, event: ProgressEvent, now: Instant) {
        let events = match live(&mut self.events, now) {
            Some(e) => e,
            None => &mut self.events.insert(Slot::new(VecDeque::new())).value,
        };
        events.push_back((id, event));
        while events.len() > EVENTS_MAXLEN {
            events.pop_front();
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    tasks: HashMap<String, TaskSlots>,
    /// Event ids increase across every task and never repeat, like stream ids.
    last_event_id: u64,
    calls: u64,
}

impl Inner {
    fn next_event_id(&mut self) -> u64 {
        self.last_event_id += 1;
        self.last_event_id
    }

    /// Counts a mutating call and sweeps every task now and then.
    fn tick(&mut self, now: Instant) {
        self.calls += 1;
        if self.calls.is_multiple_of(SWEEP_EVERY) {
            self.tasks.retain(|_, t| !t.sweep(now));
        }
    }

    /// Removes a task whose keys are all gone.
    fn forget_if_empty(&mut self, task_id: &str, now: Instant) {
        if self.tasks.get_mut(task_id).is_some_and(|t| t.sweep(now)) {
            self.tasks.remove(task_id);
        }
    }
}

/// SessionState store in process memory (demo only; state is lost on exit).
#[derive(Debug)]
pub struct MemoryStore {
    prefix: String,
    inner: Mutex<Inner>,
    /// Signs page tokens; nothing outlives the process, so neither do tokens.
    token_key: [u8; 32],
    ledger: Mutex<Ledger>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            prefix: "memory".to_string(),
            inner: Mutex::new(Inner::default()),
            token_key: rand::random(),
            ledger: Mutex::new(Ledger::default()),
        }
    }

    /// The key names `task_id` would have in Redis (used in error messages).
    pub fn keys(&self, task_id: &str) -> TaskKeys {
        TaskKeys::new(&self.prefix, task_id)
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        // Same reasoning as `lock`.
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding the lock, and every update is complete before
        // it is released, so a poisoned lock still guards consistent data.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The stored state as `load` returns it: schema checked, `version` from the hash.
    fn read_state(&self, task_id: &str, hash: &StateHash) -> Result<SessionState> {
        if hash.state.schema_version != SESSION_SCHEMA_VERSION {
            return Err(Error::CorruptState {
                key: self.keys(task_id).state,
                reason: format!(
                    "schema version {} inside the record, expected {SESSION_SCHEMA_VERSION}",
                    hash.state.schema_version
                ),
            });
        }
        let mut state = hash.state.clone();
        state.version = hash.version;
        Ok(state)
    }
}

fn ttl_of(d: Duration) -> Duration {
    // Redis rounds to whole milliseconds, at least one.
    Duration::from_millis(d.as_millis().max(1).min(u64::MAX as u128) as u64)
}

#[async_trait::async_trait]
impl SessionStore for MemoryStore {
    async fn create(&self, state: &SessionState, event: &ProgressEvent) -> Result<CreateOutcome> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.tick(now);
        let id = inner.next_event_id();
        let task = inner.tasks.entry(state.task_id.clone()).or_default();
        if let Some(hash) = live(&mut task.state, now) {
            return self
                .read_state(&state.task_id, hash)
                .map(CreateOutcome::Existing);
        }
        let mut stored = state.clone();
        stored.version = 1;
        task.state = Some(Slot::new(StateHash {
            version: 1,
            fence: 0,
            evseq: 1,
            state: stored.clone(),
        }));
        let mut ev = event.clone();
        ev.sequence = 1;
        task.push_event(id, ev, now);
        Ok(CreateOutcome::Created(stored))
    }

    async fn load(&self, task_id: &str) -> Result<Option<SessionState>> {
        let now = Instant::now();
        let mut inner = self.lock();
        let found = inner
            .tasks
            .get_mut(task_id)
            .and_then(|task| live(&mut task.state, now))
            .map(|hash| self.read_state(task_id, hash));
        if found.is_none() {
            inner.forget_if_empty(task_id, now);
        }
        found.transpose()
    }

    async fn checkpoint(&self, cp: Checkpoint<'_>) -> Result<CheckpointOutcome> {
        let now = Instant::now();
        let task_id = cp.state.task_id.clone();
        let stale = |reason: String| Error::StaleWrite {
            task_id: task_id.clone(),
            reason,
        };
        let mut inner = self.lock();
        inner.tick(now);
        let first_event_id = inner.last_event_id + 1;
        inner.last_event_id += cp.events.len() as u64;
        // No keys at all means no lease either.
        let Some(task) = inner.tasks.get_mut(&task_id) else {
            return Err(stale("the lease is no longer held by this worker".into()));
        };
        // The same checks in the same order as the Redis script: lease, fence, version.
        let cur = live(&mut task.state, now).map_or(0, |h| h.version);
        if live(&mut task.lease, now).map(|o| o.as_str()) != Some(cp.lease.owner.as_str()) {
            return Err(stale("the lease is no longer held by this worker".into()));
        }
        let fence = live(&mut task.state, now).map_or(0, |h| h.fence);
        if cp.lease.fencing_token < fence {
            return Err(stale(format!(
                "fencing token {} is older than the stored one",
                cp.lease.fencing_token
            )));
        }
        if cur != cp.expected_version {
            return Err(stale(format!(
                "expected version {}, stored version is {cur}",
                cp.expected_version
            )));
        }
        let version = cur + 1;
        let mut state = SessionState {
            task: None,
            version,
            fencing_token: cp.lease.fencing_token,
            ..cp.state.clone()
        };
        let hash = match live(&mut task.state, now) {
            Some(h) => h,
            None => {
                &mut task
                    .state
                    .insert(Slot::new(StateHash {
                        version: 0,
                        fence: 0,
                        evseq: 0,
                        state: SessionState::default(),
                    }))
                    .value
            }
        };
        hash.version = version;
        hash.fence = cp.lease.fencing_token;
        // Like Redis: the task is written once by `create` and never by a checkpoint.
        state.task = hash.state.task.take();
        hash.state = state;
        let mut sequences = Vec::with_capacity(cp.events.len());
        for _ in cp.events {
            hash.evseq += 1;
            sequences.push(hash.evseq);
        }
        if let Some(record) = cp.iteration {
            match live(&mut task.log, now) {
                Some(log) => log.push(record.clone()),
                None => task.log = Some(Slot::new(vec![record.clone()])),
            }
        }
        for ((n, ev), seq) in cp.events.iter().enumerate().zip(sequences) {
            let mut ev = ev.clone();
            ev.sequence = seq;
            task.push_event(first_event_id + n as u64, ev, now);
        }
        if let Some(ttl) = cp.archive_ttl {
            // Every key of the task expires and the lease goes, as in the Redis script.
            let ttl = ttl_of(ttl);
            expire(&mut task.state, ttl, now);
            expire(&mut task.log, ttl, now);
            expire(&mut task.events, ttl, now);
            expire(&mut task.fence, ttl, now);
            expire(&mut task.cancel, ttl, now);
            task.lease = None;
        }
        let cancel_requested = live(&mut task.cancel, now).is_some();
        drop(inner);
        self.ledger().settle_unreserved(
            &task_id,
            cp.unreserved_spend.total,
            cp.unreserved_spend.largest,
        );
        Ok(CheckpointOutcome {
            version,
            cancel_requested,
        })
    }

    async fn iterations(&self, task_id: &str, limit: usize) -> Result<Vec<IterationRecord>> {
        let now = Instant::now();
        let mut inner = self.lock();
        let Some(task) = inner.tasks.get_mut(task_id) else {
            return Ok(Vec::new());
        };
        let Some(log) = live(&mut task.log, now) else {
            return Ok(Vec::new());
        };
        let start = log.len().saturating_sub(limit.max(1));
        Ok(log[start..].to_vec())
    }

    async fn iterations_page(
        &self,
        task_id: &str,
        offset: u64,
        limit: usize,
    ) -> Result<(Vec<IterationRecord>, u64)> {
        let now = Instant::now();
        let mut inner = self.lock();
        let Some(log) = inner
            .tasks
            .get_mut(task_id)
            .and_then(|t| live(&mut t.log, now))
        else {
            return Ok((Vec::new(), 0));
        };
        let page = log
            .iter()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .take(limit.max(1))
            .cloned()
            .collect();
        Ok((page, log.len() as u64))
    }

    async fn list(&self, query: &ListQuery) -> Result<ListPage> {
        // No index: a scan of every task, which is what the demo's handful needs.
        let now = Instant::now();
        let mut inner = self.lock();
        let mut matching: Vec<(IndexEntry, SessionState)> = Vec::new();
        for task in inner.tasks.values_mut() {
            let Some(hash) = live(&mut task.state, now) else {
                continue;
            };
            let mut state = hash.state.clone();
            state.version = hash.version;
            let entry = IndexEntry::of(&state);
            if query.filter.matches(&entry) {
                state.task = None;
                matching.push((entry, state));
            }
        }
        let counts = query
            .filter
            .counted_statuses()
            .into_iter()
            .map(|st| {
                let n = matching
                    .iter()
                    .filter(|(e, _)| e.s == st.as_str_name())
                    .count();
                (st, n as u64)
            })
            .collect();
        matching.retain(|(e, s)| {
            query
                .after
                .as_ref()
                .is_none_or(|c| c.precedes(e.u, &s.task_id))
        });
        matching.sort_by(|(a, sa), (b, sb)| (b.u, &sb.task_id).cmp(&(a.u, &sa.task_id)));
        let more = matching.len() > query.page_size;
        matching.truncate(query.page_size);
        let next = more
            .then(|| matching.last())
            .flatten()
            .map(|(e, s)| Cursor {
                updated_ms: e.u,
                task_id: s.task_id.clone(),
            });
        Ok(ListPage {
            tasks: matching
                .into_iter()
                .map(|(e, state)| ListedTask {
                    state,
                    tenant: e.t.unwrap_or_default(),
                })
                .collect(),
            next,
            counts,
        })
    }

    async fn rebuild_indexes(&self) -> Result<u64> {
        // Listing scans the tasks themselves: nothing to rebuild.
        let now = Instant::now();
        let mut inner = self.lock();
        Ok(inner
            .tasks
            .values_mut()
            .filter_map(|t| live(&mut t.state, now))
            .count() as u64)
    }

    async fn page_token_key(&self) -> Result<Vec<u8>> {
        Ok(self.token_key.to_vec())
    }

    async fn events_after(
        &self,
        task_id: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StoredEvent>> {
        let after = match cursor {
            None => 0,
            Some(c) => c.parse::<u64>().map_err(|_| {
                Error::Internal(format!("event cursor {c:?} is not one this store issued"))
            })?,
        };
        let now = Instant::now();
        let mut inner = self.lock();
        let Some(task) = inner.tasks.get_mut(task_id) else {
            return Ok(Vec::new());
        };
        let Some(events) = live(&mut task.events, now) else {
            return Ok(Vec::new());
        };
        let from = events.partition_point(|(id, _)| *id <= after);
        Ok(events
            .iter()
            .skip(from)
            .take(limit.max(1))
            .map(|(id, ev)| StoredEvent {
                cursor: id.to_string(),
                event: ev.clone(),
            })
            .collect())
    }

    async fn acquire_lease(
        &self,
        task_id: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.tick(now);
        let task = inner.tasks.entry(task_id.to_string()).or_default();
        // SET NX: held by anyone (even this owner) means no.
        if live(&mut task.lease, now).is_some() {
            return Ok(None);
        }
        task.lease = Some(Slot::expires_in(owner.to_string(), ttl_of(ttl), now));
        let token = match live(&mut task.fence, now) {
            Some(n) => {
                *n += 1;
                *n
            }
            None => {
                task.fence = Some(Slot::new(1));
                1
            }
        };
        Ok(Some(Lease {
            task_id: task_id.to_string(),
            owner: owner.to_string(),
            fencing_token: token,
            ttl,
        }))
    }

    async fn renew_lease(&self, lease: &Lease) -> Result<bool> {
        let now = Instant::now();
        let mut inner = self.lock();
        let Some(task) = inner.tasks.get_mut(&lease.task_id) else {
            return Ok(false);
        };
        if live(&mut task.lease, now).map(|o| o.as_str()) != Some(lease.owner.as_str()) {
            return Ok(false);
        }
        expire(&mut task.lease, ttl_of(lease.ttl), now);
        Ok(true)
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        let now = Instant::now();
        let mut inner = self.lock();
        if let Some(task) = inner.tasks.get_mut(&lease.task_id)
            && live(&mut task.lease, now).map(|o| o.as_str()) == Some(lease.owner.as_str())
        {
            task.lease = None;
        }
        inner.forget_if_empty(&lease.task_id, now);
        Ok(())
    }

    async fn request_cancel(&self, task_id: &str, ttl: Duration) -> Result<()> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.tick(now);
        let task = inner.tasks.entry(task_id.to_string()).or_default();
        task.cancel = Some(Slot::expires_in((), ttl_of(ttl), now));
        Ok(())
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn reserve_spend(&self, req: &SpendRequest<'_>) -> Result<SpendOutcome> {
        let now = Instant::now();
        // The task lock is held across the ledger step, as the script holds Redis.
        let mut inner = self.lock();
        let owner = inner
            .tasks
            .get_mut(req.task_id)
            .and_then(|t| live(&mut t.lease, now).cloned());
        Ok(self.ledger().reserve(req, owner.as_deref(), now))
    }

    async fn settle_spend(&self, r: &Reservation, actual: i64) -> Result<()> {
        self.ledger().settle(r, actual, Instant::now());
        Ok(())
    }

    async fn reconcile_spend(&self, task_id: &str, owner: &str) -> Result<usize> {
        Ok(self.ledger().reconcile(task_id, owner, Instant::now()))
    }

    async fn task_spend(&self, task_id: &str) -> Result<TaskSpend> {
        Ok(self.ledger().task_spend(task_id))
    }

    async fn tenant_spend(&self, tenant: &str, day: &str) -> Result<TenantSpend> {
        Ok(self.ledger().tenant_spend(tenant, day, Instant::now()))
    }

    async fn set_approval_deadline(&self, task_id: &str, at_ms: i64) -> Result<()> {
        self.ledger().set_deadline(task_id, at_ms);
        Ok(())
    }

    async fn clear_approval_deadline(&self, task_id: &str) -> Result<()> {
        self.ledger().clear_deadline(task_id);
        Ok(())
    }

    async fn due_approvals(&self, now_ms: i64, limit: usize) -> Result<Vec<String>> {
        Ok(self.ledger().due(now_ms, limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskrouter_proto::v1::{Submitted, progress_event};

    fn state(id: &str) -> SessionState {
        SessionState {
            schema_version: SESSION_SCHEMA_VERSION,
            task_id: id.into(),
            ..Default::default()
        }
    }

    fn submitted(id: &str) -> ProgressEvent {
        ProgressEvent {
            task_id: id.into(),
            kind: Some(progress_event::Kind::Submitted(Submitted {})),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_record_with_another_schema_is_corrupt_not_a_crash() {
        let store = MemoryStore::new();
        let mut s = state("S-1");
        s.schema_version = 99;
        store.create(&s, &submitted("S-1")).await.unwrap();
        let err = store.load("S-1").await.unwrap_err();
        assert!(matches!(err, Error::CorruptState { .. }), "{err:?}");
        assert!(err.to_string().contains("memory:{S-1}:state"), "{err}");
    }

    #[tokio::test]
    async fn a_foreign_cursor_is_an_error() {
        let store = MemoryStore::new();
        store
            .create(&state("C-1"), &submitted("C-1"))
            .await
            .unwrap();
        assert!(store.events_after("C-1", Some("1-0"), 10).await.is_err());
    }

    #[tokio::test]
    async fn event_cursors_keep_increasing_across_tasks() {
        let store = MemoryStore::new();
        store.create(&state("A"), &submitted("A")).await.unwrap();
        store.create(&state("B"), &submitted("B")).await.unwrap();
        let a = store.events_after("A", None, 10).await.unwrap();
        let b = store.events_after("B", None, 10).await.unwrap();
        assert_eq!(a[0].event.sequence, 1);
        assert_eq!(b[0].event.sequence, 1);
        assert!(b[0].cursor.parse::<u64>().unwrap() > a[0].cursor.parse::<u64>().unwrap());
    }

    #[tokio::test]
    async fn an_expired_archive_leaves_nothing_behind() {
        let store = MemoryStore::new();
        let s = state("T");
        store.create(&s, &submitted("T")).await.unwrap();
        let lease = store
            .acquire_lease("T", "w", Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        store
            .checkpoint(Checkpoint {
                state: &s,
                expected_version: 1,
                lease: &lease,
                iteration: None,
                events: &[submitted("T")],
                archive_ttl: Some(Duration::from_millis(1)),
                unreserved_spend: Default::default(),
                index: None,
            })
            .await
            .unwrap();
        store.release_lease(&lease).await.unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert!(store.load("T").await.unwrap().is_none());
        assert!(store.lock().tasks.is_empty());
    }

    #[tokio::test]
    async fn a_checkpoint_for_an_unknown_task_is_stale() {
        let store = MemoryStore::new();
        let lease = Lease {
            task_id: "U".into(),
            owner: "w".into(),
            fencing_token: 1,
            ttl: Duration::from_secs(1),
        };
        let err = store
            .checkpoint(Checkpoint {
                state: &state("U"),
                expected_version: 0,
                lease: &lease,
                iteration: None,
                events: &[],
                archive_ttl: None,
                unreserved_spend: Default::default(),
                index: None,
            })
            .await
            .unwrap_err();
        assert!(matches!(err, Error::StaleWrite { .. }), "{err:?}");
        assert!(store.lock().tasks.is_empty());
    }
}
