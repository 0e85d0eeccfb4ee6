//! Waiting for a service's gRPC health to say SERVING.

use crate::{Error, Result};
use std::net::SocketAddr;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

/// Waits until the gRPC health of `service` at `addr` says SERVING.
pub async fn wait_serving(addr: SocketAddr, service: &str, within: Duration) -> Result<()> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| Error::Runtime(format!("{addr}: {e}")))?
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy();
    wait_serving_on(channel, service, within).await
}

/// Waits until the gRPC health of `service` on `channel` says SERVING.
pub async fn wait_serving_on(channel: Channel, service: &str, within: Duration) -> Result<()> {
    let mut client = HealthClient::new(channel);
    let deadline = tokio::time::Instant::now() + within;
    let mut last: String;
    loop {
        let req = HealthCheckRequest {
            service: service.to_string(),
        };
        match tokio::time::timeout(Duration::from_secs(2), client.check(req)).await {
            Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32 => return Ok(()),
            Ok(Ok(r)) => last = format!("health status {}", r.get_ref().status),
            Ok(Err(s)) => last = service_kit::status_text::one_line(s.message()),
            Err(_) => last = "health check timed out".into(),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Runtime(format!(
                "{service} did not report SERVING within {} ({last})",
                humantime::format_duration(within)
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
