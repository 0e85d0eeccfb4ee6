//! The external-command agent: runs an operator-chosen program once per iteration, with
//! one JSON object on stdin and one on stdout (the contract is in `docs/AGENTS.md`).
//!
//! The child runs in its own process group with a cleared environment. On timeout, on
//! cancellation (the future is dropped) and after the child exits, the whole group is
//! killed, so shell-wrapped agents leave no processes behind.

use super::{Agent, IterationInput, IterationOutput, check_cost, step_name};
use crate::error::{Error, Result};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use taskrouter_proto::v1::Complexity;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{ChildStdin, Command};

/// Largest stdout accepted from one iteration; more fails the iteration.
pub const MAX_STDOUT_BYTES: usize = 8 * 1024 * 1024;
/// Variables passed to the child when set in the executor's environment, besides the allow-list.
pub const BASE_ENV: [&str; 3] = ["PATH", "HOME", "LANG"];
/// Default per-iteration timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// How to run the external agent program.
#[derive(Clone, Debug)]
pub struct CommandConfig {
    /// The program: a path, or a bare name looked up on `PATH`.
    pub program: PathBuf,
    /// Arguments passed to the program.
    pub args: Vec<String>,
    /// Per-iteration timeout; the process group is killed when it expires.
    pub timeout: Duration,
    /// Working directory of the child (default: the executor's).
    pub workdir: Option<PathBuf>,
    /// Names of environment variables passed through besides `PATH`, `HOME` and `LANG`.
    pub env_pass: Vec<String>,
}

impl CommandConfig {
    /// A config for `program` with no arguments, the default timeout, and no extra variables.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            workdir: None,
            env_pass: Vec::new(),
        }
    }
}

/// Why a [`CommandConfig`] was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommandConfigError {
    /// The program cannot be run.
    #[error("program {}: {reason}", path.display())]
    Program {
        /// The configured program.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The working directory cannot be used.
    #[error("workdir {}: {reason}", path.display())]
    Workdir {
        /// The configured directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An allow-listed name is not a valid environment variable name.
    #[error("env name {0:?}: not a valid environment variable name")]
    EnvName(String),
    /// The timeout is zero.
    #[error("timeout must be greater than zero")]
    Timeout,
}

/// Runs an external program per iteration (this is how real coding agents are wrapped).
#[derive(Debug)]
pub struct CommandAgent {
    program: PathBuf,
    args: Vec<String>,
    timeout: Duration,
    workdir: Option<PathBuf>,
    /// The child's whole environment, captured once at construction.
    env: Vec<(OsString, OsString)>,
}

impl CommandAgent {
    /// Validates `config` (the program is an executable file, the workdir a directory) and
    /// captures the child's environment from the executor's.
    pub fn new(config: CommandConfig) -> std::result::Result<Self, CommandConfigError> {
        if config.timeout.is_zero() {
            return Err(CommandConfigError::Timeout);
        }
        let program =
            resolve_program(&config.program).map_err(|reason| CommandConfigError::Program {
                path: config.program.clone(),
                reason,
            })?;
        let workdir = config
            .workdir
            .as_deref()
            .map(|dir| {
                let canonical =
                    std::fs::canonicalize(dir).map_err(|e| CommandConfigError::Workdir {
                        path: dir.to_owned(),
                        reason: e.to_string(),
                    })?;
                if canonical.is_dir() {
                    Ok(canonical)
                } else {
                    Err(CommandConfigError::Workdir {
                        path: dir.to_owned(),
                        reason: "not a directory".to_owned(),
                    })
                }
            })
            .transpose()?;
        let mut names: Vec<&str> = BASE_ENV.to_vec();
        for name in &config.env_pass {
            if name.is_empty() || name.contains(['=', '\0']) {
                return Err(CommandConfigError::EnvName(name.clone()));
            }
            if !names.contains(&name.as_str()) {
                names.push(name);
            }
        }
        let env = names
            .into_iter()
            .filter_map(|name| std::env::var_os(name).map(|value| (OsString::from(name), value)))
            .collect();
        Ok(Self {
            program,
            args: config.args,
            timeout: config.timeout,
            workdir,
            env,
        })
    }

    /// The resolved program path.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// The per-iteration timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// Makes `program` absolute (looking bare names up on `PATH`) and checks it can be executed.
fn resolve_program(program: &Path) -> std::result::Result<PathBuf, String> {
    if program.as_os_str().is_empty() {
        return Err("empty path".to_owned());
    }
    // Relative paths are resolved now: where a spawn with a working directory would look
    // for them is platform-specific.
    let candidate = if program.to_string_lossy().contains('/') {
        std::fs::canonicalize(program).map_err(|e| e.to_string())?
    } else {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|dir| dir.join(program))
            .find(|p| is_executable_file(p))
            .ok_or_else(|| "not found on PATH".to_owned())?
    };
    if is_executable_file(&candidate) {
        Ok(candidate)
    } else {
        Err("not an executable file".to_owned())
    }
}

fn is_executable_file(path: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.is_file() && meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        meta.is_file()
    }
}

/// The stdin document. Field order and names are part of the contract.
#[derive(Serialize)]
struct StdinRequest<'a> {
    task: StdinTask<'a>,
    role: &'a str,
    step: &'static str,
    iteration: u32,
    prior_outputs: &'a [String],
    context: &'a [String],
    /// Present only with durable workspaces.
    #[serde(skip_serializing_if = "Option::is_none")]
    workspace: Option<StdinWorkspace<'a>>,
}

#[derive(Serialize)]
struct StdinWorkspace<'a> {
    dir: &'a Path,
    repos: Vec<StdinRepo<'a>>,
}

#[derive(Serialize)]
struct StdinRepo<'a> {
    repo: &'a str,
    path: &'a Path,
    branch: &'a str,
    base_commit: &'a str,
    commit: &'a str,
}

#[derive(Serialize)]
struct StdinTask<'a> {
    id: &'a str,
    description: &'a str,
    complexity: &'static str,
    estimated_value_usd: f64,
    repositories: &'a [String],
    /// Sorted, so the same task always produces the same bytes.
    labels: BTreeMap<&'a str, &'a str>,
}

impl<'a> StdinRequest<'a> {
    fn new(input: &'a IterationInput) -> Self {
        let task = &input.task;
        Self {
            task: StdinTask {
                id: &task.id,
                description: &task.description,
                complexity: Complexity::try_from(task.complexity)
                    .unwrap_or(Complexity::Unspecified)
                    .as_str_name(),
                estimated_value_usd: task.estimated_value_usd,
                repositories: &task.repositories,
                labels: task
                    .labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect(),
            },
            role: &input.role,
            step: step_name(input.step),
            iteration: input.iteration,
            prior_outputs: &input.prior_outputs,
            context: &input.context,
            workspace: input.workspace.as_ref().map(|w| StdinWorkspace {
                dir: &w.dir,
                repos: w
                    .repos
                    .iter()
                    .map(|r| StdinRepo {
                        repo: &r.repo,
                        path: &r.path,
                        branch: &r.branch,
                        base_commit: &r.base_commit,
                        commit: &r.commit,
                    })
                    .collect(),
            }),
        }
    }
}

/// The child's process group; killed at most once, on exit, timeout or drop.
struct ProcessGroup {
    pgid: Option<u32>,
    killed: AtomicBool,
}

impl ProcessGroup {
    fn new(pgid: Option<u32>) -> Self {
        Self {
            pgid,
            killed: AtomicBool::new(false),
        }
    }

    /// Sends SIGKILL to every process in the group (a no-op after the first call).
    fn kill(&self) {
        if self.killed.swap(true, Ordering::SeqCst) {
            return;
        }
        #[cfg(unix)]
        if let Some(pgid) = self.pgid.and_then(|p| libc::pid_t::try_from(p).ok()) {
            // SAFETY: killpg takes plain integers and has no memory-safety preconditions.
            // The group id is our child's pid, which cannot be reused while the child is
            // unreaped or any member of its group is alive; ESRCH (group gone) is fine.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // The iteration future was dropped (e.g. a specialist timeout): leave nothing running.
        self.kill();
    }
}

/// What reading stdout produced.
enum Stdout {
    Read(Vec<u8>),
    TooLarge,
    Failed(std::io::Error),
}

async fn write_stdin(stdin: Option<ChildStdin>, payload: &[u8]) {
    let Some(mut stdin) = stdin else { return };
    // A child that exits without reading stdin closes the pipe: not an error of ours.
    match stdin.write_all(payload).await {
        Ok(()) => {
            let _ = stdin.shutdown().await;
        }
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(e) => tracing::debug!(error = %e, "writing the agent's stdin failed"),
    }
    // Dropping closes the pipe, so the child sees EOF.
}

async fn read_stdout(stdout: Option<impl AsyncRead + Unpin>, group: &ProcessGroup) -> Stdout {
    let mut buf = Vec::new();
    let Some(stdout) = stdout else {
        return Stdout::Read(buf);
    };
    let limit = MAX_STDOUT_BYTES as u64 + 1;
    match stdout.take(limit).read_to_end(&mut buf).await {
        Ok(_) if buf.len() > MAX_STDOUT_BYTES => {
            // Nobody will read the rest; stop the writer instead of letting it block.
            group.kill();
            Stdout::TooLarge
        }
        Ok(_) => Stdout::Read(buf),
        Err(e) => Stdout::Failed(e),
    }
}

/// Drains stderr, keeping only its size: it may echo the task description.
async fn count_bytes(stream: Option<impl AsyncRead + Unpin>) -> u64 {
    let Some(mut stream) = stream else { return 0 };
    let mut chunk = [0u8; 8192];
    let mut total = 0u64;
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return total,
            Ok(n) => total += n as u64,
        }
    }
}

fn describe_exit(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return format!("killed by signal {signal}");
        }
    }
    format!("ended with {status}")
}

/// Parses the stdout document. Errors name fields and sizes, never content.
fn parse_output(stdout: &[u8]) -> Result<IterationOutput> {
    let bad = |what: String| Error::AgentFailed(format!("bad output: {what}"));
    if stdout.iter().all(u8::is_ascii_whitespace) {
        return Err(bad("stdout is empty".to_owned()));
    }
    let value: Value = serde_json::from_slice(stdout).map_err(|e| {
        bad(format!(
            "stdout ({} bytes) is not one JSON object: {:?} error at line {} column {}",
            stdout.len(),
            e.classify(),
            e.line(),
            e.column()
        ))
    })?;
    let Value::Object(map) = value else {
        return Err(bad("stdout is JSON but not an object".to_owned()));
    };
    let field = |name: &str| map.get(name).filter(|v| !v.is_null());
    let output = match field("output") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(bad("field `output` is missing or not a string".to_owned())),
    };
    let done = match field("done") {
        Some(Value::Bool(b)) => *b,
        _ => return Err(bad("field `done` is missing or not a boolean".to_owned())),
    };
    let cost_usd = match field("cost_usd") {
        None => 0.0,
        Some(v) => {
            let cost = v
                .as_f64()
                .ok_or_else(|| bad("field `cost_usd` is not a number".to_owned()))?;
            check_cost(cost)?
        }
    };
    let count = |name: &str| -> Result<u64> {
        match field(name) {
            None => Ok(0),
            Some(v) => v
                .as_u64()
                .ok_or_else(|| bad(format!("field `{name}` is not a non-negative integer"))),
        }
    };
    let tokens_in = count("tokens_in")?;
    let tokens_out = count("tokens_out")?;
    let plan_roles = match field("plan_roles") {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("field `plan_roles` is not a list of strings".to_owned()))?,
        Some(_) => return Err(bad("field `plan_roles` is not a list of strings".to_owned())),
    };
    let changed_paths = match field("changed_paths") {
        None => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad("field `changed_paths` is not a list of strings".to_owned()))?,
        ),
        Some(_) => {
            return Err(bad(
                "field `changed_paths` is not a list of strings".to_owned()
            ));
        }
    };
    Ok(IterationOutput {
        output,
        done,
        cost_usd,
        tokens_in,
        tokens_out,
        plan_roles,
        changed_paths,
    })
}

#[async_trait::async_trait]
impl Agent for CommandAgent {
    async fn run_iteration(&self, input: IterationInput) -> Result<IterationOutput> {
        let payload = serde_json::to_vec(&StdinRequest::new(&input))
            .map_err(|e| Error::AgentFailed(format!("cannot encode the request: {e}")))?;

        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        #[cfg(unix)]
        command.process_group(0);
        // The task's workspace, when there is one, wins over --agent-workdir.
        if let Some(ws) = &input.workspace {
            command.current_dir(&ws.dir);
        } else if let Some(dir) = &self.workdir {
            command.current_dir(dir);
        }

        let started = Instant::now();
        let mut child = command.spawn().map_err(|e| {
            Error::AgentFailed(format!("cannot start {}: {e}", self.program.display()))
        })?;
        // process_group(0) makes the child's pid its group id.
        let group = ProcessGroup::new(child.id());
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();

        let exchange = async {
            let wait = async {
                let status = child.wait().await;
                // Stragglers may hold the pipes open; the iteration is over when the child is.
                group.kill();
                status
            };
            let ((), stdout, stderr_bytes, status) = tokio::join!(
                write_stdin(stdin, &payload),
                read_stdout(stdout, &group),
                count_bytes(stderr),
                wait
            );
            (stdout, stderr_bytes, status)
        };
        let finished = tokio::time::timeout(self.timeout, exchange).await;
        let Ok((stdout, stderr_bytes, status)) = finished else {
            group.kill();
            // Reap the child so it does not linger as a zombie.
            let _ = child.kill().await;
            tracing::warn!(
                task_id = %input.task.id,
                role = %input.role,
                iteration = input.iteration,
                timeout_ms = self.timeout.as_millis() as u64,
                "command agent timed out; process group killed"
            );
            return Err(Error::AgentTimeout(self.timeout));
        };

        let stdout = match stdout {
            Stdout::Read(bytes) => bytes,
            Stdout::TooLarge => {
                return Err(Error::AgentFailed(format!(
                    "bad output: stdout exceeds {MAX_STDOUT_BYTES} bytes"
                )));
            }
            Stdout::Failed(e) => {
                return Err(Error::AgentFailed(format!("reading stdout failed: {e}")));
            }
        };
        let status =
            status.map_err(|e| Error::AgentFailed(format!("waiting for the agent failed: {e}")))?;
        tracing::debug!(
            task_id = %input.task.id,
            role = %input.role,
            iteration = input.iteration,
            elapsed_ms = started.elapsed().as_millis() as u64,
            stdout_bytes = stdout.len(),
            stderr_bytes,
            exit = %status,
            "command agent finished"
        );
        if !status.success() {
            // stderr may echo the description, so only its size is reported.
            return Err(Error::AgentFailed(format!(
                "{} (stderr: {stderr_bytes} bytes)",
                describe_exit(status)
            )));
        }
        parse_output(&stdout)
    }

    fn kind(&self) -> &'static str {
        "command"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_and_minimal_output() {
        let out = parse_output(
            br#"{"output":"x","done":true,"cost_usd":0.5,"tokens_in":3,"tokens_out":4,"plan_roles":["a"],"extra":1}"#,
        )
        .unwrap();
        assert_eq!(
            out,
            IterationOutput {
                output: "x".into(),
                done: true,
                cost_usd: 0.5,
                tokens_in: 3,
                tokens_out: 4,
                plan_roles: vec!["a".into()],
                changed_paths: None,
            }
        );
        let out = parse_output(b" {\"output\":\"\",\"done\":false,\"cost_usd\":null}\n").unwrap();
        assert_eq!(out.cost_usd, 0.0);
        assert!(out.plan_roles.is_empty());
    }

    #[test]
    fn rejects_bad_output_without_echoing_it() {
        for (doc, needle) in [
            (&b""[..], "empty"),
            (b"secret words", "not one JSON object"),
            (b"[\"secret\"]", "not an object"),
            (b"{\"done\":true}", "`output`"),
            (b"{\"output\":\"secret\"}", "`done`"),
            (b"{\"output\":\"secret\",\"done\":\"yes\"}", "`done`"),
            (
                b"{\"output\":\"a\",\"done\":true,\"cost_usd\":-1}",
                "cost_usd",
            ),
            (
                b"{\"output\":\"a\",\"done\":true,\"cost_usd\":\"secret\"}",
                "cost_usd",
            ),
            (
                b"{\"output\":\"a\",\"done\":true,\"tokens_in\":-3}",
                "tokens_in",
            ),
            (
                b"{\"output\":\"a\",\"done\":true,\"plan_roles\":[1]}",
                "plan_roles",
            ),
        ] {
            let msg = parse_output(doc).unwrap_err().to_string();
            assert!(msg.contains(needle), "{msg}");
            assert!(!msg.contains("secret"), "{msg}");
        }
    }

    #[test]
    fn config_validation() {
        let err = CommandAgent::new(CommandConfig::new("/definitely/not/here")).unwrap_err();
        assert!(matches!(err, CommandConfigError::Program { .. }));
        let not_executable = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let err = CommandAgent::new(CommandConfig::new(not_executable)).unwrap_err();
        assert!(err.to_string().contains("not an executable file"), "{err}");
        assert!(CommandAgent::new(CommandConfig::new("sh")).is_ok());

        let mut cfg = CommandConfig::new("sh");
        cfg.env_pass = vec!["A=B".into()];
        assert!(matches!(
            CommandAgent::new(cfg).unwrap_err(),
            CommandConfigError::EnvName(_)
        ));
        let mut cfg = CommandConfig::new("sh");
        cfg.workdir = Some(not_executable.into());
        assert!(matches!(
            CommandAgent::new(cfg).unwrap_err(),
            CommandConfigError::Workdir { .. }
        ));
        let mut cfg = CommandConfig::new("sh");
        cfg.timeout = Duration::ZERO;
        assert_eq!(
            CommandAgent::new(cfg).unwrap_err(),
            CommandConfigError::Timeout
        );
    }
}
