//! The executor's link to the router service: one `Route` call per new task, with a
//! deadline; when the router cannot answer, the safe default (single path) with the
//! reason recorded.

use crate::error::{Error, Result};
use service_kit::trace_context::InjectFn;
use std::time::Duration;
use taskrouter_proto::v1::router_client::RouterClient;
use taskrouter_proto::v1::{
    ReasonCode, RouteRequest, RoutingAnalysis, RoutingDecision, RoutingReason, Task,
};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tracing::Instrument as _;

/// A lazily connected router client.
#[derive(Clone, Debug)]
pub struct RouterLink {
    client: RouterClient<InterceptedService<Channel, InjectFn>>,
    timeout: Duration,
    host: String,
    port: u16,
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
        let uri = endpoint.uri().clone();
        let inject: InjectFn = service_kit::trace_context::inject;
        Ok(Self {
            client: RouterClient::with_interceptor(endpoint.connect_lazy(), inject),
            timeout,
            host: uri.host().unwrap_or_default().to_string(),
            port: uri.port_u16().unwrap_or(80),
        })
    }

    /// Asks the router for a decision within the deadline.
    pub async fn route(&self, task: &Task) -> Result<RoutingAnalysis> {
        let span = tracing::info_span!(
            "grpc.client",
            otel.name = "taskrouter.v1.Router/Route",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = "taskrouter.v1.Router",
            rpc.method = "Route",
            rpc.grpc.status_code = tracing::field::Empty,
            server.address = %self.host,
            server.port = self.port,
            task.id = %task.id,
        );
        let result = self.route_inner(task).instrument(span.clone()).await;
        let code = match &result {
            Ok(_) => tonic::Code::Ok,
            Err(Error::Router(_)) => tonic::Code::Unavailable,
            Err(e) => e.code(),
        };
        span.record("rpc.grpc.status_code", code as i32);
        if code != tonic::Code::Ok {
            span.record("otel.status_code", "ERROR");
        }
        result
    }

    async fn route_inner(&self, task: &Task) -> Result<RoutingAnalysis> {
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
