//! Workspace overhead against real git and a private redis-server:
//!
//! - `workspace_iteration/<files>`: one iteration's commit + push (compare-and-swap over
//!   file://) + SessionState checkpoint, for a one-file change in a repository of
//!   `<files>` files (the agent's edit itself is not timed);
//! - `workspace_restore/{cold,warm,warm_pooled}_<MB>`: a worktree at a commit on a
//!   replica that has never seen the task: cold (no mirror: fetch everything, check
//!   out), warm (the mirror is there, a new worktree is checked out;
//!   `--workspace-idle-worktrees 0`) and warm_pooled (the mirror is there and an idle
//!   worktree of a finished task, which left one edited and one new file, is reset,
//!   cleaned and checked).
//!
//! Sizes come from the environment so that the smoke run (`cargo test --benches`) stays
//! small; the numbers in docs/PERFORMANCE.md are from:
//!
//! `WORKSPACE_BENCH_FILES=100,10000,100000 WORKSPACE_BENCH_RESTORE_MB=100 cargo bench -p executor-service --bench workspace`
//!
//! (`WORKSPACE_BENCH_FETCH_FILTER=none` measures full mirrors instead of the default
//! blobless partial clones.)

use criterion::{Criterion, criterion_group, criterion_main};
use executor_service::session::{Checkpoint, Lease, RedisStore, SessionStore};
use executor_service::workspace::{RepoHead, Trailers, WorkspaceConfig, Workspaces};
use std::sync::Arc;
use std::time::{Duration, Instant};
use taskrouter_proto::v1::{IterationRecord, SessionState, Task, TaskStatus};
use test_support::GitRemotes;

/// The executor's defaults, except the fetch filter when `WORKSPACE_BENCH_FETCH_FILTER`
/// sets one (`none`: full mirrors, as before partial clones).
fn config(root: &std::path::Path, remotes: &GitRemotes) -> WorkspaceConfig {
    let mut config = WorkspaceConfig::new(root, remotes.template());
    if let Ok(filter) = std::env::var("WORKSPACE_BENCH_FETCH_FILTER") {
        config.fetch_filter =
            executor_service::workspace::check_fetch_filter(&filter).expect("fetch filter");
    }
    config
}

fn sizes(var: &str, default: &str) -> Vec<usize> {
    std::env::var(var)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

fn state(id: &str, n: u32) -> SessionState {
    SessionState {
        schema_version: taskrouter_proto::SESSION_SCHEMA_VERSION,
        task_id: id.into(),
        task: Some(Task {
            id: id.into(),
            description: "x".repeat(2_000),
            complexity: 2,
            repositories: vec!["app".into()],
            ..Default::default()
        }),
        status: TaskStatus::InProgress as i32,
        iteration_count: n,
        max_iterations: 1_000_000,
        ..Default::default()
    }
}

fn iteration(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    store: &Arc<RedisStore>,
    files: usize,
) {
    let remotes = GitRemotes::new();
    remotes.create("app", files, 512);
    let root = tempfile::tempdir().expect("root");
    let ws = Workspaces::new(config(root.path(), &remotes));
    let id = format!("bench-{files}");
    let (mut head, lease, mut version): (RepoHead, Lease, u64) = rt.block_on(async {
        let head = ws
            .start(&id, &["app".to_string()], "main")
            .await
            .expect("start")
            .remove(0);
        ws.reconcile(&id, &head, 1).await.expect("reconcile");
        store
            .create(&state(&id, 0), &Default::default())
            .await
            .expect("create");
        let lease = store
            .acquire_lease(&id, "bench", Duration::from_secs(3600))
            .await
            .expect("lease")
            .expect("free");
        (head, lease, 1)
    });
    let mut n = 0u32;
    c.bench_function(&format!("workspace_iteration/{files}_files"), |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    n += 1;
                    let dir = ws.ensure(&id, "agent", &head).await.expect("ensure");
                    // The agent's one-file change (not timed).
                    std::fs::write(dir.join("dir0/file0.txt"), format!("iteration {n}\n"))
                        .expect("edit");
                    let start = Instant::now();
                    let trailers = Trailers {
                        task_id: id.clone(),
                        iteration: n,
                        role: "agent".into(),
                        fence: 1,
                    };
                    let changed = ["dir0/file0.txt".to_string()];
                    head.commit = ws
                        .commit(&id, "agent", &head, &trailers, "edit", Some(&changed), &[])
                        .await
                        .expect("commit");
                    let record = IterationRecord {
                        iteration: n,
                        role: "agent".into(),
                        output: "edit".into(),
                        ..Default::default()
                    };
                    version = store
                        .checkpoint(Checkpoint {
                            state: &state(&id, n),
                            expected_version: version,
                            lease: &lease,
                            iteration: Some(&record),
                            events: &[],
                            archive_ttl: None,
                            unreserved_spend: Default::default(),
                            index: None,
                        })
                        .await
                        .expect("checkpoint")
                        .version;
                    total += start.elapsed();
                }
                total
            })
        })
    });
}

fn restore(c: &mut Criterion, rt: &tokio::runtime::Runtime, megabytes: usize) {
    let remotes = GitRemotes::new();
    // 100 KiB files: `megabytes` MiB in 10 * megabytes files.
    remotes.create("big", megabytes * 10, 100 * 1024);
    // Packed as a server would hold it (fast-import leaves a pack without deltas).
    test_support::git(&remotes.path("big"), &["repack", "-adq"]);
    let head = {
        let root = tempfile::tempdir().expect("root");
        let ws = Workspaces::new(config(root.path(), &remotes));
        rt.block_on(ws.start("restore", &["big".to_string()], "main"))
            .expect("start")
            .remove(0)
    };
    let mut group = c.benchmark_group("workspace_restore");
    group.sample_size(10);
    group.bench_function(format!("cold_{megabytes}MB"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let root = tempfile::tempdir().expect("root");
                let ws = Workspaces::new(config(root.path(), &remotes));
                let start = Instant::now();
                rt.block_on(ws.ensure("restore", "agent", &head))
                    .expect("restore");
                total += start.elapsed();
            }
            total
        })
    });
    for (name, idle) in [("warm", 0), ("warm_pooled", 1)] {
        let root = tempfile::tempdir().expect("root");
        let mut config = config(root.path(), &remotes);
        config.idle_worktrees = idle;
        let ws = Workspaces::new(config);
        // Mirror fetched and, when pooling, one idle worktree parked.
        rt.block_on(ws.ensure("warm-up", "agent", &head))
            .expect("warm");
        rt.block_on(ws.finish("warm-up", &["big".to_string()]))
            .expect("finish");
        let mut k = 0u64;
        group.bench_function(format!("{name}_{megabytes}MB"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    k += 1;
                    let task = format!("warm-{k}");
                    let start = Instant::now();
                    let dir = rt
                        .block_on(ws.ensure(&task, "agent", &head))
                        .expect("restore");
                    total += start.elapsed();
                    // What the task leaves for the next one to undo (not timed).
                    std::fs::write(dir.join("dir0/file0.txt"), format!("task {k}\n"))
                        .expect("edit");
                    std::fs::write(dir.join("leftover.txt"), "x").expect("leftover");
                    rt.block_on(ws.finish(&task, &["big".to_string()]))
                        .expect("finish");
                }
                total
            })
        });
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let redis = test_support::RedisServer::start();
    let conn = rt.block_on(redis.connection_manager());
    let store = Arc::new(RedisStore::new(conn, "bench"));
    for files in sizes("WORKSPACE_BENCH_FILES", "100") {
        iteration(c, &rt, &store, files);
    }
    for mb in sizes("WORKSPACE_BENCH_RESTORE_MB", "1") {
        restore(c, &rt, mb);
    }
}

criterion_group! {
    name = workspace;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(5));
    targets = benches
}
criterion_main!(workspace);
