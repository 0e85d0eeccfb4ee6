//! SessionState encode/decode: what every checkpoint writes (the state record without the
//! task) and what every load reads (record plus task), for a team-path task with four
//! specialists mid-run.
//!
//! `cargo bench -p executor-service --bench state_codec`

use criterion::{Criterion, criterion_group, criterion_main};
use executor_service::session::RedisStore;
use prost::Message;
use std::hint::black_box;
use taskrouter_proto::v1::{
    Complexity, ExecutionPath, ReasonCode, RoutingAnalysis, RoutingDecision, RoutingReason,
    SessionState, SpecialistProgress, SpecialistStatus, Task, TaskStatus, TeamPhase,
};

fn task(description_bytes: usize) -> Task {
    Task {
        id: "TASK-4711".into(),
        description: "x".repeat(description_bytes),
        complexity: Complexity::High as i32,
        estimated_value_usd: 250.0,
        repositories: vec!["org/ehr".into(), "org/portal".into()],
        labels: [("team".to_string(), "payments".to_string())]
            .into_iter()
            .collect(),
    }
}

fn state() -> SessionState {
    let roles = ["implementer", "architect", "reviewer", "security-reviewer"];
    SessionState {
        schema_version: taskrouter_proto::SESSION_SCHEMA_VERSION,
        task_id: "TASK-4711".into(),
        task: None,
        status: TaskStatus::InProgress as i32,
        path: ExecutionPath::MultiAgent as i32,
        analysis: Some(RoutingAnalysis {
            decision: RoutingDecision::UseMultiAgent as i32,
            reasons: vec![
                RoutingReason {
                    code: ReasonCode::HighComplexity as i32,
                    message: "complexity is HIGH".into(),
                },
                RoutingReason {
                    code: ReasonCode::ComplianceSensitive as i32,
                    message: "description mentions compliance-sensitive term \"hipaa\"".into(),
                },
            ],
            score: 5.0,
            confidence: 1.0,
            rollout_bucket: 42,
            suggested_roles: roles.iter().map(|r| r.to_string()).collect(),
            policy_version: "a4b8e499cba61630".into(),
            multi_agent_recommended: true,
            ..Default::default()
        }),
        iteration_count: 7,
        max_iterations: 50,
        phase: TeamPhase::Specialists as i32,
        specialists: roles
            .iter()
            .map(|r| SpecialistProgress {
                role: r.to_string(),
                status: SpecialistStatus::Running as i32,
                iterations: 2,
                output: "edited 3 files; tests pass; 2 review comments addressed".into(),
                last_error: String::new(),
                repos: Vec::new(),
            })
            .collect(),
        cost_usd: 0.0142,
        tokens_in: 9_800,
        tokens_out: 2_100,
        version: 12,
        fencing_token: 3,
        worker_id: "executor-7c9f-12".into(),
        ..Default::default()
    }
}

fn benches(c: &mut Criterion) {
    let s = state();
    let encoded = s.encode_to_vec();
    let mut g = c.benchmark_group("session_state");
    g.bench_function("encode_checkpoint_record", |b| {
        b.iter(|| black_box(&s).encode_to_vec())
    });
    g.bench_function("decode_checkpoint_record", |b| {
        b.iter(|| SessionState::decode(black_box(encoded.as_slice())))
    });
    for bytes in [200usize, 64 * 1024] {
        let t = task(bytes).encode_to_vec();
        g.bench_function(format!("load_with_{bytes}_byte_description"), |b| {
            b.iter(|| {
                RedisStore::decode_state(
                    "bench:{TASK-4711}:state",
                    black_box(&encoded),
                    black_box(&t),
                    12,
                )
            })
        });
    }
    g.finish();
    println!("checkpoint record: {} bytes", encoded.len());
}

criterion_group!(codec, benches);
criterion_main!(codec);
