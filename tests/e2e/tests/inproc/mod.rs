//! The local stack (a router and an executor served in-process on 127.0.0.1, the executor
//! routing through the router, over a private redis-server), shared by every test of one binary, plus
//! the request-building and status-checking helpers of the bad-input suites.
#![allow(dead_code)]

use local_stack::{LocalStack, Store};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;
use taskrouter_proto::v1::executor_client::ExecutorClient;
use taskrouter_proto::v1::router_client::RouterClient;
use taskrouter_proto::v1::{Complexity, GetRequest, SubmitRequest, Task, TaskStatus};
use test_support::RedisServer;
use tonic::transport::{Channel, Endpoint};

/// The shared servers and the runtime they run on.
pub struct Env {
    pub rt: tokio::runtime::Runtime,
    pub redis: RedisServer,
    pub router_addr: SocketAddr,
    pub exec_addr: SocketAddr,
    /// Kept so the servers run for the whole test binary.
    pub stack: LocalStack,
}

/// Starts the servers on first use.
pub fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let redis = RedisServer::start();
        let stack = rt.block_on(async {
            let store = Store::Redis(redis.url());
            let mut config = local_stack::executor_config(&store);
            config.settings.lease_ttl = Duration::from_secs(2);
            config.health_interval = Duration::from_millis(100);
            LocalStack::start(store, config, Duration::from_secs(20))
                .await
                .expect("the router and executor start in-process")
        });
        Env {
            rt,
            redis,
            router_addr: stack.router_addr,
            exec_addr: stack.executor_addr,
            stack,
        }
    })
}

/// A channel to `addr` that connects on first use.
pub fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy()
}

impl Env {
    /// A router client.
    pub fn router(&self) -> RouterClient<Channel> {
        let _runtime = self.rt.enter();
        RouterClient::new(channel(self.router_addr)).max_decoding_message_size(64 << 20)
    }

    /// An executor client.
    pub fn executor(&self) -> ExecutorClient<Channel> {
        let _runtime = self.rt.enter();
        ExecutorClient::new(channel(self.exec_addr)).max_decoding_message_size(64 << 20)
    }

    /// Runs `f` on the servers' runtime, failing the test if it takes longer than `limit`
    /// (a hang is a failure, not a slow pass).
    pub fn call<F: Future>(&self, what: &str, limit: Duration, f: F) -> F::Output {
        self.rt.block_on(async {
            tokio::time::timeout(limit, f)
                .await
                .unwrap_or_else(|_| panic!("{what} did not answer within {limit:?}"))
        })
    }

    /// Submits an ordinary task and waits for it to complete: the servers still work.
    pub fn a_valid_task_still_completes(&self, id: &str) {
        let mut client = self.executor();
        self.call("the follow-up task", Duration::from_secs(60), async {
            let r = client
                .submit(SubmitRequest {
                    task: Some(valid_task(id)),
                    ..Default::default()
                })
                .await
                .expect("a valid Submit is accepted");
            assert!(r.into_inner().created, "{id} is new");
            let state = wait_final(&mut client, id, Duration::from_secs(50)).await;
            assert_eq!(
                state.status,
                TaskStatus::Completed as i32,
                "{id}: {}",
                state.last_error
            );
        });
    }
}

/// An ordinary small task.
pub fn valid_task(id: &str) -> Task {
    Task {
        id: id.into(),
        description: "Fix typo in README".into(),
        complexity: Complexity::Low as i32,
        estimated_value_usd: 10.0,
        repositories: vec!["org/docs".into()],
        labels: HashMap::from([("sim.iterations".to_string(), "2".to_string())]),
    }
}

/// Polls Get until `id` is final.
pub async fn wait_final(
    client: &mut ExecutorClient<Channel>,
    id: &str,
    timeout: Duration,
) -> taskrouter_proto::v1::SessionState {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Ok(r) = client
            .get(GetRequest {
                task_id: id.into(),
                ..Default::default()
            })
            .await
        {
            let s = r.into_inner().state.unwrap();
            if matches!(
                TaskStatus::try_from(s.status),
                Ok(TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled)
            ) {
                return s;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} is stuck: not final within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A short, printable description of a possibly huge string.
pub fn brief(s: &str) -> String {
    if s.len() <= 60 {
        format!("{s:?}")
    } else {
        let mut end = 40;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{:?}… ({} bytes)", &s[..end], s.len())
    }
}

/// A short description of a task: proptest prints failing inputs, and some are megabytes.
pub fn brief_task(t: &Task) -> String {
    let mut labels: Vec<_> = t.labels.iter().take(3).collect();
    labels.sort();
    format!(
        "Task {{ id: {}, description: {}, complexity: {}, value: {:?}, {} repositories (first {:?}), {} labels (some {:?}) }}",
        brief(&t.id),
        brief(&t.description),
        t.complexity,
        t.estimated_value_usd,
        t.repositories.len(),
        t.repositories.first().map(|r| brief(r)),
        t.labels.len(),
        labels
            .iter()
            .map(|(k, v)| (brief(k), brief(v)))
            .collect::<Vec<_>>()
    )
}
