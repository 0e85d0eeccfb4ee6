//! Workspace flags and their validation (one line naming the flag; exit code 2).

use super::refname;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Default branch prefix.
pub const DEFAULT_BRANCH_PREFIX: &str = "taskrouter/";
/// Default base ref.
pub const DEFAULT_BASE_REF: &str = "main";
/// Default bound on the mirrors kept under the workspace root (10 GiB).
pub const DEFAULT_MAX_BYTES: u64 = 10 * 1024 * 1024 * 1024;
/// Default number of idle worktrees kept per repository for reuse.
pub const DEFAULT_IDLE_WORKTREES: usize = 2;
/// Default filter of the mirrors' fetches: a blobless partial clone, so a replica fetches
/// the commits and trees of the history but only the file contents it checks out.
pub const DEFAULT_FETCH_FILTER: &str = "blob:none";
/// The fetch filter value that fetches everything (full mirrors).
pub const NO_FETCH_FILTER: &str = "none";
/// Deadline of one git invocation (a fetch of a large repository included).
pub const GIT_TIMEOUT: Duration = Duration::from_secs(600);
/// The task label that overrides the base ref for one task.
pub const BASE_LABEL: &str = "git.base";
/// The placeholder the remote template must contain.
pub const REPO_PLACEHOLDER: &str = "{repo}";

const ROOT: &str = "--workspace-root / EXECUTOR_WORKSPACE_ROOT";
const TEMPLATE: &str = "--git-remote-template / EXECUTOR_GIT_REMOTE_TEMPLATE";
const PREFIX: &str = "--workspace-branch-prefix / EXECUTOR_WORKSPACE_BRANCH_PREFIX";
const BASE: &str = "--git-base-ref / EXECUTOR_GIT_BASE_REF";
const MAX_BYTES: &str = "--workspace-max-bytes / EXECUTOR_WORKSPACE_MAX_BYTES";
const FILTER: &str = "--workspace-fetch-filter / EXECUTOR_WORKSPACE_FETCH_FILTER";

/// Flags of durable git workspaces. Workspaces are on when the remote template is set.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct WorkspaceArgs {
    /// Local cache of git workspaces: a bare mirror per repository and a worktree per
    /// (task, role, repository). Required with --git-remote-template.
    #[arg(long, env = "EXECUTOR_WORKSPACE_ROOT", value_name = "DIR")]
    pub workspace_root: Option<PathBuf>,
    /// Remote of a task's repository, with `{repo}` replaced by its name (e.g.
    /// `https://git.example.com/{repo}.git`); unset turns workspaces off.
    #[arg(
        long,
        env = "EXECUTOR_GIT_REMOTE_TEMPLATE",
        value_name = "URL",
        hide_env_values = true
    )]
    pub git_remote_template: Option<String>,
    /// Prefix of the branches tasks work on.
    #[arg(long, env = "EXECUTOR_WORKSPACE_BRANCH_PREFIX", default_value = DEFAULT_BRANCH_PREFIX)]
    pub workspace_branch_prefix: String,
    /// Ref a task's branches start from (the task label `git.base` overrides it).
    #[arg(long, env = "EXECUTOR_GIT_BASE_REF", default_value = DEFAULT_BASE_REF)]
    pub git_base_ref: String,
    /// Bytes of mirrors and idle worktrees kept under the workspace root; idle worktrees
    /// go first, then least recently used mirrors.
    #[arg(long, env = "EXECUTOR_WORKSPACE_MAX_BYTES", default_value_t = DEFAULT_MAX_BYTES)]
    pub workspace_max_bytes: u64,
    /// Worktrees of finished tasks kept per repository, so that the next task of that
    /// repository restores by rewriting only the files that differ; 0 removes them.
    #[arg(long, env = "EXECUTOR_WORKSPACE_IDLE_WORKTREES", default_value_t = DEFAULT_IDLE_WORKTREES)]
    pub workspace_idle_worktrees: usize,
    /// Partial-clone filter of new mirrors: `blob:none` fetches file contents only when
    /// a checkout needs them, `blob:limit=<n>[k|m|g]` fetches blobs up to that size
    /// eagerly, `none` fetches everything. A remote that does not allow filters is
    /// fetched in full whatever this says.
    #[arg(long, env = "EXECUTOR_WORKSPACE_FETCH_FILTER", default_value = DEFAULT_FETCH_FILTER)]
    pub workspace_fetch_filter: String,
}

/// Validated workspace settings. Its `Debug` redacts credentials in the template.
#[derive(Clone)]
pub struct WorkspaceConfig {
    /// The local cache directory (created if missing).
    pub root: PathBuf,
    /// Remote template containing `{repo}` (may hold credentials: never log it raw).
    pub remote_template: String,
    /// Branch prefix.
    pub branch_prefix: String,
    /// Default base ref.
    pub base_ref: String,
    /// Bound on the total size of the mirrors and idle worktrees.
    pub max_bytes: u64,
    /// Idle worktrees kept per repository (0: none).
    pub idle_worktrees: usize,
    /// Partial-clone filter of new mirrors (`None`: full mirrors).
    pub fetch_filter: Option<String>,
    /// The git program.
    pub git_program: PathBuf,
    /// Deadline of one git invocation.
    pub git_timeout: Duration,
}

impl fmt::Debug for WorkspaceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkspaceConfig")
            .field("root", &self.root)
            .field(
                "remote_template",
                &service_kit::redact::url(&self.remote_template),
            )
            .field("branch_prefix", &self.branch_prefix)
            .field("base_ref", &self.base_ref)
            .field("max_bytes", &self.max_bytes)
            .field("idle_worktrees", &self.idle_worktrees)
            .field("fetch_filter", &self.fetch_filter)
            .finish()
    }
}

impl WorkspaceConfig {
    /// Settings for `root` and `remote_template` with every other value at its default
    /// (tests, the demo).
    pub fn new(root: impl Into<PathBuf>, remote_template: impl Into<String>) -> Self {
        Self {
            root: root.into(),
            remote_template: remote_template.into(),
            branch_prefix: DEFAULT_BRANCH_PREFIX.into(),
            base_ref: DEFAULT_BASE_REF.into(),
            max_bytes: DEFAULT_MAX_BYTES,
            idle_worktrees: DEFAULT_IDLE_WORKTREES,
            fetch_filter: Some(DEFAULT_FETCH_FILTER.into()),
            git_program: PathBuf::from("git"),
            git_timeout: GIT_TIMEOUT,
        }
    }

    /// The remote URL of `repo` (which must have passed [`refname::check_repo_name`]).
    pub fn remote_url(&self, repo: &str) -> String {
        self.remote_template.replace(REPO_PLACEHOLDER, repo)
    }
}

impl WorkspaceArgs {
    /// The validated settings, `None` when workspaces are off; the error is one line
    /// naming the flag, without credentials.
    pub fn validate(&self) -> Result<Option<WorkspaceConfig>, String> {
        let template = match self.git_remote_template.as_deref().map(str::trim) {
            None | Some("") => return Ok(None),
            Some(t) => t.to_string(),
        };
        if !template.contains(REPO_PLACEHOLDER) {
            return Err(format!(
                "{TEMPLATE}: {:?} must contain {REPO_PLACEHOLDER}",
                service_kit::redact::url(&template)
            ));
        }
        if template.chars().any(char::is_whitespace) {
            return Err(format!("{TEMPLATE}: must not contain whitespace"));
        }
        let root = self
            .workspace_root
            .clone()
            .ok_or_else(|| format!("{ROOT}: required with --git-remote-template"))?;
        check_writable(&root)
            .map_err(|e| format!("{ROOT}: {} is not usable: {e}", root.display()))?;
        let git = PathBuf::from("git");
        check_git(&git).map_err(|e| format!("{TEMPLATE}: needs git on PATH ({e})"))?;
        check_branch_prefix(&git, &self.workspace_branch_prefix)
            .map_err(|e| format!("{PREFIX}: {e}"))?;
        check_base_ref(&self.git_base_ref).map_err(|e| format!("{BASE}: {e}"))?;
        if self.workspace_max_bytes == 0 {
            return Err(format!("{MAX_BYTES}: must be at least 1"));
        }
        let fetch_filter = check_fetch_filter(&self.workspace_fetch_filter)
            .map_err(|e| format!("{FILTER}: {e}"))?;
        let root = std::fs::canonicalize(&root)
            .map_err(|e| format!("{ROOT}: {} is not usable: {e}", root.display()))?;
        Ok(Some(WorkspaceConfig {
            root,
            remote_template: template,
            branch_prefix: self.workspace_branch_prefix.clone(),
            base_ref: self.git_base_ref.clone(),
            max_bytes: self.workspace_max_bytes,
            idle_worktrees: self.workspace_idle_worktrees,
            fetch_filter,
            git_program: git,
            git_timeout: GIT_TIMEOUT,
        }))
    }
}

/// Checks a base ref (the flag or the `git.base` label): a branch, tag or full ref name.
pub fn check_base_ref(base: &str) -> Result<(), String> {
    if base.is_empty() {
        return Err("must not be empty".into());
    }
    if base.starts_with('-') || base.contains("..") {
        return Err(format!("{base:?} is not a ref name"));
    }
    if !base.bytes().all(|b| b.is_ascii_graphic())
        || base
            .bytes()
            .any(|b| matches!(b, b'~' | b'^' | b':' | b'?' | b'*' | b'[' | b'\\'))
    {
        return Err(format!("{base:?} is not a ref name"));
    }
    Ok(())
}

/// Checks a fetch filter: `none` (`None`: no filter), `blob:none` or
/// `blob:limit=<n>[k|m|g]`. Tree filters are refused: commits need their trees.
pub fn check_fetch_filter(filter: &str) -> Result<Option<String>, String> {
    let filter = filter.trim();
    if filter == NO_FETCH_FILTER {
        return Ok(None);
    }
    if filter == "blob:none" {
        return Ok(Some(filter.into()));
    }
    if let Some(limit) = filter.strip_prefix("blob:limit=") {
        let digits = limit.trim_end_matches(['k', 'm', 'g']);
        if !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && limit.len() - digits.len() <= 1
        {
            return Ok(Some(filter.into()));
        }
    }
    Err(format!(
        "{filter:?} is not one of none, blob:none, blob:limit=<n>[k|m|g]"
    ))
}

fn check_writable(root: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(root)?;
    let probe = root.join(format!(".taskrouter-probe-{}", std::process::id()));
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(&probe)
}

fn check_git(git: &std::path::Path) -> Result<(), String> {
    let out = std::process::Command::new(git)
        .arg("--version")
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("`git --version` failed: {}", out.status))
    }
}

fn check_branch_prefix(git: &std::path::Path, prefix: &str) -> Result<(), String> {
    if prefix.contains(refname::ROLE_SEPARATOR) {
        return Err(format!(
            "{prefix:?} must not contain {:?}",
            refname::ROLE_SEPARATOR
        ));
    }
    let full = format!("refs/heads/{prefix}x");
    let ok = std::process::Command::new(git)
        .args(["check-ref-format", &full])
        .status()
        .map_err(|e| e.to_string())?
        .success();
    if ok {
        Ok(())
    } else {
        Err(format!("{prefix:?} does not make valid branch names"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(root: Option<PathBuf>, template: &str) -> WorkspaceArgs {
        WorkspaceArgs {
            workspace_root: root,
            git_remote_template: Some(template.into()),
            workspace_branch_prefix: DEFAULT_BRANCH_PREFIX.into(),
            git_base_ref: DEFAULT_BASE_REF.into(),
            workspace_max_bytes: DEFAULT_MAX_BYTES,
            workspace_idle_worktrees: DEFAULT_IDLE_WORKTREES,
            workspace_fetch_filter: DEFAULT_FETCH_FILTER.into(),
        }
    }

    #[test]
    fn off_without_a_template() {
        assert!(WorkspaceArgs::default().validate().unwrap().is_none());
    }

    #[test]
    fn each_bad_setting_is_named_in_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let root = Some(dir.path().join("ws"));
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let cases: Vec<(WorkspaceArgs, &str)> = vec![
            (
                args(root.clone(), "https://bob:s3cret@git.example.com/x.git"),
                "--git-remote-template",
            ),
            (args(None, "file:///srv/{repo}.git"), "--workspace-root"),
            (
                args(Some(file.join("sub")), "file:///srv/{repo}.git"),
                "--workspace-root",
            ),
            (
                WorkspaceArgs {
                    workspace_branch_prefix: "bad..prefix/".into(),
                    ..args(root.clone(), "file:///srv/{repo}.git")
                },
                "--workspace-branch-prefix",
            ),
            (
                WorkspaceArgs {
                    git_base_ref: "-x".into(),
                    ..args(root.clone(), "file:///srv/{repo}.git")
                },
                "--git-base-ref",
            ),
            (
                WorkspaceArgs {
                    workspace_max_bytes: 0,
                    ..args(root.clone(), "file:///srv/{repo}.git")
                },
                "--workspace-max-bytes",
            ),
            (
                WorkspaceArgs {
                    workspace_fetch_filter: "tree:0".into(),
                    ..args(root.clone(), "file:///srv/{repo}.git")
                },
                "--workspace-fetch-filter",
            ),
        ];
        for (a, name) in cases {
            let err = a.validate().unwrap_err();
            assert!(err.starts_with(name), "{name}: {err}");
            assert!(!err.contains('\n') && !err.contains("s3cret"), "{err}");
        }
    }

    #[test]
    fn fetch_filters_are_none_blobless_or_a_blob_size_limit() {
        assert_eq!(check_fetch_filter("none"), Ok(None));
        for ok in [
            "blob:none",
            "blob:limit=0",
            "blob:limit=512k",
            "blob:limit=1m",
        ] {
            assert_eq!(check_fetch_filter(ok), Ok(Some(ok.to_string())), "{ok}");
        }
        for bad in [
            "",
            "tree:0",
            "blob:limit=",
            "blob:limit=1mk",
            "blob:limit=k",
            "sparse:oid=x",
        ] {
            assert!(check_fetch_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_good_template_validates_and_debug_hides_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = args(
            Some(dir.path().join("ws")),
            "https://bob:s3cret@git.example.com/{repo}.git",
        )
        .validate()
        .unwrap()
        .unwrap();
        assert!(cfg.root.is_dir());
        assert_eq!(
            cfg.remote_url("org/app"),
            "https://bob:s3cret@git.example.com/org/app.git"
        );
        assert!(!format!("{cfg:?}").contains("s3cret"));
    }
}
