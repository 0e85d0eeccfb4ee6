//! The autonomous loop (the seed's `AutonomousLoop`): takes a task, routes it, runs it on
//! the single or team path with automatic fallback, and finishes it; plus the pool of
//! queue workers that feeds it from the shared work queue.

use crate::agent::{IterationInput, IterationOutput, RetryPolicy, SharedAgent};
use crate::error::{Error, Result};
use crate::lease::{Heartbeat, Lease};
use crate::queue::{Delivery, WorkQueue};
use crate::routing::{RouterLink, single_agent_analysis};
use crate::session::active::{leaves_task_resumable, now};
use crate::session::{ActiveSession, CheckpointRetry, CreateOutcome, SessionStore};
use crate::team_lead::TeamSettings;
use service_kit::Shutdown;
use std::sync::Arc;
use std::time::Duration;
use taskrouter_proto::SESSION_SCHEMA_VERSION;
use taskrouter_proto::v1::{
    ExecutionPath, FallbackCause, FallbackRecord, Finished, ProgressEvent, ReasonCode, Routed,
    RoutingDecision, RunResult, SessionState, Submitted, Task, TaskStatus, progress_event,
};
use tokio::sync::{Mutex, Notify};
use tracing::Instrument as _;

/// Why a run stopped early without finishing the task (it stays resumable).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The executor is shutting down.
    Shutdown,
    /// Another worker took over the lease.
    LeaseLost,
}

/// How one path's run ended.
#[derive(Clone, Debug, PartialEq)]
pub enum PathOutcome {
    /// Done: the task is complete.
    Completed,
    /// The agent failed for good (after retries).
    Failed(String),
    /// Cancel was requested.
    Cancelled,
    /// The iteration bound was reached before the agent reported done.
    BoundReached,
    /// Stopped at an iteration boundary; resumable.
    Stopped(Stop),
    /// The team path failed; the single path takes over.
    Fallback {
        /// Why.
        cause: FallbackCause,
        /// One sentence of detail.
        detail: String,
    },
}

/// Why an agent step did not produce an output.
#[derive(Debug)]
pub enum StepError {
    /// The agent failed (after retries).
    Agent(Error),
    /// The run must stop (shutdown grace ran out, or the lease was lost).
    Stopped(Stop),
}

/// Everything a path needs while running one task.
pub struct RunCtx {
    /// Where state lives.
    pub store: Arc<dyn SessionStore>,
    /// The agent backend.
    pub agent: SharedAgent,
    /// Agent retry policy.
    pub retry: RetryPolicy,
    /// Team limits.
    pub team: TeamSettings,
    /// This worker's id (recorded in checkpoints).
    pub worker_id: String,
    shutdown: Shutdown,
    shutdown_grace: Duration,
    heartbeat: Heartbeat,
}

impl RunCtx {
    /// Whether the run must stop at this iteration boundary.
    pub fn stop_reason(&self) -> Option<Stop> {
        if self.heartbeat.lost() {
            Some(Stop::LeaseLost)
        } else if self.shutdown.is_triggered() {
            Some(Stop::Shutdown)
        } else {
            None
        }
    }

    /// Runs one agent iteration with retries. On shutdown the iteration in flight gets
    /// `shutdown_grace` to finish (so it can be checkpointed) before it is abandoned.
    pub async fn call_agent(
        &self,
        input: IterationInput,
    ) -> std::result::Result<IterationOutput, StepError> {
        let span = tracing::info_span!(
            "agent.iteration",
            task.id = %input.task.id,
            agent.kind = self.agent.kind(),
            agent.role = %input.role,
            agent.step = crate::agent::step_name(input.step),
            agent.iteration = input.iteration,
            agent.attempts = tracing::field::Empty,
            agent.done = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let call = {
            let recorder = span.clone();
            async move {
                let outcome =
                    crate::agent::run_with_retry(self.agent.as_ref(), input, &self.retry).await;
                recorder.record("agent.attempts", outcome.attempts() as u64);
                match &outcome.result {
                    Ok(out) => recorder.record("agent.done", out.done),
                    Err(_) => recorder.record("otel.status_code", "ERROR"),
                };
                outcome.result
            }
            .instrument(span)
        };
        let grace = async {
            self.shutdown.wait().await;
            tokio::time::sleep(self.shutdown_grace).await;
        };
        tokio::select! {
            r = call => r.map_err(StepError::Agent),
            _ = grace => Err(StepError::Stopped(Stop::Shutdown)),
        }
    }
}

/// Executor-wide settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// This process's worker id (consumer name in the queue group, lease owner prefix).
    pub worker_id: String,
    /// Iteration bound when the request gives none.
    pub default_max_iterations: u32,
    /// Lease expiry; a crashed worker's task is reclaimed after it.
    pub lease_ttl: Duration,
    /// How long archived tasks are kept.
    pub archive_ttl: Duration,
    /// Time an in-flight iteration gets to finish on shutdown.
    pub shutdown_grace: Duration,
    /// Checkpoint retry budget while Redis is away.
    pub checkpoint_retry: CheckpointRetry,
    /// Team path limits.
    pub team: TeamSettings,
    /// Deliveries after which a queue entry is dead-lettered.
    pub max_deliveries: u64,
    /// Queue workers in this process.
    pub concurrency: usize,
    /// How often an idle worker polls the queue.
    pub poll_interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            worker_id: format!("executor-{}", std::process::id()),
            default_max_iterations: 50,
            lease_ttl: Duration::from_secs(30),
            archive_ttl: Duration::from_secs(7 * 24 * 3600),
            shutdown_grace: Duration::from_secs(20),
            checkpoint_retry: CheckpointRetry::default(),
            team: TeamSettings::default(),
            max_deliveries: 5,
            concurrency: 4,
            poll_interval: Duration::from_millis(100),
        }
    }
}

/// Options of one run.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Continue an existing task instead of refusing it.
    pub resume: bool,
    /// Bound on the task's total iterations (0 = saved bound or the default).
    pub max_iterations: u32,
    /// `Some(false)` forces the single path.
    pub use_multi_agent: Option<bool>,
}

/// The executor's engine.
pub struct AutonomousLoop {
    store: Arc<dyn SessionStore>,
    queue: Arc<dyn WorkQueue>,
    router: Option<RouterLink>,
    agent: SharedAgent,
    retry: RetryPolicy,
    settings: Settings,
    shutdown: Shutdown,
    wake: Notify,
}

fn status_of(s: &SessionState) -> TaskStatus {
    TaskStatus::try_from(s.status).unwrap_or(TaskStatus::Unspecified)
}

/// Whether a status is final.
pub fn is_final(status: TaskStatus) -> bool {
    matches!(
        status,
        TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled
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

/// The span of one queued task's run, joined to the submitter's trace through the
/// `traceparent` the queue entry carries (also after a reclaim by another replica).
fn delivery_span(d: &Delivery) -> tracing::Span {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let span = tracing::info_span!(
        "task.run",
        task.id = %d.task_id,
        queue.entry_id = %d.entry_id,
        queue.delivery_count = d.delivery_count,
        queue.reclaimed = d.delivery_count > 1,
        trace_id = tracing::field::Empty,
    );
    let parent = service_kit::trace_context::from_traceparent(&d.traceparent);
    let remote = parent.span().span_context().clone();
    if remote.is_valid() {
        let _ = span.set_parent(parent);
    }
    let own = span.context().span().span_context().clone();
    let trace = if own.is_valid() { own } else { remote };
    if trace.is_valid() {
        span.record("trace_id", tracing::field::display(trace.trace_id()));
    }
    span
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
            wake: Notify::new(),
        }
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

    fn new_state(&self, task: Task, max_iterations: u32, use_multi: Option<bool>) -> SessionState {
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
        traceparent: &str,
    ) -> Result<(SessionState, bool)> {
        if self.shutdown.is_triggered() {
            return Err(Error::ShuttingDown);
        }
        let id = task.id.clone();
        let state = self.new_state(task, max_iterations, use_multi_agent);
        let ev = Self::event(&id, progress_event::Kind::Submitted(Submitted {}));
        match self.store.create(&state, &ev).await? {
            CreateOutcome::Created(state) => {
                self.queue.enqueue(&id, traceparent).await?;
                self.wake.notify_one();
                tracing::info!(task_id = %id, "task submitted");
                Ok((state, true))
            }
            CreateOutcome::Existing(state) => {
                // A crash between storing a task and queueing it would leave it PENDING
                // forever, and the caller's retry lands here: a task nobody has started
                // is queued again. A duplicate entry is harmless (it is acknowledged once
                // the task is final).
                if status_of(&state) == TaskStatus::Pending {
                    self.queue.enqueue(&id, traceparent).await?;
                    self.wake.notify_one();
                }
                Ok((state, false))
            }
        }
    }

    /// Loads a task's state.
    pub async fn get(&self, task_id: &str) -> Result<SessionState> {
        self.store
            .load(task_id)
            .await?
            .ok_or_else(|| Error::NotFound {
                task_id: task_id.to_string(),
            })
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
        let owner = Lease::new_owner(&self.settings.worker_id);
        let Some(lease) = self
            .store
            .acquire_lease(task_id, &owner, self.settings.lease_ttl)
            .await?
        else {
            // A worker is running it: it stops at its next iteration boundary.
            let mut state = self.get(task_id).await?;
            state.cancel_requested = true;
            return Ok(state);
        };
        let fresh = self.get(task_id).await;
        let mut session = match fresh {
            Ok(s) => {
                ActiveSession::new(self.store.clone(), s, lease, self.settings.checkpoint_retry)
            }
            Err(e) => {
                let _ = self.store.release_lease(&lease).await;
                return Err(e);
            }
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

    async fn finish(
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
            Some(_) => self.run_existing(&task.id, &opts, false, None).await,
            None => {
                let state = self.new_state(task.clone(), opts.max_iterations, opts.use_multi_agent);
                let ev = Self::event(&task.id, progress_event::Kind::Submitted(Submitted {}));
                self.store.create(&state, &ev).await?;
                self.run_existing(&task.id, &opts, false, None).await
            }
        }
    }

    /// Runs an existing task under a lease until it finishes, stops or hits its bound.
    /// `from_queue` makes a reached bound final (FAILED), since no caller will resume it.
    async fn run_existing(
        &self,
        task_id: &str,
        opts: &RunOptions,
        from_queue: bool,
        entry: Option<&Delivery>,
    ) -> Result<RunResult> {
        let state = self.get(task_id).await?;
        if is_final(status_of(&state)) {
            return Ok(run_result(&state, state.iteration_count));
        }
        let owner = Lease::new_owner(&self.settings.worker_id);
        let lease = self
            .store
            .acquire_lease(task_id, &owner, self.settings.lease_ttl)
            .await?
            .ok_or_else(|| Error::LeaseHeld {
                task_id: task_id.to_string(),
            })?;
        // Re-read under the lease: the previous holder may have written since.
        let state = match self.get(task_id).await {
            Ok(s) => s,
            Err(e) => {
                let _ = self.store.release_lease(&lease).await;
                return Err(e);
            }
        };
        let on_beat = {
            let queue = self.queue.clone();
            let consumer = self.settings.worker_id.clone();
            let entry_id = entry.map(|d| d.entry_id.clone());
            move || {
                let queue = queue.clone();
                let consumer = consumer.clone();
                let entry_id = entry_id.clone();
                Box::pin(async move {
                    if let Some(id) = entry_id {
                        // Keeps a long task's queue entry from looking abandoned.
                        let _ = queue.touch(&consumer, &id).await;
                    }
                }) as futures::future::BoxFuture<'static, ()>
            }
        };
        let heartbeat = Heartbeat::start(self.store.clone(), lease.clone(), on_beat);
        let ctx = Arc::new(RunCtx {
            store: self.store.clone(),
            agent: self.agent.clone(),
            retry: self.retry.clone(),
            team: self.settings.team.clone(),
            worker_id: self.settings.worker_id.clone(),
            shutdown: self.shutdown.clone(),
            shutdown_grace: self.settings.shutdown_grace,
            heartbeat,
        });
        let before = state.iteration_count;
        let session = Arc::new(Mutex::new(ActiveSession::new(
            self.store.clone(),
            state,
            lease,
            self.settings.checkpoint_retry,
        )));
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
            }
            let mut events = Vec::new();
            if s.state.analysis.is_none() {
                let routed = self.route(&mut s).await;
                events.push(s.event(progress_event::Kind::Routed(routed)));
            }
            s.state.status = TaskStatus::InProgress as i32;
            s.state.worker_id = self.settings.worker_id.clone();
            s.commit(None, &events, None).await?;
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
            PathOutcome::Completed => self.finish(&mut s, TaskStatus::Completed, "").await,
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

    /// Decides the path for a task that has none yet and records it in the state.
    async fn route(&self, s: &mut ActiveSession) -> Routed {
        let task = s.task().clone();
        let (analysis, source) = if s.state.force_single_agent {
            (
                single_agent_analysis(
                    ReasonCode::ForcedSingleAgent,
                    "the caller asked for the single path (use_multi_agent = false)",
                ),
                "forced",
            )
        } else {
            let routed = match &self.router {
                Some(router) => router.route(&task).await,
                None => Err(Error::Router("no router configured".into())),
            };
            match routed {
                Ok(a) => (a, "router"),
                Err(e) => {
                    tracing::warn!(task_id = %task.id, error = %e, "router unavailable; using the single path");
                    s.state.fallback = Some(FallbackRecord {
                        cause: FallbackCause::RouterUnavailable as i32,
                        detail: e.to_string(),
                        at: Some(now()),
                        phase: 0,
                    });
                    crate::telemetry::fallback(cause_label(FallbackCause::RouterUnavailable));
                    (
                        single_agent_analysis(
                            ReasonCode::RouterUnavailable,
                            format!("router unavailable ({e}); safe default is the single path"),
                        ),
                        "fallback",
                    )
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

    /// Starts `concurrency` queue workers (none when it is 0); they stop when shutdown
    /// is triggered, after checkpointing and releasing their tasks.
    pub fn spawn_workers_if_enabled(self: &Arc<Self>) -> tokio::task::JoinSet<()> {
        let mut set = tokio::task::JoinSet::new();
        for n in 0..self.settings.concurrency {
            let this = self.clone();
            set.spawn(async move { this.worker(n).await });
        }
        set
    }

    async fn worker(self: Arc<Self>, n: usize) {
        let consumer = self.settings.worker_id.clone();
        let reclaim_every = (self.settings.lease_ttl / 2).max(Duration::from_millis(200));
        let mut last_reclaim = tokio::time::Instant::now() - reclaim_every;
        let mut backoff = Duration::from_millis(100);
        while !self.shutdown.is_triggered() {
            let next = async {
                if last_reclaim.elapsed() >= reclaim_every {
                    last_reclaim = tokio::time::Instant::now();
                    let min_idle = self.settings.lease_ttl + Duration::from_millis(500);
                    let got = self.queue.reclaim(&consumer, min_idle, 1).await?;
                    if !got.is_empty() {
                        crate::telemetry::reclaimed(got.len());
                        return Ok(got);
                    }
                }
                self.queue.read_new(&consumer, 1).await
            }
            .await;
            match next {
                Ok(deliveries) if deliveries.is_empty() => {
                    backoff = Duration::from_millis(100);
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(self.settings.poll_interval) => {}
                        _ = self.shutdown.wait() => {}
                    }
                }
                Ok(deliveries) => {
                    backoff = Duration::from_millis(100);
                    for d in deliveries {
                        let span = delivery_span(&d);
                        self.handle(&d).instrument(span).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(worker = n, error = %e, "queue read failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.shutdown.wait() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Runs one delivered entry and acknowledges it once the task is final.
    async fn handle(&self, d: &Delivery) {
        if d.task_id.is_empty() {
            let _ = self.queue.ack(&d.entry_id).await;
            return;
        }
        let state = match self.store.load(&d.task_id).await {
            Ok(Some(s)) => s,
            Ok(None) => {
                tracing::warn!(task_id = %d.task_id, "queue entry for an unknown task; dropping it");
                let _ = self.queue.ack(&d.entry_id).await;
                return;
            }
            Err(e @ Error::CorruptState { .. }) => {
                let _ = self.queue.dead_letter(d, &e.to_string()).await;
                crate::telemetry::dead_lettered();
                tracing::error!(task_id = %d.task_id, error = %e, "task state unreadable; dead-lettered");
                return;
            }
            Err(e) => {
                tracing::warn!(task_id = %d.task_id, error = %e, "cannot load task; leaving it for redelivery");
                return;
            }
        };
        if is_final(status_of(&state)) {
            let _ = self.queue.ack(&d.entry_id).await;
            return;
        }
        if d.delivery_count > self.settings.max_deliveries {
            self.dead_letter(d, &state).await;
            return;
        }
        let opts = RunOptions {
            resume: true,
            max_iterations: 0,
            use_multi_agent: None,
        };
        match self.run_existing(&d.task_id, &opts, true, Some(d)).await {
            Ok(r) if is_final(TaskStatus::try_from(r.status).unwrap_or_default()) => {
                let _ = self.queue.ack(&d.entry_id).await;
            }
            Ok(_) => {}
            Err(Error::ShuttingDown) => {
                // Hand the task to another replica at once instead of waiting for
                // the entry to go idle: re-enqueue, then acknowledge this entry.
                if self.queue.enqueue(&d.task_id, &d.traceparent).await.is_ok() {
                    let _ = self.queue.ack(&d.entry_id).await;
                }
            }
            Err(Error::LeaseHeld { .. }) => {
                tracing::debug!(task_id = %d.task_id, "another worker holds the task");
            }
            Err(e) if leaves_task_resumable(&e) => {
                tracing::warn!(task_id = %d.task_id, error = %e, "run interrupted; the task stays resumable");
            }
            Err(e) => {
                tracing::error!(task_id = %d.task_id, error = %e, "run failed; leaving it for redelivery");
            }
        }
    }

    async fn dead_letter(&self, d: &Delivery, state: &SessionState) {
        let reason = if state.last_error.is_empty() {
            format!("delivered {} times without finishing", d.delivery_count)
        } else {
            state.last_error.clone()
        };
        let owner = Lease::new_owner(&self.settings.worker_id);
        match self
            .store
            .acquire_lease(&d.task_id, &owner, self.settings.lease_ttl)
            .await
        {
            Ok(Some(lease)) => {
                if let Ok(fresh) = self.get(&d.task_id).await {
                    let mut s = ActiveSession::new(
                        self.store.clone(),
                        fresh,
                        lease,
                        self.settings.checkpoint_retry,
                    );
                    s.state.dead_lettered = true;
                    s.state.delivery_count = d.delivery_count.min(u32::MAX as u64) as u32;
                    let msg = format!(
                        "dead-lettered after {} deliveries: {reason}",
                        d.delivery_count
                    );
                    if let Err(e) = self.finish(&mut s, TaskStatus::Failed, &msg).await {
                        tracing::warn!(task_id = %d.task_id, error = %e, "could not mark a dead-lettered task failed");
                    }
                    s.release().await;
                } else {
                    let _ = self.store.release_lease(&lease).await;
                }
            }
            // Someone is running it right now: not dead.
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(task_id = %d.task_id, error = %e, "cannot dead-letter now");
                return;
            }
        }
        if self.queue.dead_letter(d, &reason).await.is_ok() {
            crate::telemetry::dead_lettered();
            tracing::error!(task_id = %d.task_id, deliveries = d.delivery_count, "task dead-lettered");
        }
    }
}
