//! Test harness for taskrouter: real parts only.
//!
//! * [`RedisServer`]: a private `redis-server` child on a free 127.0.0.1 port with its own
//!   temporary data directory (never the machine's shared 6379).
//! * [`RedisCluster`]: a private Redis Cluster of such children, joined by `redis-cli`.
//! * [`free_port`], [`wait_for_tcp`], [`wait_for_grpc_serving`]: network helpers.
//! * [`binary_path`], [`ServiceProcess`]: the workspace's own service binaries as child processes.
//! * [`TestPki`]: a throwaway CA with server and client certificates, as PEM files.
//!
//! Every child is started from one dedicated, never-exiting spawner thread with
//! `PR_SET_PDEATHSIG = SIGKILL` (Linux). The kernel sends that signal when the *thread* that
//! forked the child exits, not the process; spawning from per-test threads would kill children
//! kept in statics as soon as the first test finished. With the spawner thread the signal fires
//! only when the whole test process dies (crash, abort, SIGKILL), so no `redis-server` or service
//! outlives its test binary even when `Drop` never runs.
//!
//! Failures panic with a clear message: this is a test harness.

mod grpc;
mod ports;
mod process;
mod redis_cluster;
mod redis_server;
mod spawn;
mod tls;

pub use grpc::{wait_for_grpc_serving, wait_for_grpc_serving_at};
pub use ports::{free_port, wait_for_tcp};
pub use process::{ServiceProcess, binary_path, workspace_root};
pub use redis_cluster::{ClusterNode, RedisCluster};
pub use redis_server::{RedisOptions, RedisServer};
pub use tls::TestPki;

use std::path::Path;

/// Last `lines` lines of a log file (empty if unreadable), for panic messages.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
