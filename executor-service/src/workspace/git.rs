//! Runs the `git` command line: a cleared environment (as the command agent gets), a
//! timeout that kills git and its helpers, and errors with credentials redacted.

use crate::error::{Error, Result};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Variables passed to git when set in the executor's environment: the basics and git's
/// own credential and transport mechanisms, which the operator sets up (credential
/// helpers in `$HOME/.gitconfig`, `GIT_ASKPASS`, an SSH agent or key, proxies, CAs).
pub const GIT_ENV_PASS: [&str; 20] = [
    "PATH",
    "HOME",
    "LANG",
    "XDG_CONFIG_HOME",
    "GIT_CONFIG_GLOBAL",
    "GIT_ASKPASS",
    "SSH_ASKPASS",
    "SSH_AUTH_SOCK",
    "GIT_SSH",
    "GIT_SSH_COMMAND",
    "GIT_SSL_CAINFO",
    "GIT_SSL_CAPATH",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// Identity of the commits the executor writes (the trailers say which task and worker).
pub const COMMITTER_NAME: &str = "taskrouter";
/// E-mail of the commits the executor writes.
pub const COMMITTER_EMAIL: &str = "taskrouter@localhost";

/// Settings for every invocation: no prompts, no hooks or signing from the operator's
/// global config, no automatic gc in the middle of an iteration.
const FIXED_CONFIG: [&str; 10] = [
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "commit.gpgSign=false",
    "-c",
    "gc.auto=0",
    "-c",
    "maintenance.auto=false",
    "-c",
    "advice.detachedHead=false",
];

/// What one git invocation produced.
#[derive(Debug)]
pub struct Output {
    /// Exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error (may echo the remote URL: redact before logging).
    pub stderr: Vec<u8>,
}

impl Output {
    /// Whether git exited with status 0.
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// Standard output as text without the trailing newline.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).trim_end().to_string()
    }

    /// The first lines of stderr, redacted, for an error message.
    pub fn error_summary(&self) -> String {
        let text = String::from_utf8_lossy(&self.stderr);
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .take(3)
            .collect();
        let joined = lines.join("; ");
        let summary = service_kit::redact::passwords_in(&joined);
        match self.code {
            Some(code) => format!("exit {code}: {summary}"),
            None => format!("killed: {summary}"),
        }
    }
}

/// The git program with the environment and timeout it runs under.
#[derive(Clone, Debug)]
pub struct Git {
    program: PathBuf,
    env: Vec<(OsString, OsString)>,
    timeout: Duration,
}

impl Git {
    /// `program` (a path or a name on `PATH`) with the executor's allow-listed
    /// environment captured now, and `timeout` per invocation.
    pub fn new(program: impl Into<PathBuf>, timeout: Duration) -> Self {
        let env = GIT_ENV_PASS
            .iter()
            .filter_map(|name| std::env::var_os(name).map(|v| (OsString::from(name), v)))
            .collect();
        Self {
            program: program.into(),
            env,
            timeout,
        }
    }

    /// Runs `git <args>` in `dir` (stdin from `input` when given) and returns what it
    /// produced, whatever its exit status.
    pub async fn output<I, S>(&self, dir: &Path, args: I, input: Option<&[u8]>) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Command::new(&self.program);
        command
            .args(FIXED_CONFIG)
            .args(args)
            .current_dir(dir)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            // Fixed messages (parsed below) and never a prompt on a terminal nobody reads.
            .env("LC_ALL", "C")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_AUTHOR_NAME", COMMITTER_NAME)
            .env("GIT_AUTHOR_EMAIL", COMMITTER_EMAIL)
            .env("GIT_COMMITTER_NAME", COMMITTER_NAME)
            .env("GIT_COMMITTER_EMAIL", COMMITTER_EMAIL)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        #[cfg(unix)]
        command.process_group(0);
        let mut child = command.spawn().map_err(|e| {
            Error::Workspace(format!(
                "cannot run {}: {e} (is git installed?)",
                self.program.display()
            ))
        })?;
        let pgid = child.id();
        if let Some(bytes) = input
            && let Some(mut stdin) = child.stdin.take()
        {
            let bytes = bytes.to_vec();
            tokio::spawn(async move {
                let _ = stdin.write_all(&bytes).await;
                let _ = stdin.shutdown().await;
            });
        }
        match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(Ok(out)) => Ok(Output {
                code: out.status.code(),
                stdout: out.stdout,
                stderr: out.stderr,
            }),
            Ok(Err(e)) => Err(Error::Workspace(format!("git failed to run: {e}"))),
            Err(_) => {
                kill_group(pgid);
                Err(Error::Workspace(format!(
                    "git timed out after {:?}",
                    self.timeout
                )))
            }
        }
    }

    /// Runs `git <args>` in `dir` and returns its stdout; a non-zero exit is an error
    /// naming `what` and git's (redacted) message.
    pub async fn run<I, S>(&self, dir: &Path, what: &str, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let out = self.output(dir, args, None).await?;
        if out.ok() {
            Ok(out.text())
        } else {
            Err(Error::Workspace(format!("{what}: {}", out.error_summary())))
        }
    }
}

/// Kills git's process group (remote helpers, ssh) after a timeout.
fn kill_group(pgid: Option<u32>) {
    #[cfg(unix)]
    if let Some(pgid) = pgid.and_then(|p| libc::pid_t::try_from(p).ok()) {
        // SAFETY: killpg takes plain integers; the group is our child's, which is not
        // reaped yet (wait_with_output was cancelled), so the id cannot be reused.
        unsafe {
            libc::killpg(pgid, libc::SIGKILL);
        }
    }
    #[cfg(not(unix))]
    let _ = pgid;
}
