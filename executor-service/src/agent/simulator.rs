//! The built-in deterministic agent for demos and tests. Its behaviour is driven by the
//! task's complexity and `sim.*` labels (see `docs/AGENTS.md`), including injected
//! faults for exercising retries, timeouts and the team path's fallback.

use super::{Agent, AgentWorkspace, IterationInput, IterationOutput};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use taskrouter_proto::v1::{AgentStep, Complexity, Task};

/// Label: iterations the single path needs before the agent reports done (u32).
pub const LABEL_ITERATIONS: &str = "sim.iterations";
/// Label: iterations each specialist needs before it reports done (u32, default 2).
pub const LABEL_SPECIALIST_ITERATIONS: &str = "sim.specialist_iterations";
/// Label: latency of every iteration in milliseconds (overrides the constructor's).
pub const LABEL_LATENCY_MS: &str = "sim.latency_ms";
/// Label: a step (`analysis`, `synthesis`, `specialist`, `iteration`) that always fails.
pub const LABEL_FAIL_STEP: &str = "sim.fail_step";
/// Label: with `sim.fail_step=specialist`, only this role fails.
pub const LABEL_FAIL_ROLE: &str = "sim.fail_role";
/// Label: a role whose iterations sleep for an hour (to exercise timeouts).
pub const LABEL_HANG_ROLE: &str = "sim.hang_role";
/// Label: a single-path iteration (u32) that fails on its first attempt only.
pub const LABEL_FAIL_ITERATION: &str = "sim.fail_iteration";

/// Label: with a workspace, every specialist writes this file (relative to each
/// repository) instead of its own, so their branches conflict when merged.
pub const LABEL_CONFLICT_FILE: &str = "sim.conflict_file";
/// Label: `false` makes synthesis leave merge conflicts unresolved (default: the lead
/// resolves them by keeping both sides).
pub const LABEL_RESOLVE_CONFLICTS: &str = "sim.resolve_conflicts";

/// Specialist iterations when `sim.specialist_iterations` is absent.
pub const DEFAULT_SPECIALIST_ITERATIONS: u32 = 2;
/// Roles planned by ANALYSIS when the router suggested none.
pub const DEFAULT_ROLES: [&str; 2] = ["implementer", "reviewer"];
/// How long a hanging role sleeps: long enough that only a timeout ends it.
const HANG: Duration = Duration::from_secs(3600);

/// A deterministic agent: same task and input, same output, cost and tokens.
#[derive(Debug, Default)]
pub struct SimulatedAgent {
    latency: Duration,
    /// Attempts seen per (task id, role, iteration), only for `sim.fail_iteration`.
    attempts: Mutex<HashMap<(String, String, u32), u32>>,
}

impl SimulatedAgent {
    /// A simulator whose iterations take `latency` unless a task's `sim.latency_ms` says otherwise.
    pub fn new(latency: Duration) -> Self {
        Self {
            latency,
            attempts: Mutex::new(HashMap::new()),
        }
    }

    /// Fails the iteration if a `sim.fail_*` label asks for it.
    fn injected_fault(&self, input: &IterationInput) -> Result<()> {
        let labels = &input.task.labels;
        if let Some(step) = labels.get(LABEL_FAIL_STEP) {
            let fails = match (step.as_str(), input.step) {
                ("analysis", AgentStep::Analysis)
                | ("synthesis", AgentStep::Synthesis)
                | ("iteration", AgentStep::Iteration) => true,
                ("specialist", AgentStep::Specialist) => labels
                    .get(LABEL_FAIL_ROLE)
                    .is_none_or(|role| *role == input.role),
                ("analysis" | "synthesis" | "iteration" | "specialist", _) => false,
                _ => {
                    return Err(Error::AgentFailed(format!(
                        "label {LABEL_FAIL_STEP}: expected analysis, synthesis, specialist or iteration"
                    )));
                }
            };
            if fails {
                return Err(Error::AgentFailed(format!(
                    "injected fault: {} step of role {}",
                    step, input.role
                )));
            }
        }
        if input.step == AgentStep::Iteration
            && label_u32(&input.task, LABEL_FAIL_ITERATION)? == Some(input.iteration)
        {
            let key = (input.task.id.clone(), input.role.clone(), input.iteration);
            // A poisoned lock only means another iteration panicked; the counts stay usable.
            let mut attempts = self
                .attempts
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let seen = attempts.entry(key).or_insert(0);
            *seen += 1;
            if *seen == 1 {
                return Err(Error::AgentFailed(format!(
                    "injected fault: first attempt of iteration {}",
                    input.iteration
                )));
            }
        }
        Ok(())
    }
}

/// Iterations the single path needs: `sim.iterations`, else by complexity.
pub fn iterations_needed(task: &Task) -> Result<u32> {
    if let Some(n) = label_u32(task, LABEL_ITERATIONS)? {
        return Ok(n);
    }
    Ok(match Complexity::try_from(task.complexity) {
        Ok(Complexity::Low) => 3,
        Ok(Complexity::Medium) => 5,
        Ok(Complexity::High) => 8,
        Ok(Complexity::Critical) => 10,
        Ok(Complexity::Unspecified) | Err(_) => 3,
    })
}

/// Reads a numeric label; the error names the label but never echoes its value.
fn label_u32(task: &Task, label: &str) -> Result<Option<u32>> {
    task.labels
        .get(label)
        .map(|v| {
            v.trim()
                .parse::<u32>()
                .map_err(|_| Error::AgentFailed(format!("label {label}: expected a whole number")))
        })
        .transpose()
}

#[async_trait::async_trait]
impl Agent for SimulatedAgent {
    async fn run_iteration(&self, input: IterationInput) -> Result<IterationOutput> {
        if input.task.labels.get(LABEL_HANG_ROLE) == Some(&input.role) {
            // Cancellable: dropping this future ends the sleep.
            tokio::time::sleep(HANG).await;
        }
        self.injected_fault(&input)?;
        let latency = label_u32(&input.task, LABEL_LATENCY_MS)?
            .map(|ms| Duration::from_millis(ms.into()))
            .unwrap_or(self.latency);
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }

        let iteration = input.iteration;
        let (output, done, plan_roles) = match input.step {
            AgentStep::Iteration => {
                let needed = iterations_needed(&input.task)?;
                (
                    format!("sim agent iteration {iteration}/{needed}"),
                    iteration >= needed,
                    Vec::new(),
                )
            }
            AgentStep::Analysis => {
                let roles: Vec<String> = if input.context.is_empty() {
                    DEFAULT_ROLES.iter().map(|r| (*r).to_owned()).collect()
                } else {
                    input.context.clone()
                };
                (
                    format!(
                        "sim lead planned {} roles: {}",
                        roles.len(),
                        roles.join(", ")
                    ),
                    true,
                    roles,
                )
            }
            AgentStep::Specialist => {
                let needed = label_u32(&input.task, LABEL_SPECIALIST_ITERATIONS)?
                    .unwrap_or(DEFAULT_SPECIALIST_ITERATIONS);
                (
                    format!("sim {} iteration {iteration}/{needed}", input.role),
                    iteration >= needed,
                    Vec::new(),
                )
            }
            AgentStep::Synthesis => (
                format!(
                    "sim lead combined {} specialist outputs",
                    input.context.len()
                ),
                true,
                Vec::new(),
            ),
            AgentStep::Unspecified => {
                return Err(Error::AgentFailed("step is unspecified".to_owned()));
            }
        };

        let changed_paths = match &input.workspace {
            Some(ws) => Some(edit_workspace(ws, &input).await?),
            None => None,
        };
        let description_len = input.task.description.len();
        Ok(IterationOutput {
            output,
            done,
            cost_usd: 0.002 + 1e-6 * description_len as f64,
            tokens_in: 200 + (description_len / 4) as u64,
            tokens_out: 150,
            plan_roles,
            changed_paths,
        })
    }

    fn kind(&self) -> &'static str {
        "simulator"
    }
}

/// The simulator's real, deterministic change: appends `<role> iteration <n>` to
/// `taskrouter-<role>.txt` (or `sim.conflict_file` for specialists) in every repository;
/// synthesis first resolves merge conflicts by dropping the markers (both sides kept)
/// unless `sim.resolve_conflicts=false`. Returns the changed paths.
async fn edit_workspace(ws: &AgentWorkspace, input: &IterationInput) -> Result<Vec<String>> {
    let io =
        |e: std::io::Error| Error::AgentFailed(format!("simulator cannot edit its workspace: {e}"));
    let mut changed = Vec::new();
    if input.step == AgentStep::Analysis {
        return Ok(changed);
    }
    let resolve = input
        .task
        .labels
        .get(LABEL_RESOLVE_CONFLICTS)
        .is_none_or(|v| v != "false");
    for line in &input.context {
        if let Some(path) = line.strip_prefix("conflict: ")
            && resolve
            && input.step == AgentStep::Synthesis
        {
            let file = ws.dir.join(path);
            let text = tokio::fs::read_to_string(&file).await.map_err(io)?;
            let kept: String = text
                .lines()
                .filter(|l| {
                    !(l.starts_with("<<<<<<< ") || l.starts_with(">>>>>>> ") || *l == "=======")
                })
                .map(|l| format!("{l}\n"))
                .collect();
            tokio::fs::write(&file, kept).await.map_err(io)?;
            changed.push(path.to_string());
        }
    }
    let safe_role: String = input
        .role
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let name = match input.task.labels.get(LABEL_CONFLICT_FILE) {
        Some(f) if input.step == AgentStep::Specialist && !f.contains('/') && !f.is_empty() => {
            f.clone()
        }
        _ => format!("taskrouter-{safe_role}.txt"),
    };
    for repo in &ws.repos {
        let file = repo.path.join(&name);
        let mut text = tokio::fs::read_to_string(&file).await.unwrap_or_default();
        text.push_str(&format!("{} iteration {}\n", input.role, input.iteration));
        tokio::fs::write(&file, text).await.map_err(io)?;
        let rel = repo.path.strip_prefix(&ws.dir).unwrap_or(&repo.path);
        changed.push(rel.join(&name).to_string_lossy().into_owned());
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const SECRET: &str = "patient Jane Doe MRN-4411 needs her chart fixed";

    fn task(complexity: Complexity, labels: &[(&str, &str)]) -> Arc<Task> {
        Arc::new(Task {
            id: "task-1".into(),
            description: SECRET.into(),
            complexity: complexity as i32,
            estimated_value_usd: 10.0,
            repositories: vec!["org/a".into()],
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        })
    }

    fn input(task: &Arc<Task>, step: AgentStep, role: &str, iteration: u32) -> IterationInput {
        IterationInput {
            task: task.clone(),
            role: role.into(),
            iteration,
            step,
            prior_outputs: Vec::new(),
            context: Vec::new(),
            workspace: None,
        }
    }

    /// Runs the single path until done and returns the number of iterations taken.
    async fn iterations_until_done(agent: &SimulatedAgent, task: &Arc<Task>) -> u32 {
        for i in 1..=100 {
            let out = agent
                .run_iteration(input(task, AgentStep::Iteration, "agent", i))
                .await
                .unwrap();
            if out.done {
                return i;
            }
        }
        panic!("never done");
    }

    #[tokio::test]
    async fn iterations_needed_by_complexity_and_label() {
        let agent = SimulatedAgent::default();
        for (c, n) in [
            (Complexity::Unspecified, 3),
            (Complexity::Low, 3),
            (Complexity::Medium, 5),
            (Complexity::High, 8),
            (Complexity::Critical, 10),
        ] {
            assert_eq!(
                iterations_until_done(&agent, &task(c, &[])).await,
                n,
                "{c:?}"
            );
        }
        let t = task(Complexity::Critical, &[(LABEL_ITERATIONS, "2")]);
        assert_eq!(iterations_until_done(&agent, &t).await, 2);
        let out = agent
            .run_iteration(input(&t, AgentStep::Iteration, "agent", 1))
            .await
            .unwrap();
        assert_eq!(out.output, "sim agent iteration 1/2");
    }

    #[tokio::test]
    async fn deterministic_and_never_echoes_the_description() {
        let t = task(Complexity::Medium, &[]);
        let a = SimulatedAgent::default()
            .run_iteration(input(&t, AgentStep::Iteration, "agent", 3))
            .await
            .unwrap();
        let b = SimulatedAgent::new(Duration::ZERO)
            .run_iteration(input(&t, AgentStep::Iteration, "agent", 3))
            .await
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.output, "sim agent iteration 3/5");
        assert!(!a.done);
        let len = SECRET.len();
        assert_eq!(a.cost_usd, 0.002 + 1e-6 * len as f64);
        assert_eq!(a.tokens_in, 200 + (len / 4) as u64);
        assert_eq!(a.tokens_out, 150);
        assert!(!a.output.contains("Jane"));
    }

    #[tokio::test]
    async fn team_steps() {
        let agent = SimulatedAgent::default();
        let t = task(Complexity::High, &[]);

        let plan = agent
            .run_iteration(input(&t, AgentStep::Analysis, "lead", 1))
            .await
            .unwrap();
        assert!(plan.done);
        assert_eq!(plan.plan_roles, ["implementer", "reviewer"]);

        let mut analysis = input(&t, AgentStep::Analysis, "lead", 1);
        analysis.context = vec!["security".into(), "tester".into(), "implementer".into()];
        let plan = agent.run_iteration(analysis).await.unwrap();
        assert_eq!(plan.plan_roles, ["security", "tester", "implementer"]);

        let first = agent
            .run_iteration(input(&t, AgentStep::Specialist, "tester", 1))
            .await
            .unwrap();
        assert!(!first.done);
        assert_eq!(first.output, "sim tester iteration 1/2");
        let second = agent
            .run_iteration(input(&t, AgentStep::Specialist, "tester", 2))
            .await
            .unwrap();
        assert!(second.done);

        let t3 = task(Complexity::High, &[(LABEL_SPECIALIST_ITERATIONS, "3")]);
        let out = agent
            .run_iteration(input(&t3, AgentStep::Specialist, "tester", 2))
            .await
            .unwrap();
        assert!(!out.done);

        let mut synthesis = input(&t, AgentStep::Synthesis, "lead", 1);
        synthesis.context = vec!["tester: ok".into(), "implementer: ok".into()];
        let out = agent.run_iteration(synthesis).await.unwrap();
        assert!(out.done);
        assert_eq!(out.output, "sim lead combined 2 specialist outputs");
        assert!(out.plan_roles.is_empty());
    }

    #[tokio::test]
    async fn injected_step_faults() {
        let agent = SimulatedAgent::default();
        for (step_label, step, role) in [
            ("analysis", AgentStep::Analysis, "lead"),
            ("synthesis", AgentStep::Synthesis, "lead"),
            ("specialist", AgentStep::Specialist, "tester"),
            ("iteration", AgentStep::Iteration, "agent"),
        ] {
            let t = task(Complexity::High, &[(LABEL_FAIL_STEP, step_label)]);
            for attempt in 0..2 {
                let err = agent
                    .run_iteration(input(&t, step, role, 1))
                    .await
                    .unwrap_err();
                match err {
                    Error::AgentFailed(m) => {
                        assert!(m.starts_with("injected fault"), "{m} (attempt {attempt})")
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            // Other steps are unaffected.
            let other = if step == AgentStep::Analysis {
                AgentStep::Synthesis
            } else {
                AgentStep::Analysis
            };
            agent
                .run_iteration(input(&t, other, "lead", 1))
                .await
                .unwrap();
        }

        let t = task(
            Complexity::High,
            &[(LABEL_FAIL_STEP, "specialist"), (LABEL_FAIL_ROLE, "tester")],
        );
        assert!(
            agent
                .run_iteration(input(&t, AgentStep::Specialist, "tester", 1))
                .await
                .is_err()
        );
        agent
            .run_iteration(input(&t, AgentStep::Specialist, "implementer", 1))
            .await
            .unwrap();

        let bad = task(Complexity::High, &[(LABEL_FAIL_STEP, "everything")]);
        let err = agent
            .run_iteration(input(&bad, AgentStep::Analysis, "lead", 1))
            .await
            .unwrap_err();
        assert!(err.to_string().contains(LABEL_FAIL_STEP), "{err}");
    }

    #[tokio::test]
    async fn fail_iteration_fails_the_first_attempt_only() {
        let agent = SimulatedAgent::default();
        let t = task(Complexity::Low, &[(LABEL_FAIL_ITERATION, "2")]);
        agent
            .run_iteration(input(&t, AgentStep::Iteration, "agent", 1))
            .await
            .unwrap();
        let err = agent
            .run_iteration(input(&t, AgentStep::Iteration, "agent", 2))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::AgentFailed(ref m) if m.contains("first attempt")));
        agent
            .run_iteration(input(&t, AgentStep::Iteration, "agent", 2))
            .await
            .unwrap();
        agent
            .run_iteration(input(&t, AgentStep::Iteration, "agent", 2))
            .await
            .unwrap();

        // Tracked per task: another task's iteration 2 fails once too.
        let mut other = (*t).clone();
        other.id = "task-2".into();
        let other = Arc::new(other);
        assert!(
            agent
                .run_iteration(input(&other, AgentStep::Iteration, "agent", 2))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn hang_role_hangs_until_dropped() {
        let agent = SimulatedAgent::default();
        let t = task(Complexity::High, &[(LABEL_HANG_ROLE, "tester")]);
        let hung = tokio::time::timeout(
            Duration::from_millis(50),
            agent.run_iteration(input(&t, AgentStep::Specialist, "tester", 1)),
        )
        .await;
        assert!(hung.is_err());
        agent
            .run_iteration(input(&t, AgentStep::Specialist, "implementer", 1))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn latency_from_constructor_and_label() {
        let t = task(Complexity::Low, &[]);
        let slow = SimulatedAgent::new(Duration::from_millis(80));
        let started = std::time::Instant::now();
        slow.run_iteration(input(&t, AgentStep::Iteration, "agent", 1))
            .await
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(80));

        let fast = task(Complexity::Low, &[(LABEL_LATENCY_MS, "0")]);
        let started = std::time::Instant::now();
        slow.run_iteration(input(&fast, AgentStep::Iteration, "agent", 1))
            .await
            .unwrap();
        assert!(started.elapsed() < Duration::from_millis(80));
    }

    #[tokio::test]
    async fn bad_labels_fail_without_echoing_values() {
        let agent = SimulatedAgent::default();
        let t = task(Complexity::Low, &[(LABEL_ITERATIONS, "lots-of-secret")]);
        let err = agent
            .run_iteration(input(&t, AgentStep::Iteration, "agent", 1))
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(LABEL_ITERATIONS) && !msg.contains("secret"),
            "{msg}"
        );

        let err = agent
            .run_iteration(input(
                &task(Complexity::Low, &[]),
                AgentStep::Unspecified,
                "agent",
                1,
            ))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::AgentFailed(_)));
    }
}
