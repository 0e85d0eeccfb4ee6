//! Approval gates as the paths and the engine see them: which gate a task must still
//! pass (from the routing analysis), and the limits of a decision's comment.

use taskrouter_proto::v1::{ApprovalGate, GateRequirement, SessionState};

/// Largest accepted comment of a decision, in bytes.
pub const MAX_COMMENT_BYTES: usize = 4096;
/// `decided_by` of a decision taken by a gate's timeout.
pub const TIMEOUT_DECIDER: &str = "timeout";
/// `decided_by` when authentication is off.
pub const ANONYMOUS: &str = "anonymous";
/// The role Approve and Reject require.
pub const APPROVER_ROLE: &str = "approver";

/// The policy's requirement for `gate`, if it applies to the task.
pub fn requirement(state: &SessionState, gate: ApprovalGate) -> Option<&GateRequirement> {
    state
        .analysis
        .as_ref()?
        .gates
        .iter()
        .find(|g| g.gate == gate as i32)
}

/// The requirement for `gate` if the task must still pass it.
pub fn pending(state: &SessionState, gate: ApprovalGate) -> Option<GateRequirement> {
    let req = requirement(state, gate)?;
    (!state.passed_gates.contains(&(gate as i32))).then(|| req.clone())
}

/// The gate's name as the policy file writes it.
pub fn gate_name(gate: ApprovalGate) -> &'static str {
    match gate {
        ApprovalGate::BeforeStart => "before_start",
        ApprovalGate::BeforeComplete => "before_complete",
        ApprovalGate::Unspecified => "unspecified",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskrouter_proto::v1::RoutingAnalysis;

    #[test]
    fn a_gate_is_pending_until_passed() {
        let mut s = SessionState {
            analysis: Some(RoutingAnalysis {
                gates: vec![GateRequirement {
                    gate: ApprovalGate::BeforeStart as i32,
                    timeout_seconds: 5,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(pending(&s, ApprovalGate::BeforeStart).is_some());
        assert!(pending(&s, ApprovalGate::BeforeComplete).is_none());
        s.passed_gates.push(ApprovalGate::BeforeStart as i32);
        assert!(pending(&s, ApprovalGate::BeforeStart).is_none());
    }
}
