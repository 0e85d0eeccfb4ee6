//! Chaos: `kill -9` an executor at a random iteration, twenty times in a row, while two
//! executors share a stream of single-path and team tasks. Every task must complete
//! exactly once with the right total, with no checkpoint lost and none doubled.
//!
//! Randomness is seeded and the seed printed (`TASKROUTER_CHAOS_SEED` replays a run).

mod chaos_support;
mod common;

use chaos_support::{Exec, assert_completed_exactly_once, leases, seeded_rng};
use common::{Cluster, task};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use taskrouter_proto::v1::executor_client::ExecutorClient;
use taskrouter_proto::v1::{Complexity, ExecutionPath, GetRequest, SubmitRequest, Task};

const KILLS: usize = 20;
/// Unfinished tasks kept in the system while the kills go on (both executors: 8 workers).
const WORKING: u64 = 12;
/// Upper bound on the stream, whatever the timing.
const MAX_TASKS: usize = 300;
/// Short lease so a killed worker's tasks are reclaimed within about two seconds.
const FLAGS: &[&str] = &[
    "--concurrency",
    "4",
    "--lease-ttl",
    "1s",
    "--shutdown-grace",
    "1s",
    // Twenty crashes redeliver some entries many times; dead-lettering is not under test.
    "--max-deliveries",
    "1000",
];

/// What a submitted task must end with.
#[derive(Clone, Debug)]
enum Expect {
    /// Single path: exactly this many iterations.
    Single(u32),
    /// Team path: analysis + every specialist's iterations + synthesis.
    Team { specialist_iterations: u32 },
}

fn random_task(rng: &mut impl Rng, n: usize) -> (Task, Expect) {
    let id = format!("K-{n:03}");
    let latency = rng.random_range(30..=60u32).to_string();
    if rng.random_ratio(1, 5) {
        let k = rng.random_range(3..=6u32);
        let t = task(
            &id,
            "Deploy the billing service to production",
            Complexity::Medium,
            50.0,
            &["org/billing"],
            &[
                ("sim.specialist_iterations", &k.to_string()),
                ("sim.latency_ms", &latency),
            ],
        );
        (
            t,
            Expect::Team {
                specialist_iterations: k,
            },
        )
    } else {
        let iterations = rng.random_range(10..=30u32);
        let t = task(
            &id,
            "Fix a flaky test",
            Complexity::Low,
            10.0,
            &["org/app"],
            &[
                ("sim.iterations", &iterations.to_string()),
                ("sim.latency_ms", &latency),
            ],
        );
        (t, Expect::Single(iterations))
    }
}

/// Submits `t` to whichever executor answers (one may be down), retrying for a while.
async fn submit_anywhere(addrs: &[SocketAddr], t: &Task) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for addr in addrs {
            let mut client = ExecutorClient::new(chaos_support::lazy_channel(*addr));
            let call = client.submit(SubmitRequest {
                task: Some(t.clone()),
                ..Default::default()
            });
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(3), call).await {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{} could not be submitted", t.id);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `taskrouter:{ID}:lease` -> `ID`.
fn task_of_lease_key(key: &str) -> String {
    key.trim_start_matches("taskrouter:{")
        .trim_end_matches("}:lease")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_kill9s_at_random_iterations_lose_and_double_no_checkpoint() {
    let started = Instant::now();
    let (mut rng, seed) = seeded_rng("kill -9 chaos");
    let c = Cluster::start().await;
    let mut execs = [
        Exec::start(&c, "exec-a", FLAGS).await,
        Exec::start(&c, "exec-b", FLAGS).await,
    ];
    let addrs: Vec<SocketAddr> = execs.iter().map(|e| e.addr).collect();

    // The stream of tasks: topped up whenever fewer than WORKING are unfinished (queue
    // entries are deleted when their task completes), until the kills are over.
    let submitted: Arc<Mutex<Vec<(String, Expect)>>> = Arc::default();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let submitter = {
        let submitted = submitted.clone();
        let addrs = addrs.clone();
        let mut rng = StdRng::seed_from_u64(seed.wrapping_add(1));
        let redis = c.redis.client();
        tokio::spawn(async move {
            let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
            for n in 0..MAX_TASKS {
                while !*stop_rx.borrow() {
                    let unfinished: u64 = redis::cmd("XLEN")
                        .arg(
                            executor_service::queue::redis_queue::shard_keys("taskrouter", 1)[0]
                                .stream
                                .as_str(),
                        )
                        .query_async(&mut conn)
                        .await
                        .unwrap_or(0);
                    if unfinished < WORKING {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                if *stop_rx.borrow() {
                    break;
                }
                let (t, expect) = random_task(&mut rng, n);
                submit_anywhere(&addrs, &t).await;
                submitted.lock().unwrap().push((t.id.clone(), expect));
            }
        })
    };

    // Lease tokens of processes already killed: their keys linger until the TTL passes.
    let mut dead_tokens: HashSet<String> = HashSet::new();
    let mut hits = 0;
    for round in 1..=KILLS {
        // Let the cluster run (and reclaim the last victim's tasks) for a random while.
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..900))).await;
        let victim = rng.random_range(0..execs.len());
        let prefix = format!("{}:", execs[victim].worker_id);
        // Pick a task the live victim is running and let it get a random number of
        // iterations further, then kill at a random point of the iteration in flight.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut running: Vec<String> = Vec::new();
        while running.is_empty() && Instant::now() < deadline {
            running = leases(&c)
                .await
                .into_iter()
                .filter(|(_, owner)| owner.starts_with(&prefix) && !dead_tokens.contains(owner))
                .map(|(key, _)| task_of_lease_key(&key))
                .collect();
            if running.is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let mut at = String::from("idle");
        if let Some(id) = running.get(rng.random_range(0..running.len().max(1))) {
            let more = rng.random_range(1..=3u32);
            let mut observer = execs[1 - victim].client();
            let mut target = None;
            while Instant::now() < deadline {
                let Ok(r) = observer
                    .get(GetRequest {
                        task_id: id.clone(),
                        ..Default::default()
                    })
                    .await
                else {
                    break;
                };
                let Some(s) = r.into_inner().state else { break };
                let n = s.iteration_count;
                let goal = *target.get_or_insert(n + more);
                if common::is_final(&s) {
                    at = format!("{id} just finished");
                    break;
                }
                if n >= goal {
                    at = format!("{id} after iteration {n}");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..40))).await;
        }
        dead_tokens.extend(
            leases(&c)
                .await
                .into_iter()
                .filter(|(_, owner)| owner.starts_with(&prefix))
                .map(|(_, owner)| owner),
        );
        execs[victim].process.kill9();
        if !running.is_empty() {
            hits += 1;
        }
        println!(
            "kill {round:2}/{KILLS} at {:5.1}s: {} running {} task(s), at {at}",
            started.elapsed().as_secs_f64(),
            execs[victim].worker_id,
            running.len(),
        );
        execs[victim].restart(&c).await;
    }
    let _ = stop_tx.send(true);
    submitter.await.unwrap();
    assert!(
        hits >= KILLS * 3 / 4,
        "only {hits} of {KILLS} kills hit a worker with tasks in flight (seed {seed})"
    );

    let all = submitted.lock().unwrap().clone();
    assert!(all.len() >= 20, "only {} tasks were submitted", all.len());
    let mut client = execs[0].client();
    let mut total_iterations = 0;
    for (id, expect) in &all {
        let r =
            chaos_support::wait_final_explained(&c, &mut client, id, Duration::from_secs(60)).await;
        let n = assert_completed_exactly_once(&c, id, &r).await;
        let s = r.state.as_ref().unwrap();
        match expect {
            Expect::Single(want) => {
                assert_eq!(n, *want, "{id}: total iterations (seed {seed})");
            }
            Expect::Team {
                specialist_iterations,
            } => {
                assert_eq!(
                    s.path,
                    ExecutionPath::MultiAgent as i32,
                    "{id} stayed on the team path (seed {seed})"
                );
                assert!(s.fallback.is_none(), "{id}: {:?}", s.fallback);
                assert!(!s.specialists.is_empty());
                assert_eq!(
                    n,
                    2 + s.specialists.len() as u32 * specialist_iterations,
                    "{id}: analysis + specialists + synthesis (seed {seed})"
                );
            }
        }
        total_iterations += n;
    }
    // Nothing is left behind in the queue and nothing was given up on.
    let mut conn = c.redis.connection().await;
    for key in [
        executor_service::queue::redis_queue::shard_keys("taskrouter", 1)[0]
            .stream
            .as_str(),
        executor_service::queue::redis_queue::shard_keys("taskrouter", 1)[0]
            .dead_letters
            .as_str(),
    ] {
        let len: u64 = redis::cmd("XLEN")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(len, 0, "{key} is empty");
    }
    println!(
        "kill -9 chaos: {} tasks, {total_iterations} iterations, {KILLS} kills ({hits} mid-task), {} restarts, {:.1}s, seed {seed}",
        all.len(),
        execs.iter().map(|e| e.starts - 1).sum::<u32>(),
        started.elapsed().as_secs_f64()
    );
}
