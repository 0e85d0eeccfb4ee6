//! Chaos: Redis goes away for a few seconds in the middle of a run and comes back on the
//! same port with its append-only file. The executors report NOT_SERVING while it is
//! gone and SERVING once it is back, calls fail with a clear UNAVAILABLE meanwhile, the
//! tasks continue, and nothing that was checkpointed before the outage is lost.

mod chaos_support;
mod common;

use chaos_support::{EXECUTOR, Exec, assert_completed_exactly_once, wait_health};
use common::Cluster;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use taskrouter_proto::v1::{Complexity, GetRequest, IterationRecord, SubmitRequest};
use test_support::client::{get_with_iterations, is_final, state, task};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

const TASKS: usize = 8;
const ITERATIONS: u32 = 40;
const OUTAGE: Duration = Duration::from_secs(3);
const FLAGS: &[&str] = &[
    // One worker per task: all run at once, so none finishes before the outage.
    "--concurrency",
    "8",
    "--lease-ttl",
    "2s",
    "--shutdown-grace",
    "2s",
    "--checkpoint-retry-budget",
    "30s",
];

fn key(r: &IterationRecord) -> (String, u32) {
    (r.role.clone(), r.iteration)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_turns_health_off_and_on_and_loses_no_checkpoint() {
    let started = Instant::now();
    let mut c = Cluster::start().await;
    let execs = [
        Exec::start(&c, "exec-a", FLAGS).await,
        Exec::start(&c, "exec-b", FLAGS).await,
    ];
    let mut client = execs[0].client();
    let ids: Vec<String> = (0..TASKS).map(|i| format!("R-{i}")).collect();
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
                        ("sim.latency_ms", "50"),
                    ],
                )),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    // Mid-run: every task has made some progress and none is close to done.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut ready = 0;
        for id in &ids {
            if state(&mut client, id).await.iteration_count >= 5 {
                ready += 1;
            }
        }
        if ready == TASKS {
            break;
        }
        assert!(Instant::now() < deadline, "tasks did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Everything checkpointed so far: it must all be there at the end, unchanged.
    let mut before: HashMap<String, Vec<IterationRecord>> = HashMap::new();
    for id in &ids {
        let r = get_with_iterations(&mut client, id, 1000).await;
        assert!(
            !is_final(r.state.as_ref().unwrap()),
            "{id} is still running when Redis stops"
        );
        before.insert(id.clone(), r.iterations);
    }
    c.redis.stop();
    let outage = Instant::now();

    for e in &execs {
        let took = wait_health(
            e.addr,
            EXECUTOR,
            ServingStatus::NotServing,
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|| panic!("{} kept reporting SERVING without Redis", e.worker_id));
        println!(
            "{} NOT_SERVING {:.1}s after Redis stopped",
            e.worker_id,
            took.as_secs_f64()
        );
    }
    // A caller meanwhile gets a clear, retryable status, not a hang.
    let t0 = Instant::now();
    let during = tokio::time::timeout(
        Duration::from_secs(15),
        client.get(GetRequest {
            task_id: ids[0].clone(),
            ..Default::default()
        }),
    )
    .await
    .expect("Get answers while Redis is down");
    let code = during.map(|_| Code::Ok).unwrap_or_else(|s| s.code());
    assert_eq!(code, Code::Unavailable, "Get while Redis is down");
    println!(
        "Get without Redis: {code:?} in {:.2}s",
        t0.elapsed().as_secs_f64()
    );

    tokio::time::sleep(OUTAGE.saturating_sub(outage.elapsed())).await;
    let down_for = outage.elapsed();
    c.redis.start_again();
    println!("Redis down for {:.1}s", down_for.as_secs_f64());
    for e in &execs {
        let took = wait_health(
            e.addr,
            EXECUTOR,
            ServingStatus::Serving,
            Duration::from_secs(15),
        )
        .await
        .unwrap_or_else(|| {
            panic!(
                "{} did not report SERVING again:\n{}",
                e.worker_id,
                e.process.log_contents()
            )
        });
        println!(
            "{} SERVING {:.1}s after Redis returned",
            e.worker_id,
            took.as_secs_f64()
        );
    }

    for id in &ids {
        let r =
            chaos_support::wait_final_explained(&c, &mut client, id, Duration::from_secs(60)).await;
        let n = assert_completed_exactly_once(&c, id, &r).await;
        assert_eq!(n, ITERATIONS, "{id}: total iterations");
        let after: HashMap<(String, u32), &IterationRecord> =
            r.iterations.iter().map(|x| (key(x), x)).collect();
        for old in &before[id] {
            assert_eq!(
                after.get(&key(old)).copied(),
                Some(old),
                "{id}: iteration {} checkpointed before the outage is kept as it was",
                old.iteration
            );
        }
    }
    println!(
        "Redis outage chaos: {TASKS} tasks x {ITERATIONS} iterations, {} iterations checkpointed before the outage, {:.1}s",
        before.values().map(Vec::len).sum::<usize>(),
        started.elapsed().as_secs_f64()
    );
}
