//! A small cluster of real processes for end-to-end tests: a private redis-server, the
//! router binary and any number of executor binaries, all on 127.0.0.1.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use taskrouter_proto::v1::executor_client::ExecutorClient;
use taskrouter_proto::v1::{Complexity, GetRequest, GetResponse, SessionState, Task, TaskStatus};
use test_support::{RedisServer, ServiceProcess, free_port, wait_for_grpc_serving};
use tonic::transport::Channel;

/// One executor process.
pub struct Executor {
    pub process: ServiceProcess,
    pub addr: SocketAddr,
    pub worker_id: String,
}

/// Redis, a router and executors.
pub struct Cluster {
    pub redis: RedisServer,
    pub router: Option<ServiceProcess>,
    pub router_addr: SocketAddr,
    pub executors: Vec<Executor>,
    pub extra_executor_args: Vec<String>,
    /// Environment given to every process (e.g. `OTEL_*`).
    pub env: Vec<(String, String)>,
}

impl Cluster {
    /// Redis (with AOF) and a router; no executors yet.
    pub async fn start() -> Self {
        Self::start_with(&[], &[]).await
    }

    /// Like [`Cluster::start`], with environment for every process and extra router flags.
    pub async fn start_with(env: &[(&str, &str)], router_args: &[&str]) -> Self {
        let redis = RedisServer::start_with(test_support::RedisOptions {
            appendonly: true,
            password: None,
        });
        let router_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let listen = router_addr.to_string();
        let mut args = vec!["--listen", listen.as_str()];
        args.extend_from_slice(router_args);
        let router = ServiceProcess::spawn("router-service", &args, env);
        assert!(
            wait_for_grpc_serving(router_addr, "taskrouter.v1.Router", Duration::from_secs(20))
                .await,
            "router did not start:\n{}",
            router.log_contents()
        );
        Self {
            redis,
            router: Some(router),
            router_addr,
            executors: Vec::new(),
            extra_executor_args: Vec::new(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// Starts an executor process named `worker_id` with extra flags.
    pub async fn add_executor(&mut self, worker_id: &str, extra: &[&str]) -> usize {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let router = format!("http://{}", self.router_addr);
        let listen = addr.to_string();
        let url = self.redis.url();
        let mut args: Vec<&str> = vec![
            "--listen",
            &listen,
            "--redis-url",
            &url,
            "--router-addr",
            &router,
            "--worker-id",
            worker_id,
            "--lease-ttl",
            "2s",
            "--shutdown-grace",
            "3s",
        ];
        let extra_owned = self.extra_executor_args.clone();
        args.extend(extra_owned.iter().map(String::as_str));
        args.extend_from_slice(extra);
        let env_refs: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let process = ServiceProcess::spawn("executor-service", &args, &env_refs);
        assert!(
            wait_for_grpc_serving(addr, "taskrouter.v1.Executor", Duration::from_secs(20)).await,
            "executor {worker_id} did not start:\n{}",
            process.log_contents()
        );
        self.executors.push(Executor {
            process,
            addr,
            worker_id: worker_id.into(),
        });
        self.executors.len() - 1
    }

    /// A client of executor `i`.
    pub async fn client(&self, i: usize) -> ExecutorClient<Channel> {
        ExecutorClient::connect(format!("http://{}", self.executors[i].addr))
            .await
            .unwrap()
    }
}

/// A task; `labels` steer the simulated agent.
pub fn task(
    id: &str,
    description: &str,
    complexity: Complexity,
    value: f64,
    repos: &[&str],
    labels: &[(&str, &str)],
) -> Task {
    Task {
        id: id.into(),
        description: description.into(),
        complexity: complexity as i32,
        estimated_value_usd: value,
        repositories: repos.iter().map(|r| r.to_string()).collect(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>(),
    }
}

/// Get with the iteration log.
pub async fn get(client: &mut ExecutorClient<Channel>, id: &str) -> GetResponse {
    client
        .get(GetRequest {
            task_id: id.into(),
            include_iterations: true,
            iteration_limit: 1000,
        })
        .await
        .unwrap()
        .into_inner()
}

/// Whether a status is final.
pub fn is_final(s: &SessionState) -> bool {
    matches!(
        TaskStatus::try_from(s.status).unwrap(),
        TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled
    )
}

/// Waits until `id` is final.
pub async fn wait_final(
    client: &mut ExecutorClient<Channel>,
    id: &str,
    timeout: Duration,
) -> GetResponse {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Ok(r) = client
            .get(GetRequest {
                task_id: id.into(),
                include_iterations: true,
                iteration_limit: 1000,
            })
            .await
        {
            let r = r.into_inner();
            if r.state.as_ref().is_some_and(is_final) {
                return r;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} not final within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
