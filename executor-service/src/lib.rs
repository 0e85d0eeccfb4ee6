//! Executor service (in progress).
