//! The policy file is re-read while the router serves: edits, bad edits and Kubernetes
//! ConfigMap-style symlink swaps.

mod common;

use common::RunningRouter;
use router_service::RouterConfig;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use taskrouter_proto::v1::{Complexity, GetPolicyRequest, RouteRequest, RoutingDecision};
use test_support::client::task;

const PERCENT_10: &str = "[multi_agent]\nrollout_percent = 10\n";
const PERCENT_100: &str = "[multi_agent]\nrollout_percent = 100\n";

fn config(path: &Path, poll: Duration) -> RouterConfig {
    RouterConfig {
        policy_path: Some(path.to_path_buf()),
        shadow_policy_path: None,
        reload_poll_interval: poll,
        ..RouterConfig::with_defaults()
    }
}

/// Replaces the file the way careful tools do: write aside, then rename over.
fn replace_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn wait_for_version(router: &RunningRouter, wanted: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if router.policy_version().await == wanted {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn version_of(text: &str) -> String {
    router_service::policy::policy_version(text.as_bytes())
}

#[tokio::test]
async fn an_edited_policy_is_served_within_two_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, PERCENT_10).unwrap();
    let router = RunningRouter::start(config(&path, Duration::from_secs(1))).await;
    assert_eq!(router.policy_version().await, version_of(PERCENT_10));

    // An in-place rewrite (truncate + write), as editors and `echo >` do.
    std::fs::write(&path, PERCENT_100).unwrap();
    assert!(
        wait_for_version(&router, &version_of(PERCENT_100), Duration::from_secs(2)).await,
        "new version not served within 2 s"
    );
    let resp = router
        .client()
        .await
        .get_policy(GetPolicyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.policy.unwrap().rollout_percent, 100);
    assert_eq!(resp.source, path.display().to_string());
    router.stop().await;
}

#[tokio::test]
async fn file_events_alone_pick_up_a_change_without_polling() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, PERCENT_10).unwrap();
    let router = RunningRouter::start(config(&path, Duration::ZERO)).await;
    assert_eq!(router.policy_version().await, version_of(PERCENT_10));
    replace_atomically(&path, PERCENT_100);
    assert!(
        wait_for_version(&router, &version_of(PERCENT_100), Duration::from_secs(2)).await,
        "file event did not trigger a reload"
    );
    router.stop().await;
}

#[tokio::test]
async fn an_invalid_rewrite_keeps_the_old_policy_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, PERCENT_10).unwrap();
    let router = RunningRouter::start(config(&path, Duration::from_millis(200))).await;
    let good = version_of(PERCENT_10);
    assert_eq!(router.policy_version().await, good);

    replace_atomically(&path, "[multi_agent]\nrollout_percent = 250\n");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(router.policy_version().await, good);
    replace_atomically(&path, "this is = not [valid toml");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(router.policy_version().await, good);
    std::fs::remove_file(&path).unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(router.policy_version().await, good);

    // Routing keeps working on the old policy meanwhile.
    let analysis = router
        .client()
        .await
        .route(RouteRequest {
            task: Some(task("TASK-1", "Fix typo", Complexity::Low, 1.0, &[], &[])),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .analysis
        .unwrap();
    assert_eq!(analysis.policy_version, good);

    // And a good file afterwards is picked up again.
    replace_atomically(&path, PERCENT_100);
    assert!(wait_for_version(&router, &version_of(PERCENT_100), Duration::from_secs(2)).await);
    router.stop().await;
}

/// Lays out a directory the way the kubelet mounts a ConfigMap:
/// `policy.toml -> ..data/policy.toml`, `..data -> ..<timestamp>`.
fn configmap_generation(dir: &Path, generation: &str, text: &str) -> PathBuf {
    let data = dir.join(generation);
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("policy.toml"), text).unwrap();
    data
}

#[cfg(unix)]
#[tokio::test]
async fn a_configmap_symlink_swap_is_picked_up() {
    use std::os::unix::fs::symlink;

    let dir = tempfile::tempdir().unwrap();
    configmap_generation(dir.path(), "..2025_01_01_00_00_00.1", PERCENT_10);
    symlink("..2025_01_01_00_00_00.1", dir.path().join("..data")).unwrap();
    let path = dir.path().join("policy.toml");
    symlink("..data/policy.toml", &path).unwrap();

    // Polling off: the directory watch alone must notice the swap.
    let router = RunningRouter::start(config(&path, Duration::ZERO)).await;
    assert_eq!(router.policy_version().await, version_of(PERCENT_10));
    let mut client = router.client().await;
    let high = || task("TEST-FEATURE-001", "x", Complexity::High, 0.0, &[], &[]);
    let before = client
        .route(RouteRequest {
            task: Some(high()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .analysis
        .unwrap();
    assert_eq!(before.decision, RoutingDecision::UseSingleAgent as i32);

    // The kubelet's update: new generation dir, new `..data_tmp` link, renamed over `..data`.
    configmap_generation(dir.path(), "..2025_01_01_00_05_00.2", PERCENT_100);
    symlink("..2025_01_01_00_05_00.2", dir.path().join("..data_tmp")).unwrap();
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
    std::fs::remove_dir_all(dir.path().join("..2025_01_01_00_00_00.1")).unwrap();

    assert!(
        wait_for_version(&router, &version_of(PERCENT_100), Duration::from_secs(2)).await,
        "symlink swap not picked up"
    );
    let after = client
        .route(RouteRequest {
            task: Some(high()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .analysis
        .unwrap();
    assert_eq!(after.decision, RoutingDecision::UseMultiAgent as i32);
    router.stop().await;
}
