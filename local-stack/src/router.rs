//! The router alone, served in this process.

use crate::{Result, bind, local_addr};
use router_service::RouterConfig;
use service_kit::Shutdown;
use std::net::SocketAddr;
use std::time::Duration;

/// A router on a free 127.0.0.1 port with the built-in policy (or a policy file).
pub struct LocalRouter {
    /// Where it listens.
    pub addr: SocketAddr,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<std::result::Result<(), router_service::Error>>,
}

impl LocalRouter {
    /// Starts it; it serves once its policy is loaded (see [`crate::wait_serving`]).
    pub async fn start() -> Result<Self> {
        Self::start_with_policy(None).await
    }

    /// Like [`Self::start`], with the policy file at `policy` (`None`: built-in).
    pub async fn start_with_policy(policy: Option<std::path::PathBuf>) -> Result<Self> {
        let listener = bind("router").await?;
        let addr = local_addr(&listener, "router")?;
        let shutdown = Shutdown::new();
        let mut config = RouterConfig::with_defaults();
        config.policy_path = policy;
        let task = tokio::spawn(router_service::serve(config, listener, shutdown.clone()));
        Ok(LocalRouter {
            addr,
            shutdown,
            task,
        })
    }

    /// Stops it, waiting at most two seconds for open calls.
    pub async fn stop(self) {
        self.shutdown.trigger();
        let abort = self.task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), self.task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
}
