//! Executor configuration: flags with environment-variable fallbacks, validated once at
//! start. A bad setting is one line naming it (exit code 2).

use crate::agent::AgentArgs;
use crate::redis_connection::RedisTarget;
use crate::routing::RouterClientArgs;
use crate::session::CheckpointRetry;
use crate::settings::{self, Settings, TeamSettings};
use crate::workspace::{WorkspaceArgs, WorkspaceConfig};
use redis::IntoConnectionInfo as _;
use service_kit::security::{ClientSecurity, SecurityError};
use service_kit::server::ServerArgs;
use service_kit::telemetry::TelemetryArgs;
use service_kit::tls::{read_certificates, read_private_key};
use service_kit::validation::TaskLimits;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Command-line flags of `executor-service`.
#[derive(clap::Parser, Clone, Debug)]
#[command(
    name = "executor-service",
    version,
    about = "taskrouter executor: runs coding tasks durably with SessionState in Redis"
)]
pub struct Args {
    /// gRPC listen address.
    #[arg(long, env = "EXECUTOR_LISTEN", default_value = settings::LISTEN)]
    pub listen: String,
    /// Redis URL (`redis://[:password@]host:port/db` or `rediss://` for TLS).
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = settings::REDIS_URL,
        hide_env_values = true,
        hide_default_value = true
    )]
    pub redis_url: String,
    /// Treat --redis-url as a Redis Cluster: a comma-separated list of seed node URLs
    /// (same scheme and password on each; the rest of the cluster is discovered).
    #[arg(long, env = "REDIS_CLUSTER")]
    pub redis_cluster: bool,
    /// Queue shards: streams with their own hash tag, spread over a cluster's masters.
    #[arg(long, env = "EXECUTOR_QUEUE_SHARDS", default_value_t = settings::QUEUE_SHARDS)]
    pub queue_shards: usize,
    /// Prefix of every Redis key this executor uses.
    #[arg(long, env = "EXECUTOR_KEY_PREFIX", default_value = settings::KEY_PREFIX)]
    pub key_prefix: String,
    /// TLS files for a rediss:// URL.
    #[command(flatten)]
    pub redis_tls: RedisTlsArgs,
    /// Router service address (http:// or https://); empty disables routing (every task
    /// takes the single path).
    #[arg(long, env = "ROUTER_ADDR", default_value = settings::ROUTER_ADDR)]
    pub router_addr: String,
    /// TLS and token of the calls to the router.
    #[command(flatten)]
    pub router_client: RouterClientArgs,
    /// Deadline of one Route call; past it the task takes the single path.
    #[arg(long, env = "EXECUTOR_ROUTE_TIMEOUT", default_value_t = settings::ROUTE_TIMEOUT.into())]
    pub route_timeout: humantime::Duration,
    /// Worker id (queue consumer name and lease owner); defaults to $HOSTNAME-<pid>.
    #[arg(long, env = "EXECUTOR_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Queue workers in this process; 0 serves the API only.
    #[arg(long, env = "EXECUTOR_CONCURRENCY", default_value_t = settings::CONCURRENCY)]
    pub concurrency: usize,
    /// Iteration bound when a request gives none.
    #[arg(long, env = "EXECUTOR_MAX_ITERATIONS", default_value_t = settings::MAX_ITERATIONS)]
    pub max_iterations: u32,
    /// Lease expiry: a crashed worker's task is picked up this long after its last heartbeat.
    #[arg(long, env = "EXECUTOR_LEASE_TTL", default_value_t = settings::LEASE_TTL.into())]
    pub lease_ttl: humantime::Duration,
    /// Deliveries after which a queue entry goes to the dead-letter stream.
    #[arg(long, env = "EXECUTOR_MAX_DELIVERIES", default_value_t = settings::MAX_DELIVERIES)]
    pub max_deliveries: u64,
    /// How long a finished task's state is kept (then Redis expires it).
    #[arg(long, env = "EXECUTOR_ARCHIVE_TTL", default_value_t = settings::ARCHIVE_TTL.into())]
    pub archive_ttl: humantime::Duration,
    /// On SIGTERM, how long the iteration in flight may run before it is abandoned.
    #[arg(long, env = "EXECUTOR_SHUTDOWN_GRACE", default_value_t = settings::SHUTDOWN_GRACE.into())]
    pub shutdown_grace: humantime::Duration,
    /// How long a failing checkpoint write is retried before the run stops (resumable).
    #[arg(long, env = "EXECUTOR_CHECKPOINT_RETRY_BUDGET", default_value_t = CheckpointRetry::default().budget.into())]
    pub checkpoint_retry_budget: humantime::Duration,
    /// Wall-clock budget of one specialist on the team path.
    #[arg(long, env = "EXECUTOR_SPECIALIST_TIMEOUT", default_value_t = settings::SPECIALIST_TIMEOUT.into())]
    pub specialist_timeout: humantime::Duration,
    /// Iterations one specialist may use.
    #[arg(long, env = "EXECUTOR_SPECIALIST_MAX_ITERATIONS", default_value_t = settings::SPECIALIST_MAX_ITERATIONS)]
    pub specialist_max_iterations: u32,
    /// Specialists running at once per task.
    #[arg(long, env = "EXECUTOR_TEAM_MAX_PARALLEL", default_value_t = settings::TEAM_MAX_PARALLEL)]
    pub team_max_parallel: usize,
    /// Smallest spend reserved against the task's and tenant's budgets before each agent
    /// call, in USD (raised to the task's costliest call so far). Bounds budget overshoot.
    #[arg(long, env = "EXECUTOR_AGENT_MAX_CALL_COST", default_value_t = settings::AGENT_MAX_CALL_COST_USD)]
    pub agent_max_call_cost: f64,
    /// How long an unsettled tenant spend hold lives (a dead worker's hold is freed after it).
    #[arg(long, env = "EXECUTOR_BUDGET_HOLD_TTL", default_value_t = settings::BUDGET_HOLD_TTL.into())]
    pub budget_hold_ttl: humantime::Duration,
    /// What a new task does when the router cannot be reached: `run` on the single path
    /// without the policy's gates and budgets, or `hold` it at a before_start approval
    /// gate (fail closed; use it when the policy has approval gates or budgets).
    #[arg(long, env = "EXECUTOR_WHEN_ROUTER_UNAVAILABLE", value_enum, default_value_t = settings::WHEN_ROUTER_UNAVAILABLE)]
    pub when_router_unavailable: settings::WhenRouterUnavailable,
    /// How long a task held because the router was unreachable waits for a person before
    /// it is rejected.
    #[arg(long, env = "EXECUTOR_ROUTER_UNAVAILABLE_HOLD_TIMEOUT", default_value_t = settings::ROUTER_UNAVAILABLE_HOLD_TIMEOUT.into())]
    pub router_unavailable_hold_timeout: humantime::Duration,
    /// Largest accepted task description, in bytes.
    #[arg(long, env = "EXECUTOR_MAX_DESCRIPTION_BYTES", default_value_t = TaskLimits::default().max_description_bytes)]
    pub max_description_bytes: usize,
    /// Parse and validate the configuration, print one line and exit.
    #[arg(long)]
    pub check_config: bool,
    /// Address of the read-only web dashboard (HTTP), e.g. 127.0.0.1:8080; empty = off.
    #[arg(long, env = "EXECUTOR_UI_LISTEN", default_value = "")]
    pub ui_listen: String,
    /// Show task descriptions, results, agent outputs and approvers' comments on the dashboard.
    #[arg(long, env = "EXECUTOR_UI_SHOW_DESCRIPTIONS")]
    pub ui_show_descriptions: bool,
    /// Rebuild the `List` indexes from the task keys in Redis, print how many tasks were
    /// indexed and exit (safe while executors run).
    #[arg(long)]
    pub rebuild_indexes: bool,
    /// Agent backend.
    #[command(flatten)]
    pub agent: AgentArgs,
    /// gRPC server settings.
    #[command(flatten)]
    pub server: ServerArgs,
    /// Logging and metrics.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    /// Durable git workspaces.
    #[command(flatten)]
    pub workspace: WorkspaceArgs,
}

/// Validated executor configuration. Its `Debug` masks the Redis password.
#[derive(Clone)]
pub struct ExecutorConfig {
    /// Redis URL, or comma-separated seed URLs with `redis_cluster` (may hold a password:
    /// never log it).
    pub redis_url: String,
    /// Whether `redis_url` names a Redis Cluster.
    pub redis_cluster: bool,
    /// Queue shards.
    pub queue_shards: usize,
    /// Key prefix.
    pub key_prefix: String,
    /// Redis TLS material (for rediss:// URLs; empty uses the system roots).
    pub redis_tls: RedisTls,
    /// Router address, if routing is enabled.
    pub router_addr: Option<String>,
    /// TLS settings and token of the calls to the router.
    pub router_security: ClientSecurity,
    /// Route deadline.
    pub route_timeout: Duration,
    /// Engine settings.
    pub settings: Settings,
    /// Agent backend settings.
    pub agent: AgentArgs,
    /// gRPC server settings.
    pub server: ServerArgs,
    /// Request size limits.
    pub limits: TaskLimits,
    /// How often Redis health is probed.
    pub health_interval: Duration,
    /// The web dashboard, when enabled.
    pub ui: Option<crate::ui::UiSettings>,
    /// Durable git workspaces (`None`: off).
    pub workspace: Option<WorkspaceConfig>,
}

impl fmt::Debug for ExecutorConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecutorConfig")
            .field("redis_url", &service_kit::redact::url(&self.redis_url))
            .field("redis_cluster", &self.redis_cluster)
            .field("queue_shards", &self.queue_shards)
            .field("redis_tls", &self.redis_tls)
            .field("key_prefix", &self.key_prefix)
            .field(
                "router_addr",
                &self.router_addr.as_deref().map(service_kit::redact::url),
            )
            .field("router_security", &self.router_security)
            .field("route_timeout", &self.route_timeout)
            .field("settings", &self.settings)
            .field("agent", &self.agent)
            .field("server", &self.server)
            .field("limits", &self.limits)
            .field("health_interval", &self.health_interval)
            .field("ui", &self.ui)
            .field("workspace", &self.workspace)
            .finish()
    }
}

impl ExecutorConfig {
    /// Defaults suitable for tests and the demo: simulator agent, no router.
    pub fn for_redis(redis_url: impl Into<String>) -> Self {
        Self {
            redis_url: redis_url.into(),
            redis_cluster: false,
            queue_shards: settings::QUEUE_SHARDS,
            key_prefix: settings::KEY_PREFIX.into(),
            redis_tls: RedisTls::default(),
            router_addr: None,
            router_security: ClientSecurity::default(),
            route_timeout: settings::ROUTE_TIMEOUT,
            settings: Settings::default(),
            agent: AgentArgs::simulator(),
            server: ServerArgs::default(),
            limits: TaskLimits::default(),
            health_interval: settings::HEALTH_INTERVAL,
            ui: None,
            workspace: None,
        }
    }
}

impl Args {
    /// The listen address, or a one-line error naming `--listen`.
    pub fn listen_addr(&self) -> Result<SocketAddr, String> {
        self.listen.parse().map_err(|_| {
            format!(
                "--listen / EXECUTOR_LISTEN: {:?} is not a socket address (e.g. 0.0.0.0:50052)",
                self.listen
            )
        })
    }

    /// The dashboard settings, or a one-line error naming `--ui-listen`.
    pub fn ui_settings(&self) -> Result<Option<crate::ui::UiSettings>, String> {
        match self.ui_listen.trim() {
            "" => Ok(None),
            addr => {
                let listen = addr.parse().map_err(|_| {
                    format!(
                        "--ui-listen / EXECUTOR_UI_LISTEN: {addr:?} is not a socket address (e.g. 127.0.0.1:8080)"
                    )
                })?;
                Ok(Some(crate::ui::UiSettings {
                    listen,
                    show_descriptions: self.ui_show_descriptions,
                }))
            }
        }
    }

    /// Validates every setting, reading the TLS and token files; the error is one line
    /// naming the setting and never holds a password or token.
    pub fn validate(&self) -> Result<ExecutorConfig, String> {
        self.listen_addr()?;
        let redis_tls = self.redis_tls.load().map_err(|e| e.to_string())?;
        redis_target(&self.redis_url, &redis_tls, self.redis_cluster)?;
        if self.queue_shards == 0 || self.queue_shards > crate::queue::MAX_SHARDS {
            return Err(format!(
                "--queue-shards / EXECUTOR_QUEUE_SHARDS: must be between 1 and {}",
                crate::queue::MAX_SHARDS
            ));
        }
        self.server.load_security().map_err(|e| e.to_string())?;
        self.server.health_addr().map_err(|e| e.to_string())?;
        let router_security = self.router_client.load().map_err(|e| e.to_string())?;
        if self.key_prefix.is_empty() || self.key_prefix.contains(char::is_whitespace) {
            return Err(
                "--key-prefix / EXECUTOR_KEY_PREFIX: must be non-empty without whitespace".into(),
            );
        }
        let router_addr = match self.router_addr.trim() {
            "" => None,
            addr => {
                // The endpoint only: a channel would need a running Tokio runtime.
                router_security
                    .endpoint(addr)
                    .map_err(|e| format!("--router-addr / ROUTER_ADDR {e}"))?;
                Some(addr.to_string())
            }
        };
        let positive = |name: &str, d: Duration| {
            if d.is_zero() {
                Err(format!("{name}: must be greater than zero"))
            } else {
                Ok(())
            }
        };
        positive(
            "--route-timeout / EXECUTOR_ROUTE_TIMEOUT",
            *self.route_timeout,
        )?;
        positive("--archive-ttl / EXECUTOR_ARCHIVE_TTL", *self.archive_ttl)?;
        positive(
            "--specialist-timeout / EXECUTOR_SPECIALIST_TIMEOUT",
            *self.specialist_timeout,
        )?;
        if *self.lease_ttl < Duration::from_secs(1) {
            return Err("--lease-ttl / EXECUTOR_LEASE_TTL: must be at least 1s".into());
        }
        if self.max_iterations == 0 || self.max_iterations > 100_000 {
            return Err(
                "--max-iterations / EXECUTOR_MAX_ITERATIONS: must be between 1 and 100000".into(),
            );
        }
        if self.concurrency > 1024 {
            return Err("--concurrency / EXECUTOR_CONCURRENCY: must be at most 1024".into());
        }
        if self.max_deliveries == 0 {
            return Err("--max-deliveries / EXECUTOR_MAX_DELIVERIES: must be at least 1".into());
        }
        if self.specialist_max_iterations == 0 {
            return Err("--specialist-max-iterations / EXECUTOR_SPECIALIST_MAX_ITERATIONS: must be at least 1".into());
        }
        if self.team_max_parallel == 0 {
            return Err(
                "--team-max-parallel / EXECUTOR_TEAM_MAX_PARALLEL: must be at least 1".into(),
            );
        }
        if !self.agent_max_call_cost.is_finite()
            || self.agent_max_call_cost <= 0.0
            || self.agent_max_call_cost > crate::budget::MAX_BUDGET_USD
        {
            return Err(
                "--agent-max-call-cost / EXECUTOR_AGENT_MAX_CALL_COST: must be finite, > 0 and at most 1000000"
                    .into(),
            );
        }
        positive(
            "--budget-hold-ttl / EXECUTOR_BUDGET_HOLD_TTL",
            *self.budget_hold_ttl,
        )?;
        let hold = *self.router_unavailable_hold_timeout;
        if hold.as_secs() == 0 || hold.as_secs() > u64::from(u32::MAX) {
            return Err(
                "--router-unavailable-hold-timeout / EXECUTOR_ROUTER_UNAVAILABLE_HOLD_TIMEOUT: must be between 1s and 136 years"
                    .into(),
            );
        }
        if self.max_description_bytes == 0 {
            return Err(
                "--max-description-bytes / EXECUTOR_MAX_DESCRIPTION_BYTES: must be at least 1"
                    .into(),
            );
        }
        crate::agent::build_agent(&self.agent)?;
        let workspace = self.workspace.validate()?;
        let worker_id = match &self.worker_id {
            Some(w) if w.is_empty() || !w.bytes().all(|b| b.is_ascii_graphic()) => {
                return Err(
                    "--worker-id / EXECUTOR_WORKER_ID: must be printable ASCII without spaces"
                        .into(),
                );
            }
            Some(w) => w.clone(),
            None => settings::default_worker_id(),
        };
        Ok(ExecutorConfig {
            redis_url: self.redis_url.clone(),
            redis_cluster: self.redis_cluster,
            queue_shards: self.queue_shards,
            key_prefix: self.key_prefix.clone(),
            redis_tls,
            router_addr,
            router_security,
            route_timeout: *self.route_timeout,
            settings: Settings {
                worker_id,
                default_max_iterations: self.max_iterations,
                lease_ttl: *self.lease_ttl,
                archive_ttl: *self.archive_ttl,
                shutdown_grace: *self.shutdown_grace,
                checkpoint_retry: CheckpointRetry {
                    budget: *self.checkpoint_retry_budget,
                    ..CheckpointRetry::default()
                },
                team: TeamSettings {
                    specialist_timeout: *self.specialist_timeout,
                    specialist_max_iterations: self.specialist_max_iterations,
                    max_parallel: self.team_max_parallel,
                    ..TeamSettings::default()
                },
                max_deliveries: self.max_deliveries,
                concurrency: self.concurrency,
                agent_max_call_cost_usd: self.agent_max_call_cost,
                budget_hold_ttl: *self.budget_hold_ttl,
                when_router_unavailable: self.when_router_unavailable,
                router_unavailable_hold_timeout: *self.router_unavailable_hold_timeout,
                ..Settings::default()
            },
            agent: self.agent.clone(),
            server: self.server.clone(),
            limits: TaskLimits {
                max_description_bytes: self.max_description_bytes,
                ..TaskLimits::default()
            },
            health_interval: settings::HEALTH_INTERVAL,
            ui: self.ui_settings()?,
            workspace,
        })
    }
}

/// TLS files for `rediss://` connections.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct RedisTlsArgs {
    /// CA certificates (PEM file) the Redis server's certificate must chain to, for a
    /// rediss:// URL (default: the system roots).
    #[arg(long, env = "REDIS_TLS_CA", value_name = "PEM")]
    pub redis_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM file) for a Redis server that requires one; needs
    /// --redis-tls-key.
    #[arg(long, env = "REDIS_TLS_CERT", value_name = "PEM")]
    pub redis_tls_cert: Option<PathBuf>,
    /// Private key of --redis-tls-cert (PEM file).
    #[arg(long, env = "REDIS_TLS_KEY", value_name = "PEM")]
    pub redis_tls_key: Option<PathBuf>,
}

const REDIS_TLS_CA: &str = "--redis-tls-ca / REDIS_TLS_CA";
const REDIS_TLS_CERT: &str = "--redis-tls-cert / REDIS_TLS_CERT";
const REDIS_TLS_KEY: &str = "--redis-tls-key / REDIS_TLS_KEY";

impl RedisTlsArgs {
    /// Reads and checks the files.
    pub fn load(&self) -> Result<RedisTls, SecurityError> {
        let root_cert = match &self.redis_tls_ca {
            Some(path) => Some(read_certificates(path, REDIS_TLS_CA)?),
            None => None,
        };
        let client = match (&self.redis_tls_cert, &self.redis_tls_key) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(SecurityError::Config(format!(
                    "{REDIS_TLS_KEY}: required with {REDIS_TLS_CERT}"
                )));
            }
            (None, Some(_)) => {
                return Err(SecurityError::Config(format!(
                    "{REDIS_TLS_CERT}: required with {REDIS_TLS_KEY}"
                )));
            }
            (Some(c), Some(k)) => Some((
                read_certificates(c, REDIS_TLS_CERT)?,
                read_private_key(k, REDIS_TLS_KEY)?,
            )),
        };
        Ok(RedisTls { root_cert, client })
    }
}

/// Loaded Redis TLS material (PEM); empty means the system roots and no client certificate.
#[derive(Clone, Default)]
pub struct RedisTls {
    root_cert: Option<Vec<u8>>,
    client: Option<(Vec<u8>, Vec<u8>)>,
}

// By hand: the derived Debug would print the client key.
impl fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTls")
            .field("ca", &self.root_cert.is_some())
            .field("client_certificate", &self.client.is_some())
            .finish()
    }
}

impl RedisTls {
    /// Whether a CA or client certificate is configured.
    pub fn is_configured(&self) -> bool {
        self.root_cert.is_some() || self.client.is_some()
    }
}

/// Where Redis is: `url` as one server, or with `cluster` as comma-separated seed node
/// URLs of a Redis Cluster. The error is one line naming the setting, never the URL.
pub fn redis_target(url: &str, tls: &RedisTls, cluster: bool) -> Result<RedisTarget, String> {
    if !cluster {
        return redis_client(url, tls).map(RedisTarget::Standalone);
    }
    const SETTING: &str = "--redis-url / REDIS_URL (with --redis-cluster)";
    let mut seeds = Vec::new();
    for (n, seed) in url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .enumerate()
    {
        // Each seed is checked like a standalone URL (scheme, TLS files).
        redis_client(seed, tls).map_err(|e| format!("{SETTING}: seed {}: {e}", n + 1))?;
        seeds.push(seed.into_connection_info().map_err(|e| {
            format!(
                "{SETTING}: seed {} is not a valid Redis URL ({})",
                n + 1,
                e.category()
            )
        })?);
    }
    if seeds.is_empty() {
        return Err(format!("{SETTING}: give at least one seed node URL"));
    }
    let certs = tls.is_configured().then(|| redis::TlsCertificates {
        client_tls: tls
            .client
            .as_ref()
            .map(|(cert, key)| redis::ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.clone(),
            }),
        root_cert: tls.root_cert.clone(),
    });
    crate::redis_connection::cluster_target(seeds, certs).map_err(|e| {
        format!(
            "{SETTING}: not usable as a cluster ({})",
            service_kit::redact::passwords_in(&e.to_string())
        )
    })
}

/// A Redis client for `url` (`redis://` or `rediss://`, with or without a password) and
/// `tls`. The error is one line naming the setting and never echoes the URL.
pub fn redis_client(url: &str, tls: &RedisTls) -> Result<redis::Client, String> {
    const SETTING: &str = "--redis-url / REDIS_URL";
    let info = url
        .into_connection_info()
        .map_err(|e| format!("{SETTING}: not a valid Redis URL ({})", e.category()))?;
    let is_tls = matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
    if !is_tls {
        if tls.is_configured() {
            return Err(format!(
                "{REDIS_TLS_CA}: TLS files are given but {SETTING} is not rediss://"
            ));
        }
        return redis::Client::open(info)
            .map_err(|e| format!("{SETTING}: not usable ({})", e.category()));
    }
    // redis-rs builds its rustls config from the process-wide provider.
    service_kit::tls::install_crypto_provider();
    if !tls.is_configured() {
        return redis::Client::open(info)
            .map_err(|e| format!("{SETTING}: not usable ({})", e.category()));
    }
    let certificates = redis::TlsCertificates {
        client_tls: tls
            .client
            .as_ref()
            .map(|(cert, key)| redis::ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.clone(),
            }),
        root_cert: tls.root_cert.clone(),
    };
    redis::Client::build_with_tls(info, certificates).map_err(|e| {
        format!(
            "{REDIS_TLS_CA} / {REDIS_TLS_CERT}: unusable for {SETTING} ({})",
            service_kit::redact::passwords_in(&e.to_string())
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("executor-service").chain(args.iter().copied()))
            .unwrap()
    }

    #[test]
    fn defaults_validate() {
        let cfg = parse(&[]).validate().unwrap();
        assert_eq!(cfg.settings.concurrency, 4);
        assert_eq!(cfg.router_addr.as_deref(), Some("http://127.0.0.1:50051"));
    }

    #[test]
    fn flags_and_library_defaults_agree() {
        let flags = parse(&[]).validate().unwrap();
        let library = ExecutorConfig::for_redis(settings::REDIS_URL);
        let (f, l) = (&flags.settings, &library.settings);
        assert_eq!(f.default_max_iterations, l.default_max_iterations);
        assert_eq!(f.lease_ttl, l.lease_ttl);
        assert_eq!(f.archive_ttl, l.archive_ttl);
        assert_eq!(f.shutdown_grace, l.shutdown_grace);
        assert_eq!(f.checkpoint_retry.budget, l.checkpoint_retry.budget);
        assert_eq!(f.team.specialist_timeout, l.team.specialist_timeout);
        assert_eq!(
            f.team.specialist_max_iterations,
            l.team.specialist_max_iterations
        );
        assert_eq!(f.team.max_parallel, l.team.max_parallel);
        assert_eq!(f.max_deliveries, l.max_deliveries);
        assert_eq!(f.concurrency, l.concurrency);
        assert_eq!(flags.key_prefix, library.key_prefix);
        assert_eq!(flags.route_timeout, library.route_timeout);
        assert_eq!(flags.health_interval, library.health_interval);
        assert_eq!(
            flags.limits.max_description_bytes,
            library.limits.max_description_bytes
        );
    }

    #[test]
    fn each_bad_setting_is_named_in_one_line() {
        for (args, name) in [
            (vec!["--listen", "nope"], "--listen"),
            (vec!["--redis-url", "http://x"], "--redis-url"),
            (vec!["--lease-ttl", "10ms"], "--lease-ttl"),
            (vec!["--max-iterations", "0"], "--max-iterations"),
            (vec!["--router-addr", "not a uri"], "--router-addr"),
            (vec!["--agent", "command"], "--agent-command"),
            (vec!["--queue-shards", "0"], "--queue-shards"),
            (
                vec!["--redis-cluster", "--redis-url", "redis://a:1,http://b"],
                "--redis-url",
            ),
            (vec!["--redis-cluster", "--redis-url", " , "], "--redis-url"),
        ] {
            let err = parse(&args).validate().unwrap_err();
            assert!(err.contains(name), "{args:?}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn rediss_urls_with_passwords_parse() {
        let cfg = parse(&["--redis-url", "rediss://app:s3cret@redis.internal:6380/0"])
            .validate()
            .unwrap();
        assert!(!format!("{cfg:?}").contains("s3cret"));
        let c = redis_client(&cfg.redis_url, &cfg.redis_tls).unwrap();
        assert!(matches!(
            c.get_connection_info().addr(),
            redis::ConnectionAddr::TcpTls { .. }
        ));
    }

    #[test]
    fn cluster_seeds_parse_and_keep_their_password_out_of_debug() {
        let cfg = parse(&[
            "--redis-cluster",
            "--redis-url",
            "redis://:s3cret@10.0.0.1:7000, redis://:s3cret@10.0.0.2:7000",
            "--queue-shards",
            "6",
        ])
        .validate()
        .unwrap();
        assert!(cfg.redis_cluster);
        assert_eq!(cfg.queue_shards, 6);
        assert!(!format!("{cfg:?}").contains("s3cret"));
        let target = redis_target(&cfg.redis_url, &cfg.redis_tls, true).unwrap();
        assert!(target.is_cluster());
    }

    #[test]
    fn redis_tls_files_are_checked() {
        let dir = std::env::temp_dir();
        let ca = dir.join(format!("missing-ca-{}.pem", std::process::id()));
        let err = parse(&["--redis-tls-ca", ca.to_str().unwrap()])
            .validate()
            .unwrap_err();
        assert!(
            err.starts_with("--redis-tls-ca / REDIS_TLS_CA: cannot read"),
            "{err}"
        );
        let err = parse(&["--redis-tls-cert", "/c.pem"])
            .validate()
            .unwrap_err();
        assert!(err.starts_with("--redis-tls-key"), "{err}");
    }

    #[test]
    fn router_tls_settings_need_https() {
        let err = parse(&["--router-tls-domain", "router.internal"])
            .validate()
            .unwrap_err();
        assert!(err.starts_with("--router-addr"), "{err}");
        assert!(err.contains("use https://"), "{err}");
        let err = parse(&["--router-tls-cert", "/c.pem"])
            .validate()
            .unwrap_err();
        assert!(err.starts_with("--router-tls-key"), "{err}");
        let err = parse(&[
            "--agent-tls-key",
            "/k.pem",
            "--agent=remote",
            "--agent-endpoint",
            "https://a:1",
        ])
        .validate()
        .unwrap_err();
        assert!(err.starts_with("--agent-tls-cert"), "{err}");
    }

    #[test]
    fn a_redis_password_never_appears_in_errors() {
        for url in ["redis://:hunter2@/x y", "http://:hunter2@127.0.0.1:6379/"] {
            let e = parse(&["--redis-url", url])
                .validate()
                .expect_err("an unusable Redis URL is a config error");
            assert!(e.contains("--redis-url"), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
    }
}
