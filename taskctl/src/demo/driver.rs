//! Plays the plan's scenarios against a running router and executor over their gRPC
//! APIs, one trace per scenario, and checks each against what the plan expects.

use crate::client::{Conn, connect, request, unary};
use crate::error::{CliError, Result, Service};
use scenarios::{Mode, Outcome, RunSummary, Scenario, check};
use std::time::Duration;
use taskrouter_proto::v1::{
    GetPolicyRequest, GetRequest, RunRequest, SubmitRequest, Task, WatchRequest, progress_event,
};

/// How long one scenario may take before it counts as failed.
const SCENARIO_DEADLINE: Duration = Duration::from_secs(60);

/// Submits a task, follows its progress stream to the Finished event, then reads its state.
async fn submit_and_watch(conn: &Conn, task: Task, timeout: Duration, tp: &str) -> Result<Outcome> {
    let mut client = conn.executor();
    let id = task.id.clone();
    let req = SubmitRequest {
        task: Some(task),
        max_iterations: 0,
        use_multi_agent: None,
        budget_usd: None,
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
    Ok(Outcome {
        scenario: "",
        trace_id: String::new(),
        task_id: id,
        state,
        runs: Vec::new(),
        failures: Vec::new(),
    })
}

/// The plan's context reset: a run bounded to 2 iterations, then a resumed run bounded to 10.
async fn reset_then_resume(conn: &Conn, task: Task, tp: &str) -> Result<Outcome> {
    let mut client = conn.executor();
    let id = task.id.clone();
    let mut runs = Vec::new();
    let first = RunRequest {
        task: Some(task),
        resume: false,
        max_iterations: 2,
        use_multi_agent: None,
        budget_usd: None,
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
        budget_usd: None,
    };
    let r = unary(
        conn,
        "Run",
        None,
        client.run(traced(request(second, None), tp)),
    )
    .await?;
    runs.extend(r.result.as_ref().map(RunSummary::from));
    Ok(Outcome {
        scenario: "",
        trace_id: String::new(),
        task_id: id,
        state: r.result.and_then(|r| r.state),
        runs,
        failures: Vec::new(),
    })
}

async fn play(conn: Conn, s: Scenario, timeout: Duration) -> Outcome {
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
        Ok(Err(e)) => Outcome {
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
        Err(_) => Outcome {
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
) -> Result<(Vec<Outcome>, String)> {
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
    let mut rows: Vec<(usize, Outcome)> = Vec::new();
    while let Some(joined) = set.join_next().await {
        let (n, row) =
            joined.map_err(|e| CliError::Runtime(format!("a scenario task failed: {e}")))?;
        rows.push((n, row));
    }
    rows.sort_by_key(|(n, _)| *n);
    Ok((rows.into_iter().map(|(_, r)| r).collect(), policy.version))
}
