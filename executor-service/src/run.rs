//! The run contract between the engine and the paths: what a path gets while it runs
//! one task ([`RunCtx`]), how it ends ([`PathOutcome`], [`Stop`]) and the options of a
//! run ([`RunOptions`]).

use crate::agent::{IterationInput, IterationOutput, RetryPolicy, SharedAgent};
use crate::budget::{BudgetScope, BudgetStop};
use crate::error::Error;
use crate::session::governance::SpendOutcome;
use crate::session::{ActiveSession, Heartbeat, SessionStore};
use crate::settings::TeamSettings;
use crate::workspace::TaskWorkspace;
use service_kit::Shutdown;
use std::sync::Arc;
use std::time::Duration;
use taskrouter_proto::v1::{AgentStep, FallbackCause, GateRequirement};
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
    /// The next agent call did not fit a budget; stopped at this iteration boundary.
    BudgetExhausted(BudgetStop),
    /// The task must wait for a person at this gate.
    AwaitApproval(GateRequirement),
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
    /// The call's reservation did not fit a budget; the call was not made.
    Budget(BudgetStop),
    /// The store failed while reserving spend (the run stops; the task stays resumable).
    Store(Error),
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
    /// Durable git workspaces of the task, when on and the task names repositories.
    pub workspace: Option<TaskWorkspace>,
    shutdown: Shutdown,
    shutdown_grace: Duration,
    heartbeat: Heartbeat,
    budget: BudgetScope,
}

impl RunCtx {
    /// The context of one run: `heartbeat` keeps its lease; on `shutdown` the iteration
    /// in flight gets `shutdown_grace` to finish.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn SessionStore>,
        agent: SharedAgent,
        retry: RetryPolicy,
        team: TeamSettings,
        worker_id: String,
        shutdown: Shutdown,
        shutdown_grace: Duration,
        heartbeat: Heartbeat,
        budget: BudgetScope,
    ) -> Self {
        Self {
            store,
            agent,
            retry,
            team,
            worker_id,
            workspace: None,
            shutdown,
            shutdown_grace,
            heartbeat,
            budget,
        }
    }

    /// The same context with the task's workspaces.
    pub fn with_workspace(mut self, workspace: Option<TaskWorkspace>) -> Self {
        self.workspace = workspace;
        self
    }

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

    /// Runs one agent iteration with retries: every agent call of every path goes
    /// through here. First a reservation must fit the task's and the tenant's budget
    /// (else `StepError::Budget` and no call); the actual cost is settled afterwards.
    /// A run without a task budget or tenant reserves nothing (see
    /// [`BudgetScope::needs_reservation`]).
    /// On shutdown the iteration in flight gets `shutdown_grace` to finish (so it can be
    /// checkpointed) before it is abandoned (its reservation is then released by the
    /// next lease holder).
    pub async fn call_agent(
        &self,
        input: IterationInput,
    ) -> std::result::Result<IterationOutput, StepError> {
        let path = if input.step == AgentStep::Iteration {
            "single"
        } else {
            "multi"
        };
        if !self.budget.needs_reservation() {
            // Nothing to refuse: the checkpoint recording the iteration settles its cost.
            let result = self.call_agent_reserved(input).await;
            crate::telemetry::spend(self.budget.tenant_name(), path, call_cost(&result));
            return result;
        }
        let reservation = match self.budget.reserve(self.store.as_ref()).await {
            Ok(SpendOutcome::Reserved(r)) => r,
            Ok(SpendOutcome::Refused {
                by, spent, limit, ..
            }) => {
                let stop = crate::budget::stop_of(by, spent, limit);
                return Err(StepError::Budget(stop));
            }
            Ok(SpendOutcome::NotLeaseHolder) => return Err(StepError::Stopped(Stop::LeaseLost)),
            Err(e) => return Err(StepError::Store(e)),
        };
        let result = self.call_agent_reserved(input).await;
        let cost = call_cost(&result);
        crate::budget::settle(self.store.as_ref(), &reservation, cost).await;
        crate::telemetry::spend(self.budget.tenant_name(), path, cost);
        result
    }

    async fn call_agent_reserved(
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
                let started = std::time::Instant::now();
                let outcome =
                    crate::agent::run_with_retry(self.agent.as_ref(), input, &self.retry).await;
                crate::telemetry::agent_call(started.elapsed(), outcome.result.is_ok());
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

/// What a finished agent call cost, USD (0 for a failed call or a nonsensical figure).
fn call_cost(result: &std::result::Result<IterationOutput, StepError>) -> f64 {
    match result {
        Ok(out) if out.cost_usd.is_finite() && out.cost_usd > 0.0 => out.cost_usd,
        _ => 0.0,
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
    /// A new spend budget for the task, USD.
    pub budget_usd: Option<f64>,
}

/// Records a workspace failure as the task's last error (checkpointed, fenced) and
/// returns it: the run stops and the iteration is retried on a later delivery. A stale
/// write is returned as is (this worker may no longer write).
pub async fn workspace_failure(session: &tokio::sync::Mutex<ActiveSession>, e: Error) -> Error {
    if matches!(e, Error::StaleWrite { .. }) {
        return e;
    }
    let mut s = session.lock().await;
    tracing::warn!(task_id = %s.state.task_id, error = %e, "workspace step failed; the iteration will be retried");
    // The same failure again is not progress: no write, so a delivery that keeps
    // failing counts as stalled and is dead-lettered in the end.
    let message = e.to_string();
    if s.state.last_error != message {
        s.state.last_error = message;
        if let Err(write) = s.commit(None, &[], None).await {
            return write;
        }
    }
    e
}
