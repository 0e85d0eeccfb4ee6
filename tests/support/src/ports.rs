//! Free ports and TCP readiness.

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A currently free TCP port on 127.0.0.1, never handed out twice by this process.
pub fn free_port() -> u16 {
    // Remembering given ports stops two tests in this binary from racing for the same one.
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let listener =
            TcpListener::bind("127.0.0.1:0").expect("cannot bind 127.0.0.1:0 to find a free port");
        let port = listener
            .local_addr()
            .expect("local_addr of a bound listener")
            .port();
        if port != 6379 && given.insert(port) {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 after 1000 attempts");
}

/// Polls until a TCP connection to `addr` succeeds; false if `timeout` passes first.
pub async fn wait_for_tcp(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Ok(Ok(_)) = tokio::time::timeout(left, tokio::net::TcpStream::connect(addr)).await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
