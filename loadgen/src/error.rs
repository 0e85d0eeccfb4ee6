//! How a bench run fails, and what it concludes when it does not.

/// A bench run that could not measure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad flags or a refused (non-loopback) target.
    #[error("{0}")]
    Usage(String),
    /// Anything that went wrong while measuring.
    #[error("{0}")]
    Runtime(String),
}

/// What a run that measured concludes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every request succeeded and every task completed as expected.
    Passed,
    /// Some request failed or some task did not complete (details were printed).
    Failed,
}

/// Result alias for the load generator.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<local_stack::Error> for Error {
    fn from(e: local_stack::Error) -> Self {
        match e {
            local_stack::Error::Config(_) => Error::Usage(e.to_string()),
            _ => Error::Runtime(e.to_string()),
        }
    }
}
