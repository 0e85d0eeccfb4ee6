//! The bodies of the fuzz targets, shared by the cargo-fuzz binaries (`fuzz_targets/`,
//! nightly) and the stable-Rust runs in `tests/e2e/tests/fuzz_corpus.rs`. Each takes
//! arbitrary bytes and panics only when a property of the code under test is broken.
//!
//! Dependencies: `router-service`, `executor-service`, `taskrouter-proto` and `prost`.

use executor_service::error::Error;
use executor_service::session::RedisStore;
use prost::Message as _;
use router_service::PolicyEngine;
use router_service::policy::{MAX_DESCRIPTION_BYTES_CEILING, MAX_REPO_ROLES, policy_version};
use std::collections::HashSet;
use std::sync::OnceLock;
use taskrouter_proto::SESSION_SCHEMA_VERSION;
use taskrouter_proto::v1::{Complexity, RoutingAnalysis, RoutingDecision, Task};

/// Words the policy reacts to, so short inputs reach every rule.
const WORDS: &[&str] = &[
    "HIPAA",
    "hipaa",
    "PHI",
    "PII",
    "credentials",
    "secrets",
    "deploy",
    "deployment",
    "production",
    "prod",
    "cross-repo",
    "across repositories",
    "multi-repo",
    "monorepo",
    "fix",
    "typo",
    "README",
    "-",
    "_",
    " ",
    "\n",
    "é",
    "\u{0}",
];

/// Reads values off the front of the fuzzer's bytes; past the end every read is zero.
pub struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    /// Reads from `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self(data)
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }

    fn u8(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }

    fn u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        let got = self.take(4);
        b[..got.len()].copy_from_slice(got);
        u32::from_le_bytes(b)
    }

    fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        let got = self.take(8);
        b[..got.len()].copy_from_slice(got);
        u64::from_le_bytes(b)
    }

    /// A string of up to `max` bytes: raw (lossy UTF-8) or a run of policy words.
    fn text(&mut self, max: usize) -> String {
        let n = self.u8() as usize % (max + 1);
        if self.u8().is_multiple_of(2) {
            String::from_utf8_lossy(self.take(n)).into_owned()
        } else {
            (0..n.min(16))
                .map(|_| WORDS[self.u8() as usize % WORDS.len()])
                .collect::<Vec<_>>()
                .join(" ")
        }
    }

    /// Whatever is left, as lossy UTF-8.
    fn rest(&mut self) -> String {
        String::from_utf8_lossy(self.take(usize::MAX)).into_owned()
    }
}

/// A task built from arbitrary bytes: any id, complexity number, float bit pattern,
/// repository list (with blanks and duplicates) and labels; the description is the rest.
pub fn task_from_bytes(data: &[u8]) -> Task {
    let mut input = Input::new(data);
    let id = input.text(48);
    let complexity = match input.u8() {
        n @ 0..=199 => i32::from(n % 6) - 1,
        _ => input.u32() as i32,
    };
    let estimated_value_usd = match input.u8() % 4 {
        0 => f64::from_bits(input.u64()),
        1 => f64::from(input.u32() % 1000),
        2 => -f64::from(input.u8()),
        _ => 100.0,
    };
    let repositories = (0..input.u8() % 12)
        .map(|_| match input.u8() % 4 {
            0 => String::new(),
            1 => " org/a ".to_string(),
            2 => "org/a".to_string(),
            _ => input.text(24),
        })
        .collect();
    let labels = (0..input.u8() % 6)
        .map(|_| (input.text(12), input.text(12)))
        .collect();
    let mut description = input.text(64);
    description.push_str(&input.rest());
    Task {
        id,
        description,
        complexity,
        estimated_value_usd,
        repositories,
        labels,
    }
}

fn builtin() -> &'static PolicyEngine {
    static ENGINE: OnceLock<PolicyEngine> = OnceLock::new();
    ENGINE.get_or_init(|| PolicyEngine::builtin().expect("the built-in policy compiles"))
}

/// What every analysis must satisfy, whatever the task.
pub fn check_analysis(engine: &PolicyEngine, task: &Task, a: &RoutingAnalysis) {
    let decision = RoutingDecision::try_from(a.decision);
    assert!(
        matches!(
            decision,
            Ok(RoutingDecision::UseSingleAgent | RoutingDecision::UseMultiAgent)
        ),
        "decision {}",
        a.decision
    );
    assert!(!a.reasons.is_empty(), "every decision has a reason");
    assert!(a.reasons.iter().all(|r| !r.message.is_empty()));
    assert!(
        (0.0..=1.0).contains(&a.confidence),
        "confidence {}",
        a.confidence
    );
    assert!(a.score.is_finite() && a.score >= 0.0, "score {}", a.score);
    assert!(
        (1..=100).contains(&a.rollout_bucket),
        "bucket {}",
        a.rollout_bucket
    );
    assert_eq!(a.policy_version, engine.version());
    let roles: HashSet<&String> = a.suggested_roles.iter().collect();
    assert_eq!(roles.len(), a.suggested_roles.len(), "roles are distinct");
    if decision == Ok(RoutingDecision::UseMultiAgent) {
        assert!(a.multi_agent_recommended);
        assert_eq!(
            a.suggested_roles.first().map(String::as_str),
            Some("implementer")
        );
        assert!(a.suggested_roles.len() <= 1 + 4 + MAX_REPO_ROLES);
    } else {
        assert!(a.suggested_roles.is_empty(), "a single agent has no team");
    }
    // The rules that must fire whatever else the task says.
    let complexity = Complexity::try_from(task.complexity).ok();
    let threshold = engine.settings().rules.value_threshold_usd;
    if matches!(complexity, Some(Complexity::High | Complexity::Critical))
        || (task.estimated_value_usd.is_finite() && task.estimated_value_usd >= threshold)
    {
        assert!(
            a.multi_agent_recommended,
            "a firing rule recommends the team"
        );
    }
}

/// Target `policy_evaluate`: the built-in policy decides any task without panicking,
/// within its invariants, and the same way every time.
pub fn policy_evaluate(data: &[u8]) {
    let engine = builtin();
    let task = task_from_bytes(data);
    let a = engine.evaluate(&task);
    check_analysis(engine, &task, &a);
    let again = engine.evaluate(&task);
    assert_eq!(
        a.encode_to_vec(),
        again.encode_to_vec(),
        "evaluation is deterministic"
    );
}

/// Target `policy_from_toml`: any text either loads as a usable policy or is refused
/// with a one-line error naming its origin, never a panic.
pub fn policy_from_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match PolicyEngine::from_toml(text, "fuzz.toml") {
        Ok(engine) => {
            assert_eq!(engine.version(), policy_version(text.as_bytes()));
            let p = engine.to_proto();
            assert!(p.rollout_percent <= 100);
            assert!((1..=MAX_DESCRIPTION_BYTES_CEILING).contains(&p.max_description_bytes));
            for sample in [
                &data[..data.len().min(64)],
                b"Deploy HIPAA fix across repos",
            ] {
                let task = task_from_bytes(sample);
                check_analysis(&engine, &task, &engine.evaluate(&task));
            }
        }
        Err(e) => {
            let message = e.to_string();
            assert!(message.starts_with("fuzz.toml"), "{message}");
            assert!(!message.contains('\n'), "one line: {message:?}");
        }
    }
}

/// Target `session_state_decode`: any stored `data`/`task` pair decodes to a state of
/// the current schema or is a `CorruptState` error naming the key, never a panic; a
/// decoded state re-encodes stably.
pub fn session_state_decode(data: &[u8]) {
    const KEY: &str = "taskrouter:{FUZZ}:state";
    let split = data.first().map(|b| *b as usize).unwrap_or(0);
    let body = data.get(1..).unwrap_or_default();
    let (state_bytes, task_bytes) = body.split_at(split.min(body.len()));
    match RedisStore::decode_state(KEY, state_bytes, task_bytes, 7) {
        Ok(state) => {
            assert_eq!(state.schema_version, SESSION_SCHEMA_VERSION);
            assert_eq!(state.version, 7);
            let once = state.encode_to_vec();
            let twice = taskrouter_proto::v1::SessionState::decode(once.as_slice())
                .expect("a decoded state re-decodes")
                .encode_to_vec();
            assert_eq!(once, twice, "re-encoding is stable");
        }
        Err(e @ Error::CorruptState { .. }) => {
            assert_eq!(e.code(), tonic::Code::DataLoss);
            assert!(e.to_string().contains(KEY), "{e}");
        }
        Err(other) => panic!("decoding gave {other:?}, not CorruptState"),
    }
}
