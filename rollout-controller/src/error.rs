//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in the rollout controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is unusable (one line naming it).
    #[error("{0}")]
    Config(String),
    /// A policy the controller would write does not validate; nothing was written.
    #[error("policy rejected, not written: {0}")]
    PolicyRejected(String),
    /// The policy file could not be read or replaced.
    #[error("{}: {source}", path.display())]
    PolicyFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The policy ConfigMap could not be read or replaced through the Kubernetes API.
    #[error("ConfigMap {configmap}: {reason}")]
    ConfigMap {
        /// `namespace/name`.
        configmap: String,
        /// Why (never the token).
        reason: String,
    },
    /// The policy ConfigMap changed between the controller's read and its write (409
    /// Conflict): the other change stands and the write is retried at the next check.
    #[error(
        "ConfigMap {configmap} changed while it was being written (409 Conflict); nothing was overwritten"
    )]
    Conflict {
        /// `namespace/name`.
        configmap: String,
    },
    /// Redis refused or could not be reached.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A stored rollout record cannot be read.
    #[error("rollout state at {key} is unreadable: {reason}")]
    CorruptState {
        /// The Redis key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An executor task record cannot be read.
    #[error("task record: {0}")]
    TaskRecord(String),
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
