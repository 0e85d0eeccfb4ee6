//! Decisions at approval gates: Approve and Reject from a person, and the gate's timeout
//! applied by whichever replica sees it first. A decision takes the task's lease (no
//! worker holds it while the task waits), re-checks that the task still waits at that
//! gate, records the decision in SessionState in one conditional checkpoint and queues
//! the task again — so two replicas racing on one timeout apply it once.

use crate::approval::{TIMEOUT_DECIDER, gate_name};
use crate::autonomous_loop::{AutonomousLoop, status_of};
use crate::error::{Error, Result};
use crate::session::active::now;
use crate::session::governance::epoch_ms;
use std::time::{Duration, SystemTime};
use taskrouter_proto::v1::{
    ApprovalDecided, ApprovalGate, ApprovalRecord, Decision, RejectAction, SessionState,
    TaskStatus, TeamPhase, TimeoutAction, progress_event,
};

/// How long a decision waits for a lease another decision holds.
const LEASE_WAIT: Duration = Duration::from_secs(2);

/// One decision to apply.
#[derive(Clone, Debug)]
pub struct GateDecision<'a> {
    /// The gate decided.
    pub gate: ApprovalGate,
    /// Approve or reject.
    pub decision: Decision,
    /// Who decided.
    pub by: &'a str,
    /// The comment (never logged).
    pub comment: &'a str,
    /// Whether the gate's timeout decided.
    pub timed_out: bool,
}

fn same_as_last(state: &SessionState, d: &GateDecision<'_>) -> bool {
    state.approvals.last().is_some_and(|r| {
        r.gate == d.gate as i32
            && r.decision == d.decision as i32
            && r.decided_by == d.by
            && r.comment == d.comment
            && !r.timed_out
    })
}

fn not_waiting(state: &SessionState, gate: ApprovalGate) -> Error {
    let status = status_of(state);
    Error::FailedPrecondition {
        task_id: state.task_id.clone(),
        reason: if status == TaskStatus::WaitingApproval {
            format!(
                "it waits at {}, not {}",
                gate_name(ApprovalGate::try_from(state.waiting_gate).unwrap_or_default()),
                gate_name(gate)
            )
        } else {
            format!(
                "it does not wait for approval (status {})",
                status.as_str_name()
            )
        },
    }
}

/// Applies a person's decision (or, with `timed_out`, the gate's timeout). A repeated
/// identical decision returns the state unchanged.
pub async fn decide(
    engine: &AutonomousLoop,
    task_id: &str,
    d: GateDecision<'_>,
) -> Result<SessionState> {
    let state = engine.get(task_id).await?;
    let waits_here =
        status_of(&state) == TaskStatus::WaitingApproval && state.waiting_gate == d.gate as i32;
    if !waits_here {
        if same_as_last(&state, &d) {
            return Ok(state);
        }
        return Err(not_waiting(&state, d.gate));
    }
    let started = tokio::time::Instant::now();
    let mut session = loop {
        match engine.open_session(task_id).await? {
            Some(s) => break s,
            None if started.elapsed() < LEASE_WAIT => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            None => {
                return Err(Error::LeaseHeld {
                    task_id: task_id.to_string(),
                });
            }
        }
    };
    let result = apply(engine, &mut session, &d).await;
    session.release().await;
    let requeue = result?;
    let _ = engine.store().clear_approval_deadline(task_id).await;
    if requeue {
        // The parked task's entry was acknowledged: this queues it afresh.
        engine.queue().enqueue(task_id, "", b"").await?;
    }
    Ok(session.full_state())
}

/// Records the decision under the lease; true when the task goes on (is queued again).
async fn apply(
    engine: &AutonomousLoop,
    session: &mut crate::session::ActiveSession,
    d: &GateDecision<'_>,
) -> Result<bool> {
    let state = &session.state;
    if status_of(state) != TaskStatus::WaitingApproval || state.waiting_gate != d.gate as i32 {
        // Another replica decided between our read and the lease.
        if same_as_last(state, d) {
            return Ok(false);
        }
        return Err(not_waiting(state, d.gate));
    }
    let requirement = crate::approval::requirement(state, d.gate)
        .cloned()
        .unwrap_or_default();
    session.state.approvals.push(ApprovalRecord {
        gate: d.gate as i32,
        decision: d.decision as i32,
        decided_by: d.by.to_string(),
        at: Some(now()),
        comment: d.comment.to_string(),
        timed_out: d.timed_out,
    });
    session.state.waiting_gate = ApprovalGate::Unspecified as i32;
    session.state.approval_deadline = None;
    let ev = session.event(progress_event::Kind::ApprovalDecided(ApprovalDecided {
        gate: d.gate as i32,
        decision: d.decision as i32,
        decided_by: d.by.to_string(),
        timed_out: d.timed_out,
    }));
    let name = gate_name(d.gate);
    tracing::info!(task_id = %session.state.task_id, gate = name, decision = d.decision.as_str_name(), timed_out = d.timed_out, comment_bytes = d.comment.len(), "gate decided");
    if d.decision == Decision::Approved {
        crate::telemetry::approval(name, "approved");
        session.state.passed_gates.push(d.gate as i32);
        session.state.status = TaskStatus::InProgress as i32;
        session.commit(None, &[ev], None).await?;
        return Ok(true);
    }
    crate::telemetry::approval(name, "rejected");
    let iterate = d.gate == ApprovalGate::BeforeComplete
        && requirement.on_reject == RejectAction::Iterate as i32;
    if iterate {
        session.state.status = TaskStatus::InProgress as i32;
        session.state.review_feedback = if d.comment.is_empty() {
            "the reviewer rejected the result without a comment".to_string()
        } else {
            d.comment.to_string()
        };
        if session.state.phase == TeamPhase::Done as i32 {
            session.state.phase = TeamPhase::Synthesis as i32;
        }
        session.commit(None, &[ev], None).await?;
        return Ok(true);
    }
    session.commit(None, &[ev], None).await?;
    let reason = format!("rejected at {name} by {}", d.by);
    engine.finish(session, TaskStatus::Failed, &reason).await?;
    Ok(false)
}

/// Applies every gate timeout that is due (called periodically by the workers of every
/// replica; the lease and the status check make each timeout apply once).
pub async fn apply_due_timeouts(engine: &AutonomousLoop) -> Result<usize> {
    let store = engine.store();
    let due = store.due_approvals(epoch_ms(SystemTime::now()), 32).await?;
    let mut applied = 0;
    for task_id in due {
        let state = match engine.get(&task_id).await {
            Ok(s) => s,
            Err(Error::NotFound { .. }) => {
                store.clear_approval_deadline(&task_id).await?;
                continue;
            }
            Err(e) => return Err(e),
        };
        if status_of(&state) != TaskStatus::WaitingApproval {
            store.clear_approval_deadline(&task_id).await?;
            continue;
        }
        let gate = ApprovalGate::try_from(state.waiting_gate).unwrap_or_default();
        let past = state
            .approval_deadline
            .map(|t| t.seconds * 1000 + i64::from(t.nanos / 1_000_000))
            .is_none_or(|at| at <= epoch_ms(SystemTime::now()));
        if !past {
            continue;
        }
        let action = crate::approval::requirement(&state, gate)
            .map(|r| r.on_timeout)
            .unwrap_or(TimeoutAction::Reject as i32);
        let decision = if action == TimeoutAction::Approve as i32 {
            Decision::Approved
        } else {
            Decision::Rejected
        };
        let d = GateDecision {
            gate,
            decision,
            by: TIMEOUT_DECIDER,
            comment: "",
            timed_out: true,
        };
        match decide(engine, &task_id, d).await {
            Ok(_) => applied += 1,
            // Another replica got there first.
            Err(Error::FailedPrecondition { .. } | Error::LeaseHeld { .. }) => {}
            Err(e) => {
                tracing::warn!(task_id = %task_id, error = %e, "applying an approval timeout failed; retrying later")
            }
        }
    }
    Ok(applied)
}
