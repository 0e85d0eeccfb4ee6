//! The health lifecycle every server runs, identically on its gRPC port and on the
//! health-only port (both read one reporter): NOT_SERVING from the start; SERVING once
//! the service's dependency check answers, NOT_SERVING again while it does not; and
//! NOT_SERVING on shutdown, before the server drains, so load balancers stop sending
//! new calls before connections close. One task owns every status change after start,
//! so a late check can never turn a stopping server back to SERVING.

use crate::Shutdown;
use futures::future::BoxFuture;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use tonic_health::ServingStatus;
pub use tonic_health::server::HealthReporter;

type Check = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// What a server must reach before it reports SERVING, and how often it is checked.
#[derive(Clone)]
pub struct Readiness {
    dependency: &'static str,
    every: Duration,
    hint: Option<&'static str>,
    check: Check,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("dependency", &self.dependency)
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

impl Readiness {
    /// `check` answers whether `dependency` (a word for the logs, e.g. `store`) is
    /// usable; its error text is logged, so it must hold no secrets. Run every `every`.
    pub fn new<F, Fut>(dependency: &'static str, every: Duration, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        Self {
            dependency,
            every,
            hint: None,
            check: Arc::new(move || Box::pin(check())),
        }
    }

    /// What to check first when the dependency does not answer (logged with the error).
    pub fn with_hint(mut self, hint: &'static str) -> Self {
        self.hint = Some(hint);
        self
    }
}

/// The statuses of one server: the overall one (`""`) and one per service name.
#[derive(Clone, Debug)]
pub(crate) struct Lifecycle {
    reporter: HealthReporter,
    names: Arc<[&'static str]>,
}

impl Lifecycle {
    /// Every status NOT_SERVING until [`Lifecycle::run`] decides otherwise.
    pub(crate) async fn start(reporter: HealthReporter, names: Arc<[&'static str]>) -> Self {
        let this = Self { reporter, names };
        this.set(ServingStatus::NotServing).await;
        this
    }

    async fn set(&self, status: ServingStatus) {
        for name in self.names.iter() {
            self.reporter.set_service_status(*name, status).await;
        }
        self.reporter.set_service_status("", status).await;
    }

    /// Follows `readiness` (SERVING at once without one) until `shutdown` fires, then
    /// reports NOT_SERVING and returns: the caller drains after that.
    pub(crate) async fn run(self, readiness: Option<Readiness>, shutdown: Shutdown) {
        match readiness {
            None => {
                self.set(ServingStatus::Serving).await;
                tracing::info!(services = ?self.names, "serving");
                shutdown.wait().await;
            }
            Some(r) => self.follow(r, &shutdown).await,
        }
        self.set(ServingStatus::NotServing).await;
    }

    async fn follow(&self, r: Readiness, shutdown: &Shutdown) {
        let mut last: Option<bool> = None;
        loop {
            let result = tokio::select! {
                biased;
                _ = shutdown.wait() => return,
                result = (r.check)() => result,
            };
            let ok = result.is_ok();
            if last != Some(ok) {
                let status = if ok {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                self.set(status).await;
                match (&result, r.hint) {
                    (Ok(()), _) => tracing::info!("{} reachable; serving", r.dependency),
                    (Err(error), Some(hint)) => tracing::warn!(
                        %error,
                        hint,
                        "{} unreachable; NOT_SERVING until it answers",
                        r.dependency
                    ),
                    (Err(error), None) => tracing::warn!(
                        %error,
                        "{} unreachable; NOT_SERVING until it answers",
                        r.dependency
                    ),
                }
                last = Some(ok);
            }
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(r.every) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tonic_health::pb::HealthCheckRequest;

    async fn status(health: &impl tonic_health::pb::health_server::Health, name: &str) -> i32 {
        health
            .check(tonic::Request::new(HealthCheckRequest {
                service: name.into(),
            }))
            .await
            .unwrap()
            .into_inner()
            .status
    }

    async fn eventually(
        health: &impl tonic_health::pb::health_server::Health,
        want: ServingStatus,
    ) {
        for _ in 0..200 {
            if status(health, "svc").await == want as i32 && status(health, "").await == want as i32
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never reached {want:?}");
    }

    #[tokio::test]
    async fn follows_the_dependency_then_turns_not_serving_on_shutdown() {
        let reporter = HealthReporter::new();
        let health = tonic_health::server::HealthService::from_health_reporter(reporter.clone());
        let up = Arc::new(AtomicBool::new(false));
        let probe = up.clone();
        let readiness = Readiness::new("store", Duration::from_millis(10), move || {
            let up = probe.load(Ordering::SeqCst);
            async move { if up { Ok(()) } else { Err("down".into()) } }
        });
        let lifecycle = Lifecycle::start(reporter, Arc::from(["svc"])).await;
        assert_eq!(
            status(&health, "svc").await,
            ServingStatus::NotServing as i32
        );
        let shutdown = Shutdown::new();
        let task = tokio::spawn(lifecycle.run(Some(readiness), shutdown.clone()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            status(&health, "svc").await,
            ServingStatus::NotServing as i32
        );
        up.store(true, Ordering::SeqCst);
        eventually(&health, ServingStatus::Serving).await;
        up.store(false, Ordering::SeqCst);
        eventually(&health, ServingStatus::NotServing).await;
        up.store(true, Ordering::SeqCst);
        eventually(&health, ServingStatus::Serving).await;
        shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        // The dependency still answers, but a stopping server is not ready.
        assert_eq!(
            status(&health, "svc").await,
            ServingStatus::NotServing as i32
        );
        assert_eq!(status(&health, "").await, ServingStatus::NotServing as i32);
    }
}
