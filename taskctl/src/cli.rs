//! The command line: flags with environment fallbacks.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;
use taskrouter_proto::v1::Complexity;

/// Router address when neither `--router` nor `TASKCTL_ROUTER` is given.
pub const DEFAULT_ROUTER: &str = "http://127.0.0.1:50051";
/// Executor address when neither `--executor` nor `TASKCTL_EXECUTOR` is given.
pub const DEFAULT_EXECUTOR: &str = "http://127.0.0.1:50052";

/// Command-line client for the taskrouter router and executor.
#[derive(Parser, Debug)]
#[command(
    name = "taskctl",
    version,
    about = "Command-line client for the taskrouter router and executor",
    after_help = "Exit codes: 0 ok; 1 unreachable endpoint, RPC or runtime error; 2 usage or \
                  configuration error (also INVALID_ARGUMENT from a service); 3 the task ended \
                  FAILED or CANCELLED (run, watch)."
)]
pub struct Cli {
    /// Router address.
    #[arg(long, global = true, help_heading = "Global options", env = "TASKCTL_ROUTER", default_value = DEFAULT_ROUTER)]
    pub router: String,
    /// Executor address.
    #[arg(long, global = true, help_heading = "Global options", env = "TASKCTL_EXECUTOR", default_value = DEFAULT_EXECUTOR)]
    pub executor: String,
    /// Deadline for connecting, and for each call that does not wait for a task
    /// (route, submit, get, cancel, policy). `run` and `watch` wait as long as the task runs.
    #[arg(long, global = true, help_heading = "Global options", env = "TASKCTL_TIMEOUT", default_value = "10s", value_parser = parse_timeout)]
    pub timeout: Duration,
    /// Print JSON (one document; one object per line for `watch`) instead of text.
    #[arg(long, global = true, help_heading = "Global options")]
    pub json: bool,
    /// TLS and bearer token for both services.
    #[command(flatten)]
    pub security: SecurityArgs,
    /// Whether `--router` / `TASKCTL_ROUTER` was given rather than defaulted (`bench
    /// route` starts its own router otherwise).
    #[arg(skip)]
    pub router_given: bool,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// TLS and token settings for calls to the services (both use the same ones).
#[derive(Args, Debug, Clone, Default)]
pub struct SecurityArgs {
    /// CA certificates (PEM) the services' certificates must chain to, for https://
    /// addresses (default: the system roots).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "TASKCTL_TLS_CA",
        value_name = "PEM"
    )]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for services that require mutual TLS; needs --tls-key.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "TASKCTL_TLS_CERT",
        value_name = "PEM"
    )]
    pub tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert (PEM).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "TASKCTL_TLS_KEY",
        value_name = "PEM"
    )]
    pub tls_key: Option<PathBuf>,
    /// Name the services' certificates must carry (default: the address's host).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "TASKCTL_TLS_DOMAIN",
        value_name = "NAME"
    )]
    pub tls_domain: Option<String>,
    /// File holding the bearer token to send; the token may instead be set in TASKCTL_TOKEN.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "TASKCTL_TOKEN_FILE",
        value_name = "FILE"
    )]
    pub token_file: Option<PathBuf>,
}

impl SecurityArgs {
    /// Loads the files (and `TASKCTL_TOKEN`); errors name the setting.
    pub fn load(&self) -> Result<service_kit::security::ClientSecurity, String> {
        use service_kit::auth::BearerToken;
        use service_kit::security::{ClientSecurity, Secret};
        let tls = service_kit::tls::ClientTlsFiles {
            ca: self.tls_ca.clone(),
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            domain: self.tls_domain.clone(),
        }
        .load("--", "TASKCTL_")
        .map_err(|e| e.to_string())?;
        let env = Secret::from_env("TASKCTL_TOKEN");
        let token = BearerToken::resolve(
            self.token_file.as_deref(),
            "--token-file / TASKCTL_TOKEN_FILE",
            env.as_ref(),
            "TASKCTL_TOKEN",
        )
        .map_err(|e| e.to_string())?;
        Ok(ClientSecurity { tls, token })
    }
}

/// The commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Ask the router how a task would run, and why.
    Route(TaskArgs),
    /// Put a task on the executor's work queue (idempotent per id).
    Submit(SubmitArgs),
    /// Run a task in this call and wait for the result.
    Run(RunArgs),
    /// Show a task's SessionState.
    Get(GetArgs),
    /// Follow a task's progress until it ends.
    Watch(WatchArgs),
    /// Ask a task to stop at its next iteration boundary.
    Cancel(IdArg),
    /// List tasks, last updated first, with counts per status (never descriptions).
    List(ListArgs),
    /// Live view: counts by status and the running tasks, refreshed in place (q quits).
    Top(TopArgs),
    /// Continue a task (e.g. one stopped by its budget) in this call, optionally with a
    /// larger budget.
    Resume(ResumeArgs),
    /// Approve the gate a task waits at (needs the `approver` role when auth is on).
    Approve(DecisionArgs),
    /// Reject the gate a task waits at (needs the `approver` role when auth is on).
    Reject(DecisionArgs),
    /// Show the router's policy in force, or compare a candidate with it (`policy diff`).
    Policy(PolicyArgs),
    /// Show or steer the rollout controller (status, pause, resume, abort).
    Rollout(RolloutArgs),
    /// Start both services in this process and run the plan's scenarios through them.
    Demo(DemoArgs),
    /// Measure throughput and latency over loopback gRPC (route, baseline, execute, redis).
    Bench(taskrouter_loadgen::BenchArgs),
}

/// A task, from flags, a file, or both (flags win).
#[derive(Args, Debug, Default, Clone)]
pub struct TaskArgs {
    /// Task id.
    #[arg(long)]
    pub id: Option<String>,
    /// What to do, in free text.
    #[arg(long, conflicts_with = "description_file")]
    pub description: Option<String>,
    /// Read the description from a file, or from standard input with `-`.
    #[arg(long, value_name = "PATH|-")]
    pub description_file: Option<PathBuf>,
    /// How hard the task is.
    #[arg(long, value_enum)]
    pub complexity: Option<ComplexityArg>,
    /// Estimated business value in USD.
    #[arg(long, value_name = "USD", allow_negative_numbers = true)]
    pub value: Option<f64>,
    /// A repository the task touches (repeatable).
    #[arg(long = "repo", value_name = "OWNER/NAME")]
    pub repos: Vec<String>,
    /// A label (repeatable), e.g. `--label sim.iterations=4`.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Read the task from a JSON or YAML file (`-` for standard input).
    #[arg(long, short = 'f', value_name = "task.json|task.yaml|-")]
    pub file: Option<PathBuf>,
}

/// Complexity on the command line.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ComplexityArg {
    /// A small, local change.
    Low,
    /// A normal change within one component.
    Medium,
    /// A change across components or with design work.
    High,
    /// A change where a mistake is costly.
    Critical,
}

impl From<ComplexityArg> for Complexity {
    fn from(c: ComplexityArg) -> Self {
        match c {
            ComplexityArg::Low => Complexity::Low,
            ComplexityArg::Medium => Complexity::Medium,
            ComplexityArg::High => Complexity::High,
            ComplexityArg::Critical => Complexity::Critical,
        }
    }
}

/// Flags of `submit`.
#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// The task.
    #[command(flatten)]
    pub task: TaskArgs,
    /// Iteration bound (default: the executor's).
    #[arg(long)]
    pub max_iterations: Option<u32>,
    /// Force the single-agent path whatever the router says.
    #[arg(long)]
    pub single_agent: bool,
    /// Spend budget in USD (default: the policy's for the routing decision).
    #[arg(long, value_name = "USD", allow_negative_numbers = true)]
    pub budget: Option<f64>,
}

/// Flags of `run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The task (with `--resume`, `--id` alone is enough).
    #[command(flatten)]
    pub task: TaskArgs,
    /// Continue an existing task from its saved iteration count.
    #[arg(long)]
    pub resume: bool,
    /// Bound on the task's total iterations (default: the saved bound or the executor's).
    #[arg(long)]
    pub max_iterations: Option<u32>,
    /// Force the single-agent path whatever the router says.
    #[arg(long)]
    pub single_agent: bool,
    /// Spend budget in USD (default: the saved one, or the policy's for a new task).
    #[arg(long, value_name = "USD", allow_negative_numbers = true)]
    pub budget: Option<f64>,
}

/// Flags of `resume`.
#[derive(Args, Debug)]
pub struct ResumeArgs {
    /// Task id.
    pub id: String,
    /// A new spend budget in USD (must exceed what the task has spent to go on).
    #[arg(long, value_name = "USD", allow_negative_numbers = true)]
    pub budget: Option<f64>,
    /// Bound on the task's total iterations (default: the saved bound).
    #[arg(long)]
    pub max_iterations: Option<u32>,
}

/// Gate names on the command line.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateArg {
    /// After the plan, before the work.
    BeforeStart,
    /// Before the task is marked completed.
    BeforeComplete,
}

/// Flags of `approve` and `reject`.
#[derive(Args, Debug)]
pub struct DecisionArgs {
    /// Task id.
    pub id: String,
    /// The gate being decided (default: the one the task waits at).
    #[arg(long, value_enum)]
    pub gate: Option<GateArg>,
    /// A comment (at most 4096 bytes); on a rejection that sends the task back, the agent
    /// gets it.
    #[arg(long)]
    pub comment: Option<String>,
}

/// Flags of `get`.
#[derive(Args, Debug)]
pub struct GetArgs {
    /// Task id.
    pub id: String,
    /// Also show the most recent iteration records.
    #[arg(long)]
    pub iterations: bool,
    /// How many iteration records `--iterations` shows.
    #[arg(long, default_value_t = 20, requires = "iterations")]
    pub limit: u32,
}

/// Flags of `watch`.
#[derive(Args, Debug)]
pub struct WatchArgs {
    /// Task id.
    pub id: String,
    /// Start after this event sequence number (0 = from the beginning).
    #[arg(long, default_value_t = 0)]
    pub after: u64,
}

/// A task id.
#[derive(Args, Debug)]
pub struct IdArg {
    /// Task id.
    pub id: String,
}

/// A status for `--status`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusArg {
    /// Accepted, not started.
    Pending,
    /// Started.
    InProgress,
    /// Finished.
    Completed,
    /// Gave up.
    Failed,
    /// Stopped by Cancel.
    Cancelled,
    /// Stopped by a budget (resumable).
    BudgetExhausted,
    /// Parked at an approval gate.
    WaitingApproval,
}

impl From<StatusArg> for taskrouter_proto::v1::TaskStatus {
    fn from(s: StatusArg) -> Self {
        use taskrouter_proto::v1::TaskStatus as S;
        match s {
            StatusArg::Pending => S::Pending,
            StatusArg::InProgress => S::InProgress,
            StatusArg::Completed => S::Completed,
            StatusArg::Failed => S::Failed,
            StatusArg::Cancelled => S::Cancelled,
            StatusArg::BudgetExhausted => S::BudgetExhausted,
            StatusArg::WaitingApproval => S::WaitingApproval,
        }
    }
}

/// An execution path for `--path`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathArg {
    /// One agent.
    Single,
    /// The team.
    Multi,
}

/// The filter flags shared by `list` and `top`.
#[derive(Args, Debug, Clone, Default)]
pub struct FilterArgs {
    /// Only these statuses (repeatable).
    #[arg(long = "status", value_enum)]
    pub statuses: Vec<StatusArg>,
    /// Only this execution path.
    #[arg(long, value_enum)]
    pub path: Option<PathArg>,
    /// Only tasks with this routing reason, e.g. `high-complexity` or `REASON_CODE_CROSS_REPO`.
    #[arg(long, value_parser = parse_reason)]
    pub reason: Option<taskrouter_proto::v1::ReasonCode>,
    /// Only tasks with this `tenant` label.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only tasks routed by this policy version.
    #[arg(long)]
    pub policy_version: Option<String>,
    /// Created at or after: RFC 3339 (`2026-11-28T12:00:00Z`) or an age (`2h` = two hours ago).
    #[arg(long, value_parser = parse_when, value_name = "TIME|AGE")]
    pub created_after: Option<std::time::SystemTime>,
    /// Created before (RFC 3339 or an age).
    #[arg(long, value_parser = parse_when, value_name = "TIME|AGE")]
    pub created_before: Option<std::time::SystemTime>,
    /// Updated at or after (RFC 3339 or an age).
    #[arg(long, value_parser = parse_when, value_name = "TIME|AGE")]
    pub updated_after: Option<std::time::SystemTime>,
    /// Updated before (RFC 3339 or an age).
    #[arg(long, value_parser = parse_when, value_name = "TIME|AGE")]
    pub updated_before: Option<std::time::SystemTime>,
}

/// Flags of `list`.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// Which tasks.
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Tasks per page (at most 1000).
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Continue from a previous page (the token `list` printed).
    #[arg(long, conflicts_with = "all")]
    pub page_token: Option<String>,
    /// Follow every page to the end.
    #[arg(long)]
    pub all: bool,
}

/// Flags of `top`.
#[derive(Args, Debug)]
pub struct TopArgs {
    /// Which tasks the counts cover (running tasks are always listed).
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Refresh interval.
    #[arg(long, default_value = "1s", value_parser = parse_timeout)]
    pub interval: Duration,
    /// Running tasks shown.
    #[arg(long, default_value_t = 20)]
    pub rows: u32,
    /// Stop after this many refreshes (0 = until q or Ctrl-C).
    #[arg(long, default_value_t = 0)]
    pub iterations: u64,
}

fn parse_reason(s: &str) -> Result<taskrouter_proto::v1::ReasonCode, String> {
    let upper = s.trim().to_ascii_uppercase().replace('-', "_");
    let full = if upper.starts_with("REASON_CODE_") {
        upper
    } else {
        format!("REASON_CODE_{upper}")
    };
    match taskrouter_proto::v1::ReasonCode::from_str_name(&full) {
        Some(r) if r != taskrouter_proto::v1::ReasonCode::Unspecified => Ok(r),
        _ => Err("not a reason code (e.g. high-complexity, cross-repo, simple-task)".into()),
    }
}

fn parse_when(s: &str) -> Result<std::time::SystemTime, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t);
    }
    let age = humantime::parse_duration(s)
        .map_err(|_| "expected an RFC 3339 time or an age such as 30m or 2h".to_string())?;
    std::time::SystemTime::now()
        .checked_sub(age)
        .ok_or_else(|| "age reaches before the epoch".to_string())
}

/// Flags of `demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Use Redis at this URL instead of the in-memory store.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
}

/// Flags of `policy`.
#[derive(Args, Debug)]
pub struct PolicyArgs {
    /// Without a subcommand: show the policy in force.
    #[command(subcommand)]
    pub action: Option<PolicyAction>,
}

/// Subcommands of `policy`.
#[derive(Subcommand, Debug)]
pub enum PolicyAction {
    /// Re-evaluate recorded tasks under the live and a candidate policy, and show which
    /// tasks flip and how each group fared on the path it took.
    Diff(DiffArgs),
}

/// Flags of `policy diff`.
#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The candidate policy TOML file.
    pub candidate: PathBuf,
    /// Tasks finished within this long (e.g. 7d, 12h).
    #[arg(long, default_value = "7d", value_parser = parse_timeout)]
    pub since: Duration,
    /// Compare with this policy file instead of the one the router (--router) serves.
    #[arg(long, value_name = "FILE")]
    pub live: Option<PathBuf>,
    /// Where the executor's records are.
    #[command(flatten)]
    pub records: RecordsArgs,
}

/// Where the executor's task records (and the rollout's record) are kept.
#[derive(Args, Debug, Clone)]
pub struct RecordsArgs {
    /// Redis URL of the executor's records.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379/",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub redis_url: String,
    /// Prefix of the executor's Redis keys (its --key-prefix).
    #[arg(long, env = "TASKCTL_KEY_PREFIX", default_value = "taskrouter")]
    pub key_prefix: String,
}

/// Flags of `rollout`.
#[derive(Args, Debug)]
pub struct RolloutArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: RolloutAction,
    /// Where the rollout's record is.
    #[command(flatten)]
    pub records: RecordsArgs,
}

/// Subcommands of `rollout`.
#[derive(Subcommand, Debug, Clone, Copy)]
pub enum RolloutAction {
    /// Show the current step, gates and history.
    Status {
        /// How many history events to show.
        #[arg(long, default_value_t = 20)]
        events: usize,
    },
    /// Hold at the current step (failing gates still roll back).
    Pause,
    /// Continue a paused rollout.
    Resume,
    /// Set rollout_percent to 0 and stop the rollout.
    Abort,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err("expected KEY=VALUE with a non-empty key".to_string()),
    }
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (e.g. 10s, 500ms, 2m)"))?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("taskctl").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn labels_repos_and_negative_values_parse() {
        let cli = parse(&[
            "route", "--id", "T", "--value", "-1", "--repo", "a/b", "--repo", "c/d", "--label",
            "k=v=w",
        ])
        .unwrap();
        let Command::Route(t) = cli.command else {
            panic!("not route")
        };
        assert_eq!(t.value, Some(-1.0));
        assert_eq!(t.repos, vec!["a/b", "c/d"]);
        assert_eq!(t.labels, vec![("k".to_string(), "v=w".to_string())]);
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        for args in [
            vec!["route", "--label", "novalue"],
            vec!["route", "--complexity", "extreme"],
            vec!["get"],
            vec!["--timeout", "0s", "policy"],
            vec!["route", "--description", "x", "--description-file", "-"],
        ] {
            let e = parse(&args).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args:?}");
        }
    }
}
