//! The executor's one error enum, and its one mapping to `tonic::Status`.

use service_kit::validation::Violations;
use std::time::Duration;
use tonic::{Code, Status};

/// Everything that can go wrong in the executor.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request failed validation; every problem is listed.
    #[error("invalid request: {}", describe(.0))]
    InvalidRequest(Violations),
    /// No state exists for the task.
    #[error("task {task_id} not found")]
    NotFound {
        /// The task id.
        task_id: String,
    },
    /// The task already exists and the call would start it again (`Run` without `resume`).
    #[error("task {task_id} already exists (status {status}); pass resume=true to continue it")]
    AlreadyExists {
        /// The task id.
        task_id: String,
        /// Its current status name.
        status: String,
    },
    /// The stored value cannot be decoded or has an unknown schema version. It is left
    /// in place for inspection.
    #[error("stored state at key {key} is unreadable: {reason}")]
    CorruptState {
        /// The Redis key holding the value.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A conditional write lost: another writer checkpointed a newer version, or this
    /// worker's lease / fencing token is no longer current.
    #[error("checkpoint rejected for task {task_id}: {reason}")]
    StaleWrite {
        /// The task id.
        task_id: String,
        /// `version`, `fence` or `lease`.
        reason: String,
    },
    /// Another worker holds the task's lease.
    #[error("task {task_id} is being run by another worker")]
    LeaseHeld {
        /// The task id.
        task_id: String,
    },
    /// The task is in a state that does not allow the call (e.g. resuming a cancelled task).
    #[error("task {task_id}: {reason}")]
    FailedPrecondition {
        /// The task id.
        task_id: String,
        /// Why.
        reason: String,
    },
    /// The caller's identity lacks the role the call needs.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// Redis could not be reached or failed.
    #[error("redis unavailable: {0}")]
    Redis(#[from] redis::RedisError),
    /// The router could not be reached or answered with an error.
    #[error("router unavailable: {0}")]
    Router(String),
    /// An agent iteration did not finish in time (the child was killed).
    #[error("agent timed out after {0:?}")]
    AgentTimeout(Duration),
    /// An agent iteration failed: non-zero exit, unreadable output, an RPC error, or an
    /// injected fault. The message never contains the task description.
    #[error("agent failed: {0}")]
    AgentFailed(String),
    /// A git workspace operation failed (git missing, the remote unreachable, a full
    /// disk). The message names the repository, never credentials; the iteration is
    /// retried later and nothing is half-committed.
    #[error("workspace: {0}")]
    Workspace(String),
    /// The executor is shutting down.
    #[error("executor is shutting down; retry on another replica")]
    ShuttingDown,
    /// A configuration value is unusable (one line naming the setting).
    #[error("{0}")]
    Config(String),
    /// A bug or an unexpected condition.
    #[error("internal error: {0}")]
    Internal(String),
}

fn describe(v: &Violations) -> String {
    v.as_slice()
        .iter()
        .map(|fv| format!("{}: {}", fv.field, fv.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    /// `Ok(())` when validation found nothing, otherwise [`Error::InvalidRequest`].
    pub fn check(v: Violations) -> Result<()> {
        if v.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidRequest(v))
        }
    }

    /// The gRPC code for this error: the single table callers can rely on.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidRequest(_) => Code::InvalidArgument,
            Error::NotFound { .. } => Code::NotFound,
            Error::AlreadyExists { .. } => Code::AlreadyExists,
            Error::CorruptState { .. } => Code::DataLoss,
            Error::StaleWrite { .. } => Code::Aborted,
            Error::LeaseHeld { .. } => Code::Aborted,
            Error::FailedPrecondition { .. } => Code::FailedPrecondition,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::Redis(_) => Code::Unavailable,
            Error::Router(_) => Code::Unavailable,
            Error::AgentTimeout(_) => Code::DeadlineExceeded,
            Error::AgentFailed(_) => Code::Internal,
            Error::Workspace(_) => Code::Unavailable,
            Error::ShuttingDown => Code::Unavailable,
            Error::Config(_) => Code::FailedPrecondition,
            Error::Internal(_) => Code::Internal,
        }
    }

    /// Whether retrying the same operation later can succeed (Redis down, shutdown).
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Redis(_) | Error::ShuttingDown)
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            // Carries google.rpc BadRequest details so clients can see every field.
            Error::InvalidRequest(v) => v.into_status(),
            other => Status::new(other.code(), other.to_string()),
        }
    }
}

/// Result alias for the executor.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use service_kit::validation::field_violations;

    #[test]
    fn invalid_requests_become_invalid_argument_with_field_details() {
        let mut v = Violations::new();
        v.add("task.id", "must not be empty");
        v.add("max_iterations", "must be at most 100000");
        let status = Status::from(Error::check(v).unwrap_err());
        assert_eq!(status.code(), Code::InvalidArgument);
        let fields: Vec<_> = field_violations(&status)
            .into_iter()
            .map(|f| f.field)
            .collect();
        assert_eq!(fields, ["task.id", "max_iterations"]);
        assert!(status.message().contains("task.id: must not be empty"));
    }

    #[test]
    fn an_empty_set_of_violations_passes() {
        assert!(Error::check(Violations::new()).is_ok());
    }
}
