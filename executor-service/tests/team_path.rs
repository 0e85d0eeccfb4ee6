//! Routing through a real router, the team path, its resume, and every fallback of the
//! team path to the single path — against a real redis-server over real gRPC.

mod common;

use common::Harness;
use std::collections::HashMap;
use std::time::Duration;
use taskrouter_proto::v1::{
    Complexity, ExecutionPath, FallbackCause, GetRequest, ReasonCode, RoutingDecision, RunResult,
    SpecialistStatus, SubmitRequest, TaskStatus, TeamPhase,
};
use test_support::client::{resume, run, task, wait_final, wait_state};

/// An in-process router with the embedded default policy; returns its address.
async fn start_router() -> (std::net::SocketAddr, service_kit::Shutdown) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = service_kit::Shutdown::new();
    tokio::spawn(router_service::serve(
        router_service::RouterConfig::with_defaults(),
        listener,
        shutdown.clone(),
    ));
    assert!(
        test_support::wait_for_grpc_serving(addr, "taskrouter.v1.Router", Duration::from_secs(10))
            .await
    );
    (addr, shutdown)
}

async fn with_router(
    tweak: impl FnOnce(&mut executor_service::config::ExecutorConfig),
) -> (Harness, service_kit::Shutdown) {
    let (router, router_shutdown) = start_router().await;
    let h = Harness::start(|c| {
        c.router_addr = Some(format!("http://{router}"));
        tweak(c);
    })
    .await;
    (h, router_shutdown)
}

fn codes(r: &RunResult) -> Vec<ReasonCode> {
    r.state
        .as_ref()
        .unwrap()
        .analysis
        .as_ref()
        .unwrap()
        .reasons
        .iter()
        .map(|x| ReasonCode::try_from(x.code).unwrap())
        .collect()
}

#[tokio::test]
async fn the_seed_scenarios_route_and_complete() {
    let (mut h, _r) = with_router(|_| {}).await;
    // Every scenario of the plan that goes through the work queue, checked against the
    // plan's expectations (the context reset has its own test below).
    for sc in scenarios::plan()
        .into_iter()
        .filter(|sc| sc.mode == scenarios::Mode::Submit)
    {
        let id = sc.task.id.clone();
        let r = run(&mut h.client, sc.task.clone(), 50).await;
        let s = r.state.clone().unwrap();
        let outcome = scenarios::Outcome {
            scenario: sc.name,
            task_id: id.clone(),
            trace_id: String::new(),
            state: Some(s.clone()),
            runs: Vec::new(),
            failures: Vec::new(),
        };
        let failures = scenarios::check(&sc, &outcome);
        assert!(failures.is_empty(), "{id}: {failures:?}");
        if sc.expect.path == ExecutionPath::MultiAgent {
            assert_eq!(s.phase, TeamPhase::Done as i32, "{id}");
            assert!(!s.specialists.is_empty());
            assert!(
                s.specialists
                    .iter()
                    .all(|sp| sp.status == SpecialistStatus::Done as i32)
            );
            assert!(!s.result.is_empty());
        }
    }
    h.stop().await;
}

#[tokio::test]
async fn a_team_run_reset_after_two_iterations_resumes_with_eight_more_and_ten_total() {
    let (mut h, _r) = with_router(|_| {}).await;
    // HIGH + HIPAA + $250 staffs four specialists; 1 analysis + 4 x 2 + 1 synthesis = 10.
    let t = scenarios::Scenario::by_id("TEST-RESUME-001").task;
    let first = run(&mut h.client, t.clone(), 2).await;
    assert_eq!(
        first.routing_decision,
        RoutingDecision::UseMultiAgent as i32
    );
    assert_eq!(
        TaskStatus::try_from(first.status).unwrap(),
        TaskStatus::InProgress
    );
    assert_eq!(first.total_iterations, 2);
    let saved = first.state.unwrap();
    assert_eq!(saved.phase, TeamPhase::Specialists as i32);
    assert_eq!(saved.specialists.len(), 4, "{:?}", saved.specialists);

    let second = resume(&mut h.client, &t.id, 10).await;
    assert_eq!(
        TaskStatus::try_from(second.status).unwrap(),
        TaskStatus::Completed
    );
    assert_eq!(second.iterations_this_run, 8);
    assert_eq!(second.total_iterations, 10);
    assert_eq!(
        second.path,
        ExecutionPath::MultiAgent as i32,
        "a resumed task keeps its path"
    );
    assert_eq!(
        second.state.as_ref().unwrap().analysis,
        saved.analysis,
        "and its analysis"
    );

    // Every role ran exactly as often as it needed: nothing was redone after the reset.
    let log = h
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
    let mut per_role: HashMap<String, Vec<u32>> = HashMap::new();
    for r in &log {
        per_role
            .entry(r.role.clone())
            .or_default()
            .push(r.iteration);
    }
    assert_eq!(per_role.remove("lead").unwrap(), vec![1, 2]);
    for (role, mut its) in per_role {
        its.sort();
        assert_eq!(its, vec![1, 2], "{role}");
    }
    h.stop().await;
}

async fn assert_falls_back(
    labels: &[(&str, &str)],
    cause: FallbackCause,
    tweak: impl FnOnce(&mut executor_service::config::ExecutorConfig),
) {
    let (mut h, _r) = with_router(tweak).await;
    let t = task(
        "T-FALLBACK",
        "Implement new payment processing",
        Complexity::High,
        500.0,
        &["org/pay"],
        &{
            let mut l = labels.to_vec();
            l.push(("sim.iterations", "3"));
            l
        },
    );
    let r = run(&mut h.client, t, 50).await;
    assert_eq!(
        r.routing_decision,
        RoutingDecision::UseMultiAgent as i32,
        "the router chose the team"
    );
    assert_eq!(
        TaskStatus::try_from(r.status).unwrap(),
        TaskStatus::Completed,
        "the task still completes"
    );
    assert_eq!(
        r.path,
        ExecutionPath::SingleAgent as i32,
        "on the single path"
    );
    let fb = r.fallback.expect("fallback recorded");
    assert_eq!(
        FallbackCause::try_from(fb.cause).unwrap(),
        cause,
        "{}",
        fb.detail
    );
    assert!(
        !fb.detail.contains("payment"),
        "no description in the record: {}",
        fb.detail
    );
    let s = r.state.unwrap();
    let single = s.iteration_count - s.team_iterations;
    assert_eq!(single, 3, "the single path ran its 3 iterations");
    h.stop().await;
}

#[tokio::test]
async fn failed_analysis_falls_back_to_the_single_path() {
    assert_falls_back(
        &[("sim.fail_step", "analysis")],
        FallbackCause::AnalysisFailed,
        |_| {},
    )
    .await;
}

#[tokio::test]
async fn a_specialist_timeout_falls_back_to_the_single_path() {
    assert_falls_back(
        &[("sim.hang_role", "reviewer")],
        FallbackCause::SpecialistTimeout,
        |c| {
            c.settings.team.specialist_timeout = Duration::from_millis(500);
        },
    )
    .await;
}

#[tokio::test]
async fn a_failing_specialist_falls_back_to_the_single_path() {
    assert_falls_back(
        &[
            ("sim.fail_step", "specialist"),
            ("sim.fail_role", "architect"),
        ],
        FallbackCause::SpecialistFailed,
        |_| {},
    )
    .await;
}

#[tokio::test]
async fn failed_synthesis_falls_back_to_the_single_path() {
    assert_falls_back(
        &[("sim.fail_step", "synthesis")],
        FallbackCause::SynthesisFailed,
        |_| {},
    )
    .await;
}

#[tokio::test]
async fn an_unreachable_router_means_the_single_path_with_the_reason_recorded() {
    let mut h = Harness::start(|c| {
        c.router_addr = Some(format!("http://127.0.0.1:{}", test_support::free_port()));
        c.route_timeout = Duration::from_millis(300);
    })
    .await;
    let t = task(
        "T-NOROUTER",
        "Deploy to production",
        Complexity::Critical,
        900.0,
        &["org/a"],
        &[("sim.iterations", "2")],
    );
    let r = run(&mut h.client, t, 10).await;
    assert_eq!(
        TaskStatus::try_from(r.status).unwrap(),
        TaskStatus::Completed
    );
    assert_eq!(r.routing_decision, RoutingDecision::UseSingleAgent as i32);
    assert_eq!(codes(&r), vec![ReasonCode::RouterUnavailable]);
    assert_eq!(
        r.fallback.unwrap().cause,
        FallbackCause::RouterUnavailable as i32
    );
    h.stop().await;
}

#[tokio::test]
async fn checkpoints_failing_past_their_retry_budget_leave_the_task_resumable_until_redis_returns()
{
    let redis = test_support::RedisServer::start_with(test_support::RedisOptions {
        appendonly: true,
        password: None,
    });
    let mut h = Harness::start_with_redis(redis, |c| {
        c.settings.concurrency = 1;
        c.settings.checkpoint_retry.budget = Duration::from_millis(300);
        c.settings.lease_ttl = Duration::from_secs(1);
    })
    .await;
    let t = task(
        "T-REDIS-AWAY",
        "Refactor module",
        Complexity::Low,
        5.0,
        &["org/a"],
        &[("sim.iterations", "15"), ("sim.latency_ms", "40")],
    );
    h.client
        .submit(SubmitRequest {
            task: Some(t.clone()),
            max_iterations: 15,
            use_multi_agent: Some(false),
            budget_usd: None,
        })
        .await
        .unwrap();
    wait_state(&mut h.client, &t.id, Duration::from_secs(60), |s| {
        s.iteration_count >= 4
    })
    .await;
    h.redis.stop();
    // Far longer than the retry budget: the run gives up, without marking anything done.
    tokio::time::sleep(Duration::from_secs(2)).await;
    h.redis.start_again();
    let fin = wait_final(&mut h.client, &t.id, Duration::from_secs(30)).await;
    assert_eq!(
        TaskStatus::try_from(fin.status).unwrap(),
        TaskStatus::Completed
    );
    assert_eq!(fin.iteration_count, 15);
    let log = h
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
    assert_eq!(numbers, (1..=15).collect::<Vec<_>>());
    h.stop().await;
}

#[tokio::test]
async fn a_bounded_team_run_with_parallel_slow_specialists_stops_exactly_at_the_bound() {
    let (mut h, _r) = with_router(|_| {}).await;
    for bound in [2u32, 3, 5] {
        let id = format!("T-BOUND-{bound}");
        let t = task(
            &id,
            "Complex feature with HIPAA compliance",
            Complexity::High,
            250.0,
            &["org/ehr"],
            &[("sim.specialist_iterations", "2"), ("sim.latency_ms", "30")],
        );
        let first = run(&mut h.client, t, bound).await;
        assert_eq!(
            TaskStatus::try_from(first.status).unwrap(),
            TaskStatus::InProgress,
            "{id}"
        );
        assert_eq!(
            first.total_iterations, bound,
            "{id}: in-flight iterations are finished, not cut off"
        );
        let log = h
            .client
            .get(GetRequest {
                task_id: id.clone(),
                include_iterations: true,
                iteration_limit: 100,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            log.iterations.len() as u32,
            bound,
            "{id}: memory and Redis agree"
        );
        assert_eq!(log.state.unwrap().iteration_count, bound);
        let second = resume(&mut h.client, &id, 10).await;
        assert_eq!(
            TaskStatus::try_from(second.status).unwrap(),
            TaskStatus::Completed,
            "{id}"
        );
        assert_eq!(second.total_iterations, 10, "{id}");
        assert_eq!(second.iterations_this_run, 10 - bound, "{id}");
    }
    h.stop().await;
}

#[tokio::test]
async fn the_shadow_decision_is_recorded_beside_the_live_one() {
    let dir = tempfile::tempdir().unwrap();
    let candidate = dir.path().join("candidate.toml");
    // The candidate would send a $50 task to the team path; the built-in policy does not.
    std::fs::write(
        &candidate,
        "[rules]\nvalue_threshold_usd = 10.0\n[multi_agent]\nrollout_percent = 100\n",
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router_shutdown = service_kit::Shutdown::new();
    tokio::spawn(router_service::serve(
        router_service::RouterConfig {
            shadow_policy_path: Some(candidate),
            ..router_service::RouterConfig::with_defaults()
        },
        listener,
        router_shutdown.clone(),
    ));
    assert!(
        test_support::wait_for_grpc_serving(addr, "taskrouter.v1.Router", Duration::from_secs(10))
            .await
    );
    let mut h = Harness::start(|c| c.router_addr = Some(format!("http://{addr}"))).await;

    let r = run(
        &mut h.client,
        task(
            "SHADOW-1",
            "Fix a flaky test",
            Complexity::Low,
            50.0,
            &["org/a"],
            &[],
        ),
        10,
    )
    .await;
    let state = r.state.unwrap();
    assert_eq!(state.path, ExecutionPath::SingleAgent as i32);
    let live = state.analysis.unwrap();
    let shadow = state.shadow_analysis.expect("shadow decision recorded");
    assert_eq!(live.decision, RoutingDecision::UseSingleAgent as i32);
    assert_eq!(shadow.decision, RoutingDecision::UseMultiAgent as i32);
    assert_ne!(shadow.policy_version, live.policy_version);

    // Stored: a later Get returns it too.
    let got = h
        .client
        .get(GetRequest {
            task_id: "SHADOW-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .state
        .unwrap();
    assert_eq!(got.shadow_analysis, Some(shadow));
    router_shutdown.trigger();
}
