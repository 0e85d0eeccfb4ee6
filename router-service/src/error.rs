//! The crate's one error type and its one mapping to a gRPC status.

use service_kit::validation::Violations;
use std::path::PathBuf;
use tonic::{Code, Status};

/// Everything that can go wrong in the router.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The policy file could not be read.
    #[error("{}: cannot read the policy file: {source}", path.display())]
    PolicyRead {
        /// The file that was read.
        path: PathBuf,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// The policy text is not valid TOML, or a key is unknown or has the wrong type.
    #[error("{origin}: {message}")]
    PolicyParse {
        /// The file path, or `builtin policy`.
        origin: String,
        /// One line: position and problem.
        message: String,
    },
    /// A policy setting is out of range.
    #[error("{origin}: {key} {problem}")]
    PolicyInvalid {
        /// The file path, or `builtin policy`.
        origin: String,
        /// Dotted key of the setting, e.g. `rules.value_threshold_usd`.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A request failed validation; every problem is listed.
    #[error("invalid request: {}", describe(.0))]
    InvalidRequest(Violations),
    /// A TLS or authentication setting is unusable (one line naming it).
    #[error("{0}")]
    Config(String),
    /// The gRPC server could not run.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A server component could not be set up.
    #[error("startup: {0}")]
    Startup(String),
    /// A bug or an exhausted runtime, not the caller's fault.
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
    /// The gRPC code for this error; the single table from variant to code.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidRequest(_) => Code::InvalidArgument,
            Error::PolicyRead { .. }
            | Error::PolicyParse { .. }
            | Error::PolicyInvalid { .. }
            | Error::Config(_) => Code::FailedPrecondition,
            Error::Transport(_) | Error::Startup(_) | Error::Internal(_) => Code::Internal,
        }
    }
}

impl From<service_kit::server::ServeError> for Error {
    fn from(e: service_kit::server::ServeError) -> Self {
        use service_kit::server::ServeError;
        match e {
            e if e.is_config() => Error::Config(e.to_string()),
            ServeError::Transport(t) => Error::Transport(t),
            other => Error::Startup(other.to_string()),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use service_kit::validation::field_violations;

    #[test]
    fn invalid_requests_become_invalid_argument_with_field_details() {
        let mut v = Violations::new();
        v.add("task.id", "must not be empty");
        let status = Status::from(Error::InvalidRequest(v));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(field_violations(&status)[0].field, "task.id");
    }

    #[test]
    fn policy_errors_name_the_key() {
        let e = Error::PolicyInvalid {
            origin: "/x.toml".into(),
            key: "rules.value_threshold_usd".into(),
            problem: "must be finite and >= 0".into(),
        };
        assert_eq!(
            e.to_string(),
            "/x.toml: rules.value_threshold_usd must be finite and >= 0"
        );
        assert_eq!(Status::from(e).code(), Code::FailedPrecondition);
    }
}
