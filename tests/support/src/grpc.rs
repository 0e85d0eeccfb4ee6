//! gRPC readiness through the standard health service.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// Polls `grpc.health.v1.Health/Check` for `service` ("" = whole server) until it reports
/// `SERVING`; false if `timeout` passes first.
pub async fn wait_for_grpc_serving(addr: SocketAddr, service: &str, timeout: Duration) -> bool {
    let endpoint = Endpoint::from_shared(format!("http://{addr}")).expect("valid endpoint URI");
    wait_for_grpc_serving_at(endpoint, service, timeout).await
}

/// Like [`wait_for_grpc_serving`], through a caller-built endpoint (e.g. one with TLS).
pub async fn wait_for_grpc_serving_at(
    endpoint: Endpoint,
    service: &str,
    timeout: Duration,
) -> bool {
    let deadline = Instant::now() + timeout;
    let endpoint = endpoint.connect_timeout(Duration::from_millis(500));
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let attempt = async {
            let channel = endpoint.connect().await.ok()?;
            let response = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: service.to_string(),
                })
                .await
                .ok()?;
            Some(response.into_inner().status == ServingStatus::Serving as i32)
        };
        if let Ok(Some(true)) = tokio::time::timeout(left, attempt).await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The status `grpc.health.v1.Health/Check` reports for `service` over `channel`.
pub async fn health_status(channel: Channel, service: &str) -> Result<i32, tonic::Status> {
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .map(|r| r.into_inner().status)
}
