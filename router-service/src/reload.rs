//! The policy in force and its hot reload.
//!
//! The current [`LoadedPolicy`] sits behind an `Arc` that is swapped atomically: a request
//! takes one `Arc` and decides with that version from start to end, while a reload builds
//! the next version off to the side and swaps it in.
//!
//! The file's parent directory is watched (Kubernetes ConfigMap volumes replace a `..data`
//! symlink, so the file's inode changes and a watch on the file itself would go stale),
//! events are debounced, and the file is also re-read on a fixed interval as a safety net
//! for missed events. A reload only happens when the content hash changes. A new file that
//! does not read, parse or validate is logged and counted once, and the last good policy
//! stays in force.

use crate::error::Error;
use crate::policy::{PolicyEngine, policy_version};
use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use service_kit::Shutdown;
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};
use tokio::task::JoinHandle;

/// Largest accepted policy file (4 MiB); keyword lists never need more.
pub const MAX_POLICY_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Counter of reload attempts that found new content, labelled `result="ok"|"error"`.
pub const RELOADS_METRIC: &str = "taskrouter_policy_reloads_total";

/// Where the policy comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicySource {
    /// The compiled-in defaults.
    Builtin,
    /// A TOML file, re-read when it changes.
    File(PathBuf),
}

impl fmt::Display for PolicySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicySource::Builtin => f.write_str("builtin"),
            PolicySource::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// One policy version in force.
#[derive(Debug)]
pub struct LoadedPolicy {
    /// The compiled policy.
    pub engine: PolicyEngine,
    /// Where it was read from.
    pub source: PolicySource,
    /// When it was loaded.
    pub loaded_at: SystemTime,
    digest: [u8; 32],
}

/// What a reload check did.
#[derive(Debug)]
pub enum Reload {
    /// Same content as the version in force (or the same bad content as last time).
    Unchanged,
    /// A new version is in force.
    Reloaded {
        /// Its version.
        version: String,
    },
    /// New content was rejected; the previous version stays in force.
    Rejected(Error),
}

/// The policy in force, swappable at runtime.
#[derive(Debug)]
pub struct PolicyStore {
    source: PolicySource,
    current: RwLock<Arc<LoadedPolicy>>,
    /// The last rejected content (hash or read error), so a bad file is reported once.
    last_failure: Mutex<Option<String>>,
}

impl PolicyStore {
    /// Loads the policy from `path`, or the built-in policy when `None`.
    pub fn load(path: Option<&Path>) -> Result<Self, Error> {
        let loaded = match path {
            None => {
                let engine = PolicyEngine::builtin()?;
                LoadedPolicy {
                    digest: Sha256::digest(crate::policy::BUILTIN_POLICY_TOML).into(),
                    engine,
                    source: PolicySource::Builtin,
                    loaded_at: SystemTime::now(),
                }
            }
            Some(p) => {
                let bytes = read_policy_file(p)?;
                load_bytes(p, &bytes)?
            }
        };
        Ok(Self {
            source: loaded.source.clone(),
            current: RwLock::new(Arc::new(loaded)),
            last_failure: Mutex::new(None),
        })
    }

    /// The version in force; hold it for the whole of one decision.
    pub fn current(&self) -> Arc<LoadedPolicy> {
        // A poisoned lock still holds a valid Arc: a panic cannot leave it half-written.
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Where the policy comes from.
    pub fn source(&self) -> &PolicySource {
        &self.source
    }

    /// Re-reads the file and swaps in a new version if the content changed and is valid.
    /// Logs and counts the outcome. Blocking (file I/O, automaton build).
    pub fn reload(&self) -> Reload {
        let PolicySource::File(path) = &self.source else {
            return Reload::Unchanged;
        };
        let current = self.current();
        let attempt = read_policy_file(path);
        let failure_key = match &attempt {
            Ok(bytes) => {
                let digest: [u8; 32] = Sha256::digest(bytes).into();
                if digest == current.digest {
                    // Back to (or still at) the version in force: forget old failures so
                    // the same bad content is reported again if it comes back.
                    self.set_last_failure(None);
                    return Reload::Unchanged;
                }
                hex::encode(digest)
            }
            Err(Error::PolicyRead { source, .. }) => format!("read:{:?}", source.kind()),
            Err(other) => format!("read:{other}"),
        };
        if self.last_failure_is(&failure_key) {
            return Reload::Unchanged;
        }
        let result = attempt.and_then(|bytes| load_bytes(path, &bytes));
        match result {
            Ok(loaded) => {
                let version = loaded.engine.version().to_string();
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(loaded);
                self.set_last_failure(None);
                metrics::counter!(RELOADS_METRIC, "result" => "ok").increment(1);
                tracing::info!(
                    policy.version = %version,
                    policy.previous_version = %current.engine.version(),
                    policy.source = %self.source,
                    "policy reloaded"
                );
                Reload::Reloaded { version }
            }
            Err(e) => {
                self.set_last_failure(Some(failure_key));
                metrics::counter!(RELOADS_METRIC, "result" => "error").increment(1);
                tracing::warn!(
                    error = %e,
                    policy.version = %current.engine.version(),
                    "policy reload rejected; keeping the version in force"
                );
                Reload::Rejected(e)
            }
        }
    }

    fn last_failure_is(&self, key: &str) -> bool {
        self.last_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_deref()
            == Some(key)
    }

    fn set_last_failure(&self, key: Option<String>) {
        *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) = key;
    }
}

fn read_policy_file(path: &Path) -> Result<Vec<u8>, Error> {
    let read_err = |source| Error::PolicyRead {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_POLICY_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_POLICY_FILE_BYTES {
        return Err(Error::PolicyParse {
            origin: path.display().to_string(),
            message: format!("file is larger than {MAX_POLICY_FILE_BYTES} bytes"),
        });
    }
    Ok(bytes)
}

fn load_bytes(path: &Path, bytes: &[u8]) -> Result<LoadedPolicy, Error> {
    let origin = path.display().to_string();
    let text = std::str::from_utf8(bytes).map_err(|e| Error::PolicyParse {
        origin: origin.clone(),
        message: format!("not UTF-8: {e}"),
    })?;
    let engine = PolicyEngine::from_toml(text, &origin)?;
    debug_assert_eq!(engine.version(), policy_version(bytes));
    Ok(LoadedPolicy {
        engine,
        source: PolicySource::File(path.to_path_buf()),
        loaded_at: SystemTime::now(),
        digest: Sha256::digest(bytes).into(),
    })
}

/// Starts the reload loop for `store`: file-system events (debounced by `debounce`) plus a
/// content check every `poll_interval` (zero disables polling). Ends on `shutdown`; does
/// nothing for the built-in policy.
pub fn spawn_reloader(
    store: Arc<PolicyStore>,
    poll_interval: Duration,
    debounce: Duration,
    shutdown: Shutdown,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let PolicySource::File(path) = store.source().clone() else {
            return;
        };
        let (tx, mut events) = tokio::sync::mpsc::channel::<()>(1);
        // Keeps the channel open when no watcher could be started, so polling still runs.
        let _keep_open = tx.clone();
        let _watcher = start_watcher(&path, tx);

        let mut ticker = (!poll_interval.is_zero()).then(|| {
            let mut t = tokio::time::interval(poll_interval);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tick(&mut ticker) => {}
                Some(()) = events.recv() => {
                    // Editors and ConfigMap swaps change the directory in several steps:
                    // wait for a quiet moment before reading.
                    loop {
                        tokio::select! {
                            _ = shutdown.wait() => return,
                            _ = tokio::time::sleep(debounce) => break,
                            Some(()) = events.recv() => {}
                        }
                    }
                }
            }
            let store = store.clone();
            // File I/O and the automaton build are blocking work.
            let _ = tokio::task::spawn_blocking(move || store.reload()).await;
        }
    })
}

async fn tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Watches the parent directory of `path`; `None` (polling only) if the platform refuses.
fn start_watcher(
    path: &Path,
    tx: tokio::sync::mpsc::Sender<()>,
) -> Option<notify::RecommendedWatcher> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let handler = move |event: notify::Result<notify::Event>| {
        let relevant = match event {
            // Our own reads show up as open/close-nowrite events; only writes matter.
            Ok(e) => match e.kind {
                EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
                EventKind::Access(_) => false,
                _ => true,
            },
            // An error may mean missed events: check the file.
            Err(_) => true,
        };
        if relevant {
            // A full channel already has a check pending.
            let _ = tx.try_send(());
        }
    };
    let watcher = notify::recommended_watcher(handler).and_then(|mut w| {
        w.watch(&dir, RecursiveMode::NonRecursive)?;
        Ok(w)
    });
    match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(
                error = %e,
                dir = %dir.display(),
                "cannot watch the policy directory; relying on polling"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn the_builtin_store_never_reloads() {
        let store = PolicyStore::load(None).unwrap();
        assert_eq!(store.source(), &PolicySource::Builtin);
        assert!(matches!(store.reload(), Reload::Unchanged));
        assert_eq!(store.current().source.to_string(), "builtin");
    }

    #[test]
    fn a_changed_file_is_swapped_in_and_an_unchanged_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        write(&path, "[multi_agent]\nrollout_percent = 10\n");
        let store = PolicyStore::load(Some(&path)).unwrap();
        let v1 = store.current().engine.version().to_string();
        assert!(matches!(store.reload(), Reload::Unchanged));
        write(&path, "[multi_agent]\nrollout_percent = 20\n");
        match store.reload() {
            Reload::Reloaded { version } => assert_ne!(version, v1),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            store
                .current()
                .engine
                .settings()
                .multi_agent
                .rollout_percent,
            20
        );
    }

    #[test]
    fn an_invalid_file_keeps_the_old_version_and_is_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        write(&path, "");
        let store = PolicyStore::load(Some(&path)).unwrap();
        let v1 = store.current().engine.version().to_string();
        write(&path, "[multi_agent]\nrollout_percent = 300\n");
        match store.reload() {
            Reload::Rejected(e) => assert!(e.to_string().contains("rollout_percent")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(store.reload(), Reload::Unchanged));
        assert_eq!(store.current().engine.version(), v1);
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            store.reload(),
            Reload::Rejected(Error::PolicyRead { .. })
        ));
        assert!(matches!(store.reload(), Reload::Unchanged));
        assert_eq!(store.current().engine.version(), v1);
    }

    #[test]
    fn a_missing_or_oversize_file_fails_the_first_load() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        assert!(matches!(
            PolicyStore::load(Some(&missing)),
            Err(Error::PolicyRead { .. })
        ));
        let big = dir.path().join("big.toml");
        let mut text = String::from("# ");
        text.push_str(&"x".repeat(MAX_POLICY_FILE_BYTES as usize));
        write(&big, &text);
        let e = PolicyStore::load(Some(&big)).unwrap_err().to_string();
        assert!(e.contains("larger than"), "{e}");
    }
}
