//! What can go wrong in a command, and the exit code each failure maps to.

use service_kit::status_text::{code_name, io_cause, one_line};
use service_kit::validation::field_violations;
use std::fmt;
use tonic::{Code, Status};

/// Exit codes scripts can rely on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Success.
    Ok = 0,
    /// An endpoint could not be reached, an RPC failed, or something else went wrong at run time.
    Runtime = 1,
    /// Bad flags, a bad task file, or a request the service rejected as INVALID_ARGUMENT.
    Usage = 2,
    /// `run` / `watch`: the task ended FAILED or CANCELLED.
    TaskFailed = 3,
}

/// Which service a call went to (named in error lines).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// The router.
    Router,
    /// The executor.
    Executor,
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Service::Router => "router",
            Service::Executor => "executor",
        })
    }
}

/// A failed command.
#[derive(Debug)]
pub enum CliError {
    /// Bad input from the command line or a file.
    Usage(String),
    /// Nothing answers at an endpoint.
    Unreachable {
        /// Which service.
        service: Service,
        /// The address tried.
        endpoint: String,
        /// Short cause, e.g. "connection refused".
        cause: String,
    },
    /// An RPC answered with an error status.
    Rpc {
        /// Which service.
        service: Service,
        /// The RPC method.
        method: &'static str,
        /// The status.
        status: Box<Status>,
    },
    /// Anything else at run time.
    Runtime(String),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit(&self) -> Exit {
        match self {
            CliError::Usage(_) => Exit::Usage,
            CliError::Rpc { status, .. } if status.code() == Code::InvalidArgument => Exit::Usage,
            _ => Exit::Runtime,
        }
    }

    /// An RPC error, or an unreachable endpoint when the status says the connection failed.
    pub fn rpc(service: Service, endpoint: &str, method: &'static str, status: Status) -> Self {
        if status.code() == Code::Unavailable
            && let Some(cause) = transport_cause(&status)
        {
            return CliError::Unreachable {
                service,
                endpoint: endpoint.to_string(),
                cause,
            };
        }
        CliError::Rpc {
            service,
            method,
            status: Box::new(status),
        }
    }

    /// The lines printed on stderr: the first is the error, any further ones are the
    /// field violations of an INVALID_ARGUMENT.
    pub fn lines(&self) -> Vec<String> {
        match self {
            CliError::Usage(m) | CliError::Runtime(m) => vec![format!("error: {m}")],
            CliError::Unreachable {
                service,
                endpoint,
                cause,
            } => vec![format!(
                "error: cannot reach {service} at {endpoint}: {cause}"
            )],
            CliError::Rpc {
                service,
                method,
                status,
            } => {
                let violations = field_violations(status);
                // The services' INVALID_ARGUMENT message is the violations joined with
                // "; ": show them once, one per line.
                let joined = violations
                    .iter()
                    .map(|v| format!("{}: {}", v.field, v.description))
                    .collect::<Vec<_>>()
                    .join("; ");
                let head = if !violations.is_empty() && status.message() == joined {
                    format!(
                        "error: {service} {method} failed: {}: {} invalid field(s)",
                        code_name(status.code()),
                        violations.len()
                    )
                } else {
                    format!(
                        "error: {service} {method} failed: {}: {}",
                        code_name(status.code()),
                        one_line(status.message())
                    )
                };
                let mut lines = vec![head];
                lines.extend(
                    violations
                        .iter()
                        .map(|v| format!("  field {}: {}", v.field, one_line(&v.description))),
                );
                lines
            }
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.lines().join("\n"))
    }
}

/// The short cause of a connection failure, if `status` wraps one (tonic reports a
/// failed connect as UNAVAILABLE with the transport error as its source).
fn transport_cause(status: &Status) -> Option<String> {
    let source = std::error::Error::source(status)?;
    io_cause(source)
}

/// Result alias for commands.
pub type Result<T, E = CliError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_is_one_line() {
        let e = CliError::Unreachable {
            service: Service::Executor,
            endpoint: "http://127.0.0.1:1".into(),
            cause: "connection refused".into(),
        };
        assert_eq!(
            e.lines(),
            vec!["error: cannot reach executor at http://127.0.0.1:1: connection refused"]
        );
        assert_eq!(e.exit(), Exit::Runtime);
    }

    #[test]
    fn invalid_argument_lists_each_field() {
        let mut v = service_kit::validation::Violations::new();
        v.add("task.id", "must not be empty");
        v.add("task.complexity", "must be set");
        let e = CliError::rpc(Service::Router, "x", "Route", v.into_status());
        let lines = e.lines();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(
            lines[0],
            "error: router Route failed: INVALID_ARGUMENT: 2 invalid field(s)"
        );
        assert_eq!(lines[1], "  field task.id: must not be empty");
        assert_eq!(e.exit(), Exit::Usage);
    }

    #[test]
    fn messages_stay_on_one_line() {
        let e = CliError::rpc(
            Service::Executor,
            "x",
            "Get",
            Status::not_found("line one\nline two"),
        );
        assert_eq!(
            e.lines(),
            vec!["error: executor Get failed: NOT_FOUND: line one line two"]
        );
    }
}
