//! Redaction of credentials in URLs (`redis://:password@host`), for anything that may
//! echo a configured URL: error messages, logs, `--check-config` output.

use std::borrow::Cow;

/// What replaces a redacted password.
pub const MASK: &str = "***";

/// `url` with the password of its userinfo replaced by [`MASK`] (the whole userinfo when
/// it has no `:`, since some services take a token as the user name).
pub fn url(url: &str) -> Cow<'_, str> {
    if url.contains('@') {
        Cow::Owned(passwords_in(url))
    } else {
        Cow::Borrowed(url)
    }
}

/// `text` with the userinfo password of every `scheme://user:password@host` in it
/// replaced by [`MASK`]. Errs on the side of hiding: the userinfo ends at the last `@`
/// before the next whitespace or quote, so an unencoded `/` or `@` in a password does
/// not leak its tail.
pub fn passwords_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`'))
            .unwrap_or(tail.len());
        let token = &tail[..end];
        match token.rfind('@') {
            Some(at) => {
                let userinfo = &token[..at];
                if let Some((user, _)) = userinfo.split_once(':') {
                    out.push_str(user);
                    out.push(':');
                }
                out.push_str(MASK);
                out.push_str(&token[at..]);
            }
            None => out.push_str(token),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            url("redis://:s3cret@127.0.0.1:6379/0"),
            "redis://:***@127.0.0.1:6379/0"
        );
        assert_eq!(
            url("rediss://app:s3cret@redis.svc:6380/"),
            "rediss://app:***@redis.svc:6380/"
        );
        assert_eq!(url("https://tok3n@agent:443"), "https://***@agent:443");
        assert_eq!(url("http://router:50051"), "http://router:50051");
    }

    #[test]
    fn odd_passwords_do_not_leak() {
        for u in [
            "redis://:pa/ss@host:1/",
            "redis://:p@ss@host:1/",
            "redis://u:p:a:s:s@host",
        ] {
            let r = url(u);
            assert!(!r.contains("ss"), "{r}");
            assert!(r.ends_with("host:1/") || r.ends_with("host"), "{r}");
        }
    }

    #[test]
    fn urls_inside_messages_are_masked() {
        let msg =
            "cannot connect to redis://:s3cret@10.0.0.1:6379/ (refused); also \"rediss://x:y@h\"";
        let r = passwords_in(msg);
        assert!(!r.contains("s3cret") && !r.contains(":y@"), "{r}");
        assert!(r.starts_with("cannot connect to redis://:***@10.0.0.1:6379/ (refused)"));
        assert_eq!(passwords_in("no urls here"), "no urls here");
    }
}
