//! One in-process local stack: the router and the executor (wired to the router, with the
//! simulated agent) served on free 127.0.0.1 ports over a chosen store, built from the
//! services' library APIs. The demo, the load generator and the test harnesses start
//! their services through it.

pub mod error;
pub mod health;
pub mod router;

pub use error::{Error, Result};
pub use health::wait_serving;
pub use router::LocalRouter;

use executor_service::config::ExecutorConfig;
use executor_service::queue::{MemoryQueue, WorkQueue};
use executor_service::session::{MemoryStore, SessionStore};
use service_kit::Shutdown;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Where the executor keeps sessions and its work queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Store {
    /// In this process; lost on exit.
    Memory,
    /// Redis at this URL (never logged: it may hold a password).
    Redis(String),
}

impl Store {
    /// "memory" or "redis", for notes.
    pub fn name(&self) -> &'static str {
        match self {
            Store::Memory => "memory",
            Store::Redis(_) => "redis",
        }
    }
}

/// Executor settings tuned for a local stack: four workers, short polls, leases and
/// health intervals, and a fresh key space per start (so a second run against the same
/// Redis starts clean). `start` fills in the router address.
pub fn executor_config(store: &Store) -> ExecutorConfig {
    let url = match store {
        Store::Memory => "",
        Store::Redis(url) => url.as_str(),
    };
    let mut config = ExecutorConfig::for_redis(url);
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    config.key_prefix = format!("local-stack-{}-{millis}", std::process::id());
    config.settings.worker_id = format!("local-stack-{}", std::process::id());
    config.settings.concurrency = 4;
    config.settings.poll_interval = Duration::from_millis(20);
    config.settings.lease_ttl = Duration::from_secs(10);
    config.settings.archive_ttl = Duration::from_secs(3600);
    config.settings.shutdown_grace = Duration::from_secs(2);
    config.health_interval = Duration::from_millis(200);
    config
}

/// A running router and executor; [`LocalStack::stop`] shuts both down.
pub struct LocalStack {
    /// Where the router listens.
    pub router_addr: SocketAddr,
    /// Where the executor listens.
    pub executor_addr: SocketAddr,
    /// The store the executor uses.
    pub store: Store,
    router: LocalRouter,
    shutdown: Shutdown,
    executor: tokio::task::JoinHandle<executor_service::Result<()>>,
}

impl LocalStack {
    /// Starts the router, then the executor over `store` with `config` (see
    /// [`executor_config`]; its router address is set here), and returns once both
    /// report SERVING. A Redis store that does not answer within `within` is one clear
    /// error rather than failed tasks later.
    pub async fn start(store: Store, config: ExecutorConfig, within: Duration) -> Result<Self> {
        Self::start_with_policy(store, config, within, None).await
    }

    /// Like [`Self::start`], with the router reading the policy file at `policy`.
    pub async fn start_with_policy(
        store: Store,
        mut config: ExecutorConfig,
        within: Duration,
        policy: Option<std::path::PathBuf>,
    ) -> Result<Self> {
        let router = LocalRouter::start_with_policy(policy).await?;
        config.router_addr = Some(format!("http://{}", router.addr));
        let shutdown = Shutdown::new();
        let engine = match &store {
            Store::Memory => {
                let sessions: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
                let queue: Arc<dyn WorkQueue> = Arc::new(MemoryQueue::new());
                executor_service::build_engine_over(&config, sessions, queue, shutdown.clone())
            }
            Store::Redis(url) => {
                config.redis_url = url.clone();
                executor_service::build_engine(&config, shutdown.clone())
            }
        };
        let engine = match engine {
            Ok(engine) => engine,
            Err(e) => {
                router.stop().await;
                return Err(Error::Config(service_kit::status_text::one_line(
                    &e.to_string(),
                )));
            }
        };
        if let Store::Redis(_) = store {
            let ping = tokio::time::timeout(within, engine.store().ping()).await;
            let failure = match ping {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(redis_cause(&e)),
                Err(_) => Some(format!(
                    "no answer within {}",
                    humantime::format_duration(within)
                )),
            };
            if let Some(cause) = failure {
                router.stop().await;
                return Err(Error::RedisUnreachable(cause));
            }
        }
        // Create the consumer group before the workers' first read.
        if let Err(e) = engine.queue().ensure_group().await {
            router.stop().await;
            return Err(Error::Runtime(format!("work queue: {e}")));
        }
        let listener = bind("executor").await?;
        let executor_addr = local_addr(&listener, "executor")?;
        let executor = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                executor_service::serve_engine(engine, &config, listener, shutdown).await
            })
        };
        let stack = LocalStack {
            router_addr: router.addr,
            executor_addr,
            store,
            router,
            shutdown,
            executor,
        };
        for (addr, service) in [
            (stack.router_addr, router_service::SERVICE_NAME),
            (stack.executor_addr, executor_service::SERVICE_NAME),
        ] {
            if let Err(e) = wait_serving(addr, service, within).await {
                stack.stop().await;
                return Err(e);
            }
        }
        Ok(stack)
    }

    /// `http://` URL of the router.
    pub fn router_url(&self) -> String {
        format!("http://{}", self.router_addr)
    }

    /// `http://` URL of the executor.
    pub fn executor_url(&self) -> String {
        format!("http://{}", self.executor_addr)
    }

    /// Stops the executor (its workers checkpoint and release their leases) and then the
    /// router, waiting at most ten seconds in all: callers' results never depend on a
    /// tidy shutdown.
    pub async fn stop(self) {
        self.shutdown.trigger();
        let wait = async {
            let _ = self.executor.await;
            self.router.stop().await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), wait).await;
    }
}

/// Binds a free 127.0.0.1 port for `what`.
pub(crate) async fn bind(what: &str) -> Result<TcpListener> {
    TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| Error::Runtime(format!("cannot bind the {what} to 127.0.0.1: {e}")))
}

pub(crate) fn local_addr(listener: &TcpListener, what: &str) -> Result<SocketAddr> {
    listener
        .local_addr()
        .map_err(|e| Error::Runtime(format!("{what} address: {e}")))
}

/// A short cause for a failed Redis ping (never the URL, which may hold a password).
fn redis_cause(e: &executor_service::Error) -> String {
    if let executor_service::Error::Redis(r) = e {
        if r.is_connection_refusal() {
            return "connection refused".into();
        }
        if r.is_timeout() {
            return "timed out".into();
        }
    }
    service_kit::status_text::io_cause(e)
        .unwrap_or_else(|| service_kit::status_text::one_line(&e.to_string()))
}
