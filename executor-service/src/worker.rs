//! The queue worker pool: each worker reads deliveries from the shared work queue (new
//! entries, and entries another replica left idle past the lease expiry), runs them on
//! the engine, acknowledges them once their task is final, and dead-letters the ones
//! delivered too often.

use crate::autonomous_loop::{AutonomousLoop, is_final, is_parked, status_of};
use crate::error::Error;
use crate::queue::Delivery;
use crate::run::RunOptions;
use crate::session::active::leaves_task_resumable;
use std::sync::Arc;
use std::time::Duration;
use taskrouter_proto::v1::{SessionState, TaskStatus};
use tracing::Instrument as _;

/// Starts the engine's `concurrency` queue workers (none when it is 0); they stop when
/// shutdown is triggered, after checkpointing and releasing their tasks.
pub fn spawn_pool(engine: &Arc<AutonomousLoop>) -> tokio::task::JoinSet<()> {
    let mut set = tokio::task::JoinSet::new();
    for n in 0..engine.settings().concurrency {
        let engine = engine.clone();
        set.spawn(async move { work(engine, n).await });
    }
    if engine.settings().concurrency > 0 {
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

/// One worker's loop: reclaim or read an entry, run it, back off on queue errors.
async fn work(engine: Arc<AutonomousLoop>, n: usize) {
    let settings = engine.settings();
    let queue = engine.queue();
    let shutdown = engine.shutdown();
    let consumer = settings.worker_id.clone();
    let reclaim_every = (settings.lease_ttl / 2).max(Duration::from_millis(200));
    let mut last_reclaim = tokio::time::Instant::now() - reclaim_every;
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_triggered() {
        let next = async {
            if last_reclaim.elapsed() >= reclaim_every {
                last_reclaim = tokio::time::Instant::now();
                let min_idle = settings.lease_ttl + Duration::from_millis(500);
                let got = queue.reclaim(&consumer, min_idle, 1).await?;
                if !got.is_empty() {
                    crate::telemetry::reclaimed(got.len());
                    return Ok(got);
                }
            }
            queue.read_new(&consumer, 1).await
        }
        .await;
        match next {
            Ok(deliveries) if deliveries.is_empty() => {
                backoff = Duration::from_millis(100);
                tokio::select! {
                    _ = engine.submitted().notified() => {}
                    _ = tokio::time::sleep(settings.poll_interval) => {}
                    _ = shutdown.wait() => {}
                }
            }
            Ok(deliveries) => {
                backoff = Duration::from_millis(100);
                for d in deliveries {
                    let span = delivery_span(&d);
                    handle(&engine, &d).instrument(span).await;
                }
            }
            Err(e) => {
                tracing::warn!(worker = n, error = %e, "queue read failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.wait() => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
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
        let _ = queue.ack(&d.entry_id).await;
        return;
    }
    let state = match engine.get(&d.task_id).await {
        Ok(s) => s,
        Err(Error::NotFound { .. }) => {
            tracing::warn!(task_id = %d.task_id, "queue entry for an unknown task; dropping it");
            let _ = queue.ack(&d.entry_id).await;
            return;
        }
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
        let _ = queue.ack(&d.entry_id).await;
        return;
    }
    if d.delivery_count > engine.settings().max_deliveries {
        dead_letter(engine, d, &state).await;
        return;
    }
    let opts = RunOptions {
        resume: true,
        ..RunOptions::default()
    };
    match engine.run_existing(&d.task_id, &opts, true, Some(d)).await {
        Ok(r)
            if is_final(TaskStatus::try_from(r.status).unwrap_or_default())
                || is_parked(TaskStatus::try_from(r.status).unwrap_or_default()) =>
        {
            let _ = queue.ack(&d.entry_id).await;
        }
        Ok(_) => {}
        Err(Error::ShuttingDown) => {
            // Hand the task to another replica at once instead of waiting for
            // the entry to go idle: re-enqueue, then acknowledge this entry.
            if queue.enqueue(&d.task_id, &d.traceparent).await.is_ok() {
                let _ = queue.ack(&d.entry_id).await;
            }
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

/// Marks a task delivered too often FAILED (`dead_lettered`) and moves its entry to the
/// dead-letter stream; left alone while another worker runs it.
async fn dead_letter(engine: &AutonomousLoop, d: &Delivery, state: &SessionState) {
    let reason = if state.last_error.is_empty() {
        format!("delivered {} times without finishing", d.delivery_count)
    } else {
        state.last_error.clone()
    };
    match engine.open_session(&d.task_id).await {
        Ok(Some(mut s)) => {
            s.state.dead_lettered = true;
            s.state.delivery_count = d.delivery_count.min(u32::MAX as u64) as u32;
            let msg = format!(
                "dead-lettered after {} deliveries: {reason}",
                d.delivery_count
            );
            if let Err(e) = engine.finish(&mut s, TaskStatus::Failed, &msg).await {
                tracing::warn!(task_id = %d.task_id, error = %e, "could not mark a dead-lettered task failed");
            }
            s.release().await;
        }
        // Someone is running it right now: not dead.
        Ok(None) => return,
        // The store is away: try again on a later delivery.
        Err(e) if e.is_transient() => {
            tracing::warn!(task_id = %d.task_id, error = %e, "cannot dead-letter now");
            return;
        }
        // The state vanished or became unreadable under the lease: the entry goes anyway.
        Err(e) => {
            tracing::warn!(task_id = %d.task_id, error = %e, "cannot mark a dead-lettered task failed");
        }
    }
    if engine.queue().dead_letter(d, &reason).await.is_ok() {
        crate::telemetry::dead_lettered();
        tracing::error!(task_id = %d.task_id, deliveries = d.delivery_count, "task dead-lettered");
    }
}
