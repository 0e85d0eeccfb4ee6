//! Bounded retries of one agent iteration with short exponential backoff. Every failed
//! attempt's reason is kept, so the caller can record it in the SessionState.

use super::{Agent, IterationInput, IterationOutput};
use crate::error::{Error, Result};
use std::time::Duration;

/// How often and how patiently an iteration is retried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, including the first (0 is treated as 1).
    pub max_attempts: u32,
    /// Delay after the first failure; doubles after each further failure.
    pub base_delay: Duration,
    /// Upper bound of any one delay.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// Three attempts, 100 ms then 200 ms apart.
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// The default backoff with `retries` retries after the first attempt.
    pub fn with_retries(retries: u32) -> Self {
        Self {
            max_attempts: retries.saturating_add(1),
            ..Self::default()
        }
    }

    /// A single attempt.
    pub fn no_retries() -> Self {
        Self::with_retries(0)
    }

    /// The delay after `failures` failed attempts (`failures >= 1`).
    pub fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32
            .checked_shl(failures.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.base_delay
            .checked_mul(factor)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }
}

/// The result of an iteration after retries.
#[derive(Debug)]
pub struct RetryOutcome {
    /// The last attempt's result.
    pub result: Result<IterationOutput>,
    /// The reason of every failed attempt, in order (includes the final one on failure).
    pub failures: Vec<String>,
}

impl RetryOutcome {
    /// How many attempts were made.
    pub fn attempts(&self) -> usize {
        self.failures.len() + usize::from(self.result.is_ok())
    }
}

/// Whether another attempt of the same iteration may succeed.
fn is_retryable(e: &Error) -> bool {
    matches!(e, Error::AgentFailed(_) | Error::AgentTimeout(_))
}

/// Runs one iteration, retrying agent failures and timeouts per `policy`. Dropping the
/// future cancels the current attempt or backoff.
pub async fn run_with_retry(
    agent: &dyn Agent,
    input: IterationInput,
    policy: &RetryPolicy,
) -> RetryOutcome {
    let max_attempts = policy.max_attempts.max(1);
    let mut failures = Vec::new();
    let mut attempt = 1;
    loop {
        match agent.run_iteration(input.clone()).await {
            Ok(output) => {
                return RetryOutcome {
                    result: Ok(output),
                    failures,
                };
            }
            Err(e) => {
                failures.push(e.to_string());
                let retry = attempt < max_attempts && is_retryable(&e);
                tracing::warn!(
                    agent = agent.kind(),
                    task_id = %input.task.id,
                    role = %input.role,
                    iteration = input.iteration,
                    attempt,
                    max_attempts,
                    retry,
                    error = %e,
                    "agent iteration failed"
                );
                if !retry {
                    return RetryOutcome {
                        result: Err(e),
                        failures,
                    };
                }
                tokio::time::sleep(policy.backoff(attempt)).await;
                attempt += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use taskrouter_proto::v1::{AgentStep, Task};

    /// Fails the first `fail` calls with `error`, then succeeds.
    struct Flaky {
        calls: AtomicU32,
        fail: u32,
        error: fn() -> Error,
    }

    #[async_trait::async_trait]
    impl Agent for Flaky {
        async fn run_iteration(&self, _: IterationInput) -> Result<IterationOutput> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            if n <= self.fail {
                Err((self.error)())
            } else {
                Ok(IterationOutput {
                    output: format!("call {n}"),
                    done: true,
                    ..Default::default()
                })
            }
        }
        fn kind(&self) -> &'static str {
            "flaky"
        }
    }

    fn input() -> IterationInput {
        IterationInput {
            task: Arc::new(Task {
                id: "t".into(),
                ..Default::default()
            }),
            role: "agent".into(),
            iteration: 1,
            step: AgentStep::Iteration,
            prior_outputs: Vec::new(),
            context: Vec::new(),
            workspace: None,
        }
    }

    fn fast(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(1), Duration::from_millis(100));
        assert_eq!(p.backoff(2), Duration::from_millis(200));
        assert_eq!(p.backoff(3), Duration::from_millis(400));
        assert_eq!(p.backoff(10), Duration::from_secs(2));
        assert_eq!(p.backoff(u32::MAX), Duration::from_secs(2));
        assert_eq!(RetryPolicy::with_retries(2), p);
        assert_eq!(RetryPolicy::no_retries().max_attempts, 1);
    }

    #[tokio::test]
    async fn succeeds_after_transient_failures() {
        let agent = Flaky {
            calls: AtomicU32::new(0),
            fail: 2,
            error: || Error::AgentFailed("boom".into()),
        };
        let out = run_with_retry(&agent, input(), &fast(3)).await;
        assert_eq!(out.result.unwrap().output, "call 3");
        assert_eq!(out.failures, ["agent failed: boom", "agent failed: boom"]);
    }

    #[tokio::test]
    async fn gives_up_after_max_attempts() {
        let agent = Flaky {
            calls: AtomicU32::new(0),
            fail: 10,
            error: || Error::AgentTimeout(Duration::from_secs(1)),
        };
        let out = run_with_retry(&agent, input(), &fast(3)).await;
        assert!(matches!(out.result, Err(Error::AgentTimeout(_))));
        assert_eq!(out.failures.len(), 3);
        assert_eq!(out.attempts(), 3);
        assert_eq!(agent.calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn does_not_retry_other_errors() {
        let agent = Flaky {
            calls: AtomicU32::new(0),
            fail: 10,
            error: || Error::ShuttingDown,
        };
        let out = run_with_retry(&agent, input(), &fast(3)).await;
        assert!(matches!(out.result, Err(Error::ShuttingDown)));
        assert_eq!(out.attempts(), 1);
    }
}
