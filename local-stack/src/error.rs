//! Why a local stack did not start.

/// A local stack that did not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The executor's configuration (e.g. the Redis URL) is unusable.
    #[error("{0}")]
    Config(String),
    /// Redis did not answer; the cause never holds the URL.
    #[error("cannot reach Redis (--redis-url / REDIS_URL): {0}")]
    RedisUnreachable(String),
    /// Anything else: a port, a task, a service that did not report SERVING.
    #[error("{0}")]
    Runtime(String),
}

/// Result alias for the local stack.
pub type Result<T, E = Error> = std::result::Result<T, E>;
