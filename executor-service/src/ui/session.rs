//! The dashboard's login cookie: an expiry signed with HMAC-SHA256 under the store's
//! shared secret, so every replica accepts it and nobody can mint one without logging in.

use axum::http::{HeaderMap, header};
use ring::hmac;
use std::time::{SystemTime, UNIX_EPOCH};

/// Cookie name.
const NAME: &str = "taskrouter_ui";
/// How long a login lasts (seconds).
pub const LIFETIME_SECS: u64 = 12 * 3600;
/// Domain separation from page tokens, which use the same secret.
const CONTEXT: &[u8] = b"taskrouter-ui-session-v1";
/// A `Set-Cookie` value that removes the cookie.
pub const CLEARED: &str = "taskrouter_ui=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn sign(key: &[u8], expires: u64) -> hmac::Tag {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut msg = CONTEXT.to_vec();
    msg.extend_from_slice(&expires.to_be_bytes());
    hmac::sign(&key, &msg)
}

/// The `Set-Cookie` value of a fresh login (`Secure` when served over HTTPS).
pub fn cookie(key: &[u8], secure: bool) -> String {
    let expires = now() + LIFETIME_SECS;
    let mut value = expires.to_be_bytes().to_vec();
    value.extend_from_slice(sign(key, expires).as_ref());
    format!(
        "{NAME}={}; Path=/; Max-Age={LIFETIME_SECS}; HttpOnly; SameSite=Strict{}",
        hex::encode(value),
        if secure { "; Secure" } else { "" }
    )
}

/// Whether the request carries a valid, unexpired login cookie.
pub fn valid(key: &[u8], headers: &HeaderMap) -> bool {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| *name == NAME)
        .any(|(_, value)| check(key, value))
}

fn check(key: &[u8], value: &str) -> bool {
    let Ok(raw) = hex::decode(value) else {
        return false;
    };
    if raw.len() != 8 + 32 {
        return false;
    }
    let (exp, tag) = raw.split_at(8);
    let expires = u64::from_be_bytes(exp.try_into().unwrap_or_default());
    let mut msg = CONTEXT.to_vec();
    msg.extend_from_slice(exp);
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    hmac::verify(&key, &msg, tag).is_ok() && expires > now()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(cookie: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_str(cookie).unwrap());
        h
    }

    #[test]
    fn a_signed_cookie_is_accepted_and_a_tampered_or_foreign_one_is_not() {
        let set = cookie(b"0123456789abcdef0123", false);
        let value = set.split(';').next().unwrap();
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"));
        assert!(valid(
            b"0123456789abcdef0123",
            &headers(&format!("a=b; {value}"))
        ));
        assert!(!valid(b"another key 0123456789", &headers(value)));
        let mut tampered = value.to_string();
        let last = tampered.pop().unwrap();
        tampered.push(if last == '0' { '1' } else { '0' });
        assert!(!valid(b"0123456789abcdef0123", &headers(&tampered)));
        assert!(!valid(
            b"0123456789abcdef0123",
            &headers("taskrouter_ui=zz")
        ));
        assert!(cookie(b"k", true).ends_with("; Secure"));
    }
}
