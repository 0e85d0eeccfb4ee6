//! The shadow policy: evaluated beside the live one on every Route, answered only when
//! asked for, hot-reloaded like the live policy, never acted upon.

mod common;

use common::RunningRouter;
use router_service::RouterConfig;
use std::path::Path;
use std::time::{Duration, Instant};
use taskrouter_proto::v1::{Complexity, RouteRequest, RouteResponse, RoutingDecision};
use test_support::client::task;

const LIVE_OFF: &str = "[multi_agent]\nrollout_percent = 0\n";
const CANDIDATE_ALL: &str = "[multi_agent]\nrollout_percent = 100\n";
const CANDIDATE_HIGH_THRESHOLD: &str =
    "[multi_agent]\nrollout_percent = 100\n[rules]\nvalue_threshold_usd = 1000000.0\n";

/// Write aside, then rename over: an in-place write can be read half-done (an empty file
/// is a valid policy).
fn replace_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn version_of(text: &str) -> String {
    router_service::policy::policy_version(text.as_bytes())
}

async fn start(dir: &Path) -> RunningRouter {
    let live = dir.join("policy.toml");
    let shadow = dir.join("candidate.toml");
    std::fs::write(&live, LIVE_OFF).unwrap();
    std::fs::write(&shadow, CANDIDATE_ALL).unwrap();
    RunningRouter::start(RouterConfig {
        policy_path: Some(live),
        shadow_policy_path: Some(shadow),
        reload_poll_interval: Duration::from_millis(200),
        ..RouterConfig::with_defaults()
    })
    .await
}

async fn route(router: &RunningRouter, include_shadow: bool) -> RouteResponse {
    router
        .client()
        .await
        .route(RouteRequest {
            // High value only: the value threshold decides whether a rule fires.
            task: Some(task(
                "SHADOW-1",
                "Fix typo",
                Complexity::Low,
                20_000.0,
                &[],
                &[],
            )),
            include_shadow,
        })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn the_answer_is_the_live_decision_and_the_shadow_comes_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let router = start(dir.path()).await;

    let plain = route(&router, false).await;
    let live = plain.analysis.unwrap();
    assert_eq!(live.decision, RoutingDecision::UseSingleAgent as i32);
    assert_eq!(live.policy_version, version_of(LIVE_OFF));
    assert!(
        plain.shadow.is_none(),
        "shadow returned without being asked"
    );

    let asked = route(&router, true).await;
    assert_eq!(
        asked.analysis.unwrap(),
        live,
        "the live answer must not change"
    );
    let shadow = asked.shadow.expect("shadow analysis when asked");
    assert_eq!(shadow.decision, RoutingDecision::UseMultiAgent as i32);
    assert_eq!(shadow.policy_version, version_of(CANDIDATE_ALL));
    router.stop().await;
}

#[tokio::test]
async fn an_edited_shadow_policy_is_reloaded_and_a_bad_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let router = start(dir.path()).await;
    let shadow_path = dir.path().join("candidate.toml");

    replace_atomically(&shadow_path, CANDIDATE_HIGH_THRESHOLD);
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut shadow = route(&router, true).await.shadow.unwrap();
    while shadow.policy_version != version_of(CANDIDATE_HIGH_THRESHOLD) {
        assert!(Instant::now() < deadline, "shadow policy not reloaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
        shadow = route(&router, true).await.shadow.unwrap();
    }
    assert_eq!(shadow.decision, RoutingDecision::UseSingleAgent as i32);

    replace_atomically(&shadow_path, "[multi_agent]\nrollout_percent = 900\n");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let after = route(&router, true).await;
    assert_eq!(
        after.shadow.unwrap().policy_version,
        version_of(CANDIDATE_HIGH_THRESHOLD)
    );
    assert_eq!(after.analysis.unwrap().policy_version, version_of(LIVE_OFF));
    router.stop().await;
}

#[tokio::test]
async fn without_a_shadow_policy_asking_returns_no_shadow() {
    let router = RunningRouter::start(RouterConfig::with_defaults()).await;
    let resp = route(&router, true).await;
    assert!(resp.analysis.is_some());
    assert!(resp.shadow.is_none());
    router.stop().await;
}
