//! Bad input, field by field: properties over every request field of every RPC (Route,
//! GetPolicy, Submit, Run, Get, Watch, Cancel) against in-process servers. Huge, empty,
//! NaN/±inf/negative, unknown enum numbers, 10k labels, 10k repositories, huge bounds,
//! ids with spaces, control characters, unicode and `{}`.
//!
//! Every answer is OK or a clear status (INVALID_ARGUMENT naming exactly the offending
//! fields, NOT_FOUND, ALREADY_EXISTS, ABORTED while another worker holds the task),
//! never UNKNOWN or INTERNAL, never a hang; no accepted task gets stuck; and a valid task
//! submitted afterwards still completes.

mod inproc;

use inproc::{brief, brief_task, env};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use service_kit::validation::{
    TaskLimits, Violations, check_task, check_task_id, field_violations,
};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use taskrouter_proto::v1::{
    CancelRequest, GetPolicyRequest, GetRequest, RouteRequest, RoutingDecision, RunRequest,
    SubmitRequest, Task, WatchRequest,
};
use test_support::client::wait_final;
use tonic::{Code, Status};

/// Cases per property: enough to cover every strategy branch, small enough for CI.
const CASES: u32 = 64;
/// Largest `max_iterations` the executor accepts.
const MAX_ITERATIONS: u32 = 100_000;
/// Largest `iteration_limit` of Get.
const MAX_ITERATION_LIMIT: u32 = 1_000;
const CALL_LIMIT: Duration = Duration::from_secs(15);

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    })
}

/// Runs a property and panics with the smallest failing input (described briefly).
fn check<S: Strategy>(
    name: &str,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    if let Err(e) = runner().run(&strategy, test) {
        panic!("{name}: {e}");
    }
}

// ---- strategies -------------------------------------------------------------------

fn task_id() -> impl Strategy<Value = String> {
    prop_oneof![
        20 => "[A-Za-z0-9_.:-]{1,24}",
        1 => Just(String::new()),
        1 => "[ -~]{1,40}",
        1 => "\\{[a-z]{0,6}\\}[a-z{}]{0,4}",
        1 => "[\\x00-\\x1f\\x7f]{1,8}",
        1 => "\\PC{1,20}",
        1 => (250usize..3000).prop_map(|n| "i".repeat(n)),
    ]
}

const WORDS: &[&str] = &[
    "fix",
    "HIPAA",
    "PHI",
    "credentials",
    "secrets",
    "deploy",
    "production",
    "cross-repo",
    "across",
    "repositories",
    "README",
    "typo",
    "payment",
    "\u{0}",
    "😀",
    "{x}",
];

fn description() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just(String::new()),
        2 => "\\PC{0,200}",
        2 => vec(prop::sample::select(WORDS), 0..30).prop_map(|w| w.join(" ")),
        1 => "[\\x00-\\x1f]{0,50}",
        // At and around the 1 MiB limit of both services.
        1 => (0usize..=20).prop_map(|d| "x".repeat(1024 * 1024 - 10 + d)),
    ]
}

fn complexity() -> impl Strategy<Value = i32> {
    prop_oneof![6 => 1i32..=4, 1 => Just(0), 1 => any::<i32>()]
}

fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        1 => prop::sample::select(
            &[
                f64::NAN,
                f64::INFINITY,
                f64::NEG_INFINITY,
                -0.0,
                -1.0,
                f64::MAX,
                f64::MIN,
                f64::MIN_POSITIVE,
            ][..]
        ),
        4 => 0.0..1e6f64,
        1 => any::<f64>(),
    ]
}

fn repository() -> impl Strategy<Value = String> {
    prop_oneof![
        20 => "[a-z]{1,8}/[a-z]{1,8}",
        1 => Just(String::new()),
        1 => Just("   ".to_string()),
        1 => "\\PC{1,20}",
        1 => (1020usize..1030).prop_map(|n| "r".repeat(n)),
    ]
}

fn repositories() -> impl Strategy<Value = Vec<String>> {
    prop_oneof![
        6 => vec(repository(), 0..4),
        1 => (250usize..262).prop_map(|n| (0..n).map(|i| format!("org/r{i}")).collect()),
        1 => Just(()).prop_map(|_| (0..10_000).map(|i| format!("org/r{i}")).collect()),
    ]
}

/// Labels the simulated agent reads, with values that parse, do not parse or overflow.
/// (`sim.hang_role` and large latencies are left out: they make the agent slow on
/// purpose, which is not bad input.)
fn sim_label() -> impl Strategy<Value = (String, String)> {
    (
        prop::sample::select(
            &[
                "sim.iterations",
                "sim.latency_ms",
                "sim.fail_step",
                "sim.fail_role",
                "sim.specialist_iterations",
                "sim.fail_iteration",
            ][..],
        ),
        prop::sample::select(
            &[
                "",
                "abc",
                "-1",
                "0",
                "1",
                "3",
                "4294967296",
                "analysis",
                "synthesis",
                "specialist",
                "bogus",
                "implementer",
            ][..],
        ),
    )
        .prop_map(|(k, v)| (k.to_string(), v.to_string()))
}

fn free_label() -> impl Strategy<Value = (String, String)> {
    (
        prop_oneof![
            12 => "[a-z][a-z.]{0,12}",
            1 => Just(String::new()),
            1 => "\\PC{1,10}",
            1 => (1020usize..1030).prop_map(|n| "k".repeat(n)),
        ],
        prop_oneof![
            12 => "[ -~]{0,12}",
            1 => "\\PC{0,10}",
            1 => (1020usize..1030).prop_map(|n| "v".repeat(n)),
        ],
    )
}

fn labels() -> impl Strategy<Value = HashMap<String, String>> {
    prop_oneof![
        6 => vec(prop_oneof![3 => free_label(), 1 => sim_label()], 0..4)
            .prop_map(|pairs| pairs.into_iter().collect()),
        1 => (250usize..262)
            .prop_map(|n| (0..n).map(|i| (format!("k{i}"), "v".to_string())).collect()),
        1 => Just(()).prop_map(|_| {
            (0..10_000)
                .map(|i| (format!("k{i}"), format!("v{i}")))
                .collect()
        }),
    ]
}

fn any_task() -> impl Strategy<Value = Task> {
    (
        task_id(),
        description(),
        complexity(),
        value(),
        repositories(),
        labels(),
    )
        .prop_map(
            |(id, description, complexity, value, repositories, labels)| Task {
                id,
                description,
                complexity,
                estimated_value_usd: value,
                repositories,
                labels,
            },
        )
}

/// Mostly a task, sometimes none at all.
fn maybe_task() -> impl Strategy<Value = Option<Task>> {
    prop_oneof![1 => Just(None), 9 => any_task().prop_map(Some)]
}

fn max_iterations() -> impl Strategy<Value = u32> {
    prop_oneof![
        2 => Just(0u32),
        2 => 1u32..60,
        1 => Just(MAX_ITERATIONS),
        1 => Just(MAX_ITERATIONS + 1),
        1 => any::<u32>(),
    ]
}

/// How often each outcome (`OK` or a status code) was seen by one property.
#[derive(Default)]
struct Outcomes(Mutex<std::collections::BTreeMap<String, usize>>);

impl Outcomes {
    fn saw<T>(&self, r: &Result<T, Status>) {
        let key = match r {
            Ok(_) => "OK".to_string(),
            Err(s) => format!("{:?}", s.code()),
        };
        *self.0.lock().unwrap().entry(key).or_default() += 1;
    }

    /// Prints the tally and checks the property reached both the accepting and the
    /// rejecting path (otherwise it says nothing about one of them).
    fn report(self, name: &str) {
        let seen = self.0.into_inner().unwrap();
        println!("{name}: {seen:?}");
        for want in ["OK", "InvalidArgument"] {
            assert!(seen.contains_key(want), "{name} never saw {want}: {seen:?}");
        }
    }
}

/// A printable summary of a case, for failure messages.
struct Case<T>(T);

impl std::fmt::Debug for Case<Option<Task>> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(t) => f.write_str(&brief_task(t)),
            None => f.write_str("no task"),
        }
    }
}

// ---- oracles --------------------------------------------------------------------------

/// The fields both services must name for `task` (in the order they check them).
fn task_fields(task: Option<&Task>) -> Vec<String> {
    let mut v = Violations::new();
    match task {
        Some(t) => check_task(&mut v, "task", t, &TaskLimits::default()),
        None => v.add("task", "is required"),
    }
    names(&v)
}

fn names(v: &Violations) -> Vec<String> {
    v.as_slice().iter().map(|f| f.field.clone()).collect()
}

fn id_fields(field: &str, id: &str) -> Vec<String> {
    let mut v = Violations::new();
    check_task_id(&mut v, field, id);
    names(&v)
}

/// A status must be one of `allowed`; INVALID_ARGUMENT must name exactly `fields`.
fn clear_status(
    what: &str,
    status: &Status,
    fields: &[String],
    allowed: &[Code],
) -> Result<(), TestCaseError> {
    let code = status.code();
    prop_assert!(
        !matches!(code, Code::Unknown | Code::Internal),
        "{what}: {code:?} {}",
        status.message()
    );
    if code == Code::InvalidArgument {
        let named: Vec<String> = field_violations(status)
            .into_iter()
            .map(|f| f.field)
            .collect();
        prop_assert!(
            !fields.is_empty(),
            "{what}: rejected a valid request: {named:?}"
        );
        prop_assert_eq!(&named, &fields.to_vec(), "{}: fields named", what);
        for f in fields {
            prop_assert!(
                status.message().contains(f.as_str()),
                "{what}: the message names {f}: {}",
                status.message()
            );
        }
    } else {
        prop_assert!(
            fields.is_empty(),
            "{what}: {code:?} ({}) instead of INVALID_ARGUMENT for {fields:?}",
            status.message()
        );
        prop_assert!(
            allowed.contains(&code),
            "{what}: {code:?} {}",
            status.message()
        );
    }
    Ok(())
}

// ---- properties -----------------------------------------------------------------------

/// Ids that exist (submitted before the property runs), so properties also reach the
/// paths for known tasks.
const KNOWN: [&str; 3] = ["KNOWN-1", "KNOWN-2", "KNOWN-{3}"];

fn submit_known(env: &inproc::Env) {
    let mut client = env.executor();
    for id in KNOWN {
        env.call(
            "Submit",
            CALL_LIMIT,
            client.submit(SubmitRequest {
                task: Some(inproc::valid_task(id)),
                ..Default::default()
            }),
        )
        .unwrap();
    }
}

fn known_id() -> impl Strategy<Value = String> {
    prop::sample::select(&KNOWN[..]).prop_map(String::from)
}

#[test]
fn route_answers_every_task_with_an_analysis_or_invalid_argument_naming_the_fields() {
    let env = env();
    let outcomes = Outcomes::default();
    check("Route", maybe_task().prop_map(Case), |Case(task)| {
        let fields = task_fields(task.as_ref());
        let mut client = env.router();
        let r = env.call(
            "Route",
            CALL_LIMIT,
            client.route(RouteRequest {
                task,
                ..Default::default()
            }),
        );
        outcomes.saw(&r);
        match r {
            Ok(resp) => {
                prop_assert!(
                    fields.is_empty(),
                    "Route accepted a task with bad {fields:?}"
                );
                let a = resp.into_inner().analysis;
                prop_assert!(a.is_some());
                let a = a.unwrap();
                prop_assert!(matches!(
                    RoutingDecision::try_from(a.decision),
                    Ok(RoutingDecision::UseSingleAgent | RoutingDecision::UseMultiAgent)
                ));
                prop_assert!(!a.reasons.is_empty());
                prop_assert!((0.0..=1.0).contains(&a.confidence));
                prop_assert!(a.score.is_finite() && a.score >= 0.0);
            }
            Err(status) => clear_status("Route", &status, &fields, &[])?,
        }
        // GetPolicy has no fields; whatever came before, it answers.
        let policy = env.call(
            "GetPolicy",
            CALL_LIMIT,
            client.get_policy(GetPolicyRequest {}),
        );
        prop_assert!(policy.is_ok(), "GetPolicy: {policy:?}");
        Ok(())
    });
    outcomes.report("Route");
}

#[test]
fn submit_accepts_valid_tasks_names_every_bad_field_and_gets_no_task_stuck() {
    let env = env();
    let accepted = Mutex::new(Vec::new());
    let outcomes = Outcomes::default();
    let strategy = (
        maybe_task().prop_map(Case),
        max_iterations(),
        prop::option::of(any::<bool>()),
    );
    check(
        "Submit",
        strategy,
        |(Case(task), max_iterations, use_multi_agent)| {
            let mut fields = task_fields(task.as_ref());
            if max_iterations > MAX_ITERATIONS {
                fields.push("max_iterations".into());
            }
            let id = task.as_ref().map(|t| t.id.clone()).unwrap_or_default();
            let mut client = env.executor();
            let r = env.call(
                "Submit",
                CALL_LIMIT,
                client.submit(SubmitRequest {
                    task,
                    max_iterations,
                    use_multi_agent,
                    budget_usd: None,
                }),
            );
            outcomes.saw(&r);
            match r {
                Ok(resp) => {
                    prop_assert!(fields.is_empty(), "Submit accepted bad {fields:?}");
                    let resp = resp.into_inner();
                    prop_assert_eq!(resp.state.map(|s| s.task_id), Some(id.clone()));
                    if resp.created {
                        accepted.lock().unwrap().push(id);
                    }
                }
                Err(status) => clear_status("Submit", &status, &fields, &[])?,
            }
            Ok(())
        },
    );
    outcomes.report("Submit");
    // Every accepted task reaches a final state (completed, or failed with a reason).
    let accepted = accepted.into_inner().unwrap();
    let mut client = env.executor();
    for id in &accepted {
        let s = env.call(
            "waiting for an accepted task",
            Duration::from_secs(90),
            wait_final(&mut client, id, Duration::from_secs(80)),
        );
        if s.status != taskrouter_proto::v1::TaskStatus::Completed as i32 {
            assert!(
                !s.last_error.is_empty(),
                "{}: failed without a reason",
                brief(id)
            );
        }
    }
    println!(
        "Submit: {} accepted tasks all reached a final state",
        accepted.len()
    );
    env.a_valid_task_still_completes("AFTER-SUBMIT-PROPERTY");
}

#[test]
fn run_answers_with_a_result_or_a_clear_status() {
    let env = env();
    submit_known(env);
    let outcomes = Outcomes::default();
    let task = prop_oneof![
        8 => maybe_task(),
        // Only an id: what a caller sends to resume.
        1 => prop_oneof![task_id(), known_id()].prop_map(|id| Some(Task {
            id,
            ..Default::default()
        })),
        1 => known_id().prop_map(|id| Some(inproc::valid_task(&id))),
    ];
    let strategy = (
        task.prop_map(Case),
        any::<bool>(),
        max_iterations(),
        prop::option::of(any::<bool>()),
    );
    check(
        "Run",
        strategy,
        |(Case(task), resume, max_iterations, use_multi_agent)| {
            // Resuming needs only the id; anything more must still be valid.
            let id_only = task
                .as_ref()
                .is_some_and(|t| resume && t.description.is_empty() && t.complexity == 0);
            let mut fields = match &task {
                Some(t) if id_only => id_fields("task.id", &t.id),
                other => task_fields(other.as_ref()),
            };
            if max_iterations > MAX_ITERATIONS {
                fields.push("max_iterations".into());
            }
            let mut client = env.executor();
            let r = env.call(
                "Run",
                Duration::from_secs(30),
                client.run(RunRequest {
                    task,
                    resume,
                    max_iterations,
                    use_multi_agent,
                    budget_usd: None,
                }),
            );
            outcomes.saw(&r);
            match r {
                Ok(resp) => {
                    prop_assert!(fields.is_empty(), "Run accepted bad {fields:?}");
                    prop_assert!(resp.into_inner().result.is_some());
                }
                Err(status) => clear_status(
                    "Run",
                    &status,
                    &fields,
                    // ALREADY_EXISTS: a known id without resume; ABORTED: a queue worker holds
                    // it; NOT_FOUND: resuming an unknown id.
                    &[Code::AlreadyExists, Code::Aborted, Code::NotFound],
                )?,
            }
            Ok(())
        },
    );
    outcomes.report("Run");
    env.a_valid_task_still_completes("AFTER-RUN-PROPERTY");
}

#[test]
fn get_watch_and_cancel_answer_any_task_id_with_a_clear_status() {
    let env = env();
    submit_known(env);
    let outcomes = Outcomes::default();
    let id = prop_oneof![3 => task_id(), 1 => known_id()];
    let strategy = (
        id,
        any::<bool>(),
        prop_oneof![Just(0u32), 1u32..2000, any::<u32>()],
        any::<u64>(),
    );
    check(
        "Get/Watch/Cancel",
        strategy,
        |(task_id, include_iterations, iteration_limit, after_sequence)| {
            let mut client = env.executor();
            let id = id_fields("task_id", &task_id);

            let mut fields = id.clone();
            if iteration_limit > MAX_ITERATION_LIMIT {
                fields.push("iteration_limit".into());
            }
            let r = env.call(
                "Get",
                CALL_LIMIT,
                client.get(GetRequest {
                    task_id: task_id.clone(),
                    include_iterations,
                    iteration_limit,
                }),
            );
            outcomes.saw(&r);
            match r {
                Ok(resp) => {
                    prop_assert!(fields.is_empty(), "Get accepted bad {fields:?}");
                    let resp = resp.into_inner();
                    prop_assert_eq!(resp.state.map(|s| s.task_id), Some(task_id.clone()));
                    let limit = if iteration_limit == 0 {
                        100
                    } else {
                        iteration_limit
                    };
                    prop_assert!(resp.iterations.len() <= limit as usize);
                }
                Err(status) => clear_status("Get", &status, &fields, &[Code::NotFound])?,
            }

            let r = env.call("Watch", CALL_LIMIT, async {
                let mut stream = client
                    .watch(WatchRequest {
                        task_id: task_id.clone(),
                        after_sequence,
                    })
                    .await?
                    .into_inner();
                // The first item (or the end) must come without an error status.
                match tokio::time::timeout(Duration::from_millis(300), stream.message()).await {
                    Ok(Err(status)) => Err(status),
                    _ => Ok(()),
                }
            });
            if let Err(status) = r {
                clear_status("Watch", &status, &id, &[Code::NotFound])?;
            } else {
                prop_assert!(id.is_empty(), "Watch accepted a bad task_id");
            }

            let r = env.call(
                "Cancel",
                CALL_LIMIT,
                client.cancel(CancelRequest {
                    task_id: task_id.clone(),
                }),
            );
            match r {
                Ok(resp) => {
                    prop_assert!(id.is_empty(), "Cancel accepted a bad task_id");
                    prop_assert!(resp.into_inner().state.is_some());
                }
                Err(status) => clear_status("Cancel", &status, &id, &[Code::NotFound])?,
            }
            Ok(())
        },
    );
    outcomes.report("Get (with Watch and Cancel on the same ids)");
    env.a_valid_task_still_completes("AFTER-ID-PROPERTY");
}

#[test]
fn resuming_an_unknown_id_with_only_the_id_is_not_found() {
    let env = env();
    let mut client = env.executor();
    let r = env.call(
        "Run",
        CALL_LIMIT,
        client.run(RunRequest {
            task: Some(Task {
                id: "NEVER-SUBMITTED".into(),
                ..Default::default()
            }),
            resume: true,
            max_iterations: 0,
            use_multi_agent: None,
            budget_usd: None,
        }),
    );
    let status = r.expect_err("nothing to resume");
    assert_eq!(status.code(), Code::NotFound, "{}", status.message());
    // And no empty task was created on the way.
    let got = env.call(
        "Get",
        CALL_LIMIT,
        client.get(GetRequest {
            task_id: "NEVER-SUBMITTED".into(),
            ..Default::default()
        }),
    );
    assert_eq!(got.unwrap_err().code(), Code::NotFound);
}
