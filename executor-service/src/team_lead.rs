//! The team path: the lead plans which specialists to staff (analysis), specialists work
//! concurrently, each with its own timeout and iteration bound, and the lead combines
//! their outputs (synthesis). Every phase change and specialist iteration is
//! checkpointed; a resume skips finished specialists and re-enters the saved phase.

use crate::agent::{AgentWorkspace, IterationInput};
use crate::error::Result;
use crate::run::{PathOutcome, RunCtx, StepError, Stop, workspace_failure};
use crate::session::ActiveSession;
use crate::workspace::TaskWorkspace;
use std::collections::VecDeque;
use std::sync::Arc;
use taskrouter_proto::v1::{
    AgentStep, ApprovalGate, FallbackCause, IterationDone, PhaseChanged, SpecialistProgress,
    SpecialistStatus, Task, TeamPhase, progress_event,
};
use tokio::sync::{Mutex, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument as _;

/// Role name of the lead.
pub const LEAD_ROLE: &str = "lead";

enum SpecialistEnd {
    Done,
    /// Gave up its agent call because another specialist failed.
    Abandoned,
    Failed(FallbackCause, String),
    Stopped(PathOutcome),
}

/// Runs (or resumes) the team path.
pub async fn run(ctx: &Arc<RunCtx>, session: &Arc<Mutex<ActiveSession>>) -> Result<PathOutcome> {
    let task = session.lock().await.task().clone();
    loop {
        let phase = {
            let s = session.lock().await;
            if let Some(o) = boundary_check(ctx, &s) {
                return Ok(o);
            }
            TeamPhase::try_from(s.state.phase).unwrap_or(TeamPhase::Unspecified)
        };
        let next = match phase {
            TeamPhase::Unspecified | TeamPhase::Analysis => {
                analysis(ctx, session, &task)
                    .instrument(tracing::info_span!("team.analysis", task.id = %task.id))
                    .await?
            }
            TeamPhase::Specialists => {
                // The plan is made: a person approves it before anyone works on it.
                let gate = {
                    let s = session.lock().await;
                    crate::approval::pending(&s.state, ApprovalGate::BeforeStart)
                };
                if let Some(gate) = gate {
                    return Ok(PathOutcome::AwaitApproval(gate));
                }
                specialists(ctx, session, &task)
                    .instrument(tracing::info_span!("team.specialists", task.id = %task.id))
                    .await?
            }
            TeamPhase::Synthesis => {
                synthesis(ctx, session, &task)
                    .instrument(tracing::info_span!("team.synthesis", task.id = %task.id))
                    .await?
            }
            TeamPhase::Done => return Ok(PathOutcome::Completed),
        };
        if let Some(outcome) = next {
            return Ok(outcome);
        }
    }
}

fn boundary_check(ctx: &RunCtx, s: &ActiveSession) -> Option<PathOutcome> {
    if s.cancel_requested() {
        return Some(PathOutcome::Cancelled);
    }
    if let Some(stop) = ctx.stop_reason() {
        return Some(PathOutcome::Stopped(stop));
    }
    (s.state.iteration_count + s.in_flight >= s.state.max_iterations)
        .then_some(PathOutcome::BoundReached)
}

async fn set_phase(s: &mut ActiveSession, phase: TeamPhase, roles: Vec<String>) -> Result<()> {
    s.state.phase = phase as i32;
    let ev = s.event(progress_event::Kind::Phase(PhaseChanged {
        phase: phase as i32,
        roles,
    }));
    s.commit(None, &[ev], None).await
}

async fn lead_step(
    ctx: &RunCtx,
    task: &Arc<Task>,
    step: AgentStep,
    context: Vec<String>,
    workspace: Option<AgentWorkspace>,
) -> std::result::Result<crate::agent::IterationOutput, StepError> {
    let iteration = if step == AgentStep::Analysis { 1 } else { 2 };
    let input = IterationInput {
        task: task.clone(),
        role: LEAD_ROLE.to_string(),
        iteration,
        step,
        prior_outputs: Vec::new(),
        context,
        workspace,
    };
    ctx.call_agent(input).await
}

async fn analysis(
    ctx: &RunCtx,
    session: &Mutex<ActiveSession>,
    task: &Arc<Task>,
) -> Result<Option<PathOutcome>> {
    let suggested = {
        let mut s = session.lock().await;
        if s.state.phase != TeamPhase::Analysis as i32 {
            set_phase(&mut s, TeamPhase::Analysis, Vec::new()).await?;
        }
        s.state
            .analysis
            .as_ref()
            .map(|a| a.suggested_roles.clone())
            .unwrap_or_default()
    };
    let heads = session.lock().await.state.repos.clone();
    let workspace = match &ctx.workspace {
        Some(tw) => match tw.prepare(LEAD_ROLE, &heads).await {
            Ok(w) => Some(w),
            Err(e) => return Err(workspace_failure(session, e).await),
        },
        None => None,
    };
    let out = match lead_step(ctx, task, AgentStep::Analysis, suggested.clone(), workspace).await {
        Ok(out) => out,
        Err(StepError::Stopped(stop)) => return Ok(Some(PathOutcome::Stopped(stop))),
        Err(StepError::Budget(stop)) => return Ok(Some(PathOutcome::BudgetExhausted(stop))),
        Err(StepError::Store(e)) => return Err(e),
        Err(StepError::Agent(e)) => {
            return Ok(Some(PathOutcome::Fallback {
                cause: FallbackCause::AnalysisFailed,
                detail: format!("lead analysis failed: {e}"),
            }));
        }
    };
    let mut roles = if out.plan_roles.is_empty() {
        suggested
    } else {
        out.plan_roles.clone()
    };
    roles.retain(|r| !r.trim().is_empty());
    roles.dedup();
    if roles.is_empty() {
        roles.push("implementer".to_string());
    }
    roles.truncate(ctx.team.max_specialists.max(1));
    let heads = match &ctx.workspace {
        Some(tw) => {
            let changed = out.changed_paths.as_deref();
            match tw
                .record(LEAD_ROLE, 1, &heads, &out.output, changed, &[])
                .await
            {
                Ok(h) => h,
                Err(e) => return Err(workspace_failure(session, e).await),
            }
        }
        None => heads,
    };
    let mut s = session.lock().await;
    s.state.repos = heads;
    let record = s.apply_iteration(&ctx.worker_id, LEAD_ROLE, 1, out);
    s.state.team_iterations += 1;
    s.state.specialists = roles
        .iter()
        .map(|r| SpecialistProgress {
            role: r.clone(),
            status: SpecialistStatus::Pending as i32,
            // Each specialist branches from the task branch as analysis left it.
            repos: ctx
                .workspace
                .as_ref()
                .map(|tw| tw.role_heads(r, &s.state.repos))
                .unwrap_or_default(),
            ..Default::default()
        })
        .collect();
    s.state.phase = TeamPhase::Specialists as i32;
    let evs = [
        s.event(progress_event::Kind::Iteration(IterationDone {
            record: Some(record.clone()),
            iteration_count: s.state.iteration_count,
            max_iterations: s.state.max_iterations,
        })),
        s.event(progress_event::Kind::Phase(PhaseChanged {
            phase: TeamPhase::Specialists as i32,
            roles,
        })),
    ];
    s.commit(Some(&record), &evs, None).await?;
    crate::telemetry::iteration("multi", "lead");
    Ok(None)
}

async fn specialists(
    ctx: &Arc<RunCtx>,
    session: &Arc<Mutex<ActiveSession>>,
    task: &Arc<Task>,
) -> Result<Option<PathOutcome>> {
    let pending: Vec<(usize, String)> = {
        let s = session.lock().await;
        s.state
            .specialists
            .iter()
            .enumerate()
            .filter(|(_, sp)| sp.status != SpecialistStatus::Done as i32)
            .map(|(i, sp)| (i, sp.role.clone()))
            .collect()
    };
    let limit = Arc::new(Semaphore::new(ctx.team.max_parallel.max(1)));
    // Set when one specialist fails: the others abandon their agent call at once, but
    // nothing ever interrupts a checkpoint write, so memory and Redis stay in step.
    let team_stop = service_kit::Shutdown::new();
    let mut set = JoinSet::new();
    for (idx, role) in pending {
        let (ctx, session, task, limit, team_stop) = (
            ctx.clone(),
            session.clone(),
            task.clone(),
            limit.clone(),
            team_stop.clone(),
        );
        let span =
            tracing::info_span!("team.specialist", task.id = %task.id, specialist.role = %role);
        set.spawn(
            async move {
                let Ok(_permit) = limit.acquire_owned().await else {
                    return Ok(SpecialistEnd::Stopped(PathOutcome::Stopped(Stop::Shutdown)));
                };
                let deadline = tokio::time::Instant::now() + ctx.team.specialist_timeout;
                specialist(&ctx, &session, &task, idx, &role, &team_stop, deadline).await
            }
            .instrument(span),
        );
    }
    let mut failure: Option<(FallbackCause, String)> = None;
    let mut stopped: Option<PathOutcome> = None;
    while let Some(joined) = set.join_next().await {
        let end = match joined {
            Ok(r) => r?,
            Err(e) => SpecialistEnd::Failed(
                FallbackCause::SpecialistFailed,
                format!("specialist task ended abnormally: {e}"),
            ),
        };
        match end {
            SpecialistEnd::Done | SpecialistEnd::Abandoned => {}
            SpecialistEnd::Failed(cause, detail) => {
                if failure.is_none() {
                    // One specialist failing sinks the team attempt.
                    team_stop.trigger();
                    failure = Some((cause, detail));
                }
            }
            // The bound, a cancel, shutdown or a lost lease: every specialist sees it at
            // its next boundary, so the others finish (and checkpoint) what they started.
            SpecialistEnd::Stopped(outcome) => {
                stopped.get_or_insert(outcome);
            }
        }
    }
    if let Some((cause, detail)) = failure {
        let mut s = session.lock().await;
        for sp in s.state.specialists.iter_mut() {
            if sp.status == SpecialistStatus::Running as i32 {
                sp.status = SpecialistStatus::Pending as i32;
            }
        }
        return Ok(Some(PathOutcome::Fallback { cause, detail }));
    }
    if let Some(outcome) = stopped {
        return Ok(Some(outcome));
    }
    let mut s = session.lock().await;
    set_phase(&mut s, TeamPhase::Synthesis, Vec::new()).await?;
    Ok(None)
}

async fn specialist(
    ctx: &RunCtx,
    session: &Mutex<ActiveSession>,
    task: &Arc<Task>,
    idx: usize,
    role: &str,
    team_stop: &service_kit::Shutdown,
    deadline: tokio::time::Instant,
) -> Result<SpecialistEnd> {
    let mut prior: VecDeque<String> = VecDeque::new();
    loop {
        let iteration = {
            let mut s = session.lock().await;
            if team_stop.is_triggered() {
                return Ok(SpecialistEnd::Abandoned);
            }
            if let Some(o) = boundary_check(ctx, &s) {
                return Ok(SpecialistEnd::Stopped(o));
            }
            let Some(sp) = s.state.specialists.get(idx) else {
                return Ok(SpecialistEnd::Failed(
                    FallbackCause::SpecialistFailed,
                    format!("specialist {role} is missing from the saved plan"),
                ));
            };
            if sp.iterations >= ctx.team.specialist_max_iterations {
                return Ok(SpecialistEnd::Failed(
                    FallbackCause::SpecialistFailed,
                    format!(
                        "specialist {role} did not finish within {} iterations",
                        ctx.team.specialist_max_iterations
                    ),
                ));
            }
            if prior.is_empty() && !sp.output.is_empty() {
                prior.push_back(sp.output.clone());
            }
            let n = sp.iterations + 1;
            let heads = sp.repos.clone();
            s.in_flight += 1;
            (n, heads)
        };
        let (iteration, heads) = iteration;
        let workspace = match &ctx.workspace {
            Some(tw) => match tw.prepare(role, &heads).await {
                Ok(w) => Some(w),
                Err(e) => {
                    let mut s = session.lock().await;
                    s.in_flight = s.in_flight.saturating_sub(1);
                    drop(s);
                    return Err(workspace_failure(session, e).await);
                }
            },
            None => None,
        };
        let input = IterationInput {
            task: task.clone(),
            role: role.to_string(),
            iteration,
            step: AgentStep::Specialist,
            prior_outputs: prior.iter().cloned().collect(),
            context: Vec::new(),
            workspace,
        };
        // Only the agent call races the team stop and the deadline: a checkpoint, once
        // started, always completes.
        let result = tokio::select! {
            r = ctx.call_agent(input) => Some(r),
            _ = team_stop.wait() => None,
            _ = tokio::time::sleep_until(deadline) => {
                let mut s = session.lock().await;
                s.in_flight = s.in_flight.saturating_sub(1);
                return Ok(SpecialistEnd::Failed(
                    FallbackCause::SpecialistTimeout,
                    format!("specialist {role} did not finish within {:?}", ctx.team.specialist_timeout),
                ));
            }
        };
        // The code first: pushed on the specialist's branch before the checkpoint.
        let recorded = match (&result, &ctx.workspace) {
            (Some(Ok(out)), Some(tw)) => Some(
                tw.record(
                    role,
                    iteration,
                    &heads,
                    &out.output,
                    out.changed_paths.as_deref(),
                    &[],
                )
                .await,
            ),
            _ => None,
        };
        let mut s = session.lock().await;
        s.in_flight = s.in_flight.saturating_sub(1);
        let new_heads = match recorded {
            Some(Ok(h)) => Some(h),
            Some(Err(e)) => {
                drop(s);
                return Err(workspace_failure(session, e).await);
            }
            None => None,
        };
        let Some(result) = result else {
            return Ok(SpecialistEnd::Abandoned);
        };
        let out = match result {
            Ok(out) => out,
            Err(StepError::Stopped(stop)) => {
                return Ok(SpecialistEnd::Stopped(PathOutcome::Stopped(stop)));
            }
            Err(StepError::Budget(stop)) => {
                return Ok(SpecialistEnd::Stopped(PathOutcome::BudgetExhausted(stop)));
            }
            Err(StepError::Store(e)) => return Err(e),
            Err(StepError::Agent(e)) => {
                let cause = if matches!(e, crate::error::Error::AgentTimeout(_)) {
                    FallbackCause::SpecialistTimeout
                } else {
                    FallbackCause::SpecialistFailed
                };
                if let Some(sp) = s.state.specialists.get_mut(idx) {
                    sp.status = SpecialistStatus::Failed as i32;
                    sp.last_error = e.to_string();
                }
                return Ok(SpecialistEnd::Failed(
                    cause,
                    format!("specialist {role} failed: {e}"),
                ));
            }
        };
        let done = out.done;
        prior.push_back(out.output.clone());
        if prior.len() > 5 {
            prior.pop_front();
        }
        let record = s.apply_iteration(&ctx.worker_id, role, iteration, out);
        s.state.team_iterations += 1;
        if let Some(sp) = s.state.specialists.get_mut(idx) {
            sp.iterations = iteration;
            if let Some(h) = new_heads {
                sp.repos = h;
            }
            sp.output = record.output.clone();
            sp.last_error.clear();
            sp.status = if done {
                SpecialistStatus::Done as i32
            } else {
                SpecialistStatus::Running as i32
            };
        }
        let ev = s.event(progress_event::Kind::Iteration(IterationDone {
            record: Some(record.clone()),
            iteration_count: s.state.iteration_count,
            max_iterations: s.state.max_iterations,
        }));
        s.commit(Some(&record), &[ev], None).await?;
        crate::telemetry::iteration("multi", "specialist");
        if done {
            return Ok(SpecialistEnd::Done);
        }
    }
}

async fn synthesis(
    ctx: &RunCtx,
    session: &Mutex<ActiveSession>,
    task: &Arc<Task>,
) -> Result<Option<PathOutcome>> {
    let (mut context, heads, specialist_heads): (Vec<String>, _, Vec<_>) = {
        let s = session.lock().await;
        let mut context: Vec<String> = s
            .state
            .specialists
            .iter()
            .map(|sp| format!("{}: {}", sp.role, sp.output))
            .collect();
        // A reviewer sent the result back: the lead synthesises again with the comment.
        if !s.state.review_feedback.is_empty() {
            context.push(format!("reviewer: {}", s.state.review_feedback));
        }
        (
            context,
            s.state.repos.clone(),
            s.state
                .specialists
                .iter()
                .map(|sp| sp.repos.clone())
                .collect(),
        )
    };
    // Every specialist branch is merged into the task branch; conflicts are left in
    // the lead's worktree, named in its context, for it to resolve.
    let mut merged = Vec::new();
    let mut pending = Vec::new();
    let workspace = match &ctx.workspace {
        Some(tw) => {
            let prepared = match tw.prepare(LEAD_ROLE, &heads).await {
                Ok(w) => w,
                Err(e) => return Err(workspace_failure(session, e).await),
            };
            match tw.merge(LEAD_ROLE, &heads, &specialist_heads).await {
                Ok((m, p)) => {
                    merged = m;
                    pending = p;
                }
                Err(e) => return Err(workspace_failure(session, e).await),
            }
            context.extend(TaskWorkspace::conflict_lines(&pending));
            Some(prepared)
        }
        None => None,
    };
    let out = match lead_step(ctx, task, AgentStep::Synthesis, context, workspace).await {
        Ok(out) => out,
        Err(StepError::Stopped(stop)) => return Ok(Some(PathOutcome::Stopped(stop))),
        Err(StepError::Budget(stop)) => return Ok(Some(PathOutcome::BudgetExhausted(stop))),
        Err(StepError::Store(e)) => return Err(e),
        Err(StepError::Agent(e)) => {
            return Ok(Some(PathOutcome::Fallback {
                cause: FallbackCause::SynthesisFailed,
                detail: format!("lead synthesis failed: {e}"),
            }));
        }
    };
    let heads = match &ctx.workspace {
        Some(tw) => {
            if let Err(e) = tw.conclude(LEAD_ROLE, &heads, &pending).await {
                // Markers left (or a second conflict): the single path continues from
                // the task branch, which did not move.
                return Ok(Some(PathOutcome::Fallback {
                    cause: FallbackCause::SynthesisFailed,
                    detail: format!("lead synthesis left the merge unresolved: {e}"),
                }));
            }
            let changed = out.changed_paths.as_deref();
            match tw
                .record(LEAD_ROLE, 2, &heads, &out.output, changed, &merged)
                .await
            {
                Ok(h) => h,
                Err(e) => return Err(workspace_failure(session, e).await),
            }
        }
        None => heads,
    };
    let mut s = session.lock().await;
    s.state.repos = heads;
    let record = s.apply_iteration(&ctx.worker_id, LEAD_ROLE, 2, out);
    s.state.team_iterations += 1;
    s.state.result = record.output.clone();
    s.state.review_feedback.clear();
    s.state.phase = TeamPhase::Done as i32;
    let evs = [
        s.event(progress_event::Kind::Iteration(IterationDone {
            record: Some(record.clone()),
            iteration_count: s.state.iteration_count,
            max_iterations: s.state.max_iterations,
        })),
        s.event(progress_event::Kind::Phase(PhaseChanged {
            phase: TeamPhase::Done as i32,
            roles: Vec::new(),
        })),
    ];
    // The team path ends here: the finish (or the park at a `before_complete` gate)
    // that follows at once writes the synthesis with it.
    s.defer_iteration(record, evs);
    crate::telemetry::iteration("multi", "lead");
    Ok(Some(PathOutcome::Completed))
}
