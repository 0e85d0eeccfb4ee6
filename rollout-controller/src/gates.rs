//! The gates a step must hold before the rollout advances, and their verdict.
//!
//! Each gate compares the team ("multi") path with the single path over the same window
//! and policy version: success rate, fallback rate, cost per completed task and median
//! duration (the plan's no-go criteria). A verdict needs at least `min_finished` finished
//! team-path tasks and one finished single-path task; until then the step holds.

use crate::outcomes::GroupStats;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Default most the team path's success rate may trail the single path's, in points.
pub const DEFAULT_MAX_SUCCESS_DROP_POINTS: f64 = 5.0;
/// Default highest share of team-path tasks that fell back.
pub const DEFAULT_MAX_FALLBACK_RATE: f64 = 0.10;
/// Default highest cost per completed team-path task, USD.
pub const DEFAULT_MAX_COST_PER_COMPLETED_USD: f64 = 5.0;
/// Default highest team-path median duration as a multiple of the single path's.
pub const DEFAULT_MAX_DURATION_RATIO: f64 = 3.0;
/// Default fewest finished team-path tasks before any verdict.
pub const DEFAULT_MIN_FINISHED: u64 = 20;

/// Gate thresholds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gates {
    /// Most the team path's success rate may trail the single path's, in points (0..=100).
    pub max_success_drop_points: f64,
    /// Highest fallback rate of the team path (0..=1).
    pub max_fallback_rate: f64,
    /// Highest cost per completed team-path task, USD.
    pub max_cost_per_completed_usd: f64,
    /// Highest team-path median duration as a multiple of the single path's.
    pub max_duration_ratio: f64,
    /// Fewest finished team-path tasks before a verdict.
    pub min_finished: u64,
}

impl Default for Gates {
    fn default() -> Self {
        Self {
            max_success_drop_points: DEFAULT_MAX_SUCCESS_DROP_POINTS,
            max_fallback_rate: DEFAULT_MAX_FALLBACK_RATE,
            max_cost_per_completed_usd: DEFAULT_MAX_COST_PER_COMPLETED_USD,
            max_duration_ratio: DEFAULT_MAX_DURATION_RATIO,
            min_finished: DEFAULT_MIN_FINISHED,
        }
    }
}

/// One gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Gate {
    /// Team-path success rate vs the single path's.
    SuccessRate,
    /// Team-path fallback rate.
    FallbackRate,
    /// Cost per completed team-path task.
    CostPerCompleted,
    /// Team-path median duration vs the single path's.
    Duration,
}

impl Gate {
    /// Name used in logs, events and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Gate::SuccessRate => "success_rate",
            Gate::FallbackRate => "fallback_rate",
            Gate::CostPerCompleted => "cost_per_completed",
            Gate::Duration => "duration",
        }
    }
}

impl fmt::Display for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the gates say about one window.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Every gate holds.
    Pass,
    /// Not enough data yet; the reason says what is missing.
    Insufficient(String),
    /// A gate failed; the detail gives observed and allowed values.
    Fail {
        /// The first failing gate.
        gate: Gate,
        /// Observed vs allowed, one line.
        detail: String,
    },
}

impl Gates {
    /// Checks that every threshold is in range; the error names the flag.
    pub fn validate(&self) -> Result<(), String> {
        let finite_nonneg = |v: f64| v.is_finite() && v >= 0.0;
        if !finite_nonneg(self.max_success_drop_points) || self.max_success_drop_points > 100.0 {
            return Err("--max-success-drop-points: must be between 0 and 100".into());
        }
        if !finite_nonneg(self.max_fallback_rate) || self.max_fallback_rate > 1.0 {
            return Err("--max-fallback-rate: must be between 0 and 1".into());
        }
        if !finite_nonneg(self.max_cost_per_completed_usd) {
            return Err("--max-cost-per-completed-usd: must be finite and >= 0".into());
        }
        if !finite_nonneg(self.max_duration_ratio) || self.max_duration_ratio == 0.0 {
            return Err("--max-duration-ratio: must be finite and > 0".into());
        }
        if self.min_finished == 0 {
            return Err("--min-finished: must be at least 1".into());
        }
        Ok(())
    }

    /// The verdict on team-path (`multi`) and single-path (`single`) outcomes of one window.
    pub fn judge(&self, multi: &GroupStats, single: &GroupStats) -> Verdict {
        if multi.finished < self.min_finished {
            return Verdict::Insufficient(format!(
                "{} of {} finished team-path tasks",
                multi.finished, self.min_finished
            ));
        }
        // Gates on the team path alone first: they need no comparison group.
        let fallback = multi.fallback_rate();
        if fallback > self.max_fallback_rate {
            return fail(
                Gate::FallbackRate,
                format!(
                    "fallback rate {:.2} > {:.2} ({} of {} team-path tasks fell back)",
                    fallback, self.max_fallback_rate, multi.fell_back, multi.finished
                ),
            );
        }
        let cost = multi.cost_per_completed_usd();
        if cost > self.max_cost_per_completed_usd {
            return fail(
                Gate::CostPerCompleted,
                format!(
                    "cost per completed team-path task ${cost:.4} > ${:.4}",
                    self.max_cost_per_completed_usd
                ),
            );
        }
        if single.finished == 0 {
            return Verdict::Insufficient("no finished single-path task to compare with".into());
        }
        let drop = (single.success_rate() - multi.success_rate()) * 100.0;
        if drop > self.max_success_drop_points {
            return fail(
                Gate::SuccessRate,
                format!(
                    "team-path success {:.1}% trails single-path {:.1}% by {drop:.1} points > {:.1}",
                    multi.success_rate() * 100.0,
                    single.success_rate() * 100.0,
                    self.max_success_drop_points
                ),
            );
        }
        let (m, s) = (multi.median_duration_secs(), single.median_duration_secs());
        if m > self.max_duration_ratio * s {
            return fail(
                Gate::Duration,
                format!(
                    "team-path median {m:.3}s > {:.2} x single-path median {s:.3}s",
                    self.max_duration_ratio
                ),
            );
        }
        Verdict::Pass
    }
}

fn fail(gate: Gate, detail: String) -> Verdict {
    Verdict::Fail { gate, detail }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcomes::Outcome;
    use std::time::Duration;

    fn group(n: usize, completed: usize, fell_back: usize, cost: f64, secs: u64) -> GroupStats {
        let outcomes: Vec<Outcome> = (0..n)
            .map(|i| Outcome {
                task_id: format!("t{i}"),
                policy_version: "v".into(),
                multi: true,
                completed: i < completed,
                fell_back: i < fell_back,
                cost_usd: cost,
                duration: Duration::from_secs(secs),
            })
            .collect();
        GroupStats::of(&outcomes)
    }

    fn gates() -> Gates {
        Gates {
            min_finished: 4,
            ..Gates::default()
        }
    }

    #[test]
    fn a_healthy_window_passes() {
        assert_eq!(
            gates().judge(&group(10, 10, 0, 0.5, 20), &group(10, 10, 0, 0.1, 10)),
            Verdict::Pass
        );
    }

    #[test]
    fn too_few_tasks_or_no_single_path_gives_no_verdict() {
        let g = gates();
        assert!(matches!(
            g.judge(&group(3, 3, 0, 0.1, 1), &group(10, 10, 0, 0.1, 1)),
            Verdict::Insufficient(_)
        ));
        assert!(matches!(
            g.judge(&group(4, 4, 0, 0.1, 1), &GroupStats::default()),
            Verdict::Insufficient(_)
        ));
    }

    #[test]
    fn each_gate_fails_on_its_own_metric() {
        let g = gates();
        let single = group(10, 10, 0, 0.1, 10);
        let gate_of = |v: Verdict| match v {
            Verdict::Fail { gate, .. } => Some(gate),
            _ => None,
        };
        assert_eq!(
            gate_of(g.judge(&group(10, 10, 2, 0.1, 10), &single)),
            Some(Gate::FallbackRate)
        );
        assert_eq!(
            gate_of(g.judge(&group(10, 10, 0, 6.0, 10), &single)),
            Some(Gate::CostPerCompleted)
        );
        assert_eq!(
            gate_of(g.judge(&group(10, 9, 0, 0.1, 10), &single)),
            Some(Gate::SuccessRate)
        );
        assert_eq!(
            gate_of(g.judge(&group(10, 10, 0, 0.1, 31), &single)),
            Some(Gate::Duration)
        );
    }

    #[test]
    fn thresholds_out_of_range_name_the_flag() {
        let bad = Gates {
            max_fallback_rate: 2.0,
            ..Gates::default()
        };
        assert!(bad.validate().unwrap_err().contains("--max-fallback-rate"));
        assert!(Gates::default().validate().is_ok());
    }
}
