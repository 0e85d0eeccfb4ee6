//! The Redis side of the benches: a private `redis-server`, `INFO commandstats`, and
//! `redis-benchmark` as the yardstick for the executor (`bench redis`).

use super::{Workdir, require_loopback, round};
use crate::Options;
use crate::error::{Error, Result, Verdict};
use crate::output::{emit, emit_json};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, IntoConnectionInfo};
use serde_json::json;
use service_kit::status_text::one_line;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// How long a private redis-server may take to answer PING.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts with a fresh port when the one picked was taken in between.
const PORT_ATTEMPTS: usize = 5;

/// Flags of `bench redis`.
#[derive(clap::Args, Debug)]
pub struct RedisArgs {
    /// Redis to benchmark (loopback only); default: a private redis-server on a free port.
    #[arg(long, value_name = "redis://127.0.0.1:PORT/")]
    pub redis_url: Option<String>,
    /// Requests redis-benchmark sends (its -n).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub requests: u64,
    /// Parallel connections of redis-benchmark (its -c).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub clients: u32,
}

/// A `redis-server` child on a free 127.0.0.1 port without persistence, killed on drop.
pub struct PrivateRedis {
    child: Child,
    port: u16,
}

impl PrivateRedis {
    /// Starts one with its data directory and log in `dir`, waiting until it answers PING.
    pub async fn start(dir: &Path) -> Result<Self> {
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            let log = dir.join(format!("redis-{port}.log"));
            let mut child = spawn_redis(port, dir, &log)?;
            let url = format!("redis://127.0.0.1:{port}/");
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    if text.contains("Address already in use") {
                        break;
                    }
                    return Err(Error::Runtime(format!(
                        "redis-server exited during start-up ({status}); log: {}",
                        log.display()
                    )));
                }
                if let Ok(mut conn) = connect(&url).await
                    && redis::cmd("PING")
                        .query_async::<String>(&mut conn)
                        .await
                        .is_ok()
                {
                    return Ok(PrivateRedis { child, port });
                }
                if Instant::now() >= deadline {
                    let _ = child.start_kill();
                    return Err(Error::Runtime(format!(
                        "redis-server did not answer PING within {}; log: {}",
                        humantime::format_duration(START_TIMEOUT),
                        log.display()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Err(Error::Runtime(format!(
            "redis-server: {PORT_ATTEMPTS} free ports in a row were taken before it could bind"
        )))
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills it and reaps it.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

fn spawn_redis(port: u16, dir: &Path, log: &Path) -> Result<Child> {
    let out = std::fs::File::create(log)
        .map_err(|e| Error::Runtime(format!("cannot create {}: {e}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(|e| Error::Runtime(format!("redis-server log: {e}")))?;
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::Runtime(
                    "redis-server not found on PATH: install it (apt-get install redis-server) \
                     or pass --redis-url with a loopback Redis"
                        .into(),
                )
            } else {
                Error::Runtime(format!("cannot start redis-server: {e}"))
            }
        })
}

/// A free TCP port on 127.0.0.1 (free when asked; the caller retries if it is taken).
pub fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Error::Runtime(format!("cannot find a free port on 127.0.0.1: {e}")))
}

/// A multiplexed connection to `url` (5 s to connect, 30 s per reply).
pub async fn connect(url: &str) -> Result<MultiplexedConnection> {
    let client = redis::Client::open(url)
        .map_err(|e| Error::Usage(format!("--redis-url: not a Redis URL ({})", e.category())))?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(30)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| Error::Runtime(format!("cannot reach Redis: {}", redis_cause(&e))))
}

/// A short cause for a Redis error (never the URL, which may hold a password).
pub fn redis_cause(e: &redis::RedisError) -> String {
    if e.is_connection_refusal() {
        "connection refused".into()
    } else if e.is_timeout() {
        "timed out".into()
    } else {
        one_line(&e.to_string())
    }
}

/// Calls per command from `INFO commandstats` (names as Redis gives them: `evalsha`,
/// `xadd`, `client|setinfo`).
pub async fn commandstats(conn: &mut MultiplexedConnection) -> Result<BTreeMap<String, u64>> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .map_err(|e| Error::Runtime(format!("INFO commandstats: {}", redis_cause(&e))))?;
    Ok(parse_commandstats(&info))
}

/// Parses lines like `cmdstat_set:calls=3,usec=10,...`.
pub fn parse_commandstats(info: &str) -> BTreeMap<String, u64> {
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

/// The server's `redis_version`, or `?`.
pub async fn server_version(conn: &mut MultiplexedConnection) -> String {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(conn)
        .await
        .unwrap_or_default();
    info.lines()
        .find_map(|l| l.trim().strip_prefix("redis_version:"))
        .unwrap_or("?")
        .to_string()
}

/// The Redis under test: a private one, or a loopback `--redis-url`.
pub struct RedisTarget {
    /// Its URL (may hold a password: never print it).
    pub url: String,
    /// For reports: "private redis-server 7.0.15 at 127.0.0.1:PORT" or "Redis at ...".
    pub description: String,
    server: Option<PrivateRedis>,
}

impl RedisTarget {
    /// Checks `--redis-url` (loopback only) or starts a private redis-server in `dir`.
    pub async fn open(url: Option<&str>, dir: &Path) -> Result<Self> {
        let (url, server) = match url.map(str::trim).filter(|u| !u.is_empty()) {
            Some(u) => {
                require_loopback("--redis-url", u)?;
                (u.to_string(), None)
            }
            None => {
                let s = PrivateRedis::start(dir).await?;
                (s.url(), Some(s))
            }
        };
        let mut conn = connect(&url).await?;
        let version = server_version(&mut conn).await;
        let (host, port) = host_port(&url)?;
        let description = if server.is_some() {
            format!("private redis-server {version} at {host}:{port} (no persistence)")
        } else {
            format!(
                "Redis {version} at {host}:{port} (--redis-url; other clients' commands count too)"
            )
        };
        Ok(RedisTarget {
            url,
            description,
            server,
        })
    }

    /// Stops the private server, if any.
    pub async fn close(self) {
        if let Some(s) = self.server {
            s.stop().await;
        }
    }
}

/// Host and port of a `redis://` URL.
fn host_port(url: &str) -> Result<(String, u16)> {
    let info = url
        .into_connection_info()
        .map_err(|e| Error::Usage(format!("--redis-url: not a Redis URL ({})", e.category())))?;
    match info.addr() {
        ConnectionAddr::Tcp(h, p) => Ok((h.clone(), *p)),
        ConnectionAddr::TcpTls { .. } => Err(Error::Usage(
            "--redis-url: redis-benchmark comparison needs a plaintext redis:// URL".into(),
        )),
        _ => Err(Error::Usage(
            "--redis-url: needs a redis://host:port URL".into(),
        )),
    }
}

/// Commands seen by MONITOR, by where they came from.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Monitored {
    /// Commands sent by clients (each one a round trip), by name.
    pub client: BTreeMap<String, u64>,
    /// Commands run inside Lua scripts (`[0 lua]`), by name.
    pub script: BTreeMap<String, u64>,
}

impl Monitored {
    /// Counts one MONITOR line: `+1700000000.123456 [0 127.0.0.1:5555] "evalsha" ...`.
    pub fn count(&mut self, line: &str) {
        let Some((source, rest)) = line.split_once('[').and_then(|(_, r)| r.split_once(']')) else {
            return;
        };
        let Some(cmd) = rest
            .trim_start()
            .strip_prefix('"')
            .and_then(|r| r.split('"').next())
        else {
            return;
        };
        let cmd = cmd.to_ascii_lowercase();
        let from_script = source.split_whitespace().nth(1) == Some("lua");
        let map = if from_script {
            &mut self.script
        } else {
            &mut self.client
        };
        *map.entry(cmd).or_default() += 1;
    }
}

/// A MONITOR session on its own connection, counting commands until [`stop`](Self::stop).
pub struct Monitor {
    counts: std::sync::Arc<std::sync::Mutex<Monitored>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Monitor {
    /// Connects to the Redis at `url`, authenticates if the URL says so, and starts MONITOR.
    pub async fn start(url: &str) -> Result<Self> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let (host, port) = host_port(url)?;
        let info = url.into_connection_info().map_err(|e| {
            Error::Usage(format!("--redis-url: not a Redis URL ({})", e.category()))
        })?;
        let io = |e: std::io::Error| Error::Runtime(format!("MONITOR connection: {e}"));
        let stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(io)?;
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let settings = info.redis_settings();
        if let Some(password) = settings.password() {
            let mut auth = vec!["AUTH"];
            auth.extend(settings.username());
            auth.push(password);
            write.write_all(&resp(&auth)).await.map_err(io)?;
            let reply = lines.next_line().await.map_err(io)?.unwrap_or_default();
            if !reply.starts_with('+') {
                return Err(Error::Runtime("MONITOR connection: AUTH refused".into()));
            }
        }
        write.write_all(&resp(&["MONITOR"])).await.map_err(io)?;
        let reply = lines.next_line().await.map_err(io)?.unwrap_or_default();
        if reply != "+OK" {
            return Err(Error::Runtime(format!(
                "MONITOR refused: {}",
                one_line(&reply)
            )));
        }
        let counts = std::sync::Arc::new(std::sync::Mutex::new(Monitored::default()));
        let sink = counts.clone();
        let reader = tokio::spawn(async move {
            // The write half stays open as long as this task runs.
            let _write = write;
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().unwrap_or_else(|e| e.into_inner()).count(&line);
            }
        });
        Ok(Monitor { counts, reader })
    }

    /// Ends the session (closing its connection) and returns what it counted.
    pub async fn stop(self) -> Monitored {
        // Lines already sent may still be in flight; give them a moment to arrive.
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.reader.abort();
        let _ = self.reader.await;
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// `args` as a RESP array of bulk strings.
fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// What `redis-benchmark -t set` reported.
#[derive(Clone, Debug)]
pub struct SetBenchmark {
    /// SET requests per second.
    pub rps: f64,
    /// The exact command line (without the password).
    pub command: String,
}

/// Runs `redis-benchmark -n REQUESTS -c CLIENTS -t set -q` against the Redis at `url`.
pub async fn set_benchmark(url: &str, requests: u64, clients: u32) -> Result<SetBenchmark> {
    let (host, port) = host_port(url)?;
    let info = url
        .into_connection_info()
        .map_err(|e| Error::Usage(format!("--redis-url: not a Redis URL ({})", e.category())))?;
    let args = [
        "-h".to_string(),
        host,
        "-p".into(),
        port.to_string(),
        "-n".into(),
        requests.to_string(),
        "-c".into(),
        clients.to_string(),
        "-t".into(),
        "set".into(),
        "-q".into(),
    ];
    let command = format!("redis-benchmark {}", args.join(" "));
    let mut cmd = Command::new("redis-benchmark");
    cmd.args(&args);
    let settings = info.redis_settings();
    if let Some(user) = settings.username() {
        cmd.args(["--user", user]);
    }
    if let Some(password) = settings.password() {
        cmd.args(["-a", password]);
    }
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    // redis-benchmark stops by itself after -n requests; the bound is a safety net.
    let out = tokio::time::timeout(Duration::from_secs(600), cmd.output())
        .await
        .map_err(|_| Error::Runtime("redis-benchmark did not finish within 10 minutes".into()))?
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::Runtime(
                    "redis-benchmark not found on PATH (it comes with redis-server: apt-get install redis-tools)".into(),
                )
            } else {
                Error::Runtime(format!("cannot run redis-benchmark: {e}"))
            }
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    match parse_set_rps(&stdout) {
        Some(rps) if out.status.success() => Ok(SetBenchmark { rps, command }),
        _ => Err(Error::Runtime(format!(
            "redis-benchmark failed ({}): {}",
            out.status,
            one_line(&format!(
                "{} {}",
                tail(&stdout, 300),
                tail(&String::from_utf8_lossy(&out.stderr), 300)
            ))
        ))),
    }
}

/// The last `n` characters of `s`.
fn tail(s: &str, n: usize) -> &str {
    let start = s
        .char_indices()
        .rev()
        .nth(n.saturating_sub(1))
        .map_or(0, |(i, _)| i);
    &s[start..]
}

/// The SET rate of `redis-benchmark -q` output (`SET: 98716.68 requests per second, ...`),
/// skipping the progress updates it separates with carriage returns.
pub fn parse_set_rps(output: &str) -> Option<f64> {
    output
        .split(['\r', '\n'])
        .filter_map(|seg| {
            let rest = seg.trim().strip_prefix("SET:")?;
            let (num, _) = rest.trim().split_once(" requests per second")?;
            num.trim().parse::<f64>().ok()
        })
        .next_back()
}

/// `taskctl bench redis`.
pub async fn run(opts: &Options, args: &RedisArgs) -> Result<Verdict> {
    let dir = Workdir::new("redis")?;
    let target = RedisTarget::open(args.redis_url.as_deref(), dir.path()).await?;
    let result = set_benchmark(&target.url, args.requests, args.clients).await;
    let description = target.description.clone();
    target.close().await;
    let bench = result?;
    if opts.json {
        emit_json(&json!({
            "mode": "redis",
            "redis": description,
            "command": bench.command,
            "set_rps": round(bench.rps, 1),
        }));
    } else {
        emit(&format!(
            "redis     {description}\ncommand   {}\n\nSET: {:.1} requests per second\n",
            bench.command, bench.rps
        ));
    }
    Ok(Verdict::Passed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commandstats() {
        let info = "# Commandstats\r\ncmdstat_evalsha:calls=3,usec=9,usec_per_call=3.00,rejected_calls=0,failed_calls=0\r\ncmdstat_client|setinfo:calls=2,usec=1\r\n";
        let stats = parse_commandstats(info);
        assert_eq!(stats.get("evalsha"), Some(&3));
        assert_eq!(stats.get("client|setinfo"), Some(&2));
        assert_eq!(stats.len(), 2);
    }

    #[test]
    fn parses_the_final_set_rate_not_the_progress() {
        let out = "SET: rps=81234.0 (overall: 80000.0) avg_msec=0.150 (overall: 0.160)\r\
                   SET: 98716.68 requests per second, p50=0.087 msec\n\n";
        assert_eq!(parse_set_rps(out), Some(98716.68));
        assert_eq!(parse_set_rps("nothing"), None);
    }

    #[test]
    fn monitor_lines_are_split_by_source() {
        let mut m = Monitored::default();
        m.count(r#"+1700000000.123456 [0 127.0.0.1:5555] "EVALSHA" "abc" "6" "k{t}""#);
        m.count(r#"+1700000000.123457 [0 lua] "hget" "k{t}" "version""#);
        m.count(r#"+1700000000.123458 [0 lua] "XADD" "e{t}" "*""#);
        m.count(r#"+1700000000.123459 [0 unix:/tmp/redis.sock] "xack" "q""#);
        m.count("+OK");
        assert_eq!(
            m.client,
            BTreeMap::from([("evalsha".to_string(), 1), ("xack".to_string(), 1)])
        );
        assert_eq!(
            m.script,
            BTreeMap::from([("hget".to_string(), 1), ("xadd".to_string(), 1)])
        );
    }

    #[test]
    fn resp_encodes_bulk_strings() {
        assert_eq!(
            resp(&["AUTH", "pw"]),
            b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n".to_vec()
        );
    }

    #[test]
    fn redis_urls_must_be_loopback_tcp() {
        assert_eq!(
            host_port("redis://:pw@127.0.0.1:6380/0").unwrap(),
            ("127.0.0.1".to_string(), 6380)
        );
        assert!(host_port("rediss://127.0.0.1:6380/").is_err());
    }
}
