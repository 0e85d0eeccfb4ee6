//! Shadow evaluation: what a candidate policy would decide, compared with the live one.
//!
//! The router evaluates the shadow policy on every Route but never acts on it; the
//! comparison is counted so an operator sees how often, and why, the candidate disagrees
//! before it goes live. The service records the metrics named here.

use taskrouter_proto::v1::RoutingAnalysis;

/// Counter of live/shadow decision pairs, labelled `live` and `shadow` (decision labels).
pub const SHADOW_DECISIONS_METRIC: &str = "taskrouter_shadow_decisions_total";

/// Counter of reasons given by only one of the two policies, labelled `reason` and
/// `side` (`live_only` or `shadow_only`).
pub const SHADOW_REASON_DIFFERENCES_METRIC: &str = "taskrouter_shadow_reason_differences_total";

/// Reason codes present on one side only, with the side that gave them.
pub fn differing_reasons(
    live: &RoutingAnalysis,
    shadow: &RoutingAnalysis,
) -> Vec<(i32, &'static str)> {
    let has = |a: &RoutingAnalysis, code: i32| a.reasons.iter().any(|r| r.code == code);
    let mut out = Vec::new();
    for r in &live.reasons {
        if !has(shadow, r.code) {
            out.push((r.code, "live_only"));
        }
    }
    for r in &shadow.reasons {
        if !has(live, r.code) {
            out.push((r.code, "shadow_only"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskrouter_proto::v1::{ReasonCode, RoutingReason};

    fn with(codes: &[ReasonCode]) -> RoutingAnalysis {
        RoutingAnalysis {
            reasons: codes
                .iter()
                .map(|c| RoutingReason {
                    code: *c as i32,
                    message: String::new(),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn only_reasons_missing_on_the_other_side_differ() {
        let live = with(&[ReasonCode::HighValue, ReasonCode::OutsideRollout]);
        let shadow = with(&[ReasonCode::HighValue, ReasonCode::Deployment]);
        assert_eq!(
            differing_reasons(&live, &shadow),
            [
                (ReasonCode::OutsideRollout as i32, "live_only"),
                (ReasonCode::Deployment as i32, "shadow_only"),
            ]
        );
        assert!(differing_reasons(&live, &live).is_empty());
    }
}
