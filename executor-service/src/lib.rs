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
pub mod team_lead;
pub mod telemetry;
pub mod worker;

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
use service_kit::server::{HealthReporter, ServingStatus};
use std::sync::Arc;
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
    Ok(Arc::new(AutonomousLoop::new(
        store,
        queue,
        router,
        agent,
        config.agent.retry_policy(),
        config.settings.clone(),
        shutdown,
    )))
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
    let mut builder = config
        .server
        .builder()
        .map_err(|e| Error::Config(e.to_string()))?;
    let (reporter, health) = service_kit::server::health();
    reporter
        .set_service_status(SERVICE_NAME, ServingStatus::NotServing)
        .await;
    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    let reflection = service_kit::server::reflection(&[taskrouter_proto::FILE_DESCRIPTOR_SET])
        .map_err(|e| Error::Internal(format!("reflection: {e}")))?;
    // Bound before the workers start, so a failure leaves nothing running.
    let health_port = config
        .server
        .start_health_port(health.clone())
        .await
        .map_err(|e| Error::Config(e.to_string()))?;
    let monitor = tokio::spawn(health_monitor(
        engine.clone(),
        reporter.clone(),
        config.health_interval,
        redis_hint(&config.redis_url),
        shutdown.clone(),
    ));
    let mut workers = worker::spawn_pool(&engine);
    let svc = service::ExecutorService::new(engine.clone(), config.limits, shutdown.clone());
    let router = builder
        .add_service(health)
        .add_service(reflection)
        .add_service(service_kit::server::Observed::new(
            service_kit::validation::OversizeIsResourceExhausted::new(ExecutorServer::new(svc)),
        ));
    let addr = listener.local_addr().ok();
    tracing::info!(addr = ?addr, store = engine.store().kind(), workers = engine.settings().concurrency, security = %config.server.security_summary(), "executor listening");
    let server = tokio::spawn(service_kit::server::serve(
        router,
        listener,
        shutdown.clone(),
        config.server.drain_timeout,
    ));
    shutdown.wait().await;
    reporter
        .set_service_status(SERVICE_NAME, ServingStatus::NotServing)
        .await;
    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    while workers.join_next().await.is_some() {}
    monitor.abort();
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "gRPC server ended with an error"),
        Err(e) => tracing::warn!(error = %e, "gRPC server task failed"),
    }
    // Kept up (NOT_SERVING) while the workers and the main port wound down.
    if let Some(port) = health_port {
        port.stop().await;
    }
    tracing::info!("executor stopped");
    Ok(())
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

/// Keeps health in step with the store: SERVING while it answers, NOT_SERVING while not.
async fn health_monitor(
    engine: Arc<AutonomousLoop>,
    reporter: HealthReporter,
    every: std::time::Duration,
    hint: &'static str,
    shutdown: Shutdown,
) {
    let mut group_ready = false;
    let mut last: Option<bool> = None;
    let mut rounds = 0u64;
    while !shutdown.is_triggered() {
        let mut problem = engine.store().ping().await.err();
        if problem.is_none() && !group_ready {
            match engine.queue().ensure_group().await {
                Ok(()) => group_ready = true,
                Err(e) => problem = Some(e),
            }
        }
        let ok = problem.is_none();
        // The depth gauges every tenth round: two commands per shard, and an idle
        // executor should cost Redis only a few commands per second.
        if ok
            && rounds.is_multiple_of(10)
            && let Ok(depth) = engine.queue().depth().await
        {
            telemetry::queue_depth(depth.length, depth.pending);
        }
        rounds = rounds.wrapping_add(1);
        if last != Some(ok) && !shutdown.is_triggered() {
            let status = if ok {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            reporter.set_service_status(SERVICE_NAME, status).await;
            reporter.set_service_status("", status).await;
            match &problem {
                None => tracing::info!("store reachable; serving"),
                // Redis errors do not carry the URL today; redacted in case one ever does.
                Some(e) => tracing::warn!(
                    error = %service_kit::redact::passwords_in(&e.to_string()),
                    hint,
                    "store unreachable; NOT_SERVING until it answers"
                ),
            }
            last = Some(ok);
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait() => {}
        }
    }
}
