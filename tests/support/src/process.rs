//! The workspace's own binaries as child processes for end-to-end tests.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tempfile::NamedTempFile;

use crate::log_tail;
use crate::spawn::{signal, spawn_tied};

/// The workspace root: the nearest ancestor of this crate whose Cargo.toml has `[workspace]`.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|dir| {
            std::fs::read_to_string(dir.join("Cargo.toml"))
                .is_ok_and(|toml| toml.lines().any(|l| l.trim() == "[workspace]"))
        })
        .expect("no workspace Cargo.toml above tests/support")
        .to_path_buf()
}

/// Where cargo puts binaries for the profile this test was built with.
struct TargetLayout {
    /// `target/<profile>` (or `target/<triple>/<profile>`).
    profile_dir: Option<PathBuf>,
    /// The target dir root, when it can be told apart from a `<triple>` dir.
    target_dir: Option<PathBuf>,
    /// Profile directory name: `debug`, `release` or a custom profile.
    profile: String,
}

fn target_layout() -> TargetLayout {
    // Test executables live in `<target>/<profile>/deps/`; examples in `<profile>/examples/`.
    let profile_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(Path::to_path_buf));
    let profile = profile_dir
        .as_deref()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "debug".to_string());
    // Cargo writes CACHEDIR.TAG at the target root only, which rules out `<target>/<triple>`.
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            let root = profile_dir.as_deref()?.parent()?;
            root.join("CACHEDIR.TAG")
                .is_file()
                .then(|| root.to_path_buf())
        });
    TargetLayout {
        profile_dir,
        target_dir,
        profile,
    }
}

fn find_binary(name: &str, layout: &TargetLayout) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        dirs.push(exe_dir);
    }
    dirs.extend(layout.profile_dir.clone());
    if let Some(target) = &layout.target_dir {
        dirs.push(target.join(&layout.profile));
    }
    dirs.push(workspace_root().join("target").join(&layout.profile));
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// Path of a workspace binary (`router-service`, `executor-service`, `taskctl`) for this profile.
///
/// Uses the binary next to the test executable (honouring `CARGO_TARGET_DIR`); if it is missing,
/// runs `cargo build --bin <name>` once per process. An existing binary is used as is: run
/// `cargo build` (or test the whole workspace) first so it is not stale.
pub fn binary_path(name: &str) -> PathBuf {
    // Outcome of each build this process ran: None = built, Some(msg) = failed.
    static BUILDS: Mutex<BTreeMap<String, Option<String>>> = Mutex::new(BTreeMap::new());

    let layout = target_layout();
    if let Some(path) = find_binary(name, &layout) {
        return path;
    }
    let mut builds = BUILDS.lock().unwrap_or_else(|e| e.into_inner());
    // Another test may have built it while we waited for the lock.
    if let Some(path) = find_binary(name, &layout) {
        return path;
    }
    if !builds.contains_key(name) {
        let outcome = cargo_build(name, &layout).err();
        builds.insert(name.to_string(), outcome);
    }
    if let Some(Some(failure)) = builds.get(name) {
        panic!("binary `{name}` is not built and `cargo build --bin {name}` failed:\n{failure}");
    }
    find_binary(name, &layout).unwrap_or_else(|| {
        panic!(
            "`cargo build --bin {name}` succeeded but no `{name}` was found for profile `{}` (target dir {:?})",
            layout.profile, layout.target_dir
        )
    })
}

fn cargo_build(name: &str, layout: &TargetLayout) -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(workspace_root())
        .args(["build", "--bin", name]);
    match layout.profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    if let Some(target) = &layout.target_dir {
        cmd.arg("--target-dir").arg(target);
    }
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {cargo:?}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} ({})\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// A running child process with stdout and stderr captured to a log file; SIGKILLed on drop.
#[derive(Debug)]
pub struct ServiceProcess {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
    log: NamedTempFile,
}

impl ServiceProcess {
    /// Spawns the workspace binary `name` (see [`binary_path`]) with `args` and extra `envs`.
    pub fn spawn(name: &str, args: &[&str], envs: &[(&str, &str)]) -> ServiceProcess {
        Self::spawn_program(&binary_path(name), args, envs)
    }

    /// Spawns any `program` like [`spawn`](Self::spawn) does.
    ///
    /// The environment is inherited (so `RUST_LOG` passes through); `envs` override it.
    pub fn spawn_program(program: &Path, args: &[&str], envs: &[(&str, &str)]) -> ServiceProcess {
        let name = program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| program.display().to_string());
        let log = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .suffix(".log")
            .tempfile()
            .expect("cannot create a log file for the child process");
        // One append-mode description for both streams, so they interleave instead of overwriting.
        let stdout = std::fs::OpenOptions::new()
            .append(true)
            .open(log.path())
            .expect("cannot open the child's log file");
        let stderr = stdout
            .try_clone()
            .expect("cannot clone the child's log file handle");

        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr));
        let child =
            spawn_tied(cmd).unwrap_or_else(|e| panic!("cannot spawn {}: {e}", program.display()));
        ServiceProcess {
            name,
            child,
            status: None,
            log,
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log file holding the child's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        self.log.path()
    }

    /// Everything the child has written to stdout and stderr so far.
    pub fn log_contents(&self) -> String {
        std::fs::read(self.log.path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Sends SIGTERM (graceful shutdown); does not wait. A no-op once the exit was observed.
    pub fn sigterm(&self) {
        // Until we reap the child its pid cannot be reused, so the signal reaches the right process.
        if self.status.is_none() {
            signal(self.child.id(), libc::SIGTERM);
        }
    }

    /// Sends SIGKILL (a crash) and reaps the child; [`wait_exit`](Self::wait_exit) then returns at once.
    pub fn kill9(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }

    /// Waits up to `timeout` for the child to exit; its status, or `None` if still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The exit status if the child has exited, without waiting.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill9();
        // The log file goes away with us; show it when the test failed so the cause is visible.
        if std::thread::panicking() {
            eprintln!(
                "--- last lines of {} (pid {}) output ---\n{}\n--- end of {} output ---",
                self.name,
                self.child.id(),
                log_tail(self.log.path(), 60),
                self.name
            );
        }
    }
}
