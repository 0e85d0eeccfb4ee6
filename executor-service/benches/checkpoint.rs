//! Checkpoint cost against a private redis-server: one checkpoint at iteration 1 and
//! at iteration 1,000 (must be flat: the log is appended, the state does not grow), and
//! end-to-end single-path iterations per second with a zero-latency simulated agent.
//!
//! `cargo bench -p executor-service --bench checkpoint`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use executor_service::agent::{AgentArgs, RetryPolicy, build_agent};
use executor_service::autonomous_loop::AutonomousLoop;
use executor_service::queue::{RedisQueue, WorkQueue};
use executor_service::run::RunOptions;
use executor_service::session::Lease;
use executor_service::session::{Checkpoint, IndexChange, IndexEntry, RedisStore, SessionStore};
use executor_service::settings::Settings;
use service_kit::Shutdown;
use std::sync::Arc;
use std::time::{Duration, Instant};
use taskrouter_proto::v1::{IterationRecord, SessionState, Task, TaskStatus};

fn state(id: &str, iterations: u32) -> SessionState {
    SessionState {
        schema_version: taskrouter_proto::SESSION_SCHEMA_VERSION,
        task_id: id.into(),
        task: Some(Task {
            id: id.into(),
            description: "x".repeat(2_000),
            complexity: 2,
            estimated_value_usd: 50.0,
            repositories: vec!["org/app".into()],
            ..Default::default()
        }),
        status: TaskStatus::InProgress as i32,
        iteration_count: iterations,
        max_iterations: 100_000,
        ..Default::default()
    }
}

/// The index entry a running task's checkpoint names as its new one (as `ActiveSession`
/// does: the tenant carried over from the entry it replaces).
fn entry_after(s: &SessionState, version: u64, before: &IndexEntry) -> IndexEntry {
    IndexEntry {
        v: version + 1,
        t: before.t.clone(),
        ..IndexEntry::of(s)
    }
}

fn record(n: u32) -> IterationRecord {
    IterationRecord {
        iteration: n,
        role: "agent".into(),
        output: format!("iteration {n}: edited 3 files, tests pass"),
        cost_usd: 0.002,
        tokens_in: 700,
        tokens_out: 150,
        ..Default::default()
    }
}

/// Brings a task to `at` iterations, then times single checkpoints from there.
fn checkpoint_at(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    store: &Arc<RedisStore>,
    at: u32,
) {
    let id = format!("bench-{at}");
    let (lease, mut version, mut indexed) = rt.block_on(async {
        let s = state(&id, 0);
        let mut indexed = IndexEntry {
            v: 1,
            ..IndexEntry::of(&s)
        };
        store.create(&s, &Default::default()).await.expect("create");
        let lease: Lease = store
            .acquire_lease(&id, "bench", Duration::from_secs(3600))
            .await
            .expect("lease")
            .expect("free");
        let mut v = 1;
        for n in 1..=at {
            let s = state(&id, n);
            let after = entry_after(&s, v, &indexed);
            v = store
                .checkpoint(Checkpoint {
                    state: &s,
                    expected_version: v,
                    lease: &lease,
                    iteration: Some(&record(n)),
                    events: &[],
                    archive_ttl: None,
                    unreserved_spend: Default::default(),
                    index: Some(IndexChange {
                        before: &indexed,
                        after: &after,
                    }),
                })
                .await
                .expect("checkpoint")
                .version;
            indexed = after;
        }
        (lease, v, indexed)
    });
    let mut n = at;
    c.bench_function(&format!("checkpoint/at_iteration_{at}"), |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    n += 1;
                    let s = state(&id, n);
                    let after = entry_after(&s, version, &indexed);
                    version = store
                        .checkpoint(Checkpoint {
                            state: &s,
                            expected_version: version,
                            lease: &lease,
                            iteration: Some(&record(n)),
                            events: &[],
                            archive_ttl: None,
                            unreserved_spend: Default::default(),
                            index: Some(IndexChange {
                                before: &indexed,
                                after: &after,
                            }),
                        })
                        .await
                        .expect("checkpoint")
                        .version;
                    indexed = after;
                }
                start.elapsed()
            })
        })
    });
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let redis = test_support::RedisServer::start();
    let conn = rt.block_on(redis.connection_manager());
    let store = Arc::new(RedisStore::new(conn.clone(), "bench"));
    checkpoint_at(c, &rt, &store, 1);
    checkpoint_at(c, &rt, &store, 1_000);

    const ITERATIONS: u32 = 200;
    let queue: Arc<dyn WorkQueue> = Arc::new(RedisQueue::new(conn, "bench"));
    let agent = build_agent(&AgentArgs::simulator()).expect("simulator");
    let engine = AutonomousLoop::new(
        store.clone(),
        queue,
        None,
        agent,
        RetryPolicy::no_retries(),
        Settings::default(),
        Shutdown::new(),
    );
    let mut group = c.benchmark_group("single_path");
    group.throughput(Throughput::Elements(ITERATIONS as u64));
    let mut task_no = 0u64;
    group.bench_function(format!("run_{ITERATIONS}_iterations"), |b| {
        b.iter(|| {
            task_no += 1;
            let mut task = state(&format!("run-{task_no}"), 0).task.expect("task");
            task.labels
                .insert("sim.iterations".into(), ITERATIONS.to_string());
            let r = rt
                .block_on(engine.run(
                    task,
                    RunOptions {
                        max_iterations: ITERATIONS,
                        use_multi_agent: Some(false),
                        ..Default::default()
                    },
                ))
                .expect("run");
            assert_eq!(r.total_iterations, ITERATIONS);
        })
    });
    group.finish();
}

criterion_group! {
    name = checkpoint;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(5));
    targets = benches
}
criterion_main!(checkpoint);
