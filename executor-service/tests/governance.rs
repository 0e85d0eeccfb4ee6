//! Spend budgets and approval gates end to end: a real router deciding with a real policy
//! file, executors on a real redis-server, over real gRPC.

mod common;

use common::{Harness, test_config};
use std::collections::HashMap;
use std::time::Duration;
use taskrouter_proto::v1::executor_client::ExecutorClient;
use taskrouter_proto::v1::{
    ApprovalGate, BudgetKind, Complexity, Decision, DecisionRequest, GetRequest, RunRequest,
    SessionState, SubmitRequest, Task, TaskStatus,
};
use tonic::Code;
use tonic::transport::Channel;

/// Every gate and budget rule the tests use.
const POLICY: &str = r#"
[tenants.usd_per_day]
acme = 0.05

[[approval.rules]]
reason = "DEPLOYMENT"
gate = "before_start"
timeout = "1h"
on_timeout = "reject"

[[approval.rules]]
reason = "COMPLIANCE_SENSITIVE"
gate = "before_complete"
timeout = "1h"
on_timeout = "reject"
on_reject = "iterate"
"#;

/// Short timeouts: DEPLOYMENT is rejected after 1s, HIGH_VALUE approved after 1s.
const TIMEOUT_POLICY: &str = r#"
[[approval.rules]]
reason = "DEPLOYMENT"
gate = "before_start"
timeout = "1s"
on_timeout = "reject"

[[approval.rules]]
reason = "HIGH_VALUE"
gate = "before_start"
timeout = "1s"
on_timeout = "approve"
"#;

struct Router {
    addr: std::net::SocketAddr,
    shutdown: service_kit::Shutdown,
    _dir: tempfile::TempDir,
}

impl Drop for Router {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

async fn start_router(policy: &str) -> Router {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, policy).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = service_kit::Shutdown::new();
    let mut config = router_service::RouterConfig::with_defaults();
    config.policy_path = Some(path);
    tokio::spawn(router_service::serve(config, listener, shutdown.clone()));
    assert!(
        test_support::wait_for_grpc_serving(addr, "taskrouter.v1.Router", Duration::from_secs(10))
            .await
    );
    Router {
        addr,
        shutdown,
        _dir: dir,
    }
}

fn task(id: &str, description: &str, iterations: u32, labels: &[(&str, &str)]) -> Task {
    let mut l: HashMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    l.insert("sim.iterations".into(), iterations.to_string());
    Task {
        id: id.into(),
        description: description.into(),
        complexity: Complexity::Low as i32,
        estimated_value_usd: 1.0,
        repositories: vec!["org/app".into()],
        labels: l,
    }
}

/// The simulator's cost of one call for a task with this description.
fn sim_cost(t: &Task) -> f64 {
    0.002 + 1e-6 * t.description.len() as f64
}

fn status(s: &SessionState) -> TaskStatus {
    TaskStatus::try_from(s.status).unwrap()
}

async fn get(client: &mut ExecutorClient<Channel>, id: &str) -> SessionState {
    client
        .get(GetRequest {
            task_id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .state
        .unwrap()
}

/// Polls until `pred` holds for the task's state.
async fn wait_for(
    client: &mut ExecutorClient<Channel>,
    id: &str,
    what: &str,
    pred: impl Fn(&SessionState) -> bool,
) -> SessionState {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = get(client, id).await;
        if pred(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "task {id} never became {what}: status {:?}, iterations {}",
            status(&s),
            s.iteration_count
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn decision(id: &str, gate: ApprovalGate, comment: &str) -> DecisionRequest {
    DecisionRequest {
        task_id: id.into(),
        gate: gate as i32,
        comment: comment.into(),
    }
}

fn field_of(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt as _;
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_budget_stop_then_resume_with_a_larger_budget_completes_with_exact_iteration_counts() {
    let mut h = Harness::start(|c| c.settings.agent_max_call_cost_usd = 0.003).await;
    let t = task("BUDGET-RESUME-1", "simulated budget task", 10, &[]);
    let c = sim_cost(&t);
    let budget = 0.0125;
    let first = h
        .client
        .run(RunRequest {
            task: Some(t.clone()),
            budget_usd: Some(budget),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    // Each call reserves 0.003 (above its cost), so iteration n runs while
    // (n - 1) * c + 0.003 <= budget.
    let expected = (1..=10)
        .take_while(|n| (*n as f64 - 1.0) * c + 0.003 <= budget + 1e-12)
        .count() as u32;
    assert_eq!(expected, 5, "cost per call {c}");
    assert_eq!(first.status, TaskStatus::BudgetExhausted as i32);
    assert_eq!(first.total_iterations, expected);
    let state = first.state.unwrap();
    assert_eq!(state.budget_exhausted, BudgetKind::Task as i32);
    assert_eq!(state.budget_usd, budget);
    assert!(state.cost_usd <= budget, "{} > {budget}", state.cost_usd);
    assert!(
        state.last_error.contains("task budget"),
        "{}",
        state.last_error
    );

    // Resuming without more budget stops again at once, without an agent call.
    let again = h
        .client
        .run(RunRequest {
            task: Some(Task {
                id: t.id.clone(),
                ..Default::default()
            }),
            resume: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert_eq!(again.status, TaskStatus::BudgetExhausted as i32);
    assert_eq!(again.iterations_this_run, 0);

    let resumed = h
        .client
        .run(RunRequest {
            task: Some(Task {
                id: t.id.clone(),
                ..Default::default()
            }),
            resume: true,
            budget_usd: Some(1.0),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert_eq!(resumed.status, TaskStatus::Completed as i32);
    assert_eq!(resumed.iterations_this_run, 10 - expected);
    assert_eq!(resumed.total_iterations, 10);
    let s = resumed.state.unwrap();
    assert_eq!(s.budget_exhausted, BudgetKind::Unspecified as i32);
    assert!((s.cost_usd - 10.0 * c).abs() < 1e-9);
    h.stop().await;
}

/// Five planned specialists (four at a time) against a budget smaller than their work,
/// with reservations below the real call cost: the overshoot stays within
/// P * (c_max - r) (see `executor_service::budget`).
#[tokio::test]
async fn four_parallel_specialists_stay_within_the_documented_overshoot_bound() {
    let router = start_router("").await;
    for (r, id) in [(0.0005, "BUDGET-TEAM-LOW"), (0.01, "BUDGET-TEAM-HIGH")] {
        let mut h = Harness::start(|c| {
            c.router_addr = Some(format!("http://{}", router.addr));
            c.settings.agent_max_call_cost_usd = r;
            c.settings.team.max_parallel = 4;
        })
        .await;
        let mut t = task(
            id,
            "deploy the HIPAA patient data service to production",
            3,
            &[("sim.specialist_iterations", "6"), ("sim.latency_ms", "30")],
        );
        t.complexity = Complexity::High as i32;
        t.estimated_value_usd = 1000.0;
        let budget = 0.02;
        let result = h
            .client
            .run(RunRequest {
                task: Some(t.clone()),
                budget_usd: Some(budget),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .result
            .unwrap();
        let s = result.state.unwrap();
        assert_eq!(
            s.path,
            taskrouter_proto::v1::ExecutionPath::MultiAgent as i32
        );
        assert!(s.specialists.len() >= 4, "{:?}", s.specialists);
        assert_eq!(status(&s), TaskStatus::BudgetExhausted, "{}", s.last_error);
        let log = h
            .client
            .get(GetRequest {
                task_id: t.id.clone(),
                include_iterations: true,
                iteration_limit: 1000,
            })
            .await
            .unwrap()
            .into_inner()
            .iterations;
        let c_max = log.iter().map(|r| r.cost_usd).fold(0.0, f64::max);
        let bound = budget + 4.0 * (c_max - r).max(0.0);
        assert!(
            s.cost_usd <= bound + 1e-9,
            "spent {} over the bound {bound} (r {r}, c_max {c_max})",
            s.cost_usd
        );
        if r >= c_max {
            assert!(s.cost_usd <= budget + 1e-9, "{} > {budget}", s.cost_usd);
        }
        h.stop().await;
    }
}

/// Two executors share one tenant's daily budget through Redis: together they never
/// spend more than it (reservations cover every call, so the bound is the budget).
#[tokio::test]
async fn a_tenant_budget_shared_by_two_executors_is_never_exceeded() {
    let router = start_router(POLICY).await;
    let tweak = |c: &mut executor_service::config::ExecutorConfig| {
        c.router_addr = Some(format!("http://{}", router.addr));
        c.settings.agent_max_call_cost_usd = 0.003;
        c.settings.concurrency = 2;
    };
    let mut a = Harness::start(tweak).await;
    let mut b_config = test_config(&a.redis);
    tweak(&mut b_config);
    b_config.settings.worker_id = "second-executor".into();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b_addr = listener.local_addr().unwrap();
    let b_shutdown = service_kit::Shutdown::new();
    let b_server = tokio::spawn(executor_service::serve(
        b_config,
        listener,
        b_shutdown.clone(),
    ));
    assert!(
        test_support::wait_for_grpc_serving(
            b_addr,
            "taskrouter.v1.Executor",
            Duration::from_secs(10)
        )
        .await
    );
    let mut b = ExecutorClient::connect(format!("http://{b_addr}"))
        .await
        .unwrap();
    let ids: Vec<String> = (0..8).map(|i| format!("TENANT-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let t = task(
            id,
            "tenant task",
            5,
            &[("tenant", "acme"), ("sim.latency_ms", "20")],
        );
        let client = if i % 2 == 0 { &mut a.client } else { &mut b };
        client
            .submit(SubmitRequest {
                task: Some(t),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let mut total = 0.0;
    let mut tenant_stops = 0;
    for id in &ids {
        let s = wait_for(&mut a.client, id, "settled", |s| {
            matches!(
                status(s),
                TaskStatus::Completed | TaskStatus::BudgetExhausted | TaskStatus::Failed
            )
        })
        .await;
        total += s.cost_usd;
        if status(&s) == TaskStatus::BudgetExhausted {
            assert_eq!(s.budget_exhausted, BudgetKind::Tenant as i32);
            tenant_stops += 1;
        }
    }
    // 8 tasks x 5 calls need about 0.08; the tenant may spend 0.05 a day.
    assert!(tenant_stops > 0, "no task was stopped by the tenant budget");
    assert!(total <= 0.05 + 1e-9, "the tenant spent {total}");
    assert!(
        total > 0.05 - 0.003 * 4.0,
        "the tenant budget was underused: {total}"
    );
    b_shutdown.trigger();
    let _ = b_server.await;
    a.stop().await;
}

#[tokio::test]
async fn a_gated_task_waits_without_a_worker_and_continues_once_approved() {
    let router = start_router(POLICY).await;
    let mut h = Harness::start(|c| c.router_addr = Some(format!("http://{}", router.addr))).await;
    let t = task("GATE-START-1", "deploy the billing service", 3, &[]);
    h.client
        .submit(SubmitRequest {
            task: Some(t.clone()),
            use_multi_agent: Some(false),
            ..Default::default()
        })
        .await
        .unwrap();
    let waiting = wait_for(&mut h.client, &t.id, "waiting", |s| {
        status(s) == TaskStatus::WaitingApproval
    })
    .await;
    assert_eq!(waiting.waiting_gate, ApprovalGate::BeforeStart as i32);
    assert_eq!(waiting.iteration_count, 0);
    assert!(waiting.approval_deadline.is_some());
    let gates = &waiting.analysis.as_ref().unwrap().gates;
    assert_eq!(gates.len(), 1);
    assert!(
        gates[0].message.starts_with("DEPLOYMENT"),
        "{}",
        gates[0].message
    );
    // Nobody holds the task while it waits.
    let mut redis = redis::Client::open(h.redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let lease: Option<String> = redis::cmd("GET")
        .arg(format!("trtest:{{{}}}:lease", t.id))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(lease, None);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(&mut h.client, &t.id).await.iteration_count, 0);

    // The wrong gate, and a Reject of nothing, are refused.
    let wrong = h
        .client
        .approve(decision(&t.id, ApprovalGate::BeforeComplete, ""))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::FailedPrecondition);

    let approved = h
        .client
        .approve(decision(
            &t.id,
            ApprovalGate::BeforeStart,
            "plan looks fine",
        ))
        .await
        .unwrap()
        .into_inner()
        .state
        .unwrap();
    assert_eq!(approved.approvals.len(), 1);
    assert_eq!(approved.approvals[0].decided_by, "anonymous");
    assert_eq!(approved.approvals[0].decision, Decision::Approved as i32);
    assert_eq!(approved.approvals[0].comment, "plan looks fine");
    let done = wait_for(&mut h.client, &t.id, "completed", |s| {
        status(s) == TaskStatus::Completed
    })
    .await;
    assert_eq!(done.iteration_count, 3);
    // The same decision again is idempotent; a different one is not.
    let again = h
        .client
        .approve(decision(
            &t.id,
            ApprovalGate::BeforeStart,
            "plan looks fine",
        ))
        .await
        .unwrap()
        .into_inner()
        .state
        .unwrap();
    assert_eq!(again.approvals.len(), 1);
    let late = h
        .client
        .reject(decision(&t.id, ApprovalGate::BeforeStart, "no"))
        .await
        .unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition);
    h.stop().await;
}

#[tokio::test]
async fn a_rejected_result_goes_back_with_the_comment_and_completes_after_approval() {
    let router = start_router(POLICY).await;
    let mut h = Harness::start(|c| c.router_addr = Some(format!("http://{}", router.addr))).await;
    let t = task("GATE-COMPLETE-1", "rotate the HIPAA credentials", 2, &[]);
    h.client
        .submit(SubmitRequest {
            task: Some(t.clone()),
            use_multi_agent: Some(false),
            ..Default::default()
        })
        .await
        .unwrap();
    let waiting = wait_for(&mut h.client, &t.id, "waiting", |s| {
        status(s) == TaskStatus::WaitingApproval
    })
    .await;
    assert_eq!(waiting.waiting_gate, ApprovalGate::BeforeComplete as i32);
    assert_eq!(waiting.iteration_count, 2);
    h.client
        .reject(decision(&t.id, ApprovalGate::BeforeComplete, "add a test"))
        .await
        .unwrap();
    // One more iteration with the comment, then the gate again.
    let again = wait_for(&mut h.client, &t.id, "waiting again", |s| {
        status(s) == TaskStatus::WaitingApproval && s.iteration_count == 3
    })
    .await;
    assert!(again.review_feedback.is_empty());
    h.client
        .approve(decision(&t.id, ApprovalGate::BeforeComplete, ""))
        .await
        .unwrap();
    let done = wait_for(&mut h.client, &t.id, "completed", |s| {
        status(s) == TaskStatus::Completed
    })
    .await;
    assert_eq!(done.iteration_count, 3);
    let decisions: Vec<(i32, &str)> = done
        .approvals
        .iter()
        .map(|r| (r.decision, r.comment.as_str()))
        .collect();
    assert_eq!(
        decisions,
        [
            (Decision::Rejected as i32, "add a test"),
            (Decision::Approved as i32, "")
        ]
    );
    h.stop().await;
}

/// Two executors scan for due timeouts; each timeout applies exactly once, as its
/// `on_timeout` says.
#[tokio::test]
async fn gate_timeouts_apply_once_as_the_policy_says() {
    let router = start_router(TIMEOUT_POLICY).await;
    let tweak = |c: &mut executor_service::config::ExecutorConfig| {
        c.router_addr = Some(format!("http://{}", router.addr));
        c.settings.approval_scan_interval = Duration::from_millis(20);
    };
    let mut a = Harness::start(tweak).await;
    let mut b_config = test_config(&a.redis);
    tweak(&mut b_config);
    b_config.settings.worker_id = "second-executor".into();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b_shutdown = service_kit::Shutdown::new();
    let b_server = tokio::spawn(executor_service::serve(
        b_config,
        listener,
        b_shutdown.clone(),
    ));
    let rejected = task("GATE-TIMEOUT-REJECT", "deploy it", 2, &[]);
    let mut approved = task("GATE-TIMEOUT-APPROVE", "fix it", 2, &[]);
    approved.estimated_value_usd = 5000.0;
    for t in [&rejected, &approved] {
        a.client
            .submit(SubmitRequest {
                task: Some(t.clone()),
                use_multi_agent: Some(false),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let failed = wait_for(&mut a.client, &rejected.id, "failed", |s| {
        status(s) == TaskStatus::Failed
    })
    .await;
    assert_eq!(failed.iteration_count, 0);
    assert_eq!(failed.approvals.len(), 1, "{:?}", failed.approvals);
    assert!(failed.approvals[0].timed_out);
    assert_eq!(failed.approvals[0].decided_by, "timeout");
    assert_eq!(failed.approvals[0].decision, Decision::Rejected as i32);
    let done = wait_for(&mut a.client, &approved.id, "completed", |s| {
        status(s) == TaskStatus::Completed
    })
    .await;
    assert_eq!(done.iteration_count, 2);
    assert_eq!(done.approvals.len(), 1, "{:?}", done.approvals);
    assert_eq!(done.approvals[0].decision, Decision::Approved as i32);
    assert!(done.approvals[0].timed_out);
    b_shutdown.trigger();
    let _ = b_server.await;
    a.stop().await;
}

/// An approval recorded while no worker runs: when workers come, exactly one
/// continuation runs the remaining iterations.
#[tokio::test]
async fn an_approval_with_no_worker_up_is_continued_exactly_once_later() {
    let router = start_router(POLICY).await;
    let addr = format!("http://{}", router.addr);
    let t = task("GATE-HANDOFF-1", "deploy the web tier", 4, &[]);
    let mut first = Harness::start(|c| c.router_addr = Some(addr.clone())).await;
    first
        .client
        .submit(SubmitRequest {
            task: Some(t.clone()),
            use_multi_agent: Some(false),
            ..Default::default()
        })
        .await
        .unwrap();
    wait_for(&mut first.client, &t.id, "waiting", |s| {
        status(s) == TaskStatus::WaitingApproval
    })
    .await;
    first.stop().await;
    let redis = std::mem::replace(&mut first.redis, test_support::RedisServer::start());
    // An API-only executor takes the decision; nobody can run the task yet.
    let mut api = Harness::start_with_redis(redis, |c| {
        c.router_addr = Some(addr.clone());
        c.settings.concurrency = 0;
    })
    .await;
    api.client
        .approve(decision(&t.id, ApprovalGate::BeforeStart, ""))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(&mut api.client, &t.id).await.iteration_count, 0);
    // Two workers arrive at once; the task continues once, with exact counts.
    let mut cfg = test_config(&api.redis);
    cfg.router_addr = Some(addr.clone());
    let mut servers = Vec::new();
    let mut stops = Vec::new();
    for n in 0..2 {
        let mut c = cfg.clone();
        c.settings.worker_id = format!("late-worker-{n}");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stop = service_kit::Shutdown::new();
        servers.push(tokio::spawn(executor_service::serve(
            c,
            listener,
            stop.clone(),
        )));
        stops.push(stop);
    }
    let done = wait_for(&mut api.client, &t.id, "completed", |s| {
        status(s) == TaskStatus::Completed
    })
    .await;
    assert_eq!(done.iteration_count, 4);
    let log = api
        .client
        .get(GetRequest {
            task_id: t.id.clone(),
            include_iterations: true,
            iteration_limit: 100,
        })
        .await
        .unwrap()
        .into_inner()
        .iterations;
    let numbers: Vec<u32> = log.iter().map(|r| r.iteration).collect();
    assert_eq!(numbers, [1, 2, 3, 4]);
    for s in stops {
        s.trigger();
    }
    for s in servers {
        let _ = s.await;
    }
    api.stop().await;
}

#[tokio::test]
async fn bad_budgets_gates_and_comments_are_invalid_arguments_and_store_nothing() {
    let mut h = Harness::start(|_| {}).await;
    for (i, budget) in [-1.0, f64::NAN, f64::INFINITY, 1e9, 0.0]
        .into_iter()
        .enumerate()
    {
        let id = format!("BAD-BUDGET-{i}");
        let e = h
            .client
            .submit(SubmitRequest {
                task: Some(task(&id, "x", 1, &[])),
                budget_usd: Some(budget),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{budget}");
        assert_eq!(field_of(&e), ["budget_usd"], "{budget}");
        let e = h
            .client
            .run(RunRequest {
                task: Some(task(&id, "x", 1, &[])),
                budget_usd: Some(budget),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(field_of(&e), ["budget_usd"], "{budget}");
        let gone = h
            .client
            .get(GetRequest {
                task_id: id,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(gone.code(), Code::NotFound);
    }
    let e = h
        .client
        .submit(SubmitRequest {
            task: Some(task(
                "BAD-TENANT",
                "x",
                1,
                &[("tenant", "a, budget_usd: None, }b")],
            )),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(field_of(&e), ["task.labels[tenant]"]);

    h.client
        .submit(SubmitRequest {
            task: Some(task("GATE-BAD-1", "x", 1, &[])),
            ..Default::default()
        })
        .await
        .unwrap();
    let e = h
        .client
        .approve(DecisionRequest {
            task_id: "GATE-BAD-1".into(),
            gate: 0,
            comment: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(field_of(&e), ["gate"]);
    let e = h
        .client
        .reject(DecisionRequest {
            task_id: "GATE-BAD-1".into(),
            gate: 99,
            comment: "x".repeat(5000),
        })
        .await
        .unwrap_err();
    assert_eq!(field_of(&e), ["gate", "comment"]);
    let e = h
        .client
        .approve(decision("", ApprovalGate::BeforeStart, ""))
        .await
        .unwrap_err();
    assert_eq!(field_of(&e), ["task_id"]);
    let e = h
        .client
        .approve(decision("NO-SUCH-TASK", ApprovalGate::BeforeStart, ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let state = get(&mut h.client, "GATE-BAD-1").await;
    assert!(state.approvals.is_empty());
    h.stop().await;
}

/// `--when-router-unavailable hold`: with the router down, the policy's gates are
/// unknown, so new tasks (routed or forced to the single path) wait for a person instead
/// of running ungoverned; an approval runs the task, the hold's timeout rejects it.
#[tokio::test]
async fn with_the_router_down_fail_closed_holds_new_tasks_for_a_person() {
    // A port nothing listens on: every Route fails fast.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = dead.local_addr().unwrap();
    drop(dead);
    let mut h = Harness::start(|c| {
        c.router_addr = Some(format!("http://{addr}"));
        c.settings.when_router_unavailable =
            executor_service::settings::WhenRouterUnavailable::Hold;
        c.settings.router_unavailable_hold_timeout = Duration::from_secs(3);
        c.settings.approval_scan_interval = Duration::from_millis(20);
    })
    .await;
    let routed = task("HOLD-ROUTED", "deploy the billing service", 3, &[]);
    let forced = task("HOLD-FORCED", "deploy the billing service", 3, &[]);
    for (t, force) in [(&routed, None), (&forced, Some(false))] {
        h.client
            .submit(SubmitRequest {
                task: Some(t.clone()),
                use_multi_agent: force,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    for t in [&routed, &forced] {
        let waiting = wait_for(&mut h.client, &t.id, "waiting", |s| {
            status(s) == TaskStatus::WaitingApproval
        })
        .await;
        assert_eq!(waiting.waiting_gate, ApprovalGate::BeforeStart as i32);
        assert_eq!(waiting.iteration_count, 0);
        let gates = &waiting.analysis.as_ref().unwrap().gates;
        assert_eq!(gates.len(), 1, "{gates:?}");
        assert_eq!(
            gates[0].reason,
            taskrouter_proto::v1::ReasonCode::RouterUnavailable as i32
        );
        assert!(gates[0].message.contains("router"), "{}", gates[0].message);
    }
    h.client
        .approve(decision(&routed.id, ApprovalGate::BeforeStart, "ok"))
        .await
        .unwrap();
    let done = wait_for(&mut h.client, &routed.id, "completed", |s| {
        status(s) == TaskStatus::Completed
    })
    .await;
    assert_eq!(done.iteration_count, 3);
    assert_eq!(done.approvals[0].decision, Decision::Approved as i32);
    // Nobody decides on the other one: the hold's timeout rejects it.
    let failed = wait_for(&mut h.client, &forced.id, "failed", |s| {
        status(s) == TaskStatus::Failed
    })
    .await;
    assert_eq!(failed.iteration_count, 0);
    assert!(failed.approvals[0].timed_out);
    assert_eq!(failed.approvals[0].decision, Decision::Rejected as i32);
    h.stop().await;
}
