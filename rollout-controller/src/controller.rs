//! The control loop: write a step, watch its outcomes, then advance, hold or roll back.
//!
//! Every `check_every` the controller takes operator requests, then judges the outcomes
//! of tasks routed by the policy version of the step in force (finished within the window
//! and since the step began). A failing gate rolls back to 0 at once, whatever the step's
//! age or a pause. Once the step is `interval` old, passing gates advance it (or complete
//! the rollout after the last step), and too little data records a hold, at most once per
//! interval.
//!
//! Each change is written to the policy first and recorded second: after a crash in
//! between, the restarted controller rewrites the recorded step's policy, so a step is
//! never skipped, and its event is only recorded once.

use crate::error::{Error, Result};
use crate::gates::{Gates, Verdict};
use crate::outcomes::{GroupStats, Outcome, OutcomeSource, RecordQuery};
use crate::state::{Event, EventKind, Request, RolloutState, RolloutStore, Status, now_ms};
use crate::writer::{PolicyWriter, validate, with_rollout_percent};
use service_kit::Shutdown;
use std::time::{Duration, UNIX_EPOCH};

/// Default steps, in percent.
pub const DEFAULT_STEPS: &[u32] = &[10, 25, 50, 100];

/// Gauge: `rollout_percent` the controller has in force.
pub const PERCENT_METRIC: &str = "taskrouter_rollout_percent";
/// Gauge: index of the step in force.
pub const STEP_METRIC: &str = "taskrouter_rollout_step";
/// Counter of recorded events, labelled `kind`.
pub const EVENTS_METRIC: &str = "taskrouter_rollout_events_total";
/// Counter of gate failures, labelled `gate`.
pub const GATE_FAILURES_METRIC: &str = "taskrouter_rollout_gate_failures_total";
/// Gauge: finished tasks in the current window, labelled `path` (`multi`, `single`).
pub const WINDOW_FINISHED_METRIC: &str = "taskrouter_rollout_window_finished_tasks";

/// How the controller moves.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// Steps in percent, increasing, each in 1..=100.
    pub steps: Vec<u32>,
    /// Least time at a step before it may advance.
    pub interval: Duration,
    /// How often requests and gates are checked.
    pub check_every: Duration,
    /// Only tasks finished this recently count (and never before the step began).
    pub window: Duration,
    /// Gate thresholds.
    pub gates: Gates,
    /// Candidate policy text; starts a rollout when none is active and the last one was
    /// not of this same candidate.
    pub candidate: Option<String>,
}

impl ControllerConfig {
    /// Checks the settings; the error names the flag.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.steps.is_empty() {
            return Err("--steps: at least one step is needed".into());
        }
        let mut last = 0;
        for &s in &self.steps {
            if s == 0 || s > 100 || s <= last {
                return Err(format!(
                    "--steps: {s} is not allowed (steps increase strictly, each 1..=100)"
                ));
            }
            last = s;
        }
        if self.interval.is_zero() {
            return Err("--interval: must be positive".into());
        }
        if self.check_every.is_zero() {
            return Err("--check-every: must be positive".into());
        }
        if self.window.is_zero() {
            return Err("--window: must be positive".into());
        }
        self.gates.validate()
    }
}

/// The rollout controller over a state store, an outcome source and a policy writer.
pub struct Controller<S, W> {
    store: RolloutStore,
    source: S,
    writer: W,
    config: ControllerConfig,
}

impl<S: OutcomeSource, W: PolicyWriter> Controller<S, W> {
    /// A controller; call [`Controller::run`].
    pub fn new(store: RolloutStore, source: S, writer: W, config: ControllerConfig) -> Self {
        Self {
            store,
            source,
            writer,
            config,
        }
    }

    /// Starts or resumes the rollout and drives it until it finishes or `shutdown` fires.
    /// Returns the last state (`None` when there was nothing to do). Errors before the
    /// first step (an invalid candidate, Redis down) are returned; later ones are logged
    /// and retried at the next check.
    pub async fn run(&self, shutdown: Shutdown) -> Result<Option<RolloutState>> {
        let Some(mut state) = self.start().await? else {
            return Ok(None);
        };
        while state.status.is_active() {
            tokio::select! {
                _ = shutdown.wait() => return Ok(Some(state)),
                _ = tokio::time::sleep(self.config.check_every) => {}
            }
            match self.check(state.clone()).await {
                Ok(next) => state = next,
                Err(e) => tracing::warn!(
                    rollout.id = %state.id,
                    error = %e,
                    "rollout check failed; retrying at the next check"
                ),
            }
        }
        Ok(Some(state))
    }

    /// Resumes the active rollout, or starts one from the candidate.
    async fn start(&self) -> Result<Option<RolloutState>> {
        let stored = self.store.load().await?;
        if let Some(state) = stored.as_ref().filter(|s| s.status.is_active()) {
            let (text, version) = with_rollout_percent(&state.base_policy, state.percent)?;
            let in_force = self
                .writer
                .read()
                .await
                .ok()
                .and_then(|t| validate(&t).ok());
            if in_force.as_deref() != Some(version.as_str()) {
                self.writer.write(&text).await?;
            }
            let mut state = state.clone();
            state.policy_version = version;
            self.record(&mut state, EventKind::Resumed, None, String::new())
                .await?;
            return Ok(Some(state));
        }
        let Some(candidate) = &self.config.candidate else {
            tracing::info!("no active rollout and no --candidate: nothing to do");
            return Ok(None);
        };
        if let Some(last) = &stored
            && last.base_policy == *candidate
        {
            tracing::info!(
                rollout.id = %last.id,
                status = %last.status,
                "this candidate's rollout already finished; nothing to do"
            );
            return Ok(None);
        }
        let first = self.config.steps[0];
        let (text, version) = with_rollout_percent(candidate, first)?;
        self.writer.write(&text).await?;
        let mut state = RolloutState {
            id: format!("rollout-{}", uuid::Uuid::new_v4().simple()),
            status: Status::Running,
            steps: self.config.steps.clone(),
            step_index: 0,
            percent: first,
            step_started_at_ms: now_ms(),
            policy_version: version,
            base_policy: candidate.clone(),
            gates: self.config.gates.clone(),
            reason: String::new(),
            last_hold_at_ms: 0,
            updated_at_ms: now_ms(),
        };
        self.record(&mut state, EventKind::Step, None, String::new())
            .await?;
        Ok(Some(state))
    }

    /// One check: operator requests, then gates.
    async fn check(&self, mut state: RolloutState) -> Result<RolloutState> {
        if let Some(request) = self.store.take_request().await? {
            match self.apply(state.clone(), request).await {
                Ok(next) => state = next,
                Err(e) => {
                    // The policy write failed (a 409 Conflict, the API or the disk):
                    // the request stays pending for the next check instead of being lost.
                    self.store.restore_request(request).await?;
                    return Err(e);
                }
            }
        }
        if !state.status.is_active() {
            return Ok(state);
        }
        let now = now_ms();
        let window_ms = u64::try_from(self.config.window.as_millis()).unwrap_or(u64::MAX);
        let since_ms = state.step_started_at_ms.max(now.saturating_sub(window_ms));
        let since = UNIX_EPOCH + Duration::from_millis(since_ms);
        let query = RecordQuery {
            policy_version: Some(state.policy_version.clone()),
            ..RecordQuery::since(since)
        };
        let outcomes: Vec<Outcome> = self
            .source
            .finished(&query)
            .await?
            .iter()
            .map(Outcome::of)
            // The source filters too; this keeps a looser source from skewing the gates.
            .filter(|o| o.policy_version == state.policy_version)
            .collect();
        let multi = GroupStats::of(outcomes.iter().filter(|o| o.multi));
        let single = GroupStats::of(outcomes.iter().filter(|o| !o.multi));
        metrics::gauge!(WINDOW_FINISHED_METRIC, "path" => "multi").set(multi.finished as f64);
        metrics::gauge!(WINDOW_FINISHED_METRIC, "path" => "single").set(single.finished as f64);

        let interval_ms = u64::try_from(self.config.interval.as_millis()).unwrap_or(u64::MAX);
        let step_done = now.saturating_sub(state.step_started_at_ms) >= interval_ms;
        match state.gates.judge(&multi, &single) {
            Verdict::Fail { gate, detail } => {
                metrics::counter!(GATE_FAILURES_METRIC, "gate" => gate.name()).increment(1);
                self.to_zero(
                    &mut state,
                    Status::RolledBack,
                    EventKind::Rollback,
                    Some(gate.name()),
                    detail,
                )
                .await?;
            }
            _ if state.status == Status::Paused => {}
            Verdict::Pass if step_done => self.advance(&mut state).await?,
            Verdict::Insufficient(why)
                if step_done
                    && now.saturating_sub(state.last_hold_at_ms.max(state.step_started_at_ms))
                        >= interval_ms =>
            {
                state.last_hold_at_ms = now;
                self.record(&mut state, EventKind::Hold, None, why).await?;
            }
            _ => {}
        }
        Ok(state)
    }

    async fn apply(&self, mut state: RolloutState, request: Request) -> Result<RolloutState> {
        match (request, state.status) {
            (Request::Pause, Status::Running) => {
                state.status = Status::Paused;
                self.record(
                    &mut state,
                    EventKind::Pause,
                    None,
                    "paused by operator".into(),
                )
                .await?;
            }
            (Request::Resume, Status::Paused) => {
                state.status = Status::Running;
                self.record(&mut state, EventKind::Resume, None, String::new())
                    .await?;
            }
            (Request::Abort, status) if status.is_active() => {
                self.to_zero(
                    &mut state,
                    Status::Aborted,
                    EventKind::Abort,
                    None,
                    "aborted by operator".into(),
                )
                .await?;
            }
            (request, status) => tracing::info!(
                rollout.id = %state.id,
                request = request.name(),
                status = %status,
                "operator request does not apply; ignored"
            ),
        }
        Ok(state)
    }

    async fn advance(&self, state: &mut RolloutState) -> Result<()> {
        let next = state.step_index + 1;
        let Some(&percent) = state.steps.get(next) else {
            state.status = Status::Completed;
            return self
                .record(state, EventKind::Complete, None, String::new())
                .await;
        };
        let (text, version) = with_rollout_percent(&state.base_policy, percent)?;
        self.writer.write(&text).await?;
        state.step_index = next;
        state.percent = percent;
        state.policy_version = version;
        state.step_started_at_ms = now_ms();
        state.last_hold_at_ms = 0;
        self.record(state, EventKind::Step, None, String::new())
            .await
    }

    /// The kill switch path: `rollout_percent = 0` now, then the record.
    async fn to_zero(
        &self,
        state: &mut RolloutState,
        status: Status,
        kind: EventKind,
        gate: Option<&str>,
        reason: String,
    ) -> Result<()> {
        let (text, version) = with_rollout_percent(&state.base_policy, 0)?;
        self.writer.write(&text).await?;
        state.status = status;
        state.percent = 0;
        state.policy_version = version;
        self.record(state, kind, gate, reason).await
    }

    async fn record(
        &self,
        state: &mut RolloutState,
        kind: EventKind,
        gate: Option<&str>,
        reason: String,
    ) -> Result<()> {
        let now = now_ms();
        state.updated_at_ms = now;
        if kind != EventKind::Resumed && kind != EventKind::Resume && kind != EventKind::Step {
            state.reason = reason.clone();
        }
        let event = Event {
            rollout: state.id.clone(),
            kind,
            percent: state.percent,
            step_index: state.step_index,
            policy_version: state.policy_version.clone(),
            gate: gate.map(str::to_string),
            reason: reason.clone(),
            at_ms: now,
        };
        self.store.record(state, &event).await?;
        metrics::counter!(EVENTS_METRIC, "kind" => kind.name()).increment(1);
        metrics::gauge!(PERCENT_METRIC).set(f64::from(state.percent));
        metrics::gauge!(STEP_METRIC).set(state.step_index as f64);
        tracing::info!(
            rollout.id = %state.id,
            event = kind.name(),
            status = %state.status,
            percent = state.percent,
            step = state.step_index,
            policy.version = %state.policy_version,
            gate = gate.unwrap_or(""),
            reason = %reason,
            "rollout {}",
            kind.name()
        );
        Ok(())
    }
}

/// Reads a candidate policy file and checks it the way the router would.
pub fn read_candidate(path: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::PolicyFile {
        path: path.to_path_buf(),
        source,
    })?;
    validate(&text)?;
    Ok(text)
}
