//! Server bootstrap shared by `router-service` and `executor-service`: graceful shutdown,
//! the common gRPC server settings, request validation with google.rpc `BadRequest`
//! details, log setup, the Prometheus endpoint and the plaintext health-only port; and the security pieces both services
//! and their clients share: TLS, bearer tokens and URL redaction.

pub mod auth;
pub mod health_port;
pub mod redact;
pub mod security;
pub mod server;
pub mod shutdown;
pub mod status_text;
pub mod telemetry;
pub mod tls;
pub mod trace_context;
pub mod validation;

pub use shutdown::Shutdown;
