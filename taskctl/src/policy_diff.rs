//! `taskctl policy diff CANDIDATE.toml`: re-evaluates recorded tasks under the live and
//! a candidate policy with the router's own policy code, and reports the confusion table,
//! the ids of the tasks that flip (ids only, never descriptions) and, for each group, the
//! outcomes observed on the path the tasks actually took. It also lists the tasks whose
//! governance would change: the default budget (`[budgets]`, which follows the decision)
//! and the approval gates (`[approval]`) the candidate would attach.

use crate::cli::{Cli, DiffArgs};
use crate::client::{request, unary};
use crate::error::{CliError, Exit, Result};
use crate::output::{emit, emit_json};
use crate::rollout::connect;
use rollout_controller::outcomes::{
    GroupStats, Outcome, OutcomeSource, RecordQuery, RedisRecords, is_multi,
};
use router_service::PolicyEngine;
use serde_json::{Value, json};
use std::time::SystemTime;
use taskrouter_proto::v1::{
    ApprovalGate, GateRequirement, GetPolicyRequest, ReasonCode, RejectAction, RoutingAnalysis,
    TimeoutAction,
};

/// One cell of the confusion table.
struct Group {
    live_multi: bool,
    candidate_multi: bool,
    ids: Vec<String>,
    outcomes: Vec<Outcome>,
}

/// A task whose default budget would change.
struct BudgetChange {
    task_id: String,
    live_usd: f64,
    candidate_usd: f64,
}

/// A task whose approval gates would change.
struct GateChange {
    task_id: String,
    live: Vec<String>,
    candidate: Vec<String>,
}

/// Budgets are whole micro-dollars in the policy; anything closer is the same budget.
const USD_EPSILON: f64 = 1e-7;

/// Each gate of an analysis as one line: gate, reason, timeout and actions.
fn gates(analysis: &RoutingAnalysis) -> Vec<String> {
    let mut out: Vec<String> = analysis.gates.iter().map(gate_text).collect();
    out.sort();
    out
}

fn gate_text(g: &GateRequirement) -> String {
    let gate = match ApprovalGate::try_from(g.gate) {
        Ok(ApprovalGate::BeforeStart) => "before_start",
        Ok(ApprovalGate::BeforeComplete) => "before_complete",
        _ => "unknown_gate",
    };
    let reason = ReasonCode::try_from(g.reason)
        .map(|r| {
            r.as_str_name()
                .trim_start_matches("REASON_CODE_")
                .to_string()
        })
        .unwrap_or_else(|_| g.reason.to_string());
    let on_timeout = match TimeoutAction::try_from(g.on_timeout) {
        Ok(TimeoutAction::Approve) => "approve",
        _ => "reject",
    };
    let on_reject = match RejectAction::try_from(g.on_reject) {
        Ok(RejectAction::Iterate) => "iterate",
        _ => "fail",
    };
    format!(
        "{gate}({reason}, timeout {}s, then {on_timeout}, reject {on_reject})",
        g.timeout_seconds
    )
}

fn gates_label(gates: &[String]) -> String {
    if gates.is_empty() {
        "none".to_string()
    } else {
        gates.join(" + ")
    }
}

fn path(multi: bool) -> &'static str {
    if multi { "multi" } else { "single" }
}

/// Runs `policy diff`.
pub async fn diff(cli: &Cli, args: &DiffArgs) -> Result<Exit> {
    let candidate = load_file(&args.candidate, "CANDIDATE")?;
    let (live, live_source) = match &args.live {
        Some(path) => (load_file(path, "--live")?, path.display().to_string()),
        None => (live_from_router(cli).await?, cli.router.clone()),
    };
    let since = SystemTime::now()
        .checked_sub(args.since)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let source = RedisRecords::new(connect(&args.records)?, args.records.key_prefix.clone());
    // Re-evaluating a policy needs each task itself, not just its summary.
    let query = RecordQuery {
        with_task: true,
        ..RecordQuery::since(since)
    };
    let records = source
        .finished(&query)
        .await
        .map_err(|e| crate::rollout::redis_err(&args.records, e))?;

    let mut groups: Vec<Group> = [(false, false), (false, true), (true, false), (true, true)]
        .into_iter()
        .map(|(l, c)| Group {
            live_multi: l,
            candidate_multi: c,
            ids: Vec::new(),
            outcomes: Vec::new(),
        })
        .collect();
    let mut skipped = 0u64;
    let mut budgets = Vec::new();
    let mut gate_changes = Vec::new();
    for state in &records {
        let Some(task) = &state.task else {
            skipped += 1;
            continue;
        };
        let (la, ca) = live.evaluate_pair(&candidate, task);
        let (l, c) = (is_multi(&la), is_multi(&ca));
        let g = &mut groups[usize::from(l) * 2 + usize::from(c)];
        g.ids.push(state.task_id.clone());
        g.outcomes.push(Outcome::of(state));
        if (la.budget_usd - ca.budget_usd).abs() > USD_EPSILON {
            budgets.push(BudgetChange {
                task_id: state.task_id.clone(),
                live_usd: la.budget_usd,
                candidate_usd: ca.budget_usd,
            });
        }
        let (lg, cg) = (gates(&la), gates(&ca));
        if lg != cg {
            gate_changes.push(GateChange {
                task_id: state.task_id.clone(),
                live: lg,
                candidate: cg,
            });
        }
    }
    for g in &mut groups {
        g.ids.sort();
    }
    budgets.sort_by(|a, b| a.task_id.cmp(&b.task_id));
    gate_changes.sort_by(|a, b| a.task_id.cmp(&b.task_id));

    if cli.json {
        emit_json(&json!({
            "live": {"version": live.version(), "source": live_source},
            "candidate": {"version": candidate.version(), "source": args.candidate.display().to_string()},
            "since_secs": args.since.as_secs(),
            "tasks": records.len() as u64 - skipped,
            "skipped_without_task": skipped,
            "groups": groups.iter().map(group_json).collect::<Vec<Value>>(),
            "budget_changes": budgets.iter().map(|b| json!({
                "task_id": b.task_id,
                "live_usd": b.live_usd,
                "candidate_usd": b.candidate_usd,
            })).collect::<Vec<Value>>(),
            "gate_changes": gate_changes.iter().map(|g| json!({
                "task_id": g.task_id,
                "live": g.live,
                "candidate": g.candidate,
            })).collect::<Vec<Value>>(),
        }));
    } else {
        let mut out = text(
            &live,
            &live_source,
            &candidate,
            args,
            &groups,
            records.len() as u64 - skipped,
            skipped,
        );
        out.push_str(&governance_text(&budgets, &gate_changes));
        emit(&out);
    }
    Ok(Exit::Ok)
}

fn load_file(path: &std::path::Path, flag: &str) -> Result<PolicyEngine> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("{flag} {}: {e}", path.display())))?;
    PolicyEngine::from_toml(&text, &path.display().to_string())
        .map_err(|e| CliError::Usage(format!("{flag} {e}")))
}

async fn live_from_router(cli: &Cli) -> Result<PolicyEngine> {
    let conn = crate::commands::router(cli).await?;
    let t = Some(cli.timeout);
    let mut client = conn.router();
    let resp = unary(
        &conn,
        "GetPolicy",
        t,
        client.get_policy(request(GetPolicyRequest {}, t)),
    )
    .await?;
    let policy = resp
        .policy
        .ok_or_else(|| CliError::Runtime("the router's GetPolicy answer has no policy".into()))?;
    PolicyEngine::from_proto(&policy, &resp.version, &resp.source)
        .map_err(|e| CliError::Runtime(format!("the router's policy does not compile here: {e}")))
}

fn stats_json(s: &GroupStats) -> Value {
    json!({
        "success_rate": s.success_rate(),
        "mean_cost_usd": s.mean_cost_usd(),
        "mean_duration_secs": s.mean_duration_secs(),
        "fallback_rate": s.fallback_rate(),
    })
}

fn group_json(g: &Group) -> Value {
    let flips = g.live_multi != g.candidate_multi;
    let mut v = json!({
        "live": path(g.live_multi),
        "candidate": path(g.candidate_multi),
        "tasks": g.ids.len(),
        "observed": stats_json(&GroupStats::of(&g.outcomes)),
    });
    if flips {
        v["task_ids"] = json!(g.ids);
    }
    v
}

fn text(
    live: &PolicyEngine,
    live_source: &str,
    candidate: &PolicyEngine,
    args: &DiffArgs,
    groups: &[Group],
    tasks: u64,
    skipped: u64,
) -> String {
    let mut out = format!(
        "live {} ({live_source}) vs candidate {} ({}): {tasks} finished tasks in the last {}\n",
        live.version(),
        candidate.version(),
        args.candidate.display(),
        humantime::format_duration(args.since)
    );
    if skipped > 0 {
        out.push_str(&format!(
            "({skipped} records without their task were skipped)\n"
        ));
    }
    let n = |l: bool, c: bool| groups[usize::from(l) * 2 + usize::from(c)].ids.len();
    out.push_str(&format!(
        "\n{:<14}{:>18}{:>18}\n{:<14}{:>18}{:>18}\n{:<14}{:>18}{:>18}\n",
        "",
        "candidate single",
        "candidate multi",
        "live single",
        n(false, false),
        n(false, true),
        "live multi",
        n(true, false),
        n(true, true)
    ));
    out.push_str(&format!(
        "\n{:<18}{:>7}{:>10}{:>12}{:>15}{:>10}\n",
        "live -> candidate", "tasks", "success", "mean cost", "mean duration", "fallback"
    ));
    for g in groups {
        let s = GroupStats::of(&g.outcomes);
        out.push_str(&format!(
            "{:<18}{:>7}{:>9.1}%{:>12}{:>14.2}s{:>9.1}%\n",
            format!("{} -> {}", path(g.live_multi), path(g.candidate_multi)),
            s.finished,
            s.success_rate() * 100.0,
            format!("${:.4}", s.mean_cost_usd()),
            s.mean_duration_secs(),
            s.fallback_rate() * 100.0
        ));
    }
    for g in groups.iter().filter(|g| g.live_multi != g.candidate_multi) {
        out.push_str(&format!(
            "\nflip {} -> {} ({}):",
            path(g.live_multi),
            path(g.candidate_multi),
            g.ids.len()
        ));
        for id in &g.ids {
            out.push(' ');
            out.push_str(id);
        }
        out.push('\n');
    }
    out
}

/// The governance changes: one line per task (ids and amounts only).
fn governance_text(budgets: &[BudgetChange], gate_changes: &[GateChange]) -> String {
    let mut out = format!("\ndefault budget changes ({}):", budgets.len());
    if budgets.is_empty() {
        out.push_str(" none\n");
    } else {
        out.push('\n');
    }
    for b in budgets {
        out.push_str(&format!(
            "  {}  ${:.2} -> ${:.2}\n",
            b.task_id, b.live_usd, b.candidate_usd
        ));
    }
    out.push_str(&format!("approval gate changes ({}):", gate_changes.len()));
    if gate_changes.is_empty() {
        out.push_str(" none\n");
    } else {
        out.push('\n');
    }
    for g in gate_changes {
        out.push_str(&format!(
            "  {}  {} -> {}\n",
            g.task_id,
            gates_label(&g.live),
            gates_label(&g.candidate)
        ));
    }
    out
}
