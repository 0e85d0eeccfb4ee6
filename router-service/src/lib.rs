//! Router service (in progress).
