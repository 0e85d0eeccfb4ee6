//! A small cluster of real processes for end-to-end tests: a private redis-server, the
//! router binary and any number of executor binaries, all on 127.0.0.1. The client helpers
//! (tasks, Get, waiting for a final state) are in `test_support::client`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;
use taskrouter_proto::v1::executor_client::ExecutorClient;
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
        let mut flags: Vec<String> = ["--lease-ttl", "2s", "--shutdown-grace", "3s"]
            .iter()
            .map(|f| f.to_string())
            .collect();
        flags.extend(self.extra_executor_args.iter().cloned());
        flags.extend(extra.iter().map(|f| f.to_string()));
        let process = self.spawn_executor(worker_id, addr, &flags);
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

    /// Spawns an executor process on `addr`, wired to this cluster's Redis and router, with
    /// `flags` and the cluster's environment (not waited for).
    pub fn spawn_executor(
        &self,
        worker_id: &str,
        addr: SocketAddr,
        flags: &[String],
    ) -> ServiceProcess {
        let listen = addr.to_string();
        let router = format!("http://{}", self.router_addr);
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
        ];
        args.extend(flags.iter().map(String::as_str));
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        ServiceProcess::spawn("executor-service", &args, &env)
    }

    /// A client of executor `i`.
    pub async fn client(&self, i: usize) -> ExecutorClient<Channel> {
        test_support::client::executor_client(self.executors[i].addr).await
    }
}
