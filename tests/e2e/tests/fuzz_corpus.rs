//! The fuzz targets of `tests/fuzz` (cargo-fuzz, nightly only), run on stable Rust in
//! every CI build: a few thousand random and mutated inputs per target, fed to the very
//! same target bodies. See docs/FUZZING.md for running the real fuzzers.

#[path = "../../fuzz/src/targets.rs"]
mod targets;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use prost::Message as _;
use router_service::policy::BUILTIN_POLICY_TOML;
use taskrouter_proto::SESSION_SCHEMA_VERSION;
use taskrouter_proto::v1::{
    Complexity, ExecutionPath, RoutingAnalysis, SessionState, SpecialistProgress, Task, TaskStatus,
};

fn run<S: Strategy>(target: &str, cases: u32, strategy: S, body: fn(&S::Value))
where
    S::Value: std::fmt::Debug,
{
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&strategy, |input| {
        body(&input);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{target}: {e}");
    }
}

/// Random bytes, biased to short inputs like a fuzzer's early corpus.
fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![3 => vec(any::<u8>(), 0..64), 1 => vec(any::<u8>(), 0..max)]
}

/// `base` with a few random edits: overwritten, inserted and deleted bytes.
fn mutated(base: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = base.len().max(1);
    vec((0..3u8, 0..len, any::<u8>(), 0..16usize), 1..8).prop_map(move |edits| {
        let mut b = base.clone();
        for (kind, at, byte, n) in edits {
            let at = at.min(b.len());
            match kind {
                0 if at < b.len() => b[at] = byte,
                1 => b
                    .splice(at..at, std::iter::repeat_n(byte, n.max(1)))
                    .for_each(drop),
                _ => {
                    let end = (at + n).min(b.len());
                    b.drain(at..end);
                }
            }
        }
        b
    })
}

#[test]
fn the_policy_decides_thousands_of_arbitrary_tasks_within_its_invariants() {
    run("policy_evaluate", 3000, bytes(4096), |data| {
        targets::policy_evaluate(data)
    });
    for data in [
        &b""[..],
        &[0xff; 64],
        &[0; 64],
        "Deploy HIPAA fix".as_bytes(),
    ] {
        targets::policy_evaluate(data);
    }
}

#[test]
fn policy_text_loads_or_is_refused_in_one_line() {
    let builtin = BUILTIN_POLICY_TOML.as_bytes().to_vec();
    run(
        "policy_from_toml (mutated built-in)",
        1500,
        mutated(builtin),
        |data| targets::policy_from_toml(data),
    );
    run("policy_from_toml (random)", 500, bytes(512), |data| {
        targets::policy_from_toml(data)
    });
    let deep_array = format!("x = {}", "[".repeat(10_000));
    let deep_tables = "a.".repeat(5_000) + "b = 1";
    for text in [
        "",
        "[",
        "[multi_agent]\nrollout_percent = 101",
        "[multi_agent]\nrollout_percent = -1",
        "[rules]\nvalue_threshold_usd = nan",
        "[rules]\nvalue_threshold_usd = inf",
        "[rules]\nvalue_threshold_usd = -0.0",
        "[rules]\ncompliance_keywords = []",
        "[rules]\ncompliance_keywords = [\"\"]",
        "[rules]\ncross_repo_min_repositories = 0",
        "[limits]\nmax_description_bytes = 18446744073709551615",
        "[multi_agent]\nrollout_group = \"\u{0}\"",
        "[unknown]\nx = 1",
        deep_array.as_str(),
        deep_tables.as_str(),
    ] {
        targets::policy_from_toml(text.as_bytes());
    }
}

/// A realistic stored state: what a checkpoint writes (`data`) and what create stores
/// once (`task`), joined the way the target splits them.
fn stored_state() -> Vec<u8> {
    let task = Task {
        id: "FUZZ-1".into(),
        description: "Rotate HIPAA credentials".into(),
        complexity: Complexity::High as i32,
        estimated_value_usd: 250.0,
        repositories: vec!["org/a".into(), "org/b".into()],
        labels: [("team".to_string(), "core".to_string())].into(),
    };
    let state = SessionState {
        schema_version: SESSION_SCHEMA_VERSION,
        task_id: task.id.clone(),
        status: TaskStatus::InProgress as i32,
        path: ExecutionPath::MultiAgent as i32,
        analysis: Some(RoutingAnalysis {
            suggested_roles: vec!["implementer".into(), "security-reviewer".into()],
            ..Default::default()
        }),
        iteration_count: 7,
        max_iterations: 50,
        specialists: vec![SpecialistProgress {
            role: "implementer".into(),
            iterations: 3,
            ..Default::default()
        }],
        cost_usd: 0.02,
        worker_id: "exec-a".into(),
        ..Default::default()
    };
    let data = state.encode_to_vec();
    assert!(data.len() < 256, "the target's first byte holds the split");
    let mut out = vec![data.len() as u8];
    out.extend(data);
    out.extend(task.encode_to_vec());
    out
}

#[test]
fn stored_state_decodes_or_is_reported_corrupt() {
    let valid = stored_state();
    let (data, task) = valid[1..].split_at(valid[0] as usize);
    let decoded = executor_service::session::RedisStore::decode_state("k", data, task, 1)
        .expect("the seed input is a valid stored state");
    assert_eq!(decoded.task.map(|t| t.id), Some("FUZZ-1".to_string()));
    targets::session_state_decode(&valid);
    run(
        "session_state_decode (mutated)",
        2000,
        mutated(valid),
        |data| targets::session_state_decode(data),
    );
    run("session_state_decode (random)", 1000, bytes(2048), |data| {
        targets::session_state_decode(data)
    });
    // Groups nested ten thousand deep, and a length far past the end.
    let mut nested = vec![0u8];
    nested.extend(vec![0x0b; 10_000]);
    targets::session_state_decode(&nested);
    targets::session_state_decode(&[0, 0x1a, 0xff, 0xff, 0xff, 0xff, 0x0f]);
}
