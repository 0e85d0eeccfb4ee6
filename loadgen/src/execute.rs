//! `bench execute`: N tasks of K simulated iterations (zero latency by default) through E real
//! `executor-service` processes sharing one Redis, measured end to end (first Submit to
//! last task acknowledged), with Redis commands per iteration from `INFO commandstats`.
//!
//! Completion is detected by polling the work queue's length (acknowledged entries are
//! deleted, and an entry is acknowledged once its task is final): one XLEN per poll on a
//! connection of this process, subtracted from the counts like the INFO calls. Watching
//! every task would add Redis reads of its own to the numbers being measured. Every task is
//! checked afterwards (COMPLETED with exactly K iterations), outside the measured window.

use super::load::{self, LatencySummary};
use super::redis::{self as bench_redis, RedisTarget, SetBenchmark};
use super::route::wait_serving;
use super::{Workdir, ratio, round};
use crate::Options;
use crate::error::{Error, Result, Verdict};
use crate::output::{emit, emit_err, emit_json};
use local_stack::LocalRouter;
use serde_json::{Value, json};
use service_kit::status_text::{code_name, one_line};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use taskrouter_proto::v1::executor_client::ExecutorClient;
use taskrouter_proto::v1::{Complexity, GetRequest, SubmitRequest, Task, TaskStatus};
use tokio::process::{Child, Command};
use tonic::transport::{Channel, Endpoint};

/// How long one executor process may take to report SERVING.
const EXECUTOR_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts with a fresh port when the one picked was taken before the executor bound it.
const PORT_ATTEMPTS: usize = 3;
/// How often the queue length is polled while waiting for the tasks.
const POLL_EVERY: Duration = Duration::from_millis(10);
/// The target for iterations/s over redis-benchmark's SET rate.
const TARGET_SET_RATIO: f64 = 0.5;

/// Flags of `bench execute`.
#[derive(clap::Args, Debug)]
pub struct ExecuteArgs {
    /// Redis the executors use (loopback only); default: a private redis-server on a free port.
    #[arg(long, value_name = "redis://127.0.0.1:PORT/")]
    pub redis_url: Option<String>,
    /// Tasks to submit.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub tasks: u32,
    /// Simulated iterations per task (label sim.iterations).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub iterations: u32,
    /// Simulated latency of every iteration (label sim.latency_ms); above zero, tasks stay
    /// in flight long enough to measure memory with many of them at once.
    #[arg(long, default_value = "0ms", value_parser = super::parse_duration)]
    pub iteration_latency: Duration,
    /// Executor processes sharing the queue (1 or 2 on a 2-core machine).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=8))]
    pub executors: u32,
    /// Queue workers per executor process (its --concurrency).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: u32,
    /// Submit calls in flight at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: u32,
    /// Also start a router in this process and let the executors route every task
    /// (default: routing off, every task takes the single path).
    #[arg(long)]
    pub with_router: bool,
    /// The executor-service binary (default: the one next to this taskctl).
    #[arg(long, value_name = "PATH")]
    pub executor_bin: Option<PathBuf>,
    /// Give up when the tasks have not all finished this long after the last Submit.
    #[arg(long, default_value = "5m", value_parser = super::parse_positive_duration)]
    pub max_wait: Duration,
    /// Afterwards, run `redis-benchmark -n 100000 -c 16 -t set` against the same Redis and
    /// compare iterations/s with its SET rate.
    #[arg(long)]
    pub compare_redis: bool,
}

/// One executor child process.
struct ExecutorProcess {
    n: usize,
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl ExecutorProcess {
    fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Whether it has exited (then its log says why).
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    async fn stop(mut self) {
        // Every task is final by now, so there is nothing to checkpoint or release.
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

/// The executor binary: `--executor-bin`, else `executor-service` next to this program.
fn executor_binary(args: &ExecuteArgs) -> Result<PathBuf> {
    let path = match &args.executor_bin {
        Some(p) => p.clone(),
        None => {
            let exe = std::env::current_exe()
                .map_err(|e| Error::Runtime(format!("cannot locate taskctl itself: {e}")))?;
            let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
            dir.join(format!("executor-service{}", std::env::consts::EXE_SUFFIX))
        }
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::Usage(format!(
            "--executor-bin: no executor-service binary at {} (build it with `cargo build --release -p executor-service`, or pass --executor-bin PATH)",
            path.display()
        )))
    }
}

/// Settings every executor process gets.
struct Spawn<'a> {
    bin: &'a Path,
    redis_url: &'a str,
    key_prefix: &'a str,
    router_addr: Option<String>,
    workers: u32,
    dir: &'a Path,
}

impl Spawn<'_> {
    /// Starts executor `n` on a free port and waits until it reports SERVING (Redis
    /// reachable and the queue's consumer group in place).
    async fn start(&self, n: usize) -> Result<ExecutorProcess> {
        for _ in 0..PORT_ATTEMPTS {
            let port = bench_redis::free_port()?;
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let log = self.dir.join(format!("executor-{n}.log"));
            let mut p = ExecutorProcess {
                n,
                child: self.spawn(n, addr, &log)?,
                addr,
                log,
            };
            match wait_ready(&mut p).await {
                Ok(()) => return Ok(p),
                Err(Ready::PortTaken) => continue,
                Err(Ready::Failed(why)) => {
                    p.stop().await;
                    return Err(Error::Runtime(why));
                }
            }
        }
        Err(Error::Runtime(format!(
            "executor {n}: {PORT_ATTEMPTS} free ports in a row were taken before it could bind"
        )))
    }

    fn spawn(&self, n: usize, addr: SocketAddr, log: &Path) -> Result<Child> {
        let out = std::fs::File::create(log)
            .map_err(|e| Error::Runtime(format!("cannot create {}: {e}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(|e| Error::Runtime(format!("executor log: {e}")))?;
        let mut cmd = Command::new(self.bin);
        // Settings from this shell's environment must not change what is measured (or
        // turn on TLS the bench does not speak); RUST_LOG and OTEL_* pass through.
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("EXECUTOR_")
                || k.starts_with("TASKROUTER_")
                || k.starts_with("ROUTER_")
                || k.starts_with("REDIS_")
            {
                cmd.env_remove(&key);
            }
        }
        cmd.env("REDIS_URL", self.redis_url)
            .arg("--listen")
            .arg(addr.to_string())
            .args(["--key-prefix", self.key_prefix])
            .arg("--router-addr")
            .arg(self.router_addr.as_deref().unwrap_or(""))
            .args(["--concurrency", &self.workers.to_string()])
            .arg("--worker-id")
            .arg(format!("bench-{}-{n}", std::process::id()))
            .args(["--agent", "simulator", "--sim-latency", "0ms"])
            // Finished tasks expire soon, so a bench against a shared Redis leaves little.
            .args(["--archive-ttl", "10m"])
            .arg("--metrics-listen=")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true);
        cmd.spawn()
            .map_err(|e| Error::Runtime(format!("cannot start {}: {e}", self.bin.display())))
    }
}

enum Ready {
    PortTaken,
    Failed(String),
}

async fn wait_ready(p: &mut ExecutorProcess) -> std::result::Result<(), Ready> {
    let deadline = Instant::now() + EXECUTOR_START_TIMEOUT;
    let url = format!("http://{}", p.addr);
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| Ready::Failed(format!("executor address {url}: {e}")))?
        .connect_timeout(Duration::from_secs(1));
    loop {
        if let Some(status) = p.exited() {
            let log = std::fs::read_to_string(&p.log).unwrap_or_default();
            if log.contains("cannot bind") {
                return Err(Ready::PortTaken);
            }
            let last = log.lines().last().unwrap_or_default();
            return Err(Ready::Failed(format!(
                "executor {} exited during start-up ({status}): {} (log: {})",
                p.n,
                one_line(last),
                p.log.display()
            )));
        }
        if let Ok(channel) = endpoint.connect().await
            && wait_serving(channel, "", Duration::from_millis(200))
                .await
                .is_ok()
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Ready::Failed(format!(
                "executor {} did not report SERVING within {} (log: {})",
                p.n,
                humantime::format_duration(EXECUTOR_START_TIMEOUT),
                p.log.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS`, `VmHWM`), on Linux.
fn proc_kib(pid: Option<u32>, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Memory of one executor process over the run.
#[derive(Debug, Default)]
struct Memory {
    start_kib: Option<u64>,
    end_kib: Option<u64>,
    peak_kib: Option<u64>,
}

/// What the Submit phase counted.
struct Submitted {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    latency: LatencySummary,
}

/// The task every Submit sends: a simple single-path task of `k` simulated iterations of
/// `latency_ms` each.
fn bench_task(id: String, k: u32, latency_ms: u64) -> Task {
    Task {
        id,
        description: "Fix typo in README".into(),
        complexity: Complexity::Low as i32,
        estimated_value_usd: 10.0,
        repositories: vec!["acme/docs".into()],
        labels: HashMap::from([
            ("sim.iterations".to_string(), k.to_string()),
            ("sim.latency_ms".to_string(), latency_ms.to_string()),
            ("source".to_string(), "taskctl-bench".to_string()),
        ]),
    }
}

/// `--iteration-latency` in whole milliseconds (what the simulator's label takes).
fn latency_ms(args: &ExecuteArgs) -> u64 {
    u64::try_from(args.iteration_latency.as_millis()).unwrap_or(u64::MAX)
}

fn task_id(prefix: &str, i: u64) -> String {
    format!("{prefix}-{i:07}")
}

/// Submits tasks `0..count` of `prefix`, `concurrency` calls at a time.
async fn submit_all(
    clients: &[ExecutorClient<Channel>],
    prefix: &str,
    count: u32,
    k: u32,
    latency_ms: u64,
    concurrency: u32,
    timeout: Duration,
) -> Result<Submitted> {
    let hist = Arc::new(Mutex::new(load::histogram()?));
    let next = Arc::new(AtomicU64::new(0));
    let total = u64::from(count);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let clients = clients.to_vec();
        let hist = hist.clone();
        let next = next.clone();
        let prefix = prefix.to_string();
        set.spawn(async move {
            let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None::<String>);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                // Spread the Submits over the executors, like a load balancer would.
                let mut client = clients[(i % clients.len() as u64) as usize].clone();
                let req = SubmitRequest {
                    task: Some(bench_task(task_id(&prefix, i), k, latency_ms)),
                    max_iterations: k,
                    use_multi_agent: None,
                    budget_usd: None,
                };
                let t0 = Instant::now();
                let answer = tokio::time::timeout(timeout, client.submit(req)).await;
                let elapsed = t0.elapsed();
                let failure = match answer {
                    Ok(Ok(r)) if r.get_ref().created => None,
                    Ok(Ok(_)) => Some("the task id already existed".to_string()),
                    Ok(Err(s)) => Some(format!(
                        "{}: {}",
                        code_name(s.code()),
                        one_line(s.message())
                    )),
                    Err(_) => Some(format!(
                        "no answer within {}",
                        humantime::format_duration(timeout)
                    )),
                };
                match failure {
                    None => {
                        ok += 1;
                        let mut h = hist.lock().unwrap_or_else(|e| e.into_inner());
                        load::record(&mut h, elapsed);
                    }
                    Some(f) => {
                        errors += 1;
                        first_error.get_or_insert(f);
                    }
                }
            }
            (ok, errors, first_error)
        });
    }
    let mut out = Submitted {
        ok: 0,
        errors: 0,
        first_error: None,
        latency: LatencySummary::default(),
    };
    while let Some(joined) = set.join_next().await {
        let (ok, errors, first) =
            joined.map_err(|e| Error::Runtime(format!("a submit worker failed: {e}")))?;
        out.ok += ok;
        out.errors += errors;
        if out.first_error.is_none() {
            out.first_error = first;
        }
    }
    out.latency = LatencySummary::of(&hist.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(out)
}

/// How the wait for the tasks ended.
enum Finish {
    /// The queue emptied: every task was acknowledged.
    Drained,
    /// `--max-wait` passed with this many entries left.
    TimedOut(u64),
}

/// Polls the queue length until it is zero; counts its own XLEN calls in `polls`.
async fn wait_drained(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    executors: &mut [ExecutorProcess],
    max_wait: Duration,
    polls: &mut u64,
) -> Result<Finish> {
    let deadline = Instant::now() + max_wait;
    loop {
        let len: u64 = redis::cmd("XLEN")
            .arg(stream)
            .query_async(conn)
            .await
            .map_err(|e| Error::Runtime(format!("XLEN: {}", bench_redis::redis_cause(&e))))?;
        *polls += 1;
        if len == 0 {
            return Ok(Finish::Drained);
        }
        if Instant::now() >= deadline {
            return Ok(Finish::TimedOut(len));
        }
        for p in executors.iter_mut() {
            if let Some(status) = p.exited() {
                return Err(Error::Runtime(format!(
                    "executor {} exited during the run ({status}); log: {}",
                    p.n,
                    p.log.display()
                )));
            }
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// What the final check of every task found.
struct Verified {
    completed: u64,
    iterations: u64,
    problems: Vec<String>,
    bad: u64,
}

/// Gets every task (outside the measured window) and checks COMPLETED with `k` iterations.
async fn verify(
    clients: &[ExecutorClient<Channel>],
    prefix: &str,
    tasks: u32,
    k: u32,
    concurrency: u32,
    timeout: Duration,
) -> Result<Verified> {
    let next = Arc::new(AtomicU64::new(0));
    let total = u64::from(tasks);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let clients = clients.to_vec();
        let next = next.clone();
        let prefix = prefix.to_string();
        set.spawn(async move {
            let mut v = Verified {
                completed: 0,
                iterations: 0,
                problems: Vec::new(),
                bad: 0,
            };
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let id = task_id(&prefix, i);
                let mut client = clients[(i % clients.len() as u64) as usize].clone();
                let req = GetRequest {
                    task_id: id.clone(),
                    ..Default::default()
                };
                let problem = match tokio::time::timeout(timeout, client.get(req)).await {
                    Ok(Ok(r)) => {
                        let s = r.into_inner().state.unwrap_or_default();
                        v.iterations += u64::from(s.iteration_count);
                        let status = TaskStatus::try_from(s.status).unwrap_or_default();
                        if status == TaskStatus::Completed && s.iteration_count == k {
                            v.completed += 1;
                            None
                        } else {
                            Some(format!(
                                "{id}: {} after {} iteration(s){}",
                                TaskStatus::try_from(s.status).map_or("UNKNOWN", |s| s
                                    .as_str_name()
                                    .trim_start_matches("TASK_STATUS_")),
                                s.iteration_count,
                                if s.last_error.is_empty() {
                                    String::new()
                                } else {
                                    format!(" ({})", one_line(&s.last_error))
                                }
                            ))
                        }
                    }
                    Ok(Err(s)) => Some(format!(
                        "{id}: Get failed: {}: {}",
                        code_name(s.code()),
                        one_line(s.message())
                    )),
                    Err(_) => Some(format!("{id}: Get timed out")),
                };
                if let Some(p) = problem {
                    v.bad += 1;
                    if v.problems.len() < 5 {
                        v.problems.push(p);
                    }
                }
            }
            v
        });
    }
    let mut all = Verified {
        completed: 0,
        iterations: 0,
        problems: Vec::new(),
        bad: 0,
    };
    while let Some(joined) = set.join_next().await {
        let v = joined.map_err(|e| Error::Runtime(format!("a check worker failed: {e}")))?;
        all.completed += v.completed;
        all.iterations += v.iterations;
        all.bad += v.bad;
        all.problems.extend(v.problems);
    }
    all.problems.truncate(5);
    Ok(all)
}

/// Redis calls per command between two `INFO commandstats` snapshots, less this
/// process's own calls.
fn command_delta(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
    own: &BTreeMap<&str, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(cmd, &n)| {
            let was = before.get(cmd).copied().unwrap_or(0);
            let mine = own.get(cmd.as_str()).copied().unwrap_or(0);
            (cmd.clone(), n.saturating_sub(was).saturating_sub(mine))
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// Commands by calls, most first (ties by name).
fn sorted(counts: &BTreeMap<String, u64>) -> Vec<(&str, u64)> {
    let mut v: Vec<(&str, u64)> = counts.iter().map(|(k, &n)| (k.as_str(), n)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    v
}

/// Everything one run measured.
struct Report {
    tasks: u32,
    k: u32,
    latency_ms: u64,
    executors: usize,
    workers: u32,
    concurrency: u32,
    with_router: bool,
    redis: String,
    elapsed: Duration,
    timed_out: Option<u64>,
    submitted: Submitted,
    verified: Verified,
    commands: BTreeMap<String, u64>,
    own_commands: u64,
    memory: Vec<(usize, Option<u32>, Memory)>,
    round_trips: std::result::Result<RoundTrips, String>,
    set_bench: Option<std::result::Result<SetBenchmark, String>>,
}

impl Report {
    fn iterations_per_s(&self) -> f64 {
        ratio(self.verified.iterations as f64, self.elapsed.as_secs_f64())
    }

    fn tasks_per_s(&self) -> f64 {
        ratio(self.verified.completed as f64, self.elapsed.as_secs_f64())
    }

    fn commands_total(&self) -> u64 {
        self.commands.values().sum()
    }

    /// Commands by calls, most first.
    fn top_commands(&self) -> Vec<(&str, u64)> {
        sorted(&self.commands)
    }

    fn errors(&self) -> u64 {
        self.submitted.errors + self.verified.bad + u64::from(self.timed_out.is_some())
    }

    fn json(&self) -> Value {
        let iterations = self.verified.iterations.max(1) as f64;
        let per_iteration: Vec<Value> = self
            .top_commands()
            .into_iter()
            .map(|(cmd, n)| {
                json!({
                    "command": cmd,
                    "calls": n,
                    "per_iteration": round(n as f64 / iterations, 3),
                })
            })
            .collect();
        json!({
            "mode": "execute",
            "config": {
                "tasks": self.tasks,
                "iterations": self.k,
                "iteration_latency_ms": self.latency_ms,
                "executors": self.executors,
                "workers_per_executor": self.workers,
                "submit_concurrency": self.concurrency,
                "with_router": self.with_router,
            },
            "tasks": {
                "submitted": self.submitted.ok,
                "completed": self.verified.completed,
                "not_completed": self.verified.bad,
                "iterations_total": self.verified.iterations,
                "problems": self.verified.problems,
            },
            "elapsed_s": round(self.elapsed.as_secs_f64(), 4),
            "timed_out_with_queued": self.timed_out,
            "tasks_per_s": round(self.tasks_per_s(), 1),
            "iterations_per_s": round(self.iterations_per_s(), 1),
            "submit": {
                "ok": self.submitted.ok,
                "errors": self.submitted.errors,
                "first_error": self.submitted.first_error,
                "latency": self.submitted.latency.json(),
            },
            "errors": self.errors(),
            "redis": {
                "target": self.redis,
                "commands_total": self.commands_total(),
                "commands_per_iteration": round(self.commands_total() as f64 / iterations, 3),
                "commands_per_task": round(ratio(self.commands_total() as f64, f64::from(self.tasks)), 3),
                "own_commands_excluded": self.own_commands,
                "by_command": per_iteration,
            },
            "executors": self.memory.iter().map(|(n, pid, m)| json!({
                "n": n,
                "pid": pid,
                "rss_kib_start": m.start_kib,
                "rss_kib_end": m.end_kib,
                "rss_kib_peak": m.peak_kib,
            })).collect::<Vec<_>>(),
            "round_trips": match &self.round_trips {
                Ok(r) => json!({
                    "sample_tasks": r.tasks,
                    "sample_iterations": r.iterations,
                    "client_calls_per_iteration": round(r.per_iteration(r.client_total()), 3),
                    "script_internal_per_iteration": round(r.per_iteration(r.script_total()), 3),
                    "client_calls_per_task": round(ratio(r.client_total() as f64, f64::from(r.tasks)), 3),
                    "client_calls": sorted(&r.seen.client).into_iter().map(|(cmd, n)| json!({
                        "command": cmd,
                        "calls": n,
                        "per_iteration": round(r.per_iteration(n), 3),
                    })).collect::<Vec<_>>(),
                    "script_internal": sorted(&r.seen.script).into_iter().map(|(cmd, n)| json!({
                        "command": cmd,
                        "calls": n,
                        "per_iteration": round(r.per_iteration(n), 3),
                    })).collect::<Vec<_>>(),
                }),
                Err(e) => json!({ "error": e }),
            },
            "redis_benchmark": match &self.set_bench {
                None => Value::Null,
                Some(Ok(b)) => json!({
                    "command": b.command,
                    "set_rps": round(b.rps, 1),
                    "iterations_per_s_over_set_rps": round(ratio(self.iterations_per_s(), b.rps), 3),
                    "target_at_least": TARGET_SET_RATIO,
                }),
                Some(Err(e)) => json!({ "error": e }),
            },
        })
    }

    fn text(&self) -> String {
        let iterations = self.verified.iterations.max(1) as f64;
        let mut t = format!(
            "execute   {} tasks x {} simulated iterations of {} ms; {} executor process(es) x {} workers; routing {}\nredis     {}\nsubmit    {} in flight\n\n",
            self.tasks,
            self.k,
            self.latency_ms,
            self.executors,
            self.workers,
            if self.with_router {
                "on (router in this process)"
            } else {
                "off (single path)"
            },
            self.redis,
            self.concurrency,
        );
        t.push_str(&load::table(
            &[
                "",
                "tasks/s",
                "iterations/s",
                "elapsed s",
                "completed",
                "not completed",
            ],
            &[vec![
                "end to end".into(),
                format!("{:.1}", self.tasks_per_s()),
                format!("{:.1}", self.iterations_per_s()),
                format!("{:.3}", self.elapsed.as_secs_f64()),
                self.verified.completed.to_string(),
                self.verified.bad.to_string(),
            ]],
        ));
        let [p50, p90, p99, max] = self.submitted.latency.cells();
        t.push_str(&format!(
            "\nsubmit latency ms: p50 {p50}  p90 {p90}  p99 {p99}  max {max}  ({} errors)\n",
            self.submitted.errors
        ));
        t.push_str(&format!(
            "redis commands (INFO commandstats, counts commands inside scripts too): {:.2} per iteration, {:.2} per task ({} in all; {} of this process's own excluded)\n",
            self.commands_total() as f64 / iterations,
            ratio(self.commands_total() as f64, f64::from(self.tasks)),
            self.commands_total(),
            self.own_commands,
        ));
        for (cmd, n) in self.top_commands().into_iter().take(12) {
            t.push_str(&format!(
                "  {cmd:<20} {:>8.3} per iteration  ({n} calls)\n",
                n as f64 / iterations
            ));
        }
        match &self.round_trips {
            Ok(r) => {
                t.push_str(&format!(
                    "round trips (MONITOR sample, {} tasks, untimed): {:.2} client calls per iteration, {:.2} per task; plus {:.2} commands per iteration inside scripts\n",
                    r.tasks,
                    r.per_iteration(r.client_total()),
                    ratio(r.client_total() as f64, f64::from(r.tasks)),
                    r.per_iteration(r.script_total()),
                ));
                for (cmd, n) in sorted(&r.seen.client).into_iter().take(12) {
                    t.push_str(&format!(
                        "  {cmd:<20} {:>8.3} per iteration  ({n} calls)\n",
                        r.per_iteration(n)
                    ));
                }
            }
            Err(e) => t.push_str(&format!("round trips: not measured ({e})\n")),
        }
        for (n, pid, m) in &self.memory {
            let mib =
                |k: Option<u64>| k.map_or("?".into(), |k| format!("{:.1}", k as f64 / 1024.0));
            t.push_str(&format!(
                "executor {n} (pid {}): RSS {} MiB at start, {} MiB at end, peak {} MiB\n",
                pid.map_or("?".into(), |p| p.to_string()),
                mib(m.start_kib),
                mib(m.end_kib),
                mib(m.peak_kib)
            ));
        }
        match &self.set_bench {
            None => {}
            Some(Ok(b)) => t.push_str(&format!(
                "redis-benchmark SET: {:.1} requests/s ({}); iterations/s over SET rate {:.3} (target >= {TARGET_SET_RATIO:.2})\n",
                b.rps,
                b.command,
                ratio(self.iterations_per_s(), b.rps)
            )),
            Some(Err(e)) => t.push_str(&format!("redis-benchmark: {e}\n")),
        }
        t
    }
}

/// `taskctl bench execute`.
pub async fn run(opts: &Options, args: &ExecuteArgs) -> Result<Verdict> {
    let bin = executor_binary(args)?;
    let mut dir = Workdir::new("execute")?;
    let redis = RedisTarget::open(args.redis_url.as_deref(), dir.path()).await?;
    // Ctrl-C still stops the child processes (dropping them kills them).
    let outcome = tokio::select! {
        r = measure(opts, args, &bin, &redis, dir.path()) => r,
        _ = tokio::signal::ctrl_c() => Err(Error::Runtime("interrupted".into())),
    };
    redis.close().await;
    let report = match outcome {
        Ok(r) => r,
        Err(e) => {
            dir.keep();
            emit_err(&[format!("logs kept in {}", dir.path().display())]);
            return Err(e);
        }
    };
    if opts.json {
        emit_json(&report.json());
    } else {
        emit(&report.text());
    }
    if report.errors() == 0 {
        return Ok(Verdict::Passed);
    }
    dir.keep();
    let mut lines = Vec::new();
    if let Some(left) = report.timed_out {
        lines.push(format!(
            "error: {left} queue entries were still there after --max-wait {}",
            humantime::format_duration(args.max_wait)
        ));
    }
    if report.submitted.errors > 0 {
        lines.push(format!(
            "error: {} Submit calls failed (first: {})",
            report.submitted.errors,
            report.submitted.first_error.as_deref().unwrap_or("-")
        ));
    }
    if report.verified.bad > 0 {
        lines.push(format!(
            "error: {} of {} tasks did not end COMPLETED with {} iterations, e.g. {}",
            report.verified.bad,
            args.tasks,
            args.iterations,
            report.verified.problems.join("; ")
        ));
    }
    lines.push(format!("executor logs kept in {}", dir.path().display()));
    emit_err(&lines);
    Ok(Verdict::Failed)
}

async fn measure(
    opts: &Options,
    args: &ExecuteArgs,
    bin: &Path,
    redis: &RedisTarget,
    dir: &Path,
) -> Result<Report> {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    // A fresh key space per run, so runs against one Redis never see each other's tasks.
    let prefix = format!("bench-{}-{millis}", std::process::id());
    // The executors run one queue shard (the default).
    let stream = executor_service::queue::redis_queue::shard_keys(&prefix, 1)[0]
        .stream
        .clone();

    let router = if args.with_router {
        let r = LocalRouter::start().await?;
        let channel = load::connect_all(&format!("http://{}", r.addr), 1, opts.timeout).await?;
        wait_serving(channel[0].clone(), "", opts.timeout).await?;
        Some(r)
    } else {
        None
    };
    let spawn = Spawn {
        bin,
        redis_url: &redis.url,
        key_prefix: &prefix,
        router_addr: router.as_ref().map(|r| format!("http://{}", r.addr)),
        workers: args.workers,
        dir,
    };
    let mut executors = Vec::new();
    let mut started = Ok(());
    for n in 1..=args.executors as usize {
        match spawn.start(n).await {
            Ok(p) => executors.push(p),
            Err(e) => {
                started = Err(e);
                break;
            }
        }
    }
    let result = match started {
        Ok(()) => measure_with(opts, args, redis, &prefix, &stream, &mut executors).await,
        Err(e) => Err(e),
    };
    for p in executors {
        p.stop().await;
    }
    if let Some(r) = router {
        r.stop().await;
    }
    result
}

async fn measure_with(
    opts: &Options,
    args: &ExecuteArgs,
    redis: &RedisTarget,
    prefix: &str,
    stream: &str,
    executors: &mut [ExecutorProcess],
) -> Result<Report> {
    let mut clients = Vec::new();
    for p in executors.iter() {
        let channels = load::connect_all(&format!("http://{}", p.addr), 1, opts.timeout).await?;
        clients.extend(channels.into_iter().map(ExecutorClient::new));
    }
    let mut conn = bench_redis::connect(&redis.url).await?;
    let mut memory: Vec<(usize, Option<u32>, Memory)> = executors
        .iter()
        .map(|p| {
            let m = Memory {
                start_kib: proc_kib(p.pid(), "VmRSS"),
                ..Memory::default()
            };
            (p.n, p.pid(), m)
        })
        .collect();

    let before = bench_redis::commandstats(&mut conn).await?;
    let t0 = Instant::now();
    let submitted = submit_all(
        &clients,
        prefix,
        args.tasks,
        args.iterations,
        latency_ms(args),
        args.concurrency,
        opts.timeout,
    )
    .await?;
    let mut polls = 0;
    let finish = wait_drained(&mut conn, stream, executors, args.max_wait, &mut polls).await?;
    let elapsed = t0.elapsed();
    let after = bench_redis::commandstats(&mut conn).await?;
    // This process's own calls in between: the first INFO and the XLEN polls.
    let own = BTreeMap::from([("info", 1), ("xlen", polls)]);
    let commands = command_delta(&before, &after, &own);

    for ((_, pid, m), _) in memory.iter_mut().zip(executors.iter()) {
        m.end_kib = proc_kib(*pid, "VmRSS");
        m.peak_kib = proc_kib(*pid, "VmHWM");
    }
    let verified = verify(
        &clients,
        prefix,
        args.tasks,
        args.iterations,
        args.concurrency,
        opts.timeout,
    )
    .await?;
    let round_trips = round_trip_sample(opts, args, redis, prefix, stream, executors)
        .await
        .map_err(|e| format!("error: {e}"));
    let set_bench = if args.compare_redis {
        Some(
            bench_redis::set_benchmark(&redis.url, 100_000, 16)
                .await
                .map_err(|e| format!("error: {e}")),
        )
    } else {
        None
    };
    Ok(Report {
        tasks: args.tasks,
        k: args.iterations,
        latency_ms: latency_ms(args),
        executors: executors.len(),
        workers: args.workers,
        concurrency: args.concurrency,
        with_router: args.with_router,
        redis: redis.description.clone(),
        elapsed,
        timed_out: match finish {
            Finish::Drained => None,
            Finish::TimedOut(left) => Some(left),
        },
        submitted,
        verified,
        commands,
        own_commands: 1 + polls,
        memory,
        round_trips,
        set_bench,
    })
}

/// Tasks in the MONITOR sample.
const SAMPLE_TASKS: u32 = 20;

/// Round trips, measured apart from the timed run: MONITOR slows Redis down, but it is the
/// only way to tell the commands clients send (one round trip each) from the commands
/// Lua scripts run inside one call, which `INFO commandstats` counts alike.
struct RoundTrips {
    tasks: u32,
    iterations: u64,
    seen: bench_redis::Monitored,
}

impl RoundTrips {
    fn client_total(&self) -> u64 {
        self.seen.client.values().sum()
    }

    fn script_total(&self) -> u64 {
        self.seen.script.values().sum()
    }

    fn per_iteration(&self, n: u64) -> f64 {
        ratio(n as f64, self.iterations as f64)
    }
}

async fn round_trip_sample(
    opts: &Options,
    args: &ExecuteArgs,
    redis: &RedisTarget,
    prefix: &str,
    stream: &str,
    executors: &mut [ExecutorProcess],
) -> Result<RoundTrips> {
    let mut clients = Vec::new();
    for p in executors.iter() {
        let channels = load::connect_all(&format!("http://{}", p.addr), 1, opts.timeout).await?;
        clients.extend(channels.into_iter().map(ExecutorClient::new));
    }
    let mut conn = bench_redis::connect(&redis.url).await?;
    let tasks = SAMPLE_TASKS.min(args.tasks);
    let prefix = format!("{prefix}-sample");
    let monitor = bench_redis::Monitor::start(&redis.url).await?;
    let submitted = submit_all(
        &clients,
        &prefix,
        tasks,
        args.iterations,
        latency_ms(args),
        args.concurrency,
        opts.timeout,
    )
    .await;
    let mut polls = 0;
    let finish = wait_drained(&mut conn, stream, executors, args.max_wait, &mut polls).await;
    let mut seen = monitor.stop().await;
    let submitted = submitted?;
    if let Finish::TimedOut(left) = finish? {
        return Err(Error::Runtime(format!(
            "{left} sample tasks still queued after --max-wait"
        )));
    }
    if submitted.errors > 0 {
        return Err(Error::Runtime(format!(
            "{} sample Submit calls failed",
            submitted.errors
        )));
    }
    // This process's own XLEN polls are not the executors' round trips.
    if let Some(n) = seen.client.get_mut("xlen") {
        *n = n.saturating_sub(polls);
    }
    seen.client.retain(|_, n| *n > 0);
    Ok(RoundTrips {
        tasks,
        iterations: u64::from(tasks) * u64::from(args.iterations),
        seen,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_commands_are_subtracted() {
        let before = BTreeMap::from([("info".to_string(), 5), ("evalsha".to_string(), 10)]);
        let after = BTreeMap::from([
            ("info".to_string(), 6),
            ("evalsha".to_string(), 40),
            ("xlen".to_string(), 7),
            ("xadd".to_string(), 10),
        ]);
        let own = BTreeMap::from([("info", 1), ("xlen", 7)]);
        let d = command_delta(&before, &after, &own);
        assert_eq!(
            d,
            BTreeMap::from([("evalsha".to_string(), 30), ("xadd".to_string(), 10)])
        );
    }

    #[test]
    fn proc_fields_parse() {
        let me = Some(std::process::id());
        let rss = proc_kib(me, "VmRSS");
        if cfg!(target_os = "linux") {
            assert!(rss.is_some_and(|k| k > 0), "{rss:?}");
        }
        assert_eq!(proc_kib(None, "VmRSS"), None);
    }

    #[test]
    fn bench_tasks_ask_for_k_instant_iterations() {
        let t = bench_task(task_id("p", 7), 3, 0);
        assert_eq!(t.id, "p-0000007");
        assert_eq!(t.labels["sim.iterations"], "3");
        assert_eq!(t.labels["sim.latency_ms"], "0");
    }
}
