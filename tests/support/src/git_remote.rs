//! Bare git repositories in a temporary directory, reached over `file://`, as the remotes
//! of workspace tests, benchmarks and the demo.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Settings of each remote, as GitHub, GitLab and Gitea serve repositories: fetch
/// filters allowed, which partial clones need (fetching a missing object by id needs
/// nothing more over git's protocol v2).
pub const HOST_CONFIG: [(&str, &str); 1] = [("uploadpack.allowFilter", "true")];

/// A directory of bare repositories: `<dir>/<name>.git`.
pub struct GitRemotes {
    dir: tempfile::TempDir,
}

impl Default for GitRemotes {
    fn default() -> Self {
        Self::new()
    }
}

impl GitRemotes {
    /// An empty directory of remotes.
    pub fn new() -> Self {
        Self {
            dir: tempfile::Builder::new()
                .prefix("taskrouter-remotes")
                .tempdir()
                .expect("temporary directory for git remotes"),
        }
    }

    /// The `--git-remote-template` reaching these remotes.
    pub fn template(&self) -> String {
        format!("file://{}/{{repo}}.git", self.dir.path().display())
    }

    /// The bare repository of `name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.git"))
    }

    /// Creates the bare repository `name` whose `main` holds `files` files of
    /// `file_bytes` bytes each (`dir<k>/file<n>.txt`, 1000 per directory), written with
    /// `git fast-import` so that even 100,000 files take seconds. Returns `main`'s commit.
    pub fn create(&self, name: &str, files: usize, file_bytes: usize) -> String {
        let path = self.path(name);
        git(
            self.dir.path(),
            &[
                "init",
                "--bare",
                "--quiet",
                "-b",
                "main",
                path.to_str().unwrap(),
            ],
        );
        // As a git host serves it: partial clones allowed.
        for (key, value) in HOST_CONFIG {
            git(&path, &["config", key, value]);
        }
        let mut import = Command::new("git")
            .args(["fast-import", "--quiet", "--done"])
            .current_dir(&path)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("git fast-import");
        {
            let mut w = std::io::BufWriter::new(import.stdin.take().unwrap());
            writeln!(w, "commit refs/heads/main").unwrap();
            writeln!(w, "committer fixture <fixture@localhost> 1700000000 +0000").unwrap();
            writeln!(w, "data 8\nfixture\n").unwrap();
            let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
            let mut content = vec![b'\n'; file_bytes.max(1)];
            for n in 0..files {
                // Distinct, source-like contents (lowercase letters, a newline every 64
                // bytes), so neither deduplication nor compression makes the repo small.
                for (i, byte) in content.iter_mut().enumerate() {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    *byte = if i % 64 == 63 {
                        b'\n'
                    } else {
                        b'a' + (seed % 26) as u8
                    };
                }
                writeln!(w, "M 100644 inline dir{}/file{n}.txt", n / 1000).unwrap();
                writeln!(w, "data {}", content.len()).unwrap();
                w.write_all(&content).unwrap();
                writeln!(w).unwrap();
            }
            writeln!(w, "M 100644 inline README.md\ndata 8\nfixture\n").unwrap();
            writeln!(w, "done").unwrap();
        }
        assert!(import.wait().unwrap().success(), "git fast-import failed");
        git(&path, &["rev-parse", "main"])
    }

    /// Commit of `branch` in `name`, `None` when it does not exist.
    pub fn tip(&self, name: &str, branch: &str) -> Option<String> {
        let out = Command::new("git")
            .args([
                "rev-parse",
                "--verify",
                "--quiet",
                &format!("refs/heads/{branch}"),
            ])
            .current_dir(self.path(name))
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The `Taskrouter-Iteration` trailers along `branch`'s first-parent history, oldest
    /// first (commits without one are skipped).
    pub fn iterations(&self, name: &str, branch: &str) -> Vec<u32> {
        let out = git(
            &self.path(name),
            &[
                "log",
                "--first-parent",
                "--reverse",
                "--format=%(trailers:key=Taskrouter-Iteration,valueonly)%x00",
                &format!("refs/heads/{branch}"),
            ],
        );
        out.split('\0')
            .filter_map(|s| s.trim().parse().ok())
            .collect()
    }

    /// The content of `file` at `rev` (`None` when absent).
    pub fn show(&self, name: &str, rev: &str, file: &str) -> Option<String> {
        let out = Command::new("git")
            .args(["show", &format!("{rev}:{file}")])
            .current_dir(self.path(name))
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Runs `git <args>` in `dir` (a fixed identity, no user config) and returns stdout;
/// panics on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=fixture",
            "-c",
            "user.email=fixture@localhost",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git on PATH");
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
