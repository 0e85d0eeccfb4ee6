//! Server bootstrap shared by `router-service` and `executor-service`: the one server
//! builder (health lifecycle, reflection, observation, size limits and auth as layers, the
//! plaintext health-only port), graceful shutdown, request validation with google.rpc
//! `BadRequest` details, log and trace setup, the Prometheus endpoint; and the security
//! pieces both services and their clients share: TLS, bearer tokens and URL redaction.
//!
//! Modules build on each other in one direction: `credentials` (errors, secrets, file
//! reads) under `tls` and `auth`, those under `security` (one client hop) and `server`
//! (the builder), which also sits on `observe`, `size_limit`, `health`, `health_port` and
//! `drain`.

pub mod auth;
pub mod credentials;
pub mod drain;
pub mod grpc_path;
pub mod health;
pub mod health_port;
#[cfg(test)]
mod log_capture;
pub mod log_format;
pub mod log_sampling;
pub mod log_writer;
pub mod observe;
pub mod redact;
pub mod security;
pub mod server;
pub mod shutdown;
pub mod size_limit;
pub mod status_text;
pub mod telemetry;
pub mod tls;
pub mod trace_context;
pub mod validation;

pub use shutdown::Shutdown;
