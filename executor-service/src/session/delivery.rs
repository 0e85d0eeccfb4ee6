//! Delivery progress in the SessionState: whether a queue delivery made progress, which
//! decides dead-lettering (only deliveries without a checkpoint after their start count).

use taskrouter_proto::v1::SessionState;

/// Whether a checkpoint was written after the latest delivery's start (or none started).
pub fn made_progress(state: &SessionState) -> bool {
    state.version > state.delivery_start_version
}

/// The stalled-delivery count a new delivery of `state` brings: reset by progress,
/// otherwise one more.
pub fn stalled_deliveries(state: &SessionState) -> u32 {
    if made_progress(state) {
        0
    } else {
        state.stalled_deliveries.saturating_add(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(version: u64, start: u64, stalled: u32) -> SessionState {
        SessionState {
            version,
            delivery_start_version: start,
            stalled_deliveries: stalled,
            ..Default::default()
        }
    }

    #[test]
    fn only_deliveries_without_a_checkpoint_after_their_start_count() {
        // First delivery of a stored task: nothing started yet.
        assert_eq!(stalled_deliveries(&state(1, 0, 0)), 0);
        // The previous delivery wrote its start (version 5) and then iterations.
        assert_eq!(stalled_deliveries(&state(9, 5, 3)), 0);
        // It wrote its start and nothing else: one more without progress.
        assert_eq!(stalled_deliveries(&state(5, 5, 0)), 1);
        assert_eq!(stalled_deliveries(&state(5, 5, 4)), 5);
    }
}
