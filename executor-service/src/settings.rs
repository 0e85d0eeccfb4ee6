//! The executor's settings and the one place each default is written: the flags
//! (`config`) and `Default` both take their defaults from here.

use crate::session::CheckpointRetry;
use std::time::Duration;

/// Default gRPC listen address.
pub const LISTEN: &str = "0.0.0.0:50052";
/// Default Redis URL.
pub const REDIS_URL: &str = "redis://127.0.0.1:6379/";
/// Default prefix of every Redis key.
pub const KEY_PREFIX: &str = "taskrouter";
/// Default router address.
pub const ROUTER_ADDR: &str = "http://127.0.0.1:50051";
/// Default deadline of one Route call.
pub const ROUTE_TIMEOUT: Duration = Duration::from_secs(2);
/// Default number of queue workers.
pub const CONCURRENCY: usize = 4;
/// Default iteration bound when a request gives none.
pub const MAX_ITERATIONS: u32 = 50;
/// Default lease expiry: a crashed worker's task runs again about this long after its
/// last heartbeat (heartbeats every third of it).
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// Default number of queue shards.
pub const QUEUE_SHARDS: usize = 1;
/// Default deliveries in a row without progress after which a queue entry is dead-lettered.
pub const MAX_DELIVERIES: u64 = 5;
/// Default time a finished task stays readable.
pub const ARCHIVE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default time an in-flight iteration gets to finish on shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);
/// Default wall-clock budget of one specialist.
pub const SPECIALIST_TIMEOUT: Duration = Duration::from_secs(600);
/// Default iterations one specialist may use.
pub const SPECIALIST_MAX_ITERATIONS: u32 = 10;
/// Default specialists running at once per task.
pub const TEAM_MAX_PARALLEL: usize = 4;
/// Largest number of specialists a plan may staff (not a flag).
pub const MAX_SPECIALISTS: usize = 8;
/// Default smallest spend reservation per agent call, USD.
pub const AGENT_MAX_CALL_COST_USD: f64 = 0.10;
/// Default life of an unsettled tenant spend hold.
pub const BUDGET_HOLD_TTL: Duration = Duration::from_secs(15 * 60);
/// How often a worker looks for approval gates past their timeout (not a flag).
pub const APPROVAL_SCAN_INTERVAL: Duration = Duration::from_millis(500);
/// Longest one blocking queue read waits before it is issued again (not a flag).
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);
/// Default of what a task does when the router cannot be reached.
pub const WHEN_ROUTER_UNAVAILABLE: WhenRouterUnavailable = WhenRouterUnavailable::Run;
/// Default time a person has to approve a task held because the router was unreachable.
pub const ROUTER_UNAVAILABLE_HOLD_TIMEOUT: Duration = Duration::from_secs(3600);
/// How often the store is probed for the health status (not a flag).
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// What a new task does when a router is configured but does not answer: the policy's
/// budgets and approval gates are then unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WhenRouterUnavailable {
    /// Run on the single path without the policy's gates and default budget (the seed's
    /// `fallback_to_single_agent`): available, but ungoverned.
    Run,
    /// Fail closed: hold the task at a `before_start` gate that a person approves (then it
    /// runs on the single path) or rejects; the gate's timeout rejects it.
    Hold,
}

/// Team path limits.
#[derive(Clone, Debug)]
pub struct TeamSettings {
    /// Wall-clock budget of one specialist (restarts on resume).
    pub specialist_timeout: Duration,
    /// Iterations one specialist may use before it counts as failed.
    pub specialist_max_iterations: u32,
    /// Specialists running at once.
    pub max_parallel: usize,
    /// Largest number of specialists a plan may staff.
    pub max_specialists: usize,
}

impl Default for TeamSettings {
    fn default() -> Self {
        Self {
            specialist_timeout: SPECIALIST_TIMEOUT,
            specialist_max_iterations: SPECIALIST_MAX_ITERATIONS,
            max_parallel: TEAM_MAX_PARALLEL,
            max_specialists: MAX_SPECIALISTS,
        }
    }
}

/// Executor-wide settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// This process's worker id (consumer name in the queue group, lease owner prefix).
    pub worker_id: String,
    /// Iteration bound when the request gives none.
    pub default_max_iterations: u32,
    /// Lease expiry; a crashed worker's task is reclaimed after it (heartbeats renew it
    /// every third of it).
    pub lease_ttl: Duration,
    /// How long archived tasks are kept.
    pub archive_ttl: Duration,
    /// Time an in-flight iteration gets to finish on shutdown.
    pub shutdown_grace: Duration,
    /// Checkpoint retry budget while Redis is away.
    pub checkpoint_retry: CheckpointRetry,
    /// Team path limits.
    pub team: TeamSettings,
    /// Deliveries in a row without progress after which a queue entry is dead-lettered.
    pub max_deliveries: u64,
    /// Queue workers in this process.
    pub concurrency: usize,
    /// Longest one blocking queue read waits before it is issued again.
    pub poll_interval: Duration,
    /// Smallest spend reservation per agent call, USD (the task's costliest call
    /// raises it).
    pub agent_max_call_cost_usd: f64,
    /// Life of an unsettled tenant spend hold (a dead worker's hold expires after it).
    pub budget_hold_ttl: Duration,
    /// How often approval timeouts are looked for.
    pub approval_scan_interval: Duration,
    /// What a new task does when the router cannot be reached.
    pub when_router_unavailable: WhenRouterUnavailable,
    /// Timeout of the gate a task is held at by [`WhenRouterUnavailable::Hold`].
    pub router_unavailable_hold_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            worker_id: default_worker_id(),
            default_max_iterations: MAX_ITERATIONS,
            lease_ttl: LEASE_TTL,
            archive_ttl: ARCHIVE_TTL,
            shutdown_grace: SHUTDOWN_GRACE,
            checkpoint_retry: CheckpointRetry::default(),
            team: TeamSettings::default(),
            max_deliveries: MAX_DELIVERIES,
            concurrency: CONCURRENCY,
            poll_interval: POLL_INTERVAL,
            agent_max_call_cost_usd: AGENT_MAX_CALL_COST_USD,
            budget_hold_ttl: BUDGET_HOLD_TTL,
            approval_scan_interval: APPROVAL_SCAN_INTERVAL,
            when_router_unavailable: WHEN_ROUTER_UNAVAILABLE,
            router_unavailable_hold_timeout: ROUTER_UNAVAILABLE_HOLD_TIMEOUT,
        }
    }
}

/// The worker id when none is configured: `$HOSTNAME-<pid>`.
pub fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or_else(|| "executor".to_string());
    format!("{host}-{}", std::process::id())
}
