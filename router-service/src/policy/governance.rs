//! Governance in the analysis: the task's default budget, its tenant's daily limit and
//! the approval gates that apply, each with the reason that asked for it. Runs after the
//! routing decision and never changes it.

use super::file::{PolicyFile, rule_reason, valid_tenant_name};
use taskrouter_proto::v1::{GateRequirement, RoutingAnalysis, RoutingDecision, Task};

/// The task label naming its tenant.
pub const TENANT_LABEL: &str = "tenant";
/// The tenant of a task without a (valid) `tenant` label.
pub const DEFAULT_TENANT: &str = "default";

/// A rule's timeout in whole seconds, at least 1 (validation keeps it within 1 s..=30 days).
pub fn rule_timeout_seconds(timeout: &str) -> u32 {
    humantime::parse_duration(timeout)
        .map(|d| d.as_secs().clamp(1, u32::MAX as u64) as u32)
        .unwrap_or(1)
}

/// Fills `budget_usd`, `tenant`, `tenant_usd_per_day` and `gates` of `analysis`.
pub fn apply(settings: &PolicyFile, task: &Task, analysis: &mut RoutingAnalysis) {
    analysis.budget_usd = if analysis.decision == RoutingDecision::UseMultiAgent as i32 {
        settings.budgets.multi_agent_usd
    } else {
        settings.budgets.single_agent_usd
    };
    let tenant = task
        .labels
        .get(TENANT_LABEL)
        .filter(|t| valid_tenant_name(t))
        .map_or(DEFAULT_TENANT, String::as_str);
    analysis.tenant = tenant.to_string();
    analysis.tenant_usd_per_day = settings
        .tenants
        .usd_per_day
        .get(tenant)
        .copied()
        .unwrap_or(settings.tenants.default_usd_per_day);
    analysis.gates.clear();
    for rule in &settings.approval.rules {
        let Some(code) = rule_reason(&rule.reason) else {
            continue;
        };
        if !analysis.reasons.iter().any(|r| r.code == code as i32) {
            continue;
        }
        let gate = rule.gate.to_proto();
        // One requirement per gate: the first matching rule decides its settings.
        if analysis.gates.iter().any(|g| g.gate == gate as i32) {
            continue;
        }
        let timeout = rule_timeout_seconds(&rule.timeout);
        analysis.gates.push(GateRequirement {
            gate: gate as i32,
            reason: code as i32,
            timeout_seconds: timeout,
            on_timeout: rule.on_timeout.to_proto() as i32,
            on_reject: rule.on_reject.to_proto() as i32,
            message: format!(
                "{} requires approval {} (timeout {}s, then {})",
                code.as_str_name().trim_start_matches("REASON_CODE_"),
                rule.gate.as_str(),
                timeout,
                rule.on_timeout.as_str()
            ),
        });
    }
}

#[cfg(test)]
mod tests {
    use crate::policy::PolicyEngine;
    use taskrouter_proto::v1::{ApprovalGate, Complexity, RejectAction, Task, TimeoutAction};

    const POLICY: &str = r#"
[budgets]
single_agent_usd = 2.0
multi_agent_usd = 8.0
[tenants]
default_usd_per_day = 100.0
[tenants.usd_per_day]
acme = 5.0
[[approval.rules]]
reason = "DEPLOYMENT"
gate = "before_start"
timeout = "1h"
on_timeout = "reject"
[[approval.rules]]
reason = "COMPLIANCE_SENSITIVE"
gate = "before_complete"
timeout = "10m"
on_timeout = "approve"
on_reject = "iterate"
[[approval.rules]]
reason = "HIGH_VALUE"
gate = "before_start"
timeout = "5m"
on_timeout = "approve"
"#;

    fn task(desc: &str, tenant: Option<&str>) -> Task {
        Task {
            id: "t-1".into(),
            description: desc.into(),
            complexity: Complexity::Low as i32,
            labels: tenant
                .map(|t| [("tenant".to_string(), t.to_string())].into())
                .unwrap_or_default(),
            ..Default::default()
        }
    }

    #[test]
    fn the_analysis_reports_the_budget_by_decision_and_the_tenant_limit() {
        let p = PolicyEngine::from_toml(POLICY, "/p.toml").unwrap();
        let single = p.evaluate(&task("fix a typo", Some("acme")));
        assert_eq!(single.budget_usd, 2.0);
        assert_eq!(single.tenant, "acme");
        assert_eq!(single.tenant_usd_per_day, 5.0);
        assert!(single.gates.is_empty());
        let multi = p.evaluate(&task("deploy the service to production", None));
        assert_eq!(multi.budget_usd, 8.0);
        assert_eq!(multi.tenant, "default");
        assert_eq!(multi.tenant_usd_per_day, 100.0);
    }

    #[test]
    fn gates_follow_the_reasons_that_fired_one_per_gate() {
        let p = PolicyEngine::from_toml(POLICY, "/p.toml").unwrap();
        let a = p.evaluate(&task("rotate the HIPAA credentials and deploy", None));
        assert_eq!(a.gates.len(), 2, "{:?}", a.gates);
        let start = &a.gates[0];
        assert_eq!(start.gate, ApprovalGate::BeforeStart as i32);
        assert_eq!(start.timeout_seconds, 3600);
        assert_eq!(start.on_timeout, TimeoutAction::Reject as i32);
        assert!(
            start
                .message
                .starts_with("DEPLOYMENT requires approval before_start")
        );
        let complete = &a.gates[1];
        assert_eq!(complete.gate, ApprovalGate::BeforeComplete as i32);
        assert_eq!(complete.on_reject, RejectAction::Iterate as i32);
        assert_eq!(complete.on_timeout, TimeoutAction::Approve as i32);
        // HIGH_VALUE also asks for before_start, but DEPLOYMENT's rule came first.
        let mut rich = task("deploy it", None);
        rich.estimated_value_usd = 1e6;
        let a = p.evaluate(&rich);
        assert_eq!(a.gates.len(), 1);
        assert_eq!(a.gates[0].timeout_seconds, 3600);
    }

    #[test]
    fn the_builtin_policy_has_no_budget_and_no_gates() {
        let p = PolicyEngine::builtin().unwrap();
        let a = p.evaluate(&task(
            "deploy to production, rotate the credentials",
            Some("x"),
        ));
        assert_eq!(a.budget_usd, 0.0);
        assert_eq!(a.tenant_usd_per_day, 0.0);
        assert!(a.gates.is_empty());
    }
}
