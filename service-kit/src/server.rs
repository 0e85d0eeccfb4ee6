//! The one server builder both services (and any gRPC server of the project) use:
//! [`ServiceServer`] registers generated services (each with its health name), serves
//! health and reflection (`grpc.reflection.v1` and `v1alpha`) for the descriptor sets
//! given, applies observation, the size-limit status and bearer-token auth as tower
//! layers around every route, optionally mirrors health on the plaintext health-only
//! port, and runs the health lifecycle of [`crate::health`]: NOT_SERVING at start,
//! SERVING when the dependency check answers, NOT_SERVING on shutdown, then the drain.

use crate::Shutdown;
use crate::auth::{AuthLayer, Credentials, ServerAuthArgs};
use crate::health::{HealthReporter, Lifecycle, Readiness};
use crate::health_port::{HealthPort, HealthPortError};
use crate::observe::ObserveLayer;
use crate::security::SecurityError;
use crate::size_limit::OversizeLayer;
use crate::tls::ServerTlsArgs;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::ServerTlsConfig;
use tonic_health::server::HealthService;

pub use crate::health::ServingStatus;

/// Transport settings common to both services (flags and env vars).
#[derive(clap::Args, Clone, Debug)]
pub struct ServerArgs {
    /// Server-side deadline for every call; 0 (the default) leaves deadlines to the
    /// client's `grpc-timeout`, since the executor's `Run` waits for its task.
    #[arg(long, env = "TASKROUTER_REQUEST_TIMEOUT", default_value = defaults::REQUEST_TIMEOUT, value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// Requests served at once per HTTP/2 connection; excess requests are shed with
    /// RESOURCE_EXHAUSTED instead of queueing without bound.
    #[arg(long, env = "TASKROUTER_CONCURRENCY_LIMIT", default_value_t = defaults::CONCURRENCY_LIMIT)]
    pub concurrency_limit_per_connection: usize,
    /// Connections are closed gracefully after this age so clients reconnect and
    /// long-lived HTTP/2 connections rebalance across pods.
    #[arg(long, env = "TASKROUTER_MAX_CONNECTION_AGE", default_value = defaults::MAX_CONNECTION_AGE, value_parser = humantime::parse_duration)]
    pub max_connection_age: Duration,
    /// On shutdown, how long open connections may keep in-flight calls going before
    /// they are closed.
    #[arg(long, env = "TASKROUTER_DRAIN_TIMEOUT", default_value = defaults::DRAIN_TIMEOUT, value_parser = humantime::parse_duration)]
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

/// The defaults of [`ServerArgs`], written once: clap shows and parses these texts, and
/// `Default` parses the same ones.
pub mod defaults {
    use std::time::Duration;

    /// `--request-timeout`: none; deadlines are the client's.
    pub const REQUEST_TIMEOUT: &str = "0s";
    /// `--concurrency-limit-per-connection`.
    pub const CONCURRENCY_LIMIT: usize = 256;
    /// `--max-connection-age`.
    pub const MAX_CONNECTION_AGE: &str = "5m";
    /// `--drain-timeout`.
    pub const DRAIN_TIMEOUT: &str = "15s";

    /// One of the duration texts above as a `Duration` (a test checks they all parse).
    pub fn duration(text: &str) -> Duration {
        humantime::parse_duration(text).unwrap_or_default()
    }
}

impl Default for ServerArgs {
    fn default() -> Self {
        Self {
            request_timeout: defaults::duration(defaults::REQUEST_TIMEOUT),
            concurrency_limit_per_connection: defaults::CONCURRENCY_LIMIT,
            max_connection_age: defaults::duration(defaults::MAX_CONNECTION_AGE),
            drain_timeout: defaults::duration(defaults::DRAIN_TIMEOUT),
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

    /// `plaintext`, `tls` or `mtls`, plus whether a token is required: for the startup log.
    pub fn security_summary(&self) -> String {
        let auth = if self.auth.is_on() { "token" } else { "none" };
        format!("transport={} auth={auth}", self.tls.mode())
    }
}

/// Why a server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A TLS or token setting is unusable (a configuration error).
    #[error(transparent)]
    Security(#[from] SecurityError),
    /// The health-only port is misconfigured or cannot be bound.
    #[error(transparent)]
    HealthPort(#[from] HealthPortError),
    /// The reflection service cannot be built from the descriptor sets (a build defect).
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The gRPC server failed while serving.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl ServeError {
    /// Whether the error is a configuration error (exit code 2) rather than the
    /// environment refusing.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            Self::Security(_) | Self::HealthPort(HealthPortError::Addr(_))
        )
    }
}

/// The layers around every route, outermost first: observation (so it sees every
/// status, rejections included), the size-limit status, then authentication.
type Layers = tower_layer::Stack<
    AuthLayer,
    tower_layer::Stack<OversizeLayer, tower_layer::Stack<ObserveLayer, tower_layer::Identity>>,
>;

/// The server builder (see the module docs). Add services with [`ServiceServer::service`],
/// then [`ServiceServer::start`] it and [`StartedServer::serve`] a listener.
#[derive(Debug)]
pub struct ServiceServer {
    args: ServerArgs,
    security: ServerSecurity,
    routes: Routes,
    names: Vec<&'static str>,
    descriptor_sets: Vec<&'static [u8]>,
    readiness: Option<Readiness>,
}

impl ServiceServer {
    /// A server with `args`' transport settings and the already-loaded `security`.
    pub fn new(args: &ServerArgs, security: ServerSecurity) -> Self {
        Self {
            args: args.clone(),
            security,
            routes: Routes::default(),
            names: Vec::new(),
            descriptor_sets: Vec::new(),
            readiness: None,
        }
    }

    /// Registers a generated gRPC service; its name is reported by health.
    pub fn service<S>(mut self, svc: S) -> Self
    where
        S: tower_service::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = Infallible,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.names.push(S::NAME);
        self.routes = self.routes.add_service(svc);
        self
    }

    /// Registers an encoded `FileDescriptorSet` with reflection.
    pub fn descriptor_set(mut self, encoded: &'static [u8]) -> Self {
        self.descriptor_sets.push(encoded);
        self
    }

    /// Reports SERVING only while `readiness` answers; without it the server is SERVING
    /// as soon as it serves.
    pub fn ready_when(mut self, readiness: Readiness) -> Self {
        self.readiness = Some(readiness);
        self
    }

    /// Builds health and reflection, applies the TLS config and binds the health-only
    /// port (if configured); every status is NOT_SERVING until [`StartedServer::serve`].
    /// Nothing is left running on an error.
    pub async fn start(self) -> Result<StartedServer, ServeError> {
        let reporter = HealthReporter::new();
        let health = tonic_health::pb::health_server::HealthServer::new(
            HealthService::from_health_reporter(reporter.clone()),
        );
        let lifecycle = Lifecycle::start(reporter, self.names.clone().into()).await;
        let (v1, v1alpha) = reflection(&self.descriptor_sets)?;

        let mut known = self.names.clone();
        known.extend([
            <tonic_health::pb::health_server::HealthServer<HealthService> as NamedService>::NAME,
            REFLECTION_V1,
            REFLECTION_V1ALPHA,
        ]);
        let mut server = Server::builder()
            .concurrency_limit_per_connection(self.args.concurrency_limit_per_connection.max(1))
            .load_shed(true)
            .max_connection_age(self.args.max_connection_age)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .tcp_nodelay(true)
            .trace_fn(crate::observe::request_span);
        if !self.args.request_timeout.is_zero() {
            server = server.timeout(self.args.request_timeout);
        }
        if let Some(tls) = self.security.tls {
            crate::tls::install_crypto_provider();
            server = server.tls_config(tls).map_err(|e| {
                SecurityError::Config(format!(
                    "--tls-cert / --tls-key: unusable ({})",
                    crate::tls::error_chain(&e)
                ))
            })?;
        }
        let mut server: Server<Layers> = server
            .layer(ObserveLayer::new(known))
            .layer(OversizeLayer)
            .layer(AuthLayer::new(self.security.token));
        let router = server
            .add_routes(self.routes)
            .add_service(health.clone())
            .add_service(v1)
            .add_service(v1alpha);

        let health_port = match self.args.health_addr()? {
            Some(addr) => Some(HealthPort::bind(addr, health).await?),
            None => None,
        };
        Ok(StartedServer {
            router,
            lifecycle,
            readiness: self.readiness,
            health_port,
            drain_timeout: self.args.drain_timeout,
        })
    }
}

/// gRPC names of the two reflection services.
const REFLECTION_V1: &str = "grpc.reflection.v1.ServerReflection";
const REFLECTION_V1ALPHA: &str = "grpc.reflection.v1alpha.ServerReflection";

/// Reflection in both versions over the same descriptors (health's and both reflection
/// services' included): `v1` for current clients, `v1alpha` for the many that still
/// speak only it (grpcio-reflection, Evans, Postman, older grpcurl).
fn reflection(
    descriptor_sets: &[&'static [u8]],
) -> Result<
    (
        tonic_reflection::pb::v1::server_reflection_server::ServerReflectionServer<
            impl tonic_reflection::pb::v1::server_reflection_server::ServerReflection,
        >,
        tonic_reflection::pb::v1alpha::server_reflection_server::ServerReflectionServer<
            impl tonic_reflection::pb::v1alpha::server_reflection_server::ServerReflection,
        >,
    ),
    tonic_reflection::server::Error,
> {
    let configure = || {
        let mut b = tonic_reflection::server::Builder::configure()
            .include_reflection_service(false)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            );
        for fds in descriptor_sets {
            b = b.register_encoded_file_descriptor_set(fds);
        }
        b
    };
    Ok((configure().build_v1()?, configure().build_v1alpha()?))
}

/// A built server, NOT_SERVING until it serves (see [`ServiceServer::start`]).
#[derive(Debug)]
pub struct StartedServer {
    router: tonic::transport::server::Router<Layers>,
    lifecycle: Lifecycle,
    readiness: Option<Readiness>,
    health_port: Option<HealthPort>,
    drain_timeout: Duration,
}

impl StartedServer {
    /// The health-only port's address, when it is on.
    pub fn health_port_addr(&self) -> Option<SocketAddr> {
        self.health_port.as_ref().map(HealthPort::local_addr)
    }

    /// Serves `listener` until `shutdown` fires (see [`StartedServer::serve_until`]).
    pub async fn serve(self, listener: TcpListener, shutdown: Shutdown) -> Result<(), ServeError> {
        self.serve_until(listener, shutdown, std::future::ready(()))
            .await
    }

    /// Serves `listener` and runs the health lifecycle until `shutdown` fires; then
    /// reports NOT_SERVING, stops accepting, lets in-flight calls finish for up to the
    /// drain timeout while `wind_down` (the service's own background work) completes,
    /// and stops the health-only port last, so probes see NOT_SERVING throughout.
    pub async fn serve_until(
        self,
        listener: TcpListener,
        shutdown: Shutdown,
        wind_down: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        // The server drains on `drain`, which fires only after health says NOT_SERVING.
        let drain = Shutdown::new();
        let lifecycle = {
            let (drain, shutdown) = (drain.clone(), shutdown.clone());
            let (lifecycle, readiness) = (self.lifecycle, self.readiness);
            async move {
                lifecycle.run(readiness, shutdown).await;
                drain.trigger();
            }
        };
        let waiter = drain.clone();
        let server = self
            .router
            .serve_with_incoming_shutdown(crate::drain::incoming(listener), async move {
                waiter.wait().await
            });
        let serving = async {
            let result = crate::drain::bounded(server, &drain, self.drain_timeout).await;
            // A server that failed on its own stops the whole service.
            shutdown.trigger();
            result
        };
        let wind_down = async {
            shutdown.wait().await;
            wind_down.await;
        };
        let (result, (), ()) = tokio::join!(serving, lifecycle, wind_down);
        if let Some(port) = self.health_port {
            port.stop().await;
        }
        result.map_err(ServeError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_texts_parse() {
        for text in [
            defaults::REQUEST_TIMEOUT,
            defaults::MAX_CONNECTION_AGE,
            defaults::DRAIN_TIMEOUT,
        ] {
            assert!(humantime::parse_duration(text).is_ok(), "{text}");
        }
        let d = ServerArgs::default();
        assert_eq!(d.drain_timeout, Duration::from_secs(15));
        assert_eq!(d.max_connection_age, Duration::from_secs(300));
    }
}
