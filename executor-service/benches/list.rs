//! `List` latency and index memory against a private redis-server filled with N tasks.
//!
//! `cargo bench -p executor-service --bench list` runs 10,000 tasks;
//! `TASKROUTER_LIST_BENCH_TASKS=1000000 cargo bench -p executor-service --bench list`
//! the 1,000,000 case (about a minute to fill, ~1.5 GB of Redis). Under `cargo test
//! --benches` (no `--bench` argument) it is a smoke run with 1,000 tasks (or
//! `TASKROUTER_LIST_BENCH_TASKS`, to measure index memory without the timed calls' cost).
//!
//! Prints, per query shape: p50 / p99 / max over the measured calls (each the whole
//! `List` as the service answers it: index script, state reads, token signing), and the
//! Redis memory of the index keys per task (`MEMORY USAGE`, exact).

use executor_service::session::{RedisStore, SessionStore};
use futures::StreamExt;
use std::time::{Duration, Instant};
use taskrouter_proto::v1::{
    ListTasksRequest, ProgressEvent, RoutingAnalysis, RoutingReason, SessionState, Task, TaskStatus,
};

const PREFIX: &str = "bench";

fn state(i: u64, base_ms: i64) -> SessionState {
    // 10% pending, 20% in progress, 60% completed, 7% failed, 3% cancelled.
    let status = match i % 100 {
        0..10 => TaskStatus::Pending,
        10..30 => TaskStatus::InProgress,
        30..90 => TaskStatus::Completed,
        90..97 => TaskStatus::Failed,
        _ => TaskStatus::Cancelled,
    };
    let at = base_ms + i as i64;
    let ts = prost_types::Timestamp {
        seconds: at / 1000,
        nanos: ((at % 1000) * 1_000_000) as i32,
    };
    let multi = i.is_multiple_of(4);
    SessionState {
        schema_version: taskrouter_proto::SESSION_SCHEMA_VERSION,
        task_id: format!("BENCH-{i:08}"),
        task: Some(Task {
            id: format!("BENCH-{i:08}"),
            description: "a task description of typical length ".repeat(8),
            complexity: 2,
            estimated_value_usd: 50.0,
            repositories: vec!["org/app".into()],
            labels: [("tenant".to_string(), format!("tenant-{:03}", i % 100))].into(),
        }),
        status: status as i32,
        path: if multi { 2 } else { 1 },
        analysis: Some(RoutingAnalysis {
            decision: if multi { 2 } else { 1 },
            reasons: vec![RoutingReason {
                code: if multi { 1 } else { 6 },
                message: "reason".into(),
            }],
            policy_version: "policy-0001".into(),
            ..Default::default()
        }),
        iteration_count: (i % 50) as u32,
        max_iterations: 50,
        cost_usd: 0.01 * (i % 50) as f64,
        created_at: Some(ts),
        updated_at: Some(ts),
        ..Default::default()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn measure(
    store: &dyn SessionStore,
    label: &str,
    req: ListTasksRequest,
    calls: usize,
    follow_pages: bool,
) {
    let mut times = Vec::with_capacity(calls);
    let mut token = String::new();
    let mut total = 0;
    for _ in 0..calls {
        let mut r = req.clone();
        r.page_token = token.clone();
        let t0 = Instant::now();
        let resp = executor_service::task_list::list(store, &r)
            .await
            .expect("list");
        times.push(t0.elapsed());
        assert!(!resp.tasks.is_empty(), "{label}: empty page");
        total = resp.total;
        token = if follow_pages {
            resp.next_page_token
        } else {
            String::new()
        };
    }
    times.sort();
    println!(
        "{label:<52} total {total:>8}  p50 {:>8.3} ms  p99 {:>8.3} ms  max {:>8.3} ms",
        percentile(&times, 0.50).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3,
        times.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let n: u64 = std::env::var("TASKROUTER_LIST_BENCH_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if smoke { 1_000 } else { 10_000 });
    let calls = if smoke { 50 } else { 2_000 };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let redis = test_support::RedisServer::start();
        let conn = redis.connection_manager().await;
        let store = RedisStore::new(conn.clone(), PREFIX);
        let base_ms = 1_700_000_000_000;
        let t0 = Instant::now();
        futures::stream::iter(0..n)
            .map(|i| {
                let store = store.clone();
                async move {
                    let s = state(i, base_ms);
                    store
                        .create(&s, &ProgressEvent::default())
                        .await
                        .expect("create");
                }
            })
            .buffer_unordered(256)
            .collect::<Vec<()>>()
            .await;
        let fill = t0.elapsed();
        println!(
            "filled {n} tasks in {:.1} s ({:.0} creates/s, each writing state + indexes)",
            fill.as_secs_f64(),
            n as f64 / fill.as_secs_f64()
        );

        // Index memory: every key under the index prefix, exactly.
        let mut c = conn.clone();
        let mut cursor = 0u64;
        let mut index_bytes = 0u64;
        // Of which the status x tenant sets (`st:<STATUS>:tenant:<label>`).
        let mut st_tenant_bytes = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{PREFIX}:{{index}}:*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut c)
                .await
                .expect("scan");
            for k in keys.iter().filter(|k| !k.ends_with("token-key")) {
                let b: Option<u64> = redis::cmd("MEMORY")
                    .arg("USAGE")
                    .arg(k)
                    .arg("SAMPLES")
                    .arg(0)
                    .query_async(&mut c)
                    .await
                    .expect("memory usage");
                index_bytes += b.unwrap_or(0);
                if k.contains(":{index}:st:") && k.contains(":tenant:") {
                    st_tenant_bytes += b.unwrap_or(0);
                }
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut c)
            .await
            .expect("info");
        let used: u64 = info
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        println!(
            "index memory: {index_bytes} bytes = {:.0} bytes/task, of which status x tenant sets {:.0} bytes/task (Redis total {:.0} bytes/task, task keys included)",
            index_bytes as f64 / n as f64,
            st_tenant_bytes as f64 / n as f64,
            used as f64 / n as f64
        );

        let running = ListTasksRequest {
            statuses: vec![TaskStatus::InProgress as i32],
            page_size: 100,
            ..Default::default()
        };
        // Warm the script cache and the token key.
        executor_service::task_list::list(&store, &running).await.expect("warm");
        measure(&store, "status=IN_PROGRESS, page 100, first page", running.clone(), calls, false).await;
        let pages = (n / 5 / 100).clamp(1, calls as u64) as usize;
        measure(&store, "status=IN_PROGRESS, page 100, following pages", running.clone(), pages.max(2) - 1, true).await;
        measure(
            &store,
            "status=COMPLETED|FAILED, page 100",
            ListTasksRequest {
                statuses: vec![TaskStatus::Completed as i32, TaskStatus::Failed as i32],
                page_size: 100,
                ..Default::default()
            },
            calls,
            false,
        )
        .await;
        measure(
            &store,
            "no filter, page 100",
            ListTasksRequest {
                page_size: 100,
                ..Default::default()
            },
            calls,
            false,
        )
        .await;
        measure(
            &store,
            "status=IN_PROGRESS + tenant (1% of tasks), page 100",
            ListTasksRequest {
                statuses: vec![TaskStatus::InProgress as i32],
                tenant: "tenant-010".into(),
                page_size: 100,
                ..Default::default()
            },
            (calls / 10).max(5),
            false,
        )
        .await;
    });
}
