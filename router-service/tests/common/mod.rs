//! Starts a router in-process on 127.0.0.1:0 and connects clients to it.
#![allow(dead_code)]

use router_service::{Error, RouterConfig};
use service_kit::Shutdown;
use std::net::SocketAddr;
use std::time::Duration;
use taskrouter_proto::v1::GetPolicyRequest;
use taskrouter_proto::v1::router_client::RouterClient;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// A router serving on a free local port.
pub struct RunningRouter {
    pub addr: SocketAddr,
    pub shutdown: Shutdown,
    pub handle: JoinHandle<Result<(), Error>>,
}

impl RunningRouter {
    pub async fn start(config: RouterConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = Shutdown::new();
        let handle = tokio::spawn(router_service::serve(config, listener, shutdown.clone()));
        Self {
            addr,
            shutdown,
            handle,
        }
    }

    /// A channel connected to this router.
    pub async fn channel(&self) -> Channel {
        test_support::client::channel(self.addr).await
    }

    /// A client connected to this router.
    pub async fn client(&self) -> RouterClient<Channel> {
        test_support::client::router_client(self.addr).await
    }

    pub async fn policy_version(&self) -> String {
        self.client()
            .await
            .get_policy(GetPolicyRequest {})
            .await
            .unwrap()
            .into_inner()
            .version
    }

    /// Triggers shutdown and waits for `serve` to return.
    pub async fn stop(self) {
        self.shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(10), self.handle)
            .await
            .expect("serve returned after shutdown")
            .unwrap()
            .unwrap();
    }
}
