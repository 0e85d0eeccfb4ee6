//! Shared setup for executor tests: a private redis-server, an executor served
//! in-process on 127.0.0.1:0 (with the test configs these suites need), and a gRPC client
//! to it. The client helpers are in `test_support::client`.
#![allow(dead_code)]

use executor_service::config::ExecutorConfig;
use service_kit::Shutdown;
use std::net::SocketAddr;
use std::time::Duration;
use taskrouter_proto::v1::executor_client::ExecutorClient;
use test_support::RedisServer;
use tonic::transport::Channel;

/// A running executor and everything it needs.
pub struct Harness {
    pub redis: RedisServer,
    pub addr: SocketAddr,
    pub client: ExecutorClient<Channel>,
    pub shutdown: Shutdown,
    pub config: ExecutorConfig,
    pub server: Option<tokio::task::JoinHandle<executor_service::Result<()>>>,
}

/// Config for tests: short lease, fast health, simulator agent, no router.
pub fn test_config(redis: &RedisServer) -> ExecutorConfig {
    let mut c = ExecutorConfig::for_redis(redis.url());
    c.key_prefix = "trtest".into();
    c.settings.lease_ttl = Duration::from_secs(2);
    c.settings.concurrency = 2;
    c.settings.poll_interval = Duration::from_millis(20);
    c.settings.shutdown_grace = Duration::from_secs(2);
    c.health_interval = Duration::from_millis(100);
    c
}

impl Harness {
    /// Starts Redis and an executor with `tweak` applied to the test config.
    pub async fn start(tweak: impl FnOnce(&mut ExecutorConfig)) -> Self {
        Self::start_with_redis(RedisServer::start(), tweak).await
    }

    /// Starts an executor against an already running Redis.
    pub async fn start_with_redis(
        redis: RedisServer,
        tweak: impl FnOnce(&mut ExecutorConfig),
    ) -> Self {
        let mut config = test_config(&redis);
        tweak(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = Shutdown::new();
        let server = tokio::spawn(executor_service::serve(
            config.clone(),
            listener,
            shutdown.clone(),
        ));
        assert!(
            test_support::wait_for_grpc_serving(
                addr,
                "taskrouter.v1.Executor",
                Duration::from_secs(10)
            )
            .await,
            "executor never became SERVING"
        );
        let client = test_support::client::executor_client(addr).await;
        Self {
            redis,
            addr,
            client,
            shutdown,
            config,
            server: Some(server),
        }
    }

    /// Stops the executor and waits for it.
    pub async fn stop(&mut self) {
        self.shutdown.trigger();
        if let Some(s) = self.server.take() {
            tokio::time::timeout(Duration::from_secs(15), s)
                .await
                .expect("executor stopped in time")
                .expect("executor task")
                .expect("executor returned Ok");
        }
    }

    /// The Redis key of a task's state hash.
    pub fn state_key(&self, id: &str) -> String {
        format!("{}:{{{id}}}:state", self.config.key_prefix)
    }
}
