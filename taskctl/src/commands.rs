//! The client commands: route, submit, run, get, watch, cancel, resume, approve, reject,
//! policy.

use crate::cli::{
    Cli, DecisionArgs, GateArg, GetArgs, IdArg, ResumeArgs, RunArgs, SubmitArgs, TaskArgs,
    WatchArgs,
};
use crate::client::{connect, request, unary};
use crate::error::{CliError, Exit, Result, Service};
use crate::input::build_task;
use crate::output::{emit, emit_json};
use crate::render;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::Duration;
use taskrouter_proto::v1::{
    ApprovalGate, CancelRequest, DecisionRequest, GetPolicyRequest, GetRequest, RouteRequest,
    RunRequest, SubmitRequest, Task, TaskStatus, WatchRequest, progress_event,
};

/// The exit code for a task's final status: FAILED and CANCELLED are 3.
pub fn exit_for_status(status: i32) -> Exit {
    match TaskStatus::try_from(status) {
        Ok(TaskStatus::Failed | TaskStatus::Cancelled) => Exit::TaskFailed,
        _ => Exit::Ok,
    }
}

fn is_final(status: i32) -> bool {
    matches!(
        TaskStatus::try_from(status),
        Ok(TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled)
    )
}

/// `taskctl route`.
pub async fn route(cli: &Cli, args: &TaskArgs) -> Result<Exit> {
    let task = build_task(args)?;
    let conn = router(cli).await?;
    let t = Some(cli.timeout);
    let mut client = conn.router();
    let resp = unary(
        &conn,
        "Route",
        t,
        client.route(request(
            RouteRequest {
                task: Some(task),
                ..Default::default()
            },
            t,
        )),
    )
    .await?;
    let analysis = resp
        .analysis
        .ok_or_else(|| CliError::Runtime("the router answered without an analysis".into()))?;
    if cli.json {
        emit_json(&render::analysis_json(&analysis));
    } else {
        emit(&render::analysis_text(&analysis));
    }
    Ok(Exit::Ok)
}

/// `taskctl submit`.
pub async fn submit(cli: &Cli, args: &SubmitArgs) -> Result<Exit> {
    let task = build_task(&args.task)?;
    let conn = executor(cli).await?;
    let t = Some(cli.timeout);
    let mut client = conn.executor();
    let req = SubmitRequest {
        task: Some(task),
        max_iterations: args.max_iterations.unwrap_or(0),
        use_multi_agent: args.single_agent.then_some(false),
        budget_usd: args.budget,
    };
    let resp = unary(&conn, "Submit", t, client.submit(request(req, t))).await?;
    let state = resp.state.unwrap_or_default();
    if cli.json {
        emit_json(&serde_json::json!({
            "created": resp.created,
            "state": render::state_json(&state),
        }));
    } else if resp.created {
        emit(&format!(
            "submitted {}: {}, at most {} iterations\nfollow it with: taskctl watch {}\n",
            state.task_id,
            render::status_short(state.status),
            state.max_iterations,
            state.task_id
        ));
    } else {
        emit(&format!(
            "{} already exists ({}); not submitted again\n",
            state.task_id,
            render::status_short(state.status)
        ));
    }
    Ok(Exit::Ok)
}

/// `taskctl run`: waits for the run to finish or reach its bound.
pub async fn run(cli: &Cli, args: &RunArgs) -> Result<Exit> {
    let task = build_task(&args.task)?;
    let conn = executor(cli).await?;
    let mut client = conn.executor();
    let req = RunRequest {
        task: Some(task),
        resume: args.resume,
        max_iterations: args.max_iterations.unwrap_or(0),
        use_multi_agent: args.single_agent.then_some(false),
        budget_usd: args.budget,
    };
    let resp = unary(&conn, "Run", None, client.run(request(req, None))).await?;
    let result = resp
        .result
        .ok_or_else(|| CliError::Runtime("the executor answered without a result".into()))?;
    if cli.json {
        emit_json(&render::run_result_json(&result));
    } else {
        emit(&render::run_result_text(&result));
    }
    Ok(exit_for_status(result.status))
}

/// `taskctl get`.
pub async fn get(cli: &Cli, args: &GetArgs) -> Result<Exit> {
    let conn = executor(cli).await?;
    let t = Some(cli.timeout);
    let mut client = conn.executor();
    let req = GetRequest {
        task_id: args.id.clone(),
        include_iterations: args.iterations,
        iteration_limit: if args.iterations { args.limit } else { 0 },
    };
    let resp = unary(&conn, "Get", t, client.get(request(req, t))).await?;
    let state = resp.state.unwrap_or_default();
    if cli.json {
        let mut doc = serde_json::json!({ "state": render::state_json(&state) });
        if args.iterations {
            doc["iterations"] = resp
                .iterations
                .iter()
                .map(render::iteration_json)
                .collect::<Vec<_>>()
                .into();
        }
        emit_json(&doc);
    } else {
        let mut text = render::state_text(&state);
        if args.iterations {
            text.push_str(&render::iterations_text(&resp.iterations));
        }
        emit(&text);
    }
    Ok(Exit::Ok)
}

/// `taskctl cancel`.
pub async fn cancel(cli: &Cli, args: &IdArg) -> Result<Exit> {
    let conn = executor(cli).await?;
    let t = Some(cli.timeout);
    let mut client = conn.executor();
    let req = CancelRequest {
        task_id: args.id.clone(),
    };
    let resp = unary(&conn, "Cancel", t, client.cancel(request(req, t))).await?;
    let state = resp.state.unwrap_or_default();
    if cli.json {
        emit_json(&render::state_json(&state));
    } else if state.status == TaskStatus::Cancelled as i32 {
        emit(&format!("{} cancelled\n", state.task_id));
    } else if is_final(state.status) {
        emit(&format!(
            "{} already ended ({}); nothing to cancel\n",
            state.task_id,
            render::status_short(state.status)
        ));
    } else {
        emit(&format!(
            "cancel requested for {}; it stops at its next iteration boundary\n",
            state.task_id
        ));
    }
    Ok(Exit::Ok)
}

/// `taskctl resume`: continues a task in this call (a budget stop needs `--budget`).
pub async fn resume(cli: &Cli, args: &ResumeArgs) -> Result<Exit> {
    let conn = executor(cli).await?;
    let mut client = conn.executor();
    let req = RunRequest {
        task: Some(Task {
            id: args.id.clone(),
            ..Default::default()
        }),
        resume: true,
        max_iterations: args.max_iterations.unwrap_or(0),
        use_multi_agent: None,
        budget_usd: args.budget,
    };
    let resp = unary(&conn, "Run", None, client.run(request(req, None))).await?;
    let result = resp
        .result
        .ok_or_else(|| CliError::Runtime("the executor answered without a result".into()))?;
    if cli.json {
        emit_json(&render::run_result_json(&result));
    } else {
        emit(&render::run_result_text(&result));
    }
    Ok(exit_for_status(result.status))
}

/// `taskctl approve` / `taskctl reject`.
pub async fn decide(cli: &Cli, args: &DecisionArgs, approve: bool) -> Result<Exit> {
    let conn = executor(cli).await?;
    let t = Some(cli.timeout);
    let mut client = conn.executor();
    let gate = match args.gate {
        Some(GateArg::BeforeStart) => ApprovalGate::BeforeStart as i32,
        Some(GateArg::BeforeComplete) => ApprovalGate::BeforeComplete as i32,
        None => {
            // The gate the task waits at now.
            let req = GetRequest {
                task_id: args.id.clone(),
                ..Default::default()
            };
            let state = unary(&conn, "Get", t, client.get(request(req, t)))
                .await?
                .state
                .unwrap_or_default();
            if state.status != TaskStatus::WaitingApproval as i32 {
                return Err(CliError::Usage(format!(
                    "{} does not wait for approval ({}); pass --gate to repeat a decision",
                    args.id,
                    render::status_short(state.status)
                )));
            }
            state.waiting_gate
        }
    };
    let req = DecisionRequest {
        task_id: args.id.clone(),
        gate,
        comment: args.comment.clone().unwrap_or_default(),
    };
    let resp = if approve {
        unary(&conn, "Approve", t, client.approve(request(req, t))).await?
    } else {
        unary(&conn, "Reject", t, client.reject(request(req, t))).await?
    };
    let state = resp.state.unwrap_or_default();
    if cli.json {
        emit_json(&render::state_json(&state));
    } else {
        emit(&format!(
            "{} {} at {}; now {}\n",
            state.task_id,
            if approve { "approved" } else { "rejected" },
            render::gate_short(gate),
            render::status_short(state.status)
        ));
    }
    Ok(Exit::Ok)
}

/// `taskctl policy`.
pub async fn policy(cli: &Cli) -> Result<Exit> {
    let conn = router(cli).await?;
    let t = Some(cli.timeout);
    let mut client = conn.router();
    let resp = unary(
        &conn,
        "GetPolicy",
        t,
        client.get_policy(request(GetPolicyRequest {}, t)),
    )
    .await?;
    if cli.json {
        emit_json(&render::policy_json(&resp));
    } else {
        emit(&render::policy_text(&resp));
    }
    Ok(Exit::Ok)
}

/// How `watch` shows progress.
enum View {
    /// One JSON object per event.
    Json,
    /// A progress bar of iterations, with lines for the notable events.
    Bar(ProgressBar),
    /// One line per event (stdout is not a terminal).
    Lines,
}

fn progress_bar(len: u32, pos: u32) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len.into()), ProgressDrawTarget::stdout());
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} [{bar:40}] {pos}/{len} iterations  {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_position(pos.into());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// `taskctl watch`: follows the task until it ends.
pub async fn watch(cli: &Cli, args: &WatchArgs) -> Result<Exit> {
    let conn = executor(cli).await?;
    let t = Some(cli.timeout);
    let mut client = conn.executor();
    let get = GetRequest {
        task_id: args.id.clone(),
        ..Default::default()
    };
    let state = unary(&conn, "Get", t, client.get(request(get.clone(), t)))
        .await?
        .state
        .unwrap_or_default();
    let req = WatchRequest {
        task_id: args.id.clone(),
        after_sequence: args.after,
    };
    let mut stream = unary(&conn, "Watch", t, client.watch(request(req, None))).await?;
    let view = if cli.json {
        View::Json
    } else if std::io::stdout().is_terminal() {
        View::Bar(progress_bar(state.max_iterations, state.iteration_count))
    } else {
        View::Lines
    };
    let mut finished = None;
    loop {
        let event = match stream.message().await {
            Ok(Some(e)) => e,
            Ok(None) => break,
            Err(status) => {
                if let View::Bar(bar) = &view {
                    bar.finish_and_clear();
                }
                return Err(conn.err("Watch")(status));
            }
        };
        if let Some(progress_event::Kind::Finished(f)) = &event.kind {
            finished = Some(f.status);
        }
        match &view {
            View::Json => emit(&format!("{}\n", render::event_json(&event))),
            View::Lines => {
                if let Some(line) = render::event_line(&event) {
                    emit(&format!("{line}\n"));
                }
            }
            View::Bar(bar) => {
                let line = render::event_line(&event);
                match &event.kind {
                    Some(progress_event::Kind::Iteration(i)) => {
                        let role = i
                            .record
                            .as_ref()
                            .map(|r| r.role.clone())
                            .unwrap_or_default();
                        bar.set_length(i.max_iterations.max(1).into());
                        bar.set_position(i.iteration_count.into());
                        bar.set_message(role.clone());
                        // Single-path and lead iterations only move the bar.
                        if role != "agent" && role != "lead" {
                            bar.println(line.unwrap_or_default());
                        }
                    }
                    Some(progress_event::Kind::Finished(_)) => {
                        bar.finish_and_clear();
                        emit(&format!("{}\n", line.unwrap_or_default()));
                    }
                    _ => {
                        if let Some(line) = line {
                            bar.println(line);
                        }
                    }
                }
            }
        }
        if finished.is_some() {
            break;
        }
    }
    if let View::Bar(bar) = &view {
        bar.finish_and_clear();
    }
    if let Some(status) = finished {
        return Ok(exit_for_status(status));
    }
    // The stream ended without a Finished event (e.g. its events already expired):
    // the stored state says how the task ended, if it did.
    let state = unary(&conn, "Get", t, client.get(request(get, t)))
        .await?
        .state
        .unwrap_or_default();
    if is_final(state.status) {
        if !cli.json {
            emit(&format!(
                "{} ended {} after {} iteration(s)\n",
                state.task_id,
                render::status_short(state.status),
                state.iteration_count
            ));
        }
        return Ok(exit_for_status(state.status));
    }
    Err(CliError::Runtime(format!(
        "the watch stream of {} ended before the task did (status {}); watch it again",
        state.task_id,
        render::status_short(state.status)
    )))
}

/// A connection to the router with the command line's address, timeout, TLS and token.
pub(crate) async fn router(cli: &Cli) -> Result<crate::client::Conn> {
    let security = cli.security.load().map_err(CliError::Usage)?;
    connect(Service::Router, &cli.router, cli.timeout, &security).await
}

/// A connection to the executor with the command line's address, timeout, TLS and token.
pub(crate) async fn executor(cli: &Cli) -> Result<crate::client::Conn> {
    let security = cli.security.load().map_err(CliError::Usage)?;
    connect(Service::Executor, &cli.executor, cli.timeout, &security).await
}
