//! A private Redis Cluster: `redis-server --cluster-enabled yes` children on free ports,
//! joined with `redis-cli --cluster create`.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::redis_server::{RedisServer, parse_commandstats};

/// How long creating the cluster (or a failover) may take.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(30);

/// One node's role and slots as `CLUSTER NODES` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterNode {
    /// The node's port on 127.0.0.1.
    pub port: u16,
    /// Whether it is a master.
    pub master: bool,
    /// Slots it serves (masters only).
    pub slots: usize,
}

/// A running cluster of `masters` masters with `replicas` replicas each; every node is
/// killed and its directory removed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters * (1 + replicas)` nodes and creates the cluster, waiting until
    /// every node reports `cluster_state:ok`.
    pub fn start(masters: usize, replicas: usize) -> RedisCluster {
        assert!(masters >= 3, "Redis Cluster needs at least three masters");
        which_redis_cli();
        let nodes: Vec<RedisServer> = (0..masters * (1 + replicas))
            .map(|_| RedisServer::start_cluster_node())
            .collect();
        let mut cmd = Command::new("redis-cli");
        cmd.arg("--cluster").arg("create");
        for n in &nodes {
            cmd.arg(format!("127.0.0.1:{}", n.port()));
        }
        cmd.args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null());
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run redis-cli --cluster create: {e}"));
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_until_ok();
        // Replica roles reach the other nodes by gossip, a moment after the slots do.
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        while cluster.topology().iter().filter(|n| !n.master).count() < masters * replicas {
            assert!(
                Instant::now() < deadline,
                "the replicas never showed up as replicas"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    /// Comma-separated seed URLs (every node), the `--redis-url` of `--redis-cluster`.
    pub fn seeds(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.url())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every node, masters and replicas, in start order.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The node on `port`, to kill or restart it.
    pub fn node_mut(&mut self, port: u16) -> Option<&mut RedisServer> {
        self.nodes.iter_mut().find(|n| n.port() == port)
    }

    /// Roles and slot counts as the first live node sees them.
    pub fn topology(&self) -> Vec<ClusterNode> {
        for n in self.nodes.iter().filter(|n| n.pid().is_some()) {
            if let Some(text) = query(n, &["CLUSTER", "NODES"]) {
                return parse_nodes(&text);
            }
        }
        panic!("no cluster node answers CLUSTER NODES");
    }

    /// Ports of the current masters.
    pub fn master_ports(&self) -> Vec<u16> {
        self.topology()
            .into_iter()
            .filter(|n| n.master && n.slots > 0)
            .map(|n| n.port)
            .collect()
    }

    /// Promotes the replica on `replica_port` with `CLUSTER FAILOVER` (coordinated with its
    /// master: no acknowledged write is lost) and waits until the cluster is ok again.
    pub fn failover(&self, replica_port: u16) {
        let node = self
            .nodes
            .iter()
            .find(|n| n.port() == replica_port)
            .unwrap_or_else(|| panic!("no node on port {replica_port}"));
        // A manual failover is abandoned if the replica cannot catch up within the
        // server's manual-failover timeout (5 s), which a loaded machine can exceed: ask again.
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        'attempts: loop {
            let reply = query(node, &["CLUSTER", "FAILOVER"]);
            assert_eq!(
                reply.as_deref(),
                Some("OK"),
                "CLUSTER FAILOVER on {replica_port}"
            );
            let retry_at = Instant::now() + Duration::from_secs(8);
            while Instant::now() < retry_at {
                if self.master_ports().contains(&replica_port) {
                    break 'attempts;
                }
                assert!(
                    Instant::now() < deadline,
                    "replica {replica_port} never became a master"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.wait_until_ok();
    }

    /// Calls per command summed over the nodes on `ports`, from `INFO commandstats`.
    pub fn commandstats(&self, port: u16) -> HashMap<String, u64> {
        let node = self
            .nodes
            .iter()
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("no node on port {port}"));
        parse_commandstats(&query(node, &["INFO", "commandstats"]).unwrap_or_default())
    }

    /// Number of keys on the node on `port` (`DBSIZE`).
    pub fn dbsize(&self, port: u16) -> u64 {
        let node = self
            .nodes
            .iter()
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("no node on port {port}"));
        query(node, &["DBSIZE"])
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("DBSIZE failed on {port}"))
    }

    fn wait_until_ok(&self) {
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        let total = self.nodes.len();
        loop {
            let ok = self.nodes.iter().filter(|n| n.pid().is_some()).all(|n| {
                query(n, &["CLUSTER", "INFO"]).is_some_and(|info| {
                    info.contains("cluster_state:ok")
                        && info.contains("cluster_slots_ok:16384")
                        && info.contains(&format!("cluster_known_nodes:{total}"))
                })
            });
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not reach cluster_state:ok within {CLUSTER_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One command on a fresh blocking connection to `node`; the reply as text, `None` on error.
fn query(node: &RedisServer, args: &[&str]) -> Option<String> {
    let mut con = node
        .client()
        .get_connection_with_timeout(Duration::from_secs(2))
        .ok()?;
    let _ = con.set_read_timeout(Some(Duration::from_secs(10)));
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    match cmd.query::<redis::Value>(&mut con).ok()? {
        redis::Value::BulkString(b) => Some(String::from_utf8_lossy(&b).into_owned()),
        redis::Value::SimpleString(s) | redis::Value::VerbatimString { text: s, .. } => Some(s),
        redis::Value::Okay => Some("OK".to_string()),
        redis::Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// `<id> <ip:port@bus> <flags> <master> <ping> <pong> <epoch> <state> <slot ranges...>`
fn parse_nodes(text: &str) -> Vec<ClusterNode> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let port = f
                .get(1)?
                .split('@')
                .next()?
                .rsplit(':')
                .next()?
                .parse()
                .ok()?;
            let flags = f.get(2)?;
            if flags.contains("fail") && !flags.contains("fail?") {
                return None;
            }
            let slots = f
                .iter()
                .skip(8)
                .filter(|r| !r.starts_with('['))
                .map(|r| match r.split_once('-') {
                    Some((a, b)) => {
                        b.parse::<usize>().unwrap_or(0) + 1 - a.parse::<usize>().unwrap_or(0)
                    }
                    None => 1,
                })
                .sum();
            Some(ClusterNode {
                port,
                master: flags.contains("master"),
                slots,
            })
        })
        .collect()
}

fn which_redis_cli() {
    let found = Command::new("redis-cli")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok();
    assert!(
        found,
        "redis-cli not found on PATH: install it (apt-get install -y redis-tools) or run the README test command, which installs it"
    );
}
