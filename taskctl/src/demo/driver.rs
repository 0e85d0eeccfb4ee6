//! Plays the plan's scenarios against a running router and executor over their gRPC
//! APIs, one trace per scenario, and checks each against what the plan expects.

use crate::client::{Conn, connect, request, unary};
use crate::error::{CliError, Result, Service};
use scenarios::{Mode, Outcome, RunSummary, Scenario, check};
use std::time::Duration;
use taskrouter_proto::v1::{
    ApprovalGate, DecisionRequest, GetPolicyRequest, GetRequest, RunRequest, SubmitRequest, Task,
    TaskStatus, WatchRequest, progress_event,
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

/// The policy of the governance scenarios: deployments wait for a person before they
/// start (the plan's scenarios run under the built-in policy, which has no gates).
pub const GOVERNANCE_POLICY: &str = r#"
[[approval.rules]]
reason = "DEPLOYMENT"
gate = "before_start"
timeout = "1h"
on_timeout = "reject"
"#;

/// A deployment that waits at `before_start` until the demo approves it, then runs on
/// the team path to completion.
pub fn gated_scenario() -> Scenario {
    use taskrouter_proto::v1::{Complexity, ReasonCode};
    Scenario {
        name: "deployment approved at its gate",
        task: scenarios::task(
            "TEST-GATE-001",
            "Deploy the billing service to production",
            Complexity::Medium,
            50.0,
            &[],
            &[],
        ),
        mode: Mode::Submit,
        expect: scenarios::multi(&[ReasonCode::Deployment]),
    }
}

/// A ten-iteration task with a budget for three calls: it stops BUDGET_EXHAUSTED.
pub fn budget_scenario() -> Scenario {
    use taskrouter_proto::v1::{Complexity, ExecutionPath, ReasonCode, RoutingDecision};
    Scenario {
        name: "budget stop",
        task: scenarios::task(
            "TEST-BUDGET-001",
            "Update the changelog",
            Complexity::Low,
            5.0,
            &[],
            &[("sim.iterations", "10")],
        ),
        mode: Mode::Submit,
        expect: scenarios::Expect {
            decision: RoutingDecision::UseSingleAgent,
            reasons: vec![ReasonCode::SimpleTask],
            path: ExecutionPath::SingleAgent,
            status: TaskStatus::BudgetExhausted,
            fallback: None,
        },
    }
}

/// Budget of [`budget_scenario`] in USD: each call reserves the default
/// `--agent-max-call-cost` ($0.10) and a simulated call costs about $0.002, so the third
/// call is the last that fits.
const DEMO_BUDGET_USD: f64 = 0.105;

async fn state_of(
    conn: &Conn,
    id: &str,
    t: Option<Duration>,
) -> Result<Option<taskrouter_proto::v1::SessionState>> {
    let get = GetRequest {
        task_id: id.to_string(),
        ..Default::default()
    };
    Ok(unary(conn, "Get", t, conn.executor().get(request(get, t)))
        .await?
        .state)
}

/// Submits the gated deployment, waits until it waits for approval, approves it and
/// waits for the end.
async fn gated(conn: &Conn, s: &Scenario, timeout: Duration) -> Result<Outcome> {
    let t = Some(timeout);
    let id = s.task.id.clone();
    let req = SubmitRequest {
        task: Some(s.task.clone()),
        ..Default::default()
    };
    unary(conn, "Submit", t, conn.executor().submit(request(req, t))).await?;
    loop {
        let st = state_of(conn, &id, t).await?.unwrap_or_default();
        if st.status == TaskStatus::WaitingApproval as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let approve = DecisionRequest {
        task_id: id.clone(),
        gate: ApprovalGate::BeforeStart as i32,
        comment: "plan reviewed in the demo".into(),
    };
    unary(
        conn,
        "Approve",
        t,
        conn.executor().approve(request(approve, t)),
    )
    .await?;
    loop {
        let st = state_of(conn, &id, t).await?.unwrap_or_default();
        if matches!(
            TaskStatus::try_from(st.status),
            Ok(TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled)
        ) {
            return Ok(Outcome {
                scenario: s.name,
                trace_id: String::new(),
                task_id: id,
                state: Some(st),
                runs: Vec::new(),
                failures: Vec::new(),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs the budgeted task in one call; it stops when the next call does not fit.
async fn budget_stop(conn: &Conn, s: &Scenario) -> Result<Outcome> {
    let req = RunRequest {
        task: Some(s.task.clone()),
        budget_usd: Some(DEMO_BUDGET_USD),
        ..Default::default()
    };
    let r = unary(conn, "Run", None, conn.executor().run(request(req, None))).await?;
    Ok(Outcome {
        scenario: s.name,
        trace_id: String::new(),
        task_id: s.task.id.clone(),
        runs: r
            .result
            .as_ref()
            .map(RunSummary::from)
            .into_iter()
            .collect(),
        state: r.result.and_then(|r| r.state),
        failures: Vec::new(),
    })
}

/// Plays the governance scenarios (a gated task approved, a budget stop) against an
/// executor whose router runs [`GOVERNANCE_POLICY`].
pub async fn run_governance(executor_url: &str, timeout: Duration) -> Result<Vec<Outcome>> {
    let conn = connect(
        Service::Executor,
        executor_url,
        timeout,
        &Default::default(),
    )
    .await?;
    let mut rows = Vec::new();
    for (s, gate) in [(gated_scenario(), true), (budget_scenario(), false)] {
        let fut = async {
            if gate {
                gated(&conn, &s, timeout).await
            } else {
                budget_stop(&conn, &s).await
            }
        };
        let mut row = match tokio::time::timeout(SCENARIO_DEADLINE, fut).await {
            Ok(r) => r?,
            Err(_) => Outcome {
                scenario: s.name,
                trace_id: String::new(),
                task_id: s.task.id.clone(),
                state: None,
                runs: Vec::new(),
                failures: vec!["did not finish in time".into()],
            },
        };
        if row.failures.is_empty() {
            row.failures = check(&s, &row);
        }
        rows.push(row);
    }
    Ok(rows)
}
