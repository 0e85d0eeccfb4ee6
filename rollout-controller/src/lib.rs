//! The taskrouter rollout controller: moves the router's `multi_agent.rollout_percent`
//! through steps, judges each step on the executor's task records, and rolls back to 0
//! when a gate fails.
//!
//! Module layering (imports point down only): `controller` → `gates`, `outcomes`,
//! `state`, `writer` → `error`; `configmap` (the Kubernetes writer) → `writer`; `config`
//! (flags) builds the writers. `taskctl` uses `state` (status, pause, resume, abort) and
//! `outcomes` (policy diff).

pub mod config;
pub mod configmap;
pub mod controller;
pub mod error;
pub mod gates;
pub mod outcomes;
pub mod state;
pub mod writer;

pub use config::Args;
pub use controller::{Controller, ControllerConfig};
pub use error::{Error, Result};
