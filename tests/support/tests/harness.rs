//! Self-tests of the harness, against a real redis-server and real child processes.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use test_support::{
    RedisOptions, RedisServer, ServiceProcess, binary_path, free_port, wait_for_grpc_serving,
    wait_for_tcp,
};

/// True while `pid` is a live (non-zombie) process.
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesised command name.
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().chars().next()),
            Some(Some('Z' | 'X'))
        ),
        Err(_) => false,
    }
}

fn wait_until_dead(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while process_alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

async fn get(server: &RedisServer, key: &str) -> Option<String> {
    let mut con = server.connection().await;
    con.get(key).await.expect("GET")
}

async fn set(server: &RedisServer, key: &str, value: &str) {
    let mut con = server.connection().await;
    let () = con.set(key, value).await.expect("SET");
}

#[test]
fn free_ports_are_distinct_and_not_6379() {
    let ports: Vec<u16> = (0..20).map(|_| free_port()).collect();
    let mut unique = ports.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ports.len());
    assert!(!ports.contains(&6379));
}

#[tokio::test]
async fn two_servers_have_distinct_working_ports() {
    let a = RedisServer::start();
    let b = RedisServer::start();
    assert_ne!(a.port(), b.port());
    assert_ne!(a.port(), 6379);
    assert_ne!(b.port(), 6379);
    assert_eq!(a.url(), format!("redis://127.0.0.1:{}/", a.port()));
    set(&a, "k", "on-a").await;
    set(&b, "k", "on-b").await;
    assert_eq!(get(&a, "k").await.as_deref(), Some("on-a"));
    assert_eq!(get(&b, "k").await.as_deref(), Some("on-b"));
    assert!(a.log_contents().contains("Ready to accept connections"));
}

#[tokio::test]
async fn aof_data_survives_stop_and_start_again() {
    let mut server = RedisServer::start_with(RedisOptions {
        appendonly: true,
        password: None,
    });
    let port = server.port();
    set(&server, "durable", "yes").await;
    let pid = server.pid().expect("running");

    server.stop();
    assert_eq!(server.pid(), None);
    assert!(!process_alive(pid));
    assert!(!wait_for_tcp(server.addr(), Duration::from_millis(200)).await);
    server.stop(); // idempotent

    server.start_again();
    assert_eq!(server.port(), port);
    assert_ne!(server.pid(), Some(pid));
    assert_eq!(get(&server, "durable").await.as_deref(), Some("yes"));
}

#[tokio::test]
async fn without_aof_a_restart_starts_empty() {
    let mut server = RedisServer::start();
    set(&server, "volatile", "1").await;
    server.stop();
    server.start_again();
    assert_eq!(get(&server, "volatile").await, None);
}

#[tokio::test]
async fn kill_then_start_again_keeps_fsynced_data() {
    let mut server = RedisServer::start_with(RedisOptions {
        appendonly: true,
        password: None,
    });
    set(&server, "crash", "survivor").await;
    let pid = server.pid().expect("running");
    server.kill();
    assert!(!process_alive(pid));
    server.start_again();
    assert_eq!(get(&server, "crash").await.as_deref(), Some("survivor"));
}

#[tokio::test]
async fn connection_manager_reconnects_after_restart() {
    let mut server = RedisServer::start_with(RedisOptions {
        appendonly: true,
        password: None,
    });
    let mut manager = server.connection_manager().await;
    let () = manager.set("cm", "1").await.expect("SET");
    server.stop();
    assert!(manager.get::<_, Option<String>>("cm").await.is_err());
    server.start_again();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match manager.get::<_, Option<String>>("cm").await {
            Ok(v) => {
                assert_eq!(v.as_deref(), Some("1"));
                break;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("ConnectionManager never reconnected: {e}"),
        }
    }
}

#[tokio::test]
async fn password_server_rejects_unauthenticated_commands() {
    let server = RedisServer::start_with(RedisOptions {
        appendonly: false,
        password: Some("s3cr@t pw/:".to_string()),
    });
    assert!(server.url().contains('@'));

    let anonymous = redis::Client::open(format!("redis://127.0.0.1:{}/", server.port())).unwrap();
    let refused = match anonymous.get_multiplexed_async_connection().await {
        Ok(mut con) => redis::cmd("SET")
            .arg("x")
            .arg("1")
            .query_async::<()>(&mut con)
            .await
            .expect_err("unauthenticated SET must fail"),
        Err(e) => e,
    };
    assert!(
        refused.to_string().contains("NOAUTH") || refused.to_string().contains("Authentication"),
        "unexpected error: {refused}"
    );

    set(&server, "x", "1").await;
    assert_eq!(get(&server, "x").await.as_deref(), Some("1"));
}

#[tokio::test]
async fn commandstats_counts_a_set() {
    let server = RedisServer::start();
    let before = server.commandstats().await.get("set").copied().unwrap_or(0);
    set(&server, "counted", "1").await;
    let after = server.commandstats().await;
    assert_eq!(after.get("set").copied(), Some(before + 1));
    assert!(after.get("info").copied().unwrap_or(0) >= 1);
}

#[tokio::test]
async fn drop_stops_the_process_and_removes_the_dir() {
    let server = RedisServer::start();
    let pid = server.pid().expect("running");
    let dir = server.dir().to_path_buf();
    let addr = server.addr();
    assert!(process_alive(pid));
    drop(server);
    assert!(!process_alive(pid));
    assert!(!dir.exists());
    assert!(!wait_for_tcp(addr, Duration::from_millis(200)).await);
}

#[tokio::test]
async fn server_outlives_the_thread_that_started_it() {
    // PDEATHSIG fires when the forking thread exits; the harness must not tie servers to test threads.
    let server = std::thread::spawn(RedisServer::start).join().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(process_alive(server.pid().unwrap()));
    set(&server, "alive", "1").await;
}

#[test]
fn children_die_with_an_aborted_test_process() {
    let pid_file = tempfile::NamedTempFile::new().unwrap();
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "abort_helper", "--nocapture", "--test-threads=1"])
        .env("TEST_SUPPORT_ABORT_HELPER", pid_file.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "the helper should have aborted: {stderr}"
    );
    let written = std::fs::read_to_string(pid_file.path()).unwrap();
    let lines: Vec<&str> = written.lines().collect();
    assert_eq!(
        lines.len(),
        4,
        "helper wrote {written:?}; its stderr: {stderr}"
    );
    for pid in &lines[..2] {
        let pid: u32 = pid.parse().unwrap();
        assert!(
            wait_until_dead(pid, Duration::from_secs(5)),
            "child {pid} outlived its aborted test process"
        );
    }
    // The aborted helper ran no destructors; remove what they would have.
    std::fs::remove_dir_all(lines[2]).unwrap();
    std::fs::remove_file(lines[3]).unwrap();
}

/// Runs only as the child of `children_die_with_an_aborted_test_process`.
#[test]
fn abort_helper() {
    let Some(pid_file) = std::env::var_os("TEST_SUPPORT_ABORT_HELPER") else {
        return;
    };
    let server = RedisServer::start();
    let sleeper = ServiceProcess::spawn_program(Path::new("/bin/sleep"), &["60"], &[]);
    let written = format!(
        "{}\n{}\n{}\n{}\n",
        server.pid().unwrap(),
        sleeper.pid(),
        server.dir().display(),
        sleeper.log_path().display()
    );
    std::fs::write(&pid_file, written).unwrap();
    // No destructors run: only PDEATHSIG can clean up.
    std::process::abort();
}

#[tokio::test]
async fn wait_for_tcp_sees_open_and_closed_ports() {
    let server = RedisServer::start();
    assert!(wait_for_tcp(server.addr(), Duration::from_secs(2)).await);
    let closed = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let started = Instant::now();
    assert!(!wait_for_tcp(closed, Duration::from_millis(300)).await);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn wait_for_grpc_serving_follows_health_status() {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("svc.Ready", tonic_health::ServingStatus::Serving)
        .await;
    reporter
        .set_service_status("svc.Starting", tonic_health::ServingStatus::NotServing)
        .await;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    // Serve a little later so the first attempts hit a closed port.
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        tonic::transport::Server::builder()
            .add_service(health)
            .serve(addr)
            .await
            .unwrap();
    });
    assert!(wait_for_grpc_serving(addr, "svc.Ready", Duration::from_secs(10)).await);
    assert!(wait_for_grpc_serving(addr, "", Duration::from_secs(2)).await);
    assert!(!wait_for_grpc_serving(addr, "svc.Starting", Duration::from_millis(300)).await);
    assert!(!wait_for_grpc_serving(addr, "svc.Unknown", Duration::from_millis(300)).await);
}

#[tokio::test]
async fn service_process_captures_output_and_handles_signals() {
    let mut proc = ServiceProcess::spawn_program(
        Path::new("/bin/sh"),
        &[
            "-c",
            "echo out-$GREETING; echo err-line >&2; trap 'echo got-term; exit 7' TERM; while :; do sleep 0.05; done",
        ],
        &[("GREETING", "hello")],
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !proc.log_contents().contains("err-line") {
        assert!(
            Instant::now() < deadline,
            "no output: {:?}",
            proc.log_contents()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(proc.log_contents().contains("out-hello"));
    assert_eq!(proc.wait_exit(Duration::from_millis(100)).await, None);

    proc.sigterm();
    let status = proc
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("exits on SIGTERM");
    assert_eq!(status.code(), Some(7));
    assert!(proc.log_contents().contains("got-term"));
    proc.sigterm(); // no-op after exit
}

#[tokio::test]
async fn service_process_kill9_and_drop() {
    use std::os::unix::process::ExitStatusExt;

    let mut proc = ServiceProcess::spawn_program(Path::new("/bin/sleep"), &["60"], &[]);
    proc.kill9();
    let status = proc.wait_exit(Duration::ZERO).await.expect("reaped");
    assert_eq!(status.signal(), Some(9));

    let proc = ServiceProcess::spawn_program(Path::new("/bin/sleep"), &["60"], &[]);
    let pid = proc.pid();
    let log = proc.log_path().to_path_buf();
    assert!(log.exists());
    drop(proc);
    assert!(!process_alive(pid));
    assert!(!log.exists());
}

#[test]
fn binary_path_finds_router_service() {
    let path = binary_path("router-service");
    assert!(path.is_file(), "{} is not a file", path.display());
    assert!(path.ends_with("router-service"));
}

#[tokio::test]
async fn start_again_waits_out_a_port_squatter() {
    let mut server = RedisServer::start();
    server.stop();
    let squatter = std::net::TcpListener::bind(server.addr()).expect("port is free after stop");
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        drop(squatter);
    });
    server.start_again();
    release.join().unwrap();
    assert!(server.log_contents().contains("Address already in use"));
    set(&server, "back", "1").await;
}

#[test]
fn missing_redis_server_panics_with_install_hint() {
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "not_found_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TEST_SUPPORT_NOT_FOUND_HELPER", "1")
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("redis-server not found on PATH: install it (apt-get install -y redis-server) or run the README test command, which installs it"),
        "unexpected stderr: {stderr}"
    );
}

/// Runs only as the child of `missing_redis_server_panics_with_install_hint`.
#[test]
fn not_found_helper() {
    if std::env::var_os("TEST_SUPPORT_NOT_FOUND_HELPER").is_some() {
        RedisServer::start();
    }
}
