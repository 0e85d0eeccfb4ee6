//! The task page's governance sections: approval gates (what raised each, where it
//! stands, who decided) and spend budgets (the task's and its tenant's, what stopped it).
//! Shown only for tasks that have them. A decider's comment is shown only with
//! `--ui-show-descriptions` (like a description, it may hold anything).

use super::html::{esc, reason, time};
use crate::approval::{gate_name, requirement};
use crate::budget::valid_tenant_name;
use crate::session::governance::{TaskSpend, TenantSpend, micros_to_usd};
use std::fmt::Write as _;
use taskrouter_proto::v1::{
    ApprovalGate, ApprovalRecord, BudgetKind, Decision, RejectAction, SessionState, TaskStatus,
    TimeoutAction,
};

/// The spend records the budget section shows beside the state (read by the handler;
/// `None` where the store had none or could not answer).
#[derive(Clone, Debug, Default)]
pub struct Spend {
    /// The task's settled spend and open reservations.
    pub task: Option<TaskSpend>,
    /// Its tenant's spend today (UTC), with the day.
    pub tenant_today: Option<(String, TenantSpend)>,
}

/// The tenant the budgets count against: the router's name for it, else the task's label.
pub fn tenant_of(s: &SessionState) -> Option<String> {
    let analysis = s.analysis.as_ref();
    if let Some(a) = analysis
        && valid_tenant_name(&a.tenant)
    {
        return Some(a.tenant.clone());
    }
    s.task
        .as_ref()
        .and_then(|t| t.labels.get(crate::budget::TENANT_LABEL))
        .filter(|t| valid_tenant_name(t))
        .cloned()
}

/// Whether the task has a budget worth a section: its own, its tenant's, or a stop.
pub fn has_budget(s: &SessionState) -> bool {
    s.budget_usd > 0.0
        || s.budget_exhausted != BudgetKind::Unspecified as i32
        || s.analysis
            .as_ref()
            .is_some_and(|a| a.tenant_usd_per_day > 0.0)
}

fn usd(v: f64) -> String {
    format!("${v:.4}")
}

fn gate_of(v: i32) -> ApprovalGate {
    ApprovalGate::try_from(v).unwrap_or_default()
}

/// Where a gate stands: "pending", "approved", "rejected" or "not reached".
fn gate_state(s: &SessionState, gate: ApprovalGate) -> &'static str {
    if s.status == TaskStatus::WaitingApproval as i32 && s.waiting_gate == gate as i32 {
        return "pending";
    }
    let last = s.approvals.iter().rev().find(|r| r.gate == gate as i32);
    match last.map(|r| Decision::try_from(r.decision).unwrap_or_default()) {
        Some(Decision::Approved) => "approved",
        Some(Decision::Rejected) => "rejected",
        _ if s.passed_gates.contains(&(gate as i32)) => "approved",
        _ => "not reached",
    }
}

fn decision_text(r: &ApprovalRecord) -> String {
    let d = match Decision::try_from(r.decision).unwrap_or_default() {
        Decision::Approved => "approved",
        Decision::Rejected => "rejected",
        Decision::Unspecified => "-",
    };
    if r.timed_out {
        format!("{d} (timeout)")
    } else {
        d.to_string()
    }
}

/// The approvals section, or "" when the task has no gate.
pub fn approvals(s: &SessionState, show_comments: bool) -> String {
    let mut gates: Vec<ApprovalGate> = s
        .analysis
        .as_ref()
        .map(|a| a.gates.iter().map(|g| gate_of(g.gate)).collect())
        .unwrap_or_default();
    for r in &s.approvals {
        let g = gate_of(r.gate);
        if !gates.contains(&g) {
            gates.push(g);
        }
    }
    if gates.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        r#"<section id="approvals"><h2>Approvals</h2><table><thead><tr><th>Gate</th><th>State</th><th>Raised by</th><th>Timeout</th><th>Decided by</th><th>Decided at</th></tr></thead><tbody>"#,
    );
    for gate in gates {
        let name = gate_name(gate);
        let state = gate_state(s, gate);
        let req = requirement(s, gate);
        let raised = req.map_or_else(
            || "-".to_string(),
            |r| format!("<b>{}</b>: {}", reason(r.reason), esc(&r.message)),
        );
        let timeout = req.map_or_else(
            || "-".to_string(),
            |r| {
                let then = match TimeoutAction::try_from(r.on_timeout).unwrap_or_default() {
                    TimeoutAction::Approve => "approve",
                    TimeoutAction::Reject | TimeoutAction::Unspecified => "reject",
                };
                let reject = if gate == ApprovalGate::BeforeComplete
                    && r.on_reject == RejectAction::Iterate as i32
                {
                    "; a rejection sends it back"
                } else {
                    ""
                };
                format!("{}s, then {then}{reject}", r.timeout_seconds)
            },
        );
        let state_html = if state == "pending" {
            format!(
                r#"<span class="gate-pending">pending</span> <span class="note">until {}</span>"#,
                time(&s.approval_deadline)
            )
        } else {
            format!(
                r#"<span class="gate-{}">{state}</span>"#,
                state.replace(' ', "-")
            )
        };
        let last = s.approvals.iter().rev().find(|r| r.gate == gate as i32);
        let (by, at) = match (state, last) {
            ("pending" | "not reached", _) | (_, None) => ("-".to_string(), "-".to_string()),
            (_, Some(r)) => (esc(&r.decided_by), time(&r.at)),
        };
        let _ = write!(
            out,
            r#"<tr data-gate="{name}"><td>{name}</td><td class="gate-state">{state_html}</td><td>{raised}</td><td>{timeout}</td><td class="decided-by">{by}</td><td>{at}</td></tr>"#
        );
    }
    out.push_str("</tbody></table>");
    if !s.approvals.is_empty() {
        out.push_str(
            r#"<h3>Decisions</h3><table id="decisions"><thead><tr><th>Gate</th><th>Decision</th><th>By</th><th>At</th><th>Comment</th></tr></thead><tbody>"#,
        );
        for r in &s.approvals {
            let comment = if r.comment.is_empty() {
                "-".to_string()
            } else if show_comments {
                esc(&r.comment)
            } else {
                format!(
                    r#"<span class="note">hidden ({} bytes)</span>"#,
                    r.comment.len()
                )
            };
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{comment}</td></tr>",
                gate_name(gate_of(r.gate)),
                decision_text(r),
                esc(&r.decided_by),
                time(&r.at),
            );
        }
        out.push_str("</tbody></table>");
    }
    out.push_str("</section>");
    out
}

/// The budget section, or "" when the task has no budget.
pub fn budget(s: &SessionState, spend: &Spend) -> String {
    if !has_budget(s) {
        return String::new();
    }
    let analysis = s.analysis.clone().unwrap_or_default();
    let mut dl = String::new();
    let mut row = |label: &str, value: String| {
        let _ = write!(dl, "<dt>{}</dt><dd>{value}</dd>", esc(label));
    };
    row(
        "Task budget",
        if s.budget_usd > 0.0 {
            format!(r#"<span id="budget-usd">{}</span>"#, usd(s.budget_usd))
        } else {
            "none".into()
        },
    );
    match spend.task {
        Some(t) => {
            row("Spent (settled)", usd(micros_to_usd(t.spent)));
            row("Reserved (calls in flight)", usd(micros_to_usd(t.held)));
            if s.budget_usd > 0.0 {
                let left = s.budget_usd - micros_to_usd(t.spent) - micros_to_usd(t.held);
                row("Left", usd(left.max(0.0)));
            }
        }
        None => row("Spent", usd(s.cost_usd)),
    }
    let tenant = tenant_of(s);
    row(
        "Tenant",
        tenant.as_deref().map_or_else(|| "-".to_string(), esc),
    );
    if analysis.tenant_usd_per_day > 0.0 {
        row(
            "Tenant budget per UTC day",
            usd(analysis.tenant_usd_per_day),
        );
    }
    if let Some((day, t)) = &spend.tenant_today {
        row(
            &format!("Tenant spent on {day}"),
            format!(
                "{} settled, {} reserved",
                usd(micros_to_usd(t.spent)),
                usd(micros_to_usd(t.held))
            ),
        );
    }
    let stopped = match BudgetKind::try_from(s.budget_exhausted).unwrap_or_default() {
        BudgetKind::Task => Some(format!(
            "the task's budget ({}): the next agent call did not fit",
            usd(s.budget_usd)
        )),
        BudgetKind::Tenant => Some(format!(
            "tenant {}'s daily budget ({}): the next agent call did not fit",
            esc(tenant.as_deref().unwrap_or("-")),
            usd(analysis.tenant_usd_per_day)
        )),
        BudgetKind::Unspecified => None,
    };
    if let Some(text) = stopped {
        row(
            "Stopped by",
            format!(
                r#"<span class="error" id="budget-stop">{text}</span> <span class="note">resume with a larger budget (Run with resume)</span>"#
            ),
        );
    }
    format!(r#"<section id="budget"><h2>Budget</h2><dl>{dl}</dl></section>"#)
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskrouter_proto::v1::{GateRequirement, ReasonCode, RoutingAnalysis, Task};

    fn gated() -> SessionState {
        SessionState {
            status: TaskStatus::WaitingApproval as i32,
            waiting_gate: ApprovalGate::BeforeComplete as i32,
            analysis: Some(RoutingAnalysis {
                gates: vec![
                    GateRequirement {
                        gate: ApprovalGate::BeforeStart as i32,
                        reason: ReasonCode::Deployment as i32,
                        timeout_seconds: 3600,
                        on_timeout: TimeoutAction::Reject as i32,
                        message: "deployments <need> a person".into(),
                        ..Default::default()
                    },
                    GateRequirement {
                        gate: ApprovalGate::BeforeComplete as i32,
                        reason: ReasonCode::Deployment as i32,
                        timeout_seconds: 60,
                        on_timeout: TimeoutAction::Approve as i32,
                        on_reject: RejectAction::Iterate as i32,
                        ..Default::default()
                    },
                ],
                tenant: "acme".into(),
                tenant_usd_per_day: 2.5,
                ..Default::default()
            }),
            approvals: vec![ApprovalRecord {
                gate: ApprovalGate::BeforeStart as i32,
                decision: Decision::Approved as i32,
                decided_by: "alice<script>".into(),
                comment: "SECRET-COMMENT".into(),
                ..Default::default()
            }],
            passed_gates: vec![ApprovalGate::BeforeStart as i32],
            budget_usd: 1.0,
            budget_exhausted: BudgetKind::Unspecified as i32,
            task: Some(Task::default()),
            ..Default::default()
        }
    }

    #[test]
    fn gates_show_their_state_reason_and_decider_escaped() {
        let s = gated();
        let html = approvals(&s, false);
        assert!(html.contains(r#"<tr data-gate="before_start"><td>before_start</td><td class="gate-state"><span class="gate-approved">approved"#), "{html}");
        assert!(
            html.contains(r#"<span class="gate-pending">pending"#),
            "{html}"
        );
        assert!(html.contains("<b>DEPLOYMENT</b>: deployments &lt;need&gt; a person"));
        assert!(html.contains("alice&lt;script&gt;") && !html.contains("alice<script>"));
        assert!(html.contains("60s, then approve; a rejection sends it back"));
        assert!(!html.contains("SECRET-COMMENT") && html.contains("hidden (14 bytes)"));
        assert!(approvals(&s, true).contains("SECRET-COMMENT"));
        assert_eq!(approvals(&SessionState::default(), true), "");
    }

    #[test]
    fn a_budget_stop_names_the_budget_and_the_spend() {
        let mut s = gated();
        s.status = TaskStatus::BudgetExhausted as i32;
        s.budget_exhausted = BudgetKind::Tenant as i32;
        let spend = Spend {
            task: Some(TaskSpend {
                spent: 400_000,
                held: 100_000,
                max_call: 0,
            }),
            tenant_today: Some((
                "2026-11-28".into(),
                TenantSpend {
                    spent: 2_500_000,
                    held: 0,
                },
            )),
        };
        let html = budget(&s, &spend);
        for want in [
            "$1.0000",
            "Spent (settled)</dt><dd>$0.4000",
            "Reserved (calls in flight)</dt><dd>$0.1000",
            "Left</dt><dd>$0.5000",
            "Tenant</dt><dd>acme",
            "Tenant spent on 2026-11-28</dt><dd>$2.5000 settled",
            "tenant acme's daily budget ($2.5000)",
        ] {
            assert!(html.contains(want), "{want} not in {html}");
        }
        assert_eq!(budget(&SessionState::default(), &Spend::default()), "");
    }
}
