//! The command agent against real child processes (scripts in `tests/fixtures/`).

use executor_service::Error;
use executor_service::agent::{
    Agent, AgentArgs, AgentKind, CommandAgent, CommandConfig, IterationInput, RetryPolicy,
    build_agent, run_with_retry,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use taskrouter_proto::v1::{AgentStep, Complexity, Task};

/// A description that must never surface in an error message.
const DESCRIPTION: &str = "Rotate HIPAA credentials for patient Jane Roe, MRN 0042-PHI";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn task() -> Arc<Task> {
    Arc::new(Task {
        id: "task-cmd-1".into(),
        description: DESCRIPTION.into(),
        complexity: Complexity::High as i32,
        estimated_value_usd: 1250.5,
        repositories: vec!["org/a".into(), "org/b".into()],
        labels: [("team", "payments"), ("env", "prod")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    })
}

fn input(step: AgentStep, role: &str, iteration: u32) -> IterationInput {
    IterationInput {
        task: task(),
        role: role.into(),
        iteration,
        step,
        prior_outputs: vec!["first try".into()],
        context: vec!["implementer".into(), "security".into()],
        workspace: None,
    }
}

fn agent(program: PathBuf, args: &[&str], timeout: Duration) -> CommandAgent {
    let mut config = CommandConfig::new(program);
    config.args = args.iter().map(|a| (*a).to_owned()).collect();
    config.timeout = timeout;
    CommandAgent::new(config).unwrap()
}

fn assert_clean(err: &Error) {
    let msg = err.to_string();
    assert!(!msg.contains("Jane") && !msg.contains("HIPAA"), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
}

/// Whether the process is gone (or a zombie: dead, waiting for its parent to reap it).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

async fn wait_gone(pid: u32) -> bool {
    for _ in 0..100 {
        if process_gone(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

async fn read_pids(path: &Path) -> Vec<u32> {
    for _ in 0..250 {
        if let Ok(s) = std::fs::read_to_string(path) {
            return s.split_whitespace().map(|p| p.parse().unwrap()).collect();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the agent never wrote {}", path.display());
}

#[tokio::test]
async fn success_receives_the_whole_request() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = CommandConfig::new(fixture("echo_agent.py"));
    config.args = vec!["--model".into(), "x,y".into()];
    config.workdir = Some(dir.path().to_owned());
    config.timeout = Duration::from_secs(30);
    let agent = CommandAgent::new(config).unwrap();
    assert_eq!(agent.kind(), "command");

    let out = agent
        .run_iteration(input(AgentStep::Specialist, "security", 2))
        .await
        .unwrap();
    assert!(out.done);
    assert_eq!(out.cost_usd, 0.25);
    assert_eq!((out.tokens_in, out.tokens_out), (1000, 42));
    assert!(out.plan_roles.is_empty());

    let seen: Value = serde_json::from_str(&out.output).unwrap();
    assert_eq!(seen["id"], "task-cmd-1");
    assert_eq!(seen["description_len"], DESCRIPTION.len());
    assert_eq!(seen["complexity"], "COMPLEXITY_HIGH");
    assert_eq!(seen["value"], 1250.5);
    assert_eq!(seen["repositories"], serde_json::json!(["org/a", "org/b"]));
    assert_eq!(
        seen["labels"],
        serde_json::json!({"env": "prod", "team": "payments"})
    );
    assert_eq!(seen["role"], "security");
    assert_eq!(seen["step"], "SPECIALIST");
    assert_eq!(seen["iteration"], 2);
    assert_eq!(seen["prior_outputs"], serde_json::json!(["first try"]));
    assert_eq!(
        seen["context"],
        serde_json::json!(["implementer", "security"])
    );
    assert_eq!(seen["argv"], serde_json::json!(["--model", "x,y"]));
    assert_eq!(
        seen["cwd"],
        dir.path().canonicalize().unwrap().to_str().unwrap()
    );

    // Analysis returns the plan; iteration 1 is not done.
    let plan = agent
        .run_iteration(input(AgentStep::Analysis, "lead", 1))
        .await
        .unwrap();
    assert!(!plan.done);
    assert_eq!(plan.plan_roles, ["implementer", "security"]);
    let seen: Value = serde_json::from_str(&plan.output).unwrap();
    assert_eq!(seen["step"], "ANALYSIS");
}

#[tokio::test]
async fn timeout_kills_the_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pids");
    let agent = agent(
        fixture("sleepy_agent.sh"),
        &[pid_file.to_str().unwrap()],
        Duration::from_millis(1500),
    );
    let started = Instant::now();
    let run = tokio::spawn(async move {
        agent
            .run_iteration(input(AgentStep::Iteration, "agent", 1))
            .await
    });
    let pids = read_pids(&pid_file).await;
    assert_eq!(pids.len(), 2, "agent pid and grandchild pid");
    let err = run.await.unwrap().unwrap_err();
    assert!(
        matches!(err, Error::AgentTimeout(d) if d == Duration::from_millis(1500)),
        "{err:?}"
    );
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    for pid in pids {
        assert!(wait_gone(pid).await, "process {pid} survived the timeout");
    }
}

#[tokio::test]
async fn dropping_the_future_kills_the_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pids");
    let agent = agent(
        fixture("sleepy_agent.sh"),
        &[pid_file.to_str().unwrap()],
        Duration::from_secs(600),
    );
    let iteration = agent.run_iteration(input(AgentStep::Specialist, "tester", 1));
    let pid_file2 = pid_file.clone();
    // The caller's own deadline (as for a specialist) cancels the iteration by dropping it.
    let (cancelled, pids) = tokio::join!(
        tokio::time::timeout(Duration::from_millis(1500), iteration),
        read_pids(&pid_file2)
    );
    assert!(cancelled.is_err());
    for pid in pids {
        assert!(wait_gone(pid).await, "process {pid} survived cancellation");
    }
}

#[tokio::test]
async fn bad_json_fails_without_echoing_stdout() {
    let agent = agent(fixture("bad_json_agent.sh"), &[], Duration::from_secs(30));
    let err = agent
        .run_iteration(input(AgentStep::Iteration, "agent", 1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::AgentFailed(ref m) if m.contains("not one JSON object")),
        "{err:?}"
    );
    assert_clean(&err);
}

#[tokio::test]
async fn missing_fields_and_bad_values_are_bad_output() {
    for (script, needle) in [
        (r#"printf '{"output":"x"}'"#, "`done`"),
        (r#"printf '{"done":true}'"#, "`output`"),
        (
            r#"printf '{"output":"x","done":true,"cost_usd":-0.5}'"#,
            "cost_usd",
        ),
        (r#"printf '[1,2]'"#, "not an object"),
        (r#"true"#, "stdout is empty"),
        (r#"head -c 9000000 /dev/zero"#, "stdout exceeds"),
    ] {
        let agent = agent("sh".into(), &["-c", script], Duration::from_secs(30));
        let err = agent
            .run_iteration(input(AgentStep::Iteration, "agent", 1))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::AgentFailed(ref m) if m.contains(needle)),
            "{script}: {err:?}"
        );
    }
}

#[tokio::test]
async fn non_zero_exit_reports_code_and_stderr_size_only() {
    let agent = agent(fixture("failing_agent.sh"), &[], Duration::from_secs(30));
    let err = agent
        .run_iteration(input(AgentStep::Iteration, "agent", 1))
        .await
        .unwrap_err();
    let Error::AgentFailed(msg) = &err else {
        panic!("{err:?}")
    };
    assert!(msg.starts_with("exited with status 3 (stderr: "), "{msg}");
    assert!(msg.ends_with(" bytes)"), "{msg}");
    assert_clean(&err);
}

#[tokio::test]
async fn child_that_ignores_stdin_does_not_deadlock() {
    let agent = agent(fixture("deaf_agent.sh"), &[], Duration::from_secs(30));
    let mut big = input(AgentStep::Iteration, "agent", 1);
    // Far beyond a pipe buffer: the write must not block the iteration.
    big.prior_outputs = vec!["x".repeat(4 * 1024 * 1024)];
    let out = agent.run_iteration(big).await.unwrap();
    assert_eq!(out.output, "did not read");
    assert!(!out.done);
    assert_eq!(out.cost_usd, 0.0);
}

#[tokio::test]
async fn retry_succeeds_after_a_transient_failure() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran-once");
    let agent = agent(
        fixture("flaky_agent.sh"),
        &[marker.to_str().unwrap()],
        Duration::from_secs(30),
    );
    let policy = RetryPolicy {
        base_delay: Duration::from_millis(10),
        ..RetryPolicy::default()
    };
    let outcome = run_with_retry(&agent, input(AgentStep::Iteration, "agent", 1), &policy).await;
    let out = outcome.result.as_ref().unwrap();
    assert_eq!(out.output, "recovered");
    assert_eq!(out.cost_usd, 0.01);
    assert_eq!(outcome.attempts(), 2);
    assert_eq!(outcome.failures.len(), 1);
    assert!(
        outcome.failures[0].starts_with("agent failed: exited with status 1"),
        "{:?}",
        outcome.failures
    );
}

#[tokio::test]
async fn spawn_failure_is_agent_failed() {
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("agent.sh");
    std::fs::copy(fixture("deaf_agent.sh"), &program).unwrap();
    let agent = agent(program.clone(), &[], Duration::from_secs(30));
    std::fs::remove_file(&program).unwrap();
    let err = agent
        .run_iteration(input(AgentStep::Iteration, "agent", 1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::AgentFailed(ref m) if m.starts_with("cannot start ")),
        "{err:?}"
    );
}

#[tokio::test]
async fn example_agent_from_the_docs_runs_a_task() {
    let args = AgentArgs {
        agent: AgentKind::Command,
        agent_command: Some(fixture("example_agent.py")),
        agent_timeout: Duration::from_secs(30),
        ..AgentArgs::simulator()
    };
    let agent = build_agent(&args).unwrap();
    let policy = args.retry_policy();

    let mut outputs = Vec::new();
    for i in 1..=10 {
        let mut step = input(AgentStep::Iteration, "agent", i);
        step.prior_outputs = outputs.clone();
        let out = run_with_retry(agent.as_ref(), step, &policy)
            .await
            .result
            .unwrap();
        assert_eq!(out.output, format!("agent ran iteration #{i}"));
        assert_eq!(out.cost_usd, 0.001);
        outputs.push(out.output);
        if out.done {
            break;
        }
    }
    assert_eq!(outputs.len(), 3);

    let plan = agent
        .run_iteration(input(AgentStep::Analysis, "lead", 1))
        .await
        .unwrap();
    assert!(plan.done);
    assert_eq!(plan.plan_roles, ["implementer", "security"]);
}

#[test]
fn build_agent_rejects_non_executable_programs() {
    let args = AgentArgs {
        agent: AgentKind::Command,
        agent_command: Some(fixture("../agent_command.rs")),
        ..AgentArgs::simulator()
    };
    let err = build_agent(&args).err().unwrap();
    assert!(err.starts_with("--agent-command "), "{err}");
    assert!(err.ends_with(": not an executable file"), "{err}");
}
