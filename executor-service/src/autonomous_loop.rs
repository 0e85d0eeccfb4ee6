//! The autonomous loop (the seed's `AutonomousLoop`), the executor's engine: takes a
//! task, routes it, runs it on the single path (`iteration_loop`) or the team path
//! (`team_lead`) with automatic fallback, and finishes it. The queue workers that feed
//! it live in `worker`; the gRPC handlers call it in `service`.

use crate::agent::{RetryPolicy, SharedAgent};
use crate::error::{Error, Result};
use crate::queue::{Delivery, WorkQueue};
use crate::routing::{RouterLink, single_agent_analysis};
use crate::run::{PathOutcome, RunCtx, RunOptions, Stop};
use crate::session::active::now;
use crate::session::{ActiveSession, CreateOutcome, Heartbeat, SessionStore, StoredEvent};
use crate::settings::{Settings, WhenRouterUnavailable};
use crate::workspace::{TaskWorkspace, Workspaces};
use prost::Message as _;
use service_kit::Shutdown;
use std::sync::Arc;
use std::time::Duration;
use taskrouter_proto::SESSION_SCHEMA_VERSION;
use taskrouter_proto::v1::{
    ApprovalGate, ApprovalRequested, BudgetKind, BudgetStopped, ExecutionPath, FallbackCause,
    FallbackRecord, Finished, GateRequirement, IterationRecord, ProgressEvent, ReasonCode,
    RejectAction, Routed, RoutingAnalysis, RoutingDecision, RunResult, SessionState, Submitted,
    Task, TaskStatus, TimeoutAction, progress_event,
};
use tokio::sync::Mutex;

/// The executor's engine.
pub struct AutonomousLoop {
    store: Arc<dyn SessionStore>,
    queue: Arc<dyn WorkQueue>,
    router: Option<RouterLink>,
    agent: SharedAgent,
    retry: RetryPolicy,
    settings: Settings,
    shutdown: Shutdown,
    workspaces: Option<Arc<Workspaces>>,
}

/// A state's status (UNSPECIFIED when unknown).
pub fn status_of(s: &SessionState) -> TaskStatus {
    TaskStatus::try_from(s.status).unwrap_or(TaskStatus::Unspecified)
}

/// Whether a status is final.
pub fn is_final(status: TaskStatus) -> bool {
    matches!(
        status,
        TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled
    )
}

/// Whether a task is parked: waiting for a person, or stopped by a budget. No worker
/// runs a parked task; a decision (or a resume with a larger budget) moves it on.
pub fn is_parked(status: TaskStatus) -> bool {
    matches!(
        status,
        TaskStatus::WaitingApproval | TaskStatus::BudgetExhausted
    )
}

fn path_label(path: i32) -> &'static str {
    match ExecutionPath::try_from(path) {
        Ok(ExecutionPath::MultiAgent) => "multi",
        Ok(ExecutionPath::SingleAgent) => "single",
        _ => "none",
    }
}

fn cause_label(cause: FallbackCause) -> &'static str {
    match cause {
        FallbackCause::AnalysisFailed => "analysis_failed",
        FallbackCause::SpecialistTimeout => "specialist_timeout",
        FallbackCause::SpecialistFailed => "specialist_failed",
        FallbackCause::SynthesisFailed => "synthesis_failed",
        FallbackCause::RouterUnavailable => "router_unavailable",
        FallbackCause::MultiAgentUnavailable => "multi_agent_unavailable",
        FallbackCause::Unspecified => "unspecified",
    }
}

/// The run result for a state, with `before` iterations done before this run.
pub fn run_result(state: &SessionState, before: u32) -> RunResult {
    RunResult {
        task_id: state.task_id.clone(),
        status: state.status,
        routing_decision: state.analysis.as_ref().map(|a| a.decision).unwrap_or(0),
        path: state.path,
        iterations_this_run: state.iteration_count.saturating_sub(before),
        total_iterations: state.iteration_count,
        fallback: state.fallback.clone(),
        cost_usd: state.cost_usd,
        result: state.result.clone(),
        state: Some(state.clone()),
        repos: state.repos.clone(),
    }
}

impl AutonomousLoop {
    /// Assembles the engine. `router = None` means "no router configured": every task
    /// takes the safe default with reason ROUTER_UNAVAILABLE.
    pub fn new(
        store: Arc<dyn SessionStore>,
        queue: Arc<dyn WorkQueue>,
        router: Option<RouterLink>,
        agent: SharedAgent,
        retry: RetryPolicy,
        settings: Settings,
        shutdown: Shutdown,
    ) -> Self {
        Self {
            store,
            queue,
            router,
            agent,
            retry,
            settings,
            shutdown,
            workspaces: None,
        }
    }

    /// The same engine with durable git workspaces (see [`crate::workspace`]).
    pub fn with_workspaces(mut self, workspaces: Option<Arc<Workspaces>>) -> Self {
        self.workspaces = workspaces;
        self
    }

    /// The state store.
    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    /// The work queue.
    pub fn queue(&self) -> &Arc<dyn WorkQueue> {
        &self.queue
    }

    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The shutdown signal the engine and its workers obey.
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// Opens `task_id` for writing under a fresh lease of this worker (see
    /// [`ActiveSession::open`]); `None` when another worker holds it.
    pub(crate) async fn open_session(&self, task_id: &str) -> Result<Option<ActiveSession>> {
        ActiveSession::open(
            self.store.clone(),
            task_id,
            &self.settings.worker_id,
            self.settings.lease_ttl,
            self.settings.checkpoint_retry,
        )
        .await
    }

    /// Whether durable git workspaces are configured (task repositories are then git
    /// repositories and their names must be valid as such).
    pub fn has_workspaces(&self) -> bool {
        self.workspaces.is_some()
    }

    /// The task's workspaces for a run under `session`'s lease: on when workspaces are
    /// configured and the task names repositories.
    fn task_workspace(&self, session: &ActiveSession) -> Option<TaskWorkspace> {
        let ws = self.workspaces.as_ref()?;
        if session.task().repositories.is_empty() {
            return None;
        }
        Some(TaskWorkspace::new(
            ws.clone(),
            &session.state.task_id,
            session.lease().fencing_token,
        ))
    }

    fn new_state(
        &self,
        task: Task,
        max_iterations: u32,
        use_multi: Option<bool>,
        budget_usd: Option<f64>,
    ) -> SessionState {
        let at = now();
        SessionState {
            schema_version: SESSION_SCHEMA_VERSION,
            task_id: task.id.clone(),
            task: Some(task),
            status: TaskStatus::Pending as i32,
            max_iterations: if max_iterations == 0 {
                self.settings.default_max_iterations
            } else {
                max_iterations
            },
            force_single_agent: use_multi == Some(false),
            budget_usd: budget_usd.unwrap_or(0.0),
            created_at: Some(at),
            updated_at: Some(at),
            ..Default::default()
        }
    }

    fn event(task_id: &str, kind: progress_event::Kind) -> ProgressEvent {
        ProgressEvent {
            task_id: task_id.to_string(),
            sequence: 0,
            at: Some(now()),
            kind: Some(kind),
        }
    }

    /// Enqueues a task (idempotent per id). Returns the state and whether it was created.
    pub async fn submit(
        &self,
        task: Task,
        max_iterations: u32,
        use_multi_agent: Option<bool>,
        budget_usd: Option<f64>,
        traceparent: &str,
    ) -> Result<(SessionState, bool)> {
        if self.shutdown.is_triggered() {
            return Err(Error::ShuttingDown);
        }
        let id = task.id.clone();
        let state = self.new_state(task, max_iterations, use_multi_agent, budget_usd);
        // Queued first, carrying the initial state: if this process stops before the
        // state is stored, the worker that reads the entry stores it: nothing is left
        // PENDING without an entry, with or without the caller's retry. Queueing is
        // idempotent per id, so a PENDING task is never queued twice.
        self.queue
            .enqueue(&id, traceparent, &state.encode_to_vec())
            .await?;
        match self.create_state(&state).await? {
            CreateOutcome::Created(state) => {
                tracing::info!(task_id = %id, "task submitted");
                Ok((state, true))
            }
            // A worker that read the entry first stored exactly this state.
            CreateOutcome::Existing(stored)
                if stored.created_at == state.created_at && stored.task == state.task =>
            {
                tracing::info!(task_id = %id, "task submitted");
                Ok((stored, true))
            }
            CreateOutcome::Existing(state) => Ok((state, false)),
        }
    }

    /// Stores a new task's state with its `Submitted` event (idempotent per id).
    pub(crate) async fn create_state(&self, state: &SessionState) -> Result<CreateOutcome> {
        let ev = Self::event(
            &state.task_id,
            progress_event::Kind::Submitted(Submitted {}),
        );
        self.store.create(state, &ev).await
    }

    /// Loads a task's state.
    pub async fn get(&self, task_id: &str) -> Result<SessionState> {
        self.store.get(task_id).await
    }

    /// The most recent `limit` iteration records of a task, oldest first.
    pub async fn iterations(&self, task_id: &str, limit: usize) -> Result<Vec<IterationRecord>> {
        self.store.iterations(task_id, limit).await
    }

    /// A task's progress events after `cursor` (`None` = from the beginning), at most `limit`.
    pub async fn events_after(
        &self,
        task_id: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StoredEvent>> {
        self.store.events_after(task_id, cursor, limit).await
    }

    /// Like [`events_after`](Self::events_after), waiting up to `wait` for the first event
    /// when there is none yet (a blocking read, no polling).
    pub async fn wait_events(
        &self,
        task_id: &str,
        cursor: Option<&str>,
        limit: usize,
        wait: Duration,
    ) -> Result<Vec<StoredEvent>> {
        self.store.wait_events(task_id, cursor, limit, wait).await
    }

    /// Requests cancellation; a task nobody runs is cancelled at once.
    pub async fn cancel(&self, task_id: &str) -> Result<SessionState> {
        let state = self.get(task_id).await?;
        if is_final(status_of(&state)) {
            return Ok(state);
        }
        self.store
            .request_cancel(task_id, self.settings.archive_ttl)
            .await?;
        let Some(mut session) = self.open_session(task_id).await? else {
            // A worker is running it: it stops at its next iteration boundary.
            let mut state = self.get(task_id).await?;
            state.cancel_requested = true;
            return Ok(state);
        };
        let result = if is_final(status_of(&session.state)) {
            Ok(())
        } else {
            self.finish(&mut session, TaskStatus::Cancelled, "cancelled by request")
                .await
        };
        session.release().await;
        result.map(|_| session.full_state())
    }

    /// Marks the task final with `status` (and `error` unless completed), archives it and
    /// publishes `Finished`.
    pub(crate) async fn finish(
        &self,
        session: &mut ActiveSession,
        status: TaskStatus,
        error: &str,
    ) -> Result<()> {
        session.state.status = status as i32;
        session.state.cancel_requested |= status == TaskStatus::Cancelled;
        if status != TaskStatus::Completed {
            session.state.last_error = error.to_string();
        }
        let at = now();
        session.state.finished_at = Some(at);
        session.state.archived = true;
        let expires = std::time::SystemTime::now() + self.settings.archive_ttl;
        session.state.archive_expires_at = Some(prost_types::Timestamp::from(expires));
        let ev = session.event(progress_event::Kind::Finished(Finished {
            status: status as i32,
            total_iterations: session.state.iteration_count,
            cost_usd: session.state.cost_usd,
            error: session.state.last_error.clone(),
            repos: session.state.repos.clone(),
        }));
        session
            .commit(None, &[ev], Some(self.settings.archive_ttl))
            .await?;
        if let Some(ws) = &self.workspaces {
            // Branches stay on the remote; local worktrees go, mirrors stay (bounded).
            let repos: Vec<String> = session.state.repos.iter().map(|r| r.repo.clone()).collect();
            if let Err(e) = ws.finish(&session.state.task_id, &repos).await {
                tracing::warn!(task_id = %session.state.task_id, error = %e, "removing the task's worktrees failed");
            }
        }
        let outcome = match status {
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
            _ => "other",
        };
        crate::telemetry::task_finished(
            outcome,
            path_label(session.state.path),
            session.state.cost_usd,
        );
        tracing::info!(task_id = %session.state.task_id, status = outcome, iterations = session.state.iteration_count, "task finished");
        Ok(())
    }

    /// Runs a task in this call (the `Run` RPC). `task` carries the full task for a new
    /// id; with `resume` an existing task continues from its saved state.
    pub async fn run(&self, task: Task, opts: RunOptions) -> Result<RunResult> {
        let existing = self.store.load(&task.id).await?;
        match existing {
            Some(state) if !opts.resume => Err(Error::AlreadyExists {
                task_id: task.id,
                status: TaskStatus::try_from(state.status)
                    .map(|s| s.as_str_name().to_string())
                    .unwrap_or_default(),
            }),
            Some(state) => {
                self.run_existing(&task.id, &opts, false, None, Some(state))
                    .await
            }
            None => {
                let state = self.new_state(
                    task.clone(),
                    opts.max_iterations,
                    opts.use_multi_agent,
                    opts.budget_usd,
                );
                let ev = Self::event(&task.id, progress_event::Kind::Submitted(Submitted {}));
                let known = match self.store.create(&state, &ev).await? {
                    CreateOutcome::Created(s) | CreateOutcome::Existing(s) => s,
                };
                self.run_existing(&task.id, &opts, false, None, Some(known))
                    .await
            }
        }
    }

    /// Runs an existing task under a lease until it finishes, stops or hits its bound.
    /// `from_queue` makes a reached bound final (FAILED), since no caller will resume it.
    /// `known` is the state the caller has just read, if any (saves reading it again:
    /// everything decided from it is checked again under the lease).
    pub(crate) async fn run_existing(
        &self,
        task_id: &str,
        opts: &RunOptions,
        from_queue: bool,
        entry: Option<&Delivery>,
        known: Option<SessionState>,
    ) -> Result<RunResult> {
        let state = match known {
            Some(s) => s,
            None => self.get(task_id).await?,
        };
        let status = status_of(&state);
        if is_final(status) || (from_queue && is_parked(status)) {
            return Ok(run_result(&state, state.iteration_count));
        }
        if status == TaskStatus::WaitingApproval {
            return Err(Error::FailedPrecondition {
                task_id: task_id.to_string(),
                reason: "it waits for approval; use Approve or Reject".into(),
            });
        }
        let session = self
            .open_session(task_id)
            .await?
            .ok_or_else(|| Error::LeaseHeld {
                task_id: task_id.to_string(),
            })?;
        // Re-checked under the lease: a decision or a budget stop may have landed since.
        let status = status_of(&session.state);
        if is_final(status)
            || (from_queue && is_parked(status))
            || status == TaskStatus::WaitingApproval
        {
            session.release().await;
            return Ok(run_result(
                &session.full_state(),
                session.state.iteration_count,
            ));
        }
        // A previous holder that died mid-call left its reservations open: release them.
        let reconciled = if session.may_have_open_reservations() {
            self.store
                .reconcile_spend(task_id, &session.lease().owner)
                .await
        } else {
            Ok(0)
        };
        match reconciled {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(task_id = %task_id, reservations = n, "released a previous worker's spend reservations")
            }
            Err(e) => {
                session.release().await;
                return Err(e);
            }
        }
        let on_beat = {
            let queue = self.queue.clone();
            let consumer = self.settings.worker_id.clone();
            let entry = entry.cloned();
            move || {
                let queue = queue.clone();
                let consumer = consumer.clone();
                let entry = entry.clone();
                Box::pin(async move {
                    if let Some(d) = entry {
                        // Keeps a long task's queue entry from looking abandoned.
                        let _ = queue.touch(&consumer, &d).await;
                    }
                }) as futures::future::BoxFuture<'static, ()>
            }
        };
        // The entry's idle time restarts with the lease, so it is reclaimable right when
        // the lease has expired, not earlier (when the claim would find the lease held).
        // An entry read moments ago is as fresh as the lease already: the first beat
        // (a third of the lease from now) touches it in time.
        let fresh = entry
            .and_then(|d| d.received_at)
            .is_some_and(|at| at.elapsed() < session.lease().ttl / 3);
        if !fresh {
            on_beat().await;
        }
        let heartbeat = Heartbeat::start(
            self.store.clone(),
            session.lease().clone(),
            session.released_flag(),
            on_beat,
        );
        let mut session = session;
        // The budget of this run: a caller's new budget first, then the policy's default.
        if let Some(b) = opts.budget_usd {
            session.state.budget_usd = b;
        }
        if opts.use_multi_agent == Some(false) {
            session.state.force_single_agent = true;
        }
        if session.state.analysis.is_none() {
            // Routed before the run context is built: the analysis sets the budgets.
            let routed = self.route(&mut session).await;
            if session.state.budget_usd == 0.0 {
                session.state.budget_usd = routed.analysis.as_ref().map_or(0.0, |a| a.budget_usd);
            }
            // Published by the run's first checkpoint, right below in `drive`.
            let ev = session.event(progress_event::Kind::Routed(routed));
            session.defer_event(ev);
        }
        let budget = crate::budget::BudgetScope::of(
            &session.state,
            session.task(),
            &session.lease().owner,
            self.settings.agent_max_call_cost_usd,
            self.settings.budget_hold_ttl,
        );
        session.settle_on_checkpoint = !budget.needs_reservation();
        let ctx = Arc::new(
            RunCtx::new(
                self.store.clone(),
                self.agent.clone(),
                self.retry.clone(),
                self.settings.team.clone(),
                self.settings.worker_id.clone(),
                self.shutdown.clone(),
                self.settings.shutdown_grace,
                heartbeat,
                budget,
            )
            .with_workspace(self.task_workspace(&session)),
        );
        let before = session.state.iteration_count;
        let session = Arc::new(Mutex::new(session));
        let result = self
            .drive(
                &ctx,
                &session,
                opts,
                from_queue,
                entry.map(|d| d.delivery_count),
            )
            .await;
        let s = session.lock().await;
        s.release().await;
        match result {
            Ok(()) => Ok(run_result(&s.full_state(), before)),
            Err(e) => Err(e),
        }
    }

    async fn drive(
        &self,
        ctx: &Arc<RunCtx>,
        session: &Arc<Mutex<ActiveSession>>,
        opts: &RunOptions,
        from_queue: bool,
        delivery_count: Option<u64>,
    ) -> Result<()> {
        {
            let mut s = session.lock().await;
            if opts.max_iterations > 0 {
                s.state.max_iterations = opts.max_iterations;
            } else if s.state.max_iterations == 0 {
                s.state.max_iterations = self.settings.default_max_iterations;
            }
            if opts.use_multi_agent == Some(false) {
                s.state.force_single_agent = true;
            }
            if let Some(n) = delivery_count {
                s.state.delivery_count = n.min(u32::MAX as u64) as u32;
                let progressed = crate::session::delivery::made_progress(&s.state);
                s.state.stalled_deliveries = crate::session::delivery::stalled_deliveries(&s.state);
                // This start's own checkpoint is not progress; any later one is.
                s.state.delivery_start_version = s.version() + 1;
                if n > 1 {
                    crate::telemetry::redelivered(progressed);
                }
            }
            if let Some(tw) = &ctx.workspace
                && s.state.repos.is_empty()
            {
                // Recorded once, so every replica starts from the same base even if the
                // base ref moves later.
                let task = s.task().clone();
                match tw.start(&task).await {
                    Ok(repos) => s.state.repos = repos,
                    Err(e) => {
                        // As in `run::workspace_failure`: the same failure again is
                        // not progress, so nothing is written for it.
                        let message = e.to_string();
                        if s.state.last_error != message || s.has_deferred_events() {
                            s.state.last_error = message;
                            s.commit(None, &[], None).await?;
                        }
                        return Err(e);
                    }
                }
            }
            s.state.status = TaskStatus::InProgress as i32;
            s.state.budget_exhausted = BudgetKind::Unspecified as i32;
            s.state.worker_id = self.settings.worker_id.clone();
            s.commit(None, &[], None).await?;
        }
        let mut outcome = if session.lock().await.state.path == ExecutionPath::MultiAgent as i32 {
            crate::team_lead::run(ctx, session).await?
        } else {
            crate::iteration_loop::run(ctx, session).await?
        };
        if let PathOutcome::Fallback { cause, detail } = &outcome {
            {
                let mut s = session.lock().await;
                let record = FallbackRecord {
                    cause: *cause as i32,
                    detail: detail.clone(),
                    at: Some(now()),
                    phase: s.state.phase,
                };
                s.state.fallback = Some(record.clone());
                s.state.path = ExecutionPath::SingleAgent as i32;
                let ev = s.event(progress_event::Kind::Fallback(record));
                s.commit(None, &[ev], None).await?;
                tracing::warn!(task_id = %s.state.task_id, cause = cause_label(*cause), "team path failed; falling back to the single path");
            }
            crate::telemetry::fallback(cause_label(*cause));
            outcome = crate::iteration_loop::run(ctx, session).await?;
        }
        let mut s = session.lock().await;
        match outcome {
            PathOutcome::Completed => {
                match crate::approval::pending(&s.state, ApprovalGate::BeforeComplete) {
                    Some(gate) => self.park_at_gate(&mut s, &gate).await,
                    None => self.finish(&mut s, TaskStatus::Completed, "").await,
                }
            }
            PathOutcome::AwaitApproval(gate) => self.park_at_gate(&mut s, &gate).await,
            PathOutcome::BudgetExhausted(stop) => {
                let kind = if stop.kind == BudgetKind::Tenant {
                    "tenant"
                } else {
                    "task"
                };
                s.state.status = TaskStatus::BudgetExhausted as i32;
                s.state.budget_exhausted = stop.kind as i32;
                s.state.last_error = format!(
                    "the {kind} budget (${:.4}) cannot cover the next agent call (${:.4} spent)",
                    stop.limit_usd, stop.spent_usd
                );
                let ev = s.event(progress_event::Kind::BudgetStopped(BudgetStopped {
                    kind: stop.kind as i32,
                    spent_usd: stop.spent_usd,
                    limit_usd: stop.limit_usd,
                }));
                s.commit(None, &[ev], None).await?;
                crate::telemetry::budget_stop(kind);
                tracing::info!(task_id = %s.state.task_id, budget = kind, "task stopped by its budget");
                Ok(())
            }
            PathOutcome::Failed(e) => self.finish(&mut s, TaskStatus::Failed, &e).await,
            PathOutcome::Cancelled => {
                self.finish(&mut s, TaskStatus::Cancelled, "cancelled by request")
                    .await
            }
            PathOutcome::BoundReached if from_queue => {
                let msg = format!(
                    "reached max_iterations ({}) before the agent reported done",
                    s.state.max_iterations
                );
                self.finish(&mut s, TaskStatus::Failed, &msg).await
            }
            PathOutcome::BoundReached => Ok(()),
            PathOutcome::Stopped(Stop::Shutdown) => Err(Error::ShuttingDown),
            PathOutcome::Stopped(Stop::LeaseLost) => Err(Error::StaleWrite {
                task_id: s.state.task_id.clone(),
                reason: "the lease was taken over by another worker".into(),
            }),
            PathOutcome::Fallback { .. } => Err(Error::Internal(
                "the single path cannot fall back".to_string(),
            )),
        }
    }

    /// Parks the task at `gate`: WAITING_APPROVAL with a deadline, no lease kept (the
    /// caller releases it) and the queue entry acknowledged by the worker. The deadline
    /// is indexed before the status is written, so a crash in between leaves an index
    /// entry for a task that is not waiting (dropped by the scan), never a waiting task
    /// without a timeout.
    pub(crate) async fn park_at_gate(
        &self,
        s: &mut ActiveSession,
        gate: &GateRequirement,
    ) -> Result<()> {
        let timeout = std::time::Duration::from_secs(u64::from(gate.timeout_seconds.max(1)));
        let deadline = std::time::SystemTime::now() + timeout;
        self.store
            .set_approval_deadline(
                &s.state.task_id,
                crate::session::governance::epoch_ms(deadline),
            )
            .await?;
        let deadline = prost_types::Timestamp::from(deadline);
        s.state.status = TaskStatus::WaitingApproval as i32;
        s.state.waiting_gate = gate.gate;
        s.state.approval_deadline = Some(deadline);
        let ev = s.event(progress_event::Kind::ApprovalRequested(ApprovalRequested {
            gate: gate.gate,
            deadline: Some(deadline),
            reason: gate.message.clone(),
        }));
        s.commit(None, &[ev], None).await?;
        let name = crate::approval::gate_name(
            ApprovalGate::try_from(gate.gate).unwrap_or(ApprovalGate::Unspecified),
        );
        crate::telemetry::approval(name, "requested");
        tracing::info!(task_id = %s.state.task_id, gate = name, "task waits for approval");
        Ok(())
    }

    /// With `--when-router-unavailable hold`, an analysis made without the router gets a
    /// `before_start` gate: the policy's own gates are unknown, so a person decides.
    fn hold_without_router(&self, analysis: &mut RoutingAnalysis) {
        if self.settings.when_router_unavailable != WhenRouterUnavailable::Hold {
            return;
        }
        let secs = self.settings.router_unavailable_hold_timeout.as_secs();
        analysis.gates = vec![GateRequirement {
            gate: ApprovalGate::BeforeStart as i32,
            reason: ReasonCode::RouterUnavailable as i32,
            timeout_seconds: u32::try_from(secs).unwrap_or(u32::MAX).max(1),
            on_timeout: TimeoutAction::Reject as i32,
            on_reject: RejectAction::Unspecified as i32,
            message: "the router could not be reached, so the policy's gates and budgets are unknown; approve to run on the single path".to_string(),
        }];
    }

    /// Decides the path for a task that has none yet and records it in the state.
    async fn route(&self, s: &mut ActiveSession) -> Routed {
        let task = s.task().clone();
        let (analysis, source) = if s.state.force_single_agent {
            let mut forced = single_agent_analysis(
                ReasonCode::ForcedSingleAgent,
                "the caller asked for the single path (use_multi_agent = false)",
            );
            // Forcing the path must not skip governance: the policy's budget, tenant
            // limit and gates still apply when the router answers.
            if let Some(router) = &self.router {
                match router.route(&task).await {
                    Ok(a) => {
                        forced.budget_usd = a.budget_usd;
                        forced.gates = a.gates;
                        forced.tenant = a.tenant;
                        forced.tenant_usd_per_day = a.tenant_usd_per_day;
                        forced.policy_version = a.policy_version;
                    }
                    Err(e) => {
                        tracing::warn!(task_id = %task.id, error = %e, "router unavailable; the policy's gates and budgets are unknown");
                        self.hold_without_router(&mut forced);
                    }
                }
            }
            (forced, "forced")
        } else {
            let routed = match &self.router {
                Some(router) => router.route_with_shadow(&task).await,
                None => Err(Error::Router("no router configured".into())),
            };
            match routed {
                Ok(answer) => {
                    // Recorded once with the decision, so outcomes can be grouped by it.
                    s.state.shadow_analysis = answer.shadow;
                    (answer.analysis, "router")
                }
                Err(e) => {
                    tracing::warn!(task_id = %task.id, error = %e, "router unavailable; using the single path");
                    s.state.fallback = Some(FallbackRecord {
                        cause: FallbackCause::RouterUnavailable as i32,
                        detail: e.to_string(),
                        at: Some(now()),
                        phase: 0,
                    });
                    crate::telemetry::fallback(cause_label(FallbackCause::RouterUnavailable));
                    let mut analysis = single_agent_analysis(
                        ReasonCode::RouterUnavailable,
                        format!("router unavailable ({e}); safe default is the single path"),
                    );
                    if self.router.is_some() {
                        self.hold_without_router(&mut analysis);
                    }
                    (analysis, "fallback")
                }
            }
        };
        let multi = analysis.decision == RoutingDecision::UseMultiAgent as i32;
        let path = if multi {
            ExecutionPath::MultiAgent
        } else {
            ExecutionPath::SingleAgent
        };
        crate::telemetry::routed(if multi { "multi" } else { "single" }, source);
        tracing::info!(task_id = %task.id, decision = if multi { "multi" } else { "single" }, source, "task routed");
        s.state.path = path as i32;
        s.state.analysis = Some(analysis.clone());
        Routed {
            analysis: Some(analysis),
            path: path as i32,
        }
    }
}
