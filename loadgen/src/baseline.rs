//! The empty-RPC baseline: `taskrouter.v1.Router/GetPolicy` answered with an empty
//! `GetPolicyResponse` by a plain tonic server in this process.
//!
//! GetPolicy is the existing RPC whose request and response can both be empty (zero bytes
//! on the wire), so no new proto is needed and the server does no work at all: no lock,
//! no lookup, no allocation beyond tonic's own. `grpc.health.v1/Check` would look up a
//! map behind a lock and answer a non-empty message.

use super::load::{self, Plan, Rng, TABLE_HEADER, Workload};
use super::{LoadArgs, Measured};
use crate::Options;
use crate::error::{Error, Result, Verdict};
use crate::output::{emit, emit_err, emit_json};
use serde_json::{Value, json};
use service_kit::Shutdown;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use taskrouter_proto::v1::router_client::RouterClient;
use taskrouter_proto::v1::router_server::{Router, RouterServer};
use taskrouter_proto::v1::{GetPolicyRequest, GetPolicyResponse, RouteRequest, RouteResponse};
use tokio::net::TcpListener;
use tonic::transport::Channel;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// What the baseline calls, for reports.
pub const RPC: &str = "taskrouter.v1.Router/GetPolicy (empty request, empty response)";

/// A Router whose GetPolicy answers an empty message; Route is not served.
struct EmptyRouter;

#[tonic::async_trait]
impl Router for EmptyRouter {
    async fn route(&self, _: Request<RouteRequest>) -> Result<Response<RouteResponse>, Status> {
        Err(Status::unimplemented(
            "the baseline server answers GetPolicy only",
        ))
    }

    async fn get_policy(
        &self,
        _: Request<GetPolicyRequest>,
    ) -> Result<Response<GetPolicyResponse>, Status> {
        Ok(Response::new(GetPolicyResponse::default()))
    }
}

/// The baseline server, running until [`stop`](Self::stop).
pub struct EmptyServer {
    /// Where it listens.
    pub addr: SocketAddr,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<std::result::Result<(), tonic::transport::Error>>,
}

impl EmptyServer {
    /// Starts a plain tonic server (tonic's defaults, TCP_NODELAY like `Server::serve`)
    /// on a free 127.0.0.1 port.
    pub async fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| Error::Runtime(format!("cannot bind 127.0.0.1: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Runtime(format!("baseline server address: {e}")))?;
        let shutdown = Shutdown::new();
        let waiter = shutdown.clone();
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let task = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(RouterServer::new(EmptyRouter))
                .serve_with_incoming_shutdown(incoming, async move { waiter.wait().await }),
        );
        Ok(EmptyServer {
            addr,
            shutdown,
            task,
        })
    }

    /// Stops the server (after the clients' connections are dropped, it ends at once).
    pub async fn stop(self) {
        self.shutdown.trigger();
        let abort = self.task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), self.task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
}

/// The empty call as a workload.
pub struct EmptyRpc;

impl Workload for EmptyRpc {
    type Client = RouterClient<Channel>;

    fn outcomes(&self) -> &'static [&'static str] {
        &["ok"]
    }

    fn client(&self, channel: Channel) -> Self::Client {
        RouterClient::new(channel)
    }

    async fn call(
        &self,
        client: &mut Self::Client,
        _rng: &mut Rng,
    ) -> std::result::Result<usize, Status> {
        client.get_policy(GetPolicyRequest {}).await?;
        Ok(0)
    }
}

/// Starts the baseline server, drives it with `plan`, stops it.
pub async fn measure(plan: &Plan, timeout: Duration) -> Result<(Measured, String)> {
    let server = EmptyServer::start().await?;
    let target = format!("plain tonic server in this process at {}", server.addr);
    let measured = async {
        let channels = load::connect_all(
            &format!("http://{}", server.addr),
            plan.connections,
            timeout,
        )
        .await?;
        load::drive(Arc::new(EmptyRpc), &channels, plan).await
    }
    .await;
    server.stop().await;
    Ok((measured?, target))
}

/// One measured entry of a report: its name, what it called, and the numbers.
pub struct Entry<'a> {
    /// `baseline` or `route`.
    pub name: &'static str,
    /// The RPC.
    pub rpc: &'a str,
    /// Where it went.
    pub target: &'a str,
    /// The numbers.
    pub measured: &'a Measured,
    /// Extra JSON fields of this entry.
    pub extra: Value,
}

impl Entry<'_> {
    fn json(&self) -> Value {
        let mut v = self.measured.json();
        v["rpc"] = self.rpc.into();
        v["target"] = self.target.into();
        if let (Some(obj), Value::Object(extra)) = (v.as_object_mut(), &self.extra) {
            for (k, x) in extra {
                obj.insert(k.clone(), x.clone());
            }
        }
        v
    }
}

/// Prints a report of `entries` (JSON or a text table plus `notes`) and returns the exit
/// code: 1 when any request failed.
pub fn report(
    opts: &Options,
    mode: &str,
    plan: &Plan,
    entries: &[Entry<'_>],
    extra: Value,
    notes: &[String],
) -> Verdict {
    let errors: u64 = entries.iter().map(|e| e.measured.errors).sum();
    if opts.json {
        let mut doc = json!({ "mode": mode, "config": plan.json() });
        for e in entries {
            doc[e.name] = e.json();
        }
        if let (Some(obj), Value::Object(extra)) = (doc.as_object_mut(), extra) {
            obj.extend(extra);
        }
        emit_json(&doc);
    } else {
        let mut text = String::new();
        for e in entries {
            text.push_str(&format!("{:<9} {} -> {}\n", e.name, e.rpc, e.target));
        }
        text.push_str(&plan.line());
        text.push_str("\n\n");
        let rows: Vec<Vec<String>> = entries.iter().map(|e| e.measured.row(e.name)).collect();
        text.push_str(&load::table(&TABLE_HEADER, &rows));
        for n in notes {
            text.push_str(n);
            text.push('\n');
        }
        emit(&text);
    }
    if errors == 0 {
        return Verdict::Passed;
    }
    let mut lines = Vec::new();
    for e in entries.iter().filter(|e| e.measured.errors > 0) {
        lines.push(format!(
            "error: {} of {} {} requests failed (first: {})",
            e.measured.errors,
            e.measured.ok + e.measured.errors,
            e.name,
            e.measured.first_error.as_deref().unwrap_or("-")
        ));
    }
    emit_err(&lines);
    Verdict::Failed
}

/// `taskctl bench baseline`.
pub async fn run(opts: &Options, args: &LoadArgs) -> Result<Verdict> {
    let plan = args.plan(opts.timeout);
    let (measured, target) = measure(&plan, opts.timeout).await?;
    Ok(report(
        opts,
        "baseline",
        &plan,
        &[Entry {
            name: "baseline",
            rpc: RPC,
            target: &target,
            measured: &measured,
            extra: Value::Null,
        }],
        Value::Null,
        &[],
    ))
}
