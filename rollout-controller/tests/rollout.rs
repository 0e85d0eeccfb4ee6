//! The rollout controller against real processes: a private redis-server, the
//! router-service binary reading the policy file the controller rewrites, an
//! executor-service binary running tasks on the simulator agent, and the
//! rollout-controller binary itself. Intervals are short; tasks are submitted throughout.

use rollout_controller::state::{Event, EventKind, RolloutState, RolloutStore, Status};
use router_service::rollout_bucket;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use taskrouter_proto::v1::executor_client::ExecutorClient;
use taskrouter_proto::v1::router_client::RouterClient;
use taskrouter_proto::v1::{
    Complexity, ExecutionPath, GetPolicyRequest, GetRequest, Policy, SubmitRequest, Task,
    TaskStatus,
};
use test_support::{RedisServer, ServiceProcess, free_port, wait_for_grpc_serving};

/// The live policy before any rollout: the team path is off.
const LIVE: &str = "[multi_agent]\nrollout_percent = 0\n";
/// The candidate: team path for tasks worth $100 or more (the built-in threshold).
const CANDIDATE: &str = "# candidate: team path for valuable work\n[multi_agent]\nrollout_percent = 0\n\n[rules]\nvalue_threshold_usd = 100.0\n";

struct Stack {
    redis: RedisServer,
    _router: ServiceProcess,
    router_addr: SocketAddr,
    _executor: ServiceProcess,
    executor_addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Stack {
    async fn start() -> Self {
        let redis = RedisServer::start();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("policy.toml"), LIVE).unwrap();
        std::fs::write(dir.path().join("candidate.toml"), CANDIDATE).unwrap();

        let router_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let policy = dir.path().join("policy.toml");
        let router = ServiceProcess::spawn(
            "router-service",
            &[
                "--listen",
                &router_addr.to_string(),
                "--policy",
                policy.to_str().unwrap(),
                "--policy-poll-interval",
                "100ms",
            ],
            &[],
        );
        assert!(
            wait_for_grpc_serving(router_addr, "taskrouter.v1.Router", Duration::from_secs(20))
                .await,
            "router did not start:\n{}",
            router.log_contents()
        );
        let executor_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let executor = ServiceProcess::spawn(
            "executor-service",
            &[
                "--listen",
                &executor_addr.to_string(),
                "--redis-url",
                &redis.url(),
                "--router-addr",
                &format!("http://{router_addr}"),
                "--concurrency",
                "8",
                "--sim-latency",
                "10ms",
            ],
            &[],
        );
        assert!(
            wait_for_grpc_serving(
                executor_addr,
                "taskrouter.v1.Executor",
                Duration::from_secs(20)
            )
            .await,
            "executor did not start:\n{}",
            executor.log_contents()
        );
        Self {
            redis,
            _router: router,
            router_addr,
            _executor: executor,
            executor_addr,
            dir,
        }
    }

    fn policy_path(&self) -> PathBuf {
        self.dir.path().join("policy.toml")
    }

    /// The controller binary with short intervals; `extra` adds or overrides flags.
    fn controller(&self, interval: &str, extra: &[&str]) -> ServiceProcess {
        let policy = self.policy_path();
        let candidate = self.dir.path().join("candidate.toml");
        let mut args = vec![
            "--redis-url".to_string(),
            self.redis.url(),
            "--policy".into(),
            policy.display().to_string(),
            "--candidate".into(),
            candidate.display().to_string(),
            "--interval".into(),
            interval.into(),
            "--check-every".into(),
            "100ms".into(),
            "--min-finished".into(),
            "3".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        ServiceProcess::spawn("rollout-controller", &refs, &[])
    }

    async fn store(&self) -> RolloutStore {
        RolloutStore::new(self.redis.connection_manager().await, "taskrouter")
    }

    async fn router_percent(&self) -> u32 {
        self.router_policy().await.rollout_percent
    }

    /// The policy the router serves (GetPolicy).
    async fn router_policy(&self) -> Policy {
        let mut client = RouterClient::connect(format!("http://{}", self.router_addr))
            .await
            .unwrap();
        let resp = client
            .get_policy(GetPolicyRequest {})
            .await
            .unwrap()
            .into_inner();
        resp.policy.unwrap()
    }

    async fn executor(&self) -> ExecutorClient<tonic::transport::Channel> {
        ExecutorClient::connect(format!("http://{}", self.executor_addr))
            .await
            .unwrap()
    }

    /// Submits tasks until `stop`: valuable ones (the candidate's team path) with ids in
    /// rollout buckets up to 10, so they take the team path from the first step on, and
    /// simple ones (single path).
    fn spawn_load(
        &self,
        labels: &[(&str, &str)],
        stop: Arc<AtomicBool>,
    ) -> tokio::task::JoinHandle<()> {
        let addr = self.executor_addr;
        let labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        tokio::spawn(async move {
            let mut client = ExecutorClient::connect(format!("http://{addr}"))
                .await
                .unwrap();
            let mut n = 0u32;
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("LOAD-{n}");
                n += 1;
                let valuable = i.is_multiple_of(2);
                if valuable && rollout_bucket("multi_agent", &id) > 10 {
                    continue;
                }
                i += 1;
                let mut t = task(&id, if valuable { 500.0 } else { 5.0 });
                if valuable {
                    t.labels.extend(labels.iter().cloned());
                }
                let _ = client
                    .submit(SubmitRequest {
                        task: Some(t),
                        ..Default::default()
                    })
                    .await;
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        })
    }
}

impl Stack {
    /// Runs the `taskctl` binary against this stack's Redis and router.
    fn taskctl(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(test_support::binary_path("taskctl"))
            .args(args)
            .env("REDIS_URL", self.redis.url())
            .env("TASKCTL_ROUTER", format!("http://{}", self.router_addr))
            .output()
            .unwrap()
    }
}

fn task(id: &str, value: f64) -> Task {
    Task {
        id: id.into(),
        description: "Update the parser and its tests".into(),
        complexity: Complexity::Low as i32,
        estimated_value_usd: value,
        repositories: vec!["org/app".into()],
        labels: Default::default(),
    }
}

async fn wait_for_state(
    store: &RolloutStore,
    controller: &ServiceProcess,
    within: Duration,
    what: &str,
    done: impl Fn(&RolloutState) -> bool,
) -> RolloutState {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(s)) = store.load().await
            && done(&s)
        {
            return s;
        }
        if Instant::now() >= deadline {
            let events = store.events(100).await.unwrap_or_default();
            panic!(
                "timed out waiting for {what}; events {:?}; controller log:\n{}",
                kinds(&events),
                controller.log_contents()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn kinds(events: &[Event]) -> Vec<(EventKind, u32)> {
    events.iter().map(|e| (e.kind, e.percent)).collect()
}

fn steps(events: &[Event]) -> Vec<u32> {
    events
        .iter()
        .filter(|e| e.kind == EventKind::Step)
        .map(|e| e.percent)
        .collect()
}

async fn path_of(
    client: &mut ExecutorClient<tonic::transport::Channel>,
    id: &str,
) -> (i32, String) {
    let s = client
        .get(GetRequest {
            task_id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .state
        .unwrap();
    (s.path, s.analysis.unwrap_or_default().policy_version)
}

async fn wait_final(client: &mut ExecutorClient<tonic::transport::Channel>, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = client
            .get(GetRequest {
                task_id: id.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .state
            .unwrap();
        if s.status == TaskStatus::Completed as i32 || s.status == TaskStatus::Failed as i32 {
            return;
        }
        assert!(Instant::now() < deadline, "task {id} did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An id of a valuable task whose bucket is in (lo, hi]: outside the rollout at `lo`
/// percent, inside at `hi`.
fn id_in_buckets(prefix: &str, lo: u32, hi: u32) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|id| {
            let b = rollout_bucket("multi_agent", id);
            b > lo && b <= hi
        })
        .unwrap()
}

#[tokio::test]
async fn a_good_candidate_is_promoted_through_every_step() {
    let stack = Stack::start().await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = stack.spawn_load(&[], stop.clone());
    let mut controller = stack.controller("2s", &[]);
    let store = stack.store().await;

    // The router serves every step in order, each after its hot reload.
    let mut seen: Vec<u32> = Vec::new();
    let mut executor = stack.executor().await;
    let sticky = id_in_buckets("STICKY", 10, 50);
    let mut sticky_version = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = stack.router_percent().await;
        if seen.last() != Some(&p) {
            seen.push(p);
            if p == 10 {
                // Routed at 10 %, outside the rollout: single path, and it stays there.
                let mut t = task(&sticky, 500.0);
                t.labels.insert("sim.iterations".into(), "3".into());
                executor
                    .submit(SubmitRequest {
                        task: Some(t),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                wait_final(&mut executor, &sticky).await;
                let (path, version) = path_of(&mut executor, &sticky).await;
                assert_eq!(path, ExecutionPath::SingleAgent as i32);
                sticky_version = version;
            }
        }
        if let Ok(Some(s)) = store.load().await
            && !s.status.is_active()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rollout did not finish; router served {seen:?}:\n{}",
            controller.log_contents()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();

    let state = store.load().await.unwrap().unwrap();
    assert_eq!(
        state.status,
        Status::Completed,
        "{}",
        controller.log_contents()
    );
    assert_eq!(seen, [0, 10, 25, 50, 100], "percentages the router served");
    assert_eq!(stack.router_percent().await, 100);
    let events = store.events(100).await.unwrap();
    assert_eq!(steps(&events), [10, 25, 50, 100], "{:?}", kinds(&events));
    assert_eq!(events.last().unwrap().kind, EventKind::Complete);

    // The task routed at 10 % kept its path and its decision.
    let (path, version) = path_of(&mut executor, &sticky).await;
    assert_eq!(path, ExecutionPath::SingleAgent as i32);
    assert_eq!(version, sticky_version);
    // A new task of the same kind now takes the team path (every bucket is in at 100 %).
    let fresh = format!("{sticky}-again");
    let mut t = task(&fresh, 500.0);
    t.labels.insert("sim.iterations".into(), "1".into());
    executor
        .submit(SubmitRequest {
            task: Some(t),
            ..Default::default()
        })
        .await
        .unwrap();
    wait_final(&mut executor, &fresh).await;
    assert_eq!(
        path_of(&mut executor, &fresh).await.0,
        ExecutionPath::MultiAgent as i32
    );

    // The file on disk is the candidate at 100 %, comments kept.
    let text = std::fs::read_to_string(stack.policy_path()).unwrap();
    assert!(text.contains("rollout_percent = 100"), "{text}");
    assert!(
        text.contains("# candidate: team path for valuable work"),
        "{text}"
    );
    assert_eq!(
        controller
            .wait_exit(Duration::from_secs(5))
            .await
            .map(|s| s.success()),
        Some(true)
    );
}

#[tokio::test]
async fn an_injected_regression_is_rolled_back_within_one_interval_naming_the_gate() {
    let stack = Stack::start().await;
    let stop = Arc::new(AtomicBool::new(false));
    // The team path's analysis always fails: every team task falls back.
    let load = stack.spawn_load(&[("sim.fail_step", "analysis")], stop.clone());
    let interval = Duration::from_secs(4);
    let mut controller = stack.controller("4s", &[]);
    let store = stack.store().await;

    let state = wait_for_state(
        &store,
        &controller,
        Duration::from_secs(30),
        "a rollback",
        |s| !s.status.is_active(),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();

    assert_eq!(
        state.status,
        Status::RolledBack,
        "{}",
        controller.log_contents()
    );
    assert_eq!(state.percent, 0);
    assert!(state.reason.contains("fallback rate"), "{}", state.reason);
    let events = store.events(100).await.unwrap();
    assert_eq!(
        kinds(&events),
        [(EventKind::Step, 10), (EventKind::Rollback, 0)]
    );
    let rollback = &events[1];
    assert_eq!(rollback.gate.as_deref(), Some("fallback_rate"));
    let took = Duration::from_millis(rollback.at_ms - events[0].at_ms);
    assert!(
        took < interval,
        "rollback took {took:?}, more than one interval"
    );

    // The router applies the kill switch path.
    let deadline = Instant::now() + Duration::from_secs(5);
    while stack.router_percent().await != 0 {
        assert!(Instant::now() < deadline, "router still not at 0 %");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // One log line names the gate.
    let log = controller.log_contents();
    assert!(
        log.lines()
            .any(|l| l.contains("rollout rollback") && l.contains("fallback_rate")),
        "{log}"
    );
    assert_eq!(
        controller
            .wait_exit(Duration::from_secs(5))
            .await
            .map(|s| s.success()),
        Some(true)
    );
}

#[tokio::test]
async fn a_controller_killed_mid_step_resumes_without_skipping_or_repeating() {
    let stack = Stack::start().await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = stack.spawn_load(&[], stop.clone());
    let store = stack.store().await;
    let mut first = stack.controller("2s", &[]);

    let at_25 = wait_for_state(&store, &first, Duration::from_secs(30), "step 25", |s| {
        s.percent == 25
    })
    .await;
    // Mid-step: well before the 2 s interval ends.
    first.kill9();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(stack.router_percent().await, 25);
    let mut second = stack.controller("2s", &[]);
    let resumed = wait_for_state(
        &store,
        &second,
        Duration::from_secs(20),
        "the restarted controller to pick the rollout up",
        |s| s.updated_at_ms > at_25.updated_at_ms,
    )
    .await;
    // Same step, same clock: 25 % neither skipped nor started over.
    assert_eq!(resumed.id, at_25.id);
    assert_eq!(resumed.percent, 25);
    assert_eq!(resumed.step_started_at_ms, at_25.step_started_at_ms);

    let end = wait_for_state(
        &store,
        &second,
        Duration::from_secs(60),
        "the end of the rollout",
        |s| !s.status.is_active(),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();

    assert_eq!(end.status, Status::Completed, "{}", second.log_contents());
    assert_eq!(end.id, at_25.id, "the same rollout continued");
    let events = store.events(100).await.unwrap();
    assert_eq!(steps(&events), [10, 25, 50, 100], "{:?}", kinds(&events));
    let resumed: Vec<&Event> = events
        .iter()
        .filter(|e| e.kind == EventKind::Resumed)
        .collect();
    assert_eq!(resumed.len(), 1);
    assert_eq!(resumed[0].percent, 25);
    let _ = second.wait_exit(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn pause_holds_the_step_and_abort_rolls_back() {
    let stack = Stack::start().await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = stack.spawn_load(&[], stop.clone());
    let store = stack.store().await;
    let mut controller = stack.controller("1s", &[]);
    wait_for_state(
        &store,
        &controller,
        Duration::from_secs(20),
        "the first step",
        |s| s.percent == 10,
    )
    .await;

    let out = stack.taskctl(&["rollout", "pause"]);
    assert!(out.status.success(), "{out:?}");
    wait_for_state(
        &store,
        &controller,
        Duration::from_secs(5),
        "the pause",
        |s| s.status == Status::Paused,
    )
    .await;
    // Several intervals later the step has not moved.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let paused = store.load().await.unwrap().unwrap();
    assert_eq!((paused.status, paused.percent), (Status::Paused, 10));

    let status = stack.taskctl(&["rollout", "status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("paused at 10 %"), "{text}");
    assert!(text.contains("pause") && text.contains("step "), "{text}");

    let out = stack.taskctl(&["rollout", "abort"]);
    assert!(out.status.success(), "{out:?}");
    let aborted = wait_for_state(
        &store,
        &controller,
        Duration::from_secs(5),
        "the abort",
        |s| s.status == Status::Aborted,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert_eq!(aborted.percent, 0);
    assert!(
        std::fs::read_to_string(stack.policy_path())
            .unwrap()
            .contains("rollout_percent = 0")
    );
    let events = store.events(100).await.unwrap();
    assert_eq!(
        kinds(&events),
        [
            (EventKind::Step, 10),
            (EventKind::Pause, 10),
            (EventKind::Abort, 0)
        ]
    );
    assert_eq!(
        controller
            .wait_exit(Duration::from_secs(5))
            .await
            .map(|s| s.success()),
        Some(true)
    );
}

#[tokio::test]
async fn an_invalid_candidate_is_never_written() {
    let stack = Stack::start().await;
    let bad = stack.dir.path().join("candidate.toml");
    std::fs::write(
        &bad,
        "[multi_agent]\nrollout_percent = 0\n[rules]\nvalue_threshold_usd = -1.0\n",
    )
    .unwrap();
    let before = std::fs::read(stack.policy_path()).unwrap();
    let mut controller = stack.controller("1s", &[]);
    let status = controller
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exits");
    assert_eq!(status.code(), Some(2));
    let log = controller.log_contents();
    assert!(
        log.contains("--candidate") && log.contains("rules.value_threshold_usd"),
        "{log}"
    );
    assert_eq!(std::fs::read(stack.policy_path()).unwrap(), before);
    assert!(stack.store().await.load().await.unwrap().is_none());
    assert_eq!(stack.router_percent().await, 0);
    assert_no_temp_files(stack.dir.path());
}

fn assert_no_temp_files(dir: &Path) {
    let names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
}

#[tokio::test]
async fn policy_diff_shows_the_flips_and_the_observed_outcomes_by_group() {
    let stack = Stack::start().await;
    let mut executor = stack.executor().await;
    // Live policy: team path off. Two valuable tasks (the candidate sends them to the team
    // path) and two simple ones, all run on the single path.
    let secret = "rotate the token sk-live-12345";
    for (id, value) in [
        ("DIFF-A", 500.0),
        ("DIFF-B", 900.0),
        ("DIFF-C", 5.0),
        ("DIFF-D", 1.0),
    ] {
        let mut t = task(id, value);
        t.description = secret.into();
        executor
            .submit(SubmitRequest {
                task: Some(t),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    for id in ["DIFF-A", "DIFF-B", "DIFF-C", "DIFF-D"] {
        wait_final(&mut executor, id).await;
    }
    let candidate = stack.dir.path().join("candidate-100.toml");
    // Governance changes too: a team-path budget, and a gate for valuable work.
    std::fs::write(
        &candidate,
        "[multi_agent]\nrollout_percent = 100\n[rules]\nvalue_threshold_usd = 100.0\n\
         [budgets]\nmulti_agent_usd = 10.0\n\
         [[approval.rules]]\nreason = \"HIGH_VALUE\"\ngate = \"before_start\"\ntimeout = \"1h\"\non_timeout = \"reject\"\n",
    )
    .unwrap();
    let cand = candidate.to_str().unwrap();

    let out = stack.taskctl(&["--json", "policy", "diff", cand, "--since", "1h"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["tasks"], 4);
    let group = |l: &str, c: &str| {
        v["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["live"] == l && g["candidate"] == c)
            .unwrap()
            .clone()
    };
    let flips = group("single", "multi");
    assert_eq!(flips["tasks"], 2);
    assert_eq!(flips["task_ids"], serde_json::json!(["DIFF-A", "DIFF-B"]));
    assert_eq!(flips["observed"]["success_rate"], 1.0);
    assert!(flips["observed"]["mean_cost_usd"].as_f64().unwrap() > 0.0);
    assert_eq!(group("single", "single")["tasks"], 2);
    assert!(group("single", "single").get("task_ids").is_none());
    assert_eq!(group("multi", "multi")["tasks"], 0);
    // The two valuable tasks get the team path's budget and a gate; the others keep both.
    assert_eq!(
        v["budget_changes"],
        serde_json::json!([
            {"task_id": "DIFF-A", "live_usd": 0.0, "candidate_usd": 10.0},
            {"task_id": "DIFF-B", "live_usd": 0.0, "candidate_usd": 10.0},
        ])
    );
    let gate = "before_start(HIGH_VALUE, timeout 3600s, then reject, reject fail)";
    assert_eq!(
        v["gate_changes"],
        serde_json::json!([
            {"task_id": "DIFF-A", "live": [], "candidate": [gate]},
            {"task_id": "DIFF-B", "live": [], "candidate": [gate]},
        ])
    );

    let text = stack.taskctl(&["policy", "diff", cand, "--since", "1h"]);
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(
        text.contains("flip single -> multi (2): DIFF-A DIFF-B"),
        "{text}"
    );
    assert!(
        text.contains(
            "default budget changes (2):\n  DIFF-A  $0.00 -> $10.00\n  DIFF-B  $0.00 -> $10.00\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "approval gate changes (2):\n  DIFF-A  none -> {gate}\n"
        )),
        "{text}"
    );
    assert!(!text.contains("sk-live"), "a description leaked: {text}");

    // GetPolicy carries the live policy's governance: a candidate identical to a live
    // policy with budgets and gates changes neither (it did not, while GetPolicy
    // left governance out and every budget looked new).
    let governed = "[multi_agent]\nrollout_percent = 0\n[budgets]\nsingle_agent_usd = 3.0\n\
         [[approval.rules]]\nreason = \"HIGH_VALUE\"\ngate = \"before_start\"\ntimeout = \"1h\"\non_timeout = \"reject\"\n";
    let staged = stack.dir.path().join("policy.toml.new");
    std::fs::write(&staged, governed).unwrap();
    std::fs::rename(&staged, stack.policy_path()).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let p = stack.router_policy().await;
        if p.single_agent_budget_usd == 3.0 && p.approval_rules.len() == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the router did not load the new policy: {p:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    std::fs::write(&candidate, governed).unwrap();
    let out = stack.taskctl(&["--json", "policy", "diff", cand, "--since", "1h"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["tasks"], 4);
    assert_eq!(v["budget_changes"], serde_json::json!([]), "{v}");
    assert_eq!(v["gate_changes"], serde_json::json!([]), "{v}");

    // A candidate the router would reject is a usage error naming the key.
    std::fs::write(&candidate, "[rules]\nvalue_threshold_usd = -1.0\n").unwrap();
    let bad = stack.taskctl(&["policy", "diff", cand]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("rules.value_threshold_usd"));
}

#[tokio::test]
async fn with_stay_running_the_controller_idles_until_sigterm_and_a_missing_candidate_is_none() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, LIVE).unwrap();
    let missing = dir.path().join("no-candidate.toml");
    let metrics = format!("127.0.0.1:{}", free_port());
    let redis_url = redis.url();
    let args = |stay: bool| {
        let mut a = vec![
            "--redis-url",
            &redis_url,
            "--policy",
            policy.to_str().unwrap(),
            "--candidate",
            missing.to_str().unwrap(),
            "--metrics-listen",
            &metrics,
        ];
        if stay {
            a.push("--stay-running");
        }
        a.into_iter().map(str::to_string).collect::<Vec<_>>()
    };

    // Without it, a missing candidate file is a configuration error.
    let refs = args(false);
    let refs: Vec<&str> = refs.iter().map(String::as_str).collect();
    let mut once = ServiceProcess::spawn("rollout-controller", &refs, &[]);
    let status = once
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exits");
    assert_eq!(status.code(), Some(2), "{}", once.log_contents());
    assert!(once.log_contents().contains("--candidate"));

    // With it, there is nothing to start: the process stays up (a Deployment would
    // otherwise restart it), answers the kubelet's probe, and exits 0 on SIGTERM.
    let refs = args(true);
    let refs: Vec<&str> = refs.iter().map(String::as_str).collect();
    let mut idle = ServiceProcess::spawn("rollout-controller", &refs, &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !idle.log_contents().contains("idle until stopped") {
        assert!(
            Instant::now() < deadline && idle.try_exit_status().is_none(),
            "{}",
            idle.log_contents()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(idle.try_exit_status().is_none(), "{}", idle.log_contents());
    let health = http_get(&metrics, "/health").await;
    assert!(
        health.starts_with("HTTP/1.0 200") || health.starts_with("HTTP/1.1 200"),
        "{health}"
    );
    assert!(health.ends_with("OK"), "{health}");
    idle.sigterm();
    let status = idle
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exits");
    assert_eq!(status.code(), Some(0), "{}", idle.log_contents());
    assert_eq!(std::fs::read_to_string(&policy).unwrap(), LIVE);
}

/// One plain HTTP/1.0 GET; the whole answer, headers included.
async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    answer
}
