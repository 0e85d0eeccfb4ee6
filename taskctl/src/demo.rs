//! `taskctl demo`: starts the router and the executor in this process on free
//! 127.0.0.1 ports (the executor wired to the router, with the simulated agent), runs
//! the plan's "Real Workflow Testing" scenarios through their gRPC APIs, prints one
//! table, and checks every expectation explicitly.

use crate::cli::{Cli, DemoArgs};
use crate::client::{Conn, connect, request, unary};
use crate::error::{CliError, Exit, Result, Service};
use crate::render;
use crate::{emit, emit_err, emit_json};
use executor_service::agent::build_agent;
use executor_service::autonomous_loop::AutonomousLoop;
use executor_service::config::ExecutorConfig;
use executor_service::queue::{MemoryQueue, WorkQueue};
use executor_service::routing::RouterLink;
use executor_service::session::{MemoryStore, SessionStore};
use router_service::RouterConfig;
use serde_json::{Value, json};
use service_kit::Shutdown;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use taskrouter_proto::v1::{
    Complexity, ExecutionPath, FallbackCause, GetPolicyRequest, GetRequest, ReasonCode,
    RoutingDecision, RunRequest, RunResult, SessionState, SubmitRequest, Task, TaskStatus,
    WatchRequest, progress_event,
};
use tokio::net::TcpListener;

/// How long one scenario may take before it counts as failed.
const SCENARIO_DEADLINE: Duration = Duration::from_secs(60);

/// How a scenario drives the executor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Submit to the work queue, watch the progress stream to the end, then Get.
    Submit,
    /// The plan's context reset: Run bounded to 2 iterations, then Run with
    /// `resume = true` and a bound of 10.
    ResetThenResume,
}

/// What a scenario must end with.
#[derive(Clone, Debug)]
struct Expect {
    decision: RoutingDecision,
    reasons: Vec<ReasonCode>,
    path: ExecutionPath,
    status: TaskStatus,
    fallback: Option<FallbackCause>,
}

/// One of the plan's scenarios.
#[derive(Clone, Debug)]
struct Scenario {
    name: &'static str,
    task: Task,
    mode: Mode,
    expect: Expect,
}

fn task(
    id: &str,
    description: &str,
    complexity: Complexity,
    value: f64,
    repos: &[&str],
    labels: &[(&str, &str)],
) -> Task {
    Task {
        id: id.to_string(),
        description: description.to_string(),
        complexity: complexity as i32,
        estimated_value_usd: value,
        repositories: repos.iter().map(|r| r.to_string()).collect(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>(),
    }
}

fn multi(reasons: &[ReasonCode]) -> Expect {
    Expect {
        decision: RoutingDecision::UseMultiAgent,
        reasons: reasons.to_vec(),
        path: ExecutionPath::MultiAgent,
        status: TaskStatus::Completed,
        fallback: None,
    }
}

/// The scenarios of the plan's "Task 4: Real Workflow Testing".
fn scenarios() -> Vec<Scenario> {
    use Complexity::{High, Low, Medium};
    use ReasonCode as R;
    vec![
        Scenario {
            name: "simple bug fix",
            task: task("TEST-BUG-001", "Fix typo in README", Low, 10.0, &[], &[]),
            mode: Mode::Submit,
            expect: Expect {
                decision: RoutingDecision::UseSingleAgent,
                reasons: vec![R::SimpleTask],
                path: ExecutionPath::SingleAgent,
                status: TaskStatus::Completed,
                fallback: None,
            },
        },
        Scenario {
            name: "high-value feature",
            task: task(
                "TEST-FEATURE-001",
                "Implement new payment processing",
                High,
                500.0,
                &[],
                &[],
            ),
            mode: Mode::Submit,
            expect: multi(&[R::HighComplexity, R::HighValue]),
        },
        Scenario {
            name: "HIPAA credential rotation",
            task: task(
                "TEST-HIPAA-001",
                "Rotate the HIPAA database credentials of the patient API",
                Medium,
                50.0,
                &[],
                &[],
            ),
            mode: Mode::Submit,
            expect: multi(&[R::ComplianceSensitive]),
        },
        Scenario {
            name: "production deployment",
            task: task(
                "TEST-DEPLOY-001",
                "Deploy the billing service to production",
                Medium,
                50.0,
                &[],
                &[],
            ),
            mode: Mode::Submit,
            expect: multi(&[R::Deployment]),
        },
        Scenario {
            name: "cross-repo refactor",
            task: task(
                "TEST-XREPO-001",
                "Refactor the shared auth client",
                Medium,
                50.0,
                &["acme/api", "acme/web"],
                &[],
            ),
            mode: Mode::Submit,
            expect: multi(&[R::CrossRepo]),
        },
        Scenario {
            name: "context reset",
            // The router staffs four specialists for this task (implementer, architect,
            // reviewer, security-reviewer); two iterations each makes the team path
            // 1 (analysis) + 8 + 1 (synthesis) = 10 iterations, the plan's total.
            task: task(
                "TEST-RESUME-001",
                "Complex feature with HIPAA compliance",
                High,
                250.0,
                &[],
                &[("sim.specialist_iterations", "2")],
            ),
            mode: Mode::ResetThenResume,
            expect: multi(&[R::HighComplexity, R::HighValue, R::ComplianceSensitive]),
        },
        Scenario {
            name: "team failure falls back",
            task: task(
                "TEST-FALLBACK-001",
                "Implement new reporting dashboard",
                High,
                300.0,
                &[],
                &[("sim.fail_step", "synthesis")],
            ),
            mode: Mode::Submit,
            expect: Expect {
                decision: RoutingDecision::UseMultiAgent,
                reasons: vec![R::HighComplexity, R::HighValue],
                path: ExecutionPath::SingleAgent,
                status: TaskStatus::Completed,
                fallback: Some(FallbackCause::SynthesisFailed),
            },
        },
    ]
}

/// One run of the context-reset scenario.
#[derive(Clone, Debug)]
struct RunSummary {
    status: i32,
    iterations_this_run: u32,
    total_iterations: u32,
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
struct Row {
    scenario: &'static str,
    task_id: String,
    /// W3C trace id every request of the scenario carried.
    trace_id: String,
    state: Option<SessionState>,
    runs: Vec<RunSummary>,
    failures: Vec<String>,
}

impl Row {
    fn decision(&self) -> i32 {
        self.state
            .as_ref()
            .and_then(|s| s.analysis.as_ref())
            .map_or(0, |a| a.decision)
    }

    fn reasons(&self) -> Vec<i32> {
        self.state
            .as_ref()
            .and_then(|s| s.analysis.as_ref())
            .map(|a| a.reasons.iter().map(|r| r.code).collect())
            .unwrap_or_default()
    }

    fn fallback(&self) -> Option<i32> {
        self.state
            .as_ref()
            .and_then(|s| s.fallback.as_ref())
            .map(|f| f.cause)
    }

    fn iterations_text(&self) -> String {
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
fn check(s: &Scenario, row: &Row) -> Vec<String> {
    let mut failures = Vec::new();
    let Some(state) = &row.state else {
        return vec!["no final state".into()];
    };
    let e = &s.expect;
    if row.decision() != e.decision as i32 {
        failures.push(format!(
            "decision {}, expected {}",
            render::decision_name(row.decision()),
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
            render::path_name(state.path),
            e.path.as_str_name()
        ));
    }
    if state.status != e.status as i32 {
        failures.push(format!(
            "status {}, expected {}",
            render::status_name(state.status),
            e.status.as_str_name()
        ));
    }
    let fallback = row.fallback();
    if fallback != e.fallback.map(|c| c as i32) {
        failures.push(format!(
            "fallback {}, expected {}",
            fallback.map_or("none".into(), render::cause_name),
            e.fallback.map_or("none", |c| c.as_str_name())
        ));
    }
    if s.mode == Mode::ResetThenResume {
        match row.runs.as_slice() {
            [first, second] => {
                if first.status != TaskStatus::InProgress as i32 || first.total_iterations != 2 {
                    failures.push(format!(
                        "bounded run ended {} after {} iterations, expected TASK_STATUS_IN_PROGRESS after 2",
                        render::status_name(first.status),
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
fn cells(row: &Row) -> Vec<String> {
    let reasons: Vec<String> = row
        .reasons()
        .into_iter()
        .map(render::reason_short)
        .collect();
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
        row.fallback().map_or("-".into(), render::cause_short),
        row.state
            .as_ref()
            .map_or("-".into(), |s| render::status_short(s.status)),
        row.trace_id.clone(),
        if row.failures.is_empty() {
            "ok".into()
        } else {
            "FAIL".into()
        },
    ]
}

/// Renders rows as one aligned text table.
fn table(rows: &[Row]) -> String {
    let header: Vec<String> = [
        "TASK",
        "DECISION",
        "REASONS",
        "PATH",
        "ITERATIONS",
        "FALLBACK",
        "STATUS",
        "TRACE",
        "CHECK",
    ]
    .iter()
    .map(|h| h.to_string())
    .collect();
    let body: Vec<Vec<String>> = rows.iter().map(cells).collect();
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

fn row_json(row: &Row) -> Value {
    json!({
        "scenario": row.scenario,
        "task_id": row.task_id,
        "decision": render::decision_name(row.decision()),
        "reasons": row.reasons().into_iter().map(render::reason_name).collect::<Vec<_>>(),
        "path": row.state.as_ref().map(|s| render::path_name(s.path)),
        "iterations": row.state.as_ref().map(|s| s.iteration_count),
        "runs": row.runs.iter().map(|r| json!({
            "status": render::status_name(r.status),
            "iterations_this_run": r.iterations_this_run,
            "total_iterations": r.total_iterations,
        })).collect::<Vec<_>>(),
        "fallback_cause": row.fallback().map(render::cause_name),
        "status": row.state.as_ref().map(|s| render::status_name(s.status)),
        "trace_id": row.trace_id,
        "ok": row.failures.is_empty(),
        "failures": row.failures,
    })
}

fn runtime(what: &str) -> impl Fn(std::io::Error) -> CliError + '_ {
    move |e| CliError::Runtime(format!("{what}: {e}"))
}

/// The services the demo started, and how to stop them.
struct Services {
    shutdown: Shutdown,
    router: tokio::task::JoinHandle<std::result::Result<(), router_service::Error>>,
    executor: tokio::task::JoinHandle<executor_service::Result<()>>,
    router_addr: std::net::SocketAddr,
    executor_addr: std::net::SocketAddr,
    store: &'static str,
}

impl Services {
    async fn stop(self) {
        self.shutdown.trigger();
        let wait = async {
            let _ = self.executor.await;
            let _ = self.router.await;
        };
        // The demo's result does not depend on a tidy shutdown; do not hang on it.
        let _ = tokio::time::timeout(Duration::from_secs(10), wait).await;
    }
}

fn demo_config(router_addr: std::net::SocketAddr, redis_url: &str) -> ExecutorConfig {
    let mut config = ExecutorConfig::for_redis(redis_url);
    config.router_addr = Some(format!("http://{router_addr}"));
    // A fresh key space per run, so a second demo against the same Redis starts clean.
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    config.key_prefix = format!("taskctl-demo-{millis}");
    config.settings.worker_id = format!("taskctl-demo-{}", std::process::id());
    config.settings.concurrency = 4;
    config.settings.poll_interval = Duration::from_millis(20);
    config.settings.lease_ttl = Duration::from_secs(10);
    config.settings.archive_ttl = Duration::from_secs(3600);
    config.settings.shutdown_grace = Duration::from_secs(2);
    config.health_interval = Duration::from_millis(200);
    config
}

async fn start_services(args: &DemoArgs, timeout: Duration) -> Result<Services> {
    let shutdown = Shutdown::new();
    let router_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(runtime("cannot bind the router to 127.0.0.1"))?;
    let router_addr = router_listener
        .local_addr()
        .map_err(runtime("router address"))?;
    let router = tokio::spawn(router_service::serve(
        RouterConfig::with_defaults(),
        router_listener,
        shutdown.clone(),
    ));

    let redis_url = args
        .redis_url
        .as_deref()
        .map(str::trim)
        .filter(|u| !u.is_empty());
    let config = demo_config(router_addr, redis_url.unwrap_or_default());
    let (engine, store) = match redis_url {
        None => {
            emit_err(&["no --redis-url: using the in-memory store (state is lost on exit)".into()]);
            let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
            let queue: Arc<dyn WorkQueue> = Arc::new(MemoryQueue::new());
            let link = config
                .router_addr
                .as_deref()
                .map(|addr| RouterLink::new(addr, config.route_timeout))
                .transpose()
                .map_err(CliError::Runtime)?;
            let agent = build_agent(&config.agent).map_err(CliError::Runtime)?;
            let engine = Arc::new(AutonomousLoop::new(
                store,
                queue,
                link,
                agent,
                config.agent.retry_policy(),
                config.settings.clone(),
                shutdown.clone(),
            ));
            (engine, "memory")
        }
        Some(_) => {
            // What `executor_service::serve` does, split so Redis is checked first and
            // a dead URL is one clear line rather than failed scenarios.
            let engine = executor_service::build_engine(&config, shutdown.clone())
                .map_err(|e| CliError::Usage(crate::error::one_line(&e.to_string())))?;
            let ping = tokio::time::timeout(timeout, engine.store().ping()).await;
            match ping {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    let cause = redis_cause(&e);
                    return Err(CliError::Runtime(format!(
                        "cannot reach Redis (--redis-url / REDIS_URL): {cause}"
                    )));
                }
                Err(_) => {
                    return Err(CliError::Runtime(format!(
                        "cannot reach Redis (--redis-url / REDIS_URL): no answer within {}",
                        humantime::format_duration(timeout)
                    )));
                }
            }
            (engine, "redis")
        }
    };
    // Create the consumer group before the workers' first read.
    engine
        .queue()
        .ensure_group()
        .await
        .map_err(|e| CliError::Runtime(format!("work queue: {e}")))?;
    let executor_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(runtime("cannot bind the executor to 127.0.0.1"))?;
    let executor_addr = executor_listener
        .local_addr()
        .map_err(runtime("executor address"))?;
    let executor = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            executor_service::serve_engine(engine, &config, executor_listener, shutdown).await
        })
    };
    Ok(Services {
        shutdown,
        router,
        executor,
        router_addr,
        executor_addr,
        store,
    })
}

/// A short cause for a failed Redis ping (never the URL, which may hold a password).
fn redis_cause(e: &executor_service::Error) -> String {
    if let executor_service::Error::Redis(r) = e {
        if r.is_connection_refusal() {
            return "connection refused".into();
        }
        if r.is_timeout() {
            return "timed out".into();
        }
    }
    crate::error::io_cause(e).unwrap_or_else(|| crate::error::one_line(&e.to_string()))
}

/// `taskctl demo`.
pub async fn demo(cli: &Cli, args: &DemoArgs) -> Result<Exit> {
    let started = Instant::now();
    // With OTEL_EXPORTER_OTLP_ENDPOINT set, both in-process services export their spans,
    // under the trace ids the table prints. Logs stay at warn so the table stays readable.
    let telemetry = if service_kit::telemetry::otlp_requested() {
        let t = service_kit::telemetry::init_with_filter(
            "taskrouter-demo",
            service_kit::telemetry::LogFormat::Text,
            "warn",
        )
        .map_err(|e| CliError::Usage(e.to_string()))?;
        Some(t)
    } else {
        None
    };
    let services = start_services(args, cli.timeout).await?;
    let outcome = run_scenarios(cli, &services).await;
    let (router_addr, executor_addr, store) =
        (services.router_addr, services.executor_addr, services.store);
    services.stop().await;
    if let Some(t) = telemetry {
        t.shutdown();
    }
    let (rows, policy_version) = outcome?;
    let failed: Vec<&Row> = rows.iter().filter(|r| !r.failures.is_empty()).collect();
    if cli.json {
        emit_json(&Value::Array(rows.iter().map(row_json).collect()));
    } else {
        emit(&table(&rows));
    }
    let mut notes: Vec<String> = failed
        .iter()
        .map(|r| format!("FAIL {}: {}", r.task_id, r.failures.join("; ")))
        .collect();
    notes.push(format!(
        "{} of {} scenarios ended as the plan expects ({:.2}s; router {router_addr}, executor {executor_addr}, {store} store, policy {policy_version})",
        rows.len() - failed.len(),
        rows.len(),
        started.elapsed().as_secs_f64()
    ));
    if cli.json {
        emit_err(&notes);
    } else {
        emit(&(notes.join("\n") + "\n"));
    }
    Ok(if failed.is_empty() {
        Exit::Ok
    } else {
        Exit::Runtime
    })
}

async fn run_scenarios(cli: &Cli, services: &Services) -> Result<(Vec<Row>, String)> {
    let router = connect(
        Service::Router,
        &format!("http://{}", services.router_addr),
        cli.timeout,
        &Default::default(),
    )
    .await?;
    let t = Some(cli.timeout);
    let policy = unary(
        &router,
        "GetPolicy",
        t,
        router.router().get_policy(request(GetPolicyRequest {}, t)),
    )
    .await?;
    let executor = connect(
        Service::Executor,
        &format!("http://{}", services.executor_addr),
        cli.timeout,
        &Default::default(),
    )
    .await?;
    let mut set = tokio::task::JoinSet::new();
    for (n, s) in scenarios().into_iter().enumerate() {
        let conn = executor.clone();
        let timeout = cli.timeout;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_has_a_distinct_id_and_the_plan_s_values() {
        let all = scenarios();
        assert_eq!(all.len(), 7);
        let mut ids: Vec<&str> = all.iter().map(|s| s.task.id.as_str()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 7);
        let bug = &all[0].task;
        assert_eq!(
            (bug.description.as_str(), bug.estimated_value_usd),
            ("Fix typo in README", 10.0)
        );
    }

    #[test]
    fn a_mismatch_is_reported_per_expectation() {
        let s = &scenarios()[0];
        let mut row = Row {
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
        let failures = check(s, &row);
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
        let t = table(&[row]);
        assert!(t.lines().nth(1).unwrap().ends_with("FAIL"), "{t}");
    }
}
