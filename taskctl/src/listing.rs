//! `taskctl list` and `taskctl top`: the executor's `List` call as a table, JSON, or a
//! live view refreshed in place.

use crate::cli::{Cli, FilterArgs, ListArgs, PathArg, TopArgs};
use crate::client::{Conn, request, unary};
use crate::commands::executor;
use crate::error::{Exit, Result};
use crate::output::{emit, emit_json};
use crate::render;
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::time::SystemTime;
use taskrouter_proto::v1::{
    ExecutionPath, ListTasksRequest, ListTasksResponse, TaskStatus, TaskSummary,
};

fn timestamp(t: Option<SystemTime>) -> Option<prost_types::Timestamp> {
    t.map(prost_types::Timestamp::from)
}

/// The request for `filter` (first page, `page_size` tasks).
pub fn request_for(filter: &FilterArgs, page_size: u32) -> ListTasksRequest {
    ListTasksRequest {
        statuses: filter
            .statuses
            .iter()
            .map(|s| TaskStatus::from(*s) as i32)
            .collect(),
        path: match filter.path {
            None => ExecutionPath::Unspecified,
            Some(PathArg::Single) => ExecutionPath::SingleAgent,
            Some(PathArg::Multi) => ExecutionPath::MultiAgent,
        } as i32,
        reason: filter.reason.map_or(0, |r| r as i32),
        tenant: filter.tenant.clone().unwrap_or_default(),
        policy_version: filter.policy_version.clone().unwrap_or_default(),
        created_after: timestamp(filter.created_after),
        created_before: timestamp(filter.created_before),
        updated_after: timestamp(filter.updated_after),
        updated_before: timestamp(filter.updated_before),
        page_size,
        page_token: String::new(),
    }
}

async fn call(conn: &Conn, cli: &Cli, req: ListTasksRequest) -> Result<ListTasksResponse> {
    let t = Some(cli.timeout);
    let mut client = conn.executor();
    unary(conn, "List", t, client.list(request(req, t))).await
}

/// One task as JSON (enum values by proto name; no description exists to leak).
pub fn summary_json(t: &TaskSummary) -> Value {
    json!({
        "task_id": t.task_id,
        "status": render::status_name(t.status),
        "path": render::path_name(t.path),
        "decision": render::decision_name(t.decision),
        "reasons": t.reasons.iter().map(|r| render::reason_name(*r)).collect::<Vec<_>>(),
        "policy_version": t.policy_version,
        "tenant": t.tenant,
        "iteration_count": t.iteration_count,
        "max_iterations": t.max_iterations,
        "team_iterations": t.team_iterations,
        "phase": render::phase_name(t.phase),
        "cost_usd": t.cost_usd,
        "tokens_in": t.tokens_in,
        "tokens_out": t.tokens_out,
        "created_at": render::time_json(&t.created_at),
        "updated_at": render::time_json(&t.updated_at),
        "finished_at": render::time_json(&t.finished_at),
        "fallback_cause": render::cause_name(t.fallback_cause),
        "archived": t.archived,
        "worker_id": t.worker_id,
    })
}

fn counts_json(resp: &ListTasksResponse) -> Value {
    let mut m = serde_json::Map::new();
    for c in &resp.counts {
        m.insert(render::status_name(c.status), json!(c.count));
    }
    Value::Object(m)
}

/// "3s", "5m", "2h", "4d": how long ago `t` was.
fn ago(t: &Option<prost_types::Timestamp>) -> String {
    let Some(t) = t.and_then(|t| SystemTime::try_from(t).ok()) else {
        return "-".into();
    };
    let secs = SystemTime::now()
        .duration_since(t)
        .unwrap_or_default()
        .as_secs();
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

fn counts_line(resp: &ListTasksResponse) -> String {
    let parts: Vec<String> = resp
        .counts
        .iter()
        .map(|c| format!("{} {}", render::status_short(c.status), c.count))
        .collect();
    format!("{} tasks: {}", resp.total, parts.join(", "))
}

/// The table of `tasks`, one line each, with a header.
pub fn table(tasks: &[TaskSummary]) -> String {
    let width = tasks
        .iter()
        .map(|t| t.task_id.len())
        .max()
        .unwrap_or(2)
        .clamp(2, 40);
    let mut out = format!(
        "{:<width$}  {:<11}  {:<12}  {:>9}  {:>9}  {:>7}  {:>7}  {:<12}  REASONS\n",
        "ID", "STATUS", "PATH", "ITER", "COST", "AGE", "UPDATED", "TENANT"
    );
    for t in tasks {
        let reasons: Vec<String> = t.reasons.iter().map(|r| render::reason_short(*r)).collect();
        let _ = writeln!(
            out,
            "{:<width$}  {:<11}  {:<12}  {:>9}  {:>9}  {:>7}  {:>7}  {:<12}  {}",
            t.task_id,
            render::status_short(t.status),
            render::path_human(t.path),
            format!("{}/{}", t.iteration_count, t.max_iterations),
            format!("${:.4}", t.cost_usd),
            ago(&t.created_at),
            ago(&t.updated_at),
            if t.tenant.is_empty() { "-" } else { &t.tenant },
            reasons.join(","),
        );
    }
    out
}

/// `taskctl list`.
pub async fn list(cli: &Cli, args: &ListArgs) -> Result<Exit> {
    let conn = executor(cli).await?;
    let mut req = request_for(&args.filter, args.limit);
    req.page_token = args.page_token.clone().unwrap_or_default();
    let mut tasks = Vec::new();
    let mut resp;
    loop {
        resp = call(&conn, cli, req.clone()).await?;
        tasks.append(&mut resp.tasks);
        if !args.all || resp.next_page_token.is_empty() {
            break;
        }
        req.page_token = resp.next_page_token.clone();
    }
    if cli.json {
        emit_json(&json!({
            "tasks": tasks.iter().map(summary_json).collect::<Vec<_>>(),
            "counts": counts_json(&resp),
            "total": resp.total,
            "next_page_token": resp.next_page_token,
        }));
        return Ok(Exit::Ok);
    }
    let mut out = table(&tasks);
    let _ = writeln!(out, "{}", counts_line(&resp));
    if !resp.next_page_token.is_empty() {
        let _ = writeln!(
            out,
            "more: taskctl list ... --page-token {}",
            resp.next_page_token
        );
    }
    emit(&out);
    Ok(Exit::Ok)
}

/// One frame of `top`: counts for the filter, then the running tasks.
async fn frame(
    conn: &Conn,
    cli: &Cli,
    args: &TopArgs,
) -> Result<(ListTasksResponse, Vec<TaskSummary>)> {
    let counts = call(conn, cli, request_for(&args.filter, 1)).await?;
    let mut running = request_for(&args.filter, args.rows.clamp(1, 1000));
    running.statuses = vec![TaskStatus::InProgress as i32];
    let running = call(conn, cli, running).await?.tasks;
    Ok((counts, running))
}

fn top_screen(counts: &ListTasksResponse, running: &[TaskSummary]) -> String {
    let now = humantime::format_rfc3339_seconds(SystemTime::now());
    let mut out = format!(
        "taskctl top  {now}  (q quits)\n\n{}\n\n",
        counts_line(counts)
    );
    if running.is_empty() {
        out.push_str("no running tasks\n");
    } else {
        out.push_str(&table(running));
    }
    out
}

/// `taskctl top`: a full-screen view on a terminal; plain lines otherwise.
pub async fn top(cli: &Cli, args: &TopArgs) -> Result<Exit> {
    let conn = executor(cli).await?;
    let interactive = std::io::stdout().is_terminal() && std::io::stdin().is_terminal();
    let keys = interactive.then(crate::terminal::Keys::start);
    if interactive {
        emit(crate::terminal::ENTER_SCREEN);
    }
    let result = top_loop(&conn, cli, args, keys.as_ref()).await;
    if interactive {
        emit(crate::terminal::LEAVE_SCREEN);
    }
    drop(keys);
    result
}

async fn top_loop(
    conn: &Conn,
    cli: &Cli,
    args: &TopArgs,
    keys: Option<&crate::terminal::Keys>,
) -> Result<Exit> {
    let mut refreshes = 0u64;
    loop {
        let (counts, running) = frame(conn, cli, args).await?;
        match keys {
            Some(_) => {
                // Home, draw, clear whatever the last frame left below.
                let screen = top_screen(&counts, &running).replace('\n', "\x1b[K\r\n");
                emit(&format!("\x1b[H{screen}\x1b[J"));
            }
            None if cli.json => emit(&format!(
                "{}\n",
                json!({
                    "counts": counts_json(&counts),
                    "total": counts.total,
                    "running": running.iter().map(summary_json).collect::<Vec<_>>(),
                })
            )),
            None => {
                let mut out = format!(
                    "{} {}\n",
                    humantime::format_rfc3339_seconds(SystemTime::now()),
                    counts_line(&counts)
                );
                for t in &running {
                    let _ = writeln!(
                        out,
                        "  running {} iter {}/{} cost ${:.4} age {}",
                        t.task_id,
                        t.iteration_count,
                        t.max_iterations,
                        t.cost_usd,
                        ago(&t.created_at)
                    );
                }
                emit(&out);
            }
        }
        refreshes += 1;
        if args.iterations > 0 && refreshes >= args.iterations {
            return Ok(Exit::Ok);
        }
        let quit = async {
            match keys {
                Some(k) => k.quit().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(args.interval) => {}
            _ = quit => return Ok(Exit::Ok),
            _ = tokio::signal::ctrl_c() => return Ok(Exit::Ok),
        }
    }
}
