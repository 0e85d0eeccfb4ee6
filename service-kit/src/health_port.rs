//! The optional health-only port (`--health-listen`).
//!
//! Kubernetes' native gRPC probes speak neither TLS nor bearer tokens, so a service whose
//! gRPC port requires TLS would fail its own probes. This second port serves only
//! `grpc.health.v1.Health`, in plaintext and without a token, from the same health
//! reporter as the main port, so both always report the same SERVING / NOT_SERVING.
//! Every other service is UNIMPLEMENTED there. It stays up while the main server drains
//! (reporting NOT_SERVING) and stops after it.

use crate::Shutdown;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tonic_health::pb::health_server::{Health, HealthServer};

/// How the errors of this module name the setting.
const SETTING: &str = "--health-listen / TASKROUTER_HEALTH_LISTEN";

/// How long a client still holding a connection (a `Watch` stream) may keep the health
/// port open once the main server has stopped: probes are short unary calls.
const DRAIN: Duration = Duration::from_secs(1);

/// Calls served at once per connection: probes send one at a time, and the port has no
/// authentication, so a client cannot pile up more than this.
const CONCURRENCY_PER_CONNECTION: usize = 16;

/// Why the health port cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HealthPortError {
    /// The setting is not a socket address (a configuration error).
    #[error("{SETTING}: {0:?} is not a socket address (e.g. 0.0.0.0:8081)")]
    Addr(String),
    /// The address cannot be bound (the environment refuses).
    #[error("{SETTING}: cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why binding failed.
        source: std::io::Error,
    },
}

/// Parses the `--health-listen` value; `None` when it is empty (the port is off).
pub fn parse_addr(raw: &str) -> Result<Option<SocketAddr>, HealthPortError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    raw.parse()
        .map(Some)
        .map_err(|_| HealthPortError::Addr(raw.to_string()))
}

/// A running health-only server. [`HealthPort::stop`] it after the main server has
/// stopped; dropping it stops it too, without waiting.
#[derive(Debug)]
pub struct HealthPort {
    addr: SocketAddr,
    stop: Shutdown,
    task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl HealthPort {
    /// Binds `addr` and serves `health` on it (see the module docs).
    pub async fn bind<S: Health>(
        addr: SocketAddr,
        health: HealthServer<S>,
    ) -> Result<Self, HealthPortError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| HealthPortError::Bind { addr, source })?;
        Ok(Self::serve(listener, health))
    }

    /// Serves `health` on an already-bound listener (see the module docs).
    pub fn serve<S: Health>(listener: TcpListener, health: HealthServer<S>) -> Self {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let router = Server::builder()
            .concurrency_limit_per_connection(CONCURRENCY_PER_CONNECTION)
            .load_shed(true)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(health);
        let stop = Shutdown::new();
        let waiter = stop.clone();
        let server = router
            .serve_with_incoming_shutdown(crate::drain::incoming(listener), async move {
                waiter.wait().await
            });
        let until = stop.clone();
        let task = tokio::spawn(async move { crate::drain::bounded(server, &until, DRAIN).await });
        tracing::info!(%addr, "health port listening (plaintext, grpc.health.v1 only)");
        Self {
            addr,
            stop,
            task: Some(task),
        }
    }

    /// The address the port is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections and waits (briefly) for open ones to close.
    pub async fn stop(mut self) {
        self.stop.trigger();
        if let Some(task) = self.task.take() {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "health port ended with an error"),
                Err(e) => tracing::warn!(error = %e, "health port task failed"),
            }
        }
    }
}

impl Drop for HealthPort {
    fn drop(&mut self) {
        // An early return of the caller must not leave the port answering on its own.
        self.stop.trigger();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_health::ServingStatus;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    #[test]
    fn addresses_parse_or_name_the_setting() {
        assert!(matches!(parse_addr(""), Ok(None)));
        assert!(matches!(parse_addr("  "), Ok(None)));
        assert_eq!(
            parse_addr("0.0.0.0:8081").ok().flatten(),
            Some(SocketAddr::from(([0, 0, 0, 0], 8081)))
        );
        let e = parse_addr("health:8081").unwrap_err().to_string();
        assert!(
            e.starts_with("--health-listen / TASKROUTER_HEALTH_LISTEN"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn serves_the_reporters_status_and_stops() {
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("svc", ServingStatus::Serving)
            .await;
        let port = HealthPort::bind(SocketAddr::from(([127, 0, 0, 1], 0)), health)
            .await
            .unwrap();
        let url = format!("http://{}", port.local_addr());
        let channel = tonic::transport::Endpoint::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = HealthClient::new(channel);
        let check = |service: &str| HealthCheckRequest {
            service: service.into(),
        };
        let status = client
            .check(check("svc"))
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32);
        reporter
            .set_service_status("svc", ServingStatus::NotServing)
            .await;
        let status = client
            .check(check("svc"))
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::NotServing as i32);
        let unknown = client.check(check("other")).await.unwrap_err();
        assert_eq!(unknown.code(), tonic::Code::NotFound);

        drop(client);
        tokio::time::timeout(Duration::from_secs(5), port.stop())
            .await
            .unwrap();
        let endpoint = tonic::transport::Endpoint::from_shared(url).unwrap();
        assert!(
            endpoint.connect().await.is_err(),
            "still accepting after stop"
        );
    }

    #[tokio::test]
    async fn a_taken_address_is_a_bind_error_naming_the_setting() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (_, health) = tonic_health::server::health_reporter();
        let e = HealthPort::bind(taken.local_addr().unwrap(), health)
            .await
            .unwrap_err();
        assert!(matches!(e, HealthPortError::Bind { .. }), "{e:?}");
        assert!(e.to_string().starts_with("--health-listen"), "{e}");
    }
}
