//! The taskrouter load generator (behind `taskctl bench`): drives the services over real
//! gRPC on loopback and reports throughput and latency.
//!
//! * `baseline`: an empty-message RPC against a trivial tonic server in this process, the
//!   physical limit of the stack on this machine.
//! * `route`: `Route` calls with a realistic task mix against the router (in this process,
//!   or a loopback `--router`), next to the baseline measured in the same run.
//! * `execute`: tasks of K zero-latency simulated iterations through executor processes on
//!   Redis, end to end, with Redis commands per iteration.
//! * `redis`: `redis-benchmark` SET against the same kind of Redis, for comparison.
//!
//! Load only ever goes to loopback addresses; every loop is bounded in count and time.

mod baseline;
pub mod error;
mod execute;
mod load;
mod output;
mod redis;
mod route;
mod target;

use clap::{Args, Subcommand};
pub use error::{Error, Result, Verdict};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use load::{LatencySummary, Measured, Plan, Stop};
pub use target::require_loopback;

/// What every mode takes from the command line around it.
#[derive(Debug, Clone)]
pub struct Options {
    /// The router under load when given (`--router` / `TASKCTL_ROUTER`); `route` starts
    /// one in this process otherwise.
    pub router: Option<String>,
    /// Deadline for connecting and for each request.
    pub timeout: Duration,
    /// Print one JSON document instead of text tables.
    pub json: bool,
}

/// Flags of `taskctl bench`.
#[derive(Args, Debug)]
#[command(
    after_help = "Load goes only to loopback addresses (127.0.0.0/8, ::1, localhost); any other \
                  --router or --redis-url is refused with exit code 2. Exit code 1 when any \
                  request failed or a task did not complete as expected."
)]
pub struct BenchArgs {
    /// What to measure.
    #[command(subcommand)]
    pub mode: BenchMode,
}

/// The bench modes.
#[derive(Subcommand, Debug)]
pub enum BenchMode {
    /// Route calls with a realistic task mix, and the empty-RPC baseline in the same run
    /// (against a router started in this process unless --router / TASKCTL_ROUTER is set).
    Route(route::RouteArgs),
    /// The empty-RPC baseline alone: a trivial tonic server in this process.
    Baseline(LoadArgs),
    /// Tasks through executor processes on Redis, end to end.
    Execute(execute::ExecuteArgs),
    /// `redis-benchmark -t set` against a private (or the given loopback) Redis.
    Redis(redis::RedisArgs),
}

/// Flags of the request-driving modes (`route`, `baseline`).
#[derive(Args, Debug, Clone)]
pub struct LoadArgs {
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub concurrency: u32,
    /// How long to measure (default 10s unless --requests is given).
    #[arg(long, value_parser = parse_positive_duration, conflicts_with = "requests")]
    pub duration: Option<Duration>,
    /// How many requests to measure (instead of --duration).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    pub requests: Option<u64>,
    /// Load before measuring, not recorded (0s for none).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// HTTP/2 connections the requests are spread over.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub connections: u32,
}

impl LoadArgs {
    /// The load plan these flags describe; `timeout` bounds each request.
    pub fn plan(&self, timeout: Duration) -> Plan {
        Plan {
            concurrency: self.concurrency as usize,
            connections: self.connections as usize,
            stop: match (self.requests, self.duration) {
                (Some(n), _) => Stop::Count(n),
                (None, Some(d)) => Stop::For(d),
                (None, None) => Stop::For(Duration::from_secs(10)),
            },
            warmup: self.warmup,
            timeout,
        }
    }
}

/// Runs one bench mode; `Verdict::Failed` when a request failed or a task did not complete.
pub async fn run(opts: &Options, args: &BenchArgs) -> Result<Verdict> {
    match &args.mode {
        BenchMode::Baseline(a) => baseline::run(opts, a).await,
        BenchMode::Route(a) => route::run(opts, a).await,
        BenchMode::Execute(a) => execute::run(opts, a).await,
        BenchMode::Redis(a) => redis::run(opts, a).await,
    }
}

fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (e.g. 10s, 500ms, 2m)"))
}

fn parse_positive_duration(s: &str) -> std::result::Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

/// A scratch directory for logs and the private Redis; removed on drop unless kept.
pub struct Workdir {
    path: PathBuf,
    keep: bool,
}

impl Workdir {
    /// Creates `$TMPDIR/taskctl-bench-<what>-<pid>-<nanos>`.
    pub fn new(what: &str) -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!(
            "taskctl-bench-{what}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path)
            .map_err(|e| Error::Runtime(format!("cannot create {}: {e}", path.display())))?;
        Ok(Workdir { path, keep: false })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the directory (its logs explain a failure).
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Milliseconds with three decimals, for the text tables.
fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

/// `a / b`, or 0 when `b` is 0 (so JSON never holds NaN or infinity).
fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 && a.is_finite() { a / b } else { 0.0 }
}

/// Rounds for JSON: enough digits to compare runs, none of the float noise.
fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}
