//! The taskrouter router: decides, for each coding task, whether one agent or a team runs
//! it, from a hot-reloaded policy file.
//!
//! [`serve`] runs the `taskrouter.v1.Router` gRPC service (with health and reflection) on
//! an already-bound listener; `main.rs` is a thin wrapper around it, and tests and other
//! crates start it in-process on `127.0.0.1:0`.

pub mod config;
pub mod error;
pub mod policy;
pub mod reload;
pub mod rollout;
pub mod service;
pub mod shadow;

pub use config::{Args, RouterConfig};
pub use error::Error;
pub use policy::{PolicyEngine, fallback_to_single_agent};
pub use reload::{PolicySource, PolicyStore};
pub use rollout::rollout_bucket;
pub use service::RouterService;

use service_kit::Shutdown;
use service_kit::server::ServiceServer;
use std::sync::Arc;
use taskrouter_proto::v1::router_server::RouterServer;
use tokio::net::TcpListener;
use tonic::server::NamedService;

/// gRPC name of the Router service, as reported by health and reflection.
pub const SERVICE_NAME: &str = <RouterServer<RouterService> as NamedService>::NAME;

/// Largest accepted request: the description ceiling plus room for the other fields.
const MAX_DECODING_MESSAGE_BYTES: usize =
    policy::MAX_DESCRIPTION_BYTES_CEILING as usize + 1024 * 1024;

/// Serves the router on `listener` until `shutdown` fires, through the shared server
/// builder: NOT_SERVING until the policy is in force, then SERVING; on shutdown
/// NOT_SERVING, then the drain. With `--health-listen`, health is also served in
/// plaintext on that port until the main server has stopped.
///
/// Fails before serving if the policy cannot be loaded.
pub async fn serve(
    config: RouterConfig,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<(), Error> {
    // TLS files and the token are read first: a bad one must not look like a live server.
    let security = config
        .server
        .load_security()
        .map_err(|e| Error::Config(e.to_string()))?;
    let path = config.policy_path.clone();
    let store = tokio::task::spawn_blocking(move || PolicyStore::load(path.as_deref()))
        .await
        .map_err(|e| Error::Startup(format!("policy load task failed: {e}")))??;
    let store = Arc::new(store);
    let shadow = match config.shadow_policy_path.clone() {
        Some(path) => {
            let shadow = tokio::task::spawn_blocking(move || PolicyStore::load(Some(&path)))
                .await
                .map_err(|e| Error::Startup(format!("shadow policy load task failed: {e}")))??;
            Some(Arc::new(shadow))
        }
        None => None,
    };

    // The router's only dependency is its policy, in force once loaded above.
    let server = ServiceServer::new(&config.server, security)
        .descriptor_set(taskrouter_proto::FILE_DESCRIPTOR_SET)
        .service(
            RouterServer::new(RouterService::new(store.clone()).with_shadow(shadow.clone()))
                .max_decoding_message_size(MAX_DECODING_MESSAGE_BYTES),
        )
        .start()
        .await?;

    let reloader = reload::spawn_reloader(
        store.clone(),
        config.reload_poll_interval,
        config.reload_debounce,
        shutdown.clone(),
    );
    let shadow_reloader = shadow.clone().map(|shadow| {
        reload::spawn_reloader(
            shadow,
            config.reload_poll_interval,
            config.reload_debounce,
            shutdown.clone(),
        )
    });
    tracing::info!(
        policy.version = %store.current().engine.version(),
        policy.source = %store.source(),
        security = %config.server.security_summary(),
        "router ready"
    );
    let result = server.serve(listener, shutdown).await;
    reloader.abort();
    if let Some(r) = shadow_reloader {
        r.abort();
    }
    result.map_err(Error::from)
}
