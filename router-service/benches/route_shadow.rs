//! Route throughput over real gRPC on loopback, with and without a shadow policy.
//!
//! Two routers run in this process on 127.0.0.1:0, one with only the live policy and one
//! that also evaluates a shadow policy (which disagrees on part of the mix, so the
//! difference counters are exercised too). A Prometheus recorder is installed so metric
//! updates cost what they cost in production. Each sample sends its requests 64 at a time
//! over one connection; criterion reports calls per second for both.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use router_service::RouterConfig;
use service_kit::Shutdown;
use std::sync::Arc;
use std::time::{Duration, Instant};
use taskrouter_proto::v1::router_client::RouterClient;
use taskrouter_proto::v1::{Complexity, RouteRequest, Task};
use tokio::net::TcpListener;
use tonic::transport::Channel;

const CONCURRENCY: u64 = 64;

const CANDIDATE: &str = "[multi_agent]\nrollout_percent = 100\n[rules]\nvalue_threshold_usd = 50.0\n\
cross_repo_min_repositories = 2\n";

const FILLER: &str = "Refactor the request handler so the parser keeps the current behaviour \
for empty input, and add unit tests for the edge cases found in review. ";

/// The standard mix of `taskctl bench route`: 80 B, 2 KiB and 64 KiB descriptions
/// (70/25/5 %), every rule represented.
fn mix() -> Vec<Task> {
    let leads = [
        ("Fix typo in the README", Complexity::Low, 10.0, 1),
        ("Rotate HIPAA credentials", Complexity::Medium, 40.0, 1),
        (
            "Deploy the billing service to production",
            Complexity::Low,
            80.0,
            1,
        ),
        ("Redesign the scheduler", Complexity::High, 200.0, 1),
        ("Bump the shared client", Complexity::Medium, 60.0, 3),
    ];
    (0..100)
        .map(|i| {
            let (lead, complexity, value, repos) = leads[i % leads.len()];
            let size = match i % 20 {
                0 => 64 * 1024,
                1..=5 => 2 * 1024,
                _ => 80,
            };
            let mut description = format!("{lead}. ");
            while description.len() < size {
                description.push_str(FILLER);
            }
            description.truncate(size);
            Task {
                id: format!("BENCH-{i}"),
                description,
                complexity: complexity as i32,
                estimated_value_usd: value,
                repositories: (0..repos).map(|r| format!("org/repo-{r}")).collect(),
                labels: Default::default(),
            }
        })
        .collect()
}

struct Router {
    client: RouterClient<Channel>,
    shutdown: Shutdown,
}

async fn start(config: RouterConfig) -> Router {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let shutdown = Shutdown::new();
    tokio::spawn(router_service::serve(config, listener, shutdown.clone()));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_timeout(Duration::from_secs(5));
    let mut tries = 0;
    let channel = loop {
        match channel.connect().await {
            Ok(c) => break c,
            Err(e) if tries > 50 => panic!("router did not start: {e}"),
            Err(_) => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    Router {
        client: RouterClient::new(channel),
        shutdown,
    }
}

/// Sends `n` Route calls, `CONCURRENCY` in flight, and returns the elapsed time.
async fn drive(client: &RouterClient<Channel>, tasks: &Arc<Vec<Task>>, n: u64) -> Duration {
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..CONCURRENCY {
        let mut client = client.clone();
        let tasks = tasks.clone();
        let share = n / CONCURRENCY + u64::from(w < n % CONCURRENCY);
        workers.push(tokio::spawn(async move {
            for k in 0..share {
                let task = tasks[((w + k * CONCURRENCY) % tasks.len() as u64) as usize].clone();
                let request = RouteRequest {
                    task: Some(task),
                    ..Default::default()
                };
                if let Err(e) = client.route(request).await {
                    panic!("route failed: {e}");
                }
            }
        }));
    }
    for w in workers {
        w.await.expect("worker");
    }
    started.elapsed()
}

fn route(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    // A real recorder: counter updates cost what they cost in production.
    service_kit::telemetry::install_prometheus("127.0.0.1:0".parse().expect("addr"))
        .expect("prometheus recorder");
    let dir = tempfile::tempdir().expect("tempdir");
    let candidate = dir.path().join("candidate.toml");
    std::fs::write(&candidate, CANDIDATE).expect("write candidate");

    let _guard = runtime.enter();
    let plain = runtime.block_on(start(RouterConfig::with_defaults()));
    let shadowed = runtime.block_on(start(RouterConfig {
        shadow_policy_path: Some(candidate),
        ..RouterConfig::with_defaults()
    }));
    let tasks = Arc::new(mix());

    let mut group = c.benchmark_group("route");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(10));
    for (name, router) in [("live_only", &plain), ("with_shadow", &shadowed)] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| runtime.block_on(drive(&router.client, &tasks, iters)));
        });
    }
    group.finish();
    plain.shutdown.trigger();
    shadowed.shutdown.trigger();
}

criterion_group!(benches, route);
criterion_main!(benches);
