//! The plan's "Real Workflow Testing" scenarios, defined once as data: the task each
//! submits, how it is driven, and what it must end with. The demo plays them; the
//! end-to-end, team-path and policy tests check them, and [`check`] compares what
//! happened with what the plan expects.

use std::collections::HashMap;
use taskrouter_proto::v1::{
    Complexity, ExecutionPath, FallbackCause, ReasonCode, RoutingDecision, SessionState, Task,
    TaskStatus,
};

/// How a scenario drives the executor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Submit to the work queue, watch the progress stream to the end, then Get.
    Submit,
    /// The plan's context reset: Run bounded to 2 iterations, then Run with
    /// `resume = true` and a bound of 10.
    ResetThenResume,
}

/// What a scenario must end with.
#[derive(Clone, Debug)]
pub struct Expect {
    /// The router's decision.
    pub decision: RoutingDecision,
    /// Reasons the analysis must include (others may appear too).
    pub reasons: Vec<ReasonCode>,
    /// The path the task ran on.
    pub path: ExecutionPath,
    /// The final status.
    pub status: TaskStatus,
    /// Why the team path fell back to the single path, if it must.
    pub fallback: Option<FallbackCause>,
}

/// One of the plan's scenarios.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// A short human name.
    pub name: &'static str,
    /// The task submitted.
    pub task: Task,
    /// How it is driven.
    pub mode: Mode,
    /// What it must end with.
    pub expect: Expect,
}

/// A task from literals (labels and repositories as slices).
pub fn task(
    id: &str,
    description: &str,
    complexity: Complexity,
    value: f64,
    repos: &[&str],
    labels: &[(&str, &str)],
) -> Task {
    Task {
        id: id.to_string(),
        description: description.to_string(),
        complexity: complexity as i32,
        estimated_value_usd: value,
        repositories: repos.iter().map(|r| r.to_string()).collect(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>(),
    }
}

/// Routed multi-agent with `reasons`, run on the team path, completed without fallback.
pub fn multi(reasons: &[ReasonCode]) -> Expect {
    Expect {
        decision: RoutingDecision::UseMultiAgent,
        reasons: reasons.to_vec(),
        path: ExecutionPath::MultiAgent,
        status: TaskStatus::Completed,
        fallback: None,
    }
}

/// The scenarios of the plan's "Task 4: Real Workflow Testing".
pub fn plan() -> Vec<Scenario> {
    use Complexity::{High, Low, Medium};
    use ReasonCode as R;
    vec![
        Scenario {
            name: "simple bug fix",
            task: task("TEST-BUG-001", "Fix typo in README", Low, 10.0, &[], &[]),
            mode: Mode::Submit,
            expect: Expect {
                decision: RoutingDecision::UseSingleAgent,
                reasons: vec![R::SimpleTask],
                path: ExecutionPath::SingleAgent,
                status: TaskStatus::Completed,
                fallback: None,
            },
        },
        Scenario {
            name: "high-value feature",
            task: task(
                "TEST-FEATURE-001",
                "Implement new payment processing",
                High,
                500.0,
                &[],
                &[],
            ),
            mode: Mode::Submit,
            expect: multi(&[R::HighComplexity, R::HighValue]),
        },
        Scenario {
            name: "HIPAA credential rotation",
            task: task(
                "TEST-HIPAA-001",
                "Rotate the HIPAA database credentials of the patient API",
                Medium,
                50.0,
                &[],
                &[],
            ),
            mode: Mode::Submit,
            expect: multi(&[R::ComplianceSensitive]),
        },
        Scenario {
            name: "production deployment",
            task: task(
                "TEST-DEPLOY-001",
                "Deploy the billing service to production",
                Medium,
                50.0,
                &[],
                &[],
            ),
            mode: Mode::Submit,
            expect: multi(&[R::Deployment]),
        },
        Scenario {
            name: "cross-repo refactor",
            task: task(
                "TEST-XREPO-001",
                "Refactor the shared auth client",
                Medium,
                50.0,
                &["acme/api", "acme/web"],
                &[],
            ),
            mode: Mode::Submit,
            expect: multi(&[R::CrossRepo]),
        },
        Scenario {
            name: "context reset",
            // The router staffs four specialists for this task (implementer, architect,
            // reviewer, security-reviewer); two iterations each makes the team path
            // 1 (analysis) + 8 + 1 (synthesis) = 10 iterations, the plan's total.
            task: task(
                "TEST-RESUME-001",
                "Complex feature with HIPAA compliance",
                High,
                250.0,
                &[],
                &[("sim.specialist_iterations", "2")],
            ),
            mode: Mode::ResetThenResume,
            expect: multi(&[R::HighComplexity, R::HighValue, R::ComplianceSensitive]),
        },
        Scenario {
            name: "team failure falls back",
            task: task(
                "TEST-FALLBACK-001",
                "Implement new reporting dashboard",
                High,
                300.0,
                &[],
                &[("sim.fail_step", "synthesis")],
            ),
            mode: Mode::Submit,
            expect: Expect {
                decision: RoutingDecision::UseMultiAgent,
                reasons: vec![R::HighComplexity, R::HighValue],
                path: ExecutionPath::SingleAgent,
                status: TaskStatus::Completed,
                fallback: Some(FallbackCause::SynthesisFailed),
            },
        },
    ]
}

impl Scenario {
    /// The scenario with this task id; panics on an unknown id (tests name them literally).
    pub fn by_id(id: &str) -> Scenario {
        plan()
            .into_iter()
            .find(|s| s.task.id == id)
            .unwrap_or_else(|| panic!("no scenario {id}"))
    }
}

/// One run of the context-reset scenario.
#[derive(Clone, Debug)]
pub struct RunSummary {
    /// Status at the end of the run.
    pub status: i32,
    /// Iterations this run did.
    pub iterations_this_run: u32,
    /// Iterations of the task so far.
    pub total_iterations: u32,
}

impl From<&taskrouter_proto::v1::RunResult> for RunSummary {
    fn from(r: &taskrouter_proto::v1::RunResult) -> Self {
        Self {
            status: r.status,
            iterations_this_run: r.iterations_this_run,
            total_iterations: r.total_iterations,
        }
    }
}

/// What happened in one scenario, as read back from the executor.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The scenario's name.
    pub scenario: &'static str,
    /// Its task id.
    pub task_id: String,
    /// W3C trace id every request of the scenario carried.
    pub trace_id: String,
    /// The task's final state, if one was read.
    pub state: Option<SessionState>,
    /// The context-reset scenario's two runs.
    pub runs: Vec<RunSummary>,
    /// One sentence per way it differs from what the plan expects.
    pub failures: Vec<String>,
}

impl Outcome {
    /// The router's decision as recorded in the state (0 when none).
    pub fn decision(&self) -> i32 {
        self.state
            .as_ref()
            .and_then(|s| s.analysis.as_ref())
            .map_or(0, |a| a.decision)
    }

    /// The analysis's reason codes.
    pub fn reasons(&self) -> Vec<i32> {
        self.state
            .as_ref()
            .and_then(|s| s.analysis.as_ref())
            .map(|a| a.reasons.iter().map(|r| r.code).collect())
            .unwrap_or_default()
    }

    /// The fallback cause, if the team path fell back.
    pub fn fallback(&self) -> Option<i32> {
        self.state
            .as_ref()
            .and_then(|s| s.fallback.as_ref())
            .map(|f| f.cause)
    }

    /// Iterations as the table shows them ("2+8=10" for a reset and resume).
    pub fn iterations_text(&self) -> String {
        match (&self.state, self.runs.as_slice()) {
            (_, [first, second]) => format!(
                "{}+{}={}",
                first.iterations_this_run, second.iterations_this_run, second.total_iterations
            ),
            (Some(s), _) => s.iteration_count.to_string(),
            (None, _) => "-".into(),
        }
    }
}

/// Compares what happened with what the plan expects; one sentence per mismatch.
pub fn check(s: &Scenario, row: &Outcome) -> Vec<String> {
    let mut failures = Vec::new();
    let Some(state) = &row.state else {
        return vec!["no final state".into()];
    };
    let e = &s.expect;
    if row.decision() != e.decision as i32 {
        failures.push(format!(
            "decision {}, expected {}",
            name_of::<RoutingDecision>(row.decision()),
            e.decision.as_str_name()
        ));
    }
    let reasons = row.reasons();
    for want in &e.reasons {
        if !reasons.contains(&(*want as i32)) {
            failures.push(format!("reason {} missing", want.as_str_name()));
        }
    }
    if state.path != e.path as i32 {
        failures.push(format!(
            "path {}, expected {}",
            name_of::<ExecutionPath>(state.path),
            e.path.as_str_name()
        ));
    }
    if state.status != e.status as i32 {
        failures.push(format!(
            "status {}, expected {}",
            name_of::<TaskStatus>(state.status),
            e.status.as_str_name()
        ));
    }
    let fallback = row.fallback();
    if fallback != e.fallback.map(|c| c as i32) {
        failures.push(format!(
            "fallback {}, expected {}",
            fallback.map_or("none".into(), name_of::<FallbackCause>),
            e.fallback.map_or("none", |c| c.as_str_name())
        ));
    }
    if s.mode == Mode::ResetThenResume {
        match row.runs.as_slice() {
            [first, second] => {
                if first.status != TaskStatus::InProgress as i32 || first.total_iterations != 2 {
                    failures.push(format!(
                        "bounded run ended {} after {} iterations, expected TASK_STATUS_IN_PROGRESS after 2",
                        name_of::<TaskStatus>(first.status),
                        first.total_iterations
                    ));
                }
                if second.iterations_this_run != 8 || second.total_iterations != 10 {
                    failures.push(format!(
                        "resumed run did {} iterations for {} in total, expected 8 for 10",
                        second.iterations_this_run, second.total_iterations
                    ));
                }
            }
            runs => failures.push(format!("{} runs recorded, expected 2", runs.len())),
        }
    }
    failures
}

/// An enum value's proto name (`UNKNOWN(n)` for a value this build does not know).
fn name_of<E: ProtoName>(v: i32) -> String {
    E::name(v).map_or_else(|| format!("UNKNOWN({v})"), str::to_string)
}

/// The proto enums whose names `check` prints.
trait ProtoName {
    fn name(v: i32) -> Option<&'static str>;
}

macro_rules! proto_name {
    ($($ty:ty),*) => {$(
        impl ProtoName for $ty {
            fn name(v: i32) -> Option<&'static str> {
                <$ty>::try_from(v).ok().map(|e| e.as_str_name())
            }
        }
    )*};
}

proto_name!(RoutingDecision, ExecutionPath, TaskStatus, FallbackCause);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_has_a_distinct_id_and_the_plan_s_values() {
        let all = plan();
        assert_eq!(all.len(), 7);
        let mut ids: Vec<&str> = all.iter().map(|s| s.task.id.as_str()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 7);
        let bug = &all[0].task;
        assert_eq!(
            (bug.description.as_str(), bug.estimated_value_usd),
            ("Fix typo in README", 10.0)
        );
    }
}
