//! Chaos: the router dies in the middle of a run. Tasks already routed keep their path,
//! new tasks complete on the single path with the fallback recorded and counted, and
//! once the router is back on the same port routing resumes.

mod chaos_support;
mod common;

use chaos_support::{Exec, ROUTER, assert_completed_exactly_once, wait_health};
use common::Cluster;
use std::time::{Duration, Instant};
use taskrouter_proto::v1::executor_client::ExecutorClient;
use taskrouter_proto::v1::{
    Complexity, ExecutionPath, FallbackCause, ReasonCode, RoutingDecision, SubmitRequest, Task,
};
use test_support::ServiceProcess;
use test_support::client::{state, task};
use test_support::metrics::{metric, scrape};
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;

/// A task the policy sends to the team path (deployment work).
fn team_task(id: &str) -> Task {
    task(
        id,
        "Deploy the scheduler to production",
        Complexity::Medium,
        60.0,
        &["org/sched"],
        &[("sim.specialist_iterations", "3"), ("sim.latency_ms", "40")],
    )
}

/// A long single-path task, to be in flight when the router dies.
fn long_task(id: &str) -> Task {
    task(
        id,
        "Fix a flaky test",
        Complexity::Low,
        10.0,
        &["org/app"],
        &[("sim.iterations", "30"), ("sim.latency_ms", "50")],
    )
}

async fn submit_all(client: &mut ExecutorClient<Channel>, tasks: &[Task]) {
    for t in tasks {
        let r = client
            .submit(SubmitRequest {
                task: Some(t.clone()),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.created, "{}", t.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_router_tasks_fall_back_to_single_and_routing_resumes_when_it_returns() {
    let started = Instant::now();
    let mut c = Cluster::start().await;
    let metrics = format!("127.0.0.1:{}", test_support::free_port());
    let exec = Exec::start(
        &c,
        "exec-a",
        &[
            "--concurrency",
            "4",
            "--lease-ttl",
            "2s",
            "--shutdown-grace",
            "2s",
            "--route-timeout",
            "1s",
            "--metrics-listen",
            &metrics,
        ],
    )
    .await;
    let mut client = exec.client();

    // Before: team tasks are routed to the team path; long tasks are in flight.
    let first: Vec<Task> = (0..2)
        .map(|i| team_task(&format!("BEFORE-TEAM-{i}")))
        .chain((0..2).map(|i| long_task(&format!("BEFORE-LONG-{i}"))))
        .collect();
    submit_all(&mut client, &first).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    for t in &first {
        loop {
            let s = state(&mut client, &t.id).await;
            if s.analysis.is_some() && s.iteration_count >= 2 {
                break;
            }
            assert!(Instant::now() < deadline, "{} did not start", t.id);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    let killed_at = Instant::now();
    c.router.as_mut().unwrap().kill9();
    let during: Vec<Task> = (0..4)
        .map(|i| team_task(&format!("DURING-TEAM-{i}")))
        .collect();
    submit_all(&mut client, &during).await;
    for t in &during {
        let r =
            chaos_support::wait_final_explained(&c, &mut client, &t.id, Duration::from_secs(30))
                .await;
        assert_completed_exactly_once(&c, &t.id, &r).await;
        let s = r.state.unwrap();
        assert_eq!(s.path, ExecutionPath::SingleAgent as i32, "{}", t.id);
        let a = s.analysis.unwrap();
        assert_eq!(a.decision, RoutingDecision::UseSingleAgent as i32);
        assert_eq!(a.reasons[0].code, ReasonCode::RouterUnavailable as i32);
        assert_eq!(
            s.fallback.map(|f| f.cause),
            Some(FallbackCause::RouterUnavailable as i32),
            "{}: the fallback is recorded in the state",
            t.id
        );
    }
    println!(
        "{} tasks completed on the single path {:.1}s after the router died",
        during.len(),
        killed_at.elapsed().as_secs_f64()
    );
    // The tasks in flight when it died finish on the path they were given.
    for t in &first {
        let r =
            chaos_support::wait_final_explained(&c, &mut client, &t.id, Duration::from_secs(30))
                .await;
        assert_completed_exactly_once(&c, &t.id, &r).await;
        let s = r.state.unwrap();
        let want = if t.id.contains("TEAM") {
            ExecutionPath::MultiAgent
        } else {
            ExecutionPath::SingleAgent
        };
        assert_eq!(s.path, want as i32, "{}", t.id);
        assert!(s.fallback.is_none(), "{}: {:?}", t.id, s.fallback);
    }
    let m = scrape(&metrics).await;
    assert_eq!(
        metric(
            &m,
            "taskrouter_fallbacks_total",
            &[("cause", "router_unavailable")]
        ),
        during.len() as f64,
        "one router_unavailable fallback per task routed while the router was down:\n{m}"
    );

    // The router returns on the same port: new tasks are routed again.
    let listen = c.router_addr.to_string();
    c.router = Some(ServiceProcess::spawn(
        "router-service",
        &["--listen", &listen],
        &[],
    ));
    assert!(
        wait_health(
            c.router_addr,
            ROUTER,
            ServingStatus::Serving,
            Duration::from_secs(20)
        )
        .await
        .is_some(),
        "router did not come back"
    );
    let after: Vec<Task> = (0..3)
        .map(|i| team_task(&format!("AFTER-TEAM-{i}")))
        .collect();
    submit_all(&mut client, &after).await;
    for t in &after {
        let r =
            chaos_support::wait_final_explained(&c, &mut client, &t.id, Duration::from_secs(30))
                .await;
        assert_completed_exactly_once(&c, &t.id, &r).await;
        let s = r.state.unwrap();
        assert_eq!(
            s.analysis.unwrap().decision,
            RoutingDecision::UseMultiAgent as i32,
            "{}: routed by the router again",
            t.id
        );
        assert_eq!(s.path, ExecutionPath::MultiAgent as i32, "{}", t.id);
        assert!(s.fallback.is_none(), "{}", t.id);
    }
    let m = scrape(&metrics).await;
    assert_eq!(
        metric(
            &m,
            "taskrouter_fallbacks_total",
            &[("cause", "router_unavailable")]
        ),
        during.len() as f64,
        "no new fallbacks once the router is back"
    );
    println!("router chaos: {:.1}s", started.elapsed().as_secs_f64());
}
