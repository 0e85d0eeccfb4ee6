//! Output: JSON built from the proto messages (enum values as their proto names) and
//! human-readable text. Task descriptions are never printed, only their size.

use scenarios::Outcome;
use serde_json::{Value, json};
use std::fmt::Write as _;
use taskrouter_proto::v1::{
    ApprovalGate, BudgetKind, Decision, ExecutionPath, FallbackRecord, GetPolicyResponse,
    IterationRecord, ProgressEvent, RepoBranch, RoutingAnalysis, RoutingDecision, RunResult,
    SessionState, SpecialistProgress, Task, progress_event,
};

pub use crate::names::*;

/// "single-agent" / "multi-agent" for a decision.
pub fn decision_human(v: i32) -> String {
    match RoutingDecision::try_from(v) {
        Ok(RoutingDecision::UseSingleAgent) => "single-agent".into(),
        Ok(RoutingDecision::UseMultiAgent) => "multi-agent".into(),
        _ => "-".into(),
    }
}

/// "single-agent" / "multi-agent" for a path.
pub fn path_human(v: i32) -> String {
    match ExecutionPath::try_from(v) {
        Ok(ExecutionPath::SingleAgent) => "single-agent".into(),
        Ok(ExecutionPath::MultiAgent) => "multi-agent".into(),
        _ => "-".into(),
    }
}

/// RFC 3339 time, or null.
pub fn time_json(ts: &Option<prost_types::Timestamp>) -> Value {
    match time_text(ts) {
        Some(t) => Value::String(t),
        None => Value::Null,
    }
}

/// RFC 3339 time (milliseconds), if set and representable.
pub fn time_text(ts: &Option<prost_types::Timestamp>) -> Option<String> {
    let ts = (*ts)?;
    let t = std::time::SystemTime::try_from(ts).ok()?;
    Some(humantime::format_rfc3339_millis(t).to_string())
}

/// A task without its description (only its size).
pub fn task_json(t: &Task) -> Value {
    let labels: std::collections::BTreeMap<&String, &String> = t.labels.iter().collect();
    json!({
        "id": t.id,
        "description_bytes": t.description.len(),
        "complexity": complexity_name(t.complexity),
        "estimated_value_usd": t.estimated_value_usd,
        "repositories": t.repositories,
        "labels": labels,
    })
}

/// A routing analysis.
pub fn analysis_json(a: &RoutingAnalysis) -> Value {
    json!({
        "decision": decision_name(a.decision),
        "reasons": a.reasons.iter().map(|r| json!({
            "code": reason_name(r.code),
            "message": r.message,
        })).collect::<Vec<_>>(),
        "score": a.score,
        "confidence": a.confidence,
        "rollout_bucket": a.rollout_bucket,
        "suggested_roles": a.suggested_roles,
        "policy_version": a.policy_version,
        "multi_agent_recommended": a.multi_agent_recommended,
        "budget_usd": a.budget_usd,
        "tenant": a.tenant,
        "tenant_usd_per_day": a.tenant_usd_per_day,
        "gates": a.gates.iter().map(|g| json!({
            "gate": gate_name(g.gate),
            "reason": reason_name(g.reason),
            "timeout_seconds": g.timeout_seconds,
            "on_timeout": timeout_action_short(g.on_timeout),
            "on_reject": reject_action_short(g.on_reject),
            "message": g.message,
        })).collect::<Vec<_>>(),
    })
}

/// What a gate's timeout does, as the policy file writes it (`approve` / `reject`).
pub fn timeout_action_short(a: i32) -> &'static str {
    if a == taskrouter_proto::v1::TimeoutAction::Approve as i32 {
        "approve"
    } else {
        "reject"
    }
}

/// What a rejection does, as the policy file writes it (`iterate` / `fail`).
pub fn reject_action_short(a: i32) -> &'static str {
    if a == taskrouter_proto::v1::RejectAction::Iterate as i32 {
        "iterate"
    } else {
        "fail"
    }
}

/// A fallback record, or null.
pub fn fallback_json(f: &Option<FallbackRecord>) -> Value {
    match f {
        None => Value::Null,
        Some(f) => json!({
            "cause": cause_name(f.cause),
            "detail": f.detail,
            "at": time_json(&f.at),
            "phase": phase_name(f.phase),
        }),
    }
}

fn specialist_json(sp: &SpecialistProgress) -> Value {
    json!({
        "role": sp.role,
        "status": specialist_name(sp.status),
        "iterations": sp.iterations,
        "output": sp.output,
        "last_error": sp.last_error,
        "repos": repos_json(&sp.repos),
    })
}

/// Durable workspaces: branch and commits per repository.
pub fn repos_json(repos: &[RepoBranch]) -> Value {
    repos
        .iter()
        .map(|r| {
            json!({
                "repo": r.repo,
                "branch": r.branch,
                "base_commit": r.base_commit,
                "commit": r.commit,
            })
        })
        .collect()
}

/// One `repo: branch @ commit` line per repository (commits shortened to 12 digits).
fn repos_text(out: &mut String, repos: &[RepoBranch]) {
    for r in repos {
        let _ = writeln!(
            out,
            "branch:          {} {} @ {}",
            r.repo,
            r.branch,
            r.commit.get(..12).unwrap_or(&r.commit)
        );
    }
}

/// A SessionState (the task's description is reduced to its size).
pub fn state_json(s: &SessionState) -> Value {
    json!({
        "schema_version": s.schema_version,
        "task_id": s.task_id,
        "task": s.task.as_ref().map(task_json),
        "status": status_name(s.status),
        "path": path_name(s.path),
        "analysis": s.analysis.as_ref().map(analysis_json),
        "iteration_count": s.iteration_count,
        "max_iterations": s.max_iterations,
        "team_iterations": s.team_iterations,
        "phase": phase_name(s.phase),
        "specialists": s.specialists.iter().map(specialist_json).collect::<Vec<_>>(),
        "fallback": fallback_json(&s.fallback),
        "cost_usd": s.cost_usd,
        "tokens_in": s.tokens_in,
        "tokens_out": s.tokens_out,
        "created_at": time_json(&s.created_at),
        "updated_at": time_json(&s.updated_at),
        "finished_at": time_json(&s.finished_at),
        "last_error": s.last_error,
        "version": s.version,
        "fencing_token": s.fencing_token,
        "worker_id": s.worker_id,
        "result": s.result,
        "cancel_requested": s.cancel_requested,
        "delivery_count": s.delivery_count,
        "dead_lettered": s.dead_lettered,
        "archived": s.archived,
        "archive_expires_at": time_json(&s.archive_expires_at),
        "force_single_agent": s.force_single_agent,
        "repos": repos_json(&s.repos),
        "budget_usd": s.budget_usd,
        "budget_exhausted": budget_kind_name(s.budget_exhausted),
        "waiting_gate": gate_name(s.waiting_gate),
        "approval_deadline": time_json(&s.approval_deadline),
        "approvals": s.approvals.iter().map(|r| json!({
            "gate": gate_name(r.gate),
            "decision": decision_verdict(r.decision),
            "decided_by": r.decided_by,
            "at": time_json(&r.at),
            "comment": r.comment,
            "timed_out": r.timed_out,
        })).collect::<Vec<_>>(),
        "passed_gates": s.passed_gates.iter().map(|g| gate_name(*g)).collect::<Vec<_>>(),
    })
}

/// One iteration record.
pub fn iteration_json(r: &IterationRecord) -> Value {
    json!({
        "iteration": r.iteration,
        "role": r.role,
        "output": r.output,
        "done": r.done,
        "cost_usd": r.cost_usd,
        "tokens_in": r.tokens_in,
        "tokens_out": r.tokens_out,
        "at": time_json(&r.at),
        "worker_id": r.worker_id,
    })
}

/// A run result.
pub fn run_result_json(r: &RunResult) -> Value {
    json!({
        "task_id": r.task_id,
        "status": status_name(r.status),
        "routing_decision": decision_name(r.routing_decision),
        "path": path_name(r.path),
        "iterations_this_run": r.iterations_this_run,
        "total_iterations": r.total_iterations,
        "fallback": fallback_json(&r.fallback),
        "cost_usd": r.cost_usd,
        "result": r.result,
        "state": r.state.as_ref().map(state_json),
        "repos": repos_json(&r.repos),
    })
}

/// One progress event: `kind` names the event, the payload sits under the same name.
pub fn event_json(e: &ProgressEvent) -> Value {
    use progress_event::Kind;
    let (kind, payload) = match &e.kind {
        None => ("unknown", Value::Null),
        Some(Kind::Submitted(_)) => ("submitted", json!({})),
        Some(Kind::Routed(r)) => (
            "routed",
            json!({
                "analysis": r.analysis.as_ref().map(analysis_json),
                "path": path_name(r.path),
            }),
        ),
        Some(Kind::Iteration(i)) => (
            "iteration",
            json!({
                "record": i.record.as_ref().map(iteration_json),
                "iteration_count": i.iteration_count,
                "max_iterations": i.max_iterations,
            }),
        ),
        Some(Kind::Phase(p)) => (
            "phase",
            json!({ "phase": phase_name(p.phase), "roles": p.roles }),
        ),
        Some(Kind::Fallback(f)) => ("fallback", fallback_json(&Some(f.clone()))),
        Some(Kind::Finished(f)) => (
            "finished",
            json!({
                "status": status_name(f.status),
                "total_iterations": f.total_iterations,
                "cost_usd": f.cost_usd,
                "error": f.error,
                "repos": repos_json(&f.repos),
            }),
        ),
        Some(Kind::ApprovalRequested(a)) => (
            "approval_requested",
            json!({
                "gate": gate_name(a.gate),
                "deadline": time_json(&a.deadline),
                "reason": a.reason,
            }),
        ),
        Some(Kind::ApprovalDecided(d)) => (
            "approval_decided",
            json!({
                "gate": gate_name(d.gate),
                "decision": decision_verdict(d.decision),
                "decided_by": d.decided_by,
                "timed_out": d.timed_out,
            }),
        ),
        Some(Kind::BudgetStopped(b)) => (
            "budget_stopped",
            json!({
                "kind": budget_kind_name(b.kind),
                "spent_usd": b.spent_usd,
                "limit_usd": b.limit_usd,
            }),
        ),
    };
    let mut v = json!({
        "task_id": e.task_id,
        "sequence": e.sequence,
        "at": time_json(&e.at),
        "kind": kind,
    });
    if let Value::Object(m) = &mut v {
        m.insert(kind.to_string(), payload);
    }
    v
}

/// The policy in force.
pub fn policy_json(p: &GetPolicyResponse) -> Value {
    let policy = p.policy.as_ref().map(|p| {
        json!({
            "multi_agent_enabled": p.multi_agent_enabled,
            "rollout_percent": p.rollout_percent,
            "rollout_group": p.rollout_group,
            "value_threshold_usd": p.value_threshold_usd,
            "compliance_keywords": p.compliance_keywords,
            "deployment_keywords": p.deployment_keywords,
            "cross_repo_keywords": p.cross_repo_keywords,
            "cross_repo_min_repositories": p.cross_repo_min_repositories,
            "fallback_decision": decision_name(p.fallback_decision),
            "max_description_bytes": p.max_description_bytes,
            "budgets": {
                "single_agent_usd": p.single_agent_budget_usd,
                "multi_agent_usd": p.multi_agent_budget_usd,
            },
            "tenants": {
                "default_usd_per_day": p.tenant_default_usd_per_day,
                "usd_per_day": p.tenant_usd_per_day.iter().collect::<std::collections::BTreeMap<_, _>>(),
            },
            "approval_rules": p.approval_rules.iter().map(|r| json!({
                "reason": reason_name(r.reason),
                "gate": gate_name(r.gate),
                "timeout_seconds": r.timeout_seconds,
                "on_timeout": timeout_action_short(r.on_timeout),
                "on_reject": reject_action_short(r.on_reject),
            })).collect::<Vec<_>>(),
        })
    });
    json!({
        "version": p.version,
        "source": p.source,
        "loaded_at": time_json(&p.loaded_at),
        "policy": policy,
    })
}

/// Reason codes, short, comma-separated.
pub fn reason_codes(a: &RoutingAnalysis) -> String {
    let codes: Vec<String> = a.reasons.iter().map(|r| reason_short(r.code)).collect();
    if codes.is_empty() {
        "-".into()
    } else {
        codes.join(",")
    }
}

/// Human text of a routing analysis: the decision and every reason.
pub fn analysis_text(a: &RoutingAnalysis) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "decision:        {} ({})",
        decision_human(a.decision),
        decision_name(a.decision)
    );
    let _ = writeln!(out, "reasons:");
    let width = a
        .reasons
        .iter()
        .map(|r| reason_short(r.code).len())
        .max()
        .unwrap_or(0);
    for r in &a.reasons {
        let _ = writeln!(
            out,
            "  {:<width$}  {}",
            reason_short(r.code),
            service_kit::status_text::one_line(&r.message)
        );
    }
    let _ = writeln!(
        out,
        "score:           {:.1} (confidence {:.2}{})",
        a.score,
        a.confidence,
        if a.multi_agent_recommended {
            ", rules recommend the team path"
        } else {
            ""
        }
    );
    let _ = writeln!(out, "rollout bucket:  {}", a.rollout_bucket);
    let _ = writeln!(
        out,
        "roles:           {}",
        if a.suggested_roles.is_empty() {
            "-".to_string()
        } else {
            a.suggested_roles.join(", ")
        }
    );
    let _ = writeln!(
        out,
        "policy version:  {}",
        if a.policy_version.is_empty() {
            "-"
        } else {
            &a.policy_version
        }
    );
    out
}

fn fallback_text(f: &Option<FallbackRecord>) -> String {
    match f {
        None => "-".into(),
        Some(f) => format!(
            "{} in phase {}: {}",
            cause_short(f.cause),
            phase_short(f.phase),
            service_kit::status_text::one_line(&f.detail)
        ),
    }
}

/// Human text of a SessionState. The description appears as its size only.
pub fn state_text(s: &SessionState) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "task:            {}", s.task_id);
    let _ = writeln!(out, "status:          {}", status_short(s.status));
    if let Some(t) = &s.task {
        let _ = writeln!(out, "description:     {} bytes", t.description.len());
        let _ = writeln!(
            out,
            "complexity:      {}   value: ${:.2}",
            complexity_short(t.complexity),
            t.estimated_value_usd
        );
        if !t.repositories.is_empty() {
            let _ = writeln!(out, "repositories:    {}", t.repositories.join(", "));
        }
        if !t.labels.is_empty() {
            let mut labels: Vec<String> =
                t.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            labels.sort();
            let _ = writeln!(out, "labels:          {}", labels.join(", "));
        }
    }
    match &s.analysis {
        Some(a) => {
            let _ = writeln!(
                out,
                "decision:        {} ({})",
                decision_human(a.decision),
                reason_codes(a)
            );
        }
        None => {
            let _ = writeln!(out, "decision:        - (not routed yet)");
        }
    }
    let _ = writeln!(out, "path:            {}", path_human(s.path));
    if s.path == ExecutionPath::MultiAgent as i32 || s.phase != 0 {
        let _ = writeln!(out, "phase:           {}", phase_short(s.phase));
    }
    let _ = writeln!(
        out,
        "iterations:      {} of at most {}{}",
        s.iteration_count,
        s.max_iterations,
        if s.team_iterations > 0 {
            format!(" ({} on the team path)", s.team_iterations)
        } else {
            String::new()
        }
    );
    for sp in &s.specialists {
        let _ = writeln!(
            out,
            "  specialist     {} {} after {} iteration(s){}",
            sp.role,
            specialist_short(sp.status),
            sp.iterations,
            if sp.last_error.is_empty() {
                String::new()
            } else {
                format!(": {}", service_kit::status_text::one_line(&sp.last_error))
            }
        );
    }
    let _ = writeln!(out, "fallback:        {}", fallback_text(&s.fallback));
    let _ = writeln!(
        out,
        "cost:            ${:.4} ({} tokens in, {} out)",
        s.cost_usd, s.tokens_in, s.tokens_out
    );
    let times = [
        ("created:         ", &s.created_at),
        ("updated:         ", &s.updated_at),
        ("finished:        ", &s.finished_at),
    ];
    for (label, ts) in times {
        if let Some(t) = time_text(ts) {
            let _ = writeln!(out, "{label}{t}");
        }
    }
    if s.archived
        && let Some(t) = time_text(&s.archive_expires_at)
    {
        let _ = writeln!(out, "archived until:  {t}");
    }
    if s.cancel_requested {
        let _ = writeln!(out, "cancel:          requested");
    }
    if s.dead_lettered {
        let _ = writeln!(
            out,
            "dead-lettered:   after {} deliveries",
            s.delivery_count
        );
    }
    if !s.last_error.is_empty() {
        let _ = writeln!(
            out,
            "last error:      {}",
            service_kit::status_text::one_line(&s.last_error)
        );
    }
    if !s.result.is_empty() {
        let _ = writeln!(
            out,
            "result:          {}",
            service_kit::status_text::one_line(&s.result)
        );
    }
    repos_text(&mut out, &s.repos);
    let _ = writeln!(
        out,
        "checkpoint:      version {}, fencing token {}, worker {}",
        s.version,
        s.fencing_token,
        if s.worker_id.is_empty() {
            "-"
        } else {
            &s.worker_id
        }
    );
    out
}

/// Human text of iteration records, one per line.
pub fn iterations_text(records: &[IterationRecord]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "iterations ({} most recent):", records.len());
    for r in records {
        let _ = writeln!(
            out,
            "  {:>4}  {:<20} {:<5} ${:.4}  {}",
            r.iteration,
            r.role,
            if r.done { "done" } else { "" },
            r.cost_usd,
            service_kit::status_text::one_line(&r.output)
        );
    }
    out
}

/// Human text of a run result.
pub fn run_result_text(r: &RunResult) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "task:            {}", r.task_id);
    let _ = writeln!(out, "status:          {}", status_short(r.status));
    let reasons = r
        .state
        .as_ref()
        .and_then(|s| s.analysis.as_ref())
        .map(reason_codes)
        .unwrap_or_else(|| "-".into());
    let _ = writeln!(
        out,
        "decision:        {} ({reasons})",
        decision_human(r.routing_decision)
    );
    let _ = writeln!(out, "path:            {}", path_human(r.path));
    let _ = writeln!(
        out,
        "iterations:      {} this run, {} in total",
        r.iterations_this_run, r.total_iterations
    );
    let _ = writeln!(out, "fallback:        {}", fallback_text(&r.fallback));
    let _ = writeln!(out, "cost:            ${:.4}", r.cost_usd);
    repos_text(&mut out, &r.repos);
    if let Some(s) = &r.state
        && !s.last_error.is_empty()
    {
        let _ = writeln!(
            out,
            "last error:      {}",
            service_kit::status_text::one_line(&s.last_error)
        );
    }
    if !r.result.is_empty() {
        let _ = writeln!(
            out,
            "result:          {}",
            service_kit::status_text::one_line(&r.result)
        );
    }
    out
}

/// Human text of the policy in force.
pub fn policy_text(p: &GetPolicyResponse) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "version:         {}", p.version);
    let _ = writeln!(out, "source:          {}", p.source);
    if let Some(t) = time_text(&p.loaded_at) {
        let _ = writeln!(out, "loaded at:       {t}");
    }
    if let Some(p) = &p.policy {
        let _ = writeln!(
            out,
            "multi-agent:     {} (rollout {}% of group {:?})",
            if p.multi_agent_enabled {
                "enabled"
            } else {
                "DISABLED"
            },
            p.rollout_percent,
            p.rollout_group
        );
        let _ = writeln!(out, "value threshold: ${:.2}", p.value_threshold_usd);
        let _ = writeln!(
            out,
            "cross-repo at:   {} repositories",
            p.cross_repo_min_repositories
        );
        let _ = writeln!(
            out,
            "fallback:        {}",
            decision_human(p.fallback_decision)
        );
        let _ = writeln!(out, "max description: {} bytes", p.max_description_bytes);
        for (name, words) in [
            ("compliance", &p.compliance_keywords),
            ("deployment", &p.deployment_keywords),
            ("cross-repo", &p.cross_repo_keywords),
        ] {
            let _ = writeln!(out, "{:<17}{}", format!("{name}:"), words.join(", "));
        }
        let _ = writeln!(
            out,
            "budgets:         single {}, team {}",
            usd_or_none(p.single_agent_budget_usd),
            usd_or_none(p.multi_agent_budget_usd)
        );
        let mut tenants = vec![format!(
            "default {}/day",
            usd_or_none(p.tenant_default_usd_per_day)
        )];
        let named: std::collections::BTreeMap<_, _> = p.tenant_usd_per_day.iter().collect();
        tenants.extend(
            named
                .into_iter()
                .map(|(t, usd)| format!("{t} {}/day", usd_or_none(*usd))),
        );
        let _ = writeln!(out, "tenants:         {}", tenants.join(", "));
        if p.approval_rules.is_empty() {
            let _ = writeln!(out, "approval:        none");
        }
        for r in &p.approval_rules {
            let _ = writeln!(
                out,
                "approval:        {} -> {} (timeout {}s, then {}; a rejection: {})",
                reason_short(r.reason),
                gate_short(r.gate),
                r.timeout_seconds,
                timeout_action_short(r.on_timeout),
                reject_action_short(r.on_reject)
            );
        }
    }
    out
}

/// `$2.50`, or `no limit` for 0.
fn usd_or_none(usd: f64) -> String {
    if usd > 0.0 {
        format!("${usd:.2}")
    } else {
        "no limit".into()
    }
}

/// An approval gate's proto name.
pub fn gate_name(g: i32) -> String {
    ApprovalGate::try_from(g)
        .map(|g| g.as_str_name().to_string())
        .unwrap_or_else(|_| format!("UNKNOWN({g})"))
}

/// An approval gate as the policy file writes it (`before_start`).
pub fn gate_short(g: i32) -> String {
    gate_name(g)
        .trim_start_matches("APPROVAL_GATE_")
        .to_ascii_lowercase()
}

/// `approved` / `rejected`.
pub fn decision_verdict(d: i32) -> &'static str {
    match Decision::try_from(d) {
        Ok(Decision::Approved) => "approved",
        Ok(Decision::Rejected) => "rejected",
        _ => "undecided",
    }
}

/// A budget kind's proto name.
pub fn budget_kind_name(k: i32) -> String {
    BudgetKind::try_from(k)
        .map(|k| k.as_str_name().to_string())
        .unwrap_or_else(|_| format!("UNKNOWN({k})"))
}

/// `task` / `tenant`.
pub fn budget_kind_short(k: i32) -> String {
    budget_kind_name(k)
        .trim_start_matches("BUDGET_KIND_")
        .to_ascii_lowercase()
}

/// One human line for a progress event, or `None` for events not worth a line.
pub fn event_line(e: &ProgressEvent) -> Option<String> {
    use progress_event::Kind;
    let text = match e.kind.as_ref()? {
        Kind::Submitted(_) => "submitted".to_string(),
        Kind::Routed(r) => {
            let a = r.analysis.clone().unwrap_or_default();
            let roles = if a.suggested_roles.is_empty() {
                String::new()
            } else {
                format!("; roles: {}", a.suggested_roles.join(", "))
            };
            format!(
                "routed: {} ({}), path {}{roles}",
                decision_human(a.decision),
                reason_codes(&a),
                path_human(r.path)
            )
        }
        Kind::Iteration(i) => {
            let r = i.record.clone().unwrap_or_default();
            let who = match r.role.as_str() {
                "agent" => "agent".to_string(),
                "lead" => "lead".to_string(),
                role => format!("specialist {role}"),
            };
            format!(
                "iteration {}/{} ({who} #{}{})",
                i.iteration_count,
                i.max_iterations,
                r.iteration,
                if r.done { ", done" } else { "" }
            )
        }
        Kind::Phase(p) => {
            if p.roles.is_empty() {
                format!("phase {}", phase_short(p.phase))
            } else {
                format!("phase {}: {}", phase_short(p.phase), p.roles.join(", "))
            }
        }
        Kind::Fallback(f) => format!("fallback: {}", fallback_text(&Some(f.clone()))),
        Kind::Finished(f) => {
            let mut s = format!(
                "finished {} after {} iteration(s), ${:.4}",
                status_short(f.status),
                f.total_iterations,
                f.cost_usd
            );
            if !f.error.is_empty() {
                let _ = write!(s, ": {}", service_kit::status_text::one_line(&f.error));
            }
            for r in &f.repos {
                let _ = write!(
                    s,
                    "; {} {} @ {}",
                    r.repo,
                    r.branch,
                    r.commit.get(..12).unwrap_or(&r.commit)
                );
            }
            s
        }
        Kind::ApprovalRequested(a) => format!(
            "waiting for approval at {}: {}",
            gate_short(a.gate),
            a.reason
        ),
        Kind::ApprovalDecided(d) => format!(
            "{} {} by {}{}",
            gate_short(d.gate),
            decision_verdict(d.decision),
            d.decided_by,
            if d.timed_out { " (timeout)" } else { "" }
        ),
        Kind::BudgetStopped(b) => format!(
            "stopped: the {} budget (${:.4}) ran out after ${:.4}; resume with a larger --budget",
            budget_kind_short(b.kind),
            b.limit_usd,
            b.spent_usd
        ),
    };
    Some(format!("#{:<4} {text}", e.sequence))
}

// The demo's table and JSON.

fn short_decision(v: i32) -> String {
    match RoutingDecision::try_from(v) {
        Ok(RoutingDecision::UseSingleAgent) => "single".into(),
        Ok(RoutingDecision::UseMultiAgent) => "multi".into(),
        _ => "-".into(),
    }
}

fn short_path(v: i32) -> String {
    match ExecutionPath::try_from(v) {
        Ok(ExecutionPath::SingleAgent) => "single".into(),
        Ok(ExecutionPath::MultiAgent) => "multi".into(),
        _ => "-".into(),
    }
}

/// The table's cells for one row.
fn demo_cells(row: &Outcome) -> Vec<String> {
    let reasons: Vec<String> = row.reasons().into_iter().map(reason_short).collect();
    vec![
        row.task_id.clone(),
        short_decision(row.decision()),
        if reasons.is_empty() {
            "-".into()
        } else {
            reasons.join(",")
        },
        row.state
            .as_ref()
            .map_or("-".into(), |s| short_path(s.path)),
        row.iterations_text(),
        row.fallback().map_or("-".into(), cause_short),
        row.state
            .as_ref()
            .map_or("-".into(), |s| status_short(s.status)),
        row.state
            .as_ref()
            .and_then(|s| s.repos.first())
            .map_or("-".into(), |r| {
                format!("{}@{}", r.branch, r.commit.get(..10).unwrap_or(&r.commit))
            }),
        row.trace_id.clone(),
        if row.failures.is_empty() {
            "ok".into()
        } else {
            "FAIL".into()
        },
    ]
}

/// The demo's rows as one aligned text table.
pub fn demo_table(rows: &[Outcome]) -> String {
    let header: Vec<String> = [
        "TASK",
        "DECISION",
        "REASONS",
        "PATH",
        "ITERATIONS",
        "FALLBACK",
        "STATUS",
        "BRANCH",
        "TRACE",
        "CHECK",
    ]
    .iter()
    .map(|h| h.to_string())
    .collect();
    let body: Vec<Vec<String>> = rows.iter().map(demo_cells).collect();
    let mut widths: Vec<usize> = header.iter().map(String::len).collect();
    for r in &body {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: &[String]| {
        let mut s = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(&header);
    for r in &body {
        out.push_str(&line(r));
    }
    out
}

/// One demo row as JSON (enum values as their proto names).
pub fn demo_row_json(row: &Outcome) -> Value {
    json!({
        "scenario": row.scenario,
        "task_id": row.task_id,
        "decision": decision_name(row.decision()),
        "reasons": row.reasons().into_iter().map(reason_name).collect::<Vec<_>>(),
        "path": row.state.as_ref().map(|s| path_name(s.path)),
        "iterations": row.state.as_ref().map(|s| s.iteration_count),
        "runs": row.runs.iter().map(|r| json!({
            "status": status_name(r.status),
            "iterations_this_run": r.iterations_this_run,
            "total_iterations": r.total_iterations,
        })).collect::<Vec<_>>(),
        "fallback_cause": row.fallback().map(cause_name),
        "status": row.state.as_ref().map(|s| status_name(s.status)),
        "repos": row.state.as_ref().map(|s| repos_json(&s.repos)),
        "trace_id": row.trace_id,
        "ok": row.failures.is_empty(),
        "failures": row.failures,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskrouter_proto::v1::{ReasonCode, TaskStatus};

    #[test]
    fn enum_values_use_their_proto_names() {
        assert_eq!(
            decision_name(RoutingDecision::UseMultiAgent as i32),
            "ROUTING_DECISION_USE_MULTI_AGENT"
        );
        assert_eq!(status_short(TaskStatus::Completed as i32), "COMPLETED");
        assert_eq!(reason_short(ReasonCode::CrossRepo as i32), "CROSS_REPO");
        assert_eq!(status_name(99), "UNKNOWN(99)");
    }

    #[test]
    fn descriptions_never_show_only_their_size() {
        let secret = "patient Jane Doe MRN-4411";
        let state = SessionState {
            task_id: "T".into(),
            task: Some(Task {
                id: "T".into(),
                description: secret.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let text = state_text(&state);
        assert!(!text.contains("Jane"), "{text}");
        assert!(text.contains(&format!("{} bytes", secret.len())), "{text}");
        let json = state_json(&state).to_string();
        assert!(!json.contains("Jane"), "{json}");
        assert!(json.contains("\"description_bytes\":25"), "{json}");
    }

    #[test]
    fn a_mismatch_is_reported_per_expectation() {
        let s = &scenarios::plan()[0];
        let mut row = Outcome {
            trace_id: String::new(),
            scenario: s.name,
            task_id: s.task.id.clone(),
            state: Some(SessionState {
                status: TaskStatus::Failed as i32,
                path: ExecutionPath::MultiAgent as i32,
                ..Default::default()
            }),
            runs: Vec::new(),
            failures: Vec::new(),
        };
        let failures = scenarios::check(s, &row);
        assert!(
            failures.iter().any(|f| f.starts_with("decision")),
            "{failures:?}"
        );
        assert!(
            failures.iter().any(|f| f.starts_with("path")),
            "{failures:?}"
        );
        assert!(
            failures.iter().any(|f| f.starts_with("status")),
            "{failures:?}"
        );
        row.failures = failures;
        let t = demo_table(&[row]);
        assert!(t.lines().nth(1).unwrap().ends_with("FAIL"), "{t}");
    }
}
