//! Pluggable coding agents. The executor calls one iteration at a time through the
//! [`Agent`] trait; backends are the deterministic simulator, an external command
//! (JSON on stdin/stdout) and a remote gRPC `taskrouter.v1.Agent` service.

pub mod command;
pub mod config;
pub mod remote;
pub mod retry;
pub mod simulator;

pub use command::{CommandAgent, CommandConfig, CommandConfigError};
pub use config::{AgentArgs, AgentClientArgs, AgentKind, build_agent};
pub use remote::RemoteAgent;
pub use retry::{RetryOutcome, RetryPolicy, run_with_retry};
pub use simulator::SimulatedAgent;

use crate::error::{Error, Result};
use std::path::PathBuf;
use std::sync::Arc;
use taskrouter_proto::v1::{AgentStep, Task};

/// What one iteration is asked to do.
#[derive(Clone, Debug)]
pub struct IterationInput {
    /// The task (shared, never copied per iteration).
    pub task: Arc<Task>,
    /// "agent" on the single path; "lead" or a specialist role on the team path.
    pub role: String,
    /// 1-based iteration number within this role.
    pub iteration: u32,
    /// Which step of the work this is.
    pub step: AgentStep,
    /// Outputs of this role's earlier iterations, most recent last (bounded by the caller).
    pub prior_outputs: Vec<String>,
    /// ANALYSIS: the router's suggested roles. SYNTHESIS: "role: output" lines (and
    /// "conflict: <repo dir>/<path>" lines when merging the specialists conflicted).
    pub context: Vec<String>,
    /// Durable workspaces: where the agent works and on which branches; `None` when
    /// workspaces are off or the task names no repositories.
    pub workspace: Option<AgentWorkspace>,
}

/// The checkout an iteration works in: one sub-directory per repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentWorkspace {
    /// The agent's working directory.
    pub dir: PathBuf,
    /// Each repository's checkout.
    pub repos: Vec<WorkspaceRepo>,
}

/// One repository's checkout in an [`AgentWorkspace`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkspaceRepo {
    /// Repository name, as in the task.
    pub repo: String,
    /// Its directory (inside the workspace directory).
    pub path: PathBuf,
    /// The branch the iteration's changes are pushed to.
    pub branch: String,
    /// The commit the branch started from.
    pub base_commit: String,
    /// The commit the checkout is at.
    pub commit: String,
}

/// What one iteration produced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IterationOutput {
    /// The agent's output for this iteration.
    pub output: String,
    /// Whether the work is done.
    pub done: bool,
    /// Cost in USD.
    pub cost_usd: f64,
    /// Tokens sent to the model.
    pub tokens_in: u64,
    /// Tokens received.
    pub tokens_out: u64,
    /// ANALYSIS only: the roles to staff (empty = the router's suggestion).
    pub plan_roles: Vec<String>,
    /// Files the agent changed, relative to the workspace directory
    /// (`<repo dir>/<path>`); `None` means unknown (everything is scanned).
    pub changed_paths: Option<Vec<String>>,
}

/// A coding agent that runs one iteration at a time.
#[async_trait::async_trait]
pub trait Agent: Send + Sync + 'static {
    /// Runs one iteration. Errors are `Error::AgentTimeout` or `Error::AgentFailed`.
    async fn run_iteration(&self, input: IterationInput) -> Result<IterationOutput>;

    /// Short backend name for logs and metrics ("simulator", "command", "remote").
    fn kind(&self) -> &'static str;
}

/// A shared, dynamically chosen agent.
pub type SharedAgent = Arc<dyn Agent>;

/// The name of a step as it appears in the command agent's JSON ("ITERATION", ...).
pub fn step_name(step: AgentStep) -> &'static str {
    match step {
        AgentStep::Unspecified => "UNSPECIFIED",
        AgentStep::Iteration => "ITERATION",
        AgentStep::Analysis => "ANALYSIS",
        AgentStep::Specialist => "SPECIALIST",
        AgentStep::Synthesis => "SYNTHESIS",
    }
}

/// Rejects a reported cost that is not a finite, non-negative number of USD.
pub(crate) fn check_cost(cost_usd: f64) -> Result<f64> {
    if cost_usd.is_finite() && cost_usd >= 0.0 {
        Ok(cost_usd)
    } else {
        Err(Error::AgentFailed(format!(
            "reported cost_usd {cost_usd} is not a finite, non-negative number"
        )))
    }
}
