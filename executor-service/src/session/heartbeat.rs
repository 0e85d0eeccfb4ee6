//! The heartbeat that keeps a held lease alive while its task runs.

use super::{Lease, SessionStore};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// Renews a lease every third of its TTL until dropped or stopped. If a renewal finds
/// the lease gone, `lost()` turns true so the run stops at its next iteration boundary.
pub struct Heartbeat {
    lost: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Heartbeat {
    /// Starts renewing `lease` in the background. `on_beat` runs after each successful
    /// renewal (the queue uses it to keep its pending entry from looking abandoned).
    /// Once `released` turns true (the run gave the lease up itself) it stops quietly.
    pub fn start<F>(
        store: Arc<dyn SessionStore>,
        lease: Lease,
        released: Arc<AtomicBool>,
        on_beat: F,
    ) -> Self
    where
        F: Fn() -> futures::future::BoxFuture<'static, ()> + Send + Sync + 'static,
    {
        let (tx, rx) = watch::channel(false);
        let period = (lease.ttl / 3).max(Duration::from_millis(50));
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                if released.load(Ordering::Acquire) {
                    return;
                }
                match store.renew_lease(&lease).await {
                    Ok(true) => on_beat().await,
                    Ok(false) if released.load(Ordering::Acquire) => return,
                    Ok(false) => {
                        tracing::warn!(task_id = %lease.task_id, "lease lost; stopping at the next iteration boundary");
                        let _ = tx.send(true);
                        return;
                    }
                    // Redis unreachable: keep trying; if the lease expires meanwhile the
                    // next checkpoint is rejected by its fencing check anyway.
                    Err(e) => {
                        tracing::warn!(task_id = %lease.task_id, error = %e, "lease renewal failed; retrying")
                    }
                }
            }
        });
        Self { lost: rx, task }
    }

    /// Whether the lease was found taken by someone else.
    pub fn lost(&self) -> bool {
        *self.lost.borrow()
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.task.abort();
    }
}
