//! The proto names of enum values, for text and JSON output and for error sentences.

use taskrouter_proto::v1::{
    Complexity, ExecutionPath, FallbackCause, ReasonCode, RoutingDecision, SpecialistStatus,
    TaskStatus, TeamPhase,
};

macro_rules! enum_names {
    ($($fn:ident, $short:ident: $ty:ty, $prefix:literal;)*) => {$(
        /// The proto name of the value (`UNKNOWN(n)` for a value this build does not know).
        pub fn $fn(v: i32) -> String {
            <$ty>::try_from(v)
                .map(|e| e.as_str_name().to_string())
                .unwrap_or_else(|_| format!("UNKNOWN({v})"))
        }
        /// The proto name without its enum prefix, for humans.
        pub fn $short(v: i32) -> String {
            let full = $fn(v);
            full.strip_prefix($prefix).map(str::to_string).unwrap_or(full)
        }
    )*};
}

enum_names! {
    status_name, status_short: TaskStatus, "TASK_STATUS_";
    decision_name, decision_short: RoutingDecision, "ROUTING_DECISION_";
    path_name, path_short: ExecutionPath, "EXECUTION_PATH_";
    phase_name, phase_short: TeamPhase, "TEAM_PHASE_";
    cause_name, cause_short: FallbackCause, "FALLBACK_CAUSE_";
    reason_name, reason_short: ReasonCode, "REASON_CODE_";
    complexity_name, complexity_short: Complexity, "COMPLEXITY_";
    specialist_name, specialist_short: SpecialistStatus, "SPECIALIST_STATUS_";
}
