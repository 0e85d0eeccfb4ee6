//! Connections to the services, with failures turned into one-line errors.

use crate::error::{CliError, Result, Service};
use service_kit::auth::ClientInterceptor;
use service_kit::security::ClientSecurity;
use service_kit::status_text::io_cause;
use std::time::Duration;
use taskrouter_proto::v1::executor_client::ExecutorClient;
use taskrouter_proto::v1::router_client::RouterClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A channel that sends the token (if any) and the trace context on every call.
pub type Authed = InterceptedService<Channel, ClientInterceptor>;

/// A connected channel and the address it goes to (for error lines).
#[derive(Clone, Debug)]
pub struct Conn {
    /// The channel.
    pub channel: Channel,
    /// Adds the bearer token and trace context to each call.
    pub interceptor: ClientInterceptor,
    /// The address as given.
    pub endpoint: String,
    /// Which service.
    pub service: Service,
}

impl Conn {
    /// A router client on this connection.
    pub fn router(&self) -> RouterClient<Authed> {
        RouterClient::with_interceptor(self.channel.clone(), self.interceptor.clone())
    }

    /// An executor client on this connection.
    pub fn executor(&self) -> ExecutorClient<Authed> {
        ExecutorClient::with_interceptor(self.channel.clone(), self.interceptor.clone())
    }

    /// Maps an RPC failure of `method` to a CLI error.
    pub fn err(&self, method: &'static str) -> impl Fn(tonic::Status) -> CliError + '_ {
        move |status| CliError::rpc(self.service, &self.endpoint, method, status)
    }
}

/// The flag that sets a service's address (named in usage errors).
fn flag(service: Service) -> &'static str {
    match service {
        Service::Router => "--router / TASKCTL_ROUTER",
        Service::Executor => "--executor / TASKCTL_EXECUTOR",
    }
}

/// Connects to `address` within `timeout`; an address without a scheme gets `http://`,
/// and `https://` needs the TLS settings in `security` (or trusts the system roots).
pub async fn connect(
    service: Service,
    address: &str,
    timeout: Duration,
    security: &ClientSecurity,
) -> Result<Conn> {
    let address = address.trim();
    let url = if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    };
    if !url.starts_with("http://") && !url.starts_with("https://") {
        return Err(CliError::Usage(format!(
            "{}: {address:?} must be an http:// or https:// address (e.g. http://127.0.0.1:50052)",
            flag(service)
        )));
    }
    let endpoint = security
        .endpoint(&url)
        .map_err(|e| CliError::Usage(format!("{}: {e}", flag(service))))?
        .connect_timeout(timeout)
        .tcp_nodelay(true);
    let unreachable = |cause: String| CliError::Unreachable {
        service,
        endpoint: url.clone(),
        cause,
    };
    match tokio::time::timeout(timeout, endpoint.connect()).await {
        Err(_) => Err(unreachable(format!(
            "no connection within {}",
            humantime::format_duration(timeout)
        ))),
        Ok(Err(e)) => {
            let cause =
                io_cause(&e).unwrap_or_else(|| service_kit::status_text::one_line(&e.to_string()));
            Err(unreachable(cause))
        }
        Ok(Ok(channel)) => Ok(Conn {
            channel,
            interceptor: security.interceptor(),
            endpoint: url,
            service,
        }),
    }
}

/// A request with `timeout` as its gRPC deadline.
pub fn request<T>(msg: T, timeout: Option<Duration>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(t) = timeout {
        req.set_timeout(t);
    }
    req
}

/// Awaits one unary call of `method`, bounded by `timeout` on the client side too.
pub async fn unary<T>(
    conn: &Conn,
    method: &'static str,
    timeout: Option<Duration>,
    call: impl std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T> {
    let answer = match timeout {
        Some(t) => tokio::time::timeout(t, call).await.unwrap_or_else(|_| {
            Err(tonic::Status::deadline_exceeded(format!(
                "no answer within {} (raise --timeout)",
                humantime::format_duration(t)
            )))
        }),
        None => call.await,
    };
    answer
        .map(tonic::Response::into_inner)
        .map_err(conn.err(method))
}
