//! Server-sent events of one task, read from its progress-event stream (what `Watch`
//! reads), each followed by the task's current summary so the page can update in place.

use crate::autonomous_loop::AutonomousLoop;
use crate::task_list::summary;
use axum::response::sse::{Event, KeepAlive, Sse};
use serde_json::json;
use service_kit::Shutdown;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use taskrouter_proto::v1::{ProgressEvent, progress_event};
use tokio_stream::Stream;

/// How often the event stream is polled.
const POLL: Duration = Duration::from_millis(200);

fn name<T: Copy>(
    v: i32,
    f: impl Fn(i32) -> Option<T>,
    s: impl Fn(T) -> &'static str,
) -> &'static str {
    f(v).map_or("UNSPECIFIED", s)
}

/// The event as the page's script reads it: no outputs, no description.
fn event_json(e: &ProgressEvent) -> (&'static str, serde_json::Value) {
    use taskrouter_proto::v1::{TaskStatus, TeamPhase};
    match &e.kind {
        Some(progress_event::Kind::Iteration(it)) => {
            let r = it.record.clone().unwrap_or_default();
            (
                "iteration",
                json!({
                    "iteration": r.iteration,
                    "role": r.role,
                    "done": r.done,
                    "cost_usd": r.cost_usd,
                    "tokens_in": r.tokens_in,
                    "tokens_out": r.tokens_out,
                    "at_ms": crate::session::listing::ts_ms(r.at.as_ref()),
                    "worker_id": r.worker_id,
                    "iteration_count": it.iteration_count,
                }),
            )
        }
        Some(progress_event::Kind::Phase(p)) => (
            "phase",
            json!({ "phase": name(p.phase, |v| TeamPhase::try_from(v).ok(), |p| p.as_str_name()) }),
        ),
        Some(progress_event::Kind::Finished(f)) => (
            "finished",
            json!({ "status": name(f.status, |v| TaskStatus::try_from(v).ok(), |s| s.as_str_name()) }),
        ),
        Some(progress_event::Kind::Fallback(_)) => ("fallback", json!({})),
        // Governance events: the `state` event sent after them carries the new status
        // (an approver's comment is never sent).
        Some(progress_event::Kind::ApprovalRequested(_)) => ("approval", json!({})),
        Some(progress_event::Kind::ApprovalDecided(_)) => ("approval", json!({})),
        Some(progress_event::Kind::BudgetStopped(_)) => ("budget", json!({})),
        Some(progress_event::Kind::Routed(_)) => ("routed", json!({})),
        Some(progress_event::Kind::Submitted(_)) | None => ("submitted", json!({})),
    }
}

/// The stream for `task_id`, after event sequence `after`, until the task finishes, the
/// client goes away or the executor shuts down.
pub fn stream(
    engine: Arc<AutonomousLoop>,
    task_id: String,
    after: u64,
    shutdown: Shutdown,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
    tokio::spawn(async move {
        let mut cursor: Option<String> = None;
        let mut idle = 0u32;
        loop {
            let batch = engine
                .store()
                .events_after(&task_id, cursor.as_deref(), 100)
                .await;
            let Ok(events) = batch else { return };
            let mut finished = false;
            let mut sent = false;
            for stored in events {
                cursor = Some(stored.cursor);
                let seq = stored.event.sequence;
                if seq <= after {
                    continue;
                }
                finished |= matches!(stored.event.kind, Some(progress_event::Kind::Finished(_)));
                let (kind, data) = event_json(&stored.event);
                let ev = Event::default()
                    .id(seq.to_string())
                    .event(kind)
                    .data(data.to_string());
                if tx.send(ev).await.is_err() {
                    return;
                }
                sent = true;
            }
            if sent && let Ok(state) = engine.get(&task_id).await {
                let s = summary(&state, String::new());
                let data = json!({
                    "status": name(s.status, |v| taskrouter_proto::v1::TaskStatus::try_from(v).ok(), |s| s.as_str_name()),
                    "iteration_count": s.iteration_count,
                    "max_iterations": s.max_iterations,
                    "team_iterations": s.team_iterations,
                    "phase": name(s.phase, |v| taskrouter_proto::v1::TeamPhase::try_from(v).ok(), |p| p.as_str_name()),
                    "cost_usd": s.cost_usd,
                    "tokens_in": s.tokens_in,
                    "tokens_out": s.tokens_out,
                });
                if tx
                    .send(Event::default().event("state").data(data.to_string()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            // A finished task whose events were all seen (or expired) ends the stream.
            idle = if sent { 0 } else { idle + 1 };
            if !finished && idle.is_multiple_of(25) && idle > 0 {
                finished = engine.get(&task_id).await.is_ok_and(|s| {
                    crate::autonomous_loop::is_final(
                        taskrouter_proto::v1::TaskStatus::try_from(s.status).unwrap_or_default(),
                    )
                });
            }
            if finished {
                let _ = tx.send(Event::default().event("end").data("{}")).await;
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = tx.closed() => return,
                _ = shutdown.wait() => return,
            }
        }
    });
    let stream = tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), Ok);
    Sse::new(stream).keep_alive(KeepAlive::default())
}
