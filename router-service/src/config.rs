//! Router configuration: the command line (flags with env fallbacks) and the settings
//! [`crate::serve`] takes.

use service_kit::server::ServerArgs;
use service_kit::telemetry::TelemetryArgs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Default pause after a file-system event before the policy is re-read.
pub const DEFAULT_RELOAD_DEBOUNCE: Duration = Duration::from_millis(200);
/// Default of `--policy-poll-interval`, as clap shows and parses it; [`RouterConfig`]'s
/// defaults parse the same text.
pub const DEFAULT_POLICY_POLL_INTERVAL: &str = "1s";

/// Settings of one router server.
#[derive(Clone, Debug)]
pub struct RouterConfig {
    /// Address the listener was (or is to be) bound to; informational for [`crate::serve`],
    /// which takes an already-bound listener.
    pub listen: SocketAddr,
    /// Policy file; `None` uses the built-in policy.
    pub policy_path: Option<PathBuf>,
    /// Candidate policy evaluated beside the live one on every Route (never acted upon).
    pub shadow_policy_path: Option<PathBuf>,
    /// Transport settings shared with the executor.
    pub server: ServerArgs,
    /// How often the policy file is re-read as a safety net for missed events; zero disables.
    pub reload_poll_interval: Duration,
    /// Quiet time after a file-system event before the policy is re-read.
    pub reload_debounce: Duration,
}

impl RouterConfig {
    /// Built-in policy, `127.0.0.1:0` (for in-process use; the binary's default is
    /// `--listen`'s), and every other setting at the binary's default.
    pub fn with_defaults() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            policy_path: None,
            shadow_policy_path: None,
            server: ServerArgs::default(),
            reload_poll_interval: service_kit::server::defaults::duration(
                DEFAULT_POLICY_POLL_INTERVAL,
            ),
            reload_debounce: DEFAULT_RELOAD_DEBOUNCE,
        }
    }
}

/// Command line of the `router-service` binary.
#[derive(clap::Parser, Clone, Debug)]
#[command(
    name = "router-service",
    version,
    about = "taskrouter router: decides single-agent or team execution for each coding task"
)]
pub struct Args {
    /// Address to serve gRPC on.
    #[arg(long, env = "ROUTER_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,
    /// Policy TOML file (hot-reloaded); the built-in policy when unset.
    #[arg(long = "policy", env = "ROUTER_POLICY")]
    pub policy: Option<PathBuf>,
    /// Candidate policy TOML file (hot-reloaded) evaluated beside the live one on every
    /// Route; answers stay the live policy's. Unset: no shadow evaluation.
    #[arg(long = "shadow-policy", env = "ROUTER_SHADOW_POLICY")]
    pub shadow_policy: Option<PathBuf>,
    /// How often the policy file is re-read as a safety net for missed change events; 0 disables.
    #[arg(long, env = "ROUTER_POLICY_POLL_INTERVAL", default_value = DEFAULT_POLICY_POLL_INTERVAL, value_parser = humantime::parse_duration)]
    pub policy_poll_interval: Duration,
    /// Parse the configuration, load and validate the policy, print its version and exit.
    #[arg(long)]
    pub check_config: bool,
    /// gRPC transport settings.
    #[command(flatten)]
    pub server: ServerArgs,
    /// Logging and metrics settings.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

impl Args {
    /// The server settings these arguments describe.
    pub fn router_config(&self) -> RouterConfig {
        RouterConfig {
            listen: self.listen,
            policy_path: self.policy.clone(),
            shadow_policy_path: self.shadow_policy.clone(),
            server: self.server.clone(),
            reload_poll_interval: self.policy_poll_interval,
            reload_debounce: DEFAULT_RELOAD_DEBOUNCE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn no_arguments_gives_a_runnable_configuration() {
        let args = Args::try_parse_from(["router-service"]).unwrap();
        let c = args.router_config();
        assert_eq!(c.listen, "0.0.0.0:50051".parse().unwrap());
        assert_eq!(c.reload_poll_interval, Duration::from_secs(1));
        assert!(!args.check_config);
    }

    #[test]
    fn in_process_defaults_are_the_binarys() {
        let args = Args::try_parse_from(["router-service"]).unwrap();
        let from_flags = args.router_config();
        let built = RouterConfig::with_defaults();
        assert_eq!(built.reload_poll_interval, from_flags.reload_poll_interval);
        assert_eq!(built.reload_debounce, from_flags.reload_debounce);
        assert_eq!(built.server.drain_timeout, from_flags.server.drain_timeout);
        assert_eq!(
            built.server.max_connection_age,
            from_flags.server.max_connection_age
        );
        assert_eq!(
            built.server.concurrency_limit_per_connection,
            from_flags.server.concurrency_limit_per_connection
        );
        assert_eq!(
            built.server.request_timeout,
            from_flags.server.request_timeout
        );
    }

    #[test]
    fn flags_override_defaults() {
        let args = Args::try_parse_from([
            "router-service",
            "--listen",
            "127.0.0.1:7000",
            "--policy",
            "/etc/router/policy.toml",
            "--policy-poll-interval",
            "250ms",
            "--shadow-policy",
            "/etc/router/candidate.toml",
            "--check-config",
        ])
        .unwrap();
        let c = args.router_config();
        assert_eq!(c.listen.port(), 7000);
        assert_eq!(
            c.policy_path,
            Some(PathBuf::from("/etc/router/policy.toml"))
        );
        assert_eq!(c.reload_poll_interval, Duration::from_millis(250));
        assert_eq!(
            c.shadow_policy_path,
            Some(PathBuf::from("/etc/router/candidate.toml"))
        );
        assert!(args.check_config);
    }

    #[test]
    fn a_bad_listen_address_is_rejected_naming_the_flag() {
        let e = Args::try_parse_from(["router-service", "--listen", "nope"]).unwrap_err();
        assert!(e.to_string().contains("--listen"), "{e}");
    }
}
