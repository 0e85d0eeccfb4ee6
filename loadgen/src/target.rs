//! Where load may go: this machine's loopback addresses only.

use crate::error::{Error, Result};
use std::net::IpAddr;
use tonic::codegen::http::Uri;

/// Refuses (usage error, exit 2) any `address` whose host is not a loopback address
/// (127.0.0.0/8, ::1) or `localhost`; `flag` names the setting in the message.
///
/// Accepts `http://host:port`, `host:port` and URLs with credentials such as
/// `redis://:password@127.0.0.1:6379/0`; the message never repeats the address, which
/// may hold a password.
pub fn require_loopback(flag: &str, address: &str) -> Result<()> {
    match host_of(address) {
        Some(host) if is_loopback(&host) => Ok(()),
        Some(host) => Err(Error::Usage(format!(
            "{flag}: bench sends load only to loopback addresses (127.0.0.0/8, ::1, localhost), not to {host}"
        ))),
        None => Err(Error::Usage(format!(
            "{flag}: not an address with a host (e.g. http://127.0.0.1:50051)"
        ))),
    }
}

/// The host of `address`, without IPv6 brackets.
fn host_of(address: &str) -> Option<String> {
    let uri: Uri = address.trim().parse().ok()?;
    let host = uri.host()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty()).then(|| host.to_string())
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses_pass() {
        for a in [
            "http://127.0.0.1:50051",
            "127.0.0.1:50051",
            "http://127.3.4.5:1",
            "http://localhost:50051",
            "http://LOCALHOST:1",
            "http://[::1]:50051",
            "redis://127.0.0.1:6379/",
            "redis://:secret@127.0.0.1:6379/0",
            "redis://user:secret@localhost:6379",
        ] {
            assert!(require_loopback("--x", a).is_ok(), "{a}");
        }
    }

    #[test]
    fn everything_else_is_a_usage_error_that_hides_credentials() {
        for a in [
            "http://10.0.0.5:50051",
            "http://192.168.1.2:50051",
            "http://8.8.8.8:53",
            "http://example.com:80",
            "http://127.0.0.1.example.com:80",
            "http://[::2]:1",
            "redis://:secret@10.1.1.1:6379/",
            "",
            "not an address",
        ] {
            let e = require_loopback("--x", a).unwrap_err();
            assert!(matches!(e, Error::Usage(_)), "{a}");
            assert!(!e.to_string().contains("secret"), "{e}");
        }
    }
}
