//! Server bootstrap shared by `router-service` and `executor-service`: graceful shutdown,
//! the common gRPC server settings, request validation with google.rpc `BadRequest`
//! details, log setup and the Prometheus endpoint.

pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod trace_context;
pub mod validation;

pub use shutdown::Shutdown;
