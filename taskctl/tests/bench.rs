//! `taskctl bench` smoke tests: every mode runs a few hundred requests (or a few tasks)
//! through the real binary and prints sane JSON. The numbers are not asserted.

mod common;

use common::{Output, taskctl};
use serde_json::Value;
use test_support::RedisServer;

/// Runs `taskctl <args>` and returns its JSON, failing with both streams when it did not
/// exit 0.
async fn bench_json(args: &[&str]) -> Value {
    let out = taskctl(args).await;
    assert_eq!(
        out.code, 0,
        "{args:?}\nstdout:\n{}\nstderr:\n{}",
        out.stdout, out.stderr
    );
    out.json()
}

fn f(v: &Value, path: &str) -> f64 {
    v.pointer(path)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{path} missing or not a number in {v:#}"))
}

/// throughput > 0, p50 <= p90 <= p99 <= max, no errors, every request accounted for.
fn assert_sane(v: &Value, entry: &str, requests: f64) {
    assert!(f(v, &format!("/{entry}/throughput_rps")) > 0.0, "{v:#}");
    let p = |q: &str| f(v, &format!("/{entry}/latency/{q}_us"));
    assert!(p("p50") > 0.0, "{v:#}");
    assert!(p("p50") <= p("p90"), "{v:#}");
    assert!(p("p90") <= p("p99"), "{v:#}");
    assert!(p("p99") <= p("max"), "{v:#}");
    assert_eq!(f(v, &format!("/{entry}/errors")), 0.0, "{v:#}");
    assert_eq!(f(v, &format!("/{entry}/ok")), requests, "{v:#}");
}

const SMOKE: [&str; 7] = [
    "--requests",
    "300",
    "--warmup",
    "0s",
    "--concurrency",
    "8",
    "--json",
];

#[tokio::test]
async fn baseline_answers_every_request() {
    let mut args = vec!["bench", "baseline"];
    args.extend(SMOKE);
    let v = bench_json(&args).await;
    assert_eq!(v["mode"], "baseline");
    assert_eq!(v["config"]["concurrency"], 8);
    assert_sane(&v, "baseline", 300.0);
    assert!(v.get("route").is_none(), "{v:#}");
}

#[tokio::test]
async fn route_reports_its_ratio_to_the_baseline_of_the_same_run() {
    let mut args = vec!["bench", "route", "--connections", "2"];
    args.extend(SMOKE);
    let v = bench_json(&args).await;
    assert_eq!(v["mode"], "route");
    assert_eq!(v["config"]["connections"], 2);
    assert_sane(&v, "baseline", 300.0);
    assert_sane(&v, "baseline_bytes", 300.0);
    assert_sane(&v, "route", 300.0);
    assert!(f(&v, "/ratio/throughput") > 0.0, "{v:#}");
    assert!(f(&v, "/ratio/throughput_vs_bytes_matched") > 0.0, "{v:#}");
    assert!(f(&v, "/ratio/p99") > 0.0, "{v:#}");
    // The mix fires rules, so both decisions show up in 300 requests.
    assert!(f(&v, "/route/outcomes/multi") > 0.0, "{v:#}");
    assert!(f(&v, "/route/outcomes/single") > 0.0, "{v:#}");
    assert!(
        v["route"]["target"]
            .as_str()
            .unwrap()
            .contains("in this process"),
        "{v:#}"
    );
}

#[tokio::test]
async fn route_drives_a_given_loopback_router() {
    let services = common::Services::start().await;
    let mut args = vec!["bench", "route"];
    args.extend(SMOKE);
    let v = services.taskctl(&args).await;
    assert_eq!(v.code, 0, "{}\n{}", v.stdout, v.stderr);
    let v = v.json();
    assert_sane(&v, "route", 300.0);
    assert_eq!(
        v["route"]["target"],
        format!("router at http://{}", services.router)
    );
}

#[tokio::test]
async fn route_compares_with_a_baseline_in_its_own_process() {
    let port = test_support::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_taskctl"))
        .args(["bench", "baseline", "--serve", &addr])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the baseline server");
    assert!(
        test_support::wait_for_tcp(addr.parse().unwrap(), std::time::Duration::from_secs(20)).await,
        "the baseline server did not start"
    );
    let url = format!("http://{addr}");
    let mut args = vec!["bench", "route", "--baseline", &url];
    args.extend(SMOKE);
    let v = bench_json(&args).await;
    assert_sane(&v, "baseline", 300.0);
    assert_sane(&v, "baseline_bytes", 300.0);
    assert_sane(&v, "route", 300.0);
    assert_eq!(
        v["baseline"]["target"],
        format!("empty RPC server at {url}")
    );
    // The bytes-matched baseline answers Route with no decision at all.
    assert_eq!(
        f(&v, "/baseline_bytes/outcomes/no_decision"),
        300.0,
        "{v:#}"
    );
    server.kill().await.unwrap();
}

#[tokio::test]
async fn load_against_other_addresses_is_refused() {
    for router in ["http://10.0.0.5:50051", "http://example.com:50051"] {
        let out: Output = taskctl(&["bench", "route", "--router", router, "--requests", "1"]).await;
        assert_eq!(out.code, 2, "{router}: {out:?}");
        assert!(out.stderr.contains("loopback"), "{out:?}");
        assert!(out.stdout.is_empty(), "{out:?}");
    }
    let out = taskctl(&[
        "bench",
        "redis",
        "--redis-url",
        "redis://:hunter2@192.168.1.10:6379/",
    ])
    .await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(!out.stderr.contains("hunter2"), "{out:?}");
}

#[tokio::test]
async fn bad_bench_flags_are_usage_errors() {
    for args in [
        vec!["bench", "route", "--requests", "10", "--duration", "1s"],
        vec!["bench", "baseline", "--concurrency", "0"],
        vec!["bench", "baseline", "--duration", "0s"],
        vec!["bench", "execute", "--executors", "0"],
    ] {
        let out = taskctl(&args).await;
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
    }
}

#[tokio::test]
async fn execute_completes_every_task_and_counts_redis_commands() {
    let redis = RedisServer::start();
    let url = redis.url();
    let bin = test_support::binary_path("executor-service");
    let v = bench_json(&[
        "bench",
        "execute",
        "--tasks",
        "20",
        "--iterations",
        "3",
        "--executors",
        "1",
        "--redis-url",
        &url,
        "--executor-bin",
        bin.to_str().unwrap(),
        "--json",
    ])
    .await;
    assert_eq!(v["mode"], "execute");
    assert_eq!(f(&v, "/tasks/submitted"), 20.0, "{v:#}");
    assert_eq!(f(&v, "/tasks/completed"), 20.0, "{v:#}");
    assert_eq!(f(&v, "/tasks/not_completed"), 0.0, "{v:#}");
    assert_eq!(f(&v, "/tasks/iterations_total"), 60.0, "{v:#}");
    assert_eq!(f(&v, "/errors"), 0.0, "{v:#}");
    assert!(f(&v, "/tasks_per_s") > 0.0, "{v:#}");
    assert!(f(&v, "/iterations_per_s") > 0.0, "{v:#}");
    assert!(f(&v, "/redis/commands_per_iteration") > 0.0, "{v:#}");
    let by_command = v["redis"]["by_command"].as_array().unwrap();
    assert!(
        by_command.iter().any(|c| c["command"] == "evalsha"),
        "checkpoints are script calls: {v:#}"
    );
    // The MONITOR sample tells round trips from commands run inside scripts.
    assert!(
        f(&v, "/round_trips/client_calls_per_iteration") > 0.0,
        "{v:#}"
    );
    assert!(
        f(&v, "/round_trips/script_internal_per_iteration") > 0.0,
        "{v:#}"
    );
    // Issue 18's budget: at most 8 round trips per task plus 1 per iteration (3 here).
    // Half a call of slack per task absorbs a script reload (NOSCRIPT) or a health
    // probe landing inside the sample; a real regression costs a whole call per task.
    let per_task = f(&v, "/round_trips/client_calls_per_task");
    assert!(
        per_task <= 8.0 + 3.0 + 0.5,
        "{per_task} round trips per task: {v:#}"
    );
    let p = |q: &str| f(&v, &format!("/submit/latency/{q}_us"));
    assert!(p("p50") <= p("p99") && p("p99") <= p("max"), "{v:#}");
    let rss = f(&v, "/executors/0/rss_kib_peak");
    assert!(rss > 0.0, "{v:#}");
}

#[tokio::test]
async fn redis_mode_reports_the_set_rate() {
    if std::process::Command::new("redis-benchmark")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("redis-benchmark is not on PATH; skipping");
        return;
    }
    let v = bench_json(&[
        "bench",
        "redis",
        "--requests",
        "2000",
        "--clients",
        "4",
        "--json",
    ])
    .await;
    assert_eq!(v["mode"], "redis");
    assert!(f(&v, "/set_rps") > 0.0, "{v:#}");
    assert!(v["command"].as_str().unwrap().contains("-t set"), "{v:#}");
}

#[tokio::test]
async fn text_output_has_the_table_and_the_ratio() {
    let out = taskctl(&[
        "bench",
        "route",
        "--requests",
        "100",
        "--warmup",
        "0s",
        "--concurrency",
        "4",
    ])
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("p99 ms"), "{}", out.stdout);
    assert!(
        out.stdout.contains("route/baseline: throughput"),
        "{}",
        out.stdout
    );
    let rows: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("baseline ") || l.starts_with("route "))
        .collect();
    assert!(rows.len() >= 2, "{}", out.stdout);
}
