//! Outcomes of finished tasks, read from the executor's records.
//!
//! An [`OutcomeSource`] lists the executor's SessionStates; [`Outcome`] is the part of one
//! that gates and diffs need (never the description); [`GroupStats`] summarises a group.
//! [`RedisRecords`] reads them the way the executor's `List` and `Get` RPCs do, through
//! the executor's own store: its secondary indexes (filtered by final status, update time
//! and policy version, paged) and, only when the task itself is wanted, one state read per
//! task. Using the store rather than the RPCs keeps the controller free of an executor
//! address and credentials; it needs Redis anyway for its own state.

use crate::error::{Error, Result};
use executor_service::session::{ListQuery, RedisStore, SessionStore as _, TaskFilter};
use futures::{StreamExt as _, TryStreamExt as _};
use redis::aio::ConnectionManager;
use serde::Serialize;
use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use taskrouter_proto::v1::{RoutingAnalysis, RoutingDecision, SessionState, TaskStatus};

/// Tasks per page of the listing (the store's maximum is 1000).
const PAGE_SIZE: usize = 500;

/// Concurrent state reads when the tasks themselves are wanted.
const LOADS_IN_FLIGHT: usize = 16;

/// The statuses that end a task.
const FINAL_STATUSES: [TaskStatus; 3] = [
    TaskStatus::Completed,
    TaskStatus::Failed,
    TaskStatus::Cancelled,
];

/// Which finished tasks to read.
#[derive(Clone, Debug)]
pub struct RecordQuery {
    /// Only tasks that reached a final status at or after this time.
    pub since: SystemTime,
    /// Only tasks routed by this policy version (`None`: any).
    pub policy_version: Option<String>,
    /// Whether each record must carry its task (to evaluate a policy on it): one more
    /// read per task. Without it `SessionState::task` is `None`.
    pub with_task: bool,
}

impl RecordQuery {
    /// Every task finished at or after `since`, without the task itself.
    pub fn since(since: SystemTime) -> Self {
        Self {
            since,
            policy_version: None,
            with_task: false,
        }
    }
}

/// Where task records come from.
pub trait OutcomeSource {
    /// The records of the tasks `query` selects.
    fn finished(
        &self,
        query: &RecordQuery,
    ) -> impl std::future::Future<Output = Result<Vec<SessionState>>> + Send;
}

/// Task records read through the executor's store (its listing indexes).
#[derive(Clone)]
pub struct RedisRecords {
    store: RedisStore,
}

impl RedisRecords {
    /// Records under the executor's key `prefix` (its `--key-prefix`).
    pub fn new(conn: ConnectionManager, prefix: impl Into<String>) -> Self {
        Self {
            store: RedisStore::new(conn, prefix),
        }
    }
}

fn store_err(e: executor_service::error::Error) -> Error {
    match e {
        executor_service::error::Error::Redis(e) => Error::Redis(e),
        e => Error::TaskRecord(e.to_string()),
    }
}

fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl OutcomeSource for RedisRecords {
    async fn finished(&self, query: &RecordQuery) -> Result<Vec<SessionState>> {
        // A task's last update is its final checkpoint or later, so "updated since"
        // selects a superset of "finished since"; `finished_at` decides below.
        let filter = TaskFilter {
            statuses: FINAL_STATUSES.to_vec(),
            policy_version: query.policy_version.clone(),
            updated_from_ms: Some(millis(query.since)),
            ..TaskFilter::default()
        };
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .store
                .list(&ListQuery {
                    filter: filter.clone(),
                    page_size: PAGE_SIZE,
                    after,
                })
                .await
                .map_err(store_err)?;
            for listed in page.tasks {
                let state = listed.state;
                let finished = state
                    .finished_at
                    .as_ref()
                    .is_some_and(|t| timestamp(t) >= query.since);
                // A task updated while the pages are read can show up twice.
                if is_final(state.status) && finished && seen.insert(state.task_id.clone()) {
                    out.push(state);
                }
            }
            match page.next {
                Some(cursor) => after = Some(cursor),
                None => break,
            }
        }
        if !query.with_task {
            return Ok(out);
        }
        // The listing leaves the task (and its description) out; `Get` reads it.
        let loaded: Vec<Option<SessionState>> = futures::stream::iter(out)
            .map(|state| async move {
                match self.store.load(&state.task_id).await.map_err(store_err)? {
                    Some(full) => Ok(Some(SessionState {
                        task: full.task,
                        ..state
                    })),
                    // Expired between the listing and this read.
                    None => Ok::<_, Error>(None),
                }
            })
            .buffered(LOADS_IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(loaded.into_iter().flatten().collect())
    }
}

fn is_final(status: i32) -> bool {
    matches!(
        TaskStatus::try_from(status),
        Ok(TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled)
    )
}

/// Converts a protobuf timestamp (clamped at the epoch).
pub fn timestamp(t: &prost_types::Timestamp) -> SystemTime {
    let secs = u64::try_from(t.seconds).unwrap_or(0);
    let nanos = u32::try_from(t.nanos).unwrap_or(0);
    UNIX_EPOCH + Duration::new(secs, nanos)
}

/// The part of a finished task that gates and diffs use.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// Task id.
    pub task_id: String,
    /// Version of the live policy that routed it (empty when no router decided).
    pub policy_version: String,
    /// Whether it was routed to the team path.
    pub multi: bool,
    /// Whether it completed.
    pub completed: bool,
    /// Whether the team path fell back to the single path.
    pub fell_back: bool,
    /// Total cost in USD.
    pub cost_usd: f64,
    /// From acceptance to final status.
    pub duration: Duration,
}

impl Outcome {
    /// The outcome of a finished record.
    pub fn of(state: &SessionState) -> Self {
        let analysis = state.analysis.clone().unwrap_or_default();
        let duration = match (&state.created_at, &state.finished_at) {
            (Some(c), Some(f)) => timestamp(f)
                .duration_since(timestamp(c))
                .unwrap_or_default(),
            _ => Duration::ZERO,
        };
        Self {
            task_id: state.task_id.clone(),
            policy_version: analysis.policy_version.clone(),
            multi: is_multi(&analysis),
            completed: state.status == TaskStatus::Completed as i32,
            fell_back: state.fallback.is_some(),
            cost_usd: state.cost_usd,
            duration,
        }
    }
}

/// Whether an analysis sends the task to the team path.
pub fn is_multi(analysis: &RoutingAnalysis) -> bool {
    analysis.decision == RoutingDecision::UseMultiAgent as i32
}

/// Observed outcomes of one group of tasks.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct GroupStats {
    /// Finished tasks.
    pub finished: u64,
    /// Of which completed.
    pub completed: u64,
    /// Of which fell back from the team path.
    pub fell_back: u64,
    /// Total cost in USD.
    pub cost_usd: f64,
    /// Durations in seconds, sorted.
    #[serde(skip)]
    durations: Vec<f64>,
}

impl GroupStats {
    /// Summarises `outcomes`.
    pub fn of<'a>(outcomes: impl IntoIterator<Item = &'a Outcome>) -> Self {
        let mut s = Self::default();
        for o in outcomes {
            s.finished += 1;
            s.completed += u64::from(o.completed);
            s.fell_back += u64::from(o.fell_back);
            s.cost_usd += o.cost_usd;
            s.durations.push(o.duration.as_secs_f64());
        }
        s.durations.sort_by(f64::total_cmp);
        s
    }

    /// Completed / finished (0 when empty).
    pub fn success_rate(&self) -> f64 {
        ratio(self.completed, self.finished)
    }

    /// Fell back / finished (0 when empty).
    pub fn fallback_rate(&self) -> f64 {
        ratio(self.fell_back, self.finished)
    }

    /// Mean cost per finished task (0 when empty).
    pub fn mean_cost_usd(&self) -> f64 {
        if self.finished == 0 {
            0.0
        } else {
            self.cost_usd / self.finished as f64
        }
    }

    /// Total cost / completed tasks (infinite when none completed).
    pub fn cost_per_completed_usd(&self) -> f64 {
        if self.completed == 0 {
            f64::INFINITY
        } else {
            self.cost_usd / self.completed as f64
        }
    }

    /// Mean duration in seconds (0 when empty).
    pub fn mean_duration_secs(&self) -> f64 {
        if self.durations.is_empty() {
            0.0
        } else {
            self.durations.iter().sum::<f64>() / self.durations.len() as f64
        }
    }

    /// Median duration in seconds (0 when empty).
    pub fn median_duration_secs(&self) -> f64 {
        let d = &self.durations;
        match d.len() {
            0 => 0.0,
            n if !n.is_multiple_of(2) => d[n / 2],
            n => (d[n / 2 - 1] + d[n / 2]) / 2.0,
        }
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(completed: bool, fell_back: bool, cost: f64, secs: u64) -> Outcome {
        Outcome {
            task_id: "t".into(),
            policy_version: "v".into(),
            multi: true,
            completed,
            fell_back,
            cost_usd: cost,
            duration: Duration::from_secs(secs),
        }
    }

    #[test]
    fn group_stats_count_rates_cost_and_median() {
        let o = [
            outcome(true, false, 1.0, 10),
            outcome(true, true, 2.0, 30),
            outcome(false, false, 3.0, 20),
            outcome(true, false, 2.0, 40),
        ];
        let s = GroupStats::of(&o);
        assert_eq!((s.finished, s.completed, s.fell_back), (4, 3, 1));
        assert_eq!(s.success_rate(), 0.75);
        assert_eq!(s.fallback_rate(), 0.25);
        assert_eq!(s.mean_cost_usd(), 2.0);
        assert!((s.cost_per_completed_usd() - 8.0 / 3.0).abs() < 1e-9);
        assert_eq!(s.median_duration_secs(), 25.0);
        assert_eq!(s.mean_duration_secs(), 25.0);
    }

    #[test]
    fn an_empty_group_has_no_completed_cost() {
        let s = GroupStats::of(&[]);
        assert_eq!(s.success_rate(), 0.0);
        assert!(s.cost_per_completed_usd().is_infinite());
        assert_eq!(s.median_duration_secs(), 0.0);
    }
}
