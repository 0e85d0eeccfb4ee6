//! Serving an already-bound listener until shutdown, then draining for a bounded time.

use crate::Shutdown;
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

/// The connections of `listener`, with Nagle off. Tonic applies the builder's
/// `tcp_nodelay` only to listeners it binds itself; an accepted socket with Nagle on
/// holds small responses back ~40 ms.
pub fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Runs `server` (a tonic serve future that stops accepting once `shutdown` fires) and,
/// after `shutdown`, lets its open connections finish for at most `drain_timeout`.
pub async fn bounded<F, E>(server: F, shutdown: &Shutdown, drain_timeout: Duration) -> Result<(), E>
where
    F: Future<Output = Result<(), E>>,
{
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => return r,
        _ = shutdown.wait() => {}
    }
    // Draining: clients that keep connections open get `drain_timeout`, not forever.
    match tokio::time::timeout(drain_timeout, &mut server).await {
        Ok(r) => r,
        Err(_) => {
            tracing::warn!(
                ?drain_timeout,
                "connections still open after the drain timeout; closing them"
            );
            Ok(())
        }
    }
}
