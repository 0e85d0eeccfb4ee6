//! Outcomes of finished tasks, read from the executor's records.
//!
//! An [`OutcomeSource`] lists the executor's SessionStates; [`Outcome`] is the part of one
//! that gates and diffs need (never the description); [`GroupStats`] summarises a group.
//! The first source, [`RedisRecords`], scans the executor's state hashes directly (key
//! layout in `executor_service::session`); the executor's `List` RPC can replace it
//! without touching the callers.

use crate::error::{Error, Result};
use executor_service::session::{RedisStore, TaskKeys};
use redis::aio::ConnectionManager;
use serde::Serialize;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use taskrouter_proto::v1::{RoutingAnalysis, RoutingDecision, SessionState, TaskStatus};

/// SCAN batch size: large enough to keep round trips few, small enough not to stall Redis.
const SCAN_COUNT: usize = 500;

/// Where task records come from.
pub trait OutcomeSource {
    /// Every task record that reached a final status at or after `since`.
    fn finished_since(
        &self,
        since: SystemTime,
    ) -> impl std::future::Future<Output = Result<Vec<SessionState>>> + Send;
}

/// Task records read straight from the executor's Redis keys.
#[derive(Clone)]
pub struct RedisRecords {
    conn: ConnectionManager,
    prefix: String,
}

impl RedisRecords {
    /// Records under the executor's key `prefix` (its `--key-prefix`).
    pub fn new(conn: ConnectionManager, prefix: impl Into<String>) -> Self {
        Self {
            conn,
            prefix: prefix.into(),
        }
    }
}

impl OutcomeSource for RedisRecords {
    async fn finished_since(&self, since: SystemTime) -> Result<Vec<SessionState>> {
        let mut conn = self.conn.clone();
        // `{` and `}` are literal in SCAN patterns only when escaped.
        let pattern = format!("{}:\\{{*\\}}:state", glob_escape(&self.prefix));
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT)
                // Only the executor's state hashes (Redis >= 6).
                .arg("TYPE")
                .arg("hash")
                .query_async(&mut conn)
                .await?;
            keys.extend(batch);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        let mut out = Vec::new();
        for key in keys {
            let (data, task, version): (Option<Vec<u8>>, Option<Vec<u8>>, Option<u64>) =
                redis::cmd("HMGET")
                    .arg(&key)
                    .arg("data")
                    .arg("task")
                    .arg("version")
                    .query_async(&mut conn)
                    .await?;
            let Some(data) = data else { continue };
            let state = RedisStore::decode_state(
                &key,
                &data,
                &task.unwrap_or_default(),
                version.unwrap_or(0),
            )
            .map_err(|e| Error::TaskRecord(e.to_string()))?;
            if is_final(state.status)
                && state
                    .finished_at
                    .as_ref()
                    .is_some_and(|t| timestamp(t) >= since)
            {
                out.push(state);
            }
        }
        Ok(out)
    }
}

/// The state key of `task_id`, for messages.
pub fn state_key(prefix: &str, task_id: &str) -> String {
    TaskKeys::new(prefix, task_id).state
}

fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\' | '{' | '}') {
            out.push('\\');
        }
        out.push(c);
    }
    out
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

    #[test]
    fn scan_patterns_escape_glob_characters() {
        assert_eq!(glob_escape("tr*x"), "tr\\*x");
        assert_eq!(
            state_key("taskrouter", "T-1"),
            "taskrouter:{T-1}:state".to_string()
        );
    }
}
