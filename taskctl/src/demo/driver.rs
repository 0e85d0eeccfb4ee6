//! Plays the plan's scenarios against a running router and executor over their gRPC
//! APIs, one trace per scenario, and checks each against what the plan expects.

use crate::client::{Conn, connect, request, unary};
use crate::error::{CliError, Result, Service};
use crate::names;
use scenarios::{Mode, Scenario};
use std::time::Duration;
use taskrouter_proto::v1::{
    GetPolicyRequest, GetRequest, RunRequest, RunResult, SessionState, SubmitRequest, Task,
    TaskStatus, WatchRequest, progress_event,
};

/// How long one scenario may take before it counts as failed.
const SCENARIO_DEADLINE: Duration = Duration::from_secs(60);

/// One run of the context-reset scenario.
#[derive(Clone, Debug)]
pub struct RunSummary {
    /// Status at the end of the run.
    pub status: i32,
    /// Iterations this run did.
    pub iterations_this_run: u32,
    /// Iterations of the task so far.
    pub total_iterations: u32,
}

impl From<&RunResult> for RunSummary {
    fn from(r: &RunResult) -> Self {
        Self {
            status: r.status,
            iterations_this_run: r.iterations_this_run,
            total_iterations: r.total_iterations,
        }
    }
}

/// What happened in one scenario.
#[derive(Clone, Debug)]
pub struct Row {
    /// The scenario's name.
    pub scenario: &'static str,
    /// Its task id.
    pub task_id: String,
    /// W3C trace id every request of the scenario carried.
    pub trace_id: String,
    /// The task's final state, if one was read.
    pub state: Option<SessionState>,
    /// The context-reset scenario's two runs.
    pub runs: Vec<RunSummary>,
    /// One sentence per way it differs from what the plan expects.
    pub failures: Vec<String>,
}

impl Row {
    /// The router's decision as recorded in the state (0 when none).
    pub fn decision(&self) -> i32 {
        self.state
            .as_ref()
            .and_then(|s| s.analysis.as_ref())
            .map_or(0, |a| a.decision)
    }

    /// The analysis's reason codes.
    pub fn reasons(&self) -> Vec<i32> {
        self.state
            .as_ref()
            .and_then(|s| s.analysis.as_ref())
            .map(|a| a.reasons.iter().map(|r| r.code).collect())
            .unwrap_or_default()
    }

    /// The fallback cause, if the team path fell back.
    pub fn fallback(&self) -> Option<i32> {
        self.state
            .as_ref()
            .and_then(|s| s.fallback.as_ref())
            .map(|f| f.cause)
    }

    /// Iterations as the table shows them ("2+8=10" for a reset and resume).
    pub fn iterations_text(&self) -> String {
        match (&self.state, self.runs.as_slice()) {
            (_, [first, second]) => format!(
                "{}+{}={}",
                first.iterations_this_run, second.iterations_this_run, second.total_iterations
            ),
            (Some(s), _) => s.iteration_count.to_string(),
            (None, _) => "-".into(),
        }
    }
}

/// Compares what happened with what the plan expects; one sentence per mismatch.
pub fn check(s: &Scenario, row: &Row) -> Vec<String> {
    let mut failures = Vec::new();
    let Some(state) = &row.state else {
        return vec!["no final state".into()];
    };
    let e = &s.expect;
    if row.decision() != e.decision as i32 {
        failures.push(format!(
            "decision {}, expected {}",
            names::decision_name(row.decision()),
            e.decision.as_str_name()
        ));
    }
    let reasons = row.reasons();
    for want in &e.reasons {
        if !reasons.contains(&(*want as i32)) {
            failures.push(format!("reason {} missing", want.as_str_name()));
        }
    }
    if state.path != e.path as i32 {
        failures.push(format!(
            "path {}, expected {}",
            names::path_name(state.path),
            e.path.as_str_name()
        ));
    }
    if state.status != e.status as i32 {
        failures.push(format!(
            "status {}, expected {}",
            names::status_name(state.status),
            e.status.as_str_name()
        ));
    }
    let fallback = row.fallback();
    if fallback != e.fallback.map(|c| c as i32) {
        failures.push(format!(
            "fallback {}, expected {}",
            fallback.map_or("none".into(), names::cause_name),
            e.fallback.map_or("none", |c| c.as_str_name())
        ));
    }
    if s.mode == Mode::ResetThenResume {
        match row.runs.as_slice() {
            [first, second] => {
                if first.status != TaskStatus::InProgress as i32 || first.total_iterations != 2 {
                    failures.push(format!(
                        "bounded run ended {} after {} iterations, expected TASK_STATUS_IN_PROGRESS after 2",
                        names::status_name(first.status),
                        first.total_iterations
                    ));
                }
                if second.iterations_this_run != 8 || second.total_iterations != 10 {
                    failures.push(format!(
                        "resumed run did {} iterations for {} in total, expected 8 for 10",
                        second.iterations_this_run, second.total_iterations
                    ));
                }
            }
            runs => failures.push(format!("{} runs recorded, expected 2", runs.len())),
        }
    }
    failures
}

/// Submits a task, follows its progress stream to the Finished event, then reads its state.
async fn submit_and_watch(conn: &Conn, task: Task, timeout: Duration, tp: &str) -> Result<Row> {
    let mut client = conn.executor();
    let id = task.id.clone();
    let req = SubmitRequest {
        task: Some(task),
        max_iterations: 0,
        use_multi_agent: None,
    };
    let t = Some(timeout);
    unary(
        conn,
        "Submit",
        t,
        client.submit(traced(request(req, t), tp)),
    )
    .await?;
    let watch = WatchRequest {
        task_id: id.clone(),
        after_sequence: 0,
    };
    let mut stream = unary(
        conn,
        "Watch",
        t,
        client.watch(traced(request(watch, None), tp)),
    )
    .await?;
    while let Some(ev) = stream.message().await.map_err(conn.err("Watch"))? {
        if matches!(ev.kind, Some(progress_event::Kind::Finished(_))) {
            break;
        }
    }
    let get = GetRequest {
        task_id: id.clone(),
        ..Default::default()
    };
    let state = unary(conn, "Get", t, client.get(traced(request(get, t), tp)))
        .await?
        .state;
    Ok(Row {
        scenario: "",
        trace_id: String::new(),
        task_id: id,
        state,
        runs: Vec::new(),
        failures: Vec::new(),
    })
}

/// The plan's context reset: a run bounded to 2 iterations, then a resumed run bounded to 10.
async fn reset_then_resume(conn: &Conn, task: Task, tp: &str) -> Result<Row> {
    let mut client = conn.executor();
    let id = task.id.clone();
    let mut runs = Vec::new();
    let first = RunRequest {
        task: Some(task),
        resume: false,
        max_iterations: 2,
        use_multi_agent: None,
    };
    let r = unary(
        conn,
        "Run",
        None,
        client.run(traced(request(first, None), tp)),
    )
    .await?;
    runs.extend(r.result.as_ref().map(RunSummary::from));
    // After the "reset" only the id comes back.
    let second = RunRequest {
        task: Some(Task {
            id: id.clone(),
            ..Default::default()
        }),
        resume: true,
        max_iterations: 10,
        use_multi_agent: None,
    };
    let r = unary(
        conn,
        "Run",
        None,
        client.run(traced(request(second, None), tp)),
    )
    .await?;
    runs.extend(r.result.as_ref().map(RunSummary::from));
    Ok(Row {
        scenario: "",
        trace_id: String::new(),
        task_id: id,
        state: r.result.and_then(|r| r.state),
        runs,
        failures: Vec::new(),
    })
}

async fn play(conn: Conn, s: Scenario, timeout: Duration) -> Row {
    let id = s.task.id.clone();
    // One trace per scenario: every request carries it, so with OTEL_* set the services'
    // spans for this task are found under the id printed in the table.
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let span_id = &uuid::Uuid::new_v4().simple().to_string()[..16];
    let tp = format!("00-{trace_id}-{span_id}-01");
    let fut = async {
        match s.mode {
            Mode::Submit => submit_and_watch(&conn, s.task.clone(), timeout, &tp).await,
            Mode::ResetThenResume => reset_then_resume(&conn, s.task.clone(), &tp).await,
        }
    };
    let mut row = match tokio::time::timeout(SCENARIO_DEADLINE, fut).await {
        Ok(Ok(row)) => row,
        Ok(Err(e)) => Row {
            scenario: s.name,
            trace_id: String::new(),
            task_id: id.clone(),
            state: None,
            runs: Vec::new(),
            failures: vec![
                e.lines()
                    .join(" ")
                    .trim_start_matches("error: ")
                    .to_string(),
            ],
        },
        Err(_) => Row {
            scenario: s.name,
            trace_id: String::new(),
            task_id: id.clone(),
            state: None,
            runs: Vec::new(),
            failures: vec![format!(
                "did not finish within {}",
                humantime::format_duration(SCENARIO_DEADLINE)
            )],
        },
    };
    row.scenario = s.name;
    row.trace_id = trace_id;
    if row.failures.is_empty() {
        row.failures = check(&s, &row);
    }
    row
}

/// `req` with the scenario's W3C trace context attached.
fn traced<T>(mut req: tonic::Request<T>, traceparent: &str) -> tonic::Request<T> {
    if let Ok(v) = traceparent.parse() {
        req.metadata_mut().insert("traceparent", v);
    }
    req
}

/// Reads the router's policy version, then plays every scenario at once against the
/// executor; rows come back in the plan's order.
pub async fn run_scenarios(
    router_url: &str,
    executor_url: &str,
    timeout: Duration,
) -> Result<(Vec<Row>, String)> {
    let router = connect(Service::Router, router_url, timeout, &Default::default()).await?;
    let t = Some(timeout);
    let policy = unary(
        &router,
        "GetPolicy",
        t,
        router.router().get_policy(request(GetPolicyRequest {}, t)),
    )
    .await?;
    let executor = connect(
        Service::Executor,
        executor_url,
        timeout,
        &Default::default(),
    )
    .await?;
    let mut set = tokio::task::JoinSet::new();
    for (n, s) in scenarios::plan().into_iter().enumerate() {
        let conn = executor.clone();
        set.spawn(async move { (n, play(conn, s, timeout).await) });
    }
    let mut rows: Vec<(usize, Row)> = Vec::new();
    while let Some(joined) = set.join_next().await {
        let (n, row) =
            joined.map_err(|e| CliError::Runtime(format!("a scenario task failed: {e}")))?;
        rows.push((n, row));
    }
    rows.sort_by_key(|(n, _)| *n);
    Ok((rows.into_iter().map(|(_, r)| r).collect(), policy.version))
}
