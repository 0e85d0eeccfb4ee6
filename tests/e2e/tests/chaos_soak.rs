//! A bounded soak: mixed Route and Submit/Get load against the real binaries for
//! `TASKROUTER_SOAK_SECS` seconds (default 20). Zero errors, every submitted task
//! completes, and neither service's resident memory grows by more than a generous bound
//! between the end of the warm-up and the end of the load.

mod chaos_support;
mod common;

use chaos_support::{Exec, rss_kib};
use common::Cluster;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use taskrouter_proto::v1::executor_client::ExecutorClient;
use taskrouter_proto::v1::router_client::RouterClient;
use taskrouter_proto::v1::{
    Complexity, GetPolicyRequest, GetRequest, RouteRequest, SubmitRequest, Task, TaskStatus,
};
use test_support::client::{is_final, lazy_channel, state, task};

/// Route loops, each pausing between calls.
const ROUTE_CLIENTS: usize = 3;
const ROUTE_PAUSE: Duration = Duration::from_millis(10);
/// Submit loops, each submitting a task and reading an earlier one per round.
const SUBMIT_CLIENTS: usize = 2;
const SUBMIT_PAUSE: Duration = Duration::from_millis(200);
/// Allowed RSS growth between the end of the warm-up and the end of the load.
const MAX_GROWTH_KIB: u64 = 50 * 1024;

fn soak_duration() -> Duration {
    let secs = std::env::var("TASKROUTER_SOAK_SECS")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .unwrap_or(20);
    Duration::from_secs(secs)
}

/// The n-th task of the mix: mostly single-path, some team work, all short.
fn mixed_task(client: usize, n: u64) -> Task {
    let id = format!("SOAK-{client}-{n:06}");
    match n % 4 {
        0 => task(
            &id,
            "Rotate the HIPAA credentials of the claims database",
            Complexity::Medium,
            80.0,
            &["org/claims"],
            &[("sim.specialist_iterations", "1")],
        ),
        1 => task(
            &id,
            "Refactor the shared client",
            Complexity::Medium,
            60.0,
            &["org/web", "org/mobile"],
            &[("sim.specialist_iterations", "1")],
        ),
        _ => task(
            &id,
            "Fix typo in README",
            Complexity::Low,
            10.0,
            &["org/docs"],
            &[("sim.iterations", "2")],
        ),
    }
}

#[derive(Default)]
struct Tally {
    routes: AtomicU64,
    submits: AtomicU64,
    gets: AtomicU64,
    errors: AtomicU64,
}

impl Tally {
    fn count(&self, which: &AtomicU64, ok: bool, what: &str) {
        which.fetch_add(1, Ordering::Relaxed);
        if !ok {
            let n = self.errors.fetch_add(1, Ordering::Relaxed);
            if n < 5 {
                eprintln!("soak error in {what}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_load_soak_has_no_errors_and_flat_memory() {
    let duration = soak_duration();
    let warmup = (duration / 4).min(Duration::from_secs(10));
    let c = Cluster::start().await;
    let exec = Exec::start(
        &c,
        "exec-a",
        &[
            "--concurrency",
            "8",
            "--lease-ttl",
            "5s",
            "--shutdown-grace",
            "2s",
        ],
    )
    .await;
    let router_pid = c.router.as_ref().unwrap().pid();
    let exec_pid = exec.process.pid();
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let deadline = started + duration;
    let mut load = tokio::task::JoinSet::new();

    for r in 0..ROUTE_CLIENTS {
        let tally = tally.clone();
        let addr = c.router_addr;
        load.spawn(async move {
            let mut client = RouterClient::new(lazy_channel(addr));
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                if n.is_multiple_of(50) {
                    let ok = client.get_policy(GetPolicyRequest {}).await.is_ok();
                    tally.count(&tally.routes, ok, "GetPolicy");
                }
                let t = mixed_task(100 + r, n);
                let ok = match client
                    .route(RouteRequest {
                        task: Some(t),
                        ..Default::default()
                    })
                    .await
                {
                    Ok(resp) => resp.into_inner().analysis.is_some(),
                    Err(_) => false,
                };
                tally.count(&tally.routes, ok, "Route");
                tokio::time::sleep(ROUTE_PAUSE).await;
            }
            Vec::new()
        });
    }
    for s in 0..SUBMIT_CLIENTS {
        let tally = tally.clone();
        let addr = exec.addr;
        load.spawn(async move {
            let mut client = ExecutorClient::new(lazy_channel(addr));
            let mut ids = Vec::new();
            let mut n = 0u64;
            while Instant::now() < deadline {
                let t = mixed_task(s, n);
                let ok = match client
                    .submit(SubmitRequest {
                        task: Some(t.clone()),
                        ..Default::default()
                    })
                    .await
                {
                    Ok(resp) => resp.into_inner().created,
                    Err(_) => false,
                };
                tally.count(&tally.submits, ok, "Submit");
                ids.push(t.id);
                let earlier = &ids[(n as usize * 7919) % ids.len()];
                let ok = client
                    .get(GetRequest {
                        task_id: earlier.clone(),
                        include_iterations: n.is_multiple_of(2),
                        iteration_limit: 10,
                    })
                    .await
                    .is_ok();
                tally.count(&tally.gets, ok, "Get");
                n += 1;
                tokio::time::sleep(SUBMIT_PAUSE).await;
            }
            ids
        });
    }

    tokio::time::sleep(warmup).await;
    let rss_start = (rss_kib(router_pid), rss_kib(exec_pid));
    let mut ids = Vec::new();
    while let Some(r) = load.join_next().await {
        ids.extend(r.unwrap());
    }
    let rss_end = (rss_kib(router_pid), rss_kib(exec_pid));
    let load_secs = started.elapsed().as_secs_f64();

    // Every submitted task completes.
    let mut client = exec.client();
    let drain = Instant::now() + Duration::from_secs(60);
    let mut completed = 0;
    for id in &ids {
        loop {
            let s = state(&mut client, id).await;
            if is_final(&s) {
                assert_eq!(
                    s.status,
                    TaskStatus::Completed as i32,
                    "{id}: {}",
                    s.last_error
                );
                completed += 1;
                break;
            }
            assert!(
                Instant::now() < drain,
                "{id} did not complete after the soak"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    let routes = tally.routes.load(Ordering::Relaxed);
    let submits = tally.submits.load(Ordering::Relaxed);
    let gets = tally.gets.load(Ordering::Relaxed);
    let errors = tally.errors.load(Ordering::Relaxed);
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "soak: {load_secs:.1}s of load (warm-up {:.0}s): {} requests ({routes} Route/GetPolicy, {submits} Submit, {gets} Get, {:.0}/s), {errors} errors, {completed} tasks completed",
        warmup.as_secs_f64(),
        routes + submits + gets,
        (routes + submits + gets) as f64 / load_secs,
    );
    println!(
        "soak RSS: router {:.1} -> {:.1} MiB, executor {:.1} -> {:.1} MiB",
        mib(rss_start.0),
        mib(rss_end.0),
        mib(rss_start.1),
        mib(rss_end.1)
    );
    assert_eq!(errors, 0, "requests failed during the soak");
    assert_eq!(completed, submits as usize);
    assert!(
        routes > 100 && submits > 20,
        "the soak made too little load to say anything"
    );
    for (name, start, end) in [
        ("router", rss_start.0, rss_end.0),
        ("executor", rss_start.1, rss_end.1),
    ] {
        assert!(
            end <= start + MAX_GROWTH_KIB,
            "{name} RSS grew from {:.1} to {:.1} MiB during the soak",
            mib(start),
            mib(end)
        );
    }
}
