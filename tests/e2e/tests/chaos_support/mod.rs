//! Helpers shared by the chaos tests (`chaos_*.rs`): executors started with exactly the
//! flags a scenario needs (and restarted on the same address after a crash), seeded
//! randomness, health probes, metrics scrapes, resident memory and the checks every
//! scenario makes on a finished task's iteration log.
#![allow(dead_code)]

use crate::common::Cluster;
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use taskrouter_proto::v1::executor_client::ExecutorClient;
use taskrouter_proto::v1::{ExecutionPath, GetResponse, TaskStatus};
use test_support::{ServiceProcess, free_port, wait_for_grpc_serving};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// gRPC service name the executor reports health for.
pub const EXECUTOR: &str = "taskrouter.v1.Executor";
/// gRPC service name the router reports health for.
pub const ROUTER: &str = "taskrouter.v1.Router";

/// The seed for this run: `TASKROUTER_CHAOS_SEED` when set (to replay a failure),
/// otherwise derived from the clock. Printed either way, so a failing run can be replayed.
pub fn seeded_rng(scenario: &str) -> (StdRng, u64) {
    let seed = std::env::var("TASKROUTER_CHAOS_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(42)
        });
    println!("{scenario}: seed {seed} (replay with TASKROUTER_CHAOS_SEED={seed})");
    (StdRng::seed_from_u64(seed), seed)
}

/// One executor process this test controls: its flags are fixed, so it can be
/// killed and started again on the same address with the same worker id.
pub struct Exec {
    pub worker_id: String,
    pub addr: SocketAddr,
    pub flags: Vec<String>,
    pub process: ServiceProcess,
    /// How many times it was started.
    pub starts: u32,
}

impl Exec {
    /// Starts `executor-service` against the cluster's Redis and router with `flags`
    /// (which must include `--lease-ttl` and `--shutdown-grace`: nothing is defaulted).
    pub async fn start(c: &Cluster, worker_id: &str, flags: &[&str]) -> Exec {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let flags: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
        let process = spawn(c, worker_id, addr, &flags);
        let mut e = Exec {
            worker_id: worker_id.to_string(),
            addr,
            flags,
            process,
            starts: 1,
        };
        e.wait_serving().await;
        e
    }

    /// Starts the process again after it died, on the same address and worker id.
    pub async fn restart(&mut self, c: &Cluster) {
        assert!(
            self.process.try_exit_status().is_some(),
            "restart() of a running executor"
        );
        // The port was ours a moment ago; if something grabbed it in between, retry briefly.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.process = spawn(c, &self.worker_id, self.addr, &self.flags);
            self.starts += 1;
            if wait_for_grpc_serving(self.addr, EXECUTOR, Duration::from_secs(20)).await {
                return;
            }
            let exited = self.process.try_exit_status();
            assert!(
                exited.is_some() && Instant::now() < deadline,
                "{} did not come back on {}:\n{}",
                self.worker_id,
                self.addr,
                self.process.log_contents()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn wait_serving(&mut self) {
        assert!(
            wait_for_grpc_serving(self.addr, EXECUTOR, Duration::from_secs(20)).await,
            "{} did not start:\n{}",
            self.worker_id,
            self.process.log_contents()
        );
    }

    /// A client of this executor (connects lazily, reconnects after a restart).
    pub fn client(&self) -> ExecutorClient<Channel> {
        ExecutorClient::new(lazy_channel(self.addr))
    }
}

fn spawn(c: &Cluster, worker_id: &str, addr: SocketAddr, flags: &[String]) -> ServiceProcess {
    let listen = addr.to_string();
    let router = format!("http://{}", c.router_addr);
    let url = c.redis.url();
    let mut args: Vec<&str> = vec![
        "--listen",
        &listen,
        "--redis-url",
        &url,
        "--router-addr",
        &router,
        "--worker-id",
        worker_id,
    ];
    args.extend(flags.iter().map(String::as_str));
    let env: Vec<(&str, &str)> = c
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    ServiceProcess::spawn("executor-service", &args, &env)
}

/// A channel that connects on first use and after every failure, with short timeouts.
pub fn lazy_channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy()
}

/// The health status `addr` reports for `service`; `None` when it does not answer
/// within two seconds.
pub async fn health(addr: SocketAddr, service: &str) -> Option<ServingStatus> {
    let probe = async {
        let mut client = HealthClient::new(lazy_channel(addr));
        let r = client
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .ok()?;
        ServingStatus::try_from(r.into_inner().status).ok()
    };
    tokio::time::timeout(Duration::from_secs(2), probe)
        .await
        .ok()
        .flatten()
}

/// Polls health until it reports `want`; how long that took, or `None` on timeout.
pub async fn wait_health(
    addr: SocketAddr,
    service: &str,
    want: ServingStatus,
    timeout: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if health(addr, service).await == Some(want) {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// The Prometheus text at `http://addr/metrics`.
pub async fn scrape(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for _ in 0..50 {
        if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut body = String::new();
            s.read_to_string(&mut body).await.unwrap();
            return body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no metrics endpoint at {addr}");
}

/// The sum of the samples of `name` whose labels include all of `labels`.
pub fn metric(body: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let head = l.rsplit_once(' ').map(|(h, _)| h).unwrap_or(l);
            head == name || head.starts_with(&format!("{name}{{"))
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// Resident memory of `pid` in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// The lease keys currently held, with their owner tokens (`worker_id:uuid`).
pub async fn leases(c: &Cluster) -> Vec<(String, String)> {
    let mut conn = c.redis.connection().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("taskrouter:{*}:lease")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut out = Vec::new();
    for k in keys {
        let owner: Option<String> = redis::cmd("GET")
            .arg(&k)
            .query_async(&mut conn)
            .await
            .unwrap();
        if let Some(owner) = owner {
            out.push((k, owner));
        }
    }
    out
}

/// How many `Finished` events the task's event stream holds.
pub async fn finished_events(c: &Cluster, id: &str) -> usize {
    use prost::Message as _;
    use taskrouter_proto::v1::{ProgressEvent, progress_event};
    let mut conn = c.redis.connection().await;
    let entries: redis::Value = redis::cmd("XRANGE")
        .arg(format!("taskrouter:{{{id}}}:events"))
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let redis::Value::Array(entries) = entries else {
        return 0;
    };
    let mut n = 0;
    for entry in entries {
        let redis::Value::Array(parts) = entry else {
            continue;
        };
        let Some(redis::Value::Array(fields)) = parts.get(1) else {
            continue;
        };
        for pair in fields.chunks(2) {
            if let [redis::Value::BulkString(k), redis::Value::BulkString(v)] = pair
                && k == b"ev"
            {
                let ev = ProgressEvent::decode(v.as_slice()).expect("stored event decodes");
                if matches!(ev.kind, Some(progress_event::Kind::Finished(_))) {
                    n += 1;
                }
            }
        }
    }
    n
}

/// Asserts what a user checks on a finished task: COMPLETED, an iteration log with every
/// (role, iteration) exactly once and as many records as `iteration_count`, single-path
/// iterations numbered 1..=n, and exactly one `Finished` event. Returns `iteration_count`.
pub async fn assert_completed_exactly_once(c: &Cluster, id: &str, r: &GetResponse) -> u32 {
    let s = r.state.as_ref().expect("state");
    assert_eq!(
        TaskStatus::try_from(s.status).unwrap(),
        TaskStatus::Completed,
        "{id}: {}",
        s.last_error
    );
    assert_eq!(
        r.iterations.len() as u32,
        s.iteration_count,
        "{id}: one log record per counted iteration (none lost, none doubled)"
    );
    let mut seen = HashSet::new();
    for rec in &r.iterations {
        assert!(
            seen.insert((rec.role.clone(), rec.iteration)),
            "{id}: {} #{} is in the log twice",
            rec.role,
            rec.iteration
        );
    }
    let single: Vec<u32> = r
        .iterations
        .iter()
        .filter(|x| x.role == "agent")
        .map(|x| x.iteration)
        .collect();
    if s.path == ExecutionPath::SingleAgent as i32 {
        assert_eq!(
            single,
            (1..=single.len() as u32).collect::<Vec<_>>(),
            "{id}: single-path iterations in order"
        );
    }
    assert_eq!(
        finished_events(c, id).await,
        1,
        "{id}: finished exactly once"
    );
    s.iteration_count
}

/// Waits until `id` is final; on timeout panics with what a person would look at next:
/// the state, the lease and the task's queue entries.
pub async fn wait_final_explained(
    c: &Cluster,
    client: &mut ExecutorClient<Channel>,
    id: &str,
    timeout: Duration,
) -> GetResponse {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(r) = client
            .get(taskrouter_proto::v1::GetRequest {
                task_id: id.into(),
                include_iterations: true,
                iteration_limit: 1000,
            })
            .await
        {
            let r = r.into_inner();
            if r.state.as_ref().is_some_and(crate::common::is_final) {
                return r;
            }
        }
        if Instant::now() >= deadline {
            panic!(
                "{id} not final within {timeout:?}\n{}",
                explain(c, client, id).await
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A description of where `id` stands, for failure messages.
pub async fn explain(c: &Cluster, client: &mut ExecutorClient<Channel>, id: &str) -> String {
    let mut out = String::new();
    match client
        .get(taskrouter_proto::v1::GetRequest {
            task_id: id.into(),
            ..Default::default()
        })
        .await
    {
        Ok(r) => {
            let mut s = r.into_inner().state.unwrap_or_default();
            s.task = None;
            out.push_str(&format!("state: {s:?}\n"));
        }
        Err(e) => out.push_str(&format!("Get: {e:?}\n")),
    }
    let mut conn = c.redis.connection().await;
    let lease_key = format!("taskrouter:{{{id}}}:lease");
    let lease: Option<String> = redis::cmd("GET")
        .arg(&lease_key)
        .query_async(&mut conn)
        .await
        .unwrap_or(None);
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&lease_key)
        .query_async(&mut conn)
        .await
        .unwrap_or(-3);
    out.push_str(&format!("lease: {lease:?} (pttl {ttl} ms)\n"));
    let entries: redis::Value = redis::cmd("XRANGE")
        .arg(
            executor_service::queue::redis_queue::shard_keys("taskrouter", 1)[0]
                .stream
                .as_str(),
        )
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap_or(redis::Value::Nil);
    out.push_str(&format!("queue: {entries:?}\n"));
    let pending: redis::Value = redis::cmd("XPENDING")
        .arg(
            executor_service::queue::redis_queue::shard_keys("taskrouter", 1)[0]
                .stream
                .as_str(),
        )
        .arg("executors")
        .arg("-")
        .arg("+")
        .arg(100)
        .query_async(&mut conn)
        .await
        .unwrap_or(redis::Value::Nil);
    out.push_str(&format!("pending: {pending:?}\n"));
    let dead: redis::Value = redis::cmd("XRANGE")
        .arg(
            executor_service::queue::redis_queue::shard_keys("taskrouter", 1)[0]
                .dead_letters
                .as_str(),
        )
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap_or(redis::Value::Nil);
    out.push_str(&format!("dead letters: {dead:?}\n"));
    out
}
