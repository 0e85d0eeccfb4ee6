//! What the stores' task listing works with: the filter, the keyset cursor, a page, and
//! the per-task index entry (the attributes the secondary indexes are keyed on).
//!
//! Listing order is last update first; ties on the update time break on the task id
//! (descending), so `(updated_ms, task_id)` is a total order and a cursor is exact.

use prost_types::Timestamp;
use serde::{Deserialize, Serialize};
use taskrouter_proto::v1::{ExecutionPath, ReasonCode, SessionState, Task, TaskStatus};

/// The label holding a task's tenant.
pub const TENANT_LABEL: &str = "tenant";

/// Every status a stored task can have, in proto order (what counts cover).
pub const STATUSES: [TaskStatus; 7] = [
    TaskStatus::Pending,
    TaskStatus::InProgress,
    TaskStatus::Completed,
    TaskStatus::Failed,
    TaskStatus::Cancelled,
    TaskStatus::BudgetExhausted,
    TaskStatus::WaitingApproval,
];

/// Which tasks to list. `None`/empty fields match anything; fields combine with AND.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct TaskFilter {
    /// Any of these statuses (empty = any).
    pub statuses: Vec<TaskStatus>,
    /// The execution path.
    pub path: Option<ExecutionPath>,
    /// A reason code of the routing analysis.
    pub reason: Option<ReasonCode>,
    /// The `tenant` label.
    pub tenant: Option<String>,
    /// The deciding policy version.
    pub policy_version: Option<String>,
    /// Created at or after (ms since the epoch).
    pub created_from_ms: Option<i64>,
    /// Created before (ms since the epoch).
    pub created_to_ms: Option<i64>,
    /// Updated at or after (ms since the epoch).
    pub updated_from_ms: Option<i64>,
    /// Updated before (ms since the epoch).
    pub updated_to_ms: Option<i64>,
}

impl TaskFilter {
    /// The statuses counts are reported for: the filter's, or every status.
    pub fn counted_statuses(&self) -> Vec<TaskStatus> {
        if self.statuses.is_empty() {
            STATUSES.to_vec()
        } else {
            let mut s = self.statuses.clone();
            s.sort_by_key(|s| *s as i32);
            s.dedup();
            s
        }
    }

    /// Whether a task with these attributes matches.
    pub fn matches(&self, e: &IndexEntry) -> bool {
        let in_range = |v: i64, from: Option<i64>, to: Option<i64>| {
            from.is_none_or(|f| v >= f) && to.is_none_or(|t| v < t)
        };
        (self.statuses.is_empty() || self.statuses.iter().any(|s| s.as_str_name() == e.s))
            && self.path.is_none_or(|p| p.as_str_name() == e.p)
            && self
                .reason
                .is_none_or(|r| e.r.split(',').any(|c| c == r.as_str_name()))
            && self
                .tenant
                .as_deref()
                .is_none_or(|t| e.t.as_deref() == Some(t))
            && self.policy_version.as_deref().is_none_or(|p| p == e.y)
            && in_range(e.c, self.created_from_ms, self.created_to_ms)
            && in_range(e.u, self.updated_from_ms, self.updated_to_ms)
    }
}

/// Position after the last task of a page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// Its update time (ms since the epoch).
    pub updated_ms: i64,
    /// Its id.
    pub task_id: String,
}

impl Cursor {
    /// Whether a task at `(updated_ms, task_id)` comes after this cursor in listing order.
    pub fn precedes(&self, updated_ms: i64, task_id: &str) -> bool {
        updated_ms < self.updated_ms || (updated_ms == self.updated_ms && task_id < &*self.task_id)
    }
}

/// One page request.
#[derive(Clone, Debug)]
pub struct ListQuery {
    /// Which tasks.
    pub filter: TaskFilter,
    /// At most this many (1..=1000, checked by the caller).
    pub page_size: usize,
    /// Continue after this position.
    pub after: Option<Cursor>,
}

/// One listed task: its state (without the task and iteration log) and tenant.
#[derive(Clone, Debug, PartialEq)]
pub struct ListedTask {
    /// The state.
    pub state: SessionState,
    /// Its `tenant` label.
    pub tenant: String,
}

/// One page of a listing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ListPage {
    /// The tasks, last updated first.
    pub tasks: Vec<ListedTask>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<Cursor>,
    /// Matching tasks per status (for [`TaskFilter::counted_statuses`]), over all pages.
    pub counts: Vec<(TaskStatus, u64)>,
}

/// The attributes a task is indexed on. Field names are short because the Redis
/// store keeps one of these (as JSON) per task.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// Checkpoint version (an older entry never replaces a newer one).
    #[serde(default)]
    pub v: u64,
    /// Status name.
    pub s: String,
    /// Execution path name; empty when undecided.
    pub p: String,
    /// Reason code names, comma-separated (Lua's JSON turns an empty array into `{}`).
    pub r: String,
    /// Tenant label; `None` in a checkpoint means "unchanged" (the task is not resent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub t: Option<String>,
    /// Policy version; empty when not routed.
    pub y: String,
    /// Created, ms since the epoch.
    pub c: i64,
    /// Updated, ms since the epoch (the listing score).
    pub u: i64,
    /// Archive expiry, ms since the epoch; 0 when not archived.
    #[serde(default)]
    pub x: i64,
}

/// The tenant of `task` (empty without a tenant label).
pub fn tenant_of(task: &Task) -> String {
    task.labels.get(TENANT_LABEL).cloned().unwrap_or_default()
}

/// Milliseconds since the epoch of a timestamp (0 when unset).
pub fn ts_ms(t: Option<&Timestamp>) -> i64 {
    t.map_or(0, |t| {
        t.seconds
            .saturating_mul(1000)
            .saturating_add(i64::from(t.nanos / 1_000_000))
    })
}

impl IndexEntry {
    /// The entry of `state`; the tenant is read from its task when it carries one.
    pub fn of(state: &SessionState) -> Self {
        let path = ExecutionPath::try_from(state.path).unwrap_or_default();
        let analysis = state.analysis.as_ref();
        let created = ts_ms(state.created_at.as_ref());
        let updated = match ts_ms(state.updated_at.as_ref()) {
            0 => created,
            u => u,
        };
        Self {
            v: state.version,
            s: TaskStatus::try_from(state.status)
                .unwrap_or_default()
                .as_str_name()
                .to_string(),
            p: if path == ExecutionPath::Unspecified {
                String::new()
            } else {
                path.as_str_name().to_string()
            },
            r: analysis
                .map(|a| {
                    a.reasons
                        .iter()
                        .map(|r| {
                            ReasonCode::try_from(r.code)
                                .unwrap_or_default()
                                .as_str_name()
                                .to_string()
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default(),
            t: state.task.as_ref().map(tenant_of),
            y: analysis
                .map(|a| a.policy_version.clone())
                .unwrap_or_default(),
            c: created,
            u: updated,
            x: 0,
        }
    }

    /// The entry as the JSON the Redis scripts read.
    pub fn to_json(&self) -> String {
        // Serialising plain strings and integers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}
