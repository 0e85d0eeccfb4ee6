//! Agent configuration from flags and environment variables, and the one place that
//! turns it into a [`SharedAgent`].

use super::{
    CommandAgent, CommandConfig, CommandConfigError, RemoteAgent, RetryPolicy, SharedAgent,
    SimulatedAgent,
};
use service_kit::auth::BearerToken;
use service_kit::security::{ClientSecurity, Secret, SecurityError};
use service_kit::tls::ClientTlsFiles;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Most retries accepted by `--agent-retries`.
pub const MAX_RETRIES: u32 = 10;

/// Which agent backend runs iterations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AgentKind {
    /// The built-in deterministic simulator.
    Simulator,
    /// An external program per iteration (JSON on stdin and stdout).
    Command,
    /// A remote `taskrouter.v1.Agent` gRPC service.
    Remote,
}

/// Agent flags (flatten into the executor's command line).
#[derive(Clone, Debug, clap::Args)]
pub struct AgentArgs {
    /// Agent backend.
    #[arg(long = "agent", env = "EXECUTOR_AGENT", value_enum, default_value_t = AgentKind::Simulator)]
    pub agent: AgentKind,

    /// Program run per iteration (--agent=command): a path, or a name on PATH.
    #[arg(long, env = "EXECUTOR_AGENT_COMMAND")]
    pub agent_command: Option<PathBuf>,

    /// Argument for the program; repeat for several (the env var is comma-separated).
    #[arg(
        long = "agent-arg",
        env = "EXECUTOR_AGENT_ARGS",
        value_delimiter = ',',
        allow_hyphen_values = true
    )]
    pub agent_args: Vec<String>,

    /// Working directory of the program (default: the executor's).
    #[arg(long, env = "EXECUTOR_AGENT_WORKDIR")]
    pub agent_workdir: Option<PathBuf>,

    /// Environment variable passed to the program besides PATH, HOME and LANG; repeatable.
    #[arg(
        long = "agent-env-pass",
        env = "EXECUTOR_AGENT_ENV_PASS",
        value_delimiter = ','
    )]
    pub agent_env_pass: Vec<String>,

    /// Remote agent URL (--agent=remote), e.g. http://agent:50051.
    #[arg(long, env = "EXECUTOR_AGENT_ENDPOINT")]
    pub agent_endpoint: Option<String>,

    /// Timeout of one iteration (command and remote agents), e.g. 300s or 5m.
    #[arg(long, env = "EXECUTOR_AGENT_TIMEOUT", default_value = "300s", value_parser = humantime::parse_duration)]
    pub agent_timeout: Duration,

    /// Retries of a failed or timed-out iteration (2 = 3 attempts).
    #[arg(long, env = "EXECUTOR_AGENT_RETRIES", default_value_t = 2)]
    pub agent_retries: u32,

    /// Latency of each simulated iteration (--agent=simulator).
    #[arg(long, env = "EXECUTOR_SIM_LATENCY", default_value = "0ms", value_parser = humantime::parse_duration)]
    pub sim_latency: Duration,

    /// TLS and token of the remote agent's calls.
    #[command(flatten)]
    pub client: AgentClientArgs,
}

/// Environment variable holding the token sent to a remote agent.
pub const AGENT_AUTH_TOKEN_ENV: &str = "EXECUTOR_AGENT_AUTH_TOKEN";

/// TLS and token flags of the calls to a remote agent (--agent=remote).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct AgentClientArgs {
    /// CA certificates (PEM file) the agent's certificate must chain to, for an https://
    /// --agent-endpoint (default: the system roots).
    #[arg(long, env = "EXECUTOR_AGENT_TLS_CA", value_name = "PEM")]
    pub agent_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM file) presented to the agent (mutual TLS); needs
    /// --agent-tls-key.
    #[arg(long, env = "EXECUTOR_AGENT_TLS_CERT", value_name = "PEM")]
    pub agent_tls_cert: Option<PathBuf>,
    /// Private key of --agent-tls-cert (PEM file).
    #[arg(long, env = "EXECUTOR_AGENT_TLS_KEY", value_name = "PEM")]
    pub agent_tls_key: Option<PathBuf>,
    /// Name the agent's certificate must carry (default: the host of --agent-endpoint).
    #[arg(long, env = "EXECUTOR_AGENT_TLS_DOMAIN", value_name = "NAME")]
    pub agent_tls_domain: Option<String>,
    /// File holding the bearer token sent to the agent; the token may instead be set in
    /// EXECUTOR_AGENT_AUTH_TOKEN.
    #[arg(long, env = "EXECUTOR_AGENT_AUTH_TOKEN_FILE", value_name = "FILE")]
    pub agent_auth_token_file: Option<PathBuf>,
    /// The token itself, from EXECUTOR_AGENT_AUTH_TOKEN (environment only).
    #[arg(skip = Secret::from_env(AGENT_AUTH_TOKEN_ENV))]
    pub agent_auth_token: Option<Secret>,
}

impl AgentClientArgs {
    /// Reads and checks the files; the error is one line naming the setting.
    pub fn load(&self) -> Result<ClientSecurity, SecurityError> {
        let tls = ClientTlsFiles {
            ca: self.agent_tls_ca.clone(),
            cert: self.agent_tls_cert.clone(),
            key: self.agent_tls_key.clone(),
            domain: self.agent_tls_domain.clone(),
        }
        .load("--agent-", "EXECUTOR_AGENT_")?;
        let token = BearerToken::resolve(
            self.agent_auth_token_file.as_deref(),
            "--agent-auth-token-file / EXECUTOR_AGENT_AUTH_TOKEN_FILE",
            self.agent_auth_token.as_ref(),
            AGENT_AUTH_TOKEN_ENV,
        )?;
        Ok(ClientSecurity { tls, token })
    }
}

impl AgentArgs {
    /// The defaults: the simulator without latency, 300 s timeout, 2 retries.
    pub fn simulator() -> Self {
        Self {
            agent: AgentKind::Simulator,
            agent_command: None,
            agent_args: Vec::new(),
            agent_workdir: None,
            agent_env_pass: Vec::new(),
            agent_endpoint: None,
            agent_timeout: Duration::from_secs(300),
            agent_retries: 2,
            sim_latency: Duration::ZERO,
            client: AgentClientArgs::default(),
        }
    }

    /// The retry policy for iterations: `--agent-retries` retries with the default backoff.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::with_retries(self.agent_retries.min(MAX_RETRIES))
    }
}

impl Default for AgentArgs {
    fn default() -> Self {
        Self::simulator()
    }
}

/// Builds the configured agent. The error is one line naming the offending setting.
pub fn build_agent(args: &AgentArgs) -> Result<SharedAgent, String> {
    if args.agent_timeout.is_zero() {
        return Err("--agent-timeout must be greater than zero".to_owned());
    }
    if args.agent_retries > MAX_RETRIES {
        return Err(format!("--agent-retries must be at most {MAX_RETRIES}"));
    }
    match args.agent {
        AgentKind::Simulator => Ok(Arc::new(SimulatedAgent::new(args.sim_latency))),
        AgentKind::Command => {
            let program = args
                .agent_command
                .clone()
                .ok_or("--agent-command is required when --agent=command")?;
            let config = CommandConfig {
                program,
                args: args.agent_args.clone(),
                timeout: args.agent_timeout,
                workdir: args.agent_workdir.clone(),
                env_pass: args.agent_env_pass.clone(),
            };
            let agent = CommandAgent::new(config).map_err(|e| match e {
                CommandConfigError::Program { path, reason } => {
                    format!("--agent-command {}: {reason}", path.display())
                }
                CommandConfigError::Workdir { path, reason } => {
                    format!("--agent-workdir {}: {reason}", path.display())
                }
                CommandConfigError::EnvName(name) => {
                    format!("--agent-env-pass {name:?}: not a valid environment variable name")
                }
                CommandConfigError::Timeout => {
                    "--agent-timeout must be greater than zero".to_owned()
                }
            })?;
            Ok(Arc::new(agent))
        }
        AgentKind::Remote => {
            let endpoint = args
                .agent_endpoint
                .as_deref()
                .ok_or("--agent-endpoint is required when --agent=remote")?;
            let security = args.client.load().map_err(|e| e.to_string())?;
            let agent = RemoteAgent::with_security(endpoint, args.agent_timeout, &security)
                .map_err(|e| format!("--agent-endpoint {e}"))?;
            Ok(Arc::new(agent))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        agent: AgentArgs,
    }

    fn parse(args: &[&str]) -> Result<AgentArgs, String> {
        Cli::try_parse_from(std::iter::once("executor").chain(args.iter().copied()))
            .map(|c| c.agent)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_match_simulator() {
        let a = parse(&[]).unwrap();
        let d = AgentArgs::simulator();
        assert_eq!(a.agent, d.agent);
        assert_eq!(a.agent_timeout, d.agent_timeout);
        assert_eq!(a.agent_retries, d.agent_retries);
        assert_eq!(a.sim_latency, d.sim_latency);
        assert!(a.agent_args.is_empty() && a.agent_env_pass.is_empty());
        assert_eq!(a.retry_policy(), RetryPolicy::default());
        assert_eq!(build_agent(&a).unwrap().kind(), "simulator");
    }

    #[test]
    fn parses_command_flags() {
        let a = parse(&[
            "--agent=command",
            "--agent-command",
            "sh",
            "--agent-arg",
            "-c",
            "--agent-arg=exit 0",
            "--agent-env-pass",
            "OPENAI_API_KEY,GIT_TOKEN",
            "--agent-timeout",
            "2m",
            "--agent-retries",
            "0",
            "--sim-latency",
            "15ms",
        ])
        .unwrap();
        assert_eq!(a.agent, AgentKind::Command);
        assert_eq!(a.agent_args, ["-c", "exit 0"]);
        assert_eq!(a.agent_env_pass, ["OPENAI_API_KEY", "GIT_TOKEN"]);
        assert_eq!(a.agent_timeout, Duration::from_secs(120));
        assert_eq!(a.retry_policy().max_attempts, 1);
        assert_eq!(a.sim_latency, Duration::from_millis(15));
        assert_eq!(build_agent(&a).unwrap().kind(), "command");
        assert!(parse(&["--agent=robot"]).is_err());
        assert!(parse(&["--agent-timeout=soon"]).is_err());
    }

    #[test]
    fn build_errors_name_the_setting() {
        let cases: [(AgentArgs, &str); 7] = [
            (
                AgentArgs {
                    agent: AgentKind::Command,
                    ..AgentArgs::simulator()
                },
                "--agent-command is required when --agent=command",
            ),
            (
                AgentArgs {
                    agent: AgentKind::Command,
                    agent_command: Some("/no/such/agent".into()),
                    ..AgentArgs::simulator()
                },
                "--agent-command /no/such/agent: ",
            ),
            (
                AgentArgs {
                    agent: AgentKind::Command,
                    agent_command: Some(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml").into()),
                    ..AgentArgs::simulator()
                },
                "Cargo.toml: not an executable file",
            ),
            (
                AgentArgs {
                    agent: AgentKind::Command,
                    agent_command: Some("sh".into()),
                    agent_workdir: Some("/no/such/dir".into()),
                    ..AgentArgs::simulator()
                },
                "--agent-workdir /no/such/dir: ",
            ),
            (
                AgentArgs {
                    agent: AgentKind::Remote,
                    ..AgentArgs::simulator()
                },
                "--agent-endpoint is required when --agent=remote",
            ),
            (
                AgentArgs {
                    agent: AgentKind::Remote,
                    agent_endpoint: Some("localhost:50051".into()),
                    ..AgentArgs::simulator()
                },
                "--agent-endpoint localhost:50051: ",
            ),
            (
                AgentArgs {
                    agent_timeout: Duration::ZERO,
                    ..AgentArgs::simulator()
                },
                "--agent-timeout must be greater than zero",
            ),
        ];
        for (args, expected) in cases {
            let err = build_agent(&args).err().unwrap();
            assert!(err.contains(expected), "{err:?} lacks {expected:?}");
            assert!(!err.contains('\n'), "{err:?}");
        }
        let err = build_agent(&AgentArgs {
            agent_retries: 11,
            ..AgentArgs::simulator()
        })
        .err()
        .unwrap();
        assert_eq!(err, "--agent-retries must be at most 10");
    }
}
