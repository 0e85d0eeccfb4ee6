//! Branch names and directory names for task ids, roles and repositories.
//!
//! A task's branch is `<prefix><task>`, a specialist's `<prefix><task>--<role>` (git
//! cannot hold both `a` and `a/b` as branches). Task ids are printable ASCII but not
//! every one is a valid ref name component, so ids and roles are encoded reversibly:
//!
//! - ASCII letters and digits are kept;
//! - `-` is kept unless it is the first or last character or follows another `-`
//!   (so an encoded name never contains `--`, and the first `--` in a branch name is
//!   the task/role separator);
//! - every other byte, and `_` itself, becomes `_` followed by two lowercase hex digits
//!   (`.` is `_2e`, `/` is `_2f`, `_` is `_5f`).
//!
//! So `task-42` stays `task-42`, `fix.login` becomes `fix_2elogin` and `a--b` becomes
//! `a-_2db`. The same encoding names directories under `--workspace-root`.

/// Longest encoded component: ref files live on file systems with 255-byte names.
pub const MAX_COMPONENT_BYTES: usize = 200;

/// Separator between the task and the role in a specialist's branch.
pub const ROLE_SEPARATOR: &str = "--";

/// `raw` encoded as one ref name (and file name) component; see the module docs.
pub fn encode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    for (i, &b) in bytes.iter().enumerate() {
        let keep = b.is_ascii_alphanumeric()
            || (b == b'-' && i > 0 && i + 1 < bytes.len() && bytes[i - 1] != b'-');
        if keep {
            out.push(b as char);
        } else {
            out.push('_');
            out.push_str(&format!("{b:02x}"));
        }
    }
    out
}

/// The inverse of [`encode`]; `None` when `encoded` is not exactly what [`encode`]
/// makes of some name (so no two branch names decode to the same task).
pub fn decode(encoded: &str) -> Option<String> {
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'_' {
            let hex = encoded.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let raw = String::from_utf8(out).ok()?;
    // `from_str_radix` also takes `+f` and `F`, and `_61` or an edge `-` would decode
    // too: only the canonical spelling names the task.
    (encode(&raw) == encoded).then_some(raw)
}

/// Checks that `raw` encodes to a component short enough for a ref file name.
pub fn check_length(what: &str, raw: &str) -> Result<(), String> {
    let len = encode(raw).len();
    if len > MAX_COMPONENT_BYTES {
        Err(format!(
            "{what} encodes to {len} bytes as a branch name component; at most {MAX_COMPONENT_BYTES} fit"
        ))
    } else {
        Ok(())
    }
}

/// The task's branch: `<prefix><task>`.
pub fn task_branch(prefix: &str, task_id: &str) -> String {
    format!("{prefix}{}", encode(task_id))
}

/// A specialist's branch: `<prefix><task>--<role>`.
pub fn role_branch(prefix: &str, task_id: &str, role: &str) -> String {
    format!(
        "{prefix}{}{ROLE_SEPARATOR}{}",
        encode(task_id),
        encode(role)
    )
}

/// Splits a branch made by [`task_branch`] or [`role_branch`] back into the task id and
/// the role (`None` for a task branch).
pub fn parse_branch(prefix: &str, branch: &str) -> Option<(String, Option<String>)> {
    let rest = branch.strip_prefix(prefix)?;
    match rest.split_once(ROLE_SEPARATOR) {
        Some((task, role)) => Some((decode(task)?, Some(decode(role)?))),
        None => Some((decode(rest)?, None)),
    }
}

/// Checks a repository name before it is put into the remote template and used as a
/// directory: `[A-Za-z0-9._/-]`, no empty, `.` or `..` segment, not starting with `-`.
pub fn check_repo_name(repo: &str) -> Result<(), String> {
    if repo.is_empty() {
        return Err("must not be empty".into());
    }
    if repo.starts_with('-') {
        return Err("must not start with '-'".into());
    }
    if !repo
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-'))
    {
        return Err("may contain only letters, digits, '.', '_', '/' and '-'".into());
    }
    if repo
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err("must not have an empty, '.' or '..' path segment".into());
    }
    check_length("the repository name", repo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips_and_is_a_valid_component() {
        for raw in [
            "task-42",
            "fix.login",
            "a--b",
            "-lead",
            "trail-",
            "x/y",
            "under_score",
            "a..b.lock",
            "@{x}~^:?*[\\",
            "ünï",
            "---",
        ] {
            let enc = encode(raw);
            assert_eq!(decode(&enc).as_deref(), Some(raw), "{raw} -> {enc}");
            assert!(!enc.contains("--"), "{enc}");
            assert!(!enc.starts_with('-') && !enc.ends_with('-'), "{enc}");
            assert!(
                enc.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{enc}"
            );
        }
        assert_eq!(encode("task-42"), "task-42");
        assert_eq!(encode("fix.login"), "fix_2elogin");
        assert_eq!(encode("a--b"), "a-_2db");
    }

    #[test]
    fn only_the_canonical_encoding_decodes() {
        for other in [
            "_+f", "_2F", "_61", "-a", "a-", "a--b", "_", "_2", "_zz", "a.b",
        ] {
            assert_eq!(decode(other), None, "{other}");
        }
        assert_eq!(decode("a-_2db").as_deref(), Some("a--b"));
    }

    #[test]
    fn branches_parse_back() {
        let p = "taskrouter/";
        assert_eq!(task_branch(p, "t-1"), "taskrouter/t-1");
        assert_eq!(role_branch(p, "t-1", "backend"), "taskrouter/t-1--backend");
        for (task, role) in [("t-", Some("r")), ("a--b", Some("--c")), ("x.y", None)] {
            let b = match role {
                Some(r) => role_branch(p, task, r),
                None => task_branch(p, task),
            };
            assert_eq!(
                parse_branch(p, &b),
                Some((task.to_string(), role.map(str::to_string))),
                "{b}"
            );
        }
    }

    #[test]
    fn repo_names_are_checked() {
        for ok in ["app", "org/app", "a.b_c-d"] {
            assert!(check_repo_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", "a b", "../x", "a//b", "a/./b", "x?y", "a/"] {
            assert!(check_repo_name(bad).is_err(), "{bad}");
        }
        assert!(check_length("task id", &".".repeat(100)).is_err());
    }
}
