//! What `--workspace-max-bytes` bounds and what goes when it is exceeded: the mirrors
//! plus the idle worktrees kept for reuse. Idle worktrees go first (least recently used
//! repositories first: a new checkout rebuilds one locally), then mirrors without
//! worktrees (rebuilding one fetches the whole history again).

use super::mirror::{self, LAST_USED};
use super::pool;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// A mirror's size and last use.
#[derive(Debug)]
pub struct MirrorUsage {
    /// The bare repository.
    pub path: PathBuf,
    /// Its directory name without `.git` (the encoded repository name).
    pub name: String,
    /// Bytes on disk.
    pub bytes: u64,
    /// Last use.
    pub last_used: SystemTime,
    /// Worktrees registered in it, idle ones included (it is evicted only once every
    /// one of them is idle and evicted too).
    pub worktrees: usize,
}

/// An idle worktree's size.
#[derive(Debug)]
pub struct IdleUsage {
    /// The entry's directory.
    pub path: PathBuf,
    /// Its pool's directory name (the encoded repository name).
    pub name: String,
    /// Bytes on disk (whatever its last task left, build output included).
    pub bytes: u64,
}

/// One thing to delete, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Evict {
    /// An idle worktree: (encoded repository name, directory).
    Idle(String, PathBuf),
    /// A mirror: (encoded repository name, directory).
    Mirror(String, PathBuf),
}

/// Size and last use of every mirror under `root`.
pub fn mirrors(root: &Path) -> Vec<MirrorUsage> {
    let Ok(entries) = std::fs::read_dir(mirror::mirrors_dir(root)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "git") && p.join("HEAD").is_file())
        .filter_map(|path| {
            let name = path.file_stem()?.to_str()?.to_string();
            let last_used = std::fs::metadata(path.join(LAST_USED))
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            Some(MirrorUsage {
                bytes: dir_bytes(&path),
                worktrees: mirror::registered_worktrees(&path),
                name,
                path,
                last_used,
            })
        })
        .collect()
}

/// Sizes of idle worktrees already measured, by directory and the directory's inode.
///
/// An idle worktree does not change until a task takes it (which moves it out of the
/// pool), so its size is measured once, when it is first seen idle, instead of a walk of
/// every idle tree at every finish. A worktree parked later under the same path is
/// another directory (another inode) and is measured anew.
#[derive(Debug, Default)]
pub struct IdleSizes(HashMap<(PathBuf, u64), u64>);

/// Size of every idle worktree under `root`, measuring only those not in `known`; `known`
/// keeps exactly the worktrees seen this time.
pub fn idle(root: &Path, known: &mut IdleSizes) -> Vec<IdleUsage> {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(pools) = std::fs::read_dir(pool::pools_dir(root)) else {
        known.0.clear();
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut seen = HashMap::new();
    for pool in pools.flatten() {
        let Some(name) = pool.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let Ok(entries) = std::fs::read_dir(pool.path()) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let key = (path.clone(), meta.ino());
            let bytes = match known.0.get(&key) {
                Some(b) => *b,
                None => dir_bytes(&path),
            };
            seen.insert(key, bytes);
            out.push(IdleUsage {
                bytes,
                name: name.clone(),
                path,
            });
        }
    }
    known.0 = seen;
    out
}

/// What to delete so that mirrors and idle worktrees together fit in `max_bytes`: idle
/// worktrees of the least recently used repositories first, then least recently used
/// mirrors none of whose worktrees is in use.
pub fn plan(mut mirrors: Vec<MirrorUsage>, mut idle: Vec<IdleUsage>, max_bytes: u64) -> Vec<Evict> {
    let mut total: u64 =
        mirrors.iter().map(|m| m.bytes).sum::<u64>() + idle.iter().map(|i| i.bytes).sum::<u64>();
    mirrors.sort_by_key(|m| m.last_used);
    let rank = |name: &str| {
        mirrors
            .iter()
            .position(|m| m.name == name)
            .map_or(0, |p| p + 1)
    };
    idle.sort_by_cached_key(|i| rank(&i.name));
    let mut out = Vec::new();
    let mut dropped: HashMap<String, usize> = HashMap::new();
    for i in idle {
        if total <= max_bytes {
            return out;
        }
        total = total.saturating_sub(i.bytes);
        *dropped.entry(i.name.clone()).or_default() += 1;
        out.push(Evict::Idle(i.name, i.path));
    }
    for m in mirrors {
        if total <= max_bytes {
            break;
        }
        if m.worktrees > dropped.get(&m.name).copied().unwrap_or(0) {
            continue;
        }
        total = total.saturating_sub(m.bytes);
        out.push(Evict::Mirror(m.name, m.path));
    }
    out
}

fn dir_bytes(path: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(entry.path()),
                Ok(_) => total += entry.metadata().map(|m| m.len()).unwrap_or(0),
                Err(_) => {}
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn mirror(name: &str, bytes: u64, age: u64, worktrees: usize) -> MirrorUsage {
        MirrorUsage {
            path: PathBuf::from(format!("mirrors/{name}.git")),
            name: name.into(),
            bytes,
            last_used: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000 - age),
            worktrees,
        }
    }

    fn idle(name: &str, n: u32, bytes: u64) -> IdleUsage {
        IdleUsage {
            path: PathBuf::from(format!("pool/{name}/{n}")),
            name: name.into(),
            bytes,
        }
    }

    fn idle_evict(name: &str, n: u32) -> Evict {
        Evict::Idle(name.into(), PathBuf::from(format!("pool/{name}/{n}")))
    }

    #[test]
    fn an_idle_worktree_is_measured_once_and_a_new_one_in_its_place_again() {
        let root = tempfile::tempdir().unwrap();
        let entry = pool::pools_dir(root.path()).join("app").join("0");
        std::fs::create_dir_all(entry.join("src")).unwrap();
        std::fs::write(entry.join("src/a.txt"), vec![b'a'; 1000]).unwrap();
        let mut known = IdleSizes::default();
        let first = super::idle(root.path(), &mut known);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].bytes, 1000);
        assert_eq!(first[0].name, "app");
        // Unchanged while idle: the next finish reuses the size (a write behind the
        // pool's back is not seen, which is the point: no walk).
        std::fs::write(entry.join("src/b.txt"), vec![b'b'; 500]).unwrap();
        assert_eq!(super::idle(root.path(), &mut known)[0].bytes, 1000);
        // Taken and another worktree parked under the same name: measured again.
        let parked = root.path().join("parked");
        std::fs::create_dir_all(&parked).unwrap();
        std::fs::write(parked.join("c.txt"), vec![b'c'; 300]).unwrap();
        std::fs::remove_dir_all(&entry).unwrap();
        std::fs::rename(&parked, &entry).unwrap();
        assert_eq!(super::idle(root.path(), &mut known)[0].bytes, 300);
        // Gone: forgotten.
        std::fs::remove_dir_all(&entry).unwrap();
        assert!(super::idle(root.path(), &mut known).is_empty());
        assert!(known.0.is_empty());
    }

    #[test]
    fn nothing_goes_within_the_bound() {
        let plan = plan(vec![mirror("a", 10, 5, 1)], vec![idle("a", 1, 10)], 20);
        assert!(plan.is_empty());
    }

    #[test]
    fn idle_worktrees_of_old_repositories_go_before_any_mirror() {
        let mirrors = vec![mirror("new", 100, 1, 1), mirror("old", 100, 9, 1)];
        let idle = vec![idle("new", 1, 50), idle("old", 1, 50)];
        // 300 bytes, bound 260: the old repository's idle worktree is enough.
        assert_eq!(plan(mirrors, idle, 260), vec![idle_evict("old", 1)],);
    }

    #[test]
    fn a_mirror_goes_only_once_its_worktrees_are_all_idle_and_gone() {
        // `busy` has a running task's worktree besides its idle one.
        let mirrors = vec![mirror("busy", 100, 9, 2), mirror("done", 100, 5, 1)];
        let idle = vec![idle("busy", 1, 10), idle("done", 1, 10)];
        assert_eq!(
            plan(mirrors, idle, 50),
            vec![
                idle_evict("busy", 1),
                idle_evict("done", 1),
                Evict::Mirror("done".into(), PathBuf::from("mirrors/done.git")),
            ],
        );
    }
}
