//! The remote agent: calls a `taskrouter.v1.Agent` gRPC service once per iteration, with
//! the iteration timeout as the call's deadline.

use super::{Agent, IterationInput, IterationOutput, check_cost};
use crate::error::{Error, Result};
use service_kit::auth::ClientInterceptor;
use service_kit::security::ClientSecurity;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use taskrouter_proto::v1::agent_client::AgentClient;
use taskrouter_proto::v1::{RunIterationRequest, Task};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// Longest time spent establishing a connection (bounded further by the iteration timeout).
pub const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response accepted, as for the command agent's stdout.
pub const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;
/// Longest remote status message kept in an error.
const MAX_MESSAGE_CHARS: usize = 512;

/// Runs iterations on a remote `taskrouter.v1.Agent` service.
#[derive(Debug)]
pub struct RemoteAgent {
    endpoint: Endpoint,
    /// Created on first use, so construction needs no runtime and no reachable server.
    channel: OnceLock<Channel>,
    timeout: Duration,
    /// Trace context and, when configured, the bearer token.
    interceptor: ClientInterceptor,
}

impl RemoteAgent {
    /// An agent for `url` (`http://host:port`, or `https://` trusting the system roots),
    /// without a token; connects lazily. The error is one line.
    pub fn new(url: &str, timeout: Duration) -> std::result::Result<Self, String> {
        Self::with_security(url, timeout, &ClientSecurity::default())
    }

    /// An agent for `url` with `security`'s TLS settings and token; connects lazily. The
    /// error is one line.
    pub fn with_security(
        url: &str,
        timeout: Duration,
        security: &ClientSecurity,
    ) -> std::result::Result<Self, String> {
        if timeout.is_zero() {
            return Err("timeout must be greater than zero".to_owned());
        }
        let endpoint = security
            .endpoint(url)?
            .connect_timeout(timeout.min(MAX_CONNECT_TIMEOUT));
        Ok(Self {
            endpoint,
            channel: OnceLock::new(),
            timeout,
            interceptor: security.interceptor(),
        })
    }

    /// The endpoint's URI.
    pub fn uri(&self) -> String {
        self.endpoint.uri().to_string()
    }

    /// The per-iteration deadline.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn client(
        &self,
    ) -> AgentClient<tonic::service::interceptor::InterceptedService<Channel, ClientInterceptor>>
    {
        let channel = self
            .channel
            .get_or_init(|| self.endpoint.connect_lazy())
            .clone();
        // The agent sees the iteration's trace context, so its own spans join the task's trace.
        AgentClient::with_interceptor(channel, self.interceptor.clone())
            .max_decoding_message_size(MAX_RESPONSE_BYTES)
    }
}

/// Keeps a remote status message loggable: one short line without the task description.
fn sanitize(message: &str, description: &str) -> String {
    let redacted = if description.trim().is_empty() {
        message.to_owned()
    } else {
        message.replace(description, "[description]")
    };
    let mut out: String = redacted
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_MESSAGE_CHARS)
        .collect();
    if redacted.chars().nth(MAX_MESSAGE_CHARS).is_some() {
        out.push_str("...");
    }
    out
}

/// Maps a failed call to the agent error kinds.
fn map_status(status: &Status, timeout: Duration, elapsed: Duration, description: &str) -> Error {
    match status.code() {
        Code::DeadlineExceeded => Error::AgentTimeout(timeout),
        // The client enforces the deadline itself and reports it as CANCELLED.
        Code::Cancelled if elapsed >= timeout => Error::AgentTimeout(timeout),
        code => Error::AgentFailed(format!(
            "remote agent returned {code:?}: {}",
            sanitize(status.message(), description)
        )),
    }
}

#[async_trait::async_trait]
impl Agent for RemoteAgent {
    async fn run_iteration(&self, input: IterationInput) -> Result<IterationOutput> {
        let IterationInput {
            task,
            role,
            iteration,
            step,
            prior_outputs,
            context,
            workspace,
        } = input;
        let repos = workspace
            .map(|w| {
                w.repos
                    .into_iter()
                    .map(|r| taskrouter_proto::v1::RepoBranch {
                        repo: r.repo,
                        branch: r.branch,
                        base_commit: r.base_commit,
                        commit: r.commit,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut request = tonic::Request::new(RunIterationRequest {
            // Encoding needs an owned message; one copy per call.
            task: Some(Task::clone(&task)),
            role,
            iteration,
            prior_outputs,
            step: step as i32,
            context,
            repos,
        });
        // Tells the server the deadline (grpc-timeout) and enforces it on the client.
        request.set_timeout(self.timeout);

        let started = Instant::now();
        let mut client = self.client();
        let call = tokio::time::timeout(self.timeout, client.run_iteration(request)).await;
        let response = match call {
            Err(_) => Err(Error::AgentTimeout(self.timeout)),
            Ok(Err(status)) => Err(map_status(
                &status,
                self.timeout,
                started.elapsed(),
                &task.description,
            )),
            Ok(Ok(response)) => Ok(response.into_inner()),
        };
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(task_id = %task.id, iteration, error = %e, "remote agent call failed");
                return Err(e);
            }
        };
        Ok(IterationOutput {
            output: response.output,
            done: response.done,
            cost_usd: check_cost(response.cost_usd)?,
            tokens_in: response.tokens_in,
            tokens_out: response.tokens_out,
            plan_roles: response.plan_roles,
            // A remote agent cannot edit this executor's checkout.
            changed_paths: Some(Vec::new()),
        })
    }

    fn kind(&self) -> &'static str {
        "remote"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_urls() {
        let t = Duration::from_secs(1);
        assert!(RemoteAgent::new("http://127.0.0.1:50051", t).is_ok());
        assert!(RemoteAgent::new("http://agent.default.svc:8080", t).is_ok());
        for bad in ["", "127.0.0.1:50051", "ftp://x", "http://"] {
            let err = RemoteAgent::new(bad, t).unwrap_err();
            assert!(!err.contains('\n'), "{err}");
        }
        assert!(RemoteAgent::new("http://x:1", Duration::ZERO).is_err());
    }

    #[test]
    fn sanitizes_messages() {
        let desc = "rotate the HIPAA credentials for patient 42";
        let msg = format!("could not do: {desc}\nsecond line");
        let clean = sanitize(&msg, desc);
        assert_eq!(clean, "could not do: [description] second line");
        let long = "x".repeat(2000);
        assert_eq!(sanitize(&long, "").chars().count(), MAX_MESSAGE_CHARS + 3);
    }

    #[test]
    fn maps_codes() {
        let t = Duration::from_secs(1);
        let short = Duration::from_millis(10);
        assert!(matches!(
            map_status(&Status::deadline_exceeded("x"), t, short, ""),
            Error::AgentTimeout(_)
        ));
        assert!(matches!(
            map_status(&Status::cancelled("Timeout expired"), t, t, ""),
            Error::AgentTimeout(_)
        ));
        let e = map_status(&Status::cancelled("x"), t, short, "");
        assert!(matches!(e, Error::AgentFailed(ref m) if m.contains("Cancelled")));
        let e = map_status(&Status::unavailable("down"), t, short, "");
        assert_eq!(
            e.to_string(),
            "agent failed: remote agent returned Unavailable: down"
        );
    }
}
