//! Small HTML helpers every dashboard page and section uses: escaping and how enum
//! values and times are written. It imports nothing else from `ui`, so the pages and
//! their sections can all depend on it without a circle.

use taskrouter_proto::v1::ReasonCode;

/// HTML-escapes text for element content and quoted attributes.
pub(super) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `full` without `prefix`.
pub(super) fn short(full: &str, prefix: &str) -> String {
    full.strip_prefix(prefix).unwrap_or(full).to_string()
}

/// A reason code without its enum prefix.
pub(super) fn reason(v: i32) -> String {
    short(
        ReasonCode::try_from(v).unwrap_or_default().as_str_name(),
        "REASON_CODE_",
    )
}

/// A timestamp as RFC 3339 seconds, or `-`.
pub(super) fn time(t: &Option<prost_types::Timestamp>) -> String {
    t.and_then(|t| std::time::SystemTime::try_from(t).ok())
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_else(|| "-".into())
}
