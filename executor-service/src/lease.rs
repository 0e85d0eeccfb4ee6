//! Leases: which worker runs a task. A lease is `SET NX PX` with an owner token,
//! renewed as a heartbeat while the task runs and released by a token-checked script.
//! Each acquisition also yields a fencing token (a per-task counter) that every
//! checkpoint carries, so a worker that lost its lease can no longer write.

use crate::session::SessionStore;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// A held lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The task id.
    pub task_id: String,
    /// Unique owner token of this acquisition.
    pub owner: String,
    /// Fencing token: strictly greater than any earlier acquisition's.
    pub fencing_token: u64,
    /// Expiry the lease is (re)set to.
    pub ttl: Duration,
}

impl Lease {
    /// A new unique owner token for `worker_id`.
    pub fn new_owner(worker_id: &str) -> String {
        format!("{worker_id}:{}", uuid::Uuid::new_v4().simple())
    }
}

/// Renews a lease every third of its TTL until dropped or stopped. If a renewal finds
/// the lease gone, `lost()` turns true so the run stops at its next iteration boundary.
pub struct Heartbeat {
    lost: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Heartbeat {
    /// Starts renewing `lease` in the background. `on_beat` runs after each successful
    /// renewal (the queue uses it to keep its pending entry from looking abandoned).
    pub fn start<F>(store: Arc<dyn SessionStore>, lease: Lease, on_beat: F) -> Self
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
                match store.renew_lease(&lease).await {
                    Ok(true) => on_beat().await,
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
