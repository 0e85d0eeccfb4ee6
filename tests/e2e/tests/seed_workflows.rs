//! The seed plan's end-to-end suite, against real router and executor processes and a
//! real redis-server: routing, completion, resume and context resets.

mod common;

use common::{Cluster, get, task, wait_final};
use scenarios::{Mode, Outcome, Scenario};
use std::time::Duration;
use taskrouter_proto::v1::{
    Complexity, ExecutionPath, RunRequest, SubmitRequest, Task, TaskStatus, TeamPhase,
};

#[tokio::test]
async fn seed_scenarios_route_as_planned_and_complete_through_the_queue() {
    let mut c = Cluster::start().await;
    c.add_executor("exec-a", &["--concurrency", "4"]).await;
    let mut client = c.client(0).await;
    // Every scenario of the plan that goes through the work queue (the context reset is
    // driven by Run: see the tests below).
    let plan: Vec<Scenario> = scenarios::plan()
        .into_iter()
        .filter(|s| s.mode == Mode::Submit)
        .collect();
    assert!(plan.len() >= 5, "the plan's queue scenarios");
    for s in &plan {
        let r = client
            .submit(SubmitRequest {
                task: Some(s.task.clone()),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.created);
    }
    for s in &plan {
        let id = &s.task.id;
        let r = wait_final(&mut client, id, Duration::from_secs(30)).await;
        let state = r.state.unwrap();
        let a = state.analysis.clone().unwrap();
        assert!(!a.policy_version.is_empty());
        assert_eq!(
            r.iterations.len() as u32,
            state.iteration_count,
            "{id}: one log record per iteration"
        );
        let outcome = Outcome {
            scenario: s.name,
            task_id: id.clone(),
            trace_id: String::new(),
            state: Some(state),
            runs: Vec::new(),
            failures: Vec::new(),
        };
        let failures = scenarios::check(s, &outcome);
        assert!(failures.is_empty(), "{id}: {failures:?}");
    }
}

#[tokio::test]
async fn a_bounded_run_then_resume_gives_eight_more_and_ten_total() {
    let mut c = Cluster::start().await;
    c.add_executor("exec-a", &["--concurrency", "0"]).await;
    let mut client = c.client(0).await;
    let t = task(
        "TEST-RESUME-SINGLE",
        "Fix flaky test",
        Complexity::Low,
        10.0,
        &["org/app"],
        &[("sim.iterations", "10")],
    );
    let r = client
        .run(RunRequest {
            task: Some(t.clone()),
            resume: false,
            max_iterations: 2,
            use_multi_agent: None,
            budget_usd: None,
        })
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert_eq!(
        TaskStatus::try_from(r.status).unwrap(),
        TaskStatus::InProgress
    );
    assert_eq!(r.total_iterations, 2);
    let r = client
        .run(RunRequest {
            task: Some(Task {
                id: t.id.clone(),
                ..Default::default()
            }),
            resume: true,
            max_iterations: 10,
            use_multi_agent: None,
            budget_usd: None,
        })
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert_eq!(
        TaskStatus::try_from(r.status).unwrap(),
        TaskStatus::Completed
    );
    assert_eq!(r.iterations_this_run, 8);
    assert_eq!(r.total_iterations, 10);
}

#[tokio::test]
async fn a_context_reset_mid_team_resumes_on_another_worker_and_completes() {
    let mut c = Cluster::start().await;
    c.add_executor("exec-a", &["--concurrency", "1"]).await;
    let mut client = c.client(0).await;
    // Four specialists x 6 slow iterations: plenty of time to kill the worker mid-team.
    let t = task(
        "TEST-RESET-TEAM",
        "Complex feature with HIPAA compliance",
        Complexity::High,
        250.0,
        &["org/ehr"],
        &[("sim.specialist_iterations", "6"), ("sim.latency_ms", "60")],
    );
    client
        .submit(SubmitRequest {
            task: Some(t.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    let before = loop {
        let s = get(&mut client, &t.id).await.state.unwrap();
        if s.phase == TeamPhase::Specialists as i32 && s.team_iterations >= 5 {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    c.executors[0].process.kill9();
    c.add_executor("exec-b", &["--concurrency", "1"]).await;
    let mut client = c.client(1).await;
    let r = wait_final(&mut client, &t.id, Duration::from_secs(60)).await;
    let s = r.state.unwrap();
    assert_eq!(
        TaskStatus::try_from(s.status).unwrap(),
        TaskStatus::Completed
    );
    assert_eq!(
        s.path,
        ExecutionPath::MultiAgent as i32,
        "it stayed on the team path"
    );
    assert_eq!(s.analysis, before.analysis, "and kept its routing");
    assert!(s.fallback.is_none());
    // 1 analysis + 4 specialists x 6 + 1 synthesis, each exactly once.
    assert_eq!(s.iteration_count, 26);
    assert_eq!(r.iterations.len(), 26);
    let mut seen = std::collections::HashSet::new();
    for rec in &r.iterations {
        assert!(
            seen.insert((rec.role.clone(), rec.iteration)),
            "{} #{} ran twice",
            rec.role,
            rec.iteration
        );
    }
    assert!(
        r.iterations
            .iter()
            .any(|rec| rec.worker_id.starts_with("exec-b")),
        "exec-b finished it"
    );
    assert!(
        r.iterations
            .iter()
            .any(|rec| rec.worker_id.starts_with("exec-a")),
        "exec-a started it"
    );
}
