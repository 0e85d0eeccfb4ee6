//! `rollout-controller` binary: parses flags, sets up logging and metrics, and runs the
//! controller until the rollout finishes or SIGTERM/SIGINT.
//!
//! Exit codes: 0 when the rollout finished, was stopped by a signal or there was nothing
//! to do; 2 for invalid configuration (a flag, the candidate policy, missing in-cluster
//! credentials for --policy-configmap); 1 when the environment refuses (Redis, the policy
//! file or ConfigMap, the metrics endpoint).

use clap::Parser;
use rollout_controller::config::PolicyTarget;
use rollout_controller::configmap::ConfigMapWriter;
use rollout_controller::controller::{ControllerConfig, read_candidate};
use rollout_controller::outcomes::RedisRecords;
use rollout_controller::state::RolloutStore;
use rollout_controller::writer::{FileWriter, PolicyWriter};
use rollout_controller::{Args, Controller, Error};
use service_kit::Shutdown;
use service_kit::telemetry::{install_prometheus, metrics_addr};
use std::process::ExitCode;

const CONFIG_ERROR: u8 = 2;
const RUNTIME_ERROR: u8 = 1;

#[tokio::main]
async fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let rendered = e.render().to_string();
            let line = rendered.lines().next().unwrap_or_default();
            eprintln!("{}", line.trim_end());
            return ExitCode::from(CONFIG_ERROR);
        }
    };
    let telemetry = match service_kit::telemetry::init("rollout-controller", &args.telemetry) {
        Ok(t) => t,
        Err(e) => return fail(CONFIG_ERROR, &e.to_string()),
    };
    let code = run(args).await;
    telemetry.shutdown();
    code
}

async fn run(args: Args) -> ExitCode {
    let mut config = args.controller_config();
    if let Err(e) = config.validate() {
        return fail(CONFIG_ERROR, &e);
    }
    if let Some(path) = &args.candidate {
        // In a Deployment the candidate ConfigMap is optional: without it the controller
        // only resumes an active rollout, then idles.
        if args.stay_running && !path.exists() {
            tracing::info!(candidate = %path.display(), "no candidate file; nothing new to start");
        } else {
            match read_candidate(path) {
                Ok(text) => config.candidate = Some(text),
                Err(e) => return fail(CONFIG_ERROR, &format!("--candidate {e}")),
            }
        }
    }
    // In-cluster credentials are checked before anything binds or connects.
    let writer = match args.policy_target() {
        PolicyTarget::File(path) => Writer::File(FileWriter::new(path)),
        PolicyTarget::ConfigMap { configmap, key } => {
            match ConfigMapWriter::in_cluster(&configmap, &key) {
                Ok(writer) => Writer::ConfigMap(writer),
                Err(e) => return fail(CONFIG_ERROR, &format!("--policy-configmap: {e}")),
            }
        }
    };
    let metrics = match metrics_addr(&args.telemetry.metrics_listen) {
        Ok(addr) => addr,
        Err(e) => return fail(CONFIG_ERROR, &e.to_string()),
    };
    service_kit::tls::install_crypto_provider();
    let conn = match executor_service::session::redis_store::connect_lazy(&args.redis_url) {
        Ok(c) => c,
        Err(e) => {
            return fail(
                CONFIG_ERROR,
                &format!(
                    "--redis-url / REDIS_URL: {}",
                    e.detail().unwrap_or("invalid URL")
                ),
            );
        }
    };
    if let Some(addr) = metrics
        && let Err(e) = install_prometheus(addr)
    {
        return fail(RUNTIME_ERROR, &e.to_string());
    }
    let store = RolloutStore::new(conn.clone(), &args.key_prefix);
    let source = RedisRecords::new(conn, args.key_prefix.clone());
    let stay = args.stay_running;
    match writer {
        Writer::File(w) => drive(store, source, w, config, stay).await,
        Writer::ConfigMap(w) => drive(store, source, w, config, stay).await,
    }
}

/// The policy writer chosen by the flags.
enum Writer {
    File(FileWriter),
    ConfigMap(ConfigMapWriter),
}

/// Runs the controller with `writer` until the rollout ends or a signal.
async fn drive<W: PolicyWriter>(
    store: RolloutStore,
    source: RedisRecords,
    writer: W,
    config: ControllerConfig,
    stay_running: bool,
) -> ExitCode {
    tracing::info!(policy = %writer.describe(), "rollout controller writes the policy");
    let controller = Controller::new(store, source, writer, config);
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    let code = match controller.run(shutdown.clone()).await {
        Ok(Some(state)) => {
            tracing::info!(rollout.id = %state.id, status = %state.status, percent = state.percent, "rollout controller stopped");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e @ Error::PolicyRejected(_)) => {
            return fail(CONFIG_ERROR, &format!("--candidate {e}"));
        }
        Err(e) => return fail(RUNTIME_ERROR, &e.to_string()),
    };
    if stay_running && !shutdown.is_triggered() {
        tracing::info!("rollout controller idle until stopped (--stay-running)");
        shutdown.wait().await;
    }
    code
}

/// Prints one line on stderr and returns `code`.
fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(code)
}
