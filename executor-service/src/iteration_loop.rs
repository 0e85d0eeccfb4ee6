//! The single path: one agent iterating until it reports done or the iteration bound,
//! checkpointing SessionState after every iteration.

use crate::agent::IterationInput;
use crate::error::Result;
use crate::run::{PathOutcome, RunCtx, StepError, workspace_failure};
use crate::session::ActiveSession;
use std::collections::VecDeque;
use taskrouter_proto::v1::{AgentStep, ApprovalGate, IterationDone, progress_event};
use tokio::sync::Mutex;

/// Role name of the single-path agent.
pub const AGENT_ROLE: &str = "agent";

/// Prior outputs handed to the next iteration.
const PRIOR_OUTPUTS: usize = 5;

/// Runs single-path iterations from the saved count until done, bound, cancel or stop.
pub async fn run(ctx: &RunCtx, session: &Mutex<ActiveSession>) -> Result<PathOutcome> {
    let (task, task_id, feedback, fresh) = {
        let s = session.lock().await;
        (
            s.task().clone(),
            s.state.task_id.clone(),
            s.state.review_feedback.clone(),
            s.state.iteration_count == 0,
        )
    };
    // A task that never iterated has no log to read.
    let records: Vec<_> = if fresh {
        Vec::new()
    } else {
        ctx.store
            .iterations(&task_id, PRIOR_OUTPUTS * 4)
            .await?
            .into_iter()
            .filter(|r| r.role == AGENT_ROLE)
            .collect()
    };
    // The agent already reported done, but the run stopped (a crash, a lost lease)
    // before the task was marked complete: it is complete, without another iteration
    // (unless a reviewer sent the result back).
    if feedback.is_empty() && records.last().is_some_and(|r| r.done) {
        return Ok(PathOutcome::Completed);
    }
    let mut prior: VecDeque<String> = records.into_iter().map(|r| r.output).collect();
    while prior.len() > PRIOR_OUTPUTS {
        prior.pop_front();
    }
    loop {
        let iteration = {
            let s = session.lock().await;
            if s.cancel_requested() {
                return Ok(PathOutcome::Cancelled);
            }
            if let Some(stop) = ctx.stop_reason() {
                return Ok(PathOutcome::Stopped(stop));
            }
            if let Some(gate) = crate::approval::pending(&s.state, ApprovalGate::BeforeStart) {
                return Ok(PathOutcome::AwaitApproval(gate));
            }
            if s.state.iteration_count >= s.state.max_iterations {
                return Ok(PathOutcome::BoundReached);
            }
            s.state.iteration_count - s.state.team_iterations + 1
        };
        let workspace = match &ctx.workspace {
            Some(tw) => {
                let heads = session.lock().await.state.repos.clone();
                match tw.prepare(AGENT_ROLE, &heads).await {
                    Ok(w) => Some(w),
                    Err(e) => return Err(workspace_failure(session, e).await),
                }
            }
            None => None,
        };
        let feedback = session.lock().await.state.review_feedback.clone();
        let context = if feedback.is_empty() {
            Vec::new()
        } else {
            vec![format!("reviewer: {feedback}")]
        };
        let input = IterationInput {
            task: task.clone(),
            role: AGENT_ROLE.to_string(),
            iteration,
            step: AgentStep::Iteration,
            prior_outputs: prior.iter().cloned().collect(),
            context,
            workspace,
        };
        let out = match ctx.call_agent(input).await {
            Ok(out) => out,
            Err(StepError::Stopped(stop)) => return Ok(PathOutcome::Stopped(stop)),
            Err(StepError::Budget(stop)) => return Ok(PathOutcome::BudgetExhausted(stop)),
            Err(StepError::Store(e)) => return Err(e),
            Err(StepError::Agent(e)) => {
                let mut s = session.lock().await;
                s.state.last_error = e.to_string();
                s.commit(None, &[], None).await?;
                return Ok(PathOutcome::Failed(e.to_string()));
            }
        };
        let done = out.done;
        let output = out.output.clone();
        // The code first: pushed (a compare-and-swap on the branch) before the
        // checkpoint that records it, so a checkpoint never names a commit the remote
        // does not have.
        let repos = match &ctx.workspace {
            Some(tw) => {
                let heads = session.lock().await.state.repos.clone();
                let recorded = tw
                    .record(
                        AGENT_ROLE,
                        iteration,
                        &heads,
                        &out.output,
                        out.changed_paths.as_deref(),
                        &[],
                    )
                    .await;
                match recorded {
                    Ok(r) => Some(r),
                    Err(e) => return Err(workspace_failure(session, e).await),
                }
            }
            None => None,
        };
        {
            let mut s = session.lock().await;
            if let Some(repos) = repos {
                s.state.repos = repos;
            }
            let record = s.apply_iteration(&ctx.worker_id, AGENT_ROLE, iteration, out);
            s.state.result = record.output.clone();
            // The reviewer's comment was handed over with this iteration.
            s.state.review_feedback.clear();
            let ev = s.event(progress_event::Kind::Iteration(IterationDone {
                record: Some(record.clone()),
                iteration_count: s.state.iteration_count,
                max_iterations: s.state.max_iterations,
            }));
            if done {
                // The path ends here: the finish (or the park at a `before_complete`
                // gate) that follows at once writes this iteration with it.
                s.defer_iteration(record, [ev]);
            } else {
                s.commit(Some(&record), &[ev], None).await?;
            }
        }
        crate::telemetry::iteration("single", "agent");
        prior.push_back(output);
        if prior.len() > PRIOR_OUTPUTS {
            prior.pop_front();
        }
        if done {
            return Ok(PathOutcome::Completed);
        }
    }
}
