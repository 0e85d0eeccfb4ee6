mod common;
use common::RunningRouter;
use router_service::RouterConfig;
use std::time::Duration;
#[tokio::test]
async fn dbg() {
    service_kit::telemetry::init_logging(Default::default());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, "").unwrap();
    let router = RunningRouter::start(RouterConfig { policy_path: Some(path.clone()), reload_poll_interval: Duration::from_millis(200), ..RouterConfig::with_defaults() }).await;
    println!("v {}", router.policy_version().await);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, "[multi_agent]\nrollout_percent = 250\n").unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    println!("finished? {}", router.handle.is_finished());
    println!("v {}", router.policy_version().await);
    if router.handle.is_finished() { println!("{:?}", router.handle.await); }
}
