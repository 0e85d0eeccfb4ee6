//! A private `redis-server` child process per test (or per test binary).

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::AsyncConnectionConfig;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use tempfile::TempDir;

use crate::log_tail;
use crate::ports::free_port;
use crate::spawn::{signal, spawn_tied};

/// How long a start (or restart) may take before the harness gives up.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `stop()` waits for a graceful exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts with a fresh port when the chosen one turns out to be taken.
const PORT_ATTEMPTS: usize = 5;
/// Generous timeouts for harness connections: the redis-rs 500 ms default flakes on a loaded
/// 2-core machine with `appendfsync always`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

const NOT_FOUND: &str = "redis-server not found on PATH: install it (apt-get install -y redis-server) or run the README test command, which installs it";

/// Options for [`RedisServer::start_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisOptions {
    /// Enable the AOF (`--appendonly yes --appendfsync always`) so data survives restarts.
    pub appendonly: bool,
    /// Require this password (`--requirepass`); [`RedisServer::url`] then carries it.
    pub password: Option<String>,
}

/// A `redis-server` child on 127.0.0.1 with its own temporary `--dir`; killed and cleaned up on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    options: RedisOptions,
    /// Started with `--cluster-enabled yes` (a node of a [`crate::RedisCluster`]).
    cluster_node: bool,
    /// The cluster bus port of a cluster node (`--cluster-port`).
    bus_port: u16,
    log_path: PathBuf,
    dir: TempDir,
}

/// Why one launch attempt failed.
enum LaunchError {
    PortInUse,
    Failed(String),
}

impl RedisServer {
    /// Starts a server with default options (no AOF, no password).
    pub fn start() -> RedisServer {
        Self::start_with(RedisOptions::default())
    }

    /// Starts a server with `options` on a free port, waiting until it answers PING.
    pub fn start_with(options: RedisOptions) -> RedisServer {
        Self::start_inner(options, false)
    }

    /// Starts a node for a Redis Cluster (`--cluster-enabled yes`), not yet in a cluster.
    pub(crate) fn start_cluster_node() -> RedisServer {
        Self::start_inner(RedisOptions::default(), true)
    }

    fn start_inner(options: RedisOptions, cluster_node: bool) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("taskrouter-redis-")
            .tempdir()
            .expect("cannot create a temporary directory for redis-server");
        let log_path = dir.path().join("redis.log");
        let mut server = RedisServer {
            child: None,
            port: 0,
            options,
            cluster_node,
            bus_port: 0,
            log_path,
            dir,
        };
        for _ in 0..PORT_ATTEMPTS {
            server.port = free_port();
            if cluster_node {
                server.bus_port = free_port();
            }
            match server.launch() {
                Ok(child) => {
                    server.child = Some(child);
                    return server;
                }
                Err(LaunchError::PortInUse) => continue,
                Err(LaunchError::Failed(why)) => panic!("{why}"),
            }
        }
        panic!(
            "redis-server: every one of {PORT_ATTEMPTS} free ports was taken before it could bind; log:\n{}",
            log_tail(&server.log_path, 40)
        );
    }

    /// Restarts a stopped or killed server on the SAME port and dir (AOF data survives when enabled).
    pub fn start_again(&mut self) {
        assert!(
            self.child.is_none(),
            "start_again() on a redis-server that is still running (call stop() or kill() first)"
        );
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.launch() {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                // Something else grabbed our port meanwhile; it may let go, so retry for a while.
                Err(LaunchError::PortInUse) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(LaunchError::PortInUse) => panic!(
                    "redis-server restart: port {} stays taken by another process; log:\n{}",
                    self.port,
                    log_tail(&self.log_path, 40)
                ),
                Err(LaunchError::Failed(why)) => panic!("{why}"),
            }
        }
    }

    /// Stops the server gracefully (SIGTERM, then waits for exit); a no-op when not running.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "redis-server on port {} did not exit within {STOP_TIMEOUT:?} of SIGTERM (killed it); log:\n{}",
                        self.port,
                        log_tail(&self.log_path, 40)
                    );
                }
            }
        }
    }

    /// Kills the server with SIGKILL (a crash) and reaps it; a no-op when not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `redis://127.0.0.1:P/`, with the password when one is set.
    pub fn url(&self) -> String {
        match &self.options.password {
            Some(password) => format!(
                "redis://:{}@127.0.0.1:{}/",
                percent_encode(password),
                self.port
            ),
            None => format!("redis://127.0.0.1:{}/", self.port),
        }
    }

    /// The TCP port the server listens on (kept across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The server's data directory (`--dir`), removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's log file (stdout and stderr of every run, appended).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The whole log so far.
    pub fn log_contents(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The process id while running; `None` after `stop()` or `kill()`.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A `redis::Client` for [`url`](Self::url).
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("harness-built redis URL is valid")
    }

    /// A new multiplexed async connection (5 s connect, 30 s response timeouts).
    pub async fn connection(&self) -> MultiplexedConnection {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        self.client()
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to redis-server at {}: {e}", self.addr()))
    }

    /// A new reconnecting `ConnectionManager` (5 s connect, 30 s response timeouts).
    pub async fn connection_manager(&self) -> ConnectionManager {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        ConnectionManager::new_with_config(self.client(), config)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot create a ConnectionManager for redis-server at {}: {e}",
                    self.addr()
                )
            })
    }

    /// Calls per command from `INFO commandstats` (keys as Redis names them: `set`, `config|get`).
    ///
    /// Counts include the harness's own traffic (this `info`, connection set-up commands);
    /// compare before/after snapshots or `CONFIG RESETSTAT` first.
    pub async fn commandstats(&self) -> HashMap<String, u64> {
        let mut con = self.connection().await;
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut con)
            .await
            .unwrap_or_else(|e| panic!("INFO commandstats failed: {e}"));
        parse_commandstats(&info)
    }

    /// Spawns redis-server on `self.port` and waits for it to answer; the child on success.
    fn launch(&self) -> Result<Child, LaunchError> {
        // Only the part of the (appended) log written by this run tells why it failed.
        let log_start = std::fs::metadata(&self.log_path)
            .map(|m| m.len() as usize)
            .unwrap_or(0);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("cannot open the redis-server log file");
        let log_err = log.try_clone().expect("cannot clone the log file handle");

        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--dir"])
            .arg(self.dir.path())
            .args(["--daemonize", "no"]);
        if self.options.appendonly {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        if let Some(password) = &self.options.password {
            cmd.args(["--requirepass", password]);
        }
        if self.cluster_node {
            // A short node timeout lets a cluster notice a dead master in seconds.
            cmd.args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", "nodes.conf"])
                .args(["--cluster-port", &self.bus_port.to_string()])
                .args(["--cluster-node-timeout", "2000"]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));

        let mut child = match spawn_tied(cmd) {
            Ok(child) => child,
            Err(e) if e.kind() == ErrorKind::NotFound => panic!("{NOT_FOUND}"),
            Err(e) => panic!("cannot spawn redis-server: {e}"),
        };
        let client = self.client();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let this_run = read_from(&self.log_path, log_start);
                if this_run.contains("Address already in use") {
                    return Err(LaunchError::PortInUse);
                }
                return Err(LaunchError::Failed(format!(
                    "redis-server on port {} exited during start-up ({status}); log:\n{}",
                    self.port,
                    log_tail(&self.log_path, 40)
                )));
            }
            if answers_as(&client, child.id()) {
                return Ok(child);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(LaunchError::Failed(format!(
                    "redis-server on port {} did not answer PING within {START_TIMEOUT:?}; log:\n{}",
                    self.port,
                    log_tail(&self.log_path, 40)
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // Kill before the TempDir field is dropped, so the directory is removed after the process.
        self.kill();
    }
}

/// True when the server at `client` answers PING and is the process `pid` (not a port squatter).
fn answers_as(client: &redis::Client, pid: u32) -> bool {
    let Ok(mut con) = client.get_connection_with_timeout(Duration::from_millis(500)) else {
        return false;
    };
    let _ = con.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = con.set_write_timeout(Some(Duration::from_secs(2)));
    // PING fails with LOADING while the AOF is replayed, which is exactly what we wait out.
    if redis::cmd("PING").query::<String>(&mut con).is_err() {
        return false;
    }
    let Ok(info) = redis::cmd("INFO").arg("server").query::<String>(&mut con) else {
        return false;
    };
    info.lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .and_then(|v| v.trim().parse::<u32>().ok())
        == Some(pid)
}

/// Parses `INFO commandstats` lines like `cmdstat_set:calls=3,usec=10,...`.
pub(crate) fn parse_commandstats(info: &str) -> HashMap<String, u64> {
    info.lines()
        .filter_map(|line| {
            let (name, fields) = line.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = fields
                .split(',')
                .find_map(|f| f.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_string(), calls))
        })
        .collect()
}

/// The file's contents from byte `start` on (lossy), empty if unreadable.
fn read_from(path: &Path, start: usize) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(bytes.get(start..).unwrap_or_default()).into_owned()
}

/// Percent-encodes everything but RFC 3986 unreserved characters (for the URL's password).
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commandstats() {
        let info = "# Commandstats\r\ncmdstat_set:calls=3,usec=9,usec_per_call=3.00,rejected_calls=0,failed_calls=0\r\ncmdstat_config|get:calls=1,usec=1\r\n";
        let stats = parse_commandstats(info);
        assert_eq!(stats.get("set"), Some(&3));
        assert_eq!(stats.get("config|get"), Some(&1));
        assert_eq!(stats.len(), 2);
    }

    #[test]
    fn encodes_password() {
        assert_eq!(percent_encode("a b@c:d/é"), "a%20b%40c%3Ad%2F%C3%A9");
    }
}
