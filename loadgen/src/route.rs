//! `bench route`: Route calls with a realistic task mix, reported next to the empty-RPC
//! baseline measured in the same run with the same flags.

use super::baseline::{self, Entry};
use super::load::{self, Rng, Workload};
use super::{LoadArgs, ratio, require_loopback, round};
use crate::Options;
use crate::error::{Error, Result, Verdict};
use local_stack::LocalRouter;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use taskrouter_proto::v1::router_client::RouterClient;
use taskrouter_proto::v1::{Complexity, RouteRequest, RoutingDecision, Task};
use tonic::transport::Channel;

/// The targets, printed next to the ratios.
const TARGET_THROUGHPUT_RATIO: f64 = 0.80;
const TARGET_P99_RATIO: f64 = 2.0;

/// Description sizes of the standard mix and their weights (out of 100): most tasks are a
/// line or two, some a page, a few carry a whole log or diff.
const SIZES: &[(usize, u64)] = &[(80, 70), (2 * 1024, 25), (64 * 1024, 5)];
/// Sizes of the short mix: per-call cost without the bytes.
const SHORT_SIZES: &[(usize, u64)] = &[(80, 100)];

/// Which task mix `bench route` sends.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MixArg {
    /// Every rule at 80 B, 2 KiB and 64 KiB descriptions (70/25/5 %).
    #[default]
    Standard,
    /// Every rule at 80 B only: the per-call cost without moving and scanning bytes.
    Short,
}

impl MixArg {
    fn sizes(self) -> &'static [(usize, u64)] {
        match self {
            MixArg::Standard => SIZES,
            MixArg::Short => SHORT_SIZES,
        }
    }
}

/// Flags of `bench route`.
#[derive(clap::Args, Debug, Clone)]
pub struct RouteArgs {
    /// Load flags, shared with the baseline of the same run.
    #[command(flatten)]
    pub load: LoadArgs,
    /// The task mix.
    #[arg(long, value_enum, default_value_t = MixArg::Standard)]
    pub mix: MixArg,
}

/// Filler prose without any policy keyword, to pad descriptions to size.
const FILLER: &str = "Refactor the request handler so the parser keeps the current behaviour \
    for empty input, and add unit tests for the edge cases found in review. ";

/// One kind of task in the mix: which rule it exercises and its fields.
struct Kind {
    rule: &'static str,
    lead: &'static str,
    complexity: Complexity,
    value: f64,
    repos: &'static [&'static str],
}

/// Every rule type, plus tasks that stay single and one that fires every rule at once.
const KINDS: &[Kind] = &[
    Kind {
        rule: "simple",
        lead: "Fix typo in README.",
        complexity: Complexity::Low,
        value: 10.0,
        repos: &["acme/docs"],
    },
    Kind {
        rule: "simple-medium",
        lead: "Add pagination to the orders list endpoint.",
        complexity: Complexity::Medium,
        value: 60.0,
        repos: &["acme/orders"],
    },
    Kind {
        rule: "high-value",
        lead: "Implement new payment processing.",
        complexity: Complexity::Medium,
        value: 5000.0,
        repos: &["acme/payments"],
    },
    Kind {
        rule: "complexity-high",
        lead: "Redesign the caching layer of the search service.",
        complexity: Complexity::High,
        value: 50.0,
        repos: &["acme/search"],
    },
    Kind {
        rule: "complexity-critical",
        lead: "Fix the data race in the ledger writer.",
        complexity: Complexity::Critical,
        value: 50.0,
        repos: &["acme/ledger"],
    },
    Kind {
        rule: "compliance",
        lead: "Rotate the HIPAA credentials of the patient data export job.",
        complexity: Complexity::Low,
        value: 20.0,
        repos: &["acme/export"],
    },
    Kind {
        rule: "deployment",
        lead: "Deploy the new billing worker to production behind a canary.",
        complexity: Complexity::Low,
        value: 20.0,
        repos: &["acme/billing"],
    },
    Kind {
        rule: "cross-repo-list",
        lead: "Rename the user id field in the shared client and its callers.",
        complexity: Complexity::Medium,
        value: 40.0,
        repos: &["acme/client", "acme/web", "acme/mobile"],
    },
    Kind {
        rule: "cross-repo-text",
        lead: "Upgrade the logging library across repositories.",
        complexity: Complexity::Low,
        value: 30.0,
        repos: &["acme/infra"],
    },
    Kind {
        rule: "every-rule",
        lead: "Deploy the PHI redaction fix to production across repos before the audit.",
        complexity: Complexity::Critical,
        value: 25000.0,
        repos: &["acme/api", "acme/worker"],
    },
];

/// `lead` padded with filler to exactly `size` bytes (the lead alone if it is longer).
fn description(lead: &str, size: usize) -> String {
    let mut s = String::with_capacity(size.max(lead.len()));
    s.push_str(lead);
    s.push(' ');
    while s.len() < size {
        s.push_str(FILLER);
    }
    // ASCII only, so any byte index is a char boundary.
    s.truncate(size.max(lead.len()));
    s
}

/// The Route mix: every kind at every size, picked by weight, with a fresh random id per
/// request so rollout buckets vary.
pub struct RouteMix {
    sizes: &'static [(usize, u64)],
    tasks: Vec<Task>,
    /// Cumulative weights, parallel to `tasks`.
    cumulative: Vec<u64>,
}

impl RouteMix {
    /// The mix `which` names.
    pub fn new(which: MixArg) -> Self {
        let sizes = which.sizes();
        let mut tasks = Vec::new();
        let mut cumulative = Vec::new();
        let mut total = 0;
        for kind in KINDS {
            for &(size, weight) in sizes {
                tasks.push(Task {
                    id: String::new(),
                    description: description(kind.lead, size),
                    complexity: kind.complexity as i32,
                    estimated_value_usd: kind.value,
                    repositories: kind.repos.iter().map(|r| r.to_string()).collect(),
                    labels: HashMap::from([
                        ("team".to_string(), "platform".to_string()),
                        ("source".to_string(), "taskctl-bench".to_string()),
                        ("rule".to_string(), kind.rule.to_string()),
                    ]),
                });
                total += weight;
                cumulative.push(total);
            }
        }
        RouteMix {
            sizes,
            tasks,
            cumulative,
        }
    }

    fn total_weight(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// A task of the mix, picked by weight.
    fn pick(&self, rng: &mut Rng) -> &Task {
        let r = rng.below(self.total_weight());
        let i = self.cumulative.partition_point(|&c| c <= r);
        &self.tasks[i.min(self.tasks.len() - 1)]
    }

    /// What the mix holds, for reports.
    pub fn json(&self) -> Value {
        let total = self.total_weight().max(1) as f64;
        let mut prev = 0;
        let mut mean = 0.0;
        for (t, &c) in self.tasks.iter().zip(&self.cumulative) {
            mean += t.description.len() as f64 * (c - prev) as f64 / total;
            prev = c;
        }
        json!({
            "rules": KINDS.iter().map(|k| k.rule).collect::<Vec<_>>(),
            "description_bytes": self.sizes.iter().map(|s| s.0).collect::<Vec<_>>(),
            "size_weights_percent": self.sizes.iter().map(|s| s.1).collect::<Vec<_>>(),
            "mean_description_bytes": mean.round() as u64,
        })
    }
}

impl Default for RouteMix {
    fn default() -> Self {
        Self::new(MixArg::Standard)
    }
}

impl Workload for RouteMix {
    type Client = RouterClient<Channel>;

    fn outcomes(&self) -> &'static [&'static str] {
        &["single", "multi", "no_decision"]
    }

    fn client(&self, channel: Channel) -> Self::Client {
        RouterClient::new(channel)
    }

    async fn call(
        &self,
        client: &mut Self::Client,
        rng: &mut Rng,
    ) -> std::result::Result<usize, tonic::Status> {
        let mut task = self.pick(rng).clone();
        task.id = format!("bench-{:016x}", rng.next_u64());
        let resp = client.route(RouteRequest { task: Some(task) }).await?;
        let decision = resp.into_inner().analysis.map(|a| a.decision);
        Ok(
            match decision.and_then(|d| RoutingDecision::try_from(d).ok()) {
                Some(RoutingDecision::UseSingleAgent) => 0,
                Some(RoutingDecision::UseMultiAgent) => 1,
                _ => 2,
            },
        )
    }
}

/// Waits until the gRPC health of `service` at `channel` says SERVING.
pub async fn wait_serving(channel: Channel, service: &str, within: Duration) -> Result<()> {
    Ok(local_stack::health::wait_serving_on(channel, service, within).await?)
}

/// The router the Route calls go to.
struct RouterTarget {
    url: String,
    description: String,
    in_process: Option<LocalRouter>,
}

impl RouterTarget {
    /// `--router` when it was given (loopback only), else a router started in this process.
    async fn start(opts: &Options) -> Result<Self> {
        if let Some(address) = &opts.router {
            let address = address.trim();
            require_loopback("--router / TASKCTL_ROUTER", address)?;
            let url = if address.contains("://") {
                address.to_string()
            } else {
                format!("http://{address}")
            };
            if !url.starts_with("http://") {
                return Err(Error::Usage(
                    "--router / TASKCTL_ROUTER: bench speaks plaintext http:// only".into(),
                ));
            }
            return Ok(RouterTarget {
                description: format!("router at {url}"),
                url,
                in_process: None,
            });
        }
        let router = LocalRouter::start().await?;
        Ok(RouterTarget {
            url: format!("http://{}", router.addr),
            description: format!(
                "router in this process at {} (built-in policy)",
                router.addr
            ),
            in_process: Some(router),
        })
    }

    async fn stop(self) {
        if let Some(router) = self.in_process {
            router.stop().await;
        }
    }
}

/// `taskctl bench route`.
pub async fn run(opts: &Options, args: &RouteArgs) -> Result<Verdict> {
    let plan = args.load.plan(opts.timeout);
    let mix = Arc::new(RouteMix::new(args.mix));
    let router = RouterTarget::start(opts).await?;
    let result = measure_both(opts, &plan, &router, mix.clone()).await;
    let route_target = router.description.clone();
    router.stop().await;
    let (route, base, base_target) = result?;
    let ratio_json = json!({
        "throughput": round(ratio(route.throughput(), base.throughput()), 3),
        "p50": round(ratio(route.latency.p50 as f64, base.latency.p50 as f64), 3),
        "p99": round(ratio(route.latency.p99 as f64, base.latency.p99 as f64), 3),
        "target_throughput_at_least": TARGET_THROUGHPUT_RATIO,
        "target_p99_at_most": TARGET_P99_RATIO,
    });
    let notes = vec![
        String::new(),
        format!(
            "route/baseline: throughput {:.2} (target >= {TARGET_THROUGHPUT_RATIO:.2}), p99 {:.2} (target <= {TARGET_P99_RATIO:.2}), p50 {:.2}",
            ratio(route.throughput(), base.throughput()),
            ratio(route.latency.p99 as f64, base.latency.p99 as f64),
            ratio(route.latency.p50 as f64, base.latency.p50 as f64),
        ),
        format!(
            "route decisions: {}; mix: {} rule kinds x {:?} byte descriptions (weights {:?}%), mean {} bytes",
            route
                .outcomes
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", "),
            KINDS.len(),
            mix.sizes.iter().map(|s| s.0).collect::<Vec<_>>(),
            mix.sizes.iter().map(|s| s.1).collect::<Vec<_>>(),
            mix.json()["mean_description_bytes"],
        ),
    ];
    Ok(baseline::report(
        opts,
        "route",
        &plan,
        &[
            Entry {
                name: "baseline",
                rpc: baseline::RPC,
                target: &base_target,
                measured: &base,
                extra: Value::Null,
            },
            Entry {
                name: "route",
                rpc: match args.mix {
                    MixArg::Standard => "taskrouter.v1.Router/Route (standard task mix)",
                    MixArg::Short => "taskrouter.v1.Router/Route (short task mix)",
                },
                target: &route_target,
                measured: &route,
                extra: json!({ "mix": mix.json() }),
            },
        ],
        json!({ "ratio": ratio_json }),
        &notes,
    ))
}

async fn measure_both(
    opts: &Options,
    plan: &load::Plan,
    router: &RouterTarget,
    mix: Arc<RouteMix>,
) -> Result<(super::Measured, super::Measured, String)> {
    // Check the router first: a dead target should fail before the baseline runs.
    let channels = load::connect_all(&router.url, plan.connections, opts.timeout).await?;
    // The in-process router is not ready until its policy is loaded; an external one
    // may report either the service or the whole server.
    wait_serving(channels[0].clone(), "", opts.timeout).await?;
    let (base, base_target) = baseline::measure(plan, opts.timeout).await?;
    let route = load::drive(mix, &channels, plan).await?;
    Ok((route, base, base_target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_have_the_exact_sizes() {
        assert_eq!(description("Fix typo.", 80).len(), 80);
        assert_eq!(description("Fix typo.", 64 * 1024).len(), 64 * 1024);
        assert!(description("Fix typo.", 80).starts_with("Fix typo. Refactor"));
        let long_lead = "x".repeat(100);
        assert_eq!(description(&long_lead, 80), long_lead);
    }

    #[test]
    fn the_mixes_hold_every_kind_at_every_size() {
        let standard = RouteMix::new(MixArg::Standard);
        assert_eq!(standard.tasks.len(), KINDS.len() * SIZES.len());
        assert_eq!(standard.total_weight(), 100 * KINDS.len() as u64);
        let short = RouteMix::new(MixArg::Short);
        assert!(short.tasks.iter().all(|t| t.description.len() == 80));
        assert_eq!(short.json()["mean_description_bytes"], 80);
    }

    #[test]
    fn picks_follow_the_weights() {
        let mix = RouteMix::new(MixArg::Standard);
        let mut rng = Rng::new(7);
        let mut by_size = std::collections::BTreeMap::<usize, u32>::new();
        for _ in 0..10_000 {
            *by_size
                .entry(mix.pick(&mut rng).description.len())
                .or_default() += 1;
        }
        // 70/25/5 %, give or take sampling noise.
        assert!((6_500..7_500).contains(&by_size[&80]), "{by_size:?}");
        assert!((2_000..3_000).contains(&by_size[&2048]), "{by_size:?}");
        assert!((300..700).contains(&by_size[&65536]), "{by_size:?}");
    }

    #[test]
    fn the_filler_fires_no_rule() {
        let engine = router_service::PolicyEngine::builtin().unwrap();
        let task = Task {
            id: "t".into(),
            description: description("", 4096),
            complexity: Complexity::Low as i32,
            estimated_value_usd: 1.0,
            repositories: vec!["a/b".into()],
            labels: HashMap::new(),
        };
        let analysis = engine.evaluate(&task);
        assert_eq!(
            analysis.decision,
            RoutingDecision::UseSingleAgent as i32,
            "{analysis:?}"
        );
    }
}
