//! The gRPC server settings both services share, and the pieces every server mounts:
//! health, reflection and the serve loop over an already-bound listener.

use crate::Shutdown;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;

pub use tonic_health::ServingStatus;
pub use tonic_health::server::HealthReporter;

/// Transport settings common to both services (flags and env vars).
#[derive(clap::Args, Clone, Debug)]
pub struct ServerArgs {
    /// Server-side deadline for unary calls (a shorter client `grpc-timeout` wins). 0 disables.
    #[arg(long, env = "TASKROUTER_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// Requests served at once per HTTP/2 connection; excess requests are shed with
    /// RESOURCE_EXHAUSTED instead of queueing without bound.
    #[arg(long, env = "TASKROUTER_CONCURRENCY_LIMIT", default_value_t = 256)]
    pub concurrency_limit_per_connection: usize,
    /// Connections are closed gracefully after this age so clients reconnect and
    /// long-lived HTTP/2 connections rebalance across pods.
    #[arg(long, env = "TASKROUTER_MAX_CONNECTION_AGE", default_value = "5m", value_parser = humantime::parse_duration)]
    pub max_connection_age: Duration,
}

impl Default for ServerArgs {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            concurrency_limit_per_connection: 256,
            max_connection_age: Duration::from_secs(300),
        }
    }
}

impl ServerArgs {
    /// A tonic server builder with these settings, HTTP/2 keepalive and a request span
    /// named after the gRPC path (never the request body).
    pub fn builder(&self) -> Server {
        let mut b = Server::builder()
            .concurrency_limit_per_connection(self.concurrency_limit_per_connection.max(1))
            .load_shed(true)
            .max_connection_age(self.max_connection_age)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .tcp_nodelay(true)
            .trace_fn(|req| {
                let path = req.uri().path();
                let (service, method) = split_grpc_path(path);
                tracing::info_span!(
                    "grpc.request",
                    otel.name = %path.trim_start_matches('/'),
                    rpc.system = "grpc",
                    rpc.service = %service,
                    rpc.method = %method,
                )
            });
        if !self.request_timeout.is_zero() {
            b = b.timeout(self.request_timeout);
        }
        b
    }
}

/// Splits `/pkg.Service/Method` into (`pkg.Service`, `Method`).
pub fn split_grpc_path(path: &str) -> (&str, &str) {
    let p = path.trim_start_matches('/');
    match p.split_once('/') {
        Some((s, m)) => (s, m),
        None => (p, ""),
    }
}

/// The standard `grpc.health.v1` service and its reporter.
pub fn health() -> (
    HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    tonic_health::server::health_reporter()
}

/// Server reflection (v1) for the given encoded descriptor sets.
pub fn reflection(
    descriptor_sets: &[&'static [u8]],
) -> Result<
    tonic_reflection::pb::v1::server_reflection_server::ServerReflectionServer<
        impl tonic_reflection::pb::v1::server_reflection_server::ServerReflection,
    >,
    tonic_reflection::server::Error,
> {
    let mut b = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
    for fds in descriptor_sets {
        b = b.register_encoded_file_descriptor_set(fds);
    }
    b.build_v1()
}

/// Serves `router` on an already-bound listener until `shutdown` fires, then stops
/// accepting connections and lets in-flight calls finish.
pub async fn serve(
    router: tonic::transport::server::Router,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<(), tonic::transport::Error> {
    let incoming = TcpListenerStream::new(listener);
    router
        .serve_with_incoming_shutdown(incoming, async move { shutdown.wait().await })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_paths_split_into_service_and_method() {
        assert_eq!(
            split_grpc_path("/taskrouter.v1.Router/Route"),
            ("taskrouter.v1.Router", "Route")
        );
        assert_eq!(split_grpc_path("/odd"), ("odd", ""));
    }
}
