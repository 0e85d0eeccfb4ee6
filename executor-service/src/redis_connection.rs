//! Connections to Redis: one standalone server or a Redis Cluster. The store and the queue
//! talk through [`RedisConn`], which runs the same commands and scripts on both because
//! every command or script touches keys of one hash slot only (`{task_id}` for a task's
//! keys, `{<shard tag>}` for a queue shard's keys).

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

/// Connect timeout of every connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Reply deadline on the shared connection (blocking commands use dedicated ones).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Reply deadline on a dedicated connection: longer than any `BLOCK` this service sends.
pub const BLOCKING_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

/// Where Redis is: a standalone server or the seed nodes of a cluster.
#[derive(Clone)]
// Built once per process; the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
pub enum RedisTarget {
    /// One server (or anything speaking its protocol without cluster redirections).
    Standalone(redis::Client),
    /// A Redis Cluster.
    Cluster(Box<ClusterClients>),
}

/// The clients of a cluster: `shared` for ordinary commands, `blocking` (same nodes,
/// longer reply deadline) for dedicated connections that block.
#[derive(Clone)]
pub struct ClusterClients {
    /// Client for the shared connection.
    pub shared: ClusterClient,
    /// Client for dedicated blocking connections.
    pub blocking: ClusterClient,
}

impl RedisTarget {
    /// The shared, multiplexed connection, connected lazily so the service starts (and
    /// reports NOT_SERVING) while Redis is down and reconnects by itself.
    pub fn shared(&self) -> RedisResult<RedisConn> {
        match self {
            Self::Standalone(client) => {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(500));
                Ok(RedisConn::Manager(Box::new(
                    ConnectionManager::new_lazy_with_config(client.clone(), config)?,
                )))
            }
            Self::Cluster(c) => Ok(RedisConn::Cluster(LazyCluster::new(c.shared.clone()))),
        }
    }

    /// A connection of its own for commands that block the connection (`XREADGROUP …
    /// BLOCK`, `XREAD … BLOCK`), connected now.
    pub async fn dedicated(&self) -> RedisResult<RedisConn> {
        match self {
            Self::Standalone(client) => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(BLOCKING_RESPONSE_TIMEOUT));
                Ok(RedisConn::Single(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                ))
            }
            Self::Cluster(c) => {
                let conn = LazyCluster::new(c.blocking.clone());
                conn.get().await?;
                Ok(RedisConn::Cluster(conn))
            }
        }
    }

    /// Whether this is a cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

/// A cluster connection made on first use (and retried on the next use if that failed).
#[derive(Clone)]
pub struct LazyCluster {
    client: Arc<ClusterClient>,
    conn: Arc<OnceCell<ClusterConnection>>,
}

impl LazyCluster {
    fn new(client: ClusterClient) -> Self {
        Self {
            client: Arc::new(client),
            conn: Arc::new(OnceCell::new()),
        }
    }

    async fn get(&self) -> RedisResult<ClusterConnection> {
        self.conn
            .get_or_try_init(|| self.client.get_async_connection())
            .await
            .cloned()
    }
}

/// A connection to standalone Redis or to a cluster; cheap to clone (clones share it).
#[derive(Clone)]
pub enum RedisConn {
    /// Standalone, reconnecting by itself.
    Manager(Box<ConnectionManager>),
    /// Standalone, one dedicated connection.
    Single(MultiplexedConnection),
    /// Cluster: follows `MOVED`/`ASK` and refreshes its slot map on topology changes.
    Cluster(LazyCluster),
}

impl From<ConnectionManager> for RedisConn {
    fn from(conn: ConnectionManager) -> Self {
        Self::Manager(Box::new(conn))
    }
}

impl RedisConn {
    /// Whether this is a cluster connection (a script may then touch one slot only).
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// Whether Redis answers and, on a cluster, every master answers `PING` (it is sent
    /// to all of them) and the cluster reports `cluster_state:ok`.
    pub async fn check(&self) -> RedisResult<()> {
        let mut conn = self.clone();
        let _: Value = redis::cmd("PING").query_async(&mut conn).await?;
        if let Self::Cluster(_) = self {
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async(&mut conn)
                .await?;
            if !info.lines().any(|l| l.trim() == "cluster_state:ok") {
                return Err(RedisError::from((
                    redis::ErrorKind::Io,
                    "the Redis Cluster reports cluster_state:fail",
                )));
            }
        }
        Ok(())
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Manager(c) => c.as_mut().req_packed_command(cmd),
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => Box::pin(async move {
                let mut conn = c.get().await?;
                conn.req_packed_command(cmd).await
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Manager(c) => c.as_mut().req_packed_commands(pipeline, offset, count),
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => Box::pin(async move {
                let mut conn = c.get().await?;
                conn.req_packed_commands(pipeline, offset, count).await
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Manager(c) => c.get_db(),
            Self::Single(c) => c.get_db(),
            Self::Cluster(_) => 0,
        }
    }
}

/// One node whose keys a SCAN walks: the server itself, or one cluster master.
#[derive(Clone, Debug)]
pub struct KeyNode(Option<(String, u16)>);

impl RedisConn {
    /// The nodes that together hold every key: the server (standalone), or each master
    /// of the cluster (SCAN only walks the node it is sent to).
    pub async fn key_nodes(&self) -> RedisResult<Vec<KeyNode>> {
        let Self::Cluster(_) = self else {
            return Ok(vec![KeyNode(None)]);
        };
        let mut conn = self.clone();
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut conn)
            .await?;
        // `<id> <ip:port@cport[,hostname]> <flags> ...`
        let masters: Vec<KeyNode> = nodes
            .lines()
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                let addr = fields.nth(1)?;
                let flags = fields.next()?;
                let master = flags.split(',').any(|f| f == "master")
                    && !flags.split(',').any(|f| f == "fail" || f == "noaddr");
                let (host, port) = addr.split(['@', ',']).next()?.rsplit_once(':')?;
                master
                    .then(|| Some(KeyNode(Some((host.to_string(), port.parse().ok()?)))))
                    .flatten()
            })
            .collect();
        if masters.is_empty() {
            return Err(RedisError::from((
                redis::ErrorKind::Io,
                "CLUSTER NODES lists no reachable master",
            )));
        }
        Ok(masters)
    }

    /// One `SCAN` step on `node` from `cursor`: the next cursor (0 at the end) and the
    /// keys matching `pattern` (of Redis type `kind`, when given).
    pub async fn scan_step(
        &self,
        node: &KeyNode,
        cursor: u64,
        pattern: &str,
        kind: Option<&str>,
    ) -> RedisResult<(u64, Vec<String>)> {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000);
        if let Some(kind) = kind {
            cmd.arg("TYPE").arg(kind);
        }
        match (self, &node.0) {
            (Self::Cluster(c), Some((host, port))) => {
                let mut conn = c.get().await?;
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port: *port,
                });
                let reply = conn.route_command(cmd, routing).await?;
                Ok(redis::from_redis_value(reply)?)
            }
            _ => {
                let mut conn = self.clone();
                cmd.query_async(&mut conn).await
            }
        }
    }
}

/// The cluster clients for `seeds` (node URLs, any master or replica; the rest of the
/// cluster is discovered), with `certs` for `rediss://` seeds.
pub fn cluster_target(
    seeds: Vec<redis::ConnectionInfo>,
    certs: Option<redis::TlsCertificates>,
) -> RedisResult<RedisTarget> {
    let build = |response: Duration| {
        let mut b = ClusterClient::builder(seeds.clone())
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(response)
            .retries(6)
            .min_retry_wait(50)
            .max_retry_wait(1_000);
        if let Some(c) = &certs {
            b = b.certs(c.clone());
        }
        b.build()
    };
    Ok(RedisTarget::Cluster(Box::new(ClusterClients {
        shared: build(RESPONSE_TIMEOUT)?,
        blocking: build(BLOCKING_RESPONSE_TIMEOUT)?,
    })))
}
