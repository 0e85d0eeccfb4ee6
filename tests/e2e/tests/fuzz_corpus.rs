//! The fuzz targets of `tests/fuzz`, run without libFuzzer in every CI build: the
//! committed seed corpora plus a few thousand random and mutated inputs per target, fed
//! to the very same target bodies. The coverage-guided runs are a step of `tests/run.sh`;
//! see docs/FUZZING.md.

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

#[test]
fn git_names_trailers_and_output_parse_within_their_invariants() {
    let ls_remote = "1111111111111111111111111111111111111111\trefs/heads/x/refs/heads/taskrouter/t-1\n\
                     abcdef0123456789abcdef0123456789abcdef01\trefs/heads/taskrouter/t-1\n";
    let porcelain =
        "To file:///r.git\n!\trefs/heads/a:refs/heads/a\t[rejected] (stale info)\nDone\n";
    let trailers = "Taskrouter-Task: t-1\nTaskrouter-Iteration: 3\nTaskrouter-Role: backend\nTaskrouter-Fence: 7\n";
    let seeds = [
        targets::git_output_input("t-1", "backend", ls_remote),
        targets::git_output_input("fix.login", "--lead-", porcelain),
        targets::git_output_input("a--b", "repo:org/a", trailers),
        targets::git_output_input("_+f", "_2F", "a\0b c\0\0_61"),
        targets::git_output_input("", "", "\tREFS/heads/taskrouter/\n"),
    ];
    for seed in &seeds {
        targets::git_output(seed);
    }
    run("git_output (random)", 2000, bytes(1024), |data| {
        targets::git_output(data)
    });
    for seed in seeds {
        run("git_output (mutated)", 300, mutated(seed), |data| {
            targets::git_output(data)
        });
    }
}

#[test]
fn governance_sections_load_or_are_refused_and_decide_within_range() {
    run("policy_governance (random)", 1000, bytes(512), |data| {
        targets::policy_governance(data)
    });
    let example = concat!(
        "[budgets]\nsingle_agent_usd = 2.0\nmulti_agent_usd = 8.0\n",
        "[tenants]\ndefault_usd_per_day = 100.0\n[tenants.usd_per_day]\nacme = 5.0\n",
        "[[approval.rules]]\nreason = \"DEPLOYMENT\"\ngate = \"before_start\"\n",
        "timeout = \"1h\"\non_timeout = \"reject\"\n",
        "[[approval.rules]]\nreason = \"COMPLIANCE_SENSITIVE\"\ngate = \"before_complete\"\n",
        "timeout = \"10m\"\non_timeout = \"approve\"\non_reject = \"iterate\"\n",
    );
    run(
        "policy_governance (mutated example)",
        500,
        mutated(targets::governance_input(example)),
        |data| targets::policy_governance(data),
    );
    for text in [
        example,
        "[budgets]\nsingle_agent_usd = -0.0",
        "[budgets]\nmulti_agent_usd = 1000000.0",
        "[budgets]\nmulti_agent_usd = 1000000.0000001",
        "[tenants.usd_per_day]\n\"\" = 1",
        "[[approval.rules]]\nreason = \"UNSPECIFIED\"\ngate = \"before_start\"\ntimeout = \"1h\"\non_timeout = \"reject\"",
        "[[approval.rules]]\nreason = \"DEPLOYMENT\"\ngate = \"before_start\"\ntimeout = \"2562047788015215h\"\non_timeout = \"reject\"",
        "[[approval.rules]]\nreason = \"DEPLOYMENT\"\ngate = \"before_start\"\ntimeout = \"1h\"\non_timeout = \"reject\"\non_reject = \"iterate\"",
    ] {
        targets::policy_governance(&targets::governance_input(text));
    }
}

#[test]
fn page_tokens_round_trip_and_anything_else_is_invalid_argument() {
    run("page_token (random)", 3000, bytes(512), |data| {
        targets::page_token(data)
    });
    for data in [&b""[..], &[0xff; 200], &[3; 80], b"0123456789abcdef"] {
        targets::page_token(data);
    }
}

/// Every committed seed (`tests/fuzz/corpus/<target>/`) through its target, so a seed
/// that once crashed stays fixed without libFuzzer.
#[test]
fn the_committed_seed_corpora_pass() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    type Target = fn(&[u8]);
    let targets: [(&str, Target); 6] = [
        ("policy_evaluate", targets::policy_evaluate),
        ("policy_from_toml", targets::policy_from_toml),
        ("session_state_decode", targets::session_state_decode),
        ("git_output", targets::git_output),
        ("policy_governance", targets::policy_governance),
        ("page_token", targets::page_token),
    ];
    for (name, target) in targets {
        let dir = root.join(name);
        let mut seeds = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            target(&std::fs::read(&path).unwrap());
            seeds += 1;
        }
        assert!(seeds > 0, "{name} has no seeds in {}", dir.display());
    }
}
