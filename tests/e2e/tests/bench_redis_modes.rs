//! Measurements for docs/PERFORMANCE.md, on standalone Redis and on a three-master Redis
//! Cluster: tasks/s through two executors, Redis commands/s of an idle executor with 8
//! workers, and the delay from a progress event's creation to its arrival at a Watch
//! client. Ignored by default (they print numbers, they do not judge them):
//!
//! `cargo nextest run -p e2e-tests --test bench_redis_modes --run-ignored only --no-capture`

mod common;

use common::{task, wait_final};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};
use taskrouter_proto::v1::executor_client::ExecutorClient;
use taskrouter_proto::v1::{Complexity, SubmitRequest, WatchRequest};
use test_support::{RedisCluster, RedisServer, ServiceProcess, free_port, wait_for_grpc_serving};
use tonic::transport::Channel;

/// Where the executors' Redis is.
enum Redis {
    Standalone(RedisServer),
    Cluster(RedisCluster),
}

impl Redis {
    fn args(&self) -> Vec<String> {
        match self {
            Redis::Standalone(r) => vec!["--redis-url".into(), r.url()],
            Redis::Cluster(c) => vec![
                "--redis-cluster".into(),
                "--redis-url".into(),
                c.seeds(),
                "--queue-shards".into(),
                "6".into(),
            ],
        }
    }

    /// Total command calls so far, over every master.
    async fn calls(&self) -> u64 {
        let sum = |m: HashMap<String, u64>| m.values().sum::<u64>();
        match self {
            Redis::Standalone(r) => sum(r.commandstats().await),
            Redis::Cluster(c) => c
                .master_ports()
                .into_iter()
                .map(|p| sum(c.commandstats(p)))
                .sum(),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Redis::Standalone(_) => "standalone",
            Redis::Cluster(_) => "cluster(3 masters)",
        }
    }
}

async fn executor(redis: &Redis, id: &str, concurrency: &str) -> (ServiceProcess, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let listen = addr.to_string();
    let mut args: Vec<String> = vec![
        "--listen".into(),
        listen,
        "--router-addr".into(),
        String::new(),
        "--worker-id".into(),
        id.into(),
        "--concurrency".into(),
        concurrency.into(),
    ];
    args.extend(redis.args());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = ServiceProcess::spawn("executor-service", &refs, &[]);
    assert!(
        wait_for_grpc_serving(addr, "taskrouter.v1.Executor", Duration::from_secs(30)).await,
        "{}",
        p.log_contents()
    );
    (p, addr)
}

async fn client(addr: SocketAddr) -> ExecutorClient<Channel> {
    ExecutorClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

fn sim(id: &str, iterations: u32, latency_ms: u32) -> taskrouter_proto::v1::Task {
    task(
        id,
        "Fix a small bug",
        Complexity::Low,
        5.0,
        &["org/app"],
        &[
            ("sim.iterations", &iterations.to_string()),
            ("sim.latency_ms", &latency_ms.to_string()),
        ],
    )
}

async fn measure(redis: Redis) {
    // Idle: one executor with 8 workers, nothing to do.
    let (idle_exec, idle_addr) = executor(&redis, "idle", "8").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = redis.calls().await;
    let window = Duration::from_secs(20);
    tokio::time::sleep(window).await;
    // Minus the one INFO call per master of the measurement itself.
    let idle = redis.calls().await.saturating_sub(before);
    println!(
        "{}: idle executor (8 workers): {:.2} Redis commands/s",
        redis.name(),
        idle as f64 / window.as_secs_f64()
    );

    // Watch latency: event creation (its `at`) to arrival at a Watch client.
    let mut c = client(idle_addr).await;
    c.submit(SubmitRequest {
        task: Some(sim("W-1", 40, 25)),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut stream = c
        .watch(WatchRequest {
            task_id: "W-1".into(),
            after_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut delays = Vec::new();
    while let Some(ev) = stream.message().await.unwrap() {
        let now = SystemTime::now();
        if let Some(at) = &ev.at {
            let at = SystemTime::UNIX_EPOCH + Duration::new(at.seconds as u64, at.nanos as u32);
            delays.push(now.duration_since(at).unwrap_or_default());
        }
    }
    delays.sort();
    let pct = |p: f64| delays[((delays.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3;
    println!(
        "{}: progress event -> Watch client: n={} p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        redis.name(),
        delays.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    drop(idle_exec);

    // Throughput: 400 tasks of 3 zero-latency iterations through two executors.
    let (_a, addr_a) = executor(&redis, "tp-a", "8").await;
    let (_b, addr_b) = executor(&redis, "tp-b", "8").await;
    let mut clients = [client(addr_a).await, client(addr_b).await];
    const N: usize = 400;
    let started = Instant::now();
    for i in 0..N {
        clients[i % 2]
            .submit(SubmitRequest {
                task: Some(sim(&format!("B-{i:04}"), 3, 0)),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    for i in (0..N).rev() {
        wait_final(
            &mut clients[0],
            &format!("B-{i:04}"),
            Duration::from_secs(300),
        )
        .await;
    }
    let took = started.elapsed();
    println!(
        "{}: {N} tasks x 3 iterations through 2 executors: {:.0} tasks/s",
        redis.name(),
        N as f64 / took.as_secs_f64()
    );
}

#[tokio::test]
#[ignore = "benchmark: prints numbers for docs/PERFORMANCE.md"]
async fn bench_standalone() {
    measure(Redis::Standalone(RedisServer::start())).await;
}

#[tokio::test]
#[ignore = "benchmark: prints numbers for docs/PERFORMANCE.md"]
async fn bench_cluster() {
    measure(Redis::Cluster(RedisCluster::start(3, 0))).await;
}
