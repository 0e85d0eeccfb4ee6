//! Parsers of git's machine-readable output (`ls-remote`, `push --porcelain`,
//! `diff -z`), kept apart from the processes that produce it so they are tested and
//! fuzzed without git.

/// The object id `git ls-remote origin <full_ref>` reports for exactly `full_ref`:
/// the line `<oid>\t<full_ref>` whose id is non-empty hex. `ls-remote` matches patterns
/// by their tail, so other refs (`refs/heads/x/<full_ref>`) may be listed too.
pub fn ls_remote_tip(output: &str, full_ref: &str) -> Option<String> {
    output.lines().find_map(|line| {
        let (oid, name) = line.split_once('\t')?;
        let is_oid = !oid.is_empty() && oid.bytes().all(|b| b.is_ascii_hexdigit());
        (name == full_ref && is_oid).then(|| oid.to_string())
    })
}

/// Whether a failed `git push --porcelain` was refused by the remote's compare-and-swap
/// (`!\t<src>:<dst>\t[rejected] (stale info)` and similar) rather than failing to run.
pub fn push_rejected(stdout: &str, stderr: &str) -> bool {
    stdout.lines().any(|l| l.starts_with('!'))
        && (stdout.contains("stale info")
            || stdout.contains("rejected")
            || stdout.contains("fetch first")
            || stdout.contains("non-fast-forward")
            || stdout.contains("already exists")
            || stderr.contains("stale info"))
}

/// The ids `git rev-list --objects --missing=print` reports missing: the lines `?<oid>`
/// whose id is non-empty hex (present objects are `<oid>` or `<oid> <path>`).
pub fn missing_objects(output: &str) -> Vec<&str> {
    output
        .lines()
        .filter_map(|line| line.strip_prefix('?'))
        .map(str::trim_end)
        .filter(|oid| !oid.is_empty() && oid.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect()
}

/// The paths of NUL-separated output (`git diff --name-only -z`), without empty entries.
pub fn nul_separated(output: &str) -> Vec<String> {
    output
        .split('\0')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ls_remote_reports_only_the_exact_ref_with_a_hex_id() {
        let full = "refs/heads/taskrouter/t-1";
        let out = "1111111111111111111111111111111111111111\trefs/heads/x/refs/heads/taskrouter/t-1\n\
                   abcdef0123456789abcdef0123456789abcdef01\trefs/heads/taskrouter/t-1";
        assert_eq!(
            ls_remote_tip(out, full).as_deref(),
            Some("abcdef0123456789abcdef0123456789abcdef01")
        );
        assert_eq!(ls_remote_tip("", full), None);
        // No id before the tab, or something that is not one: not a tip.
        assert_eq!(ls_remote_tip(&format!("\t{full}"), full), None);
        assert_eq!(ls_remote_tip(&format!("warning: x\t{full}"), full), None);
    }

    #[test]
    fn push_porcelain_tells_a_refused_lease_from_a_failure() {
        let stale = "To file:///r.git\n!\trefs/heads/a:refs/heads/a\t[rejected] (stale info)\nDone";
        assert!(push_rejected(stale, ""));
        assert!(!push_rejected("", "fatal: could not read from remote"));
        assert!(!push_rejected("rejected", ""), "no `!` status line");
    }

    #[test]
    fn missing_objects_are_the_question_marked_hex_ids() {
        let out = "1111111111111111111111111111111111111111\n\
                   2222222222222222222222222222222222222222 dir/a.txt\n\
                   ?3333333333333333333333333333333333333333\n\
                   ?not-hex\n?\n";
        assert_eq!(
            missing_objects(out),
            vec!["3333333333333333333333333333333333333333"]
        );
        assert!(missing_objects("").is_empty());
    }

    #[test]
    fn nul_separated_paths_drop_empty_entries() {
        assert_eq!(nul_separated("a\0b c\0\0"), vec!["a", "b c"]);
        assert!(nul_separated("").is_empty());
    }
}
