//! The command agent's child gets a cleared environment plus an allow-list.
//!
//! This file holds a single test because it changes the process environment, which is
//! only sound while no other thread runs.

use executor_service::agent::{Agent, CommandAgent, CommandConfig, IterationInput};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use taskrouter_proto::v1::{AgentStep, Task};

#[test]
fn environment_is_cleared_except_the_allow_list() {
    // SAFETY: the only test in this binary, run before any runtime or other thread exists.
    unsafe {
        std::env::set_var("TASKROUTER_TEST_SECRET", "hunter2");
        std::env::set_var("TASKROUTER_TEST_PASSED", "visible");
        std::env::set_var("LANG", "C.UTF-8");
    }
    let program = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/env_agent.sh");
    let mut config = CommandConfig::new(&program);
    config.timeout = Duration::from_secs(30);
    let closed = CommandAgent::new(config.clone()).unwrap();
    config.env_pass = vec![
        "TASKROUTER_TEST_PASSED".into(),
        "TASKROUTER_TEST_SECRET".into(),
    ];
    let open = CommandAgent::new(config).unwrap();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let run = |agent: CommandAgent| {
        runtime.block_on(async move {
            let input = IterationInput {
                task: Arc::new(Task {
                    id: "env-task".into(),
                    description: "anything".into(),
                    ..Default::default()
                }),
                role: "agent".into(),
                iteration: 1,
                step: AgentStep::Iteration,
                prior_outputs: Vec::new(),
                context: Vec::new(),
                workspace: None,
            };
            let out = agent.run_iteration(input).await.unwrap();
            // "NAME,NAME,...|secret value"
            let (names, secret) = out.output.trim().split_once('|').unwrap();
            let names: Vec<String> = names.split(',').map(str::to_owned).collect();
            (names, secret.to_owned())
        })
    };

    // The child starts with exactly the base variables that are set here.
    let (names, secret) = run(closed);
    let mut expected = vec!["LANG".to_owned(), "PATH".to_owned()];
    if std::env::var_os("HOME").is_some() {
        expected.insert(0, "HOME".to_owned());
    }
    assert_eq!(names, expected);
    assert_eq!(secret, "");

    let (names, secret) = run(open);
    expected.extend([
        "TASKROUTER_TEST_PASSED".to_owned(),
        "TASKROUTER_TEST_SECRET".to_owned(),
    ]);
    expected.sort();
    assert_eq!(names, expected);
    assert_eq!(secret, "hunter2");
}
