//! The rollout's record in Redis: its state, its event history and operator requests.
//!
//! Keys (all under the Redis Cluster hash tag `{rollout}`, so one script can touch them;
//! the `rollout:` before the tag keeps them out of the executor's `<prefix>:{<task id>}:…`
//! namespace):
//! - `<prefix>:rollout:{rollout}:state` — JSON [`RolloutState`], written only by the
//!   controller;
//! - `<prefix>:rollout:{rollout}:events` — stream of [`Event`]s (field `event`, JSON), capped;
//! - `<prefix>:rollout:{rollout}:control` — a pending operator request (`pause`, `resume`,
//!   `abort`), set by `taskctl rollout` and consumed by the controller.
//!
//! The state and its event are written by one Lua script, so a crash can never leave a
//! step recorded without its event or the other way round.

use crate::error::{Error, Result};
use crate::gates::Gates;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// Most events kept in the stream (approximate trim).
pub const MAX_EVENTS: usize = 10_000;

/// Phase of a rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Moving through the steps.
    Running,
    /// Held at the current step by an operator; failing gates still roll back.
    Paused,
    /// Reached the last step and it held.
    Completed,
    /// A gate failed; `rollout_percent` was set to 0.
    RolledBack,
    /// Stopped by an operator; `rollout_percent` was set to 0.
    Aborted,
}

impl Status {
    /// Whether the controller still has work to do.
    pub fn is_active(self) -> bool {
        matches!(self, Status::Running | Status::Paused)
    }

    /// Name in logs and output.
    pub fn name(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Completed => "completed",
            Status::RolledBack => "rolled_back",
            Status::Aborted => "aborted",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything the controller needs to resume after a restart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutState {
    /// Id of this rollout (one per `--new` start).
    pub id: String,
    /// Phase.
    pub status: Status,
    /// The configured steps, in percent.
    pub steps: Vec<u32>,
    /// Index into `steps` of the step in force.
    pub step_index: usize,
    /// `rollout_percent` in force (0 after a rollback or abort).
    pub percent: u32,
    /// When the step in force was written, ms since the epoch.
    pub step_started_at_ms: u64,
    /// Version of the policy written for the step in force.
    pub policy_version: String,
    /// The candidate policy text each step is derived from.
    pub base_policy: String,
    /// The gates in use.
    pub gates: Gates,
    /// Why the last hold, rollback or abort happened.
    pub reason: String,
    /// When the last hold was recorded (one per interval), ms since the epoch.
    pub last_hold_at_ms: u64,
    /// Last write, ms since the epoch.
    pub updated_at_ms: u64,
}

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A new step's policy was written.
    Step,
    /// The interval passed without enough data; the step stays.
    Hold,
    /// A gate failed; rolled back to 0.
    Rollback,
    /// The last step held; done.
    Complete,
    /// An operator paused.
    Pause,
    /// An operator resumed.
    Resume,
    /// An operator aborted; rolled back to 0.
    Abort,
    /// The controller restarted and picked the rollout up.
    Resumed,
}

impl EventKind {
    /// Name in logs, metric labels and output.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Step => "step",
            EventKind::Hold => "hold",
            EventKind::Rollback => "rollback",
            EventKind::Complete => "complete",
            EventKind::Pause => "pause",
            EventKind::Resume => "resume",
            EventKind::Abort => "abort",
            EventKind::Resumed => "resumed",
        }
    }
}

/// One entry of the history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Rollout id.
    pub rollout: String,
    /// What happened.
    pub kind: EventKind,
    /// `rollout_percent` in force afterwards.
    pub percent: u32,
    /// Step index afterwards.
    pub step_index: usize,
    /// Policy version in force afterwards.
    pub policy_version: String,
    /// The failing gate (rollbacks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<String>,
    /// Why (holds, rollbacks, aborts).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// When, ms since the epoch.
    pub at_ms: u64,
}

/// An operator request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Hold at the current step.
    Pause,
    /// Continue from the current step.
    Resume,
    /// Roll back to 0 and stop.
    Abort,
}

impl Request {
    /// Name stored in the control key.
    pub fn name(self) -> &'static str {
        match self {
            Request::Pause => "pause",
            Request::Resume => "resume",
            Request::Abort => "abort",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "pause" => Some(Request::Pause),
            "resume" => Some(Request::Resume),
            "abort" => Some(Request::Abort),
            _ => None,
        }
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// KEYS[1] state, KEYS[2] events; ARGV[1] state JSON, ARGV[2] event JSON, ARGV[3] max events.
/// Writes the state and appends its event in one step.
const RECORD_SCRIPT: &str = r"
redis.call('SET', KEYS[1], ARGV[1])
return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'event', ARGV[2])
";

/// The rollout's keys in one Redis.
#[derive(Clone)]
pub struct RolloutStore {
    conn: ConnectionManager,
    state_key: String,
    events_key: String,
    control_key: String,
    script: redis::Script,
}

impl RolloutStore {
    /// The rollout record under `prefix` (the executor's `--key-prefix`).
    pub fn new(conn: ConnectionManager, prefix: &str) -> Self {
        Self {
            conn,
            state_key: format!("{prefix}:rollout:{{rollout}}:state"),
            events_key: format!("{prefix}:rollout:{{rollout}}:events"),
            control_key: format!("{prefix}:rollout:{{rollout}}:control"),
            script: redis::Script::new(RECORD_SCRIPT),
        }
    }

    /// The stored state, if any.
    pub async fn load(&self) -> Result<Option<RolloutState>> {
        let mut conn = self.conn.clone();
        let raw: Option<String> = conn.get(&self.state_key).await?;
        raw.map(|s| {
            serde_json::from_str(&s).map_err(|e| Error::CorruptState {
                key: self.state_key.clone(),
                reason: e.to_string(),
            })
        })
        .transpose()
    }

    /// Writes `state` and appends `event`, atomically.
    pub async fn record(&self, state: &RolloutState, event: &Event) -> Result<()> {
        let state_json = serde_json::to_string(state)
            .map_err(|e| Error::TaskRecord(format!("cannot encode state: {e}")))?;
        let event_json = serde_json::to_string(event)
            .map_err(|e| Error::TaskRecord(format!("cannot encode event: {e}")))?;
        let mut conn = self.conn.clone();
        let _: String = self
            .script
            .key(&self.state_key)
            .key(&self.events_key)
            .arg(state_json)
            .arg(event_json)
            .arg(MAX_EVENTS)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// The last `count` events, oldest first.
    pub async fn events(&self, count: usize) -> Result<Vec<Event>> {
        let mut conn = self.conn.clone();
        let reply: redis::streams::StreamRangeReply = conn
            .xrevrange_count(&self.events_key, "+", "-", count)
            .await?;
        let mut out = Vec::new();
        for entry in reply.ids.into_iter().rev() {
            let Some(raw) = entry.get::<String>("event") else {
                continue;
            };
            let event = serde_json::from_str(&raw).map_err(|e| Error::CorruptState {
                key: self.events_key.clone(),
                reason: format!("entry {}: {e}", entry.id),
            })?;
            out.push(event);
        }
        Ok(out)
    }

    /// Leaves an operator request for the controller (replacing an unconsumed one).
    pub async fn request(&self, request: Request) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: () = conn.set(&self.control_key, request.name()).await?;
        Ok(())
    }

    /// The pending operator request, without consuming it.
    pub async fn pending(&self) -> Result<Option<Request>> {
        let mut conn = self.conn.clone();
        let raw: Option<String> = conn.get(&self.control_key).await?;
        Ok(raw.as_deref().and_then(Request::parse))
    }

    /// Takes the pending operator request, if any.
    pub async fn take_request(&self) -> Result<Option<Request>> {
        let mut conn = self.conn.clone();
        let raw: Option<String> = redis::cmd("GETDEL")
            .arg(&self.control_key)
            .query_async(&mut conn)
            .await?;
        Ok(raw.as_deref().and_then(Request::parse))
    }

    /// Puts back a request taken by [`RolloutStore::take_request`] that could not be
    /// applied, unless the operator has made a newer one since.
    pub async fn restore_request(&self, request: Request) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: Option<String> = redis::cmd("SET")
            .arg(&self.control_key)
            .arg(request.name())
            .arg("NX")
            .query_async(&mut conn)
            .await?;
        Ok(())
    }
}
