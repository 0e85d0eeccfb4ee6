//! The executor on a real Redis Cluster (three masters, created with `redis-cli --cluster
//! create`): two executor processes complete every task exactly once, task keys and queue
//! traffic land on every master, and a master failover mid-run loses nothing.

mod common;

use common::{task, wait_final};
use std::net::SocketAddr;
use std::time::Duration;
use taskrouter_proto::v1::executor_client::ExecutorClient;
use taskrouter_proto::v1::{Complexity, SubmitRequest, TaskStatus};
use test_support::{RedisCluster, ServiceProcess, free_port, wait_for_grpc_serving};
use tonic::transport::Channel;

const SHARDS: &str = "6";

/// An executor process on the cluster (no router: every task takes the single path).
async fn executor(cluster: &RedisCluster, worker_id: &str) -> (ServiceProcess, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let listen = addr.to_string();
    let seeds = cluster.seeds();
    let process = ServiceProcess::spawn(
        "executor-service",
        &[
            "--listen",
            &listen,
            "--redis-cluster",
            "--redis-url",
            &seeds,
            "--queue-shards",
            SHARDS,
            "--router-addr",
            "",
            "--worker-id",
            worker_id,
            "--concurrency",
            "4",
            "--lease-ttl",
            "2s",
        ],
        &[],
    );
    assert!(
        wait_for_grpc_serving(addr, "taskrouter.v1.Executor", Duration::from_secs(30)).await,
        "executor {worker_id} did not become SERVING on the cluster:\n{}",
        process.log_contents()
    );
    (process, addr)
}

async fn client(addr: SocketAddr) -> ExecutorClient<Channel> {
    ExecutorClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

fn sim_task(id: &str, iterations: u32, latency_ms: u32) -> taskrouter_proto::v1::Task {
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

/// Submits `n` tasks through the two executors in turn.
async fn submit_all(
    clients: &mut [ExecutorClient<Channel>],
    n: usize,
    iterations: u32,
    latency_ms: u32,
) {
    for i in 0..n {
        let k = i % clients.len();
        let r = clients[k]
            .submit(SubmitRequest {
                task: Some(sim_task(&format!("C-{i:03}"), iterations, latency_ms)),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("submit C-{i:03}: {e}"))
            .into_inner();
        assert!(r.created, "C-{i:03}");
    }
}

/// Every task completed with iterations 1..=iterations, each recorded once.
async fn assert_all_completed_exactly(
    client: &mut ExecutorClient<Channel>,
    n: usize,
    iterations: u32,
) {
    for i in 0..n {
        let id = format!("C-{i:03}");
        let r = wait_final(client, &id, Duration::from_secs(90)).await;
        let s = r.state.unwrap();
        assert_eq!(
            TaskStatus::try_from(s.status).unwrap(),
            TaskStatus::Completed,
            "{id}: {}",
            s.last_error
        );
        let numbers: Vec<u32> = r.iterations.iter().map(|x| x.iteration).collect();
        assert_eq!(
            numbers,
            (1..=iterations).collect::<Vec<_>>(),
            "{id}: none lost, none doubled"
        );
        assert!(!s.dead_lettered, "{id}");
    }
}

#[tokio::test]
async fn two_executors_on_a_cluster_complete_every_task_exactly_with_work_on_every_master() {
    let cluster = RedisCluster::start(3, 0);
    let masters = cluster.master_ports();
    assert_eq!(masters.len(), 3);
    let (_a, addr_a) = executor(&cluster, "exec-a").await;
    let (_b, addr_b) = executor(&cluster, "exec-b").await;
    let mut clients = [client(addr_a).await, client(addr_b).await];
    const N: usize = 30;
    submit_all(&mut clients, N, 3, 5).await;
    assert_all_completed_exactly(&mut clients[1], N, 3).await;

    for port in masters {
        // Task keys ({task_id} hash tags) on every master...
        assert!(cluster.dbsize(port) > 0, "no keys on master {port}");
        // ...and queue traffic: entries acknowledged on every master's shards.
        let stats = cluster.commandstats(port);
        assert!(
            stats.get("xack").copied().unwrap_or(0) > 0,
            "no queue entry was acknowledged on master {port}: {stats:?}"
        );
    }
    // The queue is drained on every shard.
    let keys = executor_service::queue::redis_queue::shard_keys("taskrouter", 6);
    let client = redis::cluster::ClusterClient::new(
        cluster
            .seeds()
            .split(',')
            .map(str::to_string)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let mut conn = client.get_async_connection().await.unwrap();
    for k in &keys {
        let len: u64 = redis::cmd("XLEN")
            .arg(&k.stream)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(len, 0, "{} is drained", k.stream);
    }
}

#[tokio::test]
async fn a_master_failover_mid_run_loses_no_task_and_no_iteration() {
    let cluster = RedisCluster::start(3, 1);
    let (_a, addr_a) = executor(&cluster, "exec-a").await;
    let (_b, addr_b) = executor(&cluster, "exec-b").await;
    let mut clients = [client(addr_a).await, client(addr_b).await];
    const N: usize = 24;
    const ITERATIONS: u32 = 8;
    submit_all(&mut clients, N, ITERATIONS, 60).await;
    // Mid-run: some tasks have progressed, none is near done.
    loop {
        let s = common::get(&mut clients[0], "C-000").await.state.unwrap();
        if s.iteration_count >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = cluster.topology();
    let replica = before.iter().find(|n| !n.master).expect("a replica").port;
    cluster.failover(replica);
    assert!(cluster.master_ports().contains(&replica));
    assert_all_completed_exactly(&mut clients[1], N, ITERATIONS).await;
}

/// The executor's health status, `None` when it does not answer.
async fn health(addr: SocketAddr) -> Option<i32> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .connect()
        .await
        .ok()?;
    let r = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "taskrouter.v1.Executor".into(),
        })
        .await
        .ok()?;
    Some(r.into_inner().status)
}

#[tokio::test]
async fn health_follows_the_cluster_a_lost_master_turns_it_not_serving_and_back() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let mut cluster = RedisCluster::start(3, 0);
    let (_a, addr) = executor(&cluster, "exec-a").await;
    let master = cluster.master_ports()[1];
    cluster.node_mut(master).unwrap().kill();
    let wait_for = |want: ServingStatus| async move {
        for _ in 0..300 {
            if health(addr).await == Some(want as i32) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    };
    assert!(
        wait_for(ServingStatus::NotServing).await,
        "still SERVING without master {master}"
    );
    cluster.node_mut(master).unwrap().start_again();
    assert!(
        wait_for(ServingStatus::Serving).await,
        "not SERVING again after master {master} came back"
    );
}
