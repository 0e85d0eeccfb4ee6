//! The taskrouter executor: takes tasks off a Redis work queue, routes each through the
//! router service, runs it on the single path (IterationLoop) or the team path
//! (TeamLead), and checkpoints its SessionState in Redis after every iteration.

// Layers, top down (imports only point down): `service` (gRPC handlers) and `worker`
// (queue pool) drive the engine, `autonomous_loop`; it runs the paths, `iteration_loop`
// and `team_lead`, through the `run` contract; all of them write through `session`.
pub mod agent;
pub mod approval;
pub mod autonomous_loop;
pub mod budget;
pub mod error;
pub mod iteration_loop;
pub mod queue;
pub mod redis_connection;
pub mod routing;
pub mod run;
pub mod session;
pub mod settings;
pub mod task_list;
pub mod team_lead;
pub mod telemetry;
pub mod ui;
pub mod worker;
pub mod workspace;

pub use error::{Error, Result};

pub mod config;
pub mod decision;
pub mod service;

use crate::agent::build_agent;
use crate::autonomous_loop::AutonomousLoop;
use crate::config::ExecutorConfig;
use crate::queue::{RedisQueue, WorkQueue};
use crate::routing::RouterLink;
use crate::session::{RedisStore, SessionStore};
use service_kit::Shutdown;
use service_kit::health::Readiness;
use service_kit::server::{ServeError, ServiceServer};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use taskrouter_proto::v1::executor_server::ExecutorServer;

/// gRPC service name used for the executor's health status.
pub const SERVICE_NAME: &str = "taskrouter.v1.Executor";

/// The engine over Redis built from `config`.
pub fn build_engine(config: &ExecutorConfig, shutdown: Shutdown) -> Result<Arc<AutonomousLoop>> {
    let target = config::redis_target(&config.redis_url, &config.redis_tls, config.redis_cluster)
        .map_err(Error::Config)?;
    let conn = target.shared().map_err(|e| {
        Error::Config(format!(
            "--redis-url / REDIS_URL: cannot use it ({})",
            e.category()
        ))
    })?;
    let store: Arc<dyn SessionStore> = Arc::new(
        RedisStore::new(conn.clone(), &config.key_prefix).with_blocking_reads(target.clone()),
    );
    let queue: Arc<dyn WorkQueue> = Arc::new(RedisQueue::sharded(
        conn,
        target,
        &config.key_prefix,
        config.queue_shards,
    ));
    build_engine_over(config, store, queue, shutdown)
}

/// The engine over the given store and queue (e.g. the in-memory ones of a local stack),
/// with the router link, agent and settings from `config`.
pub fn build_engine_over(
    config: &ExecutorConfig,
    store: Arc<dyn SessionStore>,
    queue: Arc<dyn WorkQueue>,
    shutdown: Shutdown,
) -> Result<Arc<AutonomousLoop>> {
    let router = match &config.router_addr {
        Some(addr) => Some(
            RouterLink::with_security(addr, config.route_timeout, &config.router_security)
                .map_err(Error::Config)?,
        ),
        None => None,
    };
    let agent = build_agent(&config.agent).map_err(Error::Config)?;
    let workspaces = config
        .workspace
        .clone()
        .map(|w| Arc::new(workspace::Workspaces::new(w)));
    Ok(Arc::new(
        AutonomousLoop::new(
            store,
            queue,
            router,
            agent,
            config.agent.retry_policy(),
            config.settings.clone(),
            shutdown,
        )
        .with_workspaces(workspaces),
    ))
}

/// Serves the executor on `listener` until `shutdown` fires: the gRPC API, health,
/// reflection and the queue workers (and, with `--health-listen`, health alone in
/// plaintext on that port). On shutdown health turns NOT_SERVING first, the
/// workers checkpoint and release their leases, then in-flight calls drain.
pub async fn serve(
    config: ExecutorConfig,
    listener: tokio::net::TcpListener,
    shutdown: Shutdown,
) -> Result<()> {
    let engine = build_engine(&config, shutdown.clone())?;
    serve_engine(engine, &config, listener, shutdown).await
}

/// Like [`serve`], over an engine the caller built (any store and queue).
pub async fn serve_engine(
    engine: Arc<AutonomousLoop>,
    config: &ExecutorConfig,
    listener: tokio::net::TcpListener,
    shutdown: Shutdown,
) -> Result<()> {
    // TLS files and the token are read before anything serves.
    let security = config
        .server
        .load_security()
        .map_err(|e| Error::Config(e.to_string()))?;
    let svc = service::ExecutorService::new(engine.clone(), config.limits, shutdown.clone());
    let readiness = Readiness::new("store", config.health_interval, store_check(engine.clone()))
        .with_hint(redis_hint(&config.redis_url));
    telemetry::register();
    // The dashboard takes the same token as the gRPC API.
    let ui_token = security.token.clone();
    // Bound (health port included) before the workers start, so a failure leaves
    // nothing running.
    let server = ServiceServer::new(&config.server, security)
        .descriptor_set(taskrouter_proto::FILE_DESCRIPTOR_SET)
        .service(ExecutorServer::new(svc))
        .ready_when(readiness)
        .start()
        .await
        .map_err(serve_error)?;
    let ui = match &config.ui {
        Some(settings) => {
            Some(ui::start(engine.clone(), ui_token, settings, shutdown.clone()).await?)
        }
        None => None,
    };
    let mut workers = worker::spawn_pool(&engine);
    let addr = listener.local_addr().ok();
    tracing::info!(addr = ?addr, store = engine.store().kind(), workers = engine.settings().concurrency, security = %config.server.security_summary(), "executor listening");
    // On shutdown the workers checkpoint and release their leases while calls drain.
    let workers_done = async move {
        telemetry::serving(false);
        while workers.join_next().await.is_some() {}
        if let Some(ui) = ui {
            ui.stopped().await;
        }
    };
    let result = server.serve_until(listener, shutdown, workers_done).await;
    tracing::info!("executor stopped");
    result.map_err(serve_error)
}

/// How the server builder's errors read as this crate's.
fn serve_error(e: ServeError) -> Error {
    if e.is_config() {
        Error::Config(e.to_string())
    } else {
        Error::Internal(e.to_string())
    }
}

/// What to check first when the store does not answer. A `rediss://` URL pointed at a
/// plaintext port makes the server wait for a command line that never comes, so the
/// error is only a timeout.
fn redis_hint(url: &str) -> &'static str {
    if url
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("rediss://")
    {
        "check that the Redis port speaks TLS (rediss://), and the CA with --redis-tls-ca"
    } else {
        "check that Redis is up at --redis-url and the password is right"
    }
}

/// The executor's readiness: the store answers and the queue's consumer group exists
/// (created once). Records the queue depth while at it.
fn store_check(
    engine: Arc<AutonomousLoop>,
) -> impl Fn() -> futures::future::BoxFuture<'static, std::result::Result<(), String>>
+ Send
+ Sync
+ 'static {
    let group_ready = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    move || {
        let (engine, group_ready) = (engine.clone(), group_ready.clone());
        let round = rounds.fetch_add(1, Ordering::Relaxed);
        Box::pin(async move {
            let checked: std::result::Result<(), String> = async {
                // Redis errors do not carry the URL today; redacted in case one ever does.
                let redacted =
                    |e: &dyn std::fmt::Display| service_kit::redact::passwords_in(&e.to_string());
                engine.store().ping().await.map_err(|e| redacted(&e))?;
                if !group_ready.load(Ordering::Relaxed) {
                    engine
                        .queue()
                        .ensure_group()
                        .await
                        .map_err(|e| redacted(&e))?;
                    group_ready.store(true, Ordering::Relaxed);
                }
                // The depth gauges every tenth round: two commands per shard, and an idle
                // executor should cost Redis only a few commands per second.
                if round.is_multiple_of(10)
                    && let Ok(depth) = engine.queue().depth().await
                {
                    telemetry::queue_depth(depth.length, depth.pending);
                }
                Ok(())
            }
            .await;
            // The gauge the NOT_SERVING alert reads follows the same check as health.
            telemetry::serving(checked.is_ok());
            checked
        })
    }
}
