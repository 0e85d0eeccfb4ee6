//! The bodies of the fuzz targets, shared by the cargo-fuzz binaries (`fuzz_targets/`,
//! libFuzzer) and the runs without libFuzzer in `tests/e2e/tests/fuzz_corpus.rs`. Each takes
//! arbitrary bytes and panics only when a property of the code under test is broken.
//!
//! Dependencies: `router-service`, `executor-service`, `taskrouter-proto`, `prost` and
//! `tonic`.

use executor_service::error::Error;
use executor_service::session::RedisStore;
use executor_service::task_list::{
    FINGERPRINT_LEN, PAGE_TOKEN_LIFETIME_SECS, TOKEN_V1_ITERATIONS, TOKEN_V1_LIST, TokenBody,
    Tokens,
};
use executor_service::workspace::config::check_base_ref;
use executor_service::workspace::trailers::{self, Trailers};
use executor_service::workspace::{porcelain, refname};
use prost::Message as _;
use router_service::PolicyEngine;
use router_service::policy::{
    DEFAULT_TENANT, GateName, MAX_APPROVAL_RULES, MAX_BUDGET_USD, MAX_DESCRIPTION_BYTES_CEILING,
    MAX_GATE_TIMEOUT, MAX_REPO_ROLES, OnReject, OnTimeout, TENANT_LABEL, policy_version,
    rule_reason, valid_tenant_name,
};
use std::collections::HashSet;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};
use taskrouter_proto::SESSION_SCHEMA_VERSION;
use taskrouter_proto::v1::{
    ApprovalGate, Complexity, RejectAction, RoutingAnalysis, RoutingDecision, Task, TimeoutAction,
};

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

    /// One of `choices`, or (for the index one past the end) up to `max` raw bytes.
    fn pick(&mut self, choices: &[&str], max: usize) -> String {
        let i = self.u8() as usize % (choices.len() + 1);
        match choices.get(i) {
            Some(c) => (*c).to_string(),
            None => {
                let n = self.u8() as usize % (max + 1);
                String::from_utf8_lossy(self.take(n)).into_owned()
            }
        }
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
            // What GetPolicy serves rebuilds the same policy (clients evaluate with it).
            let rebuilt = PolicyEngine::from_proto(&p, engine.version(), "router")
                .expect("a served policy compiles");
            assert_eq!(rebuilt.to_proto(), p);
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

/// Target `git_output`: the workspace's names and git output parsers. Branch and
/// directory names round-trip through their encoding and only the canonical spelling
/// decodes; a checkpoint commit's trailers parse back to what was written; `ls-remote`,
/// `push --porcelain`, `rev-list --missing=print` and `-z` output of any shape parse without panicking, and a tip is
/// only ever the hex id on the exact ref's line.
pub fn git_output(data: &[u8]) {
    let mut input = Input::new(data);
    let name = input.text(80);
    let role = input.text(32);
    // A prefix passed `git check-ref-format`: printable ASCII at least.
    let prefix: String = input
        .pick(&["taskrouter/", "", "a--b/", "x"], 16)
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .collect();
    let iteration = input.u32();
    let fence = input.u64();
    let oid_bytes = input.u64();
    let text = input.rest();

    // Names: a valid ref component that decodes back to itself, and nothing else decodes.
    for raw in [&name, &role] {
        let enc = refname::encode(raw);
        assert!(
            enc.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{enc:?}"
        );
        assert!(!enc.contains(refname::ROLE_SEPARATOR), "{enc:?}");
        assert!(!enc.starts_with('-') && !enc.ends_with('-'), "{enc:?}");
        assert_eq!(refname::decode(&enc).as_ref(), Some(raw), "{enc:?}");
        assert_eq!(
            refname::check_length("x", raw).is_ok(),
            enc.len() <= refname::MAX_COMPONENT_BYTES
        );
    }
    for candidate in [name.as_str(), text.as_str()] {
        if let Some(raw) = refname::decode(candidate) {
            assert_eq!(refname::encode(&raw), candidate, "{raw:?}");
        }
    }
    let task_branch = refname::task_branch(&prefix, &name);
    assert_eq!(
        refname::parse_branch(&prefix, &task_branch),
        Some((name.clone(), None))
    );
    assert_eq!(
        refname::parse_branch(&prefix, &refname::role_branch(&prefix, &name, &role)),
        Some((name.clone(), Some(role.clone())))
    );
    if refname::check_repo_name(&name).is_ok() {
        assert!(!name.starts_with('-') && !name.is_empty());
        assert!(
            name.split('/')
                .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
        );
    }
    if check_base_ref(&name).is_ok() {
        assert!(!name.starts_with('-') && !name.contains(".."));
        assert!(name.bytes().all(|b| b.is_ascii_graphic()), "{name:?}");
    }

    // Trailers: what `message` writes, the trailer block parses back (task ids are
    // printable ASCII without whitespace; a role is made one line).
    let task_id: String = name.chars().filter(|c| c.is_ascii_graphic()).collect();
    let task_id = if task_id.is_empty() {
        "t".into()
    } else {
        task_id
    };
    let written = Trailers {
        task_id,
        iteration,
        role: role.clone(),
        fence,
    };
    let message = written.message(&text);
    let (subject, block) = message
        .split_once("\n\n")
        .expect("a subject, a blank line, the trailers");
    assert!(
        !subject.contains('\n') && !subject.trim().is_empty(),
        "{subject:?}"
    );
    assert!(subject.chars().count() <= trailers::MAX_SUBJECT_CHARS);
    let one_line: String = role
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let expected = Trailers {
        role: one_line.trim().to_string(),
        ..written
    };
    assert_eq!(Trailers::parse(block), Some(expected), "{block:?}");
    if Trailers::parse(&text).is_some() {
        assert!(text.lines().any(|l| {
            l.split_once(':')
                .is_some_and(|(k, _)| k.trim() == trailers::TASK)
        }));
    }

    // ls-remote: only the exact ref's line with a hex id counts, wherever it is.
    let full = format!("refs/heads/{task_branch}");
    if let Some(oid) = porcelain::ls_remote_tip(&text, &full) {
        assert!(!oid.is_empty() && oid.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(text.lines().any(|l| l == format!("{oid}\t{full}")));
    }
    let oid = format!("{oid_bytes:016x}");
    assert_eq!(
        porcelain::ls_remote_tip(&format!("{oid}\t{full}\n{text}"), &full),
        Some(oid)
    );
    if porcelain::push_rejected(&text, &text) {
        assert!(text.lines().any(|l| l.starts_with('!')));
    }
    // rev-list --missing=print: every id reported missing is hex from a `?` line.
    for missing in porcelain::missing_objects(&text) {
        assert!(!missing.is_empty() && missing.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(text.lines().any(|l| l.trim_end() == format!("?{missing}")));
    }
    let paths = porcelain::nul_separated(&text);
    assert!(paths.iter().all(|p| !p.is_empty() && !p.contains('\0')));
    assert_eq!(paths.concat(), text.replace('\0', ""));
}

/// The `git_output` input that yields exactly `name` (≤ 80 bytes), `role` (≤ 32 bytes),
/// the prefix `taskrouter/` and `text` as git's output: for seeds and regressions.
pub fn git_output_input(name: &str, role: &str, text: &str) -> Vec<u8> {
    assert!(name.len() <= 80 && role.len() <= 32);
    let mut out = Vec::new();
    for s in [name, role] {
        out.extend([s.len() as u8, 0]);
        out.extend(s.as_bytes());
    }
    out.push(0); // prefix: the first choice
    out.extend([0u8; 4 + 8 + 8]); // iteration, fence, object id
    out.extend(text.as_bytes());
    out
}

/// The `policy_governance` input whose policy text is exactly `toml`.
pub fn governance_input(toml: &str) -> Vec<u8> {
    let mut out = vec![8u8];
    out.extend(toml.as_bytes());
    out
}

/// Numbers a policy's governance settings may be written as, in range or not.
const USD: &[&str] = &[
    "0",
    "0.0",
    "-0.0",
    "2.5",
    "10",
    "1e6",
    "1000000.0",
    "1000000.5",
    "1e300",
    "-1",
    "nan",
    "-nan",
    "inf",
    "-inf",
    "1_000",
    "0x10",
    "\"5\"",
    "true",
    "[]",
];

/// A TOML basic string holding `s` exactly.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Policy TOML with `[budgets]`, `[tenants]` and `[[approval.rules]]` built from the
/// bytes: sections and keys present or not, values in range, out of range, of the wrong
/// type or raw text, and raw bytes at the end.
pub fn governance_toml(data: &[u8]) -> String {
    let mut input = Input::new(data);
    let flags = input.u8();
    let mut text = String::new();
    let value = |input: &mut Input, key: &str| {
        let v = match input.u8() % 4 {
            0 => format!("{}", f64::from(input.u32()) / 1000.0),
            _ => input.pick(USD, 12),
        };
        format!("{key} = {v}\n")
    };
    if flags & 1 != 0 {
        text.push_str("[budgets]\n");
        if !input.u8().is_multiple_of(4) {
            text.push_str(&value(&mut input, "single_agent_usd"));
        }
        if !input.u8().is_multiple_of(4) {
            text.push_str(&value(&mut input, "multi_agent_usd"));
        }
    }
    if flags & 2 != 0 {
        text.push_str("[tenants]\n");
        if !input.u8().is_multiple_of(4) {
            text.push_str(&value(&mut input, "default_usd_per_day"));
        }
        text.push_str("[tenants.usd_per_day]\n");
        for _ in 0..input.u8() % 4 {
            let name = input.pick(&["acme", "a.b_c-d", "", "a b", "default"], 70);
            text.push_str(&value(&mut input, &toml_string(&name)));
        }
    }
    if flags & 4 != 0 {
        let rules = match input.u8() {
            255 => MAX_APPROVAL_RULES + 1,
            n => usize::from(n % 5),
        };
        for _ in 0..rules {
            text.push_str("[[approval.rules]]\n");
            let fields: [(&str, &[&str]); 5] = [
                (
                    "reason",
                    &[
                        "DEPLOYMENT",
                        "COMPLIANCE_SENSITIVE",
                        "REASON_CODE_HIGH_VALUE",
                        "high_complexity",
                        " CROSS_REPO ",
                        "UNSPECIFIED",
                        "REASON_CODE_",
                    ],
                ),
                ("gate", &["before_start", "before_complete", "BEFORE_START"]),
                (
                    "timeout",
                    &[
                        "1s",
                        "24h",
                        "30days",
                        "31days",
                        "0s",
                        "500ms",
                        "1h 30m",
                        "2562047788015215h",
                    ],
                ),
                ("on_timeout", &["reject", "approve", "Reject"]),
                ("on_reject", &["fail", "iterate", "retry"]),
            ];
            for (key, choices) in fields {
                match input.u8() % 8 {
                    0 => {}
                    1 => text.push_str(&value(&mut input, key)),
                    _ => {
                        let v = input.pick(choices, 24);
                        text.push_str(&format!("{key} = {}\n", toml_string(&v)));
                    }
                }
            }
        }
    }
    if flags & 8 != 0 {
        text.push_str(&input.rest());
    }
    text
}

/// Target `policy_governance`: any budgets, tenants and approval rules load or are
/// refused in one line naming the origin; a loaded policy's analysis carries a finite
/// budget and tenant limit within range for its decision and tenant, and only the gates
/// its rules ask for, one per gate, each from the first rule whose reason fired.
pub fn policy_governance(data: &[u8]) {
    let text = governance_toml(data);
    let engine = match PolicyEngine::from_toml(&text, "fuzz.toml") {
        Ok(engine) => engine,
        Err(e) => {
            let message = e.to_string();
            assert!(message.starts_with("fuzz.toml"), "{message}");
            assert!(!message.contains('\n'), "one line: {message:?}");
            return;
        }
    };
    let settings = engine.settings();
    assert!(settings.approval.rules.len() <= MAX_APPROVAL_RULES);
    let in_range = |usd: f64| usd.is_finite() && (0.0..=MAX_BUDGET_USD).contains(&usd);
    let mut tasks = vec![task_from_bytes(data)];
    let tenants = settings.tenants.usd_per_day.keys().take(2).cloned();
    for tenant in tenants.chain(["not listed".to_string(), "other".to_string()]) {
        tasks.push(Task {
            id: "g-1".into(),
            description: "Deploy the HIPAA fix to production across repositories".into(),
            complexity: Complexity::Critical as i32,
            estimated_value_usd: 1e9,
            repositories: vec!["org/a".into(), "org/b".into()],
            labels: [(TENANT_LABEL.to_string(), tenant)].into(),
        });
    }
    for task in &tasks {
        let a = engine.evaluate(task);
        check_analysis(&engine, task, &a);
        assert!(in_range(a.budget_usd), "budget {}", a.budget_usd);
        let budget = if a.decision == RoutingDecision::UseMultiAgent as i32 {
            settings.budgets.multi_agent_usd
        } else {
            settings.budgets.single_agent_usd
        };
        assert_eq!(a.budget_usd.to_bits(), budget.to_bits());
        assert!(in_range(a.tenant_usd_per_day), "{}", a.tenant_usd_per_day);
        let label = task.labels.get(TENANT_LABEL);
        match label.filter(|t| valid_tenant_name(t)) {
            Some(t) => assert_eq!(&a.tenant, t),
            None => assert_eq!(a.tenant, DEFAULT_TENANT),
        }
        let limit = settings.tenants.usd_per_day.get(&a.tenant);
        assert_eq!(
            a.tenant_usd_per_day,
            *limit.unwrap_or(&settings.tenants.default_usd_per_day)
        );
        // Each gate: the first rule for it whose reason fired, in file order.
        let fired = |code: i32| a.reasons.iter().any(|r| r.code == code);
        for (gate, name) in [
            (ApprovalGate::BeforeStart, GateName::BeforeStart),
            (ApprovalGate::BeforeComplete, GateName::BeforeComplete),
        ] {
            let rule = settings.approval.rules.iter().find(|r| {
                r.gate == name && rule_reason(&r.reason).is_some_and(|c| fired(c as i32))
            });
            let got: Vec<_> = a.gates.iter().filter(|g| g.gate == gate as i32).collect();
            let Some(rule) = rule else {
                assert!(got.is_empty(), "{got:?}");
                continue;
            };
            assert_eq!(got.len(), 1, "one requirement per gate: {:?}", a.gates);
            let g = got[0];
            assert_eq!(rule_reason(&rule.reason).map(|c| c as i32), Some(g.reason));
            assert!((1..=MAX_GATE_TIMEOUT.as_secs()).contains(&u64::from(g.timeout_seconds)));
            let on_timeout = match rule.on_timeout {
                OnTimeout::Reject => TimeoutAction::Reject,
                OnTimeout::Approve => TimeoutAction::Approve,
            };
            assert_eq!(g.on_timeout, on_timeout as i32);
            let on_reject = match rule.on_reject {
                OnReject::Fail => RejectAction::Fail,
                OnReject::Iterate => RejectAction::Iterate,
            };
            assert_eq!(g.on_reject, on_reject as i32);
            assert!(gate == ApprovalGate::BeforeComplete || on_reject == RejectAction::Fail);
            assert!(!g.message.is_empty() && !g.message.contains('\n'));
        }
        assert!(a.gates.len() <= 2, "{:?}", a.gates);
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A refused page token: INVALID_ARGUMENT naming `page_token` and nothing else.
fn assert_refused(what: &str, got: Result<TokenBody, Error>) {
    match got {
        Err(e @ Error::InvalidRequest(_)) => {
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            let Error::InvalidRequest(v) = &e else {
                unreachable!()
            };
            assert!(!v.is_empty());
            assert!(
                v.as_slice().iter().all(|f| f.field == "page_token"),
                "{what}: {e}"
            );
            let status = tonic::Status::from(e);
            assert!(
                status.message().contains("page_token"),
                "{what}: {status:?}"
            );
        }
        other => panic!("{what}: {other:?}, not INVALID_ARGUMENT naming page_token"),
    }
}

/// Target `page_token`: any text given as a `List` / `ListIterations` page token is
/// refused with INVALID_ARGUMENT naming `page_token` (never a panic); a token this key
/// sealed opens to the same body for its kind and filter only, until it expires, and any
/// truncation or changed digit is refused.
pub fn page_token(data: &[u8]) {
    static TOKENS: OnceLock<Tokens> = OnceLock::new();
    let tokens = TOKENS.get_or_init(|| Tokens::new(b"fuzz page token key"));
    let mut input = Input::new(data);
    let kind = match input.u8() % 4 {
        0 | 1 => TOKEN_V1_LIST,
        2 => TOKEN_V1_ITERATIONS,
        _ => input.u8(),
    };
    let mut fingerprint = [0u8; FINGERPRINT_LEN];
    for b in &mut fingerprint {
        *b = input.u8();
    }
    let now = now_secs();
    let issued = match input.u8() % 4 {
        0 => input.u64(),
        1 => now.saturating_sub(PAGE_TOKEN_LIFETIME_SECS + 1),
        _ => now,
    };
    let position = input.u64() as i64;
    let id = input.text(64);
    let cut = input.u32() as usize;
    let digit = input.u8();
    let rest = input.take(usize::MAX);

    // Arbitrary text, and arbitrary bytes in the token's own hex form.
    for token in [String::from_utf8_lossy(rest).into_owned(), to_hex(rest)] {
        match tokens.open(kind, &token, fingerprint) {
            Ok(body) => assert!(tokens.seal(kind, &body).eq_ignore_ascii_case(&token)),
            Err(e) => assert_refused("arbitrary token", Err(e)),
        }
    }

    // What this key sealed opens to the same body, for its kind and filter only.
    let body = TokenBody {
        fingerprint,
        issued,
        position,
        id,
    };
    let token = tokens.seal(kind, &body);
    let opened = tokens.open(kind, &token, fingerprint);
    let expired = |at: u64| at.saturating_sub(issued) > PAGE_TOKEN_LIFETIME_SECS;
    if expired(now) {
        assert_refused("expired token", opened);
        return;
    }
    if expired(now_secs()) {
        // It expired while being opened: either answer is right.
        return;
    }
    assert_eq!(opened.ok(), Some(body.clone()), "{token}");
    assert_refused(
        "other kind",
        tokens.open(kind.wrapping_add(1), &token, fingerprint),
    );
    let mut other = fingerprint;
    other[0] ^= 1;
    assert_refused("other filter", tokens.open(kind, &token, other));
    let cut = cut % token.len();
    assert_refused("truncated", tokens.open(kind, &token[..cut], fingerprint));
    let at = usize::from(digit) * token.len() / 256;
    let mut changed = token.clone().into_bytes();
    changed[at] = if changed[at] == b'0' { b'1' } else { b'0' };
    let changed = String::from_utf8(changed).expect("hex stays ASCII");
    assert_refused("changed digit", tokens.open(kind, &changed, fingerprint));
}
