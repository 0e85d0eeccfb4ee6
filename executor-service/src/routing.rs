//! The executor's link to the router service: one `Route` call per new task, with a
//! deadline; when the router cannot answer, the safe default (single path) with the
//! reason recorded.

use crate::error::{Error, Result};
use std::time::Duration;
use taskrouter_proto::v1::router_client::RouterClient;
use taskrouter_proto::v1::{
    ReasonCode, RouteRequest, RoutingAnalysis, RoutingDecision, RoutingReason, Task,
};
use tonic::transport::{Channel, Endpoint};

/// A lazily connected router client.
#[derive(Clone, Debug)]
pub struct RouterLink {
    client: RouterClient<Channel>,
    timeout: Duration,
}

impl RouterLink {
    /// A client for `addr` (e.g. `http://router:50051`); connects on first use.
    pub fn new(addr: &str, timeout: Duration) -> std::result::Result<Self, String> {
        let endpoint = Endpoint::from_shared(addr.to_string())
            .map_err(|e| format!("--router-addr {addr:?}: not a valid URI: {e}"))?
            .connect_timeout(timeout.max(Duration::from_millis(100)))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        Ok(Self {
            client: RouterClient::new(endpoint.connect_lazy()),
            timeout,
        })
    }

    /// Asks the router for a decision within the deadline.
    pub async fn route(&self, task: &Task) -> Result<RoutingAnalysis> {
        let mut req = tonic::Request::new(RouteRequest {
            task: Some(task.clone()),
        });
        req.set_timeout(self.timeout);
        let mut client = self.client.clone();
        let fut = client.route(req);
        let resp = tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| Error::Router(format!("no answer within {:?}", self.timeout)))?
            .map_err(|s| Error::Router(format!("{:?}: {}", s.code(), s.message())))?;
        resp.into_inner()
            .analysis
            .ok_or_else(|| Error::Router("response without an analysis".into()))
    }
}

/// A single-agent analysis with one reason: the seed's `fallback_to_single_agent`, used
/// when the caller forces the single path or the router is unreachable.
pub fn single_agent_analysis(code: ReasonCode, message: impl Into<String>) -> RoutingAnalysis {
    RoutingAnalysis {
        decision: RoutingDecision::UseSingleAgent as i32,
        reasons: vec![RoutingReason {
            code: code as i32,
            message: message.into(),
        }],
        score: 0.0,
        confidence: 1.0,
        rollout_bucket: 0,
        suggested_roles: Vec::new(),
        policy_version: String::new(),
        multi_agent_recommended: false,
    }
}
