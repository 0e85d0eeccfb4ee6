//! The queue worker pool. Per shard, one reader blocks on `XREADGROUP … BLOCK` (on a
//! connection of its own) while some worker is idle, reading up to its share of the idle
//! workers' count in one call, and one reclaimer sleeps until the
//! oldest pending entry of the shard could have outlived its lease, then claims it.
//! Deliveries go to `concurrency` workers through one channel, so capacity is shared
//! fairly by the shards. A worker runs a delivery on the engine, acknowledges it once its
//! task is final, and dead-letters it after `max_deliveries` deliveries in a row that
//! made no progress (no checkpoint after the previous delivery's start).

use crate::autonomous_loop::{AutonomousLoop, is_final, is_parked, status_of};
use crate::error::Error;
use crate::queue::Delivery;
use crate::run::RunOptions;
use crate::session::CreateOutcome;
use crate::session::active::leaves_task_resumable;
use crate::session::delivery::stalled_deliveries;
use prost::Message as _;
use std::sync::Arc;
use std::time::Duration;
use taskrouter_proto::v1::{SessionState, TaskStatus};
use tokio::sync::{Mutex, mpsc, watch};
use tracing::Instrument as _;

/// Starts the engine's queue workers (none when `concurrency` is 0) with a reader and a
/// reclaimer per shard; they stop when shutdown is triggered, after checkpointing and
/// releasing their tasks.
pub fn spawn_pool(engine: &Arc<AutonomousLoop>) -> tokio::task::JoinSet<()> {
    let mut set = tokio::task::JoinSet::new();
    if engine.settings().concurrency == 0 {
        return set;
    }
    let shards = engine.queue().shards();
    let (tx, rx) = mpsc::channel::<Delivery>(shards * 2);
    let rx = Arc::new(Mutex::new(rx));
    let (idle_tx, idle_rx) = watch::channel(0usize);
    let idle_tx = Arc::new(idle_tx);
    for n in 0..engine.settings().concurrency {
        let (engine, rx, idle) = (engine.clone(), rx.clone(), idle_tx.clone());
        set.spawn(async move { work(engine, n, rx, idle).await });
    }
    for shard in 0..shards {
        let (e, tx2, idle) = (engine.clone(), tx.clone(), idle_rx.clone());
        set.spawn(async move { read_shard(e, shard, tx2, idle).await });
        let (e, tx2, idle) = (engine.clone(), tx.clone(), idle_rx.clone());
        set.spawn(async move { reclaim_shard(e, shard, tx2, idle).await });
    }
    {
        let engine = engine.clone();
        set.spawn(async move { approval_timeouts(engine).await });
    }
    set
}

/// Applies approval gates' timeouts as they fall due (every replica scans; each timeout
/// applies once, see `decision`).
async fn approval_timeouts(engine: Arc<AutonomousLoop>) {
    let shutdown = engine.shutdown();
    while !shutdown.is_triggered() {
        if let Err(e) = crate::decision::apply_due_timeouts(&engine).await {
            tracing::warn!(error = %e, "approval timeout scan failed; retrying");
        }
        tokio::select! {
            _ = tokio::time::sleep(engine.settings().approval_scan_interval) => {}
            _ = shutdown.wait() => {}
        }
    }
}

/// One worker: takes deliveries off the channel and runs them.
async fn work(
    engine: Arc<AutonomousLoop>,
    n: usize,
    rx: Arc<Mutex<mpsc::Receiver<Delivery>>>,
    idle: Arc<watch::Sender<usize>>,
) {
    let shutdown = engine.shutdown().clone();
    loop {
        idle.send_modify(|c| *c += 1);
        let next = {
            let mut rx = rx.lock().await;
            tokio::select! {
                d = rx.recv() => d,
                _ = shutdown.wait() => None,
            }
        };
        idle.send_modify(|c| *c = c.saturating_sub(1));
        let Some(d) = next else {
            // Shutdown: entries read but not started go back for the next replica.
            while let Ok(d) = rx.lock().await.try_recv() {
                let _ = engine.queue().requeue(&d).await;
            }
            return;
        };
        if shutdown.is_triggered() {
            let _ = engine.queue().requeue(&d).await;
            continue;
        }
        let span = delivery_span(&d);
        tracing::trace!(worker = n, "delivery taken");
        handle(&engine, &d).instrument(span).await;
    }
}

/// Waits until some worker is idle (`false` on shutdown).
async fn idle_worker(engine: &AutonomousLoop, idle: &mut watch::Receiver<usize>) -> bool {
    let shutdown = engine.shutdown();
    tokio::select! {
        r = idle.wait_for(|c| *c > 0) => r.is_ok() && !shutdown.is_triggered(),
        _ = shutdown.wait() => false,
    }
}

/// Blocks on new entries of `shard` whenever a worker is idle.
async fn read_shard(
    engine: Arc<AutonomousLoop>,
    shard: usize,
    tx: mpsc::Sender<Delivery>,
    mut idle: watch::Receiver<usize>,
) {
    let consumer = engine.settings().worker_id.clone();
    let block = engine.settings().poll_interval;
    let mut backoff = Duration::from_millis(100);
    while idle_worker(&engine, &mut idle).await {
        // The idle workers' share of this shard, in one round trip (shared by the shards
        // so that one replica does not take more than it can start).
        let shards = engine.queue().shards().max(1);
        let want = (*idle.borrow()).div_ceil(shards).max(1);
        let read = tokio::select! {
            r = engine.queue().read_new(shard, &consumer, want, Some(block)) => r,
            _ = engine.shutdown().wait() => return,
        };
        match read {
            Ok(deliveries) => {
                backoff = Duration::from_millis(100);
                for d in deliveries {
                    if tx.send(d).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(shard, error = %e, "queue read failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = engine.shutdown().wait() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Claims entries of `shard` whose consumer died, as soon as they have been idle longer
/// than a lease, sleeping until then.
async fn reclaim_shard(
    engine: Arc<AutonomousLoop>,
    shard: usize,
    tx: mpsc::Sender<Delivery>,
    mut idle: watch::Receiver<usize>,
) {
    let queue = engine.queue().clone();
    let consumer = engine.settings().worker_id.clone();
    let min_idle = reclaim_after(engine.settings().lease_ttl);
    // An entry first seen this long after it went quiet is still claimed on time.
    let longest_sleep = engine.settings().lease_ttl / 2;
    while idle_worker(&engine, &mut idle).await {
        let wait = match queue.next_reclaim(shard, min_idle).await {
            Ok(Some(w)) if w.is_zero() => {
                match queue.reclaim(shard, &consumer, min_idle, 1).await {
                    Ok(got) => {
                        if !got.is_empty() {
                            crate::telemetry::reclaimed(got.len());
                        }
                        for d in got {
                            if tx.send(d).await.is_err() {
                                return;
                            }
                        }
                        Duration::ZERO
                    }
                    Err(e) => {
                        tracing::warn!(shard, error = %e, "queue reclaim failed; retrying");
                        Duration::from_secs(1)
                    }
                }
            }
            // A little past the moment, so the entry is surely idle long enough.
            Ok(Some(w)) => (w + Duration::from_millis(20)).min(longest_sleep),
            Ok(None) => longest_sleep,
            Err(e) => {
                tracing::warn!(shard, error = %e, "queue pending check failed; retrying");
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = engine.shutdown().wait() => return,
        }
    }
}

/// The span of one queued task's run, joined to the submitter's trace through the
/// `traceparent` the queue entry carries (also after a reclaim by another replica).
fn delivery_span(d: &Delivery) -> tracing::Span {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let span = tracing::info_span!(
        "task.run",
        task.id = %d.task_id,
        queue.entry_id = %d.entry_id,
        queue.delivery_count = d.delivery_count,
        queue.reclaimed = d.delivery_count > 1,
        trace_id = tracing::field::Empty,
    );
    let parent = service_kit::trace_context::from_traceparent(&d.traceparent);
    let remote = parent.span().span_context().clone();
    if remote.is_valid() {
        let _ = span.set_parent(parent);
    }
    let own = span.context().span().span_context().clone();
    let trace = if own.is_valid() { own } else { remote };
    if trace.is_valid() {
        span.record("trace_id", tracing::field::display(trace.trace_id()));
    }
    span
}

/// Runs one delivered entry and acknowledges it once the task is final.
async fn handle(engine: &AutonomousLoop, d: &Delivery) {
    let queue = engine.queue();
    if d.task_id.is_empty() {
        let _ = queue.ack(d).await;
        return;
    }
    let state = match engine.get(&d.task_id).await {
        Ok(s) => s,
        Err(Error::NotFound { .. }) => match adopt(engine, d).await {
            Some(s) => s,
            None => return,
        },
        Err(e @ Error::CorruptState { .. }) => {
            let _ = queue.dead_letter(d, &e.to_string()).await;
            crate::telemetry::dead_lettered();
            tracing::error!(task_id = %d.task_id, error = %e, "task state unreadable; dead-lettered");
            return;
        }
        Err(e) => {
            tracing::warn!(task_id = %d.task_id, error = %e, "cannot load task; leaving it for redelivery");
            return;
        }
    };
    // Parked tasks hold no queue entry: a decision or a resume continues them.
    if is_final(status_of(&state)) || is_parked(status_of(&state)) {
        let _ = queue.ack(d).await;
        return;
    }
    if u64::from(stalled_deliveries(&state)) >= engine.settings().max_deliveries
        && dead_letter(engine, d).await
    {
        return;
    }
    let opts = RunOptions {
        resume: true,
        ..RunOptions::default()
    };
    match engine
        .run_existing(&d.task_id, &opts, true, Some(d), Some(state))
        .await
    {
        Ok(r)
            if is_final(TaskStatus::try_from(r.status).unwrap_or_default())
                || is_parked(TaskStatus::try_from(r.status).unwrap_or_default()) =>
        {
            let _ = queue.ack(d).await;
        }
        Ok(_) => {}
        Err(Error::ShuttingDown) => {
            // Hand the task to another replica at once instead of waiting for the entry
            // to go idle.
            let _ = queue.requeue(d).await;
        }
        Err(Error::LeaseHeld { .. }) => {
            tracing::debug!(task_id = %d.task_id, "another worker holds the task");
        }
        Err(e) if leaves_task_resumable(&e) => {
            tracing::warn!(task_id = %d.task_id, error = %e, "run interrupted; the task stays resumable");
        }
        Err(e) => {
            tracing::error!(task_id = %d.task_id, error = %e, "run failed; leaving it for redelivery");
        }
    }
}

/// A queue entry whose task has no state: its submitter stopped between queueing and
/// storing. Stores the state the entry carries; without one, drops the entry.
async fn adopt(engine: &AutonomousLoop, d: &Delivery) -> Option<SessionState> {
    let initial = (!d.initial_state.is_empty())
        .then(|| SessionState::decode(d.initial_state.as_slice()).ok())
        .flatten()
        .filter(|s| s.task_id == d.task_id && s.task.is_some());
    let Some(initial) = initial else {
        tracing::warn!(task_id = %d.task_id, "queue entry for an unknown task; dropping it");
        let _ = engine.queue().ack(d).await;
        return None;
    };
    match engine.create_state(&initial).await {
        Ok(CreateOutcome::Created(s) | CreateOutcome::Existing(s)) => {
            tracing::info!(task_id = %d.task_id, "stored the state of a task queued by a submitter that stopped");
            Some(s)
        }
        Err(e) => {
            tracing::warn!(task_id = %d.task_id, error = %e, "cannot store a queued task's state; leaving it for redelivery");
            None
        }
    }
}

/// Fails the task as dead-lettered and moves its entry to the dead-letter stream, unless,
/// under the lease, it turns out to have made progress after all (then `false`: run it).
/// `true` also when another worker holds it or the store is away (nothing to do now).
async fn dead_letter(engine: &AutonomousLoop, d: &Delivery) -> bool {
    let mut reason = format!("delivered {} times", d.delivery_count);
    let mut stalled = 0;
    match engine.open_session(&d.task_id).await {
        Ok(Some(mut s)) => {
            stalled = stalled_deliveries(&s.state);
            if u64::from(stalled) < engine.settings().max_deliveries {
                s.release().await;
                return false;
            }
            reason = if s.state.last_error.is_empty() {
                format!("{stalled} deliveries in a row made no progress")
            } else {
                s.state.last_error.clone()
            };
            s.state.dead_lettered = true;
            s.state.delivery_count = d.delivery_count.min(u32::MAX as u64) as u32;
            s.state.stalled_deliveries = stalled;
            let msg =
                format!("dead-lettered after {stalled} deliveries without progress: {reason}");
            if let Err(e) = engine.finish(&mut s, TaskStatus::Failed, &msg).await {
                tracing::warn!(task_id = %d.task_id, error = %e, "could not mark a dead-lettered task failed");
            }
            s.release().await;
        }
        // Someone is running it right now: not dead.
        Ok(None) => return true,
        // The store is away: try again on a later delivery.
        Err(e) if e.is_transient() => {
            tracing::warn!(task_id = %d.task_id, error = %e, "cannot dead-letter now");
            return true;
        }
        // The state vanished or became unreadable under the lease: the entry goes anyway.
        Err(e) => {
            tracing::warn!(task_id = %d.task_id, error = %e, "cannot mark a dead-lettered task failed");
        }
    }
    if engine.queue().dead_letter(d, &reason).await.is_ok() {
        crate::telemetry::dead_lettered();
        tracing::error!(task_id = %d.task_id, deliveries = d.delivery_count, stalled, "task dead-lettered");
    }
    true
}

/// Idle time after which a pending entry is claimed: past its lease (heartbeats touch the
/// entry right after renewing the lease, so an entry this idle has an expired lease).
pub fn reclaim_after(lease_ttl: Duration) -> Duration {
    lease_ttl + Duration::from_millis(100)
}
