//! The `rollout-controller` command line (flags with env fallbacks).

use crate::configmap::{ConfigMapRef, check_key};
use crate::controller::ControllerConfig;
use crate::gates::{
    DEFAULT_MAX_COST_PER_COMPLETED_USD, DEFAULT_MAX_DURATION_RATIO, DEFAULT_MAX_FALLBACK_RATE,
    DEFAULT_MAX_SUCCESS_DROP_POINTS, DEFAULT_MIN_FINISHED, Gates,
};
use service_kit::telemetry::TelemetryArgs;
use std::path::PathBuf;
use std::time::Duration;

/// Command line of the `rollout-controller` binary.
#[derive(clap::Parser, Clone, Debug)]
#[command(
    name = "rollout-controller",
    version,
    about = "taskrouter rollout controller: moves multi_agent.rollout_percent through steps and rolls back on failing gates"
)]
pub struct Args {
    /// Redis URL of the executor's records (`redis://[:password@]host:port/db`).
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379/",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub redis_url: String,
    /// Prefix of the executor's Redis keys (its --key-prefix); the rollout's keys live
    /// under it too.
    #[arg(long, env = "ROLLOUT_KEY_PREFIX", default_value = "taskrouter")]
    pub key_prefix: String,
    /// The router's policy file (its --policy), rewritten atomically at each step.
    /// Exactly one of this and --policy-configmap.
    #[arg(
        long,
        env = "ROLLOUT_POLICY",
        required_unless_present = "policy_configmap",
        conflicts_with = "policy_configmap"
    )]
    pub policy: Option<PathBuf>,
    /// The routers' policy ConfigMap, `NAMESPACE/NAME` or `NAME` (the pod's namespace),
    /// replaced through the Kubernetes API at each step; only from inside a pod (in-cluster
    /// service-account credentials).
    #[arg(long, env = "ROLLOUT_POLICY_CONFIGMAP", value_parser = parse_configmap)]
    pub policy_configmap: Option<ConfigMapRef>,
    /// The key of that ConfigMap holding the policy (the file name the routers read).
    #[arg(
        long,
        env = "ROLLOUT_POLICY_CONFIGMAP_KEY",
        default_value = "policy.toml",
        value_parser = parse_key
    )]
    pub policy_configmap_key: String,
    /// Candidate policy to roll out; its rollout_percent is replaced at each step. Without
    /// it, only an active rollout is resumed.
    #[arg(long, env = "ROLLOUT_CANDIDATE")]
    pub candidate: Option<PathBuf>,
    /// Keep running after the rollout ends or when there is nothing to do, until
    /// SIGTERM (for a Deployment, which would restart an exited process). A --candidate
    /// file that does not exist then means "no candidate yet" instead of an error.
    #[arg(long, env = "ROLLOUT_STAY_RUNNING")]
    pub stay_running: bool,
    /// Steps of rollout_percent, comma-separated, increasing.
    #[arg(
        long,
        env = "ROLLOUT_STEPS",
        value_delimiter = ',',
        default_value = "10,25,50,100"
    )]
    pub steps: Vec<u32>,
    /// Least time at a step before it advances.
    #[arg(long, env = "ROLLOUT_INTERVAL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// How often gates and operator requests are checked (a failing gate rolls back at
    /// the next check).
    #[arg(long, env = "ROLLOUT_CHECK_EVERY", default_value = "30s", value_parser = humantime::parse_duration)]
    pub check_every: Duration,
    /// Only tasks finished this recently count (default: --interval).
    #[arg(long, env = "ROLLOUT_WINDOW", value_parser = humantime::parse_duration)]
    pub window: Option<Duration>,
    /// Most the team path's success rate may trail the single path's, in points.
    #[arg(long, env = "ROLLOUT_MAX_SUCCESS_DROP_POINTS", default_value_t = DEFAULT_MAX_SUCCESS_DROP_POINTS)]
    pub max_success_drop_points: f64,
    /// Highest share of team-path tasks that fell back (0..=1).
    #[arg(long, env = "ROLLOUT_MAX_FALLBACK_RATE", default_value_t = DEFAULT_MAX_FALLBACK_RATE)]
    pub max_fallback_rate: f64,
    /// Highest cost per completed team-path task, USD.
    #[arg(long, env = "ROLLOUT_MAX_COST_PER_COMPLETED_USD", default_value_t = DEFAULT_MAX_COST_PER_COMPLETED_USD)]
    pub max_cost_per_completed_usd: f64,
    /// Highest team-path median duration as a multiple of the single path's.
    #[arg(long, env = "ROLLOUT_MAX_DURATION_RATIO", default_value_t = DEFAULT_MAX_DURATION_RATIO)]
    pub max_duration_ratio: f64,
    /// Fewest finished team-path tasks in the window before a step can advance or roll back.
    #[arg(long, env = "ROLLOUT_MIN_FINISHED", default_value_t = DEFAULT_MIN_FINISHED)]
    pub min_finished: u64,
    /// Logging and metrics settings.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

fn parse_configmap(s: &str) -> Result<ConfigMapRef, String> {
    s.parse()
}

fn parse_key(s: &str) -> Result<String, String> {
    check_key(s).map(|()| s.to_string())
}

/// Where the controller writes the policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyTarget {
    /// A file, rewritten atomically.
    File(PathBuf),
    /// One key of a ConfigMap, through the Kubernetes API.
    ConfigMap {
        /// Which ConfigMap.
        configmap: ConfigMapRef,
        /// Which key.
        key: String,
    },
}

impl Args {
    /// Where the policy goes (clap has checked that exactly one target is given).
    pub fn policy_target(&self) -> PolicyTarget {
        match (&self.policy_configmap, &self.policy) {
            (Some(configmap), _) => PolicyTarget::ConfigMap {
                configmap: configmap.clone(),
                key: self.policy_configmap_key.clone(),
            },
            (None, Some(path)) => PolicyTarget::File(path.clone()),
            // Unreachable after clap's check; an empty path fails loudly at the first write.
            (None, None) => PolicyTarget::File(PathBuf::new()),
        }
    }

    /// The controller settings (without the candidate text, read separately).
    pub fn controller_config(&self) -> ControllerConfig {
        ControllerConfig {
            steps: self.steps.clone(),
            interval: self.interval,
            check_every: self.check_every.min(self.interval),
            window: self.window.unwrap_or(self.interval),
            gates: Gates {
                max_success_drop_points: self.max_success_drop_points,
                max_fallback_rate: self.max_fallback_rate,
                max_cost_per_completed_usd: self.max_cost_per_completed_usd,
                max_duration_ratio: self.max_duration_ratio,
                min_finished: self.min_finished,
            },
            candidate: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn defaults_are_the_plans_steps_and_valid() {
        let args = Args::try_parse_from(["rollout-controller", "--policy", "/p.toml"]).unwrap();
        let c = args.controller_config();
        assert_eq!(c.steps, [10, 25, 50, 100]);
        assert_eq!(c.window, Duration::from_secs(3600));
        assert!(c.validate().is_ok());
    }

    #[test]
    fn the_policy_goes_to_exactly_one_place() {
        let args = Args::try_parse_from(["rollout-controller", "--policy", "/p.toml"]).unwrap();
        assert_eq!(args.policy_target(), PolicyTarget::File("/p.toml".into()));
        let args = Args::try_parse_from([
            "rollout-controller",
            "--policy-configmap",
            "taskrouter/router-policy",
        ])
        .unwrap();
        assert_eq!(
            args.policy_target(),
            PolicyTarget::ConfigMap {
                configmap: "taskrouter/router-policy".parse().unwrap(),
                key: "policy.toml".into(),
            }
        );
        let both = Args::try_parse_from([
            "rollout-controller",
            "--policy",
            "/p.toml",
            "--policy-configmap",
            "router-policy",
        ])
        .unwrap_err();
        assert_eq!(both.kind(), clap::error::ErrorKind::ArgumentConflict);
        let neither = Args::try_parse_from(["rollout-controller"]).unwrap_err();
        assert_eq!(
            neither.kind(),
            clap::error::ErrorKind::MissingRequiredArgument
        );
        for argv in [
            &["rollout-controller", "--policy-configmap", "Bad/Name"][..],
            &[
                "rollout-controller",
                "--policy-configmap",
                "x",
                "--policy-configmap-key",
                "a/b",
            ],
        ] {
            let e = Args::try_parse_from(argv).unwrap_err();
            assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation, "{e}");
            assert!(e.to_string().contains(argv[argv.len() - 2]), "{e}");
        }
    }

    #[test]
    fn bad_steps_name_the_flag() {
        for steps in ["10,5", "0,10", "50,150"] {
            let args = Args::try_parse_from([
                "rollout-controller",
                "--policy",
                "/p.toml",
                "--steps",
                steps,
            ])
            .unwrap();
            let e = args.controller_config().validate().unwrap_err();
            assert!(e.starts_with("--steps"), "{steps}: {e}");
        }
    }
}
