//! Chaos: SIGTERM an executor with several tasks in flight. It drains within its grace
//! period (exit code 0), checkpoints the iteration in flight, releases its leases, and
//! the other replica continues every task well before a lease could have expired.

mod chaos_support;
mod common;

use chaos_support::{Exec, assert_completed_exactly_once, leases};
use common::Cluster;
use std::time::{Duration, Instant};
use taskrouter_proto::v1::SubmitRequest;
use taskrouter_proto::v1::{Complexity, TaskStatus};
use test_support::client::{get_with_iterations, state, task};

const TASKS: usize = 4;
const ITERATIONS: u32 = 20;
/// Slow iterations, so SIGTERM lands in the middle of one.
const LATENCY_MS: u32 = 200;
/// Long enough that a handoff by lease expiry could not pass the handoff check.
const LEASE_TTL: Duration = Duration::from_secs(5);
const GRACE: Duration = Duration::from_secs(3);

fn flags() -> Vec<String> {
    [
        "--concurrency",
        "4",
        "--lease-ttl",
        &format!("{}s", LEASE_TTL.as_secs()),
        "--shutdown-grace",
        &format!("{}s", GRACE.as_secs()),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_the_grace_period_and_the_other_replica_takes_over_at_once() {
    let c = Cluster::start().await;
    let flags = flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut a = Exec::start(&c, "exec-a", &flags).await;
    let ids: Vec<String> = (0..TASKS).map(|i| format!("S-{i}")).collect();
    let mut client = a.client();
    for id in &ids {
        client
            .submit(SubmitRequest {
                task: Some(task(
                    id,
                    "Fix a flaky test",
                    Complexity::Low,
                    10.0,
                    &["org/app"],
                    &[
                        ("sim.iterations", &ITERATIONS.to_string()),
                        ("sim.latency_ms", &LATENCY_MS.to_string()),
                    ],
                )),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    // exec-a runs every task before exec-b joins, so all of them must be handed over.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut running = 0;
        for id in &ids {
            let s = state(&mut client, id).await;
            if s.iteration_count >= 2 && s.worker_id == "exec-a" {
                running += 1;
            }
        }
        if running == TASKS {
            break;
        }
        assert!(Instant::now() < deadline, "exec-a did not start every task");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(client);
    let b = Exec::start(&c, "exec-b", &flags).await;
    let mut client = b.client();

    let term = Instant::now();
    let term_wall = std::time::SystemTime::now();
    a.process.sigterm();
    let status = a.process.wait_exit(GRACE + Duration::from_secs(10)).await;
    let drained_in = term.elapsed();
    assert!(
        status.is_some_and(|s| s.success()),
        "exec-a exits 0 after SIGTERM: {status:?}\n{}",
        a.process.log_contents()
    );
    assert!(
        drained_in < GRACE + Duration::from_secs(2),
        "exec-a drained in {drained_in:?}; grace is {GRACE:?}"
    );
    let held: Vec<_> = leases(&c)
        .await
        .into_iter()
        .filter(|(_, owner)| owner.starts_with("exec-a:"))
        .collect();
    assert!(held.is_empty(), "exec-a released its leases: {held:?}");
    // The iterations in flight were finished and checkpointed, and every counted
    // iteration is in the log.
    let mut finished_after_term = 0;
    for id in &ids {
        let r = get_with_iterations(&mut client, id, 1000).await;
        let s = r.state.unwrap();
        assert_ne!(s.status, TaskStatus::Completed as i32, "{id} was mid-run");
        let numbers: Vec<u32> = r
            .iterations
            .iter()
            .filter(|x| x.worker_id == "exec-a")
            .map(|x| x.iteration)
            .collect();
        assert!(!numbers.is_empty());
        if r.iterations.iter().any(|x| {
            x.worker_id == "exec-a"
                && x.at
                    .and_then(|t| std::time::SystemTime::try_from(t).ok())
                    .is_some_and(|t| t > term_wall)
        }) {
            finished_after_term += 1;
        }
        assert_eq!(
            numbers,
            (1..=numbers.len() as u32).collect::<Vec<_>>(),
            "{id}: exec-a's iterations are all checkpointed, in order"
        );
    }

    assert!(
        finished_after_term > 0,
        "no iteration in flight at SIGTERM was finished and checkpointed"
    );
    // exec-b continues each task long before exec-a's lease could have expired.
    let mut handoff = Duration::ZERO;
    let mut waiting: Vec<&String> = ids.iter().collect();
    while !waiting.is_empty() {
        let mut still = Vec::new();
        for id in waiting {
            let r = get_with_iterations(&mut client, id, 1000).await;
            if !r.iterations.iter().any(|x| x.worker_id == "exec-b") {
                still.push(id);
            }
        }
        waiting = still;
        handoff = term.elapsed();
        assert!(
            handoff < LEASE_TTL,
            "{waiting:?} not continued by exec-b within the lease TTL ({LEASE_TTL:?})"
        );
        if !waiting.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    println!(
        "SIGTERM: exec-a finished {finished_after_term} in-flight iteration(s), drained {TASKS} tasks and exited in {:.2}s (grace {GRACE:?}); exec-b continued all of them {:.2}s after SIGTERM (lease TTL {LEASE_TTL:?})",
        drained_in.as_secs_f64(),
        handoff.as_secs_f64()
    );

    for id in &ids {
        let r =
            chaos_support::wait_final_explained(&c, &mut client, id, Duration::from_secs(60)).await;
        let n = assert_completed_exactly_once(&c, id, &r).await;
        assert_eq!(
            n, ITERATIONS,
            "{id}: nothing lost or doubled across the handoff"
        );
    }
}
