//! The executor's link to the router service: one `Route` call per new task, with a
//! deadline; when the router cannot answer, the safe default (single path) with the
//! reason recorded.

use crate::error::{Error, Result};
use service_kit::auth::{BearerToken, ClientInterceptor};
use service_kit::security::{ClientSecurity, Secret, SecurityError};
use service_kit::tls::ClientTlsFiles;
use std::path::PathBuf;
use std::time::Duration;
use taskrouter_proto::v1::router_client::RouterClient;
use taskrouter_proto::v1::{
    ReasonCode, RouteRequest, RoutingAnalysis, RoutingDecision, RoutingReason, Task,
};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tracing::Instrument as _;

/// Environment variable holding the token sent to the router (the file flag is preferred).
pub const ROUTER_AUTH_TOKEN_ENV: &str = "EXECUTOR_ROUTER_AUTH_TOKEN";

/// TLS and token flags of the executor's calls to the router.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct RouterClientArgs {
    /// CA certificates (PEM file) the router's certificate must chain to, for an https://
    /// --router-addr (default: the system roots).
    #[arg(long, env = "EXECUTOR_ROUTER_TLS_CA", value_name = "PEM")]
    pub router_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM file) presented to the router (mutual TLS); needs
    /// --router-tls-key.
    #[arg(long, env = "EXECUTOR_ROUTER_TLS_CERT", value_name = "PEM")]
    pub router_tls_cert: Option<PathBuf>,
    /// Private key of --router-tls-cert (PEM file).
    #[arg(long, env = "EXECUTOR_ROUTER_TLS_KEY", value_name = "PEM")]
    pub router_tls_key: Option<PathBuf>,
    /// Name the router's certificate must carry (default: the host of --router-addr).
    #[arg(long, env = "EXECUTOR_ROUTER_TLS_DOMAIN", value_name = "NAME")]
    pub router_tls_domain: Option<String>,
    /// File holding the bearer token sent to the router; the token may instead be set in
    /// EXECUTOR_ROUTER_AUTH_TOKEN.
    #[arg(long, env = "EXECUTOR_ROUTER_AUTH_TOKEN_FILE", value_name = "FILE")]
    pub router_auth_token_file: Option<PathBuf>,
    /// The token itself, from EXECUTOR_ROUTER_AUTH_TOKEN (environment only).
    #[arg(skip = Secret::from_env(ROUTER_AUTH_TOKEN_ENV))]
    pub router_auth_token: Option<Secret>,
}

impl RouterClientArgs {
    /// Reads and checks the files; the error is one line naming the setting.
    pub fn load(&self) -> std::result::Result<ClientSecurity, SecurityError> {
        let tls = ClientTlsFiles {
            ca: self.router_tls_ca.clone(),
            cert: self.router_tls_cert.clone(),
            key: self.router_tls_key.clone(),
            domain: self.router_tls_domain.clone(),
        }
        .load("--router-", "EXECUTOR_ROUTER_")?;
        let token = BearerToken::resolve(
            self.router_auth_token_file.as_deref(),
            "--router-auth-token-file / EXECUTOR_ROUTER_AUTH_TOKEN_FILE",
            self.router_auth_token.as_ref(),
            ROUTER_AUTH_TOKEN_ENV,
        )?;
        Ok(ClientSecurity { tls, token })
    }
}

/// A lazily connected router client.
#[derive(Clone, Debug)]
pub struct RouterLink {
    client: RouterClient<InterceptedService<Channel, ClientInterceptor>>,
    timeout: Duration,
    host: String,
    port: u16,
}

impl RouterLink {
    /// A plaintext client (or system-root TLS for `https://`) for `addr`, e.g.
    /// `http://router:50051`, without a token; connects on first use.
    pub fn new(addr: &str, timeout: Duration) -> std::result::Result<Self, String> {
        Self::with_security(addr, timeout, &ClientSecurity::default())
    }

    /// A client for `addr` with `security`'s TLS settings and token; connects on first
    /// use. The error is one line naming `--router-addr`.
    pub fn with_security(
        addr: &str,
        timeout: Duration,
        security: &ClientSecurity,
    ) -> std::result::Result<Self, String> {
        let endpoint = security
            .endpoint(addr)
            .map_err(|e| format!("--router-addr / ROUTER_ADDR {e}"))?
            .connect_timeout(timeout.max(Duration::from_millis(100)))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        let uri = endpoint.uri().clone();
        let default_port = if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        };
        Ok(Self {
            client: RouterClient::with_interceptor(endpoint.connect_lazy(), security.interceptor()),
            timeout,
            host: uri.host().unwrap_or_default().to_string(),
            port: uri.port_u16().unwrap_or(default_port),
        })
    }

    /// Asks the router for a decision within the deadline.
    pub async fn route(&self, task: &Task) -> Result<RoutingAnalysis> {
        self.route_with_shadow(task).await.map(|r| r.analysis)
    }

    /// Asks the router for a decision and, when it runs a shadow policy, for what that
    /// policy would have decided.
    pub async fn route_with_shadow(&self, task: &Task) -> Result<RouteAnswer> {
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

    async fn route_inner(&self, task: &Task) -> Result<RouteAnswer> {
        let mut req = tonic::Request::new(RouteRequest {
            task: Some(task.clone()),
            include_shadow: true,
        });
        req.set_timeout(self.timeout);
        let mut client = self.client.clone();
        let fut = client.route(req);
        let resp = tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| Error::Router(format!("no answer within {:?}", self.timeout)))?
            .map_err(|s| Error::Router(format!("{:?}: {}", s.code(), s.message())))?;
        let resp = resp.into_inner();
        let analysis = resp
            .analysis
            .ok_or_else(|| Error::Router("response without an analysis".into()))?;
        Ok(RouteAnswer {
            analysis,
            shadow: resp.shadow,
        })
    }
}

/// The router's answer: its decision, and the shadow policy's when it runs one.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteAnswer {
    /// The live decision.
    pub analysis: RoutingAnalysis,
    /// What the shadow policy would have decided (never acted upon).
    pub shadow: Option<RoutingAnalysis>,
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
        // No policy decided: no default budget, no gates, tenant limit unknown.
        ..Default::default()
    }
}
