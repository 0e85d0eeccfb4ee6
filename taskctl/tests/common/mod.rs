//! Shared setup for taskctl tests: the real `taskctl` binary run as a child process,
//! and real router and executor servers (over a private redis-server) on 127.0.0.1.
#![allow(dead_code)]

use local_stack::{LocalStack, Store};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;
use test_support::RedisServer;
use tokio::io::AsyncWriteExt;

/// What one `taskctl` run printed and how it exited.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// stdout parsed as one JSON document.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    /// The non-empty stderr lines.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }
}

/// Runs the `taskctl` binary with `args` (and `stdin`, if any), with no TASKCTL_* or
/// REDIS_URL from the environment leaking in.
pub async fn taskctl_with_stdin(args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_taskctl"));
    cmd.args(args)
        .env_remove("TASKCTL_ROUTER")
        .env_remove("TASKCTL_EXECUTOR")
        .env_remove("TASKCTL_TIMEOUT")
        .env_remove("REDIS_URL")
        .env_remove("RUST_LOG")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn taskctl");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(text.as_bytes()).await.unwrap();
        drop(pipe);
    }
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("taskctl finished in time")
        .expect("taskctl output");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs the `taskctl` binary with `args`.
pub async fn taskctl(args: &[&str]) -> Output {
    taskctl_with_stdin(args, None).await
}

/// A router and an executor served in this process (the local stack), the executor
/// over a real Redis. Dropped with the test's runtime.
pub struct Services {
    pub redis: RedisServer,
    pub router: SocketAddr,
    pub executor: SocketAddr,
    pub stack: LocalStack,
}

impl Services {
    /// Starts Redis, the router and the executor (simulated agent, wired to the router).
    pub async fn start() -> Self {
        let redis = RedisServer::start();
        let store = Store::Redis(redis.url().to_string());
        let mut config = local_stack::executor_config(&store);
        config.key_prefix = "taskctl-test".into();
        config.settings.concurrency = 2;
        config.settings.lease_ttl = Duration::from_secs(2);
        config.settings.shutdown_grace = Duration::from_secs(1);
        config.health_interval = Duration::from_millis(100);
        let stack = LocalStack::start(store, config, Duration::from_secs(15))
            .await
            .expect("the local stack starts");
        Self {
            redis,
            router: stack.router_addr,
            executor: stack.executor_addr,
            stack,
        }
    }

    /// `taskctl --router R --executor E <args>`.
    pub async fn taskctl(&self, args: &[&str]) -> Output {
        self.taskctl_with_stdin(args, None).await
    }

    /// Like [`Services::taskctl`], feeding `stdin`.
    pub async fn taskctl_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let router = format!("http://{}", self.router);
        let executor = format!("http://{}", self.executor);
        let mut all = vec!["--router", &router, "--executor", &executor];
        all.extend_from_slice(args);
        taskctl_with_stdin(&all, stdin).await
    }
}
