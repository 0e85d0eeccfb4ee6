//! The gRPC server settings both services share, and the pieces every server mounts:
//! health (optionally also on a plaintext health-only port), reflection and the serve
//! loop over an already-bound listener.

use crate::Shutdown;
use crate::auth::{AuthLayer, Credentials, ServerAuthArgs};
use crate::health_port::{HealthPort, HealthPortError};
use crate::security::SecurityError;
use crate::tls::ServerTlsArgs;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::ServerTlsConfig;
use tower_layer::{Identity, Stack};

/// The server builder [`ServerArgs::builder`] returns: tonic's, with the auth layer.
pub type SecuredServer = Server<Stack<AuthLayer, Identity>>;
/// A [`SecuredServer`] with its services added, ready for [`serve`].
pub type SecuredRouter = tonic::transport::server::Router<Stack<AuthLayer, Identity>>;

pub use tonic_health::ServingStatus;
pub use tonic_health::server::HealthReporter;

/// Transport settings common to both services (flags and env vars).
#[derive(clap::Args, Clone, Debug)]
pub struct ServerArgs {
    /// Server-side deadline for every call; 0 (the default) leaves deadlines to the
    /// client's `grpc-timeout`, since the executor's `Run` waits for its task.
    #[arg(long, env = "TASKROUTER_REQUEST_TIMEOUT", default_value = "0s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// Requests served at once per HTTP/2 connection; excess requests are shed with
    /// RESOURCE_EXHAUSTED instead of queueing without bound.
    #[arg(long, env = "TASKROUTER_CONCURRENCY_LIMIT", default_value_t = 256)]
    pub concurrency_limit_per_connection: usize,
    /// Connections are closed gracefully after this age so clients reconnect and
    /// long-lived HTTP/2 connections rebalance across pods.
    #[arg(long, env = "TASKROUTER_MAX_CONNECTION_AGE", default_value = "5m", value_parser = humantime::parse_duration)]
    pub max_connection_age: Duration,
    /// On shutdown, how long open connections may keep in-flight calls going before
    /// they are closed.
    #[arg(long, env = "TASKROUTER_DRAIN_TIMEOUT", default_value = "15s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// TLS (and mutual TLS) of the gRPC port.
    #[command(flatten)]
    pub tls: ServerTlsArgs,
    /// Bearer-token authentication of the gRPC port.
    #[command(flatten)]
    pub auth: ServerAuthArgs,
    /// Address of a second port serving only grpc.health.v1.Health, in plaintext and
    /// without a token, with the same statuses as the gRPC port: for probes that cannot
    /// speak TLS (Kubernetes' gRPC probes). Empty (the default) disables it.
    #[arg(long, env = "TASKROUTER_HEALTH_LISTEN", default_value = "")]
    pub health_listen: String,
}

/// The TLS config and token a server runs with, read from the files once.
#[derive(Clone, Debug, Default)]
pub struct ServerSecurity {
    /// TLS config; `None` serves plaintext.
    pub tls: Option<ServerTlsConfig>,
    /// Tokens (and certificate subjects) accepted on every call but health; `None`
    /// disables authentication.
    pub token: Option<Credentials>,
}

impl Default for ServerArgs {
    fn default() -> Self {
        Self {
            request_timeout: Duration::ZERO,
            concurrency_limit_per_connection: 256,
            max_connection_age: Duration::from_secs(300),
            drain_timeout: Duration::from_secs(15),
            tls: ServerTlsArgs::default(),
            auth: ServerAuthArgs::default(),
            health_listen: String::new(),
        }
    }
}

impl ServerArgs {
    /// Reads and checks the TLS files and the token; the error is one line naming the
    /// setting. Run it before binding (and for `--check-config`).
    pub fn load_security(&self) -> Result<ServerSecurity, SecurityError> {
        Ok(ServerSecurity {
            tls: self.tls.load()?,
            token: self.auth.load()?,
        })
    }

    /// The `--health-listen` address; `None` when the health-only port is off.
    pub fn health_addr(&self) -> Result<Option<SocketAddr>, HealthPortError> {
        crate::health_port::parse_addr(&self.health_listen)
    }

    /// Binds `--health-listen`, if set, and serves `health` there (plaintext, no token,
    /// nothing else; see [`crate::health_port`]). Pass the health service mounted on the
    /// main port, so both report the same statuses; stop the port after the main server.
    pub async fn start_health_port<S: tonic_health::pb::health_server::Health>(
        &self,
        health: tonic_health::pb::health_server::HealthServer<S>,
    ) -> Result<Option<HealthPort>, HealthPortError> {
        match self.health_addr()? {
            Some(addr) => HealthPort::bind(addr, health).await.map(Some),
            None => Ok(None),
        }
    }

    /// `plaintext`, `tls` or `mtls`, plus whether a token is required: for the startup log.
    pub fn security_summary(&self) -> String {
        let auth = if self.auth.is_on() { "token" } else { "none" };
        format!("transport={} auth={auth}", self.tls.mode())
    }

    /// A tonic server builder with these settings, TLS when configured, the bearer-token
    /// check in front of every service but health, HTTP/2 keepalive and one span per
    /// request named `package.Service/Method` (RPC semantic conventions), parented on
    /// the caller's W3C trace context. Request bodies are never recorded. Reads the TLS
    /// and token files.
    pub fn builder(&self) -> Result<SecuredServer, SecurityError> {
        let security = self.load_security()?;
        self.builder_with(security)
    }

    /// Like [`Self::builder`], with already-loaded security settings.
    pub fn builder_with(&self, security: ServerSecurity) -> Result<SecuredServer, SecurityError> {
        let mut b = Server::builder()
            .concurrency_limit_per_connection(self.concurrency_limit_per_connection.max(1))
            .load_shed(true)
            .max_connection_age(self.max_connection_age)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .tcp_nodelay(true)
            .trace_fn(request_span);
        if !self.request_timeout.is_zero() {
            b = b.timeout(self.request_timeout);
        }
        if let Some(tls) = security.tls {
            crate::tls::install_crypto_provider();
            b = b.tls_config(tls).map_err(|e| {
                SecurityError::Config(format!(
                    "--tls-cert / --tls-key: unusable ({})",
                    crate::tls::error_chain(&e)
                ))
            })?;
        }
        Ok(b.layer(AuthLayer::new(security.token)))
    }
}

/// The server span of one gRPC request.
pub fn request_span(req: &http::Request<()>) -> tracing::Span {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let path = req.uri().path();
    let (service, method) = split_grpc_path(path);
    let (host, port) = req
        .uri()
        .authority()
        .map(|a| (a.host().to_string(), a.port_u16().unwrap_or(0)))
        .unwrap_or_default();
    let span = tracing::info_span!(
        "grpc.server",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        rpc.grpc.status_code = tracing::field::Empty,
        server.address = %host,
        server.port = port,
        trace_id = tracing::field::Empty,
    );
    let parent = crate::trace_context::extract(req.headers());
    let remote = parent.span().span_context().clone();
    let _ = span.set_parent(parent);
    let own = span.context().span().span_context().clone();
    let trace = if own.is_valid() { own } else { remote };
    if trace.is_valid() {
        span.record("trace_id", tracing::field::display(trace.trace_id()));
    }
    span
}

/// Wraps a generated gRPC server so every call records its status code on the request
/// span and in `taskrouter_rpc_duration_seconds{service,method,code}`.
#[derive(Clone, Debug)]
pub struct Observed<S> {
    inner: S,
}

impl<S> Observed<S> {
    /// Observes `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Observed<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower_service::Service<http::Request<B>> for Observed<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + tonic::server::NamedService
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = split_grpc_path(req.uri().path()).1.to_string();
        let started = std::time::Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            // Errors are sent trailers-only, so their status is in the headers; a
            // response without one is OK (a stream's final status is not known yet).
            let code = resp
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .map(tonic::Code::from)
                .unwrap_or(tonic::Code::Ok);
            let span = tracing::Span::current();
            span.record("rpc.grpc.status_code", code as i32);
            if is_server_error(code) {
                span.record("otel.status_code", "ERROR");
            }
            // Unknown paths would make label values unbounded.
            let method = if code == tonic::Code::Unimplemented {
                "unknown".to_string()
            } else {
                method
            };
            metrics::histogram!(
                "taskrouter_rpc_duration_seconds",
                "service" => S::NAME,
                "method" => method,
                "code" => format!("{code:?}"),
            )
            .record(started.elapsed().as_secs_f64());
            Ok(resp)
        })
    }
}

/// Codes that mark a server-side failure (per the RPC semantic conventions).
fn is_server_error(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Unknown | DeadlineExceeded | Unimplemented | Internal | Unavailable | DataLoss
    )
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
/// accepting connections and lets in-flight calls finish for up to `drain_timeout`.
pub async fn serve(
    router: SecuredRouter,
    listener: TcpListener,
    shutdown: Shutdown,
    drain_timeout: Duration,
) -> Result<(), tonic::transport::Error> {
    // Tonic applies the builder's `tcp_nodelay` only to listeners it binds itself; an
    // accepted socket with Nagle on holds small responses back ~40 ms.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let waiter = shutdown.clone();
    let server = router.serve_with_incoming_shutdown(incoming, async move { waiter.wait().await });
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => return r,
        _ = shutdown.wait() => {}
    }
    // Draining: clients that keep connections open get `drain_timeout`, not forever.
    match tokio::time::timeout(drain_timeout, &mut server).await {
        Ok(r) => r,
        Err(_) => {
            tracing::warn!(
                ?drain_timeout,
                "connections still open after the drain timeout; closing them"
            );
            Ok(())
        }
    }
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
