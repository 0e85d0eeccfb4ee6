//! Sampling of the repetitive decision lines (`--log-decisions-every N`).
//!
//! A decision line is an event with a `decision` field: the router's `task routed` per
//! `Route` and the executor's `task routed` per task. At full load they are most of the
//! log; writing one in N keeps the log readable and cheap while metrics (and traces)
//! still count every decision. Every other line is untouched.

use std::sync::atomic::{AtomicU64, Ordering};
use tracing::Metadata;
use tracing::level_filters::LevelFilter;
use tracing::subscriber::Interest;
use tracing_subscriber::layer::{Context, Filter};

/// The field that marks a decision line.
const DECISION_FIELD: &str = "decision";

/// Whether `meta` is a decision line (an event with a `decision` field).
pub fn is_decision_line(meta: &Metadata<'_>) -> bool {
    meta.is_event() && meta.fields().field(DECISION_FIELD).is_some()
}

/// A per-layer filter writing one in `every` decision lines (all for 1, none for 0).
#[derive(Debug)]
pub struct DecisionSampler {
    every: u64,
    seen: AtomicU64,
}

impl DecisionSampler {
    /// Writes one in `every` decision lines.
    pub fn new(every: u64) -> Self {
        Self {
            every,
            seen: AtomicU64::new(0),
        }
    }

    /// Whether this decision line is written; counts it.
    fn keep(&self) -> bool {
        match self.every {
            0 => false,
            1 => true,
            n => self.seen.fetch_add(1, Ordering::Relaxed).is_multiple_of(n),
        }
    }
}

impl<S> Filter<S> for DecisionSampler {
    fn enabled(&self, meta: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        !is_decision_line(meta) || self.keep()
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        // Every level passes (only decision lines are thinned); without a hint, the
        // combined log filter would have none either and every trace-level call site in
        // the process would be asked per call.
        Some(LevelFilter::TRACE)
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        // Only decision call sites need asking per event.
        if !is_decision_line(meta) || self.every == 1 {
            Interest::always()
        } else if self.every == 0 {
            Interest::never()
        } else {
            Interest::sometimes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_capture::Buffer;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::{Layer as _, fmt};

    fn lines_written(every: u64) -> (usize, usize) {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let layer = fmt::layer()
            .with_writer(move || writer.clone())
            .with_filter(DecisionSampler::new(every));
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..100 {
                tracing::info!(task.id = i, decision = "single", "task routed");
            }
            for _ in 0..3 {
                tracing::warn!("store unreachable");
            }
        });
        let text = buffer.text();
        let decisions = text.lines().filter(|l| l.contains("task routed")).count();
        let others = text.lines().filter(|l| l.contains("unreachable")).count();
        (decisions, others)
    }

    #[test]
    fn one_in_n_decision_lines_and_every_other_line() {
        assert_eq!(lines_written(1), (100, 3));
        assert_eq!(lines_written(10), (10, 3));
        assert_eq!(lines_written(0), (0, 3));
    }
}
